//! gRPC test fixtures shared by the tonic tests: a bytes codec (no protobuf code generation) and a
//! `test.Echo` service whose behaviour is chosen by method name.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use palisade::error::BoxError;
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::NamedService;
use tonic::transport::Channel;
use tonic::Status;
use tower::Service;

/// Raw bytes as the message type.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesCodec;

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

pub type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// `test.Echo`. Methods: `Flaky` fails with `UNAVAILABLE` on its first two calls, then echoes; `Down`
/// always fails with `UNAVAILABLE`; `Hang` never answers; anything else echoes. Counts every call that
/// reaches it.
#[derive(Debug, Clone, Default)]
pub struct Echo {
    pub calls: Arc<AtomicUsize>,
    flaky: Arc<AtomicUsize>,
}

impl Echo {
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

struct Unary {
    method: String,
    flaky: Arc<AtomicUsize>,
}

impl tonic::server::UnaryService<Bytes> for Unary {
    type Response = Bytes;
    type Future = BoxFut<Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, req: tonic::Request<Bytes>) -> Self::Future {
        let method = std::mem::take(&mut self.method);
        let flaky = self.flaky.clone();
        Box::pin(async move {
            match method.as_str() {
                "Flaky" if flaky.fetch_add(1, Ordering::SeqCst) < 2 => {
                    Err(Status::unavailable("warming up"))
                }
                "Down" => Err(Status::unavailable("backend down")),
                "Hang" => std::future::pending().await,
                _ => Ok(tonic::Response::new(req.into_inner())),
            }
        })
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
        self.calls.fetch_add(1, Ordering::SeqCst);
        let unary = Unary {
            method: req
                .uri()
                .path()
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned(),
            flaky: self.flaky.clone(),
        };
        Box::pin(async move { Ok(tonic::server::Grpc::new(BytesCodec).unary(unary, req).await) })
    }
}

/// Connects a channel to `addr`, within 10 s.
pub async fn channel(addr: SocketAddr) -> Channel {
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

/// Calls `/test.Echo/{method}` with `ping` through any gRPC transport, within 10 s.
pub async fn call<T>(client: T, method: &str) -> Result<Bytes, Status>
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
