//! Curation: a model reads messages and decides what memory should learn from them — add a
//! fact, update or invalidate a stored one, or nothing — against the stored memories most like
//! them. Asynchronous and durable: a request is a row any node works through; the model's
//! reply is kept before anything is applied (a node that dies after paying for it never asks
//! again), and each decision is applied under an id made from the request's, so applying again
//! writes nothing twice. The model is called through the gateway as the agent
//! `memory-curator` — decided by policy, audited, held on the budget account
//! `agent:memory-curator` — and what it cost is reported per memory written.
//!
//! Least authority: the requester was allowed `memory.write` on the request's scope, and is
//! asked again when the decisions are about to be applied (a requester suspended, a delegation
//! revoked or expired, a policy changed since the request stops it, and nothing is written);
//! the model's decisions are applied to that scope only, whatever the messages or the model say.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use steward_memory::{Method, NewEntity, NewMemory, NewRelation, Query};
use steward_store::CurationRecord;
use steward_types::AgentName;
use tokio_util::sync::CancellationToken;

use crate::{GatewayError, GatewayReply, Inner, Principal};

/// The agent curation's model calls are made as.
pub const CURATOR_AGENT: &str = "memory-curator";
/// The prompt in use, by the name of its file (`prompts/`): kept with every request.
pub const PROMPT_VERSION: &str = "memory-curate.v2";
const PROMPT: &str = include_str!("../prompts/memory-curate.v2.md");
/// How long a node holds a request it works on before another may take it over (a node that
/// died); renewed while the node works on it.
const LEASE_MS: i64 = 10_000;
const RENEW_EVERY: Duration = Duration::from_secs(3);
/// Tries of a request whose model call fails before it is failed.
pub const MAX_ATTEMPTS: i64 = 3;
/// The pause before a failed try is taken up again, doubled after each further one.
const RETRY_AFTER_MS: i64 = 2_000;
/// Stored memories shown to the model beside the messages.
const RELATED: usize = 8;
/// The most facts one request may apply.
const MAX_FACTS: usize = 32;

fn curator() -> Principal {
    Principal {
        agent: AgentName::parse(CURATOR_AGENT).unwrap_or_else(|_| unreachable!()),
        key_id: CURATOR_AGENT.into(),
        run: None,
        chain: vec![format!("agent:{CURATOR_AGENT}")],
        on_behalf_of: None,
        owner: None,
        delegated: None,
    }
}

