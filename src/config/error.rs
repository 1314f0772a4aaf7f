//! [`ConfigError`]: what is wrong, where.

use std::error::Error;
use std::fmt;

/// What kind of problem a [`ConfigError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// The file could not be read.
    Io,
    /// The text is not valid TOML.
    Syntax,
    /// A key that the config does not have (a typo, or a setting of another section).
    UnknownKey,
    /// A required key is absent.
    MissingKey,
    /// A value of the wrong type, or one that does not parse (a duration, a level, a header name).
    InvalidValue,
    /// A value that parses but cannot work (a zero limit, a maximum below its minimum, two settings
    /// that contradict each other), found by the layer builders' own validation.
    Invalid,
    /// An environment variable that cannot be applied (not UTF-8, or a path through a non-table).
    Environment,
    /// A live handle refused a reloaded value.
    Reload,
}

/// A config that cannot be used: the file (origin), the key path (`server.rate_limit.max_keys`) or
/// the environment variable, the line and column in the file when known, and what is wrong.
///
/// ```
/// use palisade::config::{Config, ConfigErrorKind};
///
/// let err = Config::from_toml_str("[server.bulkhead]\nmax_concurrent = 0\n", "app.toml").unwrap_err();
/// assert_eq!(err.kind(), ConfigErrorKind::Invalid);
/// assert_eq!(err.key(), Some("server.bulkhead.max_concurrent"));
/// assert_eq!(err.line(), Some(2));
/// assert!(err.to_string().starts_with("app.toml:2:"), "{err}");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub(crate) Box<ErrorInner>);

/// The parts of a [`ConfigError`] (boxed: errors travel through many `Result`s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ErrorInner {
    pub(crate) origin: String,
    pub(crate) kind: ConfigErrorKind,
    pub(crate) key: Option<String>,
    pub(crate) env_var: Option<String>,
    pub(crate) position: Option<(usize, usize)>,
    pub(crate) message: String,
}

impl ConfigError {
    pub(crate) fn new(origin: &str, kind: ConfigErrorKind, message: impl Into<String>) -> Self {
        ConfigError(Box::new(ErrorInner {
            origin: origin.to_owned(),
            kind,
            key: None,
            env_var: None,
            position: None,
            message: message.into(),
        }))
    }

    pub(crate) fn with_key(mut self, key: impl Into<String>) -> Self {
        self.0.key = Some(key.into());
        self
    }

    /// The file (or other origin) the config came from.
    pub fn origin(&self) -> &str {
        &self.0.origin
    }

    /// What kind of problem this is.
    pub fn kind(&self) -> ConfigErrorKind {
        self.0.kind
    }

    /// The key path, e.g. `server.rate_limit.max_keys`, when the problem is one key's.
    pub fn key(&self) -> Option<&str> {
        self.0.key.as_deref()
    }

    /// The environment variable that set the key, when it came from one.
    pub fn env_var(&self) -> Option<&str> {
        self.0.env_var.as_deref()
    }

    /// The line in the file (1-based), when known.
    pub fn line(&self) -> Option<usize> {
        self.0.position.map(|p| p.0)
    }

    /// The column in the file (1-based), when known.
    pub fn column(&self) -> Option<usize> {
        self.0.position.map(|p| p.1)
    }

    /// What is wrong, without the location.
    pub fn message(&self) -> &str {
        &self.0.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.origin)?;
        if let Some((line, col)) = self.0.position {
            write!(f, ":{line}:{col}")?;
        }
        f.write_str(": ")?;
        if let Some(var) = &self.0.env_var {
            write!(f, "environment variable `{var}`")?;
            if let Some(key) = &self.0.key {
                write!(f, " (key `{key}`)")?;
            }
            f.write_str(": ")?;
        } else if let Some(key) = &self.0.key {
            write!(f, "`{key}`: ")?;
        }
        f.write_str(&self.0.message)
    }
}

impl Error for ConfigError {}
