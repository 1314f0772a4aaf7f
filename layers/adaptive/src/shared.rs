//! State shared by every clone of one adaptive limiter: admission counters, partitions, tenants, the
//! sample window, the algorithm, and how state changes are published (tracing, health, audit).
//!
//! # Admission
//!
//! The limit `L` is split into each partition's guaranteed slots `g_p = ⌊L × share_p⌋` and a shared
//! pool of `L − Σ g_p` (all of `L` when there are no partitions). A request takes one of its
//! partition's guaranteed slots if one is free, else a pool slot, else it is refused: a compare-and-swap
//! on one counter, never a lock. In-flight is the pool's count plus every partition's guaranteed count,
//! so it never exceeds `L` at admission. When `L` changes, the caps that shrink are lowered before the
//! ones that grow are raised, so no interleaving of admissions sees caps summing to more than the old
//! or the new limit; requests admitted under a larger limit drain. While they drain, a partitioned
//! limiter also refuses every request while in-flight is at the limit (slots held above a shrunken
//! guarantee would otherwise not count against the pool); that check sums counters, so under
//! concurrent admissions during a drain it may let in one request per racing thread too many. The
//! unpartitioned limiter's single compare-and-swap is exact.
//!
//! # Samples
//!
//! A finished call adds its RTT (or a drop) to the current window with a few relaxed atomic operations.
//! The call that finds the window due (enough samples, and its time is up) takes the algorithm's lock
//! with `try_lock` — a caller that finds it taken moves on — closes the window and publishes the new
//! limit. The window's counters are read one by one, so a call finishing at that very moment may be
//! counted in either window; the averages stay averages.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::Duration;

use palisade_core::audit::{Audit, AuditEvent};
use palisade_core::health::Component;
use palisade_core::key::MalformedKey;
use palisade_core::keymap::KeyMap;
use tokio::time::Instant;

use crate::algorithm::{Estimator, Window};

/// What the limiter does with requests that carry no key (keyed limiters only).
///
/// A key that is present but malformed is a separate decision,
/// [`MalformedKey`](palisade_core::key::MalformedKey): refused with `400` by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MissingKey {
    /// Requests without a key share one anonymous tenant in the default partition (or the pool), the
    /// default.
    #[default]
    Anonymous,
    /// Requests without a key are refused with the extractor's
    /// [`KeyError`](palisade_core::error::KeyError) (`400`).
    Reject,
}

/// How one call counts for the algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sample {
    /// A measured RTT.
    Success,
    /// A timeout, an error or a failure: congestion, no RTT.
    Drop,
    /// Says nothing (cancelled, refused further in).
    Ignore,
}

/// One partition: a guaranteed share of the limit.
pub(crate) struct Partition {
    pub(crate) name: Box<str>,
    pub(crate) share: f64,
    /// Guaranteed slots at the current limit.
    guaranteed: AtomicUsize,
    /// Guaranteed slots held now.
    held: AtomicUsize,
    /// All slots held by the partition's requests (guaranteed and pooled).
    pub(crate) in_flight: AtomicUsize,
    pub(crate) rejected: AtomicU64,
    /// Shared by the partition's new tenants while the key map is full, so they keep the guarantee.
    pub(crate) overflow: Arc<Tenant>,
}

impl Partition {
    pub(crate) fn guaranteed(&self) -> usize {
        self.guaranteed.load(Relaxed)
    }
}

/// One tenant of a keyed limiter.
pub(crate) struct Tenant {
    pub(crate) label: Box<str>,
    pub(crate) partition: Option<usize>,
    pub(crate) in_flight: AtomicUsize,
}

impl Tenant {
    pub(crate) fn new(label: impl Into<Box<str>>, partition: Option<usize>) -> Self {
        Tenant {
            label: label.into(),
            partition,
            in_flight: AtomicUsize::new(0),
        }
    }
}

impl fmt::Debug for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tenant")
            .field("label", &self.label)
            .field("partition", &self.partition)
            .field("in_flight", &self.in_flight.load(Relaxed))
            .finish()
    }
}

/// The tenants of a keyed limiter.
pub(crate) struct Tenants {
    pub(crate) map: KeyMap<Tenant>,
    pub(crate) anonymous: Arc<Tenant>,
    pub(crate) overflow: Arc<Tenant>,
    /// Tenant label → partition.
    members: HashMap<Box<str>, usize>,
    default_partition: Option<usize>,
}

