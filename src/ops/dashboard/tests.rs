//! The dashboard's JSON: its shape, and a bound on every list.

use super::*;
use palisade_core::audit::{Audit, AuditEvent, MemorySink};
use palisade_core::health::ComponentKind;

fn get(path: &str) -> Request<()> {
    Request::get(path).body(()).unwrap()
}

fn body(res: Response<OpsBody>) -> String {
    let data = res.into_body().data.unwrap_or_default();
    String::from_utf8(data.to_vec()).unwrap()
}

#[test]
fn display_key_truncates_and_cleans() {
    assert_eq!(display_key("acme"), "acme");
    assert_eq!(display_key("a\nb"), "a?b");
    let long = "x".repeat(100);
    let shown = display_key(&long);
    assert_eq!(shown.chars().count(), MAX_KEY_CHARS);
    assert!(shown.ends_with('…'));
    // Exactly at the limit: unchanged.
    let exact = "y".repeat(MAX_KEY_CHARS);
    assert_eq!(display_key(&exact), exact);
    // Multi-byte characters are cut on a character boundary.
    let wide = "é".repeat(50);
    assert_eq!(display_key(&wide).chars().count(), MAX_KEY_CHARS);
}

#[test]
fn history_is_bounded_and_aligned() {
    let mut h = History::new(10);
    for i in 0..25u64 {
        let mut v = BTreeMap::new();
        v.insert("a".to_owned(), i as f64);
        if i % 2 == 1 {
            v.insert("b".to_owned(), 1.0);
        }
        if i == 20 {
            v.insert("late".to_owned(), 5.0);
        }
        h.push(i * 1000, v);
        assert!(h.times.len() <= 10);
        for s in h.series.values() {
            assert_eq!(
                s.len(),
                h.times.len(),
                "every series aligned with the time axis"
            );
        }
    }
    assert_eq!(h.times.front(), Some(&15_000));
    assert_eq!(h.series["a"].back(), Some(&Some(24.0)));
    assert_eq!(
        h.series["b"].back(),
        Some(&None),
        "a gap where b had no value"
    );
    assert_eq!(h.series["late"].iter().filter(|v| v.is_some()).count(), 1);
    // Non-finite values become gaps.
    h.push(30_000, BTreeMap::from([("a".to_owned(), f64::NAN)]));
    assert_eq!(h.series["a"].back(), Some(&None));
}

#[test]
fn history_caps_the_number_of_series_and_forgets_empty_ones() {
    let mut h = History::new(10);
    let many: BTreeMap<String, f64> = (0..MAX_SERIES + 50)
        .map(|i| (format!("s{i:05}"), 1.0))
        .collect();
    h.push(0, many);
    assert_eq!(h.series.len(), MAX_SERIES);
    for t in 1..=10 {
        h.push(t * 1000, BTreeMap::new());
    }
    assert!(h.series.is_empty(), "series with no value left are dropped");
}

#[test]
fn history_rates_are_per_second_and_skip_resets() {
    let mut h = History::new(10);
    assert_eq!(
        h.rate("c".into(), 0, 10.0),
        None,
        "no rate at the first reading"
    );
    assert_eq!(h.rate("c".into(), 2000, 30.0), Some(10.0));
    assert_eq!(h.rate("c".into(), 3000, 5.0), None, "a counter reset");
    assert_eq!(h.rate("c".into(), 3000, 6.0), None, "no time passed");
}

#[test]
fn refused_tenants_are_bounded_and_keep_heavy_hitters() {
    let refused = RefusedTenants::new(8);
    for i in 0..10_000u32 {
        refused.record(&format!("random-{i}"));
        if i % 3 == 0 {
            refused.record("attacker");
        }
    }
    assert_eq!(refused.tracked(), 8, "never more than the capacity");
    let top = refused.top(TOP_REFUSED);
    assert!(top.len() <= 8);
    assert_eq!(top[0].tenant, "attacker");
    assert!(top[0].refused >= 3334);
    assert_eq!(refused.total(), 10_000 + 3334);
    // Long keys are stored truncated.
    let long = RefusedTenants::new(4);
    long.record(&"k".repeat(10_000));
    assert_eq!(long.top(1)[0].tenant.chars().count(), MAX_KEY_CHARS);
    assert_eq!(RefusedTenants::new(0).capacity(), 1);
    assert_eq!(
        RefusedTenants::new(usize::MAX).capacity(),
        RefusedTenants::MAX_TRACKED
    );
    let json = refused.json(3);
    assert_eq!(json["tenants"].as_array().unwrap().len(), 3);
    assert_eq!(json["capacity"], 8);
}

