//! Agent memory: facts kept per scope, versioned in both times (when true in the world, when
//! recorded), searchable the moment they are written, erasable with a report of what went.
//!
//! The store's rows are the only copy; the search index here is derived from them, rebuilt
//! on start and following other nodes' writes and erasures. Who may read or write a scope is
//! decided by the engine before it calls in: this crate decides nothing.

mod ann;
pub mod embed;
mod index;
pub mod portable;
mod scope;
mod search;
mod text;

use std::sync::{Arc, Mutex, RwLock};

use serde_json::Value;
use steward_store::{
    entity_key, EntityMention, ErasedMemory, MemoryEntity, MemoryErase, MemoryGraph, MemoryRecord,
    MemoryRelation, MemoryStore, MemoryVector,
};
use steward_types::clock::Clock;
use steward_types::Millis;

pub use embed::Embedder;
pub use scope::Scope;
pub use search::{Found, Hit, Method, Query};
pub use text::{estimate_tokens, name_candidates};

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The embedding model failed.
    #[error("embedding: {0}")]
    Embedder(String),
    #[error(transparent)]
    Store(steward_store::Error),
}

impl From<steward_store::Error> for MemoryError {
    fn from(e: steward_store::Error) -> Self {
        match e {
            steward_store::Error::Conflict(m) => MemoryError::Conflict(m),
            other => MemoryError::Store(other),
        }
    }
}

pub type Result<T> = std::result::Result<T, MemoryError>;

/// Bounds on what one request may hold.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_text_bytes: usize,
    pub max_tags: usize,
    pub max_tag_bytes: usize,
    /// Metadata and source, each, as JSON text.
    pub max_json_bytes: usize,
    pub max_json_depth: usize,
    pub max_results: usize,
    pub max_query_scopes: usize,
    /// Scopes with more embeddings than this are searched through a graph (approximate
    /// nearest neighbours); smaller ones, and all of them when this is `usize::MAX`, by
    /// comparing every embedding.
    pub graph_above: usize,
    /// How long memories of a scope live when a write gives no `ttl_ms`: (a scope, or a
    /// prefix ending in `*`; milliseconds). The longest matching pattern wins.
    pub scope_ttls: Vec<(String, Millis)>,
    /// How fast memories of a scope fade in ranking: (a scope or a prefix ending in `*`; the
    /// half-life in milliseconds). A version's score is halved for each half-life between the
    /// time it became true and the time searched. The longest matching pattern wins.
    pub scope_half_lives: Vec<(String, Millis)>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_text_bytes: 32 * 1024,
            max_tags: 32,
            max_tag_bytes: 64,
            max_json_bytes: 16 * 1024,
            max_json_depth: 8,
            max_results: 100,
            max_query_scopes: 32,
            graph_above: index::EXACT_UP_TO,
            scope_ttls: Vec::new(),
            scope_half_lives: Vec::new(),
        }
    }
}

impl Limits {
    /// With time-to-live patterns (`[memory.ttl_ms]`), each checked: a scope, or a prefix of
    /// one ending in `*`; a positive number of milliseconds.
    pub fn with_scope_ttls(
        mut self,
        ttls: impl IntoIterator<Item = (String, Millis)>,
    ) -> Result<Limits> {
        self.scope_ttls
            .extend(checked_patterns("memory.ttl_ms", ttls)?);
        Ok(self)
    }

    /// With half-life patterns (`[memory.decay_half_life_ms]`), checked as time-to-live ones.
    pub fn with_scope_half_lives(
        mut self,
        half_lives: impl IntoIterator<Item = (String, Millis)>,
    ) -> Result<Limits> {
        self.scope_half_lives
            .extend(checked_patterns("memory.decay_half_life_ms", half_lives)?);
        Ok(self)
    }

    /// The time to live of a scope's memories by default, if a pattern gives one.
    pub fn ttl_for(&self, scope: &str) -> Option<Millis> {
        longest_match(&self.scope_ttls, scope)
    }

    /// How fast a scope's memories fade in ranking, if a pattern says.
    pub fn half_life_for(&self, scope: &str) -> Option<Millis> {
        longest_match(&self.scope_half_lives, scope)
    }
}

/// Scope patterns with a number each: a scope, or a prefix of one ending in `*`; a positive
/// number of milliseconds. `setting` names them in errors.
fn checked_patterns(
    setting: &str,
    patterns: impl IntoIterator<Item = (String, Millis)>,
) -> Result<Vec<(String, Millis)>> {
    let mut checked = Vec::new();
    for (pattern, ms) in patterns {
        let ok = match pattern.strip_suffix('*') {
            Some(prefix) => !prefix.is_empty() && !prefix.contains('*'),
            None => Scope::parse(&pattern).is_ok(),
        };
        if !ok {
            return Err(MemoryError::BadRequest(format!(
                "{setting}: {pattern:?} is neither a scope nor a prefix of one ending in *"
            )));
        }
        if ms <= 0 {
            return Err(MemoryError::BadRequest(format!(
                "{setting}.{pattern:?}: {ms} is not a positive number of milliseconds"
            )));
        }
        checked.push((pattern, ms));
    }
    Ok(checked)
}

