//! `x·Wᵀ` on packed weights with the bits of gemm's dense f32 product on the dequantized
//! weights, for a few to a hundred-odd input rows, without materializing the f32 weights.
//!
//! Why: a prefill step of r rows must give each row exactly what a step of a whole block gives
//! it (the prefix cache resumes inside blocks), so every step of more than a few rows used to
//! dequantize its layer to f32 and call gemm: a tenth of a second per call on the default model
//! before any arithmetic, and for steps under 32 rows integer kernels whose rows differed from
//! the dense ones. Here each weight row is decoded into a small buffer that stays in cache and
//! the products are summed in gemm's order.
//!
//! What decides gemm's bits (gemm-common 0.19's f32 kernels, which candle 0.11 calls with
//! alpha 0 and beta 1): every output element is one chain of fused multiply-adds over the inner
//! dimension, started from zero at each chunk of `kc` inputs; the first chunk's chain is stored,
//! each later one is added to what is stored. `kc` comes from `gemm_common::cache::kernel_params`
//! (the machine's cache sizes and the kernel's MR × NR tile; MR = 64, NR = 6 for the AVX-512
//! kernels), or is min(k, 512) when both sides have at most 64 rows. Products of at most 256
//! elements and single rows or columns take other routes in gemm (horizontal kernels, gemv):
//! [`Packed::forward_gemm_order`] declines them, and everything where the CPU lacks AVX-512
//! (gemm then runs its AVX2 kernels, MR = 16), and the caller runs gemm itself.

use super::{Packed, SyncPtr, QK};
use rayon::prelude::*;
use std::ops::Range;

/// f32 lanes in an AVX-512 register.
const LANES: usize = 16;
/// Weight rows per tile: with four vectors of input rows, 24 accumulators, four input vectors
/// and a broadcast weight fill 29 of the 32 registers.
const TILE: usize = 6;
/// Vectors of input rows per pass over a tile (64 rows).
const GROUP: usize = 4;
/// Most input rows the kernel takes: it re-reads every input row for each tile of weight rows,
/// which stays in cache for a block's rows (where it beats dequantizing and calling gemm) but
/// not for several blocks' (prefill's batched whole steps: 230 tok/s against gemm's 356 on the
/// default model), where gemm's own blocking wins.
const MAX_ROWS: usize = 128;
/// gemm's f32 AVX-512 kernel tile.
const MR: usize = 4 * LANES;
const NR: usize = 6;

#[cfg(target_arch = "x86_64")]
static HAS_AVX512: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
    // What gemm's V4 kernels require (pulp's x86-v4 set, as gemm-common 0.19 declares it).
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
});

