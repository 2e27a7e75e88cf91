//! Agent memory over HTTP: add, search, get, history, erase. Open to the admin token and to
//! agents' own credentials; the engine decides each access per scope.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use steward_engine::handles::memories::Accessor;
use steward_engine::Engine;
use steward_memory::{Method, NewEntity, NewMemory, NewRelation, Query};
use steward_store::MemoryErase;
use steward_types::ErrorCode;

use crate::caller::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::ApiJson;
use crate::wire::*;

fn accessor(c: &Caller) -> Accessor<'_> {
    match c {
        Caller::Admin => Accessor::Admin,
        Caller::Agent(p) => Accessor::Agent(p),
    }
}

/// Writes a memory: 201, searchable as soon as this answers.
#[utoipa::path(post, path = "/api/v1/memories", request_body = AddMemory,
    responses((status = 201, body = AddedMemory), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "No policy lets this agent write that scope"),
        (status = 404, body = ErrorBody, description = "`supersedes` names no memory of that scope"),
        (status = 409, body = ErrorBody, description = "`supersedes` names a version already superseded")))]
pub async fn add(
    State(e): State<Engine>,
    Extension(caller): Extension<Caller>,
    ApiJson(m): ApiJson<AddMemory>,
) -> ApiResult<(StatusCode, Json<AddedMemory>)> {
    let added = e
        .memories()
        .add(
            accessor(&caller),
            NewMemory {
                id: None,
                scope: m.scope,
                text: m.text,
                subject: m.subject,
                tags: m.tags,
                metadata: m.metadata,
                source: m.source,
                valid_from: m.valid_from,
                valid_to: m.valid_to,
                ttl_ms: m.ttl_ms,
                supersedes: m.supersedes,
                entities: m
                    .entities
                    .into_iter()
                    .map(|e| NewEntity {
                        name: e.name,
                        kind: e.kind,
                        aliases: e.aliases,
                    })
                    .collect(),
                relations: m
                    .relations
                    .into_iter()
                    .map(|r| NewRelation {
                        subject: r.subject,
                        relation: r.relation,
                        object: r.object,
                    })
                    .collect(),
            },
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(AddedMemory {
            memory: added.record.into(),
            superseded: added.superseded.map(Into::into),
            entities: added.entities.into_iter().map(Into::into).collect(),
        }),
    ))
}

/// Searches scopes the caller may read: full text, recency, or both; filtered by time,
/// tags, metadata and subject; cut to a token budget.
#[utoipa::path(post, path = "/api/v1/memories/search", request_body = SearchMemories,
    responses((status = 200, body = MemorySearchResult), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "No policy lets this agent read one of the scopes")))]
pub async fn search(
    State(e): State<Engine>,
    Extension(caller): Extension<Caller>,
    ApiJson(s): ApiJson<SearchMemories>,
) -> ApiResult<Json<MemorySearchResult>> {
    let method = match s.method.as_deref() {
        None => Method::Hybrid,
        Some(m) => Method::parse(m).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                format!("method: {m:?} is none of hybrid, bm25, vector, graph, recency"),
            )
        })?,
    };
    let found = e
        .memories()
        .search(
            accessor(&caller),
            Query {
                text: s.query,
                scopes: s.scopes,
                valid_at: s.valid_at,
                known_at: s.known_at,
                include_history: s.include_history,
                tags: s.tags,
                metadata: s.metadata.unwrap_or_default(),
                subject: s.subject,
                limit: s.limit.unwrap_or(10),
                max_tokens: s.max_tokens,
                method,
                ..Query::default()
            },
        )
        .await?;
    Ok(Json(MemorySearchResult {
        results: found
            .hits
            .into_iter()
            .map(|h| MemoryHit {
                memory: (*h.record).clone().into(),
                score: h.score,
                scores: MemoryScores {
                    bm25: h.bm25,
                    bm25_rank: h.bm25_rank,
                    vector: h.vector,
                    vector_rank: h.vector_rank,
                    recency_rank: h.recency_rank,
                    graph: h.graph,
                    graph_path: h.graph_path,
                    decay: h.decay,
                },
                tokens: h.tokens,
            })
            .collect(),
        tokens: found.tokens,
        truncated: found.truncated,
    }))
}

/// One version of a memory.
#[utoipa::path(get, path = "/api/v1/memories/{id}", params(("id" = String, Path)),
    responses((status = 200, body = Memory), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(e): State<Engine>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Memory>> {
    Ok(Json(e.memories().get(accessor(&caller), &id).await?.into()))
}

/// Every version of the fact a memory belongs to, oldest first.
#[utoipa::path(get, path = "/api/v1/memories/{id}/history", params(("id" = String, Path)),
    responses((status = 200, body = MemoryHistory), (status = 404, body = ErrorBody)))]
pub async fn history(
    State(e): State<Engine>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<MemoryHistory>> {
    let versions = e.memories().history(accessor(&caller), &id).await?;
    Ok(Json(MemoryHistory {
        versions: versions.into_iter().map(Into::into).collect(),
    }))
}

/// Erases facts — every version — by id, subject, entity or whole scope, and reports what went:
/// versions, their embeddings, the edges they stated, and entities nothing names any more.
#[utoipa::path(post, path = "/api/v1/memories/erase", request_body = EraseMemories,
    responses((status = 200, body = ErasureReport), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "No policy lets this agent write that scope")))]
