//! The rate limiter through its service, on paused time.

use std::convert::Infallible;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::FakeRelativeClock;
use governor::RateLimiter;
use http::{HeaderValue, Request, Response};
use palisade_core::audit::Audit;
use palisade_core::error::{BoxError, KeyError, RateLimited};
use palisade_core::key::HeaderKey;
use palisade_ratelimit::{
    Cell, LoadSignal, MalformedKey, MissingKey, Op, Rate, RateLimitHandle, RateLimitLayer,
};
use proptest::prelude::*;
use tokio::time::{advance, Instant};
use tower::{service_fn, Layer, Service, ServiceExt};

type Svc = tower::util::BoxCloneService<Request<()>, Response<()>, BoxError>;

const HEADER: &str = "x-tenant-id";

fn service(layer: RateLimitLayer<HeaderKey>) -> Svc {
    tower::util::BoxCloneService::new(layer.layer(service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(()))
    })))
}

fn req(tenant: &str) -> Request<()> {
    Request::get("/").header(HEADER, tenant).body(()).unwrap()
}

/// Sends one request for `tenant`; `Ok(())` if admitted, the rejection otherwise.
async fn send(svc: &Svc, tenant: &str) -> Result<Response<()>, BoxError> {
    svc.clone().oneshot(req(tenant)).await
}

fn limited(err: &BoxError) -> &RateLimited {
    err.downcast_ref::<RateLimited>()
        .unwrap_or_else(|| panic!("expected RateLimited, got {err}"))
}

async fn admitted(svc: &Svc, tenant: &str, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        ok += usize::from(send(svc, tenant).await.is_ok());
    }
    ok
}

fn key() -> HeaderKey {
    HeaderKey::from_static(HEADER).max_len(64)
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Over any window Δ, admitted ≤ burst + ⌊Δ/T⌋; nothing is admitted before a returned
    /// `retry_after`; a request at exactly `now + retry_after` is admitted.
    #[test]
    fn gcra_conformance(
        limit in 1u32..50,
        burst in 1u32..10,
        steps in proptest::collection::vec((0u64..400, any::<bool>()), 1..120),
    ) {
        paused_runtime().block_on(async move {
            let rate = Rate::per_second(limit).burst(burst);
            let t = rate.emission_interval();
            let svc = service(
                RateLimitLayer::builder(key()).default_rate(rate).build().unwrap(),
            );
            let start = Instant::now();
            let mut log: Vec<(Duration, bool)> = Vec::new();
            let mut blocked_until: Option<Duration> = None;
            let mut last_retry: Option<Duration> = None;
            for (gap_ms, honour) in steps {
                match (last_retry.take(), honour) {
                    (Some(retry), true) => advance(retry).await,
                    _ => advance(Duration::from_millis(gap_ms)).await,
                }
                let at = Instant::now() - start;
                let honouring = honour && blocked_until == Some(at);
                match send(&svc, "t").await {
                    Ok(_) => {
                        if let Some(until) = blocked_until {
                            prop_assert!(at >= until, "admitted at {at:?} before retry_after {until:?}");
                        }
                        blocked_until = None;
                        log.push((at, true));
                    }
                    Err(e) => {
                        prop_assert!(!honouring, "refused at exactly now + retry_after ({at:?})");
                        let retry = limited(&e).retry_after;
                        prop_assert!(retry > Duration::ZERO);
                        prop_assert!(retry <= rate.refill_time());
                        blocked_until = Some(at + retry);
                        last_retry = Some(retry);
                        log.push((at, false));
                    }
                }
            }
            let times: Vec<Duration> = log.iter().filter(|(_, ok)| *ok).map(|(at, _)| *at).collect();
            for i in 0..times.len() {
                for j in i..times.len() {
                    let window = times[j] - times[i];
                    let bound = u128::from(burst) + window.as_nanos() / t.as_nanos();
                    prop_assert!((j - i + 1) as u128 <= bound,
                        "{} admitted in {window:?}, bound {bound}", j - i + 1);
                }
            }
            Ok(())
        })?;
    }

    /// The bucket agrees with governor's GCRA, decision for decision.
    #[test]
    fn agrees_with_governor(
        limit in 1u32..1000,
        burst in 1u32..20,
        gaps in proptest::collection::vec(0u64..50_000_000, 1..200),
    ) {
        let rate = Rate::per_second(limit).burst(burst);
        let quota: Option<governor::Quota> = rate.into();
        let clock = FakeRelativeClock::default();
        let governor = RateLimiter::direct_with_clock(quota.unwrap(), clock.clone());
        let cell = Cell::new();
        let mut now = 1u64;
        clock.advance(Duration::from_nanos(1));
        for gap in gaps {
            now += gap;
            clock.advance(Duration::from_nanos(gap));
            let ours = cell.acquire(rate.gcra(), None, now, Op::Consume).is_admitted();
            prop_assert_eq!(ours, governor.check().is_ok(), "at {}", now);
        }
    }
}

