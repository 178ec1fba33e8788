//! `chaperone local`: desktop mode. The proxy runs on the laptop in front of one of the
//! user's kubeconfig contexts, whose credential stays with chaperone; the MCP server
//! gets a kubeconfig of its own that points at the proxy, with a token chaperone issued
//! for this run and a CA generated for this run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::json;

use crate::config::Config;
use crate::launch::{self, write_private, Running};
use crate::sandbox::issuer::Issuer;
use crate::{kubeconfig, pki, server};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The kubeconfig context to reach the cluster with (default: the current context).
    /// Its credential is used by chaperone only; the MCP server never sees it.
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// The kubeconfig holding that context (default: $KUBECONFIG's first file, else
    /// ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The policy deciding the MCP server's requests (reloaded when the file changes).
    #[arg(long, value_name = "FILE")]
    pub policy: PathBuf,
    /// Where the proxy listens (loopback only; port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7444")]
    pub listen: SocketAddr,
    /// The admin port (`/readyz`, `/metrics`); port 0 picks a free port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub admin: SocketAddr,
    /// Where to write the CA, the MCP server's kubeconfig, the config and the audit
    /// trail (default: ~/.chaperone/local/<context>).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The user name the MCP server's token carries: what the policy's `users` match
    /// and the audit trail records.
    #[arg(long, value_name = "NAME", default_value = "mcp-agent")]
    pub user: String,
    /// Groups the token carries (repeatable), for the policy's `groups`.
    #[arg(long = "group", value_name = "GROUP", default_values_t = vec!["chaperone:local".to_owned()])]
    pub groups: Vec<String>,
    /// How long the MCP server's token and the serving certificate are valid, in
    /// hours. Restart `chaperone local` to get fresh ones (the kubeconfig path stays).
    #[arg(long, value_name = "HOURS", default_value_t = 12,
          value_parser = clap::value_parser!(u32).range(1..=8760))]
    pub valid_hours: u32,
    /// Where held requests' AccessRequests are created (the cluster needs the CRD).
    #[arg(long, value_name = "NS", default_value = "default")]
    pub approval_namespace: String,
}

/// The kubernetes-mcp-server release the printed MCP client config runs: the one the
/// tests drive through the proxy (`.ci/test`).
const MCP_SERVER_VERSION: &str = "0.0.67";

/// The issuer name in the tokens `chaperone local` issues.
fn issuer_name(context: &str) -> String {
    format!("https://chaperone.local/{context}")
}

/// What `start` made: the running proxy and the files a user needs.
pub struct Started {
    pub proxy: Running,
    /// Held for as long as the run: the directory is this run's.
    _lock: std::fs::File,
    pub dir: PathBuf,
    pub context: String,
    pub server: String,
    /// For the MCP server.
    pub mcp_kubeconfig: PathBuf,
    pub audit_file: PathBuf,
    /// Why the proxy has no credential for the context now (an exec plugin that failed:
    /// not logged in, a plugin that prints a client certificate), said at start.
    pub credential_problem: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let started = start(&args, &super::process_env).await?;
    print!("{}", instructions(&args, &started));
    server::signal().await;
    started.proxy.stop().await;
    Ok(())
}

