//! The builder: every knob of a bulkhead, validated once in `build()`.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_core::audit::Audit;
use palisade_core::health::{ComponentKind, Health};

use crate::priority::NoPriority;
use crate::queue::Scheduler;
use crate::service::{Inner, Unkeyed};
use crate::shared::{MissingKey, Queue, Shared, SharedConfig, Tenants, UNLIMITED};
use crate::BulkheadLayer;

pub use palisade_core::config::BuildError;

/// The layer name in this crate's [`BuildError`]s.
pub(crate) const LAYER: &str = "bulkhead";

/// Builds a [`BulkheadLayer`].
///
/// Defaults: 100 requests in flight; unkeyed; no queue (a request that finds the bulkhead full is
/// refused at once with `Overloaded` and a 1 s `Retry-After` hint); the permit is held until the
/// response future completes.
///
/// Keyed ([`keyed`](Self::keyed)): each tenant may hold at most [`max_per_tenant`](Self::max_per_tenant)
/// slots (default: no limit but the global one); requests without a key share an anonymous tenant
/// ([`MissingKey::Anonymous`]); at most 10,000 tenants are tracked, idle ones forgotten after 10 minutes,
/// and new tenants over the cap share one overflow tenant.
///
/// Queue ([`queue`](Self::queue)): at most `max_len` waiters, each for at most `max_wait`; served by
/// priority class (with [aging](Self::aging), default half the maximum wait) and, within a class, by
/// deficit round robin across tenants ([`quantum`](Self::quantum) 1).
#[derive(Debug, Clone)]
pub struct Builder<K = Unkeyed, P = NoPriority> {
    name: Cow<'static, str>,
    max_concurrent: usize,
    max_per_tenant: Option<usize>,
    queue: Option<(usize, Duration)>,
    max_queued_per_tenant: Option<usize>,
    aging: Option<Duration>,
    quantum: u32,
    retry_after: Duration,
    hold_body: bool,
    missing_key: MissingKey,
    max_keys: usize,
    idle_timeout: Duration,
    health: Option<Health>,
    audit: Audit,
    keyed: bool,
    keys: K,
    priority: P,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            name: Cow::Borrowed("default"),
            max_concurrent: 100,
            max_per_tenant: None,
            queue: None,
            max_queued_per_tenant: None,
            aging: None,
            quantum: 1,
            retry_after: Duration::from_secs(1),
            hold_body: false,
            missing_key: MissingKey::Anonymous,
            max_keys: 10_000,
            idle_timeout: Duration::from_secs(600),
            health: None,
            audit: Audit::disabled(),
            keyed: false,
            keys: Unkeyed,
            priority: NoPriority,
        }
    }
}

impl Builder {
    /// A builder with the defaults above.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<K, P> Builder<K, P> {
    /// Names the bulkhead: the health component is `bulkhead.<name>` and audit records carry it.
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The most requests in flight at once, over all tenants (at least 1; default 100). Resizable at
    /// runtime with [`BulkheadHandle::set_max_concurrent`](crate::BulkheadHandle::set_max_concurrent).
    pub fn max_concurrent(mut self, n: usize) -> Self {
        self.max_concurrent = n;
        self
    }

    /// Keyed: the most requests one tenant may have in flight (its share; at least 1, at most
    /// `max_concurrent`), so one slow tenant cannot take every slot. A tenant at its share is refused
    /// (or queued) while others still get in.
    pub fn max_per_tenant(mut self, n: usize) -> Self {
        self.max_per_tenant = Some(n);
        self
    }

    /// Opt-in queue: when full, up to `max_len` requests wait, each at most `max_wait`, for a slot; a
    /// request that would wait longer is refused with `Overloaded`, never queued forever. The wait
    /// happens in the response future, never in `poll_ready`.
    pub fn queue(mut self, max_len: usize, max_wait: Duration) -> Self {
        self.queue = Some((max_len, max_wait));
        self
    }

    /// Queue: the most waiters of one tenant (default: the whole queue), so one tenant cannot fill it.
    pub fn max_queued_per_tenant(mut self, n: usize) -> Self {
        self.max_queued_per_tenant = Some(n);
        self
    }

    /// Queue: a `Normal` or `Background` waiter that has waited this long is served before fresher
    /// waiters of higher classes (default: half the maximum wait).
    pub fn aging(mut self, threshold: Duration) -> Self {
        self.aging = Some(threshold);
        self
    }

    /// Queue: how many waiters of one tenant are served in a row before the next tenant's turn
    /// (deficit round robin quantum; default 1).
    pub fn quantum(mut self, n: u32) -> Self {
        self.quantum = n;
        self
    }

    /// The `Retry-After` hint carried by `Overloaded` (default 1 s).
    pub fn retry_after(mut self, hint: Duration) -> Self {
        self.retry_after = hint;
        self
    }

    /// Holds each request's slot until its response body ends (last frame, error, or drop) instead of
    /// until the response head is ready: for streaming responses, where the work continues in the body.
    pub fn hold_until_body_end(mut self) -> Self {
        self.hold_body = true;
        self
    }

    /// Keyed: what happens to requests whose key cannot be extracted (default
    /// [`MissingKey::Anonymous`]).
    pub fn missing_key(mut self, policy: MissingKey) -> Self {
        self.missing_key = policy;
        self
    }

    /// Keyed: the most tenants tracked at once (default 10,000). New tenants over the cap share one
    /// overflow tenant (with its own share), counted in
    /// [`BulkheadHandle::overflowed`](crate::BulkheadHandle::overflowed).
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// Keyed: a tenant with nothing in flight or queued is forgotten after this long unused (default
    /// 10 min), when room is needed.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// Reports to `health`: a readiness component `bulkhead.<name>`, degraded while saturated (state
    /// changes only, never per request).
    pub fn health(mut self, health: &Health) -> Self {
        self.health = Some(health.clone());
        self
    }

