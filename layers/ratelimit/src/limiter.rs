//! State shared by every clone of a rate-limit layer: tiers, tenant assignments, the store, the global
//! bucket, and the decision made for each request.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use http::HeaderValue;
use palisade_core::audit::{Audit, AuditEvent};
use palisade_core::error::{BoxError, Quota, RateLimited};
use palisade_core::key::{KeyError, KeyExtractor, MalformedKey};
use tokio::time::Instant;

use crate::config::{BuildError, MissingKey};
use crate::gcra::{nanos, Cell, Decision, Gcra, Op, Penalty, Rate, Streak};
use crate::store::{Bucket, Store};
use palisade_core::signal::LoadSignal;

/// One tier: a named rate, changeable at runtime, with its counters.
pub(crate) struct Tier {
    pub(crate) name: Arc<str>,
    /// `"name"` as an RFC 8941 sf-string, for the `RateLimit` header on success.
    quoted: Box<str>,
    t: AtomicU64,
    tau: AtomicU64,
    /// limit (high 32 bits) | burst (low 32 bits).
    limit_burst: AtomicU64,
    period: AtomicU64,
    pub(crate) admitted: AtomicU64,
    pub(crate) rejected: AtomicU64,
}

/// A tier's parameters for one request (scaled by adaptive mode).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Effective {
    pub(crate) gcra: Gcra,
    pub(crate) limit: u64,
    pub(crate) period: Duration,
}

impl Tier {
    pub(crate) fn new(name: Arc<str>, rate: Rate) -> Self {
        let tier = Tier {
            quoted: format!("\"{name}\"").into_boxed_str(),
            name,
            t: AtomicU64::new(0),
            tau: AtomicU64::new(0),
            limit_burst: AtomicU64::new(0),
            period: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        };
        tier.set(rate);
        tier
    }

    /// Changes the rate. Readers see each field atomically; a request racing the change may be judged
    /// with a mix of the old and new parameters, once.
    pub(crate) fn set(&self, rate: Rate) {
        let g = rate.gcra();
        self.t.store(g.t, Ordering::Relaxed);
        self.tau.store(g.tau, Ordering::Relaxed);
        self.limit_burst.store(
            (u64::from(rate.limit()) << 32) | u64::from(rate.burst_size()),
            Ordering::Relaxed,
        );
        self.period.store(nanos(rate.period()), Ordering::Relaxed);
    }

    pub(crate) fn rate(&self) -> Rate {
        let lb = self.limit_burst.load(Ordering::Relaxed);
        Rate::new(
            (lb >> 32) as u32,
            Duration::from_nanos(self.period.load(Ordering::Relaxed)),
        )
        .burst(lb as u32)
    }

    /// The parameters for a request; `load_bits` is the load signal's raw value (0 = no load).
    #[inline]
    pub(crate) fn effective(&self, load_bits: u64, floor: f64) -> Effective {
        if load_bits == 0 {
            return Effective {
                gcra: Gcra {
                    t: self.t.load(Ordering::Relaxed),
                    tau: self.tau.load(Ordering::Relaxed),
                },
                limit: self.limit_burst.load(Ordering::Relaxed) >> 32,
                period: Duration::from_nanos(self.period.load(Ordering::Relaxed)),
            };
        }
        self.scaled(scale(f64::from_bits(load_bits), floor))
    }

    #[cold]
    fn scaled(&self, factor: f64) -> Effective {
        let rate = self.rate();
        let scaled = rate.scaled(factor);
        Effective {
            gcra: scaled.gcra(),
            limit: ((f64::from(rate.limit()) * factor + 1e-9).floor() as u64).max(1),
            period: rate.period(),
        }
    }
}

/// The quota multiplier at `load`: 1 at no load, `floor` at full load, linear in between.
pub(crate) fn scale(load: f64, floor: f64) -> f64 {
    1.0 - load.clamp(0.0, 1.0) * (1.0 - floor)
}

impl fmt::Debug for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tier")
            .field("name", &self.name)
            .field("rate", &self.rate())
            .finish_non_exhaustive()
    }
}

