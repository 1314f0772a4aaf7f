//! The request's deadline as an extension, so that layers below a propagating timeout (retry above
//! all) can send each attempt the time that is *left*, not the budget of the first one.

use std::time::Duration;

use http::Request;
use palisade_core::error::Elapsed;
use tokio::time::Instant;

use crate::headers::{encode_grpc_timeout, parse_grpc_timeout, GRPC_TIMEOUT};

/// The instant by which a request must be answered: a request extension set by a
/// [`TimeoutLayer`](crate::TimeoutLayer) built with
/// [`propagate_grpc_timeout(true)`](crate::TimeoutBuilder::propagate_grpc_timeout).
///
/// The propagating layer writes `grpc-timeout` once, when the request passes it. A layer below it that
/// sends the request again later — the retry layer — clones the request's extensions with it, finds
/// this deadline, and rewrites `grpc-timeout` to the time left with [`refresh_grpc_timeout`] before each
/// attempt. A second propagating layer keeps the earlier of its own deadline and the one already there.
///
/// Only propagating layers read or write it: a timeout layer without propagation does no extension work
/// at all.
///
/// ```
/// use palisade_timeout::Deadline;
/// use std::time::Duration;
/// use tokio::time::Instant;
///
/// let now = Instant::now();
/// let d = Deadline::new(now + Duration::from_secs(2), Duration::from_secs(2));
/// assert_eq!(d.remaining_at(now + Duration::from_millis(500)), Duration::from_millis(1500));
/// assert_eq!(d.remaining_at(now + Duration::from_secs(3)), Duration::ZERO);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Deadline {
    at: Instant,
    budget: Duration,
}

impl Deadline {
    /// A deadline at `at`, set by a layer whose budget was `budget` (reported in the
    /// [`Elapsed`] of a request that reaches it).
    pub fn new(at: Instant, budget: Duration) -> Self {
        Deadline { at, budget }
    }

    /// `budget` from `now`; `None` if that is beyond what an [`Instant`] can hold (no deadline, in
    /// effect).
    pub fn from_now(now: Instant, budget: Duration) -> Option<Self> {
        now.checked_add(budget).map(|at| Deadline { at, budget })
    }

    /// When the request must be answered.
    pub fn instant(&self) -> Instant {
        self.at
    }

    /// The budget of the layer that set this deadline.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// The time left at `now`; zero once the deadline has passed.
    pub fn remaining_at(&self, now: Instant) -> Duration {
        self.at.saturating_duration_since(now)
    }

    /// The time left now (reads the clock); zero once the deadline has passed.
    pub fn remaining(&self) -> Duration {
        self.remaining_at(Instant::now())
    }
}

/// Before a request is sent again (a retry), rewrites its `grpc-timeout` to the time left of its
/// [`Deadline`] extension.
///
/// - No `Deadline` extension (no propagating timeout above): nothing is done and nothing is read but
///   the extension map.
/// - The deadline has passed: `Err(Elapsed)` with the deadline's budget — the request should fail as
///   timed out at once rather than go out with a `grpc-timeout` of zero.
/// - Otherwise `grpc-timeout` becomes the time left, unless the header already says less (it is never
///   raised). A missing or malformed header is replaced.
///
/// The retry layer (`palisade-retry`) calls it before every retry of an `http::Request`; call it
/// yourself from a retry layer's `clone_request` function, or from any layer that resends requests.
///
/// ```
/// use palisade_timeout::{refresh_grpc_timeout, Deadline};
/// use std::time::Duration;
/// use tokio::time::Instant;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let mut req = http::Request::builder()
///     .header("grpc-timeout", "2000000u")
///     .body(())
///     .unwrap();
/// let budget = Duration::from_secs(2);
/// req.extensions_mut().insert(Deadline::from_now(Instant::now(), budget).unwrap());
///
/// tokio::time::sleep(Duration::from_millis(300)).await; // the first attempt failed
/// refresh_grpc_timeout(&mut req).unwrap();
/// assert_eq!(req.headers()["grpc-timeout"], "1700000u");
///
/// tokio::time::sleep(Duration::from_secs(2)).await;
/// assert!(refresh_grpc_timeout(&mut req).is_err()); // nothing left: fail, do not send
/// # }
/// ```
///
/// # Errors
///
/// [`Elapsed`] when the deadline has passed.
pub fn refresh_grpc_timeout<B>(req: &mut Request<B>) -> Result<(), Elapsed> {
    let Some(deadline) = req.extensions().get::<Deadline>().copied() else {
        return Ok(());
    };
    let left = deadline.remaining();
    if left.is_zero() {
        return Err(Elapsed::new(deadline.budget));
    }
    let headers = req.headers_mut();
    let current = headers
        .get(GRPC_TIMEOUT)
        .and_then(|v| parse_grpc_timeout(v.as_bytes()));
    if current.is_none_or(|c| left < c) {
        headers.insert(GRPC_TIMEOUT, encode_grpc_timeout(left));
    }
    Ok(())
}

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
    async fn refresh_lowers_the_header_to_the_time_left() {
        let d = Deadline::from_now(Instant::now(), ms(2000)).unwrap();
        let mut req = req_with(Some("2000000u"), Some(d));
        tokio::time::sleep(ms(250)).await;
        refresh_grpc_timeout(&mut req).unwrap();
        assert_eq!(header(&req), Some("1750000u"));
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_never_raises_the_header() {
        let d = Deadline::from_now(Instant::now(), ms(2000)).unwrap();
        // The generated client asked for less than the layer's budget.
        let mut req = req_with(Some("100m"), Some(d));
        tokio::time::sleep(ms(250)).await;
        refresh_grpc_timeout(&mut req).unwrap();
        assert_eq!(header(&req), Some("100m"));
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_replaces_a_missing_or_malformed_header() {
        let d = Deadline::from_now(Instant::now(), ms(2000)).unwrap();
        for h in [None, Some("soon"), Some("123456789m")] {
            let mut req = req_with(h, Some(d));
            refresh_grpc_timeout(&mut req).unwrap();
            assert_eq!(header(&req), Some("2000000u"), "{h:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_without_a_deadline_leaves_the_request_alone() {
        let mut req = req_with(Some("2000000u"), None);
        tokio::time::sleep(ms(250)).await;
        refresh_grpc_timeout(&mut req).unwrap();
        assert_eq!(header(&req), Some("2000000u"));
        let mut req = req_with(None, None);
        refresh_grpc_timeout(&mut req).unwrap();
        assert_eq!(header(&req), None);
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_after_the_deadline_is_elapsed_not_zero() {
        let d = Deadline::from_now(Instant::now(), ms(2000)).unwrap();
        let mut req = req_with(Some("2000000u"), Some(d));
        tokio::time::sleep(ms(2000)).await;
        assert_eq!(refresh_grpc_timeout(&mut req), Err(Elapsed::new(ms(2000))));
        assert_eq!(header(&req), Some("2000000u"), "nothing written");
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
