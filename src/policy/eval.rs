//! Evaluates a request against a compiled policy: built-ins, then the indexed rules.
//!
//! The hot path allocates nothing: candidate rules come from the index, the winner is kept as
//! an `Arc` clone of its metadata, and the request's attributes are copied into a fixed inline
//! buffer so that the reason can be formatted later, only if someone reads it.

use std::fmt;
use std::sync::Arc;

use super::compile::{Commands, Policy, RuleMeta};
use super::matching::VerbSet;
use super::model::Approval;
use super::{Action, Mode};
use crate::identity::Subject;
use crate::request_info::RequestInfo;
use crate::status::{Details, Status};

/// No rule matched, in an enforce-mode policy (or nothing matched at all, in an audit one).
pub const DEFAULT_DENY: &str = "builtin:default-deny";
/// `GET` of discovery paths, allowed unless a rule says otherwise.
pub const DISCOVERY: &str = "builtin:discovery";
/// Resources of the `chaperone.dev` API group (approvals), never reachable by callers.
pub const CHAPERONE_RESOURCES: &str = "builtin:chaperone-resources";
/// The `impersonate` verb, never allowed.
pub const IMPERSONATE: &str = "builtin:impersonate";
/// There is no policy to decide with.
pub const NO_POLICY: &str = "builtin:no-policy";
/// An audit-mode policy let the request proceed.
pub const AUDIT_MODE: &str = "builtin:audit-mode";
/// A change to an object the proxy runs with (its policy's ConfigMap, its config, its CA,
/// its serving certificate), never allowed.
pub const OWN_POLICY: &str = "builtin:own-policy";
/// A write of a pod, a pod template or a namespace that sets the keys taking pods out
/// of chaperone or choosing their policy, never allowed through chaperone.
pub const STAY_INJECTED: &str = "builtin:stay-injected";
/// A JSON patch that copies, moves or tests a field chaperone masks in answers: the value
/// would be shown where nothing masks it, or a guess at it confirmed.
pub const MASKED_FIELDS: &str = "builtin:masked-fields";
/// A request through `nodes/proxy` to the kubelet's endpoints that run something in a
/// container or reach into one: they act in any pod on the node, past the rules for
/// `pods/exec`.
pub const KUBELET_COMMANDS: &str = "builtin:kubelet-commands";
/// Every built-in rule name, which a test case's `rule:` may name.
pub const BUILTIN_RULES: [&str; 10] = [
    DEFAULT_DENY,
    DISCOVERY,
    CHAPERONE_RESOURCES,
    IMPERSONATE,
    NO_POLICY,
    AUDIT_MODE,
    OWN_POLICY,
    STAY_INJECTED,
    MASKED_FIELDS,
    KUBELET_COMMANDS,
];

