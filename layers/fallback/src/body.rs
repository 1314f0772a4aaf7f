//! Bodies: [`FallbackBody`], the response body of every fallback service, and [`ReplayBody`], the request
//! body of the alternate-service kind.

use std::fmt;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use palisade_core::error::BoxError;
use pin_project_lite::pin_project;

use crate::stale::Recorder;

/// The body type of responses that never come from an alternate service.
pub type NoBody = http_body_util::Empty<Bytes>;

pin_project! {
    /// The response body of the fallback services: one of
    ///
    /// - the **inner** service's body, passed through frame by frame (with the stale-if-error kind, a
    ///   successful `GET` response's data is also copied into the store as it streams, up to the entry
    ///   limit);
    /// - **fallback bytes**: a static response, a function's response or a stale copy, sent as one frame;
    /// - the **alternate** service's body.
    ///
    /// Data frames are [`Bytes`] (the inner body's `Bytes` are passed on without copying); errors are
    /// boxed.
    pub struct FallbackBody<B, A = NoBody> {
        #[pin]
        kind: Kind<B, A>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B, A> {
        Inner { #[pin] body: B },
        Recording { #[pin] body: B, rec: Option<Box<Recorder>> },
        // Boxed: the fallback path is rare, and this keeps the body small on the success path.
        Full { data: Option<Box<Bytes>> },
        Alternate { #[pin] body: A },
    }
}

impl<B, A> FallbackBody<B, A> {
    /// The inner service's body, passed through.
    #[inline]
    pub fn inner(body: B) -> Self {
        FallbackBody {
            kind: Kind::Inner { body },
        }
    }

    /// Fallback bytes, sent as one data frame.
    pub fn full(data: Bytes) -> Self {
        FallbackBody {
            kind: Kind::Full {
                data: (!data.is_empty()).then(|| Box::new(data)),
            },
        }
    }

    /// The alternate service's body.
    pub fn alternate(body: A) -> Self {
        FallbackBody {
            kind: Kind::Alternate { body },
        }
    }

    pub(crate) fn recording(body: B, rec: Box<Recorder>) -> Self {
        FallbackBody {
            kind: Kind::Recording {
                body,
                rec: Some(rec),
            },
        }
    }

    /// Whether this is the inner service's body (not a fallback).
    pub fn is_inner(&self) -> bool {
        matches!(self.kind, Kind::Inner { .. } | Kind::Recording { .. })
    }

    /// Whether this body comes from the alternate service.
    pub fn is_alternate(&self) -> bool {
        matches!(self.kind, Kind::Alternate { .. })
    }
}

impl<B, A> fmt::Debug for FallbackBody<B, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match &self.kind {
            Kind::Inner { .. } => "FallbackBody::Inner",
            Kind::Recording { .. } => "FallbackBody::Inner(recording)",
            Kind::Full { .. } => "FallbackBody::Full",
            Kind::Alternate { .. } => "FallbackBody::Alternate",
        })
    }
}

#[inline]
fn to_bytes<D: Buf>(frame: Frame<D>) -> Frame<Bytes> {
    frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))
}

#[inline]
fn map_frame<D: Buf, E: Into<BoxError>>(
    f: Option<Result<Frame<D>, E>>,
) -> Option<Result<Frame<Bytes>, BoxError>> {
    f.map(|r| r.map(to_bytes).map_err(Into::into))
}

impl<B, A> Body for FallbackBody<B, A>
where
    B: Body,
    B::Error: Into<BoxError>,
    A: Body,
    A::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx).map(map_frame),
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(*d)))),
            KindProj::Alternate { body } => body.poll_frame(cx).map(map_frame),
            KindProj::Recording { mut body, rec } => {
                let frame = map_frame(ready!(body.as_mut().poll_frame(cx)));
                match &frame {
                    Some(Ok(f)) => {
                        if let Some(r) = rec.as_mut() {
                            let keep = match f.data_ref() {
                                Some(d) => r.push(d),
                                None => false, // trailers: not stored
                            };
                            if !keep {
                                *rec = None;
                            }
                        }
                        if body.is_end_stream() {
                            if let Some(r) = rec.take() {
                                r.finish();
                            }
                        }
                    }
                    Some(Err(_)) => *rec = None,
                    None => {
                        if let Some(r) = rec.take() {
                            r.finish();
                        }
                    }
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } | Kind::Recording { body, .. } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
            Kind::Alternate { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } | Kind::Recording { body, .. } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Alternate { body } => body.size_hint(),
        }
    }
}

