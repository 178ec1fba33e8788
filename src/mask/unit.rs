//! Masks one *unit*: a complete JSON value held in memory (an item of a List, a Table row, a
//! watch event, or a whole single-object response).
//!
//! The unit is tokenized to a tape ([`super::scan`]); then its *object nodes* are found:
//! the unit itself if it is an object, and recursively the elements of a node's `items` and
//! `rows` arrays and its `object` member (a watch event's or a Table row's object). Each node
//! is classified by its own `kind` *and* by the requested resource (both, so that a
//! `SecretList` item without `kind`, a `PartialObjectMetadata` of a Secret or a Secret in a
//! `kind: List` are all treated as Secrets — when in doubt, mask), and by its
//! `metadata.namespace`/`metadata.name` (falling back to the request's). The rules that
//! apply select string tokens by path; scanners (detectors, patterns) of the rules that
//! apply look at every string value of the node, outside nested nodes, which get their own
//! rules. Finally only the selected tokens are rewritten; everything else is copied.

use std::borrow::Cow;

use bytes::BytesMut;

use super::rules::{kind_to_resource, Compiled, Repl};
use super::scan::{self, Kind, Tok};
use super::{Error, Inner};

/// The quoted replacements, as they are written into JSON.
const MARKER_JSON: &[u8] = b"\"chaperone:masked\"";
const BASE64_JSON: &[u8] = b"\"Y2hhcGVyb25lOm1hc2tlZA==\"";

/// Scratch space reused from unit to unit, so that steady state allocates nothing.
#[derive(Default)]
pub(crate) struct Units {
    tape: Vec<Tok>,
    stack: Vec<u32>,
    nodes: Vec<usize>,
    edits: Vec<(u32, Repl)>,
    scratch: Vec<u8>,
    /// The last `kind` seen and the resource guessed from it.
    kind: (Vec<u8>, String),
    /// Of the values the last unit had masked, those a detector or pattern found (not
    /// a field a rule names).
    detected: u64,
}

/// Which part of a unit is written out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    Whole,
    /// An envelope up to its streamed array, closed with `]}`: written whole.
    Prefix,
    /// Only from this offset (an envelope's suffix, checked with its prefix).
    From(usize),
}

/// What a response's objects are matched against.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub resource: String,
    pub namespace: String,
    pub name: String,
    /// The request does not say what its answer holds (another group's `proxy`, an
    /// aggregated API reaching another cluster): an object whose kind does not say
    /// either (an item of a List, a Table's `PartialObjectMetadata`) gets every rule,
    /// the Secret one included.
    pub unknown_kinds: bool,
}

impl Units {
    /// Validates and masks `unit`, and writes the result for the `part` of it to `out`;
    /// returns the number of values masked there. Error offsets are relative to `unit`.
    pub(crate) fn mask(
        &mut self,
        inner: &Inner,
        ctx: &Context,
        unit: &[u8],
        part: Part,
        out: &mut BytesMut,
    ) -> Result<u64, Error> {
        scan::tokenize(unit, &mut self.tape, &mut self.stack)?;
        Ok(self.rewrite(inner, ctx, unit, part, out))
    }

    /// Of the values the last unit had masked, those a detector or pattern found.
    pub(crate) fn detected(&self) -> u64 {
        self.detected
    }

    /// Masks the value at the start of `src` if it is complete there, valid and at most
    /// `limit` bytes: returns its length and the values masked. Otherwise `None`, and nothing
    /// is written: the caller buffers the value and calls [`Units::mask`] once it is whole.
    pub(crate) fn try_mask_prefix(
        &mut self,
        inner: &Inner,
        ctx: &Context,
        src: &[u8],
        limit: usize,
        out: &mut BytesMut,
    ) -> Option<(usize, u64)> {
        let end = scan::tokenize_prefix(src, &mut self.tape, &mut self.stack, false).ok()?;
        if end > limit {
            return None;
        }
        Some((end, self.rewrite(inner, ctx, &src[..end], Part::Whole, out)))
    }

