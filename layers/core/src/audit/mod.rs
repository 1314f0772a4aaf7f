//! The [`Audit`] handle: an append-only, tamper-evident log of every state change and remediation in
//! a palisade stack (breaker transitions, gate level changes, chaos injections, idempotency
//! conflicts, ...).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use palisade_core::audit::{verify, Audit, AuditEvent, AuditKey, MemorySink, VerifyErrorKind};
//!
//! let key = AuditKey::derive("acme.example 2026 palisade audit", b"material from your vault");
//! let ring = MemorySink::new(10_000);
//! let audit = Audit::builder().key(key.clone()).sink(ring.clone()).build()?;
//!
//! // On the request path: never blocks, never awaits.
//! audit.record(AuditEvent::new("breaker.opened").tenant("acme").detail("failures", 5));
//! audit.record(AuditEvent::new("breaker.half_open").tenant("acme"));
//!
//! // Off the request path: wait until the sink has acknowledged both, then keep the head elsewhere.
//! audit.flush().await?;
//! let head = audit.head().expect("two records appended");
//! assert_eq!(head.seq, 2);
//!
//! let mut log = ring.records();
//! assert_eq!(verify(&log, &key, Some(&head))?.records, 2);
//!
//! // Any edit is found, at the record that was edited.
//! log[0].tenant = Some("globex".into());
//! let err = verify(&log, &key, Some(&head)).unwrap_err();
//! assert_eq!((err.seq, err.kind), (1, VerifyErrorKind::Modified));
//! # Ok(())
//! # }
//! ```
//!
//! # The chain
//!
//! Layers submit [`AuditEvent`]s with [`Audit::record`], which puts them in a bounded queue and
//! returns. A single writer task takes them off the queue in batches, turns each into an
//! [`AuditRecord`] and hands the batch to the [`AuditSink`] in one call (group commit: a file sink
//! writes and syncs once per batch). Because only the writer numbers and hashes records, the chain is
//! strictly ordered:
//!
//! - `seq` is 1 for the first record of a log, then consecutive; after a restart the writer continues
//!   from the sink's [`head`](AuditSink::head).
//! - `prev` is the `hash` of the previous record (all zeros before the first).
//! - `checksum` is the unkeyed BLAKE3 hash of the record's canonical content.
//! - `hash` is BLAKE3 in keyed mode, with the [`AuditKey`], over the same canonical content — which
//!   includes `prev`, so each hash covers the whole history before it.
//!
//! The canonical content is a length-prefixed binary encoding (all integers little-endian `u64`,
//! see [`AuditRecord::canonical_content`]):
//!
//! ```text
//! "palisade.audit.v1\0" | seq | ts_ms | 0  or  1, len(tenant), tenant
//!                       | len(kind), kind | len(details), details as compact JSON | prev (32 bytes)
//! ```
//!
//! `details` is encoded with `serde_json::to_vec`, which is deterministic (object keys are sorted,
//! or kept in document order with serde_json's `preserve_order`), and a record read back from its
//! JSON form encodes to the same bytes: floats that would not survive the trip through this build
//! of serde_json are stored as their JSON text, in a string.
//!
//! Records serialize (serde) with the hashes as lowercase hex, so a JSON-lines file of records
//! deserializes to equal records that still verify.
//!
//! # Threat model
//!
//! The key is held by the process writing the log and by whoever verifies it, never by whoever can
//! edit where the log is stored (files, backups, log shipping). Against someone who can edit the
//! stored log but does not have the key, [`verify`] finds:
//!
//! - a changed record ([`Modified`](VerifyErrorKind::Modified) when the checksum was not fixed up,
//!   [`Forged`](VerifyErrorKind::Forged) when it was — only the keyed hash is security; the checksum
//!   tells accidental corruption and naive edits apart);
//! - an inserted or made-up record ([`Forged`](VerifyErrorKind::Forged));
//! - removed records in the middle ([`Removed`](VerifyErrorKind::Removed)), reordered records
//!   ([`Reordered`](VerifyErrorKind::Reordered)), and pieces of two chains written with the same key
//!   joined together ([`Spliced`](VerifyErrorKind::Spliced)).
//!
//! What the log alone cannot show:
//!
//! - **Records cut off the end.** A shorter log is still a valid chain. Keep the [`Head`]
//!   ([`Audit::head`]: sequence number and hash of the last record) somewhere the attacker cannot
//!   edit — another system, a ticket, a signed message — and pass it to [`verify`];
//!   [`Truncated`](VerifyErrorKind::Truncated) then says the log does not reach it.
//! - **Records cut off the front**, since a window of a log (a ring that evicted old records) is
//!   valid too. Use [`verify_from`] with [`Head::GENESIS`] or a kept anchor.
//! - **Anything done with the key.** Whoever holds it (the writing process, or someone who has taken
//!   it over) can write a whole new chain; only records before an externally kept head stay protected.
//!
//! `ts_ms` is the wall-clock time of the [`record`](Audit::record) call, for people; the order is
//! `seq`.
//!
//! # Never blocking
//!
//! [`Audit::record`] is a `try_send` into a bounded queue. When the queue is full the event is
//! dropped and counted; when the writer next takes a batch, it first appends an
//! [`audit.dropped`](DROPPED_KIND) record with `{"count": n}`, so the log says how many events are
//! missing and where. [`Audit::dropped_total`] counts every event that was not appended, for
//! metrics.
//!
//! What the writer acknowledges, a reader reads back: an event whose record could not be read
//! (details nested deeper than [`MAX_DETAILS_DEPTH`], or longer than [`MAX_RECORD_BYTES`]) is
//! refused by the writer, counted as dropped, and replaced by an [`audit.refused`](REFUSED_KIND)
//! record naming its kind and the reason.
//!
//! # Sinks
//!
//! [`MemorySink`] keeps the most recent records in memory. [`FileSink`] is the durable log: JSON
//! lines in rotated files, each batch synced with `fdatasync` before it is acknowledged, a torn tail
//! (never a complete line) cut off when it is reopened; [`verify_path`] checks it on disk, and [`cli_verify`] is the
//! `palisade_audit` command line tool around it.
//!
//! A sink error stops the writer (logged with `tracing::error!`); the handle then reports
//! [`failed`](Audit::failed), [`flush`](Audit::flush) returns the error, and `record` keeps
//! returning at once, counting the events as dropped. Nothing is retried.

