//! The response body: the inner body, an injected empty body, or the inner body stalling.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The response body of [`Chaos`](crate::Chaos): the service's body (passed through, or stalling
    /// after some bytes under a [`body_stall`](crate::Fault::body_stall) fault), or the empty body of an
    /// injected [`status`](crate::Fault::status) response.
    pub struct ResponseBody<B> {
        #[pin]
        kind: BodyKind<B>,
    }
}

pin_project! {
    #[project = BodyProj]
    enum BodyKind<B> {
        Inner { #[pin] body: B },
        Empty,
        // Boxed: keeps the body no larger than `B` for responses without a stall.
        Stalling { stall: Pin<Box<Stalling<B>>> },
    }
}

pin_project! {
    struct Stalling<B> {
        #[pin]
        body: B,
        remaining: u64,
        stalled: bool,
    }
}

impl<B> ResponseBody<B> {
    /// Passes `body` through.
    pub fn new(body: B) -> Self {
        ResponseBody {
            kind: BodyKind::Inner { body },
        }
    }

    /// An empty body (of an injected status response).
    pub fn empty() -> Self {
        ResponseBody {
            kind: BodyKind::Empty,
        }
    }

    /// Passes `body`'s data frames through until at least `after_bytes` bytes went out, then stalls
    /// for good: see [`Fault::body_stall`](crate::Fault::body_stall).
    pub fn stalled(body: B, after_bytes: u64) -> Self {
        ResponseBody {
            kind: BodyKind::Stalling {
                stall: Box::pin(Stalling {
                    body,
                    remaining: after_bytes,
                    stalled: false,
                }),
            },
        }
    }

    /// Whether this body has stalled (it will never yield another frame).
    pub fn is_stalled(&self) -> bool {
        matches!(&self.kind, BodyKind::Stalling { stall } if stall.stalled)
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        match self.project().kind.project() {
            BodyProj::Inner { body } => body.poll_frame(cx),
            BodyProj::Empty => Poll::Ready(None),
            BodyProj::Stalling { stall } => {
                let this = stall.as_mut().project();
                let (body, remaining, stalled) = (this.body, this.remaining, this.stalled);
                if *stalled || *remaining == 0 {
                    // Stalled: no waker is kept; only dropping the body ends it.
                    *stalled = true;
                    return Poll::Pending;
                }
                match body.poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => match frame.data_ref() {
                        Some(data) => {
                            let len = u64::try_from(data.remaining()).unwrap_or(u64::MAX);
                            *remaining = remaining.saturating_sub(len);
                            Poll::Ready(Some(Ok(frame)))
                        }
                        // Trailers: the end of the body, which a stalled body never reaches.
                        None => {
                            *stalled = true;
                            Poll::Pending
                        }
                    },
                    // The end comes before the stall point: stall before the end instead.
                    Poll::Ready(None) => {
                        *stalled = true;
                        Poll::Pending
                    }
                    other => other,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Inner { body } => body.is_end_stream(),
            BodyKind::Empty => true,
            BodyKind::Stalling { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Inner { body } => body.size_hint(),
            BodyKind::Empty => SizeHint::with_exact(0),
            // The announced length stays, as when a real upstream stops mid-body.
            BodyKind::Stalling { stall } => stall.body.size_hint(),
        }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ResponseBody");
        match &self.kind {
            BodyKind::Inner { .. } => d.field("kind", &"inner"),
            BodyKind::Empty => d.field("kind", &"empty"),
            BodyKind::Stalling { stall } => d
                .field("kind", &"stalling")
                .field("remaining", &stall.remaining)
                .field("stalled", &stall.stalled),
        };
        d.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_larger_than_the_inner_body() {
        use std::mem::size_of;
        assert_eq!(size_of::<ResponseBody<String>>(), size_of::<String>());
        assert!(
            size_of::<ResponseBody<http_body_util::Full<bytes::Bytes>>>()
                <= size_of::<http_body_util::Full<bytes::Bytes>>() + 8
        );
    }
}
