//! The stale-if-error store: the last good `GET` response per key, bounded in entries, bytes and age.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode, Version};
use tokio::time::Instant;

use crate::body::Collect;

/// The `Warning` header value on a stale response (RFC 7234 warn-code 110).
pub const STALE_WARNING: &str = "110 - \"Response is Stale\"";

/// The marker header set to `true` on a stale response.
pub const STALE_HEADER: HeaderName = HeaderName::from_static("x-palisade-stale");

/// Computes the stale-store key of a `GET` request; `None` means "neither store nor serve".
///
/// Implemented by [`DefaultKey`] and by every `Fn(&http::request::Parts) -> Option<String>`.
pub trait StaleKey: Send + Sync + 'static {
    /// The key of this request, or `None` to leave it out of the store.
    fn key(&self, parts: &Parts) -> Option<String>;
}

/// The default key: `GET` plus path and query (`"GET /items?page=2"`).
///
/// Requests carrying `Authorization` or `Cookie` get no key — they are neither stored nor served from
/// the store — so one user's response is never replayed to another. Use a
/// [key function](StaleIfError::key_fn) that includes the user (or tenant) to cache those.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultKey;

impl StaleKey for DefaultKey {
    fn key(&self, parts: &Parts) -> Option<String> {
        if parts.headers.contains_key(header::AUTHORIZATION)
            || parts.headers.contains_key(header::COOKIE)
        {
            return None;
        }
        let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut key = String::with_capacity(pq.len() + 4);
        key.push_str(parts.method.as_str());
        key.push(' ');
        key.push_str(pq);
        Some(key)
    }
}

impl<F> StaleKey for F
where
    F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
{
    fn key(&self, parts: &Parts) -> Option<String> {
        self(parts)
    }
}

/// The largest [`max_entries`](StaleIfError::max_entries) `build()` accepts: 1,000,000.
pub const MAX_STALE_ENTRIES: usize = 1_000_000;

/// The largest [`max_bytes`](StaleIfError::max_bytes) `build()` accepts: 1 GiB.
pub const MAX_STALE_BYTES: usize = 1 << 30;

/// The largest [`max_entry_bytes`](StaleIfError::max_entry_bytes) `build()` accepts: 16 MiB (every
/// successful `GET` response in flight may hold a copy this large while it streams).
pub const MAX_STALE_ENTRY_BYTES: usize = 16 << 20;

/// Configuration of the stale-if-error kind: serve the last good response to the same `GET`.
///
/// Defaults: 1 024 entries, 16 MiB in all, 256 KiB per response, served up to 5 minutes after it was
/// stored; key [`DefaultKey`]. At most [`MAX_STALE_ENTRIES`] entries, [`MAX_STALE_BYTES`] in all and
/// [`MAX_STALE_ENTRY_BYTES`] per response: `build()` refuses more.
///
/// **Cost.** Every `GET` computes its key (the default allocates one `String`), and every successful
/// `GET` response that may be stored has its head cloned and its body copied into memory as it streams
/// (a single-chunk body is shared, not copied), then inserted under a mutex at the end of the body. A
/// response is stored only when its status is 2xx (not 206), its body ends within the per-entry limit
/// without trailers or errors, and it has no `Cache-Control: no-store`/`private`, no `Set-Cookie` and
/// no `Vary: *`. Non-`GET` requests cost nothing more than the static kind.
///
/// ```
/// use palisade_fallback::StaleIfError;
/// use std::time::Duration;
///
/// let stale = StaleIfError::new()
///     .max_entries(10_000)
///     .max_bytes(64 << 20)
///     .max_entry_bytes(1 << 20)
///     .max_age(Duration::from_secs(600))
///     // One entry per tenant and path:
///     .key_fn(|parts: &http::request::Parts| {
///         let tenant = parts.headers.get("x-tenant-id")?.to_str().ok()?;
///         Some(format!("{tenant} {}", parts.uri))
///     });
/// # let _ = stale;
/// ```
#[derive(Debug, Clone)]
pub struct StaleIfError<K = DefaultKey> {
    pub(crate) max_entries: usize,
    pub(crate) max_bytes: usize,
    pub(crate) max_entry_bytes: usize,
    pub(crate) max_age: Duration,
    pub(crate) key: K,
}

impl Default for StaleIfError {
    fn default() -> Self {
        StaleIfError {
            max_entries: 1024,
            max_bytes: 16 << 20,
            max_entry_bytes: 256 << 10,
            max_age: Duration::from_secs(300),
            key: DefaultKey,
        }
    }
}

impl StaleIfError {
    /// The defaults above.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<K> StaleIfError<K> {
    /// At most `n` responses are kept (at most [`MAX_STALE_ENTRIES`]); the oldest is evicted first.
    pub fn max_entries(mut self, n: usize) -> Self {
        self.max_entries = n;
        self
    }

    /// At most `bytes` are kept in all (bodies, headers and keys; at most [`MAX_STALE_BYTES`]); the
    /// oldest entries are evicted first.
    pub fn max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// A response whose body is larger than `bytes` (at most [`MAX_STALE_ENTRY_BYTES`]) is not stored
    /// (it streams through untouched once over; what was copied is dropped).
    pub fn max_entry_bytes(mut self, bytes: usize) -> Self {
        self.max_entry_bytes = bytes;
        self
    }

    /// A stored response older than `age` is not served (and is dropped when found).
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }

    /// Keys the store with `key` instead of [`DefaultKey`] (e.g. to add a tenant or user).
    pub fn key_fn<K2: StaleKey>(self, key: K2) -> StaleIfError<K2> {
        StaleIfError {
            max_entries: self.max_entries,
            max_bytes: self.max_bytes,
            max_entry_bytes: self.max_entry_bytes,
            max_age: self.max_age,
            key,
        }
    }
}

