//! The injector's controller and certificate keeping, run against the sandbox API
//! server with a real kube-rs client over TLS: label a namespace and it gets the
//! proxy's CA, config and a serving certificate that verifies for every name the pod's
//! clients dial; the webhook configuration gets the injector's CA as its `caBundle`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use chaperone_injector::config::Config;
use chaperone_injector::{certs, controller};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use support::{ok, sandbox, Env};

async fn client(env: &Env) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(&env.started.kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

fn text(secret: &Secret, key: &str) -> String {
    let data = secret.data.as_ref().expect("secret has data");
    String::from_utf8(data[key].0.clone()).unwrap()
}

/// Polls `get` until it returns something, for at most 20 s.
async fn eventually<T, F, Fut>(what: &str, mut get: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(t) = get().await {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// `agents`, labelled for injection; `bystanders`, not; and the injector's own.
async fn create_namespaces(env: &Env) {
    for ns in ["chaperone-system", "agents", "bystanders"] {
        ok(&env.kubectl_direct(&["create", "namespace", ns]).await);
    }
    ok(&env
        .kubectl_direct(&[
            "label",
            "namespace",
            "agents",
            "chaperone.dev/inject=enabled",
        ])
        .await);
}

/// The controller, running until `stop` is called.
struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    run: tokio::task::JoinHandle<()>,
}

fn run_controller(ctx: Arc<controller::Context>) -> Running {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(controller::run(ctx, async move {
        let mut stopped = stopped;
        let _ = stopped.wait_for(|s| *s).await;
    }));
    Running { stop, run }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(10), self.run)
            .await
            .expect("the controller stops on shutdown")
            .unwrap();
    }
}

