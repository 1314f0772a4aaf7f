//! Request deadlines shared by the layers: the [`Deadline`] request extension, rewriting `grpc-timeout`
//! to the time left before a request is sent again ([`refresh_grpc_timeout`]), and the `grpc-timeout`
//! codec ([`parse_grpc_timeout`], [`encode_grpc_timeout`]).
//!
//! A propagating timeout (`palisade-timeout`) writes `grpc-timeout` and records a [`Deadline`]; a layer
//! below it that resends the request (`palisade-retry`) refreshes the header from it, so that each
//! attempt tells the server the time that is *left*, not the budget of the first one. Both crates need
//! these, and a layer crate depends on nothing of palisade but this one, so they live here;
//! `palisade-timeout` re-exports them under its own paths (`palisade_timeout::Deadline`,
//! `palisade_timeout::headers::parse_grpc_timeout`, ...).
//!
//! Every parser here is strict and total: a malformed value is `None`, never a panic and never an
//! overflow.
//!
//! ```
//! use palisade_core::deadline::{encode_grpc_timeout, parse_grpc_timeout};
//! use std::time::Duration;
//!
//! assert_eq!(parse_grpc_timeout(b"250m"), Some(Duration::from_millis(250)));
//! assert_eq!(parse_grpc_timeout(b"250"), None); // no unit
//! assert_eq!(encode_grpc_timeout(Duration::from_millis(1500)), "1500000u");
//! ```

use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::Request;
use tokio::time::Instant;

use crate::error::Elapsed;

/// The instant by which a request must be answered: a request extension set by a
/// `palisade_timeout::TimeoutLayer` built with `propagate_grpc_timeout(true)` (re-exported there as
/// `palisade_timeout::Deadline`).
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
/// use palisade_core::deadline::Deadline;
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
/// (`palisade_timeout::refresh_grpc_timeout` is the same function.)
///
/// ```
/// use palisade_core::deadline::{refresh_grpc_timeout, Deadline};
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

/// One timeout's deadline, as the work under it sees it: which palisade timeout (one response future of a
/// timeout layer) a piece of work runs under, so that when that timeout fires, the work it cuts off — and
/// only that work — knows it was cut off by its own stack's deadline.
///
/// The protocol, all thread-local and allocation-free:
///
/// - a timeout layer makes a [`Scope::new`] per request and runs its inner service's `call`, and every poll
///   of the inner future, inside [`Scope::enter`];
/// - work below it (a circuit breaker's response future, a signal recorder) takes [`Scope::current`] when
///   it is created — the innermost timeout whose `call` or poll is running;
/// - when the budget runs out, the timeout drops the inner future inside [`Scope::expire`]; whatever is
///   dropped then asks [`Scope::is_expiring`] on the scope it took.
///
/// A breaker therefore counts a call cut off by the timeout directly above it (or the nearest one, if its
/// own stack has none) as a timeout failure, while a breaker in *another* stack that happens to live inside
/// the dropped work — a client stack called from a handler that a server timeout cuts off, with a total
/// timeout of its own — is not charged for a deadline that was not its backend's.
///
/// ```
/// use palisade_core::deadline::Scope;
///
/// struct Work(Option<Scope>);
/// impl Drop for Work {
///     fn drop(&mut self) {
///         // Dropped because the deadline it runs under passed.
///         assert!(self.0.is_some_and(|s| s.is_expiring()));
///     }
/// }
///
/// let timeout = Scope::new();
/// let work = timeout.enter(|| Work(Scope::current())); // created under the timeout
/// assert_eq!(Scope::current(), None);
/// let other = Scope::new();
/// assert!(!other.is_expiring());
/// timeout.expire(|| drop(work));
/// assert!(!timeout.is_expiring());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scope(std::num::NonZeroU64);

