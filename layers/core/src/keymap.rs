//! A bounded, sharded map from request keys to per-key state, for every keyed layer.
//!
//! Per-tenant rate limits, per-tenant bulkheads and per-host breakers all keep state per key, and every
//! such map is an attack surface: an attacker sending random tenant ids must not grow memory without
//! bound. [`KeyMap`] enforces that:
//!
//! - **A cap on keys** ([`KeyMap::new`]'s `max_keys`, at most [`MAX_KEYS`]), exact under
//!   concurrency: an insert reserves its place in the count before it creates an entry, so racing
//!   inserts on different shards never take [`len`](KeyMap::len) past the cap, even for a moment.
//!   When the map is full, a new key gets `None` from
//!   [`get_or_insert_with`](KeyMap::get_or_insert_with) and the layer applies its documented overflow
//!   policy (share an overflow bucket, reject, ...); [`overflowed`](KeyMap::overflowed) counts those.
//! - **Idle eviction, driven by the map itself**: when a new key finds the map full, entries unused for
//!   the idle timeout are swept out — at most once per quarter of the idle timeout (and at most once a
//!   second), so a flood of new keys costs one sweep, not one per request. No background task.
//! - **Nothing in use is evicted**: an entry whose state is still referenced (an in-flight request holds
//!   its `Arc`) stays, and so does one the layer says must stay ([`evict_if`](KeyMap::evict_if), e.g. an
//!   open circuit or a tenant under a penalty).
//!
//! Keys are stored as a 64-bit SipHash with a per-map random key, not as copies: memory per entry is fixed
//! whatever the key's length, and lookups take the key by reference. Two distinct keys share an entry only
//! on a hash collision, with probability about n²/2⁶⁵ for n keys; the random hash key means an attacker
//! cannot aim for one.
//!
//! ```
//! use palisade_core::keymap::KeyMap;
//! use std::time::Duration;
//! use tokio::time::Instant;
//!
//! let map: KeyMap<u32> = KeyMap::new(2, Duration::from_secs(60));
//! let now = Instant::now();
//! let a = map.get_or_insert_with(map.hash("acme"), now, || 1).unwrap();
//! let b = map.get_or_insert_with(map.hash("globex"), now, || 2).unwrap();
//! assert_eq!((*a, *b), (1, 2));
//! // Full: a third tenant gets no entry of its own (the layer's overflow policy decides).
//! assert!(map.get_or_insert_with(map.hash("initech"), now, || 3).is_none());
//! assert_eq!(map.overflowed(), 1);
//! ```

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::BuildError;

const SHARDS: usize = 16;

/// The largest `max_keys` a [`KeyMap`] takes: 2²⁴ = 16,777,216 keys (with ~100 bytes of state each,
/// about 1.6 GiB: beyond that a per-process map is the wrong tool).
pub const MAX_KEYS: usize = 1 << 24;

/// The longest idle timeout a [`KeyMap`] takes: 366 days.
pub const MAX_IDLE: Duration = Duration::from_secs(366 * 86_400);

struct Slot<V> {
    value: Arc<V>,
    /// Nanoseconds since the map's epoch at the last lookup.
    last_used: AtomicU64,
}

/// The keys are already SipHash values: hashing them again would be wasted work on every lookup.
/// The shard is chosen by the top bits, so the in-shard table gets the hash rotated to put other bits
/// where `hashbrown` looks (low bits for the bucket, top bits for the control tag).
#[derive(Default, Clone, Copy)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed here (`write_u64`); fold anything else in rather than panic.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x100_0000_01B3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.rotate_left(32);
    }
}

type Shard<V> = RwLock<HashMap<u64, Slot<V>, BuildHasherDefault<PreHashed>>>;

/// A bounded map from key hashes to shared per-key state. See the [module docs](self).
pub struct KeyMap<V> {
    hasher: RandomState,
    shards: Box<[Shard<V>]>,
    len: AtomicUsize,
    max_keys: usize,
    idle: u64,
    epoch: Instant,
    last_sweep: AtomicU64,
    overflowed: AtomicU64,
    evictable: Box<dyn Fn(&V) -> bool + Send + Sync>,
}

