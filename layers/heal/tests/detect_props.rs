//! Properties of every detector: a constant (or a signal alternating two values, or one quantized to two
//! adjacent sketch buckets) never alarms, a step of k·spread + ε alarms exactly when the sustain time
//! has passed, and no input (NaN, ±∞, huge values, zero variance, time going backwards) panics or
//! yields an out-of-range score.

use std::time::Duration;

use palisade_heal::detect::{
    Composite, Detector, Ewma, Iqr, MeanSigma, MedianMad, RateOfChange, Severity, Status, Threshold,
};
use palisade_heal::signals::Sample;
use proptest::prelude::*;
use tokio::time::Instant;

const SEC: Duration = Duration::from_secs(1);

/// One of each detector, windows small enough that the warm-up ends within the test's samples.
fn all_detectors(window: usize, sustain: Duration) -> Vec<Box<dyn Detector>> {
    vec![
        Box::new(
            MeanSigma::builder("s")
                .window(window)
                .sustain_for(sustain)
                .build()
                .unwrap(),
        ),
        Box::new(
            Ewma::builder("s")
                .warm_up(window as u64)
                .sustain_for(sustain)
                .build()
                .unwrap(),
        ),
        Box::new(
            Iqr::builder("s")
                .window(window)
                .sustain_for(sustain)
                .build()
                .unwrap(),
        ),
        Box::new(
            MedianMad::builder("s")
                .window(window)
                .sustain_for(sustain)
                .build()
                .unwrap(),
        ),
        Box::new(
            RateOfChange::builder("s")
                .drop(0.5)
                .rise(0.3)
                .over(sustain.max(10 * SEC) + SEC)
                .sustain_for(sustain)
                .build()
                .unwrap(),
        ),
        Box::new(
            Threshold::builder("s")
                .above(1e12)
                .count(2)
                .sustain_for(sustain)
                .build()
                .unwrap(),
        ),
    ]
}

