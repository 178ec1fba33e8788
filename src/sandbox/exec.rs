//! `pods/exec` over WebSocket (`v5.channel.k8s.io`, also `v4.channel.k8s.io`), running an
//! "echo session" instead of a process:
//! - `echo ARGS` writes ARGS and a newline on stdout;
//! - `true` succeeds, `false` and `exit N` fail with that exit code (as a
//!   `NonZeroExitCode` Status, which kubectl turns into its own exit code);
//! - with stdin attached, stdin is echoed back on stdout until it closes (v5's
//!   close-channel message) — so `echo hi | kubectl exec -i POD -- cat` prints `hi`;
//! - any other command without stdin writes its argv joined by spaces.
//!
//! Then the Status goes out on the error channel (3) and the socket closes. SPDY is not
//! served: kubectl 1.30+ speaks WebSocket first and only falls back to SPDY when the
//! WebSocket upgrade itself fails.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::handler::{Ctx, ResourcePath};
use super::registry::ResourceDef;
use super::status::{full, ApiError};
use super::store::Store;
use super::Body;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const ERROR: u8 = 3;
/// v5's "close this stream" message type.
const CLOSE: u8 = 255;
/// Upper bound of one session, and of the bytes echoed back from stdin.
const SESSION_LIMIT: Duration = Duration::from_secs(600);
const STDIN_LIMIT: usize = 16 * 1024 * 1024;

pub(crate) fn serve(
    store: &Arc<Store>,
    ctx: &Ctx,
    def: &ResourceDef,
    p: &ResourcePath,
    req: &mut Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (Some(ns), Some(name)) = (p.namespace.as_deref(), p.name.as_deref()) else {
        return Err(ApiError::unknown_path());
    };
    if !matches!(ctx.method, http::Method::GET | http::Method::POST) {
        return Err(ApiError::method_not_allowed());
    }
    let pod = store
        .get(def, ns, name)
        .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))?;
    let containers: Vec<&str> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| cs.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    match ctx.q("container").filter(|c| !c.is_empty()) {
        Some(c) if !containers.contains(&c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {name}"
            )));
        }
        None if containers.len() != 1 => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )));
        }
        _ => {}
    }
    let command = ctx.q_all("command");
    if command.is_empty() {
        return Err(ApiError::bad_request(
            "you must specify at least one command for the container",
        ));
    }
    let stdin = ctx.flag("stdin");
    if !(stdin || ctx.flag("stdout") || ctx.flag("stderr")) {
        return Err(ApiError::bad_request(
            "you must specify at least one of stdin, stdout, stderr",
        ));
    }
    let is_ws = ctx
        .header("upgrade")
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    let key = ctx.header("sec-websocket-key").map(str::to_string);
    let (true, Some(key)) = (is_ws, key) else {
        return Err(ApiError::bad_request(
            "Upgrade request required: the sandbox serves exec over WebSocket (v5.channel.k8s.io, v4.channel.k8s.io) only, not SPDY",
        ));
    };
    let offered: Vec<String> = ctx
        .headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
        .collect();
    let Some(protocol) = ["v5.channel.k8s.io", "v4.channel.k8s.io"]
        .into_iter()
        .find(|p| offered.iter().any(|o| o == p))
    else {
        return Err(ApiError::bad_request(format!(
            "unable to upgrade: none of the offered subprotocols {offered:?} is supported (v5.channel.k8s.io, v4.channel.k8s.io)"
        )));
    };
    let on_upgrade = hyper::upgrade::on(req);
    let v5 = protocol.starts_with("v5");
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "sandbox exec: upgrade failed");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        if tokio::time::timeout(SESSION_LIMIT, session(ws, command, stdin, v5))
            .await
            .is_err()
        {
            tracing::debug!("sandbox exec: session hit its time limit");
        }
    });
    let mut resp = Response::new(full(""));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(protocol),
    );
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    Ok(resp)
}

/// How long the sandbox's commands take to start before they print.
const PROCESS_START: Duration = Duration::from_millis(100);

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(v)
}

