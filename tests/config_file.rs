//! The config file end to end: every section builds a stack that serves requests, absent keys are
//! the builders' defaults, environment overrides, and live reload through the stack's handles.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use palisade::audit::Audit;
use palisade::breaker::CircuitBreakerLayer;
use palisade::bulkhead::BulkheadLayer;
use palisade::config::{Config, ConfigErrorKind, ConfiguredServerStack, RELOADED_KIND};
use palisade::degrade::Level;
use palisade::health::Health;
use palisade::ratelimit::{Rate, RateLimitLayer};
use palisade::stack::Handles;
use tower::{service_fn, Layer, ServiceBuilder, ServiceExt};

const EXAMPLE: &str = include_str!("../src/config/example.toml");

fn load(text: &str) -> Config {
    Config::from_toml_str(text, "test.toml").unwrap_or_else(|e| panic!("{e}"))
}

fn server(config: &Config, audit: &Audit) -> ConfiguredServerStack {
    config
        .server_stack_builder()
        .health(&Health::new())
        .audit(audit)
        .build()
        .unwrap()
}

/// Sends one request through `stack` around a handler answering `200 hello`.
async fn send(stack: &ConfiguredServerStack, req: Request<Full<Bytes>>) -> (StatusCode, Bytes) {
    let svc = stack.layer(service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
    }));
    let res = svc.oneshot(req).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

