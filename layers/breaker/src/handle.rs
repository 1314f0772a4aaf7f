//! Handles: read and steer breakers from admin code and tests. Synchronous, cheap to clone.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{BuildError, Thresholds};
use crate::machine;
use crate::shared::{mode_name, state_name, Circuit, Keyed};

/// Where a circuit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Calls pass; outcomes are counted.
    Closed,
    /// Calls are refused until the wait ends.
    Open,
    /// A limited number of probe calls pass.
    HalfOpen,
}

/// How an operator has set a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// The breaker works on its own.
    Normal,
    /// Every call is refused (state `Open`) until [`BreakerHandle::force_closed`] or `reset`.
    ForcedOpen,
    /// Every call passes; outcomes are still counted; no transitions.
    Disabled,
    /// The breaker counts and transitions (and reports them) but never refuses a call.
    MetricsOnly,
}

/// A snapshot of a circuit's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Counts {
    /// Calls in the count-based window (or the time window if there is no count window).
    pub window_calls: u32,
    /// Failures among them.
    pub window_failures: u32,
    /// Slow calls among them.
    pub window_slow: u32,
    /// Failures in a row, as of now.
    pub consecutive_failures: u32,
    /// Calls refused since the breaker was built or reset.
    pub rejected: u64,
    /// Consecutive trips without a successful close (drives the growing wait).
    pub trips: u32,
    /// Probe slots held right now (HalfOpen).
    pub probes_in_flight: u32,
}

/// The operations a handle needs, without the classifier's type.
trait Control: Send + Sync {
    fn word(&self) -> u64;
    fn counts(&self) -> Counts;
    fn open_remaining(&self) -> Option<Duration>;
    fn force(&self, state: u64, mode: u64, why: &'static str);
    fn clear_rejected(&self);
    fn name(&self) -> String;
    fn thresholds(&self) -> Thresholds;
    fn set_thresholds(&self, t: Thresholds) -> Result<(), BuildError>;
}

impl<C: Send + Sync> Control for Circuit<C> {
    fn word(&self) -> u64 {
        self.machine.word()
    }

    fn counts(&self) -> Counts {
        let m = &self.machine;
        let stats = m
            .calls_window
            .as_ref()
            .map(|w| w.stats())
            .or_else(|| {
                m.time_window
                    .as_ref()
                    .map(|w| w.stats(self.common.now() / 1_000_000_000))
            })
            .unwrap_or_default();
        Counts {
            window_calls: stats.calls,
            window_failures: stats.failures,
            window_slow: stats.slow,
            consecutive_failures: m.consecutive_failures(),
            rejected: self.rejected(),
            trips: m.trips(),
            probes_in_flight: machine::inflight_of(m.word()),
        }
    }

    fn open_remaining(&self) -> Option<Duration> {
        self.machine
            .open_remaining(self.common.now())
            .map(Duration::from_nanos)
    }

    fn force(&self, state: u64, mode: u64, why: &'static str) {
        let tr = self.machine.force(state, mode, why);
        self.publish(tr);
    }

    fn clear_rejected(&self) {
        Circuit::clear_rejected(self);
    }

    fn name(&self) -> String {
        self.common.name.to_string()
    }

    fn thresholds(&self) -> Thresholds {
        self.common.thresholds()
    }

    fn set_thresholds(&self, t: Thresholds) -> Result<(), BuildError> {
        self.common.set_thresholds(t)
    }
}

/// A handle to one circuit.
#[derive(Clone)]
pub struct BreakerHandle {
    circuit: Arc<dyn Control>,
}

impl BreakerHandle {
    pub(crate) fn new<C: Send + Sync + 'static>(circuit: Arc<Circuit<C>>) -> Self {
        BreakerHandle { circuit }
    }

    /// The circuit's state. A forced-open breaker is `Open`; disabled and metrics-only ones report the
    /// state they track.
    pub fn state(&self) -> CircuitState {
        match machine::state_of(self.circuit.word()) {
            machine::CLOSED => CircuitState::Closed,
            machine::OPEN => CircuitState::Open,
            _ => CircuitState::HalfOpen,
        }
    }

    /// The operator mode.
    pub fn mode(&self) -> Mode {
        match machine::mode_of(self.circuit.word()) {
            machine::NORMAL => Mode::Normal,
            machine::FORCED_OPEN => Mode::ForcedOpen,
            machine::DISABLED => Mode::Disabled,
            _ => Mode::MetricsOnly,
        }
    }

