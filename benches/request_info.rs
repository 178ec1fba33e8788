//! Cost of resolving typical requests (and of building the forwarded path).

use std::hint::black_box;

use criterion::Criterion;
use http::{Method, Uri};
// The only line that names the crate (`chaperone` in the main crate).
use chaperone::request_info;

fn resolve_requests(c: &mut Criterion) {
    let cases = [
        ("get", "/api/v1/namespaces/default/pods/nginx-1?timeout=30s"),
        (
            "list",
            "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb&limit=500",
        ),
        (
            "watch",
            "/api/v1/namespaces/default/pods?watch=true&resourceVersion=12345&fieldSelector=metadata.name%3Dnginx-1",
        ),
        (
            "normalise",
            "//apis/apps/v1/namespaces/default/./deployments/x/../web/scale",
        ),
    ];
    for (name, path_and_query) in cases {
        let uri = Uri::from_static(path_and_query);
        c.bench_function(&format!("resolve/{name}"), |b| {
            b.iter(|| request_info::resolve(black_box(&Method::GET), black_box(&uri)))
        });
    }
    let uri = Uri::from_static("/api/v1/namespaces/default/configmaps/caf%C3%A9?timeout=30s");
    let info = request_info::resolve(&Method::GET, &uri).expect("resolves");
    c.bench_function("forward_path_and_query", |b| {
        b.iter(|| black_box(&info).forward_path_and_query(black_box(&uri)))
    });
}

criterion::criterion_group!(benches, resolve_requests);
criterion::criterion_main!(benches);
