//! `steward serve`: load configuration, open and migrate the store, start the engine and the
//! HTTP server, and shut down gracefully on SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use steward_engine::{Engine, EngineOptions, StepStats, SystemClock};
use steward_llm::Providers;
use steward_tools::Tools;
use steward_types::{Config, NodeId};

#[derive(clap::Args, Clone, Default)]
pub struct ServeArgs {
    /// Configuration file (default: ./steward.toml when it exists).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on (`127.0.0.1:0` picks a free port; the chosen one is printed).
    #[arg(long)]
    pub listen: Option<String>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// `postgres://…` for a cluster, or `sqlite://PATH`. Default: a SQLite file in the data dir.
    #[arg(long)]
    pub database_url: Option<String>,
}

pub fn load_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let path = args
        .config
        .clone()
        .or_else(|| Some(PathBuf::from("steward.toml")).filter(|p| p.exists()));
    let text = match &path {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => None,
    };
    let mut flags = Vec::new();
    if let Some(l) = &args.listen {
        flags.push(("server.listen".to_string(), format!("{l:?}")));
    }
    if let Some(d) = &args.data_dir {
        flags.push((
            "server.data_dir".to_string(),
            format!("{:?}", d.display().to_string()),
        ));
    }
    if let Some(u) = &args.database_url {
        flags.push(("store.database_url".to_string(), format!("{u:?}")));
    }
    Ok(Config::load(text.as_deref(), std::env::vars(), &flags)?)
}

/// This node's id: configured, or kept in the data dir so a restart knows its own leases.
fn node_id(cfg: &Config) -> anyhow::Result<NodeId> {
    if let Some(id) = &cfg.engine.node_id {
        return Ok(NodeId(id.clone()));
    }
    let path = cfg.server.data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok(NodeId(s.trim().to_string())),
        _ => {
            let id = format!("node-{}", uuid::Uuid::new_v4().simple());
            std::fs::write(&path, &id).with_context(|| format!("writing {}", path.display()))?;
            Ok(NodeId(id))
        }
    }
}

pub fn database_url(cfg: &Config) -> String {
    match &cfg.store.database_url {
        Some(u) if !u.is_empty() => u.clone(),
        _ => format!(
            "sqlite://{}",
            cfg.server.data_dir.join("steward.db").display()
        ),
    }
}

/// Opens the store and starts an engine as configured.
pub async fn start_engine(cfg: &Config, stats: Option<Arc<StepStats>>) -> anyhow::Result<Engine> {
    std::fs::create_dir_all(&cfg.server.data_dir).with_context(|| {
        format!(
            "creating the data directory {}",
            cfg.server.data_dir.display()
        )
    })?;
    // The database, the vault's key and the sandboxes' workspaces are Steward's alone: no
    // other user — an upstream MCP server's among them — may enter.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cfg.server.data_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| {
                format!(
                    "making the data directory {} private",
                    cfg.server.data_dir.display()
                )
            })?;
    }
    let url = database_url(cfg);
    let store = steward_store::open(&url, &cfg.store)
        .await
        .with_context(|| format!("opening the store at {}", steward_store::redact(&url)))?;
    // The vault's key: STEWARD_VAULT_KEY, else a file (created on first start).
    let cipher = steward_gov::vault::VaultCipher::load(
        std::env::var("STEWARD_VAULT_KEY").ok().as_deref(),
        &cfg.gov
            .vault_key_file
            .clone()
            .unwrap_or_else(|| cfg.server.data_dir.join("vault.key")),
    )?;
    let vault = steward_engine::vault::Vault::load(cipher, store.clone()).await?;
    let providers = Providers::with_secrets(
        &cfg.llm,
        |v| std::env::var(v).ok(),
        Some(vault.clone() as Arc<dyn steward_llm::SecretSource>),
    )?;
    let tools = Tools::builtin(&cfg.tools)?;
    let opts = EngineOptions {
        cfg: cfg.engine.clone(),
        node: node_id(cfg)?,
        group_commit_max_batch: cfg.store.group_commit_max_batch,
        providers,
        tools,
        clock: Arc::new(SystemClock),
        llm: cfg.llm.clone(),
        prices: steward_llm::Prices::new(&cfg.llm.prices)?,
        stats,
        audit_key: Arc::new(steward_gov::AuditKey::load_or_create(
            &cfg.gov
                .audit_key_file
                .clone()
                .unwrap_or_else(|| cfg.server.data_dir.join("audit.key")),
        )?),
        gov: cfg.gov.clone(),
        policies: Arc::new(steward_gov::Policies::new(None)?),
        vault: Some(vault),
        sandboxes: sandboxes(cfg).await,
        meters: Default::default(),
        tool_rules: cfg.tools.clone(),
        embedder: embedder(cfg)?,
        memory_limits: steward_memory::Limits::default()
            .with_scope_ttls(cfg.memory.ttl_ms.clone())
            .and_then(|l| l.with_scope_half_lives(cfg.memory.decay_half_life_ms.clone()))
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        memory_embeddings_model: cfg
            .memory
            .embeddings_model
            .clone()
            .filter(|_| !cfg.memory.no_embeddings),
        memory_curation_model: cfg.memory.curation_model.clone(),
    };
    Ok(Engine::start(store, opts).await?)
}

