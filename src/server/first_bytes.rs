//! A connection's first bytes, bounded in time. Shared with the injector's webhook
//! server (`injector/src/server.rs` includes this file): both crates serve TLS
//! connections with hyper, and neither depends on the other.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A served connection whose first bytes must come in time. hyper reads the first 24
/// (HTTP/2's preface is that long) to tell the protocol before any timeout of its own
/// applies, so a client that completes its TLS handshake and then sends nothing, or a
/// few bytes, would hold its connection for good. Until those bytes are in, a read
/// still waiting at the deadline fails; after them this is a pass-through.
pub struct FirstBytes<I> {
    io: I,
    /// Bytes still to come before the protocol is known.
    left: usize,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// HTTP/2's connection preface: what hyper reads before it knows the protocol.
const PROTOCOL_BYTES: usize = 24;

impl<I> FirstBytes<I> {
    pub fn new(io: I, timeout: Duration) -> FirstBytes<I> {
        FirstBytes {
            io,
            left: PROTOCOL_BYTES,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FirstBytes<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some(deadline) = &mut this.deadline {
            match read {
                Poll::Ready(Ok(())) => {
                    this.left = this.left.saturating_sub(buf.filled().len() - before);
                    if this.left == 0 {
                        this.deadline = None;
                    }
                }
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client sent no request in time",
                    )));
                }
                _ => {}
            }
        }
        read
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FirstBytes<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
