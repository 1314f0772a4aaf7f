//! The palisade demo server: the server preset in front of an axum app, the client preset around an
//! upstream, admin endpoints to break things on purpose, metrics, a verified audit log, and a graceful
//! shutdown.
//!
//! ```text
//! cargo run --release --example demo --features full
//! cargo run --release --example demo --features full -- --addr 127.0.0.1:0 --config examples/demo.toml
//! ```
//!
//! It listens on `127.0.0.1:3000` (`--addr` or `PALISADE_ADDR`; port 0 picks a free port); it prints
//! what it protects (the layers in order, quotas, timeouts), then `listening on http://ADDR`. It reads
//! `examples/demo.toml` when that file exists (`--config PATH` for another; otherwise the built-in
//! defaults, which are that same file compiled in). `PALISADE_SERVER__...` variables override keys.
//! A bad config file stops it with exit code 2 and the error naming the file and key.
//!
//! # What sits where
//!
//! - **The API** — `/hello`, `/orders`, `/orders/count`, `/slow`, `/upstream` — is behind the server
//!   preset: rescue → degradation gate → rate limit → bulkhead → timeout → breaker → chaos → handler.
//!   The rate limit therefore covers *every* API route: each tenant (`x-tenant-id`; requests without it
//!   share one anonymous bucket; a malformed one is a 400) has one quota across all of them — 5 requests per 10 s with the shipped
//!   `demo.toml`. Use a fresh tenant name per step below, or wait a few seconds.
//! - `POST /orders` also has the Idempotency-Key layer (`route_layer`), inside the preset.
//! - `/upstream` calls an in-process upstream service (`GET /quote`) through the client preset —
//!   total timeout → retry → breaker → per-try timeout → chaos — wrapped in a fallback that serves a
//!   cached answer (header `x-palisade-fallback: upstream`) when the upstream fails or its breaker is open.
//! - **Operations** — `/healthz`, `/readyz`, `/palisade/status`, `/metrics`, and the dashboard at
//!   `/palisade/dashboard` (open it in a browser) — and **admin** —
//!   `/admin/...`, loopback peers only (403 otherwise) — are outside the preset: never rate limited,
//!   never refused by the gate, so you can always see and undo what you did.
//!
//! # Walkthrough
//!
//! ```text
//! curl -i localhost:3000/hello
//!
//! # Rate limit: 5 requests per 10 s per tenant, across the API. The 6th is a 429 with Retry-After.
//! for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{http_code}\n' -H 'x-tenant-id: acme' localhost:3000/hello; done
//! # Tenant `vip` is in the `gold` tier (demo.toml): 20 in a burst, 50 per 10 s.
//! for i in $(seq 1 8); do curl -s -o /dev/null -w '%{http_code} ' -H 'x-tenant-id: vip' localhost:3000/hello; done
//!
//! # Exactly-once orders: a POST without Idempotency-Key is a 400; the same key replays the same order id
//! # (with `idempotent-replayed: true`) and the handler runs once.
//! curl -i -X POST -H 'x-tenant-id: globex' localhost:3000/orders
//! curl -i -X POST -H 'x-tenant-id: globex' -H 'Idempotency-Key: "order-1"' localhost:3000/orders
//! curl -i -X POST -H 'x-tenant-id: globex' -H 'Idempotency-Key: "order-1"' localhost:3000/orders
//! curl -s -H 'x-tenant-id: globex' localhost:3000/orders/count          # {"created":1}
//!
//! # Timeouts: the API answers within 2 s or gets a 504 problem.
//! curl -i -H 'x-tenant-id: initech' 'localhost:3000/slow?ms=100'
//! curl -i -H 'x-tenant-id: initech' 'localhost:3000/slow?ms=3000'        # 504
//!
//! # Read-only mode: writes are refused (503), reads are served.
//! curl -i -X POST localhost:3000/admin/degrade -d '{"level":"read_only","reason":"db failover"}'
//! curl -i -X POST -H 'x-tenant-id: hooli' -H 'Idempotency-Key: "order-2"' localhost:3000/orders   # 503
//! curl -i -H 'x-tenant-id: hooli' localhost:3000/hello                                             # 200
//! curl -i -X POST localhost:3000/admin/degrade -d '{"level":"normal"}'
//!
//! # Break the upstream: every call answers 503. Retries fail, the breaker opens, the fallback answers,
//! # readiness turns degraded (503). Removing the fault lets the breaker probe and close again.
//! curl -s localhost:3000/admin/chaos -d '{"target":"upstream","kind":"status","status":503}'   # {"id":1,...}
//! curl -i -H 'x-tenant-id: umbrella' localhost:3000/upstream      # x-palisade-fallback: upstream
//! curl -s localhost:3000/palisade/status                          # "upstream.breaker": {"state":"open",...}
//! curl -i localhost:3000/readyz                                   # 503, "degraded"
//! curl -i -X DELETE localhost:3000/admin/chaos/1
//! sleep 3; curl -i -H 'x-tenant-id: umbrella' localhost:3000/upstream   # fresh again
//! curl -i localhost:3000/readyz                                   # 200
//!
//! # Other faults: latency (the per-try timeout fires), abort (a hung upstream), faults on the server
//! # itself, with a probability and an expiry.
//! curl -s localhost:3000/admin/chaos -d '{"target":"upstream","kind":"latency","latency_ms":800,"ttl_ms":30000}'
//! curl -s localhost:3000/admin/chaos -d '{"target":"server","kind":"status","status":500,"path_prefix":"/hello","probability":0.5}'
//! curl -s localhost:3000/admin/chaos                              # the active faults
//!
//! # The operations dashboard: every panel live, polling /palisade/dashboard/data each second. Its
//! # operator actions (gate level, force a breaker) go to /admin/dashboard/actions: loopback only.
//! xdg-open http://localhost:3000/palisade/dashboard
//! curl -s -X POST -H 'x-palisade-action: 1' 'localhost:3000/admin/dashboard/actions?action=breaker.force_open&stack=upstream'
//! curl -s -X POST -H 'x-palisade-action: 1' 'localhost:3000/admin/dashboard/actions?action=breaker.reset&stack=upstream'
//!
//! # Metrics (Prometheus text) and the audit log: every state change above, hash-chained and verified.
//! curl -s localhost:3000/metrics | grep palisade_
//! curl -s localhost:3000/admin/audit/verify                       # {"verified":true,"records":...}
//!
//! # Re-read the config file (changes that can apply live are applied, the others are refused).
//! curl -s -X POST localhost:3000/admin/reload
//! ```
//!
//! Ctrl-C (or SIGTERM) stops it gracefully: it stops accepting, lets in-flight requests finish (up to
//! 10 s), flushes and verifies the audit log, and exits 0.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path as UrlPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use palisade::audit::{verify_path, Audit, AuditEvent, AuditKey, FileSink};
use palisade::chaos::{ChaosHandle, Fault, FaultId, Latency};
use palisade::classify::HttpStatus;
use palisade::config::Config;
use palisade::degrade::{GateHandle, Level};
use palisade::fallback::{FallbackLayer, StaticResponse, Trigger};
use palisade::health::{ComponentKind, Health, HealthState};
use palisade::idempotency::IdempotencyLayer;
use palisade::metrics::{Metrics, MetricsEndpoint};
use palisade::ops::{
    AuditTail, Dashboard, HealthEndpoint, RefusedTenants, StatusEndpoint, StatusRegistry,
};
use palisade::rescue::RescueLayer;
use palisade::stack::Handles;
use palisade::BoxError;
use serde::Deserialize;
use serde_json::{json, Value};
use tower::layer::util::Identity;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder, ServiceExt};

