//! Queue aging, on paused time: aging lets a waiter go ahead only of fresher waiters, never of an older
//! one or one of a higher class that is next in line, and never changes the order among tenants.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use palisade_bulkhead::{BulkheadLayer, Priority, PriorityHeader};
use palisade_core::error::BoxError;
use palisade_core::key::HeaderKey;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tower::{service_fn, Layer, Service, ServiceExt};

/// A stand-in service: logs the `x-id` of every call, then waits for one gate permit to answer.
#[derive(Clone)]
struct Backend {
    log: Arc<Mutex<Vec<String>>>,
    gate: Arc<Semaphore>,
}

impl Backend {
    fn new() -> Self {
        Backend {
            log: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
        }
    }

    fn service(
        &self,
    ) -> impl Service<
        Request<()>,
        Response = Response<String>,
        Error = BoxError,
        Future = impl Future<Output = Result<Response<String>, BoxError>> + Send,
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
                Ok::<_, BoxError>(Response::new(String::new()))
            }
        })
    }

    fn open(&self, n: usize) {
        self.gate.add_permits(n);
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn served(&self, id: &str) -> Option<usize> {
        self.log().iter().position(|x| x == id)
    }
}

fn req(id: &str, tenant: Option<&str>, priority: Priority) -> Request<()> {
    let mut b = Request::get("/")
        .header("x-id", id)
        .header("x-priority", priority.as_str());
    if let Some(t) = tenant {
        b = b.header("x-tenant-id", t);
    }
    b.body(()).unwrap()
}

/// Lets every task run until it blocks (advances the paused clock by 1 ms).
async fn settle() {
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
}

fn spawn<S>(svc: &S, request: Request<()>) -> JoinHandle<Result<(), BoxError>>
where
    S: Service<Request<()>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let svc = svc.clone();
    tokio::spawn(async move { svc.oneshot(request).await.map(drop) })
}

