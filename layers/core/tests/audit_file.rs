//! Integration tests of the durable audit log: the file sink (group commit, recovery of a torn last
//! line, rotation, fatal write failures), `verify_path` against every kind of tampering, the
//! `palisade_audit` CLI logic, and `kill -9` in the middle of a stream of appends.
//!
//! The `kill -9` test needs a process to kill: it runs this very test binary again
//! (`std::env::current_exe()`) with `--exact audit_child_writer` and the environment variable
//! `PALISADE_AUDIT_CHILD_DIR` set. The `audit_child_writer` test then acts as the writer: it appends
//! to the log in that directory and prints `ACK <seq>:<hash>` after every acknowledged flush, until
//! it is killed. Run normally (the variable unset), `audit_child_writer` does nothing and passes.

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_core::audit::{
    cli_verify, verify_from, verify_path, verify_path_from, Audit, AuditError, AuditEvent,
    AuditKey, AuditRecord, AuditSink, FileSink, Head, VerifyError, VerifyErrorKind,
    VerifyPathError,
};
use palisade_core::health::{ComponentKind, Health, HealthState};
use palisade_core::rng::Rng;

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

const KEY_BYTES: [u8; 32] = [0x42; 32];

fn key() -> AuditKey {
    AuditKey::from_bytes(KEY_BYTES)
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "palisade-audit-file-{}-{name}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn event(n: u64) -> AuditEvent {
    let e = AuditEvent::new("breaker.opened")
        .detail("n", n)
        .detail("note", "x".repeat((n % 7 * 13) as usize));
    if n % 2 == 0 {
        e.tenant(format!("tenant-{n}"))
    } else {
        e
    }
}

/// Appends events `from..=to` to the log in `dir` (flushing every few) and returns the head.
async fn append(dir: &Path, max_file_size: u64, from: u64, to: u64) -> Head {
    let sink = FileSink::builder(dir)
        .max_file_size(max_file_size)
        .open()
        .expect("open");
    let audit = Audit::builder().key(key()).sink(sink).build().unwrap();
    for i in from..=to {
        audit.record(event(i));
        if i % 4 == 0 {
            audit.flush().await.expect("flush");
        }
    }
    audit.flush().await.expect("flush");
    audit.head().expect("head")
}

/// A log of `n` records in rotated files of about 1 KiB (several records each).
async fn rotated_log(dir: &Path, n: u64) -> Head {
    append(dir, 1024, 1, n).await
}

/// The log's files and their lines (without the newline), in order.
type Files = Vec<(PathBuf, Vec<String>)>;

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
}

fn read_files(dir: &Path) -> Files {
    segments(dir)
        .into_iter()
        .map(|p| {
            let text = fs::read_to_string(&p).unwrap();
            assert!(text.is_empty() || text.ends_with('\n'), "{}", p.display());
            let lines = text.lines().map(str::to_owned).collect();
            (p, lines)
        })
        .collect()
}

fn write_files(files: &[(PathBuf, Vec<String>)]) {
    for (path, lines) in files {
        let mut text = String::new();
        for line in lines {
            text.push_str(line);
            text.push('\n');
        }
        fs::write(path, text).unwrap();
    }
}

/// (file index, line index) of the record with sequence number `seq`.
fn locate(files: &Files, seq: u64) -> (usize, usize) {
    let mut n = 0;
    for (f, (_, lines)) in files.iter().enumerate() {
        for l in 0..lines.len() {
            n += 1;
            if n == seq {
                return (f, l);
            }
        }
    }
    panic!("no record {seq}");
}

fn record_at(files: &Files, seq: u64) -> AuditRecord {
    let (f, l) = locate(files, seq);
    serde_json::from_str(&files[f].1[l]).unwrap()
}

fn damage(result: Result<impl std::fmt::Debug, VerifyPathError>) -> (u64, VerifyErrorKind) {
    match result {
        Err(VerifyPathError::Damaged { error, .. }) => (error.seq, error.kind),
        other => panic!("expected damage, got {other:?}"),
    }
}

fn check(dir: &Path, head: &Head) -> (u64, VerifyErrorKind) {
    damage(verify_path(dir, &key(), Some(head)))
}

// ---------------------------------------------------------------------------------------------
// Writing, group commit, reopening
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn audit_records_are_json_lines_that_verify() {
    let dir = TempDir::new("lines");
    let head = append(dir.path(), u64::MAX, 1, 10).await;
    assert_eq!(head.seq, 10);
    assert_eq!(segments(dir.path()), [dir.join("audit-000001.jsonl")]);

    let text = fs::read_to_string(dir.join("audit-000001.jsonl")).unwrap();
    let records: Vec<AuditRecord> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(records[1].tenant.as_deref(), Some("tenant-2"));
    verify_from(&Head::GENESIS, &records, &key(), Some(&head)).unwrap();

    let report = verify_path(dir.path(), &key(), Some(&head)).unwrap();
    assert_eq!(report.records, 10);
    assert_eq!(report.head, head);
    assert_eq!(report.anchor, Head::GENESIS);
    assert_eq!(report.torn_tail, None);
    // One file on its own verifies too.
    let report = verify_path(dir.join("audit-000001.jsonl"), &key(), Some(&head)).unwrap();
    assert_eq!(report.records, 10);
}

