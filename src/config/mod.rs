//! The TOML config file: one file that feeds the layer builders of a server stack and a client stack,
//! with environment overrides, strict validation and live reload.
//!
//! - **Sections are layers.** `[server.gate]`, `[server.rate_limit]`, `[server.bulkhead]`,
//!   `[server.adaptive]`, `[server.timeout]`, `[server.fallback]`, `[server.breaker]`, `[server.chaos]`,
//!   `[server.idempotency]`, `[client.total_timeout]`, `[client.hedge]`, `[client.retry]`,
//!   `[client.breaker]`, `[client.adaptive]`, `[client.per_try_timeout]`, `[client.bulkhead]`,
//!   `[client.chaos]`: a section present puts the layer
//!   in the stack ([`Config::server_stack_builder`], [`Config::client_stack_builder`],
//!   [`Config::idempotency_builder`]); an absent one leaves it out.
//! - **`[heal]`** configures the control plane's eyes: `[heal.signals]` the latency recorders' windows,
//!   slots, accuracy and cap ([`Config::recorders`]), and each `[heal.detectors.<name>]` one anomaly
//!   detector on one signal ([`Config::detectors`]; `kind` is `threshold`, `mean_sigma`, `ewma`, `iqr`,
//!   `median_mad` or `rate_of_change`, and a key that does not apply to the kind is an error).
//! - **Keys are builder settings**, named like the builder methods. An absent key means the builder's
//!   own default — the config has no defaults of its own. Unknown keys are errors.
//! - **Values are typed**: durations are strings with a unit (`"250ms"`, `"2s"`, `"1.5m"`, `"1h"`; see
//!   [`parse_duration`]), rates are `{ limit = 100, per = "1s", burst = 200 }`, levels and priorities
//!   are their names.
//! - **Validation builds the stacks** with a scratch `Health` and a disabled `Audit`, so every layer's
//!   own checks apply; a refused setting is reported by its key (`server.bulkhead.max_concurrent`),
//!   with the file, line and column, or with the environment variable that set it ([`ConfigError`]).
//!   Loading never panics and never falls back to a default silently.
//!
//! # Environment overrides
//!
//! A variable `PALISADE_<PATH>` overrides the key at `<PATH>`: the TOML path with `.` written as
//! `__`, in upper case. `PALISADE_SERVER__RATE_LIMIT__MAX_KEYS=5000` sets `server.rate_limit.max_keys`;
//! `PALISADE_SERVER__TIMEOUT__TIMEOUT=3s` sets `server.timeout.timeout`.
//!
//! - Only variables under a section of the file are overrides: `PALISADE_SERVER__…`,
//!   `PALISADE_CLIENT__…` and `PALISADE_HEAL__…`. Others, such as `PALISADE_ADDR` or `PALISADE_LEVEL`, are left alone.
//! - The value is read as a TOML integer, float or boolean if it is one (`5000`, `0.5`, `true`), as an
//!   inline table or array if it starts with `{` or `[`, and as a string otherwise (`3s`,
//!   `x-tenant-id`). It is applied to the parsed file before the typed config is read, so it gets the
//!   same checks: `PALISADE_SERVER__RATE_LIMIT__MAX_KEYS=many` is an error naming the variable.
//! - An override may create a section the file does not have (and so add a layer):
//!   `PALISADE_SERVER__TIMEOUT__TIMEOUT=3s` adds a timeout to a file without `[server.timeout]`.
//! - Path segments are lower-cased, so map entries set from the environment (a tier, a tenant) have
//!   lower-case names.
//! - [`Config::load`] reads the process environment. [`Config::load_with_env`] and
//!   [`Config::from_toml_str_with_env`] ask a function instead (for tests): it is asked for the
//!   variable of every key the schema has and of every key in the file.
//! - With `[server.gate] level_from_env = true`, `PALISADE_READ_ONLY` and `PALISADE_GATE_LEVEL` are
//!   read from the same environment when the config is loaded.
//!
//! # Reload
//!
//! [`Config::reload`] validates a new config completely (a reload that fails changes nothing), then
//! pushes what can change while running through the stacks' [`Handles`]: rate-limit tiers, the default
//! and global rates and tenant assignments; the gate's level; the bulkhead's limits; the breakers'
//! thresholds. Everything else (a layer added or removed, windows, queues, key settings, the adaptive
//! limits, hedging) is listed in
//! the [`ReloadReport`] as needing a restart, and the reload is recorded in the audit log as
//! `config.reloaded`.
//!
//! # Example
//!
//! Every section and key, annotated (this is `src/config/example.toml`):
//!
//! ```toml
#![doc = include_str!("example.toml")]
//! ```
//!
//! ```
//! use palisade::audit::Audit;
//! use palisade::config::Config;
//! use palisade::health::Health;
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let text = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/config/example.toml"));
//! let config = Config::from_toml_str(text, "palisade.toml")?;
//! assert_eq!(config.server.timeout.as_ref().unwrap().timeout, Duration::from_secs(2));
//! assert_eq!(config.server.rate_limit.as_ref().unwrap().tenants.len(), 2);
//!
//! let (health, audit) = (Health::new(), Audit::disabled());
//! let server = config.server_stack_builder().health(&health).audit(&audit).build()?;
//! let idempotency = server.idempotency(config.idempotency_builder().unwrap())?;
//! let client = config.client_stack_builder().health(&health).audit(&audit).build()?;
//! assert!(server.handles().rate_limit().is_some() && client.handles().retry().is_some());
//! let recorders = config.recorders()?; // [heal.signals]
//! let detectors = config.detectors()?; // [heal.detectors.*]
//! assert_eq!((recorders.max_signals(), detectors.len()), (64, 3));
//! # drop(idempotency);
//! # Ok(())
//! # }
//! ```
//!
//! [`Handles`]: crate::stack::Handles

