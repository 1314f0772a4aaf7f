//! State shared by every clone of one bulkhead: counters, tenants, the queue, and how state changes are
//! published (tracing, health, audit).
//!
//! # Admission and the queue
//!
//! A slot is taken with a compare-and-swap on the global in-flight counter (and, when keyed, on the
//! tenant's). With no queue configured, that is all: no lock anywhere.
//!
//! With a queue, a request that finds the bulkhead full (or anything already queued, so arrivals do not
//! overtake waiters) takes the scheduler's mutex, enqueues a oneshot sender, and runs the dispatcher
//! before leaving. Every release of a permit (and every resize that grows a limit) also runs the
//! dispatcher when something is queued: it takes free slots on behalf of the waiters the scheduler picks
//! and sends each its [`Permit`] — a direct handoff. The "is anything queued?" check on release and the
//! "is a slot free?" check after enqueueing are sequentially consistent, so one of the two always sees
//! the other: a waiter is never left behind a free slot.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use palisade_core::audit::{Audit, AuditEvent};
use palisade_core::health::Component;
use palisade_core::key::MalformedKey;
use palisade_core::keymap::KeyMap;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::priority::Priority;
use crate::queue::Scheduler;

/// "No per-tenant limit".
pub(crate) const UNLIMITED: usize = usize::MAX;

/// One tenant's counters. Held in an `Arc` by the key map, by its permits and by its queue entries, so
/// a tenant in use is never evicted.
pub(crate) struct Tenant {
    /// Unique within one bulkhead; 0 is the unkeyed bulkhead's single pseudo-tenant.
    pub(crate) id: u64,
    pub(crate) label: Box<str>,
    pub(crate) in_flight: AtomicUsize,
    pub(crate) queued: AtomicUsize,
}

impl Tenant {
    pub(crate) fn new(id: u64, label: impl Into<Box<str>>) -> Self {
        Tenant {
            id,
            label: label.into(),
            in_flight: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
        }
    }

    /// Takes one of the tenant's slots if it holds fewer than `share`.
    #[inline]
    pub(crate) fn try_acquire(&self, share: usize) -> bool {
        cas_below(&self.in_flight, share)
    }
}

impl fmt::Debug for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tenant")
            .field("label", &self.label)
            .field("in_flight", &self.in_flight.load(Relaxed))
            .field("queued", &self.queued.load(Relaxed))
            .finish()
    }
}

/// Takes one unit of `counter` if it is below `limit`.
#[inline]
fn cas_below(counter: &AtomicUsize, limit: usize) -> bool {
    // SeqCst, not Relaxed: paired with the release side (`fetch_sub(in_flight)` then a load of
    // `queued`, both SeqCst) and the enqueue side (`fetch_add(queued)` then this load), at least one of
    // the two sees the other, so a waiter is never stranded behind a free slot.
    let mut cur = counter.load(SeqCst);
    loop {
        if cur >= limit {
            return false;
        }
        match counter.compare_exchange_weak(cur, cur + 1, SeqCst, Relaxed) {
            Ok(_) => return true,
            Err(now) => cur = now,
        }
    }
}

/// Why a request was not admitted at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// Every global slot is taken.
    Global,
    /// The tenant holds its share.
    Tenant,
}

/// The queue's configuration and the scheduler.
pub(crate) struct Queue {
    pub(crate) max_len: usize,
    pub(crate) max_per_tenant: usize,
    pub(crate) max_wait: Duration,
    pub(crate) quantum: u32,
    pub(crate) sched: Mutex<Scheduler>,
}

/// Tenants of a keyed bulkhead.
pub(crate) struct Tenants {
    pub(crate) map: KeyMap<Tenant>,
    /// Requests without a key, when the policy is to share one tenant.
    pub(crate) anonymous: Arc<Tenant>,
    /// New keys while the map is full.
    pub(crate) overflow: Arc<Tenant>,
    next_id: AtomicU64,
}

