//! Counters, traces and the rate-limited audit record of activations, and the [`FallbackHandle`].

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::*};
use std::sync::Arc;

use palisade_core::audit::{Audit, AuditEvent};
use tokio::time::Instant;

use crate::stale::Store;

/// The audit record kind written (at most once a minute per fallback) when a fallback serves requests.
pub const ACTIVATED_KIND: &str = "fallback.activated";

/// Per-fallback counters and the audit rate limiter.
pub(crate) struct Activity {
    pub(crate) name: Cow<'static, str>,
    pub(crate) kind: &'static str,
    triggered: AtomicU64,
    served: AtomicU64,
    unavailable: AtomicU64,
    pub(crate) body_too_large: AtomicU64,
    alternate_failed: AtomicU64,
    audit: Audit,
    epoch: Instant,
    /// The minute (since `epoch`, plus one) of the last audit record; 0 before the first.
    minute: AtomicU64,
    /// Activations since the last audit record that it did not include.
    pending: AtomicU64,
}

impl Activity {
    pub(crate) fn new(name: Cow<'static, str>, kind: &'static str, audit: Audit) -> Self {
        Activity {
            name,
            kind,
            triggered: AtomicU64::new(0),
            served: AtomicU64::new(0),
            unavailable: AtomicU64::new(0),
            body_too_large: AtomicU64::new(0),
            alternate_failed: AtomicU64::new(0),
            audit,
            epoch: Instant::now(),
            minute: AtomicU64::new(0),
            pending: AtomicU64::new(0),
        }
    }

    pub(crate) fn triggered(&self) {
        self.triggered.fetch_add(1, Relaxed);
    }

    /// The trigger fired but there was no fallback to serve; the original outcome is returned.
    pub(crate) fn unavailable(&self, cause: &'static str, why: &'static str) {
        self.unavailable.fetch_add(1, Relaxed);
        tracing::debug!(fallback = %self.name, kind = self.kind, cause, why, "fallback: not available, original outcome returned");
    }

    pub(crate) fn alternate_failed(&self, cause: &'static str) {
        self.alternate_failed.fetch_add(1, Relaxed);
        self.unavailable("alternate", cause);
    }

    /// A fallback response was served. Counts it, traces it, and writes the audit record if this is the
    /// first activation in a new minute (one compare-and-swap decides which request writes it).
    pub(crate) fn served(&self, cause: &'static str) {
        self.served.fetch_add(1, Relaxed);
        tracing::debug!(fallback = %self.name, kind = self.kind, cause, "fallback served");
        let minute = Instant::now()
            .saturating_duration_since(self.epoch)
            .as_secs()
            / 60
            + 1;
        let last = self.minute.load(Acquire);
        if minute > last
            && self
                .minute
                .compare_exchange(last, minute, AcqRel, Acquire)
                .is_ok()
        {
            let count = self.pending.swap(0, AcqRel) + 1;
            tracing::info!(fallback = %self.name, kind = self.kind, cause, count, "fallback activated");
            self.audit.record_with(|| {
                AuditEvent::new(ACTIVATED_KIND)
                    .detail("fallback", self.name.as_ref())
                    .detail("kind", self.kind)
                    .detail("cause", cause)
                    .detail("count", count)
            });
        } else {
            self.pending.fetch_add(1, Relaxed);
        }
    }
}

impl fmt::Debug for Activity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Activity")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("served", &self.served.load(Relaxed))
            .finish_non_exhaustive()
    }
}

/// A snapshot of a fallback's counters, from [`FallbackHandle::counts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Counts {
    /// Outcomes of the inner service that fired the trigger.
    pub triggered: u64,
    /// Fallback responses served (activations).
    pub served: u64,
    /// Triggered, but no fallback could be served (no fresh stale entry, a request body over the
    /// buffer limit, a failed alternate service, a non-`GET` request with stale-if-error): the original
    /// error or response was returned.
    pub unavailable: u64,
    /// Requests whose body was over the alternate kind's buffer limit (sent unbuffered, without
    /// fallback).
    pub body_too_large: u64,
    /// Calls to the alternate service that failed (the original outcome was returned).
    pub alternate_failed: u64,
}

/// Reads a fallback's counters and its stale store. Cheap to clone; all methods are synchronous.
#[derive(Clone)]
pub struct FallbackHandle {
    activity: Arc<Activity>,
    store: Option<Arc<Store>>,
}

impl FallbackHandle {
    pub(crate) fn new(activity: Arc<Activity>, store: Option<Arc<Store>>) -> Self {
        FallbackHandle { activity, store }
    }

    /// The fallback's name.
    pub fn name(&self) -> &str {
        &self.activity.name
    }

    /// The fallback kind: `"static"`, `"function"`, `"alternate"` or `"stale"`.
    pub fn kind(&self) -> &'static str {
        self.activity.kind
    }

    /// Fallback responses served so far.
    pub fn activations(&self) -> u64 {
        self.activity.served.load(Relaxed)
    }

    /// All counters.
    pub fn counts(&self) -> Counts {
        let a = &self.activity;
        Counts {
            triggered: a.triggered.load(Relaxed),
            served: a.served.load(Relaxed),
            unavailable: a.unavailable.load(Relaxed),
            body_too_large: a.body_too_large.load(Relaxed),
            alternate_failed: a.alternate_failed.load(Relaxed),
        }
    }

    /// Responses in the stale store (0 for other kinds).
    pub fn stale_entries(&self) -> usize {
        self.store.as_ref().map_or(0, |s| s.usage().0)
    }

    /// Bytes accounted in the stale store: bodies, headers and keys (0 for other kinds).
    pub fn stale_bytes(&self) -> usize {
        self.store.as_ref().map_or(0, |s| s.usage().1)
    }

    /// Empties the stale store (e.g. after a deploy that changed responses).
    pub fn clear_stale(&self) {
        if let Some(s) = &self.store {
            s.clear();
        }
    }
}

impl fmt::Debug for FallbackHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackHandle")
            .field("name", &self.activity.name)
            .field("kind", &self.activity.kind)
            .field("counts", &self.counts())
            .field("store", &self.store)
            .finish()
    }
}
