//! Bodies: [`FallbackBody`], the response body of every fallback service, and [`ReplayBody`], the request
//! body of the alternate-service kind.

use std::fmt;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
pub(crate) use palisade_core::body::Collect;
use palisade_core::body::{frame_to_bytes, BufferedBody};
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
fn map_frame<D: Buf, E: Into<BoxError>>(
    f: Option<Result<Frame<D>, E>>,
) -> Option<Result<Frame<Bytes>, BoxError>> {
    f.map(|r| r.map(frame_to_bytes).map_err(Into::into))
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

/// The request body the primary and the alternate service receive with the alternate-service kind: a
/// [`BufferedBody`], one of
///
/// - **replayed** ([`is_replayed`](BufferedBody::is_replayed)): the original body (and its trailers),
///   buffered once before the primary call, up to [`max_body`](crate::Builder::max_body) bytes, and
///   sent from memory to the primary and, if the fallback activates, again to the alternate (cloning
///   [`Bytes`] is a reference count, not a copy);
/// - **streamed**: the original body, unbuffered, because it was larger than the limit; such a request
///   gets no fallback. A body found too large while buffering is sent as the part already read
///   followed by the rest of the original (**partial**).
///
/// Data frames are [`Bytes`]; errors are the original body's.
pub type ReplayBody<B> = BufferedBody<B>;
