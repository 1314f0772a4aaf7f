//! The response future: polls the inner future first and arms the timer only if it is pending.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_core::deadline::Scope;
use palisade_core::error::{BoxError, Elapsed};
use pin_project_lite::pin_project;
use tokio::time::Sleep;

pin_project! {
    /// The response future of [`Timeout`](crate::Timeout).
    ///
    /// On its first poll it polls the inner future; if that is ready, the result is returned and no timer
    /// is ever created (no clock read, no timer-wheel registration). Only when the inner future is pending
    /// is a [`Sleep`] created for the request's budget — in place, without boxing — so the deadline is
    /// measured from the end of the first poll. The inner future keeps priority: a response that is ready
    /// at the same poll as the deadline wins.
    ///
    /// When the budget runs out, the inner future is dropped at once, before `Elapsed` is returned. If
    /// the budget was the layer's own (not lowered by a caller's `grpc-timeout` or deadline header, nor
    /// by an earlier [`Deadline`](palisade_core::deadline::Deadline)), it is dropped inside
    /// [`Scope::expire`](palisade_core::deadline::Scope::expire) of this request's scope (the inner
    /// service is called, and the inner future polled, inside [`Scope::enter`]), so that a circuit breaker
    /// below counts the call it cuts off as a timeout failure — and a breaker of another stack that lives
    /// inside the dropped work, under a timeout of its own, does not. A caller who asked for less than the
    /// server allows gets `Elapsed` without charging the server's breaker.
    ///
    /// Dropping this future drops the inner future and the timer with it.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F> {
        // The inner service was called; `budget` is the request's effective timeout.
        Running {
            #[pin]
            inner: F,
            #[pin]
            timer: Timer,
            budget: Duration,
            // The budget is the layer's own, not a caller's shorter deadline.
            own: bool,
            // What the work below is created and polled under.
            scope: Scope,
        },
        // The budget ran out: the inner future has been dropped.
        TimedOut { budget: Duration },
        // The budget was zero (e.g. `grpc-timeout: 0m`): the deadline passed before the call, so the inner
        // service was not called.
        Expired,
    }
}

pin_project! {
    #[project = TimerProj]
    #[derive(Debug)]
    enum Timer {
        // Not armed: the inner future has not been pending yet.
        Idle,
        // Armed at the inner future's first `Pending`.
        Armed {
            #[pin]
            sleep: Sleep,
        },
    }
}

impl<F> ResponseFuture<F> {
    /// A future running `inner` (called under `scope`) under `budget`; the timer is not armed yet.
    pub(crate) fn new(inner: F, budget: Duration, own: bool, scope: Scope) -> Self {
        ResponseFuture {
            kind: Kind::Running {
                inner,
                timer: Timer::Idle,
                budget,
                own,
                scope,
            },
        }
    }

    /// A future that fails with [`Elapsed`] (of zero) at its first poll.
    pub(crate) fn expired() -> Self {
        ResponseFuture {
            kind: Kind::Expired,
        }
    }

    /// Whether the timer has been armed (the inner future was pending at least once).
    #[cfg(test)]
    pub(crate) fn is_armed(&self) -> bool {
        matches!(
            self.kind,
            Kind::Running {
                timer: Timer::Armed { .. },
                ..
            }
        )
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        let (inner, mut timer, budget, own, scope) = match kind.as_mut().project() {
            KindProj::Running {
                inner,
                timer,
                budget,
                own,
                scope,
            } => (inner, timer, *budget, *own, *scope),
            KindProj::TimedOut { budget } => return Poll::Ready(Err(Elapsed::new(*budget).into())),
            KindProj::Expired => return Poll::Ready(Err(elapsed(Duration::ZERO))),
        };
        if let Poll::Ready(out) = scope.enter(|| inner.poll(cx)) {
            return Poll::Ready(out.map_err(Into::into));
        }
        if let TimerProj::Idle = timer.as_mut().project() {
            // The slow path: one clock read and one timer registration, only now.
            timer.set(Timer::Armed {
                sleep: tokio::time::sleep(budget),
            });
        }
        if let TimerProj::Armed { sleep } = timer.project() {
            if sleep.poll(cx).is_ready() {
                time_out(kind, budget, own, scope);
                return Poll::Ready(Err(elapsed(budget)));
            }
        }
        Poll::Pending
    }
}

/// Drops the inner future now that the budget has run out: inside
/// [`Scope::expire`] when the budget was the layer's own.
#[cold]
fn time_out<F>(mut kind: Pin<&mut Kind<F>>, budget: Duration, own: bool, scope: Scope) {
    if own {
        scope.expire(|| kind.set(Kind::TimedOut { budget }));
    } else {
        kind.set(Kind::TimedOut { budget });
    }
}

/// The timeout rejection, logged at `debug` (never louder: timeouts are frequent exactly when things go
/// wrong).
#[cold]
fn elapsed(after: Duration) -> BoxError {
    tracing::debug!(timeout = ?after, "request deadline exceeded");
    Elapsed::new(after).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    /// Ready on the second poll.
    struct PendingOnce(bool);

    impl Future for PendingOnce {
        type Output = Result<u8, BoxError>;

        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
            if self.0 {
                Poll::Ready(Ok(7))
            } else {
                self.0 = true;
                Poll::Pending
            }
        }
    }

    #[test]
    fn ready_inner_future_never_arms_the_timer() {
        // No runtime at all: creating a `Sleep` here would panic, so returning proves no timer was made.
        let mut cx = Context::from_waker(Waker::noop());
        let mut fut = std::pin::pin!(ResponseFuture::new(
            std::future::ready(Ok::<_, BoxError>(1)),
            Duration::from_secs(1),
            true,
            Scope::new(),
        ));
        assert!(!fut.is_armed());
        assert!(matches!(fut.as_mut().poll(&mut cx), Poll::Ready(Ok(1))));
        assert!(!fut.is_armed());
    }

    #[tokio::test(start_paused = true)]
    async fn pending_inner_future_arms_the_timer_once() {
        let mut cx = Context::from_waker(Waker::noop());
        let mut fut = std::pin::pin!(ResponseFuture::new(
            PendingOnce(false),
            Duration::from_secs(1),
            true,
            Scope::new(),
        ));
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert!(fut.is_armed());
        assert!(matches!(fut.as_mut().poll(&mut cx), Poll::Ready(Ok(7))));
    }

    #[test]
    fn expired_fails_at_once_without_a_timer() {
        let mut cx = Context::from_waker(Waker::noop());
        let mut fut =
            std::pin::pin!(ResponseFuture::<std::future::Ready<Result<u8, BoxError>>>::expired());
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(Err(e)) => {
                assert_eq!(
                    e.downcast_ref::<Elapsed>(),
                    Some(&Elapsed::new(Duration::ZERO))
                )
            }
            other => panic!("expected Elapsed, got {other:?}"),
        }
    }
}
