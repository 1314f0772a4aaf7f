//! Rescue over real sockets: an axum router behind `RescueLayer`, a hyper client on loopback.
//!
//! Every rejection marker must come back as its HTTP status, `Retry-After` (when known), rate-limit
//! headers (for 429) and an RFC 9457 problem body; unknown errors as a 500 that leaks nothing.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use palisade::error::*;
use palisade::rescue::RescueLayer;
use tower::{Layer, Service, ServiceBuilder};

/// The error a route's "inner layer" returns, by path.
fn rejection_for(path: &str) -> Option<BoxError> {
    let quota = Quota::new(100, Duration::from_secs(1), 0, Duration::from_millis(1500))
        .with_policy(Arc::from("gold"));
    Some(match path {
        "/rate-limited" => RateLimited::new(Duration::from_millis(1500))
            .with_quota(quota)
            .into(),
        "/rate-limited-bare" => RateLimited::new(Duration::from_millis(200)).into(),
        "/circuit-open" => CircuitOpen::new(Some(Duration::from_secs(30))).into(),
        "/circuit-forced" => CircuitOpen::new(None).into(),
        "/overloaded" => Overloaded::new()
            .with_retry_after(Duration::from_secs(1))
            .into(),
        "/timeout" => Elapsed::new(Duration::from_secs(2)).into(),
        "/shed" => Shed::new("critical")
            .with_retry_after(Duration::from_secs(10))
            .into(),
        "/read-only" => ReadOnly::new().into(),
        "/bad-key" => KeyError::missing("header `x-tenant-id`").into(),
        "/idem-missing" => MissingIdempotencyKey::new().into(),
        "/idem-invalid" => {
            InvalidIdempotencyKey::new("must be 1 to 255 visible ASCII characters").into()
        }
        "/idem-conflict" => IdempotencyConflict::new(Some(Duration::from_secs(1))).into(),
        "/idem-mismatch" => IdempotencyMismatch::new().into(),
        "/too-large" => PayloadTooLarge::new(1_048_576).into(),
        "/wrapped" => Box::new(Wrapped(
            CircuitOpen::new(Some(Duration::from_secs(3))).into(),
        )),
        "/internal" => "connection to db at 10.0.0.5 failed: password hunter2 rejected".into(),
        _ => return None,
    })
}

/// An error from a layer that wraps another (like retry giving up), keeping it as the source.
#[derive(Debug)]
struct Wrapped(BoxError);

impl std::fmt::Display for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("retries exhausted")
    }
}

impl std::error::Error for Wrapped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// A stand-in for the palisade layers: refuses requests to the paths above, passes the rest.
#[derive(Clone)]
struct Reject<S>(S);

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request<Body>> for Reject<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFut<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        match rejection_for(req.uri().path()) {
            Some(err) => Box::pin(async move { Err(err) }),
            None => {
                let fut = self.0.call(req);
                Box::pin(async move { Ok(fut.await?) })
            }
        }
    }
}

/// A service whose `poll_ready` fails (a full bulkhead that refuses at readiness).
#[derive(Clone)]
struct NotReady;

impl Service<Request<Body>> for NotReady {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Err(Overloaded::new().into()))
    }

    fn call(&mut self, _: Request<Body>) -> Self::Future {
        panic!("call after a failed poll_ready must not reach the inner service");
    }
}

