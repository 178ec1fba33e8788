//! The small matchers a compiled rule is made of: verb sets, namespaces, names, non-resource
//! URLs and exec argv patterns. None of them allocates while matching.

use std::borrow::Cow;

use super::model::{self, Verb, CLUSTER};

/// A set of verbs as bits; bit `i` is `Verb::ALL[i]`, and `OTHER` stands for any verb string a
/// rule cannot name (e.g. `""`, the verb of a resource request with an unusual method), which
/// only `*` matches, as in RBAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VerbSet(pub u32);

impl VerbSet {
    pub const OTHER: u32 = 1 << Verb::ALL.len();

    pub fn of(verbs: &[Verb]) -> VerbSet {
        verbs
            .iter()
            .fold(VerbSet(0), |set, &v| VerbSet(set.0 | bit(v)))
    }

    /// The bit of a request's verb string.
    pub fn request_bit(verb: &str) -> u32 {
        Verb::parse(verb).map_or(Self::OTHER, bit)
    }

    pub fn contains(self, verb: Verb) -> bool {
        self.0 & bit(verb) == bit(verb)
    }

    pub fn is_all(self) -> bool {
        self.0 == u32::MAX
    }

    pub fn covers(self, other: VerbSet) -> bool {
        self.0 & other.0 == other.0
    }
}

fn bit(verb: Verb) -> u32 {
    match Verb::ALL.iter().position(|&v| v == verb) {
        Some(i) => 1 << i,
        None => u32::MAX,
    }
}

/// The namespaces a rule applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespaces {
    /// No `namespaces`, or `*` among them.
    pub any: bool,
    /// `<cluster>` among them: requests whose namespace is `""`.
    pub cluster: bool,
    pub exact: Box<[Box<str>]>,
    pub globs: Box<[Box<str>]>,
}

impl Namespaces {
    pub fn new(patterns: Option<&[model::NamespacePattern]>) -> Namespaces {
        let Some(patterns) = patterns else {
            return Namespaces {
                any: true,
                ..Namespaces::default()
            };
        };
        let mut ns = Namespaces::default();
        let (mut exact, mut globs) = (Vec::new(), Vec::new());
        for p in patterns.iter().map(|p| p.0.as_str()) {
            match p {
                "*" => ns.any = true,
                CLUSTER => ns.cluster = true,
                _ if p.contains('*') => globs.push(p.into()),
                _ => exact.push(p.into()),
            }
        }
        ns.exact = exact.into();
        ns.globs = globs.into();
        ns
    }

    pub fn matches(&self, namespace: &str) -> bool {
        if self.any {
            return true;
        }
        if namespace.is_empty() {
            return self.cluster;
        }
        self.exact.iter().any(|e| &**e == namespace)
            || self
                .globs
                .iter()
                .any(|g| glob(g.as_bytes(), namespace.as_bytes(), false))
    }
}

/// `*` matches any run of bytes (but not `/` when `no_slash`); everything else is literal.
pub fn glob(pattern: &[u8], text: &[u8], no_slash: bool) -> bool {
    // Iterative matching with one backtrack point: linear in practice, no recursion.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            if no_slash && text[st] == b'/' {
                return false;
            }
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// RBAC `NonResourceURLMatches`: `*`, exact, or a prefix before a trailing `*`.
pub fn url_matches(pattern: &str, path: &str) -> bool {
    pattern == "*"
        || pattern == path
        || pattern
            .strip_suffix('*')
            .is_some_and(|prefix| path.starts_with(prefix.trim_end_matches('*')))
}

/// One compiled argument of an exec argv pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// `*`: any one argument.
    Any,
    /// `**`: any remaining arguments, none included.
    Rest,
    Literal(Box<str>),
    /// Contains `*`, which does not match `/`, and the argument must have no `..` segment.
    Glob(Box<str>),
}

impl Arg {
    pub fn new(s: &str) -> Arg {
        match s {
            "*" => Arg::Any,
            "**" => Arg::Rest,
            _ if s.contains('*') => Arg::Glob(s.into()),
            _ => Arg::Literal(s.into()),
        }
    }

