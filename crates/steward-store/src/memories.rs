//! Agent memory: versions of facts, bi-temporal, never overwritten; erased on request with
//! every version and a tombstone of ids only. The search index is derived from these rows by
//! `steward-memory` and follows them through `updated_at` and the tombstones.

use crate::sql::prelude::*;

/// One version of a memory, as stored.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct MemoryRecord {
    pub id: String,
    /// The first version's id: every version of one fact shares it.
    pub lineage: String,
    pub scope: String,
    pub text: String,
    pub subject: Option<String>,
    /// JSON array of strings.
    pub tags: String,
    /// JSON object, as the writer gave it.
    pub metadata: String,
    /// JSON provenance, when there is any.
    pub source: Option<String>,
    pub written_by: String,
    pub valid_from: Millis,
    pub valid_to: Option<Millis>,
    pub created_at: Millis,
    pub expired_at: Option<Millis>,
    pub superseded_by: Option<String>,
    pub expires_at: Option<Millis>,
    pub updated_at: Millis,
}

/// What to erase: every version of each fact selected (a time to live, version by version).
#[derive(Clone, Debug)]
pub enum MemoryErase {
    /// The facts these versions belong to, in `scope`.
    Ids { scope: String, ids: Vec<String> },
    /// Everything in a scope.
    Scope(String),
    /// Every fact about a subject, in a scope.
    Subject { scope: String, subject: String },
    /// Every fact whose versions name an entity (by its id or any of its names), in a scope;
    /// the entity goes with them.
    Entity { scope: String, entity: String },
    /// Versions whose time to live ran out by `now` (any scope).
    Expired,
}

/// A version erased: its id, its fact and its scope.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct ErasedMemory {
    pub id: String,
    pub lineage: String,
    pub scope: String,
}

/// A version's embedding: which model made it, the vector as stored (base64 of little-endian
/// f32s), and when it was stored.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct MemoryVector {
    pub id: String,
    pub model: String,
    pub vector: String,
    pub updated_at: Millis,
}

/// The key a name of an entity is resolved by within a scope: its words in lower case, with
/// the punctuation around each word left out, one space between — "Alice  Smith" and
/// "alice smith" name one entity, as do "Acme Corp." and "acme corp".
pub fn entity_key(name: &str) -> String {
    name.split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// An entity a memory names, as its writer gave it: resolved to the scope's entity known by
/// any of its names, or made with `id` when none is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntityMention {
    pub id: String,
    pub name: String,
    pub kind: Option<String>,
    pub aliases: Vec<String>,
}

/// What a new memory says of the graph: the entities it names and the edges it states between
/// them (`subject` and `object` index `entities`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryGraph {
    pub entities: Vec<EntityMention>,
    pub relations: Vec<(usize, String, usize)>,
}

/// An entity as stored: its first name and kind; other names are aliases.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct MemoryEntity {
    pub id: String,
    pub scope: String,
    pub name: String,
    pub kind: Option<String>,
    pub created_at: Millis,
}

/// An edge between two entities, stated by a memory version.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, sqlx::FromRow)]
pub struct MemoryRelation {
    pub memory: String,
    pub subject: String,
    pub relation: String,
    pub object: String,
}

/// The graph around the entities a query names.
#[derive(Clone, Debug, Default)]
pub struct GraphAround {
    /// The entities named (by any of their names).
    pub seeds: Vec<MemoryEntity>,
    /// (memory version, entity) for versions naming a seed.
    pub mentions: Vec<(String, String)>,
    /// Edges touching a seed, then (with two hops) edges touching their neighbours.
    pub relations: Vec<MemoryRelation>,
    /// The entities at the other ends of those edges.
    pub neighbours: Vec<MemoryEntity>,
}

/// What an import writes, in one commit: versions as they are, the embeddings of some, the
/// entities they name (each with all its names), which version names which, and the edges.
#[derive(Clone, Debug, Default)]
pub struct MemoryImport {
    pub versions: Vec<MemoryRecord>,
    pub vectors: Vec<MemoryVector>,
    pub entities: Vec<(MemoryEntity, Vec<String>)>,
    /// (version, entity).
    pub mentions: Vec<(String, String)>,
    pub relations: Vec<MemoryRelation>,
}

/// A request to curate memories from messages, and how far it got.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct CurationRecord {
    pub id: String,
    pub scope: String,
    pub requested_by: String,
    /// JSON: the messages and their provenance.
    pub input: String,
    pub state: String,
    pub attempts: i64,
    pub lease_until: Millis,
    /// The prompt's version.
    pub prompt: String,
    pub model: String,
    /// The model's reply, kept once it came.
    pub reply: Option<String>,
    pub cost_nanos: i64,
    /// JSON: what was written.
    pub result: Option<String>,
    pub error: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

const CURATION_COLUMNS: &str =
    "id, scope, requested_by, input, state, attempts, lease_until, prompt, model, \
     reply, cost_nanos, result, error, created_at, updated_at";

/// What an erasure removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryErasure {
    /// Every version erased (its fact and scope).
    pub memories: Vec<ErasedMemory>,
    /// Entities left named by no memory, erased with their names.
    pub entities: Vec<String>,
    /// Edges erased with the versions that stated them.
    pub relations: u64,
    /// Links from the erased versions to the entities they named.
    pub mentions: u64,
    /// Whether the database's files were rid of the erased bytes before this returned (SQLite:
    /// the write-ahead log truncated; PostgreSQL: the tables rewritten). When not, the next
    /// erasure tries again.
    pub files_scrubbed: bool,
}