#[test]
fn governor_quota_converts() {
    let q = governor::Quota::per_minute(NonZeroU32::new(60).unwrap());
    let rate = Rate::from(q);
    assert_eq!(rate.emission_interval(), Duration::from_secs(1));
    assert_eq!(rate.burst_size(), 60);
}

#[tokio::test(start_paused = true)]
async fn tenants_are_isolated() {
    let layer = RateLimitLayer::builder(key())
        .default_rate(Rate::per_hour(10))
        .build()
        .unwrap();
    let svc = service(layer);
    let mut a_ok = 0;
    let mut b_ok = 0;
    for i in 0..500 {
        a_ok += usize::from(send(&svc, "a").await.is_ok());
        if i % 25 == 0 {
            b_ok += usize::from(send(&svc, "b").await.is_ok());
        }
    }
    assert_eq!(a_ok, 10);
    assert_eq!(b_ok, 10);
}

#[tokio::test(start_paused = true)]
async fn key_flood_stays_under_the_cap() {
    let cap = 1_000;
    let layer = RateLimitLayer::builder(key())
        .default_rate(Rate::per_second(10))
        .max_keys(cap)
        .idle_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(()))
    }));
    let n: u64 = if cfg!(debug_assertions) {
        200_000
    } else {
        1_000_000
    };
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..n {
        // xorshift: random-looking tenant ids, as an attacker would send.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let id = format!("{x:016x}");
        let _ = svc.call(req(&id)).await;
        if i % 50_000 == 0 {
            advance(Duration::from_millis(1500)).await;
        }
        assert!(handle.tracked_tenants() <= cap);
    }
    assert!(handle.tracked_tenants() <= cap);
    assert!(handle.overflowed() > 0);
}

#[tokio::test(start_paused = true)]
async fn active_tenants_are_not_evicted_mid_window() {
    let layer = RateLimitLayer::builder(key())
        .default_rate(Rate::per_second(1).burst(10)) // refills in 10 s
        .max_keys(10)
        .idle_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = service(layer);
    assert_eq!(admitted(&svc, "active", 20).await, 10);
    // Fill the map with others, then flood while time passes: "active" is idle for 9 s, mid-window.
    for i in 0..9 {
        send(&svc, &format!("other-{i}")).await.unwrap();
    }
    advance(Duration::from_secs(9)).await;
    for i in 0..1_000 {
        let _ = send(&svc, &format!("flood-{i}")).await;
    }
    assert!(handle.tracked_tenants() <= 10);
    // Its state survived: after 9 s it has exactly 9 requests, not a fresh burst of 10.
    assert_eq!(admitted(&svc, "active", 20).await, 9);
    // An idle timeout shorter than the refill time is refused.
    let err = RateLimitLayer::builder(key())
        .default_rate(Rate::per_second(1).burst(10))
        .idle_timeout(Duration::from_secs(5))
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "idle_timeout");
}

#[tokio::test(start_paused = true)]
async fn penalised_tenants_are_not_evicted() {
    let layer = RateLimitLayer::builder(key())
        .default_rate(Rate::per_second(1).burst(1))
        .penalty(
            Duration::from_secs(60),
            Duration::from_secs(60),
            Duration::from_secs(600),
        )
        .max_keys(1)
        .idle_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let svc = service(layer);
    send(&svc, "bad").await.unwrap();
    send(&svc, "bad").await.unwrap_err(); // streak 1
    advance(Duration::from_secs(1)).await;
    send(&svc, "bad").await.unwrap();
    let err = send(&svc, "bad").await.unwrap_err(); // streak 2: 60 s penalty
    assert_eq!(limited(&err).retry_after, Duration::from_secs(61));
    advance(Duration::from_secs(30)).await;
    let _ = send(&svc, "newcomer").await; // full map, "bad" idle 30 s but still penalised
    let err = send(&svc, "bad").await.unwrap_err();
    assert_eq!(limited(&err).retry_after, Duration::from_secs(31));
}

