//! Reads the cluster and credentials of one kubeconfig context, and writes the small
//! kubeconfigs chaperone hands to clients.

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
}

/// What chaperone needs of one context: where the API server is and how to prove who we are.
#[derive(Debug, Clone)]
pub struct Resolved {
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
    #[serde(default)]
    pub clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    pub users: Vec<Named<User>>,
    #[serde(default)]
    pub contexts: Vec<Named<Context>>,
    #[serde(default)]
    pub current_context: String,
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
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
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
    pub value: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct Context {
    pub context: ContextFields,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct ContextFields {
    pub cluster: String,
    /// Empty: an anonymous client, as in client-go.
    #[serde(default)]
    pub user: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The default kubeconfig path: the first file of `$KUBECONFIG`, else `~/.kube/config`.
pub fn default_path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(list) = env("KUBECONFIG") {
        if let Some(first) = std::env::split_paths(&list).find(|p| !p.as_os_str().is_empty()) {
            return Some(first);
        }
    }
    env("HOME").map(|home| Path::new(&home).join(".kube").join("config"))
}

/// Loads `path` and resolves `context` (or the current context).
pub fn resolve(path: &Path, context: Option<&str>) -> Result<Resolved, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let config: Kubeconfig = serde_yaml::from_str(&text).map_err(|source| Error::Parse {
        path: path.to_owned(),
        source,
    })?;
    let invalid = |message: String| Error::Invalid {
        path: path.to_owned(),
        message,
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let name = context.unwrap_or(&config.current_context);
    if name.is_empty() {
        return Err(invalid(
            "no context given and no current-context set".into(),
        ));
    }
    let ctx = config
        .contexts
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| invalid(format!("context {name:?} not found")))?;
    let cluster = &config
        .clusters
        .iter()
        .find(|c| c.name == ctx.item.context.cluster)
        .ok_or_else(|| invalid(format!("cluster {:?} not found", ctx.item.context.cluster)))?
        .item
        .cluster;
    // As client-go: a context that names a user names one that exists (else the
    // requests would go out anonymous).
    let user_name = &ctx.item.context.user;
    let user = match config.users.iter().find(|u| &u.name == user_name) {
        Some(u) => Some(&u.item.user),
        None if user_name.is_empty() => None,
        None => {
            return Err(invalid(format!(
                "user {user_name:?} not found for context {name:?} (chaperone reads one \
                 kubeconfig file; merge the files or name this one)"
            )))
        }
    };
    if let Some(field) = user.and_then(UserFields::refused_field) {
        return Err(invalid(match field {
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
        }));
    }
    if cluster.insecure_skip_tls_verify {
        return Err(invalid(format!(
            "cluster {:?} sets insecure-skip-tls-verify; chaperone always verifies the API server",
            ctx.item.context.cluster
        )));
    }
    let data_or_file = |data: &Option<String>,
                        file: &Option<PathBuf>,
                        field: &'static str|
     -> Result<Option<Vec<u8>>, Error> {
        if let Some(d) = data {
            return decode_base64(d).map(Some).ok_or_else(|| Error::Base64 {
                path: path.to_owned(),
                field,
            });
        }
        match file {
            Some(f) => {
                let f = base.join(f);
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
    )?;
    let credential = match user {
        None => Credential::None,
        Some(u) if u.auth_provider.is_some() => {
            return Err(invalid(format!(
                "user {:?} uses an auth-provider plugin (removed from kubectl in 1.26), which \
                 chaperone does not run; use an exec plugin, a token, tokenFile or client certificate",
                ctx.item.context.user
            )))
        }
        Some(UserFields {
            exec: Some(exec), ..
        }) => {
            if exec.interactive_mode.as_deref() == Some("Always") {
                return Err(invalid(format!(
                    "user {:?}'s exec plugin needs a terminal (interactiveMode: Always); \
                     chaperone runs plugins without one",
                    ctx.item.context.user
                )));
            }
            if exec.command.is_empty() {
                return Err(invalid(format!(
                    "user {:?}'s exec plugin has no command",
                    ctx.item.context.user
                )));
            }
            // As client-go: a relative path with a separator is relative to the file.
            let command = PathBuf::from(&exec.command);
            let command = if command.is_relative() && exec.command.contains('/') {
                base.join(command)
            } else {
                command
            };
            Credential::Exec(crate::exec_credential::ExecConfig {
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
                server: cluster.server.trim_end_matches('/').to_owned(),
                ca_pem: ca_pem.clone(),
            })
        }
        Some(u) => {
            let cert = data_or_file(
                &u.client_certificate_data,
                &u.client_certificate,
                "client-certificate-data",
            )?;
            let key = data_or_file(&u.client_key_data, &u.client_key, "client-key-data")?;
            // An empty `token` is none, as client-go reads it: `tokenFile` then counts.
            let token = u.token.as_ref().filter(|t| !t.is_empty());
            let token_file = u.token_file.as_ref().filter(|f| !f.as_os_str().is_empty());
            match (cert, key, token, token_file) {
                (Some(cert_pem), Some(key_pem), _, _) => {
                    Credential::ClientCert { cert_pem, key_pem }
                }
                (Some(_), None, _, _) | (None, Some(_), _, _) => {
                    return Err(invalid(
                        "a client certificate needs both certificate and key".into(),
                    ))
                }
                (None, None, Some(t), _) => Credential::Token(t.clone()),
                (None, None, None, Some(f)) => Credential::TokenFile(base.join(f)),
                (None, None, None, None) => Credential::None,
            }
        }
    };
    Ok(Resolved {
        server: cluster.server.trim_end_matches('/').to_owned(),
        ca_pem,
        tls_server_name: cluster.tls_server_name.clone(),
        credential,
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