impl<V> KeyMap<V> {
    /// A map of at most `max_keys` entries, evicting entries idle for `idle_timeout`.
    ///
    /// `max_keys` is clamped to `1..=`[`MAX_KEYS`] and `idle_timeout` to at most [`MAX_IDLE`]: a
    /// builder should refuse values outside those bounds with [`KeyMap::check`] rather than let them be
    /// clamped.
    pub fn new(max_keys: usize, idle_timeout: Duration) -> Self {
        KeyMap {
            hasher: RandomState::new(),
            shards: (0..SHARDS)
                .map(|_| RwLock::new(HashMap::default()))
                .collect(),
            len: AtomicUsize::new(0),
            max_keys: max_keys.clamp(1, MAX_KEYS),
            idle: nanos(idle_timeout.min(MAX_IDLE)),
            epoch: Instant::now(),
            last_sweep: AtomicU64::new(0),
            overflowed: AtomicU64::new(0),
            evictable: Box::new(|_| true),
        }
    }

    /// Checks a layer's `max_keys` and `idle_timeout` settings against the bounds [`new`](Self::new)
    /// enforces: `max_keys` in `1..=`[`MAX_KEYS`], `idle_timeout` at most [`MAX_IDLE`]. The error names
    /// `layer` and the setting.
    pub fn check(
        layer: &'static str,
        max_keys: usize,
        idle_timeout: Duration,
    ) -> Result<(), BuildError> {
        if max_keys == 0 {
            return Err(BuildError::new(layer, "max_keys", "must be at least 1"));
        }
        if max_keys > MAX_KEYS {
            return Err(BuildError::new(
                layer,
                "max_keys",
                format!("{max_keys} is more than the most keys a map tracks, {MAX_KEYS}"),
            ));
        }
        if idle_timeout > MAX_IDLE {
            return Err(BuildError::new(
                layer,
                "idle_timeout",
                format!("{idle_timeout:?} is longer than the longest idle timeout, 366 days"),
            ));
        }
        Ok(())
    }

    /// Only entries for which `f` is true may be evicted (e.g. not an open circuit, not a penalised
    /// tenant). Default: every idle, unreferenced entry.
    pub fn evict_if(mut self, f: impl Fn(&V) -> bool + Send + Sync + 'static) -> Self {
        self.evictable = Box::new(f);
        self
    }

    /// The hash that identifies `key` in this map.
    pub fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard(&self, hash: u64) -> &Shard<V> {
        &self.shards[(hash >> 59) as usize % SHARDS]
    }

    fn ticks(&self, now: Instant) -> u64 {
        nanos(now.saturating_duration_since(self.epoch))
    }

    /// The entry for `hash`, created with `make` if absent. `None` if the key is new and the map is full
    /// even after sweeping idle entries (counted in [`overflowed`](Self::overflowed)).
    ///
    /// Looking up an existing key takes a shared (read) lock on one of 16 shards; a new key takes that
    /// shard's write lock and one compare-and-swap on the count. A new key refused by a full map takes
    /// only read locks (besides the rate-limited sweep), so a flood of new keys does not hold up
    /// lookups of tracked ones. If `make` panics, the place it was given is released and the map is
    /// unchanged.
    pub fn get_or_insert_with(
        &self,
        hash: u64,
        now: Instant,
        make: impl FnOnce() -> V,
    ) -> Option<Arc<V>> {
        let ticks = self.ticks(now);
        if let Some(slot) = read(self.shard(hash)).get(&hash) {
            touch(slot, ticks);
            return Some(slot.value.clone());
        }
        self.insert(hash, ticks, make)
    }

