//! Per-tenant rate limiting on the happy path: `ratelimit_keyed` compares a bare service, palisade's
//! rate limit with 1,000 active tenants (requests rotate through 1,000 pre-warmed tenant header
//! values; the quota always admits), a raw governor keyed limiter (`check_key` over the same 1,000
//! keys, no service around it) and tower-resilience's rate limiter (unkeyed, configured as its docs
//! show).
//!
//! Run: `cargo bench --bench ratelimit --features ratelimit`. Each service iteration is `poll_ready` +
//! `call` + polling the response future to completion with a no-op waker.

mod common;

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderValue, Request, Response};
use palisade::error::BoxError;
use palisade::key::HeaderKey;
use palisade::ratelimit::{Rate, RateLimitLayer};
use tower::{service_fn, Layer, Service};

const TENANTS: usize = 1_000;

fn ok_service(
) -> impl Service<Request<()>, Response = Response<String>, Error = BoxError, Future = impl Send> + Clone
{
    service_fn(|_req: Request<()>| async { Ok::<_, BoxError>(Response::new(String::new())) })
}

fn tenants() -> Vec<HeaderValue> {
    (0..TENANTS)
        .map(|i| HeaderValue::try_from(format!("tenant-{i:04}")).unwrap())
        .collect()
}

/// A request for tenant `i` (building it is part of every variant, bare included).
fn req(keys: &[HeaderValue], i: usize) -> Request<()> {
    let mut r = Request::new(());
    r.headers_mut()
        .insert("x-tenant-id", keys[i % TENANTS].clone());
    r
}

fn ratelimit_keyed(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let keys = tenants();
    let mut g = c.benchmark_group("ratelimit_keyed");

    let mut bare = ok_service();
    let mut i = 0usize;
    g.bench_function("bare", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(common::call(&mut bare, req(&keys, i)))
        })
    });

    let mut palisade = RateLimitLayer::builder(HeaderKey::from_static("x-tenant-id"))
        .default_rate(Rate::per_second(u32::MAX).burst(1_000_000))
        .max_keys(10_000)
        .build()
        .expect("valid config")
        .layer(ok_service());
    for i in 0..TENANTS {
        common::call(&mut palisade, req(&keys, i)); // pre-warm every tenant's bucket
    }
    g.bench_function("palisade", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(common::call(&mut palisade, req(&keys, i)))
        })
    });

    let governor = governor::RateLimiter::keyed(governor::Quota::per_second(
        NonZeroU32::new(u32::MAX).unwrap(),
    ));
    for k in &keys {
        governor.check_key(k).expect("admitted");
    }
    g.bench_function("governor_keyed", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let r = req(&keys, i);
            let key = r.headers().get("x-tenant-id").unwrap();
            black_box(governor.check_key(key).is_ok());
            black_box(r)
        })
    });

    let mut tower_resilience = tower_resilience::ratelimiter::RateLimiterLayer::builder()
        .limit_for_period(usize::MAX / 2)
        .refresh_period(Duration::from_secs(1))
        .timeout_duration(Duration::from_millis(500))
        .build()
        .expect("valid config")
        .layer(ok_service());
    g.bench_function("tower_resilience", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(common::call(&mut tower_resilience, req(&keys, i)))
        })
    });
    g.finish();
}

criterion_group!(benches, ratelimit_keyed);
criterion_main!(benches);
