//! The idempotency layer around a counting handler, driven with tower's `oneshot`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use palisade_core::audit::Audit;
use palisade_core::error::{
    BoxError, IdempotencyConflict, IdempotencyMismatch, InvalidIdempotencyKey, KeyError,
    MissingIdempotencyKey, Overloaded, PayloadTooLarge,
};
use palisade_core::key::HeaderKey;
use palisade_idempotency::store::{IdempotencyStore, Record};
use palisade_idempotency::{
    Builder, Counts, IdempotencyHandle, IdempotencyLayer, KeyRule, MemoryStore, MissingTenant,
    OnAbandon, RequestBody, ResponseBody,
};
use tokio::sync::Semaphore;
use tower::util::BoxCloneSyncService;
use tower::{service_fn, Layer, Service, ServiceExt};

type Req = Request<Full<Bytes>>;
type Res = Response<ResponseBody<Full<Bytes>>>;
type Svc = BoxCloneSyncService<Req, Res, BoxError>;

/// What the handler does, by path.
#[derive(Clone)]
struct Handler {
    calls: Arc<AtomicUsize>,
    /// `/slow` waits for a permit here.
    gate: Arc<Semaphore>,
}

impl Default for Handler {
    fn default() -> Self {
        Handler {
            calls: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
        }
    }
}

impl Handler {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn service(
        &self,
    ) -> impl Service<
        Request<RequestBody<Full<Bytes>>>,
        Response = Response<Full<Bytes>>,
        Error = BoxError,
        Future = impl Send,
    > + Clone
           + Send
           + Sync
           + 'static {
        let h = self.clone();
        service_fn(move |req: Request<RequestBody<Full<Bytes>>>| {
            let h = h.clone();
            async move {
                let n = h.calls.fetch_add(1, Ordering::SeqCst) + 1;
                let path = req.uri().path().to_owned();
                let body = req.into_body().collect().await?.to_bytes();
                match path.as_str() {
                    "/slow" => {
                        let _permit = h.gate.acquire().await?;
                    }
                    "/panic" if n == 1 => panic!("handler panicked"),
                    "/error" if n == 1 => return Err("database unavailable".into()),
                    "/fail" => {
                        return Ok(Response::builder()
                            .status(503)
                            .body(Full::new(Bytes::from(format!("fail #{n}"))))?)
                    }
                    "/big" => return Ok(Response::new(Full::new(Bytes::from(vec![b'x'; 4096])))),
                    _ => {}
                }
                let res = Response::builder()
                    .status(StatusCode::CREATED)
                    .header("content-type", "application/json")
                    .header("x-order-id", n.to_string())
                    .header("set-cookie", "a=1")
                    .header("set-cookie", "b=2")
                    .header("date", "Tue, 01 Dec 2026 00:00:00 GMT")
                    .header("connection", "x-hop")
                    .header("x-hop", "1")
                    .body(Full::new(Bytes::from(format!(
                        "{{\"order\":{n},\"echo\":{:?}}}",
                        String::from_utf8_lossy(&body)
                    ))))?;
                Ok(res)
            }
        })
    }
}

fn make(builder: Builder, h: &Handler) -> (Svc, IdempotencyHandle) {
    let layer = builder.build().expect("valid config");
    (
        BoxCloneSyncService::new(layer.layer(h.service())),
        layer.handle(),
    )
}

fn tenant_svc(h: &Handler, policy: MissingTenant) -> (Svc, IdempotencyHandle) {
    let layer = IdempotencyLayer::builder()
        .tenant(HeaderKey::from_static("x-tenant-id"))
        .missing_tenant(policy)
        .build()
        .expect("valid config");
    (
        BoxCloneSyncService::new(layer.layer(h.service())),
        layer.handle(),
    )
}

fn post(path: &str, key: Option<&[u8]>, body: &'static str) -> Req {
    let mut b = Request::post(path);
    if let Some(k) = key {
        b = b.header("idempotency-key", http::HeaderValue::from_bytes(k).unwrap());
    }
    b.body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

fn tenant_post(tenant: &str, key: &str, body: &'static str) -> Req {
    let mut req = post("/orders", Some(key.as_bytes()), body);
    req.headers_mut()
        .insert("x-tenant-id", tenant.parse().unwrap());
    req
}

#[derive(Debug)]
struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

async fn send(svc: &Svc, req: Req) -> Result<Got, BoxError> {
    let res = svc.clone().oneshot(req).await?;
    let (parts, body) = res.into_parts();
    let collected = body.collect().await.map_err(|e| -> BoxError { e.into() })?;
    let trailers = collected.trailers().cloned();
    Ok(Got {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    })
}

fn is<T: std::error::Error + 'static>(err: &BoxError) -> bool {
    err.downcast_ref::<T>().is_some()
}

