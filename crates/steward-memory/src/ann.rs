//! Approximate nearest neighbours for the big scopes: an HNSW graph (usearch) over one scope's
//! embeddings, keyed by the index's slots. Like the rest of the index it is derived from the
//! store — built in the background from the vectors the index holds, followed as they change,
//! built again on start — and only ever proposes candidates: the index scores them with its
//! own copy of each embedding and applies every filter itself.

use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

/// A scope's graph over the embeddings of one length (one model's).
pub struct Graph {
    dims: usize,
    index: Index,
}

impl Graph {
    /// A graph of `vectors`, all of length `dims`, added from `threads` threads at once.
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
        index
            .reserve_capacity_and_threads(vectors.len().max(64), threads.max(4))
            .map_err(|e| e.to_string())?;
        let graph = Graph { dims, index };
        let chunk = vectors.len().div_ceil(threads).max(1);
        let failed = std::thread::scope(|s| {
            let workers: Vec<_> = vectors
                .chunks(chunk)
                .map(|part| {
                    let graph = &graph;
                    s.spawn(move || {
                        part.iter()
                            .find_map(|(slot, v)| graph.index.add(u64::from(*slot), v).err())
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

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.index.size()
    }

    /// Adds (or replaces) a slot's embedding; whether it could (an error leaves the graph
    /// missing that slot, and the caller drops the graph rather than search an incomplete one).
    pub fn put(&self, slot: u32, v: &[f32]) -> bool {
        if v.len() != self.dims {
            return false;
        }
        self.remove(slot);
        if self.index.size() + 1 >= self.index.capacity() {
            let grown = (self.index.capacity() * 2).max(64);
            if self.index.reserve(grown).is_err() {
                return false;
            }
        }
        self.index.add(u64::from(slot), v).is_ok()
    }

    pub fn remove(&self, slot: u32) {
        if self.index.contains(u64::from(slot)) {
            let _ = self.index.remove(u64::from(slot));
        }
    }

    /// Up to `count` slots near `q` that `keep` accepts, nearest first (approximately).
    pub fn search(&self, q: &[f32], count: usize, keep: &dyn Fn(u32) -> bool) -> Vec<u32> {
        if q.len() != self.dims || count == 0 {
            return Vec::new();
        }
        let found = self.index.filtered_search(q, count, |key: u64| {
            u32::try_from(key).map(&keep).unwrap_or(false)
        });
        match found {
            Ok(m) => m
                .keys
                .into_iter()
                .filter_map(|k| u32::try_from(k).ok())
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
        let g = Graph::build(16, &all, 1).unwrap();
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
}