/// Where the demo listens unless told otherwise.
const DEFAULT_ADDR: &str = "127.0.0.1:3000";
/// The config file read when it exists and `--config` is not given.
const DEFAULT_CONFIG: &str = "examples/demo.toml";
/// The longest `/slow?ms=N` accepts.
const MAX_SLOW_MS: u64 = 30_000;
/// How long a graceful shutdown waits for in-flight requests.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// The tenant header (rate limit, idempotency scope).
const TENANT_HEADER: &str = "x-tenant-id";

// ---------------------------------------------------------------------------------------------------
// Start-up: arguments, config, exit codes.
// ---------------------------------------------------------------------------------------------------

/// Why the demo could not start (exit code 2) or stopped (exit code 1).
#[derive(Debug)]
enum Fatal {
    /// Bad arguments or configuration: exit code 2.
    Usage(String),
    /// Something failed at run time: exit code 1.
    Runtime(String),
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fatal::Usage(m) | Fatal::Runtime(m) => f.write_str(m),
        }
    }
}

fn usage(e: impl fmt::Display) -> Fatal {
    Fatal::Usage(e.to_string())
}

fn runtime(e: impl fmt::Display) -> Fatal {
    Fatal::Runtime(e.to_string())
}

const USAGE: &str = "usage: demo [--addr HOST:PORT] [--config PATH]
  --addr HOST:PORT   where to listen (default 127.0.0.1:3000, or PALISADE_ADDR; port 0 picks one)
  --config PATH      the TOML config (default: examples/demo.toml if it exists, else built-in defaults)";

/// The command line.
#[derive(Debug)]
struct Args {
    addr: SocketAddr,
    /// `Some` when `--config` was given (then the file must exist).
    config: Option<PathBuf>,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, Fatal> {
    let mut args = args.into_iter();
    let mut addr = std::env::var("PALISADE_ADDR").ok();
    let mut config = None;
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |what: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| usage(format!("{flag} needs a value ({what})\n{USAGE}")))
        };
        match flag.as_str() {
            "--addr" => addr = Some(value("HOST:PORT")?),
            "--config" => config = Some(PathBuf::from(value("PATH")?)),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(usage(format!("unknown argument `{other}`\n{USAGE}"))),
        }
    }
    let addr = addr.unwrap_or_else(|| DEFAULT_ADDR.to_owned());
    let addr = addr.parse().map_err(|e| {
        usage(format!(
            "invalid address `{addr}`: {e} (expected HOST:PORT, e.g. 127.0.0.1:3000)"
        ))
    })?;
    Ok(Args { addr, config })
}

fn main() {
    let code = match parse_args(std::env::args().skip(1)) {
        Err(e) => report(&e),
        Ok(args) => match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Err(e) => report(&runtime(format!("cannot start the tokio runtime: {e}"))),
            Ok(rt) => match rt.block_on(run(args)) {
                Ok(()) => 0,
                Err(e) => report(&e),
            },
        },
    };
    std::process::exit(code);
}

