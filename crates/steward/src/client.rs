//! The CLI verbs: each is an HTTP call (or a few) to a Steward server, and nothing else.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use steward_api::wire::{
    Agent, AgentList, ApplyResult, Approval, ApprovalList, AuditReport, CostReport, Journal,
    JournalItem, Run, RunList,
};

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum GetWhat {
    Agents,
    Runs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ResolveWhat {
    Retry,
    Fail,
}

#[derive(Clone, clap::Subcommand)]
pub enum AuditWhat {
    /// Check every record, the numbering and the signed checkpoints; exits 1 when anything was
    /// changed, deleted, inserted or reordered, naming the records.
    Verify,
    /// Write records as JSON lines with inclusion proofs, to stdout.
    Export {
        /// Only records from this long ago on (e.g. 24h, 30m), or since a Unix time in ms.
        #[arg(long)]
        since: Option<String>,
    },
}

#[derive(Clone, clap::Subcommand)]
pub enum ToolsWhat {
    /// The registry's tools: name, annotations, whether MCP clients may be given it.
    Ls,
    /// One tool in full: description, argument schema, annotations.
    Describe { name: String },
    /// Calls a tool as the agent whose API key is given, through `/mcp`: decided by policy,
    /// its arguments checked against its schema, audited. Prints the result as JSON.
    Call {
        name: String,
        /// The arguments, a JSON object.
        #[arg(default_value = "{}")]
        arguments: String,
        /// The calling agent's API key.
        #[arg(long, env = "STEWARD_API_KEY", hide_env_values = true)]
        key: String,
    },
    /// Ranked search over the tools the agent whose API key is given may call.
    Search {
        /// Words describing what the tool should do.
        query: String,
        #[arg(long, default_value_t = 10)]
        limit: u32,
        /// The searching agent's API key.
        #[arg(long, env = "STEWARD_API_KEY", hide_env_values = true)]
        key: String,
    },
}

#[derive(Clone, clap::Subcommand)]
// Parsed once per process: the size of its largest variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum McpWhat {
    /// Adds (or replaces) an upstream MCP server, spoken to over stdio (`steward mcp add NAME
    /// [--env K=V]... -- PROGRAM ARGS...`) or Streamable HTTP (`steward mcp add NAME --url URL
    /// [--header 'Authorization=Bearer {{secret:TOKEN}}']... [--oauth-token-url URL
    /// --oauth-client-id ID ...]`). Its tools appear as `NAME.tool`.
    Add {
        name: String,
        #[arg(long = "env", value_name = "K=V", conflicts_with = "url")]
        env: Vec<String>,
        /// The server's Streamable HTTP endpoint, in place of a command.
        #[arg(long, conflicts_with = "command")]
        url: Option<String>,
        /// A header sent with every request to `--url`; `{{secret:NAME}}` is taken from the vault.
        #[arg(long = "header", value_name = "K=V", requires = "url")]
        header: Vec<String>,
        #[command(flatten)]
        oauth: OAuthFlags,
        /// Who answers for its tools (a team's or a person's name).
        #[arg(long)]
        owner: Option<String>,
        #[arg(last = true, required_unless_present = "url")]
        command: Vec<String>,
    },
    /// The upstream servers and how each is doing.
    Ls,
    /// Removes a server: its process stops and its tools leave the registry.
    Rm { name: String },
    /// Starts a server again.
    Restart { name: String },
}

#[derive(Clone, clap::Subcommand)]
// Parsed once per process: the size of its largest variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum OpenApiWhat {
    /// Adds (or replaces) an HTTP API from its OpenAPI 3 document — a file, or an http(s) URL
    /// this command fetches — each operation a tool `NAME.operationId`: `steward openapi add
    /// NAME DOCUMENT [--base-url URL] [--header 'Authorization=Bearer {{secret:TOKEN}}']
    /// [--query 'api_key={{secret:KEY}}']`.
    Add {
        name: String,
        document: String,
        /// Where the operations' paths are appended (else the document's first server).
        #[arg(long)]
        base_url: Option<String>,
        /// A header every call carries; `{{secret:NAME}}` is taken from the vault.
        #[arg(long = "header", value_name = "K=V")]
        header: Vec<String>,
        /// A query parameter every call carries; `{{secret:NAME}}` is taken from the vault.
        #[arg(long = "query", value_name = "K=V")]
        query: Vec<String>,
        #[command(flatten)]
        oauth: OAuthFlags,
        /// Who answers for its tools (a team's or a person's name).
        #[arg(long)]
        owner: Option<String>,
    },
    /// The configured APIs and their tools.
    Ls,
    /// Removes an API: its tools leave the registry.
    Rm { name: String },
}

