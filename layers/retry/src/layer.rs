//! The builder, the layer, its shared state and the counters handle.

use std::error::Error;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use palisade_core::audit::{Audit, AuditEvent};
use palisade_core::classify::Grpc;
use palisade_core::rng::SharedRng;
use tokio::time::Instant;
use tower_layer::Layer;

use crate::budget::{BudgetState, FLUSH_EVERY};
use crate::{Backoff, Budget, Retry};

/// Default [`max_attempts`](RetryBuilder::max_attempts): 5 (the first call and up to 4 retries).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// Default [`max_body`](RetryBuilder::max_body): 64 KiB.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;

/// The largest [`max_attempts`](RetryBuilder::max_attempts) [`build`](RetryBuilder::build) accepts:
/// 100.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;

/// The largest [`max_body`](RetryBuilder::max_body) [`build`](RetryBuilder::build) accepts: 16 MiB.
/// Every retryable request in flight may hold a buffer this large.
pub const MAX_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// The longest delay [`build`](RetryBuilder::build) accepts for the backoff's maximum (or cap), its
/// jitter and [`retry_after_cap`](RetryBuilder::retry_after_cap): 1 hour.
pub const MAX_DELAY: Duration = Duration::from_secs(3600);

/// The `kind` of the audit record written when a request gave up after its last attempt.
pub const GAVE_UP_KIND: &str = "retry.gave_up";

/// The `kind` of the audit record written when the retry budget starts refusing retries (once per
/// episode, not per refusal).
pub const BUDGET_EXHAUSTED_KIND: &str = "retry.budget_exhausted";

type Predicate = dyn Fn(&http::request::Parts) -> bool + Send + Sync;

/// How the [`Retry`] service replays `http::Request<B>`: buffer the body (up to
/// [`max_body`](RetryBuilder::max_body)) and send it again from memory. The default.
#[derive(Debug, Clone, Copy, Default)]
pub struct BufferBody;

/// How the [`Retry`] service replays any request type: with a user-supplied clone function (see
/// [`RetryBuilder::clone_request`]).
#[derive(Clone, Copy)]
pub struct CloneWith<F>(pub(crate) F);

impl<F> fmt::Debug for CloneWith<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CloneWith(..)")
    }
}

/// Everything a layer shares between its services and their futures: built once, in `build()`.
pub(crate) struct Shared<C, R> {
    pub(crate) classify: C,
    pub(crate) replay: R,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) retry_after_cap: Duration,
    pub(crate) max_body: u64,
    pub(crate) retry_if: Option<Arc<Predicate>>,
    pub(crate) retry_timeouts: bool,
    pub(crate) rng: SharedRng,
    pub(crate) audit: Audit,
    pub(crate) stats: Stats,
}

impl<C: fmt::Debug, R: fmt::Debug> fmt::Debug for Shared<C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("classify", &self.classify)
            .field("replay", &self.replay)
            .field("retry_after_cap", &self.retry_after_cap)
            .field("max_body", &self.max_body)
            .field("retry_if", &self.retry_if.is_some())
            .field("retry_timeouts", &self.retry_timeouts)
            .field("budget", &self.stats.budget.is_some())
            .field("audit", &self.audit)
            .finish()
    }
}

impl<C, R> Shared<C, R> {
    /// Whether an HTTP request may be retried: an idempotent method, an `Idempotency-Key`, or the
    /// user's predicate.
    pub(crate) fn is_retryable(&self, parts: &http::request::Parts) -> bool {
        palisade_core::repeat::is_safe_to_repeat(parts)
            || self.retry_if.as_ref().is_some_and(|p| p(parts))
    }
}

/// The layer's counters and budget.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) requests: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) budget_refused: AtomicU64,
    pub(crate) gave_up: AtomicU64,
    pub(crate) body_too_large: AtomicU64,
    pub(crate) budget: Option<BudgetState>,
    pub(crate) budget_exhausted: AtomicBool,
}