/// The embedding model memory uses: `memory.model_dir`, else the data directory's
/// `models/all-MiniLM-L6-v2` when it is there. A directory named but unreadable is an error.
fn embedder(cfg: &Config) -> anyhow::Result<Option<Arc<dyn steward_memory::Embedder>>> {
    if cfg.memory.no_embeddings || cfg.memory.embeddings_model.is_some() {
        return Ok(None);
    }
    let dir = match &cfg.memory.model_dir {
        Some(d) => d.clone(),
        None => {
            let d = cfg
                .server
                .data_dir
                .join("models")
                .join(steward_memory::embed::MINILM);
            if !d.join("model.safetensors").exists() {
                tracing::info!(
                    "memory: no embedding model in {} (scripts/fetch-memory-model puts it there); searching by full text and recency",
                    d.display()
                );
                return Ok(None);
            }
            d
        }
    };
    let model = steward_memory::embed::MiniLm::load(&dir)
        .map_err(|e| anyhow::anyhow!("memory.model_dir: {e}"))?;
    tracing::info!(model = steward_memory::embed::MINILM, dir = %dir.display(), "memory embeddings on");
    Ok(Some(Arc::new(model)))
}

/// Runs' sandboxes: the isolation this host enforces is probed at start and reported; without
/// a required layer, code is refused (saying what is missing) unless
/// `sandbox.allow_missing_layers`.
async fn sandboxes(cfg: &Config) -> Option<Arc<steward_engine::sandboxes::SandboxService>> {
    let c = &cfg.sandbox;
    if !c.enabled {
        return None;
    }
    let limits = steward_sandbox::Limits {
        memory_bytes: c.memory_mb << 20,
        pids: c.pids,
        cpu_millicores: Some(c.cpu_millicores),
        wall: std::time::Duration::from_millis(c.timeout_ms),
        tmp_bytes: c.tmp_mb << 20,
        tmp_inodes: c.tmp_inodes,
        output_bytes: c.output_bytes,
        workspace_bytes: (c.workspace_mb > 0).then_some(c.workspace_mb << 20),
        workspace_inodes: (c.workspace_inodes > 0).then_some(c.workspace_inodes),
    };
    let options = steward_sandbox::Options {
        host_uid: c.host_uid,
        host_gid: c.host_gid,
        max_concurrent: c.max_concurrent,
        queue_wait: std::time::Duration::from_millis(c.queue_ms),
        total_pids: (c.total_pids > 0).then_some(c.total_pids),
        total_memory_bytes: (c.total_memory_mb > 0).then_some(c.total_memory_mb << 20),
        allow_io_uring: c.allow_io_uring,
        allow_vsock: c.allow_vsock,
        egress_private: c.egress_private,
    };
    let dir = cfg.server.data_dir.join("sandboxes");
    let ready = async {
        // Workspaces, layers and roots are for this server alone.
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let helper = std::env::current_exe().map_err(|e| e.to_string())?;
        let s = steward_sandbox::Sandboxes::with_options(
            helper,
            dir.join("roots"),
            c.allow_missing_layers,
            options,
        )
        .map_err(|e| e.to_string())?;
        let probe_ws = dir.join("probe");
        std::fs::create_dir_all(&probe_ws).map_err(|e| e.to_string())?;
        let layers = steward_sandbox::probe(&s, &probe_ws).await;
        let missing = layers.missing();
        tracing::info!(layers = %serde_json::to_string(&layers).unwrap_or_default(), "sandbox isolation in force");
        if !missing.is_empty() && !c.allow_missing_layers {
            return Err(format!(
                "missing isolation layers: {} (set sandbox.allow_missing_layers to run code anyway)",
                missing.join(", ")
            ));
        }
        Ok(s)
    }
    .await;
    if let Err(why) = &ready {
        tracing::warn!(%why, "sandboxes are unavailable: sandbox tools will be refused");
    }
    Some(Arc::new(steward_engine::sandboxes::SandboxService::new(
        ready,
        dir.join("workspaces"),
        dir.join("persistent"),
        limits,
        c.cpu_second_usd,
    )))
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = load_config(&args)?;
    // The exporter's HTTP client is a blocking one, which must be built off the async threads.
    let tcfg = cfg.telemetry.clone();
    let mut telemetry =
        tokio::task::spawn_blocking(move || crate::telemetry::init(&tcfg)).await??;
    let (admin, viewer) = (
        cfg.server.admin_token.as_deref().unwrap_or(""),
        cfg.server.viewer_token.as_deref().unwrap_or(""),
    );
    if !viewer.is_empty() && admin.is_empty() {
        bail!("server.viewer_token is set without server.admin_token: with no admin token the management API is open to everyone; set both, or neither");
    }
    if !viewer.is_empty() && viewer == admin {
        bail!("server.viewer_token must differ from server.admin_token: it may only read");
    }
    if cfg.engine.heartbeat_ms >= cfg.engine.lease_ttl_ms {
        bail!("engine.heartbeat_ms must be shorter than engine.lease_ttl_ms, or leases expire between renewals");
    }
    let engine = start_engine(&cfg, None).await?;
    let own_spans = telemetry
        .own_spans
        .take()
        .map(|own| tokio::spawn(crate::own_spans::keep(engine.clone(), own)));
    if let Some(path) = &cfg.gov.policy_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading gov.policy_file {}", path.display()))?;
        let rec = engine
            .policies()
            .put(&text)
            .await
            .with_context(|| format!("gov.policy_file {}", path.display()))?;
        tracing::info!(version = rec.version, hash = %rec.hash, "policies from gov.policy_file in force");
    }
    let listener = tokio::net::TcpListener::bind(&cfg.server.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.server.listen))?;
    let addr = listener.local_addr()?;
    // Tests and the demo read this line to find the port.
    println!(
        "steward listening on http://{addr} (store: {}, node: {})",
        engine.store().backend(),
        engine.node()
    );
    tracing::info!(%addr, data_dir = %cfg.server.data_dir.display(), "serving");
    if cfg.server.admin_token.as_deref().unwrap_or("").is_empty() {
        tracing::warn!("no server.admin_token: the management API (/api/v1) is open to anyone who can reach it; set STEWARD_SERVER__ADMIN_TOKEN");
    }

    let app = steward_api::router(engine.clone(), &cfg.server);
    let grace = Duration::from_millis(cfg.server.shutdown_grace_ms);
    let engine2 = engine.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            tracing::info!("shutting down: no new work; finishing in-flight steps");
            engine2.shutdown(grace).await;
        })
        .await?;
    tracing::info!("stopped");
    // Sends the spans still buffered; blocking, so off the async threads. Shutting the
    // tracer down closes the store's channel, so its writer ends once the last are kept.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    if let Some(writer) = own_spans {
        let _ = tokio::time::timeout(crate::own_spans::FLUSH_WAIT, writer).await;
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
