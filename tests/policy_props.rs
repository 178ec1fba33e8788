//! Properties of evaluation on random policies and requests: the indexed engine agrees with a
//! naive linear scan written from the documented semantics, and a deny rule never loosens.

use chaperone::identity::Subject;
use chaperone::policy::{self, Action};
use chaperone::request_info::RequestInfo;
use proptest::prelude::*;
use proptest::sample::{select, subsequence};

#[path = "support/cases.rs"]
mod cases;

/// A generated rule, kept as data for the reference implementation.
#[derive(Debug, Clone)]
struct Rule {
    users: Vec<&'static str>,
    groups: Vec<&'static str>,
    api_groups: Vec<&'static str>,
    resources: Vec<&'static str>,
    urls: Vec<&'static str>,
    names: Vec<&'static str>,
    namespaces: Option<Vec<&'static str>>,
    commands: Option<Vec<Vec<&'static str>>>,
    verbs: Vec<&'static str>,
    action: Action,
    mode: Option<policy::Mode>,
}

#[derive(Debug, Clone)]
struct Request {
    who: Subject,
    info: RequestInfo,
    query: Option<&'static str>,
}

fn action() -> impl Strategy<Value = Action> {
    select(vec![Action::Allow, Action::Approve, Action::Deny])
}

fn mode() -> impl Strategy<Value = Option<policy::Mode>> {
    select(vec![
        None,
        None,
        Some(policy::Mode::Enforce),
        Some(policy::Mode::Audit),
    ])
}

fn some<T: Clone + std::fmt::Debug + 'static>(pool: Vec<T>) -> impl Strategy<Value = Vec<T>> {
    let n = pool.len();
    subsequence(pool, 1..=n)
}

fn rule() -> impl Strategy<Value = Rule> {
    // At least one user or group, generated rather than filtered: a filter's rejects
    // abort a deep run (`PROPTEST_CASES`) at proptest's limit of 65,536.
    let users = |n| subsequence(vec!["alice", "bob", "*"], n);
    let groups = |n| subsequence(vec!["dev", "ops", "*"], n);
    let subjects = prop_oneof![(users(1..=2), groups(0..=2)), (users(0..=2), groups(1..=2))];
    let resources = (
        some(vec!["", "apps", "*"]),
        some(vec![
            "pods",
            "pods/exec",
            "pods/log",
            "secrets",
            "deployments",
            "deployments/scale",
            "*",
            "*/scale",
        ]),
        subsequence(vec!["a", "b"], 0..=2),
        prop::option::of(some(vec!["default", "team-*", "team-a", "<cluster>", "*"])),
        some(vec!["get", "list", "create", "delete", "*"]),
        prop::bool::weighted(0.2),
    );
    let urls = (
        some(vec!["/healthz", "/api", "/logs/*", "*"]),
        some(vec!["get", "post", "*"]),
    );
    (
        subjects,
        prop::bool::weighted(0.2),
        resources,
        urls,
        action(),
        mode(),
    )
        .prop_map(
            |(
                (users, groups),
                non_resource,
                (api_groups, resources, names, namespaces, mut verbs, exec),
                (urls, url_verbs),
                action,
                mode,
            )| {
                let mut r = Rule {
                    users,
                    groups,
                    api_groups,
                    resources,
                    urls: vec![],
                    names,
                    namespaces,
                    commands: None,
                    verbs: url_verbs,
                    action,
                    mode,
                };
                if non_resource {
                    r.urls = urls;
                    r.api_groups.clear();
                    r.resources.clear();
                    r.names.clear();
                    r.namespaces = None;
                    return r;
                }
                if !r.names.is_empty() && !verbs.iter().any(|v| *v != "create") {
                    verbs.push("get");
                }
                r.verbs = verbs;
                if exec {
                    r.api_groups = vec![""];
                    r.resources = vec!["pods/exec"];
                    r.commands = Some(vec![vec!["ps", "**"], vec!["ls"]]);
                }
                r
            },
        )
}

