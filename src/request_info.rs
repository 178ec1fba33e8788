//! Resolves a request's method, path and query into the attributes the API server authorizes.
//!
//! A port of `RequestInfoFactory.NewRequestInfo` (`k8s.io/apiserver/pkg/endpoints/request/
//! requestinfo.go`) with the API server's defaults: API prefixes `api` and `apis`, of which
//! `api` has no group segment. chaperone must authorise a request with exactly the attributes
//! (verb, resource, namespace, name, ...) that the upstream API server derives from it.
//!
//! # Normalisation (chaperone's own rule)
//!
//! Go resolves `req.URL.Path` as received; a proxy must also be sure that the path it
//! authorises is the path the upstream acts on. So [`resolve`] resolves the path as
//! [`normalize_path`] normalises it once (percent-decoded, empty and `.` segments dropped, `..`
//! resolved), and the request must be forwarded with [`RequestInfo::forward_path_and_query`],
//! which re-encodes that very path so that the upstream decodes it back byte for byte.
//! Anything ambiguous is refused rather than guessed at; [`Error`] has one variant per reason.
//! A trailing slash is kept in [`RequestInfo::path`] (`/healthz/` is not `/healthz` to
//! non-resource authorisation or to the upstream's routing); as in Go, it is ignored when the
//! path is split into resource parts.
//!
//! # Collection reads
//!
//! A GET or HEAD without a name is a `list` or a `watch`, and a `metadata.name` field selector
//! may name the one object read. Go decides both by decoding the query into `ListOptions`,
//! which fails (and then the field selector is ignored) when `limit` or `timeoutSeconds` is
//! not an integer or `fieldSelector` or `labelSelector` does not parse. This module checks
//! those four parameters with the same grammars (`fields.ParseSelector`, `labels.Parse`).
//!
//! # Deviations from Go
//!
//! * No `FieldSelector`/`LabelSelector` fields (feature `AuthorizeWithSelectors`).
//! * Refused here, but not by Go's resolver: empty, `*` and authority-form targets (Go: non-
//!   resource requests), invalid percent escapes (Go's server: 400), a special verb without a
//!   resource (Go: a 500), queries of more than 10000 parameters (which Go parses or not
//!   depending on its version), and the ambiguous paths listed on [`Error`].
//! * A `metadata.name` value that is not UTF-8 names nothing here (Go would use the bytes), so
//!   the request is authorised as the whole collection: stricter.
//! * A shard `selector` list option, in API servers that have one, is not checked.

use std::borrow::Cow;

use http::{Method, Uri};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

/// The API server's default `APIPrefixes`.
const API_PREFIXES: [&str; 2] = ["api", "apis"];
/// The API server's default `GrouplessAPIPrefixes`: `/api/{version}` has no group segment.
const GROUPLESS_API_PREFIXES: [&str; 1] = ["api"];
/// Legacy verbs given as the segment after the version (`/api/v1/watch/pods`).
const SPECIAL_VERBS: [&str; 2] = ["proxy", "watch"];
/// Special verbs whose trailing parts are a proxied sub-path rather than a subresource.
const SPECIAL_VERBS_NO_SUBRESOURCES: [&str; 1] = ["proxy"];
/// Subresources of a namespace: `namespaces/x/status` is namespace x's status, whereas
/// `namespaces/x/pods` is the pods collection inside namespace x.
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];
/// Path segments resolved without an allocation: `/apis/{group}/{version}/namespaces/{ns}/
/// {resource}/{name}/{subresource}` has eight.
const INLINE_SEGMENTS: usize = 12;
/// Go's default `urlmaxqueryparams`: `url.ParseQuery` gives up on longer queries.
const MAX_QUERY_PARAMETERS: usize = 10_000;

/// Bytes written literally when forwarding: RFC 3986 unreserved characters and the
/// sub-delimiters plus `:` and `@`, which mean nothing special inside a path segment. Everything
/// else is percent-encoded: `%` (so an upstream decodes exactly once), `?` and `#`, spaces,
/// non-ASCII bytes, and `;`, which some servers treat as a path-parameter separator. `/` is
/// kept because after normalisation every `/` in a path is a separator.
const FORWARD_ENCODE: &AsciiSet = &{
    let keep = b"-._~!$&'()*+,=:@";
    let mut set = NON_ALPHANUMERIC.remove(b'/');
    let mut i = 0;
    while i < keep.len() {
        set = set.remove(keep[i]);
        i += 1;
    }
    set
};

