//! The idempotency layer on a `POST` with a 1 KiB body, in-memory store: `bare` is the inner service
//! alone; `palisade_first` sends a new key every iteration (read + fingerprint the body, claim, call,
//! capture the response, complete — and, once the store is at its cap, evict the oldest record);
//! `palisade_replay` sends the same key every iteration (read + fingerprint, claim finds the record,
//! replay).
//!
//! Run: `cargo bench --bench idempotency --features idempotency`. Each iteration builds the request
//! (the same way in all three), then `poll_ready` + `call` + polls the response future to completion
//! with a no-op waker; the inner service and the body are ready at once.

mod common;

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use palisade::error::BoxError;
use palisade::idempotency::IdempotencyLayer;
use tower::{service_fn, Layer, Service};

type Req = Request<Full<Bytes>>;

fn request(body: &Bytes, key: HeaderValue) -> Req {
    Request::post("/orders")
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(Full::new(body.clone()))
        .unwrap()
}

fn ok_service<B: Send + 'static>(
) -> impl Service<Request<B>, Response = Response<Full<Bytes>>, Error = BoxError, Future = impl Send>
       + Clone {
    const RESPONSE: &[u8] = b"{\"order\":\"ord_1f9a2c\",\"status\":\"created\",\"amount\":4200}";
    service_fn(|_req: Request<B>| async {
        Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(RESPONSE))))
    })
}

fn idempotency(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let body = Bytes::from(vec![b'a'; 1024]);
    let mut g = c.benchmark_group("idempotency");

    let mut n = 0u64;
    let mut bare = ok_service();
    g.bench_function("bare", |b| {
        b.iter(|| {
            n += 1;
            black_box(common::call(
                &mut bare,
                request(&body, HeaderValue::from(n)),
            ))
        })
    });

    let mut first = IdempotencyLayer::builder()
        .build()
        .expect("default config")
        .layer(ok_service());
    g.bench_function("palisade_first", |b| {
        b.iter(|| {
            n += 1;
            black_box(common::call(
                &mut first,
                request(&body, HeaderValue::from(n)),
            ))
        })
    });

    let mut replay = IdempotencyLayer::builder()
        .build()
        .expect("default config")
        .layer(ok_service());
    let key = HeaderValue::from_static("\"8e03978e-40d5-43e8-bc93-6894a57f9324\"");
    common::call(&mut replay, request(&body, key.clone()));
    g.bench_function("palisade_replay", |b| {
        b.iter(|| {
            let res = common::call(&mut replay, request(&body, key.clone()));
            debug_assert!(res.headers().contains_key("idempotent-replayed"));
            black_box(res)
        })
    });
    g.finish();
}

criterion_group!(benches, idempotency);
criterion_main!(benches);
