//! The operations dashboard: one self-contained HTML page drawing the stack's live state, and the
//! JSON it polls. See [`Dashboard`].

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::future::{ready, Ready};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use palisade_core::audit::{verify_from, AuditKey, AuditRecord, AuditSink, Head};
use palisade_core::health::Health;
use serde_json::{json, Value};
use tower_service::Service;

use super::{json_response, report_json, OpsBody, StatusRegistry};
use crate::stack::Handles;

/// The page: HTML with its stylesheet and script inlined (no request leaves for anything else).
const PAGE: &str = concat!(
    include_str!("dashboard/head.html"),
    "<style>\n",
    include_str!("dashboard/style.css"),
    "</style>\n",
    include_str!("dashboard/body.html"),
    "<script>\n",
    include_str!("dashboard/app.js"),
    "</script>\n</body>\n</html>\n"
);

/// The page's Content-Security-Policy: nothing but itself and its own JSON.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// The most stacks a dashboard shows.
pub const MAX_STACKS: usize = 16;
/// The most health components listed (the rest are counted in `components_truncated`).
pub const MAX_COMPONENTS: usize = 64;
/// The most rate-limit tiers listed per stack (the rest are counted in `tiers_truncated`).
pub const MAX_TIERS: usize = 16;
/// The most latency signals listed (the rest are counted in `latency_truncated`).
pub const MAX_SIGNALS: usize = 16;
/// The most time series a dashboard keeps; series beyond it are not recorded.
pub const MAX_SERIES: usize = 512;
/// The most refused tenants listed.
pub const TOP_REFUSED: usize = 10;
/// The most recent audit records listed.
pub const RECENT_AUDIT: usize = 20;
/// The longest key or name shown, in characters; longer ones are truncated with `…`.
pub const MAX_KEY_CHARS: usize = 32;

/// Milliseconds since the Unix epoch (wall clock: the page shows times to people).
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A key made safe to show: control characters replaced, at most [`MAX_KEY_CHARS`] characters.
pub(crate) fn display_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len().min(4 * MAX_KEY_CHARS));
    for (n, c) in key.chars().enumerate() {
        if n == MAX_KEY_CHARS {
            out.pop();
            out.push('…');
            break;
        }
        out.push(if c.is_control() { '?' } else { c });
    }
    out
}

// ---------------------------------------------------------------------------------------------------
// Refused tenants.
// ---------------------------------------------------------------------------------------------------

/// The tenants refused most often, kept in bounded memory (the *space-saving* algorithm).
///
/// At most `tracked` tenants are counted at a time; a tenant not yet tracked when the table is full
/// takes the place of the one with the smallest count and inherits that count as its possible
/// overcount (`error`). Any tenant refused more than `total / tracked` times is guaranteed to be in
/// the table, so a flood of random tenant ids cannot hide a heavy hitter, nor grow memory. Keys are
/// stored [truncated](MAX_KEY_CHARS) with control characters replaced.
///
/// Feed it from wherever refusals are seen, e.g. a middleware outside the stack that records the
/// tenant of every `429`:
///
/// ```
/// use palisade::ops::RefusedTenants;
///
/// let refused = RefusedTenants::new(64);
/// for _ in 0..5 { refused.record("acme"); }
/// refused.record("globex");
/// let top = refused.top(10);
/// assert_eq!(top[0].tenant, "acme");
/// assert_eq!(top[0].refused, 5);
/// assert_eq!(refused.total(), 6);
/// ```
#[derive(Clone)]
pub struct RefusedTenants {
    inner: Arc<Mutex<SpaceSaving>>,
}

struct SpaceSaving {
    capacity: usize,
    total: u64,
    entries: Vec<TenantCount>,
}

/// One row of [`RefusedTenants::top`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantCount {
    /// The tenant key as shown (truncated to [`MAX_KEY_CHARS`] characters).
    pub tenant: String,
    /// Refusals counted for it (an overestimate by at most `error`).
    pub refused: u64,
    /// How much of `refused` may belong to tenants it replaced in the table.
    pub error: u64,
}

impl RefusedTenants {
    /// The most tenants a table may track.
    pub const MAX_TRACKED: usize = 1024;

    /// A table tracking at most `tracked` tenants (clamped to 1..=[`MAX_TRACKED`](Self::MAX_TRACKED)).
    pub fn new(tracked: usize) -> Self {
        let capacity = tracked.clamp(1, Self::MAX_TRACKED);
        RefusedTenants {
            inner: Arc::new(Mutex::new(SpaceSaving {
                capacity,
                total: 0,
                entries: Vec::with_capacity(capacity),
            })),
        }
    }

    /// Counts one refusal of `tenant`.
    pub fn record(&self, tenant: &str) {
        let key = display_key(tenant);
        let mut t = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        t.total = t.total.saturating_add(1);
        if let Some(e) = t.entries.iter_mut().find(|e| e.tenant == key) {
            e.refused = e.refused.saturating_add(1);
            return;
        }
        if t.entries.len() < t.capacity {
            t.entries.push(TenantCount {
                tenant: key,
                refused: 1,
                error: 0,
            });
            return;
        }
        if let Some(min) = t.entries.iter_mut().min_by_key(|e| e.refused) {
            let floor = min.refused;
            *min = TenantCount {
                tenant: key,
                refused: floor.saturating_add(1),
                error: floor,
            };
        }
    }

    /// The `n` tenants with the most refusals, most first (ties by name).
    pub fn top(&self, n: usize) -> Vec<TenantCount> {
        let mut entries = self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
            .clone();
        entries.sort_by(|a, b| b.refused.cmp(&a.refused).then(a.tenant.cmp(&b.tenant)));
        entries.truncate(n);
        entries
    }

    /// Every refusal recorded.
    pub fn total(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }

