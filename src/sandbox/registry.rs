//! The resource types the sandbox serves: the built-in ones and those that
//! CustomResourceDefinitions add at run time.

use serde_json::{json, Value};

/// One served `group/version/resource`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ResourceDef {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Subresources served: any of `status`, `scale`, `log`, `exec`.
    pub subresources: Vec<&'static str>,
    /// Create-only review resources (access reviews): answered, never stored.
    pub review: bool,
    /// `additionalPrinterColumns` of a CRD version: (name, type, jsonPath).
    pub columns: Vec<(String, String, String)>,
    /// Name of the CRD that defines it, for custom resources.
    pub crd: Option<String>,
}

pub(crate) const ALL_VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

impl ResourceDef {
    fn builtin(group: &str, plural: &str, kind: &str, namespaced: bool, short: &[&str]) -> Self {
        ResourceDef {
            group: group.into(),
            version: "v1".into(),
            plural: plural.into(),
            singular: kind.to_ascii_lowercase(),
            kind: kind.into(),
            namespaced,
            short_names: short.iter().map(|s| s.to_string()).collect(),
            categories: Vec::new(),
            subresources: Vec::new(),
            review: false,
            columns: Vec::new(),
            crd: None,
        }
    }

    fn subs(mut self, subs: &[&'static str]) -> Self {
        self.subresources = subs.to_vec();
        self
    }

    fn in_all(mut self) -> Self {
        self.categories = vec!["all".into()];
        self
    }

    fn review(mut self) -> Self {
        self.review = true;
        self
    }

    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn has_sub(&self, sub: &str) -> bool {
        self.subresources.contains(&sub)
    }

    pub fn verbs(&self) -> Vec<&'static str> {
        if self.review {
            vec!["create"]
        } else {
            ALL_VERBS.to_vec()
        }
    }

