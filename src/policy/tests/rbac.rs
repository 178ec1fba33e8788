//! RBAC rule matching, ported from Kubernetes `plugin/pkg/auth/authorizer/rbac/rbac_test.go`
//! (`TestRuleMatches`, `TestAuthorizer`) and `pkg/apis/rbac/v1/evaluation_helpers.go`.
//!
//! Go's verbs `verb1`/`verb2` become `get`/`list` (a policy names known verbs only), bindings
//! become subjects, and a RoleBinding's namespace becomes `namespaces`.

use super::*;

/// One rule: verbs, API groups, resources, nonResourceURLs (comma-separated, as Go's
/// `newRule`), and resourceNames.
fn rule_policy(verbs: &str, groups: &str, resources: &str, urls: &str, names: &str) -> Policy {
    let list = |s: &str| {
        let items: Vec<String> = s
            .split(',')
            .filter(|x| !x.is_empty())
            .map(|x| format!("{x:?}"))
            .collect();
        format!("[{}]", items.join(", "))
    };
    let mut spec = format!(
        "  rules:\n  - name: r\n    subjects: {{users: [\"*\"]}}\n    verbs: {}\n    action: allow\n",
        list(verbs)
    );
    if urls.is_empty() {
        let groups = if groups == "core" {
            "[\"\"]".to_owned()
        } else {
            list(groups)
        };
        spec.push_str(&format!(
            "    apiGroups: {groups}\n    resources: {}\n",
            list(resources)
        ));
        if !names.is_empty() {
            spec.push_str(&format!("    resourceNames: {}\n", list(names)));
        }
    } else {
        spec.push_str(&format!("    nonResourceURLs: {}\n", list(urls)));
    }
    policy(&spec)
}

fn allowed(p: &Policy, info: &RequestInfo) -> bool {
    authorize(p, &who("u", &[]), info, None).action() == Action::Allow
}

