//! What activates a fallback: a [`Trigger`] over the inner service's error or response head, and the
//! [`FallbackCause`] handed to the fallback.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use http::{Response, StatusCode};
use palisade_core::classify::{Classified, Classify, Failure, NoEos, Outcome};
use palisade_core::error::{self, BoxError, CircuitOpen, Elapsed, Overloaded, Rejection, Shed};

/// Why a fallback was activated, as given to a [`respond_with`](crate::Builder::respond_with) function.
#[derive(Debug)]
#[non_exhaustive]
pub enum FallbackCause {
    /// The inner service returned this error (look for a palisade marker with [`rejection`](Self::rejection)).
    Error(BoxError),
    /// The inner service answered, but the trigger's classifier judged the response a failure. The
    /// response's body was not read; its head is here.
    Response {
        /// The failed response's head (status, headers, ...).
        parts: http::response::Parts,
        /// The classifier's verdict.
        failure: Failure,
    },
}

impl FallbackCause {
    /// The error, when the inner service failed with one.
    pub fn error(&self) -> Option<&(dyn Error + Send + Sync + 'static)> {
        match self {
            FallbackCause::Error(e) => Some(&**e),
            FallbackCause::Response { .. } => None,
        }
    }

    /// The palisade rejection in the error's source chain (`CircuitOpen`, `Elapsed`, ...), if any.
    pub fn rejection(&self) -> Option<Rejection<'_>> {
        let e: &(dyn Error + 'static) = match self {
            FallbackCause::Error(e) => &**e,
            FallbackCause::Response { .. } => return None,
        };
        Rejection::find(e)
    }

    /// The failed response's status, when the trigger fired on a response.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            FallbackCause::Error(_) => None,
            FallbackCause::Response { parts, .. } => Some(parts.status),
        }
    }

    /// A short stable name: the rejection's slug (`"circuit-open"`, `"timeout"`, ...), `"error"` for any
    /// other error, or `"response"` for a response judged a failure. Used in traces and audit records.
    pub fn slug(&self) -> &'static str {
        match self {
            FallbackCause::Error(_) => self.rejection().map_or("error", |r| r.slug()),
            FallbackCause::Response { .. } => "response",
        }
    }
}

impl fmt::Display for FallbackCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FallbackCause::Error(e) => write!(f, "error: {e}"),
            FallbackCause::Response { parts, failure } => {
                write!(
                    f,
                    "response {} judged a failure ({failure})",
                    parts.status.as_u16()
                )
            }
        }
    }
}

