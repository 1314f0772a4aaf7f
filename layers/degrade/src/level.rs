//! The degradation levels and the priority classes, with their names and parsing.

use std::fmt;
use std::str::FromStr;

/// How degraded the service is, from [`Normal`](Level::Normal) (everything passes) to
/// [`Maintenance`](Level::Maintenance) (nothing passes). Levels are ordered by severity:
/// `Normal < Degraded < Critical < ReadOnly < Maintenance`.
///
/// What each level admits with the default floors (see [`Builder::floor`](crate::Builder::floor)):
///
/// | level | critical | normal | background | unsafe methods (POST, PUT, PATCH, DELETE, ...) |
/// |---|---|---|---|---|
/// | `Normal` | ✓ | ✓ | ✓ | ✓ |
/// | `Degraded` | ✓ | ✓ | shed | as the class |
/// | `Critical` | ✓ | shed | shed | as the class |
/// | `ReadOnly` | ✓ | ✓ | ✓ | refused with [`ReadOnly`](crate::ReadOnly) |
/// | `Maintenance` | shed | shed | shed | shed |
///
/// A shed request gets [`Shed`](crate::Shed) (HTTP 503 through the rescue layer) naming the level.
/// `ReadOnly` is about writes, not load: by default it admits every class's safe methods, and refuses
/// every unsafe one, whatever its class (the store behind it cannot take writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(u8)]
pub enum Level {
    /// Everything passes. The hot path is one atomic load.
    #[default]
    Normal = 0,
    /// Background traffic is shed.
    Degraded = 1,
    /// Only critical traffic passes.
    Critical = 2,
    /// Safe methods (GET, HEAD, OPTIONS, TRACE) pass; every other method is refused with
    /// [`ReadOnly`](crate::ReadOnly).
    ReadOnly = 3,
    /// Nothing passes, critical traffic included (also accepted as `emergency` when parsed). Readiness
    /// reports the gate unhealthy, so load balancers take the instance out of rotation.
    Maintenance = 4,
}

impl Level {
    /// Every level, least severe first.
    pub const ALL: [Level; 5] = [
        Level::Normal,
        Level::Degraded,
        Level::Critical,
        Level::ReadOnly,
        Level::Maintenance,
    ];