/// An OAuth 2 client, for `openapi add` and `mcp add --url`.
#[derive(Clone, clap::Args)]
pub struct OAuthFlags {
    /// Authorise every request with an OAuth 2 access token from this token endpoint (the
    /// client-credentials grant, or the refresh-token grant with --oauth-refresh-token).
    #[arg(long, value_name = "URL", requires = "oauth_client_id")]
    oauth_token_url: Option<String>,
    #[arg(long, value_name = "ID", requires = "oauth_token_url")]
    oauth_client_id: Option<String>,
    /// The client's secret, from the vault: `{{secret:NAME}}`.
    #[arg(long, value_name = "{{secret:NAME}}", requires = "oauth_token_url")]
    oauth_client_secret: Option<String>,
    /// A scope to ask for (repeatable).
    #[arg(
        long = "oauth-scope",
        value_name = "SCOPE",
        requires = "oauth_token_url"
    )]
    oauth_scopes: Vec<String>,
    /// The first refresh token, from the vault: `{{secret:NAME}}`.
    #[arg(long, value_name = "{{secret:NAME}}", requires = "oauth_token_url")]
    oauth_refresh_token: Option<String>,
}

impl OAuthFlags {
    /// The `oauth` member of a request body, if a client was given.
    fn body(self) -> Option<Value> {
        let (token_url, client_id) = (self.oauth_token_url?, self.oauth_client_id?);
        Some(serde_json::json!({
            "token_url": token_url,
            "client_id": client_id,
            "client_secret": self.oauth_client_secret.unwrap_or_default(),
            "scopes": self.oauth_scopes,
            "refresh_token": self.oauth_refresh_token.unwrap_or_default(),
        }))
    }
}

/// `--flag K=V` arguments as a JSON object.
fn key_values(flag: &str, kvs: Vec<String>) -> anyhow::Result<serde_json::Map<String, Value>> {
    let mut m = serde_json::Map::new();
    for kv in kvs {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--{flag} takes K=V, not {kv:?}"))?;
        m.insert(k.to_string(), Value::String(v.to_string()));
    }
    Ok(m)
}

/// A server name as the CLI puts it in a path.
fn mcp_name(name: &str) -> anyhow::Result<&str> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
    {
        bail!("an MCP server name is letters, digits, `_` and `-`: {name:?}");
    }
    Ok(name)
}

#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    /// For event streams: no bound on the whole response, only on silence between chunks
    /// (the server sends keep-alives).
    stream: reqwest::Client,
}