fn request() -> impl Strategy<Value = Request> {
    let who = (
        select(vec!["alice", "bob", "carol"]),
        subsequence(vec!["dev", "ops", "qa"], 0..=3),
    );
    let resource = (
        select(vec![
            "get",
            "list",
            "create",
            "delete",
            "watch",
            "impersonate",
            "",
        ]),
        select(vec!["", "apps", "batch"]),
        select(vec!["pods", "secrets", "deployments", "nodes"]),
        select(vec!["", "", "exec", "log", "scale", "status"]),
        select(vec!["", "default", "team-a", "team-b", "prod"]),
        select(vec!["", "a", "b", "c"]),
    );
    let non = (
        select(vec!["get", "post"]),
        select(vec![
            "/healthz",
            "/api",
            "/logs/x",
            "/metrics",
            "/apis/apps",
        ]),
    );
    let query = select(vec![
        None,
        Some("command=ps&command=aux"),
        Some("command=sh"),
        Some("command=ls"),
    ]);
    (who, prop::bool::weighted(0.8), resource, non, query).prop_map(
        |((user, groups), is_resource, r, n, query)| {
            let info = if is_resource {
                RequestInfo {
                    is_resource_request: true,
                    verb: r.0.into(),
                    api_group: r.1.into(),
                    resource: r.2.into(),
                    subresource: r.3.into(),
                    namespace: r.4.into(),
                    name: r.5.into(),
                    ..RequestInfo::default()
                }
            } else {
                RequestInfo {
                    verb: n.0.into(),
                    path: n.1.into(),
                    ..RequestInfo::default()
                }
            };
            let who = Subject {
                user: user.into(),
                groups: groups.into_iter().map(str::to_owned).collect(),
                ..Subject::default()
            };
            Request { who, info, query }
        },
    )
}

fn yaml(policy_mode: policy::Mode, rules: &[Rule]) -> String {
    let list = |v: &[&str]| serde_json::to_string(v).expect("json");
    let mut out = format!("apiVersion: chaperone.dev/v1alpha1\nkind: Policy\nmetadata: {{name: random}}\nspec:\n  mode: {policy_mode}\n  rules:\n");
    for (i, r) in rules.iter().enumerate() {
        out += &format!("  - name: r{i}\n    subjects: {{users: {}, groups: {}}}\n    verbs: {}\n    action: {}\n", list(&r.users), list(&r.groups), list(&r.verbs), r.action);
        if !r.urls.is_empty() {
            out += &format!("    nonResourceURLs: {}\n", list(&r.urls));
        } else {
            out += &format!(
                "    apiGroups: {}\n    resources: {}\n",
                list(&r.api_groups),
                list(&r.resources)
            );
        }
        if !r.names.is_empty() {
            out += &format!("    resourceNames: {}\n", list(&r.names));
        }
        if let Some(ns) = &r.namespaces {
            out += &format!("    namespaces: {}\n", list(ns));
        }
        if let Some(commands) = &r.commands {
            out += &format!(
                "    commands: {}\n",
                serde_json::to_string(commands).expect("json")
            );
        }
        if let Some(m) = r.mode {
            out += &format!("    mode: {m}\n");
        }
    }
    out
}

/// The reference: every rule checked in turn, straight from the documented semantics.
fn matches(r: &Rule, q: &Request) -> bool {
    let who = &q.who;
    let info = &q.info;
    let subject = r.users.iter().any(|u| *u == "*" || *u == who.user)
        || r.groups
            .iter()
            .any(|g| *g == "*" || who.groups.iter().any(|wg| wg == g));
    let verb = r.verbs.iter().any(|v| *v == "*" || *v == info.verb);
    if !subject || !verb {
        return false;
    }
    if !info.is_resource_request {
        return r.urls.iter().any(|u| {
            *u == "*"
                || *u == info.path
                || u.strip_suffix('*')
                    .is_some_and(|p| info.path.starts_with(p))
        });
    }
    if !r.urls.is_empty() {
        return false;
    }
    let combined = if info.subresource.is_empty() {
        info.resource.clone()
    } else {
        format!("{}/{}", info.resource, info.subresource)
    };
    let group = r
        .api_groups
        .iter()
        .any(|g| *g == "*" || *g == info.api_group);
    let resource = r.resources.iter().any(|x| {
        *x == "*"
            || *x == combined
            || (!info.subresource.is_empty() && *x == format!("*/{}", info.subresource))
    });
    // A deny or approve naming objects takes their whole collection too (a list, watch
    // or deletecollection not narrowed to a name).
    let collection = r.action != Action::Allow
        && info.name.is_empty()
        && ["list", "watch", "deletecollection"].contains(&info.verb.as_str());
    let name = r.names.is_empty() || r.names.contains(&info.name.as_str()) || collection;
    let ns = &info.namespace;
    let namespace = r.namespaces.as_ref().is_none_or(|list| {
        list.iter().any(|p| match *p {
            "*" => true,
            "<cluster>" => ns.is_empty(),
            "team-*" => ns.starts_with("team-"),
            exact => exact == ns,
        })
    });
    let argv: Vec<&str> = q
        .query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.strip_prefix("command="))
        .collect();
    let command = r.commands.as_ref().is_none_or(|patterns| {
        patterns.iter().any(|p| match p.last() {
            Some(&"**") => {
                argv.len() >= p.len() - 1 && argv.iter().zip(&p[..p.len() - 1]).all(|(a, b)| a == b)
            }
            _ => argv.len() == p.len() && argv.iter().zip(p).all(|(a, b)| a == b),
        })
    });
    group && resource && name && namespace && command
}

