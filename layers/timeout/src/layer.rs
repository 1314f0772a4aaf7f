//! The layer, its builder, and the per-request override sources.

use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::Request;
use tower_layer::Layer;

use crate::headers::{parse_grpc_timeout, parse_millis, GRPC_TIMEOUT};
use crate::service::Timeout;

/// A per-request timeout, read from the request's extensions; it replaces the layer's default.
///
/// Insert it from a routing layer, a handler wrapper or a client call site. It wins over the
/// [`override_with`](TimeoutBuilder::override_with) closure and may be shorter or longer than the
/// default; deadline headers, when enabled, still cap it. A zero override fails the request at once with
/// [`Elapsed`](palisade_core::error::Elapsed).
///
/// ```
/// use palisade_timeout::TimeoutOverride;
/// use std::time::Duration;
///
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(TimeoutOverride(Duration::from_secs(30))); // a slow report endpoint
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimeoutOverride(pub Duration);

/// Computes a per-request timeout from the request; `None` keeps the layer's default.
///
/// Implemented for every `Fn(&Req) -> Option<Duration>` closure and for [`NoOverride`].
pub trait OverrideTimeout<Req> {
    /// The timeout for `req`, or `None` for the default.
    fn timeout_for(&self, req: &Req) -> Option<Duration>;
}

impl<Req, F> OverrideTimeout<Req> for F
where
    F: Fn(&Req) -> Option<Duration>,
{
    #[inline]
    fn timeout_for(&self, req: &Req) -> Option<Duration> {
        self(req)
    }
}

/// No override closure: every request gets the default (or its [`TimeoutOverride`] extension).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoOverride;

impl<Req> OverrideTimeout<Req> for NoOverride {
    #[inline]
    fn timeout_for(&self, _: &Req) -> Option<Duration> {
        None
    }
}

/// Why a [`TimeoutBuilder`] refused its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    /// `.timeout(..)` was never called.
    MissingTimeout,
    /// The default timeout is zero, which would fail every request.
    ZeroTimeout,
    /// The configured deadline header is not a valid header name, or is `grpc-timeout`.
    InvalidHeader {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::MissingTimeout => f.write_str(
                "timeout layer: no timeout configured; call `.timeout(duration)` before `.build()`",
            ),
            BuildError::ZeroTimeout => f.write_str(
                "timeout layer: the default timeout is zero, which would fail every request; \
                 configure a positive duration",
            ),
            BuildError::InvalidHeader { name, reason } => {
                write!(f, "timeout layer: deadline header {name:?} {reason}")
            }
        }
    }
}

impl Error for BuildError {}

/// Everything the layer decides per request, built once and shared by every service it makes.
pub(crate) struct Config<O> {
    pub(crate) timeout: Duration,
    pub(crate) override_fn: O,
    /// Read `grpc-timeout` on incoming requests (also set when propagating).
    pub(crate) read_grpc: bool,
    /// Write `grpc-timeout` on forwarded requests.
    pub(crate) propagate_grpc: bool,
    /// A millisecond deadline header to read, e.g. `x-request-timeout`.
    pub(crate) header: Option<HeaderName>,
}

impl<O> Config<O> {
    /// The request's effective budget: its [`TimeoutOverride`] extension, else the closure's answer, else
    /// the default; then capped by the deadline headers that are enabled and well-formed. The flag is
    /// whether the budget is this layer's own (not lowered by a caller's deadline header).
    #[inline]
    pub(crate) fn budget<B>(&self, req: &Request<B>) -> (Duration, bool)
    where
        O: OverrideTimeout<Request<B>>,
    {
        let own = match req.extensions().get::<TimeoutOverride>() {
            Some(o) => o.0,
            None => self.override_fn.timeout_for(req).unwrap_or(self.timeout),
        };
        let mut budget = own;
        if self.read_grpc {
            if let Some(d) = req
                .headers()
                .get(GRPC_TIMEOUT)
                .and_then(|v| parse_grpc_timeout(v.as_bytes()))
            {
                budget = budget.min(d);
            }
        }
        if let Some(name) = &self.header {
            if let Some(d) = req
                .headers()
                .get(name)
                .and_then(|v| parse_millis(v.as_bytes()))
            {
                budget = budget.min(d);
            }
        }
        (budget, budget == own)
    }
}

