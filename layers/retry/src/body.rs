//! The request body the inner service receives, and the buffer that makes a body replayable.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The body of the requests the [`Retry`](crate::Retry) service sends to its inner service.
    ///
    /// It is one of:
    ///
    /// - **empty**: the original body was already at its end (`is_end_stream`), so nothing was buffered;
    /// - **replayed**: the original body (and its trailers) buffered once, up to
    ///   [`max_body`](crate::RetryBuilder::max_body) bytes, and sent again from memory on every attempt
    ///   (cloning [`Bytes`] is a reference count, not a copy);
    /// - **streamed**: the original body, unbuffered: the request was not retryable (unsafe method, a
    ///   single attempt configured) or its body was larger than the limit. A body found too large while
    ///   buffering is sent as the part already read followed by the rest of the original.
    ///
    /// Data frames are [`Bytes`]; errors are the original body's.
    pub struct RetryBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Empty,
        Replayed {
            data: Option<Bytes>,
            trailers: Option<HeaderMap>,
        },
        Streamed {
            #[pin]
            body: B,
        },
        Partial {
            prefix: Option<Bytes>,
            body: Pin<Box<B>>,
        },
    }
}

impl<B> RetryBody<B> {
    /// Wraps `body` to be streamed as-is (what the layer sends when it does not buffer).
    pub fn new(body: B) -> Self {
        RetryBody {
            kind: Kind::Streamed { body },
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        RetryBody { kind: Kind::Empty }
    }

    /// A body replayed from memory: `data`, then `trailers` if any.
    pub(crate) fn replayed(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        RetryBody {
            kind: Kind::Replayed {
                data: (!data.is_empty()).then_some(data),
                trailers,
            },
        }
    }

    /// The bytes already read, then the rest of `body`.
    pub(crate) fn partial(prefix: Bytes, body: Pin<Box<B>>) -> Self {
        RetryBody {
            kind: Kind::Partial {
                prefix: (!prefix.is_empty()).then_some(prefix),
                body,
            },
        }
    }

    /// Whether this body is replayed from memory (or empty): the request was buffered for retries.
    pub fn is_replayed(&self) -> bool {
        matches!(self.kind, Kind::Empty | Kind::Replayed { .. })
    }
}

impl<B> fmt::Debug for RetryBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Empty => f.write_str("RetryBody::Empty"),
            Kind::Replayed { data, trailers } => f
                .debug_struct("RetryBody::Replayed")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .field("trailers", &trailers.is_some())
                .finish(),
            Kind::Streamed { .. } => f.write_str("RetryBody::Streamed"),
            Kind::Partial { prefix, .. } => f
                .debug_struct("RetryBody::Partial")
                .field("prefix_len", &prefix.as_ref().map_or(0, Bytes::len))
                .finish(),
        }
    }
}

fn to_bytes<D: Buf>(frame: Frame<D>) -> Frame<Bytes> {
    frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))
}

impl<B> Body for RetryBody<B>
where
    B: Body,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Empty => Poll::Ready(None),
            KindProj::Replayed { data, trailers } => {
                if let Some(d) = data.take() {
                    Poll::Ready(Some(Ok(Frame::data(d))))
                } else {
                    Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
                }
            }
            KindProj::Streamed { body } => body.poll_frame(cx).map(|f| f.map(|f| f.map(to_bytes))),
            KindProj::Partial { prefix, body } => {
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                body.as_mut()
                    .poll_frame(cx)
                    .map(|f| f.map(|f| f.map(to_bytes)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Replayed { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Streamed { body } => body.is_end_stream(),
            Kind::Partial { prefix, body } => prefix.is_none() && body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Replayed { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Streamed { body } => body.size_hint(),
            Kind::Partial { prefix, body } => {
                let p = prefix.as_ref().map_or(0, |d| d.len() as u64);
                let inner = body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower().saturating_add(p));
                if let Some(u) = inner.upper() {
                    hint.set_upper(u.saturating_add(p));
                }
                hint
            }
        }
    }
}

/// Collects data frames, copying only when there is more than one.
#[derive(Debug, Default)]
pub(crate) struct Collect {
    first: Option<Bytes>,
    more: Option<BytesMut>,
    len: u64,
    pub(crate) trailers: Option<HeaderMap>,
}

impl Collect {
    /// Adds a data chunk; returns the total length so far.
    pub(crate) fn push(&mut self, chunk: Bytes) -> u64 {
        self.len += chunk.len() as u64;
        if chunk.is_empty() {
            return self.len;
        }
        match (&mut self.first, &mut self.more) {
            (None, None) => self.first = Some(chunk),
            (first @ Some(_), more @ None) => {
                let first = first.take().unwrap_or_default();
                let mut buf = BytesMut::with_capacity(first.len() + chunk.len());
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&chunk);
                *more = Some(buf);
            }
            (_, Some(buf)) => buf.extend_from_slice(&chunk),
        }
        self.len
    }

    /// Everything collected, as one buffer.
    pub(crate) fn into_bytes(self) -> Bytes {
        match (self.first, self.more) {
            (_, Some(buf)) => buf.freeze(),
            (Some(b), None) => b,
            (None, None) => Bytes::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn replayed_body_yields_data_then_trailers() {
        let mut t = HeaderMap::new();
        t.insert("x-checksum", "abc".parse().unwrap());
        let body: RetryBody<http_body_util::Empty<Bytes>> =
            RetryBody::replayed(Bytes::from_static(b"hello"), Some(t.clone()));
        assert_eq!(body.size_hint().exact(), Some(5));
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&t));
        assert_eq!(collected.to_bytes(), "hello");
    }

    #[tokio::test]
    async fn partial_body_is_prefix_then_rest() {
        let rest = http_body_util::Full::new(Bytes::from_static(b" world"));
        let body = RetryBody::partial(Bytes::from_static(b"hello"), Box::pin(rest));
        assert_eq!(body.size_hint().exact(), Some(11));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello world");
    }

    #[test]
    fn collect_copies_only_for_several_chunks() {
        let one = Bytes::from_static(b"abc");
        let mut c = Collect::default();
        c.push(one.clone());
        let out = c.into_bytes();
        assert_eq!(out.as_ptr(), one.as_ptr(), "a single chunk is not copied");
        let mut c = Collect::default();
        c.push(Bytes::from_static(b"ab"));
        c.push(Bytes::new());
        assert_eq!(c.push(Bytes::from_static(b"cd")), 4);
        c.push(Bytes::from_static(b"e"));
        assert_eq!(c.into_bytes(), "abcde");
    }
}
