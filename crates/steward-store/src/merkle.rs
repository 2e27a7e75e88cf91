//! The audit log's Merkle tree, as RFC 6962 defines it: leaves hashed with a 0x00 prefix,
//! interior nodes with 0x01, and a tree of any size split at the largest power of two below it.
//! The right edge of the tree (`Frontier`) is all an append needs.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// A record's leaf: its position and its body, so moving a body to another position changes
/// its hash.
pub fn leaf_hash(seq: i64, body: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(seq.to_be_bytes());
    h.update(body);
    h.finalize().into()
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// SHA-256 of nothing: the root of the empty tree.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The roots of the perfect subtrees along the tree's right edge, largest first, with their
/// heights: enough to append a leaf and to compute the root.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    nodes: Vec<(u32, Hash)>,
}

impl Frontier {
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn push(&mut self, leaf: Hash) {
        let mut node = (0u32, leaf);
        while let Some(&(height, left)) = self.nodes.last() {
            if height != node.0 {
                break;
            }
            self.nodes.pop();
            node = (height + 1, node_hash(&left, &node.1));
        }
        self.nodes.push(node);
        self.size += 1;
    }

    /// The tree's root (RFC 6962 MTH): the subtrees folded from the right.
    pub fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        let Some(&(_, mut acc)) = it.next() else {
            return empty_root();
        };
        for (_, left) in it {
            acc = node_hash(left, &acc);
        }
        acc
    }

    /// Hex of each subtree root, largest first (heights follow from the size).
    pub fn to_json(&self) -> String {
        let v: Vec<String> = self.nodes.iter().map(|(_, h)| hex(h)).collect();
        serde_json::to_string(&v).unwrap_or_else(|_| "[]".into())
    }

    pub fn from_json(size: u64, json: &str) -> Option<Self> {
        let hexes: Vec<String> = serde_json::from_str(json).ok()?;
        // The perfect subtrees are the set bits of the size, largest first.
        let heights: Vec<u32> = (0..64u32).rev().filter(|b| size >> b & 1 == 1).collect();
        if heights.len() != hexes.len() {
            return None;
        }
        let nodes = heights
            .into_iter()
            .zip(hexes)
            .map(|(h, x)| Some((h, unhex(&x)?)))
            .collect::<Option<Vec<_>>>()?;
        Some(Frontier { size, nodes })
    }
}

pub fn hex(h: &[u8]) -> String {
    hex::encode(h)
}

pub fn unhex(s: &str) -> Option<Hash> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6962's recursive definition, to check the frontier against.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = 1usize << (usize::BITS - (n - 1).leading_zeros() - 1);
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    #[test]
    fn the_frontier_root_is_rfc6962s() {
        let mut f = Frontier::default();
        let mut leaves = Vec::new();
        assert_eq!(f.root(), empty_root());
        for i in 0..40 {
            let l = leaf_hash(i, format!("record {i}").as_bytes());
            leaves.push(l);
            f.push(l);
            assert_eq!(f.root(), mth(&leaves), "size {}", i + 1);
            let back = Frontier::from_json(f.size(), &f.to_json()).unwrap();
            assert_eq!(back, f);
        }
    }
}