/// Resolves the context, writes the run's CA, certificate, token issuer keys, proxy
/// config and MCP kubeconfig into the directory, and starts the proxy.
pub async fn start(args: &Args, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Started> {
    // The admin port answers without a token (`/readyz` says why the proxy is not
    // ready, `/metrics` what it decided): on a laptop, for this machine only.
    if !args.admin.ip().is_loopback() {
        anyhow::bail!(
            "--admin {} is not a loopback address; the admin port answers without a \
             token, so it listens on 127.0.0.1 or ::1 only",
            args.admin
        );
    }
    // The file named, else `$KUBECONFIG`'s files merged as kubectl merges them, else
    // `~/.kube/config`; made absolute, as the proxy config written below names them.
    let kubeconfig_paths = match &args.kubeconfig {
        Some(p) => vec![absolute(p)?],
        None => kubeconfig::default_paths(env)
            .iter()
            .map(|p| absolute(p))
            .collect::<anyhow::Result<Vec<_>>>()?,
    };
    if kubeconfig_paths.is_empty() {
        anyhow::bail!("no kubeconfig: pass --kubeconfig, or set KUBECONFIG or HOME");
    }
    // Fails early, naming the file and context, if the context cannot be used (an
    // unknown name, a refused setting, a file missing).
    let resolved = match &args.kubeconfig {
        Some(_) => kubeconfig::resolve(&kubeconfig_paths[0], args.context.as_deref())?,
        None => kubeconfig::resolve_merged(&kubeconfig_paths, args.context.as_deref())?,
    };
    let context = resolved.context.clone();
    let policy = absolute(&args.policy)?;
    if !policy.is_file() {
        anyhow::bail!("the policy file {} does not exist", policy.display());
    }
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            let home = env("HOME").context("no HOME: pass --dir")?;
            Path::new(&home)
                .join(".chaperone/local")
                .join(sanitize(&context))
        }
    };
    let dir = create_private_dir(&dir)?;
    // Before anything is written: a second run would replace the first's CA and token
    // keys under it, and the first's MCP server would be refused from then on.
    let lock = lock_dir(&dir)?;

    // This run's CA and serving certificate, valid for as long as the token.
    let days = i64::from(args.valid_hours.div_ceil(24).max(1));
    let ca = pki::Authority::generate("chaperone local CA", days)?;
    let leaf = ca.issue_server(&["127.0.0.1", "::1", "localhost"], days)?;
    let ca_file = dir.join("ca.crt");
    std::fs::write(&ca_file, &ca.cert_pem)
        .with_context(|| format!("failed to write {}", ca_file.display()))?;
    let cert_file = dir.join("tls.crt");
    std::fs::write(&cert_file, &leaf.cert_pem)
        .with_context(|| format!("failed to write {}", cert_file.display()))?;
    write_private(&dir.join("tls.key"), &leaf.key_pem)
        .with_context(|| format!("failed to write {}", dir.join("tls.key").display()))?;

    // This run's token issuer: its public key is the only one the proxy trusts.
    let issuer = Issuer::generate().map_err(anyhow::Error::msg)?;
    let jwks_file = dir.join("jwks.json");
    std::fs::write(&jwks_file, issuer.jwks().to_string())
        .with_context(|| format!("failed to write {}", jwks_file.display()))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    // This run's own uid: an approval given to another run's agent of the same user
    // name (another person's laptop, the same cluster) does not cover this one's.
    let run_uid = {
        use ring::rand::SecureRandom as _;
        let mut bytes = [0u8; 8];
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| anyhow::anyhow!("the system's random source failed"))?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("chaperone-local-{hex}")
    };
    let token = issuer
        .sign(&json!({
            "iss": issuer_name(&context),
            "sub": args.user,
            "uid": run_uid,
            "aud": ["chaperone"],
            "groups": args.groups,
            "iat": now,
            "nbf": now,
            "exp": now + i64::from(args.valid_hours) * 3600,
        }))
        .map_err(anyhow::Error::msg)?;

    let audit_file = dir.join("audit.jsonl");
    let config_file = dir.join("chaperone.yaml");
    let config_text = proxy_config(args, &context, &kubeconfig_paths, &policy, &dir);
    std::fs::write(&config_file, &config_text)
        .with_context(|| format!("failed to write {}", config_file.display()))?;
    let config = Config::parse(&config_file, &config_text)?;

    let proxy = launch::proxy(&config, env).await?;
    // A plugin runs now rather than at the MCP server's first request, so that what
    // stops it is said here; its token is kept for that request.
    let credential_problem = match &proxy.upstream {
        Some(upstream) => upstream
            .check_credential()
            .await
            .err()
            .map(|e| e.to_string()),
        None => None,
    };
    let mcp_kubeconfig = write_private(
        &dir.join("mcp.kubeconfig"),
        &kubeconfig::render(
            &format!("chaperone-{}", sanitize(&context)),
            &format!("https://{}", proxy.addrs[0]),
            &ca.cert_pem,
            &token,
            resolved.namespace.as_deref(),
        ),
    )
    .with_context(|| format!("failed to write {}", dir.join("mcp.kubeconfig").display()))?;
    Ok(Started {
        proxy,
        _lock: lock,
        dir,
        context,
        server: resolved.server,
        mcp_kubeconfig,
        audit_file,
        credential_problem,
    })
}

