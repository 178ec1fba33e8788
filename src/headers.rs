//! Decides which of the caller's headers may go upstream, and in what form.
//!
//! The caller's credentials never leave the proxy, impersonation is refused outright,
//! and content negotiation is narrowed to JSON so every response can be inspected.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::request_info::RequestInfo;
use crate::status::Status;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("impersonation is not allowed through chaperone: the request carries the {0} header")]
    Impersonation(String),
    #[error(
        "chaperone needs JSON responses so it can inspect them, but the request accepts only {0:?}; \
         accept application/json"
    )]
    NotAcceptable(String),
    #[error("the Accept header is not valid text")]
    BadAccept,
    #[error("the caller's identity {0:?} cannot be sent as an impersonation header")]
    BadImpersonation(String),
    #[error(
        "chaperone upgrades only exec, attach, port-forward and proxy connections, not {0}: \
         what a websocket watch or log stream carries could not be masked or recorded; send \
         the request without `Connection: Upgrade`"
    )]
    Upgrade(String),
    #[error(
        "an upgrade request carries no body, and this one has one: a body sent with an \
         upgrade could not be reviewed or recorded"
    )]
    UpgradeWithBody,
    #[error(
        "chaperone does not upgrade a connection through nodes/proxy: the kubelet's API \
         behind it runs exec, attach and port-forward in every pod on the node, past the \
         rules for pods/exec; exec in a pod through pods/exec"
    )]
    NodeProxyUpgrade,
    #[error("an upgrade needs HTTP/1.1, and this request is {0:?}")]
    UpgradeVersion(http::Version),
}

impl Error {
    pub fn status(&self) -> Status {
        match self {
            Error::Impersonation(_) => Status::forbidden(self.to_string()),
            Error::NotAcceptable(_) => Status::not_acceptable(self.to_string()),
            Error::BadAccept => Status::bad_request(self.to_string()),
            Error::BadImpersonation(_) => Status::unauthorized(self.to_string()),
            Error::Upgrade(_) | Error::UpgradeWithBody | Error::UpgradeVersion(_) => {
                Status::bad_request(self.to_string())
            }
            Error::NodeProxyUpgrade => Status::forbidden(self.to_string()),
        }
    }
}

/// Refuses a request that tries to act as someone else (`Impersonate-User`,
/// `Impersonate-Group`, `Impersonate-Uid`, `Impersonate-Extra-*`): the proxy forwards
/// with its own credential, so impersonation would borrow the proxy's rights.
pub fn check_impersonation(headers: &HeaderMap) -> Result<(), Error> {
    match headers
        .keys()
        .find(|name| name.as_str().starts_with("impersonate-"))
    {
        Some(name) => Err(Error::Impersonation(name.as_str().to_owned())),
        None => Ok(()),
    }
}

/// Refuses to upgrade a connection the API server would not tunnel. The API server
/// upgrades an exec, attach or port-forward (SPDY or websocket) and passes a proxied
/// service's upgrade on, and those are what chaperone tunnels. It also answers a watch
/// or a log stream over a websocket, in frames chaperone does not read: forwarded, they
/// would carry Secrets past the masker and events past the record. And an upgrade that
/// carries a body would take it past the approval's review. So any other upgrade, and
/// any upgrade with a body, is refused. So is one through `nodes/proxy` (RBAC reads a
/// websocket's GET as `get`, and the kubelet runs an exec for it in any pod on the
/// node), and one not in HTTP/1.1, which hyper would forward without ever tunnelling.
pub fn check_upgrade(
    info: &RequestInfo,
    has_body: bool,
    version: http::Version,
) -> Result<(), Error> {
    if version != http::Version::HTTP_11 {
        return Err(Error::UpgradeVersion(version));
    }
    if !info.is_connection() {
        let what = match (info.is_resource_request, info.subresource.is_empty()) {
            (false, _) => format!("{} {}", info.verb, info.path),
            (true, true) => format!("{} {}", info.verb, info.resource),
            (true, false) => format!("{} {}/{}", info.verb, info.resource, info.subresource),
        };
        return Err(Error::Upgrade(what));
    }
    if info.is_node_proxy() {
        return Err(Error::NodeProxyUpgrade);
    }
    if has_body {
        return Err(Error::UpgradeWithBody);
    }
    Ok(())
}

