//! The durable sink: [`FileSink`], an append-only JSON-lines log with group-commit `fdatasync`,
//! recovery of a torn last line, and rotation by size.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::record::{AuditRecord, Head};
use super::sink::AuditSink;
use crate::health::Component;

/// Default [`max_file_size`](FileSinkBuilder::max_file_size): 64 MiB.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 64 * 1024 * 1024;

/// Lines longer than this are never parsed (by recovery or by
/// [`verify_path`](super::verify_path)): they count as damaged. The writer never writes one.
pub(crate) const MAX_LINE_BYTES: u64 = super::MAX_RECORD_BYTES;

const PREFIX: &str = "audit-";
const SUFFIX: &str = ".jsonl";

/// The file name of segment `number`: `audit-000001.jsonl`, ...
pub(crate) fn segment_name(number: u64) -> String {
    format!("{PREFIX}{number:06}{SUFFIX}")
}

/// The number of a segment file name, or `None` for any other name.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segment files of `dir`, by number (numerically, so that the order holds past 999,999).
pub(crate) fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(number) = name.to_str().and_then(parse_segment_name) else {
            continue;
        };
        segments.push((number, entry.path()));
    }
    segments.sort();
    Ok(segments)
}

/// Makes a directory entry (a created or renamed file) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        // Directories cannot be opened as files on Windows; NTFS journals its metadata.
        let _ = dir;
        Ok(())
    }
}

/// A cut-off tail of the last log file: a write that a crash interrupted.
///
/// Reported by [`FileSink::recovery`] (which removed it) and by
/// [`PathReport::torn_tail`](super::PathReport::torn_tail) (which ignored it).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TornTail {
    /// The file it is in (always the last one).
    pub path: PathBuf,
    /// Byte offset where it starts: the end of the last complete record.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
}

/// What recovery found in a file: where its torn tail starts, and the last record before it.
struct Scan {
    /// The end of the last complete line before the torn tail (the file length if there is none).
    good_end: u64,
    len: u64,
    /// The last line before `good_end` that parses as a record.
    last: Option<AuditRecord>,
    /// Whether complete lines after `last` (and before `good_end`) do not parse: damage kept.
    damaged_after_last: bool,
}

/// Whether a line holds a byte the writer never writes outside a torn tail: a NUL, as a page that
/// never reached the disk reads back after a power loss (JSON escapes every control character).
pub(crate) fn has_lost_page(line: &[u8]) -> bool {
    line.contains(&0)
}

/// Finds the torn tail of `path` and the last record before it.
///
/// The torn tail is what a crash leaves of unacknowledged writes, and nothing else: from the first
/// line that holds a NUL byte (a lost page) to the end of the file, or else the unterminated bytes
/// after the last newline. Every complete line before it is kept, parseable or not: a complete
/// line that is not a record is damage for [`verify_path`](super::verify_path) to report, not
/// something to cut. One pass looking for newlines and NUL bytes, then parsing from the last line
/// backwards (normally only the last one).
fn scan(path: &Path) -> io::Result<Scan> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut ends = Vec::new();
    let mut torn_at = None;
    {
        let mut reader = BufReader::with_capacity(64 * 1024, (&file).take(len));
        let mut pos = 0u64;
        let mut line_start = 0u64;
        'read: loop {
            let chunk = reader.fill_buf()?;
            if chunk.is_empty() {
                break;
            }
            let n = chunk.len();
            for (i, &b) in chunk.iter().enumerate() {
                if b == 0 {
                    torn_at = Some(line_start);
                    break 'read;
                }
                if b == b'\n' {
                    let end = pos + i as u64 + 1;
                    ends.push(end);
                    line_start = end;
                }
            }
            pos += n as u64;
            reader.consume(n);
        }
    }
    let good_end = torn_at.unwrap_or_else(|| ends.last().copied().unwrap_or(0));
    let mut line = Vec::new();
    let mut damaged_after_last = false;
    for k in (0..ends.len()).rev() {
        let start = if k == 0 { 0 } else { ends[k - 1] };
        let end = ends[k];
        if end > good_end {
            continue;
        }
        if end - start <= MAX_LINE_BYTES {
            line.resize((end - start) as usize, 0);
            file.seek(SeekFrom::Start(start))?;
            file.read_exact(&mut line)?;
            if let Ok(record) = serde_json::from_slice::<AuditRecord>(&line) {
                return Ok(Scan {
                    good_end,
                    len,
                    last: Some(record),
                    damaged_after_last,
                });
            }
        }
        damaged_after_last = true;
    }
    Ok(Scan {
        good_end,
        len,
        last: None,
        damaged_after_last,
    })
}

