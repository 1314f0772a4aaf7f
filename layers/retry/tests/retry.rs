//! Behaviour of the retry layer, on paused time.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use palisade_core::audit::Audit;
use palisade_core::classify::{ErrorsOnly, HttpStatus};
use palisade_core::deadline::{encode_grpc_timeout, parse_grpc_timeout, Deadline, GRPC_TIMEOUT};
use palisade_core::error::{is, BoxError, CircuitOpen, Elapsed, Overloaded, RateLimited};
use palisade_core::rng::SharedRng;
use palisade_retry::{Backoff, Budget, BuildError, RetryBody, RetryLayer, GAVE_UP_KIND};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// What the upstream saw on one call.
#[derive(Debug, Clone)]
struct Call {
    at: Instant,
    method: Method,
    body: Bytes,
    trailers: Option<HeaderMap>,
    /// The `grpc-timeout` header it carried.
    grpc_timeout: Option<String>,
    /// The [`Tag`] extension it carried.
    tag: Option<Tag>,
}

/// A request extension, to see that every attempt carries the original's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tag(u32);

type Script = dyn Fn(usize) -> Result<Response<()>, BoxError> + Send + Sync;

/// An upstream answering call `n` (0-based) with `script(n)`, recording every call.
#[derive(Clone)]
struct Upstream {
    calls: Arc<Mutex<Vec<Call>>>,
    started: Arc<AtomicUsize>,
    readies: Arc<AtomicUsize>,
    script: Arc<Script>,
}

impl Upstream {
    fn new(
        script: impl Fn(usize) -> Result<Response<()>, BoxError> + Send + Sync + 'static,
    ) -> Self {
        Upstream {
            calls: Arc::default(),
            started: Arc::default(),
            readies: Arc::default(),
            script: Arc::new(script),
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.started.load(SeqCst)
    }

    /// Gaps between consecutive calls.
    fn gaps(&self) -> Vec<Duration> {
        let calls = self.calls();
        calls.windows(2).map(|w| w[1].at - w[0].at).collect()
    }
}

impl<B> Service<Request<RetryBody<B>>> for Upstream
where
    B: Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<()>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<()>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.readies.fetch_add(1, SeqCst);
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RetryBody<B>>) -> Self::Future {
        let n = self.started.fetch_add(1, SeqCst);
        let at = Instant::now();
        let calls = self.calls.clone();
        let outcome = (self.script)(n);
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let collected = body.collect().await.map_err(Into::into)?;
            let trailers = collected.trailers().cloned();
            calls.lock().unwrap().push(Call {
                at,
                method: parts.method,
                body: collected.to_bytes(),
                trailers,
                grpc_timeout: parts
                    .headers
                    .get("grpc-timeout")
                    .map(|v| v.to_str().unwrap().to_owned()),
                tag: parts.extensions.get::<Tag>().copied(),
            });
            outcome
        })
    }
}

fn status(code: u16) -> Result<Response<()>, BoxError> {
    Ok(Response::builder().status(code).body(()).unwrap())
}

fn with_header(code: u16, name: &str, value: &str) -> Result<Response<()>, BoxError> {
    Ok(Response::builder()
        .status(code)
        .header(name, value)
        .body(())
        .unwrap())
}

fn get() -> Request<Empty<Bytes>> {
    Request::get("/items/1").body(Empty::new()).unwrap()
}

/// A layer without jitter or budget, so delays are exact.
fn plain(attempts: u32) -> palisade_retry::RetryBuilder {
    RetryLayer::builder()
        .max_attempts(attempts)
        .backoff(Backoff::exponential(ms(100), Duration::from_secs(60)))
        .budget(Budget::unlimited())
}

