//! kubeconfig `exec` credential plugins (`client.authentication.k8s.io`): the command a
//! context runs to get a token — `aws eks get-token`, `gke-gcloud-auth-plugin`,
//! `kubelogin`. chaperone runs it without a terminal, keeps the token until shortly
//! before its `expirationTimestamp`, and runs it again then, or after the API server
//! answers 401. The token stays in memory; it is never logged.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use http::HeaderValue;
use serde_json::{json, Value};

/// How long one run of the plugin may take (a login that waits for a browser would
/// never finish: chaperone runs plugins non-interactively).
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// A token this close to its expiry is renewed before use.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);
/// How much of the plugin's stderr the log quotes.
const STDERR_QUOTE: usize = 400;
/// The most the plugin may print as its ExecCredential (a few KiB); past it the plugin is
/// stopped.
const OUTPUT_MAX: u64 = 1024 * 1024;
/// How much of the plugin's error output is kept (for the log); the rest is read and
/// dropped, as a plugin with its debug output turned up may print a lot there and
/// still succeed.
const STDERR_KEPT: u64 = 64 * 1024;
/// After a failed run, requests get its error for this long before the plugin runs
/// again: a plugin that opens a browser or asks an IdP on each run (`kubelogin`) is not
/// run once per request while the user is logged out.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// One context's `user.exec`, resolved against its kubeconfig. Its arguments and
/// environment may hold secrets (`--client-secret=…`): `Debug` shows their count only.
#[derive(Clone)]
pub struct ExecConfig {
    /// As written, or joined to the kubeconfig's directory when it is a relative path.
    pub command: PathBuf,
    pub args: Vec<String>,
    /// Added to chaperone's own environment, as client-go does.
    pub env: Vec<(String, String)>,
    pub api_version: String,
    /// Passes the cluster (server, CA) to the plugin in `KUBERNETES_EXEC_INFO`.
    pub provide_cluster_info: bool,
    pub install_hint: Option<String>,
    pub server: String,
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for ExecConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecConfig")
            .field("command", &self.command)
            .field("args", &format_args!("{} arguments", self.args.len()))
            .field("env", &format_args!("{} variables", self.env.len()))
            .field("api_version", &self.api_version)
            .field("provide_cluster_info", &self.provide_cluster_info)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to run the credential plugin {command}: {source}{hint}")]
    Run {
        command: String,
        #[source]
        source: std::io::Error,
        hint: String,
    },
    #[error("the credential plugin {command} did not finish within {RUN_TIMEOUT:?} (chaperone runs it without a terminal: log in first)")]
    Timeout { command: String },
    /// Its stderr goes to chaperone's log, not into the error: the error reaches the
    /// caller (the least trusted party) and the audit record, and a plugin's error
    /// output can hold what it should not (a debug trace, a presigned URL).
    #[error(
        "the credential plugin {command} failed ({status}); its error output is in chaperone's log"
    )]
    Failed { command: String, status: String },
    #[error("the credential plugin {command} printed no usable ExecCredential: {message}")]
    Output { command: String, message: String },
    #[error("the credential plugin {command} printed more than {OUTPUT_MAX} bytes")]
    TooMuch { command: String },
    /// The run that requests waiting together waited for failed: each gets its error.
    #[error(transparent)]
    Shared(std::sync::Arc<Error>),
}

struct Cached {
    header: HeaderValue,
    expires: Option<SystemTime>,
    /// When the plugin printed it.
    fetched: Instant,
}

/// The youngest token a 401 makes the proxy drop: a 401 to a request a caller chose may
/// come from elsewhere than the API server's authentication (an admission webhook's
/// refusal, an aggregated API), and must not run the plugin, which holds every request
/// waiting for a token, on each such request. A token the plugin printed this recently
/// it would print again.
const FORGET_AFTER: Duration = Duration::from_secs(10);

#[derive(Default)]
struct State {
    token: Option<Cached>,
    /// When the last run ended in failure, and how.
    failed: Option<(Instant, std::sync::Arc<Error>)>,
}

