//! The whole server stack over real sockets: an axum app behind `palisade::stack::ServerStack` (built
//! with the builder API, one shared `Health` and one in-memory `Audit`), served on loopback with
//! `axum::serve`, driven by a hyper client.
//!
//! Tenant isolation under a flood, an idempotent POST executed exactly once under concurrency,
//! read-only mode, a breaker opening under injected faults (answers served by the fallback) and
//! closing again, readiness flipping and recovering, and the audit log verifying after all of it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use palisade::audit::{Audit, MemorySink};
use palisade::breaker::{CircuitBreakerLayer, CircuitState};
use palisade::bulkhead::BulkheadLayer;
use palisade::chaos::{ChaosLayer, Fault};
use palisade::degrade::{GateLayer, Level};
use palisade::fallback::{FallbackLayer, StaticResponse};
use palisade::health::{Health, HealthState};
use palisade::idempotency::{IdempotencyLayer, KeyRule};
use palisade::key::HeaderKey;
use palisade::metrics::{Metrics, MetricsEndpoint};
use palisade::ops::HealthEndpoint;
use palisade::ratelimit::{Rate, RateLimitLayer};
use palisade::stack::{Handles, ServerStack};
use palisade::timeout::TimeoutLayer;
use tokio::sync::Semaphore;
use tokio::time::Instant;

const TENANT: &str = "x-tenant-id";
/// The open breaker's wait before a probe: short, so recovery is quick.
const OPEN_WAIT: Duration = Duration::from_millis(400);
/// The longest any condition is polled for.
const DEADLINE: Duration = Duration::from_secs(3);
const FALLBACK_BODY: &str = r#"{"items":[],"fallback":true}"#;

#[derive(Clone)]
struct App {
    items: Arc<AtomicUsize>,
    orders: Arc<AtomicUsize>,
    /// Held `POST /orders` wait here for a permit.
    hold: Arc<Semaphore>,
}

async fn list_items(State(app): State<App>) -> &'static str {
    app.items.fetch_add(1, Ordering::SeqCst);
    "items"
}

async fn create_order(
    State(app): State<App>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    let n = app.orders.fetch_add(1, Ordering::SeqCst) + 1;
    if headers.contains_key("x-hold") {
        let _permit = app.hold.acquire().await.expect("the semaphore stays open");
    }
    axum::response::Response::builder()
        .status(StatusCode::CREATED)
        .header("content-type", "application/json")
        .header("x-order-id", n.to_string())
        .body(axum::body::Body::from(format!("{{\"order\":{n}}}")))
        .unwrap()
}

struct Server {
    addr: SocketAddr,
    app: App,
    handles: Handles,
    audit: Audit,
    log: MemorySink,
    client: Client<HttpConnector, Full<Bytes>>,
}

#[derive(Debug)]
struct Got {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    /// The problem body's `type`, after checking the content type.
    fn problem_type(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{self:?}"
        );
        let json: serde_json::Value = serde_json::from_slice(&self.body).expect("a JSON problem");
        assert_eq!(json["status"], self.status.as_u16());
        json["type"].as_str().unwrap().to_owned()
    }
}