    /// Tenants in the table now.
    pub fn tracked(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
            .len()
    }

    /// The most tenants the table holds.
    pub fn capacity(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .capacity
    }

    fn json(&self, n: usize) -> Value {
        let top: Vec<Value> = self
            .top(n)
            .into_iter()
            .map(|t| json!({ "tenant": t.tenant, "refused": t.refused, "error": t.error }))
            .collect();
        json!({
            "total": self.total(),
            "tracked": self.tracked(),
            "capacity": self.capacity(),
            "tenants": top,
        })
    }
}

impl Default for RefusedTenants {
    /// A table of 64 tenants.
    fn default() -> Self {
        RefusedTenants::new(64)
    }
}

impl fmt::Debug for RefusedTenants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefusedTenants")
            .field("total", &self.total())
            .field("tracked", &self.tracked())
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------------
// The audit tail.
// ---------------------------------------------------------------------------------------------------

/// The latest audit records and a running verification of the chain, for the dashboard.
///
/// [`tee`](Self::tee) wraps the application's [`AuditSink`]: every batch the sink acknowledges is
/// checked against the previous one (consecutive sequence numbers, each `prev` the hash before it,
/// and — given the [`AuditKey`] — every keyed hash), and its last records are kept (at most
/// `capacity`, oldest evicted). The *verified head* is the last record that passed, so the page can
/// say "the chain verifies up to record N" without rereading the log. A failure is kept and shown
/// until restart; verification stops there. This checks what the writer handed to storage; verify
/// the stored files themselves with [`verify_path`](palisade_core::audit::verify_path).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use palisade::audit::{Audit, AuditEvent, AuditKey, MemorySink};
/// use palisade::ops::AuditTail;
///
/// let key = AuditKey::generate();
/// let tail = AuditTail::new(20, Some(key.clone()));
/// let audit = Audit::builder().key(key).sink(tail.tee(MemorySink::new(100))).build()?;
/// audit.record(AuditEvent::new("demo.started"));
/// audit.flush().await?;
/// assert_eq!(tail.verified_head().map(|h| h.seq), Some(1));
/// assert_eq!(tail.recent()[0].kind, "demo.started");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct AuditTail {
    inner: Arc<Mutex<TailState>>,
}

struct TailState {
    capacity: usize,
    key: Option<AuditKey>,
    /// The position the next batch must continue from; `None` until the sink's head is known.
    anchor: Option<Head>,
    verified: u64,
    error: Option<String>,
    recent: VecDeque<AuditRecord>,
}

/// An [`AuditSink`] that forwards to another and tells an [`AuditTail`] what it stored.
pub struct TeeSink<S> {
    sink: S,
    tail: AuditTail,
}

impl AuditTail {
    /// The most records a tail keeps.
    pub const MAX_CAPACITY: usize = 256;

    /// A tail keeping the last `capacity` records (clamped to 1..=[`MAX_CAPACITY`](Self::MAX_CAPACITY)),
    /// authenticating keyed hashes with `key` (without one it checks only sequence and links).
    pub fn new(capacity: usize, key: Option<AuditKey>) -> Self {
        AuditTail {
            inner: Arc::new(Mutex::new(TailState {
                capacity: capacity.clamp(1, Self::MAX_CAPACITY),
                key,
                anchor: None,
                verified: 0,
                error: None,
                recent: VecDeque::new(),
            })),
        }
    }

    /// Wraps `sink`: give the result to the [`Audit`](palisade_core::audit::Audit) builder.
    pub fn tee<S: AuditSink>(&self, sink: S) -> TeeSink<S> {
        TeeSink {
            sink,
            tail: self.clone(),
        }
    }

    /// The last record whose link (and keyed hash, with a key) verified.
    pub fn verified_head(&self) -> Option<Head> {
        let t = self.lock();
        t.anchor.filter(|h| h.seq > 0)
    }

    /// Records verified since the tail started.
    pub fn verified_records(&self) -> u64 {
        self.lock().verified
    }

    /// The first verification failure, if any.
    pub fn error(&self) -> Option<String> {
        self.lock().error.clone()
    }

    /// The latest records, oldest first.
    pub fn recent(&self) -> Vec<AuditRecord> {
        self.lock().recent.iter().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TailState> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn appended(&self, batch: &[AuditRecord]) {
        let mut t = self.lock();
        if batch.is_empty() {
            return;
        }
        if t.error.is_none() {
            let anchor = t.anchor.unwrap_or(Head::GENESIS);
            let result = match &t.key {
                Some(key) => verify_from(&anchor, batch, key, None)
                    .map(|r| r.head)
                    .map_err(|e| e.to_string()),
                None => links(&anchor, batch),
            };
            match result {
                Ok(head) => {
                    t.anchor = head.or(t.anchor);
                    t.verified += batch.len() as u64;
                }
                Err(e) => t.error = Some(e),
            }
        }
        for r in batch {
            if t.recent.len() == t.capacity {
                t.recent.pop_front();
            }
            t.recent.push_back(r.clone());
        }
    }

    fn json(&self, n: usize) -> Value {
        let t = self.lock();
        let skip = t.recent.len().saturating_sub(n);
        let recent: Vec<Value> = t
            .recent
            .iter()
            .skip(skip)
            .rev()
            .map(|r| {
                json!({
                    "seq": r.seq,
                    "ts_ms": r.ts_ms,
                    "kind": display_key(&r.kind),
                    "tenant": r.tenant.as_deref().map(display_key),
                })
            })
            .collect();
        json!({
            "verified": t.error.is_none(),
            "keyed": t.key.is_some(),
            "verified_head": t.anchor.filter(|h| h.seq > 0).map(|h| h.to_string()),
            "verified_records": t.verified,
            "error": t.error,
            "recent": recent,
        })
    }
}

/// Sequence and links only (no key): each record follows the one before.
fn links(anchor: &Head, batch: &[AuditRecord]) -> Result<Option<Head>, String> {
    let mut last = *anchor;
    for r in batch {
        if r.seq != last.seq + 1 || r.prev != last.hash {
            return Err(format!(
                "record {} does not follow record {} (sequence or link broken)",
                r.seq, last.seq
            ));
        }
        last = r.head();
    }
    Ok(Some(last))
}

impl fmt::Debug for AuditTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.lock();
        f.debug_struct("AuditTail")
            .field("verified", &t.verified)
            .field("error", &t.error)
            .field("recent", &t.recent.len())
            .finish()
    }
}

