//! The response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Response, StatusCode};
use palisade_core::error::BoxError;
use pin_project_lite::pin_project;
use tokio::time::{sleep, Sleep};

use crate::body::ResponseBody;
use crate::fault::{FaultId, InjectedFault};
use crate::registry::{Action, Plan};

pin_project! {
    /// The response future of [`Chaos`](crate::Chaos): the inner service's future, possibly delayed, or
    /// an injected outcome.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        // No fault fired: the inner future, nothing else.
        Inner { #[pin] fut: F },
        // A fault fired. Its state is boxed so that the common case stays as small as `F`.
        Faulted { #[pin] fut: Option<F>, fault: Box<Faulted> },
    }
}

struct Faulted {
    delay: Option<Pin<Box<Sleep>>>,
    outcome: Outcome,
}

enum Outcome {
    Inner { stall: Option<u64> },
    Status(StatusCode, FaultId),
    Error(Option<BoxError>),
    Abort,
}

impl<F> ResponseFuture<F> {
    /// No fault: the inner future, as is.
    #[inline]
    pub(crate) fn pass(fut: F) -> Self {
        ResponseFuture {
            kind: Kind::Inner { fut },
        }
    }

    /// Carries out a plan; `call` is made only if the plan lets the request through.
    #[inline]
    pub(crate) fn planned<R>(plan: Plan, call: impl FnOnce(R) -> F, req: R) -> Self {
        let delay = (!plan.delay.is_zero()).then(|| Box::pin(sleep(plan.delay)));
        let (fut, outcome) = match plan.action {
            Action::Pass if delay.is_none() => return Self::pass(call(req)),
            Action::Pass => (Some(call(req)), Outcome::Inner { stall: None }),
            Action::Stall(after) => (Some(call(req)), Outcome::Inner { stall: Some(after) }),
            Action::Status(status, id) => (None, Outcome::Status(status, id)),
            Action::Error(err) => (None, Outcome::Error(Some(err))),
            Action::Abort => (None, Outcome::Abort),
        };
        ResponseFuture {
            kind: Kind::Faulted {
                fut,
                fault: Box::new(Faulted { delay, outcome }),
            },
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (delayed, kind) = match &self.kind {
            Kind::Inner { .. } => (false, "inner"),
            Kind::Faulted { fault, .. } => (
                fault.delay.is_some(),
                match fault.outcome {
                    Outcome::Inner { stall: None } => "inner",
                    Outcome::Inner { stall: Some(_) } => "inner (body stall)",
                    Outcome::Status(..) => "status",
                    Outcome::Error(_) => "error",
                    Outcome::Abort => "abort",
                },
            ),
        };
        f.debug_struct("ResponseFuture")
            .field("delayed", &delayed)
            .field("kind", &kind)
            .finish()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { fut } => {
                let res = ready!(fut.poll(cx)).map_err(Into::into)?;
                Poll::Ready(Ok(res.map(ResponseBody::new)))
            }
            KindProj::Faulted { fut, fault } => poll_faulted(fut, fault, cx),
        }
    }
}

#[inline(never)]
fn poll_faulted<F, B, E>(
    fut: Pin<&mut Option<F>>,
    fault: &mut Faulted,
    cx: &mut Context<'_>,
) -> Poll<Result<Response<ResponseBody<B>>, BoxError>>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    if let Some(delay) = &mut fault.delay {
        ready!(delay.as_mut().poll(cx));
        fault.delay = None;
    }
    match &mut fault.outcome {
        Outcome::Inner { stall } => {
            let fut = fut
                .as_pin_mut()
                .expect("a passed request has an inner future");
            let res = ready!(fut.poll(cx)).map_err(Into::into)?;
            Poll::Ready(Ok(match *stall {
                None => res.map(ResponseBody::new),
                Some(after) => res.map(|b| ResponseBody::stalled(b, after)),
            }))
        }
        Outcome::Status(status, id) => {
            let mut res = Response::new(ResponseBody::empty());
            *res.status_mut() = *status;
            res.extensions_mut().insert(InjectedFault::new(*id));
            Poll::Ready(Ok(res))
        }
        Outcome::Error(err) => Poll::Ready(Err(err
            .take()
            .expect("ResponseFuture polled after completion"))),
        // A hung dependency: no waker is kept, nothing is held; dropping the future ends it.
        Outcome::Abort => Poll::Pending,
    }
}
