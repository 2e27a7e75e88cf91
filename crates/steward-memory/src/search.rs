//! Retrieval: which versions a query may see (scope, time, tags, metadata, subject), ranked by
//! full text, with recency breaking near-ties, cut to a token budget.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};
use steward_store::MemoryRecord;
use steward_types::Millis;

use crate::index::{Doc, Index};
use crate::text::estimate_tokens;

/// How much recency adds to a full-text score scaled to the best candidate's (1.0): the
/// newest candidate gains this much, the oldest nothing. It decides between near-equal
/// matches — a fact and its later correction — and never lifts a weak match over a strong
/// one. (Fusing the two by reciprocal rank was measured and let recency outvote the text:
/// evidence recall at 5 fell from 0.55 to 0.24 on `bench/run memory`'s data.)
const RECENCY_WEIGHT: f64 = 0.1;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Method {
    /// Full text and embeddings interleaved, each one's best matches first; without
    /// embeddings, full text with recency breaking near-ties.
    #[default]
    Hybrid,
    /// Embeddings alone (cosine similarity).
    Vector,
    /// BM25 alone.
    FullText,
    /// Newest first, text ignored.
    Recency,
    /// The graph alone: versions naming the entities the query names, and those stating edges
    /// one or two hops from them.
    Graph,
}

impl Method {
    pub fn parse(s: &str) -> Option<Method> {
        match s {
            "hybrid" => Some(Method::Hybrid),
            "vector" => Some(Method::Vector),
            "bm25" | "full_text" => Some(Method::FullText),
            "recency" => Some(Method::Recency),
            "graph" => Some(Method::Graph),
            _ => None,
        }
    }
}

/// What a search asks. Scopes are already authorized.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub text: String,
    pub scopes: Vec<String>,
    /// Facts true in the world at this time (valid from ≤ T < valid to).
    pub valid_at: Option<Millis>,
    /// Versions as they were recorded at this time (created ≤ K < expired); without it,
    /// only current versions — unless `include_history`.
    pub known_at: Option<Millis>,
    pub include_history: bool,
    /// Every one of these tags.
    pub tags: Vec<String>,
    /// Top-level metadata keys equal to these values.
    pub metadata: Map<String, Value>,
    pub subject: Option<String>,
    pub limit: usize,
    /// At most about this many tokens of memory text in all.
    pub max_tokens: Option<usize>,
    pub method: Method,
    /// The query's embedding, when memory has an embedder.
    pub vector: Option<Vec<f32>>,
    /// Versions the graph around the query's entities reaches: version id → its graph score
    /// (0–1) and the path that reached it.
    pub graph: HashMap<String, (f64, String)>,
    /// The half-life of the asked scopes that fade in ranking (`[memory.decay_half_life_ms]`).
    pub half_lives: HashMap<String, Millis>,
}

/// One result: the version, the score results are ordered by, and what each method made of it.
#[derive(Clone, Debug)]
pub struct Hit {
    pub record: Arc<MemoryRecord>,
    pub score: f64,
    pub bm25: Option<f64>,
    pub bm25_rank: Option<usize>,
    /// Cosine similarity to the query's embedding.
    pub vector: Option<f64>,
    pub vector_rank: Option<usize>,
    pub recency_rank: Option<usize>,
    /// The graph's score (0–1) and the path that reached the version (`Alice -works_at-> Acme`).
    pub graph: Option<f64>,
    pub graph_path: Option<String>,
    /// What its scope's decay left of its score (1 new, 0.5 one half-life old).
    pub decay: Option<f64>,
    pub tokens: usize,
}

#[derive(Clone, Debug, Default)]
pub struct Found {
    pub hits: Vec<Hit>,
    /// Tokens of memory text in `hits`.
    pub tokens: usize,
    /// Whether results were left out to keep within `max_tokens`.
    pub truncated: bool,
}

