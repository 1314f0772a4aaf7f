//! Fault injection behaviour, all on paused time.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use palisade_chaos::{
    ChaosHandle, ChaosLayer, Fault, FaultKind, InjectedFault, Latency, ResponseBody,
};
use palisade_core::audit::{Audit, MemorySink};
use palisade_core::error::{BoxError, Overloaded, Rejection};
use palisade_core::key::{HeaderKey, KeyExtractor};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

const MS: fn(u64) -> Duration = Duration::from_millis;

/// A body that yields its frames one by one and counts its drop.
struct Frames {
    frames: VecDeque<Frame<Bytes>>,
    _alive: Option<Arc<()>>,
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.frames.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }
}

/// The healthy backend: 200 with the body `hello world!` in three 4-byte frames and a trailer. It
/// counts its calls and keeps the `Arc<()>` request extension alive in the body (to see what is freed).
#[derive(Clone, Default)]
struct Backend {
    calls: Arc<AtomicUsize>,
}

impl Backend {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service<Request<()>> for Backend {
    type Response = Response<Frames>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Response<Frames>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut trailers = HeaderMap::new();
        trailers.insert("x-done", HeaderValue::from_static("yes"));
        let body = Frames {
            frames: VecDeque::from([
                Frame::data(Bytes::from_static(b"hell")),
                Frame::data(Bytes::from_static(b"o wo")),
                Frame::data(Bytes::from_static(b"rld!")),
                Frame::trailers(trailers),
            ]),
            _alive: req.extensions().get::<Arc<()>>().cloned(),
        };
        std::future::ready(Ok(Response::new(body)))
    }
}

type Svc = palisade_chaos::Chaos<Backend, palisade_chaos::NoTenant>;

fn setup() -> (Svc, ChaosHandle, Backend) {
    setup_seeded(7)
}

fn setup_seeded(seed: u64) -> (Svc, ChaosHandle, Backend) {
    let layer = ChaosLayer::builder().seed(seed).build();
    let backend = Backend::default();
    (layer.layer(backend.clone()), layer.handle(), backend)
}

fn get(path: &str) -> Request<()> {
    Request::get(path).body(()).unwrap()
}

async fn send<S>(svc: &S, req: Request<()>) -> Result<Response<ResponseBody<Frames>>, BoxError>
where
    S: Service<Request<()>, Response = Response<ResponseBody<Frames>>, Error = BoxError> + Clone,
{
    svc.clone().oneshot(req).await
}

async fn status<S>(svc: &S, req: Request<()>) -> StatusCode
where
    S: Service<Request<()>, Response = Response<ResponseBody<Frames>>, Error = BoxError> + Clone,
{
    send(svc, req).await.expect("a response").status()
}

fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    Pin::new(fut).poll(&mut Context::from_waker(Waker::noop()))
}

/// The kinds of the audit records so far.
async fn kinds(audit: &Audit, ring: &MemorySink) -> Vec<String> {
    audit.flush().await.unwrap();
    ring.records().into_iter().map(|r| r.kind).collect()
}