impl<S: AuditSink> AuditSink for TeeSink<S> {
    fn append(&mut self, batch: &[AuditRecord]) -> std::io::Result<()> {
        self.sink.append(batch)?;
        self.tail.appended(batch);
        Ok(())
    }

    fn head(&self) -> Option<Head> {
        let head = self.sink.head();
        self.tail.lock().anchor = head;
        head
    }

    fn is_blocking(&self) -> bool {
        self.sink.is_blocking()
    }
}

impl<S> fmt::Debug for TeeSink<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TeeSink").field("tail", &self.tail).finish()
    }
}

// ---------------------------------------------------------------------------------------------------
// Histories.
// ---------------------------------------------------------------------------------------------------

/// Bounded time series sharing one time axis: `points` samples at most, [`MAX_SERIES`] series.
#[cfg_attr(
    not(any(
        feature = "breaker",
        feature = "ratelimit",
        feature = "bulkhead",
        feature = "degrade",
        feature = "heal"
    )),
    allow(dead_code)
)]
#[derive(Debug)]
struct History {
    points: usize,
    times: VecDeque<u64>,
    series: BTreeMap<String, VecDeque<Option<f64>>>,
    /// Counter readings for per-second rates: series name → (time, value).
    #[cfg_attr(
        not(any(feature = "ratelimit", feature = "bulkhead", feature = "degrade")),
        allow(dead_code)
    )]
    counters: BTreeMap<String, (u64, f64)>,
    /// Gate levels and when the dashboard first saw each: stack → (level, since).
    #[cfg_attr(not(feature = "degrade"), allow(dead_code))]
    gate_since: BTreeMap<String, (&'static str, u64)>,
}

#[cfg_attr(
    not(any(
        feature = "breaker",
        feature = "ratelimit",
        feature = "bulkhead",
        feature = "degrade",
        feature = "heal"
    )),
    allow(dead_code)
)]
impl History {
    fn new(points: usize) -> Self {
        History {
            points,
            times: VecDeque::with_capacity(points),
            series: BTreeMap::new(),
            counters: BTreeMap::new(),
            gate_since: BTreeMap::new(),
        }
    }

    fn last_time(&self) -> Option<u64> {
        self.times.back().copied()
    }

    /// Appends one sample: `values` by series name; series absent from it get a gap. Every series
    /// stays as long as `times`.
    fn push(&mut self, at: u64, values: BTreeMap<String, f64>) {
        if self.times.len() == self.points {
            self.times.pop_front();
            for s in self.series.values_mut() {
                s.pop_front();
            }
        }
        let len = self.times.len();
        self.times.push_back(at);
        for s in self.series.values_mut() {
            s.push_back(None);
        }
        for (name, value) in values {
            if !self.series.contains_key(&name) {
                if self.series.len() >= MAX_SERIES {
                    continue;
                }
                self.series
                    .insert(name.clone(), std::iter::repeat_n(None, len + 1).collect());
            }
            if let Some(last) = self.series.get_mut(&name).and_then(|s| s.back_mut()) {
                *last = value.is_finite().then_some(value);
            }
        }
        // A series with no value left in the window is gone.
        self.series.retain(|_, s| s.iter().any(Option::is_some));
    }