    /// The level's name: `normal`, `degraded`, `critical`, `read_only` or `maintenance` (used in
    /// [`Shed`](crate::Shed), audit records and health reasons).
    pub const fn as_str(self) -> &'static str {
        match self {
            Level::Normal => "normal",
            Level::Degraded => "degraded",
            Level::Critical => "critical",
            Level::ReadOnly => "read_only",
            Level::Maintenance => "maintenance",
        }
    }

    /// The load value published for this level by default: 0.0, 0.5, 0.8, 1.0, 1.0.
    pub const fn default_load(self) -> f64 {
        match self {
            Level::Normal => 0.0,
            Level::Degraded => 0.5,
            Level::Critical => 0.8,
            Level::ReadOnly | Level::Maintenance => 1.0,
        }
    }

    pub(crate) const fn from_bits(bits: u8) -> Level {
        match bits & 0b111 {
            0 => Level::Normal,
            1 => Level::Degraded,
            2 => Level::Critical,
            3 => Level::ReadOnly,
            _ => Level::Maintenance,
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = ParseError;

    /// Parses a level name, ASCII case-insensitively: `normal`, `degraded`, `critical`, `read_only`
    /// (or `read-only`, `readonly`), `maintenance` (or `emergency`). Nothing else, not even
    /// surrounding spaces.
    fn from_str(s: &str) -> Result<Self, ParseError> {
        const NAMES: &[(&str, Level)] = &[
            ("normal", Level::Normal),
            ("degraded", Level::Degraded),
            ("critical", Level::Critical),
            ("read_only", Level::ReadOnly),
            ("read-only", Level::ReadOnly),
            ("readonly", Level::ReadOnly),
            ("maintenance", Level::Maintenance),
            ("emergency", Level::Maintenance),
        ];
        NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
            .map(|&(_, level)| level)
            .ok_or_else(|| {
                ParseError::new(
                    "level",
                    s,
                    "normal, degraded, critical, read_only, maintenance",
                )
            })
    }
}

/// How important a request is. Ordered: `Background < Normal < Critical`.
///
/// A request's class comes from (first that answers): a `Priority` in the request's extensions (set by
/// an earlier layer, e.g. after authentication), the closure set with
/// [`Builder::priority_fn`](crate::Builder::priority_fn), the header set with
/// [`Builder::priority_header`](crate::Builder::priority_header), the route table
/// ([`Builder::route`](crate::Builder::route)), and finally the default class
/// ([`Builder::default_priority`](crate::Builder::default_priority), `Normal` unless set). The class is
/// only worked out when the level is not `Normal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(u8)]
pub enum Priority {
    /// Work that can wait: batch jobs, prefetch, analytics. Shed first.
    Background = 0,
    /// Ordinary traffic.
    #[default]
    Normal = 1,
    /// Traffic that must keep working until the most severe level: checkout, login, health probes
    /// routed through the gate.
    Critical = 2,
}

impl Priority {
    /// Every class, least important first.
    pub const ALL: [Priority; 3] = [Priority::Background, Priority::Normal, Priority::Critical];

    /// The class's name: `background`, `normal` or `critical`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Priority::Background => "background",
            Priority::Normal => "normal",
            Priority::Critical => "critical",
        }
    }

    /// Parses a header value: one of the names, ASCII case-insensitive, with optional surrounding
    /// spaces or tabs. Anything else (unknown names, numbers, lists, more than 32 bytes, non-ASCII) is
    /// `None`.
    pub fn from_header_value(value: &[u8]) -> Option<Priority> {
        if value.len() > 32 {
            return None;
        }
        let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
        let start = value.iter().position(|b| !is_ows(b))?;
        let end = value.iter().rposition(|b| !is_ows(b))? + 1;
        let token = &value[start..end];
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str().as_bytes().eq_ignore_ascii_case(token))
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = ParseError;

    /// Parses `background`, `normal` or `critical`, ASCII case-insensitively.
    fn from_str(s: &str) -> Result<Self, ParseError> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ParseError::new("priority", s, "background, normal, critical"))
    }
}

/// A level or priority name that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    what: &'static str,
    input: String,
    expected: &'static str,
}

impl ParseError {
    pub(crate) fn new(what: &'static str, input: &str, expected: &'static str) -> Self {
        // Keep a bounded, printable excerpt of the input for the message.
        let input: String = input
            .chars()
            .take(40)
            .flat_map(char::escape_debug)
            .collect();
        ParseError {
            what,
            input,
            expected,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown {} \"{}\" (expected one of: {})",
            self.what, self.input, self.expected
        )
    }
}

impl std::error::Error for ParseError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_round_trip_and_order() {
        for level in Level::ALL {
            assert_eq!(level.as_str().parse::<Level>(), Ok(level));
            assert_eq!(Level::from_bits(level as u8), level);
        }
        assert!(Level::Normal < Level::Degraded && Level::ReadOnly < Level::Maintenance);
        assert_eq!("READ-ONLY".parse::<Level>(), Ok(Level::ReadOnly));
        assert_eq!("Emergency".parse::<Level>(), Ok(Level::Maintenance));
        assert!(" normal".parse::<Level>().is_err());
        assert!("".parse::<Level>().is_err());
    }

    #[test]
    fn priority_header_values() {
        assert_eq!(
            Priority::from_header_value(b" Critical\t"),
            Some(Priority::Critical)
        );
        assert_eq!(
            Priority::from_header_value(b"background"),
            Some(Priority::Background)
        );
        for bad in [
            &b""[..],
            b"   ",
            b"high",
            b"2",
            b"critical, normal",
            b"crit ical",
            b"\xff\xfe",
            &[b'a'; 100],
        ] {
            assert_eq!(Priority::from_header_value(bad), None, "{bad:?}");
        }
    }
}
