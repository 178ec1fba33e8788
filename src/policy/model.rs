//! The policy file as written: serde types that reject what cannot be right on its own.
//!
//! Every check that needs only one value (a verb, a resource pattern, a duration) lives in a
//! `TryFrom<String>` newtype or an enum, so that serde_yaml reports it with the path, line and
//! column of that value. Checks across fields (resources with nonResourceURLs, commands on a
//! resource other than `pods/exec`, ...) need the whole rule and live in `compile`.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::Deserialize;

mod scalars;
pub use scalars::*;

use super::Action;
use super::Mode;

/// The only `apiVersion` this engine reads.
pub const API_VERSION: &str = "chaperone.dev/v1alpha1";
/// Default `approval.hold`: how long a request waits for approvers.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(60);
/// Default `approval.grant`: how long an approval covers repeats of the request.
pub const DEFAULT_GRANT: Duration = Duration::from_secs(15 * 60);
/// The namespace pattern that matches requests not confined to one namespace.
pub const CLUSTER: &str = "<cluster>";

/// A whole policy file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Document {
    pub api_version: ApiVersion,
    pub kind: Kind,
    pub metadata: Metadata,
    pub spec: Spec,
    /// Cases that `chaperone policy test` runs against this policy.
    #[serde(default)]
    pub tests: Vec<TestCase>,
}

/// `Policy`, checked.
#[derive(Debug, Clone, Deserialize)]
pub enum Kind {
    Policy,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: NonEmpty,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    pub mode: Mode,
    /// How much of a request the audit record keeps when its rule says nothing:
    /// `Metadata` (default), `Request` (+ the request body) or `RequestResponse`
    /// (+ the masked response body), as in a Kubernetes audit policy.
    #[serde(default)]
    pub audit_level: crate::audit::event::Level,
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub masking: Vec<Masking>,
}

/// One rule: who, what (RBAC `PolicyRule` fields plus namespaces and commands), and the action.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    pub name: NonEmpty,
    #[serde(default)]
    pub description: Option<String>,
    pub subjects: Subjects,
    #[serde(default)]
    pub api_groups: Vec<ApiGroup>,
    #[serde(default)]
    pub resources: Vec<ResourcePattern>,
    #[serde(default, deserialize_with = "given_names")]
    pub resource_names: Vec<ResourceName>,
    #[serde(default, rename = "nonResourceURLs")]
    pub non_resource_urls: Vec<UrlPattern>,
    pub verbs: Vec<Verb>,
    /// `None` (omitted) matches any namespace; `Some(vec![])` is refused in `compile`.
    #[serde(default, deserialize_with = "given_namespaces")]
    pub namespaces: Option<Vec<NamespacePattern>>,
    #[serde(default, deserialize_with = "given_commands")]
    pub commands: Option<Vec<CommandPattern>>,
    pub action: Action,
    #[serde(default)]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub approval: Option<Approval>,
    /// The audit level of requests this rule decides; default: `spec.auditLevel`.
    #[serde(default)]
    pub audit_level: Option<crate::audit::event::Level>,
}

/// A field whose omission means "any", given no value (`namespaces:` left blank, `~`,
/// `null`): refused, where serde would read it as omitted. A template that rendered
/// nothing there must not silently widen the rule to every namespace, command or name.
fn given<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
    field: &str,
    any: &str,
) -> Result<Option<T>, D::Error> {
    match Option::<T>::deserialize(d)? {
        Some(value) => Ok(Some(value)),
        None => Err(serde::de::Error::custom(format!(
            "{field} has no value: omit it to match {any}, or list what it matches"
        ))),
    }
}

fn given_namespaces<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<NamespacePattern>>, D::Error> {
    given(d, "namespaces", "any namespace")
}

fn given_commands<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<CommandPattern>>, D::Error> {
    given(d, "commands", "any command")
}

/// An empty `resourceNames` means any name, as in RBAC.
fn given_names<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ResourceName>, D::Error> {
    given(d, "resourceNames", "any name").map(Option::unwrap_or_default)
}

