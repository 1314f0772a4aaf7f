//! Where the buckets live: the [`Store`] trait and the default in-memory [`MemoryStore`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use palisade_core::keymap::KeyMap;
use tokio::time::Instant;

use crate::gcra::{millis, nanos, Cell, Decision, Gcra, Op, Penalty};

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
    /// What [`acquire`](Self::acquire) hands back with its decision: a hold on the bucket it stepped
    /// (for [`MemoryStore`], the bucket itself), so that [`refund`](Self::refund) undoes that step on
    /// that bucket without finding it again. The layer keeps it only until the request is admitted or
    /// refused.
    type Grant: Send;

    /// Runs one GCRA step for `bucket` at `now`: consumes one request's worth of quota if the request
    /// conforms (`Op::Consume`), or only says what would happen (`Op::Peek`).
    fn acquire(
        &self,
        bucket: Bucket,
        gcra: Gcra,
        penalty: Option<&Penalty>,
        now: Instant,
        op: Op,
    ) -> (Decision, Self::Grant);

    /// Undoes the admission `admitted`, made by `acquire` with `Op::Consume` and the parameters
    /// `gcra`, on the bucket `grant` holds (when a later check, the global limit, refused the request):
    /// gives back its request's worth of quota and resumes the violation streak it ended (see
    /// [`Cell::refund`]).
    fn refund(&self, grant: Self::Grant, gcra: Gcra, admitted: &Decision);

    /// How many tenant buckets are tracked.
    fn tracked(&self) -> usize;

    /// How many requests of new tenants found the store full and shared the overflow bucket.
    fn overflowed(&self) -> u64;
}

/// The lowest decayed offence level that keeps an idle, full bucket from eviction: a repeat offender's.
/// Level 1 (a first streak) adds no penalty by itself (see [`Penalty`]).
const KEPT_LEVEL: u64 = 2;

/// The default store: buckets in a bounded [`KeyMap`], 16 bytes of state per tenant.
///
/// - **At most `max_keys` tenants** (at most [`MAX_KEYS`](palisade_core::keymap::MAX_KEYS); larger
///   values are clamped, and the layer's builder refuses them). A new tenant arriving when the map is
///   full (after sweeping idle buckets) shares one **overflow bucket** with every other such tenant, at
///   the requesting tenant's rate: under a flood of random tenant ids, the newcomers together get one
///   tenant's quota, and tracked tenants are untouched. Counted in [`overflowed`](Store::overflowed).
///   A [`Peek`](Op::Peek) for a tenant without a bucket looks where its request would go: a fresh
///   bucket if there is room, else the overflow bucket.
/// - **Idle eviction, driven by the map:** when a new tenant finds the map full, buckets unused for the
///   idle timeout are swept (at most every quarter of the timeout) — but only buckets that are **full
///   again** (TAT in the past, so no penalty is pending) and, under a [`Penalty`] policy, whose
///   **offence level has decayed below 2**. A repeat offender (level 2 or more) keeps its bucket until
///   its level has decayed to 1, `(level - 1) × decay` after its last violation, so flushing the map
///   does not reset it. A first offender (level 1) is evicted like any full idle bucket: otherwise
///   burst + 1 requests from each of `max_keys` random ids would pin the whole map for `decay` (up to a
///   day) and send every new tenant to the overflow bucket. Forgetting a full bucket at level 0
///   changes no decision (a new bucket is full and has no offences too); forgetting one at level 1
///   loses exactly one escalation step: the tenant's next streak is a first offence again (level 1,
///   no penalty) instead of a second (level 2, `base`), and each later streak is one level lower than
///   it would have been, until the levels decay. A tenant that cannot change its id could so avoid
///   penalties by spacing single streaks more than the idle timeout apart while the map is full; it
///   is still held to its quota. The layer's builder also refuses an idle timeout shorter than the
///   longest refill time, so an active tenant is never forgotten mid-window. The store learns the
///   penalty's decay from the first violation streak it sees (the layer passes its policy with every
///   step); without a penalty policy the level has no effect on decisions and does not hold a
///   bucket.
pub struct MemoryStore {
    map: KeyMap<Cell>,
    anonymous: Cell,
    overflow: Cell,
    epoch: Instant,
    /// The penalty decay in milliseconds (0: no penalty policy seen), shared with the map's eviction
    /// rule.
    decay_ms: Arc<AtomicU64>,
}

impl MemoryStore {
    /// A store of at most `max_keys` tenant buckets, evicting full buckets idle for `idle_timeout`
    /// unless they belong to a repeat offender (offence level 2 or more after decay).
    pub fn new(max_keys: usize, idle_timeout: Duration) -> Self {
        let epoch = Instant::now();
        let decay_ms = Arc::new(AtomicU64::new(0));
        let decay = decay_ms.clone();
        let map = KeyMap::new(max_keys, idle_timeout).evict_if(move |cell: &Cell| {
            let now = nanos(Instant::now().saturating_duration_since(epoch));
            if cell.tat() > now {
                return false; // refilling, or serving a penalty
            }
            // Only a level that would make a penalty at the next streak holds the bucket (see
            // `Penalty`: level 1 costs nothing, the next streak builds on the decayed level). Keeping
            // level 1 too would let a flood of one-violation ids pin the map for `decay`.
            let decay = decay.load(Ordering::Relaxed);
            decay == 0 || cell.decayed_level(decay, now) < KEPT_LEVEL
        });
        MemoryStore {
            map,
            anonymous: Cell::new(),
            overflow: Cell::new(),
            epoch,
            decay_ms,
        }
    }

