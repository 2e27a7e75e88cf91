//! The in-process full-text index over memory versions: an inverted index with BM25 scores,
//! derived from the store's rows (rebuilt on start, followed while running), so it is never
//! the only copy of anything and holds nothing an erasure leaves behind on disk.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Map, Value};
use steward_store::MemoryRecord;
use steward_types::Millis;

use crate::text::Analyzer;

/// BM25's usual constants: term-frequency saturation and length normalisation.
const K1: f64 = 1.2;
const B: f64 = 0.75;

/// One version as the index keeps it: the record, and what filters read, parsed once.
pub struct Doc {
    pub record: Arc<MemoryRecord>,
    pub tags: Vec<String>,
    pub metadata: Map<String, Value>,
    len: u32,
}

impl Doc {
    fn new(record: MemoryRecord, len: u32) -> Doc {
        // The rows were checked when written; unreadable JSON filters as empty.
        let tags = serde_json::from_str(&record.tags).unwrap_or_default();
        let metadata = serde_json::from_str(&record.metadata).unwrap_or_default();
        Doc {
            record: Arc::new(record),
            tags,
            metadata,
            len,
        }
    }
}

/// One scope's versions and the length of their text in terms, BM25's collection statistics.
#[derive(Default)]
struct Scope {
    slots: HashSet<u32>,
    total_len: u64,
}

#[derive(Default)]
pub struct Index {
    analyzer: Analyzer,
    slots: Vec<Option<Doc>>,
    free: Vec<u32>,
    by_id: HashMap<String, u32>,
    /// term → slot → frequency.
    postings: HashMap<String, HashMap<u32, u32>>,
    /// Each version's embedding, by slot (unit length).
    vectors: HashMap<u32, Vec<f32>>,
    /// Embeddings that arrived before their version did (another node's, followed).
    early_vectors: HashMap<String, Vec<f32>>,
    /// Versions by scope: a search reads only the scopes it asks for, however many others there
    /// are (vector search and recency compare every version of those scopes), and BM25 weighs
    /// terms by those scopes alone.
    by_scope: HashMap<String, Scope>,
    /// Bumped by every erasure: a follower that read rows before one does not apply them.
    pub erasures: u64,
}

