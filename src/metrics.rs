//! Counters and histograms for the admin port's `/metrics`, in the Prometheus text
//! exposition format. Hand-written: a handful of metric families do not justify a
//! metrics framework on the request path.

use crate::sync::Locked;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Latency bucket bounds, seconds: from sub-millisecond (the proxy's own cost) to the
/// API server's 60 s request timeout.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

/// The most label sets one family keeps. Label values come from requests (a resource
/// is whatever the path names, an unknown method is its own verb), and requests are
/// counted before they are authenticated: without a bound, anyone who can reach the
/// port could grow the proxy's memory and its scrapes without end.
const MAX_SERIES: usize = 2_000;

/// What a label of a request past [`MAX_SERIES`] is counted as, and a label value no
/// Kubernetes verb or resource has.
const OTHER: &str = "other";

/// The longest verb or resource label value kept (a resource name is a DNS label, 63).
const MAX_LABEL: usize = 80;

/// A labelled counter family, at most [`MAX_SERIES`] label sets; past them, the labels
/// a caller chooses (`fold`) are counted together under [`OTHER`], and the others (a
/// decision, a code: few values, none of them the caller's) kept.
#[derive(Debug, Default)]
struct Family(Mutex<Series>);

#[derive(Debug, Default)]
struct Series {
    /// Each label set and its count, in the order first seen.
    counts: Vec<(Box<[Box<str>]>, u64)>,
    /// Where each set is in `counts`, keyed by its values, each written as its length
    /// and itself, so that no two sets share a key (`["a:b", "c"]` and `["a", "b:c"]`
    /// differ). SipHash (std's `RandomState`), since the keys are the caller's to choose.
    index: HashMap<Box<[u8]>, usize>,
    /// The key and place of the last set looked up: a run of requests alike (a
    /// controller polling one list) is counted with one comparison.
    last_key: Vec<u8>,
    last: Option<usize>,
    /// Where a request's key is built: the steady state allocates nothing.
    key: Vec<u8>,
    /// The bound was reached (and said so in the log, once).
    full: bool,
}

impl Series {
    fn key(&mut self, labels: &[&str]) {
        self.key.clear();
        for l in labels {
            self.key.extend_from_slice(&l.len().to_le_bytes());
            self.key.extend_from_slice(l.as_bytes());
        }
    }

    /// Where the set whose key was just built is counted, if it has been seen.
    fn find(&mut self) -> Option<usize> {
        if self.last.is_some() && self.last_key == self.key {
            return self.last;
        }
        let at = *self.index.get(self.key.as_slice())?;
        self.last_key.clone_from(&self.key);
        self.last = Some(at);
        Some(at)
    }
}

impl Family {
    /// Counts `n` for `labels`; `fold[i]`: label `i` is folded past the bound.
    fn add(&self, labels: &[&str], fold: &[bool], n: u64) {
        let mut series = self.0.locked();
        let series = &mut *series;
        series.key(labels);
        let mut folded = [OTHER; 8];
        let mut labels = labels;
        if series.counts.len() >= MAX_SERIES && series.find().is_none() {
            if !series.full {
                series.full = true;
                tracing::warn!(
                    max = MAX_SERIES,
                    ?labels,
                    "a metrics family has reached its bound of label sets: requests with new \
                     label values are counted under \"other\" from now on"
                );
            }
            for (i, label) in labels.iter().enumerate().take(folded.len()) {
                if !fold.get(i).copied().unwrap_or(true) {
                    folded[i] = label;
                }
            }
            labels = &folded[..labels.len().min(folded.len())];
            series.key(labels);
        }
        let at = match series.find() {
            Some(at) => at,
            None => {
                let at = series.counts.len();
                let values = labels.iter().map(|l| Box::from(*l)).collect();
                series.counts.push((values, 0));
                series.index.insert(Box::from(series.key.as_slice()), at);
                at
            }
        };
        series.counts[at].1 += n;
    }

    fn render(&self, out: &mut String, name: &str, help: &str, label_names: &[&str]) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        let series = self.0.locked();
        let mut rows: Vec<_> = series.counts.iter().collect();
        rows.sort_unstable();
        for (labels, v) in rows {
            let _ = writeln!(out, "{name}{{{}}} {v}", label_pairs(label_names, labels));
        }
    }
}

