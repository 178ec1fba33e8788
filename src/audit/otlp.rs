//! Ships audit events to an OpenTelemetry Collector over OTLP/gRPC: each event as a
//! span (so an MCP tool call's trace shows the Kubernetes calls it made and their
//! decisions) and as a log record carrying the whole event (for a SIEM).
//!
//! Delivery is at-least-once within the audit queue's bound: a batch leaves the queue
//! only when the collector has accepted it; while the collector is unreachable the
//! batch is retried with exponential backoff and new events wait in the queue, where
//! the configured overflow (`block` or `drop`) applies. An event the collector refuses
//! as such (invalid, too large) is dropped and counted, never retried for ever.

use std::path::PathBuf;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message as _;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::event::{annotation, Event, Stage, Step};

/// How an OTLP sink reaches its collector.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `http://host:4317` (plain gRPC, e.g. a collector in the cluster) or `https://...`.
    pub endpoint: String,
    /// PEM CA for an `https` endpoint; the system roots otherwise.
    pub ca_file: Option<PathBuf>,
    /// Bound on one export call.
    pub timeout: Duration,
    /// Events per export call.
    pub batch: usize,
    /// Resource attributes identifying this proxy (service and pod).
    pub resource: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid OTLP endpoint {endpoint:?}: {message}")]
    Endpoint { endpoint: String, message: String },
    #[error("failed to read the OTLP CA file {path}: {source}")]
    Ca {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A connected (lazily) OTLP exporter.
pub struct Exporter {
    traces: TraceServiceClient<Channel>,
    logs: LogsServiceClient<Channel>,
    resource: Resource,
    endpoint: String,
}

pub(crate) const SCOPE: &str = "chaperone";
/// The largest export call sent: a collector takes 4 MiB per gRPC message by default.
pub const MAX_EXPORT_BYTES: usize = 3 * 1024 * 1024;

/// What became of a batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Exported {
    /// Events the collector took (their log records, some perhaps as `rejected`).
    pub taken: u64,
    /// Log records the collector took and then said it rejected (`partial_success`).
    pub rejected: u64,
    /// Events never taken: refused by the collector, or unsent at shutdown.
    pub refused: u64,
    /// Shutdown came before the batch was sent.
    pub stopped: bool,
}

enum Sent {
    Taken {
        rejected: u64,
    },
    /// Refused as such; `spans_taken` when only the log records were.
    Refused {
        status: tonic::Status,
        spans_taken: bool,
    },
    GaveUp,
}

/// Whether the collector refuses what was sent, so that sending it again cannot help:
/// invalid, or larger than it takes (grpc-go says `ResourceExhausted` "larger than
/// max", tonic `OutOfRange`). An unreachable, overloaded or misconfigured collector
/// is retried: the queue and its overflow decide what waits.
fn refuses_the_data(status: &tonic::Status) -> bool {
    use tonic::Code;
    match status.code() {
        Code::InvalidArgument | Code::OutOfRange => true,
        Code::ResourceExhausted => {
            let m = status.message().to_ascii_lowercase();
            m.contains("larger than") || m.contains("too large")
        }
        _ => false,
    }
}
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

