//! CPU matrix products on quantized weights, repacked at load for SIMD.
//!
//! candle 0.11's CPU `Q4_1` dot product is scalar (most of decode time on the default model), and
//! its quantized matmuls pay a thread-pool hand-off per call. This module repacks Q4_0, Q4_1 and
//! Q8_0 weights into separate scale / offset / nibble arrays and computes `x·Wᵀ` with AVX2 integer
//! dot products, the way llama.cpp does: activations are quantized per 32-block to 8 bits
//! (ggml's Q8_1 for 4-bit weights, Q8_0 for 8-bit ones) and every block contributes
//! `d_w·d_x·Σ q_w·q_x + m_w·s_x`. Q4_0 is stored as Q4_1 with `m = −8·d`, which is the same
//! function. Other types stay with candle.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use half::f16;
use rayon::prelude::*;
use std::ops::Range;

mod gemm_order;

/// Whether `forward` runs prefill's products on the packed weights themselves (the gemm-order
/// kernel); where not, it dequantizes on every call, and a prefill had better dequantize each
/// layer once for all of its steps.
pub(crate) fn prefill_on_packed() -> bool {
    gemm_order::available()
}

const QK: usize = 32;

/// From this many input rows on, `forward` gives the bits of gemm's dense f32 product on the
/// dequantized weights (by the gemm-order kernel, or by dequantizing and calling gemm where that
/// declines), so a row's result does not depend on how many rows share the product; below it,
/// integer dot products, faster for a decode step's few rows. The same limit as a dense model's
/// few-row path (`grad::SMALL_ROWS`), so that one bound covers both kinds of weights.
pub(crate) const EXACT_ROWS: usize = super::grad::SMALL_ROWS + 1;

/// Weights of one matrix (n rows of k), blocks of 32 along k.
#[derive(Debug)]
pub struct Packed {
    pub n: usize,
    pub k: usize,
    pub dtype: GgmlDType,
    /// Per block: weight scale. Kept in f16 as in the file: decode is bound by memory
    /// bandwidth, and f32 scales would move 20% more bytes per Q4 block.
    d: Vec<f16>,
    /// Per block: offset (Q4_1) — empty for Q8_0, and for Q4_0, whose offset is −8·d (computed
    /// where needed: decode is bound by memory bandwidth, and the 2 bytes are 11% of a block).
    m: Vec<f16>,
    /// Q4 kinds: 16 bytes per block; byte j holds element j (low nibble) and j + 16 (high).
    /// Q8_0: 32 signed bytes per block.
    qs: Vec<u8>,
}