impl Client {
    pub fn new(base: &str) -> anyhow::Result<Self> {
        // The admin token, when the server asks for one.
        let mut headers = reqwest::header::HeaderMap::new();
        if let Ok(token) = std::env::var("STEWARD_TOKEN") {
            let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .context("STEWARD_TOKEN holds characters a header cannot")?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers.clone())
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        let stream = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            http,
            stream,
        })
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let resp = rb.send().await.with_context(|| {
            format!(
                "cannot reach Steward at {} (is `steward serve` running? set --server)",
                self.base
            )
        })?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if !status.is_success() {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let msg = v
                .pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            let code = v
                .pointer("/error/code")
                .and_then(Value::as_str)
                .unwrap_or("http_error");
            bail!("{msg} ({code}, HTTP {})", status.as_u16());
        }
        serde_json::from_slice(&body)
            .with_context(|| "the server sent a response this client cannot read")
    }

    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<T> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    /// POSTs `body` as JSON and returns the answer's text (e.g. JSON lines).
    pub async fn post_for_text(&self, path: &str, body: &Value) -> anyhow::Result<String> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .with_context(|| format!("cannot reach Steward at {}", self.base))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let msg = v
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or(&text);
            bail!("{msg} (HTTP {})", status.as_u16());
        }
        Ok(text)
    }

    /// POSTs `body` with `content_type`; the answer is JSON.
    pub async fn post_body<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        content_type: &str,
        body: String,
    ) -> anyhow::Result<T> {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("content-type", content_type)
                .body(body),
        )
        .await
    }

    pub async fn apply_text(&self, text: String) -> anyhow::Result<ApplyResult> {
        self.send(
            self.http
                .post(format!("{}/api/v1/agents", self.base))
                .header("content-type", "application/yaml")
                .body(text),
        )
        .await
    }

    pub async fn apply(&self, path: &Path) -> anyhow::Result<()> {
        let mut files = Vec::new();
        if path.is_dir() {
            for e in
                std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))?
            {
                let p = e?.path();
                if matches!(
                    p.extension().and_then(|x| x.to_str()),
                    Some("yaml" | "yml" | "json")
                ) {
                    files.push(p);
                }
            }
            files.sort();
            if files.is_empty() {
                bail!("{} has no .yaml, .yml or .json files", path.display());
            }
        } else {
            files.push(path.to_path_buf());
        }
        // One request for all files: the server applies them all or none.
        let mut text = String::new();
        for f in &files {
            let t =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            text.push_str("---\n");
            text.push_str(&t);
            text.push('\n');
        }
        let res = self.apply_text(text).await?;
        for a in res.agents {
            println!(
                "agent/{} {} (version {})",
                a.name,
                if a.changed { "configured" } else { "unchanged" },
                a.version
            );
        }
        for s in res.supervisors {
            println!("supervisor/{s} applied");
        }
        Ok(())
    }

    pub async fn create_run(&self, agent: &str, input: &str) -> anyhow::Result<Run> {
        self.post_json("/api/v1/runs", &json!({"agent": agent, "input": input}))
            .await
    }

    pub async fn run(&self, agent: &str, input: &str, detach: bool) -> anyhow::Result<()> {
        let run = self.create_run(agent, input).await?;
        if detach {
            println!("{}", run.id);
            return Ok(());
        }
        let a: Agent = self
            .get_json(&format!(
                "/api/v1/agents/{agent}?version={}",
                run.agent_version
            ))
            .await?;
        let max_steps = a.spec.get("maxSteps").and_then(Value::as_u64).unwrap_or(0);
        println!("run {} of {agent} v{} started", run.id, run.agent_version);
        let end = self.follow(&run.id, max_steps).await?;
        print_end(&end);
        if end.state != "succeeded" {
            bail!("run {} ended {}", end.id, end.state);
        }
        Ok(())
    }

    /// Prints journal entries as they appear (the run's event stream) until the run ends or
    /// waits for a human.
    pub async fn follow(&self, id: &str, max_steps: u64) -> anyhow::Result<Run> {
        let url = format!("{}/api/v1/runs/{id}/events", self.base);
        let mut resp = self
            .stream
            .get(&url)
            .send()
            .await
            .with_context(|| format!("cannot reach Steward at {}", self.base))?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            bail!(
                "{} (HTTP {status})",
                v.pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("the event stream failed")
            );
        }
        let mut buf: Vec<u8> = Vec::new();
        let mut turns = 0;
        while let Some(chunk) = resp.chunk().await.context("the event stream broke off")? {
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = buf.drain(..pos + 2).collect();
                let block = String::from_utf8_lossy(&block);
                let mut event = "message";
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                match event {
                    "entry" => {
                        let e: JournalItem = serde_json::from_str(&data)?;
                        if e.phase == "intent" && e.kind == "model" {
                            turns += 1;
                        }
                        if e.phase == "outcome" {
                            println!("  [turn {turns}/{max_steps}] {}", describe(&e));
                        }
                    }
                    "end" => return Ok(serde_json::from_str(&data)?),
                    "error" => bail!("{data}"),
                    _ => {} // keep-alives
                }
            }
        }
        bail!("the server closed the event stream before the run ended")
    }

    pub async fn get(&self, what: GetWhat, state: Option<&str>, limit: i64) -> anyhow::Result<()> {
        match what {
            GetWhat::Agents => {
                let l: AgentList = self.get_json("/api/v1/agents").await?;
                println!("{:<24} {:>7}  {:<28} TOOLS", "NAME", "VERSION", "MODEL");
                for a in l.agents {
                    let tools: Vec<&str> = a
                        .spec
                        .get("tools")
                        .and_then(Value::as_array)
                        .map(|t| t.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    let model = a.spec.get("model").and_then(Value::as_str).unwrap_or("");
                    println!(
                        "{:<24} {:>7}  {:<28} {}",
                        a.name,
                        a.version,
                        model,
                        tools.join(",")
                    );
                }
            }
            GetWhat::Runs => {
                let mut q = format!("/api/v1/runs?limit={limit}");
                if let Some(s) = state {
                    q.push_str(&format!("&state={s}"));
                }
                let l: RunList = self.get_json(&q).await?;
                println!(
                    "{:<38} {:<20} {:<10} {:<8} RESULT",
                    "ID", "AGENT", "STATE", "AGE"
                );
                let now = now_ms();
                for r in l.runs {
                    let summary = r
                        .result
                        .clone()
                        .or(r
                            .error
                            .as_ref()
                            .map(|e| format!("{}: {}", e.code, e.message)))
                        .unwrap_or_default();
                    println!(
                        "{:<38} {:<20} {:<10} {:<8} {}",
                        r.id,
                        r.agent,
                        r.state,
                        age(now - r.created_at),
                        clip(&summary, 60)
                    );
                }
            }
        }
        Ok(())
    }

    pub async fn logs(&self, id: &str) -> anyhow::Result<()> {
        let run: Run = self.get_json(&format!("/api/v1/runs/{id}")).await?;
        let j: Journal = self
            .get_json(&format!("/api/v1/runs/{id}/journal?limit=10000"))
            .await?;
        println!(
            "run {} · agent {} v{} · {}",
            run.id, run.agent, run.agent_version, run.state
        );
        println!("input: {}", clip(&run.input, 200));
        let start = run.created_at;
        let (mut tin, mut tout) = (0, 0);
        for e in j.entries.iter().filter(|e| e.phase == "outcome") {
            tin += e.tokens_in;
            tout += e.tokens_out;
            let tokens = if e.kind == "model" {
                format!("{:>5}→{:<5}", e.tokens_in, e.tokens_out)
            } else {
                " ".repeat(11)
            };
            println!(
                "  +{:>8}  #{:<3} {:>9}  {tokens}  {}",
                format_ms(e.at - start),
                e.seq,
                format_us(e.duration_us),
                describe(e)
            );
        }
        let pending: Vec<&JournalItem> = j
            .entries
            .iter()
            .filter(|e| {
                e.phase == "intent"
                    && !j
                        .entries
                        .iter()
                        .any(|o| o.seq == e.seq && o.phase == "outcome")
            })
            .collect();
        for e in pending {
            println!(
                "  +{:>8}  #{:<3} {:>9}  {:11}  {} {} — intent recorded, no outcome yet",
                format_ms(e.at - start),
                e.seq,
                "…",
                "",
                e.kind,
                e.name
            );
        }
        println!("tokens: {tin} in, {tout} out");
        print_end(&run);
        Ok(())
    }

    pub async fn cost(&self, by: &str, days: i64) -> anyhow::Result<()> {
        let r: CostReport = self
            .get_json(&format!("/api/v1/costs?by={by}&days={days}"))
            .await?;
        println!(
            "{:<40} {:>7} {:>12} {:>12} {:>12}",
            by.to_uppercase(),
            "CALLS",
            "TOKENS IN",
            "TOKENS OUT",
            "COST USD"
        );
        for l in &r.lines {
            let mut unpriced = if l.unpriced_calls > 0 {
                format!("  ({} unpriced)", l.unpriced_calls)
            } else {
                String::new()
            };
            if let Some(o) = &l.outcome {
                unpriced = format!("  {o}{unpriced}");
            }
            println!(
                "{:<40} {:>7} {:>12} {:>12} {:>12.6}{unpriced}",
                clip(&l.key, 40),
                l.calls,
                l.tokens_in,
                l.tokens_out,
                l.cost_usd
            );
        }
        println!(
            "{:<40} {:>7} {:>12} {:>12} {:>12.6}",
            "TOTAL", "", "", "", r.total_usd
        );
        let o = &r.outcomes;
        let per = |c: Option<f64>| c.map_or("-".to_string(), |c| format!("{c:.6}"));
        println!(
            "per successful run: {} USD ({} of {} runs); per successful task: {} USD ({} of {} tasks)",
            per(o.cost_per_successful_run_usd),
            o.successful_runs,
            o.runs,
            per(o.cost_per_successful_task_usd),
            o.successful_tasks,
            o.tasks
        );
        Ok(())
    }

    pub async fn fork(&self, id: &str, edits: &Value) -> anyhow::Result<()> {
        let r: Run = self
            .post_json(&format!("/api/v1/runs/{id}/fork"), edits)
            .await?;
        println!("run {} forked from {id}", r.id);
        Ok(())
    }

    pub async fn cancel(&self, id: &str, reason: &str) -> anyhow::Result<()> {
        let r: Run = self
            .post_json(
                &format!("/api/v1/runs/{id}/cancel"),
                &json!({"reason": reason}),
            )
            .await?;
        println!(
            "run {} {}",
            r.id,
            if r.state == "cancelled" {
                "cancelled"
            } else {
                "cancelling"
            }
        );
        Ok(())
    }

    pub async fn tools(&self, what: ToolsWhat) -> anyhow::Result<()> {
        match what {
            ToolsWhat::Ls => {
                let list: steward_api::wire::ToolList = self.get_json("/api/v1/tools").await?;
                println!("{:<22} {:<8} {:<36} MCP", "NAME", "SOURCE", "HINTS");
                for t in list.tools {
                    let a = &t.annotations;
                    let hints: Vec<&str> = [
                        (a.read_only, "read-only"),
                        (a.destructive, "destructive"),
                        (a.idempotent, "idempotent"),
                        (a.open_world, "open-world"),
                    ]
                    .into_iter()
                    .filter_map(|(on, name)| on.then_some(name))
                    .collect();
                    let mcp = if t.outside_runs { "yes" } else { "runs only" };
                    println!(
                        "{:<22} {:<8} {:<36} {mcp}",
                        t.name,
                        t.source,
                        hints.join(",")
                    );
                }
            }
            ToolsWhat::Describe { name } => {
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                {
                    bail!("a tool name is letters, digits, `_`, `.` and `-`: {name:?}");
                }
                let path = format!("/api/v1/tools/{name}");
                let t: serde_json::Value = self.get_json(&path).await?;
                println!("{}", serde_json::to_string_pretty(&t)?);
            }
            ToolsWhat::Call {
                name,
                arguments,
                key,
            } => {
                let arguments: Value = serde_json::from_str(&arguments)
                    .context("the arguments are not JSON (give an object, e.g. '{\"a\": 1}')")?;
                let result = self.mcp_tool_call(&key, &name, arguments).await?;
                println!("{}", serde_json::to_string_pretty(&result)?);
            }
            ToolsWhat::Search { query, limit, key } => {
                let args = serde_json::json!({"query": query, "limit": limit});
                let result = self.mcp_tool_call(&key, "tools_search", args).await?;
                for t in result["tools"].as_array().into_iter().flatten() {
                    println!(
                        "{:<32} {:>6}  {}",
                        t["name"].as_str().unwrap_or_default(),
                        t["score"],
                        t["description"].as_str().unwrap_or_default()
                    );
                }
            }
        }
        Ok(())
    }

    /// `tools/call` at `/mcp` as the agent with API key `key`: the tool's structured result,
    /// or its text as `{"content": …}`; an error result is an error.
    async fn mcp_tool_call(
        &self,
        key: &str,
        name: &str,
        arguments: Value,
    ) -> anyhow::Result<Value> {
        let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": name, "arguments": arguments}});
        let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
            .context("the API key holds characters a header cannot")?;
        auth.set_sensitive(true);
        let reply: Value = self
            .send(
                self.stream
                    .post(format!("{}/mcp", self.base))
                    .header(reqwest::header::AUTHORIZATION, auth)
                    .header(
                        reqwest::header::ACCEPT,
                        "application/json, text/event-stream",
                    )
                    .json(&body),
            )
            .await?;
        if let Some(e) = reply.get("error") {
            bail!("{}", e["message"].as_str().unwrap_or("the call failed"));
        }
        let result = &reply["result"];
        let text: Vec<&str> = result["content"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["text"].as_str())
            .collect();
        if result["isError"] == true {
            bail!("{}", text.join(" "));
        }
        Ok(match result.get("structuredContent") {
            Some(v) if !v.is_null() => v.clone(),
            _ => serde_json::json!({"content": text.join("\n")}),
        })
    }

    pub async fn mcp(&self, what: McpWhat) -> anyhow::Result<()> {
        use steward_api::wire::{McpServer, McpServerList};
        let show = |s: &McpServer| {
            let status = s
                .status
                .as_ref()
                .map_or("not started here".to_string(), |st| {
                    let mut line = format!(
                        "{} ({} tools, {} restarts)",
                        st.state, st.tools, st.restarts
                    );
                    if let Some(e) = &st.last_error {
                        line.push_str(&format!(": {e}"));
                    }
                    line
                });
            let mut what = s.url.clone().unwrap_or_else(|| s.command.join(" "));
            if let Some(token_url) = &s.oauth_token_url {
                what.push_str(&format!(" (OAuth: {token_url})"));
            }
            println!("{:<16} {what:<40} {status}", s.name);
        };
        match what {
            McpWhat::Add {
                name,
                env,
                url,
                header,
                oauth,
                owner,
                command,
            } => {
                let oauth = oauth.body();
                if url.is_none() && oauth.is_some() {
                    bail!("--oauth-* authorise requests to --url: a server over stdio has none");
                }
                let body = match url {
                    Some(url) => serde_json::json!({
                        "url": url,
                        "headers": key_values("header", header)?,
                        "oauth": oauth,
                    }),
                    None => serde_json::json!({"command": command, "env": key_values("env", env)?}),
                };
                let mut body = body;
                if let Some(owner) = owner {
                    body["owner"] = owner.into();
                }
                let s: McpServer = self
                    .send(
                        self.http
                            .put(format!(
                                "{}/api/v1/mcp-servers/{}",
                                self.base,
                                mcp_name(&name)?
                            ))
                            .json(&body),
                    )
                    .await?;
                show(&s);
            }
            McpWhat::Ls => {
                let list: McpServerList = self.get_json("/api/v1/mcp-servers").await?;
                for s in &list.servers {
                    show(s);
                }
            }
            McpWhat::Rm { name } => {
                let resp = self
                    .http
                    .delete(format!(
                        "{}/api/v1/mcp-servers/{}",
                        self.base,
                        mcp_name(&name)?
                    ))
                    .send()
                    .await?;
                if !resp.status().is_success() {
                    bail!("{}", resp.text().await.unwrap_or_default());
                }
            }
            McpWhat::Restart { name } => {
                let path = format!("/api/v1/mcp-servers/{}/restart", mcp_name(&name)?);
                let s: McpServer = self.post_json(&path, &serde_json::json!({})).await?;
                show(&s);
            }
        }
        Ok(())
    }

    pub async fn openapi(&self, what: OpenApiWhat) -> anyhow::Result<()> {
        use steward_api::wire::{OpenApi, OpenApiList};
        let show = |a: &OpenApi| {
            println!("{:<16} {:<40} {} tools", a.name, a.base_url, a.tools.len());
            for t in &a.tools {
                println!("  {t}");
            }
            for s in &a.skipped {
                println!("  left out: {s}");
            }
        };
        match what {
            OpenApiWhat::Add {
                name,
                document,
                base_url,
                header,
                query,
                oauth,
                owner,
            } => {
                let text = if document.starts_with("http://") || document.starts_with("https://") {
                    let resp = self
                        .http
                        .get(&document)
                        .send()
                        .await
                        .with_context(|| format!("fetching {document}"))?;
                    if !resp.status().is_success() {
                        bail!("fetching {document}: HTTP {}", resp.status());
                    }
                    resp.text().await?
                } else {
                    std::fs::read_to_string(&document)
                        .with_context(|| format!("reading {document}"))?
                };
                let mut body = serde_json::json!({
                    "document": text,
                    "base_url": base_url,
                    "headers": key_values("header", header)?,
                    "query": key_values("query", query)?,
                });
                if let Some(oauth) = oauth.body() {
                    body["oauth"] = oauth;
                }
                if let Some(owner) = owner {
                    body["owner"] = owner.into();
                }
                let a: OpenApi = self
                    .send(
                        self.http
                            .put(format!("{}/api/v1/openapi/{}", self.base, mcp_name(&name)?))
                            .json(&body),
                    )
                    .await?;
                show(&a);
            }
            OpenApiWhat::Ls => {
                let list: OpenApiList = self.get_json("/api/v1/openapi").await?;
                for a in &list.apis {
                    show(a);
                }
            }
            OpenApiWhat::Rm { name } => {
                let resp = self
                    .http
                    .delete(format!("{}/api/v1/openapi/{}", self.base, mcp_name(&name)?))
                    .send()
                    .await?;
                if !resp.status().is_success() {
                    bail!("{}", resp.text().await.unwrap_or_default());
                }
            }
        }
        Ok(())
    }

    pub async fn audit(&self, what: AuditWhat) -> anyhow::Result<()> {
        match what {
            AuditWhat::Verify => {
                let r: AuditReport = self.get_json("/api/v1/audit/verify").await?;
                println!(
                    "{} records ({} past retention), {} checkpoints, signed up to {}",
                    r.records, r.pruned, r.checkpoints, r.signed_size
                );
                if r.ok {
                    println!("✔ the audit log verifies");
                    return Ok(());
                }
                for p in &r.problems {
                    println!("✘ {}", p.what);
                }
                bail!(
                    "the audit log does not verify: {} problem(s)",
                    r.problems.len()
                )
            }
            AuditWhat::Export { since } => {
                let since = match since.as_deref() {
                    None => 0,
                    Some(s) => match s.parse::<i64>() {
                        Ok(ms) => ms,
                        Err(_) => {
                            let ago = steward_types::manifest::duration::parse(s)
                                .map_err(|e| anyhow::anyhow!("--since: {e}"))?;
                            let now = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)?
                                .as_millis() as i64;
                            now - ago as i64
                        }
                    },
                };
                let resp = self
                    .http
                    .get(format!("{}/api/v1/audit/export?since={since}", self.base))
                    .send()
                    .await?;
                if !resp.status().is_success() {
                    bail!("export failed: HTTP {}", resp.status().as_u16());
                }
                print!("{}", resp.text().await?);
                Ok(())
            }
        }
    }

    pub async fn incidents(
        &self,
        state: &str,
        resolve: Option<&str>,
        resolution: &str,
    ) -> anyhow::Result<()> {
        if let Some(id) = resolve {
            let i: steward_api::wire::Incident = self
                .post_json(
                    &format!("/api/v1/incidents/{id}/resolve"),
                    &serde_json::json!({"resolution": resolution}),
                )
                .await?;
            println!("incident {} {}", i.id, i.state);
            return Ok(());
        }
        let r: steward_api::wire::IncidentList = self
            .get_json(&format!("/api/v1/incidents?state={state}"))
            .await?;
        println!("{:<38} {:<10} {:<20} REASON", "ID", "STATE", "SUPERVISOR");
        for i in &r.incidents {
            println!(
                "{:<38} {:<10} {:<20} {}",
                i.id,
                i.state,
                clip(&i.supervisor, 20),
                i.reason
            );
        }
        Ok(())
    }

    pub async fn approvals(&self, state: &str) -> anyhow::Result<()> {
        let r: ApprovalList = self
            .get_json(&format!("/api/v1/approvals?state={state}"))
            .await?;
        println!(
            "{:<38} {:<10} {:<12} {:<30} RUN",
            "ID", "STATE", "APPROVERS", "STEP"
        );
        for a in &r.approvals {
            println!(
                "{:<38} {:<10} {:<12} {:<30} {}",
                a.id,
                a.state,
                clip(&a.approvers, 12),
                clip(&format!("{} {}", a.action, a.resource), 30),
                a.run_id
            );
        }
        Ok(())
    }

    pub async fn decide(&self, id: &str, approve: bool, reason: &str) -> anyhow::Result<()> {
        let who = std::env::var("USER").unwrap_or_else(|_| "cli".into());
        let verb = if approve { "approve" } else { "deny" };
        let a: Approval = self
            .post_json(
                &format!("/api/v1/approvals/{id}/{verb}"),
                &serde_json::json!({"reason": reason, "by": who}),
            )
            .await?;
        println!("approval {} {}; run {} resumes", a.id, a.state, a.run_id);
        Ok(())
    }

    pub async fn resolve(&self, id: &str, action: ResolveWhat) -> anyhow::Result<()> {
        let a = match action {
            ResolveWhat::Retry => "retry",
            ResolveWhat::Fail => "fail",
        };
        let r: Run = self
            .post_json(&format!("/api/v1/runs/{id}/resolve"), &json!({"action": a}))
            .await?;
        println!("run {} is now {}", r.id, r.state);
        Ok(())
    }
}