/// Whether `d` is visible to `q` at `now`.
fn visible(q: &Query, now: Millis, d: &Doc) -> bool {
    let r = &d.record;
    if !q.scopes.iter().any(|s| *s == r.scope) {
        return false;
    }
    if r.expires_at.is_some_and(|e| e <= now) {
        return false;
    }
    let recorded = match q.known_at {
        Some(k) => r.created_at <= k && r.expired_at.is_none_or(|e| e > k),
        None => q.include_history || r.expired_at.is_none(),
    };
    if !recorded {
        return false;
    }
    if let Some(t) = q.valid_at {
        if r.valid_from > t || r.valid_to.is_some_and(|v| v <= t) {
            return false;
        }
    }
    if q.subject
        .as_ref()
        .is_some_and(|s| r.subject.as_ref() != Some(s))
    {
        return false;
    }
    q.tags.iter().all(|t| d.tags.contains(t))
        && q.metadata.iter().all(|(k, v)| d.metadata.get(k) == Some(v))
}

fn hit(d: &Doc, score: f64) -> Hit {
    Hit {
        record: d.record.clone(),
        score,
        bm25: None,
        bm25_rank: None,
        vector: None,
        vector_rank: None,
        recency_rank: None,
        graph: None,
        graph_path: None,
        decay: None,
        tokens: estimate_tokens(&d.record.text),
    }
}

/// Runs `q` over `ix` at `now`.
pub fn search(ix: &Index, q: &Query, now: Millis) -> Found {
    let keep = |d: &Doc| visible(q, now, d);
    let terms = ix.analyzer().terms(&q.text);
    // Decay reorders candidates: take more than asked so an older strong match can give way.
    let fading = !q.half_lives.is_empty() && q.method != Method::Recency;
    let pool = if fading {
        (q.limit * 5).max(50)
    } else {
        q.limit
    };
    let mut hits: Vec<Hit> = match (q.method, &q.vector) {
        (Method::Recency, _) => newest(ix, q, &keep),
        (Method::Vector, Some(v)) => ix
            .nearest(v, &q.scopes, &keep, pool)
            .into_iter()
            .enumerate()
            .map(|(i, (d, s))| Hit {
                vector: Some(s),
                vector_rank: Some(i + 1),
                ..hit(d, s)
            })
            .collect(),
        (Method::Vector, None) => Vec::new(),
        (Method::Graph, _) => with_graph(ix, q, &keep, Vec::new()),
        (Method::Hybrid, Some(v)) => with_graph(ix, q, &keep, fused(ix, &terms, v, q, &keep)),
        _ if terms.is_empty() && q.graph.is_empty() => newest(ix, q, &keep),
        (Method::Hybrid, None) => {
            with_graph(ix, q, &keep, full_text(ix, &terms, q, &keep, true, pool))
        }
        (_, _) => full_text(ix, &terms, q, &keep, false, pool),
    };
    if fading {
        hits = faded(hits, q.half_lives.clone(), q.valid_at.unwrap_or(now));
    }
    hits.truncate(q.limit);
    let mut found = Found::default();
    if let Some(budget) = q.max_tokens {
        let before = hits.len();
        hits.retain(|h| {
            let fits = found.tokens + h.tokens <= budget;
            if fits {
                found.tokens += h.tokens;
            }
            fits
        });
        found.truncated = hits.len() < before;
    } else {
        found.tokens = hits.iter().map(|h| h.tokens).sum();
    }
    found.hits = hits;
    found
}

/// Adds the graph's score to each version it reached (one the other methods did not find comes
/// in with the graph's score alone), and orders all by score, newer first on ties.
fn with_graph(ix: &Index, q: &Query, keep: &dyn Fn(&Doc) -> bool, hits: Vec<Hit>) -> Vec<Hit> {
    if q.graph.is_empty() {
        return hits;
    }
    let mut by_id: HashMap<String, Hit> =
        hits.into_iter().map(|h| (h.record.id.clone(), h)).collect();
    for (id, (score, path)) in &q.graph {
        let Some(d) = ix.get(id).filter(|d| keep(d)) else {
            continue;
        };
        let h = by_id.entry(id.clone()).or_insert_with(|| hit(d, 0.0));
        h.graph = Some(*score);
        h.graph_path = Some(path.clone());
        h.score += score;
    }
    best_first(by_id.into_values().collect())
}

