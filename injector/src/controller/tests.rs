use super::*;
use time::Duration as TimeDuration;

fn ca() -> pki::Authority {
    pki::Authority::generate("chaperone-ca", 3650, OffsetDateTime::now_utc()).unwrap()
}

#[test]
fn desired_objects_for_a_namespace() {
    let config = Config::default();
    let ca = ca();
    let cm = ca_config_map("mcp", &ca.cert_pem, &config);
    assert_eq!(cm.metadata.name.as_deref(), Some("chaperone-ca"));
    assert_eq!(cm.metadata.namespace.as_deref(), Some("mcp"));
    assert_eq!(cm.data.unwrap()["ca.crt"], ca.cert_pem);
    let proxy = proxy_config_map("mcp", &config);
    assert_eq!(proxy.metadata.name.as_deref(), Some("chaperone-proxy"));
    assert!(proxy.data.unwrap()["config.yaml"].contains("127.0.0.1:6443"));
    assert!(managed(&proxy_config_map("mcp", &config)));
}

#[test]
fn proxy_certificate_names_cover_loopback_and_the_service() {
    let config = Config {
        cluster_domain: "corp.example".into(),
        ..Config::default()
    };
    assert_eq!(
        proxy_names(&config),
        [
            "127.0.0.1",
            "::1",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.corp.example"
        ]
    );
}

/// (what, existing Secret, current CA, wanted names, now, expected plan)
type Row<'a> = (
    &'a str,
    Option<&'a Secret>,
    &'a str,
    &'a [String],
    OffsetDateTime,
    Plan,
);

#[test]
fn leaf_plan_renews_at_two_thirds_and_on_any_mismatch() {
    let config = Config::default();
    let ca = ca();
    let names = proxy_names(&config);
    let issued_at = OffsetDateTime::now_utc();
    let issued = ca.issue_server(&names, 90, issued_at).unwrap();
    let secret = tls_secret("mcp", "chaperone-proxy-tls", &issued, &ca.cert_pem, &names);
    let renew_at = pki::renew_at(issued.not_before, issued.not_after);
    let other_ca = ca_pem_of_another_ca();
    let mut no_key = secret.clone();
    no_key.data.as_mut().unwrap().remove("tls.key");
    let mut no_dates = secret.clone();
    let a = no_dates.metadata.annotations.as_mut().unwrap();
    a.remove(ANNOTATION_NOT_BEFORE);
    a.insert(ANNOTATION_NOT_AFTER.into(), "someday".into());
    let other_names: Vec<String> = names[..3].to_vec();

    let rows: Vec<Row> = vec![
        // fresh, and just before two thirds
        (
            "fresh",
            Some(&secret),
            &ca.cert_pem,
            &names,
            issued_at,
            Plan::Keep { renew_at },
        ),
        (
            "before 2/3",
            Some(&secret),
            &ca.cert_pem,
            &names,
            renew_at - TimeDuration::seconds(1),
            Plan::Keep { renew_at },
        ),
        // due
        (
            "at 2/3",
            Some(&secret),
            &ca.cert_pem,
            &names,
            renew_at,
            Plan::Issue("due for renewal"),
        ),
        (
            "expired",
            Some(&secret),
            &ca.cert_pem,
            &names,
            issued.not_after + TimeDuration::days(1),
            Plan::Issue("due for renewal"),
        ),
        // mismatches
        (
            "missing",
            None,
            &ca.cert_pem,
            &names,
            issued_at,
            Plan::Issue("missing"),
        ),
        (
            "no key",
            Some(&no_key),
            &ca.cert_pem,
            &names,
            issued_at,
            Plan::Issue("incomplete"),
        ),
        (
            "new CA",
            Some(&secret),
            &other_ca,
            &names,
            issued_at,
            Plan::Issue("signed by another CA"),
        ),
        (
            "new names",
            Some(&secret),
            &ca.cert_pem,
            &other_names,
            issued_at,
            Plan::Issue("names changed"),
        ),
        (
            "no dates",
            Some(&no_dates),
            &ca.cert_pem,
            &names,
            issued_at,
            Plan::Issue("validity unknown"),
        ),
    ];
    for (what, existing, ca_pem, names, now, want) in rows {
        assert_eq!(leaf_plan(existing, ca_pem, names, now), want, "{what}");
    }
}

fn ca_pem_of_another_ca() -> String {
    ca().cert_pem
}

#[test]
fn tls_secret_is_a_kubernetes_tls_secret_with_its_validity() {
    let ca = ca();
    let names = proxy_names(&Config::default());
    let issued = ca
        .issue_server(&names, 90, OffsetDateTime::now_utc())
        .unwrap();
    let s = tls_secret("mcp", "chaperone-proxy-tls", &issued, &ca.cert_pem, &names);
    assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
    let data = s.data.unwrap();
    assert!(data["tls.key"]
        .0
        .starts_with(b"-----BEGIN PRIVATE KEY-----"));
    let a = s.metadata.annotations.unwrap();
    assert_eq!(
        pki::parse_time(&a[ANNOTATION_NOT_AFTER]),
        Some(issued.not_after)
    );
}

#[test]
fn requeue_is_bounded() {
    let now = OffsetDateTime::now_utc();
    let rows = [
        (now - TimeDuration::days(1), REQUEUE_MIN),
        (now + TimeDuration::seconds(120), Duration::from_secs(120)),
        (now + TimeDuration::days(60), REQUEUE_MAX),
    ];
    for (renew_at, want) in rows {
        assert_eq!(requeue_after(renew_at, now), want, "{renew_at}");
    }
}

#[test]
fn each_error_has_its_retry() {
    let rows = [
        (Error::NoName, 3600),
        (
            Error::Issue {
                namespace: "mcp".into(),
                source: pki::Error::Issue(rcgen::Error::CouldNotParseCertificate),
            },
            15,
        ),
    ];
    for (err, secs) in rows {
        assert_eq!(pause(&err), Duration::from_secs(secs), "{err}");
    }
}
