//! The fallback layer: each kind, the triggers, the stale store's bounds, the alternate's request and
//! body limit, the audit rate, and the untouched success path.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{header, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use palisade_core::audit::Audit;
use palisade_core::classify::{Classified, Classify, Failure, HttpStatus, NoEos, Outcome};
use palisade_core::error::{self, BoxError, CircuitOpen, Elapsed, Overloaded, RateLimited};
use palisade_fallback::{
    FallbackCause, FallbackLayer, ReplayBody, StaleIfError, StaticResponse, Trigger, ACTIVATED_KIND,
};
use tower::{service_fn, Layer, ServiceExt};

/// What the scripted inner service does next.
#[derive(Clone)]
enum Next {
    Ok(StatusCode, &'static str),
    Err(fn() -> BoxError),
}

#[derive(Clone)]
struct Script(Arc<Mutex<Next>>);

impl Script {
    fn new(next: Next) -> Self {
        Script(Arc::new(Mutex::new(next)))
    }

    fn set(&self, next: Next) {
        *self.0.lock().unwrap() = next;
    }
}

fn circuit_open() -> BoxError {
    CircuitOpen::new(Some(Duration::from_secs(2))).into()
}

fn elapsed() -> BoxError {
    Elapsed::new(Duration::from_secs(1)).into()
}

fn overloaded() -> BoxError {
    Overloaded::new().into()
}

fn rate_limited() -> BoxError {
    RateLimited::new(Duration::from_secs(1)).into()
}

fn boom() -> BoxError {
    "connection reset".into()
}

/// An inner service driven by `script`.
fn scripted<B: Send + 'static>(
    script: Script,
) -> impl tower::Service<
    Request<B>,
    Response = Response<Full<Bytes>>,
    Error = BoxError,
    Future = impl Send,
> + Clone {
    service_fn(move |_req: Request<B>| {
        let next = script.0.lock().unwrap().clone();
        async move {
            match next {
                Next::Ok(status, body) => {
                    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                    *res.status_mut() = status;
                    Ok(res)
                }
                Next::Err(e) => Err(e()),
            }
        }
    })
}

fn unavailable_page() -> StaticResponse {
    StaticResponse::new(StatusCode::SERVICE_UNAVAILABLE)
        .header(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))
        .header(header::RETRY_AFTER, HeaderValue::from_static("30"))
        .body("served from fallback")
}

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::builder()
        .uri(path)
        .body(Empty::new())
        .expect("valid request")
}

async fn text<B>(res: Response<B>) -> String
where
    B: Body,
    B::Error: std::fmt::Debug,
{
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn static_response_on_circuit_open() {
    let layer = FallbackLayer::builder()
        .name("catalog")
        .trigger(Trigger::rejection::<CircuitOpen>())
        .static_response(unavailable_page())
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(scripted(Script::new(Next::Err(circuit_open))));

    let res = svc.oneshot(get("/items")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "text/plain");
    assert_eq!(res.headers()[header::RETRY_AFTER], "30");
    assert!(!res.body().is_inner());
    assert_eq!(text(res).await, "served from fallback");

    let counts = handle.counts();
    assert_eq!((counts.triggered, counts.served), (1, 1));
    assert_eq!(handle.activations(), 1);
    assert_eq!((handle.name(), handle.kind()), ("catalog", "static"));
}

#[tokio::test]
async fn only_the_chosen_errors_trigger() {
    let layer = FallbackLayer::builder()
        .trigger(Trigger::rejections::<(CircuitOpen, Elapsed)>())
        .static_response(unavailable_page())
        .build()
        .unwrap();
    let handle = layer.handle();
    let script = Script::new(Next::Err(elapsed));
    let svc = layer.layer(scripted(script.clone()));

    // Elapsed is chosen: fallback.
    let res = svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);

    // Overloaded is not: the original error comes back, marker intact.
    script.set(Next::Err(overloaded));
    let err = svc.clone().oneshot(get("/")).await.unwrap_err();
    assert!(error::is::<Overloaded>(&*err));

    // Responses never trigger without a classifier: a 404 and a 500 pass through.
    script.set(Next::Ok(StatusCode::NOT_FOUND, "no such item"));
    let res = svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(text(res).await, "no such item");
    script.set(Next::Ok(StatusCode::INTERNAL_SERVER_ERROR, "oops"));
    let res = svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(text(res).await, "oops");

    assert_eq!(handle.counts().triggered, 1);
    assert_eq!(handle.activations(), 1);
}

