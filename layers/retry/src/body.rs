//! The request body the inner service receives.

use palisade_core::body::BufferedBody;

/// The body of the requests the [`Retry`](crate::Retry) service sends to its inner service: a
/// [`BufferedBody`], one of
///
/// - **replayed** ([`is_replayed`](BufferedBody::is_replayed)): the original body (and its trailers)
///   buffered once, up to [`max_body`](crate::RetryBuilder::max_body) bytes, and sent again from memory
///   on every attempt (cloning [`Bytes`](bytes::Bytes) is a reference count, not a copy); empty when the
///   original body was already at its end (`is_end_stream`), so nothing was buffered;
/// - **streamed**: the original body, unbuffered: the request was not retryable (unsafe method, a
///   single attempt configured) or its body was larger than the limit. A body found too large while
///   buffering is sent as the part already read followed by the rest of the original (**partial**).
///
/// [`RetryBody::new`](BufferedBody::new) wraps a body to be streamed as-is, and
/// [`RetryBody::empty`](BufferedBody::empty) is an empty body. Data frames are
/// [`Bytes`](bytes::Bytes); errors are the original body's.
pub type RetryBody<B> = BufferedBody<B>;
