//! Single-token (decode) attention on the CPU, read straight from the KV cache buffers.
//!
//! With candle ops, each decode step would transpose and copy the cached keys of every layer
//! (the cache view is strided) and run tiny GEMMs with packing overhead; at a 600-token context
//! that costs more than all the weight matmuls. Here each query head reads its KV head's rows in
//! place: scores, softmax, weighted sum, one rayon task per (batch row, head).

use candle_core::{DType, Storage, Tensor};
use rayon::prelude::*;

/// Whether `decode_attention` can handle these tensors.
pub fn supported(q: &Tensor, k: &Tensor) -> bool {
    q.device().is_cpu() && q.dtype() == DType::F32 && k.dtype() == DType::F32 && k.is_contiguous()
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
    let kall = &kc.as_slice::<f32>()?[kl.start_offset()..];
    let vall = &vc.as_slice::<f32>()?[vl.start_offset()..];
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; b * nh * hd];
    out.par_chunks_mut(hd).enumerate().for_each(|(idx, o)| {
        let (bi, h) = (idx / nh, idx % nh);
        let base = (bi * nkv + h / groups) * cap * hd;
        let qh = &qv[idx * hd..(idx + 1) * hd];
        let mut scores: Vec<f32> = (0..len)
            .map(|j| dot(qh, &kall[base + j * hd..base + (j + 1) * hd]) * scale)
            .collect();
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for x in scores.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        let inv = 1.0 / sum;
        for (j, &p) in scores.iter().enumerate() {
            let vrow = &vall[base + j * hd..base + (j + 1) * hd];
            let w = p * inv;
            for (a, &v) in o.iter_mut().zip(vrow) {
                *a += w * v;
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