    #[cold]
    fn insert(&self, hash: u64, ticks: u64, make: impl FnOnce() -> V) -> Option<Arc<V>> {
        let make = match self.try_insert(hash, ticks, make) {
            Ok(value) => return Some(value),
            Err(make) => make,
        };
        // Full: sweep (holding no shard lock, as the sweep takes each in turn), then try once more.
        self.sweep_at(ticks, false);
        match self.try_insert(hash, ticks, make) {
            Ok(value) => Some(value),
            Err(_) => {
                self.overflowed.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// The entry for `hash`, existing or created if a place in the count can be reserved; gives `make`
    /// back if the map is full.
    ///
    /// A full map refuses under the shard's read lock only: during a flood of new keys (the attack
    /// this map exists for) refusals must not queue behind, or block, the read-locked lookups of
    /// tracked keys. The early check is only a shortcut; [`reserve`](Self::reserve) still decides, so
    /// the cap stays exact.
    fn try_insert<F: FnOnce() -> V>(&self, hash: u64, ticks: u64, make: F) -> Result<Arc<V>, F> {
        let shard = self.shard(hash);
        if self.len.load(Ordering::Acquire) >= self.max_keys {
            return match read(shard).get(&hash) {
                // Inserted by a racing caller since the first lookup.
                Some(slot) => {
                    touch(slot, ticks);
                    Ok(slot.value.clone())
                }
                None => Err(make),
            };
        }
        let mut shard = write(shard);
        if let Some(slot) = shard.get(&hash) {
            // Inserted by a racing caller since the read lookup.
            touch(slot, ticks);
            return Ok(slot.value.clone());
        }
        // Reserve the place before creating the entry: the count is never below the number of entries,
        // and never above the cap.
        if !self.reserve() {
            return Err(make);
        }
        // `make` may panic (it can run a user's `Debug` impl): the reservation is given back on unwind,
        // or every such panic would lower the cap for good.
        let reservation = Reservation(&self.len);
        let value = Arc::new(make());
        shard.insert(
            hash,
            Slot {
                value: value.clone(),
                last_used: AtomicU64::new(ticks),
            },
        );
        std::mem::forget(reservation);
        Ok(value)
    }

    fn reserve(&self) -> bool {
        self.len
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_keys).then_some(n + 1)
            })
            .is_ok()
    }

    /// Whether a new key would get an entry now: there is room, or the sweep a full map runs before it
    /// refuses a new key makes room. Runs that sweep (under the same rate limit as an insert's), which
    /// evicts only idle, unreferenced, evictable entries, so that a later insert finds the room this
    /// reported; creates nothing. For a layer's non-consuming check of a key it has never seen.
    pub fn has_room(&self, now: Instant) -> bool {
        if self.len.load(Ordering::Acquire) < self.max_keys {
            return true;
        }
        self.sweep_at(self.ticks(now), false);
        self.len.load(Ordering::Acquire) < self.max_keys
    }

    /// The entry for `hash`, if present (does not count as a use).
    pub fn get(&self, hash: u64) -> Option<Arc<V>> {
        read(self.shard(hash)).get(&hash).map(|s| s.value.clone())
    }

    /// Removes the entry for `hash`.
    pub fn remove(&self, hash: u64) -> Option<Arc<V>> {
        let removed = write(self.shard(hash)).remove(&hash).map(|s| s.value);
        if removed.is_some() {
            self.len.fetch_sub(1, Ordering::AcqRel);
        }
        removed
    }

    /// Evicts every idle, unreferenced, evictable entry now; returns how many. (The map also does this
    /// by itself when it is full.)
    pub fn sweep(&self, now: Instant) -> usize {
        self.sweep_at(self.ticks(now), true)
    }

    fn sweep_at(&self, ticks: u64, forced: bool) -> usize {
        if !forced {
            let every = (self.idle / 4).max(1_000_000_000);
            let last = self.last_sweep.load(Ordering::Relaxed);
            if last != 0 && ticks.saturating_sub(last) < every {
                return 0;
            }
            if self
                .last_sweep
                .compare_exchange(last, ticks.max(1), Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                return 0;
            }
        }
        let mut evicted = 0;
        for shard in self.shards.iter() {
            let mut in_shard = 0;
            write(shard).retain(|_, slot| {
                let idle =
                    ticks.saturating_sub(slot.last_used.load(Ordering::Relaxed)) >= self.idle;
                let keep =
                    !idle || Arc::strong_count(&slot.value) > 1 || !(self.evictable)(&slot.value);
                in_shard += usize::from(!keep);
                keep
            });
            // Give the places back shard by shard, after the entries are gone.
            self.len.fetch_sub(in_shard, Ordering::AcqRel);
            evicted += in_shard;
        }
        if evicted > 0 {
            tracing::debug!(evicted, "evicted idle keyed state");
        }
        evicted
    }

