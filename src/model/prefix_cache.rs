//! The prefix cache: keys and values of prompt blocks already prefilled, kept per loaded model
//! and shared by every call in the process, so no call pays twice for a prefix.
//!
//! Prompts are prefilled in blocks of [`BLOCK`] tokens aligned to absolute positions (block `j`
//! covers positions `j·BLOCK .. (j+1)·BLOCK`), and the blocks computed by prefill are kept:
//! whole ones, and on the CPU a prompt's last, partial block (below). Block `j` is keyed by its own tokens and by the block before it (block 0 by the
//! weights it was computed with), so a key names every token before the block exactly — no
//! hashing of long prefixes, no collisions. A call starting from a cached prefix then runs the
//! same prefill steps on the same inputs as a call that starts from nothing, and its logits are
//! bit-identical: the cache changes how much is computed, never what.
//!
//! A call may also take the first rows of a cached block it shares only in part (the prompts of
//! a simulation part inside a block, where the closing question starts; a conversation's next
//! turn parts at the end of the previous prompt, inside its last block). By causality those
//! rows' keys and values do not depend on the tokens after them, provided each row's arithmetic
//! does not either: every prefill step's attention spans keys to its block's end (masked past
//! the step's last row) with enough query rows that gemm takes a whole block's path (zero
//! queries added to a short step; `Decoder::prefill`), and its projections take the same path
//! for any step of at least [`PART_MIN_ROWS`] rows. So a partial block of at least that many
//! rows is kept, and a call reaching that far into a block takes its shared rows and computes
//! the rest, short of [`RESUME_MIN_ROWS`]. Not for block 0 (a prompt's first step attends over
//! its exact keys, not the f16 cache), not under a live adapter (whose narrow products are not
//! the same row by row for different row counts), and not on a GPU (whose BLAS picks its
//! kernels by shape).
//!
//! Memory is bounded: whole blocks are evicted least recently used first (a block's ancestors
//! are always used at least as recently, so leaves go first), and nothing is kept beyond the
//! bound. Bound 0 turns the cache off.

use super::kv_cache::KvCache;
use super::Result;
use candle_core::Tensor;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Prompt tokens per block, and per prefill step (the same number: a cached prefix is reused
/// bit-exactly only if every call cuts its prefill steps at the same positions). The trade-off,
/// measured on the default model, two cores, a 1,024-token prompt from nothing: 2.8 s in
/// 512-token steps, 3.6 s in 128-token steps, 5.0 s in 64-token steps (each run layer by layer,
/// `Decoder::prefill`); a call that parts from a cached prompt after ~1,000 tokens recomputes up
/// to 127 of them.
pub const BLOCK: usize = 128;

/// Fewest rows a step resuming inside a block computes: fewer would take the dense projections'
/// few-row path (`grad::small_xwt`), whose arithmetic is not gemm's, so a call takes fewer of a
/// block's shared rows rather than compute less than this.
pub const RESUME_MIN_ROWS: usize = super::grad::SMALL_ROWS + 1;

/// Fewest rows of a block a prompt must reach for that block to be kept in part (its last,
/// partial block) or taken in part: a step of fewer rows runs the packed projections' integer
/// kernels (under `packed::EXACT_ROWS`), whose arithmetic differs from the dense product the
/// longer step a later call resumes with runs, so the rows would not match.
pub const PART_MIN_ROWS: usize = if super::packed::EXACT_ROWS > RESUME_MIN_ROWS {
    super::packed::EXACT_ROWS
} else {
    RESUME_MIN_ROWS
};

/// The bound of every model loaded from now on, when the user chose one (`--prefix-cache-mb`).
/// Process-wide like the thread count: one cache per loaded model, whoever loads it.
static CHOSEN_MB: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// Set the bound of the models this process loads (the first call wins).
pub fn choose_mb(mb: usize) {
    let _ = CHOSEN_MB.set(mb);
}

/// The bound a model loaded now gets: the chosen one, else on the CPU 512 MiB (about 22,000
/// tokens of the default model's f16 keys and values, 3,500 of an 8B Qwen3's) and on a GPU
/// 4 GiB.
pub fn default_mb(device: &candle_core::Device) -> usize {
    match CHOSEN_MB.get() {
        Some(&mb) => mb,
        None if device.is_cpu() => 512,
        None => 4096,
    }
}

/// What block 0 of a prompt is keyed by besides its tokens: the weights that computed it (see
/// `Decoder::cache_key`) — a different adapter, or the same adapter after a training step,
/// never shares blocks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WeightsKey {
    /// Changes whenever the decoder's weights may have changed.
    pub weights_id: u64,
    /// The live adapter, if any.
    pub adapter: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Parent {
    Root(WeightsKey),
    Block(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    parent: Parent,
    tokens: Box<[u32]>,
}

/// One block's keys and values, every layer: (1, kv_heads, BLOCK, head_dim) each.
pub type BlockKv = Arc<Vec<(Tensor, Tensor)>>;

struct Block {
    key: Key,
    kv: BlockKv,
    bytes: usize,
    last_used: u64,
    depth: usize,
}

#[derive(Default)]
struct Inner {
    bound: usize,
    used: usize,
    tick: u64,
    next_id: u64,
    ids: HashMap<Key, u64>,
    blocks: HashMap<u64, Block>,
}

/// What the cache holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PrefixCacheStats {
    pub bound_bytes: usize,
    pub used_bytes: usize,
    pub blocks: usize,
}

/// One loaded model's prefix cache (see the module's documentation). Safe to share between
/// threads: a lookup or an insertion holds the lock only to walk the keys, never while keys and
/// values are copied.
pub struct PrefixCache {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for PrefixCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrefixCache({:?})", self.stats())
    }
}

