//! `[heal]`: the control plane's recorders and detectors, built from the config.

use std::time::Duration;

use palisade_core::config::BuildError;
use palisade_heal::detect::{Detector, Ewma, Iqr, MeanSigma, MedianMad, RateOfChange, Threshold};
use palisade_heal::signals::{RecorderConfig, Recorders};

use super::error::{ConfigError, ConfigErrorKind};
use super::schema::{DetectorConfig, DetectorKind, HealSignalsConfig};
use super::Config;

/// A detector built from `[heal.detectors.<name>]`.
#[derive(Debug)]
pub struct ConfiguredDetector {
    /// The entry's name (`<name>` in `[heal.detectors.<name>]`).
    pub name: String,
    /// The signal it watches (the entry's `signal`).
    pub signal: String,
    /// The detector, ready to [`observe`](Detector::observe) samples of `signal`.
    pub detector: Box<dyn Detector>,
}

/// Which keys each kind takes (beyond `kind`, `signal` and the guards).
fn applies(kind: DetectorKind, key: &str) -> bool {
    use DetectorKind::*;
    match key {
        "above"
        | "below"
        | "count"
        | "within"
        | "recover_after_greens"
        | "recover_below"
        | "recover_above" => kind == Threshold,
        "window" => matches!(kind, MeanSigma | Iqr | MedianMad),
        "k" => matches!(kind, MeanSigma | Ewma | MedianMad),
        "alpha" => kind == Ewma,
        "fence" => kind == Iqr,
        "min_spread" | "min_relative_spread" => matches!(kind, MeanSigma | Ewma | Iqr | MedianMad),
        "drop" | "rise" | "over" | "resolution" => kind == RateOfChange,
        _ => true,
    }
}

/// The keys a detector entry set, by name.
fn present(d: &DetectorConfig) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut add = |set: bool, key: &'static str| {
        if set {
            keys.push(key);
        }
    };
    add(d.above.is_some(), "above");
    add(d.below.is_some(), "below");
    add(d.count.is_some(), "count");
    add(d.within.is_some(), "within");
    add(d.recover_after_greens.is_some(), "recover_after_greens");
    add(d.recover_below.is_some(), "recover_below");
    add(d.recover_above.is_some(), "recover_above");
    add(d.window.is_some(), "window");
    add(d.k.is_some(), "k");
    add(d.alpha.is_some(), "alpha");
    add(d.fence.is_some(), "fence");
    add(d.min_spread.is_some(), "min_spread");
    add(d.min_relative_spread.is_some(), "min_relative_spread");
    add(d.drop.is_some(), "drop");
    add(d.rise.is_some(), "rise");
    add(d.over.is_some(), "over");
    add(d.resolution.is_some(), "resolution");
    keys
}

/// Calls each builder setter whose config key (a field of the same name) is set.
macro_rules! set {
    ($b:expr, $d:expr; $($key:ident),+) => {{
        let mut b = $b;
        $(
            if let Some(v) = $d.$key {
                b = b.$key(v);
            }
        )+
        b
    }};
}

/// Applies the guards every builder shares.
macro_rules! guards {
    ($b:expr, $d:expr) => {{
        let mut b = $b;
        if let Some(n) = $d.min_volume {
            b = b.min_volume(n);
        }
        if let Some(n) = $d.warm_up {
            b = b.warm_up(n);
        }
        if let Some(t) = $d.sustain_for {
            b = b.sustain_for(t);
        }
        b
    }};
}

/// Builds one detector; the error names the builder setting.
fn build(d: &DetectorConfig) -> Result<Box<dyn Detector>, BuildError> {
    let signal = d.signal.as_str();
    Ok(match d.kind {
        DetectorKind::Threshold => {
            let mut b = Threshold::builder(signal);
            match (d.above, d.below) {
                (Some(a), None) => b = b.above(a),
                (None, Some(v)) => b = b.below(v),
                (Some(_), Some(_)) => {
                    return Err(BuildError::new(
                        "detector",
                        "above",
                        "set `above` or `below`, not both",
                    ))
                }
                (None, None) => {
                    return Err(BuildError::new(
                        "detector",
                        "above",
                        "a threshold detector needs `above` or `below`",
                    ))
                }
            }
            if let Some(n) = d.count {
                b = b.count(n);
            }
            if let Some(w) = d.within {
                b = b.within(w);
            }
            let recoveries = [
                d.recover_after_greens.is_some(),
                d.recover_below.is_some(),
                d.recover_above.is_some(),
            ];
            if recoveries.iter().filter(|r| **r).count() > 1 {
                return Err(BuildError::new(
                    "detector",
                    "recover_after_greens",
                    "set one of `recover_after_greens`, `recover_below` and `recover_above`",
                ));
            }
            if let Some(m) = d.recover_after_greens {
                b = b.recover_after_greens(m);
            }
            if let Some(r) = d.recover_below {
                b = b.recover_below(r.value, r.held_for);
            }
            if let Some(r) = d.recover_above {
                b = b.recover_above(r.value, r.held_for);
            }
            Box::new(guards!(b, d).build()?)
        }
        DetectorKind::MeanSigma => {
            let b = set!(MeanSigma::builder(signal), d; window, k, min_spread, min_relative_spread);
            Box::new(guards!(b, d).build()?)
        }
        DetectorKind::Ewma => {
            let b = set!(Ewma::builder(signal), d; alpha, k, min_spread, min_relative_spread);
            Box::new(guards!(b, d).build()?)
        }
        DetectorKind::Iqr => {
            let b = set!(Iqr::builder(signal), d; window, fence, min_spread, min_relative_spread);
            Box::new(guards!(b, d).build()?)
        }
        DetectorKind::MedianMad => {
            let b = set!(MedianMad::builder(signal), d; window, k, min_spread, min_relative_spread);
            Box::new(guards!(b, d).build()?)
        }
        DetectorKind::RateOfChange => {
            let b = set!(RateOfChange::builder(signal), d; drop, rise, over, resolution);
            Box::new(guards!(b, d).build()?)
        }
    })
}

