//! Masks secrets in API responses as they stream to the MCP server.
//!
//! # What is masked
//!
//! * Always: a Secret's `data` values become `base64(MARKER)` (still valid base64, so
//!   client-go, kube-rs and the Python client decode the object), its `stringData` values
//!   and its `kubectl.kubernetes.io/last-applied-configuration` annotation (the manifest in
//!   clear) become [`MARKER`]. That covers service-account-token Secrets (all their data).
//!   Rules add masking; they never remove the built-in one.
//! * By [`Rule`]: fields by path (see `rules.rs` for the syntax), narrowed by `key_regex`
//!   and `name_regex`, in objects of the rule's resources, namespaces and names; when a rule
//!   masks fields of an object, the object's last-applied annotation is masked too (it
//!   repeats them). Detectors and patterns of a rule look at every string value of the
//!   objects it applies to; any match masks the whole value. Keys are never changed.
//! * Pod logs: every line goes through **all built-in detectors** (a log is free text that
//!   any program writes: the safer default) plus the detectors and patterns of the rules
//!   that apply to the pod; only the matches are replaced.
//!
//! Objects are found wherever a response holds them: the object itself, List `items` (also
//! `kind: List` and `PartialObjectMetadataList`), watch events (`object`), Table `rows`
//! (`object`, full or `PartialObjectMetadata`). An object is matched as its own `kind`'s
//! resource *and* as the requested resource, so a `SecretList` item (which has no `kind`),
//! the metadata of a Secret and a Secret inside a `kind: List` are all Secrets.
//!
//! # Which responses ([`Masker::plan`])
//!
//! * Pass through: non-resource requests (discovery, `/version`, `/openapi`), a pod's
//!   `exec`, `attach` and `portforward` and the core group's pod, service and node `proxy`
//!   (not API objects: the policy must decide whether to allow them; another group's
//!   `proxy` answers objects, masked with every rule where their kind is not said), and
//!   built-in resources (core group, groups without
//!   a dot or ending in `.k8s.io`) that are not `secrets` and that no rule names.
//! * Masked: `secrets`, every resource a rule names (`*`: all), and custom or aggregated
//!   resources (they may return anything, `kind: List` included). `pods/log` is masked by
//!   line when `text/*`.
//! * Refused: a response to mask that cannot be inspected — not JSON (protobuf, CBOR, YAML),
//!   or with a `Content-Encoding` — so it is never passed in clear. A JSON error `Status` is
//!   masked like any object (it holds none, so it passes unchanged).
//!
//! # How
//!
//! The body is transformed as it streams (`stream.rs`): each object (a List item, a Table
//! row, a watch event, or a single object) is buffered alone, up to [`MAX_UNIT`] bytes,
//! tokenized to a tape of spans (`scan.rs`), matched in any key order, and only the selected
//! string values are rewritten. Bytes outside those values are copied unchanged, so a
//! response in which nothing matches leaves byte for byte as it came. Invalid JSON, an
//! object over the limit or a body cut short end the stream with an error, and nothing of
//! the offending unit is sent.
//!
//! # Limits (fail closed unless said otherwise)
//!
//! * A unit is at most [`MAX_UNIT`] bytes (etcd caps objects at 1.5 MiB); a log line is
//!   masked in pieces of at most [`MAX_LINE`] bytes, so a secret straddling a cut of a
//!   longer line could escape its detector (cuts fall after a blank when there is one).
//! * When a List too large to hold is streamed, its envelope fields before `items` are
//!   masked before the fields after it are read: if its `kind` is not among them, every
//!   policy rule applies to that envelope part (the built-in Secret rule goes by the
//!   requested resource: a List's own fields are list metadata). Only the answers to
//!   `list`, `watch` and `deletecollection` are streamed so; the answer to a request for
//!   one object is read whole, so the field paths of a custom object with its own
//!   top-level `items` or `rows` reach into them.
//! * Keys are never masked, only string values; Table `cells` are masked only by
//!   detectors and patterns (a printer column of a custom resource can show any field).
//! * The caller must drop `Content-Length` of a rewritten response ([`Plan::fix_headers`])
//!   and should ask the upstream for JSON (an `Accept` of protobuf gets a refusal).