const COLUMNS: &str = "id, lineage, scope, text, subject, tags, metadata, source, written_by, \
     valid_from, valid_to, created_at, expired_at, superseded_by, expires_at, updated_at";

/// Memories, their history and their erasure.
#[async_trait]
pub trait MemoryStore: Send + Sync {
    /// Records a new version, with `audit` appended to the audit log in the same commit. With
    /// `supersedes`, the current version of that fact in the same scope is closed in the same
    /// commit — its `valid_to` set to the new version's `valid_from` unless already earlier,
    /// `expired_at` and `superseded_by` set — and returned; `Conflict` if there is no such
    /// current version (already superseded, erased, or another scope's), and nothing is written.
    async fn add_memory(
        &self,
        m: &MemoryRecord,
        supersedes: Option<&str>,
        audit: Option<(Millis, String)>,
    ) -> Result<Option<MemoryRecord>> {
        Ok(self
            .add_memory_graph(m, supersedes, &MemoryGraph::default(), audit)
            .await?
            .0)
    }
    /// [`MemoryStore::add_memory`], with the entities the version names and the edges it
    /// states, in the same commit: each entity is resolved to the scope's entity known by its
    /// name or one of its aliases (made if there is none), and learns the names it lacks (a name
    /// another entity has already stays that entity's). Returns the closed version and the
    /// entities, in the order given.
    async fn add_memory_graph(
        &self,
        m: &MemoryRecord,
        supersedes: Option<&str>,
        graph: &MemoryGraph,
        audit: Option<(Millis, String)>,
    ) -> Result<(Option<MemoryRecord>, Vec<MemoryEntity>)>;
    /// The entities these versions name, as (version, entity), and the edges they state.
    async fn memory_graph_of(
        &self,
        ids: &[String],
    ) -> Result<(Vec<(String, MemoryEntity)>, Vec<MemoryRelation>)>;
    /// Every name of these entities, as (entity, name), in name order.
    async fn memory_entity_names(&self, entities: &[String]) -> Result<Vec<(String, String)>>;
    /// The graph around the entities of `scopes` named by `keys` ([`entity_key`]s): versions
    /// naming them and edges up to `hops` (1 or 2) away, at most `cap` rows of each.
    async fn memory_graph_around(
        &self,
        scopes: &[String],
        keys: &[String],
        hops: u8,
        cap: i64,
    ) -> Result<GraphAround>;
    async fn memory(&self, id: &str) -> Result<Option<MemoryRecord>>;
    /// Every version of a fact, oldest first.
    async fn memory_versions(&self, lineage: &str) -> Result<Vec<MemoryRecord>>;
    /// Up to `limit` versions changed at `since` or later, in (`updated_at`, `id`) order,
    /// starting after (`since`, `after_id`): what an index follows, or rebuilds from with 0.
    async fn memories_changed(
        &self,
        since: Millis,
        after_id: &str,
        limit: i64,
    ) -> Result<Vec<MemoryRecord>>;
    /// Up to `limit` versions of `scope` after (`created_at`, `id`) in that order: what an
    /// export reads.
    async fn scope_memories(
        &self,
        scope: &str,
        after: (Millis, &str),
        limit: i64,
    ) -> Result<Vec<MemoryRecord>>;
    /// Writes versions as they are (ids, facts, times, links kept), all in one commit with
    /// `audit` and with `vectors` (embeddings of those versions; one a version has already is
    /// kept): a version whose id is stored already must be identical to it (counted as
    /// unchanged) or nothing is written (`Conflict`). Returns (written, unchanged).
    /// Entities follow the same rule (an entity stored already must be the same, and each of
    /// its names must not be another entity's in that scope); mentions and edges are added.
    async fn import_memories(
        &self,
        import: &MemoryImport,
        audit: Option<(Millis, String)>,
    ) -> Result<(u64, u64)>;
    /// Every entity of a scope, in id order.
    async fn scope_entities(&self, scope: &str) -> Result<Vec<MemoryEntity>>;
    /// Queues a curation, with `audit` in the same commit.
    async fn add_curation(&self, c: &CurationRecord, audit: Option<(Millis, String)>)
        -> Result<()>;
    async fn curation(&self, id: &str) -> Result<Option<CurationRecord>>;
    /// Takes the oldest curation queued, or running with its lease run out (its node died),
    /// leasing it until `lease_until` and counting the attempt; none when there is none.
    async fn claim_curation(
        &self,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Option<CurationRecord>>;
    /// Extends the lease of a curation still running (its node is alive).
    async fn renew_curation(&self, id: &str, lease_until: Millis) -> Result<()>;
    /// Keeps the model's reply and what it cost, before anything is applied.
    async fn keep_curation_reply(
        &self,
        id: &str,
        reply: &str,
        cost_nanos: i64,
        now: Millis,
    ) -> Result<()>;
    /// Puts a curation whose try failed back in the queue with why, not to be taken again
    /// before `not_before`.
    async fn requeue_curation(
        &self,
        id: &str,
        error: &str,
        not_before: Millis,
        now: Millis,
    ) -> Result<()>;
    /// Ends a curation: `done` with its result, or `failed` with its error.
    async fn end_curation(
        &self,
        id: &str,
        state: &str,
        result: Option<&str>,
        error: Option<&str>,
        now: Millis,
    ) -> Result<()>;
    /// The embeddings stored for these versions (those that have one).
    async fn memory_vectors(&self, ids: &[String]) -> Result<Vec<MemoryVector>>;
    /// Stores embeddings of versions that still exist (a version erased meanwhile gets
    /// none), replacing any earlier one; how many were stored.
    async fn put_memory_vectors(&self, vectors: &[MemoryVector]) -> Result<u64>;
    /// Up to `limit` embeddings stored at `since` or later, after (`since`, `after_id`).
    async fn memory_vectors_changed(
        &self,
        since: Millis,
        after_id: &str,
        limit: i64,
    ) -> Result<Vec<MemoryVector>>;
    /// Up to `limit` versions recorded after (`created_at`, `id`) `after` with no embedding by
    /// `model` yet, oldest first: what is left to embed, paged so a pass reads each row once.
    async fn memories_to_embed(
        &self,
        model: &str,
        after: (Millis, &str),
        limit: i64,
    ) -> Result<Vec<MemoryRecord>>;
    /// Ids erased at `since` or later.
    async fn memory_erasures(&self, since: Millis) -> Result<Vec<(String, Millis)>>;
    /// Erases what `what` selects — every version of each fact — leaving only the ids in
    /// `memory_erasures`, with `audit` appended in the same commit (the audit record names
    /// ids, never content), their embeddings with them. On SQLite the freed space is zeroed (`secure_delete`) and the
    /// write-ahead log truncated afterwards, so the text is left nowhere in the files.
    async fn erase_memories(
        &self,
        what: &MemoryErase,
        now: Millis,
        audit: Option<(Millis, String)>,
    ) -> Result<MemoryErasure>;
}

/// `$first, $first+1, …` for `n` binds.
fn marks(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rows of a graph query are bounded; lists of ids bound into one statement too.
const IN_CHUNK: usize = 500;

const ENTITY_COLUMNS: &str = "id, scope, name, kind, created_at";

/// The entity a name key of a scope belongs to.
const NAME_OWNER: &str =
    "SELECT entity FROM memory_entity_names WHERE scope = $1 AND name_key = $2";
/// Gives a name key of a scope to an entity, unless another has it already.
const CLAIM_NAME: &str =
    "INSERT INTO memory_entity_names (scope, name_key, name, entity) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (scope, name_key) DO NOTHING";

/// The WHERE clause selecting what `what` erases, with its binds after `$1` (`now`).
fn erase_filter(what: &MemoryErase) -> (String, Vec<String>) {
    match what {
        MemoryErase::Ids { scope, ids } => {
            let marks: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 3)).collect();
            (
                format!(
                    "scope = $2 AND lineage IN (SELECT lineage FROM memories WHERE scope = $2 AND id IN ({}))",
                    marks.join(", ")
                ),
                std::iter::once(scope.clone()).chain(ids.iter().cloned()).collect(),
            )
        }
        MemoryErase::Scope(scope) => ("scope = $2".into(), vec![scope.clone()]),
        MemoryErase::Subject { scope, subject } => (
            "scope = $2 AND subject = $3".into(),
            vec![scope.clone(), subject.clone()],
        ),
        MemoryErase::Entity { scope, entity } => (
            "scope = $2 AND lineage IN (SELECT m.lineage FROM memories m JOIN memory_mentions x ON x.memory = m.id \
             WHERE m.scope = $2 AND x.entity IN (SELECT id FROM memory_entities WHERE scope = $2 AND id = $3 \
             UNION SELECT entity FROM memory_entity_names WHERE scope = $2 AND name_key = $4))"
                .into(),
            vec![scope.clone(), entity.clone(), entity_key(entity)],
        ),
        MemoryErase::Expired => ("expires_at IS NOT NULL AND expires_at <= $1".into(), vec![]),
    }
}

