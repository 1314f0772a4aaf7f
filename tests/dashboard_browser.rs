#![cfg(unix)]
//! The operations dashboard in a real browser: the demo as a process on a free loopback port, a
//! breaker forced open and the gate set through the admin API, then headless Chromium opens
//! `/palisade/dashboard`, lets its JavaScript poll, and the rendered DOM is checked: every panel of
//! the demo's stack present, the breaker shown open, the gate at the level set, no JavaScript error.
//! It also writes the README's screenshot, `docs/dashboard.png`.
//!
//! Nothing is installed at run time. The browser is found on `PATH` (`chromium-headless-shell`,
//! `chromium`, `chromium-browser`, `google-chrome`, or `PALISADE_CHROMIUM`); without one the test
//! prints why and passes — unless `PALISADE_REQUIRE_BROWSER=1` (as in `.ci/run`), when it fails.
//! Every process has a deadline and is killed on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::{sleep, Instant};

/// How long the first `cargo run` may take to build and start the demo.
const START_DEADLINE: Duration = Duration::from_secs(300);
/// How long one browser run may take.
const BROWSER_DEADLINE: Duration = Duration::from_secs(60);
/// Virtual time the page gets to run its polls in (Chromium fast-forwards timers).
const VIRTUAL_TIME_MS: u32 = 6000;

/// A child process, killed on drop unless it already exited.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The browser to use, if any: `PALISADE_CHROMIUM`, else the first candidate on `PATH`.
fn find_browser() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PALISADE_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for name in [
        "chromium-headless-shell",
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// Starts the demo on a free loopback port and returns it with its address.
async fn start_demo() -> (Proc, SocketAddr) {
    let mut child = Command::new(env!("CARGO"))
        .args([
            "run",
            "--quiet",
            "--features",
            "full",
            "--example",
            "demo",
            "--",
            "--addr",
            "127.0.0.1:0",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("PALISADE_ADDR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cargo runs");
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                // Keep draining so the demo never blocks on a full pipe.
                continue;
            }
        }
    });
    let mut demo = Proc(child);
    let started = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(line) => {
                if let Some(addr) = line.strip_prefix("listening on http://") {
                    return (demo, addr.trim().parse().expect("a socket address"));
                }
                continue;
            }
            Err(mpsc::TryRecvError::Disconnected) => {
                let status = demo.0.wait().ok();
                panic!("the demo exited ({status:?}) before listening");
            }
            Err(mpsc::TryRecvError::Empty) => {}
        }
        if let Ok(Some(status)) = demo.0.try_wait() {
            panic!("the demo exited ({status}) before listening");
        }
        assert!(
            started.elapsed() < START_DEADLINE,
            "the demo did not listen within {START_DEADLINE:?}"
        );
        sleep(Duration::from_millis(100)).await;
    }
}

/// One HTTP/1.1 request over a fresh connection; returns the status and the body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).expect("sends");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("reads");
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"));
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

/// Runs the browser with `args` and the flags this closed network needs, in a fresh profile;
/// returns stdout and stderr. Killed at the deadline.
async fn browser(bin: &Path, args: &[String]) -> (String, String) {
    static RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let profile = std::env::temp_dir().join(format!(
        "palisade-dashboard-chromium-{}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&profile);
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let readers = [
        child.stdout.take().map(|mut s| {
            std::thread::spawn(move || {
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                buf
            })
        }),
        child.stderr.take().map(|mut s| {
            std::thread::spawn(move || {
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                buf
            })
        }),
    ];
    let mut proc = Proc(child);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = proc.0.try_wait().expect("waits") {
            break status;
        }
        if started.elapsed() > BROWSER_DEADLINE {
            drop(proc);
            panic!(
                "{} did not finish within {BROWSER_DEADLINE:?}",
                bin.display()
            );
        }
        sleep(Duration::from_millis(50)).await;
    };
    let [out, err] = readers.map(|r| r.map(|h| h.join().unwrap_or_default()).unwrap_or_default());
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        status.success(),
        "{} failed ({status}):\n{err}",
        bin.display()
    );
    (out, err)
}

/// The opening tag of the first element carrying `attr` (e.g. `data-breaker="upstream"`).
fn tag_with<'a>(dom: &'a str, attr: &str) -> Option<&'a str> {
    let at = dom.find(attr)?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    Some(&dom[start..=end])
}

