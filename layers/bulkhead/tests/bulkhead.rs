//! Bulkhead behaviour, on paused time.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use palisade_bulkhead::{
    BulkheadHandle, BulkheadLayer, MissingKey, Overloaded, Priority, PriorityHeader, ResponseBody,
};
use palisade_core::audit::Audit;
use palisade_core::error::{BoxError, KeyError};
use palisade_core::health::{Health, HealthState};
use palisade_core::key::HeaderKey;
use palisade_core::rng::Rng;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tower::{service_fn, Layer, Service, ServiceExt};

/// A body of a few chunks, yielded one per poll.
#[derive(Debug)]
struct Chunks(VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

fn chunks(n: usize) -> Chunks {
    Chunks((0..n).map(|i| Bytes::from(format!("chunk {i}"))).collect())
}

/// A stand-in service: logs the `x-id` of every call it receives, then waits for the gate (one gate
/// permit per response) before answering with a two-chunk body.
#[derive(Clone)]
struct Backend {
    log: Arc<Mutex<Vec<String>>>,
    gate: Arc<Semaphore>,
}

impl Default for Backend {
    fn default() -> Self {
        Backend {
            log: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
        }
    }
}

impl Backend {
    fn service(
        &self,
    ) -> impl Service<
        Request<()>,
        Response = Response<Chunks>,
        Error = BoxError,
        Future = impl Future<Output = Result<Response<Chunks>, BoxError>> + Send,
    > + Clone
           + Send {
        let this = self.clone();
        service_fn(move |req: Request<()>| {
            let this = this.clone();
            let id = req
                .headers()
                .get("x-id")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            this.log.lock().unwrap().push(id);
            async move {
                this.gate.acquire().await.unwrap().forget();
                Ok::<_, BoxError>(Response::new(chunks(2)))
            }
        })
    }

    /// Lets `n` responses finish.
    fn open(&self, n: usize) {
        self.gate.add_permits(n);
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

fn req(id: &str, tenant: Option<&str>, priority: Option<Priority>) -> Request<()> {
    let mut b = Request::get("/").header("x-id", id);
    if let Some(t) = tenant {
        b = b.header("x-tenant-id", t);
    }
    if let Some(p) = priority {
        b = b.header("x-priority", p.as_str());
    }
    b.body(()).unwrap()
}

/// Lets every task run until it blocks (paused time: advances the clock by 1 ms at most).
async fn settle() {
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// Sends one request through a clone of `svc` in a task, reading the whole body.
fn spawn<S>(svc: &S, request: Request<()>) -> JoinHandle<Result<usize, BoxError>>
where
    S: Service<Request<()>, Response = Response<ResponseBody<Chunks>>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let svc = svc.clone();
    tokio::spawn(async move {
        let res = svc.oneshot(request).await?;
        let body = res.into_body().collect().await.unwrap().to_bytes();
        Ok(body.len())
    })
}

fn is_overloaded(err: &BoxError) -> bool {
    err.downcast_ref::<Overloaded>().is_some()
}

fn tenant(handle: &BulkheadHandle, key: &'static str) -> (usize, usize) {
    let t = handle
        .tenant(&HeaderValue::from_static(key))
        .unwrap_or_else(|| panic!("tenant {key} is tracked"));
    (t.in_flight, t.queued)
}

#[tokio::test(start_paused = true)]
async fn rejects_at_once_when_full_and_poll_ready_never_waits() {
    let backend = Backend::default();
    let layer = BulkheadLayer::builder()
        .max_concurrent(2)
        .retry_after(Duration::from_millis(250))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(backend.service());
    let a = spawn(&svc, req("a", None, None));
    let b = spawn(&svc, req("b", None, None));
    settle().await;
    assert_eq!(handle.in_flight(), 2);
    assert_eq!(handle.available(), 0);

    // Full: poll_ready is still ready at once (admission is decided in call)...
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    // ...and call refuses at once.
    let err = svc.call(req("c", None, None)).await.unwrap_err();
    let o = err.downcast_ref::<Overloaded>().expect("Overloaded");
    assert_eq!(o.retry_after, Some(Duration::from_millis(250)));
    assert_eq!(handle.rejected(), 1);
    assert_eq!(backend.log(), ["a", "b"]);

    backend.open(2);
    assert_eq!(a.await.unwrap().unwrap(), 14);
    assert_eq!(b.await.unwrap().unwrap(), 14);
    assert_eq!(handle.in_flight(), 0);
}

/// One request of the storm: call, read the body slowly, count the outcome.
fn storm_task<S>(
    svc: &S,
    request: Request<()>,
    body_ms: u64,
    results: Arc<Mutex<[usize; 3]>>,
) -> JoinHandle<()>
where
    S: Service<Request<()>, Response = Response<ResponseBody<Chunks>>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let svc = svc.clone();
    tokio::spawn(async move {
        let outcome = match svc.oneshot(request).await {
            Ok(res) => {
                let mut body = res.into_body();
                // Read the body slowly: the permit is held until it ends (or is dropped).
                while let Some(frame) = body.frame().await {
                    frame.unwrap();
                    tokio::time::sleep(Duration::from_millis(body_ms)).await;
                }
                0
            }
            Err(e) if is_overloaded(&e) => 1,
            Err(_) => 2,
        };
        results.lock().unwrap()[outcome] += 1;
    })
}

#[tokio::test(start_paused = true)]
async fn cancellation_storm_gives_every_permit_back() {
    const REQUESTS: usize = 10_000;
    const LIMIT: usize = 40;
    let mut rng = Rng::seeded(0x5EED_B01C);
    let layer = BulkheadLayer::builder()
        .max_concurrent(LIMIT)
        .max_per_tenant(15)
        .queue(300, Duration::from_millis(50))
        .aging(Duration::from_millis(10))
        .hold_until_body_end()
        .priority(PriorityHeader::from_static("x-priority"))
        .keyed(HeaderKey::from_static("x-tenant-id"))
        .build()
        .unwrap();
    let handle = layer.handle();
    // Each call takes a random time (0-20 ms) before answering with a body read slowly.
    let svc = layer.layer(service_fn(|req: Request<()>| async move {
        let ms: u64 = req.headers()["x-work-ms"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok::<_, BoxError>(Response::new(chunks(3)))
    }));

    let tenants = ["a", "b", "c", "d", "e"];
    let mut tasks: Vec<(JoinHandle<()>, u64)> = Vec::with_capacity(REQUESTS);
    let mut outcomes = [0usize; 3]; // ok, overloaded, other
    let results = Arc::new(Mutex::new(outcomes));
    for i in 0..REQUESTS {
        let mut request = req(
            &i.to_string(),
            if rng.chance(0.05) {
                None
            } else {
                Some(tenants[rng.below(5) as usize])
            },
            Some(Priority::ALL[rng.below(3) as usize]),
        );
        request
            .headers_mut()
            .insert("x-work-ms", HeaderValue::from(rng.below(20)));
        let body_ms = rng.below(10);
        let task = storm_task(&svc, request, body_ms, results.clone());
        // Cancel it after a random time (some never: they run to the end).
        let cancel_at = if rng.chance(0.2) {
            u64::MAX
        } else {
            rng.below(60)
        };
        tasks.push((task, cancel_at));
        // Requests arrive in bursts over ~100 ms; cancellations fire as time passes.
        if i % 100 == 99 {
            tokio::time::advance(Duration::from_millis(1)).await;
            tokio::task::yield_now().await;
            assert!(
                handle.in_flight() <= LIMIT,
                "never more than the limit in flight"
            );
            assert!(
                handle.queued() <= 300,
                "never more than the queue bound waiting"
            );
            for (task, at) in tasks.iter_mut() {
                if *at == 0 {
                    task.abort();
                }
                *at = at.saturating_sub(1);
            }
        }
    }
    // Cancel every remaining request at a random point of the next 60 ms, then let everything end.
    for _ in 0..60 {
        tokio::time::advance(Duration::from_millis(1)).await;
        tokio::task::yield_now().await;
        for (task, at) in tasks.iter_mut() {
            if *at == 0 {
                task.abort();
            }
            *at = at.saturating_sub(1);
        }
    }
    for (task, _) in tasks.drain(..) {
        match task.await {
            Ok(()) => {}
            Err(e) => assert!(e.is_cancelled(), "no task panicked: {e}"),
        }
    }
    outcomes = *results.lock().unwrap();
    assert_eq!(outcomes[2], 0, "only Overloaded rejections: {outcomes:?}");
    assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");

    // Every permit came back, and no waiter is left behind.
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(handle.queued(), 0);
    for t in handle.tenants() {
        assert_eq!((t.in_flight, t.queued), (0, 0), "{t:?}");
    }
    // Full capacity is available again: LIMIT requests (from many tenants) all get in at once.
    let held: Vec<_> = (0..LIMIT)
        .map(|i| {
            let mut r = req("after", Some(["v", "w", "x", "y", "z"][i % 5]), None);
            r.headers_mut().insert("x-work-ms", HeaderValue::from(1000));
            let svc = svc.clone();
            tokio::spawn(svc.oneshot(r))
        })
        .collect();
    settle().await;
    assert_eq!(handle.in_flight(), LIMIT);
    assert_eq!(handle.queued(), 0);
    for h in held {
        h.abort();
        let _ = h.await;
    }
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn queue_is_fair_across_tenants_by_deficit_round_robin() {
    let backend = Backend::default();
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(200, Duration::from_secs(60))
        .keyed(HeaderKey::from_static("x-tenant-id"))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(backend.service());
    let mut tasks = vec![spawn(&svc, req("hold", Some("a"), None))];
    settle().await;
    for i in 0..100 {
        tasks.push(spawn(&svc, req(&format!("a{i}"), Some("a"), None)));
    }
    settle().await;
    tasks.push(spawn(&svc, req("b0", Some("b"), None)));
    settle().await;
    assert_eq!(handle.queued(), 101);
    assert_eq!(tenant(&handle, "a"), (1, 100));
    assert_eq!(tenant(&handle, "b"), (0, 1));

    // Release one at a time: B, with 1 waiting, is served within the first two releases although
    // A queued 100 before it.
    for _ in 0..3 {
        backend.open(1);
        settle().await;
    }
    let log = backend.log();
    let b_at = log.iter().position(|id| id == "b0").expect("b served");
    assert!(b_at <= 2, "b served within the first two releases: {log:?}");
    assert_eq!(&log[..3], ["hold", "a0", "b0"]);

    backend.open(1000);
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let log = backend.log();
    assert_eq!(log.len(), 102);
    // A's requests in its own order.
    let a: Vec<_> = log
        .iter()
        .filter(|id| id.starts_with('a'))
        .cloned()
        .collect();
    assert_eq!(a, (0..100).map(|i| format!("a{i}")).collect::<Vec<_>>());
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn round_robin_alternates_tenants_with_a_quantum() {
    let backend = Backend::default();
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(100, Duration::from_secs(60))
        .quantum(2)
        .keyed(HeaderKey::from_static("x-tenant-id"))
        .build()
        .unwrap();
    let svc = layer.layer(backend.service());
    let mut tasks = vec![spawn(&svc, req("hold", Some("z"), None))];
    settle().await;
    for i in 0..4 {
        tasks.push(spawn(&svc, req(&format!("a{i}"), Some("a"), None)));
    }
    for i in 0..4 {
        tasks.push(spawn(&svc, req(&format!("b{i}"), Some("b"), None)));
    }
    settle().await;
    backend.open(100);
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(
        backend.log(),
        ["hold", "a0", "a1", "b0", "b1", "a2", "a3", "b2", "b3"]
    );
}

#[tokio::test(start_paused = true)]
async fn priority_classes_then_aging_prevents_starvation() {
    let backend = Backend::default();
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(100, Duration::from_secs(10))
        .aging(Duration::from_millis(100))
        .priority(PriorityHeader::from_static("x-priority"))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(backend.service());
    let mut tasks = vec![spawn(&svc, req("hold", None, None))];
    settle().await;
    // Queued lowest first; served highest first.
    tasks.push(spawn(&svc, req("bg", None, Some(Priority::Background))));
    tasks.push(spawn(&svc, req("normal", None, Some(Priority::Normal))));
    tasks.push(spawn(&svc, req("crit", None, Some(Priority::Critical))));
    settle().await;
    assert_eq!(handle.queued(), 3);
    for _ in 0..3 {
        backend.open(1);
        settle().await;
    }
    assert_eq!(backend.log(), ["hold", "crit", "normal", "bg"]);
    backend.open(1);
    for t in tasks.drain(..) {
        t.await.unwrap().unwrap();
    }

    // Constant critical load: there is always a critical request waiting when a slot frees. A
    // background request is served once it has waited two aging intervals (one class up per
    // interval: it then ranks like a critical request that arrived now), not never.
    let mut tasks = vec![spawn(&svc, req("hold2", None, None))];
    settle().await;
    tasks.push(spawn(
        &svc,
        req("starving", None, Some(Priority::Background)),
    ));
    settle().await;
    let queued_at = tokio::time::Instant::now();
    let mut served_after = None;
    for i in 0..50 {
        tasks.push(spawn(
            &svc,
            req(&format!("c{i}"), None, Some(Priority::Critical)),
        ));
        settle().await;
        tokio::time::advance(Duration::from_millis(9)).await;
        backend.open(1);
        settle().await;
        if backend.log().last().map(String::as_str) == Some("starving") {
            served_after = Some(queued_at.elapsed());
            break;
        }
    }
    let waited = served_after.expect("the background request was served under critical load");
    assert!(
        waited >= Duration::from_millis(200) && waited <= Duration::from_millis(240),
        "served once aged: {waited:?}"
    );
    backend.open(1000);
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_queued_request_is_refused_exactly_at_its_max_wait() {
    let backend = Backend::default();
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(10, Duration::from_millis(100))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(backend.service());
    let hold = spawn(&svc, req("hold", None, None));
    settle().await;
    let start = tokio::time::Instant::now();
    let waiting = spawn(&svc, req("waiting", None, None));
    tokio::task::yield_now().await;
    assert_eq!(handle.queued(), 1);

    tokio::time::advance(Duration::from_millis(99)).await;
    tokio::task::yield_now().await;
    assert!(
        !waiting.is_finished(),
        "still waiting 1 ms before the deadline"
    );
    assert_eq!(handle.queued(), 1);

    tokio::time::advance(Duration::from_millis(1)).await;
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
    assert!(waiting.is_finished(), "refused at the deadline");
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    let err = waiting.await.unwrap().unwrap_err();
    assert!(is_overloaded(&err), "{err}");
    assert_eq!(handle.queued(), 0);
    assert_eq!(handle.rejected(), 1);
    assert_eq!(
        backend.log(),
        ["hold"],
        "the refused request never reached the service"
    );

    backend.open(1);
    hold.await.unwrap().unwrap();
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_at_once_and_a_tenant_cannot_fill_it() {
    let backend = Backend::default();
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(3, Duration::from_secs(1))
        .max_queued_per_tenant(2)
        .keyed(HeaderKey::from_static("x-tenant-id"))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(backend.service());
    let mut tasks = vec![spawn(&svc, req("hold", Some("a"), None))];
    settle().await;
    tasks.push(spawn(&svc, req("a1", Some("a"), None)));
    tasks.push(spawn(&svc, req("a2", Some("a"), None)));
    settle().await;
    let err = svc
        .clone()
        .oneshot(req("a3", Some("a"), None))
        .await
        .unwrap_err();
    assert!(is_overloaded(&err), "a's part of the queue is full");
    tasks.push(spawn(&svc, req("b1", Some("b"), None)));
    settle().await;
    assert_eq!(handle.queued(), 3);
    let err = svc
        .clone()
        .oneshot(req("c1", Some("c"), None))
        .await
        .unwrap_err();
    assert!(is_overloaded(&err), "the queue is full");
    assert_eq!(handle.rejected(), 2);
    backend.open(100);
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_tenant_at_its_share_is_refused_while_others_get_in() {
    let backend = Backend::default();
    let health = Health::new();
    let layer = BulkheadLayer::builder()
        .name("api")
        .max_concurrent(10)
        .max_per_tenant(2)
        .health(&health)
        .keyed(HeaderKey::from_static("x-tenant-id"))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(backend.service());
    let a1 = spawn(&svc, req("a1", Some("slow"), None));
    let a2 = spawn(&svc, req("a2", Some("slow"), None));
    settle().await;
    assert_eq!(tenant(&handle, "slow"), (2, 0));

    let err = svc
        .clone()
        .oneshot(req("a3", Some("slow"), None))
        .await
        .unwrap_err();
    assert!(is_overloaded(&err), "the tenant holds its share: {err}");
    let b = spawn(&svc, req("b1", Some("other"), None));
    settle().await;
    assert_eq!(tenant(&handle, "other"), (1, 0));
    assert_eq!(handle.in_flight(), 3);
    // One tenant at its share is not a saturated bulkhead.
    assert!(!handle.is_saturated());
    assert_eq!(health.readiness().status(), HealthState::Healthy);

    // A shrunk share drains: nobody new from the tenant gets in until it is below it.
    handle.set_max_per_tenant(Some(1));
    backend.open(1);
    settle().await;
    let still_over = svc.clone().oneshot(req("a4", Some("slow"), None)).await;
    let admitted_now = handle
        .tenant(&HeaderValue::from_static("slow"))
        .unwrap()
        .in_flight;
    assert!(still_over.is_err() || admitted_now <= 1);
    backend.open(10);
    for t in [a1, a2, b] {
        t.await.unwrap().unwrap();
    }
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(tenant(&handle, "slow"), (0, 0));
}

/// Regression: a tenant at its share must not fill the queue and lock out other tenants while slots
/// are free.
#[tokio::test(start_paused = true)]
async fn a_tenant_at_its_share_cannot_lock_others_out_through_the_queue() {
    let backend = Backend::default();
    let layer = BulkheadLayer::builder()
        .max_concurrent(100)
        .max_per_tenant(1)
        .queue(10, Duration::from_secs(5))
        .keyed(HeaderKey::from_static("x-tenant-id"))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(backend.service());
    let mut hogs = Vec::new();
    for i in 0..11 {
        hogs.push(spawn(&svc, req(&format!("a{i}"), Some("a"), None)));
    }
    settle().await;
    assert_eq!(
        tenant(&handle, "a"),
        (1, 10),
        "one runs, ten wait for the tenant's own slot"
    );
    assert_eq!(handle.queued(), 10, "the queue is full");
    // Another tenant gets in at once: nobody eligible is ahead of it and 99 slots are free.
    let b = spawn(&svc, req("b1", Some("b"), None));
    settle().await;
    assert_eq!(tenant(&handle, "b"), (1, 0));
    assert!(backend.log().contains(&"b1".to_owned()));
    backend.open(100);
    b.await.unwrap().unwrap();
    for h in hogs {
        h.await.unwrap().unwrap();
    }
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(handle.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_queued_tenant_at_its_share_waits_for_its_own_slot() {
    let backend = Backend::default();
    let layer = BulkheadLayer::builder()
        .max_concurrent(4)
        .max_per_tenant(1)
        .queue(10, Duration::from_secs(5))
        .keyed(HeaderKey::from_static("x-tenant-id"))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(backend.service());
    let a1 = spawn(&svc, req("a1", Some("a"), None));
    settle().await;
    let a2 = spawn(&svc, req("a2", Some("a"), None));
    settle().await;
    assert_eq!(tenant(&handle, "a"), (1, 1));
    // Others pass the waiting tenant (there are free global slots).
    let b1 = spawn(&svc, req("b1", Some("b"), None));
    settle().await;
    assert_eq!(backend.log(), ["a1", "b1"]);
    backend.open(1); // a1 ends: a2 gets a's slot
    settle().await;
    assert_eq!(backend.log(), ["a1", "b1", "a2"]);
    backend.open(10);
    for t in [a1, a2, b1] {
        t.await.unwrap().unwrap();
    }
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn body_held_permits_are_released_at_body_end_and_on_body_drop() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(2)
        .hold_until_body_end()
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_req: Request<()>| async {
        Ok::<_, BoxError>(Response::new(chunks(2)))
    }));

    // Read to the end: released with the last frame.
    let res = svc.clone().oneshot(req("1", None, None)).await.unwrap();
    assert_eq!(handle.in_flight(), 1, "the body holds the slot");
    let mut body = res.into_body();
    assert!(body.holds_permit());
    body.frame().await.unwrap().unwrap();
    assert_eq!(handle.in_flight(), 1, "one frame left");
    body.frame().await.unwrap().unwrap();
    assert_eq!(handle.in_flight(), 0, "released at the last frame");
    assert!(body.frame().await.is_none());

    // Dropped half-read: released on drop.
    let res = svc.clone().oneshot(req("2", None, None)).await.unwrap();
    let mut body = res.into_body();
    body.frame().await.unwrap().unwrap();
    assert_eq!(handle.in_flight(), 1);
    drop(body);
    assert_eq!(handle.in_flight(), 0, "released when the body is dropped");

    // An empty body holds nothing.
    let svc_empty = BulkheadLayer::builder()
        .hold_until_body_end()
        .build()
        .unwrap()
        .layer(service_fn(|_req: Request<()>| async {
            Ok::<_, BoxError>(Response::new(chunks(0)))
        }));
    let res = svc_empty.oneshot(req("3", None, None)).await.unwrap();
    assert!(!res.body().holds_permit());

    // Without hold_until_body_end the slot is released with the response head.
    let layer = BulkheadLayer::builder().max_concurrent(1).build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_req: Request<()>| async {
        Ok::<_, BoxError>(Response::new(chunks(2)))
    }));
    let res = svc.oneshot(req("4", None, None)).await.unwrap();
    assert!(!res.body().holds_permit());
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_gives_its_permit_back() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(4, Duration::from_secs(1))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|req: Request<()>| async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if req.headers().contains_key("x-panic") {
            panic!("handler bug");
        }
        Ok::<_, BoxError>(Response::new(chunks(1)))
    }));

    // In a task: the task panics, the JoinError says so, and the permit is back.
    let mut panicking = req("p", None, None);
    panicking
        .headers_mut()
        .insert("x-panic", HeaderValue::from_static("1"));
    let task = tokio::spawn(svc.clone().oneshot(panicking));
    // A queued request behind it gets the slot when the panic releases it.
    let after = tokio::spawn(svc.clone().oneshot(req("after", None, None)));
    settle().await;
    assert_eq!((handle.in_flight(), handle.queued()), (1, 1));
    let err = task.await.unwrap_err();
    assert!(err.is_panic());
    assert!(
        after.await.unwrap().is_ok(),
        "the next request got the slot"
    );
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));

    // Polled by hand under catch_unwind: same.
    let mut panicking = req("p2", None, None);
    panicking
        .headers_mut()
        .insert("x-panic", HeaderValue::from_static("1"));
    let mut fut = Box::pin(svc.clone().oneshot(panicking));
    let mut cx = Context::from_waker(Waker::noop());
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    assert_eq!(handle.in_flight(), 1);
    tokio::time::advance(Duration::from_millis(10)).await;
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = fut.as_mut().poll(&mut cx);
    }));
    assert!(caught.is_err());
    drop(fut);
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_permit_handed_to_a_dropped_waiter_is_passed_on() {
    let backend = Backend::default();
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(4, Duration::from_secs(1))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(backend.service());
    let hold = spawn(&svc, req("hold", None, None));
    settle().await;
    // Two waiters, never polled yet.
    let first = svc.ready().await.unwrap().call(req("first", None, None));
    let second = svc.ready().await.unwrap().call(req("second", None, None));
    assert_eq!(handle.queued(), 2);
    backend.open(1);
    hold.await.unwrap().unwrap();
    // The slot was handed to `first` (it holds it without having been polled).
    assert_eq!((handle.in_flight(), handle.queued()), (1, 1));
    drop(first);
    // ...and passed on to `second` when `first` was dropped.
    assert_eq!((handle.in_flight(), handle.queued()), (1, 0));
    backend.open(1);
    let res = second.await.unwrap();
    drop(res);
    assert_eq!(backend.log(), ["hold", "second"]);
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn limits_resize_at_runtime() {
    let backend = Backend::default();
    let audit_log = Audit::memory(64);
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(10, Duration::from_secs(60))
        .audit(&audit_log.0)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(backend.service());
    let mut tasks = vec![spawn(&svc, req("0", None, None))];
    settle().await;
    tasks.push(spawn(&svc, req("1", None, None)));
    tasks.push(spawn(&svc, req("2", None, None)));
    settle().await;
    assert_eq!((handle.in_flight(), handle.queued()), (1, 2));

    // Growing wakes the waiters at once.
    handle.set_max_concurrent(3);
    settle().await;
    assert_eq!((handle.in_flight(), handle.queued()), (3, 0));
    assert_eq!(backend.log(), ["0", "1", "2"]);

    // Shrinking lets in-flight requests drain: a new one waits until in-flight is below the limit.
    handle.set_max_concurrent(1);
    assert_eq!(handle.max_concurrent(), 1);
    assert_eq!(handle.available(), 0);
    tasks.push(spawn(&svc, req("3", None, None)));
    settle().await;
    assert_eq!((handle.in_flight(), handle.queued()), (3, 1));
    backend.open(2);
    settle().await;
    assert_eq!(
        (handle.in_flight(), handle.queued()),
        (1, 1),
        "still at the new limit"
    );
    backend.open(1);
    settle().await;
    assert_eq!((handle.in_flight(), handle.queued()), (1, 0));
    assert_eq!(backend.log(), ["0", "1", "2", "3"]);
    backend.open(1);
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(handle.in_flight(), 0);

    audit_log.0.flush().await.unwrap();
    let kinds: Vec<_> = audit_log.1.records().into_iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "bulkhead.resized").count(),
        2,
        "{kinds:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn missing_tenant_key_is_anonymous_or_rejected_by_policy() {
    let backend = Backend::default();
    backend.open(100);
    // Default policy: one shared anonymous tenant, with its own share.
    let layer = BulkheadLayer::builder()
        .max_concurrent(4)
        .max_per_tenant(1)
        .keyed(HeaderKey::from_static("x-tenant-id"))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(backend.service());
    let res = svc.clone().oneshot(req("anon", None, None)).await.unwrap();
    drop(res);
    assert_eq!(handle.anonymous().unwrap().in_flight, 0);
    // A malformed key (two values) is not a missing key: refused even under the anonymous default, so a
    // tenant at its share cannot move to the anonymous tenant by sending garbage (issue 12, item 2).
    let mut bad = req("bad", Some("a"), None);
    bad.headers_mut()
        .append("x-tenant-id", HeaderValue::from_static("b"));
    let err = svc.clone().oneshot(bad).await.unwrap_err();
    let key_err = err.downcast_ref::<KeyError>().expect("a KeyError");
    assert!(!key_err.is_missing(), "{key_err}");

    let held_layer = BulkheadLayer::builder()
        .max_concurrent(4)
        .max_per_tenant(1)
        .keyed(HeaderKey::from_static("x-tenant-id"))
        .build()
        .unwrap();
    let held_handle = held_layer.handle();
    let gate = Backend::default();
    let held_svc = held_layer.layer(gate.service());
    let first = spawn(&held_svc, req("anon1", None, None));
    settle().await;
    assert_eq!(held_handle.anonymous().unwrap().in_flight, 1);
    let err = held_svc
        .clone()
        .oneshot(req("anon2", None, None))
        .await
        .unwrap_err();
    assert!(
        is_overloaded(&err),
        "anonymous requests share one tenant's share"
    );
    gate.open(1);
    first.await.unwrap().unwrap();

    // Reject policy: the KeyError, for a 400.
    let layer = BulkheadLayer::builder()
        .missing_key(MissingKey::Reject)
        .keyed(HeaderKey::from_static("x-tenant-id"))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(backend.service());
    let err = svc
        .clone()
        .oneshot(req("anon", None, None))
        .await
        .unwrap_err();
    let key_err = err.downcast_ref::<KeyError>().expect("a KeyError");
    assert_eq!(
        key_err.to_string(),
        "missing key: header `x-tenant-id` is not present"
    );
    let mut long = req("long", None, None);
    long.headers_mut().insert(
        "x-tenant-id",
        HeaderValue::from_str(&"x".repeat(500)).unwrap(),
    );
    let err = svc.clone().oneshot(long).await.unwrap_err();
    assert!(err.downcast_ref::<KeyError>().is_some());
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(handle.tenant_keys(), 0, "refused keys are not tracked");
}

