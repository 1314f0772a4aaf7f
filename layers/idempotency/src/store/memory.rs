//! The in-memory store: one mutex around a map and three expiry indexes (in flight, completed,
//! failed), bounded in records and bytes.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use palisade_core::config::BuildError;
use tokio::time::Instant;

use super::{
    Claim, Completion, IdempotencyStore, LeaseToken, NotStored, Record, Release, StoreError,
    StoreFuture, StoredResponse,
};
use crate::hash::{Fingerprint, Scope};

/// Memory counted for every record besides its response (map entry, index entry, bookkeeping).
const RECORD_OVERHEAD: usize = 128;

/// The default [`max_records`](MemoryStoreBuilder::max_records).
pub const DEFAULT_MAX_RECORDS: usize = 100_000;
/// The default [`max_bytes`](MemoryStoreBuilder::max_bytes): 64 MiB.
pub const DEFAULT_MAX_BYTES: usize = 64 << 20;
/// The largest [`max_records`](MemoryStoreBuilder::max_records): 2²⁴ = 16,777,216 records.
pub const MAX_RECORDS: usize = 1 << 24;
/// The largest [`max_bytes`](MemoryStoreBuilder::max_bytes): 64 GiB (the whole address space on
/// 32-bit targets).
pub const MAX_BYTES: usize = if (1u64 << 36) > usize::MAX as u64 {
    usize::MAX
} else {
    (1u64 << 36) as usize
};
/// The smallest [`max_bytes`](MemoryStoreBuilder::max_bytes): 1 KiB.
const MIN_BYTES: usize = 1024;

/// An [`IdempotencyStore`] in this process's memory: the default store. A cheap `Clone`; clones share
/// the records.
///
/// **Bounded.** At most [`max_records`](MemoryStoreBuilder::max_records) records and
/// [`max_bytes`](MemoryStoreBuilder::max_bytes) bytes (stored responses plus a fixed overhead per
/// record, see [`StoredResponse::size`]). When a new record does not fit, expired records go first,
/// then completed records in order of expiry, oldest first — so a record can be forgotten before its
/// TTL under memory pressure (counted in [`evicted`](MemoryStore::evicted); a retry of an evicted key
/// executes again). Nothing is evicted for a record that would not fit even with every evictable
/// record gone: it is refused at once.
///
/// - **In flight** records are never evicted before their lease expires: when the store is full of
///   them, a claim fails with [`StoreError::Full`] (the layer answers `503`, and nothing was stored, so
///   a retry is safe).
/// - **Completed** records are the ones evicted first.
/// - **Failed** records (the response was not stored, [`NotStored`]) stand for handlers that ran and
///   must not run again, so they are evicted last: storing a response never evicts one (the response
///   is recorded as [`NotStored::TooLarge`] instead), and a new key's claim evicts one only when no
///   completed record is left — the oldest first, counted in [`evicted`](MemoryStore::evicted) and
///   logged, and a retry of that key then executes again. They are small (a fixed overhead each), so
///   with the default limits this takes over 100 000 of them within their TTL; keeping them pinned
///   instead would let a flood of them refuse every new key with `503` for the whole TTL.
/// - A response that does not fit even after evicting every completed record is recorded as
///   [`NotStored::TooLarge`], and no record is evicted for it.
///
/// **Owned bytes.** A stored body, header value or trailer is copied into a buffer of its own size
/// when the response is completed, so the store holds exactly the bytes it counts: a 32-byte slice of
/// a 1 MiB buffer keeps 32 bytes alive, not the megabyte.
///
/// No background task: expired records are removed when a lookup meets them or when room is needed.
///
/// ```
/// use palisade_idempotency::MemoryStore;
///
/// let store = MemoryStore::builder().max_records(10_000).max_bytes(16 << 20).build();
/// assert_eq!(store.len(), 0);
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    table: Mutex<Table>,
    max_records: usize,
    max_bytes: usize,
    evicted: AtomicU64,
    /// A limit the builder was given out of range, reported by `validate`.
    invalid: Option<BuildError>,
}