async fn serve() -> SocketAddr {
    let stack = ServiceBuilder::new()
        .layer(RescueLayer::new())
        .layer(tower::layer::layer_fn(Reject));
    let app = Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route("/{*rest}", get(|| async { "unreachable" }))
        .route_service("/not-ready", RescueLayer::new().layer(NotReady))
        // Straight into Router::layer: the rescued stack's error type is Infallible.
        .layer(stack);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

struct Got {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn json(&self) -> serde_json::Value {
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        serde_json::from_slice(&self.body).expect("a JSON problem body")
    }
}

async fn get_path(addr: SocketAddr, path: &str, content_type: Option<&str>) -> Got {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::get(format!("http://{addr}{path}"));
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let res = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(req.body(Full::default()).unwrap()),
    )
    .await
    .expect("the server answers within 10 s")
    .expect("a response");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Got {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

#[tokio::test]
async fn every_rejection_maps_to_its_http_response() {
    let addr = serve().await;
    // path, status, Retry-After, problem slug, detail
    let cases: &[(&str, u16, Option<&str>, &str, &str)] = &[
        (
            "/rate-limited-bare",
            429,
            Some("1"),
            "rate-limited",
            "rate limit exceeded (retry after 200ms)",
        ),
        (
            "/circuit-open",
            503,
            Some("30"),
            "circuit-open",
            "circuit open (retry after 30s)",
        ),
        ("/circuit-forced", 503, None, "circuit-open", "circuit open"),
        (
            "/overloaded",
            503,
            Some("1"),
            "overloaded",
            "service overloaded (retry after 1s)",
        ),
        (
            "/timeout",
            504,
            None,
            "timeout",
            "request timed out after 2s",
        ),
        (
            "/shed",
            503,
            Some("10"),
            "shed",
            "request shed at degradation level critical (retry after 10s)",
        ),
        ("/read-only", 503, None, "read-only", "service is read-only"),
        (
            "/bad-key",
            400,
            None,
            "invalid-key",
            "missing key: header `x-tenant-id` is not present",
        ),
        (
            "/idem-missing",
            400,
            None,
            "idempotency-key-missing",
            "this endpoint requires an Idempotency-Key header",
        ),
        (
            "/idem-invalid",
            400,
            None,
            "idempotency-key-invalid",
            "invalid Idempotency-Key: must be 1 to 255 visible ASCII characters",
        ),
        (
            "/idem-conflict",
            409,
            Some("1"),
            "idempotency-conflict",
            "a request with this Idempotency-Key is still in progress (retry after 1s)",
        ),
        (
            "/idem-mismatch",
            422,
            None,
            "idempotency-mismatch",
            "this Idempotency-Key was already used with a different request",
        ),
        (
            "/too-large",
            413,
            None,
            "payload-too-large",
            "request body exceeds the limit of 1048576 bytes",
        ),
        (
            "/wrapped",
            503,
            Some("3"),
            "circuit-open",
            "circuit open (retry after 3s)",
        ),
        ("/not-ready", 503, None, "overloaded", "service overloaded"),
    ];
    for &(path, status, retry_after, slug, detail) in cases {
        let got = get_path(addr, path, None).await;
        assert_eq!(got.status.as_u16(), status, "{path}");
        assert_eq!(got.header("retry-after"), retry_after, "{path}");
        assert_eq!(got.header("cache-control"), Some("no-store"), "{path}");
        let json = got.json();
        assert_eq!(
            json["type"],
            format!("urn:palisade:problem:{slug}"),
            "{path}"
        );
        assert_eq!(json["status"], status, "{path}");
        assert_eq!(json["detail"], detail, "{path}");
        assert!(
            json["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{path}"
        );
        assert!(got.header("ratelimit").is_none(), "{path}");
    }
}

#[tokio::test]
async fn rate_limits_carry_ietf_headers() {
    let addr = serve().await;
    let got = get_path(addr, "/rate-limited", None).await;
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(got.header("retry-after"), Some("2"), "1.5 s rounds up");
    assert_eq!(got.header("ratelimit-policy"), Some("\"gold\";q=100;w=1"));
    assert_eq!(got.header("ratelimit"), Some("\"gold\";r=0;t=2"));
    let json = got.json();
    assert_eq!(json["title"], "Too many requests");
    assert_eq!(json["retry_after_ms"], 1500);
}

#[tokio::test]
async fn unknown_errors_are_500_and_leak_nothing() {
    let addr = serve().await;
    let got = get_path(addr, "/internal", None).await;
    assert_eq!(got.status, StatusCode::INTERNAL_SERVER_ERROR);
    let text = String::from_utf8(got.body.to_vec()).unwrap();
    assert!(
        !text.contains("hunter2") && !text.contains("10.0.0.5"),
        "{text}"
    );
    let json = got.json();
    assert_eq!(json["type"], "about:blank");
    assert_eq!(json["status"], 500);
    assert!(json.get("detail").is_none());
}

#[tokio::test]
async fn successful_responses_pass_through_untouched() {
    let addr = serve().await;
    let got = get_path(addr, "/ok", None).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(&got.body[..], b"ok");
    assert!(got.header("retry-after").is_none());
    assert_eq!(
        got.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
}

#[tokio::test]
async fn grpc_requests_get_trailers_only_responses() {
    let addr = serve().await;
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("/rate-limited", "8", Some("1500")),
        ("/circuit-open", "14", Some("30000")),
        ("/overloaded", "14", Some("1000")),
        ("/timeout", "4", None),
        ("/read-only", "14", None),
        ("/internal", "2", None),
    ];
    for &(path, code, pushback) in cases {
        // A gRPC client over HTTP/1 is not real gRPC, but the mapping is decided by content-type alone;
        // tests/grpc.rs covers real tonic clients over HTTP/2.
        let got = get_path(addr, path, Some("application/grpc+proto")).await;
        assert_eq!(got.status, StatusCode::OK, "{path}");
        assert_eq!(
            got.header("content-type"),
            Some("application/grpc"),
            "{path}"
        );
        assert_eq!(got.header("grpc-status"), Some(code), "{path}");
        assert_eq!(got.header("grpc-retry-pushback-ms"), pushback, "{path}");
        assert!(got.body.is_empty(), "{path}");
    }
    let internal = get_path(addr, "/internal", Some("application/grpc")).await;
    assert_eq!(internal.header("grpc-message"), Some("internal error"));
    let timeout = get_path(addr, "/timeout", Some("application/grpc")).await;
    assert_eq!(
        timeout.header("grpc-message"),
        Some("request timed out after 2s")
    );
}