pin_project! {
    /// The request body the primary and the alternate service receive with the alternate-service kind.
    ///
    /// - **replayed**: the original body (and its trailers), buffered once before the primary call, up to
    ///   [`max_body`](crate::Builder::max_body) bytes, and sent from memory to the primary and, if the
    ///   fallback activates, again to the alternate (cloning [`Bytes`] is a reference count, not a copy);
    /// - **streamed**: the original body, unbuffered, because it was larger than the limit; such a request
    ///   gets no fallback. A body found too large while buffering is sent as the part already read
    ///   followed by the rest of the original.
    ///
    /// Data frames are [`Bytes`]; errors are the original body's.
    pub struct ReplayBody<B> {
        #[pin]
        kind: ReplayKind<B>,
    }
}

pin_project! {
    #[project = ReplayProj]
    enum ReplayKind<B> {
        Replayed { data: Option<Bytes>, trailers: Option<HeaderMap> },
        Streamed { #[pin] body: B },
        Partial { prefix: Option<Bytes>, body: Pin<Box<B>> },
    }
}

impl<B> ReplayBody<B> {
    /// A body replayed from memory: `data`, then `trailers` if any.
    pub fn replayed(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        ReplayBody {
            kind: ReplayKind::Replayed {
                data: (!data.is_empty()).then_some(data),
                trailers,
            },
        }
    }

    /// `body`, streamed as it is.
    pub fn streamed(body: B) -> Self {
        ReplayBody {
            kind: ReplayKind::Streamed { body },
        }
    }

    pub(crate) fn partial(prefix: Bytes, body: Pin<Box<B>>) -> Self {
        ReplayBody {
            kind: ReplayKind::Partial {
                prefix: (!prefix.is_empty()).then_some(prefix),
                body,
            },
        }
    }

    /// Whether the body is sent from memory (so the request could go to the alternate service too).
    pub fn is_replayed(&self) -> bool {
        matches!(self.kind, ReplayKind::Replayed { .. })
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ReplayKind::Replayed { data, trailers } => f
                .debug_struct("ReplayBody::Replayed")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .field("trailers", &trailers.is_some())
                .finish(),
            ReplayKind::Streamed { .. } => f.write_str("ReplayBody::Streamed"),
            ReplayKind::Partial { prefix, .. } => f
                .debug_struct("ReplayBody::Partial")
                .field("prefix_len", &prefix.as_ref().map_or(0, Bytes::len))
                .finish(),
        }
    }
}

impl<B: Body> Body for ReplayBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            ReplayProj::Replayed { data, trailers } => Poll::Ready(match data.take() {
                Some(d) => Some(Ok(Frame::data(d))),
                None => trailers.take().map(|t| Ok(Frame::trailers(t))),
            }),
            ReplayProj::Streamed { body } => {
                body.poll_frame(cx).map(|f| f.map(|f| f.map(to_bytes)))
            }
            ReplayProj::Partial { prefix, body } => {
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
            ReplayKind::Replayed { data, trailers } => data.is_none() && trailers.is_none(),
            ReplayKind::Streamed { body } => body.is_end_stream(),
            ReplayKind::Partial { prefix, body } => prefix.is_none() && body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ReplayKind::Replayed { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ReplayKind::Streamed { body } => body.size_hint(),
            ReplayKind::Partial { prefix, body } => {
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

/// Collects data chunks, copying only when there is more than one.
#[derive(Debug, Default)]
pub(crate) struct Collect {
    first: Option<Bytes>,
    more: Option<BytesMut>,
    len: usize,
}

impl Collect {
    /// Adds a chunk; returns the total length so far.
    pub(crate) fn push(&mut self, chunk: Bytes) -> usize {
        self.len += chunk.len();
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

    pub(crate) fn len(&self) -> usize {
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
