//! The adaptive concurrency limit and hedging in the presets and the config file.
//!
//! The server preset's adaptive slot refusing over its limit with a `503` through rescue (and timeouts
//! below it arriving as drops); the client preset's hedge beating a slow first attempt, leaving a `POST`
//! without a key alone and holding back while the stack's breaker is not closed; hedging over a real
//! tonic channel; and a config file that builds both slots and refuses a misspelt key with its line.
//! Paused time except over the network.

mod common;

// The code tonic-prost-build generated from examples/pb/echo.proto (see its header).
#[allow(unreachable_pub)]
#[rustfmt::skip]
#[path = "../examples/pb/echo.rs"]
mod pb;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use palisade::adaptive::{AdaptiveLayer, Gradient2};
use palisade::audit::Audit;
use palisade::breaker::{CircuitBreakerLayer, CircuitState};
use palisade::config::{Config, ConfigErrorKind};
use palisade::health::Health;
use palisade::hedge::{HedgeBody, HedgeLayer};
use palisade::metrics::Metrics;
use palisade::ops::StatusRegistry;
use palisade::stack::{ClientStack, ServerStack};
use palisade::timeout::TimeoutLayer;
use pb::echo_client::EchoClient;
use pb::echo_server::{Echo, EchoServer};
use pb::{SayReply, SayRequest};
use tokio::time::Instant;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tower::{service_fn, Layer, Service, ServiceExt};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A handler that answers `200` after `delay`.
fn slow_handler(
    delay: Duration,
) -> impl Service<Request<String>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone {
    service_fn(move |_req: Request<String>| async move {
        tokio::time::sleep(delay).await;
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    })
}

#[tokio::test(start_paused = true)]
async fn the_server_adaptive_slot_refuses_over_its_limit_with_503_and_sees_timeouts_as_drops() {
    let health = Health::new();
    let stack = ServerStack::builder()
        .health(&health)
        .adaptive(
            AdaptiveLayer::builder()
                .name("api")
                .algorithm(Gradient2::new().initial_limit(2).min_limit(1).max_limit(10))
                .retry_after(Duration::from_secs(3)),
        )
        .timeout(TimeoutLayer::builder().timeout(ms(500)))
        .build()
        .unwrap();
    let h = stack.handles().clone();
    let adaptive = h.adaptive().unwrap().clone();
    let mut svc = stack.layer(slow_handler(ms(100)));

    let first = svc.ready().await.unwrap().call(Request::new(String::new()));
    let second = svc.ready().await.unwrap().call(Request::new(String::new()));
    assert_eq!((adaptive.limit(), adaptive.in_flight()), (2, 2));
    let refused = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "3");
    assert_eq!(adaptive.rejected(), 1);
    assert!(adaptive.is_limiting());
    assert_eq!(first.await.unwrap().status(), 200);
    assert_eq!(second.await.unwrap().status(), 200);
    assert_eq!(adaptive.in_flight(), 0);

    // The timeout is inside the limit: a handler that overruns it is a drop, not a fast RTT.
    let slow = ServerStack::builder()
        .adaptive(AdaptiveLayer::builder().name("slow"))
        .timeout(TimeoutLayer::builder().timeout(ms(50)))
        .build()
        .unwrap();
    let slow_handle = slow.handles().adaptive().unwrap().clone();
    let res = slow
        .layer(slow_handler(Duration::from_secs(10)))
        .oneshot(Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!((slow_handle.drops(), slow_handle.samples()), (1, 0));

    // The handle is in the status snapshot and the metrics.
    let registry = StatusRegistry::new();
    h.register_status(&registry, "server.");
    let snapshot = registry.snapshot();
    assert_eq!(snapshot["server.adaptive"]["rejected"], 1);
    assert_eq!(snapshot["server.adaptive"]["algorithm"], "gradient2");
    let metrics = Metrics::new();
    metrics.register("server", &h);
    let text = metrics.render_prometheus();
    assert!(
        text.contains("palisade_adaptive_rejected_total{stack=\"server\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("palisade_adaptive_limit{stack=\"server\"} 2\n"),
        "{text}"
    );
    assert!(text
        .contains("palisade_health_component_state{stack=\"server\",component=\"adaptive.api\"}"));
}

/// A transport whose first call takes 10 s and every later one 5 ms; it counts calls.
#[derive(Clone, Default)]
struct Replicas {
    calls: Arc<AtomicUsize>,
}

impl Replicas {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn service(
        &self,
    ) -> impl Service<Request<HedgeBody<String>>, Response = Response<Full<Bytes>>, Error = Infallible>
           + Clone {
        let calls = self.calls.clone();
        service_fn(move |req: Request<HedgeBody<String>>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let fail = req.uri().path() == "/fail";
                tokio::time::sleep(ms(if n == 0 { 10_000 } else { 5 })).await;
                let mut res = Response::new(Full::new(Bytes::from(format!("attempt {n}"))));
                if fail {
                    *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                }
                Ok::<_, Infallible>(res)
            }
        })
    }
}

