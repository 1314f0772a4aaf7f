//! The fallback kinds: what is served when the trigger fires.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};

use crate::body::{Collect, FallbackBody};
use crate::stale::{storable, Recorder, StaleKey, Store};
use crate::trigger::FallbackCause;

mod sealed {
    pub trait Sealed {}
}

/// A fallback kind served from the response future: [`StaticResponse`], [`RespondWith`], [`Stale`].
/// (The [`Alternate`] kind has its own service and future.) Sealed: the methods are the layer's business.
pub trait Kind: sealed::Sealed + Send + Sync + 'static {
    /// What is captured from the request before the call.
    #[doc(hidden)]
    type Capture: Send + 'static;

    /// The kind's name in counters, traces and audit records.
    #[doc(hidden)]
    const NAME: &'static str;

    /// Takes what the fallback will need from the request, before the inner service gets it.
    #[doc(hidden)]
    fn capture<B>(&self, req: Request<B>) -> (Request<B>, Self::Capture);

    /// The inner service answered and the trigger did not fire.
    #[doc(hidden)]
    fn success<B: http_body::Body>(
        &self,
        capture: Self::Capture,
        res: Response<B>,
    ) -> Response<FallbackBody<B>>;

    /// The fallback response, if there is one.
    #[doc(hidden)]
    fn fallback(&self, capture: Self::Capture, cause: &FallbackCause) -> Option<Response<Bytes>>;
}

/// A fixed response (status, headers, body), built once and cloned when served.
///
/// **Cost:** nothing is captured from the request; on success the response passes through (its body
/// wrapped in [`FallbackBody`]). Serving it clones the header map and the body's [`Bytes`] handle.
///
/// ```
/// use http::{header, HeaderValue, StatusCode};
/// use palisade_fallback::StaticResponse;
///
/// let maintenance = StaticResponse::new(StatusCode::SERVICE_UNAVAILABLE)
///     .header(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))
///     .header(header::RETRY_AFTER, HeaderValue::from_static("30"))
///     .body(r#"{"items":[],"degraded":true}"#);
/// assert_eq!(maintenance.status(), StatusCode::SERVICE_UNAVAILABLE);
/// ```
#[derive(Debug, Clone)]
pub struct StaticResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl StaticResponse {
    /// A response with `status`, no headers and an empty body.
    pub fn new(status: StatusCode) -> Self {
        StaticResponse {
            status,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    /// Adds a header (several values for one name are kept).
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    fn response(&self) -> Response<Bytes> {
        let mut res = Response::new(self.body.clone());
        *res.status_mut() = self.status;
        *res.headers_mut() = self.headers.clone();
        res
    }
}

impl sealed::Sealed for StaticResponse {}

impl Kind for StaticResponse {
    type Capture = ();
    const NAME: &'static str = "static";

    #[inline]
    fn capture<B>(&self, req: Request<B>) -> (Request<B>, ()) {
        (req, ())
    }

    #[inline]
    fn success<B: http_body::Body>(&self, _: (), res: Response<B>) -> Response<FallbackBody<B>> {
        res.map(FallbackBody::inner)
    }

    fn fallback(&self, _: (), _: &FallbackCause) -> Option<Response<Bytes>> {
        Some(self.response())
    }
}

/// A function of the request head and the cause: `Fn(&http::request::Parts, &FallbackCause) ->
/// Response<Bytes>`. Made by [`Builder::respond_with`](crate::Builder::respond_with).
///
/// **Cost:** every request's method, URI, version and headers are cloned before the call (the header
/// map clone allocates), because the request is gone by the time the fallback runs. Extensions are not
/// captured: the `Parts` given to the function has none.
pub struct RespondWith<F> {
    pub(crate) f: F,
}

impl<F> fmt::Debug for RespondWith<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RespondWith(..)")
    }
}

impl<F> sealed::Sealed for RespondWith<F> {}

impl<F> Kind for RespondWith<F>
where
    F: Fn(&Parts, &FallbackCause) -> Response<Bytes> + Send + Sync + 'static,
{
    type Capture = Parts;
    const NAME: &'static str = "function";

    fn capture<B>(&self, req: Request<B>) -> (Request<B>, Parts) {
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = req.method().clone();
        parts.uri = req.uri().clone();
        parts.version = req.version();
        parts.headers = req.headers().clone();
        (req, parts)
    }

    #[inline]
    fn success<B: http_body::Body>(&self, _: Parts, res: Response<B>) -> Response<FallbackBody<B>> {
        res.map(FallbackBody::inner)
    }

    fn fallback(&self, parts: Parts, cause: &FallbackCause) -> Option<Response<Bytes>> {
        Some((self.f)(&parts, cause))
    }
}

/// Stale-if-error: the last good response to the same `GET`. Made by
/// [`Builder::stale_if_error`](crate::Builder::stale_if_error) from a
/// [`StaleIfError`](crate::StaleIfError) configuration, whose docs describe the store and its cost.
pub struct Stale<K> {
    pub(crate) key: K,
    pub(crate) store: Arc<Store>,
}

impl<K> fmt::Debug for Stale<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stale").field("store", &self.store).finish()
    }
}

impl<K> sealed::Sealed for Stale<K> {}

impl<K: StaleKey> Kind for Stale<K> {
    type Capture = Option<String>;
    const NAME: &'static str = "stale";

    fn capture<B>(&self, req: Request<B>) -> (Request<B>, Option<String>) {
        if req.method() != Method::GET {
            return (req, None);
        }
        let (parts, body) = req.into_parts();
        let key = self.key.key(&parts);
        (Request::from_parts(parts, body), key)
    }

    fn success<B: http_body::Body>(
        &self,
        key: Option<String>,
        res: Response<B>,
    ) -> Response<FallbackBody<B>> {
        match key {
            Some(key) if storable(res.status(), res.headers()) => {
                let rec = Box::new(Recorder {
                    store: self.store.clone(),
                    key,
                    status: res.status(),
                    version: res.version(),
                    headers: res.headers().clone(),
                    collect: Collect::default(),
                });
                let (parts, body) = res.into_parts();
                let body = if http_body::Body::is_end_stream(&body) {
                    // Nothing to stream: store the empty body now.
                    rec.finish();
                    FallbackBody::inner(body)
                } else {
                    FallbackBody::recording(body, rec)
                };
                Response::from_parts(parts, body)
            }
            _ => res.map(FallbackBody::inner),
        }
    }

    fn fallback(&self, key: Option<String>, _: &FallbackCause) -> Option<Response<Bytes>> {
        self.store.lookup(&key?)
    }
}

/// The alternate-service kind: the same request (method, URI, headers, body) goes to a second service
/// (another region, a replica) when the trigger fires. Made by
/// [`Builder::alternate`](crate::Builder::alternate).
///
/// **Cost:** the request body is read into memory before the primary call, up to
/// [`max_body`](crate::Builder::max_body) bytes, and the request head is cloned; both services receive
/// a [`ReplayBody`](crate::ReplayBody). A body over the limit (by its size hint, or found while reading)
/// is streamed to the primary unbuffered and that request gets **no fallback**: the original error or
/// response is returned. The inner service must be `Clone` (the clone made ready by `poll_ready` is moved
/// into the response future while the body is read). The alternate service is cloned, made ready and
/// called only when the fallback activates; if it fails too, the primary's original outcome is returned.
#[derive(Clone)]
pub struct Alternate<A> {
    pub(crate) service: A,
}

impl<A> fmt::Debug for Alternate<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Alternate(..)")
    }
}
