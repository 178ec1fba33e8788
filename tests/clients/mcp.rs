//! A minimal MCP client for the tests: JSON-RPC 2.0 over a child's stdio, one JSON
//! message per line (the MCP stdio transport), every read bounded by a timeout.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// How long the server gets to answer any one message.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The protocol revision the client asks for.
pub const PROTOCOL_VERSION: &str = "2025-06-18";

/// The Go binary of the npm package `kubernetes-mcp-server` (from its platform
/// package): `$CHAPERONE_MCP_SERVER` (set by `.ci/test`), else where `.ci/test`
/// installs it.
pub fn server_path() -> PathBuf {
    let platform = if cfg!(target_arch = "aarch64") {
        "linux-arm64"
    } else {
        "linux-amd64"
    };
    let (path, from) = match std::env::var_os("CHAPERONE_MCP_SERVER") {
        Some(path) => (PathBuf::from(path), "$CHAPERONE_MCP_SERVER"),
        None => (
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
                ".ci/cache/npm/node_modules/kubernetes-mcp-server-{platform}/bin/kubernetes-mcp-server-{platform}"
            )),
            "the default path ($CHAPERONE_MCP_SERVER is unset)",
        ),
    };
    assert!(
        path.is_file(),
        "kubernetes-mcp-server not found at {} ({from}): run .ci/test, which installs the npm \
         package kubernetes-mcp-server into .ci/cache/npm and sets $CHAPERONE_MCP_SERVER",
        path.display()
    );
    path
}

/// A running MCP server on stdio; killed when dropped.
pub struct McpServer {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    next_id: u64,
    program: String,
    /// Where the server writes its log (shown when something goes wrong).
    log: Option<PathBuf>,
}

/// What a `tools/call` returned: whether the tool reported an error, and its text.
#[derive(Debug)]
pub struct ToolResult {
    pub is_error: bool,
    pub text: String,
    pub raw: Value,
}

impl McpServer {
    /// Spawns `cmd` with piped stdin/stdout (stderr as the command set it).
    pub fn spawn(mut cmd: Command, log: Option<PathBuf>) -> Self {
        cmd.kill_on_drop(true)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let program = format!("{:?}", cmd.as_std());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start {program}: {e}"));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        McpServer {
            child,
            stdin,
            stdout,
            next_id: 1,
            program,
            log,
        }
    }

    /// The server's log so far, for failure messages.
    pub fn log(&self) -> String {
        match &self.log {
            Some(path) => std::fs::read_to_string(path)
                .unwrap_or_else(|e| format!("(no log at {}: {e})", path.display())),
            None => "(no log file)".to_owned(),
        }
    }

    async fn send(&mut self, message: &Value) {
        let mut line = serde_json::to_vec(message).expect("serialise");
        line.push(b'\n');
        let write = async {
            self.stdin.write_all(&line).await?;
            self.stdin.flush().await
        };
        match tokio::time::timeout(READ_TIMEOUT, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("writing to {}: {e}\nlog:\n{}", self.program, self.log()),
            Err(_) => panic!("{} stopped reading its stdin", self.program),
        }
    }

    /// The next message on stdout, within [`READ_TIMEOUT`].
    async fn receive(&mut self) -> Value {
        let line = match tokio::time::timeout(READ_TIMEOUT, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => {
                let status = self.child.try_wait();
                panic!(
                    "{} closed its stdout ({status:?})\nlog:\n{}",
                    self.program,
                    self.log()
                )
            }
            Ok(Err(e)) => panic!("reading from {}: {e}", self.program),
            Err(_) => panic!(
                "{} sent nothing within {READ_TIMEOUT:?}\nlog:\n{}",
                self.program,
                self.log()
            ),
        };
        serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!(
                "{} wrote a line that is not JSON ({e}): {line}",
                self.program
            )
        })
    }

    /// Sends a request and waits for its response, skipping notifications and
    /// refusing requests from the server (the client declares no capabilities).
    /// Returns the `result`; panics on a JSON-RPC error.
    pub async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        loop {
            let message = self.receive().await;
            if message.get("method").is_some() {
                if let Some(their_id) = message.get("id") {
                    let refusal = json!({
                        "jsonrpc": "2.0",
                        "id": their_id,
                        "error": {"code": -32601, "message": "method not supported by the test client"},
                    });
                    self.send(&refusal).await;
                }
                continue;
            }
            if message["id"] != json!(id) {
                continue;
            }
            if let Some(error) = message.get("error") {
                panic!("{method} failed: {error}\nlog:\n{}", self.log());
            }
            return message["result"].clone();
        }
    }

    /// Sends a notification (no response).
    pub async fn notify(&mut self, method: &str) {
        self.send(&json!({"jsonrpc": "2.0", "method": method}))
            .await;
    }

    /// The handshake: `initialize`, then `notifications/initialized`. Returns the
    /// server's `initialize` result.
    pub async fn initialize(&mut self) -> Value {
        let result = self
            .request(
                "initialize",
                json!({
                    "protocolVersion": PROTOCOL_VERSION,
                    "capabilities": {},
                    "clientInfo": {"name": "chaperone-tests", "version": "1.0"},
                }),
            )
            .await;
        self.notify("notifications/initialized").await;
        result
    }

    /// The names of the tools `tools/list` offers (following `nextCursor`).
    pub async fn tool_names(&mut self) -> Vec<String> {
        let mut names = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let params = match &cursor {
                Some(c) => json!({"cursor": c}),
                None => json!({}),
            };
            let page = self.request("tools/list", params).await;
            for tool in page["tools"].as_array().expect("a tools array") {
                names.push(tool["name"].as_str().expect("a tool name").to_owned());
            }
            match page["nextCursor"].as_str() {
                Some(next) if !next.is_empty() => cursor = Some(next.to_owned()),
                _ => return names,
            }
        }
    }

    /// Calls a tool; its text content joined by newlines.
    pub async fn call_tool(&mut self, name: &str, arguments: Value) -> ToolResult {
        let raw = self
            .request("tools/call", json!({"name": name, "arguments": arguments}))
            .await;
        let text = raw["content"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|c| c["text"].as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        ToolResult {
            is_error: raw["isError"].as_bool().unwrap_or(false),
            text,
            raw,
        }
    }

    /// Closes stdin and waits (bounded) for the server to exit; kills it otherwise.
    pub async fn shutdown(mut self) {
        drop(self.stdin);
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