/// (reported action, reported rule, enforced, applied action, applied rule)
type Outcome = (Action, String, bool, Action, String);

fn reference(policy_mode: policy::Mode, rules: &[Rule], q: &Request) -> Outcome {
    if q.info.verb == "impersonate" {
        return (
            Action::Deny,
            policy::IMPERSONATE.into(),
            true,
            Action::Deny,
            policy::IMPERSONATE.into(),
        );
    }
    let best = |mode: policy::Mode| {
        let mut best: Option<(Action, usize)> = None;
        for (i, r) in rules.iter().enumerate() {
            if r.mode.unwrap_or(policy_mode) == mode
                && matches(r, q)
                && best.is_none_or(|(a, _)| r.action > a)
            {
                best = Some((r.action, i));
            }
        }
        best.map(|(a, i)| (a, format!("r{i}")))
    };
    let discovery = !q.info.is_resource_request
        && q.info.verb == "get"
        && ["/api", "/apis/apps"].contains(&q.info.path.as_str());
    let enforced = best(policy::Mode::Enforce)
        .or_else(|| discovery.then(|| (Action::Allow, policy::DISCOVERY.to_owned())));
    let audited = best(policy::Mode::Audit);
    match (enforced, audited) {
        (Some(e), Some(a)) if a.0 > e.0 => (a.0, a.1, false, e.0, e.1),
        (Some(e), _) => (e.0, e.1.clone(), true, e.0, e.1),
        (None, _) if policy_mode == policy::Mode::Enforce => (
            Action::Deny,
            policy::DEFAULT_DENY.into(),
            true,
            Action::Deny,
            policy::DEFAULT_DENY.into(),
        ),
        (None, a) => {
            let (action, rule) = a.unwrap_or((Action::Deny, policy::DEFAULT_DENY.into()));
            (
                action,
                rule,
                false,
                Action::Allow,
                policy::AUDIT_MODE.into(),
            )
        }
    }
}

fn engine(p: &policy::Policy, q: &Request) -> Outcome {
    let d = policy::authorize(p, &q.who, &q.info, q.query);
    (
        d.action(),
        d.rule().to_owned(),
        d.enforced(),
        d.applied(),
        d.applied_rule().to_owned(),
    )
}

fn compiled(policy_mode: policy::Mode, rules: &[Rule]) -> policy::Policy {
    let text = yaml(policy_mode, rules);
    match policy::parse(&text, "random.yaml") {
        Ok((p, _)) => p,
        Err(e) => panic!("{e}\n{text}"),
    }
}

fn policy_mode() -> impl Strategy<Value = policy::Mode> {
    select(vec![
        policy::Mode::Enforce,
        policy::Mode::Enforce,
        policy::Mode::Audit,
    ])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases::cases(300), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn index_agrees_with_a_linear_scan(
        policy_mode in policy_mode(),
        rules in prop::collection::vec(rule(), 0..12),
        requests in prop::collection::vec(request(), 1..16),
    ) {
        let p = compiled(policy_mode, &rules);
        for q in &requests {
            prop_assert_eq!(engine(&p, q), reference(policy_mode, &rules, q), "{:?}", q);
        }
    }

    #[test]
    fn a_deny_rule_never_loosens(
        policy_mode in policy_mode(),
        rules in prop::collection::vec(rule(), 0..10),
        mut deny in rule(),
        at in any::<prop::sample::Index>(),
        requests in prop::collection::vec(request(), 1..16),
    ) {
        deny.action = Action::Deny;
        let before = compiled(policy_mode, &rules);
        let mut more = rules.clone();
        more.insert(at.index(rules.len() + 1), deny);
        let after = compiled(policy_mode, &more);
        for q in &requests {
            let (was, now) = (engine(&before, q), engine(&after, q));
            prop_assert!(now.3 >= was.3, "applied {:?} became {:?} for {:?}", was, now, q);
            prop_assert!(was.3 != Action::Deny || now.3 == Action::Deny);
        }
    }
}

