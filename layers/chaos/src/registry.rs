//! The active fault set of one layer: a flag read on every request, a snapshot read only when the flag
//! is set, and the bookkeeping (ids, expiry, audit) done by the handle.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockWriteGuard};
use std::time::Duration;

use http::{Request, StatusCode};
use palisade_core::audit::{Audit, AuditEvent};
use palisade_core::error::BoxError;
use palisade_core::key::KeyExtractor;
use palisade_core::rng::SharedRng;
use tokio::time::Instant;

use crate::fault::{Fault, FaultId, FaultKind, InjectedFault, TenantKey};

/// `next_expiry` when no active fault expires.
const NEVER: u64 = u64::MAX;

/// One injected fault.
pub(crate) struct Entry {
    pub(crate) id: FaultId,
    pub(crate) fault: Fault,
    pub(crate) injected_at: Instant,
    pub(crate) expires_at: Option<Instant>,
    /// Nanoseconds since the registry's epoch at which it expires (`NEVER` if it does not).
    expires_nanos: u64,
    pub(crate) hits: AtomicU64,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("id", &self.id)
            .field("fault", &self.fault)
            .field("injected_at", &self.injected_at)
            .field("expires_at", &self.expires_at)
            .field("hits", &self.hits.load(Ordering::Relaxed))
            .finish()
    }
}

type Snapshot = Arc<Vec<Arc<Entry>>>;

/// Why a fault left the active set.
#[derive(Clone, Copy)]
enum Gone {
    Removed,
    Cleared,
    Expired,
}

/// The active faults and what is needed to decide and to audit.
pub(crate) struct Registry {
    /// Whether any fault is active: the one load a request pays when chaos is off.
    active: AtomicBool,
    /// Whether any active fault targets tenants (then requests extract their tenant key).
    tenant_targets: AtomicBool,
    faults: RwLock<Snapshot>,
    /// The earliest expiry among active faults, in nanoseconds since `epoch` (`NEVER` if none).
    next_expiry: AtomicU64,
    next_id: AtomicU64,
    epoch: Instant,
    pub(crate) rng: SharedRng,
    audit: Audit,
    pub(crate) name: Cow<'static, str>,
    has_tenant_key: bool,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("name", &self.name)
            .field("active", &self.snapshot().len())
            .finish_non_exhaustive()
    }
}

/// What a request gets.
pub(crate) struct Plan {
    pub(crate) delay: Duration,
    pub(crate) action: Action,
}

pub(crate) enum Action {
    Pass,
    Stall(u64),
    Status(StatusCode, FaultId),
    Error(BoxError),
    Abort,
}

impl Registry {
    pub(crate) fn new(
        name: Cow<'static, str>,
        rng: SharedRng,
        audit: Audit,
        has_tenant_key: bool,
    ) -> Self {
        Registry {
            active: AtomicBool::new(false),
            tenant_targets: AtomicBool::new(false),
            faults: RwLock::new(Arc::new(Vec::new())),
            next_expiry: AtomicU64::new(NEVER),
            next_id: AtomicU64::new(1),
            epoch: Instant::now(),
            rng,
            audit,
            name,
            has_tenant_key,
        }
    }