impl Rule {
    /// Whether a `create` this rule matches can carry an object name: a create on a
    /// subresource names its object (`POST .../pods/web-0/exec`, `kubectl create token
    /// NAME`, an eviction), a create of an object does not.
    pub fn creates_may_name(&self) -> bool {
        self.resources
            .iter()
            .any(|r| r.0 == "*" || r.0.contains('/'))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Subjects {
    #[serde(default)]
    pub users: Vec<NonEmpty>,
    #[serde(default)]
    pub groups: Vec<NonEmpty>,
    #[serde(default)]
    pub service_accounts: Vec<ServiceAccount>,
}

/// Settings for an `approve` rule, stored on the decision for the approval stage.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Approval {
    #[serde(default = "default_hold")]
    pub hold: Interval,
    #[serde(default = "default_grant")]
    pub grant: Interval,
    #[serde(default = "default_approvers")]
    pub approvers: NonZeroU32,
    #[serde(default)]
    pub skip_groups: Vec<NonEmpty>,
    #[serde(default)]
    pub break_glass_groups: Vec<NonEmpty>,
}

impl Approval {
    /// Whether `who` goes through without review: a member of one of `skipGroups`.
    pub fn skips(&self, who: &crate::identity::Subject) -> bool {
        who.groups
            .iter()
            .any(|g| self.skip_groups.iter().any(|s| &s.0 == g))
    }
}

impl Default for Approval {
    fn default() -> Self {
        Approval {
            hold: default_hold(),
            grant: default_grant(),
            approvers: default_approvers(),
            skip_groups: Vec::new(),
            break_glass_groups: Vec::new(),
        }
    }
}

fn default_hold() -> Interval {
    Interval(DEFAULT_HOLD)
}

fn default_grant() -> Interval {
    Interval(DEFAULT_GRANT)
}

fn default_approvers() -> NonZeroU32 {
    NonZeroU32::MIN
}

/// The verbs a rule may name. HTTP-method verbs only make sense for `nonResourceURLs`, where
/// the API server authorises the lowercase method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
    Proxy,
    Impersonate,
    Bind,
    Escalate,
    Approve,
    Sign,
    Use,
    Post,
    Put,
    Head,
    Options,
    #[serde(rename = "*")]
    All,
}

impl Verb {
    /// Every verb but `*`, in declaration order (bit `i` of a verb set is `ALL[i]`).
    pub const ALL: [Verb; 19] = [
        Verb::Get,
        Verb::List,
        Verb::Watch,
        Verb::Create,
        Verb::Update,
        Verb::Patch,
        Verb::Delete,
        Verb::DeleteCollection,
        Verb::Proxy,
        Verb::Impersonate,
        Verb::Bind,
        Verb::Escalate,
        Verb::Approve,
        Verb::Sign,
        Verb::Use,
        Verb::Post,
        Verb::Put,
        Verb::Head,
        Verb::Options,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
            Verb::Proxy => "proxy",
            Verb::Impersonate => "impersonate",
            Verb::Bind => "bind",
            Verb::Escalate => "escalate",
            Verb::Approve => "approve",
            Verb::Sign => "sign",
            Verb::Use => "use",
            Verb::Post => "post",
            Verb::Put => "put",
            Verb::Head => "head",
            Verb::Options => "options",
            Verb::All => "*",
        }
    }

    /// The verb named by a request's verb string, if it is one a rule can name.
    pub fn parse(s: &str) -> Option<Verb> {
        Verb::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// HTTP methods that the API server uses as verbs of non-resource requests only.
    pub fn is_http_only(self) -> bool {
        matches!(self, Verb::Post | Verb::Put | Verb::Head | Verb::Options)
    }
}

/// One argv pattern for `pods/exec`: `*` is any one argument, `**` (last only) any rest, an
/// argument containing `*` a glob whose `*` does not cross `/`, anything else a literal.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct CommandPattern(pub Vec<String>);

