//! Rules compiled for matching: field paths, globs, regexes and scanners.
//!
//! # Field paths
//!
//! A path is a dot-separated list of segments, relative to the object:
//!
//! * `name` — the member `name` of an object (any byte but `.`, `[`, `]`, `"`, `'`);
//! * `*` — every member of an object (a map such as `data` or `metadata.annotations`);
//! * `[*]` — every element of an array; `[3]` — the element at that index;
//! * `["a.b/c"]` or `['a.b/c']` — a member whose name holds dots (annotation keys).
//!
//! Example: `spec.containers[*].env[*].value`, `metadata.annotations["example.com/token"]`.
//! A path that reaches an object or array masks every string value inside it (so the shape
//! stays valid); numbers, booleans and nulls are never changed.
//!
//! `key_regex` narrows the *last* `*` of a path to the keys it matches; `name_regex` narrows
//! the *last* `[*]` to elements whose `name` member matches — an element without a string
//! `name` is masked (fail closed).

use std::sync::{Arc, OnceLock};

use regex::bytes::Regex;

use super::detect::{self, ScanError, Scanner, DETECTORS};
use super::scan::{self, Kind, Tok};
use super::{Error, Rule};

/// The annotation in which `kubectl apply` keeps the whole manifest in clear.
pub(crate) const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// Longest path accepted, in segments (paths come from configuration, not from input).
const MAX_SEGMENTS: usize = 64;

/// What a masked string value becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Repl {
    /// `"chaperone:masked"`, for what a detector or pattern found (weakest: a field a
    /// rule names keeps its own replacement).
    Detected,
    /// `"chaperone:masked"`.
    Marker,
    /// `base64("chaperone:masked")`: a Secret's `data` values, which typed clients decode.
    Base64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(Vec<u8>),
    AnyKey,
    Index(usize),
    AnyIndex,
}

#[derive(Debug)]
pub(crate) struct Path {
    pub segs: Vec<Seg>,
    pub repl: Repl,
    /// Index in `segs` of the `*` that `key_regex` narrows, and of the `[*]` that
    /// `name_regex` narrows.
    pub last_any_key: Option<usize>,
    pub last_any_index: Option<usize>,
    /// Keys the last `*` passes over, left as they are (a Secret's annotations that say
    /// nothing of its values).
    pub keep: &'static [&'static str],
}

/// A Secret's annotations that name what it belongs to and hold none of its values:
/// left readable. Every other annotation of a Secret is masked: tools copy a Secret's
/// `data` into their own (kapp's `kapp.k14s.io/original`, as kubectl's last-applied
/// annotation does), and `kubectl ... --record` its command line into
/// `kubernetes.io/change-cause`.
const SECRET_ANNOTATIONS_KEPT: [&str; 12] = [
    "kubernetes.io/service-account.name",
    "kubernetes.io/service-account.uid",
    "meta.helm.sh/release-name",
    "meta.helm.sh/release-namespace",
    "cert-manager.io/certificate-name",
    "cert-manager.io/issuer-name",
    "cert-manager.io/issuer-kind",
    "cert-manager.io/issuer-group",
    "cert-manager.io/common-name",
    "cert-manager.io/alt-names",
    "cert-manager.io/ip-sans",
    "cert-manager.io/uri-sans",
];

/// One rule, ready to match.
#[derive(Debug)]
pub(crate) struct Compiled {
    /// Empty means "any" for resources only through `"*"`; see [`Compiled::applies`].
    pub resources: Vec<String>,
    pub namespaces: Vec<String>,
    pub names: Vec<String>,
    pub fields: Vec<Path>,
    pub key_regex: Option<Regex>,
    pub name_regex: Option<Regex>,
    pub scanner: Option<RuleScanner>,
}

/// A rule's detectors and patterns. With patterns of the policy's own, compiled when the
/// policy loads, so that a bad one fails the load; with built-in detectors alone (names
/// checked at load), compiled on first use like the detectors logs are scanned with
/// (`builtin_scanner`), and that very scanner when the rule names all of them.
#[derive(Debug)]
pub(crate) struct RuleScanner {
    detectors: Vec<String>,
    compiled: OnceLock<Option<Arc<Scanner>>>,
}

impl RuleScanner {
    fn compiled(scanner: Scanner) -> RuleScanner {
        RuleScanner {
            detectors: Vec::new(),
            compiled: OnceLock::from(Some(Arc::new(scanner))),
        }
    }

