//! Key extraction: which tenant, client or downstream a request belongs to.
//!
//! Keyed layers (per-tenant rate limits, per-tenant bulkheads, per-host breakers, idempotency scopes) ask a
//! [`KeyExtractor`] for the request's key. Extraction returns a `Result`: a missing or malformed key is a
//! decision the layer makes by policy (reject with `400`, or share an anonymous bucket), never a panic.
//! [`KeyError`] is itself a rejection marker, so a layer can return it as-is and the rescue layer answers
//! `400 Bad Request` with a problem body naming what was wrong.
//!
//! Ready extractors:
//!
//! | extractor | key | from |
//! |---|---|---|
//! | [`HeaderKey`] | [`HeaderValue`] | one header, bounded length, visible ASCII only |
//! | [`ExtensionKey<T>`] | `T` | a request extension set by an earlier layer (e.g. authentication) |
//! | [`PeerIp`] | [`IpAddr`] | the connection's peer address ([`PeerAddr`], `SocketAddr`, or axum's `ConnectInfo`) |
//! | [`ClientIp`] | [`IpAddr`] | the client behind a configured list of trusted proxies (`X-Forwarded-For`) |
//! | [`KeyFn`] | any | a closure: [`key_fn`] |
//!
//! ```
//! use http::Request;
//! use palisade_core::key::{HeaderKey, KeyExtractor};
//!
//! let tenant = HeaderKey::from_static("x-tenant-id").max_len(64);
//! let req = Request::get("/").header("x-tenant-id", "acme").body(()).unwrap();
//! assert_eq!(tenant.extract(&req).unwrap(), "acme");
//!
//! let anonymous = Request::get("/").body(()).unwrap();
//! let err = tenant.extract(&anonymous).unwrap_err();
//! assert_eq!(err.to_string(), "missing key: header `x-tenant-id` is not present");
//! ```

use std::borrow::Cow;
use std::error::Error;
use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use http::header::{HeaderName, HeaderValue};
use http::Request;

/// Extracts a key from a request.
///
/// Implemented for every `http::Request<B>` by the ready extractors, and for any request type by
/// [`KeyFn`]. Extraction runs on the request path: implementations should not allocate when they can
/// avoid it (the ready ones clone a `HeaderValue`, which is a reference-count increment, or copy an
/// `IpAddr`).
pub trait KeyExtractor<Req>: Send + Sync {
    /// The key. Keyed layers store it in bounded maps, so it must be cheap to clone and hash.
    type Key: Clone + Eq + Hash + Send + Sync + fmt::Debug + 'static;

    /// The request's key, or why there is none.
    fn extract(&self, req: &Req) -> Result<Self::Key, KeyError>;
}

impl<Req, K: KeyExtractor<Req> + ?Sized> KeyExtractor<Req> for std::sync::Arc<K> {
    type Key = K::Key;

    fn extract(&self, req: &Req) -> Result<Self::Key, KeyError> {
        (**self).extract(req)
    }
}

/// Why a key could not be extracted.
///
/// A rejection marker: the rescue layer answers `400 Bad Request` with the `Display` text as the detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    kind: KeyErrorKind,
    from: Cow<'static, str>,
}

/// The kind of a [`KeyError`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyErrorKind {
    /// The source of the key is not in the request.
    Missing,
    /// The key is longer than allowed.
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The key is present but malformed; the string says how.
    Invalid(Cow<'static, str>),
}

impl KeyError {
    /// The key's source (e.g. `"header `x-tenant-id`"`) is not in the request.
    pub fn missing(from: impl Into<Cow<'static, str>>) -> Self {
        KeyError {
            kind: KeyErrorKind::Missing,
            from: from.into(),
        }
    }

    /// The key is `len` bytes, over the `max` allowed.
    pub fn too_long(from: impl Into<Cow<'static, str>>, len: usize, max: usize) -> Self {
        KeyError {
            kind: KeyErrorKind::TooLong { len, max },
            from: from.into(),
        }
    }