impl Index {
    pub fn analyzer(&self) -> &Analyzer {
        &self.analyzer
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn get(&self, id: &str) -> Option<&Doc> {
        self.by_id
            .get(id)
            .and_then(|&slot| self.slots[slot as usize].as_ref())
    }

    /// Adds a version, or replaces the one with its id if this one is as new or newer (a
    /// follower may read an older copy after the writer indexed a newer one). Whether it did.
    pub fn upsert(&mut self, record: MemoryRecord) -> bool {
        if let Some(old) = self.get(&record.id) {
            if old.record.updated_at > record.updated_at {
                return false;
            }
            if *old.record == record {
                return false;
            }
            let id = record.id.clone();
            let vector = self
                .by_id
                .get(&id)
                .and_then(|slot| self.vectors.remove(slot));
            self.remove(&id);
            if let Some(v) = vector {
                self.early_vectors.insert(id, v);
            }
        }
        let terms = self.analyzer.terms(&record.text);
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        for t in &terms {
            *self
                .postings
                .entry(t.clone())
                .or_default()
                .entry(slot)
                .or_default() += 1;
        }
        if let Some(v) = self.early_vectors.remove(&record.id) {
            self.vectors.insert(slot, v);
        }
        self.by_id.insert(record.id.clone(), slot);
        let scope = self.by_scope.entry(record.scope.clone()).or_default();
        scope.slots.insert(slot);
        scope.total_len += terms.len() as u64;
        self.slots[slot as usize] = Some(Doc::new(record, terms.len() as u32));
        true
    }

    /// Sets a version's embedding (kept aside until the version itself arrives).
    pub fn set_vector(&mut self, id: &str, v: Vec<f32>) {
        match self.by_id.get(id) {
            Some(&slot) => {
                self.vectors.insert(slot, v);
            }
            None => {
                self.early_vectors.insert(id.to_string(), v);
            }
        }
    }

    /// Whether a version has an embedding here.
    pub fn has_vector(&self, id: &str) -> bool {
        self.by_id
            .get(id)
            .is_some_and(|slot| self.vectors.contains_key(slot))
    }

    /// Versions with an embedding.
    pub fn embedded(&self) -> usize {
        self.vectors.len()
    }

    /// The `limit` versions `keep` accepts whose embeddings are nearest `q` (cosine: all are
    /// unit length), nearest first. Exact: every embedding is compared.
    pub fn nearest(
        &self,
        q: &[f32],
        scopes: &[String],
        keep: &dyn Fn(&Doc) -> bool,
        limit: usize,
    ) -> Vec<(&Doc, f64)> {
        let mut hits: Vec<(&Doc, f64)> = self
            .in_scopes(scopes)
            .filter_map(|slot| Some((slot, self.vectors.get(&slot)?)))
            .filter(|(_, v)| v.len() == q.len())
            .filter_map(|(slot, v)| {
                let d = self.slots[slot as usize].as_ref()?;
                keep(d).then(|| {
                    let dot: f32 = v.iter().zip(q).map(|(a, b)| a * b).sum();
                    (d, f64::from(dot))
                })
            })
            .collect();
        hits.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| newer_first(a.0, b.0)));
        hits.truncate(limit);
        hits
    }

    /// Removes a version and its postings; how many postings went (0: it was not here).
    pub fn remove(&mut self, id: &str) -> usize {
        let Some(slot) = self.by_id.remove(id) else {
            return 0;
        };
        let Some(doc) = self.slots[slot as usize].take() else {
            return 0;
        };
        self.vectors.remove(&slot);
        self.early_vectors.remove(id);
        if let Some(scope) = self.by_scope.get_mut(&doc.record.scope) {
            scope.slots.remove(&slot);
            scope.total_len -= u64::from(doc.len);
            if scope.slots.is_empty() {
                self.by_scope.remove(&doc.record.scope);
            }
        }
        let mut removed = 0;
        for t in self.analyzer.terms(&doc.record.text) {
            if let Some(list) = self.postings.get_mut(&t) {
                if list.remove(&slot).is_some() {
                    removed += 1;
                }
                if list.is_empty() {
                    self.postings.remove(&t);
                }
            }
        }
        self.free.push(slot);
        removed
    }

    /// The `limit` best versions for `terms` by BM25 among those `keep` accepts, best first;
    /// versions sharing no term are left out. Ties go to the newer version.
    ///
    /// A term's rarity and the average length are those of `scopes`, not of the whole node: a
    /// speaker's name in every turn of their own conversation weighs little there however rare
    /// it is elsewhere, and a score reveals nothing about scopes the searcher may not read.
    pub fn bm25(
        &self,
        terms: &[String],
        scopes: &[String],
        keep: &dyn Fn(&Doc) -> bool,
        limit: usize,
    ) -> Vec<(&Doc, f64)> {
        let asked = self.asked(scopes);
        let n: usize = asked.iter().map(|s| s.slots.len()).sum();
        if n == 0 {
            return Vec::new();
        }
        let n = n as f64;
        let total_len: u64 = asked.iter().map(|s| s.total_len).sum();
        let avg_len = (total_len as f64 / n).max(1.0);
        let in_scope = |slot: &u32| asked.iter().any(|s| s.slots.contains(slot));
        let mut unique: Vec<&String> = terms.iter().collect();
        unique.sort();
        unique.dedup();
        let mut scores: HashMap<u32, f64> = HashMap::new();
        for t in unique {
            let Some(list) = self.postings.get(t) else {
                continue;
            };
            let here: Vec<(u32, u32)> = list
                .iter()
                .filter(|(slot, _)| in_scope(slot))
                .map(|(&slot, &tf)| (slot, tf))
                .collect();
            let df = here.len() as f64;
            let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
            for (slot, tf) in here {
                let Some(doc) = &self.slots[slot as usize] else {
                    continue;
                };
                let tf = f64::from(tf);
                let norm = K1 * (1.0 - B + B * f64::from(doc.len) / avg_len);
                *scores.entry(slot).or_default() += idf * tf * (K1 + 1.0) / (tf + norm);
            }
        }
        let mut hits: Vec<(&Doc, f64)> = scores
            .into_iter()
            .filter_map(|(slot, s)| self.slots[slot as usize].as_ref().map(|d| (d, s)))
            .filter(|(d, _)| keep(d))
            .collect();
        hits.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| newer_first(a.0, b.0)));
        hits.truncate(limit);
        hits
    }

    /// The scopes asked for that hold anything, each once.
    fn asked(&self, scopes: &[String]) -> Vec<&Scope> {
        let mut seen: Vec<&String> = Vec::new();
        scopes
            .iter()
            .filter(|s| {
                let first = !seen.contains(s);
                seen.push(s);
                first
            })
            .filter_map(|s| self.by_scope.get(s))
            .collect()
    }

    /// The slots of versions in `scopes`.
    fn in_scopes<'a>(&'a self, scopes: &'a [String]) -> impl Iterator<Item = u32> + 'a {
        self.asked(scopes)
            .into_iter()
            .flat_map(|scope| scope.slots.iter().copied())
    }

    /// The `limit` newest versions of `scopes` (by when they became true) that `keep` accepts.
    pub fn newest(
        &self,
        scopes: &[String],
        keep: &dyn Fn(&Doc) -> bool,
        limit: usize,
    ) -> Vec<&Doc> {
        let mut docs: Vec<&Doc> = self
            .in_scopes(scopes)
            .filter_map(|slot| self.slots[slot as usize].as_ref())
            .filter(|d| keep(d))
            .collect();
        docs.sort_by(|a, b| newer_first(a, b));
        docs.truncate(limit);
        docs
    }

    /// Ids of every version in the index whose time to live ran out by `now`.
    pub fn expired(&self, now: Millis) -> Vec<String> {
        self.slots
            .iter()
            .flatten()
            .filter(|d| d.record.expires_at.is_some_and(|e| e <= now))
            .map(|d| d.record.id.clone())
            .collect()
    }
}

