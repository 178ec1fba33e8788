//! Value detectors: regexes for well-known secret formats, and the user's own patterns.
//!
//! A detector is one or more regexes, each with the capture group that holds the secret
//! itself (group 0 = the whole match): `password=hunter2` masks `hunter2` and keeps
//! `password=` so that a log line stays readable. In JSON, any match masks the whole string
//! value. A user pattern masks its whole match, or only its group named `secret` if it has
//! one.
//!
//! All regexes run on bytes (`regex::bytes`), so log lines need not be UTF-8. Built-ins use
//! ASCII word boundaries `(?-u:\b)`, which the regex crate's DFAs support (Unicode ones
//! are not supported there and would fall back to slower engines).

use std::ops::Range;

use regex::bytes::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

/// Names of the built-in detectors, as rules spell them.
pub const DETECTORS: [&str; 7] = [
    "pem-private-key",
    "jwt",
    "aws-access-key",
    "github-token",
    "slack-token",
    "password-pair",
    "bearer-token",
];

/// The PEM detector's pattern: from `BEGIN` through `END` if on the same haystack, else to
/// the end (a log line; the log masker then masks the following lines up to `END`).
const PEM: &str = r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----(?s:.*?-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|.*)";
/// The line that ends a PEM private key block.
pub(crate) const PEM_END: &str = r"-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----";

/// `(pattern, secret group)` pairs of a built-in detector.
pub(crate) fn builtin(name: &str) -> Option<&'static [(&'static str, usize)]> {
    Some(match name {
        "pem-private-key" => &[(PEM, 0)],
        "jwt" => &[(
            r"(?-u:\b)eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",
            0,
        )],
        "aws-access-key" => &[
            (
                r"(?-u:\b)(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA)[A-Z0-9]{16}(?-u:\b)",
                0,
            ),
            (
                r#"(?i)aws_?secret_?access_?key["']?\s*[:=]\s*["']?([A-Za-z0-9/+=]{40})"#,
                1,
            ),
        ],
        "github-token" => &[
            (
                r"(?-u:\b)(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,255}(?-u:\b)",
                0,
            ),
            (r"(?-u:\b)github_pat_[A-Za-z0-9_]{22,255}", 0),
        ],
        "slack-token" => &[
            (r"(?-u:\b)xox[abposre]-[A-Za-z0-9-]{10,}", 0),
            (r"https://hooks\.slack\.com/services/[A-Za-z0-9/_-]+", 0),
        ],
        "password-pair" => &[
            (
                r#"(?i)(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|client[_-]?secret|credentials?)["']?\s*[:=]\s*["']?([^\s"',;&]+)"#,
                1,
            ),
            // Credentials in a URL: scheme://user:password@host (`redis://:password@host`
            // has no user).
            (r"(?i)[a-z][a-z0-9+.-]*://[^/\s:@]*:([^/\s@]+)@", 1),
            // A MySQL client's `-pS3cret` and redis-cli's `-a S3cret` in a command line
            // (`sh -c "..."`, a log line): found after the program's name.
            (
                r#"(?:^|[\s;&|('"/])(?:mysql|mysqldump|mysqladmin|mysqlimport|mysqlshow|mysqlcheck|mariadb|mariadb-dump|mariadb-admin)\s(?:[^\n;&|]*\s)?-p([^\s'";&|]+)"#,
                1,
            ),
            (
                r#"(?:^|[\s;&|('"/])redis-cli\s(?:[^\n;&|]*\s)?-a\s+([^\s'";&|]+)"#,
                1,
            ),
        ],
        "bearer-token" => &[
            (r"(?i)(?-u:\b)bearer\s+([A-Za-z0-9._~+/-]{8,}=*)", 1),
            (
                r#"(?i)(?-u:\b)authorization["']?\s*[:=]\s*["']?basic\s+([A-Za-z0-9+/]{4,}=*)"#,
                1,
            ),
        ],
        _ => return None,
    })
}

/// One regex and the group that holds the secret.
#[derive(Debug)]
struct Part {
    re: Regex,
    group: usize,
    /// The PEM detector: a match without `END` continues on the next log lines.
    pem: bool,
}

/// A compiled set of detectors and patterns.
#[derive(Debug)]
pub(crate) struct Scanner {
    /// All parts at once: one pass to learn whether (and which) parts match.
    set: RegexSet,
    parts: Vec<Part>,
}

/// Why a scanner did not compile: an unknown detector, or a pattern with its index.
#[derive(Debug)]
pub(crate) enum ScanError {
    UnknownDetector(String),
    Pattern(usize, regex::Error),
}

impl Scanner {
    /// Compiles detectors (by name) and user patterns into one scanner.
    pub(crate) fn new(detectors: &[String], patterns: &[String]) -> Result<Scanner, ScanError> {
        let mut sources = Vec::new();
        let mut parts = Vec::new();
        for name in detectors {
            let list = builtin(name).ok_or_else(|| ScanError::UnknownDetector(name.to_string()))?;
            for &(src, group) in list {
                // Built-in patterns are constants covered by tests.
                let re = RegexBuilder::new(src)
                    .build()
                    .map_err(|e| ScanError::Pattern(usize::MAX, e))?;
                sources.push(src.to_string());
                parts.push(Part {
                    re,
                    group,
                    pem: src == PEM,
                });
            }
        }
        for (i, src) in patterns.iter().enumerate() {
            let re = Regex::new(src).map_err(|e| ScanError::Pattern(i, e))?;
            let group = re
                .capture_names()
                .position(|n| n == Some("secret"))
                .unwrap_or(0);
            sources.push(src.clone());
            parts.push(Part {
                re,
                group,
                pem: false,
            });
        }
        let set = RegexSetBuilder::new(&sources)
            .build()
            .map_err(|e| ScanError::Pattern(usize::MAX, e))?;
        Ok(Scanner { set, parts })
    }