    /// The per-second rate of a counter since its last reading (`None` at the first reading, or
    /// when the counter went down: a reset).
    #[cfg_attr(
        not(any(feature = "ratelimit", feature = "bulkhead", feature = "degrade")),
        allow(dead_code)
    )]
    fn rate(&mut self, name: String, at: u64, value: f64) -> Option<f64> {
        let prev = self.counters.insert(name, (at, value));
        let (t0, v0) = prev?;
        let dt = at.checked_sub(t0).filter(|&dt| dt > 0)? as f64 / 1000.0;
        (value >= v0).then(|| (value - v0) / dt)
    }

    fn series(&self, name: &str) -> Value {
        match self.series.get(name) {
            Some(s) => Value::Array(
                s.iter()
                    .map(|v| v.map_or(Value::Null, |v| json!((v * 1e4).round() / 1e4)))
                    .collect(),
            ),
            None => Value::Array(Vec::new()),
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// The dashboard.
// ---------------------------------------------------------------------------------------------------

/// `/palisade/dashboard`: an HTML page of the stack's live state, and the JSON it polls.
///
/// A plain Tower service (like [`HealthEndpoint`](super::HealthEndpoint)): `GET` on a path whose
/// last segment is `data` answers the JSON snapshot, any other path the page (HTML, CSS and a little
/// plain JavaScript, all inline: it works offline, with a `Content-Security-Policy` that lets it
/// reach nothing but its own origin). Mount it twice:
///
/// ```ignore
/// let dashboard = Dashboard::builder().health(&health).stack("server", stack.handles()).build();
/// let app = axum::Router::new()
///     .route_service("/palisade/dashboard", dashboard.clone())
///     .route_service("/palisade/dashboard/data", dashboard);
/// ```
///
/// The page polls `data` every [`interval`](DashboardBuilder::interval) and draws a panel for each
/// part the stack has: health (liveness, readiness, every component with its state, reason and
/// since-when), breakers, rate limits (admitted and refused per second per tier, tracked tenants,
/// the [top refused tenants](RefusedTenants)), bulkheads, gates, latency (p50 / p95 / p99 per
/// signal, with the `heal` feature and a recorder registry) and the audit log (records appended and
/// dropped, the head, and with an [`AuditTail`] the verified head and the latest records). A
/// "stale" banner appears when the data stops coming.
///
/// # Histories
///
/// The charts come from short histories the dashboard keeps in memory: one sample per interval,
/// taken when the JSON is read (so histories grow while someone watches; call
/// [`sample`](Dashboard::sample) from a timer to keep them filling otherwise), at most
/// [`history`](DashboardBuilder::history) samples of at most [`MAX_SERIES`] series. Every list in
/// the JSON is bounded: see the `MAX_*` constants of this module.
///
/// # Read-only
///
/// The dashboard changes nothing. Operator actions (set a gate's level, force a breaker) are a
/// separate service, [`Dashboard::actions`], which the application mounts where it wants — on an
/// admin listener, or behind a loopback-only guard — and tells the page about with
/// [`actions_url`](DashboardBuilder::actions_url). Without both, the page has no controls.
#[derive(Clone)]
pub struct Dashboard {
    inner: Arc<Inner>,
}

struct Inner {
    title: String,
    interval: Duration,
    health: Option<Health>,
    stacks: Vec<(String, Handles)>,
    registry: Option<StatusRegistry>,
    refused: Option<RefusedTenants>,
    audit_tail: Option<AuditTail>,
    actions_url: Option<String>,
    #[cfg(feature = "heal")]
    latency: Option<palisade_heal::signals::recorder::Recorders>,
    history: Mutex<History>,
}

/// Builds a [`Dashboard`]; from [`Dashboard::builder`].
#[derive(Default)]
pub struct DashboardBuilder {
    title: Option<String>,
    interval: Option<Duration>,
    points: Option<usize>,
    health: Option<Health>,
    stacks: Vec<(String, Handles)>,
    registry: Option<StatusRegistry>,
    refused: Option<RefusedTenants>,
    audit_tail: Option<AuditTail>,
    actions_url: Option<String>,
    #[cfg(feature = "heal")]
    latency: Option<palisade_heal::signals::recorder::Recorders>,
}

impl fmt::Debug for DashboardBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DashboardBuilder")
            .field("title", &self.title)
            .field(
                "stacks",
                &self.stacks.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl DashboardBuilder {
    /// The page's title (default `palisade`), shown [truncated](MAX_KEY_CHARS) in the header.
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// How often the page polls and the histories take a sample: 250 ms to 60 s (clamped), default 1 s.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = Some(interval);
        self
    }

    /// How many samples each history keeps: 10 to 3,600 (clamped), default 120 (two minutes at 1 s).
    pub fn history(mut self, points: usize) -> Self {
        self.points = Some(points);
        self
    }

    /// The health handle: the health panel (liveness, readiness, components).
    pub fn health(mut self, health: &Health) -> Self {
        self.health = Some(health.clone());
        self
    }

    /// A stack's handles, shown under `name` (`"server"`, `"upstream"`, ...): its breaker, rate
    /// limit, bulkhead and gate, and its health and audit when [`health`](Self::health) is not set.
    /// Registering a name again replaces it; at most [`MAX_STACKS`] stacks (more are ignored).
    pub fn stack(mut self, name: impl Into<String>, handles: &Handles) -> Self {
        let name = display_key(&name.into());
        if let Some(entry) = self.stacks.iter_mut().find(|(n, _)| *n == name) {
            entry.1 = handles.clone();
        } else if self.stacks.len() < MAX_STACKS {
            self.stacks.push((name, handles.clone()));
        }
        self
    }

    /// A status registry, included as is under `"status"` in the JSON (the page lists it raw): your
    /// own sources next to the stack's.
    pub fn status(mut self, registry: StatusRegistry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// The table of refused tenants the rate-limit panel lists (top [`TOP_REFUSED`]).
    pub fn refused_tenants(mut self, refused: RefusedTenants) -> Self {
        self.refused = Some(refused);
        self
    }

    /// The audit tail: the verified head and the latest records in the audit panel.
    pub fn audit_tail(mut self, tail: AuditTail) -> Self {
        self.audit_tail = Some(tail);
        self
    }

    /// The latency recorders: p50 / p95 / p99 per signal (at most [`MAX_SIGNALS`]).
    #[cfg(feature = "heal")]
    pub fn latency(mut self, recorders: palisade_heal::signals::recorder::Recorders) -> Self {
        self.latency = Some(recorders);
        self
    }

    /// Where the page sends operator actions: the path the application mounted
    /// [`Dashboard::actions`] at (on its admin listener). Without it the page is read-only.
    pub fn actions_url(mut self, url: impl Into<String>) -> Self {
        self.actions_url = Some(url.into());
        self
    }

    /// The dashboard.
    pub fn build(self) -> Dashboard {
        let points = self.points.unwrap_or(120).clamp(10, 3600);
        let interval = self
            .interval
            .unwrap_or(Duration::from_secs(1))
            .clamp(Duration::from_millis(250), Duration::from_secs(60));
        Dashboard {
            inner: Arc::new(Inner {
                title: display_key(self.title.as_deref().unwrap_or("palisade")),
                interval,
                health: self.health,
                stacks: self.stacks,
                registry: self.registry,
                refused: self.refused,
                audit_tail: self.audit_tail,
                actions_url: self.actions_url,
                #[cfg(feature = "heal")]
                latency: self.latency,
                history: Mutex::new(History::new(points)),
            }),
        }
    }
}

impl fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dashboard")
            .field("title", &self.inner.title)
            .field(
                "stacks",
                &self.inner.stacks.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("actions_url", &self.inner.actions_url)
            .finish_non_exhaustive()
    }
}

/// Rates and ratios are shown to 4 decimals.
#[allow(dead_code)]
fn round(v: f64) -> f64 {
    (v * 1e4).round() / 1e4
}

#[allow(dead_code)]
fn ratio(part: u32, whole: u32) -> f64 {
    if whole == 0 {
        0.0
    } else {
        f64::from(part) / f64::from(whole)
    }
}

impl Dashboard {
    /// A builder with nothing registered.
    pub fn builder() -> DashboardBuilder {
        DashboardBuilder::default()
    }

    /// The page's HTML.
    pub fn page() -> &'static str {
        PAGE
    }

    /// The operator actions, as a service to mount on the admin listener. See [`DashboardActions`].
    pub fn actions(&self) -> DashboardActions {
        DashboardActions {
            dashboard: self.clone(),
        }
    }

    /// Takes a sample for the histories now, unless one was taken less than an interval ago.
    pub fn sample(&self) {
        self.sample_at(unix_ms());
    }

    fn health(&self) -> Option<&Health> {
        self.inner
            .health
            .as_ref()
            .or_else(|| self.inner.stacks.first().map(|(_, h)| h.health()))
    }

    /// Samples at `now` (milliseconds since the epoch) if due.
    fn sample_at(&self, now: u64) {
        let mut h = self
            .inner
            .history
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let due = h.last_time().is_none_or(|last| {
            now.saturating_sub(last) + 50 >= self.inner.interval.as_millis() as u64
        });
        if !due {
            return;
        }
        #[allow(unused_mut)]
        let mut values = BTreeMap::new();
        #[allow(unused_variables)]
        for (stack, handles) in &self.inner.stacks {
            #[cfg(feature = "breaker")]
            if let Some(b) = handles.breaker() {
                let c = b.counts();
                values.insert(
                    format!("{stack}.breaker.failure_rate"),
                    ratio(c.window_failures, c.window_calls),
                );
                values.insert(
                    format!("{stack}.breaker.slow_rate"),
                    ratio(c.window_slow, c.window_calls),
                );
            }
            #[cfg(feature = "ratelimit")]
            if let Some(rl) = handles.rate_limit() {
                for t in rl.metrics().into_iter().take(MAX_TIERS) {
                    let base = format!("{stack}.rate_limit.{}", display_key(&t.name));
                    if let Some(r) = h.rate(format!("{base}.admitted"), now, t.admitted as f64) {
                        values.insert(format!("{base}.admitted_per_s"), round(r));
                    }
                    if let Some(r) = h.rate(format!("{base}.rejected"), now, t.rejected as f64) {
                        values.insert(format!("{base}.rejected_per_s"), round(r));
                    }
                }
            }
            #[cfg(feature = "bulkhead")]
            if let Some(b) = handles.bulkhead() {
                values.insert(format!("{stack}.bulkhead.in_flight"), b.in_flight() as f64);
                values.insert(format!("{stack}.bulkhead.queued"), b.queued() as f64);
                values.insert(format!("{stack}.bulkhead.limit"), b.max_concurrent() as f64);
                if let Some(r) = h.rate(
                    format!("{stack}.bulkhead.rejected"),
                    now,
                    b.rejected() as f64,
                ) {
                    values.insert(format!("{stack}.bulkhead.rejected_per_s"), round(r));
                }
            }
            #[cfg(feature = "degrade")]
            if let Some(g) = handles.gate() {
                let level = g.level();
                values.insert(format!("{stack}.gate.level"), f64::from(level as u8));
                if let Some(r) = h.rate(format!("{stack}.gate.shed"), now, g.shed_total() as f64) {
                    values.insert(format!("{stack}.gate.shed_per_s"), round(r));
                }
                match h.gate_since.get(stack) {
                    Some((l, _)) if *l == level.as_str() => {}
                    _ => {
                        h.gate_since.insert(stack.clone(), (level.as_str(), now));
                    }
                }
            }
        }
        #[cfg(feature = "heal")]
        if let Some(recorders) = &self.inner.latency {
            for r in recorders.list().into_iter().take(MAX_SIGNALS) {
                let Some(window) = r.windows().first().copied() else {
                    continue;
                };
                if let Some(s) = r.snapshot(window) {
                    let name = display_key(r.name());
                    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
                    for (q, v) in [("p50", s.p50), ("p95", s.p95), ("p99", s.p99)] {
                        if let Some(v) = ms(v) {
                            values.insert(format!("latency.{name}.{q}"), v);
                        }
                    }
                }
            }
        }
        h.push(now, values);
    }

    /// The JSON the page polls, sampling first if a sample is due. Its shape (`"version": 1`):
    ///
    /// ```text
    /// { version, title, generated_ms, interval_ms, history_points, times: [ms, ...],
    ///   actions: null | { url, gate_levels, breaker_ops },
    ///   health: null | { liveness, readiness, components: [{name, kind, state, reason, since}], components_truncated },
    ///   breakers: [{ stack, state, mode, retry_after_ms, failure_rate, slow_rate, thresholds, window_calls, ...,
    ///                trips, rejected, history: { failure_rate, slow_rate } }],
    ///   rate_limits: [{ stack, tiers: [{ name, limit, period_ms, burst, admitted, rejected,
    ///                   history: { admitted_per_s, rejected_per_s } }], tiers_truncated, tracked_tenants, overflowed, load }],
    ///   refused_tenants: null | { total, tracked, capacity, tenants: [{ tenant, refused, error }] },
    ///   bulkheads: [{ stack, in_flight, queued, limit, available, rejected, saturated, history: {...} }],
    ///   gates: [{ stack, name, level, level_index, manual_level, auto, read_only, shed, read_only_refused,
    ///             load, since_ms, history: { level, shed_per_s } }],
    ///   latency: [{ signal, windows: [{ window_ms, count, errors, p50_ms, p95_ms, p99_ms }], history: { p50, p95, p99 } }],
    ///   latency_truncated,
    ///   audit: null | { enabled, appended, dropped, failed, head, tail: null | { verified, keyed, verified_head,
    ///                   verified_records, error, recent: [{ seq, ts_ms, kind, tenant }] } },
    ///   status: null | { the status registry's snapshot } }
    /// ```
    ///
    /// Every history is aligned with `times` (`null` where a series had no value).
    pub fn data(&self) -> Value {
        let now = unix_ms();
        self.sample_at(now);
        self.data_at(now)
    }

    fn data_at(&self, now: u64) -> Value {
        let inner = &*self.inner;
        let h = inner.history.lock().unwrap_or_else(PoisonError::into_inner);
        #[allow(unused_mut)]
        let (mut breakers, mut rate_limits, mut bulkheads, mut gates) = (
            Vec::<Value>::new(),
            Vec::<Value>::new(),
            Vec::<Value>::new(),
            Vec::<Value>::new(),
        );
        #[allow(unused_variables)]
        for (stack, handles) in &inner.stacks {
            #[cfg(feature = "breaker")]
            if let Some(b) = handles.breaker() {
                use super::StatusSource;
                let mut v = b.status();
                let c = b.counts();
                let t = b.thresholds();
                if let Some(o) = v.as_object_mut() {
                    o.insert("stack".into(), json!(stack));
                    o.insert(
                        "failure_rate".into(),
                        json!(round(ratio(c.window_failures, c.window_calls))),
                    );
                    o.insert(
                        "slow_rate".into(),
                        json!(round(ratio(c.window_slow, c.window_calls))),
                    );
                    o.insert(
                        "thresholds".into(),
                        json!({
                            "consecutive_failures": t.consecutive_failures,
                            "failure_rate": t.failure_rate,
                            "slow_call_rate": t.slow_call_rate.map(|(_, r)| r),
                            "slow_call_ms": t.slow_call_rate.map(|(d, _)| d.as_millis() as u64),
                            "minimum_calls": t.minimum_calls,
                        }),
                    );
                    o.insert(
                        "history".into(),
                        json!({
                            "failure_rate": h.series(&format!("{stack}.breaker.failure_rate")),
                            "slow_rate": h.series(&format!("{stack}.breaker.slow_rate")),
                        }),
                    );
                }
                breakers.push(v);
            }
            #[cfg(feature = "ratelimit")]
            if let Some(rl) = handles.rate_limit() {
                let metrics = rl.metrics();
                let tiers: Vec<Value> = metrics
                    .iter()
                    .take(MAX_TIERS)
                    .map(|t| {
                        let name = display_key(&t.name);
                        let base = format!("{stack}.rate_limit.{name}");
                        json!({
                            "name": name,
                            "limit": t.rate.limit(),
                            "period_ms": t.rate.period().as_millis() as u64,
                            "burst": t.rate.burst_size(),
                            "admitted": t.admitted,
                            "rejected": t.rejected,
                            "history": {
                                "admitted_per_s": h.series(&format!("{base}.admitted_per_s")),
                                "rejected_per_s": h.series(&format!("{base}.rejected_per_s")),
                            },
                        })
                    })
                    .collect();
                rate_limits.push(json!({
                    "stack": stack,
                    "tiers": tiers,
                    "tiers_truncated": metrics.len().saturating_sub(MAX_TIERS),
                    "tracked_tenants": rl.tracked_tenants(),
                    "overflowed": rl.overflowed(),
                    "load": rl.load_signal().map(|l| round(l.get())),
                }));
            }
            #[cfg(feature = "bulkhead")]
            if let Some(b) = handles.bulkhead() {
                bulkheads.push(json!({
                    "stack": stack,
                    "name": display_key(b.name()),
                    "in_flight": b.in_flight(),
                    "queued": b.queued(),
                    "limit": b.max_concurrent(),
                    "available": b.available(),
                    "rejected": b.rejected(),
                    "saturated": b.is_saturated(),
                    "history": {
                        "in_flight": h.series(&format!("{stack}.bulkhead.in_flight")),
                        "queued": h.series(&format!("{stack}.bulkhead.queued")),
                        "limit": h.series(&format!("{stack}.bulkhead.limit")),
                        "rejected_per_s": h.series(&format!("{stack}.bulkhead.rejected_per_s")),
                    },
                }));
            }
            #[cfg(feature = "degrade")]
            if let Some(g) = handles.gate() {
                let level = g.level();
                let since = h
                    .gate_since
                    .get(stack)
                    .filter(|(l, _)| *l == level.as_str())
                    .map(|(_, s)| *s);
                gates.push(json!({
                    "stack": stack,
                    "name": display_key(g.name()),
                    "level": level.as_str(),
                    "level_index": level as u8,
                    "levels": palisade_degrade::Level::ALL.iter().map(|l| l.as_str()).collect::<Vec<_>>(),
                    "manual_level": g.manual_level().map(|l| l.as_str()),
                    "auto": g.is_auto(),
                    "read_only": level >= palisade_degrade::Level::ReadOnly,
                    "shed": g.shed_total(),
                    "read_only_refused": g.read_only_total(),
                    "load": round(g.load_signal().get()),
                    "since_ms": since,
                    "history": {
                        "level": h.series(&format!("{stack}.gate.level")),
                        "shed_per_s": h.series(&format!("{stack}.gate.shed_per_s")),
                    },
                }));
            }
        }

        #[allow(unused_mut)]
        let mut latency: Vec<Value> = Vec::new();
        #[allow(unused_mut)]
        let mut latency_truncated = 0usize;
        #[cfg(feature = "heal")]
        if let Some(recorders) = &inner.latency {
            let list = recorders.list();
            latency_truncated = list.len().saturating_sub(MAX_SIGNALS);
            let ms = |d: Option<Duration>| d.map(|d| round(d.as_secs_f64() * 1e3));
            for r in list.into_iter().take(MAX_SIGNALS) {
                let name = display_key(r.name());
                let windows: Vec<Value> = r
                    .snapshots()
                    .into_iter()
                    .map(|s| {
                        json!({
                            "window_ms": s.window.as_millis() as u64,
                            "count": s.count,
                            "errors": s.errors,
                            "p50_ms": ms(s.p50),
                            "p95_ms": ms(s.p95),
                            "p99_ms": ms(s.p99),
                        })
                    })
                    .collect();
                latency.push(json!({
                    "signal": name,
                    "windows": windows,
                    "history": {
                        "p50": h.series(&format!("latency.{name}.p50")),
                        "p95": h.series(&format!("latency.{name}.p95")),
                        "p99": h.series(&format!("latency.{name}.p99")),
                    },
                }));
            }
        }

        let health = self.health().map(|health| {
            let live = health.liveness();
            let ready = health.readiness();
            // Every component is in one of the two reports (or both): the union, by name.
            let mut components: BTreeMap<String, Value> = BTreeMap::new();
            for report in [&ready, &live] {
                if let Some(list) = report_json(report, false)
                    .get("components")
                    .and_then(Value::as_array)
                {
                    for c in list {
                        let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
                        components
                            .entry(name.to_owned())
                            .or_insert_with(|| c.clone());
                    }
                }
            }
            let total = components.len();
            let components: Vec<Value> = components
                .into_values()
                .take(MAX_COMPONENTS)
                .map(|mut c| {
                    if let Some(o) = c.as_object_mut() {
                        for k in ["name", "reason"] {
                            if let Some(s) = o.get(k).and_then(Value::as_str) {
                                let short = display_key_long(s);
                                o.insert(k.into(), json!(short));
                            }
                        }
                    }
                    c
                })
                .collect();
            json!({
                "liveness": live.status(),
                "readiness": ready.status(),
                "components": components,
                "components_truncated": total.saturating_sub(MAX_COMPONENTS),
            })
        });

        let audit = inner.stacks.first().map(|(_, h)| h.audit()).map(|a| {
            json!({
                "enabled": a.is_enabled(),
                "appended": a.appended_total(),
                "dropped": a.dropped_total(),
                "failed": a.failed(),
                "head": a.head().map(|h| h.to_string()),
                "tail": inner.audit_tail.as_ref().map(|t| t.json(RECENT_AUDIT)),
            })
        });

        let actions = inner.actions_url.as_ref().map(|url| {
            #[allow(unused_mut)]
            let mut gate_levels: Vec<&str> = Vec::new();
            #[cfg(feature = "degrade")]
            gate_levels.extend(palisade_degrade::Level::ALL.iter().map(|l| l.as_str()));
            json!({
                "url": url,
                "gate_levels": gate_levels,
                "breaker_ops": ["force_open", "force_closed", "reset"],
            })
        });

        json!({
            "version": 1,
            "title": inner.title,
            "generated_ms": now,
            "interval_ms": inner.interval.as_millis() as u64,
            "history_points": h.points,
            "times": h.times.iter().collect::<Vec<_>>(),
            "actions": actions,
            "health": health,
            "breakers": breakers,
            "rate_limits": rate_limits,
            "refused_tenants": inner.refused.as_ref().map(|r| r.json(TOP_REFUSED)),
            "bulkheads": bulkheads,
            "gates": gates,
            "latency": latency,
            "latency_truncated": latency_truncated,
            "audit": audit,
            "status": inner.registry.as_ref().map(StatusRegistry::snapshot),
        })
    }

    fn respond(&self, method: &Method, path: &str) -> Response<OpsBody> {
        if method != Method::GET && method != Method::HEAD {
            let mut res = json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                r#"{"error":"method not allowed; use GET or HEAD"}"#,
            );
            res.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return res;
        }
        let head = method == Method::HEAD;
        if path.trim_end_matches('/').rsplit('/').next() == Some("data") {
            let body = if head {
                Bytes::new()
            } else {
                Bytes::from(self.data().to_string())
            };
            return json_response(StatusCode::OK, body);
        }
        let mut res = Response::new(OpsBody::new(if head {
            Bytes::new()
        } else {
            Bytes::from_static(PAGE.as_bytes())
        }));
        let headers = res.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(
            HeaderName::from_static("content-security-policy"),
            HeaderValue::from_static(CSP),
        );
        headers.insert(
            HeaderName::from_static("x-content-type-options"),
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            HeaderName::from_static("referrer-policy"),
            HeaderValue::from_static("no-referrer"),
        );
        res
    }
}