impl<O> fmt::Debug for Config<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("timeout", &self.timeout)
            .field("override_fn", &std::any::type_name::<O>())
            .field("read_grpc", &self.read_grpc)
            .field("propagate_grpc", &self.propagate_grpc)
            .field("header", &self.header)
            .finish()
    }
}

/// A [`Layer`] giving every request a deadline. See the [crate docs](crate).
///
/// Built once by [`TimeoutLayer::builder`] (or [`TimeoutLayer::new`]); the configuration lives in an
/// `Arc`, and [`layer`](Layer::layer) only clones it.
pub struct TimeoutLayer<O = NoOverride> {
    config: Arc<Config<O>>,
}

impl TimeoutLayer {
    /// A builder; `.timeout(..)` is required.
    pub fn builder() -> TimeoutBuilder {
        TimeoutBuilder::default()
    }

    /// A layer with a fixed `timeout` and nothing else: no overrides but the [`TimeoutOverride`]
    /// extension, no deadline headers.
    ///
    /// # Errors
    ///
    /// [`BuildError::ZeroTimeout`] if `timeout` is zero.
    pub fn new(timeout: Duration) -> Result<Self, BuildError> {
        Self::builder().timeout(timeout).build()
    }
}

impl<O> TimeoutLayer<O> {
    /// The default timeout.
    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }
}

impl<O> Clone for TimeoutLayer<O> {
    fn clone(&self) -> Self {
        TimeoutLayer {
            config: Arc::clone(&self.config),
        }
    }
}

impl<O> fmt::Debug for TimeoutLayer<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutLayer")
            .field("config", &self.config)
            .finish()
    }
}

impl<S, O> Layer<S> for TimeoutLayer<O> {
    type Service = Timeout<S, O>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout::new(inner, Arc::clone(&self.config))
    }
}

/// Configures a [`TimeoutLayer`]. Obtained from [`TimeoutLayer::builder`].
#[must_use = "a builder does nothing until `.build()`"]
pub struct TimeoutBuilder<O = NoOverride> {
    timeout: Option<Duration>,
    override_fn: O,
    read_grpc: bool,
    propagate_grpc: bool,
    header: Option<String>,
}

impl Default for TimeoutBuilder {
    fn default() -> Self {
        TimeoutBuilder {
            timeout: None,
            override_fn: NoOverride,
            read_grpc: false,
            propagate_grpc: false,
            header: None,
        }
    }
}

impl<O> fmt::Debug for TimeoutBuilder<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutBuilder")
            .field("timeout", &self.timeout)
            .field("override_fn", &std::any::type_name::<O>())
            .field("read_grpc", &self.read_grpc)
            .field("propagate_grpc", &self.propagate_grpc)
            .field("header", &self.header)
            .finish()
    }
}

impl<O> TimeoutBuilder<O> {
    /// The default timeout for every request (required, and not zero).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Computes a per-request (per-route) timeout from the request: `Some(d)` replaces the default,
    /// `None` keeps it. A [`TimeoutOverride`] extension on the request wins over the closure.
    ///
    /// Annotate the closure's argument type so the request type is known:
    ///
    /// ```
    /// use palisade_timeout::TimeoutLayer;
    /// use std::time::Duration;
    ///
    /// let layer = TimeoutLayer::builder()
    ///     .timeout(Duration::from_secs(2))
    ///     .override_with(|req: &http::Request<String>| {
    ///         req.uri().path().starts_with("/reports/").then_some(Duration::from_secs(60))
    ///     })
    ///     .build()
    ///     .unwrap();
    /// ```
    pub fn override_with<Req, F>(self, f: F) -> TimeoutBuilder<F>
    where
        F: Fn(&Req) -> Option<Duration> + Send + Sync + 'static,
    {
        TimeoutBuilder {
            timeout: self.timeout,
            override_fn: f,
            read_grpc: self.read_grpc,
            propagate_grpc: self.propagate_grpc,
            header: self.header,
        }
    }

