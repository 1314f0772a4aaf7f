//! The latency and outcome recorder: request count, error count and latency quantiles per named
//! signal (a route, an upstream) over sliding windows — the only part of the control plane on the
//! request path.
//!
//! - [`Recorder`]: a handle (cheap `Clone`, an `Arc` inside) for one signal. Record from anywhere with
//!   [`record`](Recorder::record); read a window with [`snapshot`](Recorder::snapshot).
//! - [`RecordLayer`] / [`Record`]: a tower layer that times each call and classifies its outcome with
//!   palisade-core's [`Classify`] (default [`Grpc`]: an `Err`, HTTP 5xx, gRPC server-error codes).
//! - [`Recorders`]: a bounded registry of named recorders, which the control plane and
//!   `palisade::metrics` iterate.
//!
//! ```
//! use std::time::Duration;
//! use palisade_core::classify::{Failure, Outcome};
//! use palisade_heal::signals::recorder::{RecorderConfig, Recorders};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let recorders = Recorders::new(RecorderConfig::default());
//! let orders = recorders.recorder("GET /orders").unwrap();
//! for ms in 1..=100 {
//!     orders.record(Duration::from_millis(ms), Outcome::Success);
//! }
//! orders.record(Duration::from_millis(250), Outcome::Failure(Failure::Error));
//!
//! let last_10s = orders.snapshot(Duration::from_secs(10)).unwrap();
//! assert_eq!((last_10s.count, last_10s.errors), (101, 1));
//! let p99 = last_10s.p99.unwrap().as_secs_f64();
//! assert!((p99 - 0.100).abs() <= 0.01 * 0.100); // within the sketch's 1 % of the exact p99
//! # }
//! ```
//!
//! # Windows and slots
//!
//! Each window (default 10 s, 1 min, 5 min) is a ring of time slots (default 10 per window: 1 s,
//! 6 s and 30 s slots), each slot a [sketch](super::sketch) of latencies plus error and ignored
//! counts. A window's [`snapshot`](Recorder::snapshot) merges the slots it covers: the current
//! (partial) slot and the `slots − 1` before it, so it covers between `(slots − 1) / slots` of the
//! window and all of it ([`WindowSnapshot::covered`] says how much: divide by it for a rate). After
//! 10 s plus one slot, a value recorded in a 10 s window is out of it. The shortest window's slots
//! are at most [`MAX_SLOT`](RecorderConfig::MAX_SLOT) (5 min) long, so that their 32-bit bucket
//! counters cannot wrap; coarser slots may be longer, their buckets saturating.
//!
//! Requests are recorded into the finest ring only. When a slot is reused for a new time, the one
//! request that finds it stale claims it (a compare-and-swap on the slot's epoch), moves its counts
//! into the next coarser ring (the slot covering the same time, which it claims in turn for the
//! move; the counts of the 1 s slots become a 6 s slot's, then a 30 s slot's) and publishes the new
//! epoch; a coarse slot whose time has left its window is dropped. Each value lives in exactly one slot at a time, so a window sums its own
//! ring and the finer rings' slots within its time, with no double counting. The claiming request
//! pays for moving the slot (a load per bucket — 1,102 with the defaults — and a swap and an add per
//! non-empty bucket), once per slot length per signal; everyone else pays one atomic load of the
//! epoch.
//!
//! **Boundaries.** Nothing takes a lock, but a claimed slot is never written into nor drained into
//! until its claim ends. A request that finds its slot being claimed by another records into the
//! previous slot when that one is live (one slot early, but counted), and otherwise waits for the
//! claim to end (64 spins, then yields) — a path taken only by requests racing the first request of
//! a slot. The wait has no bound, so a claimer that is descheduled mid-move stalls them until it
//! runs again, but the claimer's own work is bounded (one pass over the buckets per ring it moves
//! counts through), and a claimer waits only for coarser slots than those it holds, so claims never
//! wait in a cycle. A move into a coarser slot likewise waits for that slot's own claim to end.
//! Counts moved between rings are moved bucket by bucket with atomic swaps, so a count lands in
//! exactly one of the two slots. A request whose clock reading is older than its slot's epoch (it
//! was descheduled across a boundary) records into the newer slot. A snapshot waits for claimed
//! slots too, but one taken while counts move between slots it has and has not read yet may miss or
//! double-count part of a slot. These errors are confined to one slot boundary. Counts dropped on
//! purpose are those older than the longest window, and counts past a coarse bucket's 2³² − 1.
//!
//! # What is counted
//!
//! `count` is calls with a known outcome (successes and failures), each with its latency; `errors`
//! is those [`Classify`] called failures (latency classification, e.g. `SlowCalls`, applies).
//! [`Outcome::Ignored`] calls — palisade's own local refusals (a full bulkhead, a rate limit, an open
//! breaker further in) and cancelled calls — are counted apart in `ignored`, without latency: they
//! say nothing about the service, and shedding must not look like the service getting faster.
//!
//! # Memory
//!
//! Fixed at construction: `windows × slots × (4 bytes × buckets + ~200)` per signal. With the
//! defaults (3 windows, 10 slots, 1,102 buckets) that is about 141 KB per signal
//! ([`RecorderConfig::bytes_per_signal`]); a [`Recorders`] registry holds at most
//! [`max_signals`](Recorders::max_signals) of them (default 64: about 9 MB).

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{
    AtomicU64,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use palisade_core::classify::{
    Classified, Classify, ClassifyBody, ClassifyEos, Failure, Grpc, OnOutcome, Outcome,
};
use palisade_core::config::BuildError;
use palisade_core::deadline::Scope;
use palisade_core::error::BoxError;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::sketch::{duration_nanos, AtomicSketch, Histogram, Mapping};

const LAYER: &str = "latency recorder";

/// A slot's epoch before it was ever used.
const EMPTY: u64 = 0;
/// A slot's epoch while one request moves its counts out.
const CLAIMED: u64 = u64::MAX;

/// How a [`Recorder`] slices time and latency: windows, slots per window, sketch accuracy and range.
/// Built with [`RecorderConfig::builder`]; [`Default`] is 10 s / 1 min / 5 min windows of 10 slots
/// each, 1 % relative accuracy over 1 µs to 1 h.
#[derive(Clone, Debug, PartialEq)]
pub struct RecorderConfig {
    windows: Box<[Duration]>,
    slots: u32,
    mapping: Mapping,
}

impl RecorderConfig {
    /// The most windows a recorder may have.
    pub const MAX_WINDOWS: usize = 8;
    /// The most slots per window.
    pub const MAX_SLOTS: u32 = 120;
    /// The shortest slot.
    pub const MIN_SLOT: Duration = Duration::from_millis(1);
    /// The longest slot of the shortest window (5 min): requests are recorded into its slots, whose
    /// bucket counters are 32 bits — at most 2³² − 1 values in one bucket of one slot, i.e. over
    /// 14 million requests per second of one latency. (Coarser windows may have longer slots: their
    /// counts are added off the request path, saturating.)
    pub const MAX_SLOT: Duration = Duration::from_secs(300);
    /// The most memory one signal may take, in bytes (16 MiB).
    pub const MAX_SIGNAL_BYTES: usize = 16 << 20;

    /// A builder starting from the defaults.
    pub fn builder() -> RecorderBuilder {
        RecorderBuilder::default()
    }

    /// The windows, shortest first.
    pub fn windows(&self) -> &[Duration] {
        &self.windows
    }

    /// Slots per window.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// The sketch's bucket mapping (relative accuracy and range).
    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// The memory of one window's slots, in bytes.
    pub fn bytes_per_window(&self) -> usize {
        self.slots as usize * (self.mapping.sketch_bytes() + std::mem::size_of::<Slot>())
    }

    /// The memory of one signal (every window), in bytes.
    pub fn bytes_per_signal(&self) -> usize {
        self.windows.len() * self.bytes_per_window() + std::mem::size_of::<Inner>()
    }
}

impl Default for RecorderConfig {
    fn default() -> Self {
        RecorderBuilder::default()
            .build()
            .expect("the default recorder config is valid")
    }
}

/// Builds a [`RecorderConfig`]; every setting is checked in [`build`](Self::build).
#[derive(Clone, Debug)]
pub struct RecorderBuilder {
    windows: Vec<Duration>,
    slots: u32,
    alpha: f64,
    min: Duration,
    max: Duration,
}

impl Default for RecorderBuilder {
    fn default() -> Self {
        RecorderBuilder {
            windows: vec![
                Duration::from_secs(10),
                Duration::from_secs(60),
                Duration::from_secs(300),
            ],
            slots: 10,
            alpha: Mapping::DEFAULT_RELATIVE_ACCURACY,
            min: Mapping::DEFAULT_MIN,
            max: Mapping::DEFAULT_MAX,
        }
    }
}

impl RecorderBuilder {
    /// The sliding windows (default 10 s, 1 min, 5 min), in any order; duplicates are merged. Each must
    /// divide into [`slots`](Self::slots) slots of whole nanoseconds of at least
    /// [`MIN_SLOT`](RecorderConfig::MIN_SLOT), the shortest window's slots must be at most
    /// [`MAX_SLOT`](RecorderConfig::MAX_SLOT), and each window's slot must be a whole multiple of the
    /// next shorter window's (its slots nest in them): with 10 slots, 10 s / 1 min / 5 min have 1 s,
    /// 6 s and 30 s slots.
    pub fn windows(mut self, windows: impl IntoIterator<Item = Duration>) -> Self {
        self.windows = windows.into_iter().collect();
        self
    }

    /// Slots per window (default 10, at most [`MAX_SLOTS`](RecorderConfig::MAX_SLOTS)): a window
    /// covers between `(slots − 1) / slots` of its length and all of it.
    pub fn slots(mut self, slots: u32) -> Self {
        self.slots = slots;
        self
    }

    /// The sketch's relative accuracy `α` (default 0.01: quantiles within 1 %). Memory grows as
    /// `1 / α`.
    pub fn relative_accuracy(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }

    /// The latency range kept at full accuracy (default 1 µs to 1 h); latencies outside it are
    /// clamped into the edge buckets and counted.
    pub fn range(mut self, min: Duration, max: Duration) -> Self {
        self.min = min;
        self.max = max;
        self
    }

    /// Checks every setting.
    pub fn build(self) -> Result<RecorderConfig, BuildError> {
        let mapping = Mapping::new(self.alpha, self.min, self.max)?;
        if !(2..=RecorderConfig::MAX_SLOTS).contains(&self.slots) {
            return Err(BuildError::new(
                LAYER,
                "slots",
                format!("{} is not in 2..={}", self.slots, RecorderConfig::MAX_SLOTS),
            ));
        }
        let mut windows = self.windows;
        windows.sort();
        windows.dedup();
        if windows.is_empty() || windows.len() > RecorderConfig::MAX_WINDOWS {
            return Err(BuildError::new(
                LAYER,
                "windows",
                format!(
                    "{} windows; between 1 and {} are allowed",
                    windows.len(),
                    RecorderConfig::MAX_WINDOWS
                ),
            ));
        }
        let slots = u64::from(self.slots);
        let mut previous: Option<u64> = None;
        for w in &windows {
            let nanos = duration_nanos(*w);
            if nanos % slots != 0 || nanos / slots < duration_nanos(RecorderConfig::MIN_SLOT) {
                return Err(BuildError::new(
                    LAYER,
                    "windows",
                    format!(
                        "{w:?} does not divide into {slots} slots of whole nanoseconds of at least {:?}",
                        RecorderConfig::MIN_SLOT
                    ),
                ));
            }
            let width = nanos / slots;
            if previous.is_none() && width > duration_nanos(RecorderConfig::MAX_SLOT) {
                return Err(BuildError::new(
                    LAYER,
                    "windows",
                    format!(
                        "the slots of the shortest window, {w:?} ({:?}), are longer than {:?}",
                        Duration::from_nanos(width),
                        RecorderConfig::MAX_SLOT
                    ),
                ));
            }
            if let Some(p) = previous {
                if width % p != 0 {
                    return Err(BuildError::new(
                        LAYER,
                        "windows",
                        format!(
                            "the slots of {w:?} ({:?}) are not a whole multiple of the next shorter window's ({:?})",
                            Duration::from_nanos(width),
                            Duration::from_nanos(p)
                        ),
                    ));
                }
            }
            previous = Some(width);
        }
        let config = RecorderConfig {
            windows: windows.into_boxed_slice(),
            slots: self.slots,
            mapping,
        };
        if config.bytes_per_signal() > RecorderConfig::MAX_SIGNAL_BYTES {
            return Err(BuildError::new(
                LAYER,
                "slots",
                format!(
                    "{} bytes per signal is over the limit of {}",
                    config.bytes_per_signal(),
                    RecorderConfig::MAX_SIGNAL_BYTES
                ),
            ));
        }
        Ok(config)
    }
}

/// One time slot of one window's ring.
struct Slot {
    /// `EMPTY`, `CLAIMED`, or the slot's epoch + 1 (epoch = slot start since the origin / width).
    /// Read by every call; beside the sketch's read-only header.
    epoch: AtomicU64,
    sketch: AtomicSketch,
    /// Written by failed and ignored calls: on a line apart from `epoch`.
    counts: CachePadded<SlotCounts>,
}

#[derive(Default)]
struct SlotCounts {
    errors: AtomicU64,
    ignored: AtomicU64,
}

impl Slot {
    fn new(mapping: Mapping) -> Self {
        Slot {
            epoch: AtomicU64::new(EMPTY),
            sketch: AtomicSketch::new(mapping),
            counts: CachePadded(SlotCounts::default()),
        }
    }

    /// Moves every count into `dst` (or discards them), calling `pause` (a test hook) midway.
    fn drain_into(&self, dst: Option<&Slot>, pause: Option<&dyn Fn()>) {
        self.sketch
            .drain_into_pausing(dst.map(|d| &d.sketch), pause);
        for (src, d) in [
            (&self.counts.errors, dst.map(|d| &d.counts.errors)),
            (&self.counts.ignored, dst.map(|d| &d.counts.ignored)),
        ] {
            if src.load(Relaxed) != 0 {
                let v = src.swap(0, Relaxed);
                if let Some(d) = d {
                    d.fetch_add(v, Relaxed);
                }
            }
        }
    }
}

/// One window's ring of slots.
struct Ring {
    window: Duration,
    /// Slot width in nanoseconds.
    width: u64,
    slots: Box<[Slot]>,
}

impl Ring {
    #[inline]
    fn slot(&self, epoch: u64) -> &Slot {
        &self.slots[(epoch % self.slots.len() as u64) as usize]
    }
}

/// The lifetime totals of a recorder (see [`Totals`]).
#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    ignored: AtomicU64,
    /// Saturated once at or above `LATENCY_SATURATED` (see `add_latency`).
    latency_micros: AtomicU64,
}