/// Each hit's score halved for every half-life of its scope between the time it became true and
/// `at`, best first again. Hits of scopes without one keep their score.
fn faded(mut hits: Vec<Hit>, half_lives: HashMap<String, Millis>, at: Millis) -> Vec<Hit> {
    for h in &mut hits {
        if let Some(half_life) = half_lives.get(&h.record.scope) {
            let age = at.saturating_sub(h.record.valid_from).max(0);
            let left = 0.5f64.powf(age as f64 / *half_life as f64);
            h.score *= left;
            h.decay = Some(left);
        }
    }
    best_first(hits)
}

/// Hits by score, best first; ties to the version true since later, then by id.
fn best_first(mut hits: Vec<Hit>) -> Vec<Hit> {
    hits.sort_by(|a, b| {
        b.score.total_cmp(&a.score).then_with(|| {
            b.record
                .valid_from
                .cmp(&a.record.valid_from)
                .then_with(|| a.record.id.cmp(&b.record.id))
        })
    });
    hits
}

/// The newest versions, newest first.
fn newest(ix: &Index, q: &Query, keep: &dyn Fn(&Doc) -> bool) -> Vec<Hit> {
    ix.newest(&q.scopes, keep, q.limit)
        .into_iter()
        .enumerate()
        .map(|(i, d)| Hit {
            recency_rank: Some(i + 1),
            ..hit(d, 1.0 / (i as f64 + 1.0))
        })
        .collect()
}

/// BM25, the best `pool` candidates; with `recency`, scaled to the best match and nudged by
/// recency (no embeddings).
fn full_text(
    ix: &Index,
    terms: &[String],
    q: &Query,
    keep: &dyn Fn(&Doc) -> bool,
    recency: bool,
    pool: usize,
) -> Vec<Hit> {
    // Recency reorders the full-text candidates; take more than asked so it can.
    let pool = if recency {
        pool.max(q.limit * 5).max(50)
    } else {
        pool
    };
    let ranked = ix.bm25(terms, &q.scopes, keep, pool);
    let mut by_recency: Vec<usize> = (0..ranked.len()).collect();
    by_recency.sort_by(|&a, &b| crate::index::newer_first(ranked[a].0, ranked[b].0));
    let recency_of: HashMap<usize, usize> = by_recency
        .into_iter()
        .enumerate()
        .map(|(rank, i)| (i, rank + 1))
        .collect();
    let best = ranked.first().map_or(1.0, |r| r.1).max(f64::MIN_POSITIVE);
    let pool_len = ranked.len().max(1) as f64;
    let mut hits: Vec<Hit> = ranked
        .iter()
        .enumerate()
        .map(|(i, (d, s))| {
            let recency_rank = recency_of[&i];
            let score = if recency {
                *s / best + RECENCY_WEIGHT * (1.0 - (recency_rank - 1) as f64 / pool_len)
            } else {
                *s
            };
            Hit {
                bm25: Some(*s),
                bm25_rank: Some(i + 1),
                recency_rank: recency.then_some(recency_rank),
                ..hit(d, score)
            }
        })
        .collect();
    hits.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.bm25_rank.cmp(&b.bm25_rank))
    });
    hits
}