    /// A scanner with every built-in detector.
    pub(crate) fn builtins() -> Result<Scanner, ScanError> {
        let all: Vec<String> = DETECTORS.iter().map(|s| s.to_string()).collect();
        Scanner::new(&all, &[])
    }

    /// Whether anything in `hay` is a secret.
    pub(crate) fn is_match(&self, hay: &[u8]) -> bool {
        self.set.is_match(hay)
    }

    /// Appends the byte ranges of the secrets found in `hay` to `out`; returns whether a PEM
    /// block started and did not end within `hay`.
    pub(crate) fn find(&self, hay: &[u8], out: &mut Vec<Range<usize>>) -> bool {
        let mut open_pem = false;
        for i in self.set.matches(hay).iter() {
            let part = &self.parts[i];
            for caps in part.re.captures_iter(hay) {
                let Some(m) = caps.get(part.group) else {
                    continue;
                };
                if m.is_empty() {
                    continue;
                }
                if part.pem && !m.as_bytes().windows(8).any(|w| w == b"-----END") {
                    open_pem = true;
                }
                out.push(m.range());
            }
        }
        open_pem
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(det: &str, hay: &str) -> Vec<String> {
        let s = Scanner::new(&[det.to_string()], &[]).unwrap();
        let mut r = Vec::new();
        s.find(hay.as_bytes(), &mut r);
        assert_eq!(s.is_match(hay.as_bytes()), !r.is_empty(), "{det}: {hay}");
        r.into_iter().map(|r| hay[r].to_string()).collect()
    }

    #[test]
    fn builtins_compile() {
        Scanner::builtins().unwrap();
        assert!(matches!(
            Scanner::new(&["nope".into()], &[]),
            Err(ScanError::UnknownDetector(_))
        ));
    }

    #[test]
    fn detectors_find_their_secrets() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        assert_eq!(found("jwt", &format!("token {jwt} end")), [jwt]);
        assert_eq!(
            found("aws-access-key", "key AKIAIOSFODNN7EXAMPLE!"),
            ["AKIAIOSFODNN7EXAMPLE"]
        );
        assert_eq!(
            found(
                "aws-access-key",
                "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
            ),
            ["wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"]
        );
        let ghp = "ghp_abcdefghijklmnopqrstuvwxyz0123456789";
        assert_eq!(found("github-token", &format!("t={ghp}")), [ghp]);
        assert_eq!(
            found("slack-token", "xoxb-123456789012-abcdefABCDEF"),
            ["xoxb-123456789012-abcdefABCDEF"]
        );
        assert_eq!(
            found("password-pair", "db_password=hunter2 ok"),
            ["hunter2"]
        );
        assert_eq!(
            found("password-pair", r#"{"password": "s3cr3t"}"#),
            ["s3cr3t"]
        );
        assert_eq!(
            found("password-pair", "postgres://app:pa55@db:5432/x"),
            ["pa55"]
        );
        assert_eq!(
            found(
                "password-pair",
                "redis-cli -u redis://:s3cret@cache:6379 ping"
            ),
            ["s3cret"]
        );
        assert_eq!(
            found(
                "password-pair",
                "sh -c 'mysql -h db -uroot -pS3cret app < x.sql'"
            ),
            ["S3cret"]
        );
        assert_eq!(
            found(
                "password-pair",
                "/usr/bin/mysqldump -pS3cret --all-databases"
            ),
            ["S3cret"]
        );
        assert_eq!(
            found("password-pair", "redis-cli -h cache -a S3cret ping"),
            ["S3cret"]
        );
        assert_eq!(
            found("bearer-token", "Authorization: Bearer abcdef.123456-xyz"),
            ["abcdef.123456-xyz"]
        );
        assert_eq!(
            found("bearer-token", "authorization: Basic dXNlcjpwYXNz"),
            ["dXNlcjpwYXNz"]
        );
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----";
        assert_eq!(found("pem-private-key", pem), [pem]);
    }

    #[test]
    fn detectors_leave_ordinary_text() {
        for (det, hay) in [
            ("jwt", "eyJ is a prefix"),
            ("aws-access-key", "AKIA too short"),
            ("github-token", "ghp_short"),
            ("password-pair", "the password is required; token_count=3"),
            ("password-pair", "password: \"\""),
            ("password-pair", "mysql -h db -P 3306 -p app"),
            ("password-pair", "see https://example.com:8443/path"),
            ("password-pair", "grep -a pattern redis-cli.log"),
            ("bearer-token", "bearer of news"),
            ("pem-private-key", "-----BEGIN CERTIFICATE-----"),
        ] {
            assert!(found(det, hay).is_empty(), "{det}: {hay}");
        }
    }

    #[test]
    fn open_pem_is_reported() {
        let s = Scanner::new(&["pem-private-key".into()], &[]).unwrap();
        let mut r = Vec::new();
        assert!(s.find(b"x -----BEGIN PRIVATE KEY-----", &mut r));
        assert_eq!((r.len(), r[0].clone()), (1, 2..29));
    }

    #[test]
    fn patterns_use_the_secret_group() {
        let s = Scanner::new(
            &[],
            &[r"pin=(?P<secret>\d+)".into(), "internal-[a-z]+".into()],
        )
        .unwrap();
        let hay = b"pin=1234 host internal-db";
        let mut r = Vec::new();
        s.find(hay, &mut r);
        r.sort_by_key(|r| r.start);
        assert_eq!(r, [4..8, 14..25]);
        assert!(matches!(
            Scanner::new(&[], &["(".into()]),
            Err(ScanError::Pattern(0, _))
        ));
    }
}