fn report(e: &Fatal) -> i32 {
    eprintln!("error: {e}");
    match e {
        Fatal::Usage(_) => 2,
        Fatal::Runtime(_) => 1,
    }
}

// ---------------------------------------------------------------------------------------------------
// Settings.
// ---------------------------------------------------------------------------------------------------

/// The config the demo runs with, and the file it came from (re-read by `POST /admin/reload`).
#[derive(Debug)]
struct Settings {
    config: Config,
    /// `None` for the built-in defaults.
    path: Option<PathBuf>,
}

/// The built-in defaults: the shipped `demo.toml`, compiled in (with environment overrides), so the
/// demo behaves the same when started from another directory.
const BUILT_IN: &str = include_str!("demo.toml");

fn load_settings(explicit: Option<&Path>) -> Result<Settings, Fatal> {
    let path = match explicit {
        Some(p) => Some(p.to_owned()),
        None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.is_file()),
    };
    let config = match &path {
        Some(p) => Config::load(p),
        None => Config::from_toml_str_with_env(BUILT_IN, "built-in defaults (demo.toml)", |var| {
            std::env::var(var).ok()
        }),
    }
    .map_err(|e| usage(format!("bad config: {e}")))?;
    Ok(Settings { config, path })
}

// ---------------------------------------------------------------------------------------------------
// The app.
// ---------------------------------------------------------------------------------------------------

/// The upstream call as the handler sees it: fallback → client preset → upstream, rescued.
type Upstream = BoxCloneSyncService<http::Request<Body>, Response, Infallible>;

/// Erases the type of the upstream call, with an axum body.
fn boxed<S, B>(svc: S) -> Upstream
where
    S: Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    BoxCloneSyncService::new(svc.map_response(|res: http::Response<B>| res.map(Body::new)))
}

/// State of the API handlers.
#[derive(Clone)]
struct App {
    /// Orders created so far; the last id handed out.
    orders: Arc<AtomicU64>,
    upstream: Upstream,
}

async fn hello() -> Response {
    json_response(StatusCode::OK, json!({ "message": "hello from palisade" }))
}

async fn create_order(State(app): State<App>, headers: HeaderMap) -> Response {
    let id = app.orders.fetch_add(1, Ordering::SeqCst) + 1;
    let tenant = headers
        .get(TENANT_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anonymous");
    json_response(
        StatusCode::CREATED,
        json!({ "order_id": id, "tenant": tenant, "status": "created" }),
    )
}

async fn order_count(State(app): State<App>) -> Response {
    json_response(
        StatusCode::OK,
        json!({ "created": app.orders.load(Ordering::SeqCst) }),
    )
}

/// `?ms=N`: the one query parameter of `/slow`.
fn slow_ms(uri: &Uri) -> Result<u64, String> {
    let raw = uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|pair| match pair.split_once('=') {
            Some(("ms", v)) => Some(v),
            None if pair == "ms" => Some(""),
            _ => None,
        })
        .ok_or("missing query parameter `ms`: use /slow?ms=N with N in milliseconds")?;
    let ms: u64 = raw.parse().map_err(|_| {
        format!("`ms` must be a whole number of milliseconds from 0 to {MAX_SLOW_MS}, got `{raw}`")
    })?;
    if ms > MAX_SLOW_MS {
        return Err(format!(
            "`ms` is capped at {MAX_SLOW_MS} milliseconds, got {ms}"
        ));
    }
    Ok(ms)
}

async fn slow(uri: Uri) -> Response {
    match slow_ms(&uri) {
        Err(msg) => problem(StatusCode::BAD_REQUEST, &msg),
        Ok(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            json_response(StatusCode::OK, json!({ "slept_ms": ms }))
        }
    }
}

async fn upstream(State(app): State<App>) -> Response {
    let mut req = http::Request::new(Body::empty());
    *req.uri_mut() = Uri::from_static("/quote");
    match app.upstream.oneshot(req).await {
        Ok(res) => res,
        Err(never) => match never {},
    }
}

/// The in-process upstream: a separate axum app the client preset calls with `oneshot`.
fn upstream_service() -> Router {
    let calls = Arc::new(AtomicU64::new(0));
    Router::new().route(
        "/quote",
        get(move || {
            let n = calls.fetch_add(1, Ordering::Relaxed) + 1;
            async move {
                json_response(
                    StatusCode::OK,
                    json!({ "quote": "palisades keep the weather out", "source": "upstream", "call": n }),
                )
            }
        }),
    )
}

// ---------------------------------------------------------------------------------------------------
// Admin.
// ---------------------------------------------------------------------------------------------------

/// Where the audit log is kept, for verification.
#[derive(Clone)]
struct AuditLog {
    dir: PathBuf,
    key: AuditKey,
    /// The latest records and the running verification, for the dashboard.
    tail: AuditTail,
}

/// Which chaos layer a fault goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Target {
    Upstream,
    Server,
}

impl Target {
    fn as_str(self) -> &'static str {
        match self {
            Target::Upstream => "upstream",
            Target::Server => "server",
        }
    }
}

