//! The decoder of the llama / qwen2 / qwen3 family: one definition, two op choices.
//!
//! `Ops::Fast` is the inference path: a preallocated KV cache and the decode-attention kernel.
//! `Ops::Diff` is the path training builds on: no cache, logits for every position (or from a
//! given one), gradients through everything. Both run candle's fused kernels for norms,
//! softmax and rotary embedding; [`super::grad`] gives them the backward passes candle's own
//! fused ops lack (those silently detach their output from the graph).
//!
//! The KV cache is [`super::kv_cache`]; building a decoder from a checkpoint is [`super::loader`].

use super::config::ModelConfig;
use super::kv_cache::KvCache;
use super::lora::{Adapter, LoraWeights};
use super::packed::Packed;
use super::weights::Weight;
use super::{Error, Result};
use candle_core::{DType, Device, Module, Tensor, D};
use std::sync::Arc;

/// The most rows [`Decoder::decode_rows`] steps as one product: the packed integer kernels'
/// and the dense few-row path's limit, below which each row is computed on its own.
pub const DECODE_ROWS_TOGETHER: usize = super::grad::SMALL_ROWS;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ops {
    /// Fused, gradient-free kernels; KV cache.
    Fast,
    /// Composite ops with backward; no cache.
    Diff,
}

/// A linear layer with optional bias and any number of attached LoRA adapters, one active.
#[derive(Debug, Clone)]
pub struct Linear {
    pub name: String,
    pub weight: Weight,
    pub bias: Option<Tensor>,
    pub in_dim: usize,
    pub out_dim: usize,
    loras: Vec<(String, LoraWeights)>,
    active: Option<usize>,
}