/// The attributes the API server authorises a request by.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestInfo {
    /// Whether the request is for an API resource or subresource (as opposed to `/healthz`).
    pub is_resource_request: bool,
    /// The normalised, decoded path: what is authorised, and what is forwarded.
    pub path: String,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection` or a
    /// special verb (`proxy`, `watch`) for resource requests; `""` for a resource request with
    /// any other method (as Go); the lowercase method for non-resource requests.
    pub verb: String,
    /// `api` or `apis`.
    pub api_prefix: String,
    /// The API group, `""` for the core group under `/api`.
    pub api_group: String,
    /// The API version, e.g. `v1`.
    pub api_version: String,
    /// The namespace, `""` for cluster-scoped requests and for requests across all namespaces.
    pub namespace: String,
    /// The resource, e.g. `pods` (not the kind).
    pub resource: String,
    /// The subresource, e.g. `status`, `log`, `exec`, `scale`.
    pub subresource: String,
    /// The object's name, from the path or from a `metadata.name` field selector.
    pub name: String,
    /// Where in `path` Go's `Parts` start (`resource/name/subresource/...`), for
    /// resource requests resolved from a path; see [`RequestInfo::parts`].
    pub parts_at: Option<usize>,
}

/// A resource request described by its attributes rather than sent: a
/// SelfSubjectAccessReview's `resourceAttributes`, a policy test case.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attributes<'a> {
    pub verb: &'a str,
    /// `""` for the core group.
    pub group: &'a str,
    /// `""` or `*`: `v1`.
    pub version: &'a str,
    pub namespace: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    pub name: &'a str,
}

impl RequestInfo {
    /// The request `a` describes, as [`resolve`] resolves that request when it is sent,
    /// with the path it would be sent to. One rule of the path shows in the attributes:
    /// a Namespace's own requests (`/api/v1/namespaces/NAME`, and its `status` and
    /// `finalize`) are in the namespace they name, whatever namespace `a` gives (kubectl
    /// fills in the current one).
    pub fn from_attributes(a: Attributes<'_>) -> RequestInfo {
        let version = match a.version {
            "" | "*" => "v1",
            v => v,
        };
        let own_namespace = !a.name.is_empty()
            && matches!(
                (a.resource, a.subresource),
                ("namespaces", "" | "status" | "finalize")
            );
        let namespace = if own_namespace { a.name } else { a.namespace };
        let (api_prefix, mut path) = match a.group {
            "" => ("api", format!("/api/{version}")),
            group => ("apis", format!("/apis/{group}/{version}")),
        };
        if !namespace.is_empty() && !own_namespace {
            path.push_str("/namespaces/");
            path.push_str(namespace);
        }
        path.push('/');
        path.push_str(a.resource);
        if !a.name.is_empty() {
            path.push('/');
            path.push_str(a.name);
            if !a.subresource.is_empty() {
                path.push('/');
                path.push_str(a.subresource);
            }
        }
        RequestInfo {
            is_resource_request: true,
            path,
            verb: a.verb.to_owned(),
            api_prefix: api_prefix.to_owned(),
            api_group: a.group.to_owned(),
            api_version: version.to_owned(),
            namespace: namespace.to_owned(),
            resource: a.resource.to_owned(),
            subresource: a.subresource.to_owned(),
            name: a.name.to_owned(),
            parts_at: None,
        }
    }

    /// Whether the request opens a connection the API server may upgrade and then
    /// carries both ways: a pod's exec, attach or port-forward, or a request proxied to
    /// a pod, a service or a node. Kubernetes' own, in the core group: another group's
    /// subresource of such a name (an aggregated API's `clusters/proxy`, reaching
    /// another cluster) answers what chaperone must read as any API's answer.
    pub fn is_connection(&self) -> bool {
        self.is_resource_request
            && is_connection(&self.api_group, &self.resource, &self.subresource)
    }

    /// Whether the request goes through `nodes/proxy` to the kubelet's own API.
    pub fn is_node_proxy(&self) -> bool {
        self.is_resource_request
            && self.api_group.is_empty()
            && self.resource == "nodes"
            && self.subresource == "proxy"
    }

    /// Go's `Parts`: the path's segments from the resource on
    /// (`resource/name/subresource/...`); empty for a non-resource request, or for one
    /// not resolved from a path (a SubjectAccessReview's attributes, a policy test case).
    pub fn parts(&self) -> Vec<&str> {
        match self.parts_at.and_then(|at| self.path.get(at..)) {
            Some(rest) => rest.trim_end_matches('/').split('/').collect(),
            None => Vec::new(),
        }
    }
}

/// [`RequestInfo::is_connection`] of a resource named by its parts (a masking target's).
pub fn is_connection(api_group: &str, resource: &str, subresource: &str) -> bool {
    api_group.is_empty()
        && match resource {
            "pods" => matches!(subresource, "exec" | "attach" | "portforward" | "proxy"),
            "services" | "nodes" => subresource == "proxy",
            _ => false,
        }
}

/// Why a request was refused. Path payloads are the raw path as received, except for
/// [`Error::MissingResource`], which carries the normalised path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The path does not start with `/` (`*`, an authority-form target, or empty).
    #[error("path is not absolute: {0:?}")]
    NotAbsolute(String),
    /// A `%` is not followed by two hex digits.
    #[error("path contains an invalid percent escape: {0:?}")]
    InvalidPercentEscape(String),
    /// `%2F`: a slash inside a segment would be a second path structure.
    #[error("path contains an encoded slash: {0:?}")]
    EncodedSlash(String),
    /// A backslash, literal or `%5C`: some servers treat it as a separator.
    #[error("path contains a backslash: {0:?}")]
    Backslash(String),
    /// A decoded ASCII control character (NUL, newline, DEL, ...).
    #[error("path contains a control character: {0:?}")]
    ControlCharacter(String),
    /// The decoded bytes are not UTF-8.
    #[error("path is not valid utf-8 once decoded: {0:?}")]
    InvalidUtf8(String),
    /// A `..` segment climbs above the root.
    #[error("path climbs above the root: {0:?}")]
    AboveRoot(String),
    /// A special verb with nothing after it (`/api/v1/watch`); Go fails the request with
    /// "unable to determine kind and namespace from url".
    #[error("unable to determine kind and namespace from url: {0:?}")]
    MissingResource(String),
    /// More query parameters than recent Go releases parse (`GODEBUG=urlmaxqueryparams`,
    /// 10000 by default): such an API server sees no parameter at all, an older one sees all.
    #[error("query has {0} parameters, more than the 10000 go parses")]
    TooManyQueryParameters(usize),
}

impl Error {
    /// The path the refusal quotes, to mask before it is recorded or logged.
    pub fn path_mut(&mut self) -> Option<&mut String> {
        match self {
            Error::NotAbsolute(p)
            | Error::InvalidPercentEscape(p)
            | Error::EncodedSlash(p)
            | Error::Backslash(p)
            | Error::ControlCharacter(p)
            | Error::InvalidUtf8(p)
            | Error::AboveRoot(p)
            | Error::MissingResource(p) => Some(p),
            Error::TooManyQueryParameters(_) => None,
        }
    }
}

/// Resolves a request into the attributes the API server authorises it by.
///
/// The raw path is normalised first (see [`normalize_path`]); forward the request with
/// [`RequestInfo::forward_path_and_query`] so that the upstream acts on the resolved path.
///
/// Resource paths (a leading `/apis/{api-group}` may stand for `/api` throughout):
/// * `/api/{version}/namespaces` and `/apis/{api-group}/{version}/namespaces`
/// * `/api/{version}/namespaces/{namespace}`, and `.../{namespace}/status` or `/finalize`
/// * `/api/{version}/namespaces/{namespace}/{resource}`
/// * `/api/{version}/namespaces/{namespace}/{resource}/{resourceName}`
/// * `/api/{version}/namespaces/{namespace}/{resource}/{resourceName}/{subresource}/...`
/// * `/api/{version}/{resource}`, `/api/{version}/{resource}/{resourceName}[/{subresource}/...]`
///
/// Special verbs without subresources (the rest is a proxied sub-path):
/// * `/api/{version}/proxy/{resource}/{resourceName}/...`
/// * `/api/{version}/proxy/namespaces/{namespace}/{resource}/{resourceName}/...`
///
/// Special verbs with subresources:
/// * `/api/{version}/watch/{resource}`
/// * `/api/{version}/watch/namespaces/{namespace}/{resource}`
///
/// Non-resource paths (verb = lowercase method): `/apis/{api-group}/{version}`,
/// `/apis/{api-group}`, `/apis`, `/api/{version}`, `/api`, `/healthz`, `/`, and any path whose
/// first segment is neither `api` nor `apis`.
///
/// Verbs: POST `create`, PUT `update`, PATCH `patch`, DELETE `delete` (`deletecollection`
/// without a name), GET and HEAD `get` (without a name: `watch` if the first `watch` query
/// value is anything but `0` or `false`, else `list`; a valid
/// `fieldSelector=metadata.name=<x>` or `==<x>` then supplies the name), any other method `""`.
pub fn resolve(method: &Method, uri: &Uri) -> Result<RequestInfo, Error> {
    let path = normalize_path(uri.path())?;
    // Whether the upstream reads such a query depends on its Go version: refuse it.
    let parameters = uri
        .query()
        .map_or(0, |q| q.bytes().filter(|&b| b == b'&').count() + 1);
    if parameters > MAX_QUERY_PARAMETERS {
        return Err(Error::TooManyQueryParameters(parameters));
    }
    let mut info = RequestInfo::default();
    if !fill_resource_attributes(&mut info, method.as_str(), &path, uri.query()) {
        return Err(Error::MissingResource(path));
    }
    if !info.is_resource_request {
        // Methods are ASCII tokens, so this is Go's strings.ToLower.
        info.verb = method.as_str().to_ascii_lowercase();
    }
    info.path = path;
    Ok(info)
}

/// Go's `NewRequestInfo` on an already normalised path. Returns false where Go returns its
/// "unable to determine kind and namespace" error.
fn fill_resource_attributes(
    info: &mut RequestInfo,
    method: &str,
    path: &str,
    query: Option<&str>,
) -> bool {
    // Go's splitPath: leading and trailing slashes don't make segments.
    let trimmed = path.trim_matches('/');
    // On the stack for the paths clients send; a longer one (a proxied sub-path) spills.
    let segments: smallvec::SmallVec<[&str; INLINE_SEGMENTS]> = if trimmed.is_empty() {
        smallvec::SmallVec::new()
    } else {
        trimmed.split('/').collect()
    };
    let mut parts = segments.as_slice();
    // `/`, `/api`, `/api/v1`, `/apis/apps` name no resource.
    if parts.len() < 3 || !API_PREFIXES.contains(&parts[0]) {
        return true;
    }
    let prefix = parts[0];
    parts = &parts[1..];
    // Set before the next check, as in Go: `/apis/apps/v1` is non-resource with prefix `apis`.
    info.api_prefix = prefix.to_owned();
    let mut group = "";
    if !GROUPLESS_API_PREFIXES.contains(&prefix) {
        // `/apis/{group}/{version}` needs a fourth segment to name a resource.
        if parts.len() < 3 {
            return true;
        }
        group = parts[0];
        parts = &parts[1..];
    }
    info.is_resource_request = true;
    info.api_group = group.to_owned();
    info.api_version = parts[0].to_owned();
    parts = &parts[1..];

    let mut verb = if SPECIAL_VERBS.contains(&parts[0]) {
        if parts.len() < 2 {
            return false;
        }
        let verb = parts[0];
        parts = &parts[1..];
        verb
    } else {
        // Go compares the method case-sensitively: a `get` method is not GET.
        match method {
            "POST" => "create",
            "GET" | "HEAD" => "get",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => "delete",
            _ => "",
        }
    };

    // `namespaces/{namespace}/{resource}/...`: re-anchor the parts on the resource, unless the
    // segment after the namespace is one of the namespace's own subresources.
    if parts[0] == "namespaces" && parts.len() > 1 {
        info.namespace = parts[1].to_owned();
        if parts.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&parts[2]) {
            parts = &parts[2..];
        }
    }

    // parts: resource/name/subresource/other/stuff/we/don't/interpret
    info.resource = parts[0].to_owned();
    let mut name = Cow::Borrowed(parts.get(1).copied().unwrap_or(""));
    if parts.len() >= 3 && !SPECIAL_VERBS_NO_SUBRESOURCES.contains(&verb) {
        info.subresource = parts[2].to_owned();
    }
    // The parts are the path's last segments: where the first starts is all to keep.
    info.parts_at = Some(parts[0].as_ptr() as usize - path.as_ptr() as usize);

    // A GET without a name reads the collection: list or watch, and maybe one object of it.
    if name.is_empty() && verb == "get" {
        let list = list_options(query.unwrap_or(""));
        verb = if list.watch { "watch" } else { "list" };
        if let Some(exact) = list.name.filter(|n| is_valid_path_segment_name(n)) {
            name = Cow::Owned(exact);
        }
    }
    if name.is_empty() && verb == "delete" {
        verb = "deletecollection";
    }
    info.name = name.into_owned();
    info.verb = verb.to_owned();
    true
}

/// apimachinery's `path.IsValidPathSegmentName`: only such names are taken from a selector.
fn is_valid_path_segment_name(name: &str) -> bool {
    name != "." && name != ".." && !name.contains('/') && !name.contains('%')
}

/// Normalises a raw (still percent-encoded) path once: percent-decodes, removes `.`/`..`
/// segments and duplicate slashes.
///
/// `..` is resolved as in RFC 3986 `remove_dot_segments`, but on the decoded segments (so
/// `%2e%2e` is a `..` too) and a `..` above the root is an error rather than dropped. Empty
/// segments are dropped; a trailing slash is kept (and added after a final `.` or `..`, as in
/// the RFC). The refusals are listed on [`Error`]; they are checked on every segment, including
/// segments that a later `..` removes.
pub fn normalize_path(raw: &str) -> Result<String, Error> {
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(Error::NotAbsolute(raw.to_owned()));
    };
    // Built in place: each segment is decoded behind a '/', then kept or taken back out.
    let mut out: Vec<u8> = Vec::with_capacity(raw.len());
    let mut trailing_slash = false;
    for segment in rest.split('/') {
        let start = out.len();
        out.push(b'/');
        decode_segment(segment, &mut out).map_err(|refuse| refuse(raw.to_owned()))?;
        // Segments never straddle a multi-byte character, so checking each one checks all.
        if std::str::from_utf8(&out[start + 1..]).is_err() {
            return Err(Error::InvalidUtf8(raw.to_owned()));
        }
        trailing_slash = true;
        match &out[start + 1..] {
            b"" | b"." => out.truncate(start),
            b".." => {
                out.truncate(start);
                let Some(parent) = out.iter().rposition(|&b| b == b'/') else {
                    return Err(Error::AboveRoot(raw.to_owned()));
                };
                out.truncate(parent);
            }
            _ => trailing_slash = false,
        }
    }
    if out.is_empty() || trailing_slash {
        out.push(b'/');
    }
    String::from_utf8(out).map_err(|_| Error::InvalidUtf8(raw.to_owned()))
}

/// Appends one percent-decoded segment, or says which refusal applies.
fn decode_segment(segment: &str, out: &mut Vec<u8>) -> Result<(), fn(String) -> Error> {
    let bytes = segment.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let byte = match bytes[i] {
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|&b| hex_value(b));
                let lo = bytes.get(i + 2).and_then(|&b| hex_value(b));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(Error::InvalidPercentEscape);
                };
                i += 3;
                match (hi << 4) | lo {
                    b'/' => return Err(Error::EncodedSlash),
                    decoded => decoded,
                }
            }
            literal => {
                i += 1;
                literal
            }
        };
        if byte == b'\\' {
            return Err(Error::Backslash);
        }
        if byte.is_ascii_control() {
            return Err(Error::ControlCharacter);
        }
        out.push(byte);
    }
    Ok(())
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

impl RequestInfo {
    /// The exact path-and-query to forward upstream: the normalised path re-percent-encoded
    /// per segment (so the upstream decodes it back to exactly `info.path`), followed by the
    /// original raw query unchanged.
    ///
    /// The query is forwarded as received because the upstream parses it with the same rules
    /// this module mimics; `uri` should be the URI this info was resolved from.
    pub fn forward_path_and_query(&self, uri: &Uri) -> String {
        let query = uri.query();
        let mut out = String::with_capacity(self.path.len() + query.map_or(0, |q| q.len() + 1));
        if self.path.is_empty() {
            out.push('/');
        }
        out.push_str(&encode_path(&self.path));
        if let Some(query) = query {
            out.push('?');
            out.push_str(query);
        }
        out
    }
}

/// A normalised path (or a part of one) as it is forwarded: each segment percent-encoded
/// so that the upstream decodes it back to exactly `path`; borrowed when nothing needs
/// encoding (the usual case). Audit records keep this form too, so a `?` or `%` that was
/// part of a name reads as the escape it was sent as, not as the start of a query.
pub(crate) fn encode_path(path: &str) -> Cow<'_, str> {
    percent_encoding::utf8_percent_encode(path, FORWARD_ENCODE).into()
}

/// What Go's `ListOptions` decoding yields for a collection GET.
struct ListOptions {
    watch: bool,
    /// The value of the first `metadata.name` equality in the field selector, if the whole
    /// query decodes.
    name: Option<String>,
}

/// Mimics `ParameterCodec.DecodeParameters(query, &ListOptions)` and its fallback in
/// `NewRequestInfo`.
fn list_options(query: &str) -> ListOptions {
    let (mut watch, mut field, mut label, mut limit, mut timeout) = (None, None, None, None, None);
    for (key, value) in go_query_pairs(query) {
        let slot = match &*key {
            b"watch" => &mut watch,
            b"fieldSelector" => &mut field,
            b"labelSelector" => &mut label,
            b"limit" => &mut limit,
            b"timeoutSeconds" => &mut timeout,
            _ => continue,
        };
        // Conversions read the first value of a repeated parameter.
        if slot.is_none() {
            *slot = Some(value);
        }
    }
    let field = match &field {
        Some(selector) => parse_field_selector(selector),
        None => Ok(None),
    };
    let decodes = field.is_ok()
        && label.as_deref().is_none_or(label_selector_is_valid)
        && limit.as_deref().is_none_or(is_go_int64)
        && timeout.as_deref().is_none_or(is_go_int64);
    let watch = match watch.as_deref() {
        None => false,
        // Convert_Slice_string_To_bool: only "0" and "false" (strings.EqualFold) are false.
        Some(v) if decodes => !(v == b"0" || go_equal_fold_false(v)),
        // After a failed decode Go lowercases the value and compares instead.
        Some(v) => !(v == b"0" || v.eq_ignore_ascii_case(b"false")),
    };
    let name = match field {
        Ok(Some(name)) if decodes => String::from_utf8(name.into_owned()).ok(),
        _ => None,
    };
    ListOptions { watch, name }
}

/// Go's `url.ParseQuery`: `&`-separated pairs, `key` alone meaning an empty value; pairs that
/// contain `;` or an invalid escape are dropped (Go records an error that `URL.Query` ignores).
pub(crate) fn go_query_pairs(query: &str) -> impl Iterator<Item = (Cow<'_, [u8]>, Cow<'_, [u8]>)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty() && !pair.contains(';'))
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Some((query_unescape(key)?, query_unescape(value)?))
        })
}

/// `query` as the API server reads it, written out for people: each pair Go's
/// `url.ParseQuery` keeps, its escapes decoded (`command=%72%6d;x&stdin=1` reads
/// `stdin=1`). For showing only, never for forwarding.
///
/// Only what reads as itself is decoded: a character that could pass for a boundary
/// (`&`, `=`, `;`, `+`, `%`, `#`, a space), a control or invisible one (a line break,
/// a bidi override, a zero-width space) and bytes that are not UTF-8 stay `%`-escaped,
/// so `command=ls%26container%3Dsidecar` reads `command=ls%26container%3Dsidecar`, one
/// argument.
pub(crate) fn query_as_read(query: &str) -> String {
    fn shown(bytes: &[u8], out: &mut String) {
        use std::fmt::Write as _;
        for chunk in bytes.utf8_chunks() {
            for c in chunk.valid().chars() {
                let plain = if c.is_ascii() {
                    c.is_ascii_graphic() && !"&=;+%#".contains(c)
                } else {
                    !c.is_control() && !c.is_whitespace() && !invisible(c)
                };
                if plain {
                    out.push(c);
                } else {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        let _ = write!(out, "%{b:02X}");
                    }
                }
            }
            for b in chunk.invalid() {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    let mut out = String::with_capacity(query.len());
    for (i, (key, value)) in go_query_pairs(query).enumerate() {
        if i > 0 {
            out.push('&');
        }
        shown(&key, &mut out);
        out.push('=');
        shown(&value, &mut out);
    }
    out
}

/// Characters that show nothing or reorder what follows (Unicode's format characters
/// that matter in text shown to people): zero-width ones, bidi marks, embeddings,
/// overrides and isolates, the byte-order mark, the Arabic letter mark.
fn invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}' | '\u{061C}' | '\u{00AD}')
}

