//! Signals: what the control plane can see.
//!
//! A signal is a named stream of [`Sample`]s. The [`recorder`] measures requests (count, errors, latency
//! quantiles over sliding windows) on the request path; [`gauge`]s are read at each control-plane tick from
//! palisade's handles or from user code. Detectors ([`crate::detect`]) consume samples and know nothing of
//! where they came from.

use std::time::Duration;

use tokio::time::Instant;

pub mod gauge;
pub mod recorder;
pub mod sketch;

pub use gauge::{Gauge, GaugeError, Gauges};
pub use recorder::{RecordLayer, Recorder, RecorderConfig, Recorders, WindowSnapshot};

/// One observation of a signal: a value at a time, and how many events it summarises.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The value (a latency in seconds, an error rate in `0..=1`, a queue depth, ...).
    pub value: f64,
    /// When it was observed.
    pub at: Instant,
    /// How many events the value summarises (e.g. requests in the window behind a p99), when known:
    /// detectors' minimum-volume guards refuse a verdict on too few. `None` for gauges.
    pub volume: Option<u64>,
}

impl Sample {
    /// A sample of `value` at `at`, with no volume (a gauge reading).
    pub fn new(value: f64, at: Instant) -> Self {
        Sample {
            value,
            at,
            volume: None,
        }
    }

    /// The same sample, summarising `volume` events.
    pub fn with_volume(mut self, volume: u64) -> Self {
        self.volume = Some(volume);
        self
    }
}

/// The statistics [`recorder_samples`] derives from each recorder's window, in the order it yields them:
/// `<signal>.<stat>`.
pub const RECORDER_STATS: [&str; 5] = ["p50", "p95", "p99", "error_rate", "requests_per_second"];

/// Every recorder's window of length `window` as detector samples, read at `now`: for a recorder named
/// `api`, `api.p50`, `api.p95`, `api.p99` (latency in seconds), `api.error_rate` (`0..=1`) and
/// `api.requests_per_second`, each with the window's request count as its [volume](Sample::volume) so
/// that a detector's minimum-volume guard sees how much traffic is behind it.
///
/// `requests_per_second` divides the count by the time the window's slots cover
/// ([`WindowSnapshot::covered`]: between `(slots − 1) / slots` of the window and all of it), not by
/// the window's length, so a steady rate reads steady through every phase of a slot.
///
/// A window without requests yields no latency samples (there is no latency to judge) but does yield
/// `error_rate` 0 and `requests_per_second` 0, with volume 0; a recorder without a window of that length
/// yields nothing.
///
/// ```
/// use std::time::Duration;
/// use palisade_core::classify::Outcome;
/// use palisade_heal::signals::{recorder_samples, RecorderConfig, Recorders};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let recorders = Recorders::new(RecorderConfig::default());
/// let api = recorders.recorder("api").unwrap();
/// for _ in 0..50 {
///     api.record(Duration::from_millis(20), Outcome::Success);
/// }
/// let now = tokio::time::Instant::now();
/// let samples = recorder_samples(&recorders, Duration::from_secs(10), now);
/// let p99 = samples.iter().find(|(name, _)| name == "api.p99").unwrap().1;
/// assert!((p99.value - 0.020).abs() < 0.001);
/// assert_eq!(p99.volume, Some(50));
/// # }
/// ```
pub fn recorder_samples(
    recorders: &Recorders,
    window: Duration,
    now: Instant,
) -> Vec<(String, Sample)> {
    let mut out = Vec::new();
    for recorder in recorders.list() {
        let Some(snap) = recorder.snapshot_at(window, now) else {
            continue;
        };
        let name = recorder.name();
        let volume = snap.count;
        let quantiles = [("p50", snap.p50), ("p95", snap.p95), ("p99", snap.p99)];
        for (stat, q) in quantiles {
            if let Some(q) = q {
                out.push((
                    format!("{name}.{stat}"),
                    Sample::new(q.as_secs_f64(), now).with_volume(volume),
                ));
            }
        }
        out.push((
            format!("{name}.error_rate"),
            Sample::new(snap.error_rate, now).with_volume(volume),
        ));
        let secs = snap.covered.as_secs_f64();
        let rate = if secs > 0.0 {
            volume as f64 / secs
        } else {
            0.0
        };
        out.push((
            format!("{name}.requests_per_second"),
            Sample::new(rate, now).with_volume(volume),
        ));
    }
    out
}
