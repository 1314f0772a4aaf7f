//! Configuration errors shared by every layer's builder (and, later, the config file loader).
//!
//! A builder validates everything in `build()` and answers a bad value with a [`BuildError`] naming the
//! layer, the setting and what is wrong with it — never a panic and never a silent default.
//!
//! ```
//! use palisade_core::config::BuildError;
//!
//! let err = BuildError::new("circuit breaker", "failure_rate", "1.5 is not in (0, 1]");
//! assert_eq!(err.setting(), "failure_rate");
//! assert_eq!(err.to_string(), "invalid circuit breaker setting `failure_rate`: 1.5 is not in (0, 1]");
//!
//! // Settings read from the environment are named by their variable.
//! let err = BuildError::new("degradation gate", "PALISADE_READ_ONLY", "expected 1/0, true/false, yes/no or on/off");
//! assert!(err.to_string().starts_with("invalid environment variable `PALISADE_READ_ONLY`"));
//! ```

use std::borrow::Cow;
use std::fmt;

/// A setting a builder refused, with the layer it belongs to and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    layer: &'static str,
    setting: &'static str,
    problem: Cow<'static, str>,
}

impl BuildError {
    /// `setting` of `layer` (e.g. `"rate limit"`, `"default_rate"`) is wrong because of `problem`.
    /// A setting named `PALISADE_...` is an environment variable.
    pub fn new(
        layer: &'static str,
        setting: &'static str,
        problem: impl Into<Cow<'static, str>>,
    ) -> Self {
        BuildError {
            layer,
            setting,
            problem: problem.into(),
        }
    }

    /// The layer, e.g. `"bulkhead"`.
    pub fn layer(&self) -> &str {
        self.layer
    }

    /// The setting that is wrong, e.g. `"max_concurrent"`, or the environment variable.
    pub fn setting(&self) -> &str {
        self.setting
    }

    /// What is wrong with it.
    pub fn problem(&self) -> &str {
        &self.problem
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.setting.starts_with("PALISADE_") {
            write!(
                f,
                "invalid environment variable `{}`: {}",
                self.setting, self.problem
            )
        } else {
            write!(
                f,
                "invalid {} setting `{}`: {}",
                self.layer, self.setting, self.problem
            )
        }
    }
}

impl std::error::Error for BuildError {}
