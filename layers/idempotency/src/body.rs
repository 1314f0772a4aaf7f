//! The request body the inner service receives, the response body the caller receives, and the buffer
//! both are collected into.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The body of the requests the [`Idempotency`](crate::Idempotency) service passes to its inner
    /// service.
    ///
    /// - **buffered**: a request the layer applies to. Its body was read (up to
    ///   [`max_request_body`](crate::Builder::max_request_body)) to fingerprint it, and is handed on
    ///   from memory: the data in one frame, then the trailers if there were any.
    /// - **streamed**: a request the layer does not apply to (a `GET`, a route switched off, an optional
    ///   key that was not sent), passed on untouched.
    ///
    /// Data frames are [`Bytes`]; errors are the original body's.
    pub struct RequestBody<B> {
        #[pin]
        kind: ReqKind<B>,
    }
}

pin_project! {
    #[project = ReqKindProj]
    enum ReqKind<B> {
        Buffered {
            data: Option<Bytes>,
            trailers: Option<HeaderMap>,
        },
        Streamed {
            #[pin]
            body: B,
        },
    }
}

impl<B> RequestBody<B> {
    /// Wraps `body` to be passed on as-is.
    pub fn streamed(body: B) -> Self {
        RequestBody {
            kind: ReqKind::Streamed { body },
        }
    }

    /// A body sent from memory: `data`, then `trailers` if any.
    pub fn buffered(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        RequestBody {
            kind: ReqKind::Buffered {
                data: (!data.is_empty()).then_some(data),
                trailers,
            },
        }
    }

    /// Whether the body was read and fingerprinted by the layer.
    pub fn is_buffered(&self) -> bool {
        matches!(self.kind, ReqKind::Buffered { .. })
    }
}

impl<B> fmt::Debug for RequestBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ReqKind::Buffered { data, trailers } => f
                .debug_struct("RequestBody::Buffered")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .field("trailers", &trailers.is_some())
                .finish(),
            ReqKind::Streamed { .. } => f.write_str("RequestBody::Streamed"),
        }
    }
}

fn to_bytes<D: Buf>(frame: Frame<D>) -> Frame<Bytes> {
    frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))
}

