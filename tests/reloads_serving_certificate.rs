//! The proxy's serving certificate is re-read when its files change on disk, as when
//! the injector's controller rotates the Secret; a broken pair keeps the old one.

mod support;

use chaperone::pki::{Authority, SERVING_NAMES};
use support::sandbox;

fn write_pair(dir: &std::path::Path, ca: &Authority) {
    let leaf = ca.issue_server(SERVING_NAMES, 1).unwrap();
    // Key first, then certificate, as a rotation by hand would. A reader between the two
    // would see a mismatched pair, which it must not take (`tls::tests` checks that).
    std::fs::write(dir.join("tls.key"), leaf.key_pem).unwrap();
    std::fs::write(dir.join("tls.crt"), leaf.cert_pem).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_get_the_rotated_certificate() {
    let env = sandbox().start().await;
    let dir = env.dir.path().join("proxy-tls");
    std::fs::create_dir_all(&dir).unwrap();
    let old_ca = Authority::generate("old", 1).unwrap();
    let new_ca = Authority::generate("new", 1).unwrap();
    write_pair(&dir, &old_ca);

    let kc = env.started.kubeconfig.display();
    let text = format!(
        "listen: [\"127.0.0.1:0\"]\nadmin: {{listen: 127.0.0.1:0}}\n\
         tls: {{certFile: {d}/tls.crt, keyFile: {d}/tls.key}}\n\
         upstream: {{kubeconfig: {{path: {kc}}}}}\n{identity}{policy}",
        d = dir.display(),
        identity = support::SANDBOX_IDENTITY,
        policy = env.policy_config(),
    );
    let config = chaperone::config::Config::parse(std::path::Path::new("t.yaml"), &text).unwrap();
    let proxy = chaperone::launch::proxy(&config, &|_| None).await.unwrap();
    let url = format!("https://{}/version", proxy.addrs[0]);

    let trusts = |ca: &Authority| {
        let tls = chaperone::tls::client_config(ca.cert_pem.as_bytes(), "ca", None).unwrap();
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
        let addr = proxy.addrs[0];
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            connector.connect(name, tcp).await.is_ok()
        }
    };
    assert!(trusts(&old_ca).await, "serves the first certificate");
    assert!(!trusts(&new_ca).await);

    write_pair(&dir, &new_ca);
    assert!(
        trusts(&new_ca).await,
        "serves the rotated certificate on the next handshake"
    );
    assert!(!trusts(&old_ca).await);

    // A broken pair on disk: the last good certificate keeps serving.
    std::fs::write(dir.join("tls.crt"), "not a certificate").unwrap();
    assert!(trusts(&new_ca).await, "keeps the last good certificate");
    let _ = url;
    proxy.stop().await;
    env.stop().await;
}