/// The config key a detector builder's setting is written as.
fn detector_key<'a>(setting: &'a str, d: &DetectorConfig) -> &'a str {
    match setting {
        "bound" if d.below.is_some() => "below",
        "bound" => "above",
        "recovery" if d.recover_below.is_some() => "recover_below",
        "recovery" if d.recover_above.is_some() => "recover_above",
        "recovery" => "recover_after_greens",
        other => other,
    }
}

impl Config {
    /// The recorders' settings from `[heal.signals]` (the defaults without it).
    ///
    /// # Errors
    ///
    /// A setting the recorder builder refuses, naming its key.
    pub fn recorder_config(&self) -> Result<RecorderConfig, ConfigError> {
        let Some(s) = &self.heal.signals else {
            return Ok(RecorderConfig::default());
        };
        self.recorder_config_of(s)
    }

    fn recorder_config_of(&self, s: &HealSignalsConfig) -> Result<RecorderConfig, ConfigError> {
        let mut b = RecorderConfig::builder();
        if let Some(w) = &s.windows {
            b = b.windows(w.iter().copied());
        }
        if let Some(n) = s.slots {
            b = b.slots(n);
        }
        if let Some(a) = s.relative_accuracy {
            b = b.relative_accuracy(a);
        }
        b.build().map_err(|e| {
            let key = match e.setting() {
                "windows" => "windows",
                "slots" => "slots",
                _ => "relative_accuracy",
            };
            self.heal_invalid(&format!("heal.signals.{key}"), e.problem())
        })
    }

    /// A registry of recorders with `[heal.signals]`' settings and cap: give each route or upstream one
    /// (`recorders.layer("GET /hello")`), and the control plane and `palisade::metrics` read them all.
    ///
    /// # Errors
    ///
    /// As [`recorder_config`](Self::recorder_config), or a `max_signals` out of range.
    pub fn recorders(&self) -> Result<Recorders, ConfigError> {
        let config = self.recorder_config()?;
        match self.heal.signals.as_ref().and_then(|s| s.max_signals) {
            None => Ok(Recorders::new(config)),
            Some(max) => Recorders::with_max_signals(config, max)
                .map_err(|e| self.heal_invalid("heal.signals.max_signals", e.problem())),
        }
    }

    /// The window detectors read recorder signals over: `detect_window`, else the shortest window.
    pub fn detect_window(&self) -> Duration {
        let windows = self
            .recorder_config()
            .map(|c| c.windows().to_vec())
            .unwrap_or_default();
        self.heal
            .signals
            .as_ref()
            .and_then(|s| s.detect_window)
            .or_else(|| windows.first().copied())
            .unwrap_or(Duration::from_secs(10))
    }

    /// Every `[heal.detectors.<name>]` entry, built, in name order.
    ///
    /// # Errors
    ///
    /// A key that does not apply to the entry's `kind`, or a setting its builder refuses, naming the key.
    pub fn detectors(&self) -> Result<Vec<ConfiguredDetector>, ConfigError> {
        let mut out = Vec::with_capacity(self.heal.detectors.len());
        for (name, d) in &self.heal.detectors {
            let prefix = format!("heal.detectors.{name}");
            if let Some(key) = present(d).into_iter().find(|k| !applies(d.kind, k)) {
                return Err(self.heal_invalid(
                    &format!("{prefix}.{key}"),
                    format!("`{key}` does not apply to a `{}` detector", d.kind.as_str()),
                ));
            }
            if d.signal.is_empty() {
                return Err(self.heal_invalid(&format!("{prefix}.signal"), "must not be empty"));
            }
            let detector = build(d).map_err(|e| {
                self.heal_invalid(
                    &format!("{prefix}.{}", detector_key(e.setting(), d)),
                    e.problem(),
                )
            })?;
            out.push(ConfiguredDetector {
                name: name.clone(),
                signal: d.signal.clone(),
                detector,
            });
        }
        Ok(out)
    }

    /// Checks `[heal]` as [`validate`](Self::validate) does the stacks.
    pub(crate) fn check_heal(&self) -> Result<(), ConfigError> {
        let config = self.recorders()?.config().clone();
        if let Some(w) = self.heal.signals.as_ref().and_then(|s| s.detect_window) {
            if !config.windows().contains(&w) {
                return Err(self.heal_invalid(
                    "heal.signals.detect_window",
                    "must be one of `heal.signals.windows`",
                ));
            }
        }
        self.detectors().map(drop)
    }

    fn heal_invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.provenance
            .error(ConfigErrorKind::Invalid, key, message)
    }
}
