//! The scheduler: who among the waiting requests gets the next free slot.
//!
//! Two levels, each with its own rule:
//!
//! - **Within a class, tenants take turns by deficit round robin**: each tenant with waiters in the
//!   class is on the class's active list; the tenant at the front is served up to `quantum` requests
//!   (each costs 1), then goes to the back. A tenant with 1,000 waiters and a tenant with 1 alternate.
//!   A tenant holding its whole share is skipped (its turn passes; it cannot use a slot anyway). Within
//!   one tenant and class, first come first served. This order, the class's *line*, is never changed
//!   by aging or by the other classes.
//! - **Across classes, the earliest virtual arrival goes first.** Each class offers the waiter at the
//!   head of its line. A waiter's virtual arrival is its arrival time plus one aging interval per class
//!   below `Critical` (`Normal` +1, `Background` +2): aging promotes a waiter one class per interval
//!   it has waited. The slot goes to the offered waiter with the earliest virtual arrival; ties go to
//!   the higher class.
//!
//! The invariant this gives: aging only ever lets a waiter go ahead of the head of another class's line
//! if that head arrived after it — more than one interval after it per class between them — never
//! ahead of an older waiter, never ahead of a higher-class waiter that arrived less than that after it,
//! and never ahead of another waiter of its own class out of round-robin turn. A `Critical` request
//! therefore waits only for waiters already ranked like `Critical` ones when it arrived (a finite set,
//! which nothing arriving later joins) and for its turn among tenants; a `Background` request under a
//! constant stream of `Critical` ones waits about two aging intervals. Virtual arrivals are fixed at
//! arrival, so the order never flips as time passes.
//!
//! Every operation is O(log n) or O(tenants waiting), under the bulkhead's queue mutex. Waiters carry
//! increasing ids, so a tenant's per-class deque is sorted and a cancelled waiter is found by binary
//! search.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::priority::Priority;
use crate::shared::{Permit, Tenant};

const CLASSES: usize = 3;

pub(crate) struct Entry {
    id: u64,
    /// Arrival plus one aging interval per class below `Critical`.
    virtual_arrival: Instant,
    pub(crate) tx: oneshot::Sender<Permit>,
}

struct TenantQueue {
    tenant: Option<Arc<Tenant>>,
    classes: [VecDeque<Entry>; CLASSES],
    deficit: [u32; CLASSES],
    len: usize,
}

pub(crate) struct Scheduler {
    tenants: HashMap<u64, TenantQueue>,
    /// Per class: tenants with waiters in the class, in round-robin order.
    active: [VecDeque<u64>; CLASSES],
    /// One class of promotion per this much waiting.
    aging: Duration,
    next_id: u64,
    len: usize,
}

