#![cfg(feature = "idempotency")]
//! The idempotency layer over real sockets: an axum router behind `RescueLayer` and the idempotency
//! layer, a hyper client on loopback.
//!
//! Exactly once under 64 concurrent requests with one key, rejections as real 400/409/413/422
//! responses with problem bodies, tenants kept apart, a panicking handler releasing its key, and
//! byte-for-byte replays.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes as AxumBytes;
use axum::extract::State;
use axum::http::HeaderMap as AxumHeaders;
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use palisade::idempotency::{IdempotencyLayer, KeyRule};
use palisade::key::HeaderKey;
use palisade::rescue::RescueLayer;
use tokio::sync::Semaphore;
use tower::ServiceBuilder;

#[derive(Clone)]
struct App {
    calls: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
}

async fn create_order(
    State(app): State<App>,
    headers: AxumHeaders,
    body: AxumBytes,
) -> axum::response::Response {
    let n = app.calls.fetch_add(1, Ordering::SeqCst) + 1;
    if headers.contains_key("x-wait") {
        let _permit = app.gate.acquire().await.expect("gate open");
    }
    if headers.contains_key("x-panic") && n == 1 {
        panic!("the handler panicked");
    }
    axum::response::Response::builder()
        .status(StatusCode::CREATED)
        .header("content-type", "application/json")
        .header("location", format!("/orders/{n}"))
        .header("x-order-id", n.to_string())
        .body(axum::body::Body::from(format!(
            "{{\"order\":{n},\"bytes\":{}}}",
            body.len()
        )))
        .unwrap()
}

async fn serve() -> (SocketAddr, App) {
    let app = App {
        calls: Arc::new(AtomicUsize::new(0)),
        gate: Arc::new(Semaphore::new(0)),
    };
    let idempotency = IdempotencyLayer::builder()
        .tenant(HeaderKey::from_static("x-tenant-id"))
        .route(Method::POST, "/payments/*", KeyRule::Required)
        .max_request_body(1024)
        .build()
        .expect("valid config");
    let stack = ServiceBuilder::new()
        .layer(RescueLayer::new())
        .layer(idempotency);
    let router = Router::new()
        .route("/orders", post(create_order))
        .route("/payments/charge", post(create_order))
        .with_state(app.clone())
        .layer(stack);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (addr, app)
}

#[derive(Debug, Clone)]
struct Got {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn problem(&self) -> serde_json::Value {
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        serde_json::from_slice(&self.body).expect("a JSON problem body")
    }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>()
}

struct Post<'a> {
    path: &'a str,
    tenant: Option<&'a str>,
    key: Option<&'a [u8]>,
    body: Bytes,
    extra: &'a [(&'a str, &'a str)],
}

impl<'a> Post<'a> {
    fn new(path: &'a str, key: &'a str) -> Self {
        Post {
            path,
            tenant: Some("acme"),
            key: Some(key.as_bytes()),
            body: Bytes::from_static(b"{\"sku\":42}"),
            extra: &[],
        }
    }
}