#[tokio::test(start_paused = true)]
async fn no_fault_passes_everything_through() {
    let (svc, handle, backend) = setup();
    assert!(!handle.is_active());
    let res = send(&svc, get("/")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let collected = res.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["x-done"], "yes");
    assert_eq!(collected.to_bytes(), "hello world!");
    assert_eq!(backend.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn status_fault_answers_without_calling_the_service() {
    let (svc, handle, backend) = setup();
    let id = handle.inject(Fault::status(StatusCode::SERVICE_UNAVAILABLE));
    let res = send(&svc, get("/")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.extensions().get::<InjectedFault>().unwrap().id, id);
    assert!(res.body().is_end_stream());
    assert!(res
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .is_empty());
    assert_eq!(backend.calls(), 0);
    assert_eq!(handle.active()[0].hits(), 1);
}

#[tokio::test(start_paused = true)]
async fn error_fault_returns_the_marker_or_the_given_value() {
    let (svc, handle, backend) = setup();
    let id = handle.inject(Fault::error());
    let err = send(&svc, get("/")).await.unwrap_err();
    assert_eq!(err.downcast_ref::<InjectedFault>().unwrap().id, id);
    assert_eq!(
        err.to_string(),
        format!("fault injected by palisade-chaos (fault {id})")
    );
    assert!(Rejection::find(&*err).is_none(), "not a rejection: a 500");

    handle.clear();
    handle.inject(Fault::error_with(|| Overloaded::new().into()));
    let err = send(&svc, get("/")).await.unwrap_err();
    assert_eq!(Rejection::find(&*err).unwrap().http_status(), 503);
    assert!(err.downcast_ref::<Overloaded>().is_some());
    assert_eq!(backend.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn fixed_latency_delays_the_response() {
    let (svc, handle, backend) = setup();
    handle.inject(Fault::latency(MS(250)));
    let start = Instant::now();
    let mut fut = svc.clone().oneshot(get("/"));
    assert!(poll_once(&mut fut).is_pending());
    tokio::time::advance(MS(249)).await;
    assert!(poll_once(&mut fut).is_pending());
    tokio::time::advance(MS(1)).await;
    let res = match poll_once(&mut fut) {
        Poll::Ready(res) => res.unwrap(),
        Poll::Pending => panic!("ready after the delay"),
    };
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(start.elapsed(), MS(250));
    assert_eq!(backend.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn latency_distributions_stay_in_bounds() {
    for latency in [
        Latency::uniform(MS(100), MS(300)),
        Latency::exponential(MS(50)),
        Latency::normal(MS(200), MS(20)),
    ] {
        let (svc, handle, _) = setup();
        handle.inject(Fault::latency(latency));
        let (mut lo, mut hi) = (Duration::MAX, Duration::ZERO);
        for _ in 0..200 {
            let start = Instant::now();
            assert_eq!(status(&svc, get("/")).await, StatusCode::OK);
            let took = start.elapsed();
            // The timer wheel rounds up to the millisecond.
            assert!(
                latency.min() <= took && took <= latency.max() + MS(1),
                "{latency}: {took:?}"
            );
            lo = lo.min(took);
            hi = hi.max(took);
        }
        // The delays spread over the range rather than sticking to one value.
        assert!(
            hi - lo >= (latency.max() - latency.min()) / 5,
            "{latency}: {lo:?}..{hi:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn latency_combines_with_a_status() {
    let (svc, handle, _) = setup();
    handle.inject(Fault::latency(MS(100)));
    handle.inject(Fault::latency(MS(50)));
    handle.inject(Fault::status(StatusCode::BAD_GATEWAY));
    handle.inject(Fault::status(StatusCode::GATEWAY_TIMEOUT)); // the first terminal fault wins
    let start = Instant::now();
    assert_eq!(status(&svc, get("/")).await, StatusCode::BAD_GATEWAY);
    assert_eq!(start.elapsed(), MS(150));
    let hits: Vec<u64> = handle.active().iter().map(|f| f.hits()).collect();
    assert_eq!(hits, [1, 1, 1, 0]);
}

#[tokio::test(start_paused = true)]
async fn abort_stays_pending_until_dropped_and_drop_frees_everything() {
    let (svc, handle, backend) = setup();
    handle.inject(Fault::abort());
    let alive = Arc::new(());
    let mut req = get("/");
    req.extensions_mut().insert(alive.clone());
    let mut fut = svc.clone().oneshot(req);
    assert!(poll_once(&mut fut).is_pending());
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert!(poll_once(&mut fut).is_pending());
    // A timeout (or the client going away) is what ends it.
    let elapsed = tokio::time::timeout(Duration::from_secs(5), &mut fut).await;
    assert!(elapsed.is_err());
    drop(fut);
    assert_eq!(Arc::strong_count(&alive), 1, "the request is freed");
    assert_eq!(backend.calls(), 0);
    drop(svc);
    // Nothing else holds the layer's state: the handle is the last owner.
    handle.clear();
    assert!(!handle.is_active());
}

#[tokio::test(start_paused = true)]
async fn body_stall_delivers_the_head_then_stops() {
    let (svc, handle, _) = setup();
    handle.inject(Fault::body_stall(5));
    let alive = Arc::new(());
    let mut req = get("/");
    req.extensions_mut().insert(alive.clone());
    let mut res = send(&svc, req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.body_mut();
    assert!(!body.is_end_stream());
    // Whole frames until at least 5 bytes went out: "hell" (4) and "o wo" (8).
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!([first, second].concat(), b"hello wo");
    assert!(!body.is_stalled());
    let next = tokio::time::timeout(Duration::from_secs(600), body.frame()).await;
    assert!(next.is_err(), "the body never continues");
    assert!(body.is_stalled());
    assert!(!body.is_end_stream());
    drop(res);
    assert_eq!(
        Arc::strong_count(&alive),
        1,
        "dropping the body frees the inner body"
    );
}

#[tokio::test(start_paused = true)]
async fn body_stall_at_zero_and_past_the_end() {
    let (svc, handle, _) = setup();
    let id = handle.inject(Fault::body_stall(0));
    let mut res = send(&svc, get("/")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let next = tokio::time::timeout(Duration::from_secs(60), res.body_mut().frame()).await;
    assert!(next.is_err(), "nothing after the head");

    // Past the end of the body: all data arrives, but neither the trailers nor the end.
    handle.remove(id);
    handle.inject(Fault::body_stall(1_000));
    let mut res = send(&svc, get("/")).await.unwrap();
    let body = res.body_mut();
    let mut data = Vec::new();
    for _ in 0..3 {
        data.extend_from_slice(&body.frame().await.unwrap().unwrap().into_data().unwrap());
    }
    assert_eq!(data, b"hello world!");
    let next = tokio::time::timeout(Duration::from_secs(60), body.frame()).await;
    assert!(next.is_err(), "no trailers, no end");
}

#[tokio::test(start_paused = true)]
async fn probability_zero_and_one() {
    let (svc, handle, backend) = setup();
    let never = handle.inject(Fault::status(StatusCode::IM_A_TEAPOT).probability(0.0));
    for _ in 0..100 {
        assert_eq!(status(&svc, get("/")).await, StatusCode::OK);
    }
    assert_eq!(backend.calls(), 100);
    handle.remove(never);
    handle.inject(Fault::status(StatusCode::IM_A_TEAPOT).probability(1.0));
    for _ in 0..100 {
        assert_eq!(status(&svc, get("/")).await, StatusCode::IM_A_TEAPOT);
    }
    assert_eq!(backend.calls(), 100);
    assert_eq!(handle.active()[0].hits(), 100);
}

/// Which of `n` requests got the fault, with a 30 % status fault.
async fn decisions(seed: u64, n: usize) -> Vec<bool> {
    let (svc, handle, _) = setup_seeded(seed);
    handle.inject(Fault::status(StatusCode::SERVICE_UNAVAILABLE).probability(0.3));
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(status(&svc, get("/")).await == StatusCode::SERVICE_UNAVAILABLE);
    }
    out
}

#[tokio::test(start_paused = true)]
async fn seeded_rate_is_about_right_and_reproducible() {
    let a = decisions(42, 2_000).await;
    let b = decisions(42, 2_000).await;
    assert_eq!(a, b, "same seed, same decisions");
    let rate = a.iter().filter(|&&x| x).count() as f64 / a.len() as f64;
    assert!((0.27..0.33).contains(&rate), "rate {rate}");
    let c = decisions(43, 2_000).await;
    assert_ne!(a, c, "another seed, other decisions");
}

#[tokio::test(start_paused = true)]
async fn seeded_latencies_are_reproducible() {
    async fn delays(seed: u64) -> Vec<Duration> {
        let (svc, handle, _) = setup_seeded(seed);
        handle.inject(Fault::latency(Latency::exponential(MS(20))).probability(0.5));
        let mut out = Vec::new();
        for _ in 0..100 {
            let start = Instant::now();
            status(&svc, get("/")).await;
            out.push(start.elapsed());
        }
        out
    }
    assert_eq!(delays(9).await, delays(9).await);
}

#[tokio::test(start_paused = true)]
async fn targets_a_tenant() {
    let layer = ChaosLayer::builder()
        .seed(1)
        .tenant_key(HeaderKey::from_static("x-tenant"))
        .build();
    let handle = layer.handle();
    let svc = layer.layer(Backend::default());
    handle.inject(Fault::status(StatusCode::TOO_MANY_REQUESTS).tenant("acme"));
    let tenant = |t: &str| Request::get("/").header("x-tenant", t).body(()).unwrap();
    assert_eq!(
        status(&svc, tenant("acme")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(status(&svc, tenant("globex")).await, StatusCode::OK);
    assert_eq!(
        status(&svc, get("/")).await,
        StatusCode::OK,
        "no key, no match"
    );
    handle.inject(
        Fault::status(StatusCode::GONE)
            .tenant("globex")
            .tenant("initech"),
    );
    assert_eq!(status(&svc, tenant("initech")).await, StatusCode::GONE);
    assert_eq!(
        status(&svc, tenant("acme")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test(start_paused = true)]
async fn tenant_faults_never_fire_without_a_tenant_key() {
    let (svc, handle, _) = setup();
    handle.inject(Fault::status(StatusCode::GONE).tenant("acme"));
    let req = Request::get("/")
        .header("x-tenant", "acme")
        .body(())
        .unwrap();
    assert_eq!(status(&svc, req).await, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn targets_a_path_prefix() {
    let (svc, handle, _) = setup();
    handle.inject(Fault::status(StatusCode::NOT_IMPLEMENTED).path_prefix("/api"));
    for (path, hit) in [
        ("/api", true),
        ("/api/orders/7", true),
        ("/api?x=1", true),
        ("/apis", false),
        ("/", false),
        ("/other/api", false),
    ] {
        let expected = if hit {
            StatusCode::NOT_IMPLEMENTED
        } else {
            StatusCode::OK
        };
        assert_eq!(status(&svc, get(path)).await, expected, "{path}");
    }
}

#[tokio::test(start_paused = true)]
async fn targets_methods() {
    let (svc, handle, _) = setup();
    handle.inject(
        Fault::status(StatusCode::CONFLICT)
            .method(Method::POST)
            .method(Method::PUT),
    );
    let req = |m: Method| Request::builder().method(m).uri("/").body(()).unwrap();
    assert_eq!(status(&svc, req(Method::POST)).await, StatusCode::CONFLICT);
    assert_eq!(status(&svc, req(Method::PUT)).await, StatusCode::CONFLICT);
    assert_eq!(status(&svc, req(Method::GET)).await, StatusCode::OK);
    assert_eq!(status(&svc, req(Method::DELETE)).await, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn targets_headers() {
    let (svc, handle, _) = setup();
    let chaos = HeaderName::from_static("x-chaos");
    let canary = HeaderName::from_static("x-canary");
    handle.inject(
        Fault::status(StatusCode::BAD_GATEWAY)
            .header(chaos.clone(), HeaderValue::from_static("on"))
            .header_present(canary.clone()),
    );
    let req = |headers: &[(&HeaderName, &str)]| {
        let mut b = Request::get("/");
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap()
    };
    assert_eq!(
        status(&svc, req(&[(&chaos, "on"), (&canary, "1")])).await,
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(
        status(&svc, req(&[(&chaos, "off"), (&chaos, "on"), (&canary, "")])).await,
        StatusCode::BAD_GATEWAY,
        "any of a repeated header's values"
    );
    assert_eq!(status(&svc, req(&[(&chaos, "on")])).await, StatusCode::OK);
    assert_eq!(
        status(&svc, req(&[(&chaos, "off"), (&canary, "1")])).await,
        StatusCode::OK
    );
    assert_eq!(status(&svc, req(&[])).await, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn expiring_fault_is_removed_by_the_next_request_and_audited() {
    let (audit, ring) = Audit::memory(64);
    let layer = ChaosLayer::builder().name("db").audit(&audit).build();
    let handle = layer.handle();
    let svc = layer.layer(Backend::default());
    let id =
        handle.inject(Fault::status(StatusCode::SERVICE_UNAVAILABLE).expires_after(MS(30_000)));
    let active = handle.active();
    assert_eq!(active[0].remaining(), Some(MS(30_000)));
    assert_eq!(
        status(&svc, get("/")).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    tokio::time::advance(MS(29_999)).await;
    assert_eq!(
        status(&svc, get("/")).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    tokio::time::advance(MS(1)).await;
    assert_eq!(status(&svc, get("/")).await, StatusCode::OK);
    assert!(!handle.is_active());
    assert!(!handle.remove(id), "already gone");

    assert_eq!(
        kinds(&audit, &ring).await,
        ["chaos.injected", "chaos.expired"]
    );
    let expired = &ring.records()[1];
    assert_eq!(expired.details["id"], id.get());
    assert_eq!(expired.details["chaos"], "db");
    assert_eq!(expired.details["hits"], 2);
    assert_eq!(expired.details["active_ms"], 30_000);
}

#[tokio::test(start_paused = true)]
async fn expiry_is_noticed_by_handle_calls_too() {
    let (audit, ring) = Audit::memory(64);
    let layer = ChaosLayer::builder().audit(&audit).build();
    let handle = layer.handle();
    handle.inject(Fault::abort().expires_after(Duration::from_secs(10)));
    let keep = handle.inject(Fault::latency(MS(5)));
    handle.inject(Fault::error().expires_after(Duration::from_secs(20)));
    tokio::time::advance(Duration::from_secs(15)).await;
    let ids: Vec<_> = handle.active().iter().map(|f| f.id()).collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], keep);
    tokio::time::advance(Duration::from_secs(5)).await;
    // inject notices the second expiry before adding its fault.
    handle.inject(Fault::abort());
    assert_eq!(handle.active().len(), 2);
    assert_eq!(
        kinds(&audit, &ring).await,
        [
            "chaos.injected",
            "chaos.injected",
            "chaos.injected",
            "chaos.expired",
            "chaos.expired",
            "chaos.injected"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn handle_operations_are_audited() {
    let (audit, ring) = Audit::memory(64);
    let layer = ChaosLayer::builder().name("payments").audit(&audit).build();
    let handle = layer.handle();
    let a = handle.inject(
        Fault::status(StatusCode::SERVICE_UNAVAILABLE)
            .tenant("acme")
            .probability(0.5)
            .expires_after(Duration::from_secs(60))
            .label("gameday"),
    );
    let b = handle.inject(Fault::latency(MS(200)).path_prefix("/pay"));
    let c = handle.inject(Fault::body_stall(10));
    assert_ne!(a, b);
    assert!(handle.remove(b));
    assert!(!handle.remove(b), "removing twice is a no-op");
    let listed: Vec<_> = handle.active().iter().map(|f| f.id()).collect();
    assert_eq!(listed, [a, c]);
    assert_eq!(handle.clear(), 2);
    assert_eq!(handle.clear(), 0);
    assert!(handle.active().is_empty());

    assert_eq!(
        kinds(&audit, &ring).await,
        [
            "chaos.injected",
            "chaos.injected",
            "chaos.injected",
            "chaos.removed",
            "chaos.removed",
            "chaos.removed"
        ]
    );
    let records = ring.records();
    let injected = &records[0];
    assert_eq!(injected.tenant.as_deref(), Some("acme"));
    assert_eq!(injected.details["chaos"], "payments");
    assert_eq!(injected.details["id"], a.get());
    assert_eq!(injected.details["kind"], "status");
    assert_eq!(injected.details["probability"], 0.5);
    assert_eq!(injected.details["expires_after_ms"], 60_000);
    assert_eq!(injected.details["label"], "gameday");
    assert_eq!(
        injected.details["fault"],
        "status 503 tenant acme p=0.5 for 60s (gameday)"
    );
    assert_eq!(records[1].details["fault"], "latency 200ms on /pay");
    let removed: Vec<_> = records[3..]
        .iter()
        .map(|r| {
            (
                r.details["id"].as_u64().unwrap(),
                r.details["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        removed,
        [
            (b.get(), "removed"),
            (a.get(), "cleared"),
            (c.get(), "cleared")
        ]
    );
    assert!(audit.verify(&records, None).is_ok());
}

#[tokio::test(start_paused = true)]
async fn one_fault_set_for_every_service_of_a_layer() {
    let layer = ChaosLayer::new();
    let handle = layer.handle();
    let one = layer.layer(Backend::default());
    let two = layer.clone().layer(Backend::default());
    handle.inject(Fault::status(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(
        status(&one, get("/")).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        status(&two, get("/")).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    handle.clear();
    assert_eq!(status(&one, get("/")).await, StatusCode::OK);
    assert_eq!(status(&two, get("/")).await, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn listing_describes_faults() {
    let (svc, handle, _) = setup();
    handle.inject(Fault::abort().method(Method::DELETE).label("no deletes"));
    assert_eq!(status(&svc, get("/")).await, StatusCode::OK);
    let active = handle.active();
    assert!(matches!(active[0].fault().kind(), FaultKind::Abort));
    assert_eq!(active[0].fault().name(), Some("no deletes"));
    assert_eq!(
        active[0].to_string(),
        "#1 abort on DELETE (no deletes) (0 hits)"
    );
    assert_eq!(active[0].remaining(), None);
    assert!(format!("{handle:?}").contains("active: 1"));
}

#[tokio::test(start_paused = true)]
async fn tenant_key_is_extracted_only_while_a_fault_targets_tenants() {
    let extracted = Arc::new(AtomicUsize::new(0));
    let counter = extracted.clone();
    let layer = ChaosLayer::builder()
        .tenant_key(palisade_core::key::key_fn(move |req: &Request<()>| {
            counter.fetch_add(1, Ordering::SeqCst);
            HeaderKey::from_static("x-tenant").extract(req)
        }))
        .build();
    let handle = layer.handle();
    let svc = layer.layer(Backend::default());
    let acme = || {
        Request::get("/")
            .header("x-tenant", "acme")
            .body(())
            .unwrap()
    };

    assert_eq!(status(&svc, acme()).await, StatusCode::OK); // no fault
    let other = handle.inject(Fault::status(StatusCode::GONE).path_prefix("/x"));
    assert_eq!(status(&svc, acme()).await, StatusCode::OK); // a fault, not tenant-targeted
    assert_eq!(extracted.load(Ordering::SeqCst), 0);

    let tenant = handle.inject(Fault::status(StatusCode::GONE).tenant("acme"));
    assert_eq!(status(&svc, acme()).await, StatusCode::GONE);
    assert_eq!(extracted.load(Ordering::SeqCst), 1, "once per request");
    handle.remove(tenant);
    assert_eq!(status(&svc, acme()).await, StatusCode::OK);
    assert_eq!(extracted.load(Ordering::SeqCst), 1);
    handle.remove(other);
}

#[tokio::test(start_paused = true)]
async fn an_error_factory_may_use_the_handle() {
    let (svc, handle, _) = setup();
    let inner = handle.clone();
    // User code runs outside the fault set's lock: calling the handle from it cannot deadlock.
    handle.inject(Fault::error_with(move || {
        inner.clear();
        "one-shot failure".into()
    }));
    let err = send(&svc, get("/")).await.unwrap_err();
    assert_eq!(err.to_string(), "one-shot failure");
    assert!(!handle.is_active());
    assert_eq!(status(&svc, get("/")).await, StatusCode::OK);
}
