//! # palisade-degrade
//!
//! A degradation gate for Tower HTTP services: shed less important traffic first when the service is
//! in trouble, go read-only when writes cannot be taken, and tell the rest of the stack how loaded the
//! service is.
//!
//! - **Levels** ([`Level`]), by severity: `Normal` (everything passes), `Degraded` (background traffic
//!   is shed), `Critical` (only critical traffic passes), `ReadOnly` (safe methods pass, writes are
//!   refused) and `Maintenance` (nothing passes). The table on [`Level`] says exactly what each admits;
//!   [`Builder::floor`] changes it.
//! - **Priority classes** ([`Priority`]): `critical`, `normal`, `background`, from a `Priority` in the
//!   request extensions, a closure, a header such as `x-priority` (bounded and validated: a malformed
//!   value is ignored, never an error), or a path-prefix route table; `normal` when nothing says.
//! - **Rejections** are the core markers, as a `BoxError`: [`Shed`] naming the level, or [`ReadOnly`],
//!   both with a `Retry-After` hint (5 s by default). The rescue layer turns them into HTTP 503 with
//!   `Retry-After` and a problem body ("Request shed under load", "Service is read-only"), or gRPC
//!   `UNAVAILABLE`.
//! - **Steering**: a [`GateHandle`] sets the level with a reason, from admin code, tests or a
//!   supervisor. The starting level can come from the environment ([`Builder::level_from_env`]:
//!   `PALISADE_READ_ONLY=1`, `PALISADE_GATE_LEVEL=degraded`), parsed strictly.
//! - **Observability**: every change of level is traced, audited (`gate.level_changed` with from, to,
//!   reason, source and the signals) and reflected in a readiness health component `gate.<name>`:
//!   healthy below `Degraded`, degraded from `Degraded`, unhealthy at `Maintenance`
//!   ([`Builder::health_levels`]).
//! - **Load signal**: the gate publishes a [`LoadSignal`](palisade_core::signal::LoadSignal) in
//!   `[0, 1]` — by default 0 at `Normal`, 0.5 at `Degraded`, 0.8 at `Critical`, 1 at `ReadOnly` and
//!   `Maintenance` ([`Builder::load_at`]) — that adaptive layers (the rate limiter's adaptive mode)
//!   read: [`GateHandle::load_signal`], or [`Builder::load_signal`] to publish into a signal you own.
//!
//! At `Normal` without automatic mode, a request costs one relaxed atomic load over the bare service:
//! no clock read, no lock, no allocation, and the priority class is not even worked out.
//!
//! ```
//! use palisade_degrade::{GateLayer, Level, Priority, Shed};
//! use palisade_core::error::{BoxError, Rejection};
//! use http::{Request, Response};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let gate = GateLayer::builder()
//!     .name("api")
//!     .route("/checkout", Priority::Critical)
//!     .route("/reports", Priority::Background)
//!     .build()
//!     .expect("valid gate config");
//! let handle = gate.handle();
//! let svc = gate.layer(service_fn(|_req: Request<()>| async {
//!     Ok::<_, BoxError>(Response::new(()))
//! }));
//! let get = |path: &str| Request::get(path).body(()).unwrap();
//!
//! handle.set_level(Level::Critical, "database failover");
//! assert!(svc.clone().oneshot(get("/checkout/pay")).await.is_ok());
//! let err = svc.clone().oneshot(get("/reports/daily")).await.unwrap_err();
//! let shed = err.downcast_ref::<Shed>().expect("shed");
//! assert_eq!(shed.level, "critical");
//! assert_eq!(Rejection::find(&*err).unwrap().http_status(), 503);
//!
//! handle.set_level(Level::ReadOnly, "storage maintenance");
//! assert!(svc.clone().oneshot(get("/reports/daily")).await.is_ok()); // reads pass
//! let post = Request::post("/checkout/pay").body(()).unwrap();
//! let err = svc.oneshot(post).await.unwrap_err(); // writes do not, whatever their class
//! assert_eq!(Rejection::find(&*err).unwrap().title(), "Service is read-only");
//! # }
//! ```
//!
//! # Automatic levels
//!
//! Opt in by setting at least one trigger: [`Builder::auto_in_flight`], [`Builder::auto_latency_p95`]
//! or [`Builder::auto_error_rate`]. Each trigger names a level (`Degraded`, `Critical` or `ReadOnly`;
//! `Maintenance` is only ever set by hand), an **enter** threshold and a lower **leave** threshold:
//!
//! - the gate goes *up* to a trigger's level at once when its signal reaches `enter`;
//! - it stays there while the signal is at or above `leave`, and comes *down* only after every
//!   trigger holding the level has had its signal below `leave` for the dwell time
//!   ([`Builder::auto_dwell`], 10 s by default), **continuously**: one evaluation that sees a signal
//!   back at or above `leave` starts the dwell again. Time spent at the level before the signals
//!   dropped does not count, so a short dip after a long stay does not bring the level down. It then
//!   goes to the highest level the signals held within the dwell time (possibly a lower trigger's),
//!   not necessarily all the way to `Normal`.
//!
//! So a signal oscillating around the enter threshold, or dipping briefly below the leave threshold,
//! does not make the level flap. "Continuously" is as seen by the evaluations: the dwell runs from
//! the last evaluation that saw the level held, so evaluate regularly (the request path does, at most
//! every [`auto_interval`](Builder::auto_interval); call [`GateHandle::evaluate`] from a timer when
//! traffic may stop).
//!
//! The signals:
//!
//! - **in flight**: requests admitted by the gate whose response (head) has not arrived; counted with
//!   a drop guard in the gate's response future, so cancelled requests give their place back;
//! - **p95 latency** and **error rate** over the calls that finished in the last
//!   [`auto_window`](Builder::auto_window) (10 s), kept in a fixed ring of the last
//!   [`auto_samples`](Builder::auto_samples) calls (1024) written lock-free; they count only with at
//!   least [`auto_min_samples`](Builder::auto_min_samples) (20) calls. Failures are judged by the
//!   [`Classify`](palisade_core::classify::Classify) classifier ([`Builder::classify`], default
//!   HTTP 5xx, gRPC errors in the headers, every `Err`). Shed requests are not counted.
//!
//! There is no background task. The request path evaluates the signals at most every
//! [`auto_interval`](Builder::auto_interval) (100 ms), under a `try_lock` nobody waits on;
//! [`GateHandle::evaluate`] evaluates on demand (from a timer when traffic may stop altogether, or in
//! tests). In automatic mode every admitted request reads the clock and counts itself in flight.
//!
//! An operator's level ([`GateHandle::set_level`], or a starting level other than `Normal`) wins over
//! the automatic one until [`GateHandle::clear_manual`] — or, with [`Builder::manual_hold`] (or
//! [`GateHandle::set_level_for`]), until the hold passes. The automatic level keeps being computed
//! meanwhile, so clearing goes straight to what the signals say.
//!
//! ```
//! use palisade_degrade::{GateLayer, Level};
//! use std::time::Duration;
//!
//! let gate = GateLayer::builder()
//!     .name("api")
//!     .auto_in_flight(Level::Degraded, 800, 500)
//!     .auto_latency_p95(Level::Critical, Duration::from_secs(2), Duration::from_millis(800))
//!     .auto_error_rate(Level::Critical, 0.5, 0.2)
//!     .auto_dwell(Duration::from_secs(30))
//!     .build()
//!     .expect("valid gate config");
//! assert!(gate.handle().is_auto());
//! ```
//!
//! # Read-only mode and the environment
//!
//! Safe methods (GET, HEAD, OPTIONS, TRACE) pass at `ReadOnly`; every other method, extension methods
//! included, is refused with [`ReadOnly`]. gRPC calls are all POSTs, so a gRPC service at `ReadOnly`
//! refuses every call.
//!
//! ```
//! use palisade_degrade::{GateLayer, Level};
//!
//! // In production: `.level_from_env()`. Here the environment is injected.
//! let env = |name: &str| (name == "PALISADE_READ_ONLY").then(|| "1".to_owned());
//! let gate = GateLayer::builder().level_from_env_with(env).build().expect("valid env");
//! assert_eq!(gate.handle().level(), Level::ReadOnly);
//!
//! let env = |name: &str| (name == "PALISADE_GATE_LEVEL").then(|| "degarded".to_owned());
//! let err = GateLayer::builder().level_from_env_with(env).build().unwrap_err();
//! assert_eq!(err.setting(), "PALISADE_GATE_LEVEL");
//! ```
#![forbid(unsafe_code)]

mod auto;
mod config;
mod handle;
mod level;
mod priority;
mod service;
mod shared;

pub use auto::Signals;
pub use config::{
    BuildError, Builder, LEVEL_VAR, MAX_DURATION, MAX_IN_FLIGHT_THRESHOLD, MAX_LATENCY_THRESHOLD,
    MAX_MANUAL_HOLD, MAX_NAME_BYTES, MAX_ROUTES, MAX_TRIGGERS, READ_ONLY_VAR,
};
pub use handle::GateHandle;
pub use level::{Level, ParseError, Priority};
pub use palisade_core::error::{ReadOnly, Shed};
pub use priority::RequestInfo;
pub use service::{Gate, GateLayer, ResponseFuture};
