//! `/healthz`, `/readyz` and `/palisade/status` over a real axum server on loopback: readiness follows a
//! circuit breaker open and closed.
#![cfg(feature = "breaker")]

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use palisade::audit::Audit;
use palisade::breaker::{CircuitBreakerLayer, CircuitState};
use palisade::health::{ComponentKind, Health, HealthState};
use palisade::ops::{HealthEndpoint, StatusEndpoint, StatusRegistry};
use palisade::rescue::RescueLayer;
use serde_json::{json, Value};
use tower::ServiceBuilder;

async fn send(addr: SocketAddr, method: Method, path: &str) -> (StatusCode, Bytes) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Full::default())
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("answers within 10 s")
        .expect("a response");
    let status = res.status();
    (status, res.into_body().collect().await.unwrap().to_bytes())
}

fn json(body: &Bytes) -> Value {
    serde_json::from_slice(body).expect("JSON")
}

#[tokio::test]
async fn readiness_follows_the_breaker() {
    let health = Health::new();
    health.register("app", ComponentKind::Liveness).healthy();
    let (audit, _log) = Audit::memory(100);
    let breaker = CircuitBreakerLayer::builder()
        .name("work")
        .no_failure_rate()
        .consecutive_failures(2)
        // The wait has passed by the next request: it is a probe, and its success closes the circuit.
        .open_wait(Duration::from_nanos(1), Duration::from_nanos(1))
        .jitter(0.0)
        .health(&health)
        .audit(&audit)
        .build()
        .unwrap();
    let handle = breaker.handle();
    let registry = StatusRegistry::new();
    registry.register("breaker.work", handle.clone());
    registry.register("audit", audit.clone());

    let work = Router::new()
        .route(
            "/work",
            get(|req: Request<Body>| async move {
                if req.uri().query() == Some("fail") {
                    (StatusCode::INTERNAL_SERVER_ERROR, "boom")
                } else {
                    (StatusCode::OK, "done")
                }
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(RescueLayer::new())
                .layer(breaker),
        );
    let app = work
        .route_service("/healthz", HealthEndpoint::liveness(&health))
        .route_service(
            "/readyz",
            HealthEndpoint::readiness(&health).fail_when(HealthState::Degraded),
        )
        .route_service("/palisade/status", StatusEndpoint::new(registry));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let (status, body) = send(addr, Method::GET, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
    let ready = json(&body);
    assert_eq!(ready["status"], "healthy");
    assert_eq!(ready["components"][0]["name"], "breaker.work");
    assert_eq!(ready["components"][0]["state"], "healthy");

    // Two failures open the circuit: readiness degrades, which this endpoint treats as failing.
    for _ in 0..2 {
        assert_eq!(
            send(addr, Method::GET, "/work?fail").await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    assert_eq!(handle.state(), CircuitState::Open);
    let (status, body) = send(addr, Method::GET, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let ready = json(&body);
    assert_eq!(ready["status"], "degraded");
    let c = &ready["components"][0];
    assert_eq!(c["name"], "breaker.work");
    assert_eq!(c["kind"], "readiness");
    assert_eq!(c["state"], "degraded");
    assert_eq!(c["reason"], "circuit open: 2 consecutive failures");
    assert!(
        c["since"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z') && s.len() == 24),
        "{c}"
    );
    assert!(
        c.get("check").is_none() && c.get("for_ms").is_none(),
        "details only with ?verbose"
    );

    let (_, body) = send(addr, Method::GET, "/readyz?verbose").await;
    let verbose = json(&body);
    assert!(verbose["components"][0]["for_ms"].is_u64());
    assert!(verbose["components"][0].get("check").is_some());
    // The value is parsed strictly: true/1/empty turn details on, false/0 off, anything else is 400.
    for (query, details) in [
        ("verbose=true", true),
        ("verbose=1", true),
        ("verbose=", true),
        ("a=b&verbose", true),
        ("verbose=false", false),
        ("verbose=0", false),
        ("verbose=true&verbose=false", false),
        ("verbosely=1", false),
    ] {
        let (status, body) = send(addr, Method::GET, &format!("/readyz?{query}")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{query}");
        let c = &json(&body)["components"][0];
        assert_eq!(c.get("for_ms").is_some(), details, "?{query}: {c}");
        assert_eq!(c.get("check").is_some(), details, "?{query}: {c}");
    }
    for query in [
        "verbose=yes",
        "verbose=False",
        "verbose=2",
        "verbose=true%00",
    ] {
        let (status, body) = send(addr, Method::GET, &format!("/readyz?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "?{query}");
        assert!(
            json(&body)["error"].as_str().unwrap().contains("verbose"),
            "?{query}"
        );
    }

    let (status, body) = send(addr, Method::HEAD, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.is_empty());

    // Liveness does not include readiness components.
    let (status, body) = send(addr, Method::GET, "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["components"].as_array().unwrap().len(), 1);

    // A successful probe closes the circuit, and readiness recovers.
    assert_eq!(send(addr, Method::GET, "/work").await.0, StatusCode::OK);
    assert_eq!(handle.state(), CircuitState::Closed);
    let (status, body) = send(addr, Method::GET, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["status"], "healthy");

    let (status, body) = send(addr, Method::GET, "/palisade/status").await;
    assert_eq!(status, StatusCode::OK);
    let snapshot = json(&body);
    assert_eq!(snapshot["breaker.work"]["state"], "closed");
    assert_eq!(snapshot["breaker.work"]["mode"], "normal");
    audit.flush().await.unwrap();
    let (_, body) = send(addr, Method::GET, "/palisade/status").await;
    let snapshot = json(&body);
    assert_eq!(
        snapshot["audit"]["head"]["seq"], 3,
        "opened, half-open, closed"
    );
    assert_eq!(snapshot["audit"]["dropped"], 0);

    let (status, _) = send(addr, Method::POST, "/readyz").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[cfg(all(feature = "ratelimit", feature = "bulkhead", feature = "degrade"))]
#[tokio::test]
async fn status_snapshot_covers_every_layer_handle() {
    use palisade::bulkhead::BulkheadLayer;
    use palisade::degrade::{GateLayer, Level};
    use palisade::key::HeaderKey;
    use palisade::ratelimit::{Rate, RateLimitLayer};

    let rate_limit = RateLimitLayer::builder(HeaderKey::from_static("x-tenant-id"))
        .default_rate(Rate::per_second(10).burst(5))
        .build()
        .unwrap();
    let bulkhead = BulkheadLayer::builder().max_concurrent(8).build().unwrap();
    let gate = GateLayer::builder().build().unwrap();
    let registry = StatusRegistry::new();
    registry
        .register("ratelimit", rate_limit.handle())
        .register("bulkhead", bulkhead.handle())
        .register("gate", gate.handle());
    gate.handle().set_level(Level::Degraded, "test");

    let snapshot = registry.snapshot();
    assert_eq!(snapshot["gate"]["level"], "degraded");
    assert_eq!(snapshot["gate"]["load"], 0.5);
    assert_eq!(snapshot["bulkhead"]["max_concurrent"], 8);
    assert_eq!(snapshot["bulkhead"]["in_flight"], 0);
    assert_eq!(
        snapshot["ratelimit"]["tiers"]["default"]["rate"]["burst"],
        5
    );
    assert_eq!(snapshot["ratelimit"]["tracked_tenants"], 0);
}

/// Waits (without sleeping) until every check of `health` has run at least once.
async fn first_runs_done(health: &Health) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let report = health.report();
            let all_ran = report.components().iter().all(|c| {
                c.check().is_none_or(|check| {
                    check.consecutive_failures() + check.consecutive_successes() > 0
                })
            });
            if all_ran {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the checks run at once");
}

#[tokio::test]
async fn verbose_probes_show_the_tiers_of_their_own_checks() {
    use palisade::health::{CheckConfig, CheckDepth};

    let health = Health::new();
    let fail_once = |depth| CheckConfig::for_depth(depth).failure_threshold(1);
    let _loop = health
        .add_check(
            "event_loop",
            ComponentKind::Liveness,
            fail_once(CheckDepth::Shallow),
            || async { Err::<(), _>("stalled") },
        )
        .unwrap();
    let _db = health
        .add_check(
            "db",
            ComponentKind::Readiness,
            fail_once(CheckDepth::Deep),
            || async { Ok::<(), std::io::Error>(()) },
        )
        .unwrap();
    let checkout = health
        .add_check(
            "checkout",
            ComponentKind::Readiness,
            fail_once(CheckDepth::Comprehensive),
            || async { Err::<(), _>("order 42 not confirmed") },
        )
        .unwrap();
    let gate = health.register("gate", ComponentKind::Readiness);
    first_runs_done(&health).await;

    let app = Router::new()
        .route_service("/healthz", HealthEndpoint::liveness(&health))
        .route_service("/readyz", HealthEndpoint::readiness(&health));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // Liveness: only the shallow check, failing: the verdict is degraded.
    let (status, body) = send(addr, Method::GET, "/healthz?verbose").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let live = json(&body);
    assert_eq!(
        live["tiers"],
        serde_json::json!({
            "status": "degraded",
            "shallow": {"checks": 1, "failing": ["event_loop"]},
            "deep": {"checks": 0, "failing": []},
            "comprehensive": {"checks": 0, "failing": []},
        })
    );
    assert_eq!(live["components"][0]["check"]["depth"], "shallow");

    // Readiness: a failing end-to-end check is critical, beside the unhealthy status.
    let (status, body) = send(addr, Method::GET, "/readyz?verbose=1").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let ready = json(&body);
    assert_eq!(ready["status"], "unhealthy");
    assert_eq!(ready["tiers"]["status"], "critical");
    assert_eq!(ready["tiers"]["comprehensive"]["failing"][0], "checkout");
    assert_eq!(ready["tiers"]["deep"]["checks"], 1);
    assert_eq!(ready["tiers"]["shallow"]["checks"], 0);
    let depths: Vec<_> = ready["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["check"]["depth"].clone())
        .collect();
    assert_eq!(depths, [json!("comprehensive"), json!("deep"), Value::Null]);

    // Without ?verbose (or with verbose=0) there are no tiers: the short body is unchanged.
    for path in ["/healthz", "/readyz", "/readyz?verbose=0"] {
        let (_, body) = send(addr, Method::GET, path).await;
        let short = json(&body);
        let mut keys: Vec<_> = short.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["components", "status"], "{path}");
    }

    // The tiers never decide the status code: with the end-to-end check gone, a degraded pushed
    // component serves (200) and the tiers are healthy.
    assert!(checkout.stop());
    gate.degraded("level degraded");
    let (status, body) = send(addr, Method::GET, "/readyz?verbose").await;
    assert_eq!(status, StatusCode::OK);
    let ready = json(&body);
    assert_eq!(ready["status"], "degraded");
    assert_eq!(ready["tiers"]["status"], "healthy");
    assert_eq!(ready["tiers"]["comprehensive"]["checks"], 0);
}