/// The proxy config of this run, written beside the other files for the user to read.
fn proxy_config(
    args: &Args,
    context: &str,
    kubeconfig_paths: &[PathBuf],
    policy: &Path,
    dir: &Path,
) -> String {
    let q = |p: &Path| yaml_quoted(&p.display().to_string());
    let s = |v: &str| yaml_quoted(v);
    format!(
        "# Written by `chaperone local`; rewritten at every start.\n\
         listen: [{listen}]\n\
         admin: {{listen: {admin}}}\n\
         tls: {{certFile: {cert}, keyFile: {key}}}\n\
         upstream:\n  kubeconfig: {kubeconfig}\n\
         identity:\n  issuers:\n    # This run's own issuer: the token in mcp.kubeconfig.\n\
         \x20   - issuer: {issuer}\n      audiences: [chaperone]\n      jwksFile: {jwks}\n\
         \x20     usernamePrefix: \"-\"\n      groupsClaim: groups\n      groupsPrefix: \"-\"\n\
         \x20     uidClaim: uid\n\
         policy: {{file: {policy}}}\n\
         audit: {{file: {audit}}}\n\
         approval: {{namespace: {ns}}}\n",
        listen = s(&args.listen.to_string()),
        admin = s(&args.admin.to_string()),
        cert = q(&dir.join("tls.crt")),
        key = q(&dir.join("tls.key")),
        kubeconfig = kubeconfig_source(kubeconfig_paths, context),
        issuer = s(&issuer_name(context)),
        jwks = q(&dir.join("jwks.json")),
        policy = q(policy),
        audit = q(&dir.join("audit.jsonl")),
        ns = s(&args.approval_namespace),
    )
}

/// The proxy config's `upstream.kubeconfig`: the one file read, or, for several, none
/// named, so that the proxy reads `$KUBECONFIG` as this run did (listed in a comment).
fn kubeconfig_source(paths: &[PathBuf], context: &str) -> String {
    let context = yaml_quoted(context);
    match paths {
        [one] => format!(
            "{{path: {}, context: {context}}}",
            yaml_quoted(&one.display().to_string())
        ),
        several => {
            let names: Vec<String> = several
                .iter()
                .map(|p| yaml_quoted(&p.display().to_string()))
                .collect();
            format!(
                "{{context: {context}}}  # KUBECONFIG's files merged: {}",
                names.join(", ")
            )
        }
    }
}

/// `text` as a YAML double-quoted scalar of printable ASCII only: every other character
/// escaped (`\u2028`, which YAML reads as a line break, among them), so that a path or a
/// context name cannot end its line in the config written, in a value or a comment.
fn yaml_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if u32::from(c) <= 0xffff => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push_str(&format!("\\U{:08X}", u32::from(c))),
        }
    }
    out.push('"');
    out
}

/// What to tell the user: where things are, and what to paste into an MCP client.
fn instructions(args: &Args, started: &Started) -> String {
    let kc = started.mcp_kubeconfig.display();
    // Written out by hand to keep the order people expect ("command" before "args").
    // A pinned version: the MCP server runs as the user, who can read their own
    // kubeconfig; what `npx -y` fetches and runs unasked must not change under them.
    let mcp = format!(
        "{{\n  \"mcpServers\": {{\n    \"kubernetes\": {{\n      \"command\": \"npx\",\n      \
         \"args\": [\"-y\", \"kubernetes-mcp-server@{MCP_SERVER_VERSION}\", \"--kubeconfig\", {}]\n    }}\n  }}\n}}",
        json!(kc.to_string())
    );
    let mut out = format!(
        "chaperone local: context {:?} ({}) through https://{}\n\
         \x20 MCP server kubeconfig  {kc}\n\
         \x20   as user {:?}, groups {:?}; valid {} h (restart for a fresh one)\n\
         \x20 policy                 {}\n\
         \x20 audit trail            {}   (chaperone replay {} --follow)\n",
        started.context,
        started.server,
        started.proxy.addrs[0],
        args.user,
        args.groups,
        args.valid_hours,
        args.policy.display(),
        started.audit_file.display(),
        started.audit_file.display(),
    );
    if let Some(admin) = started.proxy.admin {
        out.push_str(&format!("  health                 http://{admin}/readyz\n"));
    }
    if let Some(problem) = &started.credential_problem {
        out.push_str(&format!(
            "\nwarning: {problem}\n  Requests get a 503 until it works: log in to the cluster, and they go through.\n"
        ));
    }
    out.push_str(&format!(
        "\nAdd this to your MCP client's config (e.g. claude_desktop_config.json):\n{}\n\
         Any other MCP server or client: KUBECONFIG={kc}\n\
         Stop with Ctrl-C.\n",
        mcp
    ));
    out
}

