//! The KV cache of [`super::Ops::Fast`] decoding: every layer's keys and values, preallocated.

use super::config::ModelConfig;
use super::Result;
use candle_core::{DType, Device, Tensor};

/// Keys and values of every layer, preallocated to `capacity` positions so decoding writes in
/// place instead of concatenating a growing tensor each step. The buffers are rounded up to
/// whole prefix-cache blocks: a prefill step ending inside a block attends over keys up to the
/// block's end (masked beyond its own), as the whole block's step does (see
/// `Decoder::prefill`). Positions past `capacity` are never filled; they stay zero.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    pub fn new(
        cfg: &ModelConfig,
        batch: usize,
        capacity: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<KvCache> {
        let room = capacity.next_multiple_of(super::prefix_cache::BLOCK);
        let shape = (batch, cfg.num_kv_heads, room, cfg.head_dim);
        let layers = (0..cfg.num_layers)
            .map(|_| {
                Ok((
                    Tensor::zeros(shape, dtype, device)?,
                    Tensor::zeros(shape, dtype, device)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache {
            layers,
            len: 0,
            capacity,
        })
    }

    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Positions the buffers hold: `capacity` rounded up to a whole block.
    pub(super) fn room(&self) -> usize {
        self.layers.first().map(|(k, _)| k.dims()[2]).unwrap_or(0)
    }
    pub fn batch(&self) -> usize {
        self.layers.first().map(|(k, _)| k.dims()[0]).unwrap_or(0)
    }

    /// Copy a batch-1 cache into `n` rows (n samples continuing one prompt).
    pub fn repeat_batch(&self, n: usize) -> Result<KvCache> {
        let layers = self
            .layers
            .iter()
            .map(|(k, v)| Ok((k.repeat((n, 1, 1, 1))?, v.repeat((n, 1, 1, 1))?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache {
            layers,
            len: self.len,
            capacity: self.capacity,
        })
    }

    /// Keep only the given batch rows (finished samples leave the batch).
    pub fn keep_rows(&mut self, rows: &[u32]) -> Result<()> {
        let device = self.layers[0].0.device().clone();
        let idx = Tensor::new(rows, &device)?;
        for (k, v) in self.layers.iter_mut() {
            *k = k.index_select(&idx, 0)?;
            *v = v.index_select(&idx, 0)?;
        }
        Ok(())
    }

    /// A copy of positions `start .. start + len` of every layer (a prefix-cache block): its
    /// own buffers, not a view that would keep the whole cache alive.
    pub fn block(&self, start: usize, len: usize) -> Result<Vec<(Tensor, Tensor)>> {
        let copy =
            |t: &Tensor| -> Result<Tensor> { Ok(t.narrow(2, start, len)?.force_contiguous()?) };
        self.layers
            .iter()
            .map(|(k, v)| Ok((copy(k)?, copy(v)?)))
            .collect()
    }

    /// Append cached blocks (a prompt's first positions, in order) to an empty cache.
    pub fn load_blocks(&mut self, blocks: &[super::prefix_cache::BlockKv]) -> Result<()> {
        for b in blocks {
            let s = b.first().map(|(k, _)| k.dim(2)).transpose()?.unwrap_or(0);
            if self.len + s > self.capacity {
                return Err(super::Error::Msg(format!(
                    "cached prefix of {} tokens exceeds the cache's {} positions",
                    self.len + s,
                    self.capacity
                )));
            }
            for (li, (k, v)) in b.iter().enumerate() {
                self.store(li, self.len, k, v)?;
            }
            self.advance(s);
        }
        Ok(())
    }

    /// Store k, v (batch, kv_heads, s, hd) of layer `layer` at position `pos` (the current
    /// length, or beyond it while a prefill runs its steps layer by layer).
    pub(super) fn store(&mut self, layer: usize, pos: usize, k: &Tensor, v: &Tensor) -> Result<()> {
        let (kb, vb) = &self.layers[layer];
        kb.slice_set(&k.to_dtype(kb.dtype())?, 2, pos)?;
        vb.slice_set(&v.to_dtype(vb.dtype())?, 2, pos)?;
        Ok(())
    }

    /// Keys and values of every position up to `upto` (at most `room`), in `dtype`.
    pub(super) fn view(&self, layer: usize, upto: usize, dtype: DType) -> Result<(Tensor, Tensor)> {
        let (kb, vb) = &self.layers[layer];
        Ok((
            kb.narrow(2, 0, upto)?.to_dtype(dtype)?,
            vb.narrow(2, 0, upto)?.to_dtype(dtype)?,
        ))
    }

    /// Layer `layer`'s whole key and value buffers (the decode-attention kernel reads them in
    /// place).
    pub(super) fn layer(&self, layer: usize) -> &(Tensor, Tensor) {
        &self.layers[layer]
    }

    /// Count `s` more positions as filled, once every layer has stored them.
    pub(super) fn advance(&mut self, s: usize) {
        self.len += s;
    }
}
