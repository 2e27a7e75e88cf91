//! Memories moved between stores: JSON lines, lossless and stable. The first line names the
//! format; each next line is one version of a fact, every field kept (ids, the fact it belongs
//! to, both times, who wrote it, what superseded it, metadata and provenance as given). Lines
//! are ordered by scope, then by when each version was recorded, then id, and fields are
//! written in one order, so exporting what was imported gives the same bytes. A version's
//! embedding travels with it, with the model that made it: a store embedding with the same
//! model keeps it instead of embedding the text again. Each scope's entities come first, each
//! with every name it has; a version lists the entities it names and the edges it states.
//!
//! ```text
//! {"format":"steward-memory","version":1}
//! {"entity":"ent_…","scope":"user:alice","name":"Alice","kind":"person","names":["Al","Alice"],"created_at":…}
//! {"id":"mem_…","fact":"mem_…","scope":"user:alice","text":"…","tags":[],"metadata":{},…,"entities":["ent_…"],"relations":[…],"embedding":{"model":"…","vector":"…"}}
//! ```

use serde::{Deserialize, Serialize};
use serde_json::Value;
use steward_store::{
    entity_key, MemoryEntity, MemoryImport, MemoryRecord, MemoryRelation, MemoryVector,
};
use steward_types::Millis;

use crate::{MemoryError, Result, Scope};

pub const FORMAT: &str = "steward-memory";
pub const VERSION: u64 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    version: u64,
}

/// One version, as a line.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: String,
    fact: String,
    scope: String,
    text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    tags: Vec<String>,
    metadata: serde_json::Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<Value>,
    written_by: String,
    valid_from: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    valid_to: Option<Millis>,
    created_at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expired_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    superseded_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    entities: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    relations: Vec<Edge>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    embedding: Option<Embedding>,
}

/// An edge a version states, between entities of its scope, by id.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Edge {
    subject: String,
    relation: String,
    object: String,
}

/// An entity, as a line.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntityLine {
    entity: String,
    scope: String,
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    /// Every name it is known by (its first among them), in key order.
    names: Vec<String>,
    created_at: Millis,
}

/// A version's embedding: the model's id and the vector (base64 of little-endian f32s).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Embedding {
    model: String,
    vector: String,
}

/// The most dimensions a vector read from an export may have.
const MAX_DIMENSIONS: usize = 8192;

/// What an export holds.
pub type Imported = MemoryImport;

/// An entity as its line, with every name it has.
pub fn entity_line(e: &MemoryEntity, names: &[String]) -> String {
    serde_json::to_string(&EntityLine {
        entity: e.id.clone(),
        scope: e.scope.clone(),
        name: e.name.clone(),
        kind: e.kind.clone(),
        names: names.to_vec(),
        created_at: e.created_at,
    })
    .unwrap_or_default()
}

/// The format's first line.
pub fn header() -> String {
    serde_json::to_string(&Header {
        format: FORMAT.into(),
        version: VERSION,
    })
    .unwrap_or_default()
}

/// A stored version as its line, with the entities it names (ids, sorted), the edges it
/// states (sorted) and its embedding, if it has one.
pub fn line(
    m: &MemoryRecord,
    entities: &[String],
    relations: &[MemoryRelation],
    vector: Option<&MemoryVector>,
) -> String {
    let l = Line {
        id: m.id.clone(),
        fact: m.lineage.clone(),
        scope: m.scope.clone(),
        text: m.text.clone(),
        subject: m.subject.clone(),
        tags: serde_json::from_str(&m.tags).unwrap_or_default(),
        metadata: serde_json::from_str(&m.metadata).unwrap_or_default(),
        source: m
            .source
            .as_deref()
            .map(|s| serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.into()))),
        written_by: m.written_by.clone(),
        valid_from: m.valid_from,
        valid_to: m.valid_to,
        created_at: m.created_at,
        expired_at: m.expired_at,
        superseded_by: m.superseded_by.clone(),
        expires_at: m.expires_at,
        entities: entities.to_vec(),
        relations: relations
            .iter()
            .map(|r| Edge {
                subject: r.subject.clone(),
                relation: r.relation.clone(),
                object: r.object.clone(),
            })
            .collect(),
        embedding: vector.map(|v| Embedding {
            model: v.model.clone(),
            vector: v.vector.clone(),
        }),
    };
    serde_json::to_string(&l).unwrap_or_default()
}

