//! What the copies chaperone keeps of bodies never hold: the audit record's
//! `requestObject` and `responseObject`, and the body an AccessRequest shows its
//! reviewers. The API server and the caller get the bodies as they are sent.
//!
//! A body sent *to* the API server (an object created or replaced, a patch) is masked as
//! a response holding it would be (the built-in Secret rule and the policy's rules,
//! matched by its `kind` and by the requested resource). A JSON patch (an array of
//! operations) is masked by the rules that cover the request's resource, namespace and
//! name: an operation's `value` where it lands in or over a masked field (by the
//! operation's path), and any string in it the rules' detectors find something in.
//!
//! Either way, credentials that must reach their recipient but never a record are
//! masked in the copy ([`credentials`]): the token a `TokenRequest` answers with
//! (`kubectl create token`), and the one a `TokenReview` asks about.
//!
//! Free text kept in a record, an exec's command or a proxied request's query, goes
//! through the built-in detectors (PEM keys, JWTs, cloud and chat tokens, `password=`,
//! bearer tokens) as a pod's log lines do ([`Masker::mask_text`], [`Masker::mask_query`]).

use std::borrow::Cow;

use bytes::BytesMut;
use serde_json::Value;

use super::rules::Compiled;
use super::unit::{Context, Part, Units};
use super::{Error, Masker, Target, MARKER};

/// A body sent, masked for keeping ([`Masker::mask_sent_counted`]).
#[derive(Debug)]
pub struct Sent {
    pub value: Value,
    /// Values masked.
    pub masked: u64,
    /// Of those, the ones a detector or pattern found.
    pub detected: u64,
}

impl Masker {
    /// `json` masked for keeping, and the number of values masked. Invalid JSON is an
    /// error: nothing of a body that cannot be inspected is to be kept.
    pub fn mask_sent(&self, target: &Target<'_>, json: &[u8]) -> Result<(Value, u64), Error> {
        let sent = self.mask_sent_counted(target, json)?;
        Ok((sent.value, sent.masked))
    }

    /// As [`Masker::mask_sent`], also saying how many of the values masked a detector
    /// or pattern found, rather than a field a rule names: a reviewer cannot tell such a
    /// value from a payload.
    pub fn mask_sent_counted(&self, target: &Target<'_>, json: &[u8]) -> Result<Sent, Error> {
        let invalid = |_| Error::InvalidJson {
            offset: 0,
            reason: "not valid JSON",
        };
        // The credentials handed on first: fields of their own, masked before the
        // rules' detectors could take them for a finding.
        let mut sent: Value = serde_json::from_slice(json).map_err(invalid)?;
        let handed = credentials(target, &mut sent);
        let json = match handed {
            0 => Cow::Borrowed(json),
            _ => Cow::Owned(serde_json::to_vec(&sent).map_err(invalid)?),
        };
        let (masked, n, detected) = self.mask_sent_json(target, &json)?;
        let value: Value = serde_json::from_slice(&masked).map_err(invalid)?;
        Ok(Sent {
            value,
            masked: n + handed,
            detected,
        })
    }

    fn mask_sent_json(
        &self,
        target: &Target<'_>,
        json: &[u8],
    ) -> Result<(Vec<u8>, u64, u64), Error> {
        if json.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            let (ns, name) = (target.namespace.as_bytes(), target.name.as_bytes());
            let rules: Vec<&Compiled> = self
                .inner
                .all()
                .filter(|r| r.applies(&[target.resource], ns, name))
                .collect();
            if !rules.is_empty() {
                return json_patch(&rules, json);
            }
        }
        let ctx = Context {
            resource: target.resource.to_owned(),
            namespace: target.namespace.to_owned(),
            name: target.name.to_owned(),
            unknown_kinds: target.answers_unknown_kinds(),
        };
        let mut out = BytesMut::with_capacity(json.len());
        let mut units = Units::default();
        let n = units.mask(&self.inner, &ctx, json, Part::Whole, &mut out)?;
        Ok((out.to_vec(), n, units.detected()))
    }
}

impl Masker {
    /// `text` with what the built-in detectors find replaced by the marker; `None` when
    /// they find nothing. A PEM block that starts and does not end is masked to the end.
    /// Without the detectors (see `builtin_scanner`) all of a non-empty `text` is masked.
    pub fn mask_text(&self, text: &[u8]) -> Option<Vec<u8>> {
        mask_text(text)
    }

