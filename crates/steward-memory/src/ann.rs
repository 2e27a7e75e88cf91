//! Approximate nearest neighbours for the big scopes: an HNSW graph (usearch) over one scope's
//! embeddings. Like the rest of the index it is derived from the store — built in the
//! background from the vectors the index holds, followed as they change, built again on start
//! — and only ever proposes candidates: the index scores them with its own copy of each
//! embedding and applies every filter itself.
//!
//! Each distinct embedding is one node of the graph, whatever number of the index's slots
//! share it: memories repeat word for word ("ok", "thanks!"), and an HNSW graph whose nodes
//! have dozens of identical copies links copies to copies and loses its way (recall at 10 fell
//! from 0.99 to 0.82 with 100 copies of each vector, in a test of 10k).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

/// A scope's graph over the embeddings of one length (one model's).
pub struct Graph {
    dims: usize,
    index: Index,
    /// Slots by the node of the embedding they have. A node's key is a hash of the vector's
    /// bits: a collision would only make a slot a candidate through another's vector, and
    /// every candidate is scored with its own.
    slots_of: HashMap<u64, Vec<u32>>,
    node_of: HashMap<u32, u64>,
}

/// The key of an embedding's node: its bits, hashed.
fn node_key(v: &[f32]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for x in v {
        x.to_bits().hash(&mut h);
    }
    h.finish()
}

