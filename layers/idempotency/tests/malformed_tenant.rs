//! Issue 12, item 2: a present-but-malformed tenant is refused with its `KeyError` (a 400) whatever the
//! missing-tenant policy says — it must not join the shared anonymous scope (where it could replay or
//! pre-claim other clients' keys) nor bypass idempotency — unless the layer opts in.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use palisade_core::error::{BoxError, KeyError};
use palisade_core::key::HeaderKey;
use palisade_idempotency::{IdempotencyLayer, MalformedKey, MissingTenant, RequestBody};
use tower::{service_fn, Layer, ServiceExt};

fn post(tenant: Option<&[u8]>, twice: bool) -> Request<Full<Bytes>> {
    let mut req = Request::post("/orders")
        .header("idempotency-key", "\"order-1\"")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    if let Some(t) = tenant {
        req.headers_mut()
            .insert("x-tenant-id", HeaderValue::from_bytes(t).unwrap());
        if twice {
            req.headers_mut()
                .append("x-tenant-id", HeaderValue::from_static("other"));
        }
    }
    req
}

#[tokio::test]
async fn malformed_tenants_are_400_under_every_missing_tenant_policy() {
    let long = vec![b'x'; 10_000];
    let bad: [(&[u8], bool); 5] = [
        (b"", false),
        (&long, false),
        ("münchen".as_bytes(), false),
        (b"a\tb", false),
        (b"acme", true),
    ];
    for policy in [
        MissingTenant::Reject,
        MissingTenant::Shared,
        MissingTenant::Bypass,
    ] {
        for opt_in in [false, true] {
            let calls = Arc::new(AtomicUsize::new(0));
            let c = calls.clone();
            let handler = service_fn(move |_req: Request<RequestBody<Full<Bytes>>>| {
                c.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
            });
            let mut builder = IdempotencyLayer::builder()
                .tenant(HeaderKey::from_static("x-tenant-id").max_len(64))
                .missing_tenant(policy);
            if opt_in {
                builder = builder.malformed_tenant(MalformedKey::AsMissing);
            }
            let layer = builder.build().unwrap();
            let svc = layer.layer(handler);
            for (tenant, twice) in bad {
                let res = svc.clone().oneshot(post(Some(tenant), twice)).await;
                match (opt_in, policy) {
                    (false, _) | (true, MissingTenant::Reject) => {
                        let Err(err) = res else {
                            panic!("{policy:?}: refused")
                        };
                        let key_err = err
                            .downcast_ref::<KeyError>()
                            .expect("a KeyError, for a 400");
                        assert!(!key_err.is_missing(), "{policy:?}: {key_err}");
                    }
                    (true, _) => assert!(res.is_ok(), "{policy:?}: handled as a missing tenant"),
                }
            }
            let expected = match (opt_in, policy) {
                (false, _) | (true, MissingTenant::Reject) => 0,
                // One shared scope: the first executes, the rest replay it.
                (true, MissingTenant::Shared) => 1,
                (true, _) => bad.len(),
            };
            assert_eq!(
                calls.load(Ordering::SeqCst),
                expected,
                "{policy:?} opt-in={opt_in}"
            );
            // A missing tenant still follows the policy.
            let res = svc.clone().oneshot(post(None, false)).await;
            assert_eq!(res.is_ok(), policy != MissingTenant::Reject, "{policy:?}");
        }
    }
}