impl Tenants {
    pub(crate) fn new(
        max_keys: usize,
        idle: Duration,
        members: HashMap<Box<str>, usize>,
        default_partition: Option<usize>,
    ) -> Self {
        Tenants {
            map: KeyMap::new(max_keys, idle),
            anonymous: Arc::new(Tenant::new("(anonymous)", default_partition)),
            overflow: Arc::new(Tenant::new("(overflow)", default_partition)),
            members,
            default_partition,
        }
    }

    fn partition_of(&self, label: &str) -> Option<usize> {
        self.members.get(label).copied().or(self.default_partition)
    }

    /// The tenant of `key`, created if new. While the map is full, a new key joins its partition's
    /// overflow tenant if its label names a partition member, else the shared overflow tenant.
    pub(crate) fn get<Q: std::hash::Hash + fmt::Debug + ?Sized>(
        &self,
        key: &Q,
        partitions: &[Partition],
    ) -> Arc<Tenant> {
        let hash = self.map.hash(key);
        if let Some(t) = self.map.get_or_insert_with(hash, Instant::now(), || {
            let label = label(key);
            let partition = self.partition_of(&label);
            Tenant::new(label, partition)
        }) {
            return t;
        }
        match self.members.get(label(key).as_str()) {
            Some(&i) => partitions[i].overflow.clone(),
            None => self.overflow.clone(),
        }
    }
}

/// The longest tenant label, in bytes.
pub(crate) const LABEL_MAX: usize = 128;

/// A key's label: its `Debug` form without surrounding quotes, cut to [`LABEL_MAX`] bytes on a
/// character boundary. Written into a bounded buffer, so a huge key is never formatted whole.
pub(crate) fn label<K: fmt::Debug + ?Sized>(key: &K) -> String {
    use fmt::Write as _;

    struct Bounded(String);

    impl fmt::Write for Bounded {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let room = (LABEL_MAX + 2).saturating_sub(self.0.len());
            let mut end = room.min(s.len());
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            self.0.push_str(&s[..end]);
            Ok(())
        }
    }

    let mut w = Bounded(String::new());
    let _ = write!(w, "{key:?}");
    let mut s = w.0;
    if s.len() >= 2 && s.starts_with('"') {
        s.remove(0);
        if s.ends_with('"') {
            s.pop();
        }
    }
    if s.len() > LABEL_MAX {
        let mut end = LABEL_MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// How windows are cut.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WindowConfig {
    pub(crate) min_time: Duration,
    pub(crate) max_time: Duration,
    pub(crate) samples: u64,
    pub(crate) min_rtt_threshold: Duration,
}

/// The open window's accumulators.
struct Acc {
    count: AtomicU64,
    successes: AtomicU64,
    rtt_sum: AtomicU64,
    min_rtt: AtomicU64,
    max_in_flight: AtomicUsize,
    dropped: AtomicBool,
    /// Nanoseconds since the epoch at which the window may close.
    due: AtomicU64,
}

/// The algorithm and the audit gate of limit changes, behind one lock taken once per window.
struct Control {
    estimator: Estimator,
    audited_limit: usize,
    audited_at: Option<Instant>,
    updates: u64,
    windows: u64,
}

/// The audit gate of limiting/recovered records.
struct StateGate {
    published: bool,
    audited_at: Option<Instant>,
    suppressed: u64,
}

pub(crate) struct SharedConfig {
    pub(crate) name: Cow<'static, str>,
    pub(crate) algorithm: &'static str,
    pub(crate) estimator: Estimator,
    pub(crate) window: WindowConfig,
    pub(crate) partitions: Vec<(Box<str>, f64)>,
    pub(crate) tenants: Option<Tenants>,
    pub(crate) retry_after: Duration,
    pub(crate) cancelled_as_drop: bool,
    pub(crate) missing_key: MissingKey,
    pub(crate) malformed_key: MalformedKey,
    pub(crate) component: Option<Component>,
    pub(crate) audit: Audit,
    pub(crate) audit_interval: Duration,
}

pub(crate) struct Shared {
    pub(crate) name: Cow<'static, str>,
    pub(crate) algorithm: &'static str,
    epoch: Instant,
    limit: AtomicUsize,
    pool_cap: AtomicUsize,
    pooled: AtomicUsize,
    pub(crate) partitions: Box<[Partition]>,
    pub(crate) tenants: Option<Tenants>,
    rejected: AtomicU64,
    drops: AtomicU64,
    samples: AtomicU64,
    limiting: AtomicBool,
    window: WindowConfig,
    acc: Acc,
    control: Mutex<Control>,
    /// `(last window RTT, baseline RTT)` in nanoseconds, for the handle.
    rtts: Mutex<(f64, f64)>,
    state: Mutex<StateGate>,
    pub(crate) retry_after: Duration,
    pub(crate) cancelled_as_drop: bool,
    pub(crate) missing_key: MissingKey,
    pub(crate) malformed_key: MalformedKey,
    component: Option<Component>,
    audit: Audit,
    audit_interval: Duration,
}