mod detect;
mod kept;
mod logs;
mod rules;
mod scan;
mod stream;
mod unit;

#[cfg(test)]
mod tests;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use http::{header, HeaderMap, StatusCode};
use http_body_util::BodyExt;
use regex::bytes::Regex;

use crate::body::Body;
use crate::status::Status;

pub use detect::DETECTORS;
pub use kept::{credentials, mask_text, Sent};
pub use logs::MAX_LINE;
pub use stream::MAX_UNIT;

use detect::Scanner;
use logs::{LineRules, LineStream};
use rules::Compiled;
use stream::{JsonStream, Masked};
use unit::Context;

/// What masked plain strings become; Secret `data` values become its base64.
pub const MARKER: &str = "chaperone:masked";

/// One masking rule as the policy states it (an entry of `spec.masking`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rule {
    /// Plain resource names (`configmaps`, `pods`), or `*` for any.
    pub resources: Vec<String>,
    /// Namespace globs (`team-*`); empty = any.
    pub namespaces: Vec<String>,
    /// Object name globs; empty = any.
    pub names: Vec<String>,
    /// Field paths: `data.*`, `spec.containers[*].env[*].value`, `metadata.annotations.*`.
    pub fields: Vec<String>,
    /// Masks only the keys of the last `*` of a path that match.
    pub key_regex: Option<String>,
    /// Masks only the elements of the last `[*]` of a path whose `name` matches.
    pub name_regex: Option<String>,
    /// Built-in detectors by name (see [`DETECTORS`]).
    pub detectors: Vec<String>,
    /// User regexes for string values and log lines; a group named `secret` narrows what
    /// a log line loses.
    pub patterns: Vec<String>,
}

/// Why a response cannot be masked, or why rules do not compile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("masking rule {rule}: {field}: {reason}")]
    Rule {
        rule: usize,
        field: &'static str,
        reason: String,
    },
    #[error("chaperone masks secrets in this response and cannot inspect content type {content_type:?}: request application/json")]
    Uninspectable { content_type: String },
    #[error(
        "chaperone masks secrets in this response and cannot inspect content encoding {encoding:?}"
    )]
    Encoding { encoding: String },
    #[error("upstream sent invalid JSON at byte {offset}: {reason}")]
    InvalidJson { offset: u64, reason: &'static str },
    #[error("an object of more than {limit} bytes cannot be masked")]
    TooLarge { limit: usize },
    #[error("JSON nested more than {limit} levels deep cannot be masked")]
    TooDeep { limit: usize },
}

impl Error {
    /// The `Status` a client is told.
    pub fn status(&self) -> Status {
        let msg = self.to_string();
        match self {
            Error::Rule { .. } => Status::internal(msg),
            Error::Uninspectable { .. } | Error::Encoding { .. } => Status::not_acceptable(msg),
            Error::InvalidJson { .. } | Error::TooLarge { .. } | Error::TooDeep { .. } => {
                Status::failure(StatusCode::BAD_GATEWAY, "InternalError", msg)
            }
        }
    }

    /// Makes an offset relative to a unit relative to the stream.
    pub(crate) fn shifted(self, by: u64) -> Error {
        match self {
            Error::InvalidJson { offset, reason } => Error::InvalidJson {
                offset: offset + by,
                reason,
            },
            e => e,
        }
    }
}

/// The request a response answers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Target<'a> {
    pub resource: &'a str,
    pub subresource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub is_watch: bool,
    /// The answer is one object, never a List: `get`, `create`, `update`, `patch`,
    /// `delete`. It is then read whole (up to [`MAX_UNIT`]), never streamed as an
    /// envelope, so a custom object's own top-level `items` is masked by its field paths.
    pub one_object: bool,
    pub api_group: &'a str,
}

impl<'a> Target<'a> {
    /// The request `info` describes.
    pub fn of(info: &'a crate::request_info::RequestInfo) -> Self {
        Target {
            resource: &info.resource,
            subresource: &info.subresource,
            namespace: &info.namespace,
            name: &info.name,
            is_watch: info.verb == "watch",
            one_object: matches!(
                info.verb.as_str(),
                "get" | "create" | "update" | "patch" | "delete"
            ),
            api_group: &info.api_group,
        }
    }