macro_rules! impl_memories {
    ($store:ty) => {
        #[async_trait]
        impl MemoryStore for $store {
            async fn add_memory_graph(
                &self,
                m: &MemoryRecord,
                supersedes: Option<&str>,
                graph: &MemoryGraph,
                audit: Option<(Millis, String)>,
            ) -> Result<(Option<MemoryRecord>, Vec<MemoryEntity>)> {
                let mut tx = self.begin_write().await?;
                let closed = match supersedes {
                    None => None,
                    Some(old) => {
                        let closed: Option<MemoryRecord> = sqlx::query_as(&format!(
                            "UPDATE memories SET expired_at = $1, superseded_by = $2, updated_at = $1, \
                             valid_to = CASE WHEN valid_to IS NOT NULL AND valid_to < $3 THEN valid_to ELSE $3 END \
                             WHERE id = $4 AND scope = $5 AND expired_at IS NULL RETURNING {COLUMNS}"
                        ))
                        .bind(m.created_at)
                        .bind(&m.id)
                        .bind(m.valid_from)
                        .bind(old)
                        .bind(&m.scope)
                        .fetch_optional(&mut *tx)
                        .await?;
                        match closed {
                            Some(c) if c.lineage == m.lineage => Some(c),
                            Some(c) => {
                                return Err(Error::Corrupt(format!(
                                    "memory {} is of fact {}, not {}",
                                    c.id, c.lineage, m.lineage
                                )))
                            }
                            None => {
                                return Err(Error::Conflict(format!(
                                    "memory {old} is not a current memory of scope {}: it was superseded or erased, or is another scope's",
                                    m.scope
                                )))
                            }
                        }
                    }
                };
                sqlx::query(&format!(
                    "INSERT INTO memories ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
                ))
                .bind(&m.id)
                .bind(&m.lineage)
                .bind(&m.scope)
                .bind(&m.text)
                .bind(&m.subject)
                .bind(&m.tags)
                .bind(&m.metadata)
                .bind(&m.source)
                .bind(&m.written_by)
                .bind(m.valid_from)
                .bind(m.valid_to)
                .bind(m.created_at)
                .bind(m.expired_at)
                .bind(&m.superseded_by)
                .bind(m.expires_at)
                .bind(m.updated_at)
                .execute(&mut *tx)
                .await?;
                let mut entities = Vec::with_capacity(graph.entities.len());
                for e in &graph.entities {
                    let names: Vec<&str> = std::iter::once(e.name.as_str())
                        .chain(e.aliases.iter().map(String::as_str))
                        .collect();
                    let mut found: Option<String> = None;
                    for n in &names {
                        found = sqlx::query_scalar(
                            NAME_OWNER,
                        )
                        .bind(&m.scope)
                        .bind(entity_key(n))
                        .fetch_optional(&mut *tx)
                        .await?;
                        if found.is_some() {
                            break;
                        }
                    }
                    let id = match found {
                        Some(id) => id,
                        None => {
                            // Claim the first name; a writer that claimed it meanwhile made the
                            // entity, and this version names that one.
                            let claimed = sqlx::query(
                                CLAIM_NAME,
                            )
                            .bind(&m.scope)
                            .bind(entity_key(&e.name))
                            .bind(&e.name)
                            .bind(&e.id)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                            if claimed == 1 {
                                sqlx::query(
                                    "INSERT INTO memory_entities (id, scope, name, kind, created_at) VALUES ($1, $2, $3, $4, $5)",
                                )
                                .bind(&e.id)
                                .bind(&m.scope)
                                .bind(&e.name)
                                .bind(&e.kind)
                                .bind(m.created_at)
                                .execute(&mut *tx)
                                .await?;
                                e.id.clone()
                            } else {
                                sqlx::query_scalar(
                                    NAME_OWNER,
                                )
                                .bind(&m.scope)
                                .bind(entity_key(&e.name))
                                .fetch_one(&mut *tx)
                                .await?
                            }
                        }
                    };
                    for n in &names {
                        sqlx::query(
                            CLAIM_NAME,
                        )
                        .bind(&m.scope)
                        .bind(entity_key(n))
                        .bind(*n)
                        .bind(&id)
                        .execute(&mut *tx)
                        .await?;
                    }
                    sqlx::query(
                        "INSERT INTO memory_mentions (memory, entity) VALUES ($1, $2) ON CONFLICT (memory, entity) DO NOTHING",
                    )
                    .bind(&m.id)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                    let entity: MemoryEntity = sqlx::query_as(&format!(
                        "SELECT {ENTITY_COLUMNS} FROM memory_entities WHERE id = $1"
                    ))
                    .bind(&id)
                    .fetch_one(&mut *tx)
                    .await?;
                    entities.push(entity);
                }
                for (subject, relation, object) in &graph.relations {
                    let (Some(s), Some(o)) = (entities.get(*subject), entities.get(*object)) else {
                        return Err(Error::Corrupt(format!(
                            "relation {relation:?} names an entity the memory does not"
                        )));
                    };
                    sqlx::query(
                        "INSERT INTO memory_relations (memory, subject, relation, object) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (memory, subject, relation, object) DO NOTHING",
                    )
                    .bind(&m.id)
                    .bind(&s.id)
                    .bind(relation)
                    .bind(&o.id)
                    .execute(&mut *tx)
                    .await?;
                }
                if let Some(record) = audit {
                    Self::append_audit_in(&mut tx, &[record]).await?;
                }
                tx.commit().await?;
                Ok((closed, entities))
            }

            async fn memory_graph_of(
                &self,
                ids: &[String],
            ) -> Result<(Vec<(String, MemoryEntity)>, Vec<MemoryRelation>)> {
                let (mut named, mut relations) = (Vec::new(), Vec::new());
                for chunk in ids.chunks(IN_CHUNK) {
                    let sql = format!(
                        "SELECT x.memory, e.id, e.scope, e.name, e.kind, e.created_at FROM memory_mentions x \
                         JOIN memory_entities e ON e.id = x.entity WHERE x.memory IN ({}) ORDER BY x.memory, e.id",
                        marks(1, chunk.len())
                    );
                    let mut q = sqlx::query_as::<_, (String, String, String, String, Option<String>, Millis)>(&sql);
                    for id in chunk {
                        q = q.bind(id);
                    }
                    for (memory, id, scope, name, kind, created_at) in q.fetch_all(&self.read).await? {
                        named.push((memory, MemoryEntity { id, scope, name, kind, created_at }));
                    }
                    let sql = format!(
                        "SELECT memory, subject, relation, object FROM memory_relations WHERE memory IN ({}) \
                         ORDER BY memory, subject, relation, object",
                        marks(1, chunk.len())
                    );
                    let mut q = sqlx::query_as::<_, MemoryRelation>(&sql);
                    for id in chunk {
                        q = q.bind(id);
                    }
                    relations.extend(q.fetch_all(&self.read).await?);
                }
                Ok((named, relations))
            }

            async fn memory_entity_names(&self, entities: &[String]) -> Result<Vec<(String, String)>> {
                let mut out = Vec::new();
                for chunk in entities.chunks(IN_CHUNK) {
                    let sql = format!(
                        "SELECT entity, name FROM memory_entity_names WHERE entity IN ({}) ORDER BY entity, name_key",
                        marks(1, chunk.len())
                    );
                    let mut q = sqlx::query_as::<_, (String, String)>(&sql);
                    for id in chunk {
                        q = q.bind(id);
                    }
                    out.extend(q.fetch_all(&self.read).await?);
                }
                Ok(out)
            }

            async fn memory_graph_around(
                &self,
                scopes: &[String],
                keys: &[String],
                hops: u8,
                cap: i64,
            ) -> Result<GraphAround> {
                let mut around = GraphAround::default();
                if scopes.is_empty() || keys.is_empty() {
                    return Ok(around);
                }
                let sql = format!(
                    "SELECT DISTINCT e.id, e.scope, e.name, e.kind, e.created_at FROM memory_entity_names n \
                     JOIN memory_entities e ON e.id = n.entity WHERE n.scope IN ({}) AND n.name_key IN ({}) ORDER BY e.id",
                    marks(1, scopes.len()),
                    marks(scopes.len() + 1, keys.len())
                );
                let mut q = sqlx::query_as::<_, MemoryEntity>(&sql);
                for b in scopes.iter().chain(keys) {
                    q = q.bind(b);
                }
                around.seeds = q.fetch_all(&self.read).await?;
                if around.seeds.is_empty() {
                    return Ok(around);
                }
                let seeds: Vec<String> = around.seeds.iter().map(|e| e.id.clone()).collect();
                let sql = format!(
                    "SELECT memory, entity FROM memory_mentions WHERE entity IN ({}) ORDER BY memory DESC LIMIT ${}",
                    marks(1, seeds.len()),
                    seeds.len() + 1
                );
                let mut q = sqlx::query_as::<_, (String, String)>(&sql);
                for id in &seeds {
                    q = q.bind(id);
                }
                around.mentions = q.bind(cap).fetch_all(&self.read).await?;
                let mut frontier = seeds.clone();
                let mut seen: std::collections::HashSet<String> = seeds.into_iter().collect();
                for _ in 0..hops.clamp(1, 2) {
                    if frontier.is_empty() {
                        break;
                    }
                    let sql = format!(
                        "SELECT memory, subject, relation, object FROM memory_relations \
                         WHERE subject IN ({0}) OR object IN ({0}) ORDER BY memory DESC LIMIT ${1}",
                        marks(1, frontier.len()),
                        frontier.len() + 1
                    );
                    let mut q = sqlx::query_as::<_, MemoryRelation>(&sql);
                    for id in &frontier {
                        q = q.bind(id);
                    }
                    let edges = q.bind(cap).fetch_all(&self.read).await?;
                    frontier = Vec::new();
                    for e in &edges {
                        for end in [&e.subject, &e.object] {
                            if seen.insert(end.clone()) {
                                frontier.push(end.clone());
                            }
                        }
                    }
                    frontier.truncate(IN_CHUNK);
                    around.relations.extend(edges);
                }
                around.relations.sort();
                around.relations.dedup();
                let ends: Vec<&String> = seen
                    .iter()
                    .filter(|id| !around.seeds.iter().any(|e| &e.id == *id))
                    .collect();
                for chunk in ends.chunks(IN_CHUNK) {
                    let sql = format!(
                        "SELECT {ENTITY_COLUMNS} FROM memory_entities WHERE id IN ({}) ORDER BY id",
                        marks(1, chunk.len())
                    );
                    let mut q = sqlx::query_as::<_, MemoryEntity>(&sql);
                    for id in chunk {
                        q = q.bind(*id);
                    }
                    around.neighbours.extend(q.fetch_all(&self.read).await?);
                }
                Ok(around)
            }

            async fn memory(&self, id: &str) -> Result<Option<MemoryRecord>> {
                Ok(sqlx::query_as(&format!("SELECT {COLUMNS} FROM memories WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.read)
                    .await?)
            }

            async fn memory_versions(&self, lineage: &str) -> Result<Vec<MemoryRecord>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {COLUMNS} FROM memories WHERE lineage = $1 ORDER BY created_at, id"
                ))
                .bind(lineage)
                .fetch_all(&self.read)
                .await?)
            }

            async fn memories_changed(&self, since: Millis, after_id: &str, limit: i64) -> Result<Vec<MemoryRecord>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {COLUMNS} FROM memories WHERE updated_at > $1 OR (updated_at = $1 AND id > $2) \
                     ORDER BY updated_at, id LIMIT $3"
                ))
                .bind(since)
                .bind(after_id)
                .bind(limit)
                .fetch_all(&self.read)
                .await?)
            }

            async fn scope_memories(&self, scope: &str, after: (Millis, &str), limit: i64) -> Result<Vec<MemoryRecord>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {COLUMNS} FROM memories WHERE scope = $1 AND (created_at > $2 OR (created_at = $2 AND id > $3)) \
                     ORDER BY created_at, id LIMIT $4"
                ))
                .bind(scope)
                .bind(after.0)
                .bind(after.1)
                .bind(limit)
                .fetch_all(&self.read)
                .await?)
            }

            async fn import_memories(
                &self,
                import: &MemoryImport,
                audit: Option<(Millis, String)>,
            ) -> Result<(u64, u64)> {
                let MemoryImport { versions, vectors, entities, mentions, relations } = import;
                let mut tx = self.begin_write().await?;
                let (mut written, mut unchanged) = (0, 0);
                for m in versions {
                    let done = sqlx::query(&format!(
                        "INSERT INTO memories ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
                         ON CONFLICT (id) DO NOTHING"
                    ))
                    .bind(&m.id)
                    .bind(&m.lineage)
                    .bind(&m.scope)
                    .bind(&m.text)
                    .bind(&m.subject)
                    .bind(&m.tags)
                    .bind(&m.metadata)
                    .bind(&m.source)
                    .bind(&m.written_by)
                    .bind(m.valid_from)
                    .bind(m.valid_to)
                    .bind(m.created_at)
                    .bind(m.expired_at)
                    .bind(&m.superseded_by)
                    .bind(m.expires_at)
                    .bind(m.updated_at)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if done == 1 {
                        written += 1;
                        continue;
                    }
                    let stored: MemoryRecord = sqlx::query_as(&format!("SELECT {COLUMNS} FROM memories WHERE id = $1"))
                        .bind(&m.id)
                        .fetch_one(&mut *tx)
                        .await?;
                    // What changes as a copy moves between stores is when it last changed.
                    let same = MemoryRecord { updated_at: m.updated_at, ..stored } == *m;
                    if !same {
                        return Err(Error::Conflict(format!(
                            "memory {} is stored already with other content; nothing was imported",
                            m.id
                        )));
                    }
                    unchanged += 1;
                }
                for v in vectors {
                    sqlx::query(
                        "INSERT INTO memory_vectors (id, model, vector, updated_at) \
                         SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM memories WHERE id = $1) \
                         ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(&v.id)
                    .bind(&v.model)
                    .bind(&v.vector)
                    .bind(v.updated_at)
                    .execute(&mut *tx)
                    .await?;
                }
                for (e, names) in entities {
                    let made = sqlx::query(
                        "INSERT INTO memory_entities (id, scope, name, kind, created_at) VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(&e.id)
                    .bind(&e.scope)
                    .bind(&e.name)
                    .bind(&e.kind)
                    .bind(e.created_at)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if made == 0 {
                        let stored: MemoryEntity = sqlx::query_as(&format!(
                            "SELECT {ENTITY_COLUMNS} FROM memory_entities WHERE id = $1"
                        ))
                        .bind(&e.id)
                        .fetch_one(&mut *tx)
                        .await?;
                        if stored != *e {
                            return Err(Error::Conflict(format!(
                                "entity {} is stored already with another name, kind or scope; nothing was imported",
                                e.id
                            )));
                        }
                    }
                    for n in names {
                        sqlx::query(
                            CLAIM_NAME,
                        )
                        .bind(&e.scope)
                        .bind(entity_key(n))
                        .bind(n)
                        .bind(&e.id)
                        .execute(&mut *tx)
                        .await?;
                        let owner: String = sqlx::query_scalar(
                            NAME_OWNER,
                        )
                        .bind(&e.scope)
                        .bind(entity_key(n))
                        .fetch_one(&mut *tx)
                        .await?;
                        if owner != e.id {
                            return Err(Error::Conflict(format!(
                                "the name {n:?} is entity {owner}'s in scope {} here, and {}'s in the import; nothing was imported",
                                e.scope, e.id
                            )));
                        }
                    }
                }
                for (memory, entity) in mentions {
                    sqlx::query(
                        "INSERT INTO memory_mentions (memory, entity) VALUES ($1, $2) ON CONFLICT (memory, entity) DO NOTHING",
                    )
                    .bind(memory)
                    .bind(entity)
                    .execute(&mut *tx)
                    .await?;
                }
                for r in relations {
                    sqlx::query(
                        "INSERT INTO memory_relations (memory, subject, relation, object) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (memory, subject, relation, object) DO NOTHING",
                    )
                    .bind(&r.memory)
                    .bind(&r.subject)
                    .bind(&r.relation)
                    .bind(&r.object)
                    .execute(&mut *tx)
                    .await?;
                }
                if let Some(record) = audit {
                    Self::append_audit_in(&mut tx, &[record]).await?;
                }
                tx.commit().await?;
                Ok((written, unchanged))
            }

            async fn add_curation(&self, c: &CurationRecord, audit: Option<(Millis, String)>) -> Result<()> {
                let mut tx = self.begin_write().await?;
                sqlx::query(&format!(
                    "INSERT INTO memory_curations ({CURATION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
                ))
                .bind(&c.id)
                .bind(&c.scope)
                .bind(&c.requested_by)
                .bind(&c.input)
                .bind(&c.state)
                .bind(c.attempts)
                .bind(c.lease_until)
                .bind(&c.prompt)
                .bind(&c.model)
                .bind(&c.reply)
                .bind(c.cost_nanos)
                .bind(&c.result)
                .bind(&c.error)
                .bind(c.created_at)
                .bind(c.updated_at)
                .execute(&mut *tx)
                .await?;
                if let Some(record) = audit {
                    Self::append_audit_in(&mut tx, &[record]).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn curation(&self, id: &str) -> Result<Option<CurationRecord>> {
                Ok(sqlx::query_as(&format!("SELECT {CURATION_COLUMNS} FROM memory_curations WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.read)
                    .await?)
            }

            async fn claim_curation(&self, now: Millis, lease_until: Millis) -> Result<Option<CurationRecord>> {
                let mut tx = self.begin_write().await?;
                // The state is checked again as the row is taken: of two nodes after one row,
                // one takes it.
                let claimed: Option<CurationRecord> = sqlx::query_as(&format!(
                    "UPDATE memory_curations SET state = 'running', lease_until = $2, attempts = attempts + 1, updated_at = $1 \
                     WHERE id = (SELECT id FROM memory_curations WHERE (state = 'queued' AND lease_until <= $1) OR (state = 'running' AND lease_until < $1) \
                     ORDER BY created_at, id LIMIT 1) \
                     AND ((state = 'queued' AND lease_until <= $1) OR (state = 'running' AND lease_until < $1)) RETURNING {CURATION_COLUMNS}"
                ))
                .bind(now)
                .bind(lease_until)
                .fetch_optional(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(claimed)
            }

            async fn renew_curation(&self, id: &str, lease_until: Millis) -> Result<()> {
                let mut tx = self.begin_write().await?;
                sqlx::query("UPDATE memory_curations SET lease_until = $2 WHERE id = $1 AND state = 'running'")
                    .bind(id)
                    .bind(lease_until)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn keep_curation_reply(&self, id: &str, reply: &str, cost_nanos: i64, now: Millis) -> Result<()> {
                let mut tx = self.begin_write().await?;
                sqlx::query("UPDATE memory_curations SET reply = $2, cost_nanos = $3, updated_at = $4 WHERE id = $1")
                    .bind(id)
                    .bind(reply)
                    .bind(cost_nanos)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn requeue_curation(&self, id: &str, error: &str, not_before: Millis, now: Millis) -> Result<()> {
                let mut tx = self.begin_write().await?;
                // `lease_until` of a queued request is the time before which it waits.
                sqlx::query("UPDATE memory_curations SET state = 'queued', error = $2, lease_until = $3, updated_at = $4 WHERE id = $1 AND state = 'running'")
                    .bind(id)
                    .bind(error)
                    .bind(not_before)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn end_curation(
                &self,
                id: &str,
                state: &str,
                result: Option<&str>,
                error: Option<&str>,
                now: Millis,
            ) -> Result<()> {
                let mut tx = self.begin_write().await?;
                sqlx::query("UPDATE memory_curations SET state = $2, result = $3, error = $4, updated_at = $5 WHERE id = $1")
                    .bind(id)
                    .bind(state)
                    .bind(result)
                    .bind(error)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn scope_entities(&self, scope: &str) -> Result<Vec<MemoryEntity>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {ENTITY_COLUMNS} FROM memory_entities WHERE scope = $1 ORDER BY id"
                ))
                .bind(scope)
                .fetch_all(&self.read)
                .await?)
            }

            async fn put_memory_vectors(&self, vectors: &[MemoryVector]) -> Result<u64> {
                let mut tx = self.begin_write().await?;
                let mut stored = 0;
                for v in vectors {
                    stored += sqlx::query(
                        "INSERT INTO memory_vectors (id, model, vector, updated_at) \
                         SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM memories WHERE id = $1) \
                         ON CONFLICT (id) DO UPDATE SET model = excluded.model, vector = excluded.vector, updated_at = excluded.updated_at",
                    )
                    .bind(&v.id)
                    .bind(&v.model)
                    .bind(&v.vector)
                    .bind(v.updated_at)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                }
                tx.commit().await?;
                Ok(stored)
            }

            async fn memory_vectors(&self, ids: &[String]) -> Result<Vec<MemoryVector>> {
                let mut out = Vec::with_capacity(ids.len());
                for chunk in ids.chunks(500) {
                    let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
                    let sql = format!(
                        "SELECT id, model, vector, updated_at FROM memory_vectors WHERE id IN ({})",
                        marks.join(", ")
                    );
                    let mut q = sqlx::query_as::<_, MemoryVector>(&sql);
                    for id in chunk {
                        q = q.bind(id);
                    }
                    out.extend(q.fetch_all(&self.read).await?);
                }
                Ok(out)
            }

            async fn memory_vectors_changed(&self, since: Millis, after_id: &str, limit: i64) -> Result<Vec<MemoryVector>> {
                Ok(sqlx::query_as(
                    "SELECT id, model, vector, updated_at FROM memory_vectors \
                     WHERE updated_at > $1 OR (updated_at = $1 AND id > $2) ORDER BY updated_at, id LIMIT $3",
                )
                .bind(since)
                .bind(after_id)
                .bind(limit)
                .fetch_all(&self.read)
                .await?)
            }

            async fn memories_to_embed(&self, model: &str, after: (Millis, &str), limit: i64) -> Result<Vec<MemoryRecord>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {} FROM memories m LEFT JOIN memory_vectors v ON v.id = m.id \
                     WHERE (m.created_at > $2 OR (m.created_at = $2 AND m.id > $3)) AND (v.id IS NULL OR v.model <> $1) \
                     ORDER BY m.created_at, m.id LIMIT $4",
                    COLUMNS.split(", ").map(|c| format!("m.{c}")).collect::<Vec<_>>().join(", ")
                ))
                .bind(model)
                .bind(after.0)
                .bind(after.1)
                .bind(limit)
                .fetch_all(&self.read)
                .await?)
            }

            async fn memory_erasures(&self, since: Millis) -> Result<Vec<(String, Millis)>> {
                Ok(sqlx::query_as(
                    "SELECT id, erased_at FROM memory_erasures WHERE erased_at >= $1 ORDER BY erased_at, id",
                )
                .bind(since)
                .fetch_all(&self.read)
                .await?)
            }

            async fn erase_memories(
                &self,
                what: &MemoryErase,
                now: Millis,
                audit: Option<(Millis, String)>,
            ) -> Result<MemoryErasure> {
                let (filter, binds) = erase_filter(what);
                let sql = format!("DELETE FROM memories WHERE {filter} RETURNING id, lineage, scope");
                let mut tx = self.begin_write().await?;
                let mut q = sqlx::query_as::<_, ErasedMemory>(&sql).bind(now);
                for b in &binds {
                    q = q.bind(b);
                }
                let erased = q.fetch_all(&mut *tx).await?;
                let mut report = MemoryErasure::default();
                for e in &erased {
                    sqlx::query("DELETE FROM memory_vectors WHERE id = $1")
                        .bind(&e.id)
                        .execute(&mut *tx)
                        .await?;
                    report.mentions += sqlx::query("DELETE FROM memory_mentions WHERE memory = $1")
                        .bind(&e.id)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    report.relations += sqlx::query("DELETE FROM memory_relations WHERE memory = $1")
                        .bind(&e.id)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    sqlx::query(
                        "INSERT INTO memory_erasures (id, erased_at) VALUES ($1, $2) \
                         ON CONFLICT (id) DO UPDATE SET erased_at = excluded.erased_at",
                    )
                    .bind(&e.id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                // Entities no memory names any more go too, with every name they had.
                let mut scopes: Vec<&str> = erased.iter().map(|e| e.scope.as_str()).collect();
                scopes.sort_unstable();
                scopes.dedup();
                if report.mentions > 0 {
                    for scope in scopes {
                        let orphans: Vec<String> = sqlx::query_scalar(
                            "DELETE FROM memory_entities WHERE scope = $1 AND NOT EXISTS \
                             (SELECT 1 FROM memory_mentions x WHERE x.entity = memory_entities.id) RETURNING id",
                        )
                        .bind(scope)
                        .fetch_all(&mut *tx)
                        .await?;
                        for id in &orphans {
                            sqlx::query("DELETE FROM memory_entity_names WHERE entity = $1")
                                .bind(id)
                                .execute(&mut *tx)
                                .await?;
                        }
                        report.entities.extend(orphans);
                    }
                    report.entities.sort();
                }
                if let Some(record) = audit {
                    Self::append_audit_in(&mut tx, &[record]).await?;
                }
                tx.commit().await?;
                report.files_scrubbed = erased.is_empty() || self.scrub().await;
                report.memories = erased;
                Ok(report)
            }
        }
    };
}

impl_memories!(SqliteStore);
impl_memories!(PgStore);

impl SqliteStore {
    /// After an erasure: the deleted rows' bytes were zeroed as they were freed (every
    /// connection has `secure_delete` on); the write-ahead log still holds older copies of
    /// their pages until a checkpoint moves the current pages into the file and truncates it.
    /// A checkpoint that readers keep from finishing is retried by the next erasure; the
    /// log's frames are overwritten as it is reused meanwhile.
    async fn scrub(&self) -> bool {
        let done: std::result::Result<(i64, i64, i64), _> =
            sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&self.write)
                .await;
        match done {
            Ok((0, _, _)) => true,
            Ok(_) => {
                tracing::warn!("the write-ahead log could not be truncated after an erasure (readers kept it busy); the next erasure tries again");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "checkpointing the write-ahead log after an erasure failed");
                false
            }
        }
    }
}

