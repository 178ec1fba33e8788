//! Counters and histograms for the admin port's `/metrics`, in the Prometheus text
//! exposition format. Hand-written: a handful of metric families do not justify a
//! metrics framework on the request path.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Latency bucket bounds, seconds: from sub-millisecond (the proxy's own cost) to the
/// API server's 60 s request timeout.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

/// A labelled counter family.
#[derive(Debug, Default)]
struct Family(Mutex<BTreeMap<Vec<String>, u64>>);

impl Family {
    fn add(&self, labels: &[&str], n: u64) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Look up by slice first so the steady state allocates nothing.
        if let Some((_, v)) = map
            .iter_mut()
            .find(|(k, _)| k.iter().map(String::as_str).eq(labels.iter().copied()))
        {
            *v += n;
            return;
        }
        map.insert(labels.iter().map(|s| (*s).to_owned()).collect(), n);
    }

    fn render(&self, out: &mut String, name: &str, help: &str, label_names: &[&str]) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for (labels, v) in map.iter() {
            let _ = writeln!(out, "{name}{{{}}} {v}", label_pairs(label_names, labels));
        }
    }
}

fn label_pairs(names: &[&str], values: &[String]) -> String {
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
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum in microseconds, to stay an integer.
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            d.as_micros().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
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
    pub approvals_pending: u64,
    pub approvals_watch_synced: u64,
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
        let code = code.to_string();
        self.requests.add(&[decision, verb, resource, &code], 1);
        self.latency.observe(latency);
    }

    pub fn masked(&self, fields: u64) {
        self.masked_fields.fetch_add(fields, Ordering::Relaxed);
    }

    /// A bearer-token verification: `ok`, `cached`, or the failure's name.
    pub fn token_verification(&self, result: &str) {
        self.token_verifications.add(&[result], 1);
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
                "Audit events discarded past the queue bound (overflow: drop).",
                gauges.audit_events_dropped,
            ),
            (
                "chaperone_audit_write_failures_total",
                "counter",
                "Audit events a sink failed to write.",
                gauges.audit_write_failures,
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
            policy_reload_failures: 1,
            ..Default::default()
        });
        for line in [
            "chaperone_requests_total{decision=\"allow\",verb=\"list\",resource=\"pods\",code=\"200\"} 2",
            "chaperone_requests_total{decision=\"deny\",verb=\"delete\",resource=\"pods\",code=\"403\"} 1",
            "chaperone_request_duration_seconds_bucket{le=\"0.001\"} 2",
            "chaperone_request_duration_seconds_bucket{le=\"+Inf\"} 3",
            "chaperone_request_duration_seconds_count 3",
            "chaperone_masked_fields_total 3",
            "chaperone_token_verifications_total{result=\"expired\"} 1",
            "chaperone_policy_reloads_total{result=\"error\"} 1",
            "chaperone_audit_queue_depth 2",
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
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