    /// Whether any fault may be active. One relaxed load: a request that races an injection may miss
    /// it; the snapshot itself is read under the lock.
    #[inline(always)]
    pub(crate) fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    fn nanos_since_epoch(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(NEVER - 1)
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        self.faults
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn write(&self) -> RwLockWriteGuard<'_, Snapshot> {
        self.faults.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes a new set (under the write lock): the flag and the earliest expiry follow it.
    fn publish(&self, guard: &mut RwLockWriteGuard<'_, Snapshot>, faults: Vec<Arc<Entry>>) {
        let next = faults
            .iter()
            .map(|e| e.expires_nanos)
            .min()
            .unwrap_or(NEVER);
        self.next_expiry.store(next, Ordering::Relaxed);
        let tenants = faults.iter().any(|e| !e.fault.tenants.is_empty());
        self.tenant_targets.store(tenants, Ordering::Relaxed);
        self.active.store(!faults.is_empty(), Ordering::Release);
        **guard = Arc::new(faults);
    }

    /// Removes faults whose time is up, if any (cheap when none is due). Audits each.
    pub(crate) fn expire(&self, now: Instant) {
        let next = self.next_expiry.load(Ordering::Relaxed);
        if next == NEVER || self.nanos_since_epoch(now) < next {
            return;
        }
        let mut guard = self.write();
        let gone = self.expire_locked(&mut guard, now);
        drop(guard);
        self.report(&gone, Gone::Expired);
    }

    fn expire_locked(
        &self,
        guard: &mut RwLockWriteGuard<'_, Snapshot>,
        now: Instant,
    ) -> Vec<Arc<Entry>> {
        let now = self.nanos_since_epoch(now);
        if !guard.iter().any(|e| e.expires_nanos <= now) {
            return Vec::new();
        }
        let (gone, kept): (Vec<_>, Vec<_>) =
            guard.iter().cloned().partition(|e| e.expires_nanos <= now);
        self.publish(guard, kept);
        gone
    }

    pub(crate) fn inject(&self, fault: Fault) -> FaultId {
        let now = Instant::now();
        let id = FaultId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let expires_at = fault.expires_after.and_then(|ttl| now.checked_add(ttl));
        let entry = Arc::new(Entry {
            id,
            expires_nanos: expires_at.map_or(NEVER, |t| self.nanos_since_epoch(t)),
            fault,
            injected_at: now,
            expires_at,
            hits: AtomicU64::new(0),
        });
        let mut guard = self.write();
        let expired = self.expire_locked(&mut guard, now);
        let mut faults = Vec::with_capacity(guard.len() + 1);
        faults.extend(guard.iter().cloned());
        faults.push(entry.clone());
        self.publish(&mut guard, faults);
        drop(guard);
        self.report(&expired, Gone::Expired);

        let fault = &entry.fault;
        if !fault.tenants.is_empty() && !self.has_tenant_key {
            tracing::warn!(
                chaos = %self.name,
                fault = %id,
                "fault targets tenants but the chaos layer has no tenant key: it will never fire"
            );
        }
        tracing::info!(chaos = %self.name, fault = %id, what = %fault, "chaos fault injected");
        self.audit.record_with(|| {
            let mut event = AuditEvent::new("chaos.injected")
                .detail("chaos", self.name.as_ref())
                .detail("id", id.get())
                .detail("kind", fault.kind.name())
                .detail("fault", fault.to_string())
                .detail("probability", fault.probability);
            if let Some(ttl) = fault.expires_after {
                event = event.detail(
                    "expires_after_ms",
                    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
                );
            }
            if let Some(label) = &fault.label {
                event = event.detail("label", label.as_ref());
            }
            with_tenant(event, fault)
        });
        id
    }

    pub(crate) fn remove(&self, id: FaultId) -> bool {
        let now = Instant::now();
        let mut guard = self.write();
        let expired = self.expire_locked(&mut guard, now);
        let removed = guard.iter().find(|e| e.id == id).cloned();
        if let Some(removed) = &removed {
            let kept = guard.iter().filter(|e| e.id != id).cloned().collect();
            self.publish(&mut guard, kept);
            drop(guard);
            self.report(&expired, Gone::Expired);
            self.report(std::slice::from_ref(removed), Gone::Removed);
        } else {
            drop(guard);
            self.report(&expired, Gone::Expired);
        }
        removed.is_some()
    }

    pub(crate) fn clear(&self) -> usize {
        let now = Instant::now();
        let mut guard = self.write();
        let expired = self.expire_locked(&mut guard, now);
        let cleared: Vec<_> = guard.iter().cloned().collect();
        if !cleared.is_empty() {
            self.publish(&mut guard, Vec::new());
        }
        drop(guard);
        self.report(&expired, Gone::Expired);
        self.report(&cleared, Gone::Cleared);
        cleared.len()
    }

    /// The active faults, after removing expired ones.
    pub(crate) fn active(&self) -> Snapshot {
        self.expire(Instant::now());
        self.snapshot()
    }

    /// Logs and audits faults that left the active set.
    fn report(&self, gone: &[Arc<Entry>], why: Gone) {
        for e in gone {
            let hits = e.hits.load(Ordering::Relaxed);
            let (kind, reason, message) = match why {
                Gone::Removed => ("chaos.removed", "removed", "chaos fault removed"),
                Gone::Cleared => ("chaos.removed", "cleared", "chaos fault removed"),
                Gone::Expired => ("chaos.expired", "expired", "chaos fault expired"),
            };
            tracing::info!(chaos = %self.name, fault = %e.id, hits, reason, "{message}");
            self.audit.record_with(|| {
                let event = AuditEvent::new(kind)
                    .detail("chaos", self.name.as_ref())
                    .detail("id", e.id.get())
                    .detail("kind", e.fault.kind.name())
                    .detail("fault", e.fault.to_string())
                    .detail("reason", reason)
                    .detail("hits", hits)
                    .detail(
                        "active_ms",
                        u64::try_from(
                            e.expires_at
                                .filter(|_| matches!(why, Gone::Expired))
                                .unwrap_or_else(Instant::now)
                                .saturating_duration_since(e.injected_at)
                                .as_millis(),
                        )
                        .unwrap_or(u64::MAX),
                    );
                with_tenant(event, &e.fault)
            });
        }
    }

    /// Decides what a request gets, when a fault may be active.
    ///
    /// Faults are evaluated in injection order: the delays of every firing latency fault add up; the
    /// first firing status, error or abort fault decides the outcome (later ones are not evaluated); a
    /// body stall applies when no such fault fired.
    #[inline(never)]
    pub(crate) fn plan<B, K>(&self, req: &Request<B>, tenant_key: &K) -> Plan
    where
        K: KeyExtractor<Request<B>>,
        K::Key: TenantKey,
    {
        let mut now = None;
        if self.next_expiry.load(Ordering::Relaxed) != NEVER {
            let t = Instant::now();
            self.expire(t);
            now = Some(self.nanos_since_epoch(t));
        }
        // User code (the extractor, an error factory) runs outside the lock: it may call the handle.
        let tenant = if self.tenant_targets.load(Ordering::Relaxed) {
            tenant_key.extract(req).ok()
        } else {
            None
        };
        let mut plan = Plan {
            delay: Duration::ZERO,
            action: Action::Pass,
        };
        let mut make_error = None;
        let mut terminal = false;
        let faults = self.faults.read().unwrap_or_else(PoisonError::into_inner);
        for e in faults.iter() {
            let f = &e.fault;
            if now.is_some_and(|now| e.expires_nanos <= now) {
                continue; // expired between the check above and the read
            }
            let decided = match f.kind {
                FaultKind::BodyStall { .. } => terminal || !matches!(plan.action, Action::Pass),
                _ => terminal && f.kind.is_terminal(),
            };
            if decided || f.probability <= 0.0 || !f.matches_head(req) {
                continue;
            }
            if !f.tenants.is_empty() {
                let Some(key) = &tenant else { continue };
                if !f.tenants.iter().any(|t| key.is_tenant(t)) {
                    continue;
                }
            }
            if f.probability < 1.0 && self.rng.next_f64() >= f.probability {
                continue;
            }
            e.hits.fetch_add(1, Ordering::Relaxed);
            match &f.kind {
                FaultKind::Latency(l) => {
                    plan.delay = plan.delay.saturating_add(l.sample(&self.rng))
                }
                FaultKind::BodyStall { after_bytes } => plan.action = Action::Stall(*after_bytes),
                FaultKind::Status(s) => {
                    terminal = true;
                    plan.action = Action::Status(*s, e.id);
                }
                FaultKind::Error => {
                    terminal = true;
                    plan.action = Action::Error(InjectedFault::new(e.id).into());
                }
                FaultKind::ErrorWith(make) => {
                    terminal = true;
                    make_error = Some(make.clone());
                }
                FaultKind::Abort => {
                    terminal = true;
                    plan.action = Action::Abort;
                }
            }
        }
        drop(faults);
        if let Some(make) = make_error {
            plan.action = Action::Error(make.make());
        }
        plan
    }
}

fn with_tenant(event: AuditEvent, fault: &Fault) -> AuditEvent {
    match fault.tenants.as_slice() {
        [one] => event.tenant(one.as_ref()),
        _ => event,
    }
}
