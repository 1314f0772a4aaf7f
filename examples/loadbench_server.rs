//! The server `scripts/loadbench.sh` drives with `wrk`: an axum hello-world (`GET /` → `hello`), bare or
//! behind the whole `palisade::stack::ServerStack`, to measure what the stack costs at the HTTP level.
//!
//! ```text
//! cargo run --release --features full --example loadbench_server -- --mode stack --threads 1
//! # first stdout line: the bound address, e.g. 127.0.0.1:40123
//! wrk -t1 -c32 -d10s --latency -H 'x-tenant-id: bench' http://127.0.0.1:40123/
//! ```
//!
//! Options: `--mode bare|stack` (default `stack`), `--addr HOST:PORT` (default `127.0.0.1:0`, an
//! ephemeral port), `--threads N` tokio worker threads (default 1). It exits on SIGTERM or Ctrl-C
//! without draining (a benchmark server: in-flight requests are dropped).
//!
//! In `stack` mode every slot is filled — degradation gate, rate limit keyed by `x-tenant-id`, bulkhead,
//! timeout, fallback (static response), circuit breaker, chaos with no fault — sharing one `Health`
//! and one in-memory `Audit`. The limits are set so that nothing is ever refused under the bench's load:
//! the benchmark measures the cost of the happy path, not of rejections (the script checks `wrk`'s count
//! of non-2xx responses).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use http::StatusCode;
use palisade::audit::Audit;
use palisade::breaker::CircuitBreakerLayer;
use palisade::bulkhead::BulkheadLayer;
use palisade::chaos::ChaosLayer;
use palisade::degrade::GateLayer;
use palisade::fallback::{FallbackLayer, StaticResponse};
use palisade::health::Health;
use palisade::key::HeaderKey;
use palisade::ratelimit::{Rate, RateLimitLayer};
use palisade::stack::{ServerStack, StackError};
use palisade::timeout::TimeoutLayer;

const USAGE: &str = "usage: loadbench_server [--mode bare|stack] [--addr HOST:PORT] [--threads N]";

/// Which server to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The plain router.
    Bare,
    /// The router behind the full server stack.
    Stack,
}

#[derive(Debug)]
struct Options {
    mode: Mode,
    addr: SocketAddr,
    threads: usize,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
    let mut opts = Options {
        mode: Mode::Stack,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        threads: 1,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value; {USAGE}"))
        };
        match arg.as_str() {
            "--mode" => {
                opts.mode = match value("--mode")?.as_str() {
                    "bare" => Mode::Bare,
                    "stack" => Mode::Stack,
                    other => return Err(format!("unknown mode `{other}`: use bare or stack")),
                }
            }
            "--addr" => {
                let v = value("--addr")?;
                opts.addr = v
                    .parse()
                    .map_err(|e| format!("invalid address `{v}`: {e}"))?;
            }
            "--threads" => {
                let v = value("--threads")?;
                opts.threads = match v.parse::<usize>() {
                    Ok(n) if (1..=1024).contains(&n) => n,
                    _ => return Err(format!("invalid --threads `{v}`: a number from 1 to 1024")),
                };
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument `{other}`; {USAGE}")),
        }
    }
    Ok(opts)
}

/// The hello-world router both modes serve.
fn hello() -> Router {
    Router::new().route("/", get(|| async { "hello" }))
}

/// `hello()` behind the whole server stack, every slot filled, with limits that never refuse under the
/// bench's load.
fn stacked(health: &Health, audit: &Audit) -> Result<Router, StackError> {
    let stack = ServerStack::builder()
        .health(health)
        .audit(audit)
        .gate(GateLayer::builder().name("api"))
        .rate_limit(
            RateLimitLayer::builder(HeaderKey::from_static("x-tenant-id").max_len(64))
                // ~4.3 billion requests per second per tenant, a burst of a million: never refuses.
                .default_rate(Rate::per_second(u32::MAX).burst(1_000_000))
                .max_keys(10_000),
        )
        // Far more than any sane CONNECTIONS (wrk has one request in flight per connection).
        .bulkhead(BulkheadLayer::builder().name("api").max_concurrent(65_536))
        .timeout(TimeoutLayer::builder().timeout(Duration::from_secs(10)))
        .fallback(FallbackLayer::builder().static_response(
            StaticResponse::new(StatusCode::SERVICE_UNAVAILABLE).body("temporarily unavailable\n"),
        ))
        .breaker(CircuitBreakerLayer::builder().name("app"))
        .chaos(ChaosLayer::builder().name("app"))
        .build()?;
    Ok(hello().layer(stack))
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
async fn shutdown_signal() -> std::io::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => Ok("SIGTERM"),
            r = tokio::signal::ctrl_c() => r.map(|()| "SIGINT"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.map(|()| "Ctrl-C")
    }
}

async fn serve(opts: Options) -> Result<(), String> {
    let health = Health::new();
    let (audit, _log) = Audit::memory(10_000);
    let router = match opts.mode {
        Mode::Bare => hello(),
        Mode::Stack => stacked(&health, &audit).map_err(|e| e.to_string())?,
    };

    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", opts.addr))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    // The first stdout line is the address, for scripts; the rest goes to stderr.
    println!("{local}");
    eprintln!(
        "loadbench_server: mode={:?} threads={} listening on http://{local}/",
        opts.mode, opts.threads
    );

    let server = axum::serve(listener, router);
    let result = tokio::select! {
        r = server => r.map_err(|e| format!("server stopped: {e}")),
        s = shutdown_signal() => match s {
            Ok(name) => {
                eprintln!("loadbench_server: {name}, exiting");
                Ok(())
            }
            Err(e) => Err(format!("cannot listen for signals: {e}")),
        },
    };
    result
}

fn main() -> ExitCode {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.threads)
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