#[tokio::test]
async fn classified_trigger_fires_on_5xx_and_errors_not_404() {
    let layer = FallbackLayer::builder()
        .trigger(Trigger::classified(HttpStatus::server_errors()))
        .static_response(unavailable_page())
        .build()
        .unwrap();
    let handle = layer.handle();
    let script = Script::new(Next::Ok(StatusCode::INTERNAL_SERVER_ERROR, "oops"));
    let svc = layer.layer(scripted(script.clone()));

    let res = svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(text(res).await, "served from fallback");

    script.set(Next::Ok(StatusCode::NOT_FOUND, "no such item"));
    let res = svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    script.set(Next::Err(boom));
    let res = svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(handle.activations(), 2);
}

/// The default classifiers call palisade's local refusals `Ignored` (a breaker must not count them), yet
/// a classified trigger must still fire on them: an open circuit below is when a fallback is wanted.
#[tokio::test]
async fn classified_trigger_fires_on_local_refusals_the_classifier_ignores() {
    let classifier = HttpStatus::server_errors();
    for e in [circuit_open, overloaded] {
        assert_eq!(
            <HttpStatus as Classify<Response<()>>>::classify_error(&classifier, &*e()),
            Outcome::Ignored,
            "the premise: {}",
            e()
        );
    }
    let layer = FallbackLayer::builder()
        .trigger(Trigger::classified(classifier))
        .static_response(unavailable_page())
        .build()
        .unwrap();
    let handle = layer.handle();
    let script = Script::new(Next::Ok(StatusCode::OK, "fresh"));
    let svc = layer.layer(scripted(script.clone()));

    // A success is not touched.
    let res = svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.body().is_inner());
    assert_eq!(text(res).await, "fresh");
    assert_eq!(handle.counts().triggered, 0);

    // An open circuit, a full bulkhead (also wrapped in another error) and a plain error all fire it.
    let wrapped_circuit_open = || -> BoxError { Box::new(Wrapped(circuit_open())) };
    for (i, e) in [circuit_open, overloaded, wrapped_circuit_open, boom]
        .into_iter()
        .enumerate()
    {
        script.set(Next::Err(e));
        let res = svc.clone().oneshot(get("/")).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{}", e());
        assert_eq!(text(res).await, "served from fallback");
        assert_eq!(handle.counts().triggered, i as u64 + 1);
    }

    // And a success after them is still passed through.
    script.set(Next::Ok(StatusCode::OK, "fresh again"));
    let res = svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(text(res).await, "fresh again");
    assert_eq!(handle.activations(), 4);
}

/// An error wrapping another, to put a marker deeper in the source chain.
#[derive(Debug)]
struct Wrapped(BoxError);

impl std::fmt::Display for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "call failed: {}", self.0)
    }
}

impl std::error::Error for Wrapped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// A classifier whose `classify_error` calls some errors a success: those do not fire the trigger.
#[derive(Debug, Clone, Copy)]
struct OverloadIsFine;

impl<B> Classify<Response<B>> for OverloadIsFine {
    type Eos = NoEos;

    fn classify_response(&self, res: &Response<B>) -> Classified<NoEos> {
        Classified::Ready(if res.status().is_server_error() {
            Outcome::Failure(Failure::Status(res.status()))
        } else {
            Outcome::Success
        })
    }