type ScopeMap = HashMap<Scope, Slot, BuildHasherDefault<ScopeHasher>>;

#[derive(Default)]
struct Table {
    map: ScopeMap,
    /// In-flight records by lease expiry.
    leases: BTreeMap<(Instant, u64), Scope>,
    /// Completed records by expiry: evicted first.
    done: BTreeMap<(Instant, u64), Scope>,
    /// Failed records by expiry: evicted last.
    failed: BTreeMap<(Instant, u64), Scope>,
    bytes: usize,
    /// The part of `bytes` held by completed records.
    done_bytes: usize,
    next_id: u64,
}

struct Slot {
    fingerprint: Fingerprint,
    expires: Instant,
    /// Unique per claim: the lease token, and the tie-breaker in the expiry indexes.
    id: u64,
    size: usize,
    state: SlotState,
}

enum SlotState {
    InFlight,
    Completed(Arc<StoredResponse>),
    Failed(NotStored),
}

impl Slot {
    fn record(&self, now: Instant) -> Record {
        match &self.state {
            SlotState::InFlight => Record::InFlight {
                fingerprint: self.fingerprint,
                expires_in: self.expires.saturating_duration_since(now),
            },
            SlotState::Completed(response) => Record::Completed {
                fingerprint: self.fingerprint,
                response: response.clone(),
            },
            SlotState::Failed(reason) => Record::Failed {
                fingerprint: self.fingerprint,
                reason: *reason,
            },
        }
    }

    fn in_flight_under(&self, token: LeaseToken) -> bool {
        matches!(self.state, SlotState::InFlight) && self.id == token.get()
    }
}

/// Which expiry index a slot is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    InFlight,
    Completed,
    Failed,
}

impl SlotState {
    fn tier(&self) -> Tier {
        match self {
            SlotState::InFlight => Tier::InFlight,
            SlotState::Completed(_) => Tier::Completed,
            SlotState::Failed(_) => Tier::Failed,
        }
    }
}

/// Which records [`Table::make_room`] may evict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Evict {
    /// Completed records only (room for a response).
    Completed,
    /// Completed records, then failed ones (room for a new key's claim).
    CompletedThenFailed,
}

impl Table {
    fn index(&mut self, tier: Tier) -> &mut BTreeMap<(Instant, u64), Scope> {
        match tier {
            Tier::InFlight => &mut self.leases,
            Tier::Completed => &mut self.done,
            Tier::Failed => &mut self.failed,
        }
    }

    /// Files a slot that is in `map` under its tier's index and counts its bytes.
    fn index_slot(&mut self, scope: Scope, tier: Tier, expires: Instant, id: u64, size: usize) {
        self.index(tier).insert((expires, id), scope);
        self.bytes += size;
        if tier == Tier::Completed {
            self.done_bytes += size;
        }
    }

    fn remove(&mut self, scope: &Scope) -> Option<Slot> {
        let slot = self.map.remove(scope)?;
        let tier = slot.state.tier();
        self.index(tier).remove(&(slot.expires, slot.id));
        self.bytes -= slot.size;
        if tier == Tier::Completed {
            self.done_bytes -= slot.size;
        }
        Some(slot)
    }

    fn sweep(&mut self, now: Instant) {
        for tier in [Tier::InFlight, Tier::Completed, Tier::Failed] {
            while let Some((&(expires, _), &scope)) = self.index(tier).first_key_value() {
                if expires > now {
                    break;
                }
                self.remove(&scope);
            }
        }
    }

