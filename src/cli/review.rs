//! `chaperone approve|deny|requests`: a reviewer's side of just-in-time approvals.
//!
//! They act with the reviewer's own kubeconfig: Kubernetes RBAC on
//! `accessrequests/status` decides who may approve, and the cluster's audit log
//! records who did. Also usable as `kubectl chaperone ...` (install the binary as
//! `kubectl-chaperone`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::terminal::{for_terminal, lines_for_terminal};
use crate::config::{self, KubeconfigSource};
use crate::upstream::Upstream;

/// Who is asking: the reviewer's kubeconfig.
#[derive(Debug, Clone, clap::Args)]
pub struct Access {
    /// The kubeconfig to use (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: current-context).
    #[arg(long)]
    pub context: Option<String>,
    /// The namespace of the AccessRequests (the MCP server pod's namespace).
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
}

#[derive(Debug, clap::Args)]
pub struct DecideArgs {
    /// The AccessRequest's name, as the refused request's message gives it.
    pub name: String,
    /// Why (required to deny; recorded on the AccessRequest).
    #[arg(long)]
    pub reason: Option<String>,
    /// Approve your own request as a member of one of the rule's break-glass groups
    /// (needs --reason; always flagged in the audit record and notified).
    #[arg(long)]
    pub break_glass: bool,
    /// How long the approval holds for the same request (approve only).
    #[arg(long, visible_alias = "for", value_name = "DURATION", default_value = "15m", value_parser = parse_duration)]
    pub grant: Duration,
    /// Decide without being asked to confirm. At a terminal, the request is shown in
    /// full and the decision asked for first; in a script it is shown and decided.
    #[arg(long, short = 'y')]
    pub yes: bool,
    #[command(flatten)]
    pub access: Access,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// One request to show in full: what it asks, its query, command and body (as the
    /// reviewer approves it, secrets masked), its rule and the approvals so far.
    pub name: Option<String>,
    /// Every namespace.
    #[arg(long, short = 'A', conflicts_with = "name")]
    pub all_namespaces: bool,
    #[command(flatten)]
    pub access: Access,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    config::parse_duration(s).ok_or_else(|| format!("invalid duration {s:?}: write e.g. 15m or 1h"))
}

fn client(access: &Access) -> anyhow::Result<Upstream> {
    let upstream = config::Upstream {
        kubeconfig: Some(KubeconfigSource {
            path: access.kubeconfig.clone(),
            context: access.context.clone(),
        }),
        ..Default::default()
    };
    Ok(Upstream::from_config(&upstream, &super::process_env)?)
}

fn path(namespace: &str, name: &str) -> String {
    format!("/apis/chaperone.dev/v1alpha1/namespaces/{namespace}/accessrequests/{name}")
}

async fn get(api: &Upstream, namespace: &str, name: &str) -> anyhow::Result<Value> {
    let (code, body) = api.call(Method::GET, &path(namespace, name), None).await?;
    if code == StatusCode::NOT_FOUND {
        bail!("AccessRequest {namespace}/{name} not found (is -n the MCP server's namespace?)");
    }
    if !code.is_success() {
        bail!(
            "reading AccessRequest {namespace}/{name}: {code}: {}",
            message(&body)
        );
    }
    Ok(serde_json::from_slice(&body)?)
}

/// The message of a Status body, or the body.
fn message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