    /// The scanner; `None` if built-in detectors did not compile (their tests rule it
    /// out): callers then mask everything they would have scanned.
    pub(crate) fn get(&self) -> Option<&Arc<Scanner>> {
        self.compiled
            .get_or_init(|| {
                // The names are built-in ones (checked at load): naming each is naming all.
                if DETECTORS
                    .iter()
                    .all(|d| self.detectors.iter().any(|n| n == d))
                {
                    return super::builtin_scanner().cloned();
                }
                super::compiled_or_logged(Scanner::new(&self.detectors, &[]))
            })
            .as_ref()
    }
}

impl Compiled {
    /// The built-in rule for Secrets: `data` values become base64 of the marker (still valid
    /// base64, so typed clients decode the object), `stringData` values and the
    /// annotations (the last-applied one, and all but [`SECRET_ANNOTATIONS_KEPT`]) become
    /// the marker.
    pub(crate) fn secrets() -> Compiled {
        let path = |segs: Vec<Seg>, repl| Path::new(segs, repl);
        Compiled {
            resources: vec!["secrets".into()],
            namespaces: Vec::new(),
            names: Vec::new(),
            fields: vec![
                path(vec![Seg::Key(b"data".to_vec()), Seg::AnyKey], Repl::Base64),
                path(
                    vec![Seg::Key(b"stringData".to_vec()), Seg::AnyKey],
                    Repl::Marker,
                ),
                last_applied(),
                Path {
                    keep: &SECRET_ANNOTATIONS_KEPT,
                    ..path(
                        vec![
                            Seg::Key(b"metadata".to_vec()),
                            Seg::Key(b"annotations".to_vec()),
                            Seg::AnyKey,
                        ],
                        Repl::Marker,
                    )
                },
            ],
            key_regex: None,
            name_regex: None,
            scanner: None,
        }
    }