/// Keys of the assignment map are already random 64-bit hashes: hash them as themselves.
#[derive(Default)]
pub(crate) struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type ByHash<V> = HashMap<u64, V, BuildHasherDefault<Identity>>;

/// A tenant assigned to a tier.
pub(crate) struct Assignment {
    pub(crate) tier: Arc<Tier>,
    pub(crate) label: String,
}

pub(crate) struct Global {
    pub(crate) tier: Tier,
    cell: Cell,
}

/// Everything a layer shares: built once in `build()`.
pub(crate) struct Limiter<E, S> {
    pub(crate) extractor: E,
    pub(crate) store: S,
    pub(crate) hasher: RandomState,
    pub(crate) default_tier: Arc<Tier>,
    /// The tier named `"anonymous"`, always allocated; keyless requests use it only while
    /// `anonymous_set` (it is in `tiers`), else the default tier.
    pub(crate) anonymous_tier: Arc<Tier>,
    anonymous_set: AtomicBool,
    pub(crate) tiers: RwLock<HashMap<Arc<str>, Arc<Tier>>>,
    pub(crate) assignments: RwLock<ByHash<Assignment>>,
    has_assignments: AtomicBool,
    pub(crate) global: Option<Global>,
    pub(crate) missing: MissingKey,
    pub(crate) malformed: MalformedKey,
    pub(crate) penalty: Option<Penalty>,
    pub(crate) adaptive: Option<(LoadSignal, f64)>,
    pub(crate) headers_on_success: bool,
    pub(crate) audit: Audit,
    /// The idle timeout of the built-in store: every tier must refill within it.
    pub(crate) max_refill: Option<Duration>,
    epoch: Instant,
}

/// A tier resolved for one request: borrowed in the common case, shared when assigned.
enum TierRef<'a> {
    Borrowed(&'a Tier),
    Shared(Arc<Tier>),
}

impl std::ops::Deref for TierRef<'_> {
    type Target = Tier;

    fn deref(&self) -> &Tier {
        match self {
            TierRef::Borrowed(t) => t,
            TierRef::Shared(t) => t,
        }
    }
}

