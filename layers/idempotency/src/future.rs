//! The response future — read and fingerprint the body, claim the key, call the handler, capture the
//! response, complete the record — and the lease's drop guard.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::header::{self, HeaderValue};
use http::{HeaderMap, HeaderName, Request, Response};
use http_body::Body;
use palisade_core::audit::AuditEvent;
use palisade_core::body::Collect;
use palisade_core::error::{
    BoxError, IdempotencyConflict, IdempotencyMismatch, InvalidIdempotencyKey, Overloaded,
    PayloadTooLarge,
};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::body::{RequestBody, ResponseBody};
use crate::config::OnAbandon;
use crate::hash::{Fingerprint, Scope};
use crate::key::IDEMPOTENT_REPLAYED;
use crate::service::{Core, Stats};
use crate::store::{
    Claim, Completion, LeaseToken, NotStored, Record, Release, StoreError, StoreFuture,
    StoredResponse,
};

/// The longest tenant label written to audit records.
const TENANT_LABEL_MAX: usize = 128;

pin_project! {
    /// The response future of [`Idempotency`](crate::Idempotency).
    ///
    /// For a keyed request it is a state machine: read the body (up to the limit) and fingerprint it →
    /// claim the key in the store → call the handler holding the lease → read the response body (up
    /// to the store limit) → complete the record → answer. Replays, conflicts and mismatches end after
    /// the claim. The lease is a drop guard owned by this future: dropping the future (a cancelled
    /// request) or a panic in the handler gives the key back (or marks it failed, per
    /// [`OnAbandon`]).
    pub struct ResponseFuture<S, F, B, R, T> {
        #[pin]
        state: State<S, F, B, R, T>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, F, B, R, T> {
        Passthrough { #[pin] fut: F },
        Rejected { err: Option<BoxError> },
        Reading { #[pin] body: B, head: Option<Reading<S, T>> },
        Claiming { claim: StoreFuture<Result<Claim, StoreError>>, pending: Option<Claiming<S, T, B>> },
        Calling { #[pin] fut: F, lease: Option<Lease>, tenant: Option<T>, origin: Option<Origin> },
        Capturing {
            parts: Option<http::response::Parts>,
            body: Option<Pin<Box<R>>>,
            collect: Collect,
            lease: Option<Lease>,
            tenant: Option<T>,
            origin: Option<Origin>,
        },
        Completing {
            done: StoreFuture<Result<(), StoreError>>,
            response: Option<Response<ResponseBody<R>>>,
            lease: Option<Lease>,
        },
    }
}

/// What a keyed request carries from `call` to the claim.
struct Ctx<S, T> {
    svc: S,
    core: Arc<Core>,
    scope: Scope,
    tenant: Option<T>,
}

/// The request's method and path, kept past the call for audit records written after it (only when
/// the layer audits: a `Method` and a `Uri` clone are reference counts, not copies).
struct Origin {
    method: http::Method,
    uri: http::Uri,
}

struct Reading<S, T> {
    ctx: Ctx<S, T>,
    parts: http::request::Parts,
    collect: Collect,
}

struct Claiming<S, T, B> {
    ctx: Ctx<S, T>,
    req: Request<RequestBody<B>>,
    fingerprint: Fingerprint,
}

impl<S, F, B, R, T> ResponseFuture<S, F, B, R, T> {
    pub(crate) fn passthrough(fut: F) -> Self {
        ResponseFuture {
            state: State::Passthrough { fut },
        }
    }

    pub(crate) fn rejected(err: BoxError) -> Self {
        ResponseFuture {
            state: State::Rejected { err: Some(err) },
        }
    }

    pub(crate) fn keyed(
        req: Request<B>,
        svc: S,
        core: Arc<Core>,
        scope: Scope,
        tenant: Option<T>,
    ) -> Self {
        let (parts, body) = req.into_parts();
        ResponseFuture {
            state: State::Reading {
                body,
                head: Some(Reading {
                    ctx: Ctx {
                        svc,
                        core,
                        scope,
                        tenant,
                    },
                    parts,
                    collect: Collect::default(),
                }),
            },
        }
    }
}

impl<S, F, B, R, T> fmt::Debug for ResponseFuture<S, F, B, R, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Passthrough { .. } => "passthrough",
            State::Rejected { .. } => "rejected",
            State::Reading { .. } => "reading",
            State::Claiming { .. } => "claiming",
            State::Calling { .. } => "calling",
            State::Capturing { .. } => "capturing",
            State::Completing { .. } => "completing",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

const DONE: &str = "ResponseFuture polled after completion";

impl<S, F, B, R, T> Future for ResponseFuture<S, F, B, R, T>
where
    S: Service<Request<RequestBody<B>>, Response = Response<R>, Future = F>,
    F: Future<Output = Result<Response<R>, S::Error>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
    R: Body,
    R::Error: Into<BoxError>,
    T: fmt::Debug,
{
    type Output = Result<Response<ResponseBody<R>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Passthrough { fut } => {
                    return fut
                        .poll(cx)
                        .map_ok(|res| res.map(ResponseBody::streamed))
                        .map_err(Into::into);
                }
                StateProj::Rejected { err } => {
                    return Poll::Ready(Err(err.take().expect(DONE)));
                }
                StateProj::Reading { body, head } => {
                    let h = head.as_mut().expect(DONE);
                    let limit = h.ctx.core.max_request_body;
                    let whole = ready!(h.collect.poll_collect(body, cx, limit));
                    let Reading {
                        ctx,
                        parts,
                        collect,
                    } = head.take().expect(DONE);
                    match whole {
                        Err(e) => return Poll::Ready(Err(e.into())),
                        Ok(false) => {
                            Stats::bump(&ctx.core.stats.rejected);
                            return Poll::Ready(Err(PayloadTooLarge::new(limit).into()));
                        }
                        Ok(true) => {}
                    }
                    let (data, trailers) = collect.into_parts();
                    let core = &ctx.core;
                    let fingerprint = core.keys.fingerprint(
                        &parts.method,
                        parts.uri.path_and_query().map_or("", |p| p.as_str()),
                        &parts.headers,
                        &core.fingerprint_headers,
                        &data,
                        trailers.as_ref(),
                    );
                    let claim = core.store.claim(ctx.scope, fingerprint, core.lease);
                    let req = Request::from_parts(parts, RequestBody::buffered(data, trailers));
                    State::Claiming {
                        claim,
                        pending: Some(Claiming {
                            ctx,
                            req,
                            fingerprint,
                        }),
                    }
                }
                StateProj::Claiming { claim, pending } => {
                    let claimed = ready!(Pin::new(claim).poll(cx));
                    let Claiming {
                        ctx,
                        req,
                        fingerprint,
                    } = pending.take().expect(DONE);
                    match claimed {
                        Ok(Claim::Acquired(token)) => {
                            Stats::bump(&ctx.core.stats.executed);
                            let lease = Lease {
                                core: ctx.core,
                                scope: ctx.scope,
                                token,
                                armed: true,
                            };
                            let origin = lease.core.audit.is_enabled().then(|| Origin {
                                method: req.method().clone(),
                                uri: req.uri().clone(),
                            });
                            let mut svc = ctx.svc;
                            State::Calling {
                                fut: svc.call(req),
                                lease: Some(lease),
                                tenant: ctx.tenant,
                                origin,
                            }
                        }
                        Ok(Claim::Existing(record)) => {
                            return Poll::Ready(answer(&ctx, &req, record, fingerprint));
                        }
                        Err(StoreError::Full) => {
                            Stats::bump(&ctx.core.stats.store_full);
                            tracing::warn!(
                                layer = %ctx.core.name,
                                "idempotency store is full of requests in flight; refusing new keys"
                            );
                            let err =
                                Overloaded::new().with_retry_after(ctx.core.conflict_retry_after);
                            return Poll::Ready(Err(err.into()));
                        }
                        Err(e) => return Poll::Ready(Err(e.into())),
                    }
                }
                StateProj::Calling {
                    fut,
                    lease,
                    tenant,
                    origin,
                } => {
                    let result = ready!(fut.poll(cx));
                    let lease = lease.take().expect(DONE);
                    match result {
                        // No response: an error or a rejection from a layer inside this one. Nothing
                        // is stored; the key is free for a retry.
                        Err(e) => {
                            lease.forget();
                            return Poll::Ready(Err(e.into()));
                        }
                        Ok(res) => {
                            if res.status().is_server_error() && !lease.core.store_server_errors {
                                lease.forget();
                                return Poll::Ready(Ok(res.map(ResponseBody::streamed)));
                            }
                            let (parts, body) = res.into_parts();
                            State::Capturing {
                                parts: Some(parts),
                                body: Some(Box::pin(body)),
                                collect: Collect::default(),
                                lease: Some(lease),
                                tenant: tenant.take(),
                                origin: origin.take(),
                            }
                        }
                    }
                }
                StateProj::Capturing {
                    parts,
                    body,
                    collect,
                    lease,
                    tenant,
                    origin,
                } => {
                    let l = lease.as_ref().expect(DONE);
                    let limit = l.core.max_response_body;
                    let inner = body.as_mut().expect(DONE);
                    let whole = ready!(collect.poll_collect(inner.as_mut(), cx, limit));
                    let lease = lease.take().expect(DONE);
                    let parts = parts.take().expect(DONE);
                    let core = lease.core.clone();
                    let (outcome, response) = match whole {
                        Err(e) => {
                            lease.forget();
                            return Poll::Ready(Err(e.into()));
                        }
                        Ok(true) => {
                            let (data, trailers) = std::mem::take(collect).into_parts();
                            let stored = StoredResponse::new(
                                parts.status,
                                storable_headers(&parts.headers),
                                data.clone(),
                            )
                            .with_trailers(trailers.clone());
                            let response =
                                Response::from_parts(parts, ResponseBody::buffered(data, trailers));
                            (Completion::Response(Arc::new(stored)), response)
                        }
                        Ok(false) => {
                            Stats::bump(&core.stats.not_stored);
                            audit(
                                &core,
                                "idempotency.not_stored",
                                lease.scope,
                                tenant.as_ref(),
                                origin.as_ref().map(|o| (&o.method, o.uri.path())),
                            );
                            let prefix = std::mem::take(collect).into_bytes();
                            let rest = body.take().expect(DONE);
                            let response =
                                Response::from_parts(parts, ResponseBody::partial(prefix, rest));
                            (Completion::Failed(NotStored::TooLarge), response)
                        }
                    };
                    State::Completing {
                        done: core
                            .store
                            .complete(lease.scope, lease.token, outcome, core.ttl),
                        response: Some(response),
                        lease: Some(lease),
                    }
                }
                StateProj::Completing {
                    done,
                    response,
                    lease,
                } => {
                    let stored = ready!(Pin::new(done).poll(cx));
                    let lease = lease.take().expect(DONE);
                    match stored {
                        Ok(()) => lease.disarm(),
                        Err(StoreError::LeaseLost) => {
                            tracing::warn!(
                                layer = %lease.core.name,
                                scope = ?lease.scope,
                                "idempotency lease was lost before the response was stored (lease expired?); \
                                 the response was not stored"
                            );
                            lease.disarm();
                        }
                        Err(error) => {
                            tracing::error!(
                                layer = %lease.core.name,
                                scope = ?lease.scope,
                                %error,
                                "idempotency store failed to store a response; the key is released"
                            );
                            lease.forget();
                        }
                    }
                    return Poll::Ready(Ok(response.take().expect(DONE)));
                }
            };
            this.state.set(next);
        }
    }
}

/// The answer to a request whose key already has a record.
fn answer<S, T: fmt::Debug, B, R>(
    ctx: &Ctx<S, T>,
    req: &Request<B>,
    record: Record,
    fingerprint: Fingerprint,
) -> Result<Response<ResponseBody<R>>, BoxError> {
    let core = &*ctx.core;
    let stats = &core.stats;
    let origin = Some((req.method(), req.uri().path()));
    let event = |kind: &'static str| audit(core, kind, ctx.scope, ctx.tenant.as_ref(), origin);
    if record.fingerprint() != fingerprint {
        Stats::bump(&stats.mismatches);
        event("idempotency.mismatch");
        return Err(IdempotencyMismatch::new().into());
    }
    match record {
        Record::InFlight { expires_in, .. } => {
            Stats::bump(&stats.conflicts);
            event("idempotency.conflict");
            let after = expires_in.min(core.conflict_retry_after);
            Err(IdempotencyConflict::new(Some(after)).into())
        }
        Record::Completed { response, .. } => {
            Stats::bump(&stats.replayed);
            event("idempotency.replayed");
            Ok(replay(&response))
        }
        Record::Failed { reason, .. } => {
            Stats::bump(&stats.rejected);
            event("idempotency.not_replayable");
            Err(InvalidIdempotencyKey::new(reason.reason()).into())
        }
    }
}

/// The stored response again, marked `Idempotent-Replayed: true`.
fn replay<R>(stored: &StoredResponse) -> Response<ResponseBody<R>> {
    let mut res = Response::new(ResponseBody::buffered(
        stored.body.clone(),
        stored.trailers.clone(),
    ));
    *res.status_mut() = stored.status;
    let headers = res.headers_mut();
    headers.clone_from(&stored.headers);
    headers.insert(
        HeaderName::from_static(IDEMPOTENT_REPLAYED),
        HeaderValue::from_static("true"),
    );
    res
}

/// The response headers worth replaying: all but the hop-by-hop headers (RFC 9110 §7.6.1: those
/// named by `Connection`, and the well-known ones) and `Date`, which the server sets anew.
fn storable_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = headers.clone();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(list) = value.to_str() else { continue };
        for name in list.split(',') {
            if let Ok(name) = HeaderName::from_bytes(name.trim().as_bytes()) {
                out.remove(name);
            }
        }
    }
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::TE,
        header::TRAILER,
        header::PROXY_AUTHENTICATE,
        header::DATE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        out.remove(name);
    }
    out
}

