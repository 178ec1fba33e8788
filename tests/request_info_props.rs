//! Property tests for request resolution: it never panics, and the request that is forwarded
//! is resolved exactly like the request that was authorised.

// The only line that names the crate (`chaperone` in the main crate).
use chaperone::request_info;

use http::{Method, Uri};
use proptest::prelude::*;

#[path = "support/cases.rs"]
mod cases;

/// Path pieces that steer generated paths into resource parsing and into every refusal.
const PIECES: &[&str] = &[
    "",
    "api",
    "apis",
    "v1",
    "apps",
    "namespaces",
    "default",
    "kube-system",
    "pods",
    "secrets",
    "status",
    "finalize",
    "log",
    "exec",
    "scale",
    "proxy",
    "watch",
    "nginx-1",
    ".",
    "..",
    "%2e",
    "%2E%2e",
    "%2F",
    "%2f",
    "%5C",
    "\\",
    "%00",
    "%0a",
    "%7F",
    "%",
    "%zz",
    "%4",
    "%C3%A9",
    "é",
    "%FF",
    "%C3",
    "%25",
    "%20",
    "%3F",
    "%23",
    ";",
    ":",
    "@",
    "~",
    "+",
    "{",
    "\"",
    "a b",
    "*",
];

/// Queries exercising the watch and metadata.name rules, including undecodable ones.
const QUERIES: &[&str] = &[
    "",
    "?",
    "?watch=1",
    "?watch=false",
    "?watch",
    "?watch=fal%C5%BFe",
    "?watch=fal%C5%BFe&limit=x",
    "?watch=1;x",
    "?fieldSelector=metadata.name%3Dfoo",
    "?fieldSelector=metadata.name==foo&watch=true",
    "?fieldSelector=metadata.name=..",
    "?fieldSelector=metadata.name=a%2Fb",
    "?fieldSelector=metadata.name=a,b",
    "?fieldSelector=metadata.name=b,metadata.name=a",
    "?fieldSelector=metadata.name=x&labelSelector=app%3Dweb&limit=500",
    "?fieldSelector=metadata.name=x&labelSelector=!!",
    "?fieldSelector=metadata.name=x&timeoutSeconds=30s",
    "?fieldSelector=metadata.name=x&labelSelector=a+in+(b,,c),!d",
    "?labelSelector=%00%FF(&limit=-1",
    "?%zz=1&watch=%",
];

/// Methods with a meaning to the resolver, plus `get` (not GET to Go).
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "get",
];

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(METHODS).prop_map(String::from),
        1 => "[A-Za-z!#$%&'*+.^_`|~0-9-]{1,10}",
        1 => any::<String>(),
    ]
}

/// Paths built from [`PIECES`], with an optional trailing slash and a query.
fn kube_path() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(PIECES), 0..9),
        any::<bool>(),
        prop::sample::select(QUERIES),
    )
        .prop_map(|(pieces, trailing_slash, query)| {
            let mut path = format!("/{}", pieces.join("/"));
            if trailing_slash {
                path.push('/');
            }
            path + query
        })
}

/// Arbitrary bytes behind a slash (lossily made a string).
fn byteish_path() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<u8>(), 0..48)
        .prop_map(|bytes| format!("/{}", String::from_utf8_lossy(&bytes)))
}

fn request(method: &str, path_and_query: &str) -> Option<(Method, Uri)> {
    let method = Method::from_bytes(method.as_bytes()).ok()?;
    let uri = Uri::builder().path_and_query(path_and_query).build().ok()?;
    Some((method, uri))
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases::cases(2000),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn resolve_never_panics(
        method in method(),
        path in prop_oneof![kube_path(), byteish_path(), any::<String>()],
    ) {
        // Inputs that http itself rejects never reach the resolver.
        if let Some((method, uri)) = request(&method, &path) {
            let _ = request_info::resolve(&method, &uri);
        }
    }

    #[test]
    fn forwarded_request_is_the_authorised_request(
        method in method(),
        path in prop_oneof![4 => kube_path(), 1 => byteish_path()],
    ) {
        let Some((method, uri)) = request(&method, &path) else { return Ok(()) };
        let Ok(info) = request_info::resolve(&method, &uri) else { return Ok(()) };
        let forwarded = info.forward_path_and_query(&uri);
        let forwarded_uri = Uri::builder().path_and_query(forwarded.as_str()).build();
        prop_assert!(forwarded_uri.is_ok(), "{path} forwarded as unparsable {forwarded}");
        let forwarded_uri = forwarded_uri.unwrap();
        let again = request_info::resolve(&method, &forwarded_uri);
        prop_assert_eq!(again, Ok(info.clone()), "{} forwarded as {}", path, forwarded);
        // Forwarding is a fixed point: a second hop forwards the same bytes.
        prop_assert_eq!(info.forward_path_and_query(&forwarded_uri), forwarded);
    }

    #[test]
    fn normalize_path_is_idempotent_through_encoding(
        raw in prop_oneof![kube_path(), byteish_path(), any::<String>()],
    ) {
        if let Ok(path) = request_info::normalize_path(&raw) {
            let info = request_info::RequestInfo { path: path.clone(), ..Default::default() };
            let encoded = info.forward_path_and_query(&Uri::from_static("/"));
            prop_assert_eq!(request_info::normalize_path(&encoded), Ok(path));
        }
    }
}