/// The latency sum, in microseconds, from which [`Totals::latency_sum`] reads as saturated.
const LATENCY_SATURATED: u64 = 1 << 63;

impl Counters {
    /// Adds a latency to the sum, saturating: once the sum is at or above `LATENCY_SATURATED`
    /// (2⁶³ µs, 292,000 years) it reads as saturated and is kept there, with no compare-and-swap
    /// on the request path. One add is at most `u64::MAX / 1000` µs (2⁵⁴), so the 2⁶³ µs of
    /// headroom above the threshold would take 500 threads adding huge latencies in the same
    /// instant to wrap.
    #[inline]
    fn add_latency(&self, micros: u64) {
        let before = self.latency_micros.fetch_add(micros, Relaxed);
        if before >= LATENCY_SATURATED {
            self.saturate_latency();
        }
    }

    #[cold]
    #[inline(never)]
    fn saturate_latency(&self) {
        self.latency_micros.store(LATENCY_SATURATED, Relaxed);
    }
}

/// A value on a cache line (64 bytes) of its own.
#[repr(align(64))]
struct CachePadded<T>(T);

impl<T> std::ops::Deref for CachePadded<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.0
    }
}

struct Inner {
    name: Box<str>,
    origin: Instant,
    config: RecorderConfig,
    /// Shortest window first; requests record into `rings[0]`.
    rings: Box<[Ring]>,
    /// The finest ring's current slot, as last located: `epoch << 16 | index`. Saves the divisions
    /// that locate a slot on every call but the first of each slot. Read by every call, written
    /// once per slot: on a cache line of its own, apart from the counters every call writes.
    current: CachePadded<AtomicU64>,
    /// The lifetime totals, written by every call: apart from the read-mostly fields above.
    totals: CachePadded<Counters>,
    /// A test hook: called with the ring index halfway through moving a slot of that ring out.
    drain_hook: OnceLock<DrainHook>,
}