/// Serves the app behind the whole stack; every tenant gets `rate`.
async fn serve(rate: Rate) -> Server {
    let health = Health::new();
    let (audit, log) = Audit::memory(10_000);
    let stack = ServerStack::builder()
        .health(&health)
        .audit(&audit)
        .gate(GateLayer::builder().name("api"))
        .rate_limit(RateLimitLayer::builder(HeaderKey::from_static(TENANT)).default_rate(rate))
        .bulkhead(BulkheadLayer::builder().name("api").max_concurrent(256))
        .timeout(TimeoutLayer::builder().timeout(Duration::from_secs(5)))
        .fallback(
            FallbackLayer::builder().name("items").static_response(
                StaticResponse::new(StatusCode::OK)
                    .header(
                        http::header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    )
                    .body(FALLBACK_BODY),
            ),
        )
        .breaker(
            CircuitBreakerLayer::builder()
                .name("app")
                .consecutive_failures(3)
                .open_wait(OPEN_WAIT, OPEN_WAIT)
                .jitter(0.0),
        )
        .chaos(ChaosLayer::builder().name("app").seed(7))
        .build()
        .expect("a valid stack");
    let idempotent = stack
        .idempotency(
            IdempotencyLayer::builder()
                .tenant(HeaderKey::from_static(TENANT))
                .route(Method::POST, "/orders", KeyRule::Required),
        )
        .expect("a valid idempotency layer");
    let handles = stack.handles().clone();
    let metrics = Metrics::new();
    metrics.register("server", &handles);

    let app = App {
        items: Arc::new(AtomicUsize::new(0)),
        orders: Arc::new(AtomicUsize::new(0)),
        hold: Arc::new(Semaphore::new(0)),
    };
    let router = Router::new()
        .route("/items", get(list_items))
        .route(
            "/orders",
            // `stack.idempotency` wraps the layer in the stack's rescue: its refusals (409, 422, ...)
            // are responses inside the stack, as axum's route layers require.
            post(create_order).route_layer(idempotent),
        )
        .with_state(app.clone())
        .layer(stack)
        // Operations endpoints, outside the stack: never shed, limited or broken.
        .route_service("/readyz", HealthEndpoint::readiness(&health))
        .route_service(
            "/readyz/strict",
            HealthEndpoint::readiness(&health).fail_when(HealthState::Degraded),
        )
        .route_service("/metrics", MetricsEndpoint::new(metrics));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Server {
        addr,
        app,
        handles,
        audit,
        log,
        client: Client::builder(TokioExecutor::new()).build_http(),
    }
}