#[tokio::test(start_paused = true)]
async fn new_tenants_over_the_key_cap_share_the_overflow_tenant() {
    let backend = Backend::default();
    let layer = BulkheadLayer::builder()
        .max_concurrent(10)
        .max_per_tenant(2)
        .max_keys(2)
        .keyed(HeaderKey::from_static("x-tenant-id"))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(backend.service());
    let tasks: Vec<_> = ["t1", "t2", "t3", "t4", "t5"]
        .iter()
        .map(|t| spawn(&svc, req(t, Some(t), None)))
        .collect();
    settle().await;
    assert_eq!(handle.tenant_keys(), 2);
    assert_eq!(handle.overflowed(), 3);
    let overflow = handle.overflow().unwrap();
    assert_eq!(overflow.in_flight, 2, "the overflow tenant has one share");
    assert_eq!(handle.in_flight(), 4);
    backend.open(10);
    let results: Vec<_> = futures_join(tasks).await;
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
}

async fn futures_join<T>(tasks: Vec<JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(start_paused = true)]
async fn health_is_degraded_while_saturated() {
    let backend = Backend::default();
    let health = Health::new();
    let (audit, ring) = Audit::memory(64);
    let layer = BulkheadLayer::builder()
        .name("reports")
        .max_concurrent(4)
        .health(&health)
        .audit(&audit)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(backend.service());
    assert_eq!(health.readiness().status(), HealthState::Healthy);
    let tasks: Vec<_> = (0..4)
        .map(|i| spawn(&svc, req(&i.to_string(), None, None)))
        .collect();
    settle().await;
    // Full but nobody refused yet: not saturated.
    assert_eq!(health.readiness().status(), HealthState::Healthy);
    for _ in 0..10 {
        assert!(svc.clone().oneshot(req("x", None, None)).await.is_err());
    }
    assert!(handle.is_saturated());
    let report = health.readiness();
    assert_eq!(report.status(), HealthState::Degraded);
    let c = report.component("bulkhead.reports").expect("registered");
    assert_eq!(c.reason(), Some("saturated: 4 of 4 slots in use, 0 queued"));
    assert!(report.is_available(), "degraded still serves");

    // Hysteresis: one free slot (3 of 4) is 3/4: recovered.
    backend.open(1);
    settle().await;
    assert!(!handle.is_saturated());
    assert_eq!(health.readiness().status(), HealthState::Healthy);
    backend.open(3);
    futures_join(tasks).await;

    // State changes only: ten refusals made one `saturated` record, and one `recovered`.
    audit.flush().await.unwrap();
    let kinds: Vec<_> = ring.records().into_iter().map(|r| r.kind).collect();
    assert_eq!(kinds, ["bulkhead.saturated", "bulkhead.recovered"]);
}