/// Removes the Table forms (`as=Table`) from an `Accept` already narrowed to JSON, for a
/// resource whose fields a masking rule masks by path (see
/// `Masker::masks_fields_of`); what is left is plain JSON, and at worst
/// `application/json` itself, which every client takes.
pub fn refuse_tables(headers: &mut HeaderMap) {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return;
    };
    let is_table = |range: &str| {
        range.split(';').skip(1).any(|p| {
            p.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("as")
                    && v.trim().trim_matches('"').eq_ignore_ascii_case("table")
            })
        })
    };
    if !accept.split(',').any(is_table) {
        return;
    }
    let kept: Vec<&str> = accept
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty() && !is_table(r))
        .collect();
    let value = match kept.is_empty() {
        true => "application/json".to_owned(),
        false => kept.join(","),
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(header::ACCEPT, value);
    }
}

/// Narrows an `Accept` header to the JSON forms it lists.
///
/// Accepted inputs, as real clients send them:
/// - absent or empty: `application/json`
/// - `application/json` with any parameters (`as=Table;v=v1;g=meta.k8s.io`,
///   `as=PartialObjectMetadataList`, `g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`,
///   `stream=watch`): kept as written, in order
/// - `application/vnd.kubernetes.protobuf`, YAML, CBOR and other types: dropped when a
///   JSON form is also listed (client-go sends `protobuf, application/json`)
/// - `*/*` or `application/*` (Node sends `*/*`): `application/json`
///
/// A list with no JSON form and no wildcard (a protobuf-only client) is refused: the
/// response could not be inspected.
pub fn narrow_accept(accept: Option<&HeaderValue>) -> Result<HeaderValue, Error> {
    const JSON: HeaderValue = HeaderValue::from_static("application/json");
    let Some(value) = accept else {
        return Ok(JSON);
    };
    let text = value.to_str().map_err(|_| Error::BadAccept)?;
    if text.trim().is_empty() {
        return Ok(JSON);
    }
    fn essence(range: &str) -> &str {
        range.split(';').next().unwrap_or("").trim()
    }
    let is_json = |range: &str| essence(range).eq_ignore_ascii_case("application/json");
    let (mut json, mut other, mut wildcard) = (0, false, false);
    for range in text.split(',').map(str::trim) {
        if is_json(range) {
            json += 1;
        } else {
            // Anything else, an empty range between commas included, is dropped.
            other = true;
            let e = essence(range);
            wildcard |= e == "*/*" || e.eq_ignore_ascii_case("application/*");
        }
    }
    if json == 0 {
        return if wildcard {
            Ok(JSON)
        } else {
            Err(Error::NotAcceptable(text.to_owned()))
        };
    }
    // Every range is a JSON form (what most clients send): the header goes as it came.
    if !other {
        return Ok(value.clone());
    }
    let mut kept = String::with_capacity(text.len());
    for range in text.split(',').map(str::trim).filter(|r| is_json(r)) {
        if !kept.is_empty() {
            kept.push(',');
        }
        kept.push_str(range);
    }
    HeaderValue::from_str(&kept).map_err(|_| Error::BadAccept)
}