/// Whether this CPU runs the kernel (else `forward_gemm_order` always declines).
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return *HAS_AVX512;
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the kernel takes a product of `rows` input rows and `n` outputs (see the module's
/// note), so that a caller copies its input out only when it will.
pub(super) fn takes(rows: usize, n: usize) -> bool {
    available() && rows > 1 && rows <= MAX_ROWS && n > 1 && rows * n > 256
}

/// The inner-dimension chunks gemm sums separately for an (m × k) · (k × n) product.
fn chunks(m: usize, n: usize, k: usize) -> Vec<Range<usize>> {
    let kc = if m <= 64 && n <= 64 {
        k.min(512)
    } else {
        gemm_common::cache::kernel_params(m, n, k, MR, NR, std::mem::size_of::<f32>()).kc
    }
    .max(1);
    (0..k.div_ceil(kc))
        .map(|c| c * kc..((c + 1) * kc).min(k))
        .collect()
}

impl Packed {
    /// `x·W[wrows]ᵀ` for `rows` rows of `xs` (row-major, k wide), bit for bit what candle's
    /// `x.matmul(&self.dequantize_rows(wrows).t())` computes; None for more than MAX_ROWS rows,
    /// where gemm would take another route, or where the CPU lacks AVX-512 (see the module's
    /// note).
    pub(super) fn forward_gemm_order(
        &self,
        xs: &[f32],
        rows: usize,
        wrows: Range<usize>,
    ) -> Option<Vec<f32>> {
        #[cfg(target_arch = "x86_64")]
        if takes(rows, wrows.len()) && xs.len() == rows * self.k {
            // SAFETY: AVX-512F, AVX2, FMA and F16C are present (checked at run time); xs holds
            // rows × k values and wrows lies within the matrix (checked by the callers' slicing).
            return Some(unsafe { self.gemm_order_avx512(xs, rows, wrows) });
        }
        let _ = (xs, rows);
        None
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[allow(clippy::needless_range_loop)] // lanes of fixed-size result arrays
    unsafe fn gemm_order_avx512(&self, xs: &[f32], rows: usize, wrows: Range<usize>) -> Vec<f32> {
        let (n, k) = (wrows.len(), self.k);
        assert!(wrows.end <= self.n, "weight rows {wrows:?} of {}", self.n);
        let chunks = chunks(rows, n, k);
        // Input rows transposed and padded to whole vectors: xt[p · stride + i] = x[i][p].
        let stride = rows.div_ceil(LANES) * LANES;
        let mut xt = vec![0f32; k * stride];
        for (i, row) in xs.chunks_exact(k).enumerate() {
            for (p, &v) in row.iter().enumerate() {
                xt[p * stride + i] = v;
            }
        }
        let mut out = vec![0f32; rows * n];
        let out_ptr = SyncPtr(out.as_mut_ptr());
        let tiles = n.div_ceil(TILE);
        let per_task = (tiles / (rayon::current_num_threads() * 4)).max(1);
        (0..tiles.div_ceil(per_task))
            .into_par_iter()
            .for_each(|task| {
                let out_ptr = &out_ptr;
                let mut w = vec![0f32; TILE * k];
                for t in task * per_task..((task + 1) * per_task).min(tiles) {
                    let j0 = t * TILE;
                    let live = TILE.min(n - j0);
                    for (r, dst) in w.chunks_exact_mut(k).enumerate() {
                        if r < live {
                            // SAFETY: as for this function; the row is within the matrix.
                            unsafe { self.decode_row_avx512(wrows.start + j0 + r, dst) };
                        } else {
                            dst.fill(0.0);
                        }
                    }
                    let mut g = 0;
                    while g < stride {
                        let vectors = ((stride - g) / LANES).min(GROUP);
                        let mut res = [[0f32; LANES]; TILE * GROUP];
                        // SAFETY: xt holds k × stride values and g + vectors · LANES ≤ stride; w
                        // holds TILE × k.
                        unsafe {
                            let x = xt.as_ptr().add(g);
                            match vectors {
                                1 => tile::<1>(x, stride, &w, k, &chunks, &mut res),
                                2 => tile::<2>(x, stride, &w, k, &chunks, &mut res),
                                3 => tile::<3>(x, stride, &w, k, &chunks, &mut res),
                                _ => tile::<4>(x, stride, &w, k, &chunks, &mut res),
                            }
                        }
                        for r in 0..live {
                            for v in 0..vectors {
                                for l in 0..LANES {
                                    let i = g + v * LANES + l;
                                    if i < rows {
                                        // SAFETY: i < rows and j0 + r < n: inside `out`, which
                                        // outlives the tasks; column j0 + r belongs to this tile
                                        // alone.
                                        unsafe {
                                            *out_ptr.0.add(i * n + j0 + r) = res[r * GROUP + v][l]
                                        };
                                    }
                                }
                            }
                        }
                        g += vectors * LANES;
                    }
                }
            });
        out
    }

    /// Weight row `row` as f32, the values `decode_block` gives (a product and a sum, not
    /// fused).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn decode_row_avx512(&self, row: usize, dst: &mut [f32]) {
        // SAFETY: the caller guarantees the CPU features; every block read lies in row `row`, every
        // write in dst (k values).
        unsafe {
            use std::arch::x86_64::*;
            let bpr = self.k / QK;
            let d_ptr = dst.as_mut_ptr();
            for b in 0..bpr {
                let block = row * bpr + b;
                let d = _mm512_set1_ps(self.d[block].to_f32());
                let o = d_ptr.add(b * QK);
                if self.is_q8() {
                    let q = self.qs.as_ptr().add(block * 32);
                    for half in 0..2 {
                        let bytes = _mm_loadu_si128(q.add(half * 16) as *const __m128i);
                        let v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes));
                        _mm512_storeu_ps(o.add(half * 16), _mm512_mul_ps(d, v));
                    }
                } else {
                    let m = _mm512_set1_ps(self.offset(block));
                    let bytes = _mm_loadu_si128(self.qs.as_ptr().add(block * 16) as *const __m128i);
                    let wide = _mm512_cvtepu8_epi32(bytes);
                    let lo = _mm512_and_si512(wide, _mm512_set1_epi32(0x0F));
                    let hi = _mm512_srli_epi32::<4>(wide);
                    for (half, q) in [lo, hi].into_iter().enumerate() {
                        let v = _mm512_cvtepi32_ps(q);
                        _mm512_storeu_ps(o.add(half * 16), _mm512_add_ps(_mm512_mul_ps(d, v), m));
                    }
                }
            }
        }
    }
}