type DrainHook = Box<dyn Fn(usize) + Send + Sync>;

/// Records request count, errors and latency for one named signal, over sliding windows. Cheap to
/// clone (clones share the counts). See the [module docs](self) for windows, boundaries and memory.
///
/// Recording is allocation-free and, but for the first requests of a slot (see "Boundaries" in the
/// [module docs](self)), wait-free: two atomic loads (the current slot, its epoch) and three relaxed
/// adds (the latency bucket, the lifetime request count, the lifetime latency sum; two more for a
/// failure). The read-mostly fields (the current slot, a slot's epoch) are on cache lines apart
/// from the counters every call writes. About 12 ns on the development machine
/// (`heal_recorder_parts/record_at`).
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

impl Recorder {
    /// A recorder named `name` (e.g. a route, `"GET /orders"`, or an upstream), its windows starting
    /// now. Prefer [`Recorders::recorder`], which bounds how many exist.
    pub fn new(name: &str, config: &RecorderConfig) -> Self {
        let mapping = &config.mapping;
        let rings = config
            .windows
            .iter()
            .map(|&window| Ring {
                window,
                width: duration_nanos(window) / u64::from(config.slots),
                slots: (0..config.slots)
                    .map(|_| Slot::new(mapping.clone()))
                    .collect(),
            })
            .collect();
        Recorder {
            inner: Arc::new(Inner {
                name: name.into(),
                origin: Instant::now(),
                config: config.clone(),
                rings,
                current: CachePadded(AtomicU64::new(0)),
                totals: CachePadded(Counters::default()),
                drain_hook: OnceLock::new(),
            }),
        }
    }

