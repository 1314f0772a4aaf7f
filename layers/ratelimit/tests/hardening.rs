//! Hardening: repeat offenders' levels survive eviction (first offences do not pin the map), checks
//! see the overflow bucket, every named tier is changeable (or removable) at run time, honest
//! `RateLimit-Policy` quotas, bounded settings.

use std::convert::Infallible;
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use palisade_core::error::{BoxError, RateLimited};
use palisade_core::key::HeaderKey;
use palisade_ratelimit::{MissingKey, Rate, RateLimitLayer};
use tokio::time::advance;
use tower::{service_fn, Layer, ServiceExt};

type Svc = tower::util::BoxCloneService<Request<()>, Response<()>, BoxError>;

const HEADER: &str = "x-tenant-id";

fn key() -> HeaderKey {
    HeaderKey::from_static(HEADER).max_len(64)
}

fn service<S>(layer: RateLimitLayer<HeaderKey, S>) -> Svc
where
    S: palisade_ratelimit::Store,
{
    tower::util::BoxCloneService::new(layer.layer(service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(()))
    })))
}

async fn send(svc: &Svc, tenant: &str) -> Result<Response<()>, BoxError> {
    svc.clone()
        .oneshot(Request::get("/").header(HEADER, tenant).body(()).unwrap())
        .await
}

async fn send_keyless(svc: &Svc) -> Result<Response<()>, BoxError> {
    svc.clone()
        .oneshot(Request::get("/").body(()).unwrap())
        .await
}

fn limited(err: &BoxError) -> &RateLimited {
    err.downcast_ref::<RateLimited>()
        .unwrap_or_else(|| panic!("expected RateLimited, got {err}"))
}

/// Item 10: a repeat offender (offence level 2 or more) whose full, idle bucket is swept out by a flood
/// of newcomers keeps its offence level; it is forgotten only once the level has decayed below 2. (A
/// first offender's level 1 is not kept: see the next test.)
#[tokio::test(start_paused = true)]
async fn an_offence_level_survives_a_flush_of_the_key_map() {
    let layer = RateLimitLayer::builder(key())
        .default_rate(Rate::per_second(1).burst(1))
        .penalty(
            Duration::from_secs(60),
            Duration::from_secs(600),
            Duration::from_secs(600),
        )
        .max_keys(1)
        .idle_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = service(layer);
    send(&svc, "bad").await.unwrap();
    let err = send(&svc, "bad").await.unwrap_err(); // streak 1: level 1, no penalty yet
    assert_eq!(limited(&err).retry_after, Duration::from_secs(1));
    advance(Duration::from_secs(2)).await;
    send(&svc, "bad").await.unwrap();
    let err = send(&svc, "bad").await.unwrap_err(); // streak 2 (at 2 s): level 2, a 60 s penalty
    assert_eq!(limited(&err).retry_after, Duration::from_secs(61));
    // At 64 s "bad" is full again and idle: a newcomer finds the map full and sweeps.
    advance(Duration::from_secs(62)).await;
    send(&svc, "newcomer").await.unwrap();
    assert_eq!(handle.overflowed(), 1, "\"bad\" kept its bucket");
    // "bad" still has its own bucket and its level: its next streak is level 3, a 120 s penalty.
    send(&svc, "bad").await.unwrap();
    let err = send(&svc, "bad").await.unwrap_err();
    assert_eq!(
        limited(&err).retry_after,
        Duration::from_secs(121),
        "the offence level was forgotten with the bucket"
    );
    assert_eq!(handle.tracked_tenants(), 1);

    // The bucket goes once its level has decayed below 2: level 3, one level per 600 s from the last
    // violation (at 64 s). At 1,263 s two levels are left, and the next newcomer overflows.
    advance(Duration::from_secs(1_199)).await;
    send(&svc, "other").await.unwrap();
    assert_eq!(handle.overflowed(), 2);
    // At 1,265 s "bad" is down to level 1: evicted to make room for a newcomer.
    advance(Duration::from_secs(2)).await;
    send(&svc, "later").await.unwrap();
    assert_eq!(
        handle.overflowed(),
        2,
        "\"later\" got the bucket \"bad\" left"
    );
    assert_eq!(handle.tracked_tenants(), 1);
}