    /// Compiles rule number `index` of the policy.
    pub(crate) fn new(index: usize, rule: &Rule) -> Result<Compiled, Error> {
        let err = |field: &'static str, reason: String| Error::Rule {
            rule: index,
            field,
            reason,
        };
        if rule.resources.is_empty() {
            return Err(err(
                "resources",
                "at least one resource (or \"*\") is required".into(),
            ));
        }
        if rule.fields.is_empty() && rule.detectors.is_empty() && rule.patterns.is_empty() {
            return Err(err(
                "fields",
                "the rule masks nothing: give fields, detectors or patterns".into(),
            ));
        }
        let mut fields = Vec::new();
        for (i, f) in rule.fields.iter().enumerate() {
            let segs = parse_path(f).map_err(|r| err("fields", format!("[{i}] {f:?}: {r}")))?;
            fields.push(Path::new(segs, Repl::Marker));
        }
        if !fields.is_empty() {
            // The annotation repeats every field of the manifest, masked ones included.
            fields.push(last_applied());
        }
        let regex = |field, src: &Option<String>| {
            src.as_deref()
                .map(|s| Regex::new(s).map_err(|e| err(field, e.to_string())))
                .transpose()
        };
        let unknown = |d: &str| {
            err(
                "detectors",
                format!("unknown detector {d:?}; known: {}", DETECTORS.join(", ")),
            )
        };
        let scanner = if rule.detectors.is_empty() && rule.patterns.is_empty() {
            None
        } else if rule.patterns.is_empty() {
            if let Some(d) = rule.detectors.iter().find(|d| detect::builtin(d).is_none()) {
                return Err(unknown(d));
            }
            Some(RuleScanner {
                detectors: rule.detectors.clone(),
                compiled: OnceLock::new(),
            })
        } else {
            let scanner = Scanner::new(&rule.detectors, &rule.patterns).map_err(|e| match e {
                ScanError::UnknownDetector(d) => unknown(&d),
                ScanError::Pattern(i, e) => err("patterns", format!("[{i}]: {e}")),
            })?;
            Some(RuleScanner::compiled(scanner))
        };
        Ok(Compiled {
            resources: rule.resources.clone(),
            namespaces: rule.namespaces.clone(),
            names: rule.names.clone(),
            fields,
            key_regex: regex("key_regex", &rule.key_regex)?,
            name_regex: regex("name_regex", &rule.name_regex)?,
            scanner,
        })
    }

    /// Whether the rule masks fields by path (not only by detectors or patterns).
    pub(crate) fn has_fields(&self) -> bool {
        !self.fields.is_empty()
    }

    /// Whether the rule names this resource (or `*`).
    pub(crate) fn names_resource(&self, resource: &str) -> bool {
        !resource.is_empty() && self.resources.iter().any(|r| r == "*" || r == resource)
    }

    /// Whether the rule applies to an object of any of `resources` in `namespace` named
    /// `name`. An empty namespace or name (cluster-scoped, or unknown) matches any glob:
    /// when in doubt, mask.
    pub(crate) fn applies(&self, resources: &[&str], namespace: &[u8], name: &[u8]) -> bool {
        resources.iter().any(|r| self.names_resource(r))
            && (namespace.is_empty()
                || self.namespaces.is_empty()
                || self
                    .namespaces
                    .iter()
                    .any(|g| glob(g.as_bytes(), namespace)))
            && (name.is_empty()
                || self.names.is_empty()
                || self.names.iter().any(|g| glob(g.as_bytes(), name)))
    }

    /// Calls `mark(token, repl)` for every string value token the rule's paths select in
    /// the object at `obj`.
    pub(crate) fn select(
        &self,
        src: &[u8],
        tape: &[Tok],
        obj: usize,
        mark: &mut dyn FnMut(usize, Repl),
    ) {
        for path in &self.fields {
            self.walk(src, tape, obj, path, 0, mark);
        }
    }

    fn walk(
        &self,
        src: &[u8],
        tape: &[Tok],
        at: usize,
        path: &Path,
        i: usize,
        mark: &mut dyn FnMut(usize, Repl),
    ) {
        let t = &tape[at];
        let Some(seg) = path.segs.get(i) else {
            match t.kind {
                Kind::Str => mark(at, path.repl),
                Kind::Object | Kind::Array => (at + 1..t.next as usize)
                    .filter(|&j| tape[j].kind == Kind::Str)
                    .for_each(|j| mark(j, path.repl)),
                Kind::Key | Kind::Scalar => {}
            }
            return;
        };
        let mut scratch = Vec::new();
        match (seg, t.kind) {
            // Every copy of a key named twice: the API server applies them all.
            (Seg::Key(k), Kind::Object) => {
                for v in scan::members_named(src, tape, at, k) {
                    self.walk(src, tape, v, path, i + 1, mark);
                }
            }
            (Seg::AnyKey, Kind::Object) => {
                let narrow = self
                    .key_regex
                    .as_ref()
                    .filter(|_| path.last_any_key == Some(i));
                let keep = if path.last_any_key == Some(i) {
                    path.keep
                } else {
                    &[]
                };
                for (k, v) in scan::members(tape, at) {
                    if narrow.is_some() || !keep.is_empty() {
                        let key = scan::content(src, &tape[k], &mut scratch);
                        if narrow.is_some_and(|re| !re.is_match(key))
                            || keep.iter().any(|kept| kept.as_bytes() == key)
                        {
                            continue;
                        }
                    }
                    self.walk(src, tape, v, path, i + 1, mark);
                }
            }
            (Seg::Index(n), Kind::Array) => {
                if let Some(e) = scan::elements(tape, at).nth(*n) {
                    self.walk(src, tape, e, path, i + 1, mark);
                }
            }
            (Seg::AnyIndex, Kind::Array) => {
                let narrow = self
                    .name_regex
                    .as_ref()
                    .filter(|_| path.last_any_index == Some(i));
                for e in scan::elements(tape, at) {
                    if let Some(re) = narrow {
                        let name = (tape[e].kind == Kind::Object)
                            .then(|| scan::last_string(src, tape, e, b"name"))
                            .flatten();
                        if let Some(n) = name {
                            if !re.is_match(scan::content(src, &tape[n], &mut scratch)) {
                                continue;
                            }
                        }
                    }
                    self.walk(src, tape, e, path, i + 1, mark);
                }
            }
            _ => {}
        }
    }
}

impl Path {
    /// Whether the object at the JSON pointer `tokens` (RFC 6901, unescaped) holds or
    /// lies inside a field this path masks: the two agree on every segment they share.
    /// Narrowing regexes are not applied: when in doubt, it overlaps.
    pub(crate) fn overlaps(&self, tokens: &[String]) -> bool {
        self.segs.iter().zip(tokens).all(|(seg, token)| match seg {
            Seg::Key(key) => key.as_slice() == token.as_bytes(),
            Seg::AnyKey | Seg::AnyIndex => true,
            // Go reads an index with `strconv.Atoi` (`01`, `+1`): a token that is not a
            // plain number is taken as this index too.
            Seg::Index(index) => token.parse::<usize>().map_or(true, |n| n == *index),
        })
    }