/// A context name as one path segment (never `.` or `..`). A name that had to change
/// gets a digest of itself, so that two contexts (`a/b` and `a:b`) never share one
/// directory, and with it one CA and one audit trail.
fn sanitize(context: &str) -> String {
    let segment: String = context
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let segment = match segment.chars().all(|c| c == '.') {
        true => "_".repeat(segment.len().max(1)),
        false => segment,
    };
    if segment == context {
        return segment;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, context.as_bytes());
    let tag: String = digest.as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{segment}-{tag}")
}

/// Locks the directory for this run (`DIR/lock`, released when the process ends), or
/// says which run holds it.
fn lock_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("failed to open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another `chaperone local` is running with {}; stop it first, or give this \
             one another --dir",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("failed to lock {}", path.display()))
        }
    }
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("bad path {}", path.display()))
}

/// The directory holds a private key and a token, and the JWKS the proxy trusts (read
/// again by path while it runs): readable by the user only, and out of every other
/// user's reach. Returns its canonical path, which the config names, so that no link
/// along the way can later be pointed elsewhere.
///
/// * It must be the user's own, not a symbolic link, and if it was there already, not
///   writable by others (who could have left links or files of their own in it).
/// * Each directory above it must be the user's or root's, and writable by no one else
///   unless sticky (as `/tmp`): whoever may rename an entry on the way could swap the
///   directory for one of their own, whose JWKS the proxy would then trust.
fn create_private_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let me = rustix::process::geteuid().as_raw();
    let existed = match std::fs::symlink_metadata(dir) {
        Ok(meta) => Some(meta),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("failed to read {}", dir.display())),
    };
    if existed.is_none() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
    }
    let meta = match existed {
        Some(meta) => meta,
        None => std::fs::symlink_metadata(dir)
            .with_context(|| format!("failed to read {}", dir.display()))?,
    };
    if meta.file_type().is_symlink() {
        anyhow::bail!(
            "{} is a symbolic link; give --dir a directory of your own",
            dir.display()
        );
    }
    if !meta.is_dir() {
        anyhow::bail!("{} is not a directory", dir.display());
    }
    if meta.uid() != me {
        anyhow::bail!(
            "{} belongs to user {}, not to you ({me}); give --dir a directory of your own",
            dir.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o022 != 0 {
        anyhow::bail!(
            "{} is writable by others (mode {:o}), who may have left files or links in it; \
             remove it, or give --dir a new directory",
            dir.display(),
            meta.mode() & 0o7777
        );
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("failed to restrict {}", dir.display()))?;
    let canonical = std::fs::canonicalize(dir)
        .with_context(|| format!("failed to resolve {}", dir.display()))?;
    for above in canonical.ancestors().skip(1) {
        let meta = std::fs::metadata(above)
            .with_context(|| format!("failed to read {}", above.display()))?;
        if meta.uid() != me && meta.uid() != 0 {
            anyhow::bail!(
                "{} is above {} and belongs to user {}, who could swap it; give --dir \
                 a directory whose parents are yours or root's",
                above.display(),
                canonical.display(),
                meta.uid()
            );
        }
        let sticky = meta.mode() & 0o1000 != 0;
        if meta.mode() & 0o022 != 0 && !sticky {
            anyhow::bail!(
                "{} is above {} and writable by others (mode {:o}), who could swap it; \
                 give --dir a directory whose parents only you can change",
                above.display(),
                canonical.display(),
                meta.mode() & 0o7777
            );
        }
    }
    Ok(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_names_become_one_path_segment() {
        let eks = sanitize("arn:aws:eks:eu-west-1:123:cluster/prod");
        assert!(
            eks.starts_with("arn_aws_eks_eu-west-1_123_cluster_prod-") && eks.len() == 47,
            "{eks}"
        );
        assert_eq!(sanitize("kind-dev"), "kind-dev");
        // Never the directory itself or its parent.
        assert!(sanitize(".").starts_with("_-"), "{}", sanitize("."));
        assert!(sanitize("..").starts_with("__-"), "{}", sanitize(".."));
        // Two contexts never share a directory.
        let names = ["a/b", "a:b", "a_b", "a b", "a\\b"];
        let segments: std::collections::HashSet<_> = names.iter().map(|n| sanitize(n)).collect();
        assert_eq!(segments.len(), names.len(), "{segments:?}");
        assert!(segments.iter().all(|s| !s.contains(['/', '\\', ':', ' '])));
    }

    #[tokio::test]
    async fn the_admin_port_is_refused_off_loopback() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let dir = tempfile::tempdir().unwrap();
        let cli = Cli::parse_from([
            "local",
            "--policy",
            "policy.yaml",
            "--admin",
            "0.0.0.0:9901",
            "--dir",
            dir.path().join("d").to_str().unwrap(),
        ]);
        let Err(err) = start(&cli.args, &|_| None).await else {
            panic!("started with the admin port on every address");
        };
        assert!(
            err.to_string()
                .starts_with("--admin 0.0.0.0:9901 is not a loopback address"),
            "{err}"
        );
        assert!(!dir.path().join("d").exists(), "files were written first");
    }

    /// A path or a context name can hold any character, YAML's line breaks among them
    /// (U+2028, U+0085): written into the proxy config, each stays one value, and adds
    /// no setting.
    #[test]
    fn what_is_written_into_the_proxy_config_stays_a_value() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let cli = Cli::parse_from(["local", "--policy", "p.yaml"]);
        let injected = "\u{2028}maxConnections: 1\u{2028}#";
        let weird = format!("/tmp/x{injected}\n\u{85}upstream: {{}}\"\\ é 😀");
        let context = format!("ctx{injected}");
        for paths in [
            vec![PathBuf::from(&weird)],
            vec![
                PathBuf::from("/home/me/.kube/config"),
                PathBuf::from(&weird),
            ],
        ] {
            let text = proxy_config(
                &cli.args,
                &context,
                &paths,
                Path::new(&weird),
                Path::new("/d"),
            );
            assert!(text.is_ascii(), "{text}");
            let config = Config::parse(Path::new("chaperone.yaml"), &text)
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(
                config.max_connections,
                crate::config::DEFAULT_MAX_CONNECTIONS,
                "{text}"
            );
            let source = config.upstream.kubeconfig.expect("a kubeconfig source");
            assert_eq!(source.context.as_deref(), Some(context.as_str()));
            let expected = (paths.len() == 1).then(|| PathBuf::from(&weird));
            assert_eq!(source.path, expected);
        }
        for text in ["plain", "a\"b\\c", "\u{2028}\u{85}\n\t", "é😀"] {
            let back: String = serde_yaml::from_str(&yaml_quoted(text)).unwrap();
            assert_eq!(back, text);
        }
    }

    #[test]
    fn a_directory_is_one_runs_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_dir(dir.path()).unwrap();
        let second = lock_dir(dir.path()).unwrap_err().to_string();
        assert!(
            second.contains("another `chaperone local` is running with"),
            "{second}"
        );
        drop(first);
        lock_dir(dir.path()).unwrap();
    }

    #[test]
    fn the_directory_is_private_and_never_a_link() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("ctx");
        let made = create_private_dir(&dir).unwrap();
        assert_eq!(made, std::fs::canonicalize(&dir).unwrap());
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // Again: the same directory, still private.
        assert_eq!(create_private_dir(&dir).unwrap(), made);
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let err = create_private_dir(&link).unwrap_err();
        assert!(err.to_string().contains("is a symbolic link"), "{err}");

        // A directory others could write to may hold what they left: refused, not
        // narrowed.
        let loose = base.path().join("loose");
        std::fs::create_dir(&loose).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = create_private_dir(&loose).unwrap_err();
        assert!(
            err.to_string().contains("is writable by others (mode 777)"),
            "{err}"
        );

        // Under a parent others may write to and that is not sticky, whoever can write
        // there could rename the directory and put their own in its place.
        let shared = base.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = create_private_dir(&shared.join("ctx"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is above") && err.contains("writable by others"),
            "{err}"
        );
        // Sticky (as /tmp), they cannot: allowed.
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        create_private_dir(&shared.join("ctx2")).unwrap();
    }
}
