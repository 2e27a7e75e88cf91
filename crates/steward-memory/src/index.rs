//! The in-process full-text index over memory versions: an inverted index with BM25 scores,
//! derived from the store's rows (rebuilt on start, followed while running), so it is never
//! the only copy of anything and holds nothing an erasure leaves behind on disk.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use steward_store::MemoryRecord;
use steward_types::Millis;

use crate::ann::Graph;
use crate::text::Analyzer;

/// Scopes with at most this many embeddings are searched by comparing every one, which is
/// exact and, at this size, about as fast as a graph; bigger ones through a graph of their own.
pub const EXACT_UP_TO: usize = 4096;
/// Fewest candidates a graph is asked for.
const GRAPH_CANDIDATES: usize = 64;

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
    /// Versions of the scope with an embedding.
    embedded: usize,
    ann: Ann,
    /// How many embeddings the scope had when building its graph last failed: not tried again
    /// until it has twice as many.
    failed_at: usize,
}

/// Where a scope's vector search stands.
#[derive(Default)]
enum Ann {
    /// Every embedding is compared.
    #[default]
    Exact,
    /// A graph of embeddings of length `dims` is being built elsewhere from a copy; the slots
    /// changed since the copy are applied to it when it is installed.
    Building {
        ticket: u64,
        dims: usize,
        touched: HashSet<u32>,
    },
    Ready(Graph),
}

/// A graph to build: a copy of a scope's embeddings of one length.
pub struct GraphJob {
    pub scope: String,
    pub ticket: u64,
    pub dims: usize,
    pub vectors: Vec<(u32, Vec<f32>)>,
}

/// A graph built (or not), waiting to be installed.
pub struct BuiltGraph {
    pub scope: String,
    pub ticket: u64,
    pub graph: Result<Graph, String>,
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
    /// Graphs built off the lock, for [`Index::install_graphs`].
    built: Arc<Mutex<Vec<BuiltGraph>>>,
    tickets: u64,
    /// Scopes with more embeddings than this get a graph ([`EXACT_UP_TO`] when unset).
    graph_above: Option<usize>,
    /// Scopes with a graph that were searched by comparing every embedding all the same.
    #[cfg(test)]
    graph_passed_over: std::sync::atomic::AtomicUsize,
}

