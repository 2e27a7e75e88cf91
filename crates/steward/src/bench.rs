//! `steward bench engine`: N concurrent runs × M steps with the scripted model and the no-op
//! `echo` tool, on SQLite (fsync on: `synchronous=FULL`) and on PostgreSQL. Reports journaled
//! steps per second under that load, and the per-step overhead the Kernel adds (its time minus
//! the action's own: two durable journal writes and the bookkeeping around them) — both for a
//! single run on an idle engine (`p50_ms`, `p99_ms`) and under the full load (`loaded_*`).
//! The last line printed is one JSON object. See bench/README.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use steward_engine::{Engine, EngineOptions, StepStats, SystemClock};
use steward_llm::Providers;
use steward_store::{NewAgent, NewRun, Store};
use steward_tools::Tools;
use steward_types::config::{EngineConfig, StoreConfig, ToolsConfig};
use steward_types::{AgentName, NodeId, RunId, RunState};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Which benchmark: `console`, `engine`, `gateway`, `governance`, `memory`, `queue`,
    /// `sandbox` or `tools`.
    name: String,
    /// gateway: requests a second for the latency measurement.
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// gateway, console: seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// governance: records in the log whose verification is timed.
    #[arg(long, default_value_t = 1_000_000)]
    verify_records: i64,
    /// gateway: concurrent clients for the throughput measurement; governance: concurrent
    /// audit writers.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// queue: tasks per throughput measurement.
    #[arg(long, default_value_t = 20_000)]
    tasks: usize,
    /// Concurrent runs.
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// Tool calls per run; each run journals 2 × this + 1 steps (model turns and tool calls).
    #[arg(long, default_value_t = 25)]
    tool_calls: usize,
    /// PostgreSQL to measure; a fresh schema is made for the run and dropped after.
    #[arg(long, default_value = "postgres://127.0.0.1:5432/test")]
    postgres_url: String,
    /// SQLite `synchronous`: `full` (the target's setting) or `normal`, to see what fsync costs.
    #[arg(long, default_value = "full")]
    sqlite_synchronous: String,
    /// memory: memories written (in conversations of 500 turns; search is timed at 10k too).
    #[arg(long, default_value_t = 100_000)]
    memories: usize,
    /// memory: all-MiniLM-L6-v2's files, for embeddings (scripts/fetch-memory-model).
    #[arg(long)]
    model_dir: Option<std::path::PathBuf>,
    /// tools: the MCP reference server's entry point (`…/server-everything/dist/index.js`).
    #[arg(long, default_value = "")]
    mcp_server: String,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.name == "gateway" {
        return crate::bench_gateway::run(args.rate, args.seconds, args.clients).await;
    }
    if args.name == "sandbox" {
        return crate::bench_sandbox::run().await;
    }
    if args.name == "queue" {
        return crate::bench_queue::run(args.tasks, &args.postgres_url).await;
    }
    if args.name == "governance" {
        return crate::bench_governance::run(args.seconds, args.clients, args.verify_records).await;
    }
    if args.name == "memory" {
        return crate::bench_memory::run(args.memories, args.model_dir.as_deref()).await;
    }
    if args.name == "tools" {
        return crate::bench_tools::run(&args.mcp_server).await;
    }
    if args.name == "console" {
        return crate::bench_console::run(args.seconds).await;
    }
    if args.name != "engine" {
        bail!(
            "unknown benchmark {:?}; available: console, engine, gateway, governance, memory, queue, sandbox, tools",
            args.name
        );
    }
    let dir = std::env::temp_dir().join(format!("steward-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let sqlite_url = format!("sqlite://{}", dir.join("bench.db").display());
    eprintln!(
        "engine: {} runs × {} steps, scripted model, echo tool",
        args.runs,
        2 * args.tool_calls + 1
    );
    let sqlite = measure("sqlite", &sqlite_url, &args).await;
    let sqlite_bound = crate::bench_bounds::sqlite(&dir, &args.sqlite_synchronous).await;
    let _ = std::fs::remove_dir_all(&dir);
    let mut sqlite = sqlite?;
    sqlite["lone"] = sqlite_bound?;

    let (schema, pg_url) = steward_store::pg_schema::new_schema(&args.postgres_url, "bench")
        .await
        .context("making a schema on PostgreSQL")?;
    let admin = sqlx::PgPool::connect(&args.postgres_url)
        .await
        .context("connecting to PostgreSQL")?;
    let postgres = measure("postgres", &pg_url, &args).await;
    let postgres_bound = crate::bench_bounds::postgres(&pg_url).await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await?;
    let mut postgres = postgres?;
    postgres["lone"] = postgres_bound?;

    println!(
        "{}",
        json!({"bench": "engine", "runs": args.runs, "steps_per_run": 2 * args.tool_calls + 1, "sqlite": sqlite, "postgres": postgres})
    );
    Ok(())
}

fn spec(tool_calls: usize) -> Value {
    let mut script: Vec<Value> = (0..tool_calls)
        .map(|i| json!({"toolCalls": [{"name": "echo", "arguments": {"i": i}}]}))
        .collect();
    script.push(json!({"content": "done"}));
    json!({
        "model": "scripted", "systemPrompt": "", "tools": ["echo"], "maxSteps": tool_calls + 1,
        "stepTimeout": "60000ms", "runTimeout": "3600000ms", "recovery": "fail", "script": script
    })
}

async fn measure(backend: &str, url: &str, args: &BenchArgs) -> anyhow::Result<Value> {
    let cfg = StoreConfig {
        sqlite_synchronous: args.sqlite_synchronous.clone(),
        ..StoreConfig::default()
    };
    let store: Arc<dyn Store> = steward_store::open(url, &cfg).await?;
    let idle = drive(backend, &store, 1, args.tool_calls.max(50)).await?;
    let loaded = drive(backend, &store, args.runs, args.tool_calls).await?;
    let out = json!({
        "steps_per_s": loaded.steps_per_s.round(),
        "p50_ms": idle.p50_ms,
        "p99_ms": idle.p99_ms,
        "loaded_p50_ms": loaded.p50_ms,
        "loaded_p99_ms": loaded.p99_ms,
        "idle_steps_per_s": idle.steps_per_s.round(),
    });
    eprintln!("{backend}: {out}");
    Ok(out)
}

struct Figures {
    steps_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// An engine as the benchmarks run it: polling every 20 ms, no providers but `scripted`, the
/// native tools, a throwaway audit key, no policies, no vault, no sandboxes.
pub(crate) fn engine_options(
    node: &str,
    stats: Option<Arc<StepStats>>,
) -> anyhow::Result<EngineOptions> {
    Ok(EngineOptions {
        cfg: EngineConfig {
            poll_ms: 20,
            ..EngineConfig::default()
        },
        node: NodeId(node.to_string()),
        group_commit_max_batch: StoreConfig::default().group_commit_max_batch,
        providers: Providers::default(),
        tools: Tools::builtin(&ToolsConfig::default())?,
        clock: Arc::new(SystemClock),
        llm: Default::default(),
        prices: steward_llm::Prices::default(),
        stats,
        audit_key: Arc::new(steward_gov::AuditKey::load_or_create(
            &std::env::temp_dir().join(format!(
                "steward-bench-audit-{}.key",
                uuid::Uuid::new_v4().simple()
            )),
        )?),
        gov: Default::default(),
        policies: Arc::new(steward_gov::Policies::new(None)?),
        vault: None,
        sandboxes: None,
        meters: Default::default(),
        tool_rules: Default::default(),
        embedder: None,
        memory_limits: Default::default(),
        memory_embeddings_model: None,
        memory_curation_model: None,
    })
}

/// Runs `runs` concurrent runs of `tool_calls` echo calls each to completion.
async fn drive(
    backend: &str,
    store: &Arc<dyn Store>,
    runs: usize,
    tool_calls: usize,
) -> anyhow::Result<Figures> {
    let name =
        AgentName::parse(&format!("bench-{tool_calls}")).map_err(|e| anyhow::anyhow!(e.0))?;
    let spec_json = spec(tool_calls).to_string();
    let agent = NewAgent {
        name: name.clone(),
        spec_hash: spec_json.clone(),
        spec_json,
    };
    let version = store.put_agents(&[agent], 0).await?[0].0.version;
    let mut ids = Vec::with_capacity(runs);
    for _ in 0..runs {
        let run = NewRun {
            id: RunId::from_uuid(uuid::Uuid::now_v7()),
            agent: name.clone(),
            agent_version: version,
            parent_id: None,
            input: "bench".into(),
        };
        store.create_run(&run, crate::client::now_ms()).await?;
        ids.push(run.id);
    }
    let stats = Arc::new(StepStats::default());
    let opts = engine_options(&format!("bench-{backend}-{runs}"), Some(stats.clone()))?;
    let started = Instant::now();
    let engine = Engine::start(store.clone(), opts).await?;
    // Wait on one unfinished run at a time: polling a single row keeps the measuring itself
    // from loading the store.
    let mut pending = ids.iter();
    let mut current = pending.next();
    while let Some(id) = current {
        let run = store
            .get_run(id)
            .await?
            .context("a benchmark run vanished")?;
        if run.state == RunState::Succeeded {
            current = pending.next();
            continue;
        }
        if run.state.is_terminal() {
            bail!(
                "{backend}: run {id} ended {}: {:?}",
                run.state,
                run.error_message
            );
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("{backend}: runs did not finish in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    engine.shutdown(Duration::from_secs(5)).await;
    let mut samples = stats.take();
    samples.sort_unstable();
    let steps = runs * (2 * tool_calls + 1);
    if samples.len() != steps {
        bail!(
            "{backend}: expected {steps} journaled steps, measured {}",
            samples.len()
        );
    }
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0;
    Ok(Figures {
        steps_per_s: steps as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    })
}