/// Newer first: by when the fact became true, then when it was recorded, then by id.
pub fn newer_first(a: &Doc, b: &Doc) -> std::cmp::Ordering {
    b.record
        .valid_from
        .cmp(&a.record.valid_from)
        .then_with(|| b.record.created_at.cmp(&a.record.created_at))
        .then_with(|| a.record.id.cmp(&b.record.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn rec(id: &str, text: &str, at: Millis) -> MemoryRecord {
        MemoryRecord {
            id: id.into(),
            lineage: id.into(),
            scope: "org".into(),
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

    #[test]
    fn a_search_reads_only_the_scopes_it_asks_for() {
        let mut ix = Index::default();
        let at = |id: &str, scope: &str, t: Millis| MemoryRecord {
            scope: scope.into(),
            ..rec(id, "likes tea", t)
        };
        ix.upsert(at("a1", "user:a", 1));
        ix.upsert(at("b1", "user:b", 2));
        ix.upsert(at("b2", "user:b", 3));
        for id in ["a1", "b1", "b2"] {
            ix.set_vector(id, vec![1.0, 0.0]);
        }
        let a = ["user:a".to_string()];
        let ids = |hits: Vec<&Doc>| hits.iter().map(|d| d.record.id.clone()).collect::<Vec<_>>();
        let near = ix.nearest(&[1.0, 0.0], &a, &|_| true, 10);
        assert_eq!(ids(near.into_iter().map(|h| h.0).collect()), ["a1"]);
        let both = [
            "user:b".to_string(),
            "user:a".to_string(),
            "user:b".to_string(),
        ];
        assert_eq!(
            ids(ix.newest(&both, &|_| true, 10)),
            ["b2", "b1", "a1"],
            "each once"
        );
        let q = ix.analyzer().terms("tea");
        assert_eq!(ix.bm25(&q, &a, &|_| true, 10).len(), 1);
        ix.remove("a1");
        assert!(!ix.by_scope.contains_key("user:a"), "an emptied scope goes");
        assert!(ix.nearest(&[1.0, 0.0], &a, &|_| true, 10).is_empty());
        // A newer copy of a version keeps it in its scope, once.
        let mut newer = at("b1", "user:b", 2);
        newer.updated_at = 9;
        ix.upsert(newer);
        assert_eq!(ix.by_scope["user:b"].slots.len(), 2);
        assert_eq!(ix.nearest(&[1.0, 0.0], &both, &|_| true, 10).len(), 2);
    }

    #[test]
    fn rarer_terms_weigh_more_and_removal_takes_every_posting() {
        let mut ix = Index::default();
        ix.upsert(rec("a", "Alice likes green tea", 1));
        ix.upsert(rec("b", "Bob likes coffee", 2));
        ix.upsert(rec("c", "Carol likes tea and likes cake", 3));
        let q = ix.analyzer().terms("green tea");
        let hits: Vec<&str> = ix
            .bm25(&q, &["org".to_string()], &|_| true, 10)
            .iter()
            .map(|(d, _)| d.record.id.as_str())
            .collect();
        assert_eq!(hits, ["a", "c"], "both terms beat one; b shares none");

        assert_eq!(ix.remove("a"), 4, "alice, like, green, tea");
        assert_eq!(ix.remove("a"), 0);
        assert!(
            !ix.postings.contains_key("green"),
            "no empty posting lists left"
        );
        let q = ix.analyzer().terms("green");
        assert!(ix.bm25(&q, &["org".to_string()], &|_| true, 10).is_empty());
        assert_eq!(ix.len(), 2);
    }

    #[test]
    fn term_weights_come_from_the_scopes_searched() {
        let in_scope = |id: &str, scope: &str, text: &str| {
            let mut r = rec(id, text, 1);
            r.scope = scope.into();
            r
        };
        let mut ix = Index::default();
        // In user:jon, "jon" is in every version and "moved" in one; elsewhere both are rare.
        ix.upsert(in_scope("j1", "user:jon", "jon we moved to denver"));
        ix.upsert(in_scope("j2", "user:jon", "jon jon the weather jon"));
        ix.upsert(in_scope("j3", "user:jon", "jon had pasta"));
        for i in 0..50 {
            ix.upsert(in_scope(&format!("o{i}"), "user:other", "coffee and cake"));
        }
        let jon = ["user:jon".to_string()];
        let q = ix.analyzer().terms("where has jon moved");
        let hits = ix.bm25(&q, &jon, &|_| true, 10);
        assert_eq!(hits[0].0.record.id, "j1", "the scope's rare term decides");
        let name_only = hits.iter().find(|h| h.0.record.id == "j2").unwrap().1;
        assert!(
            name_only < 0.2 * hits[0].1,
            "a term in every version of the scope weighs almost nothing: {name_only}"
        );

        // What other scopes hold does not move a score: no leak between owners.
        let before: Vec<f64> = hits.iter().map(|h| h.1).collect();
        for i in 0..50 {
            ix.upsert(in_scope(
                &format!("m{i}"),
                "user:mallory",
                "jon moved jon moved",
            ));
        }
        let after: Vec<f64> = ix
            .bm25(&q, &jon, &|_| true, 10)
            .iter()
            .map(|h| h.1)
            .collect();
        assert_eq!(before, after);
        ix.remove("m0");
        ix.remove("j3");
        let fewer = ix.bm25(&q, &jon, &|_| true, 10);
        assert_eq!(
            fewer.len(),
            2,
            "a removed version leaves the scope's statistics"
        );
    }

    #[test]
    fn an_older_copy_never_replaces_a_newer_one() {
        let mut ix = Index::default();
        let mut newer = rec("a", "lives in Lisbon", 1);
        newer.updated_at = 5;
        newer.expired_at = Some(5);
        assert!(ix.upsert(newer));
        assert!(!ix.upsert(rec("a", "lives in Lisbon", 1)));
        assert_eq!(ix.get("a").unwrap().record.expired_at, Some(5));
    }

    #[test]
    fn slots_are_reused_and_lengths_stay_balanced() {
        let mut ix = Index::default();
        for i in 0..100 {
            ix.upsert(rec(&format!("m{i}"), "one two three", i));
        }
        for i in 0..100 {
            ix.remove(&format!("m{i}"));
        }
        assert!(ix.by_scope.is_empty(), "no scope left with a length");
        assert!(ix.postings.is_empty());
        ix.upsert(rec("x", "four", 1));
        assert_eq!(ix.slots.len(), 100, "a freed slot was taken");
    }
}
