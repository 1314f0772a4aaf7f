//! Walking a log and checking its chain.

use std::fmt;

use super::key::AuditKey;
use super::record::{AuditRecord, Head};

/// What [`verify`] found wrong with the first bad record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum VerifyErrorKind {
    /// The record's checksum does not match its content: it was corrupted or edited. `seq` is the
    /// record's own (claimed) sequence number.
    Modified,
    /// The checksum matches but the keyed hash does not: the record was rewritten (or made up) by
    /// someone without the key, or the log is being verified with the wrong key. `seq` is the record's
    /// own sequence number.
    Forged,
    /// Records are missing: the sequence jumps and the skipped records appear nowhere later in the
    /// log. `seq` is the first missing sequence number.
    Removed,
    /// Records are out of order: the sequence jumps to a record that belongs later while the skipped
    /// ones appear further on (two records swapped, one moved), or it goes backwards or repeats.
    /// `seq` is the first sequence number whose place holds another record (for records `k` and
    /// `k + 1` swapped: `k`); when the sequence goes backwards without a jump before it (a repeated
    /// record), the sequence number of the record out of place.
    Reordered,
    /// The record is authentic and its sequence number is the expected one, but its `prev` is not the
    /// hash of the record before it (or of the anchor): pieces of two different chains written with
    /// the same key were joined. `seq` is the first record of the second piece.
    Spliced,
    /// A line of a log file is not a readable record: not JSON, not the fields of a record, nested
    /// deeper than the reader reads, or longer than [`MAX_RECORD_BYTES`](super::MAX_RECORD_BYTES)
    /// (only [`verify_path`](super::verify_path) reads lines). The writer never acknowledges such a
    /// line, so it was damaged or written by someone else. `seq` is the sequence number its place
    /// in the chain calls for.
    Unreadable,
    /// The log ends before the expected head, or the record at the head's sequence number is not the
    /// head's record (the log was cut and regrown). `seq` is the first missing sequence number, or the
    /// head's.
    Truncated,
}

impl fmt::Display for VerifyErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VerifyErrorKind::Modified => "modified",
            VerifyErrorKind::Forged => "forged",
            VerifyErrorKind::Removed => "removed",
            VerifyErrorKind::Reordered => "reordered",
            VerifyErrorKind::Spliced => "spliced",
            VerifyErrorKind::Truncated => "truncated",
            VerifyErrorKind::Unreadable => "unreadable",
        })
    }
}

/// The first problem [`verify`] found: where and what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VerifyError {
    /// The sequence number the problem is reported at (see [`VerifyErrorKind`] for each kind).
    pub seq: u64,
    /// What is wrong.
    pub kind: VerifyErrorKind,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seq = self.seq;
        match self.kind {
            VerifyErrorKind::Modified => write!(
                f,
                "audit record {seq} was modified: its checksum does not match its content"
            ),
            VerifyErrorKind::Forged => write!(
                f,
                "audit record {seq} is forged: its keyed hash does not match (rewritten without the key, or wrong key)"
            ),
            VerifyErrorKind::Removed => {
                write!(f, "audit log is missing records from sequence {seq} on")
            }
            VerifyErrorKind::Reordered => {
                write!(f, "audit log is out of order at sequence {seq}")
            }
            VerifyErrorKind::Spliced => write!(
                f,
                "audit record {seq} does not chain to the record before it: the log was spliced from another chain"
            ),
            VerifyErrorKind::Truncated => write!(
                f,
                "audit log is truncated: it does not reach the expected head at sequence {seq}"
            ),
            VerifyErrorKind::Unreadable => write!(
                f,
                "audit log line at sequence {seq} is not a readable record (not JSON, not a record's fields, nested too deep or too long)"
            ),
        }
    }
}

impl std::error::Error for VerifyError {}

/// What a successful [`verify`] checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// How many records were checked.
    pub records: u64,
    /// Where the checked window starts: the given anchor, or the position the first record claims to
    /// follow (`seq - 1` and its `prev`). `None` for an empty log without an anchor.
    pub anchor: Option<Head>,
    /// The head of the last record, or the anchor for an empty log.
    pub head: Option<Head>,
}