/// Reasons may be longer than keys: at most 160 characters.
fn display_key_long(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(160)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().nth(160).is_some() {
        out.pop();
        out.push('…');
    }
    out
}

impl<B> Service<Request<B>> for Dashboard {
    type Response = Response<OpsBody>;
    type Error = Infallible;
    type Future = Ready<Result<Response<OpsBody>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ready(Ok(self.respond(req.method(), req.uri().path())))
    }
}

// ---------------------------------------------------------------------------------------------------
// Operator actions.
// ---------------------------------------------------------------------------------------------------

/// The header every action request must carry (any value): a browser sends it only from a script of
/// the same origin (a cross-site form cannot set it, and a cross-origin `fetch` with it needs a CORS
/// preflight nothing here answers).
pub const ACTION_HEADER: &str = "x-palisade-action";

/// Operator actions on the dashboard's stacks: `POST` with the action in the query string. From
/// [`Dashboard::actions`]; mount it on the admin listener only (the page finds it through
/// [`actions_url`](DashboardBuilder::actions_url)).
///
/// | query | does |
/// |---|---|
/// | `action=gate.set_level&stack=S&level=L` | [`GateHandle::set_level`](palisade_degrade::GateHandle::set_level)`(L, "dashboard")` |
/// | `action=gate.clear&stack=S` | hands the gate back to automatic mode |
/// | `action=breaker.force_open&stack=S` | [`BreakerHandle::force_open`](palisade_breaker::BreakerHandle::force_open) |
/// | `action=breaker.force_closed&stack=S` | [`BreakerHandle::force_closed`](palisade_breaker::BreakerHandle::force_closed) |
/// | `action=breaker.reset&stack=S` | [`BreakerHandle::reset`](palisade_breaker::BreakerHandle::reset) |
///
/// Every request needs the [`ACTION_HEADER`] header (else `403`). Answers `200` with
/// `{"ok":true,...}`, `400` for a malformed action, `404` for an unknown stack, `409` when the stack
/// lacks the layer, `405` for another method. Each action done is recorded in the stack's audit log
/// (`ops.action`), besides the layer's own record of the change.
#[derive(Debug, Clone)]
pub struct DashboardActions {
    dashboard: Dashboard,
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|p| p.split_once('=').or(Some((p, ""))))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .next_back()
}

