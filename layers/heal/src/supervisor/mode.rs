//! The supervisor's [`Mode`]: the kill switch.

use std::fmt;
use std::str::FromStr;

use palisade_core::config::BuildError;

/// The environment variable [`Mode::from_env`] reads: `dry_run`, `active` or `disabled`.
pub const MODE_ENV: &str = "PALISADE_HEAL_MODE";

/// What the supervisor does with a confirmed anomaly.
///
/// Parsed strictly (`"dry_run"`, `"active"`, `"disabled"`, nothing else) and displayed the same way.
///
/// ```
/// use palisade_heal::supervisor::Mode;
///
/// assert_eq!("active".parse::<Mode>().unwrap(), Mode::Active);
/// assert_eq!(Mode::default(), Mode::DryRun);
/// let err = "Active".parse::<Mode>().unwrap_err();
/// assert!(err.to_string().contains("dry_run, active, disabled"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// The default: detect and decide, audit what would be done (outcome `dry_run`), call no
    /// action's `apply`.
    #[default]
    DryRun,
    /// Detect, decide and act.
    Active,
    /// The emergency kill switch: a tick does nothing at all — no detection, no state change, no
    /// action, no audit record.
    Disabled,
}

impl Mode {
    /// The mode's name: `"dry_run"`, `"active"` or `"disabled"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::DryRun => "dry_run",
            Mode::Active => "active",
            Mode::Disabled => "disabled",
        }
    }

    /// The start-up mode from [`PALISADE_HEAL_MODE`](MODE_ENV): [`Mode::DryRun`] when it is unset.
    ///
    /// # Errors
    ///
    /// The variable is set to anything but `dry_run`, `active` or `disabled` (including an empty or
    /// non-UTF-8 value): a start-up error, never a silent default.
    pub fn from_env() -> Result<Mode, BuildError> {
        match std::env::var(MODE_ENV) {
            Ok(value) => value
                .parse()
                .map_err(|e: ParseModeError| BuildError::new("heal", MODE_ENV, e.to_string())),
            Err(std::env::VarError::NotPresent) => Ok(Mode::DryRun),
            Err(std::env::VarError::NotUnicode(_)) => Err(BuildError::new(
                "heal",
                MODE_ENV,
                "not valid UTF-8: expected one of dry_run, active, disabled",
            )),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = ParseModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "dry_run" => Ok(Mode::DryRun),
            "active" => Ok(Mode::Active),
            "disabled" => Ok(Mode::Disabled),
            other => Err(ParseModeError {
                value: other.to_owned(),
            }),
        }
    }
}

/// A string that is not a [`Mode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseModeError {
    value: String,
}

impl ParseModeError {
    /// The string that was refused.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for ParseModeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid heal mode {:?}: expected one of dry_run, active, disabled",
            self.value
        )
    }
}

impl std::error::Error for ParseModeError {}