thread_local! {
    /// The innermost scope whose `call` or poll runs on this thread (0: none).
    static CURRENT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// The scope being expired on this thread (0: none).
    static EXPIRING: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// The next scope id of this thread: a block of 2^32 ids, taken from `BLOCKS` (0: no block yet).
    static NEXT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The next unused block of scope ids (each thread takes one at a time; ids never repeat within 2^64).
static BLOCKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Restores a thread-local cell to its previous value, even on unwind.
struct Restore(&'static std::thread::LocalKey<std::cell::Cell<u64>>, u64);

impl Drop for Restore {
    fn drop(&mut self) {
        let prev = self.1;
        self.0.with(|c| c.set(prev));
    }
}

impl Scope {
    /// A fresh scope, distinct from every other scope of the process. Costs two thread-local accesses
    /// (and one shared atomic increment per 2^32 scopes a thread makes).
    #[inline]
    pub fn new() -> Scope {
        NEXT.with(|n| {
            let mut id = n.get();
            if id & 0xFFFF_FFFF == 0 {
                let block = BLOCKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                id = (block << 32) | 1;
            }
            n.set(id.wrapping_add(1));
            Scope(std::num::NonZeroU64::new(id).unwrap_or(std::num::NonZeroU64::MIN))
        })
    }

    /// The innermost scope whose [`enter`](Self::enter) is running on this thread, if any.
    #[inline]
    pub fn current() -> Option<Scope> {
        std::num::NonZeroU64::new(CURRENT.with(std::cell::Cell::get)).map(Scope)
    }

    /// Runs `f` — the inner service's `call`, or one poll of the inner future — under this scope.
    #[inline]
    pub fn enter<R>(self, f: impl FnOnce() -> R) -> R {
        let prev = CURRENT.with(|c| c.replace(self.0.get()));
        let _restore = Restore(&CURRENT, prev);
        f()
    }

    /// Runs `cancel` — dropping the work of a request whose deadline has passed — telling what it drops
    /// why: while `cancel` runs, [`is_expiring`](Self::is_expiring) is true for this scope on this thread.
    pub fn expire<R>(self, cancel: impl FnOnce() -> R) -> R {
        let prev = EXPIRING.with(|c| c.replace(self.0.get()));
        let _restore = Restore(&EXPIRING, prev);
        cancel()
    }

    /// Whether this scope is being expired on this thread: the work being dropped now is dropped because
    /// this scope's deadline passed.
    #[inline]
    pub fn is_expiring(self) -> bool {
        EXPIRING.with(std::cell::Cell::get) == self.0.get()
    }
}

impl Default for Scope {
    fn default() -> Self {
        Scope::new()
    }
}

/// Whether *some* deadline scope is being expired on this thread (see [`Scope`]; prefer
/// [`Scope::is_expiring`] on the scope the work was created under, which is not fooled by a timeout of
/// another stack).
pub fn expiring() -> bool {
    EXPIRING.with(std::cell::Cell::get) != 0
}

/// The `grpc-timeout` header name.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The largest value `grpc-timeout` can carry in one unit: at most 8 digits.
const MAX_GRPC_VALUE: u64 = 99_999_999;

/// Parses a `grpc-timeout` value: `TimeoutValue TimeoutUnit`, where the value is 1 to 8 ASCII digits and
/// the unit one of `H` (hours), `M` (minutes), `S` (seconds), `m` (milliseconds), `u` (microseconds),
/// `n` (nanoseconds), as the [gRPC over HTTP/2] specification defines it.
///
/// Anything else — no digits, more than 8 digits, a sign, whitespace, an unknown or missing unit — is
/// `None`. The largest value (`99999999H`, about 11,400 years) fits a [`Duration`], so nothing overflows.
/// `0` with any unit is accepted: a deadline that has already passed.
///
/// [gRPC over HTTP/2]: https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    let n = parse_digits(digits, 8)?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Encodes `timeout` as a `grpc-timeout` value, in the finest unit whose value fits in 8 digits.
///
/// The value is rounded *down* in that unit, so the receiver's deadline is never later than ours (the
/// loss is below one part in ten million). Timeouts over `99999999H` are written as `99999999H`.
///
/// ```
/// use palisade_core::deadline::encode_grpc_timeout;
/// use std::time::Duration;
///
/// assert_eq!(encode_grpc_timeout(Duration::from_millis(99)), "99000000n");
/// assert_eq!(encode_grpc_timeout(Duration::from_millis(100)), "100000u");
/// assert_eq!(encode_grpc_timeout(Duration::from_secs(3600)), "3600000m");
/// assert_eq!(encode_grpc_timeout(Duration::MAX), "99999999H");
/// ```
pub fn encode_grpc_timeout(timeout: Duration) -> HeaderValue {
    let mut buf = [0u8; 9];
    let len = write_grpc_timeout(timeout, &mut buf);
    match HeaderValue::from_bytes(&buf[..len]) {
        Ok(v) => v,
        // Unreachable: ASCII digits followed by an ASCII letter are always a valid header value.
        Err(_) => HeaderValue::from_static("99999999H"),
    }
}

/// Writes the `grpc-timeout` encoding of `timeout` into `buf`; returns its length (2 to 9 bytes).
fn write_grpc_timeout(timeout: Duration, buf: &mut [u8; 9]) -> usize {
    const UNITS: [(u8, u128); 6] = [
        (b'n', 1),
        (b'u', 1_000),
        (b'm', 1_000_000),
        (b'S', 1_000_000_000),
        (b'M', 60_000_000_000),
        (b'H', 3_600_000_000_000),
    ];
    let nanos = timeout.as_nanos();
    let (value, unit) = UNITS
        .iter()
        .find_map(|&(unit, per)| {
            let v = nanos / per;
            // Fits in 8 digits, so the cast below is lossless.
            (v <= u128::from(MAX_GRPC_VALUE)).then_some((v as u64, unit))
        })
        .unwrap_or((MAX_GRPC_VALUE, b'H'));
    let len = write_decimal(value, buf);
    buf[len] = unit;
    len + 1
}

/// Writes `value` (at most 8 digits) in decimal at the start of `buf`; returns the number of digits.
fn write_decimal(mut value: u64, buf: &mut [u8; 9]) -> usize {
    let mut tmp = [0u8; 8];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 || i == 0 {
            break;
        }
    }
    let len = tmp.len() - i;
    buf[..len].copy_from_slice(&tmp[i..]);
    len
}

/// 1 to `max` ASCII digits as a `u64` (`max` ≤ 19, so it cannot overflow).
fn parse_digits(digits: &[u8], max: usize) -> Option<u64> {
    if digits.is_empty() || digits.len() > max {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        d.is_ascii_digit().then(|| acc * 10 + u64::from(d - b'0'))
    })
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

    // ---- the codec ----

    #[test]
    fn parses_every_unit() {
        let cases: [(&[u8], Duration); 7] = [
            (b"2H", Duration::from_secs(7200)),
            (b"3M", Duration::from_secs(180)),
            (b"4S", Duration::from_secs(4)),
            (b"5m", Duration::from_millis(5)),
            (b"6u", Duration::from_micros(6)),
            (b"7n", Duration::from_nanos(7)),
            (b"00000010m", Duration::from_millis(10)),
        ];
        for (input, want) in cases {
            assert_eq!(parse_grpc_timeout(input), Some(want), "{input:?}");
        }
        assert_eq!(parse_grpc_timeout(b"0m"), Some(Duration::ZERO));
    }

    #[test]
    fn rejects_malformed_values() {
        let bad: [&[u8]; 16] = [
            b"",
            b"m",
            b"10",
            b"10x",
            b"10 m",
            b" 10m",
            b"10m ",
            b"-10m",
            b"+10m",
            b"1.5S",
            b"123456789m",
            b"10ms",
            b"10h",
            b"10s",
            b"\xff\xffm",
            b"1e3m",
        ];
        for input in bad {
            assert_eq!(parse_grpc_timeout(input), None, "{input:?}");
        }
    }

    #[test]
    fn largest_values_do_not_overflow() {
        assert_eq!(
            parse_grpc_timeout(b"99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
        assert_eq!(
            parse_grpc_timeout(b"99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        assert_eq!(parse_grpc_timeout(b"999999999999999999999H"), None);
    }

    #[test]
    fn encodes_in_the_finest_unit_that_fits() {
        let cases = [
            (Duration::from_nanos(1), "1n"),
            (Duration::from_nanos(99_999_999), "99999999n"),
            (Duration::from_nanos(100_000_000), "100000u"),
            (Duration::from_nanos(100_000_999), "100000u"), // rounded down
            (Duration::from_millis(1500), "1500000u"),
            (Duration::from_secs(100), "100000m"),
            (Duration::from_secs(100_000), "100000S"),
            (Duration::from_secs(100_000_000), "1666666M"), // rounded down
            (Duration::from_secs(99_999_999 * 3600), "99999999H"),
            (Duration::from_secs(100_000_000 * 3600), "99999999H"),
            (Duration::MAX, "99999999H"),
            (Duration::ZERO, "0n"),
        ];
        for (d, want) in cases {
            assert_eq!(encode_grpc_timeout(d), want, "{d:?}");
        }
    }

    #[test]
    fn encoding_round_trips_without_lengthening() {
        for ms in [
            1u64,
            7,
            99,
            100,
            999,
            1000,
            12_345,
            86_400_000,
            10_000_000_000,
        ] {
            let d = Duration::from_millis(ms);
            let v = encode_grpc_timeout(d);
            let back = parse_grpc_timeout(v.as_bytes()).unwrap();
            assert!(back <= d, "{d:?} -> {v:?} -> {back:?}");
            assert!(
                d - back < Duration::from_secs(1).max(d / 10_000_000),
                "{d:?}"
            );
        }
    }
}