    /// The key is malformed; `reason` names the rule it broke.
    pub fn invalid(
        from: impl Into<Cow<'static, str>>,
        reason: impl Into<Cow<'static, str>>,
    ) -> Self {
        KeyError {
            kind: KeyErrorKind::Invalid(reason.into()),
            from: from.into(),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> &KeyErrorKind {
        &self.kind
    }

    /// Whether the key's source is absent ([`KeyErrorKind::Missing`]), as opposed to present but malformed
    /// (too long, empty, invalid bytes, repeated). Keyed layers treat the two differently: see [`MalformedKey`].
    pub fn is_missing(&self) -> bool {
        matches!(self.kind, KeyErrorKind::Missing)
    }

    /// Where the key was looked for, e.g. ``header `x-tenant-id` ``.
    pub fn from(&self) -> &str {
        &self.from
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            KeyErrorKind::Missing => write!(f, "missing key: {} is not present", self.from),
            KeyErrorKind::TooLong { len, max } => {
                write!(
                    f,
                    "invalid key: {} is {len} bytes, over the limit of {max}",
                    self.from
                )
            }
            KeyErrorKind::Invalid(reason) => write!(f, "invalid key: {} {reason}", self.from),
        }
    }
}

impl Error for KeyError {}

/// What a keyed layer does with a key that is **present but malformed** (too long, empty, control or
/// non-ASCII bytes, a repeated header, an unparseable `X-Forwarded-For` hop).
///
/// Missing and malformed are different decisions. A missing key is an ordinary request from a client that
/// has none (each layer's missing-key policy decides: share an anonymous bucket, or refuse). A malformed key
/// is a client sending something it should not — and if it were pooled with the keyless requests, a tenant
/// at its cap could leave its own bucket simply by sending garbage. So every keyed layer (rate limit,
/// bulkhead, idempotency scope) refuses a malformed key with its [`KeyError`] (`400 Bad Request` through
/// the rescue layer) by default, whatever its missing-key policy says.
///
/// ```
/// use http::Request;
/// use palisade_core::key::{HeaderKey, KeyExtractor, MalformedKey};
///
/// let tenant = HeaderKey::from_static("x-tenant-id").max_len(8);
/// let long = Request::get("/").header("x-tenant-id", "a".repeat(9)).body(()).unwrap();
/// let err = tenant.extract(&long).unwrap_err();
/// assert!(!err.is_missing());
/// assert!(!MalformedKey::Reject.as_missing(&err)); // the default: refused with 400
/// assert!(MalformedKey::AsMissing.as_missing(&err)); // opt-in: handled like a missing key
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MalformedKey {
    /// Refuse the request with the extractor's [`KeyError`] (`400`). The default.
    #[default]
    Reject,
    /// Handle it exactly like a missing key, by the layer's missing-key policy (under an "anonymous"
    /// policy, the request joins the anonymous bucket). An explicit opt-in for deployments whose keys are
    /// not under the clients' control — it lets any client choose the anonymous bucket over its own.
    AsMissing,
}

impl MalformedKey {
    /// Whether a request whose extraction failed with `err` is handled by the layer's missing-key policy
    /// (`true`: the key is missing, or malformed under [`MalformedKey::AsMissing`]) or refused with `err`.
    #[inline]
    pub fn as_missing(self, err: &KeyError) -> bool {
        err.is_missing() || self == MalformedKey::AsMissing
    }
}

/// The key is one request header.
///
/// Rules: the header must be present exactly once (two values are ambiguous — a proxy may read the first
/// and palisade the last — so they are refused), 1 to `max_len` bytes (default 128), visible ASCII only
/// (`0x21..=0x7E`: no spaces, control characters or `obs-text`).
#[derive(Debug, Clone)]
pub struct HeaderKey {
    name: HeaderName,
    max_len: usize,
    from: Cow<'static, str>,
}

impl HeaderKey {
    /// The default maximum key length in bytes.
    pub const DEFAULT_MAX_LEN: usize = 128;

