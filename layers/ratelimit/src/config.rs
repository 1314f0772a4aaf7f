//! The builder: every knob of a rate limiter, validated once in `build()`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::audit::Audit;
use palisade_core::keymap::{KeyMap, MAX_IDLE};

use crate::gcra::{Penalty, Rate};
use crate::limiter::{Limiter, Tier};
use crate::store::{MemoryStore, Store};
use crate::RateLimitLayer;
use palisade_core::signal::LoadSignal;

pub(crate) const DEFAULT_TIER: &str = "default";
pub(crate) const ANONYMOUS_TIER: &str = "anonymous";

/// The most tiers a layer has, the default tier included (at build and at run time).
pub const MAX_TIERS: usize = 1_024;

/// The most tenants assigned to tiers at once (at build and at run time).
pub const MAX_ASSIGNMENTS: usize = 1_000_000;

pub use palisade_core::config::BuildError;

/// The layer name in this crate's [`BuildError`]s.
pub(crate) const LAYER: &str = "rate limit";

/// What happens to a request that carries no tenant key (its source is absent from the request).
///
/// A key that is present but malformed (empty, too long, not visible ASCII, a repeated header) is a
/// different decision, [`MalformedKey`]: by default it is refused with `400` whatever this policy says,
/// so a client cannot leave its own bucket for the anonymous one by sending garbage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MissingKey {
    /// Refuse it with the extractor's [`KeyError`](palisade_core::key::KeyError): the rescue layer
    /// answers `400 Bad Request` with a problem body saying what was wrong with the key. The default.
    #[default]
    Reject,
    /// Let it share one "anonymous" bucket with every other keyless request, at the rate of the tier
    /// named `"anonymous"` if one is configured, else the default tier.
    Anonymous,
}

pub use palisade_core::key::MalformedKey;

/// Builds a [`RateLimitLayer`]. Start with [`RateLimitLayer::builder`].
///
/// Defaults: 100 requests per second with bursts of 100 for every tenant (tier `"default"`); no
/// global limit; requests without a key are rejected ([`MissingKey::Reject`]); no penalty; no
/// adaptive scaling; at most 100,000 tracked tenants, full buckets forgotten after 10 minutes idle
/// (or the longest refill time);
/// no `RateLimit` header on success; no audit.
///
/// All settings are checked in `build()`, which names the wrong one in its [`BuildError`].
#[derive(Debug, Clone)]
pub struct Builder<E> {
    extractor: E,
    default_rate: Rate,
    tiers: Vec<(String, Rate)>,
    assignments: Vec<(PendingTenant, String)>,
    global: Option<Rate>,
    missing: MissingKey,
    malformed: MalformedKey,
    penalty: Option<Penalty>,
    adaptive: Option<(LoadSignal, f64)>,
    headers_on_success: bool,
    audit: Audit,
    max_keys: usize,
    idle_timeout: Option<Duration>,
}

/// A tenant assignment made in the builder: the key hashed later with the layer's hasher.
#[derive(Clone)]
struct PendingTenant(Arc<HashAndLabel>);

/// Hashes a tenant key with the layer's hasher and labels it for audit.
type HashAndLabel = dyn Fn(&std::hash::RandomState) -> (u64, String) + Send + Sync;

impl fmt::Debug for PendingTenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TenantKey")
    }
}

impl<E> Builder<E> {
    pub(crate) fn new(extractor: E) -> Self {
        Builder {
            extractor,
            default_rate: Rate::per_second(100),
            tiers: Vec::new(),
            assignments: Vec::new(),
            global: None,
            missing: MissingKey::Reject,
            malformed: MalformedKey::Reject,
            penalty: None,
            adaptive: None,
            headers_on_success: false,
            audit: Audit::disabled(),
            max_keys: 100_000,
            idle_timeout: None,
        }
    }

    /// The rate of every tenant not assigned to another tier (the tier named `"default"`).
    pub fn default_rate(mut self, rate: Rate) -> Self {
        self.default_rate = rate;
        self
    }

    /// Defines a tier: a named rate that tenants are assigned to with [`tenant`](Self::tenant) (or at
    /// runtime through the handle). The name is the policy name clients see in the `RateLimit`
    /// headers: 1 to 64 visible ASCII characters, no `"` or `\`. A tier named `"anonymous"` is the rate
    /// of keyless requests under [`MissingKey::Anonymous`]; `"global"` is reserved. At most
    /// [`MAX_TIERS`] tiers, the default one included.
    pub fn tier(mut self, name: impl Into<String>, rate: Rate) -> Self {
        self.tiers.push((name.into(), rate));
        self
    }