    /// An exec's command as records and reviewers are shown it: each argument masked by
    /// [`Masker::mask_text`], and the ones that only their place gives away masked
    /// whole: the argument after a credential flag given apart (`--password S3cret`,
    /// `--token T`, `redis-cli -a S3cret`, `sshpass -p S3cret`), and a MySQL client's
    /// `-pS3cret` (`-p` kept). `None` for an argument left as sent.
    pub fn mask_command<A: AsRef<[u8]>>(&self, args: &[A]) -> Vec<Option<Vec<u8>>> {
        let program = args.first().map(|a| program_name(a.as_ref()));
        let mut previous: &[u8] = b"";
        let mut out = Vec::with_capacity(args.len());
        for arg in args {
            let arg = arg.as_ref();
            let masked = if !arg.is_empty() && takes_credential(program, previous) {
                Some(MARKER.as_bytes().to_vec())
            } else if let Some(flag) = attached_credential(program, arg) {
                Some([flag, MARKER.as_bytes()].concat())
            } else {
                self.mask_text(arg)
                    .map(|masked| match arg.iter().position(|&b| b == b'=') {
                        // `--flag=value` with a secret after the `=`: all of the value, past
                        // what the pattern took (`--password=p@ss,w0rd`).
                        Some(eq) if arg.starts_with(b"-") && masked.starts_with(&arg[..=eq]) => {
                            [&arg[..=eq], MARKER.as_bytes()].concat()
                        }
                        _ => masked,
                    })
            };
            out.push(masked);
            previous = arg;
        }
        out
    }

    /// A path kept in a record as it was sent (a request refused before it could be
    /// resolved, and the message saying why): read with its well-formed `%XX` escapes
    /// decoded, as a server would read it. `None` when the detectors find nothing;
    /// otherwise that reading with what they found masked.
    pub fn mask_path(&self, path: &str) -> Option<String> {
        let read = crate::request_info::unescape_lenient(path, false);
        self.mask_text(&read)
            .map(|masked| String::from_utf8_lossy(&masked).into_owned())
    }

    /// A query string kept in a record, each value read as the API server reads it
    /// (`%XX` and `+` decoded) and masked by [`Masker::mask_text`], an exec's `command`
    /// values together by [`Masker::mask_command`]; the pairs in which nothing is found
    /// stay as sent. `None` when nothing is found.
    ///
    /// A value is scanned alone, then with its key as `key=value`: `password=hunter2`
    /// and `access_token=...` say what they are only by their key. A key found to hold
    /// something itself (a token sent as `?TOKEN`) is masked with its value.
    ///
    /// A value with a `%` that starts no escape is read with that `%` as it is: the API
    /// server drops such a pair, but the record keeps the query as sent.
    pub fn mask_query(&self, query: &str) -> Option<String> {
        use crate::request_info::query_unescape;
        // A value as the API server reads it; where it would drop it, as written.
        fn scanned(v: &str) -> Cow<'_, [u8]> {
            crate::request_info::unescape_lenient(v, true)
        }
        // Each pair as sent, and whether it is one of the command's arguments.
        let pairs: Vec<(&str, Option<&str>, bool)> = query
            .split('&')
            .map(|pair| {
                let (key, value) = match pair.split_once('=') {
                    Some((k, v)) => (k, Some(v)),
                    None => (pair, None),
                };
                let command = query_unescape(key).is_some_and(|k| &*k == b"command");
                (key, value, command)
            })
            .collect();
        // The command's arguments in order, decoded, masked as one command line.
        let args: Vec<_> = pairs
            .iter()
            .filter(|(_, _, command)| *command)
            .map(|(_, v, _)| v.map(scanned).unwrap_or_default())
            .collect();
        let mut command = self.mask_command(&args).into_iter();
        let mut out = String::with_capacity(query.len());
        let mut found = false;
        for (i, &(key, value, is_command)) in pairs.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            let masked = if is_command {
                command.next().flatten().map(Masked::Value)
            } else {
                self.mask_pair(key, value)
            };
            match masked {
                Some(Masked::Value(masked)) => {
                    found = true;
                    out.push_str(key);
                    out.push('=');
                    out.extend(percent_encoding::percent_encode(&masked, QUERY_VALUE));
                }
                Some(Masked::Pair(masked)) => {
                    found = true;
                    out.extend(percent_encoding::percent_encode(&masked, QUERY_VALUE));
                }
                None => {
                    out.push_str(key);
                    if let Some(value) = value {
                        out.push('=');
                        out.push_str(value);
                    }
                }
            }
        }
        found.then_some(out)
    }

    /// One pair of a query other than an exec's command (see [`Masker::mask_query`]).
    fn mask_pair(&self, key: &str, value: Option<&str>) -> Option<Masked> {
        let read = |v| crate::request_info::unescape_lenient(v, true);
        let value = value.map(read);
        if let Some(masked) = value.as_deref().and_then(|v| self.mask_text(v)) {
            return Some(Masked::Value(masked));
        }
        let key = read(key);
        let mut pair = key.to_vec();
        if let Some(value) = &value {
            pair.push(b'=');
            pair.extend_from_slice(value);
        }
        let masked = self.mask_text(&pair)?;
        // `key=` as read, unchanged: the key says what its value is, so all of the value
        // is masked, not only what a detector's pattern took (a passphrase with spaces,
        // a `;` in a token).
        let kept = value.is_some().then(|| &pair[..=key.len()]);
        Some(match kept.and_then(|kept| masked.strip_prefix(kept)) {
            Some(_) => Masked::Value(MARKER.as_bytes().to_vec()),
            None => Masked::Pair(masked),
        })
    }
}