impl Stats {
    /// Counts a request (and deposits it in the budget, reading the clock once per
    /// [`FLUSH_EVERY`] requests).
    #[inline]
    pub(crate) fn count_request(&self) {
        let n = self.requests.fetch_add(1, Relaxed);
        if n & (FLUSH_EVERY - 1) == FLUSH_EVERY - 1 {
            if let Some(b) = &self.budget {
                b.flush(&self.requests, Instant::now());
            }
        }
    }

    /// Takes a retry from the budget; counts and reports a refusal.
    pub(crate) fn withdraw(&self, audit: &Audit) -> bool {
        let Some(b) = &self.budget else {
            return true;
        };
        if b.try_withdraw(&self.requests, Instant::now()) {
            if self.budget_exhausted.load(Relaxed) && self.budget_exhausted.swap(false, Relaxed) {
                tracing::info!("retry budget available again");
            }
            return true;
        }
        self.budget_refused.fetch_add(1, Relaxed);
        if !self.budget_exhausted.load(Relaxed) && !self.budget_exhausted.swap(true, Relaxed) {
            tracing::warn!("retry budget exhausted: failures are returned without retrying");
            audit.record_with(|| {
                AuditEvent::new(BUDGET_EXHAUSTED_KIND)
                    .detail("requests", self.requests.load(Relaxed))
                    .detail("retries", self.retries.load(Relaxed))
            });
        } else {
            tracing::debug!("retry refused by the budget");
        }
        false
    }
}

/// Builds a [`RetryLayer`]; see the [crate docs](crate) for the defaults.
///
/// `C` is the classifier ([`classify`](Self::classify)), `R` how requests are replayed ([`BufferBody`],
/// or [`CloneWith`] after [`clone_request`](Self::clone_request)).
pub struct RetryBuilder<C = Grpc, R = BufferBody> {
    classify: C,
    replay: R,
    max_attempts: u32,
    backoff: Backoff,
    retry_after_cap: Option<Duration>,
    max_body: usize,
    retry_if: Option<Arc<Predicate>>,
    retry_timeouts: bool,
    budget: Budget,
    seed: Option<u64>,
    audit: Audit,
}

impl<C: fmt::Debug, R: fmt::Debug> fmt::Debug for RetryBuilder<C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBuilder")
            .field("classify", &self.classify)
            .field("replay", &self.replay)
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("retry_after_cap", &self.retry_after_cap)
            .field("max_body", &self.max_body)
            .field("retry_if", &self.retry_if.is_some())
            .field("retry_timeouts", &self.retry_timeouts)
            .field("budget", &self.budget)
            .field("seed", &self.seed)
            .field("audit", &self.audit)
            .finish()
    }
}

impl Default for RetryBuilder {
    fn default() -> Self {
        RetryBuilder {
            classify: Grpc::default(),
            replay: BufferBody,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff: Backoff::default(),
            retry_after_cap: None,
            max_body: DEFAULT_MAX_BODY,
            retry_if: None,
            retry_timeouts: true,
            budget: Budget::default(),
            seed: None,
            audit: Audit::disabled(),
        }
    }
}

impl<C, R> RetryBuilder<C, R> {
    /// Total attempts per request, the first call included (default 5; at most
    /// [`MAX_ATTEMPTS_LIMIT`]). `1` disables retries; `0` is an error.
    ///
    /// With `1`, a retryable request is still sent as it came, unbuffered, and a failure that would
    /// have been retried counts as [gave up](RetryHandle::gave_up) (and is audited), as after the last
    /// attempt of a larger limit.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The delay before each retry (default [`Backoff::default`]: exponential, 100 ms doubling to 60 s,
    /// plus up to 1 s of jitter).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Which outcomes are failures worth retrying (default [`Grpc`]: HTTP 5xx, and gRPC server-error
    /// codes in the response headers). Errors are judged by their rejection marker first (see the
    /// [crate docs](crate#what-is-retried)), then by [`Classify::classify_error`].
    ///
    /// [`Classify::classify_error`]: palisade_core::classify::Classify::classify_error
    pub fn classify<C2>(self, classify: C2) -> RetryBuilder<C2, R> {
        RetryBuilder {
            classify,
            replay: self.replay,
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            retry_after_cap: self.retry_after_cap,
            max_body: self.max_body,
            retry_if: self.retry_if,
            retry_timeouts: self.retry_timeouts,
            budget: self.budget,
            seed: self.seed,
            audit: self.audit,
        }
    }

