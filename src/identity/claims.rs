//! From verified claims to a [`Subject`], as the API server would map the same token:
//! `--oidc-*`-style mappings for OIDC issuers, and the service-account rules for the
//! cluster's own issuer.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::config::{self, NO_PREFIX};
use super::{Error, Subject};

/// Every authenticated subject is in this group, as on the API server.
pub const AUTHENTICATED: &str = "system:authenticated";
/// All service accounts, and `…:<namespace>` those of one namespace.
pub const SERVICE_ACCOUNTS: &str = "system:serviceaccounts";
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";
pub const EXTRA_NODE_UID: &str = "authentication.kubernetes.io/node-uid";
pub const EXTRA_CREDENTIAL_ID: &str = "authentication.kubernetes.io/credential-id";

/// A claim name or nested path: `groups`, `realm_access.roles`, `/realm_access/roles`
/// (JSON pointer), or a name that itself holds dots such as
/// `https://example.com/groups`.
#[derive(Debug, Clone)]
pub(crate) struct ClaimPath {
    pub name: String,
}

impl ClaimPath {
    pub fn new(name: &str) -> ClaimPath {
        ClaimPath { name: name.into() }
    }

    /// Whether this path reads the top-level claim `claim` (`email` or `/email`).
    pub fn is_top_level(&self, claim: &str) -> bool {
        self.name == claim || self.name.strip_prefix('/') == Some(claim)
    }

    /// The claim's value. A name that exists as a top-level claim wins over a nested
    /// reading; otherwise the dotted path is walked, at each level preferring the
    /// longest key that exists (so `kubernetes.io.namespace` finds `kubernetes.io`).
    pub fn lookup<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        if let Some(pointer) = self.name.strip_prefix('/') {
            // RFC 6901: every segment unescaped, the first (a top-level claim) too.
            let mut segments = pointer
                .split('/')
                .map(|s| s.replace("~1", "/").replace("~0", "~"));
            let mut value = claims.get(&segments.next()?)?;
            for segment in segments {
                value = value.as_object()?.get(&segment)?;
            }
            return Some(value);
        }
        if let Some(v) = claims.get(&self.name) {
            return Some(v);
        }
        let segments: Vec<&str> = self.name.split('.').collect();
        walk(claims, &segments)
    }
}

fn walk<'a>(object: &'a Map<String, Value>, segments: &[&str]) -> Option<&'a Value> {
    for take in (1..=segments.len()).rev() {
        let key = segments[..take].join(".");
        if let Some(value) = object.get(&key) {
            if take == segments.len() {
                return Some(value);
            }
            if let Some(found) = value.as_object().and_then(|o| walk(o, &segments[take..])) {
                return Some(found);
            }
        }
    }
    None
}

/// How one issuer's claims become a subject.
pub(crate) enum Mapping {
    Oidc(Oidc),
    /// `own_pod`: the only pod uid a token may be bound to (`ownPodOnly`).
    ServiceAccount {
        own_pod: Option<String>,
    },
}

pub(crate) struct Oidc {
    username: ClaimPath,
    username_prefix: String,
    groups: Option<ClaimPath>,
    groups_prefix: String,
    uid: Option<ClaimPath>,
    extra: Vec<(String, ClaimPath)>,
}

impl Mapping {
    pub fn from_config(issuer: &config::Issuer) -> Mapping {
        if issuer.cluster {
            return Mapping::ServiceAccount {
                own_pod: issuer.own_pod_uid.clone(),
            };
        }
        let username = issuer
            .username_claim
            .as_deref()
            .unwrap_or(config::DEFAULT_USERNAME_CLAIM);
        // The API server's default: email needs no prefix (it is globally unique);
        // any other claim is prefixed with the issuer so two IdPs cannot collide.
        let username_prefix = match issuer.username_prefix.as_deref() {
            Some(NO_PREFIX) => String::new(),
            Some(p) => p.to_owned(),
            None if ClaimPath::new(username).is_top_level("email") => String::new(),
            None => format!("{}#", issuer.issuer),
        };
        let groups_prefix = match issuer.groups_prefix.as_deref() {
            Some(NO_PREFIX) | None => String::new(),
            Some(p) => p.to_owned(),
        };
        Mapping::Oidc(Oidc {
            username: ClaimPath::new(username),
            username_prefix,
            groups: issuer.groups_claim.as_deref().map(ClaimPath::new),
            groups_prefix,
            uid: issuer.uid_claim.as_deref().map(ClaimPath::new),
            extra: issuer
                .extra
                .iter()
                .map(|(k, v)| (k.clone(), ClaimPath::new(v)))
                .collect(),
        })
    }