#[tokio::test(start_paused = true)]
async fn exponential_delays_match_the_formula() {
    let up = Upstream::new(|_| status(503));
    let layer = RetryLayer::builder()
        .max_attempts(6)
        .backoff(Backoff::exponential(ms(100), Duration::from_secs(1)))
        .budget(Budget::unlimited())
        .build()
        .unwrap();
    let handle = layer.handle();
    let res = layer.layer(up.clone()).oneshot(get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    // min(max, base × 2^n): 100, 200, 400, 800, then capped at 1000.
    assert_eq!(up.gaps(), [ms(100), ms(200), ms(400), ms(800), ms(1000)]);
    assert_eq!(handle.retries(), 5);
    assert_eq!(handle.gave_up(), 1);
}

#[tokio::test(start_paused = true)]
async fn jittered_delays_are_the_seeded_draws() {
    let up = Upstream::new(|_| status(500));
    let (base, max, jitter) = (ms(100), ms(1500), Duration::from_secs(1));
    let layer = RetryLayer::builder()
        .max_attempts(6)
        .backoff(Backoff::exponential(base, max).jitter(jitter))
        .budget(Budget::unlimited())
        .seed(42)
        .build()
        .unwrap();
    layer.layer(up.clone()).oneshot(get()).await.unwrap();
    let draws = SharedRng::seeded(42);
    let gaps = up.gaps();
    assert_eq!(gaps.len(), 5);
    for (n, gap) in gaps.into_iter().enumerate() {
        let expected = (base * 2u32.pow(n as u32)).min(max) + draws.duration_up_to(jitter);
        // The timer wheel fires on whole milliseconds: the observed sleep is the formula rounded up.
        assert!(
            gap >= expected && gap <= expected + ms(1),
            "retry {n}: slept {gap:?}, formula says {expected:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn decorrelated_jitter_stays_within_bounds() {
    let up = Upstream::new(|_| status(502));
    let (base, cap) = (ms(50), Duration::from_secs(2));
    let layer = RetryLayer::builder()
        .max_attempts(30)
        .backoff(Backoff::decorrelated(base, cap))
        .budget(Budget::unlimited())
        .seed(7)
        .build()
        .unwrap();
    layer.layer(up.clone()).oneshot(get()).await.unwrap();
    let gaps = up.gaps();
    assert_eq!(gaps.len(), 29);
    let mut prev = base;
    for gap in &gaps {
        assert!(*gap >= base, "{gap:?} below the base");
        assert!(*gap <= cap + ms(1), "{gap:?} above the cap");
        assert!(
            *gap <= prev * 3 + ms(1),
            "{gap:?} above 3 × the previous {prev:?}"
        );
        prev = *gap;
    }
    // Random, not a fixed schedule.
    assert!(gaps.windows(2).any(|w| w[1] < w[0]));
}

#[tokio::test(start_paused = true)]
async fn budget_bounds_a_failure_storm() {
    let up = Upstream::new(|_| Err("connection refused".into()));
    let (ratio, floor, window) = (0.1, 5u32, 10u64);
    let layer = RetryLayer::builder()
        .max_attempts(5)
        .backoff(Backoff::exponential(ms(10), ms(100)))
        .budget(Budget::new(ratio, floor, Duration::from_secs(window)))
        .build()
        .unwrap();
    let handle = layer.handle();
    let requests = 1000u64;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..requests {
        // A service per request, as axum makes them: the budget is the layer's.
        let svc = layer.layer(up.clone());
        tasks.spawn(svc.oneshot(get()));
    }
    let mut failed = 0;
    while let Some(r) = tasks.join_next().await {
        assert!(r.unwrap().is_err());
        failed += 1;
    }
    assert_eq!(failed, requests);
    let attempts = up.count() as u64;
    let bound = (requests as f64 * (1.0 + ratio)) as u64 + u64::from(floor) * window;
    assert!(attempts <= bound, "{attempts} attempts, bound {bound}");
    assert_eq!(attempts, requests + handle.retries());
    // The budget was used, then refused: without it there would be 5000 attempts.
    assert!(handle.retries() >= 100, "{handle:?}");
    assert!(handle.budget_refused() > 0);
    assert!(handle.budget_exhausted());
    // Every request ended either on its last attempt or refused by the budget.
    assert_eq!(handle.gave_up() + handle.budget_refused(), requests);
    assert_eq!(handle.requests(), requests);
}

#[tokio::test(start_paused = true)]
async fn budget_refills_as_the_window_slides() {
    let up = Upstream::new(|_| status(503));
    let layer = RetryLayer::builder()
        .max_attempts(2)
        .backoff(Backoff::exponential(ms(10), ms(10)))
        .budget(Budget::new(0.0, 1, Duration::from_secs(2)))
        .build()
        .unwrap();
    let handle = layer.handle();
    for _ in 0..3 {
        layer.layer(up.clone()).oneshot(get()).await.unwrap();
    }
    // Floor of 1/s over 2 s: two retries, then refused.
    assert_eq!((handle.retries(), handle.budget_refused()), (2, 1));
    tokio::time::sleep(Duration::from_secs(3)).await;
    layer.layer(up.clone()).oneshot(get()).await.unwrap();
    assert_eq!(handle.retries(), 3);
    assert!(!handle.budget_exhausted());
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    let up = Upstream::new(|n| match n {
        0 => with_header(503, "retry-after", "3"),
        _ => status(200),
    });
    let res = plain(3)
        .build()
        .unwrap()
        .layer(up.clone())
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(up.gaps(), [Duration::from_secs(3)]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_on_429_is_honoured_and_capped() {
    // 429 is not a failure for the classifier, but a throttling answer is retried anyway.
    let up = Upstream::new(|n| match n {
        0 => with_header(429, "retry-after", "120"),
        1 => with_header(429, "retry-after", "2"),
        _ => status(200),
    });
    let layer = plain(3)
        .classify(HttpStatus::server_errors())
        .retry_after_cap(Duration::from_secs(10))
        .build()
        .unwrap();
    let res = layer.layer(up.clone()).oneshot(get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // 120 s capped to 10 s; then 2 s (above the 200 ms backoff).
    assert_eq!(up.gaps(), [Duration::from_secs(10), Duration::from_secs(2)]);
}

#[tokio::test(start_paused = true)]
async fn a_short_hint_never_shortens_the_backoff() {
    let up = Upstream::new(|n| match n {
        0 => with_header(503, "retry-after", "0"),
        _ => status(200),
    });
    plain(2)
        .build()
        .unwrap()
        .layer(up.clone())
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(up.gaps(), [ms(100)]);
}

#[tokio::test(start_paused = true)]
async fn rate_limited_retry_after_is_honoured() {
    let up = Upstream::new(|n| match n {
        0 => Err(RateLimited::new(Duration::from_secs(2)).into()),
        1 => Err(Overloaded::new().with_retry_after(ms(1500)).into()),
        _ => status(200),
    });
    let res = plain(3)
        .build()
        .unwrap()
        .layer(up.clone())
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(up.gaps(), [Duration::from_secs(2), ms(1500)]);
}

#[tokio::test(start_paused = true)]
async fn circuit_open_is_never_retried() {
    let up = Upstream::new(|_| Err(CircuitOpen::new(Some(ms(50))).into()));
    let layer = plain(5).build().unwrap();
    let handle = layer.handle();
    let err = layer.layer(up.clone()).oneshot(get()).await.unwrap_err();
    assert!(
        is::<CircuitOpen>(&*err),
        "the marker is returned as-is: {err}"
    );
    assert_eq!(up.count(), 1);
    assert_eq!((handle.retries(), handle.gave_up()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn exhausted_retries_return_the_last_error_as_is() {
    let up = Upstream::new(|n| {
        if n < 2 {
            Err("transient".into())
        } else {
            Err(Overloaded::new().into())
        }
    });
    let err = plain(3)
        .build()
        .unwrap()
        .layer(up.clone())
        .oneshot(get())
        .await
        .unwrap_err();
    assert!(err.downcast_ref::<Overloaded>().is_some(), "{err:?}");
    assert_eq!(up.count(), 3);
}

fn post(key: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = Request::post("/orders");
    if let Some(k) = key {
        b = b.header("idempotency-key", k);
    }
    b.body(Full::new(Bytes::from_static(b"{\"qty\":1}")))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn post_without_idempotency_key_is_not_retried() {
    let up = Upstream::new(|_| status(503));
    let layer = plain(5).build().unwrap();
    let res = layer.layer(up.clone()).oneshot(post(None)).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(up.count(), 1);
    // Sent untouched.
    assert_eq!(up.calls()[0].body, "{\"qty\":1}");
    assert_eq!(layer.handle().retries(), 0);
}

#[tokio::test(start_paused = true)]
async fn post_with_idempotency_key_is_retried() {
    let up = Upstream::new(|n| if n < 2 { status(503) } else { status(201) });
    let res = plain(5)
        .build()
        .unwrap()
        .layer(up.clone())
        .oneshot(post(Some("order-7")))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(up.count(), 3);
    assert!(up
        .calls()
        .iter()
        .all(|c| c.method == Method::POST && c.body == "{\"qty\":1}"));
}

#[tokio::test(start_paused = true)]
async fn retry_if_marks_more_requests_safe() {
    let up = Upstream::new(|n| if n == 0 { status(503) } else { status(200) });
    let layer = plain(3)
        .retry_if(|parts| parts.uri.path() == "/orders")
        .build()
        .unwrap();
    let res = layer.layer(up.clone()).oneshot(post(None)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(up.count(), 2);
    // PATCH elsewhere still is not retried.
    let up = Upstream::new(|_| status(503));
    let req = Request::patch("/other")
        .body(Empty::<Bytes>::new())
        .unwrap();
    layer.layer(up.clone()).oneshot(req).await.unwrap();
    assert_eq!(up.count(), 1);
}

/// A body of chunks with no size hint (like a streaming upload), with optional trailers.
struct Chunks {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Chunks {
    fn new(chunks: &[&'static str], trailers: Option<HeaderMap>) -> Self {
        Chunks {
            chunks: chunks
                .iter()
                .map(|c| Bytes::from_static(c.as_bytes()))
                .collect(),
            trailers,
        }
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(c) = self.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(c))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::new()
    }
}

#[tokio::test(start_paused = true)]
async fn body_over_the_limit_is_sent_once() {
    let up = Upstream::new(|_| status(503));
    let layer = plain(5).max_body(16).build().unwrap();
    let handle = layer.handle();
    // Known too large from its size hint.
    let big = Request::put("/blob")
        .body(Full::new(Bytes::from(vec![b'x'; 17])))
        .unwrap();
    let res = layer.layer(up.clone()).oneshot(big).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(up.count(), 1);
    assert_eq!(up.calls()[0].body.len(), 17);
    assert_eq!(handle.body_too_large(), 1);
    // Found too large while buffering: what was read is sent, followed by the rest.
    let up = Upstream::new(|_| status(503));
    let streamed = Request::put("/blob")
        .body(Chunks::new(&["0123456789", "abcdefghij", "KLMNOP"], None))
        .unwrap();
    layer.layer(up.clone()).oneshot(streamed).await.unwrap();
    assert_eq!(up.count(), 1);
    assert_eq!(up.calls()[0].body, "0123456789abcdefghijKLMNOP");
    assert_eq!(handle.body_too_large(), 2);
    assert_eq!(handle.retries(), 0);
}

#[tokio::test(start_paused = true)]
async fn body_under_the_limit_is_replayed_identically() {
    let up = Upstream::new(|n| if n < 2 { status(500) } else { status(200) });
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "c0ffee".parse().unwrap());
    let req = Request::put("/doc")
        .body(Chunks::new(
            &["{\"a\":", "1,", "\"b\":2}"],
            Some(trailers.clone()),
        ))
        .unwrap();
    let layer = plain(4).build().unwrap();
    let res = layer.layer(up.clone()).oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let calls = up.calls();
    assert_eq!(calls.len(), 3);
    for c in &calls {
        assert_eq!(c.method, Method::PUT);
        assert_eq!(c.body, "{\"a\":1,\"b\":2}");
        assert_eq!(c.trailers.as_ref(), Some(&trailers));
    }
    assert_eq!(layer.handle().body_too_large(), 0);
}

#[tokio::test(start_paused = true)]
async fn give_up_is_recorded_in_audit() {
    let (audit, ring) = Audit::memory(16);
    let up = Upstream::new(|_| status(503));
    let layer = plain(3).audit(&audit).build().unwrap();
    let res = layer.layer(up.clone()).oneshot(get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    audit.flush().await.unwrap();
    let records = ring.records();
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(r.kind, GAVE_UP_KIND);
    assert_eq!(r.details["attempts"], 3);
    assert_eq!(r.details["last"], "HTTP 503");
    assert_eq!(r.details["method"], "GET");
    assert_eq!(r.details["path"], "/items/1");
    assert!(audit.verify(&records, None).is_ok());
    assert_eq!(layer.handle().gave_up(), 1);
}

#[tokio::test(start_paused = true)]
async fn success_on_attempt_k_returns_that_response() {
    let up = Upstream::new(|n| {
        let code = if n < 3 { 502 } else { 200 };
        with_header(code, "x-attempt", &(n + 1).to_string())
    });
    let layer = plain(5).build().unwrap();
    let res = layer.layer(up.clone()).oneshot(get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-attempt"], "4");
    assert_eq!(up.count(), 4);
    assert_eq!(layer.handle().gave_up(), 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_future_mid_backoff_cancels_everything() {
    let up = Upstream::new(|_| status(503));
    let layer = plain(5).build().unwrap();
    let mut svc = layer.layer(up.clone());
    let before = Arc::strong_count(&up.calls);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(Service::<Request<Empty<Bytes>>>::poll_ready(&mut svc, &mut cx).is_ready());
    let mut fut = Box::pin(svc.call(get()));
    // The first attempt fails at once; the future is now sleeping before the retry.
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    assert_eq!(up.count(), 1);
    assert_eq!(layer.handle().retries(), 1);
    assert!(format!("{fut:?}").contains("backing off"), "{fut:?}");
    // It holds a clone of the inner service.
    assert_eq!(Arc::strong_count(&up.calls), before + 1);
    drop(fut);
    assert_eq!(Arc::strong_count(&up.calls), before);
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(up.count(), 1, "no attempt after the drop");
}

#[tokio::test(start_paused = true)]
async fn elapsed_is_retried_unless_disabled() {
    let script = |n| {
        if n == 0 {
            Err(Elapsed::new(ms(300)).into())
        } else {
            status(200)
        }
    };
    let up = Upstream::new(script);
    let res = plain(2)
        .build()
        .unwrap()
        .layer(up.clone())
        .oneshot(get())
        .await;
    assert!(res.is_ok());
    assert_eq!(up.count(), 2);
    let up = Upstream::new(script);
    let err = plain(2)
        .retry_timeouts(false)
        .build()
        .unwrap()
        .layer(up.clone())
        .oneshot(get())
        .await
        .unwrap_err();
    assert!(is::<Elapsed>(&*err));
    assert_eq!(up.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn grpc_status_in_trailers_is_not_retried_but_in_headers_is() {
    let grpc = |grpc_status: Option<&str>| {
        let mut b = Response::builder()
            .status(200)
            .header("content-type", "application/grpc");
        if let Some(s) = grpc_status {
            b = b.header("grpc-status", s);
        }
        Ok(b.body(()).unwrap())
    };
    let layer = plain(3).retry_if(|_| true).build().unwrap();
    let call = || {
        Request::post("/pkg.Svc/Get")
            .header("content-type", "application/grpc")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    // Streaming response: the verdict is in the trailers, after the body: returned as-is.
    let up = Upstream::new(move |_| grpc(None));
    layer.layer(up.clone()).oneshot(call()).await.unwrap();
    assert_eq!(up.count(), 1);
    // Trailers-only UNAVAILABLE (14): retried.
    let up = Upstream::new(move |n| {
        if n == 0 {
            grpc(Some("14"))
        } else {
            grpc(Some("0"))
        }
    });
    let res = layer.layer(up.clone()).oneshot(call()).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "0");
    assert_eq!(up.count(), 2);
    // POST without the predicate: never retried.
    let up = Upstream::new(move |_| grpc(Some("14")));
    plain(3)
        .build()
        .unwrap()
        .layer(up.clone())
        .oneshot(call())
        .await
        .unwrap();
    assert_eq!(up.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn one_attempt_disables_retries() {
    let up = Upstream::new(|_| status(503));
    let layer = plain(1).build().unwrap();
    layer.layer(up.clone()).oneshot(get()).await.unwrap();
    assert_eq!(up.count(), 1);
    assert_eq!(layer.handle().retries(), 0);
}

/// With retries disabled, a failure that would have been retried is one the attempt limit gave up on:
/// counted and audited like the last attempt of `max_attempts(n)`.
#[tokio::test(start_paused = true)]
async fn one_attempt_counts_retryable_failures_as_gave_up() {
    let (audit, ring) = Audit::memory(16);
    let up = Upstream::new(|n| match n {
        // A retryable failure: gave up.
        0 => status(503),
        // A success, a client error, an open breaker: nothing to give up on.
        1 => status(200),
        2 => status(404),
        3 => Err(CircuitOpen::new(None).into()),
        // A POST without an idempotency key would not have been retried either.
        4 => status(503),
        // The server asked for no retry (gRPC pushback): not the attempt limit's doing.
        5 => with_header(503, "grpc-retry-pushback-ms", "-1"),
        _ => Err("boom".into()),
    });
    let layer = plain(1).audit(&audit).build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(up.clone());
    let res = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(handle.gave_up(), 1);
    svc.clone().oneshot(get()).await.unwrap();
    svc.clone().oneshot(get()).await.unwrap();
    assert!(svc.clone().oneshot(get()).await.is_err());
    assert_eq!(handle.gave_up(), 1);
    svc.clone().oneshot(post(None)).await.unwrap();
    assert_eq!(handle.gave_up(), 1);
    svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(handle.gave_up(), 1);
    // A retryable error, returned as it is.
    let err = svc.clone().oneshot(get()).await.unwrap_err();
    assert_eq!(err.to_string(), "boom");
    assert_eq!(handle.gave_up(), 2);
    assert_eq!(up.count(), 7);
    assert_eq!(handle.retries(), 0);

    audit.flush().await.unwrap();
    let records = ring.records();
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(records.iter().all(|r| r.kind == GAVE_UP_KIND));
    assert_eq!(records[0].details["attempts"], 1);
    assert_eq!(records[0].details["last"], "HTTP 503");
    assert_eq!(records[0].details["method"], "GET");
    assert_eq!(records[0].details["path"], "/items/1");
    assert_eq!(records[1].details["last"], "error");
}

#[tokio::test(start_paused = true)]
async fn one_attempt_counts_gave_up_with_a_clone_function_too() {
    let layer = RetryLayer::builder()
        .classify(ErrorsOnly)
        .max_attempts(1)
        .clone_request(|q: &String| Some(q.clone()))
        .build()
        .unwrap();
    let svc = layer.layer(tower::service_fn(|q: String| async move {
        if q == "fail" {
            Err::<Answer, BoxError>("flaky".into())
        } else {
            Ok(Answer(q))
        }
    }));
    assert!(svc.clone().oneshot("fail".to_owned()).await.is_err());
    assert!(svc.clone().oneshot("ok".to_owned()).await.is_ok());
    assert_eq!(layer.handle().gave_up(), 1);
}

/// gRPC A6: a negative or unparseable `grpc-retry-pushback-ms` is the server asking not to retry.
#[tokio::test(start_paused = true)]
async fn negative_or_unparseable_grpc_pushback_is_not_retried() {
    for bad in ["-1", "-250", "soon", "1.5", "", "+5", "0x10"] {
        let up = Upstream::new(move |n| match n {
            0 => with_header(503, "grpc-retry-pushback-ms", bad),
            _ => status(200),
        });
        let layer = plain(3).build().unwrap();
        let res = layer.layer(up.clone()).oneshot(get()).await.unwrap();
        assert_eq!(
            res.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "pushback {bad:?}"
        );
        assert_eq!(up.count(), 1, "pushback {bad:?} was retried");
        assert_eq!(layer.handle().retries(), 0);
        assert_eq!(layer.handle().gave_up(), 0);
    }
    // Even where a valid Retry-After would allow it.
    let up = Upstream::new(|n| match n {
        0 => Ok(Response::builder()
            .status(503)
            .header("retry-after", "1")
            .header("grpc-retry-pushback-ms", "-1")
            .body(())
            .unwrap()),
        _ => status(200),
    });
    let res = plain(3)
        .build()
        .unwrap()
        .layer(up.clone())
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(up.count(), 1);
    // A valid pushback (surrounding whitespace allowed) is a delay, as before.
    for good in ["250", " 250 "] {
        let up = Upstream::new(move |n| match n {
            0 => with_header(503, "grpc-retry-pushback-ms", good),
            _ => status(200),
        });
        let res = plain(3)
            .build()
            .unwrap()
            .layer(up.clone())
            .oneshot(get())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(up.gaps(), [ms(250)]);
    }
}

#[tokio::test(start_paused = true)]
async fn clone_function_replays_any_request() {
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = tower::service_fn({
        let calls = calls.clone();
        move |q: String| {
            let n = calls.fetch_add(1, SeqCst);
            async move {
                if n < 2 {
                    Err::<Answer, BoxError>("flaky".into())
                } else {
                    Ok(Answer(format!("answer to {q}")))
                }
            }
        }
    });
    let layer = RetryLayer::builder()
        .classify(ErrorsOnly)
        .backoff(Backoff::exponential(ms(10), ms(10)))
        .clone_request(|q: &String| (!q.starts_with("once:")).then(|| q.clone()))
        .build()
        .unwrap();
    let res = layer
        .layer(inner.clone())
        .oneshot("q1".to_owned())
        .await
        .unwrap();
    assert_eq!(res.0, "answer to q1");
    assert_eq!(calls.load(SeqCst), 3);
    // Not clonable: sent once.
    calls.store(0, SeqCst);
    assert!(layer
        .layer(inner)
        .oneshot("once:q2".to_owned())
        .await
        .is_err());
    assert_eq!(calls.load(SeqCst), 1);
}

/// A non-HTTP response; the clone mode needs a `RetryHint` (the defaults: no hint).
#[derive(Debug)]
struct Answer(String);
impl palisade_retry::RetryHint for Answer {}

#[test]
fn builder_rejects_bad_configuration() {
    let s = Duration::from_secs;
    let err = |b: palisade_retry::RetryBuilder| b.build().unwrap_err();
    assert_eq!(
        err(RetryLayer::builder().max_attempts(0)),
        BuildError::ZeroAttempts
    );
    assert_eq!(
        err(RetryLayer::builder().backoff(Backoff::exponential(s(2), s(1)))),
        BuildError::BaseExceedsMax {
            base: s(2),
            max: s(1)
        }
    );
    assert_eq!(
        err(RetryLayer::builder().backoff(Backoff::decorrelated(Duration::ZERO, s(1)))),
        BuildError::ZeroDecorrelatedBase
    );
    assert_eq!(
        err(RetryLayer::builder().budget(Budget::new(-0.5, 1, s(10)))),
        BuildError::InvalidRatio(-0.5)
    );
    assert_eq!(
        err(RetryLayer::builder().budget(Budget::new(0.2, 1, ms(500)))),
        BuildError::InvalidWindow(ms(500))
    );
    assert!(err(RetryLayer::builder().max_attempts(0))
        .to_string()
        .contains("at least 1"));
}

/// Every size and duration the builder takes has a documented maximum; above it, `build()` refuses.
#[test]
fn builder_refuses_values_above_their_documented_maximum() {
    use palisade_retry::{MAX_ATTEMPTS_LIMIT, MAX_BODY_LIMIT, MAX_DELAY};
    let err = |b: palisade_retry::RetryBuilder| b.build().unwrap_err();
    let ok = |b: palisade_retry::RetryBuilder| b.build().map(|_| ()).unwrap();

    // The body buffer of every retryable request in flight.
    ok(RetryLayer::builder().max_body(MAX_BODY_LIMIT));
    assert_eq!(
        err(RetryLayer::builder().max_body(MAX_BODY_LIMIT + 1)),
        BuildError::MaxBodyTooLarge(MAX_BODY_LIMIT + 1)
    );
    assert_eq!(
        err(RetryLayer::builder().max_body(usize::MAX)),
        BuildError::MaxBodyTooLarge(usize::MAX)
    );

    // Attempts: four billion retries of one request are no policy.
    ok(RetryLayer::builder().max_attempts(MAX_ATTEMPTS_LIMIT));
    assert_eq!(
        err(RetryLayer::builder().max_attempts(MAX_ATTEMPTS_LIMIT + 1)),
        BuildError::TooManyAttempts(MAX_ATTEMPTS_LIMIT + 1)
    );
    assert_eq!(
        err(RetryLayer::builder().max_attempts(u32::MAX)),
        BuildError::TooManyAttempts(u32::MAX)
    );

    // Delays: beyond the maximum a jitter used to saturate silently (at 2^64 ns).
    let long = MAX_DELAY + Duration::from_nanos(1);
    ok(RetryLayer::builder()
        .backoff(Backoff::exponential(MAX_DELAY, MAX_DELAY).jitter(MAX_DELAY))
        .retry_after_cap(MAX_DELAY));
    for (setting, b) in [
        (
            "backoff",
            RetryLayer::builder().backoff(Backoff::exponential(ms(1), long)),
        ),
        (
            "backoff",
            RetryLayer::builder().backoff(Backoff::decorrelated(ms(1), long)),
        ),
        (
            "jitter",
            RetryLayer::builder().backoff(Backoff::exponential(ms(1), ms(2)).jitter(Duration::MAX)),
        ),
        (
            "retry_after_cap",
            RetryLayer::builder().retry_after_cap(Duration::MAX),
        ),
    ] {
        match err(b) {
            BuildError::DelayTooLong { setting: s, .. } => assert_eq!(s, setting),
            other => panic!("{setting}: {other:?}"),
        }
    }
    assert!(err(RetryLayer::builder().max_body(usize::MAX))
        .to_string()
        .contains(&MAX_BODY_LIMIT.to_string()));
}

#[tokio::test(start_paused = true)]
async fn services_of_one_layer_share_counters_and_budget() {
    let layer = plain(2)
        .budget(Budget::new(0.0, 1, Duration::from_secs(1)))
        .build()
        .unwrap();
    let handle = layer.handle();
    let up = Upstream::new(|_| status(503));
    layer.layer(up.clone()).oneshot(get()).await.unwrap();
    // A second service (another route) finds the budget spent by the first.
    layer
        .clone()
        .layer(up.clone())
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(handle.requests(), 2);
    assert_eq!((handle.retries(), handle.budget_refused()), (1, 1));
    assert_eq!(up.count(), 3);
}

#[tokio::test(start_paused = true)]
async fn every_retry_drives_poll_ready_first() {
    let up = Upstream::new(|n| if n < 2 { status(503) } else { status(200) });
    let res = plain(5)
        .build()
        .unwrap()
        .layer(up.clone())
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // Once by `oneshot` for the first attempt, then once per retry on the future's clone.
    assert_eq!(up.readies.load(SeqCst), 3);
    assert_eq!(up.count(), 3);
}

// ---- deadlines: each retry carries the time that is left ----

/// A total timeout that propagates `grpc-timeout`, as the client preset puts above the retry layer.
///
/// This crate does not depend on `palisade-timeout`, so this stands in for its `TimeoutLayer` with
/// `propagate_grpc_timeout(true)`, doing what that layer does by the contract of
/// `palisade_core::deadline`: cap the budget by a shorter `grpc-timeout` from the caller, record a
/// [`Deadline`], write `grpc-timeout`, and fail with [`Elapsed`] when the budget runs out. The real
/// layer above this one is tested end to end in the umbrella crate (`tests/grpc_stack.rs`).
#[derive(Clone, Copy)]
struct TotalTimeout(Duration);

fn total_timeout(budget: Duration) -> TotalTimeout {
    TotalTimeout(budget)
}

impl<S> Layer<S> for TotalTimeout {
    type Service = Propagating<S>;

    fn layer(&self, inner: S) -> Propagating<S> {
        Propagating {
            budget: self.0,
            inner,
        }
    }
}

#[derive(Clone)]
struct Propagating<S> {
    budget: Duration,
    inner: S,
}

impl<S, B> Service<Request<B>> for Propagating<S>
where
    S: Service<Request<B>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let caller = req
            .headers()
            .get(GRPC_TIMEOUT)
            .and_then(|v| parse_grpc_timeout(v.as_bytes()));
        let budget = caller.map_or(self.budget, |c| c.min(self.budget));
        let deadline =
            Deadline::from_now(Instant::now(), budget).expect("a representable deadline");
        req.extensions_mut().insert(deadline);
        req.headers_mut()
            .insert(GRPC_TIMEOUT, encode_grpc_timeout(budget));
        let fut = self.inner.call(req);
        Box::pin(async move {
            tokio::time::timeout(budget, fut)
                .await
                .unwrap_or_else(|_| Err(Elapsed::new(budget).into()))
        })
    }
}

fn sent_deadlines(up: &Upstream) -> Vec<Option<String>> {
    up.calls().into_iter().map(|c| c.grpc_timeout).collect()
}

#[tokio::test(start_paused = true)]
async fn each_retry_carries_the_time_left_of_the_deadline() {
    let up = Upstream::new(|n| if n < 2 { status(503) } else { status(200) });
    let svc =
        total_timeout(Duration::from_secs(2)).layer(plain(3).build().unwrap().layer(up.clone()));
    let mut req = get();
    req.extensions_mut().insert(Tag(7));
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(up.gaps(), [ms(100), ms(200)]);
    // 2 s, then 2 s − 100 ms, then 2 s − 300 ms.
    assert_eq!(
        sent_deadlines(&up),
        [Some("2000000u"), Some("1900000u"), Some("1700000u")].map(|s| s.map(String::from))
    );
    // The extensions (the deadline among them) go with every attempt.
    assert!(up.calls().iter().all(|c| c.tag == Some(Tag(7))));
}

#[tokio::test(start_paused = true)]
async fn a_buffered_request_gets_the_time_left_too() {
    let up = Upstream::new(|n| if n == 0 { status(503) } else { status(200) });
    let svc =
        total_timeout(Duration::from_secs(2)).layer(plain(2).build().unwrap().layer(up.clone()));
    let res = svc.oneshot(post(Some("key-1"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        sent_deadlines(&up),
        [Some("2000000u"), Some("1900000u")].map(|s| s.map(String::from))
    );
    let calls = up.calls();
    assert_eq!(
        calls[0].body, calls[1].body,
        "the body is replayed as before"
    );
}

#[tokio::test(start_paused = true)]
async fn a_shorter_header_from_the_caller_is_never_raised() {
    let up = Upstream::new(|n| if n == 0 { status(503) } else { status(200) });
    let svc =
        total_timeout(Duration::from_secs(2)).layer(plain(2).build().unwrap().layer(up.clone()));
    let mut req = get();
    req.headers_mut()
        .insert("grpc-timeout", http::HeaderValue::from_static("500m"));
    svc.oneshot(req).await.unwrap();
    // The total timeout kept the caller's 500 ms as its budget and deadline; 100 ms later the retry
    // sends the 400 ms that are left.
    assert_eq!(
        sent_deadlines(&up),
        [Some("500000u"), Some("400000u")].map(|s| s.map(String::from))
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_past_the_deadline_fails_as_elapsed_without_being_sent() {
    // The deadline is on the request (as a propagating timeout further out would put it), but no timer
    // here fires first: the retry layer itself must not send the attempt.
    let up = Upstream::new(|_| status(503));
    let layer = plain(3).build().unwrap();
    let handle = layer.handle();
    let mut req = get();
    req.headers_mut()
        .insert("grpc-timeout", http::HeaderValue::from_static("50m"));
    req.extensions_mut()
        .insert(Deadline::from_now(Instant::now(), ms(50)).unwrap());
    let start = Instant::now();
    let err = layer.layer(up.clone()).oneshot(req).await.unwrap_err();
    assert_eq!(err.downcast_ref::<Elapsed>(), Some(&Elapsed::new(ms(50))));
    assert_eq!(start.elapsed(), ms(100), "after the backoff, not before");
    assert_eq!(up.count(), 1, "the retry was never sent");
    assert_eq!(handle.retries(), 1);
}

#[tokio::test(start_paused = true)]
async fn without_a_deadline_retries_resend_the_header_unchanged() {
    // No propagating timeout above: the caller's own header is all there is, and it is left alone.
    let up = Upstream::new(|n| if n == 0 { status(503) } else { status(200) });
    let mut req = get();
    req.headers_mut()
        .insert("grpc-timeout", http::HeaderValue::from_static("2S"));
    plain(2)
        .build()
        .unwrap()
        .layer(up.clone())
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(
        sent_deadlines(&up),
        [Some("2S"), Some("2S")].map(|s| s.map(String::from))
    );
}

#[tokio::test(start_paused = true)]
async fn the_total_timeout_still_bounds_every_attempt_and_backoff() {
    // Attempts at 0, 100, 300, 700 ms; the fourth would start at 1.5 s, past the 1 s budget.
    let up = Upstream::new(|_| status(503));
    let svc =
        total_timeout(Duration::from_secs(1)).layer(plain(5).build().unwrap().layer(up.clone()));
    let start = Instant::now();
    let err = svc.oneshot(get()).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<Elapsed>(),
        Some(&Elapsed::new(Duration::from_secs(1)))
    );
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(
        sent_deadlines(&up),
        [
            Some("1000000u"),
            Some("900000u"),
            Some("700000u"),
            Some("300000u")
        ]
        .map(|s| s.map(String::from))
    );
}

// ---- local refusals: the classifier ignores them, the retry layer still decides by its own rules ----

#[tokio::test(start_paused = true)]
async fn a_local_refusal_is_ignored_by_the_classifier_yet_retried() {
    use palisade_core::classify::{Classify, Grpc, Outcome};
    let refusal: BoxError = Overloaded::new().into();
    // Neither success nor failure for a breaker: the backend was never asked.
    assert_eq!(
        <Grpc as Classify<Response<()>>>::classify_error(&Grpc::new(), &*refusal),
        Outcome::Ignored
    );
    // The retry layer's own rule for `Overloaded` comes first: a full local bulkhead is retried.
    let up = Upstream::new(|n| {
        if n == 0 {
            Err(Overloaded::new().into())
        } else {
            status(200)
        }
    });
    let res = plain(2)
        .build()
        .unwrap()
        .layer(up.clone())
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(up.count(), 2);
}