    /// Marks more HTTP requests as safe to retry. Requests with an idempotent method (`GET`, `HEAD`,
    /// `OPTIONS`, `TRACE`, `PUT`, `DELETE`) or an `Idempotency-Key` header are retried anyway; the
    /// predicate decides for everything else (`POST`, `PATCH`, gRPC calls, which are all `POST`).
    ///
    /// ```
    /// use palisade_retry::RetryLayer;
    ///
    /// // This gRPC method is a read: retry it.
    /// let layer = RetryLayer::builder()
    ///     .retry_if(|parts| parts.uri.path() == "/inventory.v1.Stock/Get")
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn retry_if<P>(mut self, predicate: P) -> Self
    where
        P: Fn(&http::request::Parts) -> bool + Send + Sync + 'static,
    {
        self.retry_if = Some(Arc::new(predicate));
        self
    }

    /// The largest request body buffered for replay, in bytes (default 64 KiB; at most
    /// [`MAX_BODY_LIMIT`]). A larger body — known from its `size_hint` or found while buffering — is
    /// sent once and not retried (counted in [`RetryHandle::body_too_large`]).
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The retry budget (default [`Budget::default`]); [`Budget::unlimited`] turns it off.
    pub fn budget(mut self, budget: Budget) -> Self {
        self.budget = budget;
        self
    }

    /// The longest a service's retry hint (`Retry-After`, `grpc-retry-pushback-ms`, a rejection's
    /// `retry_after`) may make the layer wait before a retry (default: the backoff's
    /// [`max`](Backoff::max); at most [`MAX_DELAY`]). A longer hint waits this long.
    pub fn retry_after_cap(mut self, cap: Duration) -> Self {
        self.retry_after_cap = Some(cap);
        self
    }

    /// Whether an [`Elapsed`](palisade_core::error::Elapsed) error is retried (default `true`): a
    /// per-attempt timeout placed *inside* the retry layer is exactly what retries are for. A total
    /// timeout placed *outside* the retry layer is never seen by it.
    pub fn retry_timeouts(mut self, retry: bool) -> Self {
        self.retry_timeouts = retry;
        self
    }

    /// Seeds the jitter generator, for reproducible delays in tests (default: seeded from entropy).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Where give-ups and budget exhaustion are recorded (default [`Audit::disabled`]).
    pub fn audit(mut self, audit: &Audit) -> Self {
        self.audit = audit.clone();
        self
    }

    /// Replays requests of any type with `clone` instead of buffering `http::Request` bodies. `clone`
    /// is called before each attempt but the last; `None` means "cannot be replayed": the request is
    /// sent once (or the failure returned). Safe-method rules and [`retry_if`](Self::retry_if) do not
    /// apply — `clone` decides — and the inner service receives the requests unchanged.
    ///
    /// ```
    /// use palisade_core::classify::ErrorsOnly;
    /// use palisade_retry::RetryLayer;
    ///
    /// #[derive(Clone)]
    /// struct Query(String);
    ///
    /// let layer = RetryLayer::builder()
    ///     .classify(ErrorsOnly)
    ///     .clone_request(|q: &Query| Some(q.clone()))
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn clone_request<F>(self, clone: F) -> RetryBuilder<C, CloneWith<F>> {
        RetryBuilder {
            classify: self.classify,
            replay: CloneWith(clone),
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            retry_after_cap: self.retry_after_cap,
            max_body: self.max_body,
            retry_if: self.retry_if,
            retry_timeouts: self.retry_timeouts,
            budget: self.budget,
            seed: self.seed,
            audit: self.audit,
        }
    }

