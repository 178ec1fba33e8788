//! Decides, from a locally mounted policy, whether a caller may make a request: allow, deny,
//! or hold for approval.
//!
//! A policy (`apiVersion: chaperone.dev/v1alpha1`, `kind: Policy`; the language is described
//! in `policies/README.md`) binds subjects to request matches with RBAC `PolicyRule`
//! semantics, plus namespaces and exec commands. The flow:
//!
//! * [`parse`] / [`load`]: strict YAML parsing (unknown fields, bad verbs, impossible matches
//!   are [`Error`]s naming file, line, column and field), compilation into an indexed
//!   [`Policy`], and lint [`Warning`]s (rules that never match, shadowed rules, broad grants).
//! * [`authorize`]: built-in denials, then the most restrictive matching rule (deny > approve
//!   > allow), then built-in discovery reads, then default deny; see [`Decision`].
//! * [`Watched`]: the current policy of a file, reloaded when the file (or the ConfigMap
//!   symlink it sits behind) changes, keeping the last good policy on a bad edit.

mod cases;
mod compile;
mod eval;
mod lint;
mod locate;
mod matching;
pub mod model;
mod reload;

use std::path::Path;

use serde::Deserialize;

pub use cases::{Case, Outcome};
pub use compile::{Commands, Policy, RuleMeta};
pub use eval::{
    authorize, decide, Decision, AUDIT_MODE, BUILTIN_RULES, CHAPERONE_RESOURCES, DEFAULT_DENY,
    DISCOVERY, IMPERSONATE, KUBELET_COMMANDS, MASKED_FIELDS, NO_POLICY, OWN_POLICY, STAY_INJECTED,
};
pub use lint::Warning;
pub use matching::command_args;
pub use reload::{Watched, DEFAULT_INTERVAL};

/// The proxy's policy: a watched file, or none configured (then every request is
/// refused, saying so), and the objects the proxy runs with, which no caller may change.
#[derive(Debug, Clone)]
pub struct Policies {
    source: Source,
    own: Vec<OwnObject>,
}

#[derive(Debug, Clone)]
enum Source {
    Watched(Watched),
    Unconfigured,
}

/// An object the proxy runs with, in the cluster: the ConfigMap its policy comes from,
/// its config's, its CA's, its serving certificate's Secret. A caller who could change
/// one could change what the proxy enforces or whom it trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnObject {
    /// A core resource: `configmaps` or `secrets`.
    pub resource: &'static str,
    pub namespace: String,
    pub name: String,
    /// What it is, for refusals: "the ConfigMap chaperone's policy comes from".
    pub what: &'static str,
}

impl OwnObject {
    /// The ConfigMap the proxy's policy comes from.
    pub fn policy(namespace: String, name: String) -> OwnObject {
        OwnObject {
            resource: "configmaps",
            namespace,
            name,
            what: "the ConfigMap chaperone's policy comes from",
        }
    }

    /// Whether `info` would change or delete it: an update, patch or delete of it (any
    /// subresource), or a deletecollection of its kind in its namespace. A create
    /// names its object in the body: see [`OwnObject::may_be_created_by`].
    pub fn is_changed_by(&self, info: &crate::request_info::RequestInfo) -> bool {
        self.is_among(info)
            && match info.verb.as_str() {
                "update" | "patch" | "delete" => info.name == self.name,
                // Only a review names a create (`kubectl auth can-i create
                // configmap/NAME`); a create's own name is in its body.
                "create" => info.subresource.is_empty() && info.name == self.name,
                "deletecollection" => true,
                _ => false,
            }
    }

    /// Whether `info` creates an object of its kind in its namespace, which may be it:
    /// it fails while the object exists, but once someone else has deleted it a create
    /// would put the caller's own in its place. Which object is named in the body, read
    /// by the pipeline and given to [`OwnObject::is_named_by`].
    pub fn may_be_created_by(&self, info: &crate::request_info::RequestInfo) -> bool {
        self.is_among(info) && info.verb == "create" && info.subresource.is_empty()
    }

