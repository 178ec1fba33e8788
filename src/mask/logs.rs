//! Line masking for pod logs (`pods/log`, `follow=true` included).
//!
//! Each line leaves as soon as its `\n` arrives; a last line without one is masked at the
//! end of the body. Secrets found by the scanners are replaced by [`MARKER`] in place, so
//! the rest of the line stays readable. A line longer than [`MAX_LINE`] is cut (after the
//! last blank of its second half, if any, so that a token is rarely split) and each piece is
//! masked on its own: memory stays bounded even for a log without newlines.
//!
//! A PEM private key spans lines: from a line where a `BEGIN .. PRIVATE KEY` starts without
//! its `END`, whole lines are masked until the line with the `END` marker (at most
//! [`PEM_MAX_LINES`] lines, so that a stray header cannot hide the rest of a log). A log
//! read may also start inside such a block, its header left out (`tailLines`, `sinceTime`,
//! a log file the kubelet rotated mid-key): the lines of base64 it starts with, and the
//! `END` marker after them, are masked whole too.

use std::ops::Range;
use std::sync::Arc;

use bytes::BytesMut;
use memchr::memchr;
use regex::bytes::Regex;

use super::detect::Scanner;
use super::stream::Transform;
use super::{Error, MARKER};

/// Longest line masked as one piece.
pub const MAX_LINE: usize = 1 << 20;
/// Most lines masked after a PEM header without its `END` (an 8192-bit RSA key is ~100).
pub const PEM_MAX_LINES: u32 = 512;

/// What a log response is masked with.
#[derive(Debug, Clone)]
pub(crate) struct LineRules {
    pub scanners: Vec<Arc<Scanner>>,
    pub pem_end: Arc<Regex>,
}

pub(crate) struct LineStream {
    rules: LineRules,
    buf: Vec<u8>,
    /// `buf[..pos]` holds no `\n`.
    pos: usize,
    /// Lines still to mask whole inside an open PEM block.
    pem_lines: u32,
    /// No line but base64 has been read yet: the read may have started inside a PEM
    /// block, whose header it then left out.
    leading: bool,
    leading_counted: bool,
    ranges: Vec<Range<usize>>,
}

impl LineStream {
    pub(crate) fn new(rules: LineRules) -> LineStream {
        LineStream {
            rules,
            buf: Vec::new(),
            pos: 0,
            pem_lines: 0,
            leading: true,
            leading_counted: false,
            ranges: Vec::new(),
        }
    }

    /// Masks one line (with or without its terminator) into `out`.
    fn line(&mut self, start: usize, end: usize, out: &mut BytesMut) -> u64 {
        let line = &self.buf[start..end];
        let text_len =
            line.len() - usize::from(line.ends_with(b"\n")) - usize::from(line.ends_with(b"\r\n"));
        let text = &line[..text_len];
        self.ranges.clear();
        let mut masked = 0;
        let mut from = 0;
        if self.leading {
            let end = self
                .rules
                .pem_end
                .find(text)
                .filter(|_| self.leading_counted);
            if let Some(m) = end {
                // The end of a block whose start was not read, after its lines.
                self.leading = false;
                self.ranges.push(0..m.end());
                from = m.end();
            } else if is_pem_body(after_timestamp(text), self.leading_counted) {
                // The block counts once, on its first line.
                if !self.leading_counted {
                    self.leading_counted = true;
                    masked += 1;
                }
                self.ranges.push(0..text.len());
                from = text.len();
            } else {
                self.leading = false;
            }
        }
        if self.pem_lines > 0 {
            match self.rules.pem_end.find(text) {
                Some(m) => {
                    self.pem_lines = 0;
                    self.ranges.push(0..m.end());
                    from = m.end();
                }
                None => {
                    self.pem_lines -= 1;
                    if !text.is_empty() {
                        self.ranges.push(0..text.len());
                    }
                    from = text.len();
                }
            }
        }
        let before = self.ranges.len();
        let mut open = false;
        for s in &self.rules.scanners {
            let n = self.ranges.len();
            open |= s.find(&text[from..], &mut self.ranges);
            for r in &mut self.ranges[n..] {
                *r = r.start + from..r.end + from;
            }
        }
        if open {
            self.pem_lines = PEM_MAX_LINES;
        }
        // Secrets found anew count once each (a PEM block counts on its first line).
        masked += merge(&mut self.ranges[before..]) as u64;
        let total = merge(&mut self.ranges);
        let mut last = 0;
        for r in &self.ranges[..total] {
            out.extend_from_slice(&line[last..r.start]);
            out.extend_from_slice(MARKER.as_bytes());
            last = r.end;
        }
        out.extend_from_slice(&line[last..]);
        masked
    }
}

