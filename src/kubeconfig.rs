//! Reads the cluster and credentials of one kubeconfig context, and writes the small
//! kubeconfigs chaperone hands to clients.
//!
//! Read as client-go reads it: `$KUBECONFIG`'s files merged (the first file to name a
//! context, cluster or user wins, and the first `current-context` set), paths relative to
//! the file that names them, `null` where a list or string may be, and a user's static
//! credential (token, token file, client certificate) before its exec plugin.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read kubeconfig {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid kubeconfig {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("kubeconfig {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("failed to decode {field} in kubeconfig {path}: not valid base64")]
    Base64 { path: PathBuf, field: &'static str },
    #[error("no kubeconfig: none of {0} exists")]
    NoneExists(String),
}

/// What chaperone needs of one context: where the API server is and how to prove who we are.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The context read (the one named, else the current one).
    pub context: String,
    /// The context's namespace, if it sets one.
    pub namespace: Option<String>,
    pub server: String,
    pub ca_pem: Option<Vec<u8>>,
    pub tls_server_name: Option<String>,
    pub credential: Credential,
}

#[derive(Clone)]
pub enum Credential {
    None,
    Token(String),
    TokenFile(PathBuf),
    ClientCert {
        cert_pem: Vec<u8>,
        key_pem: Vec<u8>,
    },
    /// A credential plugin (`user.exec`) that prints a token.
    Exec(crate::exec_credential::ExecConfig),
}

impl std::fmt::Debug for Credential {
    // Never print a token or a key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::None => f.write_str("None"),
            Credential::Token(_) => f.write_str("Token(<redacted>)"),
            Credential::TokenFile(p) => write!(f, "TokenFile({})", p.display()),
            Credential::ClientCert { .. } => f.write_str("ClientCert(<redacted>)"),
            Credential::Exec(e) => write!(f, "Exec({})", e.command.display()),
        }
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Kubeconfig {
    #[serde(default, deserialize_with = "null_default")]
    pub clusters: Vec<Named<Cluster>>,
    #[serde(default, deserialize_with = "null_default")]
    pub users: Vec<Named<User>>,
    #[serde(default, deserialize_with = "null_default")]
    pub contexts: Vec<Named<Context>>,
    #[serde(default, deserialize_with = "null_default")]
    pub current_context: String,
}

/// `null` read as the field's default: kubectl writes `args: null`, `env: null` and
/// `users: null` for what it holds empty, and client-go reads them so.
fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[derive(Debug, Deserialize, Serialize)]
pub struct Named<T> {
    pub name: String,
    #[serde(flatten)]
    pub item: T,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct Cluster {
    pub cluster: ClusterFields,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClusterFields {
    pub server: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_authority: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_authority_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_tls_verify: bool,
    /// Read only to be refused: chaperone dials the API server itself.
    #[serde(default, skip_serializing)]
    pub proxy_url: Option<serde_yaml::Value>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct User {
    pub user: UserFields,
}

#[derive(Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct UserFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(rename = "tokenFile", skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecFields>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_provider: Option<serde_yaml::Value>,
    /// Read only to be refused: chaperone cannot do what they ask (see `refused_fields`).
    #[serde(default, skip_serializing)]
    pub username: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing)]
    pub password: Option<serde_yaml::Value>,
    #[serde(default, rename = "as", skip_serializing)]
    pub act_as: Option<serde_yaml::Value>,
    #[serde(default, rename = "as-uid", skip_serializing)]
    pub act_as_uid: Option<serde_yaml::Value>,
    #[serde(default, rename = "as-groups", skip_serializing)]
    pub act_as_groups: Option<serde_yaml::Value>,
    #[serde(default, rename = "as-user-extra", skip_serializing)]
    pub act_as_user_extra: Option<serde_yaml::Value>,
}

impl UserFields {
    /// The first field set that chaperone cannot honour. Impersonation (`as`, ...) is
    /// how client-go narrows a broader credential to another identity: dropped, the
    /// proxy would act with the broader one. Basic auth the API server no longer serves.
    fn refused_field(&self) -> Option<&'static str> {
        [
            ("as", self.act_as.is_some()),
            ("as-uid", self.act_as_uid.is_some()),
            ("as-groups", self.act_as_groups.is_some()),
            ("as-user-extra", self.act_as_user_extra.is_some()),
            ("username", self.username.is_some()),
            ("password", self.password.is_some()),
        ]
        .into_iter()
        .find_map(|(field, set)| set.then_some(field))
    }
}