    /// Whether an object sent to be created is it: by its `metadata.name`, or, when that
    /// is empty, by a `generateName` the API server could complete to its name (the
    /// prefix, cut to 58 bytes, followed by five random characters).
    pub fn is_named_by(&self, object: &serde_json::Value) -> bool {
        let meta = |key| {
            object
                .pointer(key)
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
        };
        let name = meta("/metadata/name");
        if !name.is_empty() {
            return name == self.name;
        }
        let base = meta("/metadata/generateName").as_bytes();
        let base = &base[..base.len().min(GENERATED_NAME_BASE)];
        !base.is_empty()
            && self.name.len() == base.len() + GENERATED_NAME_SUFFIX
            && self.name.as_bytes().starts_with(base)
    }

    /// Its kind, as a reader names it: `ConfigMap`, `Secret`.
    pub fn kind(&self) -> &'static str {
        match self.resource {
            "secrets" => "Secret",
            _ => "ConfigMap",
        }
    }

    fn is_among(&self, info: &crate::request_info::RequestInfo) -> bool {
        info.is_resource_request
            && info.api_group.is_empty()
            && info.resource == self.resource
            && info.namespace == self.namespace
    }
}

/// The keys that take a pod out of chaperone (`chaperone.dev/inject: "false"`, on the pod
/// or its namespace) or choose the policy its proxy enforces (`chaperone.dev/policy`):
/// an administrator's to set. A caller who could set them through chaperone could run a
/// pod (or a Deployment's) with the service account's real token, or behind a policy of
/// its own.
pub const INJECTION_KEYS: [&str; 2] = ["chaperone.dev/inject", "chaperone.dev/policy"];
/// [`INJECTION_KEYS`] as the last token of a JSON patch's path (RFC 6901: `/` is `~1`).
const INJECTION_KEYS_IN_PATHS: [&str; 2] = ["chaperone.dev~1inject", "chaperone.dev~1policy"];

/// Whether `info` writes a pod or an object that templates pods: its body is read for
/// [`INJECTION_KEYS`] and `hostNetwork` ([`injection_key_in`]), and an update or patch
/// is checked against the live object ([`opts_out`]). A custom resource (or an aggregated
/// API's object) may template pods anywhere in it (an operator's `Rollout`, a
/// `VirtualMachine`, a pipeline's task run): any object of a group that is not one of
/// Kubernetes' own is read the same way.
pub fn shapes_injection(info: &crate::request_info::RequestInfo) -> bool {
    info.is_resource_request
        && info.subresource.is_empty()
        && matches!(info.verb.as_str(), "create" | "update" | "patch")
        && (matches!(
            (info.api_group.as_str(), info.resource.as_str()),
            (
                "",
                "pods" | "podtemplates" | "replicationcontrollers" | "namespaces"
            ) | (
                "apps",
                "deployments" | "replicasets" | "statefulsets" | "daemonsets"
            ) | ("batch", "jobs" | "cronjobs")
        ) || custom_group(info))
}

/// Kubernetes' own API groups but the core one: none of their kinds but the workloads
/// [`shapes_injection`] names templates pods. A custom resource's group always has a
/// dot, and is never one of these unless an administrator defined one under a
/// `.k8s.io` name.
const KUBERNETES_OWN_GROUPS: [&str; 21] = [
    "apps",
    "batch",
    "autoscaling",
    "policy",
    "admissionregistration.k8s.io",
    "apiextensions.k8s.io",
    "apiregistration.k8s.io",
    "authentication.k8s.io",
    "authorization.k8s.io",
    "certificates.k8s.io",
    "coordination.k8s.io",
    "discovery.k8s.io",
    "events.k8s.io",
    "flowcontrol.apiserver.k8s.io",
    "internal.apiserver.k8s.io",
    "networking.k8s.io",
    "node.k8s.io",
    "rbac.authorization.k8s.io",
    "resource.k8s.io",
    "scheduling.k8s.io",
    "storage.k8s.io",
];

fn kubernetes_own_group(group: &str) -> bool {
    group.is_empty() || KUBERNETES_OWN_GROUPS.contains(&group)
}

