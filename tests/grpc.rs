//! gRPC rescue with real tonic peers over loopback HTTP/2 (feature `tonic`).
//!
//! Server side: a tonic server behind `RescueLayer` answers rejections with trailers-only responses that a
//! tonic client reads as the right `Status`. Client side: `StatusLayer` around a palisade client stack
//! makes a tonic client see `UNAVAILABLE` / `RESOURCE_EXHAUSTED` / `DEADLINE_EXCEEDED` instead of
//! `UNKNOWN`.

use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use palisade::error::*;
use palisade::rescue::grpc::{into_status, to_status, StatusLayer};
use palisade::rescue::RescueLayer;
use tonic::transport::Server;
use tonic::{Code, Status};
use tower::{Layer, Service, ServiceBuilder};

mod common;

use common::{call, channel, BoxFut, Echo};

/// The rejection a stand-in palisade layer returns for a method name.
fn rejection_for(path: &str) -> Option<BoxError> {
    let method = path.rsplit('/').next().unwrap_or_default();
    Some(match method {
        "RateLimited" => RateLimited::new(Duration::from_millis(1500)).into(),
        "CircuitOpen" => CircuitOpen::new(Some(Duration::from_secs(5))).into(),
        "Overloaded" => Overloaded::new().into(),
        "Timeout" => Elapsed::new(Duration::from_millis(250)).into(),
        "Shed" => Shed::new("critical").into(),
        "Internal" => "secret connection string postgres://admin:hunter2@db".into(),
        _ => return None,
    })
}

/// A stand-in for the palisade layers: refuses by method, passes the rest.
#[derive(Clone)]
struct Reject<S>(S);

impl<S, B, R> Service<http::Request<B>> for Reject<S>
where
    S: Service<http::Request<B>, Response = R>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = R;
    type Error = BoxError;
    type Future = BoxFut<Result<R, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match rejection_for(req.uri().path()) {
            Some(err) => Box::pin(async move { Err(err) }),
            None => {
                let fut = self.0.call(req);
                Box::pin(async move { fut.await.map_err(Into::into) })
            }
        }
    }
}

async fn serve() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stack = ServiceBuilder::new()
        .layer(RescueLayer::new())
        .layer(tower::layer::layer_fn(Reject));
    tokio::spawn(async move {
        Server::builder()
            .layer(stack)
            .add_service(Echo::default())
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    addr
}

fn pushback(status: &Status) -> Option<&str> {
    status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn server_rejections_reach_tonic_clients_as_statuses() {
    let addr = serve().await;
    let ch = channel(addr).await;

    assert_eq!(
        &call(ch.clone(), "Hello").await.unwrap()[..],
        b"ping",
        "pass-through"
    );

    let cases = [
        (
            "RateLimited",
            Code::ResourceExhausted,
            Some("1500"),
            "rate limit exceeded (retry after 2s)",
        ),
        (
            "CircuitOpen",
            Code::Unavailable,
            Some("5000"),
            "circuit open (retry after 5s)",
        ),
        ("Overloaded", Code::Unavailable, None, "service overloaded"),
        (
            "Timeout",
            Code::DeadlineExceeded,
            None,
            "request timed out after 250ms",
        ),
        (
            "Shed",
            Code::Unavailable,
            None,
            "request shed at degradation level critical",
        ),
        ("Internal", Code::Unknown, None, "internal error"),
    ];
    for (method, code, retry, message) in cases {
        let status = call(ch.clone(), method).await.unwrap_err();
        assert_eq!(status.code(), code, "{method}: {status:?}");
        assert_eq!(status.message(), message, "{method}");
        assert_eq!(pushback(&status), retry, "{method}");
    }
}

#[tokio::test]
async fn client_stack_errors_become_statuses() {
    let addr = serve().await;
    let ch = channel(addr).await;
    // A client-side palisade stack around the channel; StatusLayer outermost.
    let client = ServiceBuilder::new()
        .layer(StatusLayer::new())
        .layer(tower::layer::layer_fn(Reject))
        .service(ch.clone());

    assert_eq!(&call(client.clone(), "Hello").await.unwrap()[..], b"ping");

    let status = call(client.clone(), "CircuitOpen").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "circuit open (retry after 5s)");
    assert_eq!(pushback(&status), Some("5000"));

    let status = call(client.clone(), "Timeout").await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);

    let status = call(client.clone(), "RateLimited").await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);

    // Without StatusLayer tonic only sees an opaque error: UNKNOWN. This is what the layer fixes.
    let bare = Reject(ch);
    assert_eq!(
        call(bare, "CircuitOpen").await.unwrap_err().code(),
        Code::Unknown
    );
}

#[test]
fn status_conversion_keeps_existing_statuses_and_hides_internals() {
    let existing: BoxError = Box::new(Status::permission_denied("no"));
    assert_eq!(into_status(existing).code(), Code::PermissionDenied);

    let internal: BoxError = "password hunter2".into();
    let status = to_status(&*internal);
    assert_eq!(status.code(), Code::Unknown);
    assert!(!status.message().contains("hunter2"));

    let limited: BoxError = RateLimited::new(Duration::from_secs(2)).into();
    let status = into_status(limited);
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(pushback(&status), Some("2000"));
}

#[test]
fn status_layer_is_a_layer() {
    // The layer composes with any service whose error converts to BoxError.
    let svc = StatusLayer::new().layer(tower::service_fn(|_: ()| async {
        Err::<(), BoxError>(Overloaded::new().into())
    }));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let err = rt
        .block_on(tower::ServiceExt::oneshot(svc, ()))
        .unwrap_err();
    assert_eq!(into_status(err).code(), Code::Unavailable);
}