#[tokio::test(flavor = "current_thread")]
async fn audit_tail_verifies_and_keeps_the_latest_records() {
    let key = AuditKey::generate();
    let tail = AuditTail::new(5, Some(key.clone()));
    let ring = MemorySink::new(100);
    let audit = Audit::builder()
        .key(key)
        .sink(tail.tee(ring.clone()))
        .build()
        .unwrap();
    for n in 0..12 {
        audit.record(AuditEvent::new("test.event").detail("n", n));
    }
    audit.flush().await.unwrap();
    assert_eq!(tail.verified_records(), 12);
    assert_eq!(tail.verified_head(), audit.head());
    assert_eq!(tail.error(), None);
    let recent = tail.recent();
    assert_eq!(recent.len(), 5, "bounded by the capacity");
    assert_eq!(recent.last().unwrap().seq, 12);
    let json = tail.json(3);
    assert_eq!(json["recent"].as_array().unwrap().len(), 3);
    assert_eq!(json["recent"][0]["seq"], 12, "newest first");
    assert_eq!(json["verified"], true);
    assert_eq!(ring.len(), 12, "the wrapped sink got everything");
}

#[tokio::test(flavor = "current_thread")]
async fn audit_tail_reports_a_broken_chain() {
    let (audit, ring) = Audit::memory(10);
    audit.record(AuditEvent::new("one"));
    audit.record(AuditEvent::new("two"));
    audit.flush().await.unwrap();
    let records = ring.records();
    // Without a key: sequence and links only.
    let tail = AuditTail::new(10, None);
    tail.appended(&records[..1]);
    assert_eq!(tail.verified_head().map(|h| h.seq), Some(1));
    tail.appended(&records[..1]); // record 1 again: not a continuation
    assert!(tail.error().is_some());
    assert_eq!(tail.json(10)["verified"], false);
    assert_eq!(tail.verified_records(), 1);
    // With the wrong key: the keyed hash fails.
    let wrong = AuditTail::new(10, Some(AuditKey::generate()));
    wrong.appended(&records);
    assert!(wrong.error().is_some());
    assert_eq!(wrong.verified_head(), None);
}

#[test]
fn a_bare_dashboard_has_the_documented_shape() {
    let d = Dashboard::builder().title("t\u{7}itle").build();
    let v = d.data();
    assert_eq!(v["version"], 1);
    assert_eq!(v["title"], "t?itle");
    assert_eq!(v["interval_ms"], 1000);
    assert_eq!(v["history_points"], 120);
    assert!(v["times"].is_array());
    for list in ["breakers", "rate_limits", "bulkheads", "gates", "latency"] {
        assert_eq!(v[list], json!([]), "{list}");
    }
    for absent in ["actions", "health", "refused_tenants", "audit", "status"] {
        assert!(v[absent].is_null(), "{absent}");
    }
    // Builder limits are clamped.
    let d = Dashboard::builder()
        .interval(Duration::from_millis(1))
        .history(1_000_000)
        .build();
    let v = d.data();
    assert_eq!(v["interval_ms"], 250);
    assert_eq!(v["history_points"], 3600);
}