#[tokio::test]
async fn replay_is_byte_for_byte_and_marked() {
    let h = Handler::default();
    let (svc, handle) = make(Builder::new(), &h);
    let first = send(&svc, post("/orders", Some(b"\"k1\""), "{\"sku\":1}"))
        .await
        .unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let again = send(&svc, post("/orders", Some(b"\"k1\""), "{\"sku\":1}"))
        .await
        .unwrap();
    assert_eq!(h.calls(), 1);
    assert_eq!(again.status, first.status);
    assert_eq!(again.body, first.body, "body byte for byte");
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let mut expected = first.headers.clone();
    for hop in ["date", "connection", "x-hop"] {
        expected.remove(hop);
    }
    expected.insert("idempotent-replayed", "true".parse().unwrap());
    assert_eq!(again.headers, expected, "headers minus hop-by-hop and Date");
    assert_eq!(again.headers.get_all("set-cookie").iter().count(), 2);
    // The bare form of the same key is the same key.
    let bare = send(&svc, post("/orders", Some(b"k1"), "{\"sku\":1}"))
        .await
        .unwrap();
    assert_eq!(bare.body, first.body);
    assert_eq!(h.calls(), 1);
    let c = handle.counts();
    assert_eq!((c.executed, c.replayed, c.conflicts), (1, 2, 0));
}

#[tokio::test]
async fn replay_keeps_trailers() {
    let layer = IdempotencyLayer::builder().build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = service_fn({
        let calls = calls.clone();
        move |_req: Request<RequestBody<Full<Bytes>>>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let mut t = HeaderMap::new();
                t.insert("grpc-status", "0".parse().unwrap());
                let body = Frames(
                    [
                        http_body::Frame::data(Bytes::from_static(b"ab")),
                        http_body::Frame::data(Bytes::from_static(b"cd")),
                        http_body::Frame::trailers(t),
                    ]
                    .into(),
                );
                Ok::<_, BoxError>(Response::new(body))
            }
        }
    });
    let svc = layer.layer(inner);
    for round in 0..2 {
        let res = svc
            .clone()
            .oneshot(post("/t", Some(b"k"), ""))
            .await
            .unwrap();
        let replayed = res.headers().contains_key("idempotent-replayed");
        assert_eq!(replayed, round == 1);
        let c = res.into_body().collect().await.unwrap();
        assert_eq!(c.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(c.to_bytes(), "abcd");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A body of given frames.
struct Frames(std::collections::VecDeque<http_body::Frame<Bytes>>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        std::task::Poll::Ready(self.get_mut().0.pop_front().map(Ok))
    }
}

#[tokio::test]
async fn same_key_different_request_is_422() {
    let h = Handler::default();
    let (svc, handle) = make(
        Builder::new().fingerprint_header(http::HeaderName::from_static("x-account")),
        &h,
    );
    send(&svc, post("/orders", Some(b"k"), "a")).await.unwrap();
    let err = send(&svc, post("/orders", Some(b"k"), "b"))
        .await
        .unwrap_err();
    assert!(is::<IdempotencyMismatch>(&err), "{err}");
    // Same body, other query string: another request too.
    let err = send(&svc, post("/orders?dry=1", Some(b"k"), "a"))
        .await
        .unwrap_err();
    assert!(is::<IdempotencyMismatch>(&err), "{err}");
    // A configured header is part of the fingerprint.
    let mut req = post("/orders", Some(b"k"), "a");
    req.headers_mut().insert("x-account", "7".parse().unwrap());
    let err = send(&svc, req).await.unwrap_err();
    assert!(is::<IdempotencyMismatch>(&err), "{err}");
    assert_eq!(h.calls(), 1);
    assert_eq!(handle.counts().mismatches, 3);
}

/// A key belongs to its tenant, not to an endpoint: reused on another path or with another method it
/// is another request (`422`), as Stripe refuses and the draft forbids — the handler never runs twice.
#[tokio::test]
async fn same_key_on_another_endpoint_is_422() {
    let h = Handler::default();
    let (svc, handle) = make(Builder::new(), &h);
    send(&svc, post("/orders", Some(b"k"), "a")).await.unwrap();
    let err = send(&svc, post("/refunds", Some(b"k"), "a"))
        .await
        .unwrap_err();
    assert!(is::<IdempotencyMismatch>(&err), "another path: {err}");
    let mut patch = post("/orders", Some(b"k"), "a");
    *patch.method_mut() = Method::PATCH;
    let err = send(&svc, patch).await.unwrap_err();
    assert!(is::<IdempotencyMismatch>(&err), "another method: {err}");
    assert_eq!(h.calls(), 1);
    assert_eq!(handle.counts().mismatches, 2);
    // Still in flight on one endpoint: another endpoint gets 422 too, not a second execution.
    let slow = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, post("/slow", Some(b"s"), "a")).await }
    });
    while h.calls() == 1 {
        tokio::task::yield_now().await;
    }
    let err = send(&svc, post("/orders", Some(b"s"), "a"))
        .await
        .unwrap_err();
    assert!(is::<IdempotencyMismatch>(&err), "{err}");
    h.gate.add_permits(1);
    slow.await.unwrap().unwrap();
    assert_eq!(h.calls(), 2);
}

