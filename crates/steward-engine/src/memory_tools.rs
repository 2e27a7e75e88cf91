//! `memory_add` and `memory_search` as a managed run calls them: the run's own scopes
//! (`agent:<its agent>`, `user:<its owner>`, `run:<itself>`) unless a policy forbids, any
//! other only where a policy permits `memory.read` / `memory.write` on the scope; every
//! decision audited, a write audited in its own commit. A memory a step writes takes an id
//! made from the run and the step, so a retried step finds it instead of writing it twice.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use steward_gov::Decision;
use steward_memory::{MemoryError, Method, NewEntity, NewMemory, NewRelation, Query};
use steward_store::RunRecord;
use steward_tools::ToolError;
use steward_types::RunId;

use crate::authority::{decision_record, ActsFor};
use crate::host::Host;

fn failed(e: impl std::fmt::Display) -> ToolError {
    ToolError::Failed(e.to_string())
}

fn refused(e: MemoryError) -> ToolError {
    match e {
        MemoryError::BadRequest(m) => ToolError::InvalidArgs(m),
        MemoryError::NotFound(m) => ToolError::NotFound(m),
        MemoryError::Conflict(m) => ToolError::Conflict(m),
        MemoryError::Embedder(m) => ToolError::Failed(m),
        MemoryError::Store(e) => failed(e),
    }
}

/// The id of the memory step `seq` of `run` writes.
fn step_id(run: &RunId, seq: i64) -> String {
    let h = Sha256::digest(format!("{run}:{seq}").as_bytes());
    format!("mem_{}", &hex::encode(h)[..32])
}

fn opt_str(args: &Value, key: &str) -> Result<Option<String>, ToolError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ToolError::InvalidArgs(format!("`{key}` must be a string"))),
    }
}

/// Decides `action` on `scope` for `rec`, auditing a refusal; the decision when allowed.
async fn decided(
    host: &Host,
    rec: &RunRecord,
    acts: &ActsFor,
    action: &str,
    scope: &str,
) -> Result<Decision, ToolError> {
    let s = &host.0;
    steward_memory::Scope::parse(scope).map_err(refused)?;
    let own = scope == format!("agent:{}", rec.agent)
        || scope == format!("run:{}", rec.id)
        || acts
            .owner
            .as_ref()
            .is_some_and(|o| scope == format!("user:{o}"));
    let now = s.clock.now_ms();
    let u = s
        .authority
        .unattended_own(rec, acts, (action, scope), own, now)
        .await
        .map_err(failed)?;
    let Some(why) = u.refused else {
        return Ok(u.decision);
    };
    let record = steward_gov::AuditRecord {
        error: Some(why.clone()),
        ..decision_record(rec, &acts.chain, None, (action, scope), now)
            .decided("deny", Some(&u.decision))
    }
    .to_json();
    s.store
        .append_audit(&[(now, record)])
        .await
        .map_err(failed)?;
    Err(ToolError::Denied(format!(
        "{action} on memory scope {scope}: {why} (permit Steward::Action::\"{action}\" on Steward::Namespace::\"{scope}\")"
    )))
}

fn allowed_record(
    rec: &RunRecord,
    acts: &ActsFor,
    (action, scope): (&str, &str),
    d: &Decision,
    outcome: String,
    now: i64,
) -> (i64, String) {
    let record = steward_gov::AuditRecord {
        event: steward_gov::AuditEvent::Syscall,
        outcome: Some(outcome),
        ..decision_record(rec, &acts.chain, None, (action, scope), now).decided("allow", Some(d))
    };
    (now, record.to_json())
}

/// The memory `memory_add`'s arguments describe (its scope, id and source are the caller's).
pub(crate) fn memory_of(args: &Value) -> Result<NewMemory, ToolError> {
    let tags = match args.get("tags") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| t.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ToolError::InvalidArgs("`tags` must be strings".into()))?,
        Some(_) => return Err(ToolError::InvalidArgs("`tags` must be an array".into())),
    };
    let entities = match args.get("entities") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| {
                t.as_str().map(|n| NewEntity {
                    name: n.to_string(),
                    ..NewEntity::default()
                })
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ToolError::InvalidArgs("`entities` must be names (strings)".into()))?,
        Some(_) => return Err(ToolError::InvalidArgs("`entities` must be an array".into())),
    };
    let relations = match args.get("relations") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) => a
            .iter()
            .map(|r| {
                let part = |k: &str| r.get(k).and_then(Value::as_str).map(str::to_string);
                Some(NewRelation {
                    subject: part("subject")?,
                    relation: part("relation")?,
                    object: part("object")?,
                })
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                ToolError::InvalidArgs(
                    "`relations` must be objects with `subject`, `relation` and `object` strings"
                        .into(),
                )
            })?,
        Some(_) => {
            return Err(ToolError::InvalidArgs(
                "`relations` must be an array".into(),
            ))
        }
    };
    Ok(NewMemory {
        entities,
        relations,
        text: opt_str(args, "text")?
            .ok_or_else(|| ToolError::InvalidArgs("`text` is required".into()))?,
        subject: opt_str(args, "subject")?,
        tags,
        metadata: args.get("metadata").filter(|m| !m.is_null()).cloned(),
        supersedes: opt_str(args, "supersedes")?,
        ..NewMemory::default()
    })
}

