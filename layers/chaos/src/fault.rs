//! What a fault does ([`FaultKind`], [`Latency`]) and which requests it targets ([`Fault`]).

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, StatusCode};
use palisade_core::error::BoxError;
use palisade_core::rng::SharedRng;

/// The id of an injected fault, returned by [`ChaosHandle::inject`](crate::ChaosHandle::inject).
///
/// Ids are unique within one layer and never reused; they display as a plain number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FaultId(pub(crate) u64);

impl FaultId {
    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for FaultId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The error returned by a [`Fault::error`] fault, and the response extension of a
/// [`Fault::status`] response: this outcome was injected, by the fault `id`.
///
/// It is no palisade rejection marker, so the rescue layer answers it like any unknown error (500).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct InjectedFault {
    /// The fault that fired.
    pub id: FaultId,
}

impl InjectedFault {
    /// The marker for fault `id`.
    pub fn new(id: FaultId) -> Self {
        InjectedFault { id }
    }
}

impl fmt::Display for InjectedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fault injected by palisade-chaos (fault {})", self.id)
    }
}

impl std::error::Error for InjectedFault {}

/// Makes the error value of a [`Fault::error_with`] fault, once per request it fires on.
#[derive(Clone)]
pub struct ErrorFn(Arc<dyn Fn() -> BoxError + Send + Sync>);

impl ErrorFn {
    /// Wraps `f`.
    pub fn new(f: impl Fn() -> BoxError + Send + Sync + 'static) -> Self {
        ErrorFn(Arc::new(f))
    }

    /// A new error value.
    pub fn make(&self) -> BoxError {
        (self.0)()
    }
}

impl fmt::Debug for ErrorFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ErrorFn(..)")
    }
}

/// What a fault does to a request it fires on.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum FaultKind {
    /// Answer at once with this status and an empty body; the service is not called.
    Status(StatusCode),
    /// Fail at once with [`InjectedFault`]; the service is not called.
    Error,
    /// Fail at once with the error `ErrorFn` makes; the service is not called.
    ErrorWith(ErrorFn),
    /// Wait a sampled delay before the service's response future is first polled.
    Latency(Latency),
    /// Never answer: the response future stays pending until it is dropped (a hung dependency). The
    /// service is not called.
    Abort,
    /// Call the service; deliver the response head and the body's data frames until at least
    /// `after_bytes` bytes went out, then never yield another frame (no more data, no trailers, no end
    /// of stream) until the body is dropped.
    BodyStall {
        /// Bytes delivered before the stall (whole frames; 0 stalls before the first frame).
        after_bytes: u64,
    },
}

impl FaultKind {
    /// A short name: `status`, `error`, `latency`, `abort` or `body_stall`.
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Status(_) => "status",
            FaultKind::Error | FaultKind::ErrorWith(_) => "error",
            FaultKind::Latency(_) => "latency",
            FaultKind::Abort => "abort",
            FaultKind::BodyStall { .. } => "body_stall",
        }
    }

    /// Whether the fault decides the outcome without calling the service.
    pub(crate) fn is_terminal(&self) -> bool {
        matches!(
            self,
            FaultKind::Status(_) | FaultKind::Error | FaultKind::ErrorWith(_) | FaultKind::Abort
        )
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultKind::Status(s) => write!(f, "status {}", s.as_u16()),
            FaultKind::Error => f.write_str("error"),
            FaultKind::ErrorWith(_) => f.write_str("error (custom)"),
            FaultKind::Latency(l) => write!(f, "latency {l}"),
            FaultKind::Abort => f.write_str("abort"),
            FaultKind::BodyStall { after_bytes } => write!(f, "body stall after {after_bytes} B"),
        }
    }
}

/// A delay: fixed, or drawn from a distribution, always within [`min`](Self::min)..=[`max`](Self::max).
///
/// ```
/// use palisade_chaos::Latency;
/// use palisade_core::rng::SharedRng;
/// use std::time::Duration;
///
/// let ms = Duration::from_millis;
/// let latency = Latency::uniform(ms(100), ms(300));
/// let rng = SharedRng::seeded(7);
/// let d = latency.sample(&rng);
/// assert!(ms(100) <= d && d <= ms(300));
/// assert_eq!(Latency::exponential(ms(50)).max(), ms(500)); // capped at 10 × the mean
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    dist: Dist,
    min: Duration,
    max: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Dist {
    Fixed,
    Uniform,
    Exponential { mean: f64 },
    Normal { mean: f64, std_dev: f64 },
}