#[tokio::test]
async fn missing_and_invalid_keys_are_400_before_the_handler() {
    let h = Handler::default();
    let (svc, handle) = make(Builder::new().require_key(true), &h);
    let err = send(&svc, post("/orders", None, "a")).await.unwrap_err();
    assert!(is::<MissingIdempotencyKey>(&err), "{err}");
    let long = "k".repeat(256);
    let cases: [(&[u8], &str); 6] = [
        (b"", "1 to 255"),
        (b"\"\"", "1 to 255"),
        (long.as_bytes(), "1 to 255"),
        ("caf\u{e9}".as_bytes(), "visible ASCII"),
        (b"a b", "visible ASCII"),
        (b"\"unterminated", "closing quote"),
    ];
    for (key, rule) in cases {
        let err = send(&svc, post("/orders", Some(key), "a"))
            .await
            .unwrap_err();
        let invalid = err
            .downcast_ref::<InvalidIdempotencyKey>()
            .unwrap_or_else(|| panic!("{key:?}: {err}"));
        assert!(invalid.reason.contains(rule), "{key:?}: {}", invalid.reason);
    }
    // The longest valid key is fine.
    send(&svc, post("/orders", Some("k".repeat(255).as_bytes()), "a"))
        .await
        .unwrap();
    // Sent twice: ambiguous.
    let mut req = post("/orders", Some(b"a"), "a");
    req.headers_mut()
        .append("idempotency-key", "b".parse().unwrap());
    let err = send(&svc, req).await.unwrap_err();
    assert!(is::<InvalidIdempotencyKey>(&err), "{err}");
    assert_eq!(h.calls(), 1);
    assert_eq!(handle.counts().rejected, 8);
}

#[tokio::test]
async fn oversized_body_is_413_and_stores_nothing() {
    let h = Handler::default();
    let (svc, _) = make(Builder::new().max_request_body(8), &h);
    let err = send(&svc, post("/orders", Some(b"k"), "123456789"))
        .await
        .unwrap_err();
    let too_large = err.downcast_ref::<PayloadTooLarge>().expect("413");
    assert_eq!(too_large.limit, 8);
    assert_eq!(h.calls(), 0);
    // Nothing was stored: the same key with an acceptable body executes.
    send(&svc, post("/orders", Some(b"k"), "12345678"))
        .await
        .unwrap();
    assert_eq!(h.calls(), 1);
    // Requests the layer does not apply to are not limited.
    let get = Request::get("/orders")
        .header("idempotency-key", "k")
        .body(Full::new(Bytes::from(vec![0u8; 64])))
        .unwrap();
    send(&svc, get).await.unwrap();
}