/// Counts the batches handed to an inner sink.
struct Counting<S> {
    inner: S,
    batches: Arc<Mutex<Vec<usize>>>,
}

impl<S: AuditSink> AuditSink for Counting<S> {
    fn append(&mut self, batch: &[AuditRecord]) -> io::Result<()> {
        self.inner.append(batch)?;
        self.batches.lock().unwrap().push(batch.len());
        Ok(())
    }

    fn head(&self) -> Option<Head> {
        self.inner.head()
    }

    fn is_blocking(&self) -> bool {
        self.inner.is_blocking()
    }
}

#[tokio::test]
async fn audit_queued_records_are_committed_as_one_batch() {
    let dir = TempDir::new("group");
    let batches = Arc::new(Mutex::new(Vec::new()));
    let sink = Counting {
        inner: FileSink::open(dir.path()).unwrap(),
        batches: Arc::clone(&batches),
    };
    let audit = Audit::builder()
        .key(key())
        .sink(sink)
        .max_batch(64)
        .build()
        .unwrap();
    // On this current-thread runtime the writer runs only when the test awaits: all 150 are queued.
    for i in 1..=150 {
        audit.record(event(i));
    }
    audit.flush().await.unwrap();
    assert_eq!(*batches.lock().unwrap(), [64, 64, 22]);
    let head = audit.head().unwrap();
    assert_eq!(
        verify_path(dir.path(), &key(), Some(&head))
            .unwrap()
            .records,
        150
    );
}