#[tokio::test(start_paused = true)]
async fn runtime_override_keeps_other_tenants_state() {
    // Idle timeout covers the slower tiers created below.
    let acme = HeaderValue::from_static("acme");
    let layer = RateLimitLayer::builder(key())
        .default_rate(Rate::per_hour(5))
        .tier("gold", Rate::per_hour(50))
        .idle_timeout(Duration::from_secs(7200))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = service(layer);
    assert_eq!(admitted(&svc, "globex", 3).await, 3);
    assert_eq!(admitted(&svc, "acme", 10).await, 5);
    handle.assign(&acme, "gold").unwrap();
    assert_eq!(&*handle.tier_of(&acme), "gold");
    // acme's consumption is kept as time: its bucket is an hour (5 × 720 s) ahead of now, which gold
    // (72 s per request, burst 50) judges as an empty bucket: gold's sustained rate applies at once.
    assert_eq!(admitted(&svc, "acme", 10).await, 0);
    assert_eq!(
        handle.check(&acme).decision.retry_after(),
        Duration::from_secs(72)
    );
    advance(Duration::from_secs(72)).await;
    assert_eq!(admitted(&svc, "acme", 10).await, 1);
    advance(Duration::from_secs(720)).await;
    assert_eq!(admitted(&svc, "acme", 100).await, 10);
    // globex kept its state (3 of 5 used, plus 792 s of refill = 1 more).
    assert_eq!(admitted(&svc, "globex", 10).await, 3);
    // Changing a tier's rate applies to its tenants at once, with their state.
    handle
        .set_tier("gold", Rate::per_hour(50).burst(100))
        .unwrap();
    assert_eq!(admitted(&svc, "acme", 100).await, 50);
    // A per-tenant override of its own, and back to default.
    handle
        .override_tenant(
            &HeaderValue::from_static("initech"),
            "initech",
            Rate::per_hour(1),
        )
        .unwrap();
    assert_eq!(admitted(&svc, "initech", 3).await, 1);
    let err = send(&svc, "initech").await.unwrap_err();
    assert_eq!(&*limited(&err).quota.as_ref().unwrap().policy, "initech");
    assert!(handle.unassign(&HeaderValue::from_static("initech")));
    // Its hour of debt is judged by the default tier (720 s per request, burst 5): 720 s to wait.
    assert_eq!(admitted(&svc, "initech", 10).await, 0);
    advance(Duration::from_secs(720)).await;
    assert_eq!(admitted(&svc, "initech", 10).await, 1);
    // Bad runtime changes are refused.
    assert!(handle.assign(&acme, "platinum").is_err());
    assert!(handle.set_tier("bad name", Rate::per_second(1)).is_err());
    assert!(handle
        .set_tier("slow", Rate::per_hour(10).burst(10_000))
        .is_err());
}

