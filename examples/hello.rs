//! palisade's runnable example: real layers in front of an axum app, sharing one Health and one Audit.
//!
//! ```text
//! cargo run --example hello            # listens on 127.0.0.1:3000 (or --addr / PALISADE_ADDR)
//!
//! curl -i localhost:3000/hello
//! # Rate limit by tenant: 5 requests per minute per x-tenant-id (the 6th is a 429 with Retry-After).
//! for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{http_code}\n' -H 'x-tenant-id: acme' localhost:3000/limited; done
//! curl -i localhost:3000/limited                                   # 400: no tenant key
//! # Exactly-once POST: the same Idempotency-Key replays the same order id.
//! curl -i -X POST -H 'x-tenant-id: acme' -H 'Idempotency-Key: "order-1"' localhost:3000/orders
//! curl -i -X POST -H 'x-tenant-id: acme' -H 'Idempotency-Key: "order-1"' localhost:3000/orders
//! curl -s localhost:3000/orders/count
//! # A circuit breaker around a flaky upstream; chaos makes it fail, the breaker opens, fallback answers.
//! curl -i -X POST localhost:3000/admin/chaos/fail                  # inject 503s into the upstream
//! for i in 1 2 3 4; do curl -s localhost:3000/upstream; echo; done
//! curl -i localhost:3000/readyz                                    # degraded: the breaker is open
//! curl -i -X DELETE localhost:3000/admin/chaos                     # heal the upstream
//! # Read-only mode: writes get 503 "service is read-only", reads still work.
//! curl -i -X POST localhost:3000/admin/read-only
//! curl -i -X POST -H 'x-tenant-id: acme' -H 'Idempotency-Key: "order-2"' localhost:3000/orders
//! curl -s localhost:3000/palisade/status
//! curl -s localhost:3000/audit                                     # every state change, verified
//! ```
//!
//! The full demo server (config file, stack presets, metrics, graceful shutdown) is a later milestone;
//! this example wires the same layers by hand.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::Router;
use http::Method;
use palisade::audit::{Audit, AuditEvent, MemorySink};
use palisade::breaker::CircuitBreakerLayer;
use palisade::chaos::{ChaosHandle, ChaosLayer, Fault};
use palisade::degrade::{GateHandle, GateLayer, Level};
use palisade::fallback::{FallbackLayer, StaticResponse};
use palisade::health::{ComponentKind, Health, HealthState};
use palisade::idempotency::{IdempotencyLayer, KeyRule};
use palisade::key::HeaderKey;
use palisade::ops::{HealthEndpoint, StatusEndpoint, StatusRegistry};
use palisade::ratelimit::{MissingKey, Rate, RateLimitLayer};
use palisade::rescue::RescueLayer;
use tower::ServiceBuilder;

#[derive(Clone)]
struct App {
    audit: Audit,
    log: MemorySink,
    gate: GateHandle,
    chaos: ChaosHandle,
    orders: Arc<AtomicU64>,
}

async fn create_order(State(app): State<App>) -> impl IntoResponse {
    let id = app.orders.fetch_add(1, Ordering::SeqCst) + 1;
    (StatusCode::CREATED, format!("{{\"order_id\":{id}}}\n"))
}

async fn order_count(State(app): State<App>) -> String {
    format!("{{\"created\":{}}}\n", app.orders.load(Ordering::SeqCst))
}

async fn inject_failure(State(app): State<App>) -> String {
    let id = app
        .chaos
        .inject(Fault::status(StatusCode::SERVICE_UNAVAILABLE).path_prefix("/upstream"));
    format!("injected fault {id}: /upstream now answers 503\n")
}

async fn clear_faults(State(app): State<App>) -> String {
    format!("removed {} fault(s)\n", app.chaos.clear())
}

async fn read_only(State(app): State<App>) -> &'static str {
    app.gate.set_level(Level::ReadOnly, "POST /admin/read-only");
    "read-only: writes are refused, reads served\n"
}

async fn normal(State(app): State<App>) -> &'static str {
    app.gate.set_level(Level::Normal, "POST /admin/normal");
    "normal\n"
}

async fn audit_log(State(app): State<App>) -> impl IntoResponse {
    if app.audit.flush().await.is_err() {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "audit log failed\n".to_owned(),
        );
    }
    let records = app.log.records();
    let verdict = match app.audit.verify(&records, app.audit.head().as_ref()) {
        Ok(report) => format!("verified: {} records", report.records),
        Err(e) => format!("TAMPERED: {e}"),
    };
    let mut out = String::new();
    for r in &records {
        out.push_str(&serde_json::to_string(r).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&verdict);
    out.push('\n');
    (StatusCode::OK, out)
}