/// A plugin and the token it last printed.
pub struct Plugin {
    config: ExecConfig,
    state: tokio::sync::Mutex<State>,
}

impl Plugin {
    pub fn new(config: ExecConfig) -> Plugin {
        Plugin {
            config,
            state: tokio::sync::Mutex::new(State::default()),
        }
    }

    /// The `Authorization` value: the cached token while it is fresh, else a new one.
    /// Concurrent callers wait for one run rather than each running the plugin; if it
    /// fails, those that waited for it get its error instead of each running the plugin
    /// in turn (each run may take `RUN_TIMEOUT`), and so do those asking within
    /// [`RETRY_AFTER`] of it. A request after that runs it again.
    pub async fn header(&self) -> Result<HeaderValue, Error> {
        let asked = Instant::now();
        let mut state = self.state.lock().await;
        if let Some(c) = state.token.as_ref() {
            let fresh = c
                .expires
                .is_none_or(|at| at > SystemTime::now() + EXPIRY_MARGIN);
            if fresh {
                return Ok(c.header.clone());
            }
        }
        if let Some((at, error)) = &state.failed {
            if *at >= asked || at.elapsed() < RETRY_AFTER {
                return Err(Error::Shared(error.clone()));
            }
        }
        match self.run().await {
            Ok(fetched) => {
                let header = fetched.header.clone();
                *state = State {
                    token: Some(fetched),
                    failed: None,
                };
                Ok(header)
            }
            Err(error) => {
                let error = std::sync::Arc::new(error);
                state.failed = Some((Instant::now(), error.clone()));
                Err(Error::Shared(error))
            }
        }
    }

    /// Drops the token (the API server refused it): the next request runs the plugin.
    /// Not one printed within [`FORGET_AFTER`].
    pub async fn forget(&self) {
        let mut state = self.state.lock().await;
        if state
            .token
            .as_ref()
            .is_some_and(|c| c.fetched.elapsed() >= FORGET_AFTER)
        {
            state.token = None;
        }
    }

    fn name(&self) -> String {
        self.config.command.display().to_string()
    }

    async fn run(&self) -> Result<Cached, Error> {
        let command = self.name();
        let mut spec = json!({"interactive": false});
        if self.config.provide_cluster_info {
            let mut cluster = json!({"server": self.config.server});
            if let Some(ca) = &self.config.ca_pem {
                cluster["certificate-authority-data"] =
                    json!(base64::engine::general_purpose::STANDARD.encode(ca));
            }
            spec["cluster"] = cluster;
        }
        let info = json!({
            "apiVersion": self.config.api_version,
            "kind": "ExecCredential",
            "spec": spec,
        });
        let mut cmd = tokio::process::Command::new(&self.config.command);
        cmd.args(&self.config.args)
            .envs(self.config.env.iter().map(|(k, v)| (k, v)))
            .env("KUBERNETES_EXEC_INFO", info.to_string())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let output = match tokio::time::timeout(RUN_TIMEOUT, output_capped(cmd)).await {
            Err(_) => return Err(Error::Timeout { command }),
            Ok(Err(RunError::TooMuch)) => return Err(Error::TooMuch { command }),
            Ok(Err(RunError::Io(source))) => {
                let hint = self
                    .config
                    .install_hint
                    .as_ref()
                    .map(|h| format!("\n{}", h.trim()))
                    .unwrap_or_default();
                return Err(Error::Run {
                    command,
                    source,
                    hint,
                });
            }
            Ok(Ok(output)) => output,
        };
        if !output.status.success() {
            // A plugin's error output may hold what it was handling (a token in a debug
            // trace, a presigned URL): what the detectors find is masked.
            let stderr = match crate::mask::mask_text(&output.stderr) {
                Some(masked) => String::from_utf8_lossy(&masked).into_owned(),
                None => String::from_utf8_lossy(&output.stderr).into_owned(),
            };
            let quoted: String = stderr.trim().chars().take(STDERR_QUOTE).collect();
            let status = output.status.to_string();
            tracing::warn!(%command, %status, stderr = %quoted, "the credential plugin failed");
            return Err(Error::Failed { command, status });
        }
        parse(&output.stdout).map_err(|message| Error::Output { command, message })
    }
}