fn action_error(status: StatusCode, msg: &str) -> Response<OpsBody> {
    json_response(status, json!({ "ok": false, "error": msg }).to_string())
}

impl DashboardActions {
    /// Performs the action a request's method, headers and query describe.
    pub fn respond(
        &self,
        method: &Method,
        headers: &http::HeaderMap,
        query: Option<&str>,
    ) -> Response<OpsBody> {
        if method != Method::POST {
            let mut res = action_error(StatusCode::METHOD_NOT_ALLOWED, "use POST");
            res.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST"));
            return res;
        }
        if !headers.contains_key(ACTION_HEADER) {
            return action_error(
                StatusCode::FORBIDDEN,
                "operator actions need the x-palisade-action header",
            );
        }
        let query = query.unwrap_or("");
        let Some(action) = query_param(query, "action") else {
            return action_error(StatusCode::BAD_REQUEST, "missing `action`");
        };
        let Some(stack) = query_param(query, "stack") else {
            return action_error(StatusCode::BAD_REQUEST, "missing `stack`");
        };
        let Some((_, handles)) = self.dashboard.inner.stacks.iter().find(|(n, _)| n == stack)
        else {
            return action_error(StatusCode::NOT_FOUND, "no such stack");
        };
        let done = self.perform(handles, action, query);
        match done {
            Ok(detail) => {
                handles.audit().record(
                    palisade_core::audit::AuditEvent::new("ops.action")
                        .detail("action", display_key(action))
                        .detail("stack", stack.to_owned())
                        .detail("via", "dashboard"),
                );
                let mut body = json!({ "ok": true, "action": action, "stack": stack });
                if let (Some(o), Value::Object(extra)) = (body.as_object_mut(), detail) {
                    o.extend(extra);
                }
                json_response(StatusCode::OK, body.to_string())
            }
            Err((status, msg)) => action_error(status, &msg),
        }
    }