impl Server {
    async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Got {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from_static(b"{\"sku\":42}")))
            .unwrap();
        let res = tokio::time::timeout(DEADLINE, self.client.request(req))
            .await
            .expect("an answer within the deadline")
            .expect("an HTTP response");
        let (parts, body) = res.into_parts();
        Got {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    async fn items(&self, tenant: &str) -> Got {
        self.send(Method::GET, "/items", &[(TENANT, tenant)]).await
    }

    async fn order(&self, tenant: &str, key: &str) -> Got {
        self.send(
            Method::POST,
            "/orders",
            &[(TENANT, tenant), ("idempotency-key", key)],
        )
        .await
    }

    async fn ready(&self, strict: bool) -> StatusCode {
        let path = if strict { "/readyz/strict" } else { "/readyz" };
        self.send(Method::GET, path, &[]).await.status
    }

    /// Polls `probe` until it holds, failing after [`DEADLINE`].
    async fn eventually<F, Fut>(&self, what: &str, mut probe: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + DEADLINE;
        while !probe().await {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Flushes the audit log and verifies the whole chain against the head; returns the event kinds.
    async fn verified_audit(&self) -> Vec<String> {
        self.audit.flush().await.expect("the audit log flushes");
        let head = self.audit.head().expect("something was audited");
        let records = self.log.records();
        let report = self
            .audit
            .verify(&records, Some(&head))
            .expect("the audit chain verifies");
        assert_eq!(report.records, records.len() as u64);
        assert_eq!(records.len() as u64, head.seq, "the ring kept every record");
        assert_eq!(self.audit.dropped_total(), 0);
        records.iter().map(|r| r.kind.clone()).collect()
    }

    /// Chaos makes `/items` answer 503 until the breaker opens, then the fallback answers; the fault
    /// is removed and a probe closes the circuit again.
    async fn trip_and_recover(&self) {
        let breaker = self.handles.breaker().unwrap();
        let fallback = self.handles.fallback().unwrap();
        let chaos = self.handles.chaos().unwrap();
        let served_before = fallback.activations();
        let items_before = self.app.items.load(Ordering::SeqCst);

        let fault =
            chaos.inject(Fault::status(StatusCode::SERVICE_UNAVAILABLE).path_prefix("/items"));
        // Closed: the injected 503s reach the client (and the breaker counts them).
        for i in 0..3 {
            assert_eq!(breaker.state(), CircuitState::Closed, "after {i} failures");
            let got = self.items("acme").await;
            assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "{got:?}");
        }
        assert_eq!(breaker.state(), CircuitState::Open);

        // Open: the fallback answers, nothing reaches the handler (or the chaos layer).
        let got = self.items("acme").await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.text(), FALLBACK_BODY);
        assert_eq!(got.header("content-type"), Some("application/json"));
        assert_eq!(fallback.activations(), served_before + 1);
        assert_eq!(self.app.items.load(Ordering::SeqCst), items_before);
        let metrics = self.send(Method::GET, "/metrics", &[]).await;
        assert!(
            metrics
                .text()
                .contains("palisade_breaker_state{stack=\"server\"} 2\n"),
            "{}",
            metrics.text()
        );

        // The fault is gone; after the open wait, a probe reaches the handler and closes the circuit.
        assert!(chaos.remove(fault));
        let mut fallbacks = 1;
        let deadline = Instant::now() + DEADLINE;
        loop {
            let got = self.items("acme").await;
            assert_eq!(got.status, StatusCode::OK, "{got:?}");
            if got.text() == "items" {
                break;
            }
            assert_eq!(got.text(), FALLBACK_BODY);
            fallbacks += 1;
            assert!(Instant::now() < deadline, "the breaker never closed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(breaker.state(), CircuitState::Closed);
        assert_eq!(fallback.activations(), served_before + fallbacks);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tenant_is_limited_while_another_is_served() {
    // 2 requests per second per tenant, bursts of 5.
    let server = Arc::new(serve(Rate::per_second(2).burst(5)).await);
    let started = Instant::now();

    const FLOOD: usize = 60;
    let flood: Vec<_> = (0..FLOOD)
        .map(|_| {
            let server = server.clone();
            tokio::spawn(async move { server.items("flooder").await })
        })
        .collect();
    // Meanwhile, the other tenant uses its own quota, one request after another.
    let mut calm = Vec::new();
    for _ in 0..5 {
        calm.push(server.items("calm").await);
    }
    let mut ok = 0;
    let mut limited = 0;
    for task in flood {
        let got = task.await.unwrap();
        match got.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                let retry_after: u64 = got
                    .header("retry-after")
                    .expect("a Retry-After")
                    .parse()
                    .expect("whole seconds");
                assert_eq!(retry_after, 1, "{got:?}");
                assert_eq!(got.problem_type(), "urn:palisade:problem:rate-limited");
                assert!(got.header("ratelimit-policy").is_some(), "{got:?}");
            }
            other => panic!("unexpected {other}: {got:?}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();

    for got in &calm {
        assert_eq!(
            got.status,
            StatusCode::OK,
            "the calm tenant was refused: {got:?}"
        );
        assert_eq!(got.text(), "items");
    }
    // The flooder got its burst, plus what its rate refilled while the flood lasted.
    let refill = (2.0 * elapsed).ceil() as usize;
    assert!(
        (5..=5 + refill).contains(&ok),
        "{ok} admitted in {elapsed:.2} s"
    );
    assert_eq!(ok + limited, FLOOD);
    assert_eq!(server.app.items.load(Ordering::SeqCst), ok + calm.len());

    let tier = server.handles.rate_limit().unwrap().metrics();
    let default = tier.iter().find(|t| &*t.name == "default").unwrap();
    assert_eq!(default.rejected, limited as u64);
    assert_eq!(default.admitted, (ok + calm.len()) as u64);
    let kinds = server.verified_audit().await;
    assert!(
        kinds.iter().any(|k| k == "ratelimit.violation"),
        "{kinds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_idempotent_posts_create_one_order() {
    let server = Arc::new(serve(Rate::per_second(1000).burst(1000)).await);
    const N: usize = 24;
    let key = "\"order-5d1c\"";

    // The first request to claim the key is held in the handler; every other one is told 409 (with
    // Retry-After) while it is in flight, as palisade-idempotency documents.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..N {
        let (server, tx) = (server.clone(), tx.clone());
        tokio::spawn(async move {
            let got = server
                .send(
                    Method::POST,
                    "/orders",
                    &[(TENANT, "acme"), ("idempotency-key", key), ("x-hold", "1")],
                )
                .await;
            tx.send(got).unwrap();
        });
    }
    for _ in 0..N - 1 {
        let got = tokio::time::timeout(DEADLINE, rx.recv())
            .await
            .expect("the conflicts are answered at once")
            .unwrap();
        assert_eq!(got.status, StatusCode::CONFLICT, "{got:?}");
        assert!(got.header("retry-after").is_some(), "{got:?}");
        assert_eq!(
            got.problem_type(),
            "urn:palisade:problem:idempotency-conflict"
        );
    }
    assert_eq!(server.app.orders.load(Ordering::SeqCst), 1);
    server.app.hold.add_permits(N);
    let first = tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    assert_eq!(first.header("x-order-id"), Some("1"));
    assert!(first.header("idempotent-replayed").is_none());

    // Later, concurrent retries are all replays of the one order.
    let retries: Vec<_> = (0..8)
        .map(|_| {
            let server = server.clone();
            tokio::spawn(async move { server.order("acme", key).await })
        })
        .collect();
    for task in retries {
        let got = task.await.unwrap();
        assert_eq!(got.status, StatusCode::CREATED, "{got:?}");
        assert_eq!(got.header("x-order-id"), Some("1"));
        assert_eq!(got.header("idempotent-replayed"), Some("true"));
        assert_eq!(got.body, first.body);
    }
    assert_eq!(server.app.orders.load(Ordering::SeqCst), 1);

    // The same key from another tenant is another order.
    let other = server.order("globex", key).await;
    assert_eq!(other.status, StatusCode::CREATED);
    assert_eq!(other.header("x-order-id"), Some("2"));
    // A POST without a key is refused before the handler.
    let missing = server
        .send(Method::POST, "/orders", &[(TENANT, "acme")])
        .await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        missing.problem_type(),
        "urn:palisade:problem:idempotency-key-missing"
    );
    assert_eq!(server.app.orders.load(Ordering::SeqCst), 2);

    let kinds = server.verified_audit().await;
    assert!(
        kinds.iter().any(|k| k == "idempotency.conflict"),
        "{kinds:?}"
    );
    assert!(
        kinds.iter().any(|k| k == "idempotency.replayed"),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn read_only_mode_refuses_writes_and_serves_reads() {
    let server = serve(Rate::per_second(1000).burst(1000)).await;
    let gate = server.handles.gate().unwrap();

    assert_eq!(
        gate.set_level(Level::ReadOnly, "database failover"),
        Level::Normal
    );
    let refused = server.order("acme", "\"k-1\"").await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{refused:?}"
    );
    assert_eq!(refused.problem_type(), "urn:palisade:problem:read-only");
    let read = server.items("acme").await;
    assert_eq!((read.status, read.text()), (StatusCode::OK, "items"));
    assert_eq!(server.app.orders.load(Ordering::SeqCst), 0);
    assert_eq!(gate.read_only_total(), 1);

    assert_eq!(
        gate.set_level(Level::Normal, "failover done"),
        Level::ReadOnly
    );
    // The refused request stored nothing: the same key now creates the order.
    let created = server.order("acme", "\"k-1\"").await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    assert_eq!(created.header("x-order-id"), Some("1"));
    assert!(created.header("idempotent-replayed").is_none());
    assert_eq!(gate.read_only_total(), 1);

    let kinds = server.verified_audit().await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "gate.level_changed").count(),
        2,
        "{kinds:?}"
    );
}

#[tokio::test]
async fn injected_faults_open_the_breaker_the_fallback_answers_and_a_probe_closes_it() {
    let server = serve(Rate::per_second(1000).burst(1000)).await;
    server.trip_and_recover().await;
    // A second incident trips it again: the breaker was really closed.
    server.trip_and_recover().await;
    let kinds = server.verified_audit().await;
    for kind in ["breaker.opened", "breaker.half_open", "breaker.closed"] {
        assert_eq!(
            kinds.iter().filter(|k| *k == kind).count(),
            2,
            "{kind}: {kinds:?}"
        );
    }
}

#[tokio::test]
async fn readiness_flips_with_an_open_breaker_and_a_shedding_gate_and_recovers() {
    let server = serve(Rate::per_second(1000).burst(1000)).await;
    let gate = server.handles.gate().unwrap();
    let breaker = server.handles.breaker().unwrap();
    assert_eq!(server.ready(false).await, StatusCode::OK);
    assert_eq!(server.ready(true).await, StatusCode::OK);

    // Shedding: normal traffic is refused, and readiness (strict) says so.
    gate.set_level(Level::Critical, "overload");
    let shed = server.items("acme").await;
    assert_eq!(shed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(shed.problem_type(), "urn:palisade:problem:shed");
    assert_eq!(server.ready(true).await, StatusCode::SERVICE_UNAVAILABLE);
    // Degraded still serves by default.
    assert_eq!(server.ready(false).await, StatusCode::OK);
    // Maintenance takes the instance out of rotation altogether.
    gate.set_level(Level::Maintenance, "migration");
    assert_eq!(server.ready(false).await, StatusCode::SERVICE_UNAVAILABLE);
    gate.set_level(Level::Normal, "done");
    assert_eq!(server.ready(true).await, StatusCode::OK);

    // An open breaker: not ready (strict) until it closes again.
    let fault = server
        .handles
        .chaos()
        .unwrap()
        .inject(Fault::status(StatusCode::BAD_GATEWAY));
    for _ in 0..3 {
        assert_eq!(server.items("acme").await.status, StatusCode::BAD_GATEWAY);
    }
    assert_eq!(breaker.state(), CircuitState::Open);
    let report = server.send(Method::GET, "/readyz/strict", &[]).await;
    assert_eq!(report.status, StatusCode::SERVICE_UNAVAILABLE);
    let json: serde_json::Value = serde_json::from_slice(&report.body).unwrap();
    let component = json["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "breaker.app")
        .expect("the breaker's component");
    assert_eq!(component["state"], "degraded");

    assert!(server.handles.chaos().unwrap().remove(fault));
    server
        .eventually("the breaker closes", || async {
            server.items("acme").await;
            breaker.state() == CircuitState::Closed
        })
        .await;
    server
        .eventually("readiness recovers", || async {
            server.ready(true).await == StatusCode::OK
        })
        .await;
    assert_eq!(server.ready(false).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_verifies_after_an_incident() {
    let server = serve(Rate::per_second(1000).burst(1000)).await;
    let gate = server.handles.gate().unwrap();

    // One tenant gets a quota of its own at run time, and goes over it.
    let abuser = HeaderValue::from_static("abuser");
    server
        .handles
        .rate_limit()
        .unwrap()
        .override_tenant(&abuser, "abuser", Rate::per_second(1).burst(1))
        .unwrap();
    assert_eq!(server.items("abuser").await.status, StatusCode::OK);
    assert_eq!(
        server.items("abuser").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );

    gate.set_level(Level::ReadOnly, "failover");
    assert_eq!(
        server.order("acme", "\"a-1\"").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    gate.set_level(Level::Normal, "failover done");
    assert_eq!(
        server.order("acme", "\"a-1\"").await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        server
            .order("acme", "\"a-1\"")
            .await
            .header("idempotent-replayed"),
        Some("true")
    );
    server.trip_and_recover().await;
    server.handles.breaker().unwrap().force_open();
    server.handles.breaker().unwrap().reset();

    let kinds = server.verified_audit().await;
    let count = |kind: &str| kinds.iter().filter(|k| *k == kind).count();
    assert_eq!(count("gate.level_changed"), 2, "{kinds:?}");
    assert_eq!(count("chaos.injected"), 1, "{kinds:?}");
    assert_eq!(count("chaos.removed"), 1, "{kinds:?}");
    assert_eq!(count("breaker.opened"), 1, "{kinds:?}");
    assert_eq!(count("breaker.half_open"), 1, "{kinds:?}");
    assert_eq!(count("breaker.closed"), 1, "{kinds:?}");
    assert_eq!(count("breaker.forced_open"), 1, "{kinds:?}");
    assert_eq!(count("breaker.reset"), 1, "{kinds:?}");
    assert_eq!(count("idempotency.replayed"), 1, "{kinds:?}");
    assert_eq!(count("ratelimit.tier_set"), 1, "{kinds:?}");
    assert_eq!(count("ratelimit.tenant_assigned"), 1, "{kinds:?}");
    assert_eq!(count("ratelimit.violation"), 1, "{kinds:?}");
    // In the order they happened.
    let first = |kind: &str| kinds.iter().position(|k| k == kind).unwrap();
    assert!(first("gate.level_changed") < first("chaos.injected"));
    assert!(first("chaos.injected") < first("breaker.opened"));
    assert!(first("breaker.opened") < first("chaos.removed"));
    assert!(first("breaker.half_open") < first("breaker.closed"));
    assert!(first("breaker.closed") < first("breaker.forced_open"));

    // Any edit of the stored log is found.
    let mut records = server.log.records();
    let head = server.audit.head().unwrap();
    records[1].kind = "gate.level_unchanged".into();
    assert!(server.audit.verify(&records, Some(&head)).is_err());
    let mut records = server.log.records();
    records.pop();
    assert!(server.audit.verify(&records, Some(&head)).is_err());
}