/// Whether `info` changes a namespace: its `chaperone.dev/inject` label is what turns
/// injection on, and a write that leaves it out (an update without it, a patch that
/// replaces the labels) would turn it off. Never through chaperone.
pub fn changes_namespace(info: &crate::request_info::RequestInfo) -> bool {
    info.is_resource_request
        && info.api_group.is_empty()
        && info.resource == "namespaces"
        && matches!(info.verb.as_str(), "update" | "patch")
}

/// The injection key a sent object or patch sets: as a key anywhere in it (labels and
/// annotations, a template's too, a merge patch's `null`), or as the last step of a
/// JSON patch's `path` (`/metadata/labels/chaperone.dev~1inject`). `hostNetwork`, which
/// the injector leaves uninjected, counts as one (but for `false`, or in a Kubernetes
/// object a merge patch's `null` removing it).
pub fn injection_key_in(v: &serde_json::Value) -> Option<&'static str> {
    key_in(v, false)
}

/// [`injection_key_in`]; `custom`: in a custom resource, where a `hostNetwork: null`
/// may remove an administrator's `false` from values a chart then defaults.
fn key_in(v: &serde_json::Value, custom: bool) -> Option<&'static str> {
    use serde_json::Value;
    match v {
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            INJECTION_KEYS
                .into_iter()
                .find(|key| k == key)
                .or_else(|| {
                    let off = v == &Value::Bool(false) || (!custom && v.is_null());
                    (is_host_network(k, custom) && !off).then_some(HOST_NETWORK)
                })
                .or_else(|| key_in(v, custom))
        }),
        Value::Array(items) => items.iter().find_map(|v| key_in(v, custom)),
        Value::String(s) => INJECTION_KEYS
            .into_iter()
            .zip(INJECTION_KEYS_IN_PATHS)
            .find(|(_, in_path)| s.ends_with(in_path))
            .map(|(key, _)| key)
            .or_else(|| s.ends_with("/hostNetwork").then_some(HOST_NETWORK)),
        _ => None,
    }
}

/// The injection key a write of `info` sends in `object`: [`injection_key_in`], and for
/// a custom resource also what its text sets ([`text_sets`]), which an operator may
/// render into pods (Helm values, a patch written as YAML, `--set` parameters).
pub fn injection_key_sent(
    info: &crate::request_info::RequestInfo,
    object: &serde_json::Value,
) -> Option<&'static str> {
    let custom = custom_group(info);
    key_in(object, custom).or_else(|| custom.then(|| text_sets(object)).flatten())
}

/// What the text of a custom resource sets: in any string ([`injection_key_in_text`]),
/// or as a `name` and a `value` (Argo CD's Helm parameters) naming an injection key or
/// giving `hostNetwork` anything but false.
fn text_sets(v: &serde_json::Value) -> Option<&'static str> {
    use serde_json::Value;
    match v {
        Value::String(s) => injection_key_in_text(s),
        Value::Array(items) => items.iter().find_map(text_sets),
        Value::Object(map) => match named_setting(map) {
            // Its name read as a setting's, not as text.
            Some(found) => found.or_else(|| {
                map.iter()
                    .filter(|(k, _)| *k != "name")
                    .find_map(|(_, v)| text_sets(v))
            }),
            None => map.values().find_map(text_sets),
        },
        _ => None,
    }
}

/// A setting written as `{name, value}`: the name an injection key, or `hostNetwork`
/// (`controller.hostNetwork`) with a value Helm's `--set` (which Argo CD passes such
/// parameters to) does not read as false: only `false` (any case) or `0`, and not
/// with `forceString`, which makes any value a string, true in a chart's `if`. `None`
/// where the name names none of them; `Some(None)` where it names `hostNetwork` and
/// gives it false.
fn named_setting(map: &serde_json::Map<String, serde_json::Value>) -> Option<Option<&'static str>> {
    use serde_json::Value;
    let raw = map.get("name")?.as_str()?;
    let name = unescaped(raw);
    if let Some(key) = INJECTION_KEYS
        .into_iter()
        .find(|key| names_key(raw, key) || names_key(&name, key))
    {
        return Some(Some(key));
    }
    if !names_key(raw, HOST_NETWORK) && !names_key(&name, HOST_NETWORK) {
        return None;
    }
    // Argo CD writes `--set name=value` as is: a name `x=1,hostNetwork` or
    // `hostNetwork[0]` sets it otherwise than its value says.
    let host_network = name == HOST_NETWORK || name.ends_with(".hostNetwork");
    // An operator decoding with Go's `encoding/json` takes `VALUE` or `forcestring` for
    // the fields, the last one written winning: only the exact names are read here.
    let variant = map.keys().any(|k| {
        k != "value" && k != "forceString" && (folds_to(k, "value") || folds_to(k, "forcestring"))
    });
    if !host_network || variant {
        return Some(Some(HOST_NETWORK));
    }
    let forced = map.get("forceString") == Some(&Value::Bool(true));
    let off = !forced
        && match map.get("value") {
            Some(Value::Bool(false)) => true,
            Some(Value::String(value)) => value.eq_ignore_ascii_case("false") || value == "0",
            Some(Value::Number(n)) => n.as_f64() == Some(0.0),
            _ => false,
        };
    Some((!off).then_some(HOST_NETWORK))
}