/// Item 10, the other side: a bucket at offence level 1 does not hold its place in the map. A flood of
/// one-violation tenants (burst + 1 requests from each of `max_keys` ids) must not pin the whole map for
/// `decay` (here a day) and push every new tenant into the shared overflow bucket: once the flood's
/// buckets are full and idle, newcomers get buckets of their own.
#[tokio::test(start_paused = true)]
async fn a_flood_of_first_offences_does_not_pin_the_key_map() {
    const MAX_KEYS: usize = 8;
    let layer = RateLimitLayer::builder(key())
        .default_rate(Rate::per_second(1).burst(1))
        .penalty(
            Duration::from_secs(60),
            Duration::from_secs(600),
            Duration::from_secs(86_400),
        )
        .max_keys(MAX_KEYS)
        .idle_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = service(layer);
    for i in 0..MAX_KEYS {
        let id = format!("flood-{i}");
        send(&svc, &id).await.unwrap();
        let err = send(&svc, &id).await.unwrap_err(); // one violation: level 1
        assert_eq!(limited(&err).retry_after, Duration::from_secs(1));
    }
    assert_eq!(handle.tracked_tenants(), MAX_KEYS);
    assert_eq!(handle.overflowed(), 0);
    // Two seconds later every flood bucket is full again and idle; its level 1 adds nothing to any
    // decision yet. Newcomers get buckets of their own.
    advance(Duration::from_secs(2)).await;
    for i in 0..MAX_KEYS {
        send(&svc, &format!("legit-{i}")).await.unwrap();
    }
    // (Before level 1 stopped holding a bucket, the second newcomer here was refused: it shared the
    // overflow bucket with the first.)
    assert_eq!(
        handle.overflowed(),
        0,
        "first offenders pinned the key map: newcomers were sent to the overflow bucket"
    );
    assert_eq!(handle.tracked_tenants(), MAX_KEYS);
}

/// Item 12: with the key map full, a check for a newcomer looks at the overflow bucket its request
/// would use, not at a fresh bucket.
#[tokio::test(start_paused = true)]
async fn check_of_a_newcomer_on_a_full_map_sees_the_overflow_bucket() {
    let layer = RateLimitLayer::builder(key())
        .default_rate(Rate::per_second(1).burst(1))
        .max_keys(1)
        .idle_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = service(layer);
    send(&svc, "a").await.unwrap(); // the map is full of "a"
    send(&svc, "b").await.unwrap(); // through the overflow bucket, now empty
    let newcomer = HeaderValue::from_static("c");
    let check = handle.check(&newcomer);
    let real = send(&svc, "c").await;
    assert!(
        real.is_err(),
        "the real request uses the empty overflow bucket"
    );
    assert!(
        !check.decision.is_admitted(),
        "check predicted an admission the real request did not get"
    );
    assert_eq!(check.decision.retry_after(), Duration::from_secs(1));
    assert_eq!(handle.tracked_tenants(), 1, "checking tracks nothing");

    // Later "a" is full and idle: the check sees the room the sweep makes, and so does the request.
    advance(Duration::from_secs(2)).await;
    let check = handle.check(&newcomer);
    assert!(check.decision.is_admitted());
    assert_eq!(check.decision.remaining(), 0);
    send(&svc, "c").await.unwrap();
    assert_eq!(
        handle.overflowed(),
        2,
        "b and the first c; the second c got a bucket"
    );
}