async fn body_text(
    res: Response<impl http_body::Body<Data = Bytes, Error: std::fmt::Debug>>,
) -> String {
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_client_hedge_beats_a_slow_first_attempt_and_leaves_unkeyed_posts_alone() {
    let build = || {
        ClientStack::builder()
            .hedge(HedgeLayer::builder().delay(ms(50)))
            .breaker(CircuitBreakerLayer::builder().name("backend"))
            .build()
            .unwrap()
    };

    let stack = build();
    let hedge = stack.handles().hedge().unwrap().clone();
    let replicas = Replicas::default();
    let svc = stack.layer(replicas.service());
    let started = Instant::now();
    let res = svc
        .clone()
        .oneshot(Request::get("/item/7").body(String::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(started.elapsed(), ms(55), "50 ms delay + 5 ms, not 10 s");
    assert_eq!(body_text(res).await, "attempt 1");
    assert_eq!(
        (hedge.hedges(), hedge.hedge_wins(), hedge.cancelled()),
        (1, 1, 1)
    );
    assert_eq!(replicas.calls(), 2);

    // A POST without an Idempotency-Key is sent once, however slow.
    let stack = build();
    let hedge = stack.handles().hedge().unwrap().clone();
    let replicas = Replicas::default();
    let started = Instant::now();
    let res = stack
        .layer(replicas.service())
        .oneshot(Request::post("/orders").body("{}".to_owned()).unwrap())
        .await
        .unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    assert_eq!(body_text(res).await, "attempt 0");
    assert_eq!(
        (hedge.requests(), hedge.hedges(), replicas.calls()),
        (1, 0, 1)
    );

    // With a key it is hedged.
    let replicas = Replicas::default();
    let res = stack
        .layer(replicas.service())
        .oneshot(
            Request::post("/orders")
                .header("idempotency-key", "k-1")
                .body("{}".to_owned())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(body_text(res).await, "attempt 1");
    assert_eq!((hedge.hedges(), replicas.calls()), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn no_hedge_while_the_stacks_breaker_is_not_closed() {
    let stack = ClientStack::builder()
        .hedge(HedgeLayer::builder().delay(ms(50)))
        .breaker(
            CircuitBreakerLayer::builder()
                .name("backend")
                .consecutive_failures(1),
        )
        .build()
        .unwrap();
    let h = stack.handles().clone();
    let (hedge, breaker) = (h.hedge().unwrap().clone(), h.breaker().unwrap().clone());
    // A dry-run breaker opens on failures but still lets calls through.
    breaker.metrics_only();
    let replicas = Replicas::default();
    let svc = stack.layer(replicas.service());
    replicas.calls.store(1, Ordering::SeqCst); // fast from the start
    let res = svc
        .clone()
        .oneshot(Request::get("/fail").body(String::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 500);
    assert_eq!(breaker.state(), CircuitState::Open);

    replicas.calls.store(0, Ordering::SeqCst); // the next call is the slow one
    let started = Instant::now();
    let res = svc
        .oneshot(Request::get("/item/7").body(String::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(10),
        "waited for the first attempt"
    );
    assert_eq!(res.status(), 200);
    assert_eq!((hedge.hedges(), hedge.suppressed()), (0, 1));

    let registry = StatusRegistry::new();
    h.register_status(&registry, "client.");
    assert_eq!(registry.snapshot()["client.hedge"]["suppressed"], 1);
}

/// The echo backend: its first call takes `first_delay`, later ones answer at once.
#[derive(Debug, Default)]
struct Backend {
    calls: AtomicUsize,
}

#[tonic::async_trait]
impl Echo for Backend {
    async fn say(
        &self,
        request: tonic::Request<SayRequest>,
    ) -> Result<tonic::Response<SayReply>, tonic::Status> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let req = request.into_inner();
        if n == 0 {
            tokio::time::sleep(ms(u64::from(req.delay_ms))).await;
        }
        Ok(tonic::Response::new(SayReply {
            message: format!("{} from call {n}", req.message),
            deadline_ms: None,
        }))
    }
}

#[tokio::test]
async fn a_hedge_over_a_tonic_channel_beats_a_slow_first_call() {
    let backend = Arc::new(Backend::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn({
        let backend = backend.clone();
        async move {
            Server::builder()
                .add_service(EchoServer::from_arc(backend))
                .serve_with_incoming(TcpIncoming::from(listener))
                .await
                .unwrap();
        }
    });
    let channel = common::channel(addr).await;

    let stack = ClientStack::tonic()
        .total_timeout(TimeoutLayer::builder().timeout(Duration::from_secs(5)))
        .hedge(
            HedgeLayer::builder()
                .delay(ms(50))
                .hedge_if(|parts| parts.uri.path() == "/palisade.echo.Echo/Say"),
        )
        .breaker(CircuitBreakerLayer::builder().name("echo"))
        .adaptive(AdaptiveLayer::builder().name("echo"))
        .build()
        .unwrap();
    let hedge = stack.handles().hedge().unwrap().clone();
    assert!(stack.handles().adaptive().is_some());
    let mut client = EchoClient::new(stack.layer(channel));
    let started = Instant::now();
    let reply = client
        .say(SayRequest {
            message: "hello".to_owned(),
            delay_ms: 3_000,
            ..SayRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(reply.message, "hello from call 1");
    assert_eq!((hedge.hedges(), hedge.hedge_wins()), (1, 1));
}

const CONFIG: &str = r#"
[server.adaptive]
name = "api"
algorithm = "aimd"
initial_limit = 1
min_limit = 1
max_limit = 10

[server.timeout]
timeout = "1s"

[client.hedge]
delay = "50ms"
budget = { unlimited = true }

[client.breaker]
name = "backend"

[client.adaptive]
name = "backend"
algorithm = "vegas"
"#;

#[tokio::test(start_paused = true)]
async fn the_config_file_builds_both_slots_and_refuses_a_bad_key_with_its_line() {
    let config = Config::from_toml_str(CONFIG, "palisade.toml").unwrap();
    let (health, audit) = (Health::new(), Audit::disabled());
    let server = config
        .server_stack_builder()
        .health(&health)
        .audit(&audit)
        .build()
        .unwrap();
    let client = config
        .client_stack_builder()
        .health(&health)
        .audit(&audit)
        .build()
        .unwrap();
    let adaptive = server.handles().adaptive().unwrap().clone();
    assert_eq!((adaptive.algorithm(), adaptive.limit()), ("aimd", 1));
    assert_eq!(client.handles().adaptive().unwrap().algorithm(), "vegas");
    assert!(client.handles().hedge().is_some());

    // The configured server stack: one request in flight, the next refused with 503.
    let mut svc = server.layer(slow_handler(ms(100)));
    let first = svc.ready().await.unwrap().call(Request::new(String::new()));
    let refused = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(first.await.unwrap().status(), StatusCode::OK);
    assert_eq!(adaptive.rejected(), 1);

    let bad = CONFIG.replace("delay = \"50ms\"", "delay = \"50ms\"\nmax_hegdes = 2");
    let e = Config::from_toml_str(&bad, "palisade.toml").unwrap_err();
    assert_eq!(e.kind(), ConfigErrorKind::UnknownKey);
    assert_eq!(e.line(), Some(14), "{e}");
    assert!(e.to_string().starts_with("palisade.toml:14:"), "{e}");
    assert!(e.to_string().contains("max_hegdes"), "{e}");

    let bad = CONFIG.replace(
        "algorithm = \"vegas\"",
        "algorithm = \"vegas\"\nbackoff_ratio = 0.8",
    );
    let e = Config::from_toml_str(&bad, "palisade.toml").unwrap_err();
    assert_eq!(e.key(), Some("client.adaptive.backoff_ratio"), "{e}");
    assert!(e.to_string().starts_with("palisade.toml:22:"), "{e}");
}