/// The faults injected through `/admin/chaos`, by the id the demo handed out (each chaos layer numbers
/// its own faults, so the demo keeps one id space over both).
#[derive(Default)]
struct Faults {
    next: u64,
    by_id: HashMap<u64, (Target, FaultId)>,
}

/// State of the admin endpoints.
#[derive(Clone)]
struct Admin {
    gate: Option<GateHandle>,
    server_chaos: Option<ChaosHandle>,
    upstream_chaos: Option<ChaosHandle>,
    faults: Arc<Mutex<Faults>>,
    audit: Audit,
    log: AuditLog,
    /// `None` when the demo runs on its built-in defaults (there is no file to re-read).
    reload: Option<Arc<Reloader>>,
}

/// What `POST /admin/reload` needs: the file, the config in force, and the handles to push changes
/// through.
struct Reloader {
    path: PathBuf,
    current: Mutex<Config>,
    server: Handles,
    client: Handles,
}

impl Admin {
    fn chaos(&self, target: Target) -> Option<&ChaosHandle> {
        match target {
            Target::Upstream => self.upstream_chaos.as_ref(),
            Target::Server => self.server_chaos.as_ref(),
        }
    }
}

/// Counts the tenant of every `429` the stack answered (the header's value, `anonymous` without one).
async fn count_refusals(
    State(refused): State<RefusedTenants>,
    req: Request,
    next: Next,
) -> Response {
    let tenant = req.headers().get(TENANT_HEADER).cloned();
    let res = next.run(req).await;
    if res.status() == StatusCode::TOO_MANY_REQUESTS {
        match tenant {
            Some(t) => refused.record(&String::from_utf8_lossy(t.as_bytes())),
            None => refused.record("anonymous"),
        }
    }
    res
}

/// Admin endpoints answer loopback peers only.
async fn loopback_only(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if peer.ip().to_canonical().is_loopback() {
        next.run(req).await
    } else {
        problem(
            StatusCode::FORBIDDEN,
            &format!(
                "admin endpoints answer loopback peers only; {} is not one",
                peer.ip()
            ),
        )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DegradeRequest {
    level: String,
    reason: Option<String>,
}

async fn admin_degrade(State(admin): State<Admin>, body: Bytes) -> Response {
    let req: DegradeRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                &format!(
                    "expected JSON like {{\"level\": \"read_only\", \"reason\": \"...\"}}: {e}"
                ),
            )
        }
    };
    let level: Level = match req.level.parse() {
        Ok(l) => l,
        Err(e) => return problem(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let Some(gate) = &admin.gate else {
        return problem(
            StatusCode::CONFLICT,
            "the degradation gate is not configured ([server.gate] in the config file)",
        );
    };
    let reason = req
        .reason
        .unwrap_or_else(|| "POST /admin/degrade".to_owned());
    let previous = gate.set_level(level, reason.clone());
    json_response(
        StatusCode::OK,
        json!({ "level": level.as_str(), "previous": previous.as_str(), "reason": reason }),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChaosRequest {
    target: Target,
    kind: FaultKindName,
    status: Option<u16>,
    latency_ms: Option<u64>,
    probability: Option<f64>,
    path_prefix: Option<String>,
    ttl_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FaultKindName {
    Status,
    Error,
    Latency,
    Abort,
}

/// The longest latency and expiry `/admin/chaos` accepts.
const MAX_FAULT_MS: u64 = 3_600_000;

fn fault_from(req: &ChaosRequest) -> Result<Fault, String> {
    let mut fault = match req.kind {
        FaultKindName::Status => {
            let code = req.status.unwrap_or(503);
            let status = StatusCode::from_u16(code)
                .ok()
                .filter(|s| s.as_u16() >= 200)
                .ok_or_else(|| {
                    format!("`status` must be an HTTP status from 200 to 999, got {code}")
                })?;
            Fault::status(status)
        }
        FaultKindName::Error => Fault::error(),
        FaultKindName::Latency => {
            let ms = req.latency_ms.ok_or("a latency fault needs `latency_ms`")?;
            if ms > MAX_FAULT_MS {
                return Err(format!(
                    "`latency_ms` is capped at {MAX_FAULT_MS}, got {ms}"
                ));
            }
            Fault::latency(Latency::fixed(Duration::from_millis(ms)))
        }
        FaultKindName::Abort => Fault::abort(),
    };
    if let Some(p) = req.probability {
        if !(0.0..=1.0).contains(&p) {
            return Err(format!("`probability` must be from 0.0 to 1.0, got {p}"));
        }
        fault = fault.probability(p);
    }
    if let Some(prefix) = &req.path_prefix {
        if !prefix.starts_with('/') {
            return Err(format!("`path_prefix` must start with `/`, got `{prefix}`"));
        }
        fault = fault.path_prefix(prefix.as_str());
    }
    if let Some(ttl) = req.ttl_ms {
        if ttl == 0 || ttl > MAX_FAULT_MS {
            return Err(format!(
                "`ttl_ms` must be from 1 to {MAX_FAULT_MS}, got {ttl}"
            ));
        }
        fault = fault.expires_after(Duration::from_millis(ttl));
    }
    Ok(fault)
}

async fn admin_chaos_inject(State(admin): State<Admin>, body: Bytes) -> Response {
    let req: ChaosRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                &format!(
                    "expected a fault spec like {{\"target\": \"upstream\", \"kind\": \"status\", \"status\": 503}}: {e}"
                ),
            )
        }
    };
    let fault = match fault_from(&req) {
        Ok(f) => f,
        Err(msg) => return problem(StatusCode::BAD_REQUEST, &msg),
    };
    let Some(chaos) = admin.chaos(req.target) else {
        return problem(
            StatusCode::CONFLICT,
            &format!(
                "no chaos layer on the {} (enable it in the config file)",
                req.target.as_str()
            ),
        );
    };
    let description = fault.to_string();
    let fault_id = chaos.inject(fault);
    let id = {
        let mut faults = admin.faults.lock().unwrap_or_else(|e| e.into_inner());
        faults.next += 1;
        let id = faults.next;
        faults.by_id.insert(id, (req.target, fault_id));
        id
    };
    json_response(
        StatusCode::CREATED,
        json!({ "id": id, "target": req.target.as_str(), "fault": description }),
    )
}

async fn admin_chaos_list(State(admin): State<Admin>) -> Response {
    let faults = admin.faults.lock().unwrap_or_else(|e| e.into_inner());
    let mut list = Vec::new();
    for target in [Target::Server, Target::Upstream] {
        let Some(chaos) = admin.chaos(target) else {
            continue;
        };
        for active in chaos.active() {
            let id = faults
                .by_id
                .iter()
                .find(|(_, &(t, f))| t == target && f == active.id())
                .map(|(id, _)| *id);
            list.push(json!({
                "id": id,
                "target": target.as_str(),
                "fault": active.fault().to_string(),
                "hits": active.hits(),
                "remaining_ms": active.remaining().map(|d| d.as_millis() as u64),
            }));
        }
    }
    json_response(StatusCode::OK, json!({ "faults": list }))
}

async fn admin_chaos_remove(State(admin): State<Admin>, UrlPath(id): UrlPath<String>) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return problem(
            StatusCode::NOT_FOUND,
            &format!("no fault `{id}`: fault ids are the numbers POST /admin/chaos returned"),
        );
    };
    let entry = admin
        .faults
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .by_id
        .remove(&id);
    let removed = entry.is_some_and(|(target, fault)| {
        admin.chaos(target).is_some_and(|chaos| chaos.remove(fault))
    });
    if removed {
        json_response(StatusCode::OK, json!({ "removed": id }))
    } else {
        problem(
            StatusCode::NOT_FOUND,
            &format!("no active fault {id} (never injected, already removed, or expired)"),
        )
    }
}

