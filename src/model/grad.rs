//! Ops of the differentiable decoder path with hand-written backward passes.
//!
//! candle's fused kernels (softmax, RMS norm, rotary embedding) have no backward, and its
//! composite versions build a graph node per elementary op, each of whose backward allocates,
//! zero-fills and accumulates a gradient buffer: on a LoRA training step that bookkeeping cost
//! more than the matmuls. Here the forward runs the fused kernel and the backward is the closed
//! form. Without a graph (inference) each function is the fused kernel alone.
//!
//! Frozen projections get the same treatment: candle's matmul backward always computes both
//! operands' gradients, and for a weight that is not being trained (every base weight under
//! LoRA) that is a matmul as large as the forward one, plus a weight-sized buffer to add it
//! into, all thrown away.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Storage, Tensor, D};
use rayon::prelude::*;

struct FrozenMatmul {
    /// (out, in), not a variable.
    w: Tensor,
}

impl FrozenMatmul {
    /// Problem size and the layout of Wᵀ for an input of layout `x`.
    fn plan(&self, x: &Layout, w: &Layout) -> Result<((usize, usize, usize, usize), Layout)> {
        let (m, k) = x.shape().dims2()?;
        let (n, wk) = w.shape().dims2()?;
        if k != wk {
            candle_core::bail!("frozen matmul: input has {k} columns, weight {wk}");
        }
        Ok(((1, m, n, k), w.transpose(0, 1)?))
    }
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (w, wl) = self.w.storage_and_layout();
        let Storage::Cpu(w) = &*w else {
            candle_core::bail!("frozen matmul: weight and input on different devices")
        };
        let (bmnk, wt) = self.plan(xl, wl)?;
        Ok((x.matmul(w, bmnk, xl, &wt)?, Shape::from((bmnk.1, bmnk.2))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (w, wl) = self.w.storage_and_layout();
        let Storage::Cuda(w) = &*w else {
            candle_core::bail!("frozen matmul: weight and input on different devices")
        };
        let (bmnk, wt) = self.plan(xl, wl)?;
        Ok((x.matmul(w, bmnk, xl, &wt)?, Shape::from((bmnk.1, bmnk.2))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.w)?))
    }
}

/// `x · wᵀ` for 2-D `x` (rows, in) and `w` (out, in). When `x` carries a gradient and `w` is
/// not a variable, only `x`'s gradient is computed on the way back; otherwise this is a plain
/// matmul.
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if x.track_op() && !w.is_variable() && !w.track_op() {
        x.contiguous()?.apply_op1(FrozenMatmul { w: w.clone() })
    } else {
        xwt(x, w)
    }
}

/// x · wᵀ off the graph, for (rows, k) × (n, k).
fn xwt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    match small_xwt(x, w)? {
        Some(y) => Ok(y),
        None => x.matmul(&w.t()?),
    }
}

/// Most rows a dense projection takes by [`small_xwt`]: a decode step's batch.
pub(crate) const SMALL_ROWS: usize = 8;

