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