mod build;
mod duration;
mod error;
mod heal;
mod keys;
mod parse;
pub(crate) mod reload;
mod schema;
mod source;

use std::collections::BTreeMap;
use std::path::Path;

pub use build::{
    AdaptiveBuilder, BreakerBuilder, ClientBulkheadBuilder, ClientChaosBuilder,
    ConfiguredClientStack, ConfiguredClientStackBuilder, ConfiguredIdempotencyLayer,
    ConfiguredServerStack, ConfiguredServerStackBuilder, FallbackBuilder, GateBuilder,
    HedgeBuilder, IdempotencyBuilder, KeyedAdaptiveBuilder, QueuePriority, RateLimitBuilder,
    RetryBuilder, ServerBulkhead, ServerBulkheadLayer, ServerChaosBuilder, TenantKey,
    TimeoutBuilder,
};
pub use duration::{parse_duration, DurationError};
pub use error::{ConfigError, ConfigErrorKind};
pub use heal::ConfiguredDetector;
pub use parse::{Secret, TenantId};
pub use reload::{ReloadReport, RELOADED_KIND};
pub use schema::{
    AdaptiveAlgorithm, AdaptiveConfig, AdaptiveWindowConfig, BackoffConfig, BackoffKind,
    BreakerConfig, BudgetConfig, BulkheadConfig, ChaosConfig, ClientConfig, DetectorConfig,
    DetectorKind, ErrorRateTrigger, FallbackConfig, FallbackTrigger, FloorConfig, GateConfig,
    HealConfig, HealSignalsConfig, HealthLevelsConfig, HedgeBudgetConfig, HedgeConfig,
    HedgeDelayChoice, IdempotencyConfig, IdempotencyRoute, InFlightTrigger, KeyRuleChoice,
    LatencyTrigger, LoadAtConfig, MalformedKeyPolicy, MissingKeyPolicy, MissingTenantPolicy,
    OnAbandonPolicy, OpenWaitConfig, PartitionConfig, PenaltyConfig, QueueConfig, RateConfig,
    RateLimitConfig, RecoverConfig, RetryConfig, ServerConfig, SlowCallConfig, TimeoutConfig,
};

use source::Provenance;

/// A loaded, validated config: the typed `[server]` and `[client]` sections, plus where every key came
/// from (for error messages).
///
/// `Config::default()` is the empty config: no layer in either stack.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`: the server stack.
    pub server: ServerConfig,
    /// `[client]`: the client stack.
    pub client: ClientConfig,
    /// `[heal]`: the control plane's recorders and detectors.
    pub heal: HealConfig,
    provenance: Provenance,
    /// `PALISADE_READ_ONLY` / `PALISADE_GATE_LEVEL` as read at load time (for `level_from_env`).
    gate_env: BTreeMap<String, String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            client: ClientConfig::default(),
            heal: HealConfig::default(),
            provenance: Provenance::new("<default>"),
            gate_env: BTreeMap::new(),
        }
    }
}