    /// How many keys are tracked (counting an insert from the moment it reserved its place): never more
    /// than [`max_keys`](Self::max_keys).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most keys tracked at once.
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// How many new keys found the map full.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Calls `f` with every entry (shard by shard, under a read lock: keep `f` short).
    pub fn for_each(&self, mut f: impl FnMut(u64, &Arc<V>)) {
        for shard in self.shards.iter() {
            for (hash, slot) in read(shard).iter() {
                f(*hash, &slot.value);
            }
        }
    }
}

impl<V> fmt::Debug for KeyMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyMap")
            .field("len", &self.len())
            .field("max_keys", &self.max_keys)
            .field("idle", &Duration::from_nanos(self.idle))
            .field("overflowed", &self.overflowed())
            .finish()
    }
}

/// A place reserved in the count for an entry not yet inserted: released if dropped (when `make`
/// panics), forgotten once the entry is in.
struct Reservation<'a>(&'a AtomicUsize);

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn touch<V>(slot: &Slot<V>, ticks: u64) {
    // Skip the store when nothing changed, so hot keys read from many cores stay shared in cache.
    if slot.last_used.load(Ordering::Relaxed) != ticks {
        slot.last_used.store(ticks, Ordering::Relaxed);
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A poisoned lock only means another thread panicked while holding it; the map of `Arc`s is still
/// consistent (no entry is half-written), so keep serving.
fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[tokio::test(start_paused = true)]
    async fn bounded_under_a_flood_of_new_keys() {
        let map: KeyMap<u64> = KeyMap::new(100, Duration::from_secs(60));
        let now = Instant::now();
        let mut inserted = 0;
        for i in 0..100_000u64 {
            if map.get_or_insert_with(map.hash(&i), now, || i).is_some() {
                inserted += 1;
            }
        }
        assert_eq!(inserted, 100);
        assert_eq!(map.len(), 100);
        assert_eq!(map.overflowed(), 99_900);
        // Existing keys are still found while full.
        assert_eq!(
            *map.get_or_insert_with(map.hash(&7u64), now, || 0).unwrap(),
            7
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_entries_make_room_but_busy_and_pinned_ones_stay() {
        let map: KeyMap<AtomicBool> = KeyMap::new(3, Duration::from_secs(60))
            .evict_if(|pinned: &AtomicBool| !pinned.load(Ordering::Relaxed));
        let t0 = Instant::now();
        let held = map
            .get_or_insert_with(map.hash("held"), t0, || AtomicBool::new(false))
            .unwrap();
        let pinned = map
            .get_or_insert_with(map.hash("pinned"), t0, || AtomicBool::new(false))
            .unwrap();
        pinned.store(true, Ordering::Relaxed);
        drop(pinned);
        map.get_or_insert_with(map.hash("idle"), t0, || AtomicBool::new(false));
        assert!(map
            .get_or_insert_with(map.hash("new"), t0, || AtomicBool::new(false))
            .is_none());

        // A key used recently is not idle.
        tokio::time::advance(Duration::from_secs(30)).await;
        map.get_or_insert_with(map.hash("idle"), Instant::now(), || AtomicBool::new(false));
        tokio::time::advance(Duration::from_secs(40)).await;
        assert!(map
            .get_or_insert_with(map.hash("new"), Instant::now(), || AtomicBool::new(false))
            .is_none());

        // Later: "idle" has been idle long enough and goes; "held" is referenced; "pinned" is pinned.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(map
            .get_or_insert_with(map.hash("new"), Instant::now(), || AtomicBool::new(false))
            .is_some());
        assert!(map.get(map.hash("idle")).is_none());
        assert!(map.get(map.hash("held")).is_some());
        assert!(map.get(map.hash("pinned")).is_some());
        drop(held);
        assert_eq!(map.len(), 3);
    }

    /// Racing inserts on different shards never take the map past its cap, not even for a moment:
    /// a watcher thread reads `len()` throughout, and the entries are counted at the end.
    #[test]
    fn the_cap_is_exact_under_racing_inserts() {
        const MAX: usize = 64;
        const THREADS: u64 = 8;
        let now = Instant::now();
        for round in 0..200u64 {
            let map: Arc<KeyMap<u64>> = Arc::new(KeyMap::new(MAX, Duration::from_secs(60)));
            let start = Arc::new(std::sync::Barrier::new(THREADS as usize + 1));
            let done = Arc::new(AtomicBool::new(false));
            let watcher = {
                let (map, done) = (map.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut most = 0;
                    while !done.load(Ordering::Relaxed) {
                        most = most.max(map.len());
                    }
                    most.max(map.len())
                })
            };
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (map, start) = (map.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        let mut held = Vec::new();
                        for i in 0..(MAX as u64) {
                            let key = (round, t, i);
                            if let Some(v) = map.get_or_insert_with(map.hash(&key), now, || i) {
                                held.push(v);
                            }
                        }
                        held.len()
                    })
                })
                .collect();
            start.wait();
            let granted: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
            done.store(true, Ordering::Relaxed);
            let most = watcher.join().unwrap();
            let mut entries = 0;
            map.for_each(|_, _| entries += 1);
            assert!(
                most <= MAX,
                "round {round}: len() reached {most} (cap {MAX})"
            );
            assert!(
                entries <= MAX,
                "round {round}: {entries} entries (cap {MAX})"
            );
            assert!(
                granted <= MAX,
                "round {round}: {granted} entries handed out"
            );
            assert_eq!(
                map.len(),
                entries,
                "round {round}: len() is the entry count"
            );
        }
    }

    /// Finding 1: on a full map, refusing a new key takes no write lock. Every shard is held under a
    /// read lock here (as by lookups of tracked tenants); a newcomer on another thread must still get
    /// its refusal at once, and a tracked key must still be found. (The sweep a full map runs before
    /// refusing takes write locks, but at most once per quarter of the idle timeout: the first
    /// overflow below uses it up.) Before the fix the newcomer's insert blocked on a shard's write lock
    /// until the read guards were dropped.
    #[test]
    fn a_full_map_refuses_newcomers_without_a_write_lock() {
        let map: Arc<KeyMap<u64>> = Arc::new(KeyMap::new(2, Duration::from_secs(60)));
        let now = Instant::now();
        map.get_or_insert_with(1, now, || 1).unwrap();
        map.get_or_insert_with(2, now, || 2).unwrap();
        assert!(
            map.get_or_insert_with(3, now, || 3).is_none(),
            "runs the sweep"
        );
        let guards: Vec<_> = map.shards.iter().map(read).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let worker = {
            let map = map.clone();
            std::thread::spawn(move || {
                // Newcomers in every shard (the shard is chosen by the top bits).
                for shard in 0..SHARDS as u64 {
                    let hash = (shard << 59) | 0x1234;
                    tx.send(map.get_or_insert_with(hash, now, || 0).is_none())
                        .unwrap();
                }
                tx.send(map.get_or_insert_with(1, now, || 0).map(|v| *v) == Some(1))
                    .unwrap();
            })
        };
        let answers: Vec<bool> = (0..=SHARDS)
            .map_while(|_| rx.recv_timeout(Duration::from_secs(5)).ok())
            .collect();
        drop(guards);
        worker.join().unwrap();
        assert_eq!(
            answers.len(),
            SHARDS + 1,
            "a refused newcomer waited for a shard's write lock"
        );
        assert!(answers.iter().all(|&ok| ok), "{answers:?}");
        assert_eq!(map.len(), 2);
        assert_eq!(map.overflowed(), 1 + SHARDS as u64);
    }

    /// Finding 1: the full-map path still finds a key a racing caller inserted after the first
    /// lookup (here: `try_insert` called directly for a tracked key, skipping that lookup), and does
    /// not call `make`.
    #[test]
    fn a_full_map_still_returns_a_key_inserted_by_a_racer() {
        let map: KeyMap<u64> = KeyMap::new(1, Duration::from_secs(60));
        let now = Instant::now();
        map.get_or_insert_with(7, now, || 7).unwrap();
        let got = map.try_insert(7, map.ticks(now), || -> u64 { panic!("made again") });
        assert_eq!(got.ok().map(|v| *v), Some(7));
        assert_eq!(map.len(), 1);
    }

    /// Finding 2: a `make` that panics gives its reserved place back, so the cap is not lowered.
    #[test]
    fn a_panicking_make_gives_its_place_back() {
        let map: KeyMap<u64> = KeyMap::new(2, Duration::from_secs(60));
        let now = Instant::now();
        map.get_or_insert_with(1, now, || 1).unwrap();
        for _ in 0..3 {
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                map.get_or_insert_with(2, now, || panic!("a label's Debug impl panicked"))
            }));
            assert!(panicked.is_err());
            assert_eq!(map.len(), 1, "the panicking insert kept its place");
            assert!(map.get(2).is_none());
        }
        // The full capacity is still there: one more key fits, and then the map is full.
        assert_eq!(map.get_or_insert_with(2, now, || 2).map(|v| *v), Some(2));
        assert!(map.get_or_insert_with(3, now, || 3).is_none());
        assert_eq!(map.len(), 2);
        let mut entries = 0;
        map.for_each(|_, _| entries += 1);
        assert_eq!(entries, 2);
    }

    #[test]
    fn sizes_are_bounded() {
        let idle = Duration::from_secs(60);
        assert!(KeyMap::<()>::check("test", 1, idle).is_ok());
        assert!(KeyMap::<()>::check("test", MAX_KEYS, MAX_IDLE).is_ok());
        let err = KeyMap::<()>::check("test", 0, idle).unwrap_err();
        assert_eq!(err.setting(), "max_keys");
        let err = KeyMap::<()>::check("test", MAX_KEYS + 1, idle).unwrap_err();
        assert_eq!((err.layer(), err.setting()), ("test", "max_keys"));
        let err = KeyMap::<()>::check("test", 1, MAX_IDLE + Duration::from_nanos(1)).unwrap_err();
        assert_eq!(err.setting(), "idle_timeout");
        // `new` clamps what a builder should have refused.
        let map: KeyMap<()> = KeyMap::new(usize::MAX, Duration::MAX);
        assert_eq!(map.max_keys(), MAX_KEYS);
        assert_eq!(map.idle, nanos(MAX_IDLE));
        assert_eq!(KeyMap::<()>::new(0, idle).max_keys(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn has_room_says_what_an_insert_would_find() {
        let map: KeyMap<()> = KeyMap::new(1, Duration::from_secs(8));
        assert!(map.has_room(Instant::now()));
        let held = map.get_or_insert_with(map.hash(&1), Instant::now(), || ());
        assert!(!map.has_room(Instant::now()));
        assert_eq!(map.len(), 1);
        // Idle but still referenced: no room.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!map.has_room(Instant::now()));
        drop(held);
        tokio::time::advance(Duration::from_secs(10)).await;
        // Idle and unreferenced: the sweep a new key would trigger makes room, and creates nothing.
        assert!(map.has_room(Instant::now()));
        assert!(map.is_empty());
        assert!(map
            .get_or_insert_with(map.hash(&2), Instant::now(), || ())
            .is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn sweeps_are_rate_limited() {
        let map: KeyMap<()> = KeyMap::new(1, Duration::from_secs(8));
        map.get_or_insert_with(map.hash(&1), Instant::now(), || ());
        tokio::time::advance(Duration::from_secs(10)).await;
        // The first full insert sweeps and makes room.
        assert!(map
            .get_or_insert_with(map.hash(&2), Instant::now(), || ())
            .is_some());
        tokio::time::advance(Duration::from_secs(10)).await;
        // 10 s later the next sweep is allowed (every max(8 s / 4, 1 s) = 2 s).
        assert!(map
            .get_or_insert_with(map.hash(&3), Instant::now(), || ())
            .is_some());
        // Immediately after, no sweep runs: the new key overflows although key 2 is idle-free anyway.
        assert!(map
            .get_or_insert_with(map.hash(&4), Instant::now(), || ())
            .is_none());
        assert_eq!(map.sweep(Instant::now()), 0, "key 3 was just used");
        assert_eq!(map.remove(map.hash(&3)).map(|_| ()), Some(()));
        assert!(map.is_empty());
    }
}
