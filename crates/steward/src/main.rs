//! `steward`: the server and its command-line client. `main` parses flags and dispatches;
//! every verb but `serve` (and `demo`, which runs `serve`) is an HTTP client of the API.

mod bench;
mod bench_bounds;
mod bench_console;
mod bench_gateway;
mod bench_governance;
mod bench_memory;
mod bench_queue;
mod bench_sandbox;
mod bench_tools;
mod client;
mod demo;
mod memory_cli;
mod own_spans;
mod serve;
mod telemetry;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "steward",
    version,
    about = "The infrastructure layer underneath AI agents"
)]
struct Cli {
    /// The Steward server the client verbs talk to.
    #[arg(
        long,
        global = true,
        env = "STEWARD_URL",
        default_value = "http://127.0.0.1:8420"
    )]
    server: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane.
    Serve(serve::ServeArgs),
    /// Create or update agents from a manifest file or a directory of them.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Start a run and follow its steps until it ends.
    Run {
        agent: String,
        #[arg(long, default_value = "")]
        input: String,
        /// Print the run id and return at once.
        #[arg(long)]
        detach: bool,
    },
    /// List agents or runs.
    Get {
        #[arg(value_enum)]
        what: client::GetWhat,
        /// With `runs`: only runs in this state.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// A run's journal as a timeline.
    Logs { run: String },
    /// Cancel a run (and its children).
    Cancel {
        run: String,
        #[arg(long)]
        reason: String,
    },
    /// Start a fork of a run: its steps before `--at` replayed, the rest run live with the
    /// input, system prompt or model changed.
    Fork {
        run: String,
        /// The step (a journal seq, as `steward logs` shows) the fork departs at.
        #[arg(long)]
        at: i64,
        #[arg(long)]
        input: Option<String>,
        #[arg(long)]
        system_prompt: Option<String>,
        #[arg(long)]
        model: Option<String>,
    },
    /// Answer a run waiting for a human after an in-doubt step.
    Resolve {
        run: String,
        #[arg(value_enum)]
        action: client::ResolveWhat,
    },
    /// Spend by agent, model, run, task, tool, outcome, day or hour, and the cost per successful
    /// run and task.
    Cost {
        #[arg(long, default_value = "agent")]
        by: String,
        /// The last this many days.
        #[arg(long, default_value_t = 30)]
        days: i64,
    },
    /// Incidents supervisors escalated to a human (open ones unless --state says otherwise);
    /// `--resolve ID --resolution "…"` closes one.
    Incidents {
        #[arg(long, default_value = "open")]
        state: String,
        #[arg(long)]
        resolve: Option<String>,
        #[arg(long, default_value = "resolved")]
        resolution: String,
    },
    /// Approvals policies asked for (pending ones unless --state says otherwise).
    Approvals {
        #[arg(long, default_value = "pending")]
        state: String,
    },
    /// Approve a pending approval: its run resumes and the step acts.
    Approve {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Deny a pending approval: its run resumes and the step is denied.
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// The tamper-evident audit log: `verify` it, or `export` records with inclusion proofs.
    Audit {
        #[command(subcommand)]
        what: client::AuditWhat,
    },
    /// Upstream MCP servers whose tools join the registry: `add`, `ls`, `rm`, `restart`.
    Mcp {
        #[command(subcommand)]
        what: client::McpWhat,
    },
    /// HTTP APIs whose OpenAPI documents' operations join the registry: `add`, `ls`, `rm`.
    Openapi {
        #[command(subcommand)]
        what: client::OpenApiWhat,
    },
    /// The tool registry: `ls`, `describe NAME`, `call NAME ARGS`, `search QUERY`.
    Tools {
        #[command(subcommand)]
        what: client::ToolsWhat,
    },
    /// Agents' memory: `add`, `search`, `history`, `erase`.
    Memory {
        #[command(subcommand)]
        what: memory_cli::MemoryWhat,
    },
    /// Persistent sandboxes: create, exec, cp, snapshot, fork, restore, ls, rm.
    Sandbox {
        #[command(subcommand)]
        what: client::SandboxWhat,
    },
    /// Start an embedded Steward, run an example fleet, crash it mid-run, and show recovery.
    Demo(demo::DemoArgs),
    /// Benchmarks (see bench/README.md).
    #[command(hide = true)]
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    // The sandbox helper must start single-threaded: before the runtime, before anything.
    let mut args = std::env::args();
    if args.nth(1).as_deref() == Some(steward_sandbox::INIT_ARG) {
        if args.next().as_deref() == Some(steward_sandbox::zygote::ZYGOTE_ARG) {
            let server = args.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            steward_sandbox::zygote::main(server);
        }
        steward_sandbox::init::main();
    }
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let c = client::Client::new(&cli.server);
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Apply { file } => c?.apply(&file).await,
            Command::Run {
                agent,
                input,
                detach,
            } => c?.run(&agent, &input, detach).await,
            Command::Get { what, state, limit } => c?.get(what, state.as_deref(), limit).await,
            Command::Logs { run } => c?.logs(&run).await,
            Command::Cancel { run, reason } => c?.cancel(&run, &reason).await,
            Command::Fork {
                run,
                at,
                input,
                system_prompt,
                model,
            } => {
                let edits = serde_json::json!({"at": at, "input": input, "system_prompt": system_prompt, "model": model});
                c?.fork(&run, &edits).await
            }
            Command::Resolve { run, action } => c?.resolve(&run, action).await,
            Command::Cost { by, days } => c?.cost(&by, days).await,
            Command::Audit { what } => c?.audit(what).await,
            Command::Sandbox { what } => c?.sandbox(what).await,
            Command::Memory { what } => c?.memory(what).await,
            Command::Tools { what } => c?.tools(what).await,
            Command::Mcp { what } => c?.mcp(what).await,
            Command::Openapi { what } => c?.openapi(what).await,
            Command::Approvals { state } => c?.approvals(&state).await,
            Command::Incidents {
                state,
                resolve,
                resolution,
            } => c?.incidents(&state, resolve.as_deref(), &resolution).await,
            Command::Approve { id, reason } => c?.decide(&id, true, &reason).await,
            Command::Deny { id, reason } => c?.decide(&id, false, &reason).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Bench(args) => bench::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