/// Full text and embeddings, interleaved: a version ranks by its best place in either list,
/// so each method's best matches come first whatever the other made of them; versions at the
/// same place are ordered by the sum of their reciprocal ranks (found by both first), then the
/// newer first. Its score is `1 / best place`, plus that sum scaled small enough never to
/// cross a place.
///
/// The two find different things — words a question shares with its evidence, or meaning with
/// none of its words — and on `bench/run memory`'s data each finds evidence the other misses.
/// Measured there on the same data (evidence recall at 5 / 10): summing scores scaled to 0–1
/// 0.57 / 0.57, reciprocal rank fusion (k = 60) 0.53 / 0.58, with k = 5 0.605 / 0.655, this
/// 0.625 / 0.675, against full text alone 0.585 / 0.645 and embeddings alone 0.595 / 0.60.
fn fused(
    ix: &Index,
    terms: &[String],
    v: &[f32],
    q: &Query,
    keep: &dyn Fn(&Doc) -> bool,
) -> Vec<Hit> {
    let pool = (q.limit * 5).max(50);
    let mut by_id: HashMap<&str, Hit> = HashMap::new();
    if !terms.is_empty() {
        for (i, (d, s)) in ix
            .bm25(terms, &q.scopes, keep, pool)
            .into_iter()
            .enumerate()
        {
            let h = by_id
                .entry(d.record.id.as_str())
                .or_insert_with(|| hit(d, 0.0));
            h.bm25 = Some(s);
            h.bm25_rank = Some(i + 1);
        }
    }
    for (i, (d, s)) in ix.nearest(v, &q.scopes, keep, pool).into_iter().enumerate() {
        let h = by_id
            .entry(d.record.id.as_str())
            .or_insert_with(|| hit(d, 0.0));
        h.vector = Some(s);
        h.vector_rank = Some(i + 1);
    }
    let mut hits: Vec<Hit> = by_id.into_values().collect();
    let gap = (pool * (pool + 1)) as f64;
    for h in &mut hits {
        let ranks = [h.bm25_rank, h.vector_rank];
        let best = ranks.iter().flatten().min().copied().unwrap_or(usize::MAX);
        let reciprocal: f64 = ranks.iter().flatten().map(|r| 1.0 / *r as f64).sum();
        // Neighbouring places differ by at least 1 / (pool × (pool + 1)); the tie-break (a
        // sum of at most 2) adds under a third of that.
        h.score = 1.0 / best as f64 + reciprocal / (3.0 * gap);
    }
    best_first(hits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, scope: &str, text: &str, at: Millis) -> MemoryRecord {
        MemoryRecord {
            id: id.into(),
            lineage: id.into(),
            scope: scope.into(),
            text: text.into(),
            subject: None,
            tags: "[]".into(),
            metadata: "{}".into(),
            source: None,
            written_by: "admin".into(),
            valid_from: at,
            valid_to: None,
            created_at: at,
            expired_at: None,
            superseded_by: None,
            expires_at: None,
            updated_at: at,
        }
    }

    fn q(text: &str, scopes: &[&str]) -> Query {
        Query {
            text: text.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            limit: 10,
            ..Query::default()
        }
    }

    fn ids(f: &Found) -> Vec<&str> {
        f.hits.iter().map(|h| h.record.id.as_str()).collect()
    }

    #[test]
    fn other_scopes_are_never_seen() {
        let mut ix = Index::default();
        ix.upsert(rec("a", "user:alice", "likes tea", 1));
        ix.upsert(rec("b", "user:bob", "likes tea", 2));
        assert_eq!(ids(&search(&ix, &q("tea", &["user:alice"]), 10)), ["a"]);
        assert_eq!(ids(&search(&ix, &q("", &["user:bob"]), 10)), ["b"]);
        assert!(search(&ix, &q("tea", &[]), 10).hits.is_empty());
    }

    #[test]
    fn time_travel_sees_what_was_true_and_what_was_known() {
        let mut ix = Index::default();
        let mut old = rec("v1", "org", "Alice lives in Paris", 100);
        old.valid_to = Some(500);
        old.expired_at = Some(600);
        old.superseded_by = Some("v2".into());
        old.updated_at = 600;
        let mut new = rec("v2", "org", "Alice lives in Lisbon", 500);
        new.lineage = "v1".into();
        new.created_at = 600;
        new.updated_at = 600;
        ix.upsert(old);
        ix.upsert(new);
        let now = 1000;
        assert_eq!(
            ids(&search(&ix, &q("where does alice live", &["org"]), now)),
            ["v2"]
        );
        let mut past = q("alice lives", &["org"]);
        past.valid_at = Some(300);
        assert!(
            search(&ix, &past, now).hits.is_empty(),
            "current knowledge: the Paris version is superseded"
        );
        past.known_at = Some(300);
        assert_eq!(
            ids(&search(&ix, &past, now)),
            ["v1"],
            "as known at 300, true at 300"
        );
        let mut all = q("alice", &["org"]);
        all.include_history = true;
        assert_eq!(ids(&search(&ix, &all, now)).len(), 2);
    }

    #[test]
    fn filters_on_tags_metadata_subject_and_expiry() {
        let mut ix = Index::default();
        let mut a = rec("a", "org", "prefers email", 1);
        a.tags = r#"["contact","pref"]"#.into();
        a.metadata = r#"{"source":"crm","n":1}"#.into();
        a.subject = Some("alice".into());
        let mut b = rec("b", "org", "prefers phone", 2);
        b.tags = r#"["contact"]"#.into();
        b.expires_at = Some(50);
        ix.upsert(a);
        ix.upsert(b);
        let mut t = q("prefers", &["org"]);
        t.tags = vec!["contact".into(), "pref".into()];
        assert_eq!(ids(&search(&ix, &t, 10)), ["a"]);
        let mut m = q("prefers", &["org"]);
        m.metadata.insert("n".into(), Value::from(1));
        assert_eq!(ids(&search(&ix, &m, 10)), ["a"]);
        m.metadata.insert("n".into(), Value::from("1"));
        assert!(
            search(&ix, &m, 10).hits.is_empty(),
            "values compare as JSON"
        );
        let mut s = q("prefers", &["org"]);
        s.subject = Some("alice".into());
        assert_eq!(ids(&search(&ix, &s, 10)), ["a"]);
        assert_eq!(ids(&search(&ix, &q("prefers", &["org"]), 10)).len(), 2);
        assert_eq!(
            ids(&search(&ix, &q("prefers", &["org"]), 50)),
            ["a"],
            "past its time to live, b is gone from results before it is swept"
        );
    }

    #[test]
    fn hybrid_keeps_each_methods_best_match_first() {
        let mut ix = Index::default();
        // "words" shares the query's words and means little; "meaning" shares no word and is
        // nearest in meaning; "middling" is second in both.
        ix.upsert(rec("words", "org", "jon city live city live", 1));
        ix.upsert(rec("meaning", "org", "we finally moved to denver", 2));
        ix.upsert(rec("middling", "org", "jon had a city trip", 3));
        for i in 0..6 {
            ix.upsert(rec(
                &format!("noise{i}"),
                "org",
                "the weather was odd",
                4 + i,
            ));
            ix.set_vector(&format!("noise{i}"), vec![0.0, 1.0]);
        }
        ix.set_vector("words", vec![0.2, 0.98]);
        ix.set_vector("meaning", vec![1.0, 0.0]);
        ix.set_vector("middling", vec![0.8, 0.6]);
        let mut hybrid = q("which city does jon live in", &["org"]);
        hybrid.vector = Some(vec![1.0, 0.0]);
        let found = search(&ix, &hybrid, 10);
        let top: Vec<&str> = ids(&found)[..2].to_vec();
        assert!(
            top.contains(&"words") && top.contains(&"meaning"),
            "each method's first leads: {:?}",
            ids(&found)
        );
        assert_eq!(ids(&found)[2], "middling", "second in both comes next");
        let middling = &found.hits[2];
        assert_eq!(
            (middling.bm25_rank, middling.vector_rank),
            (Some(2), Some(2))
        );
        assert!(
            middling.score < 0.51 && middling.score > 0.5,
            "1 / its best place"
        );
    }

    #[test]
    fn recency_breaks_ties_and_the_budget_cuts_whole_results() {
        let mut ix = Index::default();
        ix.upsert(rec("old", "org", "the meeting is on monday", 1));
        ix.upsert(rec("new", "org", "the meeting is on tuesday", 9));
        let found = search(&ix, &q("meeting", &["org"]), 10);
        assert_eq!(ids(&found), ["new", "old"]);
        assert!(found.hits[0].score > found.hits[1].score);
        assert_eq!(found.hits[0].recency_rank, Some(1));
        let mut full_text = q("meeting", &["org"]);
        full_text.method = Method::FullText;
        let f = search(&ix, &full_text, 10);
        assert_eq!(f.hits[0].recency_rank, None);

        let mut budget = q("meeting", &["org"]);
        budget.max_tokens = Some(8);
        let f = search(&ix, &budget, 10);
        assert_eq!(
            ids(&f),
            ["new"],
            "25 bytes is 7 tokens; a second would make 14"
        );
        assert!(f.truncated);
        assert_eq!(f.tokens, 7);
    }
}