    /// The signal's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The configuration.
    pub fn config(&self) -> &RecorderConfig {
        &self.inner.config
    }

    /// The windows, shortest first.
    pub fn windows(&self) -> &[Duration] {
        &self.inner.config.windows
    }

    /// A layer that records every call of the services it wraps into this recorder.
    pub fn layer(&self) -> RecordLayer {
        RecordLayer::new(self.clone())
    }

    /// Records one call that took `latency` and ended with `outcome`, now.
    #[inline]
    pub fn record(&self, latency: Duration, outcome: Outcome) {
        self.record_at(Instant::now(), latency, outcome);
    }

    /// Records a success that took `latency`, now.
    pub fn record_success(&self, latency: Duration) {
        self.record(latency, Outcome::Success);
    }

    /// Records a failure that took `latency`, now.
    pub fn record_failure(&self, latency: Duration) {
        self.record(latency, Outcome::Failure(Failure::Error));
    }

    /// Records one call that took `latency` and ended with `outcome`, into the slot of time `at`
    /// (for a caller that already read the clock). [`Outcome::Ignored`] is counted apart, without
    /// latency (see [What is counted](self#what-is-counted)).
    #[inline]
    pub fn record_at(&self, at: Instant, latency: Duration, outcome: Outcome) {
        let inner = &*self.inner;
        let now = duration_nanos(at.saturating_duration_since(inner.origin));
        let ring = &inner.rings[0];
        let current = inner.current.load(Relaxed);
        let (epoch, index) = if now.wrapping_sub((current >> 16) * ring.width) < ring.width {
            (current >> 16, (current & 0xFFFF) as usize)
        } else {
            inner.locate(now)
        };
        let mut slot = &ring.slots[index];
        if slot.epoch.load(Acquire) != epoch + 1 {
            slot = inner.claim(index, epoch, now);
        }
        match outcome {
            Outcome::Ignored => {
                slot.counts.ignored.fetch_add(1, Relaxed);
                inner.totals.ignored.fetch_add(1, Relaxed);
            }
            outcome => {
                let nanos = duration_nanos(latency);
                slot.sketch.record_nanos(nanos);
                let totals = &*inner.totals;
                totals.requests.fetch_add(1, Relaxed);
                totals.add_latency(nanos / 1000);
                if outcome.is_failure() {
                    slot.counts.errors.fetch_add(1, Relaxed);
                    totals.errors.fetch_add(1, Relaxed);
                }
            }
        }
    }

    /// The window of length `window` (one of [`windows`](Self::windows)) as of now; `None` if there is
    /// no such window.
    pub fn snapshot(&self, window: Duration) -> Option<WindowSnapshot> {
        self.snapshot_at(window, Instant::now())
    }

    /// The window of length `window` as of `at`; `None` if there is no such window.
    pub fn snapshot_at(&self, window: Duration, at: Instant) -> Option<WindowSnapshot> {
        let k = self.inner.rings.iter().position(|r| r.window == window)?;
        Some(self.inner.snapshot(k, at))
    }

    /// Every window as of now, shortest first.
    pub fn snapshots(&self) -> Vec<WindowSnapshot> {
        let at = Instant::now();
        (0..self.inner.rings.len())
            .map(|k| self.inner.snapshot(k, at))
            .collect()
    }

    /// A test hook: `hook(k)` runs halfway through every move of a ring-`k` slot's counts out (into
    /// the next coarser ring, or discarded past the last), while the slot is claimed — so a test can
    /// stall the claiming thread there. Set once per recorder (`false` if one already was). Not
    /// part of the API.
    #[doc(hidden)]
    pub fn __set_drain_hook(&self, hook: impl Fn(usize) + Send + Sync + 'static) -> bool {
        self.inner.drain_hook.set(Box::new(hook)).is_ok()
    }

