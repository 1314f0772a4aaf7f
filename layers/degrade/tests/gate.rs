//! The degradation gate, end to end through the service. Time-dependent tests run on paused time.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use palisade_core::audit::Audit;
use palisade_core::classify::ErrorsOnly;
use palisade_core::error::{BoxError, Rejection};
use palisade_core::health::{Health, HealthState};
use palisade_core::signal::LoadSignal;
use palisade_degrade::{
    Builder, Gate, GateHandle, GateLayer, Level, Priority, ReadOnly, Shed, LEVEL_VAR, READ_ONLY_VAR,
};
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceExt};

type Req = Request<()>;
type Res = Response<String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Admitted,
    Shed,
    ReadOnly,
}

fn ok_service() -> impl Service<Req, Response = Res, Error = BoxError, Future = impl Send> + Clone {
    service_fn(|_req: Req| async { Ok::<_, BoxError>(Response::new(String::new())) })
}

fn req(method: Method, path: &str) -> Req {
    Request::builder()
        .method(method)
        .uri(path)
        .body(())
        .unwrap()
}

fn get(path: &str) -> Req {
    req(Method::GET, path)
}

/// Sends one request and says what the gate did with it, checking the rejection markers on the way.
async fn verdict<S>(svc: &S, request: Req, level: Level) -> Verdict
where
    S: Service<Req, Response = Res, Error = BoxError> + Clone,
{
    match svc.clone().oneshot(request).await {
        Ok(_) => Verdict::Admitted,
        Err(err) => {
            let rejection = Rejection::find(&*err).expect("a palisade rejection");
            assert_eq!(rejection.http_status(), StatusCode::SERVICE_UNAVAILABLE);
            if let Some(shed) = err.downcast_ref::<Shed>() {
                assert_eq!(shed.level, level.as_str());
                Verdict::Shed
            } else if err.downcast_ref::<ReadOnly>().is_some() {
                Verdict::ReadOnly
            } else {
                panic!("unexpected error {err}")
            }
        }
    }
}

/// A gate with the three classes on their own routes.
fn routed() -> Builder {
    GateLayer::builder()
        .route("/critical", Priority::Critical)
        .route("/normal", Priority::Normal)
        .route("/background", Priority::Background)
}

fn path_of(class: Priority) -> &'static str {
    match class {
        Priority::Critical => "/critical/x",
        Priority::Normal => "/normal/x",
        Priority::Background => "/background/x",
    }
}

#[tokio::test]
async fn level_class_matrix() {
    use Verdict::{Admitted as A, ReadOnly as R, Shed as S};
    // (level, [critical, normal, background] for GET, the same for POST)
    let table: [(Level, [Verdict; 3], [Verdict; 3]); 5] = [
        (Level::Normal, [A, A, A], [A, A, A]),
        (Level::Degraded, [A, A, S], [A, A, S]),
        (Level::Critical, [A, S, S], [A, S, S]),
        (Level::ReadOnly, [A, A, A], [R, R, R]),
        (Level::Maintenance, [S, S, S], [S, S, S]),
    ];
    let gate = routed().build().unwrap();
    let handle = gate.handle();
    let svc = gate.layer(ok_service());
    let classes = [Priority::Critical, Priority::Normal, Priority::Background];
    for (level, on_get, on_post) in table {
        handle.set_level(level, "matrix");
        assert_eq!(handle.level(), level);
        for (i, class) in classes.into_iter().enumerate() {
            let got = verdict(&svc, get(path_of(class)), level).await;
            assert_eq!(got, on_get[i], "GET {class} at {level}");
            let got = verdict(&svc, req(Method::POST, path_of(class)), level).await;
            assert_eq!(got, on_post[i], "POST {class} at {level}");
        }
    }
    // 2 (Degraded) + 4 (Critical) + 6 (Maintenance) shed, 3 writes refused.
    assert_eq!(handle.shed_total(), 12);
    assert_eq!(handle.read_only_total(), 3);
}

#[tokio::test]
async fn floors_are_configurable() {
    let gate = routed()
        .floor(Level::Degraded, Priority::Critical)
        .floor(Level::ReadOnly, Priority::Normal)
        .build()
        .unwrap();
    let handle = gate.handle();
    let svc = gate.layer(ok_service());
    handle.set_level(Level::Degraded, "test");
    assert_eq!(
        verdict(&svc, get("/normal"), Level::Degraded).await,
        Verdict::Shed
    );
    handle.set_level(Level::ReadOnly, "test");
    assert_eq!(
        verdict(&svc, get("/background"), Level::ReadOnly).await,
        Verdict::Shed
    );
    assert_eq!(
        verdict(&svc, get("/normal"), Level::ReadOnly).await,
        Verdict::Admitted
    );

    let err = GateLayer::builder()
        .floor(Level::Maintenance, Priority::Critical)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "floor");
    let err = GateLayer::builder()
        .floor(Level::Critical, Priority::Background)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "floor");
}