#[tokio::test(start_paused = true)]
async fn bad_tenant_keys_follow_the_policy() {
    let bad: Vec<Request<()>> = vec![
        Request::get("/").body(()).unwrap(),
        Request::get("/").header(HEADER, "").body(()).unwrap(),
        Request::get("/")
            .header(HEADER, "x".repeat(65))
            .body(())
            .unwrap(),
        Request::get("/")
            .header(
                HEADER,
                HeaderValue::from_bytes("münchen".as_bytes()).unwrap(),
            )
            .body(())
            .unwrap(),
        Request::get("/").header(HEADER, "a b").body(()).unwrap(),
        Request::get("/")
            .header(HEADER, "a")
            .header(HEADER, "b")
            .body(())
            .unwrap(),
    ];
    let svc = service(RateLimitLayer::builder(key()).build().unwrap());
    for r in &bad {
        let err = svc.clone().oneshot(clone_req(r)).await.unwrap_err();
        assert!(err.downcast_ref::<KeyError>().is_some(), "{err}");
    }

    // Under `Anonymous`, only the missing key joins the anonymous bucket; malformed ones are still refused
    // with their KeyError (a 400), and use no anonymous quota.
    let layer = RateLimitLayer::builder(key())
        .missing_key(MissingKey::Anonymous)
        .tier("anonymous", Rate::per_hour(3))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = service(layer);
    let mut ok = 0;
    for r in &bad {
        match svc.clone().oneshot(clone_req(r)).await {
            Ok(_) => ok += 1,
            Err(err) => {
                let key_err = err.downcast_ref::<KeyError>().expect("a KeyError");
                assert!(!key_err.is_missing(), "{key_err}");
            }
        }
    }
    assert_eq!(
        ok, 1,
        "only the keyless request shares the anonymous bucket"
    );
    assert!(
        handle.check_anonymous().decision.is_admitted(),
        "2 of 3 left"
    );

    // The explicit opt-in pools malformed keys with the missing one.
    let layer = RateLimitLayer::builder(key())
        .missing_key(MissingKey::Anonymous)
        .malformed_key(MalformedKey::AsMissing)
        .tier("anonymous", Rate::per_hour(3))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = service(layer);
    let mut ok = 0;
    for r in &bad {
        ok += usize::from(svc.clone().oneshot(clone_req(r)).await.is_ok());
    }
    assert_eq!(
        ok, 3,
        "keyless and malformed requests share one anonymous bucket"
    );
    assert!(!handle.check_anonymous().decision.is_admitted());
    send(&svc, "real-tenant").await.unwrap();
}

