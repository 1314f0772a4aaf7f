//! Budgets and containment: the supervisor's memory of what it did.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// The sliding window budgets are counted over: one hour.
pub(super) const BUDGET_WINDOW: Duration = Duration::from_secs(3600);

/// How many remediations containment looks back over.
pub(super) const CONTAINMENT_WINDOW: usize = 10;

/// Consecutive failed remediations that trip containment.
pub(super) const CONTAINMENT_STREAK: usize = 3;

/// Applications per action name, within the last [`BUDGET_WINDOW`].
#[derive(Debug, Default)]
pub(super) struct Budgets {
    applied: HashMap<String, VecDeque<Instant>>,
}

impl Budgets {
    /// Forgets applications at least an hour before `now`.
    pub(super) fn prune(&mut self, now: Instant) {
        self.applied.retain(|_, times| {
            while times
                .front()
                .is_some_and(|&t| now.saturating_duration_since(t) >= BUDGET_WINDOW)
            {
                times.pop_front();
            }
            !times.is_empty()
        });
    }

    /// Applications of `action` in the window (as of the last prune).
    pub(super) fn used(&self, action: &str) -> u32 {
        self.applied
            .get(action)
            .map_or(0, |t| u32::try_from(t.len()).unwrap_or(u32::MAX))
    }

    /// Counts one application of `action` at `at`.
    pub(super) fn record(&mut self, action: &str, at: Instant) {
        self.applied
            .entry(action.to_owned())
            .or_default()
            .push_back(at);
    }
}

/// The outcomes of the last remediations, and whether auto-remediation is paused.
#[derive(Debug, Default)]
pub(super) struct Containment {
    last: VecDeque<bool>,
    pub(super) until: Option<Instant>,
}

impl Containment {
    /// Whether auto-remediation is paused at `now` (clears an expired pause).
    pub(super) fn paused(&mut self, now: Instant) -> bool {
        match self.until {
            Some(until) if now < until => true,
            Some(_) => {
                self.until = None;
                self.last.clear();
                false
            }
            None => false,
        }
    }

    /// Records a remediation's outcome; returns `Some((failed, of))` when it trips containment.
    pub(super) fn record(&mut self, success: bool) -> Option<(usize, usize)> {
        if self.last.len() == CONTAINMENT_WINDOW {
            self.last.pop_front();
        }
        self.last.push_back(success);
        let failed = self.last.iter().filter(|ok| !**ok).count();
        let streak = self.last.iter().rev().take_while(|ok| !**ok).count();
        (failed * 2 > CONTAINMENT_WINDOW || streak >= CONTAINMENT_STREAK)
            .then_some((failed, self.last.len()))
    }

    /// Lifts the pause and forgets the history.
    pub(super) fn reset(&mut self) {
        self.until = None;
        self.last.clear();
    }
}
