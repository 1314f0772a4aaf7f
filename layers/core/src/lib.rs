//! The shared vocabulary of the palisade resilience layers.
//!
//! Every palisade layer crate depends on this one and on nothing else of palisade. It holds what the
//! layers must agree on so that they stack:
//!
//! - [`error`]: the rejection markers a layer returns inside the stack (`RateLimited`, `CircuitOpen`,
//!   `Overloaded`, `Elapsed`, `Shed`, `ReadOnly`, the idempotency errors, ...), carried as [`BoxError`],
//!   and [`Rejection`], which finds one in an error's source chain and says how it maps to HTTP and gRPC.
//! - [`key`]: the [`KeyExtractor`] trait and ready extractors (header, extension, peer IP, client IP behind
//!   trusted proxies, closures) used by every keyed layer.
//! - [`classify`]: the [`Classify`] trait deciding whether an outcome was a failure (errors, HTTP 5xx,
//!   gRPC status in headers or trailers, slow calls), consumed by the breaker, retry and fallback.
//! - [`deadline`]: the request's [`Deadline`] as an extension and the `grpc-timeout` codec, shared by the
//!   timeout layer (which records and writes them) and the retry layer (which sends each retry the time
//!   that is left).
//! - [`health`]: the [`Health`] handle: components, checks, liveness and readiness reports.
//! - [`audit`]: the [`Audit`] handle: an append-only, tamper-evident log of state changes.
//! - [`keymap`]: the bounded per-key state map every keyed layer uses; [`body`]: request/response body
//!   buffering for layers that replay or store bodies; [`config`]: the builders' shared [`BuildError`];
//!   [`signal`]: the shared [`LoadSignal`]; [`rng`]: seedable randomness for jitter and faults.
//!
//! [`BuildError`]: config::BuildError
//! [`LoadSignal`]: signal::LoadSignal
//!
//! [`KeyExtractor`]: key::KeyExtractor
//! [`Classify`]: classify::Classify
//! [`Deadline`]: deadline::Deadline
//! [`Health`]: health::Health
//! [`Audit`]: audit::Audit
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod audit;
pub mod body;
pub mod classify;
pub mod config;
pub mod deadline;
pub mod error;
pub mod grpc;
pub mod health;
pub mod key;
pub mod keymap;
pub mod repeat;
pub mod rng;
pub mod signal;
mod time;

pub use error::{BoxError, Rejection};
