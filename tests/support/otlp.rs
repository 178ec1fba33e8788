//! An OpenTelemetry Collector for the tests: a real OTLP/gRPC receiver (tonic with the
//! opentelemetry-proto types) that keeps every span, log record and resource it gets.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::trace::v1::Span;

/// What the collector received.
#[derive(Clone, Default)]
pub struct Collector {
    pub spans: Arc<Mutex<Vec<Span>>>,
    pub logs: Arc<Mutex<Vec<LogRecord>>>,
    pub resources: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
    /// Log exports holding a record with this text in an attribute are refused as
    /// invalid (`InvalidArgument`), as a collector refuses data it cannot take.
    pub refuse: Arc<Mutex<Option<String>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for rs in request.into_inner().resource_spans {
            if let Some(r) = &rs.resource {
                self.resources.lock().unwrap().push(attrs(&r.attributes));
            }
            for ss in rs.scope_spans {
                self.spans.lock().unwrap().extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        if let Some(refused) = self.refuse.lock().unwrap().clone() {
            let holds = request
                .resource_logs
                .iter()
                .flat_map(|rl| &rl.scope_logs)
                .flat_map(|sl| &sl.log_records)
                .any(|r| attrs(&r.attributes).values().any(|v| v.contains(&refused)));
            if holds {
                return Err(tonic::Status::invalid_argument(
                    "a record this collector cannot take",
                ));
            }
        }
        for rl in request.resource_logs {
            for sl in rl.scope_logs {
                self.logs.lock().unwrap().extend(sl.log_records);
            }
        }
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

pub fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Serves the collector on `listener` until the returned handle is aborted.
pub fn serve(listener: std::net::TcpListener) -> (Collector, tokio::task::JoinHandle<()>) {
    serve_refusing(listener, None)
}

/// As [`serve`], refusing from its first export the log records holding `refuse` (see
/// [`Collector::refuse`]).
pub fn serve_refusing(
    listener: std::net::TcpListener,
    refuse: Option<&str>,
) -> (Collector, tokio::task::JoinHandle<()>) {
    let collector = Collector::default();
    *collector.refuse.lock().unwrap() = refuse.map(str::to_owned);
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let c = collector.clone();
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(c.clone()))
            .add_service(LogsServiceServer::new(c))
            .serve_with_incoming(incoming)
            .await;
    });
    (collector, task)
}

pub async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}");
}

/// The sandbox with chaperone (configured by `builder`) exporting to a new collector.
pub async fn start_exporting(
    builder: super::EnvBuilder,
) -> (super::Env, Collector, tokio::task::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (collector, task) = serve(listener);
    let env = builder
        .with_proxy_config(&format!(
            "audit:\n  otlp: {{endpoint: \"http://127.0.0.1:{port}\", batch: 1}}\n"
        ))
        .start()
        .await;
    (env, collector, task)
}