fn label_pairs(names: &[&str], values: &[Box<str>]) -> String {
    names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Label values escape `\`, `"` and newlines.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[derive(Debug, Default)]
struct Histogram {
    /// Observations per bucket, not yet cumulative: one is counted in the first bucket
    /// that holds it (or none, past the last bound), and `render` adds them up.
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum in microseconds, to stay an integer.
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(bucket) = BUCKETS.iter().position(|bound| secs <= *bound) {
            self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            d.as_micros().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// A verb or resource as a label: as it is when it could be a Kubernetes one (short,
/// of the characters names and paths use), else [`OTHER`]. Requests are counted before
/// they are authenticated, and a 60 KB made-up resource must not be kept and scraped.
fn label_value(v: &str) -> &str {
    let plain = v.len() <= MAX_LABEL
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._/:".contains(&b));
    if plain {
        v
    } else {
        OTHER
    }
}

/// Every metric chaperone exports.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Family,
    latency: Histogram,
    masked_fields: AtomicU64,
    token_verifications: Family,
}

/// Values read at scrape time from their owners.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    pub audit_queue_depth: u64,
    pub audit_events_dropped: u64,
    pub audit_write_failures: u64,
    pub audit_events_recorded: u64,
    pub audit_events_exported: u64,
    pub audit_events_waiting: u64,
    pub approvals_pending: u64,
    pub approvals_watch_synced: u64,
    pub streams_open: u64,
    pub requests_in_flight: u64,
    pub policy_reloads: u64,
    pub policy_reload_failures: u64,
}

impl Metrics {
    /// One answered request: its decision, verb, resource and HTTP code, and the time
    /// until its response headers.
    pub fn request(
        &self,
        decision: &str,
        verb: &str,
        resource: &str,
        code: u16,
        latency: Duration,
    ) {
        let mut digits = [0u8; 5];
        self.requests.add(
            &[
                decision,
                label_value(verb),
                label_value(resource),
                crate::status::code_text(code, &mut digits),
            ],
            &[false, true, true, false],
            1,
        );
        self.latency.observe(latency);
    }

    pub fn masked(&self, fields: u64) {
        self.masked_fields.fetch_add(fields, Ordering::Relaxed);
    }

    /// A bearer-token verification: `ok`, `cached`, or the failure's name.
    pub fn token_verification(&self, result: &str) {
        self.token_verifications.add(&[result], &[true], 1);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self, gauges: Gauges) -> String {
        let mut out = String::with_capacity(4096);
        self.requests.render(
            &mut out,
            "chaperone_requests_total",
            "Requests answered, by decision, verb, resource and HTTP code.",
            &["decision", "verb", "resource", "code"],
        );
        self.latency.render(
            &mut out,
            "chaperone_request_duration_seconds",
            "Time from receiving a request to sending its response headers.",
        );
        let _ = writeln!(
            out,
            "# HELP chaperone_masked_fields_total Values masked in responses.\n# TYPE chaperone_masked_fields_total counter\nchaperone_masked_fields_total {}",
            self.masked_fields.load(Ordering::Relaxed)
        );
        self.token_verifications.render(
            &mut out,
            "chaperone_token_verifications_total",
            "Bearer token verifications, by result.",
            &["result"],
        );
        let _ = writeln!(
            out,
            "# HELP chaperone_policy_reloads_total Policy loads and reloads, by result.\n# TYPE chaperone_policy_reloads_total counter\nchaperone_policy_reloads_total{{result=\"ok\"}} {}\nchaperone_policy_reloads_total{{result=\"error\"}} {}",
            gauges.policy_reloads, gauges.policy_reload_failures
        );
        for (name, kind, help, value) in [
            (
                "chaperone_audit_queue_depth",
                "gauge",
                "Audit events waiting for the sinks.",
                gauges.audit_queue_depth,
            ),
            (
                "chaperone_audit_events_dropped_total",
                "counter",
                "Audit events discarded: past the queue bound (overflow: drop), refused by the collector, or unsent at shutdown.",
                gauges.audit_events_dropped,
            ),
            (
                "chaperone_audit_write_failures_total",
                "counter",
                "Failed tries to write audit events to the local sink (each retried), and events given up at shutdown.",
                gauges.audit_write_failures,
            ),
            (
                "chaperone_audit_events_recorded_total",
                "counter",
                "Audit events written to the local sink.",
                gauges.audit_events_recorded,
            ),
            (
                "chaperone_audit_events_exported_total",
                "counter",
                "Audit events the OpenTelemetry collector accepted.",
                gauges.audit_events_exported,
            ),
            (
                "chaperone_audit_events_waiting",
                "gauge",
                "Audit events on their way to the OpenTelemetry collector in a batch, or waiting for room in a full queue.",
                gauges.audit_events_waiting,
            ),
            (
                "chaperone_approvals_pending",
                "gauge",
                "Requests held for a human's approval.",
                gauges.approvals_pending,
            ),
            (
                "chaperone_approvals_watch_synced",
                "gauge",
                "1 while the watch of AccessRequests is in sync with the API server (started by the first held request).",
                gauges.approvals_watch_synced,
            ),
            (
                "chaperone_streams_open",
                "gauge",
                "Watches, followed logs and exec, attach and port-forward sessions open now (each caller may have maxStreamsPerCaller).",
                gauges.streams_open,
            ),
            (
                "chaperone_requests_in_flight",
                "gauge",
                "Other requests forwarded and not yet answered in full (each caller may have maxRequestsPerCaller).",
                gauges.requests_in_flight,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.request("allow", "list", "pods", 200, Duration::from_micros(800));
        m.request("allow", "list", "pods", 200, Duration::from_millis(30));
        m.request("deny", "delete", "pods", 403, Duration::from_micros(200));
        m.masked(3);
        m.token_verification("ok");
        m.token_verification("expired");
        let text = m.render(Gauges {
            audit_queue_depth: 2,
            streams_open: 5,
            requests_in_flight: 7,
            policy_reload_failures: 1,
            ..Default::default()
        });
        for line in [
            "chaperone_requests_total{decision=\"allow\",verb=\"list\",resource=\"pods\",code=\"200\"} 2",
            "chaperone_requests_total{decision=\"deny\",verb=\"delete\",resource=\"pods\",code=\"403\"} 1",
            "chaperone_request_duration_seconds_bucket{le=\"0.0005\"} 1",
            "chaperone_request_duration_seconds_bucket{le=\"0.001\"} 2",
            "chaperone_request_duration_seconds_bucket{le=\"0.025\"} 2",
            "chaperone_request_duration_seconds_bucket{le=\"0.05\"} 3",
            "chaperone_request_duration_seconds_bucket{le=\"60\"} 3",
            "chaperone_request_duration_seconds_bucket{le=\"+Inf\"} 3",
            "chaperone_request_duration_seconds_count 3",
            "chaperone_masked_fields_total 3",
            "chaperone_token_verifications_total{result=\"expired\"} 1",
            "chaperone_policy_reloads_total{result=\"error\"} 1",
            "chaperone_audit_queue_depth 2",
            "chaperone_streams_open 5",
            "chaperone_requests_in_flight 7",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // Every sample line is `name{labels} value` or `name value`; every family is typed.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = l.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{l}");
            let family = name.split('{').next().unwrap();
            let base = family
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                text.contains(&format!("# TYPE {base} "))
                    || text.contains(&format!("# TYPE {family} ")),
                "{l}"
            );
        }
    }

    #[test]
    fn an_observation_past_the_last_bound_counts_only_in_inf() {
        let m = Metrics::default();
        m.request("allow", "watch", "pods", 200, Duration::from_secs(90));
        m.request("allow", "get", "pods", 200, Duration::from_millis(3));
        let text = m.render(Gauges::default());
        for line in [
            "chaperone_request_duration_seconds_bucket{le=\"0.0025\"} 0",
            "chaperone_request_duration_seconds_bucket{le=\"0.005\"} 1",
            "chaperone_request_duration_seconds_bucket{le=\"60\"} 1",
            "chaperone_request_duration_seconds_bucket{le=\"+Inf\"} 2",
            "chaperone_request_duration_seconds_sum 90.003",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn label_sets_that_join_alike_are_counted_apart() {
        let m = Metrics::default();
        m.request("allow", "get:1", "pods", 200, Duration::ZERO);
        m.request("allow", "get", "1:pods", 200, Duration::ZERO);
        m.request("allow", "get", "1:pods", 200, Duration::ZERO);
        let text = m.render(Gauges::default());
        for line in [
            "chaperone_requests_total{decision=\"allow\",verb=\"get:1\",resource=\"pods\",code=\"200\"} 1",
            "chaperone_requests_total{decision=\"allow\",verb=\"get\",resource=\"1:pods\",code=\"200\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    /// Resource names come from the caller's path, before authentication: a flood of
    /// made-up ones is counted, and does not grow the family past its bound; the log
    /// says so, once.
    #[test]
    fn made_up_resources_do_not_grow_a_family_without_bound() {
        #[derive(Clone, Default)]
        struct Capture(std::sync::Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Capture {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let log = Capture::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let m = Metrics::default();
        tracing::subscriber::with_default(subscriber, || {
            // The only test that reaches the warning: its callsite is first seen here,
            // with this subscriber listening.
            tracing::callsite::rebuild_interest_cache();
            m.request("allow", "get", "pods", 200, Duration::ZERO);
            for i in 0..MAX_SERIES + 500 {
                m.request("deny", "get", &format!("r{i}"), 401, Duration::ZERO);
            }
            m.request("allow", "get", "pods", 200, Duration::ZERO);
        });
        let logged = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        assert_eq!(logged.matches("reached its bound").count(), 1, "{logged}");
        // The first set folded is named: pods and r0 to r1998 took the 2,000 places.
        assert!(
            logged.contains(&format!("\"r{}\"", MAX_SERIES - 1)),
            "{logged}"
        );
        let text = m.render(Gauges::default());
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("chaperone_requests_total{"))
            .collect();
        assert_eq!(series.len(), MAX_SERIES + 1);
        // A set seen before the bound is still counted as itself.
        assert!(series.contains(
            &"chaperone_requests_total{decision=\"allow\",verb=\"get\",resource=\"pods\",code=\"200\"} 2"
        ));
        // The first MAX_SERIES - 1 made-up names fill the family; the other 501 are
        // counted together, their decision and code kept: a denial still shows as one.
        assert!(series.contains(
            &"chaperone_requests_total{decision=\"deny\",verb=\"other\",resource=\"other\",code=\"401\"} 501"
        ));
        let total: u64 = series
            .iter()
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
            .sum();
        assert_eq!(total as usize, MAX_SERIES + 502);
    }

    #[test]
    fn a_made_up_verb_or_resource_is_counted_as_other() {
        let m = Metrics::default();
        m.request("deny", "get", &"x".repeat(60_000), 401, Duration::ZERO);
        m.request("deny", "get\u{1b}[2J", "pods", 401, Duration::ZERO);
        m.request("allow", "get", "pods/exec", 200, Duration::ZERO);
        let text = m.render(Gauges::default());
        assert!(text.len() < 16 * 1024, "{} bytes", text.len());
        assert!(text.contains(
            "chaperone_requests_total{decision=\"deny\",verb=\"get\",resource=\"other\",code=\"401\"} 1"
        ));
        assert!(text.contains(
            "chaperone_requests_total{decision=\"deny\",verb=\"other\",resource=\"pods\",code=\"401\"} 1"
        ));
        assert!(text.contains("resource=\"pods/exec\""));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
