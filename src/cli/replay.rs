//! `chaperone replay FILE...`: a readable timeline of recorded requests.
//!
//! Reads chaperone's own JSONL recording (one `audit.k8s.io/v1` event per line) and the
//! OpenTelemetry Collector file exporter's OTLP JSON (one export request per line,
//! each log record's body being an audit event).

use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;
use serde_json::Value;

use super::terminal::for_terminal;
use crate::audit::event::{annotation, Event, Stage};
use crate::audit::otlp::SCOPE;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Recordings to read, in order (JSONL audit events or OTLP JSON).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Only requests of this trace (the W3C trace ID the caller sent).
    #[arg(long, value_name = "TRACE_ID")]
    pub trace: Option<String>,
    /// Only requests by this user (exact, or a prefix ending in `*`).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Only requests received at or after this time: RFC 3339, or an age like `15m`.
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only requests with this decision.
    #[arg(long, value_enum)]
    pub decision: Option<Decision>,
    /// Keep reading the last file as it grows (like `tail -f`).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Show recorded (masked) request and response bodies, when the level kept them.
    #[arg(long)]
    pub bodies: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Decision {
    Allow,
    Deny,
    Approve,
    Error,
    /// Refused with 429: past `maxRequestsPerCaller` or `maxStreamsPerCaller`.
    Throttled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// The filters, resolved once.
struct Filter {
    trace: Option<String>,
    user: Option<String>,
    since: Option<String>,
    decision: Option<&'static str>,
}

impl Filter {
    fn new(args: &Args) -> anyhow::Result<Filter> {
        let since = match &args.since {
            None => None,
            Some(s) => Some(since_timestamp(s, time::OffsetDateTime::now_utc())?),
        };
        Ok(Filter {
            trace: args.trace.clone(),
            user: args.user.clone(),
            since,
            decision: args.decision.map(|d| match d {
                Decision::Allow => "allow",
                Decision::Deny => "deny",
                Decision::Approve => "approve",
                Decision::Error => "error",
                Decision::Throttled => "throttled",
            }),
        })
    }

    fn keeps(&self, e: &Event) -> bool {
        let note = |k: &str| e.annotations.get(k).map(|v| &**v);
        if let Some(t) = &self.trace {
            if note(annotation::TRACE_ID) != Some(t.as_str()) {
                return false;
            }
        }
        if let Some(u) = &self.user {
            let hit = match u.strip_suffix('*') {
                Some(prefix) => e.user.username.starts_with(prefix),
                None => &e.user.username == u,
            };
            if !hit {
                return false;
            }
        }
        // RFC 3339 UTC timestamps of one width compare as strings.
        if let Some(s) = &self.since {
            if e.request_received_timestamp.as_str() < s.as_str() {
                return false;
            }
        }
        if let Some(d) = self.decision {
            if decision_of(e) != d {
                return false;
            }
        }
        true
    }
}

/// The decision an event records; requests before the policy stage default to
/// `allow` when they succeeded.
fn decision_of(e: &Event) -> &str {
    match e.annotations.get(annotation::DECISION) {
        Some(d) => d,
        None => match e.response_status.as_ref().map(|s| s.code) {
            Some(c) if c >= 500 => "error",
            _ => "allow",
        },
    }
}

/// `--since` as an RFC 3339 UTC timestamp in the recording's format.
fn since_timestamp(text: &str, now: time::OffsetDateTime) -> anyhow::Result<String> {
    if let Some(age) = crate::config::parse_duration(text) {
        let at = now - age;
        return Ok(crate::audit::event::timestamp(at));
    }
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("--since {text:?}: write an RFC 3339 time or an age like 15m"))?;
    Ok(crate::audit::event::timestamp(at))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let filter = Filter::new(&args)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.format == Format::Text {
        writeln!(out, "{}", header())?;
    }
    let last = args.files.len() - 1;
    let mut unread = 0;
    for (i, path) in args.files.iter().enumerate() {
        let file = std::fs::File::open(path)
            .with_context(|| format!("failed to open {}", path.display()))?;
        let mut reader = BufReader::new(file);
        unread += print_lines(&mut reader, path, &filter, &args, &mut out)?;
        if args.follow && i == last {
            follow(reader, path, &filter, &args, &mut out).await?;
        }
    }
    match unread {
        0 => Ok(()),
        n => anyhow::bail!("{n} line(s) could not be read as audit events (named above)"),
    }
}