    /// The lifetime totals (monotonic: never reset, not windowed).
    pub fn totals(&self) -> Totals {
        let t = &*self.inner.totals;
        let micros = t.latency_micros.load(Relaxed);
        Totals {
            requests: t.requests.load(Relaxed),
            errors: t.errors.load(Relaxed),
            ignored: t.ignored.load(Relaxed),
            latency_sum: if micros >= LATENCY_SATURATED {
                Totals::LATENCY_SUM_MAX
            } else {
                Duration::from_micros(micros)
            },
        }
    }
}

/// Spins this many times, then yields, while another thread moves a slot's counts out.
const SETTLE_SPINS: u32 = 64;

/// Waits until `epoch` is not `CLAIMED`, and returns its value. The wait has no bound, but the
/// claiming thread's work has one: one pass over a slot's buckets per ring it moves counts through,
/// and it waits only on coarser rings than the one it holds (so claims cannot wait in a cycle). A
/// claimer that is descheduled makes those waiting yield until it runs again.
fn settle(epoch: &AtomicU64) -> u64 {
    let mut spins = 0;
    loop {
        let e = epoch.load(Acquire);
        if e != CLAIMED {
            return e;
        }
        if spins < SETTLE_SPINS {
            std::hint::spin_loop();
            spins += 1;
        } else {
            std::thread::yield_now();
        }
    }
}

impl Inner {
    /// The slot a request of `epoch` records into, the finest ring's slot `index` not being live
    /// for `epoch`: claims it if stale (moving its old counts on). While another thread moves its
    /// old counts out, the request must not write among them (they may be dropped or moved to an
    /// older time): it records into the previous slot if that one is live (one slot early, but
    /// counted), else waits for the move to end. A slot already holding a newer time is recorded
    /// into as it is (see "Boundaries").
    #[cold]
    #[inline(never)]
    fn claim(&self, index: usize, epoch: u64, now: u64) -> &Slot {
        let ring = &self.rings[0];
        let slot = &ring.slots[index];
        let mut seen = slot.epoch.load(Acquire);
        loop {
            if seen == CLAIMED {
                let n = ring.slots.len();
                let previous = &ring.slots[(index + n - 1) % n];
                if epoch > 0 && previous.epoch.load(Acquire) == epoch {
                    return previous;
                }
                seen = settle(&slot.epoch);
                continue;
            }
            if seen == epoch + 1 || (seen != EMPTY && seen - 1 > epoch) {
                return slot;
            }
            match slot.epoch.compare_exchange(seen, CLAIMED, AcqRel, Acquire) {
                Ok(_) => {
                    if seen != EMPTY {
                        self.fold(0, slot, seen - 1, now);
                    }
                    slot.epoch.store(epoch + 1, Release);
                    return slot;
                }
                Err(e) => seen = e,
            }
        }
    }

    /// The finest ring's epoch and slot index at `now`, remembered for the next calls.
    #[cold]
    #[inline(never)]
    fn locate(&self, now: u64) -> (u64, usize) {
        let ring = &self.rings[0];
        let epoch = now / ring.width;
        let index = (epoch % ring.slots.len() as u64) as usize;
        // Any thread's value is a valid pair; a stale one only sends the next call here again. An
        // epoch past 2^48 (never reached: 8,900 years of 1 ms slots) is not cached.
        if epoch < 1 << 48 {
            self.current.store(epoch << 16 | index as u64, Relaxed);
        }
        (epoch, index)
    }

    /// Moves the counts of `src` (ring `k`, `epoch`; claimed by the caller) into the coarser ring
    /// slot covering the same time, skipping rings whose window that time has left; drops them past
    /// the last ring. The destination is claimed for the move (after its own old counts, if any,
    /// have moved on), so nothing else moves it while counts land in it.
    fn fold(&self, k: usize, src: &Slot, epoch: u64, now: u64) {
        let start = epoch.saturating_mul(self.rings[k].width);
        let pause = self.pause(k);
        let pause = pause.as_ref().map(|p| p as &dyn Fn());
        'rings: for (j, ring) in self.rings.iter().enumerate().skip(k + 1) {
            let e = start / ring.width;
            if e + (ring.slots.len() as u64) <= now / ring.width {
                continue; // already out of this window
            }
            let dst = ring.slot(e);
            let mut seen = dst.epoch.load(Acquire);
            loop {
                if seen == CLAIMED {
                    seen = settle(&dst.epoch);
                    continue;
                }
                if seen != EMPTY && seen - 1 > e {
                    continue 'rings; // the slot holds newer time: this time is older than its ring
                }
                match dst.epoch.compare_exchange(seen, CLAIMED, AcqRel, Acquire) {
                    Ok(_) => break,
                    Err(x) => seen = x,
                }
            }
            if seen != EMPTY && seen != e + 1 {
                self.fold(j, dst, seen - 1, now);
            }
            src.drain_into(Some(dst), pause);
            dst.epoch.store(e + 1, Release);
            return;
        }
        src.drain_into(None, pause);
    }

    /// The test hook for a move out of ring `k`, if one is set.
    fn pause(&self, k: usize) -> Option<impl Fn() + '_> {
        self.drain_hook.get().map(move |hook| move || hook(k))
    }

    fn snapshot(&self, k: usize, at: Instant) -> WindowSnapshot {
        let now = duration_nanos(at.saturating_duration_since(self.origin));
        let ring = &self.rings[k];
        let current = now / ring.width;
        let first = (current + 1).saturating_sub(ring.slots.len() as u64);
        let (from, to) = (
            first.saturating_mul(ring.width),
            (current + 1).saturating_mul(ring.width),
        );
        // From the start of the oldest slot to `now`: the slots before the current one, and the
        // current one so far. Before the recorder has run for a window, the oldest slot starts
        // before the origin: that time is covered, with no requests in it.
        let covered = (ring.slots.len() as u64 - 1)
            .saturating_mul(ring.width)
            .saturating_add(now % ring.width);
        let mut histogram = Histogram::new(self.config.mapping.clone());
        let (mut errors, mut ignored) = (0u64, 0u64);
        for r in &self.rings[..=k] {
            for slot in r.slots.iter() {
                // A claimed slot is waited for: its old counts are then in a coarser ring (read
                // after this one), and the slot holds its new time.
                let e = settle(&slot.epoch);
                if e == EMPTY {
                    continue;
                }
                let start = (e - 1).saturating_mul(r.width);
                if start >= from && start < to {
                    slot.sketch.add_to(&mut histogram);
                    errors += slot.counts.errors.load(Relaxed);
                    ignored += slot.counts.ignored.load(Relaxed);
                }
            }
        }
        let count = histogram.count();
        let error_rate = if count == 0 {
            0.0
        } else {
            (errors as f64 / count as f64).min(1.0)
        };
        WindowSnapshot {
            window: ring.window,
            covered: Duration::from_nanos(covered),
            at,
            count,
            errors,
            ignored,
            error_rate,
            p50: histogram.quantile(0.5),
            p95: histogram.quantile(0.95),
            p99: histogram.quantile(0.99),
            histogram,
        }
    }
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("name", &self.inner.name)
            .field("windows", &self.inner.config.windows)
            .field("totals", &self.totals())
            .finish()
    }
}

