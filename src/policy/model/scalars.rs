//! The scalar values of a policy: strings (and a duration) checked as they are read.
//!
//! Each type is read through its `TryFrom<String>` by `CheckedString`, so that a refusal is
//! reported by serde_yaml at the value itself, with its path, line and column.

use std::time::Duration;

use serde::Deserialize;

use super::{API_VERSION, CLUSTER};
/// Deserializes the string newtypes below through their `TryFrom<String>` while the scalar is
/// being read, so that serde_yaml reports a refusal at the scalar itself (with its index in a
/// list), which `#[serde(try_from)]` does not: it reports the enclosing collection.
macro_rules! checked_string {
    ($($ty:ty),*) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str(CheckedString(std::marker::PhantomData))
            }
        }
    )*};
}

checked_string!(
    ApiVersion,
    NonEmpty,
    ApiGroup,
    ResourcePattern,
    ResourceName,
    UrlPattern,
    NamespacePattern,
    ServiceAccount,
    Interval,
    MaskResource,
    FieldPath
);

struct CheckedString<T>(std::marker::PhantomData<T>);

impl<T> serde::de::Visitor<'_> for CheckedString<T>
where
    T: TryFrom<String>,
    T::Error: std::fmt::Display,
{
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        T::try_from(v.to_owned()).map_err(E::custom)
    }
}

/// `chaperone.dev/v1alpha1`, checked.
#[derive(Debug, Clone)]
pub struct ApiVersion;

impl TryFrom<String> for ApiVersion {
    type Error = String;
    fn try_from(v: String) -> Result<Self, String> {
        if v == API_VERSION {
            Ok(ApiVersion)
        } else {
            Err(format!(
                "unsupported apiVersion {v:?}, expected {API_VERSION:?}"
            ))
        }
    }
}

/// A string that must not be empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NonEmpty(pub String);

impl TryFrom<String> for NonEmpty {
    type Error = &'static str;
    fn try_from(v: String) -> Result<Self, &'static str> {
        if v.is_empty() {
            Err("must not be empty")
        } else {
            Ok(NonEmpty(v))
        }
    }
}

/// An API group: `""` (core), `"*"`, or a group name such as `apps`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ApiGroup(pub String);

impl TryFrom<String> for ApiGroup {
    type Error = String;
    fn try_from(v: String) -> Result<Self, String> {
        match v.as_str() {
            "" | "*" => Ok(ApiGroup(v)),
            "core" | "v1" => Err(format!(
                "apiGroup {v:?} does not exist: the core group is \"\""
            )),
            _ if v.contains('/') => Err(format!(
                "apiGroup {v:?} has a version: name the group only (e.g. \"apps\", not \"apps/v1\")"
            )),
            _ if is_dns_subdomain(&v) => Ok(ApiGroup(v)),
            _ => Err(format!(
                "apiGroup {v:?} is not a group name (lowercase letters, digits, '-' and '.')"
            )),
        }
    }
}

/// A resource as RBAC matches it: `*`, `pods`, `pods/log` or `*/scale`. RBAC has no
/// `pods/*`: it would be a literal that never matches, so it is refused here.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourcePattern(pub String);

impl TryFrom<String> for ResourcePattern {
    type Error = String;
    fn try_from(v: String) -> Result<Self, String> {
        if v == "*" {
            return Ok(ResourcePattern(v));
        }
        let (resource, sub) = match v.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (v.as_str(), None),
        };
        if sub == Some("*") {
            return Err(format!(
                "resource {v:?} is not supported: RBAC matches `*`, `{resource}`, `{resource}/<subresource>` and `*/<subresource>` only, so list the subresources"
            ));
        }
        if resource != "*" {
            check_resource_name(&v, resource)?;
        }
        if let Some(sub) = sub {
            check_resource_name(&v, sub)?;
        }
        Ok(ResourcePattern(v))
    }
}

fn check_resource_name(whole: &str, part: &str) -> Result<(), String> {
    if part.is_empty() || part.contains('/') {
        return Err(format!(
            "resource {whole:?} is not `resource` or `resource/subresource`"
        ));
    }
    if part.contains('.') {
        return Err(format!(
            "resource {whole:?} contains '.': give the API group in apiGroups, not in resources"
        ));
    }
    if !part
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "resource {whole:?} is not a lowercase plural resource name (e.g. `pods`, not `Pod`)"
        ));
    }
    Ok(())
}

/// An object name in `resourceNames`: exact, as in RBAC (which has no globs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceName(pub String);

impl TryFrom<String> for ResourceName {
    type Error = String;
    fn try_from(v: String) -> Result<Self, String> {
        if v.is_empty() {
            Err("resource name must not be empty".into())
        } else if v.contains('*') {
            Err(format!(
                "resource name {v:?} contains '*': resourceNames are exact names (RBAC has no globs)"
            ))
        } else if v.contains('/') {
            Err(format!("resource name {v:?} contains '/'"))
        } else {
            Ok(ResourceName(v))
        }
    }
}

/// A non-resource URL: exact (`/healthz`), or a prefix ending in `*` (`/logs/*`), or `*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UrlPattern(pub String);

