//! Turns a parsed policy into its indexed form, refusing rules that cannot mean what they say.
//!
//! The index is keyed first by subject (user name, group name, or anyone), then by API group
//! (or `*`), then by resource (or `*`) and subresource (or `*/sub`), so that a request visits
//! only the rules naming its caller and its resource; verbs, names, namespaces and commands are
//! then checked on those few rules.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use super::locate::{item_lines, locate, Step};
use super::matching::{url_matches, Arg, Namespaces, VerbSet};
use super::model::{self, Verb};
use super::{cases::Case, Action, Error, Mode};
use crate::identity::Subject;
use crate::request_info::RequestInfo;

/// A compiled policy, ready for [`super::authorize`].
#[derive(Debug)]
pub struct Policy {
    pub(crate) name: Arc<str>,
    pub(crate) origin: Arc<str>,
    pub(crate) mode: Mode,
    pub(crate) rules: Vec<Rule>,
    pub(crate) index: Index,
    pub(crate) cases: Vec<Case>,
    pub(crate) masking: Vec<model::Masking>,
    /// `masking` compiled for the masking stage, with the built-in Secret rules.
    pub(crate) masker: crate::mask::Masker,
}

impl Policy {
    /// The compiled masking rules of this policy (the built-in ones included).
    pub fn masker(&self) -> &crate::mask::Masker {
        &self.masker
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the policy came from (a file path, or what the caller of `parse` said).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// `spec.mode`: the mode of rules that do not set their own.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The rules' names, in file order.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.meta.name.as_str())
    }

    /// `spec.masking`, validated, for the masking stage.
    pub fn masking(&self) -> &[model::Masking] {
        &self.masking
    }

    /// The embedded `tests:` cases.
    pub fn cases(&self) -> &[Case] {
        &self.cases
    }
}

/// What a decision needs of the rule that made it; shared with decisions by `Arc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleMeta {
    pub name: String,
    pub description: Option<String>,
    pub action: Action,
    /// The rule's `mode`, or else the policy's.
    pub mode: Mode,
    /// For `approve` rules: the rule's `approval`, or the defaults.
    pub approval: Option<model::Approval>,
    /// The rule's `auditLevel`, or else the policy's.
    pub audit_level: crate::audit::event::Level,
}

/// One compiled rule.
#[derive(Debug)]
pub(crate) struct Rule {
    pub meta: Arc<RuleMeta>,
    pub verbs: VerbSet,
    /// Empty: any name.
    pub names: Box<[Box<str>]>,
    pub namespaces: Namespaces,
    /// Empty: any command.
    pub commands: Box<[Box<[Arg]>]>,
    /// `nonResourceURLs`; empty for resource rules.
    pub urls: Box<[Box<str>]>,
    /// Copies of `meta.action` and `meta.mode`, next to the matchers for the hot loop.
    pub action: Action,
    pub mode: Mode,
    /// The rule as written, for lint (boxed to keep the hot fields close together).
    pub source: Box<model::Rule>,
    /// Its 1-based line, for lint.
    pub line: usize,
}

impl Rule {
    /// Everything but subject, API group and resource, which the index has matched.
    pub fn matches_rest(&self, verb_bit: u32, info: &RequestInfo, commands: Commands<'_>) -> bool {
        self.verbs.0 & verb_bit != 0
            && (self.names.is_empty()
                || self.names.iter().any(|n| **n == *info.name)
                || self.covers_the_collection(info))
            && self.namespaces.matches(&info.namespace)
            && (self.commands.is_empty() || self.matches_commands(commands))
            && (self.urls.is_empty() || self.urls.iter().any(|u| url_matches(u, &info.path)))
    }
}

impl Rule {
    /// Whether this resource rule takes some request of those a review asking with a
    /// wildcard (`*` for the verb, group or resource) covers. Its names and commands are
    /// not looked at: a rule naming some objects takes part of "all of them".
    pub fn takes_part_of(&self, asked: &RequestInfo) -> bool {
        let src = &self.source;
        let verb = asked.verb == "*" || self.verbs.0 & VerbSet::request_bit(&asked.verb) != 0;
        let group = asked.api_group == "*"
            || src
                .api_groups
                .iter()
                .any(|g| g.0 == "*" || g.0 == asked.api_group);
        let resource = asked.resource == "*"
            || src.resources.iter().any(|r| match r.0.split_once('/') {
                None => r.0 == "*" || (r.0 == asked.resource && asked.subresource.is_empty()),
                Some(("*", sub)) => sub == asked.subresource,
                Some((res, sub)) => res == asked.resource && sub == asked.subresource,
            });
        verb && group && resource && self.namespaces.matches(&asked.namespace)
    }