/// Builder of a [`FileSink`], from [`FileSink::builder`].
#[derive(Debug)]
pub struct FileSinkBuilder {
    dir: PathBuf,
    max_file_size: u64,
    health: Option<Component>,
}

impl FileSinkBuilder {
    /// Starts a new file once the current one would grow past `bytes` (default
    /// [`DEFAULT_MAX_FILE_SIZE`]). A record larger than the limit gets a file of its own; 0 puts
    /// every record in its own file.
    #[must_use]
    pub fn max_file_size(mut self, bytes: u64) -> Self {
        self.max_file_size = bytes;
        self
    }

    /// A health component the sink marks [`unhealthy`](Component::unhealthy) when a write, an
    /// `fsync` or a rotation fails (the sink then stops for good). The sink never marks it healthy:
    /// register it for the sink (it starts healthy) and pick its kind, usually
    /// [`Readiness`](crate::health::ComponentKind::Readiness) or
    /// [`Both`](crate::health::ComponentKind::Both).
    #[must_use]
    pub fn health(mut self, component: Component) -> Self {
        self.health = Some(component);
        self
    }

    /// Opens the log: creates the directory and its first file if needed, otherwise recovers the
    /// last file (see [`FileSink`]) and finds the head the chain continues from.
    ///
    /// This does blocking I/O (it reads the last file once); in async code call it before the
    /// runtime starts or inside `tokio::task::spawn_blocking`.
    ///
    /// # Errors
    ///
    /// Any I/O error creating, reading, truncating or syncing the directory or its last file.
    pub fn open(self) -> io::Result<FileSink> {
        let dir = self.dir;
        if !dir.is_dir() {
            fs::create_dir_all(&dir)?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let segments = list_segments(&dir)?;
        let mut recovery = None;
        let mut head = None;
        let (number, path) = match segments.last() {
            None => {
                let path = dir.join(segment_name(1));
                drop(
                    OpenOptions::new()
                        .append(true)
                        .create_new(true)
                        .open(&path)?,
                );
                sync_dir(&dir)?;
                (1, path)
            }
            Some((number, path)) => {
                let scan = scan(path)?;
                if scan.good_end < scan.len {
                    let torn = TornTail {
                        path: path.clone(),
                        offset: scan.good_end,
                        len: scan.len - scan.good_end,
                    };
                    tracing::warn!(
                        path = %path.display(),
                        offset = torn.offset,
                        bytes = torn.len,
                        "audit log: cutting off a torn tail (a write interrupted by a crash)"
                    );
                    let file = OpenOptions::new().write(true).open(path)?;
                    file.set_len(scan.good_end)?;
                    file.sync_all()?;
                    recovery = Some(torn);
                }
                if scan.damaged_after_last {
                    tracing::error!(
                        path = %path.display(),
                        "audit log: complete lines at the end of the last file are not records \
                         (damage, kept for verify_path to report); the chain continues from the \
                         last readable record"
                    );
                }
                head = scan.last.as_ref().map(AuditRecord::head);
                // The last file may hold no record yet (created just before a crash, or its only
                // line was torn): the head is then in an earlier file, which is never modified.
                for (_, earlier) in segments.iter().rev().skip(1) {
                    if head.is_some() {
                        break;
                    }
                    head = scan_head(earlier)?;
                }
                (*number, path.clone())
            }
        };
        let file = OpenOptions::new().append(true).open(&path)?;
        let size = file.metadata()?.len();
        tracing::debug!(path = %path.display(), ?head, "audit log opened");
        Ok(FileSink {
            dir,
            file,
            path,
            number,
            size,
            max_file_size: self.max_file_size,
            head,
            recovery,
            health: self.health,
            failure: None,
            buf: Vec::new(),
        })
    }
}

fn scan_head(path: &Path) -> io::Result<Option<Head>> {
    Ok(scan(path)?.last.as_ref().map(AuditRecord::head))
}

/// The durable [`AuditSink`]: an append-only log of JSON lines in a directory, one
/// [`AuditRecord`] per line in its serde form, synced with `fdatasync` before any record is
/// acknowledged.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use palisade_core::audit::{verify_path, Audit, AuditEvent, AuditKey, FileSink};
/// use palisade_core::health::{ComponentKind, Health};
///
/// # let dir = std::env::temp_dir().join(format!("palisade-doc-file-sink-{}", std::process::id()));
/// # let _ = std::fs::remove_dir_all(&dir);
/// let key = AuditKey::derive("acme.example 2026 palisade audit", b"material from your vault");
/// let health = Health::new();
/// let sink = FileSink::builder(&dir)
///     .max_file_size(16 * 1024 * 1024)
///     .health(health.register("audit.log", ComponentKind::Readiness))
///     .open()?; // recovers a torn last line after a crash, finds the head
/// let audit = Audit::builder()
///     .key(key.clone())
///     .sink(sink)
///     .max_batch(512) // records per write + fdatasync, at most
///     .commit_interval(Duration::from_millis(2)) // gather up to 2 ms per commit
///     .build()?;
///
/// audit.record(AuditEvent::new("breaker.opened").tenant("acme").detail("failures", 5));
/// audit.flush().await?; // on disk and synced
/// let head = audit.head().expect("one record");
///
/// let report = verify_path(&dir, &key, Some(&head))?;
/// assert_eq!(report.records, 1);
/// # drop(audit);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
///
/// # Files
///
/// The directory holds `audit-000001.jsonl`, `audit-000002.jsonl`, ... (six digits or more; read in
/// numeric order). Records go to the last file; once it would grow past
/// [`max_file_size`](FileSinkBuilder::max_file_size), the sink syncs it, creates the next one and
/// syncs the directory. The chain simply continues: the first record of a file has the last hash of
/// the previous file as its `prev`, so a missing file is found by [`verify_path`](super::verify_path).
/// Old files are never deleted or changed by the sink.
///
/// Each line is one record, exactly as `serde_json` writes [`AuditRecord`], then `\n`:
///
/// ```text
/// {"seq":1,"ts_ms":1795362372345,"tenant":"acme","kind":"breaker.opened","details":{"failures":5},"prev":"00…00","checksum":"…","hash":"…"}
/// ```
///
/// # Group commit
///
/// The [`Audit`](super::Audit) writer hands over everything queued as one batch (at most
/// [`max_batch`](super::AuditBuilder::max_batch) events, gathered for up to
/// [`commit_interval`](super::AuditBuilder::commit_interval)). The sink writes the whole batch with
/// one `write` and one `fdatasync` (`File::sync_data`), two of each when it rotates mid-batch, and
/// only then returns, so a record is acknowledged ([`Audit::flush`](super::Audit::flush),
/// [`Audit::head`](super::Audit::head)) only once it is durable.
///
/// # Failures are fatal
///
/// If a write, an `fdatasync`, or creating the next file fails, the sink marks its health component
/// unhealthy (see [`FileSinkBuilder::health`]), returns the error (the `Audit` stops and reports it)
/// and refuses every later batch. It never retries: after a failed `fsync` the kernel may have
/// dropped the dirty pages, so a retry that "succeeds" proves nothing. Part of the failed batch
/// may be in the file; it was not acknowledged, and the next [`open`](FileSinkBuilder::open) cuts a
/// torn line.
///
/// # Recovery on open
///
/// Only the last file is ever changed, and only at its end: its *torn tail* is cut off. The torn
/// tail is what a crash leaves of a write that was never acknowledged, and nothing else: the bytes
/// from the first line holding a NUL byte to the end of the file (a page that never reached the
/// disk reads back as zeros after a power loss, and the writer never writes a NUL: JSON escapes
/// it), or else the unterminated bytes after the last newline. The file is truncated there and
/// synced, and the cut is logged (`tracing::warn!`) and reported by [`recovery`](Self::recovery).
/// Every acknowledged record was synced whole, newline included, so it is kept.
///
/// A complete line that is not a record is damage, not a torn write: it is never cut, wherever it
/// is, and is left for [`verify_path`](super::verify_path) to report
/// ([`Unreadable`](super::VerifyErrorKind::Unreadable)); opening logs it (`tracing::error!`). The
/// head is the last record that can be read (from an earlier file when the last holds none), and
/// the chain continues from it.
///
/// One `FileSink` per directory at a time (not enforced): two writers would fork the chain.
pub struct FileSink {
    dir: PathBuf,
    file: File,
    path: PathBuf,
    number: u64,
    size: u64,
    max_file_size: u64,
    head: Option<Head>,
    recovery: Option<TornTail>,
    health: Option<Component>,
    failure: Option<String>,
    buf: Vec<u8>,
}

impl FileSink {
    /// A builder for a log in directory `dir`.
    pub fn builder(dir: impl Into<PathBuf>) -> FileSinkBuilder {
        FileSinkBuilder {
            dir: dir.into(),
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            health: None,
        }
    }