/// One tile: TILE weight rows (w, TILE × k) against V vectors of input rows (x, at `stride`
/// per inner index), each chunk's chain of fused multiply-adds added to the last; results in
/// `res[r · GROUP + v]`.
///
/// # Safety
/// AVX-512F and FMA must be present; x must hold k · stride values from where it points and
/// V · LANES ≤ stride; w must hold TILE × k.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // fixed-size accumulator arrays, unrolled
unsafe fn tile<const V: usize>(
    x: *const f32,
    stride: usize,
    w: &[f32],
    k: usize,
    chunks: &[Range<usize>],
    res: &mut [[f32; LANES]; TILE * GROUP],
) {
    // SAFETY: as this function requires of its caller.
    unsafe {
        use std::arch::x86_64::*;
        let mut total = [[_mm512_setzero_ps(); V]; TILE];
        for (c, range) in chunks.iter().enumerate() {
            let mut acc = [[_mm512_setzero_ps(); V]; TILE];
            for p in range.clone() {
                let xp = x.add(p * stride);
                let mut xv = [_mm512_setzero_ps(); V];
                for v in 0..V {
                    xv[v] = _mm512_loadu_ps(xp.add(v * LANES));
                }
                for r in 0..TILE {
                    let wv = _mm512_set1_ps(*w.get_unchecked(r * k + p));
                    for v in 0..V {
                        acc[r][v] = _mm512_fmadd_ps(xv[v], wv, acc[r][v]);
                    }
                }
            }
            for r in 0..TILE {
                for v in 0..V {
                    total[r][v] = if c == 0 {
                        acc[r][v]
                    } else {
                        _mm512_add_ps(total[r][v], acc[r][v])
                    };
                }
            }
        }
        for r in 0..TILE {
            for v in 0..V {
                _mm512_storeu_ps(res[r * GROUP + v].as_mut_ptr(), total[r][v]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    /// Bit for bit candle's dense product on the dequantized weights, for the shapes of the
    /// default model's projections (k 576 and 1536, n from 192 to 1536) and others, every row
    /// count from 2 to 130 that gemm sends to its main kernels.
    #[test]
    fn the_bits_of_gemm_on_the_dequantized_weights() {
        let dev = Device::Cpu;
        if !*HAS_AVX512 {
            eprintln!("no AVX-512 here: forward_gemm_order declines, nothing to compare");
            return;
        }
        let shapes = [(576, 192), (576, 1536), (1536, 576), (64, 40), (2048, 100)];
        for (si, &(k, n)) in shapes.iter().enumerate() {
            let dtype = [GgmlDType::Q4_1, GgmlDType::Q4_0, GgmlDType::Q8_0][si % 3];
            let w = Tensor::randn(0f32, 0.5, (n, k), &dev).unwrap();
            let packed = Packed::from_qtensor(&QTensor::quantize(&w, dtype).unwrap())
                .unwrap()
                .unwrap();
            let dense = packed.dequantize_rows(0..n, &dev).unwrap();
            for rows in [2, 7, 9, 16, 17, 31, 33, 61, 64, 65, 100, 128, 130] {
                let x = Tensor::randn(0f32, 1.0, (rows, k), &dev).unwrap();
                let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
                let wrows = if n > 60 { 7..n - 5 } else { 0..n };
                let Some(ours) = packed.forward_gemm_order(&xs, rows, wrows.clone()) else {
                    assert!(
                        rows * wrows.len() <= 256 || rows > MAX_ROWS,
                        "declined {rows} × {k} × {n}"
                    );
                    continue;
                };
                let want: Vec<f32> = x
                    .matmul(
                        &dense
                            .narrow(0, wrows.start, wrows.len())
                            .unwrap()
                            .t()
                            .unwrap(),
                    )
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let differ = ours
                    .iter()
                    .zip(&want)
                    .filter(|(a, b)| a.to_bits() != b.to_bits())
                    .count();
                assert_eq!(
                    differ,
                    0,
                    "{dtype:?} {rows} × {k} × {}: {differ} of {} values differ",
                    wrows.len(),
                    want.len()
                );
            }
        }
    }
}