    #[allow(unused_variables)]
    fn perform(
        &self,
        handles: &Handles,
        action: &str,
        query: &str,
    ) -> Result<Value, (StatusCode, String)> {
        let missing = |layer: &str| {
            Err((
                StatusCode::CONFLICT,
                format!("the stack has no {layer} (or the feature is off)"),
            ))
        };
        match action {
            "gate.set_level" | "gate.clear" => {
                #[cfg(feature = "degrade")]
                if let Some(g) = handles.gate() {
                    if action == "gate.clear" {
                        let was_manual = g.clear_manual("dashboard: back to automatic");
                        return Ok(
                            json!({ "was_manual": was_manual, "level": g.level().as_str() }),
                        );
                    }
                    let level: palisade_degrade::Level = query_param(query, "level")
                        .unwrap_or("")
                        .parse()
                        .map_err(|e: palisade_degrade::ParseError| {
                            (StatusCode::BAD_REQUEST, e.to_string())
                        })?;
                    let previous = g.set_level(level, "dashboard");
                    return Ok(json!({ "level": level.as_str(), "previous": previous.as_str() }));
                }
                missing("degradation gate")
            }
            "breaker.force_open" | "breaker.force_closed" | "breaker.reset" => {
                #[cfg(feature = "breaker")]
                if let Some(b) = handles.breaker() {
                    match action {
                        "breaker.force_open" => b.force_open(),
                        "breaker.force_closed" => b.force_closed(),
                        _ => b.reset(),
                    }
                    return Ok(json!({
                        "state": format!("{:?}", b.state()).to_lowercase(),
                        "mode": format!("{:?}", b.mode()).to_lowercase(),
                    }));
                }
                missing("circuit breaker")
            }
            _ => Err((
                StatusCode::BAD_REQUEST,
                "unknown `action`: use gate.set_level, gate.clear, breaker.force_open, \
                 breaker.force_closed or breaker.reset"
                    .to_owned(),
            )),
        }
    }
}

impl<B> Service<Request<B>> for DashboardActions {
    type Response = Response<OpsBody>;
    type Error = Infallible;
    type Future = Ready<Result<Response<OpsBody>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ready(Ok(self.respond(
            req.method(),
            req.headers(),
            req.uri().query(),
        )))
    }
}

#[cfg(test)]
mod tests;
