//! `bench governance`: audit appends per second through the group commit with fsync on
//! (SQLite, `synchronous=FULL`), and the time to verify a log of a million records. Policy
//! decisions are measured once policies exist (Cedar arrives with the rest of governance).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use steward_store::{JournalWriter, Store};
use steward_types::config::StoreConfig;

pub async fn run(seconds: u64, writers: usize, verify_records: i64) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!(
        "steward-bench-gov-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let result = measure(&dir, seconds, writers, verify_records).await;
    let _ = std::fs::remove_dir_all(&dir);
    let (appends, verify_s, records) = result?;
    println!(
        "{}",
        json!({
            "bench": "governance",
            "decision_p99_us": null,
            "audit_appends_per_s": appends.round(),
            "verify_1m_s": (verify_s * 1000.0).round() / 1000.0,
            "verify_records": records,
            "writers": writers,
        })
    );
    Ok(())
}

fn record(i: u64) -> String {
    steward_gov::AuditRecord {
        at: 1_800_000_000_000 + i as i64,
        event: "syscall",
        principal: format!("run:run_{i:032x}"),
        chain: vec!["agent:bench".into(), format!("run:run_{i:032x}")],
        action: "tool.call".into(),
        resource: "echo".into(),
        step: Some(i.to_string()),
        outcome: Some("ok".into()),
        ..Default::default()
    }
    .to_json()
}

async fn measure(
    dir: &std::path::Path,
    seconds: u64,
    writers: usize,
    verify_records: i64,
) -> anyhow::Result<(f64, f64, i64)> {
    // Appends: many writers, each waiting for its record to be durable, as syscalls do.
    let url = format!("sqlite://{}", dir.join("appends.db").display());
    let store: Arc<dyn Store> = steward_store::open(&url, &StoreConfig::default()).await?;
    let journal = JournalWriter::start(store.clone(), 4096);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let journal = journal.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let i = (w as u64) << 32 | n;
                    journal
                        .append_audited(Vec::new(), vec![(0, record(i))])
                        .await?;
                    n += 1;
                }
                anyhow::Ok(n)
            })
        })
        .collect();
    let started = Instant::now();
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    let appends = total as f64 / started.elapsed().as_secs_f64();
    eprintln!(
        "audit appends: {total} in {:?} with {writers} writers",
        started.elapsed()
    );

    // Verification of a large log, checkpointed every 100,000 records.
    let url = format!("sqlite://{}", dir.join("verify.db").display());
    let store: Arc<dyn Store> = steward_store::open(&url, &StoreConfig::default()).await?;
    let key = steward_gov::AuditKey::load_or_create(&dir.join("audit.key"))?;
    let mut written = 0i64;
    while written < verify_records {
        let batch: Vec<(i64, String)> = (written..(written + 10_000).min(verify_records))
            .map(|i| (i, record(i as u64)))
            .collect();
        written += batch.len() as i64;
        store.append_audit(&batch).await?;
        if written % 100_000 == 0 || written == verify_records {
            steward_gov::checkpointer::checkpoint_now(&*store, &key, written).await?;
        }
    }
    eprintln!("verifying {written} records");
    let started = Instant::now();
    let report = steward_gov::verify_log(&*store, &[key.verifying_key()]).await?;
    let verify_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        report.ok(),
        "the fresh log did not verify: {:?}",
        report.problems
    );
    anyhow::ensure!(
        report.records == written,
        "verified {} of {written}",
        report.records
    );
    Ok((appends, verify_s, written))
}