/// A boolean query parameter as the API server's conversions read it
/// (`runtime.Convert_Slice_string_To_bool`): the first value given, true unless it is `0`
/// or `false` in any case (`?follow` alone is true); false when the parameter is absent.
pub(crate) fn go_bool_param(query: &str, name: &str) -> bool {
    go_query_pairs(query)
        .find(|(key, _)| &**key == name.as_bytes())
        .is_some_and(|(_, v)| !(&*v == b"0" || go_equal_fold_false(&v)))
}

/// Go's `url.QueryUnescape`: `%XX` escapes and `+` as a space.
pub(crate) fn query_unescape(s: &str) -> Option<Cow<'_, [u8]>> {
    unescape(s, true, true)
}

/// `s` read for what it says rather than to act on it (text kept in a record): its
/// well-formed `%XX` escapes decoded (and `+` as a space when `plus_is_space`), any other
/// `%` kept as it is, where Go would refuse the whole text.
pub(crate) fn unescape_lenient(s: &str, plus_is_space: bool) -> Cow<'_, [u8]> {
    unescape(s, plus_is_space, false).unwrap_or(Cow::Borrowed(s.as_bytes()))
}

/// `%XX` escapes (and `+` when `plus_is_space`) decoded; a `%` that starts no escape is
/// `None` when `strict`, else kept as it is.
fn unescape(s: &str, plus_is_space: bool, strict: bool) -> Option<Cow<'_, [u8]>> {
    let bytes = s.as_bytes();
    if !bytes
        .iter()
        .any(|&b| b == b'%' || (plus_is_space && b == b'+'))
    {
        return Some(Cow::Borrowed(bytes));
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|&b| hex_value(b));
                let lo = bytes.get(i + 2).and_then(|&b| hex_value(b));
                match (hi, lo) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi << 4) | lo);
                        i += 3;
                    }
                    _ if strict => return None,
                    _ => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(Cow::Owned(out))
}