    /// The circuit's numbers.
    pub fn counts(&self) -> Counts {
        self.circuit.counts()
    }

    /// Time until the next probe, if the circuit is open on its own (not forced).
    pub fn retry_after(&self) -> Option<Duration> {
        self.circuit.open_remaining()
    }

    /// Refuse every call until [`force_closed`](Self::force_closed) or [`reset`](Self::reset).
    pub fn force_open(&self) {
        self.circuit
            .force(machine::OPEN, machine::FORCED_OPEN, "force_open");
    }

    /// Close the circuit now and return to normal operation (windows cleared).
    pub fn force_closed(&self) {
        self.circuit
            .force(machine::CLOSED, machine::NORMAL, "force_closed");
    }

    /// Like [`force_closed`](Self::force_closed), and also zero the counters.
    pub fn reset(&self) {
        self.circuit.clear_rejected();
        self.circuit
            .force(machine::CLOSED, machine::NORMAL, "reset");
    }

    /// The thresholds the circuit trips by now.
    pub fn thresholds(&self) -> Thresholds {
        self.circuit.thresholds()
    }

    /// Changes when the circuit trips, while it runs (a config reload). `t` is checked by the
    /// [`Builder`](crate::Builder)'s rules and refused with its [`BuildError`], changing nothing; in
    /// addition, a rate can be turned on only if the breaker was built with a window (it was built with
    /// a rate, [`window_calls`](crate::Builder::window_calls) or
    /// [`window_time`](crate::Builder::window_time)).
    ///
    /// The state, the windows and the counts are kept: the next failure or slow call is judged by the
    /// new thresholds (lowering them does not open the circuit by itself; the next failure does). A call
    /// already in flight is judged slow by the threshold in force when it ends, if slow calls were
    /// tracked when it began. The change goes to the audit log (`breaker.reconfigured`, old and new
    /// values) and to `tracing`; setting the thresholds in force is a no-op.
    ///
    /// For a circuit of a keyed breaker (from [`KeyedBreakerHandle`]), this changes the thresholds of
    /// every circuit of that breaker: they share one configuration, as
    /// [`KeyedBreakerHandle::set_thresholds`] does.
    pub fn set_thresholds(&self, t: Thresholds) -> Result<(), BuildError> {
        self.circuit.set_thresholds(t)
    }

    /// Let every call pass, still counting outcomes, with no transitions.
    pub fn disable(&self) {
        self.circuit
            .force(machine::CLOSED, machine::DISABLED, "disable");
    }

    /// Count and transition (and report transitions) but never refuse a call: a dry run.
    pub fn metrics_only(&self) {
        self.circuit
            .force(machine::CLOSED, machine::METRICS_ONLY, "metrics_only");
    }
}

impl fmt::Debug for BreakerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.circuit.word();
        f.debug_struct("BreakerHandle")
            .field("name", &self.circuit.name())
            .field("state", &state_name(machine::state_of(w)))
            .field("mode", &mode_name(machine::mode_of(w)))
            .finish()
    }
}

trait KeyedControl: Send + Sync {
    fn get(&self, hash: u64) -> Option<BreakerHandle>;
    fn hash_of(&self, key: &dyn HashKey) -> u64;
    fn len(&self) -> usize;
    fn overflowed(&self) -> u64;
    fn open_circuits(&self) -> usize;
    fn default(&self) -> BreakerHandle;
    fn overflow(&self) -> BreakerHandle;
    fn all(&self) -> Vec<BreakerHandle>;
    fn thresholds(&self) -> Thresholds;
    fn set_thresholds(&self, t: Thresholds) -> Result<(), BuildError>;
}

/// Object-safe hashing of a key of any type.
trait HashKey {
    fn hash_with(&self, state: &mut dyn std::hash::Hasher);
}

impl<T: Hash> HashKey for T {
    fn hash_with(&self, mut state: &mut dyn std::hash::Hasher) {
        self.hash(&mut state);
    }
}