    /// Opens a log in `dir` with the default settings; see [`FileSinkBuilder::open`].
    ///
    /// # Errors
    ///
    /// As [`FileSinkBuilder::open`].
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<FileSink> {
        Self::builder(dir).open()
    }

    /// The head of the last record in the log (`None` for an empty log).
    pub fn head(&self) -> Option<Head> {
        self.head
    }

    /// What [`open`](FileSinkBuilder::open) cut off the last file, if anything.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::io::Write;
    /// use palisade_core::audit::{Audit, AuditEvent, AuditKey, FileSink};
    ///
    /// # let dir = std::env::temp_dir().join(format!("palisade-doc-recovery-{}", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// let key = AuditKey::derive("docs example audit", b"secret material");
    /// let audit = Audit::builder().key(key).sink(FileSink::open(&dir)?).build()?;
    /// audit.record(AuditEvent::new("bulkhead.full"));
    /// audit.flush().await?;
    /// let head = audit.head();
    /// drop(audit);
    ///
    /// // A crash in the middle of the next write leaves half a line.
    /// let file = dir.join("audit-000001.jsonl");
    /// let len = std::fs::metadata(&file)?.len();
    /// std::fs::OpenOptions::new().append(true).open(&file)?.write_all(br#"{"seq":2,"ts_"#)?;
    ///
    /// let sink = FileSink::open(&dir)?;
    /// assert_eq!(sink.recovery().map(|torn| (torn.offset, torn.len)), Some((len, 13)));
    /// assert_eq!(sink.head(), head); // the chain continues from record 1
    /// assert_eq!(std::fs::metadata(&file)?.len(), len);
    /// # drop(sink);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn recovery(&self) -> Option<&TornTail> {
        self.recovery.as_ref()
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file records are currently appended to.
    pub fn current_file(&self) -> &Path {
        &self.path
    }

