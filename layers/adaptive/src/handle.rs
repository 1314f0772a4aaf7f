//! The handle: read the limit and counts from admin code, metrics and tests. Synchronous, cheap to
//! clone.

use std::fmt;
use std::hash::Hash;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::shared::{Shared, Tenant};

/// A handle to one adaptive limiter. Made by [`AdaptiveLayer::handle`](crate::AdaptiveLayer::handle).
#[derive(Clone)]
pub struct AdaptiveHandle {
    shared: Arc<Shared>,
}

/// A snapshot of one partition.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PartitionCounts {
    /// The partition's name.
    pub name: String,
    /// Its configured share of the limit.
    pub share: f64,
    /// Slots guaranteed to it at the current limit, `⌊limit × share⌋`.
    pub guaranteed: usize,
    /// Its requests in flight now (guaranteed and pooled slots).
    pub in_flight: usize,
    /// Its requests refused over the limit since the limiter was built.
    pub rejected: u64,
}

/// A snapshot of one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TenantCounts {
    /// The tenant key's label (its `Debug` form without quotes, at most 128 bytes), or `(anonymous)`,
    /// `(overflow)`, `(overflow:<partition>)`.
    pub label: String,
    /// The partition it belongs to, if any.
    pub partition: Option<String>,
    /// Its requests in flight now.
    pub in_flight: usize,
}

/// The limiter's latency estimates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RttEstimates {
    /// The last window's average RTT (Gradient2; `None` before the first window, and for the other
    /// algorithms).
    pub last: Option<Duration>,
    /// The baseline: Gradient2's long-term average, Vegas's no-load RTT (`None` for AIMD and before
    /// the first window).
    pub baseline: Option<Duration>,
}

impl AdaptiveHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        AdaptiveHandle { shared }
    }

    /// The limiter's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The algorithm: `gradient2`, `aimd` or `vegas`.
    pub fn algorithm(&self) -> &'static str {
        self.shared.algorithm
    }

    /// The current concurrency limit.
    pub fn limit(&self) -> usize {
        self.shared.limit()
    }

    /// Requests holding a slot now. Never above the limit at admission; may be above it for a while
    /// after the limit shrank, while those requests finish.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight()
    }

    /// Slots free now.
    pub fn available(&self) -> usize {
        self.limit().saturating_sub(self.in_flight())
    }

    /// Requests refused over the limit since the limiter was built.
    pub fn rejected(&self) -> u64 {
        self.shared.rejected()
    }

    /// Drop signals seen: calls that timed out or failed (and cancelled calls with
    /// [`cancelled_as_drop`](crate::Builder::cancelled_as_drop)).
    pub fn drops(&self) -> u64 {
        self.shared.drops()
    }

    /// Successful calls whose RTT was sampled.
    pub fn samples(&self) -> u64 {
        self.shared.samples()
    }

    /// Sample windows closed (limit updates computed) so far.
    pub fn windows(&self) -> u64 {
        self.shared.windows()
    }

    /// Whether the limiter is refusing requests: from a refusal until in-flight is back to 3/4 of the
    /// limit. The health component is degraded while this holds.
    pub fn is_limiting(&self) -> bool {
        self.shared.is_limiting()
    }

    /// The latency estimates the algorithm works from.
    pub fn rtt(&self) -> RttEstimates {
        let (last, baseline) = self.shared.rtts();
        let d = |ns: f64| (ns > 0.0).then(|| Duration::from_nanos(ns as u64));
        RttEstimates {
            last: d(last),
            baseline: d(baseline),
        }
    }

    /// Every partition's counts, in configuration order.
    pub fn partitions(&self) -> Vec<PartitionCounts> {
        self.shared
            .partitions
            .iter()
            .map(|p| PartitionCounts {
                name: p.name.to_string(),
                share: p.share,
                guaranteed: p.guaranteed(),
                in_flight: p.in_flight.load(Relaxed),
                rejected: p.rejected.load(Relaxed),
            })
            .collect()
    }

    /// The counts of `key`'s tenant, if tracked. `key` must be of the extractor's key type (a
    /// `HeaderValue` for `HeaderKey`): keys are matched by hash.
    pub fn tenant<Q: Hash + ?Sized>(&self, key: &Q) -> Option<TenantCounts> {
        let tenants = self.shared.tenants.as_ref()?;
        tenants
            .map
            .get(tenants.map.hash(key))
            .map(|t| self.counts(&t))
    }

    /// The shared tenant of requests without a key (keyed limiters).
    pub fn anonymous(&self) -> Option<TenantCounts> {
        let tenants = self.shared.tenants.as_ref()?;
        Some(self.counts(&tenants.anonymous))
    }

    /// How many tenant keys are tracked.
    pub fn tenant_keys(&self) -> usize {
        self.shared.tenants.as_ref().map_or(0, |t| t.map.len())
    }

    /// Requests of new tenant keys sent to an overflow tenant because the key map was full.
    pub fn overflowed(&self) -> u64 {
        self.shared
            .tenants
            .as_ref()
            .map_or(0, |t| t.map.overflowed())
    }

    fn counts(&self, t: &Tenant) -> TenantCounts {
        TenantCounts {
            label: t.label.to_string(),
            partition: t
                .partition
                .map(|i| self.shared.partitions[i].name.to_string()),
            in_flight: t.in_flight.load(Relaxed),
        }
    }
}

impl fmt::Debug for AdaptiveHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveHandle")
            .field("state", &self.shared)
            .finish()
    }
}