fn print_lines(
    reader: &mut impl BufRead,
    path: &Path,
    filter: &Filter,
    args: &Args,
    out: &mut impl Write,
) -> anyhow::Result<usize> {
    let mut line = String::new();
    let (mut n, mut unread) = (0usize, 0usize);
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(unread);
        }
        n += 1;
        if !emit(&line, &format!("{}:{n}", path.display()), filter, args, out)? {
            unread += 1;
        }
    }
}

/// Prints the events of one line that pass the filters; `false` for a line that is
/// not an audit event, which is named on stderr and skipped: a line cut short by a
/// crash must not hide the events recorded after it.
fn emit(
    line: &str,
    origin: &str,
    filter: &Filter,
    args: &Args,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    if line.trim().is_empty() {
        return Ok(true);
    }
    let events = match parse_line(line) {
        Ok(events) => events,
        Err(error) => {
            eprintln!(
                "{origin}: not an audit event ({}); skipped",
                for_terminal(&format!("{error:#}"))
            );
            return Ok(false);
        }
    };
    for e in events.iter().filter(|e| filter.keeps(e)) {
        match args.format {
            Format::Json => writeln!(out, "{}", serde_json::to_string(e)?)?,
            Format::Text => {
                writeln!(out, "{}", for_terminal(&row(e)))?;
                if args.bodies {
                    for (object, key, label) in [
                        (&e.request_object, "chaperone.dev/request-body", "request"),
                        (
                            &e.response_object,
                            "chaperone.dev/response-body",
                            "response",
                        ),
                    ] {
                        match (object, e.annotations.get(key)) {
                            (Some(v), _) => {
                                writeln!(out, "    {label}: {}", for_terminal(&v.to_string()))?
                            }
                            (None, Some(why)) => {
                                writeln!(out, "    {label}: ({})", for_terminal(why))?
                            }
                            (None, None) => {}
                        }
                    }
                }
            }
        }
    }
    Ok(true)
}

/// Reads the file as it grows; starts over when it is rotated (it shrinks). A line
/// still being written is read again once it is complete.
async fn follow(
    mut reader: BufReader<std::fs::File>,
    path: &Path,
    filter: &Filter,
    args: &Args,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut line = String::new();
    loop {
        let at = reader.stream_position()?;
        line.clear();
        reader.read_line(&mut line)?;
        if line.ends_with('\n') {
            // A line that is not an event is named on stderr; following goes on.
            emit(&line, &path.display().to_string(), filter, args, out)?;
            continue;
        }
        reader.seek(SeekFrom::Start(at))?;
        out.flush()?;
        tokio::time::sleep(Duration::from_millis(250)).await;
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if len < at {
            reader = BufReader::new(std::fs::File::open(path)?);
        }
    }
}

/// One line: a chaperone audit event, or an OTLP JSON export whose log records carry
/// audit events as their bodies.
fn parse_line(line: &str) -> anyhow::Result<Vec<Event>> {
    let value: Value = serde_json::from_str(line)?;
    if value.get("resourceLogs").is_none() {
        return Ok(vec![serde_json::from_value(value)?]);
    }
    let mut events = Vec::new();
    let records = value["resourceLogs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["scopeLogs"].as_array().into_iter().flatten())
        // chaperone's own records: a Collector's file may hold other programs' logs.
        // Not a boundary: a program may name its scope `chaperone` too; keep the trail's
        // pipeline to the proxies' own exports.
        .filter(|s| s.pointer("/scope/name").and_then(Value::as_str) == Some(SCOPE))
        .flat_map(|s| s["logRecords"].as_array().into_iter().flatten());
    for record in records {
        let Some(body) = record.pointer("/body/stringValue").and_then(Value::as_str) else {
            continue;
        };
        let mut event: Event = serde_json::from_str(body)?;
        if let Some(trace) = record
            .get("traceId")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            event
                .annotations
                .entry(annotation::TRACE_ID.into())
                .or_insert_with(|| trace.to_ascii_lowercase().into());
        }
        events.push(event);
    }
    Ok(events)
}

