//! Durations written as strings: a number and a unit (`"250ms"`, `"2s"`, `"1.5s"`, `"1m"`, `"1h"`).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// The units a duration may be written in, with their length in nanoseconds.
const UNITS: [(&str, u128); 7] = [
    ("ns", 1),
    ("us", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
    ("d", 86_400_000_000_000),
];

/// Longest accepted input: anything longer is not a duration a person wrote.
const MAX_LEN: usize = 40;

/// Why a string is not a duration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationError {
    input: String,
    problem: &'static str,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "\"{}\" is not a duration: {} (write a number and a unit, e.g. \"250ms\", \"2s\", \"1.5m\", \"1h\"; units: ns, us, ms, s, m, h, d)",
            self.input, self.problem
        )
    }
}

impl std::error::Error for DurationError {}

/// Parses `"<number><unit>"` strictly: digits with at most one decimal point, no sign, no spaces, a
/// unit from `ns`, `us`, `ms`, `s`, `m`, `h`, `d`, a whole number of nanoseconds, at most `u64::MAX`
/// nanoseconds (~584 years).
///
/// ```
/// use palisade::config::parse_duration;
/// use std::time::Duration;
///
/// assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
/// assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
/// assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
/// for bad in ["", "5", "-1s", "1.5.s", "s", "1 s", "1sec", "99999999999999999999d"] {
///     assert!(parse_duration(bad).is_err(), "{bad}");
/// }
/// ```
///
/// # Errors
///
/// The string does not have that form, or the value is too large or finer than a nanosecond.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let err = |problem| DurationError {
        input: s
            .chars()
            .take(MAX_LEN)
            .flat_map(char::escape_debug)
            .collect(),
        problem,
    };
    if s.is_empty() {
        return Err(err("it is empty"));
    }
    if s.len() > MAX_LEN {
        return Err(err("it is too long"));
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| err("it has no unit"))?;
    let (number, unit) = s.split_at(split);
    let &(_, unit_ns) = UNITS
        .iter()
        .find(|(name, _)| *name == unit)
        .ok_or_else(|| err("unknown unit, or not a plain number before it"))?;
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() || (number.contains('.') && frac.is_empty()) {
        return Err(err(
            "the number must have digits on both sides of a decimal point",
        ));
    }
    if !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err("the number has more than one decimal point"));
    }
    let too_large = || err("it is too large");
    let mut nanos: u128 = 0;
    for b in whole.bytes() {
        nanos = nanos
            .checked_mul(10)
            .and_then(|n| n.checked_add(u128::from(b - b'0')))
            .ok_or_else(too_large)?;
    }
    nanos = nanos.checked_mul(unit_ns).ok_or_else(too_large)?;
    if !frac.is_empty() {
        // The fraction's value in nanoseconds: frac × unit / 10^len, exactly.
        if frac.len() > 18 {
            return Err(err("the fraction is finer than a nanosecond"));
        }
        let scale = 10u128.pow(frac.len() as u32);
        let digits: u128 = frac.parse().map_err(|_| too_large())?;
        let scaled = digits * unit_ns;
        if scaled % scale != 0 {
            return Err(err("the fraction is finer than a nanosecond"));
        }
        nanos = nanos.checked_add(scaled / scale).ok_or_else(too_large)?;
    }
    let nanos = u64::try_from(nanos).map_err(|_| too_large())?;
    Ok(Duration::from_nanos(nanos))
}

/// Formats a duration the way [`parse_duration`] reads it back (for messages and reports).
pub(crate) fn format_duration(d: Duration) -> String {
    let n = d.as_nanos();
    for &(name, unit) in UNITS.iter().rev() {
        if n >= unit && n % unit == 0 {
            return format!("{}{name}", n / unit);
        }
    }
    if n == 0 {
        "0s".to_owned()
    } else {
        format!("{n}ns")
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration string such as \"250ms\", \"2s\", \"1m\" or \"1h\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_duration(v).map_err(E::custom)
    }
}

/// `#[serde(deserialize_with)]` for a required `Duration`.
pub(crate) fn required<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_str(DurationVisitor)
}

/// `#[serde(default, deserialize_with)]` for an optional `Duration`.
pub(crate) fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    d.deserialize_str(DurationVisitor).map(Some)
}

/// `#[serde(default, deserialize_with)]` for an optional list of durations: `["10s", "1m"]`.
pub(crate) fn optional_list<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<Duration>>, D::Error> {
    struct Text(Duration);
    impl<'de> Deserialize<'de> for Text {
        fn deserialize<D2: Deserializer<'de>>(d: D2) -> Result<Self, D2::Error> {
            d.deserialize_str(DurationVisitor).map(Text)
        }
    }
    let list = Vec::<Text>::deserialize(d)?;
    Ok(Some(list.into_iter().map(|t| t.0).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        let cases = [
            ("1ns", Duration::from_nanos(1)),
            ("7us", Duration::from_micros(7)),
            ("250ms", Duration::from_millis(250)),
            ("2s", Duration::from_secs(2)),
            ("1m", Duration::from_secs(60)),
            ("1h", Duration::from_secs(3600)),
            ("2d", Duration::from_secs(2 * 86_400)),
            ("0s", Duration::ZERO),
            ("0.5ms", Duration::from_micros(500)),
            ("1.25h", Duration::from_secs(4500)),
            ("007s", Duration::from_secs(7)),
        ];
        for (s, d) in cases {
            assert_eq!(parse_duration(s), Ok(d), "{s}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "5",
            "-1s",
            "+1s",
            "1.5.s",
            "1..5s",
            ".5s",
            "5.s",
            "s",
            "ms",
            " 1s",
            "1s ",
            "1 s",
            "1S",
            "1sec",
            "1e3s",
            "1_000s",
            "1.5ns",
            "0.0000000001s",
            "18446744074s",
            "99999999999999999999999999999999d",
            "1s1m",
            "١s",
        ] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.to_string().contains("is not a duration"), "{err}");
        }
        // The largest value still fits.
        assert_eq!(
            parse_duration("18446744073709551615ns"),
            Ok(Duration::from_nanos(u64::MAX))
        );
        assert!(parse_duration("18446744073709551616ns").is_err());
    }

    #[test]
    fn formats_round_trip() {
        for d in [
            Duration::from_millis(250),
            Duration::from_secs(120),
            Duration::from_secs(3600),
            Duration::from_nanos(1500),
            Duration::ZERO,
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
    }
}
