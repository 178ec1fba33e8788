//! Cost of authenticating one request: from the verified-token cache (the steady
//! state, target < 2 µs), and uncached RS256 / ES256 / EdDSA verification.

#[allow(dead_code)]
#[path = "../tests/support/oidc.rs"]
mod oidc;

use std::hint::black_box;
use std::time::Duration;

use chaperone::identity::config::Identity;
use chaperone::identity::Authenticator;
use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use http::HeaderMap;
use jsonwebtoken::Algorithm;
use oidc::{TestIssuer, EC_KID, ED_KID, RSA_KID};

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header"),
    );
    headers
}

fn authenticator(
    rt: &tokio::runtime::Runtime,
    idp: &TestIssuer,
    cache_size: usize,
) -> Authenticator {
    let yaml = format!(
        "cacheSize: {cache_size}\nissuers:\n{}",
        idp.issuer_yaml(&[])
    );
    let config: Identity = serde_yaml::from_str(&yaml).expect("config");
    rt.block_on(async {
        let auth = Authenticator::new(&config, None).expect("authenticator");
        tokio::time::timeout(Duration::from_secs(10), auth.ready())
            .await
            .expect("keys");
        auth
    })
}

/// Runs one authentication to completion without a runtime round trip: with keys
/// loaded, the path never waits, so the future is ready on its first poll.
fn run(auth: &Authenticator, headers: &HeaderMap) {
    let subject = auth
        .authenticate(headers, false)
        .now_or_never()
        .expect("no await with keys loaded")
        .expect("valid token");
    black_box(subject);
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let idp = rt.block_on(TestIssuer::start());
    // Long-lived tokens so a long bench run does not see them expire.
    let mut claims = idp.claims("chaperone");
    claims["exp"] = serde_json::json!(oidc::now() + 86_400);
    claims["groups"] = serde_json::json!(["dev", "ops"]);

    let cached = authenticator(&rt, &idp, 10_000);
    let rs256 = bearer(&idp.mint(Algorithm::RS256, RSA_KID, &claims));
    run(&cached, &rs256);
    c.bench_function("authenticate/cached", |b| b.iter(|| run(&cached, &rs256)));

    let uncached = authenticator(&rt, &idp, 0);
    c.bench_function("authenticate/uncached_rs256", |b| {
        b.iter(|| run(&uncached, &rs256))
    });
    let es256 = bearer(&idp.mint(Algorithm::ES256, EC_KID, &claims));
    c.bench_function("authenticate/uncached_es256", |b| {
        b.iter(|| run(&uncached, &es256))
    });
    let eddsa = bearer(&idp.mint(Algorithm::EdDSA, ED_KID, &claims));
    c.bench_function("authenticate/uncached_eddsa", |b| {
        b.iter(|| run(&uncached, &eddsa))
    });
}

criterion_group!(identity, benches);
criterion_main!(identity);