    /// Server side: honour the caller's deadline in an incoming `grpc-timeout` header. The budget becomes
    /// the smaller of the header and the local timeout; a malformed header is ignored (the local budget
    /// applies). Off by default (it costs a header lookup per request).
    pub fn grpc_timeout(mut self, enabled: bool) -> Self {
        self.read_grpc = enabled;
        self
    }

    /// Client side: write the effective budget as `grpc-timeout` on every request this layer forwards,
    /// in the finest unit that fits 8 digits, so the server stops working when nobody waits any more.
    ///
    /// A `grpc-timeout` already on the request (e.g. set by the generated client) is honoured: the
    /// smaller of the two is written. The layer also records its deadline as a
    /// [`Deadline`](crate::Deadline) request extension (or keeps an earlier one already there, and
    /// caps its budget by it), so a retry layer below can send each attempt the time that is left (see
    /// [`refresh_grpc_timeout`](crate::refresh_grpc_timeout)). Off by default; when on, each request
    /// costs a clock read and an extension insert.
    pub fn propagate_grpc_timeout(mut self, enabled: bool) -> Self {
        self.propagate_grpc = enabled;
        self
    }

    /// Also honour a millisecond deadline header on incoming requests, e.g. `x-request-timeout: 1500`
    /// (1 to 12 ASCII digits, a whole number of milliseconds; see
    /// [`parse_millis`](crate::headers::parse_millis)). The budget becomes the smaller of the header and
    /// the local timeout; a malformed value is ignored.
    pub fn header(mut self, name: impl Into<String>) -> Self {
        self.header = Some(name.into());
        self
    }

    /// Validates the configuration and builds the layer.
    ///
    /// # Errors
    ///
    /// [`BuildError::MissingTimeout`] without `.timeout(..)`, [`BuildError::ZeroTimeout`] for a zero
    /// timeout, [`BuildError::InvalidHeader`] for a header name that is not a valid (lower-case) header
    /// name or is `grpc-timeout` (whose format differs; use [`grpc_timeout`](Self::grpc_timeout)).
    pub fn build(self) -> Result<TimeoutLayer<O>, BuildError> {
        let timeout = self.timeout.ok_or(BuildError::MissingTimeout)?;
        if timeout.is_zero() {
            return Err(BuildError::ZeroTimeout);
        }
        let header = match self.header {
            None => None,
            Some(name) => Some(parse_header_name(name)?),
        };
        Ok(TimeoutLayer {
            config: Arc::new(Config {
                timeout,
                override_fn: self.override_fn,
                read_grpc: self.read_grpc || self.propagate_grpc,
                propagate_grpc: self.propagate_grpc,
                header,
            }),
        })
    }
}

fn parse_header_name(name: String) -> Result<HeaderName, BuildError> {
    let invalid = |reason| BuildError::InvalidHeader {
        name: name.clone(),
        reason,
    };
    let parsed = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| invalid("is not a valid header name"))?;
    if parsed == GRPC_TIMEOUT {
        return Err(invalid(
            "has its own format; use `.grpc_timeout(true)` to read it",
        ));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_only_clones_the_shared_config() {
        let layer = TimeoutLayer::new(Duration::from_secs(1)).unwrap();
        let a = layer.layer(());
        let b = layer.clone().layer(());
        assert!(Arc::ptr_eq(a.config(), b.config()));
        assert_eq!(Arc::strong_count(&layer.config), 3);
    }

    #[test]
    fn propagating_implies_reading_the_existing_header() {
        let layer = TimeoutLayer::builder()
            .timeout(Duration::from_secs(1))
            .propagate_grpc_timeout(true)
            .build()
            .unwrap();
        assert!(layer.config.read_grpc);
    }

    #[test]
    fn header_names_are_case_insensitive() {
        let layer = TimeoutLayer::builder()
            .timeout(Duration::from_secs(1))
            .header("X-Request-Timeout")
            .build()
            .unwrap();
        assert_eq!(layer.config.header.as_ref().unwrap(), "x-request-timeout");
    }
}