/// A query pair with something masked: its value (the key kept as sent), or all of it
/// (written as one key, `=` encoded).
enum Masked {
    Value(Vec<u8>),
    Pair(Vec<u8>),
}

/// Clients whose `-p` carries the password in the same argument (`-pS3cret`).
const MYSQL_CLIENTS: [&[u8]; 9] = [
    b"mysql",
    b"mysqldump",
    b"mysqladmin",
    b"mysqlimport",
    b"mysqlshow",
    b"mysqlcheck",
    b"mariadb",
    b"mariadb-dump",
    b"mariadb-admin",
];

/// A command's program as named without its directory (`/usr/bin/mysql` is `mysql`).
fn program_name(arg: &[u8]) -> &[u8] {
    arg.rsplit(|&b| b == b'/').next().unwrap_or(arg)
}

/// Programs whose flag takes a password as the next argument: curl's `user:password`,
/// openssl's `pass:password` (its `env:` and `file:` forms are masked too).
const PASSWORD_FLAGS: [(&[u8], &[u8]); 10] = [
    (b"redis-cli", b"-a"),
    (b"sshpass", b"-p"),
    (b"curl", b"-u"),
    (b"curl", b"--user"),
    (b"curl", b"-U"),
    (b"curl", b"--proxy-user"),
    (b"openssl", b"-passin"),
    (b"openssl", b"-passout"),
    (b"openssl", b"-pass"),
    (b"openssl", b"-kpass"),
];

/// Flags that take a credential in the same argument (`mysql -pS3cret`, `curl
/// -uadmin:pw`, `--user=admin:pw`): the flag, when `arg` is one with something after it.
fn attached_credential<'a>(program: Option<&[u8]>, arg: &'a [u8]) -> Option<&'a [u8]> {
    const ATTACHED: [(&[u8], &[u8]); 4] = [
        (b"curl", b"--user="),
        (b"curl", b"--proxy-user="),
        (b"curl", b"-u"),
        (b"curl", b"-U"),
    ];
    let program = program?;
    let mysql = MYSQL_CLIENTS.contains(&program).then_some(&b"-p"[..]);
    let curl = ATTACHED
        .iter()
        .filter(|(p, _)| *p == program)
        .map(|(_, flag)| *flag);
    mysql
        .into_iter()
        .chain(curl)
        .find(|flag| arg.len() > flag.len() && arg.starts_with(flag))
        .map(|flag| &arg[..flag.len()])
}

/// Whether the argument after `flag` is a credential: long flags that take one given
/// apart, and a few programs' short ones ([`PASSWORD_FLAGS`]).
fn takes_credential(program: Option<&[u8]>, flag: &[u8]) -> bool {
    const FLAGS: [&[u8]; 12] = [
        b"--password",
        b"--passwd",
        b"--pass",
        b"-password",
        b"--token",
        b"--secret",
        b"--api-key",
        b"--apikey",
        b"--access-key",
        b"--secret-key",
        b"--client-secret",
        b"--auth-token",
    ];
    FLAGS.iter().any(|f| flag.eq_ignore_ascii_case(f))
        || PASSWORD_FLAGS
            .iter()
            .any(|(p, f)| program == Some(*p) && flag == *f)
}

