//! The JSONL recording: one audit event per line, rotated by size.
//!
//! Durability is the configured fsync policy: `always` syncs after every event (no
//! event is lost on a crash, at the cost of a disk flush per request), `interval`
//! (the default) hands every event to the OS as it comes (under load, within a
//! millisecond, with the others of that millisecond) and syncs at most once a second
//! and on shutdown (a crash loses at most the last second), `never` leaves it to the
//! OS. The writes and syncs run on the recording's own thread (`audit::disk`).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Fsync {
    Always,
    #[default]
    Interval,
    Never,
}

const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Bytes gathered before a write to the OS: a batch of events under load, about a
/// kilobyte each, goes out in one `write`.
const WRITE_BUFFER: usize = 64 * 1024;

/// An open recording file and its rotation state.
pub struct Recording {
    path: PathBuf,
    max_size: u64,
    max_files: u32,
    fsync: Fsync,
    file: BufWriter<File>,
    size: u64,
    last_sync: Instant,
    /// Written since the last sync.
    dirty: bool,
    /// A regular file (not `/dev/null` or a pipe): only those rotate and sync.
    regular: bool,
    /// Files rotated away whose sync is still to come.
    rotated: Vec<File>,
}

impl Recording {
    /// Opens (appending to) `path`; rotates when it would grow past `max_size` bytes,
    /// keeping `max_files` old files as `path.1` (newest) .. `path.N`.
    pub fn open(
        path: &Path,
        max_size: u64,
        max_files: u32,
        fsync: Fsync,
    ) -> std::io::Result<Recording> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = open_append(path)?;
        let meta = file.metadata()?;
        let (mut size, regular) = (meta.len(), meta.is_file());
        // A line cut short (the node lost, the disk full, then a kill) is ended before
        // this run appends: otherwise the first new event would join it, and the line
        // that no reader can parse would hide the event.
        if regular && size > 0 && !ends_a_line(path)? {
            file.write_all(b"\n")?;
            size += 1;
            tracing::warn!(path = %path.display(), "the audit recording ended in a partial line; it is ended before new events are appended");
        }
        Ok(Recording {
            path: path.to_owned(),
            max_size,
            max_files,
            fsync,
            file: BufWriter::with_capacity(WRITE_BUFFER, file),
            size,
            last_sync: Instant::now(),
            dirty: false,
            regular,
            rotated: Vec::new(),
        })
    }

    /// Appends one serialised line (its newline included), rotating first when it
    /// would take the file past `maxSize`.
    pub fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.regular && self.size > 0 && self.size + line.len() as u64 > self.max_size {
            self.rotate()?;
        }
        // A line at least as long as the write buffer goes to the file directly, and a
        // disk may take part of it before refusing the rest (full, or past a size
        // limit): that part is cut off again, or the line tried again would join it into
        // one no reader can parse. Where the file ended is read first (it may have been
        // cut short from outside, as logrotate's copytruncate does).
        let direct = self.regular && line.len() >= self.file.capacity();
        let start = match direct {
            true => {
                self.file.flush()?;
                Some(self.file.get_ref().metadata()?.len())
            }
            false => None,
        };
        if let Err(error) = self.file.write_all(line) {
            let file = self.file.get_ref();
            if let Some(start) = start.filter(|&at| file.metadata().is_ok_and(|m| m.len() > at)) {
                if let Err(cut) = file.set_len(start) {
                    tracing::warn!(%cut, "could not cut a partly written audit line off the recording");
                }
            }
            return Err(error);
        }
        self.size += line.len() as u64;
        self.dirty = true;
        Ok(())
    }

    /// Hands what was appended to the OS (so `replay --follow` sees it) and returns the
    /// files to sync now: files rotated away since the last call (unless `fsync:
    /// never`), and the current one when the policy calls for it (`always`; `interval`
    /// once a second has passed). The recording's own thread runs `sync_data` (see
    /// `audit::disk`): a sync can take milliseconds.
    pub fn flush_for_sync(&mut self) -> std::io::Result<Vec<File>> {
        self.file.flush()?;
        let mut files = std::mem::take(&mut self.rotated);
        let due = match self.fsync {
            Fsync::Always => true,
            Fsync::Interval => self.last_sync.elapsed() >= SYNC_INTERVAL,
            Fsync::Never => false,
        };
        if due && self.regular && self.dirty {
            self.dirty = false;
            self.last_sync = Instant::now();
            files.push(self.file.get_ref().try_clone()?);
        }
        Ok(files)
    }

    /// Flushes and syncs what has been written, here and now (on shutdown).
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        for file in std::mem::take(&mut self.rotated) {
            file.sync_data()?;
        }
        if self.fsync != Fsync::Never && self.regular && self.dirty {
            self.file.get_ref().sync_data()?;
        }
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Starts a new file. The old one is flushed here and synced after the batch (see
    /// [`Recording::flush_for_sync`]), so that the batch is not held up by a file of
    /// `maxSize` on its way to the disk.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        if self.fsync != Fsync::Never && self.dirty {
            self.rotated.push(self.file.get_ref().try_clone()?);
        }
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        // A rotation whose new file could not be opened (no descriptor, no inode) is
        // tried again by the writer: the file is moved already, and moving the older
        // ones again would push history out for nothing.
        if !self.path.exists() {
            // Moved already.
        } else if self.max_files == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            for n in (1..self.max_files).rev() {
                if numbered(n).exists() {
                    std::fs::rename(numbered(n), numbered(n + 1))?;
                }
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.file = BufWriter::with_capacity(WRITE_BUFFER, open_append(&self.path)?);
        self.size = 0;
        self.dirty = false;
        Ok(())
    }
}

