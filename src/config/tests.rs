//! Unit tests of the config module: the schema's key list, error locations, cross-section rules.

use std::collections::BTreeMap;
use std::time::Duration;

use super::source::{self, Provenance};
use super::*;

const EXAMPLE: &str = include_str!("example.toml");

fn err(text: &str) -> ConfigError {
    Config::from_toml_str(text, "test.toml").expect_err("the config must be refused")
}

fn err_env(text: &str, vars: &[(&str, &str)]) -> ConfigError {
    let vars: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Config::from_toml_str_with_env(text, "test.toml", |name| vars.get(name).cloned())
        .expect_err("the config must be refused")
}

#[test]
fn the_example_uses_only_listed_keys_and_every_listed_key_exists() {
    let (_, prov) = source::parse_text(EXAMPLE, "example.toml").unwrap();
    let listed: Vec<String> = keys::all();
    // Map entries (names chosen by the user) are not in the list.
    let dynamic = [
        "server.gate.routes.",
        "server.rate_limit.tiers.",
        "server.rate_limit.tenants.",
        "server.fallback.headers.",
        "heal.detectors.",
    ];
    for path in prov.positions.keys() {
        let covered = listed.contains(path)
            || matches!(path.as_str(), "server" | "client" | "heal")
            || dynamic.iter().any(|d| path.starts_with(d));
        assert!(covered, "`{path}` is in the example but not in keys::all()");
    }
    // Every listed key is one the schema knows: setting it is never an unknown-key error.
    for path in &listed {
        let mut table = toml::Table::new();
        let mut prov = Provenance::new("t");
        source::apply_env(
            &mut table,
            vec![(source::path_var(path), "x".to_owned())],
            &mut prov,
        )
        .unwrap();
        if let Err(e) = source::deserialize(table, &prov) {
            assert_ne!(e.kind(), ConfigErrorKind::UnknownKey, "{path}: {e}");
        }
    }
}

#[test]
fn the_example_is_complete_and_valid() {
    let c = Config::from_toml_str(EXAMPLE, "example.toml").unwrap();
    let s = &c.server;
    assert!(s.gate.is_some() && s.rate_limit.is_some() && s.bulkhead.is_some());
    assert!(s.timeout.is_some() && s.fallback.is_some() && s.breaker.is_some());
    assert!(s.chaos.is_some() && s.idempotency.is_some());
    let cl = &c.client;
    assert!(cl.total_timeout.is_some() && cl.retry.is_some() && cl.breaker.is_some());
    assert!(cl.per_try_timeout.is_some() && cl.bulkhead.is_some() && cl.chaos.is_some());
    let rl = s.rate_limit.as_ref().unwrap();
    assert_eq!(
        rl.tiers["gold"],
        RateConfig {
            limit: 1000,
            per: Duration::from_secs(1),
            burst: Some(2000)
        }
    );
    assert_eq!(rl.tenants[&TenantId::new("acme").unwrap()], "gold");
    assert_eq!(
        s.gate.as_ref().unwrap().routes["/admin"],
        palisade_degrade::Priority::Critical
    );
}

#[test]
fn the_empty_config_has_no_layers() {
    let c = Config::from_toml_str("", "empty.toml").unwrap();
    assert_eq!(c, Config::default());
    let stack = c.server_stack_builder().build().unwrap();
    let h = stack.handles();
    assert!(h.gate().is_none() && h.rate_limit().is_none() && h.bulkhead().is_none());
    assert!(h.breaker().is_none() && h.chaos().is_none() && h.timeout().is_none());
    let client = c.client_stack_builder().build().unwrap();
    assert!(client.handles().retry().is_none() && client.handles().breaker().is_none());
    assert!(c.idempotency_builder().is_none());
}