impl Scheduler {
    /// An empty scheduler promoting waiters one class per `aging` waited.
    pub(crate) fn new(aging: Duration) -> Self {
        Scheduler {
            tenants: HashMap::new(),
            active: Default::default(),
            aging,
            next_id: 0,
            len: 0,
        }
    }

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
        // One interval per class below Critical. The builder bounds `aging` (below `max_wait`, itself
        // at most an hour), so this cannot overflow; saturate rather than panic all the same.
        let virtual_arrival = now
            .checked_add(self.aging.saturating_mul(c as u32))
            .unwrap_or(now);
        tq.classes[c].push_back(Entry {
            id,
            virtual_arrival,
            tx,
        });
        tq.len += 1;
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
        Some(self.after_removal(tenant_id, c))
    }

    /// Bookkeeping after one of `tenant_id`'s waiters of class `c` left the deque: returns its tenant.
    fn after_removal(&mut self, tenant_id: u64, c: usize) -> Option<Arc<Tenant>> {
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
        let tenant = self.after_removal(tenant_id, c);
        (entry, tenant)
    }

    /// Picks the next waiter to serve and takes a slot of its tenant's share (the caller holds a global
    /// slot for it). `None` if no waiter's tenant is below `share`.
    ///
    /// Each class offers the head of its line (the first tenant in round-robin order that is below its
    /// share); the offer with the earliest virtual arrival wins, ties to the higher class.
    pub(crate) fn pick(
        &mut self,
        share: usize,
        quantum: u32,
    ) -> Option<(Entry, Option<Arc<Tenant>>)> {
        // A tenant seen below its share can reach it before its slot is taken (a request admitted
        // directly, outside this lock); then look again. Each retry means one more tenant at its share,
        // so a handful of rounds is plenty; a release runs the dispatcher again anyway.
        for _ in 0..4 {
            let mut best: Option<(Instant, usize, usize)> = None;
            for c in 0..CLASSES {
                let Some(pos) = self.active[c]
                    .iter()
                    .position(|&t| self.below_share(t, share))
                else {
                    continue;
                };
                let head = self
                    .tenants
                    .get(&self.active[c][pos])
                    .and_then(|tq| tq.classes[c].front())
                    .expect("an active tenant has a waiter in the class");
                if best.is_none_or(|(at, _, _)| head.virtual_arrival < at) {
                    best = Some((head.virtual_arrival, c, pos));
                }
            }
            let (_, c, pos) = best?;
            // The tenants ahead of the chosen one in the line hold their share: their turn passes.
            for _ in 0..pos {
                let skipped = *self.active[c].front().expect("non-empty active list");
                if let Some(tq) = self.tenants.get_mut(&skipped) {
                    tq.deficit[c] = 0;
                }
                self.active[c].rotate_left(1);
            }
            let tenant_id = *self.active[c].front().expect("non-empty active list");
            if !self.acquire(tenant_id, share) {
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
        None
    }

    /// Whether the tenant is below its share now (always, for the unkeyed pseudo-tenant).
    fn below_share(&self, tenant_id: u64, share: usize) -> bool {
        match self
            .tenants
            .get(&tenant_id)
            .and_then(|tq| tq.tenant.as_ref())
        {
            Some(t) => t.in_flight.load(std::sync::atomic::Ordering::SeqCst) < share,
            None => true,
        }
    }

    /// Takes one of the tenant's slots if it is below its share (always, for the unkeyed pseudo-tenant).
    fn acquire(&self, tenant_id: u64, share: usize) -> bool {
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

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};
    use std::sync::Arc;
    use std::time::Duration;

    use palisade_core::rng::Rng;
    use tokio::sync::oneshot;
    use tokio::time::Instant;

    use super::{Scheduler, CLASSES};
    use crate::priority::Priority;
    use crate::shared::{Tenant, UNLIMITED};

    /// A waiter as the reference model sees it.
    #[derive(Debug, Clone, Copy)]
    struct W {
        id: u64,
        tenant: u64,
        class: usize,
        arrival: Instant,
    }

    impl W {
        fn virtual_arrival(&self, aging: Duration) -> Instant {
            self.arrival + aging * self.class as u32
        }
    }

    /// The documented rule, written out naively: per class a round-robin line of tenants (FIFO per
    /// tenant, `quantum` in a row); across classes the line head with the earliest virtual arrival,
    /// ties to the higher class.
    struct Model {
        aging: Duration,
        quantum: u32,
        lanes: HashMap<(u64, usize), VecDeque<W>>,
        active: [VecDeque<u64>; CLASSES],
        deficit: HashMap<(u64, usize), u32>,
    }

    impl Model {
        fn push(&mut self, w: W) {
            let lane = self.lanes.entry((w.tenant, w.class)).or_default();
            if lane.is_empty() {
                self.active[w.class].push_back(w.tenant);
            }
            lane.push_back(w);
        }

        fn heads(&self) -> Vec<W> {
            (0..CLASSES)
                .filter_map(|c| {
                    let t = self.active[c].front()?;
                    self.lanes[&(*t, c)].front().copied()
                })
                .collect()
        }

        fn lane_emptied(&mut self, tenant: u64, c: usize) {
            self.lanes.remove(&(tenant, c));
            self.deficit.remove(&(tenant, c));
            self.active[c].retain(|&t| t != tenant);
        }

        fn pick(&mut self) -> Option<W> {
            let aging = self.aging;
            let w = self
                .heads()
                .into_iter()
                .min_by_key(|w| (w.virtual_arrival(aging), w.class))?;
            let key = (w.tenant, w.class);
            let d = self.deficit.entry(key).or_insert(0);
            if *d == 0 {
                *d = self.quantum;
            }
            *d -= 1;
            let turn_over = *d == 0;
            let lane = self.lanes.get_mut(&key).unwrap();
            lane.pop_front();
            if lane.is_empty() {
                self.lane_emptied(w.tenant, w.class);
            } else if turn_over {
                self.active[w.class].rotate_left(1);
            }
            Some(w)
        }

        fn remove(&mut self, id: u64) -> Option<W> {
            let (&key, lane) = self
                .lanes
                .iter_mut()
                .find(|(_, lane)| lane.iter().any(|w| w.id == id))?;
            let at = lane.iter().position(|w| w.id == id).unwrap();
            let w = lane.remove(at).unwrap();
            if lane.is_empty() {
                self.lane_emptied(key.0, key.1);
            }
            Some(w)
        }

        fn all(&self) -> Vec<W> {
            self.lanes.values().flatten().copied().collect()
        }
    }

    /// Random arrivals, departures and picks over a few tenants and all classes: the scheduler picks
    /// exactly what the written-out rule picks, and every pick satisfies the aging invariant: no head
    /// of another class's line has an earlier virtual arrival, so an aged waiter never goes ahead of
    /// an older one, nor ahead of a higher-class one that arrived less than the class gap in aging
    /// intervals after it. With one tenant (lines are then plain FIFO), no waiter at all is passed by a
    /// younger one of the same or a lower class.
    #[test]
    fn picks_follow_the_aging_invariant_and_keep_round_robin_order() {
        let classes = [Priority::Critical, Priority::Normal, Priority::Background];
        for seed in 0..300u64 {
            let mut rng = Rng::seeded(seed);
            let aging = Duration::from_millis(1 + rng.below(50));
            let quantum = 1 + rng.below(3) as u32;
            let n_tenants = 1 + rng.below(4);
            let tenants: Vec<Arc<Tenant>> = (0..n_tenants)
                .map(|i| Arc::new(Tenant::new(10 + i, format!("t{i}"))))
                .collect();
            let mut sched = Scheduler::new(aging);
            let mut model = Model {
                aging,
                quantum,
                lanes: HashMap::new(),
                active: Default::default(),
                deficit: HashMap::new(),
            };
            let mut now = Instant::now();
            let mut classes_of = HashMap::new();
            for _ in 0..400 {
                now += Duration::from_millis(rng.below(20));
                match rng.below(10) {
                    0..=4 => {
                        let t = &tenants[rng.below(n_tenants) as usize];
                        let class = classes[rng.below(3) as usize];
                        let (tx, _rx) = oneshot::channel();
                        let id = sched.push(Some(t.clone()), class, tx, now);
                        classes_of.insert(id, (t.id, class));
                        model.push(W {
                            id,
                            tenant: t.id,
                            class: class.index(),
                            arrival: now,
                        });
                    }
                    5 => {
                        let waiting = model.all();
                        if waiting.is_empty() {
                            continue;
                        }
                        let w = waiting[rng.below(waiting.len() as u64) as usize];
                        let (tenant, class) = classes_of[&w.id];
                        assert!(sched.remove(tenant, class, w.id).is_some());
                        model.remove(w.id).unwrap();
                    }
                    _ => {
                        let heads = model.heads();
                        let waiting = model.all();
                        let expected = model.pick();
                        let got = sched.pick(UNLIMITED, quantum);
                        assert_eq!(
                            got.as_ref().map(|(e, _)| e.id),
                            expected.map(|w| w.id),
                            "seed {seed}"
                        );
                        let Some(x) = expected else { continue };
                        for y in heads.iter().filter(|y| y.id != x.id) {
                            assert!(
                                x.virtual_arrival(aging) <= y.virtual_arrival(aging),
                                "seed {seed}: {x:?} went ahead of line head {y:?}"
                            );
                            assert!(
                                !(y.arrival < x.arrival && y.class <= x.class),
                                "seed {seed}: {x:?} went ahead of older line head {y:?}"
                            );
                        }
                        if n_tenants == 1 {
                            for y in waiting.iter().filter(|y| y.id != x.id) {
                                assert!(
                                    !(y.arrival < x.arrival && y.class <= x.class),
                                    "seed {seed}: {x:?} went ahead of older {y:?}"
                                );
                            }
                        }
                    }
                }
                assert_eq!(sched.is_empty(), model.all().is_empty());
            }
        }
    }
}
