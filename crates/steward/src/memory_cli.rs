//! `steward memory`: agents' memory from the command line, as the administrator (with
//! `STEWARD_TOKEN` when the server asks for one).

use anyhow::Context;
use serde_json::{json, Value};
use steward_api::wire::{
    AddedMemory, Curation, ErasureReport, ImportedMemories, MemoryHistory, MemorySearchResult,
};

use crate::client::Client;

#[derive(Clone, clap::Subcommand)]
pub enum MemoryWhat {
    /// Remember a fact in a scope; prints its id.
    Add {
        /// `org`, `user:<id>`, `agent:<name>`, `run:<id>` or `collection:<name>`.
        #[arg(long)]
        scope: String,
        text: String,
        #[arg(long)]
        subject: Option<String>,
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// A JSON object kept with the memory.
        #[arg(long)]
        metadata: Option<String>,
        /// The id of the current version this one corrects.
        #[arg(long)]
        supersedes: Option<String>,
        /// Erase it this many milliseconds from now.
        #[arg(long)]
        ttl_ms: Option<i64>,
        /// An entity it names (repeat for more).
        #[arg(long = "entity")]
        entities: Vec<String>,
        /// An edge it states, `SUBJECT|RELATION|OBJECT` (e.g. `Alice|works_at|Acme`).
        #[arg(long = "relation")]
        relations: Vec<String>,
    },
    /// Search scopes; prints the best matches, best first.
    Search {
        query: String,
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        #[arg(long, default_value_t = 10)]
        limit: usize,
        /// hybrid, bm25, vector, graph or recency.
        #[arg(long)]
        method: Option<String>,
        /// Print the whole answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every version of the fact a memory belongs to, oldest first.
    History { id: String },
    /// Write scopes' memories (history included) to standard output as JSON lines.
    Export {
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
    /// Import an export (a file, or `-` for standard input), all or nothing.
    Import { file: std::path::PathBuf },
    /// Have the curation model learn from a conversation (needs `[memory] curation_model`);
    /// prints the request's id, or with `--wait` what it wrote.
    Curate {
        #[arg(long)]
        scope: String,
        /// The conversation: a JSON array of `{"role", "content"}` messages, or plain text (one
        /// user message); `-` for standard input.
        file: std::path::PathBuf,
        /// Wait until it is done (at most two minutes) and print what it wrote.
        #[arg(long)]
        wait: bool,
    },
    /// Erase facts (every version) by id, by subject, or a whole scope; prints the report.
    Erase {
        #[arg(long)]
        scope: String,
        #[arg(long = "id")]
        ids: Vec<String>,
        #[arg(long)]
        subject: Option<String>,
        /// Every fact naming this entity (its id or any of its names), and the entity.
        #[arg(long)]
        entity: Option<String>,
        /// Everything in the scope.
        #[arg(long)]
        all: bool,
    },
}

impl Client {
    pub async fn memory(&self, what: MemoryWhat) -> anyhow::Result<()> {
        match what {
            MemoryWhat::Add {
                scope,
                text,
                subject,
                tags,
                metadata,
                supersedes,
                ttl_ms,
                entities,
                relations,
            } => {
                let relations = relations
                    .iter()
                    .map(|r| match r.split('|').collect::<Vec<_>>()[..] {
                        [s, rel, o] => Ok(json!({"subject": s, "relation": rel, "object": o})),
                        _ => anyhow::bail!("--relation {r:?}: expected SUBJECT|RELATION|OBJECT"),
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let entities: Vec<Value> = entities.iter().map(|e| json!({"name": e})).collect();
                let metadata: Option<Value> = metadata
                    .map(|m| serde_json::from_str(&m))
                    .transpose()
                    .context("--metadata is not JSON (give an object, e.g. '{\"k\": 1}')")?;
                let body = json!({"scope": scope, "text": text, "subject": subject, "tags": tags,
                    "metadata": metadata, "supersedes": supersedes, "ttl_ms": ttl_ms,
                    "entities": entities, "relations": relations});
                let r: AddedMemory = self.post_json("/api/v1/memories", &body).await?;
                println!("{}", r.memory.id);
            }
            MemoryWhat::Search {
                query,
                scopes,
                limit,
                method,
                json,
            } => {
                let body =
                    json!({"query": query, "scopes": scopes, "limit": limit, "method": method});
                if json {
                    let r: Value = self.post_json("/api/v1/memories/search", &body).await?;
                    println!("{}", serde_json::to_string_pretty(&r)?);
                    return Ok(());
                }
                let r: MemorySearchResult =
                    self.post_json("/api/v1/memories/search", &body).await?;
                for h in r.results {
                    println!(
                        "{:.4}  {}  {}  {}",
                        h.score, h.memory.id, h.memory.scope, h.memory.text
                    );
                }
            }
            MemoryWhat::History { id } => {
                let r: MemoryHistory = self
                    .get_json(&format!("/api/v1/memories/{}/history", path_segment(&id)?))
                    .await?;
                for v in r.versions {
                    let state = match (&v.superseded_by, v.expired_at) {
                        (Some(by), Some(at)) => format!("superseded by {by} at {at}"),
                        _ => "current".to_string(),
                    };
                    println!(
                        "{}  valid {}..{}  {}  {}",
                        v.id,
                        v.valid_from,
                        v.valid_to.map(|t| t.to_string()).unwrap_or_default(),
                        state,
                        v.text
                    );
                }
            }
            MemoryWhat::Export { scopes } => {
                let text = self
                    .post_for_text("/api/v1/memories/export", &json!({"scopes": scopes}))
                    .await?;
                print!("{text}");
            }
            MemoryWhat::Import { file } => {
                let text = read_input(&file)?;
                let r: ImportedMemories = self
                    .post_body("/api/v1/memories/import", "application/x-ndjson", text)
                    .await?;
                println!(
                    "imported {} versions ({} already there, unchanged)",
                    r.written, r.unchanged
                );
            }
            MemoryWhat::Curate { scope, file, wait } => {
                let text = read_input(&file)?;
                let messages: Value = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Array(_)) => v,
                    _ => json!([{"role": "user", "content": text}]),
                };
                let c: Curation = self
                    .post_json(
                        "/api/v1/memories/curate",
                        &json!({"scope": scope, "messages": messages}),
                    )
                    .await?;
                if !wait {
                    println!("{}", c.id);
                    return Ok(());
                }
                let path = format!("/api/v1/memories/curations/{}", path_segment(&c.id)?);
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
                let c = loop {
                    let c: Curation = self.get_json(&path).await?;
                    if c.state == "done" || c.state == "failed" {
                        break c;
                    }
                    if std::time::Instant::now() > deadline {
                        anyhow::bail!("curation {} is still {} after two minutes", c.id, c.state);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                };
                if c.state == "failed" {
                    anyhow::bail!("curation {} failed: {}", c.id, c.error.unwrap_or_default());
                }
                let result = c.result.unwrap_or(Value::Null);
                let written = result["written"].as_array().cloned().unwrap_or_default();
                println!(
                    "curation {} wrote {} memories ({} decisions skipped) for ${:.6}",
                    c.id,
                    written.len(),
                    result["skipped"].as_array().map_or(0, Vec::len),
                    c.cost_usd
                );
                for id in written {
                    println!("{}", id.as_str().unwrap_or_default());
                }
            }
            MemoryWhat::Erase {
                scope,
                ids,
                subject,
                entity,
                all,
            } => {
                let ids = (!ids.is_empty()).then_some(ids);
                let body = json!({"scope": scope, "ids": ids, "subject": subject,
                    "entity": entity, "all": all});
                let r: ErasureReport = self.post_json("/api/v1/memories/erase", &body).await?;
                println!(
                    "erased {} facts ({} versions) from {}; {} index postings removed",
                    r.facts,
                    r.rows,
                    r.places.join(", "),
                    r.index_postings
                );
                if !r.files_scrubbed {
                    println!("the database was busy: its files may still hold the erased bytes until the next erasure rewrites them");
                }
                if !r.entities.is_empty() || r.relations > 0 {
                    println!(
                        "{} edges, {} mentions and {} entities left unnamed went with them",
                        r.relations,
                        r.mentions,
                        r.entities.len()
                    );
                }
                for v in r.erased {
                    println!("{}  {}  {}", v.id, v.fact, v.scope);
                }
                for e in r.entities {
                    println!("{e}  (entity)");
                }
            }
        }
        Ok(())
    }
}

/// A file's text, or standard input's for `-`.
fn read_input(file: &std::path::Path) -> anyhow::Result<String> {
    if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("reading standard input")?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
    }
}

/// An id as one path segment: memory ids are letters, digits and `_`.
fn path_segment(id: &str) -> anyhow::Result<&str> {
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
    {
        anyhow::bail!("a memory id is letters, digits, `_` and `-`: {id:?}");
    }
    Ok(id)
}
