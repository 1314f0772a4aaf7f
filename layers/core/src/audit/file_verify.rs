//! Verifying a log on disk ([`verify_path`]), streaming line by line.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::file::{has_lost_page, list_segments, TornTail, MAX_LINE_BYTES};
use super::key::AuditKey;
use super::record::{AuditRecord, Head};
use super::verify::{VerifyError, VerifyErrorKind};

/// What a successful [`verify_path`] checked.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PathReport {
    /// How many records were checked.
    pub records: u64,
    /// Where the log had to start: [`Head::GENESIS`] for [`verify_path`], the given anchor for
    /// [`verify_path_from`].
    pub anchor: Head,
    /// The head of the last record (the anchor for a log without records). Keep it outside the log
    /// to detect truncation the next time.
    pub head: Head,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
    /// The torn tail of the last file that was ignored (an unterminated last line, or everything
    /// from a line holding NUL bytes on): a write torn by a crash, which the
    /// [`FileSink`](super::FileSink) cuts off the next time it opens the log.
    pub torn_tail: Option<TornTail>,
}

/// Why [`verify_path`] failed: the log is damaged, or could not be read.
#[derive(Debug)]
#[non_exhaustive]
pub enum VerifyPathError {
    /// The first problem found, and where: the file and the 1-based line number of the first bad
    /// line (for records missing at the end, the line after the last).
    Damaged {
        /// The sequence number and the kind of damage.
        error: VerifyError,
        /// The file it was found in.
        path: PathBuf,
        /// The 1-based line number in that file.
        line: u64,
    },
    /// A file or directory could not be read, or a directory holds no log files.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        error: io::Error,
    },
}

impl VerifyPathError {
    /// The damage found, or `None` for an I/O error.
    pub fn damage(&self) -> Option<VerifyError> {
        match self {
            VerifyPathError::Damaged { error, .. } => Some(*error),
            VerifyPathError::Io { .. } => None,
        }
    }
}

impl fmt::Display for VerifyPathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyPathError::Damaged { error, path, line } => {
                write!(f, "{error} (at {} line {line})", path.display())
            }
            VerifyPathError::Io { path, error } => {
                write!(f, "cannot read audit log {}: {error}", path.display())
            }
        }
    }
}

impl std::error::Error for VerifyPathError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            VerifyPathError::Damaged { error, .. } => Some(error),
            VerifyPathError::Io { error, .. } => Some(error),
        }
    }
}

/// Verifies a log written by a [`FileSink`](super::FileSink): one file, or a directory of
/// `audit-NNNNNN.jsonl` files read in numeric order as one chain. Streams line by line, so memory
/// does not grow with the log.
///
/// A file log is complete from its first record, so unlike [`verify`](super::verify) (which checks a
/// window of a ring) the log must start at sequence 1 after [`Head::GENESIS`]: a missing first file
/// is [`Removed`](VerifyErrorKind::Removed) at 1. Use [`verify_path_from`] for a log whose older files
/// were archived, or for a single later file.
///
/// The checks are those of [`verify`](super::verify), with these rules for files:
///
/// - Every newline-terminated line must be a record. A line that does not parse as one (not JSON,
///   not a record's fields, nested deeper than 128 levels, longer than
///   [`MAX_RECORD_BYTES`](super::MAX_RECORD_BYTES)) is
///   [`Unreadable`](VerifyErrorKind::Unreadable); the writer never acknowledges such a line.
/// - [`Unreadable`](VerifyErrorKind::Unreadable), [`Modified`](VerifyErrorKind::Modified) and
///   [`Forged`](VerifyErrorKind::Forged) are reported at the sequence number the bad line's place
///   in the chain calls for (one past the last good record), not at the number the line claims,
///   which may itself be what was changed.
/// - The torn tail of the last file is a write torn by a crash: it is ignored and reported in
///   [`PathReport::torn_tail`] (no record in it was ever acknowledged; the sink cuts it off when it
///   next opens the log). It is the unterminated bytes after the last newline, or everything from
///   the first line holding a NUL byte (a page lost in a power failure reads back as zeros; the
///   writer never writes a NUL) to the end of the file.
/// - Records cut off the end are found only against `expected_head`
///   ([`Truncated`](VerifyErrorKind::Truncated)); a log that continues past it is fine.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use palisade_core::audit::{verify_path, Audit, AuditEvent, AuditKey, FileSink, VerifyErrorKind};
///
/// # let dir = std::env::temp_dir().join(format!("palisade-doc-verify-path-{}", std::process::id()));
/// # let _ = std::fs::remove_dir_all(&dir);
/// let key = AuditKey::derive("docs example audit", b"secret material");
/// let audit = Audit::builder().key(key.clone()).sink(FileSink::open(&dir)?).build()?;
/// for n in 0..3 {
///     audit.record(AuditEvent::new("gate.level_changed").detail("level", n));
/// }
/// audit.flush().await?;
/// let head = audit.head().expect("three records");
/// assert_eq!(verify_path(&dir, &key, Some(&head))?.records, 3);
///
/// // Someone edits record 2 in place.
/// let file = dir.join("audit-000001.jsonl");
/// let text = std::fs::read_to_string(&file)?.replace(r#"{"level":1}"#, r#"{"level":0}"#);
/// std::fs::write(&file, text)?;
/// let err = verify_path(&dir, &key, Some(&head)).unwrap_err().damage().unwrap();
/// assert_eq!((err.seq, err.kind), (2, VerifyErrorKind::Modified));
/// # drop(audit);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// [`VerifyPathError::Damaged`] with the first problem, or [`VerifyPathError::Io`] when `path`
/// cannot be read or is a directory without log files.
pub fn verify_path(
    path: impl AsRef<Path>,
    key: &AuditKey,
    expected_head: Option<&Head>,
) -> Result<PathReport, VerifyPathError> {
    verify_path_from(&Head::GENESIS, path, key, expected_head)
}

