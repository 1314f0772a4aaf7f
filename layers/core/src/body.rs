//! Request and response body buffering shared by the layers that read a body into memory (retry,
//! idempotency, fallback).
//!
//! - [`Collect`] accumulates a body's data frames (the first chunk is kept as it is; a copy is made
//!   only once there is a second) and its trailers, and can read a body up to a byte limit
//!   ([`Collect::poll_collect`]).
//! - [`BufferedBody`] is the body a layer hands on afterwards: the buffered bytes (and trailers) from
//!   memory, the original body streamed untouched, or the part already read followed by the rest of the
//!   original body.

use std::fmt;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// Turns a frame of any [`Buf`] into a frame of [`Bytes`] (without copying when the data already is
/// [`Bytes`]).
#[inline]
pub fn frame_to_bytes<D: Buf>(frame: Frame<D>) -> Frame<Bytes> {
    frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))
}

/// Collects a body's data chunks and trailers, copying only when there is more than one chunk.
///
/// Empty chunks are skipped; trailers from several trailer frames are merged.
#[derive(Debug, Default)]
pub struct Collect {
    first: Option<Bytes>,
    more: Option<BytesMut>,
    len: usize,
    trailers: Option<HeaderMap>,
}

impl Collect {
    /// An empty collector.
    pub fn new() -> Self {
        Collect::default()
    }

    /// Adds a data chunk; returns the total length so far.
    pub fn push(&mut self, chunk: Bytes) -> usize {
        self.len = self.len.saturating_add(chunk.len());
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

    /// Adds trailers, merged into any collected before.
    pub fn push_trailers(&mut self, trailers: HeaderMap) {
        match &mut self.trailers {
            Some(existing) => existing.extend(trailers),
            None => self.trailers = Some(trailers),
        }
    }

    /// The number of data bytes collected.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no data bytes were collected (trailers do not count).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The trailers collected, if any.
    pub fn trailers(&self) -> Option<&HeaderMap> {
        self.trailers.as_ref()
    }

    /// Reads `body` to its end into this collector, stopping as soon as more than `limit` data bytes
    /// were collected.
    ///
    /// `Ready(Ok(true))`: the whole body (data and trailers) is collected. `Ready(Ok(false))`: the body
    /// is over the limit; the part read is collected and the rest is still in `body` (trailers come
    /// last, so none were read). `Ready(Err(_))`: the body failed. Frames that are neither data nor
    /// trailers are dropped.
    pub fn poll_collect<B: Body>(
        &mut self,
        mut body: Pin<&mut B>,
        cx: &mut Context<'_>,
        limit: u64,
    ) -> Poll<Result<bool, B::Error>> {
        loop {
            if body.is_end_stream() {
                return Poll::Ready(Ok(true));
            }
            let frame = match ready!(body.as_mut().poll_frame(cx)) {
                None => return Poll::Ready(Ok(true)),
                Some(Err(e)) => return Poll::Ready(Err(e)),
                Some(Ok(frame)) => frame,
            };
            match frame.into_data() {
                Ok(mut data) => {
                    let len = self.push(data.copy_to_bytes(data.remaining()));
                    if len as u64 > limit {
                        return Poll::Ready(Ok(false));
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        self.push_trailers(trailers);
                    }
                }
            }
        }
    }

    /// The data collected, as one buffer, and the trailers.
    pub fn into_parts(self) -> (Bytes, Option<HeaderMap>) {
        let data = match (self.first, self.more) {
            (_, Some(buf)) => buf.freeze(),
            (Some(b), None) => b,
            (None, None) => Bytes::new(),
        };
        (data, self.trailers)
    }

    /// The data collected, as one buffer (trailers are dropped).
    pub fn into_bytes(self) -> Bytes {
        self.into_parts().0
    }
}

pin_project! {
    /// A body a layer may have read into memory. It is one of:
    ///
    /// - **buffered**: bytes (and trailers) sent from memory: the data in one frame, then the trailers
    ///   if any ([`buffered`](Self::buffered), [`empty`](Self::empty)). Cloning the [`Bytes`] to send
    ///   them again is a reference count, not a copy;
    /// - **streamed**: the original body, passed on untouched ([`streamed`](Self::streamed));
    /// - **partial**: the part of the original body already read, then the rest of it
    ///   ([`partial`](Self::partial)), for a body found too large to buffer.
    ///
    /// Data frames are [`Bytes`]; errors are the original body's.
    pub struct BufferedBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
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

impl<B> BufferedBody<B> {
    /// `body`, passed on as it is.
    pub fn streamed(body: B) -> Self {
        BufferedBody {
            kind: Kind::Streamed { body },
        }
    }

    /// `body`, passed on as it is; the same as [`streamed`](Self::streamed).
    pub fn new(body: B) -> Self {
        Self::streamed(body)
    }

    /// A body sent from memory: `data`, then `trailers` if any.
    pub fn buffered(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        BufferedBody {
            kind: Kind::Buffered {
                data: (!data.is_empty()).then_some(data),
                trailers,
            },
        }
    }

    /// A body sent from memory; the same as [`buffered`](Self::buffered).
    pub fn replayed(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self::buffered(data, trailers)
    }

    /// An empty body (a buffered body with no data and no trailers).
    pub fn empty() -> Self {
        Self::buffered(Bytes::new(), None)
    }

    /// `prefix`, the part of `rest` already read, then the rest of `rest`.
    pub fn partial(prefix: Bytes, rest: Pin<Box<B>>) -> Self {
        BufferedBody {
            kind: Kind::Partial {
                prefix: (!prefix.is_empty()).then_some(prefix),
                body: rest,
            },
        }
    }

    /// Whether the body is sent from memory (buffered, or empty).
    pub fn is_buffered(&self) -> bool {
        matches!(self.kind, Kind::Buffered { .. })
    }

    /// Whether the body is sent from memory; the same as [`is_buffered`](Self::is_buffered).
    pub fn is_replayed(&self) -> bool {
        self.is_buffered()
    }
}

impl<B> Default for BufferedBody<B> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<B> fmt::Debug for BufferedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Buffered { data, trailers } => f
                .debug_struct("BufferedBody::Buffered")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .field("trailers", &trailers.is_some())
                .finish(),
            Kind::Streamed { .. } => f.write_str("BufferedBody::Streamed"),
            Kind::Partial { prefix, .. } => f
                .debug_struct("BufferedBody::Partial")
                .field("prefix_len", &prefix.as_ref().map_or(0, Bytes::len))
                .finish(),
        }
    }
}

