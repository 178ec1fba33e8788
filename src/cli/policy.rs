//! `chaperone policy check|explain|test`: work on policy files without a cluster.
//!
//! Exit codes: `check` 0 (valid), 1 (errors), 2 (warnings only, with `--strict`); `explain`
//! 0 (allow), 1 (deny), 3 (approve), 2 (the policy or request could not be read); `test` 0 (all
//! cases pass), 1 (a case failed or a file has errors).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::identity::Subject;
use crate::policy::{self, model::Verb, Action, Decision};
use crate::request_info::{Attributes, RequestInfo};

#[derive(Debug, Parser)]
#[command(about = "Check, explain and test chaperone policies")]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate policy files: print errors (file:line:column) and lint warnings.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Exit with 2 when there are warnings but no errors.
        #[arg(long)]
        strict: bool,
    },
    /// Show how a policy decides one request: decision, rule and reason.
    #[command(after_help = "Examples:\n  \
        chaperone policy explain --policy p.yaml --user alice --group dev -n team-a get pods\n  \
        chaperone policy explain --policy p.yaml --user alice -n team-a create pods/exec web --command ps\n  \
        chaperone policy explain --policy p.yaml --user alice delete deployments.apps/scale web\n  \
        chaperone policy explain --policy p.yaml --service-account ci/deployer --request 'GET /api/v1/namespaces/ci/secrets'")]
    Explain(Box<Explain>),
    /// Run the `tests:` cases embedded in policy files.
    Test {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
pub struct Explain {
    /// The policy file.
    #[arg(long)]
    pub policy: PathBuf,
    /// The caller's user name.
    #[arg(long, required_unless_present = "service_account")]
    pub user: Option<String>,
    /// The caller as a service account, `namespace/name`.
    #[arg(long, conflicts_with = "user")]
    pub service_account: Option<String>,
    /// A group of the caller (repeatable).
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// The namespace of the request (omit for a cluster-wide request).
    #[arg(long, short = 'n', conflicts_with = "request")]
    pub namespace: Option<String>,
    /// An exec command argument (repeatable, in order), for `create pods/exec`.
    #[arg(long = "command", conflicts_with = "request")]
    pub command: Vec<String>,
    /// The request as `'METHOD /path?query'`, resolved as the proxy resolves it.
    #[arg(long, conflicts_with_all = ["verb", "resource", "name"])]
    pub request: Option<String>,
    /// The verb: get, list, watch, create, update, patch, delete, ...
    #[arg(required_unless_present = "request")]
    pub verb: Option<String>,
    /// `resource[.group][/subresource]`, e.g. `pods`, `deployments.apps/scale`, `pods/exec`.
    #[arg(required_unless_present = "request")]
    pub resource: Option<String>,
    /// The object's name.
    pub name: Option<String>,
}

/// Runs a `policy` subcommand, printing to stdout (results) and stderr (diagnostics).
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    execute(args, &mut out, &mut err)
}

/// [`run`] with its output streams given, for tests.
pub fn execute(args: Args, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Check { files, strict } => check(&files, strict, out, err),
        Command::Explain(e) => explain(*e, out, err),
        Command::Test { files } => test(&files, out, err),
    }
}