/// A value of any shape a hand-written policy might hold where a field is: mostly what the
/// field takes, now and then something it does not (wrong type, bad pattern, bad regex).
fn field(list: bool, good: Vec<serde_json::Value>) -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    let odd = select(vec![
        json!(""),
        json!("*"),
        json!("**"),
        json!("a**b"),
        json!("a..b"),
        json!("[*]"),
        json!("no-such-detector"),
        json!("/"),
        json!("a/b/c"),
        json!("*/*"),
        json!("["),
        json!("(?i"),
        json!("a{99999}"),
        json!("é\u{0}"),
        json!("-5m"),
        json!("99999999999h"),
        json!(0),
        json!(-1),
        json!(1.5),
        json!(null),
        json!(true),
        json!({"a": 1}),
        json!([["x"]]),
    ]);
    // A list field, or (`good` given as one value) a scalar one; about one field in
    // twenty is odd, so that most documents get past one error to the next.
    let shaped = if list {
        prop::collection::vec(select(good), 1..4)
            .prop_map(serde_json::Value::from)
            .boxed()
    } else {
        select(good).boxed()
    };
    prop_oneof![
        38 => shaped,
        1 => odd.clone(),
        1 => prop::collection::vec(odd, 0..3).prop_map(serde_json::Value::from),
    ]
}

fn strings(values: &[&str]) -> Vec<serde_json::Value> {
    values.iter().map(|s| serde_json::json!(s)).collect()
}

/// Whether the generated rule's `action` is `value`.
fn rule_action_is(keys: &[(&str, serde_json::Value)], value: &str) -> bool {
    keys.iter().any(|(k, v)| *k == "action" && v == value)
}

fn loose_rule() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    (
        (
            field(false, strings(&["r", "allow-pods", "x"])),
            field(
                true,
                strings(&["alice", "*", "system:serviceaccount:default:x"]),
            ),
            field(true, strings(&["dev", "system:authenticated"])),
            field(true, strings(&["default/mcp", "kube-system/x"])),
            field(true, strings(&["", "apps", "*", "batch"])),
            field(
                true,
                strings(&["pods", "pods/exec", "*", "*/status", "deployments/scale"]),
            ),
        ),
        (
            field(true, strings(&["nginx", "db"])),
            field(true, strings(&["/healthz", "/api/*", "/version", "*"])),
            field(
                true,
                strings(&["get", "list", "*", "create", "escalate", "impersonate"]),
            ),
            field(true, strings(&["default", "*", "<cluster>", "kube-*"])),
            field(
                true,
                vec![json!(["echo", "*"]), json!(["cat"]), json!(["*"])],
            ),
            field(false, strings(&["allow", "deny", "approve"])),
        ),
        (
            field(false, strings(&["30s", "1m", "2h"])),
            field(false, vec![json!(1), json!(2)]),
            field(false, strings(&["audit", "enforce"])),
            any::<u32>(),
        ),
    )
        .prop_map(
            |(
                (name, users, groups, sas, api_groups, resources),
                (names, urls, verbs, namespaces, commands, action),
                (hold, approvers, mode, present),
            )| {
                let mut rule = serde_json::Map::new();
                // Each key present or not, by one bit of `present` each.
                let keys = [
                    ("name", name),
                    (
                        "subjects",
                        json!({"users": users, "groups": groups, "serviceAccounts": sas}),
                    ),
                    ("apiGroups", api_groups),
                    ("resources", resources),
                    ("resourceNames", names),
                    ("nonResourceURLs", urls),
                    ("verbs", verbs),
                    ("namespaces", namespaces),
                    ("commands", commands),
                    ("action", action),
                    (
                        "approval",
                        json!({"hold": hold.clone(), "grant": hold, "approvers": approvers}),
                    ),
                    ("mode", mode),
                ];
                // Mostly the shape a valid rule has (resources or URLs, an approval with
                // `approve`); bits of `present` add or drop the rest.
                let by_url = present & (1 << 20) != 0;
                // At most one key per rule goes against the usual shape.
                let flipped = (present & (1 << 26) != 0).then_some((present >> 21) as usize & 0xF);
                let approve = rule_action_is(&keys, "approve");
                for (i, (k, v)) in keys.into_iter().enumerate() {
                    let usual = match k {
                        "name" | "subjects" | "verbs" | "action" => true,
                        "apiGroups" | "resources" => !by_url,
                        "nonResourceURLs" => by_url,
                        "approval" => approve,
                        _ => false,
                    };
                    let flip = flipped == Some(i);
                    let optional =
                        matches!(k, "resourceNames" | "namespaces" | "commands" | "mode");
                    if usual != flip || (optional && !by_url && present & (1 << i) != 0) {
                        rule.insert(k.to_owned(), v);
                    }
                }
                serde_json::Value::Object(rule)
            },
        )
}