fn listen_addr() -> Result<SocketAddr, String> {
    let mut args = std::env::args().skip(1);
    let mut addr = std::env::var("PALISADE_ADDR").ok();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => {
                addr = Some(
                    args.next()
                        .ok_or("--addr needs a value, e.g. 127.0.0.1:3000")?,
                )
            }
            other => {
                return Err(format!(
                    "unknown argument `{other}`; usage: hello [--addr HOST:PORT]"
                ))
            }
        }
    }
    let addr = addr.unwrap_or_else(|| "127.0.0.1:3000".to_owned());
    addr.parse()
        .map_err(|e| format!("invalid address `{addr}`: {e}"))
}

fn fail(e: impl std::fmt::Display) -> ! {
    eprintln!("error: {e}");
    std::process::exit(2);
}

#[tokio::main]
async fn main() {
    let addr = listen_addr().unwrap_or_else(|e| fail(e));
    let health = Health::new();
    health
        .register("process", ComponentKind::Liveness)
        .healthy();
    let (audit, log) = Audit::memory(10_000);
    audit.record(AuditEvent::new("server.started").detail("addr", addr.to_string()));
    let tenant = HeaderKey::from_static("x-tenant-id").max_len(64);

    let gate = GateLayer::builder()
        .name("api")
        .level_from_env()
        .health(&health)
        .audit(&audit)
        .build()
        .unwrap_or_else(|e| fail(e));
    let rate_limit = RateLimitLayer::builder(tenant.clone())
        .default_rate(Rate::per_minute(5).burst(5))
        .missing_key(MissingKey::Reject)
        .audit(&audit)
        .build()
        .unwrap_or_else(|e| fail(e));
    let idempotency = IdempotencyLayer::builder()
        .tenant(tenant)
        .route(Method::POST, "/orders", KeyRule::Required)
        .audit(&audit)
        .build()
        .unwrap_or_else(|e| fail(e));
    let breaker = CircuitBreakerLayer::builder()
        .name("upstream")
        .no_failure_rate()
        .consecutive_failures(3)
        .open_wait(Duration::from_secs(5), Duration::from_secs(60))
        .health(&health)
        .audit(&audit)
        .build()
        .unwrap_or_else(|e| fail(e));
    let chaos = ChaosLayer::builder().name("upstream").audit(&audit).build();
    let fallback = FallbackLayer::builder()
        .static_response(StaticResponse::new(StatusCode::OK).body("cached answer (fallback)\n"))
        .audit(&audit)
        .build()
        .unwrap_or_else(|e| fail(e));

    let status = StatusRegistry::new();
    status
        .register("gate", gate.handle())
        .register("ratelimit", rate_limit.handle())
        .register("breaker.upstream", breaker.handle())
        .register("audit", audit.clone());

    let app = App {
        audit: audit.clone(),
        log,
        gate: gate.handle(),
        chaos: chaos.handle(),
        orders: Arc::new(AtomicU64::new(0)),
    };

    // The upstream route: fallback (outside) → breaker → chaos (inside) → handler.
    let upstream = Router::new()
        .route(
            "/upstream",
            get(|| async { "fresh answer from the upstream\n" }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(RescueLayer::new())
                .layer(fallback)
                .layer(breaker)
                .layer(chaos),
        );
    // The tenant routes: rate limited; orders are exactly-once.
    let tenant_routes = Router::new()
        .route("/limited", get(|| async { "within your quota\n" }))
        .route("/orders", post(create_order))
        .route("/orders/count", get(order_count))
        .with_state(app.clone())
        .layer(
            ServiceBuilder::new()
                .layer(RescueLayer::new())
                .layer(rate_limit)
                .layer(idempotency),
        );
    let admin = Router::new()
        .route("/admin/chaos/fail", post(inject_failure))
        .route("/admin/chaos", delete(clear_faults))
        .route("/admin/read-only", post(read_only))
        .route("/admin/normal", post(normal))
        .route("/audit", get(audit_log))
        .with_state(app);
    let gated = Router::new()
        .route("/hello", get(|| async { "hello from palisade\n" }))
        .merge(upstream)
        .merge(tenant_routes)
        .layer(ServiceBuilder::new().layer(RescueLayer::new()).layer(gate));
    let router = gated
        .merge(admin)
        .route_service("/healthz", HealthEndpoint::liveness(&health))
        .route_service(
            "/readyz",
            HealthEndpoint::readiness(&health).fail_when(HealthState::Degraded),
        )
        .route_service("/palisade/status", StatusEndpoint::new(status));

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| fail(format!("cannot listen on {addr}: {e}")));
    println!("palisade hello example on http://{addr}");
    println!("  gate (read-only / shedding) → rate limit by x-tenant-id (5/min) → idempotency on POST /orders");
    println!("  /upstream: fallback → circuit breaker (3 failures) → chaos → handler");
    println!("  ops: /healthz /readyz /palisade/status /audit; admin: /admin/chaos/fail, /admin/read-only, ...");
    if let Err(e) = axum::serve(listener, router).await {
        fail(format!("server stopped: {e}"));
    }
}
