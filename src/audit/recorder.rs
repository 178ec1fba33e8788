//! The queues between requests and the sinks: one bounded queue and one writer task
//! per sink (the JSONL recording or standard output, and the OTLP collector).
//!
//! The local sink's queue holds lines, not events: an event is serialised as it is
//! recorded, on the thread that recorded it, and freed there and then, while the
//! allocator still has its blocks at hand. (Queued as objects, the events of a
//! millisecond were freed together by the writer, dozens of blocks of each size at
//! once: more than glibc's per-thread cache holds, so each request's allocations took
//! its slow path.) The writer hands what has gathered to the thread that owns the file
//! (`audit::disk`) in one batch.

use crate::sync::Locked;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{mpsc, Notify};

use super::disk::{Disk, DiskThread, Lines};
use super::event::Event;
use super::{file, otlp};

use super::file::Fsync;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to open the audit recording {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to start the audit recording's thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error(transparent)]
    Otlp(#[from] otlp::Error),
}

/// What happens to an event when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Overflow {
    /// Requests wait until their event has room: nothing is lost, requests slow down.
    #[default]
    Block,
    /// The event is discarded and counted in `chaperone_audit_events_dropped_total`.
    Drop,
}

/// Where events go and how they get there.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The JSONL recording; `-` writes events to standard output.
    pub file: Option<PathBuf>,
    pub max_size: u64,
    pub max_files: u32,
    pub fsync: Fsync,
    pub queue: usize,
    pub overflow: Overflow,
    /// An OpenTelemetry Collector to ship spans and log records to.
    pub otlp: Option<otlp::Settings>,
}

/// Counters the admin port exports.
#[derive(Debug, Default)]
pub struct Counters {
    pub recorded: AtomicU64,
    pub dropped: AtomicU64,
    pub failed_writes: AtomicU64,
    /// Events accepted by the OTLP collector.
    pub exported: AtomicU64,
    /// Events in a batch being exported (retried while the collector is down).
    pub in_flight: AtomicU64,
    /// Events of ended responses not yet in the queue.
    pub queuing: AtomicU64,
    /// Why the local sink's disk refuses the batch in flight, while it does.
    pub write_failing: Arc<std::sync::Mutex<Option<String>>>,
    /// Shutdown: a batch the disk keeps refusing is given up (counted as failed).
    pub giving_up: std::sync::atomic::AtomicBool,
}

/// The sending side of the audit queues (one per sink), shared by every request.
pub struct Recorder {
    local: Option<Arc<Local>>,
    otlp: Option<mpsc::Sender<Arc<Event>>>,
    overflow: Overflow,
    pub counters: Arc<Counters>,
    writers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("local", &self.local.is_some())
            .field("otlp", &self.otlp.is_some())
            .field("overflow", &self.overflow)
            .finish_non_exhaustive()
    }
}

/// An event still to be queued, and the sinks whose queues were full.
pub struct Rest {
    event: Arc<Event>,
    local: bool,
    otlp: bool,
}

/// The local sink's queue: serialised events waiting for the writer task.
struct Local {
    pending: Mutex<Pending>,
    /// The most lines waiting.
    bound: usize,
    /// Woken when a line is queued while none was waiting.
    queued: Notify,
    /// Woken when the writer takes the lines, making room.
    room: Notify,
}

struct Pending {
    lines: Lines,
    /// The writer has ended: nothing more is taken.
    closed: bool,
}

/// What became of a line offered to the local queue.
enum Push {
    /// Queued, or counted as a failed write if it could not be serialised.
    Done,
    Full,
    Closed,
}

impl Local {
    fn new(bound: usize) -> Local {
        Local {
            pending: Mutex::new(Pending {
                lines: Lines::default(),
                closed: false,
            }),
            bound: bound.max(1),
            queued: Notify::new(),
            room: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.locked()
    }

    fn try_push(&self, event: &Event, counters: &Counters) -> Push {
        let mut pending = self.lock();
        if pending.closed {
            return Push::Closed;
        }
        let waiting = pending.lines.len();
        if waiting >= self.bound {
            return Push::Full;
        }
        let pushed = pending.lines.push(event);
        drop(pending);
        if let Err(error) = pushed {
            counters.failed_writes.fetch_add(1, Ordering::Relaxed);
            let audit_id = &event.audit_id;
            tracing::error!(%error, %audit_id, "failed to serialise an audit event");
        } else if waiting == 0 {
            self.queued.notify_one();
        }
        Push::Done
    }

    /// Queues the line, waiting for room; `false` if the writer has ended.
    async fn push(&self, event: &Event, counters: &Counters) -> bool {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            // Registered before the check, so that the writer's notice cannot fall
            // between the two.
            room.as_mut().enable();
            match self.try_push(event, counters) {
                Push::Done => return true,
                Push::Closed => return false,
                Push::Full => room.await,
            }
        }
    }