/// Records an audit event naming the layer, the tenant and the scope hash (never the raw key or body).
/// `origin` is the request's method and path: every kind carries them.
fn audit<T: fmt::Debug>(
    core: &Core,
    kind: &'static str,
    scope: Scope,
    tenant: Option<&T>,
    origin: Option<(&http::Method, &str)>,
) {
    core.audit.record_with(|| {
        let mut event = AuditEvent::new(kind)
            .detail("layer", core.name.as_ref())
            .detail("key_hash", scope.to_hex());
        if let Some((method, path)) = origin {
            event = event.detail("method", method.as_str()).detail("path", path);
        }
        if let Some(label) = tenant.and_then(tenant_label) {
            event = event.tenant(label);
        }
        event
    });
}

/// The tenant as people read it: its `Debug` form without surrounding quotes, at most 128 bytes.
/// `None` for the unit key of [`NoTenant`](crate::NoTenant), which names no one.
fn tenant_label<T: fmt::Debug>(tenant: &T) -> Option<String> {
    let mut label = format!("{tenant:?}");
    if label == "()" {
        return None;
    }
    if label.len() >= 2 && label.starts_with('"') && label.ends_with('"') {
        label.pop();
        label.remove(0);
    }
    if label.len() > TENANT_LABEL_MAX {
        let mut cut = TENANT_LABEL_MAX;
        while !label.is_char_boundary(cut) {
            cut -= 1;
        }
        label.truncate(cut);
    }
    Some(label)
}