/// Works through curation requests until the node drains.
pub(crate) async fn work(engine: Arc<Inner>, model: String, draining: CancellationToken) {
    loop {
        let now = engine.shared.clock.now_ms();
        let claimed = engine
            .shared
            .store
            .claim_curation(now, now + LEASE_MS)
            .await;
        match claimed {
            Ok(Some(c)) => {
                let id = c.id.clone();
                let work = curate(&engine, &model, c);
                tokio::pin!(work);
                let mut renew = tokio::time::interval(RENEW_EVERY);
                renew.tick().await;
                let done = loop {
                    tokio::select! {
                        r = &mut work => break r,
                        _ = renew.tick() => {
                            let until = engine.shared.clock.now_ms() + LEASE_MS;
                            if let Err(e) = engine.shared.store.renew_curation(&id, until).await {
                                tracing::warn!(curation = %id, error = %e, "could not renew a curation's lease");
                            }
                        }
                    }
                };
                if let Err(e) = done {
                    tracing::warn!(curation = %id, error = %e, "curation could not be recorded; it is taken up again when its lease ends");
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "looking for curation requests failed"),
        }
        tokio::select! {
            _ = draining.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// One request, from wherever it got to.
async fn curate(engine: &Inner, model: &str, c: CurationRecord) -> steward_store::Result<()> {
    let store = &engine.shared.store;
    let now = || engine.shared.clock.now_ms();
    let reply = match &c.reply {
        Some(r) => r.clone(),
        None => match ask(engine, model, &c).await {
            Ok((reply, cost)) => {
                store
                    .keep_curation_reply(&c.id, &reply, cost, now())
                    .await?;
                reply
            }
            Err(e) => {
                let spent = matches!(e, GatewayError::BudgetExceeded { .. });
                if spent || c.attempts >= MAX_ATTEMPTS {
                    let error = format!("{model}: {e}");
                    return store
                        .end_curation(&c.id, "failed", None, Some(&error), now())
                        .await;
                }
                // Tried again after a pause that doubles with each try, not at once.
                let error = format!("{model} (try {}): {e}", c.attempts);
                let pause = RETRY_AFTER_MS << (c.attempts - 1).clamp(0, 10);
                return store
                    .requeue_curation(&c.id, &error, now() + pause, now())
                    .await;
            }
        },
    };
    let cost_nanos = store
        .curation(&c.id)
        .await?
        .map_or(c.cost_nanos, |r| r.cost_nanos);
    let applied = match refusal(engine, &c).await? {
        None => apply(engine, &c, &reply).await,
        Some(why) => Err(format!(
            "not applied, the requester's authority changed: {why}"
        )),
    };
    match applied {
        Ok((written, skipped)) => {
            let cost_usd = cost_nanos as f64 / 1e9;
            let result = json!({
                "written": written,
                "skipped": skipped,
                "cost_usd": cost_usd,
                "cost_usd_per_memory": if written.is_empty() { Value::Null } else { json!(cost_usd / written.len() as f64) },
            });
            store
                .end_curation(&c.id, "done", Some(&result.to_string()), None, now())
                .await
        }
        Err(why) => {
            store
                .end_curation(&c.id, "failed", None, Some(&why), now())
                .await
        }
    }
}

/// Asks the model: the prompt, the messages, and the stored memories most like them. The
/// reply's text and what it cost, in nano-dollars.
async fn ask(
    engine: &Inner,
    model: &str,
    c: &CurationRecord,
) -> Result<(String, i64), GatewayError> {
    let input: Value = serde_json::from_str(&c.input).unwrap_or(Value::Null);
    let transcript: String = input["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            format!(
                "{}: {}",
                m["role"].as_str().unwrap_or("user"),
                m["content"].as_str().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    // The stored memories most like the messages, then the newest, so a fact the messages
    // change is shown even when they share no words with it.
    let memory = &engine.shared.memory;
    let mut related: Vec<String> = Vec::new();
    let mut shown = std::collections::HashSet::new();
    for text in [
        transcript.chars().take(4000).collect::<String>(),
        String::new(),
    ] {
        let found = memory
            .search(&Query {
                text,
                scopes: vec![c.scope.clone()],
                limit: RELATED,
                method: Method::Hybrid,
                ..Query::default()
            })
            .await
            .map(|f| f.hits)
            .unwrap_or_default();
        for h in found {
            if related.len() < RELATED && shown.insert(h.record.id.clone()) {
                related.push(format!("- {}: {}", h.record.id, h.record.text));
            }
        }
    }
    let stored = if related.is_empty() {
        "(none)".to_string()
    } else {
        related.join("\n")
    };
    let known = known_entities(memory, shown.into_iter().collect()).await;
    let body = json!({
        "model": model,
        "temperature": 0,
        "max_tokens": 2048,
        "messages": [
            {"role": "system", "content": PROMPT},
            {"role": "user", "content": format!("Stored memories:\n{stored}\n\nKnown entities:\n{known}\n\nConversation:\n{transcript}")}
        ]
    });
    let reply = engine
        .gateway
        .chat(&curator(), body, crate::GatewayApi::ChatCompletions)
        .await?;
    let GatewayReply::Json(v) = reply else {
        return Err(GatewayError::Internal(
            "the model's answer was not JSON".into(),
        ));
    };
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let usage = |k: &str| v["usage"][k].as_i64().unwrap_or(0);
    let cost = engine
        .prices
        .cost(
            v["model"].as_str().unwrap_or(model),
            usage("prompt_tokens"),
            usage("completion_tokens"),
        )
        .map_or(0, |usd| (usd * 1e9).round() as i64);
    Ok((text, cost))
}

/// The id of decision `i` of curation `id`: the same every time it is applied.
fn fact_id(id: &str, i: usize) -> String {
    let h = Sha256::digest(format!("{id}:{i}").as_bytes());
    format!("mem_{}", &hex::encode(h)[..32])
}

/// The entities the shown memories name, one line each with the other names each is known by,
/// for the model to name them the same way.
async fn known_entities(memory: &steward_memory::Memory, shown: Vec<String>) -> String {
    let Ok((mentions, _)) = memory.graph_of(&shown).await else {
        return "(none)".into();
    };
    let mut entities: Vec<(String, String)> =
        mentions.into_iter().map(|(_, e)| (e.id, e.name)).collect();
    entities.sort();
    entities.dedup();
    let ids: Vec<String> = entities.iter().map(|e| e.0.clone()).collect();
    let names = memory.entity_names(&ids).await.unwrap_or_default();
    let lines: Vec<String> = entities
        .iter()
        .map(|(id, name)| {
            let others: Vec<&str> = names
                .iter()
                .filter(|(e, n)| e == id && n != name)
                .map(|(_, n)| n.as_str())
                .collect();
            if others.is_empty() {
                format!("- {name}")
            } else {
                format!("- {name} (also: {})", others.join(", "))
            }
        })
        .collect();
    if lines.is_empty() {
        "(none)".into()
    } else {
        lines.join("\n")
    }
}

/// The entities a fact names, as the model gave them: a name, or `{"name", "aliases"}`.
fn entities_of(v: &Value) -> Vec<NewEntity> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| match e {
            Value::String(name) => Some(NewEntity {
                name: name.clone(),
                ..NewEntity::default()
            }),
            Value::Object(_) => Some(NewEntity {
                name: e["name"].as_str()?.to_string(),
                aliases: strings(&e["aliases"]),
                ..NewEntity::default()
            }),
            _ => None,
        })
        .collect()
}

/// Each name a fact gives (its entities', its relations' ends) that no entity of the scope is
/// known by, but that means one of them by its embedding ([`steward_memory::Memory::entity_meant`]),
/// mapped to that entity's name: the fact then names the known entity, with the new name as
/// one more of its aliases, instead of making a duplicate.
async fn names_meant(
    memory: &steward_memory::Memory,
    scope: &str,
    entities: &[NewEntity],
    relations: &[NewRelation],
) -> std::collections::HashMap<String, String> {
    let mut given: Vec<&str> = entities.iter().map(|e| e.name.as_str()).collect();
    for r in relations {
        given.push(&r.subject);
        given.push(&r.object);
    }
    given.sort_unstable();
    given.dedup();
    let mut meant = std::collections::HashMap::new();
    for name in given {
        match memory.entity_meant(scope, name).await {
            Ok(Some(m)) if m.similarity.is_some() && m.entity.name != name => {
                meant.insert(name.to_string(), m.entity.name);
            }
            Ok(_) => {}
            // Resolving by meaning is a help, not a condition: the name stands as given.
            Err(e) => {
                tracing::warn!(error = %e, name, "resolving an entity by its embedding failed")
            }
        }
    }
    meant
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// Why the requester may no longer write the request's scope, if it may not, decided again as
/// when the request was made: every link of the delegated chain it came through unrevoked and
/// unexpired, and every agent of that chain not suspended and allowed `memory.write` there by
/// policy (a refusal is audited). The administrator's requests stand. A failure to read what
/// decides is an error (the request is taken up again), never a yes.
async fn refusal(engine: &Inner, c: &CurationRecord) -> steward_store::Result<Option<String>> {
    let Some(requester) = c.requested_by.strip_prefix("agent:") else {
        return Ok(None);
    };
    let input: Value = serde_json::from_str(&c.input).unwrap_or(Value::Null);
    let chain = strings(&input["authority"]["chain"]);
    let now = engine.shared.clock.now_ms();
    let mut agents: Vec<String> = Vec::new();
    for id in strings(&input["authority"]["delegations"]) {
        let Some(link) = engine.shared.store.get_delegation(&id).await? else {
            return Ok(Some(format!(
                "delegation {id}, which the request came through, is gone"
            )));
        };
        if link.revoked_at.is_some() {
            return Ok(Some(format!(
                "delegation {id}, which the request came through, was revoked since: {}",
                link.revoke_reason.unwrap_or_default()
            )));
        }
        if link.expires_at <= now {
            return Ok(Some(format!(
                "delegation {id}, which the request came through, has expired"
            )));
        }
        if agents.is_empty() {
            agents.push(link.issuer);
        }
        agents.push(link.holder);
    }
    agents.push(requester.to_string());
    let mut seen = std::collections::HashSet::new();
    agents.retain(|a| seen.insert(a.clone()));
    let identities = &engine.gateway.authority.identities;
    let requester_owner = identities.owner(requester).await?;
    for agent in agents {
        if let Some(why) = identities.barred(&agent).await? {
            return Ok(Some(why));
        }
        let Ok(name) = AgentName::parse(&agent) else {
            return Ok(Some(format!("{agent:?} is not an agent's name")));
        };
        let owner = identities.owner(&agent).await?;
        // The requester's own scope needs no policy, as when the request was made.
        let own = agent == requester
            && (c.scope == format!("agent:{agent}")
                || owner
                    .as_ref()
                    .is_some_and(|o| c.scope == format!("user:{o}")));
        let chain = if chain.is_empty() {
            owner
                .iter()
                .map(|o| format!("user:{o}"))
                .chain([format!("agent:{agent}")])
                .collect()
        } else {
            chain.clone()
        };
        let who = Principal {
            agent: name,
            key_id: c.id.clone(),
            run: None,
            chain,
            on_behalf_of: requester_owner.clone(),
            owner,
            delegated: None,
        };
        let decided = engine
            .gateway
            .authorize_on(
                &who,
                "memory.write",
                ("namespace", "Namespace"),
                &c.scope,
                own,
            )
            .await;
        match decided {
            Ok(_) => {}
            Err(GatewayError::Forbidden(why)) => return Ok(Some(why)),
            Err(e) => return Err(steward_store::Error::Config(e.to_string())),
        }
    }
    Ok(None)
}

/// Applies the model's decisions to the request's scope: the ids written (or written before,
/// by an earlier try), and the decisions skipped with why. An answer that is not the JSON asked
/// for fails the request.
async fn apply(
    engine: &Inner,
    c: &CurationRecord,
    reply: &str,
) -> Result<(Vec<String>, Vec<Value>), String> {
    let text = reply
        .trim()
        .trim_start_matches("```json")
        .trim_start_matches("```")
        .trim_end_matches("```")
        .trim();
    let answer: Value = serde_json::from_str(text).map_err(|e| {
        format!(
            "the model's answer is not the JSON asked for ({e}): {:?}",
            reply.chars().take(200).collect::<String>()
        )
    })?;
    let facts = answer["facts"]
        .as_array()
        .ok_or("the model's answer has no `facts` list")?;
    let memory = &engine.shared.memory;
    let by = format!("agent:{CURATOR_AGENT}");
    let (mut written, mut skipped) = (Vec::new(), Vec::new());
    for (i, f) in facts.iter().take(MAX_FACTS).enumerate() {
        let id = fact_id(&c.id, i);
        if memory
            .written(&id)
            .await
            .map_err(|e| e.to_string())?
            .is_some()
        {
            written.push(id);
            continue;
        }
        let action = f["action"].as_str().unwrap_or("");
        let target = f["target"].as_str().map(str::to_string);
        // A target must be a current memory of this scope.
        let current = match &target {
            Some(t) => memory
                .written(t)
                .await
                .map_err(|e| e.to_string())?
                .filter(|m| m.scope == c.scope && m.expired_at.is_none()),
            None => None,
        };
        let mut entities = entities_of(&f["entities"]);
        let mut relations: Vec<NewRelation> = f["relations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                Some(NewRelation {
                    subject: r["subject"].as_str()?.to_string(),
                    relation: r["relation"].as_str()?.to_string(),
                    object: r["object"].as_str()?.to_string(),
                })
            })
            .collect();
        let meant = names_meant(memory, &c.scope, &entities, &relations).await;
        for e in &mut entities {
            if let Some(known) = meant.get(&e.name) {
                e.aliases
                    .push(std::mem::replace(&mut e.name, known.clone()));
            }
        }
        for r in &mut relations {
            for end in [&mut r.subject, &mut r.object] {
                if let Some(known) = meant.get(end.as_str()) {
                    if !entities.iter().any(|e| &e.name == known) {
                        entities.push(NewEntity {
                            name: known.clone(),
                            aliases: vec![end.clone()],
                            ..NewEntity::default()
                        });
                    }
                    *end = known.clone();
                }
            }
        }
        let new = |text: String| NewMemory {
            id: Some(id.clone()),
            scope: c.scope.clone(),
            text,
            subject: f["subject"].as_str().map(str::to_string),
            source: Some(json!({"curation": c.id, "requested_by": c.requested_by})),
            entities: entities.clone(),
            relations: relations.clone(),
            ..NewMemory::default()
        };
        let text = f["text"].as_str().map(str::to_string);
        let decided = match (action, text, &current) {
            ("add", Some(t), _) => Ok(new(t)),
            ("update", Some(t), Some(old)) => Ok(NewMemory {
                supersedes: Some(old.id.clone()),
                ..new(t)
            }),
            // Invalidated: the same fact again, true until now, closing the stored one.
            ("invalidate", _, Some(old)) => Ok(NewMemory {
                supersedes: Some(old.id.clone()),
                valid_from: Some(old.valid_from),
                valid_to: Some(engine.shared.clock.now_ms().max(old.valid_from + 1)),
                entities: Vec::new(),
                relations: Vec::new(),
                ..new(old.text.clone())
            }),
            ("none", _, _) => Err("nothing to do".to_string()),
            ("update" | "invalidate", _, None) => Err(format!(
                "target {:?} is not a current memory of {}",
                target.as_deref().unwrap_or(""),
                c.scope
            )),
            ("add" | "update", None, _) => Err("no text".into()),
            (other, _, _) => Err(format!("unknown action {other:?}")),
        };
        let new = match decided {
            Ok(n) => n,
            Err(why) => {
                skipped.push(json!({"index": i, "action": action, "why": why}));
                continue;
            }
        };
        let p = match memory.prepare(&by, new).await {
            Ok(p) => p,
            Err(e) => {
                skipped.push(json!({"index": i, "action": action, "why": e.to_string()}));
                continue;
            }
        };
        let now = engine.shared.clock.now_ms();
        let audit = steward_gov::AuditRecord {
            outcome: Some(format!("{action} {} (curation {})", p.record.id, c.id)),
            ..steward_gov::AuditRecord::new(
                steward_gov::AuditEvent::Syscall,
                now,
                by.clone(),
                vec![c.requested_by.clone(), by.clone()],
                "memory.write",
                &c.scope,
            )
            .decided("allow", None)
        }
        .to_json();
        match memory.commit(p, Some((now, audit))).await {
            Ok(done) => written.push(done.record.id),
            Err(e) => skipped.push(json!({"index": i, "action": action, "why": e.to_string()})),
        }
    }
    Ok((written, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_keeps_its_id_across_tries() {
        assert_eq!(fact_id("cur_1", 0), fact_id("cur_1", 0));
        assert_ne!(fact_id("cur_1", 0), fact_id("cur_1", 1));
        assert_ne!(fact_id("cur_1", 0), fact_id("cur_2", 0));
        assert!(
            PROMPT.contains("\"facts\""),
            "the prompt asks for the JSON apply reads"
        );
    }
}