fn check(
    files: &[PathBuf],
    strict: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let (mut errors, mut warnings) = (0, 0);
    for file in files {
        match policy::load(file) {
            Ok((p, found)) => {
                for w in &found {
                    writeln!(err, "{w}")?;
                }
                warnings += found.len();
                let rules = p.rule_names().count();
                let mut what = format!(
                    "policy {:?}, {rules} rules, {} tests",
                    p.name(),
                    p.cases().len()
                );
                if !found.is_empty() {
                    what.push_str(&format!(", {} warnings", found.len()));
                }
                writeln!(out, "{}: ok ({what})", file.display())?;
            }
            Err(e) => {
                errors += 1;
                writeln!(err, "{e}")?;
                writeln!(out, "{}: error", file.display())?;
            }
        }
    }
    Ok(if errors > 0 {
        ExitCode::from(1)
    } else if strict && warnings > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn explain(e: Explain, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let p = match policy::load(&e.policy) {
        Ok((p, _)) => p,
        Err(error) => {
            writeln!(err, "{error}")?;
            return Ok(ExitCode::from(2));
        }
    };
    let (info, query) = match request(&e) {
        Ok(r) => r,
        Err(error) => {
            writeln!(err, "error: {error}")?;
            return Ok(ExitCode::from(2));
        }
    };
    let user = match (&e.user, &e.service_account) {
        (Some(u), _) => u.clone(),
        (None, Some(sa)) => match sa.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() => {
                format!("system:serviceaccount:{ns}:{name}")
            }
            _ => {
                writeln!(err, "error: --service-account {sa:?} is not namespace/name")?;
                return Ok(ExitCode::from(2));
            }
        },
        (None, None) => String::new(),
    };
    let who = Subject {
        user,
        groups: e.groups.clone(),
        ..Subject::default()
    };
    let d = policy::authorize(&p, &who, &info, query.as_deref());
    print_decision(&d, out)?;
    Ok(ExitCode::from(match d.action() {
        Action::Allow => 0,
        Action::Deny => 1,
        Action::Approve => 3,
    }))
}

fn print_decision(d: &Decision, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "decision: {}", d.action())?;
    writeln!(out, "rule:     {}", d.rule())?;
    writeln!(out, "reason:   {}", d.reason())?;
    if let Some(text) = d.description() {
        writeln!(out, "about:    {text}")?;
    }
    writeln!(out, "mode:     {}", d.mode())?;
    if !d.enforced() || d.applied() != d.action() {
        writeln!(out, "applied:  {} (rule {})", d.applied(), d.applied_rule())?;
    }
    if let Some(a) = d.approval() {
        writeln!(
            out,
            "approval: hold {:?}, grant {:?}, {} approver(s), skip groups {:?}, break-glass groups {:?}",
            a.hold.0,
            a.grant.0,
            a.approvers,
            a.skip_groups.iter().map(|g| &g.0).collect::<Vec<_>>(),
            a.break_glass_groups.iter().map(|g| &g.0).collect::<Vec<_>>()
        )?;
    }
    Ok(())
}

/// The request of `explain`, from `--request` or from verb, resource and name.
fn request(e: &Explain) -> Result<(RequestInfo, Option<String>), String> {
    if let Some(line) = &e.request {
        let parsed = policy::model::RequestLine::try_from(line.clone())?;
        return Ok((parsed.info, parsed.query));
    }
    let verb = e.verb.as_deref().unwrap_or_default();
    if Verb::parse(verb).is_none_or(|v| v.is_http_only()) {
        return Err(format!("{verb:?} is not a verb of a resource request"));
    }
    let spec = e.resource.as_deref().unwrap_or_default();
    let (resource, subresource) = spec.split_once('/').unwrap_or((spec, ""));
    let (resource, group) = resource.split_once('.').unwrap_or((resource, ""));
    if resource.is_empty() {
        return Err(format!("{spec:?} is not resource[.group][/subresource]"));
    }
    let query = (!e.command.is_empty()).then(|| {
        e.command
            .iter()
            .map(|arg| {
                let encoded =
                    percent_encoding::utf8_percent_encode(arg, percent_encoding::NON_ALPHANUMERIC);
                format!("command={encoded}")
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    let info = RequestInfo::from_attributes(Attributes {
        verb,
        group,
        version: "",
        namespace: e.namespace.as_deref().unwrap_or_default(),
        resource,
        subresource,
        name: e.name.as_deref().unwrap_or_default(),
    });
    Ok((info, query))
}

fn test(files: &[PathBuf], out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let (mut passed, mut failed, mut broken) = (0, 0, 0);
    for file in files {
        let (p, _) = match policy::load(file) {
            Ok(loaded) => loaded,
            Err(e) => {
                broken += 1;
                writeln!(err, "{e}")?;
                continue;
            }
        };
        let outcomes = p.run_tests();
        writeln!(
            out,
            "{} (policy {:?}): {} tests",
            file.display(),
            p.name(),
            outcomes.len()
        )?;
        let expected: Vec<String> = outcomes
            .iter()
            .map(|o| match &o.expect_rule {
                Some(rule) => format!("{} by {rule}", o.expect),
                None => o.expect.to_string(),
            })
            .collect();
        let width = outcomes.iter().map(|o| o.name.len()).max().unwrap_or(0);
        let expect_width = expected.iter().map(String::len).max().unwrap_or(0);
        for (o, expected) in outcomes.iter().zip(&expected) {
            let got = format!("{} by {}", o.decision.action(), o.decision.rule());
            let status = if o.passed { "PASS" } else { "FAIL" };
            writeln!(
                out,
                "  {status}  {:<width$}  expect {expected:<expect_width$}  got {got}",
                o.name
            )?;
            if !o.passed {
                writeln!(out, "        {}:{}: {}", file.display(), o.line, o.decision)?;
                failed += 1;
            } else {
                passed += 1;
            }
        }
    }
    writeln!(
        out,
        "{passed} passed, {failed} failed, {broken} files with errors"
    )?;
    Ok(if failed + broken > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests;