/// One line for a journal outcome; scripted model output is labelled as such.
pub fn describe(e: &JournalItem) -> String {
    let status = if e.ok { "" } else { "FAILED " };
    if e.kind == "model" {
        let provider = e.body.get("provider").and_then(Value::as_str).unwrap_or("");
        let label = if provider == "scripted" {
            "[scripted] ".to_string()
        } else {
            String::new()
        };
        if let Some(err) = e.body.get("error").and_then(Value::as_str) {
            return format!("model {}: {status}{}", e.name, clip(err, 100));
        }
        let calls: Vec<String> = e
            .body
            .get("tool_calls")
            .and_then(Value::as_array)
            .map(|c| {
                c.iter()
                    .filter_map(|c| c.get("name").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        if calls.is_empty() {
            let content = e.body.get("content").and_then(Value::as_str).unwrap_or("");
            format!("model {label}answered: {}", clip(content, 80))
        } else {
            format!("model {label}asked for: {}", calls.join(", "))
        }
    } else {
        let detail = match (e.body.get("ok"), e.body.get("error")) {
            (_, Some(err)) => clip(err.as_str().unwrap_or(""), 80),
            (Some(v), _) => clip(&v.to_string(), 80),
            _ => String::new(),
        };
        format!("tool {} {status}→ {detail}", e.name)
    }
}

fn print_end(r: &Run) {
    match r.state.as_str() {
        "succeeded" => println!("✔ succeeded: {}", r.result.as_deref().unwrap_or("")),
        _ => {
            let err = r
                .error
                .as_ref()
                .map(|e| format!("{}: {}", e.code, e.message))
                .unwrap_or_default();
            println!(
                "✘ {}{}{}",
                r.state,
                if err.is_empty() { "" } else { " — " },
                err
            );
        }
    }
}

pub fn clip(s: &str, n: usize) -> String {
    let one_line = s.replace('\n', " ");
    if one_line.chars().count() <= n {
        one_line
    } else {
        format!("{}…", one_line.chars().take(n).collect::<String>())
    }
}

fn format_ms(ms: i64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.2}s", ms as f64 / 1000.0)
    }
}

fn format_us(us: i64) -> String {
    if us < 1000 {
        format!("{us}µs")
    } else {
        format_ms(us / 1000)
    }
}

fn age(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[derive(clap::Subcommand)]
pub enum SandboxWhat {
    /// A new, empty persistent sandbox (or `--from SNAPSHOT`: a fork of it).
    Create {
        #[arg(long)]
        from: Option<String>,
    },
    /// Runs a command (`/bin/sh -c`) in a sandbox; exits with its exit code.
    Exec {
        id: String,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Copies a file into or out of a sandbox: `cp local ID:path` or `cp ID:path local`.
    Cp { from: String, to: String },
    /// Freezes a sandbox's workspace into a snapshot; prints its id.
    Snapshot { id: String },
    /// New sandboxes from a snapshot (nothing is copied).
    Fork {
        snapshot: String,
        #[arg(long, default_value_t = 1)]
        count: usize,
    },
    /// Puts a sandbox back on a snapshot.
    Restore { id: String, snapshot: String },
    /// Lists sandboxes.
    Ls,
    /// Removes a sandbox.
    Rm { id: String },
}

/// `'…'` for a shell, whatever the text holds.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Client {
    async fn sandbox_run(&self, id: &str, command: &str, stdin: &str) -> anyhow::Result<Value> {
        self.post_json(
            &format!("/api/v1/sandboxes/{id}/exec"),
            &json!({"command": command, "stdin": stdin}),
        )
        .await
    }

    pub async fn sandbox(&self, what: SandboxWhat) -> anyhow::Result<()> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        match what {
            SandboxWhat::Create { from } => {
                let r: Value = self
                    .post_json("/api/v1/sandboxes", &json!({"from_snapshot": from}))
                    .await?;
                println!("{}", r["sandboxes"][0].as_str().unwrap_or_default());
            }
            SandboxWhat::Fork { snapshot, count } => {
                let r: Value = self
                    .post_json(
                        "/api/v1/sandboxes",
                        &json!({"from_snapshot": snapshot, "count": count}),
                    )
                    .await?;
                for id in r["sandboxes"].as_array().into_iter().flatten() {
                    println!("{}", id.as_str().unwrap_or_default());
                }
            }
            SandboxWhat::Exec { id, command } => {
                let r = self.sandbox_run(&id, &command.join(" "), "").await?;
                print!("{}", r["stdout"].as_str().unwrap_or_default());
                eprint!("{}", r["stderr"].as_str().unwrap_or_default());
                match r["ended"].as_str() {
                    Some("exit") => {
                        let code = r["exit_code"].as_i64().unwrap_or(1);
                        if code != 0 {
                            std::process::exit(code as i32);
                        }
                    }
                    other => bail!(
                        "the command ended: {}{}",
                        other.unwrap_or("?"),
                        r["signal"]
                            .as_i64()
                            .map(|s| format!(" (signal {s})"))
                            .unwrap_or_default()
                    ),
                }
            }
            SandboxWhat::Cp { from, to } => match (from.split_once(':'), to.split_once(':')) {
                (None, Some((id, path))) => {
                    let bytes = std::fs::read(&from).with_context(|| format!("reading {from}"))?;
                    let p = shell_quote(path);
                    let r = self
                        .sandbox_run(
                            id,
                            &format!("mkdir -p \"$(dirname -- {p})\" && base64 -d > {p}"),
                            &b64.encode(bytes),
                        )
                        .await?;
                    if r["exit_code"] != 0 {
                        bail!("{}", r["stderr"].as_str().unwrap_or("copy failed"));
                    }
                }
                (Some((id, path)), None) => {
                    let r = self
                        .sandbox_run(id, &format!("base64 -w0 -- {}", shell_quote(path)), "")
                        .await?;
                    if r["exit_code"] != 0 || r["truncated"] == true {
                        bail!(
                            "{}",
                            r["stderr"]
                                .as_str()
                                .filter(|s| !s.is_empty())
                                .unwrap_or("the file is larger than a sandbox's output limit")
                        );
                    }
                    let bytes = b64
                        .decode(r["stdout"].as_str().unwrap_or_default().trim())
                        .context("decoding the file")?;
                    std::fs::write(&to, bytes).with_context(|| format!("writing {to}"))?;
                }
                _ => bail!("cp: exactly one side must be ID:path"),
            },
            SandboxWhat::Snapshot { id } => {
                let r: Value = self
                    .post_json(&format!("/api/v1/sandboxes/{id}/snapshot"), &json!({}))
                    .await?;
                println!("{}", r["snapshot"].as_str().unwrap_or_default());
            }
            SandboxWhat::Restore { id, snapshot } => {
                let resp = self
                    .http
                    .post(format!("{}/api/v1/sandboxes/{id}/restore", self.base))
                    .json(&json!({"snapshot": snapshot}))
                    .send()
                    .await?;
                if !resp.status().is_success() {
                    bail!("{}", resp.text().await.unwrap_or_default());
                }
            }
            SandboxWhat::Ls => {
                let r: Value = self.get_json("/api/v1/sandboxes").await?;
                for s in r["sandboxes"].as_array().into_iter().flatten() {
                    println!(
                        "{}  {} layer(s)",
                        s["id"].as_str().unwrap_or_default(),
                        s["layers"].as_array().map_or(0, Vec::len)
                    );
                }
            }
            SandboxWhat::Rm { id } => {
                let resp = self
                    .http
                    .delete(format!("{}/api/v1/sandboxes/{id}", self.base))
                    .send()
                    .await?;
                if !resp.status().is_success() {
                    bail!("{}", resp.text().await.unwrap_or_default());
                }
            }
        }
        Ok(())
    }
}