    /// Applies the rules to the tokenized `unit`.
    fn rewrite(
        &mut self,
        inner: &Inner,
        ctx: &Context,
        unit: &[u8],
        part: Part,
        out: &mut BytesMut,
    ) -> u64 {
        self.edits.clear();
        let emit_from = match part {
            Part::From(i) => i,
            Part::Whole | Part::Prefix => 0,
        };
        self.find_nodes(unit);
        for n in 0..self.nodes.len() {
            self.mask_node(inner, ctx, unit, n, n == 0 && part == Part::Prefix);
        }
        if self.nodes.is_empty() {
            self.scan_bare(inner, ctx, unit);
        }
        self.edits
            .retain(|&(t, _)| self.tape[t as usize].start as usize >= emit_from);
        self.detected = 0;
        if self.edits.is_empty() {
            out.extend_from_slice(&unit[emit_from..]);
            return 0;
        }
        // A token selected twice keeps the stronger replacement: base64 for Secret data, so
        // that clients can still decode it.
        self.edits
            .sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        self.edits.dedup_by_key(|e| e.0);
        self.detected = self.edits.iter().filter(|e| e.1 == Repl::Detected).count() as u64;
        let mut last = emit_from;
        for &(t, repl) in &self.edits {
            let t = &self.tape[t as usize];
            out.extend_from_slice(&unit[last..t.start as usize]);
            out.extend_from_slice(match repl {
                Repl::Detected | Repl::Marker => MARKER_JSON,
                Repl::Base64 => BASE64_JSON,
            });
            last = t.end as usize;
        }
        out.extend_from_slice(&unit[last..]);
        self.edits.len() as u64
    }

    /// Fills `nodes` with the token indices of the unit's object nodes, parents first.
    fn find_nodes(&mut self, src: &[u8]) {
        self.nodes.clear();
        let tape = &self.tape;
        if tape.first().map(|t| t.kind) != Some(Kind::Object) {
            return;
        }
        self.nodes.push(0);
        let mut i = 0;
        while i < self.nodes.len() {
            let node = self.nodes[i];
            i += 1;
            for (k, v) in scan::members(tape, node) {
                let key = scan::content(src, &tape[k], &mut self.scratch);
                match (key, tape[v].kind) {
                    (b"items" | b"rows", Kind::Array) => self
                        .nodes
                        .extend(scan::elements(tape, v).filter(|&e| tape[e].kind == Kind::Object)),
                    (b"object", Kind::Object) => self.nodes.push(v),
                    _ => {}
                }
            }
        }
        // Nodes in document order: scanning a node skips its child nodes in one pass.
        self.nodes.sort_unstable();
    }

    /// Masks node `n`; `open` says it is an envelope's prefix, whose `kind` may come later.
    fn mask_node(&mut self, inner: &Inner, ctx: &Context, src: &[u8], n: usize, open: bool) {
        let node = self.nodes[n];
        let tape = &self.tape;
        // A key may come twice: read as the API server reads it (every `metadata` merged,
        // the last string winning).
        let field = |key: &[u8]| {
            scan::members_named(src, tape, node, b"metadata")
                .filter(|&m| tape[m].kind == Kind::Object)
                .filter_map(|m| scan::last_string(src, tape, m, key))
                .last()
        };
        let namespace = match field(b"namespace") {
            Some(t) => owned_content(src, &tape[t]),
            None => Cow::Borrowed(ctx.namespace.as_bytes()),
        };
        let name = match field(b"name") {
            Some(t) => owned_content(src, &tape[t]),
            None => Cow::Borrowed(ctx.name.as_bytes()),
        };
        if let Some(k) = scan::last_string(src, tape, node, b"kind") {
            let kind = owned_content(src, &tape[k]);
            // Most nodes of a response share a kind: guess its resource once.
            if self.kind.0 != *kind {
                self.kind = (kind.to_vec(), kind_to_resource(&kind));
            }
        } else {
            self.kind.0.clear();
            self.kind.1.clear();
        }
        // An envelope prefix without its `kind` could be anything a policy names: every
        // policy rule applies to it (fail closed). The built-in Secret rule still goes
        // by the requested resource: a Secret is never streamed as an envelope, and
        // a List's own fields hold list metadata, not Secret data.
        let any = open && self.kind.1.is_empty();
        let unknown = ctx.unknown_kinds
            && (self.kind.1.is_empty() || self.kind.0 == b"PartialObjectMetadata");
        let resources = [ctx.resource.as_str(), self.kind.1.as_str()];

        let edits = &mut self.edits;
        let mut scanners: Vec<&Compiled> = Vec::new();
        for rule in inner.all() {
            let fallback = unknown || (any && !std::ptr::eq(rule, &inner.secrets));
            if !(fallback || rule.applies(&resources, &namespace, &name)) {
                continue;
            }
            rule.select(src, tape, node, &mut |t, repl| edits.push((t as u32, repl)));
            if rule.scanner.is_some() {
                scanners.push(rule);
            }
        }
        // Every string value of this node, skipping nested nodes (they follow in `nodes`,
        // in document order, and get their own rules).
        let end = tape[node].next as usize;
        scan_strings(
            src,
            tape,
            node + 1..end,
            &self.nodes[n + 1..],
            &scanners,
            &mut self.scratch,
            edits,
        );
    }

