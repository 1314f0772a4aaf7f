//! Issue 12, item 2: a present-but-malformed tenant key is refused with its `KeyError` (a 400), even under
//! `MissingKey::Anonymous`; only an explicit `MalformedKey::AsMissing` pools it with the keyless requests.

use std::sync::Arc;

use http::{HeaderValue, Request, Response};
use palisade_bulkhead::{BulkheadLayer, MalformedKey, MissingKey, Overloaded};
use palisade_core::error::{BoxError, KeyError};
use palisade_core::key::HeaderKey;
use tokio::sync::Semaphore;
use tower::{service_fn, Layer, Service, ServiceExt};

fn req(tenant: Option<&[u8]>) -> Request<()> {
    let mut req = Request::get("/").body(()).unwrap();
    if let Some(t) = tenant {
        req.headers_mut()
            .insert("x-tenant-id", HeaderValue::from_bytes(t).unwrap());
    }
    req
}

fn malformed() -> Vec<Request<()>> {
    let mut twice = req(Some(b"acme"));
    twice
        .headers_mut()
        .append("x-tenant-id", HeaderValue::from_static("other"));
    vec![
        req(Some(b"")),
        req(Some(&[b'a'; 10_000])),
        req(Some("münchen".as_bytes())),
        req(Some(b"a\tb")),
        twice,
    ]
}

#[tokio::test]
async fn a_tenant_at_its_share_cannot_escape_by_sending_a_malformed_key() {
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let inner = service_fn(move |_req: Request<()>| {
        let g = g.clone();
        async move {
            g.acquire().await.unwrap().forget();
            Ok::<_, BoxError>(Response::new(String::new()))
        }
    });
    for (malformed_policy, pooled) in [
        (MalformedKey::Reject, false),
        (MalformedKey::AsMissing, true),
    ] {
        let layer = BulkheadLayer::builder()
            .max_concurrent(8)
            .max_per_tenant(1)
            .missing_key(MissingKey::Anonymous)
            .malformed_key(malformed_policy)
            .keyed(HeaderKey::from_static("x-tenant-id"))
            .build()
            .unwrap();
        let handle = layer.handle();
        let mut svc = layer.layer(inner.clone());
        // acme holds its one slot.
        let held = tokio::spawn(svc.clone().oneshot(req(Some(b"acme"))));
        tokio::task::yield_now().await;
        while handle.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        let err = svc
            .ready()
            .await
            .unwrap()
            .call(req(Some(b"acme")))
            .await
            .unwrap_err();
        assert!(err.downcast_ref::<Overloaded>().is_some(), "{err}");

        for bad in malformed() {
            let fut = svc.ready().await.unwrap().call(bad);
            if pooled {
                // Opt-in: the request joins the anonymous tenant (its own share of 1).
                let mut fut = Box::pin(fut);
                assert!(
                    futures_poll_pending(&mut fut).await,
                    "admitted into the anonymous tenant"
                );
                assert_eq!(handle.anonymous().unwrap().in_flight, 1);
                drop(fut);
                assert_eq!(handle.anonymous().unwrap().in_flight, 0);
            } else {
                let err = fut.await.unwrap_err();
                let key_err = err
                    .downcast_ref::<KeyError>()
                    .expect("a KeyError, for a 400");
                assert!(!key_err.is_missing(), "{key_err}");
                assert!(key_err.to_string().starts_with("invalid key"), "{key_err}");
                assert_eq!(handle.anonymous().unwrap().in_flight, 0);
            }
        }
        // A request with no key at all is anonymous under both policies.
        let mut keyless = Box::pin(svc.ready().await.unwrap().call(req(None)));
        assert!(futures_poll_pending(&mut keyless).await);
        assert_eq!(handle.anonymous().unwrap().in_flight, 1);
        drop(keyless);
        gate.add_permits(1);
        held.await.unwrap().unwrap();
        assert_eq!(handle.in_flight(), 0);
    }
}

/// Polls `fut` once: whether it is still pending (admitted and waiting on the backend).
async fn futures_poll_pending<F: std::future::Future + Unpin>(fut: &mut F) -> bool {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::pin::Pin::new(&mut *fut).poll(cx).is_pending())
    })
    .await
}
