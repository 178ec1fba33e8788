//! The streaming JSON transform, and the body wrapper that drives a transform.
//!
//! [`JsonStream`] cuts the response into *units* without parsing them: a light state
//! machine tracks only strings (skipped with `memchr`) and bracket depth. A top-level value is
//! buffered whole (a single object, a watch event), unless it turns out to be an *envelope*:
//! an object whose member `items` or `rows` is an array, in a body that may be a List. Then the bytes before that array
//! (`{"apiVersion":"v1","kind":"SecretList","metadata":{..},"items":[`) are masked (as the
//! object `prefix]}`) and sent, each array element is a unit of its own, and the rest of the
//! envelope (`],"kind":..}`) is held until the object closes and checked as part of
//! `prefix]suffix`. So memory holds at most one unit (bounded by [`MAX_UNIT`]) whatever the
//! size of the List, and nothing is sent before the JSON it belongs to has been validated.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context as TaskContext, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use memchr::memchr2;

use super::unit::{Context, Part, Units};
use super::{Error, Inner};
use crate::body::{Body, BoxError};

/// Largest unit (one object, event or row) buffered; etcd refuses objects over 1.5 MiB, so
/// this leaves ample room for Tables and encoding overhead.
pub const MAX_UNIT: usize = 8 << 20;

/// A byte transform over a body's data.
pub(crate) trait Transform: Send + Sync + Unpin + 'static {
    /// Consumes `chunk`, appends what can be sent to `out`; returns values masked.
    fn push(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<u64, Error>;
    /// The body ended: flushes or fails on what is left.
    fn finish(&mut self, out: &mut BytesMut) -> Result<u64, Error>;
}

/// Where a bracketed or string value being skipped stands.
#[derive(Debug, Clone, Copy, Default)]
struct Bound {
    depth: u32,
    in_str: bool,
    esc: bool,
}

/// The root object's depth-1 keys, watched for `items`/`rows`.
#[derive(Debug, Clone, Copy, Default)]
struct Keys {
    expect_key: bool,
    in_key: bool,
    key_start: usize,
    /// The last key was `items` or `rows` and its `:` was seen: is the value an array?
    awaiting: bool,
    unit_key: bool,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// After `[`.
    First,
    AfterElem,
    AfterComma,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Between top-level values.
    Top,
    /// A top-level object that may become an envelope.
    Root(Bound, Keys),
    /// A top-level array or string, or an array element, buffered whole.
    Value(Bound, bool),
    /// A number or literal (top level or element).
    Scalar(bool),
    /// Between elements of an envelope's array.
    Elems(Phase),
    /// After an envelope's array, until the envelope closes.
    Suffix(Bound),
}

/// What a scan of the buffered bytes found.
enum Found {
    More,
    End(usize),
    /// The `[` opening an envelope's array.
    Envelope(usize),
}

pub(crate) struct JsonStream {
    inner: Arc<Inner>,
    ctx: Context,
    watch: bool,
    /// Whether a top-level object may be an envelope (the body may be a List).
    envelopes: bool,
    units: Units,
    /// Bytes received and not yet sent or dropped; `buf[start..]` is pending.
    buf: Vec<u8>,
    start: usize,
    pos: usize,
    /// Stream offset of `buf[0]`, for error messages.
    base: u64,
    state: State,
    values: u64,
    /// The envelope's bytes up to and including `[`; `tail` is scratch.
    prefix: Vec<u8>,
    tail: Vec<u8>,
}

impl JsonStream {
    /// `envelopes`: whether the body may be a List to stream item by item; when not, a
    /// top-level object is read whole.
    pub(crate) fn new(inner: Arc<Inner>, ctx: Context, watch: bool, envelopes: bool) -> JsonStream {
        JsonStream {
            inner,
            ctx,
            watch,
            envelopes,
            units: Units::default(),
            buf: Vec::new(),
            start: 0,
            pos: 0,
            base: 0,
            state: State::Top,
            values: 0,
            prefix: Vec::new(),
            tail: Vec::new(),
        }
    }

    fn invalid(&self, at: usize, reason: &'static str) -> Error {
        Error::InvalidJson {
            offset: self.base + at as u64,
            reason,
        }
    }