#[tokio::test]
async fn in_flight_is_409_then_replayed() {
    let h = Handler::default();
    let (svc, handle) = make(Builder::new(), &h);
    let first = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, post("/slow", Some(b"k"), "a")).await }
    });
    while h.calls() == 0 {
        tokio::task::yield_now().await;
    }
    let err = send(&svc, post("/slow", Some(b"k"), "a"))
        .await
        .unwrap_err();
    let conflict = err.downcast_ref::<IdempotencyConflict>().expect("409");
    assert_eq!(conflict.retry_after, Some(Duration::from_secs(1)));
    // Different body while in flight: a mismatch, not a conflict.
    let err = send(&svc, post("/slow", Some(b"k"), "b"))
        .await
        .unwrap_err();
    assert!(is::<IdempotencyMismatch>(&err), "{err}");
    h.gate.add_permits(1);
    let first = first.await.unwrap().unwrap();
    let replay = send(&svc, post("/slow", Some(b"k"), "a")).await.unwrap();
    assert_eq!(replay.body, first.body);
    assert_eq!(h.calls(), 1);
    let c = handle.counts();
    assert_eq!((c.conflicts, c.mismatches, c.replayed), (1, 1, 1));
}

#[tokio::test]
async fn tenants_have_separate_records() {
    let h = Handler::default();
    let (svc, _) = tenant_svc(&h, MissingTenant::Reject);
    let acme = send(&svc, tenant_post("acme", "k", "a")).await.unwrap();
    let globex = send(&svc, tenant_post("globex", "k", "a")).await.unwrap();
    assert_eq!(h.calls(), 2, "the same key from two tenants executes twice");
    assert_ne!(acme.body, globex.body);
    assert_eq!(
        send(&svc, tenant_post("acme", "k", "a"))
            .await
            .unwrap()
            .body,
        acme.body
    );
    assert_eq!(
        send(&svc, tenant_post("globex", "k", "a"))
            .await
            .unwrap()
            .body,
        globex.body
    );
    // A different body under the same key in another tenant is not a mismatch: another record.
    send(&svc, tenant_post("initech", "k", "zzz"))
        .await
        .unwrap();
    assert_eq!(h.calls(), 3);
    // No tenant: refused by default.
    let err = send(&svc, post("/orders", Some(b"k"), "a"))
        .await
        .unwrap_err();
    assert!(is::<KeyError>(&err), "{err}");
}

#[tokio::test]
async fn missing_tenant_policies() {
    let h = Handler::default();
    let (shared, _) = tenant_svc(&h, MissingTenant::Shared);
    send(&shared, post("/orders", Some(b"k"), "a"))
        .await
        .unwrap();
    send(&shared, post("/orders", Some(b"k"), "a"))
        .await
        .unwrap();
    assert_eq!(h.calls(), 1, "one anonymous scope");
    let h = Handler::default();
    let (bypass, handle) = tenant_svc(&h, MissingTenant::Bypass);
    send(&bypass, post("/orders", Some(b"k"), "a"))
        .await
        .unwrap();
    send(&bypass, post("/orders", Some(b"k"), "a"))
        .await
        .unwrap();
    assert_eq!(h.calls(), 2, "passed through");
    assert_eq!(handle.counts(), Counts::default());
}

#[tokio::test]
async fn methods_and_routes() {
    let h = Handler::default();
    let (svc, _) = make(
        Builder::new()
            .route(Method::POST, "/payments/*", KeyRule::Required)
            .route(Method::POST, "/payments/webhook", KeyRule::Off)
            .route(Method::PUT, "/orders", KeyRule::Optional),
        &h,
    );
    // GET is not covered: executed every time, even with a key.
    for _ in 0..2 {
        let get = Request::get("/orders")
            .header("idempotency-key", "k")
            .body(Full::default())
            .unwrap();
        send(&svc, get).await.unwrap();
    }
    assert_eq!(h.calls(), 2);
    // POST without a key: optional by default.
    send(&svc, post("/orders", None, "a")).await.unwrap();
    send(&svc, post("/orders", None, "a")).await.unwrap();
    assert_eq!(h.calls(), 4);
    // Required under the prefix, except where switched off.
    let err = send(&svc, post("/payments/charge", None, "a"))
        .await
        .unwrap_err();
    assert!(is::<MissingIdempotencyKey>(&err), "{err}");
    send(&svc, post("/payments/webhook", None, "a"))
        .await
        .unwrap();
    send(&svc, post("/payments/webhook", Some(b"k"), "a"))
        .await
        .unwrap();
    send(&svc, post("/payments/webhook", Some(b"k"), "a"))
        .await
        .unwrap();
    assert_eq!(h.calls(), 7);
    // PUT added for one route.
    for _ in 0..2 {
        let put = Request::put("/orders")
            .header("idempotency-key", "k")
            .body(Full::default())
            .unwrap();
        send(&svc, put).await.unwrap();
    }
    assert_eq!(h.calls(), 8);
}

