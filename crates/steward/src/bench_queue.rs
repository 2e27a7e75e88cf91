//! `steward bench queue`: task queues through the engine's own service (the one the API
//! serves), on SQLite (`synchronous=FULL`) and PostgreSQL. Throughput: 16 producers enqueue
//! while 1, 4 or 16 workers lease (up to 32 at a time, long-polling) and complete what they
//! leased side by side, from the first enqueue to the last completion. Dispatch latency: tasks enqueued one at a time at a steady
//! rate to warm, waiting workers; the time from enqueue returning to a worker holding the task.
//! The last line printed is one JSON object. See bench/README.md.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use steward_engine::{tasks::Enqueue, Engine};
use steward_store::Store;
use steward_types::config::StoreConfig;

const PRODUCERS: usize = 16;
const LEASE_BATCH: i64 = 32;

pub async fn run(tasks: usize, postgres_url: &str) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("steward-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let sqlite_url = format!("sqlite://{}", dir.join("bench.db").display());
    eprintln!("queue: {tasks} tasks per measurement, {PRODUCERS} producers, leases of up to {LEASE_BATCH}");
    let sqlite = measure("sqlite", &sqlite_url, tasks).await;
    let sqlite_bound = crate::bench_bounds::sqlite(&dir, "full").await;
    let _ = std::fs::remove_dir_all(&dir);
    let mut sqlite = sqlite?;
    sqlite["lone"] = sqlite_bound?;

    let (schema, pg_url) = steward_store::pg_schema::new_schema(postgres_url, "bench")
        .await
        .context("making a schema on PostgreSQL")?;
    let admin = sqlx::PgPool::connect(postgres_url)
        .await
        .context("connecting to PostgreSQL")?;
    let postgres = measure("postgres", &pg_url, tasks).await;
    let postgres_bound = crate::bench_bounds::postgres(&pg_url).await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await?;
    let mut postgres = postgres?;
    postgres["lone"] = postgres_bound?;
    println!(
        "{}",
        json!({"bench": "queue", "tasks": tasks, "sqlite": sqlite, "postgres": postgres})
    );
    Ok(())
}

async fn measure(backend: &str, url: &str, tasks: usize) -> anyhow::Result<Value> {
    let store: Arc<dyn Store> = steward_store::open(url, &StoreConfig::default()).await?;
    let engine = start(backend, store).await?;
    let mut by_workers = serde_json::Map::new();
    let mut best: f64 = 0.0;
    for workers in [1, 4, 16] {
        let per_s = throughput(&engine, &format!("tp-{workers}"), workers, tasks).await?;
        eprintln!("{backend}: {workers} workers: {per_s:.0} tasks/s");
        by_workers.insert(workers.to_string(), json!(per_s.round()));
        best = best.max(per_s);
    }
    let d = dispatch(&engine, 2000, 500).await?;
    eprintln!(
        "{backend}: dispatch p50 {:.2} ms, p99 {:.2} ms (the enqueue call: p50 {:.2} ms, p99 {:.2} ms)",
        d.leased.0, d.leased.1, d.enqueue.0, d.enqueue.1
    );
    let ms = |v: f64| (v * 100.0).round() / 100.0;
    engine.shutdown(Duration::from_secs(5)).await;
    Ok(json!({
        "tasks_per_s": by_workers["16"],
        "best_tasks_per_s": best.round(),
        "tasks_per_s_by_workers": by_workers,
        "dispatch_p50_ms": ms(d.leased.0),
        "dispatch_p99_ms": ms(d.leased.1),
        "enqueue_p50_ms": ms(d.enqueue.0),
        "enqueue_p99_ms": ms(d.enqueue.1),
    }))
}

async fn start(backend: &str, store: Arc<dyn Store>) -> anyhow::Result<Engine> {
    let opts = crate::bench::engine_options(&format!("bench-queue-{backend}"), None)?;
    Ok(Engine::start(store, opts).await?)
}

fn task(queue: &str, i: usize) -> Enqueue {
    Enqueue {
        queue: queue.into(),
        payload: json!({"i": i}),
        tenant: Some(format!("tenant-{}", i % 4)),
        ..Enqueue::default()
    }
}

