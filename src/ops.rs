//! Operations endpoints: `/healthz`, `/readyz` and a status snapshot of every layer.
//!
//! Each endpoint is a plain Tower service (`Service<http::Request<B>>` for any body, never failing), so it
//! mounts in axum with `route_service`, in hyper directly, or anywhere else:
//!
//! - [`HealthEndpoint::liveness`] / [`HealthEndpoint::readiness`]: `200` when the report is available,
//!   `503` otherwise, with a JSON body listing every component, its state, reason and since-when. Add
//!   `?verbose` (or `verbose=true`, `verbose=1`) for each component's details (how long it has held
//!   its state, check counters and last error) and a `"tiers"` object: the
//!   [tier verdict](palisade_core::health#tiers) of the probe's own checks (shallow, deep and
//!   comprehensive: how many, which fail, and `healthy`, `degraded`, `unhealthy` or `critical`).
//!   The tiers are information: the status code follows the probe's status as without `?verbose`.
//!   `verbose=false` and `verbose=0` leave the details out, and any other value of `verbose` is a
//!   `400` with a JSON error. `HEAD` answers the status without a body; other methods get `405`.
//! - [`StatusEndpoint`]: `GET` a JSON snapshot of every registered layer handle (breaker states, rate-limit
//!   rejects per tier, bulkhead usage, gate level, audit head, ...), from a [`StatusRegistry`].
//! - [`Dashboard`]: the operations dashboard, an HTML page of the stack's live state (health,
//!   breakers, rate limits, bulkheads, gates, latency, audit) with the JSON it polls; operator
//!   actions are a separate service, [`DashboardActions`], for the admin listener. See [`dashboard`].
//!
//! Readiness reflects the layers because the layers report to the shared `Health`: an open breaker, a
//! saturated bulkhead or a degradation gate at or above its configured level mark their components
//! degraded or unhealthy. Whether *degraded* fails readiness is a choice:
//! [`HealthEndpoint::fail_when`] (default: only `Unhealthy` answers `503`; a degraded service still
//! serves).
//!
//! ```
//! use palisade::health::{ComponentKind, Health, HealthState};
//! use palisade::ops::HealthEndpoint;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let health = Health::new();
//! let db = health.register("db", ComponentKind::Readiness);
//! let readyz = HealthEndpoint::readiness(&health);
//!
//! let res = readyz.clone().oneshot(http::Request::get("/readyz").body(()).unwrap()).await.unwrap();
//! assert_eq!(res.status(), 200);
//!
//! db.unhealthy("connection refused");
//! let res = readyz.oneshot(http::Request::get("/readyz").body(()).unwrap()).await.unwrap();
//! assert_eq!(res.status(), 503);
//! # }
//! ```
//!
//! In axum:
//!
//! ```ignore
//! let app = axum::Router::new()
//!     .route_service("/healthz", HealthEndpoint::liveness(&health))
//!     .route_service("/readyz", HealthEndpoint::readiness(&health))
//!     .route_service("/palisade/status", StatusEndpoint::new(registry));
//! ```

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::future::{ready, Ready};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use palisade_core::audit::Audit;
use palisade_core::health::{Health, HealthState, Report};
use serde_json::{json, Value};
use tower_service::Service;

pub mod dashboard;

pub use dashboard::{AuditTail, Dashboard, DashboardActions, DashboardBuilder, RefusedTenants};

/// The body of the operations endpoints: one complete chunk of JSON (or nothing).
#[derive(Debug, Default)]
pub struct OpsBody {
    data: Option<Bytes>,
}

impl OpsBody {
    pub(crate) fn new(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        OpsBody {
            data: (!data.is_empty()).then_some(data),
        }
    }
}

impl Body for OpsBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    Liveness,
    Readiness,
}

/// `/healthz` or `/readyz`, backed by a [`Health`] handle. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct HealthEndpoint {
    health: Health,
    probe: Probe,
    fail_when: HealthState,
}

impl HealthEndpoint {
    /// Liveness: the components whose kind includes liveness.
    pub fn liveness(health: &Health) -> Self {
        HealthEndpoint {
            health: health.clone(),
            probe: Probe::Liveness,
            fail_when: HealthState::Unhealthy,
        }
    }

    /// Readiness: the components whose kind includes readiness.
    pub fn readiness(health: &Health) -> Self {
        HealthEndpoint {
            health: health.clone(),
            probe: Probe::Readiness,
            fail_when: HealthState::Unhealthy,
        }
    }

    /// Answers `503` when the aggregated state is at least `state`: `Unhealthy` (the default: degraded
    /// still serves) or `Degraded` (take the instance out of rotation as soon as anything degrades).
    pub fn fail_when(mut self, state: HealthState) -> Self {
        self.fail_when = if state == HealthState::Healthy {
            HealthState::Degraded
        } else {
            state
        };
        self
    }