    /// Evicts until `records` more records and `bytes` more bytes fit. `false`: they cannot, even with
    /// every record `evict` allows gone — and then nothing is evicted.
    fn make_room(
        &mut self,
        now: Instant,
        records: usize,
        bytes: usize,
        evict: Evict,
        limits: &Inner,
    ) -> bool {
        let fits = |t: &Table, gone_records: usize, gone_bytes: usize| {
            t.map.len() - gone_records + records <= limits.max_records
                && (t.bytes - gone_bytes).saturating_add(bytes) <= limits.max_bytes
        };
        if fits(self, 0, 0) {
            return true;
        }
        self.sweep(now);
        let (mut gone_records, mut gone_bytes) = (self.done.len(), self.done_bytes);
        if evict == Evict::CompletedThenFailed {
            gone_records += self.failed.len();
            gone_bytes += self.failed.len() * RECORD_OVERHEAD;
        }
        if !fits(self, gone_records, gone_bytes) {
            return false;
        }
        while !fits(self, 0, 0) {
            let scope = match self.done.first_key_value() {
                Some((_, &scope)) => scope,
                None => {
                    let Some((_, &scope)) = self.failed.first_key_value() else {
                        // Unreachable: the check above counted what there is to evict.
                        return false;
                    };
                    tracing::warn!(
                        scope = ?scope,
                        "idempotency store full: a key whose response was not stored is forgotten \
                         to make room; a retry of it executes again"
                    );
                    scope
                }
            };
            self.remove(&scope);
            limits.evicted.fetch_add(1, Ordering::Relaxed);
        }
        true
    }
}