mod cli;
mod file;
mod file_verify;
mod key;
mod record;
mod sink;
mod verify;

pub use cli::cli_verify;
pub use file::{FileSink, FileSinkBuilder, TornTail, DEFAULT_MAX_FILE_SIZE};
pub use file_verify::{verify_path, verify_path_from, PathReport, VerifyPathError};
pub use key::AuditKey;
pub use record::{AuditEvent, AuditRecord, Head, ParseHeadError};
pub use sink::{AuditSink, MemorySink};
pub use verify::{verify, verify_from, VerifyError, VerifyErrorKind, VerifyReport};

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::json;
use tokio::sync::{mpsc, oneshot};

/// The `kind` of the record the writer appends when events were dropped because the queue was full;
/// its details are `{"count": n}`.
pub const DROPPED_KIND: &str = "audit.dropped";

/// The `kind` of the record the writer appends instead of an event it refused because a reader could
/// not read it back (see [`MAX_DETAILS_DEPTH`] and [`MAX_RECORD_BYTES`]); its details are
/// `{"kind": <the event's kind, at most 256 bytes>, "reason": ...}` and it keeps the event's tenant.
pub const REFUSED_KIND: &str = "audit.refused";

/// The deepest nesting of arrays and objects an event's details may have (a bare value is 0, `{}`
/// is 1): 64. The JSON reader of [`verify_path`] and of [`FileSink`] recovery stops at 128 levels
/// for the whole line, so the writer refuses deeper events instead of acknowledging records that
/// could not be read back (see [`REFUSED_KIND`]).
pub const MAX_DETAILS_DEPTH: usize = 64;

/// The longest line of a record in a file log, newline included, that [`verify_path`] and
/// [`FileSink`] recovery read: 64 MiB. The writer refuses an event whose record could be longer
/// (see [`REFUSED_KIND`]).
pub const MAX_RECORD_BYTES: u64 = 64 * 1024 * 1024;

/// The largest [`queue_capacity`](AuditBuilder::queue_capacity): 1,048,576 events.
pub const MAX_QUEUE_CAPACITY: usize = 1 << 20;

/// The largest [`max_batch`](AuditBuilder::max_batch): 65,536 events.
pub const MAX_BATCH: usize = 1 << 16;

/// The longest [`commit_interval`](AuditBuilder::commit_interval): 1 second.
pub const MAX_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// Default [`queue_capacity`](AuditBuilder::queue_capacity).
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;