impl PrefixCache {
    /// A cache of at most `mb` MiB (0: off).
    pub fn new(mb: usize) -> PrefixCache {
        PrefixCache {
            inner: Mutex::new(Inner {
                bound: mb << 20,
                ..Default::default()
            }),
        }
    }

    /// Change the bound, evicting what no longer fits.
    pub fn set_bound_mb(&self, mb: usize) {
        let mut g = self.lock();
        g.bound = mb << 20;
        while g.used > g.bound && g.evict_one(&[]) {}
    }

    pub fn is_on(&self) -> bool {
        self.lock().bound > 0
    }

    pub fn stats(&self) -> PrefixCacheStats {
        let g = self.lock();
        PrefixCacheStats {
            bound_bytes: g.bound,
            used_bytes: g.used,
            blocks: g.blocks.len(),
        }
    }

    /// Drop every block.
    pub fn clear(&self) {
        let mut g = self.lock();
        g.ids.clear();
        g.blocks.clear();
        g.used = 0;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves the maps consistent (every mutation
        // below completes before it can panic), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached blocks that start `prompt`, in order, covering at most its first
    /// `max_tokens` positions, marked as just used: whole blocks, then (with `in_part`) the
    /// first rows of a block shared in part (see the module's documentation), narrowed to those
    /// rows. Only the CPU takes blocks in part: there gemm's rows do not depend on how many rows
    /// a product has, while a GPU's BLAS picks its kernels by shape.
    pub fn lookup(
        &self,
        weights: &WeightsKey,
        prompt: &[u32],
        max_tokens: usize,
        in_part: bool,
    ) -> Vec<BlockKv> {
        let mut g = self.lock();
        if g.bound == 0 {
            return vec![];
        }
        g.tick += 1;
        let tick = g.tick;
        let mut found = vec![];
        let mut parent = Parent::Root(weights.clone());
        let limit = max_tokens.min(prompt.len());
        for tokens in prompt[..limit].chunks_exact(BLOCK) {
            let key = Key {
                parent,
                tokens: tokens.into(),
            };
            let Some(&id) = g.ids.get(&key) else {
                parent = key.parent;
                break;
            };
            let b = g.blocks.get_mut(&id).expect("every id has its block");
            b.last_used = tick;
            found.push(b.kv.clone());
            parent = Parent::Block(id);
        }
        let j = found.len();
        if j == 0 || weights.adapter.is_some() || !in_part {
            return found;
        }
        // The block after the whole ones, when the prompt reaches PART_MIN_ROWS into it: the
        // cached block (whole or partial) under the same parent that shares the most of its
        // first tokens, leaving at least RESUME_MIN_ROWS rows to compute.
        let reach = prompt.len().min((j + 1) * BLOCK);
        if reach < j * BLOCK + PART_MIN_ROWS {
            return found;
        }
        let want = &prompt[j * BLOCK..limit.min(reach - RESUME_MIN_ROWS).max(j * BLOCK)];
        let best = g
            .blocks
            .iter()
            .filter(|(_, b)| b.key.parent == parent)
            .map(|(id, b)| {
                let shared = b
                    .key
                    .tokens
                    .iter()
                    .zip(want)
                    .take_while(|(x, y)| x == y)
                    .count();
                (shared, *id)
            })
            .max();
        if let Some((rows, id)) = best.filter(|(rows, _)| *rows > 0) {
            let b = g.blocks.get_mut(&id).expect("just found");
            b.last_used = tick;
            let kv = b.kv.clone();
            drop(g);
            let narrowed = kv
                .iter()
                .map(|(k, v)| {
                    let first = |t: &Tensor| t.narrow(2, 0, rows)?.contiguous();
                    Ok((first(k)?, first(v)?))
                })
                .collect::<std::result::Result<Vec<_>, candle_core::Error>>();
            if let Ok(n) = narrowed {
                found.push(Arc::new(n));
            }
        }
        found
    }

    /// Keep the whole blocks of `prompt` that `cache` (batch 1, filled by prefill from position
    /// 0) holds beyond the first `known` ones, which are cached already; with `in_part` (as for
    /// `lookup`), also its last, partial block when the whole prompt is in `cache` and reaches
    /// PART_MIN_ROWS into that block (not block 0, not under an adapter).
    pub fn insert(
        &self,
        weights: &WeightsKey,
        prompt: &[u32],
        known: usize,
        cache: &KvCache,
        in_part: bool,
    ) -> Result<()> {
        let filled = cache.len().min(prompt.len());
        let whole = filled / BLOCK;
        let part = filled == prompt.len()
            && in_part
            && whole > 0
            && weights.adapter.is_none()
            && filled % BLOCK >= PART_MIN_ROWS;
        let blocks = whole + usize::from(part);
        if blocks <= known || !self.is_on() {
            return Ok(());
        }
        // Copy outside the lock: other calls keep running meanwhile.
        let mut new = Vec::with_capacity(blocks - known);
        for j in known..blocks {
            let kv = cache.block(j * BLOCK, BLOCK.min(filled - j * BLOCK))?;
            let bytes = kv
                .iter()
                .map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes())
                .sum();
            new.push((j, Arc::new(kv), bytes));
        }
        let mut g = self.lock();
        g.tick += 1;
        let tick = g.tick;
        // Walk to the last known block (another call may have evicted it, or added more).
        let mut parent = Parent::Root(weights.clone());
        let mut chain: Vec<u64> = vec![];
        let mut new = new.into_iter().peekable();
        for (j, tokens) in prompt[..filled].chunks(BLOCK).take(blocks).enumerate() {
            let key = Key {
                parent: parent.clone(),
                tokens: tokens.into(),
            };
            let id = match g.ids.get(&key) {
                Some(&id) => {
                    g.blocks
                        .get_mut(&id)
                        .expect("every id has its block")
                        .last_used = tick;
                    id
                }
                None => {
                    // Not cached (never, or evicted since): keep ours if we computed it.
                    let Some((_, kv, bytes)) = new.peek().filter(|(nj, ..)| *nj == j).cloned()
                    else {
                        break;
                    };
                    while g.used + bytes > g.bound {
                        if !g.evict_one(&chain) {
                            return Ok(());
                        }
                    }
                    g.next_id += 1;
                    let id = g.next_id;
                    g.ids.insert(key.clone(), id);
                    g.blocks.insert(
                        id,
                        Block {
                            key,
                            kv,
                            bytes,
                            last_used: tick,
                            depth: j,
                        },
                    );
                    g.used += bytes;
                    id
                }
            };
            if new.peek().is_some_and(|(nj, ..)| *nj == j) {
                new.next();
            }
            chain.push(id);
            parent = Parent::Block(id);
        }
        Ok(())
    }
}

impl Inner {
    /// Evict the least recently used block (the deepest among equals) that is not in `keep`.
    /// Returns false when nothing can go.
    fn evict_one(&mut self, keep: &[u64]) -> bool {
        let victim = self
            .blocks
            .iter()
            .filter(|(id, _)| !keep.contains(id))
            .min_by_key(|(id, b)| (b.last_used, std::cmp::Reverse(b.depth), **id))
            .map(|(id, _)| *id);
        let Some(id) = victim else { return false };
        let b = self.blocks.remove(&id).expect("just found");
        self.ids.remove(&b.key);
        self.used -= b.bytes;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{Arch, ModelConfig};
    use candle_core::{DType, Device};

    /// One layer, one KV head of width 2: a block is 2 × 128 × 2 f32 = 2 KiB.
    fn cfg() -> ModelConfig {
        ModelConfig {
            arch: Arch::Llama,
            vocab_size: 16,
            hidden_size: 2,
            intermediate_size: 4,
            num_layers: 1,
            num_heads: 1,
            num_kv_heads: 1,
            head_dim: 2,
            rope_theta: 10000.0,
            rope_scaling: None,
            rms_norm_eps: 1e-5,
            max_position_embeddings: 4096,
            tie_word_embeddings: true,
            attention_bias: false,
            qk_norm: false,
        }
    }

    const BLOCK_BYTES: usize = 2 * BLOCK * 2 * 4;

    /// A cache as prefill leaves it for `prompt`: position p holds the value p (keys) and −p.
    fn filled(prompt: &[u32]) -> KvCache {
        let mut c = KvCache::new(&cfg(), 1, prompt.len(), &Device::Cpu, DType::F32).unwrap();
        let k: Vec<f32> = (0..prompt.len())
            .flat_map(|p| [p as f32, p as f32])
            .collect();
        let k = Tensor::from_vec(k, (1, 1, prompt.len(), 2), &Device::Cpu).unwrap();
        c.store(0, 0, &k, &k.neg().unwrap()).unwrap();
        c.advance(prompt.len());
        c
    }

    fn key(id: u64) -> WeightsKey {
        WeightsKey {
            weights_id: id,
            adapter: None,
        }
    }

    /// `n` tokens starting with `first`, then counting up.
    fn prompt(first: u32, n: usize) -> Vec<u32> {
        (0..n as u32).map(|i| first + i).collect()
    }

    #[test]
    fn a_prompt_finds_the_whole_blocks_it_shares_and_their_values() {
        let cache = PrefixCache::new(1);
        let a = prompt(0, 3 * BLOCK + 5);
        cache.insert(&key(1), &a, 0, &filled(&a), true).unwrap();
        assert_eq!(cache.stats().blocks, 3);
        assert_eq!(cache.stats().used_bytes, 3 * BLOCK_BYTES);
        // Shares two blocks and the first 7 tokens of the third, and runs past it: those rows
        // come too.
        let mut b = a[..2 * BLOCK + 7].to_vec();
        b.extend([999; 200]);
        let found = cache.lookup(&key(1), &b, usize::MAX, true);
        assert_eq!(found.len(), 3);
        // Whole blocks only where blocks are not taken in part (a GPU).
        assert_eq!(cache.lookup(&key(1), &b, usize::MAX, false).len(), 2);
        let second: Vec<f32> = found[1][0].0.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(
            second[0], BLOCK as f32,
            "block 1 starts at position {BLOCK}"
        );
        let third: Vec<f32> = found[2][0].0.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(third.len(), 7 * 2, "the shared rows of block 2 only");
        assert_eq!(third[0], (2 * BLOCK) as f32);
        // Also when the prompt ends inside that block, if it reaches PART_MIN_ROWS into it;
        // never more than leaves RESUME_MIN_ROWS to compute.
        let reach = (7 + RESUME_MIN_ROWS).max(PART_MIN_ROWS);
        let found = cache.lookup(&key(1), &b[..2 * BLOCK + reach], usize::MAX, true);
        assert_eq!(found[2][0].0.dim(2).unwrap(), 7);
        let short = &b[..2 * BLOCK + PART_MIN_ROWS - 1];
        assert_eq!(cache.lookup(&key(1), short, usize::MAX, true).len(), 2);
        let mut near = a[..2 * BLOCK + PART_MIN_ROWS + 5].to_vec();
        near.extend([999; 2]);
        let found = cache.lookup(&key(1), &near, usize::MAX, true);
        assert_eq!(
            found[2][0].0.dim(2).unwrap(),
            PART_MIN_ROWS + 7 - RESUME_MIN_ROWS
        );
        let mut c = a[..3 * BLOCK - 2].to_vec();
        c.extend([999; 10]);
        let found = cache.lookup(&key(1), &c, usize::MAX, true);
        assert_eq!(found[2][0].0.dim(2).unwrap(), BLOCK - RESUME_MIN_ROWS);
        // At most the positions asked for; another weights key shares nothing.
        assert_eq!(cache.lookup(&key(1), &b, BLOCK + 3, true).len(), 2);
        assert_eq!(cache.lookup(&key(1), &b, BLOCK, true).len(), 1);
        assert!(cache.lookup(&key(2), &a, usize::MAX, true).is_empty());
        let other = WeightsKey {
            weights_id: 1,
            adapter: Some("x".into()),
        };
        assert!(cache.lookup(&other, &a, usize::MAX, true).is_empty());
        // The same block contents after a different first block are a different key.
        let mut c = a.clone();
        c[0] = 77;
        assert!(cache.lookup(&key(1), &c, usize::MAX, true).is_empty());
        // Block 0 is never taken in part (a prompt's first step attends over exact values).
        let mut d = a[..BLOCK - 1].to_vec();
        d.push(999);
        assert!(cache.lookup(&key(1), &d, usize::MAX, true).is_empty());
    }

    #[test]
    fn a_prompt_s_last_partial_block_is_kept_when_it_reaches_far_enough() {
        let cache = PrefixCache::new(1);
        // 40 rows into block 3: kept with the whole blocks.
        let a = prompt(0, 3 * BLOCK + 40);
        cache.insert(&key(1), &a, 0, &filled(&a), true).unwrap();
        assert_eq!(cache.stats().blocks, 4);
        assert_eq!(cache.stats().used_bytes, 3 * BLOCK_BYTES + 40 * 2 * 2 * 4);
        // The next turn of a conversation: the whole prompt and more.
        let mut b = a.clone();
        b.extend([999; 300]);
        let found = cache.lookup(&key(1), &b, usize::MAX, true);
        assert_eq!(found.len(), 4);
        let last: Vec<f32> = found[3][0].0.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(last.len(), 40 * 2);
        assert_eq!(last[0], (3 * BLOCK) as f32);
        // Prefilling b keeps its whole blocks 3 and 4 and its own partial block 5 (84 rows):
        // b again takes them all, the last short of RESUME_MIN_ROWS.
        cache.insert(&key(1), &b, 3, &filled(&b), true).unwrap();
        assert_eq!(cache.stats().blocks, 7);
        let found = cache.lookup(&key(1), &b, usize::MAX, true);
        assert_eq!(found.len(), 6);
        assert_eq!(found[5][0].0.dim(2).unwrap(), 84 - RESUME_MIN_ROWS);
        // Not kept: fewer than PART_MIN_ROWS rows, block 0, under an adapter, without in_part,
        // or a prefill that stopped short of the prompt's end.
        let fresh = PrefixCache::new(1);
        let few = prompt(5000, 2 * BLOCK + PART_MIN_ROWS - 1);
        fresh.insert(&key(1), &few, 0, &filled(&few), true).unwrap();
        assert_eq!(fresh.stats().blocks, 2);
        let first = prompt(6000, 100);
        fresh
            .insert(&key(1), &first, 0, &filled(&first), true)
            .unwrap();
        assert_eq!(fresh.stats().blocks, 2);
        let c = prompt(7000, BLOCK + 60);
        fresh.insert(&key(1), &c, 0, &filled(&c), false).unwrap();
        assert_eq!(fresh.stats().blocks, 3);
        let adapter = WeightsKey {
            weights_id: 1,
            adapter: Some("x".into()),
        };
        fresh.insert(&adapter, &c, 0, &filled(&c), true).unwrap();
        assert_eq!(fresh.stats().blocks, 4);
        let mut longer = c.clone();
        longer.extend([1; 10]);
        fresh
            .insert(&key(2), &longer, 0, &filled(&c), true)
            .unwrap();
        assert_eq!(
            fresh.stats().blocks,
            5,
            "only block 0 of the unfinished prefill"
        );
    }

    #[test]
    fn the_bound_holds_and_the_least_recently_used_leaves_go_first() {
        // Room for four blocks (a MiB is 512 of them here; shrink it by hand).
        let cache = PrefixCache::new(1);
        cache.lock().bound = 4 * BLOCK_BYTES;
        let a = prompt(0, 3 * BLOCK);
        let b = prompt(1000, 2 * BLOCK);
        cache.insert(&key(1), &a, 0, &filled(&a), true).unwrap();
        cache.insert(&key(1), &b, 0, &filled(&b), true).unwrap();
        // Five blocks asked for, four kept: a's deepest block (used first, deepest) went.
        assert_eq!(cache.stats().blocks, 4);
        assert!(cache.stats().used_bytes <= 4 * BLOCK_BYTES);
        assert_eq!(cache.lookup(&key(1), &b, usize::MAX, true).len(), 2);
        assert_eq!(cache.lookup(&key(1), &a, usize::MAX, true).len(), 2);
        // a was used last: a new prompt evicts b's deepest block, not a's.
        let c = prompt(5000, BLOCK);
        cache.insert(&key(1), &c, 0, &filled(&c), true).unwrap();
        assert_eq!(cache.lookup(&key(1), &a, usize::MAX, true).len(), 2);
        assert_eq!(cache.lookup(&key(1), &b, usize::MAX, true).len(), 1);
        assert_eq!(cache.lookup(&key(1), &c, usize::MAX, true).len(), 1);
        // A smaller bound evicts at once; 0 turns the cache off.
        cache.set_bound_mb(0);
        assert_eq!(cache.stats().blocks, 0);
        assert!(!cache.is_on());
        cache.insert(&key(1), &a, 0, &filled(&a), true).unwrap();
        assert!(cache.lookup(&key(1), &a, usize::MAX, true).is_empty());
    }

    #[test]
    fn a_chain_longer_than_the_bound_keeps_its_start() {
        let cache = PrefixCache::new(1);
        cache.lock().bound = 2 * BLOCK_BYTES;
        let a = prompt(0, 5 * BLOCK);
        cache.insert(&key(1), &a, 0, &filled(&a), true).unwrap();
        assert_eq!(cache.lookup(&key(1), &a, usize::MAX, true).len(), 2);
        assert_eq!(cache.stats().used_bytes, 2 * BLOCK_BYTES);
    }
}
