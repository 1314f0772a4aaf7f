//! The latency and outcome recorder: sketch accuracy against an exact sort, lossless concurrent
//! recording, sliding windows on paused time, bad input, the registry's cap, and the layer.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use palisade_core::classify::{ErrorsOnly, Failure, HttpStatus, Outcome, SlowCalls};
use palisade_core::deadline::Scope;
use palisade_core::error::{BoxError, Overloaded};
use palisade_heal::signals::recorder::{
    Recorder, RecorderConfig, Recorders, RegistryError, WindowSnapshot,
};
use palisade_heal::signals::sketch::{AtomicSketch, Histogram, Mapping};
use proptest::prelude::*;
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceExt};

const TEN_S: Duration = Duration::from_secs(10);
const ONE_MIN: Duration = Duration::from_secs(60);
const FIVE_MIN: Duration = Duration::from_secs(300);

/// The exact quantile the sketch promises to approximate: rank ⌊q·(n − 1)⌋ of the sorted values.
fn exact(sorted: &[f64], q: f64) -> f64 {
    sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
}

const QS: [f64; 11] = [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0];

fn assert_within(h: &Histogram, values: &[f64], alpha: f64) -> Result<(), TestCaseError> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    prop_assert_eq!(h.count(), values.len() as u64);
    for q in QS {
        let want = exact(&sorted, q);
        let got = h.quantile_secs(q).unwrap();
        // The guarantee, plus float rounding at bucket bounds.
        prop_assert!(
            (got - want).abs() <= alpha * want * (1.0 + 1e-9),
            "q={} exact={} sketch={} rel={}",
            q,
            want,
            got,
            (got - want).abs() / want
        );
    }
    Ok(())
}

/// Latencies in seconds within the default range (1 µs .. 1 h): uniform in log space, uniform, and
/// heavy-tailed (Pareto with shape 1.1, and a lognormal-like product), so every decade is exercised.
fn latencies() -> impl Strategy<Value = Vec<f64>> {
    let log_uniform = (-5.99f64..3.5).prop_map(|e| 10f64.powf(e));
    let uniform = 1.001e-6f64..2.0;
    let pareto = (1e-9f64..1.0).prop_map(|u| (0.001 / u.powf(1.0 / 1.1)).min(3600.0));
    let lognormal = prop::collection::vec(0.5f64..2.0, 8)
        .prop_map(|fs| (0.002 * fs.iter().product::<f64>()).clamp(1.001e-6, 3600.0));
    prop::collection::vec(
        prop_oneof![log_uniform, uniform, pareto, lognormal],
        1..2000,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn quantiles_are_within_the_relative_accuracy(values in latencies()) {
        // As seconds (a logarithm), and as whole nanoseconds (the table lookup the recorder uses).
        let (secs, nanos) = (AtomicSketch::new(Mapping::default()), AtomicSketch::new(Mapping::default()));
        let mut exact_nanos = Vec::with_capacity(values.len());
        for &v in &values {
            secs.record_secs(v);
            let d = Duration::from_secs_f64(v);
            nanos.record(d);
            exact_nanos.push(d.as_secs_f64());
        }
        let h = secs.snapshot();
        prop_assert_eq!((h.below(), h.above(), h.invalid()), (0, 0, 0));
        assert_within(&h, &values, 0.01)?;
        assert_within(&nanos.snapshot(), &exact_nanos, 0.01)?;
    }

    #[test]
    fn a_coarser_sketch_keeps_its_own_guarantee(values in latencies(), alpha in 0.005f64..0.1) {
        let mapping = Mapping::new(alpha, Duration::from_micros(1), Duration::from_secs(3600)).unwrap();
        let mut h = Histogram::new(mapping);
        for &v in &values {
            h.record_secs(v);
        }
        assert_within(&h, &values, alpha)?;
    }

    #[test]
    fn merged_sketches_equal_one_sketch(values in latencies(), split in 0usize..2000) {
        let split = split.min(values.len());
        let (a, b, all) = (
            AtomicSketch::new(Mapping::default()),
            AtomicSketch::new(Mapping::default()),
            AtomicSketch::new(Mapping::default()),
        );
        for (i, &v) in values.iter().enumerate() {
            if i < split { a.record_secs(v) } else { b.record_secs(v) }
            all.record_secs(v);
        }
        let mut merged = a.snapshot();
        prop_assert!(merged.merge(&b.snapshot()));
        prop_assert_eq!(&merged, &all.snapshot());
        assert_within(&merged, &values, 0.01)?;
    }

    /// The same guarantee through a recorder: latencies recorded as `Duration`s across several slots,
    /// read back from the 5-minute window that merges them.
    #[test]
    fn window_quantiles_are_within_the_relative_accuracy(values in latencies()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        let _g = rt.enter();
        let r = Recorder::new("prop", &RecorderConfig::default());
        let t0 = Instant::now();
        let mut secs = Vec::with_capacity(values.len());
        for (i, &v) in values.iter().enumerate() {
            let d = Duration::from_secs_f64(v);
            secs.push(d.as_secs_f64());
            // Spread over 0..100 s: many 1 s slots rotate into 6 s and 30 s slots.
            r.record_at(t0 + Duration::from_millis(i as u64 * 50 % 100_000), d, Outcome::Success);
        }
        let w = r.snapshot_at(FIVE_MIN, t0 + Duration::from_secs(100)).unwrap();
        assert_within(w.histogram(), &secs, 0.01)?;
        prop_assert_eq!(w.count, values.len() as u64);
    }
}

#[test]
fn bad_latencies_do_not_panic() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let _g = rt.enter();
    let r = Recorder::new("bad", &RecorderConfig::default());
    for d in [
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::MAX,
        Duration::from_secs(u64::MAX / 2),
    ] {
        r.record(d, Outcome::Success);
    }
    let w = r.snapshot(TEN_S).unwrap();
    assert_eq!(w.count, 4);
    assert_eq!((w.histogram().below(), w.histogram().above()), (2, 2));
    // Clamped: the extremes read as the edges of the range.
    assert!(w.quantile(0.0).unwrap() < Duration::from_micros(1));
    assert!(w.quantile(1.0).unwrap() >= Duration::from_secs(3500));
    assert!(w.quantile(f64::NAN).is_none());
    assert!(w.quantile(-3.0).is_some() && w.quantile(7.0).is_some());
    // A recorded time before the recorder existed, or far in the future, does not panic either.
    let past = Instant::now() - Duration::from_secs(1000);
    r.record_at(past, Duration::from_millis(1), Outcome::Success);
    r.record_at(
        Instant::now() + Duration::from_secs(10 * 365 * 86400),
        Duration::from_millis(1),
        Outcome::Success,
    );
    assert_eq!(r.totals().requests, 6);

    let sketch = AtomicSketch::new(Mapping::default());
    for v in [
        f64::NAN,
        -1.0,
        -0.0,
        0.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MAX,
        f64::MIN_POSITIVE,
    ] {
        sketch.record_secs(v);
    }
    let h = sketch.snapshot();
    assert_eq!((h.count(), h.invalid()), (7, 1));
    assert_eq!((h.below(), h.above()), (5, 2));
    assert!(h.quantile_secs(0.5).is_some());
    assert!(h.sum_secs().is_finite());
}