/// x · wᵀ for a few rows of x (a decode step of a dense f32 model on the CPU: GRPO's rollouts,
/// full fine-tuning's samples, an HF checkpoint loaded without quantizing) as one pass over w's
/// rows, each read once and dotted with every row of x. gemm packs w anew on every such call
/// (a fifth of a GRPO step's time was that copy). `None` where it does not apply.
fn small_xwt(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    if !x.device().is_cpu()
        || x.dtype() != DType::F32
        || w.dtype() != DType::F32
        || x.rank() != 2
        || w.rank() != 2
        || x.track_op()
        || w.track_op()
        || !w.is_contiguous()
    {
        return Ok(None);
    }
    let ((rows, k), (n, k2)) = (x.dims2()?, w.dims2()?);
    if rows > SMALL_ROWS || rows == 0 || k != k2 {
        return Ok(None);
    }
    let xs: Vec<f32> = x.contiguous()?.flatten_all()?.to_vec1()?;
    let (ws, wl) = w.storage_and_layout();
    let Storage::Cpu(wc) = &*ws else {
        return Ok(None);
    };
    let Some((a, b)) = wl.contiguous_offsets() else {
        return Ok(None);
    };
    let wv = &wc.as_slice::<f32>()?[a..b];
    // y transposed: for each row j of w, its dot with every row of x.
    let mut yt = vec![0f32; n * rows];
    const ROWS_PER_TASK: usize = 64;
    yt.par_chunks_mut(ROWS_PER_TASK * rows)
        .enumerate()
        .for_each(|(c, out)| {
            let j0 = c * ROWS_PER_TASK;
            for (jj, o) in out.chunks_mut(rows).enumerate() {
                let wj = &wv[(j0 + jj) * k..(j0 + jj + 1) * k];
                for (i, oi) in o.iter_mut().enumerate() {
                    *oi = dot(wj, &xs[i * k..(i + 1) * k]);
                }
            }
        });
    let y = if rows == 1 {
        yt
    } else {
        let mut y = vec![0f32; n * rows];
        for j in 0..n {
            for i in 0..rows {
                y[i * n + j] = yt[j * rows + i];
            }
        }
        y
    };
    Ok(Some(Tensor::from_vec(y, (rows, n), x.device())?))
}

/// A dot product with sixteen partial sums, which the compiler keeps in vector registers.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// The backward of an [`Attached`] output: the gradient of the input from the output's.
type Backward = Box<dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync>;

/// An output computed off the graph (by a fused kernel), joined to it as a function of the
/// input with a closed-form backward. The forward hands back a copy of the output's storage.
struct Attached {
    y: Tensor,
    bwd: Backward,
}

/// A copy of `y`'s storage, the forward result of an attached op. `y` is a kernel's fresh
/// output: contiguous from offset 0 (see `fresh`).
fn cpu_copy(y: &Tensor) -> Result<(CpuStorage, Shape)> {
    let (s, l) = y.storage_and_layout();
    match &*s {
        Storage::Cpu(c) => Ok((c.clone(), l.shape().clone())),
        _ => candle_core::bail!("attached output on another device than its input"),
    }
}

#[cfg(feature = "cuda")]
fn cuda_copy(y: &Tensor) -> Result<(candle_core::CudaStorage, Shape)> {
    let (s, l) = y.storage_and_layout();
    match &*s {
        Storage::Cuda(c) => Ok((c.try_clone(l)?, l.shape().clone())),
        _ => candle_core::bail!("attached output on another device than its input"),
    }
}

/// Contiguous from offset 0, as `cpu_copy` / `cuda_copy` need.
fn fresh(y: Tensor) -> Result<Tensor> {
    if y.layout().start_offset() == 0 && y.is_contiguous() {
        Ok(y)
    } else {
        y.copy()
    }
}

impl CustomOp1 for Attached {
    fn name(&self) -> &'static str {
        "attached-backward"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_copy(&self.y)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda_copy(&self.y)
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some((self.bwd)(grad)?))
    }
}

/// `y` (computed from `x` without a graph) as a graph node of `x` whose gradient is `bwd`.
fn attach(x: &Tensor, y: Tensor, bwd: Backward) -> Result<Tensor> {
    x.apply_op1(Attached { y: fresh(y)?, bwd })
}

/// The gradients of a three-input attached op's inputs from its output's.
type Backward3 = Box<dyn Fn(&Tensor) -> Result<(Tensor, Tensor, Tensor)> + Send + Sync>;

/// [`Attached`] for three inputs.
struct Attached3 {
    y: Tensor,
    bwd: Backward3,
}

impl candle_core::CustomOp3 for Attached3 {
    fn name(&self) -> &'static str {
        "attached-backward-3"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_copy(&self.y)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda_copy(&self.y)
    }

    fn bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (a, b, c) = (self.bwd)(grad)?;
        Ok((Some(a), Some(b), Some(c)))
    }
}