#[test]
fn unknown_keys_are_named_with_their_line() {
    let e = err("[server.rate_limit]\nmax_kyes = 5\n");
    assert_eq!(e.kind(), ConfigErrorKind::UnknownKey);
    assert_eq!(e.key(), Some("server.rate_limit.max_kyes"));
    assert_eq!(e.line(), Some(2));
    assert!(
        e.to_string()
            .starts_with("test.toml:2:1: `server.rate_limit.max_kyes`"),
        "{e}"
    );
    assert!(
        e.message().contains("max_keys"),
        "lists the known keys: {e}"
    );

    let e = err("[sever]\n");
    assert_eq!(
        (e.kind(), e.key()),
        (ConfigErrorKind::UnknownKey, Some("sever"))
    );

    let e = err("[server.breaker]\nopen_wait = { base = \"1s\", max = \"2s\", cap = \"3s\" }\n");
    assert_eq!(e.key(), Some("server.breaker.open_wait.cap"));
}

#[test]
fn wrong_types_and_bad_values_are_named() {
    let e = err(
        "[server]\ntenant_header = \"x-tenant-id\"\n[server.rate_limit]\nmax_keys = \"many\"\n",
    );
    assert_eq!(e.kind(), ConfigErrorKind::InvalidValue);
    assert_eq!(e.key(), Some("server.rate_limit.max_keys"));
    assert_eq!(e.line(), Some(4));

    let e = err("[server.timeout]\ntimeout = \"1.5.s\"\n");
    assert_eq!(e.kind(), ConfigErrorKind::InvalidValue);
    assert_eq!(e.key(), Some("server.timeout.timeout"));
    assert!(e.message().contains("is not a duration"), "{e}");

    let e = err("[server.timeout]\ntimeout = 5\n");
    assert_eq!(e.key(), Some("server.timeout.timeout"));
    assert!(e.message().contains("duration string"), "{e}");

    let e = err("[server.gate]\ninitial_level = \"panic\"\n");
    assert_eq!(e.key(), Some("server.gate.initial_level"));
    assert!(e.message().contains("unknown level"), "{e}");

    let e = err("[server]\ntenant_header = \"x tenant\"\n");
    assert_eq!(e.key(), Some("server.tenant_header"));

    let e = err("[server.fallback]\nstatus = 42\n");
    assert_eq!(e.key(), Some("server.fallback.status"));

    let e = err("[server.timeout]\ngrpc_timeout = true\n");
    assert_eq!(e.kind(), ConfigErrorKind::MissingKey);
    assert_eq!(e.key(), Some("server.timeout.timeout"));
    assert_eq!(e.line(), Some(1));
}

#[test]
fn syntax_errors_carry_line_and_column() {
    let e = err("[server.timeout]\ntimeout = \"2s\"\nbroken = = 3\n");
    assert_eq!(e.kind(), ConfigErrorKind::Syntax);
    assert_eq!(e.line(), Some(3));
    assert!(e.column().is_some());
    assert!(e.to_string().starts_with("test.toml:3:"), "{e}");
}

