//! The builder, the layer, its shared state and the counters handle.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use palisade_core::audit::{Audit, AuditEvent};
use palisade_core::classify::{Classified, Classify, Grpc, Outcome};
use palisade_core::config::BuildError;
use palisade_core::error::BoxError;
use tokio::time::Instant;
use tower_layer::Layer;

use crate::budget::BudgetState;
use crate::delay::MAX_DELAY;
use crate::{Hedge, HedgeBudget, HedgeDelay, LatencyPercentile};

/// The layer name in this crate's [`BuildError`]s.
pub(crate) const LAYER: &str = "hedge";

/// Default [`max_hedges`](HedgeBuilder::max_hedges): 1 (the first attempt and at most one hedge).
pub const DEFAULT_MAX_HEDGES: u32 = 1;

/// The most [`max_hedges`](HedgeBuilder::max_hedges) [`build`](HedgeBuilder::build) accepts: 10.
pub const MAX_HEDGES: u32 = 10;

/// Default [`max_body`](HedgeBuilder::max_body): 64 KiB.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;

/// The largest [`max_body`](HedgeBuilder::max_body) accepted: 16 MiB. Every hedgeable request in
/// flight may hold a buffer this large.
pub const MAX_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// The `kind` of the audit record written when the hedge budget refuses a hedge: at most one every
/// [`REPORT_EVERY`], with the requests, hedges and refusals counted so far.
pub const BUDGET_EXHAUSTED_KIND: &str = "hedge.budget_exhausted";

/// The shortest time between two [`BUDGET_EXHAUSTED_KIND`] records (and `warn` events): 10 s.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

type Predicate = dyn Fn(&http::request::Parts) -> bool + Send + Sync;
type Signal = dyn Fn() -> bool + Send + Sync;

/// Everything a layer shares between its services and their futures: built once, in `build()`.
pub(crate) struct Shared<C> {
    pub(crate) classify: C,
    pub(crate) delay: Arc<dyn HedgeDelay>,
    /// `delay.wants_samples()`, read once.
    pub(crate) samples: bool,
    pub(crate) max_hedges: u32,
    pub(crate) max_body: u64,
    pub(crate) hedge_if: Option<Arc<Predicate>>,
    pub(crate) may_hedge: Option<Arc<Signal>>,
    pub(crate) audit: Audit,
    pub(crate) stats: Stats,
}

impl<C: fmt::Debug> fmt::Debug for Shared<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hedge")
            .field("classify", &self.classify)
            .field("delay", &self.delay.delay())
            .field("max_hedges", &self.max_hedges)
            .field("max_body", &self.max_body)
            .field("hedge_if", &self.hedge_if.is_some())
            .field("may_hedge", &self.may_hedge.is_some())
            .field("budget", &self.stats.budget.is_some())
            .finish()
    }
}

impl<C> Shared<C> {
    /// Whether a request is safe to send more than once — the retry layer's rules: an idempotent
    /// method, an `Idempotency-Key` header, or the user's predicate.
    #[inline]
    pub(crate) fn is_hedgeable(&self, parts: &http::request::Parts) -> bool {
        palisade_core::repeat::is_safe_to_repeat(parts)
            || self.hedge_if.as_ref().is_some_and(|p| p(parts))
    }

    /// Whether an attempt's outcome is a good answer that wins: a response the classifier does not
    /// call a failure and that is not HTTP 429. Errors never win while another attempt may.
    #[inline]
    pub(crate) fn is_good<B>(&self, result: &Result<http::Response<B>, BoxError>) -> bool
    where
        C: Classify<http::Response<B>>,
    {
        match result {
            Ok(res) => {
                res.status() != http::StatusCode::TOO_MANY_REQUESTS
                    && !matches!(
                        self.classify.classify_response(res),
                        Classified::Ready(Outcome::Failure(_))
                    )
            }
            Err(_) => false,
        }
    }

    /// Whether a hedge due now may be sent: the signal, then the budget. Counts refusals.
    pub(crate) fn admit_hedge(&self) -> bool {
        if let Some(signal) = &self.may_hedge {
            if !signal() {
                self.stats.suppressed.fetch_add(1, Relaxed);
                return false;
            }
        }
        self.stats.withdraw(&self.audit)
    }
}

/// The layer's counters and budget.
#[derive(Debug)]
pub(crate) struct Stats {
    pub(crate) requests: AtomicU64,
    pub(crate) hedges: AtomicU64,
    pub(crate) hedge_wins: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) budget_refused: AtomicU64,
    pub(crate) suppressed: AtomicU64,
    pub(crate) body_too_large: AtomicU64,
    pub(crate) deadline_passed: AtomicU64,
    pub(crate) budget: Option<BudgetState>,
    pub(crate) budget_exhausted: AtomicBool,
    /// When the layer was built: the origin of `reported_at`.
    born: Instant,
    /// Milliseconds since `born` of the last budget-exhausted report, plus one (0: never).
    reported_at: AtomicU64,
}