/// Reads an export: every line checked (the header first, then versions whose scopes parse,
/// whose facts and links hold together within the file), or an error naming the first bad
/// line. `now` becomes each version's change time, so other nodes pick the import up.
pub fn read(text: &str, limits: &crate::Limits, now: Millis) -> Result<Imported> {
    let bad = |n: usize, why: String| MemoryError::BadRequest(format!("line {n}: {why}"));
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (n, first) = lines.next().ok_or_else(|| {
        MemoryError::BadRequest("an empty export: the first line names the format".into())
    })?;
    let h: Header = serde_json::from_str(first).map_err(|e| {
        bad(
            n + 1,
            format!("expected {{\"format\":\"{FORMAT}\",\"version\":{VERSION}}}: {e}"),
        )
    })?;
    if h.format != FORMAT || h.version != VERSION {
        return Err(bad(
            n + 1,
            format!(
                "format {:?} version {}: this server reads {FORMAT} version {VERSION}",
                h.format, h.version
            ),
        ));
    }
    let mut out = Imported::default();
    let mut ids = std::collections::HashSet::new();
    // Entity id → its scope, and name key → entity, as read so far.
    let mut entity_scope: std::collections::HashMap<String, String> = Default::default();
    let mut keys: std::collections::HashMap<(String, String), String> = Default::default();
    for (n, text) in lines {
        if text.trim_start().starts_with("{\"entity\"") {
            let e: EntityLine =
                serde_json::from_str(text).map_err(|e| bad(n + 1, e.to_string()))?;
            Scope::parse(&e.scope).map_err(|e| bad(n + 1, e.to_string()))?;
            let ok = |s: &str, max: usize| {
                !entity_key(s).is_empty() && s.len() <= max && !s.chars().any(char::is_control)
            };
            if e.entity.is_empty() || e.entity.len() > 100 || !ok(&e.name, 200) {
                return Err(bad(
                    n + 1,
                    "entity: an id of 1 to 100 characters and a name of 1 to 200 bytes".into(),
                ));
            }
            if e.kind.as_deref().is_some_and(|k| !ok(k, 64)) {
                return Err(bad(n + 1, "kind: 1 to 64 bytes".into()));
            }
            if !e.names.contains(&e.name)
                || e.names.len() > 1000
                || !e.names.iter().all(|x| ok(x, 200))
            {
                return Err(bad(
                    n + 1,
                    "names: every name of the entity, its name among them, each 1 to 200 bytes"
                        .into(),
                ));
            }
            if entity_scope
                .insert(e.entity.clone(), e.scope.clone())
                .is_some()
            {
                return Err(bad(n + 1, format!("entity {} appears twice", e.entity)));
            }
            for x in &e.names {
                if let Some(other) = keys.insert((e.scope.clone(), entity_key(x)), e.entity.clone())
                {
                    return Err(bad(
                        n + 1,
                        format!("the name {x:?} is entity {other}'s already"),
                    ));
                }
            }
            out.entities.push((
                MemoryEntity {
                    id: e.entity,
                    scope: e.scope,
                    name: e.name,
                    kind: e.kind,
                    created_at: e.created_at,
                },
                e.names,
            ));
            continue;
        }
        let l: Line = serde_json::from_str(text).map_err(|e| bad(n + 1, e.to_string()))?;
        Scope::parse(&l.scope).map_err(|e| bad(n + 1, e.to_string()))?;
        if l.id.is_empty() || l.id.len() > 100 || l.fact.is_empty() || l.fact.len() > 100 {
            return Err(bad(n + 1, "id and fact: 1 to 100 characters".into()));
        }
        if l.text.trim().is_empty() || l.text.len() > limits.max_text_bytes {
            return Err(bad(
                n + 1,
                format!("text: 1 to {} bytes", limits.max_text_bytes),
            ));
        }
        if l.tags.len() > limits.max_tags {
            return Err(bad(n + 1, format!("tags: more than {}", limits.max_tags)));
        }
        if l.expired_at.is_some() != l.superseded_by.is_some() {
            return Err(bad(
                n + 1,
                "expired_at and superseded_by come together (a version is closed by the one that superseded it)".into(),
            ));
        }
        if !ids.insert(l.id.clone()) {
            return Err(bad(n + 1, format!("memory {} appears twice", l.id)));
        }
        let metadata = Value::Object(l.metadata).to_string();
        let source = l.source.map(|s| s.to_string());
        if metadata.len() > limits.max_json_bytes
            || source
                .as_ref()
                .is_some_and(|s| s.len() > limits.max_json_bytes)
        {
            return Err(bad(
                n + 1,
                format!(
                    "metadata or source: more than {} bytes",
                    limits.max_json_bytes
                ),
            ));
        }
        let of_scope = |id: &str| entity_scope.get(id) == Some(&l.scope);
        if let Some(e) = l.entities.iter().find(|e| !of_scope(e)) {
            return Err(bad(
                n + 1,
                format!(
                    "entities: {e} is not an entity of scope {} listed before this line",
                    l.scope
                ),
            ));
        }
        for r in &l.relations {
            if !of_scope(&r.subject) || !of_scope(&r.object) {
                return Err(bad(
                    n + 1,
                    format!(
                        "relations: {} or {} is not an entity of scope {} listed before this line",
                        r.subject, r.object, l.scope
                    ),
                ));
            }
            if r.relation.trim().is_empty()
                || r.relation.len() > 100
                || r.relation.chars().any(char::is_control)
            {
                return Err(bad(n + 1, "relations: a relation is 1 to 100 bytes".into()));
            }
        }
        out.mentions
            .extend(l.entities.iter().map(|e| (l.id.clone(), e.clone())));
        out.relations
            .extend(l.relations.iter().map(|r| MemoryRelation {
                memory: l.id.clone(),
                subject: r.subject.clone(),
                relation: r.relation.clone(),
                object: r.object.clone(),
            }));
        if let Some(e) = l.embedding {
            // Vector search compares by dot product: every embedding must be of unit length.
            let dims = crate::embed::decode(&e.vector).map(|v| {
                let norm = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
                (v.len(), (norm - 1.0).abs() < 1e-3)
            });
            match dims {
                _ if e.model.trim().is_empty() || e.model.len() > 200 => {
                    return Err(bad(n + 1, "embedding.model: 1 to 200 characters".into()))
                }
                Some((d, true)) if (1..=MAX_DIMENSIONS).contains(&d) => {}
                _ => {
                    return Err(bad(
                        n + 1,
                        format!("embedding.vector: expected base64 of 1 to {MAX_DIMENSIONS} little-endian f32s, a vector of unit length"),
                    ))
                }
            }
            out.vectors.push(MemoryVector {
                id: l.id.clone(),
                model: e.model,
                vector: e.vector,
                updated_at: now,
            });
        }
        out.versions.push(MemoryRecord {
            id: l.id,
            lineage: l.fact,
            scope: l.scope,
            text: l.text,
            subject: l.subject,
            tags: Value::from(l.tags).to_string(),
            metadata,
            source,
            written_by: l.written_by,
            valid_from: l.valid_from,
            valid_to: l.valid_to,
            created_at: l.created_at,
            expired_at: l.expired_at,
            superseded_by: l.superseded_by,
            expires_at: l.expires_at,
            updated_at: now,
        });
    }
    Ok(out)
}