/// Who decided.
#[derive(Debug, Clone)]
enum Source {
    Builtin(&'static str),
    Rule(Arc<RuleMeta>),
    /// [`OWN_POLICY`], about the object named: one the proxy runs with.
    Own(&'static str),
}

#[derive(Debug, Clone)]
struct Verdict {
    action: Action,
    mode: Mode,
    source: Source,
}

impl Verdict {
    fn builtin(action: Action, mode: Mode, name: &'static str) -> Verdict {
        Verdict {
            action,
            mode,
            source: Source::Builtin(name),
        }
    }

    fn rule_name(&self) -> &str {
        match &self.source {
            Source::Builtin(name) => name,
            Source::Own(_) => OWN_POLICY,
            Source::Rule(meta) => &meta.name,
        }
    }
}

/// The outcome of [`authorize`]: what the policy says about a request, and what happens to it.
///
/// The *reported* verdict ([`action`](Self::action), [`rule`](Self::rule)) is the most
/// restrictive matching rule's. When that rule is in audit mode it is only reported
/// ([`enforced`](Self::enforced) is false) and [`applied`](Self::applied) is what the
/// enforce-mode rules decide instead.
#[derive(Debug, Clone)]
pub struct Decision {
    reported: Verdict,
    /// Set when the reported verdict is not what happens to the request.
    applied: Option<Verdict>,
    policy: Option<Arc<str>>,
    target: Target,
    /// Extra words for the Status (why there is no policy).
    note: Option<Arc<str>>,
}

impl Decision {
    /// The reported action: what the most restrictive matching rule says.
    pub fn action(&self) -> Action {
        self.reported.action
    }

    /// The name of the rule behind [`action`](Self::action), or a `builtin:` name.
    pub fn rule(&self) -> &str {
        self.reported.rule_name()
    }

    /// The mode of the reported verdict.
    pub fn mode(&self) -> Mode {
        self.reported.mode
    }

    /// Whether the reported action is carried out (false: "would deny" in audit mode).
    pub fn enforced(&self) -> bool {
        self.reported.mode == Mode::Enforce
    }

    /// What the pipeline must do with the request.
    pub fn applied(&self) -> Action {
        self.applied_verdict().action
    }

    /// The rule behind [`applied`](Self::applied).
    pub fn applied_rule(&self) -> &str {
        self.applied_verdict().rule_name()
    }

    /// Whether the request may go upstream now.
    pub fn is_allowed(&self) -> bool {
        self.applied() == Action::Allow
    }

    /// The approval settings, when the applied action is `approve`.
    pub fn approval(&self) -> Option<&Approval> {
        match &self.applied_verdict().source {
            Source::Rule(meta) if meta.action == Action::Approve => meta.approval.as_ref(),
            _ => None,
        }
    }

    /// How much the audit record keeps: the deciding rule's `auditLevel` (built-in
    /// decisions: `Metadata`).
    pub fn audit_level(&self) -> crate::audit::event::Level {
        match &self.reported.source {
            Source::Rule(meta) => meta.audit_level,
            Source::Builtin(_) | Source::Own(_) => crate::audit::event::Level::Metadata,
        }
    }

    /// The deciding rule's `description`, if it has one.
    pub fn description(&self) -> Option<&str> {
        match &self.reported.source {
            Source::Rule(meta) => meta.description.as_deref(),
            Source::Builtin(_) | Source::Own(_) => None,
        }
    }

    fn applied_verdict(&self) -> &Verdict {
        self.applied.as_ref().unwrap_or(&self.reported)
    }

    /// The one-line reason for the reported verdict, e.g. `rule "no-secrets" denies get on
    /// secrets in namespace default`. Formatted on demand.
    pub fn reason(&self) -> impl fmt::Display + '_ {
        Reason(&self.reported, &self.target)
    }

    /// The Status to refuse the request with: 403 naming the rule and the reason of the
    /// applied verdict (meant for decisions that are not [`is_allowed`](Self::is_allowed)).
    pub fn status(&self) -> Status {
        let verdict = self.applied_verdict();
        let reason = Reason(verdict, &self.target);
        let mut message = match (verdict.action, &self.policy) {
            (Action::Approve, _) => format!(
                "approval required: {reason}; the request needs a reviewer's approval (an AccessRequest)"
            ),
            (_, Some(policy)) => format!("forbidden by chaperone policy {policy:?}: {reason}"),
            (_, None) => format!("forbidden by chaperone: {reason}"),
        };
        if let Some(note) = &self.note {
            message.push_str(": ");
            message.push_str(note);
        }
        let t = &self.target;
        let details = Details {
            name: t.part(NAME).to_owned(),
            group: t.part(GROUP).to_owned(),
            kind: if t.resource_request {
                t.part(RESOURCE).to_owned()
            } else {
                String::new()
            },
            ..Default::default()
        };
        Status::forbidden(message).with_details(details)
    }

    /// The decision when there is no policy: deny everything, saying why.
    /// A change to an object the proxy runs with (`what`, as "the ConfigMap chaperone's
    /// policy comes from"): denied whatever the policy says.
    pub fn own_object(info: &RequestInfo, what: &'static str) -> Decision {
        Decision {
            reported: Verdict {
                action: Action::Deny,
                mode: Mode::Enforce,
                source: Source::Own(what),
            },
            applied: None,
            policy: None,
            target: Target::new(info),
            note: None,
        }
    }

    /// A write that would take pods out of chaperone, or choose their policy: denied
    /// whatever the policy says.
    pub fn stay_injected(info: &RequestInfo) -> Decision {
        Decision {
            reported: Verdict::builtin(Action::Deny, Mode::Enforce, STAY_INJECTED),
            applied: None,
            policy: None,
            target: Target::new(info),
            note: None,
        }
    }

    /// A JSON patch that would show a masked field's value ([`MASKED_FIELDS`]): denied
    /// whatever the policy says; `why` names the operation.
    pub fn reveals_masked(info: &RequestInfo, why: String) -> Decision {
        Decision {
            reported: Verdict::builtin(Action::Deny, Mode::Enforce, MASKED_FIELDS),
            applied: None,
            policy: None,
            target: Target::new(info),
            note: Some(why.into()),
        }
    }

    pub fn no_policy(info: &RequestInfo, why: Option<Arc<str>>) -> Decision {
        Decision {
            reported: Verdict::builtin(Action::Deny, Mode::Enforce, NO_POLICY),
            applied: None,
            policy: None,
            target: Target::new(info),
            note: why,
        }
    }
}

impl Decision {
    /// The decision's [`Display`](fmt::Display) text, for the audit event's reason,
    /// written into one allocation sized for a typical rule's reason.
    pub fn to_text(&self) -> String {
        use fmt::Write;
        let mut out = String::with_capacity(160);
        let _ = write!(out, "{self}");
        out
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.enforced() {
            f.write_str("[audit mode, not enforced] ")?;
        }
        Reason(&self.reported, &self.target).fmt(f)?;
        match &self.applied {
            Some(v) if matches!(v.source, Source::Builtin(AUDIT_MODE)) => {
                f.write_str("; the request proceeds")
            }
            Some(v) => write!(f, "; applied instead: {}", Reason(v, &self.target)),
            None => Ok(()),
        }
    }
}

struct Reason<'a>(&'a Verdict, &'a Target);

impl fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Reason(verdict, t) = self;
        match &verdict.source {
            Source::Rule(meta) => {
                let verb = match verdict.action {
                    Action::Allow => "allows",
                    Action::Deny => "denies",
                    Action::Approve => "requires approval for",
                };
                f.write_str("rule ")?;
                quoted(f, &meta.name)?;
                f.write_str(" ")?;
                f.write_str(verb)?;
                f.write_str(" ")?;
                t.fmt(f)
            }
            Source::Builtin(DISCOVERY) => write!(f, "discovery reads are allowed by default ({t})"),
            Source::Builtin(CHAPERONE_RESOURCES) => {
                write!(
                    f,
                    "chaperone.dev resources are never available through chaperone ({t})"
                )
            }
            Source::Own(what) => {
                write!(f, "{what} cannot be changed through chaperone ({t})")
            }
            Source::Builtin(STAY_INJECTED) => {
                write!(
                    f,
                    "through chaperone, pods, pod templates and custom resources (which may \
                     template pods) cannot set chaperone.dev/inject, \
                     chaperone.dev/policy or hostNetwork, nor can one an administrator took out \
                     of chaperone be changed, nor a namespace: each would run pods outside \
                     chaperone or under a policy of the caller's choosing ({t})"
                )
            }
            Source::Builtin(MASKED_FIELDS) => {
                write!(
                    f,
                    "through chaperone, a JSON patch cannot copy, move or test a field whose \
                     value chaperone masks: it would be shown where nothing masks it, or a \
                     guess at it confirmed ({t})"
                )
            }
            Source::Builtin(IMPERSONATE) => {
                write!(f, "impersonation is never allowed through chaperone ({t})")
            }
            Source::Builtin(KUBELET_COMMANDS) => {
                write!(
                    f,
                    "through chaperone, nodes/proxy does not reach the kubelet's run, exec, \
                     attach, portForward, cri or checkpoint endpoints: they act in any pod on \
                     the node, past the rules for pods/exec; exec in a pod through pods/exec ({t})"
                )
            }
            Source::Builtin(NO_POLICY) => {
                write!(f, "no policy is loaded, so every request is denied ({t})")
            }
            Source::Builtin(AUDIT_MODE) => {
                write!(
                    f,
                    "the policy is in audit mode, so the request proceeds ({t})"
                )
            }
            Source::Builtin(_) => write!(f, "no rule allows {t}"),
        }
    }
}