impl PartialEq for Config {
    /// Two configs are equal when their sections are (wherever they came from).
    fn eq(&self, other: &Self) -> bool {
        self.server == other.server
            && self.client == other.client
            && self.heal == other.heal
            && self.gate_env == other.gate_env
    }
}

/// Where override variables come from.
enum Env<'a> {
    /// No overrides.
    None,
    /// The process environment (enumerated).
    Process,
    /// A lookup function, asked by name.
    Lookup(&'a dyn Fn(&str) -> Option<String>),
}

impl Config {
    /// Parses and validates `text`, without environment overrides. `origin` names it in errors (a
    /// file name).
    ///
    /// # Errors
    ///
    /// Invalid TOML, an unknown key, a value of the wrong type, or a setting a layer refuses.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Self::from_parts(text, origin, Env::None)
    }

    /// Like [`from_toml_str`](Self::from_toml_str), with overrides asked from `env` (a variable
    /// name → its value, `None` when unset): see the [module docs](self#environment-overrides).
    ///
    /// # Errors
    ///
    /// As [`from_toml_str`](Self::from_toml_str); an error in an override names its variable.
    pub fn from_toml_str_with_env(
        text: &str,
        origin: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Self::from_parts(text, origin, Env::Lookup(&env))
    }

    /// Reads the file at `path` and applies overrides from the process environment.
    ///
    /// # Errors
    ///
    /// The file cannot be read, or as [`from_toml_str_with_env`](Self::from_toml_str_with_env).
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let text = read(path, &origin)?;
        Self::from_parts(&text, &origin, Env::Process)
    }

    /// Reads the file at `path` and applies overrides asked from `env`.
    ///
    /// # Errors
    ///
    /// The file cannot be read, or as [`from_toml_str_with_env`](Self::from_toml_str_with_env).
    pub fn load_with_env(
        path: impl AsRef<Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let text = read(path, &origin)?;
        Self::from_parts(&text, &origin, Env::Lookup(&env))
    }

    /// Where the config came from (the file name given when loading).
    pub fn origin(&self) -> &str {
        &self.provenance.origin
    }

    /// The override variables that were applied: key path → variable name.
    pub fn env_overrides(&self) -> &BTreeMap<String, String> {
        &self.provenance.env
    }

    fn from_parts(text: &str, origin: &str, env: Env<'_>) -> Result<Config, ConfigError> {
        let (mut table, mut provenance) = source::parse_text(text, origin)?;
        let gate_vars = [palisade_degrade::READ_ONLY_VAR, palisade_degrade::LEVEL_VAR];
        let mut gate_env = BTreeMap::new();
        let vars: Vec<(String, String)> = match env {
            Env::None => Vec::new(),
            Env::Lookup(f) => {
                for name in gate_vars {
                    if let Some(v) = f(name) {
                        gate_env.insert(name.to_owned(), v);
                    }
                }
                source::candidate_vars(&provenance)
                    .into_iter()
                    .filter_map(|name| f(&name).map(|v| (name, v)))
                    .collect()
            }
            Env::Process => {
                for name in gate_vars {
                    if let Some(v) = std::env::var_os(name) {
                        gate_env.insert(name.to_owned(), v.to_string_lossy().into_owned());
                    }
                }
                let mut vars = Vec::new();
                for (name, value) in std::env::vars_os() {
                    let Some(name) = name.to_str() else { continue };
                    if source::var_path(name).is_none() {
                        continue;
                    }
                    let Some(value) = value.to_str() else {
                        let mut err = ConfigError::new(
                            origin,
                            ConfigErrorKind::Environment,
                            "the value is not valid UTF-8",
                        );
                        err.0.env_var = Some(name.to_owned());
                        return Err(err);
                    };
                    vars.push((name.to_owned(), value.to_owned()));
                }
                vars
            }
        };
        source::apply_env(&mut table, vars, &mut provenance)?;
        let raw = source::deserialize(table, &provenance)?;
        let config = Config {
            server: raw.server,
            client: raw.client,
            heal: raw.heal,
            provenance,
            gate_env,
        };
        config.validate()?;
        tracing::info!(
            target: "palisade::config",
            origin = %config.origin(),
            overrides = config.provenance.env.len(),
            "config loaded"
        );
        Ok(config)
    }
}

fn read(path: &Path, origin: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            origin,
            ConfigErrorKind::Io,
            format!("cannot read the file: {e}"),
        )
    })
}

#[cfg(test)]
mod tests;