    /// Remembers the decay of the penalty policy in use (on a new violation streak only: cold).
    #[cold]
    fn learn(&self, penalty: &Penalty) {
        let ms = millis(penalty.decay).max(1);
        if self.decay_ms.load(Ordering::Relaxed) != ms {
            self.decay_ms.store(ms, Ordering::Relaxed);
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

/// The bucket a [`MemoryStore`] decision was made on (its [`Store::Grant`]).
pub struct MemoryGrant(Held);

enum Held {
    Tenant(Arc<Cell>),
    Anonymous,
    Overflow,
    /// A peek at an unknown tenant: no bucket exists.
    Nothing,
}

impl fmt::Debug for MemoryGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Held::Tenant(_) => "MemoryGrant(Tenant)",
            Held::Anonymous => "MemoryGrant(Anonymous)",
            Held::Overflow => "MemoryGrant(Overflow)",
            Held::Nothing => "MemoryGrant(Nothing)",
        })
    }
}

impl Store for MemoryStore {
    type Grant = MemoryGrant;

    #[inline]
    fn acquire(
        &self,
        bucket: Bucket,
        gcra: Gcra,
        penalty: Option<&Penalty>,
        now: Instant,
        op: Op,
    ) -> (Decision, MemoryGrant) {
        let ticks = self.ticks(now);
        let (d, held) = match bucket {
            Bucket::Anonymous => (
                self.anonymous.acquire(gcra, penalty, ticks, op),
                Held::Anonymous,
            ),
            Bucket::Tenant(hash) => {
                let cell: Option<Arc<Cell>> = match op {
                    Op::Consume => self.map.get_or_insert_with(hash, now, Cell::new),
                    // A peek must not create state. An unknown tenant's request would get a fresh,
                    // full bucket if there is room (made by the sweep a full map runs), else the
                    // overflow bucket: look at that one.
                    Op::Peek => match self.map.get(hash) {
                        Some(c) => Some(c),
                        None if self.map.has_room(now) => {
                            let d = Cell::new().acquire(gcra, penalty, ticks, op);
                            return (d, MemoryGrant(Held::Nothing));
                        }
                        None => None,
                    },
                };
                match cell {
                    Some(cell) => (cell.acquire(gcra, penalty, ticks, op), Held::Tenant(cell)),
                    None => (
                        self.overflow.acquire(gcra, penalty, ticks, op),
                        Held::Overflow,
                    ),
                }
            }
        };
        if let (Some(_), Some(p)) = (d.streak(), penalty) {
            self.learn(p);
        }
        (d, MemoryGrant(held))
    }

    fn refund(&self, grant: MemoryGrant, gcra: Gcra, admitted: &Decision) {
        match &grant.0 {
            Held::Tenant(cell) => cell.refund(gcra, admitted),
            Held::Anonymous => self.anonymous.refund(gcra, admitted),
            Held::Overflow => self.overflow.refund(gcra, admitted),
            Held::Nothing => {}
        }
    }

    fn tracked(&self) -> usize {
        self.map.len()
    }

    fn overflowed(&self) -> u64 {
        self.map.overflowed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gcra::Rate;

    /// A refund goes to the bucket the admission was made on, even when the key now maps elsewhere: here
    /// a tenant admitted through the overflow bucket that got a bucket of its own before the refund.
    #[tokio::test(start_paused = true)]
    async fn refund_goes_to_the_bucket_in_hand() {
        let store = MemoryStore::new(1, Duration::from_secs(1));
        let g = Rate::per_second(1).burst(1).gcra();
        let (first, first_grant) =
            store.acquire(Bucket::Tenant(1), g, None, Instant::now(), Op::Consume);
        assert!(first.is_admitted());
        drop(first_grant); // (a grant holds its bucket: the map does not evict it meanwhile)
                           // The map is full of tenant 1 (busy): tenant 2 is admitted through the overflow bucket.
        let (d, grant) = store.acquire(Bucket::Tenant(2), g, None, Instant::now(), Op::Consume);
        assert!(d.is_admitted());
        assert_eq!(store.overflowed(), 1);
        let overflow_tat = store.overflow.tat();
        assert!(overflow_tat > 0);
        // Later tenant 1 is idle and full, gets evicted, and tenant 2 gets its own bucket.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(store.sweep(), 1);
        let (d2, _) = store.acquire(Bucket::Tenant(2), g, None, Instant::now(), Op::Consume);
        assert!(d2.is_admitted());
        let own = store.map.get(2).unwrap();
        let own_tat = own.tat();
        // The first admission is refunded where it was charged: the overflow bucket.
        store.refund(grant, g, &d);
        assert_eq!(store.overflow.tat(), overflow_tat - g.t);
        assert_eq!(
            own.tat(),
            own_tat,
            "tenant 2's own bucket was not charged, nor refunded"
        );
    }
}