impl Packed {
    /// Repack a CPU QTensor of a supported type and shape (n, k) with k a multiple of 32.
    pub fn from_qtensor(q: &QTensor) -> candle_core::Result<Option<Packed>> {
        let (n, k) = q.shape().dims2()?;
        let dtype = q.dtype();
        if !matches!(dtype, GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q8_0) || k % QK != 0 {
            return Ok(None);
        }
        let raw = q.data()?;
        let blocks = n * k / QK;
        let mut d = Vec::with_capacity(blocks);
        let mut m = Vec::with_capacity(blocks);
        let f16_at = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]);
        let qs = match dtype {
            GgmlDType::Q4_1 => {
                let mut qs = Vec::with_capacity(blocks * 16);
                for b in raw.chunks_exact(20) {
                    d.push(f16_at(b, 0));
                    m.push(f16_at(b, 2));
                    qs.extend_from_slice(&b[4..20]);
                }
                qs
            }
            GgmlDType::Q4_0 => {
                let mut qs = Vec::with_capacity(blocks * 16);
                for b in raw.chunks_exact(18) {
                    d.push(f16_at(b, 0));
                    qs.extend_from_slice(&b[2..18]);
                }
                qs
            }
            _ => {
                let mut qs = Vec::with_capacity(blocks * 32);
                for b in raw.chunks_exact(34) {
                    d.push(f16_at(b, 0));
                    qs.extend_from_slice(&b[2..34]);
                }
                qs
            }
        };
        if d.len() != blocks {
            return Ok(None);
        }
        Ok(Some(Packed {
            n,
            k,
            dtype,
            d,
            m,
            qs,
        }))
    }

    /// Blocks already split into scales and quants (Q8_0 or Q4_0, see `quantize::pack`).
    pub(super) fn from_blocks(
        n: usize,
        k: usize,
        dtype: GgmlDType,
        d: Vec<f16>,
        qs: Vec<u8>,
    ) -> Packed {
        Packed {
            n,
            k,
            dtype,
            d,
            m: vec![],
            qs,
        }
    }

    /// The blocks in ggml's layout (Q8_0: f16 d, 32 i8; Q4_0: f16 d, 16 bytes; Q4_1: f16 d, f16
    /// m, 16 bytes), as a GGUF file holds them.
    pub fn ggml_blocks(&self) -> Vec<u8> {
        let per = if self.is_q8() { QK } else { QK / 2 };
        let mut out = vec![];
        for (b, q) in self.qs.chunks_exact(per).enumerate() {
            out.extend_from_slice(&self.d[b].to_le_bytes());
            if self.dtype == GgmlDType::Q4_1 {
                out.extend_from_slice(&self.m[b].to_le_bytes());
            }
            out.extend_from_slice(q);
        }
        out
    }

    /// Bytes the packed matrix holds.
    pub fn bytes(&self) -> usize {
        (self.d.len() + self.m.len()) * 2 + self.qs.len()
    }

    /// Block b's offset: Q4_1's stored one, Q4_0's −8·d (exact: a power-of-two multiple).
    fn offset(&self, b: usize) -> f32 {
        if self.dtype == GgmlDType::Q4_0 {
            -8.0 * self.d[b].to_f32()
        } else {
            self.m[b].to_f32()
        }
    }

    fn is_q8(&self) -> bool {
        self.dtype == GgmlDType::Q8_0
    }

    /// How the per-block activation sum is formed: Q4_1 pairs with ggml's Q8_1, whose sum is
    /// rounded through f16; Q4_0 pairs with Q8_0, where the −8 offset is exact integer math.
    fn sum_mode(&self) -> SumMode {
        match self.dtype {
            GgmlDType::Q8_0 => SumMode::None,
            GgmlDType::Q4_0 => SumMode::Exact,
            _ => SumMode::F16,
        }
    }

    /// Stack matrices with the same type and width into one (fused projections).
    pub fn concat(parts: &[&Packed]) -> Option<Packed> {
        let first = parts.first()?;
        if parts
            .iter()
            .any(|p| p.dtype != first.dtype || p.k != first.k)
        {
            return None;
        }
        Some(Packed {
            n: parts.iter().map(|p| p.n).sum(),
            k: first.k,
            dtype: first.dtype,
            d: parts.iter().flat_map(|p| p.d.iter().copied()).collect(),
            m: parts.iter().flat_map(|p| p.m.iter().copied()).collect(),
            qs: parts.iter().flat_map(|p| p.qs.iter().copied()).collect(),
        })
    }

    /// The given rows (e.g. token ids of an embedding) as dense f32, (ids.len(), k).
    pub fn rows(&self, ids: &[u32], device: &Device) -> candle_core::Result<Tensor> {
        let mut out = vec![0f32; ids.len() * self.k];
        for (dst, &id) in out.chunks_exact_mut(self.k).zip(ids) {
            if id as usize >= self.n {
                candle_core::bail!("row {id} out of range for a matrix of {} rows", self.n);
            }
            let first = id as usize * self.k / QK;
            for (i, blk) in dst.chunks_exact_mut(QK).enumerate() {
                self.decode_block(first + i, blk);
            }
        }
        Tensor::from_vec(out, (ids.len(), self.k), device)
    }

    /// Rows `rows` of the matrix as dense f32.
    pub fn dequantize_rows(
        &self,
        rows: Range<usize>,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let first = rows.start * self.k / QK;
        let mut out = vec![0f32; rows.len() * self.k];
        out.par_chunks_mut(QK)
            .enumerate()
            .for_each(|(i, dst)| self.decode_block(first + i, dst));
        Tensor::from_vec(out, (rows.len(), self.k), device)
    }

    /// Block `b` (32 values) as f32.
    fn decode_block(&self, b: usize, dst: &mut [f32]) {
        let d = self.d[b].to_f32();
        if self.is_q8() {
            for (o, &q) in dst.iter_mut().zip(&self.qs[b * 32..b * 32 + 32]) {
                *o = d * (q as i8) as f32;
            }
        } else {
            let m = self.offset(b);
            let qs = &self.qs[b * 16..b * 16 + 16];
            for j in 0..16 {
                dst[j] = d * (qs[j] & 0x0F) as f32 + m;
                dst[j + 16] = d * (qs[j] >> 4) as f32 + m;
            }
        }
    }

    /// `x·Wᵀ` for x of shape (..., k), f32 on the CPU.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_rows(x, 0..self.n)
    }

    /// `x·W[rows]ᵀ`: only the given weight rows.
    pub fn forward_rows(&self, x: &Tensor, wrows: Range<usize>) -> candle_core::Result<Tensor> {
        let n = wrows.len();
        let dims = x.dims().to_vec();
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        let mut shape = dims;
        *shape.last_mut().expect("non-empty dims") = n;
        if rows >= EXACT_ROWS {
            // Prefill: the dense product's bits, without materializing the f32 weights where
            // the gemm-order kernel applies (the input is copied out only then).
            if gemm_order::takes(rows, n) {
                let xs = x.flatten_all()?.to_vec1::<f32>()?;
                if let Some(out) = self.forward_gemm_order(&xs, rows, wrows.clone()) {
                    return Tensor::from_vec(out, shape, x.device());
                }
            }
            let w = self.dequantize_rows(wrows, x.device())?;
            return x.reshape((rows, self.k))?.matmul(&w.t()?)?.reshape(shape);
        }
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let act = Activations::quantize(&xs, rows, self.k, self.sum_mode());
        let mut out = vec![0f32; rows * n];
        // Each task owns a range of weight rows; all activation rows are processed against a
        // weight row while it is in cache.
        let chunk = (n / (rayon::current_num_threads() * 4)).clamp(16, 256);
        let out_ptr = SyncPtr(out.as_mut_ptr());
        (0..n.div_ceil(chunk)).into_par_iter().for_each(|c| {
            let p = &out_ptr;
            let lo = c * chunk;
            let hi = (lo + chunk).min(n);
            for r in lo..hi {
                let mut i = 0;
                while i < rows {
                    let take = (rows - i).min(4);
                    let mut res = [0f32; 4];
                    self.dot_rows(wrows.start + r, &act, i, take, &mut res);
                    for (j, v) in res.iter().take(take).enumerate() {
                        // SAFETY: i + j < rows and r < n, so the offset lies inside `out`
                        // (rows · n, alive until the loop ends); (i + j, r) is written by
                        // exactly one task (weight row r).
                        unsafe { *p.0.add((i + j) * n + r) = *v };
                    }
                    i += take;
                }
            }
        });
        Tensor::from_vec(out, shape, x.device())
    }

    /// Dot products of weight row `r` with activation rows `first..first + count` (count ≤ 4).
    fn dot_rows(
        &self,
        r: usize,
        act: &Activations,
        first: usize,
        count: usize,
        out: &mut [f32; 4],
    ) {
        let bpr = self.k / QK;
        let b0 = r * bpr;
        #[cfg(target_arch = "x86_64")]
        {
            if *HAS_AVX2 {
                // SAFETY: AVX2, FMA and F16C are present (checked at run time); the slices hold
                // bpr blocks (16 or 32 bytes each), `act` was quantized from all `rows` rows of
                // k = bpr · 32 and first + count ≤ rows with count ≤ 4, as the kernels require.
                unsafe {
                    if self.is_q8() {
                        avx2::q8_0_rows(
                            bpr,
                            &self.d[b0..b0 + bpr],
                            &self.qs[b0 * 32..(b0 + bpr) * 32],
                            act,
                            first,
                            count,
                            out,
                        )
                    } else {
                        // Q4_0's offsets are −8·d: Σ m·s is −8·Σ d·s, bit for bit (scaling by a
                        // power of two is exact), read from the scales already in cache.
                        let (wm, m_scale) = if self.dtype == GgmlDType::Q4_0 {
                            (&self.d[b0..b0 + bpr], -8.0)
                        } else {
                            (&self.m[b0..b0 + bpr], 1.0)
                        };
                        avx2::q4_rows(
                            bpr,
                            &self.d[b0..b0 + bpr],
                            wm,
                            m_scale,
                            &self.qs[b0 * 16..(b0 + bpr) * 16],
                            act,
                            first,
                            count,
                            out,
                        )
                    }
                }
                return;
            }
        }
        for (j, o) in out.iter_mut().enumerate().take(count) {
            let row = first + j;
            let mut sum = 0f32;
            for b in 0..bpr {
                let xb = row * bpr + b;
                let xq = &act.q[xb * 32..xb * 32 + 32];
                let mut si = 0i32;
                if self.is_q8() {
                    let wq = &self.qs[(b0 + b) * 32..(b0 + b) * 32 + 32];
                    for t in 0..32 {
                        si += (wq[t] as i8) as i32 * xq[t] as i32;
                    }
                    sum += si as f32 * self.d[b0 + b].to_f32() * act.d[xb];
                } else {
                    let wq = &self.qs[(b0 + b) * 16..(b0 + b) * 16 + 16];
                    for t in 0..16 {
                        si += (wq[t] & 0x0F) as i32 * xq[t] as i32
                            + (wq[t] >> 4) as i32 * xq[t + 16] as i32;
                    }
                    sum += si as f32 * self.d[b0 + b].to_f32() * act.d[xb]
                        + self.offset(b0 + b) * act.s[xb];
                }
            }
            *o = sum;
        }
    }
}