/// Rewrites of the tables an erasure deletes from: every place a memory's text, names or
/// embedding lives.
const REWRITE_ERASED_FROM: [&str; 6] = [
    "VACUUM FULL memories",
    "VACUUM FULL memory_vectors",
    "VACUUM FULL memory_mentions",
    "VACUUM FULL memory_relations",
    "VACUUM FULL memory_entities",
    "VACUUM FULL memory_entity_names",
];

impl PgStore {
    /// After an erasure: a deleted row's bytes stay in its table's pages (and a plain vacuum
    /// only marks the space free, it does not overwrite it), so each table an erasure touched
    /// is rewritten by `VACUUM FULL` into new files, its indexes and TOAST with it; the old
    /// files are truncated when that commits. Each rewrite holds its table exclusively while it
    /// runs, so it waits at most two seconds ([`SCRUB_LOCK_WAIT`]) for the lock (readers of the table queue
    /// behind a waiting rewrite); a table it could not take is left for the next erasure, and
    /// the report says so. Older copies remain in the write-ahead log until PostgreSQL recycles
    /// its segments, and in any replica or backup.
    async fn scrub(&self) -> bool {
        let mut conn = match self.write.acquire().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "no connection to rewrite the memory tables after an erasure; the next erasure tries again");
                return false;
            }
        };
        if let Err(e) = sqlx::query(SCRUB_LOCK_WAIT).execute(&mut *conn).await {
            tracing::warn!(error = %e, "setting a lock timeout for the rewrite after an erasure failed");
            return false;
        }
        let mut all = true;
        for rewrite in REWRITE_ERASED_FROM {
            // One statement per call: VACUUM cannot run inside a transaction block.
            if let Err(e) = sqlx::query(rewrite).execute(&mut *conn).await {
                tracing::warn!(error = %e, rewrite, "rewriting a table after an erasure failed (it was busy); the next erasure tries again");
                all = false;
            }
        }
        let _ = sqlx::query("RESET lock_timeout").execute(&mut *conn).await;
        all
    }
}

/// How long an erasure's rewrite of one table waits for that table.
const SCRUB_LOCK_WAIT: &str = "SET lock_timeout = '2s'";