    /// Whether the API server's own printer columns never show a field this path reaches:
    /// it goes through an env list, a command's arguments, a ConfigMap's or Secret's
    /// values or the annotations, which no built-in Table prints (a count of `data` at
    /// most).
    pub(crate) fn never_printed(&self) -> bool {
        const UNPRINTED: [&[u8]; 8] = [
            b"env",
            b"envFrom",
            b"command",
            b"args",
            b"data",
            b"stringData",
            b"binaryData",
            b"annotations",
        ];
        self.segs
            .iter()
            .any(|s| matches!(s, Seg::Key(k) if UNPRINTED.contains(&k.as_slice())))
    }

    /// Masks, in the `value` a JSON patch operation puts at the pointer `tokens`, what
    /// this path masks in the object: all of it when it lies inside a masked field, the
    /// fields the rest of the path reaches when it holds them, nothing when the two part.
    /// Every string and number reached is masked; narrowing regexes are not applied
    /// (when in doubt, masked). Returns how many values were masked.
    pub(crate) fn mask_patch_value(&self, tokens: &[String], value: &mut serde_json::Value) -> u64 {
        if !self.overlaps(tokens) {
            return 0;
        }
        match self.segs.get(tokens.len()..) {
            Some(rest) => mask_reached(rest, value),
            None => mask_leaves(value),
        }
    }

    fn new(segs: Vec<Seg>, repl: Repl) -> Path {
        Path {
            last_any_key: segs.iter().rposition(|s| *s == Seg::AnyKey),
            last_any_index: segs.iter().rposition(|s| *s == Seg::AnyIndex),
            segs,
            repl,
            keep: &[],
        }
    }
}

/// What `segs` reaches in `value`, masked leaf by leaf.
fn mask_reached(segs: &[Seg], value: &mut serde_json::Value) -> u64 {
    use serde_json::Value;
    let Some((seg, rest)) = segs.split_first() else {
        return mask_leaves(value);
    };
    match (seg, value) {
        (Seg::Key(key), Value::Object(map)) => std::str::from_utf8(key)
            .ok()
            .and_then(|k| map.get_mut(k))
            .map_or(0, |v| mask_reached(rest, v)),
        (Seg::AnyKey, Value::Object(map)) => map.values_mut().map(|v| mask_reached(rest, v)).sum(),
        (Seg::Index(i), Value::Array(items)) => {
            items.get_mut(*i).map_or(0, |v| mask_reached(rest, v))
        }
        (Seg::AnyIndex, Value::Array(items)) => {
            items.iter_mut().map(|v| mask_reached(rest, v)).sum()
        }
        _ => 0,
    }
}

/// Every string and number in `value` becomes the marker, its keys kept; returns how
/// many.
pub(crate) fn mask_leaves(value: &mut serde_json::Value) -> u64 {
    use serde_json::Value;
    match value {
        Value::Object(map) => map.values_mut().map(mask_leaves).sum(),
        Value::Array(items) => items.iter_mut().map(mask_leaves).sum(),
        Value::Null | Value::Bool(_) => 0,
        Value::String(s) if s == super::MARKER => 0,
        _ => {
            *value = Value::String(super::MARKER.to_owned());
            1
        }
    }
}

fn last_applied() -> Path {
    Path::new(
        vec![
            Seg::Key(b"metadata".to_vec()),
            Seg::Key(b"annotations".to_vec()),
            Seg::Key(LAST_APPLIED.as_bytes().to_vec()),
        ],
        Repl::Marker,
    )
}