impl<C: Send + Sync + 'static, K: Send + Sync> KeyedControl for Keyed<C, K> {
    fn get(&self, hash: u64) -> Option<BreakerHandle> {
        self.map.get(hash).map(BreakerHandle::new)
    }

    fn hash_of(&self, key: &dyn HashKey) -> u64 {
        struct Via<'a>(&'a dyn HashKey);
        impl Hash for Via<'_> {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.0.hash_with(state);
            }
        }
        self.map.hash(&Via(key))
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn overflowed(&self) -> u64 {
        self.map.overflowed()
    }

    fn open_circuits(&self) -> usize {
        self.common.open_circuits()
    }

    fn default(&self) -> BreakerHandle {
        BreakerHandle::new(self.default.clone())
    }

    fn overflow(&self) -> BreakerHandle {
        BreakerHandle::new(self.overflow.clone())
    }

    fn all(&self) -> Vec<BreakerHandle> {
        let mut v = Vec::new();
        self.for_each(|c| v.push(BreakerHandle::new(c.clone())));
        v
    }

    fn thresholds(&self) -> Thresholds {
        self.common.thresholds()
    }

    fn set_thresholds(&self, t: Thresholds) -> Result<(), BuildError> {
        self.common.set_thresholds(t)
    }
}

/// A key to look a keyed breaker's circuit up by, in [`KeyedBreakerHandle::get`].
///
/// Implemented for every `Hash + 'static` type, and for `str` and `[u8]`. Keys are hashed in a
/// canonical form, the same for the keys the breaker stores and the ones looked up: text
/// (`HeaderValue`, `String`, `&'static str`, `Box<str>`, `Arc<str>`, `Cow<'static, str>`, `str`) by
/// its bytes, as are `Vec<u8>` and `[u8]`; IP addresses (`IpAddr`, `Ipv4Addr`, `Ipv6Addr`) as an
/// `IpAddr` in canonical form; any other type by its own `Hash`. Sealed: it cannot be implemented
/// outside this crate.
pub trait LookupKey: sealed::Sealed {
    /// Feeds the canonical form of the key to `state`.
    #[doc(hidden)]
    fn hash_canonical(&self, state: &mut dyn std::hash::Hasher);
}

mod sealed {
    pub trait Sealed {}
    impl<T: std::hash::Hash + 'static> Sealed for T {}
    impl Sealed for str {}
    impl Sealed for [u8] {}
}

fn hash_text(bytes: &[u8], mut state: &mut dyn std::hash::Hasher) {
    (0u8, bytes).hash(&mut state);
}

fn hash_ip(ip: std::net::IpAddr, mut state: &mut dyn std::hash::Hasher) {
    (1u8, ip.to_canonical()).hash(&mut state);
}

fn cast<T: 'static, U: 'static>(t: &T) -> Option<&U> {
    // `TypeId`s compare at compile time once `T` is known: for a key type that is none of these, the
    // whole chain folds away and only its own `Hash` runs.
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<U>() {
        (t as &dyn std::any::Any).downcast_ref::<U>()
    } else {
        None
    }
}

impl<T: Hash + 'static> LookupKey for T {
    #[inline]
    fn hash_canonical(&self, mut state: &mut dyn std::hash::Hasher) {
        use std::borrow::Cow;
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        let text = cast::<T, http::HeaderValue>(self)
            .map(|v| v.as_bytes())
            .or_else(|| cast::<T, String>(self).map(|v| v.as_bytes()))
            .or_else(|| cast::<T, &'static str>(self).map(|v| v.as_bytes()))
            .or_else(|| cast::<T, Box<str>>(self).map(|v| v.as_bytes()))
            .or_else(|| cast::<T, Arc<str>>(self).map(|v| v.as_bytes()))
            .or_else(|| cast::<T, Cow<'static, str>>(self).map(|v| v.as_bytes()))
            .or_else(|| cast::<T, Vec<u8>>(self).map(|v| v.as_slice()));
        if let Some(bytes) = text {
            return hash_text(bytes, state);
        }
        let ip = cast::<T, IpAddr>(self)
            .copied()
            .or_else(|| cast::<T, Ipv4Addr>(self).map(|&v| IpAddr::V4(v)))
            .or_else(|| cast::<T, Ipv6Addr>(self).map(|&v| IpAddr::V6(v)));
        if let Some(ip) = ip {
            return hash_ip(ip, state);
        }
        (2u8, self).hash(&mut state);
    }
}

impl LookupKey for str {
    fn hash_canonical(&self, state: &mut dyn std::hash::Hasher) {
        hash_text(self.as_bytes(), state);
    }
}

impl LookupKey for [u8] {
    fn hash_canonical(&self, state: &mut dyn std::hash::Hasher) {
        hash_text(self, state);
    }
}

/// Hashes a key in its canonical form (see [`LookupKey`]): how keyed breakers store and find keys.
pub(crate) struct Canonical<'a, Q: ?Sized>(pub(crate) &'a Q);