impl<E, S: Store> Limiter<E, S> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        extractor: E,
        store: S,
        tiers: HashMap<Arc<str>, Arc<Tier>>,
        global: Option<Rate>,
        (missing, malformed): (MissingKey, MalformedKey),
        penalty: Option<Penalty>,
        adaptive: Option<(LoadSignal, f64)>,
        headers_on_success: bool,
        audit: Audit,
        max_refill: Option<Duration>,
    ) -> Self {
        let default_tier = tiers[crate::config::DEFAULT_TIER].clone();
        let configured = tiers.get(crate::config::ANONYMOUS_TIER).cloned();
        let anonymous_set = configured.is_some();
        let anonymous_tier = configured.unwrap_or_else(|| {
            Arc::new(Tier::new(
                Arc::from(crate::config::ANONYMOUS_TIER),
                default_tier.rate(),
            ))
        });
        Limiter {
            extractor,
            store,
            hasher: RandomState::new(),
            default_tier,
            anonymous_tier,
            anonymous_set: AtomicBool::new(anonymous_set),
            tiers: RwLock::new(tiers),
            assignments: RwLock::new(ByHash::default()),
            has_assignments: AtomicBool::new(false),
            global: global.map(|rate| Global {
                tier: Tier::new(Arc::from("global"), rate),
                cell: Cell::new(),
            }),
            missing,
            malformed,
            penalty,
            adaptive,
            headers_on_success,
            audit,
            max_refill,
            epoch: Instant::now(),
        }
    }

    #[inline]
    fn load(&self) -> (u64, f64) {
        match &self.adaptive {
            Some((signal, floor)) => (signal.get().to_bits(), *floor),
            None => (0, 1.0),
        }
    }

    #[inline]
    fn tier_of(&self, bucket: Bucket) -> TierRef<'_> {
        match bucket {
            Bucket::Anonymous => TierRef::Borrowed(if self.anonymous_set.load(Ordering::Acquire) {
                &self.anonymous_tier
            } else {
                &self.default_tier
            }),
            Bucket::Tenant(hash) => {
                if self.has_assignments.load(Ordering::Relaxed) {
                    if let Some(a) = read(&self.assignments).get(&hash) {
                        return TierRef::Shared(a.tier.clone());
                    }
                }
                TierRef::Borrowed(&self.default_tier)
            }
        }
    }

    /// Decides on one request: `Ok` with the `RateLimit` header to add (if enabled), or the rejection.
    #[inline]
    pub(crate) fn decide<Req>(&self, req: &Req) -> Result<Option<HeaderValue>, BoxError>
    where
        E: KeyExtractor<Req>,
    {
        let now = Instant::now();
        let key = self.extractor.extract(req);
        let bucket = match &key {
            Ok(k) => Bucket::Tenant(self.hasher.hash_one(k)),
            Err(e) if self.malformed.as_missing(e) => match self.missing {
                MissingKey::Anonymous => Bucket::Anonymous,
                MissingKey::Reject => return Err(reject_key(e)),
            },
            Err(e) => return Err(reject_key(e)),
        };
        let tier = self.tier_of(bucket);
        let (load, floor) = self.load();
        let eff = tier.effective(load, floor);
        let (d, grant) =
            self.store
                .acquire(bucket, eff.gcra, self.penalty.as_ref(), now, Op::Consume);
        if !d.is_admitted() {
            tier.rejected.fetch_add(1, Ordering::Relaxed);
            if let Some(streak) = d.streak() {
                self.on_streak(&key, &tier, streak, &d);
            }
            return Err(rate_limited(&tier.name, eff, &d));
        }
        if let Some(g) = &self.global {
            let geff = g.tier.effective(load, floor);
            let ticks = nanos(now.saturating_duration_since(self.epoch));
            let gd = g.cell.acquire(geff.gcra, None, ticks, Op::Consume);
            if !gd.is_admitted() {
                // The tenant did nothing wrong: undo its admission (quota and violation streak) on
                // the bucket in hand.
                self.store.refund(grant, eff.gcra, &d);
                g.tier.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(rate_limited(&g.tier.name, geff, &gd));
            }
        }
        tier.admitted.fetch_add(1, Ordering::Relaxed);
        Ok(if self.headers_on_success {
            success_header(&tier, &d)
        } else {
            None
        })
    }

    #[cold]
    fn on_streak<K: fmt::Debug>(
        &self,
        key: &Result<K, KeyError>,
        tier: &Tier,
        streak: Streak,
        d: &Decision,
    ) {
        let label = match key {
            Ok(k) => label(k),
            Err(_) => "anonymous".to_owned(),
        };
        tracing::debug!(
            tenant = %label,
            tier = %tier.name,
            level = streak.level,
            penalty = ?streak.penalty,
            "rate limit violation streak"
        );
        self.audit.record_with(|| {
            AuditEvent::new("ratelimit.violation")
                .tenant(label)
                .detail("tier", &*tier.name)
                .detail("level", streak.level)
                .detail("penalty_ms", millis(streak.penalty))
                .detail("retry_after_ms", millis(d.retry_after()))
        });
    }

    /// What a request from `bucket` would get now, without consuming anything.
    pub(crate) fn check(&self, bucket: Bucket) -> (Arc<str>, Decision) {
        let tier = self.tier_of(bucket);
        let (load, floor) = self.load();
        let eff = tier.effective(load, floor);
        let now = Instant::now();
        let (d, _) = self
            .store
            .acquire(bucket, eff.gcra, self.penalty.as_ref(), now, Op::Peek);
        if !d.is_admitted() {
            return (tier.name.clone(), d);
        }
        if let Some(g) = &self.global {
            let geff = g.tier.effective(load, floor);
            let ticks = nanos(now.saturating_duration_since(self.epoch));
            let gd = g.cell.acquire(geff.gcra, None, ticks, Op::Peek);
            if !gd.is_admitted() {
                return (g.tier.name.clone(), gd);
            }
        }
        (tier.name.clone(), d)
    }

    pub(crate) fn validate_rate(
        &self,
        setting: &'static str,
        rate: &Rate,
    ) -> Result<(), BuildError> {
        crate::config::validate_rate(setting, rate, self.max_refill)
    }

    /// Creates or changes a tier. Creating `"anonymous"` hands keyless requests to it.
    pub(crate) fn set_tier(&self, name: &str, rate: Rate) -> Result<(), BuildError> {
        crate::config::validate_name(name)?;
        self.validate_rate("tier", &rate)?;
        let mut tiers = write(&self.tiers);
        match tiers.get(name) {
            Some(t) => t.set(rate),
            None if tiers.len() >= crate::config::MAX_TIERS => {
                return Err(BuildError::new(
                    crate::config::LAYER,
                    "tier",
                    format!(
                        "a layer has at most {} tiers (default included)",
                        crate::config::MAX_TIERS
                    ),
                ));
            }
            None if name == crate::config::ANONYMOUS_TIER => {
                // The tier object keyless requests switch to: its rate first, then the switch.
                let t = &self.anonymous_tier;
                t.set(rate);
                t.admitted.store(0, Ordering::Relaxed);
                t.rejected.store(0, Ordering::Relaxed);
                tiers.insert(t.name.clone(), t.clone());
                self.anonymous_set.store(true, Ordering::Release);
            }
            None => {
                let name: Arc<str> = Arc::from(name);
                tiers.insert(name.clone(), Arc::new(Tier::new(name, rate)));
            }
        }
        drop(tiers);
        tracing::info!(tier = name, ?rate, "rate limit tier set");
        self.audit.record_with(|| {
            AuditEvent::new("ratelimit.tier_set")
                .detail("tier", name)
                .detail("limit", rate.limit())
                .detail("period_ms", millis(rate.period()))
                .detail("burst", rate.burst_size())
        });
        Ok(())
    }

    /// Removes a tier: `Ok(false)` if there is none of that name; refused for the default tier and for
    /// a tier with tenants assigned to it. Removing `"anonymous"` hands keyless requests back to the
    /// default tier.
    pub(crate) fn remove_tier(&self, name: &str) -> Result<bool, BuildError> {
        if name == crate::config::DEFAULT_TIER {
            return Err(BuildError::new(
                crate::config::LAYER,
                "tier",
                "the default tier cannot be removed",
            ));
        }
        // Lock order: tiers, then assignments (as `assign`), so no tenant joins the tier meanwhile.
        let mut tiers = write(&self.tiers);
        let Some(tier) = tiers.get(name).cloned() else {
            return Ok(false);
        };
        let members = read(&self.assignments)
            .values()
            .filter(|a| Arc::ptr_eq(&a.tier, &tier))
            .count();
        if members > 0 {
            return Err(BuildError::new(
                crate::config::LAYER,
                "tier",
                format!(
                    "tier `{name}` still has {members} tenant{} assigned; move them first",
                    if members == 1 { "" } else { "s" }
                ),
            ));
        }
        tiers.remove(name);
        if name == crate::config::ANONYMOUS_TIER {
            self.anonymous_set.store(false, Ordering::Release);
        }
        drop(tiers);
        tracing::info!(tier = name, "rate limit tier removed");
        self.audit
            .record_with(|| AuditEvent::new("ratelimit.tier_removed").detail("tier", name));
        Ok(true)
    }

    pub(crate) fn set_global(&self, rate: Rate) -> Result<(), BuildError> {
        let Some(g) = &self.global else {
            return Err(BuildError::new(
                crate::config::LAYER,
                "global",
                "this layer was built without a global limit",
            ));
        };
        crate::config::validate_rate("global", &rate, None)?;
        g.tier.set(rate);
        tracing::info!(?rate, "global rate limit set");
        self.audit.record_with(|| {
            AuditEvent::new("ratelimit.global_set")
                .detail("limit", rate.limit())
                .detail("period_ms", millis(rate.period()))
                .detail("burst", rate.burst_size())
        });
        Ok(())
    }

    pub(crate) fn assign(&self, hash: u64, label: String, tier: &str) -> Result<(), BuildError> {
        // Hold the tiers (read) while assigning, so that the tier cannot be removed meanwhile.
        let tiers = read(&self.tiers);
        let Some(t) = tiers.get(tier).cloned() else {
            return Err(BuildError::new(
                crate::config::LAYER,
                "tier",
                format!("no tier named `{tier}`"),
            ));
        };
        let mut map = write(&self.assignments);
        if map.len() >= crate::config::MAX_ASSIGNMENTS && !map.contains_key(&hash) {
            return Err(BuildError::new(
                crate::config::LAYER,
                "tenant",
                format!(
                    "at most {} tenants are assigned to tiers",
                    crate::config::MAX_ASSIGNMENTS
                ),
            ));
        }
        map.insert(
            hash,
            Assignment {
                tier: t,
                label: label.clone(),
            },
        );
        self.has_assignments.store(true, Ordering::Relaxed);
        drop(map);
        drop(tiers);
        tracing::info!(tenant = %label, tier, "tenant assigned to rate limit tier");
        self.audit.record_with(|| {
            AuditEvent::new("ratelimit.tenant_assigned")
                .tenant(label)
                .detail("tier", tier)
        });
        Ok(())
    }

    pub(crate) fn unassign(&self, hash: u64) -> bool {
        let mut map = write(&self.assignments);
        let removed = map.remove(&hash);
        self.has_assignments
            .store(!map.is_empty(), Ordering::Relaxed);
        drop(map);
        if let Some(a) = &removed {
            tracing::info!(tenant = %a.label, "tenant back to the default rate limit tier");
            self.audit.record_with(|| {
                AuditEvent::new("ratelimit.tenant_unassigned").tenant(a.label.clone())
            });
        }
        removed.is_some()
    }
}