    fn report(&self) -> Report {
        match self.probe {
            Probe::Liveness => self.health.liveness(),
            Probe::Readiness => self.health.readiness(),
        }
    }

    /// The response for a request (method and query).
    pub fn respond(&self, method: &Method, query: Option<&str>) -> Response<OpsBody> {
        if method != Method::GET && method != Method::HEAD {
            let mut res = json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                r#"{"error":"method not allowed; use GET or HEAD"}"#,
            );
            res.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return res;
        }
        let verbose = match parse_verbose(query) {
            Ok(verbose) => verbose,
            Err(()) => {
                let body = if method == Method::HEAD {
                    ""
                } else {
                    r#"{"error":"invalid query parameter `verbose`: use verbose, verbose=true, verbose=1, verbose=false or verbose=0"}"#
                };
                return json_response(StatusCode::BAD_REQUEST, body);
            }
        };
        let report = self.report();
        let status = if report.status() >= self.fail_when {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        let body = if method == Method::HEAD {
            Bytes::new()
        } else {
            Bytes::from(report_json(&report, verbose).to_string())
        };
        json_response(status, body)
    }
}

/// The `verbose` query parameter, parsed strictly: absent, `false` or `0` is off; bare, empty,
/// `true` or `1` is on (exact, lowercase); the last occurrence wins; any other value is an error.
/// Other parameters are ignored.
fn parse_verbose(query: Option<&str>) -> Result<bool, ()> {
    let mut verbose = false;
    for pair in query.unwrap_or("").split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "verbose" {
            continue;
        }
        verbose = match value {
            "" | "true" | "1" => true,
            "false" | "0" => false,
            _ => return Err(()),
        };
    }
    Ok(verbose)
}

/// The report as JSON; without `verbose`, each component is name, kind, state, reason and since;
/// with it, each component also has `for_ms` and `check`, and the report has `tiers`.
fn report_json(report: &Report, verbose: bool) -> Value {
    let mut value =
        serde_json::to_value(report).unwrap_or_else(|_| json!({ "status": report.status() }));
    if verbose {
        if let (Some(object), Ok(tiers)) =
            (value.as_object_mut(), serde_json::to_value(report.tiers()))
        {
            object.insert("tiers".to_owned(), tiers);
        }
    } else if let Some(components) = value.get_mut("components").and_then(Value::as_array_mut) {
        for c in components.iter_mut().filter_map(Value::as_object_mut) {
            c.remove("check");
            c.remove("for_ms");
        }
    }
    value
}

fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<OpsBody> {
    let mut res = Response::new(OpsBody::new(body));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

impl<B> Service<Request<B>> for HealthEndpoint {
    type Response = Response<OpsBody>;
    type Error = Infallible;
    type Future = Ready<Result<Response<OpsBody>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ready(Ok(self.respond(req.method(), req.uri().query())))
    }
}

/// Anything that can describe itself in the status snapshot: layer handles, the audit log, your own.
pub trait StatusSource: Send + Sync {
    /// A JSON snapshot, taken now.
    fn status(&self) -> Value;
}

impl<F: Fn() -> Value + Send + Sync> StatusSource for F {
    fn status(&self) -> Value {
        self()
    }
}

impl StatusSource for Audit {
    fn status(&self) -> Value {
        json!({
            "enabled": self.is_enabled(),
            "head": self.head(),
            "appended": self.appended_total(),
            "dropped": self.dropped_total(),
            "failed": self.failed(),
        })
    }
}

impl StatusSource for Health {
    fn status(&self) -> Value {
        json!({
            "liveness": self.liveness().status(),
            "readiness": self.readiness().status(),
        })
    }
}

#[cfg(feature = "breaker")]
impl StatusSource for palisade_breaker::BreakerHandle {
    fn status(&self) -> Value {
        let c = self.counts();
        json!({
            "state": format!("{:?}", self.state()).to_lowercase(),
            "mode": format!("{:?}", self.mode()).to_lowercase(),
            "retry_after_ms": self.retry_after().map(|d| d.as_millis() as u64),
            "window_calls": c.window_calls,
            "window_failures": c.window_failures,
            "window_slow": c.window_slow,
            "consecutive_failures": c.consecutive_failures,
            "rejected": c.rejected,
            "trips": c.trips,
            "probes_in_flight": c.probes_in_flight,
        })
    }
}

#[cfg(feature = "breaker")]
impl StatusSource for palisade_breaker::KeyedBreakerHandle {
    fn status(&self) -> Value {
        json!({
            "keys": self.len(),
            "open_circuits": self.open_circuits(),
            "overflowed": self.overflowed(),
        })
    }
}