    fn matches(&self, arg: &[u8]) -> bool {
        match self {
            Arg::Any | Arg::Rest => true,
            Arg::Literal(l) => l.as_bytes() == arg,
            Arg::Glob(g) => {
                // `/etc/*` must not reach `/etc/../var/run/secrets/...`.
                let dotdot = arg.split(|&b| b == b'/').any(|seg| seg == b"..");
                !dotdot && glob(g.as_bytes(), arg, true)
            }
        }
    }
}

/// Whether the `command` query parameters, in order, match the argv pattern.
pub fn argv_matches(pattern: &[Arg], query: Option<&str>) -> bool {
    let mut args = command_args(query.unwrap_or(""));
    for (i, p) in pattern.iter().enumerate() {
        if *p == Arg::Rest && i + 1 == pattern.len() {
            return true;
        }
        match args.next() {
            Some(arg) if p.matches(&arg) => {}
            _ => return false,
        }
    }
    args.next().is_none()
}

/// The `command` values of a query as the API server reads them (Go's `url.ParseQuery`):
/// `&`-separated pairs, `+` is a space, and pairs containing `;` or a bad escape are dropped.
pub fn command_args(query: &str) -> impl Iterator<Item = Cow<'_, [u8]>> {
    crate::request_info::go_query_pairs(query)
        .filter(|(key, _)| &**key == b"command")
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let cases = [
            ("team-*", "team-a", false, true),
            ("team-*", "team-", false, true),
            ("team-*", "team", false, false),
            ("*-prod", "a-prod", false, true),
            ("a*b*c", "axxbyyc", false, true),
            ("a*b*c", "axxbyy", false, false),
            ("/etc/*", "/etc/os-release", true, true),
            ("/etc/*", "/etc/a/b", true, false),
            ("/etc/*", "/etc/a/b", false, true),
            ("*", "", false, true),
        ];
        for (p, t, no_slash, want) in cases {
            assert_eq!(glob(p.as_bytes(), t.as_bytes(), no_slash), want, "{p} {t}");
        }
    }

    #[test]
    fn argv() {
        let p = |v: &[&str]| v.iter().map(|s| Arg::new(s)).collect::<Vec<_>>();
        let cases: &[(&[&str], &str, bool)] = &[
            (&["ps"], "command=ps", true),
            (&["ps"], "command=ps&command=aux", false),
            (&["ps", "*"], "command=ps&command=aux", true),
            (&["ps", "*"], "command=ps", false),
            (&["ps", "**"], "command=ps", true),
            (
                &["ps", "**"],
                "container=c&command=ps&stdout=1&command=a&command=b",
                true,
            ),
            (
                &["cat", "/etc/os-release"],
                "command=cat&command=%2Fetc%2Fos-release",
                true,
            ),
            (
                &["cat", "/etc/*"],
                "command=cat&command=%2Fetc%2Fhostname",
                true,
            ),
            (
                &["cat", "/etc/*"],
                "command=cat&command=/etc/../var/run/x",
                false,
            ),
            (&["cat", "/etc/*"], "command=cat&command=/etc/..", false),
            (&["ls", "**"], "command=sh", false),
            (&["ls"], "", false),
            // Go drops pairs with ';' or bad escapes, and so does the API server.
            (&["ps"], "command=ps&command=a;b", true),
            (&["ps"], "command=ps&command=%zz", true),
            (&["echo", "a b"], "command=echo&command=a+b", true),
        ];
        for (pattern, query, want) in cases {
            assert_eq!(
                argv_matches(&p(pattern), Some(query)),
                *want,
                "{pattern:?} {query}"
            );
        }
    }

    #[test]
    fn urls() {
        assert!(url_matches("/apis/*", "/apis/v1"));
        assert!(!url_matches("/apis/*", "/apis"));
        assert!(url_matches("*", "/anything"));
        assert!(url_matches("/healthz", "/healthz"));
        assert!(!url_matches("/healthz", "/healthz/ping"));
    }
}
