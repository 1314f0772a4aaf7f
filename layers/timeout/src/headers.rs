//! Deadline headers: parsing and writing `grpc-timeout`, and parsing a millisecond header for HTTP.
//!
//! Every parser here is strict and total: a malformed value is `None` (the layer then ignores the header
//! and uses its local budget), never a panic and never an overflow.
//!
//! ```
//! use palisade_timeout::headers::{encode_grpc_timeout, parse_grpc_timeout, parse_millis};
//! use std::time::Duration;
//!
//! assert_eq!(parse_grpc_timeout(b"250m"), Some(Duration::from_millis(250)));
//! assert_eq!(parse_grpc_timeout(b"250"), None); // no unit
//! assert_eq!(encode_grpc_timeout(Duration::from_millis(1500)), "1500000u");
//! assert_eq!(parse_millis(b"1500"), Some(Duration::from_millis(1500)));
//! ```

use std::time::Duration;

use http::header::{HeaderName, HeaderValue};

/// The `grpc-timeout` header name.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The largest value `grpc-timeout` can carry in one unit: at most 8 digits.
const MAX_GRPC_VALUE: u64 = 99_999_999;

/// The most digits [`parse_millis`] accepts (just under 32 years): more is malformed, not saturated.
const MAX_MILLIS_DIGITS: usize = 12;

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
/// use palisade_timeout::headers::encode_grpc_timeout;
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

/// Parses a millisecond deadline header (e.g. `x-request-timeout: 1500`): 1 to 12 ASCII digits, a
/// whole number of milliseconds. Anything else — a unit, a sign, a fraction, whitespace, more digits —
/// is `None`.
pub fn parse_millis(value: &[u8]) -> Option<Duration> {
    parse_digits(value, MAX_MILLIS_DIGITS).map(Duration::from_millis)
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
        assert_eq!(
            parse_millis(b"999999999999"),
            Some(Duration::from_millis(999_999_999_999))
        );
        assert_eq!(parse_millis(b"9999999999999"), None);
        assert_eq!(parse_millis(b"99999999999999999999999999"), None);
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

    #[test]
    fn parses_millis() {
        assert_eq!(parse_millis(b"0"), Some(Duration::ZERO));
        assert_eq!(parse_millis(b"250"), Some(Duration::from_millis(250)));
        for bad in [&b""[..], b"250ms", b"1.5", b"-1", b" 1", b"1s"] {
            assert_eq!(parse_millis(bad), None, "{bad:?}");
        }
    }
}
