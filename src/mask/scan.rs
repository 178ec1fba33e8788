//! A validating, byte-level JSON tokenizer over one complete value held in memory.
//!
//! It writes a flat *tape* of tokens in document order (as simdjson does): every string,
//! scalar and container with its byte span, and for containers the index just past their
//! subtree, so that a container's members can be walked — and whole subtrees skipped — in any
//! order afterwards. That is what makes masking independent of key order: `kind` or an env
//! var's `name` may come after the values they decide about.
//!
//! Strings are skipped with `memchr` for `"` and `\`; their bytes are then checked for raw
//! control characters, and the whole value for UTF-8, so anything accepted is valid JSON
//! (RFC 8259; lone `\u` surrogates are let through, as Go's encoder never writes them).

use memchr::memchr2;

use super::Error;

/// Deepest nesting accepted; deeper input is refused rather than risk unbounded stacks.
pub(crate) const MAX_DEPTH: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Object,
    Array,
    /// A string in key position.
    Key,
    /// A string in value position.
    Str,
    /// A number, `true`, `false` or `null`.
    Scalar,
}

/// One token: `start..end` is its byte span (quotes and brackets included).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tok {
    pub start: u32,
    pub end: u32,
    /// Index of the token after this one's subtree (this index + 1 for non-containers).
    pub next: u32,
    pub kind: Kind,
    /// A string holding at least one escape: compare or match it only once decoded.
    pub escaped: bool,
}

/// What the parser expects next.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    Value,
    /// Right after `[`: a value or `]`.
    ValueOrClose,
    /// Right after `{`: a key or `}`.
    KeyOrClose,
    Key,
    Colon,
    CommaOrClose,
}

/// Tokenizes `src`, which must hold exactly one JSON value (surrounding whitespace allowed),
/// into `tape` (cleared first). `stack` is scratch. Errors carry the offset within `src`.
pub(crate) fn tokenize(src: &[u8], tape: &mut Vec<Tok>, stack: &mut Vec<u32>) -> Result<(), Error> {
    let end = tokenize_prefix(src, tape, stack, true)?;
    match src[end..]
        .iter()
        .position(|b| !matches!(b, b' ' | b'\n' | b'\r' | b'\t'))
    {
        Some(p) => Err(invalid(end + p, "trailing data after the value")),
        None if tape.is_empty() => Err(invalid(src.len(), "unexpected end of the value")),
        None => Ok(()),
    }
}