    /// Records saturation, recovery and resizes in `audit`.
    pub fn audit(mut self, audit: &Audit) -> Self {
        self.audit = audit.clone();
        self
    }

    /// Per-tenant limits: the tenant of a request is `extractor`'s key (a
    /// [`KeyExtractor`](palisade_core::key::KeyExtractor) such as `HeaderKey`).
    pub fn keyed<K2>(self, extractor: K2) -> Builder<K2, P> {
        Builder {
            name: self.name,
            max_concurrent: self.max_concurrent,
            max_per_tenant: self.max_per_tenant,
            queue: self.queue,
            max_queued_per_tenant: self.max_queued_per_tenant,
            aging: self.aging,
            quantum: self.quantum,
            retry_after: self.retry_after,
            hold_body: self.hold_body,
            missing_key: self.missing_key,
            max_keys: self.max_keys,
            idle_timeout: self.idle_timeout,
            health: self.health,
            audit: self.audit,
            keyed: true,
            keys: extractor,
            priority: self.priority,
        }
    }

    /// Queue: the priority class of a request is `extractor`'s (a
    /// [`PriorityExtractor`](crate::PriorityExtractor): [`PriorityHeader`](crate::PriorityHeader),
    /// [`priority_fn`](crate::priority_fn)). Asked only for requests that queue.
    pub fn priority<P2>(self, extractor: P2) -> Builder<K, P2> {
        Builder {
            name: self.name,
            max_concurrent: self.max_concurrent,
            max_per_tenant: self.max_per_tenant,
            queue: self.queue,
            max_queued_per_tenant: self.max_queued_per_tenant,
            aging: self.aging,
            quantum: self.quantum,
            retry_after: self.retry_after,
            hold_body: self.hold_body,
            missing_key: self.missing_key,
            max_keys: self.max_keys,
            idle_timeout: self.idle_timeout,
            health: self.health,
            audit: self.audit,
            keyed: self.keyed,
            keys: self.keys,
            priority: extractor,
        }
    }

    fn validate(&self) -> Result<Option<Queue>, BuildError> {
        if self.max_concurrent == 0 {
            return Err(BuildError::new(
                LAYER,
                "max_concurrent",
                "must be at least 1",
            ));
        }
        if let Some(n) = self.max_per_tenant {
            if !self.keyed {
                return Err(BuildError::new(
                    LAYER,
                    "max_per_tenant",
                    "a per-tenant limit needs a keyed bulkhead: call keyed(extractor)",
                ));
            }
            if n == 0 || n > self.max_concurrent {
                return Err(BuildError::new(
                    LAYER,
                    "max_per_tenant",
                    format!(
                        "{n} is not between 1 and max_concurrent ({})",
                        self.max_concurrent
                    ),
                ));
            }
        }
        if self.keyed && self.max_keys == 0 {
            return Err(BuildError::new(LAYER, "max_keys", "must be at least 1"));
        }
        let Some((max_len, max_wait)) = self.queue else {
            for (set, setting) in [
                (
                    self.max_queued_per_tenant.is_some(),
                    "max_queued_per_tenant",
                ),
                (self.aging.is_some(), "aging"),
            ] {
                if set {
                    return Err(BuildError::new(
                        LAYER,
                        setting,
                        "applies to the queue: configure one with queue(max_len, max_wait)",
                    ));
                }
            }
            return Ok(None);
        };
        if max_len == 0 {
            return Err(BuildError::new(
                LAYER,
                "queue",
                "max_len must be at least 1",
            ));
        }
        if max_wait.is_zero() {
            return Err(BuildError::new(
                LAYER,
                "queue",
                "max_wait must be above zero",
            ));
        }
        if self.max_queued_per_tenant == Some(0) {
            return Err(BuildError::new(
                LAYER,
                "max_queued_per_tenant",
                "must be at least 1",
            ));
        }
        let aging = self.aging.unwrap_or(max_wait / 2);
        if aging.is_zero() {
            return Err(BuildError::new(LAYER, "aging", "must be above zero"));
        }
        if self.quantum == 0 {
            return Err(BuildError::new(LAYER, "quantum", "must be at least 1"));
        }
        Ok(Some(Queue {
            max_len,
            max_per_tenant: self.max_queued_per_tenant.unwrap_or(max_len).min(max_len),
            max_wait,
            aging,
            quantum: self.quantum,
            sched: Mutex::new(Scheduler::default()),
        }))
    }

    /// Builds the layer. Its state is shared by every service it wraps (every route, every clone).
    pub fn build(self) -> Result<BulkheadLayer<K, P>, BuildError> {
        let queue = self.validate()?;
        let component = self
            .health
            .as_ref()
            .map(|h| h.register(format!("bulkhead.{}", self.name), ComponentKind::Readiness));
        let shared = Shared::new(SharedConfig {
            name: self.name,
            limit: self.max_concurrent,
            per_tenant: self.max_per_tenant.unwrap_or(UNLIMITED),
            retry_after: self.retry_after,
            hold_body: self.hold_body,
            missing_key: self.missing_key,
            queue,
            tenants: self
                .keyed
                .then(|| Tenants::new(self.max_keys, self.idle_timeout)),
            component,
            audit: self.audit,
        });
        Ok(BulkheadLayer::from_inner(Inner {
            shared: Arc::new(shared),
            keys: self.keys,
            priority: self.priority,
        }))
    }
}