/// Headers that describe one connection, not the request (RFC 9110 §7.6.1), plus the
/// credentials and encodings the proxy replaces, and the client addresses a caller could
/// make up: the API server lists `X-Forwarded-For` and `X-Real-Ip` first among an audit
/// event's `sourceIPs` (`utilnet.SourceIPs`), so the cluster's own audit log would show
/// an address the caller chose.
const DROPPED: [HeaderName; 10] = [
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::ACCEPT_ENCODING,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::HOST,
    header::COOKIE,
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-real-ip"),
];

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): `Connection` and every header it names,
/// `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding` and, unless this
/// is a connection upgrade being tunnelled, `Upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most requests and responses carry none of them: one pass over the names says so,
    // where removing each by name would hash every name on the list.
    if !keep_upgrade && !headers.keys().any(is_hop_by_hop) {
        return;
    }
    for name in named_by_connection(headers, |n| !(keep_upgrade && n == header::UPGRADE)) {
        headers.remove(name);
    }
    for name in ALWAYS_HOP_BY_HOP {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// Removes what in an answer could send the caller's client, with its credential, to
/// another host, or have it keep or offer credentials: a `Location` that is not a path
/// on this host (client-go follows redirects and adds its bearer token on every hop, so
/// a service proxied to that answers `302 Location: https://elsewhere/` would be sent
/// the caller's token), and `Set-Cookie`, `WWW-Authenticate`, `Proxy-Authenticate`. A
/// service or pod proxied to chooses its answer's headers; the API server's own answers
/// carry none of these.
pub fn strip_redirects_and_challenges(headers: &mut HeaderMap) {
    let listed = |name: &HeaderName| {
        name == header::LOCATION
            || name == header::SET_COOKIE
            || name == header::WWW_AUTHENTICATE
            || name == header::PROXY_AUTHENTICATE
    };
    if !headers.keys().any(listed) {
        return;
    }
    if headers
        .get_all(header::LOCATION)
        .iter()
        .any(|v| !on_this_host(v.as_bytes()))
    {
        headers.remove(header::LOCATION);
    }
    for name in [
        header::SET_COOKIE,
        header::WWW_AUTHENTICATE,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
}

/// Whether a `Location` is a reference within the host it came from: a path
/// (`/login`), or a relative reference without a scheme (`next?page=2`); not a
/// network-path reference (`//elsewhere`, and `/\elsewhere`, which browsers and some
/// clients read so) nor an absolute URL.
fn on_this_host(location: &[u8]) -> bool {
    // A tab, line break or space, which URL parsers other than Go's drop (`/\t/evil` is
    // `//evil` to them), or a backslash, which some read as `/`: none in a path.
    if location.starts_with(b"//") || location.iter().any(|&b| b <= b' ' || b == b'\\') {
        return false;
    }
    if location.starts_with(b"/") {
        return true;
    }
    let head = location
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .map_or(location, |end| &location[..end]);
    !head.contains(&b':') && !location.is_empty()
}

/// Removes the headers the caller's `Connection` names, but `Upgrade` (RFC 9110 §7.6.1:
/// they concern this hop only, and a proxy does not forward them). The pipeline does it
/// before any stage reads a header, so that what chaperone inspects is what the API
/// server gets: with `Connection: content-type`, a body would otherwise be screened as
/// the type it claims and decoded upstream, with no type, as JSON.
pub fn drop_connection_named(headers: &mut HeaderMap) {
    if !headers.contains_key(header::CONNECTION) {
        return;
    }
    for name in named_by_connection(headers, |n| n != header::UPGRADE && n != header::CONNECTION) {
        headers.remove(name);
    }
}

/// The headers `Connection` names (each of its lines, comma-separated) that `keep` keeps.
fn named_by_connection(headers: &HeaderMap, keep: impl Fn(&HeaderName) -> bool) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| keep(n))
        .collect()
}

/// The hop-by-hop headers removed whatever `Connection` says (besides `Connection` and
/// `Upgrade` themselves).
const ALWAYS_HOP_BY_HOP: [&str; 5] = [
    "te",
    "trailer",
    "transfer-encoding",
    "keep-alive",
    "proxy-connection",
];

/// A header that concerns one connection only; any header `Connection` names is one
/// too, and is found through `Connection`.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    let name = name.as_str();
    name == "connection" || name == "upgrade" || ALWAYS_HOP_BY_HOP.contains(&name)
}

/// Whether chaperone must be able to read the response to this request, and so must
/// narrow `Accept` to JSON. Everything but the OpenAPI schema documents: those hold no
/// object data, and kubectl fetches `/openapi/v2` only as protobuf (it cannot validate
/// `apply` without it).
pub fn must_inspect(info: &RequestInfo) -> bool {
    info.is_resource_request
        || !(info.path == "/openapi/v2" || info.path.starts_with("/openapi/v3"))
}