/// The number of the most specific pattern matching `scope` (an exact scope over a prefix).
fn longest_match(patterns: &[(String, Millis)], scope: &str) -> Option<Millis> {
    patterns
        .iter()
        .filter(|(p, _)| match p.strip_suffix('*') {
            Some(prefix) => scope.starts_with(prefix),
            None => p == scope,
        })
        .max_by_key(|(p, _)| (p.len(), !p.ends_with('*')))
        .map(|(_, ms)| *ms)
}

/// A memory to write, as a caller gives it.
#[derive(Clone, Debug, Default)]
pub struct NewMemory {
    /// Its id, when the writer names it (a run's step, so a retry finds what it wrote);
    /// a fresh one otherwise.
    pub id: Option<String>,
    pub scope: String,
    pub text: String,
    /// Who or what the fact is about (erasure by subject finds it).
    pub subject: Option<String>,
    pub tags: Vec<String>,
    /// A JSON object, returned unchanged with every result.
    pub metadata: Option<Value>,
    /// Where it came from (a message, a run), as JSON.
    pub source: Option<Value>,
    /// When it became true; now if absent.
    pub valid_from: Option<Millis>,
    /// When it stopped being true, if it has.
    pub valid_to: Option<Millis>,
    /// Erased this long after it is written.
    pub ttl_ms: Option<Millis>,
    /// A current version this one replaces: it is closed, linked to this one, kept in history.
    pub supersedes: Option<String>,
    /// The entities it names: each resolved to the scope's entity known by its name or an
    /// alias, or made.
    pub entities: Vec<NewEntity>,
    /// Edges it states between entities, by name (a name not among `entities` is added).
    pub relations: Vec<NewRelation>,
}

/// An entity a memory names.
#[derive(Clone, Debug, Default)]
pub struct NewEntity {
    pub name: String,
    /// What sort of thing it is (`person`, `place`, …), when the writer says.
    pub kind: Option<String>,
    /// Other names it goes by.
    pub aliases: Vec<String>,
}

/// An edge a memory states: `subject` `relation` `object` (`Alice` `works_at` `Acme`).
#[derive(Clone, Debug, Default)]
pub struct NewRelation {
    pub subject: String,
    pub relation: String,
    pub object: String,
}

/// A memory written: the version, the one it superseded (closed), and the entities it names.
#[derive(Clone, Debug)]
pub struct Committed {
    pub record: MemoryRecord,
    pub superseded: Option<MemoryRecord>,
    pub entities: Vec<MemoryEntity>,
}

/// A memory checked and numbered, ready to commit.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub record: MemoryRecord,
    pub supersedes: Option<String>,
    pub graph: MemoryGraph,
}

/// What an erasure removed, place by place.
#[derive(Clone, Debug, Default)]
pub struct ErasureReport {
    /// Every version erased (its fact and scope).
    pub erased: Vec<ErasedMemory>,
    /// How many facts (lineages) those versions were.
    pub facts: usize,
    /// Rows deleted from the store: the versions, history included.
    pub rows: usize,
    /// Postings removed from this node's full-text index.
    pub index_postings: usize,
    /// Embeddings erased with the versions.
    pub vectors: usize,
    /// Entities no memory names any more, erased with all their names.
    pub entities: Vec<String>,
    /// Edges erased with the versions that stated them.
    pub relations: u64,
    /// Links from the erased versions to the entities they named.
    pub mentions: u64,
    /// Whether the database's files were rid of the erased bytes before this returned.
    pub files_scrubbed: bool,
}

/// An entity a name was found to mean ([`Memory::entity_meant`]).
#[derive(Clone, Debug)]
pub struct EntityMeant {
    pub entity: MemoryEntity,
    /// The entity's name (or alias) that matched.
    pub by_name: String,
    /// How alike the two names' embeddings are; `None` when a name or alias matched as it is.
    pub similarity: Option<f64>,
}

/// How alike (the cosine of their embeddings) a name and a known entity's name must be to be
/// taken as naming one entity. Set high: merging two entities wrongly is worse than keeping a
/// duplicate, which a later curation can still merge.
pub const SAME_ENTITY: f32 = 0.85;
/// Memories nearest a name whose entities are the candidates it may mean.
const ENTITY_NEIGHBOURS: usize = 20;

/// Most entities and most relations one memory may name.
const MAX_GRAPH_ITEMS: usize = 32;
/// Most aliases one entity may be given at once.
const MAX_ALIASES: usize = 16;

/// The memory service: the store's rows and the index over them.
pub struct Memory {
    store: Arc<dyn MemoryStore>,
    clock: Arc<dyn Clock>,
    limits: Limits,
    index: RwLock<index::Index>,
    /// Where following other nodes' changes has got to.
    follow: Mutex<Follow>,
    /// Makes the embeddings vector search compares, when there is one.
    embedder: Option<Arc<dyn Embedder>>,
    /// Rung by every write: there is something to embed.
    to_embed: tokio::sync::Notify,
}

#[derive(Default, Clone)]
struct Follow {
    since: Millis,
    after_id: String,
    erasures_since: Millis,
    vectors_since: Millis,
    vectors_after_id: String,
}