/// Item 11: the anonymous tier can be created, changed and removed at run time, and each takes effect
/// on keyless requests.
#[tokio::test(start_paused = true)]
async fn the_anonymous_tier_is_changeable_at_run_time() {
    let layer = RateLimitLayer::builder(key())
        .default_rate(Rate::per_second(100))
        .missing_key(MissingKey::Anonymous)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = service(layer);
    send_keyless(&svc).await.unwrap();
    assert_eq!(handle.check_anonymous().policy.as_ref(), "default");

    handle
        .set_tier("anonymous", Rate::per_second(1).burst(1))
        .unwrap();
    assert_eq!(handle.check_anonymous().policy.as_ref(), "anonymous");
    // The anonymous bucket has 10 ms of debt from the request at the default rate: at 1/s with burst
    // 1, that refuses.
    let err = send_keyless(&svc)
        .await
        .expect_err("the anonymous tier created at run time applies");
    assert_eq!(
        limited(&err).quota.as_ref().unwrap().policy.as_ref(),
        "anonymous"
    );
    assert!(handle.metrics().iter().any(|m| &*m.name == "anonymous"));

    // Removing it hands keyless requests back to the default tier.
    assert_eq!(handle.remove_tier("anonymous"), Ok(true));
    assert_eq!(handle.check_anonymous().policy.as_ref(), "default");
    assert!(!handle.metrics().iter().any(|m| &*m.name == "anonymous"));
    send_keyless(&svc).await.unwrap();

    // Built with one: changing it applies too.
    let layer = RateLimitLayer::builder(key())
        .default_rate(Rate::per_second(100))
        .tier("anonymous", Rate::per_second(100))
        .missing_key(MissingKey::Anonymous)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = service(layer);
    handle
        .set_tier("anonymous", Rate::per_second(1).burst(1))
        .unwrap();
    send_keyless(&svc).await.unwrap();
    send_keyless(&svc).await.unwrap_err();
}

/// Item 24 (the handle's part): a tier can be removed; the default tier and a tier with tenants in it
/// cannot.
#[tokio::test(start_paused = true)]
async fn tiers_can_be_removed_unless_in_use() {
    let acme = HeaderValue::from_static("acme");
    let layer = RateLimitLayer::builder(key())
        .tier("gold", Rate::per_second(10))
        .tenant(acme.clone(), "gold")
        .build()
        .unwrap();
    let handle = layer.handle();
    handle.set_tier("silver", Rate::per_second(5)).unwrap();
    assert_eq!(handle.remove_tier("silver"), Ok(true));
    assert_eq!(handle.remove_tier("silver"), Ok(false));
    assert!(!handle.metrics().iter().any(|m| &*m.name == "silver"));
    assert_eq!(handle.remove_tier("default").unwrap_err().setting(), "tier");
    let err = handle.remove_tier("gold").unwrap_err();
    assert!(err.problem().contains("1 tenant"), "{err}");
    assert!(handle.unassign(&acme));
    assert_eq!(handle.remove_tier("gold"), Ok(true));
    assert!(handle.assign(&acme, "gold").is_err());
}

/// Item 15: the quota advertised for `RateLimit-Policy` is in whole seconds and never more generous
/// than the real one.
#[tokio::test(start_paused = true)]
async fn the_advertised_quota_is_whole_seconds_and_never_more_generous() {
    for (rate, limit, window) in [
        (Rate::new(10, Duration::from_millis(100)), 100, 1),
        (Rate::new(10, Duration::from_millis(1_500)), 13, 2),
        (Rate::per_minute(7), 7, 60),
        (Rate::new(3, Duration::from_nanos(1_000_000_001)), 5, 2),
    ] {
        let svc = service(
            RateLimitLayer::builder(key())
                .default_rate(rate)
                .idle_timeout(Duration::from_secs(600))
                .build()
                .unwrap(),
        );
        let err = loop {
            if let Err(e) = send(&svc, "t").await {
                break e;
            }
        };
        let q = limited(&err).quota.clone().unwrap();
        assert_eq!(
            (q.limit, q.window),
            (limit, Duration::from_secs(window)),
            "{rate:?}"
        );
        // Never more generous: q / w <= limit / period.
        assert!(
            u128::from(q.limit) * rate.period().as_nanos()
                <= u128::from(rate.limit()) * q.window.as_nanos()
        );
    }
}