#[tokio::test(start_paused = true)]
async fn layer_state_is_shared_by_every_service_and_clone() {
    let backend = Backend::default();
    let layer = BulkheadLayer::builder().max_concurrent(1).build().unwrap();
    let handle = layer.handle();
    let route_a = layer.layer(backend.service());
    let route_b = layer.clone().layer(backend.service());
    let a = spawn(&route_a, req("a", None, None));
    settle().await;
    let err = route_b.oneshot(req("b", None, None)).await.unwrap_err();
    assert!(is_overloaded(&err), "one limit across routes");
    assert_eq!(route_a.handle().in_flight(), handle.in_flight());
    backend.open(1);
    a.await.unwrap().unwrap();
}

#[test]
fn bad_config_is_a_named_build_error() {
    let cases: Vec<(&str, Result<(), palisade_bulkhead::BuildError>)> = vec![
        (
            "max_concurrent",
            BulkheadLayer::builder().max_concurrent(0).build().map(drop),
        ),
        (
            "max_per_tenant",
            BulkheadLayer::builder().max_per_tenant(2).build().map(drop),
        ),
        (
            "max_per_tenant",
            BulkheadLayer::builder()
                .max_concurrent(4)
                .max_per_tenant(5)
                .keyed(HeaderKey::from_static("x-tenant-id"))
                .build()
                .map(drop),
        ),
        (
            "queue",
            BulkheadLayer::builder()
                .queue(0, Duration::from_secs(1))
                .build()
                .map(drop),
        ),
        (
            "queue",
            BulkheadLayer::builder()
                .queue(5, Duration::ZERO)
                .build()
                .map(drop),
        ),
        (
            "aging",
            BulkheadLayer::builder()
                .aging(Duration::from_secs(1))
                .build()
                .map(drop),
        ),
        (
            "quantum",
            BulkheadLayer::builder()
                .queue(5, Duration::from_secs(1))
                .quantum(0)
                .build()
                .map(drop),
        ),
    ];
    for (setting, result) in cases {
        let err = result.expect_err(setting);
        assert_eq!(err.setting(), setting, "{err}");
        assert!(err.to_string().starts_with("invalid bulkhead setting"));
    }
}
