//! [`BlockManager`]: ownership of the KV cache's blocks, and the prefix cache that lets
//! sequences share them (vLLM's block manager with its hash-chained prefix caching).
//!
//! The backend's cache is an array of `num_blocks` blocks of [`rill_proto::BLOCK_SIZE`]
//! tokens; this struct decides who owns which. Every block is in exactly one state:
//!
//! - **free**: no owner, no content worth keeping;
//! - **cached**: no owner, but it holds the K/V of a full block of tokens whose
//!   [`BlockHash`] it is registered under, so a later sequence with the same prefix can
//!   take it instead of computing it again; cached blocks are evictable, least recently
//!   released first;
//! - **in use**: held by `ref_count` sequences (more than one when a prefix is shared).
//!
//! A block's hash chains its parent's hash with its token ids ([`BlockManager::chain`]);
//! the chain starts at a root that covers everything else that changes K/V — the model
//! and its dtype, and a request's `cache_salt` ([`BlockManager::root`]). Hashes are
//! blake3 keyed with a key drawn at start-up, so another tenant can neither predict nor
//! provoke a collision. Only full blocks are hashed: a sequence's last partial block is
//! always its own.
//!
//! [`BlockManager::allocate`] takes free blocks first, then evicts cached ones, least
//! recently released first ([`BlockManager::free`] releases a sequence's blocks tail
//! first, so a prompt's tail goes before the prefix other prompts share).
//! [`BlockManager::check_invariants`] verifies the three sets, the counts and the hash
//! index agree, and runs after every mutation in debug builds.
//!
//! With [`BlockManager::record_events`], every change to the set of hashed blocks is
//! also logged as a [`KvEvent`] (vLLM's KV events), for prefix-aware routers.

use std::collections::{BTreeSet, HashMap};

use rill_proto::{BlockId, TokenId};

/// The identity of a full block's contents: its tokens and everything before them.
pub type BlockHash = [u8; 32];

#[derive(Clone, Debug, Default)]
struct Block {
    /// Sequences holding it; 0 = free or cached.
    ref_count: u32,
    /// Registered under this hash (its K/V is that of the hashed tokens).
    hash: Option<BlockHash>,
    /// When it was last released to the cached pool (its key there).
    released_at: u64,
}

/// A change to the set of hashed blocks (vLLM's `BlockStored` / `BlockRemoved` /
/// `AllBlocksCleared`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvEvent {
    /// A full block of `tokens` is now registered under `hash`, after the block hashed
    /// `parent` (`None` for a sequence's first block).
    Stored { hash: BlockHash, parent: Option<BlockHash>, tokens: Vec<u32> },
    /// No block is registered under `hash` any more (evicted, or its step failed).
    Removed { hash: BlockHash },
    /// Nothing is cached (a fresh engine).
    AllCleared,
}

/// What the prefix cache did since start-up (the metrics' counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Prompt tokens looked up in the cache.
    pub queried_tokens: u64,
    /// Of those, tokens whose K/V came from the cache.
    pub hit_tokens: u64,
    /// Cached blocks evicted to make room.
    pub evictions: u64,
}

#[derive(Debug)]
pub struct BlockManager {
    blocks: Vec<Block>,
    /// Free blocks, popped from the end (recently freed blocks are reused first).
    free: Vec<BlockId>,
    /// Cached blocks with no owner, by release time: evicted from the front.
    evictable: BTreeSet<(u64, BlockId)>,
    /// Every hashed block (cached or in use) by its hash; hashes are unique.
    by_hash: HashMap<BlockHash, BlockId>,
    /// The keyed hasher; `None` when prefix caching is off.
    hasher: Option<blake3::Hasher>,
    /// The root of every chain (model, dtype), before a request's salt.
    namespace: BlockHash,
    clock: u64,
    stats: CacheStats,
    /// Changes to the hashed set since the last [`BlockManager::take_events`], when
    /// recording ([`BlockManager::record_events`]).
    events: Option<Vec<KvEvent>>,
}

impl BlockManager {
    /// A cache of `num_blocks` blocks without prefix caching: blocks are freed, never
    /// kept.
    pub fn new(num_blocks: usize) -> Self {
        BlockManager {
            blocks: vec![Block::default(); num_blocks],
            free: (0..num_blocks as u32).rev().map(BlockId).collect(),
            evictable: BTreeSet::new(),
            by_hash: HashMap::new(),
            hasher: None,
            namespace: [0; 32],
            clock: 0,
            stats: CacheStats::default(),
            events: None,
        }
    }