fn get(tenant: &str) -> Request<Full<Bytes>> {
    Request::get("/items")
        .header("x-tenant-id", tenant)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn every_server_section_builds_a_stack_that_serves() {
    let config = load(EXAMPLE);
    let (audit, _log) = Audit::memory(64);
    let stack = server(&config, &audit);
    let h = stack.handles();
    assert_eq!(h.gate().unwrap().name(), "api");
    assert!(h.rate_limit().is_some() && h.breaker().is_some() && h.chaos().is_some());
    assert_eq!(h.bulkhead().unwrap().max_concurrent(), 256);
    assert_eq!(h.bulkhead().unwrap().max_per_tenant(), Some(32));
    assert_eq!(h.timeout(), Some(Duration::from_secs(2)));
    assert_eq!(
        h.rate_limit()
            .unwrap()
            .tier_of(&HeaderValue::from_static("acme"))
            .as_ref(),
        "gold"
    );

    let (status, body) = send(&stack, get("acme")).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));
    // The tenant header is required by the rate limit (missing_key = "reject").
    let (status, _) = send(
        &stack,
        Request::get("/").body(Full::new(Bytes::new())).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // The fallback answers for an unavailable backend (an open circuit) with the configured response.
    h.breaker().unwrap().force_open();
    let (status, body) = send(&stack, get("acme")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(&body[..], br#"{"error":"temporarily unavailable"}"#);

    // Idempotency: a replay is answered from the store.
    let layer = stack
        .idempotency(config.idempotency_builder().unwrap())
        .unwrap();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let svc = layer.layer(service_fn({
        let calls = calls.clone();
        move |_req: Request<_>| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"paid")))) }
        }
    }));
    let pay = || {
        Request::post("/payments/1")
            .header("x-tenant-id", "acme")
            .header("idempotency-key", "k-1")
            .body(Full::new(Bytes::from_static(b"amount=1")))
            .unwrap()
    };
    for _ in 0..2 {
        let res = svc.clone().oneshot(pay()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    // `/payments/*` requires a key.
    let res = svc
        .oneshot(
            Request::post("/payments/2")
                .header("x-tenant-id", "acme")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    // The stack's rescue layer answers the refusal.
    assert_eq!(res.unwrap().status(), StatusCode::BAD_REQUEST);
}

async fn serve_echo(echo: common::Echo) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(echo)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    addr
}

#[tokio::test]
async fn every_client_section_builds_a_stack_that_calls_a_tonic_backend() {
    let text = r#"
        [client.total_timeout]
        timeout = "5s"
        [client.retry]
        max_attempts = 3
        backoff = { base = "5ms", max = "20ms", jitter = "1ms" }
        retry_paths = ["/test.Echo/"]
        [client.breaker]
        consecutive_failures = 5
        no_failure_rate = true
        [client.per_try_timeout]
        timeout = "1s"
        [client.bulkhead]
        max_concurrent = 4
        [client.chaos]
        seed = 1
    "#;
    let config = load(text);
    let echo = common::Echo::default();
    let addr = serve_echo(echo.clone()).await;
    let stack = config
        .client_stack_builder()
        .health(&Health::new())
        .build()
        .unwrap();
    let handles = stack.handles().clone();
    let client = ServiceBuilder::new()
        .layer(stack)
        .service(common::channel(addr).await);
    // `Flaky` fails twice, then answers: the configured retry (3 attempts, gRPC path allowed) hides it.
    let reply = common::call(client, "Flaky").await.unwrap();
    assert_eq!(&reply[..], b"ping");
    assert_eq!(echo.calls(), 3);
    assert_eq!(handles.retry().unwrap().retries(), 2);
    assert_eq!(handles.bulkhead().unwrap().max_concurrent(), 4);
    assert_eq!(handles.per_try_timeout(), Some(Duration::from_secs(1)));
}

#[tokio::test]
async fn absent_keys_are_the_builders_defaults() {
    let config = load("[server]\ntenant_header = \"x-tenant-id\"\n[server.rate_limit]\n[server.bulkhead]\n[server.breaker]\n[server.gate]\n");
    let stack = server(&config, &Audit::disabled());
    let h = stack.handles();

    let bulkhead = BulkheadLayer::builder().build().unwrap().handle();
    assert_eq!(
        h.bulkhead().unwrap().max_concurrent(),
        bulkhead.max_concurrent()
    );
    assert_eq!(h.bulkhead().unwrap().max_per_tenant(), None);

    let limiter = RateLimitLayer::builder(palisade::key::HeaderKey::from_static("x"))
        .build()
        .unwrap()
        .handle();
    let rate = |h: &palisade::ratelimit::RateLimitHandle| {
        h.metrics()
            .into_iter()
            .find(|m| &*m.name == "default")
            .unwrap()
            .rate
    };
    assert_eq!(rate(h.rate_limit().unwrap()), rate(&limiter));
    assert_eq!(rate(&limiter), Rate::per_second(100));

    let breaker = CircuitBreakerLayer::builder().build().unwrap().handle();
    assert_eq!(h.breaker().unwrap().thresholds(), breaker.thresholds());
    assert_eq!(h.gate().unwrap().level(), Level::Normal);
    assert_eq!(h.gate().unwrap().name(), "default");

    // And observably: the default 100/s burst 100 admits a burst of 100, not 101.
    let mut admitted = 0;
    for _ in 0..101 {
        if send(&stack, get("t1")).await.0 == StatusCode::OK {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 100);
}

#[tokio::test]
async fn environment_overrides_apply_and_create_sections() {
    let vars: BTreeMap<&str, &str> = [
        ("PALISADE_SERVER__TIMEOUT__TIMEOUT", "3s"),
        ("PALISADE_SERVER__BULKHEAD__MAX_CONCURRENT", "1"),
        ("PALISADE_SERVER__GATE__INITIAL_LEVEL", "read_only"),
    ]
    .into_iter()
    .collect();
    let config = Config::from_toml_str_with_env(
        "[server.bulkhead]\nmax_concurrent = 50\n[server.gate]\n",
        "t.toml",
        |n| vars.get(n).map(|v| (*v).to_owned()),
    )
    .unwrap();
    let stack = server(&config, &Audit::disabled());
    let h = stack.handles();
    assert_eq!(
        h.timeout(),
        Some(Duration::from_secs(3)),
        "a section created by a variable"
    );
    assert_eq!(h.bulkhead().unwrap().max_concurrent(), 1);
    assert_eq!(h.gate().unwrap().level(), Level::ReadOnly);
    let post = Request::post("/items")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&stack, post).await.0, StatusCode::SERVICE_UNAVAILABLE);

    // A wrong type through a variable names the variable.
    let err = Config::from_toml_str_with_env("[server.bulkhead]\n", "t.toml", |n| {
        (n == "PALISADE_SERVER__BULKHEAD__MAX_CONCURRENT").then(|| "lots".to_owned())
    })
    .unwrap_err();
    assert_eq!(err.kind(), ConfigErrorKind::InvalidValue);
    assert_eq!(
        err.env_var(),
        Some("PALISADE_SERVER__BULKHEAD__MAX_CONCURRENT")
    );
    assert!(
        err.to_string()
            .contains("PALISADE_SERVER__BULKHEAD__MAX_CONCURRENT"),
        "{err}"
    );
}

