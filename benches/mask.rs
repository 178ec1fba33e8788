//! Masking throughput on ~50 MB Lists, fed in 64 KiB chunks, on one core.
//!
//! * `mixed-list`: a `kind: List` of Secrets and ConfigMaps with realistic metadata
//!   (labels, last-applied annotations, managedFields), TLS and password data, config
//!   files; the built-in Secret rule plus a ConfigMap `key_regex` rule mask ~12 values per
//!   object.
//! * `secret-list`: a `SecretList` (items without `kind`) under the built-in rule only;
//!   `secret-list-16k` the same fed in 16 KiB frames, as an API server's HTTP/2 DATA
//!   frames come (most items then span two frames).
//! * `pod-list`: a PodList under an env `name_regex` rule that matches no variable: every
//!   byte is scanned and validated, nothing is rewritten.
//! * `pod-list-detectors`: the same with the jwt, aws-access-key and github-token
//!   detectors on every string value of the pods (no match either).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use bytes::Bytes;
use chaperone::body::BoxError;
use chaperone::mask::{apply, Masker, Rule, Target};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{header, HeaderMap, HeaderValue};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use serde_json::{json, Value};

const TARGET_BYTES: usize = 50 << 20;
const CHUNK: usize = 64 << 10;

fn b64(n: usize, seed: usize) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    (0..n)
        .map(|i| A[(i * 7 + seed * 13) % 64] as char)
        .collect()
}

fn metadata(kind: &str, i: usize, last_applied: Option<String>) -> Value {
    let mut annotations =
        json!({"meta.helm.sh/release-name": "app", "meta.helm.sh/release-namespace": "team-a"});
    if let Some(la) = last_applied {
        annotations["kubectl.kubernetes.io/last-applied-configuration"] = Value::String(la);
    }
    json!({
        "name": format!("{}-{i}", kind.to_lowercase()),
        "namespace": format!("team-{}", i % 7),
        "uid": format!("6f1c2b7e-4d3a-4c1e-9b2f-{:012x}", i),
        "resourceVersion": format!("{}", 100_000 + i),
        "creationTimestamp": "2024-05-01T12:00:00Z",
        "labels": {"app.kubernetes.io/name": "app", "app.kubernetes.io/instance": format!("app-{i}"),
                   "app.kubernetes.io/managed-by": "Helm", "helm.sh/chart": "app-1.2.3"},
        "annotations": annotations,
        "managedFields": [{
            "manager": "helm", "operation": "Update", "apiVersion": "v1",
            "time": "2024-05-01T12:00:00Z", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:data": {".": {}, "f:password": {}, "f:tls.crt": {}},
                         "f:metadata": {"f:annotations": {".": {}, "f:meta.helm.sh/release-name": {}},
                                        "f:labels": {".": {}, "f:app.kubernetes.io/name": {}}}}
        }]
    })
}

fn secret(i: usize) -> Value {
    let data = json!({
        "tls.crt": b64(1600, i), "tls.key": b64(2200, i + 1), "password": b64(24, i + 2),
        "username": b64(8, i + 3), "ca.crt": b64(1400, i + 4)
    });
    let la = i
        .is_multiple_of(2)
        .then(|| json!({"apiVersion": "v1", "kind": "Secret", "data": data}).to_string());
    json!({"kind": "Secret", "apiVersion": "v1", "metadata": metadata("Secret", i, la),
           "data": data, "type": "kubernetes.io/tls"})
}

fn configmap(i: usize) -> Value {
    let conf =
        "server {\n  listen 8080;\n  location / { proxy_pass http://backend; }\n}\n".repeat(12);
    let data = json!({
        "nginx.conf": conf, "LOG_LEVEL": "info", "DB_HOST": "postgres.team-a.svc",
        "DB_PASSWORD": "hunter2-hunter2", "API_TOKEN": "tok-0123456789", "FEATURE_FLAGS": "a,b,c",
        "application.yaml": "spring:\n  datasource:\n    url: jdbc:postgresql://db/app\n".repeat(8)
    });
    let la = i
        .is_multiple_of(2)
        .then(|| json!({"apiVersion": "v1", "kind": "ConfigMap", "data": data}).to_string());
    json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": metadata("ConfigMap", i, la), "data": data})
}

