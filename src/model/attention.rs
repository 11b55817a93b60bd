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
        hsum(acc)
    }

    /// The sum of the eight lanes, in the one order every dot product here uses.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum(acc: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_extractf128_ps(acc, 1), _mm256_castps256_ps128(acc));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    /// `out[j] = dot_f16(q, k[j·hd..]) · scale` for every j < out.len(), hd = q.len(): four
    /// positions at a time, whose independent FMA chains hide each other's latency. Each is
    /// the very chain and sum `dot_f16` computes, so the scores are its bits.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; q.len() is a multiple of 8 and k holds at least
    /// out.len() · q.len() elements.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scores_f16(q: &[f32], k: &[f16], scale: f32, out: &mut [f32]) {
        let hd = q.len();
        let len = out.len();
        let mut j = 0;
        while j + 4 <= len {
            let mut acc = [_mm256_setzero_ps(); 4];
            for i in (0..hd).step_by(8) {
                // SAFETY: i + 8 ≤ hd, and (j + p)·hd + i + 8 ≤ len·hd ≤ k.len() for p < 4 (the
                // caller's contract).
                unsafe {
                    let qv = _mm256_loadu_ps(q.as_ptr().add(i));
                    for (p, a) in acc.iter_mut().enumerate() {
                        let at = k.as_ptr().add((j + p) * hd + i);
                        let kv = _mm256_cvtph_ps(_mm_loadu_si128(at as *const __m128i));
                        *a = _mm256_fmadd_ps(qv, kv, *a);
                    }
                }
            }
            for (p, a) in acc.iter().enumerate() {
                out[j + p] = hsum(*a) * scale;
            }
            j += 4;
        }
        for (jj, o) in out.iter_mut().enumerate().skip(j) {
            // SAFETY: as above, for one position.
            *o = unsafe { dot_f16(q, &k[jj * hd..(jj + 1) * hd]) } * scale;
        }
    }

    /// `out = Σ_j w[j] · v[j·hd..]`, j in order, for hd = out.len() a multiple of 64: 64 lanes
    /// at a time held in registers over every j. Each lane is the chain of FMAs that
    /// `axpy_f16` called for j = 0, 1, … on a zeroed `out` computes, so the sums are its bits.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; out.len() is a multiple of 64 and v holds at
    /// least w.len() · out.len() elements.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn weighted_sum_f16(w: &[f32], v: &[f16], out: &mut [f32]) {
        let hd = out.len();
        for c in (0..hd).step_by(64) {
            let mut acc = [_mm256_setzero_ps(); 8];
            for (j, &wj) in w.iter().enumerate() {
                let wv = _mm256_set1_ps(wj);
                for (l, a) in acc.iter_mut().enumerate() {
                    // SAFETY: j·hd + c + 8l + 8 ≤ w.len()·hd ≤ v.len() (the caller's contract).
                    let x = unsafe {
                        let at = v.as_ptr().add(j * hd + c + 8 * l);
                        _mm256_cvtph_ps(_mm_loadu_si128(at as *const __m128i))
                    };
                    *a = _mm256_fmadd_ps(wv, x, *a);
                }
            }
            for (l, a) in acc.iter().enumerate() {
                // SAFETY: c + 8l + 8 ≤ hd = out.len().
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(c + 8 * l), *a) };
            }
        }
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
        // The kernels below give the per-position loops' bits, faster (see `simd`).
        #[cfg(target_arch = "x86_64")]
        let fast = match (&kall, &vall) {
            (Rows::F16(k), Rows::F16(v)) if *HAS_F16C && hd.is_multiple_of(64) => {
                Some((&k[base..base + len * hd], &v[base..base + len * hd]))
            }
            _ => None,
        };
        #[cfg(not(target_arch = "x86_64"))]
        let fast: Option<(&[f16], &[f16])> = None;
        let mut scores = vec![0f32; len];
        match fast {
            // SAFETY: AVX2, FMA and F16C checked (HAS_F16C); hd is a multiple of 64 and the
            // slices hold len positions of hd values.
            Some((k, _)) => unsafe { simd::scores_f16(qh, k, scale, &mut scores) },
            None => {
                for (j, x) in scores.iter_mut().enumerate() {
                    *x = kall.dot(qh, base + j * hd) * scale;
                }
            }
        }
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for x in scores.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        let inv = 1.0 / sum;
        match fast {
            Some((_, v)) => {
                for x in scores.iter_mut() {
                    *x *= inv;
                }
                // SAFETY: as above.
                unsafe { simd::weighted_sum_f16(&scores, v, o) }
            }
            None => {
                for (j, &p) in scores.iter().enumerate() {
                    vall.axpy(o, p * inv, base + j * hd);
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The per-position loops the kernels replace: one dot product and one axpy per position.
    fn by_position(q: &[f32], k: &[f16], v: &[f16], len: usize, hd: usize) -> Vec<f32> {
        let (k, v) = (Rows::F16(k), Rows::F16(v));
        let scale = 1.0 / (hd as f32).sqrt();
        let mut scores: Vec<f32> = (0..len).map(|j| k.dot(q, j * hd) * scale).collect();
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for x in scores.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        let inv = 1.0 / sum;
        let mut out = vec![0f32; hd];
        for (j, &p) in scores.iter().enumerate() {
            v.axpy(&mut out, p * inv, j * hd);
        }
        out
    }

    #[test]
    fn the_kernels_give_the_per_position_loops_bits() {
        let dev = Device::Cpu;
        for hd in [64, 128] {
            for len in [1, 3, 4, 5, 127, 1031] {
                let cap = len + 7;
                let q = Tensor::randn(0f32, 1.0, (1, 2, 1, hd), &dev).unwrap();
                let kv = |seed: f32| {
                    (Tensor::randn(0f32, 1.0, (1, 1, cap, hd), &dev).unwrap() * seed as f64)
                        .unwrap()
                        .to_dtype(DType::F16)
                        .unwrap()
                };
                let (k, v) = (kv(2.0), kv(1.0));
                let got: Vec<f32> = decode_attention(&q, &k, &v, len)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let qs: Vec<f32> = q.flatten_all().unwrap().to_vec1().unwrap();
                let ks: Vec<f16> = k.flatten_all().unwrap().to_vec1().unwrap();
                let vs: Vec<f16> = v.flatten_all().unwrap().to_vec1().unwrap();
                for h in 0..2 {
                    let want = by_position(&qs[h * hd..(h + 1) * hd], &ks, &vs, len, hd);
                    let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&got[h * hd..(h + 1) * hd]),
                        bits(&want),
                        "hd {hd}, len {len}, head {h}"
                    );
                }
            }
        }
    }
}
