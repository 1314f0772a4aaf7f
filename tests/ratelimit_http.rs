#![cfg(feature = "ratelimit")]
//! The per-tenant rate limit over real sockets: an axum router behind `RescueLayer` and the rate
//! limit, a hyper client on loopback. Rejections must arrive as real 429s with `Retry-After` and the
//! IETF rate-limit headers, bad keys as 400s, and one tenant's flood must not touch another's quota.
//!
//! Quotas are burst-only (an hour per refill), so real elapsed time cannot change any count.

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use palisade::key::HeaderKey;
use palisade::ratelimit::{MalformedKey, MissingKey, Rate, RateLimitHandle, RateLimitLayer};
use palisade::rescue::RescueLayer;
use tower::ServiceBuilder;

const BURST: u32 = 20;

async fn serve(missing: MissingKey) -> (SocketAddr, RateLimitHandle) {
    serve_with(missing, MalformedKey::Reject).await
}

async fn serve_with(missing: MissingKey, malformed: MalformedKey) -> (SocketAddr, RateLimitHandle) {
    let limit = RateLimitLayer::builder(HeaderKey::from_static("x-tenant-id").max_len(32))
        .default_rate(Rate::per_hour(BURST))
        .tier("anonymous", Rate::per_hour(2))
        .missing_key(missing)
        .malformed_key(malformed)
        .headers_on_success(true)
        .build()
        .expect("valid config");
    let handle = limit.handle();
    let stack = ServiceBuilder::new().layer(RescueLayer::new()).layer(limit);
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(stack);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, handle)
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Got {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

async fn get_as(client: &HttpClient, addr: SocketAddr, tenant: Option<&[u8]>) -> Got {
    let mut req = Request::get(format!("http://{addr}/"));
    if let Some(t) = tenant {
        req = req.header("x-tenant-id", http::HeaderValue::from_bytes(t).unwrap());
    }
    let res = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(req.body(Full::default()).unwrap()),
    )
    .await
    .expect("the server answers within 10 s")
    .expect("a response");
    let (parts, body) = res.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

#[tokio::test]
async fn a_flooding_tenant_does_not_reduce_another_tenants_quota() {
    let (addr, handle) = serve(MissingKey::Reject).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut a_ok = 0;
    let mut b_ok = 0;
    let mut last_429 = None;
    // A sends 50× its quota, B twice its quota, interleaved (B every 25th request).
    for i in 0..(50 * BURST as usize) {
        let got = get_as(&client, addr, Some(b"tenant-a")).await;
        match got.status {
            StatusCode::OK => a_ok += 1,
            StatusCode::TOO_MANY_REQUESTS => last_429 = Some(got),
            s => panic!("unexpected {s}"),
        }
        if i % 25 == 0 {
            let got = get_as(&client, addr, Some(b"tenant-b")).await;
            if got.status == StatusCode::OK {
                b_ok += 1;
            } else {
                assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
            }
        }
    }
    assert_eq!(a_ok, BURST as usize);
    assert_eq!(
        b_ok, BURST as usize,
        "B gets exactly its burst, whatever A does"
    );

    let got = last_429.expect("A was limited");
    let retry: u64 = got.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (179..=180).contains(&retry),
        "one request refills in 3600 s / 20 = 180 s: {retry}"
    );
    assert_eq!(
        got.header("ratelimit-policy"),
        Some("\"default\";q=20;w=3600")
    );
    let state = got.header("ratelimit").unwrap();
    assert!(state.starts_with("\"default\";r=0;t="), "{state}");
    assert!(std::str::from_utf8(&got.body)
        .unwrap()
        .contains("rate-limited"));

    // Successful responses carry the opt-in `RateLimit` header.
    let fresh = get_as(&client, addr, Some(b"tenant-c")).await;
    assert_eq!(fresh.status, StatusCode::OK);
    assert!(fresh
        .header("ratelimit")
        .unwrap()
        .starts_with("\"default\";r=19;t="));

    let m = handle.metrics();
    let default = m.iter().find(|m| &*m.name == "default").unwrap();
    assert_eq!(default.admitted, 2 * u64::from(BURST) + 1);
}

#[tokio::test]
async fn bad_tenant_keys_are_400_and_only_missing_ones_share_the_anonymous_bucket() {
    let long = vec![b'x'; 33];
    let malformed: [&[u8]; 5] = [b"", &long, "münchen".as_bytes(), b"a\tb", &[b'x'; 10_000]];
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();

    // Missing and malformed keys are refused under `Reject`, with a problem naming the header.
    let (addr, _) = serve(MissingKey::Reject).await;
    for key in std::iter::once(None).chain(malformed.iter().map(|k| Some(*k))) {
        let got = get_as(&client, addr, key).await;
        assert_eq!(got.status, StatusCode::BAD_REQUEST, "{key:?}");
        let body = std::str::from_utf8(&got.body).unwrap();
        assert!(
            body.contains("x-tenant-id"),
            "the problem names the header: {body}"
        );
    }

    // Under `Anonymous`, a malformed key is still a 400 (a tenant at its cap cannot escape to the
    // anonymous bucket by sending garbage); only a missing one shares the anonymous bucket.
    let (addr, _) = serve(MissingKey::Anonymous).await;
    for _ in 0..BURST {
        assert_eq!(
            get_as(&client, addr, Some(b"acme")).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        get_as(&client, addr, Some(b"acme")).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    for key in malformed {
        let got = get_as(&client, addr, Some(key)).await;
        assert_eq!(
            got.status,
            StatusCode::BAD_REQUEST,
            "{:?}",
            &key[..key.len().min(40)]
        );
        assert!(std::str::from_utf8(&got.body)
            .unwrap()
            .contains("invalid key"));
    }
    let statuses: Vec<_> = keyless_statuses(&client, addr, 3).await;
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ],
        "garbage used no anonymous quota; the anonymous tier allows 2"
    );

    // The explicit opt-in pools malformed keys with the missing ones.
    let (addr, _) = serve_with(MissingKey::Anonymous, MalformedKey::AsMissing).await;
    let mut statuses = Vec::new();
    for key in malformed {
        statuses.push(get_as(&client, addr, Some(key)).await.status);
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    // Real tenants are unaffected.
    assert_eq!(
        get_as(&client, addr, Some(b"acme")).await.status,
        StatusCode::OK
    );
}

/// `n` keyless requests in a row, their statuses.
async fn keyless_statuses(client: &HttpClient, addr: SocketAddr, n: usize) -> Vec<StatusCode> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get_as(client, addr, None).await.status);
    }
    out
}
