//! Which KV blocks are free, which sequences hold which, and which full blocks are kept for
//! prefix reuse.
//!
//! A full block is named by a hash chain: its tokens and the hash of the block before it, so a
//! match means the whole prefix up to it is the same. A block whose last holder finishes keeps
//! its contents and stays findable until its memory is needed; then the least recently used
//! such block is taken. Full blocks are never written again, so sharing one between sequences
//! needs no copy: a sequence writes only into blocks it allocated itself.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use exo_models::BLOCK_TOKENS;

/// The hash chain's value for the empty prefix.
pub(crate) const ROOT: u64 = 0;

/// The hash of a full block holding `tokens` after the prefix hashed as `parent`.
pub(crate) fn chain(parent: u64, tokens: &[u32]) -> u64 {
    // SipHash with fixed keys: the same prefix gets the same name in every process.
    let mut h = std::hash::DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

/// What a cached block holds, checked on lookup so a hash collision cannot splice in a block of
/// other tokens.
struct Cached {
    hash: u64,
    parent: u64,
    tokens: [u32; BLOCK_TOKENS],
}

/// Prefix-cache counters, in tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixStats {
    /// Prompt tokens looked up (whole blocks only).
    pub lookup_tokens: u64,
    /// Of those, tokens found cached and reused.
    pub hit_tokens: u64,
}

/// The allocator over a KV cache's blocks.
pub(crate) struct BlockPool {
    /// Holders of each block.
    refs: Vec<u32>,
    /// Free blocks with nothing worth keeping, lowest id on top (so the pages in use stay few).
    free: Vec<u32>,
    /// Blocks registered for prefix reuse, by block id.
    cached: Vec<Option<Cached>>,
    by_hash: HashMap<u64, u32>,
    /// Cached blocks nobody holds, by when they were last released (oldest first).
    idle: BTreeMap<u64, u32>,
    released_at: Vec<u64>,
    clock: u64,
    stats: PrefixStats,
}

impl BlockPool {
    /// A pool of `n` free blocks.
    pub(crate) fn new(n: usize) -> Self {
        Self {
            refs: vec![0; n],
            free: (0..n as u32).rev().collect(),
            cached: (0..n).map(|_| None).collect(),
            by_hash: HashMap::new(),
            idle: BTreeMap::new(),
            released_at: vec![0; n],
            clock: 0,
            stats: PrefixStats::default(),
        }
    }

    /// Blocks in the pool.
    pub(crate) fn total(&self) -> usize {
        self.refs.len()
    }

    /// Blocks an allocation can take now: free ones plus cached ones nobody holds.
    pub(crate) fn available(&self) -> usize {
        self.free.len() + self.idle.len()
    }

    /// Cached blocks nobody holds (kept for prefix reuse).
    pub(crate) fn idle_cached(&self) -> usize {
        self.idle.len()
    }

    /// Prefix-cache counters.
    pub(crate) fn stats(&self) -> PrefixStats {
        self.stats
    }

    /// A block for one holder: a free one, else the least recently used idle cached one (which
    /// stops being findable).
    pub(crate) fn alloc(&mut self) -> Option<u32> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.idle.pop_first()?;
                if let Some(c) = self.cached[b as usize].take() {
                    self.by_hash.remove(&c.hash);
                }
                b
            }
        };
        self.refs[b as usize] = 1;
        Some(b)
    }

    /// Drops one holder of `b`; with none left it becomes idle (if cached) or free.
    pub(crate) fn release(&mut self, b: u32) {
        let i = b as usize;
        self.refs[i] -= 1;
        if self.refs[i] > 0 {
            return;
        }
        if self.cached[i].is_some() {
            self.clock += 1;
            self.released_at[i] = self.clock;
            self.idle.insert(self.clock, b);
        } else {
            self.free.push(b);
        }
    }

    /// The cached block holding `tokens` after the prefix `parent`, with one more holder.
    pub(crate) fn lookup(&mut self, parent: u64, tokens: &[u32]) -> Option<u32> {
        self.stats.lookup_tokens += tokens.len() as u64;
        let hash = chain(parent, tokens);
        let b = *self.by_hash.get(&hash)?;
        let c = self.cached[b as usize].as_ref()?;
        if c.parent != parent || c.tokens[..] != *tokens {
            return None;
        }
        let i = b as usize;
        if self.refs[i] == 0 {
            self.idle.remove(&self.released_at[i]);
        }
        self.refs[i] += 1;
        self.stats.hit_tokens += tokens.len() as u64;
        Some(b)
    }

    /// Makes full block `b` (holding `tokens` after the prefix `parent`) findable; returns its
    /// hash. A block with the same contents already registered stays the one found.
    pub(crate) fn register(&mut self, b: u32, parent: u64, tokens: &[u32]) -> u64 {
        let hash = chain(parent, tokens);
        if self.cached[b as usize].is_none() && !self.by_hash.contains_key(&hash) {
            let mut t = [0; BLOCK_TOKENS];
            t.copy_from_slice(tokens);
            self.cached[b as usize] = Some(Cached { hash, parent, tokens: t });
            self.by_hash.insert(hash, b);
        }
        hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(start: u32) -> Vec<u32> {
        (start..start + BLOCK_TOKENS as u32).collect()
    }

    #[test]
    fn released_cached_blocks_are_found_until_their_memory_is_needed() {
        let mut pool = BlockPool::new(3);
        let a = pool.alloc().unwrap();
        let h = pool.register(a, ROOT, &block(0));
        pool.release(a);
        assert_eq!(pool.available(), 3);
        assert_eq!(pool.lookup(ROOT, &block(0)), Some(a));
        assert_eq!(pool.lookup(h, &block(0)), None, "same tokens after another prefix");
        pool.release(a);
        // Two free blocks go first; the third allocation evicts the idle cached one.
        let (x, y) = (pool.alloc().unwrap(), pool.alloc().unwrap());
        assert!(x != a && y != a);
        assert_eq!(pool.alloc(), Some(a));
        assert_eq!(pool.alloc(), None);
        for b in [x, y, a] {
            pool.release(b);
        }
        assert_eq!(pool.lookup(ROOT, &block(0)), None);
        assert_eq!(pool.available(), 3);
        assert_eq!(pool.stats(), PrefixStats { lookup_tokens: 48, hit_tokens: 16 });
    }

    #[test]
    fn shared_blocks_stay_held_until_every_holder_releases() {
        let mut pool = BlockPool::new(2);
        let a = pool.alloc().unwrap();
        pool.register(a, ROOT, &block(5));
        assert_eq!(pool.lookup(ROOT, &block(5)), Some(a));
        pool.release(a);
        assert_eq!(pool.available(), 1);
        pool.release(a);
        assert_eq!(pool.available(), 2);
        assert_eq!(pool.idle_cached(), 1);
    }
}