/// A TLS handshake with `cert`/`key` on loopback, the client trusting only `ca` and
/// dialling `name`: whether the certificate serves that name.
async fn serves(cert: &str, key: &str, ca: &str, name: &str) -> Result<(), String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer> = rustls_pemfile::certs(&mut cert.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key: PrivateKeyDer = rustls_pemfile::private_key(&mut key.as_bytes())
        .unwrap()
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = acceptor.accept(tcp).await;
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let result = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(name, tcp)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    accept.abort();
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelled_namespaces_get_the_proxys_ca_config_and_serving_certificate() {
    let env = sandbox().start().await;
    let client = client(&env).await;
    create_namespaces(&env).await;

    let config = Arc::new(Config::default());
    let ca = certs::proxy_ca(&client, &config).await.unwrap();
    // A second replica starting at the same time converges on the same CA.
    let again = certs::proxy_ca(&client, &config).await.unwrap();
    assert_eq!(ca.cert_pem, again.cert_pem);

    let ca_pem = ca.cert_pem.clone();
    let running = run_controller(Arc::new(controller::Context {
        client: client.clone(),
        config: config.clone(),
        ca,
    }));

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "agents");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "agents");
    let tls = eventually("agents's serving certificate", || {
        let secrets = secrets.clone();
        async move { secrets.get_opt("chaperone-proxy-tls").await.unwrap() }
    })
    .await;
    let ca_map = config_maps.get("chaperone-ca").await.unwrap();
    assert_eq!(ca_map.data.as_ref().unwrap()["ca.crt"], ca_pem);
    let proxy_map = config_maps.get("chaperone-proxy").await.unwrap();
    let proxy_config = &proxy_map.data.as_ref().unwrap()["config.yaml"];
    assert!(proxy_config.contains("127.0.0.1:443"), "{proxy_config}");
    // The config the controller hands the proxy is one the proxy accepts.
    chaperone::config::Config::parse(std::path::Path::new("config.yaml"), proxy_config)
        .unwrap_or_else(|e| panic!("the proxy refuses its config: {e}\n{proxy_config}"));

    // The proxy's certificate serves every name a client in the pod dials, under the
    // CA the pod trusts, and no other name.
    let (cert, key) = (text(&tls, "tls.crt"), text(&tls, "tls.key"));
    for name in [
        "127.0.0.1",
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ] {
        serves(&cert, &key, &ca_pem, name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let wrong = serves(&cert, &key, &ca_pem, "example.com").await;
    assert!(wrong.is_err(), "served example.com");

    // An unlabelled namespace gets nothing.
    let other: Api<Secret> = Api::namespaced(client.clone(), "bystanders");
    assert!(other
        .get_opt("chaperone-proxy-tls")
        .await
        .unwrap()
        .is_none());

    // Drift is repaired: a deleted certificate is issued again when the namespace
    // next changes (and at the latest at the periodic requeue).
    secrets
        .delete("chaperone-proxy-tls", &Default::default())
        .await
        .unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let touch = serde_json::json!({"metadata": {"annotations": {"touched": "1"}}});
    namespaces
        .patch("agents", &PatchParams::default(), &Patch::Merge(&touch))
        .await
        .unwrap();
    let reissued = eventually("the certificate issued again", || {
        let secrets = secrets.clone();
        async move { secrets.get_opt("chaperone-proxy-tls").await.unwrap() }
    })
    .await;
    assert_ne!(text(&reissued, "tls.crt"), cert);

    running.stop().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_configuration_gets_the_injectors_ca_bundle() {
    let env = sandbox().start().await;
    let client = client(&env).await;
    ok(&env
        .kubectl_direct(&["create", "namespace", "chaperone-system"])
        .await);
    let manifest: MutatingWebhookConfiguration =
        serde_yaml::from_str(include_str!("../manifests/base/webhook.yaml")).unwrap();
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    webhooks
        .create(&PostParams::default(), &manifest)
        .await
        .unwrap();

    let config = Config::default();
    let serving = certs::webhook_serving(&client, &config).await.unwrap();
    assert!(certs::patch_ca_bundle(&client, &config, &serving.ca_pem)
        .await
        .unwrap());
    // Idempotent: nothing to patch the second time.
    assert!(!certs::patch_ca_bundle(&client, &config, &serving.ca_pem)
        .await
        .unwrap());
    let patched = webhooks.get("chaperone-injector").await.unwrap();
    let bundle = patched.webhooks.unwrap()[0]
        .client_config
        .ca_bundle
        .clone()
        .unwrap();
    assert_eq!(String::from_utf8(bundle.0).unwrap(), serving.ca_pem);
    // The API server would call the webhook at its Service name: the serving
    // certificate verifies for it under that bundle.
    serves(
        &serving.cert_pem,
        &serving.key_pem,
        &serving.ca_pem,
        "chaperone-injector.chaperone-system.svc",
    )
    .await
    .unwrap();
    // A restart reads the same certificate back instead of issuing another.
    let again = certs::webhook_serving(&client, &config).await.unwrap();
    assert_eq!(again.cert_pem, serving.cert_pem);
    env.stop().await;
}

/// The injector's `otlp` reaches every injected proxy: the config the controller writes
/// loads in the proxy, and its audit recording exports to that collector (here the
/// exporter is built, which checks the endpoint the way the proxy does at start).
#[tokio::test]
async fn the_injectors_collector_is_where_injected_proxies_export() {
    use chaperone_injector::config::Otlp;
    let rendered = |otlp: Option<&str>| {
        let config = Config {
            otlp: otlp.map(|endpoint| Otlp {
                endpoint: endpoint.into(),
            }),
            ..Config::default()
        };
        let text = chaperone_injector::proxy_config::render(&config);
        chaperone::config::Config::parse(std::path::Path::new("config.yaml"), &text)
            .unwrap_or_else(|e| panic!("the proxy refuses its config: {e}\n{text}"))
    };
    assert!(rendered(None).audit.otlp.is_none());
    for endpoint in [
        "http://otel-collector.chaperone-observability:4317",
        "https://otel.example.com:443/",
        "http://[fd00::7]:4317",
    ] {
        let config = rendered(Some(endpoint));
        let settings = config.audit.settings(&|_| None);
        let otlp = settings.otlp.expect("an OTLP sink");
        assert_eq!(otlp.endpoint, endpoint);
        assert_eq!(settings.file.as_deref(), Some(std::path::Path::new("-")));
        chaperone::audit::otlp::Exporter::new(&otlp).unwrap_or_else(|e| panic!("{endpoint}: {e}"));
    }
}

/// An AccessRequest, as a proxy creates it, held until `expires` (RFC 3339).
fn access_request(name: &str, expires: &str) -> kube::api::DynamicObject {
    let mut object =
        kube::api::DynamicObject::new(name, &chaperone_injector::retention::resource());
    object.data = serde_json::json!({"spec": {
        "requester": {"user": "system:serviceaccount:agents:mcp"},
        "request": {"verb": "create", "apiGroup": "rbac.authorization.k8s.io", "resource": "rolebindings", "namespace": "agents"},
        "rule": "bindings-need-a-human",
        "expiresAt": expires,
    }});
    object
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_requests_are_deleted_once_past_their_retention() {
    use kube::api::DynamicObject;
    let env = sandbox().start().await;
    let client = client(&env).await;
    create_namespaces(&env).await;
    let now = time::OffsetDateTime::now_utc();
    let ago =
        |minutes: i64| chaperone_injector::pki::format_time(now - time::Duration::minutes(minutes));
    let resource = chaperone_injector::retention::resource();
    let api = |ns: &str| Api::<DynamicObject>::namespaced_with(client.clone(), ns, &resource);
    // (namespace, name, held until, status, deleted)
    let rows = [
        (
            "agents",
            "approved-grant-over",
            ago(190),
            serde_json::json!({"phase": "Approved", "decidedAt": ago(180), "grantUntil": ago(120)}),
            true,
        ),
        (
            "agents",
            "approved-grant-running",
            ago(190),
            serde_json::json!({"phase": "Approved", "decidedAt": ago(180), "grantUntil": ago(-30)}),
            false,
        ),
        (
            "agents",
            "approved-recently",
            ago(15),
            serde_json::json!({"phase": "Approved", "decidedAt": ago(10), "grantUntil": ago(5)}),
            false,
        ),
        (
            "agents",
            "approved-by-hand",
            ago(130),
            serde_json::json!({"phase": "Approved", "decidedAt": ago(120)}),
            true,
        ),
        (
            "agents",
            "denied-long-ago",
            ago(130),
            serde_json::json!({"phase": "Denied", "decidedAt": ago(120)}),
            true,
        ),
        (
            "agents",
            "denied-recently",
            ago(10),
            serde_json::json!({"phase": "Denied", "decidedAt": ago(5)}),
            false,
        ),
        (
            "agents",
            "pending-a-day-over",
            ago(25 * 60),
            serde_json::Value::Null,
            true,
        ),
        (
            "agents",
            "pending-an-hour-over",
            ago(60),
            serde_json::Value::Null,
            false,
        ),
        (
            "agents",
            "pending-now",
            ago(-1),
            serde_json::Value::Null,
            false,
        ),
        // Not a labelled namespace: not the injector's.
        (
            "bystanders",
            "denied-long-ago",
            ago(130),
            serde_json::json!({"phase": "Denied", "decidedAt": ago(120)}),
            false,
        ),
    ];
    for (ns, name, expires, status, _) in &rows {
        api(ns)
            .create(&PostParams::default(), &access_request(name, expires))
            .await
            .unwrap();
        if !status.is_null() {
            let patch = serde_json::json!({"status": status});
            api(ns)
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
    }

    let config = Arc::new(Config::default());
    let ca = certs::proxy_ca(&client, &config).await.unwrap();
    let running = run_controller(Arc::new(controller::Context {
        client: client.clone(),
        config,
        ca,
    }));
    // Reconciled once the namespace has its certificate; the sweep follows in the same pass.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "agents");
    for (ns, name, _, _, _) in rows.iter().filter(|r| r.4) {
        let api = api(ns);
        eventually(&format!("{ns}/{name} deleted"), || {
            let api = api.clone();
            async move { api.get_opt(name).await.unwrap().is_none().then_some(()) }
        })
        .await;
    }
    assert!(secrets
        .get_opt("chaperone-proxy-tls")
        .await
        .unwrap()
        .is_some());
    for (ns, name, _, _, _) in rows.iter().filter(|r| !r.4) {
        assert!(
            api(ns).get_opt(name).await.unwrap().is_some(),
            "{ns}/{name} was deleted"
        );
    }

    running.stop().await;
    env.stop().await;
}