pub async fn erase(
    State(e): State<Engine>,
    Extension(caller): Extension<Caller>,
    ApiJson(r): ApiJson<EraseMemories>,
) -> ApiResult<Json<ErasureReport>> {
    let what = match (r.ids, r.subject, r.entity, r.all) {
        (Some(ids), None, None, false) => MemoryErase::Ids {
            scope: r.scope,
            ids,
        },
        (None, Some(subject), None, false) => MemoryErase::Subject {
            scope: r.scope,
            subject,
        },
        (None, None, Some(entity), false) if !entity.trim().is_empty() && entity.len() <= 200 => {
            MemoryErase::Entity {
                scope: r.scope,
                entity,
            }
        }
        (None, None, Some(_), false) => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "entity: an entity's id or one of its names, 1 to 200 bytes",
            ))
        }
        (None, None, None, true) => MemoryErase::Scope(r.scope),
        _ => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "give exactly one of ids, subject, entity, or all: true",
            ))
        }
    };
    let report = e.memories().erase(accessor(&caller), what).await?;
    Ok(Json(ErasureReport {
        facts: report.facts,
        rows: report.rows,
        index_postings: report.index_postings,
        vectors: report.vectors,
        entities: report.entities,
        relations: report.relations,
        mentions: report.mentions,
        files_scrubbed: report.files_scrubbed,
        places: [
            "store rows and history",
            "full-text index",
            "embeddings",
            "graph: edges, mentions, orphaned entities and their names",
        ]
        .into_iter()
        .chain(report.files_scrubbed.then_some("the database's files"))
        .map(String::from)
        .collect(),
        erased: report
            .erased
            .into_iter()
            .map(|v| ErasedVersion {
                id: v.id,
                fact: v.lineage,
                scope: v.scope,
            })
            .collect(),
    }))
}

/// Queues messages for a model to learn from into a scope the caller may write: 202 with the
/// request; `GET /api/v1/memories/curations/{id}` follows it to `done` (what was written,
/// skipped, and what it cost per memory) or `failed`.
#[utoipa::path(post, path = "/api/v1/memories/curate", request_body = CurateMemories,
    responses((status = 202, body = Curation), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "No policy lets this agent write that scope"),
        (status = 503, body = ErrorBody, description = "No curation model is configured")))]
pub async fn curate(
    State(e): State<Engine>,
    Extension(caller): Extension<Caller>,
    ApiJson(r): ApiJson<CurateMemories>,
) -> ApiResult<(StatusCode, Json<Curation>)> {
    let c = e
        .memories()
        .curate(
            accessor(&caller),
            &r.scope,
            r.messages
                .into_iter()
                .map(|m| (m.role, m.content))
                .collect(),
            r.source,
        )
        .await?;
    Ok((StatusCode::ACCEPTED, Json(c.into())))
}

/// A curation request and how far it got.
#[utoipa::path(get, path = "/api/v1/memories/curations/{id}", params(("id" = String, Path)),
    responses((status = 200, body = Curation), (status = 404, body = ErrorBody)))]
pub async fn curation(
    State(e): State<Engine>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Curation>> {
    Ok(Json(
        e.memories().curation(accessor(&caller), &id).await?.into(),
    ))
}

/// Exports scopes the caller may read as JSON lines: a header naming the format, then every
/// version (history included), by scope, then by when it was recorded. See docs/memory.md.
#[utoipa::path(post, path = "/api/v1/memories/export", request_body = ExportMemories,
    responses((status = 200, description = "JSON lines", content_type = "application/x-ndjson"),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "No policy lets this agent read one of the scopes")))]
pub async fn export(
    State(e): State<Engine>,
    Extension(caller): Extension<Caller>,
    ApiJson(x): ApiJson<ExportMemories>,
) -> ApiResult<impl axum::response::IntoResponse> {
    let text = e.memories().export(accessor(&caller), &x.scopes).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        text,
    ))
}

/// Imports an export (JSON lines, up to 64 MiB), all or nothing: every line is checked and
/// every scope decided before anything is written; a version stored already must be
/// identical. Ids, facts and times are kept.
#[utoipa::path(post, path = "/api/v1/memories/import",
    request_body(content = String, content_type = "application/x-ndjson"),
    responses((status = 200, body = ImportedMemories), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "No policy lets this agent write one of the scopes"),
        (status = 409, body = ErrorBody, description = "A version is stored already with other content"),
        (status = 413, body = ErrorBody)))]
pub async fn import(
    State(e): State<Engine>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> ApiResult<Json<ImportedMemories>> {
    let text = std::str::from_utf8(&body).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the export is not UTF-8 text: {e}"),
        )
    })?;
    let (written, unchanged) = e.memories().import(accessor(&caller), text).await?;
    Ok(Json(ImportedMemories { written, unchanged }))
}