fn pod(i: usize) -> Value {
    let env: Vec<Value> = ["HOME", "LOG_LEVEL", "PORT", "JAVA_OPTS", "REGION", "TZ"]
        .iter()
        .map(|n| json!({"name": n, "value": format!("value-of-{n}-{i}")}))
        .collect();
    let container = |name: &str| {
        json!({
            "name": name, "image": format!("registry.example.com/team/{name}:1.2.{i}"),
            "ports": [{"containerPort": 8080, "protocol": "TCP", "name": "http"}],
            "env": env, "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
            "volumeMounts": [{"name": "config", "mountPath": "/etc/app", "readOnly": true},
                             {"name": "kube-api-access-abcde", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"}, "periodSeconds": 10},
            "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"
        })
    };
    let status = |name: &str| {
        json!({
            "name": name, "ready": true, "restartCount": 0, "image": "registry.example.com/team/app:1.2.3",
            "imageID": "registry.example.com/team/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "containerID": "containerd://0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "started": true, "state": {"running": {"startedAt": "2024-05-01T12:00:05Z"}}
        })
    };
    json!({
        "metadata": metadata("Pod", i, None),
        "spec": {"containers": [container("app"), container("sidecar")],
                 "volumes": [{"name": "config", "configMap": {"name": "app-config", "defaultMode": 420}}],
                 "restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "serviceAccountName": "app",
                 "nodeName": format!("node-{}", i % 20), "schedulerName": "default-scheduler",
                 "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]},
        "status": {"phase": "Running", "podIP": "10.0.1.2", "hostIP": "192.168.0.10", "qosClass": "Burstable",
                   "startTime": "2024-05-01T12:00:00Z",
                   "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2024-05-01T12:00:06Z"},
                                  {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2024-05-01T12:00:00Z"}],
                   "containerStatuses": [status("app"), status("sidecar")]}
    })
}

fn list(kind: &str, mut item: impl FnMut(usize) -> Value) -> Bytes {
    let mut out = format!(
        r#"{{"kind":"{kind}","apiVersion":"v1","metadata":{{"resourceVersion":"123456"}},"items":["#
    )
    .into_bytes();
    let mut i = 0;
    while out.len() < TARGET_BYTES {
        if i > 0 {
            out.push(b',');
        }
        out.extend(serde_json::to_vec(&item(i)).unwrap_or_default());
        i += 1;
    }
    out.extend_from_slice(b"]}");
    Bytes::from(out)
}

/// Masks `input`; returns the output and the number of values masked.
fn run(
    rt: &tokio::runtime::Runtime,
    masker: &Masker,
    target: &Target<'_>,
    input: &Bytes,
) -> (Vec<u8>, u64) {
    let count = Arc::new(AtomicU64::new(0));
    let out = rt.block_on(mask(masker, target, input, count.clone()));
    (out, count.load(std::sync::atomic::Ordering::Relaxed))
}

/// The measured work: the output is only counted, not kept.
fn count_out(
    rt: &tokio::runtime::Runtime,
    masker: &Masker,
    target: &Target<'_>,
    input: &Bytes,
    chunk: usize,
) -> usize {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let plan = masker.plan(target, &h);
    let out = apply(chunked(input, chunk), plan, Arc::new(AtomicU64::new(0)));
    rt.block_on(async move {
        let mut out = out;
        let mut n = 0;
        while let Some(f) = out.frame().await {
            n += f
                .map(|f| f.into_data().map_or(0, |d| d.len()))
                .unwrap_or_default();
        }
        n
    })
}

/// `input` as a body of `chunk`-byte frames (slices: no copy).
fn chunked(input: &Bytes, chunk: usize) -> chaperone::body::Body {
    let chunks: Vec<Result<Frame<Bytes>, BoxError>> = (0..input.len())
        .step_by(chunk)
        .map(|i| Ok(Frame::data(input.slice(i..(i + chunk).min(input.len())))))
        .collect();
    StreamBody::new(futures_util::stream::iter(chunks)).boxed()
}

async fn mask(
    masker: &Masker,
    target: &Target<'_>,
    input: &Bytes,
    count: Arc<AtomicU64>,
) -> Vec<u8> {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let plan = masker.plan(target, &h);
    let out = apply(chunked(input, CHUNK), plan, count).collect().await;
    match out {
        Ok(c) => c.to_bytes().to_vec(),
        Err(e) => panic!("masking failed: {e}"),
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let rules = vec![
        Rule {
            resources: vec!["configmaps".into()],
            fields: vec!["data.*".into()],
            key_regex: Some("(?i)pass|token|secret|key".into()),
            ..Rule::default()
        },
        Rule {
            resources: vec!["pods".into()],
            fields: vec!["spec.containers[*].env[*].value".into()],
            name_regex: Some("(?i)pass|token|secret|key".into()),
            ..Rule::default()
        },
    ];
    let masker = Masker::compile(&rules).unwrap();
    let mut with_detectors = rules.clone();
    with_detectors.push(Rule {
        resources: vec!["pods".into()],
        detectors: vec!["jwt".into(), "aws-access-key".into(), "github-token".into()],
        ..Rule::default()
    });
    let detecting = Masker::compile(&with_detectors).unwrap();
    let mixed = list(
        "List",
        |i| if i % 2 == 0 { secret(i) } else { configmap(i) },
    );
    let secrets = list("SecretList", |i| {
        let mut s = secret(i);
        s.as_object_mut().map(|o| o.remove("kind"));
        s
    });
    let pods = list("PodList", pod);
    let cm = Target {
        resource: "configmaps",
        ..Target::default()
    };
    let sec = Target {
        resource: "secrets",
        ..Target::default()
    };
    let po = Target {
        resource: "pods",
        ..Target::default()
    };

    let mut g = c.benchmark_group("mask");
    g.sample_size(10);
    g.measurement_time(std::time::Duration::from_secs(8));
    for (name, m, t, input, chunk) in [
        ("mixed-list", &masker, &cm, &mixed, CHUNK),
        ("secret-list", &masker, &sec, &secrets, CHUNK),
        ("secret-list-16k", &masker, &sec, &secrets, 16 << 10),
        ("pod-list", &masker, &po, &pods, CHUNK),
        ("pod-list-detectors", &detecting, &po, &pods, CHUNK),
    ] {
        let (out, masked) = run(&rt, m, t, input);
        let items = input.windows(12).filter(|w| w == b"\"metadata\":{").count() - 1;
        println!(
            "{name}: {:.1} MB in, {:.1} MB out, {items} objects, {masked} values masked",
            input.len() as f64 / 1e6,
            out.len() as f64 / 1e6
        );
        assert!(serde_json::from_slice::<serde::de::IgnoredAny>(&out).is_ok());
        if masked == 0 {
            assert!(out == input[..], "{name}: nothing masked but bytes differ");
        }
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_function(name, |b| b.iter(|| count_out(&rt, m, t, input, chunk)));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