    /// Masks `buf[from..to]` as a unit into `out`.
    fn unit(&mut self, from: usize, to: usize, out: &mut BytesMut) -> Result<u64, Error> {
        if to - from > MAX_UNIT {
            return Err(Error::TooLarge { limit: MAX_UNIT });
        }
        let offset = self.base + from as u64;
        self.units
            .mask(
                &self.inner,
                &self.ctx,
                &self.buf[from..to],
                Part::Whole,
                out,
            )
            .map_err(|e| e.shifted(offset))
    }

    /// Runs the state machine over `buf[pos..]`.
    fn run(&mut self, out: &mut BytesMut) -> Result<u64, Error> {
        let mut masked = 0;
        while self.pos < self.buf.len() {
            let len = self.buf.len();
            match self.state {
                State::Top | State::Elems(_) => {
                    let b = self.buf[self.pos];
                    if matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                        // Whitespace between values leaves at once (watch event separators).
                        let end = self.buf[self.pos..]
                            .iter()
                            .position(|c| !matches!(c, b' ' | b'\n' | b'\r' | b'\t'))
                            .map_or(len, |p| self.pos + p);
                        out.extend_from_slice(&self.buf[self.pos..end]);
                        self.pos = end;
                        self.start = end;
                        continue;
                    }
                    self.start = self.pos;
                    let elem = match self.state {
                        State::Elems(phase) => {
                            masked += self.element(phase, b, out)?;
                            if !matches!(self.state, State::Value(..) | State::Scalar(_)) {
                                continue;
                            }
                            true
                        }
                        _ => {
                            if self.values > 0 && !self.watch {
                                return Err(self.invalid(self.pos, "trailing data after the value"));
                            }
                            self.values += 1;
                            false
                        }
                    };
                    // Fast path: the whole value is already here; one pass masks it.
                    let fast = self.units.try_mask_prefix(
                        &self.inner,
                        &self.ctx,
                        &self.buf[self.pos..len.min(self.pos + MAX_UNIT + 1)],
                        MAX_UNIT,
                        out,
                    );
                    if let Some((n, m)) = fast {
                        masked += m;
                        self.done_value(self.pos + n, elem);
                        continue;
                    }
                    if elem {
                        continue;
                    }
                    self.state = match b {
                        b'{' if self.envelopes => State::Root(Bound::default(), Keys::default()),
                        b'{' => State::Value(Bound::default(), false),
                        b'[' | b'"' => State::Value(Bound::default(), false),
                        _ => State::Scalar(false),
                    };
                }
                State::Root(mut b, mut k) => {
                    let found = root_scan(&mut b, &mut k, &self.buf, self.pos);
                    self.state = State::Root(b, k);
                    match found {
                        Found::More => self.pos = len,
                        Found::End(end) => {
                            masked += self.unit(self.start, end, out)?;
                            self.done_value(end, false);
                        }
                        Found::Envelope(at) => {
                            if at - self.start >= MAX_UNIT {
                                return Err(Error::TooLarge { limit: MAX_UNIT });
                            }
                            // Mask `prefix]}` and send it without the closing `]}`.
                            self.prefix.clear();
                            self.prefix.extend_from_slice(&self.buf[self.start..=at]);
                            self.tail.clear();
                            self.tail.extend_from_slice(&self.prefix);
                            self.tail.extend_from_slice(b"]}");
                            let offset = self.base + self.start as u64;
                            masked += self
                                .units
                                .mask(&self.inner, &self.ctx, &self.tail, Part::Prefix, out)
                                .map_err(|e| e.shifted(offset))?;
                            out.truncate(out.len() - 2);
                            self.pos = at + 1;
                            self.start = self.pos;
                            self.state = State::Elems(Phase::First);
                        }
                    }
                }
                State::Value(mut b, elem) => match skip(&mut b, &self.buf, self.pos) {
                    None => {
                        self.pos = len;
                        self.state = State::Value(b, elem);
                    }
                    Some(end) => {
                        masked += self.unit(self.start, end, out)?;
                        self.done_value(end, elem);
                    }
                },
                State::Suffix(mut b) => match skip(&mut b, &self.buf, self.pos) {
                    None => {
                        self.pos = len;
                        self.state = State::Suffix(b);
                    }
                    Some(end) => {
                        if end - self.start > MAX_UNIT {
                            return Err(Error::TooLarge { limit: MAX_UNIT });
                        }
                        // Check (and mask) the envelope as `prefix]suffix`; send the suffix.
                        self.tail.clear();
                        self.tail.extend_from_slice(&self.prefix);
                        self.tail.push(b']');
                        let from = self.tail.len();
                        self.tail.extend_from_slice(&self.buf[self.start..end]);
                        let offset = (self.base + self.start as u64).saturating_sub(from as u64);
                        masked += self
                            .units
                            .mask(&self.inner, &self.ctx, &self.tail, Part::From(from), out)
                            .map_err(|e| e.shifted(offset))?;
                        self.done_value(end, false);
                    }
                },
                State::Scalar(elem) => {
                    let end = self.buf[self.pos..]
                        .iter()
                        .position(
                            |c| !matches!(c, b'0'..=b'9' | b'a'..=b'z' | b'+' | b'-' | b'.' | b'E'),
                        )
                        .map(|p| self.pos + p);
                    match end {
                        None => self.pos = len,
                        Some(end) => {
                            // The tokenizer says where the value ends, as on the fast
                            // path: `-20x7` is the number `-20`, and the `x` is for the
                            // envelope or the top level to refuse, wherever the body
                            // was cut. Invalid from its first byte: the unit's error.
                            let tokenized = self.units.try_mask_prefix(
                                &self.inner,
                                &self.ctx,
                                &self.buf[self.start..=end],
                                MAX_UNIT,
                                out,
                            );
                            let end = match tokenized {
                                Some((n, m)) => {
                                    masked += m;
                                    self.start + n
                                }
                                None => {
                                    masked += self.unit(self.start, end, out)?;
                                    end
                                }
                            };
                            self.done_value(end, elem);
                        }
                    }
                }
            }
        }
        // All of `buf` is scanned: what is left from `start` is one value still incomplete.
        if self.buf.len() - self.start > MAX_UNIT {
            return Err(Error::TooLarge { limit: MAX_UNIT });
        }
        Ok(masked)
    }

    /// A value ended at `end`: back to the envelope's array or to the top level.
    fn done_value(&mut self, end: usize, elem: bool) {
        self.pos = end;
        self.start = end;
        self.state = if elem {
            State::Elems(Phase::AfterElem)
        } else {
            State::Top
        };
    }

    /// Handles byte `b` (not whitespace) between elements of an envelope's array.
    fn element(&mut self, phase: Phase, b: u8, out: &mut BytesMut) -> Result<u64, Error> {
        match (phase, b) {
            (Phase::First | Phase::AfterElem, b']') => {
                out.extend_from_slice(b"]");
                self.pos += 1;
                self.start = self.pos;
                self.state = State::Suffix(Bound {
                    depth: 1,
                    ..Bound::default()
                });
            }
            (Phase::AfterElem, b',') => {
                out.extend_from_slice(b",");
                self.pos += 1;
                self.start = self.pos;
                self.state = State::Elems(Phase::AfterComma);
            }
            (Phase::AfterElem, _) | (Phase::AfterComma, b']' | b',') => {
                return Err(self.invalid(self.pos, "expected ',' or ']'"))
            }
            (Phase::First | Phase::AfterComma, b'{' | b'[' | b'"') => {
                self.state = State::Value(Bound::default(), true)
            }
            (Phase::First | Phase::AfterComma, _) => self.state = State::Scalar(true),
        }
        Ok(0)
    }
}

