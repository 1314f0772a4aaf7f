//! The handle: read counts and resize limits from admin code and tests. Synchronous, cheap to clone.

use std::fmt;
use std::hash::Hash;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::shared::{Shared, Tenant, UNLIMITED};

/// A handle to one bulkhead. Made by [`BulkheadLayer::handle`](crate::BulkheadLayer::handle).
#[derive(Clone)]
pub struct BulkheadHandle {
    shared: Arc<Shared>,
}

/// A snapshot of one tenant's counts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TenantCounts {
    /// The tenant's key as the extractor gave it — its `Debug` form without surrounding quotes, cut to
    /// at most 128 bytes on a character boundary, as the rate limiter labels tenants — or
    /// `(anonymous)` / `(overflow)`.
    pub label: String,
    /// Requests of this tenant running now.
    pub in_flight: usize,
    /// Requests of this tenant waiting in the queue.
    pub queued: usize,
}

impl TenantCounts {
    fn of(t: &Tenant) -> Self {
        TenantCounts {
            label: t.label.to_string(),
            in_flight: t.in_flight.load(Relaxed),
            queued: t.queued.load(Relaxed),
        }
    }
}

impl BulkheadHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        BulkheadHandle { shared }
    }

    /// The bulkhead's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Requests running now (holding a permit).
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight()
    }

    /// Requests waiting in the queue now.
    pub fn queued(&self) -> usize {
        self.shared.queued()
    }

    /// Slots free now (0 while in-flight requests drain after the limit shrank).
    pub fn available(&self) -> usize {
        self.max_concurrent().saturating_sub(self.in_flight())
    }

    /// The global concurrency limit.
    pub fn max_concurrent(&self) -> usize {
        self.shared.limit()
    }

    /// Changes the global concurrency limit. Growing it hands the new slots to waiters at once;
    /// shrinking it lets the requests in flight finish (no new one is admitted until in-flight is below
    /// the new limit). `0` refuses (or queues) everything; a limit above
    /// [`MAX_CONCURRENT`](crate::MAX_CONCURRENT) is clamped to it.
    pub fn set_max_concurrent(&self, limit: usize) {
        self.shared.set_limit(limit.min(crate::MAX_CONCURRENT));
    }

    /// The most requests one tenant may have in flight, if limited (keyed bulkheads).
    pub fn max_per_tenant(&self) -> Option<usize> {
        Some(self.shared.per_tenant()).filter(|&n| n != UNLIMITED)
    }

    /// Changes the per-tenant limit (`None`: no limit but the global one). Like
    /// [`set_max_concurrent`](Self::set_max_concurrent), growing wakes waiters and shrinking drains.
    pub fn set_max_per_tenant(&self, share: Option<usize>) {
        self.shared.set_per_tenant(share.unwrap_or(UNLIMITED));
    }

    /// Requests refused since the bulkhead was built (full, queue full, or waited too long).
    pub fn rejected(&self) -> u64 {
        self.shared.rejected()
    }

    /// Whether the bulkhead is saturated: it found itself full and has not yet drained to 3/4 of its
    /// limit with nothing queued. The health component is degraded while this holds.
    pub fn is_saturated(&self) -> bool {
        self.shared.is_saturated()
    }

    /// The counts of `key`'s tenant, if it is tracked. `key` must be of the extractor's key type (a
    /// `HeaderValue` for `HeaderKey`, an `IpAddr` for `ClientIp`, ...): keys are matched by hash.
    pub fn tenant<Q: Hash + ?Sized>(&self, key: &Q) -> Option<TenantCounts> {
        let tenants = self.shared.tenants.as_ref()?;
        tenants
            .map
            .get(tenants.map.hash(key))
            .map(|t| TenantCounts::of(&t))
    }

    /// The counts of the shared tenant of requests without a key (keyed bulkheads).
    pub fn anonymous(&self) -> Option<TenantCounts> {
        self.shared
            .tenants
            .as_ref()
            .map(|t| TenantCounts::of(&t.anonymous))
    }

    /// The counts of the tenant shared by new keys while the key map is full (keyed bulkheads).
    pub fn overflow(&self) -> Option<TenantCounts> {
        self.shared
            .tenants
            .as_ref()
            .map(|t| TenantCounts::of(&t.overflow))
    }

    /// Every tracked tenant's counts, then the anonymous and overflow tenants' (keyed bulkheads; empty
    /// otherwise).
    pub fn tenants(&self) -> Vec<TenantCounts> {
        let Some(tenants) = self.shared.tenants.as_ref() else {
            return Vec::new();
        };
        let mut v = Vec::with_capacity(tenants.map.len() + 2);
        tenants.map.for_each(|_, t| v.push(TenantCounts::of(t)));
        v.push(TenantCounts::of(&tenants.anonymous));
        v.push(TenantCounts::of(&tenants.overflow));
        v
    }

    /// How many tenant keys are tracked.
    pub fn tenant_keys(&self) -> usize {
        self.shared.tenants.as_ref().map_or(0, |t| t.map.len())
    }

    /// How many requests for new keys went to the overflow tenant because the key map was full.
    pub fn overflowed(&self) -> u64 {
        self.shared
            .tenants
            .as_ref()
            .map_or(0, |t| t.map.overflowed())
    }
}

impl fmt::Debug for BulkheadHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadHandle")
            .field("state", &self.shared)
            .finish()
    }
}