    /// Reads the key from `name`.
    pub fn new(name: HeaderName) -> Self {
        let from = Cow::Owned(format!("header `{name}`"));
        HeaderKey {
            name,
            max_len: Self::DEFAULT_MAX_LEN,
            from,
        }
    }

    /// Reads the key from `name`, a lowercase static header name.
    ///
    /// # Panics
    ///
    /// If `name` is not a valid lowercase header name — a programming error caught at startup, as with
    /// [`HeaderName::from_static`]. Use [`HeaderKey::new`] with a parsed name for names from config.
    pub fn from_static(name: &'static str) -> Self {
        Self::new(HeaderName::from_static(name))
    }

    /// Sets the maximum key length in bytes (at least 1).
    pub fn max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len.max(1);
        self
    }

    /// The header name.
    pub fn name(&self) -> &HeaderName {
        &self.name
    }
}

impl<B> KeyExtractor<Request<B>> for HeaderKey {
    type Key = HeaderValue;

    fn extract(&self, req: &Request<B>) -> Result<HeaderValue, KeyError> {
        let mut values = req.headers().get_all(&self.name).iter();
        let value = values
            .next()
            .ok_or_else(|| KeyError::missing(self.from.clone()))?;
        if values.next().is_some() {
            return Err(KeyError::invalid(
                self.from.clone(),
                "appears more than once",
            ));
        }
        self.validate(value.as_bytes())?;
        Ok(value.clone())
    }
}

impl HeaderKey {
    /// Checks a key: 1 to `max_len` bytes of visible ASCII.
    fn validate(&self, bytes: &[u8]) -> Result<(), KeyError> {
        if bytes.is_empty() {
            return Err(KeyError::invalid(self.from.clone(), "is empty"));
        }
        if bytes.len() > self.max_len {
            return Err(KeyError::too_long(
                self.from.clone(),
                bytes.len(),
                self.max_len,
            ));
        }
        if !bytes.iter().all(|b| matches!(b, 0x21..=0x7E)) {
            return Err(KeyError::invalid(
                self.from.clone(),
                "must contain only visible ASCII characters",
            ));
        }
        Ok(())
    }
}

/// The key is a request extension of type `T`, inserted by an earlier layer (e.g. authentication).
pub struct ExtensionKey<T> {
    _t: PhantomData<fn() -> T>,
}

impl<T> ExtensionKey<T> {
    /// Reads the extension `T`.
    pub fn new() -> Self {
        ExtensionKey { _t: PhantomData }
    }
}

impl<T> Default for ExtensionKey<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for ExtensionKey<T> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for ExtensionKey<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExtensionKey")
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}

impl<B, T> KeyExtractor<Request<B>> for ExtensionKey<T>
where
    T: Clone + Eq + Hash + Send + Sync + fmt::Debug + 'static,
{
    type Key = T;

    fn extract(&self, req: &Request<B>) -> Result<T, KeyError> {
        req.extensions()
            .get::<T>()
            .cloned()
            .ok_or_else(|| KeyError::missing(format!("extension `{}`", std::any::type_name::<T>())))
    }
}

/// The connection's peer address as a request extension.
///
/// Servers built on hyper directly insert this (or a plain `SocketAddr`) per connection; axum users
/// enable the `axum` feature and serve with `into_make_service_with_connect_info::<SocketAddr>()`, and
/// the extractors read axum's `ConnectInfo<SocketAddr>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

/// The peer's socket address, from the first of: [`PeerAddr`], axum's `ConnectInfo<SocketAddr>` (with
/// the `axum` feature), a bare `SocketAddr` extension.
fn peer_addr<B>(req: &Request<B>) -> Option<SocketAddr> {
    let ext = req.extensions();
    if let Some(PeerAddr(addr)) = ext.get::<PeerAddr>() {
        return Some(*addr);
    }
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(addr)) =
        ext.get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(*addr);
    }
    ext.get::<SocketAddr>().copied()
}

/// The key is the IP address of the connection's peer (IPv4-mapped IPv6 addresses become IPv4).
///
/// Use this when clients connect directly. Behind a proxy or load balancer every request would share the
/// proxy's address: use [`ClientIp`] there.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerIp;