/// The lifetime latency sum saturates instead of wrapping: huge latencies (`Duration::MAX` counts
/// as 584 years) make it climb to `LATENCY_SUM_MAX` and stay there.
#[test]
fn the_latency_sum_saturates() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let _g = rt.enter();
    let r = Recorder::new("huge", &RecorderConfig::default());
    let mut last = Duration::ZERO;
    for _ in 0..1_200 {
        r.record(Duration::MAX, Outcome::Success);
        let sum = r.totals().latency_sum;
        assert!(sum >= last, "{sum:?} after {last:?}");
        last = sum;
    }
    assert_eq!(
        last,
        palisade_heal::signals::recorder::Totals::LATENCY_SUM_MAX
    );
    r.record(Duration::from_millis(1), Outcome::Success);
    assert_eq!(r.totals().latency_sum, last);
    assert_eq!(r.totals().requests, 1_201);
}

#[test]
fn empty_windows_have_no_quantiles() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let _g = rt.enter();
    let r = Recorder::new("empty", &RecorderConfig::default());
    let w = r.snapshot(ONE_MIN).unwrap();
    assert_eq!((w.count, w.errors, w.ignored, w.error_rate), (0, 0, 0, 0.0));
    assert_eq!(
        (w.p50, w.p95, w.p99, w.quantile(0.5)),
        (None, None, None, None)
    );
    assert!(r.snapshot(Duration::from_secs(11)).is_none());
    assert_eq!(r.snapshots().len(), 3);
}