/// Authorizes one request: `who` asks to do `info` (with `query`, whose `command=` parameters
/// an exec request's commands are matched against).
///
/// Order: the built-in denials (`chaperone.dev` resources, `impersonate`) first, whatever the
/// rules say; then the most restrictive matching rule wins, deny > approve > allow, the first
/// in the file among equals; discovery reads are allowed if no rule matches them; anything
/// else is denied.
pub fn authorize(
    policy: &Policy,
    who: &Subject,
    info: &RequestInfo,
    query: Option<&str>,
) -> Decision {
    decide(policy, who, info, Commands::Sent(query))
}

/// As [`authorize`], with an exec request's command given as [`Commands`].
pub fn decide(
    policy: &Policy,
    who: &Subject,
    info: &RequestInfo,
    commands: Commands<'_>,
) -> Decision {
    let target = Target::new(info);
    let decided = |reported, applied| Decision {
        reported,
        applied,
        policy: Some(policy.name.clone()),
        target,
        note: None,
    };
    if let Some(builtin) = builtin_denial(info) {
        return decided(Verdict::builtin(Action::Deny, Mode::Enforce, builtin), None);
    }
    let verb_bit = VerbSet::request_bit(&info.verb);
    // (action, rule id) of the best candidate per mode; ties go to the earlier rule.
    let mut enforced: Option<(Action, u32)> = None;
    let mut audited: Option<(Action, u32)> = None;
    policy.index.visit(who, info, |id| {
        let rule = &policy.rules[id as usize];
        let best = match rule.mode {
            Mode::Enforce => &mut enforced,
            Mode::Audit => &mut audited,
        };
        // Only a stricter rule, or an earlier one as strict, can change the outcome: check
        // that first, since it is cheaper than matching.
        let better = best.is_none_or(|(action, best_id)| {
            rule.action > action || (rule.action == action && id < best_id)
        });
        if better && rule.matches_rest(verb_bit, info, commands) {
            *best = Some((rule.action, id));
        }
    });
    let verdict = |(action, id): (Action, u32)| {
        let meta = &policy.rules[id as usize].meta;
        let meta = match action {
            Action::Approve => strictest_approval(policy, who, info, commands, verb_bit, meta),
            _ => meta.clone(),
        };
        Verdict {
            action,
            mode: meta.mode,
            source: Source::Rule(meta),
        }
    };
    let enforced = enforced.map(verdict).or_else(|| {
        is_discovery(info).then(|| Verdict::builtin(Action::Allow, Mode::Enforce, DISCOVERY))
    });
    let audited = audited.map(verdict);
    let (reported, applied) = match (enforced, audited) {
        (Some(e), Some(a)) if a.action > e.action => (a, Some(e)),
        (Some(e), _) => (e, None),
        (None, _) if policy.mode == Mode::Enforce => (
            Verdict::builtin(Action::Deny, Mode::Enforce, DEFAULT_DENY),
            None,
        ),
        (None, a) => (
            a.unwrap_or_else(|| Verdict::builtin(Action::Deny, Mode::Audit, DEFAULT_DENY)),
            Some(Verdict::builtin(Action::Allow, Mode::Enforce, AUDIT_MODE)),
        ),
    };
    decided(reported, applied)
}