#[test]
fn rule_matches() {
    // (name, rule: verbs, groups, resources, urls, names), then (request, allowed) rows.
    type Row = (RequestInfo, bool);
    let r = |verb: &str, group: &str, resource: &str| res(verb, group, resource, "ns", "");
    let named = |verb: &str, resource: &str, name: &str| res(verb, "g1", resource, "ns", name);
    #[rustfmt::skip]
    let table: Vec<(&str, [&str; 5], Vec<Row>)> = vec![
        ("star verb, exact match other", ["*", "g1", "resource1", "", ""], vec![
            (r("get", "g1", "resource1"), true), (r("get", "g2", "resource1"), false),
            (r("get", "g1", "resource2"), false), (r("get", "g2", "resource2"), false),
            (r("list", "g1", "resource1"), true), (r("list", "g2", "resource1"), false),
            (r("list", "g1", "resource2"), false), (r("list", "g2", "resource2"), false),
            // `*` matches verbs a rule cannot name, as in Go.
            (r("", "g1", "resource1"), true),
        ]),
        ("star group, exact match other", ["get", "*", "resource1", "", ""], vec![
            (r("get", "g1", "resource1"), true), (r("get", "g2", "resource1"), true),
            (r("get", "g1", "resource2"), false), (r("get", "g2", "resource2"), false),
            (r("list", "g1", "resource1"), false), (r("list", "g2", "resource1"), false),
            (r("list", "g1", "resource2"), false), (r("list", "g2", "resource2"), false),
            (r("get", "", "resource1"), true),
        ]),
        ("star resource, exact match other", ["get", "g1", "*", "", ""], vec![
            (r("get", "g1", "resource1"), true), (r("get", "g2", "resource1"), false),
            (r("get", "g1", "resource2"), true), (r("get", "g2", "resource2"), false),
            (r("list", "g1", "resource1"), false), (r("list", "g2", "resource1"), false),
            (r("list", "g1", "resource2"), false), (r("list", "g2", "resource2"), false),
            (r("get", "g1", "resource1/sub"), true),
        ]),
        ("tuple expansion", ["get,list", "g1,g2", "resource1,resource2", "", ""], vec![
            (r("get", "g1", "resource1"), true), (r("get", "g2", "resource1"), true),
            (r("get", "g1", "resource2"), true), (r("get", "g2", "resource2"), true),
            (r("list", "g1", "resource1"), true), (r("list", "g2", "resource1"), true),
            (r("list", "g1", "resource2"), true), (r("list", "g2", "resource2"), true),
            (r("watch", "g1", "resource1"), false), (r("get", "g3", "resource1"), false),
        ]),
        ("subresource expansion", ["*", "*", "resource1/subresource1", "", ""], vec![
            (r("get", "g1", "resource1/subresource1"), true),
            (r("get", "g2", "resource1/subresource2"), false),
            (r("get", "g1", "resource2/subresource1"), false),
            (r("get", "g2", "resource2/subresource1"), false),
            (r("list", "g1", "resource1/subresource1"), true),
            (r("list", "g2", "resource1/subresource2"), false),
            (r("list", "g1", "resource2/subresource1"), false),
            (r("list", "g2", "resource2/subresource1"), false),
            (r("get", "g1", "resource1"), false),
        ]),
        // ResourceMatches: `*/subresource` matches that subresource of any resource only.
        ("star subresource", ["get", "g1", "*/scale", "", ""], vec![
            (r("get", "g1", "deployments/scale"), true), (r("get", "g1", "replicasets/scale"), true),
            (r("get", "g1", "deployments"), false), (r("get", "g1", "deployments/status"), false),
            (r("get", "g1", "scale"), false),
        ]),
        // rbac_test.go TestAuthorizer "test subresource resolution"
        ("resource does not match its subresources", ["*", "*", "pods", "", ""], vec![
            (r("get", "", "pods"), true), (r("get", "", "pods/status"), false),
        ]),
        ("subresource does not match its resource", ["*", "*", "pods/status", "", ""], vec![
            (r("get", "", "pods/status"), true), (r("get", "", "pods"), false),
        ]),
        ("core group", ["get", "core", "pods", "", ""], vec![
            (r("get", "", "pods"), true), (r("get", "apps", "pods"), false),
        ]),
        // ResourceNameMatches: exact names; a request without a name does not match.
        ("resource names", ["get,list", "g1", "resource1", "", "a,b"], vec![
            (named("get", "resource1", "a"), true), (named("get", "resource1", "b"), true),
            (named("get", "resource1", "c"), false), (named("list", "resource1", ""), false),
            (named("list", "resource1", "a"), true),
        ]),
        // A create on a subresource names its object (`POST .../pods/web-0/exec`,
        // `kubectl create token NAME`), so resourceNames can match it, as in RBAC.
        ("create on a named subresource", ["create", "g1", "resource1/token", "", "a"], vec![
            (named("create", "resource1/token", "a"), true),
            (named("create", "resource1/token", "b"), false),
            (named("create", "resource1", ""), false),
        ]),
        ("star nonresource, exact match other", ["get", "", "", "*", ""], vec![
            (non("get", "/foo"), true), (non("get", "/foo/bar"), true), (non("get", "/foo/baz"), true),
            (non("get", "/foo/bar/one"), true), (non("get", "/foo/baz/one"), true),
            (non("post", "/foo"), false), (non("post", "/foo/bar"), false), (non("post", "/foo/baz"), false),
            (non("post", "/foo/bar/one"), false), (non("post", "/foo/baz/one"), false),
        ]),
        ("star nonresource subpath", ["get", "", "", "/foo/*", ""], vec![
            (non("get", "/foo"), false), (non("get", "/foo/bar"), true), (non("get", "/foo/baz"), true),
            (non("get", "/foo/bar/one"), true), (non("get", "/foo/baz/one"), true),
            (non("get", "/notfoo"), false), (non("get", "/notfoo/bar"), false),
            (non("get", "/notfoo/baz"), false), (non("get", "/notfoo/bar/one"), false),
            (non("get", "/notfoo/baz/one"), false),
        ]),
        ("star verb, exact nonresource", ["*", "", "", "/foo,/foo/bar/one", ""], vec![
            (non("get", "/foo"), true), (non("get", "/foo/bar"), false), (non("get", "/foo/baz"), false),
            (non("get", "/foo/bar/one"), true), (non("get", "/foo/baz/one"), false),
            (non("post", "/foo"), true), (non("post", "/foo/bar"), false), (non("post", "/foo/baz"), false),
            (non("post", "/foo/bar/one"), true), (non("post", "/foo/baz/one"), false),
        ]),
        // Resource rules never match non-resource requests, and the reverse.
        ("resource rule, non-resource request", ["*", "*", "*", "", ""], vec![
            (non("get", "/healthz"), false),
        ]),
        ("non-resource rule, resource request", ["*", "", "", "*", ""], vec![
            (r("get", "", "pods"), false),
        ]),
    ];
    for (name, [verbs, groups, resources, urls, names], rows) in table {
        let p = rule_policy(verbs, groups, resources, urls, names);
        for (info, want) in rows {
            assert_eq!(allowed(&p, &info), want, "{name}: {info:?}");
        }
    }
}