#[cfg(feature = "ratelimit")]
impl StatusSource for palisade_ratelimit::RateLimitHandle {
    fn status(&self) -> Value {
        let tiers: serde_json::Map<String, Value> = self
            .metrics()
            .into_iter()
            .map(|t| {
                let rate = json!({
                    "limit": t.rate.limit(),
                    "period_ms": t.rate.period().as_millis() as u64,
                    "burst": t.rate.burst_size(),
                });
                (
                    t.name.to_string(),
                    json!({ "rate": rate, "admitted": t.admitted, "rejected": t.rejected }),
                )
            })
            .collect();
        json!({
            "tiers": tiers,
            "tracked_tenants": self.tracked_tenants(),
            "overflowed": self.overflowed(),
            "load": self.load_signal().map(|l| l.get()),
        })
    }
}

#[cfg(feature = "bulkhead")]
impl StatusSource for palisade_bulkhead::BulkheadHandle {
    fn status(&self) -> Value {
        json!({
            "in_flight": self.in_flight(),
            "queued": self.queued(),
            "available": self.available(),
            "max_concurrent": self.max_concurrent(),
            "rejected": self.rejected(),
            "saturated": self.is_saturated(),
        })
    }
}

#[cfg(feature = "degrade")]
impl StatusSource for palisade_degrade::GateHandle {
    fn status(&self) -> Value {
        json!({
            "level": self.level().as_str(),
            "manual_level": self.manual_level().map(|l| l.as_str()),
            "auto": self.is_auto(),
            "shed": self.shed_total(),
            "read_only_refused": self.read_only_total(),
            "load": self.load_signal().get(),
        })
    }
}

#[cfg(feature = "adaptive")]
impl StatusSource for palisade_adaptive::AdaptiveHandle {
    fn status(&self) -> Value {
        let rtt = self.rtt();
        let partitions: Vec<Value> = self
            .partitions()
            .into_iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "share": p.share,
                    "guaranteed": p.guaranteed,
                    "in_flight": p.in_flight,
                    "rejected": p.rejected,
                })
            })
            .collect();
        json!({
            "name": self.name(),
            "algorithm": self.algorithm(),
            "limit": self.limit(),
            "in_flight": self.in_flight(),
            "available": self.available(),
            "rejected": self.rejected(),
            "drops": self.drops(),
            "samples": self.samples(),
            "windows": self.windows(),
            "limiting": self.is_limiting(),
            "rtt_last_us": rtt.last.map(|d| d.as_micros() as u64),
            "rtt_baseline_us": rtt.baseline.map(|d| d.as_micros() as u64),
            "partitions": partitions,
            "tenant_keys": self.tenant_keys(),
            "overflowed": self.overflowed(),
        })
    }
}

#[cfg(feature = "hedge")]
impl StatusSource for palisade_hedge::HedgeHandle {
    fn status(&self) -> Value {
        json!({
            "requests": self.requests(),
            "hedges": self.hedges(),
            "hedge_wins": self.hedge_wins(),
            "cancelled": self.cancelled(),
            "budget_refused": self.budget_refused(),
            "budget_exhausted": self.budget_exhausted(),
            "suppressed": self.suppressed(),
            "body_too_large": self.body_too_large(),
            "deadline_passed": self.deadline_passed(),
            "delay_ms": self.current_delay().map(|d| d.as_secs_f64() * 1000.0),
        })
    }
}

/// Named status sources, shared by clones: register every layer's handle once at startup.
#[derive(Clone, Default)]
pub struct StatusRegistry {
    sources: Arc<RwLock<BTreeMap<String, Arc<dyn StatusSource>>>>,
}

impl StatusRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the source named `name`.
    pub fn register(&self, name: impl Into<String>, source: impl StatusSource + 'static) -> &Self {
        self.sources
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.into(), Arc::new(source));
        self
    }

    /// The snapshot: `{ name: source.status(), ... }`, in name order.
    pub fn snapshot(&self) -> Value {
        let sources = self.sources.read().unwrap_or_else(|e| e.into_inner());
        Value::Object(
            sources
                .iter()
                .map(|(name, s)| (name.clone(), s.status()))
                .collect(),
        )
    }
}

impl fmt::Debug for StatusRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sources = self.sources.read().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("StatusRegistry")
            .field("sources", &sources.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// `GET /palisade/status`: the [`StatusRegistry`] snapshot as JSON.
#[derive(Debug, Clone)]
pub struct StatusEndpoint {
    registry: StatusRegistry,
}

impl StatusEndpoint {
    /// Serves `registry`.
    pub fn new(registry: StatusRegistry) -> Self {
        StatusEndpoint { registry }
    }
}

impl<B> Service<Request<B>> for StatusEndpoint {
    type Response = Response<OpsBody>;
    type Error = Infallible;
    type Future = Ready<Result<Response<OpsBody>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let res = match *req.method() {
            Method::GET => json_response(StatusCode::OK, self.registry.snapshot().to_string()),
            Method::HEAD => json_response(StatusCode::OK, Bytes::new()),
            _ => {
                let mut res = json_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    r#"{"error":"method not allowed; use GET or HEAD"}"#,
                );
                res.headers_mut()
                    .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
                res
            }
        };
        ready(Ok(res))
    }
}
