//! The scheduler: who among the waiting requests gets the next free slot.
//!
//! - **Priority classes** are served strictly, `Critical` before `Normal` before `Background`...
//! - **...with aging**: if the oldest waiter of the `Normal` or `Background` class has waited at least
//!   the aging threshold, it is served next (the older of the two first), whatever else is waiting.
//! - **Within a class, tenants take turns by deficit round robin**: each tenant with waiters in the
//!   class is on the class's active list; the tenant at the front is served up to `quantum` requests
//!   (each costs 1), then goes to the back. A tenant with 1,000 waiters and a tenant with 1 alternate.
//!   A tenant holding its whole share is skipped (its turn passes; it cannot use a slot anyway).
//! - Within one tenant and class, first come first served.
//!
//! Every operation is O(log n) or O(tenants waiting), under the bulkhead's queue mutex. Waiters carry
//! increasing ids, so a tenant's per-class deque is sorted and a cancelled waiter is found by binary
//! search.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::priority::Priority;
use crate::shared::{Permit, Tenant};

const CLASSES: usize = 3;

pub(crate) struct Entry {
    id: u64,
    pub(crate) tx: oneshot::Sender<Permit>,
}

struct TenantQueue {
    tenant: Option<Arc<Tenant>>,
    classes: [VecDeque<Entry>; CLASSES],
    deficit: [u32; CLASSES],
    len: usize,
}

#[derive(Default)]
pub(crate) struct Scheduler {
    tenants: HashMap<u64, TenantQueue>,
    /// Per class: tenants with waiters in the class, in round-robin order.
    active: [VecDeque<u64>; CLASSES],
    /// Per class: every waiter by id (= arrival order), with its arrival time and tenant; for aging.
    order: [BTreeMap<u64, (Instant, u64)>; CLASSES],
    next_id: u64,
    len: usize,
}

impl Scheduler {
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many requests of tenant `tenant_id` wait.
    pub(crate) fn tenant_len(&self, tenant_id: u64) -> usize {
        self.tenants.get(&tenant_id).map_or(0, |t| t.len)
    }

    /// Queues a waiter; returns its id.
    pub(crate) fn push(
        &mut self,
        tenant: Option<Arc<Tenant>>,
        class: Priority,
        tx: oneshot::Sender<Permit>,
        now: Instant,
    ) -> u64 {
        let c = class.index();
        self.next_id += 1;
        let id = self.next_id;
        let tenant_id = tenant.as_ref().map_or(0, |t| t.id);
        let tq = self
            .tenants
            .entry(tenant_id)
            .or_insert_with(|| TenantQueue {
                tenant,
                classes: Default::default(),
                deficit: [0; CLASSES],
                len: 0,
            });
        if tq.classes[c].is_empty() {
            self.active[c].push_back(tenant_id);
        }
        tq.classes[c].push_back(Entry { id, tx });
        tq.len += 1;
        self.order[c].insert(id, (now, tenant_id));
        self.len += 1;
        id
    }

    /// Removes a waiter that gave up; `Some(its tenant)` if it was still queued.
    pub(crate) fn remove(
        &mut self,
        tenant_id: u64,
        class: Priority,
        id: u64,
    ) -> Option<Option<Arc<Tenant>>> {
        let c = class.index();
        let tq = self.tenants.get_mut(&tenant_id)?;
        let at = tq.classes[c].binary_search_by_key(&id, |e| e.id).ok()?;
        tq.classes[c].remove(at);
        Some(self.after_removal(tenant_id, c, id))
    }

    /// Bookkeeping after one of `tenant_id`'s waiters of class `c` left the deque: returns its tenant.
    fn after_removal(&mut self, tenant_id: u64, c: usize, id: u64) -> Option<Arc<Tenant>> {
        self.order[c].remove(&id);
        self.len -= 1;
        let tq = self
            .tenants
            .get_mut(&tenant_id)
            .expect("a queued waiter's tenant is queued");
        tq.len -= 1;
        let tenant = tq.tenant.clone();
        if tq.classes[c].is_empty() {
            tq.deficit[c] = 0;
            if let Some(pos) = self.active[c].iter().position(|&t| t == tenant_id) {
                self.active[c].remove(pos);
            }
        }
        if tq.len == 0 {
            self.tenants.remove(&tenant_id);
        }
        tenant
    }

    /// Takes the first waiter of `tenant_id` in class `c`.
    fn take_head(&mut self, tenant_id: u64, c: usize) -> (Entry, Option<Arc<Tenant>>) {
        let entry = self
            .tenants
            .get_mut(&tenant_id)
            .and_then(|tq| tq.classes[c].pop_front())
            .expect("an active tenant has a waiter");
        let tenant = self.after_removal(tenant_id, c, entry.id);
        (entry, tenant)
    }

    /// Picks the next waiter to serve and takes a slot of its tenant's share (the caller holds a global
    /// slot for it). `None` if no waiter's tenant is below `share`.
    pub(crate) fn pick(
        &mut self,
        now: Instant,
        aging: Duration,
        share: usize,
        quantum: u32,
    ) -> Option<(Entry, Option<Arc<Tenant>>)> {
        // Aging: the oldest lower-class waiter that has waited long enough goes first.
        let mut aged: Option<(u64, u64, usize)> = None;
        for c in [Priority::Normal.index(), Priority::Background.index()] {
            if let Some((&id, &(since, tenant_id))) = self.order[c].first_key_value() {
                if now.saturating_duration_since(since) >= aging
                    && aged.is_none_or(|(oldest, _, _)| id < oldest)
                {
                    aged = Some((id, tenant_id, c));
                }
            }
        }
        if let Some((_, tenant_id, c)) = aged {
            if self.eligible(tenant_id, share) {
                return Some(self.take_head(tenant_id, c));
            }
        }
        // Strict priority, deficit round robin across tenants within a class.
        for c in 0..CLASSES {
            for _ in 0..self.active[c].len() {
                let tenant_id = *self.active[c].front().expect("non-empty active list");
                if !self.eligible(tenant_id, share) {
                    if let Some(tq) = self.tenants.get_mut(&tenant_id) {
                        tq.deficit[c] = 0;
                    }
                    self.active[c].rotate_left(1);
                    continue;
                }
                let tq = self
                    .tenants
                    .get_mut(&tenant_id)
                    .expect("an active tenant is queued");
                if tq.deficit[c] == 0 {
                    tq.deficit[c] = quantum;
                }
                tq.deficit[c] -= 1;
                let turn_over = tq.deficit[c] == 0;
                let picked = self.take_head(tenant_id, c);
                if turn_over && self.active[c].front() == Some(&tenant_id) {
                    self.active[c].rotate_left(1);
                }
                return Some(picked);
            }
        }
        None
    }

    /// Takes one of the tenant's slots if it is below its share (always, for the unkeyed pseudo-tenant).
    fn eligible(&self, tenant_id: u64, share: usize) -> bool {
        match self
            .tenants
            .get(&tenant_id)
            .and_then(|tq| tq.tenant.as_ref())
        {
            Some(t) => t.try_acquire(share),
            None => true,
        }
    }
}