/// What a masked query value escapes: all but the unreserved characters.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Masks, in an object kept for a record of a request to `target`, the credentials it
/// hands on: a `TokenRequest`'s `status.token` and a `TokenReview`'s `spec.token`,
/// known by the object's `kind` or by the resource (the API server fills in a `kind`
/// a client leaves out). Returns how many.
pub fn credentials(target: &Target<'_>, value: &mut Value) -> u64 {
    let kind = value.get("kind").and_then(Value::as_str);
    let path = match (kind, target.resource, target.subresource) {
        (Some("TokenRequest"), ..) | (_, "serviceaccounts", "token") => "status",
        (Some("TokenReview"), ..) | (_, "tokenreviews", _) => "spec",
        _ => return 0,
    };
    match value.get_mut(path).and_then(|v| v.get_mut("token")) {
        Some(token @ Value::String(_)) => {
            *token = Value::String(MARKER.to_owned());
            1
        }
        _ => 0,
    }
}

/// A JSON patch's operations' values masked as the `rules` (those that apply to the
/// patched object) mask the object: what lands in or over a masked field, by the
/// operation's path read as the API server's patch library reads it (split at `/`, the
/// first piece dropped whatever it holds), and any string a rule's detectors or
/// patterns find something in. The rest is kept, so that a reviewer sees what the patch
/// does: the image it sets, the command, the replicas.
fn json_patch(rules: &[&Compiled], json: &[u8]) -> Result<(Vec<u8>, u64, u64), Error> {
    let mut ops: Value = serde_json::from_slice(json).map_err(|_| Error::InvalidJson {
        offset: 0,
        reason: "not a valid JSON patch",
    })?;
    let (mut n, mut detected) = (0, 0);
    if let Value::Array(ops) = &mut ops {
        for op in ops {
            let tokens: Vec<String> = op
                .get("path")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .split('/')
                .skip(1)
                .map(|t| t.replace("~1", "/").replace("~0", "~"))
                .collect();
            let Some(value) = op.get_mut("value") else {
                continue;
            };
            for rule in rules {
                for path in &rule.fields {
                    n += path.mask_patch_value(&tokens, value);
                }
            }
            let found = scan_leaves(rules, value);
            n += found;
            detected += found;
        }
    }
    let out = serde_json::to_vec(&ops).map_err(|_| Error::InvalidJson {
        offset: 0,
        reason: "not a valid JSON patch",
    })?;
    Ok((out, n, detected))
}

/// Every string in `value` a scanner of `rules` finds something in becomes the marker.
fn scan_leaves(rules: &[&Compiled], value: &mut Value) -> u64 {
    match value {
        Value::Object(map) => map.values_mut().map(|v| scan_leaves(rules, v)).sum(),
        Value::Array(items) => items.iter_mut().map(|v| scan_leaves(rules, v)).sum(),
        Value::String(s) if s != MARKER => {
            // A scanner that did not compile finds everything: masked, not passed.
            let hit = rules
                .iter()
                .filter_map(|r| r.scanner.as_ref())
                .any(|sc| sc.get().is_none_or(|sc| sc.is_match(s.as_bytes())));
            if hit {
                *s = MARKER.to_owned();
            }
            u64::from(hit)
        }
        _ => 0,
    }
}

