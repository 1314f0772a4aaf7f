//! Audit append throughput, in records per second: record a burst of events and wait for the sink to
//! acknowledge them (`Audit::flush`).
//!
//! - `file_group_commit/1000`: 1,000 events into the `FileSink` (JSON lines, one `write` and one
//!   `fdatasync` per batch of up to `max_batch` = 256 records, the default), in a temp directory.
//! - `file_group_commit_max_batch_1024/1000`: the same with one commit for the whole burst.
//! - `file_fsync_per_record/10`: 10 events, each flushed before the next (no group commit), for
//!   comparison: the cost of one `fdatasync` per record.
//! - `memory/1000`: 1,000 events into the in-memory ring (`MemorySink`): the writer's own cost
//!   (sealing: canonical encoding, BLAKE3 checksum and keyed hash).
//!
//! Run: `cargo bench --bench audit`. The file numbers depend on the disk's `fdatasync` latency.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use palisade::audit::{Audit, AuditEvent, AuditKey, FileSink, MemorySink};

fn key() -> AuditKey {
    AuditKey::derive("palisade audit bench", b"bench key material")
}

fn event(n: u64) -> AuditEvent {
    AuditEvent::new("breaker.opened")
        .tenant("acme")
        .detail("breaker", "payments")
        .detail("failures", n)
}

async fn record_and_flush(audit: &Audit, records: u64) {
    for n in 0..records {
        audit.record(event(n));
    }
    audit.flush().await.expect("flush");
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "palisade-bench-audit-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn audit_append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let mut g = c.benchmark_group("audit_append");

    let mut dirs = Vec::new();
    for (name, max_batch) in [
        ("file_group_commit", 256),
        ("file_group_commit_max_batch_1024", 1024),
    ] {
        let dir = temp_dir(name);
        let audit = Audit::builder()
            .key(key())
            .sink(FileSink::open(&dir).expect("open the log"))
            .queue_capacity(4096)
            .max_batch(max_batch)
            .build()
            .expect("audit");
        g.throughput(Throughput::Elements(1000));
        g.bench_function(format!("{name}/1000"), |b| {
            b.iter(|| rt.block_on(record_and_flush(&audit, 1000)));
        });
        assert_eq!(audit.dropped_total(), 0);
        dirs.push(dir);
    }

    let dir = temp_dir("per-record");
    let audit = Audit::builder()
        .key(key())
        .sink(FileSink::open(&dir).expect("open the log"))
        .build()
        .expect("audit");
    g.throughput(Throughput::Elements(10));
    g.bench_function("file_fsync_per_record/10", |b| {
        b.iter(|| {
            rt.block_on(async {
                for _ in 0..10 {
                    record_and_flush(&audit, 1).await;
                }
            });
        });
    });
    dirs.push(dir);

    let audit = Audit::builder()
        .key(key())
        .sink(MemorySink::new(1024))
        .queue_capacity(4096)
        .build()
        .expect("audit");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("memory/1000", |b| {
        b.iter(|| rt.block_on(record_and_flush(&audit, 1000)));
    });
    assert_eq!(audit.dropped_total(), 0);
    g.finish();

    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

criterion_group!(benches, audit_append);
criterion_main!(benches);