impl<E, S: fmt::Debug> fmt::Debug for Limiter<E, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("default_tier", &self.default_tier)
            .field("store", &self.store)
            .field("missing", &self.missing)
            .field("malformed", &self.malformed)
            .field("penalty", &self.penalty)
            .finish_non_exhaustive()
    }
}

#[cold]
fn reject_key(err: &KeyError) -> BoxError {
    Box::new(err.clone())
}

#[cold]
fn rate_limited(policy: &Arc<str>, eff: Effective, d: &Decision) -> BoxError {
    let (limit, window) = advertised(eff.limit, eff.period);
    let quota = Quota::new(limit, window, d.remaining(), d.reset()).with_policy(policy.clone());
    Box::new(RateLimited::new(d.retry_after()).with_quota(quota))
}

/// The quota to advertise for `limit` requests per `period`: the `RateLimit-Policy` window `w` is whole
/// seconds (draft-ietf-httpapi-ratelimit-headers), so the window is `period` rounded up to a whole
/// second and the quota is scaled to it, rounded down — `q / w` is never more generous than
/// `limit / period` (10 per 100 ms is `q=100;w=1`, 10 per 1.5 s is `q=13;w=2`).
pub(crate) fn advertised(limit: u64, period: Duration) -> (u64, Duration) {
    let secs = (period.as_secs() + u64::from(period.subsec_nanos() > 0)).max(1);
    let window = Duration::from_secs(secs);
    let period_ns = period.as_nanos().max(1);
    let q = u128::from(limit) * window.as_nanos() / period_ns;
    (u64::try_from(q).unwrap_or(u64::MAX), window)
}

/// `RateLimit: "tier";r=<remaining>;t=<seconds until full>`.
fn success_header(tier: &Tier, d: &Decision) -> Option<HeaderValue> {
    let reset = d.reset();
    let secs = reset.as_secs() + u64::from(reset.subsec_nanos() > 0);
    HeaderValue::try_from(format!("{};r={};t={}", tier.quoted, d.remaining(), secs)).ok()
}

/// A key for logs and audit: its `Debug` form without surrounding quotes, at most 128 bytes.
pub(crate) fn label<K: fmt::Debug + ?Sized>(key: &K) -> String {
    let mut s = format!("{key:?}");
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        s = s[1..s.len() - 1].to_owned();
    }
    if s.len() > 128 {
        let mut end = 128;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}