impl Latency {
    /// Always `delay`.
    pub fn fixed(delay: Duration) -> Self {
        Latency {
            dist: Dist::Fixed,
            min: delay,
            max: delay,
        }
    }

    /// Uniform between `a` and `b` (in either order), inclusive.
    pub fn uniform(a: Duration, b: Duration) -> Self {
        Latency {
            dist: Dist::Uniform,
            min: a.min(b),
            max: a.max(b),
        }
    }

    /// Exponential with mean `mean` (most delays short, a long tail), capped at 10 × `mean`; change the
    /// cap with [`capped`](Self::capped).
    pub fn exponential(mean: Duration) -> Self {
        Latency {
            dist: Dist::Exponential {
                mean: mean.as_secs_f64(),
            },
            min: Duration::ZERO,
            max: mean.saturating_mul(10),
        }
    }

    /// Approximately normal with mean `mean` and standard deviation `std_dev` (the Irwin–Hall sum of 12
    /// uniforms), so never further than 6 × `std_dev` from the mean, and never negative.
    pub fn normal(mean: Duration, std_dev: Duration) -> Self {
        let spread = std_dev.saturating_mul(6);
        Latency {
            dist: Dist::Normal {
                mean: mean.as_secs_f64(),
                std_dev: std_dev.as_secs_f64(),
            },
            min: mean.saturating_sub(spread),
            max: mean.saturating_add(spread),
        }
    }

    /// Caps every delay at `max` (a fixed delay above `max` becomes `max`).
    #[must_use]
    pub fn capped(mut self, max: Duration) -> Self {
        self.max = max;
        self.min = self.min.min(max);
        self
    }

    /// The shortest delay this can produce.
    pub fn min(&self) -> Duration {
        self.min
    }

    /// The longest delay this can produce.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// Draws a delay from `rng`. A fixed delay draws nothing.
    pub fn sample(&self, rng: &SharedRng) -> Duration {
        let secs = match self.dist {
            Dist::Fixed => return self.min,
            Dist::Uniform => return self.min + rng.duration_up_to(self.max - self.min),
            // 1 - u is in (0, 1], so the logarithm is finite.
            Dist::Exponential { mean } => -mean * (1.0 - rng.next_f64()).ln(),
            Dist::Normal { mean, std_dev } => {
                let sum: f64 = (0..12).map(|_| rng.next_f64()).sum();
                mean + std_dev * (sum - 6.0)
            }
        };
        Duration::try_from_secs_f64(secs.max(0.0))
            .unwrap_or(self.max)
            .clamp(self.min, self.max)
    }
}

impl From<Duration> for Latency {
    fn from(delay: Duration) -> Self {
        Latency::fixed(delay)
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.dist {
            Dist::Fixed => write!(f, "{:?}", self.min),
            Dist::Uniform => write!(f, "uniform {:?}..={:?}", self.min, self.max),
            Dist::Exponential { mean } => write!(
                f,
                "exponential mean {:?} max {:?}",
                Duration::from_secs_f64(mean),
                self.max
            ),
            Dist::Normal { mean, std_dev } => write!(
                f,
                "normal mean {:?} sd {:?} in {:?}..={:?}",
                Duration::from_secs_f64(mean),
                Duration::from_secs_f64(std_dev),
                self.min,
                self.max
            ),
        }
    }
}

