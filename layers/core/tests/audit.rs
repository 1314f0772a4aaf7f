//! Integration tests of the audit log: the chain, tampering detection, never blocking, sinks.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use palisade_core::audit::{
    verify, verify_from, Audit, AuditError, AuditEvent, AuditKey, AuditRecord, AuditSink, Head,
    MemorySink, VerifyError, VerifyErrorKind, DROPPED_KIND,
};
use serde_json::{json, Value};

fn key() -> AuditKey {
    AuditKey::derive("palisade audit tests", b"test key material")
}

fn event(n: u64) -> AuditEvent {
    let e = AuditEvent::new("breaker.opened")
        .detail("n", n)
        .detail("failures", n * 3);
    if n % 2 == 0 {
        e.tenant(format!("tenant-{n}"))
    } else {
        e
    }
}

/// A flushed log of `n` records written with `key`, and its head. Logs of different `variant`s
/// differ in every record.
async fn log_with(key: AuditKey, n: u64, variant: &'static str) -> (Vec<AuditRecord>, Head) {
    let (audit, ring) = Audit::memory_with_key(key, 10_000);
    for i in 1..=n {
        audit.record(event(i).detail("variant", variant));
    }
    audit.flush().await.expect("flush");
    let head = audit.head().expect("head");
    (ring.records(), head)
}

async fn log(n: u64) -> (Vec<AuditRecord>, Head) {
    log_with(key(), n, "main").await
}

fn err(seq: u64, kind: VerifyErrorKind) -> Result<(), VerifyError> {
    Err(VerifyError { seq, kind })
}

fn check(records: &[AuditRecord], head: Option<&Head>) -> Result<(), VerifyError> {
    verify(records, &key(), head).map(|_| ())
}

#[tokio::test]
async fn append_then_verify_round_trip() {
    let (records, head) = log(20).await;
    assert_eq!(records.len(), 20);
    let mut prev = [0u8; 32];
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
        assert_eq!(r.prev, prev, "record {} links to the previous one", r.seq);
        assert_eq!(r.kind, "breaker.opened");
        assert_eq!(r.details["n"], json!(r.seq));
        assert_eq!(r.tenant.is_some(), r.seq % 2 == 0);
        assert!(r.ts_ms > 1_600_000_000_000, "wall-clock ms: {}", r.ts_ms);
        assert!(r.timestamp().ends_with('Z'));
        prev = r.hash;
    }
    assert_eq!(head, records[19].head());
    assert_eq!(head.seq, 20);

    let report = verify(&records, &key(), Some(&head)).expect("valid log");
    assert_eq!(report.records, 20);
    assert_eq!(report.head, Some(head));
    assert_eq!(report.anchor, Some(Head::GENESIS));
    let report = verify_from(&Head::GENESIS, &records, &key(), Some(&head)).expect("from genesis");
    assert_eq!(report.records, 20);
}