impl<B: Body> Body for RequestBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            ReqKindProj::Buffered { data, trailers } => match data.take() {
                Some(d) => Poll::Ready(Some(Ok(Frame::data(d)))),
                None => Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t)))),
            },
            ReqKindProj::Streamed { body } => {
                body.poll_frame(cx).map(|f| f.map(|f| f.map(to_bytes)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ReqKind::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
            ReqKind::Streamed { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ReqKind::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ReqKind::Streamed { body } => body.size_hint(),
        }
    }
}

pin_project! {
    /// The body of the responses of the [`Idempotency`](crate::Idempotency) service.
    ///
    /// - **buffered**: a response captured for the store (the first execution under a key) or replayed
    ///   from it: sent from memory.
    /// - **streamed**: the inner service's body, untouched (requests the layer does not apply to).
    /// - **partial**: a response too large to store: the part already read, then the rest of the inner
    ///   body. The client gets the whole response; the key is marked as not replayable.
    ///
    /// Data frames are [`Bytes`]; errors are the inner body's.
    pub struct ResponseBody<B> {
        #[pin]
        kind: ResKind<B>,
    }
}

pin_project! {
    #[project = ResKindProj]
    enum ResKind<B> {
        Buffered {
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

impl<B> ResponseBody<B> {
    pub(crate) fn streamed(body: B) -> Self {
        ResponseBody {
            kind: ResKind::Streamed { body },
        }
    }

    pub(crate) fn buffered(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        ResponseBody {
            kind: ResKind::Buffered {
                data: (!data.is_empty()).then_some(data),
                trailers,
            },
        }
    }

    pub(crate) fn partial(prefix: Bytes, body: Pin<Box<B>>) -> Self {
        ResponseBody {
            kind: ResKind::Partial {
                prefix: (!prefix.is_empty()).then_some(prefix),
                body,
            },
        }
    }

    /// Whether the body is sent from memory (a captured or replayed response).
    pub fn is_buffered(&self) -> bool {
        matches!(self.kind, ResKind::Buffered { .. })
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ResKind::Buffered { data, trailers } => f
                .debug_struct("ResponseBody::Buffered")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .field("trailers", &trailers.is_some())
                .finish(),
            ResKind::Streamed { .. } => f.write_str("ResponseBody::Streamed"),
            ResKind::Partial { prefix, .. } => f
                .debug_struct("ResponseBody::Partial")
                .field("prefix_len", &prefix.as_ref().map_or(0, Bytes::len))
                .finish(),
        }
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            ResKindProj::Buffered { data, trailers } => match data.take() {
                Some(d) => Poll::Ready(Some(Ok(Frame::data(d)))),
                None => Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t)))),
            },
            ResKindProj::Streamed { body } => {
                body.poll_frame(cx).map(|f| f.map(|f| f.map(to_bytes)))
            }
            ResKindProj::Partial { prefix, body } => {
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
            ResKind::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
            ResKind::Streamed { body } => body.is_end_stream(),
            ResKind::Partial { prefix, body } => prefix.is_none() && body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ResKind::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ResKind::Streamed { body } => body.size_hint(),
            ResKind::Partial { prefix, body } => {
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
    pub(crate) fn take_bytes(&mut self) -> Bytes {
        self.len = 0;
        match (self.first.take(), self.more.take()) {
            (_, Some(buf)) => buf.freeze(),
            (Some(b), None) => b,
            (None, None) => Bytes::new(),
        }
    }
}

/// Polls `body` until its end, collecting into `collect`, stopping once more than `limit` bytes were
/// read. `Ready(Ok(true))`: the whole body is in `collect`; `Ready(Ok(false))`: it is over the limit (the
/// part read is in `collect`).
pub(crate) fn poll_collect<B: Body>(
    mut body: Pin<&mut B>,
    cx: &mut Context<'_>,
    collect: &mut Collect,
    limit: u64,
) -> Poll<Result<bool, B::Error>> {
    loop {
        if body.is_end_stream() {
            return Poll::Ready(Ok(true));
        }
        match std::task::ready!(body.as_mut().poll_frame(cx)) {
            None => return Poll::Ready(Ok(true)),
            Some(Err(e)) => return Poll::Ready(Err(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    let chunk = data.copy_to_bytes(data.remaining());
                    if collect.push(chunk) > limit {
                        return Poll::Ready(Ok(false));
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        match &mut collect.trailers {
                            Some(existing) => existing.extend(t),
                            None => collect.trailers = Some(t),
                        }
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn buffered_request_body_yields_data_then_trailers() {
        let mut t = HeaderMap::new();
        t.insert("x-checksum", "abc".parse().unwrap());
        let body: RequestBody<http_body_util::Empty<Bytes>> =
            RequestBody::buffered(Bytes::from_static(b"hello"), Some(t.clone()));
        assert!(body.is_buffered());
        assert_eq!(body.size_hint().exact(), Some(5));
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&t));
        assert_eq!(collected.to_bytes(), "hello");
    }

    #[tokio::test]
    async fn partial_response_body_is_prefix_then_rest() {
        let rest = http_body_util::Full::new(Bytes::from_static(b" world"));
        let body = ResponseBody::partial(Bytes::from_static(b"hello"), Box::pin(rest));
        assert_eq!(body.size_hint().exact(), Some(11));
        assert!(!body.is_buffered());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello world");
    }

    #[test]
    fn collect_copies_only_for_several_chunks() {
        let one = Bytes::from_static(b"abc");
        let mut c = Collect::default();
        c.push(one.clone());
        let out = c.take_bytes();
        assert_eq!(out.as_ptr(), one.as_ptr(), "a single chunk is not copied");
        let mut c = Collect::default();
        c.push(Bytes::from_static(b"ab"));
        c.push(Bytes::new());
        assert_eq!(c.push(Bytes::from_static(b"cd")), 4);
        c.push(Bytes::from_static(b"e"));
        assert_eq!(c.take_bytes(), "abcde");
    }
}