impl Index {
    /// An empty index whose scopes get a graph above `graph_above` embeddings.
    pub fn new(graph_above: usize) -> Index {
        Index {
            graph_above: Some(graph_above),
            ..Index::default()
        }
    }

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
                .and_then(|slot| self.vectors.get(slot).cloned());
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
        let vector = self.early_vectors.remove(&record.id);
        self.by_id.insert(record.id.clone(), slot);
        let scope_name = record.scope.clone();
        let scope = self.by_scope.entry(record.scope.clone()).or_default();
        scope.slots.insert(slot);
        scope.total_len += terms.len() as u64;
        self.slots[slot as usize] = Some(Doc::new(record, terms.len() as u32));
        if let Some(v) = vector {
            scope.embedded += 1;
            self.vectors.insert(slot, v);
            self.touch(&scope_name, slot);
        }
        true
    }

    /// Sets a version's embedding (kept aside until the version itself arrives).
    pub fn set_vector(&mut self, id: &str, v: Vec<f32>) {
        match self.by_id.get(id) {
            Some(&slot) => {
                let Some(doc) = &self.slots[slot as usize] else {
                    return;
                };
                let scope_name = doc.record.scope.clone();
                if self.vectors.insert(slot, v).is_none() {
                    if let Some(scope) = self.by_scope.get_mut(&scope_name) {
                        scope.embedded += 1;
                    }
                }
                self.touch(&scope_name, slot);
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
    /// unit length), nearest first. A small scope compares every embedding; a big one asks its
    /// graph for candidates — filtered as they are found — and compares every embedding only
    /// when the graph finds fewer than `limit` (a filter few versions pass). Either way the
    /// scores are the embeddings' own.
    pub fn nearest(
        &self,
        q: &[f32],
        scopes: &[String],
        keep: &dyn Fn(&Doc) -> bool,
        limit: usize,
    ) -> Vec<(&Doc, f64)> {
        let score = |slot: u32| -> Option<(&Doc, f64)> {
            let v = self.vectors.get(&slot).filter(|v| v.len() == q.len())?;
            let d = self.slots[slot as usize].as_ref()?;
            keep(d).then(|| {
                let dot: f32 = v.iter().zip(q).map(|(a, b)| a * b).sum();
                (d, f64::from(dot))
            })
        };
        let mut hits: Vec<(&Doc, f64)> = Vec::new();
        for scope in self.asked(scopes) {
            if let Ann::Ready(graph) = &scope.ann {
                let want = limit.min(scope.embedded);
                // More candidates than asked for: scored here with their own embeddings and
                // ordered with ties going to the newer, as comparing everything would.
                let near = graph.search(q, (limit * 4).max(GRAPH_CANDIDATES), &|slot| {
                    scope.slots.contains(&slot)
                        && self.slots[slot as usize].as_ref().is_some_and(keep)
                });
                if near.len() >= want && want > 0 {
                    hits.extend(near.into_iter().filter_map(score));
                    continue;
                }
                #[cfg(test)]
                self.graph_passed_over
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            hits.extend(scope.slots.iter().filter_map(|&slot| score(slot)));
        }
        hits.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| newer_first(a.0, b.0)));
        hits.truncate(limit);
        hits
    }

    /// Applies a change of `slot` (its embedding set or replaced, or the slot gone from
    /// `scope`) to the scope's graph, or notes it for the graph being built.
    fn touch(&mut self, scope: &str, slot: u32) {
        let Some(sc) = self.by_scope.get_mut(scope) else {
            return;
        };
        match &mut sc.ann {
            Ann::Exact => {}
            Ann::Building { touched, .. } => {
                touched.insert(slot);
            }
            Ann::Ready(graph) => {
                let current = in_scope(&sc.slots, &self.vectors, slot);
                match current {
                    Some(v) if v.len() == graph.dims() => {
                        if !graph.put(slot, v) {
                            tracing::warn!(scope, "adding to a memory scope's graph failed; the scope is searched exactly until it is built again");
                            sc.ann = Ann::Exact;
                        }
                    }
                    Some(_) => {
                        // Embeddings of another length: another model's; the graph is of
                        // the old one. Build again from what the scope has now.
                        sc.ann = Ann::Exact;
                    }
                    None => graph.remove(slot),
                }
            }
        }
    }

    /// Scopes that have grown big enough for a graph and have none: each is marked as being
    /// built, and a copy of its embeddings (of the most common length) returned to build from.
    pub fn graphs_wanted(&mut self) -> Vec<GraphJob> {
        let mut jobs = Vec::new();
        let above = self.graph_above.unwrap_or(EXACT_UP_TO);
        for (name, sc) in &mut self.by_scope {
            if !matches!(sc.ann, Ann::Exact)
                || sc.embedded <= above
                || sc.embedded < 2 * sc.failed_at
            {
                continue;
            }
            let mut lengths: HashMap<usize, usize> = HashMap::new();
            for slot in &sc.slots {
                if let Some(v) = self.vectors.get(slot) {
                    *lengths.entry(v.len()).or_default() += 1;
                }
            }
            let Some((dims, _)) = lengths.into_iter().max_by_key(|&(d, n)| (n, d)) else {
                continue;
            };
            let vectors: Vec<(u32, Vec<f32>)> = sc
                .slots
                .iter()
                .filter_map(|&slot| Some((slot, self.vectors.get(&slot)?.clone())))
                .filter(|(_, v)| v.len() == dims)
                .collect();
            self.tickets += 1;
            sc.ann = Ann::Building {
                ticket: self.tickets,
                dims,
                touched: HashSet::new(),
            };
            jobs.push(GraphJob {
                scope: name.clone(),
                ticket: self.tickets,
                dims,
                vectors,
            });
        }
        jobs
    }

    /// Where a graph built from a [`GraphJob`] is handed back, from any thread.
    pub fn graph_sink(&self) -> Arc<Mutex<Vec<BuiltGraph>>> {
        self.built.clone()
    }

    /// Whether graphs are waiting to be installed.
    pub fn graphs_built(&self) -> bool {
        !self
            .built
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Installs the graphs built since the last call, each brought up to date with the
    /// changes its scope had meanwhile; a graph whose scope was emptied or rebuilt since is
    /// dropped. How many were installed.
    pub fn install_graphs(&mut self) -> usize {
        let built = std::mem::take(&mut *self.built.lock().unwrap_or_else(|p| p.into_inner()));
        let mut installed = 0;
        for b in built {
            let Some(sc) = self.by_scope.get_mut(&b.scope) else {
                continue;
            };
            let Ann::Building {
                ticket,
                dims,
                touched,
            } = &mut sc.ann
            else {
                continue;
            };
            if *ticket != b.ticket {
                continue;
            }
            let (dims, touched) = (*dims, std::mem::take(touched));
            let mut graph = match b.graph {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(scope = %b.scope, error = %e, "building a memory scope's graph failed; it is searched exactly");
                    sc.failed_at = sc.embedded;
                    sc.ann = Ann::Exact;
                    continue;
                }
            };
            let mut whole = true;
            for slot in touched {
                let current = in_scope(&sc.slots, &self.vectors, slot);
                match current {
                    Some(v) if v.len() == dims => whole &= graph.put(slot, v),
                    _ => graph.remove(slot),
                }
            }
            if whole {
                sc.ann = Ann::Ready(graph);
                installed += 1;
            } else {
                sc.failed_at = sc.embedded;
                sc.ann = Ann::Exact;
            }
        }
        installed
    }

    /// Scopes searched through a graph, and scopes whose graph is being built.
    pub fn graphs(&self) -> (usize, usize) {
        self.by_scope
            .values()
            .fold((0, 0), |(r, b), sc| match sc.ann {
                Ann::Ready(_) => (r + 1, b),
                Ann::Building { .. } => (r, b + 1),
                Ann::Exact => (r, b),
            })
    }

    /// Removes a version and its postings; how many postings went (0: it was not here).
    pub fn remove(&mut self, id: &str) -> usize {
        let Some(slot) = self.by_id.remove(id) else {
            return 0;
        };
        let Some(doc) = self.slots[slot as usize].take() else {
            return 0;
        };
        let had_vector = self.vectors.remove(&slot).is_some();
        self.early_vectors.remove(id);
        if let Some(scope) = self.by_scope.get_mut(&doc.record.scope) {
            scope.slots.remove(&slot);
            scope.total_len -= u64::from(doc.len);
            scope.embedded -= usize::from(had_vector);
            if scope.slots.is_empty() {
                self.by_scope.remove(&doc.record.scope);
            } else {
                self.touch(&doc.record.scope, slot);
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

/// A slot's embedding, while the slot is one of `slots` (a scope's).
fn in_scope<'a>(
    slots: &HashSet<u32>,
    vectors: &'a HashMap<u32, Vec<f32>>,
    slot: u32,
) -> Option<&'a Vec<f32>> {
    slots.contains(&slot).then(|| vectors.get(&slot)).flatten()
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

    /// Builds the graphs `ix` wants, as the service does off the lock, and installs them.
    fn build_graphs(ix: &mut Index) -> usize {
        let sink = ix.graph_sink();
        for job in ix.graphs_wanted() {
            let graph = Graph::build(job.dims, &job.vectors, 2);
            sink.lock().unwrap().push(BuiltGraph {
                scope: job.scope,
                ticket: job.ticket,
                graph,
            });
        }
        ix.install_graphs()
    }

    fn ids(hits: &[(&Doc, f64)]) -> Vec<String> {
        hits.iter().map(|h| h.0.record.id.clone()).collect()
    }

    #[test]
    fn a_big_scope_is_searched_through_its_graph_and_finds_what_comparing_everything_finds() {
        let n = EXACT_UP_TO + 500;
        let vs = crate::ann::tests::vectors(n + 3, 16, 21);
        let mut ix = Index::default();
        let big = |i: usize| MemoryRecord {
            scope: "user:big".into(),
            ..rec(&format!("m{i}"), "a note", i as Millis)
        };
        for (i, (_, v)) in vs.iter().take(n).enumerate() {
            ix.upsert(big(i));
            ix.set_vector(&format!("m{i}"), v.clone());
        }
        // A small scope beside it never gets a graph.
        ix.upsert(MemoryRecord {
            scope: "user:small".into(),
            ..rec("s0", "a note", 1)
        });
        ix.set_vector("s0", vs[0].1.clone());
        let scope = ["user:big".to_string()];

        let sink = ix.graph_sink();
        let jobs = ix.graphs_wanted();
        assert_eq!(jobs.len(), 1, "only the big scope");
        assert_eq!(ix.graphs(), (0, 1));
        assert!(ix.graphs_wanted().is_empty(), "one build at a time");
        // While it is built from a copy, the scope changes: a version goes, one is added,
        // one gets another embedding.
        ix.remove("m5");
        ix.upsert(big(n));
        ix.set_vector(&format!("m{n}"), vs[n + 1].1.clone());
        ix.set_vector("m7", vs[n + 2].1.clone());
        for job in jobs {
            let graph = Graph::build(job.dims, &job.vectors, 2);
            sink.lock().unwrap().push(BuiltGraph {
                scope: job.scope,
                ticket: job.ticket,
                graph,
            });
        }
        assert_eq!(ix.install_graphs(), 1);
        assert_eq!(ix.graphs(), (1, 0));

        // The changes made while building are in the graph.
        let near = |ix: &Index, q: &[f32], keep: &dyn Fn(&Doc) -> bool| {
            ids(&ix.nearest(q, &scope, keep, 10))
        };
        assert_eq!(near(&ix, &vs[n + 1].1, &|_| true)[0], format!("m{n}"));
        assert_eq!(near(&ix, &vs[n + 2].1, &|_| true)[0], "m7");
        assert!(!near(&ix, &vs[5].1, &|_| true).contains(&"m5".to_string()));

        // Through the graph, the same answers as comparing everything (recall over queries).
        let mut found = 0;
        for q in crate::ann::tests::vectors(40, 16, 77) {
            let through_graph = near(&ix, &q.1, &|_| true);
            let mut all: Vec<(String, f32)> = ix.by_scope["user:big"]
                .slots
                .iter()
                .map(|s| {
                    let d = ix.slots[*s as usize].as_ref().unwrap();
                    let v = &ix.vectors[s];
                    (
                        d.record.id.clone(),
                        v.iter().zip(&q.1).map(|(a, b)| a * b).sum(),
                    )
                })
                .collect();
            all.sort_by(|a, b| b.1.total_cmp(&a.1));
            found += all[..10]
                .iter()
                .filter(|(id, _)| through_graph.contains(id))
                .count();
        }
        assert!(found >= 380, "recall at 10 through the graph: {found}/400");
        let passed_over = || {
            ix.graph_passed_over
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        assert_eq!(passed_over(), 0, "every search went through the graph");

        // A filter few versions pass: the graph finds fewer than asked, so every embedding is
        // compared, and the answer is exact.
        let rare = |d: &Doc| d.record.id.ends_with("077");
        let hits = ix.nearest(&vs[3].1, &scope, &rare, 10);
        let mut expected: Vec<(String, f32)> = ix.by_scope["user:big"]
            .slots
            .iter()
            .filter_map(|s| {
                let d = ix.slots[*s as usize].as_ref()?;
                rare(d).then(|| {
                    let v = &ix.vectors[s];
                    (
                        d.record.id.clone(),
                        v.iter().zip(&vs[3].1).map(|(a, b)| a * b).sum(),
                    )
                })
            })
            .collect();
        expected.sort_by(|a, b| b.1.total_cmp(&a.1));
        expected.truncate(10);
        assert_eq!(
            ids(&hits),
            expected.into_iter().map(|e| e.0).collect::<Vec<_>>()
        );
        assert_eq!(passed_over(), 1, "the rare filter compared every embedding");

        // Another scope's versions never come back through this scope's graph.
        let both = ["user:big".to_string(), "user:small".to_string()];
        assert!(ids(&ix.nearest(&vs[0].1, &both, &|_| true, 10)).contains(&"s0".to_string()));
        assert!(!near(&ix, &vs[0].1, &|_| true).contains(&"s0".to_string()));

        // Emptied, the scope and its graph go; filled again, it is searched exactly until
        // a new graph is built — a graph built for the old scope is not installed.
        let stale = ix.graphs_wanted();
        assert!(stale.is_empty());
        for i in 0..=n {
            ix.remove(&format!("m{i}"));
        }
        assert_eq!(ix.graphs(), (0, 0));
        ix.upsert(big(1));
        ix.set_vector("m1", vs[1].1.clone());
        assert_eq!(near(&ix, &vs[1].1, &|_| true), ["m1"]);
        assert_eq!(build_graphs(&mut ix), 0, "small again: no graph wanted");
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