#[tokio::test(start_paused = true)]
async fn audit_commit_interval_gathers_events_into_one_commit() {
    let batches = Arc::new(Mutex::new(Vec::new()));
    let ring = palisade_core::audit::MemorySink::new(100);
    let audit = Audit::builder()
        .key(key())
        .sink(Counting {
            inner: ring.clone(),
            batches: Arc::clone(&batches),
        })
        .commit_interval(Duration::from_millis(10))
        .max_batch(8)
        .build()
        .unwrap();
    let start = tokio::time::Instant::now();
    for i in 1..=3 {
        audit.record(event(i));
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(batches.lock().unwrap().is_empty(), "still gathering");
    audit.record(event(4));
    audit.record(event(5));
    tokio::time::sleep(Duration::from_millis(6)).await;
    assert_eq!(*batches.lock().unwrap(), [5], "one commit after 10 ms");

    // A full batch does not wait.
    let t = tokio::time::Instant::now();
    for i in 6..=13 {
        audit.record(event(i));
    }
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
    assert_eq!(*batches.lock().unwrap(), [5, 8]);
    assert_eq!(t.elapsed(), Duration::ZERO);

    // Neither does a flush.
    audit.record(event(14));
    audit.flush().await.unwrap();
    assert_eq!(*batches.lock().unwrap(), [5, 8, 1]);
    assert_eq!(t.elapsed(), Duration::ZERO);
    assert_eq!(start.elapsed(), Duration::from_millis(11));
    assert_eq!(ring.len(), 14);
}

#[tokio::test]
async fn audit_reopening_continues_the_chain() {
    let dir = TempDir::new("reopen");
    let first = append(dir.path(), u64::MAX, 1, 5).await;
    let sink = FileSink::open(dir.path()).unwrap();
    assert_eq!(sink.head(), Some(first));
    assert_eq!(sink.recovery(), None);
    drop(sink);

    let second = append(dir.path(), u64::MAX, 6, 9).await;
    assert_eq!(second.seq, 9);
    let files = read_files(dir.path());
    assert_eq!(record_at(&files, 6).prev, first.hash);
    let report = verify_path(dir.path(), &key(), Some(&second)).unwrap();
    assert_eq!(report.records, 9);
    // What was appended since the first head verifies from it, in any file layout.
    let since = verify_path_from(&first, files[0].0.as_path(), &key(), Some(&second));
    assert_eq!(damage(since), (1, VerifyErrorKind::Reordered));
}

// ---------------------------------------------------------------------------------------------
// Recovery
// ---------------------------------------------------------------------------------------------

fn append_bytes(path: &Path, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

#[tokio::test]
async fn audit_torn_last_line_is_cut_on_open() {
    let dir = TempDir::new("torn");
    let head = append(dir.path(), u64::MAX, 1, 5).await;
    let file = dir.join("audit-000001.jsonl");
    let good = fs::read(&file).unwrap();
    // Half of what the next record would look like, as a crash mid-write leaves it.
    let next_line = fs::read_to_string(&file)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned();
    let tails: [&[u8]; 4] = [
        &next_line.as_bytes()[..next_line.len() / 2],
        next_line.as_bytes(), // complete but for its newline: never acknowledged either
        &[0; 100],
        b"\xff\xfe garbage",
    ];
    for tail in tails {
        fs::write(&file, &good).unwrap();
        append_bytes(&file, tail);

        // Before recovery the verifier ignores the torn tail, and says so.
        let report = verify_path(dir.path(), &key(), Some(&head)).unwrap();
        assert_eq!(report.records, 5);
        let torn = report.torn_tail.expect("torn tail reported");
        assert_eq!(
            (torn.offset, torn.len),
            (good.len() as u64, tail.len() as u64)
        );

        let sink = FileSink::open(dir.path()).unwrap();
        assert_eq!(sink.head(), Some(head));
        let recovery = sink.recovery().expect("recovered");
        assert_eq!(recovery.path, file);
        assert_eq!(recovery.offset, good.len() as u64);
        assert_eq!(recovery.len, tail.len() as u64);
        drop(sink);
        assert_eq!(
            fs::read(&file).unwrap(),
            good,
            "cut back to the last good line"
        );
        let report = verify_path(dir.path(), &key(), Some(&head)).unwrap();
        assert_eq!(report.torn_tail, None);
    }
    // The chain goes on from the last good record.
    let head = append(dir.path(), u64::MAX, 6, 8).await;
    assert_eq!(head.seq, 8);
    verify_path(dir.path(), &key(), Some(&head)).unwrap();
}

#[tokio::test]
async fn audit_complete_garbage_lines_at_the_end_are_damage_kept_on_open() {
    let dir = TempDir::new("garbage-end");
    let head = append(dir.path(), u64::MAX, 1, 4).await;
    let file = dir.join("audit-000001.jsonl");
    let good = fs::read(&file).unwrap();
    let garbage = b"{\"seq\":5,\"ts_\n";
    append_bytes(&file, garbage);
    append_bytes(&file, b"\0\0\0\n{\"half");
    // A complete line that is not a record is damage to the verifier, and says what it is...
    let err = verify_path(dir.path(), &key(), Some(&head)).unwrap_err();
    assert_eq!(
        err.damage(),
        Some(VerifyError {
            seq: 5,
            kind: VerifyErrorKind::Unreadable
        })
    );
    assert!(err.to_string().contains("not a readable record"), "{err}");
    // ...and recovery cuts only the torn tail (from the line with the zero bytes), never a
    // complete line: the evidence stays for the verifier.
    let sink = FileSink::open(dir.path()).unwrap();
    assert_eq!(sink.head(), Some(head));
    let torn = sink.recovery().expect("the zero-filled tail is cut");
    assert_eq!(torn.offset, (good.len() + garbage.len()) as u64);
    drop(sink);
    assert_eq!(fs::read(&file).unwrap(), [&good[..], &garbage[..]].concat());
    assert_eq!(check(dir.path(), &head), (5, VerifyErrorKind::Unreadable));
}

#[tokio::test]
async fn audit_a_zero_filled_page_after_power_loss_is_a_torn_tail() {
    let dir = TempDir::new("zero-page");
    let head = append(dir.path(), u64::MAX, 1, 5).await;
    let file = dir.join("audit-000001.jsonl");
    let good = fs::read(&file).unwrap();
    let last_line = fs::read_to_string(&file)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned();
    // The unsynced batch after record 5: its first page never reached the disk (reads as zeros),
    // the page after it did, ending in complete lines.
    let mut tail = vec![0u8; 4096];
    tail.extend_from_slice(b"\",\"hash\":\"00\"}\n");
    tail.extend_from_slice(last_line.as_bytes());
    tail.push(b'\n');
    append_bytes(&file, &tail);

    let report = verify_path(dir.path(), &key(), Some(&head)).expect("a torn tail, not damage");
    assert_eq!(report.records, 5);
    let torn = report.torn_tail.expect("reported");
    assert_eq!(
        (torn.offset, torn.len),
        (good.len() as u64, tail.len() as u64)
    );

    let sink = FileSink::open(dir.path()).unwrap();
    assert_eq!(sink.head(), Some(head));
    assert_eq!(sink.recovery().map(|t| t.len), Some(tail.len() as u64));
    drop(sink);
    assert_eq!(fs::read(&file).unwrap(), good);
    let head = append(dir.path(), u64::MAX, 6, 7).await;
    verify_path(dir.path(), &key(), Some(&head)).unwrap();
}

#[tokio::test]
async fn audit_records_the_reader_cannot_read_are_refused_and_counted() {
    let dir = TempDir::new("too-deep");
    let sink = FileSink::open(dir.path()).unwrap();
    let audit = Audit::builder().key(key()).sink(sink).build().unwrap();
    let mut deep = serde_json::json!(1);
    for _ in 0..200 {
        deep = serde_json::json!([deep]);
    }
    audit.record(event(1));
    audit.record(
        AuditEvent::new("chaos.injected")
            .tenant("acme")
            .detail("deep", deep),
    );
    let mut fine = serde_json::json!(1);
    for _ in 0..palisade_core::audit::MAX_DETAILS_DEPTH - 1 {
        fine = serde_json::json!([fine]);
    }
    audit.record(AuditEvent::new("deep.but.fine").details(fine));
    audit.flush().await.expect("acknowledged");
    let head = audit.head().unwrap();
    assert_eq!(head.seq, 3);
    assert_eq!(audit.dropped_total(), 1, "the refused event is counted");

    // What the writer acknowledged, the reader reads back.
    let report = verify_path(dir.path(), &key(), Some(&head)).expect("verifies");
    assert_eq!(report.records, 3);
    drop(audit);
    let sink = FileSink::open(dir.path()).unwrap();
    assert_eq!(sink.recovery(), None);
    assert_eq!(sink.head(), Some(head));
    let files = read_files(dir.path());
    let refused = record_at(&files, 2);
    assert_eq!(refused.kind, palisade_core::audit::REFUSED_KIND);
    assert_eq!(refused.tenant.as_deref(), Some("acme"));
    assert_eq!(refused.details["kind"], "chaos.injected");
    assert!(refused.details["reason"]
        .as_str()
        .unwrap()
        .contains("nest deeper than"));
    assert_eq!(record_at(&files, 3).kind, "deep.but.fine");
}

#[tokio::test]
async fn audit_damage_before_the_last_record_is_left_alone_on_open() {
    let dir = TempDir::new("mid-damage");
    let head = append(dir.path(), u64::MAX, 1, 5).await;
    let mut files = read_files(dir.path());
    files[0].1[2] = "not a record".to_owned();
    write_files(&files);
    let before = fs::read(&files[0].0).unwrap();
    let sink = FileSink::open(dir.path()).unwrap();
    assert_eq!(sink.head(), Some(head));
    assert_eq!(sink.recovery(), None);
    drop(sink);
    assert_eq!(fs::read(&files[0].0).unwrap(), before);
    assert_eq!(check(dir.path(), &head), (3, VerifyErrorKind::Unreadable));
}

#[tokio::test]
async fn audit_crash_right_after_rotation_resumes_from_the_previous_file() {
    let dir = TempDir::new("rotation-crash");
    let head = rotated_log(dir.path(), 12).await;
    let files = segments(dir.path());
    let next = dir.join(&format!("audit-{:06}.jsonl", files.len() + 1));
    for content in [&b""[..], b"{\"seq\":13,\"ts_ms\":1"] {
        fs::write(&next, content).unwrap();
        let report = verify_path(dir.path(), &key(), Some(&head)).unwrap();
        assert_eq!(report.records, 12);
        let sink = FileSink::builder(dir.path())
            .max_file_size(1024)
            .open()
            .unwrap();
        assert_eq!(sink.head(), Some(head), "head from the file before");
        assert_eq!(sink.current_file(), next);
        assert_eq!(sink.recovery().is_some(), !content.is_empty());
        assert_eq!(fs::metadata(&next).unwrap().len(), 0);
    }
    let head = append(dir.path(), 1024, 13, 20).await;
    let files = read_files(dir.path());
    assert_eq!(record_at(&files, 13).prev, record_at(&files, 12).hash);
    assert_eq!(
        verify_path(dir.path(), &key(), Some(&head))
            .unwrap()
            .records,
        20
    );
}

// ---------------------------------------------------------------------------------------------
// Rotation and tampering
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn audit_rotation_keeps_the_chain_across_files() {
    let dir = TempDir::new("rotation");
    let head = rotated_log(dir.path(), 30).await;
    let files = read_files(dir.path());
    assert!(files.len() >= 3, "{} files", files.len());
    for (i, (path, lines)) in files.iter().enumerate() {
        assert_eq!(
            path.file_name().unwrap().to_str().unwrap(),
            format!("audit-{:06}.jsonl", i + 1)
        );
        assert!(!lines.is_empty());
        assert!(fs::metadata(path).unwrap().len() <= 1024 || lines.len() == 1);
    }
    // The first record of each file commits to the last hash of the one before.
    let mut seq = 0;
    for (_, lines) in &files[..files.len() - 1] {
        seq += lines.len() as u64;
        assert_eq!(record_at(&files, seq + 1).prev, record_at(&files, seq).hash);
    }
    let report = verify_path(dir.path(), &key(), Some(&head)).unwrap();
    assert_eq!(report.records, 30);
    assert_eq!(report.files, segments(dir.path()));
}

#[tokio::test]
async fn audit_every_flipped_byte_is_found_at_its_record() {
    let dir = TempDir::new("flip");
    let head = rotated_log(dir.path(), 30).await;
    let original = read_files(dir.path());
    let mut rng = Rng::seeded(0xF11F);
    for _ in 0..300 {
        let seq = 1 + rng.below(30);
        let (f, l) = locate(&original, seq);
        let line = &original[f].1[l];
        let pos = rng.below(line.len() as u64 + 1) as usize; // len: the newline
        let mut bytes = line.clone().into_bytes();
        bytes.push(b'\n');
        let flipped = bytes[pos] ^ 1;
        bytes[pos] = flipped;

        let files = &original;
        let mut text = Vec::new();
        for (i, other) in files[f].1.iter().enumerate() {
            if i == l {
                text.extend_from_slice(&bytes);
            } else {
                text.extend_from_slice(other.as_bytes());
                text.push(b'\n');
            }
        }
        fs::write(&files[f].0, &text).unwrap();

        let hash_at = line.rfind("\"hash\":\"").unwrap() + 8;
        let expected = if pos == line.len() && seq == 30 {
            // The last newline gone: the last record looks torn and is ignored, so the log no
            // longer reaches the head.
            VerifyErrorKind::Truncated
        } else if pos == line.len()
            || serde_json::from_slice::<AuditRecord>(&bytes[..line.len()]).is_err()
        {
            // The line no longer parses (or, its newline gone, runs into the next one).
            VerifyErrorKind::Unreadable
        } else if (hash_at..hash_at + 64).contains(&pos) && flipped.is_ascii_hexdigit() {
            VerifyErrorKind::Forged
        } else {
            VerifyErrorKind::Modified
        };
        assert_eq!(
            check(dir.path(), &head),
            (seq, expected),
            "byte {pos} of record {seq}: {:?} -> {:?}",
            line.as_bytes().get(pos).map(|&b| b as char),
            flipped as char
        );
        write_files(&original[f..=f]);
    }
}

#[tokio::test]
async fn audit_tampering_is_found_at_the_right_sequence_number() {
    let dir = TempDir::new("tamper");
    let head = rotated_log(dir.path(), 30).await;
    let original = read_files(dir.path());
    let tamper = |edit: &dyn Fn(&mut Files)| {
        let mut files = original.clone();
        edit(&mut files);
        write_files(&original);
        for (path, _) in &original {
            if !files.iter().any(|(p, _)| p == path) {
                fs::remove_file(path).unwrap();
            }
        }
        write_files(&files);
        let found = verify_path(dir.path(), &key(), Some(&head));
        // Without the head, only tampering at the end goes unnoticed.
        let without_head = verify_path(dir.path(), &key(), None);
        write_files(&original);
        (
            damage(found),
            without_head.map(|_| ()).map_err(|e| e.damage()),
        )
    };
    let edit_record =
        |files: &mut Files, seq: u64, edit: &dyn Fn(&mut AuditRecord, &mut String)| {
            let (f, l) = locate(files, seq);
            let mut record: AuditRecord = serde_json::from_str(&files[f].1[l]).unwrap();
            let mut line = files[f].1[l].clone();
            edit(&mut record, &mut line);
            files[f].1[l] = line;
        };

    // An edited detail, checksum not fixed up.
    let (found, _) = tamper(&|files| {
        edit_record(files, 7, &|_, line| {
            *line = line.replacen("\"n\":7", "\"n\":8", 1)
        })
    });
    assert_eq!(found, (7, VerifyErrorKind::Modified));

    // An edited sequence number is reported at the record's place, not the number it claims.
    let (found, _) = tamper(&|files| {
        edit_record(files, 8, &|_, line| {
            *line = line.replacen("\"seq\":8", "\"seq\":9", 1)
        })
    });
    assert_eq!(found, (8, VerifyErrorKind::Modified));

    // A line that is not a record at all; an empty line.
    let (found, _) = tamper(&|files| {
        let (f, l) = locate(files, 9);
        files[f].1[l] = "{\"seq\":9}".to_owned();
    });
    assert_eq!(found, (9, VerifyErrorKind::Unreadable));
    let (found, _) = tamper(&|files| {
        let (f, l) = locate(files, 5);
        files[f].1.insert(l, String::new());
    });
    assert_eq!(found, (5, VerifyErrorKind::Unreadable));

    // Deleted lines: in the middle of a file, and the first of a file.
    let (found, _) = tamper(&|files| {
        let (f, l) = locate(files, 11);
        files[f].1.remove(l);
    });
    assert_eq!(found, (11, VerifyErrorKind::Removed));
    let first_of_second = original[0].1.len() as u64 + 1;
    let (found, _) = tamper(&|files| {
        files[1].1.remove(0);
    });
    assert_eq!(found, (first_of_second, VerifyErrorKind::Removed));

    // Swapped lines, within a file and across two files.
    let (found, _) = tamper(&|files| {
        let (f, l) = locate(files, 12);
        let (g, m) = locate(files, 13);
        let a = files[f].1[l].clone();
        files[f].1[l] = std::mem::replace(&mut files[g].1[m], a);
    });
    assert_eq!(found, (12, VerifyErrorKind::Reordered));
    let last_of_first = original[0].1.len() as u64;
    let (found, _) = tamper(&|files| {
        let a = files[0].1.pop().unwrap();
        let b = std::mem::replace(&mut files[1].1[0], a);
        files[0].1.push(b);
    });
    assert_eq!(found, (last_of_first, VerifyErrorKind::Reordered));

    // A forged record: edited, checksum recomputed, but the keyed hash cannot be.
    let (found, _) = tamper(&|files| {
        edit_record(files, 15, &|record, line| {
            record.tenant = Some("mallory".into());
            record.checksum = *blake3::hash(&record.canonical_content()).as_bytes();
            *line = serde_json::to_string(record).unwrap();
        })
    });
    assert_eq!(found, (15, VerifyErrorKind::Forged));
    // A made-up record inserted between two real ones, and one signed with another key.
    let (found, _) = tamper(&|files| {
        let mut fake = record_at(files, 16);
        fake.kind = "gate.level_changed".into();
        fake.checksum = *blake3::hash(&fake.canonical_content()).as_bytes();
        fake.hash = *blake3::keyed_hash(&[0x66; 32], &fake.canonical_content()).as_bytes();
        let (f, l) = locate(files, 16);
        files[f].1.insert(l, serde_json::to_string(&fake).unwrap());
    });
    assert_eq!(found, (16, VerifyErrorKind::Forged));

    // The tail cut off: found only against the head.
    let (found, without_head) = tamper(&|files| {
        let last = files.last_mut().unwrap();
        last.1.truncate(last.1.len().saturating_sub(2));
    });
    let cut = 30 - 2.min(original.last().unwrap().1.len() as u64);
    assert_eq!(found, (cut + 1, VerifyErrorKind::Truncated));
    assert_eq!(without_head, Ok(()));

    // A middle file deleted; the first file deleted; the last file deleted.
    let (found, _) = tamper(&|files| {
        files.remove(1);
    });
    assert_eq!(found, (first_of_second, VerifyErrorKind::Removed));
    let (found, without_head) = tamper(&|files| {
        files.remove(0);
    });
    assert_eq!(found, (1, VerifyErrorKind::Removed));
    assert_eq!(
        without_head,
        Err(Some(VerifyError {
            seq: 1,
            kind: VerifyErrorKind::Removed
        }))
    );
    let (found, without_head) = tamper(&|files| {
        files.pop();
    });
    let before_last = 30 - original.last().unwrap().1.len() as u64;
    assert_eq!(found, (before_last + 1, VerifyErrorKind::Truncated));
    assert_eq!(without_head, Ok(()));
}

#[tokio::test]
async fn audit_pieces_of_another_chain_are_spliced() {
    let dir = TempDir::new("splice");
    let other = TempDir::new("splice-other");
    let head = append(dir.path(), u64::MAX, 1, 10).await;
    // Another log with the same key whose records differ.
    append(other.path(), u64::MAX, 101, 110).await;
    let mut files = read_files(dir.path());
    let theirs = read_files(other.path());
    files[0].1[5] = theirs[0].1[5].clone(); // their record 6
    write_files(&files);
    assert_eq!(check(dir.path(), &head), (6, VerifyErrorKind::Spliced));
}

#[tokio::test]
async fn audit_archived_files_verify_from_a_kept_anchor() {
    let dir = TempDir::new("archive");
    let head = rotated_log(dir.path(), 30).await;
    let files = read_files(dir.path());
    let first_count = files[0].1.len() as u64;
    let anchor = record_at(&files, first_count).head();
    fs::remove_file(&files[0].0).unwrap();
    assert_eq!(check(dir.path(), &head), (1, VerifyErrorKind::Removed));
    let report = verify_path_from(&anchor, dir.path(), &key(), Some(&head)).unwrap();
    assert_eq!(report.records, 30 - first_count);
    assert_eq!(report.anchor, anchor);
    // A single later file, from the head of the file before it.
    let report = verify_path_from(&anchor, &files[1].0, &key(), None).unwrap();
    assert_eq!(report.records, files[1].1.len() as u64);
    // With the wrong key every record is forged.
    let wrong = AuditKey::from_bytes([1; 32]);
    let err = verify_path_from(&anchor, dir.path(), &wrong, None).unwrap_err();
    assert_eq!(
        err.damage(),
        Some(VerifyError {
            seq: first_count + 1,
            kind: VerifyErrorKind::Forged
        })
    );
    assert!(
        err.to_string().contains("audit-000002.jsonl line 1"),
        "{err}"
    );
}

#[test]
fn audit_unreadable_paths_are_io_errors() {
    let dir = TempDir::new("io");
    let missing = verify_path(dir.path(), &key(), None).unwrap_err();
    assert!(matches!(missing, VerifyPathError::Io { .. }), "{missing:?}");
    fs::create_dir_all(dir.path()).unwrap();
    fs::write(dir.join("notes.txt"), "not a log").unwrap();
    let empty = verify_path(dir.path(), &key(), None).unwrap_err();
    assert!(empty.to_string().contains("no audit log files"), "{empty}");
    assert_eq!(empty.damage(), None);
}

// ---------------------------------------------------------------------------------------------
// Failures are fatal
// ---------------------------------------------------------------------------------------------

/// Writes fail with ENOSPC: the log's file is a symlink to `/dev/full`.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn audit_write_failure_is_fatal_and_reported_to_health() {
    if !Path::new("/dev/full").exists() {
        eprintln!("no /dev/full; skipped");
        return;
    }
    let dir = TempDir::new("dev-full");
    fs::create_dir_all(dir.path()).unwrap();
    std::os::unix::fs::symlink("/dev/full", dir.join("audit-000001.jsonl")).unwrap();
    let health = Health::new();
    let component = health.register("audit.log", ComponentKind::Readiness);
    let sink = FileSink::builder(dir.path())
        .health(component.clone())
        .open()
        .unwrap();
    assert_eq!(sink.head(), None);
    let audit = Audit::builder().key(key()).sink(sink).build().unwrap();
    audit.record(event(1));
    let error = audit.flush().await.unwrap_err();
    assert!(matches!(error, AuditError::Sink(_)), "{error:?}");
    let io_error = std::error::Error::source(&error)
        .and_then(|e| e.downcast_ref::<io::Error>())
        .expect("an io::Error");
    assert_eq!(
        io_error.kind(),
        io::ErrorKind::StorageFull,
        "ENOSPC: {io_error}"
    );
    assert!(audit.failed());
    assert_eq!(audit.head(), None, "nothing acknowledged");
    assert_eq!(component.state(), HealthState::Unhealthy);
    assert!(
        component.reason().unwrap().contains("write"),
        "{:?}",
        component.reason()
    );
    assert_eq!(health.readiness().status(), HealthState::Unhealthy);
    // Never retried: later events are dropped, flushes keep failing.
    audit.record(event(2));
    assert!(audit.flush().await.is_err());
    assert_eq!(audit.dropped_total(), 2);
}

#[tokio::test]
async fn audit_rotation_failure_is_fatal_and_earlier_records_stay_acknowledged() {
    let dir = TempDir::new("rotate-fail");
    let health = Health::new();
    let component = health.register("audit.log", ComponentKind::Both);
    let sink = FileSink::builder(dir.path())
        .max_file_size(1024)
        .health(component.clone())
        .open()
        .unwrap();
    // The next file's name is taken (by a directory), so creating it fails.
    fs::create_dir(dir.join("audit-000002.jsonl")).unwrap();
    let audit = Audit::builder().key(key()).sink(sink).build().unwrap();
    audit.record(event(1));
    audit.flush().await.unwrap();
    let acknowledged = audit.head().unwrap();
    for i in 2..=20 {
        audit.record(event(i));
    }
    let error = audit.flush().await.unwrap_err();
    assert!(error.to_string().contains("create"), "{error}");
    assert_eq!(audit.head(), Some(acknowledged));
    assert_eq!(component.state(), HealthState::Unhealthy);
    assert!(health.liveness().status() == HealthState::Unhealthy);
    let report = verify_path(dir.join("audit-000001.jsonl"), &key(), Some(&acknowledged)).unwrap();
    assert!(report.records >= 1);
}

// ---------------------------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn audit_cli_exit_codes() {
    let dir = TempDir::new("cli");
    let head = rotated_log(&dir.join("log"), 20).await;
    let hex_key = dir.join("key.hex");
    fs::write(&hex_key, format!("{}\n", "42".repeat(32))).unwrap();
    let raw_key = dir.join("key.bin");
    fs::write(&raw_key, KEY_BYTES).unwrap();
    let log = dir.join("log");
    let log = log.to_str().unwrap();
    let head_arg = head.to_string();
    let run = |args: &[&str]| cli_verify(args.iter().copied());

    let (code, message) = run(&["verify", log, "--key-file", hex_key.to_str().unwrap()]);
    assert_eq!(code, 0, "{message}");
    assert!(message.starts_with("OK: 20 records"), "{message}");
    assert!(message.contains(&head_arg), "{message}");
    assert!(message.contains("without --head"), "{message}");
    let (code, message) = run(&[
        "verify",
        log,
        "--key-file",
        raw_key.to_str().unwrap(),
        "--head",
        &head_arg,
    ]);
    assert_eq!(code, 0, "{message}");
    assert!(!message.contains("without --head"), "{message}");

    // Tampered: exit 1 with the first bad seq and the kind.
    let mut files = read_files(Path::new(log));
    let (f, l) = locate(&files, 7);
    files[f].1[l] = files[f].1[l].replacen("breaker.opened", "breaker.closed", 1);
    write_files(&files);
    let (code, message) = run(&["verify", log, "--key-file", hex_key.to_str().unwrap()]);
    assert_eq!(code, 1, "{message}");
    assert!(
        message.starts_with("DAMAGED: first bad seq 7: modified"),
        "{message}"
    );
    assert!(message.contains("line"), "{message}");

    // Truncated against the head: exit 1 too.
    let mut files = read_files(Path::new(log));
    files[f].1[l] = files[f].1[l].replacen("breaker.closed", "breaker.opened", 1);
    files.last_mut().unwrap().1.pop();
    write_files(&files);
    let (code, message) = run(&[
        "verify",
        log,
        "--key-file",
        hex_key.to_str().unwrap(),
        "--head",
        &head_arg,
    ]);
    assert_eq!(code, 1, "{message}");
    assert!(message.contains("seq 20: truncated"), "{message}");

    // A torn tail is a note, not damage.
    let last = &files.last().unwrap().0;
    append_bytes(last, b"{\"seq\":20,");
    let (code, message) = run(&["verify", log, "--key-file", hex_key.to_str().unwrap()]);
    assert_eq!(code, 0, "{message}");
    assert!(message.contains("torn last line (10 bytes"), "{message}");

    // Missing or bad key, missing log, bad head: exit 2.
    let missing_key = dir.join("nope");
    let (code, message) = run(&["verify", log, "--key-file", missing_key.to_str().unwrap()]);
    assert_eq!(code, 2, "{message}");
    assert!(message.contains("key file"), "{message}");
    let bad_key = dir.join("bad.key");
    fs::write(&bad_key, "not a key").unwrap();
    let (code, message) = run(&["verify", log, "--key-file", bad_key.to_str().unwrap()]);
    assert_eq!(code, 2, "{message}");
    assert!(
        message.contains("32 raw bytes or 64 hex digits"),
        "{message}"
    );
    let no_log = dir.join("no-log");
    let (code, message) = run(&[
        "verify",
        no_log.to_str().unwrap(),
        "--key-file",
        hex_key.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{message}");
    let (code, message) = run(&[
        "verify",
        log,
        "--key-file",
        hex_key.to_str().unwrap(),
        "--head",
        "twenty",
    ]);
    assert_eq!(code, 2, "{message}");
    assert!(message.contains("usage:"), "{message}");
}

// ---------------------------------------------------------------------------------------------
// kill -9
// ---------------------------------------------------------------------------------------------

const CHILD_DIR: &str = "PALISADE_AUDIT_CHILD_DIR";
const CHILD_SEED: &str = "PALISADE_AUDIT_CHILD_SEED";
const CHILD_MAX_FILE_SIZE: u64 = 64 * 1024;

/// The writer process of `audit_kill_9_mid_stream_keeps_every_acknowledged_record`; does nothing unless
/// started by it (see the module docs).
#[test]
fn audit_child_writer() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let seed = std::env::var(CHILD_SEED)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut rng = Rng::seeded(seed);
        let sink = FileSink::builder(PathBuf::from(dir))
            .max_file_size(CHILD_MAX_FILE_SIZE)
            .open()
            .expect("child: open");
        let audit = Audit::builder()
            .key(key())
            .sink(sink)
            .queue_capacity(4096)
            .max_batch(1 + rng.below(64) as usize)
            .build()
            .unwrap();
        let mut out = io::stdout().lock();
        let mut n = 0u64;
        // Bounded, in case the parent goes away without killing us (then stdout fails first).
        while n < 200_000 {
            for _ in 0..1 + rng.below(16) {
                n += 1;
                let pad = "p".repeat(rng.below(1500) as usize);
                audit.record(event(n).detail("pad", pad));
            }
            audit.flush().await.expect("child: flush");
            let head = audit.head().expect("child: head");
            if writeln!(out, "\nACK {head}")
                .and_then(|()| out.flush())
                .is_err()
            {
                return;
            }
        }
    });
}

