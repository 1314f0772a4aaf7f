//! palisade's first runnable example: rescue, key extraction, health and audit in an axum server.
//!
//! ```text
//! cargo run --example hello            # listens on 127.0.0.1:3000 (or --addr / PALISADE_ADDR)
//! curl -i localhost:3000/hello
//! curl -i localhost:3000/whoami -H 'x-tenant-id: acme'      # the tenant key
//! curl -i localhost:3000/whoami                              # 400 problem+json: no tenant key
//! curl -i localhost:3000/reject/rate-limited                 # 429 + Retry-After + RateLimit headers
//! curl -i localhost:3000/reject/circuit-open                 # 503 + Retry-After
//! curl -i localhost:3000/reject/timeout                      # 504
//! curl -i localhost:3000/reject/rate-limited -H 'content-type: application/grpc'   # grpc-status: 8
//! curl -i localhost:3000/readyz                              # readiness JSON
//! curl -i -X POST localhost:3000/admin/drain                 # readiness goes 503, audited
//! curl -i -X POST localhost:3000/admin/undrain
//! curl -i localhost:3000/audit                               # the audit log and its verification
//! ```
//!
//! The `/reject/{kind}` routes stand in for the palisade layers that later issues add (rate limit,
//! breaker, timeout, ...): they return the same rejection markers those layers return, and the one
//! outermost `RescueLayer` turns each into the response a client should see.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use palisade::audit::{Audit, AuditEvent, MemorySink};
use palisade::error::*;
use palisade::health::{Component, ComponentKind, Health};
use palisade::key::{HeaderKey, KeyExtractor};
use palisade::rescue::RescueLayer;
use tower::{service_fn, ServiceBuilder};

#[derive(Clone)]
struct App {
    health: Health,
    drain: Component,
    audit: Audit,
    log: MemorySink,
    tenant: Arc<HeaderKey>,
}

/// What a palisade layer would refuse with, by name.
fn rejection(kind: &str) -> Option<BoxError> {
    let quota = Quota::new(100, Duration::from_secs(1), 0, Duration::from_millis(800));
    Some(match kind {
        "rate-limited" => RateLimited::new(Duration::from_millis(800))
            .with_quota(quota)
            .into(),
        "circuit-open" => CircuitOpen::new(Some(Duration::from_secs(5))).into(),
        "overloaded" => Overloaded::new()
            .with_retry_after(Duration::from_secs(1))
            .into(),
        "timeout" => Elapsed::new(Duration::from_secs(2)).into(),
        "shed" => Shed::new("critical")
            .with_retry_after(Duration::from_secs(10))
            .into(),
        "read-only" => ReadOnly::new().into(),
        _ => return None,
    })
}

async fn whoami(State(app): State<App>, req: Request<Body>) -> Result<String, Response> {
    match app.tenant.extract(&req) {
        Ok(tenant) => Ok(format!("tenant: {}\n", tenant.to_str().unwrap_or("?"))),
        Err(e) => {
            // Outside a fallible stack, a key error can still be rendered the palisade way.
            let res = palisade::rescue::problem_response::<Body>(
                &e,
                palisade::rescue::DEFAULT_PROBLEM_TYPE_BASE,
            );
            Err(res.into_response())
        }
    }
}

async fn readyz(State(app): State<App>) -> impl IntoResponse {
    report_response(app.health.readiness())
}

async fn healthz(State(app): State<App>) -> impl IntoResponse {
    report_response(app.health.liveness())
}

fn report_response(report: palisade::health::Report) -> impl IntoResponse {
    let status = if report.is_available() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [("content-type", "application/json")],
        report.to_json(),
    )
}

async fn drain(State(app): State<App>) -> &'static str {
    app.drain.unhealthy("drained by an operator");
    app.audit
        .record(AuditEvent::new("admin.drain").detail("by", "POST /admin/drain"));
    "draining: /readyz now answers 503\n"
}

async fn undrain(State(app): State<App>) -> &'static str {
    app.drain.healthy();
    app.audit
        .record(AuditEvent::new("admin.undrain").detail("by", "POST /admin/undrain"));
    "serving: /readyz answers 200 again\n"
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

#[tokio::main]
async fn main() {
    let addr = match listen_addr() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };

    let health = Health::new();
    let drain_switch = health.register("drain", ComponentKind::Readiness);
    let (audit, log) = Audit::memory(10_000);
    audit.record(AuditEvent::new("server.started").detail("addr", addr.to_string()));
    let app = App {
        health,
        drain: drain_switch,
        audit,
        log,
        tenant: Arc::new(HeaderKey::from_static("x-tenant-id").max_len(64)),
    };

    // The stand-in for the data-plane layers, behind the one outermost rescue layer.
    let reject = ServiceBuilder::new()
        .layer(RescueLayer::new())
        .service(service_fn(|req: Request<Body>| async move {
            let kind = req.uri().path().trim_start_matches("/reject/");
            match rejection(kind) {
                Some(err) => Err(err),
                None => Ok(Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .body(Body::from(
                        "try: rate-limited, circuit-open, overloaded, timeout, shed, read-only\n",
                    ))
                    .unwrap_or_default()),
            }
        }));

    let router = Router::new()
        .route("/hello", get(|| async { "hello from palisade\n" }))
        .route("/whoami", get(whoami))
        .route("/readyz", get(readyz))
        .route("/healthz", get(healthz))
        .route("/admin/drain", post(drain))
        .route("/admin/undrain", post(undrain))
        .route("/audit", get(audit_log))
        .route_service("/reject/{kind}", reject)
        .with_state(app);

    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!("palisade hello example on http://{addr}");
    println!(
        "  protecting: /reject/{{kind}} behind RescueLayer (HTTP problem+json, gRPC trailers-only)"
    );
    println!("  tenant key: header x-tenant-id (1-64 visible ASCII bytes) on /whoami");
    println!("  health:     /healthz, /readyz; POST /admin/drain, /admin/undrain (audited)");
    println!("  audit:      /audit (records + chain verification)");
    if let Err(e) = axum::serve(listener, router).await {
        eprintln!("error: server stopped: {e}");
        std::process::exit(1);
    }
}
