//! Failure classification: HTTP status, gRPC status in headers and trailers, errors, slow calls.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use palisade_core::classify::{
    Classified, Classify, ClassifyBody, ErrorsOnly, Failure, Grpc, HttpStatus, Outcome, SlowCalls,
    StatusSet,
};
use palisade_core::error::BoxError;
use palisade_core::grpc::{GrpcCode, GrpcCodes};

/// A streaming body: the given frames, one per poll.
struct Frames(VecDeque<Frame<Bytes>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

fn grpc_stream(trailer_status: Option<&'static str>) -> Response<Frames> {
    let mut frames = VecDeque::new();
    frames.push_back(Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi")));
    if let Some(code) = trailer_status {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", code.parse().unwrap());
        trailers.insert("grpc-message", "backend%20down".parse().unwrap());
        frames.push_back(Frame::trailers(trailers));
    }
    Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(Frames(frames))
        .unwrap()
}

/// Runs a response through the classifier and its body to the end; returns the one reported outcome.
async fn verdict<C: Classify<Response<Frames>>>(c: &C, res: Response<Frames>) -> Outcome {
    let seen = Arc::new(Mutex::new(Vec::new()));
    match c.classify_response(&res) {
        Classified::Ready(o) => o,
        Classified::AtEndOfStream(eos) => {
            let sink = seen.clone();
            let body =
                ClassifyBody::deferred(res.into_body(), eos, move |o| sink.lock().unwrap().push(o));
            assert!(body.is_pending());
            body.collect().await.unwrap();
            let seen = seen.lock().unwrap();
            assert_eq!(
                seen.len(),
                1,
                "the outcome is reported exactly once: {seen:?}"
            );
            seen[0]
        }
    }
}

#[test]
fn http_5xx_vs_4xx() {
    let c = HttpStatus::server_errors();
    for (code, failed) in [
        (200, false),
        (204, false),
        (404, false),
        (429, false),
        (500, true),
        (503, true),
        (599, true),
    ] {
        let res = Response::builder().status(code).body(()).unwrap();
        match c.classify_response(&res) {
            Classified::Ready(o) => assert_eq!(o.is_failure(), failed, "{code}"),
            Classified::AtEndOfStream(e) => match e {},
        }
    }
    let res = Response::builder().status(502).body(()).unwrap();
    assert!(matches!(
        c.classify_response(&res),
        Classified::Ready(Outcome::Failure(Failure::Status(StatusCode::BAD_GATEWAY)))
    ));
}

#[test]
fn configurable_status_set() {
    let set = StatusSet::server_errors()
        .without(StatusCode::NOT_IMPLEMENTED)
        .with(StatusCode::TOO_MANY_REQUESTS);
    assert!(set.contains(StatusCode::TOO_MANY_REQUESTS));
    assert!(!set.contains(StatusCode::NOT_IMPLEMENTED));
    assert!(set.contains(StatusCode::INTERNAL_SERVER_ERROR));
    assert!(!set.contains(StatusCode::OK));
    let c = HttpStatus::new(set);
    let res = Response::builder().status(501).body(()).unwrap();
    assert!(matches!(
        c.classify_response(&res),
        Classified::Ready(Outcome::Success)
    ));
    assert_eq!(
        format!("{:?}", StatusSet::empty().with(StatusCode::OK)),
        "{200}"
    );
}

#[test]
fn errors_are_failures() {
    let err: BoxError = "connection reset".into();
    assert_eq!(
        <HttpStatus as Classify<Response<()>>>::classify_error(&HttpStatus::server_errors(), &*err),
        Outcome::Failure(Failure::Error)
    );
    assert_eq!(
        <ErrorsOnly as Classify<String>>::classify_error(&ErrorsOnly, &*err),
        Outcome::Failure(Failure::Error)
    );
    assert!(matches!(
        ErrorsOnly.classify_response(&"any response"),
        Classified::Ready(Outcome::Success)
    ));
}

#[tokio::test]
async fn grpc_status_in_trailers_is_a_failure_despite_http_200() {
    let c = Grpc::new();
    let res = grpc_stream(Some("14"));
    assert_eq!(res.status(), 200);
    assert_eq!(
        verdict(&c, res).await,
        Outcome::Failure(Failure::Grpc(GrpcCode::Unavailable))
    );
}

#[tokio::test]
async fn grpc_ok_in_trailers_is_a_success() {
    assert_eq!(
        verdict(&Grpc::new(), grpc_stream(Some("0"))).await,
        Outcome::Success
    );
}

#[tokio::test]
async fn grpc_client_errors_are_not_failures_by_default() {
    // INVALID_ARGUMENT says the caller is wrong, not the service.
    assert_eq!(
        verdict(&Grpc::new(), grpc_stream(Some("3"))).await,
        Outcome::Success
    );
    let strict = Grpc::new().failures(GrpcCodes::all_errors());
    assert_eq!(
        verdict(&strict, grpc_stream(Some("3"))).await,
        Outcome::Failure(Failure::Grpc(GrpcCode::InvalidArgument))
    );
}

#[tokio::test]
async fn grpc_stream_without_status_is_unknown() {
    assert_eq!(
        verdict(&Grpc::new(), grpc_stream(None)).await,
        Outcome::Failure(Failure::Grpc(GrpcCode::Unknown))
    );
    // A malformed status is UNKNOWN too.
    assert_eq!(
        verdict(&Grpc::new(), grpc_stream(Some("fourteen"))).await,
        Outcome::Failure(Failure::Grpc(GrpcCode::Unknown))
    );
}

#[test]
fn grpc_status_in_headers_decides_at_once() {
    let res = Response::builder()
        .status(200)
        .header("content-type", "application/grpc+proto")
        .header("grpc-status", "8")
        .body(())
        .unwrap();
    assert!(matches!(
        Grpc::new().classify_response(&res),
        Classified::Ready(Outcome::Failure(Failure::Grpc(GrpcCode::ResourceExhausted)))
    ));
}

#[test]
fn non_grpc_responses_use_http_status() {
    let res = Response::builder().status(503).body(()).unwrap();
    assert!(matches!(
        Grpc::new().classify_response(&res),
        Classified::Ready(Outcome::Failure(Failure::Status(
            StatusCode::SERVICE_UNAVAILABLE
        )))
    ));
    // A gRPC content type on a failed HTTP exchange (a proxy's 502) is judged by the HTTP status.
    let res = Response::builder()
        .status(502)
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    assert!(matches!(
        Grpc::new().classify_response(&res),
        Classified::Ready(Outcome::Failure(Failure::Status(StatusCode::BAD_GATEWAY)))
    ));
}

#[test]
fn dropped_body_reports_ignored_once() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let res = grpc_stream(Some("14"));
    let Classified::AtEndOfStream(eos) = Grpc::new().classify_response(&res) else {
        panic!("a streaming gRPC response waits for its trailers");
    };
    let sink = seen.clone();
    drop(ClassifyBody::deferred(res.into_body(), eos, move |o| {
        sink.lock().unwrap().push(o)
    }));
    assert_eq!(*seen.lock().unwrap(), vec![Outcome::Ignored]);
}

#[test]
fn unpolled_body_at_its_end_reports_the_end_of_stream_verdict() {
    // A body that is already at its end may never be polled (hyper sends END_STREAM at once);
    // dropping it finishes the verdict instead of ignoring it.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let res = Response::builder()
        .header("content-type", "application/grpc")
        .body(Frames(VecDeque::new()))
        .unwrap();
    let Classified::AtEndOfStream(eos) = Grpc::new().classify_response(&res) else {
        panic!("no grpc-status in the headers: the verdict waits for the end");
    };
    let sink = seen.clone();
    drop(ClassifyBody::deferred(res.into_body(), eos, move |o| {
        sink.lock().unwrap().push(o)
    }));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Outcome::Failure(Failure::Grpc(GrpcCode::Unknown))]
    );
}