impl Linear {
    pub fn new(name: &str, weight: Weight, bias: Option<Tensor>) -> Result<Linear> {
        let (out_dim, in_dim) = weight.dims()?;
        Ok(Linear {
            name: name.into(),
            weight,
            bias,
            in_dim,
            out_dim,
            loras: vec![],
            active: None,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let lora = self.active.map(|i| &self.loras[i].1);
        // A dense frozen weight with an adapter (training, HF checkpoints) runs as one node.
        let mut fused = false;
        let mut y = match &self.weight {
            Weight::Packed(p, rows) => p.forward_rows(x, rows.clone())?,
            Weight::Quant(q) => q.forward(x)?,
            Weight::Dense(w) => {
                // Fold the leading dims so the matmul is one GEMM.
                let dims = x.dims().to_vec();
                let rows: usize = dims[..dims.len() - 1].iter().product();
                let x2 = x.reshape((rows, self.in_dim))?;
                let y = match lora {
                    Some(l) if !l.dropout_live() && !w.track_op() => {
                        fused = true;
                        super::grad::lora_matmul_t(&x2, w, &l.a, &l.b, l.scale)?
                    }
                    _ => super::grad::matmul_t(&x2, w)?,
                };
                let mut out = dims;
                *out.last_mut().expect("non-empty dims") = self.out_dim;
                y.reshape(out)?
            }
        };
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        if let (Some(l), false) = (lora, fused) {
            y = (y + l.delta(x)?)?;
        }
        Ok(y)
    }

    /// The LoRA factors of the active adapter, if any (training reads and replaces these).
    pub fn active_lora(&self) -> Option<&LoraWeights> {
        self.active.map(|i| &self.loras[i].1)
    }

    fn attach(&mut self, adapter: &str, lora: LoraWeights) {
        self.loras.retain(|(n, _)| n != adapter);
        self.loras.push((adapter.to_string(), lora));
    }

    fn activate(&mut self, adapter: Option<&str>) {
        self.active = adapter.and_then(|a| self.loras.iter().position(|(n, _)| n == a));
    }

    fn merge(&mut self, adapter: &str, device: &Device, dtype: DType) -> Result<()> {
        if let Some(pos) = self.loras.iter().position(|(n, _)| n == adapter) {
            let (_, lora) = self.loras.remove(pos);
            let w = self.weight.to_dense(device, DType::F32)?;
            let merged = (w + lora.merged_delta()?.to_dtype(DType::F32)?)?.to_dtype(dtype)?;
            self.weight = Weight::Dense(merged);
            self.active = None;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub(super) eps: f32,
}

impl RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(super::grad::rms_norm(x, &self.weight, self.eps)?)
    }
}

#[derive(Debug, Clone)]
pub struct Layer {
    pub(super) attn_norm: RmsNorm,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub(super) q_norm: Option<RmsNorm>,
    pub(super) k_norm: Option<RmsNorm>,
    pub(super) mlp_norm: RmsNorm,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
    /// q/k/v stacked into one matrix (and gate/up), so decode runs one parallel matmul and one
    /// activation quantization instead of three (two). The Linears keep row views of it.
    pub(super) fused_qkv: Option<Arc<Packed>>,
    pub(super) fused_gate_up: Option<Arc<Packed>>,
}

/// Outputs of `parts` computed with one matmul on their fused matrix, when they still share it
/// and no adapter is live on them (otherwise None: run them one by one).
fn fused_forward(
    fused: &Option<Arc<Packed>>,
    parts: &[&Linear],
    x: &Tensor,
) -> Result<Option<Vec<Tensor>>> {
    let Some(f) = fused else { return Ok(None) };
    let shares = parts.iter().all(|l| {
        matches!(&l.weight, Weight::Packed(p, _) if Arc::ptr_eq(p, f)) && l.active.is_none()
    });
    if !shares {
        return Ok(None);
    }
    let y = f.forward(x)?;
    let mut outs = Vec::with_capacity(parts.len());
    let mut start = 0;
    for l in parts {
        let mut part = y.narrow(D::Minus1, start, l.out_dim)?;
        if let Some(b) = &l.bias {
            part = part.broadcast_add(b)?;
        }
        outs.push(part);
        start += l.out_dim;
    }
    Ok(Some(outs))
}

impl Layer {
    fn qkv(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        if let Some(mut o) = fused_forward(&self.fused_qkv, &[&self.q, &self.k, &self.v], x)? {
            let v = o.pop().expect("three parts");
            let k = o.pop().expect("three parts");
            let q = o.pop().expect("three parts");
            return Ok((q, k, v));
        }
        Ok((self.q.forward(x)?, self.k.forward(x)?, self.v.forward(x)?))
    }

    fn mlp(&self, x: &Tensor) -> Result<Tensor> {
        let (g, u) = match fused_forward(&self.fused_gate_up, &[&self.gate, &self.up], x)? {
            Some(mut o) => {
                let u = o.pop().expect("two parts");
                (o.pop().expect("two parts"), u)
            }
            None => (self.gate.forward(x)?, self.up.forward(x)?),
        };
        self.down.forward(&(candle_nn::ops::silu(&g)? * u)?)
    }

    /// This layer with every packed matrix dequantized to f32 (a fused one once for all its
    /// parts), or None when it has none. What the packed path computes for ≥ `EXACT_ROWS`
    /// input rows anyway, paid once for all of a prefill's steps instead of once per step.
    fn densified(&self) -> Result<Option<Layer>> {
        if !self
            .linears()
            .iter()
            .any(|l| matches!(l.weight, Weight::Packed(..)))
        {
            return Ok(None);
        }
        let mut dense = self.clone();
        dense.fused_qkv = None;
        dense.fused_gate_up = None;
        let mut full: Vec<(Arc<Packed>, Tensor)> = vec![];
        for lin in dense.linears_mut() {
            if let Weight::Packed(p, rows) = &lin.weight {
                let w = match full.iter().find(|(q, _)| Arc::ptr_eq(p, q)) {
                    Some((_, w)) => w.clone(),
                    None => {
                        let w = p.dequantize_rows(0..p.n, &Device::Cpu)?;
                        full.push((p.clone(), w.clone()));
                        w
                    }
                };
                lin.weight = Weight::Dense(w.narrow(0, rows.start, rows.len())?);
            }
        }
        Ok(Some(dense))
    }

    fn linears_mut(&mut self) -> [&mut Linear; 7] {
        [
            &mut self.q,
            &mut self.k,
            &mut self.v,
            &mut self.o,
            &mut self.gate,
            &mut self.up,
            &mut self.down,
        ]
    }
    fn linears(&self) -> [&Linear; 7] {
        [
            &self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down,
        ]
    }
}

/// A shared prompt's keys and values on the differentiable path (see [`Decoder::prefix`]).
pub struct Prefix {
    layers: Vec<(Tensor, Tensor)>,
    pub len: usize,
}

/// One step of [`Decoder::prefill`]: its first position, its hidden states, rotary tables and
/// causal mask.
struct PrefillStep {
    pos: usize,
    /// Rows of its aligned step before its first one (a step resuming inside a block).
    pad: usize,
    /// Positions of its aligned step after its last one (a prompt ending inside a block).
    tail: usize,
    /// Its attention's query rows (see [`Rope`]).
    rows: usize,
    x: Tensor,
    cos: Tensor,
    sin: Tensor,
    mask: Option<Tensor>,
}

/// The rotary tables of an input's positions, and its causal mask (None for one position).
struct Rope<'a> {
    cos: &'a Tensor,
    sin: &'a Tensor,
    /// The causal mask: (rows, pos + s + tail).
    mask: Option<&'a Tensor>,
    /// Keys past the input's last that its attention spans, masked: a prefill step ending
    /// inside a block attends over keys up to the block's end, as the whole block's step does.
    tail: usize,
    /// Query rows: the input's `s`, or more (zero queries, their outputs dropped) where the
    /// whole block's step would take gemm's other path. With these two, each row's arithmetic
    /// is the one the whole block's step gives it, wherever a call starts or ends (see
    /// `prefix_cache`): gemm's rows depend on the product's inner length and on whether it
    /// has more than 64 rows or columns (gemm-common 0.19's small-size `kc`), never otherwise
    /// on its number of rows.
    rows: usize,
}

/// What a layer's attention looks back at besides its own input.
enum Past<'a> {
    None,
    /// The cache, and the position the input starts at.
    Cache(&'a mut KvCache, usize),
    Prefix(&'a (Tensor, Tensor)),
}

/// Token embeddings: a dense matrix, or packed rows decoded on lookup.
#[derive(Debug, Clone)]
pub(super) enum Embedding {
    Dense(Tensor),
    Packed(Arc<Packed>),
}

impl Embedding {
    fn lookup(&self, ids: &Tensor) -> Result<Tensor> {
        let flat = ids.flatten_all()?;
        match self {
            Embedding::Dense(t) => Ok(t.index_select(&flat, 0)?),
            Embedding::Packed(p) => Ok(p.rows(&flat.to_vec1::<u32>()?, ids.device())?),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Decoder {
    pub config: ModelConfig,
    pub(super) embed: Embedding,
    pub layers: Vec<Layer>,
    pub(super) norm: RmsNorm,
    pub lm_head: Linear,
    pub(super) cos: Tensor,
    pub(super) sin: Tensor,
    /// llama.cpp permutes Q/K rows of llama GGUFs to pair adjacent dims: rotate interleaved.
    pub(super) rope_interleaved: bool,
    pub device: Device,
    pub dtype: DType,
    pub(super) adapters: Vec<String>,
    pub(super) active_adapter: Option<String>,
    /// Names these weights for the prefix cache: a fresh number whenever they may have changed
    /// (see [`Decoder::weights_changed`]).
    pub(super) weights_id: u64,
}

/// A number no other weights of this process have had.
pub(super) fn fresh_weights_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Decoder {
    /// Rows of the embedding matrix (the largest token id + 1 the model accepts).
    pub fn vocab_rows(&self) -> usize {
        self.config.vocab_size
    }

    /// Positions the model can attend over.
    pub fn max_positions(&self) -> usize {
        self.config.max_position_embeddings
    }

    /// What the prefix cache keys this decoder's blocks by: its weights and live adapter.
    pub fn cache_key(&self) -> super::prefix_cache::WeightsKey {
        super::prefix_cache::WeightsKey {
            weights_id: self.weights_id,
            adapter: self.active_adapter.clone(),
        }
    }

    /// Say that the weights have changed in place (an optimizer step, values loaded into the
    /// variables): keys and values cached before no longer match them. Every method here that
    /// changes weights calls it itself; code that writes into the variables must.
    pub fn weights_changed(&mut self) {
        self.weights_id = fresh_weights_id();
    }

    pub fn new_cache(&self, batch: usize, capacity: usize) -> Result<KvCache> {
        KvCache::new(
            &self.config,
            batch,
            capacity.min(self.max_positions()),
            &self.device,
            self.kv_dtype(),
        )
    }

    /// Keys and values are cached in f16 when the weights are quantized on the CPU: decode then
    /// reads half the bytes per position (as llama.cpp does), and the weights' own rounding
    /// dwarfs f16's. Dense models keep the activation dtype, so f32 stays exact.
    pub fn kv_dtype(&self) -> DType {
        let quantized = self
            .layers
            .iter()
            .any(|l| matches!(l.q.weight, Weight::Packed(..) | Weight::Quant(_)));
        if quantized && self.device.is_cpu() && self.dtype == DType::F32 {
            DType::F16
        } else {
            self.dtype
        }
    }

    /// Run `ids` (batch, seq) starting at position `cache.len()` (or 0 without a cache).
    /// Returns logits (batch, vocab) for the last position, or (batch, seq, vocab) with `all`.
    pub fn forward(
        &self,
        ids: &Tensor,
        cache: Option<&mut KvCache>,
        ops: Ops,
        all: bool,
    ) -> Result<Tensor> {
        let s = ids.dim(1)?;
        let logits = self.forward_from(ids, cache, ops, if all { 0 } else { s.max(1) - 1 })?;
        if all {
            Ok(logits)
        } else {
            Ok(logits.squeeze(1)?)
        }
    }

    /// Like [`Decoder::forward`], with logits (batch, seq − from, vocab) for the positions from
    /// `from` on only. Training takes its loss on the reply's positions: the output projection
    /// over a long prompt's positions (a vocab-wide matmul, forward and backward) is skipped.
    pub fn forward_from(
        &self,
        ids: &Tensor,
        cache: Option<&mut KvCache>,
        ops: Ops,
        from: usize,
    ) -> Result<Tensor> {
        self.forward_impl(ids, cache, None, None, ops, from)
    }

    /// The differentiable path over a prompt (batch 1) that several continuations share: the
    /// logits of its last position, and its keys and values as a [`Prefix`] whose gradients
    /// flow back into the prompt's computation.
    pub fn prefix(&self, ids: &Tensor) -> Result<(Tensor, Prefix)> {
        let s = ids.dim(1)?;
        let mut layers = Vec::with_capacity(self.layers.len());
        let logits = self.forward_impl(ids, None, None, Some(&mut layers), Ops::Diff, s - 1)?;
        Ok((logits.squeeze(1)?, Prefix { layers, len: s }))
    }

    /// The differentiable path over continuations (batch, seq) of `prefix`: every row attends
    /// to the prefix's keys and values, computed once instead of once per row. Logits for the
    /// positions from `from` on, as [`Decoder::forward_from`].
    pub fn forward_after(&self, ids: &Tensor, prefix: &Prefix, from: usize) -> Result<Tensor> {
        self.forward_impl(ids, None, Some(prefix), None, Ops::Diff, from)
    }

    /// Prefill `ids` (batch 1) into `cache` from position `cache.len()`, in steps of `step`
    /// tokens; returns the logits (1, vocab) of the last position.
    ///
    /// Each step computes what [`Decoder::forward`] on that step would, but the steps run
    /// layer by layer (every step through layer 0, then layer 1…), so a packed layer is
    /// dequantized once for the whole call rather than once per step, and the whole steps'
    /// projections run as one product ([`Decoder::layer_steps`]). Small steps (which the prefix
    /// cache's blocks need) then cost about what one long step does.
    pub fn prefill(&self, ids: &[u32], cache: &mut KvCache, step: usize) -> Result<Tensor> {
        let pos0 = cache.len();
        let limit = cache.capacity().min(self.max_positions());
        if ids.is_empty() || pos0 + ids.len() > limit {
            return Err(Error::Msg(format!(
                "prefill of {} tokens after {pos0} does not fit the context of {limit} tokens",
                ids.len()
            )));
        }
        // Steps end at multiples of `step` (absolute positions): a call that resumes inside a
        // block first completes that block, and the attention of a step that ends inside one
        // spans keys to the block's end (the cache's buffers are whole blocks; a step other
        // than a block spans them only where they have room).
        let step = step.max(1);
        let mut bounds = vec![];
        let mut at = pos0;
        while at < pos0 + ids.len() {
            let end = ((at / step + 1) * step).min(pos0 + ids.len());
            bounds.push((at, end));
            at = end;
        }
        // Query rows of a step shorter than a block: at least enough that the score-by-value
        // product (head_dim columns, at most 64) has more than 64 rows, as a whole block's has.
        let groups = self.config.num_heads / self.config.num_kv_heads;
        let min_rows = (64 / groups.max(1) + 1).min(step);
        let mut steps = bounds
            .into_iter()
            .map(|(pos, end)| {
                let s = end - pos;
                let pad = pos % step;
                let tail = match end % step {
                    0 => 0,
                    r if end - r + step <= cache.room() => step - r,
                    _ => 0,
                };
                let rows = if s == step { s } else { s.max(min_rows) };
                let chunk = &ids[pos - pos0..end - pos0];
                let ids = Tensor::new(chunk, &self.device)?.unsqueeze(0)?;
                Ok(PrefillStep {
                    pos,
                    pad,
                    tail,
                    rows,
                    x: self
                        .embed
                        .lookup(&ids)?
                        .reshape((1, s, self.config.hidden_size))?,
                    cos: self.cos.narrow(0, pos, s)?.to_dtype(self.dtype)?,
                    sin: self.sin.narrow(0, pos, s)?.to_dtype(self.dtype)?,
                    mask: if rows + tail > 1 {
                        Some(causal_mask(rows, pos, s + tail, &self.device, self.dtype)?)
                    } else {
                        None
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // Where the packed path cannot run prefill's products on the packed weights, it would
        // dequantize a layer for every step: then each layer is dequantized once for the call.
        let wide = !super::packed::prefill_on_packed()
            && steps
                .iter()
                .any(|st| st.x.dim(1).is_ok_and(|s| s >= super::packed::EXACT_ROWS));
        // Whole steps run together; a first step that resumes inside a block and a last,
        // shorter one alone (their products have other shapes).
        let first = usize::from(steps.first().is_some_and(|st| st.pad > 0));
        let whole = steps[first..]
            .iter()
            .take_while(|st| st.x.dim(1).is_ok_and(|s| s == step))
            .count();
        for (li, layer) in self.layers.iter().enumerate() {
            // A live adapter's rank-r product (a matrix a few columns wide) is not the same
            // row by row for 128 rows and for 256 (measured): its layers run step by step.
            let whole = if layer.linears().iter().any(|l| l.active.is_some()) {
                0
            } else {
                whole
            };
            let dense = if wide { layer.densified()? } else { None };
            // From EXACT_ROWS rows on, the packed path computes the dense product's bits, so
            // each step runs the arithmetic a forward of that step alone would.
            let pick = |s: usize| match &dense {
                Some(d) if s >= super::packed::EXACT_ROWS => d,
                _ => layer,
            };
            // In position order: each step's attention reads what the steps before it stored.
            let (head, tail) = steps.split_at_mut(first);
            let (batched, rest) = tail.split_at_mut(whole);
            let alone = |st: &mut PrefillStep, cache: &mut KvCache| -> Result<()> {
                let rope = Rope {
                    cos: &st.cos,
                    sin: &st.sin,
                    mask: st.mask.as_ref(),
                    tail: st.tail,
                    rows: st.rows,
                };
                let past = Past::Cache(cache, st.pos);
                let l = pick(st.x.dim(1)?);
                st.x = self.layer_forward(l, li, &st.x, &rope, past, None, Ops::Fast)?;
                Ok(())
            };
            for st in head.iter_mut() {
                alone(st, cache)?;
            }
            if !batched.is_empty() {
                self.layer_steps(pick(step), li, cache, batched)?;
            }
            for st in rest.iter_mut() {
                alone(st, cache)?;
            }
        }
        cache.advance(ids.len());
        let last = steps.pop().expect("non-empty ids").x;
        let s = last.dim(1)?;
        Ok(self.logits(&last.narrow(1, s - 1, 1)?)?.squeeze(1)?)
    }

    fn forward_impl(
        &self,
        ids: &Tensor,
        mut cache: Option<&mut KvCache>,
        prefix: Option<&Prefix>,
        mut record: Option<&mut Vec<(Tensor, Tensor)>>,
        ops: Ops,
        from: usize,
    ) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        if from >= s {
            return Err(Error::Msg(format!(
                "logits from position {from} of a {s}-token input"
            )));
        }
        let pos = match (&cache, prefix) {
            (Some(c), _) => c.len(),
            (None, Some(p)) => p.len,
            (None, None) => 0,
        };
        let limit = cache
            .as_ref()
            .map(|c| c.capacity())
            .unwrap_or(self.max_positions())
            .min(self.max_positions());
        if pos + s > limit {
            return Err(Error::Msg(format!(
                "sequence of {} tokens exceeds the context of {limit} tokens",
                pos + s
            )));
        }
        let mut x = self
            .embed
            .lookup(ids)?
            .reshape((b, s, self.config.hidden_size))?;
        let mask = if s > 1 {
            Some(causal_mask(s, pos, s, &self.device, self.dtype)?)
        } else {
            None
        };
        let cos = self.cos.narrow(0, pos, s)?.to_dtype(self.dtype)?;
        let sin = self.sin.narrow(0, pos, s)?.to_dtype(self.dtype)?;
        let rope = Rope {
            cos: &cos,
            sin: &sin,
            mask: mask.as_ref(),
            tail: 0,
            rows: s,
        };
        for (li, layer) in self.layers.iter().enumerate() {
            let past = match (cache.as_deref_mut(), prefix) {
                (Some(c), _) => Past::Cache(c, pos),
                (None, Some(p)) => Past::Prefix(&p.layers[li]),
                (None, None) => Past::None,
            };
            x = self.layer_forward(layer, li, &x, &rope, past, record.as_deref_mut(), ops)?;
        }
        if let Some(c) = cache {
            c.advance(s);
        }
        let x = if from > 0 {
            x.narrow(1, from, s - from)?
        } else {
            x
        };
        self.logits(&x)
    }

    /// The final norm and the output projection.
    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.norm.forward(x)?;
        // Logits leave in f32 (half-precision models are upcast); float64 stays float64, so
        // gradient checks against finite differences keep their precision.
        let logits = self.lm_head.forward(&x)?;
        Ok(if logits.dtype() == DType::F64 {
            logits
        } else {
            logits.to_dtype(DType::F32)?
        })
    }

    /// One decoder layer on `x` (batch, seq, hidden): attention, then the MLP, each with its
    /// residual.
    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        layer: &Layer,
        li: usize,
        x: &Tensor,
        rope: &Rope,
        past: Past,
        record: Option<&mut Vec<(Tensor, Tensor)>>,
        ops: Ops,
    ) -> Result<Tensor> {
        Self::layer_with(layer, x, |qkv| {
            self.attend(layer, li, qkv, rope, past, record, ops)
        })
    }

    /// One decoder layer on `x`, with `attend` turning the projected queries, keys and values
    /// into the heads' outputs: the one definition of a layer's residual structure, for a
    /// single sequence ([`Decoder::layer_forward`]) and for several decoding together
    /// ([`Decoder::decode_rows`]).
    fn layer_with(
        layer: &Layer,
        x: &Tensor,
        attend: impl FnOnce((Tensor, Tensor, Tensor)) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let h = layer.attn_norm.forward(x)?;
        let y = attend(layer.qkv(&h)?)?;
        let x = (x + layer.o.forward(&y)?)?;
        let h = layer.mlp_norm.forward(&x)?;
        Ok((&x + layer.mlp(&h)?)?)
    }

    /// One decode step of several independent sequences, each with its own cache (of any batch
    /// and length): `ids` holds the next token of every cache's rows, in order. Returns logits
    /// (rows, vocab). Each row's logits are bit for bit those of [`Decoder::forward`] on its
    /// cache alone: caches are stepped together — their projections one product over all
    /// their rows, attention cache by cache — only where that holds: on the CPU, in groups of at
    /// most [`DECODE_ROWS_TOGETHER`] rows, where the packed integer kernels and the dense
    /// few-row path compute each row on its own, and so do a live adapter's rank-r products
    /// (gemm with at most 64 rows and columns sums each output in one fixed order, and B's
    /// inner length is the rank); elsewhere (a GPU's BLAS picks kernels by shape) one cache
    /// after another.
    /// Stepping together streams the weights once for all the rows, which is what decode pays
    /// for.
    pub fn decode_rows(&self, ids: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let rows: usize = caches.iter().map(|c| c.batch()).sum();
        if rows != ids.len() {
            return Err(Error::Msg(format!(
                "{} next tokens for caches of {rows} rows",
                ids.len()
            )));
        }
        let together = self.device.is_cpu();
        let mut outs = Vec::new();
        let (mut g, mut at) = (0, 0);
        while g < caches.len() {
            let mut end = g + 1;
            let mut take = caches[g].batch();
            while together
                && end < caches.len()
                && take + caches[end].batch() <= DECODE_ROWS_TOGETHER
            {
                take += caches[end].batch();
                end += 1;
            }
            let next = &ids[at..at + take];
            outs.push(if end == g + 1 {
                let input = Tensor::new(next, &self.device)?.unsqueeze(1)?;
                self.forward(&input, Some(&mut *caches[g]), Ops::Fast, false)?
            } else {
                self.step_together(next, &mut caches[g..end])?
            });
            (g, at) = (end, at + take);
        }
        // One group (a single prompt's decode, every step of it) needs no copy.
        Ok(match outs.len() {
            1 => outs.pop().expect("one group"),
            _ => Tensor::cat(&outs, 0)?,
        })
    }

    /// [`Decoder::decode_rows`]'s joint step: one token per row of every cache.
    fn step_together(&self, ids: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let r = ids.len();
        let mut tables = Vec::with_capacity(caches.len());
        for c in caches.iter() {
            let limit = c.capacity().min(self.max_positions());
            if c.len() + 1 > limit {
                return Err(Error::Msg(format!(
                    "sequence of {} tokens exceeds the context of {limit} tokens",
                    c.len() + 1
                )));
            }
            tables.push((
                self.cos.narrow(0, c.len(), 1)?.to_dtype(self.dtype)?,
                self.sin.narrow(0, c.len(), 1)?.to_dtype(self.dtype)?,
            ));
        }
        let input = Tensor::new(ids, &self.device)?.unsqueeze(1)?;
        let mut x = self
            .embed
            .lookup(&input)?
            .reshape((r, 1, self.config.hidden_size))?;
        for (li, layer) in self.layers.iter().enumerate() {
            x = Self::layer_with(layer, &x, |(q, k, v)| {
                let mut ys = Vec::with_capacity(caches.len());
                let mut off = 0;
                for (c, (cos, sin)) in caches.iter_mut().zip(&tables) {
                    let (b, pos) = (c.batch(), c.len());
                    let rope = Rope {
                        cos,
                        sin,
                        mask: None,
                        tail: 0,
                        rows: 1,
                    };
                    let part = |t: &Tensor| t.narrow(0, off, b);
                    let qkv = (part(&q)?, part(&k)?, part(&v)?);
                    ys.push(self.attend(
                        layer,
                        li,
                        qkv,
                        &rope,
                        Past::Cache(c, pos),
                        None,
                        Ops::Fast,
                    )?);
                    off += b;
                }
                Ok(Tensor::cat(&ys, 0)?)
            })?;
        }
        for c in caches.iter_mut() {
            c.advance(1);
        }
        Ok(self.logits(&x)?.squeeze(1)?)
    }

    /// Attention from the projected queries, keys and values (batch, seq, heads · head_dim)
    /// to the heads' outputs before the output projection.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        layer: &Layer,
        li: usize,
        (q, k, v): (Tensor, Tensor, Tensor),
        rope: &Rope,
        past: Past,
        record: Option<&mut Vec<(Tensor, Tensor)>>,
        ops: Ops,
    ) -> Result<Tensor> {
        let (cos, sin, mask, tail, rows) = (rope.cos, rope.sin, rope.mask, rope.tail, rope.rows);
        let cfg = &self.config;
        let (b, s, _) = q.dims3()?;
        let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let mut q = q.reshape((b, s, nh, hd))?;
        let mut k = k.reshape((b, s, nkv, hd))?;
        let v = v.reshape((b, s, nkv, hd))?;
        if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        let q = q.transpose(1, 2)?.contiguous()?;
        let k = k.transpose(1, 2)?.contiguous()?;
        let v = v.transpose(1, 2)?.contiguous()?;
        let rope = |t: &Tensor| -> Result<Tensor> {
            Ok(super::grad::rope(t, cos, sin, self.rope_interleaved)?)
        };
        let q = rope(&q)?;
        let k = rope(&k)?;
        // Zero queries after the input's, so the products below take a whole block's path;
        // their outputs are dropped at the end.
        let zeros = |rows: usize, t: &Tensor, heads: usize| {
            Tensor::zeros((b, heads, rows, hd), t.dtype(), t.device())
        };
        let q = if rows > s {
            Tensor::cat(&[&q, &zeros(rows - s, &q, nh)?], 2)?.contiguous()?
        } else {
            q
        };
        let sq = rows;
        if let Some(r) = record {
            r.push((k.clone(), v.clone()));
        }
        let (k, v) = match past {
            Past::Prefix((pk, pv)) => {
                // The prompt's rows broadcast over the batch; the gradient of a broadcast is
                // the sum over rows, which is what sharing the prompt means.
                let (_, nkv, p, hd) = pk.dims4()?;
                let pk = pk.broadcast_as((b, nkv, p, hd))?;
                let pv = pv.broadcast_as((b, nkv, p, hd))?;
                // cat along a later dim may return a transposed view; matmul wants rows.
                (
                    Tensor::cat(&[&pk, &k], 2)?.contiguous()?,
                    Tensor::cat(&[&pv, &v], 2)?.contiguous()?,
                )
            }
            Past::Cache(c, pos) => {
                c.store(li, pos, &k, &v)?;
                let upto = pos + s;
                if sq == 1 && ops == Ops::Fast && super::attention::supported(&q, &c.layer(li).0) {
                    let (kb, vb) = c.layer(li);
                    let y = super::attention::decode_attention(&q, kb, vb, upto)?;
                    return Ok(y.transpose(1, 2)?.reshape((b, s, nh * hd))?);
                }
                if pos == 0 && tail == 0 {
                    // First step: attend over the exact values just computed (the cache may
                    // hold them rounded to f16).
                    (k, v)
                } else if pos == 0 {
                    // The same, padded to the block's end: masked keys, zero values.
                    let pad = |t: &Tensor| -> Result<Tensor> {
                        Ok(Tensor::cat(&[t, &zeros(tail, t, nkv)?], 2)?.contiguous()?)
                    };
                    (pad(&k)?, pad(&v)?)
                } else {
                    c.view(li, upto + tail, k.dtype())?
                }
            }
            Past::None => (k, v),
        };
        let total = k.dim(2)?;
        let groups = nh / nkv;
        // Grouped-query attention without copying K/V per head: the query heads that share a
        // KV head are folded into the row dimension.
        let q = q.reshape((b, nkv, groups * sq, hd))?;
        let mut att = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
        if let Some(m) = mask {
            att = att
                .reshape((b, nkv, groups, sq, total))?
                .broadcast_add(m)?
                .reshape((b, nkv, groups * sq, total))?;
        }
        let att = super::grad::softmax_last_dim(&att)?;
        let y = att.matmul(&v)?.reshape((b, nh, sq, hd))?;
        let y = if rows > s { y.narrow(2, 0, s)? } else { y };
        Ok(y.transpose(1, 2)?.reshape((b, s, nh * hd))?)
    }

    /// Layer `li` on consecutive whole prefill steps at once: the projections and the MLP run
    /// as one matrix product over all their rows (the weights pass through the cache once, not
    /// once per step), attention step by step. Each row's arithmetic is the same as with its
    /// step alone: gemm splits the inner dimension by its length and the cache sizes only,
    /// never by the number of rows, for products more than 64 columns wide (gemm-common 0.19's
    /// `kernel_params`) — every projection here; the prefix cache's tests check it bit for bit.
    /// A live adapter's narrow products do not qualify, so `prefill` runs those layers step by
    /// step.
    fn layer_steps(
        &self,
        layer: &Layer,
        li: usize,
        cache: &mut KvCache,
        steps: &mut [PrefillStep],
    ) -> Result<()> {
        let xs: Vec<&Tensor> = steps.iter().map(|st| &st.x).collect();
        let x = Tensor::cat(&xs, 1)?;
        let h = layer.attn_norm.forward(&x)?;
        let (q, k, v) = layer.qkv(&h)?;
        let mut ys = Vec::with_capacity(steps.len());
        let mut off = 0;
        for st in steps.iter() {
            let s = st.x.dim(1)?;
            let part = |t: &Tensor| t.narrow(1, off, s);
            let rope = Rope {
                cos: &st.cos,
                sin: &st.sin,
                mask: st.mask.as_ref(),
                tail: st.tail,
                rows: st.rows,
            };
            let qkv = (part(&q)?, part(&k)?, part(&v)?);
            let past = Past::Cache(cache, st.pos);
            ys.push(self.attend(layer, li, qkv, &rope, past, None, Ops::Fast)?);
            off += s;
        }
        let x = (x + layer.o.forward(&Tensor::cat(&ys, 1)?)?)?;
        let h = layer.mlp_norm.forward(&x)?;
        let x = (&x + layer.mlp(&h)?)?;
        let mut off = 0;
        for st in steps.iter_mut() {
            let s = st.x.dim(1)?;
            st.x = x.narrow(1, off, s)?;
            off += s;
        }
        Ok(())
    }

    /// Every linear layer an adapter can target: (HF module name, in, out).
    pub fn linear_shapes(&self) -> Vec<(String, usize, usize)> {
        self.layers
            .iter()
            .flat_map(|l| l.linears())
            .chain([&self.lm_head])
            .map(|l| (l.name.clone(), l.in_dim, l.out_dim))
            .collect()
    }

    /// Rows of a matrix (or bias) of `module` moved between Hugging Face's order and the
    /// decoder's: a LoRA B matrix, or a whole weight.
    ///
    /// llama.cpp's converter permutes the rows of q_proj and k_proj in llama GGUFs (each head's
    /// two rotary halves interleaved), and this decoder runs those weights as they are with
    /// interleaved RoPE. Anything with q/k output rows (an adapter's B, a trained weight) follows
    /// the same permutation here; PEFT and HF files always hold the Hugging Face order. Other
    /// modules and other checkpoints are unchanged.
    pub fn qk_rows_layout(&self, module: &str, t: &Tensor, to_hf: bool) -> Result<Tensor> {
        let module = module.strip_suffix(".weight").unwrap_or(module);
        let module = module.strip_suffix(".bias").unwrap_or(module);
        let heads = if module.ends_with("q_proj") {
            self.config.num_heads
        } else if module.ends_with("k_proj") {
            self.config.num_kv_heads
        } else {
            return Ok(t.clone());
        };
        if !self.rope_interleaved {
            return Ok(t.clone());
        }
        permute_qk_rows(t, heads, to_hf)
    }

    /// Visit every parameter slot under its HF name (a tied output projection after the
    /// embedding, holding the same tensor). Quantized or packed weights are refused: training
    /// them needs a load with `dequantize`.
    fn visit_parameters(
        &mut self,
        f: &mut dyn FnMut(&str, &mut Tensor) -> Result<()>,
    ) -> Result<()> {
        fn dense<'a>(w: &'a mut Weight, name: &str) -> Result<&'a mut Tensor> {
            match w {
                Weight::Dense(t) => Ok(t),
                _ => Err(Error::Msg(format!(
                    "'{name}' is quantized; full fine-tuning needs dense weights"
                ))),
            }
        }
        let linear = |l: &mut Linear, f: &mut dyn FnMut(&str, &mut Tensor) -> Result<()>| {
            let name = format!("{}.weight", l.name);
            f(&name, dense(&mut l.weight, &name)?)?;
            if let Some(b) = l.bias.as_mut() {
                f(&format!("{}.bias", l.name), b)?;
            }
            Ok::<(), Error>(())
        };
        match &mut self.embed {
            Embedding::Dense(t) => f("model.embed_tokens.weight", t)?,
            Embedding::Packed(_) => {
                return Err(Error::Msg(
                    "the embedding is quantized; full fine-tuning needs dense weights".into(),
                ))
            }
        }
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            f(
                &format!("{p}.input_layernorm.weight"),
                &mut layer.attn_norm.weight,
            )?;
            for l in [&mut layer.q, &mut layer.k, &mut layer.v, &mut layer.o] {
                linear(l, f)?;
            }
            if let Some(n) = layer.q_norm.as_mut() {
                f(&format!("{p}.self_attn.q_norm.weight"), &mut n.weight)?;
            }
            if let Some(n) = layer.k_norm.as_mut() {
                f(&format!("{p}.self_attn.k_norm.weight"), &mut n.weight)?;
            }
            f(
                &format!("{p}.post_attention_layernorm.weight"),
                &mut layer.mlp_norm.weight,
            )?;
            for l in [&mut layer.gate, &mut layer.up, &mut layer.down] {
                linear(l, f)?;
            }
        }
        f("model.norm.weight", &mut self.norm.weight)?;
        linear(&mut self.lm_head, f)
    }

    /// Turn every parameter into a `Var` (full fine-tuning) and return them by HF name. A tied
    /// output projection shares the embedding's variable and is not listed twice.
    pub fn make_trainable(&mut self) -> Result<Vec<(String, candle_core::Var)>> {
        let mut made: std::collections::HashMap<candle_core::TensorId, candle_core::Var> =
            Default::default();
        let mut out = vec![];
        self.visit_parameters(&mut |name, t| {
            if let Some(v) = made.get(&t.id()) {
                *t = v.as_tensor().clone();
                return Ok(());
            }
            let v = candle_core::Var::from_tensor(t)?;
            made.insert(t.id(), v.clone());
            *t = v.as_tensor().clone();
            out.push((name.to_string(), v));
            Ok(())
        })?;
        self.weights_changed();
        Ok(out)
    }

    /// Attach a loaded adapter (unmerged). Shapes are checked against the base.
    pub fn attach_adapter(&mut self, adapter: &Adapter) -> Result<()> {
        let file = adapter.dir.join("adapter_model.safetensors");
        let mut used = 0;
        let mut modules = adapter.modules.clone();
        if adapter.peft_layout {
            for (name, l) in modules.iter_mut() {
                l.b = self.qk_rows_layout(name, &l.b, false)?;
            }
        }
        let adapter = &Adapter {
            modules,
            ..adapter.clone()
        };
        for layer in self.layers.iter_mut() {
            for lin in layer.linears_mut() {
                if let Some(l) = adapter.modules.get(&lin.name) {
                    check_lora_shape(&file, lin, l)?;
                    lin.attach(&adapter.name, l.clone());
                    used += 1;
                }
            }
        }
        if let Some(l) = adapter.modules.get(&self.lm_head.name) {
            check_lora_shape(&file, &self.lm_head, l)?;
            self.lm_head.attach(&adapter.name, l.clone());
            used += 1;
        }
        if used != adapter.modules.len() {
            let known: std::collections::HashSet<&str> = self
                .layers
                .iter()
                .flat_map(|l| l.linears().map(|x| x.name.as_str()))
                .chain([self.lm_head.name.as_str()])
                .collect();
            let unknown = adapter
                .modules
                .keys()
                .find(|m| !known.contains(m.as_str()))
                .cloned()
                .unwrap_or_default();
            return Err(Error::file(
                &file,
                format!("adapter targets '{unknown}', which the base model does not have"),
            ));
        }
        self.adapters.retain(|n| n != &adapter.name);
        self.adapters.push(adapter.name.clone());
        self.weights_changed();
        Ok(())
    }

    /// Switch the live adapter (`None` = the bare base), without reloading anything.
    pub fn set_active_adapter(&mut self, name: Option<&str>) -> Result<()> {
        if let Some(n) = name {
            if !self.adapters.iter().any(|a| a == n) {
                return Err(Error::Msg(format!("adapter '{n}' is not attached")));
            }
        }
        for layer in self.layers.iter_mut() {
            for lin in layer.linears_mut() {
                lin.activate(name);
            }
        }
        self.lm_head.activate(name);
        self.active_adapter = name.map(String::from);
        Ok(())
    }

    pub fn active_adapter(&self) -> Option<&str> {
        self.active_adapter.as_deref()
    }

    /// Fold an attached adapter into the base weights (W += s·B·A); it is detached afterwards.
    pub fn merge_adapter(&mut self, name: &str) -> Result<()> {
        if !self.adapters.iter().any(|a| a == name) {
            return Err(Error::Msg(format!("adapter '{name}' is not attached")));
        }
        let (dev, dt) = (self.device.clone(), self.dtype);
        for layer in self.layers.iter_mut() {
            for lin in layer.linears_mut() {
                lin.merge(name, &dev, dt)?;
            }
        }
        self.lm_head.merge(name, &dev, dt)?;
        self.adapters.retain(|a| a != name);
        if self.active_adapter.as_deref() == Some(name) {
            self.active_adapter = None;
        }
        self.weights_changed();
        Ok(())
    }

    /// Storage type of the projection matrices, most common first ("Q4_1 (also Q8_0)").
    pub fn weight_kinds(&self) -> String {
        super::dominant(
            self.layers
                .iter()
                .flat_map(|l| l.linears().map(|x| x.weight.kind())),
        )
    }
}

/// llama.cpp's converter stores each q_proj/k_proj head with its two rotary halves interleaved
/// row by row: GGUF row (head, i, j) is HF row (head, j, i), j ∈ {0, 1}. Moves the rows of `t`
/// (a weight, a bias or a LoRA B) from GGUF to HF order (`to_hf`) or back.
pub fn permute_qk_rows(t: &Tensor, heads: usize, to_hf: bool) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let out = dims[0];
    let cols: usize = dims[1..].iter().product::<usize>().max(1);
    let half = out / heads / 2;
    if half * 2 * heads != out {
        return Err(Error::Msg(format!(
            "{out} rows do not split into {heads} heads of two rotary halves"
        )));
    }
    let moved = if to_hf {
        t.reshape((heads, half, 2, cols))?.transpose(1, 2)?
    } else {
        t.reshape((heads, 2, half, cols))?.transpose(1, 2)?
    };
    Ok(moved.contiguous()?.reshape(dims)?)
}

fn check_lora_shape(file: &std::path::Path, lin: &Linear, l: &LoraWeights) -> Result<()> {
    let (_, a_in) = l.a.dims2()?;
    let (b_out, _) = l.b.dims2()?;
    if a_in != lin.in_dim || b_out != lin.out_dim {
        return Err(Error::file(
            file,
            format!(
                "'{}': adapter is {b_out}x{a_in} but the base layer is {}x{}",
                lin.name, lin.out_dim, lin.in_dim
            ),
        ));
    }
    Ok(())
}

/// (s, pos + keys) additive mask: query i (at absolute position pos + i) sees keys ≤ pos + i.
/// `keys` is the input's length, or more where its attention spans masked keys past it.
fn causal_mask(s: usize, pos: usize, keys: usize, device: &Device, dtype: DType) -> Result<Tensor> {
    let total = pos + keys;
    let mask: Vec<f32> = (0..s)
        .flat_map(|i| (0..total).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(mask, (s, total), device)?.to_dtype(dtype)?)
}
