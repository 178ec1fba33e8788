//! Tells reviewers that a request waits: a POST to each configured webhook when an
//! AccessRequest is created, as a generic JSON document or a Slack-compatible
//! message. Retried with backoff; a notification that never arrives changes nothing
//! about the request, which stays held and is refused when its hold ends.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Request};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::{json, Value};

/// Attempts per notification, with doubling delays from `FIRST_RETRY`.
const ATTEMPTS: u32 = 5;
const FIRST_RETRY: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_secs(10);
/// Where the system CA bundle is looked for (Slack, public endpoints).
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// One webhook, as configured.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Webhook {
    /// `https://...` (or `http://` inside the cluster).
    pub url: String,
    #[serde(default)]
    pub format: Format,
    /// PEM CA for an https URL; the system bundle otherwise.
    pub ca_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Format {
    /// `{"kind": "AccessRequestCreated", ...}` with every detail.
    #[default]
    Generic,
    /// `{"text": "..."}` for Slack incoming webhooks (and Mattermost, Teams connectors).
    Slack,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &shown(&self.url))
            .field("format", &self.format)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// A webhook URL as logs and errors show it: its scheme, host and port. The path of a
/// Slack or Teams incoming webhook is the credential to post to the channel, and a
/// user-info part is a password.
fn shown(url: &str) -> String {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return "(an invalid URL)".to_owned();
    };
    let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
        return "(a URL without scheme or host)".to_owned();
    };
    let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
    let elided = match uri.path_and_query().map(|p| p.as_str()) {
        None | Some("" | "/") => "",
        Some(_) => "/…",
    };
    format!("{scheme}://{host}{port}{elided}")
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

#[derive(Debug, thiserror::Error)]
#[error("approval.notify[{index}] ({url}): {message}")]
pub struct Error {
    index: usize,
    url: String,
    message: String,
}

/// The configured webhooks, ready to post to.
pub struct Notifier {
    targets: Vec<(Webhook, http::Uri, HttpClient)>,
}

impl Notifier {
    pub fn new(webhooks: &[Webhook]) -> Result<Notifier, Error> {
        let mut targets = Vec::new();
        for (index, hook) in webhooks.iter().enumerate() {
            let err = |message: String| Error {
                index,
                url: shown(&hook.url),
                message,
            };
            let uri: http::Uri = hook
                .url
                .parse()
                .map_err(|e| err(format!("invalid URL: {e}")))?;
            let (pem, origin) = match &hook.ca_file {
                Some(p) => (
                    std::fs::read(p).map_err(|e| err(format!("cannot read caFile: {e}")))?,
                    p.display().to_string(),
                ),
                None => SYSTEM_CA_BUNDLES
                    .iter()
                    .find_map(|p| std::fs::read(p).ok().map(|pem| (pem, (*p).to_owned())))
                    .unwrap_or_default(),
            };
            let tls = if pem.is_empty() {
                rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| err(e.to_string()))?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            } else {
                crate::tls::client_config(&pem, &origin, None).map_err(|e| err(e.to_string()))?
            };
            let mut http = HttpConnector::new();
            http.enforce_http(false);
            http.set_connect_timeout(Some(TIMEOUT));
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .wrap_connector(http);
            targets.push((
                hook.clone(),
                uri,
                Client::builder(TokioExecutor::new()).build(https),
            ));
        }
        Ok(Notifier { targets })
    }

    /// Posts `notice` to every webhook, each in a task of its own.
    pub fn notify(&self, notice: &Value) {
        for (hook, uri, client) in &self.targets {
            let body = match hook.format {
                Format::Generic => notice.to_string(),
                Format::Slack => json!({ "text": slack_text(notice) }).to_string(),
            };
            let (uri, client, url) = (uri.clone(), client.clone(), shown(&hook.url));
            tokio::spawn(async move {
                let mut delay = FIRST_RETRY;
                for attempt in 1..=ATTEMPTS {
                    let req = Request::post(uri.clone())
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(Full::new(Bytes::from(body.clone())));
                    let sent = match req {
                        Ok(req) => tokio::time::timeout(TIMEOUT, client.request(req)).await,
                        Err(_) => return,
                    };
                    match sent {
                        Ok(Ok(rsp)) if rsp.status().is_success() => return,
                        Ok(Ok(rsp)) => {
                            tracing::warn!(%url, attempt, code = %rsp.status(), "notification refused")
                        }
                        Ok(Err(error)) => {
                            tracing::warn!(%url, attempt, %error, "notification failed")
                        }
                        Err(_) => tracing::warn!(%url, attempt, "notification timed out"),
                    }
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                tracing::error!(%url, "notification not delivered; the request stays held until its hold ends");
            });
        }
    }
}