/// Rewrites the caller's headers into the headers sent upstream: hop-by-hop and
/// credential headers removed, `Accept` narrowed to JSON when `inspect`,
/// `Accept-Encoding` dropped so the API server answers uncompressed. The proxy's own
/// credential is added by `upstream`.
pub fn prepare_upstream(
    headers: &mut HeaderMap,
    upgrade: bool,
    inspect: bool,
) -> Result<(), Error> {
    check_impersonation(headers)?;
    let accept = if inspect {
        Some(narrow_accept(headers.get(header::ACCEPT))?)
    } else {
        None
    };
    strip_hop_by_hop(headers, upgrade);
    // One look at the names, then removals only where needed: a request carries a
    // handful of headers, and removing one costs a hash where comparing standard names
    // costs next to nothing.
    let (mut dropped, mut protocols, mut remote) = (0u16, false, false);
    for name in headers.keys() {
        if let Some(i) = DROPPED.iter().position(|d| d == name) {
            dropped |= 1 << i;
        } else if name == header::SEC_WEBSOCKET_PROTOCOL {
            protocols = true;
        } else if is_front_proxy_identity(name) {
            remote = true;
        }
    }
    for (i, name) in DROPPED.iter().enumerate() {
        if dropped & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if protocols {
        strip_websocket_bearer(headers);
    }
    if remote {
        strip_front_proxy_identity(headers);
    }
    if let Some(accept) = accept {
        headers.insert(header::ACCEPT, accept);
    }
    Ok(())
}

/// Characters of an extra key that may stand in a header name as they are (RFC 9110
/// `tchar`, less `%`, which introduces an escape).
const EXTRA_KEY: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'*')
    .remove(b'+')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// Adds the API server's impersonation headers for an authenticated caller (upstream
/// identity mode `impersonate`), so cluster RBAC and the cluster's audit log see the
/// caller rather than the proxy. Callers' own `Impersonate-*` headers were refused
/// before this; these are the proxy's, sent with its own credential.
///
/// Extra keys are percent-encoded into the header name as the API server expects
/// (`authentication.kubernetes.io/pod-name` becomes
/// `Impersonate-Extra-authentication.kubernetes.io%2fpod-name`).
pub fn impersonate(
    headers: &mut HeaderMap,
    user: &str,
    groups: &[String],
    uid: &str,
    extra: &std::collections::BTreeMap<String, Vec<String>>,
) -> Result<(), Error> {
    let value =
        |v: &str| HeaderValue::from_str(v).map_err(|_| Error::BadImpersonation(v.to_owned()));
    headers.insert(HeaderName::from_static("impersonate-user"), value(user)?);
    for group in groups {
        headers.append(HeaderName::from_static("impersonate-group"), value(group)?);
    }
    if !uid.is_empty() {
        headers.insert(HeaderName::from_static("impersonate-uid"), value(uid)?);
    }
    for (key, values) in extra {
        let encoded = percent_encoding::utf8_percent_encode(key, EXTRA_KEY).to_string();
        let name = HeaderName::from_bytes(
            format!("impersonate-extra-{}", encoded.to_ascii_lowercase()).as_bytes(),
        )
        .map_err(|_| Error::BadImpersonation(key.clone()))?;
        for v in values {
            headers.append(name.clone(), value(v)?);
        }
    }
    Ok(())
}

/// Whether the request asks to switch protocols (exec, attach and port-forward over
/// WebSocket or SPDY).
/// The `Content-Type`'s media type, lowercased, without parameters (`""` when absent).
pub fn media_type(headers: &HeaderMap) -> String {
    // Read from the bytes, as the API server cuts the header at `;`: a parameter with a
    // byte past ASCII must not make the type read as none (a patch's type is part of
    // what a reviewer approves).
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return String::new();
    };
    let bytes = value.as_bytes();
    let end = bytes.iter().position(|&b| b == b';').unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end])
        .trim()
        .to_ascii_lowercase()
}

pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes `X-Remote-*`: the identity an authenticating front proxy asserts to the API
/// server (`--requestheader-username-headers` and friends; `X-Remote-User`,
/// `-Group`, `-Uid`, `-Extra-*` by default). The API server believes them only from a
/// client certificate it trusts as a front proxy, which the proxy's credential should
/// never be; should it be, a caller must still not choose who it is.
fn strip_front_proxy_identity(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_front_proxy_identity(n))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

fn is_front_proxy_identity(name: &HeaderName) -> bool {
    name.as_str().starts_with("x-remote-")
}

/// Whether the request asks to upgrade to a WebSocket (as the API server's
/// `wsstream.IsWebSocketRequest` decides).
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    is_upgrade(headers)
        && headers
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Removes the subprotocol that carries the caller's bearer token, whether or not it
/// authenticated the request: the caller's credential never goes upstream. The other
/// subprotocols stay (the server picks one of them); with none left, the header goes.
fn strip_websocket_bearer(headers: &mut HeaderMap) {
    let prefix = crate::identity::WEBSOCKET_BEARER_PREFIX;
    let values: Vec<HeaderValue> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .cloned()
        .collect();
    let carries = |v: &HeaderValue| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|p| p.trim_ascii().starts_with(prefix.as_bytes()))
    };
    if !values.iter().any(carries) {
        return;
    }
    let kept: Vec<&str> = values
        .iter()
        .flat_map(|v| v.to_str().unwrap_or_default().split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty() && !p.starts_with(prefix))
        .collect();
    headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
    if let Ok(value) = HeaderValue::from_str(&kept.join(",")) {
        if !kept.is_empty() {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A redirect is passed on only within the host it came from; cookies and
    /// challenges never.
    #[test]
    fn an_answer_cannot_send_the_client_elsewhere() {
        for (location, kept) in [
            ("/api/v1/namespaces/d/services/web/proxy/login", true),
            ("next?page=2", true),
            ("../up", true),
            ("https://elsewhere.example/steal", false),
            ("HTTP://elsewhere.example", false),
            ("//elsewhere.example/x", false),
            ("/\\elsewhere.example/x", false),
            ("\\\\elsewhere.example", false),
            ("javascript:alert(1)", false),
            ("/\t/elsewhere.example", false),
            ("/a\\b", false),
            ("/a b", false),
            ("", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::LOCATION, HeaderValue::from_str(location).unwrap());
            h.insert(header::SET_COOKIE, HeaderValue::from_static("a=b"));
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
            strip_redirects_and_challenges(&mut h);
            assert_eq!(h.contains_key(header::LOCATION), kept, "{location:?}");
            assert_eq!(h.len(), 1 + usize::from(kept), "{h:?}");
        }
    }

    /// A content type is read up to its `;` whatever bytes its parameters hold.
    #[test]
    fn a_media_type_is_read_whatever_its_parameters_hold() {
        let mut h = HeaderMap::new();
        assert_eq!(media_type(&h), "");
        for (value, want) in [
            (
                &b"Application/Strategic-Merge-Patch+JSON; x=\"\xe9\""[..],
                "application/strategic-merge-patch+json",
            ),
            (b"application/json", "application/json"),
            (
                b" application/apply-patch+yaml ;charset=utf-8",
                "application/apply-patch+yaml",
            ),
        ] {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_bytes(value).unwrap(),
            );
            assert_eq!(media_type(&h), want);
        }
    }

    /// The headers a caller's `Connection` names are gone before anything reads them;
    /// `Upgrade`, which an upgrade needs, and `Connection` itself stay for later.
    #[test]
    fn headers_named_by_connection_are_dropped_first() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Content-Type"),
        );
        h.append(
            header::CONNECTION,
            HeaderValue::from_static(" upgrade ,x-other"),
        );
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/vnd.kubernetes.protobuf"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        drop_connection_named(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "connection", "upgrade"]);
    }

    #[test]
    fn front_proxy_identity_headers_never_go_upstream() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("x-remote-user", "system:admin"),
            ("x-remote-group", "system:masters"),
            ("x-remote-uid", "0"),
            ("x-remote-extra-scopes", "all"),
            ("x-remote-extra-scopes", "more"),
            ("x-request-id", "kept"),
            ("accept", "application/json"),
        ] {
            h.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        prepare_upstream(&mut h, false, false).unwrap();
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "x-request-id"]);
    }

    #[test]
    fn the_websocket_bearer_subprotocol_never_goes_upstream() {
        let forwarded = |protocols: &[&str]| {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            for p in protocols {
                h.append(header::SEC_WEBSOCKET_PROTOCOL, p.parse().unwrap());
            }
            prepare_upstream(&mut h, true, false).unwrap();
            h.get_all(header::SEC_WEBSOCKET_PROTOCOL)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        let bearer = "base64url.bearer.authorization.k8s.io.dG9rZW4";
        assert_eq!(
            forwarded(&[&format!("{bearer}, v5.channel.k8s.io, v4.channel.k8s.io")]),
            ["v5.channel.k8s.io,v4.channel.k8s.io"]
        );
        assert_eq!(
            forwarded(&["v5.channel.k8s.io", &format!(" {bearer} ")]),
            ["v5.channel.k8s.io"]
        );
        assert!(forwarded(&[bearer]).is_empty());
        // An empty bearer protocol is the caller's too; other headers stay as sent.
        assert_eq!(
            forwarded(&["base64url.bearer.authorization.k8s.io., channel.k8s.io"]),
            ["channel.k8s.io"]
        );
        assert_eq!(
            forwarded(&["v5.channel.k8s.io", "v4.channel.k8s.io"]),
            ["v5.channel.k8s.io", "v4.channel.k8s.io"]
        );
    }

    #[test]
    fn accept_is_narrowed_to_json() {
        let table = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        let discovery = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        let cases: &[(Option<&str>, Result<&str, ()>)] = &[
            // absent, empty and wildcards: JSON
            (None, Ok("application/json")),
            (Some(""), Ok("application/json")),
            (Some("*/*"), Ok("application/json")),
            (Some("application/*"), Ok("application/json")),
            // JSON forms are kept as written, parameters included
            (Some("application/json"), Ok("application/json")),
            (Some(table), Ok(table)),
            (Some(discovery), Ok(discovery)),
            (
                Some("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"),
                Ok("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"),
            ),
            (Some("application/json, */*"), Ok("application/json")),
            (Some("application/json, */*;q=0.8"), Ok("application/json")),
            (Some("application/vnd.kubernetes.protobuf, */*;q=0.8"), Ok("application/json")),
            (
                Some("application/json;as=Table;v=v1;g=meta.k8s.io, application/json"),
                Ok("application/json;as=Table;v=v1;g=meta.k8s.io, application/json"),
            ),
            (Some("application/json,,text/plain,"), Ok("application/json")),
            (Some(" , "), Err(())),
            (Some("Application/JSON"), Ok("Application/JSON")),
            // client-go: protobuf first, JSON second
            (
                Some("application/vnd.kubernetes.protobuf, application/json"),
                Ok("application/json"),
            ),
            (
                Some("application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1;g=meta.k8s.io"),
                Ok("application/json;as=Table;v=v1;g=meta.k8s.io"),
            ),
            (Some("application/yaml, application/json"), Ok("application/json")),
            (Some("application/vnd.kubernetes.protobuf, */*"), Ok("application/json")),
            // nothing we can inspect
            (Some("application/vnd.kubernetes.protobuf"), Err(())),
            (Some("application/vnd.kubernetes.protobuf;stream=watch"), Err(())),
            (Some("application/yaml"), Err(())),
            (Some("application/cbor"), Err(())),
            (Some("text/plain"), Err(())),
        ];
        for (input, want) in cases {
            let value = input.map(HeaderValue::from_static);
            let got = narrow_accept(value.as_ref());
            match want {
                Ok(w) => assert_eq!(
                    got.as_ref().ok().and_then(|v| v.to_str().ok()),
                    Some(*w),
                    "{input:?}"
                ),
                Err(()) => assert!(
                    matches!(got, Err(Error::NotAcceptable(_))),
                    "{input:?}: {got:?}"
                ),
            }
        }
    }

    #[test]
    fn only_openapi_schemas_skip_inspection() {
        let cases = [
            ("GET", "/openapi/v2", false),
            ("GET", "/openapi/v3", false),
            ("GET", "/openapi/v3/api/v1", false),
            ("GET", "/openapi/v2x", true),
            ("GET", "/api/v1/namespaces/default/secrets", true),
            ("GET", "/api/v1/namespaces/openapi/v2", true),
            ("GET", "/version", true),
            ("GET", "/apis", true),
        ];
        for (method, path, want) in cases {
            let info =
                crate::request_info::resolve(&method.parse().unwrap(), &path.parse().unwrap())
                    .unwrap();
            assert_eq!(must_inspect(&info), want, "{path}");
        }
        // An OpenAPI fetch keeps its protobuf Accept; impersonation is refused regardless.
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/com.github.proto-openapi.spec.v2@v1.0+protobuf"),
        );
        prepare_upstream(&mut h, false, false).unwrap();
        assert_eq!(
            h.get(header::ACCEPT).unwrap(),
            "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
        );
        h.insert("impersonate-user", HeaderValue::from_static("x"));
        assert!(prepare_upstream(&mut h, false, false).is_err());
    }

    #[test]
    fn impersonation_headers_are_refused() {
        for name in [
            "impersonate-user",
            "Impersonate-Group",
            "impersonate-uid",
            "impersonate-extra-scopes",
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("admin"),
            );
            let err = prepare_upstream(&mut h, false, true).unwrap_err();
            assert_eq!(err.status().code, 403, "{name}");
            assert!(
                err.to_string().contains(&name.to_ascii_lowercase()),
                "{name}"
            );
        }
    }

    #[test]
    fn credentials_encodings_hop_by_hop_and_client_addresses_never_go_upstream() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer caller-token"),
            ("proxy-authorization", "Basic x"),
            ("accept-encoding", "gzip"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("host", "kubernetes.default.svc"),
            ("x-forwarded-for", "10.0.0.99"),
            ("x-real-ip", "10.0.0.99"),
            ("user-agent", "kubectl/v1.32.0"),
            ("content-type", "application/vnd.kubernetes.protobuf"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        prepare_upstream(&mut h, false, true).unwrap();
        let mut names: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        assert_eq!(names, ["accept", "content-type", "user-agent"]);
    }

    #[test]
    fn tables_are_refused_where_fields_are_masked() {
        let cases = [
            (
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json",
                "application/json",
            ),
            ("application/json;as=Table;g=meta.k8s.io;v=v1", "application/json"),
            ("application/json; AS=\"table\"; v=v1, application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1", "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"),
            ("application/json", "application/json"),
        ];
        for (accept, want) in cases {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_str(accept).unwrap());
            refuse_tables(&mut h);
            assert_eq!(h[header::ACCEPT], want, "{accept}");
        }
    }

    #[test]
    fn impersonation_headers_carry_the_whole_subject() {
        let mut h = HeaderMap::new();
        let extra = [
            (
                "authentication.kubernetes.io/pod-name".to_owned(),
                vec!["mcp-0".to_owned()],
            ),
            (
                "scopes".to_owned(),
                vec!["read".to_owned(), "write".to_owned()],
            ),
        ]
        .into_iter()
        .collect();
        let groups = [
            "system:serviceaccounts".to_owned(),
            "system:authenticated".to_owned(),
        ];
        impersonate(
            &mut h,
            "system:serviceaccount:default:mcp",
            &groups,
            "uid-1",
            &extra,
        )
        .unwrap();
        let all = |name: &str| -> Vec<&str> {
            h.get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        };
        assert_eq!(
            all("impersonate-user"),
            ["system:serviceaccount:default:mcp"]
        );
        assert_eq!(
            all("impersonate-group"),
            ["system:serviceaccounts", "system:authenticated"]
        );
        assert_eq!(all("impersonate-uid"), ["uid-1"]);
        assert_eq!(
            all("impersonate-extra-authentication.kubernetes.io%2fpod-name"),
            ["mcp-0"]
        );
        assert_eq!(all("impersonate-extra-scopes"), ["read", "write"]);
        let bad = impersonate(&mut h, "line\nbreak", &[], "", &Default::default());
        assert_eq!(bad, Err(Error::BadImpersonation("line\nbreak".into())));
    }

    #[test]
    fn only_connections_the_api_server_tunnels_are_upgraded() {
        use http::Version;
        let info = |method: &str, path: &str| {
            crate::request_info::resolve(&method.parse().unwrap(), &path.parse().unwrap()).unwrap()
        };
        let exec = "/api/v1/namespaces/a/pods/p/exec?command=ls&stdout=1";
        // Method, path, a body, the version, and what is said.
        type Case = (
            &'static str,
            &'static str,
            bool,
            Version,
            Result<(), &'static str>,
        );
        let cases: &[Case] = &[
            ("GET", exec, false, Version::HTTP_11, Ok(())),
            ("POST", exec, false, Version::HTTP_11, Ok(())),
            (
                "GET",
                "/api/v1/namespaces/a/pods/p/attach",
                false,
                Version::HTTP_11,
                Ok(()),
            ),
            (
                "GET",
                "/api/v1/namespaces/a/pods/p/portforward?ports=80",
                false,
                Version::HTTP_11,
                Ok(()),
            ),
            (
                "GET",
                "/api/v1/namespaces/a/services/s:80/proxy/ws",
                false,
                Version::HTTP_11,
                Ok(()),
            ),
            (
                "GET",
                "/api/v1/namespaces/a/pods/p/proxy/ws",
                false,
                Version::HTTP_11,
                Ok(()),
            ),
            // The kubelet's exec, for any pod on the node, read by RBAC as `get`.
            (
                "GET",
                "/api/v1/nodes/n1/proxy/exec/kube-system/etcd-n1/etcd?command=sh",
                false,
                Version::HTTP_11,
                Err("through nodes/proxy"),
            ),
            (
                "GET",
                "/api/v1/nodes/n1:10250/proxy/portForward/a/p",
                false,
                Version::HTTP_11,
                Err("through nodes/proxy"),
            ),
            (
                "GET",
                "/api/v1/nodes/n1/proxy",
                false,
                Version::HTTP_11,
                Err("through nodes/proxy"),
            ),
            // Another group's subresources of those names: API answers to read.
            (
                "GET",
                "/apis/cluster.karmada.io/v1alpha1/clusters/m1/proxy/api/v1/secrets?watch=1",
                false,
                Version::HTTP_11,
                Err("not get clusters/proxy"),
            ),
            (
                "GET",
                "/apis/example.com/v1/namespaces/a/widgets/w/exec",
                false,
                Version::HTTP_11,
                Err("not get widgets/exec"),
            ),
            // Streams chaperone must read, a body, another version.
            (
                "GET",
                "/api/v1/namespaces/a/secrets?watch=1",
                false,
                Version::HTTP_11,
                Err("not watch secrets"),
            ),
            (
                "GET",
                "/api/v1/namespaces/a/pods/p/log",
                false,
                Version::HTTP_11,
                Err("not get pods/log"),
            ),
            ("POST", exec, true, Version::HTTP_11, Err("carries no body")),
            ("GET", exec, false, Version::HTTP_10, Err("needs HTTP/1.1")),
            ("GET", exec, false, Version::HTTP_2, Err("needs HTTP/1.1")),
        ];
        for (method, path, body, version, want) in cases {
            let got = check_upgrade(&info(method, path), *body, *version);
            match (got, want) {
                (Ok(()), Ok(())) => {}
                (Err(e), Err(words)) => {
                    assert!(e.to_string().contains(words), "{method} {path}: {e}");
                    let code = e.status().code;
                    let forbidden = matches!(e, Error::NodeProxyUpgrade);
                    assert_eq!(code, if forbidden { 403 } else { 400 }, "{path}");
                }
                (got, _) => panic!("{method} {path} {version:?}: {got:?}"),
            }
        }
    }

    #[test]
    fn upgrade_headers_survive_for_tunnels() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("v5.channel.k8s.io"),
        );
        assert!(is_upgrade(&h));
        prepare_upstream(&mut h, true, true).unwrap();
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "Upgrade");
        assert!(h.contains_key("sec-websocket-protocol"));
    }
}