impl MemoryStore {
    /// A store with the default limits ([`DEFAULT_MAX_RECORDS`], [`DEFAULT_MAX_BYTES`]).
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder for the limits.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder::default()
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // No code path panics while holding the lock; recover anyway rather than poison every request.
        self.inner
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records held now, including expired ones not yet removed.
    pub fn len(&self) -> usize {
        self.table().map.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes counted against [`max_bytes`](MemoryStoreBuilder::max_bytes) now.
    pub fn bytes(&self) -> usize {
        self.table().bytes
    }

    /// Completed records evicted before their TTL to make room, since the store was built.
    pub fn evicted(&self) -> u64 {
        self.inner.evicted.load(Ordering::Relaxed)
    }

    /// The record limit.
    pub fn max_records(&self) -> usize {
        self.inner.max_records
    }

    /// The byte limit.
    pub fn max_bytes(&self) -> usize {
        self.inner.max_bytes
    }

    fn claim_now(
        &self,
        scope: Scope,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let now = Instant::now();
        let mut t = self.table();
        if let Some(slot) = t.map.get(&scope) {
            if slot.expires > now {
                return Ok(Claim::Existing(slot.record(now)));
            }
            if matches!(slot.state, SlotState::InFlight) {
                tracing::warn!(
                    scope = ?scope,
                    "idempotency lease expired before its request finished; the key is claimed again"
                );
            }
            t.remove(&scope);
        }
        if !t.make_room(
            now,
            1,
            RECORD_OVERHEAD,
            Evict::CompletedThenFailed,
            &self.inner,
        ) {
            return Err(StoreError::Full);
        }
        let id = t.next_id;
        t.next_id += 1;
        let expires = now + lease;
        t.index_slot(scope, Tier::InFlight, expires, id, RECORD_OVERHEAD);
        t.map.insert(
            scope,
            Slot {
                fingerprint,
                expires,
                id,
                size: RECORD_OVERHEAD,
                state: SlotState::InFlight,
            },
        );
        Ok(Claim::Acquired(LeaseToken::new(id)))
    }

    fn complete_now(
        &self,
        scope: Scope,
        token: LeaseToken,
        outcome: Completion,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        // Copy the response into buffers of its own size (outside the lock), so the store holds exactly
        // the bytes it counts; one that cannot fit is not copied, it is recorded as too large.
        let outcome = match outcome {
            Completion::Response(r)
                if RECORD_OVERHEAD.saturating_add(r.size()) <= self.inner.max_bytes =>
            {
                Completion::Response(Arc::new(r.to_owned_exact()))
            }
            other => other,
        };
        let now = Instant::now();
        let mut t = self.table();
        let Some(slot) = t.map.get(&scope).filter(|s| s.in_flight_under(token)) else {
            return Err(StoreError::LeaseLost);
        };
        let (old_expires, id, old_size) = (slot.expires, slot.id, slot.size);
        // Take the slot out of the lease index and the byte count while room is made.
        t.leases.remove(&(old_expires, id));
        t.bytes -= old_size;
        let (mut state, mut size) = match outcome {
            Completion::Response(r) => {
                let size = RECORD_OVERHEAD.saturating_add(r.size());
                (SlotState::Completed(r), size)
            }
            Completion::Failed(reason) => (SlotState::Failed(reason), RECORD_OVERHEAD),
        };
        // The slot itself is still in the map, so no extra record is needed. A response may evict
        // completed records only; one that cannot fit evicts nothing and is recorded as too large.
        if size > self.inner.max_bytes || !t.make_room(now, 0, size, Evict::Completed, &self.inner)
        {
            state = SlotState::Failed(NotStored::TooLarge);
            // The slot's own overhead was taken out above, so it fits again without evicting.
            size = RECORD_OVERHEAD;
        }
        let expires = now + ttl;
        t.index_slot(scope, state.tier(), expires, id, size);
        let slot = t
            .map
            .get_mut(&scope)
            .expect("make_room evicts only completed records");
        slot.state = state;
        slot.size = size;
        slot.expires = expires;
        Ok(())
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.table();
        f.debug_struct("MemoryStore")
            .field("records", &t.map.len())
            .field("in_flight", &t.leases.len())
            .field("bytes", &t.bytes)
            .field("max_records", &self.inner.max_records)
            .field("max_bytes", &self.inner.max_bytes)
            .finish()
    }
}

impl IdempotencyStore for MemoryStore {
    fn claim(
        &self,
        scope: Scope,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> StoreFuture<Result<Claim, StoreError>> {
        StoreFuture::ready(self.claim_now(scope, fingerprint, lease))
    }

    fn complete(
        &self,
        scope: Scope,
        token: LeaseToken,
        outcome: Completion,
        ttl: Duration,
    ) -> StoreFuture<Result<(), StoreError>> {
        StoreFuture::ready(self.complete_now(scope, token, outcome, ttl))
    }

    fn release(&self, scope: Scope, token: LeaseToken, how: Release) {
        let now = Instant::now();
        let mut t = self.table();
        if !t.map.get(&scope).is_some_and(|s| s.in_flight_under(token)) {
            return;
        }
        match how {
            Release::Forget => {
                t.remove(&scope);
            }
            Release::MarkFailed { reason, ttl } => {
                let Some(mut slot) = t.remove(&scope) else {
                    return;
                };
                slot.state = SlotState::Failed(reason);
                slot.expires = now + ttl;
                slot.size = RECORD_OVERHEAD;
                t.index_slot(scope, Tier::Failed, slot.expires, slot.id, slot.size);
                t.map.insert(scope, slot);
            }
        }
    }

    fn get(&self, scope: Scope) -> StoreFuture<Result<Option<Record>, StoreError>> {
        let now = Instant::now();
        let t = self.table();
        let record = t
            .map
            .get(&scope)
            .filter(|s| s.expires > now)
            .map(|s| s.record(now));
        StoreFuture::ready(Ok(record))
    }

    fn validate(&self) -> Result<(), BuildError> {
        self.inner.invalid.clone().map_or(Ok(()), Err)
    }
}

/// Builds a [`MemoryStore`]; from [`MemoryStore::builder`].
#[derive(Debug, Clone)]
pub struct MemoryStoreBuilder {
    max_records: usize,
    max_bytes: usize,
}

impl Default for MemoryStoreBuilder {
    fn default() -> Self {
        MemoryStoreBuilder {
            max_records: DEFAULT_MAX_RECORDS,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

impl MemoryStoreBuilder {
    /// The most records held at once, in flight or completed (1 to [`MAX_RECORDS`]; default
    /// [`DEFAULT_MAX_RECORDS`]).
    pub fn max_records(mut self, n: usize) -> Self {
        self.max_records = n;
        self
    }

    /// The most bytes held at once: stored responses plus a fixed overhead per record (1 KiB to
    /// [`MAX_BYTES`]; default [`DEFAULT_MAX_BYTES`]).
    pub fn max_bytes(mut self, n: usize) -> Self {
        self.max_bytes = n;
        self
    }

    /// The store.
    ///
    /// Limits out of range are refused when a layer using the store is built: its
    /// [`Builder::build`](crate::Builder::build) returns the [`BuildError`] naming the limit. (Until
    /// then, and for a store used without a layer, they are held to the nearest bound.)
    pub fn build(self) -> MemoryStore {
        let invalid = if !(1..=MAX_RECORDS).contains(&self.max_records) {
            Some(BuildError::new(
                crate::config::LAYER,
                "max_records",
                format!("{} is not in 1..={MAX_RECORDS}", self.max_records),
            ))
        } else if !(MIN_BYTES..=MAX_BYTES).contains(&self.max_bytes) {
            Some(BuildError::new(
                crate::config::LAYER,
                "max_bytes",
                format!("{} is not in {MIN_BYTES}..={MAX_BYTES}", self.max_bytes),
            ))
        } else {
            None
        };
        MemoryStore {
            inner: Arc::new(Inner {
                table: Mutex::new(Table::default()),
                max_records: self.max_records.clamp(1, MAX_RECORDS),
                max_bytes: self.max_bytes.clamp(MIN_BYTES, MAX_BYTES),
                evicted: AtomicU64::new(0),
                invalid,
            }),
        }
    }
}

/// Scopes are keyed BLAKE3 digests, uniform and not chosen by clients: folding their bytes is a good
/// enough hash, and cheaper than SipHash.
#[derive(Default)]
struct ScopeHasher(u64);

impl Hasher for ScopeHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(23) ^ u64::from_le_bytes(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};

    fn scope(n: u8) -> Scope {
        Scope::from_bytes([n; 32])
    }

    fn fp(n: u8) -> Fingerprint {
        Fingerprint::from_bytes([n; 32])
    }

    fn response(body: &'static [u8]) -> Arc<StoredResponse> {
        Arc::new(StoredResponse::new(
            StatusCode::CREATED,
            HeaderMap::new(),
            Bytes::from_static(body),
        ))
    }

    fn claim(store: &MemoryStore, n: u8, lease: Duration) -> Result<Claim, StoreError> {
        store.claim_now(scope(n), fp(n), lease)
    }

    fn token(c: Result<Claim, StoreError>) -> LeaseToken {
        match c {
            Ok(Claim::Acquired(t)) => t,
            other => panic!("expected the lease, got {other:?}"),
        }
    }

    const MIN: Duration = Duration::from_secs(60);
    const DAY: Duration = Duration::from_secs(86_400);

    #[tokio::test(start_paused = true)]
    async fn claim_is_exclusive_until_released_or_completed() {
        let s = MemoryStore::new();
        let t = token(claim(&s, 1, MIN));
        match claim(&s, 1, MIN) {
            Ok(Claim::Existing(Record::InFlight {
                fingerprint,
                expires_in,
            })) => {
                assert_eq!(fingerprint, fp(1));
                assert_eq!(expires_in, MIN);
            }
            other => panic!("{other:?}"),
        }
        // A stale token does nothing.
        s.release(scope(1), LeaseToken::new(t.get() + 100), Release::Forget);
        assert_eq!(s.len(), 1);
        s.release(scope(1), t, Release::Forget);
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
        let t = token(claim(&s, 1, MIN));
        s.complete_now(scope(1), t, Completion::Response(response(b"ok")), DAY)
            .unwrap();
        match claim(&s, 1, MIN) {
            Ok(Claim::Existing(Record::Completed { response, .. })) => {
                assert_eq!(response.body, "ok")
            }
            other => panic!("{other:?}"),
        }
        // Completing twice: the lease is gone.
        assert!(matches!(
            s.complete_now(scope(1), t, Completion::Failed(NotStored::TooLarge), DAY),
            Err(StoreError::LeaseLost)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn lease_expiry_lets_the_key_be_claimed_again() {
        let s = MemoryStore::new();
        let first = token(claim(&s, 1, MIN));
        tokio::time::advance(MIN - Duration::from_millis(1)).await;
        assert!(matches!(claim(&s, 1, MIN), Ok(Claim::Existing(_))));
        tokio::time::advance(Duration::from_millis(1)).await;
        let second = token(claim(&s, 1, MIN));
        assert_ne!(first, second);
        // The first holder can no longer complete or release the new lease.
        assert!(matches!(
            s.complete_now(scope(1), first, Completion::Response(response(b"x")), DAY),
            Err(StoreError::LeaseLost)
        ));
        s.release(scope(1), first, Release::Forget);
        assert!(matches!(
            s.get(scope(1)).await,
            Ok(Some(Record::InFlight { .. }))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_expiry_forgets_completed_records() {
        let s = MemoryStore::new();
        let t = token(claim(&s, 1, MIN));
        s.complete_now(scope(1), t, Completion::Response(response(b"ok")), DAY)
            .unwrap();
        tokio::time::advance(DAY - Duration::from_secs(1)).await;
        assert!(s.get(scope(1)).await.unwrap().is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(s.get(scope(1)).await.unwrap().is_none());
        token(claim(&s, 1, MIN));
    }

    #[tokio::test(start_paused = true)]
    async fn record_cap_evicts_oldest_expiry_first_and_never_in_flight() {
        let s = MemoryStore::builder().max_records(3).build();
        for (n, ttl) in [(1u8, 30u64), (2, 10), (3, 20)] {
            let t = token(claim(&s, n, MIN));
            s.complete_now(
                scope(n),
                t,
                Completion::Response(response(b"r")),
                Duration::from_secs(ttl),
            )
            .unwrap();
        }
        // Full: the record expiring soonest (2) goes.
        token(claim(&s, 4, MIN));
        assert_eq!(s.evicted(), 1);
        assert!(s.get(scope(2)).await.unwrap().is_none());
        assert!(s.get(scope(1)).await.unwrap().is_some());
        assert!(s.get(scope(3)).await.unwrap().is_some());
        // Then 3, then 1; then only in-flight records are left and a claim fails.
        token(claim(&s, 5, MIN));
        token(claim(&s, 6, MIN));
        assert_eq!(s.evicted(), 3);
        assert!(matches!(claim(&s, 7, MIN), Err(StoreError::Full)));
        assert_eq!(s.len(), 3);
        // Expired leases make room without counting as evictions.
        tokio::time::advance(MIN).await;
        token(claim(&s, 7, MIN));
        assert_eq!(s.evicted(), 3);
        assert_eq!(s.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn byte_cap_evicts_and_marks_oversized_responses() {
        let s = MemoryStore::builder().max_bytes(2048).build();
        let big = Arc::new(StoredResponse::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from(vec![b'x'; 1200]),
        ));
        let t = token(claim(&s, 1, MIN));
        s.complete_now(scope(1), t, Completion::Response(big.clone()), DAY)
            .unwrap();
        assert!(s.bytes() > 1200);
        let t = token(claim(&s, 2, MIN));
        s.complete_now(scope(2), t, Completion::Response(big.clone()), DAY)
            .unwrap();
        // The first was evicted to make room for the second.
        assert_eq!(s.evicted(), 1);
        assert!(s.get(scope(1)).await.unwrap().is_none());
        assert!(s.bytes() <= 2048);
        // A response larger than the whole store is marked, not stored.
        let huge = Arc::new(StoredResponse::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from(vec![b'x'; 4096]),
        ));
        let t = token(claim(&s, 3, MIN));
        s.complete_now(scope(3), t, Completion::Response(huge), DAY)
            .unwrap();
        assert!(matches!(
            s.get(scope(3)).await,
            Ok(Some(Record::Failed {
                reason: NotStored::TooLarge,
                ..
            }))
        ));
    }

    fn complete(s: &MemoryStore, n: u8, body: usize, ttl: Duration) {
        let t = token(claim(s, n, MIN));
        let r = Arc::new(StoredResponse::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from(vec![b'x'; body]),
        ));
        s.complete_now(scope(n), t, Completion::Response(r), ttl)
            .unwrap();
    }

    fn mark_failed(s: &MemoryStore, n: u8, ttl: Duration) {
        let t = token(claim(s, n, MIN));
        s.release(
            scope(n),
            t,
            Release::MarkFailed {
                reason: NotStored::Abandoned,
                ttl,
            },
        );
    }

    async fn is_failed(s: &MemoryStore, n: u8) -> bool {
        matches!(s.get(scope(n)).await, Ok(Some(Record::Failed { .. })))
    }

    async fn is_completed(s: &MemoryStore, n: u8) -> bool {
        matches!(s.get(scope(n)).await, Ok(Some(Record::Completed { .. })))
    }

    /// A response that cannot fit even with every completed record gone evicts none of them.
    #[tokio::test(start_paused = true)]
    async fn a_response_that_cannot_fit_evicts_nothing() {
        let s = MemoryStore::builder().max_bytes(4096).build();
        for n in 1..=4 {
            complete(&s, n, 1, DAY);
        }
        // 20 requests in flight hold 2560 bytes that cannot be evicted.
        let tokens: Vec<_> = (10..30).map(|n| token(claim(&s, n, MIN))).collect();
        let before = s.bytes();
        let r = Arc::new(StoredResponse::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from(vec![b'x'; 1500]),
        ));
        // 1788 bytes: under max_bytes, but over what evicting all four completed records frees.
        assert!(RECORD_OVERHEAD + r.size() < 4096);
        s.complete_now(scope(10), tokens[0], Completion::Response(r), DAY)
            .unwrap();
        assert!(matches!(
            s.get(scope(10)).await,
            Ok(Some(Record::Failed {
                reason: NotStored::TooLarge,
                ..
            }))
        ));
        assert_eq!(
            s.evicted(),
            0,
            "nothing evicted for a response that could not fit"
        );
        for n in 1..=4 {
            assert!(is_completed(&s, n).await, "record {n} kept");
        }
        assert_eq!(s.bytes(), before);
    }

    /// A claim that cannot fit even with every evictable record gone evicts none of them.
    #[tokio::test(start_paused = true)]
    async fn a_claim_that_cannot_fit_evicts_nothing() {
        let s = MemoryStore::builder().max_records(3).build();
        complete(&s, 1, 1, DAY);
        let _a = token(claim(&s, 2, MIN));
        let _b = token(claim(&s, 3, MIN));
        // Evicting 1 makes room: a claim may.
        token(claim(&s, 4, MIN));
        assert_eq!(s.evicted(), 1);
        // Now three in flight: nothing to evict, and nothing is.
        assert!(matches!(claim(&s, 5, MIN), Err(StoreError::Full)));
        assert_eq!((s.len(), s.evicted()), (3, 1));
    }

    /// Failed records stand for handlers that ran: they are evicted only for a new key's claim, and
    /// only once no completed record is left.
    #[tokio::test(start_paused = true)]
    async fn failed_records_are_evicted_last() {
        let s = MemoryStore::builder().max_records(3).build();
        // The failed record expires first: by expiry alone it would go first.
        mark_failed(&s, 1, Duration::from_secs(10));
        complete(&s, 2, 1, DAY);
        complete(&s, 3, 1, DAY);
        let _t4 = token(claim(&s, 4, MIN));
        assert!(is_failed(&s, 1).await, "the failed record survives");
        assert!(
            s.get(scope(2)).await.unwrap().is_none(),
            "the completed one went"
        );
        let _t5 = token(claim(&s, 5, MIN));
        assert!(is_failed(&s, 1).await);
        assert!(s.get(scope(3)).await.unwrap().is_none());
        // No completed record left: a new key's claim evicts the failed record (documented).
        let _t6 = token(claim(&s, 6, MIN));
        assert!(s.get(scope(1)).await.unwrap().is_none());
        assert_eq!(s.evicted(), 3);
    }

    /// Storing a response never evicts a failed record: the response is not stored instead.
    #[tokio::test(start_paused = true)]
    async fn a_response_never_evicts_failed_records() {
        let s = MemoryStore::builder().max_bytes(2048).build();
        mark_failed(&s, 1, MIN);
        complete(&s, 2, 1700, DAY);
        assert!(is_failed(&s, 1).await, "the failed record survives");
        assert!(matches!(
            s.get(scope(2)).await,
            Ok(Some(Record::Failed {
                reason: NotStored::TooLarge,
                ..
            }))
        ));
        assert_eq!(s.evicted(), 0);
    }

    /// Whether `part` points into `whole`'s allocation.
    fn within(part: &[u8], whole: &[u8]) -> bool {
        let range = whole.as_ptr_range();
        range.contains(&part.as_ptr()) || (part.as_ptr() == range.end && !whole.is_empty())
    }

    /// The store keeps exactly what it counts: a small slice of a large buffer is copied out, so the
    /// large buffer is not kept alive by the record.
    #[tokio::test(start_paused = true)]
    async fn stored_bytes_do_not_share_the_callers_buffers() {
        let s = MemoryStore::builder().max_bytes(64 << 10).build();
        let big = Bytes::from(vec![b'a'; 1 << 20]);
        let mut headers = HeaderMap::new();
        let value = http::HeaderValue::from_maybe_shared(big.slice(100..132)).unwrap();
        assert!(within(value.as_bytes(), &big), "the test shares the buffer");
        headers.insert("x-big", value);
        let mut trailers = HeaderMap::new();
        trailers.insert(
            "x-trailer",
            http::HeaderValue::from_maybe_shared(big.slice(200..216)).unwrap(),
        );
        let mut sensitive = http::HeaderValue::from_maybe_shared(big.slice(300..310)).unwrap();
        sensitive.set_sensitive(true);
        headers.insert("authorization", sensitive);
        let r = StoredResponse::new(StatusCode::OK, headers, big.slice(0..32))
            .with_trailers(Some(trailers));
        let t = token(claim(&s, 1, MIN));
        s.complete_now(scope(1), t, Completion::Response(Arc::new(r.clone())), DAY)
            .unwrap();
        let Ok(Some(Record::Completed { response, .. })) = s.get(scope(1)).await else {
            panic!("not stored");
        };
        assert_eq!(*response, r, "the same bytes");
        assert!(
            !within(&response.body, &big),
            "the body shares the 1 MiB buffer"
        );
        for (name, v) in &response.headers {
            assert!(
                !within(v.as_bytes(), &big),
                "header {name} shares the buffer"
            );
        }
        assert!(response.headers["authorization"].is_sensitive());
        let trailer = &response.trailers.as_ref().unwrap()["x-trailer"];
        assert!(
            !within(trailer.as_bytes(), &big),
            "the trailer shares the buffer"
        );
        assert!(s.bytes() < 64 << 10);
    }

    #[tokio::test(start_paused = true)]
    async fn release_can_mark_failed() {
        let s = MemoryStore::new();
        let t = token(claim(&s, 1, MIN));
        s.release(
            scope(1),
            t,
            Release::MarkFailed {
                reason: NotStored::Abandoned,
                ttl: MIN,
            },
        );
        assert!(matches!(
            claim(&s, 1, MIN),
            Ok(Claim::Existing(Record::Failed {
                reason: NotStored::Abandoned,
                ..
            }))
        ));
        tokio::time::advance(MIN).await;
        token(claim(&s, 1, MIN));
        assert!(format!("{s:?}").contains("in_flight: 1"));
    }
}