#[test]
fn health_components_are_listed_and_bounded() {
    let health = Health::new();
    for i in 0..(MAX_COMPONENTS + 6) {
        health
            .register(format!("c{i:03}"), ComponentKind::Readiness)
            .healthy();
    }
    health
        .register("db", ComponentKind::Both)
        .unhealthy("x".repeat(1000));
    let v = Dashboard::builder().health(&health).build().data();
    let h = &v["health"];
    assert_eq!(h["readiness"], "unhealthy");
    assert_eq!(h["liveness"], "unhealthy");
    let components = h["components"].as_array().unwrap();
    assert_eq!(components.len(), MAX_COMPONENTS);
    assert_eq!(h["components_truncated"], 7);
    for c in components {
        for field in ["name", "kind", "state", "since"] {
            assert!(!c[field].is_null(), "{field} in {c}");
        }
    }
    let db = Dashboard::builder().health(&health).build().data();
    let db = db["health"]["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "db")
        .cloned();
    // `db` sorts after the c### names, so it is among the truncated ones; check a reason bound on
    // a dashboard that sees it.
    assert!(db.is_none());
    let small = Health::new();
    small
        .register("db", ComponentKind::Readiness)
        .unhealthy("y".repeat(1000));
    let v = Dashboard::builder().health(&small).build().data();
    let reason = v["health"]["components"][0]["reason"].as_str().unwrap();
    assert_eq!(reason.chars().count(), 160);
}

#[test]
fn the_page_is_self_contained_html_with_a_strict_policy() {
    let mut d = Dashboard::builder().build();
    let res = d.call(get("/palisade/dashboard")).into_inner().unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
    let csp = res.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
    let html = body(res);
    assert!(html.starts_with("<!doctype html>"));
    assert!(html.contains("<style>") && html.contains("<script>"));
    for panel in [
        "health",
        "breakers",
        "rate-limits",
        "bulkheads",
        "gates",
        "latency",
        "audit",
    ] {
        assert!(html.contains(&format!("data-panel=\"{panel}\"")), "{panel}");
    }
    assert!(html.contains("prefers-color-scheme: dark"));
    // Nothing is loaded from elsewhere.
    for external in ["http://", "https://", "src=", "<link"] {
        let hits: Vec<_> = html
            .match_indices(external)
            .filter(|(i, _)| !html[*i..].starts_with("http://www.w3.org/2000/svg"))
            .collect();
        assert!(hits.is_empty(), "{external} in the page");
    }

    let res = d
        .call(get("/palisade/dashboard/data"))
        .into_inner()
        .unwrap();
    assert_eq!(res.headers()[CONTENT_TYPE], "application/json");
    let v: Value = serde_json::from_str(&body(res)).unwrap();
    assert_eq!(v["version"], 1);

    let head = Request::head("/palisade/dashboard").body(()).unwrap();
    let res = d.call(head).into_inner().unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.into_body().data.is_none());

    let post = Request::post("/palisade/dashboard").body(()).unwrap();
    let res = d.call(post).into_inner().unwrap();
    assert_eq!(res.status(), 405);
}

#[cfg(all(
    feature = "breaker",
    feature = "ratelimit",
    feature = "bulkhead",
    feature = "degrade"
))]
mod with_a_stack {
    use super::*;
    use crate::stack::ServerStack;
    use palisade_breaker::CircuitBreakerLayer;
    use palisade_bulkhead::BulkheadLayer;
    use palisade_core::key::HeaderKey;
    use palisade_degrade::{GateLayer, Level};
    use palisade_ratelimit::{Rate, RateLimitLayer};