impl Stats {
    pub(crate) fn new(budget: Option<BudgetState>) -> Self {
        Stats {
            requests: AtomicU64::new(0),
            hedges: AtomicU64::new(0),
            hedge_wins: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            budget_refused: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            body_too_large: AtomicU64::new(0),
            deadline_passed: AtomicU64::new(0),
            budget,
            budget_exhausted: AtomicBool::new(false),
            born: Instant::now(),
            reported_at: AtomicU64::new(0),
        }
    }

    #[inline]
    pub(crate) fn count_request(&self) {
        self.requests.fetch_add(1, Relaxed);
        if let Some(b) = &self.budget {
            b.deposit();
        }
    }

    fn withdraw(&self, audit: &Audit) -> bool {
        let Some(b) = &self.budget else {
            return true;
        };
        if b.try_withdraw() {
            if self.budget_exhausted.load(Relaxed) {
                self.budget_exhausted.store(false, Relaxed);
            }
            return true;
        }
        self.budget_refused.fetch_add(1, Relaxed);
        self.budget_exhausted.store(true, Relaxed);
        // Under a storm the budget refuses, grants a hedge every few requests, and refuses again: report
        // at most once per `REPORT_EVERY`, not at every flip.
        let now = u64::try_from(
            Instant::now()
                .saturating_duration_since(self.born)
                .as_millis(),
        )
        .unwrap_or(u64::MAX - 1)
            + 1;
        let last = self.reported_at.load(Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= REPORT_EVERY.as_millis() as u64;
        if due
            && self
                .reported_at
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            tracing::warn!(
                refused = self.budget_refused.load(Relaxed),
                "hedge budget exhausted: slow requests wait for the attempts in flight"
            );
            audit.record_with(|| {
                AuditEvent::new(BUDGET_EXHAUSTED_KIND)
                    .detail("requests", self.requests.load(Relaxed))
                    .detail("hedges", self.hedges.load(Relaxed))
                    .detail("refused", self.budget_refused.load(Relaxed))
            });
        }
        false
    }

    /// A hedge was withdrawn from the budget but not sent.
    pub(crate) fn refund(&self) {
        if let Some(b) = &self.budget {
            b.refund();
        }
    }
}

/// Builds a [`HedgeLayer`]; see the [crate docs](crate) for the defaults.
///
/// `C` is the classifier deciding which answers are good ([`classify`](Self::classify)).
pub struct HedgeBuilder<C = Grpc> {
    classify: C,
    delay: Arc<dyn HedgeDelay>,
    max_hedges: u32,
    max_body: usize,
    hedge_if: Option<Arc<Predicate>>,
    may_hedge: Option<Arc<Signal>>,
    budget: HedgeBudget,
    audit: Audit,
    fixed: Option<Duration>,
}

impl<C: fmt::Debug> fmt::Debug for HedgeBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeBuilder")
            .field("classify", &self.classify)
            .field("fixed", &self.fixed)
            .field("max_hedges", &self.max_hedges)
            .field("max_body", &self.max_body)
            .field("hedge_if", &self.hedge_if.is_some())
            .field("may_hedge", &self.may_hedge.is_some())
            .field("budget", &self.budget)
            .field("audit", &self.audit)
            .finish()
    }
}

impl Default for HedgeBuilder {
    fn default() -> Self {
        HedgeBuilder {
            classify: Grpc::default(),
            delay: Arc::new(LatencyPercentile::new()),
            max_hedges: DEFAULT_MAX_HEDGES,
            max_body: DEFAULT_MAX_BODY,
            hedge_if: None,
            may_hedge: None,
            budget: HedgeBudget::default(),
            audit: Audit::disabled(),
            fixed: None,
        }
    }
}