/// One line a human reads in a chat channel.
fn slack_text(n: &Value) -> String {
    let s = |p: &str| n.pointer(p).and_then(Value::as_str).unwrap_or_default();
    // `pods/exec`, not `pods`: a shell in a pod is not the pod.
    let resource = match s("/request/subresource") {
        "" => s("/request/resource").to_owned(),
        sub => format!("{}/{sub}", s("/request/resource")),
    };
    let target = match (s("/request/namespace"), s("/request/name")) {
        ("", "") => resource,
        ("", name) => format!("{resource} {name}"),
        (ns, "") => format!("{resource} in {ns}"),
        (ns, name) => format!("{resource} {name} in {ns}"),
    };
    // The names are the agent's: in a code span, literal in Slack, Mattermost and Teams
    // alike (`@channel`, `[Approve](https://…)` and `*` are markup outside one).
    let code = |t: &str| slack_escape(&t.replace('`', "'")).into_owned();
    let mut text = format!(
        ":lock: *{}* wants to *{}* `{}` (rule `{}`).",
        slack_escape(s("/requester/user")),
        slack_escape(s("/request/verb")),
        code(&target),
        code(s("/rule")),
    );
    // A proxied request or a bare path goes where its path says: shown whole.
    let proxied = s("/request/subresource") == "proxy" || s("/request/resource").is_empty();
    if proxied && !s("/request/path").is_empty() {
        text.push_str(&format!("\nPath: `{}`", code(s("/request/path"))));
    }
    // What it sends, as the AccessRequest holds it (secrets masked), cut short for a
    // chat line: the whole of it is in the AccessRequest.
    let mut cut_short = false;
    let mut cut = |mut shown: String| {
        if shown.len() > BODY_SHOWN {
            shown.truncate(crate::text::floor_char_boundary(&shown, BODY_SHOWN));
            shown.push_str(" …");
            cut_short = true;
        }
        format!("\n```{}```", slack_escape(&shown.replace("```", "'''")))
    };
    if let Some(query) = n.pointer("/request/query").and_then(Value::as_str) {
        text.push_str(&cut(format!("?{query}")));
        // As the API server reads it, where that differs (`command=%72%6d` is `rm`).
        let read = crate::request_info::query_as_read(query);
        if read != query {
            text.push_str(&format!("\nReads as:{}", cut(format!("?{read}"))));
        }
    }
    if let Some(body) = n.pointer("/request/body") {
        text.push_str(&cut(body.to_string()));
    }
    // The commands may quote a reason: kept inside their code spans, and literal. A
    // request not shown whole here gets no command to approve it from here: what was
    // cut may be what matters (a key sorted after a long annotation, a command's tail).
    // A break-glass notice says who approved it and why on that line: always shown.
    let break_glass = s("/kind") == "AccessRequestBreakGlass";
    if cut_short && !break_glass {
        text.push_str(&format!(
            "\nCut short here: read it whole before deciding: `kubectl chaperone requests {} -n {}`",
            code(s("/accessRequest/name")),
            code(s("/accessRequest/namespace")),
        ));
    } else {
        text.push_str(&format!("\nApprove: `{}`", code(s("/approve"))));
    }
    text.push_str(&format!("\nDeny: `{}`", code(s("/deny"))));
    text
}

/// Text as Slack shows it literally: `&`, `<` and `>` are its markup (`<!channel>`
/// notifies everyone, `<https://…|Approve>` is a link), and what the agent sends must
/// not become either.
fn slack_escape(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains(['&', '<', '>']) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(
        text.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;"),
    )
}