/// Like [`verify_path`], but the log must continue exactly from `anchor` (a head kept when older
/// files were archived, or the last head of the file before a single file being checked).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use palisade_core::audit::{verify_path, verify_path_from, Audit, AuditEvent, AuditKey, FileSink};
///
/// # let dir = std::env::temp_dir().join(format!("palisade-doc-verify-from-{}", std::process::id()));
/// # let _ = std::fs::remove_dir_all(&dir);
/// let key = AuditKey::derive("docs example audit", b"secret material");
/// // Tiny files, so that every record starts a new one.
/// let sink = FileSink::builder(&dir).max_file_size(1).open()?;
/// let audit = Audit::builder().key(key.clone()).sink(sink).build()?;
/// audit.record(AuditEvent::new("retry.budget_exhausted"));
/// audit.flush().await?;
/// let anchor = audit.head().expect("one record"); // kept when file 1 is archived
/// audit.record(AuditEvent::new("retry.budget_restored"));
/// audit.flush().await?;
///
/// std::fs::remove_file(dir.join("audit-000001.jsonl"))?;
/// assert!(verify_path(&dir, &key, None).is_err()); // record 1 is missing
/// assert_eq!(verify_path_from(&anchor, &dir, &key, None)?.records, 1);
/// # drop(audit);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// As [`verify_path`].
pub fn verify_path_from(
    anchor: &Head,
    path: impl AsRef<Path>,
    key: &AuditKey,
    expected_head: Option<&Head>,
) -> Result<PathReport, VerifyPathError> {
    let path = path.as_ref();
    let files = files_of(path)?;
    walk(files, *anchor, key, expected_head)
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> VerifyPathError + '_ {
    move |error| VerifyPathError::Io {
        path: path.to_owned(),
        error,
    }
}

fn files_of(path: &Path) -> Result<Vec<PathBuf>, VerifyPathError> {
    let meta = fs::metadata(path).map_err(io_error(path))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let files: Vec<PathBuf> = list_segments(path)
        .map_err(io_error(path))?
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    if files.is_empty() {
        return Err(VerifyPathError::Io {
            path: path.to_owned(),
            error: io::Error::new(
                io::ErrorKind::NotFound,
                "the directory holds no audit log files (audit-NNNNNN.jsonl)",
            ),
        });
    }
    Ok(files)
}

/// One line read by [`Lines`]; its bytes are in the caller's buffer.
struct Line {
    /// Index of its file.
    file: usize,
    /// 1-based line number in the file.
    number: u64,
    /// Byte offset in the file.
    offset: u64,
    /// Length in bytes, newline included (an overlong line is not kept whole in the buffer).
    len: u64,
    terminated: bool,
    overlong: bool,
}

/// The lines of several files, in order.
struct Lines {
    files: Vec<PathBuf>,
    next_file: usize,
    current: Option<BufReader<File>>,
    number: u64,
    offset: u64,
}

impl Lines {
    fn new(files: Vec<PathBuf>) -> Self {
        Lines {
            files,
            next_file: 0,
            current: None,
            number: 0,
            offset: 0,
        }
    }

    fn is_last(&self, file: usize) -> bool {
        file + 1 == self.files.len()
    }

    fn next(&mut self, buf: &mut Vec<u8>) -> Result<Option<Line>, VerifyPathError> {
        loop {
            let file = self.next_file;
            let reader = match &mut self.current {
                Some(reader) => reader,
                None => {
                    let Some(path) = self.files.get(file) else {
                        return Ok(None);
                    };
                    let f = File::open(path).map_err(io_error(path))?;
                    self.number = 0;
                    self.offset = 0;
                    self.current.insert(BufReader::with_capacity(64 * 1024, f))
                }
            };
            let path = &self.files[file];
            buf.clear();
            let n = reader
                .by_ref()
                .take(MAX_LINE_BYTES + 1)
                .read_until(b'\n', buf)
                .map_err(io_error(path))? as u64;
            if n == 0 {
                self.current = None;
                self.next_file += 1;
                continue;
            }
            let mut terminated = buf.last() == Some(&b'\n');
            let overlong = n > MAX_LINE_BYTES;
            let mut len = n;
            if overlong && !terminated {
                // Skip the rest of the line without keeping it.
                loop {
                    let chunk = reader.fill_buf().map_err(io_error(path))?;
                    if chunk.is_empty() {
                        break;
                    }
                    match chunk.iter().position(|&b| b == b'\n') {
                        Some(i) => {
                            reader.consume(i + 1);
                            len += i as u64 + 1;
                            terminated = true;
                            break;
                        }
                        None => {
                            let k = chunk.len();
                            reader.consume(k);
                            len += k as u64;
                        }
                    }
                }
            }
            self.number += 1;
            let line = Line {
                file,
                number: self.number,
                offset: self.offset,
                len,
                terminated,
                overlong,
            };
            self.offset += len;
            return Ok(Some(line));
        }
    }

