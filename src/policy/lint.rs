//! Warnings about a valid policy that probably does not do what its author meant: rules that
//! can never match or never take effect, rules shadowed by stricter ones, and broad grants.

use std::fmt;

use super::compile::{Policy, Rule};
use super::matching::{glob, url_matches, VerbSet};
use super::model::{Verb, CLUSTER};
use super::{Action, Mode};

/// One lint finding about one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub origin: String,
    pub line: usize,
    pub rule: String,
    /// `never-matches`, `no-effect`, `shadowed`, `broad-grant`, `weak-deny`.
    pub code: &'static str,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: warning[{}]: rule {:?}: {}",
            self.origin, self.line, self.code, self.rule, self.message
        )
    }
}

/// Well-known cluster-scoped resources: a rule confined to namespaces never matches them.
/// (`namespaces` is not here: a request for namespace `x` carries namespace `x`.)
const CLUSTER_SCOPED: [&str; 18] = [
    "nodes",
    "mutatingadmissionpolicies",
    "mutatingadmissionpolicybindings",
    "persistentvolumes",
    "clusterroles",
    "clusterrolebindings",
    "storageclasses",
    "customresourcedefinitions",
    "priorityclasses",
    "csidrivers",
    "csinodes",
    "validatingwebhookconfigurations",
    "mutatingwebhookconfigurations",
    "apiservices",
    "certificatesigningrequests",
    "runtimeclasses",
    "ingressclasses",
    "volumeattachments",
];
const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
const RBAC_RESOURCES: [&str; 4] = [
    "roles",
    "rolebindings",
    "clusterroles",
    "clusterrolebindings",
];
/// Kinds whose writes chaperone does not read and which shape what the injector sees
/// (or whether it is called at all): granted, they let a caller run pods outside it.
/// Of namespaces, only a create (an update or patch is always refused).
const INJECTION_SHAPERS: [(&str, &str); 7] = [
    // Which server serves `apps`: the templates its controllers make pods from.
    ("apiregistration.k8s.io", "apiservices"),
    (
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
    ),
    ("admissionregistration.k8s.io", "mutatingadmissionpolicies"),
    (
        "admissionregistration.k8s.io",
        "mutatingadmissionpolicybindings",
    ),
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("apps", "controllerrevisions"),
    ("", "namespaces"),
];

const WRITE_VERBS: [Verb; 7] = [
    Verb::Create,
    Verb::Update,
    Verb::Patch,
    Verb::Delete,
    Verb::DeleteCollection,
    Verb::Bind,
    Verb::Escalate,
];
const HTTP_VERBS: [Verb; 7] = [
    Verb::Get,
    Verb::Post,
    Verb::Put,
    Verb::Patch,
    Verb::Delete,
    Verb::Head,
    Verb::Options,
];

pub(crate) fn lint(policy: &Policy) -> Vec<Warning> {
    let mut out = Vec::new();
    for rule in &policy.rules {
        let mut warn = |code, message: String| {
            out.push(Warning {
                origin: policy.origin.to_string(),
                line: rule.line,
                rule: rule.meta.name.clone(),
                code,
                message,
            })
        };
        if let Some(why) = never_matches(rule) {
            warn("never-matches", why);
        } else if rule.meta.action == Action::Allow
            && rule.meta.mode == Mode::Audit
            && policy.mode == Mode::Enforce
        {
            warn(
                "no-effect",
                "an audit-mode allow in an enforce-mode policy changes nothing and is never reported".into(),
            );
        } else if let Some(by) = policy.rules.iter().find(|d| shadows(d, rule)) {
            warn(
                "shadowed",
                format!(
                    "never takes effect: {} rule {:?} (line {}) matches every request it matches",
                    by.meta.action, by.meta.name, by.line
                ),
            );
        }
        let unasked: Vec<&str> = NEVER_ASKED
            .iter()
            .filter(|&&v| !rule.verbs.is_all() && rule.verbs.contains(v))
            .map(|v| v.as_str())
            .collect();
        if !unasked.is_empty() && never_matches(rule).is_none() {
            warn(
                "never-matches",
                format!(
                    "verbs {} never match: {NEVER_ASKED_WHY}",
                    unasked.join(", ")
                ),
            );
        }
        for why in broad(rule) {
            warn("broad-grant", why);
        }
        if rule.meta.action != Action::Allow
            && !rule.names.is_empty()
            && rule.verbs.contains(Verb::Get)
            && !(rule.verbs.contains(Verb::List) && rule.verbs.contains(Verb::Watch))
        {
            warn(
                "weak-deny",
                format!(
                    "it names objects for `get` only: a `list` or `watch` of their collection returns them too; add list and watch to its verbs (a {} naming objects takes their whole collection)",
                    rule.meta.action
                ),
            );
        }
        if rule.meta.action == Action::Deny && !rule.commands.is_empty() {
            warn(
                "weak-deny",
                "denying listed commands is easy to evade (/bin/sh, busybox sh, env sh, ...): allow the commands that are safe instead".into(),
            );
        }
        // A create on a subresource names its object; of an object, it does not.
        // A deny or approve naming objects takes a deletecollection of their collection.
        let allow = rule.meta.action == Action::Allow;
        let nameless: &[Verb] = match (rule.source.creates_may_name(), allow) {
            (true, true) => &[Verb::DeleteCollection],
            (true, false) => &[],
            (false, true) => &[Verb::Create, Verb::DeleteCollection],
            (false, false) => &[Verb::Create],
        };
        if !rule.names.is_empty() && !rule.verbs.is_all() {
            for &verb in nameless.iter().filter(|&&v| rule.verbs.contains(v)) {
                warn(
                    "never-matches",
                    format!(
                        "{} requests carry no object name, so resourceNames never match them",
                        verb.as_str()
                    ),
                );
            }
        }
    }
    out
}