async fn admin_audit_verify(State(admin): State<Admin>) -> Response {
    let (status, verdict) = verify_audit(&admin.audit, &admin.log).await;
    json_response(status, verdict)
}

/// Flushes the audit log and verifies the whole chain on disk against the head the writer holds.
async fn verify_audit(audit: &Audit, log: &AuditLog) -> (StatusCode, Value) {
    if let Err(e) = audit.flush().await {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "verified": false, "error": format!("the audit log cannot be flushed: {e}") }),
        );
    }
    let head = audit.head();
    let log = log.clone();
    let expected = head;
    let result = tokio::task::spawn_blocking(move || {
        verify_path(&log.dir, &log.key, expected.as_ref()).map(|r| (r, log.dir))
    })
    .await;
    match result {
        Ok(Ok((report, dir))) => (
            StatusCode::OK,
            json!({
                "verified": true,
                "records": report.records,
                "head": report.head.to_string(),
                "dir": dir.display().to_string(),
                "files": report.files.len(),
            }),
        ),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({
                "verified": false,
                "error": e.to_string(),
                "expected_head": head.map(|h| h.to_string()),
            }),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "verified": false, "error": format!("verification did not finish: {e}") }),
        ),
    }
}

async fn admin_reload(State(admin): State<Admin>) -> Response {
    let Some(reloader) = admin.reload.clone() else {
        return problem(
            StatusCode::CONFLICT,
            "the demo runs on its built-in defaults: start it with --config PATH to reload a file",
        );
    };
    let path = reloader.path.clone();
    let new = match tokio::task::spawn_blocking(move || Config::load(path)).await {
        Ok(Ok(config)) => config,
        Ok(Err(e)) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({ "reloaded": false, "error": e.to_string(), "key": e.key() }),
            )
        }
        Err(e) => return problem(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let mut current = reloader.current.lock().unwrap_or_else(|e| e.into_inner());
    match current.reload(&new, &reloader.server, Some(&reloader.client)) {
        Ok(report) => {
            *current = new;
            json_response(
                StatusCode::OK,
                json!({
                    "reloaded": true,
                    "file": reloader.path.display().to_string(),
                    "applied": report.applied(),
                    "restart_required": report.restart_required(),
                }),
            )
        }
        Err(e) => json_response(
            StatusCode::CONFLICT,
            json!({ "reloaded": false, "error": e.to_string(), "key": e.key() }),
        ),
    }
}

// ---------------------------------------------------------------------------------------------------
// Responses.
// ---------------------------------------------------------------------------------------------------

