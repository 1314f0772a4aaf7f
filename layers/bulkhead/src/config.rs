//! The builder: every knob of a bulkhead, validated once in `build()`.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_core::audit::Audit;
use palisade_core::health::{ComponentKind, Health};
use palisade_core::keymap::KeyMap;

use crate::priority::NoPriority;
use crate::queue::Scheduler;
use crate::service::{Inner, Unkeyed};
use palisade_core::key::MalformedKey;

use crate::shared::{MissingKey, Queue, Shared, SharedConfig, Tenants, UNLIMITED};
use crate::BulkheadLayer;

pub use palisade_core::config::BuildError;

/// The layer name in this crate's [`BuildError`]s.
pub(crate) const LAYER: &str = "bulkhead";

/// The largest [`max_concurrent`](Builder::max_concurrent) (and per-tenant share): 2²⁰ = 1,048,576
/// requests in flight. [`set_max_concurrent`](crate::BulkheadHandle::set_max_concurrent) clamps to it.
pub const MAX_CONCURRENT: usize = 1 << 20;

/// The longest [`queue`](Builder::queue): 2¹⁶ = 65,536 waiters (each holds its request and a service
/// clone; a longer queue is a memory problem, not a bulkhead).
pub const MAX_QUEUE_LEN: usize = 1 << 16;

/// The longest `max_wait` of the [`queue`](Builder::queue): one hour. (The shortest is the timer's
/// resolution, 1 ms.)
pub const MAX_WAIT: Duration = Duration::from_secs(3600);

/// The longest [`retry_after`](Builder::retry_after) hint: one hour.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The shortest `max_wait`: the timer's resolution.
const MIN_WAIT: Duration = Duration::from_millis(1);

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
/// priority class (with [aging](Self::aging), default a quarter of the maximum wait) and, within a
/// class, by deficit round robin across tenants ([`quantum`](Self::quantum) 1).
#[derive(Debug, Clone)]
pub struct Builder<K = Unkeyed, P = NoPriority> {
    name: Cow<'static, str>,
    max_concurrent: usize,
    max_per_tenant: Option<usize>,
    queue: Option<(usize, Duration)>,
    max_queued_per_tenant: Option<usize>,
    aging: Option<Duration>,
    quantum: Option<u32>,
    retry_after: Duration,
    hold_body: bool,
    missing_key: MissingKey,
    malformed_key: MalformedKey,
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
            quantum: None,
            retry_after: Duration::from_secs(1),
            hold_body: false,
            missing_key: MissingKey::Anonymous,
            malformed_key: MalformedKey::Reject,
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

    /// The most requests in flight at once, over all tenants (at least 1, at most [`MAX_CONCURRENT`];
    /// default 100). Resizable at runtime with [`BulkheadHandle::set_max_concurrent`](crate::BulkheadHandle::set_max_concurrent).
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
    ///
    /// `max_len` is at least 1 and at most [`MAX_QUEUE_LEN`]; `max_wait` at least 1 ms (the timer's
    /// resolution: a shorter wait would silently last a millisecond) and at most [`MAX_WAIT`]. The
    /// timer fires on whole milliseconds, so a `max_wait` with a fraction of one ends at the next.
    pub fn queue(mut self, max_len: usize, max_wait: Duration) -> Self {
        self.queue = Some((max_len, max_wait));
        self
    }

    /// Queue: the most waiters of one tenant (at least 1, at most the queue's `max_len`; default: the
    /// whole queue), so one tenant cannot fill it.
    pub fn max_queued_per_tenant(mut self, n: usize) -> Self {
        self.max_queued_per_tenant = Some(n);
        self
    }

    /// Queue: each `threshold` a waiter has waited ranks it one class higher (default: a quarter of the
    /// maximum wait; above zero and below it).
    ///
    /// A waiter's *virtual arrival* is its arrival plus one `threshold` per class below `Critical`
    /// (`Normal` +1, `Background` +2). Each class offers the waiter next in its line (deficit round
    /// robin across tenants, first come first served within a tenant); the offer with the earliest
    /// virtual arrival is served, ties to the higher class. So a `Normal` waiter goes ahead of
    /// `Critical` waiters that arrived more than one `threshold` after it, a `Background` waiter ahead
    /// of `Normal` ones more than one and `Critical` ones more than two `threshold`s after it: under a
    /// constant stream of critical requests, normal work waits about one `threshold` and background
    /// work about two.
    ///
    /// The invariant: aging lets a waiter go ahead only of waiters that arrived after it, never of an
    /// older one and never of a higher-class one that arrived less than the class gap in `threshold`s
    /// after it; and it never changes the order within a class, so round robin across tenants holds
    /// however long everyone has waited. A `Critical` request waits only for waiters already ranked like
    /// `Critical` ones when it arrived (nothing arriving later joins them) and its tenant's turn.
    /// With `threshold` at half `max_wait` or more, `Background` waiters never overtake `Critical`
    /// ones (they give up first).
    pub fn aging(mut self, threshold: Duration) -> Self {
        self.aging = Some(threshold);
        self
    }

