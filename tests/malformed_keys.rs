//! Issue 12, item 2, through the config file: `missing_key = "anonymous"` pools requests *without* a tenant;
//! a malformed tenant (too long, empty, not visible ASCII, sent twice) is a 400 problem unless the file opts
//! in with `malformed_key = "as_missing"`. The demo's own config answers a 10 kB `x-tenant-id` with 400.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use palisade::audit::Audit;
use palisade::config::{Config, ConfiguredServerStack};
use palisade::health::Health;
use tower::{service_fn, Layer, ServiceExt};

fn stack(text: &str) -> ConfiguredServerStack {
    Config::from_toml_str(text, "test.toml")
        .unwrap_or_else(|e| panic!("{e}"))
        .server_stack_builder()
        .health(&Health::new())
        .audit(&Audit::disabled())
        .build()
        .unwrap()
}

async fn send(stack: &ConfiguredServerStack, tenant: &[&[u8]]) -> (StatusCode, String) {
    let svc = stack.layer(service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
    }));
    let mut req = Request::get("/hello")
        .body(Full::new(Bytes::new()))
        .unwrap();
    for t in tenant {
        req.headers_mut()
            .append("x-tenant-id", HeaderValue::from_bytes(t).unwrap());
    }
    let res = svc.oneshot(req).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn malformed() -> Vec<Vec<&'static [u8]>> {
    let long: &'static [u8] = Box::leak(vec![b'a'; 10_000].into_boxed_slice());
    vec![
        vec![long],
        vec![b""],
        vec!["münchen".as_bytes()],
        vec![b"a b"],
        vec![b"acme", b"acme"],
    ]
}

const ANONYMOUS: &str = r#"
[server]
tenant_header = "x-tenant-id"
tenant_max_len = 64

[server.rate_limit]
default_rate = { limit = 100, per = "1h" }
missing_key = "anonymous"
"#;

#[tokio::test]
async fn a_malformed_tenant_is_400_under_missing_key_anonymous() {
    for text in [
        ANONYMOUS.to_owned(),
        // The bulkhead's default missing-key policy is "anonymous" too.
        "[server]\ntenant_header = \"x-tenant-id\"\n[server.bulkhead]\nkeyed = true\n".to_owned(),
    ] {
        let s = stack(&text);
        assert_eq!(
            send(&s, &[]).await.0,
            StatusCode::OK,
            "no tenant: anonymous\n{text}"
        );
        assert_eq!(send(&s, &[b"acme"]).await.0, StatusCode::OK);
        for t in malformed() {
            let (status, body) = send(&s, &t).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
            assert!(
                body.contains("invalid key") && body.contains("x-tenant-id"),
                "{body}"
            );
        }
    }
}

#[tokio::test]
async fn malformed_key_as_missing_is_an_explicit_opt_in() {
    let s = stack(&format!("{ANONYMOUS}malformed_key = \"as_missing\"\n"));
    for t in malformed() {
        assert_eq!(send(&s, &t).await.0, StatusCode::OK);
    }
    let bad = Config::from_toml_str(
        &format!("{ANONYMOUS}malformed_key = \"pool\"\n"),
        "test.toml",
    )
    .unwrap_err();
    assert!(bad.to_string().contains("malformed_key"), "{bad}");
}

#[tokio::test]
async fn the_demo_config_answers_a_10_kb_tenant_with_400() {
    let s = stack(include_str!("../examples/demo.toml"));
    let long = vec![b'x'; 10_000];
    let (status, body) = send(&s, &[&long]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("over the limit of 64"), "{body}");
}