/// A slot taken at admission.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    pub(crate) partition: Option<usize>,
    pub(crate) guaranteed: bool,
    /// In-flight when the request was admitted (itself included).
    pub(crate) in_flight: usize,
}

/// Takes one unit of `counter` if it is below `cap`; the new value.
#[inline]
fn cas_below(counter: &AtomicUsize, cap: usize) -> Option<usize> {
    let mut cur = counter.load(Relaxed);
    loop {
        if cur >= cap {
            return None;
        }
        match counter.compare_exchange_weak(cur, cur + 1, AcqRel, Relaxed) {
            Ok(_) => return Some(cur + 1),
            Err(now) => cur = now,
        }
    }
}

impl Shared {
    pub(crate) fn new(c: SharedConfig) -> Self {
        let limit = c.estimator.limit();
        let partitions = c
            .partitions
            .into_iter()
            .enumerate()
            .map(|(i, (name, share))| Partition {
                overflow: Arc::new(Tenant::new(format!("(overflow:{name})"), Some(i))),
                name,
                share,
                guaranteed: AtomicUsize::new(0),
                held: AtomicUsize::new(0),
                in_flight: AtomicUsize::new(0),
                rejected: AtomicU64::new(0),
            })
            .collect();
        if let Some(component) = &c.component {
            component.healthy();
        }
        let shared = Shared {
            name: c.name,
            algorithm: c.algorithm,
            epoch: Instant::now(),
            limit: AtomicUsize::new(0),
            pool_cap: AtomicUsize::new(0),
            pooled: AtomicUsize::new(0),
            partitions,
            tenants: c.tenants,
            rejected: AtomicU64::new(0),
            drops: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            limiting: AtomicBool::new(false),
            window: c.window,
            acc: Acc {
                count: AtomicU64::new(0),
                successes: AtomicU64::new(0),
                rtt_sum: AtomicU64::new(0),
                min_rtt: AtomicU64::new(u64::MAX),
                max_in_flight: AtomicUsize::new(0),
                dropped: AtomicBool::new(false),
                due: AtomicU64::new(nanos(c.window.min_time)),
            },
            control: Mutex::new(Control {
                estimator: c.estimator,
                audited_limit: limit,
                audited_at: None,
                updates: 0,
                windows: 0,
            }),
            rtts: Mutex::new((0.0, 0.0)),
            state: Mutex::new(StateGate {
                published: false,
                audited_at: None,
                suppressed: 0,
            }),
            retry_after: c.retry_after,
            cancelled_as_drop: c.cancelled_as_drop,
            missing_key: c.missing_key,
            malformed_key: c.malformed_key,
            component: c.component,
            audit: c.audit,
            audit_interval: c.audit_interval,
        };
        shared.apply_limit(limit);
        shared
    }