/// A recorder's lifetime totals: monotonic counters for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Calls with a known outcome (successes and failures).
    pub requests: u64,
    /// Failures among them.
    pub errors: u64,
    /// Calls counted apart: [`Outcome::Ignored`] (local refusals, cancellations).
    pub ignored: u64,
    /// The sum of the recorded latencies, each rounded down to a microsecond; saturating at
    /// [`LATENCY_SUM_MAX`](Self::LATENCY_SUM_MAX).
    pub latency_sum: Duration,
}

impl Totals {
    /// The largest [`latency_sum`](Self::latency_sum): 2⁶³ µs (about 292,000 years), which a sum
    /// of huge latencies (say `Duration::MAX`, counted as 584 years) reads as once it gets there.
    pub const LATENCY_SUM_MAX: Duration = Duration::from_micros(LATENCY_SATURATED);
}

/// One window of a [`Recorder`], read at one time.
#[derive(Clone, Debug)]
pub struct WindowSnapshot {
    /// The window's length.
    pub window: Duration,
    /// When it was read.
    pub at: Instant,
    /// The span of time the counts cover: from the start of the window's oldest slot to `at`,
    /// between `(slots − 1) / slots` of [`window`](Self::window) and all of it (see [Windows and
    /// slots](self#windows-and-slots)). Divide by it, not by `window`, for a rate. Time before the
    /// recorder existed counts as covered, with no requests.
    pub covered: Duration,
    /// Calls with a known outcome in the window (each with a latency).
    pub count: u64,
    /// Failures among them.
    pub errors: u64,
    /// [`Outcome::Ignored`] calls in the window (not in `count`).
    pub ignored: u64,
    /// `errors / count`, in `0..=1`; 0 when `count` is 0.
    pub error_rate: f64,
    /// The median latency; `None` if `count` is 0.
    pub p50: Option<Duration>,
    /// The 95th percentile latency.
    pub p95: Option<Duration>,
    /// The 99th percentile latency.
    pub p99: Option<Duration>,
    histogram: Histogram,
}

impl WindowSnapshot {
    /// The `q`-quantile latency (`q` in `[0, 1]`), within the sketch's relative accuracy; `None` if
    /// `count` is 0 or `q` is `NaN`.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        self.histogram.quantile(q)
    }

    /// The merged latency histogram of the window.
    pub fn histogram(&self) -> &Histogram {
        &self.histogram
    }
}

/// Why a [`Recorders`] registry refused a name.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryError {
    /// The registry already holds its maximum of signals.
    Full {
        /// The maximum.
        max: usize,
    },
    /// The name is empty, longer than [`Recorders::MAX_NAME_LEN`] bytes, or has a control character.
    InvalidName,
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryError::Full { max } => {
                write!(f, "the recorder registry is full ({max} signals)")
            }
            RegistryError::InvalidName => write!(
                f,
                "a signal name must be 1 to {} bytes with no control characters",
                Recorders::MAX_NAME_LEN
            ),
        }
    }
}

impl StdError for RegistryError {}

struct Registry {
    config: RecorderConfig,
    max: usize,
    list: RwLock<Vec<Recorder>>,
}

/// A bounded registry of named [`Recorder`]s sharing one configuration. Cheap to clone (clones share
/// the registry). Lookups and registration take a lock — they happen when stacks are built and when
/// the control plane or a metrics scrape reads, never per request.
///
/// ```
/// use palisade_heal::signals::recorder::{RecorderConfig, Recorders, RegistryError};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let recorders = Recorders::with_max_signals(RecorderConfig::default(), 2).unwrap();
/// let a = recorders.recorder("a").unwrap();
/// assert_eq!(recorders.recorder("a").unwrap().name(), a.name()); // the same signal
/// recorders.recorder("b").unwrap();
/// assert_eq!(recorders.recorder("c").unwrap_err(), RegistryError::Full { max: 2 });
/// assert_eq!(recorders.list().len(), 2);
/// # }
/// ```
#[derive(Clone)]
pub struct Recorders {
    inner: Arc<Registry>,
}