/// The injection key text names, read as written and with its escapes decoded
/// ([`TextRead`]): an injection key in either reading (also as a JSON pointer step), or
/// `hostNetwork` anywhere but as a YAML key given `false`
/// ([`TextRead::sets_host_network`], which parses the text to tell).
pub fn injection_key_in_text(text: &str) -> Option<&'static str> {
    let read = TextRead::of(text);
    INJECTION_KEYS
        .into_iter()
        .find(|key| read.names(key))
        .or_else(|| read.sets_host_network().then_some(HOST_NETWORK))
}

/// A custom resource's string as an operator may read it: as written, and with its
/// escapes decoded ([`unescaped`]: every escape YAML and JSON have that can make a
/// letter, and escaped line breaks). A name no reading holds cannot come out of a YAML
/// parser either, but through a tag that hides text: `!!binary`, whose bytes go-yaml
/// decodes into a key, however it is spelled (a `%` escape in the tag, a `%TAG`
/// handle), counts as naming everything.
struct TextRead<'a> {
    raw: &'a str,
    /// The text decoded once, and again while decoding changes it (up to
    /// [`DECODINGS`] times): values rendered into a quoted string at each step of a
    /// chart (or a chart of charts) are decoded once more at each.
    decoded: Vec<String>,
    binary: bool,
}

/// How many times a string is decoded, at most ([`TextRead`]).
const DECODINGS: usize = 3;

/// Whether YAML text may hold a tag that hides text: a `%TAG` directive, a verbatim tag
/// (`!<tag:yaml.org,2002:binary>`), or a tag (a word from its first `!`) that names
/// `binary` or holds a `%` escape (`!!%62inary`). One pass: the words do not overlap.
fn hides_text(raw: &str) -> bool {
    raw.contains("%TAG")
        || raw.contains("2002:binary")
        || raw.contains("2002:%")
        || raw
            .split(|c: char| {
                c.is_whitespace() || matches!(c, ',' | '[' | ']' | '{' | '}' | '\u{feff}')
            })
            .any(|word| {
                // A tag may follow `?` or `:` in a flow collection with no blank:
                // from the word's first `!` on.
                word.find('!').is_some_and(|at| {
                    let tag = &word[at..];
                    tag.contains("!<") || tag.contains("binary") || tag.contains('%')
                })
            })
}

/// The longest string parsed to see whether its mentions of `hostNetwork` all give it
/// `false`; one with an alias (`*`) is not parsed at all: each alias copies what it
/// names, an alias inside its own anchor is copied again to the parser's depth limit,
/// and aliases of anchors that hold aliases multiply, so a few kilobytes can make
/// gigabytes. Past either bound the string is taken to set it.
const PARSED_TEXT_MAX: usize = 64 * 1024;

impl<'a> TextRead<'a> {
    fn of(raw: &'a str) -> Self {
        let mut decoded: Vec<String> = Vec::new();
        let mut last = raw;
        while decoded.len() < DECODINGS {
            match unescaped(last) {
                std::borrow::Cow::Owned(next) if next != last => decoded.push(next),
                _ => break,
            }
            last = decoded.last().map_or(raw, String::as_str);
        }
        // A tag spelled with escapes (`\x21\x21binary`) is one once decoded.
        let binary = hides_text(raw) || decoded.iter().any(|d| hides_text(d));
        TextRead {
            raw,
            decoded,
            binary,
        }
    }