#[tokio::test]
async fn read_only_passes_safe_methods_and_refuses_writes() {
    let gate = GateLayer::builder()
        .retry_after(Duration::from_secs(30))
        .initial_level(Level::ReadOnly)
        .build()
        .unwrap();
    let svc = gate.layer(ok_service());
    for method in [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE] {
        assert!(
            svc.clone().oneshot(req(method.clone(), "/")).await.is_ok(),
            "{method} passes"
        );
    }
    let propfind = Method::from_bytes(b"PROPFIND").unwrap();
    for method in [
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::CONNECT,
        propfind,
    ] {
        let err = svc
            .clone()
            .oneshot(req(method.clone(), "/"))
            .await
            .unwrap_err();
        let ro = err.downcast_ref::<ReadOnly>().expect("ReadOnly");
        assert_eq!(ro.retry_after, Some(Duration::from_secs(30)), "{method}");
        let rejection = Rejection::find(&*err).unwrap();
        assert_eq!(rejection.http_status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(rejection.title(), "Service is read-only");
        assert_eq!(rejection.slug(), "read-only");
        assert!(err.to_string().contains("service is read-only"));
        assert_eq!(rejection.retry_after(), Some(Duration::from_secs(30)));
    }
    assert_eq!(gate.handle().read_only_total(), 6);
}

#[tokio::test]
async fn shed_carries_level_and_retry_hint() {
    let gate = GateLayer::builder()
        .initial_level(Level::Maintenance)
        .build()
        .unwrap();
    let err = gate
        .layer(ok_service())
        .oneshot(get("/"))
        .await
        .unwrap_err();
    let shed = err.downcast_ref::<Shed>().unwrap();
    assert_eq!(shed.level, "maintenance");
    assert_eq!(shed.retry_after, Some(Duration::from_secs(5)));

    let gate = GateLayer::builder()
        .no_retry_after()
        .initial_level(Level::Maintenance)
        .build()
        .unwrap();
    let err = gate
        .layer(ok_service())
        .oneshot(get("/"))
        .await
        .unwrap_err();
    assert_eq!(Rejection::find(&*err).unwrap().retry_after(), None);
}

fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |name| {
        vars.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

fn level_from(vars: &[(&str, &str)]) -> Result<Level, palisade_degrade::BuildError> {
    GateLayer::builder()
        .level_from_env_with(env(vars))
        .build()
        .map(|g| g.handle().level())
}

#[tokio::test]
async fn env_sets_the_startup_level() {
    for v in ["1", "true", "TRUE", "yes", "On"] {
        assert_eq!(
            level_from(&[(READ_ONLY_VAR, v)]),
            Ok(Level::ReadOnly),
            "{v}"
        );
    }
    for v in ["0", "false", "no", "OFF", ""] {
        assert_eq!(level_from(&[(READ_ONLY_VAR, v)]), Ok(Level::Normal), "{v}");
    }
    assert_eq!(level_from(&[]), Ok(Level::Normal));
    assert_eq!(level_from(&[(LEVEL_VAR, "degraded")]), Ok(Level::Degraded));
    assert_eq!(level_from(&[(LEVEL_VAR, "Read-Only")]), Ok(Level::ReadOnly));
    assert_eq!(level_from(&[(LEVEL_VAR, "")]), Ok(Level::Normal));
    // Both: the more severe wins.
    assert_eq!(
        level_from(&[(READ_ONLY_VAR, "1"), (LEVEL_VAR, "degraded")]),
        Ok(Level::ReadOnly)
    );
    assert_eq!(
        level_from(&[(READ_ONLY_VAR, "1"), (LEVEL_VAR, "maintenance")]),
        Ok(Level::Maintenance)
    );
    assert_eq!(
        level_from(&[(READ_ONLY_VAR, "0"), (LEVEL_VAR, "critical")]),
        Ok(Level::Critical)
    );

    // A read-only start refuses writes from the first request.
    let gate = GateLayer::builder()
        .level_from_env_with(env(&[(READ_ONLY_VAR, "1")]))
        .build()
        .unwrap();
    let svc = gate.layer(ok_service());
    assert_eq!(
        verdict(&svc, req(Method::DELETE, "/x"), Level::ReadOnly).await,
        Verdict::ReadOnly
    );
    assert_eq!(
        verdict(&svc, get("/x"), Level::ReadOnly).await,
        Verdict::Admitted
    );
}

#[test]
fn env_bad_values_are_build_errors_naming_the_variable() {
    for (var, value) in [
        (READ_ONLY_VAR, "2"),
        (READ_ONLY_VAR, " 1"),
        (READ_ONLY_VAR, "yes please"),
        (READ_ONLY_VAR, "\u{fffd}"),
        (LEVEL_VAR, "degarded"),
        (LEVEL_VAR, "normal "),
        (LEVEL_VAR, "3"),
    ] {
        let err = level_from(&[(var, value)]).unwrap_err();
        assert_eq!(err.setting(), var, "{value:?}");
        assert!(err.to_string().contains(var), "{err}");
    }
    // A bad variable fails the build even when the other one is fine.
    let err = level_from(&[(READ_ONLY_VAR, "1"), (LEVEL_VAR, "x")]).unwrap_err();
    assert_eq!(err.setting(), LEVEL_VAR);
}

#[tokio::test]
async fn header_priority_with_malformed_values() {
    let gate = GateLayer::builder()
        .priority_header(http::HeaderName::from_static("x-priority"))
        .route("/vip", Priority::Critical)
        .initial_level(Level::Critical)
        .build()
        .unwrap();
    let svc = gate.layer(ok_service());
    let with = |path: &str, value: HeaderValue| {
        let mut r = get(path);
        r.headers_mut().insert("x-priority", value);
        r
    };
    for good in ["critical", "CRITICAL", " Critical\t"] {
        let r = with("/", HeaderValue::from_str(good).unwrap());
        assert_eq!(
            verdict(&svc, r, Level::Critical).await,
            Verdict::Admitted,
            "{good:?}"
        );
    }
    let malformed: Vec<HeaderValue> = vec![
        HeaderValue::from_static(""),
        HeaderValue::from_static("high"),
        HeaderValue::from_static("2"),
        HeaderValue::from_static("critical, critical"),
        HeaderValue::from_static("crit ical"),
        HeaderValue::from_bytes(b"critical\xff").unwrap(),
        HeaderValue::from_bytes(&[b'c'; 8 * 1024]).unwrap(),
        HeaderValue::from_static("background"), // valid, and lower: shed
    ];
    for value in &malformed {
        // Ignored: the default class (normal) is shed at Critical...
        let r = with("/", value.clone());
        assert_eq!(
            verdict(&svc, r, Level::Critical).await,
            Verdict::Shed,
            "{value:?}"
        );
    }
    for value in malformed.into_iter().take(7) {
        // ...and on a critical route the route decides.
        let r = with("/vip/a", value.clone());
        assert_eq!(
            verdict(&svc, r, Level::Critical).await,
            Verdict::Admitted,
            "{value:?}"
        );
    }
}

#[tokio::test]
async fn header_claims_are_capped() {
    let gate = GateLayer::builder()
        .priority_header(http::HeaderName::from_static("x-class"))
        .priority_header_max(Priority::Normal)
        .initial_level(Level::Degraded)
        .default_priority(Priority::Background)
        .build()
        .unwrap();
    let svc = gate.layer(ok_service());
    let mut r = get("/");
    r.headers_mut()
        .insert("x-class", HeaderValue::from_static("critical"));
    assert_eq!(verdict(&svc, r, Level::Degraded).await, Verdict::Admitted);
    gate.handle().set_level(Level::Critical, "test");
    let mut r = get("/");
    r.headers_mut()
        .insert("x-class", HeaderValue::from_static("critical"));
    assert_eq!(verdict(&svc, r, Level::Critical).await, Verdict::Shed);
    // No header: the default class.
    gate.handle().set_level(Level::Degraded, "test");
    assert_eq!(
        verdict(&svc, get("/"), Level::Degraded).await,
        Verdict::Shed
    );
}

#[tokio::test]
async fn routes_extensions_and_closures() {
    let gate = GateLayer::builder()
        .route("/api", Priority::Background)
        .route("/api/pay", Priority::Critical)
        .priority_fn(|info| {
            info.headers()
                .contains_key("x-internal")
                .then_some(Priority::Critical)
        })
        .initial_level(Level::Critical)
        .build()
        .unwrap();
    let svc = gate.layer(ok_service());
    let c = Level::Critical;
    assert_eq!(verdict(&svc, get("/api/pay/1"), c).await, Verdict::Admitted); // longest prefix
    assert_eq!(verdict(&svc, get("/api/payments"), c).await, Verdict::Shed); // segment boundary
    assert_eq!(verdict(&svc, get("/api/x"), c).await, Verdict::Shed);
    let mut r = get("/api/x");
    r.headers_mut()
        .insert("x-internal", HeaderValue::from_static("1"));
    assert_eq!(verdict(&svc, r, c).await, Verdict::Admitted); // closure
    let mut r = get("/api/pay");
    r.extensions_mut().insert(Priority::Background);
    assert_eq!(verdict(&svc, r, c).await, Verdict::Shed); // extension first

    let err = GateLayer::builder()
        .route("api", Priority::Critical)
        .build();
    assert_eq!(err.unwrap_err().setting(), "route");
    let err = GateLayer::builder()
        .route("/a", Priority::Critical)
        .route("/a", Priority::Normal)
        .build();
    assert_eq!(err.unwrap_err().setting(), "route");
}

#[tokio::test]
async fn level_changes_are_audited() {
    let (audit, ring) = Audit::memory(100);
    let gate = GateLayer::builder()
        .name("api")
        .audit(&audit)
        .level_from_env_with(env(&[(READ_ONLY_VAR, "1")]))
        .build()
        .unwrap();
    let handle = gate.handle();
    assert_eq!(
        handle.set_level(Level::Critical, "db failover"),
        Level::ReadOnly
    );
    assert_eq!(handle.set_level(Level::Critical, "again"), Level::Critical); // no change, no record
    handle.set_level(Level::Normal, "recovered");
    audit.flush().await.unwrap();
    let records = ring.records();
    let seen: Vec<(String, String, String, String)> = records
        .iter()
        .map(|r| {
            assert_eq!(r.kind, "gate.level_changed");
            assert_eq!(r.details["gate"], "api");
            let s = |k: &str| r.details[k].as_str().unwrap().to_owned();
            (s("from"), s("to"), s("source"), s("reason"))
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (
                "normal".into(),
                "read_only".into(),
                "startup".into(),
                "set from the environment: PALISADE_READ_ONLY=1".into()
            ),
            (
                "read_only".into(),
                "critical".into(),
                "manual".into(),
                "db failover".into()
            ),
            (
                "critical".into(),
                "normal".into(),
                "manual".into(),
                "recovered".into()
            ),
        ]
    );
}

#[tokio::test]
async fn level_changes_show_in_health() {
    let health = Health::new();
    let gate = GateLayer::builder()
        .name("api")
        .health(&health)
        .build()
        .unwrap();
    let handle = gate.handle();
    let state = || {
        let report = health.readiness();
        let c = report.component("gate.api").expect("registered").clone();
        (c.state(), c.reason().map(str::to_owned))
    };
    assert_eq!(state(), (HealthState::Healthy, None));
    for (level, expected) in [
        (Level::Degraded, HealthState::Degraded),
        (Level::Critical, HealthState::Degraded),
        (Level::ReadOnly, HealthState::Degraded),
        (Level::Maintenance, HealthState::Unhealthy),
    ] {
        handle.set_level(level, "drill");
        let (got, reason) = state();
        assert_eq!(got, expected, "{level}");
        assert_eq!(reason.as_deref(), Some(&*format!("level {level}: drill")));
    }
    assert!(!health.readiness().is_available());
    handle.set_level(Level::Normal, "done");
    assert_eq!(state(), (HealthState::Healthy, None));

    // Configurable thresholds.
    let gate2 = GateLayer::builder()
        .name("strict")
        .health(&health)
        .health_levels(Level::Critical, Level::ReadOnly)
        .build()
        .unwrap();
    let h2 = gate2.handle();
    h2.set_level(Level::Degraded, "x");
    assert_eq!(
        health.readiness().component("gate.strict").unwrap().state(),
        HealthState::Healthy
    );
    h2.set_level(Level::ReadOnly, "x");
    assert_eq!(
        health.readiness().component("gate.strict").unwrap().state(),
        HealthState::Unhealthy
    );
    // The component goes away with the gate.
    drop((gate, handle));
    assert!(health.readiness().component("gate.api").is_none());
    assert!(GateLayer::builder()
        .health(&health)
        .health_levels(Level::Critical, Level::Degraded)
        .build()
        .is_err());
}

#[tokio::test]
async fn two_unnamed_gates_on_one_health_never_alias() {
    let health = Health::new();
    let first = GateLayer::builder().health(&health).build().unwrap();
    let second = GateLayer::builder().health(&health).build().unwrap();
    let (h1, h2) = (first.handle(), second.handle());
    h2.set_level(Level::Maintenance, "drain");
    h1.set_level(Level::Normal, "fine here");
    assert!(
        !health.readiness().is_available(),
        "the gate in maintenance keeps /readyz at 503"
    );
    let names: Vec<String> = health
        .readiness()
        .components()
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    assert_eq!(names, ["gate.default", "gate.default#2"]);
    // Dropping the healthy gate removes only its own component.
    drop((first, h1));
    let report = health.readiness();
    assert_eq!(report.components().len(), 1);
    assert_eq!(
        report.component("gate.default#2").unwrap().state(),
        HealthState::Unhealthy
    );
    drop((second, h2));
    assert!(health.readiness().components().is_empty());
}

#[tokio::test]
async fn health_levels_apply_from_the_start() {
    let health = Health::new();
    let _always_degraded = GateLayer::builder()
        .name("strict")
        .health(&health)
        .health_levels(Level::Normal, Level::Maintenance)
        .build()
        .unwrap();
    let report = health.readiness();
    let c = report.component("gate.strict").expect("registered");
    assert_eq!(
        c.state(),
        HealthState::Degraded,
        "degraded_at Normal: never healthy"
    );
    assert_eq!(c.reason(), Some("level normal: initial level"));

    let _always_out = GateLayer::builder()
        .name("closed")
        .health(&health)
        .health_levels(Level::Normal, Level::Normal)
        .build()
        .unwrap();
    assert_eq!(
        health.readiness().component("gate.closed").unwrap().state(),
        HealthState::Unhealthy
    );
}

#[tokio::test]
async fn load_signal_is_published() {
    let gate = GateLayer::builder().build().unwrap();
    let handle = gate.handle();
    let load = handle.load_signal();
    assert_eq!(load.get(), 0.0);
    for (level, expected) in [
        (Level::Degraded, 0.5),
        (Level::Critical, 0.8),
        (Level::ReadOnly, 1.0),
        (Level::Maintenance, 1.0),
        (Level::Normal, 0.0),
    ] {
        handle.set_level(level, "test");
        assert_eq!(load.get(), expected, "{level}");
    }

    // Into a signal the user owns, with custom values.
    let mine = LoadSignal::new();
    mine.set(0.3);
    let gate = GateLayer::builder()
        .load_signal(&mine)
        .load_at(Level::Degraded, 0.25)
        .initial_level(Level::Degraded)
        .build()
        .unwrap();
    assert_eq!(mine.get(), 0.25);
    gate.handle().set_level(Level::Normal, "test");
    assert_eq!(mine.get(), 0.0);
    assert_eq!(
        GateLayer::builder()
            .load_at(Level::Critical, 1.5)
            .build()
            .unwrap_err()
            .setting(),
        "load_at"
    );
}

#[tokio::test]
async fn services_and_clones_share_one_gate() {
    let gate = GateLayer::builder().build().unwrap();
    let a = gate.layer(ok_service());
    let b = gate.clone().layer(ok_service());
    gate.handle().set_level(Level::Maintenance, "test");
    assert_eq!(
        verdict(&a, get("/"), Level::Maintenance).await,
        Verdict::Shed
    );
    assert_eq!(
        verdict(&b.clone(), get("/"), Level::Maintenance).await,
        Verdict::Shed
    );
    assert_eq!(gate.handle().shed_total(), 2);
    assert!(!gate.handle().is_auto());
    assert_eq!(gate.handle().evaluate(Instant::now()), Level::Maintenance);
}

// ---------------------------------------------------------------------------------------------
// Automatic mode
// ---------------------------------------------------------------------------------------------

/// A service whose responses never arrive: holding its futures keeps requests in flight.
fn pending_service() -> impl Service<Req, Response = Res, Error = BoxError> + Clone {
    service_fn(|_req: Req| std::future::pending::<Result<Res, BoxError>>())
}

type Held = Vec<
    palisade_degrade::ResponseFuture<
        <Pending as Service<Req>>::Future,
        palisade_core::classify::Grpc,
    >,
>;
type Pending = tower::util::ServiceFn<fn(Req) -> std::future::Pending<Result<Res, BoxError>>>;

fn pending_fn() -> Pending {
    service_fn(|_req: Req| std::future::pending::<Result<Res, BoxError>>())
}

/// Starts `n` requests through `svc` and keeps their futures (in flight until dropped).
fn hold(svc: &mut Gate<Pending>, held: &mut Held, n: usize) {
    for _ in 0..n {
        held.push(svc.call(get("/")));
    }
}

#[tokio::test(start_paused = true)]
async fn in_flight_is_counted_with_a_drop_guard() {
    let gate = GateLayer::builder()
        .auto_in_flight(Level::Degraded, 100, 50)
        .build()
        .unwrap();
    let handle = gate.handle();
    let mut svc = gate.layer(pending_fn());
    let mut held = Vec::new();
    hold(&mut svc, &mut held, 7);
    assert_eq!(handle.signals().in_flight, 7);
    held.truncate(2);
    assert_eq!(handle.signals().in_flight, 2);
    drop(held);
    assert_eq!(handle.signals().in_flight, 0);
    // Completed requests give their place back too.
    let done = gate.layer(ok_service());
    for _ in 0..3 {
        done.clone().oneshot(get("/")).await.unwrap();
    }
    assert_eq!(handle.signals().in_flight, 0);
    // Without automatic mode nothing is counted.
    let plain = GateLayer::builder().build().unwrap();
    let _f = plain.layer(pending_service()).call(get("/"));
    assert_eq!(plain.handle().signals().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn hysteresis_does_not_flap() {
    let (audit, ring) = Audit::memory(100);
    let gate = GateLayer::builder()
        .audit(&audit)
        .auto_in_flight(Level::Degraded, 10, 5)
        .auto_dwell(Duration::from_secs(5))
        .build()
        .unwrap();
    let handle = gate.handle();
    let mut svc = gate.layer(pending_fn());
    let mut held = Vec::new();
    let eval = || handle.evaluate(Instant::now());

    hold(&mut svc, &mut held, 9);
    assert_eq!(eval(), Level::Normal, "below enter");
    hold(&mut svc, &mut held, 1);
    assert_eq!(eval(), Level::Degraded, "enter at 10");
    assert_eq!(handle.load_signal().get(), 0.5);

    // Oscillate around the enter threshold for a long time: no flapping.
    for _ in 0..20 {
        held.pop();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(eval(), Level::Degraded, "9 in flight");
        hold(&mut svc, &mut held, 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(eval(), Level::Degraded, "10 in flight");
    }
    // Between leave and enter, long past the dwell: still held.
    held.truncate(5);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(eval(), Level::Degraded, "5 is not below leave");
    assert_eq!(handle.auto_level(), Some(Level::Degraded));

    audit.flush().await.unwrap();
    assert_eq!(ring.records().len(), 1, "one change only");
    let rec = &ring.records()[0];
    assert_eq!(rec.details["source"], "auto");
    assert_eq!(rec.details["in_flight"], 10);
    assert!(rec.details["reason"]
        .as_str()
        .unwrap()
        .contains("in_flight 10 reached 10"));
}

#[tokio::test(start_paused = true)]
async fn leaving_needs_the_leave_threshold_and_the_dwell() {
    let gate = GateLayer::builder()
        .auto_in_flight(Level::Degraded, 10, 5)
        .auto_in_flight(Level::Critical, 20, 15)
        .auto_dwell(Duration::from_secs(5))
        .build()
        .unwrap();
    let handle = gate.handle();
    let mut svc = gate.layer(pending_fn());
    let mut held = Vec::new();
    let eval = || handle.evaluate(Instant::now());

    hold(&mut svc, &mut held, 20);
    assert_eq!(eval(), Level::Critical, "straight to the highest entered");
    held.truncate(4); // below every leave threshold...
    tokio::time::advance(Duration::from_millis(4_999)).await;
    assert_eq!(eval(), Level::Critical, "...but the dwell has not passed");
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(eval(), Level::Normal, "below leave and dwelt: down");

    // Down to the level the signals still hold, not necessarily Normal.
    hold(&mut svc, &mut held, 16); // 20 in flight
    assert_eq!(eval(), Level::Critical);
    held.truncate(12); // below Critical's leave, above Degraded's
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(eval(), Level::Degraded);
    // Going up again is immediate, dwell or not.
    hold(&mut svc, &mut held, 8);
    assert_eq!(eval(), Level::Critical);
}

#[tokio::test(start_paused = true)]
async fn the_dwell_is_time_below_leave_not_time_at_the_level() {
    // README: `.auto_dwell(30s) // leave only after 30 s below` the leave threshold.
    let gate = GateLayer::builder()
        .auto_in_flight(Level::Degraded, 10, 5)
        .auto_dwell(Duration::from_secs(30))
        .build()
        .unwrap();
    let handle = gate.handle();
    let mut svc = gate.layer(pending_fn());
    let mut held = Vec::new();
    // Evaluate every second for `secs` seconds; the level must stay `level` throughout.
    async fn tick(handle: &GateHandle, secs: u64, level: Level, why: &str) {
        for s in 0..secs {
            tokio::time::advance(Duration::from_secs(1)).await;
            assert_eq!(handle.evaluate(Instant::now()), level, "{why}, second {s}");
        }
    }

    hold(&mut svc, &mut held, 10);
    assert_eq!(handle.evaluate(Instant::now()), Level::Degraded);
    held.truncate(7); // between leave and enter: held
    tick(&handle, 60, Level::Degraded, "held above leave").await;

    // A short dip below leave, long after entering: the gate must not leave at once.
    held.truncate(4);
    assert_eq!(
        handle.evaluate(Instant::now()),
        Level::Degraded,
        "one dip after 60 s at the level is not 30 s below leave"
    );
    tick(&handle, 5, Level::Degraded, "5 s below leave").await;
    hold(&mut svc, &mut held, 3); // 7: back above leave, the clock starts again
    tick(&handle, 2, Level::Degraded, "back above leave").await;
    held.truncate(4);
    tick(&handle, 29, Level::Degraded, "29 s below leave").await;
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        handle.evaluate(Instant::now()),
        Level::Normal,
        "30 s below leave, continuously: down"
    );
}

#[tokio::test(start_paused = true)]
async fn stepping_down_goes_to_the_highest_level_held_within_the_dwell() {
    let gate = GateLayer::builder()
        .auto_in_flight(Level::Degraded, 10, 5)
        .auto_in_flight(Level::Critical, 20, 15)
        .auto_dwell(Duration::from_secs(10))
        .build()
        .unwrap();
    let handle = gate.handle();
    let mut svc = gate.layer(pending_fn());
    let mut held = Vec::new();
    let eval = || handle.evaluate(Instant::now());
    hold(&mut svc, &mut held, 20);
    assert_eq!(eval(), Level::Critical);
    held.truncate(12); // below Critical's leave, Degraded still held
    assert_eq!(eval(), Level::Critical);
    tokio::time::advance(Duration::from_secs(6)).await;
    assert_eq!(eval(), Level::Critical, "Degraded held at 6 s");
    held.truncate(2); // now below every leave threshold
    assert_eq!(eval(), Level::Critical);
    tokio::time::advance(Duration::from_secs(4)).await;
    assert_eq!(
        eval(),
        Level::Degraded,
        "10 s below Critical's leave, but Degraded was held 4 s ago"
    );
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(eval(), Level::Degraded, "9 s below Degraded's leave");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(eval(), Level::Normal);
}

#[tokio::test(start_paused = true)]
async fn the_request_path_evaluates_at_most_every_interval() {
    let gate = GateLayer::builder()
        .auto_in_flight(Level::Degraded, 3, 1)
        .auto_interval(Duration::from_secs(1))
        .route("/bg", Priority::Background)
        .build()
        .unwrap();
    let handle = gate.handle();
    let mut svc = gate.layer(pending_fn());
    let mut held = Vec::new();
    hold(&mut svc, &mut held, 4); // the first evaluates (0 in flight); the rest wait for the interval
    tokio::time::advance(Duration::from_millis(500)).await;
    held.push(svc.call(get("/bg")));
    assert_eq!(handle.level(), Level::Normal, "not evaluated yet");
    tokio::time::advance(Duration::from_millis(500)).await;
    let err = tower::ServiceExt::<Req>::ready(&mut svc)
        .await
        .unwrap()
        .call(get("/bg"))
        .await
        .unwrap_err();
    assert_eq!(err.downcast_ref::<Shed>().unwrap().level, "degraded");
    assert_eq!(handle.level(), Level::Degraded);
    assert_eq!(handle.signals().in_flight, 5);
}

/// A service that takes `delay_ms` and answers with `status`.
fn slow_service(
    delay_ms: Arc<AtomicU64>,
    status: Arc<AtomicU16>,
) -> impl Service<Req, Response = Res, Error = BoxError, Future = impl Send> + Clone {
    service_fn(move |_req: Req| {
        let delay = Duration::from_millis(delay_ms.load(Ordering::Relaxed));
        let status = status.load(Ordering::Relaxed);
        async move {
            tokio::time::sleep(delay).await;
            let mut res = Response::new(String::new());
            *res.status_mut() = StatusCode::from_u16(status).unwrap();
            Ok::<_, BoxError>(res)
        }
    })
}

async fn run<S>(svc: &S, n: usize)
where
    S: Service<Req, Response = Res, Error = BoxError> + Clone,
{
    for _ in 0..n {
        let _ = svc.clone().oneshot(get("/")).await;
    }
}

#[tokio::test(start_paused = true)]
async fn p95_latency_enters_and_leaves() {
    let delay = Arc::new(AtomicU64::new(10));
    let status = Arc::new(AtomicU16::new(200));
    let gate = GateLayer::builder()
        .auto_latency_p95(
            Level::Critical,
            Duration::from_millis(400),
            Duration::from_millis(100),
        )
        .auto_window(Duration::from_secs(60))
        .auto_interval(Duration::from_secs(3600)) // only explicit evaluations
        .auto_dwell(Duration::from_secs(10))
        .auto_min_samples(50)
        .build()
        .unwrap();
    let handle = gate.handle();
    let svc = gate.layer(slow_service(delay.clone(), status));
    let eval = || handle.evaluate(Instant::now());

    run(&svc, 96).await;
    delay.store(500, Ordering::Relaxed);
    run(&svc, 4).await;
    assert_eq!(eval(), Level::Normal, "4 % slow: p95 is fast");
    assert_eq!(
        handle.signals().p95_latency,
        Some(Duration::from_millis(10))
    );
    run(&svc, 2).await; // 6 of 102 slow
    assert_eq!(eval(), Level::Critical);
    assert_eq!(
        handle.signals().p95_latency,
        Some(Duration::from_millis(500))
    );
    assert_eq!(handle.signals().samples, 102);

    // Fast again, but the slow calls are still in the window: held.
    delay.store(150, Ordering::Relaxed);
    tokio::time::advance(Duration::from_secs(61)).await; // the slow ones leave the window
                                                         // Only critical traffic passes now, and this test's requests are normal: lift the level by hand
                                                         // to feed samples, then hand back.
    handle.set_level(Level::Normal, "feed samples");
    run(&svc, 60).await;
    handle.clear_manual("done feeding");
    assert_eq!(
        handle.level(),
        Level::Critical,
        "p95 150 ms is above leave (100 ms)"
    );
    delay.store(20, Ordering::Relaxed);
    handle.set_level(Level::Normal, "feed samples");
    tokio::time::advance(Duration::from_secs(61)).await;
    run(&svc, 60).await;
    handle.clear_manual("done feeding");
    assert_eq!(
        handle.level(),
        Level::Normal,
        "below leave, long past dwell"
    );
    assert_eq!(handle.auto_level(), Some(Level::Normal));
}

#[tokio::test(start_paused = true)]
async fn error_rate_uses_the_classifier() {
    let delay = Arc::new(AtomicU64::new(1));
    let status = Arc::new(AtomicU16::new(200));
    let gate = GateLayer::builder()
        .auto_error_rate(Level::Degraded, 0.5, 0.1)
        .auto_interval(Duration::ZERO)
        .auto_min_samples(20)
        .build()
        .unwrap();
    let handle = gate.handle();
    let svc = gate.layer(slow_service(delay.clone(), status.clone()));
    run(&svc, 10).await;
    status.store(503, Ordering::Relaxed);
    run(&svc, 9).await;
    assert_eq!(handle.evaluate(Instant::now()), Level::Normal, "19 samples");
    run(&svc, 1).await; // 10 of 20 failed
    assert_eq!(handle.evaluate(Instant::now()), Level::Degraded);
    assert_eq!(handle.signals().error_rate, Some(0.5));
    status.store(404, Ordering::Relaxed); // not a failure for the HTTP classifier
    run(&svc, 20).await;
    assert_eq!(
        handle.evaluate(Instant::now()),
        Level::Degraded,
        "25 % is above leave"
    );
    assert_eq!(handle.signals().error_rate, Some(0.25));

    // With ErrorsOnly, 5xx responses are successes.
    let gate = GateLayer::builder()
        .classify(ErrorsOnly)
        .auto_error_rate(Level::Degraded, 0.5, 0.1)
        .auto_min_samples(20)
        .build()
        .unwrap();
    status.store(500, Ordering::Relaxed);
    run(&gate.layer(slow_service(delay, status)), 20).await;
    assert_eq!(gate.handle().evaluate(Instant::now()), Level::Normal);
    assert_eq!(gate.handle().signals().error_rate, Some(0.0));
}

#[tokio::test(start_paused = true)]
async fn manual_level_wins_until_cleared() {
    let gate = GateLayer::builder()
        .auto_in_flight(Level::Degraded, 2, 1)
        .build()
        .unwrap();
    let handle = gate.handle();
    let mut svc = gate.layer(pending_fn());
    let mut held = Vec::new();
    hold(&mut svc, &mut held, 3);
    assert_eq!(handle.evaluate(Instant::now()), Level::Degraded);

    handle.set_level(Level::Normal, "operator knows better");
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_eq!(
        handle.evaluate(Instant::now()),
        Level::Normal,
        "manual wins"
    );
    assert_eq!(handle.manual_level(), Some(Level::Normal));
    assert_eq!(handle.auto_level(), Some(Level::Degraded));

    assert!(handle.clear_manual("back to auto"));
    assert_eq!(handle.level(), Level::Degraded);
    assert_eq!(handle.manual_level(), None);
    assert!(!handle.clear_manual("nothing to clear"));
}

#[tokio::test(start_paused = true)]
async fn manual_hold_expires() {
    let (audit, ring) = Audit::memory(100);
    let gate = GateLayer::builder()
        .audit(&audit)
        .auto_in_flight(Level::Degraded, 2, 1)
        .manual_hold(Duration::from_secs(30))
        .build()
        .unwrap();
    let handle = gate.handle();
    handle.set_level(Level::Critical, "drill");
    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(handle.evaluate(Instant::now()), Level::Critical);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(handle.evaluate(Instant::now()), Level::Normal, "hold over");

    // A hold given with the call.
    handle.set_level_for(Level::ReadOnly, Duration::from_secs(5), "short");
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(handle.evaluate(Instant::now()), Level::Normal);

    // A startup level in automatic mode holds until cleared, whatever the hold.
    let gate = GateLayer::builder()
        .auto_in_flight(Level::Degraded, 2, 1)
        .manual_hold(Duration::from_secs(1))
        .initial_level(Level::ReadOnly)
        .build()
        .unwrap();
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(gate.handle().evaluate(Instant::now()), Level::ReadOnly);

    audit.flush().await.unwrap();
    let reasons: Vec<String> = ring
        .records()
        .iter()
        .map(|r| r.details["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(reasons[1], "manual critical hold expired");
}

#[test]
fn auto_settings_are_validated() {
    let bad: Vec<(Builder, &str)> = vec![
        (
            GateLayer::builder().auto_in_flight(Level::Degraded, 10, 10),
            "auto_in_flight",
        ),
        (
            GateLayer::builder().auto_in_flight(Level::Maintenance, 10, 5),
            "auto_in_flight",
        ),
        (
            GateLayer::builder().auto_error_rate(Level::Critical, 1.5, 0.5),
            "auto_error_rate",
        ),
        (
            GateLayer::builder().auto_error_rate(Level::Critical, f64::NAN, 0.5),
            "auto_error_rate",
        ),
        (
            GateLayer::builder().auto_latency_p95(
                Level::Critical,
                Duration::from_millis(100),
                Duration::from_millis(200),
            ),
            "auto_latency_p95",
        ),
        (
            GateLayer::builder()
                .auto_in_flight(Level::Degraded, 10, 5)
                .auto_window(Duration::ZERO),
            "auto_window",
        ),
        (
            GateLayer::builder()
                .auto_in_flight(Level::Degraded, 10, 5)
                .auto_samples(8),
            "auto_samples",
        ),
        (
            GateLayer::builder()
                .auto_in_flight(Level::Degraded, 10, 5)
                .auto_min_samples(0),
            "auto_min_samples",
        ),
    ];
    for (builder, setting) in bad {
        let err = builder.build().unwrap_err();
        assert_eq!(err.setting(), setting, "{err}");
    }
}

#[test]
fn sizes_and_durations_are_bounded() {
    use palisade_degrade::{
        MAX_DURATION, MAX_IN_FLIGHT_THRESHOLD, MAX_LATENCY_THRESHOLD, MAX_MANUAL_HOLD,
        MAX_NAME_BYTES, MAX_ROUTES, MAX_TRIGGERS,
    };
    let over = MAX_DURATION + Duration::from_millis(1);
    let auto = || GateLayer::builder().auto_in_flight(Level::Degraded, 10, 5);
    let mut many_routes = GateLayer::builder();
    for i in 0..=MAX_ROUTES {
        many_routes = many_routes.route(format!("/r{i}"), Priority::Normal);
    }
    let mut many_triggers = GateLayer::builder();
    for i in 0..=MAX_TRIGGERS as u64 {
        many_triggers = many_triggers.auto_in_flight(Level::Degraded, 10 + i, 5);
    }
    let bad: Vec<(Builder, &str)> = vec![
        (
            GateLayer::builder().name("n".repeat(MAX_NAME_BYTES + 1)),
            "name",
        ),
        (many_routes, "route"),
        (many_triggers, "auto_*"),
        (GateLayer::builder().retry_after(over), "retry_after"),
        (
            GateLayer::builder().manual_hold(MAX_MANUAL_HOLD + Duration::from_secs(1)),
            "manual_hold",
        ),
        (auto().auto_dwell(over), "auto_dwell"),
        (auto().auto_interval(over), "auto_interval"),
        (auto().auto_window(over), "auto_window"),
        (
            GateLayer::builder().auto_in_flight(Level::Degraded, MAX_IN_FLIGHT_THRESHOLD + 1, 5),
            "auto_in_flight",
        ),
        (
            GateLayer::builder().auto_latency_p95(
                Level::Critical,
                MAX_LATENCY_THRESHOLD + Duration::from_secs(1),
                Duration::from_secs(1),
            ),
            "auto_latency_p95",
        ),
        (
            GateLayer::builder().auto_latency_p95(
                Level::Critical,
                Duration::from_nanos(500),
                Duration::ZERO,
            ),
            "auto_latency_p95",
        ),
    ];
    for (builder, setting) in bad {
        let err = builder.build().unwrap_err();
        assert_eq!(err.setting(), setting, "{err}");
    }
    // The maxima themselves are accepted.
    GateLayer::builder()
        .name("n".repeat(MAX_NAME_BYTES))
        .retry_after(MAX_DURATION)
        .manual_hold(MAX_MANUAL_HOLD)
        .auto_in_flight(Level::Degraded, MAX_IN_FLIGHT_THRESHOLD, 5)
        .auto_latency_p95(
            Level::Critical,
            MAX_LATENCY_THRESHOLD,
            Duration::from_secs(1),
        )
        .auto_dwell(MAX_DURATION)
        .auto_interval(MAX_DURATION)
        .auto_window(MAX_DURATION)
        .build()
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_huge_hold_does_not_panic() {
    let gate = GateLayer::builder()
        .auto_in_flight(Level::Degraded, 2, 1)
        .build()
        .unwrap();
    let handle = gate.handle();
    handle.set_level_for(Level::Critical, Duration::MAX, "until cleared");
    tokio::time::advance(Duration::from_secs(86_400)).await;
    assert_eq!(handle.evaluate(Instant::now()), Level::Critical);
    assert!(handle.clear_manual("done"));
    assert_eq!(handle.level(), Level::Normal);
}

#[tokio::test(start_paused = true)]
async fn the_window_is_not_truncated_below_a_millisecond() {
    // A 1.5 ms window is counted in whole milliseconds rounded up (2 ms), not truncated (1 ms):
    // a call that finished 1.4 ms before the evaluation is in it.
    let status = Arc::new(AtomicU16::new(503));
    let gate = GateLayer::builder()
        .auto_error_rate(Level::Degraded, 0.5, 0.1)
        .auto_window(Duration::from_micros(1_500))
        .auto_interval(Duration::from_secs(3600))
        .auto_min_samples(1)
        .build()
        .unwrap();
    let svc = gate.layer(slow_service(Arc::new(AtomicU64::new(0)), status));
    tokio::time::advance(Duration::from_micros(900)).await;
    run(&svc, 1).await;
    tokio::time::advance(Duration::from_micros(1_400)).await;
    assert_eq!(gate.handle().evaluate(Instant::now()), Level::Degraded);
}

#[test]
fn handles_are_send_sync_and_debug() {
    fn assert_send_sync<T: Send + Sync + Clone + std::fmt::Debug>() {}
    assert_send_sync::<GateHandle>();
    assert_send_sync::<GateLayer>();
    let gate = GateLayer::builder().name("dbg").build().unwrap();
    assert!(format!("{:?}", gate.handle()).contains("dbg"));
    assert!(format!("{gate:?}").contains("dbg"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_storm_gives_every_place_back() {
    let gate = GateLayer::builder()
        .auto_in_flight(Level::Degraded, 1_000_000, 1)
        .auto_latency_p95(
            Level::Critical,
            Duration::from_secs(60),
            Duration::from_secs(30),
        )
        .auto_interval(Duration::ZERO)
        .build()
        .unwrap();
    let handle = gate.handle();
    let svc = gate.layer(service_fn(|_req: Req| async {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        Ok::<_, BoxError>(Response::new(String::new()))
    }));
    let tasks: Vec<_> = (0..2_000)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("/"))))
        .collect();
    for task in tasks.iter().step_by(2) {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }
    assert_eq!(handle.signals().in_flight, 0);
    assert_eq!(handle.level(), Level::Normal);
}
