//! Records every request — allowed, refused or failed — as an audit event in the shape
//! of Kubernetes `audit.k8s.io/v1` `Event`, delivered through a bounded queue to the
//! configured sinks.
//!
//! A request's [`Trail`] is started when it arrives and filled in by each stage. Its
//! event is recorded when the response is complete: for a streamed body (a watch, a
//! log follow, an exec session) that is when the stream ends, so the event carries the
//! final masked-field count; such requests are also recorded at `ResponseStarted`, so
//! a long-running request is on record while it runs.
//!
//! Past the queue's bound, the configured [`Overflow`] decides: `block` makes requests
//! wait for room (fail closed: nothing goes unrecorded), `drop` discards the event and
//! counts it.

pub mod capture;
mod completion;
mod disk;
pub mod event;
pub mod file;
mod json;
pub mod otlp;
mod recorder;
mod trail;

pub use completion::{on_complete, OnEnd, Unanswered, CLIENT_CLOSED};
pub use file::Fsync;
pub use recorder::{Counters, Error, Overflow, Recorder, Settings};
pub use trail::{method_name, Trail, MAX_METHOD};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::{Body, BoxError};
    use bytes::Bytes;
    use event::{annotation, Event, Stage};
    use http::HeaderMap;
    use http_body::Frame;
    use http_body_util::BodyExt;
    use std::path::PathBuf;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Duration;

    fn settings(file: Option<PathBuf>, queue: usize, overflow: Overflow) -> Settings {
        Settings {
            file,
            max_size: 1 << 20,
            max_files: 1,
            fsync: Fsync::Never,
            queue,
            overflow,
            otlp: None,
        }
    }

    fn trail() -> Trail {
        let uri: http::Uri = "/api/v1/namespaces/default/pods?limit=5".parse().unwrap();
        let mut t = Trail::start(
            &http::Method::GET,
            &uri,
            &HeaderMap::new(),
            "127.0.0.1:5555".parse().unwrap(),
        );
        let info = crate::request_info::resolve(&http::Method::GET, &uri).unwrap();
        t.info(&std::sync::Arc::new(info));
        t
    }

    #[tokio::test]
    async fn events_reach_the_recording_when_the_body_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let recorder =
            Arc::new(Recorder::start(&settings(Some(path.clone()), 16, Overflow::Block)).unwrap());
        let t = trail();
        t.masked_counter().fetch_add(3, Ordering::Relaxed);
        // The end hands over the masked total and gives back what it holds.
        let places = Arc::new(crate::places::PerCaller::default());
        let place = places.take("agent", 1).unwrap();
        let (ended, masked) = std::sync::mpsc::channel();
        let mut body = on_complete(
            crate::body::full("{}"),
            recorder.clone(),
            t.clone(),
            200,
            Box::new(move |n| {
                drop(place);
                ended.send(n).unwrap();
            }),
        );
        assert_eq!(
            places.held("agent"),
            1,
            "held while the response is on its way"
        );
        while body.frame().await.is_some() {}
        assert_eq!(masked.try_recv(), Ok(3));
        assert_eq!(places.held("agent"), 0, "given back as the response ended");
        drop(body);
        assert!(masked.try_recv().is_err(), "called once");
        recorder.close(Duration::from_secs(5)).await;
        let text = std::fs::read_to_string(&path).unwrap();
        let event: Event = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(event.audit_id, t.audit_id);
        assert_eq!(event.verb, "list");
        assert_eq!(event.stage, Stage::ResponseComplete);
        assert_eq!(event.request_uri, "/api/v1/namespaces/default/pods?limit=5");
        assert_eq!(event.object_ref.unwrap().resource, "pods");
        assert_eq!(event.annotations[annotation::MASKED_FIELDS], "3");
        assert_eq!(event.response_status.unwrap().code, 200);
    }

    #[tokio::test]
    async fn a_dropped_body_is_still_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let recorder =
            Arc::new(Recorder::start(&settings(Some(path.clone()), 16, Overflow::Block)).unwrap());
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream = http_body_util::StreamBody::new(tokio_stream_from(rx));
        let places = Arc::new(crate::places::PerCaller::default());
        let place = places.take("agent", 1).unwrap();
        let streaming = on_complete(
            Body::new(stream),
            recorder.clone(),
            trail(),
            200,
            Box::new(move |_| drop(place)),
        );
        assert_eq!(places.held("agent"), 1, "held while it streams");
        drop(streaming);
        assert_eq!(
            places.held("agent"),
            0,
            "given back when the client went away"
        );
        recorder.close(Duration::from_secs(5)).await;
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("closed the connection"), "{text}");
    }

    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
    ) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    #[tokio::test]
    async fn drop_overflow_counts_what_it_discards() {
        // A collector that is not there and a queue of one: the exporter holds one
        // event, the queue one more, the rest overflow.
        let mut s = settings(None, 1, Overflow::Drop);
        s.otlp = Some(otlp::Settings {
            endpoint: "http://127.0.0.1:1".into(),
            ca_file: None,
            timeout: Duration::from_secs(1),
            batch: 1,
            resource: vec![],
        });
        let recorder = Recorder::start(&s).unwrap();
        for _ in 0..50 {
            recorder
                .record(trail().event(Stage::ResponseComplete, 200, None))
                .await;
        }
        let c = &recorder.counters;
        let (recorded, dropped) = (
            c.recorded.load(Ordering::Relaxed),
            c.dropped.load(Ordering::Relaxed),
        );
        assert!(dropped > 0, "recorded {recorded}, dropped {dropped}");
        assert!(recorded + dropped <= 50);
    }

    /// A FIFO opened for reading (non-blocking, so the open does not wait for a writer)
    /// and not read yet: its 64 KiB fill with the first ~60 events.
    fn stalled_recording(dir: &std::path::Path) -> (PathBuf, std::fs::File) {
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join("audit.fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(0o4000) // O_NONBLOCK
            .open(&path)
            .unwrap();
        (path, reader)
    }

    /// Reads lines from the FIFO until `n` have come, or panics after 10 s.
    fn read_lines(reader: &mut std::fs::File, n: usize) -> String {
        use std::io::Read;
        let mut text = Vec::new();
        let mut buf = vec![0; 1 << 16];
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while text.iter().filter(|&&b| b == b'\n').count() < n {
            assert!(std::time::Instant::now() < deadline, "events never arrived");
            match reader.read(&mut buf) {
                Ok(n) => text.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("{e}"),
            }
        }
        String::from_utf8(text).unwrap()
    }

    /// With the recording stalled and its queue of 4 full, `overflow: drop` discards and
    /// counts the rest; `overflow: block` holds the requests until the disk catches up,
    /// and then every event is on record.
    #[tokio::test]
    async fn a_full_local_queue_drops_or_waits_as_configured() {
        const EVENTS: usize = 200;
        for overflow in [Overflow::Drop, Overflow::Block] {
            let dir = tempfile::tempdir().unwrap();
            let (path, mut reader) = stalled_recording(dir.path());
            let recorder = Arc::new(Recorder::start(&settings(Some(path), 4, overflow)).unwrap());
            let theirs = recorder.clone();
            let recording = tokio::spawn(async move {
                for _ in 0..EVENTS {
                    theirs
                        .record(trail().event(Stage::ResponseComplete, 200, None))
                        .await;
                }
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            let dropped = recorder.counters.dropped.load(Ordering::Relaxed) as usize;
            match overflow {
                Overflow::Drop => {
                    assert!(recording.is_finished(), "drop made a request wait");
                    assert!(dropped > 0, "nothing dropped with the queue full");
                }
                Overflow::Block => {
                    assert!(
                        !recording.is_finished(),
                        "block let requests past a full queue"
                    );
                    assert_eq!(dropped, 0);
                    assert_eq!(recorder.queued(), 4);
                }
            }
            // The disk catches up: what was kept lands, one event per line.
            let reading = std::thread::spawn(move || read_lines(&mut reader, EVENTS - dropped));
            tokio::time::timeout(Duration::from_secs(10), recording)
                .await
                .expect("requests still held after the disk caught up")
                .unwrap();
            recorder.close(Duration::from_secs(10)).await;
            let text = reading.join().unwrap();
            assert_eq!(text.lines().count(), EVENTS - dropped, "{overflow:?}");
            let recorded = recorder.counters.recorded.load(Ordering::Relaxed) as usize;
            assert_eq!(recorded + dropped, EVENTS, "{overflow:?}");
        }
    }

    /// A disk that refuses writes (full, read-only) loses nothing: the batch is retried,
    /// the queue fills behind it and `overflow: block` holds the requests; `/readyz`
    /// says why. Shutdown gives the batch up, counted as failed.
    #[tokio::test]
    async fn a_disk_that_refuses_writes_holds_requests_and_says_so() {
        let full = PathBuf::from("/dev/full");
        if !full.exists() {
            return;
        }
        let recorder =
            Arc::new(Recorder::start(&settings(Some(full), 2, Overflow::Block)).unwrap());
        let theirs = recorder.clone();
        let recording = tokio::spawn(async move {
            for _ in 0..20 {
                theirs
                    .record(trail().event(Stage::ResponseComplete, 200, None))
                    .await;
            }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!recording.is_finished(), "requests went on unrecorded");
        assert_eq!(recorder.counters.recorded.load(Ordering::Relaxed), 0);
        assert_eq!(recorder.counters.dropped.load(Ordering::Relaxed), 0);
        assert!(recorder.counters.failed_writes.load(Ordering::Relaxed) > 0);
        let why = recorder
            .not_ready()
            .expect("not ready while the disk refuses writes");
        assert!(why.contains("audit recording cannot be written"), "{why}");
        let failed = recorder.counters.failed_writes.load(Ordering::Relaxed);
        tokio::time::timeout(
            Duration::from_secs(10),
            recorder.close(Duration::from_millis(200)),
        )
        .await
        .expect("shutdown gives the batch up");
        // The batch given up is counted as failed, once the disk's thread sees the
        // shutdown (within its backoff's slice, not at the backoff's end).
        let counted = async {
            while recorder.counters.failed_writes.load(Ordering::Relaxed) <= failed {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_millis(500), counted)
            .await
            .expect("the batch given up is counted as failed");
        recording.abort();
    }

    /// A recording that never takes its last batch keeps the writer from ending; once
    /// shutdown gives up on it, an event recorded after is counted as dropped (with
    /// `overflow: block` too), neither queued for no one nor waited on for good.
    #[tokio::test]
    async fn events_after_the_writer_is_given_up_on_are_counted_as_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut reader) = stalled_recording(dir.path());
        let recorder = Recorder::start(&settings(Some(path), 1000, Overflow::Block)).unwrap();
        for _ in 0..200 {
            recorder
                .record(trail().event(Stage::ResponseComplete, 200, None))
                .await;
        }
        recorder.close(Duration::from_millis(100)).await;
        let dropped = recorder.counters.dropped.load(Ordering::Relaxed);
        tokio::time::timeout(
            Duration::from_secs(5),
            recorder.record(trail().event(Stage::ResponseComplete, 200, None)),
        )
        .await
        .expect("an event after shutdown waited for room");
        assert_eq!(
            recorder.counters.dropped.load(Ordering::Relaxed),
            dropped + 1
        );
        // Let the disk thread finish its write.
        read_lines(&mut reader, 1);
    }

    /// A recording that cannot take more (here a FIFO whose reader has stopped reading;
    /// in life a disk in a journal commit) stalls its own thread, never the runtime's:
    /// the runtime keeps running while the events wait, and they all land once the
    /// reader reads again.
    #[test]
    fn a_stalled_recording_does_not_stall_the_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut reader) = stalled_recording(dir.path());
        const EVENTS: usize = 300;
        let (ticked, ticks) = std::sync::mpsc::channel();
        let runtime = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let recorder =
                    Recorder::start(&settings(Some(path), 1000, Overflow::Block)).unwrap();
                for _ in 0..EVENTS {
                    recorder
                        .record(trail().event(Stage::ResponseComplete, 200, None))
                        .await;
                }
                // The runtime still turns while the recording is stuck.
                for n in 0..5 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    ticked.send(n).unwrap();
                }
                recorder.close(Duration::from_secs(10)).await;
                recorder.counters.recorded.load(Ordering::Relaxed)
            })
        });
        for n in 0..5 {
            let tick = ticks.recv_timeout(Duration::from_secs(5));
            assert_eq!(
                tick,
                Ok(n),
                "the runtime stopped while the recording was full"
            );
        }
        // Now read: everything arrives, one event per line.
        let lines = read_lines(&mut reader, EVENTS);
        assert_eq!(runtime.join().unwrap(), EVENTS as u64);
        for line in lines.lines() {
            serde_json::from_str::<Event>(line).unwrap();
        }
    }
}