/// Default [`max_batch`](AuditBuilder::max_batch).
pub const DEFAULT_MAX_BATCH: usize = 256;

/// Handle to an audit log; a cheap `Clone` to share between layers.
///
/// Built with [`Audit::builder`], or [`Audit::memory`] for tests and demos; [`Audit::disabled`] (also
/// the `Default`) records nothing and costs a branch. See the [module docs](self) for the chain and
/// its guarantees.
#[derive(Clone, Default)]
pub struct Audit {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    key: AuditKey,
}

/// State shared by the handles and the writer task.
struct Shared {
    /// Events dropped on a full queue and not yet reported in an `audit.dropped` record.
    pending_dropped: AtomicU64,
    /// Every event that was not appended.
    dropped_total: AtomicU64,
    /// Records acknowledged by the sink.
    appended: AtomicU64,
    failed: AtomicBool,
    failure: Mutex<Option<AuditError>>,
    head: Mutex<Option<Head>>,
}

impl Shared {
    fn fail(&self, error: AuditError) {
        let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        failure.get_or_insert(error);
        self.failed.store(true, Ordering::Release);
    }

    fn failure(&self) -> Option<AuditError> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn head(&self) -> Option<Head> {
        *self.head.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

enum Msg {
    Event { event: AuditEvent, ts_ms: u64 },
    Flush(oneshot::Sender<Result<(), AuditError>>),
}

impl Audit {
    /// A builder; [`key`](AuditBuilder::key) and [`sink`](AuditBuilder::sink) are required.
    pub fn builder() -> AuditBuilder {
        AuditBuilder::default()
    }

    /// An `Audit` that records nothing: [`record`](Self::record) returns at once, [`flush`](Self::flush)
    /// succeeds, [`head`](Self::head) is `None`. The default for layers that were not given one.
    pub fn disabled() -> Self {
        Audit { inner: None }
    }

    /// An `Audit` writing to a new in-memory ring of `capacity` records, with a fresh random key
    /// (verify with [`Audit::verify`]), and the ring's reader. For tests and demos.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime; use the [builder](Self::builder) to get an error instead.
    pub fn memory(capacity: usize) -> (Audit, MemorySink) {
        Self::memory_with_key(AuditKey::generate(), capacity)
    }

    /// Like [`memory`](Self::memory), with a given key (so that [`verify`] can be called with it).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime; use the [builder](Self::builder) to get an error instead.
    pub fn memory_with_key(key: AuditKey, capacity: usize) -> (Audit, MemorySink) {
        let ring = MemorySink::new(capacity);
        let audit = Audit::builder()
            .key(key)
            .sink(ring.clone())
            .build()
            .unwrap_or_else(|e| panic!("Audit::memory: {e}"));
        (audit, ring)
    }

    /// Whether this handle records anything (false for [`disabled`](Self::disabled)).
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Submits an event. Never blocks or awaits: the event goes into a bounded queue, or, when the
    /// queue is full or the writer has stopped, is dropped and counted (see
    /// [`dropped_total`](Self::dropped_total)).
    ///
    /// The writer refuses an event whose record a reader could not read back (details nested
    /// deeper than [`MAX_DETAILS_DEPTH`], or a record longer than [`MAX_RECORD_BYTES`]): it
    /// appends an [`audit.refused`](REFUSED_KIND) record in its place, naming the event's kind and
    /// why, and counts the event in [`dropped_total`](Self::dropped_total).
    pub fn record(&self, event: AuditEvent) {
        let Some(inner) = &self.inner else { return };
        inner.record(event);
    }

    /// Like [`record`](Self::record), but builds the event only when it can be queued (the handle is
    /// enabled and has not failed), sparing the allocations otherwise.
    pub fn record_with(&self, event: impl FnOnce() -> AuditEvent) {
        let Some(inner) = &self.inner else { return };
        if inner.shared.failed.load(Ordering::Relaxed) {
            inner.shared.dropped_total.fetch_add(1, Ordering::Relaxed);
            return;
        }
        inner.record(event());
    }

    /// Resolves once every event recorded before this call has been appended and acknowledged by the
    /// sink (or counted as dropped, then reported in an [`audit.dropped`](DROPPED_KIND) record).
    ///
    /// Waits for room in the queue, so call it off the request path.
    ///
    /// # Errors
    ///
    /// The sink failed or the writer stopped (see [`failure`](Self::failure)).
    pub async fn flush(&self) -> Result<(), AuditError> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        if let Some(e) = inner.shared.failure() {
            return Err(e);
        }
        let stopped = || inner.shared.failure().unwrap_or(AuditError::WriterStopped);
        let (tx, rx) = oneshot::channel();
        if inner.tx.send(Msg::Flush(tx)).await.is_err() {
            return Err(stopped());
        }
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Sequence number and hash of the last record the sink acknowledged (or the sink's head when
    /// nothing was appended yet). Keep it outside the log to detect truncation (see [`verify`]).
    pub fn head(&self) -> Option<Head> {
        self.inner.as_ref().and_then(|i| i.shared.head())
    }

    /// Events that were not appended: dropped on a full queue, submitted after the writer stopped, or
    /// lost in a failed batch. Monotonic, for metrics.
    pub fn dropped_total(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |i| i.shared.dropped_total.load(Ordering::Relaxed))
    }

    /// Records the sink has acknowledged through this handle, including `audit.dropped` records.
    pub fn appended_total(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |i| i.shared.appended.load(Ordering::Relaxed))
    }

    /// Whether the writer has stopped because the sink failed (or the writer panicked or lost its
    /// runtime). A failed `Audit` stays failed; build a new one.
    pub fn failed(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|i| i.shared.failed.load(Ordering::Acquire))
    }