struct Entry {
    seq: u64,
    stored_at: Instant,
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
    size: usize,
}

#[derive(Default)]
struct Entries {
    map: HashMap<Arc<str>, Entry>,
    order: BTreeMap<u64, Arc<str>>,
    next_seq: u64,
    bytes: usize,
}

impl Entries {
    fn remove(&mut self, key: &str) -> Option<Entry> {
        let e = self.map.remove(key)?;
        self.order.remove(&e.seq);
        self.bytes -= e.size;
        Some(e)
    }

    fn evict_oldest(&mut self) {
        if let Some((_, key)) = self.order.pop_first() {
            if let Some(e) = self.map.remove(&key) {
                self.bytes -= e.size;
            }
        }
    }
}

/// The store shared by a stale-if-error layer, its services, response bodies and handle.
pub(crate) struct Store {
    entries: Mutex<Entries>,
    pub(crate) max_entries: usize,
    pub(crate) max_bytes: usize,
    pub(crate) max_entry_bytes: usize,
    pub(crate) max_age: Duration,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (len, bytes) = self.usage();
        f.debug_struct("Store")
            .field("entries", &len)
            .field("bytes", &bytes)
            .field("max_entries", &self.max_entries)
            .field("max_bytes", &self.max_bytes)
            .field("max_age", &self.max_age)
            .finish()
    }
}

fn headers_size(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 32)
        .sum()
}

/// Whether a successful response may be stored (see [`StaleIfError`]).
pub(crate) fn storable(status: StatusCode, headers: &HeaderMap) -> bool {
    if !status.is_success() || status == StatusCode::PARTIAL_CONTENT {
        return false;
    }
    if headers.contains_key(header::SET_COOKIE) {
        return false;
    }
    let has = |name: HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',').any(|t| {
                    t.trim()
                        .split('=')
                        .next()
                        .unwrap_or("")
                        .eq_ignore_ascii_case(token)
                })
            })
        })
    };
    !(has(header::CACHE_CONTROL, "no-store")
        || has(header::CACHE_CONTROL, "private")
        || has(header::VARY, "*"))
}

impl Store {
    pub(crate) fn new<K>(config: &StaleIfError<K>) -> Self {
        Store {
            entries: Mutex::new(Entries::default()),
            max_entries: config.max_entries,
            max_bytes: config.max_bytes,
            max_entry_bytes: config.max_entry_bytes,
            max_age: config.max_age,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// (entries, bytes) held now.
    pub(crate) fn usage(&self) -> (usize, usize) {
        let e = self.lock();
        (e.map.len(), e.bytes)
    }

    pub(crate) fn clear(&self) {
        *self.lock() = Entries::default();
    }

    /// Stores a response; returns whether it was kept.
    pub(crate) fn insert(
        &self,
        key: String,
        status: StatusCode,
        version: Version,
        headers: HeaderMap,
        body: Bytes,
    ) -> bool {
        let size = key.len() + body.len() + headers_size(&headers);
        if size > self.max_bytes || body.len() > self.max_entry_bytes || self.max_entries == 0 {
            return false;
        }
        let key: Arc<str> = Arc::from(key);
        let mut e = self.lock();
        e.remove(&key);
        while e.map.len() >= self.max_entries || e.bytes + size > self.max_bytes {
            if e.map.is_empty() {
                return false;
            }
            e.evict_oldest();
        }
        let seq = e.next_seq;
        e.next_seq += 1;
        e.order.insert(seq, key.clone());
        e.bytes += size;
        e.map.insert(
            key,
            Entry {
                seq,
                stored_at: Instant::now(),
                status,
                version,
                headers,
                body,
                size,
            },
        );
        true
    }

    /// The stored response for `key`, marked stale, if there is one younger than `max_age`.
    pub(crate) fn lookup(&self, key: &str) -> Option<Response<Bytes>> {
        let now = Instant::now();
        let mut e = self.lock();
        let entry = e.map.get(key)?;
        let age = now.saturating_duration_since(entry.stored_at);
        if age > self.max_age {
            e.remove(key);
            return None;
        }
        let mut res = Response::new(entry.body.clone());
        *res.status_mut() = entry.status;
        *res.version_mut() = entry.version;
        let mut headers = entry.headers.clone();
        drop(e);
        headers.insert(header::AGE, HeaderValue::from(age.as_secs()));
        headers.append(header::WARNING, HeaderValue::from_static(STALE_WARNING));
        headers.insert(STALE_HEADER, HeaderValue::from_static("true"));
        *res.headers_mut() = headers;
        Some(res)
    }
}

/// Copies a successful `GET` response's body as it streams, and stores it at the end.
pub(crate) struct Recorder {
    pub(crate) store: Arc<Store>,
    pub(crate) key: String,
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) collect: Collect,
}

impl Recorder {
    /// Adds a data chunk; `false` when the body went over the per-entry limit (stop recording).
    pub(crate) fn push(&mut self, data: &Bytes) -> bool {
        if self.collect.len() + data.len() > self.store.max_entry_bytes {
            return false;
        }
        self.collect.push(data.clone());
        true
    }

    /// The body ended cleanly: store the response.
    pub(crate) fn finish(self: Box<Self>) {
        let Recorder {
            store,
            key,
            status,
            version,
            headers,
            collect,
        } = *self;
        store.insert(key, status, version, headers, collect.into_bytes());
    }
}