impl<C> HedgeBuilder<C> {
    /// Hedges after a fixed delay (at most [`MAX_DELAY`]); [`Duration::ZERO`] is
    /// [parallel mode](Self::parallel). Replaces the default estimator.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.fixed = Some(delay);
        self.delay = Arc::new(delay);
        self
    }

    /// Parallel mode: every hedge is sent as soon as the first attempt is found not to be answered at
    /// once (its first poll). The same as `delay(Duration::ZERO)`.
    pub fn parallel(self) -> Self {
        self.delay(Duration::ZERO)
    }

    /// Takes the delay from `delay` — a [`LatencyPercentile`] (the default, with its defaults: p95 of
    /// recent first attempts, hedging only once it has 100 samples) or your own [`HedgeDelay`], such as
    /// a latency signal recorder's percentile.
    pub fn delay_from(mut self, delay: impl HedgeDelay) -> Self {
        self.fixed = None;
        self.delay = Arc::new(delay);
        self
    }

    /// The most hedges per request, beyond the first attempt (default 1, at most [`MAX_HEDGES`]; `0`
    /// turns hedging off). Each is sent one delay after the previous one.
    pub fn max_hedges(mut self, n: u32) -> Self {
        self.max_hedges = n;
        self
    }

    /// Marks more HTTP requests as safe to hedge. Requests with an idempotent method (`GET`, `HEAD`,
    /// `OPTIONS`, `TRACE`, `PUT`, `DELETE`) or an `Idempotency-Key` header are hedged anyway (the key
    /// goes with every attempt); the predicate decides for everything else (`POST`, `PATCH`, and gRPC
    /// calls, which are all `POST`). The same rules as the retry layer's `retry_if`.
    ///
    /// ```
    /// use palisade_hedge::HedgeLayer;
    /// use std::time::Duration;
    ///
    /// // This gRPC method is a read: hedge it.
    /// let layer = HedgeLayer::builder()
    ///     .delay(Duration::from_millis(20))
    ///     .hedge_if(|parts| parts.uri.path() == "/inventory.v1.Stock/Get")
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn hedge_if<P>(mut self, predicate: P) -> Self
    where
        P: Fn(&http::request::Parts) -> bool + Send + Sync + 'static,
    {
        self.hedge_if = Some(Arc::new(predicate));
        self
    }

    /// A signal read each time a hedge is due: `false` sends no hedge (the request waits for its
    /// attempts in flight). Wire it to whatever says the backend must not see extra load — a circuit
    /// breaker that is not closed, a degradation gate above its normal level — without this crate
    /// naming those layers:
    ///
    /// ```
    /// use palisade_hedge::HedgeLayer;
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    ///
    /// let degraded = Arc::new(AtomicBool::new(false)); // e.g. set from a breaker's or gate's handle
    /// let flag = degraded.clone();
    /// let layer = HedgeLayer::builder()
    ///     .delay(Duration::from_millis(20))
    ///     .may_hedge(move || !flag.load(Ordering::Relaxed))
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    ///
    /// Refusals are counted in [`HedgeHandle::suppressed`]; they take nothing from the budget.
    pub fn may_hedge<F>(mut self, signal: F) -> Self
    where
        F: Fn() -> bool + Send + Sync + 'static,
    {
        self.may_hedge = Some(Arc::new(signal));
        self
    }

    /// The hedge budget (default [`HedgeBudget::default`]: 10 % of requests plus 10);
    /// [`HedgeBudget::unlimited`] turns it off.
    pub fn budget(mut self, budget: HedgeBudget) -> Self {
        self.budget = budget;
        self
    }

    /// The largest request body buffered for hedging, in bytes (default 64 KiB; at most
    /// [`MAX_BODY_LIMIT`]). A larger body — known from its `size_hint` or found while buffering — is
    /// sent once and not hedged (counted in [`HedgeHandle::body_too_large`]).
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Which answers are good (default [`Grpc`]: not HTTP 5xx, and no gRPC server-error code in the
    /// response headers). A failed answer (or an error, or HTTP 429) does not win while another attempt
    /// is in flight; when every attempt failed, the last failure is returned.
    pub fn classify<C2>(self, classify: C2) -> HedgeBuilder<C2> {
        HedgeBuilder {
            classify,
            delay: self.delay,
            max_hedges: self.max_hedges,
            max_body: self.max_body,
            hedge_if: self.hedge_if,
            may_hedge: self.may_hedge,
            budget: self.budget,
            audit: self.audit,
            fixed: self.fixed,
        }
    }

    /// Where the budget running out is recorded (default [`Audit::disabled`]).
    pub fn audit(mut self, audit: &Audit) -> Self {
        self.audit = audit.clone();
        self
    }

    /// Checks the configuration and builds the layer (its budget and counters are shared by every
    /// service it makes).
    ///
    /// # Errors
    ///
    /// `max_hedges` above [`MAX_HEDGES`], `max_body` above [`MAX_BODY_LIMIT`], a fixed delay above
    /// [`MAX_DELAY`], a budget ratio outside 0–[`MAX_HEDGES`] or a burst above
    /// [`MAX_BURST`](crate::MAX_BURST).
    pub fn build(self) -> Result<HedgeLayer<C>, BuildError> {
        if self.max_hedges > MAX_HEDGES {
            return Err(BuildError::new(
                LAYER,
                "max_hedges",
                format!("{} is above {MAX_HEDGES}", self.max_hedges),
            ));
        }
        if self.max_body > MAX_BODY_LIMIT {
            return Err(BuildError::new(
                LAYER,
                "max_body",
                format!("{} bytes is above {MAX_BODY_LIMIT}", self.max_body),
            ));
        }
        if let Some(d) = self.fixed.filter(|d| *d > MAX_DELAY) {
            return Err(BuildError::new(
                LAYER,
                "delay",
                format!("{d:?} is above {MAX_DELAY:?}"),
            ));
        }
        let budget = self.budget.build()?;
        let samples = self.delay.wants_samples();
        Ok(HedgeLayer {
            shared: Arc::new(Shared {
                classify: self.classify,
                delay: self.delay,
                samples,
                max_hedges: self.max_hedges,
                max_body: self.max_body as u64,
                hedge_if: self.hedge_if,
                may_hedge: self.may_hedge,
                audit: self.audit,
                stats: Stats::new(budget),
            }),
        })
    }
}

