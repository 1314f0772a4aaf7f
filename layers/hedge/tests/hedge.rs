//! The hedge layer on paused time: who wins, what is cancelled, what is never hedged, the budget, the
//! signal, deadlines and bodies.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, Full};
use palisade_core::audit::Audit;
use palisade_core::deadline::Deadline;
use palisade_core::error::{BoxError, Overloaded};
use palisade_hedge::{
    HedgeBody, HedgeBudget, HedgeLayer, LatencyPercentile, BUDGET_EXHAUSTED_KIND,
};
use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, Service, ServiceExt};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// What the backend saw of one attempt.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    method: Method,
    grpc_timeout: Option<String>,
    idempotency_key: Option<String>,
    deadline: Option<Deadline>,
    body: Bytes,
}

/// How the backend answers its `n`-th attempt (0-based): after `latency`, with `status` (or an error).
#[derive(Debug, Clone, Copy)]
struct Answer {
    latency: Duration,
    status: Result<u16, ()>,
}

fn ok_after(latency: u64) -> Answer {
    Answer {
        latency: ms(latency),
        status: Ok(200),
    }
}

/// A backend whose attempts follow a schedule (the last entry repeats), recording what it saw and
/// which attempts were dropped before they answered.
#[derive(Clone)]
struct Backend {
    schedule: Arc<Vec<Answer>>,
    calls: Arc<AtomicUsize>,
    live: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// (attempt, when) of attempts dropped before answering.
    dropped: Arc<Mutex<Vec<(usize, Instant)>>>,
}

/// Held by an attempt's future: counts live attempts and notes a drop before the answer.
struct Guard {
    n: usize,
    done: bool,
    live: Arc<AtomicUsize>,
    dropped: Arc<Mutex<Vec<(usize, Instant)>>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.live.fetch_sub(1, SeqCst);
        if !self.done {
            self.dropped.lock().unwrap().push((self.n, Instant::now()));
        }
    }
}

type Svc = BoxCloneService<Request<HedgeBody<BoxBody>>, Response<String>, BoxError>;
type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

impl Backend {
    fn new(schedule: Vec<Answer>) -> Self {
        Backend {
            schedule: Arc::new(schedule),
            calls: Arc::default(),
            live: Arc::default(),
            seen: Arc::default(),
            dropped: Arc::default(),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn dropped(&self) -> Vec<(usize, Instant)> {
        self.dropped.lock().unwrap().clone()
    }

    fn service<B>(
        &self,
    ) -> impl Service<
        Request<HedgeBody<B>>,
        Response = Response<String>,
        Error = BoxError,
        Future: Send,
    > + Clone
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let this = self.clone();
        service_fn(move |req: Request<HedgeBody<B>>| {
            let this = this.clone();
            async move {
                let n = this.calls.fetch_add(1, SeqCst);
                this.live.fetch_add(1, SeqCst);
                let mut guard = Guard {
                    n,
                    done: false,
                    live: this.live.clone(),
                    dropped: this.dropped.clone(),
                };
                let answer = this.schedule[n.min(this.schedule.len() - 1)];
                let mut seen = Seen {
                    at: Instant::now(),
                    method: req.method().clone(),
                    grpc_timeout: header(req.headers(), "grpc-timeout"),
                    idempotency_key: header(req.headers(), "idempotency-key"),
                    deadline: req.extensions().get::<Deadline>().copied(),
                    body: Bytes::new(),
                };
                seen.body = req
                    .into_body()
                    .collect()
                    .await
                    .map_err(Into::into)?
                    .to_bytes();
                this.seen.lock().unwrap().push(seen);
                tokio::time::sleep(answer.latency).await;
                guard.done = true;
                match answer.status {
                    Ok(status) => Ok(Response::builder()
                        .status(status)
                        .body(format!("attempt {n}"))
                        .unwrap()),
                    Err(()) => Err(BoxError::from(format!("attempt {n} failed"))),
                }
            }
        })
    }
}

fn header(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| v.to_str().unwrap().to_owned())
}

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path).body(Empty::new()).unwrap()
}

