//! The local sink's own thread: it writes, rotates and syncs what the writer task has
//! serialised, so that the file system's stalls never hold up the requests' thread.
//!
//! An append to ext4 can block for milliseconds (a journal commit, dirty-page
//! throttling); on the runtime's thread, which is by default the only one, every request
//! in flight would wait with it. Here the writer task keeps queueing while the disk
//! catches up, and the next batch is only the larger for it.

use std::io::Write;
use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::file::Recording;

/// Where the lines go.
pub enum Disk {
    Stdout,
    File(Recording),
}

/// Serialised events, one line each: `ends[i]` is where line `i` ends in `lines`.
#[derive(Default)]
pub struct Lines {
    pub lines: Vec<u8>,
    pub ends: Vec<usize>,
}

impl Lines {
    pub fn clear(&mut self) {
        self.lines.clear();
        self.ends.clear();
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }
}

enum Job {
    /// Write (and sync, as the policy says); the lines come back for reuse.
    Write(Lines, oneshot::Sender<(Lines, std::io::Result<()>)>),
    /// Sync what is written, then end.
    Stop(oneshot::Sender<std::io::Result<()>>),
}

/// The handle of the thread that owns the sink.
pub struct DiskThread {
    jobs: mpsc::Sender<Job>,
}

/// How long the thread waits idle before it looks whether an `interval` sync is due.
const IDLE_CHECK: Duration = Duration::from_secs(1);

impl DiskThread {
    pub fn spawn(mut disk: Disk) -> std::io::Result<DiskThread> {
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("audit-disk".into())
            .spawn(move || loop {
                match rx.recv_timeout(IDLE_CHECK) {
                    Ok(Job::Write(lines, done)) => {
                        let result = disk.write(&lines);
                        let _ = done.send((lines, result));
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if let Err(error) = disk.flush() {
                            tracing::error!(%error, "failed to sync the audit recording");
                        }
                    }
                    Ok(Job::Stop(done)) => {
                        let _ = done.send(disk.sync());
                        return;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        let _ = disk.sync();
                        return;
                    }
                }
            })?;
        Ok(DiskThread { jobs })
    }

    /// Writes the lines; they come back (emptied or not) with the outcome.
    pub async fn write(&self, lines: Lines) -> (Lines, std::io::Result<()>) {
        let (done, result) = oneshot::channel();
        if let Err(mpsc::SendError(Job::Write(lines, _))) = self.jobs.send(Job::Write(lines, done))
        {
            return (lines, Err(gone()));
        }
        result
            .await
            .unwrap_or_else(|_| (Lines::default(), Err(gone())))
    }

    /// Syncs what is written and ends the thread.
    pub async fn stop(&self) -> std::io::Result<()> {
        let (done, result) = oneshot::channel();
        self.jobs.send(Job::Stop(done)).map_err(|_| gone())?;
        result.await.map_err(|_| gone())?
    }
}

fn gone() -> std::io::Error {
    std::io::Error::other("the audit recording's thread has ended")
}

impl Disk {
    fn write(&mut self, batch: &Lines) -> std::io::Result<()> {
        match self {
            Disk::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&batch.lines)?;
                out.flush()
            }
            Disk::File(rec) => {
                let mut start = 0;
                for &end in &batch.ends {
                    rec.write_line(&batch.lines[start..end])?;
                    start = end;
                }
                self.flush()
            }
        }
    }

    /// Hands what is buffered to the OS and runs the syncs the policy calls for.
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Disk::Stdout => Ok(()),
            Disk::File(rec) => rec.flush_for_sync()?.iter().try_for_each(|f| f.sync_data()),
        }
    }

    fn sync(&mut self) -> std::io::Result<()> {
        match self {
            Disk::Stdout => std::io::stdout().lock().flush(),
            Disk::File(rec) => rec.sync(),
        }
    }
}