impl std::fmt::Debug for UserFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserFields").finish_non_exhaustive()
    }
}

/// `user.exec`: a credential plugin.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecFields {
    pub command: String,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<ExecEnv>>,
    #[serde(default)]
    pub api_version: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub provide_cluster_info: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interactive_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_hint: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct ExecEnv {
    pub name: String,
    #[serde(default, deserialize_with = "null_default")]
    pub value: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct Context {
    pub context: ContextFields,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct ContextFields {
    #[serde(default, deserialize_with = "null_default")]
    pub cluster: String,
    /// Empty: an anonymous client, as in client-go.
    #[serde(default, deserialize_with = "null_default")]
    pub user: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Where the kubeconfig is when none is named: the files `$KUBECONFIG` lists (empty
/// entries and repeats dropped, as client-go drops them), else `~/.kube/config`.
pub fn default_paths(env: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = Vec::new();
    if let Some(list) = env("KUBECONFIG") {
        for p in std::env::split_paths(&list) {
            if !p.as_os_str().is_empty() && !paths.contains(&p) {
                paths.push(p);
            }
        }
    }
    if paths.is_empty() {
        if let Some(home) = env("HOME") {
            paths.push(Path::new(&home).join(".kube").join("config"));
        }
    }
    paths
}

/// Loads the one kubeconfig file named (`--kubeconfig`, `kubeconfig.path`) and resolves
/// `context` (or its current context).
pub fn resolve(path: &Path, context: Option<&str>) -> Result<Resolved, Error> {
    let file = load(path)?;
    resolve_in(&[file], context)
}

/// Loads the files `$KUBECONFIG` lists, merged as kubectl merges them (a file that
/// does not exist is skipped, as client-go skips it; one that cannot be read or parsed
/// is an error), and resolves `context` (or the first current context set).
pub fn resolve_merged(paths: &[PathBuf], context: Option<&str>) -> Result<Resolved, Error> {
    let mut files = Vec::new();
    for path in paths {
        match load(path) {
            Err(Error::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            loaded => files.push(loaded?),
        }
    }
    if files.is_empty() {
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(Error::NoneExists(names.join(", ")));
    }
    resolve_in(&files, context)
}

/// One kubeconfig file read: its path, and the directory its relative paths are from.
struct Loaded {
    path: PathBuf,
    config: Kubeconfig,
}

impl Loaded {
    fn base(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}

fn load(path: &Path) -> Result<Loaded, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let config: Kubeconfig = serde_yaml::from_str(&text).map_err(|source| Error::Parse {
        path: path.to_owned(),
        source,
    })?;
    Ok(Loaded {
        path: path.to_owned(),
        config,
    })
}

/// The first of `files` to name `name` in the list `pick` reads, and that file: client-go
/// merges files so that the first to set a name keeps it.
fn first_named<'a, T>(
    files: &'a [Loaded],
    name: &str,
    pick: impl Fn(&'a Kubeconfig) -> &'a [Named<T>],
) -> Option<(&'a T, &'a Loaded)> {
    files.iter().find_map(|f| {
        pick(&f.config)
            .iter()
            .find(|n| n.name == name)
            .map(|n| (&n.item, f))
    })
}

fn resolve_in(files: &[Loaded], context: Option<&str>) -> Result<Resolved, Error> {
    // Errors name the file that holds what is wrong; a name not found, every file read.
    let all = || {
        std::env::join_paths(files.iter().map(|f| f.path.as_os_str()))
            .map(PathBuf::from)
            .unwrap_or_else(|_| files[0].path.clone())
    };
    let not_found = |message: String| Error::Invalid {
        path: all(),
        message,
    };
    let name = match context {
        Some(c) => c,
        None => files
            .iter()
            .map(|f| f.config.current_context.as_str())
            .find(|c| !c.is_empty())
            .unwrap_or(""),
    };
    if name.is_empty() {
        return Err(not_found(
            "no context given and no current-context set".into(),
        ));
    }
    let (ctx, ctx_file) = first_named(files, name, |c| &c.contexts)
        .ok_or_else(|| not_found(format!("context {name:?} not found")))?;
    let ctx = &ctx.context;
    let (cluster, cluster_file) = first_named(files, &ctx.cluster, |c| &c.clusters)
        .ok_or_else(|| not_found(format!("cluster {:?} not found", ctx.cluster)))?;
    let cluster = &cluster.cluster;
    let path = &cluster_file.path;
    let invalid = |path: &Path, message: String| Error::Invalid {
        path: path.to_owned(),
        message,
    };
    // As client-go: a context that names a user names one that exists (else the
    // requests would go out anonymous).
    let user_name = &ctx.user;
    let (user, user_file) = match first_named(files, user_name, |c| &c.users) {
        Some((u, f)) => (Some(&u.user), f),
        None if user_name.is_empty() => (None, ctx_file),
        None => {
            return Err(not_found(format!(
                "user {user_name:?} not found for context {name:?}"
            )))
        }
    };
    let user_path = &user_file.path;
    if let Some(field) = user.and_then(UserFields::refused_field) {
        return Err(invalid(
            user_path,
            match field {
                "username" | "password" => format!(
                    "user {user_name:?} uses basic authentication ({field}), which the API server \
                     no longer accepts; use a token, tokenFile, client certificate or exec plugin"
                ),
                _ => format!(
                    "user {user_name:?} sets {field}: kubectl would act as another identity with \
                     this credential, and chaperone does not impersonate for a kubeconfig, so it \
                     would act with the broader credential itself; use a context whose \
                     credential is the identity's own"
                ),
            },
        ));
    }
    if cluster.insecure_skip_tls_verify {
        return Err(invalid(
            path,
            format!(
                "cluster {:?} sets insecure-skip-tls-verify; chaperone always verifies the API server",
                ctx.cluster
            ),
        ));
    }
    if cluster.proxy_url.is_some() {
        return Err(invalid(
            path,
            format!(
                "cluster {:?} sets proxy-url; chaperone connects to the API server directly and \
                 through no proxy (nor HTTPS_PROXY): use a context whose server it can reach",
                ctx.cluster
            ),
        ));
    }
    // `*-data` first, else the file, relative to the kubeconfig that names it.
    let data_or_file = |data: &Option<String>,
                        file: &Option<PathBuf>,
                        field: &'static str,
                        from: &Loaded|
     -> Result<Option<Vec<u8>>, Error> {
        if let Some(d) = data {
            return decode_base64(d).map(Some).ok_or_else(|| Error::Base64 {
                path: from.path.clone(),
                field,
            });
        }
        match file {
            Some(f) => {
                let f = from.base().join(f);
                std::fs::read(&f)
                    .map(Some)
                    .map_err(|source| Error::Read { path: f, source })
            }
            None => Ok(None),
        }
    };
    let ca_pem = data_or_file(
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
        "certificate-authority-data",
        cluster_file,
    )?;
    let server = cluster.server.trim_end_matches('/').to_owned();
    let credential = match user {
        None => Credential::None,
        Some(u) if u.auth_provider.is_some() => {
            return Err(invalid(
                user_path,
                format!(
                    "user {user_name:?} uses an auth-provider plugin (removed from kubectl in \
                     1.26), which chaperone does not run; use an exec plugin, a token, tokenFile \
                     or client certificate"
                ),
            ))
        }
        Some(u) => {
            let cert = data_or_file(
                &u.client_certificate_data,
                &u.client_certificate,
                "client-certificate-data",
                user_file,
            )?;
            let key = data_or_file(
                &u.client_key_data,
                &u.client_key,
                "client-key-data",
                user_file,
            )?;
            // An empty `token` is none, as client-go reads it; with both set, client-go
            // sends what the file holds, and the token while the file cannot be read:
            // here, the file if it is there now.
            let token = u.token.as_ref().filter(|t| !t.is_empty());
            let token_file = u.token_file.as_ref().filter(|f| !f.as_os_str().is_empty());
            let token_file =
                token_file.filter(|f| token.is_none() || user_file.base().join(f).is_file());
            // client-go runs the exec plugin only for a user with no static credential.
            match (cert, key, token_file, token, &u.exec) {
                (Some(cert_pem), Some(key_pem), _, _, _) => {
                    Credential::ClientCert { cert_pem, key_pem }
                }
                (Some(_), None, _, _, _) | (None, Some(_), _, _, _) => {
                    return Err(invalid(
                        user_path,
                        "a client certificate needs both certificate and key".into(),
                    ))
                }
                (None, None, Some(f), _, _) => Credential::TokenFile(user_file.base().join(f)),
                (None, None, None, Some(t), _) => Credential::Token(t.clone()),
                (None, None, None, None, Some(exec)) => {
                    Credential::Exec(exec_config(exec, user_name, user_file, &server, &ca_pem)?)
                }
                (None, None, None, None, None) => Credential::None,
            }
        }
    };
    Ok(Resolved {
        context: name.to_owned(),
        namespace: ctx.namespace.clone().filter(|n| !n.is_empty()),
        server,
        ca_pem,
        tls_server_name: cluster.tls_server_name.clone(),
        credential,
    })
}

/// A user's `exec` plugin, as client-go would run it.
fn exec_config(
    exec: &ExecFields,
    user_name: &str,
    from: &Loaded,
    server: &str,
    ca_pem: &Option<Vec<u8>>,
) -> Result<crate::exec_credential::ExecConfig, Error> {
    let invalid = |message: String| Error::Invalid {
        path: from.path.clone(),
        message,
    };
    if exec.interactive_mode.as_deref() == Some("Always") {
        return Err(invalid(format!(
            "user {user_name:?}'s exec plugin needs a terminal (interactiveMode: Always); \
             chaperone runs plugins without one"
        )));
    }
    if exec.command.is_empty() {
        return Err(invalid(format!(
            "user {user_name:?}'s exec plugin has no command"
        )));
    }
    // As client-go: a relative path with a separator is relative to the file.
    let command = PathBuf::from(&exec.command);
    let command = if command.is_relative() && exec.command.contains('/') {
        from.base().join(command)
    } else {
        command
    };
    Ok(crate::exec_credential::ExecConfig {
        command,
        args: exec.args.clone(),
        env: exec
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect(),
        api_version: if exec.api_version.is_empty() {
            "client.authentication.k8s.io/v1".into()
        } else {
            exec.api_version.clone()
        },
        provide_cluster_info: exec.provide_cluster_info,
        install_hint: exec.install_hint.clone(),
        server: server.to_owned(),
        ca_pem: ca_pem.clone(),
    })
}

/// A single-context kubeconfig for `server`, trusting `ca_pem`, authenticating with `token`.
pub fn render(
    name: &str,
    server: &str,
    ca_pem: &str,
    token: &str,
    namespace: Option<&str>,
) -> String {
    let config = Kubeconfig {
        clusters: vec![Named {
            name: name.into(),
            item: Cluster {
                cluster: ClusterFields {
                    server: server.into(),
                    certificate_authority_data: Some(encode_base64(ca_pem.as_bytes())),
                    ..Default::default()
                },
            },
        }],
        users: vec![Named {
            name: name.into(),
            item: User {
                user: UserFields {
                    token: Some(token.into()),
                    ..Default::default()
                },
            },
        }],
        contexts: vec![Named {
            name: name.into(),
            item: Context {
                context: ContextFields {
                    cluster: name.into(),
                    user: name.into(),
                    namespace: namespace.map(Into::into),
                },
            },
        }],
        current_context: name.into(),
    };
    let body = serde_yaml::to_string(&config).expect("a kubeconfig always serialises");
    format!("apiVersion: v1\nkind: Config\n{body}")
}

/// Standard base64 with padding, as kubeconfig `*-data` fields hold.
pub fn encode_base64(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// Standard base64; whitespace (line-wrapped PEM-style data) is ignored.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD.decode(compact).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in ["", "f", "fo", "foo", "foob", "fooba", "foobar"] {
            let e = encode_base64(s.as_bytes());
            assert_eq!(decode_base64(&e).unwrap(), s.as_bytes(), "{s}");
        }
        assert_eq!(encode_base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(encode_base64(b"fo"), "Zm8=");
        assert!(decode_base64("!!").is_none());
    }

    #[test]
    fn resolves_credentials_of_each_kind() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        write("ca.crt", "CA");
        write("client.crt", "CERT");
        write("client.key", "KEY");
        let head = "apiVersion: v1\nkind: Config\ncurrent-context: c\ncontexts:\n- name: c\n  context: {cluster: k, user: u}\nclusters:\n- name: k\n  cluster: {server: \"https://10.0.0.1:443/\", certificate-authority: ca.crt}\nusers:\n- name: u\n  user:\n";
        let cases: &[(&str, Result<&str, &str>)] = &[
            (
                "    client-certificate: client.crt\n    client-key: client.key\n",
                Ok("ClientCert"),
            ),
            (
                "    client-certificate-data: Q0VSVA==\n    client-key-data: S0VZ\n",
                Ok("ClientCert"),
            ),
            ("    token: abc\n", Ok("Token")),
            (
                "    tokenFile: /var/run/token\n",
                Ok("TokenFile(/var/run/token)"),
            ),
            ("    token: \"\"\n    tokenFile: \"\"\n", Ok("None")),
            // An empty token is none: the file is read, as client-go reads it.
            (
                "    token: \"\"\n    tokenFile: /var/run/token\n",
                Ok("TokenFile(/var/run/token)"),
            ),
            // With both, client-go sends what the file holds, the token while it
            // cannot be read.
            (
                "    token: stale\n    tokenFile: client.key\n",
                Ok("TokenFile(DIR/client.key)"),
            ),
            (
                "    token: stale\n    tokenFile: /nonexistent/token\n",
                Ok("Token"),
            ),
            // client-go runs the plugin only for a user with no static credential.
            (
                "    token: abc\n    exec: {command: aws}\n",
                Ok("Token"),
            ),
            (
                "    client-certificate-data: Q0VSVA==\n    client-key-data: S0VZ\n    exec: {command: aws}\n",
                Ok("ClientCert"),
            ),
            // What kubectl writes for an empty list or value.
            (
                "    exec:\n      command: gke-gcloud-auth-plugin\n      args: null\n      env: null\n",
                Ok("Exec(gke-gcloud-auth-plugin)"),
            ),
            (
                "    exec:\n      command: aws\n      env:\n      - name: AWS_PROFILE\n",
                Ok("Exec(aws)"),
            ),
            ("    {}\n", Ok("None")),
            (
                "    client-certificate: client.crt\n",
                Err("needs both certificate and key"),
            ),
            (
                "    exec: {command: aws, args: [eks, get-token]}\n",
                Ok("Exec(aws)"),
            ),
            // A relative path with a separator is relative to the kubeconfig.
            (
                "    exec: {command: ./bin/token}\n",
                Ok("Exec(DIR/./bin/token)"),
            ),
            (
                "    exec: {command: kubelogin, interactiveMode: Always}\n",
                Err("needs a terminal"),
            ),
            ("    exec: {command: \"\"}\n", Err("has no command")),
            (
                "    auth-provider: {name: gcp}\n",
                Err("auth-provider plugin"),
            ),
            (
                "    client-key-data: '!!'\n    client-certificate: client.crt\n",
                Err("not valid base64"),
            ),
            // Impersonation narrows the credential in kubectl: refused, not dropped.
            (
                "    token: abc\n    as: jane-readonly\n",
                Err("sets as: kubectl would act as another identity"),
            ),
            (
                "    token: abc\n    as-groups: [viewers]\n",
                Err("sets as-groups"),
            ),
            ("    token: abc\n    as-uid: \"1\"\n", Err("sets as-uid")),
            (
                "    token: abc\n    as-user-extra: {scopes: [read]}\n",
                Err("sets as-user-extra"),
            ),
            (
                "    username: admin\n    password: secret\n",
                Err("basic authentication"),
            ),
        ];
        for (user, want) in cases {
            let path = write("config", &format!("{head}{user}"));
            match (resolve(&path, None), want) {
                (Ok(r), Ok(kind)) => {
                    let kind = kind.replace("DIR", &dir.path().display().to_string());
                    assert!(
                        format!("{:?}", r.credential).starts_with(&kind),
                        "{user}: {:?}",
                        r.credential
                    );
                    assert_eq!(r.server, "https://10.0.0.1:443");
                    assert_eq!(r.ca_pem.as_deref(), Some(&b"CA"[..]));
                }
                (Err(e), Err(words)) => assert!(e.to_string().contains(words), "{user}: {e}"),
                (got, _) => panic!("{user}: unexpected {got:?}"),
            }
        }
        // A context naming a user the file lacks is an error, as in client-go, not an
        // anonymous client; a context with no user at all is anonymous.
        let user = "    token: abc\n";
        let path = write(
            "config",
            &(head.replace("user: u}", "user: elsewhere}") + user),
        );
        let e = resolve(&path, None).unwrap_err();
        assert!(
            e.to_string()
                .contains("user \"elsewhere\" not found for context \"c\""),
            "{e}"
        );
        let path = write("config", &(head.replace(", user: u}", "}") + user));
        assert!(matches!(
            resolve(&path, None).unwrap().credential,
            Credential::None
        ));
    }

    #[test]
    fn kubeconfig_files_are_merged_as_kubectl_merges_them() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(dir.path().join("ca.crt"), "CA-TOP").unwrap();
        std::fs::write(sub.join("ca.crt"), "CA-SUB").unwrap();
        // The first file: no current context, the cluster `k` (its CA beside it), and a
        // user `u` that the second file names again.
        let first = dir.path().join("config");
        std::fs::write(
            &first,
            "apiVersion: v1\nkind: Config\ncurrent-context: \"\"\ncontexts: null\n\
             clusters:\n- name: k\n  cluster: {server: \"https://first:443\", certificate-authority: ca.crt}\n\
             users:\n- name: u\n  user: {token: from-first}\n",
        )
        .unwrap();
        // The second: the current context, `k` again (ignored: the first file's wins), a
        // second cluster with its CA relative to this file's directory.
        let second = sub.join("config");
        std::fs::write(
            &second,
            "current-context: c\ncontexts:\n- name: c\n  context: {cluster: k, user: u, namespace: team-a}\n\
             - name: d\n  context: {cluster: k2, user: u}\n\
             clusters:\n- name: k\n  cluster: {server: \"https://second:443\"}\n\
             - name: k2\n  cluster: {server: \"https://k2:443\", certificate-authority: ca.crt}\n\
             users:\n- name: u\n  user: {token: from-second}\n",
        )
        .unwrap();
        let missing = dir.path().join("absent");
        let paths = [missing.clone(), first.clone(), second.clone()];
        let r = resolve_merged(&paths, None).unwrap();
        assert_eq!(r.context, "c");
        assert_eq!(r.namespace.as_deref(), Some("team-a"));
        assert_eq!(r.server, "https://first:443");
        assert_eq!(r.ca_pem.as_deref(), Some(&b"CA-TOP"[..]));
        assert!(matches!(r.credential, Credential::Token(ref t) if t == "from-first"));
        let r = resolve_merged(&paths, Some("d")).unwrap();
        assert_eq!(r.server, "https://k2:443");
        assert_eq!(r.ca_pem.as_deref(), Some(&b"CA-SUB"[..]));
        assert_eq!(r.namespace, None);
        // Each file alone: the first has no context; the second its own cluster.
        let e = resolve(&first, None).unwrap_err().to_string();
        assert!(e.contains("no current-context set"), "{e}");
        assert_eq!(resolve(&second, None).unwrap().server, "https://second:443");
        // A name no file has lists every file read.
        let e = resolve_merged(&paths, Some("nope"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("context \"nope\" not found"), "{e}");
        assert!(e.contains(&second.display().to_string()), "{e}");
        // No file at all; a named file that is missing.
        let e = resolve_merged(std::slice::from_ref(&missing), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no kubeconfig: none of"), "{e}");
        assert!(resolve(&missing, None).is_err());
        // $KUBECONFIG: empty entries and repeats dropped; else ~/.kube/config.
        let list = std::env::join_paths([&first, &second, &first]).unwrap();
        let list = format!(":{}:", list.to_str().unwrap());
        let env = |k: &str| (k == "KUBECONFIG").then(|| list.clone());
        assert_eq!(default_paths(&env), vec![first.clone(), second.clone()]);
        let env = |k: &str| (k == "HOME").then(|| "/home/me".to_owned());
        assert_eq!(
            default_paths(&env),
            vec![PathBuf::from("/home/me/.kube/config")]
        );
    }

    #[test]
    fn a_proxy_url_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "current-context: c\ncontexts:\n- name: c\n  context: {cluster: k}\n\
             clusters:\n- name: k\n  cluster: {server: \"https://k:443\", proxy-url: \"socks5://localhost:1080\"}\n",
        )
        .unwrap();
        let e = resolve(&path, None).unwrap_err().to_string();
        assert!(e.contains("sets proxy-url"), "{e}");
    }

    #[test]
    fn renders_and_resolves_a_context() {
        let dir = std::env::temp_dir().join(format!("chaperone-kc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config");
        std::fs::write(
            &path,
            render(
                "sbx",
                "https://127.0.0.1:1234",
                "PEM",
                "tok",
                Some("default"),
            ),
        )
        .unwrap();
        let r = resolve(&path, None).unwrap();
        assert_eq!(r.server, "https://127.0.0.1:1234");
        assert_eq!(r.ca_pem.as_deref(), Some(&b"PEM"[..]));
        assert!(matches!(r.credential, Credential::Token(ref t) if t == "tok"));
        assert!(!format!("{:?}", r.credential).contains("tok"));
        let err = resolve(&path, Some("nope")).unwrap_err().to_string();
        assert!(err.contains("context \"nope\" not found"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
