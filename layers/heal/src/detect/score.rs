//! The composite score: several detectors' verdicts, weighted, mapped to a severity and a SEV class.

use std::fmt;

use super::Verdict;

/// How bad, from a composite score in `0..=1`.
///
/// | score | severity | class for the supervisor |
/// |---|---|---|
/// | > 0.9 | [`Critical`](Severity::Critical) | [`Sev::Sev0`] |
/// | > 0.75 | [`High`](Severity::High) | [`Sev::Sev1`] |
/// | > 0.5 | [`Medium`](Severity::Medium) | [`Sev::Sev2`] |
/// | > 0.3 | [`Low`](Severity::Low) | [`Sev::Sev3`] |
/// | > 0.1 | [`Info`](Severity::Info) | none |
/// | otherwise | [`None`](Severity::None) | none |
///
/// Ordered from `None` (least) to `Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Score ≤ 0.1 (or not a number).
    None,
    /// Score in (0.1, 0.3]: worth a log line.
    Info,
    /// Score in (0.3, 0.5].
    Low,
    /// Score in (0.5, 0.75].
    Medium,
    /// Score in (0.75, 0.9].
    High,
    /// Score > 0.9.
    Critical,
}

impl Severity {
    /// The severity of `score` (the table above).
    ///
    /// ```
    /// use palisade_heal::detect::{Sev, Severity};
    ///
    /// assert_eq!(Severity::from_score(0.95), Severity::Critical);
    /// assert_eq!(Severity::from_score(0.9), Severity::High); // strictly greater than 0.9 is critical
    /// assert_eq!(Severity::from_score(0.6).sev(), Some(Sev::Sev2));
    /// assert_eq!(Severity::from_score(0.2).sev(), None);
    /// assert_eq!(Severity::from_score(f64::NAN), Severity::None);
    /// ```
    pub fn from_score(score: f64) -> Severity {
        if score > 0.9 {
            Severity::Critical
        } else if score > 0.75 {
            Severity::High
        } else if score > 0.5 {
            Severity::Medium
        } else if score > 0.3 {
            Severity::Low
        } else if score > 0.1 {
            Severity::Info
        } else {
            Severity::None
        }
    }

    /// The supervisor's incident class: critical → SEV0, high → SEV1, medium → SEV2, low → SEV3; info
    /// and none are no incident.
    pub fn sev(self) -> Option<Sev> {
        match self {
            Severity::Critical => Some(Sev::Sev0),
            Severity::High => Some(Sev::Sev1),
            Severity::Medium => Some(Sev::Sev2),
            Severity::Low => Some(Sev::Sev3),
            Severity::Info | Severity::None => None,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::None => "none",
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        })
    }
}

/// An incident class, SEV0 the most severe. See [`Severity::sev`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Sev {
    /// Critical: the service is down or losing data.
    Sev0,
    /// High.
    Sev1,
    /// Medium.
    Sev2,
    /// Low.
    Sev3,
}

impl fmt::Display for Sev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Sev::Sev0 => "SEV0",
            Sev::Sev1 => "SEV1",
            Sev::Sev2 => "SEV2",
            Sev::Sev3 => "SEV3",
        })
    }
}

/// A weighted combination of detector scores: `Σ wᵢ·sᵢ / Σ wᵢ`, in `0..=1`, and its severity.
///
/// A verdict's score is 0 unless it is anomalous, so only detectors that alarmed (after their guards)
/// add to it, and the score is how much of the weighted evidence is alarming, and how strongly. Scores
/// are clamped to `0..=1`; a NaN score, and a weight that is negative or not finite, count as nothing.
/// No weight at all (or weights summing past `f64::MAX`) gives 0.
///
/// ```
/// use palisade_heal::detect::{Composite, Sev, Severity};
///
/// // Latency (weight 2) strongly anomalous, errors (1) mildly, saturation (1) normal.
/// let c = Composite::from_scores([(2.0, 1.0), (1.0, 0.6), (1.0, 0.0)]);
/// assert!((c.score - 0.65).abs() < 1e-12); // (2·1 + 0.6) / 4
/// assert_eq!(c.severity, Severity::Medium);
/// assert_eq!(c.severity.sev(), Some(Sev::Sev2));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Composite {
    /// The weighted mean score, in `0..=1`.
    pub score: f64,
    /// Its severity.
    pub severity: Severity,
}

impl Composite {
    /// Combines `(weight, score)` pairs.
    pub fn from_scores(scores: impl IntoIterator<Item = (f64, f64)>) -> Composite {
        let (mut sum, mut total) = (0.0, 0.0);
        for (w, s) in scores {
            if !(w.is_finite() && w > 0.0) {
                continue;
            }
            let s = if s.is_nan() { 0.0 } else { s.clamp(0.0, 1.0) };
            sum += w * s;
            total += w;
        }
        let score = if total > 0.0 && total.is_finite() {
            (sum / total).clamp(0.0, 1.0)
        } else {
            0.0
        };
        Composite {
            score,
            severity: Severity::from_score(score),
        }
    }

    /// Combines `(weight, verdict)` pairs by the verdicts' scores.
    pub fn from_verdicts<'a>(verdicts: impl IntoIterator<Item = (f64, &'a Verdict)>) -> Composite {
        Composite::from_scores(verdicts.into_iter().map(|(w, v)| (w, v.score)))
    }
}

impl fmt::Display for Composite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "score={:.2} severity={}", self.score, self.severity)?;
        if let Some(sev) = self.severity.sev() {
            write!(f, " {sev}")?;
        }
        Ok(())
    }
}
