//! Table tests of the policy engine: precedence, audit mode, built-ins, commands, decisions'
//! words. RBAC matching, errors and lint, and reload have their own files below.

use super::*;
use crate::identity::Subject;
use crate::request_info::RequestInfo;

mod errors;
mod rbac;
mod reload;

pub(super) const HEADER: &str =
    "apiVersion: chaperone.dev/v1alpha1\nkind: Policy\nmetadata:\n  name: test\nspec:\n";

/// A policy from the YAML of `spec` (indented by two spaces).
pub(super) fn policy(spec: &str) -> Policy {
    let text = format!("{HEADER}{spec}");
    match parse(&text, "test.yaml") {
        Ok((policy, _)) => policy,
        Err(e) => panic!("{e}\n{text}"),
    }
}

pub(super) fn who(user: &str, groups: &[&str]) -> Subject {
    Subject {
        user: user.into(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        ..Subject::default()
    }
}

/// A resource request: verb, group, `resource[/subresource]`, namespace, name.
pub(super) fn res(
    verb: &str,
    group: &str,
    resource: &str,
    namespace: &str,
    name: &str,
) -> RequestInfo {
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    RequestInfo {
        is_resource_request: true,
        verb: verb.into(),
        api_group: group.into(),
        resource: resource.into(),
        subresource: subresource.into(),
        namespace: namespace.into(),
        name: name.into(),
        ..RequestInfo::default()
    }
}

pub(super) fn non(verb: &str, path: &str) -> RequestInfo {
    RequestInfo {
        verb: verb.into(),
        path: path.into(),
        ..RequestInfo::default()
    }
}

/// `(action, rule)` of the reported verdict.
fn decide(p: &Policy, who: &Subject, info: &RequestInfo, query: Option<&str>) -> (Action, String) {
    let d = authorize(p, who, info, query);
    (d.action(), d.rule().to_owned())
}

const PRECEDENCE: &str = r#"
  rules:
  - name: dev-read
    subjects: {groups: [dev]}
    apiGroups: ["", apps]
    resources: ["*"]
    verbs: [get, list, watch]
    namespaces: [team-*]
    action: allow
  - name: dev-write
    subjects: {groups: [dev]}
    apiGroups: [apps]
    resources: [deployments, deployments/scale]
    verbs: ["*"]
    namespaces: [team-*]
    action: allow
  - name: approve-deletes
    subjects: {groups: ["*"]}
    apiGroups: ["*"]
    resources: ["*"]
    verbs: [delete, deletecollection]
    action: approve
    approval: {hold: 2m, approvers: 2, breakGlassGroups: [sre]}
  - name: no-secrets
    subjects: {users: ["*"]}
    apiGroups: [""]
    resources: [secrets]
    verbs: ["*"]
    action: deny
  - name: no-secrets-again
    subjects: {groups: [dev]}
    apiGroups: [""]
    resources: [secrets]
    verbs: [get]
    action: deny
  - name: bob-reads-config
    subjects: {users: [bob], serviceAccounts: [ci/deployer]}
    apiGroups: [""]
    resources: [configmaps]
    resourceNames: [app-config]
    verbs: [get, update]
    namespaces: [default, <cluster>]
    action: allow
  - name: dev-reads-services
    subjects: {groups: [dev]}
    apiGroups: [""]
    resources: [services]
    verbs: [get, list, watch, deletecollection]
    action: allow
  - name: not-the-api-service
    subjects: {groups: [dev]}
    apiGroups: [""]
    resources: [services]
    resourceNames: [api]
    verbs: [get, list, watch, deletecollection]
    action: deny
"#;

#[test]
fn the_most_restrictive_rule_wins() {
    let p = policy(PRECEDENCE);
    let dev = who("alice", &["dev"]);
    let bob = who("bob", &[]);
    let sa = who("system:serviceaccount:ci:deployer", &[]);
    let mallory = who("mallory", &[]);
    #[rustfmt::skip]
    let cases: Vec<(&Subject, RequestInfo, Action, &str)> = vec![
        // allows, by namespace glob
        (&dev, res("get", "", "pods", "team-a", "web"), Action::Allow, "dev-read"),
        (&dev, res("list", "apps", "deployments", "team-b", ""), Action::Allow, "dev-read"),
        (&dev, res("patch", "apps", "deployments", "team-b", "web"), Action::Allow, "dev-write"),
        (&dev, res("update", "apps", "deployments/scale", "team-b", "web"), Action::Allow, "dev-write"),
        // outside the glob, or across namespaces: default deny
        (&dev, res("get", "", "pods", "default", "web"), Action::Deny, DEFAULT_DENY),
        (&dev, res("list", "", "pods", "", ""), Action::Deny, DEFAULT_DENY),
        (&dev, res("update", "apps", "deployments/status", "team-b", "web"), Action::Deny, DEFAULT_DENY),
        // approve beats allow
        (&dev, res("delete", "apps", "deployments", "team-a", "web"), Action::Approve, "approve-deletes"),
        (&bob, res("delete", "", "pods", "x", "web"), Action::Approve, "approve-deletes"),
        // deny beats allow and approve; the first deny in the file is named
        (&dev, res("get", "", "secrets", "team-a", "db"), Action::Deny, "no-secrets"),
        (&dev, res("delete", "", "secrets", "team-a", "db"), Action::Deny, "no-secrets"),
        (&bob, res("list", "", "secrets", "", ""), Action::Deny, "no-secrets"),
        // resourceNames, service accounts and <cluster>
        (&bob, res("get", "", "configmaps", "default", "app-config"), Action::Allow, "bob-reads-config"),
        (&bob, res("get", "", "configmaps", "", "app-config"), Action::Allow, "bob-reads-config"),
        (&bob, res("get", "", "configmaps", "default", "other"), Action::Deny, DEFAULT_DENY),
        (&bob, res("get", "", "configmaps", "kube-system", "app-config"), Action::Deny, DEFAULT_DENY),
        (&bob, res("list", "", "configmaps", "default", ""), Action::Deny, DEFAULT_DENY),
        (&sa, res("update", "", "configmaps", "default", "app-config"), Action::Allow, "bob-reads-config"),
        (&mallory, res("get", "", "configmaps", "default", "app-config"), Action::Deny, DEFAULT_DENY),
        // a deny naming an object takes the collection that holds it, unless the request
        // is narrowed to another name (a list's `fieldSelector=metadata.name=`)
        (&dev, res("get", "", "services", "x", "web"), Action::Allow, "dev-reads-services"),
        (&dev, res("get", "", "services", "x", "api"), Action::Deny, "not-the-api-service"),
        (&dev, res("list", "", "services", "x", ""), Action::Deny, "not-the-api-service"),
        (&dev, res("watch", "", "services", "", ""), Action::Deny, "not-the-api-service"),
        (&dev, res("deletecollection", "", "services", "x", ""), Action::Deny, "not-the-api-service"),
        (&dev, res("list", "", "services", "x", "web"), Action::Allow, "dev-reads-services"),
        (&dev, res("watch", "", "services", "x", "api"), Action::Deny, "not-the-api-service"),
    ];
    for (who, info, action, rule) in cases {
        assert_eq!(
            decide(&p, who, &info, None),
            (action, rule.to_owned()),
            "{who:?} {info:?}"
        );
    }
    let d = authorize(&p, &dev, &res("delete", "", "pods", "team-a", "web"), None);
    let approval = d.approval().expect("approve decision carries its settings");
    assert_eq!(approval.hold.0, std::time::Duration::from_secs(120));
    assert_eq!(approval.grant.0, model::DEFAULT_GRANT);
    assert_eq!(approval.approvers.get(), 2);
    assert_eq!(approval.break_glass_groups[0].0, "sre");
}

#[test]
fn audit_mode_reports_without_enforcing() {
    let p = policy(
        r#"
  rules:
  - name: read
    subjects: {users: ["*"]}
    apiGroups: [""]
    resources: [pods, secrets]
    verbs: [get]
    action: allow
  - name: trial-deny-secrets
    subjects: {users: ["*"]}
    apiGroups: [""]
    resources: [secrets]
    verbs: [get]
    action: deny
    mode: audit
  - name: trial-approve-configmaps
    subjects: {users: ["*"]}
    apiGroups: [""]
    resources: [configmaps]
    verbs: [get]
    action: approve
    mode: audit
"#,
    );
    let u = who("u", &[]);
    // An audit-mode deny over an allow: reported, not enforced.
    let d = authorize(&p, &u, &res("get", "", "secrets", "ns", "s"), None);
    assert_eq!(
        (d.action(), d.rule(), d.enforced()),
        (Action::Deny, "trial-deny-secrets", false)
    );
    assert_eq!((d.applied(), d.applied_rule()), (Action::Allow, "read"));
    assert_eq!(
        d.to_string(),
        "[audit mode, not enforced] rule \"trial-deny-secrets\" denies get on secrets \"s\" in namespace ns; \
         applied instead: rule \"read\" allows get on secrets \"s\" in namespace ns"
    );
    // An audit-mode rule never lifts the default deny.
    let d = authorize(&p, &u, &res("get", "", "configmaps", "ns", "c"), None);
    assert_eq!(
        (d.action(), d.rule(), d.enforced(), d.applied()),
        (Action::Deny, DEFAULT_DENY, true, Action::Deny)
    );
    // Enforced rules alone: plain.
    let d = authorize(&p, &u, &res("get", "", "pods", "ns", "p"), None);
    assert_eq!(
        (d.action(), d.enforced(), d.applied()),
        (Action::Allow, true, Action::Allow)
    );

    // A whole policy in audit mode: everything proceeds, and says what would have happened.
    let p = policy("  mode: audit\n  rules:\n  - name: deny-pods\n    subjects: {users: [\"*\"]}\n    apiGroups: [\"\"]\n    resources: [pods]\n    verbs: [\"*\"]\n    action: deny\n  - name: enforced-deny\n    subjects: {users: [\"*\"]}\n    apiGroups: [\"\"]\n    resources: [nodes]\n    verbs: [\"*\"]\n    action: deny\n    mode: enforce\n");
    let d = authorize(&p, &u, &res("get", "", "pods", "ns", "p"), None);
    assert_eq!(
        (d.action(), d.rule(), d.enforced(), d.applied()),
        (Action::Deny, "deny-pods", false, Action::Allow)
    );
    assert_eq!(d.applied_rule(), AUDIT_MODE);
    let d = authorize(&p, &u, &res("get", "", "services", "ns", "p"), None);
    assert_eq!(
        (d.action(), d.rule(), d.enforced(), d.applied()),
        (Action::Deny, DEFAULT_DENY, false, Action::Allow)
    );
    assert!(d.to_string().ends_with("; the request proceeds"), "{d}");
    let d = authorize(&p, &u, &res("get", "", "nodes", "", "n"), None);
    assert_eq!(
        (d.action(), d.enforced(), d.applied()),
        (Action::Deny, true, Action::Deny)
    );
}

#[test]
fn builtins() {
    let allow_all = r#"
  rules:
  - name: everything
    subjects: {users: ["*"]}
    apiGroups: ["*"]
    resources: ["*"]
    verbs: ["*"]
    action: allow
  - name: all-urls
    subjects: {users: ["*"]}
    nonResourceURLs: ["*"]
    verbs: ["*"]
    action: allow
"#;
    let p = policy(allow_all);
    let u = who("u", &[]);
    #[rustfmt::skip]
    let cases = [
        (res("get", "chaperone.dev", "accessrequests", "ns", "x"), Action::Deny, CHAPERONE_RESOURCES),
        (res("update", "chaperone.dev", "accessrequests/status", "ns", "x"), Action::Deny, CHAPERONE_RESOURCES),
        (res("list", "sub.chaperone.dev", "things", "", ""), Action::Deny, CHAPERONE_RESOURCES),
        (res("impersonate", "", "users", "", "admin"), Action::Deny, IMPERSONATE),
        (res("impersonate", "", "serviceaccounts", "ns", "x"), Action::Deny, IMPERSONATE),
        (res("get", "", "pods", "ns", "x"), Action::Allow, "everything"),
        (non("get", "/apis"), Action::Allow, "all-urls"),
    ];
    for (info, action, rule) in cases {
        assert_eq!(
            decide(&p, &u, &info, None),
            (action, rule.to_owned()),
            "{info:?}"
        );
    }
    // Through nodes/proxy, the kubelet's endpoints that act in containers, whatever the
    // method; its other endpoints are the rules' to decide.
    #[rustfmt::skip]
    let cases = [
        ("POST", "/api/v1/nodes/n1/proxy/run/kube-system/etcd-n1/etcd?cmd=ls", true),
        ("GET", "/api/v1/nodes/n1:10250/proxy/exec/a/p/c?command=sh", true),
        ("POST", "/api/v1/nodes/n1/proxy/attach/a/p/c", true),
        ("GET", "/api/v1/nodes/n1/proxy/portForward/a/p", true),
        ("GET", "/api/v1/nodes/n1/proxy/PortForward/a/p", true),
        ("POST", "/api/v1/nodes/n1/proxy/cri/exec/token", true),
        ("POST", "/api/v1/nodes/n1/proxy/checkpoint/a/p/c", true),
        ("GET", "/api/v1/nodes/n1/proxy/pods", false),
        ("GET", "/api/v1/nodes/n1/proxy/containerLogs/a/p/c", false),
        ("GET", "/api/v1/nodes/n1/proxy", false),
        ("GET", "/api/v1/namespaces/a/pods/p/proxy/run/x", false),
        ("GET", "/api/v1/namespaces/a/services/s/proxy/exec", false),
    ];
    for (method, path, refused) in cases {
        let info =
            crate::request_info::resolve(&method.parse().unwrap(), &path.parse().unwrap()).unwrap();
        let want = if refused {
            (Action::Deny, KUBELET_COMMANDS.to_owned())
        } else {
            (Action::Allow, "everything".to_owned())
        };
        assert_eq!(decide(&p, &u, &info, None), want, "{method} {path}");
    }

    // Discovery without rules; not with other verbs or paths; a rule may deny it.
    let p = policy("  rules: []\n");
    #[rustfmt::skip]
    let cases = [
        ("/api", true), ("/api/", true), ("/api/v1", true), ("/apis", true), ("/apis/apps", true),
        ("/apis/apps/v1", true), ("/apis/chaperone.dev/v1alpha1", true), ("/version", true),
        ("/version/", true), ("/openapi/v2", true), ("/openapi/v3/apis/apps/v1", true),
        ("/openapi", false), ("/version/x", false), ("/healthz", false), ("/", false), ("/metrics", false),
    ];
    for (path, allowed) in cases {
        let want = if allowed {
            (Action::Allow, DISCOVERY)
        } else {
            (Action::Deny, DEFAULT_DENY)
        };
        assert_eq!(
            decide(&p, &u, &non("get", path), None),
            (want.0, want.1.to_owned()),
            "{path}"
        );
    }
    assert_eq!(decide(&p, &u, &non("post", "/apis"), None).0, Action::Deny);
    let p = policy("  rules:\n  - name: no-openapi\n    subjects: {users: [\"*\"]}\n    nonResourceURLs: [/openapi/*]\n    verbs: [get]\n    action: deny\n");
    assert_eq!(
        decide(&p, &u, &non("get", "/openapi/v2"), None),
        (Action::Deny, "no-openapi".into())
    );
    assert_eq!(
        decide(&p, &u, &non("get", "/apis"), None),
        (Action::Allow, DISCOVERY.into())
    );
}

/// A question about the attributes alone (`kubectl auth can-i create pods/exec`) is
/// answered for some command: an allow rule's commands are some; a deny rule counts
/// only where it takes every command.
#[test]
fn a_question_without_a_command_is_answered_for_some_command() {
    let p = policy(
        r#"
  rules:
  - name: diagnostics
    subjects: {users: ["*"]}
    apiGroups: [""]
    resources: [pods/exec]
    verbs: [create]
    commands: [[ps, "**"]]
    action: allow
  - name: no-shells
    subjects: {users: ["*"]}
    apiGroups: [""]
    resources: [pods/exec]
    verbs: [create]
    commands: [[sh, "**"]]
    action: deny
  - name: nothing-in-prod
    subjects: {users: ["*"]}
    apiGroups: [""]
    resources: [pods/exec]
    verbs: [create]
    namespaces: [prod]
    commands: [["**"]]
    action: deny
  - name: nothing-in-staging
    subjects: {users: ["*"]}
    apiGroups: [""]
    resources: [pods/exec]
    verbs: [create]
    namespaces: [staging]
    commands: [["*", "**"]]
    action: deny
"#,
    );
    let u = who("u", &[]);
    let asked = |ns: &str, commands| {
        super::eval::decide(&p, &u, &res("create", "", "pods/exec", ns, "web"), commands).applied()
    };
    assert_eq!(asked("dev", Commands::Any), Action::Allow);
    assert_eq!(asked("prod", Commands::Any), Action::Deny);
    assert_eq!(asked("staging", Commands::Any), Action::Deny);
    // A request names its command, and is decided on it.
    assert_eq!(
        asked("dev", Commands::Sent(Some("command=sh"))),
        Action::Deny
    );
    assert_eq!(asked("dev", Commands::Sent(None)), Action::Deny);
}

#[test]
fn exec_commands() {
    let p = policy(
        r#"
  rules:
  - name: diagnostics
    subjects: {users: ["*"]}
    apiGroups: [""]
    resources: [pods/exec]
    verbs: [get, create]
    commands:
    - [ps, "**"]
    - [ls, "*"]
    - [cat, /etc/os-release]
    - [cat, /etc/*.conf]
    action: allow
"#,
    );
    let u = who("u", &[]);
    let exec = res("create", "", "pods/exec", "ns", "web");
    #[rustfmt::skip]
    let cases = [
        ("command=ps", Action::Allow),
        ("command=ps&command=aux&container=app&stdout=true", Action::Allow),
        ("command=ls&command=%2Ftmp", Action::Allow),
        ("command=ls", Action::Deny),
        ("command=ls&command=a&command=b", Action::Deny),
        ("command=cat&command=%2Fetc%2Fos-release", Action::Allow),
        ("command=cat&command=/etc/resolv.conf", Action::Allow),
        ("command=cat&command=/etc/../var/run/secrets/kubernetes.io/serviceaccount/token", Action::Deny),
        ("command=cat&command=/etc/shadow", Action::Deny),
        ("command=sh", Action::Deny),
        ("command=%2Fbin%2Fsh&command=-c&command=ps", Action::Deny),
        ("command=sh&command=-c&command=ps", Action::Deny),
        ("", Action::Deny),
    ];
    for (query, want) in cases {
        assert_eq!(decide(&p, &u, &exec, Some(query)).0, want, "{query}");
    }
    // Commands do not widen the rule to other subresources.
    assert_eq!(
        decide(
            &p,
            &u,
            &res("create", "", "pods/attach", "ns", "web"),
            Some("command=ps")
        )
        .0,
        Action::Deny
    );
}

#[test]
fn decisions_explain_themselves() {
    let p = policy(PRECEDENCE);
    let dev = who("alice", &["dev"]);
    let d = authorize(&p, &dev, &res("get", "", "secrets", "default", ""), None);
    assert_eq!(
        d.reason().to_string(),
        "rule \"no-secrets\" denies get on secrets in namespace default"
    );
    let s = d.status();
    assert_eq!((s.code, s.reason), (403, "Forbidden"));
    assert_eq!(
        s.message,
        "forbidden by chaperone policy \"test\": rule \"no-secrets\" denies get on secrets in namespace default"
    );
    let d = authorize(
        &p,
        &dev,
        &res("delete", "apps", "deployments", "team-a", "web"),
        None,
    );
    assert_eq!(
        d.status().message,
        "approval required: rule \"approve-deletes\" requires approval for delete on deployments.apps \"web\" in namespace team-a; \
         the request needs a reviewer's approval (an AccessRequest)"
    );
    let d = authorize(&p, &dev, &res("list", "", "nodes", "", ""), None);
    assert_eq!(
        d.reason().to_string(),
        "no rule allows list on nodes cluster-wide"
    );
    let d = authorize(&p, &dev, &non("get", "/healthz"), None);
    assert_eq!(d.reason().to_string(), "no rule allows get on /healthz");
    let d = Decision::no_policy(
        &res("get", "", "pods", "a", "b"),
        Some("failed to read policy file /p: gone".into()),
    );
    assert_eq!((d.action(), d.rule()), (Action::Deny, NO_POLICY));
    assert_eq!(
        d.status().message,
        "forbidden by chaperone: no policy is loaded, so every request is denied (get on pods \"b\" in namespace a): \
         failed to read policy file /p: gone"
    );
    let long = "x".repeat(1000);
    let d = authorize(&p, &dev, &res("get", "", "pods", &long, &long), None);
    assert!(d.reason().to_string().len() < 300);
}

#[test]
fn embedded_tests_run() {
    let text = format!(
        "{HEADER}{}tests:\n{}",
        "  rules:\n  - name: read-pods\n    subjects: {groups: [dev]}\n    apiGroups: [\"\"]\n    resources: [pods]\n    verbs: [get]\n    action: allow\n  - name: exec-ps\n    subjects: {groups: [dev]}\n    apiGroups: [\"\"]\n    resources: [pods/exec]\n    verbs: [get, create]\n    commands: [[ps]]\n    action: allow\n",
        r#"
- name: dev reads pods
  subject: {user: a, groups: [dev]}
  request: {verb: get, resource: pods, namespace: x, name: p}
  expect: allow
  rule: read-pods
- name: dev execs ps
  subject: {user: a, groups: [dev]}
  request: {verb: create, resource: pods/exec, namespace: x, name: p, command: [ps]}
  expect: allow
- name: dev cannot exec sh
  subject: {user: a, groups: [dev]}
  request: {verb: create, resource: pods, subresource: exec, namespace: x, name: p, command: [sh]}
  expect: deny
  rule: builtin:default-deny
- name: discovery by path
  subject: {serviceAccount: ns/sa}
  request: GET /apis/apps/v1
  expect: allow
  rule: builtin:discovery
- name: this one fails
  subject: {user: a, groups: [dev]}
  request: "GET /api/v1/namespaces/x/pods/p/exec?command=ps"
  expect: deny
"#
    );
    let (p, _) = parse(&text, "t.yaml").expect("parses");
    let results: Vec<(String, bool, usize)> = p
        .run_tests()
        .into_iter()
        .map(|o| (o.name, o.passed, o.line))
        .collect();
    assert_eq!(
        results,
        vec![
            ("dev reads pods".into(), true, 22),
            ("dev execs ps".into(), true, 27),
            ("dev cannot exec sh".into(), true, 31),
            ("discovery by path".into(), true, 36),
            // GET on exec (websocket) is verb get: allowed, not the expected deny.
            ("this one fails".into(), false, 41),
        ]
    );
}

/// The policy's own ConfigMap: which requests change it, which may create it, and which
/// sent objects are it (the API server's `generateName` completion included).
#[test]
fn the_own_configmap_is_told_apart() {
    use serde_json::json;
    let own = OwnObject::policy("agents".into(), "agent-policy".into());
    #[rustfmt::skip]
    let cases = [
        // (request, changes it, may create it)
        (res("update", "", "configmaps", "agents", "agent-policy"), true, false),
        (res("patch", "", "configmaps", "agents", "agent-policy"), true, false),
        (res("delete", "", "configmaps", "agents", "agent-policy"), true, false),
        (res("deletecollection", "", "configmaps", "agents", ""), true, false),
        (res("create", "", "configmaps", "agents", ""), false, true),
        (res("create", "", "configmaps", "agents", "agent-policy"), true, true),
        (res("create", "", "configmaps", "agents", "other"), false, true),
        (res("create", "", "configmaps", "other", ""), false, false),
        (res("update", "", "configmaps", "agents", "other"), false, false),
        (res("create", "example.com", "configmaps", "agents", ""), false, false),
        (res("get", "", "configmaps", "agents", "agent-policy"), false, false),
        (res("create", "", "configmaps/status", "agents", "agent-policy"), false, false),
    ];
    for (info, changes, creates) in cases {
        assert_eq!(own.is_changed_by(&info), changes, "{info:?}");
        assert_eq!(own.may_be_created_by(&info), creates, "{info:?}");
    }
    let cases = [
        (json!({"metadata": {"name": "agent-policy"}}), true),
        (json!({"metadata": {"name": "other"}}), false),
        // A name wins over generateName, as in the API server.
        (
            json!({"metadata": {"name": "other", "generateName": "agent-p"}}),
            false,
        ),
        (
            json!({"metadata": {"name": "", "generateName": "agent-p"}}),
            true,
        ),
        (json!({"metadata": {"generateName": "agent-p"}}), true),
        (json!({"metadata": {"generateName": "agent-po"}}), false),
        (json!({"metadata": {"generateName": "agent-"}}), false),
        (json!({"metadata": {"generateName": "other-p"}}), false),
        (json!({"metadata": {}}), false),
        (json!({}), false),
        (json!({"metadata": {"name": 7}}), false),
    ];
    for (object, named) in cases {
        assert_eq!(own.is_named_by(&object), named, "{object}");
    }
    // A generateName longer than 58 bytes is cut before the five characters are added.
    let long = OwnObject::policy("agents".into(), format!("{}abcde", "p".repeat(58)));
    let object = json!({"metadata": {"generateName": "p".repeat(70)}});
    assert!(long.is_named_by(&object));

    // A Secret the proxy runs with is told apart among Secrets, not ConfigMaps.
    let tls = OwnObject {
        resource: "secrets",
        namespace: "agents".into(),
        name: "chaperone-proxy-tls".into(),
        what: "the Secret of chaperone's serving certificate",
    };
    assert!(tls.is_changed_by(&res(
        "patch",
        "",
        "secrets",
        "agents",
        "chaperone-proxy-tls"
    )));
    assert!(tls.is_changed_by(&res("deletecollection", "", "secrets", "agents", "")));
    assert!(tls.may_be_created_by(&res("create", "", "secrets", "agents", "")));
    assert!(!tls.is_changed_by(&res(
        "patch",
        "",
        "configmaps",
        "agents",
        "chaperone-proxy-tls"
    )));
    assert!(!tls.is_changed_by(&res("deletecollection", "", "configmaps", "agents", "")));
    assert_eq!(tls.kind(), "Secret");

    // Each refusal names the object it protects.
    let policies = Policies::unconfigured().protecting(vec![own.clone(), tls]);
    let u = who("u", &[]);
    let refused = policies.in_force().authorize(
        &u,
        &res("delete", "", "secrets", "agents", "chaperone-proxy-tls"),
        None,
    );
    assert_eq!(refused.rule(), OWN_POLICY);
    assert!(
        refused
            .to_text()
            .starts_with("the Secret of chaperone's serving certificate cannot be changed"),
        "{}",
        refused.to_text()
    );
    let refused = policies.in_force().authorize(
        &u,
        &res("delete", "", "configmaps", "agents", "agent-policy"),
        None,
    );
    assert!(refused
        .to_text()
        .starts_with("the ConfigMap chaperone's policy comes from"));
    let created = json!({"metadata": {"name": "agent-policy"}});
    let create = res("create", "", "configmaps", "agents", "");
    assert_eq!(policies.may_create_own(&create), Some(&own));
    assert_eq!(policies.own_created(&create, &created), Some(&own));
    assert_eq!(
        policies.own_created(&create, &json!({"metadata": {"name": "x"}})),
        None
    );
    assert_eq!(
        policies.may_create_own(&res("create", "", "pods", "agents", "")),
        None
    );
}

/// Which writes are read for the keys that take pods out of chaperone, and where in a
/// sent object or patch those keys are found.
#[test]
fn the_injection_keys_are_found_however_they_are_sent() {
    use serde_json::json;
    #[rustfmt::skip]
    let cases = [
        (res("create", "", "pods", "ns", ""), true),
        (res("patch", "", "pods", "ns", "p"), true),
        (res("update", "apps", "deployments", "ns", "d"), true),
        (res("create", "batch", "cronjobs", "ns", ""), true),
        (res("patch", "", "namespaces", "", "ns"), true),
        (res("get", "", "pods", "ns", "p"), false),
        (res("delete", "", "pods", "ns", "p"), false),
        (res("create", "", "pods/eviction", "ns", "p"), false),
        (res("patch", "apps", "deployments/scale", "ns", "d"), false),
        (res("create", "", "configmaps", "ns", ""), false),
        // A custom resource (or an aggregated API's object) may template pods anywhere;
        // Kubernetes' own groups but the workloads' do not.
        (res("create", "example.com", "pods", "ns", ""), true),
        (res("patch", "argoproj.io", "rollouts", "ns", "r"), true),
        (res("update", "kubevirt.io", "virtualmachines", "ns", "vm"), true),
        (res("create", "extensions", "deployments", "ns", ""), true),
        (res("update", "example.com", "widgets/status", "ns", "w"), false),
        (res("delete", "example.com", "widgets", "ns", "w"), false),
        (res("create", "rbac.authorization.k8s.io", "roles", "ns", ""), false),
        (res("patch", "networking.k8s.io", "ingresses", "ns", "i"), false),
        (res("create", "autoscaling", "horizontalpodautoscalers", "ns", ""), false),
    ];
    for (info, reads) in cases {
        assert_eq!(shapes_injection(&info), reads, "{info:?}");
    }
    let found = [
        json!({"metadata": {"labels": {"chaperone.dev/inject": "false"}}}),
        json!({"spec": {"template": {"metadata": {"annotations": {"chaperone.dev/policy": "mine"}}}}}),
        json!({"spec": {"jobTemplate": {"spec": {"template": {"metadata": {"labels": {"chaperone.dev/inject": "false"}}}}}}}),
        json!({"metadata": {"labels": {"chaperone.dev/inject": null}}}),
        json!([{"op": "add", "path": "/metadata/labels/chaperone.dev~1inject", "value": "false"}]),
        json!([{"op": "remove", "path": "/metadata/labels/chaperone.dev~1inject"}]),
        json!([{"op": "add", "path": "/metadata/labels", "value": {"chaperone.dev/policy": "x"}}]),
        json!({"spec": {"template": {"spec": {"hostNetwork": true}}}}),
        json!([{"op": "add", "path": "/spec/hostNetwork", "value": true}]),
    ];
    for v in found {
        assert!(injection_key_in(&v).is_some(), "{v}");
    }
    let policy_in_a_path = json!([{"op": "add", "path": "/spec/template/metadata/annotations/chaperone.dev~1policy", "value": "x"}]);
    assert_eq!(
        injection_key_in(&policy_in_a_path),
        Some("chaperone.dev/policy")
    );
    let clean = [
        json!({"metadata": {"labels": {"app": "web", "chaperone.dev/injected-version": "1"}}}),
        json!({"spec": {"containers": [{"env": [{"name": "NOTE", "value": "chaperone.dev/inject docs"}]}]}}),
        json!([{"op": "replace", "path": "/spec/replicas", "value": 3}]),
        json!({"spec": {"hostNetwork": false}}),
    ];
    for v in clean {
        assert_eq!(injection_key_in(&v), None, "{v}");
    }
    // In protobuf, whatever varints come before the key.
    for bytes in [
        &b"\x0a\x14chaperone.dev/inject\x12\x05false"[..],
        b"\x8a\x00\x94\x00chaperone.dev/inject\x12\x05false",
        b"\x0a\x14chaperone.dev/policy\x12\x04mine",
    ] {
        assert!(injection_key_in_bytes(bytes).is_some(), "{bytes:?}");
    }
    assert_eq!(
        injection_key_in_bytes(b"\x0a\x1echaperone.dev/injected-version\x12\x011"),
        None
    );
    // A namespace is never changed through chaperone: leaving its label out of an
    // update would turn injection off as surely as setting it.
    for (info, changes) in [
        (res("patch", "", "namespaces", "", "team-a"), true),
        (res("update", "", "namespaces/status", "", "team-a"), true),
        (res("update", "", "namespaces/finalize", "", "team-a"), true),
        (res("get", "", "namespaces", "", "team-a"), false),
        (res("create", "", "namespaces", "", ""), false),
    ] {
        assert_eq!(changes_namespace(&info), changes, "{info:?}");
    }
    let p = Policies::unconfigured();
    let refused = p.in_force().authorize(
        &who("u", &[]),
        &res("patch", "", "namespaces", "", "team-a"),
        None,
    );
    assert_eq!(refused.rule(), STAY_INJECTED);
    // Live objects an administrator took out of chaperone, or on the node's network.
    let out = [
        json!({"metadata": {"labels": {"chaperone.dev/inject": "false"}}}),
        json!({"spec": {"template": {"metadata": {"annotations": {"chaperone.dev/inject": "false"}}}}}),
        json!({"spec": {"jobTemplate": {"spec": {"template": {"metadata": {"labels": {"chaperone.dev/inject": "false"}}}}}}}),
        json!({"spec": {"hostNetwork": true}}),
        json!({"spec": {"template": {"spec": {"hostNetwork": true}}}}),
        json!({"template": {"metadata": {"labels": {"chaperone.dev/inject": "false"}}}}),
        // A custom resource's templates, wherever it keeps them.
        json!({"spec": {"workload": {"podTemplate": {"metadata": {"labels": {"chaperone.dev/inject": "false"}}}}}}),
        json!({"spec": {"replicaSpecs": [{"template": {"metadata": {"annotations": {"chaperone.dev/inject": "false"}}}}]}}),
        json!({"spec": {"template": {"spec": {"template": {"spec": {"hostNetwork": true}}}}}}),
        // Labels and annotations under any name (Prometheus' `podMetadata`, CloudNativePG's
        // `inheritedMetadata`, Spark's `driver.annotations`).
        json!({"spec": {"podMetadata": {"annotations": {"chaperone.dev/inject": "false"}}}}),
        json!({"spec": {"driver": {"labels": {"chaperone.dev/inject": "false"}}}}),
    ];
    for v in out {
        assert!(opts_out(&v, false) && opts_out(&v, true), "{v}");
    }
    let clean = [
        json!({"metadata": {"labels": {"chaperone.dev/inject": "true"}}}),
        json!({"spec": {"template": {"metadata": {"annotations": {"chaperone.dev/policy": "readonly"}}}}}),
        json!({"spec": {"hostNetwork": false}}),
        json!({"metadata": {"managedFields": [{"fieldsV1": {"f:spec": {"f:hostNetwork": {}}}}]}}),
        json!({"spec": {"values": "replicas: 2\npodAnnotations: {chaperone.dev/policy: readonly}\n"}}),
        json!({"spec": {"description": "runs on the pod's own network", "values": "hostNetwork: false"}}),
    ];
    for v in clean {
        assert!(!opts_out(&v, false) && !opts_out(&v, true), "{v}");
    }
    // In a custom resource, text an operator renders (Helm values) counts; in a
    // Kubernetes object, text is only text (an env value, a last-applied annotation).
    for v in [
        json!({"spec": {"source": {"helm": {"values": "podLabels:\n  chaperone.dev/inject: \"false\"\n"}}}}),
        json!({"spec": {"values": "controller:\n  hostNetwork: true\n"}}),
        json!({"spec": {"set": ["hostNetwork=true"]}}),
        json!({"spec": {"values": {"hostNetwork": "yes"}}}),
        json!({"spec": {"values": {"podLabels": {"chaperone.dev/inject": false}}}}),
        json!({"spec": {"parameters": [{"name": "hostNetwork", "value": "true"}]}}),
    ] {
        assert!(opts_out(&v, true) && !opts_out(&v, false), "{v}");
    }
}

/// What text names an injection key, as an operator might render it into pods: a key
/// named plainly or as a JSON pointer step, `hostNetwork` set to anything but false; and
/// only a custom resource's strings are read so.
#[test]
fn text_is_read_for_the_injection_keys_in_custom_resources_only() {
    use serde_json::json;
    #[rustfmt::skip]
    let cases = [
        ("podAnnotations:\n  chaperone.dev/inject: \"false\"", Some("chaperone.dev/inject")),
        ("- op: add\n  path: /metadata/annotations/chaperone.dev~1policy", Some("chaperone.dev/policy")),
        ("chaperone.dev/injected-version: 0.1.0", None),
        ("plain text", None),
        // Escapes, as a parser reads them; names in any reading.
        ("podLabels.chaperone\\.dev/inject=false", Some("chaperone.dev/inject")),
        ("{\"chaperone.dev\\/policy\": \"x\"}", Some("chaperone.dev/policy")),
        ("\"chaperone.dev/\\x69nject\": \"false\"", Some("chaperone.dev/inject")),
        ("\"chaperone.dev/\\U00000069nject\": \"false\"", Some("chaperone.dev/inject")),
        ("\"chaperone.dev/in\\\r\n  ject\": \"false\"", Some("chaperone.dev/inject")),
        ("? !!binary Y2hhcGVyb25lLmRldi9pbmplY3Q=\n: \"false\"", Some("chaperone.dev/inject")),
        // `hostNetwork` is false only as a YAML key given false (or ""), in a document
        // as libyaml reads it.
        ("hostNetwork: false", None),
        ("hostNetwork: False # not on the node", None),
        ("controller:\n  hostNetwork: false\n  replicas: 2\n", None),
        ("{\n  \"hostNetwork\": false,\n  \"replicas\": 2\n}", None),
        ("- hostNetwork: false\n  replicas: 2\n", None),
        ("hostNetwork: false\r\nreplicas: 2\r\n", None),
        ("hostNetwork:\n  false", None),
        ("hostNetwork: \"\"", None),
        ("hostNetworkMode: bridge", None),
        ("/spec/hostNetworkPolicy", None),
        ("hostNetwork: true", Some("hostNetwork")),
        ("hostNetwork:yes", Some("hostNetwork")),
        ("\"hostNetwork\": \"{{ .Values.net }}\"", Some("hostNetwork")),
        // `no`, `off` and `0` are false to YAML 1.1 but not to every reader.
        ("hostNetwork: off", Some("hostNetwork")),
        ("{hostNetwork: 0, replicas: 2}", Some("hostNetwork")),
        ("hostNetwork: ~", Some("hostNetwork")),
        // Strings to YAML, true in a chart's `if`.
        ("hostNetwork: 'off'", Some("hostNetwork")),
        ("hostNetwork: \"false\"", Some("hostNetwork")),
        ("hostNetwork: false!", Some("hostNetwork")),
        ("hostNetwork: o\\ff", Some("hostNetwork")),
        ("hostNetwork: \\\"\\\"", Some("hostNetwork")),
        ("hostNetwork: false#x", Some("hostNetwork")),
        ("hostNetwork: false,x", Some("hostNetwork")),
        ("hostNetwork: false}", Some("hostNetwork")),
        ("\"hostNetwork\": false, x", Some("hostNetwork")),
        ("hostNetwork: false\n  true", Some("hostNetwork")),
        ("{hostNetwork: false\nx}", Some("hostNetwork")),
        ("hostNetwork: false\r  x", Some("hostNetwork")),
        ("hostNetwork: false\u{a0}", Some("hostNetwork")),
        ("hostNetwork: ''''", Some("hostNetwork")),
        // Set in other ways YAML reads: escapes, explicit keys, aliases, merges.
        ("\"host\\x4eetwork\": true", Some("hostNetwork")),
        ("{\"host\\u004eetwork\": true}", Some("hostNetwork")),
        ("\"host\\\r\n  Network\": true", Some("hostNetwork")),
        ("? hostNetwork\n: true", Some("hostNetwork")),
        ("a: &k hostNetwork\n*k : true", Some("hostNetwork")),
        ("<<: {hostNetwork: true}", Some("hostNetwork")),
        ("hostNetwork: false\nhostNetwork: true", Some("hostNetwork")),
        ("hostNetwork: false\n---\nhostNetwork: true", Some("hostNetwork")),
        // Anything else naming it: `--set` lines, paths, templates, prose.
        ("--set controller.hostNetwork=true", Some("hostNetwork")),
        ("hostNetwork=false", Some("hostNetwork")),
        ("hostNetwork[0]=false", Some("hostNetwork")),
        ("- op: add\n  path: /spec/template/spec/hostNetwork\n  value: true", Some("hostNetwork")),
        ("toFieldPath: spec.hostNetwork", Some("hostNetwork")),
        ("{{ if .Values.hostNetwork }}", Some("hostNetwork")),
        ("{{ index .Values \"hostNetwork\" }}", Some("hostNetwork")),
        ("hostNetwork == false", Some("hostNetwork")),
        ("the hostNetwork setting", Some("hostNetwork")),
        // Tags that hide text, however spelled; escaped breaks of every kind.
        ("? !!%62inary aG9zdE5ldHdvcms=\n: true", Some("chaperone.dev/inject")),
        ("%TAG !e! tag:yaml.org,2002:bi\n---\n!e!nary aG9zdE5ldHdvcms=: true", Some("chaperone.dev/inject")),
        ("x: 1\nx: 1\n\"host\\\u{2028}Network\": true", Some("hostNetwork")),
        ("expr: rate(x{job!=\"a\"}[5m]) > 90 # percent: 90%", None),
        ("? !<tag:yaml.org,2002:binary> Y2hhcGVyb25lLmRldi9pbmplY3Q=\n: \"false\"", Some("chaperone.dev/inject")),
        ("\"\\\\x0chaperone.dev/inj\\x65ct\": x", Some("chaperone.dev/inject")),
        ("{?!!binary Y2hhcGVyb25lLmRldi9pbmplY3Q=: x}", Some("chaperone.dev/inject")),
        ("a: 1\n\u{feff}!!binary Y2hhcGVyb25lLmRldi9pbmplY3Q=: x", Some("chaperone.dev/inject")),
        ("hostNetwork: false\na: &a [x, *a]", Some("hostNetwork")),
        // Go's encoding/json matches a field's name in any case, `ſ` as `s`.
        ("hostnetwork: true", Some("hostNetwork")),
        ("ho\u{17f}tNetwork: true", Some("hostNetwork")),
        ("HostNetwork: false", Some("hostNetwork")),
        // A string inside the text is read as the text is, as a chart may render it
        // again: decoded, and for tags; decoded again where decoding changes it.
        ("extra: '\"\\x68ostNetwork\": true'", Some("hostNetwork")),
        ("extra: |\n  \"\\x68ostNetwork\": true\nhostNetwork: false", Some("hostNetwork")),
        ("podLabels: \"\\x21\\x21binary Y2hhcGVyb25lLmRldi9pbmplY3Q=: \\\"false\\\"\"", Some("chaperone.dev/inject")),
        ("\"\\\\x63haperone.dev/inject\": x", Some("chaperone.dev/inject")),
        ("hostNetwork: false\nx: [[[[]]]]", None),
    ];
    for (text, found) in cases {
        assert_eq!(injection_key_in_text(text), found, "{text}");
    }
    // Aliases copy what they name: a string with many is not parsed, and is taken to
    // set `hostNetwork` if it names it, at once (a parse would take gigabytes).
    let items = vec!["x"; 10_000].join(",");
    let aliases = vec!["*a"; 10_000].join(",");
    let bomb = format!("a: &a [{items}]\nb: [{aliases}]\nhostNetwork: false\n");
    assert_eq!(injection_key_in_text(&bomb), Some("hostNetwork"));
    assert_eq!(
        injection_key_in_text(&bomb.replace("hostNetwork", "replicas")),
        None
    );
    // Nested: anchors of aliases multiply. More than one anchor is not parsed.
    let mut nested = format!("a: &a [{}]\n", vec!["x"; 30_000].join(","));
    for (level, below) in ["b", "c", "d", "e", "f", "g", "h", "i", "j", "k"]
        .iter()
        .zip("abcdefghij".chars())
    {
        nested.push_str(&format!("{level}: &{level} [*{below},*{below},*{below}]\n"));
    }
    nested.push_str("hostNetwork: false\n");
    assert_eq!(injection_key_in_text(&nested), Some("hostNetwork"));
    // Many flow collections are not parsed (libyaml slows with the square of their
    // depth), however their brackets close: nested, or hidden behind comments.
    let nested = format!(
        "hostNetwork: false\nx: {}{}",
        "[".repeat(1025),
        "]".repeat(1025)
    );
    assert_eq!(injection_key_in_text(&nested), Some("hostNetwork"));
    let commented = format!("hostNetwork: false\nx: {}", "[#]\n".repeat(1025));
    assert_eq!(injection_key_in_text(&commented), Some("hostNetwork"));
    let few = format!(
        "hostNetwork: false\nx: {}{}",
        "[".repeat(100),
        "]".repeat(100)
    );
    assert_eq!(injection_key_in_text(&few), None);
    // Tags are found in one pass: a string of `!` is read at once.
    assert_eq!(injection_key_in_text(&"!".repeat(200_000)), None);
    let values = json!({"spec": {"source": {"helm": {"values": "hostNetwork: true"}}}});
    let custom = res("create", "argoproj.io", "applications", "ns", "");
    let configmap = res("create", "", "configmaps", "ns", "");
    assert_eq!(injection_key_sent(&custom, &values), Some("hostNetwork"));
    assert_eq!(injection_key_sent(&configmap, &values), None);
    // Structured too: a custom resource's field in any case, a pod's as written (the API
    // server decodes Kubernetes' own objects case-sensitively).
    let cased = json!({"spec": {"podSpec": {"HostNetwork": true}}});
    assert_eq!(injection_key_sent(&custom, &cased), Some("hostNetwork"));
    assert_eq!(
        injection_key_sent(&res("create", "", "pods", "ns", ""), &cased),
        None
    );
    assert!(opts_out(&cased, true) && !opts_out(&cased, false));
    let env = json!({"spec": {"containers": [{"env": [{"name": "NOTE", "value": "hostNetwork: true"}]}]}});
    assert_eq!(
        injection_key_sent(&res("create", "", "pods", "ns", ""), &env),
        None
    );
    // A merge patch removing `hostNetwork` leaves a pod on its own network; in a custom
    // resource's values it may bring back a chart's default.
    let removed = json!({"spec": {"hostNetwork": null}});
    assert_eq!(injection_key_in(&removed), None);
    assert_eq!(injection_key_sent(&custom, &removed), Some("hostNetwork"));
    // A setting written as a name and a value (Argo CD's Helm parameters).
    for (parameter, found) in [
        (
            json!({"name": "controller.hostNetwork", "value": "true"}),
            Some("hostNetwork"),
        ),
        (json!({"name": "hostNetwork", "value": "false"}), None),
        (
            json!({"name": "hostNetwork", "value": "off"}),
            Some("hostNetwork"),
        ),
        (
            json!({"name": "hostNetwork", "value": "false", "forceString": true}),
            Some("hostNetwork"),
        ),
        (
            json!({"name": "x=1,hostNetwork", "value": "true"}),
            Some("hostNetwork"),
        ),
        (
            json!({"name": "hostNetwork[0]", "value": "false"}),
            Some("hostNetwork"),
        ),
        (
            json!({"name": "podLabels.chaperone\\.dev/inject", "value": "false"}),
            Some("chaperone.dev/inject"),
        ),
        // A value naming it is text naming it.
        (
            json!({"name": "replicas", "value": "hostNetwork"}),
            Some("hostNetwork"),
        ),
        (json!({"name": "replicas", "value": "2"}), None),
        // Go's encoding/json takes the field in any case, the last one written.
        (
            json!({"name": "hostNetwork", "value": "false", "VALUE": "true"}),
            Some("hostNetwork"),
        ),
        (
            json!({"name": "hostNetwork", "value": "false", "forcestring": true}),
            Some("hostNetwork"),
        ),
    ] {
        let app = json!({"spec": {"source": {"helm": {"parameters": [parameter]}}}});
        assert_eq!(injection_key_sent(&custom, &app), found, "{app}");
    }
}

/// Several `approve` rules matching one request: each approval setting is the strictest
/// of theirs, whichever comes first in the file.
#[test]
fn overlapping_approve_rules_give_their_strictest_settings_in_any_order() {
    let quick = r#"
  - name: quick-for-devs
    subjects: {groups: [dev]}
    apiGroups: ["*"]
    resources: ["*"]
    verbs: [delete]
    action: approve
    approval: {hold: 5m, grant: 1h, approvers: 1, skipGroups: [dev], breakGlassGroups: [sre, dev]}
"#;
    let careful = r#"
  - name: two-for-prod
    subjects: {users: ["*"]}
    apiGroups: ["*"]
    resources: ["*"]
    verbs: [delete]
    namespaces: [prod]
    action: approve
    approval: {hold: 2m, grant: 10m, approvers: 2, breakGlassGroups: [sre]}
"#;
    let dev = who("alice", &["dev"]);
    for rules in [[quick, careful], [careful, quick]] {
        let p = policy(&format!("  rules:{}{}", rules[0], rules[1]));
        let d = authorize(&p, &dev, &res("delete", "", "pods", "prod", "web"), None);
        let a = d.approval().expect("an approve decision");
        assert_eq!(a.approvers.get(), 2, "{}", d.rule());
        assert_eq!(a.hold.0, std::time::Duration::from_secs(120));
        assert_eq!(a.grant.0, std::time::Duration::from_secs(600));
        assert!(!a.skips(&dev), "{}", d.rule());
        let glass: Vec<&str> = a.break_glass_groups.iter().map(|g| g.0.as_str()).collect();
        assert_eq!(glass, ["sre"]);
        // Where only one matches, its settings stand.
        let d = authorize(&p, &dev, &res("delete", "", "pods", "dev", "web"), None);
        let a = d.approval().expect("an approve decision");
        assert_eq!((a.approvers.get(), a.skips(&dev)), (1, true));
    }
}

/// A review asking about `*` is about all of it: a deny or approve taking part of it is
/// found, whatever it names; one that takes none of it, an allow, or an audit-mode rule,
/// is not; a question without a wildcard is enforcement's to answer.
#[test]
fn a_wildcard_question_finds_the_rule_that_restricts_part_of_it() {
    let p = policy(
        r#"
  rules:
  - name: everything
    subjects: {users: ["*"]}
    apiGroups: ["*"]
    resources: ["*"]
    verbs: ["*"]
    action: allow
  - name: trial
    subjects: {users: ["*"]}
    apiGroups: [apps]
    resources: [deployments]
    verbs: [delete]
    mode: audit
    action: deny
  - name: hold-scale
    subjects: {users: ["*"]}
    apiGroups: [apps]
    resources: ["*/scale"]
    verbs: [update]
    action: approve
  - name: not-db-root
    subjects: {users: ["*"]}
    apiGroups: [""]
    resources: [secrets]
    resourceNames: [db-root]
    verbs: [get, list, watch]
    namespaces: [prod]
    action: deny
"#,
    );
    let alice = who("alice", &[]);
    let asked = |verb: &str, group: &str, resource: &str, ns: &str| {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        RequestInfo::from_attributes(crate::request_info::Attributes {
            verb,
            group,
            version: "",
            namespace: ns,
            resource,
            subresource,
            name: "",
        })
    };
    let restricting = |info: &RequestInfo| {
        super::eval::restricting_part(&p, &alice, info).map(|m| m.name.clone())
    };
    #[rustfmt::skip]
    let cases: Vec<(RequestInfo, Option<&str>)> = vec![
        (asked("*", "*", "*", "prod"), Some("not-db-root")),
        (asked("get", "", "*", "prod"), Some("not-db-root")),
        (asked("*", "*", "*", "dev"), Some("hold-scale")),
        (asked("update", "apps", "*", "dev"), Some("hold-scale")),
        (asked("*", "apps", "deployments", "dev"), None),
        (asked("get", "*", "pods", "prod"), None),
        // No wildcard: enforcement's answer stands.
        (asked("get", "", "secrets", "prod"), None),
    ];
    for (info, want) in cases {
        assert_eq!(restricting(&info).as_deref(), want, "{info:?}");
    }
}

/// The shipped `idp-groups.yaml`: an SRE lead skips review of an ordinary change, but not
/// of one that grants more than it changes (a binding, a token), where a second approve
/// rule without skipGroups matches too.
#[test]
fn idp_groups_lets_sre_leads_skip_review_except_for_what_grants_more() {
    let text = include_str!("../../policies/idp-groups.yaml");
    let (policy, _) = parse(text, "policies/idp-groups.yaml").unwrap();
    let lead = who("lee@example.com", &["oidc:sre", "oidc:sre-leads"]);
    let skipped = |info: &RequestInfo| {
        let d = super::decide(&policy, &lead, info, Commands::Sent(None));
        assert_eq!(d.action(), Action::Approve, "{info:?}");
        d.approval().is_some_and(|a| a.skips(&lead))
    };
    assert!(skipped(&res(
        "patch",
        "apps",
        "deployments",
        "prod-shop",
        "web"
    )));
    let binding = res(
        "create",
        "rbac.authorization.k8s.io",
        "clusterrolebindings",
        "",
        "",
    );
    assert!(!skipped(&binding));
    let token = res(
        "create",
        "",
        "serviceaccounts/token",
        "prod-shop",
        "deployer",
    );
    assert!(!skipped(&token));
}