/// Verifies a log (or a window of one) in order, returning the first problem.
///
/// The first record may start anywhere (an in-memory ring evicts old records): its `prev` and
/// `seq - 1` are trusted as the anchor, so records removed from the *front* are not noticed; use
/// [`verify_from`] with [`Head::GENESIS`] or a kept anchor for that. Records removed from the *end*
/// are noticed only against `expected_head`, a [`Head`] kept outside the log (from
/// [`Audit::head`](super::Audit::head)): the log must reach it and hold that very record. A log that
/// continues past the head is fine.
///
/// For each record, in order: the checksum ([`Modified`](VerifyErrorKind::Modified)), the keyed hash
/// ([`Forged`](VerifyErrorKind::Forged)), the sequence number
/// ([`Removed`](VerifyErrorKind::Removed), [`Reordered`](VerifyErrorKind::Reordered)) and the link
/// to the previous record ([`Spliced`](VerifyErrorKind::Spliced)); finally the expected head
/// ([`Truncated`](VerifyErrorKind::Truncated)).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use palisade_core::audit::{verify, Audit, AuditEvent, AuditKey, MemorySink, VerifyErrorKind};
///
/// let key = AuditKey::derive("docs example audit", b"secret material");
/// let ring = MemorySink::new(100);
/// let audit = Audit::builder().key(key.clone()).sink(ring.clone()).build()?;
/// for n in 0..5 {
///     audit.record(AuditEvent::new("chaos.injected").detail("n", n));
/// }
/// audit.flush().await?;
/// let head = audit.head().expect("records were appended");
///
/// let mut log = ring.records();
/// assert_eq!(verify(&log, &key, Some(&head))?.records, 5);
///
/// log.remove(2); // record 3
/// let err = verify(&log, &key, Some(&head)).unwrap_err();
/// assert_eq!((err.seq, err.kind), (3, VerifyErrorKind::Removed));
///
/// log.truncate(1); // only record 1 is left
/// let err = verify(&log, &key, Some(&head)).unwrap_err();
/// assert_eq!((err.seq, err.kind), (2, VerifyErrorKind::Truncated));
/// # Ok(())
/// # }
/// ```
pub fn verify<'a>(
    records: impl IntoIterator<Item = &'a AuditRecord>,
    key: &AuditKey,
    expected_head: Option<&Head>,
) -> Result<VerifyReport, VerifyError> {
    walk(None, records, Some(key), expected_head)
}

/// Like [`verify`], but the log must continue exactly from `anchor`: its first record must be
/// `anchor.seq + 1` with `prev == anchor.hash`.
///
/// With [`Head::GENESIS`] this checks a log from its very first record, so records removed from the
/// front are found ([`Removed`](VerifyErrorKind::Removed) at 1); with a head kept earlier it checks
/// everything appended since.
pub fn verify_from<'a>(
    anchor: &Head,
    records: impl IntoIterator<Item = &'a AuditRecord>,
    key: &AuditKey,
    expected_head: Option<&Head>,
) -> Result<VerifyReport, VerifyError> {
    walk(Some(*anchor), records, Some(key), expected_head)
}

/// The walk behind [`verify`]; `key == None` (a disabled `Audit`) authenticates nothing.
pub(crate) fn walk<'a>(
    anchor: Option<Head>,
    records: impl IntoIterator<Item = &'a AuditRecord>,
    key: Option<&AuditKey>,
    expected_head: Option<&Head>,
) -> Result<VerifyReport, VerifyError> {
    let records: Vec<&AuditRecord> = records.into_iter().collect();
    let err = |seq, kind| Err(VerifyError { seq, kind });
    let mut start = anchor;
    let mut last = anchor;
    for (i, r) in records.iter().enumerate() {
        let content = r.canonical_content();
        // `blake3::Hash` compares in constant time.
        if blake3::hash(&content) != blake3::Hash::from(r.checksum) {
            return err(r.seq, VerifyErrorKind::Modified);
        }
        let authentic = key.is_some_and(|key| {
            blake3::keyed_hash(key.as_bytes(), &content) == blake3::Hash::from(r.hash)
        });
        if !authentic {
            return err(r.seq, VerifyErrorKind::Forged);
        }
        match last {
            None => {
                start = Some(Head {
                    seq: r.seq.saturating_sub(1),
                    hash: r.prev,
                });
            }
            Some(prev) => {
                let expected = prev.seq.saturating_add(1);
                if r.seq == expected {
                    if r.prev != prev.hash {
                        return err(r.seq, VerifyErrorKind::Spliced);
                    }
                } else if r.seq > expected {
                    let skipped_later = records[i + 1..]
                        .iter()
                        .any(|later| (expected..r.seq).contains(&later.seq));
                    let kind = if skipped_later {
                        VerifyErrorKind::Reordered
                    } else {
                        VerifyErrorKind::Removed
                    };
                    return err(expected, kind);
                } else {
                    return err(r.seq, VerifyErrorKind::Reordered);
                }
            }
        }
        if let Some(head) = expected_head {
            if r.seq == head.seq && r.hash != head.hash {
                return err(head.seq, VerifyErrorKind::Truncated);
            }
        }
        last = Some(r.head());
    }
    if let Some(head) = expected_head {
        match last {
            Some(l) if l.seq > head.seq => {}
            Some(l) if l.seq == head.seq => {
                if l.hash != head.hash {
                    return err(head.seq, VerifyErrorKind::Truncated);
                }
            }
            Some(l) => return err(l.seq + 1, VerifyErrorKind::Truncated),
            None if head.seq == 0 => {}
            None => return err(1, VerifyErrorKind::Truncated),
        }
    }
    Ok(VerifyReport {
        records: records.len() as u64,
        anchor: start,
        head: last,
    })
}