impl<B> KeyExtractor<Request<B>> for PeerIp {
    type Key = IpAddr;

    fn extract(&self, req: &Request<B>) -> Result<IpAddr, KeyError> {
        peer_addr(req)
            .map(|a| a.ip().to_canonical())
            .ok_or_else(|| KeyError::missing("peer address"))
    }
}

/// The key is the client's IP address, found behind a configured list of trusted proxies.
///
/// The connection's peer is asked first. If it is *not* a trusted proxy, it is the client, and any
/// `X-Forwarded-For` header is ignored — a client cannot choose its own key by sending one. If the peer is
/// trusted, `X-Forwarded-For` is walked from the rightmost hop (the one the nearest proxy appended)
/// leftwards, skipping hops that are themselves trusted proxies; the first untrusted hop is the client.
/// If every hop is trusted, the leftmost is used. Multiple `X-Forwarded-For` headers are read as one list,
/// in order.
///
/// Only the hops the walk reaches decide the key: whatever lies left of the first untrusted hop (the client's
/// own part of the header) is never read, so bytes there — garbage, non-ASCII, control characters — cannot
/// make extraction fail and move the client out of its bucket. A malformed hop reached during the walk (not
/// an IP address) is an error ([`KeyErrorKind::Invalid`], refused as malformed by the keyed layers): it was
/// written by a trusted proxy's client side, and guessing past it would let the client pick its key. At
/// most [`max_hops`](ClientIp::max_hops) hops are read (default 16); a chain that needs more is refused.
///
/// Hops may be bare addresses (`192.0.2.1`, `2001:db8::1`) or carry a port (`192.0.2.1:4711`,
/// `[2001:db8::1]:4711`). The RFC 7239 `Forwarded` header is not read.
///
/// ```
/// use http::Request;
/// use palisade_core::key::{ClientIp, KeyExtractor, PeerAddr};
///
/// let client_ip = ClientIp::trusting(["10.0.0.0/8"]).unwrap();
/// let mut req = Request::get("/")
///     .header("x-forwarded-for", "203.0.113.7, 10.1.2.3")
///     .body(())
///     .unwrap();
/// req.extensions_mut().insert(PeerAddr("10.0.0.1:50000".parse().unwrap()));
/// assert_eq!(client_ip.extract(&req).unwrap().to_string(), "203.0.113.7");
/// ```
#[derive(Debug, Clone)]
pub struct ClientIp {
    trusted: Vec<IpNet>,
    max_hops: usize,
}

impl ClientIp {
    /// Trusts the given proxies: addresses (`10.0.0.1`, `::1`) or CIDR ranges (`10.0.0.0/8`, `fd00::/8`).
    pub fn trusting<I, S>(proxies: I) -> Result<Self, IpNetParseError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let trusted = proxies
            .into_iter()
            .map(|s| s.as_ref().parse())
            .collect::<Result<Vec<IpNet>, _>>()?;
        Ok(ClientIp {
            trusted,
            max_hops: 16,
        })
    }

    /// The maximum number of `X-Forwarded-For` hops read (at least 1).
    pub fn max_hops(mut self, max_hops: usize) -> Self {
        self.max_hops = max_hops.max(1);
        self
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(ip))
    }
}

const XFF: &str = "x-forwarded-for";
const XFF_FROM: &str = "header `x-forwarded-for`";

impl<B> KeyExtractor<Request<B>> for ClientIp {
    type Key = IpAddr;