    /// Why the sink stopped, if a write, sync or rotation failed.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Writes `self.buf[..end]` to the current file and syncs it.
    fn commit(&mut self, end: usize) -> io::Result<()> {
        if end == 0 {
            return Ok(());
        }
        self.file
            .write_all(&self.buf[..end])
            .map_err(|e| context(e, "write", &self.path))?;
        self.file
            .sync_data()
            .map_err(|e| context(e, "fdatasync", &self.path))?;
        self.size += end as u64;
        Ok(())
    }

    /// Starts the next file (the current one is synced).
    fn rotate(&mut self) -> io::Result<()> {
        let number = self.number + 1;
        let path = self.dir.join(segment_name(number));
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| context(e, "create", &path))?;
        sync_dir(&self.dir).map_err(|e| context(e, "sync directory of", &path))?;
        tracing::info!(path = %path.display(), "audit log: started a new file");
        self.file = file;
        self.path = path;
        self.number = number;
        self.size = 0;
        Ok(())
    }

    fn write_batch(&mut self, batch: &[AuditRecord]) -> io::Result<()> {
        self.buf.clear();
        for record in batch {
            let start = self.buf.len();
            serde_json::to_writer(&mut self.buf, record)?;
            self.buf.push(b'\n');
            let pending = start as u64;
            let line = (self.buf.len() - start) as u64;
            if self.size + pending > 0 && self.size + pending + line > self.max_file_size {
                self.commit(start)?;
                self.buf.drain(..start);
                self.rotate()?;
            }
        }
        self.commit(self.buf.len())
    }
}

fn context(error: io::Error, op: &str, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{op} {}: {error}", path.display()))
}

impl AuditSink for FileSink {
    fn append(&mut self, batch: &[AuditRecord]) -> io::Result<()> {
        if let Some(failure) = &self.failure {
            return Err(io::Error::other(format!(
                "audit file sink stopped after an earlier failure: {failure}"
            )));
        }
        match self.write_batch(batch) {
            Ok(()) => {
                if let Some(last) = batch.last() {
                    self.head = Some(last.head());
                }
                Ok(())
            }
            Err(error) => {
                let reason = format!("audit log failed, no longer appending: {error}");
                tracing::error!(%error, "audit file sink failed; it will not append again");
                if let Some(health) = &self.health {
                    health.unhealthy(reason.clone());
                }
                self.failure = Some(error.to_string());
                Err(error)
            }
        }
    }

    fn head(&self) -> Option<Head> {
        self.head
    }
}

impl fmt::Debug for FileSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSink")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("max_file_size", &self.max_file_size)
            .field("head", &self.head)
            .field("recovery", &self.recovery)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_sort() {
        assert_eq!(segment_name(1), "audit-000001.jsonl");
        assert_eq!(segment_name(1_234_567), "audit-1234567.jsonl");
        assert_eq!(parse_segment_name("audit-000001.jsonl"), Some(1));
        assert_eq!(parse_segment_name("audit-1234567.jsonl"), Some(1_234_567));
        for bad in [
            "audit-.jsonl",
            "audit-00001a.jsonl",
            "audit-000001.jsonl.bak",
            "x-000001.jsonl",
            "audit-+1.jsonl",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
    }
}