    /// Assigns a tenant to a tier. `key` must be of the type the key extractor yields (for
    /// [`HeaderKey`](palisade_core::key::HeaderKey), an `http::HeaderValue`): it is matched by hash.
    /// A per-tenant override is a tier of one: `.tier("acme", rate).tenant(acme, "acme")`.
    pub fn tenant<Q>(mut self, key: Q, tier: impl Into<String>) -> Self
    where
        Q: std::hash::Hash + fmt::Debug + Send + Sync + 'static,
    {
        let key = Arc::new(key);
        self.assignments.push((
            PendingTenant(Arc::new(move |h: &std::hash::RandomState| {
                (
                    std::hash::BuildHasher::hash_one(h, &*key),
                    crate::limiter::label(&*key),
                )
            })),
            tier.into(),
        ));
        self
    }

    /// A limit on all requests together, checked after the tenant's own (a request refused by its
    /// tenant's bucket does not use global quota; one refused by the global limit gets its tenant
    /// quota back). Rejections name the policy `"global"`. Per process.
    pub fn global(mut self, rate: Rate) -> Self {
        self.global = Some(rate);
        self
    }

    /// What to do with requests that carry no key (default: [`MissingKey::Reject`]).
    pub fn missing_key(mut self, policy: MissingKey) -> Self {
        self.missing = policy;
        self
    }

    /// What to do with requests whose key is present but malformed (default: [`MalformedKey::Reject`],
    /// `400` whatever the missing-key policy). [`MalformedKey::AsMissing`] hands them to the
    /// [`missing_key`](Self::missing_key) policy instead — under [`MissingKey::Anonymous`], into the
    /// anonymous bucket, which lets any client choose that bucket over its own: opt in only where keys are
    /// not under the clients' control.
    pub fn malformed_key(mut self, policy: MalformedKey) -> Self {
        self.malformed = policy;
        self
    }

    /// Repeat offenders wait longer: from the second violation streak on (within the decay), each
    /// new streak adds `base × 2^(level - 2)`, capped at `max`, before the tenant is admitted again;
    /// each `decay` without a violation forgives one level. See [`Penalty`].
    ///
    /// `max` must be at least `base` and at most a day; `decay` between 1 ms and a day (it is counted in
    /// whole milliseconds). Levels go up to 127. A bucket at offence level 2 or more is not forgotten until
    /// its level has decayed to 1 (`(level − 1) × decay` after the last violation), so flushing the tenant
    /// map does not reset a repeat offender; a first offender's bucket (level 1, no penalty yet) is evicted
    /// like any idle one, so a flood of one-time offenders cannot pin the map.
    pub fn penalty(mut self, base: Duration, max: Duration, decay: Duration) -> Self {
        self.penalty = Some(Penalty { base, max, decay });
        self
    }

    /// Adaptive mode: quotas shrink as `load` rises — multiplied by `1 - load × (1 - floor)`, so by
    /// `floor` (in `(0, 1]`) at full load. Sustained rate and burst shrink together; state is kept.
    pub fn adaptive(mut self, load: &LoadSignal, floor: f64) -> Self {
        self.adaptive = Some((load.clone(), floor));
        self
    }

    /// Adds `RateLimit: "<tier>";r=<remaining>;t=<seconds>` to successful responses (off by default:
    /// it costs a small allocation per response).
    pub fn headers_on_success(mut self, on: bool) -> Self {
        self.headers_on_success = on;
        self
    }

    /// Records violation streaks and runtime changes in `audit`.
    pub fn audit(mut self, audit: &Audit) -> Self {
        self.audit = audit.clone();
        self
    }

