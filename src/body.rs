//! The one body type that requests and responses carry between stages.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};

/// Any error a body stream can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming body: upstream responses, watch streams, and our own small replies.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body holding these bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A body with nothing in it.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Why a body could not be read whole.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// More than the bound allows (by its declared length, or as it arrived).
    TooLarge,
    /// The stream ended with an error.
    Failed(String),
}

/// Reads a small body whole (a review, a JWKS), refusing more than `max` bytes: at once
/// when its declared length says so, else as soon as the bytes so far pass it. Frame by
/// frame: http-body-util's `Limited` trips a higher-ranked lifetime limitation in boxed
/// futures.
pub async fn read_limited<B>(mut body: B, max: usize) -> Result<Bytes, ReadError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    if body.size_hint().lower() > max as u64 {
        return Err(ReadError::TooLarge);
    }
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadError::Failed(e.to_string()))?;
        if let Some(data) = frame.data_ref() {
            if out.len() + data.len() > max {
                return Err(ReadError::TooLarge);
            }
            out.extend_from_slice(data);
        }
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_up_to_the_bound_and_no_further() {
        assert_eq!(read_limited(full("abcd"), 4).await.unwrap(), "abcd");
        // Refused by its declared length...
        assert_eq!(
            read_limited(full("abcde"), 4).await,
            Err(ReadError::TooLarge)
        );
        // ... and by what arrives, for a stream without one.
        let frames =
            futures_util::stream::iter(["ab", "cd", "e"].map(|s| {
                Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(s)))
            }));
        let streamed = http_body_util::StreamBody::new(frames);
        assert_eq!(read_limited(streamed, 4).await, Err(ReadError::TooLarge));
    }
}
