//! The request body the inner service receives.

use palisade_core::body::BufferedBody;

/// The body of the requests the [`Hedge`](crate::Hedge) service sends to its inner service: a
/// [`BufferedBody`], one of
///
/// - **buffered** ([`is_buffered`](BufferedBody::is_buffered)): the original body (and its trailers)
///   read once, up to [`max_body`](crate::HedgeBuilder::max_body) bytes, and sent from memory to the
///   first attempt and to every hedge (cloning [`Bytes`](bytes::Bytes) is a reference count, not a
///   copy); empty when the original body was already at its end;
/// - **streamed**: the original body, untouched: the request was not hedgeable, or no delay was known
///   yet, or its body was larger than the limit (a body found too large while buffering is sent as the
///   part already read followed by the rest: **partial**).
pub type HedgeBody<B> = BufferedBody<B>;
