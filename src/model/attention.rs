//! Single-token (decode) attention on the CPU, read straight from the KV cache buffers.
//!
//! With candle ops, each decode step would transpose and copy the cached keys of every layer
//! (the cache view is strided) and run tiny GEMMs with packing overhead; at a 600-token context
//! that costs more than all the weight matmuls. Here each query head reads its KV head's rows in
//! place: scores, softmax, weighted sum, one rayon task per (batch row, head).

use candle_core::{DType, Storage, Tensor};
use half::f16;
use rayon::prelude::*;

/// Whether `decode_attention` can handle these tensors.
pub fn supported(q: &Tensor, k: &Tensor) -> bool {
    q.device().is_cpu()
        && q.dtype() == DType::F32
        && matches!(k.dtype(), DType::F32 | DType::F16)
        && k.is_contiguous()
}

/// A cache buffer as a slice of its element type.
enum Rows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl Rows<'_> {
    /// q · row (row = hd elements from `start`).
    #[inline]
    fn dot(&self, q: &[f32], start: usize) -> f32 {
        let hd = q.len();
        match self {
            Rows::F32(s) => dot(q, &s[start..start + hd]),
            Rows::F16(s) => dot_f16(q, &s[start..start + hd]),
        }
    }

    /// out += w · row.
    #[inline]
    fn axpy(&self, out: &mut [f32], w: f32, start: usize) {
        let hd = out.len();
        match self {
            Rows::F32(s) => {
                for (a, &v) in out.iter_mut().zip(&s[start..start + hd]) {
                    *a += w * v;
                }
            }
            Rows::F16(s) => axpy_f16(out, w, &s[start..start + hd]),
        }
    }
}

#[cfg(target_arch = "x86_64")]
static HAS_F16C: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
});

fn dot_f16(q: &[f32], k: &[f16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if *HAS_F16C && q.len().is_multiple_of(8) {
        // SAFETY: features checked above; q.len() is a multiple of 8 and both slices hold
        // q.len() elements (one head of hd values each).
        return unsafe { simd::dot_f16(q, k) };
    }
    q.iter().zip(k).map(|(a, b)| a * b.to_f32()).sum()
}

fn axpy_f16(out: &mut [f32], w: f32, v: &[f16]) {
    #[cfg(target_arch = "x86_64")]
    if *HAS_F16C && out.len().is_multiple_of(8) {
        // SAFETY: features checked above; out.len() is a multiple of 8 and both slices hold
        // out.len() elements (one head of hd values each).
        return unsafe { simd::axpy_f16(out, w, v) };
    }
    for (a, b) in out.iter_mut().zip(v) {
        *a += w * b.to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use half::f16;
    use std::arch::x86_64::*;

    /// Σ q·k over q.len() elements.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; q.len() is a multiple of 8 and k holds at least
    /// q.len() elements.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(q: &[f32], k: &[f16]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for i in (0..q.len()).step_by(8) {
            // SAFETY: i + 8 ≤ q.len() ≤ k.len() (the caller's contract), so the 8 elements at i
            // lie inside both slices.
            let (kv, qv) = unsafe {
                (
                    _mm256_cvtph_ps(_mm_loadu_si128(k.as_ptr().add(i) as *const __m128i)),
                    _mm256_loadu_ps(q.as_ptr().add(i)),
                )
            };
            acc = _mm256_fmadd_ps(qv, kv, acc);
        }
        let s = _mm_add_ps(_mm256_extractf128_ps(acc, 1), _mm256_castps256_ps128(acc));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    /// out += w · v over out.len() elements.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; out.len() is a multiple of 8 and v holds at least
    /// out.len() elements.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn axpy_f16(out: &mut [f32], w: f32, v: &[f16]) {
        let wv = _mm256_set1_ps(w);
        for i in (0..out.len()).step_by(8) {
            // SAFETY: i + 8 ≤ out.len() ≤ v.len() (the caller's contract), so the 8 elements at
            // i lie inside both slices; `out` is borrowed mutably, so nothing else aliases them.
            unsafe {
                let x = _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(i) as *const __m128i));
                let o = out.as_mut_ptr().add(i);
                _mm256_storeu_ps(o, _mm256_fmadd_ps(wv, x, _mm256_loadu_ps(o)));
            }
        }
    }
}

fn rows<'a>(c: &'a candle_core::CpuStorage, offset: usize) -> candle_core::Result<Rows<'a>> {
    Ok(match c {
        candle_core::CpuStorage::F16(s) => Rows::F16(&s[offset..]),
        other => Rows::F32(&other.as_slice::<f32>()?[offset..]),
    })
}

/// q: (b, heads, 1, hd); k_cache, v_cache: (b, kv_heads, capacity, hd), the first `len`
/// positions valid. Returns (b, heads, 1, hd).
pub fn decode_attention(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    len: usize,
) -> candle_core::Result<Tensor> {
    let (b, nh, s, hd) = q.dims4()?;
    let (_, nkv, cap, _) = k_cache.dims4()?;
    debug_assert_eq!(s, 1);
    let groups = nh / nkv;
    let qv: Vec<f32> = q.flatten_all()?.to_vec1()?;
    let (ks, kl) = k_cache.storage_and_layout();
    let (vs, vl) = v_cache.storage_and_layout();
    let (Storage::Cpu(kc), Storage::Cpu(vc)) = (&*ks, &*vs) else {
        candle_core::bail!("decode_attention: CPU tensors expected")
    };
    let kall = rows(kc, kl.start_offset())?;
    let vall = rows(vc, vl.start_offset())?;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; b * nh * hd];
    out.par_chunks_mut(hd).enumerate().for_each(|(idx, o)| {
        let (bi, h) = (idx / nh, idx % nh);
        let base = (bi * nkv + h / groups) * cap * hd;
        let qh = &qv[idx * hd..(idx + 1) * hd];
        let mut scores: Vec<f32> = (0..len)
            .map(|j| kall.dot(qh, base + j * hd) * scale)
            .collect();
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for x in scores.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        let inv = 1.0 / sum;
        for (j, &p) in scores.iter().enumerate() {
            vall.axpy(o, p * inv, base + j * hd);
        }
    });
    drop(ks);
    drop(vs);
    Tensor::from_vec(out, (b, nh, 1, hd), q.device())
}

/// Dot product with eight independent partial sums, so the compiler can keep it in SIMD lanes.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}