#[tokio::test]
async fn ready_body_passes_through() {
    let body: ClassifyBody<Frames, palisade_core::classify::GrpcEos, fn(Outcome)> =
        ClassifyBody::ready(grpc_stream(Some("0")).into_body());
    assert!(!body.is_pending());
    let collected = body.collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
}

#[test]
fn slow_calls() {
    let c = SlowCalls::new(HttpStatus::server_errors(), Duration::from_millis(500));
    let latency = |ms| {
        <SlowCalls<HttpStatus> as Classify<Response<()>>>::classify_latency(
            &c,
            Duration::from_millis(ms),
        )
    };
    assert_eq!(latency(499), None);
    assert_eq!(
        latency(500),
        Some(Failure::Slow(Duration::from_millis(500)))
    );
    assert_eq!(
        Outcome::Success.with_latency(latency(900)),
        Outcome::Failure(Failure::Slow(Duration::from_millis(900)))
    );
    assert_eq!(
        Outcome::Success.with_latency(latency(100)),
        Outcome::Success
    );
    // A failure stays the failure it was.
    let f = Outcome::Failure(Failure::Status(StatusCode::BAD_GATEWAY));
    assert_eq!(f.with_latency(latency(900)), f);
    assert_eq!(
        Outcome::Ignored.with_latency(latency(900)),
        Outcome::Ignored
    );
    // The wrapped classifier still decides responses.
    let res = Response::builder().status(500).body(()).unwrap();
    assert!(matches!(
        c.classify_response(&res),
        Classified::Ready(Outcome::Failure(_))
    ));
}