impl Graph {
    /// A graph of `vectors` of length `dims` (others are left out), its distinct embeddings
    /// added from `threads` threads at once.
    pub fn build(
        dims: usize,
        vectors: &[(u32, Vec<f32>)],
        threads: usize,
    ) -> Result<Graph, String> {
        let options = IndexOptions {
            dimensions: dims,
            // Embeddings are unit length: the inner product is the cosine.
            metric: MetricKind::IP,
            // Full precision: vectors of other types are converted without SIMD in this build,
            // dozens of times slower to add.
            quantization: ScalarKind::F32,
            ..IndexOptions::default()
        };
        let index = Index::new(&options).map_err(|e| e.to_string())?;
        let threads = threads.clamp(1, 16);
        let mut graph = Graph {
            dims,
            index,
            slots_of: HashMap::new(),
            node_of: HashMap::new(),
        };
        let mut distinct: Vec<(u64, &[f32])> = Vec::new();
        for (slot, v) in vectors.iter().filter(|(_, v)| v.len() == dims) {
            let key = node_key(v);
            let slots = graph.slots_of.entry(key).or_default();
            if slots.is_empty() {
                distinct.push((key, v));
            }
            slots.push(*slot);
            graph.node_of.insert(*slot, key);
        }
        graph
            .index
            .reserve_capacity_and_threads(distinct.len().max(64), threads.max(4))
            .map_err(|e| e.to_string())?;
        let chunk = distinct.len().div_ceil(threads).max(1);
        let index = &graph.index;
        let failed = std::thread::scope(|s| {
            let workers: Vec<_> = distinct
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || {
                        part.iter()
                            .find_map(|(key, v)| index.add(*key, v).err())
                            .map(|e| e.to_string())
                    })
                })
                .collect();
            workers.into_iter().find_map(|w| {
                w.join()
                    .unwrap_or_else(|_| Some("a worker panicked".into()))
            })
        });
        match failed {
            Some(e) => Err(e),
            None => Ok(graph),
        }
    }

    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Slots in the graph.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.node_of.len()
    }

    /// Distinct embeddings in the graph.
    #[cfg(test)]
    pub fn nodes(&self) -> usize {
        self.index.size()
    }

    /// Adds (or replaces) a slot's embedding; whether it could (an error leaves the graph
    /// missing that slot, and the caller drops the graph rather than search an incomplete one).
    pub fn put(&mut self, slot: u32, v: &[f32]) -> bool {
        if v.len() != self.dims {
            return false;
        }
        self.remove(slot);
        let key = node_key(v);
        if let Some(slots) = self.slots_of.get_mut(&key) {
            slots.push(slot);
            self.node_of.insert(slot, key);
            return true;
        }
        if self.index.size() + 1 >= self.index.capacity() {
            let grown = (self.index.capacity() * 2).max(64);
            if self.index.reserve(grown).is_err() {
                return false;
            }
        }
        if self.index.add(key, v).is_err() {
            return false;
        }
        self.slots_of.insert(key, vec![slot]);
        self.node_of.insert(slot, key);
        true
    }

    pub fn remove(&mut self, slot: u32) {
        let Some(key) = self.node_of.remove(&slot) else {
            return;
        };
        let Some(slots) = self.slots_of.get_mut(&key) else {
            return;
        };
        slots.retain(|s| *s != slot);
        if slots.is_empty() {
            self.slots_of.remove(&key);
            let _ = self.index.remove(key);
        }
    }

    /// Slots near `q` that `keep` accepts, nearest first (approximately): every accepted slot
    /// of each of the `count` nearest embeddings that have one (so at least `count` slots,
    /// unless the graph finds fewer).
    pub fn search(&self, q: &[f32], count: usize, keep: &dyn Fn(u32) -> bool) -> Vec<u32> {
        if q.len() != self.dims || count == 0 {
            return Vec::new();
        }
        let accepted = |key: u64| {
            self.slots_of
                .get(&key)
                .is_some_and(|slots| slots.iter().any(|s| keep(*s)))
        };
        match self.index.filtered_search(q, count, accepted) {
            Ok(m) => m
                .keys
                .iter()
                .filter_map(|k| self.slots_of.get(k))
                .flat_map(|slots| slots.iter().copied().filter(|s| keep(*s)))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "searching a memory scope's graph failed; comparing every embedding instead");
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic unit vectors around a few centres, as embeddings of related texts are.
    pub(crate) fn vectors(n: usize, dims: usize, seed: u64) -> Vec<(u32, Vec<f32>)> {
        let mut s = seed | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f32 / (1u64 << 53) as f32 - 0.5
        };
        let centres: Vec<Vec<f32>> = (0..20)
            .map(|_| (0..dims).map(|_| next()).collect())
            .collect();
        (0..n)
            .map(|i| {
                let mut v: Vec<f32> = centres[i % 20].iter().map(|c| c + 0.5 * next()).collect();
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.iter_mut().for_each(|x| *x /= norm);
                (i as u32, v)
            })
            .collect()
    }

    fn exact(all: &[(u32, Vec<f32>)], q: &[f32], k: usize, keep: &dyn Fn(u32) -> bool) -> Vec<u32> {
        let mut scored: Vec<(u32, f32)> = all
            .iter()
            .filter(|(s, _)| keep(*s))
            .map(|(s, v)| (*s, v.iter().zip(q).map(|(a, b)| a * b).sum()))
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        scored.into_iter().take(k).map(|x| x.0).collect()
    }

    #[test]
    fn the_graph_finds_what_comparing_everything_finds() {
        let all = vectors(3000, 32, 7);
        let g = Graph::build(32, &all, 2).unwrap();
        assert_eq!(g.len(), 3000);
        assert_eq!(g.nodes(), 3000);
        let (mut found, mut asked) = (0, 0);
        for q in vectors(50, 32, 99) {
            let truth = exact(&all, &q.1, 10, &|_| true);
            let got = g.search(&q.1, 10, &|_| true);
            found += got.iter().filter(|s| truth.contains(s)).count();
            asked += truth.len();
        }
        let recall = found as f64 / asked as f64;
        assert!(recall > 0.95, "recall at 10: {recall}");

        // A filter is applied inside the search: only accepted slots come back.
        let q = &vectors(1, 32, 5)[0].1;
        let odd = g.search(q, 10, &|s| s % 2 == 1);
        assert_eq!(odd.len(), 10);
        assert!(odd.iter().all(|s| s % 2 == 1), "{odd:?}");
    }

    #[test]
    fn removed_and_replaced_slots_follow() {
        let all = vectors(500, 16, 3);
        let mut g = Graph::build(16, &all, 1).unwrap();
        let q = all[42].1.clone();
        assert_eq!(g.search(&q, 1, &|_| true), [42]);
        g.remove(42);
        assert!(!g.search(&q, 10, &|_| true).contains(&42));
        // A slot reused for another embedding is found by the new one.
        assert!(g.put(42, &all[7].1));
        assert!(g.search(&all[7].1, 2, &|_| true).contains(&42));
        // Growing past what was reserved.
        for (slot, v) in vectors(600, 16, 11) {
            assert!(g.put(slot + 1000, &v));
        }
        assert_eq!(g.len(), 1100);
        assert!(!g.put(9999, &[1.0; 3]), "another length is refused");
        assert!(g.search(&[1.0; 3], 5, &|_| true).is_empty());
    }

    #[test]
    fn copies_of_one_embedding_share_a_node_and_are_all_found() {
        // 100 distinct embeddings, 40 slots each: the graph has 100 nodes, and the nearest
        // node brings every slot that has it.
        let distinct = vectors(100, 32, 13);
        let all: Vec<(u32, Vec<f32>)> = (0..4000u32)
            .map(|slot| (slot, distinct[slot as usize % 100].1.clone()))
            .collect();
        let mut g = Graph::build(32, &all, 2).unwrap();
        assert_eq!((g.len(), g.nodes()), (4000, 100));
        let (mut found, mut asked) = (0, 0);
        for q in vectors(30, 32, 101) {
            let truth = exact(&distinct, &q.1, 5, &|_| true);
            let got = g.search(&q.1, 5, &|_| true);
            assert_eq!(got.len(), 5 * 40, "every copy of each node found");
            let nodes: Vec<u32> = got.iter().map(|s| s % 100).collect();
            found += truth.iter().filter(|t| nodes.contains(t)).count();
            asked += truth.len();
        }
        assert!(found as f64 / asked as f64 > 0.95, "{found}/{asked}");
        // A filter picks among the copies; removing a copy leaves the others.
        let q = distinct[7].1.clone();
        assert_eq!(g.search(&q, 1, &|s| s == 307), [307]);
        g.remove(307);
        assert!(g.search(&q, 1, &|s| s == 307).is_empty());
        assert!(g.search(&q, 1, &|_| true).contains(&7));
        for copy in 0..40 {
            g.remove(7 + 100 * copy);
        }
        assert_eq!(g.nodes(), 99, "the last copy takes its node");
        assert!(g.put(7, &q));
        assert_eq!(g.nodes(), 100);
    }
}
