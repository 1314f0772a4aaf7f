//! The handle: read counters, check without consuming, change tiers and assignments at runtime.

use std::fmt;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::config::BuildError;
use crate::gcra::{Decision, Rate};
use crate::limiter::{label, read, Limiter};
use crate::store::{Bucket, Store};
use palisade_core::signal::LoadSignal;

/// Admits and rejects of one tier (or of the global limit, named `"global"`, which counts only its
/// own rejections).
///
/// There is no `metrics` crate among the dependencies: read these counters from the handle and
/// export them with whatever the application uses.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TierMetrics {
    /// The tier's name.
    pub name: Arc<str>,
    /// The tier's current rate.
    pub rate: Rate,
    /// Requests admitted by the tier (and the global limit).
    pub admitted: u64,
    /// Requests the tier refused.
    pub rejected: u64,
}

/// What a request would get now, from [`RateLimitHandle::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Check {
    /// The policy that decides: the tenant's tier, or `"global"` if the global limit would refuse.
    pub policy: Arc<str>,
    /// The decision, as if the request were made now (nothing is consumed).
    pub decision: Decision,
}

pub(crate) trait Admin: Send + Sync {
    fn check(&self, bucket: Bucket) -> (Arc<str>, Decision);
    fn set_tier(&self, name: &str, rate: Rate) -> Result<(), BuildError>;
    fn remove_tier(&self, name: &str) -> Result<bool, BuildError>;
    fn set_global(&self, rate: Rate) -> Result<(), BuildError>;
    fn assign(&self, hash: u64, label: String, tier: &str) -> Result<(), BuildError>;
    fn unassign(&self, hash: u64) -> bool;
    fn tier_of(&self, hash: u64) -> Arc<str>;
    fn metrics(&self) -> Vec<TierMetrics>;
    fn tracked(&self) -> usize;
    fn overflowed(&self) -> u64;
    fn load(&self) -> Option<LoadSignal>;
}

impl<E: Send + Sync, S: Store> Admin for Limiter<E, S> {
    fn check(&self, bucket: Bucket) -> (Arc<str>, Decision) {
        Limiter::check(self, bucket)
    }

    fn set_tier(&self, name: &str, rate: Rate) -> Result<(), BuildError> {
        Limiter::set_tier(self, name, rate)
    }

    fn remove_tier(&self, name: &str) -> Result<bool, BuildError> {
        Limiter::remove_tier(self, name)
    }

    fn set_global(&self, rate: Rate) -> Result<(), BuildError> {
        Limiter::set_global(self, rate)
    }

    fn assign(&self, hash: u64, label: String, tier: &str) -> Result<(), BuildError> {
        Limiter::assign(self, hash, label, tier)
    }

    fn unassign(&self, hash: u64) -> bool {
        Limiter::unassign(self, hash)
    }

    fn tier_of(&self, hash: u64) -> Arc<str> {
        read(&self.assignments)
            .get(&hash)
            .map_or_else(|| self.default_tier.name.clone(), |a| a.tier.name.clone())
    }

    fn metrics(&self) -> Vec<TierMetrics> {
        let mut out: Vec<TierMetrics> = read(&self.tiers)
            .values()
            .map(|t| TierMetrics {
                name: t.name.clone(),
                rate: t.rate(),
                admitted: t.admitted.load(Ordering::Relaxed),
                rejected: t.rejected.load(Ordering::Relaxed),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(g) = &self.global {
            out.push(TierMetrics {
                name: g.tier.name.clone(),
                rate: g.tier.rate(),
                admitted: 0,
                rejected: g.tier.rejected.load(Ordering::Relaxed),
            });
        }
        out
    }

    fn tracked(&self) -> usize {
        self.store.tracked()
    }

    fn overflowed(&self) -> u64 {
        self.store.overflowed()
    }

    fn load(&self) -> Option<LoadSignal> {
        self.adaptive.as_ref().map(|(l, _)| l.clone())
    }
}

/// A handle to a rate-limit layer: synchronous, cheap to clone, for admin endpoints and tests.
///
/// Tenants are named by their key **as the extractor yields it** (for
/// [`HeaderKey`](palisade_core::key::HeaderKey), an `http::HeaderValue`), because they are matched by
/// hash: `handle.assign(&HeaderValue::from_static("acme"), "gold")`.
///
/// Changes take effect on the next request and keep every bucket's state. A GCRA bucket's state is
/// *time*: how far its theoretical arrival time runs ahead of now (consumption × the old emission
/// interval). The new rate judges that same debt: its sustained rate applies at once, and its burst is
/// available once the debt has shrunk below the new tolerance. A tenant that had used up a slow tier
/// and moves to a fast one is therefore admitted at the fast tier's rate straight away, but gets the
/// fast tier's full burst only after the old debt has been paid down (at most the old refill time).
#[derive(Clone)]
pub struct RateLimitHandle {
    hasher: RandomState,
    admin: Arc<dyn Admin>,
}

impl RateLimitHandle {
    pub(crate) fn new<E: Send + Sync + 'static, S: Store>(limiter: Arc<Limiter<E, S>>) -> Self {
        RateLimitHandle {
            hasher: limiter.hasher.clone(),
            admin: limiter,
        }
    }

    fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.hasher.hash_one(key)
    }