impl Exporter {
    pub fn new(settings: &Settings) -> Result<Exporter, Error> {
        let bad = |message: String| Error::Endpoint {
            endpoint: settings.endpoint.clone(),
            message,
        };
        let mut endpoint = Endpoint::from_shared(settings.endpoint.clone())
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(settings.timeout)
            .timeout(settings.timeout);
        if settings.endpoint.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            tls = match &settings.ca_file {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|source| Error::Ca {
                        path: path.clone(),
                        source,
                    })?;
                    tls.ca_certificate(tonic::transport::Certificate::from_pem(pem))
                }
                None => tls.with_enabled_roots(),
            };
            endpoint = endpoint.tls_config(tls).map_err(|e| bad(e.to_string()))?;
        } else if !settings.endpoint.starts_with("http://") {
            return Err(bad("use http://host:port or https://host:port".into()));
        }
        let channel = endpoint.connect_lazy();
        let resource = Resource {
            attributes: settings.resource.iter().map(|(k, v)| kv(k, v)).collect(),
            ..Default::default()
        };
        Ok(Exporter {
            traces: TraceServiceClient::new(channel.clone()),
            logs: LogsServiceClient::new(channel),
            resource,
            endpoint: settings.endpoint.clone(),
        })
    }

    /// Exports a batch: each part of it (cut so that no export call is larger than
    /// [`MAX_EXPORT_BYTES`]) is retried with backoff until the collector takes it, or
    /// `give_up` resolves (shutdown). A part the collector refuses as such (too large,
    /// invalid: retrying cannot help) is halved until the event it refuses is alone,
    /// and that event is dropped, counted and logged by its audit ID: one event never
    /// stops the ones after it.
    pub async fn export(
        &mut self,
        events: &[std::sync::Arc<Event>],
        give_up: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Exported {
        let mut out = Exported::default();
        // Each part with whether its spans are taken already (the log records were
        // refused after them): its halves then send their log records only, so that no
        // span reaches the collector twice.
        let mut parts = vec![(events, false)];
        while let Some((part, spans_taken)) = parts.pop() {
            let (traces, logs) = self.requests(part);
            let size = traces.encoded_len().max(logs.encoded_len());
            let halve = |parts: &mut Vec<_>, spans_taken: bool| {
                let (first, rest) = part.split_at(part.len() / 2);
                parts.push((rest, spans_taken));
                parts.push((first, spans_taken));
            };
            if size > MAX_EXPORT_BYTES && part.len() > 1 {
                halve(&mut parts, spans_taken);
                continue;
            }
            let traces = (!spans_taken).then_some(traces);
            match self.send(traces, logs, give_up).await {
                Sent::Taken { rejected } => {
                    out.taken += part.len() as u64;
                    out.rejected += rejected;
                }
                Sent::Refused {
                    status,
                    spans_taken,
                } if part.len() > 1 => {
                    tracing::debug!(code = ?status.code(), events = part.len(),
                        "the collector refused a batch; halving it");
                    halve(&mut parts, spans_taken);
                }
                Sent::Refused { status, .. } => {
                    tracing::error!(endpoint = %self.endpoint, audit_id = %part[0].audit_id,
                        code = ?status.code(), message = status.message(),
                        "the collector refused an audit event; it is dropped (the local \
                         audit file, if any, keeps it)");
                    out.refused += 1;
                }
                Sent::GaveUp => {
                    out.refused += part.len() as u64;
                    out.refused += parts.iter().map(|(p, _)| p.len() as u64).sum::<u64>();
                    out.stopped = true;
                    return out;
                }
            }
        }
        out
    }

    /// One export of spans (none when taken already) and log records, retried with
    /// backoff while the collector cannot be reached or is not ready; the spans are not
    /// sent again once taken.
    async fn send(
        &mut self,
        traces: Option<ExportTraceServiceRequest>,
        logs: ExportLogsServiceRequest,
        give_up: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Sent {
        let mut backoff = BACKOFF_START;
        let mut rejected = traces.is_none().then_some(0);
        loop {
            let result = async {
                if let (None, Some(traces)) = (rejected, &traces) {
                    let taken = self.traces.export(traces.clone()).await?.into_inner();
                    rejected = Some(
                        taken
                            .partial_success
                            .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0)),
                    );
                }
                let taken = self.logs.export(logs.clone()).await?.into_inner();
                Ok::<_, tonic::Status>(
                    taken
                        .partial_success
                        .map_or(0, |p| u64::try_from(p.rejected_log_records).unwrap_or(0)),
                )
            }
            .await;
            match result {
                Ok(logs_rejected) => {
                    let spans_rejected = rejected.unwrap_or(0);
                    if spans_rejected + logs_rejected > 0 {
                        tracing::warn!(endpoint = %self.endpoint, spans_rejected, logs_rejected,
                            "the collector took an export in part; the rest is dropped");
                    }
                    return Sent::Taken {
                        rejected: logs_rejected,
                    };
                }
                Err(status) if refuses_the_data(&status) => {
                    return Sent::Refused {
                        status,
                        spans_taken: rejected.is_some(),
                    }
                }
                Err(status) => {
                    tracing::warn!(endpoint = %self.endpoint, code = ?status.code(), message = status.message(),
                        retry_in = ?backoff, "OTLP export failed; retrying");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = give_up.wait_for(|stop| *stop) => return Sent::GaveUp,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn requests(
        &self,
        events: &[std::sync::Arc<Event>],
    ) -> (ExportTraceServiceRequest, ExportLogsServiceRequest) {
        let scope = Some(InstrumentationScope {
            name: SCOPE.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        });
        let spans = events
            .iter()
            // One span per request, when it is complete; the events recorded while it
            // ran (held for approval, response started) are log records only.
            .filter(|e| e.stage == Stage::ResponseComplete || e.stage == Stage::Panic)
            .flat_map(|e| std::iter::once(span(e)).chain(stage_spans(e)))
            .collect();
        let records = events.iter().map(|e| log_record(e)).collect();
        (
            ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(self.resource.clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: scope.clone(),
                        spans,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            },
            ExportLogsServiceRequest {
                resource_logs: vec![ResourceLogs {
                    resource: Some(self.resource.clone()),
                    scope_logs: vec![ScopeLogs {
                        scope,
                        log_records: records,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            },
        )
    }
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

fn kv_int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

fn hex_bytes(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .filter_map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

fn unix_nanos(rfc3339: &str) -> u64 {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .map(|t| u64::try_from(t.unix_timestamp_nanos()).unwrap_or(0))
        .unwrap_or(0)
}

/// The event's attributes, by OpenTelemetry semantic conventions where one exists.
fn attributes(e: &Event) -> Vec<KeyValue> {
    let note = |k: &str| e.annotations.get(k).map(|v| &**v).unwrap_or("");
    let (path, query) = e
        .request_uri
        .split_once('?')
        .unwrap_or((&e.request_uri, ""));
    let mut attrs = vec![
        kv("url.path", path),
        kv("k8s.verb", &e.verb),
        kv("user.name", &e.user.username),
        kv("user_agent.original", &e.user_agent),
        kv("chaperone.audit_id", &e.audit_id),
        kv("chaperone.decision", note(annotation::DECISION)),
        kv("chaperone.rule", note(annotation::RULE)),
        kv("chaperone.reason", note(annotation::REASON)),
        kv("chaperone.mode", note(annotation::MODE)),
    ];
    if !query.is_empty() {
        attrs.push(kv("url.query", query));
    }
    if let Some(method) = note_method(e) {
        attrs.push(kv("http.request.method", method));
    }
    if let Some(ip) = e.source_ips.first() {
        attrs.push(kv("client.address", ip));
    }
    if let Some(status) = &e.response_status {
        attrs.push(kv_int("http.response.status_code", i64::from(status.code)));
    }
    if let Ok(n) = note(annotation::MASKED_FIELDS).parse::<i64>() {
        attrs.push(kv_int("chaperone.masked_fields", n));
    }
    if !e.user.groups.is_empty() {
        attrs.push(kv("user.roles", &e.user.groups.join(",")));
    }
    if let Some(o) = &e.object_ref {
        for (key, value) in [
            ("k8s.namespace.name", &o.namespace),
            ("k8s.resource", &o.resource),
            ("k8s.subresource", &o.subresource),
            ("k8s.api_group", &o.api_group),
            ("k8s.object.name", &o.name),
        ] {
            if !value.is_empty() {
                attrs.push(kv(key, value));
            }
        }
    }
    attrs
}

/// The HTTP method, when recorded (the verb is Kubernetes', not HTTP's).
fn note_method(e: &Event) -> Option<&str> {
    e.annotations.get("chaperone.dev/method").map(|v| &**v)
}

fn span(e: &Event) -> Span {
    let note = |k: &str| e.annotations.get(k).map(|v| &**v).unwrap_or("");
    let code = e.response_status.as_ref().map_or(0, |s| s.code);
    let name = match &e.object_ref {
        Some(o) if o.subresource.is_empty() => format!("{} {}", e.verb, o.resource),
        Some(o) => format!("{} {}/{}", e.verb, o.resource, o.subresource),
        None => format!(
            "{} {}",
            e.verb,
            e.request_uri.split('?').next().unwrap_or_default()
        ),
    };
    // Server spans are errors for 5xx only (OpenTelemetry HTTP conventions); denials
    // are findable by `chaperone.decision`.
    let status = if code >= 500 {
        Status {
            code: status::StatusCode::Error as i32,
            message: e
                .response_status
                .as_ref()
                .map(|s| s.message.clone())
                .unwrap_or_default(),
        }
    } else {
        Status::default()
    };
    Span {
        trace_id: hex_bytes(note(annotation::TRACE_ID)),
        span_id: hex_bytes(note(annotation::SPAN_ID)),
        parent_span_id: hex_bytes(note(annotation::PARENT_SPAN_ID)),
        name,
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: unix_nanos(&e.request_received_timestamp),
        end_time_unix_nano: unix_nanos(&e.stage_timestamp),
        attributes: attributes(e),
        status: Some(status),
        ..Default::default()
    }
}

/// The request's stages as its child spans: where the time went (the proxy's own work,
/// a reviewer's, the API server's) and which stage refused it.
fn stage_spans(e: &Event) -> impl Iterator<Item = Span> + '_ {
    let note = |k: &str| e.annotations.get(k).map(|v| &**v).unwrap_or("");
    let trace_id = hex_bytes(note(annotation::TRACE_ID));
    let parent = hex_bytes(note(annotation::SPAN_ID));
    e.stages.iter().map(move |s| {
        let mut attributes = vec![kv("chaperone.stage", s.step.name())];
        let kind = if s.step == Step::Upstream {
            if let Some(method) = note_method(e) {
                attributes.push(kv("http.request.method", method));
            }
            span::SpanKind::Client
        } else {
            span::SpanKind::Internal
        };
        Span {
            trace_id: trace_id.clone(),
            span_id: s.span_id.to_vec(),
            parent_span_id: parent.clone(),
            name: s.step.name().to_owned(),
            kind: kind as i32,
            start_time_unix_nano: s.start_unix_nanos,
            end_time_unix_nano: s.end_unix_nanos,
            attributes,
            status: Some(if s.failed {
                Status {
                    code: status::StatusCode::Error as i32,
                    message: String::new(),
                }
            } else {
                Status::default()
            }),
            ..Default::default()
        }
    })
}

fn log_record(e: &Event) -> LogRecord {
    let note = |k: &str| e.annotations.get(k).map(|v| &**v).unwrap_or("");
    let refused = matches!(
        note(annotation::DECISION),
        "deny" | "approve" | "error" | "throttled"
    );
    let body = serde_json::to_string(e).unwrap_or_default();
    let time = unix_nanos(&e.stage_timestamp);
    LogRecord {
        time_unix_nano: time,
        observed_time_unix_nano: time,
        severity_number: if refused {
            SeverityNumber::Warn
        } else {
            SeverityNumber::Info
        } as i32,
        severity_text: if refused { "WARN" } else { "INFO" }.into(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(body)),
        }),
        attributes: attributes(e),
        trace_id: hex_bytes(note(annotation::TRACE_ID)),
        span_id: hex_bytes(note(annotation::SPAN_ID)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_time_conversions() {
        assert_eq!(hex_bytes("00ff10"), [0, 255, 16]);
        assert_eq!(hex_bytes(""), Vec::<u8>::new());
        assert_eq!(
            unix_nanos("2025-11-25T13:40:00.123456Z"),
            1_764_078_000_123_456_000
        );
        assert_eq!(unix_nanos("garbage"), 0);
    }
}