enum RunError {
    Io(std::io::Error),
    TooMuch,
}

/// Runs `cmd` to its end, reading its output up to [`OUTPUT_MAX`] (past it, the plugin
/// is stopped, `kill_on_drop`, and it is an error) and keeping the first
/// [`STDERR_KEPT`] bytes of its error output.
async fn output_capped(mut cmd: tokio::process::Command) -> Result<std::process::Output, RunError> {
    use tokio::io::AsyncReadExt as _;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(RunError::Io)?;
    async fn capped(
        stream: Option<impl tokio::io::AsyncRead + Unpin>,
    ) -> Result<Vec<u8>, RunError> {
        let mut out = Vec::new();
        if let Some(stream) = stream {
            stream
                .take(OUTPUT_MAX + 1)
                .read_to_end(&mut out)
                .await
                .map_err(RunError::Io)?;
        }
        match out.len() as u64 > OUTPUT_MAX {
            true => Err(RunError::TooMuch),
            false => Ok(out),
        }
    }
    async fn kept(stream: Option<impl tokio::io::AsyncRead + Unpin>) -> Result<Vec<u8>, RunError> {
        let mut out = Vec::new();
        if let Some(mut stream) = stream {
            (&mut stream)
                .take(STDERR_KEPT)
                .read_to_end(&mut out)
                .await
                .map_err(RunError::Io)?;
            tokio::io::copy(&mut stream, &mut tokio::io::sink())
                .await
                .map_err(RunError::Io)?;
        }
        Ok(out)
    }
    let (stdout, stderr) =
        tokio::try_join!(capped(child.stdout.take()), kept(child.stderr.take()))?;
    let status = child.wait().await.map_err(RunError::Io)?;
    Ok(std::process::Output {
        status,
        stdout,
        stderr,
    })
}