#[test]
fn authorizer_bindings() {
    // TestAuthorizer: a `*` cluster role bound in ns1 to User:admin and Group:admins.
    let p = policy(
        r#"
  rules:
  - name: admin-in-ns1
    subjects: {users: [admin], groups: [admins]}
    apiGroups: ["*"]
    resources: ["*"]
    verbs: ["*"]
    namespaces: [ns1]
    action: allow
"#,
    );
    #[rustfmt::skip]
    let rows = [
        ("admin", &[][..], "get", "Pods", "ns1", true),
        ("admin", &[], "watch", "Pods", "ns1", true),
        ("admin", &["group1"], "watch", "Foobar", "ns1", true),
        ("joe", &["admins"], "watch", "Foobar", "ns1", true),
        ("joe", &["group1", "admins"], "watch", "Foobar", "ns1", true),
        ("admin", &[], "GET", "Pods", "ns2", false),
        ("admin", &[], "GET", "Nodes", "", false),
        ("admin", &["admins"], "GET", "Pods", "ns2", false),
        ("admin", &["admins"], "GET", "Nodes", "", false),
        ("joe", &["group1"], "get", "Pods", "ns1", false),
    ];
    for (user, groups, verb, resource, ns, want) in rows {
        let d = authorize(
            &p,
            &who(user, groups),
            &res(verb, "", resource, ns, ""),
            None,
        );
        assert_eq!(
            d.action() == Action::Allow,
            want,
            "{user} {groups:?} {verb} {resource} {ns}"
        );
    }

    // The non-resource-url bindings.
    let p = policy(
        r#"
  rules:
  - name: non-resource-url-getter
    subjects: {users: [foo], groups: [bar]}
    nonResourceURLs: [/apis]
    verbs: [get]
    action: allow
  - name: non-resource-url
    subjects: {users: [admin], groups: [admin]}
    nonResourceURLs: [/apis]
    verbs: ["*"]
    action: allow
  - name: non-resource-url-prefix
    subjects: {users: [prefixed], groups: [prefixed]}
    nonResourceURLs: [/apis/*]
    verbs: [get]
    action: allow
"#,
    );
    let as_user = |u: &str| who(u, &[]);
    let as_group = |g: &str| who("", &[g]);
    #[rustfmt::skip]
    let rows = [
        (as_user("foo"), "get", "/apis", true), (as_group("bar"), "get", "/apis", true),
        (as_user("admin"), "get", "/apis", true), (as_group("admin"), "get", "/apis", true),
        (as_user("admin"), "post", "/apis", true), (as_group("admin"), "post", "/apis", true),
        (as_user("prefixed"), "get", "/apis/v1", true), (as_group("prefixed"), "get", "/apis/v1", true),
        (as_user("prefixed"), "get", "/apis/v1/foobar", true), (as_group("prefixed"), "get", "/apis/v1/foorbar", true),
        // wrong verb
        (as_user("foo"), "post", "/apis", false), (as_group("bar"), "post", "/apis", false),
        // wrong path
        (as_user("foo"), "get", "/metrics", false), (as_group("bar"), "get", "/metrics", false),
        (as_user("admin"), "get", "/metrics", false), (as_group("admin"), "get", "/metrics", false),
        // not covered by prefix
        (as_user("prefixed"), "get", "/apisx", false), (as_group("prefixed"), "get", "/metrics", false),
    ];
    for (who, verb, path, want) in rows {
        let d = authorize(&p, &who, &non(verb, path), None);
        // `/apis...` GETs would pass as discovery anyway: require a rule to have decided.
        let by_rule = !d.rule().starts_with("builtin:");
        assert_eq!(
            d.action() == Action::Allow && by_rule,
            want,
            "{who:?} {verb} {path}"
        );
    }
}
