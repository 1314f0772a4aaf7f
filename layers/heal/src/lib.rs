//! # palisade-heal
//!
//! The control plane of palisade — the part that watches the service as a whole. This crate holds its eyes:
//!
//! - [`signals`]: what the control plane can see — the latency and outcome [recorder](signals::recorder)
//!   (the only piece on the request path: atomics, no lock), and gauges read at each tick from palisade's
//!   handles or from user code (`Fn() -> f64`).
//! - [`detect`]: what counts as an anomaly — small deterministic state machines over `(value, time)`
//!   samples, with no clock of their own, each verdict carrying its evidence (detector, signal, value,
//!   threshold, window) for the audit log.
//! - [`supervisor`]: what the control plane does about it — rules (trigger, confirmation, ordered
//!   actions, restore criteria) stepped tick by tick in DRY-RUN, ACTIVE or DISABLED mode, with action
//!   budgets, containment and blast-radius limits, escalation, and one audit record per decision.
//!
//! Health tiers (shallow / deep / comprehensive checks and their aggregation) live on palisade-core's
//! [`Health`](palisade_core::health::Health), which every layer already shares.
#![forbid(unsafe_code)]

pub mod detect;
pub mod signals;
pub mod supervisor;