    // ----- reading ---------------------------------------------------------------------------------

    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Relaxed)
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.pooled.load(Relaxed)
            + self
                .partitions
                .iter()
                .map(|p| p.held.load(Relaxed))
                .sum::<usize>()
    }

    pub(crate) fn rejected(&self) -> u64 {
        self.rejected.load(Relaxed)
    }

    pub(crate) fn drops(&self) -> u64 {
        self.drops.load(Relaxed)
    }

    pub(crate) fn samples(&self) -> u64 {
        self.samples.load(Relaxed)
    }

    pub(crate) fn is_limiting(&self) -> bool {
        self.limiting.load(Relaxed)
    }

    pub(crate) fn windows(&self) -> u64 {
        lock(&self.control).windows
    }

    pub(crate) fn rtts(&self) -> (f64, f64) {
        *lock(&self.rtts)
    }

    // ----- admission -------------------------------------------------------------------------------

    /// Takes a guaranteed slot of `partition` if one is free, else a pool slot.
    #[inline]
    pub(crate) fn try_acquire(&self, partition: Option<usize>) -> Option<Slot> {
        if !self.partitions.is_empty() && self.in_flight() >= self.limit() {
            // After the limit shrank, slots held under the old caps still count.
            return None;
        }
        let Some(i) = partition else {
            let pooled = cas_below(&self.pooled, self.pool_cap.load(Acquire))?;
            let in_flight = if self.partitions.is_empty() {
                pooled
            } else {
                self.in_flight()
            };
            return Some(Slot {
                partition: None,
                guaranteed: false,
                in_flight,
            });
        };
        let p = &self.partitions[i];
        let guaranteed = if cas_below(&p.held, p.guaranteed.load(Acquire)).is_some() {
            true
        } else {
            cas_below(&self.pooled, self.pool_cap.load(Acquire))?;
            false
        };
        p.in_flight.fetch_add(1, Relaxed);
        Some(Slot {
            partition: Some(i),
            guaranteed,
            in_flight: self.in_flight(),
        })
    }

    /// Gives a slot back.
    #[inline]
    pub(crate) fn release(&self, slot: &Slot) {
        match slot.partition {
            Some(i) => {
                let p = &self.partitions[i];
                p.in_flight.fetch_sub(1, Relaxed);
                if slot.guaranteed {
                    p.held.fetch_sub(1, AcqRel);
                } else {
                    self.pooled.fetch_sub(1, AcqRel);
                }
            }
            None => {
                self.pooled.fetch_sub(1, AcqRel);
            }
        }
        if self.limiting.load(Relaxed) {
            self.maybe_recover();
        }
    }

    /// Counts a refusal over the limit and marks the limiter as limiting.
    #[cold]
    pub(crate) fn reject(&self, partition: Option<usize>) {
        self.rejected.fetch_add(1, Relaxed);
        if let Some(i) = partition {
            self.partitions[i].rejected.fetch_add(1, Relaxed);
        }
        if !self.limiting.load(Relaxed) && !self.limiting.swap(true, AcqRel) {
            self.publish_state();
        }
    }

    /// Limiting clears with hysteresis: once in-flight is at most 3/4 of the limit.
    #[cold]
    fn maybe_recover(&self) {
        if self.in_flight().saturating_mul(4) <= self.limit().saturating_mul(3)
            && self
                .limiting
                .compare_exchange(true, false, AcqRel, Relaxed)
                .is_ok()
        {
            self.publish_state();
        }
    }

    /// Tells the world the limiting state, if it changed since it was last told. Audit records of
    /// these changes are at most one per audit interval; the ones left out are counted in the next.
    fn publish_state(&self) {
        let mut gate = lock(&self.state);
        let limiting = self.limiting.load(Acquire);
        if gate.published == limiting {
            return;
        }
        gate.published = limiting;
        let (in_flight, limit) = (self.in_flight(), self.limit());
        if limiting {
            tracing::warn!(adaptive = %self.name, in_flight, limit, "adaptive limit reached: refusing requests");
            if let Some(c) = &self.component {
                c.degraded(format!(
                    "limiting: {in_flight} in flight at a limit of {limit}"
                ));
            }
        } else {
            tracing::info!(adaptive = %self.name, in_flight, limit, "adaptive limiter has capacity again");
            if let Some(c) = &self.component {
                c.healthy();
            }
        }
        let now = Instant::now();
        if gate
            .audited_at
            .is_some_and(|at| now.saturating_duration_since(at) < self.audit_interval)
        {
            gate.suppressed += 1;
            return;
        }
        gate.audited_at = Some(now);
        let suppressed = std::mem::take(&mut gate.suppressed);
        self.audit.record_with(|| {
            AuditEvent::new(if limiting {
                "adaptive.limiting"
            } else {
                "adaptive.recovered"
            })
            .detail("adaptive", self.name.to_string())
            .detail("in_flight", in_flight as u64)
            .detail("limit", limit as u64)
            .detail("rejected_total", self.rejected())
            .detail("unrecorded_changes", suppressed)
        });
    }

    // ----- samples ---------------------------------------------------------------------------------

    /// Records one finished call.
    #[inline]
    pub(crate) fn record(&self, sample: Sample, started: Instant, in_flight: usize) {
        if sample == Sample::Ignore {
            return;
        }
        let now = Instant::now();
        let rtt = now.saturating_duration_since(started);
        if sample == Sample::Success {
            if rtt < self.window.min_rtt_threshold {
                return;
            }
            let ns = nanos(rtt);
            self.acc.rtt_sum.fetch_add(ns, Relaxed);
            self.acc.min_rtt.fetch_min(ns, Relaxed);
            self.acc.successes.fetch_add(1, Relaxed);
            self.samples.fetch_add(1, Relaxed);
        } else {
            self.acc.dropped.store(true, Relaxed);
            self.drops.fetch_add(1, Relaxed);
        }
        self.acc.max_in_flight.fetch_max(in_flight, Relaxed);
        let count = self.acc.count.fetch_add(1, Relaxed) + 1;
        if count >= self.window.samples && self.ticks(now) >= self.acc.due.load(Relaxed) {
            self.close_window(now);
        }
    }

    fn ticks(&self, now: Instant) -> u64 {
        nanos(now.saturating_duration_since(self.epoch))
    }

    #[cold]
    fn close_window(&self, now: Instant) {
        let mut control = match self.control.try_lock() {
            Ok(c) => c,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        let ticks = self.ticks(now);
        if self.acc.count.load(Relaxed) < self.window.samples || ticks < self.acc.due.load(Relaxed)
        {
            return;
        }
        self.acc.count.store(0, Relaxed);
        let successes = self.acc.successes.swap(0, Relaxed);
        let rtt_sum = self.acc.rtt_sum.swap(0, Relaxed);
        let min_rtt = self.acc.min_rtt.swap(u64::MAX, Relaxed);
        let max_in_flight = self.acc.max_in_flight.swap(0, Relaxed);
        let dropped = self.acc.dropped.swap(false, Relaxed);
        let window = Window {
            avg_rtt: (successes > 0).then(|| rtt_sum as f64 / successes as f64),
            max_in_flight,
            dropped,
        };
        // The next window lasts twice the smallest RTT seen, within the configured bounds.
        let span = if min_rtt == u64::MAX {
            self.window.min_time
        } else {
            Duration::from_nanos(min_rtt.saturating_mul(2))
                .clamp(self.window.min_time, self.window.max_time)
        };
        self.acc
            .due
            .store(ticks.saturating_add(nanos(span)), Relaxed);

        control.windows += 1;
        let old = control.estimator.limit();
        let new = control.estimator.update(&window);
        *lock(&self.rtts) = control.estimator.rtts();
        if new == old {
            return;
        }
        self.apply_limit(new);
        let (short, baseline) = control.estimator.rtts();
        tracing::debug!(
            adaptive = %self.name,
            algorithm = self.algorithm,
            old,
            new,
            rtt_ms = short / 1e6,
            baseline_ms = baseline / 1e6,
            dropped,
            "adaptive limit changed"
        );
        control.updates += 1;
        if control
            .audited_at
            .is_some_and(|at| now.saturating_duration_since(at) < self.audit_interval)
        {
            return;
        }
        let from = std::mem::replace(&mut control.audited_limit, new);
        let updates = std::mem::take(&mut control.updates);
        control.audited_at = Some(now);
        drop(control);
        self.audit.record_with(|| {
            AuditEvent::new("adaptive.limit_changed")
                .detail("adaptive", self.name.to_string())
                .detail("algorithm", self.algorithm)
                .detail("old", from as u64)
                .detail("new", new as u64)
                .detail("updates", updates)
                .detail("rtt_ms", window.avg_rtt.map(|r| r / 1e6))
                .detail("baseline_ms", baseline / 1e6)
                .detail("dropped", dropped)
        });
    }

    /// Publishes a new limit: the partitions' guaranteed slots and the pool. Caps that shrink are
    /// lowered first, so the caps never sum to more than the larger of the old and new limits.
    fn apply_limit(&self, limit: usize) {
        let mut caps: Vec<(&AtomicUsize, usize)> = Vec::with_capacity(self.partitions.len() + 1);
        let mut reserved = 0usize;
        for p in self.partitions.iter() {
            let g = ((limit as f64) * p.share).floor() as usize;
            let g = g.min(limit - reserved);
            reserved += g;
            caps.push((&p.guaranteed, g));
        }
        caps.push((&self.pool_cap, limit - reserved));
        for (cap, v) in &caps {
            if cap.load(Relaxed) > *v {
                cap.store(*v, Release);
            }
        }
        for (cap, v) in &caps {
            if cap.load(Relaxed) < *v {
                cap.store(*v, Release);
            }
        }
        self.limit.store(limit, Release);
        if self.limiting.load(Relaxed) {
            self.maybe_recover();
        }
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Adaptive")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .field("limiting", &self.is_limiting())
            .finish_non_exhaustive()
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A poisoned lock only means a thread panicked while holding it; the state stays consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::{label, LABEL_MAX};

    #[test]
    fn labels_are_unquoted_and_bounded() {
        assert_eq!(label("live"), "live");
        assert_eq!(label(&42u32), "42");
        assert_eq!(label(&"x".repeat(1000)).len(), LABEL_MAX);
        assert!(label(&"é".repeat(1000)).len() <= LABEL_MAX);
    }
}