    /// Swaps the waiting lines for `empty`; `close` ends the queue with them.
    fn take(&self, empty: Lines, close: bool) -> Lines {
        let mut pending = self.lock();
        pending.closed |= close;
        let lines = std::mem::replace(&mut pending.lines, empty);
        drop(pending);
        self.room.notify_waiters();
        lines
    }

    fn waiting(&self) -> usize {
        self.lock().lines.len()
    }
}

impl Recorder {
    /// Opens the sinks and starts one writer task per sink, each behind its own
    /// bounded queue, so a collector outage does not hold up the local recording.
    pub fn start(settings: &Settings) -> Result<Recorder, Error> {
        let counters = Arc::new(Counters::default());
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut writers = Vec::new();
        let local = match &settings.file {
            None => None,
            Some(p) if p.as_os_str() == "-" => Some(Disk::Stdout),
            Some(path) => Some(Disk::File(
                file::Recording::open(path, settings.max_size, settings.max_files, settings.fsync)
                    .map_err(|source| Error::Open {
                        path: path.clone(),
                        source,
                    })?,
            )),
        };
        let local = match local {
            Some(disk) => {
                let disk = DiskThread::spawn(disk, counters.clone()).map_err(Error::Thread)?;
                let queue = Arc::new(Local::new(settings.queue));
                writers.push(tokio::spawn(write_lines(
                    queue.clone(),
                    disk,
                    stop_rx.clone(),
                )));
                Some(queue)
            }
            None => None,
        };
        let otlp = match &settings.otlp {
            Some(otlp) => {
                let exporter = otlp::Exporter::new(otlp)?;
                let (tx, rx) = mpsc::channel(settings.queue.max(1));
                writers.push(tokio::spawn(export_events(
                    rx,
                    exporter,
                    otlp.batch.max(1),
                    counters.clone(),
                    stop_rx,
                )));
                Some(tx)
            }
            None => None,
        };
        Ok(Recorder {
            local,
            otlp,
            overflow: settings.overflow,
            counters,
            writers: Mutex::new(writers),
            stop,
        })
    }

    /// As [`Recorder::record`], for an event that must be queued even if the caller
    /// stops waiting (its client gone, its future dropped): see [`Recorder::queue`].
    pub async fn record_detached(self: &Arc<Self>, event: Event) {
        if let Some(waiting) = self.queue(event) {
            let _ = waiting.await;
        }
    }

    /// Queues one event for every sink without the caller waiting in place: what a
    /// full queue (with `overflow: block`) leaves waits for room in a task of its own,
    /// returned to be awaited. The event is queued whether or not anyone awaits it.
    /// `None` when nothing is left to wait for.
    pub fn queue(self: &Arc<Self>, event: Event) -> Option<tokio::task::JoinHandle<()>> {
        let rest = self.try_record(event)?;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to wait in (the process is ending): the event is lost.
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let recorder = self.clone();
        recorder.counters.queuing.fetch_add(1, Ordering::Relaxed);
        Some(runtime.spawn(async move {
            recorder.record_rest(rest).await;
            recorder.counters.queuing.fetch_sub(1, Ordering::Relaxed);
        }))
    }

    /// Queues one event for every sink, waiting for room or dropping it as configured.
    pub async fn record(&self, event: Event) {
        if let Some(rest) = self.try_record(event) {
            self.record_rest(rest).await;
        }
    }