/// Many threads record into one slot at once, round after round; each round is 10 s after the
/// last, so its 1 s slot is the same one, still holding the last round's counts: one of the threads
/// claims it and moves those counts into the 1-minute ring while the others record. Not one count
/// is lost or misplaced: each round's 10 s window holds exactly that round, the 5-minute window all.
#[test]
fn concurrent_recording_in_one_slot_loses_no_count() {
    let r = Recorder::new("hot", &RecorderConfig::default());
    let t0 = Instant::now();
    const THREADS: u64 = 8;
    const PER: u64 = 5_000;
    const ROUNDS: u64 = 25; // 250 s: all in the 5-minute window
    let barrier = std::sync::Barrier::new(THREADS as usize);
    let short_rounds = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (r, barrier, short_rounds) = (r.clone(), &barrier, &short_rounds);
            s.spawn(move || {
                for round in 0..ROUNDS {
                    let at = t0 + Duration::from_millis(500) + TEN_S * round as u32;
                    barrier.wait();
                    for i in 0..PER {
                        let outcome = if i % 10 == 0 {
                            Outcome::Failure(Failure::Error)
                        } else {
                            Outcome::Success
                        };
                        r.record_at(at, Duration::from_micros(1 + (i * 7 + t) % 5000), outcome);
                    }
                    if barrier.wait().is_leader() {
                        let w = r.snapshot_at(TEN_S, at).unwrap();
                        if (w.count, w.errors) != (THREADS * PER, THREADS * PER / 10) {
                            eprintln!("round {round}: {w:?}");
                            short_rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    assert_eq!(short_rounds.into_inner(), 0, "rounds that lost counts");
    let end = t0 + TEN_S * ROUNDS as u32;
    let w = r.snapshot_at(FIVE_MIN, end).unwrap();
    assert_eq!(w.count, THREADS * PER * ROUNDS);
    assert_eq!(w.errors, THREADS * PER * ROUNDS / 10);
    // At 250 s the minute covers 192..252 s (6 s slots): the rounds of 200.5 s to 240.5 s.
    let minute = r.snapshot_at(ONE_MIN, end).unwrap();
    assert_eq!(minute.count, THREADS * PER * 5, "{minute:?}");
}

/// Many threads record while time moves through 100 one-second slots (each thread walks the same
/// times, so slots are claimed and moved into coarser rings while others write into them): every
/// count is still in the 5-minute window, which covers all of it. The threads meet at a barrier
/// every simulated second, so their clocks stay within a slot or two of each other, as real clocks
/// do (a record far behind its slot's epoch is counted in the newer slot: see "Boundaries").
#[test]
fn concurrent_recording_across_rotations_loses_no_count() {
    let r = Recorder::new("rotating", &RecorderConfig::default());
    let t0 = Instant::now();
    const THREADS: u64 = 8;
    const PER: u64 = 40_000;
    let barrier = std::sync::Barrier::new(THREADS as usize);
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            let r = r.clone();
            let barrier = &barrier;
            s.spawn(move || {
                for i in 0..PER {
                    if i % 400 == 0 {
                        barrier.wait();
                    }
                    // 2.5 ms per step: 100 s in all.
                    let at = t0 + Duration::from_micros(i * 2500);
                    let outcome = if i % 4 == 0 {
                        Outcome::Failure(Failure::Error)
                    } else {
                        Outcome::Success
                    };
                    r.record_at(at, Duration::from_millis(1 + i % 100), outcome);
                }
            });
        }
    });
    let end = t0 + Duration::from_secs(100);
    let w = r.snapshot_at(FIVE_MIN, end).unwrap();
    assert_eq!(w.count, THREADS * PER);
    assert_eq!(w.errors, THREADS * PER / 4);
    // The shorter windows hold the recent part only.
    let short = r.snapshot_at(TEN_S, end).unwrap();
    let ideal = THREADS * PER / 10; // 10 of the 100 seconds
    assert!(
        short.count >= ideal * 8 / 10 && short.count <= ideal * 13 / 10,
        "{short:?}"
    );
}

/// A one-window recorder has no coarser ring: a reused slot's old counts are dropped. Requests that
/// race the one dropping them (all threads start each round together at a new time whose slot still
/// holds the previous round's counts) must not be dropped with them.
#[test]
fn concurrent_recording_while_old_counts_are_dropped_loses_no_count() {
    let config = RecorderConfig::builder()
        .windows([TEN_S])
        .slots(10)
        .build()
        .unwrap();
    let r = Recorder::new("one window", &config);
    let t0 = Instant::now();
    const THREADS: usize = 4;
    const PER: u64 = 200;
    const ROUNDS: u64 = 300;
    let barrier = std::sync::Barrier::new(THREADS);
    let short_rounds = std::sync::atomic::AtomicU64::new(0);
    let counted = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            let (r, barrier, short_rounds, counted) =
                (r.clone(), &barrier, &short_rounds, &counted);
            s.spawn(move || {
                for round in 1..=ROUNDS {
                    // Every round reuses the same 1 s slot, 10 s later: the old counts are out.
                    let at = t0 + TEN_S * round as u32;
                    barrier.wait();
                    for i in 0..PER {
                        r.record_at(at, Duration::from_micros(10 + i), Outcome::Success);
                    }
                    barrier.wait();
                    if barrier.wait().is_leader() {
                        let w = r.snapshot_at(TEN_S, at).unwrap();
                        counted.fetch_add(w.count, std::sync::atomic::Ordering::Relaxed);
                        if w.count != THREADS as u64 * PER {
                            eprintln!("round {round}: {} of {}", w.count, THREADS as u64 * PER);
                            short_rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    assert_eq!(short_rounds.into_inner(), 0, "rounds that lost counts");
    // Every round was read in its window (the lifetime totals would count a lost record too).
    assert_eq!(counted.into_inner(), THREADS as u64 * PER * ROUNDS);
    // The last round is still there; the one before it was dropped when its slot was reused.
    let last = t0 + TEN_S * ROUNDS as u32;
    assert_eq!(
        r.snapshot_at(TEN_S, last).unwrap().count,
        THREADS as u64 * PER
    );
}

fn paused_recorder() -> (Recorder, Instant) {
    let r = Recorder::new("slide", &RecorderConfig::default());
    (r, Instant::now())
}

#[tokio::test(start_paused = true)]
async fn windows_slide_on_paused_time() {
    let (r, t0) = paused_recorder();
    r.record_success(Duration::from_millis(5));
    r.record_failure(Duration::from_millis(7));
    let counts = |r: &Recorder| -> [u64; 3] {
        [TEN_S, ONE_MIN, FIVE_MIN].map(|w| r.snapshot(w).unwrap().count)
    };
    assert_eq!(counts(&r), [2, 2, 2]);

    tokio::time::advance(Duration::from_millis(9_500)).await;
    assert_eq!(counts(&r), [2, 2, 2], "still in the 10 s window");
    tokio::time::advance(Duration::from_millis(1_000)).await; // t0 + 10.5 s
    assert_eq!(counts(&r), [0, 2, 2], "aged out of the 10 s window");
    assert_eq!(r.snapshot(ONE_MIN).unwrap().errors, 1);

    // This record reuses the first 1 s slot, which moves its old counts into the 6 s ring.
    r.record_success(Duration::from_millis(1));
    assert_eq!(counts(&r), [1, 3, 3]);
    assert_eq!(r.snapshot(ONE_MIN).unwrap().errors, 1);

    // The minute has 6 s slots: at 61 s it covers 6..66 s.
    tokio::time::sleep_until(t0 + Duration::from_secs(61)).await;
    assert_eq!(counts(&r), [0, 1, 3], "the first two left the minute");
    tokio::time::sleep_until(t0 + Duration::from_secs(66)).await;
    assert_eq!(
        counts(&r),
        [0, 0, 3],
        "and the third (its 6 s slot starts at 6 s)"
    );
    // Five minutes of 30 s slots: all three are in the first.
    tokio::time::sleep_until(t0 + Duration::from_secs(299)).await;
    assert_eq!(counts(&r), [0, 0, 3]);
    tokio::time::sleep_until(t0 + Duration::from_secs(300)).await;
    assert_eq!(counts(&r), [0, 0, 0]);
    // Lifetime totals never age.
    let totals = r.totals();
    assert_eq!((totals.requests, totals.errors), (3, 1));
    assert_eq!(totals.latency_sum, Duration::from_millis(13));
}

#[tokio::test(start_paused = true)]
async fn old_counts_are_dropped_when_their_slots_are_reused() {
    let (r, _) = paused_recorder();
    r.record_success(Duration::from_millis(5));
    // Every ring's slot of t0 is reused only after its window: traffic through 400 s.
    for _ in 0..400 {
        tokio::time::advance(Duration::from_secs(1)).await;
        r.record_success(Duration::from_millis(9));
    }
    let w = r.snapshot(FIVE_MIN).unwrap();
    // The 5-minute window covers 270..300 s of the last traffic: one record per second.
    assert!((270..=300).contains(&w.count), "{w:?}");
    assert_eq!(w.quantile(0.0), w.quantile(1.0), "the 5 ms record is gone");
    let ten = r.snapshot(TEN_S).unwrap();
    assert!((9..=10).contains(&ten.count), "{ten:?}");
}

#[tokio::test(start_paused = true)]
async fn snapshots_report_error_rate_and_quantiles() {
    let (r, _) = paused_recorder();
    for ms in 1..=1000u64 {
        let outcome = if ms % 20 == 0 {
            Outcome::Failure(Failure::Error)
        } else {
            Outcome::Success
        };
        r.record(Duration::from_millis(ms), outcome);
    }
    r.record(Duration::from_millis(1), Outcome::Ignored);
    let w: WindowSnapshot = r.snapshot(TEN_S).unwrap();
    assert_eq!((w.count, w.errors, w.ignored), (1000, 50, 1));
    assert!((w.error_rate - 0.05).abs() < 1e-12);
    let close = |got: Option<Duration>, want_ms: f64| {
        let got = got.unwrap().as_secs_f64() * 1000.0;
        assert!(
            (got - want_ms).abs() <= 0.01 * want_ms,
            "{got} vs {want_ms}"
        );
    };
    // Ranks ⌊q × 999⌋ of 1..=1000 ms.
    close(w.p50, 500.0);
    close(w.p95, 950.0);
    close(w.p99, 990.0);
    close(w.quantile(0.999), 999.0);
    assert_eq!(r.totals().ignored, 1);
}

#[test]
fn config_is_validated() {
    let b = RecorderConfig::builder;
    assert!(b().build().is_ok());
    let err = b()
        .windows([Duration::from_secs(10), Duration::from_secs(25)])
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "windows");
    assert!(err.to_string().contains("whole multiple"), "{err}");
    assert!(b().windows([]).build().is_err());
    assert!(b()
        .windows([Duration::from_nanos(10_000_001)])
        .build()
        .is_err());
    assert!(b().windows([Duration::from_millis(5)]).build().is_err()); // 0.5 ms slots
    assert!(b()
        .windows((1..=9).map(|i| Duration::from_secs(10 << i)))
        .build()
        .is_err());
    assert_eq!(b().slots(1).build().unwrap_err().setting(), "slots");
    assert!(b().slots(121).build().is_err());
    assert_eq!(
        b().relative_accuracy(0.0).build().unwrap_err().setting(),
        "relative_accuracy"
    );
    assert!(b()
        .range(Duration::from_secs(1), Duration::from_millis(1))
        .build()
        .is_err());
    // Too many buckets for one sketch.
    assert!(b().relative_accuracy(0.0001).build().is_err());
    // Over the memory cap: 8 windows × 120 slots × 11,000-bucket (44 KB) sketches.
    let err = b()
        .windows((0..8).map(|i| Duration::from_secs(12 << i)))
        .slots(120)
        .relative_accuracy(0.001)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "slots");
    assert!(err.to_string().contains("over the limit"), "{err}");
    // Unsorted and duplicated windows are sorted and merged.
    let c = b()
        .windows([ONE_MIN, TEN_S, ONE_MIN])
        .slots(5)
        .build()
        .unwrap();
    assert_eq!(c.windows(), &[TEN_S, ONE_MIN]);

    let d = RecorderConfig::default();
    assert_eq!(d.windows(), &[TEN_S, ONE_MIN, FIVE_MIN]);
    assert_eq!(d.slots(), 10);
    assert_eq!(d.mapping().buckets(), 1102);
    // The documented memory: about 141 KB per signal.
    let bytes = d.bytes_per_signal();
    assert!((130_000..145_000).contains(&bytes), "{bytes}");
    assert_eq!(d.bytes_per_signal() / 3 / 1000, d.bytes_per_window() / 1000);
}

#[tokio::test(start_paused = true)]
async fn the_registry_is_bounded() {
    let reg = Recorders::with_max_signals(RecorderConfig::default(), 3).unwrap();
    assert!(reg.is_empty());
    let a = reg.recorder("a").unwrap();
    reg.recorder("b").unwrap();
    reg.recorder("c").unwrap();
    assert_eq!(
        reg.recorder("d").unwrap_err(),
        RegistryError::Full { max: 3 }
    );
    assert!(reg.layer("e").is_err());
    // An existing name is still found, and is the same signal.
    a.record_success(Duration::from_millis(1));
    assert_eq!(reg.recorder("a").unwrap().totals().requests, 1);
    assert_eq!(
        reg.list().iter().map(|r| r.name()).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    assert_eq!((reg.len(), reg.max_signals()), (3, 3));
    assert!(reg.get("d").is_none());

    for bad in ["", "new\nline", &"x".repeat(129)] {
        assert_eq!(
            Recorders::new(RecorderConfig::default())
                .recorder(bad)
                .unwrap_err(),
            RegistryError::InvalidName
        );
    }
    assert!(Recorders::new(RecorderConfig::default())
        .recorder(&"x".repeat(128))
        .is_ok());
    assert!(Recorders::with_max_signals(RecorderConfig::default(), 0).is_err());
    assert!(Recorders::with_max_signals(RecorderConfig::default(), 4097).is_err());
    assert_eq!(
        Recorders::new(RecorderConfig::default()).max_signals(),
        Recorders::DEFAULT_MAX_SIGNALS
    );
}

#[test]
fn concurrent_registration_makes_one_signal_per_name() {
    let reg = Recorders::with_max_signals(RecorderConfig::default(), 8).unwrap();
    std::thread::scope(|s| {
        for _ in 0..8 {
            let reg = reg.clone();
            s.spawn(move || {
                for i in 0..20 {
                    let r = reg.recorder(&format!("s{}", i % 10));
                    if i % 10 < 8 {
                        r.unwrap().record_success(Duration::from_millis(1));
                    } else {
                        assert_eq!(r.unwrap_err(), RegistryError::Full { max: 8 });
                    }
                }
            });
        }
    });
    // Names are created in order by every thread, so s0..s7 fill the registry.
    assert_eq!(reg.len(), 8);
    let total: u64 = reg.list().iter().map(|r| r.totals().requests).sum();
    assert_eq!(total, 8 * 16);
}

// --- The layer ---

type StatusFuture =
    std::pin::Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, BoxError>> + Send>>;

fn status_service(
    status: u16,
    delay: Duration,
) -> impl Service<
    Request<()>,
    Response = Response<Full<Bytes>>,
    Error = BoxError,
    Future = StatusFuture,
> + Clone {
    service_fn(move |_req: Request<()>| -> StatusFuture {
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Ok::<_, BoxError>(
                Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::from_static(b"x")))
                    .unwrap(),
            )
        })
    })
}

fn window(r: &Recorder) -> WindowSnapshot {
    r.snapshot(TEN_S).unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_layer_times_calls_and_counts_server_errors() {
    let reg = Recorders::new(RecorderConfig::default());
    let layer = reg.layer("GET /slow").unwrap();
    let r = layer.recorder().clone();
    let ok = layer.layer(status_service(200, Duration::from_millis(120)));
    let bad = layer.layer(status_service(503, Duration::from_millis(40)));
    let client_error = layer.layer(status_service(404, Duration::from_millis(1)));
    for _ in 0..9 {
        let res = ok.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(res.status(), 200);
        // The body passes through untouched.
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "x");
    }
    bad.oneshot(Request::new(())).await.unwrap();
    client_error.oneshot(Request::new(())).await.unwrap();
    let w = window(&r);
    assert_eq!((w.count, w.errors, w.ignored), (11, 1, 0));
    let p50 = w.p50.unwrap().as_secs_f64();
    assert!((p50 - 0.120).abs() <= 0.01 * 0.120, "{p50}");
    let p0 = w.quantile(0.0).unwrap().as_secs_f64();
    assert!((p0 - 0.001).abs() <= 0.01 * 0.001, "{p0}");
}

#[tokio::test(start_paused = true)]
async fn errors_and_local_refusals() {
    let r = Recorder::new("errs", &RecorderConfig::default());
    let failing = r.layer().layer(service_fn(|_req: Request<()>| async {
        Err::<Response<Full<Bytes>>, BoxError>("connection reset".into())
    }));
    let refused = r.layer().layer(service_fn(|_req: Request<()>| async {
        Err::<Response<Full<Bytes>>, BoxError>(Overloaded::new().into())
    }));
    let err = failing.oneshot(Request::new(())).await.unwrap_err();
    assert_eq!(err.to_string(), "connection reset");
    let err = refused.oneshot(Request::new(())).await.unwrap_err();
    assert!(err.is::<Overloaded>());
    let w = window(&r);
    // The refusal is counted apart: palisade refused it, the service never saw it.
    assert_eq!((w.count, w.errors, w.ignored), (1, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn other_classifiers() {
    let r = Recorder::new("classify", &RecorderConfig::default());
    // Only `Err` is a failure.
    let svc = r
        .layer()
        .classify(ErrorsOnly)
        .layer(status_service(500, Duration::ZERO));
    svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(window(&r).errors, 0);
    // A slow success is a failure.
    let slow = r
        .layer()
        .classify(SlowCalls::new(
            HttpStatus::server_errors(),
            Duration::from_millis(100),
        ))
        .layer(status_service(200, Duration::from_millis(150)));
    slow.oneshot(Request::new(())).await.unwrap();
    let w = window(&r);
    assert_eq!((w.count, w.errors), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_call_is_ignored_unless_the_deadline_dropped_it() {
    let r = Recorder::new("dropped", &RecorderConfig::default());
    let mut svc = r.layer().layer(status_service(200, Duration::from_secs(5)));
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);

    // The client goes away after 1 s.
    assert!(svc.poll_ready(&mut cx).is_ready());
    let mut fut = Box::pin(svc.call(Request::new(())));
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    tokio::time::advance(Duration::from_secs(1)).await;
    drop(fut);
    let w = window(&r);
    assert_eq!((w.count, w.errors, w.ignored), (0, 0, 1));

    // The timeout it runs under drops it after 2 s: a failure, with its latency.
    let timeout = Scope::new();
    assert!(svc.poll_ready(&mut cx).is_ready());
    let mut fut = Box::pin(timeout.enter(|| svc.call(Request::new(()))));
    assert!(timeout.enter(|| fut.as_mut().poll(&mut cx)).is_pending());
    tokio::time::advance(Duration::from_secs(2)).await;
    timeout.expire(|| drop(fut));
    let w = window(&r);
    assert_eq!((w.count, w.errors, w.ignored), (1, 1, 1));
    let p = w.p50.unwrap().as_secs_f64();
    assert!((p - 2.0).abs() <= 0.02, "{p}");

    // Another stack's timeout expiring while this call is dropped: not this call's deadline.
    let ours = Scope::new();
    assert!(svc.poll_ready(&mut cx).is_ready());
    let fut = Box::pin(ours.enter(|| svc.call(Request::new(()))));
    Scope::new().expire(|| drop(fut));
    let w = window(&r);
    assert_eq!((w.count, w.errors, w.ignored), (1, 1, 2));
}

/// A gRPC body: one data frame, then trailers with `grpc-status`.
struct GrpcBody {
    frames: Vec<Frame<Bytes>>,
}

impl GrpcBody {
    fn new(status: &'static str) -> Self {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", status.parse().unwrap());
        GrpcBody {
            frames: vec![
                Frame::trailers(trailers),
                Frame::data(Bytes::from_static(b"m")),
            ],
        }
    }
}

impl Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.frames.pop().map(Ok))
    }
}

fn grpc_service(
    status: &'static str,
) -> impl Service<Request<()>, Response = Response<GrpcBody>, Error = BoxError, Future = impl Send> + Clone
{
    service_fn(move |_req: Request<()>| async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        Ok::<_, BoxError>(
            Response::builder()
                .header("content-type", "application/grpc")
                .body(GrpcBody::new(status))
                .unwrap(),
        )
    })
}

#[tokio::test(start_paused = true)]
async fn grpc_calls_are_recorded_at_their_trailers() {
    let r = Recorder::new("grpc", &RecorderConfig::default());
    let layer = r.layer();
    // UNAVAILABLE (14) in the trailers: a failure, known only at the end of the body.
    let res = layer
        .layer(grpc_service("14"))
        .oneshot(Request::new(()))
        .await
        .unwrap();
    assert_eq!(window(&r).count, 0, "not known before the trailers");
    tokio::time::advance(Duration::from_secs(1)).await; // the body's transfer is not timed
    let collected = res.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "14");
    let w = window(&r);
    assert_eq!((w.count, w.errors), (1, 1));
    let p = w.p50.unwrap().as_secs_f64();
    assert!((p - 0.030).abs() <= 0.01 * 0.030, "{p}");

    // OK (0): a success.
    let res = layer
        .layer(grpc_service("0"))
        .oneshot(Request::new(()))
        .await
        .unwrap();
    res.into_body().collect().await.unwrap();
    assert_eq!((window(&r).count, window(&r).errors), (2, 1));

    // A body dropped before its end: ignored.
    let res = layer
        .layer(grpc_service("14"))
        .oneshot(Request::new(()))
        .await
        .unwrap();
    drop(res);
    let w = window(&r);
    assert_eq!((w.count, w.errors, w.ignored), (2, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn clones_and_layers_share_one_recorder() {
    let reg = Recorders::new(RecorderConfig::default());
    let layer = reg.layer("shared").unwrap();
    let a = layer.layer(status_service(200, Duration::ZERO));
    let b = layer.clone().layer(status_service(200, Duration::ZERO));
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let svc = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(svc.oneshot(Request::new(())))
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(window(&reg.get("shared").unwrap()).count, 10);
    assert!(format!("{layer:?}").contains("shared"));
}

// --- A claim that stalls ---

/// Gives the other test threads the CPU (the stall tests wait on each other on purpose; no clock is
/// involved: the recorder is driven with explicit instants).
fn nap() {
    std::thread::yield_now();
}

/// A flag a stalled claimer waits on, and one it raises once it is stalled.
#[derive(Default)]
struct Stall {
    stalled: std::sync::atomic::AtomicBool,
    release: std::sync::atomic::AtomicBool,
    armed: std::sync::atomic::AtomicBool,
}

impl Stall {
    /// Stalls the first move out of ring `ring` (after `arm`) until `release`.
    fn install(self: &std::sync::Arc<Self>, r: &Recorder, ring: usize) {
        let stall = self.clone();
        assert!(r.__set_drain_hook(move |k| {
            use std::sync::atomic::Ordering::SeqCst;
            if k == ring && stall.armed.swap(false, SeqCst) {
                stall.stalled.store(true, SeqCst);
                while !stall.release.load(SeqCst) {
                    nap();
                }
            }
        }));
    }

    fn arm(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn wait_stalled(&self) {
        while !self.stalled.load(std::sync::atomic::Ordering::SeqCst) {
            nap();
        }
    }

    fn release(&self) {
        self.release
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Runs `claimer` on a thread until it stalls in its move, then `racer` on another for a while
/// (once it has started, 100,000 yields of this thread: far past the 128 spins and yields a bounded
/// wait would allow it), then lets the claimer finish.
fn race_a_stalled_claim(stall: &Stall, claimer: impl FnOnce() + Send, racer: impl FnOnce() + Send) {
    let started = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        stall.arm();
        let a = s.spawn(claimer);
        stall.wait_stalled();
        let b = s.spawn(|| {
            started.store(true, std::sync::atomic::Ordering::SeqCst);
            racer();
        });
        while !started.load(std::sync::atomic::Ordering::SeqCst) {
            nap();
        }
        for _ in 0..100_000 {
            nap();
        }
        stall.release();
        a.join().unwrap();
        b.join().unwrap();
    });
}

/// The last ring's old counts are discarded by the request that claims the slot; a request of the
/// new time that meets the claim mid-move must not be discarded with them, however long the
/// claimer is descheduled.
#[test]
fn a_stalled_claim_on_the_last_ring_loses_no_count() {
    let config = RecorderConfig::builder().windows([TEN_S]).build().unwrap();
    let r = Recorder::new("stalled drop", &config);
    let stall = std::sync::Arc::new(Stall::default());
    stall.install(&r, 0);
    let t0 = Instant::now();
    // Old counts in the slot of 0..1 s, with a latency in the upper half of the buckets.
    r.record_at(
        t0 + Duration::from_millis(500),
        Duration::from_secs(1),
        Outcome::Success,
    );
    let at = t0 + Duration::from_millis(10_500);
    race_a_stalled_claim(
        &stall,
        || r.record_at(at, Duration::from_secs(1), Outcome::Success),
        || r.record_at(at, Duration::from_secs(1), Outcome::Success),
    );
    let w = r.snapshot_at(TEN_S, at).unwrap();
    assert_eq!(w.count, 2, "{w:?}");
}

/// A 1 s slot moving into a 6 s slot that another request is moving on into a 30 s slot (stalled
/// there) must wait for it, not drain into it: its counts would move with the 6 s slot's old ones,
/// 60 s too old.
#[test]
fn a_stalled_fold_into_a_coarse_slot_misfiles_no_count() {
    let r = Recorder::new("stalled fold", &RecorderConfig::default());
    let stall = std::sync::Arc::new(Stall::default());
    stall.install(&r, 1);
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let one_s = Duration::from_secs(1);
    // 0.5 s, into the 1 s slot 0, moved at 10.5 s into the 6 s slot 0 (0..6 s).
    r.record_at(at(500), one_s, Outcome::Success);
    r.record_at(at(10_500), one_s, Outcome::Success);
    // 60.5 s and 61.5 s: 1 s slots 0 and 1, both to move into the 6 s slot 0 again (60..66 s).
    r.record_at(at(60_500), one_s, Outcome::Success);
    r.record_at(at(61_500), one_s, Outcome::Success);
    // At 70.5 s, slot 0 moves into the 6 s slot 0, which first moves its 0..6 s counts into the 30 s
    // ring: stalled there. At 71.5 s, slot 1 moves into the same 6 s slot.
    race_a_stalled_claim(
        &stall,
        || r.record_at(at(70_500), one_s, Outcome::Success),
        || r.record_at(at(71_500), one_s, Outcome::Success),
    );
    // The minute at 72 s covers 18..78 s: 60.5, 61.5, 70.5 and 71.5.
    let minute = r.snapshot_at(ONE_MIN, at(72_000)).unwrap();
    assert_eq!(minute.count, 4, "{minute:?}");
    let five = r.snapshot_at(FIVE_MIN, at(72_000)).unwrap();
    assert_eq!(five.count, 6, "{five:?}");
}

/// A slot may be at most `MAX_SLOT` long, so that one bucket of a recording slot cannot pass 2³²
/// counts at any plausible rate.
#[test]
fn the_finest_slot_is_bounded() {
    let b = RecorderConfig::builder;
    let max = RecorderConfig::MAX_SLOT;
    assert_eq!(max, Duration::from_secs(300));
    assert!(b().windows([max * 10]).build().is_ok());
    let err = b()
        .windows([max * 10 + Duration::from_secs(10)])
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "windows");
    assert!(err.to_string().contains("longer than"), "{err}");
    let err = b()
        .windows([Duration::from_secs(3600)])
        .slots(2)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "windows");
    // Coarser rings may have longer slots: their counts are added off the request path, saturating.
    let c = b()
        .windows([
            TEN_S,
            Duration::from_secs(3600),
            Duration::from_secs(86_400),
        ])
        .build()
        .unwrap();
    assert_eq!(c.windows().len(), 3);
}

/// A steady 100 requests per second reads as 100 at every phase of a slot: the rate divides by the
/// time the window's slots cover, not by the window's length.
#[tokio::test(start_paused = true)]
async fn requests_per_second_is_steady_through_a_slot() {
    use palisade_heal::signals::recorder_samples;
    let reg = Recorders::new(RecorderConfig::default());
    let api = reg.recorder("api").unwrap();
    let t0 = Instant::now();
    let rate = |window: Duration, now: Instant| -> f64 {
        recorder_samples(&reg, window, now)
            .into_iter()
            .find(|(name, _)| name == "api.requests_per_second")
            .unwrap()
            .1
            .value
    };
    let step = Duration::from_millis(10);
    for i in 0..7_000u32 {
        let now = t0 + step * i;
        tokio::time::sleep_until(now).await;
        api.record_success(Duration::from_millis(1));
        // Past one window of traffic, at every 10 ms phase of a 1 s slot (every 30 ms of a 6 s one).
        if i >= 1_100 {
            let got = rate(TEN_S, now);
            assert!(
                (got - 100.0).abs() <= 1.0,
                "10 s window at {:?}: {got}",
                now - t0
            );
        }
        if i >= 6_100 && i % 3 == 0 {
            let got = rate(ONE_MIN, now);
            assert!(
                (got - 100.0).abs() <= 1.0,
                "1 min window at {:?}: {got}",
                now - t0
            );
        }
    }
    let w = api.snapshot(TEN_S).unwrap();
    assert!(
        w.covered > TEN_S * 9 / 10 && w.covered <= TEN_S,
        "{:?}",
        w.covered
    );
}