fn any_value() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => -1e3f64..1e3,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(f64::MAX),
        1 => Just(-f64::MAX),
        1 => Just(0.0),
        1 => Just(f64::MIN_POSITIVE),
        1 => any::<f64>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Every detector, the thresholds bounded exactly at the constant (a breach is strictly beyond):
    /// never anomalous. The thresholds are shown to be live: one step past the bound trips them.
    #[test]
    fn a_constant_signal_never_alarms(
        c in prop_oneof![Just(0.0), -1e9f64..1e9, Just(0.1), Just(1e-300)],
        n in 1usize..300,
        window in 2usize..64,
        step_ms in 1u64..60_000,
    ) {
        let t0 = Instant::now();
        let mut detectors = all_detectors(window, Duration::ZERO);
        detectors.truncate(5); // the threshold above 1e12 says nothing here
        detectors.push(Box::new(Threshold::builder("s").above(c).build().unwrap()));
        detectors.push(Box::new(Threshold::builder("s").below(c).build().unwrap()));
        for mut d in detectors {
            for i in 0..n {
                let at = t0 + Duration::from_millis(step_ms * i as u64);
                let v = d.observe(Sample::new(c, at));
                prop_assert_ne!(v.status, Status::Anomalous, "{} at sample {}: {}", d.name(), i, v);
                prop_assert_eq!(v.score, 0.0);
            }
        }
        let past = c.abs().max(1.0);
        let at = t0 + Duration::from_millis(step_ms * n as u64);
        let mut above = Threshold::builder("s").above(c).build().unwrap();
        prop_assert_eq!(above.observe(Sample::new(c + past, at)).status, Status::Anomalous);
        let mut below = Threshold::builder("s").below(c).build().unwrap();
        prop_assert_eq!(below.observe(Sample::new(c - past, at)).status, Status::Anomalous);
    }

    /// A signal alternating two values (a square wave, or a gauge flipping between two readings) is
    /// its own baseline: no band alarms on it, nor a threshold bounded at its extremes.
    #[test]
    fn an_alternating_two_value_signal_never_alarms(
        a in -1e3f64..1e3,
        b in -1e3f64..1e3,
        n in 1usize..300,
        window in 2usize..64,
    ) {
        let t0 = Instant::now();
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let mut detectors = all_detectors(window, Duration::ZERO);
        detectors.truncate(4); // the bands; a rate of change legitimately sees a jump
        detectors.push(Box::new(Threshold::builder("s").above(hi).build().unwrap()));
        detectors.push(Box::new(Threshold::builder("s").below(lo).build().unwrap()));
        for mut d in detectors {
            // An odd window holds one more of one value than of the other: its median is that value
            // and its MAD 0.
            let values = (0..n).map(|i| if i % 2 == 0 { a } else { b });
            for (i, v) in values.enumerate() {
                let verdict = d.observe(Sample::new(v, t0 + SEC * i as u32));
                prop_assert_ne!(verdict.status, Status::Anomalous, "{} at sample {}: {}", d.name(), i, verdict);
            }
        }
    }

    /// Recorder quantiles are sketch bucket values: a p99 that moves between two adjacent 1 % buckets
    /// `b` and `b·γ` (γ = 1.0202), 60 % / 40 % in any order, is a flat signal and must never alarm,
    /// however the window's median, MAD, quartiles or σ fall.
    #[test]
    fn a_signal_quantized_to_two_adjacent_buckets_never_alarms(
        b in prop_oneof![1e-4f64..1e4, Just(0.1), Just(1.0)],
        values in Just((0..200).map(|i| if i % 5 < 3 { 0usize } else { 1 }).collect::<Vec<_>>()).prop_shuffle(),
        window in prop_oneof![Just(100usize), 2usize..100],
        sustain_s in prop_oneof![Just(0u64), 0u64..60],
    ) {
        const GAMMA: f64 = 1.0202;
        let bucket = [b, b * GAMMA];
        let t0 = Instant::now();
        let sustain = Duration::from_secs(sustain_s);
        let mut detectors = all_detectors(window, sustain);
        detectors.truncate(4);
        // And every band at its defaults.
        detectors.push(Box::new(MeanSigma::builder("s").build().unwrap()));
        detectors.push(Box::new(Ewma::builder("s").build().unwrap()));
        detectors.push(Box::new(Iqr::builder("s").build().unwrap()));
        detectors.push(Box::new(MedianMad::builder("s").build().unwrap()));
        for mut d in detectors {
            for (i, &which) in values.iter().enumerate() {
                let verdict = d.observe(Sample::new(bucket[which], t0 + 10 * SEC * i as u32));
                prop_assert_ne!(verdict.status, Status::Anomalous, "{} at sample {}: {}", d.name(), i, verdict);
            }
        }
    }

    /// A baseline alternating μ − σ, μ + σ (so mean μ and population σ exactly σ, median μ, MAD σ,
    /// IQR 2σ for an even n ≥ 4; the relative spread floor off), then a step held to the band's
    /// edge + ε: normal while the step is younger than the sustain time, anomalous at the first sample
    /// at or past it — while a breach is pending it is judged against the band it first broke, however
    /// the winsorized baseline moves under it. Held on, the step is learned (clipped to the band's edge
    /// each time) until it is inside the band: the alarm clears, the band never freezes.
    #[test]
    fn a_step_past_the_band_alarms_exactly_after_the_sustain_time(
        mu in -1e3f64..1e3,
        sigma in 0.01f64..100.0,
        k in 2.0f64..6.0,
        eps in 0.01f64..1.0,
        up in any::<bool>(),
        sustain_s in 0u64..120,
        n in prop_oneof![Just(100usize), 4usize..64].prop_map(|n| n & !1),
    ) {
        let interval = 10 * SEC;
        let sustain = Duration::from_secs(sustain_s);
        let sign = if up { 1.0 } else { -1.0 };
        let detectors: Vec<(Box<dyn Detector>, f64)> = vec![
            (Box::new(MeanSigma::builder("s").window(n).k(k).warm_up(n as u64).min_relative_spread(0.0).sustain_for(sustain).build().unwrap()), k * sigma),
            (Box::new(Ewma::builder("s").k(k).warm_up(n as u64).min_relative_spread(0.0).sustain_for(sustain).build().unwrap()), k * sigma),
            (Box::new(MedianMad::builder("s").window(n).k(k).warm_up(n as u64).min_relative_spread(0.0).sustain_for(sustain).build().unwrap()), k * 1.4826 * sigma),
            // Fence f = k / 2 IQRs beyond Q3 = μ + σ: the edge is μ + σ + k·σ.
            (Box::new(Iqr::builder("s").window(n).fence(k / 2.0).warm_up(n as u64).min_relative_spread(0.0).sustain_for(sustain).build().unwrap()), sigma + k * sigma),
        ];
        let t0 = Instant::now();
        for (mut d, edge) in detectors {
            for i in 0..n {
                let v = if i % 2 == 0 { mu - sigma } else { mu + sigma };
                d.observe(Sample::new(v, t0 + interval * i as u32));
            }
            let step = mu + sign * (edge + eps * sigma);
            let start = t0 + interval * n as u32;
            let due = (0..).find(|&j| interval * j >= sustain).unwrap();
            for j in 0..=due {
                let verdict = d.observe(Sample::new(step, start + interval * j));
                let expected = if j == due { Status::Anomalous } else { Status::Normal };
                prop_assert_eq!(verdict.status, expected, "{} step {}: {}", d.name(), j, &verdict);
                if j == due {
                    prop_assert_eq!(verdict.since, Some(start));
                    prop_assert!(verdict.score > 0.5 && verdict.score <= 1.0, "{}", verdict);
                }
            }
            // Held on, the step is absorbed: normal again within a few windows (it may flicker while
            // the window fills with it), and from then on — the window is then the step itself.
            let limit = 4 * n as u32 + 200;
            let mut statuses = Vec::new();
            for j in due + 1..due + 1 + limit {
                statuses.push(d.observe(Sample::new(step, start + interval * j)).status);
            }
            let settled = &statuses[statuses.len() - n..];
            prop_assert!(settled.iter().all(|s| *s == Status::Normal), "{}: a held step was never learned: {:?}", d.name(), statuses);
        }
    }

    #[test]
    fn no_input_panics_and_scores_stay_in_range(
        values in proptest::collection::vec(any_value(), 0..200),
        gaps in proptest::collection::vec(0u64..100_000, 200),
        backwards in proptest::collection::vec(any::<bool>(), 200),
        volumes in proptest::collection::vec(prop::option::of(0u64..50), 200),
        window in 2usize..32,
        sustain_s in 0u64..30,
    ) {
        let base = Instant::now() + Duration::from_secs(1_000_000);
        let non_finite = values.iter().filter(|v| !v.is_finite()).count() as u64;
        for mut d in all_detectors(window, Duration::from_secs(sustain_s)) {
            let mut at = base;
            let mut judged_non_finite = 0;
            for (i, &v) in values.iter().enumerate() {
                let gap = Duration::from_millis(gaps[i]);
                at = if backwards[i] { at.checked_sub(gap).unwrap_or(at) } else { at + gap };
                let mut s = Sample::new(v, at);
                // Volume guard is off (min 0): every volume passes, so only non-finite values are ignored.
                if let Some(vol) = volumes[i] {
                    s = s.with_volume(vol);
                }
                let verdict = d.observe(s);
                prop_assert!((0.0..=1.0).contains(&verdict.score), "{}: {}", d.name(), verdict);
                prop_assert!(verdict.score == 0.0 || verdict.status == Status::Anomalous);
                prop_assert_eq!(verdict.since.is_some(), verdict.status == Status::Anomalous);
                if let Some(t) = verdict.threshold {
                    prop_assert!(t.is_finite());
                }
                if verdict.ignored.is_some() {
                    judged_non_finite += 1;
                }
                let _ = verdict.to_string();
            }
            prop_assert_eq!(d.ignored().non_finite, non_finite);
            prop_assert_eq!(judged_non_finite, non_finite);
            d.reset();
            prop_assert_eq!(d.ignored().non_finite, 0);
        }
    }

    #[test]
    fn min_volume_ignores_exactly_the_thin_samples(
        volumes in proptest::collection::vec(prop::option::of(0u64..40), 1..100),
        min in 0u64..40,
    ) {
        let t0 = Instant::now();
        let mut d = MeanSigma::builder("s").window(8).min_volume(min).build().unwrap();
        for (i, vol) in volumes.iter().enumerate() {
            let mut s = Sample::new(1.0, t0 + SEC * i as u32);
            if let Some(v) = vol {
                s = s.with_volume(*v);
            }
            let verdict = d.observe(s);
            let thin = vol.is_some_and(|v| v < min);
            prop_assert_eq!(verdict.ignored.is_some(), thin);
        }
        let thin = volumes.iter().filter(|v| v.is_some_and(|v| v < min)).count() as u64;
        prop_assert_eq!(d.ignored().low_volume, thin);
    }

    #[test]
    fn composite_score_stays_in_range_and_severity_is_monotone(
        pairs in proptest::collection::vec((any::<f64>(), any::<f64>()), 0..20),
        a in 0.0f64..=1.0,
        b in 0.0f64..=1.0,
    ) {
        let c = Composite::from_scores(pairs.iter().copied());
        prop_assert!((0.0..=1.0).contains(&c.score), "{:?}", c);
        prop_assert_eq!(c.severity, Severity::from_score(c.score));
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        prop_assert!(Severity::from_score(lo) <= Severity::from_score(hi));
    }
}