    /// Whether the request does not say what kinds its answer holds: another group's
    /// `proxy` (an aggregated API reaching another cluster; see [`Context`]).
    pub(crate) fn answers_unknown_kinds(&self) -> bool {
        !self.api_group.is_empty() && self.subresource == "proxy"
    }

    /// Whether the body is not an API object: a pod's streams, and what a pod, a service
    /// or a node answers through the API server's proxy (the connections of
    /// [`crate::request_info::is_connection`]). Another group's `proxy` (an aggregated
    /// API reaching another cluster) answers objects, masked as any.
    fn opaque(&self) -> bool {
        crate::request_info::is_connection(self.api_group, self.resource, self.subresource)
    }
}

/// What to do with one response body.
#[derive(Debug)]
pub enum Plan {
    /// Nothing in it to mask: send it as it is.
    PassThrough,
    /// JSON objects (or a watch stream of events) to mask.
    MaskJson(JsonPlan),
    /// Plain-text log lines to mask.
    MaskLines(LinePlan),
    /// It must be masked and cannot be: answer this error's [`Error::status`] instead.
    Refuse(Error),
}

/// A [`Plan::MaskJson`]: cheap to build (an `Arc` and the request's names).
#[derive(Debug, Clone)]
pub struct JsonPlan {
    inner: Arc<Inner>,
    ctx: Context,
    watch: bool,
    one_object: bool,
}

/// A [`Plan::MaskLines`].
#[derive(Debug, Clone)]
pub struct LinePlan {
    rules: LineRules,
}

impl Plan {
    /// Whether the body will be rewritten.
    pub fn rewrites(&self) -> bool {
        matches!(self, Plan::MaskJson(_) | Plan::MaskLines(_))
    }

    /// Adjusts the response headers to a rewritten body: its length changes.
    pub fn fix_headers(&self, headers: &mut HeaderMap) {
        if self.rewrites() {
            headers.remove(header::CONTENT_LENGTH);
        }
    }
}

/// Compiled masking rules; cheap to share behind an `Arc`, or to clone.
#[derive(Debug, Clone)]
pub struct Masker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    secrets: Compiled,
    rules: Vec<Compiled>,
    pem_end: Arc<Regex>,
}

/// Every built-in detector in one scanner, for logs and exec commands: compiled on first
/// use and then shared by every policy. Compiled at start, these regexes were 1.1 MiB of
/// a proxy's 14 MiB at rest, which one that never serves a log or an exec does not need;
/// the first that does waits for the compilation (a few milliseconds). `None` if they do
/// not compile, which their tests rule out: callers then mask everything they would scan.
fn builtin_scanner() -> Option<&'static Arc<Scanner>> {
    static BUILTINS: OnceLock<Option<Arc<Scanner>>> = OnceLock::new();
    BUILTINS
        .get_or_init(|| compiled_or_logged(Scanner::builtins()))
        .as_ref()
}

/// Built-in detectors compiled on first use, or `None`, logged, if they did not compile.
fn compiled_or_logged(compiled: Result<Scanner, detect::ScanError>) -> Option<Arc<Scanner>> {
    match compiled {
        Ok(scanner) => Some(Arc::new(scanner)),
        Err(error) => {
            tracing::error!(?error, "built-in detectors do not compile");
            None
        }
    }
}

impl Inner {
    /// The built-in Secret rule, then the policy's rules.
    pub(crate) fn all(&self) -> impl Iterator<Item = &Compiled> {
        std::iter::once(&self.secrets).chain(&self.rules)
    }
}

impl Masker {
    /// Compiles the policy's rules; an error names the rule (by index) and the field.
    /// The built-in rules alone (Secrets), for when no policy is in force.
    pub fn builtin() -> Masker {
        // Compiling no user rules only compiles the built-in ones, which are fixed.
        Masker::compile(&[]).expect("the built-in masking rules compile")
    }