/// `x·Wᵀ + s·(x·Aᵀ)·Bᵀ` for 2-D `x` (rows, in), a frozen `w` (out, in) and LoRA factors `a`
/// (r, in), `b` (out, r): one graph node whose backward gives x, A and B their gradients.
/// candle's composite version is eight nodes (transposes, broadcasts, three matmuls, a scale,
/// an add), each with its own zero-filled gradient buffer on the way back (the benchmark's
/// step: 2.6–2.9 s with those, 2.3–2.5 s with this).
pub fn lora_matmul_t(x: &Tensor, w: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> Result<Tensor> {
    let (xd, ad, bd) = (x.detach(), a.detach(), b.detach());
    let h = xd.matmul(&ad.t()?)?;
    let y = (xwt(&xd, w)? + (h.matmul(&bd.t()?)? * scale)?)?;
    if !(x.track_op() || a.track_op() || b.track_op()) {
        return Ok(y);
    }
    if w.track_op() {
        candle_core::bail!("lora_matmul_t: the base weight must be frozen");
    }
    let w = w.clone();
    // With gs = s·g and h = x·Aᵀ: dB = gsᵀ·h, dh = gs·B, dA = dhᵀ·x, dx = g·W + dh·A.
    let bwd = move |g: &Tensor| -> Result<(Tensor, Tensor, Tensor)> {
        let gs = (g * scale)?;
        let db = gs.t()?.matmul(&h)?;
        let dh = gs.matmul(&bd)?;
        let da = dh.t()?.matmul(&xd)?;
        let dx = (g.matmul(&w)? + dh.matmul(&ad)?)?;
        Ok((dx, da, db))
    };
    let op = Attached3 {
        y: fresh(y)?,
        bwd: Box::new(bwd),
    };
    x.contiguous()?.apply_op3(a, b, op)
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return candle_nn::ops::softmax_last_dim(x);
    }
    let y = candle_nn::ops::softmax_last_dim(&x.detach())?;
    let keep = y.clone();
    // dx = y ⊙ (g − Σ g⊙y)
    let bwd = move |g: &Tensor| -> Result<Tensor> {
        let gy = (g * &keep)?;
        let s = gy.sum_keepdim(D::Minus1)?;
        gy - keep.broadcast_mul(&s)?
    };
    attach(x, y, Box::new(bwd))
}

/// RMS norm over the last dimension with weight `w`. A trainable `w` (full fine-tuning) takes
/// candle's composite path, which also yields the weight's gradient.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    if w.is_variable() || w.track_op() {
        return candle_nn::ops::rms_norm_slow(x, w, eps);
    }
    // The fused kernel has no f64 (gradient checks run in f64).
    let fused = |t: &Tensor| match t.dtype() {
        DType::F64 => candle_nn::ops::rms_norm_slow(t, w, eps),
        _ => candle_nn::ops::rms_norm(t, w, eps),
    };
    let x = x.contiguous()?;
    if !x.track_op() {
        return fused(&x);
    }
    let y = fused(&x.detach())?;
    let (xs, ws) = (x.detach(), w.clone());
    // With r = (mean x² + eps)^(-1/2) and u = g ⊙ w: dx = r·u − x·r³·mean(u ⊙ x).
    let bwd = move |g: &Tensor| -> Result<Tensor> {
        let up = |t: &Tensor| -> Result<Tensor> {
            if t.dtype() == DType::F64 {
                Ok(t.clone())
            } else {
                t.to_dtype(DType::F32)
            }
        };
        let (x32, g32) = (up(&xs)?, up(g)?);
        let u = g32.broadcast_mul(&up(&ws)?)?;
        let r = (x32.sqr()?.mean_keepdim(D::Minus1)? + eps as f64)?
            .sqrt()?
            .recip()?;
        let dot = (&u * &x32)?.mean_keepdim(D::Minus1)?;
        let dx = (u.broadcast_mul(&r)? - x32.broadcast_mul(&(r.powf(3.0)? * dot)?)?)?;
        dx.to_dtype(xs.dtype())
    };
    attach(&x, y, Box::new(bwd))
}