impl Tenants {
    pub(crate) fn new(max_keys: usize, idle: Duration) -> Self {
        Tenants {
            map: KeyMap::new(max_keys, idle),
            anonymous: Arc::new(Tenant::new(1, "(anonymous)")),
            overflow: Arc::new(Tenant::new(2, "(overflow)")),
            next_id: AtomicU64::new(3),
        }
    }

    /// The tenant of `key`, created if new; the overflow tenant if the map is full.
    pub(crate) fn get<Q: std::hash::Hash + fmt::Debug + ?Sized>(&self, key: &Q) -> Arc<Tenant> {
        let hash = self.map.hash(key);
        self.map
            .get_or_insert_with(hash, Instant::now(), || {
                Tenant::new(self.next_id.fetch_add(1, Relaxed), label(key))
            })
            .unwrap_or_else(|| self.overflow.clone())
    }
}

/// The longest tenant label, in bytes: the rate limiter's bound.
pub(crate) const LABEL_MAX: usize = 128;

/// A key's label for the handle and logs, as the rate limiter makes it: its `Debug` form without
/// surrounding quotes, at most [`LABEL_MAX`] bytes (cut on a character boundary).
///
/// Written into a bounded buffer: a huge key never has its whole `Debug` form allocated.
pub(crate) fn label<K: fmt::Debug + ?Sized>(key: &K) -> String {
    use fmt::Write as _;

    /// Keeps the first `LABEL_MAX + 2` bytes (room for the quotes), remembers the last character and
    /// whether anything was cut.
    struct Bounded {
        buf: String,
        last: Option<char>,
        cut: bool,
    }

    impl fmt::Write for Bounded {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            if let Some(c) = s.chars().next_back() {
                self.last = Some(c);
            }
            let room = (LABEL_MAX + 2).saturating_sub(self.buf.len());
            let mut end = room.min(s.len());
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            self.cut |= end < s.len();
            self.buf.push_str(&s[..end]);
            Ok(())
        }
    }

    let mut w = Bounded {
        buf: String::new(),
        last: None,
        cut: false,
    };
    // `Bounded` never fails, so an error can only come from a broken `Debug` impl: keep what it wrote.
    let _ = write!(w, "{key:?}");
    let mut s = w.buf;
    if s.len() >= 2 && s.starts_with('"') && w.last == Some('"') {
        s.remove(0);
        // The closing quote is in the buffer only if the whole form fitted.
        if !w.cut {
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

/// What the layer decides about requests without a key (keyed bulkheads only).
///
/// A key that is present but malformed is a separate decision, [`MalformedKey`](palisade_core::key::MalformedKey):
/// refused with `400` by default, whatever this policy says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MissingKey {
    /// Requests that carry no key share one "anonymous" tenant, with its own share like any other tenant
    /// (the default).
    #[default]
    Anonymous,
    /// Requests that carry no key are refused with the extractor's
    /// [`KeyError`](palisade_core::error::KeyError) (the rescue layer answers `400`).
    Reject,
}

pub(crate) struct Shared {
    pub(crate) name: Cow<'static, str>,
    limit: AtomicUsize,
    in_flight: AtomicUsize,
    per_tenant: AtomicUsize,
    queued: AtomicUsize,
    rejected: AtomicU64,
    saturated: AtomicBool,
    /// What the health component last said (`true` = degraded), under a lock so that concurrent
    /// publishers cannot leave it saying the opposite of the flag.
    published: Mutex<bool>,
    pub(crate) retry_after: Duration,
    pub(crate) hold_body: bool,
    pub(crate) missing_key: MissingKey,
    pub(crate) malformed_key: MalformedKey,
    pub(crate) queue: Option<Queue>,
    pub(crate) tenants: Option<Tenants>,
    component: Option<Component>,
    audit: Audit,
}

pub(crate) struct SharedConfig {
    pub(crate) name: Cow<'static, str>,
    pub(crate) limit: usize,
    pub(crate) per_tenant: usize,
    pub(crate) retry_after: Duration,
    pub(crate) hold_body: bool,
    pub(crate) missing_key: MissingKey,
    pub(crate) malformed_key: MalformedKey,
    pub(crate) queue: Option<Queue>,
    pub(crate) tenants: Option<Tenants>,
    pub(crate) component: Option<Component>,
    pub(crate) audit: Audit,
}

impl Shared {
    pub(crate) fn new(c: SharedConfig) -> Self {
        if let Some(component) = &c.component {
            component.healthy();
        }
        Shared {
            name: c.name,
            limit: AtomicUsize::new(c.limit),
            in_flight: AtomicUsize::new(0),
            per_tenant: AtomicUsize::new(c.per_tenant),
            queued: AtomicUsize::new(0),
            rejected: AtomicU64::new(0),
            saturated: AtomicBool::new(false),
            published: Mutex::new(false),
            retry_after: c.retry_after,
            hold_body: c.hold_body,
            missing_key: c.missing_key,
            malformed_key: c.malformed_key,
            queue: c.queue,
            tenants: c.tenants,
            component: c.component,
            audit: c.audit,
        }
    }

    // ----- counters -------------------------------------------------------------------------------

    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Relaxed)
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }

    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Relaxed)
    }

    pub(crate) fn per_tenant(&self) -> usize {
        self.per_tenant.load(Relaxed)
    }

    pub(crate) fn rejected(&self) -> u64 {
        self.rejected.load(Relaxed)
    }

    pub(crate) fn is_saturated(&self) -> bool {
        self.saturated.load(Relaxed)
    }

    /// Whether a new arrival must queue behind waiters instead of trying for a slot.
    #[inline]
    pub(crate) fn must_queue(&self) -> bool {
        self.queue.is_some() && self.queued.load(SeqCst) > 0
    }

    /// Takes a global slot, then (if keyed) one of the tenant's.
    #[inline]
    pub(crate) fn try_acquire(&self, tenant: Option<&Tenant>) -> Result<(), Full> {
        if !cas_below(&self.in_flight, self.limit.load(Relaxed)) {
            return Err(Full::Global);
        }
        if let Some(t) = tenant {
            if !t.try_acquire(self.per_tenant.load(Relaxed)) {
                self.in_flight.fetch_sub(1, SeqCst);
                return Err(Full::Tenant);
            }
        }
        Ok(())
    }

    /// Gives a slot back and lets the next waiter have it.
    #[inline]
    fn release(self: &Arc<Self>, tenant: Option<&Tenant>) {
        if let Some(t) = tenant {
            t.in_flight.fetch_sub(1, SeqCst);
        }
        self.in_flight.fetch_sub(1, SeqCst);
        if let Some(queue) = &self.queue {
            if self.queued.load(SeqCst) > 0 {
                self.dispatch(queue);
            }
        }
        if self.saturated.load(Relaxed) {
            self.maybe_recover();
        }
    }

    /// Undoes an acquisition without handing anything on (used under the scheduler lock).
    fn unacquire(&self, tenant: Option<&Tenant>) {
        if let Some(t) = tenant {
            t.in_flight.fetch_sub(1, SeqCst);
        }
        self.in_flight.fetch_sub(1, SeqCst);
    }

    /// Counts a refusal; a refusal for want of global slots marks the bulkhead saturated.
    #[cold]
    pub(crate) fn reject(&self, full: Full) {
        self.rejected.fetch_add(1, Relaxed);
        if full == Full::Global {
            self.mark_saturated();
        }
    }

    pub(crate) fn count_rejected(&self) {
        self.rejected.fetch_add(1, Relaxed);
    }

    // ----- the queue ------------------------------------------------------------------------------

    /// Queues a request (the queue must be configured). `Err` when the queue, or the tenant's part of
    /// it, is full.
    #[cold]
    pub(crate) fn enqueue(
        self: &Arc<Self>,
        tenant: Option<Arc<Tenant>>,
        class: Priority,
        full: Option<Full>,
    ) -> Result<Queued, Full> {
        let queue = self.queue.as_ref().expect("enqueue needs a queue");
        let tenant_id = tenant.as_ref().map_or(0, |t| t.id);
        let mut sched = lock(&queue.sched);
        // A slot may have come free since this request looked (it may even have given one back itself,
        // failing its tenant's share): hand it on first, so no waiter is left behind a free slot.
        self.dispatch_locked(queue, &mut sched);
        // Everyone still waiting is either behind a full bulkhead or blocked by their own tenant's share.
        // In the second case a request whose tenant has nobody waiting must not queue behind them: one
        // tenant at its share would otherwise fill the queue and lock every other tenant out while
        // slots sit idle.
        if sched.tenant_len(tenant_id) == 0 && self.try_acquire(tenant.as_deref()).is_ok() {
            return Ok(Queued::Now(tenant));
        }
        if self.queued.load(SeqCst) >= queue.max_len {
            drop(sched);
            self.reject(Full::Global);
            return Err(Full::Global);
        }
        if queue.max_per_tenant < queue.max_len
            && sched.tenant_len(tenant_id) >= queue.max_per_tenant
        {
            drop(sched);
            self.reject(Full::Tenant);
            return Err(Full::Tenant);
        }
        let (tx, rx) = oneshot::channel();
        if let Some(t) = &tenant {
            t.queued.fetch_add(1, SeqCst);
        }
        let id = sched.push(tenant, class, tx, Instant::now());
        self.queued.fetch_add(1, SeqCst);
        self.dispatch_locked(queue, &mut sched);
        drop(sched);
        if full == Some(Full::Global) || self.in_flight.load(Relaxed) >= self.limit.load(Relaxed) {
            self.mark_saturated();
        }
        Ok(Queued::Wait(Waiter {
            shared: self.clone(),
            tenant_id,
            class,
            id,
            rx,
            done: false,
        }))
    }

    fn dispatch(self: &Arc<Self>, queue: &Queue) {
        let mut sched = lock(&queue.sched);
        self.dispatch_locked(queue, &mut sched);
    }

    /// Hands free slots to the waiters the scheduler picks, while both exist.
    fn dispatch_locked(self: &Arc<Self>, queue: &Queue, sched: &mut Scheduler) {
        while !sched.is_empty() {
            if !cas_below(&self.in_flight, self.limit.load(Relaxed)) {
                return;
            }
            let share = self.per_tenant.load(Relaxed);
            let Some((entry, tenant)) = sched.pick(share, queue.quantum) else {
                // Nobody eligible (every waiting tenant holds its share).
                self.in_flight.fetch_sub(1, SeqCst);
                return;
            };
            self.queued.fetch_sub(1, SeqCst);
            if let Some(t) = &tenant {
                t.queued.fetch_sub(1, SeqCst);
            }
            let permit = Permit {
                shared: Some(self.clone()),
                tenant,
            };
            if let Err(mut permit) = entry.tx.send(permit) {
                // The waiter is gone (it cannot be, while its entry was queued, but never lose a slot).
                if let Some(shared) = permit.shared.take() {
                    shared.unacquire(permit.tenant.as_deref());
                }
            }
        }
    }

    /// Removes a waiter that gave up. `false` if it had already been handed a permit.
    fn remove_waiter(&self, tenant_id: u64, class: Priority, id: u64) -> bool {
        let queue = self.queue.as_ref().expect("waiters need a queue");
        let removed = lock(&queue.sched).remove(tenant_id, class, id);
        match removed {
            Some(tenant) => {
                self.queued.fetch_sub(1, SeqCst);
                if let Some(t) = tenant {
                    t.queued.fetch_sub(1, SeqCst);
                }
                true
            }
            None => false,
        }
    }

    // ----- resizing -------------------------------------------------------------------------------

    pub(crate) fn set_limit(self: &Arc<Self>, limit: usize) {
        let old = self.limit.swap(limit, SeqCst);
        if old == limit {
            return;
        }
        tracing::info!(bulkhead = %self.name, old, new = limit, "bulkhead limit resized");
        self.audit.record_with(|| {
            AuditEvent::new("bulkhead.resized")
                .detail("bulkhead", self.name.to_string())
                .detail("setting", "max_concurrent")
                .detail("old", old as u64)
                .detail("new", limit as u64)
        });
        self.after_resize(limit > old);
    }

    pub(crate) fn set_per_tenant(self: &Arc<Self>, share: usize) {
        let old = self.per_tenant.swap(share, SeqCst);
        if old == share {
            return;
        }
        let shown = |n: usize| if n == UNLIMITED { None } else { Some(n as u64) };
        tracing::info!(bulkhead = %self.name, old = ?shown(old), new = ?shown(share), "bulkhead per-tenant limit resized");
        self.audit.record_with(|| {
            AuditEvent::new("bulkhead.resized")
                .detail("bulkhead", self.name.to_string())
                .detail("setting", "max_per_tenant")
                .detail("old", shown(old))
                .detail("new", shown(share))
        });
        self.after_resize(share > old);
    }

    fn after_resize(self: &Arc<Self>, grew: bool) {
        if grew {
            if let Some(queue) = &self.queue {
                self.dispatch(queue);
            }
        }
        if self.saturated.load(Relaxed) {
            self.maybe_recover();
        }
    }

    // ----- saturation -----------------------------------------------------------------------------

    #[cold]
    fn mark_saturated(&self) {
        if !self.saturated.load(Relaxed) && !self.saturated.swap(true, SeqCst) {
            self.publish();
        }
    }

    /// Saturation clears with hysteresis: once in-flight is at most 3/4 of the limit and nothing waits.
    #[cold]
    fn maybe_recover(&self) {
        let in_flight = self.in_flight.load(SeqCst);
        let limit = self.limit.load(Relaxed);
        if in_flight.saturating_mul(4) <= limit.saturating_mul(3)
            && self.queued.load(SeqCst) == 0
            && self
                .saturated
                .compare_exchange(true, false, SeqCst, Relaxed)
                .is_ok()
        {
            self.publish();
        }
    }

    /// Tells the world the saturation state, if it changed since it was last told.
    fn publish(&self) {
        let mut published = lock(&self.published);
        let saturated = self.saturated.load(SeqCst);
        if *published == saturated {
            return;
        }
        *published = saturated;
        let (in_flight, limit, queued) = (self.in_flight(), self.limit(), self.queued());
        if saturated {
            tracing::warn!(bulkhead = %self.name, in_flight, limit, queued, "bulkhead saturated");
            if let Some(c) = &self.component {
                c.degraded(format!(
                    "saturated: {in_flight} of {limit} slots in use, {queued} queued"
                ));
            }
        } else {
            tracing::info!(bulkhead = %self.name, in_flight, limit, "bulkhead has capacity again");
            if let Some(c) = &self.component {
                c.healthy();
            }
        }
        self.audit.record_with(|| {
            AuditEvent::new(if saturated {
                "bulkhead.saturated"
            } else {
                "bulkhead.recovered"
            })
            .detail("bulkhead", self.name.to_string())
            .detail("in_flight", in_flight as u64)
            .detail("limit", limit as u64)
            .detail("queued", queued as u64)
            .detail("rejected_total", self.rejected())
        });
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("name", &self.name)
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .field("queued", &self.queued())
            .field("saturated", &self.is_saturated())
            .finish_non_exhaustive()
    }
}

