//! Memories moved between stores: JSON lines, lossless and stable. The first line names the
//! format; each next line is one version of a fact, every field kept (ids, the fact it belongs
//! to, both times, who wrote it, what superseded it, metadata and provenance as given). Lines
//! are ordered by scope, then by when each version was recorded, then id, and fields are
//! written in one order, so exporting what was imported gives the same bytes.
//!
//! ```text
//! {"format":"steward-memory","version":1}
//! {"id":"mem_…","fact":"mem_…","scope":"user:alice","text":"…","tags":[],"metadata":{},…}
//! ```

use serde::{Deserialize, Serialize};
use serde_json::Value;
use steward_store::MemoryRecord;
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
}

/// The format's first line.
pub fn header() -> String {
    serde_json::to_string(&Header {
        format: FORMAT.into(),
        version: VERSION,
    })
    .unwrap_or_default()
}

/// A stored version as its line.
pub fn line(m: &MemoryRecord) -> String {
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
    };
    serde_json::to_string(&l).unwrap_or_default()
}

/// Reads an export: every line checked (the header first, then versions whose scopes parse,
/// whose facts and links hold together within the file), or an error naming the first bad
/// line. `now` becomes each version's change time, so other nodes pick the import up.
pub fn read(text: &str, limits: &crate::Limits, now: Millis) -> Result<Vec<MemoryRecord>> {
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
    let mut out = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for (n, text) in lines {
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
        out.push(MemoryRecord {
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