fn loose_masking() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    (
        field(true, strings(&["configmaps", "*", "widgets.example.com"])),
        field(
            true,
            strings(&[
                "data.*",
                "spec.template.spec.containers[*].env[*].value",
                "data",
            ]),
        ),
        field(false, strings(&["(?i)pass", "token$"])),
        field(
            true,
            strings(&["aws-access-key", "jwt", "pem-private-key", "password-pair"]),
        ),
        field(true, strings(&["x+", "\\p{L}+", "secret-[0-9]{4}"])),
    )
        .prop_map(|(resources, fields, key_regex, detectors, patterns)| {
            json!({"resources": resources, "fields": fields, "keyRegex": key_regex,
                   "detectors": detectors, "patterns": patterns})
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases::cases(300), failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever a policy file holds, reading it is an answer (the policy, or an error
    /// saying what is wrong), never a panic; and a policy that reads decides requests.
    #[test]
    fn any_policy_file_is_read_or_refused(
        rules in prop::collection::vec(loose_rule(), 0..6),
        masking in prop::collection::vec(loose_masking(), 0..3),
        requests in prop::collection::vec(request(), 1..8),
    ) {
        let doc = serde_json::json!({
            "apiVersion": "chaperone.dev/v1alpha1",
            "kind": "Policy",
            "metadata": {"name": "fuzzed"},
            "spec": {"rules": rules, "masking": masking},
        });
        let text = serde_yaml::to_string(&doc).unwrap();
        match policy::parse(&text, "fuzzed.yaml") {
            Ok((p, _)) => {
                for q in &requests {
                    let d = policy::authorize(&p, &q.who, &q.info, q.query);
                    prop_assert!(!d.rule().is_empty(), "{:?}", d);
                }
            }
            // Where: `fuzzed.yaml:LINE:COLUMN: ...`.
            Err(e) => {
                let text = e.to_string();
                let at = text.strip_prefix("fuzzed.yaml:").unwrap_or_default();
                prop_assert!(at.starts_with(|c: char| c.is_ascii_digit()), "{}", text);
            }
        }
    }
}

/// Pieces of text an agent might put in a custom resource's strings to confuse the
/// reading of what they set: escapes cut short, quotes, blanks, multi-byte characters.
fn tricky_text() -> impl Strategy<Value = String> {
    let pieces = select(vec![
        "hostNetwork",
        "chaperone.dev/inject",
        "chaperone.dev~1policy",
        "\\",
        "\\u",
        "\\x4",
        "\\U0000",
        "004e",
        "+4e",
        "'",
        "\"",
        "''",
        ":",
        "=",
        "==",
        " ",
        "\t",
        "\n",
        "\r",
        "#",
        ",",
        "}",
        "{",
        "[",
        "]",
        "/",
        ".",
        "false",
        "0",
        "true",
        "ed-version",
        "é",
        "\u{a0}",
        "\u{1F600}",
    ]);
    proptest::collection::vec(pieces, 0..24).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Reading a custom resource's text never panics, whatever it holds, and whatever
    /// says `chaperone.dev/inject` or `hostNetwork: true` plainly is found.
    #[test]
    fn reading_text_never_panics(text in tricky_text()) {
        let found = policy::injection_key_in_text(&text);
        let live = serde_json::json!({"spec": {"values": text.clone(), "parameters": [{"name": text.clone(), "value": text.clone()}]}});
        let _ = policy::opts_out(&live, true);
        if text.contains("chaperone.dev/inject") && !text.contains("chaperone.dev/injected-version") {
            prop_assert!(found.is_some(), "{text:?}");
        }
        let set = |t: &str| t.contains("hostNetwork: true") || t.contains("hostNetwork=true");
        if set(&text) {
            prop_assert!(found.is_some(), "{text:?}");
        }
    }
}