#[tokio::test]
async fn cancelled_request_releases_the_lease() {
    let h = Handler::default();
    let (svc, handle) = make(Builder::new(), &h);
    let mut fut = Box::pin(svc.clone().oneshot(post("/slow", Some(b"k"), "a")));
    assert!(futures_poll_once(fut.as_mut()).await.is_none());
    assert_eq!(h.calls(), 1);
    let err = send(&svc, post("/slow", Some(b"k"), "a"))
        .await
        .unwrap_err();
    assert!(is::<IdempotencyConflict>(&err));
    // The client goes away: the response future is dropped mid-handler.
    drop(fut);
    assert_eq!(handle.counts().abandoned, 1);
    h.gate.add_permits(1);
    let retry = send(&svc, post("/slow", Some(b"k"), "a")).await.unwrap();
    assert_eq!(retry.status, StatusCode::CREATED);
    assert!(retry.headers.get("idempotent-replayed").is_none());
    assert_eq!(h.calls(), 2, "the retry executed");
}

/// Polls `fut` once: `Some` if it completed.
async fn futures_poll_once<F: std::future::Future>(
    mut fut: std::pin::Pin<&mut F>,
) -> Option<F::Output> {
    std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

#[tokio::test]
async fn panicking_handler_releases_the_lease() {
    let h = Handler::default();
    let (svc, handle) = make(Builder::new(), &h);
    let task = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, post("/panic", Some(b"k"), "a")).await }
    });
    assert!(task.await.unwrap_err().is_panic());
    assert_eq!(handle.counts().abandoned, 1);
    let retry = send(&svc, post("/panic", Some(b"k"), "a")).await.unwrap();
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(h.calls(), 2);
}

#[tokio::test]
async fn abandoned_keys_can_be_marked_failed() {
    let h = Handler::default();
    let (svc, _) = make(Builder::new().on_abandon(OnAbandon::MarkFailed), &h);
    let task = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, post("/panic", Some(b"k"), "a")).await }
    });
    assert!(task.await.unwrap_err().is_panic());
    let err = send(&svc, post("/panic", Some(b"k"), "a"))
        .await
        .unwrap_err();
    let invalid = err.downcast_ref::<InvalidIdempotencyKey>().expect("400");
    assert!(
        invalid.reason.contains("did not finish"),
        "{}",
        invalid.reason
    );
    assert_eq!(h.calls(), 1, "not executed again");
}

#[tokio::test]
async fn handler_error_releases_the_key() {
    let h = Handler::default();
    let (svc, handle) = make(Builder::new(), &h);
    let err = send(&svc, post("/error", Some(b"k"), "a"))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "database unavailable");
    send(&svc, post("/error", Some(b"k"), "a")).await.unwrap();
    send(&svc, post("/error", Some(b"k"), "a")).await.unwrap();
    assert_eq!(h.calls(), 2);
    assert_eq!(
        handle.counts().abandoned,
        0,
        "an error is not an abandonment"
    );
}

#[tokio::test]
async fn server_errors_are_stored_unless_configured_not_to() {
    let h = Handler::default();
    let (svc, _) = make(Builder::new(), &h);
    let first = send(&svc, post("/fail", Some(b"k"), "a")).await.unwrap();
    let again = send(&svc, post("/fail", Some(b"k"), "a")).await.unwrap();
    assert_eq!(first.status, 503);
    assert_eq!((again.status, again.body), (first.status, first.body));
    assert_eq!(h.calls(), 1);

    let h = Handler::default();
    let (svc, _) = make(Builder::new().store_server_errors(false), &h);
    let first = send(&svc, post("/fail", Some(b"k"), "a")).await.unwrap();
    let again = send(&svc, post("/fail", Some(b"k"), "a")).await.unwrap();
    assert_eq!(
        (first.body, again.body),
        ("fail #1".into(), "fail #2".into())
    );
    assert!(again.headers.get("idempotent-replayed").is_none());
}

