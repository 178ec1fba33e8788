//! The local sink's own thread: it writes, rotates and syncs the lines the writer task
//! hands it, so that the file system's stalls never hold up the requests' thread.
//!
//! An append to ext4 can block for milliseconds (a journal commit, dirty-page
//! throttling); on the runtime's thread, which is by default the only one, every request
//! in flight would wait with it. Here the writer task keeps queueing while the disk
//! catches up, and the next batch is only the larger for it.

use crate::sync::Locked;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use super::event::Event;
use super::file::Recording;
use super::recorder::Counters;

/// Where the lines go.
pub enum Disk {
    Stdout,
    File(Recording),
}

/// Serialised events, one line each: `ends[i]` is where line `i` ends in `lines`.
#[derive(Default)]
pub struct Lines {
    lines: Vec<u8>,
    ends: Vec<usize>,
}

impl Lines {
    /// Appends the event as a JSON line; one that cannot be serialised leaves no trace.
    pub fn push(&mut self, event: &Event) -> std::io::Result<()> {
        match super::json::write_line(&mut self.lines, event) {
            Ok(()) => {
                self.ends.push(self.lines.len());
                Ok(())
            }
            Err(error) => {
                self.lines.truncate(self.ends.last().copied().unwrap_or(0));
                Err(error)
            }
        }
    }

    pub fn clear(&mut self) {
        self.lines.clear();
        self.ends.clear();
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }
}

enum Job {
    /// Write (and sync, as the policy says) a batch of this many lines.
    Write(Lines),
    /// Sync what is written, then end.
    Stop(oneshot::Sender<std::io::Result<()>>),
}

/// What the writer task and the thread share. The thread wakes the writer only when it
/// is waiting for the batch in flight: at a few requests a second, handing a batch over
/// costs the requests' thread one wake-up of this thread and nothing on the way back.
struct Shared {
    in_flight: AtomicBool,
    written: Notify,
    /// The last batch's buffers, back for reuse.
    spare: Mutex<Lines>,
    counters: Arc<Counters>,
    /// Why the disk refuses the batch in flight, while it does (for `/readyz`).
    failing: Arc<Mutex<Option<String>>>,
}

/// The handle of the thread that owns the sink.
pub struct DiskThread {
    jobs: mpsc::Sender<Job>,
    shared: Arc<Shared>,
}

/// How long the thread waits idle before it looks whether an `interval` sync is due.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// The largest line buffer kept between batches.
const LINES_KEPT: usize = 1 << 20;

