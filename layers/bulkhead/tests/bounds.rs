//! Bounds: every size and duration the builder takes has a documented maximum, and a tenant's label is
//! bounded however long its key.

use std::time::Duration;

use http::{Request, Response};
use palisade_bulkhead::{
    BuildError, BulkheadLayer, MAX_CONCURRENT, MAX_QUEUE_LEN, MAX_RETRY_AFTER, MAX_WAIT,
};
use palisade_core::error::{BoxError, KeyError};
use palisade_core::key::{key_fn, HeaderKey};
use palisade_core::keymap::{MAX_IDLE, MAX_KEYS};
use tower::{service_fn, Layer, ServiceExt};

fn keyed() -> palisade_bulkhead::Builder<HeaderKey> {
    BulkheadLayer::builder().keyed(HeaderKey::from_static("x-tenant-id"))
}

#[test]
fn sizes_and_durations_above_their_maximum_are_build_errors() {
    let q = |b: palisade_bulkhead::Builder| b.queue(5, Duration::from_secs(1));
    let cases: Vec<(&str, Result<(), BuildError>)> = vec![
        (
            "max_concurrent",
            BulkheadLayer::builder()
                .max_concurrent(MAX_CONCURRENT + 1)
                .build()
                .map(drop),
        ),
        (
            "max_concurrent",
            BulkheadLayer::builder()
                .max_concurrent(usize::MAX)
                .build()
                .map(drop),
        ),
        (
            "queue",
            BulkheadLayer::builder()
                .queue(MAX_QUEUE_LEN + 1, Duration::from_secs(1))
                .build()
                .map(drop),
        ),
        (
            "queue",
            BulkheadLayer::builder()
                .queue(5, MAX_WAIT + Duration::from_nanos(1))
                .build()
                .map(drop),
        ),
        (
            "queue",
            BulkheadLayer::builder()
                .queue(5, Duration::MAX)
                .build()
                .map(drop),
        ),
        // Below the timer's 1 ms resolution: the wait would silently last up to 1 ms.
        (
            "queue",
            BulkheadLayer::builder()
                .queue(5, Duration::from_micros(500))
                .build()
                .map(drop),
        ),
        // More waiters per tenant than the whole queue holds: a cap that can never bind.
        (
            "max_queued_per_tenant",
            q(BulkheadLayer::builder())
                .max_queued_per_tenant(6)
                .build()
                .map(drop),
        ),
        // Aging at or past max_wait: every waiter gives up before it ages.
        (
            "aging",
            q(BulkheadLayer::builder())
                .aging(Duration::from_secs(1))
                .build()
                .map(drop),
        ),
        (
            "aging",
            q(BulkheadLayer::builder())
                .aging(Duration::MAX)
                .build()
                .map(drop),
        ),
        // A quantum larger than the queue can never be used up.
        (
            "quantum",
            q(BulkheadLayer::builder()).quantum(6).build().map(drop),
        ),
        (
            "quantum",
            q(BulkheadLayer::builder())
                .quantum(u32::MAX)
                .build()
                .map(drop),
        ),
        // The quantum applies to the queue.
        (
            "quantum",
            BulkheadLayer::builder().quantum(2).build().map(drop),
        ),
        (
            "retry_after",
            BulkheadLayer::builder()
                .retry_after(MAX_RETRY_AFTER + Duration::from_secs(1))
                .build()
                .map(drop),
        ),
        ("max_keys", keyed().max_keys(MAX_KEYS + 1).build().map(drop)),
        ("max_keys", keyed().max_keys(usize::MAX).build().map(drop)),
        (
            "idle_timeout",
            keyed()
                .idle_timeout(MAX_IDLE + Duration::from_secs(1))
                .build()
                .map(drop),
        ),
    ];
    for (setting, result) in cases {
        let err = result.expect_err(setting);
        assert_eq!(err.setting(), setting, "{err}");
        assert!(
            err.to_string().starts_with("invalid bulkhead setting"),
            "{err}"
        );
    }

    // The maxima themselves are accepted.
    BulkheadLayer::builder()
        .max_concurrent(MAX_CONCURRENT)
        .queue(MAX_QUEUE_LEN, MAX_WAIT)
        .max_queued_per_tenant(MAX_QUEUE_LEN)
        .aging(MAX_WAIT - Duration::from_millis(1))
        .quantum(MAX_QUEUE_LEN as u32)
        .retry_after(MAX_RETRY_AFTER)
        .build()
        .expect("the maxima are valid");
    keyed()
        .max_keys(MAX_KEYS)
        .idle_timeout(MAX_IDLE)
        .queue(1, Duration::from_millis(1))
        .build()
        .expect("the maxima are valid");
}

#[test]
fn a_runtime_resize_is_clamped_to_the_maximum() {
    let layer = BulkheadLayer::builder().build().unwrap();
    let handle = layer.handle();
    handle.set_max_concurrent(usize::MAX);
    assert_eq!(handle.max_concurrent(), MAX_CONCURRENT);
}

#[tokio::test]
async fn a_tenant_label_is_bounded_however_long_its_key() {
    // A key extractor without a length limit of its own: the tenant is the first path segment.
    let layer = BulkheadLayer::builder()
        .keyed(key_fn(|req: &Request<()>| {
            req.uri()
                .path()
                .strip_prefix("/t/")
                .map(percent_decoded)
                .ok_or_else(|| KeyError::missing("path /t/{tenant}"))
        }))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_req: Request<()>| async {
        Ok::<_, BoxError>(Response::new(String::new()))
    }));
    let call = |tenant: &str| {
        let req = Request::get(format!("/t/{}", tenant.replace('é', "%C3%A9")))
            .body(())
            .unwrap();
        svc.clone().oneshot(req)
    };

    let long = "k".repeat(10_000);
    call(&long).await.unwrap();
    let counts = handle.tenant(&long).expect("tracked");
    // The rate limiter's bound: the key's `Debug` form without its quotes, cut at 128 bytes.
    assert_eq!(counts.label, "k".repeat(128));

    // Cut on a character boundary: 64 two-byte characters.
    let accents = "é".repeat(100);
    call(&accents).await.unwrap();
    assert_eq!(handle.tenant(&accents).unwrap().label, "é".repeat(64));

    call("acme").await.unwrap();
    assert_eq!(handle.tenant("acme").unwrap().label, "acme");
}

/// Just enough percent-decoding for the test's `é`.
fn percent_decoded(s: &str) -> String {
    s.replace("%C3%A9", "é")
}