/// One reserved slot (global, and the tenant's when keyed). Dropping it gives the slot back and hands
/// it to the next waiter, if any.
///
/// Held by the response future, or by the [`ResponseBody`](crate::ResponseBody) until the body ends
/// when the bulkhead is built with [`hold_until_body_end`](crate::Builder::hold_until_body_end).
pub struct Permit {
    /// `None` once released (or undone).
    shared: Option<Arc<Shared>>,
    tenant: Option<Arc<Tenant>>,
}

impl Permit {
    /// A permit for a slot already taken with [`Shared::try_acquire`].
    #[inline]
    pub(crate) fn new(shared: Arc<Shared>, tenant: Option<Arc<Tenant>>) -> Self {
        Permit {
            shared: Some(shared),
            tenant,
        }
    }

    pub(crate) fn shared(&self) -> Option<&Arc<Shared>> {
        self.shared.as_ref()
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.release(self.tenant.as_deref());
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("tenant", &self.tenant.as_ref().map(|t| &t.label))
            .finish()
    }
}

/// What `enqueue` did with a request.
pub(crate) enum Queued {
    /// It waits for a permit.
    Wait(Waiter),
    /// It got a slot at once (its tenant had nobody waiting and a slot was free): a permit is owed.
    Now(Option<Arc<Tenant>>),
}