/// `strconv.ParseInt(s, 10, 64)` succeeds.
fn is_go_int64(v: &[u8]) -> bool {
    std::str::from_utf8(v).is_ok_and(|s| s.parse::<i64>().is_ok())
}

/// `strings.EqualFold(v, "false")`: ASCII case-insensitive, and U+017F (ſ) folds to `s`.
fn go_equal_fold_false(v: &[u8]) -> bool {
    const LONG_S: &[u8] = "\u{17f}".as_bytes();
    let mut rest = v;
    for want in *b"false" {
        if rest.first().is_some_and(|b| b.to_ascii_lowercase() == want) {
            rest = &rest[1..];
        } else if want == b's' && rest.starts_with(LONG_S) {
            rest = &rest[LONG_S.len()..];
        } else {
            return false;
        }
    }
    rest.is_empty()
}

/// The selector does not parse.
struct Invalid;

/// `fields.ParseSelector`, reduced to what matters here: whether it parses, and the value of
/// `RequiresExactMatch("metadata.name")` (the first `=`/`==` term on it, in sorted term order).
fn parse_field_selector(selector: &[u8]) -> Result<Option<Cow<'_, [u8]>>, Invalid> {
    // Terms are split at commas not escaped by a backslash.
    let mut terms = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, &b) in selector.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b',' => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    terms.sort_unstable();
    let mut name = None;
    for term in terms.into_iter().filter(|term| !term.is_empty()) {
        // The first operator occurrence splits the term; the left side has no escaping.
        let (lhs, op, rhs) = (0..term.len())
            .find_map(|i| {
                ["!=", "==", "="].into_iter().find_map(|op| {
                    let rest = term[i..].strip_prefix(op.as_bytes())?;
                    Some((&term[..i], op, rest))
                })
            })
            .ok_or(Invalid)?;
        let value = unescape_field_value(rhs)?;
        if name.is_none() && op != "!=" && lhs == b"metadata.name" {
            name = Some(value);
        }
    }
    Ok(name)
}