/// A fault to inject: what it does, which requests it targets, how often, and for how long.
///
/// Build one with a constructor naming what it does, narrow it with the targeting methods, and hand it
/// to [`ChaosHandle::inject`](crate::ChaosHandle::inject). Every condition given must hold for the
/// fault to apply (methods, tenants: any of those listed); then it fires with its
/// [`probability`](Self::probability).
///
/// ```
/// use palisade_chaos::Fault;
/// use http::{Method, StatusCode};
/// use std::time::Duration;
///
/// let fault = Fault::status(StatusCode::SERVICE_UNAVAILABLE)
///     .path_prefix("/payments")
///     .method(Method::POST)
///     .tenant("acme")
///     .probability(0.25)
///     .expires_after(Duration::from_secs(300))
///     .label("gameday-payments-503");
/// assert_eq!(
///     fault.to_string(),
///     "status 503 on POST /payments tenant acme p=0.25 for 300s (gameday-payments-503)"
/// );
/// ```
#[derive(Debug, Clone)]
pub struct Fault {
    pub(crate) kind: FaultKind,
    pub(crate) probability: f64,
    pub(crate) path_prefix: Option<Arc<str>>,
    pub(crate) methods: Vec<Method>,
    pub(crate) headers: Vec<(HeaderName, Option<HeaderValue>)>,
    pub(crate) tenants: Vec<Arc<str>>,
    pub(crate) expires_after: Option<Duration>,
    pub(crate) label: Option<Cow<'static, str>>,
}

impl Fault {
    /// A fault of the given kind that targets every request, always.
    pub fn new(kind: FaultKind) -> Self {
        Fault {
            kind,
            probability: 1.0,
            path_prefix: None,
            methods: Vec::new(),
            headers: Vec::new(),
            tenants: Vec::new(),
            expires_after: None,
            label: None,
        }
    }

    /// Answer with `status` and an empty body, without calling the service. The response carries the
    /// [`InjectedFault`] extension.
    pub fn status(status: StatusCode) -> Self {
        Self::new(FaultKind::Status(status))
    }

    /// Fail with an [`InjectedFault`] error, without calling the service.
    pub fn error() -> Self {
        Self::new(FaultKind::Error)
    }

    /// Fail with the error `make` returns (called once per request the fault fires on), without calling
    /// the service. Return a palisade rejection marker to make the rescue layer answer as it would for
    /// the real thing:
    ///
    /// ```
    /// use palisade_chaos::Fault;
    /// use palisade_core::error::Overloaded;
    ///
    /// let fault = Fault::error_with(|| Overloaded::new().into());
    /// # let _ = fault;
    /// ```
    pub fn error_with(make: impl Fn() -> BoxError + Send + Sync + 'static) -> Self {
        Self::new(FaultKind::ErrorWith(ErrorFn::new(make)))
    }

    /// Delay the request: a fixed [`Duration`] or a [`Latency`] distribution. The service is called
    /// in `call` as usual (tower services are), but its response future is first polled only after the
    /// delay, so for services that work in their future (nearly all) the request reaches the backend
    /// late. Combines with other faults: the delay comes first.
    pub fn latency(latency: impl Into<Latency>) -> Self {
        Self::new(FaultKind::Latency(latency.into()))
    }

    /// Never answer: the response future stays pending until dropped (a hung dependency; let a timeout
    /// or the client's cancellation end it). The service is not called and the request is dropped at
    /// once; the pending future holds nothing.
    pub fn abort() -> Self {
        Self::new(FaultKind::Abort)
    }

    /// Let the response head through, then stall the body once at least `after_bytes` bytes of data
    /// went out: see [`FaultKind::BodyStall`]. Frames are never split, so a stall "after 5 bytes" of a
    /// body sent in 4-byte frames delivers 8 bytes. The stalled body never ends, never errors and never
    /// sends trailers until it is dropped.
    pub fn body_stall(after_bytes: u64) -> Self {
        Self::new(FaultKind::BodyStall { after_bytes })
    }

    /// Fires on a matching request with probability `p` (clamped to 0.0–1.0; default 1.0), drawn from
    /// the layer's [seeded](crate::Builder::seed) generator.
    #[must_use]
    pub fn probability(mut self, p: f64) -> Self {
        self.probability = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
        self
    }

    /// Targets paths under `prefix`, by whole segments: `/api` matches `/api` and `/api/orders` but not
    /// `/apis`; `/api/` matches what starts with it. Replaces an earlier prefix.
    #[must_use]
    pub fn path_prefix(mut self, prefix: impl Into<Arc<str>>) -> Self {
        self.path_prefix = Some(prefix.into());
        self
    }

    /// Targets requests with this method; call again to add more (any of them matches).
    #[must_use]
    pub fn method(mut self, method: Method) -> Self {
        if !self.methods.contains(&method) {
            self.methods.push(method);
        }
        self
    }