impl TryFrom<Vec<String>> for CommandPattern {
    type Error = String;
    fn try_from(v: Vec<String>) -> Result<Self, String> {
        if v.is_empty() {
            return Err("command pattern must not be empty".into());
        }
        for (i, arg) in v.iter().enumerate() {
            if arg.contains("**") && (arg != "**" || i + 1 != v.len()) {
                return Err(format!(
                    "command pattern {v:?}: `**` must be a whole argument, and the last one"
                ));
            }
        }
        Ok(CommandPattern(v))
    }
}

/// One masking entry (parsed and validated only; the masking stage applies it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Masking {
    /// `resource[.group][/subresource]` (kubectl style), or `*`.
    pub resources: Vec<MaskResource>,
    #[serde(default)]
    pub namespaces: Vec<NamespacePattern>,
    #[serde(default)]
    pub names: Vec<ResourceName>,
    #[serde(default)]
    pub fields: Vec<FieldPath>,
    #[serde(default)]
    pub key_regex: Option<NonEmpty>,
    #[serde(default)]
    pub name_regex: Option<NonEmpty>,
    #[serde(default)]
    pub detectors: Vec<Detector>,
    #[serde(default)]
    pub patterns: Vec<NonEmpty>,
}

/// The built-in value detectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Detector {
    PemPrivateKey,
    Jwt,
    AwsAccessKey,
    GithubToken,
    SlackToken,
    PasswordPair,
    BearerToken,
}

/// One embedded test case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TestCase {
    pub name: NonEmpty,
    pub subject: TestSubject,
    pub request: TestRequest,
    pub expect: Action,
    /// The rule (or `builtin:...` name) expected to decide.
    #[serde(default)]
    pub rule: Option<NonEmpty>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TestSubject {
    #[serde(default)]
    pub user: Option<NonEmpty>,
    #[serde(default)]
    pub groups: Vec<NonEmpty>,
    #[serde(default)]
    pub service_account: Option<ServiceAccount>,
}

/// A test request: `"GET /api/v1/namespaces/default/pods"` or the attributes.
#[derive(Debug, Clone)]
pub enum TestRequest {
    Line(RequestLine),
    Attributes(RequestAttributes),
}

impl<'de> Deserialize<'de> for TestRequest {
    // Hand-written rather than `#[serde(untagged)]`, which would replace a precise error
    // ("unknown field `verbz`") with "data did not match any variant".
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = TestRequest;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"METHOD /path\" or a map of request attributes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TestRequest, E> {
                RequestLine::try_from(v.to_owned())
                    .map(TestRequest::Line)
                    .map_err(E::custom)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<TestRequest, A::Error> {
                RequestAttributes::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(TestRequest::Attributes)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `METHOD /path?query`, resolved as the proxy resolves requests.
#[derive(Debug, Clone)]
pub struct RequestLine {
    pub info: crate::request_info::RequestInfo,
    pub query: Option<String>,
}

impl TryFrom<String> for RequestLine {
    type Error = String;
    fn try_from(v: String) -> Result<Self, String> {
        let (method, target) = v
            .trim()
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("request {v:?} is not \"METHOD /path\""))?;
        let method = http::Method::from_bytes(method.as_bytes())
            .map_err(|_| format!("request {v:?}: {method:?} is not an HTTP method"))?;
        let uri: http::Uri = target
            .trim()
            .parse()
            .map_err(|e| format!("request {v:?}: invalid path: {e}"))?;
        let info = crate::request_info::resolve(&method, &uri)
            .map_err(|e| format!("request {v:?}: {e}"))?;
        Ok(RequestLine {
            info,
            query: uri.query().map(str::to_owned),
        })
    }
}

/// A resource request given by its attributes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestAttributes {
    pub verb: Verb,
    #[serde(default)]
    pub api_group: String,
    /// `pods`, or `pods/exec` as a shorthand for `subresource`.
    pub resource: NonEmpty,
    #[serde(default)]
    pub subresource: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
    /// The exec command, sent as `command=` query parameters.
    #[serde(default)]
    pub command: Vec<String>,
}