impl DiskThread {
    pub fn spawn(mut disk: Disk, counters: Arc<Counters>) -> std::io::Result<DiskThread> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let shared = Arc::new(Shared {
            in_flight: AtomicBool::new(false),
            written: Notify::new(),
            spare: Mutex::new(Lines::default()),
            failing: counters.write_failing.clone(),
            counters,
        });
        let theirs = shared.clone();
        std::thread::Builder::new()
            .name("audit-disk".into())
            .spawn(move || {
                // However the thread ends, a writer waiting for it goes on, and finds
                // the thread gone (its batches then count as failed writes).
                let _ended = Ended(theirs.clone());
                loop {
                    match rx.recv_timeout(IDLE_CHECK) {
                        Ok(Job::Write(lines)) => {
                            theirs.write(&mut disk, &lines);
                            // A large captured body does not keep its buffer for good.
                            if lines.lines.capacity() <= LINES_KEPT {
                                *theirs.spare.locked() = lines;
                            }
                            theirs.in_flight.store(false, Ordering::Release);
                            theirs.written.notify_waiters();
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
                }
            })?;
        Ok(DiskThread { jobs, shared })
    }

    /// Waits until the batch in flight, if any, is written; returns an empty buffer
    /// for the next one.
    pub async fn ready(&self) -> Lines {
        loop {
            let written = self.shared.written.notified();
            tokio::pin!(written);
            // Registered before the check, so that the thread's notice cannot fall
            // between the two.
            written.as_mut().enable();
            if !self.shared.in_flight.load(Ordering::Acquire) {
                break;
            }
            written.await;
        }
        let mut lines = std::mem::take(&mut *self.shared.spare.locked());
        lines.clear();
        lines
    }

    /// Hands a batch to the thread, which counts it as recorded or failed once
    /// written. Call [`DiskThread::ready`] first: one batch is in flight at a time.
    pub fn write(&self, lines: Lines) {
        self.shared.in_flight.store(true, Ordering::Release);
        if let Err(mpsc::SendError(Job::Write(lines))) = self.jobs.send(Job::Write(lines)) {
            self.shared.in_flight.store(false, Ordering::Release);
            self.shared.count(lines.len() as u64, Err(gone()));
        }
    }

    /// Syncs what is written and ends the thread.
    pub async fn stop(&self) -> std::io::Result<()> {
        let (done, result) = oneshot::channel();
        self.jobs.send(Job::Stop(done)).map_err(|_| gone())?;
        result.await.map_err(|_| gone())?
    }
}

/// The longest wait between two tries of a batch the disk refused.
const RETRY_MAX: Duration = Duration::from_secs(5);

impl Shared {
    /// Writes a batch, retrying what the disk refuses (full, read-only, failing) until
    /// it takes it: the batch stays in flight meanwhile, the queue fills behind it, and
    /// the configured overflow applies (`block` holds requests: nothing goes
    /// unrecorded). Each try goes on from the line that failed; a buffered write
    /// keeps what it could not hand over, so a retried flush loses nothing either.
    fn write(&self, disk: &mut Disk, lines: &Lines) {
        let mut next = 0;
        let mut backoff = Duration::from_millis(100);
        loop {
            match disk.write_from(lines, &mut next) {
                Ok(()) => {
                    if self.failing.locked().take().is_some() {
                        tracing::info!("the audit recording is written again");
                    }
                    self.count(lines.len() as u64, Ok(()));
                    return;
                }
                Err(error) if self.counters.giving_up.load(Ordering::Acquire) => {
                    // What is buffered but not flushed is not known to be on disk: the
                    // whole batch counts as failed.
                    self.count(lines.len() as u64, Err(error));
                    return;
                }
                Err(error) => {
                    self.counters.failed_writes.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%error, retry_in = ?backoff,
                        "failed to write audit events; retrying (requests wait while the audit queue is full and overflow is block)");
                    *self.failing.locked() = Some(error.to_string());
                    // In slices: shutdown gives the batch up without waiting out a
                    // long backoff.
                    let until = std::time::Instant::now() + backoff;
                    while std::time::Instant::now() < until
                        && !self.counters.giving_up.load(Ordering::Acquire)
                    {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
    }

    fn count(&self, events: u64, written: std::io::Result<()>) {
        match written {
            Ok(()) => {
                self.counters.recorded.fetch_add(events, Ordering::Relaxed);
            }
            Err(error) => {
                self.counters
                    .failed_writes
                    .fetch_add(events, Ordering::Relaxed);
                tracing::error!(%error, events, "failed to write audit events");
            }
        }
    }
}

/// Lets go of the batch in flight when the thread ends, by panic or otherwise.
struct Ended(Arc<Shared>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.in_flight.store(false, Ordering::Release);
        self.0.written.notify_waiters();
    }
}

fn gone() -> std::io::Error {
    std::io::Error::other("the audit recording's thread has ended")
}

impl Disk {
    /// Writes the batch's lines from line `next` on, moving `next` past each one
    /// written, then hands them to the OS.
    fn write_from(&mut self, batch: &Lines, next: &mut usize) -> std::io::Result<()> {
        let start = |i: usize| if i == 0 { 0 } else { batch.ends[i - 1] };
        match self {
            Disk::Stdout => {
                let mut out = std::io::stdout().lock();
                if *next < batch.len() {
                    out.write_all(&batch.lines[start(*next)..])?;
                    *next = batch.len();
                }
                out.flush()
            }
            Disk::File(rec) => {
                while *next < batch.len() {
                    rec.write_line(&batch.lines[start(*next)..batch.ends[*next]])?;
                    *next += 1;
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