/// For a review that asks with a wildcard (`*` for the verb, the API group or the
/// resource), the strictest enforced deny, else approve, rule of the caller's that takes
/// part of what the question covers, the first in the file among equals. RBAC answers
/// such a question yes for a rule granting `*`, and with no denials that yes means "all
/// of it"; here a deny of part of it makes the answer no.
pub fn restricting_part(
    policy: &Policy,
    who: &Subject,
    asked: &RequestInfo,
) -> Option<Arc<RuleMeta>> {
    let wild = asked.verb == "*" || asked.api_group == "*" || asked.resource == "*";
    if !asked.is_resource_request || !wild {
        return None;
    }
    let mut best: Option<(Action, u32)> = None;
    policy.index.visit_resource_rules(who, |id| {
        let rule = &policy.rules[id as usize];
        let better = best.is_none_or(|(action, best_id)| {
            rule.action > action || (rule.action == action && id < best_id)
        });
        if rule.action != Action::Allow
            && rule.mode == Mode::Enforce
            && better
            && rule.takes_part_of(asked)
        {
            best = Some((rule.action, id));
        }
    });
    best.map(|(_, id)| policy.rules[id as usize].meta.clone())
}

/// The approval settings of an `approve` decision when several `approve` rules of its
/// mode match: each setting from the strictest of them (the most approvers, the
/// shortest hold and grant, only the skip and break-glass groups every one of them
/// names), so that which rule comes first in the file changes nothing. The decision
/// still names the first; one matching rule costs nothing more.
fn strictest_approval(
    policy: &Policy,
    who: &Subject,
    info: &RequestInfo,
    commands: Commands<'_>,
    verb_bit: u32,
    first: &Arc<RuleMeta>,
) -> Arc<RuleMeta> {
    let mut others: Vec<u32> = Vec::new();
    policy.index.visit(who, info, |id| {
        let rule = &policy.rules[id as usize];
        if rule.action == Action::Approve
            && rule.mode == first.mode
            && !Arc::ptr_eq(&rule.meta, first)
            && !others.contains(&id)
            && rule.matches_rest(verb_bit, info, commands)
        {
            others.push(id);
        }
    });
    if others.is_empty() {
        return first.clone();
    }
    let mut approval = first.approval.clone().unwrap_or_default();
    for id in others {
        let other = policy.rules[id as usize]
            .meta
            .approval
            .clone()
            .unwrap_or_default();
        approval.approvers = approval.approvers.max(other.approvers);
        approval.hold.0 = approval.hold.0.min(other.hold.0);
        approval.grant.0 = approval.grant.0.min(other.grant.0);
        approval
            .skip_groups
            .retain(|g| other.skip_groups.contains(g));
        approval
            .break_glass_groups
            .retain(|g| other.break_glass_groups.contains(g));
    }
    Arc::new(RuleMeta {
        approval: Some(approval),
        ..(**first).clone()
    })
}