/// Whether the file's last byte is a newline.
fn ends_a_line(path: &Path) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = File::open(path)?;
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // Audit records name users and resources: readable by the owner only.
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::{Event, Level, Stage};

    /// A recording that ended in a partial line (a crash mid-write) is ended before the
    /// next run appends: its first event is a line of its own.
    #[test]
    fn a_partial_last_line_is_ended_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "{\"kind\":\"Ev").unwrap();
        let mut rec = Recording::open(&path, 1 << 20, 1, Fsync::Never).unwrap();
        append(&mut rec, &event(1)).unwrap();
        rec.sync().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        serde_json::from_str::<Event>(lines[1]).unwrap();
        // A whole last line is left as it is.
        drop(rec);
        let mut rec = Recording::open(&path, 1 << 20, 1, Fsync::Never).unwrap();
        append(&mut rec, &event(2)).unwrap();
        rec.sync().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3);
    }

    /// Appends one event; `flush_for_sync` hands it to the OS.
    fn append(rec: &mut Recording, event: &Event) -> std::io::Result<()> {
        let mut line = Vec::new();
        crate::audit::json::write_line(&mut line, event)?;
        rec.write_line(&line)
    }

    /// Appends one event, flushed (and synced per `fsync`) at once.
    fn write(rec: &mut Recording, event: &Event) -> std::io::Result<()> {
        append(rec, event)?;
        for file in rec.flush_for_sync()? {
            file.sync_data()?;
        }
        Ok(())
    }

    fn event(n: usize) -> Event {
        Event {
            kind: "Event".into(),
            api_version: "audit.k8s.io/v1".into(),
            level: Level::Metadata,
            audit_id: format!("id-{n}"),
            stage: Stage::ResponseComplete,
            request_uri: "/api/v1/pods".into(),
            verb: "list".into(),
            user: Default::default(),
            source_ips: vec![],
            user_agent: String::new(),
            object_ref: None,
            response_status: None,
            request_object: None,
            response_object: None,
            request_received_timestamp: "t".into(),
            stage_timestamp: "t".into(),
            annotations: Default::default(),
            stages: Vec::new(),
        }
    }

    /// The audit IDs of a recording's events, in order.
    fn ids(p: &Path) -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Event>(l).unwrap().audit_id)
            .collect()
    }

    /// A line past the write buffer that the disk refuses part-way is written whole
    /// when tried again: the part written first is cut off, not joined to it.
    #[test]
    fn a_line_refused_part_way_is_written_whole_when_tried_again() {
        const CHILD: &str = "CHAPERONE_TEST_PART_WRITTEN_LINE";
        const NAME: &str =
            "audit::file::tests::a_line_refused_part_way_is_written_whole_when_tried_again";
        if std::env::var_os(CHILD).is_none() {
            // In a child process, whose file-size limit can be lowered: it ignores
            // SIGXFSZ (the shell's trap lasts across exec), so a write past the limit
            // takes what fits and then fails with EFBIG, as a full disk does.
            let out = std::process::Command::new("sh")
                .args(["-c", "trap '' XFSZ; exec \"$0\" \"$@\""])
                .arg(std::env::current_exe().unwrap())
                .args(["--exact", NAME, "--test-threads", "1"])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success() && said.contains("1 passed"), "{said}");
            return;
        }
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut rec = Recording::open(&path, 1 << 30, 1, Fsync::Never).unwrap();
        let first = b"{\"n\":1}\n";
        rec.write_line(first).unwrap();
        rec.flush_for_sync().unwrap();
        let big = format!("{{\"n\":\"{}\"}}\n", "x".repeat(200 << 10));
        let limit = getrlimit(Resource::Fsize);
        let lowered = Rlimit {
            current: Some(100 << 10),
            maximum: limit.maximum,
        };
        setrlimit(Resource::Fsize, lowered).unwrap();
        let refused = rec.write_line(big.as_bytes());
        setrlimit(Resource::Fsize, limit).unwrap();
        assert!(refused.is_err(), "the write past the limit was refused");
        rec.write_line(big.as_bytes()).unwrap();
        rec.flush_for_sync().unwrap();
        let text = std::fs::read(&path).unwrap();
        assert!(
            text == [&first[..], big.as_bytes()].concat(),
            "{} bytes: not the two lines",
            text.len()
        );
    }

    #[test]
    fn rotates_by_size_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let line_len = serde_json::to_vec(&event(0)).unwrap().len() as u64 + 1;
        // Room for three events per file, two old files kept.
        let mut rec = Recording::open(&path, line_len * 3, 2, Fsync::Never).unwrap();
        for n in 0..10 {
            write(&mut rec, &event(n)).unwrap();
        }
        rec.sync().unwrap();
        assert_eq!(ids(&path), ["id-9"]);
        assert_eq!(
            ids(&dir.path().join("audit.jsonl.1")),
            ["id-6", "id-7", "id-8"]
        );
        assert_eq!(
            ids(&dir.path().join("audit.jsonl.2")),
            ["id-3", "id-4", "id-5"]
        );
        assert!(!dir.path().join("audit.jsonl.3").exists());
    }

    /// A rotation tried again after its new file could not be opened (the file is moved
    /// already), or one whose file someone else moved, opens a new file and leaves the
    /// older ones where they are.
    #[test]
    fn a_rotation_tried_again_does_not_push_history_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let line_len = serde_json::to_vec(&event(0)).unwrap().len() as u64 + 1;
        let mut rec = Recording::open(&path, line_len * 2, 2, Fsync::Never).unwrap();
        for n in 0..4 {
            write(&mut rec, &event(n)).unwrap();
        }
        rec.sync().unwrap();
        assert_eq!(ids(&dir.path().join("audit.jsonl.1")), ["id-0", "id-1"]);
        // The current file is gone when the next rotation comes.
        std::fs::rename(&path, dir.path().join("elsewhere")).unwrap();
        for n in 4..6 {
            write(&mut rec, &event(n)).unwrap();
        }
        rec.sync().unwrap();
        assert_eq!(ids(&dir.path().join("audit.jsonl.1")), ["id-0", "id-1"]);
        assert!(!dir.path().join("audit.jsonl.2").exists());
        assert_eq!(ids(&path), ["id-4", "id-5"]);
    }

    #[test]
    fn a_rotated_file_is_synced_by_the_writer_not_during_the_write() {
        let dir = tempfile::tempdir().unwrap();
        let line_len = serde_json::to_vec(&event(0)).unwrap().len() as u64 + 1;
        // (policy, files to sync after the batch that rotated: the old one, and the
        // new one if `always`).
        for (fsync, want) in [(Fsync::Always, 2), (Fsync::Interval, 1), (Fsync::Never, 0)] {
            let path = dir.path().join(format!("rotated-{fsync:?}.jsonl"));
            let mut rec = Recording::open(&path, line_len * 2, 1, fsync).unwrap();
            // One batch: the third event starts a new file; the old one, written but
            // not synced, waits for the writer.
            for n in 0..3 {
                append(&mut rec, &event(n)).unwrap();
            }
            let files = rec.flush_for_sync().unwrap();
            assert_eq!(files.len(), want, "{fsync:?}");
            let rotated = PathBuf::from(format!("{}.1", path.display()));
            assert_eq!(ids(&rotated), ["id-0", "id-1"], "{fsync:?}");
            assert_eq!(ids(&path), ["id-2"], "{fsync:?}");
            assert!(rec.flush_for_sync().unwrap().len() < 2, "handed out once");
        }
    }

    #[test]
    fn asks_for_a_sync_as_the_policy_says() {
        let dir = tempfile::tempdir().unwrap();
        for (fsync, want) in [
            (Fsync::Always, true),
            (Fsync::Interval, false),
            (Fsync::Never, false),
        ] {
            let path = dir.path().join(format!("{fsync:?}.jsonl"));
            let mut rec = Recording::open(&path, 1 << 20, 1, fsync).unwrap();
            // Nothing written: nothing to sync.
            assert!(rec.flush_for_sync().unwrap().is_empty());
            append(&mut rec, &event(0)).unwrap();
            // `interval` waits for its second (the writer's tick asks again).
            let handles = rec.flush_for_sync().unwrap();
            assert_eq!(handles.len(), usize::from(want), "{fsync:?}");
            for file in handles {
                file.sync_data().unwrap();
                assert!(rec.flush_for_sync().unwrap().is_empty(), "synced already");
            }
            // Flushed to the OS either way: a reader sees the line.
            assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        }
    }

    #[test]
    fn appends_to_an_existing_recording() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        for n in 0..2 {
            let mut rec = Recording::open(&path, 1 << 20, 1, Fsync::Always).unwrap();
            write(&mut rec, &event(n)).unwrap();
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
    }
}