fn fixed(delay: u64) -> palisade_hedge::HedgeBuilder {
    HedgeLayer::builder()
        .delay(ms(delay))
        .budget(HedgeBudget::unlimited())
}

#[tokio::test(start_paused = true)]
async fn a_slow_first_attempt_is_beaten_by_the_hedge_and_cancelled() {
    let backend = Backend::new(vec![ok_after(10_000), ok_after(20)]);
    let layer = fixed(100).build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(backend.service::<Empty<Bytes>>());

    let start = Instant::now();
    let mut fut = std::pin::pin!(svc.ready().await.unwrap().call(get("/slow")));
    let res = fut.as_mut().await.unwrap();
    // The loser was dropped before the answer was handed over, not when the response future is.
    assert_eq!(backend.live.load(SeqCst), 0);
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.body(), "attempt 1", "the hedge answered");
    assert_eq!(
        start.elapsed(),
        ms(120),
        "delay + the hedge's latency, not 10 s"
    );

    // The first attempt was dropped the moment the hedge answered, and its guard ran.
    assert_eq!(backend.dropped(), vec![(0, start + ms(120))]);
    assert_eq!(backend.live.load(SeqCst), 0, "nothing left in flight");
    assert_eq!(backend.calls(), 2);
    let seen = backend.seen();
    assert_eq!(
        seen[1].at - seen[0].at,
        ms(100),
        "the hedge went out one delay later"
    );
    assert_eq!(handle.hedges(), 1);
    assert_eq!(handle.hedge_wins(), 1);
    assert_eq!(handle.cancelled(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_fast_first_attempt_sends_no_hedge() {
    let backend = Backend::new(vec![ok_after(30)]);
    let layer = fixed(100).build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(backend.service::<Empty<Bytes>>());
    let res = svc.oneshot(get("/fast")).await.unwrap();
    assert_eq!(res.body(), "attempt 0");
    // Run the clock past where a hedge would have been due: none is sent.
    tokio::time::sleep(ms(500)).await;
    assert_eq!(backend.calls(), 1);
    assert_eq!(
        (handle.requests(), handle.hedges(), handle.cancelled()),
        (1, 0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn the_first_attempt_wins_when_it_answers_before_the_hedge() {
    // The hedge is sent at 100 ms but the first attempt answers at 150 ms, before the hedge (300 ms).
    let backend = Backend::new(vec![ok_after(150), ok_after(200)]);
    let layer = fixed(100).build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(backend.service::<Empty<Bytes>>());
    let start = Instant::now();
    let res = svc.oneshot(get("/")).await.unwrap();
    assert_eq!(res.body(), "attempt 0");
    assert_eq!(start.elapsed(), ms(150));
    assert_eq!(
        backend.dropped(),
        vec![(1, start + ms(150))],
        "the hedge is cancelled"
    );
    assert_eq!(
        (handle.hedges(), handle.hedge_wins(), handle.cancelled()),
        (1, 0, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn a_post_without_a_key_is_never_hedged() {
    let backend = Backend::new(vec![ok_after(10_000), ok_after(10_000), ok_after(1)]);
    let layer = fixed(10).build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(backend.service::<Full<Bytes>>());

    for method in [Method::POST, Method::PATCH] {
        let start = Instant::now();
        let req = Request::builder()
            .method(method.clone())
            .uri("/orders")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(
            start.elapsed(),
            ms(10_000),
            "{method}: waited for the only attempt"
        );
        assert!(res.status().is_success());
    }
    assert_eq!(backend.calls(), 2, "one attempt each");
    assert_eq!(handle.hedges(), 0);
    assert_eq!(handle.requests(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_post_with_an_idempotency_key_is_hedged_and_every_attempt_carries_the_key() {
    let backend = Backend::new(vec![ok_after(10_000), ok_after(5)]);
    let layer = fixed(50).build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(backend.service::<Full<Bytes>>());
    let req = Request::post("/orders")
        .header("idempotency-key", "order-77")
        .body(Full::new(Bytes::from_static(b"{\"sku\":1}")))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.body(), "attempt 1");
    let seen = backend.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.method, Method::POST);
        assert_eq!(s.idempotency_key.as_deref(), Some("order-77"));
        assert_eq!(s.body, "{\"sku\":1}");
    }
    assert_eq!(handle.hedges(), 1);
}

#[tokio::test(start_paused = true)]
async fn hedge_if_admits_a_grpc_read() {
    let backend = Backend::new(vec![ok_after(10_000), ok_after(5)]);
    let layer = fixed(50)
        .hedge_if(|parts| parts.uri.path() == "/stock.v1.Stock/Get")
        .build()
        .unwrap();
    let mut svc = layer.layer(backend.service::<Empty<Bytes>>());
    let post = |path: &str| Request::post(path).body(Empty::<Bytes>::new()).unwrap();
    let start = Instant::now();
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(post("/stock.v1.Stock/Get"))
        .await
        .unwrap();
    assert_eq!(res.body(), "attempt 1");
    assert_eq!(start.elapsed(), ms(55));
    // Another gRPC method is not hedged (the schedule's last entry is fast, so look at the calls).
    let calls = backend.calls();
    svc.ready()
        .await
        .unwrap()
        .call(post("/stock.v1.Stock/Reserve"))
        .await
        .unwrap();
    assert_eq!(backend.calls(), calls + 1);
}

#[tokio::test(start_paused = true)]
async fn the_budget_caps_hedges_under_a_storm() {
    // Every attempt is slow: without a budget each request would be hedged.
    let backend = Backend::new(vec![ok_after(100)]);
    let (audit, sink) = Audit::memory(64);
    let layer = HedgeLayer::builder()
        .delay(ms(10))
        .budget(HedgeBudget::new(0.1, 10))
        .audit(&audit)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(backend.service::<Empty<Bytes>>());

    // 2,000 requests, one a millisecond.
    let mut tasks = Vec::new();
    for _ in 0..2000 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move { svc.oneshot(get("/")).await }));
        tokio::time::sleep(ms(1)).await;
    }
    for t in tasks {
        assert!(t.await.unwrap().unwrap().status().is_success());
    }
    let hedges = handle.hedges();
    assert!(
        hedges <= 2000 / 10 + 10,
        "{hedges} hedges for 2000 requests"
    );
    assert!(hedges >= 190, "the budget still allows its share: {hedges}");
    assert_eq!(backend.calls() as u64, 2000 + hedges);
    assert_eq!(handle.budget_refused(), 2000 - hedges);
    audit.flush().await.unwrap();
    let records = sink.records();
    let exhausted = records
        .iter()
        .filter(|r| r.kind == BUDGET_EXHAUSTED_KIND)
        .count();
    assert_eq!(
        exhausted, 1,
        "at most one record per 10 s, not one per refusal"
    );
    assert_eq!(backend.live.load(SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn every_hedge_gets_the_remaining_deadline() {
    let backend = Backend::new(vec![ok_after(10_000)]);
    let layer = fixed(100).max_hedges(3).build().unwrap();
    let svc = layer.layer(backend.service::<Empty<Bytes>>());

    let start = Instant::now();
    let deadline = Deadline::from_now(start, ms(1000)).unwrap();
    let mut req = get("/");
    req.headers_mut()
        .insert("grpc-timeout", "1000000u".parse().unwrap());
    req.extensions_mut().insert(deadline);
    let fut = svc.oneshot(req);
    // Let the first attempt and all three hedges go out, then stop waiting (as a timeout above would).
    let _ = tokio::time::timeout(ms(350), fut).await;

    let seen = backend.seen();
    let timeouts: Vec<_> = seen.iter().map(|s| s.grpc_timeout.as_deref()).collect();
    assert_eq!(
        timeouts,
        vec![
            Some("1000000u"),
            Some("900000u"),
            Some("800000u"),
            Some("700000u")
        ],
        "the first attempt as it came, each hedge the time left"
    );
    assert!(
        seen.iter().all(|s| s.deadline == Some(deadline)),
        "the deadline goes with each attempt"
    );
    // Dropping the request dropped all four attempts.
    assert_eq!(backend.dropped().len(), 4);
    assert_eq!(backend.live.load(SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn no_hedge_is_sent_past_the_deadline() {
    let backend = Backend::new(vec![ok_after(400)]);
    let layer = fixed(100).max_hedges(3).build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(backend.service::<Empty<Bytes>>());
    let mut req = get("/");
    req.extensions_mut()
        .insert(Deadline::from_now(Instant::now(), ms(150)).unwrap());
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(
        res.body(),
        "attempt 0",
        "the first attempt answers at 400 ms"
    );
    // One hedge at 100 ms (50 ms left); the one due at 200 ms is not sent.
    assert_eq!(backend.calls(), 2);
    assert_eq!(backend.seen()[1].grpc_timeout.as_deref(), Some("50000000n"));
    assert_eq!(handle.hedges(), 1);
    assert_eq!(handle.deadline_passed(), 1);
}

#[tokio::test(start_paused = true)]
async fn with_a_propagating_timeout_above_each_hedge_gets_the_time_left() {
    let backend = Backend::new(vec![ok_after(10_000), ok_after(10_000), ok_after(30)]);
    let timeout = palisade_timeout::TimeoutLayer::builder()
        .timeout(ms(2000))
        .propagate_grpc_timeout(true)
        .build()
        .unwrap();
    let hedge = fixed(200).max_hedges(2).build().unwrap();
    let svc = timeout.layer(hedge.layer(backend.service::<Empty<Bytes>>()));
    let start = Instant::now();
    let res = svc.oneshot(get("/")).await.unwrap();
    assert_eq!(res.body(), "attempt 2");
    assert_eq!(start.elapsed(), ms(430));
    let timeouts: Vec<_> = backend
        .seen()
        .iter()
        .map(|s| s.grpc_timeout.clone().unwrap())
        .collect();
    assert_eq!(timeouts, vec!["2000000u", "1800000u", "1600000u"]);
    assert_eq!(
        backend.dropped().len(),
        2,
        "both slower attempts were cancelled"
    );
}

#[tokio::test(start_paused = true)]
async fn the_may_hedge_signal_stops_hedging() {
    let backend = Backend::new(vec![ok_after(300)]);
    let allowed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = allowed.clone();
    let layer = fixed(100)
        .may_hedge(move || flag.load(SeqCst))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(backend.service::<Empty<Bytes>>());

    let start = Instant::now();
    svc.ready().await.unwrap().call(get("/")).await.unwrap();
    assert_eq!(start.elapsed(), ms(300), "the breaker is open: no hedge");
    assert_eq!(
        (backend.calls(), handle.suppressed(), handle.hedges()),
        (1, 1, 0)
    );

    allowed.store(true, SeqCst);
    svc.ready().await.unwrap().call(get("/")).await.unwrap();
    assert_eq!((backend.calls(), handle.hedges()), (3, 1));
}

#[tokio::test(start_paused = true)]
async fn a_failed_answer_does_not_win_while_another_attempt_is_in_flight() {
    let backend = Backend::new(vec![
        Answer {
            latency: ms(150),
            status: Ok(503),
        },
        ok_after(100),
    ]);
    let layer = fixed(100).build().unwrap();
    let svc = layer.layer(backend.service::<Empty<Bytes>>());
    let start = Instant::now();
    let res = svc.oneshot(get("/")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.body(), "attempt 1");
    assert_eq!(start.elapsed(), ms(200));
}

#[tokio::test(start_paused = true)]
async fn when_every_attempt_fails_the_last_failure_is_returned() {
    let backend = Backend::new(vec![
        Answer {
            latency: ms(150),
            status: Ok(503),
        },
        Answer {
            latency: ms(100),
            status: Err(()),
        },
    ]);
    let layer = fixed(100).build().unwrap();
    let svc = layer.layer(backend.service::<Empty<Bytes>>());
    let start = Instant::now();
    let err = svc.oneshot(get("/")).await.unwrap_err();
    assert_eq!(err.to_string(), "attempt 1 failed");
    assert_eq!(start.elapsed(), ms(200));
}

#[tokio::test(start_paused = true)]
async fn a_fast_failure_is_returned_at_once_a_hedge_is_not_a_retry() {
    let backend = Backend::new(vec![
        Answer {
            latency: ms(10),
            status: Ok(500),
        },
        ok_after(1),
    ]);
    let layer = fixed(100).build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(backend.service::<Empty<Bytes>>());
    let res = svc.oneshot(get("/")).await.unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    tokio::time::sleep(ms(500)).await;
    assert_eq!((backend.calls(), handle.hedges()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn an_inner_rejection_keeps_its_marker() {
    let layer = fixed(100).build().unwrap();
    let svc = layer.layer(service_fn(|_req: Request<HedgeBody<Empty<Bytes>>>| async {
        Err::<Response<String>, BoxError>(Overloaded::new().into())
    }));
    let err = svc.oneshot(get("/")).await.unwrap_err();
    assert!(err.downcast_ref::<Overloaded>().is_some());
}

#[tokio::test(start_paused = true)]
async fn parallel_mode_sends_every_hedge_at_once() {
    let backend = Backend::new(vec![ok_after(300), ok_after(50), ok_after(200)]);
    let layer = HedgeLayer::builder()
        .parallel()
        .max_hedges(2)
        .budget(HedgeBudget::unlimited())
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(backend.service::<Empty<Bytes>>());
    let start = Instant::now();
    let res = svc.oneshot(get("/")).await.unwrap();
    assert_eq!(res.body(), "attempt 1");
    assert_eq!(start.elapsed(), ms(50));
    assert!(
        backend.seen().iter().all(|s| s.at == start),
        "all three sent at once"
    );
    let mut dropped: Vec<_> = backend.dropped().into_iter().map(|(n, _)| n).collect();
    dropped.sort_unstable();
    assert_eq!(dropped, vec![0, 2]);
    assert_eq!((handle.hedges(), handle.cancelled()), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn dropping_the_request_drops_every_attempt() {
    let backend = Backend::new(vec![ok_after(10_000)]);
    let layer = fixed(10).max_hedges(4).build().unwrap();
    let svc = layer.layer(backend.service::<Empty<Bytes>>());
    let _ = tokio::time::timeout(ms(45), svc.oneshot(get("/"))).await;
    assert_eq!(backend.calls(), 5);
    assert_eq!(backend.live.load(SeqCst), 0);
    assert_eq!(backend.dropped().len(), 5);
}

/// A body of chunks that counts how often it is polled for a frame.
struct Chunks {
    chunks: Vec<Bytes>,
    polls: Arc<AtomicUsize>,
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.polls.fetch_add(1, SeqCst);
        if self.chunks.is_empty() {
            Poll::Ready(None)
        } else {
            Poll::Ready(Some(Ok(Frame::data(self.chunks.remove(0)))))
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_body_is_read_once_and_replayed_to_every_attempt() {
    let backend = Backend::new(vec![ok_after(10_000), ok_after(10_000), ok_after(5)]);
    let layer = fixed(20).max_hedges(2).build().unwrap();
    let svc = layer.layer(backend.service::<Chunks>());
    let polls = Arc::new(AtomicUsize::new(0));
    let body = Chunks {
        chunks: vec![
            Bytes::from_static(b"ab"),
            Bytes::from_static(b"cd"),
            Bytes::from_static(b"e"),
        ],
        polls: polls.clone(),
    };
    let res = svc
        .oneshot(Request::put("/doc").body(body).unwrap())
        .await
        .unwrap();
    assert_eq!(res.body(), "attempt 2");
    assert_eq!(polls.load(SeqCst), 4, "three chunks and the end, once");
    let bodies: Vec<_> = backend.seen().into_iter().map(|s| s.body).collect();
    assert_eq!(bodies, vec!["abcde", "abcde", "abcde"]);
}

#[tokio::test(start_paused = true)]
async fn a_body_over_the_limit_is_sent_once() {
    let backend = Backend::new(vec![ok_after(1000), ok_after(5)]);
    let layer = fixed(20).max_body(4).build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(backend.service::<Full<Bytes>>());
    // Known from the size hint...
    let req = Request::put("/doc")
        .body(Full::new(Bytes::from_static(b"too long")))
        .unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.body(), "attempt 0");
    assert_eq!(backend.seen()[0].body, "too long");
    assert_eq!((handle.body_too_large(), handle.hedges()), (1, 0));
    // ...or found while reading.
    let backend = Backend::new(vec![ok_after(1000), ok_after(5)]);
    let layer = fixed(20).max_body(4).build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(backend.service::<Chunks>());
    let body = Chunks {
        chunks: vec![
            Bytes::from_static(b"abc"),
            Bytes::from_static(b"def"),
            Bytes::from_static(b"g"),
        ],
        polls: Arc::default(),
    };
    let res = svc
        .oneshot(Request::put("/doc").body(body).unwrap())
        .await
        .unwrap();
    assert_eq!(res.body(), "attempt 0");
    assert_eq!(
        backend.seen()[0].body,
        "abcdefg",
        "the part read, then the rest"
    );
    assert_eq!((handle.body_too_large(), handle.hedges()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn the_default_estimator_hedges_after_the_p95_once_it_has_samples() {
    // 100 requests of 10 ms teach the estimator; then a slow one is hedged after about 10 ms.
    let backend = Backend::new(vec![ok_after(10)]);
    let estimator = LatencyPercentile::new();
    let layer = HedgeLayer::builder()
        .delay_from(estimator.clone())
        .budget(HedgeBudget::unlimited())
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(backend.service::<Empty<Bytes>>());
    for i in 0..100 {
        assert_eq!(
            handle.current_delay(),
            None,
            "no estimate after {i} samples"
        );
        svc.ready().await.unwrap().call(get("/")).await.unwrap();
    }
    assert_eq!(handle.hedges(), 0);
    let d = estimator.estimate().expect("an estimate after 100 samples");
    assert!(d >= ms(10) && d <= ms(12), "{d:?}");
    assert_eq!(handle.current_delay(), Some(d));

    let slow = Backend::new(vec![ok_after(10_000), ok_after(10)]);
    let layer = HedgeLayer::builder()
        .delay_from(estimator.clone())
        .budget(HedgeBudget::unlimited())
        .build()
        .unwrap();
    let svc = layer.layer(slow.service::<Empty<Bytes>>());
    let start = Instant::now();
    let res = svc.oneshot(get("/")).await.unwrap();
    assert_eq!(res.body(), "attempt 1");
    let took = start.elapsed();
    assert!(took >= d + ms(10) && took <= d + ms(11), "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn works_behind_a_boxed_clone_service() {
    // The hedge serves any body type and stacks under ordinary tower combinators.
    let backend = Backend::new(vec![ok_after(500), ok_after(5)]);
    let layer = fixed(10).build().unwrap();
    let svc: Svc = BoxCloneService::new(backend.service::<BoxBody>());
    let svc = layer.layer(svc);
    let body: BoxBody = Full::new(Bytes::from_static(b"x"))
        .map_err(|e| match e {})
        .boxed_unsync();
    let res = svc
        .oneshot(Request::get("/").body(body).unwrap())
        .await
        .unwrap();
    assert_eq!(res.body(), "attempt 1");
}

#[test]
fn bad_configuration_is_refused() {
    let err = HedgeLayer::builder().max_hedges(11).build().unwrap_err();
    assert_eq!(err.setting(), "max_hedges");
    let err = HedgeLayer::builder()
        .max_body(17 << 20)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "max_body");
    let err = HedgeLayer::builder()
        .delay(Duration::from_secs(3601))
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "delay");
    let err = HedgeLayer::builder()
        .budget(HedgeBudget::new(11.0, 1))
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "budget.ratio");
    assert!(err.to_string().starts_with("invalid hedge setting"));
    assert!(HedgeLayer::builder().max_hedges(10).build().is_ok());
}

/// The model of the race: which attempts are sent, which one wins, and when.
fn model(
    latency: &[u64],
    good: &[bool],
    delay: u64,
    hedges: usize,
) -> (usize, Result<usize, usize>, u64) {
    let done = |sent: &[u64], j: usize| sent[j] + latency[j];
    let mut sent = vec![0u64];
    for i in 1..=hedges {
        let t = i as u64 * delay;
        let won = (0..sent.len()).any(|j| good[j] && done(&sent, j) < t);
        let all_failed = (0..sent.len()).all(|j| done(&sent, j) < t);
        if won || all_failed {
            break;
        }
        sent.push(t);
    }
    let winner = (0..sent.len())
        .filter(|&j| good[j])
        .min_by_key(|&j| done(&sent, j));
    match winner {
        Some(w) => (sent.len(), Ok(w), done(&sent, w)),
        None => {
            let last = (0..sent.len()).max_by_key(|&j| done(&sent, j)).unwrap();
            (sent.len(), Err(last), done(&sent, last))
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// Any schedule of latencies and outcomes: the first good answer wins at its time, only the attempts
    /// the model sends are sent, and nothing is left in flight afterwards.
    #[test]
    fn the_first_good_answer_wins(
        attempts in proptest::collection::vec((1u64..400, proptest::bool::weighted(0.7)), 4),
        hedges in 0usize..4,
    ) {
        let delay = 50;
        let latency: Vec<u64> = attempts.iter().map(|a| a.0).collect();
        let good: Vec<bool> = attempts.iter().map(|a| a.1).collect();
        // Ties (two answers, or an answer and a due hedge, at the same instant) have no single right order.
        let mut instants: Vec<u64> = (0..4).map(|i| i as u64 * delay + latency[i]).collect();
        instants.extend((1..=4).map(|i| i * delay));
        let mut sorted = instants.clone();
        sorted.sort_unstable();
        sorted.dedup();
        proptest::prop_assume!(sorted.len() == instants.len());

        let (calls, outcome, at) = model(&latency, &good, delay, hedges);
        let schedule: Vec<Answer> = attempts
            .iter()
            .map(|&(l, g)| Answer { latency: ms(l), status: if g { Ok(200) } else { Ok(503) } })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let backend = Backend::new(schedule);
            let layer = fixed(delay).max_hedges(hedges as u32).build().unwrap();
            let svc = layer.layer(backend.service::<Empty<Bytes>>());
            let start = Instant::now();
            let res = svc.oneshot(get("/")).await.unwrap();
            proptest::prop_assert_eq!(start.elapsed(), ms(at));
            let (n, ok) = match outcome { Ok(n) => (n, true), Err(n) => (n, false) };
            proptest::prop_assert_eq!(res.body(), &format!("attempt {n}"));
            proptest::prop_assert_eq!(res.status().is_success(), ok);
            proptest::prop_assert_eq!(backend.calls(), calls);
            proptest::prop_assert_eq!(backend.live.load(SeqCst), 0);
            Ok(())
        })?;
    }
}