    /// Checks the configuration and builds the layer (and its budget and counters, shared by every
    /// service it makes).
    ///
    /// # Errors
    ///
    /// Zero attempts or more than [`MAX_ATTEMPTS_LIMIT`], a `max_body` above [`MAX_BODY_LIMIT`], a
    /// backoff base above its maximum, a zero decorrelated base, a backoff maximum, jitter or
    /// `retry_after_cap` above [`MAX_DELAY`], a budget ratio outside 0–1000 or a budget window that is
    /// not 1–60 whole seconds.
    pub fn build(self) -> Result<RetryLayer<C, R>, BuildError> {
        if self.max_attempts == 0 {
            return Err(BuildError::ZeroAttempts);
        }
        if self.max_attempts > MAX_ATTEMPTS_LIMIT {
            return Err(BuildError::TooManyAttempts(self.max_attempts));
        }
        if self.max_body > MAX_BODY_LIMIT {
            return Err(BuildError::MaxBodyTooLarge(self.max_body));
        }
        self.backoff.validate()?;
        if let Some(cap) = self.retry_after_cap.filter(|cap| *cap > MAX_DELAY) {
            return Err(BuildError::DelayTooLong {
                setting: "retry_after_cap",
                delay: cap,
            });
        }
        let budget = self.budget.build()?;
        Ok(RetryLayer {
            shared: Arc::new(Shared {
                classify: self.classify,
                replay: self.replay,
                max_attempts: self.max_attempts,
                backoff: self.backoff,
                retry_after_cap: self.retry_after_cap.unwrap_or(self.backoff.max()),
                max_body: self.max_body as u64,
                retry_if: self.retry_if,
                retry_timeouts: self.retry_timeouts,
                rng: self
                    .seed
                    .map_or_else(SharedRng::from_entropy, SharedRng::seeded),
                audit: self.audit,
                stats: Stats {
                    budget,
                    ..Stats::default()
                },
            }),
        })
    }
}

/// A configuration [`RetryBuilder::build`] refused.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum BuildError {
    /// `max_attempts(0)`: at least the first call must be made.
    ZeroAttempts,
    /// `max_attempts` above [`MAX_ATTEMPTS_LIMIT`].
    TooManyAttempts(u32),
    /// `max_body` above [`MAX_BODY_LIMIT`].
    MaxBodyTooLarge(usize),
    /// A delay above [`MAX_DELAY`]: `setting` is `"backoff"` (its maximum, or decorrelated cap),
    /// `"jitter"` or `"retry_after_cap"`.
    DelayTooLong {
        /// The setting.
        setting: &'static str,
        /// The delay given.
        delay: Duration,
    },
    /// The backoff base is larger than its maximum.
    BaseExceedsMax {
        /// The base delay.
        base: Duration,
        /// The maximum delay.
        max: Duration,
    },
    /// Decorrelated backoff with a zero base would never wait.
    ZeroDecorrelatedBase,
    /// The budget ratio is not a number from 0 to 1000.
    InvalidRatio(f64),
    /// The budget window is not 1 to 60 whole seconds.
    InvalidWindow(Duration),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::ZeroAttempts => f.write_str("max_attempts must be at least 1"),
            BuildError::TooManyAttempts(n) => {
                write!(
                    f,
                    "max_attempts must be at most {MAX_ATTEMPTS_LIMIT}, got {n}"
                )
            }
            BuildError::MaxBodyTooLarge(n) => {
                write!(
                    f,
                    "max_body must be at most {MAX_BODY_LIMIT} bytes, got {n}"
                )
            }
            BuildError::DelayTooLong { setting, delay } => {
                write!(f, "{setting} must be at most {MAX_DELAY:?}, got {delay:?}")
            }
            BuildError::BaseExceedsMax { base, max } => {
                write!(f, "backoff base {base:?} exceeds its maximum {max:?}")
            }
            BuildError::ZeroDecorrelatedBase => {
                f.write_str("decorrelated backoff needs a base above zero")
            }
            BuildError::InvalidRatio(r) => {
                write!(f, "retry budget ratio must be from 0 to 1000, got {r}")
            }
            BuildError::InvalidWindow(w) => write!(
                f,
                "retry budget window must be 1 to 60 whole seconds, got {w:?}"
            ),
        }
    }
}