async fn send(client: &HttpClient, addr: SocketAddr, p: &Post<'_>) -> Result<Got, String> {
    let mut req = Request::post(format!("http://{addr}{}", p.path));
    if let Some(t) = p.tenant {
        req = req.header("x-tenant-id", t);
    }
    if let Some(k) = p.key {
        req = req.header("idempotency-key", HeaderValue::from_bytes(k).unwrap());
    }
    for (k, v) in p.extra {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(p.body.clone())).unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("the server answers within 10 s")
        .map_err(|e| e.to_string())?;
    let (parts, body) = res.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Got {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

fn without_date(h: &http::HeaderMap) -> http::HeaderMap {
    let mut h = h.clone();
    h.remove("date");
    h.remove("idempotent-replayed");
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_under_64_concurrent_requests() {
    let (addr, app) = serve().await;
    let client = client();

    // 1. The handler is held: one request runs it, the other 63 are told 409 while it is in flight.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..64 {
        let (client, tx) = (client.clone(), tx.clone());
        tokio::spawn(async move {
            let p = Post {
                extra: &[("x-wait", "1")],
                ..Post::new("/orders", "\"order-7f3a\"")
            };
            tx.send(send(&client, addr, &p).await.unwrap()).unwrap();
        });
    }
    for _ in 0..63 {
        let got = rx.recv().await.unwrap();
        assert_eq!(got.status, StatusCode::CONFLICT, "{got:?}");
        assert_eq!(got.header("retry-after"), Some("1"));
        assert_eq!(
            got.problem()["type"].as_str().unwrap().rsplit(':').next(),
            Some("idempotency-conflict")
        );
    }
    assert_eq!(app.calls.load(Ordering::SeqCst), 1);
    app.gate.add_permits(1000);
    let original = rx.recv().await.unwrap();
    assert_eq!(original.status, StatusCode::CREATED);
    assert!(original.header("idempotent-replayed").is_none());

    // 2. Completed: 64 concurrent retries are all identical replays.
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let p = Post {
                extra: &[("x-wait", "1")],
                ..Post::new("/orders", "\"order-7f3a\"")
            };
            send(&client, addr, &p).await.unwrap()
        }));
    }
    for t in tasks {
        let got = t.await.unwrap();
        assert_eq!(got.status, original.status);
        assert_eq!(got.body, original.body);
        assert_eq!(got.header("idempotent-replayed"), Some("true"));
        assert_eq!(without_date(&got.headers), without_date(&original.headers));
    }
    assert_eq!(app.calls.load(Ordering::SeqCst), 1);

    // 3. Unheld: 64 concurrent first requests with a fresh key; still exactly one execution, and
    //    every answer is a 409 or the very same response.
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            send(&client, addr, &Post::new("/orders", "burst-2"))
                .await
                .unwrap()
        }));
    }
    let mut bodies = Vec::new();
    for t in tasks {
        let got = t.await.unwrap();
        match got.status {
            StatusCode::CONFLICT => {}
            StatusCode::CREATED => bodies.push(got.body),
            other => panic!("unexpected {other}: {got:?}"),
        }
    }
    assert_eq!(app.calls.load(Ordering::SeqCst), 2);
    assert!(!bodies.is_empty());
    assert!(bodies.iter().all(|b| *b == bodies[0]));
}