    /// What a request from `tenant` would get now, without consuming quota (for dashboards and
    /// pre-flight checks). An unknown tenant is not tracked by checking it; its check looks where its
    /// request would go: a fresh bucket if the store has room for it (a full store first sweeps out
    /// idle, forgiven buckets, as the request would — which changes no decision), else the overflow
    /// bucket.
    pub fn check<Q: Hash + ?Sized>(&self, tenant: &Q) -> Check {
        let (policy, decision) = self.admin.check(Bucket::Tenant(self.hash(tenant)));
        Check { policy, decision }
    }

    /// [`check`](Self::check) for the anonymous bucket.
    pub fn check_anonymous(&self) -> Check {
        let (policy, decision) = self.admin.check(Bucket::Anonymous);
        Check { policy, decision }
    }

    /// Creates tier `name` or changes its rate. Every tier is changeable this way: the default tier
    /// (`"default"`), the tier of keyless requests under
    /// [`MissingKey::Anonymous`](crate::MissingKey::Anonymous) (`"anonymous"`: creating it at run
    /// time moves those requests off the default tier, keeping the anonymous bucket's state), and the
    /// named tiers. The rate must refill within the layer's idle timeout; a layer has at most
    /// [`MAX_TIERS`](crate::MAX_TIERS) tiers.
    pub fn set_tier(&self, name: &str, rate: Rate) -> Result<(), BuildError> {
        self.admin.set_tier(name, rate)
    }

    /// Removes tier `name`: `Ok(true)` if it was removed, `Ok(false)` if there was no such tier.
    /// Refused for the default tier, and for a tier that tenants are still assigned to (move them
    /// with [`assign`](Self::assign) or [`unassign`](Self::unassign) first). Removing `"anonymous"`
    /// hands keyless requests back to the default tier. The tier's counters go with it.
    pub fn remove_tier(&self, name: &str) -> Result<bool, BuildError> {
        self.admin.remove_tier(name)
    }

    /// Changes the global limit (only if the layer was built with one).
    pub fn set_global(&self, rate: Rate) -> Result<(), BuildError> {
        self.admin.set_global(rate)
    }

    /// Moves `tenant` to an existing tier (at most [`MAX_ASSIGNMENTS`](crate::MAX_ASSIGNMENTS)
    /// tenants are assigned at once).
    pub fn assign<Q: Hash + fmt::Debug + ?Sized>(
        &self,
        tenant: &Q,
        tier: &str,
    ) -> Result<(), BuildError> {
        self.admin.assign(self.hash(tenant), label(tenant), tier)
    }

    /// Gives `tenant` its own rate: a tier named `name` (created or changed) with `tenant` in it.
    pub fn override_tenant<Q: Hash + fmt::Debug + ?Sized>(
        &self,
        tenant: &Q,
        name: &str,
        rate: Rate,
    ) -> Result<(), BuildError> {
        self.admin.set_tier(name, rate)?;
        self.assign(tenant, name)
    }

    /// Moves `tenant` back to the default tier; `false` if it was there.
    pub fn unassign<Q: Hash + ?Sized>(&self, tenant: &Q) -> bool {
        self.admin.unassign(self.hash(tenant))
    }

    /// The name of `tenant`'s tier.
    pub fn tier_of<Q: Hash + ?Sized>(&self, tenant: &Q) -> Arc<str> {
        self.admin.tier_of(self.hash(tenant))
    }

    /// Admits and rejects per tier, sorted by name, then the global limit's rejections.
    pub fn metrics(&self) -> Vec<TierMetrics> {
        self.admin.metrics()
    }

    /// How many tenants have a bucket of their own.
    pub fn tracked_tenants(&self) -> usize {
        self.admin.tracked()
    }

    /// How many requests of new tenants found the store full and used the overflow bucket.
    pub fn overflowed(&self) -> u64 {
        self.admin.overflowed()
    }

    /// The load signal of adaptive mode, if enabled.
    pub fn load_signal(&self) -> Option<LoadSignal> {
        self.admin.load()
    }
}

impl fmt::Debug for RateLimitHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitHandle")
            .field("tracked_tenants", &self.tracked_tenants())
            .field("overflowed", &self.overflowed())
            .finish_non_exhaustive()
    }
}