/// Rotary embedding of `x` (batch, heads, seq, head_dim) with tables (seq, head_dim/2), halves
/// rotated together (Hugging Face) or adjacent pairs (`interleaved`, llama.cpp's llama GGUFs).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, interleaved: bool) -> Result<Tensor> {
    let run = move |t: &Tensor, s: &Tensor| -> Result<Tensor> {
        if interleaved {
            candle_nn::rotary_emb::rope_i(t, cos, s)
        } else {
            candle_nn::rotary_emb::rope(t, cos, s)
        }
    };
    let x = x.contiguous()?;
    if !x.track_op() {
        return run(&x, sin);
    }
    let y = run(&x.detach(), sin)?;
    // A rotation's transpose is the rotation by the opposite angle.
    let (cos, neg_sin) = (cos.clone(), sin.neg()?);
    let bwd = move |g: &Tensor| -> Result<Tensor> {
        let g = g.contiguous()?;
        if interleaved {
            candle_nn::rotary_emb::rope_i(&g, &cos, &neg_sin)
        } else {
            candle_nn::rotary_emb::rope(&g, &cos, &neg_sin)
        }
    };
    attach(&x, y, Box::new(bwd))
}

/// `log softmax(logits)[label]` per row: logits (n, vocab), labels (n) u32 → (n), in f32 (f64
/// stays f64). The gradient is `g · (onehot(label) − softmax(logits))`, formed in one pass on
/// the CPU; elsewhere candle's composite ops compute both directions.
pub fn token_logprobs(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let fused = logits.device().is_cpu() && logits.dtype() == DType::F32;
    if !fused {
        let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
        let lp = logp.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?;
        return if lp.dtype() == DType::F64 {
            Ok(lp)
        } else {
            lp.to_dtype(DType::F32)
        };
    }
    let labels: Vec<u32> = labels.to_vec1()?;
    logits.contiguous()?.apply_op1(TokenLogprobs { labels })
}

struct TokenLogprobs {
    labels: Vec<u32>,
}

/// Max and log-sum-exp of a row.
fn row_lse(row: &[f32]) -> f32 {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let s: f32 = row.iter().map(|v| (v - m).exp()).sum();
    m + s.ln()
}

impl TokenLogprobs {
    fn rows<'a>(&self, s: &'a CpuStorage, l: &Layout) -> Result<(&'a [f32], usize)> {
        let (n, v) = l.shape().dims2()?;
        if n != self.labels.len() {
            candle_core::bail!(
                "token_logprobs: {n} rows of logits, {} labels",
                self.labels.len()
            );
        }
        if let Some(&bad) = self.labels.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("token_logprobs: label {bad} outside a vocabulary of {v}");
        }
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("token_logprobs: logits must be contiguous")
        };
        Ok((&s.as_slice::<f32>()?[a..b], v))
    }
}