impl Recorders {
    /// The default maximum number of signals.
    pub const DEFAULT_MAX_SIGNALS: usize = 64;
    /// The largest maximum a registry may be given.
    pub const MAX_SIGNALS: usize = 4096;
    /// The longest signal name, in bytes.
    pub const MAX_NAME_LEN: usize = 128;

    /// A registry of at most [`DEFAULT_MAX_SIGNALS`](Self::DEFAULT_MAX_SIGNALS) signals.
    pub fn new(config: RecorderConfig) -> Self {
        Recorders {
            inner: Arc::new(Registry {
                config,
                max: Self::DEFAULT_MAX_SIGNALS,
                list: RwLock::new(Vec::new()),
            }),
        }
    }

    /// A registry of at most `max` signals (1 to [`MAX_SIGNALS`](Self::MAX_SIGNALS)). Its memory is at
    /// most `max ×` [`RecorderConfig::bytes_per_signal`].
    pub fn with_max_signals(config: RecorderConfig, max: usize) -> Result<Self, BuildError> {
        if !(1..=Self::MAX_SIGNALS).contains(&max) {
            return Err(BuildError::new(
                LAYER,
                "max_signals",
                format!("{max} is not in 1..={}", Self::MAX_SIGNALS),
            ));
        }
        Ok(Recorders {
            inner: Arc::new(Registry {
                config,
                max,
                list: RwLock::new(Vec::new()),
            }),
        })
    }

    /// The recorder named `name`, created if it does not exist yet.
    pub fn recorder(&self, name: &str) -> Result<Recorder, RegistryError> {
        if name.is_empty() || name.len() > Self::MAX_NAME_LEN || name.chars().any(char::is_control)
        {
            return Err(RegistryError::InvalidName);
        }
        if let Some(r) = self.get(name) {
            return Ok(r);
        }
        let mut list = self
            .inner
            .list
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = list.iter().find(|r| r.name() == name) {
            return Ok(r.clone());
        }
        if list.len() >= self.inner.max {
            return Err(RegistryError::Full {
                max: self.inner.max,
            });
        }
        let r = Recorder::new(name, &self.inner.config);
        list.push(r.clone());
        Ok(r)
    }

    /// A layer recording into the recorder named `name` (created if needed).
    pub fn layer(&self, name: &str) -> Result<RecordLayer, RegistryError> {
        self.recorder(name).map(RecordLayer::new)
    }

    /// The recorder named `name`, if there is one.
    pub fn get(&self, name: &str) -> Option<Recorder> {
        self.inner
            .list
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|r| r.name() == name)
            .cloned()
    }

    /// Every recorder, in registration order.
    pub fn list(&self) -> Vec<Recorder> {
        self.inner
            .list
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The number of signals.
    pub fn len(&self) -> usize {
        self.inner
            .list
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether there is no signal yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The maximum number of signals.
    pub fn max_signals(&self) -> usize {
        self.inner.max
    }

    /// The configuration every recorder of this registry uses.
    pub fn config(&self) -> &RecorderConfig {
        &self.inner.config
    }
}

impl fmt::Debug for Recorders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorders")
            .field("signals", &self.len())
            .field("max_signals", &self.inner.max)
            .finish()
    }
}

struct Shared<C> {
    recorder: Recorder,
    classifier: C,
}

/// A [`Layer`] that records every call into one [`Recorder`]: latency, and the outcome by a
/// [`Classify`] (default [`Grpc`]: an `Err`, HTTP 5xx, a gRPC server-error code in headers or
/// trailers — the circuit breaker's default). All services it makes share the recorder.
///
/// # What is measured
///
/// The latency runs from `call` to the response future resolving (the response head); the body's
/// transfer is not included. The outcome is recorded when the future resolves — except when the
/// classifier needs the end of the body (gRPC trailers): then the call is recorded at the end of the
/// body, still with the latency of the head, and a body dropped before its end records the call as
/// ignored.
///
/// # Cancellation
///
/// A response future dropped before it resolves records the call as [`Outcome::Ignored`] (counted
/// in `ignored`, no latency): the client went away and the call says nothing about the service.
/// One exception: when the palisade timeout the call runs under drops it (the
/// [`Scope`] current at `call` is expiring), the call is a
/// **failure**, with its latency up to the drop — the service was too slow. A timeout of another
/// stack (say a server's, around a handler that calls through this client stack) does not count.
///
/// ```
/// use std::time::Duration;
/// use http::{Request, Response};
/// use palisade_heal::signals::recorder::{RecorderConfig, Recorders};
/// use tower::{service_fn, Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let recorders = Recorders::new(RecorderConfig::default());
/// let svc = recorders.layer("GET /").unwrap().layer(service_fn(|_req: Request<()>| async {
///     Ok::<_, std::convert::Infallible>(Response::builder().status(503).body(String::new()).unwrap())
/// }));
/// let res = svc.oneshot(Request::new(())).await.unwrap();
/// assert_eq!(res.status(), 503);
/// let w = recorders.get("GET /").unwrap().snapshot(Duration::from_secs(10)).unwrap();
/// assert_eq!((w.count, w.errors, w.error_rate), (1, 1, 1.0));
/// # }
/// ```
pub struct RecordLayer<C = Grpc> {
    shared: Arc<Shared<C>>,
}

impl RecordLayer {
    /// Records into `recorder`, classifying with [`Grpc`].
    pub fn new(recorder: Recorder) -> Self {
        RecordLayer {
            shared: Arc::new(Shared {
                recorder,
                classifier: Grpc::new(),
            }),
        }
    }
}