    pub fn compile(rules: &[Rule]) -> Result<Masker, Error> {
        let rules = rules
            .iter()
            .enumerate()
            .map(|(i, r)| Compiled::new(i, r))
            .collect::<Result<Vec<_>, _>>()?;
        let internal = |e| Error::Rule {
            rule: usize::MAX,
            field: "detectors",
            reason: format!("built-in detectors: {e:?}"),
        };
        let pem_end =
            Regex::new(detect::PEM_END).map_err(|e| internal(detect::ScanError::Pattern(0, e)))?;
        Ok(Masker {
            inner: Arc::new(Inner {
                secrets: Compiled::secrets(),
                rules,
                pem_end: Arc::new(pem_end),
            }),
        })
    }

    /// Decides what to do with one response (see the module docs for the rules).
    pub fn plan(&self, target: &Target<'_>, headers: &HeaderMap) -> Plan {
        if target.resource.is_empty() || target.opaque() {
            return Plan::PassThrough;
        }
        let logs = target.resource == "pods" && target.subresource == "log";
        if !logs && !self.needs_json(target) {
            return Plan::PassThrough;
        }
        let media = headers
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase());
        let params: Vec<&str> = media
            .as_deref()
            .unwrap_or("")
            .split(';')
            .map(str::trim)
            .collect();
        let essence = params[0];
        let json = essence == "application/json" || essence.ends_with("+json");
        // Every header line and every coding listed in one: any but `identity` is
        // refused, as the client would decode what was not masked.
        for line in headers.get_all(header::CONTENT_ENCODING) {
            let codings = String::from_utf8_lossy(line.as_bytes()).to_ascii_lowercase();
            for coding in codings.split(',').map(str::trim) {
                if !coding.is_empty() && coding != "identity" {
                    return Plan::Refuse(Error::Encoding {
                        encoding: coding.to_owned(),
                    });
                }
            }
        }
        if logs && (essence.starts_with("text/") || media.is_none()) {
            return match self.line_plan(target) {
                Some(plan) => Plan::MaskLines(plan),
                None => Plan::Refuse(Error::Rule {
                    rule: usize::MAX,
                    field: "detectors",
                    reason: "built-in detectors do not compile".to_owned(),
                }),
            };
        }
        // No Content-Type: an empty body (HEAD, 204) passes the JSON check; anything else
        // fails it, closed.
        if json || media.is_none() {
            return Plan::MaskJson(JsonPlan {
                inner: self.inner.clone(),
                ctx: Context {
                    resource: target.resource.to_string(),
                    namespace: target.namespace.to_string(),
                    name: target.name.to_string(),
                    unknown_kinds: target.answers_unknown_kinds(),
                },
                watch: target.is_watch || params.contains(&"stream=watch"),
                one_object: target.one_object,
            });
        }
        Plan::Refuse(Error::Uninspectable {
            content_type: media.unwrap_or_default(),
        })
    }

    /// Whether a Table of `target` could show a field a rule masks. A Table's cells are
    /// the printer columns, each a field of the object the masker never sees there by
    /// its path (a custom resource's `additionalPrinterColumns` can print
    /// `.spec.password`); only the row's `object` is masked by path. So for such a
    /// resource the caller is answered with objects instead (kubectl prints them itself;
    /// an MCP server that asked for a Table may print nothing).
    ///
    /// A built-in resource's columns are the API server's own, and none of them prints
    /// an env value, a command's arguments, a ConfigMap's or Secret's values, or an
    /// annotation ([`rules::Path::never_printed`]): a rule masking only such fields
    /// leaves its Tables as they are.
    pub fn masks_fields_of(&self, target: &Target<'_>) -> bool {
        let builtin = builtin_group(target.api_group);
        self.inner.rules.iter().any(|r| {
            r.names_resource(target.resource)
                && r.fields.iter().any(|p| !(builtin && p.never_printed()))
        })
    }

    /// Whether some field of `target`'s objects is masked in answers, by the built-in
    /// Secret rule or the policy's ([`Masker::patch_reveals`] reads a JSON patch of them).
    pub fn masks_a_field_of(&self, target: &Target<'_>) -> bool {
        self.inner
            .all()
            .any(|r| r.has_fields() && r.names_resource(target.resource))
    }

    /// Why a JSON patch (RFC 6902) of `target` would show a value this masker masks in
    /// answers, if it would: a `copy` or `move` whose `from` holds or lies inside a masked
    /// field puts the value where nothing masks it (in the answer and every read after),
    /// and a `test` of one says whether a guess at it is right. `ops` is the patch as
    /// parsed; one that is not an array of operations is the API server's to refuse.
    pub fn patch_reveals(&self, target: &Target<'_>, ops: &serde_json::Value) -> Option<String> {
        let (ns, name) = (target.namespace.as_bytes(), target.name.as_bytes());
        let rules: Vec<&Compiled> = self
            .inner
            .all()
            .filter(|r| r.has_fields() && r.applies(&[target.resource], ns, name))
            .collect();
        if rules.is_empty() {
            return None;
        }
        for op in ops.as_array()? {
            let field = match op["op"].as_str() {
                Some("copy" | "move") => "from",
                Some("test") => "path",
                _ => continue,
            };
            let Some(pointer) = op[field].as_str() else {
                continue;
            };
            // Read as the API server's JSON patch library reads it: split at `/`, the
            // first piece dropped whatever it holds (`x/data/password` is
            // `/data/password` to it). An empty pointer is the whole object.
            let read: Vec<String> = pointer
                .split('/')
                .skip(1)
                .map(|t| t.replace("~1", "/").replace("~0", "~"))
                .collect();
            // A copy or move from one masked field into another is refused too (a
            // Secret's key renamed): where the value lands is not checked.
            if rules
                .iter()
                .any(|r| r.fields.iter().any(|path| path.overlaps(&read)))
            {
                return Some(format!(
                    "its {:?} operation's {field} {pointer:?} holds a masked field",
                    op["op"].as_str().unwrap_or_default()
                ));
            }
        }
        None
    }

    /// Whether a (non-log) response to `target` may hold something to mask.
    fn needs_json(&self, target: &Target<'_>) -> bool {
        !builtin_group(target.api_group)
            || target.resource == "secrets"
            || self
                .inner
                .rules
                .iter()
                .any(|r| r.names_resource(target.resource))
    }

    /// `None` if built-in detectors the log is to be scanned with did not compile.
    fn line_plan(&self, target: &Target<'_>) -> Option<LinePlan> {
        let mut scanners = vec![builtin_scanner()?.clone()];
        let (ns, name) = (target.namespace.as_bytes(), target.name.as_bytes());
        for rule in &self.inner.rules {
            if let Some(s) = &rule.scanner {
                if rule.applies(&["pods"], ns, name) {
                    scanners.push(s.get()?.clone());
                }
            }
        }
        Some(LinePlan {
            rules: LineRules {
                scanners,
                pem_end: self.inner.pem_end.clone(),
            },
        })
    }
}

/// Wraps `body` per `plan`; `count` accumulates the number of values masked (for the audit
/// record; never the values). A `Refuse` plan yields its error at once: the caller should
/// have answered the error's `Status` instead, and nothing is passed in clear.
pub fn apply(body: Body, plan: Plan, count: Arc<AtomicU64>) -> Body {
    match plan {
        Plan::PassThrough => body,
        Plan::MaskJson(p) => Masked::new(
            body,
            JsonStream::new(p.inner, p.ctx, p.watch, !p.one_object),
            count,
        )
        .boxed(),
        Plan::MaskLines(p) => Masked::new(body, LineStream::new(p.rules), count).boxed(),
        Plan::Refuse(e) => {
            let err: crate::body::BoxError = Box::new(e);
            let frames = [Err::<http_body::Frame<bytes::Bytes>, _>(err)];
            http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed()
        }
    }
}

/// Whether `group` is one of Kubernetes' own: the core group, a group without a dot
/// (`apps`, `batch`), or one under `.k8s.io`.
fn builtin_group(group: &str) -> bool {
    group.is_empty() || !group.contains('.') || group.ends_with(".k8s.io")
}