#[tokio::test]
async fn records_round_trip_through_json_lines_and_still_verify() {
    let (audit, ring) = Audit::memory_with_key(key(), 100);
    audit.record(
        AuditEvent::new("gate.level_changed")
            .tenant("ácmé \u{1F980} \"quoted\"\n")
            .detail("from", 0.1)
            .detail("to", 1.947_700_395_895_162e-169)
            .detail("big", u64::MAX)
            .detail("neg", -42)
            .detail("nested", json!({"z": [1, 2.5, null, true], "a": "b"})),
    );
    audit.record(AuditEvent::new("chaos.injected").details(json!([1, "two"])));
    audit.record(AuditEvent::new("plain").details(Value::Null));
    audit.flush().await.unwrap();
    let head = audit.head().unwrap();

    let lines: Vec<String> = ring
        .records()
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    let first: Value = serde_json::from_str(&lines[0]).unwrap();
    for field in ["prev", "checksum", "hash"] {
        let hex = first[field].as_str().expect("hash fields are strings");
        assert_eq!(hex.len(), 64);
        assert!(hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }
    assert_eq!(first["prev"], "0".repeat(64));
    assert_eq!(first["details"]["from"], 0.1);

    let back: Vec<AuditRecord> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(back, ring.records());
    let report = verify(&back, &key(), Some(&head)).expect("JSON round trip still verifies");
    assert_eq!(report.records, 3);

    let head_json = serde_json::to_string(&head).unwrap();
    assert_eq!(serde_json::from_str::<Head>(&head_json).unwrap(), head);
    assert_eq!(head.to_string().parse::<Head>().unwrap(), head);

    // Unknown fields are refused: they would not be covered by the hashes.
    let mut extra: Value = serde_json::from_str(&lines[0]).unwrap();
    extra["injected"] = json!(1);
    assert!(serde_json::from_value::<AuditRecord>(extra).is_err());
}

#[tokio::test]
async fn modified_record_is_found_at_its_seq() {
    let (records, head) = log(10).await;

    let mut tenant = records.clone();
    tenant[4].tenant = Some("mallory".into());
    assert_eq!(
        check(&tenant, Some(&head)),
        err(5, VerifyErrorKind::Modified)
    );

    let mut details = records.clone();
    details[6].details["failures"] = json!(0);
    assert_eq!(
        check(&details, Some(&head)),
        err(7, VerifyErrorKind::Modified)
    );

    let mut removed_tenant = records.clone();
    removed_tenant[1].tenant = None;
    assert_eq!(
        check(&removed_tenant, None),
        err(2, VerifyErrorKind::Modified)
    );

    let mut ts = records.clone();
    ts[8].ts_ms -= 1;
    assert_eq!(check(&ts, None), err(9, VerifyErrorKind::Modified));

    let mut kind = records.clone();
    kind[0].kind = "breaker.closed".into();
    assert_eq!(check(&kind, None), err(1, VerifyErrorKind::Modified));

    let mut bitrot = records.clone();
    bitrot[3].checksum[0] ^= 1;
    assert_eq!(check(&bitrot, None), err(4, VerifyErrorKind::Modified));

    // Changing a record's seq (to hide a gap) is a modification of that record.
    let mut seq = records.clone();
    seq.remove(5);
    seq[5].seq = 6;
    assert_eq!(check(&seq, None), err(6, VerifyErrorKind::Modified));

    // The first bad record is reported, not a later one.
    let mut two = records;
    two[2].tenant = Some("x".into());
    two[7].tenant = Some("y".into());
    assert_eq!(check(&two, None), err(3, VerifyErrorKind::Modified));
}

#[tokio::test]
async fn removed_record_is_found_at_its_seq() {
    let (records, head) = log(10).await;

    let mut one = records.clone();
    one.remove(5); // seq 6
    assert_eq!(check(&one, Some(&head)), err(6, VerifyErrorKind::Removed));
    assert_eq!(check(&one, None), err(6, VerifyErrorKind::Removed));

    let mut three = records.clone();
    three.drain(2..5); // seqs 3, 4, 5
    assert_eq!(check(&three, None), err(3, VerifyErrorKind::Removed));

    // The front of a log is only checked from an anchor.
    let front = &records[1..];
    assert!(check(front, Some(&head)).is_ok(), "a window is a valid log");
    assert_eq!(
        verify_from(&Head::GENESIS, front, &key(), Some(&head)).map(|_| ()),
        err(1, VerifyErrorKind::Removed)
    );
    assert_eq!(
        verify_from(&records[4].head(), &records[6..], &key(), None).map(|_| ()),
        err(6, VerifyErrorKind::Removed)
    );
}

#[tokio::test]
async fn reordered_records_are_found_at_the_first_displaced_seq() {
    let (records, head) = log(10).await;

    let mut swapped = records.clone();
    swapped.swap(3, 4); // seqs 4 and 5
    assert_eq!(
        check(&swapped, Some(&head)),
        err(4, VerifyErrorKind::Reordered)
    );

    let mut swapped_last = records.clone();
    swapped_last.swap(8, 9); // seqs 9 and 10
    assert_eq!(
        check(&swapped_last, Some(&head)),
        err(9, VerifyErrorKind::Reordered)
    );

    // Record 3 moved to the end.
    let mut moved = records.clone();
    let r3 = moved.remove(2);
    moved.push(r3);
    assert_eq!(check(&moved, None), err(3, VerifyErrorKind::Reordered));

    // Record 8 moved before record 2.
    let mut moved_back = records.clone();
    let r8 = moved_back.remove(7);
    moved_back.insert(1, r8);
    assert_eq!(check(&moved_back, None), err(2, VerifyErrorKind::Reordered));

    // A replayed record.
    let mut replayed = records.clone();
    replayed.insert(6, records[3].clone()); // seq 4 again after seq 6
    assert_eq!(check(&replayed, None), err(4, VerifyErrorKind::Reordered));

    // The whole log reversed.
    let mut reversed = records;
    reversed.reverse();
    assert_eq!(check(&reversed, None), err(9, VerifyErrorKind::Reordered));
}

#[tokio::test]
async fn forged_record_is_found_at_its_seq() {
    let (records, head) = log(10).await;
    let other = AuditKey::derive("palisade audit tests", b"attacker's guess");

    // Rewritten without the key: seq, prev and checksum are right, the keyed hash cannot be.
    let mut forged = records.clone();
    let r = &mut forged[5];
    r.details["failures"] = json!(0);
    let content = r.canonical_content();
    r.checksum = *blake3::hash(&content).as_bytes();
    r.hash = *blake3::keyed_hash(&[0x42; 32], &content).as_bytes();
    assert_eq!(check(&forged, Some(&head)), err(6, VerifyErrorKind::Forged));

    // A made-up record inserted with a consistent seq, prev and checksum.
    let mut inserted = records.clone();
    let mut fake = records[9].clone();
    fake.seq = 11;
    fake.prev = records[9].hash;
    let content = fake.canonical_content();
    fake.checksum = *blake3::hash(&content).as_bytes();
    inserted.push(fake);
    assert_eq!(
        check(&inserted, Some(&head)),
        err(11, VerifyErrorKind::Forged)
    );

    // A whole log made with another key: fails at its first record.
    let (other_log, other_head) = log_with(other.clone(), 3, "other").await;
    assert_eq!(
        check(&other_log, Some(&other_head)),
        err(1, VerifyErrorKind::Forged)
    );

    // Verifying with the wrong key: error at seq 1.
    assert_eq!(
        verify(&records, &other, Some(&head)).map(|_| ()),
        err(1, VerifyErrorKind::Forged)
    );
}

#[tokio::test]
async fn truncated_tail_is_found_against_the_head() {
    let (records, head) = log(10).await;
    let cut = &records[..7];
    assert!(
        check(cut, None).is_ok(),
        "the log alone cannot show truncation"
    );
    assert_eq!(check(cut, Some(&head)), err(8, VerifyErrorKind::Truncated));
    assert_eq!(check(&[], Some(&head)), err(1, VerifyErrorKind::Truncated));
    assert_eq!(
        verify_from(&records[2].head(), &[], &key(), Some(&head)).map(|_| ()),
        err(4, VerifyErrorKind::Truncated)
    );
    // A head kept earlier is fine with a log that went on.
    assert!(check(&records, Some(&records[4].head())).is_ok());

    // Cut and regrown: a log written again with the same key never holds the kept head.
    let (regrown, regrown_head) = log_with(key(), 12, "regrown").await;
    assert_eq!(
        check(&regrown, Some(&head)),
        err(10, VerifyErrorKind::Truncated)
    );
    assert_eq!(
        check(&records, Some(&regrown_head)),
        err(11, VerifyErrorKind::Truncated)
    );
    let mut same_length = records.clone();
    same_length.truncate(9);
    assert_eq!(
        check(&same_length, Some(&regrown_head)),
        err(10, VerifyErrorKind::Truncated)
    );
}

#[tokio::test]
async fn spliced_chains_are_found() {
    let (a, _) = log_with(key(), 10, "a").await;
    let (b, _) = log_with(key(), 10, "b").await;
    let spliced: Vec<AuditRecord> = a[..4].iter().chain(&b[4..]).cloned().collect();
    assert_eq!(check(&spliced, None), err(5, VerifyErrorKind::Spliced));
    assert_eq!(
        verify_from(&a[3].head(), &b[4..], &key(), None).map(|_| ()),
        err(5, VerifyErrorKind::Spliced)
    );
    assert!(verify_from(&a[3].head(), &a[4..], &key(), None).is_ok());
}

#[tokio::test]
async fn verify_error_displays_where_and_what() {
    let e = VerifyError {
        seq: 7,
        kind: VerifyErrorKind::Forged,
    };
    let text = e.to_string();
    assert!(text.contains('7') && text.contains("forged"), "{text}");
    let boxed: Box<dyn std::error::Error> = Box::new(e);
    assert!(boxed.to_string().contains("record 7"));
}

#[tokio::test]
async fn memory_audit_verifies_with_its_own_key() {
    let (audit, ring) = Audit::memory(100);
    audit.record(AuditEvent::new("a"));
    audit.record(AuditEvent::new("b").tenant("t"));
    audit.flush().await.unwrap();
    let head = audit.head().unwrap();
    let records = ring.records();
    assert_eq!(audit.verify(&records, Some(&head)).unwrap().records, 2);
    assert_eq!(
        verify(&records, &key(), None).map(|_| ()),
        err(1, VerifyErrorKind::Forged),
        "the random key is not the test key"
    );
    assert!(!format!("{audit:?}").is_empty());
}

#[tokio::test]
async fn drops_are_recorded_before_the_next_records() {
    // Current-thread runtime: the writer cannot run while this task records, so the queue (4) fills
    // and the remaining 96 events are dropped, deterministically.
    let (audit, ring) = {
        let ring = MemorySink::new(1000);
        let audit = Audit::builder()
            .key(key())
            .sink(ring.clone())
            .queue_capacity(4)
            .build()
            .unwrap();
        (audit, ring)
    };
    for i in 1..=100 {
        audit.record(event(i));
    }
    assert_eq!(audit.dropped_total(), 96);
    audit.flush().await.unwrap();
    let records = ring.records();
    let kinds: Vec<&str> = records.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            DROPPED_KIND,
            "breaker.opened",
            "breaker.opened",
            "breaker.opened",
            "breaker.opened"
        ]
    );
    assert_eq!(records[0].details, json!({"count": 96}));
    assert_eq!(records[0].tenant, None);
    assert_eq!(records[1].details["n"], 1);
    assert_eq!(records[4].details["n"], 4);
    check(&records, audit.head().as_ref()).unwrap();

    // The counter was reset: the next batch has no drop record.
    audit.record(event(101));
    audit.flush().await.unwrap();
    let records = ring.records();
    assert_eq!(records.len(), 6);
    assert_eq!(records[5].details["n"], 101);
    assert_eq!(audit.dropped_total(), 96);
    assert_eq!(audit.appended_total(), 6);
}