impl<B: Body> Body for BufferedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let body = match self.project().kind.project() {
            KindProj::Buffered { data, trailers } => {
                return Poll::Ready(match data.take() {
                    Some(d) => Some(Ok(Frame::data(d))),
                    None => trailers.take().map(|t| Ok(Frame::trailers(t))),
                });
            }
            KindProj::Partial { prefix, body } => {
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                body.as_mut()
            }
            KindProj::Streamed { body } => body,
        };
        body.poll_frame(cx)
            .map(|f| f.map(|f| f.map(frame_to_bytes)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Streamed { body } => body.is_end_stream(),
            Kind::Partial { prefix, body } => prefix.is_none() && body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        let (prefix, inner) = match &self.kind {
            Kind::Buffered { data, .. } => {
                return SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64));
            }
            Kind::Streamed { body } => return body.size_hint(),
            Kind::Partial { prefix, body } => (prefix, body.size_hint()),
        };
        let p = prefix.as_ref().map_or(0, |d| d.len() as u64);
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(p));
        if let Some(u) = inner.upper() {
            hint.set_upper(u.saturating_add(p));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::future::poll_fn;

    use http_body_util::{BodyExt, Empty, Full};

    use super::*;

    /// A body of the given frames, with an optional exact size hint.
    struct Frames {
        frames: VecDeque<Result<Frame<Bytes>, &'static str>>,
        hint: SizeHint,
    }

    impl Frames {
        fn new(frames: Vec<Result<Frame<Bytes>, &'static str>>) -> Self {
            Frames {
                frames: frames.into(),
                hint: SizeHint::new(),
            }
        }

        fn data(chunks: &[&'static str]) -> Self {
            Frames::new(
                chunks
                    .iter()
                    .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
                    .collect(),
            )
        }
    }

    impl Body for Frames {
        type Data = Bytes;
        type Error = &'static str;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
            Poll::Ready(self.frames.pop_front())
        }

        fn size_hint(&self) -> SizeHint {
            self.hint
        }
    }

    fn trailers(name: &'static str, value: &'static str) -> HeaderMap {
        let mut t = HeaderMap::new();
        t.insert(name, value.parse().unwrap());
        t
    }

    async fn collect<B: Body + Unpin>(
        body: &mut B,
        collect: &mut Collect,
        limit: u64,
    ) -> Result<bool, B::Error> {
        poll_fn(|cx| collect.poll_collect(Pin::new(&mut *body), cx, limit)).await
    }

    #[test]
    fn collect_copies_only_for_several_chunks() {
        let one = Bytes::from_static(b"abc");
        let mut c = Collect::new();
        assert!(c.is_empty());
        c.push(one.clone());
        assert_eq!(c.len(), 3);
        let out = c.into_bytes();
        assert_eq!(out.as_ptr(), one.as_ptr(), "a single chunk is not copied");
        let mut c = Collect::default();
        c.push(Bytes::from_static(b"ab"));
        c.push(Bytes::new());
        assert_eq!(c.push(Bytes::from_static(b"cd")), 4);
        c.push(Bytes::from_static(b"e"));
        assert_eq!(c.into_bytes(), "abcde");
    }

    #[test]
    fn empty_collect_is_empty() {
        let mut c = Collect::new();
        assert_eq!(c.push(Bytes::new()), 0);
        assert!(c.is_empty());
        assert_eq!(c.trailers(), None);
        assert_eq!(c.into_parts(), (Bytes::new(), None));
    }

    #[test]
    fn collect_merges_trailers() {
        let mut c = Collect::new();
        c.push_trailers(trailers("x-a", "1"));
        c.push_trailers(trailers("x-b", "2"));
        let t = c.trailers().unwrap();
        assert_eq!(t["x-a"], "1");
        assert_eq!(t["x-b"], "2");
    }

    #[tokio::test]
    async fn poll_collect_reads_chunks_and_trailers() {
        let mut frames = Frames::data(&["hel", "", "lo"]);
        frames
            .frames
            .push_back(Ok(Frame::trailers(trailers("x-checksum", "abc"))));
        let mut c = Collect::new();
        assert_eq!(collect(&mut frames, &mut c, 5).await, Ok(true));
        let (data, t) = c.into_parts();
        assert_eq!(data, "hello");
        assert_eq!(t, Some(trailers("x-checksum", "abc")));
    }

    #[tokio::test]
    async fn poll_collect_stops_over_the_limit() {
        let mut frames = Frames::data(&["hel", "lo", " world"]);
        let mut c = Collect::new();
        assert_eq!(collect(&mut frames, &mut c, 4).await, Ok(false));
        assert_eq!(c.len(), 5);
        let prefix = c.into_bytes();
        assert_eq!(prefix, "hello");
        let body = BufferedBody::partial(prefix, Box::pin(frames));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello world");
    }

    #[tokio::test]
    async fn poll_collect_returns_the_error() {
        let mut frames = Frames::new(vec![Ok(Frame::data(Bytes::from_static(b"a"))), Err("boom")]);
        let mut c = Collect::new();
        assert_eq!(collect(&mut frames, &mut c, 10).await, Err("boom"));
    }

    #[tokio::test]
    async fn poll_collect_of_an_ended_body_reads_nothing() {
        let mut c = Collect::new();
        assert_eq!(
            collect(&mut Empty::<Bytes>::new(), &mut c, 0).await,
            Ok::<_, Infallible>(true)
        );
        assert!(c.is_empty());
    }

    #[tokio::test]
    async fn buffered_body_yields_data_then_trailers() {
        let t = trailers("x-checksum", "abc");
        let body: BufferedBody<Empty<Bytes>> =
            BufferedBody::buffered(Bytes::from_static(b"hello"), Some(t.clone()));
        assert!(body.is_buffered());
        assert!(body.is_replayed());
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(5));
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&t));
        assert_eq!(collected.to_bytes(), "hello");
    }

    #[tokio::test]
    async fn buffered_trailers_only() {
        let t = trailers("x-checksum", "abc");
        let mut body: BufferedBody<Empty<Bytes>> = BufferedBody::buffered(Bytes::new(), Some(t));
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        let frame = body.frame().await.unwrap().unwrap();
        assert!(frame.is_trailers());
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn empty_body() {
        let mut body: BufferedBody<Full<Bytes>> = BufferedBody::empty();
        assert!(body.is_buffered());
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(body.frame().await.is_none());
        assert!(BufferedBody::<Full<Bytes>>::default().is_end_stream());
        assert!(format!("{body:?}").contains("Buffered"));
    }

    #[tokio::test]
    async fn streamed_body_is_passed_through() {
        let body = BufferedBody::streamed(Full::new(Bytes::from_static(b"hello")));
        assert!(!body.is_buffered());
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(5));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
        let ended = BufferedBody::new(Empty::<Bytes>::new());
        assert!(ended.is_end_stream());
        assert_eq!(format!("{ended:?}"), "BufferedBody::Streamed");
    }

    #[tokio::test]
    async fn partial_body_is_prefix_then_rest() {
        let rest = Full::new(Bytes::from_static(b" world"));
        let body = BufferedBody::partial(Bytes::from_static(b"hello"), Box::pin(rest));
        assert!(!body.is_buffered());
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(11));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello world");
    }

    #[tokio::test]
    async fn partial_size_hint_adds_the_prefix_to_open_hints() {
        let mut rest = Frames::data(&[" world"]);
        rest.hint.set_lower(2);
        let body = BufferedBody::partial(Bytes::from_static(b"hello"), Box::pin(rest));
        let hint = body.size_hint();
        assert_eq!((hint.lower(), hint.upper()), (7, None));

        let mut rest = Frames::data(&[]);
        rest.hint.set_upper(u64::MAX);
        let body = BufferedBody::partial(Bytes::from_static(b"hello"), Box::pin(rest));
        assert_eq!(body.size_hint().upper(), Some(u64::MAX), "saturates");
    }

    #[tokio::test]
    async fn partial_with_an_empty_prefix_is_the_rest() {
        let mut body =
            BufferedBody::partial(Bytes::new(), Box::pin(Full::new(Bytes::from_static(b"x"))));
        assert_eq!(body.size_hint().exact(), Some(1));
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "x");
        assert!(body.is_end_stream());
    }

    #[test]
    fn frame_to_bytes_keeps_trailers() {
        let t = trailers("x-a", "1");
        let frame: Frame<&'static [u8]> = Frame::trailers(t.clone());
        assert_eq!(frame_to_bytes(frame).into_trailers().unwrap(), t);
        let frame = frame_to_bytes(Frame::data(&b"ab"[..]));
        assert_eq!(frame.into_data().unwrap(), "ab");
    }
}