impl CustomOp1 for TokenLogprobs {
    fn name(&self) -> &'static str {
        "token-logprobs"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, v) = self.rows(s, l)?;
        let out: Vec<f32> = x
            .par_chunks(v)
            .zip(self.labels.par_iter())
            .map(|(row, &t)| row[t as usize] - row_lse(row))
            .collect();
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(&self, logits: &Tensor, _lp: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let logits = logits.contiguous()?;
        let g: Vec<f32> = grad.to_dtype(DType::F32)?.to_vec1()?;
        let (s, l) = logits.storage_and_layout();
        let Storage::Cpu(s) = &*s else {
            candle_core::bail!("token_logprobs: logits left the CPU")
        };
        let (x, v) = self.rows(s, l)?;
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(v)
            .zip(x.par_chunks(v))
            .zip(self.labels.par_iter().zip(g.par_iter()))
            .for_each(|((d, row), (&t, &gi))| {
                let lse = row_lse(row);
                for (di, &xi) in d.iter_mut().zip(row) {
                    *di = -gi * (xi - lse).exp();
                }
                d[t as usize] += gi;
            });
        Ok(Some(Tensor::from_vec(dx, l.shape(), logits.device())?))
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The few-rows path gives candle's matmul to f32 rounding, at every batch it takes, with
    /// lengths that are not multiples of its chunk sizes, and x as a strided view; past the
    /// batch limit it is not taken.
    #[test]
    fn small_batches_match_the_matmul() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (131, 77), &dev).unwrap();
        for rows in 1..=SMALL_ROWS {
            let x = Tensor::randn(0f32, 1.0, (77, rows), &dev)
                .unwrap()
                .t()
                .unwrap();
            let ours = small_xwt(&x, &w).unwrap().expect("taken");
            let want = x.matmul(&w.t().unwrap()).unwrap();
            let d: f32 = (&ours - &want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(d < 1e-4, "rows {rows}: {d}");
            assert_eq!(ours.dims(), want.dims());
        }
        let x = Tensor::randn(0f32, 1.0, (SMALL_ROWS + 1, 77), &dev).unwrap();
        assert!(small_xwt(&x, &w).unwrap().is_none());
    }

    /// Same values and the same input gradient as candle's own matmul; no weight gradient.
    #[test]
    fn matches_matmul_forward_and_input_gradient() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (5, 7), &dev).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 7), &dev).unwrap()).unwrap();
        let probe = Tensor::randn(0f32, 1.0, (3, 5), &dev).unwrap();

        let ours = matmul_t(x.as_tensor(), &w).unwrap();
        let g_ours = (&ours * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        // The reference: w as a variable too, so candle computes both gradients.
        let wv = Var::from_tensor(&w).unwrap();
        let theirs = x.as_tensor().matmul(&wv.as_tensor().t().unwrap()).unwrap();
        let g_theirs = (&theirs * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();

        let diff = |a: &Tensor, b: &Tensor| -> f32 {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        assert!(diff(&ours, &theirs) < 1e-5);
        let gx = g_ours.get(x.as_tensor()).expect("input gradient");
        assert!(diff(gx, g_theirs.get(x.as_tensor()).unwrap()) < 1e-5);
        assert!(g_ours.get(&w).is_none(), "a frozen weight gets no gradient");
        assert!(g_theirs.get(wv.as_tensor()).is_some());
        // Without a graph it is a plain matmul.
        let plain = matmul_t(&x.as_tensor().detach(), &w).unwrap();
        assert!(diff(&plain, &theirs) < 1e-5);
    }

    /// Value and gradient of `f(x)·probe` for ours and a reference, compared.
    fn check(
        x: &Tensor,
        ours: impl Fn(&Tensor) -> Result<Tensor>,
        reference: impl Fn(&Tensor) -> Result<Tensor>,
        tol: f64,
    ) {
        let run = |f: &dyn Fn(&Tensor) -> Result<Tensor>| -> (Tensor, Tensor) {
            let v = Var::from_tensor(x).unwrap();
            let y = f(v.as_tensor()).unwrap();
            // A fixed, irregular probe so both sides see the same one.
            let n = y.elem_count();
            let probe: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
            let probe = Tensor::from_vec(probe, y.shape(), y.device())
                .unwrap()
                .to_dtype(y.dtype())
                .unwrap();
            let g = (&y * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            (y, g.get(v.as_tensor()).unwrap().clone())
        };
        let (y1, g1) = run(&ours);
        let (y2, g2) = run(&reference);
        let diff = |a: &Tensor, b: &Tensor| -> f64 {
            let a = a.to_dtype(DType::F64).unwrap();
            let b = b.to_dtype(DType::F64).unwrap();
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        assert!(diff(&y1, &y2) < tol, "values differ by {}", diff(&y1, &y2));
        assert!(
            diff(&g1, &g2) < tol,
            "gradients differ by {}",
            diff(&g1, &g2)
        );
    }

    #[test]
    fn fused_ops_match_candles_composite_ops_in_value_and_gradient() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f64, 1.0, (2, 3, 5, 8), &dev).unwrap();
        check(
            &x,
            softmax_last_dim,
            |t| candle_nn::ops::softmax(t, D::Minus1),
            1e-12,
        );
        let w = Tensor::randn(0f64, 1.0, 8, &dev).unwrap();
        check(
            &x,
            |t| rms_norm(t, &w, 1e-6),
            |t| candle_nn::ops::rms_norm_slow(t, &w, 1e-6),
            1e-12,
        );
        let cos = Tensor::randn(0f64, 1.0, (5, 4), &dev).unwrap();
        let sin = Tensor::randn(0f64, 1.0, (5, 4), &dev).unwrap();
        check(
            &x,
            |t| rope(t, &cos, &sin, false),
            |t| candle_nn::rotary_emb::rope_slow(t, &cos, &sin),
            1e-12,
        );
        check(
            &x,
            |t| rope(t, &cos, &sin, true),
            |t| candle_nn::rotary_emb::rope_i_slow(t, &cos, &sin),
            1e-12,
        );
        // f32 on the CPU takes the one-pass kernel.
        let logits = Tensor::randn(0f32, 3.0, (6, 50), &dev).unwrap();
        let labels = Tensor::new(&[0u32, 49, 7, 7, 20, 3], &dev).unwrap();
        check(
            &logits,
            |t| token_logprobs(t, &labels),
            |t| {
                candle_nn::ops::log_softmax(t, D::Minus1)?
                    .gather(&labels.unsqueeze(1)?, 1)?
                    .squeeze(1)
            },
            1e-5,
        );
        let bad = Tensor::new(&[0u32, 50, 0, 0, 0, 0], &dev).unwrap();
        let err = token_logprobs(&logits, &bad).unwrap_err().to_string();
        assert!(err.contains("label 50 outside a vocabulary of 50"), "{err}");
    }

    #[test]
    fn fused_lora_linear_matches_the_composite_in_value_and_all_three_gradients() {
        let dev = Device::Cpu;
        let r = |shape: (usize, usize)| Tensor::randn(0f64, 1.0, shape, &dev).unwrap();
        let (x0, w, a0, b0) = (r((5, 7)), r((6, 7)), r((3, 7)), r((6, 3)));
        let run = |fused: bool| {
            let (x, a, b) = (
                Var::from_tensor(&x0).unwrap(),
                Var::from_tensor(&a0).unwrap(),
                Var::from_tensor(&b0).unwrap(),
            );
            let (xt, at, bt) = (x.as_tensor(), a.as_tensor(), b.as_tensor());
            let y = if fused {
                lora_matmul_t(xt, &w, at, bt, 0.5).unwrap()
            } else {
                let base = xt.matmul(&w.t().unwrap()).unwrap();
                let d = xt
                    .matmul(&at.t().unwrap())
                    .unwrap()
                    .matmul(&bt.t().unwrap())
                    .unwrap();
                (base + (d * 0.5).unwrap()).unwrap()
            };
            let probe: Vec<f64> = (0..30).map(|i| (i as f64 * 0.61).cos()).collect();
            let probe = Tensor::from_vec(probe, (5, 6), &dev).unwrap();
            let g = (&y * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let grads: Vec<Tensor> = [xt, at, bt]
                .iter()
                .map(|t| g.get(t).unwrap().clone())
                .collect();
            (y, grads)
        };
        let ((y1, g1), (y2, g2)) = (run(true), run(false));
        let diff = |a: &Tensor, b: &Tensor| -> f64 {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        assert!(diff(&y1, &y2) < 1e-12);
        for (a, b) in g1.iter().zip(&g2) {
            assert!(diff(a, b) < 1e-12, "{}", diff(a, b));
        }
    }
}