    /// A unit that is not an object (a bare array or string, or such an element of a List)
    /// has no node for rules to select fields in; its strings still go through the scanners
    /// of every rule for the requested resource, as they would have as part of an envelope
    /// that arrived whole.
    fn scan_bare(&mut self, inner: &Inner, ctx: &Context, src: &[u8]) {
        let resources = [ctx.resource.as_str()];
        let scanners: Vec<&Compiled> = inner
            .all()
            .filter(|r| r.scanner.is_some())
            .filter(|r| r.applies(&resources, ctx.namespace.as_bytes(), ctx.name.as_bytes()))
            .collect();
        let all = 0..self.tape.len();
        scan_strings(
            src,
            &self.tape,
            all,
            &[],
            &scanners,
            &mut self.scratch,
            &mut self.edits,
        );
    }
}

/// Marks every string value among `tokens` that a scanner of `rules` finds something in,
/// skipping the subtrees of `children` (ascending token indices).
fn scan_strings(
    src: &[u8],
    tape: &[Tok],
    tokens: std::ops::Range<usize>,
    children: &[usize],
    rules: &[&Compiled],
    scratch: &mut Vec<u8>,
    edits: &mut Vec<(u32, Repl)>,
) {
    if rules.is_empty() {
        return;
    }
    let mut children = children.iter().copied().peekable();
    let mut i = tokens.start;
    while i < tokens.end {
        while children.next_if(|&c| c < i).is_some() {}
        if children.next_if_eq(&i).is_some() {
            i = tape[i].next as usize;
            continue;
        }
        if tape[i].kind == Kind::Str {
            let value = scan::content(src, &tape[i], scratch);
            // A scanner that did not compile finds everything: masked, not passed.
            let hit = rules
                .iter()
                .filter_map(|r| r.scanner.as_ref())
                .any(|s| s.get().is_none_or(|s| s.is_match(value)));
            if hit {
                edits.push((i as u32, Repl::Detected));
            }
        }
        i += 1;
    }
}

/// The content of a string token, borrowed unless it had to be decoded.
fn owned_content<'a>(src: &'a [u8], t: &Tok) -> Cow<'a, [u8]> {
    if t.escaped {
        Cow::Owned(scan::content(src, t, &mut Vec::new()).to_vec())
    } else {
        Cow::Borrowed(scan::raw(src, t))
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    #[test]
    fn replacements_are_the_marker() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(super::super::MARKER);
        assert_eq!(super::BASE64_JSON, format!("\"{b64}\"").as_bytes());
        assert_eq!(
            super::MARKER_JSON,
            format!("\"{}\"", super::super::MARKER).as_bytes()
        );
    }
}
