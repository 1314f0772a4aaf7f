//! The propagating layer's side of the request deadline: record a [`Deadline`] and write
//! `grpc-timeout`. The [`Deadline`] type, [`refresh_grpc_timeout`](palisade_core::deadline::refresh_grpc_timeout)
//! and the `grpc-timeout` codec live in [`palisade_core::deadline`], so that the retry layer can use
//! them without depending on this crate.

use std::time::Duration;

use http::Request;
use palisade_core::deadline::{encode_grpc_timeout, Deadline, GRPC_TIMEOUT};
use tokio::time::Instant;

/// A propagating layer's work for one request: caps `budget` by a deadline already on the request,
/// records the earlier deadline, and writes `grpc-timeout`. Returns the effective budget (zero: the
/// deadline has passed; nothing is written).
#[inline]
pub(crate) fn propagate<B>(req: &mut Request<B>, budget: Duration) -> Duration {
    let now = Instant::now();
    let outer = req.extensions().get::<Deadline>().copied();
    let budget = match outer {
        Some(outer) if outer.remaining_at(now) <= budget => {
            // The deadline already recorded is the earlier one: keep it.
            outer.remaining_at(now)
        }
        _ => {
            if let Some(ours) = Deadline::from_now(now, budget) {
                req.extensions_mut().insert(ours);
            }
            budget
        }
    };
    if !budget.is_zero() {
        req.headers_mut()
            .insert(GRPC_TIMEOUT, encode_grpc_timeout(budget));
    }
    budget
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn req_with(header: Option<&str>, deadline: Option<Deadline>) -> Request<()> {
        let mut req = Request::new(());
        if let Some(h) = header {
            req.headers_mut()
                .insert(GRPC_TIMEOUT, h.parse().expect("a valid header value"));
        }
        if let Some(d) = deadline {
            req.extensions_mut().insert(d);
        }
        req
    }

    fn header(req: &Request<()>) -> Option<&str> {
        req.headers().get(GRPC_TIMEOUT).map(|v| v.to_str().unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn propagate_records_and_writes_its_budget() {
        let start = Instant::now();
        let mut req = req_with(None, None);
        assert_eq!(propagate(&mut req, ms(1500)), ms(1500));
        assert_eq!(header(&req), Some("1500000u"));
        assert_eq!(
            req.extensions().get::<Deadline>(),
            Some(&Deadline::new(start + ms(1500), ms(1500)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn propagate_keeps_the_earliest_deadline() {
        let start = Instant::now();
        let outer = Deadline::from_now(start, ms(2000)).unwrap();
        tokio::time::sleep(ms(1900)).await;

        // 100 ms left of the outer deadline: a 500 ms budget is capped, and the outer one stays.
        let mut req = req_with(None, Some(outer));
        assert_eq!(propagate(&mut req, ms(500)), ms(100));
        assert_eq!(header(&req), Some("100000u"));
        assert_eq!(req.extensions().get::<Deadline>(), Some(&outer));

        // A 50 ms budget is earlier: it replaces the outer one.
        let mut req = req_with(None, Some(outer));
        assert_eq!(propagate(&mut req, ms(50)), ms(50));
        assert_eq!(
            req.extensions().get::<Deadline>(),
            Some(&Deadline::new(start + ms(1950), ms(50)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn propagate_past_the_deadline_writes_nothing() {
        let outer = Deadline::from_now(Instant::now(), ms(100)).unwrap();
        tokio::time::sleep(ms(100)).await;
        let mut req = req_with(None, Some(outer));
        assert_eq!(propagate(&mut req, ms(500)), Duration::ZERO);
        assert_eq!(header(&req), None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unrepresentable_deadline_is_not_recorded() {
        let mut req = req_with(None, None);
        assert_eq!(propagate(&mut req, Duration::MAX), Duration::MAX);
        assert_eq!(header(&req), Some("99999999H"));
        assert_eq!(req.extensions().get::<Deadline>(), None);
        assert_eq!(Deadline::from_now(Instant::now(), Duration::MAX), None);
    }
}