/// A set of error types, written as a tuple: `(CircuitOpen,)`, `(CircuitOpen, Elapsed)`, ... (up to 8).
/// Used by [`Trigger::rejections`].
pub trait Markers {
    /// Whether an error of one of these types is anywhere in `err`'s source chain.
    fn matches(err: &(dyn Error + 'static)) -> bool;
}

macro_rules! markers {
    ($($t:ident),+) => {
        impl<$($t: Error + 'static),+> Markers for ($($t,)+) {
            fn matches(err: &(dyn Error + 'static)) -> bool {
                $(error::is::<$t>(err))||+
            }
        }
    };
}
markers!(A);
markers!(A, B);
markers!(A, B, C);
markers!(A, B, C, D);
markers!(A, B, C, D, E);
markers!(A, B, C, D, E, F);
markers!(A, B, C, D, E, F, G);
markers!(A, B, C, D, E, F, G, H);

type ErrorFn = Arc<dyn Fn(&(dyn Error + 'static)) -> bool + Send + Sync>;

#[derive(Clone)]
enum ErrorMatch {
    Any,
    Marker(fn(&(dyn Error + 'static)) -> bool),
    AnyRejection,
    NotRejection,
    Classifier,
    Fn(ErrorFn),
}

impl fmt::Debug for ErrorMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorMatch::Any => "any error",
            ErrorMatch::Marker(_) => "marker",
            ErrorMatch::AnyRejection => "any rejection",
            ErrorMatch::NotRejection => "non-rejection error",
            ErrorMatch::Classifier => "classified error",
            ErrorMatch::Fn(_) => "fn",
        })
    }
}

/// Never judges a response a failure: the classifier slot of a [`Trigger`] that fires on errors only.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoResponses;

impl<Res> Classify<Res> for NoResponses {
    type Eos = NoEos;

    fn classify_response(&self, _: &Res) -> Classified<NoEos> {
        Classified::Ready(Outcome::Success)
    }
}

/// Which outcomes of the inner service activate the fallback.
///
/// A trigger looks at the **error** the inner service returned (a palisade rejection such as
/// [`CircuitOpen`] or [`Elapsed`] from a layer further in, or any other error) and, when given a
/// classifier, at the **response head** (e.g. any 5xx). Response bodies are never read to decide: a
/// verdict the classifier defers to the end of the body (gRPC status in trailers) does not trigger.
///
/// ```
/// use palisade_core::classify::HttpStatus;
/// use palisade_core::error::{CircuitOpen, Elapsed};
/// use palisade_fallback::Trigger;
///
/// // Only an open circuit or a timeout further in:
/// let t = Trigger::rejections::<(CircuitOpen, Elapsed)>();
/// // ... or those, and also any 5xx response:
/// let t = t.or_responses(HttpStatus::server_errors());
/// // Every error the classifier does not call a success (with the default classifiers, every error,
/// // `CircuitOpen` included) and every response it judges a failure (every 5xx):
/// let t = Trigger::classified(HttpStatus::server_errors());
/// # let _ = t;
/// ```
///
/// The default ([`Trigger::unavailable`]) fires when the dependency is unavailable: `CircuitOpen`,
/// `Overloaded`, `Shed`, `Elapsed`, or an error that is not a palisade rejection (a transport error);
/// not on rejections that are the client's to see (`RateLimited`, key and idempotency errors,
/// `ReadOnly`, `PayloadTooLarge`).
#[derive(Clone)]
pub struct Trigger<C = NoResponses> {
    errors: Vec<ErrorMatch>,
    pub(crate) responses: Option<C>,
}

impl<C: fmt::Debug> fmt::Debug for Trigger<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trigger")
            .field("errors", &self.errors)
            .field("responses", &self.responses)
            .finish()
    }
}

impl Default for Trigger {
    fn default() -> Self {
        Self::unavailable()
    }
}

impl Trigger {
    fn errors(errors: Vec<ErrorMatch>) -> Self {
        Trigger {
            errors,
            responses: None,
        }
    }

    /// Fires on an error of type `T` anywhere in the error's source chain, e.g.
    /// `Trigger::rejection::<CircuitOpen>()`.
    pub fn rejection<T: Error + 'static>() -> Self {
        Self::errors(vec![ErrorMatch::Marker(error::is::<T>)])
    }

    /// Fires on an error of any of the types in the tuple `M`, e.g.
    /// `Trigger::rejections::<(CircuitOpen, Elapsed)>()`.
    pub fn rejections<M: Markers>() -> Self {
        Self::errors(vec![ErrorMatch::Marker(M::matches)])
    }

    /// Fires on any palisade rejection marker (see [`Rejection`]), including those meant for the client
    /// such as `RateLimited`.
    pub fn any_rejection() -> Self {
        Self::errors(vec![ErrorMatch::AnyRejection])
    }

    /// Fires on every error.
    pub fn any_error() -> Self {
        Self::errors(vec![ErrorMatch::Any])
    }

    /// Fires when the dependency is unavailable (the default): `CircuitOpen`, `Overloaded`, `Shed`,
    /// `Elapsed`, or any error that is not a palisade rejection.
    pub fn unavailable() -> Self {
        Self::errors(vec![
            ErrorMatch::Marker(<(CircuitOpen, Overloaded, Shed, Elapsed)>::matches),
            ErrorMatch::NotRejection,
        ])
    }

    /// Fires when `f` returns `true` for the error.
    pub fn error_fn<F>(f: F) -> Self
    where
        F: Fn(&(dyn Error + 'static)) -> bool + Send + Sync + 'static,
    {
        Self::errors(vec![ErrorMatch::Fn(Arc::new(f))])
    }

    /// Fires on the errors and response heads `classifier` does not call a success:
    ///
    /// - **errors**: every error whose [`classify_error`](Classify::classify_error) is not
    ///   [`Outcome::Success`] — a failure *or* [`Outcome::Ignored`]. The default `classify_error` of the
    ///   core classifiers ignores palisade's local refusals ([`CircuitOpen`], [`Overloaded`],
    ///   `RateLimited`, `Shed`, `ReadOnly`, ...) so that a circuit breaker does not count them against
    ///   the backend, but a fallback is wanted exactly when the breaker below is open or the bulkhead is
    ///   full: with those classifiers this trigger fires on **every** error. Narrow it with
    ///   [`rejections`](Self::rejections) + [`or_responses`](Self::or_responses), or with a classifier
    ///   whose `classify_error` returns `Success` for the errors to pass through;
    /// - **responses**: every response head its `classify_response` judges a failure (ready from the
    ///   head; a verdict deferred to the end of the body does not fire).
    pub fn classified<C>(classifier: C) -> Trigger<C> {
        Trigger {
            errors: vec![ErrorMatch::Classifier],
            responses: Some(classifier),
        }
    }
}

impl<C> Trigger<C> {
    /// Also fires on an error of type `T`.
    pub fn or_rejection<T: Error + 'static>(mut self) -> Self {
        self.errors.push(ErrorMatch::Marker(error::is::<T>));
        self
    }

    /// Also fires when `f` returns `true` for the error.
    pub fn or_error_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&(dyn Error + 'static)) -> bool + Send + Sync + 'static,
    {
        self.errors.push(ErrorMatch::Fn(Arc::new(f)));
        self
    }

    /// Also fires on responses `classifier` judges failures from their head (e.g.
    /// `HttpStatus::server_errors()` for any 5xx). Replaces a classifier given before.
    pub fn or_responses<C2>(self, classifier: C2) -> Trigger<C2> {
        Trigger {
            errors: self.errors,
            responses: Some(classifier),
        }
    }

    /// Whether the error fires the trigger.
    pub fn matches_error<Res>(&self, err: &(dyn Error + 'static)) -> bool
    where
        C: Classify<Res>,
    {
        self.errors.iter().any(|m| match m {
            ErrorMatch::Any => true,
            ErrorMatch::Marker(f) => f(err),
            ErrorMatch::AnyRejection => Rejection::find(err).is_some(),
            ErrorMatch::NotRejection => Rejection::find(err).is_none(),
            // Any error the classifier does not call a success, `Ignored` included: the default
            // classifiers ignore palisade's local refusals (`CircuitOpen`, `Overloaded`, ...) so that
            // a breaker does not count them, but an open circuit below is exactly when a fallback is
            // wanted.
            ErrorMatch::Classifier => self
                .responses
                .as_ref()
                .is_some_and(|c| c.classify_error(err) != Outcome::Success),
            ErrorMatch::Fn(f) => f(err),
        })
    }

    /// The failure, when the response head fires the trigger.
    #[inline]
    pub fn matches_response<B>(&self, res: &Response<B>) -> Option<Failure>
    where
        C: Classify<Response<B>>,
    {
        match self.responses.as_ref()?.classify_response(res) {
            Classified::Ready(Outcome::Failure(f)) => Some(f),
            _ => None,
        }
    }
}