    /// Why the writer stopped, if it did.
    pub fn failure(&self) -> Option<AuditError> {
        self.inner.as_ref().and_then(|i| i.shared.failure())
    }

    /// [`verify`] with this handle's key, which cannot be read out of it (useful with the random key of
    /// [`Audit::memory`], or for an admin endpoint that checks the log).
    ///
    /// A [`disabled`](Self::disabled) handle has no key: every log with a record fails as
    /// [`Forged`](VerifyErrorKind::Forged).
    ///
    /// # Errors
    ///
    /// The first bad record, as [`verify`].
    pub fn verify<'a>(
        &self,
        records: impl IntoIterator<Item = &'a AuditRecord>,
        expected_head: Option<&Head>,
    ) -> Result<VerifyReport, VerifyError> {
        verify::walk(
            None,
            records,
            self.inner.as_ref().map(|i| &i.key),
            expected_head,
        )
    }
}

impl Inner {
    fn record(&self, event: AuditEvent) {
        let shared = &self.shared;
        if shared.failed.load(Ordering::Relaxed) {
            shared.dropped_total.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let msg = Msg::Event {
            event,
            ts_ms: crate::time::unix_ms(),
        };
        match self.tx.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Relaxed is enough: a later `flush` from this task, or one ordered after it by a
                // join or a lock, reaches the writer through the channel, which orders this
                // increment before the writer's swap.
                shared.pending_dropped.fetch_add(1, Ordering::Relaxed);
                shared.dropped_total.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                shared.dropped_total.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl fmt::Debug for Audit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            None => f.write_str("Audit(disabled)"),
            Some(inner) => f
                .debug_struct("Audit")
                .field("key", &inner.key)
                .field("head", &inner.shared.head())
                .field(
                    "dropped_total",
                    &inner.shared.dropped_total.load(Ordering::Relaxed),
                )
                .field("failure", &inner.shared.failure())
                .finish(),
        }
    }
}

/// Why an [`Audit`] stopped appending.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AuditError {
    /// The sink returned this error; the batch was not acknowledged and the writer stopped.
    Sink(Arc<io::Error>),
    /// The writer task ended without a sink error: the sink panicked, or the tokio runtime it ran on
    /// shut down.
    WriterStopped,
}

impl fmt::Display for AuditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuditError::Sink(e) => write!(f, "audit sink failed, audit log stopped: {e}"),
            AuditError::WriterStopped => f.write_str(
                "audit writer stopped (sink panicked or runtime shut down), audit log stopped",
            ),
        }
    }
}

impl std::error::Error for AuditError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AuditError::Sink(e) => Some(&**e),
            AuditError::WriterStopped => None,
        }
    }
}