/// As [`Masker::mask_text`]: the built-in detectors are every policy's.
pub fn mask_text(text: &[u8]) -> Option<Vec<u8>> {
    let Some(scanner) = super::builtin_scanner() else {
        return (!text.is_empty()).then(|| MARKER.as_bytes().to_vec());
    };
    if !scanner.is_match(text) {
        return None;
    }
    let mut ranges = Vec::new();
    if scanner.find(text, &mut ranges) {
        let from = ranges.iter().map(|r| r.start).min().unwrap_or(0);
        ranges.push(from..text.len());
    }
    let n = super::logs::merge(&mut ranges);
    let mut out = Vec::with_capacity(text.len());
    let mut last = 0;
    for r in &ranges[..n] {
        out.extend_from_slice(&text[last..r.start]);
        out.extend_from_slice(MARKER.as_bytes());
        last = r.end;
    }
    out.extend_from_slice(&text[last..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::mask::Rule;

    fn target<'a>(resource: &'a str, name: &'a str) -> Target<'a> {
        Target {
            resource,
            namespace: "default",
            name,
            ..Target::default()
        }
    }

    fn masked(masker: &Masker, target: &Target<'_>, body: Value) -> (Value, u64) {
        masker
            .mask_sent(target, body.to_string().as_bytes())
            .unwrap()
    }

    #[test]
    fn a_secret_sent_is_kept_masked_whatever_the_form() {
        let masker = Masker::builtin();
        let created = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "db", "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "{\"data\":{\"p\":\"czNjcjN0\"}}"}},
            "data": {"p": "czNjcjN0"},
            "stringData": {"q": "s3cr3t"}
        });
        let (kept, n) = masked(&masker, &target("secrets", ""), created);
        let text = kept.to_string();
        assert!(
            !text.contains("czNjcjN0") && !text.contains("s3cr3t"),
            "{text}"
        );
        assert_eq!(kept["metadata"]["name"], "db");
        assert_eq!(n, 3);
        // A merge patch has no kind: the requested resource decides.
        let (kept, _) = masked(
            &masker,
            &target("secrets", "db"),
            json!({"data": {"p": "czNjcjN0"}}),
        );
        assert!(!kept.to_string().contains("czNjcjN0"));
        // A JSON patch's values, keys kept so the reviewer sees what changes.
        let (kept, n) = masked(
            &masker,
            &target("secrets", "db"),
            json!([
                {"op": "replace", "path": "/data/p", "value": "czNjcjN0"},
                {"op": "add", "path": "/stringData", "value": {"q": "s3cr3t"}},
                {"op": "remove", "path": "/data/old"}
            ]),
        );
        assert_eq!(
            kept,
            json!([
                {"op": "replace", "path": "/data/p", "value": MARKER},
                {"op": "add", "path": "/stringData", "value": {"q": MARKER}},
                {"op": "remove", "path": "/data/old"}
            ])
        );
        assert_eq!(n, 2);
    }

    #[test]
    fn the_policy_rules_mask_what_is_sent_as_what_is_read() {
        let masker = Masker::compile(&[Rule {
            resources: vec!["configmaps".into()],
            fields: vec!["data.*".into()],
            key_regex: Some("(?i)password".into()),
            ..Rule::default()
        }])
        .unwrap();
        let (kept, n) = masked(
            &masker,
            &target("configmaps", ""),
            json!({"kind": "ConfigMap", "metadata": {"name": "app"},
                   "data": {"db_password": "hunter2", "mode": "fast"}}),
        );
        assert_eq!(kept["data"]["db_password"], MARKER);
        assert_eq!(kept["data"]["mode"], "fast");
        assert_eq!(n, 1);
        // A JSON patch to a covered resource: values masked.
        let (kept, _) = masked(
            &masker,
            &target("configmaps", "app"),
            json!([{"op": "add", "path": "/data/db_password", "value": "hunter2"}]),
        );
        assert_eq!(kept[0]["value"], MARKER);
        // Nothing covers pods: sent as it is kept.
        let pod = json!({"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []}});
        assert_eq!(masked(&masker, &target("pods", ""), pod.clone()), (pod, 0));
        let patch = json!([{"op": "replace", "path": "/spec/replicas", "value": 3}]);
        assert_eq!(
            masked(&masker, &target("deployments", "web"), patch.clone()),
            (patch, 0)
        );
    }

    /// A JSON patch of an object a rule covers keeps what the patch does in view (the
    /// image, the command, the replicas) and masks what lands in or over a masked field,
    /// by the operation's path, and what the rule's detectors find.
    #[test]
    fn a_json_patch_is_masked_where_it_touches_a_masked_field_only() {
        let masker = Masker::compile(&[Rule {
            resources: vec!["deployments".into()],
            fields: vec!["spec.template.spec.containers[*].env[*].value".into()],
            detectors: vec!["jwt".into()],
            ..Rule::default()
        }])
        .unwrap();
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ";
        let (kept, n) = masked(
            &masker,
            &target("deployments", "web"),
            json!([
                {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "evil:latest"},
                {"op": "replace", "path": "/spec/replicas", "value": 30},
                // Inside a masked field, and over one.
                {"op": "replace", "path": "/spec/template/spec/containers/0/env/1/value", "value": "hunter2"},
                {"op": "add", "path": "/spec/template/spec/containers/-", "value":
                    {"name": "side", "image": "tool:1", "command": ["sh", "-c", "run"],
                     "env": [{"name": "DB", "value": "s3cret"}]}},
                // The whole object: every masked field in it.
                {"op": "replace", "path": "", "value": {"spec": {"template": {"spec": {
                    "containers": [{"image": "x:1", "env": [{"name": "K", "value": "v"}]}]}}}}},
                // Somewhere no field path reaches, a detector's finding.
                {"op": "add", "path": "/metadata/annotations/token", "value": jwt},
                // A pointer's first piece is dropped whatever it holds.
                {"op": "replace", "path": "x/spec/template/spec/containers/0/env/0/value", "value": "pw"}
            ]),
        );
        let v = |i: usize| kept[i]["value"].clone();
        assert_eq!(v(0), "evil:latest");
        assert_eq!(v(1), 30);
        assert_eq!(v(2), MARKER);
        assert_eq!(v(3)["image"], "tool:1");
        assert_eq!(v(3)["command"], json!(["sh", "-c", "run"]));
        assert_eq!(v(3)["env"][0], json!({"name": "DB", "value": MARKER}));
        let whole = &v(4)["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(whole["image"], "x:1");
        assert_eq!(whole["env"][0], json!({"name": "K", "value": MARKER}));
        assert_eq!(v(5), MARKER);
        assert_eq!(v(6), MARKER);
        assert_eq!(n, 5);
        // A Secret's: every value that lands in `data` or `stringData`, or over them.
        let (kept, _) = masked(
            &Masker::builtin(),
            &target("secrets", "db"),
            json!([
                {"op": "add", "path": "", "value": {"kind": "Secret", "data": {"k": "czNj"}, "type": "Opaque"}},
                {"op": "replace", "path": "/type", "value": "Opaque"}
            ]),
        );
        assert_eq!(kept[0]["value"]["data"]["k"], MARKER);
        assert_eq!(kept[0]["value"]["type"], "Opaque");
        assert_eq!(kept[1]["value"], "Opaque");
    }

    #[test]
    fn tokens_handed_on_are_never_kept() {
        let masker = Masker::builtin();
        let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": "eyJhbGciOi.eyJzdWIiOi.c2ln", "audiences": ["api"]}});
        let (kept, n) = masked(&masker, &target("tokenreviews", ""), review);
        assert_eq!(kept["spec"]["token"], MARKER);
        assert_eq!(kept["spec"]["audiences"][0], "api");
        assert_eq!(n, 1);
        // Without `kind` (the API server takes it from the path): by the resource.
        let bare = json!({"spec": {"token": "eyJhbGciOi.eyJzdWIiOi.c2ln"}});
        let (kept, _) = masked(&masker, &target("tokenreviews", ""), bare.clone());
        assert_eq!(kept["spec"]["token"], MARKER);
        let mut answer = json!({"status": {"token": "eyJhbGciOi.eyJzdWIiOi.c2ln"}});
        let token_request = Target {
            subresource: "token",
            ..target("serviceaccounts", "default")
        };
        assert_eq!(credentials(&token_request, &mut answer), 1);
        assert_eq!(answer["status"]["token"], MARKER);
        // The answer to `kubectl create token`, as a response capture keeps it.
        let mut answer = json!({"kind": "TokenRequest", "spec": {"audiences": ["api"]},
            "status": {"token": "eyJhbGciOi.eyJzdWIiOi.c2ln", "expirationTimestamp": "2026-11-26T10:00:00Z"}});
        assert_eq!(credentials(&Target::default(), &mut answer), 1);
        assert_eq!(answer["status"]["token"], MARKER);
        assert_eq!(
            answer["status"]["expirationTimestamp"],
            "2026-11-26T10:00:00Z"
        );
        let mut other = json!({"kind": "ConfigMap", "status": {"token": "not a credential here"}});
        assert_eq!(credentials(&target("configmaps", "c"), &mut other), 0);
        // Under a rule whose detectors would find the token, it is still a field of its
        // own, masked as one: not a detector's finding, which would keep a TokenReview
        // from being held for review.
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ";
        let masker = Masker::compile(&[Rule {
            resources: vec!["*".into()],
            detectors: vec!["jwt".into()],
            ..Rule::default()
        }])
        .unwrap();
        let review = json!({"kind": "TokenReview", "spec": {"token": jwt}});
        let sent = masker
            .mask_sent_counted(&target("tokenreviews", ""), review.to_string().as_bytes())
            .unwrap();
        assert_eq!(sent.value["spec"]["token"], MARKER);
        assert_eq!((sent.masked, sent.detected), (1, 0));
    }

    #[test]
    fn free_text_and_query_values_lose_what_the_detectors_find() {
        let masker = Masker::builtin();
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ";
        let command = format!("curl -H 'Authorization: Bearer {jwt}' https://internal/api");
        let masked = String::from_utf8(masker.mask_text(command.as_bytes()).unwrap()).unwrap();
        assert!(!masked.contains(jwt), "{masked}");
        assert!(
            masked.starts_with("curl -H") && masked.ends_with("https://internal/api"),
            "{masked}"
        );
        assert_eq!(masker.mask_text(b"ls -l /etc"), None);
        // A PEM block cut short is masked to the end.
        let pem = b"echo -----BEGIN RSA PRIVATE KEY----- MIIEow";
        let masked = masker.mask_text(pem).unwrap();
        assert!(!masked.windows(6).any(|w| w == b"MIIEow"), "{masked:?}");
        // An exec's query: each command value decoded, masked, encoded; others as sent.
        let query = format!(
            "command=sh&command=-c&command=psql+%22password%3Dhunter2%22&command={jwt}&stdout=true&container=main"
        );
        let masked = masker.mask_query(&query).unwrap();
        assert!(
            masked.starts_with("command=sh&command=-c&command=psql"),
            "{masked}"
        );
        assert!(masked.ends_with("&stdout=true&container=main"), "{masked}");
        assert!(
            !masked.contains("hunter2") && !masked.contains(jwt),
            "{masked}"
        );
        let read: Vec<String> = crate::policy::command_args(&masked)
            .map(|c| String::from_utf8_lossy(&c).into_owned())
            .collect();
        assert_eq!(read[3], MARKER, "{read:?}");
        assert_eq!(masker.mask_query("command=ls&command=-l&stdout=true"), None);
    }

    #[test]
    fn a_command_loses_the_credentials_its_arguments_carry() {
        let masker = Masker::builtin();
        let shown = |args: &[&str]| -> Vec<String> {
            args.iter()
                .zip(masker.mask_command(args))
                .map(|(a, m)| m.map_or_else(|| a.to_string(), |m| String::from_utf8(m).unwrap()))
                .collect()
        };
        let m = MARKER;
        let cases: [(&[&str], &[&str]); 15] = [
            // A MySQL client's password joined to its flag; `-P` is the port.
            (
                &[
                    "mysql", "-h", "db", "-P", "3306", "-uroot", "-pS3cret", "app",
                ],
                &[
                    "mysql",
                    "-h",
                    "db",
                    "-P",
                    "3306",
                    "-uroot",
                    &format!("-p{m}"),
                    "app",
                ],
            ),
            (
                &["/usr/bin/mysqldump", "-pS3cret"],
                &["/usr/bin/mysqldump", &format!("-p{m}")],
            ),
            // `-p` alone asks for the password; other programs' `-p` is theirs.
            (&["mysql", "-p", "app"], &["mysql", "-p", "app"]),
            (&["mkdir", "-p", "/tmp/x"], &["mkdir", "-p", "/tmp/x"]),
            (&["ssh", "-p2222", "host"], &["ssh", "-p2222", "host"]),
            // A credential flag's value given apart, whatever the program.
            (
                &["mongosh", "--username", "app", "--password", "S3cret"],
                &["mongosh", "--username", "app", "--password", m],
            ),
            (
                &["kubectl", "--token", "abc123", "get", "pods"],
                &["kubectl", "--token", m, "get", "pods"],
            ),
            (
                &["redis-cli", "-h", "cache", "-a", "S3cret", "ping"],
                &["redis-cli", "-h", "cache", "-a", m, "ping"],
            ),
            (
                &["sshpass", "-p", "S3cret", "ssh", "host"],
                &["sshpass", "-p", m, "ssh", "host"],
            ),
            // `-a` is redis-cli's password only; `--password=` is the detectors'.
            (&["ls", "-a", "/etc"], &["ls", "-a", "/etc"]),
            // curl's `user:password`, apart or attached; openssl's `pass:` argument.
            (
                &["curl", "-u", "admin:hunter2", "https://x"],
                &["curl", "-u", m, "https://x"],
            ),
            (
                &["/usr/bin/curl", "--user=admin:hunter2", "https://x"],
                &["/usr/bin/curl", &format!("--user={m}"), "https://x"],
            ),
            (
                &["curl", "-uadmin:hunter2", "https://x"],
                &["curl", &format!("-u{m}"), "https://x"],
            ),
            (
                &["openssl", "rsa", "-in", "k.pem", "-passin", "pass:S3cret"],
                &["openssl", "rsa", "-in", "k.pem", "-passin", m],
            ),
            // Other programs' `-u` is theirs.
            (&["sort", "-u", "f"], &["sort", "-u", "f"]),
        ];
        for (args, want) in cases {
            assert_eq!(shown(args), want.to_vec(), "{args:?}");
        }
        let joined = shown(&["mysql", "--password=S3cret"]);
        assert!(!joined[1].contains("S3cret"), "{joined:?}");
        let joined = shown(&["app", "--password=p@ss,w0rd"]);
        assert_eq!(joined[1], "--password=chaperone:masked");
        // In a query: the command's values masked together, the rest as sent.
        let masked = masker
            .mask_query("command=mysql&command=-uroot&command=-pS3cret&stdin=true&command=app")
            .unwrap();
        assert_eq!(
            masked,
            "command=mysql&command=-uroot&command=-pchaperone%3Amasked&stdin=true&command=app"
        );
        assert_eq!(
            masker.mask_query("command=mysql&command=-p&command=app"),
            None
        );
    }

    #[test]
    fn a_query_pair_is_read_with_its_key() {
        let masker = Masker::builtin();
        let m = "chaperone%3Amasked";
        let cases = [
            (
                "user=admin&password=hunter2".to_owned(),
                format!("user=admin&password={m}"),
            ),
            (
                "access_token=ya29.opaque123&limit=5".into(),
                format!("access_token={m}&limit=5"),
            ),
            ("api-key=0a1b2c3d".into(), format!("api-key={m}")),
            // Read as the API server reads it.
            ("pass%77ord=hunter2".into(), format!("pass%77ord={m}")),
            // All of a value its key names a secret, past what the pattern takes.
            (
                "x=1&client_secret=a+b".into(),
                format!("x=1&client_secret={m}"),
            ),
            (
                "password=correct+horse+battery+staple&watch=1".into(),
                format!("password={m}&watch=1"),
            ),
            ("token=abc;def".into(), format!("token={m}")),
        ];
        for (query, want) in cases {
            assert_eq!(
                masker.mask_query(&query).as_deref(),
                Some(&*want),
                "{query}"
            );
        }
        // A key that is a credential itself goes with its value.
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNpZ25hdHVyZQ";
        for query in [jwt.to_owned(), format!("{jwt}=1"), format!("a=1&{jwt}")] {
            let masked = masker.mask_query(&query).unwrap();
            assert!(!masked.contains("eyJ") && masked.contains(m), "{masked}");
        }
        // Nothing to find: as sent.
        for query in [
            "limit=500&continue=abc",
            "labelSelector=app%3Dweb",
            "tokens=3",
            "watch",
        ] {
            assert_eq!(masker.mask_query(query), None, "{query}");
        }
    }

    #[test]
    fn a_query_value_the_api_server_would_drop_is_still_masked() {
        let masker = Masker::builtin();
        // A `%` that starts no escape: the API server drops the pair, the record keeps it.
        let cases = [
            (
                "command=mysql&command=--password&command=hunter2%zz&stdout=true",
                "command=mysql&command=--password&command=chaperone%3Amasked&stdout=true",
            ),
            (
                "container=main&x=AKIAIOSFODNN7EXAMPLE%",
                "container=main&x=chaperone%3Amasked%25",
            ),
            ("x=%4%AKIA%49OSFODNN7EXAMPLE", "x=%254%25chaperone%3Amasked"),
        ];
        for (query, want) in cases {
            assert_eq!(masker.mask_query(query).as_deref(), Some(want), "{query}");
        }
        assert_eq!(masker.mask_query("command=ls&x=100%"), None);
    }

    #[test]
    fn a_recorded_path_is_read_as_a_server_would_read_it() {
        let masker = Masker::builtin();
        let cases = [
            (
                "/api/v1/namespaces/d/services/s/proxy/AKIAIOSFODNN7EXAMPLE%2Fx%zz",
                Some("/api/v1/namespaces/d/services/s/proxy/chaperone:masked/x%zz"),
            ),
            (
                "/api/v1/namespaces/d/pods/AKIA%49OSFODNN7EXAMPLE%2F",
                Some("/api/v1/namespaces/d/pods/chaperone:masked/"),
            ),
            // `+` is a plus in a path.
            ("/api/v1/namespaces/d/pods/a+b%2F", None),
        ];
        for (path, want) in cases {
            assert_eq!(masker.mask_path(path).as_deref(), want, "{path}");
        }
    }

    #[test]
    fn a_body_that_is_not_json_is_not_kept() {
        let masker = Masker::builtin();
        assert!(masker
            .mask_sent(&target("secrets", ""), b"{\"data\": {\"p\": ")
            .is_err());
        assert!(masker
            .mask_sent(&target("secrets", "db"), b"[{\"op\": ")
            .is_err());
    }
}