fn parse_ack(line: &str) -> Option<Head> {
    line.split_once("ACK ")?.1.parse().ok()
}

#[test]
fn audit_kill_9_mid_stream_keeps_every_acknowledged_record() {
    let rounds: u64 = std::env::var("PALISADE_KILL9_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let exe = std::env::current_exe().unwrap();
    let dir = TempDir::new("kill9");
    let mut rng = Rng::seeded(0x0009_1111);
    let mut acknowledged: Option<Head> = None;
    let mut recovered_rounds = 0;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "audit_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_SEED, rng.next_u64().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the child writer");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Kill at a random moment: after a random number of acknowledgements.
        let target = 1 + rng.below(40);
        let mut seen = 0;
        let mut last_ack = None;
        for line in lines.by_ref() {
            if let Some(head) = parse_ack(&line.unwrap()) {
                assert!(last_ack.is_none_or(|h: Head| h.seq <= head.seq));
                last_ack = Some(head);
                seen += 1;
                if seen == target {
                    break;
                }
            }
        }
        child.kill().expect("kill -9"); // SIGKILL on Unix
        let status = child.wait().unwrap();
        // Acknowledgements printed before it died count too.
        for line in lines {
            if let Some(head) = parse_ack(&line.unwrap()) {
                last_ack = Some(head);
            }
        }
        assert_eq!(
            seen, target,
            "round {round}: the child died early ({status})"
        );
        let last_ack = last_ack.unwrap();
        if let Some(before) = acknowledged {
            assert!(last_ack.seq > before.seq, "round {round}");
        }
        acknowledged = Some(last_ack);

        // Every acknowledged record is there and intact; a torn tail is ignored...
        let report = verify_path(dir.path(), &key(), Some(&last_ack))
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(report.head.seq >= last_ack.seq);
        // ...and cut off on reopening, which resumes from the last complete record.
        let sink = FileSink::builder(dir.path())
            .max_file_size(CHILD_MAX_FILE_SIZE)
            .open()
            .unwrap();
        assert_eq!(sink.head(), Some(report.head), "round {round}");
        if sink.recovery().is_some() {
            recovered_rounds += 1;
        }
        drop(sink);
        let report = verify_path(dir.path(), &key(), Some(&last_ack)).unwrap();
        assert_eq!(report.torn_tail, None);
    }
    eprintln!(
        "kill -9: {rounds} rounds, {recovered_rounds} with a torn tail cut, head {:?}",
        acknowledged.map(|h| h.seq)
    );

    // The chain went on through every crash; one more writer continues it.
    let head = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(append(
            dir.path(),
            CHILD_MAX_FILE_SIZE,
            1_000_001,
            1_000_003,
        ));
    let report = verify_path(dir.path(), &key(), Some(&head)).unwrap();
    assert_eq!(report.head, head);
    assert!(report.files.len() > 1, "the children rotated files");
}
