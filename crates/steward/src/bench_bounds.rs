//! What bounds a lone step: one durable commit of one small row, alone, on the same database
//! engine and disk, with the same durability settings the benchmark's store uses (SQLite: a
//! file of its own beside the store's; PostgreSQL: a table in the benchmark's schema). No step that waits for its
//! outcome to be durable can take less; the engine's idle overhead and the gateway's added
//! latency are read against it.

use std::str::FromStr;
use std::time::Instant;

use serde_json::{json, Value};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

const COMMITS: usize = 500;
/// About what a journal entry with its audit record weighs.
const ROW_BYTES: usize = 400;

/// Times `COMMITS` lone commits, one after another.
async fn timed<F, Fut, T>(mut commit: F) -> anyhow::Result<Value>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut ms = Vec::with_capacity(COMMITS);
    for _ in 0..COMMITS {
        let t = Instant::now();
        commit().await?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    let at = |p: f64| {
        let v = ms[((ms.len() as f64 - 1.0) * p).round() as usize];
        (v * 1000.0).round() / 1000.0
    };
    Ok(json!({"commit_p50_ms": at(0.5), "commit_p99_ms": at(0.99)}))
}

/// Lone commits on a SQLite file of its own in `dir` (WAL, `synchronous` as given).
pub async fn sqlite(dir: &std::path::Path, synchronous: &str) -> anyhow::Result<Value> {
    let sync = if synchronous == "normal" {
        SqliteSynchronous::Normal
    } else {
        SqliteSynchronous::Full
    };
    let url = format!("sqlite://{}", dir.join("lone-commit.db").display());
    let opts = SqliteConnectOptions::from_str(&url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(sync);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await?;
    sqlx::query("CREATE TABLE lone (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        .execute(&pool)
        .await?;
    let body = "x".repeat(ROW_BYTES);
    let figures = timed(|| {
        sqlx::query("INSERT INTO lone (body) VALUES (?)")
            .bind(&body)
            .execute(&pool)
    })
    .await;
    pool.close().await;
    figures
}

/// Lone commits on PostgreSQL at `url` (a table made for it and dropped after).
pub async fn postgres(url: &str) -> anyhow::Result<Value> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await?;
    sqlx::query("CREATE TABLE lone_commit (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL)")
        .execute(&pool)
        .await?;
    let body = "x".repeat(ROW_BYTES);
    let figures = timed(|| {
        sqlx::query("INSERT INTO lone_commit (body) VALUES ($1)")
            .bind(&body)
            .execute(&pool)
    })
    .await;
    sqlx::query("DROP TABLE lone_commit").execute(&pool).await?;
    pool.close().await;
    figures
}

/// Round trips between two threads on different cores, each parked between messages, as the
/// gateway's hops are at a steady request rate (a message, then the answer, 2 ms apart): what
/// one hand-off from a thread to another and back costs on this machine. Every hop a request
/// takes that a direct call does not — into the server, to its writer thread and back, out to
/// the upstream and back — pays one wake-up of a parked thread.
pub fn wake_round_trip() -> Value {
    const TRIPS: usize = 1000;
    let (to_echo, echo_rx) = std::sync::mpsc::channel::<()>();
    let (to_caller, caller_rx) = std::sync::mpsc::channel::<()>();
    let echo = std::thread::spawn(move || {
        pin_to_cpu(1);
        while echo_rx.recv().is_ok() {
            if to_caller.send(()).is_err() {
                break;
            }
        }
    });
    let us = std::thread::spawn(move || {
        pin_to_cpu(0);
        let mut us = Vec::with_capacity(TRIPS);
        for _ in 0..TRIPS {
            std::thread::sleep(std::time::Duration::from_millis(2));
            let t = Instant::now();
            if to_echo.send(()).is_err() || caller_rx.recv().is_err() {
                break;
            }
            us.push(t.elapsed().as_secs_f64() * 1e6);
        }
        us
    })
    .join()
    .unwrap_or_default();
    let _ = echo.join();
    let mut us = us;
    us.sort_by(f64::total_cmp);
    let at = |p: f64| {
        us.get(((us.len().max(1) - 1) as f64 * p).round() as usize)
            .map(|v| v.round())
    };
    json!({"wake_round_trip_p50_us": at(0.5), "wake_round_trip_p99_us": at(0.99)})
}

/// Keeps the calling thread on one core (where the machine has it), so that the two ends of a
/// round trip are on different cores, as the server's threads usually are.
fn pin_to_cpu(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}