/// The scopes `memory_search` names, or `own` when it names none.
pub(crate) fn scopes_of(args: &Value, own: Vec<String>) -> Result<Vec<String>, ToolError> {
    match args.get("scopes") {
        None | Some(Value::Null) => Ok(own),
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| t.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ToolError::InvalidArgs("`scopes` must be strings".into())),
        Some(_) => Err(ToolError::InvalidArgs("`scopes` must be an array".into())),
    }
}

/// The search `memory_search`'s arguments describe, over `scopes`.
pub(crate) fn query_of(args: &Value, scopes: Vec<String>) -> Result<Query, ToolError> {
    Ok(Query {
        text: opt_str(args, "query")?.unwrap_or_default(),
        scopes,
        limit: args.get("limit").and_then(Value::as_u64).unwrap_or(5) as usize,
        max_tokens: args
            .get("max_tokens")
            .and_then(Value::as_u64)
            .map(|t| t as usize),
        method: Method::Hybrid,
        ..Query::default()
    })
}

/// What `memory_search` answers.
pub(crate) fn found_json(found: &steward_memory::Found) -> Value {
    json!({
        "results": found.hits.iter().map(|h| json!({
            "id": h.record.id,
            "text": h.record.text,
            "scope": h.record.scope,
            "valid_from": h.record.valid_from,
            "score": h.score,
            "metadata": serde_json::from_str::<Value>(&h.record.metadata).unwrap_or(Value::Null),
        })).collect::<Vec<_>>(),
        "tokens": found.tokens,
    })
}

/// What `memory_add` answers.
pub(crate) fn added_json(m: &steward_store::MemoryRecord) -> Value {
    json!({"id": m.id, "fact": m.lineage, "scope": m.scope, "superseded": m.lineage != m.id})
}

pub(crate) async fn add(
    host: &Host,
    run: &RunId,
    seq: i64,
    args: Value,
) -> Result<Value, ToolError> {
    let s = &host.0;
    let id = step_id(run, seq);
    let answer = added_json;
    if let Some(m) = s.memory.written(&id).await.map_err(refused)? {
        return Ok(answer(&m));
    }
    let rec = host.run_record(run).await?;
    let acts = s.authority.acts_for(&rec).await.map_err(failed)?;
    let scope = opt_str(&args, "scope")?.unwrap_or_else(|| format!("agent:{}", rec.agent));
    let decision = decided(host, &rec, &acts, "memory.write", &scope).await?;
    let new = NewMemory {
        id: Some(id),
        scope: scope.clone(),
        source: Some(json!({"run": run.as_str(), "step": seq})),
        ..memory_of(&args)?
    };
    let p = s
        .memory
        .prepare(&format!("agent:{}", rec.agent), new)
        .await
        .map_err(refused)?;
    let audit = allowed_record(
        &rec,
        &acts,
        ("memory.write", &scope),
        &decision,
        format!("added {}", p.record.id),
        p.record.created_at,
    );
    let m = s
        .memory
        .commit(p, Some(audit))
        .await
        .map_err(refused)?
        .record;
    Ok(answer(&m))
}

pub(crate) async fn search(host: &Host, run: &RunId, args: Value) -> Result<Value, ToolError> {
    let s = &host.0;
    let rec = host.run_record(run).await?;
    let acts = s.authority.acts_for(&rec).await.map_err(failed)?;
    let own = std::iter::once(format!("agent:{}", rec.agent))
        .chain(acts.owner.as_ref().map(|o| format!("user:{o}")))
        .collect();
    let scopes = scopes_of(&args, own)?;
    let mut decisions = Vec::new();
    for scope in &scopes {
        decisions.push(decided(host, &rec, &acts, "memory.read", scope).await?);
    }
    let found = s
        .memory
        .search(&query_of(&args, scopes.clone())?)
        .await
        .map_err(refused)?;
    let now = s.clock.now_ms();
    let records: Vec<(i64, String)> = scopes
        .iter()
        .zip(&decisions)
        .map(|(scope, d)| {
            let n = found
                .hits
                .iter()
                .filter(|h| h.record.scope == *scope)
                .count();
            allowed_record(
                &rec,
                &acts,
                ("memory.read", scope),
                d,
                format!("searched, {n} returned"),
                now,
            )
        })
        .collect();
    s.store.append_audit(&records).await.map_err(failed)?;
    Ok(found_json(&found))
}