    /// A deny or approve naming objects also takes a request for their whole collection
    /// (a `list`, `watch` or `deletecollection` not narrowed to one name), which reads
    /// or deletes them with the rest. An allow naming objects does not, as in RBAC.
    fn covers_the_collection(&self, info: &RequestInfo) -> bool {
        self.action != Action::Allow
            && info.name.is_empty()
            && matches!(info.verb.as_str(), "list" | "watch" | "deletecollection")
    }

    fn matches_commands(&self, commands: Commands<'_>) -> bool {
        match commands {
            Commands::Sent(query) => self
                .commands
                .iter()
                .any(|argv| super::matching::argv_matches(argv, query)),
            // Whether some command would be allowed: an allow rule's commands are some;
            // a deny or approve rule counts only where it takes every command (`[**]`,
            // or `[*, **]`: a command has a program).
            Commands::Any => {
                self.action == Action::Allow
                    || self
                        .commands
                        .iter()
                        .any(|argv| matches!(&argv[..], [Arg::Rest] | [Arg::Any, Arg::Rest]))
            }
        }
    }
}

/// What an exec request's command is matched against.
#[derive(Debug, Clone, Copy)]
pub enum Commands<'a> {
    /// The request's query, whose `command=` parameters are its command.
    Sent(Option<&'a str>),
    /// Whichever command: a question about the attributes alone (`kubectl auth can-i
    /// create pods/exec` names no command) is answered for some command, if any is
    /// allowed.
    Any,
}

/// A map with a fast, non-keyed hash. Its keys come from the policy, not from callers, so a
/// caller cannot make it degrade (HashDoS needs control of the inserted keys).
pub(crate) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// The Firefox/rustc hash: a multiply-rotate over 8-byte words.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Rules by subject, then API group, then resource.
#[derive(Debug, Default)]
pub(crate) struct Index {
    pub users: FxMap<Box<str>, Bucket>,
    pub groups: FxMap<Box<str>, Bucket>,
    /// Rules for users `*` or groups `*`.
    pub anyone: Bucket,
}

#[derive(Debug, Default)]
pub(crate) struct Bucket {
    pub api_groups: FxMap<Box<str>, GroupIndex>,
    pub any_api_group: GroupIndex,
    pub non_resource: Vec<u32>,
}

#[derive(Debug, Default)]
pub(crate) struct GroupIndex {
    pub resources: FxMap<Box<str>, ResourceIndex>,
    /// `*`
    pub any: Vec<u32>,
    /// `*/sub`
    pub any_with_sub: FxMap<Box<str>, Vec<u32>>,
}