/// Rows read per page while rebuilding or following.
const PAGE: i64 = 1000;
/// Names a query is looked up by in the graph, and rows the graph answers with, at most.
const GRAPH_KEYS: usize = 64;
const GRAPH_ROWS: i64 = 500;
/// Texts embedded at once.
const EMBED_BATCH: i64 = 32;
/// How far back each follow looks again: a commit can land after a later-stamped one
/// (the time is taken before the transaction waits for the writer).
const LOOKBACK_MS: Millis = 2_000;

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl Memory {
    /// Opens the service, building the index from every stored version.
    pub async fn open(
        store: Arc<dyn MemoryStore>,
        clock: Arc<dyn Clock>,
        limits: Limits,
        embedder: Option<Arc<dyn Embedder>>,
    ) -> Result<Memory> {
        let started = clock.now_ms();
        let graph_above = limits.graph_above;
        let m = Memory {
            store,
            clock,
            limits,
            index: RwLock::new(index::Index::new(graph_above)),
            follow: Mutex::new(Follow {
                erasures_since: started,
                ..Follow::default()
            }),
            embedder,
            to_embed: tokio::sync::Notify::new(),
        };
        let n = m.follow_changes().await?;
        tracing::info!(versions = n, "memory index built");
        Ok(m)
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Versions in this node's index.
    pub fn indexed(&self) -> usize {
        read(&self.index).len()
    }

    /// Checks a new memory and gives it an id and times (nothing is written yet).
    pub async fn prepare(&self, by: &str, new: NewMemory) -> Result<Prepared> {
        let l = &self.limits;
        let scope = Scope::parse(&new.scope)?.to_string();
        if new.text.trim().is_empty() {
            return Err(MemoryError::BadRequest(
                "text: a memory needs some text".into(),
            ));
        }
        if new.text.len() > l.max_text_bytes {
            return Err(MemoryError::BadRequest(format!(
                "text: {} bytes, more than the {} a memory may hold; split it into several facts",
                new.text.len(),
                l.max_text_bytes
            )));
        }
        if let Some(s) = &new.subject {
            if s.is_empty() || s.len() > 200 || s.chars().any(char::is_control) {
                return Err(MemoryError::BadRequest(
                    "subject: 1 to 200 characters, none of them control characters".into(),
                ));
            }
        }
        if new.tags.len() > l.max_tags {
            return Err(MemoryError::BadRequest(format!(
                "tags: {} of them, more than {}",
                new.tags.len(),
                l.max_tags
            )));
        }
        if let Some(t) = new
            .tags
            .iter()
            .find(|t| t.is_empty() || t.len() > l.max_tag_bytes || t.chars().any(char::is_control))
        {
            return Err(MemoryError::BadRequest(format!(
                "tags: {:?} must be 1 to {} bytes with no control characters",
                t.chars().take(80).collect::<String>(),
                l.max_tag_bytes
            )));
        }
        let metadata = match new.metadata {
            None => "{}".to_string(),
            Some(v @ Value::Object(_)) => self.bounded_json("metadata", &v)?,
            Some(_) => {
                return Err(MemoryError::BadRequest(
                    "metadata: expected a JSON object".into(),
                ))
            }
        };
        let source = new
            .source
            .as_ref()
            .map(|v| self.bounded_json("source", v))
            .transpose()?;
        let now = self.clock.now_ms();
        let valid_from = new.valid_from.unwrap_or(now);
        if let Some(to) = new.valid_to {
            if to <= valid_from {
                return Err(MemoryError::BadRequest(format!(
                    "valid_to ({to}) must be after valid_from ({valid_from})"
                )));
            }
        }
        let expires_at = match new.ttl_ms.or_else(|| self.limits.ttl_for(&scope)) {
            Some(t) if t <= 0 => {
                return Err(MemoryError::BadRequest(
                    "ttl_ms: expected a positive number of milliseconds".into(),
                ))
            }
            Some(t) => Some(now.saturating_add(t)),
            None => None,
        };
        let id = match new.id {
            Some(id)
                if !id.is_empty()
                    && id.len() <= 100
                    && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                id
            }
            Some(_) => {
                return Err(MemoryError::BadRequest(
                    "id: 1 to 100 letters, digits and `_`".into(),
                ))
            }
            None => self.clock.new_id("mem"),
        };
        let lineage = match &new.supersedes {
            None => id.clone(),
            Some(old) => {
                let found = self.store.memory(old).await?.filter(|r| r.scope == scope);
                match found {
                    Some(r) if r.expired_at.is_none() => r.lineage,
                    Some(r) => {
                        return Err(MemoryError::Conflict(format!(
                        "memory {old} was already superseded by {}; supersede the current version",
                        r.superseded_by.as_deref().unwrap_or("another version")
                    )))
                    }
                    None => {
                        return Err(MemoryError::NotFound(format!(
                            "supersedes: no memory {old} in scope {scope}"
                        )))
                    }
                }
            }
        };
        let graph = self.graph(&new.entities, &new.relations)?;
        Ok(Prepared {
            graph,
            record: MemoryRecord {
                id,
                lineage,
                scope,
                text: new.text,
                subject: new.subject,
                tags: Value::from(new.tags).to_string(),
                metadata,
                source,
                written_by: by.to_string(),
                valid_from,
                valid_to: new.valid_to,
                created_at: now,
                expired_at: None,
                superseded_by: None,
                expires_at,
                updated_at: now,
            },
            supersedes: new.supersedes,
        })
    }

    /// Checks what a memory says of the graph and numbers new entities.
    fn graph(&self, entities: &[NewEntity], relations: &[NewRelation]) -> Result<MemoryGraph> {
        fn name(field: &str, n: &str, max: usize) -> Result<()> {
            if entity_key(n).is_empty() || n.len() > max || n.chars().any(char::is_control) {
                return Err(MemoryError::BadRequest(format!(
                    "{field}: {:?} must be 1 to {max} bytes with a letter or digit and no control characters",
                    n.chars().take(80).collect::<String>()
                )));
            }
            Ok(())
        }
        if entities.len() > MAX_GRAPH_ITEMS || relations.len() > MAX_GRAPH_ITEMS {
            return Err(MemoryError::BadRequest(format!(
                "entities and relations: at most {MAX_GRAPH_ITEMS} of each per memory"
            )));
        }
        let mut graph = MemoryGraph::default();
        let mut by_key: std::collections::HashMap<String, usize> = Default::default();
        let mut add = |graph: &mut MemoryGraph, e: EntityMention| -> usize {
            let names: Vec<String> = std::iter::once(&e.name)
                .chain(&e.aliases)
                .map(|n| entity_key(n))
                .collect();
            if let Some(&i) = names.iter().find_map(|k| by_key.get(k)) {
                return i;
            }
            let i = graph.entities.len();
            for k in names {
                by_key.entry(k).or_insert(i);
            }
            graph.entities.push(e);
            i
        };
        for e in entities {
            name("entities.name", &e.name, 200)?;
            if let Some(k) = &e.kind {
                name("entities.kind", k, 64)?;
            }
            if e.aliases.len() > MAX_ALIASES {
                return Err(MemoryError::BadRequest(format!(
                    "entities.aliases: at most {MAX_ALIASES} per entity"
                )));
            }
            for a in &e.aliases {
                name("entities.aliases", a, 200)?;
            }
            add(
                &mut graph,
                EntityMention {
                    id: self.clock.new_id("ent"),
                    name: e.name.trim().to_string(),
                    kind: e.kind.clone(),
                    aliases: e.aliases.iter().map(|a| a.trim().to_string()).collect(),
                },
            );
        }
        for r in relations {
            name("relations.subject", &r.subject, 200)?;
            name("relations.object", &r.object, 200)?;
            name("relations.relation", &r.relation, 100)?;
            let mut end = |n: &str| {
                add(
                    &mut graph,
                    EntityMention {
                        id: self.clock.new_id("ent"),
                        name: n.trim().to_string(),
                        ..EntityMention::default()
                    },
                )
            };
            let (s, o) = (end(&r.subject), end(&r.object));
            graph.relations.push((s, r.relation.trim().to_string(), o));
        }
        if graph.entities.len() > MAX_GRAPH_ITEMS {
            return Err(MemoryError::BadRequest(format!(
                "entities: relations name {} entities in all, more than {MAX_GRAPH_ITEMS}",
                graph.entities.len()
            )));
        }
        Ok(graph)
    }

    fn bounded_json(&self, field: &str, v: &Value) -> Result<String> {
        fn depth(v: &Value) -> usize {
            match v {
                Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
                Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
                _ => 0,
            }
        }
        if depth(v) > self.limits.max_json_depth {
            return Err(MemoryError::BadRequest(format!(
                "{field}: nested deeper than {} levels",
                self.limits.max_json_depth
            )));
        }
        let text = v.to_string();
        if text.len() > self.limits.max_json_bytes {
            return Err(MemoryError::BadRequest(format!(
                "{field}: {} bytes of JSON, more than {}",
                text.len(),
                self.limits.max_json_bytes
            )));
        }
        Ok(text)
    }

    /// Commits a prepared memory (with `audit` and its entities and edges in the same commit)
    /// and indexes it: searchable by the time this returns.
    pub async fn commit(&self, p: Prepared, audit: Option<(Millis, String)>) -> Result<Committed> {
        let (closed, entities) = self
            .store
            .add_memory_graph(&p.record, p.supersedes.as_deref(), &p.graph, audit)
            .await?;
        let mut ix = write(&self.index);
        ix.upsert(p.record.clone());
        if let Some(c) = &closed {
            ix.upsert(c.clone());
        }
        drop(ix);
        self.to_embed.notify_one();
        Ok(Committed {
            record: p.record,
            superseded: closed,
            entities,
        })
    }

    /// Searches this node's index, embedding the query when there is an embedder and the
    /// method uses it. Scopes must be authorized already.
    pub async fn search(&self, q: &Query) -> Result<Found> {
        self.check(q)?;
        let mut q = q.clone();
        if q.vector.is_none()
            && !q.text.trim().is_empty()
            && matches!(q.method, Method::Hybrid | Method::Vector)
        {
            if let Some(e) = &self.embedder {
                let (e, text) = (e.clone(), q.text.clone());
                let made = tokio::task::spawn_blocking(move || e.embed(&[text.as_str()]))
                    .await
                    .map_err(|e| MemoryError::Embedder(e.to_string()))?;
                match made {
                    Ok(v) => q.vector = v.into_iter().next(),
                    // Hybrid goes on without the vector (an embeddings endpoint down, or its
                    // budget spent): full text, graph and recency still answer.
                    Err(why) if q.method == Method::Hybrid => {
                        tracing::warn!(%why, "embedding a query failed; searching without its vector");
                    }
                    Err(why) => return Err(MemoryError::Embedder(why)),
                }
            }
        }
        if matches!(q.method, Method::Hybrid | Method::Graph) && !q.text.trim().is_empty() {
            q.graph = self.graph_around(&q).await?;
        }
        if q.method == Method::Vector && self.embedder.is_none() {
            return Err(MemoryError::BadRequest(
                "method vector: this server has no embedding model (see memory.model_dir)".into(),
            ));
        }
        self.search_now(&q)
    }

    /// Scores versions by the graph around the entities the query names: a version stating an
    /// edge that touches one scores most when the edge's relation is a word of the query
    /// ("where does Jon live" and `Jon -lives_in-> Denver`), less when it is not, half that two
    /// hops away; a version merely naming one scores least.
    async fn graph_around(
        &self,
        q: &Query,
    ) -> Result<std::collections::HashMap<String, (f64, String)>> {
        let keys = name_candidates(&q.text, GRAPH_KEYS);
        let around = self
            .store
            .memory_graph_around(&q.scopes, &keys, 2, GRAPH_ROWS)
            .await?;
        let mut scores: std::collections::HashMap<String, (f64, String)> = Default::default();
        if around.seeds.is_empty() {
            return Ok(scores);
        }
        let seeds: std::collections::HashMap<&str, &str> = around
            .seeds
            .iter()
            .map(|e| (e.id.as_str(), e.name.as_str()))
            .collect();
        let mut better = |id: &str, score: f64, path: String| {
            let e = scores.entry(id.to_string()).or_insert((0.0, String::new()));
            if score > e.0 {
                *e = (score, path);
            }
        };
        for (memory, entity) in &around.mentions {
            better(
                memory,
                0.2,
                format!("names {}", seeds.get(entity.as_str()).unwrap_or(&"")),
            );
        }
        let ix = read(&self.index);
        let asked: std::collections::HashSet<String> =
            ix.analyzer().terms(&q.text).into_iter().collect();
        let said = |relation: &str| {
            ix.analyzer()
                .terms(&relation.replace(['_', '-'], " "))
                .iter()
                .any(|t| asked.contains(t))
        };
        let names: std::collections::HashMap<&str, &str> = around
            .seeds
            .iter()
            .chain(&around.neighbours)
            .map(|e| (e.id.as_str(), e.name.as_str()))
            .collect();
        let named = |id: &str| names.get(id).map_or(id, |n| n).to_string();
        for r in &around.relations {
            let near =
                seeds.contains_key(r.subject.as_str()) || seeds.contains_key(r.object.as_str());
            let score = match (near, said(&r.relation)) {
                (true, true) => 1.0,
                (true, false) => 0.4,
                (false, true) => 0.5,
                (false, false) => 0.2,
            };
            better(
                &r.memory,
                score,
                format!(
                    "{} -{}-> {}",
                    named(&r.subject),
                    r.relation,
                    named(&r.object)
                ),
            );
        }
        Ok(scores)
    }

    /// Installs the graphs built since the last call and starts building those now wanted
    /// (scopes grown past [`Limits::graph_above`] embeddings), each on a thread of its own, off
    /// the index's lock: until a scope's graph is installed it is searched exactly.
    fn tend_graphs(&self) {
        let (jobs, sink) = {
            let mut ix = write(&self.index);
            ix.install_graphs();
            (ix.graphs_wanted(), ix.graph_sink())
        };
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        for job in jobs {
            let to = sink.clone();
            let (scope, ticket) = (job.scope.clone(), job.ticket);
            let spawned = std::thread::Builder::new()
                .name("memory-graph".into())
                .spawn(move || {
                    let graph = ann::Graph::build(job.dims, &job.vectors, threads);
                    to.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(index::BuiltGraph {
                            scope: job.scope,
                            ticket: job.ticket,
                            graph,
                        });
                });
            if let Err(e) = spawned {
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(index::BuiltGraph {
                        scope,
                        ticket,
                        graph: Err(e.to_string()),
                    });
            }
        }
    }

    /// Waits (up to `timeout`) until every scope big enough for a graph has one installed;
    /// whether they all do. For benchmarks and tests: searches never wait for a graph.
    pub async fn graphs_ready(&self, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.tend_graphs();
            if read(&self.index).graphs().1 == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Scopes searched through a graph, and scopes whose graph is being built.
    pub fn graphs(&self) -> (usize, usize) {
        read(&self.index).graphs()
    }

    /// Searches with what `q` carries (its embedding, if any), on this thread.
    pub fn search_now(&self, q: &Query) -> Result<Found> {
        self.check(q)?;
        if read(&self.index).graphs_built() {
            write(&self.index).install_graphs();
        }
        let now = self.clock.now_ms();
        if self.limits.scope_half_lives.is_empty() {
            return Ok(search::search(&read(&self.index), q, now));
        }
        // The half-lives of the scopes asked, for the ranking to apply.
        let mut q = q.clone();
        q.half_lives = q
            .scopes
            .iter()
            .filter_map(|s| Some((s.clone(), self.limits.half_life_for(s)?)))
            .collect();
        Ok(search::search(&read(&self.index), &q, now))
    }

    /// Refuses a query beyond the limits.
    fn check(&self, q: &Query) -> Result<()> {
        if q.scopes.len() > self.limits.max_query_scopes {
            return Err(MemoryError::BadRequest(format!(
                "scopes: {} of them, more than {}",
                q.scopes.len(),
                self.limits.max_query_scopes
            )));
        }
        if q.limit == 0 || q.limit > self.limits.max_results {
            return Err(MemoryError::BadRequest(format!(
                "limit: expected 1 to {}",
                self.limits.max_results
            )));
        }
        if q.text.len() > self.limits.max_text_bytes {
            return Err(MemoryError::BadRequest(format!(
                "query: more than {} bytes",
                self.limits.max_text_bytes
            )));
        }
        Ok(())
    }

    /// The embedding model in use, if any.
    pub fn embedding_model(&self) -> Option<&str> {
        self.embedder.as_deref().map(|e| e.model())
    }

    /// Versions in this node's index with an embedding.
    pub fn embedded(&self) -> usize {
        read(&self.index).embedded()
    }

    /// Waits until a write rings, or `timeout` passes.
    pub async fn wait_for_writes(&self, timeout: std::time::Duration) {
        let _ = tokio::time::timeout(timeout, self.to_embed.notified()).await;
    }

    /// Embeds versions that have no embedding by the current model yet, a batch at a time,
    /// until none is left; how many it embedded. Without an embedder, nothing.
    pub async fn embed_pending(&self) -> Result<usize> {
        let Some(embedder) = self.embedder.clone() else {
            return Ok(0);
        };
        let mut done = 0;
        let mut after = (Millis::MIN, String::new());
        loop {
            let batch = self
                .store
                .memories_to_embed(embedder.model(), (after.0, &after.1), EMBED_BATCH)
                .await?;
            let Some(last) = batch.last() else {
                self.tend_graphs();
                return Ok(done);
            };
            after = (last.created_at, last.id.clone());
            let texts: Vec<String> = batch.iter().map(|m| m.text.clone()).collect();
            let e = embedder.clone();
            let vectors = tokio::task::spawn_blocking(move || {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                e.embed(&refs)
            })
            .await
            .map_err(|e| MemoryError::Embedder(e.to_string()))?
            .map_err(MemoryError::Embedder)?;
            let now = self.clock.now_ms();
            let rows: Vec<MemoryVector> = batch
                .iter()
                .zip(&vectors)
                .map(|(m, v)| MemoryVector {
                    id: m.id.clone(),
                    model: embedder.model().to_string(),
                    vector: embed::encode(v),
                    updated_at: now,
                })
                .collect();
            self.store.put_memory_vectors(&rows).await?;
            let mut ix = write(&self.index);
            for (m, v) in batch.iter().zip(vectors) {
                // A version erased meanwhile keeps no embedding here either.
                if ix.get(&m.id).is_some() {
                    ix.set_vector(&m.id, v);
                }
            }
            done += batch.len();
        }
    }

    /// The version with this id, if one was written.
    pub async fn written(&self, id: &str) -> Result<Option<MemoryRecord>> {
        Ok(self.store.memory(id).await?)
    }

    pub async fn get(&self, id: &str) -> Result<MemoryRecord> {
        self.store
            .memory(id)
            .await?
            .ok_or_else(|| MemoryError::NotFound(format!("no memory {id}")))
    }

    /// Every version of the fact `id` is a version of, oldest first.
    pub async fn history(&self, id: &str) -> Result<Vec<MemoryRecord>> {
        let m = self.get(id).await?;
        Ok(self.store.memory_versions(&m.lineage).await?)
    }

    /// Erases what `what` selects from the store (with `audit` in the same commit) and from
    /// this node's index; other nodes' indexes drop it when they next follow.
    pub async fn erase(
        &self,
        what: &MemoryErase,
        audit: Option<(Millis, String)>,
    ) -> Result<ErasureReport> {
        let now = self.clock.now_ms();
        let done = self.store.erase_memories(what, now, audit).await?;
        let erased = done.memories;
        let mut ix = write(&self.index);
        ix.erasures += 1;
        let vectors = erased.iter().filter(|e| ix.has_vector(&e.id)).count();
        let index_postings = erased.iter().map(|e| ix.remove(&e.id)).sum();
        drop(ix);
        let mut facts: Vec<&str> = erased.iter().map(|e| e.lineage.as_str()).collect();
        facts.sort_unstable();
        facts.dedup();
        Ok(ErasureReport {
            facts: facts.len(),
            rows: erased.len(),
            index_postings,
            vectors,
            entities: done.entities,
            relations: done.relations,
            mentions: done.mentions,
            files_scrubbed: done.files_scrubbed,
            erased,
        })
    }

    /// Every version of `scopes` in the portable format ([`portable`]), header first.
    pub async fn export(&self, scopes: &[String]) -> Result<String> {
        let mut scopes: Vec<String> = scopes
            .iter()
            .map(|s| Scope::parse(s).map(|s| s.to_string()))
            .collect::<Result<_>>()?;
        scopes.sort();
        scopes.dedup();
        let mut out = portable::header();
        out.push('\n');
        for scope in &scopes {
            let entities = self.store.scope_entities(scope).await?;
            let ids: Vec<String> = entities.iter().map(|e| e.id.clone()).collect();
            let mut names: std::collections::HashMap<String, Vec<String>> = Default::default();
            for (entity, name) in self.store.memory_entity_names(&ids).await? {
                names.entry(entity).or_default().push(name);
            }
            for e in &entities {
                let names = names.get(&e.id).map(Vec::as_slice).unwrap_or_default();
                out.push_str(&portable::entity_line(e, names));
                out.push('\n');
            }
            let mut after = (Millis::MIN, String::new());
            loop {
                let page = self
                    .store
                    .scope_memories(scope, (after.0, &after.1), PAGE)
                    .await?;
                let ids: Vec<String> = page.iter().map(|m| m.id.clone()).collect();
                let vectors: std::collections::HashMap<String, MemoryVector> = self
                    .store
                    .memory_vectors(&ids)
                    .await?
                    .into_iter()
                    .map(|v| (v.id.clone(), v))
                    .collect();
                let (named, stated) = self.store.memory_graph_of(&ids).await?;
                let mut mentions: std::collections::HashMap<&str, Vec<String>> = Default::default();
                for (memory, e) in &named {
                    mentions
                        .entry(memory.as_str())
                        .or_default()
                        .push(e.id.clone());
                }
                let mut edges: std::collections::HashMap<&str, Vec<MemoryRelation>> =
                    Default::default();
                for r in &stated {
                    edges.entry(r.memory.as_str()).or_default().push(r.clone());
                }
                for m in &page {
                    let mut named = mentions.remove(m.id.as_str()).unwrap_or_default();
                    named.sort();
                    let mut stated = edges.remove(m.id.as_str()).unwrap_or_default();
                    stated.sort();
                    out.push_str(&portable::line(m, &named, &stated, vectors.get(&m.id)));
                    out.push('\n');
                }
                match page.last() {
                    Some(last) if page.len() as i64 == PAGE => {
                        after = (last.created_at, last.id.clone());
                    }
                    _ => break,
                }
            }
        }
        Ok(out)
    }

    /// Reads an export, checking every line; nothing is written.
    pub fn read_export(&self, text: &str) -> Result<portable::Imported> {
        portable::read(text, &self.limits, self.clock.now_ms())
    }

    /// Writes what [`Memory::read_export`] read, all or nothing, with `audit` in the same
    /// commit, and indexes it. Embeddings by this node's model are used as they are; the rest
    /// are kept, and the versions embedded again by this model in the background. Returns
    /// (written, already there unchanged).
    pub async fn import(
        &self,
        imported: portable::Imported,
        audit: Option<(Millis, String)>,
    ) -> Result<(u64, u64)> {
        let counts = self.store.import_memories(&imported, audit).await?;
        let portable::Imported {
            versions, vectors, ..
        } = imported;
        let mut ix = write(&self.index);
        for v in versions {
            ix.upsert(v);
        }
        // A version already stored keeps its own embedding, which the index follows.
        let model = self.embedding_model();
        for v in vectors.iter().filter(|v| Some(v.model.as_str()) == model) {
            if ix.get(&v.id).is_some() {
                if let Some(x) = embed::decode(&v.vector) {
                    ix.set_vector(&v.id, x);
                }
            }
        }
        drop(ix);
        self.to_embed.notify_one();
        Ok(counts)
    }

    /// Erases every version whose time to live has run out; how many.
    pub async fn sweep_expired(&self) -> Result<usize> {
        if read(&self.index).expired(self.clock.now_ms()).is_empty() {
            return Ok(0);
        }
        Ok(self.erase(&MemoryErase::Expired, None).await?.rows)
    }

    /// The entity of `scope` a name means: the one known by that name or one of its aliases;
    /// failing that, with an embedder, the one whose name means the same — among the entities
    /// named by the scope's current memories nearest the name's embedding, the entity with a
    /// name (or alias) whose embedding is nearest it, when at least [`SAME_ENTITY`] alike. So
    /// "Acme Corporation" finds the stored "Acme Corp" and "NYC" "New York City", while two
    /// people sharing a first name stay two.
    pub async fn entity_meant(&self, scope: &str, name: &str) -> Result<Option<EntityMeant>> {
        let key = entity_key(name);
        if key.is_empty() {
            return Ok(None);
        }
        let scopes = [scope.to_string()];
        let known = self
            .store
            .memory_graph_around(&scopes, &[key], 1, 1)
            .await?;
        if let Some(entity) = known.seeds.into_iter().next() {
            return Ok(Some(EntityMeant {
                entity,
                by_name: name.to_string(),
                similarity: None,
            }));
        }
        let Some(embedder) = self.embedder.clone() else {
            return Ok(None);
        };
        let wanted = [name.to_string()];
        let e = embedder.clone();
        let v = tokio::task::spawn_blocking(move || {
            e.embed(&wanted.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
        .map_err(|e| MemoryError::Embedder(e.to_string()))?
        .map_err(MemoryError::Embedder)?
        .into_iter()
        .next()
        .ok_or_else(|| MemoryError::Embedder("no embedding for the name".into()))?;
        let near: Vec<String> = read(&self.index)
            .nearest(
                &v,
                &scopes,
                &|d| d.record.expired_at.is_none(),
                ENTITY_NEIGHBOURS,
            )
            .into_iter()
            .map(|(d, _)| d.record.id.clone())
            .collect();
        if near.is_empty() {
            return Ok(None);
        }
        let (mentions, _) = self.store.memory_graph_of(&near).await?;
        let mut candidates: Vec<MemoryEntity> = Vec::new();
        for (_, entity) in mentions {
            if !candidates.iter().any(|c| c.id == entity.id) {
                candidates.push(entity);
            }
        }
        let ids: Vec<String> = candidates.iter().map(|c| c.id.clone()).collect();
        let names = self.store.memory_entity_names(&ids).await?;
        if names.is_empty() {
            return Ok(None);
        }
        let texts: Vec<String> = names.iter().map(|(_, n)| n.clone()).collect();
        let made = tokio::task::spawn_blocking(move || {
            embedder.embed(&texts.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
        .map_err(|e| MemoryError::Embedder(e.to_string()))?
        .map_err(MemoryError::Embedder)?;
        let best = names
            .iter()
            .zip(&made)
            .filter(|(_, w)| w.len() == v.len())
            .map(|((entity, n), w)| {
                let dot: f32 = v.iter().zip(w).map(|(a, b)| a * b).sum();
                (entity, n, dot)
            })
            .max_by(|a, b| a.2.total_cmp(&b.2));
        Ok(best
            .filter(|b| b.2 >= SAME_ENTITY)
            .and_then(|(entity, n, dot)| {
                let entity = candidates.iter().find(|c| &c.id == entity)?.clone();
                Some(EntityMeant {
                    entity,
                    by_name: n.clone(),
                    similarity: Some(f64::from(dot)),
                })
            }))
    }

    /// Every name of these entities, as (entity, name), in name order.
    pub async fn entity_names(&self, entities: &[String]) -> Result<Vec<(String, String)>> {
        Ok(self.store.memory_entity_names(entities).await?)
    }

    /// The entities these versions name, as (version, entity), and the edges they state.
    pub async fn graph_of(
        &self,
        ids: &[String],
    ) -> Result<(Vec<(String, MemoryEntity)>, Vec<MemoryRelation>)> {
        Ok(self.store.memory_graph_of(ids).await?)
    }

    /// Brings the index up to date with the store: versions written or changed and ids erased
    /// since the last call (by any node). How many versions it read.
    pub async fn follow_changes(&self) -> Result<usize> {
        let start = self
            .follow
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let epoch = read(&self.index).erasures;
        let mut at = Follow {
            since: (start.since - LOOKBACK_MS).max(0),
            after_id: String::new(),
            erasures_since: start.erasures_since,
            vectors_since: start.vectors_since,
            vectors_after_id: String::new(),
        };
        let erasures_read_at = self.clock.now_ms();
        let mut rows = Vec::new();
        loop {
            let page = self
                .store
                .memories_changed(at.since, &at.after_id, PAGE)
                .await?;
            let full = page.len() as i64 == PAGE;
            if let Some(last) = page.last() {
                at.since = last.updated_at;
                at.after_id = last.id.clone();
            }
            rows.extend(page);
            if !full {
                break;
            }
        }
        let mut vectors = Vec::new();
        if let Some(model) = self.embedding_model() {
            at.vectors_since = (start.vectors_since - LOOKBACK_MS).max(0);
            loop {
                let page = self
                    .store
                    .memory_vectors_changed(at.vectors_since, &at.vectors_after_id, PAGE)
                    .await?;
                let full = page.len() as i64 == PAGE;
                if let Some(last) = page.last() {
                    at.vectors_since = last.updated_at;
                    at.vectors_after_id = last.id.clone();
                }
                vectors.extend(
                    page.into_iter()
                        .filter(|v| v.model == model)
                        .filter_map(|v| Some((v.id, embed::decode(&v.vector)?))),
                );
                if !full {
                    break;
                }
            }
        }
        let erased = self
            .store
            .memory_erasures((start.erasures_since - LOOKBACK_MS).max(0))
            .await?;
        let mut ix = write(&self.index);
        if ix.erasures != epoch {
            // An erasure on this node landed while the rows were read: they may hold what it
            // removed. Read again next time.
            return Ok(0);
        }
        let n = rows.len();
        let erased_ids: std::collections::HashSet<&str> =
            erased.iter().map(|(id, _)| id.as_str()).collect();
        for r in rows {
            if !erased_ids.contains(r.id.as_str()) {
                ix.upsert(r);
            }
        }
        for (id, v) in vectors {
            if !erased_ids.contains(id.as_str()) {
                ix.set_vector(&id, v);
            }
        }
        for id in &erased_ids {
            ix.remove(id);
        }
        drop(ix);
        self.tend_graphs();
        at.erasures_since = erasures_read_at;
        if at.since < start.since {
            at.since = start.since;
            at.after_id = start.after_id;
        }
        if at.vectors_since < start.vectors_since {
            at.vectors_since = start.vectors_since;
            at.vectors_after_id = start.vectors_after_id;
        }
        *self.follow.lock().unwrap_or_else(|p| p.into_inner()) = at;
        Ok(n)
    }
}
