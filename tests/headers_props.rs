//! Properties of the headers sent upstream, over random mixes of what callers send: the
//! caller's credentials, asserted identities, hop-by-hop and encoding headers never go
//! upstream; `Accept` is narrowed to JSON when the response must be read; impersonation
//! is refused; and every other header goes as it came.

use chaperone::headers::{prepare_upstream, Error};
use chaperone::identity::WEBSOCKET_BEARER_PREFIX;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};

#[path = "support/cases.rs"]
mod cases;

/// Headers the API server must never see from the caller: its credentials, the headers
/// chaperone replaces, connection-level ones, and client addresses it could make up.
const NEVER: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "accept-encoding",
    "host",
    "te",
    "trailer",
    "transfer-encoding",
    "keep-alive",
    "proxy-connection",
    "x-forwarded-for",
    "x-real-ip",
];

/// Headers that are the request's own and go upstream as they came (unless `Connection`
/// names them).
const PLAIN: &[&str] = &[
    "user-agent",
    "content-type",
    "x-request-id",
    "traceparent",
    "audit-id",
    "x-private",
    "x-remotex-user",
    "impersonatex",
];

/// Names whose meaning depends on the rest of the request.
const SPECIAL: &[&str] = &[
    "connection",
    "upgrade",
    "accept",
    "sec-websocket-protocol",
    "x-remote-user",
    "x-remote-group",
    "x-remote-extra-scopes",
    "impersonate-user",
    "impersonate-group",
    "impersonate-extra-scopes",
];

fn any_name() -> impl Strategy<Value = &'static str> {
    select([NEVER, PLAIN, SPECIAL].concat())
}

/// The name as a client might spell it: HTTP names are case-insensitive.
fn spelled(name: &'static str) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<bool>(), name.len()).prop_map(move |upper| {
        name.chars()
            .zip(upper)
            .map(|(c, u)| if u { c.to_ascii_uppercase() } else { c })
            .collect()
    })
}

fn list(items: Vec<&'static str>) -> impl Strategy<Value = String> {
    (
        subsequence(items.clone(), 0..=items.len().min(4)),
        select(vec![",", ", ", " ,", ",,"]),
    )
        .prop_map(|(picked, sep)| picked.join(sep))
}

/// The caller's token as a WebSocket subprotocol (`WEBSOCKET_BEARER_PREFIX` + base64url).
const BEARER: &str = "base64url.bearer.authorization.k8s.io.dG9rZW4";

fn value_for(name: &'static str) -> BoxedStrategy<String> {
    match name {
        "connection" => list(vec![
            "keep-alive",
            "Upgrade",
            "x-private",
            "accept",
            "user-agent",
            "sec-websocket-protocol",
            "X-Request-Id",
            "authorization",
            "close",
        ])
        .boxed(),
        "accept" => list(vec![
            "application/json",
            "application/json;as=Table;v=v1;g=meta.k8s.io",
            "Application/JSON",
            "application/vnd.kubernetes.protobuf",
            "application/yaml",
            "*/*",
            "*/*;q=0.8",
            "application/*",
            "text/plain",
            " ",
        ])
        .boxed(),
        "sec-websocket-protocol" => list(vec![
            BEARER,
            WEBSOCKET_BEARER_PREFIX,
            "v5.channel.k8s.io",
            "v4.channel.k8s.io",
            " channel.k8s.io ",
        ])
        .boxed(),
        _ => "[ -~]{0,24}".prop_map(|v| v.trim().to_owned()).boxed(),
    }
}

fn header() -> impl Strategy<Value = (String, String)> {
    any_name().prop_flat_map(|name| (spelled(name), value_for(name)))
}

fn request() -> impl Strategy<Value = (Vec<(String, String)>, bool, bool)> {
    (
        prop::collection::vec(header(), 0..12),
        any::<bool>(),
        any::<bool>(),
    )
}

fn build(sent: &[(String, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in sent {
        h.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    h
}

fn values<'a>(h: &'a HeaderMap, name: &str) -> Vec<&'a [u8]> {
    h.get_all(name).iter().map(HeaderValue::as_bytes).collect()
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases::cases(2000),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

#[test]
fn the_bearer_subprotocol_is_the_one_chaperone_reads() {
    assert!(BEARER.starts_with(WEBSOCKET_BEARER_PREFIX));
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn what_goes_upstream((sent, upgrade, inspect) in request()) {
        let before = build(&sent);
        let mut after = before.clone();
        let result = prepare_upstream(&mut after, upgrade, inspect);

        // Impersonation is refused whatever else the request carries.
        let impersonates = before.keys().any(|n| n.as_str().starts_with("impersonate-"));
        if impersonates {
            prop_assert!(matches!(result, Err(Error::Impersonation(_))), "{result:?}");
            return Ok(());
        }
        // Otherwise only an Accept with nothing to inspect is refused, and only when the
        // response must be read: no JSON form and no wildcard in the first `Accept` (an
        // empty or absent one means JSON).
        let accept = before.get("accept").map(|v| v.to_str().unwrap()).unwrap_or("");
        let readable = accept.trim().is_empty() || accept.split(',').any(|range| {
            let essence = range.split(';').next().unwrap().trim();
            ["application/json", "application/*", "*/*"]
                .iter()
                .any(|e| essence.eq_ignore_ascii_case(e))
        });
        if inspect && !readable {
            prop_assert!(matches!(result, Err(Error::NotAcceptable(_))), "{accept:?}: {result:?}");
            return Ok(());
        }
        prop_assert!(result.is_ok(), "{result:?}");

        for name in NEVER {
            prop_assert!(!after.contains_key(*name), "{name} went upstream");
        }
        for name in after.keys() {
            prop_assert!(!name.as_str().starts_with("x-remote-"), "{name} went upstream");
        }
        for v in after.get_all("sec-websocket-protocol") {
            for p in v.as_bytes().split(|&b| b == b',') {
                prop_assert!(!p.trim_ascii().starts_with(WEBSOCKET_BEARER_PREFIX.as_bytes()));
            }
        }
        if upgrade {
            prop_assert_eq!(values(&after, "connection"), [b"Upgrade".as_slice()]);
        } else {
            prop_assert!(!after.contains_key("connection") && !after.contains_key("upgrade"));
        }
        if inspect {
            let accept = values(&after, "accept");
            prop_assert_eq!(accept.len(), 1);
            for range in std::str::from_utf8(accept[0]).unwrap().split(',') {
                let essence = range.split(';').next().unwrap().trim();
                prop_assert!(essence.eq_ignore_ascii_case("application/json"), "{range:?}");
            }
        }

        // What `Connection` names is gone (but for the headers chaperone sets itself).
        let named: Vec<String> = before
            .get_all("connection")
            .iter()
            .flat_map(|v| v.to_str().unwrap().split(','))
            .map(|n| n.trim().to_ascii_lowercase())
            .filter(|n| !n.is_empty())
            .collect();
        for n in &named {
            let set_by_chaperone = (n == "accept" && inspect) || (n == "upgrade" && upgrade);
            if !set_by_chaperone {
                prop_assert!(!after.contains_key(n.as_str()), "{n} is named by Connection");
            }
        }
        // Everything else goes as it came, every value in order.
        for name in PLAIN.iter().filter(|p| !named.iter().any(|n| n == *p)) {
            prop_assert_eq!(values(&after, name), values(&before, name), "{}", name);
        }
        if !inspect && !named.iter().any(|n| n == "accept") {
            prop_assert_eq!(values(&after, "accept"), values(&before, "accept"));
        }
    }
}