impl Error for BuildError {}

/// A [`Layer`] that retries failed requests; see the [crate docs](crate).
///
/// The configuration, budget, jitter generator and counters are built once by
/// [`RetryBuilder::build`] and shared by every service the layer makes: [`layer`](Layer::layer) only
/// clones an `Arc`.
pub struct RetryLayer<C = Grpc, R = BufferBody> {
    shared: Arc<Shared<C, R>>,
}

impl RetryLayer {
    /// A builder with the defaults.
    pub fn builder() -> RetryBuilder {
        RetryBuilder::default()
    }

    /// A layer with the defaults (see the [crate docs](crate)).
    pub fn new() -> Self {
        match RetryBuilder::default().build() {
            Ok(layer) => layer,
            Err(e) => unreachable!("the defaults are valid: {e}"),
        }
    }
}

impl Default for RetryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<C, R> RetryLayer<C, R>
where
    C: Send + Sync + 'static,
    R: Send + Sync + 'static,
{
    /// A handle to the layer's counters, shared by every service it makes.
    pub fn handle(&self) -> RetryHandle {
        RetryHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<C, R> Clone for RetryLayer<C, R> {
    fn clone(&self) -> Self {
        RetryLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<C: fmt::Debug, R: fmt::Debug> fmt::Debug for RetryLayer<C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.shared, f)
    }
}

impl<S, C, R> Layer<S> for RetryLayer<C, R> {
    type Service = Retry<S, C, R>;

    fn layer(&self, inner: S) -> Retry<S, C, R> {
        Retry::from_shared(inner, self.shared.clone())
    }
}

trait StatsOf: Send + Sync {
    fn stats(&self) -> &Stats;
}

impl<C: Send + Sync, R: Send + Sync> StatsOf for Shared<C, R> {
    fn stats(&self) -> &Stats {
        &self.stats
    }
}

/// The counters of a [`RetryLayer`], shared by every service it makes; a cheap `Clone`.
///
/// All counters are monotonic.
#[derive(Clone)]
pub struct RetryHandle {
    shared: Arc<dyn StatsOf>,
}

impl RetryHandle {
    fn stats(&self) -> &Stats {
        self.shared.stats()
    }

    /// Requests received (first attempts), retryable or not.
    pub fn requests(&self) -> u64 {
        self.stats().requests.load(Relaxed)
    }

    /// Retries sent (attempts after the first).
    pub fn retries(&self) -> u64 {
        self.stats().retries.load(Relaxed)
    }

    /// Retryable failures returned without a retry because the budget was spent.
    pub fn budget_refused(&self) -> u64 {
        self.stats().budget_refused.load(Relaxed)
    }

    /// Requests whose last allowed attempt failed in a way that would otherwise have been retried —
    /// with [`max_attempts(1)`](RetryBuilder::max_attempts), every such failure of a retryable request.
    /// Not counted: failures the budget refused to retry ([`budget_refused`](Self::budget_refused)),
    /// requests that cannot be replayed (an unsafe method, a body over the limit, a clone function
    /// returning `None`), and responses whose service asked for no retry (a negative or unparseable
    /// `grpc-retry-pushback-ms`).
    pub fn gave_up(&self) -> u64 {
        self.stats().gave_up.load(Relaxed)
    }

    /// Retryable requests sent once, without retries, because their body was over
    /// [`max_body`](RetryBuilder::max_body).
    pub fn body_too_large(&self) -> u64 {
        self.stats().body_too_large.load(Relaxed)
    }

    /// Whether the budget refused the latest retry it was asked for.
    pub fn budget_exhausted(&self) -> bool {
        self.stats().budget_exhausted.load(Relaxed)
    }
}

impl fmt::Debug for RetryHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryHandle")
            .field("requests", &self.requests())
            .field("retries", &self.retries())
            .field("budget_refused", &self.budget_refused())
            .field("gave_up", &self.gave_up())
            .field("body_too_large", &self.body_too_large())
            .finish()
    }
}
