//! Matrix-vector products for decode (`[m, K] x W^T`, `W` stored `[N, K]`, m <= 8) that stream
//! 32/16-bit weights at memory bandwidth. Written by hand because measurements on the target CPU
//! (2-core Zen 5) showed candle 0.11's CPU matmul at 10 GB/s for f32, 6 GB/s for f16 and 0.9 GB/s
//! for bf16 GEMV (it widens the whole bf16 operand to f32 per call). Each weight row is read once
//! for all m input rows; accumulation is in f32. AVX-512F CPUs take a 16-lane kernel working in
//! tiles of activation rows by weight rows (`gemv/avx512.rs`) with a software prefetch
//! (`Prefetch`, `gemv/prefetch.rs`), others an AVX2 one, aarch64 a NEON one
//! (the portable loop's one running sum per row cannot be vectorised: float addition is not
//! reassociated). bf16 weights on AVX512-BF16 CPUs take `avx512_bf16` instead, which rounds the
//! activations to bf16 as the prefill GEMM does. `gemv_reference` is the plain twin they are
//! tested against.

use half::{bf16, f16};
use rayon::prelude::*;

#[path = "gemv/prefetch.rs"]
mod prefetch;
pub use prefetch::{prefetch_for, set_prefetch_override, Prefetch, WeightStorage};

/// Most input rows handled by the fused path.
pub const MAX_ROWS: usize = 8;
/// Output rows per parallel task.
pub(crate) const BLOCK: usize = 32;
/// Weight rows per tile of the AVX-512 kernels (widening and `vdpbf16ps`), each load of the
/// activations serving all of them, in batched decode and when one activation row is larger than
/// `GROUP_ABOVE_X_BYTES` (f32 activations past K = 4096, bf16 ones past 8192). Then
/// `x` does not stay in L1 (32 KiB on Zen 4) beside the weight stream and is read from L2 again
/// for every weight row: Qwen2-VL-2B's down projection (K = 8960, 35 KB of f32 activations)
/// read f16 weights at 22.8 GB/s one row at a time, 27.1 two, 32.3 four, where its K = 1536
/// projections read 36.2 one row at a time and 25.4 four (a scratch kernel over twelve copies
/// of each matrix, the variants alternating pass by pass, Zen 4 VM; BENCHMARKS.md). Splitting K
/// into L1-sized chunks instead was slower (18.8 GB/s).
#[cfg(target_arch = "x86_64")]
const GROUP_ROWS: usize = 4;
/// Half of Zen 4's 32 KiB L1, leaving the rest to the weight stream.
#[cfg(target_arch = "x86_64")]
const GROUP_ABOVE_X_BYTES: usize = 16384;

#[derive(Clone, Copy)]
pub enum WeightRows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
}

