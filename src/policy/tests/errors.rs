//! Errors (with file, line, column and field) and lint warnings, one table each.

use super::*;

/// A rule with the given extra lines after `name: r`; `subjects`, `verbs` and `action` are
/// added unless the extra lines set them.
fn rule(lines: &str) -> String {
    let mut out = String::from("  rules:\n  - name: r\n");
    for (key, default) in [
        ("subjects", "subjects: {users: [u]}"),
        ("verbs", "verbs: [get]"),
        ("action", "action: allow"),
    ] {
        if !lines.contains(&format!("{key}:")) {
            out.push_str(&format!("    {default}\n"));
        }
    }
    for line in lines.lines() {
        out.push_str(&format!("    {line}\n"));
    }
    out
}

const PODS: &str = "apiGroups: [\"\"]\nresources: [pods]";

#[test]
fn errors_name_file_line_column_and_field() {
    #[rustfmt::skip]
    let cases: Vec<(String, &str)> = vec![
        // document
        ("apiVersion: v1\nkind: Policy\nmetadata: {name: x}\nspec: {}\n".into(), "t.yaml:1:13: apiVersion: unsupported apiVersion \"v1\""),
        ("apiVersion: chaperone.dev/v1alpha1\nkind: Role\nmetadata: {name: x}\nspec: {}\n".into(), "t.yaml:2:7: kind: unknown variant `Role`"),
        (format!("{HEADER}  rulez: []\n"), "t.yaml:6:3: spec: unknown field `rulez`"),
        (format!("{HEADER}  mode: dryrun\n"), "t.yaml:6:9: spec.mode: unknown variant `dryrun`"),
        ("apiVersion: chaperone.dev/v1alpha1\nkind: Policy\nmetadata: {name: \"\"}\nspec: {}\n".into(), "t.yaml:3:18: metadata.name: must not be empty"),
        // single values
        (format!("{HEADER}{}", rule(&format!("{PODS}\nverbs: [get, gett]"))), "t.yaml:12:18: spec.rules[0].verbs[1]: unknown variant `gett`"),
        (format!("{HEADER}{}", rule("apiGroups: [\"\"]\nresources: [pods/*]")), "t.yaml:12:17: spec.rules[0].resources[0]: resource \"pods/*\" is not supported: RBAC matches"),
        (format!("{HEADER}{}", rule("apiGroups: [\"\"]\nresources: [Pods]")), "spec.rules[0].resources[0]: resource \"Pods\" is not a lowercase plural"),
        (format!("{HEADER}{}", rule("apiGroups: [\"\"]\nresources: [deployments.apps]")), "give the API group in apiGroups"),
        (format!("{HEADER}{}", rule("apiGroups: [apps/v1]\nresources: [deployments]")), "spec.rules[0].apiGroups[0]: apiGroup \"apps/v1\" has a version"),
        (format!("{HEADER}{}", rule("apiGroups: [core]\nresources: [pods]")), "the core group is \"\""),
        (format!("{HEADER}{}", rule(&format!("{PODS}\nresourceNames: [web-*]"))), "resourceNames are exact names"),
        (format!("{HEADER}{}", rule(&format!("{PODS}\nnamespaces: [\"\"]"))), "spec.rules[0].namespaces[0]: namespace \"\" is ambiguous"),
        (format!("{HEADER}{}", rule(&format!("{PODS}\nnamespaces: [Team_A]"))), "is not a namespace name or glob"),
        (format!("{HEADER}{}", rule("nonResourceURLs: [healthz]")), "must start with '/'"),
        (format!("{HEADER}{}", rule("nonResourceURLs: [/a/*/b]")), "only a trailing '*' is a wildcard"),
        (format!("{HEADER}{}", rule(&format!("{PODS}\nsubjects: {{serviceAccounts: [default]}}"))), "is not `namespace/name`"),
        (format!("{HEADER}{}", rule("apiGroups: [\"\"]\nresources: [pods/exec]\ncommands: [[\"**\", ls]]")), "`**` must be a whole argument, and the last one"),
        (format!("{HEADER}{}", rule("apiGroups: [\"\"]\nresources: [pods/exec]\ncommands: [[]]")), "command pattern must not be empty"),
        (format!("{HEADER}{}", rule(&format!("{PODS}\naction: approve\napproval: {{hold: 0s}}"))), "spec.rules[0].approval.hold: duration \"0s\" is not a positive duration"),
        (format!("{HEADER}{}", rule(&format!("{PODS}\naction: approve\napproval: {{approvers: 0}}"))), "spec.rules[0].approval.approvers: invalid value: integer `0`"),
        (format!("{HEADER}{}", rule(&format!("{PODS}\naction: maybe"))), "spec.rules[0].action: unknown variant `maybe`"),
        (format!("{HEADER}{}", rule(&format!("{PODS}\nverb: [get]"))), "t.yaml:13:5: spec.rules[0]: unknown field `verb`"),
        // across fields, located by re-reading the text
        (format!("{HEADER}{}", rule(PODS) + "  - name: r\n    subjects: {users: [u]}\n    apiGroups: [\"\"]\n    resources: [pods]\n    verbs: [get]\n    action: deny\n"), "t.yaml:13:5: spec.rules[1].name: duplicate rule name \"r\" (first at line 7)"),
        (format!("{HEADER}{}", rule(&format!("{PODS}\nsubjects: {{}}"))), "t.yaml:12:5: spec.rules[0].subjects: must name at least one user, group or service account"),
        (format!("{HEADER}{}", rule(&format!("{PODS}\nverbs: []"))), "t.yaml:12:5: spec.rules[0].verbs: must name at least one verb"),
        (format!("{HEADER}{}", rule(&format!("{PODS}\nnonResourceURLs: [/healthz]"))), "t.yaml:12:5: spec.rules[0].resources: cannot be combined with nonResourceURLs"),
        (format!("{HEADER}{}", rule("nonResourceURLs: [/healthz]\nnamespaces: [a]")), "spec.rules[0].namespaces: cannot be combined with nonResourceURLs"),
        (format!("{HEADER}{}", rule("apiGroups: [\"\"]")), "spec.rules[0].resources: a rule must name resources (with apiGroups) or nonResourceURLs"),
        (format!("{HEADER}{}", rule("resources: [pods]")), "t.yaml:7:5: spec.rules[0].apiGroups: is required with resources"),
        (format!("{HEADER}{}", rule(&format!("{PODS}\nverbs: [post]"))), "spec.rules[0].verbs: \"post\" is an HTTP method"),
        (format!("{HEADER}{}", rule(&format!("{PODS}\nverbs: [create]\nresourceNames: [a]"))), "spec.rules[0].resourceNames: can never match"),
        (format!("{HEADER}{}", rule("apiGroups: [\"\"]\nresources: [pods/exec]\nverbs: [deletecollection]\nresourceNames: [a]")), "spec.rules[0].resourceNames: can never match"),
        (format!("{HEADER}{}", rule(&format!("{PODS}\ncommands: [[ps]]"))), "t.yaml:13:5: spec.rules[0].commands: only applies to resources [\"pods/exec\"]"),
        (format!("{HEADER}{}", rule("apiGroups: [\"\"]\nresources: [pods/attach]\ncommands: [[ps]]")), "pods/attach joins the running process"),
        (format!("{HEADER}{}", rule(&format!("{PODS}\nnamespaces: []"))), "spec.rules[0].namespaces: is empty: omit it"),
        // A field whose omission means "any", given no value, is not read as omitted.
        (format!("{HEADER}{}", rule(&format!("{PODS}\nnamespaces:"))), "t.yaml:7:5: spec.rules[0]: namespaces has no value: omit it to match any namespace, or list what it matches"),
        (format!("{HEADER}{}", rule(&format!("{PODS}\nnamespaces: ~"))), "spec.rules[0]: namespaces has no value"),
        (format!("{HEADER}{}", rule(&format!("{PODS}\nnamespaces: null"))), "spec.rules[0]: namespaces has no value"),
        (format!("{HEADER}{}", rule("apiGroups: [\"\"]\nresources: [pods/exec]\nverbs: [create]\ncommands:")), "spec.rules[0]: commands has no value: omit it to match any command"),
        (format!("{HEADER}{}", rule(&format!("{PODS}\nresourceNames:"))), "spec.rules[0]: resourceNames has no value: omit it to match any name"),
        (format!("{HEADER}{}", rule(&format!("{PODS}\nresourceNames: ~"))), "spec.rules[0]: resourceNames has no value: omit it to match any name"),
        (format!("{HEADER}{}", rule(&format!("{PODS}\napproval: {{}}"))), "spec.rules[0].approval: is only meaningful with `action: approve`"),
        // masking
        (format!("{HEADER}  masking:\n  - resources: [secrets]\n    detectors: [jwt, tls-key]\n"), "t.yaml:8:22: spec.masking[0].detectors[1]: unknown variant `tls-key`"),
        (format!("{HEADER}  masking:\n  - resources: [secrets]\n"), "t.yaml:7:5: spec.masking[0].fields: a masking entry needs fields, detectors or patterns"),
        (format!("{HEADER}  masking:\n  - resources: [secrets]\n    fields: [\"data[\"]\n"), "is not like `data.*`"),
        (format!("{HEADER}  masking:\n  - resources: [secrets]\n    patterns: [\"\"]\n"), "spec.masking[0].patterns[0]: must not be empty"),
        (format!("{HEADER}  masking:\n  - resources: [secrets]\n    detectors: [jwt]\n    keyRegex: \"^pass\"\n"), "spec.masking[0].keyRegex: narrows `fields`"),
        // tests
        (format!("{HEADER}  rules: []\ntests:\n- name: t\n  subject: {{user: a}}\n  request: {{verb: get, resource: pods}}\n  expect: allow\n  rule: nope\n"), "t.yaml:12:3: tests[0].rule: names no rule of this policy"),
        (format!("{HEADER}  rules: []\ntests:\n- name: t\n  subject: {{}}\n  request: GET /api\n  expect: allow\n"), "t.yaml:9:3: tests[0].subject: needs a user"),
        (format!("{HEADER}  rules: []\ntests:\n- name: t\n  subject: {{user: a}}\n  request: GET api\n  expect: allow\n"), "t.yaml:10:12: tests[0].request: request \"GET api\": path is not absolute"),
        (format!("{HEADER}  rules: []\ntests:\n- name: t\n  subject: {{user: a}}\n  request: {{verb: get, resourc: pods}}\n  expect: allow\n"), "tests[0].request: unknown field `resourc`"),
        (format!("{HEADER}  rules: []\ntests:\n- name: t\n  subject: {{user: a}}\n  request: {{verb: \"*\", resource: pods}}\n  expect: allow\n"), "t.yaml:10:3: tests[0].request: verb \"*\" is not the verb of a resource request"),
    ];
    let mut failures = Vec::new();
    for (text, want) in cases {
        match parse(&text, "t.yaml") {
            Ok(_) => failures.push(format!("no error, expected {want:?} for\n{text}")),
            Err(e) if !e.to_string().contains(want) => {
                failures.push(format!("got  {e}\nwant {want}\nfor\n{text}"))
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn load_names_the_file() {
    let e = load(std::path::Path::new("/nonexistent/policy.yaml"))
        .err()
        .map(|e| e.to_string());
    assert!(
        e.is_some_and(|e| e.starts_with("failed to read policy file /nonexistent/policy.yaml: "))
    );
}

#[test]
fn lint_warns_about_rules_that_are_probably_wrong() {
    let deny_secrets = "  - name: no-secrets\n    subjects: {users: [\"*\"]}\n    apiGroups: [\"\"]\n    resources: [secrets]\n    verbs: [\"*\"]\n    action: deny\n";
    #[rustfmt::skip]
    type Expected = Vec<(&'static str, &'static str, &'static str)>;
    let cases: Vec<(String, Expected)> = vec![
        (rule(PODS), vec![]),
        (rule("apiGroups: [chaperone.dev]\nresources: [accessrequests]"), vec![("r", "never-matches", "builtin:chaperone-resources")]),
        (rule(&format!("{PODS}\nverbs: [impersonate]")), vec![("r", "never-matches", "builtin:impersonate")]),
        (rule(&format!("{PODS}\nverbs: [get]\nresourceNames: [a]\naction: deny")), vec![("r", "weak-deny", "a `list` or `watch` of their collection returns them too")]),
        (rule(&format!("{PODS}\nverbs: [get, list, watch]\nresourceNames: [a]\naction: deny")), vec![]),
        (rule("apiGroups: [rbac.authorization.k8s.io]\nresources: [clusterroles]\nverbs: [bind, escalate]\nresourceNames: [cluster-admin]\naction: deny"), vec![("r", "never-matches", "its verbs never match: the API server checks them against chaperone's own credential")]),
        (rule("apiGroups: [certificates.k8s.io]\nresources: [signers]\nverbs: [get, approve]"), vec![("r", "never-matches", "verbs approve never match")]),
        (rule("nonResourceURLs: [/healthz]\nverbs: [list]"), vec![("r", "never-matches", "HTTP-method verbs")]),
        (rule("apiGroups: [\"\"]\nresources: [nodes]\nnamespaces: [default]"), vec![("r", "never-matches", "cluster-scoped")]),
        (rule("apiGroups: [\"\"]\nresources: [nodes]\nnamespaces: [default, <cluster>]"), vec![]),
        (rule(&format!("{PODS}\nverbs: [get, create]\nresourceNames: [a]")), vec![("r", "never-matches", "create requests carry no object name")]),
        // A create on a subresource names its object (`kubectl create token builder`).
        (rule("apiGroups: [\"\"]\nresources: [serviceaccounts/token]\nverbs: [get, create]\nresourceNames: [builder]"), vec![]),
        (rule("apiGroups: [\"\"]\nresources: [\"*\"]\nverbs: [create, deletecollection]\nresourceNames: [a]\naction: allow"), vec![("r", "broad-grant", "grants writes to namespaces"), ("r", "broad-grant", "allows pods/exec without `commands`"), ("r", "broad-grant", "grants nodes/proxy"), ("r", "never-matches", "deletecollection requests carry no object name")]),
        // A deny naming objects takes a deletecollection of their collection.
        (rule("apiGroups: [\"\"]\nresources: [\"*\"]\nverbs: [create, deletecollection]\nresourceNames: [a]\naction: deny"), vec![]),
        (rule(&format!("{PODS}\nmode: audit")), vec![("r", "no-effect", "audit-mode allow")]),
        // shadowed
        (format!("{}{deny_secrets}", rule("apiGroups: [\"\"]\nresources: [secrets]\nverbs: [get]\nnamespaces: [team-a]")), vec![("r", "shadowed", "deny rule \"no-secrets\" (line 14)")]),
        (format!("{}{deny_secrets}", rule("apiGroups: [\"\"]\nresources: [secrets, pods]")), vec![]),
        (format!("{}{deny_secrets}", rule("apiGroups: [\"\", apps]\nresources: [secrets]")), vec![]),
        (format!("{}{}", rule(PODS), "  - name: hold-pods\n    subjects: {groups: [\"*\"]}\n    apiGroups: [\"*\"]\n    resources: [\"*\"]\n    verbs: [get, list]\n    namespaces: [\"team-*\"]\n    action: approve\n"), vec![]),
        (format!("{}{}", rule(&format!("{PODS}\nnamespaces: [team-a]")), "  - name: hold-pods\n    subjects: {groups: [\"*\"]}\n    apiGroups: [\"*\"]\n    resources: [\"*\"]\n    verbs: [get, list]\n    namespaces: [\"team-*\"]\n    action: approve\n"), vec![("r", "shadowed", "approve rule \"hold-pods\"")]),
        (format!("{}{}", rule(&format!("{PODS}\nnamespaces: [team-a]")), "  - name: trial\n    subjects: {users: [u]}\n    apiGroups: [\"\"]\n    resources: [pods]\n    verbs: [\"*\"]\n    action: deny\n    mode: audit\n"), vec![]),
        // broad grants
        // `get` on `*` includes pods/exec: kubectl exec over websockets is a GET.
        (rule("apiGroups: [\"\"]\nresources: [\"*\"]\nverbs: [get, list]"), vec![("r", "broad-grant", "grants reading secrets"), ("r", "broad-grant", "pods/exec without"), ("r", "broad-grant", "grants nodes/proxy")]),
        (rule("apiGroups: [\"\"]\nresources: [secrets]\nverbs: [\"*\"]"), vec![("r", "broad-grant", "grants reading secrets")]),
        (rule("apiGroups: [\"\"]\nresources: [secrets]\nverbs: [\"*\"]\naction: deny"), vec![]),
        (rule("apiGroups: [apps]\nresources: [\"*\"]\nverbs: [get, list]"), vec![]),
        (rule("apiGroups: [rbac.authorization.k8s.io]\nresources: [rolebindings]\nverbs: [create]"), vec![("r", "broad-grant", "writes to RBAC resources")]),
        (rule("apiGroups: [rbac.authorization.k8s.io]\nresources: [rolebindings]\nverbs: [get, list]"), vec![]),
        (rule("apiGroups: [\"\"]\nresources: [pods/exec]\nverbs: [create]"), vec![("r", "broad-grant", "pods/exec without `commands`")]),
        (rule("apiGroups: [admissionregistration.k8s.io]\nresources: [mutatingwebhookconfigurations]\nverbs: [delete]"), vec![("r", "broad-grant", "grants writes to mutatingwebhookconfigurations, which can run pods outside chaperone")]),
        (rule("apiGroups: [\"*\"]\nresources: [customresourcedefinitions, controllerrevisions]\nverbs: [patch]"), vec![("r", "broad-grant", "grants writes to customresourcedefinitions, controllerrevisions")]),
        (rule("apiGroups: [\"\"]\nresources: [namespaces]\nverbs: [create]"), vec![("r", "broad-grant", "grants writes to namespaces")]),
        (rule("apiGroups: [\"\"]\nresources: [namespaces]\nverbs: [get, delete]"), vec![]),
        (rule("apiGroups: [\"*\"]\nresources: [\"*\"]\nverbs: [patch]\nnamespaces: [team-a]\naction: allow"), vec![("r", "broad-grant", "writes to RBAC resources"), ("r", "broad-grant", "grants writes to controllerrevisions, which")]),
        (rule("apiGroups: [apiregistration.k8s.io]\nresources: [apiservices]\nverbs: [update]"), vec![("r", "broad-grant", "grants writes to apiservices")]),
        (rule("apiGroups: [\"\"]\nresources: [pods/exec]\nverbs: [create]\ncommands: [[ps]]"), vec![]),
        // The kubelet's API: every pod of a node, unmasked.
        (rule("apiGroups: [\"\"]\nresources: [nodes/proxy]\nverbs: [get]"), vec![("r", "broad-grant", "grants nodes/proxy: the kubelet's API")]),
        (rule("apiGroups: [\"\"]\nresources: [\"*/proxy\"]\nverbs: [get]\nnamespaces: [default]"), vec![]),
        (rule("apiGroups: [\"\"]\nresources: [pods/exec]\nverbs: [create]\ncommands: [[sh, \"**\"]]\naction: deny"), vec![("r", "weak-deny", "easy to evade")]),
    ];
    for (spec, want) in cases {
        let text = format!("{HEADER}{spec}");
        let (_, warnings) = parse(&text, "t.yaml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        let got: Vec<String> = warnings.iter().map(ToString::to_string).collect();
        assert_eq!(warnings.len(), want.len(), "{got:#?}\nfor\n{text}");
        for (w, (rule, code, words)) in warnings.iter().zip(want) {
            assert_eq!((w.rule.as_str(), w.code), (rule, code), "{got:#?}");
            assert!(w.message.contains(words), "{w} lacks {words:?}");
        }
    }
    let (_, warnings) = parse(
        &format!("{HEADER}{}", rule("apiGroups: [\"\"]\nresources: [\"*\"]")),
        "t.yaml",
    )
    .expect("parses");
    assert_eq!(warnings[0].to_string(), "t.yaml:7: warning[broad-grant]: rule \"r\": `*` in resources or verbs grants reading secrets: list the resources, or deny secrets");
}