    /// Targets requests carrying header `name` with the value `value` (one of its values, if repeated).
    /// Several headers must all match.
    #[must_use]
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, Some(value)));
        self
    }

    /// Targets requests carrying header `name`, whatever its value.
    #[must_use]
    pub fn header_present(mut self, name: HeaderName) -> Self {
        self.headers.push((name, None));
        self
    }

    /// Targets the tenant `tenant`, as the layer's [tenant key](crate::Builder::tenant_key) extracts it;
    /// call again to add more (any of them matches). Requests without a valid key never match. A layer
    /// without a tenant key never fires tenant-targeted faults.
    #[must_use]
    pub fn tenant(mut self, tenant: impl Into<Arc<str>>) -> Self {
        self.tenants.push(tenant.into());
        self
    }

    /// Removes the fault on its own `ttl` after it is injected (noticed, and audited as
    /// `chaos.expired`, by the first request or handle call after that time).
    #[must_use]
    pub fn expires_after(mut self, ttl: Duration) -> Self {
        self.expires_after = Some(ttl);
        self
    }

    /// Names the fault in audit records and logs.
    #[must_use]
    pub fn label(mut self, label: impl Into<Cow<'static, str>>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// What the fault does.
    pub fn kind(&self) -> &FaultKind {
        &self.kind
    }

    /// The probability it fires on a matching request.
    pub fn firing_probability(&self) -> f64 {
        self.probability
    }

    /// How long after injection it expires, if it does.
    pub fn ttl(&self) -> Option<Duration> {
        self.expires_after
    }

    /// Its label, if it has one.
    pub fn name(&self) -> Option<&str> {
        self.label.as_deref()
    }

    /// The tenants it targets (empty: every tenant).
    pub fn tenants(&self) -> &[Arc<str>] {
        &self.tenants
    }

    /// Whether the request's method, path and headers match. Tenants are matched by the caller.
    pub(crate) fn matches_head<B>(&self, req: &Request<B>) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(req.method()) {
            return false;
        }
        if let Some(prefix) = &self.path_prefix {
            if !path_has_prefix(req.uri().path(), prefix) {
                return false;
            }
        }
        self.headers.iter().all(|(name, value)| match value {
            None => req.headers().contains_key(name),
            Some(value) => req.headers().get_all(name).iter().any(|v| v == value),
        })
    }
}

/// `/api` matches `/api` and `/api/..`, not `/apis`; a prefix ending in `/` matches what starts with it.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if !self.methods.is_empty() || self.path_prefix.is_some() {
            f.write_str(" on")?;
            for (i, m) in self.methods.iter().enumerate() {
                write!(f, "{}{m}", if i == 0 { " " } else { "|" })?;
            }
            if let Some(p) = &self.path_prefix {
                write!(f, " {p}")?;
            }
        }
        for (name, value) in &self.headers {
            match value.as_ref().map(|v| v.to_str()) {
                None => write!(f, " header {name}")?,
                Some(Ok(v)) => write!(f, " header {name}={v}")?,
                Some(Err(_)) => write!(f, " header {name}=<binary>")?,
            }
        }
        if !self.tenants.is_empty() {
            f.write_str(" tenant ")?;
            for (i, t) in self.tenants.iter().enumerate() {
                write!(f, "{}{t}", if i == 0 { "" } else { "|" })?;
            }
        }
        if self.probability < 1.0 {
            write!(f, " p={}", self.probability)?;
        }
        if let Some(ttl) = self.expires_after {
            write!(f, " for {ttl:?}")?;
        }
        if let Some(label) = &self.label {
            write!(f, " ({label})")?;
        }
        Ok(())
    }
}

/// A tenant key that can be compared with the tenant names faults target ([`Fault::tenant`]).
///
/// Implemented for the keys of the ready extractors (`HeaderValue`, `IpAddr`) and for strings and
/// integers; implement it for the key type of your own extractor.
pub trait TenantKey {
    /// Whether this key is the tenant named `tenant`.
    fn is_tenant(&self, tenant: &str) -> bool;
}

impl TenantKey for HeaderValue {
    fn is_tenant(&self, tenant: &str) -> bool {
        self.as_bytes() == tenant.as_bytes()
    }
}

impl TenantKey for String {
    fn is_tenant(&self, tenant: &str) -> bool {
        self == tenant
    }
}