    fn stack() -> (Health, Audit, crate::stack::Handles) {
        let health = Health::new();
        let (audit, _log) = Audit::memory(1024);
        let stack = ServerStack::builder()
            .health(&health)
            .audit(&audit)
            .gate(GateLayer::builder().name("api"))
            .rate_limit(
                RateLimitLayer::builder(HeaderKey::from_static("x-tenant-id"))
                    .default_rate(Rate::per_second(5).burst(5))
                    .tier("gold", Rate::per_second(50)),
            )
            .bulkhead(BulkheadLayer::builder().name("api").max_concurrent(4))
            .breaker(CircuitBreakerLayer::builder().name("app"))
            .build()
            .unwrap();
        (health, audit, stack.handles().clone())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn every_panel_of_a_stack_is_in_the_json() {
        let (health, _audit, handles) = stack();
        let refused = RefusedTenants::new(16);
        for i in 0..100 {
            refused.record(&format!("t{i}"));
        }
        let registry = StatusRegistry::new();
        handles.register_status(&registry, "server.");
        let d = Dashboard::builder()
            .health(&health)
            .stack("server", &handles)
            .status(registry)
            .refused_tenants(refused)
            .actions_url("/admin/dashboard/actions")
            .build();
        let v = d.data();

        let b = &v["breakers"][0];
        assert_eq!(b["stack"], "server");
        assert_eq!(b["state"], "closed");
        for f in [
            "mode",
            "failure_rate",
            "slow_rate",
            "thresholds",
            "trips",
            "rejected",
            "window_calls",
        ] {
            assert!(!b[f].is_null(), "breaker.{f}");
        }
        assert!(b["history"]["failure_rate"].is_array());

        let rl = &v["rate_limits"][0];
        let tiers = rl["tiers"].as_array().unwrap();
        assert!(tiers.len() >= 2 && tiers.len() <= MAX_TIERS);
        assert!(tiers.iter().any(|t| t["name"] == "gold"));
        assert!(tiers[0]["history"]["admitted_per_s"].is_array());
        assert_eq!(rl["tiers_truncated"], 0);

        let top = &v["refused_tenants"];
        assert_eq!(top["tenants"].as_array().unwrap().len(), TOP_REFUSED);
        assert_eq!(top["tracked"], 16);
        assert_eq!(top["total"], 100);

        let bh = &v["bulkheads"][0];
        assert_eq!(bh["limit"], 4);
        assert_eq!(bh["in_flight"], 0);

        let g = &v["gates"][0];
        assert_eq!(g["level"], "normal");
        assert_eq!(g["read_only"], false);
        assert!(g["since_ms"].is_u64());

        assert_eq!(v["audit"]["enabled"], true);
        assert!(v["audit"]["tail"].is_null());
        assert!(v["status"]["server.breaker"].is_object());
        assert_eq!(v["actions"]["url"], "/admin/dashboard/actions");
        assert_eq!(v["actions"]["gate_levels"].as_array().unwrap().len(), 5);
        assert_eq!(v["times"].as_array().unwrap().len(), 1);
        // Polled again at once: no second sample (one per interval).
        assert_eq!(d.data()["times"].as_array().unwrap().len(), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn histories_fill_per_interval_and_stay_bounded() {
        let (health, _audit, handles) = stack();
        let d = Dashboard::builder()
            .health(&health)
            .stack("server", &handles)
            .history(10)
            .build();
        for i in 0..30u64 {
            if i == 20 {
                handles.gate().unwrap().set_level(Level::ReadOnly, "test");
            }
            d.sample_at(1_000_000 + i * 1000);
        }
        let v = d.data_at(1_030_000);
        let times = v["times"].as_array().unwrap();
        assert_eq!(times.len(), 10);
        let g = &v["gates"][0];
        assert_eq!(g["level"], "read_only");
        assert_eq!(g["read_only"], true);
        assert_eq!(g["since_ms"], 1_020_000);
        let level = g["history"]["level"].as_array().unwrap();
        assert_eq!(level.len(), 10);
        assert_eq!(level.last().unwrap(), 3.0);
        for tier in v["rate_limits"][0]["tiers"].as_array().unwrap() {
            assert_eq!(
                tier["history"]["admitted_per_s"].as_array().unwrap().len(),
                10
            );
        }
        assert_eq!(
            v["bulkheads"][0]["history"]["limit"]
                .as_array()
                .unwrap()
                .len(),
            10
        );
        // Samples closer than the interval are skipped.
        d.sample_at(1_029_500);
        assert_eq!(
            d.data_at(1_029_500)["times"][9],
            1_029_000,
            "the last sample is still the one from 1 029 000"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn stacks_are_capped_and_named_once() {
        let (_health, _audit, handles) = stack();
        let mut b = Dashboard::builder();
        for i in 0..(MAX_STACKS + 5) {
            b = b.stack(format!("s{i}"), &handles);
        }
        b = b.stack("s0", &handles);
        let d = b.build();
        assert_eq!(d.inner.stacks.len(), MAX_STACKS);
        assert_eq!(d.data()["breakers"].as_array().unwrap().len(), MAX_STACKS);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn operator_actions_need_post_the_header_and_a_known_stack() {
        let (health, audit, handles) = stack();
        let d = Dashboard::builder()
            .health(&health)
            .stack("server", &handles)
            .build();
        let mut actions = d.actions();
        let call = |actions: &mut DashboardActions, method: Method, uri: &str, header: bool| {
            let mut req = Request::builder().method(method).uri(uri);
            if header {
                req = req.header(ACTION_HEADER, "test");
            }
            actions.call(req.body(()).unwrap()).into_inner().unwrap()
        };
        let uri = "/a?action=breaker.force_open&stack=server";
        assert_eq!(call(&mut actions, Method::GET, uri, true).status(), 405);
        assert_eq!(call(&mut actions, Method::POST, uri, false).status(), 403);
        assert_eq!(
            handles.breaker().unwrap().state(),
            palisade_breaker::CircuitState::Closed
        );
        let res = call(&mut actions, Method::POST, uri, true);
        assert_eq!(res.status(), 200);
        let v: Value = serde_json::from_str(&body(res)).unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(v["state"], "open");
        assert_eq!(d.data()["breakers"][0]["state"], "open");

        let res = call(
            &mut actions,
            Method::POST,
            "/a?action=gate.set_level&stack=server&level=read_only",
            true,
        );
        assert_eq!(res.status(), 200);
        assert_eq!(handles.gate().unwrap().level(), Level::ReadOnly);
        let bad = "/a?action=gate.set_level&stack=server&level=panic";
        assert_eq!(call(&mut actions, Method::POST, bad, true).status(), 400);
        let unknown = "/a?action=breaker.reset&stack=nope";
        assert_eq!(
            call(&mut actions, Method::POST, unknown, true).status(),
            404
        );
        let what = "/a?action=launch&stack=server";
        assert_eq!(call(&mut actions, Method::POST, what, true).status(), 400);
        assert_eq!(call(&mut actions, Method::POST, "/a", true).status(), 400);
        let res = call(
            &mut actions,
            Method::POST,
            "/a?action=breaker.reset&stack=server",
            true,
        );
        assert_eq!(res.status(), 200);
        assert_eq!(
            handles.breaker().unwrap().state(),
            palisade_breaker::CircuitState::Closed
        );
        audit.flush().await.unwrap();
        assert!(audit.appended_total() >= 3, "actions are audited");

        // A stack without the layer: 409.
        let bare = ServerStack::builder().build().unwrap();
        let d = Dashboard::builder().stack("bare", bare.handles()).build();
        let mut actions = d.actions();
        let res = call(
            &mut actions,
            Method::POST,
            "/a?action=breaker.force_open&stack=bare",
            true,
        );
        assert_eq!(res.status(), 409);
    }
}

#[cfg(feature = "heal")]
#[tokio::test(flavor = "current_thread")]
async fn latency_signals_are_listed_and_bounded() {
    use palisade_heal::signals::recorder::{RecorderConfig, Recorders};
    let recorders = Recorders::new(RecorderConfig::default());
    for i in 0..(MAX_SIGNALS + 3) {
        let r = recorders.recorder(&format!("GET /r{i:02}")).unwrap();
        for ms in 1..=100 {
            r.record_success(Duration::from_millis(ms));
        }
    }
    let v = Dashboard::builder().latency(recorders).build().data();
    let latency = v["latency"].as_array().unwrap();
    assert_eq!(latency.len(), MAX_SIGNALS);
    assert_eq!(v["latency_truncated"], 3);
    let first = &latency[0];
    assert_eq!(first["signal"], "GET /r00");
    let w = &first["windows"][0];
    assert_eq!(w["count"], 100);
    let p99 = w["p99_ms"].as_f64().unwrap();
    assert!((p99 - 99.0).abs() < 3.0, "p99 {p99}");
    assert_eq!(first["history"]["p99"].as_array().unwrap().len(), 1);
}