/// Item 6: every size and duration the builder takes has a documented bound.
#[test]
fn sizes_and_durations_are_bounded() {
    let refused = |b: palisade_ratelimit::Builder<HeaderKey>| b.build().unwrap_err();
    let b = || RateLimitLayer::builder(key());
    let err = refused(b().max_keys(palisade_core::keymap::MAX_KEYS + 1));
    assert_eq!(err.setting(), "max_keys");
    let err = refused(b().idle_timeout(Duration::from_secs(367 * 86_400)));
    assert_eq!(err.setting(), "idle_timeout");
    // A penalty decay of zero (never forgiven), under a millisecond (its resolution) or over a day.
    for decay in [
        Duration::ZERO,
        Duration::from_micros(999),
        Duration::from_secs(86_401),
    ] {
        let err = refused(b().penalty(Duration::from_secs(1), Duration::from_secs(1), decay));
        assert_eq!(err.setting(), "penalty", "{decay:?}");
    }
    // More than one request per nanosecond cannot be represented (the interval would truncate to 1 ns).
    let err = refused(b().default_rate(Rate::new(2, Duration::from_nanos(1))));
    assert_eq!(err.setting(), "default_rate");
    // A bucket must refill within a year: here the interval alone is 366 days and the burst adds one.
    let err = refused(
        b().default_rate(Rate::new(1, Duration::from_secs(366 * 86_400)).burst(2))
            .idle_timeout(Duration::from_secs(366 * 86_400)),
    );
    assert_eq!(err.setting(), "default_rate");
    // The bounds themselves are accepted.
    b().max_keys(palisade_core::keymap::MAX_KEYS)
        .default_rate(Rate::new(1, Duration::from_secs(366 * 86_400)))
        .idle_timeout(Duration::from_secs(366 * 86_400))
        .penalty(
            Duration::from_secs(1),
            Duration::from_secs(86_400),
            Duration::from_secs(86_400),
        )
        .build()
        .unwrap();
    b().default_rate(Rate::new(1, Duration::from_nanos(1)))
        .build()
        .unwrap();
}

/// Item 6: the tiers and the tenant assignments a layer holds are bounded, at build and at run time.
#[test]
fn tiers_and_assignments_are_bounded() {
    use palisade_ratelimit::{MAX_ASSIGNMENTS, MAX_TIERS};
    let mut b = RateLimitLayer::builder(key());
    for i in 0..MAX_TIERS {
        b = b.tier(format!("t{i}"), Rate::per_second(1));
    }
    assert_eq!(b.build().unwrap_err().setting(), "tier");

    let handle = RateLimitLayer::builder(key()).build().unwrap().handle();
    for i in 1..MAX_TIERS {
        handle
            .set_tier(&format!("t{i}"), Rate::per_second(1))
            .unwrap();
    }
    let err = handle
        .set_tier("one-too-many", Rate::per_second(1))
        .unwrap_err();
    assert_eq!(err.setting(), "tier");
    // Changing an existing tier is still fine, and removing one makes room.
    handle.set_tier("t1", Rate::per_second(2)).unwrap();
    assert_eq!(handle.remove_tier("t1"), Ok(true));
    handle
        .set_tier("one-too-many", Rate::per_second(1))
        .unwrap();

    for i in 0..MAX_ASSIGNMENTS as u64 {
        handle.assign(&i, "t2").unwrap();
    }
    let err = handle.assign(&u64::MAX, "t2").unwrap_err();
    assert_eq!(err.setting(), "tenant");
    // Reassigning a tenant already assigned is not a new assignment.
    handle.assign(&0u64, "t3").unwrap();
}