fn clone_req(r: &Request<()>) -> Request<()> {
    let mut b = Request::builder().uri(r.uri());
    for (k, v) in r.headers() {
        b = b.header(k, v);
    }
    b.body(()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn penalty_grows_and_decays() {
    let (audit, sink) = Audit::memory(64);
    let layer = RateLimitLayer::builder(key())
        .default_rate(Rate::per_second(1).burst(1))
        .penalty(
            Duration::from_secs(2),
            Duration::from_secs(8),
            Duration::from_secs(60),
        )
        .idle_timeout(Duration::from_secs(600))
        .audit(&audit)
        .build()
        .unwrap();
    let svc = service(layer);
    // Streak n waits 1 s (the rate) + penalty: 0, 2, 4, 8, 8 (capped).
    let mut waits = Vec::new();
    for _ in 0..5 {
        send(&svc, "bad").await.unwrap();
        let err = send(&svc, "bad").await.unwrap_err();
        let retry = limited(&err).retry_after;
        // More rejections in the same streak add nothing.
        for _ in 0..10 {
            assert_eq!(
                limited(&send(&svc, "bad").await.unwrap_err()).retry_after,
                retry
            );
        }
        waits.push(retry.as_secs());
        advance(retry).await;
    }
    assert_eq!(waits, [1, 3, 5, 9, 9]);
    // Behaving for 3 × 60 s forgives 3 levels: level 5 → 2, so the next streak is level 3 (4 s).
    advance(Duration::from_secs(180)).await;
    send(&svc, "bad").await.unwrap();
    assert_eq!(
        limited(&send(&svc, "bad").await.unwrap_err()).retry_after,
        Duration::from_secs(5)
    );
    // One audit record per streak, not per rejected request.
    audit.flush().await.unwrap();
    let streaks = sink
        .records()
        .iter()
        .filter(|r| r.kind == "ratelimit.violation")
        .count();
    assert_eq!(streaks, 6);
    let last = sink.records().into_iter().last().unwrap();
    assert_eq!(last.tenant.as_deref(), Some("bad"));
    assert_eq!(last.details["level"], 3);
}

#[tokio::test(start_paused = true)]
async fn adaptive_quota_scales_with_load() {
    let load = LoadSignal::new();
    let layer = RateLimitLayer::builder(key())
        .default_rate(Rate::per_hour(100))
        .adaptive(&load, 0.1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = service(layer);
    assert_eq!(admitted(&svc, "a", 200).await, 100);
    // At full load tenant b gets 10 % of the quota: a burst of 10.
    load.set(1.0);
    assert_eq!(admitted(&svc, "b", 200).await, 10);
    let err = send(&svc, "b").await.unwrap_err();
    let quota = limited(&err).quota.clone().unwrap();
    assert_eq!(quota.limit, 10);
    // Half load: 55 % — c gets 55.
    load.set(0.5);
    assert_eq!(admitted(&svc, "c", 200).await, 55);
    assert_eq!(handle.load_signal().unwrap().get(), 0.5);
    // Load gone: d gets the full quota again; b's state was kept: its bucket is an hour ahead
    // (10 × 360 s), which the full rate (36 s per request, burst 100) judges as empty.
    load.set(0.0);
    assert_eq!(admitted(&svc, "d", 200).await, 100);
    assert_eq!(admitted(&svc, "b", 200).await, 0);
    advance(Duration::from_secs(36)).await;
    assert_eq!(admitted(&svc, "b", 200).await, 1);
}

#[tokio::test(start_paused = true)]
async fn global_limit_on_top_of_tenant_limits() {
    let layer = RateLimitLayer::builder(key())
        .default_rate(Rate::per_hour(10))
        .global(Rate::per_hour(15))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = service(layer);
    // a's rejections beyond its own 10 do not use global quota.
    assert_eq!(admitted(&svc, "a", 50).await, 10);
    assert_eq!(admitted(&svc, "b", 4).await, 4);
    assert_eq!(admitted(&svc, "c", 5).await, 1);
    let err = send(&svc, "c").await.unwrap_err();
    assert_eq!(&*limited(&err).quota.as_ref().unwrap().policy, "global");
    // c was refused by the global limit, so it got its tenant quota back: 9 left of 10.
    // (The global bucket is an hour ahead; a burst of 4000 at 2000/h covers that debt.)
    handle.set_global(Rate::per_hour(2000).burst(4000)).unwrap();
    assert_eq!(admitted(&svc, "c", 50).await, 9);
    let m = handle.metrics();
    let default = m.iter().find(|m| &*m.name == "default").unwrap();
    assert_eq!(default.admitted, 10 + 4 + 1 + 9);
    let global = m.iter().find(|m| &*m.name == "global").unwrap();
    assert_eq!(global.rejected, 5);
    assert_eq!(default.rejected, 40 + 41);
}

/// Regression: a tenant admitted by its own bucket but refused by the global limit gets back both its
/// quota and its violation streak. The refund used to clear the streak, so the tenant's next rejection
/// started a new streak: one offence level higher and a penalty it had not earned.
#[tokio::test(start_paused = true)]
async fn a_global_refusal_restores_the_tenants_violation_streak() {
    let (audit, sink) = Audit::memory(64);
    let layer = RateLimitLayer::builder(key())
        .default_rate(Rate::new(1, Duration::from_secs(10)).burst(2))
        .penalty(
            Duration::from_secs(100),
            Duration::from_secs(100),
            Duration::from_secs(3600),
        )
        .global(Rate::new(3, Duration::from_secs(1000)).burst(3))
        .idle_timeout(Duration::from_secs(600))
        .audit(&audit)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = service(layer);
    // a uses its burst of 2, then is refused by its own bucket: streak 1 (no penalty at level 1).
    assert_eq!(admitted(&svc, "a", 2).await, 2);
    let err = send(&svc, "a").await.unwrap_err();
    assert_eq!(&*limited(&err).quota.as_ref().unwrap().policy, "default");
    // b takes the last of the global burst.
    assert_eq!(admitted(&svc, "b", 1).await, 1);
    // 10 s on, a's bucket admits again, but the global limit refuses: a's quota goes back.
    advance(Duration::from_secs(10)).await;
    let err = send(&svc, "a").await.unwrap_err();
    assert_eq!(&*limited(&err).quota.as_ref().unwrap().policy, "global");
    // Tighten a's tier (burst 1): the refunded bucket, 10 s ahead, now refuses a on its own. This
    // continues the streak a never left (it was not admitted): no new level, no penalty.
    handle
        .set_tier("default", Rate::new(1, Duration::from_secs(10)).burst(1))
        .unwrap();
    let err = send(&svc, "a").await.unwrap_err();
    assert_eq!(&*limited(&err).quota.as_ref().unwrap().policy, "default");
    assert_eq!(
        limited(&err).retry_after,
        Duration::from_secs(10),
        "the plain wait of the refunded bucket, with no penalty"
    );
    audit.flush().await.unwrap();
    let streaks: Vec<_> = sink
        .records()
        .into_iter()
        .filter(|r| r.kind == "ratelimit.violation")
        .collect();
    assert_eq!(streaks.len(), 1, "one streak: {streaks:?}");
    assert_eq!(streaks[0].details["level"], 1);
}

#[tokio::test(start_paused = true)]
async fn check_does_not_consume() {
    let a = HeaderValue::from_static("a");
    let layer = RateLimitLayer::builder(key())
        .default_rate(Rate::per_second(1).burst(2))
        .build()
        .unwrap();
    let handle: RateLimitHandle = layer.handle();
    let svc = service(layer);
    for _ in 0..100 {
        let c = handle.check(&a);
        assert!(c.decision.is_admitted());
        assert_eq!(c.decision.remaining(), 1);
    }
    assert_eq!(handle.tracked_tenants(), 0, "checking creates no state");
    assert_eq!(admitted(&svc, "a", 5).await, 2);
    let c = handle.check(&a);
    assert!(!c.decision.is_admitted());
    assert_eq!(c.decision.retry_after(), Duration::from_secs(1));
    advance(Duration::from_secs(1)).await;
    assert!(handle.check(&a).decision.is_admitted());
    assert_eq!(admitted(&svc, "a", 5).await, 1);
}

#[tokio::test(start_paused = true)]
async fn ratelimit_header_on_success_is_opt_in() {
    let svc = service(
        RateLimitLayer::builder(key())
            .default_rate(Rate::per_second(10).burst(5))
            .build()
            .unwrap(),
    );
    assert!(send(&svc, "a")
        .await
        .unwrap()
        .headers()
        .get("ratelimit")
        .is_none());

    let svc = service(
        RateLimitLayer::builder(key())
            .default_rate(Rate::per_second(10).burst(5))
            .headers_on_success(true)
            .build()
            .unwrap(),
    );
    let res = send(&svc, "a").await.unwrap();
    assert_eq!(res.headers()["ratelimit"], "\"default\";r=4;t=1");
    let err = {
        for _ in 0..4 {
            send(&svc, "a").await.unwrap();
        }
        send(&svc, "a").await.unwrap_err()
    };
    let q = limited(&err).quota.clone().unwrap();
    assert_eq!(
        (q.limit, q.window, q.remaining),
        (10, Duration::from_secs(1), 0)
    );
    assert_eq!(q.reset, Duration::from_millis(500));
}

#[test]
fn invalid_configs_are_refused() {
    let cases = [
        (
            RateLimitLayer::builder(key())
                .default_rate(Rate::per_second(0))
                .build(),
            "default_rate",
        ),
        (
            RateLimitLayer::builder(key())
                .default_rate(Rate::per_second(1).burst(0))
                .build(),
            "default_rate",
        ),
        (
            RateLimitLayer::builder(key()).max_keys(0).build(),
            "max_keys",
        ),
        (
            // The burst would take ~490,000 years to refill: a ban, and an overflow risk.
            RateLimitLayer::builder(key())
                .default_rate(Rate::per_hour(1).burst(u32::MAX))
                .build(),
            "default_rate",
        ),
        (
            RateLimitLayer::builder(key())
                .global(Rate::per_hour(1).burst(u32::MAX))
                .build(),
            "global",
        ),
        (
            RateLimitLayer::builder(key())
                .penalty(
                    Duration::from_secs(1),
                    Duration::MAX,
                    Duration::from_secs(60),
                )
                .build(),
            "penalty",
        ),
        (
            RateLimitLayer::builder(key())
                .tier("default", Rate::per_second(1))
                .build(),
            "tier",
        ),
        (
            RateLimitLayer::builder(key())
                .tier("global", Rate::per_second(1))
                .build(),
            "tier",
        ),
        (
            RateLimitLayer::builder(key())
                .tier("a\"b", Rate::per_second(1))
                .build(),
            "tier",
        ),
        (
            RateLimitLayer::builder(key())
                .tenant(HeaderValue::from_static("x"), "nope")
                .build(),
            "tier",
        ),
        (
            RateLimitLayer::builder(key())
                .penalty(
                    Duration::from_secs(2),
                    Duration::from_secs(1),
                    Duration::ZERO,
                )
                .build(),
            "penalty",
        ),
        (
            RateLimitLayer::builder(key())
                .adaptive(&LoadSignal::new(), 0.0)
                .build(),
            "adaptive",
        ),
    ];
    for (res, setting) in cases {
        assert_eq!(res.unwrap_err().setting(), setting);
    }
}