/// Tokenizes the JSON value at the start of `src` (leading whitespace allowed), whatever
/// follows it; returns the offset just past the value. Unless `whole` (`src` ends where the
/// input does), a number that runs to the end of `src` may be cut short, so it is reported
/// as an unexpected end.
pub(crate) fn tokenize_prefix(
    src: &[u8],
    tape: &mut Vec<Tok>,
    stack: &mut Vec<u32>,
    whole: bool,
) -> Result<usize, Error> {
    tape.clear();
    stack.clear();
    if src.len() > u32::MAX as usize {
        return Err(Error::TooLarge {
            limit: u32::MAX as usize,
        });
    }
    let mut i = 0usize;
    let mut expect = Expect::Value;
    let mut done = false;
    while i < src.len() {
        let b = src[i];
        if matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
            i += 1;
            continue;
        }
        match expect {
            Expect::Value | Expect::ValueOrClose | Expect::Key | Expect::KeyOrClose => {
                let closing = match expect {
                    Expect::ValueOrClose => b == b']',
                    Expect::KeyOrClose => b == b'}',
                    _ => false,
                };
                if closing {
                    close(tape, stack, i)?;
                    i += 1;
                    expect = Expect::CommaOrClose;
                    if stack.is_empty() {
                        done = true;
                        break;
                    }
                    continue;
                }
                let key = matches!(expect, Expect::Key | Expect::KeyOrClose);
                if key && b != b'"' {
                    return Err(invalid(i, "expected a string key"));
                }
                let idx = tape.len() as u32;
                match b {
                    b'"' => {
                        let (end, escaped) = string(src, i)?;
                        let kind = if key { Kind::Key } else { Kind::Str };
                        tape.push(tok(i, end, idx + 1, kind, escaped));
                        i = end;
                        expect = if key {
                            Expect::Colon
                        } else {
                            Expect::CommaOrClose
                        };
                    }
                    b'{' | b'[' => {
                        if stack.len() >= MAX_DEPTH {
                            return Err(Error::TooDeep { limit: MAX_DEPTH });
                        }
                        let kind = if b == b'{' { Kind::Object } else { Kind::Array };
                        tape.push(tok(i, i, idx, kind, false));
                        stack.push(idx);
                        i += 1;
                        expect = if b == b'{' {
                            Expect::KeyOrClose
                        } else {
                            Expect::ValueOrClose
                        };
                        continue;
                    }
                    _ => {
                        let end = scalar(src, i)?;
                        tape.push(tok(i, end, idx + 1, Kind::Scalar, false));
                        i = end;
                        expect = Expect::CommaOrClose;
                    }
                }
                if stack.is_empty() {
                    done = true;
                    break;
                }
            }
            Expect::Colon => {
                if b != b':' {
                    return Err(invalid(i, "expected ':'"));
                }
                i += 1;
                expect = Expect::Value;
            }
            Expect::CommaOrClose => {
                let top = match stack.last() {
                    Some(&t) => tape[t as usize].kind,
                    None => return Err(invalid(i, "trailing data after the value")),
                };
                match (b, top) {
                    (b',', Kind::Object) => expect = Expect::Key,
                    (b',', _) => expect = Expect::Value,
                    (b'}', Kind::Object) | (b']', Kind::Array) => {
                        close(tape, stack, i)?;
                        if stack.is_empty() {
                            done = true;
                            i += 1;
                            break;
                        }
                    }
                    _ => return Err(invalid(i, "expected ',' or a closing bracket")),
                }
                i += 1;
            }
        }
    }
    let cut_number = !whole && tape.len() == 1 && tape[0].kind == Kind::Scalar && i == src.len();
    if !done || cut_number {
        return Err(invalid(src.len(), "unexpected end of the value"));
    }
    // Validating UTF-8 once for the whole value is far faster than per string.
    if let Err(e) = std::str::from_utf8(&src[..i]) {
        return Err(invalid(e.valid_up_to(), "invalid UTF-8"));
    }
    Ok(i)
}

fn tok(start: usize, end: usize, next: u32, kind: Kind, escaped: bool) -> Tok {
    Tok {
        start: start as u32,
        end: end as u32,
        next,
        kind,
        escaped,
    }
}

fn invalid(offset: usize, reason: &'static str) -> Error {
    Error::InvalidJson {
        offset: offset as u64,
        reason,
    }
}

/// Closes the innermost container at `src[i]` (the bracket was checked by the caller).
fn close(tape: &mut [Tok], stack: &mut Vec<u32>, i: usize) -> Result<(), Error> {
    let idx = stack
        .pop()
        .ok_or_else(|| invalid(i, "unbalanced bracket"))? as usize;
    let next = tape.len() as u32;
    let t = &mut tape[idx];
    t.end = i as u32 + 1;
    t.next = next;
    Ok(())
}