impl GroupIndex {
    /// RBAC `ResourceMatches`: `*`, the exact `resource[/subresource]`, or `*/subresource`.
    fn visit(&self, info: &RequestInfo, f: &mut impl FnMut(u32)) {
        self.any.iter().for_each(|&id| f(id));
        let sub = info.subresource.as_str();
        if let Some(ri) = self.resources.get(info.resource.as_str()) {
            let list = if sub.is_empty() {
                Some(&ri.whole)
            } else {
                ri.subs.get(sub)
            };
            list.into_iter().flatten().for_each(|&id| f(id));
        }
        if !sub.is_empty() {
            self.any_with_sub
                .get(sub)
                .into_iter()
                .flatten()
                .for_each(|&id| f(id));
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct ResourceIndex {
    /// `pods`: the resource itself, no subresource.
    pub whole: Vec<u32>,
    /// `pods/log`
    pub subs: FxMap<Box<str>, Vec<u32>>,
}

impl Index {
    /// Calls `f` with the id of every resource rule for `who`, whatever its API group and
    /// resource. An id may come more than once.
    pub fn visit_resource_rules(&self, who: &Subject, mut f: impl FnMut(u32)) {
        fn bucket(b: &Bucket, f: &mut dyn FnMut(u32)) {
            for gi in b.api_groups.values().chain([&b.any_api_group]) {
                gi.any.iter().for_each(|&id| f(id));
                gi.any_with_sub.values().flatten().for_each(|&id| f(id));
                for ri in gi.resources.values() {
                    ri.whole.iter().for_each(|&id| f(id));
                    ri.subs.values().flatten().for_each(|&id| f(id));
                }
            }
        }
        if let Some(b) = self.users.get(who.user.as_str()) {
            bucket(b, &mut f);
        }
        for group in &who.groups {
            if let Some(b) = self.groups.get(group.as_str()) {
                bucket(b, &mut f);
            }
        }
        bucket(&self.anyone, &mut f);
    }

    /// Calls `f` with the id of every rule for `who` whose API group and resource (or, for a
    /// non-resource request, whose kind) fit `info`. An id may come more than once.
    pub fn visit(&self, who: &Subject, info: &RequestInfo, mut f: impl FnMut(u32)) {
        if let Some(bucket) = self.users.get(who.user.as_str()) {
            bucket.visit(info, &mut f);
        }
        for group in &who.groups {
            if let Some(bucket) = self.groups.get(group.as_str()) {
                bucket.visit(info, &mut f);
            }
        }
        self.anyone.visit(info, &mut f);
    }
}

impl Bucket {
    fn visit(&self, info: &RequestInfo, f: &mut impl FnMut(u32)) {
        if !info.is_resource_request {
            self.non_resource.iter().for_each(|&id| f(id));
            return;
        }
        if let Some(gi) = self.api_groups.get(info.api_group.as_str()) {
            gi.visit(info, f);
        }
        self.any_api_group.visit(info, f);
    }

    fn insert(&mut self, id: u32, rule: &model::Rule) {
        if !rule.non_resource_urls.is_empty() {
            self.non_resource.push(id);
            return;
        }
        for group in &rule.api_groups {
            let gi = match group.0.as_str() {
                "*" => &mut self.any_api_group,
                g => self.api_groups.entry(g.into()).or_default(),
            };
            for resource in &rule.resources {
                let list = match resource.0.split_once('/') {
                    None if resource.0 == "*" => &mut gi.any,
                    None => {
                        &mut gi
                            .resources
                            .entry(resource.0.as_str().into())
                            .or_default()
                            .whole
                    }
                    Some(("*", sub)) => gi.any_with_sub.entry(sub.into()).or_default(),
                    Some((res, sub)) => gi
                        .resources
                        .entry(res.into())
                        .or_default()
                        .subs
                        .entry(sub.into())
                        .or_default(),
                };
                // A rule listing `pods` twice, or `""` and `*`-free duplicates, lands once.
                if list.last() != Some(&id) {
                    list.push(id);
                }
            }
        }
    }
}

/// A compile error at a path of the document.
pub(crate) struct Fault<'a> {
    pub text: &'a str,
    pub origin: &'a str,
}

impl Fault<'_> {
    pub fn at(&self, path: &[Step<'_>], message: impl std::fmt::Display) -> Error {
        let (line, column) = locate(self.text, path);
        Error::Invalid {
            origin: self.origin.to_owned(),
            line,
            column,
            message: format!("{}: {message}", dotted(path)),
        }
    }
}

/// `spec.rules[2].verbs`
pub(crate) fn dotted(path: &[Step<'_>]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) if out.is_empty() => out.push_str(k),
            Step::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

pub(crate) fn compile(doc: model::Document, text: &str, origin: &str) -> Result<Policy, Error> {
    let fault = Fault { text, origin };
    let mode = doc.spec.mode;
    let audit_level = doc.spec.audit_level;
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, rule) in doc.spec.rules.iter().enumerate() {
        if let Some(first) = seen.insert(rule.name.0.as_str(), i) {
            let (line, _) = locate(text, &rule_path(first, Some("name")));
            return Err(fault.at(
                &rule_path(i, Some("name")),
                format_args!(
                    "duplicate rule name {:?} (first at line {line})",
                    rule.name.0
                ),
            ));
        }
        check_rule(&fault, i, rule)?;
    }
    for (i, entry) in doc.spec.masking.iter().enumerate() {
        check_masking(&fault, i, entry)?;
    }

    let lines = item_lines(text, &[Step::Key("spec"), Step::Key("rules")]);
    let mut rules = Vec::with_capacity(doc.spec.rules.len());
    let mut index = Index::default();
    for (i, rule) in doc.spec.rules.into_iter().enumerate() {
        let id = u32::try_from(i).map_err(|_| fault.at(&[], "too many rules"))?;
        let s = &rule.subjects;
        if s.users.iter().chain(&s.groups).any(|n| n.0 == "*") {
            index.anyone.insert(id, &rule);
        }
        let users = s
            .users
            .iter()
            .map(|u| u.0.clone())
            .filter(|u| u != "*")
            .chain(s.service_accounts.iter().map(model::ServiceAccount::user));
        for user in users.collect::<HashSet<_>>() {
            index
                .users
                .entry(user.into())
                .or_default()
                .insert(id, &rule);
        }
        let groups = s.groups.iter().map(|g| g.0.as_str()).filter(|g| *g != "*");
        for group in groups.collect::<HashSet<_>>() {
            index
                .groups
                .entry(group.into())
                .or_default()
                .insert(id, &rule);
        }
        rules.push(build_rule(
            rule,
            mode,
            audit_level,
            lines.get(i).copied().unwrap_or(1),
        ));
    }
    let names: HashSet<&str> = rules.iter().map(|r| r.meta.name.as_str()).collect();
    let case_lines = item_lines(text, &[Step::Key("tests")]);
    let cases = doc
        .tests
        .into_iter()
        .enumerate()
        .map(|(i, case)| {
            let line = case_lines.get(i).copied().unwrap_or(1);
            super::cases::compile_case(&fault, i, case, &names, line)
        })
        .collect::<Result<_, _>>()?;
    let masker = crate::mask::Masker::compile(&mask_rules(&doc.spec.masking)).map_err(|e| {
        let line = text
            .lines()
            .position(|l| l.trim_start().starts_with("masking:"))
            .map_or(1, |i| i + 1);
        Error::Invalid {
            origin: origin.to_owned(),
            line,
            column: 1,
            message: format!("spec.masking: {e}"),
        }
    })?;
    Ok(Policy {
        name: doc.metadata.name.0.into(),
        origin: origin.into(),
        mode,
        rules,
        index,
        cases,
        masking: doc.spec.masking,
        masker,
    })
}

/// `spec.masking` as the masking stage's rules.
fn mask_rules(masking: &[model::Masking]) -> Vec<crate::mask::Rule> {
    use model::Detector;
    masking
        .iter()
        .map(|m| crate::mask::Rule {
            // `secrets.v1/status`-style forms name the plain resource for masking.
            resources: m
                .resources
                .iter()
                .map(|r| r.0.split(['.', '/']).next().unwrap_or_default().to_owned())
                .collect(),
            namespaces: m.namespaces.iter().map(|n| n.0.clone()).collect(),
            names: m.names.iter().map(|n| n.0.clone()).collect(),
            fields: m.fields.iter().map(|f| f.0.clone()).collect(),
            key_regex: m.key_regex.as_ref().map(|r| r.0.clone()),
            name_regex: m.name_regex.as_ref().map(|r| r.0.clone()),
            detectors: m
                .detectors
                .iter()
                .map(|d| {
                    match d {
                        Detector::PemPrivateKey => "pem-private-key",
                        Detector::Jwt => "jwt",
                        Detector::AwsAccessKey => "aws-access-key",
                        Detector::GithubToken => "github-token",
                        Detector::SlackToken => "slack-token",
                        Detector::PasswordPair => "password-pair",
                        Detector::BearerToken => "bearer-token",
                    }
                    .to_owned()
                })
                .collect(),
            patterns: m.patterns.iter().map(|p| p.0.clone()).collect(),
        })
        .collect()
}

pub(crate) fn rule_path(i: usize, field: Option<&str>) -> Vec<Step<'_>> {
    let mut path = vec![Step::Key("spec"), Step::Key("rules"), Step::Index(i)];
    path.extend(field.map(Step::Key));
    path
}

fn build_rule(
    rule: model::Rule,
    mode: Mode,
    audit_level: crate::audit::event::Level,
    line: usize,
) -> Rule {
    let approval =
        (rule.action == Action::Approve).then(|| rule.approval.clone().unwrap_or_default());
    let meta = RuleMeta {
        name: rule.name.0.clone(),
        description: rule.description.clone(),
        action: rule.action,
        mode: rule.mode.unwrap_or(mode),
        approval,
        audit_level: rule.audit_level.unwrap_or(audit_level),
    };
    let commands = rule
        .commands
        .iter()
        .flatten()
        .map(|argv| argv.0.iter().map(|a| Arg::new(a)).collect())
        .collect();
    Rule {
        meta: Arc::new(meta),
        verbs: VerbSet::of(&rule.verbs),
        names: rule
            .resource_names
            .iter()
            .map(|n| n.0.as_str().into())
            .collect(),
        namespaces: Namespaces::new(rule.namespaces.as_deref()),
        commands,
        urls: rule
            .non_resource_urls
            .iter()
            .map(|u| u.0.as_str().into())
            .collect(),
        line,
        action: rule.action,
        mode: rule.mode.unwrap_or(mode),
        source: Box::new(rule),
    }
}

/// The checks that need more than one field of a rule.
fn check_rule(fault: &Fault<'_>, i: usize, rule: &model::Rule) -> Result<(), Error> {
    let at =
        |field: &'static str, message: &str| Err(fault.at(&rule_path(i, Some(field)), message));
    let s = &rule.subjects;
    if s.users.is_empty() && s.groups.is_empty() && s.service_accounts.is_empty() {
        return at(
            "subjects",
            "must name at least one user, group or service account",
        );
    }
    if rule.verbs.is_empty() {
        return at("verbs", "must name at least one verb (or \"*\")");
    }
    if rule.namespaces.as_ref().is_some_and(Vec::is_empty) {
        return at("namespaces", "is empty: omit it to match any namespace");
    }
    if rule.commands.as_ref().is_some_and(Vec::is_empty) {
        return at("commands", "is empty: omit it to allow any command");
    }
    if rule.approval.is_some() && rule.action != Action::Approve {
        return at("approval", "is only meaningful with `action: approve`");
    }
    if !rule.non_resource_urls.is_empty() {
        // As RBAC's ValidatePolicyRule: a rule is about resources or about URLs.
        let not_with_urls = [
            ("resources", !rule.resources.is_empty()),
            ("apiGroups", !rule.api_groups.is_empty()),
            ("resourceNames", !rule.resource_names.is_empty()),
            ("namespaces", rule.namespaces.is_some()),
            ("commands", rule.commands.is_some()),
        ];
        if let Some((field, _)) = not_with_urls.iter().find(|(_, set)| *set) {
            return at(
                field,
                "cannot be combined with nonResourceURLs: a rule matches either resources or non-resource URLs (as in RBAC)",
            );
        }
        return Ok(());
    }
    if rule.resources.is_empty() {
        return at(
            "resources",
            "a rule must name resources (with apiGroups) or nonResourceURLs",
        );
    }
    if rule.api_groups.is_empty() {
        return at(
            "apiGroups",
            "is required with resources: use \"\" for the core group, \"*\" for any group",
        );
    }
    if let Some(v) = rule.verbs.iter().find(|v| v.is_http_only()) {
        return at(
            "verbs",
            &format!("{:?} is an HTTP method, a verb for nonResourceURLs only (resource rules use create, update, ...)", v.as_str()),
        );
    }
    // A deny or approve naming objects takes a deletecollection of their collection
    // (`Rule::covers_the_collection`); an allow's names never match one.
    let nameless = |v: &Verb| match v {
        Verb::DeleteCollection => rule.action == Action::Allow,
        Verb::Create => !rule.creates_may_name(),
        _ => false,
    };
    if !rule.resource_names.is_empty() && rule.verbs.iter().all(nameless) {
        return at(
            "resourceNames",
            "can never match: deletecollection requests, and creates of objects (not of \
             subresources such as pods/exec), carry no object name",
        );
    }
    if rule.commands.is_some() {
        let exec_only = rule.resources.iter().all(|r| r.0 == "pods/exec");
        let core = rule.api_groups.iter().any(|g| g.0.is_empty() || g.0 == "*");
        if !exec_only || !core {
            return at(
                "commands",
                "only applies to resources [\"pods/exec\"] in apiGroups [\"\"] (pods/attach joins the running process and has no command)",
            );
        }
    }
    Ok(())
}

fn check_masking(fault: &Fault<'_>, i: usize, entry: &model::Masking) -> Result<(), Error> {
    let path = |field| {
        [
            Step::Key("spec"),
            Step::Key("masking"),
            Step::Index(i),
            Step::Key(field),
        ]
    };
    if entry.resources.is_empty() {
        return Err(fault.at(&path("resources"), "must name at least one resource"));
    }
    if entry.fields.is_empty() && entry.detectors.is_empty() && entry.patterns.is_empty() {
        return Err(fault.at(
            &path("fields"),
            "a masking entry needs fields, detectors or patterns",
        ));
    }
    for (field, set) in [
        ("keyRegex", &entry.key_regex),
        ("nameRegex", &entry.name_regex),
    ] {
        if set.is_some() && entry.fields.is_empty() {
            return Err(fault.at(&path(field), "narrows `fields`, so it needs fields"));
        }
    }
    Ok(())
}