#[test]
fn builder_validation_is_mapped_to_keys() {
    let cases: &[(&str, &str)] = &[
        ("[server.bulkhead]\nmax_concurrent = 0\n", "server.bulkhead.max_concurrent"),
        (
            "[server.breaker]\nopen_wait = { base = \"10s\", max = \"1s\" }\n",
            "server.breaker.open_wait",
        ),
        ("[server.breaker]\nfailure_rate = 1.5\n", "server.breaker.failure_rate"),
        (
            "[client.retry]\nbackoff = { base = \"2s\", max = \"1s\" }\n",
            "client.retry.backoff",
        ),
        ("[client.retry]\nmax_attempts = 0\n", "client.retry.max_attempts"),
        (
            "[client.retry]\nbudget = { window = \"90s\" }\n",
            "client.retry.budget",
        ),
        (
            "[server]\ntenant_header = \"x-t\"\n[server.rate_limit]\ndefault_rate = { limit = 0, per = \"1s\" }\n",
            "server.rate_limit.default_rate",
        ),
        (
            "[server]\ntenant_header = \"x-t\"\n[server.rate_limit.tiers]\ngold = { limit = 0, per = \"1s\" }\n",
            "server.rate_limit.tiers.gold",
        ),
        (
            "[server]\ntenant_header = \"x-t\"\n[server.rate_limit]\nmax_keys = 0\n",
            "server.rate_limit.max_keys",
        ),
        (
            "[server.timeout]\ntimeout = \"0s\"\n",
            "server.timeout.timeout",
        ),
        (
            "[server.timeout]\ntimeout = \"1s\"\nheader = \"grpc-timeout\"\n",
            "server.timeout.header",
        ),
        (
            "[server.gate]\nroutes = { \"api\" = \"critical\" }\n",
            "server.gate.routes",
        ),
        (
            "[server.gate]\nauto_error_rate = { level = \"degraded\", enter = 0.1, leave = 0.5 }\n",
            "server.gate.auto_error_rate",
        ),
        ("[server.idempotency]\nlease = \"0s\"\n", "server.idempotency.lease"),
        ("[server.idempotency]\nmax_records = 0\n", "server.idempotency.max_records"),
        ("[server.fallback]\nstatus = 503\nname = \"\"\n", "server.fallback.name"),
    ];
    for (text, key) in cases {
        let e = err(text);
        assert_eq!(e.kind(), ConfigErrorKind::Invalid, "{text}: {e}");
        assert_eq!(e.key(), Some(*key), "{text}: {e}");
        assert!(e.line().is_some(), "{text}: {e}");
    }
    let e = err("[server.bulkhead]\nmax_concurrent = 0\n");
    assert_eq!(
        e.to_string(),
        "test.toml:2:1: `server.bulkhead.max_concurrent`: must be at least 1"
    );
}

#[test]
fn cross_section_rules() {
    let cases: &[(&str, &str)] = &[
        ("[server.rate_limit]\n", "server.rate_limit"),
        ("[server.bulkhead]\nkeyed = true\n", "server.bulkhead.keyed"),
        ("[client.bulkhead]\nkeyed = true\n", "client.bulkhead.keyed"),
        (
            "[server]\ntenant_header = \"x-t\"\n[server.rate_limit]\nadaptive_floor = 0.5\n",
            "server.rate_limit.adaptive_floor",
        ),
        (
            "[server]\ntenant_header = \"x-t\"\n[server.rate_limit.tenants]\nacme = \"gold\"\n",
            "server.rate_limit.tenants.acme",
        ),
        (
            "[server.gate]\nretry_after = \"1s\"\nno_retry_after = true\n",
            "server.gate.no_retry_after",
        ),
        (
            "[client.breaker]\nfailure_rate = 0.5\nno_failure_rate = true\n",
            "client.breaker.no_failure_rate",
        ),
        (
            "[client.retry]\nbudget = { unlimited = true, ratio = 0.1 }\n",
            "client.retry.budget.unlimited",
        ),
        (
            "[client.retry]\nretry_paths = [\"inventory\"]\n",
            "client.retry.retry_paths",
        ),
        (
            "[server.idempotency]\nmissing_tenant = \"shared\"\n",
            "server.idempotency.missing_tenant",
        ),
        ("[server]\ntenant_max_len = 0\n", "server.tenant_max_len"),
    ];
    for (text, key) in cases {
        let e = err(text);
        assert_eq!(e.kind(), ConfigErrorKind::Invalid, "{text}: {e}");
        assert_eq!(e.key(), Some(*key), "{text}: {e}");
    }
}