fn header() -> String {
    format!(
        "{:<23} {:<40} {:<16} {:<44} {:<8} {:<24} {:>4} {:>9} {:>6}",
        "TIME", "USER", "VERB", "RESOURCE", "DECISION", "RULE", "CODE", "LATENCY", "MASKED"
    )
}

fn row(e: &Event) -> String {
    let note = |k: &str| e.annotations.get(k).map(|v| &**v).unwrap_or("");
    // `2026-11-25T13:40:00.123456Z` -> `2026-11-25 13:40:00.123`
    let time = e
        .request_received_timestamp
        .get(..23)
        .map(|t| t.replacen('T', " ", 1))
        .unwrap_or_else(|| e.request_received_timestamp.clone());
    let resource = match &e.object_ref {
        Some(o) => {
            let mut r = if o.api_group.is_empty() {
                o.resource.clone()
            } else {
                format!("{}.{}", o.resource, o.api_group)
            };
            if !o.subresource.is_empty() {
                r = format!("{r}/{}", o.subresource);
            }
            match (o.namespace.as_str(), o.name.as_str()) {
                ("", "") => r,
                ("", name) => format!("{r} {name}"),
                (ns, "") => format!("{ns}/{r}"),
                (ns, name) => format!("{ns}/{r} {name}"),
            }
        }
        None => e
            .request_uri
            .split('?')
            .next()
            .unwrap_or_default()
            .to_owned(),
    };
    let verb = match e.stage {
        Stage::ResponseStarted => format!("{} (started)", e.verb),
        Stage::RequestReceived => format!("{} (held)", e.verb),
        _ => e.verb.clone(),
    };
    let code = e
        .response_status
        .as_ref()
        .map_or_else(String::new, |s| s.code.to_string());
    let latency = match note(annotation::LATENCY_MS).parse::<f64>() {
        Ok(ms) if ms >= 1000.0 => format!("{:.1}s", ms / 1000.0),
        Ok(ms) => format!("{ms:.1}ms"),
        Err(_) => String::new(),
    };
    let user = if e.user.username.is_empty() {
        "-"
    } else {
        &e.user.username
    };
    format!(
        "{:<23} {:<40} {:<16} {:<44} {:<8} {:<24} {:>4} {:>9} {:>6}",
        time,
        user,
        verb,
        resource,
        decision_of(e),
        if note(annotation::RULE).is_empty() {
            "-"
        } else {
            note(annotation::RULE)
        },
        code,
        latency,
        note(annotation::MASKED_FIELDS),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Of an OTLP export, only chaperone's records are read: another program's log
    /// record whose body looks like an event is not taken for one.
    #[test]
    fn only_chaperones_otlp_records_are_events() {
        let event = |id: &str| {
            serde_json::json!({"kind": "Event", "apiVersion": "audit.k8s.io/v1",
                "level": "Metadata", "auditID": id, "stage": "ResponseComplete",
                "requestURI": "/api/v1/pods", "verb": "list", "user": {"username": "u"},
                "requestReceivedTimestamp": "2026-11-25T13:40:05.000000Z",
                "stageTimestamp": "2026-11-25T13:40:05.000000Z"})
            .to_string()
        };
        let scope = |name: &str, id: &str| {
            serde_json::json!({"scope": {"name": name},
                "logRecords": [{"body": {"stringValue": event(id)}}]})
        };
        let line = serde_json::json!({"resourceLogs": [{"scopeLogs": [
            scope("chaperone", "real"), scope("mcp-server", "forged")]}]});
        let events = parse_line(&line.to_string()).unwrap();
        let ids: Vec<&str> = events.iter().map(|e| e.audit_id.as_str()).collect();
        assert_eq!(ids, ["real"]);
    }

    #[test]
    fn since_accepts_ages_and_times() {
        let now = time::OffsetDateTime::from_unix_timestamp(1_764_078_000).unwrap();
        assert_eq!(
            since_timestamp("15m", now).unwrap(),
            "2025-11-25T13:25:00.000000Z"
        );
        assert_eq!(
            since_timestamp("2025-11-25T13:00:00Z", now).unwrap(),
            "2025-11-25T13:00:00.000000Z"
        );
        assert!(since_timestamp("yesterday", now).is_err());
    }
}