struct SyncPtr(*mut f32);
// SAFETY: used only for disjoint writes from parallel tasks (see `forward`).
unsafe impl Sync for SyncPtr {}

#[cfg(target_arch = "x86_64")]
static HAS_AVX2: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
});

#[derive(Clone, Copy, PartialEq, Eq)]
enum SumMode {
    None,
    Exact,
    F16,
}

/// Activations quantized to 8 bits per 32-block, exactly as ggml / candle do (scales rounded
/// through f16), so results agree with their kernels up to summation order.
struct Activations {
    q: Vec<i8>,
    d: Vec<f32>,
    /// d · Σq per block (Q8_1), for the offset term of Q4 weights.
    s: Vec<f32>,
}

impl Activations {
    fn quantize(xs: &[f32], rows: usize, k: usize, mode: SumMode) -> Activations {
        let blocks = rows * k / QK;
        let mut q = vec![0i8; rows * k];
        let mut d = vec![0f32; blocks];
        let mut s = vec![0f32; if mode == SumMode::None { 0 } else { blocks }];
        for b in 0..blocks {
            let x = &xs[b * QK..b * QK + QK];
            let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
            let scale = amax / 127.0;
            let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
            let d16 = f16::from_f32(scale);
            let mut sum = 0i32;
            for (o, v) in q[b * QK..b * QK + QK].iter_mut().zip(x) {
                *o = (v * inv).round() as i8;
                sum += *o as i32;
            }
            d[b] = d16.to_f32();
            match mode {
                SumMode::None => {}
                SumMode::Exact => s[b] = d[b] * sum as f32,
                SumMode::F16 => s[b] = (f16::from_f32(sum as f32) * d16).to_f32(),
            }
        }
        Activations { q, d, s }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // lanes of fixed-size accumulator arrays
mod avx2 {
    use super::Activations;
    use half::f16;
    use std::arch::x86_64::*;

    /// Σ of the 8 lanes.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum(v: __m256) -> f32 {
        let hi = _mm256_extractf128_ps(v, 1);
        let lo = _mm256_castps256_ps128(v);
        let s = _mm_add_ps(hi, lo);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Q4_0 / Q4_1 weight row against up to 4 activation rows.
    ///
    /// Two accumulators per row (even and odd blocks) break the FMA latency chain; the offset
    /// term Σ m_w·s_x is a plain dot product over blocks, done after the loop.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `wd` and `wm` hold `bpr` scales (`wm` the
    /// offsets, or for Q4_0 the scales again with `m_scale` = −8), `wq` holds
    /// `bpr · 16` bytes, `act` holds whole rows of `bpr` blocks with rows `first..first + count`
    /// among them, and `count ≤ 4`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q4_rows(
        bpr: usize,
        wd: &[f16],
        wm: &[f16],
        m_scale: f32,
        wq: &[u8],
        act: &Activations,
        first: usize,
        count: usize,
        out: &mut [f32; 4],
    ) {
        let low = _mm_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc0 = [_mm256_setzero_ps(); 4];
        let mut acc1 = [_mm256_setzero_ps(); 4];
        let expand = |b: usize| {
            // SAFETY: b < bpr, so the 16 bytes at b · 16 lie inside `wq` (bpr · 16 bytes).
            let q = unsafe { _mm_loadu_si128(wq.as_ptr().add(b * 16) as *const __m128i) };
            let lo = _mm_and_si128(q, low);
            let hi = _mm_and_si128(_mm_srli_epi16(q, 4), low);
            _mm256_set_m128i(hi, lo)
        };
        let term = |w: __m256i, b: usize, xb: usize| {
            // SAFETY: xb = row · bpr + b for a row of `act` and b < bpr, so block xb (its 32
            // bytes in `act.q`, its scale in `act.d`) and scale b of `wd` exist.
            let (x, scale) = unsafe {
                (
                    _mm256_loadu_si256(act.q.as_ptr().add(xb * 32) as *const __m256i),
                    wd.get_unchecked(b).to_f32() * *act.d.get_unchecked(xb),
                )
            };
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), ones);
            (_mm256_cvtepi32_ps(p), _mm256_set1_ps(scale))
        };
        let mut b = 0;
        while b + 1 < bpr {
            // The next rows follow this one in memory: fetch ahead, since the hardware
            // prefetchers alone leave a core streaming at a few GB/s here.
            // A prefetch never faults, so the address may run past the end of `wq`: `wrapping_add`
            // computes it without `add`'s in-bounds requirement.
            _mm_prefetch(
                wq.as_ptr().wrapping_add(b * 16 + PREFETCH) as *const i8,
                _MM_HINT_T0,
            );
            let w0 = expand(b);
            let w1 = expand(b + 1);
            for j in 0..count {
                let xb = (first + j) * bpr + b;
                let (p0, s0) = term(w0, b, xb);
                let (p1, s1) = term(w1, b + 1, xb + 1);
                acc0[j] = _mm256_fmadd_ps(p0, s0, acc0[j]);
                acc1[j] = _mm256_fmadd_ps(p1, s1, acc1[j]);
            }
            b += 2;
        }
        if b < bpr {
            let w0 = expand(b);
            for j in 0..count {
                let xb = (first + j) * bpr + b;
                let (p0, s0) = term(w0, b, xb);
                acc0[j] = _mm256_fmadd_ps(p0, s0, acc0[j]);
            }
        }
        for j in 0..count {
            let xs = &act.s[(first + j) * bpr..(first + j + 1) * bpr];
            // SAFETY: this function's own target features are the ones hsum and dot8 need.
            out[j] = unsafe { hsum(_mm256_add_ps(acc0[j], acc1[j])) + m_scale * dot8(wm, xs) };
        }
    }

    /// Σ a·b (a in f16) with 8-lane FMAs.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot8(a: &[f16], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 ≤ n ≤ both lengths, so the 8 elements at i lie inside `a` and `b`.
            let (av, bv) = unsafe {
                (
                    _mm256_cvtph_ps(_mm_loadu_si128(a.as_ptr().add(i) as *const __m128i)),
                    _mm256_loadu_ps(b.as_ptr().add(i)),
                )
            };
            acc = _mm256_fmadd_ps(av, bv, acc);
            i += 8;
        }
        // SAFETY: this function's own target features are the ones hsum needs.
        let mut s = unsafe { hsum(acc) };
        while i < n {
            s += a[i].to_f32() * b[i];
            i += 1;
        }
        s
    }

    /// Bytes ahead of the current block to prefetch.
    const PREFETCH: usize = 1024;

    /// Q8_0 weight row against up to 4 activation rows.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `wd` holds `bpr` scales, `wq` holds `bpr · 32`
    /// bytes, `act` holds whole rows of `bpr` blocks with rows `first..first + count` among them,
    /// and `count ≤ 4`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q8_0_rows(
        bpr: usize,
        wd: &[f16],
        wq: &[u8],
        act: &Activations,
        first: usize,
        count: usize,
        out: &mut [f32; 4],
    ) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 4];
        for b in 0..bpr {
            // As in q4_rows: the prefetch address may run past `wq`, hence `wrapping_add`.
            _mm_prefetch(
                wq.as_ptr().wrapping_add(b * 32 + PREFETCH) as *const i8,
                _MM_HINT_T0,
            );
            // SAFETY: b < bpr, so the 32 bytes at b · 32 lie inside `wq` (bpr · 32 bytes).
            let w = unsafe { _mm256_loadu_si256(wq.as_ptr().add(b * 32) as *const __m256i) };
            // maddubs needs an unsigned operand: |w| against x with w's sign moved onto it.
            let wabs = _mm256_sign_epi8(w, w);
            for j in 0..count {
                let xb = (first + j) * bpr + b;
                // SAFETY: xb = row · bpr + b for a row of `act` and b < bpr, so block xb (its 32
                // bytes in `act.q`, its scale in `act.d`) and scale b of `wd` exist.
                let (x, d) = unsafe {
                    (
                        _mm256_loadu_si256(act.q.as_ptr().add(xb * 32) as *const __m256i),
                        wd.get_unchecked(b).to_f32() * *act.d.get_unchecked(xb),
                    )
                };
                let xs = _mm256_sign_epi8(x, w);
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, xs), ones);
                let scale = _mm256_set1_ps(d);
                acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[j]);
            }
        }
        for j in 0..count {
            // SAFETY: this function's own target features are the ones hsum needs.
            out[j] = unsafe { hsum(acc[j]) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QMatMul;
    use candle_core::Module;

    fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        max_abs(&(a - b).unwrap())
    }

    /// Against candle's own quantized matmul on the same blocks (same activation quantization,
    /// different summation order).
    #[test]
    fn matches_candle_quantized_matmul() {
        let dev = Device::Cpu;
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            // k = 288: not a multiple of 256, so candle takes its classic (non-repacked) path.
            let w = Tensor::randn(0f32, 0.5, (96, 288), &dev).unwrap();
            let q = QTensor::quantize(&w, dtype).unwrap();
            let packed = Packed::from_qtensor(&q).unwrap().unwrap();
            let reference = QMatMul::from_qtensor(q).unwrap();
            for rows in [1usize, 3, 7] {
                let x = Tensor::randn(0f32, 1.0, (rows, 288), &dev).unwrap();
                let ours = packed.forward(&x).unwrap();
                let theirs = reference.forward(&x).unwrap();
                let diff = max_diff(&ours, &theirs);
                let scale = max_abs(&theirs);
                assert!(
                    diff <= 1e-5 * scale.max(1.0),
                    "{dtype:?} rows {rows}: Δ {diff} (max {scale})"
                );
            }
            // Long inputs take the dense path: x · dequantized(W)ᵀ.
            let x = Tensor::randn(0f32, 1.0, (40, 288), &dev).unwrap();
            let dense = x
                .matmul(&packed.dequantize_rows(0..96, &dev).unwrap().t().unwrap())
                .unwrap();
            let diff = max_diff(&packed.forward(&x).unwrap(), &dense);
            assert!(diff < 1e-4, "{dtype:?} gemm path: Δ {diff}");
            // Row views compute only their rows.
            let part = packed
                .forward_rows(&x.narrow(0, 0, 2).unwrap(), 10..20)
                .unwrap();
            let want = packed
                .forward(&x.narrow(0, 0, 2).unwrap())
                .unwrap()
                .narrow(1, 10, 10)
                .unwrap();
            let diff = max_diff(&part, &want);
            assert_eq!(diff, 0.0, "{dtype:?} row view");
            let dq = packed.dequantize_rows(0..96, &dev).unwrap();
            let want = QTensor::quantize(&w, dtype)
                .unwrap()
                .dequantize(&dev)
                .unwrap();
            let diff = max_diff(&dq, &want);
            assert_eq!(diff, 0.0, "{dtype:?} dequantize");
        }
    }
}