    pub fn subject(&self, claims: &Map<String, Value>, issuer: &str) -> Result<Subject, Error> {
        match self {
            Mapping::Oidc(m) => m.subject(claims, issuer),
            Mapping::ServiceAccount { own_pod } => {
                service_account(claims, issuer, own_pod.as_deref())
            }
        }
    }
}

impl Oidc {
    fn subject(&self, claims: &Map<String, Value>, issuer: &str) -> Result<Subject, Error> {
        let name = required_string(claims, &self.username)?;
        if self.username.is_top_level("email") {
            // As the API server: an email the IdP says is unverified names nobody.
            if let Some(verified) = claims.get("email_verified") {
                if verified != &Value::Bool(true) {
                    return Err(invalid(
                        "email_verified",
                        "must be true when email is the username",
                    ));
                }
            }
        }
        let user = format!("{}{name}", self.username_prefix);
        if user.starts_with("system:") {
            // Only Kubernetes itself names system: users; an IdP that can choose its
            // users' names must not be able to claim one.
            return Err(invalid(
                &self.username.name,
                "maps to a reserved system: username",
            ));
        }
        if let Some(path) = &self.groups {
            refuse_distributed(claims, path)?;
        }
        let mut groups = match &self.groups {
            None => Vec::new(),
            Some(path) => strings(claims, path)?
                .into_iter()
                .map(|g| format!("{}{g}", self.groups_prefix))
                .collect(),
        };
        if groups.iter().any(|g| g.starts_with("system:")) {
            let claim = self.groups.as_ref().map_or("groups", |p| p.name.as_str());
            return Err(invalid(claim, "maps to a reserved system: group"));
        }
        groups.push(AUTHENTICATED.to_owned());
        let uid = match &self.uid {
            None => String::new(),
            Some(path) => required_string(claims, path)?.to_owned(),
        };
        let mut extra = BTreeMap::new();
        for (key, path) in &self.extra {
            let values = strings(claims, path)?;
            if !values.is_empty() {
                extra.insert(key.clone(), values);
            }
        }
        Ok(Subject {
            user,
            groups,
            uid,
            extra,
            issuer: issuer.to_owned(),
            audit_user: Default::default(),
        })
    }
}

/// A projected service-account token, mapped as the API server's service-account
/// authenticator does; with `own_pod`, only one bound to that pod uid.
fn service_account(
    claims: &Map<String, Value>,
    issuer: &str,
    own_pod: Option<&str>,
) -> Result<Subject, Error> {
    let k8s = match claims.get("kubernetes.io") {
        Some(Value::Object(o)) => o,
        Some(_) => return Err(invalid("kubernetes.io", "must be an object")),
        None => {
            return Err(invalid(
                "kubernetes.io",
                "is required for service-account tokens",
            ))
        }
    };
    let text = |path: &str| -> Result<Option<&str>, Error> {
        match ClaimPath::new(path).lookup(k8s) {
            None => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s)),
            Some(_) => Err(invalid(
                &format!("kubernetes.io.{path}"),
                "must be a non-empty string",
            )),
        }
    };
    let need = |path: &str| -> Result<&str, Error> {
        text(path)?.ok_or_else(|| invalid(&format!("kubernetes.io.{path}"), "is required"))
    };
    let namespace = need("namespace")?;
    let name = need("serviceaccount.name")?;
    let uid = need("serviceaccount.uid")?;
    let user = format!("system:serviceaccount:{namespace}:{name}");
    match claims.get("sub") {
        Some(Value::String(sub)) if *sub == user => {}
        _ => {
            return Err(invalid(
                "sub",
                "must name the service account in kubernetes.io",
            ))
        }
    }
    if let Some(own) = own_pod {
        if text("pod.uid")? != Some(own) {
            return Err(invalid(
                "kubernetes.io.pod.uid",
                "must be this pod's (ownPodOnly): the token was bound to another pod, or to none",
            ));
        }
    }
    let mut extra = BTreeMap::new();
    for (path, key) in [
        ("pod.name", EXTRA_POD_NAME),
        ("pod.uid", EXTRA_POD_UID),
        ("node.name", EXTRA_NODE_NAME),
        ("node.uid", EXTRA_NODE_UID),
    ] {
        if let Some(value) = text(path)? {
            extra.insert(key.to_owned(), vec![value.to_owned()]);
        }
    }
    if let Some(Value::String(jti)) = claims.get("jti") {
        extra.insert(EXTRA_CREDENTIAL_ID.to_owned(), vec![format!("JTI={jti}")]);
    }
    Ok(Subject {
        user,
        groups: vec![
            SERVICE_ACCOUNTS.to_owned(),
            format!("{SERVICE_ACCOUNTS}:{namespace}"),
            AUTHENTICATED.to_owned(),
        ],
        uid: uid.to_owned(),
        extra,
        issuer: issuer.to_owned(),
        audit_user: Default::default(),
    })
}

