//! Inclusion proofs (RFC 6962 audit paths): the sibling hashes from a record's leaf up to the
//! root of a tree of a given size, so anyone holding a signed checkpoint can check that a record
//! is in the log, unchanged, without the rest of the log.

use steward_store::merkle::{node_hash, Hash};

/// Every level of a tree over `leaves`, leaves first. A lone last node is carried up as it is,
/// which builds exactly RFC 6962's tree for any size.
pub struct Tree {
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    pub fn new(leaves: Vec<Hash>) -> Self {
        let mut levels = vec![leaves];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let below = levels.last().map(Vec::as_slice).unwrap_or_default();
            let up: Vec<Hash> = below
                .chunks(2)
                .map(|p| match p {
                    [l, r] => node_hash(l, r),
                    [one] => *one,
                    _ => unreachable!("chunks(2) yields one or two"),
                })
                .collect();
            levels.push(up);
        }
        Tree { levels }
    }

    pub fn size(&self) -> usize {
        self.levels[0].len()
    }

    pub fn root(&self) -> Option<Hash> {
        self.levels.last().and_then(|l| l.first()).copied()
    }

    /// The audit path of leaf `index`, bottom up.
    pub fn proof(&self, index: usize) -> Vec<Hash> {
        let mut path = Vec::new();
        let mut i = index;
        for level in &self.levels[..self.levels.len().saturating_sub(1)] {
            let sibling = i ^ 1;
            if sibling < level.len() {
                path.push(level[sibling]);
            }
            i /= 2;
        }
        path
    }
}

/// Whether `proof` leads from `leaf` at `index` in a tree of `size` leaves to `root`
/// (RFC 9162, section 2.1.3.2).
pub fn verify_inclusion(leaf: Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = leaf;
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && &r == root
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_store::merkle::{leaf_hash, Frontier};

    #[test]
    fn every_leaf_proves_against_the_frontier_root() {
        for n in 1..=33u64 {
            let leaves: Vec<Hash> = (0..n as i64).map(|i| leaf_hash(i, b"r")).collect();
            let mut f = Frontier::default();
            leaves.iter().for_each(|l| f.push(*l));
            let tree = Tree::new(leaves.clone());
            assert_eq!(tree.root(), Some(f.root()), "size {n}");
            for (i, leaf) in leaves.iter().enumerate() {
                let p = tree.proof(i);
                assert!(
                    verify_inclusion(*leaf, i as u64, n, &p, &f.root()),
                    "{i} of {n}"
                );
                let wrong = leaf_hash(i as i64, b"changed");
                assert!(!verify_inclusion(wrong, i as u64, n, &p, &f.root()));
            }
        }
    }
}