/// Reads the plugin's `ExecCredential`: its token and when it expires.
fn parse(stdout: &[u8]) -> Result<Cached, String> {
    let credential: Value =
        serde_json::from_slice(stdout).map_err(|e| format!("not JSON ({e})"))?;
    if credential["kind"] != "ExecCredential" {
        return Err("kind is not ExecCredential".into());
    }
    let status = &credential["status"];
    if status.get("clientCertificateData").is_some() {
        return Err(
            "it returned a client certificate; chaperone supports token plugins only".into(),
        );
    }
    let token = status["token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or("status.token is missing")?;
    let header = crate::upstream::bearer(token)
        .ok_or_else(|| "status.token is not a valid header value".to_owned())?;
    let expires = match status["expirationTimestamp"].as_str() {
        None => None,
        Some(t) => Some(
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .map(SystemTime::from)
                .map_err(|e| format!("status.expirationTimestamp {t:?}: {e}"))?,
        ),
    };
    Ok(Cached {
        header,
        expires,
        fetched: Instant::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plugin running `command`.
    fn plugin(command: PathBuf) -> Plugin {
        Plugin::new(ExecConfig {
            command,
            args: Vec::new(),
            env: Vec::new(),
            api_version: "client.authentication.k8s.io/v1".into(),
            provide_cluster_info: false,
            install_hint: None,
            server: "https://127.0.0.1:1".into(),
            ca_pem: None,
        })
    }

    /// A plugin running a shell script of `text`, written under `dir` as `name`.
    fn script(dir: &std::path::Path, name: &str, text: &str) -> Plugin {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        plugin(path)
    }

    /// A 401 drops the plugin's token only once it is some seconds old: a 401 a caller
    /// can cause otherwise (an admission webhook's) must not run the plugin each time.
    #[tokio::test]
    async fn a_401_drops_only_a_token_printed_a_while_ago() {
        let plugin = plugin("true".into());
        for (age, dropped) in [(Duration::ZERO, false), (FORGET_AFTER, true)] {
            let fetched = Instant::now().checked_sub(age).unwrap();
            plugin.state.lock().await.token = Some(Cached {
                header: HeaderValue::from_static("Bearer t"),
                expires: None,
                fetched,
            });
            plugin.forget().await;
            assert_eq!(
                plugin.state.lock().await.token.is_none(),
                dropped,
                "{age:?}"
            );
        }
    }

    #[test]
    fn reads_tokens_and_refuses_what_it_cannot_use() {
        let ok = parse(br#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1","status":{"token":"abc","expirationTimestamp":"2030-01-01T00:00:00Z"}}"#).unwrap();
        assert_eq!(ok.header, "Bearer abc");
        assert!(ok.header.is_sensitive());
        assert!(ok.expires.is_some());
        let forever = parse(br#"{"kind":"ExecCredential","status":{"token":"abc"}}"#).unwrap();
        assert!(forever.expires.is_none());
        for (bad, why) in [
            (&b"nope"[..], "not JSON"),
            (br#"{"kind":"Other","status":{"token":"a"}}"#, "kind"),
            (br#"{"kind":"ExecCredential","status":{}}"#, "status.token"),
            (br#"{"kind":"ExecCredential","status":{"clientCertificateData":"x","clientKeyData":"y"}}"#, "client certificate"),
            (br#"{"kind":"ExecCredential","status":{"token":"a","expirationTimestamp":"soon"}}"#, "expirationTimestamp"),
        ] {
            let err = parse(bad).err().unwrap();
            assert!(err.contains(why), "{err}");
            // Nothing quoted from the output could carry a token.
            assert!(!err.contains("\"a\""), "{err}");
        }
    }

    /// Requests that wait together for a run that fails share its failure: the plugin
    /// runs once for them, not once each in turn; so do requests in the next
    /// [`RETRY_AFTER`]; a request after that runs it again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiters_share_a_failed_run() {
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("runs");
        let plugin = script(
            dir.path(),
            "plugin",
            &format!(
                "#!/bin/sh\necho run >> '{}'\nsleep 0.3\necho 'expired' >&2\nexit 1\n",
                runs.display()
            ),
        );
        let count = || std::fs::read_to_string(&runs).unwrap().lines().count();
        let answers = futures_util::future::join_all((0..4).map(|_| plugin.header())).await;
        for answer in &answers {
            let error = answer.as_ref().unwrap_err().to_string();
            assert!(error.contains("failed (exit status: 1)"), "{error}");
        }
        assert_eq!(count(), 1, "the plugin ran once for the four waiting");
        assert!(plugin.header().await.is_err());
        assert_eq!(
            count(),
            1,
            "a request just after is answered with the failure"
        );
        if let Some((at, _)) = plugin.state.lock().await.failed.as_mut() {
            *at = Instant::now().checked_sub(RETRY_AFTER).unwrap();
        }
        assert!(plugin.header().await.is_err());
        assert_eq!(count(), 2, "a later request runs it again");
    }

    /// A plugin that prints without end is stopped at [`OUTPUT_MAX`], not read into
    /// memory until its time is up; one that says a lot on its error output and then
    /// prints its credential succeeds.
    #[tokio::test]
    async fn a_plugin_that_prints_too_much_is_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = |name: &str, text: &str| script(dir.path(), name, text);
        let endless = plugin("endless", "#!/bin/sh\nexec yes\n");
        let error = endless.header().await.unwrap_err().to_string();
        assert!(error.contains("printed more than 1048576 bytes"), "{error}");
        let noisy = plugin(
            "noisy",
            "#!/bin/sh\nhead -c 3000000 /dev/zero >&2\n\
             echo '{\"kind\":\"ExecCredential\",\"status\":{\"token\":\"t\"}}'\n",
        );
        assert_eq!(noisy.header().await.unwrap(), "Bearer t");
    }
}