#[test]
fn load_reads_the_file_and_the_process_environment() {
    let dir = std::env::temp_dir().join(format!("palisade-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("palisade.toml");
    std::fs::write(&path, "[client.chaos]\nname = \"c\"\n").unwrap();
    // Only this test in this binary touches the process environment.
    std::env::set_var("PALISADE_CLIENT__CHAOS__SEED", "7");
    std::env::set_var("PALISADE_ADDR", "127.0.0.1:0 (not a config key)");
    let config = Config::load(&path).unwrap();
    assert_eq!(config.client.chaos.as_ref().unwrap().seed, Some(7));
    assert_eq!(config.origin(), path.display().to_string());

    std::env::set_var("PALISADE_CLIENT__CHAOS__SEEDS", "7");
    let err = Config::load(&path).unwrap_err();
    assert_eq!(err.kind(), ConfigErrorKind::UnknownKey);
    assert_eq!(err.env_var(), Some("PALISADE_CLIENT__CHAOS__SEEDS"));
    std::env::remove_var("PALISADE_CLIENT__CHAOS__SEEDS");
    std::env::remove_var("PALISADE_CLIENT__CHAOS__SEED");
    std::env::remove_var("PALISADE_ADDR");

    let err = Config::load(dir.join("missing.toml")).unwrap_err();
    assert_eq!(err.kind(), ConfigErrorKind::Io);
    assert!(err.to_string().contains("missing.toml"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

const QUOTAS: &str = r#"
[server]
tenant_header = "x-tenant-id"
[server.rate_limit]
default_rate = { limit = 1, per = "10s" }
[server.rate_limit.tiers]
gold = { limit = 10, per = "1s", burst = 1000 }
[server.bulkhead]
max_concurrent = 10
[server.gate]
[server.breaker]
consecutive_failures = 5
"#;

fn rate_of(h: &Handles, tier: &str) -> Option<Rate> {
    h.rate_limit()
        .unwrap()
        .metrics()
        .into_iter()
        .find(|m| &*m.name == tier)
        .map(|m| m.rate)
}

#[tokio::test]
async fn a_reload_that_changes_a_tenant_quota_takes_effect() {
    let old = load(QUOTAS);
    let (audit, log) = Audit::memory(64);
    let stack = server(&old, &audit);
    let h = stack.handles().clone();
    assert_eq!(send(&stack, get("acme")).await.0, StatusCode::OK);
    assert_eq!(
        send(&stack, get("acme")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );

    let new = load(&format!(
        "{QUOTAS}[server.rate_limit.tenants]\nacme = \"gold\"\n"
    ));
    let report = old.reload(&new, &h, None).unwrap();
    assert_eq!(report.applied().len(), 1, "{report}");
    assert!(
        report.applied()[0].starts_with("server.rate_limit.tenants.acme"),
        "{report}"
    );
    assert!(!report.needs_restart(), "{report}");
    assert_eq!(send(&stack, get("acme")).await.0, StatusCode::OK);
    // Another tenant still has the default quota.
    assert_eq!(send(&stack, get("other")).await.0, StatusCode::OK);
    assert_eq!(
        send(&stack, get("other")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );

    // And back: removing the assignment returns acme to the default tier.
    let report = new.reload(&old, &h, None).unwrap();
    assert_eq!(report.applied().len(), 1, "{report}");
    assert_eq!(
        h.rate_limit()
            .unwrap()
            .tier_of(&HeaderValue::from_static("acme"))
            .as_ref(),
        "default"
    );

    // The reload is in the audit log.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let reloads = log
            .records()
            .into_iter()
            .filter(|r| r.kind == RELOADED_KIND)
            .count();
        if reloads == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "audit records: {:?}",
            log.records()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_reload_applies_limits_levels_and_thresholds_and_reports_the_rest() {
    let old = load(QUOTAS);
    let stack = server(&old, &Audit::disabled());
    let h = stack.handles().clone();
    let text = QUOTAS
        .replace("limit = 1, per = \"10s\"", "limit = 5, per = \"10s\"")
        .replace("max_concurrent = 10", "max_concurrent = 3")
        .replace(
            "[server.gate]",
            "[server.gate]\ninitial_level = \"read_only\"\nname = \"renamed\"",
        )
        .replace("consecutive_failures = 5", "consecutive_failures = 2")
        + "[server.timeout]\ntimeout = \"1s\"\n";
    let new = load(&text);
    let report = old.reload(&new, &h, None).unwrap();
    assert_eq!(
        rate_of(&h, "default"),
        Some(Rate::new(5, Duration::from_secs(10)))
    );
    assert_eq!(h.bulkhead().unwrap().max_concurrent(), 3);
    assert_eq!(h.gate().unwrap().level(), Level::ReadOnly);
    assert_eq!(h.breaker().unwrap().thresholds().consecutive_failures, 2);
    assert_eq!(report.applied().len(), 4, "{report}");
    let restart = report.restart_required().join("\n");
    assert!(restart.contains("server.gate"), "{report}");
    assert!(restart.contains("server.timeout: layer added"), "{report}");
    // The gate's level is live: a write is refused now.
    let post = Request::post("/items")
        .header("x-tenant-id", "t")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&stack, post).await.0, StatusCode::SERVICE_UNAVAILABLE);
    // Back to normal.
    new.reload(&old, &h, None).unwrap();
    assert_eq!(h.gate().unwrap().level(), Level::Normal);
}

#[tokio::test]
async fn a_reload_that_fails_changes_nothing() {
    let old = load(QUOTAS);
    let stack = server(&old, &Audit::disabled());
    let h = stack.handles().clone();
    let before = (
        h.rate_limit().unwrap().metrics(),
        h.bulkhead().unwrap().max_concurrent(),
        h.gate().unwrap().level(),
        h.breaker().unwrap().thresholds(),
    );
    let state = |h: &Handles| {
        (
            h.rate_limit().unwrap().metrics(),
            h.bulkhead().unwrap().max_concurrent(),
            h.gate().unwrap().level(),
            h.breaker().unwrap().thresholds(),
        )
    };

    // Invalid: the whole new config is refused before anything is pushed.
    let mut invalid = load(
        &QUOTAS
            .replace("limit = 1, per = \"10s\"", "limit = 9, per = \"10s\"")
            .replace(
                "[server.gate]",
                "[server.gate]\ninitial_level = \"maintenance\"",
            ),
    );
    invalid.server.bulkhead.as_mut().unwrap().max_concurrent = Some(0);
    let err = old.reload(&invalid, &h, None).unwrap_err();
    assert_eq!(err.key(), Some("server.bulkhead.max_concurrent"));
    assert_eq!(state(&h), before);

    // Valid, but the running layer refuses a tier that refills slower than its idle timeout (10 min):
    // the default rate already changed is taken back.
    let refused = load(
        &QUOTAS
            .replace(
                "limit = 1, per = \"10s\" }",
                "limit = 9, per = \"10s\" }\nidle_timeout = \"2h\"",
            )
            .replace(
                "gold = { limit = 10, per = \"1s\", burst = 1000 }",
                "gold = { limit = 1, per = \"1h\" }",
            )
            .replace("max_concurrent = 10", "max_concurrent = 2"),
    );
    let err = old.reload(&refused, &h, None).unwrap_err();
    assert_eq!(err.kind(), ConfigErrorKind::Reload, "{err}");
    assert_eq!(err.key(), Some("server.rate_limit.tiers.gold"), "{err}");
    assert_eq!(state(&h), before);
}

/// Item 24: a reload refused part-way takes back the tiers it created, not only the ones it changed.
#[tokio::test]
async fn a_refused_reload_removes_the_tiers_it_created() {
    let old = load(QUOTAS);
    let stack = server(&old, &Audit::disabled());
    let h = stack.handles().clone();
    let before = h.rate_limit().unwrap().metrics();
    // "bronze" is created first (tiers apply in name order), then "gold" is refused by the running
    // layer: it refills slower than its idle timeout (10 min).
    let refused = load(
        &QUOTAS
            .replace(
                "limit = 1, per = \"10s\" }",
                "limit = 1, per = \"10s\" }\nidle_timeout = \"2h\"",
            )
            .replace(
                "gold = { limit = 10, per = \"1s\", burst = 1000 }",
                "bronze = { limit = 5, per = \"1s\" }\ngold = { limit = 1, per = \"1h\" }",
            ),
    );
    let err = old.reload(&refused, &h, None).unwrap_err();
    assert_eq!(err.key(), Some("server.rate_limit.tiers.gold"), "{err}");
    assert_eq!(
        h.rate_limit().unwrap().metrics(),
        before,
        "the refused reload left a tier behind"
    );
}

const ANONYMOUS: &str = r#"
[server]
tenant_header = "x-tenant-id"
[server.rate_limit]
default_rate = { limit = 100, per = "1s" }
missing_key = "anonymous"
"#;

/// Item 11: a reload that creates the `anonymous` tier applies it to keyless requests (it used to
/// report success and change nothing), and one that removes it hands them back to the default tier.
#[tokio::test]
async fn a_reload_creates_and_removes_the_anonymous_tier() {
    let keyless = || {
        Request::get("/items")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let old = load(ANONYMOUS);
    let stack = server(&old, &Audit::disabled());
    let h = stack.handles().clone();
    assert_eq!(send(&stack, keyless()).await.0, StatusCode::OK);
    let new = load(&format!(
        "{ANONYMOUS}[server.rate_limit.tiers]\nanonymous = {{ limit = 1, per = \"1m\" }}\n"
    ));
    let report = old.reload(&new, &h, None).unwrap();
    assert_eq!(report.applied().len(), 1, "{report}");
    let limit = h.rate_limit().unwrap();
    assert_eq!(limit.check_anonymous().policy.as_ref(), "anonymous");
    assert_eq!(
        send(&stack, keyless()).await.0,
        StatusCode::TOO_MANY_REQUESTS,
        "the anonymous tier the reload reported is not applied"
    );

    let report = new.reload(&old, &h, None).unwrap();
    assert_eq!(report.applied().len(), 1, "{report}");
    assert!(!report.needs_restart(), "{report}");
    assert!(
        report.applied()[0].starts_with("server.rate_limit.tiers.anonymous: tier removed"),
        "{report}"
    );
    assert_eq!(limit.check_anonymous().policy.as_ref(), "default");
    assert!(!limit.metrics().iter().any(|m| &*m.name == "anonymous"));
}