/// What the command prints before any stdin, and its exit code.
fn run(command: &[String], stdin: bool) -> (Option<String>, i32) {
    let args = command.get(1..).unwrap_or_default().join(" ");
    match command.first().map(String::as_str).unwrap_or("") {
        "echo" => (Some(format!("{args}\n")), 0),
        "true" => (None, 0),
        "false" => (None, 1),
        "exit" => (
            None,
            command.get(1).and_then(|c| c.parse().ok()).unwrap_or(0),
        ),
        _ if stdin => (None, 0),
        _ => (Some(format!("{}\n", command.join(" "))), 0),
    }
}

/// The Status written on the error channel at the end.
fn exit_status(command: &[String], code: i32) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

async fn session<S>(ws: WebSocketStream<S>, command: Vec<String>, stdin: bool, v5: bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    let (output, code) = run(&command, stdin);
    // A process takes a moment to start and print; output sent the instant the upgrade
    // completes can reach kubectl 1.32's WebSocket executor before it has set up its
    // stdout stream, which then drops it ("Unknown stream id 1, discarding message";
    // kubernetes/kubernetes#131189, fixed in client-go by #131203): the exec exits 0
    // with no output. The sandbox waits as a real command would.
    tokio::time::sleep(PROCESS_START).await;
    if let Some(out) = output {
        if tx.send(frame(STDOUT, out.as_bytes())).await.is_err() {
            return;
        }
    }
    if stdin {
        let mut echoed = 0usize;
        while let Some(msg) = rx.next().await {
            let data = match msg {
                Ok(Message::Binary(d)) => d,
                Ok(Message::Close(_)) | Err(_) => return,
                // Pings are answered by tungstenite; text frames belong to the base64
                // protocols, which are not offered.
                Ok(_) => continue,
            };
            match data.first() {
                Some(&STDIN) if data.len() > 1 && echoed < STDIN_LIMIT => {
                    echoed += data.len() - 1;
                    if tx.send(frame(STDOUT, &data[1..])).await.is_err() {
                        return;
                    }
                }
                Some(&CLOSE) if v5 && data.get(1) == Some(&STDIN) => break,
                _ => {}
            }
        }
    }
    let status = serde_json::to_vec(&exit_status(&command, code)).unwrap_or_default();
    if tx.send(frame(ERROR, &status)).await.is_err() {
        return;
    }
    let _ = tx
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })))
        .await;
    // Let the client's close frame arrive so the closing handshake completes (bounded).
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        for _ in 0..64 {
            if rx.next().await.is_none() {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn echo_session_commands() {
        assert_eq!(
            run(&cmd("echo hello world"), false),
            (Some("hello world\n".into()), 0)
        );
        assert_eq!(run(&cmd("cat"), true), (None, 0));
        assert_eq!(run(&cmd("ls -l /"), false), (Some("ls -l /\n".into()), 0));
        assert_eq!(run(&cmd("exit 3"), false).1, 3);
        assert_eq!(exit_status(&cmd("true"), 0)["status"], "Success");
        let s = exit_status(&cmd("false"), 1);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "1");
    }

    #[tokio::test]
    async fn v5_session_echoes_stdin() {
        let (a, b) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move {
            let ws = WebSocketStream::from_raw_socket(a, Role::Server, None).await;
            session(ws, cmd("cat"), true, true).await;
        });
        let mut client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
        client.send(frame(STDIN, b"hi\n")).await.unwrap();
        client
            .send(Message::Binary(vec![CLOSE, STDIN]))
            .await
            .unwrap();
        let mut got = Vec::new();
        while let Some(Ok(m)) = client.next().await {
            if let Message::Binary(d) = m {
                got.push(d);
            }
        }
        server.await.unwrap();
        assert_eq!(got[0], b"\x01hi\n");
        assert_eq!(got[1][0], ERROR);
        let status: Value = serde_json::from_slice(&got[1][1..]).unwrap();
        assert_eq!(status["status"], "Success");
    }
}