    /// Queue: how many waiters of one tenant are served in a row before the next tenant's turn
    /// (deficit round robin quantum; at least 1, at most the queue's `max_len`; default 1).
    pub fn quantum(mut self, n: u32) -> Self {
        self.quantum = Some(n);
        self
    }

    /// The `Retry-After` hint carried by `Overloaded` (default 1 s; at most [`MAX_RETRY_AFTER`]).
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

    /// Keyed: what happens to requests that carry no key (default [`MissingKey::Anonymous`]).
    pub fn missing_key(mut self, policy: MissingKey) -> Self {
        self.missing_key = policy;
        self
    }

    /// Keyed: what happens to requests whose key is present but malformed (default
    /// [`MalformedKey::Reject`]: `400`, even under [`MissingKey::Anonymous`], so a tenant at its share
    /// cannot move to the anonymous tenant by sending garbage). [`MalformedKey::AsMissing`] hands them to
    /// the [`missing_key`](Self::missing_key) policy instead; opt in only where clients do not control keys.
    pub fn malformed_key(mut self, policy: MalformedKey) -> Self {
        self.malformed_key = policy;
        self
    }

    /// Keyed: the most tenants tracked at once (default 10,000; at least 1, at most
    /// [`MAX_KEYS`](palisade_core::keymap::MAX_KEYS)). New tenants over the cap share one
    /// overflow tenant (with its own share), counted in
    /// [`BulkheadHandle::overflowed`](crate::BulkheadHandle::overflowed).
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// Keyed: a tenant with nothing in flight or queued is forgotten after this long unused (default
    /// 10 min; at most [`MAX_IDLE`](palisade_core::keymap::MAX_IDLE)), when room is needed.
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
            malformed_key: self.malformed_key,
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
            malformed_key: self.malformed_key,
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
        if self.max_concurrent > MAX_CONCURRENT {
            return Err(BuildError::new(
                LAYER,
                "max_concurrent",
                format!(
                    "{} is more than the most a bulkhead admits, {MAX_CONCURRENT}",
                    self.max_concurrent
                ),
            ));
        }
        if self.retry_after > MAX_RETRY_AFTER {
            return Err(BuildError::new(
                LAYER,
                "retry_after",
                format!(
                    "{:?} is longer than the longest hint, {MAX_RETRY_AFTER:?}",
                    self.retry_after
                ),
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
        KeyMap::<()>::check(LAYER, self.max_keys, self.idle_timeout)?;
        let Some((max_len, max_wait)) = self.queue else {
            for (set, setting) in [
                (
                    self.max_queued_per_tenant.is_some(),
                    "max_queued_per_tenant",
                ),
                (self.aging.is_some(), "aging"),
                (self.quantum.is_some(), "quantum"),
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
        if max_len > MAX_QUEUE_LEN {
            return Err(BuildError::new(
                LAYER,
                "queue",
                format!("max_len {max_len} is more than the longest queue, {MAX_QUEUE_LEN}"),
            ));
        }
        if max_wait.is_zero() {
            return Err(BuildError::new(
                LAYER,
                "queue",
                "max_wait must be above zero",
            ));
        }
        if max_wait < MIN_WAIT {
            return Err(BuildError::new(
                LAYER,
                "queue",
                format!(
                    "max_wait {max_wait:?} is below the timer's resolution, 1ms (it would wait 1ms)"
                ),
            ));
        }
        if max_wait > MAX_WAIT {
            return Err(BuildError::new(
                LAYER,
                "queue",
                format!("max_wait {max_wait:?} is longer than the longest wait, {MAX_WAIT:?}"),
            ));
        }
        if let Some(n) = self.max_queued_per_tenant {
            if n == 0 || n > max_len {
                return Err(BuildError::new(
                    LAYER,
                    "max_queued_per_tenant",
                    format!("{n} is not between 1 and the queue's max_len ({max_len})"),
                ));
            }
        }
        let aging = self.aging.unwrap_or(max_wait / 4);
        if aging.is_zero() {
            return Err(BuildError::new(LAYER, "aging", "must be above zero"));
        }
        if aging >= max_wait {
            return Err(BuildError::new(
                LAYER,
                "aging",
                format!(
                    "{aging:?} is not below the queue's max_wait ({max_wait:?}): every waiter would give up before it aged"
                ),
            ));
        }
        let quantum = self.quantum.unwrap_or(1);
        if quantum == 0 || quantum as usize > max_len {
            return Err(BuildError::new(
                LAYER,
                "quantum",
                format!("{quantum} is not between 1 and the queue's max_len ({max_len})"),
            ));
        }
        Ok(Some(Queue {
            max_len,
            max_per_tenant: self.max_queued_per_tenant.unwrap_or(max_len),
            max_wait,
            quantum,
            sched: Mutex::new(Scheduler::new(aging)),
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
            malformed_key: self.malformed_key,
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
