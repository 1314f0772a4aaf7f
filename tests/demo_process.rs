#![cfg(unix)]
//! The demo server as a process: `cargo run --example demo` on a free loopback port with the shipped
//! `examples/demo.toml`, every route driven with a real HTTP client and checked against what the
//! demo's walkthrough promises, then SIGTERM and a clean exit 0. Bad arguments and a bad config file
//! must stop it with exit code 2 and a clear message, never a panic.
//!
//! The first run compiles the example (hence the generous start-up deadline); the child is always
//! killed when a test fails.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// How long the first `cargo run` may take to build and start the demo.
const START_DEADLINE: Duration = Duration::from_secs(300);
/// How long the demo may take to exit after SIGTERM (its drain deadline is 10 s).
const EXIT_DEADLINE: Duration = Duration::from_secs(30);
/// The server timeout in `examples/demo.toml`.
const SERVER_TIMEOUT_MS: u64 = 2_000;
/// The per-tenant quota in `examples/demo.toml` (burst).
const QUOTA: usize = 5;

/// The demo process; killed on drop unless it already exited.
struct Demo {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stdout_seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Demo {
    /// `cargo run --example demo -- ARGS` in the package directory, stdout and stderr captured.
    fn spawn(args: &[&str]) -> Demo {
        let mut child = Command::new(env!("CARGO"))
            .args([
                "run",
                "--quiet",
                "--features",
                "full",
                "--example",
                "demo",
                "--",
            ])
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("PALISADE_ADDR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cargo runs");
        let (tx, stdout) = mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Demo {
            child,
            stdout,
            stdout_seen: Vec::new(),
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Reads stdout until the `listening on http://ADDR` line; panics with the output so far if the
    /// process exits or the deadline passes first.
    fn wait_listening(&mut self) -> SocketAddr {
        let started = tokio::time::Instant::now();
        loop {
            let left = START_DEADLINE.saturating_sub(started.elapsed());
            match self
                .stdout
                .recv_timeout(left.min(Duration::from_millis(500)))
            {
                Ok(line) => {
                    let addr = line
                        .strip_prefix("listening on http://")
                        .map(|a| a.trim().parse().expect("a socket address"));
                    self.stdout_seen.push(line);
                    if let Some(addr) = addr {
                        return addr;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    panic!(
                        "the demo exited ({status:?}) before listening\nstdout:\n{}\nstderr:\n{}",
                        self.stdout_seen.join("\n"),
                        self.stderr()
                    );
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Drain what it printed before exiting.
                self.stdout_seen.extend(self.stdout.try_iter());
                panic!(
                    "the demo exited ({status}) before listening\nstdout:\n{}\nstderr:\n{}",
                    self.stdout_seen.join("\n"),
                    self.stderr()
                );
            }
            assert!(
                started.elapsed() < START_DEADLINE,
                "no `listening on` line within {START_DEADLINE:?}\nstdout:\n{}\nstderr:\n{}",
                self.stdout_seen.join("\n"),
                self.stderr()
            );
        }
    }

    /// Waits for the process to exit, up to `deadline`; `None` if it did not.
    async fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let started = tokio::time::Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // The process is gone, so its stderr pipe is closed: read it to the end.
                if let Some(reader) = self.stderr_reader.take() {
                    let _ = reader.join();
                }
                return Some(status);
            }
            if started.elapsed() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything printed to stdout so far.
    fn stdout_text(&mut self) -> String {
        self.stdout_seen.extend(self.stdout.try_iter());
        self.stdout_seen.join("\n")
    }
}

/// Runs a blocking step of a `Demo` off the async runtime's workers.
async fn blocking<T: Send + 'static>(
    demo: Demo,
    f: impl FnOnce(&mut Demo) -> T + Send + 'static,
) -> (Demo, T) {
    tokio::task::spawn_blocking(move || {
        let mut demo = demo;
        let out = f(&mut demo);
        (demo, out)
    })
    .await
    .expect("the blocking step finishes")
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// One response, read whole.
#[derive(Debug)]
struct Got {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

struct Http {
    client: HttpClient,
    addr: SocketAddr,
}

impl Http {
    fn new(addr: SocketAddr) -> Self {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
            addr,
        }
    }

    async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)], body: &str) -> Got {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("a valid request");
        let res = tokio::time::timeout(Duration::from_secs(15), self.client.request(req))
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no answer within 15 s"))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let (parts, body) = res.into_parts();
        let body = tokio::time::timeout(Duration::from_secs(15), body.collect())
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: body not complete within 15 s"))
            .unwrap_or_else(|e| panic!("{method} {path}: body: {e}"))
            .to_bytes();
        Got {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    async fn get(&self, path: &str, tenant: &str) -> Got {
        self.send(Method::GET, path, &[("x-tenant-id", tenant)], "")
            .await
    }

    async fn admin(&self, method: Method, path: &str, body: &str) -> Got {
        self.send(method, path, &[("content-type", "application/json")], body)
            .await
    }
}

#[track_caller]
fn expect_status(got: &Got, status: u16, what: &str) {
    assert_eq!(
        got.status.as_u16(),
        status,
        "{what}: expected {status}, got {} {}",
        got.status,
        got.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_every_route_as_documented_and_stops_cleanly_on_sigterm() {
    let demo = Demo::spawn(&["--addr", "127.0.0.1:0", "--config", "examples/demo.toml"]);
    let (demo, addr) = blocking(demo, |d| d.wait_listening()).await;
    let mut demo = demo;
    let http = Http::new(addr);

    // What it protects is printed before it listens.
    let banner = demo.stdout_text();
    for needle in ["rate limit", "timeout", "circuit breaker", "/upstream"] {
        assert!(
            banner.contains(needle),
            "the banner mentions {needle}:\n{banner}"
        );
    }

    // GET /hello.
    let hello = http.get("/hello", "t-hello").await;
    expect_status(&hello, 200, "GET /hello");
    assert!(hello.json()["message"].is_string());

    // Orders: key required, replay returns the same id, the handler ran once.
    let no_key = http
        .send(Method::POST, "/orders", &[("x-tenant-id", "t-orders")], "")
        .await;
    expect_status(&no_key, 400, "POST /orders without Idempotency-Key");
    let order = [
        ("x-tenant-id", "t-orders"),
        ("idempotency-key", "\"order-1\""),
    ];
    let first = http.send(Method::POST, "/orders", &order, "").await;
    assert!(
        first.status == StatusCode::CREATED || first.status == StatusCode::OK,
        "POST /orders: {} {}",
        first.status,
        first.text()
    );
    let id = first.json()["order_id"]
        .as_u64()
        .expect("a numeric order id");
    assert_eq!(first.header("idempotent-replayed"), None);
    let replay = http.send(Method::POST, "/orders", &order, "").await;
    assert_eq!(replay.status, first.status, "{}", replay.text());
    assert_eq!(
        replay.json()["order_id"].as_u64(),
        Some(id),
        "same order id"
    );
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    let count = http.get("/orders/count", "t-orders").await;
    expect_status(&count, 200, "GET /orders/count");
    assert_eq!(count.json()["created"].as_u64(), Some(1));

    // /slow: fast enough, too slow (504 problem), bad input (400).
    let quick = http.get("/slow?ms=10", "t-slow").await;
    expect_status(&quick, 200, "GET /slow?ms=10");
    let too_slow = http
        .get(&format!("/slow?ms={}", SERVER_TIMEOUT_MS + 1_000), "t-slow")
        .await;
    expect_status(&too_slow, 504, "GET /slow over the timeout");
    assert_eq!(
        too_slow.header("content-type"),
        Some("application/problem+json")
    );
    let bad = http.get("/slow?ms=soon", "t-slow").await;
    expect_status(&bad, 400, "GET /slow?ms=soon");
    assert!(bad.text().contains("ms"), "{}", bad.text());

    // /upstream, healthy.
    let fresh = http.get("/upstream", "t-upstream").await;
    expect_status(&fresh, 200, "GET /upstream");
    assert_eq!(fresh.header("x-palisade-fallback"), None);
    assert_eq!(fresh.json()["source"], "upstream");

    // The rate limit: a tenant's quota, then 429 with Retry-After.
    let mut admitted = 0;
    let mut limited = None;
    for _ in 0..QUOTA * 3 {
        let got = http.get("/hello", "t-flood").await;
        match got.status.as_u16() {
            200 => admitted += 1,
            429 => {
                limited = Some(got);
                break;
            }
            other => panic!("GET /hello while flooding: {other} {}", got.text()),
        }
    }
    let limited = limited.expect("a 429 once the quota is spent");
    assert!(
        admitted >= QUOTA,
        "the quota ({QUOTA}) is admitted first, got {admitted}"
    );
    assert!(limited.header("retry-after").is_some());
    // Another tenant is unaffected.
    expect_status(&http.get("/hello", "t-other").await, 200, "another tenant");

    // Ops endpoints (outside the stack).
    expect_status(&http.get("/healthz", "ops").await, 200, "GET /healthz");
    let ready = http.get("/readyz", "ops").await;
    expect_status(&ready, 200, "GET /readyz");
    assert_eq!(ready.json()["status"], "healthy");
    let status = http.get("/palisade/status", "ops").await;
    expect_status(&status, 200, "GET /palisade/status");
    let status = status.json();
    for key in ["server.rate_limit", "server.gate", "upstream.breaker"] {
        assert!(status.get(key).is_some(), "status has {key}: {status}");
    }
    let metrics = http.get("/metrics", "ops").await;
    expect_status(&metrics, 200, "GET /metrics");
    assert!(metrics
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain")));
    let text = metrics.text();
    for name in [
        "palisade_rate_limit_rejected_total{stack=\"server\",tier=\"default\"}",
        "palisade_breaker_state{stack=\"upstream\"}",
        "palisade_health_ready",
    ] {
        assert!(text.contains(name), "/metrics has {name}");
    }

    // Read-only mode: writes refused, reads served, then back to normal.
    let set = http
        .admin(
            Method::POST,
            "/admin/degrade",
            r#"{"level":"read_only","reason":"test"}"#,
        )
        .await;
    expect_status(&set, 200, "POST /admin/degrade read_only");
    let write = [("x-tenant-id", "t-ro"), ("idempotency-key", "\"order-ro\"")];
    let refused = http.send(Method::POST, "/orders", &write, "").await;
    expect_status(&refused, 503, "POST /orders in read-only mode");
    expect_status(
        &http.get("/hello", "t-ro").await,
        200,
        "GET in read-only mode",
    );
    let bad_level = http
        .admin(Method::POST, "/admin/degrade", r#"{"level":"sideways"}"#)
        .await;
    expect_status(&bad_level, 400, "an unknown level");
    assert!(
        bad_level.text().contains("sideways"),
        "{}",
        bad_level.text()
    );
    let bad_json = http.admin(Method::POST, "/admin/degrade", "{").await;
    expect_status(&bad_json, 400, "bad JSON");
    let normal = http
        .admin(Method::POST, "/admin/degrade", r#"{"level":"normal"}"#)
        .await;
    expect_status(&normal, 200, "POST /admin/degrade normal");
    let accepted = http.send(Method::POST, "/orders", &write, "").await;
    expect_status(&accepted, 201, "POST /orders after normal");

    // Chaos on the upstream: the breaker opens, the fallback answers, readiness degrades.
    let bad_fault = http
        .admin(
            Method::POST,
            "/admin/chaos",
            r#"{"target":"moon","kind":"status"}"#,
        )
        .await;
    expect_status(&bad_fault, 400, "an unknown chaos target");
    let injected = http
        .admin(
            Method::POST,
            "/admin/chaos",
            r#"{"target":"upstream","kind":"status","status":503,"probability":1.0,"ttl_ms":60000}"#,
        )
        .await;
    assert!(injected.status.is_success(), "{}", injected.text());
    let fault = injected.json()["id"].as_u64().expect("a fault id");
    let degraded = http.get("/upstream", "t-chaos").await;
    expect_status(&degraded, 200, "GET /upstream while broken");
    assert_eq!(degraded.header("x-palisade-fallback"), Some("upstream"));
    assert_eq!(degraded.json()["source"], "fallback");
    let status = http.get("/palisade/status", "ops").await.json();
    assert_eq!(
        status["upstream.breaker"]["state"], "open",
        "the upstream breaker opened: {status}"
    );
    let ready = http.get("/readyz", "ops").await;
    expect_status(&ready, 503, "GET /readyz with the upstream breaker open");
    assert_eq!(ready.json()["status"], "degraded");
    let again = http.get("/upstream", "t-chaos").await;
    assert_eq!(
        again.header("x-palisade-fallback"),
        Some("upstream"),
        "served by the fallback while open"
    );

    let removed = http
        .admin(Method::DELETE, &format!("/admin/chaos/{fault}"), "")
        .await;
    expect_status(&removed, 200, "DELETE the fault");
    let gone = http
        .admin(Method::DELETE, &format!("/admin/chaos/{fault}"), "")
        .await;
    expect_status(&gone, 404, "DELETE it again");
    let unknown = http.admin(Method::DELETE, "/admin/chaos/987654", "").await;
    expect_status(&unknown, 404, "DELETE an unknown fault");

    // Recovery: after the breaker's open wait, a probe succeeds and fresh answers are back.
    let started = tokio::time::Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let got = http.get("/upstream", &format!("t-recover-{attempt}")).await;
        expect_status(&got, 200, "GET /upstream while recovering");
        if got.header("x-palisade-fallback").is_none() {
            assert_eq!(got.json()["source"], "upstream");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the upstream recovers within 30 s of removing the fault"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ready = http.get("/readyz", "ops").await;
    expect_status(&ready, 200, "GET /readyz after recovery");

    // The audit log verifies, and recorded what happened.
    let verdict = http.admin(Method::GET, "/admin/audit/verify", "").await;
    expect_status(&verdict, 200, "GET /admin/audit/verify");
    let verdict = verdict.json();
    assert_eq!(verdict["verified"], true, "{verdict}");
    assert!(
        verdict["records"].as_u64().is_some_and(|n| n >= 3),
        "the gate changes and the breaker trip were audited: {verdict}"
    );

    // Reloading the unchanged file changes nothing.
    let reload = http.admin(Method::POST, "/admin/reload", "").await;
    expect_status(&reload, 200, "POST /admin/reload");
    let reload = reload.json();
    assert_eq!(reload["reloaded"], true, "{reload}");
    assert_eq!(reload["applied"], serde_json::json!([]), "{reload}");

    // SIGTERM: a graceful exit with status 0.
    let pid = demo.child.id().to_string();
    let kill = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(kill.success());
    let status = demo.wait_exit(EXIT_DEADLINE).await;
    let status =
        status.unwrap_or_else(|| panic!("the demo exits within {EXIT_DEADLINE:?} of SIGTERM"));
    let out = demo.stdout_text();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM\nstdout:\n{out}\nstderr:\n{}",
        demo.stderr()
    );
    assert!(out.contains("SIGTERM received"), "{out}");
    assert!(out.contains("\"verified\":true"), "{out}");
    assert!(out.contains("palisade demo stopped"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_and_bad_config_exit_with_code_2_and_a_clear_message() {
    let dir = std::env::temp_dir().join(format!("palisade-demo-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[server.rate_limit]\nburst_size = \"lots\"\n").unwrap();
    let bad = bad.display().to_string();

    for (args, needle) in [
        (
            vec!["--addr", "not-an-address"],
            "not-an-address".to_owned(),
        ),
        (
            vec![
                "--addr",
                "127.0.0.1:0",
                "--config",
                "/nonexistent/demo.toml",
            ],
            "/nonexistent/demo.toml".to_owned(),
        ),
        (vec!["--addr", "127.0.0.1:0", "--config", &bad], bad.clone()),
    ] {
        let mut demo = Demo::spawn(&args);
        let status = demo.wait_exit(START_DEADLINE).await;
        let status = status.unwrap_or_else(|| panic!("{args:?}: exits"));
        let stderr = demo.stderr();
        let stdout = demo.stdout_text();
        assert_eq!(
            status.code(),
            Some(2),
            "{args:?}: exit code\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        assert!(
            stderr.contains(&needle),
            "{args:?}: the error names {needle}:\n{stderr}"
        );
        assert!(
            !stderr.contains("panicked"),
            "{args:?}: no panic:\n{stderr}"
        );
        assert!(!stdout.contains("listening on"), "{args:?}: never listens");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