fn json_response(status: StatusCode, value: Value) -> Response {
    let mut res = (status, format!("{value}\n")).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// An RFC 9457 problem, like the ones the rescue layer writes.
fn problem(status: StatusCode, detail: &str) -> Response {
    let mut res = json_response(
        status,
        json!({
            "type": "about:blank",
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": detail,
        }),
    );
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    res
}

// ---------------------------------------------------------------------------------------------------
// Wiring and lifecycle.
// ---------------------------------------------------------------------------------------------------

/// Opens a file audit log in a fresh directory (each run has its own random key, so each run keeps
/// its own log).
async fn open_audit(health: &Health) -> Result<(Audit, AuditLog), Fatal> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let dir = std::env::temp_dir().join(format!(
        "palisade-demo-audit-{}-{stamp}",
        std::process::id()
    ));
    let component = health.register("audit", ComponentKind::Readiness);
    let open_dir = dir.clone();
    let sink =
        tokio::task::spawn_blocking(move || FileSink::builder(open_dir).health(component).open())
            .await
            .map_err(runtime)?
            .map_err(|e| {
                runtime(format!(
                    "cannot open the audit log in {}: {e}",
                    dir.display()
                ))
            })?;
    let key = AuditKey::generate();
    let tail = AuditTail::new(50, Some(key.clone()));
    let audit = Audit::builder()
        .key(key.clone())
        .sink(tail.tee(sink))
        .build()
        .map_err(|e| runtime(format!("cannot start the audit log: {e}")))?;
    Ok((audit, AuditLog { dir, key, tail }))
}

/// Prints the layers of a stack from its handles.
fn describe(title: &str, order: &[&str], h: &Handles) {
    println!("{title}:");
    for slot in order {
        let line = match *slot {
            "gate" => h
                .gate()
                .map(|g| format!("degradation gate `{}` (level {})", g.name(), g.level())),
            "rate_limit" => h.rate_limit().map(|r| {
                let tiers: Vec<String> = r
                    .metrics()
                    .iter()
                    .map(|t| {
                        format!(
                            "{}: {} per {:?} (burst {})",
                            t.name,
                            t.rate.limit(),
                            t.rate.period(),
                            t.rate.burst_size()
                        )
                    })
                    .collect();
                format!("rate limit per `{TENANT_HEADER}` — {}", tiers.join(", "))
            }),
            "bulkhead" => h
                .bulkhead()
                .map(|b| format!("bulkhead `{}`: {} concurrent", b.name(), b.max_concurrent())),
            "timeout" | "total_timeout" => h.timeout().map(|t| format!("{slot}: {t:?}")),
            "fallback" => h
                .fallback()
                .map(|_| "fallback (a static response from the config)".to_owned()),
            "per_try_timeout" => h
                .per_try_timeout()
                .map(|t| format!("per-try timeout: {t:?}")),
            "retry" => h
                .retry()
                .map(|_| "retry (idempotent requests, with a budget)".to_owned()),
            "breaker" => h.breaker().map(|b| {
                let t = b.thresholds();
                let mut opens = Vec::new();
                if t.consecutive_failures > 0 {
                    opens.push(format!("{} consecutive failures", t.consecutive_failures));
                }
                if let Some(rate) = t.failure_rate {
                    opens.push(format!(
                        "a {:.0}% failure rate over at least {} calls",
                        rate * 100.0,
                        t.minimum_calls
                    ));
                }
                format!("circuit breaker: opens after {}", opens.join(" or "))
            }),
            "chaos" => h
                .chaos()
                .map(|_| "fault injection (off until /admin/chaos)".to_owned()),
            _ => None,
        };
        if let Some(line) = line {
            println!("  → {line}");
        }
    }
}

/// Waits for Ctrl-C or SIGTERM; returns its name.
async fn shutdown_signal() -> &'static str {
    let ctrl_c = async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "Ctrl-C",
            Err(e) => {
                eprintln!("warning: cannot listen for Ctrl-C: {e}");
                std::future::pending().await
            }
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
                "SIGTERM"
            }
            Err(e) => {
                eprintln!("warning: cannot listen for SIGTERM: {e}");
                std::future::pending().await
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<&'static str>();
    tokio::select! {
        name = ctrl_c => name,
        name = term => name,
    }
}

/// The latest verdict of each configured detector, by detector name.
type Verdicts = Arc<Mutex<BTreeMap<String, Value>>>;

/// Starts the task that feeds `[heal.detectors]` once a second: the recorders' samples over the
/// detection window, and the server stack's layer gauges (`breaker.server.state`, ...).
fn watch_signals(
    config: &Config,
    recorders: &palisade::heal::signals::Recorders,
    server: &Handles,
) -> Result<Verdicts, Fatal> {
    let mut detectors = config
        .detectors()
        .map_err(|e| usage(format!("bad config {}: {e}", config.origin())))?;
    let gauges = server
        .signals("server")
        .map_err(|e| usage(format!("layer signals: {e}")))?;
    let window = config.detect_window();
    let verdicts = Verdicts::default();
    let out = verdicts.clone();
    let recorders = recorders.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let now = tokio::time::Instant::now();
            let mut samples: BTreeMap<String, palisade::heal::signals::Sample> =
                palisade::heal::signals::recorder_samples(&recorders, window, now)
                    .into_iter()
                    .collect();
            samples.extend(gauges.read_all(now).map(|(n, s)| (n.to_owned(), s)));
            let mut latest = out.lock().unwrap_or_else(|e| e.into_inner());
            for d in &mut detectors {
                if let Some(sample) = samples.get(&d.signal) {
                    let verdict = d.detector.observe(*sample);
                    let status = format!("{:?}", verdict.status);
                    let changed = latest
                        .get(&d.name)
                        .is_none_or(|v| v["status"].as_str() != Some(status.as_str()));
                    if changed && verdict.status != palisade::heal::detect::Status::Warming {
                        println!("heal: {} is {status}: {verdict}", d.name);
                    }
                    latest.insert(
                        d.name.clone(),
                        json!({ "status": format!("{:?}", verdict.status), "verdict": verdict.to_string() }),
                    );
                }
            }
        }
    });
    Ok(verdicts)
}

