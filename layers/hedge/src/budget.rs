//! The hedge budget: hedges are at most a ratio of requests, plus a small burst.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use palisade_core::config::BuildError;

use crate::layer::{LAYER, MAX_HEDGES};

/// One hedge, in budget units: ratios are kept in 1/65536ths.
const UNIT: u64 = 1 << 16;

/// The largest [`burst`](HedgeBudget::new) accepted: 1,000,000 hedges.
pub const MAX_BURST: u32 = 1_000_000;

/// How many hedges a layer may send: every request deposits `ratio` of a hedge, every hedge withdraws
/// one, and the balance holds at most `burst` hedges (at least one) — it starts full.
///
/// So over **any** stretch of a layer's life, `hedges ≤ ratio × requests + burst`: a storm of slow
/// answers cannot multiply the load on the backend by more than `1 + ratio`, however long it lasts.
/// The default is `HedgeBudget::new(0.1, 10)`: at most 10 % more requests, plus 10.
///
/// Every request the layer receives deposits, hedgeable or not. The ratio is kept in 1/65536ths,
/// rounded down, so the bound holds exactly as written. A hedge the budget refuses is not sent (the
/// request waits for the attempts in flight) and is counted in
/// [`HedgeHandle::budget_refused`](crate::HedgeHandle::budget_refused).
///
/// Cost: a deposit is one atomic load while the balance is full (the steady state of a healthy
/// backend), else one atomic add; a withdrawal is a compare-and-swap. No clock is read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HedgeBudget {
    limits: Option<(f64, u32)>,
}

impl HedgeBudget {
    /// At most `ratio` hedges per request (0 to [`MAX_HEDGES`]; above 1 only makes sense with several
    /// hedges per request) plus `burst` (at most [`MAX_BURST`]).
    pub fn new(ratio: f64, burst: u32) -> Self {
        HedgeBudget {
            limits: Some((ratio, burst)),
        }
    }

    /// No budget: every hedge the delay calls for is sent (up to `max_hedges` per request).
    pub fn unlimited() -> Self {
        HedgeBudget { limits: None }
    }

    pub(crate) fn build(&self) -> Result<Option<BudgetState>, BuildError> {
        let Some((ratio, burst)) = self.limits else {
            return Ok(None);
        };
        if !(ratio.is_finite() && (0.0..=f64::from(MAX_HEDGES)).contains(&ratio)) {
            return Err(BuildError::new(
                LAYER,
                "budget.ratio",
                format!("{ratio} is not from 0 to {MAX_HEDGES}"),
            ));
        }
        if burst > MAX_BURST {
            return Err(BuildError::new(
                LAYER,
                "budget.burst",
                format!("{burst} is above {MAX_BURST}"),
            ));
        }
        Ok(Some(BudgetState {
            balance: AtomicU64::new(u64::from(burst) * UNIT),
            cap: u64::from(burst.max(1)) * UNIT,
            // At most 10 × 65536: exact.
            deposit: (ratio * UNIT as f64).floor() as u64,
        }))
    }
}

impl Default for HedgeBudget {
    /// `HedgeBudget::new(0.1, 10)`.
    fn default() -> Self {
        HedgeBudget::new(0.1, 10)
    }
}

/// The live budget, shared by every service of a layer.
#[derive(Debug)]
pub(crate) struct BudgetState {
    /// In units; may exceed `cap` by a few concurrent deposits, but only `cap` of it can be spent at once.
    balance: AtomicU64,
    cap: u64,
    deposit: u64,
}

impl BudgetState {
    /// A request arrived.
    #[inline]
    pub(crate) fn deposit(&self) {
        if self.deposit != 0 && self.balance.load(Relaxed) < self.cap {
            self.balance.fetch_add(self.deposit, Relaxed);
        }
    }

    /// Takes one hedge, or says no.
    pub(crate) fn try_withdraw(&self) -> bool {
        let mut cur = self.balance.load(Relaxed);
        loop {
            let spendable = cur.min(self.cap);
            if spendable < UNIT {
                return false;
            }
            match self
                .balance
                .compare_exchange_weak(cur, spendable - UNIT, Relaxed, Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Gives back a hedge that was withdrawn but not sent.
    pub(crate) fn refund(&self) {
        self.balance.fetch_add(UNIT, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn validation() {
        assert!(HedgeBudget::new(-0.1, 1).build().is_err());
        assert!(HedgeBudget::new(f64::NAN, 1).build().is_err());
        assert!(HedgeBudget::new(f64::from(MAX_HEDGES) + 0.1, 1)
            .build()
            .is_err());
        assert_eq!(
            HedgeBudget::new(0.1, MAX_BURST + 1)
                .build()
                .unwrap_err()
                .setting(),
            "budget.burst"
        );
        assert!(HedgeBudget::new(0.0, 0).build().unwrap().is_some());
        assert!(HedgeBudget::unlimited().build().unwrap().is_none());
    }

    #[test]
    fn starts_full_and_refills_per_request() {
        let b = HedgeBudget::new(0.25, 2).build().unwrap().unwrap();
        assert!(b.try_withdraw());
        assert!(b.try_withdraw());
        assert!(!b.try_withdraw());
        for _ in 0..3 {
            b.deposit();
        }
        assert!(!b.try_withdraw(), "three quarters of a hedge");
        b.deposit();
        assert!(b.try_withdraw());
        assert!(!b.try_withdraw());
        // A long quiet, healthy stretch does not bank more than the burst.
        for _ in 0..10_000 {
            b.deposit();
        }
        assert!(b.try_withdraw());
        assert!(b.try_withdraw());
        assert!(!b.try_withdraw());
    }

    #[test]
    fn zero_burst_still_accumulates_one_hedge() {
        let b = HedgeBudget::new(0.5, 0).build().unwrap().unwrap();
        assert!(!b.try_withdraw());
        b.deposit();
        b.deposit();
        b.deposit();
        b.deposit();
        assert!(b.try_withdraw());
        assert!(!b.try_withdraw());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any interleaving of requests and hedge attempts: granted hedges never exceed
        /// `ratio × requests + burst`.
        #[test]
        fn never_more_than_ratio_plus_burst(
            ratio in 0.0f64..3.0,
            burst in 0u32..20,
            ops in proptest::collection::vec(0u8..4, 0..2000),
        ) {
            let b = HedgeBudget::new(ratio, burst).build().unwrap().unwrap();
            let (mut requests, mut granted) = (0u64, 0u64);
            for op in ops {
                if op == 0 {
                    if b.try_withdraw() {
                        granted += 1;
                    }
                } else {
                    b.deposit();
                    requests += 1;
                }
                prop_assert!(
                    granted as f64 <= ratio * requests as f64 + f64::from(burst) + 1e-9,
                    "{granted} hedges for {requests} requests at {ratio} + {burst}"
                );
            }
        }
    }
}