    /// The `APIResource` entries of this resource and its subresources, for discovery.
    pub fn discovery_entries(&self) -> Vec<Value> {
        let mut main = json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": self.verbs(),
        });
        if !self.short_names.is_empty() {
            main["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            main["categories"] = json!(self.categories);
        }
        let mut out = vec![main];
        for sub in &self.subresources {
            let name = format!("{}/{sub}", self.plural);
            out.push(match *sub {
                "scale" => json!({"name": name, "singularName": "", "namespaced": self.namespaced,
                    "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}),
                "log" => json!({"name": name, "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]}),
                "exec" => json!({"name": name, "singularName": "", "namespaced": true, "kind": "PodExecOptions",
                    "verbs": ["create", "get"]}),
                _ => json!({"name": name, "singularName": "", "namespaced": self.namespaced, "kind": self.kind,
                    "verbs": ["get", "patch", "update"]}),
            });
        }
        out
    }
}

/// The built-in resources, in the order discovery lists them.
pub(crate) fn builtins() -> Vec<ResourceDef> {
    let d = ResourceDef::builtin;
    vec![
        d("", "configmaps", "ConfigMap", true, &["cm"]),
        d("", "events", "Event", true, &["ev"]),
        d("", "namespaces", "Namespace", false, &["ns"]).subs(&["status"]),
        d("", "pods", "Pod", true, &["po"])
            .subs(&["exec", "log", "status"])
            .in_all(),
        d("", "secrets", "Secret", true, &[]),
        d("", "serviceaccounts", "ServiceAccount", true, &["sa"]).subs(&["token"]),
        d("", "services", "Service", true, &["svc"])
            .subs(&["status"])
            .in_all(),
        d("apps", "deployments", "Deployment", true, &["deploy"])
            .subs(&["scale", "status"])
            .in_all(),
        d(
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
            &[],
        ),
        d(
            "rbac.authorization.k8s.io",
            "clusterroles",
            "ClusterRole",
            false,
            &[],
        ),
        d(
            "rbac.authorization.k8s.io",
            "rolebindings",
            "RoleBinding",
            true,
            &[],
        ),
        d("rbac.authorization.k8s.io", "roles", "Role", true, &[]),
        d(
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            "MutatingWebhookConfiguration",
            false,
            &[],
        ),
        d(
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
        )
        .subs(&["status"]),
        d(
            "authorization.k8s.io",
            "selfsubjectaccessreviews",
            "SelfSubjectAccessReview",
            false,
            &[],
        )
        .review(),
        d(
            "authorization.k8s.io",
            "selfsubjectrulesreviews",
            "SelfSubjectRulesReview",
            false,
            &[],
        )
        .review(),
        d(
            "authentication.k8s.io",
            "selfsubjectreviews",
            "SelfSubjectReview",
            false,
            &[],
        )
        .review(),
    ]
}

/// The resource definitions a CRD object declares: one per served version.
/// `None` when the CRD lacks the fields needed to serve it.
pub(crate) fn defs_from_crd(crd: &Value) -> Option<Vec<ResourceDef>> {
    let spec = crd.get("spec")?;
    let names = spec.get("names")?;
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let plural = s(names, "plural")?;
    let kind = s(names, "kind")?;
    let group = s(spec, "group")?;
    let singular = s(names, "singular").unwrap_or_else(|| kind.to_ascii_lowercase());
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let namespaced = spec.get("scope").and_then(Value::as_str) != Some("Cluster");
    let mut out = Vec::new();
    for v in spec
        .get("versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if v.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let Some(version) = s(v, "name") else {
            continue;
        };
        let mut subresources = Vec::new();
        if v.pointer("/subresources/status").is_some() {
            subresources.push("status");
        }
        if v.pointer("/subresources/scale").is_some() {
            subresources.push("scale");
        }
        let columns = v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|cols| {
                cols.iter()
                    .filter_map(|c| {
                        Some((
                            s(c, "name")?,
                            s(c, "type").unwrap_or_else(|| "string".into()),
                            s(c, "jsonPath")?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(ResourceDef {
            group: group.clone(),
            version,
            plural: plural.clone(),
            singular: singular.clone(),
            kind: kind.clone(),
            namespaced,
            short_names: strings(names.get("shortNames")),
            categories: strings(names.get("categories")),
            subresources,
            review: false,
            columns,
            crd: crd
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(str::to_string),
        });
    }
    (!out.is_empty()).then_some(out)
}

/// Kubernetes version priority (`v2` > `v1` > `v1beta2` > `v1beta1` > `v1alpha1` > other),
/// used to pick a group's preferred version. Larger is preferred.
pub(crate) fn version_priority(v: &str) -> (u8, u32, u32) {
    let Some(rest) = v.strip_prefix('v') else {
        return (0, 0, 0);
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let Ok(major) = digits.parse::<u32>() else {
        return (0, 0, 0);
    };
    let tail = &rest[digits.len()..];
    let (stability, minor) = if tail.is_empty() {
        (3, 0)
    } else if let Some(n) = tail.strip_prefix("beta") {
        (2, n.parse().unwrap_or(0))
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, n.parse().unwrap_or(0))
    } else {
        return (0, 0, 0);
    };
    (stability, major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_defs_follow_scope_and_versions() {
        let crd = json!({"metadata": {"name": "widgets.example.com"}, "spec": {"group": "example.com",
            "scope": "Cluster", "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [{"name": "v1", "served": true, "subresources": {"status": {}}},
                         {"name": "v2", "served": false}]}});
        let defs = defs_from_crd(&crd).unwrap();
        assert_eq!(defs.len(), 1);
        assert!(!defs[0].namespaced);
        assert_eq!(defs[0].singular, "widget");
        assert!(defs[0].has_sub("status"));
        assert_eq!(defs[0].api_version(), "example.com/v1");
    }

    #[test]
    fn versions_sort_like_kubernetes() {
        let mut v = vec!["v1alpha1", "v1", "v2beta1", "v1beta2", "foo", "v2"];
        v.sort_by_key(|x| std::cmp::Reverse(version_priority(x)));
        assert_eq!(v, ["v2", "v1", "v2beta1", "v1beta2", "v1alpha1", "foo"]);
    }
}