/// How much of a held request's body a chat notification shows.
const BODY_SHOWN: usize = 600;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_and_errors_show_a_webhook_by_its_host_only() {
        for (url, want) in [
            (
                "https://hooks.slack.com/services/T0001/B0001/XXXXXXXXXXXXXXXXXXXXXXXX",
                "https://hooks.slack.com/…",
            ),
            (
                "https://user:p4ss@example.com:8443/hook?key=k",
                "https://example.com:8443/…",
            ),
            (
                "http://approvals.team-a.svc/",
                "http://approvals.team-a.svc",
            ),
            ("not a url", "(an invalid URL)"),
            ("/relative/path", "(a URL without scheme or host)"),
        ] {
            assert_eq!(shown(url), want, "{url}");
        }
        let hook = Webhook {
            url: "https://hooks.slack.com/services/T0001/B0001/XXXXXXXX".into(),
            format: Format::Slack,
            ca_file: None,
        };
        assert!(!format!("{hook:?}").contains("XXXXXXXX"));
        let Err(e) = Notifier::new(&[Webhook {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..hook
        }]) else {
            panic!("a missing caFile is an error")
        };
        let e = e.to_string();
        assert!(
            e.starts_with("approval.notify[0] (https://hooks.slack.com/…): cannot read caFile")
                && !e.contains("XXXXXXXX"),
            "{e}"
        );
    }

    #[test]
    fn a_chat_line_shows_the_body_cut_short_on_a_character() {
        let long = "é".repeat(BODY_SHOWN); // two bytes each
        let notice = json!({
            "requester": {"user": "agent"},
            "request": {"verb": "create", "resource": "configmaps", "namespace": "a",
                        "body": {"metadata": {"name": "c"}, "data": {"a": "```", "k": long}}},
            "accessRequest": {"namespace": "a", "name": "c-1"},
            "rule": "r", "approve": "ok", "deny": "no",
        });
        let text = slack_text(&notice);
        assert!(
            text.starts_with(
                ":lock: *agent* wants to *create* `configmaps in a` (rule `r`).\n```{"
            ),
            "{text}"
        );
        // Cut short: no command to approve it from the chat line.
        assert!(
            text.contains(
                " …```\nCut short here: read it whole before deciding: \
                 `kubectl chaperone requests c-1 -n a`\nDeny: `no`"
            ),
            "{text}"
        );
        assert!(!text.contains("Approve:"), "{text}");
        // A break-glass notice keeps its line, cut or not: it says who approved and why.
        let mut glass = notice.clone();
        glass["kind"] = json!("AccessRequestBreakGlass");
        glass["approve"] = json!("(approved by break-glass: outage)");
        let text = slack_text(&glass);
        assert!(
            text.contains("\nApprove: `(approved by break-glass: outage)`\nDeny: `no`"),
            "{text}"
        );
        // Cut on a character boundary, within the bound, and no fence broken early.
        let shown = text.split("```").nth(1).unwrap();
        assert!(shown.len() <= BODY_SHOWN + " …".len(), "{}", shown.len());
        assert_eq!(text.matches("```").count(), 2, "{text}");
        // Without a body, no block.
        let mut bare = notice.clone();
        bare["request"].as_object_mut().unwrap().remove("body");
        assert!(!slack_text(&bare).contains("```"));
    }

    /// What the agent chose cannot become Slack markup: no channel-wide mention, no
    /// link dressed as an approval.
    #[test]
    fn a_chat_line_keeps_the_agents_text_literal() {
        let notice = json!({
            "requester": {"user": "agent"},
            "request": {"verb": "get", "resource": "configmaps", "namespace": "a",
                        "name": "x<!channel>", "query": "q=<https://evil.example|Approve>"},
            "rule": "r", "approve": "chaperone approve x --reason \"<!here> `now`\"", "deny": "no",
        });
        let text = slack_text(&notice);
        assert!(!text.contains('<') && !text.contains('>'), "{text}");
        assert!(text.contains("--reason \"&lt;!here&gt; 'now'\"`"), "{text}");
        assert!(text.contains("x&lt;!channel&gt;"), "{text}");
        assert!(
            text.contains("q=&lt;https://evil.example|Approve&gt;"),
            "{text}"
        );
    }

    #[test]
    fn a_chat_line_names_the_subresource_and_shows_the_query() {
        let notice = json!({
            "requester": {"user": "agent"},
            "request": {"verb": "create", "resource": "pods", "subresource": "exec",
                        "namespace": "a", "name": "web",
                        "query": "command=sh&container=app&stdin=true&stdout=true"},
            "rule": "r", "approve": "ok", "deny": "no",
        });
        assert_eq!(
            slack_text(&notice),
            ":lock: *agent* wants to *create* `pods/exec web in a` (rule `r`).\n\
             ```?command=sh&amp;container=app&amp;stdin=true&amp;stdout=true```\n\
             Approve: `ok`\nDeny: `no`"
        );
        // Escaped, it is also shown as the API server reads it.
        let mut escaped = notice.clone();
        escaped["request"]["query"] = json!("command=%72%6d&command=-rf;x");
        let text = slack_text(&escaped);
        assert!(
            text.contains("```?command=%72%6d&amp;command=-rf;x```\nReads as:\n```?command=rm```"),
            "{text}"
        );
    }

    /// Markdown of the chat tools the Slack format reaches (Mattermost, Teams) stays
    /// literal in a name the agent chose, and a proxied request shows its path.
    #[test]
    fn a_chat_line_keeps_names_in_code_and_shows_a_proxys_path() {
        let notice = json!({
            "requester": {"user": "agent"},
            "request": {"verb": "get", "resource": "services", "subresource": "proxy",
                        "namespace": "a", "name": "@channel [Approve](https:evil.example) `x`",
                        "path": "/api/v1/namespaces/a/services/web/proxy/admin/reset"},
            "rule": "r", "approve": "ok", "deny": "no",
        });
        let text = slack_text(&notice);
        assert!(
            text.starts_with(
                ":lock: *agent* wants to *get* \
                 `services/proxy @channel [Approve](https:evil.example) 'x' in a` (rule `r`).\n\
                 Path: `/api/v1/namespaces/a/services/web/proxy/admin/reset`\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("Approve: `ok`\nDeny: `no`"), "{text}");
    }
}