/// Tasks per second from the first enqueue to the last completion.
async fn throughput(
    engine: &Engine,
    queue: &str,
    workers: usize,
    total: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let (engine, queue) = (engine.clone(), queue.to_string());
        producers.push(tokio::spawn(async move {
            for i in (p..total).step_by(PRODUCERS) {
                engine.tasks().enqueue(task(&queue, i)).await?;
            }
            anyhow::Ok(())
        }));
    }
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut pool = Vec::new();
    for w in 0..workers {
        let (engine, queue, done) = (engine.clone(), queue.to_string(), done.clone());
        pool.push(tokio::spawn(async move {
            let worker = format!("w{w}");
            while done.load(std::sync::atomic::Ordering::Relaxed) < total {
                let leased = engine
                    .tasks()
                    .lease(&queue, &worker, LEASE_BATCH, Duration::from_millis(200))
                    .await?;
                // A worker handles the tasks of one lease side by side.
                let n = leased.len();
                let ok = json!("ok");
                let ends = leased
                    .iter()
                    .map(|t| engine.tasks().complete(&t.id, &worker, t.attempts, &ok));
                for r in futures::future::join_all(ends).await {
                    r?;
                }
                done.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                if started.elapsed() > Duration::from_secs(600) {
                    anyhow::bail!("{queue}: not finished after 10 minutes");
                }
            }
            anyhow::Ok(())
        }));
    }
    for p in producers {
        p.await??;
    }
    for w in pool {
        w.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// (p50, p99) in milliseconds of the dispatch measurement's two spans.
struct Dispatch {
    /// From the enqueue call to a worker holding the task.
    leased: (f64, f64),
    /// The enqueue call alone (its commit, which leases the task to a waiting worker).
    enqueue: (f64, f64),
}

fn p50_p99(mut l: Vec<f64>) -> (f64, f64) {
    l.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| l[((l.len() as f64 * q) as usize).min(l.len() - 1)];
    (at(0.5), at(0.99))
}

/// Dispatch latency at `rate` tasks a second to 4 waiting workers.
async fn dispatch(engine: &Engine, total: usize, rate: u64) -> anyhow::Result<Dispatch> {
    let queue = "dispatch";
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let lat: Arc<Mutex<Vec<f64>>> = Arc::default();
    let mut pool = Vec::new();
    for w in 0..4 {
        let (engine, sent, lat) = (engine.clone(), sent.clone(), lat.clone());
        pool.push(tokio::spawn(async move {
            let worker = format!("d{w}");
            while lat.lock().map(|l| l.len()).unwrap_or(total) < total {
                let leased = engine
                    .tasks()
                    .lease(queue, &worker, 1, Duration::from_millis(200))
                    .await?;
                let at = Instant::now();
                for t in leased {
                    let i = serde_json::from_str::<Value>(&t.payload)?["i"]
                        .as_u64()
                        .context("a task without its number")?;
                    let since = sent
                        .lock()
                        .ok()
                        .and_then(|m| m.get(&i).copied())
                        .context("a task leased before it was sent")?;
                    let ms = at.saturating_duration_since(since).as_secs_f64() * 1000.0;
                    if let Ok(mut l) = lat.lock() {
                        l.push(ms);
                    }
                    engine
                        .tasks()
                        .complete(&t.id, &worker, t.attempts, &json!("ok"))
                        .await?;
                }
            }
            anyhow::Ok(())
        }));
    }
    // Let the workers start waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut enqueue = Vec::with_capacity(total);
    for i in 0..total {
        tick.tick().await;
        // Timed from the enqueue call, so its own commit counts.
        let at = Instant::now();
        if let Ok(mut m) = sent.lock() {
            m.insert(i as u64, at);
        }
        engine.tasks().enqueue(task(queue, i)).await?;
        enqueue.push(at.elapsed().as_secs_f64() * 1000.0);
    }
    for w in pool {
        w.await??;
    }
    let leased = lat.lock().map(|l| l.clone()).unwrap_or_default();
    Ok(Dispatch {
        leased: p50_p99(leased),
        enqueue: p50_p99(enqueue),
    })
}