    /// Whether `line` (its bytes in `buf`) starts the torn tail of the last file: it is unterminated,
    /// or holds a NUL byte (a page lost in a power failure), as [`FileSink`](super::FileSink)
    /// recovery decides.
    fn is_torn(&self, line: &Line, buf: &[u8]) -> bool {
        self.is_last(line.file) && (!line.terminated || has_lost_page(buf))
    }

    /// Whether any record after the current position claims a sequence number in `range`.
    fn any_later(&mut self, range: Range<u64>, buf: &mut Vec<u8>) -> Result<bool, VerifyPathError> {
        #[derive(Deserialize)]
        struct SeqOnly {
            seq: u64,
        }
        while let Some(line) = self.next(buf)? {
            if self.is_torn(&line, buf) {
                break;
            }
            if line.overlong {
                continue;
            }
            if let Ok(SeqOnly { seq }) = serde_json::from_slice(buf) {
                if range.contains(&seq) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

fn walk(
    files: Vec<PathBuf>,
    anchor: Head,
    key: &AuditKey,
    expected_head: Option<&Head>,
) -> Result<PathReport, VerifyPathError> {
    let mut lines = Lines::new(files);
    let mut buf = Vec::new();
    let mut last = anchor;
    let mut records = 0u64;
    let mut torn_tail = None;
    // Where records missing at the end would be: after the last line read (or at the torn one).
    let mut end = (0, 1);
    let damaged = |lines: &Lines, seq, kind, (file, line): (usize, u64)| {
        Err(VerifyPathError::Damaged {
            error: VerifyError { seq, kind },
            path: lines.files[file].clone(),
            line,
        })
    };
    while let Some(line) = lines.next(&mut buf)? {
        let at = (line.file, line.number);
        if lines.is_torn(&line, &buf) {
            let path = &lines.files[line.file];
            // The tail runs to the end of the file (past later lines, for a lost page).
            let file_len = fs::metadata(path).map_err(io_error(path))?.len();
            torn_tail = Some(TornTail {
                path: path.clone(),
                offset: line.offset,
                len: file_len.saturating_sub(line.offset).max(line.len),
            });
            end = at;
            break;
        }
        end = (line.file, line.number + 1);
        let expected = last.seq.saturating_add(1);
        let parsed = if line.overlong {
            None
        } else {
            serde_json::from_slice::<AuditRecord>(&buf).ok()
        };
        let Some(r) = parsed else {
            return damaged(&lines, expected, VerifyErrorKind::Unreadable, at);
        };
        let content = r.canonical_content();
        // `blake3::Hash` compares in constant time.
        if blake3::hash(&content) != blake3::Hash::from(r.checksum) {
            return damaged(&lines, expected, VerifyErrorKind::Modified, at);
        }
        if blake3::keyed_hash(key.as_bytes(), &content) != blake3::Hash::from(r.hash) {
            return damaged(&lines, expected, VerifyErrorKind::Forged, at);
        }
        if r.seq == expected {
            if r.prev != last.hash {
                return damaged(&lines, r.seq, VerifyErrorKind::Spliced, at);
            }
        } else if r.seq > expected {
            let kind = if lines.any_later(expected..r.seq, &mut buf)? {
                VerifyErrorKind::Reordered
            } else {
                VerifyErrorKind::Removed
            };
            return damaged(&lines, expected, kind, at);
        } else {
            return damaged(&lines, r.seq, VerifyErrorKind::Reordered, at);
        }
        if let Some(head) = expected_head {
            if r.seq == head.seq && r.hash != head.hash {
                return damaged(&lines, head.seq, VerifyErrorKind::Truncated, at);
            }
        }
        last = r.head();
        records += 1;
    }
    if torn_tail.is_none() && end.0 + 1 < lines.files.len() {
        // The last file holds no line.
        end = (lines.files.len() - 1, 1);
    }
    if let Some(head) = expected_head {
        if last.seq < head.seq {
            return damaged(&lines, last.seq + 1, VerifyErrorKind::Truncated, end);
        }
        if last.seq == head.seq && last.hash != head.hash {
            return damaged(&lines, head.seq, VerifyErrorKind::Truncated, end);
        }
    }
    Ok(PathReport {
        records,
        anchor,
        head: last,
        files: lines.files,
        torn_tail,
    })
}