/// Scans the string starting at `src[start]` (a `"`); returns the offset just past its
/// closing quote and whether it holds escapes.
fn string(src: &[u8], start: usize) -> Result<(usize, bool), Error> {
    let mut i = start + 1;
    let mut escaped = false;
    loop {
        // Most strings of an object are short (keys, names): a word-at-a-time scan of the
        // first bytes beats memchr's setup; long ones (data, annotations) go to memchr.
        let p = match special(&src[i..]) {
            Ok(p) => p,
            Err(skipped) => {
                let from = i + skipped;
                let Some(p) = memchr2(b'"', b'\\', &src[from..]) else {
                    return Err(invalid(src.len(), "unterminated string"));
                };
                if has_control(&src[from..from + p]) {
                    return Err(invalid(from, "control character in a string"));
                }
                from + p - i
            }
        };
        i += p;
        match src.get(i) {
            Some(b'"') => return Ok((i + 1, escaped)),
            Some(b'\\') => {}
            Some(_) => return Err(invalid(i, "control character in a string")),
            None => return Err(invalid(src.len(), "unterminated string")),
        }
        escaped = true;
        match src.get(i + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
            Some(b'u') => {
                let hex = src.get(i + 2..i + 6).unwrap_or_default();
                if hex.len() != 4 || !hex.iter().all(u8::is_ascii_hexdigit) {
                    return Err(invalid(i, "invalid \\u escape"));
                }
                i += 6;
            }
            _ => return Err(invalid(i, "invalid escape")),
        }
    }
}

/// Bytes [`special`] scans a word at a time before handing over to memchr.
const SHORT: usize = 32;

/// The offset of the first `"`, `\` or control byte in `s`, looking 8 bytes at a time
/// (SWAR) through the first [`SHORT`] bytes; `Err(n)` if none is in the first `n` bytes.
fn special(s: &[u8]) -> Result<usize, usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte's high bit is set in `zero(x)` if that byte of x is 0 — exactly for the
    // lowest such byte; borrows can only flag bytes above it, so `trailing_zeros` is right.
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut i = 0;
    while i + 8 <= s.len() && i < SHORT {
        let mut word = [0u8; 8];
        word.copy_from_slice(&s[i..i + 8]);
        let w = u64::from_le_bytes(word);
        let found = zero(w ^ (ONES * u64::from(b'"')))
            | zero(w ^ (ONES * u64::from(b'\\')))
            | (w.wrapping_sub(ONES * 0x20) & !w & HIGH);
        if found != 0 {
            return Ok(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    if i >= SHORT {
        return Err(i);
    }
    match s[i..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
    {
        Some(p) => Ok(i + p),
        None => Err(s.len()),
    }
}

/// Whether `s` holds a byte below 0x20. Written without early exit, per 32 bytes, so that
/// the compiler vectorises it: strings are most of a Kubernetes object's bytes.
fn has_control(s: &[u8]) -> bool {
    let mut chunks = s.chunks_exact(32);
    for c in &mut chunks {
        if c.iter().fold(false, |acc, &b| acc | (b < 0x20)) {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| b < 0x20)
}

/// Scans a number or literal at `src[start]`; returns the offset just past it.
fn scalar(src: &[u8], start: usize) -> Result<usize, Error> {
    for lit in [&b"true"[..], b"false", b"null"] {
        if src[start..].starts_with(lit) {
            return Ok(start + lit.len());
        }
    }
    let digits = |mut i: usize| {
        let from = i;
        while i < src.len() && src[i].is_ascii_digit() {
            i += 1;
        }
        (i, i - from)
    };
    let mut i = start;
    if src.get(i) == Some(&b'-') {
        i += 1;
    }
    let (j, n) = digits(i);
    if n == 0 || (n > 1 && src[i] == b'0') {
        return Err(invalid(start, "invalid value"));
    }
    i = j;
    if src.get(i) == Some(&b'.') {
        let (j, n) = digits(i + 1);
        if n == 0 {
            return Err(invalid(i, "invalid number"));
        }
        i = j;
    }
    if matches!(src.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(src.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let (j, n) = digits(i);
        if n == 0 {
            return Err(invalid(i, "invalid number"));
        }
        i = j;
    }
    Ok(i)
}

/// The raw bytes between a string token's quotes.
pub(crate) fn raw<'a>(src: &'a [u8], t: &Tok) -> &'a [u8] {
    &src[t.start as usize + 1..t.end as usize - 1]
}

/// The content of a string token (between its quotes), decoded into `scratch` when escaped.
pub(crate) fn content<'a>(src: &'a [u8], t: &Tok, scratch: &'a mut Vec<u8>) -> &'a [u8] {
    let raw = &src[t.start as usize + 1..t.end as usize - 1];
    if !t.escaped {
        return raw;
    }
    scratch.clear();
    decode(raw, scratch);
    scratch
}

/// Decodes the escapes of a tokenized (so well-formed) string body; an unpaired surrogate
/// becomes U+FFFD.
fn decode(raw: &[u8], out: &mut Vec<u8>) {
    let hex = |s: &[u8]| -> u32 {
        s.iter().fold(0, |acc, &b| {
            acc * 16 + char::from(b).to_digit(16).unwrap_or_default()
        })
    };
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != b'\\' || i + 1 >= raw.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let simple = match raw[i + 1] {
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'u' => None,
            other => Some(other),
        };
        if let Some(c) = simple {
            out.push(c);
            i += 2;
            continue;
        }
        let mut code = hex(raw.get(i + 2..i + 6).unwrap_or_default());
        i += 6;
        if (0xD800..0xDC00).contains(&code) && raw.get(i..i + 2) == Some(b"\\u") {
            let low = hex(raw.get(i + 2..i + 6).unwrap_or_default());
            if (0xDC00..0xE000).contains(&low) {
                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                i += 6;
            }
        }
        let c = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    }
}

/// The value tokens of every member `key` of the object at `obj`, in order. JSON lets
/// an object name a key twice, and the API server reads every copy: an object is merged
/// into the one before it, a string replaces the one before it.
pub(crate) fn members_named<'a>(
    src: &'a [u8],
    tape: &'a [Tok],
    obj: usize,
    key: &'a [u8],
) -> impl Iterator<Item = usize> + 'a {
    let mut scratch = Vec::new();
    members(tape, obj)
        .filter(move |&(k, _)| content(src, &tape[k], &mut scratch) == key)
        .map(|(_, v)| v)
}