async fn finish(backend: &Backend, tasks: Vec<JoinHandle<Result<(), BoxError>>>) {
    backend.open(100_000);
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

/// Issue scenario 1: a Critical waiter that arrived first is served before a Background waiter that
/// arrived after it, however long the Background one has waited.
#[tokio::test(start_paused = true)]
async fn an_aged_background_waiter_never_overtakes_an_older_critical_one() {
    let backend = Backend::new();
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(100, Duration::from_secs(10))
        .aging(Duration::from_millis(100))
        .priority(PriorityHeader::from_static("x-priority"))
        .build()
        .unwrap();
    let svc = layer.layer(backend.service());
    let mut tasks = vec![spawn(&svc, req("hold", None, Priority::Normal))];
    settle().await;
    tasks.push(spawn(&svc, req("crit", None, Priority::Critical)));
    settle().await;
    tasks.push(spawn(&svc, req("bg", None, Priority::Background)));
    settle().await;
    // Both have waited well past the aging threshold (and past twice it).
    tokio::time::advance(Duration::from_millis(500)).await;
    backend.open(1);
    settle().await;
    assert_eq!(backend.log(), ["hold", "crit"], "the older critical first");
    backend.open(1);
    settle().await;
    assert_eq!(backend.log(), ["hold", "crit", "bg"]);
    finish(&backend, tasks).await;
}

/// Issue scenario 2: a steady backlog of Background waiters, each waiting longer than the aging
/// threshold (but less than the two intervals a Background waiter needs to rank like a Critical one),
/// must not keep a Critical request waiting: nothing that arrives after it goes first, and the backlog
/// in front of it is not yet old enough to.
#[tokio::test(start_paused = true)]
async fn a_steady_aged_background_backlog_does_not_starve_a_critical_request() {
    let backend = Backend::new();
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(1000, Duration::from_secs(10))
        .aging(Duration::from_millis(100))
        .priority(PriorityHeader::from_static("x-priority"))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(backend.service());
    let mut tasks = vec![spawn(&svc, req("hold", None, Priority::Normal))];
    settle().await;
    // A backlog of 15 background waiters, one every 10 ms.
    let mut n = 0;
    for _ in 0..15 {
        tasks.push(spawn(
            &svc,
            req(&format!("bg{n}"), None, Priority::Background),
        ));
        n += 1;
        settle().await;
        tokio::time::advance(Duration::from_millis(9)).await;
    }
    // Steady state: one background arrival and one release every 10 ms, so every background request
    // waits ~150 ms (aged: over 100 ms). A critical request arrives at step 5.
    let mut crit_at = None;
    for step in 0..60 {
        tasks.push(spawn(
            &svc,
            req(&format!("bg{n}"), None, Priority::Background),
        ));
        n += 1;
        if step == 5 {
            tasks.push(spawn(&svc, req("crit", None, Priority::Critical)));
            crit_at = Some(backend.log().len());
        }
        settle().await;
        tokio::time::advance(Duration::from_millis(9)).await;
        backend.open(1);
        settle().await;
    }
    let crit_at = crit_at.unwrap();
    let served = backend
        .served("crit")
        .expect("the critical request was served under a steady aged background backlog");
    assert_eq!(
        served, crit_at,
        "served at the first release after it arrived"
    );
    assert_eq!(
        handle.queued(),
        16,
        "a steady backlog (15, and one more arrived with the critical)"
    );
    finish(&backend, tasks).await;
}

/// Issue scenario 3: with the default aging, 100 aged waiters of a heavy tenant do not turn the queue
/// into first come first served: a light tenant's single waiter is still served within two releases.
#[tokio::test(start_paused = true)]
async fn aging_keeps_round_robin_across_tenants_under_the_default_config() {
    let backend = Backend::new();
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .queue(200, Duration::from_secs(10))
        .keyed(HeaderKey::from_static("x-tenant-id"))
        .build()
        .unwrap();
    let svc = layer.layer(backend.service());
    let mut tasks = vec![spawn(&svc, req("hold", Some("z"), Priority::Normal))];
    settle().await;
    for i in 0..100 {
        tasks.push(spawn(
            &svc,
            req(&format!("a{i}"), Some("a"), Priority::Normal),
        ));
    }
    settle().await;
    // Every waiter of `a` is now far past the default aging threshold (max_wait / 4 = 2.5 s).
    tokio::time::advance(Duration::from_secs(6)).await;
    tasks.push(spawn(&svc, req("b0", Some("b"), Priority::Normal)));
    settle().await;
    for _ in 0..3 {
        backend.open(1);
        settle().await;
    }
    assert_eq!(&backend.log()[..3], ["hold", "a0", "b0"]);
    finish(&backend, tasks).await;
}

/// Aging still does its job: under a constant stream of Critical requests, a Normal waiter is served
/// once it has waited one aging interval and a Background waiter once it has waited two.
#[tokio::test(start_paused = true)]
async fn one_class_up_per_aging_interval_under_constant_critical_load() {
    for (class, intervals) in [(Priority::Normal, 1u32), (Priority::Background, 2)] {
        let backend = Backend::new();
        let layer = BulkheadLayer::builder()
            .max_concurrent(1)
            .queue(100, Duration::from_secs(10))
            .aging(Duration::from_millis(100))
            .priority(PriorityHeader::from_static("x-priority"))
            .build()
            .unwrap();
        let svc = layer.layer(backend.service());
        let mut tasks = vec![spawn(&svc, req("hold", None, Priority::Normal))];
        settle().await;
        tasks.push(spawn(&svc, req("low", None, class)));
        settle().await;
        let queued_at = tokio::time::Instant::now();
        let mut served_after = None;
        for i in 0..60 {
            tasks.push(spawn(&svc, req(&format!("c{i}"), None, Priority::Critical)));
            settle().await;
            tokio::time::advance(Duration::from_millis(9)).await;
            backend.open(1);
            settle().await;
            if backend.log().last().map(String::as_str) == Some("low") {
                served_after = Some(queued_at.elapsed());
                break;
            }
        }
        let waited = served_after.expect("the low-class request was served under critical load");
        let expected = Duration::from_millis(100) * intervals;
        assert!(
            waited >= expected && waited <= expected + Duration::from_millis(30),
            "{class}: served after {waited:?}, expected about {expected:?}"
        );
        finish(&backend, tasks).await;
    }
}