fn invalid(claim: &str, reason: &str) -> Error {
    Error::InvalidClaim {
        claim: claim.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Refuses a token whose groups are a distributed claim: absent from the token and named
/// in `_claim_names`, for the holder of the token to fetch from an endpoint of the IdP
/// (Azure AD does so for a user in more than 200 groups). The API server fetches them,
/// and fails the token when it cannot; chaperone does not fetch claims, and reading
/// such a token as having no groups would let its user past every rule that denies or
/// holds a group. As the API server, `_claim_names` is read only when the claim is
/// absent, and must then be an object of strings.
fn refuse_distributed(claims: &Map<String, Value>, path: &ClaimPath) -> Result<(), Error> {
    if path.lookup(claims).is_some() {
        return Ok(());
    }
    let Some(names) = claims.get("_claim_names") else {
        return Ok(());
    };
    let Some(names) = names
        .as_object()
        .filter(|n| n.values().all(Value::is_string))
    else {
        return Err(invalid(
            "_claim_names",
            "must be an object naming each distributed claim's source",
        ));
    };
    match names.contains_key(&path.name) {
        true => Err(invalid(
            &path.name,
            "is a distributed claim (named in _claim_names, to be fetched from the identity \
             provider), which chaperone does not fetch: have the identity provider put the \
             groups in the token",
        )),
        false => Ok(()),
    }
}

fn required_string<'a>(claims: &'a Map<String, Value>, path: &ClaimPath) -> Result<&'a str, Error> {
    match path.lookup(claims) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(_) => Err(invalid(&path.name, "must be a non-empty string")),
        None => Err(invalid(&path.name, "is required")),
    }
}

/// A string or an array of strings; absent means none.
fn strings(claims: &Map<String, Value>, path: &ClaimPath) -> Result<Vec<String>, Error> {
    match path.lookup(claims) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(invalid(
                    &path.name,
                    "must be a string or an array of strings",
                )),
            })
            .collect(),
        Some(_) => Err(invalid(
            &path.name,
            "must be a string or an array of strings",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn looks_up_nested_and_dotted_claim_names() {
        let c = claims(json!({
            "realm_access": {"roles": ["a"]},
            "https://example.com/groups": ["b"],
            "kubernetes.io": {"namespace": "ns", "a.b": {"c": 1}},
        }));
        let get = |p: &str| ClaimPath::new(p).lookup(&c).cloned();
        assert_eq!(get("realm_access.roles"), Some(json!(["a"])));
        assert_eq!(get("/realm_access/roles"), Some(json!(["a"])));
        assert_eq!(get("https://example.com/groups"), Some(json!(["b"])));
        assert_eq!(get("kubernetes.io.namespace"), Some(json!("ns")));
        assert_eq!(get("kubernetes.io.a.b.c"), Some(json!(1)));
        assert_eq!(get("realm_access.missing"), None);
        // A JSON pointer's first segment is unescaped like the others.
        assert_eq!(get("/https:~1~1example.com~1groups"), Some(json!(["b"])));
        assert_eq!(get("/kubernetes.io/a.b/c"), Some(json!(1)));
    }

    /// An email the IdP says is unverified names nobody, and an email needs no issuer
    /// prefix, however the claim is written (`email` or `/email`).
    #[test]
    fn an_unverified_email_names_nobody_however_the_claim_is_written() {
        for claim in ["email", "/email"] {
            let issuer: config::Issuer = serde_yaml::from_str(&format!(
                "issuer: https://i\naudiences: [a]\ndiscovery: true\nusernameClaim: {claim}\n"
            ))
            .unwrap();
            let mapping = Mapping::from_config(&issuer);
            let err = mapping
                .subject(
                    &claims(json!({"sub": "1", "email": "victim@corp", "email_verified": false})),
                    "https://i",
                )
                .unwrap_err();
            assert_eq!(
                err.to_string(),
                "token claim email_verified must be true when email is the username",
                "{claim}"
            );
            let who = mapping
                .subject(
                    &claims(json!({"sub": "1", "email": "me@corp", "email_verified": true})),
                    "https://i",
                )
                .unwrap();
            assert_eq!(who.user, "me@corp", "{claim}");
        }
    }

    #[test]
    fn refuses_system_usernames_from_an_idp() {
        let issuer: config::Issuer = serde_yaml::from_str(
            "issuer: https://i\naudiences: [a]\ndiscovery: true\nusernamePrefix: '-'\n",
        )
        .unwrap();
        let err = Mapping::from_config(&issuer)
            .subject(&claims(json!({"sub": "system:admin"})), "https://i")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "token claim sub maps to a reserved system: username"
        );
    }
}