    /// Whether any reading names `key` (`hostNetwork` as a whole word).
    fn names(&self, key: &str) -> bool {
        self.binary || names_key(self.raw, key) || self.decoded.iter().any(|d| names_key(d, key))
    }

    /// Whether the text sets `hostNetwork`: it names it in any reading, and is not a
    /// YAML document (parsed by serde_yaml's port of libyaml, as go-yaml is one) in
    /// which every mention is a key `hostNetwork` given `false` (or an empty string),
    /// the only values a chart's `{{ if .Values.hostNetwork }}` reads as false that
    /// every reader types alike. `no`, `off`, `0`, a `--set` line (`hostNetwork=false`),
    /// a path to it or a mention in prose: set. Only such strings are parsed, and only
    /// small ones without aliases.
    fn sets_host_network(&self) -> bool {
        if !self.names(HOST_NETWORK) {
            return false;
        }
        let parsable = !self.binary
            && self.raw.len() <= PARSED_TEXT_MAX
            && !self.raw.contains('*')
            && flow_openings(self.raw) <= PARSED_FLOW_OPENINGS_MAX;
        let doc = parsable
            .then(|| serde_yaml::from_str::<serde_yaml::Value>(self.raw).ok())
            .flatten();
        !doc.is_some_and(|doc| only_false_host_network(&doc))
    }
}

/// The most flow collections (`[`, `{`) a parsed text may open. libyaml's scanner slows
/// down with the square of their depth (65,000 nested: seconds on the runtime's
/// thread), and no count of closing brackets bounds the depth (a `]` in a comment or a
/// quoted string closes nothing), so every opening bracket counts, quoted or not: at
/// worst a text that names `hostNetwork` is refused. Values people write open a few
/// dozen.
const PARSED_FLOW_OPENINGS_MAX: usize = 1024;

fn flow_openings(text: &str) -> usize {
    text.bytes().filter(|b| matches!(b, b'[' | b'{')).count()
}

/// Whether every mention of `hostNetwork` in a YAML document is a mapping key
/// `hostNetwork` given `false` or `""`; a string in it is read as the text it is in
/// ([`TextRead`]: decoded, and any hiding tag), as a chart may render it again.
fn only_false_host_network(v: &serde_yaml::Value) -> bool {
    use serde_yaml::Value;
    match v {
        Value::Mapping(map) => map.iter().all(|(k, v)| {
            if k.as_str() == Some(HOST_NETWORK) {
                matches!(v, Value::Bool(false)) || v.as_str() == Some("")
            } else {
                only_false_host_network(k) && only_false_host_network(v)
            }
        }),
        Value::Sequence(items) => items.iter().all(only_false_host_network),
        Value::String(s) => !TextRead::of(s).names(HOST_NETWORK),
        Value::Tagged(tagged) => {
            !TextRead::of(&tagged.tag.to_string()).names(HOST_NETWORK)
                && only_false_host_network(&tagged.value)
        }
        _ => true,
    }
}