/// The reviewer's user name and groups, as the API server sees them. Without them the
/// checks below (a requester never approves its own request, break-glass membership)
/// could not be made: an error, not a guess.
async fn whoami(api: &Upstream) -> anyhow::Result<(String, Vec<String>)> {
    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"});
    let (code, body) = api
        .call(
            Method::POST,
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            Some(("application/json", review.to_string().into_bytes())),
        )
        .await
        .context("asking the API server who you are (a SelfSubjectReview)")?;
    if !code.is_success() {
        bail!(
            "asking the API server who you are (a SelfSubjectReview): {code}: {}",
            message(&body)
        );
    }
    let info = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.pointer("/status/userInfo").cloned())
        .unwrap_or_default();
    let Some(user) = info["username"].as_str().filter(|u| !u.is_empty()) else {
        bail!("the API server's SelfSubjectReview names no user");
    };
    let groups = info["groups"]
        .as_array()
        .map(|g| {
            g.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Ok((user.to_owned(), groups))
}

/// Whether two user names may be one person signed in two ways: the same name once each
/// drops what a username prefix puts before it (`oidc:alice` at the API server, `alice`
/// or `https://idp.example#alice` through chaperone, when the two are not given the same
/// `usernamePrefix`). Names the cluster gives (`system:…`) are never aliases.
fn one_person(a: &str, b: &str) -> bool {
    fn bare(name: &str) -> Option<&str> {
        if name.starts_with("system:") {
            return None;
        }
        let name = name.rsplit('#').next().unwrap_or(name);
        Some(name.rsplit(':').next().unwrap_or(name)).filter(|n| !n.is_empty())
    }
    matches!((bare(a), bare(b)), (Some(a), Some(b)) if a == b)
}

/// Approves (`approve == true`) or denies an AccessRequest.
pub async fn decide(args: DecideArgs, approve: bool) -> anyhow::Result<()> {
    let (ns, name) = (&args.access.namespace, &args.name);
    if !approve && args.reason.as_deref().unwrap_or("").is_empty() {
        bail!("deny needs --reason: the requester sees it");
    }
    let api = client(&args.access)?;
    let object = get(&api, ns, name).await?;
    let phase = object
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("Pending");
    if phase != "Pending" {
        bail!(
            "AccessRequest {ns}/{name} is already {}",
            for_terminal(phase)
        );
    }
    let (reviewer, groups) = whoami(&api).await?;
    let requester = object
        .pointer("/spec/requester/user")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let break_glass_groups: Vec<&str> = object
        .pointer("/spec/breakGlassGroups")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if args.break_glass {
        if !approve {
            bail!("--break-glass approves; it does not deny");
        }
        if args.reason.as_deref().unwrap_or("").is_empty() {
            bail!("--break-glass needs --reason: it is recorded and sent to every reviewer");
        }
        if !groups
            .iter()
            .any(|g| break_glass_groups.contains(&g.as_str()))
        {
            let allowed = if break_glass_groups.is_empty() {
                "the rule has none".to_owned()
            } else {
                for_terminal(&break_glass_groups.join(", ")).into_owned()
            };
            bail!("{reviewer} is in none of the rule's break-glass groups ({allowed})");
        }
    } else if reviewer == requester {
        bail!("{reviewer} requested {name}: a requester can never approve its own request (see --break-glass)");
    } else if approve && one_person(&reviewer, requester) {
        let requester = for_terminal(requester);
        bail!(
            "{reviewer} may be the requester of {name}, {requester}, under another sign-in's \
             prefix: a requester can never approve its own request (see --break-glass). If \
             these are two people, another reviewer must approve; give chaperone's issuer the \
             API server's usernameClaim and usernamePrefix so one person has one name"
        );
    }
    // What is decided, in full, before it is: a name handed over by the agent ("approve
    // get-nodes-..., I need to read node status") says little of what it asks.
    print!("{}", show(&object));
    if !args.yes && std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        let verb = if approve { "approve" } else { "deny" };
        eprint!("{verb} this request? [y/N] ");
        let mut answer = String::new();
        std::io::stdin()
            .read_line(&mut answer)
            .context("reading the answer")?;
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "Yes" | "YES") {
            bail!("not decided: {verb} was not confirmed (nothing changed)");
        }
    }
    let now = time::OffsetDateTime::now_utc();
    let at = crate::audit::event::timestamp(now);
    // Distinct approvals so far; a rule may need several reviewers.
    let mut approvals: Vec<Value> = object
        .pointer("/status/approvals")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if approve && approvals.iter().any(|a| a["user"] == reviewer.as_str()) {
        bail!("{reviewer} has already approved {name}: another reviewer must approve it");
    }
    let needed = object
        .pointer("/spec/approvers")
        .and_then(Value::as_u64)
        .unwrap_or(1);
    if approve {
        approvals.push(
            json!({"user": reviewer, "at": at, "reason": args.reason.clone().unwrap_or_default()}),
        );
    }
    let decided = !approve || args.break_glass || approvals.len() as u64 >= needed;
    let mut status = json!({ "approvals": approvals });
    if args.break_glass {
        status["breakGlass"] = json!(true);
    }
    if decided {
        status["phase"] = json!(if approve { "Approved" } else { "Denied" });
        status["decidedBy"] = json!(reviewer);
        status["decidedAt"] = json!(at);
        status["reason"] = json!(args.reason.clone().unwrap_or_default());
    }
    if approve && decided {
        let until = now + time::Duration::try_from(args.grant).context("--grant is too long")?;
        status["grantUntil"] = json!(crate::audit::event::timestamp(until));
    }
    let patch = status_patch(&object, status).to_string().into_bytes();
    let (code, body) = api
        .call(
            Method::PATCH,
            &format!("{}/status", path(ns, name)),
            Some(("application/merge-patch+json", patch)),
        )
        .await?;
    if code == StatusCode::CONFLICT {
        bail!(
            "AccessRequest {ns}/{name} changed since it was read (another reviewer decided \
             it or added an approval meanwhile); run the command again to see where it stands"
        );
    }
    if !code.is_success() {
        bail!(
            "updating AccessRequest {ns}/{name}: {code}: {}",
            message(&body)
        );
    }
    let request = &object["spec"]["request"];
    let said = if !decided {
        format!(
            "accessrequest/{name}: approval {} of {needed} recorded for {reviewer}; it waits for another reviewer",
            approvals.len()
        )
    } else {
        format!(
            "accessrequest/{name} {} by {reviewer}: {requester} may {} {}{}",
            if approve { "approved" } else { "denied" },
            request["verb"].as_str().unwrap_or_default(),
            resource_label(&object),
            if approve {
                format!(" for {:?}", args.grant)
            } else {
                String::new()
            },
        )
    };
    println!("{}", for_terminal(&said));
    Ok(())
}

