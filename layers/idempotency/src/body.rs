//! The request body the inner service receives and the response body the caller receives.

use palisade_core::body::BufferedBody;

/// The body of the requests the [`Idempotency`](crate::Idempotency) service passes to its inner
/// service: a [`BufferedBody`], one of
///
/// - **buffered** ([`is_buffered`](BufferedBody::is_buffered)): a request the layer applies to. Its
///   body was read (up to [`max_request_body`](crate::Builder::max_request_body)) to fingerprint it,
///   and is handed on from memory: the data in one frame, then the trailers if there were any. A body
///   over the limit is rejected, never sent in part.
/// - **streamed**: a request the layer does not apply to (a `GET`, a route switched off, an optional
///   key that was not sent), passed on untouched.
///
/// Data frames are [`Bytes`](bytes::Bytes); errors are the original body's.
pub type RequestBody<B> = BufferedBody<B>;

/// The body of the responses of the [`Idempotency`](crate::Idempotency) service: a [`BufferedBody`],
/// one of
///
/// - **buffered** ([`is_buffered`](BufferedBody::is_buffered)): a response captured for the store (the
///   first execution under a key) or replayed from it: sent from memory.
/// - **streamed**: the inner service's body, untouched (requests the layer does not apply to).
/// - **partial**: a response too large to store: the part already read, then the rest of the inner
///   body. The client gets the whole response; the key is marked as not replayable.
///
/// Data frames are [`Bytes`](bytes::Bytes); errors are the inner body's.
pub type ResponseBody<B> = BufferedBody<B>;