impl WeightRows<'_> {
    fn len(self) -> usize {
        match self {
            WeightRows::F32(s) => s.len(),
            WeightRows::F16(s) => s.len(),
            WeightRows::BF16(s) => s.len(),
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn storage(self) -> WeightStorage {
        match self {
            WeightRows::F32(_) => WeightStorage::F32,
            WeightRows::F16(_) => WeightStorage::F16,
            WeightRows::BF16(_) => WeightStorage::BF16,
        }
    }
}

/// `out[r * n + o] = sum_k x[r * k + i] * w[o * k + i]` for `m` rows of `x`.
pub fn gemv(x: &[f32], m: usize, w: WeightRows, n: usize, k: usize, out: &mut [f32]) {
    // what the SIMD kernels' unchecked loads rely on, checked once per call
    assert!((1..=MAX_ROWS).contains(&m) && x.len() == m * k && out.len() == m * n && w.len() >= n * k);
    #[cfg(target_arch = "x86_64")]
    {
        let prefetch = prefetch_for(w.storage(), m);
        if let WeightRows::BF16(weights) = w {
            if avx512_bf16::available() && avx512_available() {
                let x = avx512_bf16::Bf16Activations::round(x);
                let (chunk, group) = tile_plan(m, k, 2);
                // SAFETY: `available` checked the features; the assert above bounds the loads.
                return for_each_block(m, n, BLOCK, out, |o, rows, cells| unsafe { avx512_bf16::dot_block(&x, m, weights, (o, rows), k, (chunk, group), cells, prefetch) });
            }
        }
        if avx512_available() {
            let (chunk, group) = tile_plan(m, k, 4);
            // SAFETY: the feature was just detected; the assert above bounds the loads.
            return for_each_block(m, n, BLOCK, out, |o, rows, cells| unsafe { avx512::dot_block(x, m, w, (o, rows), k, (chunk, group), cells, prefetch) });
        }
    }
    for_each_block(m, n, BLOCK, out, |o, _, cells| dot_rows(x, m, w, o, k, cells));
}

/// The AVX-512 kernels' tile for `m` activation rows of `k` values of `x_bytes` each: activation
/// rows per pass over a tile's weight rows (`chunk`) and weight rows per tile (`group`).
/// - One row (decode of one sequence): one weight row at a time, or `GROUP_ROWS` where the row
///   is larger than `GROUP_ABOVE_X_BYTES`.
/// - Batched decode: three activation rows by four weight rows, 24 accumulators (of 32 vector
///   registers), the rows past three in further passes over the tile's weights (from cache).
///   With one weight row per pass the widening kernel ran out of load slots before memory
///   bandwidth: per 16 f16 weights, one weight load and m activation loads for m FMAs. Whole
///   Qwen2-VL-2B decode steps of f16 weights, shapes alternating pass by pass in one process
///   (Zen 4 VM, weights prefetched 32 KiB ahead into L2; BENCHMARKS.md): 3x4 against 4x2 1.06x
///   at four rows, 1.16x at six, 1.13x at eight, and 1.6-1.8x against one weight row at a
///   time; bf16 within 0.99-1.07x of the other shapes.
#[cfg(target_arch = "x86_64")]
fn tile_plan(m: usize, k: usize, x_bytes: usize) -> (usize, usize) {
    match m {
        1 if k * x_bytes > GROUP_ABOVE_X_BYTES => (1, GROUP_ROWS),
        1 => (1, 1),
        _ => (3, GROUP_ROWS),
    }
}

/// `m` activation rows in passes of at most `chunk` rows, as even as possible: `(first, rows)`.
#[cfg(target_arch = "x86_64")]
fn row_chunks(m: usize, chunk: usize) -> impl Iterator<Item = (usize, usize)> {
    let passes = m.div_ceil(chunk);
    (0..passes).map(move |p| (p * m / passes, (p + 1) * m / passes - p * m / passes))
}

/// The kernel calls for `rows` weight rows from `o` against `m` activation rows taken `chunk`
/// at a time, `g` weight rows a tile, each `(first weight row, weight rows, first activation
/// row, activation rows)`. Where one pass covers the activation rows (one sequence, or up to
/// three) the whole block is one call, so no dispatch runs per weight row (for K = 1536 one row
/// is ~50 cycles of work; see `avx512::PREFETCH_OFF` for the measurement). Else
/// each tile of `g` weight rows takes every pass in turn, the later ones finding its weights in
/// cache.
#[cfg(target_arch = "x86_64")]
fn block_calls(m: usize, (chunk, g): (usize, usize), (o, rows): (usize, usize)) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    let tiles = if m <= chunk { 1 } else { rows.div_ceil(g) };
    let per_call = if m <= chunk { rows } else { g };
    (0..tiles).flat_map(move |t| {
        let (first, count) = (o + t * per_call, per_call.min(rows - t * per_call));
        row_chunks(m, chunk).map(move |(r0, mrows)| (first, count, r0, mrows))
    })
}