    /// Log every change to the set of hashed blocks from now on, starting with
    /// [`KvEvent::AllCleared`] (nothing is cached yet, whatever a subscriber knew).
    pub fn record_events(&mut self) {
        self.events = Some(vec![KvEvent::AllCleared]);
    }

    /// The changes logged since the last call (empty when not recording).
    pub fn take_events(&mut self) -> Vec<KvEvent> {
        self.events.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Log `event` when recording.
    fn log(&mut self, event: KvEvent) {
        if let Some(events) = &mut self.events {
            events.push(event);
        }
    }

    /// With prefix caching: blocks are hashed under `key` (draw it at random: see
    /// [`random_key`]) and a chain root that covers `namespace` (the model and dtype,
    /// whatever else changes every K/V).
    pub fn with_prefix_caching(num_blocks: usize, key: [u8; 32], namespace: &str) -> Self {
        let hasher = blake3::Hasher::new_keyed(&key);
        let namespace = *hasher
            .clone()
            .update(b"rill-prefix-v1\0")
            .update(namespace.as_bytes())
            .finalize()
            .as_bytes();
        BlockManager { hasher: Some(hasher), namespace, ..BlockManager::new(num_blocks) }
    }

    /// Whether blocks are kept for later sequences.
    pub fn caching(&self) -> bool {
        self.hasher.is_some()
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks with no owner and no content.
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Blocks with no owner that keep a prefix's K/V until evicted.
    pub fn num_cached(&self) -> usize {
        self.evictable.len()
    }

    /// Blocks an allocation may take: free, then evicted.
    pub fn num_available(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    /// Blocks held by sequences.
    pub fn num_used(&self) -> usize {
        self.num_blocks() - self.num_available()
    }

    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Sequences holding block `b`.
    pub fn ref_count(&self, b: BlockId) -> u32 {
        self.blocks[b.index()].ref_count
    }

    /// The first hash of a chain: the namespace and a request's salt (`None` and the
    /// empty salt are one and the same: no salt).
    pub fn root(&self, salt: Option<&str>) -> BlockHash {
        let Some(h) = &self.hasher else { return [0; 32] };
        let mut h = h.clone();
        h.update(&self.namespace).update(b"salt\0");
        if let Some(salt) = salt {
            h.update(&(salt.len() as u64).to_le_bytes()).update(salt.as_bytes());
        }
        *h.finalize().as_bytes()
    }

    /// The hash of a full block of `tokens` after the block hashed `parent`.
    pub fn chain(&self, parent: &BlockHash, tokens: &[TokenId]) -> BlockHash {
        let Some(h) = &self.hasher else { return [0; 32] };
        let mut h = h.clone();
        h.update(parent);
        for t in tokens {
            h.update(&t.0.to_le_bytes());
        }
        *h.finalize().as_bytes()
    }

    /// Whether `n` blocks can be allocated now.
    pub fn can_allocate(&self, n: usize) -> bool {
        n <= self.num_available()
    }

    /// Take `n` blocks, free ones first, then evicting the least recently released
    /// cached ones; or none if fewer than `n` are available.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if !self.can_allocate(n) {
            return None;
        }
        let from_free = n.min(self.free.len());
        let mut blocks = self.free.split_off(self.free.len() - from_free);
        while blocks.len() < n {
            let (_, b) = self.evictable.pop_first().expect("counted as available");
            let hash = self.blocks[b.index()].hash.take().expect("cached blocks are hashed");
            self.by_hash.remove(&hash);
            self.log(KvEvent::Removed { hash });
            self.stats.evictions += 1;
            blocks.push(b);
        }
        for b in &blocks {
            self.blocks[b.index()].ref_count = 1;
        }
        debug_assert!(self.check_invariants().is_ok(), "{:?}", self.check_invariants());
        Some(blocks)
    }

    /// Take the blocks registered under the longest run of `hashes` (a sequence's chain,
    /// first block first) for one more sequence; `tokens` is how many prompt tokens the
    /// lookup was for (the queries metric). Cached blocks leave the evictable pool.
    pub fn match_prefix(&mut self, hashes: &[BlockHash], tokens: usize) -> Vec<BlockId> {
        if !self.caching() {
            return Vec::new();
        }
        let mut matched = Vec::new();
        for hash in hashes {
            let Some(&b) = self.by_hash.get(hash) else { break };
            let block = &mut self.blocks[b.index()];
            if block.ref_count == 0 {
                self.evictable.remove(&(block.released_at, b));
            }
            block.ref_count += 1;
            matched.push(b);
        }
        self.stats.queried_tokens += tokens as u64;
        self.stats.hit_tokens += (matched.len() * rill_proto::BLOCK_SIZE) as u64;
        debug_assert!(self.check_invariants().is_ok(), "{:?}", self.check_invariants());
        matched
    }

    /// Register in-use block `b` as holding the full block hashed `hash` (it is, or will
    /// be once the step that fills it has run: a step writes every layer's K/V before that
    /// layer's attention reads it, so a sequence of the same step may already share it).
    /// When another block already holds that content, `b` stays unregistered (it is freed,
    /// not cached, when released). No-op without prefix caching. `parent` and `tokens`
    /// (the block's) are for the [`KvEvent::Stored`] it logs.
    pub fn register(
        &mut self,
        b: BlockId,
        hash: BlockHash,
        parent: Option<BlockHash>,
        tokens: &[TokenId],
    ) {
        if !self.caching() || self.by_hash.contains_key(&hash) {
            return;
        }
        let block = &mut self.blocks[b.index()];
        debug_assert!(block.ref_count > 0 && block.hash.is_none(), "{b:?}: {block:?}");
        if block.hash.is_none() {
            block.hash = Some(hash);
            self.by_hash.insert(hash, b);
            if self.events.is_some() {
                let tokens = tokens.iter().map(|t| t.0).collect();
                self.log(KvEvent::Stored { hash, parent, tokens });
            }
        }
    }

    /// Whether `b` is registered under a hash.
    pub fn is_registered(&self, b: BlockId) -> bool {
        self.blocks[b.index()].hash.is_some()
    }

    /// Unregister in-use block `b`: its contents are not what its hash says (the step
    /// that was to fill it failed).
    pub fn forget(&mut self, b: BlockId) {
        if let Some(hash) = self.blocks[b.index()].hash.take() {
            self.by_hash.remove(&hash);
            self.log(KvEvent::Removed { hash });
        }
    }

    /// Give blocks back, in the order given: the last block a sequence released first
    /// is the first evicted, so pass a sequence's blocks tail first. A registered block
    /// nobody holds any more is cached; others are free. Freeing a block that is not in
    /// use is a bug in the caller.
    pub fn free(&mut self, blocks: impl IntoIterator<Item = BlockId>) {
        for b in blocks {
            let block = &mut self.blocks[b.index()];
            assert!(block.ref_count > 0, "double free of {b:?}");
            block.ref_count -= 1;
            if block.ref_count > 0 {
                continue;
            }
            if block.hash.is_some() {
                self.clock += 1;
                block.released_at = self.clock;
                self.evictable.insert((self.clock, b));
            } else {
                self.free.push(b);
            }
        }
        debug_assert!(self.check_invariants().is_ok(), "{:?}", self.check_invariants());
    }

    /// Every block is in exactly one of the free list (no owner, no hash), the
    /// evictable pool (no owner, a hash) and the in-use set (owners); the hash index holds
    /// exactly the hashed blocks, each hash once.
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
            let block = &self.blocks[i];
            if block.ref_count != 0 || block.hash.is_some() {
                return Err(format!("{b:?} is free but is {block:?}"));
            }
        }
        for &(at, b) in &self.evictable {
            let i = b.index();
            if i >= seen.len() {
                return Err(format!("evictable pool holds {b:?}, outside the cache"));
            }
            if std::mem::replace(&mut seen[i], true) {
                return Err(format!("{b:?} is free and evictable, or evictable twice"));
            }
            let block = &self.blocks[i];
            if block.ref_count != 0 || block.hash.is_none() || block.released_at != at {
                return Err(format!("{b:?} is evictable at {at} but is {block:?}"));
            }
        }
        for (i, block) in self.blocks.iter().enumerate() {
            if !seen[i] && block.ref_count == 0 {
                return Err(format!("block {i} has no owner but is neither free nor cached"));
            }
            if let Some(hash) = &block.hash
                && self.by_hash.get(hash).map(|b| b.index()) != Some(i)
            {
                return Err(format!("block {i} is hashed but not indexed under its hash"));
            }
        }
        let hashed = self.blocks.iter().filter(|b| b.hash.is_some()).count();
        if hashed != self.by_hash.len() {
            return Err(format!("{} hashes index {hashed} hashed blocks", self.by_hash.len()));
        }
        if !self.caching() && hashed > 0 {
            return Err("blocks are hashed with prefix caching off".into());
        }
        Ok(())
    }
}

/// A key for [`BlockManager::with_prefix_caching`] from the operating system's random
/// source.
pub fn random_key() -> [u8; 32] {
    let mut key = [0; 32];
    getrandom::fill(&mut key).expect("the operating system has a random source");
    key
}
