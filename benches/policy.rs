//! Policy evaluation against a 1,000-rule policy, and compiling that policy.

use chaperone::identity::Subject;
use chaperone::policy;
use chaperone::request_info::RequestInfo;
use criterion::{black_box, criterion_group, criterion_main, Criterion};

const RESOURCES: [(&str, &str); 8] = [
    ("", "pods"),
    ("", "pods/log"),
    ("", "configmaps"),
    ("", "services"),
    ("apps", "deployments"),
    ("apps", "deployments/scale"),
    ("batch", "jobs"),
    ("", "secrets"),
];

/// 1,000 rules: per-user grants over 200 users, per-group rules over 50 groups, a few
/// wildcard-subject denies and approvals, namespace globs and exact names throughout.
fn thousand_rules() -> String {
    let mut out = String::from("apiVersion: chaperone.dev/v1alpha1\nkind: Policy\nmetadata: {name: bench}\nspec:\n  rules:\n");
    for i in 0..1000 {
        let (group, resource) = RESOURCES[i % RESOURCES.len()];
        let subjects = match i % 10 {
            0..=5 => format!("{{users: [user-{}]}}", i % 200),
            6..=8 => format!("{{groups: [group-{}]}}", i % 50),
            _ => "{users: [\"*\"]}".to_owned(),
        };
        let (verbs, action) = match i % 10 {
            9 if i % 20 == 9 => ("[delete]", "approve"),
            9 => ("[\"*\"]", "deny"),
            _ => ("[get, list, watch, update]", "allow"),
        };
        let namespaces = match i % 3 {
            0 => format!("[team-{}]", i % 40),
            1 => format!("[\"team-{}*\", default]", i % 9),
            _ => "[\"*\"]".to_owned(),
        };
        let resource = if action == "allow" && resource == "secrets" {
            "endpoints"
        } else {
            resource
        };
        out += &format!(
            "  - name: rule-{i}\n    subjects: {subjects}\n    apiGroups: [\"{group}\"]\n    resources: [{resource}]\n    verbs: {verbs}\n    namespaces: {namespaces}\n    action: {action}\n"
        );
    }
    out
}

fn request(verb: &str, group: &str, resource: &str, namespace: &str, name: &str) -> RequestInfo {
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

fn bench(c: &mut Criterion) {
    let text = thousand_rules();
    let (p, _) = policy::parse(&text, "bench.yaml").expect("the bench policy parses");
    assert_eq!(p.rule_names().count(), 1000);
    let who = |user: &str, groups: &[&str]| Subject {
        user: user.into(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        ..Subject::default()
    };
    let alice = who("user-10", &["group-10", "group-20", "system:authenticated"]);
    let nobody = who("nobody", &["system:authenticated"]);
    let cases = [
        (
            "allow",
            &alice,
            request("get", "", "pods", "team-10", "web-0"),
        ),
        (
            "deny-by-rule",
            &alice,
            request("get", "", "secrets", "team-3", "db"),
        ),
        (
            "default-deny",
            &nobody,
            request("list", "apps", "deployments", "prod", ""),
        ),
        (
            "approve",
            &alice,
            request("delete", "", "pods/log", "default", "x"),
        ),
    ];
    let mut group = c.benchmark_group("authorize_1000_rules");
    for (name, who, info) in &cases {
        let d = policy::authorize(&p, who, info, None);
        eprintln!("{name}: {d}");
        group.bench_function(*name, |b| {
            b.iter(|| policy::authorize(black_box(&p), black_box(who), black_box(info), None))
        });
    }
    group.finish();
    c.bench_function("parse_and_compile_1000_rules", |b| {
        b.iter(|| {
            policy::parse(black_box(&text), "bench.yaml")
                .map(|(p, w)| (p.rule_names().count(), w.len()))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