#[tokio::test]
async fn too_large_response_is_delivered_but_never_replayed_or_reexecuted() {
    let h = Handler::default();
    let (svc, handle) = make(Builder::new().max_response_body(1024), &h);
    let first = send(&svc, post("/big", Some(b"k"), "a")).await.unwrap();
    assert_eq!(first.body.len(), 4096, "the client gets the whole response");
    let err = send(&svc, post("/big", Some(b"k"), "a")).await.unwrap_err();
    let invalid = err.downcast_ref::<InvalidIdempotencyKey>().expect("400");
    assert!(invalid.reason.contains("too large"), "{}", invalid.reason);
    assert_eq!(h.calls(), 1);
    assert_eq!(handle.counts().not_stored, 1);
}

#[tokio::test(start_paused = true)]
async fn lease_expires_on_paused_time() {
    let h = Handler::default();
    let store = MemoryStore::new();
    let (svc, _) = make(
        Builder::new()
            .store(store.clone())
            .lease(Duration::from_secs(30))
            .conflict_retry_after(Duration::from_secs(60)),
        &h,
    );
    // A request that hangs (a crashed worker): its future is kept, never finishing.
    let hung = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, post("/slow", Some(b"k"), "a")).await }
    });
    while h.calls() == 0 {
        tokio::task::yield_now().await;
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    let err = send(&svc, post("/slow", Some(b"k"), "a"))
        .await
        .unwrap_err();
    let conflict = err.downcast_ref::<IdempotencyConflict>().unwrap();
    assert_eq!(
        conflict.retry_after,
        Some(Duration::from_secs(20)),
        "capped by the lease left"
    );
    tokio::time::advance(Duration::from_secs(20)).await;
    // The lease expired: the key is claimed again and the handler runs.
    h.gate.add_permits(1);
    let second = send(&svc, post("/slow", Some(b"k"), "a")).await.unwrap();
    assert_eq!(second.status, StatusCode::CREATED);
    assert_eq!(h.calls(), 2);
    // The hung request finishing late cannot overwrite the record of the one that took over.
    h.gate.add_permits(1);
    let late = hung.await.unwrap().unwrap();
    assert_ne!(late.body, second.body);
    let replay = send(&svc, post("/slow", Some(b"k"), "a")).await.unwrap();
    assert_eq!(replay.body, second.body);
}

#[tokio::test(start_paused = true)]
async fn records_expire_after_the_ttl() {
    let h = Handler::default();
    let (svc, handle) = make(Builder::new().ttl(Duration::from_secs(3600)), &h);
    assert_eq!(handle.ttl(), Duration::from_secs(3600));
    send(&svc, post("/orders", Some(b"k"), "a")).await.unwrap();
    tokio::time::advance(Duration::from_secs(3599)).await;
    send(&svc, post("/orders", Some(b"k"), "a")).await.unwrap();
    assert_eq!(h.calls(), 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    send(&svc, post("/orders", Some(b"k"), "a")).await.unwrap();
    assert_eq!(h.calls(), 2, "expired: executed again");
}

#[tokio::test(start_paused = true)]
async fn store_cap_evicts_the_oldest_expiry_first() {
    let h = Handler::default();
    let store = MemoryStore::builder().max_records(2).build();
    let (svc, _) = make(Builder::new().store(store.clone()), &h);
    for key in ["k1", "k2"] {
        send(&svc, post("/orders", Some(key.as_bytes()), "a"))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    send(&svc, post("/orders", Some(b"k3"), "a")).await.unwrap();
    assert_eq!((store.len(), store.evicted()), (2, 1));
    // k1 (expiring first) was evicted: it executes again; k3 replays.
    send(&svc, post("/orders", Some(b"k3"), "a")).await.unwrap();
    assert_eq!(h.calls(), 3);
    send(&svc, post("/orders", Some(b"k1"), "a")).await.unwrap();
    assert_eq!(h.calls(), 4);
}

#[tokio::test]
async fn store_full_of_in_flight_requests_is_503() {
    let h = Handler::default();
    let store = MemoryStore::builder().max_records(1).build();
    let (svc, handle) = make(Builder::new().store(store.clone()), &h);
    let first = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, post("/slow", Some(b"k1"), "a")).await }
    });
    while h.calls() == 0 {
        tokio::task::yield_now().await;
    }
    let err = send(&svc, post("/slow", Some(b"k2"), "a"))
        .await
        .unwrap_err();
    assert!(is::<Overloaded>(&err), "{err}");
    assert_eq!(handle.counts().store_full, 1);
    h.gate.add_permits(2);
    first.await.unwrap().unwrap();
    send(&svc, post("/slow", Some(b"k2"), "a")).await.unwrap();
    assert_eq!(h.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_execute_once() {
    let h = Handler::default();
    let (svc, handle) = make(Builder::new(), &h);
    h.gate.add_permits(1000);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { send(&svc, post("/slow", Some(b"k"), "a")).await })
        })
        .collect();
    let mut bodies = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(got) => bodies.push(got.body),
            Err(e) => assert!(is::<IdempotencyConflict>(&e), "{e}"),
        }
    }
    assert_eq!(h.calls(), 1);
    assert!(!bodies.is_empty());
    assert!(bodies.iter().all(|b| *b == bodies[0]));
    let c = handle.counts();
    assert_eq!(c.executed, 1);
    assert_eq!(c.conflicts + c.replayed + 1, 64);
}