/// The in-flight lease on a key: a drop guard owned by the response future.
///
/// Ended explicitly once the outcome is stored ([`disarm`](Lease::disarm)) or deliberately not stored
/// ([`forget`](Lease::forget)). Dropped while armed — the future was dropped, or the handler panicked —
/// it gives the key back per [`OnAbandon`].
pub(crate) struct Lease {
    core: Arc<Core>,
    scope: Scope,
    token: LeaseToken,
    armed: bool,
}

impl Lease {
    /// The outcome was stored: nothing to give back.
    fn disarm(mut self) {
        self.armed = false;
    }

    /// No outcome to store (an error, an unstored 5xx): forget the record so a retry executes.
    fn forget(mut self) {
        self.armed = false;
        self.core
            .store
            .release(self.scope, self.token, Release::Forget);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.armed = false;
        Stats::bump(&self.core.stats.abandoned);
        let how = match self.core.on_abandon {
            OnAbandon::Release => Release::Forget,
            OnAbandon::MarkFailed => Release::MarkFailed {
                reason: NotStored::Abandoned,
                ttl: self.core.ttl,
            },
        };
        tracing::debug!(
            layer = %self.core.name,
            scope = ?self.scope,
            panicking = std::thread::panicking(),
            "idempotent request abandoned; lease given back"
        );
        self.core.store.release(self.scope, self.token, how);
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("scope", &self.scope)
            .field("token", &self.token)
            .field("armed", &self.armed)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_date_are_not_stored() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-hop".parse().unwrap());
        h.insert("x-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("date", "Tue, 01 Dec 2026 00:00:00 GMT".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        h.append("set-cookie", "a=1".parse().unwrap());
        h.append("set-cookie", "b=2".parse().unwrap());
        let kept = storable_headers(&h);
        let names: Vec<_> = kept.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "set-cookie"]);
        assert_eq!(kept.get_all("set-cookie").iter().count(), 2);
    }

    #[test]
    fn tenant_labels_are_readable_and_bounded() {
        assert_eq!(
            tenant_label(&HeaderValue::from_static("acme")).as_deref(),
            Some("acme")
        );
        assert_eq!(tenant_label(&42u32).as_deref(), Some("42"));
        assert_eq!(
            tenant_label(&"x".repeat(500)).map(|l| l.len()),
            Some(TENANT_LABEL_MAX)
        );
        assert_eq!(tenant_label(&()), None);
    }
}