/// Verbs the API server checks against chaperone's own credential while serving another
/// request (RBAC's escalation checks on a Role or RoleBinding write, a CSR's approval or
/// signing, a PodSecurityPolicy's use): no request through chaperone has them.
const NEVER_ASKED: [Verb; 5] = [
    Verb::Bind,
    Verb::Escalate,
    Verb::Approve,
    Verb::Sign,
    Verb::Use,
];

const NEVER_ASKED_WHY: &str = "the API server checks them against chaperone's own credential while serving another request; no request through chaperone has them (binding a role is `create rolebindings`)";

fn never_matches(rule: &Rule) -> Option<String> {
    let src = &rule.source;
    let verbs = rule.verbs;
    if verbs == VerbSet::of(&[Verb::Impersonate]) {
        return Some("`impersonate` is always denied (builtin:impersonate)".into());
    }
    let unasked = VerbSet(VerbSet::of(&NEVER_ASKED).0 | VerbSet::of(&[Verb::Impersonate]).0);
    if !verbs.is_all() && unasked.covers(verbs) {
        return Some(format!("its verbs never match: {NEVER_ASKED_WHY}"));
    }
    if !src.non_resource_urls.is_empty() {
        if verbs.0 & VerbSet::of(&HTTP_VERBS).0 == 0 {
            return Some(
                "non-resource requests have HTTP-method verbs (get, post, put, patch, delete, head, options)".into(),
            );
        }
        return None;
    }
    let ours = |g: &str| g == "chaperone.dev" || g.ends_with(".chaperone.dev");
    if src.api_groups.iter().all(|g| ours(&g.0)) {
        return Some(
            "chaperone.dev resources are always denied (builtin:chaperone-resources)".into(),
        );
    }
    let ns = &rule.namespaces;
    let cluster_only = src.resources.iter().all(|r| {
        let base = r.0.split('/').next().unwrap_or("");
        CLUSTER_SCOPED.contains(&base)
    });
    if cluster_only && !ns.any && !ns.cluster {
        return Some(format!(
            "its resources are cluster-scoped, but its namespaces do not include {CLUSTER:?}"
        ));
    }
    None
}