impl TryFrom<String> for UrlPattern {
    type Error = String;
    fn try_from(v: String) -> Result<Self, String> {
        if v != "*" && !v.starts_with('/') {
            Err(format!(
                "nonResourceURL {v:?} must start with '/' (or be \"*\")"
            ))
        } else if v.trim_end_matches('*').contains('*') {
            Err(format!(
                "nonResourceURL {v:?} has a '*' before the end: only a trailing '*' is a wildcard"
            ))
        } else {
            Ok(UrlPattern(v))
        }
    }
}

/// A namespace: exact (`default`), a glob (`team-*`), `*` (any), or `<cluster>` (requests
/// not confined to one namespace: cluster-scoped objects, lists across all namespaces).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamespacePattern(pub String);

impl TryFrom<String> for NamespacePattern {
    type Error = String;
    fn try_from(v: String) -> Result<Self, String> {
        if v.is_empty() {
            return Err(format!(
                "namespace \"\" is ambiguous: omit `namespaces` (or use \"*\") for any namespace, or use {CLUSTER:?} for cluster-wide requests"
            ));
        }
        let valid = v == CLUSTER
            || (v.len() <= 63
                && v.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'*'
                }));
        if valid {
            Ok(NamespacePattern(v))
        } else {
            Err(format!(
                "namespace {v:?} is not a namespace name or glob (lowercase letters, digits, '-', '*')"
            ))
        }
    }
}

/// A service account `namespace/name`, i.e. user `system:serviceaccount:namespace:name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

impl ServiceAccount {
    /// The user name the API server gives this service account.
    pub fn user(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

impl TryFrom<String> for ServiceAccount {
    type Error = String;
    fn try_from(v: String) -> Result<Self, String> {
        match v.split_once('/') {
            Some((ns, name))
                if !ns.is_empty() && !name.is_empty() && !name.contains('/') && !v.contains('*') =>
            {
                Ok(ServiceAccount {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => Err(format!(
                "service account {v:?} is not `namespace/name` (no wildcards; for all service accounts of a namespace use group `system:serviceaccounts:<namespace>`)"
            )),
        }
    }
}

/// A Go-style duration: one or more `<integer><unit>` with units `ms`, `s`, `m`, `h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval(pub Duration);

impl TryFrom<String> for Interval {
    type Error = String;
    fn try_from(v: String) -> Result<Self, String> {
        parse_duration(&v)
            .filter(|d| !d.is_zero())
            .map(Interval)
            .ok_or_else(|| {
                format!("duration {v:?} is not a positive duration like 90s, 15m or 1h30m")
            })
    }
}

fn parse_duration(s: &str) -> Option<Duration> {
    let mut rest = s;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total = total.checked_add(unit.checked_mul(u32::try_from(n).ok()?)?)?;
    }
    Some(total)
}

/// A masked resource, `resource[.group][/subresource]` (kubectl style: `secrets`,
/// `deployments.apps`, `pods/log`) or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskResource(pub String);

impl TryFrom<String> for MaskResource {
    type Error = String;
    fn try_from(v: String) -> Result<Self, String> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        let (resource, sub) = match v.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (v.as_str(), None),
        };
        let (resource, group) = resource.split_once('.').unwrap_or((resource, ""));
        let resource_ok = (resource == "*" && sub.is_none()) || name_ok(resource);
        if resource_ok && sub.is_none_or(name_ok) && (group.is_empty() || is_dns_subdomain(group)) {
            Ok(MaskResource(v))
        } else {
            Err(format!(
                "masking resource {v:?} is not `resource[.group][/subresource]` (e.g. `secrets`, `deployments.apps`, `pods/log`)"
            ))
        }
    }
}

/// A field path: `.`-separated keys, each optionally followed by `[*]` or `[N]`; `*` is any key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(pub String);

impl TryFrom<String> for FieldPath {
    type Error = String;
    fn try_from(v: String) -> Result<Self, String> {
        let segment_ok = |seg: &str| {
            let key = match seg.find('[') {
                Some(i) => {
                    let index = &seg[i..];
                    let inner = index.strip_prefix('[').and_then(|s| s.strip_suffix(']'));
                    let inner_ok = inner.is_some_and(|s| {
                        s == "*" || (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    });
                    if !inner_ok {
                        return false;
                    }
                    &seg[..i]
                }
                None => seg,
            };
            key == "*"
                || (!key.is_empty()
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-')))
        };
        if v.split('.').all(segment_ok) {
            Ok(FieldPath(v))
        } else {
            Err(format!(
                "field path {v:?} is not like `data.*` or `spec.containers[*].env[*].value`"
            ))
        }
    }
}

/// RFC 1123 subdomain, as API group names are.
fn is_dns_subdomain(v: &str) -> bool {
    let label = |l: &str| {
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        l.bytes().next().is_some_and(alnum)
            && l.bytes().last().is_some_and(alnum)
            && l.bytes().all(|b| alnum(b) || b == b'-')
    };
    !v.is_empty() && v.len() <= 253 && v.split('.').all(label)
}