/// Parses a field path (see the module docs).
pub(crate) fn parse_path(path: &str) -> Result<Vec<Seg>, String> {
    let b = path.as_bytes();
    let mut segs = Vec::new();
    let mut i = 0;
    // Whether a `.` is needed (after a segment) before the next name.
    let mut need_dot = false;
    while i < b.len() {
        match b[i] {
            b'.' if need_dot => {
                i += 1;
                need_dot = false;
                if i == b.len() {
                    return Err("ends with '.'".into());
                }
            }
            b'[' => {
                let close = b[i..]
                    .iter()
                    .position(|&c| c == b']')
                    .ok_or("unclosed '['")?;
                let inner = &path[i + 1..i + close];
                let quoted = inner.len() >= 2
                    && (inner.starts_with('"') && inner.ends_with('"')
                        || inner.starts_with('\'') && inner.ends_with('\''));
                segs.push(if inner == "*" {
                    Seg::AnyIndex
                } else if quoted {
                    Seg::Key(inner.as_bytes()[1..inner.len() - 1].to_vec())
                } else {
                    Seg::Index(inner.parse().map_err(|_| format!("bad index [{inner}]"))?)
                });
                i += close + 1;
                need_dot = true;
            }
            _ if need_dot => return Err(format!("expected '.' or '[' at byte {i}")),
            _ => {
                let end = b[i..]
                    .iter()
                    .position(|c| matches!(c, b'.' | b'[' | b']' | b'"' | b'\''))
                    .map_or(b.len(), |p| i + p);
                if end == i {
                    return Err(format!("empty segment at byte {i}"));
                }
                let name = &path[i..end];
                segs.push(if name == "*" {
                    Seg::AnyKey
                } else {
                    Seg::Key(name.as_bytes().to_vec())
                });
                i = end;
                need_dot = true;
            }
        }
    }
    if segs.is_empty() {
        return Err("empty path".into());
    }
    if segs.len() > MAX_SEGMENTS {
        return Err(format!("more than {MAX_SEGMENTS} segments"));
    }
    Ok(segs)
}

/// `*`-glob match (`*` = any run of bytes, everything else literal).
pub(crate) fn glob(pattern: &[u8], s: &[u8]) -> bool {
    // Classic greedy matching with one backtrack point: linear for a single `*`, and
    // O(len(p) * len(s)) at worst — both are short names.
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, i));
            p += 1;
        } else if p < pattern.len() && pattern[p] == s[i] {
            p += 1;
            i += 1;
        } else if let Some((sp, si)) = star {
            p = sp + 1;
            i = si + 1;
            star = Some((sp, si + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The resource a `kind` is most likely served as: lower case, plural (a port of
/// `meta.UnsafeGuessKindToResource`, with English `-ay/-ey/-oy` plurals).
pub(crate) fn kind_to_resource(kind: &[u8]) -> String {
    let lower = String::from_utf8_lossy(kind).to_ascii_lowercase();
    if lower.is_empty() || lower == "endpoints" {
        return lower;
    }
    if lower.ends_with('s') {
        return lower + "es";
    }
    if let Some(stem) = lower.strip_suffix('y') {
        if !stem.ends_with(['a', 'e', 'o', 'u']) {
            return format!("{stem}ies");
        }
    }
    lower + "s"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse() {
        use Seg::*;
        let k = |s: &str| Key(s.as_bytes().to_vec());
        assert_eq!(parse_path("data.*").unwrap(), [k("data"), AnyKey]);
        assert_eq!(
            parse_path("spec.containers[*].env[0].value").unwrap(),
            [
                k("spec"),
                k("containers"),
                AnyIndex,
                k("env"),
                Index(0),
                k("value")
            ]
        );
        assert_eq!(
            parse_path(r#"metadata.annotations["a.b/c"]"#).unwrap(),
            [k("metadata"), k("annotations"), k("a.b/c")]
        );
        assert_eq!(parse_path("x['y'].z").unwrap(), [k("x"), k("y"), k("z")]);
        for bad in ["", "a.", ".a", "a..b", "a[", "a[x]", "a]b", "a[*]b", "a\"b"] {
            assert!(parse_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn globs() {
        assert!(glob(b"team-*", b"team-a"));
        assert!(glob(b"*", b""));
        assert!(glob(b"a*b*c", b"aXXbYYc"));
        assert!(!glob(b"team-*", b"teams"));
        assert!(!glob(b"abc", b"abcd"));
        assert!(glob(b"*-prod", b"x-prod"));
    }

    #[test]
    fn kinds() {
        assert_eq!(kind_to_resource(b"Secret"), "secrets");
        assert_eq!(kind_to_resource(b"NetworkPolicy"), "networkpolicies");
        assert_eq!(kind_to_resource(b"Ingress"), "ingresses");
        assert_eq!(kind_to_resource(b"Gateway"), "gateways");
        assert_eq!(kind_to_resource(b"Endpoints"), "endpoints");
    }
}