#[test]
fn environment_errors_name_the_variable() {
    let text = "[server]\ntenant_header = \"x-t\"\n[server.rate_limit]\n";
    let e = err_env(text, &[("PALISADE_SERVER__RATE_LIMIT__MAX_KEYS", "many")]);
    assert_eq!(e.kind(), ConfigErrorKind::InvalidValue);
    assert_eq!(e.env_var(), Some("PALISADE_SERVER__RATE_LIMIT__MAX_KEYS"));
    assert_eq!(e.key(), Some("server.rate_limit.max_keys"));
    assert_eq!(e.line(), None);
    assert!(
        e.to_string()
            .starts_with("test.toml: environment variable `PALISADE_SERVER__RATE_LIMIT__MAX_KEYS`"),
        "{e}"
    );

    let e = err_env(text, &[("PALISADE_SERVER__RATE_LIMIT__MAX_KEYS", "0")]);
    assert_eq!(e.kind(), ConfigErrorKind::Invalid);
    assert_eq!(e.env_var(), Some("PALISADE_SERVER__RATE_LIMIT__MAX_KEYS"));

    // Not a key of the schema: a lookup-only environment is never asked for it.
    let c = Config::from_toml_str_with_env("", "t.toml", |n| {
        (n == "PALISADE_SERVER__TIMEOUT__TIMOUT").then(|| "3s".to_owned())
    })
    .unwrap();
    assert!(c.server.timeout.is_none() && c.env_overrides().is_empty());

    let e = err_env(
        "[server.gate]\nlevel_from_env = true\n",
        &[("PALISADE_READ_ONLY", "perhaps")],
    );
    assert_eq!(e.env_var(), Some("PALISADE_READ_ONLY"));
    assert_eq!(e.key(), Some("server.gate.level_from_env"));
}

#[test]
fn overrides_apply_create_sections_and_leave_other_variables_alone() {
    let vars: BTreeMap<&str, &str> = [
        ("PALISADE_SERVER__TIMEOUT__TIMEOUT", "3s"),
        ("PALISADE_SERVER__BULKHEAD__MAX_CONCURRENT", "7"),
        ("PALISADE_SERVER__RATE_LIMIT__TIERS__GOLD__LIMIT", "50"),
        ("PALISADE_SERVER__BREAKER__FAILURE_RATE", "0.25"),
        ("PALISADE_SERVER__BULKHEAD__HOLD_UNTIL_BODY_END", "true"),
        ("PALISADE_ADDR", "not a config key"),
    ]
    .into_iter()
    .collect();
    let text = "[server]\ntenant_header = \"x-t\"\n[server.bulkhead]\nmax_concurrent = 3\n\
                [server.rate_limit.tiers]\ngold = { limit = 10, per = \"1s\" }\n[server.breaker]\n";
    let c =
        Config::from_toml_str_with_env(text, "t.toml", |n| vars.get(n).map(|v| (*v).to_owned()))
            .unwrap();
    assert_eq!(
        c.server.timeout.as_ref().map(|t| t.timeout),
        Some(Duration::from_secs(3))
    );
    let b = c.server.bulkhead.as_ref().unwrap();
    assert_eq!(b.max_concurrent, Some(7));
    assert!(b.hold_until_body_end);
    assert_eq!(
        c.server.rate_limit.as_ref().unwrap().tiers["gold"].limit,
        50
    );
    assert_eq!(c.server.breaker.as_ref().unwrap().failure_rate, Some(0.25));
    assert_eq!(c.env_overrides().len(), 5);
    assert_eq!(
        c.env_overrides()["server.timeout.timeout"],
        "PALISADE_SERVER__TIMEOUT__TIMEOUT"
    );
}

#[test]
fn secrets_are_not_shown() {
    let c = Config::from_toml_str(
        "[server.idempotency]\nsecret = \"0123456789abcdef-very-secret\"\n",
        "t.toml",
    )
    .unwrap();
    let shown = format!("{c:?}");
    assert!(!shown.contains("very-secret"), "{shown}");
    assert!(c.idempotency_builder().unwrap().build().is_ok());
    let e = err("[server.idempotency]\nsecret = \"short\"\n");
    assert_eq!(e.key(), Some("server.idempotency.secret"));
}

#[test]
fn heal_detectors_build_from_the_example() {
    let c = Config::from_toml_str(EXAMPLE, "example.toml").unwrap();
    let detectors = c.detectors().unwrap();
    let names: Vec<_> = detectors.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["api_errors", "api_p99_high", "traffic_drop"]);
    let p99 = &detectors[1];
    assert_eq!(p99.signal, "api.p99");
    assert_eq!(p99.detector.name(), "threshold");
    assert_eq!(c.detect_window(), Duration::from_secs(10));
    let recorders = c.recorders().unwrap();
    assert_eq!(recorders.max_signals(), 64);
    assert_eq!(
        recorders.config().windows(),
        [10, 60, 300].map(Duration::from_secs)
    );
}