async fn run(args: Args) -> Result<(), Fatal> {
    let settings = load_settings(args.config.as_deref())?;

    let health = Health::new();
    health
        .register("process", ComponentKind::Liveness)
        .healthy();
    let (audit, log) = open_audit(&health).await?;

    let config = &settings.config;
    println!("palisade demo — config: {}", config.origin());
    for (key, var) in config.env_overrides() {
        println!("  {key} set by {var}");
    }

    // The server preset, in front of the API; idempotency on the routes that create things.
    let stack = config
        .server_stack_builder()
        .health(&health)
        .audit(&audit)
        .build()
        .map_err(|e| usage(format!("bad config {}: {e}", config.origin())))?;
    let server = stack.handles().clone();
    // Without `[server.idempotency]` the layer applies to no method: requests pass untouched. (One
    // layer type either way: an `Option` layer here, inside the preset's, costs rustc far too much.)
    let orders_guarded = config.idempotency_builder().is_some();
    let idempotency = stack
        .idempotency(config.idempotency_builder().unwrap_or_else(|| {
            IdempotencyLayer::builder()
                .tenant(config.tenant_key())
                .methods([])
        }))
        .map_err(|e| usage(format!("bad config {}: {e}", config.origin())))?;

    // The client preset around the upstream (an HTTP service: no gRPC status conversion, no tonic
    // body), and the fallback around both.
    let client = config
        .client_stack_builder()
        .outer(Identity::new())
        .adapt_body(Identity::new())
        .health(&health)
        .audit(&audit)
        .build()
        .map_err(|e| usage(format!("bad config {}: {e}", config.origin())))?;
    let upstream_handles = client.handles().clone();
    let fallback = FallbackLayer::builder()
        .name("upstream")
        .trigger(Trigger::unavailable().or_responses(HttpStatus::server_errors()))
        .static_response(
            StaticResponse::new(StatusCode::OK)
                .header(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )
                .header(
                    http::HeaderName::from_static("x-palisade-fallback"),
                    HeaderValue::from_static("upstream"),
                )
                .body(
                    "{\"quote\":\"cached: palisades keep the weather out\",\"source\":\"fallback\"}\n",
                ),
        )
        .audit(&audit)
        .build()
        .map_err(runtime)?;
    let upstream_call = boxed(
        ServiceBuilder::new()
            .layer(RescueLayer::new())
            .layer(fallback)
            .layer(client)
            .service(upstream_service()),
    );

    describe(
        "server preset, outermost first (rescue turns every refusal into a response)",
        &[
            "gate",
            "rate_limit",
            "bulkhead",
            "timeout",
            "breaker",
            "chaos",
        ],
        &server,
    );
    if orders_guarded {
        println!("  → on POST /orders: the Idempotency-Key layer (scoped by tenant)");
    } else {
        println!("  → POST /orders has no Idempotency-Key layer ([server.idempotency] is absent)");
    }
    describe(
        "/upstream: fallback (cached answer), then the client preset",
        &[
            "total_timeout",
            "retry",
            "breaker",
            "per_try_timeout",
            "chaos",
        ],
        &upstream_handles,
    );

    let app = App {
        orders: Arc::new(AtomicU64::new(0)),
        upstream: upstream_call,
    };
    let refused = RefusedTenants::new(64);
    // Each route's latency and outcomes (palisade::heal), inside the preset: what the handler did, not
    // what the stack refused. The signals are `<route>.p99` etc. for `[heal.detectors]`.
    let recorders = config
        .recorders()
        .map_err(|e| usage(format!("bad config {}: {e}", config.origin())))?;
    let rec = |name: &str| {
        ServiceBuilder::new().layer(RescueLayer::new()).layer(
            recorders
                .layer(name)
                .expect("a handful of routes fit the registry"),
        )
    };
    let api = Router::new()
        .route("/hello", get(hello).layer(rec("GET /hello")))
        .route("/orders", post(create_order).layer(rec("POST /orders")))
        .route_layer(
            ServiceBuilder::new()
                .layer(RescueLayer::new())
                .layer(idempotency),
        )
        .route(
            "/orders/count",
            get(order_count).layer(rec("GET /orders/count")),
        )
        .route("/slow", get(slow).layer(rec("GET /slow")))
        .route("/upstream", get(upstream).layer(rec("GET /upstream")))
        .with_state(app)
        .layer(stack)
        // Outside the stack: every 429 it answered, by tenant, for the dashboard's top refused tenants.
        .layer(middleware::from_fn_with_state(
            refused.clone(),
            count_refusals,
        ));

    let metrics = Metrics::new();
    metrics
        .register("server", &server)
        .register("upstream", &upstream_handles)
        .register_recorders("server", &recorders);
    let registry = StatusRegistry::new();
    server.register_status(&registry, "server.");
    upstream_handles.register_status(&registry, "upstream.");
    registry.register("server.latency", recorders.clone());
    // The detectors of `[heal.detectors]`, fed once a second from the recorders and the layers' gauges;
    // their latest verdicts are in the status (the supervisor that acts on them is not built yet).
    let verdicts = watch_signals(config, &recorders, &server)?;
    registry.register("heal.detectors", {
        let verdicts = verdicts.clone();
        move || json!(*verdicts.lock().unwrap_or_else(|e| e.into_inner()))
    });
    // The dashboard reads the same handles; its operator actions are mounted with the admin routes.
    let dashboard = Dashboard::builder()
        .title("palisade demo")
        .health(&health)
        .stack("server", &server)
        .stack("upstream", &upstream_handles)
        .status(registry.clone())
        .refused_tenants(refused)
        .latency(recorders.clone())
        .audit_tail(log.tail.clone())
        .actions_url("/admin/dashboard/actions")
        .build();
    // The histories fill whether or not anyone watches: one sample a second.
    let sampler = dashboard.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            sampler.sample();
        }
    });
    let ops = Router::new()
        .route_service("/healthz", HealthEndpoint::liveness(&health))
        .route_service(
            "/readyz",
            HealthEndpoint::readiness(&health).fail_when(HealthState::Degraded),
        )
        .route_service("/palisade/status", StatusEndpoint::new(registry))
        .route_service("/palisade/dashboard", dashboard.clone())
        .route_service("/palisade/dashboard/data", dashboard.clone())
        .route_service("/metrics", MetricsEndpoint::new(metrics));

    let admin = Admin {
        gate: server.gate().cloned(),
        server_chaos: server.chaos().cloned(),
        upstream_chaos: upstream_handles.chaos().cloned(),
        faults: Arc::default(),
        audit: audit.clone(),
        log: log.clone(),
        reload: settings.path.clone().map(|path| {
            Arc::new(Reloader {
                path,
                current: Mutex::new(settings.config.clone()),
                server: server.clone(),
                client: upstream_handles.clone(),
            })
        }),
    };
    let admin = Router::new()
        .route("/admin/degrade", post(admin_degrade))
        .route(
            "/admin/chaos",
            post(admin_chaos_inject).get(admin_chaos_list),
        )
        .route("/admin/chaos/{id}", delete(admin_chaos_remove))
        .route("/admin/audit/verify", get(admin_audit_verify))
        .route("/admin/reload", post(admin_reload))
        .route_service("/admin/dashboard/actions", dashboard.actions())
        .with_state(admin)
        .layer(middleware::from_fn(loopback_only));

    let router = api.merge(ops).merge(admin);

    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|e| runtime(format!("cannot listen on {}: {e}", args.addr)))?;
    let local = listener
        .local_addr()
        .map_err(|e| runtime(format!("cannot read the bound address: {e}")))?;
    println!(
        "audit log: {} (key fingerprint {})",
        log.dir.display(),
        log.key.fingerprint()
    );
    println!(
        "admin (loopback only): /admin/degrade /admin/chaos /admin/audit/verify /admin/reload /admin/dashboard/actions"
    );
    println!("ops: /healthz /readyz /palisade/status /metrics");
    println!("dashboard: http://{local}/palisade/dashboard");
    println!("listening on http://{local}");
    audit.record(AuditEvent::new("demo.started").detail("addr", local.to_string()));

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serve = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = stop_rx.await;
    });
    let mut server_task = tokio::spawn(serve.into_future());
    let signal = tokio::select! {
        name = shutdown_signal() => name,
        res = &mut server_task => {
            let why = match res {
                Ok(Ok(())) => "the server stopped on its own".to_owned(),
                Ok(Err(e)) => format!("the server failed: {e}"),
                Err(e) => format!("the server task failed: {e}"),
            };
            return Err(runtime(why));
        }
    };
    println!(
        "{signal} received: no longer accepting; draining in-flight requests (up to {DRAIN_DEADLINE:?})"
    );
    let _ = stop_tx.send(());
    let drained = match tokio::time::timeout(DRAIN_DEADLINE, &mut server_task).await {
        Ok(Ok(Ok(()))) => true,
        Ok(Ok(Err(e))) => {
            eprintln!("warning: the server failed while draining: {e}");
            false
        }
        Ok(Err(e)) => {
            eprintln!("warning: the server task failed while draining: {e}");
            false
        }
        Err(_) => {
            server_task.abort();
            false
        }
    };
    audit.record(
        AuditEvent::new("demo.stopped")
            .detail("signal", signal)
            .detail("drained", drained),
    );
    let (_, verdict) = verify_audit(&audit, &log).await;
    println!("audit log: {verdict}");
    if drained {
        println!("palisade demo stopped: every in-flight request finished; bye");
    } else {
        println!(
            "palisade demo stopped: the drain deadline passed, remaining connections were closed; bye"
        );
    }
    Ok(())
}