/// `text` as an operator's parser may read it: YAML's and JSON's escapes decoded
/// (`\\` one backslash, `\xXX`, `\uXXXX`, `\UXXXXXXXX`, an escaped line break
/// dropped), and every other escaping backslash dropped (`chaperone\.dev/inject` as
/// Helm's `--set` escapes a dot, `chaperone.dev\/inject` in JSON). Read for names
/// only, never for values.
fn unescaped(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains('\\') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        let digits = match rest.as_bytes().first() {
            // `\\` is one backslash, which escapes nothing after it.
            Some(b'\\') => {
                out.push('\\');
                rest = &rest[1..];
                continue;
            }
            Some(b'x') => 2,
            Some(b'u') => 4,
            Some(b'U') => 8,
            Some(b'\n' | b'\r') => {
                rest = rest[1..]
                    .strip_prefix('\n')
                    .unwrap_or(&rest[1..])
                    .trim_start_matches([' ', '\t']);
                continue;
            }
            // YAML's other line breaks: NEL, LS, PS.
            _ if rest.starts_with(['\u{85}', '\u{2028}', '\u{2029}']) => {
                let width = rest.chars().next().map_or(0, char::len_utf8);
                rest = rest[width..].trim_start_matches([' ', '\t']);
                continue;
            }
            _ => continue,
        };
        let code = rest
            .get(1..=digits)
            .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
            .and_then(char::from_u32);
        if let Some(c) = code {
            out.push(c);
            rest = &rest[1 + digits..];
        }
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

/// Whether `text` names `key`, plainly (but the injector's own
/// `chaperone.dev/injected-version`; `hostNetwork` as a whole word) or as a JSON pointer
/// step.
fn names_key(text: &str, key: &str) -> bool {
    if key == HOST_NETWORK {
        let folded = folded(text);
        return folded.match_indices(HOST_NETWORK_FOLDED).any(|(at, _)| {
            !folded[at + HOST_NETWORK_FOLDED.len()..]
                .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        });
    }
    let plainly = text
        .match_indices(key)
        .any(|(at, _)| !text[at + key.len()..].starts_with("ed-version"));
    plainly
        || INJECTION_KEYS
            .into_iter()
            .zip(INJECTION_KEYS_IN_PATHS)
            .any(|(k, in_path)| k == key && text.contains(in_path))
}

/// `text` as Go's `encoding/json` matches a field's name, which an operator decoding
/// rendered text into a pod spec uses ([`fold`]).
fn folded(text: &str) -> std::borrow::Cow<'_, str> {
    if text.is_ascii() && !text.bytes().any(|b| b.is_ascii_uppercase()) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(text.chars().map(fold).collect())
}

/// A character as Go's `encoding/json` folds it to match a field's name: ASCII case
/// folded, and the two characters it folds to ASCII letters (`ſ` to `s`, the Kelvin sign
/// to `k`).
fn fold(c: char) -> char {
    match c {
        '\u{17f}' => 's',
        '\u{212a}' => 'k',
        c => c.to_ascii_lowercase(),
    }
}

/// Whether a custom resource's field named `k` is `hostNetwork` to an operator that
/// decodes it with Go's `encoding/json` (any case); in Kubernetes' own objects, which
/// the API server decodes case-sensitively, only `hostNetwork`.
fn is_host_network(k: &str, custom: bool) -> bool {
    k == HOST_NETWORK || (custom && folds_to(k, HOST_NETWORK_FOLDED))
}

/// Whether Go's `encoding/json` matches the field name `k` with `folded` ([`fold`]),
/// compared as the characters come.
fn folds_to(k: &str, folded: &str) -> bool {
    k.chars().map(fold).eq(folded.chars())
}

const HOST_NETWORK_FOLDED: &str = "hostnetwork";

/// A pod on the node's network is left uninjected by the injector (the node's loopback
/// is not the pod's own).
const HOST_NETWORK: &str = "hostNetwork";

/// The injection key in a protobuf body, whose strings are its bytes as they are: any
/// occurrence of one (whatever varints are written before it) but the injector's own
/// `chaperone.dev/injected-version`, written whole as one string (its length, 30, just
/// before it: bytes `ed-version` that only follow the key, in another field, do not
/// make it that). For the kinds chaperone does not decode.
pub fn injection_key_in_bytes(bytes: &[u8]) -> Option<&'static str> {
    const INJECTED_VERSION: &[u8] = b"chaperone.dev/injected-version";
    INJECTION_KEYS.into_iter().find(|key| {
        let key = key.as_bytes();
        bytes.windows(key.len()).enumerate().any(|(at, w)| {
            let injected_version = at > 0
                && usize::from(bytes[at - 1]) == INJECTED_VERSION.len()
                && bytes[at..].starts_with(INJECTED_VERSION);
            w == key && !injected_version
        })
    })
}