/// A [`Layer`] that hedges slow, safe requests; see the [crate docs](crate).
///
/// The configuration, budget, delay estimator and counters are built once by [`HedgeBuilder::build`]
/// and shared by every service the layer makes: [`layer`](Layer::layer) only clones an `Arc`.
pub struct HedgeLayer<C = Grpc> {
    shared: Arc<Shared<C>>,
}

impl HedgeLayer {
    /// A builder with the defaults.
    pub fn builder() -> HedgeBuilder {
        HedgeBuilder::default()
    }
}

impl<C: Send + Sync + 'static> HedgeLayer<C> {
    /// A handle to the layer's counters, shared by every service it makes.
    pub fn handle(&self) -> HedgeHandle {
        HedgeHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<C> Clone for HedgeLayer<C> {
    fn clone(&self) -> Self {
        HedgeLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for HedgeLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.shared, f)
    }
}

impl<S, C> Layer<S> for HedgeLayer<C> {
    type Service = Hedge<S, C>;

    fn layer(&self, inner: S) -> Hedge<S, C> {
        Hedge::from_shared(inner, self.shared.clone())
    }
}

trait StatsOf: Send + Sync {
    fn stats(&self) -> &Stats;
    fn delay(&self) -> &dyn HedgeDelay;
}

impl<C: Send + Sync> StatsOf for Shared<C> {
    fn stats(&self) -> &Stats {
        &self.stats
    }
    fn delay(&self) -> &dyn HedgeDelay {
        &*self.delay
    }
}

/// The counters of a [`HedgeLayer`], shared by every service it makes; a cheap `Clone`. All counters
/// are monotonic.
#[derive(Clone)]
pub struct HedgeHandle {
    shared: Arc<dyn StatsOf>,
}

impl HedgeHandle {
    fn stats(&self) -> &Stats {
        self.shared.stats()
    }

    /// Requests received, hedgeable or not.
    pub fn requests(&self) -> u64 {
        self.stats().requests.load(Relaxed)
    }

    /// Hedges sent (attempts after the first).
    pub fn hedges(&self) -> u64 {
        self.stats().hedges.load(Relaxed)
    }

    /// Requests answered by a hedge rather than by their first attempt.
    pub fn hedge_wins(&self) -> u64 {
        self.stats().hedge_wins.load(Relaxed)
    }

    /// Attempts still in flight dropped because another attempt answered first.
    pub fn cancelled(&self) -> u64 {
        self.stats().cancelled.load(Relaxed)
    }

    /// Hedges not sent because the budget was spent.
    pub fn budget_refused(&self) -> u64 {
        self.stats().budget_refused.load(Relaxed)
    }

    /// Hedges not sent because the [`may_hedge`](HedgeBuilder::may_hedge) signal said no.
    pub fn suppressed(&self) -> u64 {
        self.stats().suppressed.load(Relaxed)
    }

    /// Hedgeable requests sent once because their body was over [`max_body`](HedgeBuilder::max_body).
    pub fn body_too_large(&self) -> u64 {
        self.stats().body_too_large.load(Relaxed)
    }

    /// Hedges not sent because the request's deadline had passed.
    pub fn deadline_passed(&self) -> u64 {
        self.stats().deadline_passed.load(Relaxed)
    }

    /// Whether the budget refused the latest hedge it was asked for.
    pub fn budget_exhausted(&self) -> bool {
        self.stats().budget_exhausted.load(Relaxed)
    }

    /// The delay a hedgeable request arriving now would be hedged after (`None`: it would not be,
    /// e.g. an estimator with too few samples).
    pub fn current_delay(&self) -> Option<Duration> {
        self.shared.delay().delay()
    }
}

impl fmt::Debug for HedgeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeHandle")
            .field("requests", &self.requests())
            .field("hedges", &self.hedges())
            .field("hedge_wins", &self.hedge_wins())
            .field("cancelled", &self.cancelled())
            .field("budget_refused", &self.budget_refused())
            .field("suppressed", &self.suppressed())
            .field("body_too_large", &self.body_too_large())
            .field("deadline_passed", &self.deadline_passed())
            .finish()
    }
}