/// The value of `name="..."` in an opening tag.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let at = tag.find(&key)? + key.len();
    Some(&tag[at..at + tag[at..].find('"')?])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_the_demo_live_in_a_real_browser() {
    let Some(bin) = find_browser() else {
        let msg = "no headless Chromium on PATH (chromium-headless-shell, chromium, google-chrome; \
                   or set PALISADE_CHROMIUM): install Debian's `chromium-headless-shell` or `chromium`";
        if std::env::var("PALISADE_REQUIRE_BROWSER").as_deref() == Ok("1") {
            panic!("PALISADE_REQUIRE_BROWSER=1 but {msg}");
        }
        eprintln!("skipping the browser test: {msg}");
        return;
    };
    let (_demo, addr) = start_demo().await;

    // Some traffic: a tenant over its quota (429s for the top refused tenants), a gold-tier one.
    for _ in 0..8 {
        http(addr, "GET", "/hello", &[("x-tenant-id", "acme")], "");
    }
    for _ in 0..3 {
        http(addr, "GET", "/hello", &[("x-tenant-id", "vip")], "");
        http(addr, "GET", "/upstream", &[("x-tenant-id", "vip")], "");
    }

    // Operator actions through the admin API: force the upstream breaker open, set the gate.
    let action = [("x-palisade-action", "test")];
    let (status, body) = http(
        addr,
        "POST",
        "/admin/dashboard/actions?action=breaker.force_open&stack=upstream",
        &action,
        "",
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(
        addr,
        "POST",
        "/admin/dashboard/actions?action=breaker.force_open&stack=upstream",
        &[],
        "",
    );
    assert_eq!(status, 403, "actions need the header: {body}");
    let (status, body) = http(
        addr,
        "POST",
        "/admin/degrade",
        &[],
        r#"{"level":"degraded","reason":"browser test"}"#,
    );
    assert_eq!(status, 200, "{body}");

    // A few seconds of history for the charts (the demo samples every second).
    for _ in 0..3 {
        http(addr, "GET", "/hello", &[("x-tenant-id", "acme")], "");
        http(addr, "GET", "/hello", &[("x-tenant-id", "vip")], "");
        sleep(Duration::from_millis(700)).await;
    }

    // What the page will be drawing.
    let (status, data) = http(addr, "GET", "/palisade/dashboard/data", &[], "");
    assert_eq!(status, 200);
    let data: Value = serde_json::from_str(&data).expect("the data is JSON");
    assert!(
        data["times"].as_array().unwrap().len() >= 2,
        "histories fill: {data}"
    );

    let url = format!("http://{addr}/palisade/dashboard");
    let started = Instant::now();
    let (dom, log) = browser(
        &bin,
        &[
            format!("--virtual-time-budget={VIRTUAL_TIME_MS}"),
            "--dump-dom".to_owned(),
            url.clone(),
        ],
    )
    .await;
    eprintln!("dump-dom took {:?}", started.elapsed());

    let body =
        tag_with(&dom, "data-ready=").unwrap_or_else(|| panic!("no <body> state in:\n{dom}"));
    assert_eq!(
        attr(body, "data-ready"),
        Some("true"),
        "the page rendered data: {body}"
    );
    assert_eq!(attr(body, "data-stale"), Some("false"), "{body}");
    let updates: u32 = attr(body, "data-updates").unwrap().parse().unwrap();
    assert!(updates >= 2, "the page polls: {updates} updates");

    let errors = tag_with(&dom, "id=\"js-errors\"").expect("the error list");
    assert_eq!(
        attr(errors, "data-count"),
        Some("0"),
        "JavaScript errors:\n{dom}"
    );
    for line in log.lines().filter(|l| l.contains("CONSOLE")) {
        assert!(
            !line.contains("Uncaught") && !line.to_lowercase().contains("error"),
            "console: {line}"
        );
    }

    let mut panels = vec![
        "health",
        "breakers",
        "rate-limits",
        "bulkheads",
        "gates",
        "audit",
    ];
    if data["latency"].as_array().is_some_and(|l| !l.is_empty()) {
        panels.push("latency");
    }
    for panel in panels {
        let tag = tag_with(&dom, &format!("id=\"panel-{panel}\""))
            .unwrap_or_else(|| panic!("no {panel} panel"));
        assert!(
            !tag.contains(" hidden"),
            "the {panel} panel is shown: {tag}"
        );
    }

    let breaker = tag_with(&dom, "data-breaker=\"upstream\"").expect("the upstream breaker card");
    assert_eq!(attr(breaker, "data-state"), Some("open"), "{breaker}");
    let server_breaker = tag_with(&dom, "data-breaker=\"server\"").expect("the server breaker");
    assert_eq!(attr(server_breaker, "data-state"), Some("closed"));
    let gate = tag_with(&dom, "data-gate=\"server\"").expect("the gate card");
    assert_eq!(attr(gate, "data-level"), Some("degraded"), "{gate}");
    assert!(
        tag_with(&dom, "data-tenant=\"acme\"").is_some(),
        "acme among the refused tenants"
    );
    assert!(
        tag_with(&dom, "data-component=\"process\"").is_some(),
        "health components"
    );
    assert!(
        dom.contains("breaker.forced_open"),
        "the latest audit records"
    );
    assert!(
        dom.contains("<button"),
        "operator controls (the demo opts in)"
    );

    // The README's screenshot.
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&shot);
    browser(
        &bin,
        &[
            format!("--virtual-time-budget={VIRTUAL_TIME_MS}"),
            "--hide-scrollbars".to_owned(),
            "--window-size=1280,1900".to_owned(),
            format!("--screenshot={}", shot.display()),
            url,
        ],
    )
    .await;
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(png.len() > 20_000, "a real picture ({} bytes)", png.len());
}