/// Why [`AuditBuilder::build`] could not build an [`Audit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    /// `build` was called outside a tokio runtime: the writer task needs one.
    NoRuntime,
    /// No [`key`](AuditBuilder::key) was given.
    MissingKey,
    /// No [`sink`](AuditBuilder::sink) was given.
    MissingSink,
    /// [`queue_capacity`](AuditBuilder::queue_capacity) or [`max_batch`](AuditBuilder::max_batch)
    /// was 0.
    ZeroCapacity,
    /// A setting is above its documented maximum: `queue_capacity` ([`MAX_QUEUE_CAPACITY`]),
    /// `max_batch` ([`MAX_BATCH`]) or `commit_interval` ([`MAX_COMMIT_INTERVAL`]).
    AboveMaximum {
        /// The setting, e.g. `"queue_capacity"`.
        setting: &'static str,
    },
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let BuildError::AboveMaximum { setting } = self {
            let max = match *setting {
                "queue_capacity" => MAX_QUEUE_CAPACITY.to_string(),
                "max_batch" => MAX_BATCH.to_string(),
                _ => format!("{MAX_COMMIT_INTERVAL:?}"),
            };
            return write!(f, "Audit::build: {setting} is above its maximum of {max}");
        }
        f.write_str(match self {
            BuildError::NoRuntime => {
                "Audit::build must be called inside a tokio runtime (it spawns the writer task)"
            }
            BuildError::MissingKey => "Audit::build: no key given (AuditBuilder::key)",
            BuildError::MissingSink => "Audit::build: no sink given (AuditBuilder::sink)",
            BuildError::ZeroCapacity => {
                "Audit::build: queue_capacity and max_batch must be at least 1"
            }
            BuildError::AboveMaximum { .. } => unreachable!("written above"),
        })
    }
}

impl std::error::Error for BuildError {}

/// Builder of an [`Audit`], from [`Audit::builder`].
pub struct AuditBuilder {
    key: Option<AuditKey>,
    sink: Option<Box<dyn AuditSink>>,
    queue_capacity: usize,
    max_batch: usize,
    commit_interval: Duration,
}

impl Default for AuditBuilder {
    fn default() -> Self {
        AuditBuilder {
            key: None,
            sink: None,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            max_batch: DEFAULT_MAX_BATCH,
            commit_interval: Duration::ZERO,
        }
    }
}

impl fmt::Debug for AuditBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditBuilder")
            .field("key", &self.key)
            .field("sink", &self.sink.as_ref().map(|_| "dyn AuditSink"))
            .field("queue_capacity", &self.queue_capacity)
            .field("max_batch", &self.max_batch)
            .field("commit_interval", &self.commit_interval)
            .finish()
    }
}

impl AuditBuilder {
    /// The key of the hash chain (required).
    #[must_use]
    pub fn key(mut self, key: AuditKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Where records go (required). The chain continues from its [`head`](AuditSink::head).
    #[must_use]
    pub fn sink(mut self, sink: impl AuditSink) -> Self {
        self.sink = Some(Box::new(sink));
        self
    }

    /// How many events may wait for the writer before [`record`](Audit::record) drops them
    /// (default [`DEFAULT_QUEUE_CAPACITY`], from 1 to [`MAX_QUEUE_CAPACITY`]).
    #[must_use]
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity;
        self
    }

    /// The most events the writer hands to the sink in one [`append`](AuditSink::append) (default
    /// [`DEFAULT_MAX_BATCH`], from 1 to [`MAX_BATCH`]; one more when an `audit.dropped` record leads
    /// the batch).
    #[must_use]
    pub fn max_batch(mut self, max: usize) -> Self {
        self.max_batch = max;
        self
    }

