//! The queues between requests and the sinks: one bounded queue and one writer task
//! per sink (the JSONL recording or standard output, and the OTLP collector).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;

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
}

/// The sending side of the audit queues (one per sink), shared by every request.
pub struct Recorder {
    sinks: Vec<mpsc::Sender<Arc<Event>>>,
    overflow: Overflow,
    pub counters: Arc<Counters>,
    writers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("sinks", &self.sinks.len())
            .field("overflow", &self.overflow)
            .finish_non_exhaustive()
    }
}

/// An event still to be queued, and the first sink that has not got it.
pub struct Rest {
    event: Arc<Event>,
    from: usize,
}

enum Sink {
    Stdout,
    File(file::Recording),
}

impl Recorder {
    /// Opens the sinks and starts one writer task per sink, each behind its own
    /// bounded queue, so a collector outage does not hold up the local recording.
    pub fn start(settings: &Settings) -> Result<Recorder, Error> {
        let counters = Arc::new(Counters::default());
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut sinks = Vec::new();
        let mut writers = Vec::new();
        let local = match &settings.file {
            None => None,
            Some(p) if p.as_os_str() == "-" => Some(Sink::Stdout),
            Some(path) => Some(Sink::File(
                file::Recording::open(path, settings.max_size, settings.max_files, settings.fsync)
                    .map_err(|source| Error::Open {
                        path: path.clone(),
                        source,
                    })?,
            )),
        };
        if let Some(sink) = local {
            let (tx, rx) = mpsc::channel(settings.queue.max(1));
            sinks.push(tx);
            writers.push(tokio::spawn(write_events(
                rx,
                sink,
                counters.clone(),
                stop_rx.clone(),
            )));
        }
        if let Some(otlp) = &settings.otlp {
            let exporter = otlp::Exporter::new(otlp)?;
            let (tx, rx) = mpsc::channel(settings.queue.max(1));
            sinks.push(tx);
            writers.push(tokio::spawn(export_events(
                rx,
                exporter,
                otlp.batch.max(1),
                counters.clone(),
                stop_rx,
            )));
        }
        Ok(Recorder {
            sinks,
            overflow: settings.overflow,
            counters,
            writers: Mutex::new(writers),
            stop,
        })
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
        let event = Arc::new(event);
        for (i, sink) in self.sinks.iter().enumerate() {
            match sink.try_send(event.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) if self.overflow == Overflow::Block => {
                    return Some(Rest { event, from: i });
                }
                Err(_) => {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        None
    }

    /// Waits for room in the queues [`Recorder::try_record`] found full.
    pub async fn record_rest(&self, rest: Rest) {
        for sink in &self.sinks[rest.from..] {
            if sink.send(rest.event.clone()).await.is_err() {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Events waiting in the fullest queue.
    pub fn queued(&self) -> usize {
        self.sinks
            .iter()
            .map(|s| s.max_capacity() - s.capacity())
            .max()
            .unwrap_or(0)
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
        // retrying a dead collector) is ended after a short wait.
        self.stop.send_replace(true);
        let writers = std::mem::take(&mut *self.writers.lock().unwrap_or_else(|e| e.into_inner()));
        for mut w in writers {
            if tokio::time::timeout(Duration::from_secs(1), &mut w)
                .await
                .is_err()
            {
                w.abort();
            }
        }
    }
}

async fn write_events(
    mut rx: mpsc::Receiver<Arc<Event>>,
    mut sink: Sink,
    counters: Arc<Counters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use std::io::Write;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    // Events in the last write: more than one means requests are arriving faster than
    // one at a time.
    let mut last_batch = 0;
    loop {
        // `None`: the tick, a sync may be due.
        let next = tokio::select! {
            event = rx.recv() => Some(event),
            _ = tick.tick() => None,
            _ = stop.wait_for(|s| *s) => Some(None),
        };
        let Some(event) = next else {
            if let Sink::File(rec) = &mut sink {
                if let Err(error) = sync(rec.flush_for_sync()).await {
                    tracing::error!(%error, "failed to sync the audit recording");
                }
            }
            continue;
        };
        let Some(first) = event else {
            if let Sink::File(rec) = &mut sink {
                let _ = rec.sync();
            }
            return;
        };
        // Under load, the requests the runtime is about to finish have events too: let
        // them run first, so that more go out with each write. Not when requests come
        // one at a time: the yield would cost a turn of the event loop per request.
        if last_batch > 1 && rx.is_empty() {
            tokio::task::yield_now().await;
        }
        // Everything already waiting goes out with one write to the OS.
        batch.push(first);
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        let mut failed = None;
        for event in &batch {
            let result = match &mut sink {
                Sink::Stdout => {
                    let mut line = Vec::with_capacity(2048);
                    super::json::write_line(&mut line, event)
                        .and_then(|()| std::io::stdout().lock().write_all(&line))
                }
                Sink::File(rec) => rec.append(event),
            };
            if let Err(error) = result {
                failed = Some((error, event.audit_id.clone()));
                break;
            }
        }
        let flushed = match &mut sink {
            Sink::Stdout => std::io::stdout().lock().flush(),
            Sink::File(rec) => sync(rec.flush_for_sync()).await,
        };
        match (failed, flushed) {
            (None, Ok(())) => {
                counters
                    .recorded
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            (Some((error, audit_id)), _) => {
                counters
                    .failed_writes
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                tracing::error!(%error, %audit_id, events = batch.len(), "failed to write audit events");
            }
            (None, Err(error)) => {
                counters
                    .failed_writes
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                tracing::error!(%error, events = batch.len(), "failed to write audit events");
            }
        }
        // The events are on record (or counted as failed): free them now, not at the
        // next batch; the vector keeps its room.
        last_batch = batch.len();
        batch.clear();
    }
}

/// Runs the syncs the recording asked for on the blocking pool, so the runtime's thread
/// (the only one, by default) keeps serving requests while the disk catches up.
async fn sync(files: std::io::Result<Vec<std::fs::File>>) -> std::io::Result<()> {
    let files = files?;
    if files.is_empty() {
        return Ok(());
    }
    tokio::task::spawn_blocking(move || files.iter().try_for_each(|f| f.sync_data()))
        .await
        .map_err(std::io::Error::other)?
}

/// The most events one write to the recording carries.
const WRITE_BATCH: usize = 256;

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
        if exported {
            counters
                .exported
                .fetch_add(events.len() as u64, Ordering::Relaxed);
        } else {
            counters
                .dropped
                .fetch_add(events.len() as u64, Ordering::Relaxed);
            return;
        }
        events.clear();
    }
}
