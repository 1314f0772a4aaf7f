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

// The `grpc-timeout` header name, parser and encoder live in `palisade_core::deadline` (the retry layer
// needs them too); they are re-exported here under their original paths.
#[doc(inline)]
pub use palisade_core::deadline::{encode_grpc_timeout, parse_grpc_timeout, GRPC_TIMEOUT};

/// The most digits [`parse_millis`] accepts (just under 32 years): more is malformed, not saturated.
const MAX_MILLIS_DIGITS: usize = 12;

/// Parses a millisecond deadline header (e.g. `x-request-timeout: 1500`): 1 to 12 ASCII digits, a
/// whole number of milliseconds. Anything else — a unit, a sign, a fraction, whitespace, more digits —
/// is `None`.
pub fn parse_millis(value: &[u8]) -> Option<Duration> {
    parse_digits(value).map(Duration::from_millis)
}

/// 1 to [`MAX_MILLIS_DIGITS`] ASCII digits as a `u64` (12 digits cannot overflow it).
fn parse_digits(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > MAX_MILLIS_DIGITS {
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
    fn parses_millis() {
        assert_eq!(parse_millis(b"0"), Some(Duration::ZERO));
        assert_eq!(parse_millis(b"250"), Some(Duration::from_millis(250)));
        for bad in [
            &b""[..],
            b"250ms",
            b"1.5",
            b"-1",
            b" 1",
            b"1s",
            b"+1",
            b"\xff",
        ] {
            assert_eq!(parse_millis(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn largest_millis_do_not_overflow() {
        assert_eq!(
            parse_millis(b"999999999999"),
            Some(Duration::from_millis(999_999_999_999))
        );
        assert_eq!(parse_millis(b"9999999999999"), None);
        assert_eq!(parse_millis(b"99999999999999999999999999"), None);
    }

    #[test]
    fn the_grpc_codec_is_reexported_under_its_original_paths() {
        // `palisade_timeout::headers::*` is `palisade_core::deadline::*`.
        let encode: fn(Duration) -> http::HeaderValue = encode_grpc_timeout;
        let parse: fn(&[u8]) -> Option<Duration> = parse_grpc_timeout;
        assert_eq!(encode(Duration::from_millis(250)), "250000u");
        assert_eq!(parse(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(GRPC_TIMEOUT, palisade_core::deadline::GRPC_TIMEOUT);
    }
}