/// The merge patch of a decision, made on the object as it was read: its
/// `resourceVersion` goes along, so the API server refuses it (409) if another reviewer
/// changed the object in between, rather than one decision overwriting the other (a
/// denial turned into an approval, or an approval of two lost).
fn status_patch(object: &Value, status: Value) -> Value {
    let mut patch = json!({ "status": status });
    if let Some(rv) = object.pointer("/metadata/resourceVersion") {
        patch["metadata"] = json!({ "resourceVersion": rv });
    }
    patch
}

/// Lists AccessRequests (name, phase, requester, what, rule), or shows one in full.
pub async fn list(args: ListArgs) -> anyhow::Result<()> {
    let api = client(&args.access)?;
    let ns = &args.access.namespace;
    if let Some(name) = &args.name {
        let object = get(&api, ns, name).await?;
        print!("{}", show(&object));
        return Ok(());
    }
    let path = if args.all_namespaces {
        "/apis/chaperone.dev/v1alpha1/accessrequests".to_owned()
    } else {
        format!("/apis/chaperone.dev/v1alpha1/namespaces/{ns}/accessrequests")
    };
    let (code, body) = api.call(Method::GET, &path, None).await?;
    if !code.is_success() {
        bail!("listing AccessRequests in {ns}: {code}: {}", message(&body));
    }
    let list: Value = serde_json::from_slice(&body)?;
    println!(
        "{:<16} {:<44} {:<9} {:<44} {:<32} RULE",
        "NAMESPACE", "NAME", "PHASE", "REQUESTER", "REQUEST"
    );
    for item in list["items"].as_array().into_iter().flatten() {
        let s = |p: &str| {
            item.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        // The object's name: in the path, or for a create in the body.
        let name = match s("/spec/request/name") {
            n if n.is_empty() => s("/spec/request/body/metadata/name"),
            n => n,
        };
        let what = format!(
            "{} {}/{}{}{}",
            s("/spec/request/verb"),
            s("/spec/request/namespace"),
            resource_label(item),
            if name.is_empty() { "" } else { " " },
            name
        );
        let phase = item
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("Pending");
        // The request's names are the agent's choice: shown so that they cannot drive
        // the reviewer's terminal.
        println!(
            "{:<16} {:<44} {:<9} {:<44} {:<32} {}",
            for_terminal(&s("/metadata/namespace")),
            for_terminal(&s("/metadata/name")),
            for_terminal(phase),
            for_terminal(&s("/spec/requester/user")),
            for_terminal(&what),
            for_terminal(&s("/spec/rule"))
        );
    }
    Ok(())
}

/// What an AccessRequest's request acts on, as `kubectl` names it: the resource, its
/// group and subresource (`nodes/proxy`, `deployments.apps/scale`).
fn resource_label(object: &Value) -> String {
    let s = |p: &str| {
        object
            .pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let resource = s("/spec/request/resource");
    match (s("/spec/request/apiGroup"), s("/spec/request/subresource")) {
        ("", "") => resource.to_owned(),
        ("", sub) => format!("{resource}/{sub}"),
        (group, "") => format!("{resource}.{group}"),
        (group, sub) => format!("{resource}.{group}/{sub}"),
    }
}

/// One AccessRequest as a reviewer reads it before deciding: who asks, what exactly
/// (path, query, command, body as the API server would get it, secrets masked), under
/// which rule, what is decided so far, and the commands to decide. What the agent
/// chose is made safe for the terminal.
fn show(object: &Value) -> String {
    let s = |p: &str| {
        object
            .pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let list = |p: &str| {
        object
            .pointer(p)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let (ns, name) = (s("/metadata/namespace"), s("/metadata/name"));
    let phase = match s("/status/phase") {
        "" => "Pending",
        p => p,
    };
    let mut rows: Vec<(&str, String)> = Vec::new();
    let requester = match s("/spec/requester/pod") {
        "" => s("/spec/requester/user").to_owned(),
        pod => format!("{} (pod {pod})", s("/spec/requester/user")),
    };
    rows.push(("requester", requester));
    rows.push(("uid", s("/spec/requester/uid").to_owned()));
    rows.push(("groups", list("/spec/requester/groups").join(", ")));
    let resource = resource_label(object);
    let target = match (s("/spec/request/name"), s("/spec/request/namespace")) {
        ("", "") => String::new(),
        (n, "") => format!(" {n}"),
        ("", namespace) => format!(" in {namespace}"),
        (n, namespace) => format!(" {n} in {namespace}"),
    };
    rows.push((
        "asks to",
        format!("{} {resource}{target}", s("/spec/request/verb")),
    ));
    rows.push(("path", s("/spec/request/path").to_owned()));
    let query = s("/spec/request/query");
    rows.push(("query", query.to_owned()));
    // As the API server reads it (escapes decoded, pairs holding `;` dropped), where
    // that differs from what was sent: `command=%72%6d` reads `command=rm`.
    let read = crate::request_info::query_as_read(query);
    if read != query {
        rows.push(("reads as", read));
    }
    let subresource = s("/spec/request/subresource");
    if matches!(subresource, "exec" | "attach")
        && crate::request_info::go_bool_param(query, "stdin")
    {
        rows.push((
            "stdin",
            "open: what is typed into the session is not shown here, and a grant covers \
             new sessions until it ends"
                .to_owned(),
        ));
    }
    if subresource == "portforward" {
        let query = Some(query).filter(|q| !q.is_empty());
        rows.push(("ports", crate::approval::forwarded_ports(query).join(", ")));
    }
    if let Some(command) = object.pointer("/spec/request/command") {
        rows.push(("command", command.to_string()));
    }
    let mut rule = s("/spec/rule").to_owned();
    if !s("/spec/reason").is_empty() {
        rule.push_str(&format!(": {}", s("/spec/reason")));
    }
    let needed = object
        .pointer("/spec/approvers")
        .and_then(Value::as_u64)
        .unwrap_or(1);
    rows.push(("rule", rule));
    rows.push((
        "needs",
        match list("/spec/breakGlassGroups") {
            g if g.is_empty() => format!("{needed} approval(s)"),
            g => format!("{needed} approval(s); break-glass for {}", g.join(", ")),
        },
    ));
    rows.push(("expires", s("/spec/expiresAt").to_owned()));
    let approvals: Vec<String> = object
        .pointer("/status/approvals")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|a| {
            let text = |k: &str| a[k].as_str().unwrap_or_default();
            match text("reason") {
                "" => format!("{} at {}", text("user"), text("at")),
                why => format!("{} at {}: {why}", text("user"), text("at")),
            }
        })
        .collect();
    rows.push(("approvals", approvals.join("; ")));
    if phase != "Pending" {
        let mut decided = format!(
            "{phase} by {} at {}",
            s("/status/decidedBy"),
            s("/status/decidedAt")
        );
        if !s("/status/reason").is_empty() {
            decided.push_str(&format!(": {}", s("/status/reason")));
        }
        if !s("/status/grantUntil").is_empty() {
            decided.push_str(&format!("; granted until {}", s("/status/grantUntil")));
        }
        rows.push(("decided", decided));
    }
    let mut out = format!(
        "accessrequest/{} in {}: {}\n",
        for_terminal(name),
        for_terminal(ns),
        phase
    );
    for (label, value) in rows.iter().filter(|(_, v)| !v.is_empty()) {
        out.push_str(&format!("  {label:<10} {}\n", for_terminal(value)));
    }
    if let Some(body) = object.pointer("/spec/request/body") {
        let kind = match s("/spec/request/contentType") {
            "" => String::new(),
            t => format!(" ({})", for_terminal(t)),
        };
        out.push_str(&format!(
            "  body{kind}, as the API server would get it, secrets masked:\n"
        ));
        // JSON, where a string's line breaks stay `\n`: as YAML, a value holding
        // "ok\nroleRef:\n  name: view" would print as lines that pass for fields.
        let text = serde_json::to_string_pretty(body).unwrap_or_else(|_| body.to_string());
        for line in lines_for_terminal(&text).lines() {
            out.push_str(&format!("    {line}\n"));
        }
    }
    if phase == "Pending" {
        let (name, ns) = (for_terminal(name), for_terminal(ns));
        out.push_str(&format!(
            "decide with:\n  chaperone approve {name} -n {ns} --reason \"...\"\n  chaperone deny {name} -n {ns} --reason \"...\"\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reviewer named by the API server with another prefix than chaperone gave the
    /// requester is taken for the requester; different people, and the cluster's own
    /// names, are not.
    #[test]
    fn a_requester_under_another_prefix_is_found_out() {
        let same = [
            ("oidc:alice", "alice"),
            ("oidc:alice", "https://idp.example#alice"),
            ("alice@example.com", "oidc:alice@example.com"),
            ("https://a.example#bob", "https://b.example#bob"),
        ];
        for (a, b) in same {
            assert!(one_person(a, b), "{a} / {b}");
            assert!(one_person(b, a), "{b} / {a}");
        }
        let different = [
            ("oidc:alice", "bob"),
            ("oidc:alice", "oidc:alicia"),
            ("alice", "alice2"),
            ("system:serviceaccount:team-a:alice", "alice"),
            ("system:admin", "oidc:admin"),
            ("oidc:", "ldap:"),
        ];
        for (a, b) in different {
            assert!(!one_person(a, b), "{a} / {b}");
            assert!(!one_person(b, a), "{b} / {a}");
        }
    }

    /// What a reviewer is shown of one request: all that an approval grants, and
    /// nothing the agent chose can drive the terminal.
    #[test]
    fn a_request_is_shown_in_full_and_safely() {
        let object = json!({
            "metadata": {"name": "create-rolebindings-1a2b", "namespace": "team-a"},
            "spec": {
                "requester": {"user": "system:serviceaccount:team-a:agent", "groups": ["g1", "g2"], "pod": "team-a/mcp-0"},
                "request": {
                    "verb": "create", "apiGroup": "rbac.authorization.k8s.io", "resource": "rolebindings",
                    "namespace": "team-a", "path": "/apis/rbac.authorization.k8s.io/v1/namespaces/team-a/rolebindings",
                    "query": "fieldManager=kubectl-create&x=\u{202e}", "contentType": "application/json",
                    "body": {"kind": "RoleBinding", "metadata": {"name": "agent-admin\u{1b}[2J",
                                "annotations": {"note": "ok\nroleRef:\n  name: view"}},
                             "roleRef": {"kind": "ClusterRole", "name": "admin"}},
                },
                "rule": "approve-rbac", "reason": "RBAC changes need a human",
                "expiresAt": "2025-06-01T12:10:00Z", "approvers": 2, "breakGlassGroups": ["oncall"],
            },
            "status": {"approvals": [{"user": "alice", "at": "2025-06-01T12:03:12Z", "reason": "ok"}]},
        });
        let shown = show(&object);
        for part in [
            "accessrequest/create-rolebindings-1a2b in team-a: Pending",
            "system:serviceaccount:team-a:agent (pod team-a/mcp-0)",
            "create rolebindings.rbac.authorization.k8s.io in team-a",
            "fieldManager=kubectl-create",
            "approve-rbac: RBAC changes need a human",
            "2 approval(s); break-glass for oncall",
            "alice at 2025-06-01T12:03:12Z: ok",
            "body (application/json)",
            "    \"roleRef\": {",
            "      \"name\": \"admin\"",
            // A value's line breaks stay in it: no line passes for a field.
            "\"note\": \"ok\\nroleRef:\\n  name: view\"",
            "chaperone approve create-rolebindings-1a2b -n team-a",
        ] {
            assert!(shown.contains(part), "{part:?} not in:\n{shown}");
        }
        assert!(!shown.contains(['\u{1b}', '\u{202e}']), "{shown}");
        assert!(shown.contains("x=\\u{202e}"), "{shown}");
        // A query is also shown as the API server reads it, where that differs; an exec
        // with its stdin open says that what is typed is not shown.
        let exec = json!({"spec": {"request": {"verb": "create", "resource": "pods",
            "subresource": "exec", "name": "web", "query": "command=%72%6d&command=-rf&stdin=true;x"}}});
        let shown = show(&exec);
        assert!(
            shown.contains("reads as   command=rm&command=-rf\n"),
            "{shown}"
        );
        assert!(!shown.contains("stdin      open"), "{shown}");
        let exec = json!({"spec": {"request": {"verb": "create", "resource": "pods",
            "subresource": "exec", "name": "web", "query": "command=psql&stdin=1"}}});
        let shown = show(&exec);
        assert!(shown.contains("stdin      open: what is typed"), "{shown}");
        assert!(!shown.contains("reads as"), "{shown}");
        // What is asked names its subresource: a node's proxy is the kubelet's API.
        let proxy = json!({"spec": {"request": {"verb": "get", "resource": "nodes",
            "subresource": "proxy", "name": "n1"}}});
        assert!(
            show(&proxy).contains("asks to    get nodes/proxy n1\n"),
            "{}",
            show(&proxy)
        );
        // A port-forward's ports, decoded as the API server reads them.
        let forward = json!({"spec": {"request": {"verb": "get", "resource": "pods",
            "subresource": "portforward", "name": "web", "query": "ports=8080%2C22"}}});
        assert!(
            show(&forward).contains("ports      8080, 22\n"),
            "{}",
            show(&forward)
        );
    }

    /// A decision goes with the `resourceVersion` it was made on: two reviewers deciding
    /// at once cannot overwrite each other.
    #[test]
    fn a_decision_is_made_on_the_object_as_read() {
        let object = json!({"metadata": {"name": "r", "resourceVersion": "41"}});
        let patch = status_patch(&object, json!({"phase": "Denied"}));
        assert_eq!(
            patch,
            json!({"metadata": {"resourceVersion": "41"}, "status": {"phase": "Denied"}})
        );
    }
}