/// Runs `dot(o, rows, cells)` for every block of `rows` output rows from `o` (`block`, at most
/// `BLOCK`, fewer at the end of `N`; `cells`: their `m` sums each, `[rows, m]`), in parallel, and writes
/// the sums to `out` `[m, N]`. The quantized decode GEMV shares it.
pub(crate) fn for_each_block(m: usize, n: usize, block: usize, out: &mut [f32], dot: impl Fn(usize, usize, &mut [f32]) + Sync) {
    assert!((1..=MAX_ROWS).contains(&m) && (1..=BLOCK).contains(&block) && out.len() == m * n);
    if m == 1 {
        // [1, N] is [N, 1]: each task's cells are its run of `out`
        out.par_chunks_mut(block).enumerate().for_each(|(blk, cells)| dot(blk * block, cells.len(), cells));
        return;
    }
    // Each task transposes its block's sums in small stack buffers and writes its own columns
    // of `out`. A shared [N, m] scratch, zeroed and then transposed by the calling thread alone,
    // was ~3% of an eight-sequence q4k decode step (the lm_head's 4.9 MB of it), with the other
    // worker idle (Zen 4 VM profile). Outputs this small never take `write`'s streamed stores.
    let dst = crate::tiled_output::ColumnTiles::new(out, m, n);
    (0..n.div_ceil(block)).into_par_iter().for_each(|blk| {
        let (o, rows) = (blk * block, block.min(n - blk * block));
        let mut cells = [0f32; BLOCK * MAX_ROWS];
        dot(o, rows, &mut cells[..rows * m]);
        // [rows, m] -> [m, rows]
        let mut tile = [0f32; BLOCK * MAX_ROWS];
        for (j, sums) in cells[..rows * m].chunks_exact(m).enumerate() {
            for (r, &v) in sums.iter().enumerate() {
                tile[r * rows + j] = v;
            }
        }
        // SAFETY: columns `o..o + rows` belong to this task alone; `out` outlives the loop.
        unsafe { dst.write(0, m, o, rows, &tile[..m * rows], rows) };
    });
}

/// Whether the AVX-512 kernels run: on AVX-512F CPUs unless `IRIS_GEMV_KERNEL=avx2` asks for
/// the AVX2 one (A/B runs of the kernel AVX2-only CPUs take, on the machine at hand).
#[cfg(target_arch = "x86_64")]
fn avx512_available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::is_x86_feature_detected!("avx512f") && std::env::var("IRIS_GEMV_KERNEL").as_deref() != Ok("avx2"))
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("f16c")
}

/// `cells[j * m + r] = sum_i x[r * k + i] * w[(o + j) * k + i]` for the weight rows from `o` that
/// `cells` (`[rows, m]`) has room for, where the AVX-512 kernels do not run (no AVX-512F, or
/// `IRIS_GEMV_KERNEL=avx2`).
fn dot_rows(x: &[f32], m: usize, w: WeightRows, o: usize, k: usize, cells: &mut [f32]) {
    // `gemv` checked the sizes once; this runs per block of output rows
    debug_assert!(m <= MAX_ROWS && x.len() >= m * k && w.len() >= (o + cells.len() / m) * k);
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the features were just detected.
        unsafe { avx2::dot_rows(x, m, w, o, k, cells) };
        return;
    }
    for (j, cell) in cells.chunks_mut(m).enumerate() {
        #[cfg(target_arch = "aarch64")]
        {
            // SAFETY: NEON is part of the aarch64 baseline.
            unsafe { neon::dot_rows(x, m, w, o + j, k, cell) };
            continue;
        }
        #[allow(unreachable_code)]
        dot_rows_scalar(x, m, w, o + j, k, cell);
    }
}

fn weight_at(w: WeightRows, idx: usize) -> f32 {
    match w {
        WeightRows::F32(s) => s[idx],
        WeightRows::F16(s) => s[idx].to_f32(),
        WeightRows::BF16(s) => s[idx].to_f32(),
    }
}