/// A queued request's place in line. Dropping it (a cancelled request) leaves the queue; a permit that
/// was handed to it in the meantime is given back, so it goes to the next waiter.
pub(crate) struct Waiter {
    shared: Arc<Shared>,
    tenant_id: u64,
    class: Priority,
    id: u64,
    rx: oneshot::Receiver<Permit>,
    /// The waiter has its answer (a permit, or gave up): nothing to clean up.
    done: bool,
}

impl Waiter {
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub(crate) fn max_wait(&self) -> Duration {
        self.shared
            .queue
            .as_ref()
            .map_or(Duration::ZERO, |q| q.max_wait)
    }

    /// The permit, once handed over; `Ready(None)` if the queue dropped the waiter without one.
    pub(crate) fn poll_permit(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Permit>> {
        use std::future::Future;
        use std::task::Poll;
        if self.done {
            return Poll::Ready(None);
        }
        match std::pin::Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(r) => {
                self.done = true;
                Poll::Ready(r.ok())
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Leaves the queue. If a permit was handed over before the waiter could leave, it is returned
    /// (the caller uses it or drops it, which passes it on).
    pub(crate) fn cancel(&mut self) -> Option<Permit> {
        if std::mem::replace(&mut self.done, true) {
            return None;
        }
        if self
            .shared
            .remove_waiter(self.tenant_id, self.class, self.id)
        {
            None
        } else {
            self.rx.try_recv().ok()
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // The permit (if any) is dropped after the scheduler lock is released, and passed on.
        drop(self.cancel());
    }
}

impl fmt::Debug for Waiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiter")
            .field("class", &self.class)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// A poisoned lock only means another thread panicked while holding it; the scheduler's structures are
/// updated so that each step leaves them consistent, so keep serving.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::{label, LABEL_MAX};

    /// The rate limiter's label, computed the simple way: the whole `Debug` form, unquoted, cut.
    fn reference<K: std::fmt::Debug + ?Sized>(key: &K) -> String {
        let mut s = format!("{key:?}");
        if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
            s = s[1..s.len() - 1].to_owned();
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

    #[test]
    fn labels_match_the_rate_limiters_and_stay_bounded() {
        let mut keys: Vec<String> = vec![String::new(), "a".into(), "acme".into()];
        for n in [126, 127, 128, 129, 130, 131, 200, 10_000] {
            keys.push("k".repeat(n));
            keys.push("é".repeat(n / 2));
            keys.push(format!("{}\"", "q".repeat(n)));
            keys.push(format!("{}é", "x".repeat(n)));
        }
        for key in &keys {
            assert_eq!(label(key.as_str()), reference(key.as_str()), "{key:?}");
            assert!(label(key.as_str()).len() <= LABEL_MAX);
        }
        // Not a string: no quotes to strip.
        assert_eq!(label(&42u64), "42");
        assert_eq!(label(&[1u8; 100][..]).len(), LABEL_MAX);
        assert_eq!(label(&[1u8; 100][..]), reference(&[1u8; 100][..]));
        assert_eq!(label(&http::HeaderValue::from_static("acme")), "acme");
    }
}