    /// The most tenants tracked at once (default 100,000; ~100 bytes each; from 1 to
    /// [`MAX_KEYS`](palisade_core::keymap::MAX_KEYS)). New tenants over the cap share one overflow
    /// bucket; see [`MemoryStore`].
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// A tenant's bucket may be forgotten after this long unused, once it is full again (default: 10
    /// minutes, or the longest refill time of the configured tiers if that is longer). Must be at least
    /// the longest refill time of any tier, so that an active tenant is never forgotten mid-window;
    /// tiers created at runtime are held to it too. At most 366 days
    /// ([`MAX_IDLE`](palisade_core::keymap::MAX_IDLE)), which is also the longest refill time a rate
    /// may have.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = Some(idle);
        self
    }

    /// Builds the layer with the in-memory store. Its state is shared by every service it wraps.
    pub fn build(self) -> Result<RateLimitLayer<E>, BuildError> {
        KeyMap::<()>::check(LAYER, self.max_keys, self.idle_timeout.unwrap_or_default())?;
        let idle = self.idle_timeout.unwrap_or_else(|| {
            self.tiers
                .iter()
                .map(|(_, r)| r.refill_time())
                .chain([self.default_rate.refill_time(), Duration::from_secs(600)])
                .max()
                .unwrap_or_default()
                // (a rate refilling slower than this is refused below, for itself)
                .min(MAX_IDLE)
        });
        let store = MemoryStore::new(self.max_keys, idle);
        self.finish(store, Some(idle))
    }

    /// Builds the layer on another [`Store`]. `max_keys` and `idle_timeout` are the store's business.
    pub fn build_with_store<S: Store>(self, store: S) -> Result<RateLimitLayer<E, S>, BuildError> {
        self.finish(store, None)
    }

    fn finish<S: Store>(
        self,
        store: S,
        max_refill: Option<Duration>,
    ) -> Result<RateLimitLayer<E, S>, BuildError> {
        validate_rate("default_rate", &self.default_rate, max_refill)?;
        let mut tiers: HashMap<Arc<str>, Arc<Tier>> = HashMap::new();
        let name: Arc<str> = Arc::from(DEFAULT_TIER);
        tiers.insert(name.clone(), Arc::new(Tier::new(name, self.default_rate)));
        if self.tiers.len() >= MAX_TIERS {
            return Err(BuildError::new(
                LAYER,
                "tier",
                format!("a layer has at most {MAX_TIERS} tiers (default included)"),
            ));
        }
        for (name, rate) in &self.tiers {
            validate_name(name)?;
            if name == DEFAULT_TIER {
                return Err(BuildError::new(
                    LAYER,
                    "tier",
                    "set the default tier with default_rate",
                ));
            }
            validate_rate("tier", rate, max_refill)?;
            let name: Arc<str> = Arc::from(name.as_str());
            tiers.insert(name.clone(), Arc::new(Tier::new(name, *rate)));
        }
        if let Some(g) = &self.global {
            validate_rate("global", g, None)?;
        }
        if let Some(p) = &self.penalty {
            if p.max < p.base {
                return Err(BuildError::new(
                    LAYER,
                    "penalty",
                    "max must be at least base",
                ));
            }
            if p.max > Duration::from_secs(86_400) {
                return Err(BuildError::new(
                    LAYER,
                    "penalty",
                    "max must be at most a day (a longer penalty is a ban; block the tenant instead)",
                ));
            }
            if p.decay < Duration::from_millis(1) || p.decay > Duration::from_secs(86_400) {
                return Err(BuildError::new(
                    LAYER,
                    "penalty",
                    format!(
                        "decay {:?} is not between 1 ms and a day (repeat offenders' buckets are \
                         kept for up to (level − 1) × decay after the last violation)",
                        p.decay
                    ),
                ));
            }
        }
        if let Some((_, floor)) = &self.adaptive {
            if !(*floor > 0.0 && *floor <= 1.0) {
                return Err(BuildError::new(
                    LAYER,
                    "adaptive",
                    format!("floor {floor} is not in (0, 1]"),
                ));
            }
        }
        let limiter = Limiter::new(
            self.extractor,
            store,
            tiers,
            self.global,
            (self.missing, self.malformed),
            self.penalty,
            self.adaptive,
            self.headers_on_success,
            self.audit,
            max_refill,
        );
        for (key, tier) in &self.assignments {
            let (hash, label) = (key.0)(&limiter.hasher);
            limiter.assign(hash, label, tier)?;
        }
        Ok(RateLimitLayer::from_limiter(Arc::new(limiter)))
    }
}

pub(crate) fn validate_name(name: &str) -> Result<(), BuildError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| (0x21..=0x7E).contains(&b) && b != b'"' && b != b'\\');
    if !ok {
        return Err(BuildError::new(
            LAYER,
            "tier",
            format!("`{name}` is not 1 to 64 visible ASCII characters without `\"` or `\\`"),
        ));
    }
    if name == "global" {
        return Err(BuildError::new(
            LAYER,
            "tier",
            "the name `global` is reserved",
        ));
    }
    Ok(())
}

pub(crate) fn validate_rate(
    setting: &'static str,
    rate: &Rate,
    max_refill: Option<Duration>,
) -> Result<(), BuildError> {
    rate.validate()
        .map_err(|p| BuildError::new(LAYER, setting, p))?;
    if let Some(idle) = max_refill {
        if rate.refill_time() > idle {
            return Err(BuildError::new(LAYER,
                "idle_timeout",
                format!(
                    "{idle:?} is shorter than the {:?} a bucket of {rate:?} takes to refill: active tenants could be forgotten mid-window",
                    rate.refill_time()
                ),
            ));
        }
    }
    Ok(())
}