    /// How long the writer waits to gather a fuller batch before handing it to the sink (default
    /// zero: no waiting; at most [`MAX_COMMIT_INTERVAL`]).
    ///
    /// With zero, a batch is whatever queued up while the previous batch was being written and
    /// synced, which already amortizes a file sink's `fsync` under load. A non-zero interval trades
    /// latency for fewer, larger commits at low rates: after the first event of a batch arrives, the
    /// writer keeps collecting for up to this long, until [`max_batch`](Self::max_batch) events
    /// are collected or a [`flush`](Audit::flush) asks for them. The wait uses `tokio::time`, so a
    /// non-zero interval needs a runtime with the time driver enabled.
    #[must_use]
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }

    /// Builds the handle and spawns its writer task on the current tokio runtime.
    ///
    /// The writer runs until every clone of the handle is dropped (it then appends what is queued and
    /// ends), the sink fails, or the runtime shuts down.
    ///
    /// # Errors
    ///
    /// Outside a tokio runtime ([`BuildError::NoRuntime`]), without a key or a sink, with a zero
    /// capacity, or with a setting above its maximum ([`BuildError::AboveMaximum`]).
    pub fn build(self) -> Result<Audit, BuildError> {
        let key = self.key.ok_or(BuildError::MissingKey)?;
        let sink = self.sink.ok_or(BuildError::MissingSink)?;
        if self.queue_capacity == 0 || self.max_batch == 0 {
            return Err(BuildError::ZeroCapacity);
        }
        for (setting, above) in [
            ("queue_capacity", self.queue_capacity > MAX_QUEUE_CAPACITY),
            ("max_batch", self.max_batch > MAX_BATCH),
            (
                "commit_interval",
                self.commit_interval > MAX_COMMIT_INTERVAL,
            ),
        ] {
            if above {
                return Err(BuildError::AboveMaximum { setting });
            }
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let head = sink.head();
        let shared = Arc::new(Shared {
            pending_dropped: AtomicU64::new(0),
            dropped_total: AtomicU64::new(0),
            appended: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            head: Mutex::new(head),
        });
        let (tx, rx) = mpsc::channel(self.queue_capacity);
        let writer = Writer {
            rx,
            sink: Some(sink),
            shared: Arc::clone(&shared),
            key: key.clone(),
            max_batch: self.max_batch,
            commit_interval: self.commit_interval,
            next: head.unwrap_or(Head::GENESIS),
            done: false,
        };
        runtime.spawn(writer.run());
        Ok(Audit {
            inner: Some(Arc::new(Inner { tx, shared, key })),
        })
    }
}

/// Why a reader could not read back the record of `event`, if it could not: its details nest
/// deeper than [`MAX_DETAILS_DEPTH`], or its line could be longer than [`MAX_RECORD_BYTES`].
fn unreadable(event: &AuditEvent) -> Option<String> {
    unreadable_within(event, MAX_RECORD_BYTES)
}