#[tokio::test]
async fn audit_names_tenant_and_key_hash_never_the_raw_key() {
    let (audit, ring) = Audit::memory(100);
    let h = Handler::default();
    let layer = IdempotencyLayer::builder()
        .name("orders")
        .tenant(HeaderKey::from_static("x-tenant-id"))
        .audit(&audit)
        .build()
        .unwrap();
    let svc: Svc = BoxCloneSyncService::new(layer.layer(h.service()));
    let key = "super-secret-key-0001";
    send(&svc, tenant_post("acme", key, "a")).await.unwrap();
    send(&svc, tenant_post("acme", key, "a")).await.unwrap();
    send(&svc, tenant_post("acme", key, "b")).await.unwrap_err();
    audit.flush().await.unwrap();
    let records = ring.records();
    let kinds: Vec<_> = records.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, ["idempotency.replayed", "idempotency.mismatch"]);
    for r in &records {
        assert_eq!(r.tenant.as_deref(), Some("acme"));
        assert_eq!(r.details["layer"], "orders");
        assert_eq!(r.details["method"], "POST");
        assert_eq!(r.details["key_hash"].as_str().unwrap().len(), 64);
        let text = format!("{r:?}");
        assert!(!text.contains(key), "raw key in {text}");
    }
}

#[tokio::test]
async fn not_stored_audit_names_method_and_path() {
    let (audit, ring) = Audit::memory(100);
    let h = Handler::default();
    let layer = IdempotencyLayer::builder()
        .max_response_body(1024)
        .audit(&audit)
        .build()
        .unwrap();
    let svc: Svc = BoxCloneSyncService::new(layer.layer(h.service()));
    send(&svc, post("/big?x=1", Some(b"k"), "a")).await.unwrap();
    audit.flush().await.unwrap();
    let records = ring.records();
    let kinds: Vec<_> = records.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, ["idempotency.not_stored"]);
    assert_eq!(records[0].details["method"], "POST");
    assert_eq!(records[0].details["path"], "/big");
    assert_eq!(records[0].details["key_hash"].as_str().unwrap().len(), 64);
}

#[tokio::test]
async fn stores_are_shared_by_clone_and_readable() {
    let h = Handler::default();
    let store = MemoryStore::new();
    let secret = b"0123456789abcdef0123456789abcdef";
    let (a, _) = make(Builder::new().store(store.clone()).secret(secret), &h);
    let (b, _) = make(Builder::new().store(store.clone()).secret(secret), &h);
    send(&a, post("/orders", Some(b"k"), "a")).await.unwrap();
    let replay = send(&b, post("/orders", Some(b"k"), "a")).await.unwrap();
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(h.calls(), 1);
    assert_eq!(store.len(), 1);
    let _ = replay.trailers;
    // `get` reads without claiming.
    let scope = palisade_idempotency::Scope::from_bytes([0; 32]);
    assert!(store.get(scope).await.unwrap().is_none());
    let _: Option<Record> = None;
}