#[test]
fn heal_detectors_feed_samples_and_alarm() {
    use palisade_heal::detect::Status;
    use palisade_heal::signals::Sample;
    let c = Config::from_toml_str(
        "[heal.detectors.slow]\nkind = \"threshold\"\nsignal = \"api.p99\"\nabove = 3.0\ncount = 5\n",
        "t.toml",
    )
    .unwrap();
    let mut d = c.detectors().unwrap().pop().unwrap().detector;
    let t0 = tokio::time::Instant::now();
    let mut statuses = Vec::new();
    for i in 0..5u64 {
        let v = d.observe(Sample::new(3.5, t0 + Duration::from_secs(i)));
        statuses.push(v.status);
    }
    assert_eq!(statuses[..4], [Status::Normal; 4]);
    assert_eq!(statuses[4], Status::Anomalous);
}

#[test]
fn heal_errors_name_the_key() {
    let cases: &[(&str, &str)] = &[
        (
            "[heal.detectors.a]\nkind = \"ewma\"\nsignal = \"x\"\nalpha = 0.9\n",
            "heal.detectors.a.alpha",
        ),
        (
            "[heal.detectors.a]\nkind = \"threshold\"\nsignal = \"x\"\nabove = 1.0\nalpha = 0.2\n",
            "heal.detectors.a.alpha",
        ),
        (
            "[heal.detectors.a]\nkind = \"threshold\"\nsignal = \"x\"\n",
            "heal.detectors.a.above",
        ),
        (
            "[heal.detectors.a]\nkind = \"threshold\"\nsignal = \"x\"\nbelow = 1.0\nrecover_above = { value = 0.5, for = \"1m\" }\n",
            "heal.detectors.a.recover_above",
        ),
        (
            "[heal.detectors.a]\nkind = \"mean_sigma\"\nsignal = \"x\"\nwindow = 1000000\n",
            "heal.detectors.a.window",
        ),
        (
            "[heal.detectors.a]\nkind = \"rate_of_change\"\nsignal = \"\"\ndrop = 0.5\n",
            "heal.detectors.a.signal",
        ),
        ("[heal.signals]\nslots = 1\n", "heal.signals.slots"),
        ("[heal.signals]\nmax_signals = 0\n", "heal.signals.max_signals"),
        (
            "[heal.signals]\nwindows = [\"10s\"]\ndetect_window = \"1m\"\n",
            "heal.signals.detect_window",
        ),
        ("[heal.signals]\nrelative_accuracy = 2.0\n", "heal.signals.relative_accuracy"),
    ];
    for (text, key) in cases {
        let e = err(text);
        assert_eq!(e.kind(), ConfigErrorKind::Invalid, "{text}: {e}");
        assert_eq!(e.key(), Some(*key), "{text}: {e}");
        assert!(e.line().is_some(), "{text}: {e}");
    }
    // Unknown kinds and keys are refused by the schema, with their line.
    let e = err("[heal.detectors.a]\nkind = \"magic\"\nsignal = \"x\"\n");
    assert_eq!(e.line(), Some(2), "{e}");
    let e = err("[heal.detectors.a]\nkind = \"iqr\"\nsignal = \"x\"\nthreshhold = 1\n");
    assert_eq!(e.kind(), ConfigErrorKind::UnknownKey, "{e}");
    let e = err("[heal.signals]\nwindows = [\"ten seconds\"]\n");
    assert!(e.to_string().contains("heal.signals.windows"), "{e}");
}

