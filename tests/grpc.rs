//! gRPC rescue with real tonic peers over loopback HTTP/2 (feature `tonic`).
//!
//! Server side: a tonic server behind `RescueLayer` answers rejections with trailers-only responses that a
//! tonic client reads as the right `Status`. Client side: `StatusLayer` around a palisade client stack
//! makes a tonic client see `UNAVAILABLE` / `RESOURCE_EXHAUSTED` / `DEADLINE_EXCEEDED` instead of
//! `UNKNOWN`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use palisade::error::*;
use palisade::rescue::grpc::{into_status, to_status, StatusLayer};
use palisade::rescue::RescueLayer;
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::NamedService;
use tonic::transport::{Channel, Server};
use tonic::{Code, Status};
use tower::{Layer, Service, ServiceBuilder};

/// Raw bytes as the message type: no protobuf code generation needed.
#[derive(Clone, Copy, Default)]
struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;

    fn encoder(&mut self) -> BytesCodec {
        BytesCodec
    }

    fn decoder(&mut self) -> BytesCodec {
        BytesCodec
    }
}

impl Encoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// `test.Echo`: every method echoes its request.
#[derive(Clone)]
struct Echo;

impl NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

struct EchoUnary;

impl tonic::server::UnaryService<Bytes> for EchoUnary {
    type Response = Bytes;
    type Future = std::future::Ready<Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, req: tonic::Request<Bytes>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(req.into_inner())))
    }
}

impl Service<http::Request<Body>> for Echo {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFut<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            Ok(tonic::server::Grpc::new(BytesCodec)
                .unary(EchoUnary, req)
                .await)
        })
    }
}

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
            .add_service(Echo)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    addr
}

async fn channel(addr: SocketAddr) -> Channel {
    tokio::time::timeout(
        Duration::from_secs(10),
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect(),
    )
    .await
    .expect("connects within 10 s")
    .expect("connects")
}

async fn call<T>(client: T, method: &str) -> Result<Bytes, Status>
where
    T: tonic::client::GrpcService<Body>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError>,
    T::Error: Into<BoxError>,
{
    let mut grpc = tonic::client::Grpc::new(client);
    grpc.ready()
        .await
        .map_err(|e| Status::from_error(e.into()))?;
    let path = format!("/test.Echo/{method}").parse().unwrap();
    let call = grpc.unary(
        tonic::Request::new(Bytes::from_static(b"ping")),
        path,
        BytesCodec,
    );
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("answers within 10 s")
        .map(tonic::Response::into_inner)
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
            "rate limit exceeded (retry after 1.5s)",
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