/// Sums (appended events, events reported in `audit.dropped` records).
fn account(records: &[AuditRecord]) -> (u64, u64) {
    let mut events = 0;
    let mut dropped = 0;
    for r in records {
        if r.kind == DROPPED_KIND {
            dropped += r.details["count"].as_u64().expect("count");
        } else {
            events += 1;
        }
    }
    (events, dropped)
}

/// A sink that holds every `append` until the test opens it: the slowest sink there is.
#[derive(Clone)]
struct GatedSink {
    ring: MemorySink,
    gate: Arc<(Mutex<bool>, Condvar)>,
    appends: Arc<AtomicUsize>,
}

impl GatedSink {
    fn new(capacity: usize) -> Self {
        GatedSink {
            ring: MemorySink::new(capacity),
            gate: Arc::new((Mutex::new(false), Condvar::new())),
            appends: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn open(&self) {
        *self.gate.0.lock().unwrap() = true;
        self.gate.1.notify_all();
    }
}

impl AuditSink for GatedSink {
    fn append(&mut self, batch: &[AuditRecord]) -> io::Result<()> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        let (open, cv) = &*self.gate;
        let mut open = open.lock().unwrap();
        while !*open {
            open = cv.wait(open).unwrap();
        }
        self.ring.append(batch)
    }
    // is_blocking() defaults to true: the writer runs this on the blocking pool.
}

/// Opens the gate even if the test fails, so the blocking pool can shut down.
struct OpenOnDrop(GatedSink);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

const TASKS: u64 = 8;
const PER_TASK: u64 = 10_000;

async fn flood(audit: &Audit) {
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let audit = audit.clone();
            tokio::spawn(async move {
                for i in 0..PER_TASK {
                    audit.record(
                        AuditEvent::new("flood")
                            .tenant("t")
                            .detail("n", t * PER_TASK + i),
                    );
                }
            })
        })
        .collect();
    let all = async {
        for task in tasks {
            task.await.expect("flood task");
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("record() must never block");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flood_against_a_stalled_sink_never_blocks_and_counts_drops() {
    let sink = GatedSink::new(1_000_000);
    let _open = OpenOnDrop(sink.clone());
    let audit = Audit::builder()
        .key(key())
        .sink(sink.clone())
        .queue_capacity(64)
        .max_batch(32)
        .build()
        .unwrap();

    flood(&audit).await; // completes while the sink is stuck in its first append
    let total = TASKS * PER_TASK;
    assert!(
        audit.dropped_total() >= total - 64 - 32,
        "at most one batch and a full queue got through: dropped {}",
        audit.dropped_total()
    );

    sink.open();
    audit.flush().await.unwrap();
    let records = sink.ring.records();
    let (events, dropped) = account(&records);
    assert!(dropped > 0);
    assert_eq!(
        events + dropped,
        total,
        "every event is appended or counted"
    );
    assert_eq!(dropped, audit.dropped_total());
    assert_eq!(audit.appended_total(), records.len() as u64);
    let report = verify(&records, &key(), audit.head().as_ref()).unwrap();
    assert_eq!(report.records, records.len() as u64);
    assert!(sink.appends.load(Ordering::SeqCst) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flood_against_a_running_writer_accounts_for_every_event() {
    let ring = MemorySink::new(1_000_000);
    let audit = Audit::builder()
        .key(key())
        .sink(ring.clone())
        .queue_capacity(64)
        .build()
        .unwrap();

    flood(&audit).await;
    audit.flush().await.unwrap();
    let records = ring.records();
    let (events, dropped) = account(&records);
    assert_eq!(events + dropped, TASKS * PER_TASK);
    assert_eq!(dropped, audit.dropped_total());
    verify(&records, &key(), audit.head().as_ref()).unwrap();
    // Each task's events keep their relative order.
    let mut last = vec![None; TASKS as usize];
    for r in records.iter().filter(|r| r.kind == "flood") {
        let n = r.details["n"].as_u64().unwrap();
        let t = (n / PER_TASK) as usize;
        assert!(last[t] < Some(n), "task {t} out of order");
        last[t] = Some(n);
    }
}

#[tokio::test]
async fn ring_eviction_keeps_a_verifiable_window() {
    let (audit, ring) = Audit::memory_with_key(key(), 10);
    for i in 1..=25 {
        audit.record(event(i));
    }
    audit.flush().await.unwrap();
    assert_eq!(ring.len(), 10);
    assert_eq!(ring.capacity(), 10);
    assert_eq!(ring.evicted(), 15);
    let records = ring.records();
    assert_eq!(records.first().unwrap().seq, 16);
    assert_eq!(records.last().unwrap().seq, 25);
    let head = audit.head().unwrap();
    assert_eq!(ring.head(), Some(head));
    let report = verify(&records, &key(), Some(&head)).unwrap();
    assert_eq!(report.records, 10);
    assert_eq!(report.anchor.map(|a| a.seq), Some(15));
    assert_eq!(report.head, Some(head));
    // Tampering inside the window is still found.
    let mut tampered = records;
    tampered.remove(3);
    assert_eq!(
        check(&tampered, Some(&head)),
        err(19, VerifyErrorKind::Removed)
    );
}

#[tokio::test]
async fn chain_resumes_from_the_sink_head() {
    let ring = MemorySink::new(100);
    let first = Audit::builder()
        .key(key())
        .sink(ring.clone())
        .build()
        .unwrap();
    for i in 1..=3 {
        first.record(event(i));
    }
    first.flush().await.unwrap();
    let anchor = first.head().unwrap();
    drop(first);

    let second = Audit::builder()
        .key(key())
        .sink(ring.clone())
        .build()
        .unwrap();
    assert_eq!(
        second.head(),
        Some(anchor),
        "head is known before anything is appended"
    );
    for i in 4..=6 {
        second.record(event(i));
    }
    second.flush().await.unwrap();
    let records = ring.records();
    assert_eq!(
        records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(records[3].prev, anchor.hash);
    let head = second.head().unwrap();
    verify_from(&Head::GENESIS, &records, &key(), Some(&head)).unwrap();
    let since = verify_from(&anchor, &records[3..], &key(), Some(&head)).unwrap();
    assert_eq!(since.records, 3);
}

/// Fails its `fail_at`-th append (1-based) and every one after.
struct FailingSink {
    ring: MemorySink,
    fail_at: usize,
    calls: usize,
    blocking: bool,
}

impl AuditSink for FailingSink {
    fn append(&mut self, batch: &[AuditRecord]) -> io::Result<()> {
        self.calls += 1;
        if self.calls >= self.fail_at {
            return Err(io::Error::other("disk full"));
        }
        self.ring.append(batch)
    }

    fn is_blocking(&self) -> bool {
        self.blocking
    }
}

#[tokio::test]
async fn failing_sink_stops_the_log_and_is_reported() {
    for blocking in [false, true] {
        let ring = MemorySink::new(100);
        let audit = Audit::builder()
            .key(key())
            .sink(FailingSink {
                ring: ring.clone(),
                fail_at: 2,
                calls: 0,
                blocking,
            })
            .queue_capacity(16)
            .build()
            .unwrap();
        audit.record(event(1));
        audit.flush().await.unwrap();
        assert!(!audit.failed());
        let head = audit.head().unwrap();

        for i in 2..=4 {
            audit.record(event(i));
        }
        let error = audit.flush().await.unwrap_err();
        assert!(matches!(error, AuditError::Sink(_)), "{error:?}");
        assert!(error.to_string().contains("disk full"), "{error}");
        assert!(audit.failed());
        assert!(audit.failure().is_some());
        assert_eq!(
            audit.head(),
            Some(head),
            "the failed batch was not acknowledged"
        );
        assert_eq!(audit.dropped_total(), 3);

        // Still never blocks, never panics; everything is counted as dropped.
        for i in 0..10_000 {
            audit.record(event(i));
        }
        audit.record_with(|| panic!("a failed audit must not build events"));
        assert_eq!(audit.dropped_total(), 3 + 10_000 + 1);
        assert!(audit.flush().await.is_err());
        assert_eq!(ring.len(), 1);
        check(&ring.records(), Some(&head)).unwrap();
    }
}

struct PanickingSink {
    blocking: bool,
}

impl AuditSink for PanickingSink {
    fn append(&mut self, _batch: &[AuditRecord]) -> io::Result<()> {
        panic!("sink bug (expected by the test)");
    }

    fn is_blocking(&self) -> bool {
        self.blocking
    }
}

#[tokio::test]
async fn panicking_sink_marks_the_audit_failed() {
    for blocking in [false, true] {
        let audit = Audit::builder()
            .key(key())
            .sink(PanickingSink { blocking })
            .build()
            .unwrap();
        audit.record(event(1));
        assert!(audit.flush().await.is_err(), "blocking: {blocking}");
        assert!(audit.failed(), "blocking: {blocking}");
        audit.record(event(2));
        assert!(audit.dropped_total() >= 1);
        assert_eq!(audit.head(), None);
    }
}

#[tokio::test]
async fn disabled_audit_is_a_no_op() {
    let audit = Audit::default();
    assert!(!audit.is_enabled());
    for i in 0..1000 {
        audit.record(event(i));
    }
    audit.flush().await.unwrap();
    assert_eq!(audit.head(), None);
    assert_eq!(audit.dropped_total(), 0);
    assert!(!audit.failed());
}

#[test]
fn build_outside_a_runtime_is_a_clear_error() {
    let err = Audit::builder()
        .key(key())
        .sink(MemorySink::new(1))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("tokio runtime"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn works_on_paused_time() {
    let (audit, ring) = Audit::memory_with_key(key(), 10);
    audit.record(event(1));
    tokio::time::sleep(Duration::from_secs(3600)).await;
    audit.record(event(2));
    audit.flush().await.unwrap();
    assert_eq!(ring.len(), 2);
    check(&ring.records(), audit.head().as_ref()).unwrap();
}

#[tokio::test]
async fn audit_builder_sizes_are_bounded() {
    use palisade_core::audit::{
        BuildError, MemorySink, MAX_BATCH, MAX_COMMIT_INTERVAL, MAX_QUEUE_CAPACITY,
    };
    let builder = || {
        Audit::builder()
            .key(AuditKey::generate())
            .sink(MemorySink::new(1))
    };
    let too_large = [
        (
            builder().queue_capacity(MAX_QUEUE_CAPACITY + 1),
            "queue_capacity",
        ),
        (builder().queue_capacity(usize::MAX), "queue_capacity"),
        (builder().max_batch(MAX_BATCH + 1), "max_batch"),
        (builder().max_batch(usize::MAX), "max_batch"),
        (
            builder().commit_interval(MAX_COMMIT_INTERVAL + Duration::from_millis(1)),
            "commit_interval",
        ),
    ];
    for (b, setting) in too_large {
        let err = b.build().unwrap_err();
        assert_eq!(err, BuildError::AboveMaximum { setting });
        assert!(err.to_string().contains(setting), "{err}");
    }
    builder()
        .queue_capacity(MAX_QUEUE_CAPACITY)
        .max_batch(MAX_BATCH)
        .commit_interval(MAX_COMMIT_INTERVAL)
        .build()
        .expect("the maxima are accepted");
}