/// Whether a live pod or workload is out of chaperone by an administrator's choice
/// (`chaperone.dev/inject: "false"` on it or a pod template in it) or runs on the node's
/// network: changed through chaperone, it would run the caller's code with the service
/// account's real token. Looked for at any depth and in any map, as a custom resource
/// may keep a template anywhere and its labels under any name (`spec.podMetadata`,
/// `spec.inheritedMetadata`). In a custom resource (`custom`), also in what its text
/// sets ([`text_sets`]: naming the key at all, or setting `hostNetwork`), and a
/// `hostNetwork` or key of any value but false, as a chart may read `"true"` or `yes`.
pub fn opts_out(live: &serde_json::Value, custom: bool) -> bool {
    use serde_json::Value;
    match live {
        Value::Object(map) => {
            let opted = map
                .get(INJECTION_KEYS[0])
                .is_some_and(|v| v == "false" || (custom && v == &Value::Bool(false)));
            let host = map.iter().any(|(k, v)| {
                is_host_network(k, custom)
                    && (v == &Value::Bool(true)
                        || (custom && !matches!(v, Value::Bool(false) | Value::Null)))
            });
            let named = custom.then(|| named_setting(map)).flatten();
            opted
                || host
                || named.flatten().is_some_and(|key| key != INJECTION_KEYS[1])
                || map
                    .iter()
                    // A setting's name is read as one, above, not as text.
                    .filter(|(k, _)| named.is_none() || *k != "name")
                    .any(|(_, v)| opts_out(v, custom))
        }
        Value::Array(items) => items.iter().any(|v| opts_out(v, custom)),
        Value::String(text) if custom => {
            let read = TextRead::of(text);
            read.names(INJECTION_KEYS[0]) || read.sets_host_network()
        }
        _ => false,
    }
}

/// Whether `info` is about a custom resource (or an aggregated API's object): any group
/// but Kubernetes' own.
pub fn custom_group(info: &crate::request_info::RequestInfo) -> bool {
    !kubernetes_own_group(&info.api_group)
}

/// The API server's `SimpleNameGenerator`: a `generateName` is cut to 58 bytes and
/// followed by 5 random characters (a name is at most 63).
const GENERATED_NAME_BASE: usize = 58;
const GENERATED_NAME_SUFFIX: usize = 5;

impl Policies {
    /// The policy of a watched file.
    pub fn watched(watched: Watched) -> Policies {
        Policies {
            source: Source::Watched(watched),
            own: Vec::new(),
        }
    }

    /// No policy configured: every request is refused.
    pub fn unconfigured() -> Policies {
        Policies {
            source: Source::Unconfigured,
            own: Vec::new(),
        }
    }

    /// Protects the objects the proxy runs with.
    pub fn protecting(mut self, own: Vec<OwnObject>) -> Policies {
        self.own = own;
        self
    }

    /// Whether `info` may create one of the objects the proxy runs with (the pipeline
    /// then reads the body to tell): the first such object.
    pub fn may_create_own(&self, info: &crate::request_info::RequestInfo) -> Option<&OwnObject> {
        self.own.iter().find(|own| own.may_be_created_by(info))
    }

    /// The object the proxy runs with that `info`, sending `object`, would create.
    pub fn own_created(
        &self,
        info: &crate::request_info::RequestInfo,
        object: &serde_json::Value,
    ) -> Option<&OwnObject> {
        self.own
            .iter()
            .find(|own| own.may_be_created_by(info) && own.is_named_by(object))
    }

    /// The policy in force now, to decide and mask one request with.
    pub fn in_force(&self) -> InForce<'_> {
        InForce {
            policies: self,
            policy: match &self.source {
                Source::Watched(w) => w.current(),
                Source::Unconfigured => None,
            },
        }
    }

    /// Why the proxy cannot serve as configured (for `/readyz`): no policy in force.
    pub fn not_ready(&self) -> Option<String> {
        match &self.source {
            Source::Unconfigured => Some("no policy configured (policy.file)".to_owned()),
            Source::Watched(w) if w.current().is_none() => Some(format!(
                "no policy loaded from {}: {}",
                w.path().display(),
                w.last_error().unwrap_or_else(|| "not read yet".to_owned())
            )),
            Source::Watched(_) => None,
        }
    }

    /// A problem that does not stop serving: the last reload failed, the previous
    /// policy stays in force.
    pub fn warning(&self) -> Option<String> {
        match &self.source {
            Source::Watched(w) if w.current().is_some() => w
                .last_error()
                .map(|e| format!("policy reload failed, the previous policy stays in force: {e}")),
            _ => None,
        }
    }

    /// The masking rules in force: the policy's, or the built-in ones alone.
    pub fn masker(&self) -> crate::mask::Masker {
        self.in_force().masker()
    }

    /// (policies put in force, failed loads), for metrics.
    pub fn counts(&self) -> (u64, u64) {
        match &self.source {
            Source::Watched(w) => (w.reloads(), w.failures()),
            Source::Unconfigured => (0, 0),
        }
    }
}