impl Transform for JsonStream {
    fn push(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<u64, Error> {
        self.buf.extend_from_slice(chunk);
        let masked = self.run(out)?;
        // Drop what has been handled; what is left is at most one pending unit.
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.base += self.start as u64;
            self.pos -= self.start;
            if let State::Root(b, mut k) = self.state {
                k.key_start = k.key_start.saturating_sub(self.start);
                self.state = State::Root(b, k);
            }
            self.start = 0;
        }
        Ok(masked)
    }

    fn finish(&mut self, out: &mut BytesMut) -> Result<u64, Error> {
        match self.state {
            State::Top => Ok(0),
            // A number at the very end of the body ends there.
            State::Scalar(false) => {
                let masked = self.unit(self.start, self.buf.len(), out)?;
                self.done_value(self.buf.len(), false);
                Ok(masked)
            }
            _ => Err(self.invalid(self.buf.len(), "the body ended inside a value")),
        }
    }
}

/// Skips a bracketed value or string from `buf[i]`; returns the offset just past its end.
fn skip(b: &mut Bound, buf: &[u8], mut i: usize) -> Option<usize> {
    while i < buf.len() {
        if b.in_str {
            if b.esc {
                b.esc = false;
                i += 1;
                continue;
            }
            i += memchr2(b'"', b'\\', &buf[i..])?;
            if buf[i] == b'\\' {
                b.esc = true;
            } else {
                b.in_str = false;
                if b.depth == 0 {
                    return Some(i + 1);
                }
            }
        } else {
            match buf[i] {
                b'"' => b.in_str = true,
                b'{' | b'[' => b.depth += 1,
                b'}' | b']' => {
                    b.depth = b.depth.saturating_sub(1);
                    if b.depth == 0 {
                        return Some(i + 1);
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// [`skip`] for a top-level object, also watching its depth-1 keys for an envelope array.
fn root_scan(b: &mut Bound, k: &mut Keys, buf: &[u8], mut i: usize) -> Found {
    while i < buf.len() {
        if b.in_str {
            if b.esc {
                b.esc = false;
                i += 1;
                continue;
            }
            let Some(p) = memchr2(b'"', b'\\', &buf[i..]) else {
                return Found::More;
            };
            i += p;
            if buf[i] == b'\\' {
                b.esc = true;
            } else {
                b.in_str = false;
                if k.in_key {
                    k.in_key = false;
                    k.expect_key = false;
                    k.unit_key = matches!(&buf[k.key_start + 1..i], b"items" | b"rows");
                }
            }
            i += 1;
            continue;
        }
        let c = buf[i];
        if b.depth == 1 && k.awaiting && !matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
            k.awaiting = false;
            if c == b'[' {
                return Found::Envelope(i);
            }
        }
        match c {
            b'"' => {
                b.in_str = true;
                if b.depth == 1 && k.expect_key {
                    k.in_key = true;
                    k.key_start = i;
                }
            }
            b'{' | b'[' => {
                b.depth += 1;
                k.expect_key = b.depth == 1;
            }
            b'}' | b']' => {
                b.depth = b.depth.saturating_sub(1);
                if b.depth == 0 {
                    return Found::End(i + 1);
                }
            }
            b':' if b.depth == 1 => k.awaiting = std::mem::take(&mut k.unit_key),
            b',' if b.depth == 1 => k.expect_key = true,
            _ => {}
        }
        i += 1;
    }
    Found::More
}

/// A body whose data frames pass through a [`Transform`].
pub(crate) struct Masked<T> {
    inner: Body,
    transform: T,
    count: Arc<AtomicU64>,
    out: BytesMut,
    trailers: Option<HeaderMap>,
    done: bool,
}

impl<T: Transform> Masked<T> {
    pub(crate) fn new(inner: Body, transform: T, count: Arc<AtomicU64>) -> Self {
        Masked {
            inner,
            transform,
            count,
            out: BytesMut::new(),
            trailers: None,
            done: false,
        }
    }

    fn step(&mut self, r: Result<u64, Error>) -> Result<Option<Bytes>, BoxError> {
        match r {
            Ok(n) => {
                if n > 0 {
                    self.count.fetch_add(n, Ordering::Relaxed);
                }
                Ok((!self.out.is_empty()).then(|| self.out.split().freeze()))
            }
            Err(e) => {
                // Never send what was half masked: drop it and end with the error.
                tracing::warn!(error = %e, "masking ended the response body");
                self.done = true;
                self.out.clear();
                self.trailers = None;
                Err(Box::new(e))
            }
        }
    }
}

impl<T: Transform> HttpBody for Masked<T> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
            let result = match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        this.out.reserve(data.len() + data.len() / 8);
                        let r = this.transform.push(&data, &mut this.out);
                        this.step(r)
                    }
                    Err(frame) => {
                        this.trailers = frame.into_trailers().ok();
                        this.done = true;
                        let r = this.transform.finish(&mut this.out);
                        this.step(r)
                    }
                },
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    this.done = true;
                    let r = this.transform.finish(&mut this.out);
                    this.step(r)
                }
            };
            match result {
                Ok(Some(bytes)) => return Poll::Ready(Some(Ok(Frame::data(bytes)))),
                Ok(None) => continue,
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // Masking changes lengths: never claim one.
        SizeHint::default()
    }
}