impl<C> RecordLayer<C> {
    /// Classifies outcomes with `classifier` (see `palisade_core::classify`).
    pub fn classify<C2>(self, classifier: C2) -> RecordLayer<C2> {
        RecordLayer {
            shared: Arc::new(Shared {
                recorder: self.shared.recorder.clone(),
                classifier,
            }),
        }
    }

    /// The recorder.
    pub fn recorder(&self) -> &Recorder {
        &self.shared.recorder
    }
}

impl<C> Clone for RecordLayer<C> {
    fn clone(&self) -> Self {
        RecordLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<C> fmt::Debug for RecordLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordLayer")
            .field("recorder", &self.shared.recorder.name())
            .finish()
    }
}

impl<S, C> Layer<S> for RecordLayer<C> {
    type Service = Record<S, C>;

    fn layer(&self, inner: S) -> Record<S, C> {
        Record {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// A service whose calls are recorded. Made by [`RecordLayer`]; `poll_ready` is the inner service's.
pub struct Record<S, C = Grpc> {
    inner: S,
    shared: Arc<Shared<C>>,
}

impl<S: Clone, C> Clone for Record<S, C> {
    fn clone(&self) -> Self {
        Record {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for Record<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("inner", &self.inner)
            .field("recorder", &self.shared.recorder.name())
            .finish()
    }
}

impl<S, C, ReqB, ResB> Service<Request<ReqB>> for Record<S, C>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    C: Classify<Response<ResB>>,
    ResB: http_body::Body,
{
    type Response = Response<RecordBody<ResB, C>>;
    type Error = BoxError;
    type Future = RecordFuture<S::Future, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let timing = Timing {
            shared: Some(self.shared.clone()),
            start: Instant::now(),
            scope: Scope::current(),
        };
        RecordFuture {
            fut: self.inner.call(req),
            timing: Some(timing),
        }
    }
}

/// Names a classifier's end-of-stream type for a body type (a helper for [`RecordBody`]).
pub trait EosOf<B> {
    /// The classifier's end-of-stream verdict type.
    type Eos: ClassifyEos;
}

impl<B, C: Classify<Response<B>>> EosOf<B> for C {
    type Eos = C::Eos;
}

/// The response body of [`Record`]: the inner body, recording the call at its end when the verdict
/// needs the end of the stream (gRPC trailers); passed through untouched otherwise.
pub type RecordBody<B, C> = ClassifyBody<B, <C as EosOf<B>>::Eos, AtEndOfStream<C>>;

/// Records a call whose verdict came at the end of its body (see [`RecordBody`]).
pub struct AtEndOfStream<C> {
    shared: Arc<Shared<C>>,
    latency: Duration,
    /// The classifier's latency verdict, taken at the head.
    slow: Option<Failure>,
}

impl<C> OnOutcome for AtEndOfStream<C> {
    fn on_outcome(self, outcome: Outcome) {
        self.shared
            .recorder
            .record(self.latency, outcome.with_latency(self.slow));
    }
}

impl<C> fmt::Debug for AtEndOfStream<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AtEndOfStream")
            .field("latency", &self.latency)
            .finish()
    }
}

/// The call's start; records it as dropped unless disarmed.
struct Timing<C> {
    shared: Option<Arc<Shared<C>>>,
    start: Instant,
    /// The palisade timeout the call runs under, if any.
    scope: Option<Scope>,
}

impl<C> Drop for Timing<C> {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            dropped(&shared, self.start, self.scope);
        }
    }
}

/// A response future dropped before it resolved: ignored, or a failure if palisade's timeout cut it.
#[cold]
#[inline(never)]
fn dropped<C>(shared: &Shared<C>, start: Instant, scope: Option<Scope>) {
    let now = Instant::now();
    let outcome = if scope.is_some_and(Scope::is_expiring) {
        Outcome::Failure(Failure::Error)
    } else {
        Outcome::Ignored
    };
    shared
        .recorder
        .record_at(now, now.saturating_duration_since(start), outcome);
}

pin_project! {
    /// The response future of [`Record`].
    pub struct RecordFuture<F, C> {
        #[pin]
        fut: F,
        timing: Option<Timing<C>>,
    }
}

impl<F, C> fmt::Debug for RecordFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordFuture").finish_non_exhaustive()
    }
}

impl<F, C, B, E> Future for RecordFuture<F, C>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    C: Classify<Response<B>>,
    B: http_body::Body,
{
    type Output = Result<Response<RecordBody<B, C>>, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.fut.poll(cx));
        // Disarm the drop guard: the call is recorded here (or at the end of its body).
        let (shared, start) = match this.timing.take() {
            Some(mut t) => match t.shared.take() {
                Some(shared) => (shared, t.start),
                None => panic!("RecordFuture polled after completion"),
            },
            None => panic!("RecordFuture polled after completion"),
        };
        let end = Instant::now();
        let latency = end.saturating_duration_since(start);
        let c = &shared.classifier;
        Poll::Ready(match res {
            Ok(res) => match c.classify_response(&res) {
                Classified::Ready(outcome) => {
                    let outcome = outcome.with_latency(c.classify_latency(latency));
                    shared.recorder.record_at(end, latency, outcome);
                    Ok(res.map(ClassifyBody::ready))
                }
                Classified::AtEndOfStream(eos) => {
                    let slow = c.classify_latency(latency);
                    let report = AtEndOfStream {
                        shared,
                        latency,
                        slow,
                    };
                    Ok(res.map(|body| ClassifyBody::deferred(body, eos, report)))
                }
            },
            Err(e) => {
                let e = e.into();
                let outcome = c
                    .classify_error(&*e)
                    .with_latency(c.classify_latency(latency));
                shared.recorder.record_at(end, latency, outcome);
                Err(e)
            }
        })
    }
}
