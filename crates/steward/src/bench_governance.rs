//! `bench governance`: Cedar decisions against 1,000 policies (per second, p50/p99), audit
//! appends per second through the group commit with fsync on (SQLite, `synchronous=FULL`), and
//! the time to verify a log of a million records.

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
    let (decisions_per_s, p50, p99) = decisions(200_000)?;
    eprintln!(
        "decisions: {decisions_per_s:.0}/s, p50 {p50:.1} µs, p99 {p99:.1} µs (1,000 policies)"
    );
    println!(
        "{}",
        json!({
            "bench": "governance",
            "decision_p50_us": (p50 * 10.0).round() / 10.0,
            "decision_p99_us": (p99 * 10.0).round() / 10.0,
            "decisions_per_s": decisions_per_s.round(),
            "policies": 1000,
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
        event: steward_gov::AuditEvent::Syscall,
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
                        .append_audited(None, Vec::new(), vec![(0, record(i))], Vec::new())
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

/// 1,000 policies — a permit per agent for its own tool, a forbid per agent above a cost, and
/// a few broad ones — and `n` decisions for agents picked across them, timed one by one.
fn decisions(n: usize) -> anyhow::Result<(f64, f64, f64)> {
    let mut text = String::new();
    for i in 0..495 {
        text.push_str(&format!(
            "@id(\"permit-{i}\")\npermit (principal in Steward::Agent::\"agent-{i}\", action == Steward::Action::\"tool.call\", resource == Steward::Tool::\"tool-{i}\");\n\
             @id(\"cap-{i}\")\nforbid (principal in Steward::Agent::\"agent-{i}\", action, resource) when {{ context.cost_nanos > {} }};\n",
            1_000_000 + i
        ));
    }
    for i in 0..10 {
        text.push_str(&format!(
            "@id(\"models-{i}\")\npermit (principal, action == Steward::Action::\"llm.call\", resource == Steward::Model::\"provider-{i}/model\") when {{ context.time_ms > 0 }};\n"
        ));
    }
    let policies = steward_gov::Policies::new(Some(&text))?;
    let chain = vec!["agent:x".to_string()];
    let mut samples = Vec::with_capacity(n);
    let started = Instant::now();
    let mut allowed = 0usize;
    for k in 0..n {
        let i = (k * 7919) % 495;
        let agent = format!("agent-{i}");
        let tool = format!("tool-{}", if k % 3 == 0 { (i + 1) % 495 } else { i });
        let t = Instant::now();
        let d = policies.decide(&steward_gov::Query {
            agent: &agent,
            run: Some("run_0000"),
            action: "tool.call",
            resource: &tool,
            cost_nanos: (k % 2_000_000) as i64,
            time_ms: 1,
            chain: &chain,
            owner: Some("team-a"),
            on_behalf_of: Some("team-a"),
            destination: None,
        });
        samples.push(t.elapsed().as_nanos() as f64 / 1000.0);
        allowed += usize::from(d.allow);
    }
    let per_s = n as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(allowed > 0 && allowed < n, "the decisions should be mixed");
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];
    Ok((per_s, pct(0.50), pct(0.99)))
}