/// A line's text after the RFC 3339 timestamp `timestamps=true` puts before it.
fn after_timestamp(text: &[u8]) -> &[u8] {
    let Some(space) = text.iter().take(40).position(|&b| b == b' ') else {
        return text;
    };
    let stamp = &text[..space];
    let looks_like_one = stamp.first().is_some_and(u8::is_ascii_digit)
        && stamp.contains(&b'T')
        && stamp
            .iter()
            .all(|&b| b.is_ascii_digit() || matches!(b, b'-' | b':' | b'.' | b'T' | b'Z' | b'+'));
    match looks_like_one {
        true => &text[space + 1..],
        false => text,
    }
}

/// A line of a PEM block's body: base64 only (trailing blanks aside), at most the 76
/// characters a line may have. The first must look like encoded data, not like a word, a
/// hex digest or a banner of `=`: at least 16 characters, with capitals, small letters
/// and a digit, `+` or `/` (a key's 64-character lines have all three but for about one
/// in a million). The ones after it may be a block's short last line.
fn is_pem_body(text: &[u8], after_one: bool) -> bool {
    let text = text.trim_ascii_end();
    let base64 = text
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
    if after_one {
        return base64 && (4..=76).contains(&text.len());
    }
    base64
        && (16..=76).contains(&text.len())
        && text.iter().any(u8::is_ascii_uppercase)
        && text.iter().any(u8::is_ascii_lowercase)
        && text
            .iter()
            .any(|&b| b.is_ascii_digit() || matches!(b, b'+' | b'/'))
}

/// Sorts and merges overlapping ranges in place; returns how many remain (at the front).
pub(super) fn merge(ranges: &mut [Range<usize>]) -> usize {
    if ranges.is_empty() {
        return 0;
    }
    ranges.sort_unstable_by_key(|r| r.start);
    let mut w = 0;
    for i in 1..ranges.len() {
        if ranges[i].start <= ranges[w].end {
            ranges[w].end = ranges[w].end.max(ranges[i].end);
        } else {
            w += 1;
            ranges[w] = ranges[i].clone();
        }
    }
    w + 1
}

/// Where to cut a line of `MAX_LINE` bytes: after its last blank in the second half.
fn cut(piece: &[u8]) -> usize {
    let half = piece.len() / 2;
    piece[half..]
        .iter()
        .rposition(|&b| matches!(b, b' ' | b'\t' | b',' | b';'))
        .map_or(piece.len(), |p| half + p + 1)
}

impl Transform for LineStream {
    fn push(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<u64, Error> {
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        let mut masked = 0;
        loop {
            // Where this line's text ends: at its `\n`, or as far as the body has come.
            let newline = memchr(b'\n', &self.buf[self.pos..]).map(|p| self.pos + p);
            let text_end = newline.unwrap_or(self.buf.len());
            match newline {
                // A line whose text reaches `MAX_LINE` is cut whether or not its `\n` came
                // in the same chunk, so that the output never depends on where the body
                // was cut into frames.
                _ if text_end - start >= MAX_LINE => {
                    let end = start + cut(&self.buf[start..start + MAX_LINE]);
                    masked += self.line(start, end, out);
                    start = end;
                    self.pos = end;
                }
                Some(newline) => {
                    let end = newline + 1;
                    masked += self.line(start, end, out);
                    start = end;
                    self.pos = end;
                }
                None => break,
            }
        }
        self.buf.drain(..start);
        self.pos = self.buf.len();
        Ok(masked)
    }

    fn finish(&mut self, out: &mut BytesMut) -> Result<u64, Error> {
        if self.buf.is_empty() {
            return Ok(0);
        }
        let masked = self.line(0, self.buf.len(), out);
        self.buf.clear();
        self.pos = 0;
        Ok(masked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges() {
        let mut r = vec![5..8, 0..2, 1..3, 7..9, 10..11];
        let n = merge(&mut r);
        assert_eq!(&r[..n], [0..3, 5..9, 10..11]);
    }

    #[test]
    fn cuts_after_blanks() {
        assert_eq!(cut(b"aaaa bbbb"), 5);
        assert_eq!(cut(b"a bbbbbbbb"), 10);
    }
}