/// The denials no rule can lift.
fn builtin_denial(info: &RequestInfo) -> Option<&'static str> {
    if info.verb == "impersonate" {
        return Some(IMPERSONATE);
    }
    if kubelet_command(info) {
        return Some(KUBELET_COMMANDS);
    }
    let group = info.api_group.as_str();
    let ours = group == "chaperone.dev" || group.ends_with(".chaperone.dev");
    (info.is_resource_request && ours).then_some(CHAPERONE_RESOURCES)
}

/// The kubelet's paths ([`KUBELET_COMMANDS`]) that run a command (`run`, `exec`), join
/// a container's streams (`attach`, `portForward`, and `cri`, the runtime's streaming
/// server behind them) or dump its memory (`checkpoint`). Matched in any case: only
/// refusing more.
const KUBELET_COMMAND_PATHS: [&str; 6] =
    ["run", "exec", "attach", "portforward", "cri", "checkpoint"];

/// Whether `info` goes through `nodes/proxy` to one of [`KUBELET_COMMAND_PATHS`].
fn kubelet_command(info: &RequestInfo) -> bool {
    info.is_node_proxy()
        && info.parts().get(3).is_some_and(|first| {
            KUBELET_COMMAND_PATHS
                .iter()
                .any(|path| first.eq_ignore_ascii_case(path))
        })
}