    fn extract(&self, req: &Request<B>) -> Result<IpAddr, KeyError> {
        let peer = PeerIp.extract(req)?;
        if !self.is_trusted(peer) {
            return Ok(peer);
        }
        let mut leftmost = peer;
        let mut hops = 0usize;
        for value in req.headers().get_all(XFF).iter().rev() {
            // Split the raw bytes, not a `&str` of the whole value: bytes left of the hop the walk stops at were
            // written by the client (or an untrusted hop) and must not decide anything — not even by being
            // invalid UTF-8 or control characters that would make the whole value unreadable.
            for hop in value.as_bytes().rsplit(|&b| b == b',') {
                let hop = hop.trim_ascii();
                if hop.is_empty() {
                    continue;
                }
                hops += 1;
                if hops > self.max_hops {
                    return Err(KeyError::invalid(
                        XFF_FROM,
                        format!("has more than {} hops", self.max_hops),
                    ));
                }
                let ip = std::str::from_utf8(hop)
                    .ok()
                    .and_then(parse_hop)
                    .ok_or_else(|| {
                        KeyError::invalid(XFF_FROM, "has a hop that is not an IP address")
                    })?;
                if !self.is_trusted(ip) {
                    return Ok(ip);
                }
                leftmost = ip;
            }
        }
        Ok(leftmost)
    }
}

/// Parses one `X-Forwarded-For` hop: `ip`, `ipv4:port`, `[ipv6]` or `[ipv6]:port`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = hop.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || valid_port(after.strip_prefix(':')?)) {
            return None;
        }
        return inside
            .parse::<Ipv6Addr>()
            .ok()
            .map(|ip| IpAddr::V6(ip).to_canonical());
    }
    let (ip, port) = hop.rsplit_once(':')?;
    if !valid_port(port) {
        return None;
    }
    ip.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

fn valid_port(port: &str) -> bool {
    port.parse::<u16>().is_ok()
}

/// An IP network in CIDR notation, e.g. `10.0.0.0/8` or `fd00::/8`; a bare address is a `/32` or `/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// The network of `addr` with `prefix` leading bits; host bits are cleared.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, IpNetParseError> {
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(IpNetParseError(format!(
                "prefix /{prefix} is longer than {max} bits"
            )));
        }
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(prefix))),
        };
        Ok(IpNet { addr, prefix })
    }

    /// Whether `ip` is in this network (IPv4-mapped IPv6 addresses are compared as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask32(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for IpNet {
    type Err = IpNetParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| IpNetParseError(format!("`{s}` is not an IP address or CIDR range")))?;
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .map_err(|_| IpNetParseError(format!("`{s}` has an invalid prefix length")))?,
            None if addr.to_canonical().is_ipv4() => 32,
            None => 128,
        };
        IpNet::new(addr, prefix)
    }
}

/// A trusted-proxy entry that is not an IP address or CIDR range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpNetParseError(String);

impl fmt::Display for IpNetParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for IpNetParseError {}

/// A key extractor from a closure `Fn(&Req) -> Result<K, KeyError>`; build it with [`key_fn`].
#[derive(Clone, Copy)]
pub struct KeyFn<F> {
    f: F,
}

/// Wraps a closure as a [`KeyExtractor`].
///
/// ```
/// use http::Request;
/// use palisade_core::key::{key_fn, KeyError, KeyExtractor};
///
/// // The tenant is the first path segment: /t/{tenant}/...
/// let tenant = key_fn(|req: &Request<()>| {
///     req.uri()
///         .path()
///         .strip_prefix("/t/")
///         .and_then(|rest| rest.split('/').next())
///         .filter(|t| !t.is_empty())
///         .map(str::to_owned)
///         .ok_or_else(|| KeyError::missing("path segment /t/{tenant}"))
/// });
/// let req = Request::get("/t/acme/orders").body(()).unwrap();
/// assert_eq!(tenant.extract(&req).unwrap(), "acme");
/// ```
pub fn key_fn<F>(f: F) -> KeyFn<F> {
    KeyFn { f }
}

impl<F> fmt::Debug for KeyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFn").finish_non_exhaustive()
    }
}

impl<Req, K, F> KeyExtractor<Req> for KeyFn<F>
where
    F: Fn(&Req) -> Result<K, KeyError> + Send + Sync,
    K: Clone + Eq + Hash + Send + Sync + fmt::Debug + 'static,
{
    type Key = K;

    fn extract(&self, req: &Req) -> Result<K, KeyError> {
        (self.f)(req)
    }
}