/// The string token the API server reads for member `key` of the object at `obj`: the
/// last copy that holds a string (a `null` leaves the one before it in place).
pub(crate) fn last_string(src: &[u8], tape: &[Tok], obj: usize, key: &[u8]) -> Option<usize> {
    members_named(src, tape, obj, key)
        .filter(|&v| tape[v].kind == Kind::Str)
        .last()
}

/// `(key, value)` token indices of the members of the object at `obj`.
pub(crate) fn members(tape: &[Tok], obj: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    let end = tape[obj].next as usize;
    let mut i = obj + 1;
    std::iter::from_fn(move || {
        if i >= end {
            return None;
        }
        let (k, v) = (i, i + 1);
        i = tape[v].next as usize;
        Some((k, v))
    })
}

/// Token indices of the elements of the array at `arr`.
pub(crate) fn elements(tape: &[Tok], arr: usize) -> impl Iterator<Item = usize> + '_ {
    let end = tape[arr].next as usize;
    let mut i = arr + 1;
    std::iter::from_fn(move || {
        if i >= end {
            return None;
        }
        let e = i;
        i = tape[e].next as usize;
        Some(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Vec<Tok> {
        let (mut tape, mut stack) = (Vec::new(), Vec::new());
        tokenize(s.as_bytes(), &mut tape, &mut stack).unwrap();
        tape
    }

    fn bad(s: &[u8]) {
        let (mut tape, mut stack) = (Vec::new(), Vec::new());
        assert!(
            tokenize(s, &mut tape, &mut stack).is_err(),
            "{:?} accepted",
            String::from_utf8_lossy(s)
        );
    }

    #[test]
    fn tape_shape() {
        let t = ok(r#" {"a":[1,"x",{}],"b":null} "#);
        let kinds: Vec<Kind> = t.iter().map(|t| t.kind).collect();
        use Kind::*;
        assert_eq!(
            kinds,
            [Object, Key, Array, Scalar, Str, Object, Key, Scalar]
        );
        assert_eq!(t[0].next, 8);
        assert_eq!(t[2].next, 6);
        assert_eq!(t[5].next, 6);
    }

    #[test]
    fn accepts_what_serde_accepts() {
        for s in [
            "0",
            "-0.5e+3",
            "1E9",
            "true",
            "\"\\u00e9\\n\\\"\"",
            "[]",
            "{}",
            "[[],[{}]]",
            "{\"a\":{\"b\":[true,false,null]}}",
            "\"é\"",
        ] {
            ok(s);
            serde_json::from_str::<serde_json::Value>(s).unwrap();
        }
    }

    #[test]
    fn rejects_invalid() {
        for s in [
            &b""[..],
            b"{",
            b"}",
            b"[1,]",
            b"{\"a\"}",
            b"{\"a\":}",
            b"{,}",
            b"[1 2]",
            b"01",
            b"1.",
            b"-",
            b"tru",
            b"\"a",
            b"\"\\x\"",
            b"\"\\u12\"",
            b"\"a\x01\"",
            b"{1:2}",
            b"[}",
            b"{]",
            b"1 2",
            b"\"\xff\"",
            b"[1]]",
            b"nul",
        ] {
            bad(s);
        }
    }

    #[test]
    fn depth_is_bounded() {
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        bad(deep.as_bytes());
        let fine = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        ok(&fine);
    }

    #[test]
    fn finds_special_bytes() {
        let cases: [(&[u8], Result<usize, usize>); 7] = [
            (b"abc\"", Ok(3)),
            (b"abcdefghij\\x", Ok(10)),
            (b"abcdefgh\x01", Ok(8)),
            (b"\xc3\xa9\xc3\xa9\"", Ok(4)),
            (b"abc", Err(3)),
            (&[b'a'; 40], Err(32)),
            (b"\x7f\xff\x20\x21\x1f", Ok(4)),
        ];
        for (s, want) in cases {
            assert_eq!(special(s), want, "{s:?}");
        }
        for n in 0..20 {
            let mut s = vec![b'x'; n];
            s.push(b'"');
            assert_eq!(special(&s), if n < SHORT { Ok(n) } else { Err(SHORT) });
        }
    }

    #[test]
    fn decodes() {
        let src = br#""a\u00e9\ud83d\ude00\n\/\ud800x""#;
        let t = ok(std::str::from_utf8(src).unwrap());
        let mut s = Vec::new();
        let c = content(src, &t[0], &mut s);
        assert_eq!(std::str::from_utf8(c).unwrap(), "aé😀\n/\u{fffd}x");
    }

    #[test]
    fn member_lookup() {
        let src = br#"{"x":1,"kind":"Secret","m":{"name":"n"},"m":{},"kind":null}"#;
        let t = ok(std::str::from_utf8(src).unwrap());
        let k = last_string(src, &t, 0, b"kind").unwrap();
        assert_eq!(&src[t[k].start as usize..t[k].end as usize], b"\"Secret\"");
        assert!(last_string(src, &t, 0, b"nope").is_none());
        let m: Vec<usize> = members_named(src, &t, 0, b"m").collect();
        assert_eq!(m.len(), 2);
        assert!(last_string(src, &t, m[0], b"name").is_some());
        assert!(last_string(src, &t, m[1], b"name").is_none());
        // The last string wins, as in the API server's decoder; escapes name the same key.
        let src = br#"{"kind":"ConfigMap","k\u0069nd":"Secret"}"#;
        let t = ok(std::str::from_utf8(src).unwrap());
        let k = last_string(src, &t, 0, b"kind").unwrap();
        assert_eq!(&src[t[k].start as usize..t[k].end as usize], b"\"Secret\"");
    }
}