/// `fields.UnescapeValue`: `\\`, `\,` and `\=` are escapes; any other escape, and a bare `,`
/// or `=`, is an error.
fn unescape_field_value(value: &[u8]) -> Result<Cow<'_, [u8]>, Invalid> {
    if !value.iter().any(|b| matches!(b, b'\\' | b',' | b'=')) {
        return Ok(Cow::Borrowed(value));
    }
    let mut out = Vec::with_capacity(value.len());
    let mut escaped = false;
    for &b in value {
        match b {
            b'\\' | b',' | b'=' if escaped => {
                out.push(b);
                escaped = false;
            }
            _ if escaped => return Err(Invalid),
            b'\\' => escaped = true,
            b',' | b'=' => return Err(Invalid),
            _ => out.push(b),
        }
    }
    if escaped {
        return Err(Invalid);
    }
    Ok(Cow::Owned(out))
}

/// A label selector token: an operator (`!`, `!=`, `=`, `==`, `<`, `>`, `(`, `)`, `,`), a word
/// (a key, a value, or one of the keywords `in` and `notin`), or the end of the input.
#[derive(Clone, Copy, Debug)]
enum Token<'a> {
    End,
    Op(&'a [u8]),
    Word(&'a [u8]),
}

fn is_special(b: u8) -> bool {
    matches!(b, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// `labels.Lexer`, quirks included: its reader returns 0 at the end of input, so a NUL byte
/// where a token would start ends the selector, and a NUL right after a token is skipped.
fn lex_label_selector(s: &[u8]) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let mut pos = 0;
    loop {
        while s.get(pos).copied().is_some_and(is_blank) {
            pos += 1;
        }
        let start = pos;
        match s.get(pos).copied() {
            None | Some(0) => {
                tokens.push(Token::End);
                return tokens;
            }
            Some(b) if is_special(b) => {
                // Go grows an operator while it stays a known one: only `!=` and `==` do.
                pos += 1;
                if matches!(b, b'!' | b'=') && s.get(pos) == Some(&b'=') {
                    pos += 1;
                }
                tokens.push(Token::Op(&s[start..pos]));
            }
            Some(_) => {
                while s
                    .get(pos)
                    .is_some_and(|&b| b != 0 && !is_special(b) && !is_blank(b))
                {
                    pos += 1;
                }
                tokens.push(Token::Word(&s[start..pos]));
            }
        }
        if s.get(pos) == Some(&0) {
            pos += 1;
        }
    }
}

/// `labels.Parse` succeeds: the selector grammar plus key and value validation.
fn label_selector_is_valid(selector: &[u8]) -> bool {
    let tokens = lex_label_selector(selector);
    LabelParser { tokens, pos: 0 }.selector().is_some()
}

/// `labels.Parser`; each method returns `None` where Go returns an error. Where a key or a
/// value is expected, `in` and `notin` are plain words, as in Go.
struct LabelParser<'a> {
    tokens: Vec<Token<'a>>,
    pos: usize,
}

impl<'a> LabelParser<'a> {
    fn peek(&self) -> Token<'a> {
        self.tokens.get(self.pos).copied().unwrap_or(Token::End)
    }

    fn next(&mut self) -> Token<'a> {
        let token = self.peek();
        self.pos += 1;
        token
    }

    fn selector(&mut self) -> Option<()> {
        loop {
            match self.peek() {
                Token::End => return Some(()),
                Token::Word(_) | Token::Op(b"!") => {
                    self.requirement()?;
                    match self.next() {
                        Token::End => return Some(()),
                        Token::Op(b",")
                            if matches!(self.peek(), Token::Word(_) | Token::Op(b"!")) => {}
                        _ => return None,
                    }
                }
                Token::Op(_) => return None,
            }
        }
    }

    /// `!key`, `key`, `key op value`, `key in|notin (values)`, `key >|< integer`.
    fn requirement(&mut self) -> Option<()> {
        let negated = matches!(self.peek(), Token::Op(b"!"));
        if negated {
            self.pos += 1;
        }
        let Token::Word(key) = self.next() else {
            return None;
        };
        if !is_qualified_name(key) {
            return None;
        }
        if negated || matches!(self.peek(), Token::End | Token::Op(b",")) {
            return Some(());
        }
        match self.next() {
            Token::Word(b"in" | b"notin") => self.value_set(),
            Token::Op(b"=" | b"==" | b"!=") => self.exact_value(false),
            Token::Op(b"<" | b">") => self.exact_value(true),
            _ => None,
        }
    }

    fn value_set(&mut self) -> Option<()> {
        if !matches!(self.next(), Token::Op(b"(")) {
            return None;
        }
        match self.peek() {
            // `()` is the set {""}, which is valid.
            Token::Op(b")") => {
                self.pos += 1;
                Some(())
            }
            Token::Word(_) | Token::Op(b",") => {
                self.values()?;
                matches!(self.next(), Token::Op(b")")).then_some(())
            }
            _ => None,
        }
    }

    /// A comma-separated list in which empty entries are the value "" (always valid).
    fn values(&mut self) -> Option<()> {
        loop {
            match self.next() {
                Token::Word(value) => {
                    if !is_label_value(value) {
                        return None;
                    }
                    match self.peek() {
                        Token::Op(b",") => {}
                        Token::Op(b")") => return Some(()),
                        _ => return None,
                    }
                }
                Token::Op(b",") => match self.peek() {
                    Token::Op(b")") => return Some(()),
                    Token::Op(b",") => self.pos += 1,
                    _ => {}
                },
                _ => return None,
            }
        }
    }

    fn exact_value(&mut self, integer: bool) -> Option<()> {
        let value = match self.peek() {
            Token::End | Token::Op(b",") => &b""[..],
            Token::Word(value) => {
                self.pos += 1;
                value
            }
            Token::Op(_) => return None,
        };
        (is_label_value(value) && (!integer || is_go_int64(value))).then_some(())
    }
}