#[tokio::test]
async fn rejections_are_problem_responses() {
    let (addr, app) = serve().await;
    let client = client();
    let slug = |got: &Got| {
        got.problem()["type"]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .to_owned()
    };

    // 400: a route that requires a key, without one.
    let got = send(
        &client,
        addr,
        &Post {
            key: None,
            ..Post::new("/payments/charge", "")
        },
    )
    .await
    .unwrap();
    assert_eq!(got.status, StatusCode::BAD_REQUEST);
    assert_eq!(slug(&got), "idempotency-key-missing");

    // 400: empty, 256 characters, non-ASCII.
    let long = "k".repeat(256);
    for (key, rule) in [
        (&b""[..], "1 to 255"),
        (&b"\"\""[..], "1 to 255"),
        (long.as_bytes(), "1 to 255"),
        ("caf\u{e9}".as_bytes(), "visible ASCII"),
    ] {
        let got = send(
            &client,
            addr,
            &Post {
                key: Some(key),
                ..Post::new("/orders", "")
            },
        )
        .await
        .unwrap();
        assert_eq!(got.status, StatusCode::BAD_REQUEST, "{key:?}");
        assert_eq!(slug(&got), "idempotency-key-invalid");
        let detail = got.problem()["detail"].as_str().unwrap().to_owned();
        assert!(detail.contains(rule), "{key:?}: {detail}");
    }

    // 413: a body over the limit, before the handler.
    let got = send(
        &client,
        addr,
        &Post {
            body: Bytes::from(vec![b'x'; 2048]),
            ..Post::new("/orders", "big")
        },
    )
    .await
    .unwrap();
    assert_eq!(got.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(slug(&got), "payload-too-large");
    assert_eq!(app.calls.load(Ordering::SeqCst), 0);

    // 422: the same key with another body.
    let first = send(&client, addr, &Post::new("/orders", "k-422"))
        .await
        .unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    let got = send(
        &client,
        addr,
        &Post {
            body: Bytes::from_static(b"{\"sku\":43}"),
            ..Post::new("/orders", "k-422")
        },
    )
    .await
    .unwrap();
    assert_eq!(got.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(slug(&got), "idempotency-mismatch");
    // 422: the same key, the same body, on another endpoint: the handler does not run again.
    let got = send(&client, addr, &Post::new("/payments/charge", "k-422"))
        .await
        .unwrap();
    assert_eq!(got.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(slug(&got), "idempotency-mismatch");
    assert_eq!(app.calls.load(Ordering::SeqCst), 1);

    // 409 while in flight, then the replay.
    let held = tokio::spawn({
        let client = client.clone();
        async move {
            let p = Post {
                extra: &[("x-wait", "1")],
                ..Post::new("/orders", "k-409")
            };
            send(&client, addr, &p).await.unwrap()
        }
    });
    while app.calls.load(Ordering::SeqCst) < 2 {
        tokio::task::yield_now().await;
    }
    let p = Post {
        extra: &[("x-wait", "1")],
        ..Post::new("/orders", "k-409")
    };
    let got = send(&client, addr, &p).await.unwrap();
    assert_eq!(got.status, StatusCode::CONFLICT);
    assert_eq!(got.header("retry-after"), Some("1"));
    app.gate.add_permits(1);
    let first = held.await.unwrap();
    let replay = send(&client, addr, &p).await.unwrap();
    assert_eq!(replay.body, first.body);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(app.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn two_tenants_execute_independently() {
    let (addr, app) = serve().await;
    let client = client();
    let acme = send(&client, addr, &Post::new("/orders", "shared-key"))
        .await
        .unwrap();
    let globex = send(
        &client,
        addr,
        &Post {
            tenant: Some("globex"),
            ..Post::new("/orders", "shared-key")
        },
    )
    .await
    .unwrap();
    assert_eq!(app.calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        (acme.status, globex.status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert_ne!(acme.header("x-order-id"), globex.header("x-order-id"));
    // Each tenant replays its own response.
    let again = send(
        &client,
        addr,
        &Post {
            tenant: Some("globex"),
            ..Post::new("/orders", "shared-key")
        },
    )
    .await
    .unwrap();
    assert_eq!(again.body, globex.body);
    assert_eq!(app.calls.load(Ordering::SeqCst), 2);
    // Without a tenant: 400 (the extractor's error), nothing executed.
    let got = send(
        &client,
        addr,
        &Post {
            tenant: None,
            ..Post::new("/orders", "shared-key")
        },
    )
    .await
    .unwrap();
    assert_eq!(got.status, StatusCode::BAD_REQUEST);
    assert_eq!(app.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn panicking_handler_releases_the_key() {
    let (addr, app) = serve().await;
    let client = client();
    let p = Post {
        extra: &[("x-panic", "1")],
        ..Post::new("/orders", "k-panic")
    };
    // The handler panics: the connection is dropped, and with it the lease.
    assert!(send(&client, addr, &p).await.is_err());
    assert_eq!(app.calls.load(Ordering::SeqCst), 1);
    let retry = send(&client, addr, &p).await.unwrap();
    assert_eq!(retry.status, StatusCode::CREATED);
    assert!(retry.header("idempotent-replayed").is_none());
    assert_eq!(app.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn replay_is_faithful_over_http() {
    let (addr, app) = serve().await;
    let client = client();
    let first = send(&client, addr, &Post::new("/orders", "\"fidelity\""))
        .await
        .unwrap();
    let replay = send(&client, addr, &Post::new("/orders", "\"fidelity\""))
        .await
        .unwrap();
    assert_eq!(app.calls.load(Ordering::SeqCst), 1);
    assert_eq!(replay.status, first.status);
    assert_eq!(replay.body, first.body, "byte for byte");
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.header("location"), Some("/orders/1"));
    assert_eq!(without_date(&replay.headers), without_date(&first.headers));
    assert!(
        replay.headers.contains_key("date"),
        "the server dates the replay anew"
    );
}