fn unreadable_within(event: &AuditEvent, max_line: u64) -> Option<String> {
    fn too_deep(value: &serde_json::Value, room: usize) -> bool {
        match value {
            serde_json::Value::Array(items) => {
                room == 0 || items.iter().any(|v| too_deep(v, room - 1))
            }
            serde_json::Value::Object(map) => {
                room == 0 || map.values().any(|v| too_deep(v, room - 1))
            }
            _ => false,
        }
    }
    if too_deep(&event.details, MAX_DETAILS_DEPTH) {
        return Some(format!(
            "details nest deeper than {MAX_DETAILS_DEPTH} levels"
        ));
    }
    /// Counts bytes, refusing more than the limit (so a huge value is not serialized whole).
    struct Count {
        n: u64,
        max: u64,
    }
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.n += buf.len() as u64;
            if self.n > self.max {
                return Err(io::Error::other("too long"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    // The line is the details as compact JSON, the kind and tenant as JSON strings (at most 6
    // bytes per byte escaped), three hashes in hex, two numbers and the field names.
    const FIXED: u64 = 512;
    let strings = 6 * (event.kind.len() + event.tenant.as_ref().map_or(0, String::len)) as u64;
    let budget = max_line.saturating_sub(FIXED + strings);
    let mut count = Count { n: 0, max: budget };
    if budget == 0 || serde_json::to_writer(&mut count, &event.details).is_err() {
        return Some(format!(
            "its record could be longer than {max_line} bytes, the longest line a reader reads"
        ));
    }
    None
}

/// What the writer appends instead of an event it refused: an [`REFUSED_KIND`] record.
fn refusal(event: AuditEvent, reason: String) -> (Option<String>, String, serde_json::Value) {
    tracing::warn!(
        kind = %event.kind,
        %reason,
        "audit event refused: a reader could not read it back; recorded as {REFUSED_KIND}"
    );
    let mut kind = event.kind.into_owned();
    if kind.len() > 256 {
        let mut end = 256;
        while !kind.is_char_boundary(end) {
            end -= 1;
        }
        kind.truncate(end);
    }
    let tenant = event.tenant.filter(|t| t.len() <= 1024);
    (
        tenant,
        REFUSED_KIND.to_owned(),
        json!({ "kind": kind, "reason": reason }),
    )
}

/// The single writer task: numbers, hashes and appends records.
struct Writer {
    rx: mpsc::Receiver<Msg>,
    /// `None` only after a blocking sink panicked.
    sink: Option<Box<dyn AuditSink>>,
    shared: Arc<Shared>,
    key: AuditKey,
    max_batch: usize,
    /// How long to keep gathering a batch after its first message ([`AuditBuilder::commit_interval`]).
    commit_interval: Duration,
    /// Head of the last sealed record: the next gets `seq + 1` and `prev = hash`.
    next: Head,
    /// Set when the writer ends on purpose; otherwise `Drop` marks the handle failed.
    done: bool,
}

impl Writer {
    async fn run(mut self) {
        let mut msgs = Vec::with_capacity(self.max_batch);
        loop {
            msgs.clear();
            if self.rx.recv_many(&mut msgs, self.max_batch).await == 0 {
                // Every handle is gone and the queue is empty.
                self.done = true;
                return;
            }
            self.gather(&mut msgs).await;
            let mut records = Vec::with_capacity(msgs.len() + 1);
            let mut waiters = Vec::new();
            let dropped = self.shared.pending_dropped.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                tracing::warn!(
                    count = dropped,
                    "audit queue was full: events dropped; recorded as {DROPPED_KIND}"
                );
                let record = self.seal(
                    crate::time::unix_ms(),
                    None,
                    DROPPED_KIND.to_owned(),
                    json!({ "count": dropped }),
                );
                records.push(record);
            }
            let mut refused = 0;
            for msg in msgs.drain(..) {
                match msg {
                    Msg::Event { event, ts_ms } => {
                        let (tenant, kind, details) = match unreadable(&event) {
                            None => (event.tenant, event.kind.into_owned(), event.details),
                            Some(reason) => {
                                refused += 1;
                                refusal(event, reason)
                            }
                        };
                        records.push(self.seal(ts_ms, tenant, kind, details));
                    }
                    Msg::Flush(tx) => waiters.push(tx),
                }
            }
            if refused > 0 {
                self.shared
                    .dropped_total
                    .fetch_add(refused, Ordering::Relaxed);
            }
            let result = match records.last() {
                None => Ok(()),
                Some(last) => {
                    let head = last.head();
                    let count = records.len() as u64;
                    let events = count - u64::from(dropped > 0) - refused;
                    match self.append(records).await {
                        Ok(()) => {
                            *self
                                .shared
                                .head
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner) = Some(head);
                            self.shared.appended.fetch_add(count, Ordering::Relaxed);
                            Ok(())
                        }
                        Err(error) => {
                            tracing::error!(
                                %error,
                                first_seq = head.seq + 1 - count,
                                last_seq = head.seq,
                                "audit sink failed; the audit log is stopped and further events are dropped"
                            );
                            self.shared
                                .dropped_total
                                .fetch_add(events, Ordering::Relaxed);
                            let error = AuditError::Sink(Arc::new(error));
                            self.shared.fail(error.clone());
                            Err(error)
                        }
                    }
                }
            };
            for tx in waiters {
                let _ = tx.send(result.clone());
            }
            if let Err(error) = result {
                self.stop(error);
                return;
            }
        }
    }

    /// Keeps collecting messages for up to `commit_interval` after the first, until the batch is full,
    /// a flush is waiting or the queue is closed.
    async fn gather(&mut self, msgs: &mut Vec<Msg>) {
        if self.commit_interval.is_zero() {
            return;
        }
        let now = tokio::time::Instant::now();
        // At most `MAX_COMMIT_INTERVAL` (checked in `build`).
        let deadline = now + self.commit_interval;
        let mut seen = 0;
        while msgs.len() < self.max_batch {
            if msgs[seen..].iter().any(|m| matches!(m, Msg::Flush(_))) {
                break;
            }
            seen = msgs.len();
            let room = self.max_batch - msgs.len();
            // `recv_many` is cancel safe: a timeout loses no message.
            match tokio::time::timeout_at(deadline, self.rx.recv_many(msgs, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    fn seal(
        &mut self,
        ts_ms: u64,
        tenant: Option<String>,
        kind: String,
        details: serde_json::Value,
    ) -> AuditRecord {
        let record = AuditRecord::seal(
            self.next.seq + 1,
            ts_ms,
            tenant,
            kind,
            details,
            self.next.hash,
            &self.key,
        );
        self.next = record.head();
        record
    }

    /// Hands a batch to the sink, on the blocking pool unless the sink says it never blocks.
    async fn append(&mut self, records: Vec<AuditRecord>) -> io::Result<()> {
        let Some(mut sink) = self.sink.take() else {
            return Err(io::Error::other("audit sink is gone"));
        };
        if !sink.is_blocking() {
            let result = sink.append(&records);
            self.sink = Some(sink);
            return result;
        }
        let task = tokio::task::spawn_blocking(move || {
            let result = sink.append(&records);
            (sink, result)
        });
        match task.await {
            Ok((sink, result)) => {
                self.sink = Some(sink);
                result
            }
            Err(join) => Err(io::Error::other(format!("audit sink panicked: {join}"))),
        }
    }

    /// Stops after a sink failure: refuses further events and fails everything already queued.
    fn stop(&mut self, error: AuditError) {
        self.rx.close();
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                Msg::Event { .. } => {
                    self.shared.dropped_total.fetch_add(1, Ordering::Relaxed);
                }
                Msg::Flush(tx) => {
                    let _ = tx.send(Err(error.clone()));
                }
            }
        }
        self.done = true;
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // The task was cancelled (runtime shutdown) or panicked (a non-blocking sink panicked).
        let queued = self.rx.len();
        if std::thread::panicking() {
            tracing::error!(
                queued,
                "audit writer panicked; the audit log is stopped and further events are dropped"
            );
        } else if queued > 0 {
            tracing::warn!(
                queued,
                "audit writer stopped with its runtime; queued audit events were not appended"
            );
        }
        self.shared
            .dropped_total
            .fetch_add(queued as u64, Ordering::Relaxed);
        self.shared.fail(AuditError::WriterStopped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_outside_runtime_is_an_error() {
        let err = Audit::builder()
            .key(AuditKey::generate())
            .sink(MemorySink::new(1))
            .build()
            .unwrap_err();
        assert_eq!(err, BuildError::NoRuntime);
        assert!(err.to_string().contains("tokio runtime"));
    }

    #[tokio::test]
    async fn build_requires_key_sink_and_capacity() {
        let no_key = Audit::builder().sink(MemorySink::new(1)).build();
        assert_eq!(no_key.unwrap_err(), BuildError::MissingKey);
        let no_sink = Audit::builder().key(AuditKey::generate()).build();
        assert_eq!(no_sink.unwrap_err(), BuildError::MissingSink);
        let zero = Audit::builder()
            .key(AuditKey::generate())
            .sink(MemorySink::new(1))
            .queue_capacity(0)
            .build();
        assert_eq!(zero.unwrap_err(), BuildError::ZeroCapacity);
    }

    #[test]
    fn records_longer_than_the_reader_reads_are_refused() {
        let event = AuditEvent::new("x").detail("blob", "y".repeat(2000));
        assert_eq!(unreadable_within(&event, 4096), None);
        let reason = unreadable_within(&event, 2048).expect("too long");
        assert!(reason.contains("longer than 2048 bytes"), "{reason}");
        // Kind and tenant count at their worst-case escaped length.
        let event = AuditEvent::new("k".repeat(1000)).tenant("t".repeat(1000));
        assert!(unreadable_within(&event, 8192).is_some());
        assert!(unreadable_within(&event, 16_384).is_none());
        let (tenant, kind, details) = refusal(
            AuditEvent::new("é".repeat(200)).tenant("acme"),
            "why".to_owned(),
        );
        assert_eq!(
            (tenant.as_deref(), kind.as_str()),
            (Some("acme"), REFUSED_KIND)
        );
        assert!(details["kind"].as_str().unwrap().len() <= 256);
    }

    #[tokio::test]
    async fn disabled_records_nothing() {
        let audit = Audit::disabled();
        assert!(!audit.is_enabled());
        audit.record(AuditEvent::new("x"));
        audit.record_with(|| unreachable!("disabled audit must not build events"));
        audit.flush().await.unwrap();
        assert_eq!(audit.head(), None);
        assert_eq!(audit.dropped_total(), 0);
        assert!(!audit.failed());
        assert_eq!(format!("{audit:?}"), "Audit(disabled)");
        assert!(audit.verify([], None).is_ok());
    }

    #[tokio::test]
    async fn writer_ends_when_handles_are_dropped() {
        let (audit, ring) = Audit::memory(10);
        audit.record(AuditEvent::new("a"));
        audit.record(AuditEvent::new("b"));
        drop(audit);
        // The writer drains the queue before it ends; wait for it without sleeping.
        for _ in 0..1000 {
            if ring.len() == 2 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(ring.len(), 2);
    }
}