#[test]
fn heal_signals_are_overridable_from_the_environment() {
    let vars: BTreeMap<String, String> = [("PALISADE_HEAL__SIGNALS__MAX_SIGNALS", "8")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let c = Config::from_toml_str_with_env("[heal.signals]\n", "t.toml", |n| vars.get(n).cloned())
        .unwrap();
    assert_eq!(c.recorders().unwrap().max_signals(), 8);
}

#[test]
fn adaptive_and_hedge_sections_build_and_name_their_keys() {
    let c = Config::from_toml_str(EXAMPLE, "example.toml").unwrap();
    let server = c.server_stack_builder().build().unwrap();
    let client = c.client_stack_builder().build().unwrap();
    let a = server.handles().adaptive().unwrap();
    assert_eq!(
        (a.name(), a.algorithm(), a.limit()),
        ("api", "gradient2", 40)
    );
    assert_eq!(a.partitions().len(), 2);
    let ca = client.handles().adaptive().unwrap();
    assert_eq!((ca.name(), ca.algorithm()), ("inventory", "vegas"));
    assert!(client.handles().hedge().is_some());

    let builder: &[(&str, &str)] = &[
        ("[server.adaptive]\nmin_limit = 0\n", "server.adaptive.min_limit"),
        ("[server.adaptive]\nmax_limit = 5\n", "server.adaptive.min_limit"),
        ("[server.adaptive]\nsmoothing = 2.0\n", "server.adaptive.smoothing"),
        (
            "[server.adaptive]\nwindow = { min = \"2s\", max = \"1s\", samples = 10 }\n",
            "server.adaptive.window",
        ),
        (
            "[server.adaptive]\ndefault_partition = \"live\"\n",
            "server.adaptive.default_partition",
        ),
        (
            "[server]\ntenant_header = \"x-t\"\n[server.adaptive]\npartitions = [{ name = \"a\", share = 0.8 }, { name = \"b\", share = 0.8 }]\n",
            "server.adaptive.partitions",
        ),
        ("[client.adaptive]\nalgorithm = \"aimd\"\ntimeout = \"0s\"\n", "client.adaptive.timeout"),
        ("[client.hedge]\nmax_hedges = 11\n", "client.hedge.max_hedges"),
        ("[client.hedge]\ndelay = \"2h\"\n", "client.hedge.delay"),
        ("[client.hedge]\nbudget = { ratio = -1.0, burst = 1 }\n", "client.hedge.budget.ratio"),
    ];
    let cross: &[(&str, &str)] = &[
        ("[server.adaptive]\nalpha = 3.0\n", "server.adaptive.alpha"),
        (
            "[client.adaptive]\nalgorithm = \"vegas\"\nqueue_size = 2.0\n",
            "client.adaptive.queue_size",
        ),
        (
            "[server.adaptive]\npartitions = [{ name = \"a\", share = 0.5 }]\n",
            "server.adaptive.partitions",
        ),
        (
            "[server.adaptive]\nmax_keys = 10\n",
            "server.adaptive.max_keys",
        ),
        (
            "[client.adaptive]\nmissing_key = \"reject\"\n",
            "client.adaptive.missing_key",
        ),
        (
            "[client.hedge]\nbudget = { ratio = 0.1 }\n",
            "client.hedge.budget",
        ),
        (
            "[client.hedge]\nbudget = { unlimited = true, burst = 3 }\n",
            "client.hedge.budget.unlimited",
        ),
        (
            "[client.hedge]\nhedge_paths = [\"x\"]\n",
            "client.hedge.hedge_paths",
        ),
    ];
    for (text, key) in builder.iter().chain(cross) {
        let e = err(text);
        assert_eq!(e.kind(), ConfigErrorKind::Invalid, "{text}: {e}");
        assert_eq!(e.key(), Some(*key), "{text}: {e}");
        assert!(e.line().is_some(), "{text}: {e}");
    }
    for text in [
        "[client.hedge]\ndelay = \"q95\"\n",
        "[client.hedge]\ndelay = \"p100\"\n",
        "[server.adaptive]\nalgorithm = \"cubic\"\n",
        "[server.adaptive]\nwindow = { min = \"1s\", max = \"1s\" }\n",
    ] {
        let e = err(text);
        assert!(e.line() == Some(2), "{text}: {e}");
    }
    let e = err("[client.hedge]\nmax_hegdes = 2\n");
    assert_eq!(e.kind(), ConfigErrorKind::UnknownKey);
    assert_eq!(e.line(), Some(2));
}
