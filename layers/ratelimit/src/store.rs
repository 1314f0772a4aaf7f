//! Where the buckets live: the [`Store`] trait and the default in-memory [`MemoryStore`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::keymap::KeyMap;
use tokio::time::Instant;

use crate::gcra::{nanos, Cell, Decision, Gcra, Op, Penalty};

/// Which bucket a request draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// The tenant's own bucket, by the layer's 64-bit keyed hash of the tenant key (SipHash with a
    /// random per-layer key: tenant ids of any length cost the same, and an attacker cannot aim for a
    /// collision).
    Tenant(u64),
    /// The one bucket shared by requests without a key (with
    /// [`MissingKey::Anonymous`](crate::MissingKey::Anonymous)).
    Anonymous,
}

/// Storage for per-tenant GCRA buckets.
///
/// The layer calls the store synchronously, once per request, with the bucket's GCRA parameters (the
/// tenant's tier, already scaled by adaptive mode), the penalty policy and the time. The store owns
/// the buckets, their bound on memory and its policy for keys over that bound.
///
/// The layer is generic over its store, so the default [`MemoryStore`] is called directly (inlined, no
/// `dyn`, no future). A shared store (Redis) cannot answer synchronously without blocking a runtime
/// thread; the plan for one is a store that answers from a local [`Cell`] per key at once and
/// reconciles with the shared TAT in the background (a Lua script doing the same arithmetic as
/// [`Cell::acquire`]), which keeps the request path synchronous at the price of a bounded overshoot
/// across instances. Such a store also needs a hash that is stable across processes (the layer's is
/// random per process); both are left to the Redis issue. A store that must ask Redis before every
/// decision would need an async variant of this trait and a future in the service.
pub trait Store: Send + Sync + 'static {
    /// Runs one GCRA step for `bucket` at `now`: consumes one request's worth of quota if the request
    /// conforms (`Op::Consume`), or only says what would happen (`Op::Peek`).
    fn acquire(
        &self,
        bucket: Bucket,
        gcra: Gcra,
        penalty: Option<&Penalty>,
        now: Instant,
        op: Op,
    ) -> Decision;

    /// Gives back the request's worth of quota taken by the last `Consume` on `bucket` (when a later
    /// check, the global limit, refused the request).
    fn refund(&self, bucket: Bucket, gcra: Gcra);

    /// How many tenant buckets are tracked.
    fn tracked(&self) -> usize;

    /// How many requests of new tenants found the store full and shared the overflow bucket.
    fn overflowed(&self) -> u64;
}

/// The default store: buckets in a bounded [`KeyMap`], 16 bytes of state per tenant.
///
/// - **At most `max_keys` tenants.** A new tenant arriving when the map is full (after sweeping idle
///   buckets) shares one **overflow bucket** with every other such tenant, at the requesting tenant's
///   rate: under a flood of random tenant ids, the newcomers together get one tenant's quota, and
///   tracked tenants are untouched. Counted in [`overflowed`](Store::overflowed).
/// - **Idle eviction, driven by the map:** when a new tenant finds the map full, buckets unused for the
///   idle timeout are swept (at most every quarter of the timeout) — but only buckets that are **full
///   again** (TAT in the past, so no penalty is pending). Forgetting a full bucket changes no decision:
///   a new bucket is full too. The layer's builder also refuses an idle timeout shorter than the longest
///   refill time, so an active tenant is never forgotten mid-window.
pub struct MemoryStore {
    map: KeyMap<Cell>,
    anonymous: Cell,
    overflow: Cell,
    epoch: Instant,
}

impl MemoryStore {
    /// A store of at most `max_keys` tenant buckets, evicting full buckets idle for `idle_timeout`.
    pub fn new(max_keys: usize, idle_timeout: Duration) -> Self {
        let epoch = Instant::now();
        let map = KeyMap::new(max_keys, idle_timeout).evict_if(move |cell: &Cell| {
            cell.tat() <= nanos(Instant::now().saturating_duration_since(epoch))
        });
        MemoryStore {
            map,
            anonymous: Cell::new(),
            overflow: Cell::new(),
            epoch,
        }
    }

    /// Sweeps idle, full buckets now (the store also does this by itself when it is full); returns how
    /// many were evicted.
    pub fn sweep(&self) -> usize {
        self.map.sweep(Instant::now())
    }

    /// The most tenant buckets tracked at once.
    pub fn max_keys(&self) -> usize {
        self.map.max_keys()
    }

    #[inline]
    fn ticks(&self, now: Instant) -> u64 {
        nanos(now.saturating_duration_since(self.epoch))
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("map", &self.map)
            .finish_non_exhaustive()
    }
}

impl Store for MemoryStore {
    #[inline]
    fn acquire(
        &self,
        bucket: Bucket,
        gcra: Gcra,
        penalty: Option<&Penalty>,
        now: Instant,
        op: Op,
    ) -> Decision {
        let ticks = self.ticks(now);
        match bucket {
            Bucket::Anonymous => self.anonymous.acquire(gcra, penalty, ticks, op),
            Bucket::Tenant(hash) => {
                let cell: Option<Arc<Cell>> = match op {
                    Op::Consume => self.map.get_or_insert_with(hash, now, Cell::new),
                    // A peek must not create state: an unknown tenant has a full bucket.
                    Op::Peek => match self.map.get(hash) {
                        Some(c) => Some(c),
                        None => return Cell::new().acquire(gcra, penalty, ticks, op),
                    },
                };
                match cell {
                    Some(cell) => cell.acquire(gcra, penalty, ticks, op),
                    None => self.overflow.acquire(gcra, penalty, ticks, op),
                }
            }
        }
    }

    fn refund(&self, bucket: Bucket, gcra: Gcra) {
        match bucket {
            Bucket::Anonymous => self.anonymous.refund(gcra),
            Bucket::Tenant(hash) => match self.map.get(hash) {
                Some(cell) => cell.refund(gcra),
                None => self.overflow.refund(gcra),
            },
        }
    }

    fn tracked(&self) -> usize {
        self.map.len()
    }

    fn overflowed(&self) -> u64 {
        self.map.overflowed()
    }
}