    fn classify_error(&self, err: &(dyn std::error::Error + 'static)) -> Outcome {
        if error::is::<Overloaded>(err) {
            Outcome::Success
        } else {
            Outcome::Failure(Failure::Error)
        }
    }
}

#[tokio::test]
async fn classified_trigger_does_not_fire_on_an_error_classified_a_success() {
    let layer = FallbackLayer::builder()
        .trigger(Trigger::classified(OverloadIsFine))
        .static_response(unavailable_page())
        .build()
        .unwrap();
    let script = Script::new(Next::Err(overloaded));
    let svc = layer.layer(scripted(script.clone()));
    let err = svc.clone().oneshot(get("/")).await.unwrap_err();
    assert!(error::is::<Overloaded>(&*err), "returned untouched: {err}");
    script.set(Next::Err(circuit_open));
    let res = svc.oneshot(get("/")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
}

/// The other triggers match markers directly and never ask a classifier: `Ignored` changes nothing.
#[test]
fn marker_triggers_are_unaffected_by_ignored_outcomes() {
    type Res = Response<()>;
    let errors: [(&str, BoxError); 6] = [
        ("circuit open", circuit_open()),
        ("overloaded", overloaded()),
        ("elapsed", elapsed()),
        ("rate limited", rate_limited()),
        ("plain", boom()),
        ("wrapped circuit open", Box::new(Wrapped(circuit_open()))),
    ];
    let fires = |t: &Trigger| -> Vec<bool> {
        errors
            .iter()
            .map(|(_, e)| t.matches_error::<Res>(&**e))
            .collect()
    };
    assert_eq!(
        fires(&Trigger::unavailable()),
        [true, true, true, false, true, true]
    );
    assert_eq!(
        fires(&Trigger::any_rejection()),
        [true, true, true, true, false, true]
    );
    assert_eq!(
        fires(&Trigger::rejection::<CircuitOpen>()),
        [true, false, false, false, false, true]
    );
    assert_eq!(
        fires(&Trigger::rejections::<(CircuitOpen, Elapsed)>()),
        [true, false, true, false, false, true]
    );
    assert_eq!(fires(&Trigger::any_error()), [true; 6]);
    // `rejections(..).or_responses(classifier)` adds responses only, not the classifier's error verdicts.
    let t = Trigger::rejection::<CircuitOpen>().or_responses(HttpStatus::server_errors());
    let fired: Vec<bool> = errors
        .iter()
        .map(|(_, e)| t.matches_error::<Res>(&**e))
        .collect();
    assert_eq!(fired, [true, false, false, false, false, true]);
    // The classified trigger: every error (the default classifier never calls one a success).
    let t = Trigger::classified(HttpStatus::server_errors());
    for (name, e) in &errors {
        assert!(t.matches_error::<Res>(&**e), "{name}");
    }
}

#[tokio::test]
async fn rejections_or_responses_combine() {
    let layer = FallbackLayer::builder()
        .trigger(Trigger::rejection::<CircuitOpen>().or_responses(HttpStatus::server_errors()))
        .static_response(unavailable_page())
        .build()
        .unwrap();
    let script = Script::new(Next::Ok(StatusCode::BAD_GATEWAY, "bad gateway"));
    let svc = layer.layer(scripted(script.clone()));
    let res = svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    script.set(Next::Err(boom));
    let err = svc.clone().oneshot(get("/")).await.unwrap_err();
    assert_eq!(err.to_string(), "connection reset");
    script.set(Next::Err(circuit_open));
    let res = svc.oneshot(get("/")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn default_trigger_is_unavailability_not_client_rejections() {
    let layer = FallbackLayer::builder()
        .static_response(unavailable_page())
        .build()
        .unwrap();
    let script = Script::new(Next::Err(rate_limited));
    let svc = layer.layer(scripted(script.clone()));
    let err = svc.clone().oneshot(get("/")).await.unwrap_err();
    assert!(
        error::is::<RateLimited>(&*err),
        "the client must see its 429"
    );
    for e in [circuit_open, elapsed, overloaded, boom] {
        script.set(Next::Err(e));
        let res = svc.clone().oneshot(get("/")).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}

/// A body of several chunks with trailers and no size hint.
struct Chunks {
    chunks: VecDeque<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl Chunks {
    fn new(chunks: &[&'static str]) -> Self {
        Chunks {
            chunks: chunks
                .iter()
                .map(|c| Bytes::from_static(c.as_bytes()))
                .collect(),
            trailers: None,
        }
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(c) = self.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(c))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::new()
    }
}

#[tokio::test]
async fn success_path_returns_the_inner_response_untouched() {
    #[derive(Clone, Debug, PartialEq)]
    struct Marker(u32);
    let inner = service_fn(|_req: Request<Empty<Bytes>>| async {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", HeaderValue::from_static("abc"));
        let mut body = Chunks::new(&["hello ", "world"]);
        body.trailers = Some(trailers);
        let mut res = Response::new(body);
        *res.status_mut() = StatusCode::CREATED;
        res.headers_mut()
            .insert("x-request-id", HeaderValue::from_static("42"));
        res.extensions_mut().insert(Marker(7));
        Ok::<_, BoxError>(res)
    });
    let layer = FallbackLayer::builder()
        .trigger(Trigger::classified(HttpStatus::server_errors()))
        .static_response(unavailable_page())
        .build()
        .unwrap();
    let handle = layer.handle();
    let res = layer.layer(inner).oneshot(get("/")).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers().len(), 1);
    assert_eq!(res.headers()["x-request-id"], "42");
    assert_eq!(res.extensions().get::<Marker>(), Some(&Marker(7)));
    assert!(res.body().is_inner());
    let collected = res.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["x-checksum"], "abc");
    assert_eq!(collected.to_bytes(), "hello world");
    assert_eq!(handle.counts(), Default::default());
}

#[tokio::test]
async fn respond_with_gets_the_request_head_and_the_cause() {
    let layer = FallbackLayer::builder()
        .trigger(Trigger::any_error())
        .respond_with(|parts: &http::request::Parts, cause: &FallbackCause| {
            let tenant = parts
                .headers
                .get("x-tenant-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            let body = format!(
                "{} {} for {tenant}: {} {}",
                parts.method,
                parts.uri,
                cause.slug(),
                cause.rejection().map_or(0, |r| r.http_status().as_u16())
            );
            Response::builder()
                .status(StatusCode::OK)
                .header("x-fallback", "fn")
                .body(Bytes::from(body))
                .unwrap()
        })
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(scripted(Script::new(Next::Err(circuit_open))));
    let req = Request::builder()
        .method(Method::DELETE)
        .uri("/items/7?force=1")
        .header("x-tenant-id", "acme")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.headers()["x-fallback"], "fn");
    assert_eq!(
        text(res).await,
        "DELETE /items/7?force=1 for acme: circuit-open 503"
    );
    assert_eq!(handle.kind(), "function");
    assert_eq!(handle.activations(), 1);
}

/// What a service saw: method, URI, headers and the whole body.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    method: Method,
    uri: String,
    headers: http::HeaderMap,
    body: Bytes,
    trailers: Option<http::HeaderMap>,
}

/// A service that records what it received and then answers with `next`.
fn recording(
    seen: Arc<Mutex<Vec<Seen>>>,
    next: Next,
) -> impl tower::Service<
    Request<ReplayBody<Chunks>>,
    Response = Response<Full<Bytes>>,
    Error = BoxError,
    Future = impl Send,
> + Clone {
    service_fn(move |req: Request<ReplayBody<Chunks>>| {
        let seen = seen.clone();
        let next = next.clone();
        async move {
            let (parts, body) = req.into_parts();
            let collected = body.collect().await.unwrap();
            seen.lock().unwrap().push(Seen {
                method: parts.method,
                uri: parts.uri.to_string(),
                headers: parts.headers,
                trailers: collected.trailers().cloned(),
                body: collected.to_bytes(),
            });
            match next {
                Next::Ok(status, body) => {
                    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                    *res.status_mut() = status;
                    Ok(res)
                }
                Next::Err(e) => Err(e()),
            }
        }
    })
}

fn post_chunks(chunks: &[&'static str]) -> Request<Chunks> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-digest", HeaderValue::from_static("d1"));
    let mut body = Chunks::new(chunks);
    body.trailers = Some(trailers);
    Request::builder()
        .method(Method::PUT)
        .uri("http://primary.internal/orders/9?dry=false")
        .header("x-tenant-id", "acme")
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap()
}

#[tokio::test]
async fn alternate_gets_the_same_method_path_headers_and_body() {
    let primary_seen = Arc::new(Mutex::new(Vec::new()));
    let alt_seen = Arc::new(Mutex::new(Vec::new()));
    let layer = FallbackLayer::builder()
        .name("orders")
        .trigger(Trigger::classified(HttpStatus::server_errors()))
        .alternate(recording(
            alt_seen.clone(),
            Next::Ok(StatusCode::OK, "from the replica"),
        ))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(recording(
        primary_seen.clone(),
        Next::Ok(StatusCode::SERVICE_UNAVAILABLE, "primary down"),
    ));

    let res = svc
        .oneshot(post_chunks(&["{\"qty\":", "3}"]))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.body().is_alternate());
    assert_eq!(text(res).await, "from the replica");

    let primary = primary_seen.lock().unwrap().clone();
    let alt = alt_seen.lock().unwrap().clone();
    assert_eq!(primary.len(), 1);
    assert_eq!(
        alt, primary,
        "the alternate saw exactly the primary's request"
    );
    let seen = &alt[0];
    assert_eq!(seen.method, Method::PUT);
    assert_eq!(seen.uri, "http://primary.internal/orders/9?dry=false");
    assert_eq!(seen.headers["x-tenant-id"], "acme");
    assert_eq!(seen.headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(seen.body, "{\"qty\":3}");
    assert_eq!(seen.trailers.as_ref().unwrap()["x-digest"], "d1");
    assert_eq!(handle.kind(), "alternate");
    assert_eq!(handle.activations(), 1);
}

#[tokio::test]
async fn alternate_success_path_passes_the_primary_response() {
    let alt_seen = Arc::new(Mutex::new(Vec::new()));
    let layer = FallbackLayer::builder()
        .alternate(recording(alt_seen.clone(), Next::Ok(StatusCode::OK, "alt")))
        .build()
        .unwrap();
    let primary_seen = Arc::new(Mutex::new(Vec::new()));
    let svc = layer.layer(recording(
        primary_seen.clone(),
        Next::Ok(StatusCode::OK, "primary"),
    ));
    let res = svc.oneshot(post_chunks(&["a", "b"])).await.unwrap();
    assert!(res.body().is_inner());
    assert_eq!(text(res).await, "primary");
    assert_eq!(primary_seen.lock().unwrap()[0].body, "ab");
    assert!(alt_seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn over_limit_body_gets_no_fallback() {
    let alt_seen = Arc::new(Mutex::new(Vec::new()));
    let primary_seen = Arc::new(Mutex::new(Vec::new()));
    let layer = FallbackLayer::builder()
        .trigger(Trigger::any_error())
        .max_body(8)
        .alternate(recording(alt_seen.clone(), Next::Ok(StatusCode::OK, "alt")))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(recording(primary_seen.clone(), Next::Err(circuit_open)));

    // Found over the limit while reading (no size hint): the primary still gets the whole body.
    let err = svc
        .clone()
        .oneshot(post_chunks(&["0123", "4567", "89"]))
        .await
        .unwrap_err();
    assert!(error::is::<CircuitOpen>(&*err), "the original error: {err}");
    assert_eq!(primary_seen.lock().unwrap()[0].body, "0123456789");
    assert!(alt_seen.lock().unwrap().is_empty());

    // At the limit: buffered, the alternate answers.
    let res = svc
        .clone()
        .oneshot(post_chunks(&["0123", "4567"]))
        .await
        .unwrap();
    assert_eq!(text(res).await, "alt");

    let counts = handle.counts();
    assert_eq!(counts.body_too_large, 1);
    assert_eq!(counts.unavailable, 1);
    assert_eq!(counts.served, 1);
}

#[tokio::test]
async fn body_over_limit_by_size_hint_is_streamed_without_fallback() {
    let layer = FallbackLayer::builder()
        .trigger(Trigger::any_error())
        .max_body(4)
        .alternate(service_fn(|_req: Request<ReplayBody<Full<Bytes>>>| async {
            Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(b"alt"))))
        }))
        .build()
        .unwrap();
    let handle = layer.handle();
    let primary = service_fn(|req: Request<ReplayBody<Full<Bytes>>>| async move {
        assert!(!req.body().is_replayed(), "streamed, not buffered");
        let body = req.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "too long");
        Err::<Response<Full<Bytes>>, BoxError>(circuit_open())
    });
    let req = Request::post("/")
        .body(Full::new(Bytes::from_static(b"too long")))
        .unwrap();
    let err = layer.layer(primary).oneshot(req).await.unwrap_err();
    assert!(error::is::<CircuitOpen>(&*err));
    assert_eq!(handle.counts().body_too_large, 1);
    assert_eq!(handle.activations(), 0);
}

#[tokio::test]
async fn failed_alternate_returns_the_original_error() {
    let alt_seen = Arc::new(Mutex::new(Vec::new()));
    let layer = FallbackLayer::builder()
        .trigger(Trigger::rejection::<CircuitOpen>())
        .alternate(recording(alt_seen.clone(), Next::Err(boom)))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(recording(Arc::default(), Next::Err(circuit_open)));
    let err = svc.oneshot(post_chunks(&["x"])).await.unwrap_err();
    assert!(error::is::<CircuitOpen>(&*err));
    assert_eq!(alt_seen.lock().unwrap().len(), 1);
    let counts = handle.counts();
    assert_eq!((counts.alternate_failed, counts.served), (1, 0));
}

fn stale_layer(
    config: StaleIfError,
) -> FallbackLayer<palisade_fallback::Stale<palisade_fallback::DefaultKey>> {
    FallbackLayer::builder()
        .name("items")
        .trigger(Trigger::rejection::<CircuitOpen>())
        .stale_if_error(config)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn stale_serves_the_last_good_get_with_age_and_warning() {
    let layer = stale_layer(StaleIfError::new().max_age(Duration::from_secs(300)));
    let handle = layer.handle();
    let script = Script::new(Next::Ok(StatusCode::OK, "v1"));
    let svc = layer.layer(scripted(script.clone()));

    let res = svc.clone().oneshot(get("/items?page=2")).await.unwrap();
    assert!(res.headers().get("x-palisade-stale").is_none());
    assert_eq!(text(res).await, "v1"); // stored when the body ends
    assert_eq!(handle.stale_entries(), 1);

    script.set(Next::Ok(StatusCode::OK, "v2"));
    assert_eq!(
        text(svc.clone().oneshot(get("/items?page=2")).await.unwrap()).await,
        "v2"
    );

    tokio::time::advance(Duration::from_secs(42)).await;
    script.set(Next::Err(circuit_open));
    let res = svc.clone().oneshot(get("/items?page=2")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::AGE], "42");
    assert_eq!(
        res.headers()[header::WARNING],
        "110 - \"Response is Stale\""
    );
    assert_eq!(res.headers()["x-palisade-stale"], "true");
    assert_eq!(text(res).await, "v2", "the last good response");

    // Another query string is another key: nothing stored, the original error.
    let err = svc.clone().oneshot(get("/items?page=3")).await.unwrap_err();
    assert!(error::is::<CircuitOpen>(&*err));
    let counts = handle.counts();
    assert_eq!((counts.served, counts.unavailable), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn stale_entry_older_than_max_age_is_not_served() {
    let layer = stale_layer(StaleIfError::new().max_age(Duration::from_secs(60)));
    let handle = layer.handle();
    let script = Script::new(Next::Ok(StatusCode::OK, "v1"));
    let svc = layer.layer(scripted(script.clone()));
    text(svc.clone().oneshot(get("/a")).await.unwrap()).await;

    script.set(Next::Err(circuit_open));
    tokio::time::advance(Duration::from_secs(60)).await;
    let res = svc.clone().oneshot(get("/a")).await.unwrap();
    assert_eq!(
        res.headers()[header::AGE],
        "60",
        "exactly max-age is still served"
    );

    tokio::time::advance(Duration::from_secs(1)).await;
    let err = svc.clone().oneshot(get("/a")).await.unwrap_err();
    assert!(error::is::<CircuitOpen>(&*err));
    assert_eq!(handle.stale_entries(), 0, "the expired entry was dropped");
}

#[tokio::test]
async fn stale_store_is_bounded_in_entries() {
    let layer = stale_layer(StaleIfError::new().max_entries(2));
    let handle = layer.handle();
    let script = Script::new(Next::Ok(StatusCode::OK, "fresh"));
    let svc = layer.layer(scripted(script.clone()));
    for path in ["/a", "/b", "/c"] {
        text(svc.clone().oneshot(get(path)).await.unwrap()).await;
    }
    assert_eq!(handle.stale_entries(), 2);
    script.set(Next::Err(circuit_open));
    assert!(
        svc.clone().oneshot(get("/a")).await.is_err(),
        "the oldest was evicted"
    );
    for path in ["/b", "/c"] {
        let res = svc.clone().oneshot(get(path)).await.unwrap();
        assert_eq!(res.headers()["x-palisade-stale"], "true");
    }
}

#[tokio::test]
async fn stale_store_is_bounded_in_bytes() {
    const BODY: &str = "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789";
    const BIG: &str = "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789";
    // Each entry: key "GET /x" (6) + 100-byte body, no headers: 106 bytes.
    let layer = stale_layer(StaleIfError::new().max_bytes(300).max_entry_bytes(120));
    let handle = layer.handle();
    let script = Script::new(Next::Ok(StatusCode::OK, BODY));
    let svc = layer.layer(scripted(script.clone()));
    for path in ["/a", "/b", "/c"] {
        text(svc.clone().oneshot(get(path)).await.unwrap()).await;
        assert!(handle.stale_bytes() <= 300);
    }
    assert_eq!((handle.stale_entries(), handle.stale_bytes()), (2, 212));

    // A body over the per-entry limit streams through whole but is not stored.
    script.set(Next::Ok(StatusCode::OK, BIG));
    assert_eq!(
        text(svc.clone().oneshot(get("/big")).await.unwrap()).await,
        BIG
    );
    assert_eq!(handle.stale_entries(), 2);
    script.set(Next::Err(circuit_open));
    assert!(svc.clone().oneshot(get("/big")).await.is_err());
    assert!(
        svc.clone().oneshot(get("/a")).await.is_err(),
        "evicted for bytes"
    );
    assert_eq!(
        text(svc.clone().oneshot(get("/c")).await.unwrap()).await,
        BODY
    );
}

#[tokio::test]
async fn stale_is_for_get_only_and_skips_private_responses() {
    let layer = stale_layer(StaleIfError::new());
    let handle = layer.handle();
    let inner = service_fn(|req: Request<Empty<Bytes>>| async move {
        if req.uri().path() == "/down" {
            return Err::<Response<Full<Bytes>>, BoxError>(circuit_open());
        }
        let mut res = Response::new(Full::new(Bytes::from_static(b"body")));
        if req.uri().path() == "/private" {
            res.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=0, private"),
            );
        }
        if req.uri().path() == "/cookie" {
            res.headers_mut()
                .insert(header::SET_COOKIE, HeaderValue::from_static("sid=1"));
        }
        Ok(res)
    });
    let svc = layer.layer(inner);
    let post = Request::post("/items").body(Empty::<Bytes>::new()).unwrap();
    text(svc.clone().oneshot(post).await.unwrap()).await;
    for path in ["/private", "/cookie"] {
        text(svc.clone().oneshot(get(path)).await.unwrap()).await;
    }
    let authorized = Request::get("/items")
        .header(header::AUTHORIZATION, "Bearer t")
        .body(Empty::<Bytes>::new())
        .unwrap();
    text(svc.clone().oneshot(authorized).await.unwrap()).await;
    assert_eq!(handle.stale_entries(), 0);

    let post = Request::post("/down").body(Empty::<Bytes>::new()).unwrap();
    assert!(svc.oneshot(post).await.is_err());
}

#[tokio::test]
async fn stale_key_function_separates_tenants() {
    let layer = FallbackLayer::builder()
        .trigger(Trigger::rejection::<CircuitOpen>())
        .stale_if_error(StaleIfError::new().key_fn(|parts: &http::request::Parts| {
            let tenant = parts.headers.get("x-tenant-id")?.to_str().ok()?;
            Some(format!("{tenant} {}", parts.uri))
        }))
        .build()
        .unwrap();
    let script = Script::new(Next::Ok(StatusCode::OK, "acme's"));
    let svc = layer.layer(scripted(script.clone()));
    let req = |tenant: &'static str| {
        Request::get("/me")
            .header("x-tenant-id", tenant)
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    text(svc.clone().oneshot(req("acme")).await.unwrap()).await;
    script.set(Next::Err(circuit_open));
    assert_eq!(
        text(svc.clone().oneshot(req("acme")).await.unwrap()).await,
        "acme's"
    );
    assert!(svc.clone().oneshot(req("globex")).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn activations_are_audited_at_most_once_a_minute_with_counts() {
    let (audit, ring) = Audit::memory(100);
    let layer = FallbackLayer::builder()
        .name("catalog")
        .trigger(Trigger::rejection::<CircuitOpen>())
        .audit(&audit)
        .static_response(unavailable_page())
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(scripted(Script::new(Next::Err(circuit_open))));
    let flood = |n: usize| {
        let svc = svc.clone();
        async move {
            for _ in 0..n {
                let res = svc.clone().oneshot(get("/")).await.unwrap();
                assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
            }
        }
    };
    let activations = |records: &[palisade_core::audit::AuditRecord]| -> Vec<u64> {
        records
            .iter()
            .filter(|r| r.kind == ACTIVATED_KIND)
            .map(|r| r.details["count"].as_u64().unwrap())
            .collect()
    };

    flood(10).await;
    audit.flush().await.unwrap();
    assert_eq!(
        activations(&ring.records()),
        vec![1],
        "the first activation is recorded at once"
    );
    let first = &ring.records()[0];
    assert_eq!(first.details["fallback"], "catalog");
    assert_eq!(first.details["kind"], "static");
    assert_eq!(first.details["cause"], "circuit-open");

    tokio::time::advance(Duration::from_secs(59)).await;
    flood(5).await;
    audit.flush().await.unwrap();
    assert_eq!(
        activations(&ring.records()),
        vec![1],
        "still the same minute"
    );

    tokio::time::advance(Duration::from_secs(1)).await;
    flood(3).await;
    audit.flush().await.unwrap();
    // 9 + 5 not yet recorded, plus the one that wrote the record.
    assert_eq!(activations(&ring.records()), vec![1, 15]);

    tokio::time::advance(Duration::from_secs(600)).await;
    flood(1).await;
    audit.flush().await.unwrap();
    let counts = activations(&ring.records());
    assert_eq!(counts, vec![1, 15, 3]);
    assert_eq!(handle.activations(), 19);
    assert_eq!(
        counts.iter().sum::<u64>(),
        19,
        "every activation is in exactly one record"
    );
    audit.verify(&ring.records(), None).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_activations_write_one_record_per_minute() {
    let (audit, ring) = Audit::memory(100);
    let layer = FallbackLayer::builder()
        .audit(&audit)
        .static_response(unavailable_page())
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(scripted(Script::new(Next::Err(circuit_open))));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                for _ in 0..250 {
                    svc.clone().oneshot(get("/")).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    audit.flush().await.unwrap();
    let records = ring.records();
    let n = records.iter().filter(|r| r.kind == ACTIVATED_KIND).count();
    assert!(n <= 2, "one record per minute, not per request ({n})"); // a minute boundary may pass
    assert_eq!(handle.activations(), 2000);
}

#[tokio::test]
async fn one_layer_shares_state_between_services() {
    let layer = FallbackLayer::builder()
        .static_response(unavailable_page())
        .build()
        .unwrap();
    let handle = layer.handle();
    let a = layer.layer(scripted(Script::new(Next::Err(circuit_open))));
    let b = layer.layer(scripted(Script::new(Next::Err(circuit_open))));
    a.oneshot(get("/")).await.unwrap();
    b.oneshot(get("/")).await.unwrap();
    assert_eq!(handle.activations(), 2);
}

#[test]
fn build_errors_name_the_setting() {
    let err = FallbackLayer::builder()
        .name("")
        .static_response(unavailable_page())
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "name");
    let cases = [
        (StaleIfError::new().max_entries(0), "max_entries"),
        (StaleIfError::new().max_bytes(0), "max_bytes"),
        (StaleIfError::new().max_entry_bytes(0), "max_entry_bytes"),
        (
            StaleIfError::new().max_bytes(10).max_entry_bytes(11),
            "max_entry_bytes",
        ),
        (StaleIfError::new().max_age(Duration::ZERO), "max_age"),
    ];
    for (config, setting) in cases {
        let err = FallbackLayer::builder()
            .stale_if_error(config)
            .build()
            .unwrap_err();
        assert_eq!(err.setting(), setting);
        assert!(err.to_string().contains(setting), "{err}");
    }
}

#[test]
fn header_name_constant_is_lowercase() {
    assert_eq!(
        palisade_fallback::STALE_HEADER,
        HeaderName::from_static("x-palisade-stale")
    );
}

/// Every size the builder takes has a documented maximum; above it, `build()` refuses and names it.
#[test]
fn sizes_above_their_documented_maximum_are_refused() {
    use palisade_fallback::{
        MAX_BODY_LIMIT, MAX_STALE_BYTES, MAX_STALE_ENTRIES, MAX_STALE_ENTRY_BYTES,
    };
    let inner = service_fn(|_req: Request<ReplayBody<Empty<Bytes>>>| async {
        Ok::<_, BoxError>(Response::new(Empty::<Bytes>::new()))
    });

    // The alternate kind's request buffer, one per request in flight; refused for every kind.
    assert!(FallbackLayer::builder()
        .max_body(MAX_BODY_LIMIT)
        .alternate(inner)
        .build()
        .is_ok());
    for bytes in [MAX_BODY_LIMIT + 1, u64::MAX] {
        let err = FallbackLayer::builder()
            .max_body(bytes)
            .alternate(inner)
            .build()
            .unwrap_err();
        assert_eq!(err.setting(), "max_body");
        assert!(err.problem().contains(&MAX_BODY_LIMIT.to_string()), "{err}");
        let err = FallbackLayer::builder()
            .max_body(bytes)
            .static_response(unavailable_page())
            .build()
            .unwrap_err();
        assert_eq!(err.setting(), "max_body");
    }

    // The stale store.
    let at_most = StaleIfError::new()
        .max_entries(MAX_STALE_ENTRIES)
        .max_bytes(MAX_STALE_BYTES)
        .max_entry_bytes(MAX_STALE_ENTRY_BYTES);
    assert!(FallbackLayer::builder()
        .stale_if_error(at_most)
        .build()
        .is_ok());
    let cases = [
        (
            StaleIfError::new().max_entries(MAX_STALE_ENTRIES + 1),
            "max_entries",
        ),
        (StaleIfError::new().max_entries(usize::MAX), "max_entries"),
        (
            StaleIfError::new().max_bytes(MAX_STALE_BYTES + 1),
            "max_bytes",
        ),
        (StaleIfError::new().max_bytes(usize::MAX), "max_bytes"),
        (
            StaleIfError::new()
                .max_bytes(MAX_STALE_BYTES)
                .max_entry_bytes(MAX_STALE_ENTRY_BYTES + 1),
            "max_entry_bytes",
        ),
    ];
    for (config, setting) in cases {
        let err = FallbackLayer::builder()
            .stale_if_error(config)
            .build()
            .unwrap_err();
        assert_eq!(err.setting(), setting, "{err}");
        assert!(err.problem().contains("at most"), "{err}");
    }
}