/// `validation.IsQualifiedName`: `[dns-subdomain "/"] name`, name at most 63 characters.
fn is_qualified_name(v: &[u8]) -> bool {
    let (prefix, name) = match v.iter().position(|&b| b == b'/') {
        Some(slash) => (Some(&v[..slash]), &v[slash + 1..]),
        None => (None, v),
    };
    prefix.is_none_or(is_dns1123_subdomain)
        && !name.is_empty()
        && name.len() <= 63
        && is_qualified_name_part(name)
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`; also rejects a second `/`.
fn is_qualified_name_part(v: &[u8]) -> bool {
    let (Some(first), Some(last)) = (v.first(), v.last()) else {
        return false;
    };
    first.is_ascii_alphanumeric()
        && last.is_ascii_alphanumeric()
        && v.iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `validation.IsValidLabelValue`: empty, or a qualified name part of at most 63 characters.
fn is_label_value(v: &[u8]) -> bool {
    v.is_empty() || (v.len() <= 63 && is_qualified_name_part(v))
}

/// `validation.IsDNS1123Subdomain`: at most 253 characters of dot-separated lowercase labels.
fn is_dns1123_subdomain(v: &[u8]) -> bool {
    let label = |l: &[u8]| {
        let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        l.first().is_some_and(alnum)
            && l.last().is_some_and(alnum)
            && l.iter().all(|b| alnum(b) || *b == b'-')
    };
    v.len() <= 253 && v.split(|&b| b == b'.').all(label)
}

#[cfg(test)]
mod tests;