fn dot_rows_scalar(x: &[f32], m: usize, w: WeightRows, o: usize, k: usize, cell: &mut [f32]) {
    for (r, c) in cell.iter_mut().enumerate().take(m) {
        *c = (0..k).map(|i| x[r * k + i] * weight_at(w, o * k + i)).sum();
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{WeightRows, MAX_ROWS};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }

    /// `cells[j * m + r] = sum_i x[r * k + i] * w[(o + j) * k + i]` for the weight rows from `o`
    /// that `cells` (`[rows, m]`) has room for, widened 8 at a time (f16 by `vcvtph2ps`, bf16 as
    /// the top half of an f32: both exact). Every activation row runs the same four chains (one
    /// chain is bound by FMA latency, not bandwidth) whatever `m`, so a row's result does not
    /// depend on its batch, as in the AVX-512 kernels; rows go in pairs that share each weight
    /// load. One call per block of weight rows, as `super::block_calls` explains.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; `x` must hold `m * k` values, `cells.len()` must be
    /// a multiple of `m` and `w` must hold rows `o..o + cells.len() / m`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_rows(x: &[f32], m: usize, w: WeightRows, o: usize, k: usize, cells: &mut [f32]) {
        debug_assert!(m <= MAX_ROWS && x.len() >= m * k && cells.len().is_multiple_of(m) && w.len() >= (o + cells.len() / m) * k);
        // SAFETY (all arms): `rows_with`'s loads read 8 values at indices below
        // (o + cells.len() / m) * k, and activations below m * k.
        unsafe {
            match w {
                WeightRows::F32(s) => rows_with(x, m, w, o, k, cells, |i| _mm256_loadu_ps(s.as_ptr().add(i))),
                WeightRows::F16(s) => rows_with(x, m, w, o, k, cells, |i| _mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr().add(i) as *const __m128i))),
                WeightRows::BF16(s) => rows_with(x, m, w, o, k, cells, |i| {
                    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(s.as_ptr().add(i) as *const __m128i))))
                }),
            }
        }
    }

    /// `dot_rows` for one storage (`load(i)` widens weights `i..i + 8`): per weight row, pairs of
    /// activation rows, then the odd one.
    #[inline(always)]
    unsafe fn rows_with(x: &[f32], m: usize, w: WeightRows, o: usize, k: usize, cells: &mut [f32], load: impl Fn(usize) -> __m256) {
        for (j, cell) in cells.chunks_exact_mut(m).enumerate() {
            let mut r = 0;
            // SAFETY (both): the caller's bounds hold for every row below m and weight row o + j.
            while r + 2 <= m {
                unsafe { pass::<2>(x, r, w, o + j, k, cell, &load) };
                r += 2;
            }
            if r < m {
                unsafe { pass::<1>(x, r, w, o + j, k, cell, &load) };
            }
        }
    }

    /// Activation rows `r0..r0 + P` against weight row `o`: four chains over 32-value steps,
    /// summed pairwise, then 8-value steps and a scalar tail.
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    unsafe fn pass<const P: usize>(x: &[f32], r0: usize, w: WeightRows, o: usize, k: usize, cell: &mut [f32], load: impl Fn(usize) -> __m256) {
        let base = o * k;
        let xs = x.as_ptr().add(r0 * k);
        // [row of the pass][chain]
        let mut a = [[_mm256_setzero_ps(); 4]; P];
        let mut i = 0;
        while i + 32 <= k {
            for u in 0..4 {
                let wv = load(base + i + 8 * u);
                for p in 0..P {
                    a[p][u] = _mm256_fmadd_ps(_mm256_loadu_ps(xs.add(p * k + i + 8 * u)), wv, a[p][u]);
                }
            }
            i += 32;
        }
        let mut acc = [_mm256_setzero_ps(); P];
        for p in 0..P {
            acc[p] = _mm256_add_ps(_mm256_add_ps(a[p][0], a[p][1]), _mm256_add_ps(a[p][2], a[p][3]));
        }
        while i + 8 <= k {
            let wv = load(base + i);
            for p in 0..P {
                acc[p] = _mm256_fmadd_ps(_mm256_loadu_ps(xs.add(p * k + i)), wv, acc[p]);
            }
            i += 8;
        }
        for p in 0..P {
            let mut s = hsum(acc[p]);
            for j in i..k {
                s += x[(r0 + p) * k + j] * super::weight_at(w, base + j);
            }
            cell[r0 + p] = s;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[path = "gemv/avx512.rs"]
mod avx512;

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::{WeightRows, MAX_ROWS};
    use std::arch::aarch64::*;

    /// Four f16 weights to f32 (`fcvtl`, exact, base Armv8 NEON). Inline asm because Rust's NEON
    /// f16 vector types are not stable yet.
    #[inline(always)]
    unsafe fn widen_f16(bits: uint16x4_t) -> float32x4_t {
        let out: float32x4_t;
        // SAFETY: a register-only conversion.
        unsafe { std::arch::asm!("fcvtl {o:v}.4s, {i:v}.4h", i = in(vreg) bits, o = out(vreg) out, options(pure, nomem, nostack)) };
        out
    }

    /// Weight rows widened 4 at a time (f16 by `fcvtl`, bf16 as the top half of an f32: both
    /// exact), two chains per input row. Untimed (no Arm machine at hand; BENCHMARKS.md).
    #[target_feature(enable = "neon")]
    pub unsafe fn dot_rows(x: &[f32], m: usize, w: WeightRows, o: usize, k: usize, cell: &mut [f32]) {
        // SAFETY (all arms): `rows_with`'s loads read 4 values at indices below o * k + k.
        unsafe {
            match w {
                WeightRows::F32(s) => rows_with(x, m, w, o, k, cell, |i| vld1q_f32(s.as_ptr().add(i))),
                WeightRows::F16(s) => rows_with(x, m, w, o, k, cell, |i| widen_f16(vld1_u16(s.as_ptr().add(i) as *const u16))),
                WeightRows::BF16(s) => rows_with(x, m, w, o, k, cell, |i| vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(s.as_ptr().add(i) as *const u16)))),
            }
        }
    }

    /// `dot_rows` for one storage: `load(i)` widens weights `i..i + 4`.
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    unsafe fn rows_with(x: &[f32], m: usize, w: WeightRows, o: usize, k: usize, cell: &mut [f32], load: impl Fn(usize) -> float32x4_t) {
        let base = o * k;
        let mut acc = [[vdupq_n_f32(0.0); 2]; MAX_ROWS];
        let mut i = 0;
        // SAFETY (all): loads stay below base + k and below r * k + k in `x`.
        unsafe {
            while i + 8 <= k {
                for u in 0..2 {
                    let wv = load(base + i + 4 * u);
                    for r in 0..m {
                        acc[r][u] = vfmaq_f32(acc[r][u], vld1q_f32(x.as_ptr().add(r * k + i + 4 * u)), wv);
                    }
                }
                i += 8;
            }
        }
        for r in 0..m {
            let mut s = vaddvq_f32(vaddq_f32(acc[r][0], acc[r][1]));
            for j in i..k {
                s += x[r * k + j] * super::weight_at(w, base + j);
            }
            cell[r] = s;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[path = "gemv/avx512_bf16.rs"]
mod avx512_bf16;

/// Plain triple loop in f64, for tests.
pub fn gemv_reference(x: &[f32], m: usize, w: WeightRows, n: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for r in 0..m {
        for o in 0..n {
            out[r * n + o] = (0..k).map(|i| x[r * k + i] as f64 * weight_at(w, o * k + i) as f64).sum::<f64>() as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests;