impl TenantKey for &'static str {
    fn is_tenant(&self, tenant: &str) -> bool {
        *self == tenant
    }
}

impl TenantKey for Arc<str> {
    fn is_tenant(&self, tenant: &str) -> bool {
        &**self == tenant
    }
}

impl TenantKey for Box<str> {
    fn is_tenant(&self, tenant: &str) -> bool {
        &**self == tenant
    }
}

impl TenantKey for Cow<'static, str> {
    fn is_tenant(&self, tenant: &str) -> bool {
        self == tenant
    }
}

impl TenantKey for IpAddr {
    fn is_tenant(&self, tenant: &str) -> bool {
        tenant.parse::<IpAddr>().is_ok_and(|ip| ip == *self)
    }
}

impl TenantKey for SocketAddr {
    fn is_tenant(&self, tenant: &str) -> bool {
        tenant.parse::<SocketAddr>().is_ok_and(|a| a == *self)
    }
}

macro_rules! tenant_key_int {
    ($($t:ty),*) => {
        $(impl TenantKey for $t {
            fn is_tenant(&self, tenant: &str) -> bool {
                tenant.parse::<$t>().is_ok_and(|n| n == *self)
            }
        })*
    };
}

tenant_key_int!(u16, u32, u64, u128, i32, i64, usize);

/// The key of a layer without a tenant key: it is no tenant, so tenant-targeted faults never fire.
impl TenantKey for () {
    fn is_tenant(&self, _: &str) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_by_segments() {
        assert!(path_has_prefix("/api", "/api"));
        assert!(path_has_prefix("/api/orders", "/api"));
        assert!(!path_has_prefix("/apis", "/api"));
        assert!(path_has_prefix("/api/", "/api/"));
        assert!(path_has_prefix("/api/x", "/api/"));
        assert!(!path_has_prefix("/api", "/api/"));
        assert!(path_has_prefix("/anything", "/"));
        assert!(!path_has_prefix("/other", "/api"));
    }

    #[test]
    fn latency_bounds_hold() {
        let ms = Duration::from_millis;
        let rng = SharedRng::seeded(1);
        let cases = [
            Latency::fixed(ms(5)),
            Latency::uniform(ms(30), ms(10)),
            Latency::exponential(ms(20)),
            Latency::exponential(ms(20)).capped(ms(25)),
            Latency::normal(ms(100), ms(10)),
            Latency::normal(ms(10), ms(10)),
            Latency::fixed(ms(50)).capped(ms(10)),
        ];
        for l in cases {
            for _ in 0..2_000 {
                let d = l.sample(&rng);
                assert!(l.min() <= d && d <= l.max(), "{l}: {d:?}");
            }
        }
        assert_eq!(Latency::fixed(ms(50)).capped(ms(10)).sample(&rng), ms(10));
        assert_eq!(Latency::normal(ms(10), ms(10)).min(), Duration::ZERO);
    }

    #[test]
    fn latency_means_are_about_right() {
        let ms = Duration::from_millis;
        let rng = SharedRng::seeded(2);
        let n = 20_000u32;
        for (l, mean) in [
            (Latency::exponential(ms(20)).capped(ms(1000)), 20.0),
            (Latency::normal(ms(100), ms(10)), 100.0),
            (Latency::uniform(ms(0), ms(10)), 5.0),
        ] {
            let total: Duration = (0..n).map(|_| l.sample(&rng)).sum();
            let got = total.as_secs_f64() * 1000.0 / f64::from(n);
            assert!((got - mean).abs() < mean * 0.05, "{l}: mean {got} ms");
        }
    }

    #[test]
    fn probability_is_clamped() {
        assert_eq!(Fault::abort().probability(2.0).firing_probability(), 1.0);
        assert_eq!(Fault::abort().probability(-1.0).firing_probability(), 0.0);
        assert_eq!(
            Fault::abort().probability(f64::NAN).firing_probability(),
            0.0
        );
    }

    #[test]
    fn tenant_keys_compare() {
        assert!(HeaderValue::from_static("acme").is_tenant("acme"));
        assert!(!HeaderValue::from_static("acme").is_tenant("acm"));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(ip.is_tenant("10.0.0.1"));
        assert!(!ip.is_tenant("nope"));
        assert!(42u64.is_tenant("42"));
        assert!(!().is_tenant(""));
    }
}