    /// Queues one event for every sink without waiting, as far as that goes: `None`
    /// when it is queued everywhere (or dropped, as configured), or what is left when a
    /// queue is full and `overflow: block` says to wait: [`Recorder::record_rest`] waits.
    /// Most requests end here, without a future to allocate and poll.
    pub fn try_record(&self, event: Event) -> Option<Rest> {
        let local = match self
            .local
            .as_ref()
            .map(|l| l.try_push(&event, &self.counters))
        {
            Some(Push::Full) if self.overflow == Overflow::Block => true,
            Some(Push::Full | Push::Closed) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
            Some(Push::Done) | None => false,
        };
        if self.otlp.is_none() && !local {
            return None;
        }
        let event = Arc::new(event);
        let otlp = match self.otlp.as_ref().map(|s| s.try_send(event.clone())) {
            Some(Err(mpsc::error::TrySendError::Full(_))) if self.overflow == Overflow::Block => {
                true
            }
            Some(Err(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
            Some(Ok(())) | None => false,
        };
        (local || otlp).then_some(Rest { event, local, otlp })
    }

    /// Waits for room in the queues [`Recorder::try_record`] found full.
    pub async fn record_rest(&self, rest: Rest) {
        if let Some(queue) = self.local.as_ref().filter(|_| rest.local) {
            if !queue.push(&rest.event, &self.counters).await {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(sink) = self.otlp.as_ref().filter(|_| rest.otlp) {
            if sink.send(rest.event).await.is_err() {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Events waiting in the fullest queue.
    pub fn queued(&self) -> usize {
        let local = self.local.as_ref().map_or(0, |l| l.waiting());
        let otlp = self
            .otlp
            .as_ref()
            .map_or(0, |s| s.max_capacity() - s.capacity());
        local.max(otlp)
    }

    /// Why the audit recording cannot be written now, if it cannot (for `/readyz`).
    pub fn not_ready(&self) -> Option<String> {
        let failing = self.counters.write_failing.locked();
        failing.as_ref().map(|why| {
            format!("the audit recording cannot be written ({why}); its events wait, and past the queue's bound the overflow setting applies")
        })
    }

    /// Waits up to `grace` for the queues to drain to the sinks, then stops the writers.
    pub async fn close(&self, grace: Duration) {
        let drained = async {
            while self.queued() > 0
                || self.counters.in_flight.load(Ordering::Relaxed) > 0
                || self.counters.queuing.load(Ordering::Relaxed) > 0
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        if tokio::time::timeout(grace, drained).await.is_err() {
            tracing::warn!(
                queued = self.queued(),
                "audit queue not drained within the grace period"
            );
        }
        // Writers sync and end on the stop signal; one that does not (an exporter
        // retrying a dead collector) is ended after a short wait. A batch the disk still
        // refuses is given up, counted as failed.
        self.counters.giving_up.store(true, Ordering::Release);
        self.stop.send_replace(true);
        let writers = std::mem::take(&mut *self.writers.locked());
        for mut w in writers {
            if tokio::time::timeout(Duration::from_secs(1), &mut w)
                .await
                .is_err()
            {
                w.abort();
                // Gone once this returns: its queue is closed behind it.
                let _ = w.await;
            }
        }
    }
}

/// Ends the local queue however its writer ends, stopped or aborted at shutdown (a
/// disk that does not take the last batch): events after that are counted as dropped,
/// not queued for no one to write, and no request waits for room that never comes.
struct Closes(Arc<Local>);

impl Drop for Closes {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.room.notify_waiters();
    }
}

async fn write_lines(
    queue: Arc<Local>,
    disk: DiskThread,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let _closes = Closes(queue.clone());
    let mut last_batch = 0;
    loop {
        // Under load, the next batch gathers for a moment: one hand-over to the disk
        // thread per millisecond rather than per request or two.
        if last_batch > 1 {
            tokio::time::sleep(GATHER).await;
        }
        let stopping = tokio::select! {
            _ = queue.queued.notified() => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        // One batch on its way to the disk at a time: what arrives meanwhile waits in
        // the queue for the next.
        let lines = queue.take(disk.ready().await, stopping);
        last_batch = lines.len();
        if last_batch > 0 {
            disk.write(lines);
        }
        if stopping {
            if let Err(error) = disk.stop().await {
                tracing::error!(%error, "failed to sync the audit recording");
            }
            return;
        }
    }
}

/// How long the writer lets events gather under load.
const GATHER: Duration = Duration::from_millis(1);

/// Takes up to `batch` events at a time and exports them, holding a batch until the
/// collector accepts it.
async fn export_events(
    mut rx: mpsc::Receiver<Arc<Event>>,
    mut exporter: otlp::Exporter,
    batch: usize,
    counters: Arc<Counters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut events = Vec::with_capacity(batch);
    while let Some(first) = rx.recv().await {
        events.push(first);
        while events.len() < batch {
            match rx.try_recv() {
                Ok(e) => events.push(e),
                Err(_) => break,
            }
        }
        counters
            .in_flight
            .store(events.len() as u64, Ordering::Relaxed);
        let exported = exporter.export(&events, &mut stop).await;
        counters.in_flight.store(0, Ordering::Relaxed);
        counters.exported.fetch_add(
            exported.taken - exported.rejected.min(exported.taken),
            Ordering::Relaxed,
        );
        counters
            .dropped
            .fetch_add(exported.refused + exported.rejected, Ordering::Relaxed);
        if exported.stopped {
            return;
        }
        events.clear();
    }
}