impl<Q: LookupKey + ?Sized> Hash for Canonical<'_, Q> {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash_canonical(state);
    }
}

/// A handle to the circuits of a keyed breaker.
#[derive(Clone)]
pub struct KeyedBreakerHandle {
    keyed: Arc<dyn KeyedControl>,
}

impl KeyedBreakerHandle {
    pub(crate) fn new<C: Send + Sync + 'static, K: Send + Sync + 'static>(
        keyed: Arc<Keyed<C, K>>,
    ) -> Self {
        KeyedBreakerHandle { keyed }
    }

    /// The circuit of `key`, if it is tracked.
    ///
    /// `key` is the extractor's key, or what users naturally write for it: text keys (a `HeaderValue`
    /// from `HeaderKey`, a `String`, an `Arc<str>` from a closure) are found by a `&str`, a `String` or
    /// the key itself, and IP keys (`PeerIp`, `ClientIp`) by an `IpAddr`, an `Ipv4Addr` or an
    /// `Ipv6Addr` (IPv4-mapped addresses are the IPv4 address). Keys of other types are matched by
    /// their own `Hash`, so pass the extractor's key type (see [`LookupKey`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use palisade_breaker::CircuitBreakerLayer;
    /// use palisade_core::error::BoxError;
    /// use palisade_core::key::HeaderKey;
    /// use tower::{service_fn, Layer, ServiceExt};
    ///
    /// let layer = CircuitBreakerLayer::builder()
    ///     .keyed(HeaderKey::from_static("x-tenant"))
    ///     .unwrap();
    /// let handle = layer.handle();
    /// let svc = layer.layer(service_fn(|_: http::Request<()>| async {
    ///     Ok::<_, BoxError>(http::Response::new(String::new()))
    /// }));
    /// let req = http::Request::builder().header("x-tenant", "acme").body(()).unwrap();
    /// svc.oneshot(req).await.unwrap();
    /// assert!(handle.get("acme").is_some());
    /// # }
    /// ```
    pub fn get<Q: LookupKey + ?Sized>(&self, key: &Q) -> Option<BreakerHandle> {
        self.keyed.get(self.keyed.hash_of(&Canonical(key)))
    }

    /// How many keys are tracked.
    pub fn len(&self) -> usize {
        self.keyed.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many requests for new keys went to the overflow circuit because the map was full.
    pub fn overflowed(&self) -> u64 {
        self.keyed.overflowed()
    }

    /// How many circuits are not closed.
    pub fn open_circuits(&self) -> usize {
        self.keyed.open_circuits()
    }

    /// The circuit of requests whose key could not be extracted.
    pub fn default_circuit(&self) -> BreakerHandle {
        self.keyed.default()
    }

    /// The circuit shared by new keys while the map is full.
    pub fn overflow_circuit(&self) -> BreakerHandle {
        self.keyed.overflow()
    }

    /// Every circuit (tracked keys, then default and overflow).
    pub fn circuits(&self) -> Vec<BreakerHandle> {
        self.keyed.all()
    }

    /// The thresholds every circuit trips by now.
    pub fn thresholds(&self) -> Thresholds {
        self.keyed.thresholds()
    }

    /// Changes when circuits trip, for every circuit: the keys tracked now, keys seen later, and the
    /// default and overflow circuits (they all read one shared configuration, so the change is one
    /// write, whatever the number of keys). Validation, what is kept and what is recorded are as for
    /// [`BreakerHandle::set_thresholds`].
    pub fn set_thresholds(&self, t: Thresholds) -> Result<(), BuildError> {
        self.keyed.set_thresholds(t)
    }
}

impl fmt::Debug for KeyedBreakerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBreakerHandle")
            .field("keys", &self.len())
            .field("open", &self.open_circuits())
            .finish()
    }
}
