//! [`BlockManager`]: ownership of the KV cache's blocks (vLLM's block manager).
//!
//! The backend's cache is an array of `num_blocks` blocks of [`rill_proto::BLOCK_SIZE`]
//! tokens; this struct decides who owns which. Blocks are reference-counted so a
//! later prefix cache can share them; today every used block has one owner.
//! [`BlockManager::check_invariants`] verifies the free list and the counts agree,
//! and runs after every mutation in debug builds.

use rill_proto::BlockId;

#[derive(Debug)]
pub struct BlockManager {
    /// Free blocks, popped from the end (recently freed blocks are reused first).
    free: Vec<BlockId>,
    /// Owners of each block; 0 = free.
    ref_counts: Vec<u32>,
}

impl BlockManager {
    pub fn new(num_blocks: usize) -> Self {
        let free = (0..num_blocks as u32).rev().map(BlockId).collect();
        BlockManager { free, ref_counts: vec![0; num_blocks] }
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    pub fn num_used(&self) -> usize {
        self.num_blocks() - self.num_free()
    }

    /// Take `n` blocks, or none if fewer than `n` are free.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.free.len() {
            return None;
        }
        let blocks = self.free.split_off(self.free.len() - n);
        for b in &blocks {
            self.ref_counts[b.index()] = 1;
        }
        debug_assert!(self.check_invariants().is_ok());
        Some(blocks)
    }

    /// Give blocks back. Freeing a block that is not in use is a bug in the caller.
    pub fn free(&mut self, blocks: impl IntoIterator<Item = BlockId>) {
        for b in blocks {
            let count = &mut self.ref_counts[b.index()];
            assert!(*count > 0, "double free of {b:?}");
            *count -= 1;
            if *count == 0 {
                self.free.push(b);
            }
        }
        debug_assert!(self.check_invariants().is_ok());
    }

    /// The free list holds exactly the blocks with no owner, each once.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut seen = vec![false; self.num_blocks()];
        for b in &self.free {
            let i = b.index();
            if i >= seen.len() {
                return Err(format!("free list holds {b:?}, outside the cache"));
            }
            if std::mem::replace(&mut seen[i], true) {
                return Err(format!("{b:?} is in the free list twice"));
            }
            if self.ref_counts[i] != 0 {
                return Err(format!("{b:?} is free but has {} owners", self.ref_counts[i]));
            }
        }
        let unowned = self.ref_counts.iter().filter(|&&c| c == 0).count();
        if unowned != self.free.len() {
            return Err(format!("{unowned} blocks have no owner but {} are free", self.free.len()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_until_exhausted_then_free_everything() {
        let mut bm = BlockManager::new(10);
        let a = bm.allocate(4).unwrap();
        let b = bm.allocate(6).unwrap();
        assert_eq!(bm.num_free(), 0);
        assert!(bm.allocate(1).is_none());
        let mut all: Vec<_> = a.iter().chain(&b).map(|b| b.0).collect();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        bm.free(a);
        assert_eq!(bm.num_free(), 4);
        bm.free(b);
        assert_eq!(bm.num_used(), 0);
        bm.check_invariants().unwrap();
    }

    #[test]
    fn a_failed_allocation_takes_nothing() {
        let mut bm = BlockManager::new(3);
        assert!(bm.allocate(4).is_none());
        assert_eq!(bm.num_free(), 3);
        assert_eq!(bm.allocate(0).unwrap(), vec![]);
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_is_caught() {
        let mut bm = BlockManager::new(2);
        let a = bm.allocate(1).unwrap();
        bm.free(a.clone());
        bm.free(a);
    }
}