/// The policy in force when a request came, kept for the whole request: the rules that
/// decide it are the ones that mask its record, its kept copies and its answer, though
/// the file be reloaded while its token is verified.
pub struct InForce<'a> {
    policies: &'a Policies,
    policy: Option<std::sync::Arc<Policy>>,
}

impl InForce<'_> {
    /// The masking rules: the policy's, or the built-in ones alone.
    pub fn masker(&self) -> crate::mask::Masker {
        match &self.policy {
            Some(p) => p.masker().clone(),
            None => crate::mask::Masker::builtin(),
        }
    }

    /// For a review asking with a wildcard, the rule that denies or holds part of what
    /// it covers ([`eval::restricting_part`]).
    pub fn restricting_part(
        &self,
        who: &crate::identity::Subject,
        asked: &crate::request_info::RequestInfo,
    ) -> Option<std::sync::Arc<RuleMeta>> {
        self.policy
            .as_ref()
            .and_then(|p| eval::restricting_part(p, who, asked))
    }

    /// Decides one request.
    pub fn authorize(
        &self,
        who: &crate::identity::Subject,
        info: &crate::request_info::RequestInfo,
        query: Option<&str>,
    ) -> Decision {
        self.decide(who, info, Commands::Sent(query))
    }

    /// As [`InForce::authorize`], with an exec request's command given as [`Commands`].
    pub fn decide(
        &self,
        who: &crate::identity::Subject,
        info: &crate::request_info::RequestInfo,
        commands: Commands<'_>,
    ) -> Decision {
        if let Some(own) = self.policies.own.iter().find(|own| own.is_changed_by(info)) {
            return Decision::own_object(info, own.what);
        }
        if changes_namespace(info) {
            return Decision::stay_injected(info);
        }
        match (&self.policies.source, &self.policy) {
            (Source::Watched(_), Some(policy)) => decide(policy, who, info, commands),
            (Source::Watched(w), None) => Decision::no_policy(info, w.last_error().map(Into::into)),
            (Source::Unconfigured, _) => {
                Decision::no_policy(info, Some("the proxy config has no `policy.file`".into()))
            }
        }
    }
}

/// What a rule (and a decision) does with a request. Ordered by restrictiveness, so that
/// `max` picks the winner: allow < approve < deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Approve,
    Deny,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Approve => "approve",
            Action::Deny => "deny",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a decision is carried out (`enforce`) or only reported (`audit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        })
    }
}

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read policy file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// `message` starts with the field's path, e.g. `spec.rules[2].verbs[0]: unknown verb`.
    #[error("{origin}:{line}:{column}: {message}")]
    Invalid {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Parses, validates, compiles and lints a policy. `origin` names it in errors and warnings
/// (a file path, usually).
pub fn parse(text: &str, origin: &str) -> Result<(Policy, Vec<Warning>)> {
    let doc: model::Document = serde_yaml::from_str(text).map_err(|e| yaml_error(&e, origin))?;
    let policy = compile::compile(doc, text, origin)?;
    let warnings = lint::lint(&policy);
    Ok((policy, warnings))
}

/// Reads and [`parse`]s a policy file.
pub fn load(path: &Path) -> Result<(Policy, Vec<Warning>)> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// serde_yaml says `path: message at line L column C`; the position moves to the front.
fn yaml_error(e: &serde_yaml::Error, origin: &str) -> Error {
    let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
    let text = e.to_string();
    let message = match text.rfind(" at line ") {
        Some(i) if e.location().is_some() => text[..i].to_owned(),
        _ => text,
    };
    Error::Invalid {
        origin: origin.to_owned(),
        line,
        column,
        message,
    }
}

#[cfg(test)]
mod tests;