/// `GET` of `/api`, `/api/<v>`, `/apis`, `/apis/<g>`, `/apis/<g>/<v>`, `/version` or
/// `/openapi/...`. Any non-resource path under `/api` or `/apis` is one of the first five:
/// longer ones are resource requests.
fn is_discovery(info: &RequestInfo) -> bool {
    if info.is_resource_request || info.verb != "get" {
        return false;
    }
    let mut segments = info.path.trim_end_matches('/').split('/').skip(1);
    match segments.next() {
        Some("api" | "apis") => true,
        Some("version") => segments.next().is_none(),
        Some("openapi") => segments.next().is_some(),
        _ => false,
    }
}

/// Room for the request's attributes in a decision; longer values are cut.
const TARGET_CAPACITY: usize = 240;
const VERB: usize = 0;
const GROUP: usize = 1;
const RESOURCE: usize = 2;
const SUBRESOURCE: usize = 3;
const NAMESPACE: usize = 4;
const NAME: usize = 5;

/// The request's attributes, copied inline (no heap) for the reason and the Status.
#[derive(Clone)]
struct Target {
    resource_request: bool,
    buf: [u8; TARGET_CAPACITY],
    /// End offsets of verb, group, resource (or path), subresource, namespace, name.
    ends: [u8; 6],
}

impl Target {
    fn new(info: &RequestInfo) -> Target {
        let mut t = Target {
            resource_request: info.is_resource_request,
            buf: [0; TARGET_CAPACITY],
            ends: [0; 6],
        };
        let resource = if info.is_resource_request {
            &info.resource
        } else {
            &info.path
        };
        let parts = [
            &info.verb,
            &info.api_group,
            resource,
            &info.subresource,
            &info.namespace,
            &info.name,
        ];
        let mut at = 0;
        for (i, part) in parts.into_iter().enumerate() {
            let n = crate::text::floor_char_boundary(part, TARGET_CAPACITY - at);
            t.buf[at..at + n].copy_from_slice(&part.as_bytes()[..n]);
            at += n;
            // TARGET_CAPACITY < 256.
            t.ends[i] = at as u8;
        }
        t
    }

    fn part(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        // Only whole characters are copied, so this cannot fail.
        std::str::from_utf8(&self.buf[start..self.ends[i] as usize]).unwrap_or("")
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Piece by piece rather than through `write!`: this text is in every
        // request's audit event, and format strings cost more than the copying.
        f.write_str(self.part(VERB))?;
        f.write_str(" on ")?;
        f.write_str(self.part(RESOURCE))?;
        if !self.resource_request {
            return Ok(());
        }
        for (sep, i) in [(".", GROUP), ("/", SUBRESOURCE)] {
            if !self.part(i).is_empty() {
                f.write_str(sep)?;
                f.write_str(self.part(i))?;
            }
        }
        if !self.part(NAME).is_empty() {
            f.write_str(" ")?;
            quoted(f, self.part(NAME))?;
        }
        match self.part(NAMESPACE) {
            "" => f.write_str(" cluster-wide"),
            ns => {
                f.write_str(" in namespace ")?;
                f.write_str(ns)
            }
        }
    }
}

/// `s` quoted as `{:?}` quotes it, without its per-character escaping for the names
/// that need none (every Kubernetes name and nearly every rule name): the reason is
/// written for every request.
fn quoted(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    let plain = s
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\');
    if plain {
        f.write_str("\"")?;
        f.write_str(s)?;
        f.write_str("\"")
    } else {
        write!(f, "{s:?}")
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Target({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Quoted<'a>(&'a str);

    impl fmt::Display for Quoted<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            quoted(f, self.0)
        }
    }

    #[test]
    fn names_are_quoted_exactly_as_debug_quotes_them() {
        for s in [
            "",
            "allow-reads",
            "nginx-1",
            "with space",
            "say \"hi\"",
            "back\\slash",
            "tab\there",
            "new\nline",
            "ünïcödé",
            "\u{7f}",
            "emoji 🚀",
        ] {
            assert_eq!(Quoted(s).to_string(), format!("{s:?}"), "{s}");
        }
    }
}