/// Whether `d` matches every request `r` matches, with a stricter action that takes effect.
fn shadows(d: &Rule, r: &Rule) -> bool {
    if std::ptr::eq(d, r) || d.meta.action <= r.meta.action {
        return false;
    }
    if d.meta.mode == Mode::Audit && r.meta.mode == Mode::Enforce {
        return false;
    }
    let (ds, rs) = (&d.source, &r.source);
    let star = |s: &super::model::Subjects| s.users.iter().chain(&s.groups).any(|n| n.0 == "*");
    let subjects = star(&ds.subjects)
        || (!star(&rs.subjects)
            && rs
                .subjects
                .users
                .iter()
                .all(|u| ds.subjects.users.contains(u))
            && rs
                .subjects
                .groups
                .iter()
                .all(|g| ds.subjects.groups.contains(g))
            && rs
                .subjects
                .service_accounts
                .iter()
                .all(|s| ds.subjects.service_accounts.contains(s)));
    if !subjects || !d.verbs.covers(r.verbs) || !d.commands.is_empty() {
        return false;
    }
    if !rs.non_resource_urls.is_empty() {
        return r.urls.iter().all(|u| {
            d.urls.iter().any(|du| {
                // A prefix pattern `p*` is covered if `du` matches every path starting with p.
                url_matches(du, u)
                    && (!u.ends_with('*')
                        || du.ends_with('*') && u.starts_with(du.trim_end_matches('*')))
                    || **du == **u
            })
        });
    }
    if !ds.non_resource_urls.is_empty() {
        return false;
    }
    let groups = rs
        .api_groups
        .iter()
        .all(|g| ds.api_groups.iter().any(|dg| dg.0 == "*" || dg.0 == g.0));
    let resources = rs.resources.iter().all(|res| {
        ds.resources.iter().any(|dr| {
            dr.0 == "*"
                || dr.0 == res.0
                || (dr.0.starts_with("*/")
                    && res.0.split_once('/').map(|(_, s)| s)
                        == dr.0.split_once('/').map(|(_, s)| s))
        })
    });
    let names =
        d.names.is_empty() || (!r.names.is_empty() && r.names.iter().all(|n| d.names.contains(n)));
    let (dn, rn) = (&d.namespaces, &r.namespaces);
    let namespaces = dn.any
        || (!rn.any
            && (!rn.cluster || dn.cluster)
            && rn.exact.iter().all(|e| {
                dn.exact.contains(e)
                    || dn
                        .globs
                        .iter()
                        .any(|g| glob(g.as_bytes(), e.as_bytes(), false))
            })
            && rn.globs.iter().all(|g| dn.globs.contains(g)));
    groups && resources && names && namespaces
}

/// Allow rules that grant more than their author may think.
fn broad(rule: &Rule) -> Vec<String> {
    let mut out = Vec::new();
    let src = &rule.source;
    if rule.meta.action != Action::Allow || src.resources.is_empty() {
        return out;
    }
    let group = |g: &str| src.api_groups.iter().any(|x| x.0 == "*" || x.0 == g);
    let resource = |r: &str| {
        src.resources.iter().any(|x| {
            x.0 == "*"
                || x.0 == r
                || (x.0.starts_with("*/")
                    && r.split_once('/').map(|(_, s)| s) == x.0.split_once('/').map(|(_, s)| s))
        })
    };
    let wild = src.resources.iter().any(|x| x.0 == "*") || rule.verbs.is_all();
    let reads = rule.verbs.0 & VerbSet::of(&[Verb::Get, Verb::List, Verb::Watch]).0 != 0;
    if wild && reads && group("") && resource("secrets") && rule.names.is_empty() {
        out.push(
            "`*` in resources or verbs grants reading secrets: list the resources, or deny secrets"
                .into(),
        );
    }
    let writes = rule.verbs.0 & VerbSet::of(&WRITE_VERBS).0 != 0;
    if writes && group(RBAC_GROUP) && RBAC_RESOURCES.iter().any(|r| resource(r)) {
        out.push(
            "grants writes to RBAC resources, with which a caller can grant itself more".into(),
        );
    }
    let creates = rule.verbs.0 & VerbSet::of(&[Verb::Create]).0 != 0;
    // A rule confined to namespaces matches no cluster-scoped request, nor a namespace's
    // create (which names none).
    let ns = &rule.namespaces;
    let reaches =
        |r: &str| ns.any || ns.cluster || !(CLUSTER_SCOPED.contains(&r) || r == "namespaces");
    let outside = INJECTION_SHAPERS
        .iter()
        .filter(|(g, r)| group(g) && resource(r) && reaches(r))
        .filter(|(_, r)| if *r == "namespaces" { creates } else { writes })
        .map(|(_, r)| *r)
        .collect::<Vec<_>>();
    if !outside.is_empty() {
        out.push(format!(
            "grants writes to {}, which can run pods outside chaperone unread (a mutating \
             webhook or admission policy, or a CRD's schema default, can set \
             chaperone.dev/inject on pods; an APIService chooses who serves workloads; a \
             StatefulSet makes pods from its revisions; a new namespace is not labelled \
             for injection)",
            outside.join(", ")
        ));
    }
    let exec = rule.verbs.0 & VerbSet::of(&[Verb::Get, Verb::Create]).0 != 0;
    if exec && group("") && resource("pods/exec") && rule.commands.is_empty() {
        out.push("allows pods/exec without `commands`: any command, a shell included".into());
    }
    if group("") && resource("nodes/proxy") && reaches("nodes") {
        out.push(
            "grants nodes/proxy: the kubelet's API, whose answers (the pods of a node with \
             their env, container logs) chaperone passes unmasked; its exec, run, attach \
             and port-forward are refused (builtin:kubelet-commands), but grant an agent \
             none of it"
                .into(),
        );
    }
    out
}
