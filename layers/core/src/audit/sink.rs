//! Where records go: the [`AuditSink`] trait and the in-memory ring [`MemorySink`].

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::record::{AuditRecord, Head};

/// Storage for audit records, driven by the writer task of an [`Audit`](super::Audit).
///
/// The writer hands over records in batches (group commit): everything that queued up while the
/// previous batch was being written goes in one [`append`](Self::append) call, so a file sink can
/// `write` and `fsync` once per batch. The trait is synchronous on purpose: a durable sink does
/// blocking I/O, and the writer runs [`append`](Self::append) on tokio's blocking pool
/// (`spawn_blocking`) unless [`is_blocking`](Self::is_blocking) says it never blocks. Either way it is
/// off the request path: [`Audit::record`](super::Audit::record) only enqueues.
///
/// One sink belongs to one `Audit` at a time: two writers on the same storage would fork the chain.
///
/// # Errors are fatal
///
/// If `append` returns an error (or panics), the writer logs it with `tracing::error!`, stops, and
/// the `Audit` reports it through [`failed`](super::Audit::failed),
/// [`failure`](super::Audit::failure) and [`flush`](super::Audit::flush). Nothing is retried: a sink
/// that cannot say which part of a batch reached storage could otherwise duplicate or reorder
/// records. Restart with a fresh `Audit` once the storage is repaired; [`head`](Self::head) tells it
/// where the chain resumes.
pub trait AuditSink: Send + 'static {
    /// Stores a batch of records, in order. The records are acknowledged (counted in
    /// [`Audit::head`](super::Audit::head) and [`Audit::flush`](super::Audit::flush)) only when
    /// this returns `Ok`, so a durable sink returns only after the batch is durable.
    fn append(&mut self, batch: &[AuditRecord]) -> io::Result<()>;

    /// The head of the last record already in storage, so that a restarted writer continues the chain
    /// (next `seq` = `head.seq + 1`, next `prev` = `head.hash`). `None` for empty storage, where the
    /// chain starts at sequence 1 with an all-zero `prev`.
    ///
    /// Called once, when the [`Audit`](super::Audit) is built.
    fn head(&self) -> Option<Head> {
        None
    }

    /// Whether [`append`](Self::append) may block the thread (file I/O, `fsync`). When `true` (the
    /// default) the writer calls it through `tokio::task::spawn_blocking`; a sink that never blocks
    /// returns `false` and is called directly on the writer task.
    fn is_blocking(&self) -> bool {
        true
    }
}

/// An in-memory ring of the most recent records; a cheap `Clone` that is both the sink and its reader.
///
/// Keeps at most `capacity` records, evicting the oldest; the remaining window still
/// [verifies](super::verify) (its first record's `prev` anchors it). Pass a clone to the builder and
/// keep another to read:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use palisade_core::audit::{Audit, AuditEvent, AuditKey, MemorySink};
///
/// let ring = MemorySink::new(2);
/// let audit = Audit::builder().key(AuditKey::generate()).sink(ring.clone()).build()?;
/// for n in 0..3 {
///     audit.record(AuditEvent::new("gate.level_changed").detail("level", n));
/// }
/// audit.flush().await?;
/// assert_eq!(ring.len(), 2);
/// assert_eq!(ring.evicted(), 1);
/// assert_eq!(ring.records()[0].seq, 2);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MemorySink {
    ring: Arc<Mutex<Ring>>,
}

struct Ring {
    records: VecDeque<AuditRecord>,
    capacity: usize,
    evicted: u64,
    head: Option<Head>,
}

impl MemorySink {
    /// An empty ring keeping at most `capacity` records (0 keeps none but still tracks the head).
    pub fn new(capacity: usize) -> Self {
        MemorySink {
            ring: Arc::new(Mutex::new(Ring {
                records: VecDeque::with_capacity(capacity.min(1024)),
                capacity,
                evicted: 0,
                head: None,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        // Appending cannot leave the ring inconsistent, so a poisoned lock is still usable.
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of the records currently held, oldest first.
    pub fn records(&self) -> Vec<AuditRecord> {
        self.lock().records.iter().cloned().collect()
    }

    /// How many records the ring holds.
    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    /// Whether the ring holds no records.
    pub fn is_empty(&self) -> bool {
        self.lock().records.is_empty()
    }

    /// The most records the ring keeps.
    pub fn capacity(&self) -> usize {
        self.lock().capacity
    }

    /// How many records were evicted to make room, in total.
    pub fn evicted(&self) -> u64 {
        self.lock().evicted
    }

    /// The head of the last record appended (even if it was evicted).
    pub fn head(&self) -> Option<Head> {
        self.lock().head
    }
}

impl AuditSink for MemorySink {
    fn append(&mut self, batch: &[AuditRecord]) -> io::Result<()> {
        let mut ring = self.lock();
        let ring = &mut *ring;
        for record in batch {
            if ring.capacity == 0 {
                ring.evicted += 1;
                continue;
            }
            if ring.records.len() >= ring.capacity {
                ring.records.pop_front();
                ring.evicted += 1;
            }
            ring.records.push_back(record.clone());
        }
        if let Some(last) = batch.last() {
            ring.head = Some(last.head());
        }
        Ok(())
    }

    fn head(&self) -> Option<Head> {
        MemorySink::head(self)
    }

    fn is_blocking(&self) -> bool {
        false
    }
}

impl fmt::Debug for MemorySink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ring = self.lock();
        f.debug_struct("MemorySink")
            .field("len", &ring.records.len())
            .field("capacity", &ring.capacity)
            .field("evicted", &ring.evicted)
            .field("head", &ring.head)
            .finish()
    }
}
