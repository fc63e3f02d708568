//! Decode kernels for quantized weights: `[m, K] x W^T` with m <= `MAX_ROWS`, W in q8_0 or q4_K.
//! As in llama.cpp, the activations are quantized per block (q8_0: 32 values, one f32 scale;
//! q4_K: 256 values with per-32 sums) and the block dot products run in int8 x int8 -> int32.
//! On AVX512-VNNI CPUs one `vpdpbusd` multiplies 64 weight bytes; `*_scalar` is the plain twin
//! of the same integer algorithm, used elsewhere and in the tests. Written by hand because
//! candle's own quantized matmul doubles resident weight memory (see `quant/mod.rs`).

use super::Blocks;
use candle_core::quantized::k_quants::{BlockQ4K, BlockQ8_0, QK8_0, QK_K};
use half::f16;

/// Most activation rows handled by the integer kernels.
pub const MAX_ROWS: usize = 8;
/// Output rows per parallel task.
const ROWS_PER_TASK: usize = 16;
// the shared block loop (`gemv::for_each_block`) takes up to its own limits; q4_K's groups of
// four weight rows must not straddle tasks
const _: () = assert!(MAX_ROWS <= crate::gemv::MAX_ROWS && ROWS_PER_TASK <= crate::gemv::BLOCK && ROWS_PER_TASK.is_multiple_of(4));

/// ggml `block_q4_K` with its packed 6-bit scales unpacked (148 bytes instead of 144), so the
/// kernel turns them into a vector with one load. Values: `d*sc[j]*q - dmin*m[j]` for sub-block j.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct Q4KBlock {
    /// `[d, dmin]`
    pub dm: [f16; 2],
    pub sc: [u8; 8],
    pub m: [u8; 8],
    /// ggml nibble order: byte `32*g + l` holds value `64*g + l` (low) and `64*g + 32 + l` (high).
    pub qs: [u8; QK_K / 2],
}

impl Default for Q4KBlock {
    fn default() -> Self {
        Self { dm: [f16::ZERO; 2], sc: [0; 8], m: [0; 8], qs: [0; QK_K / 2] }
    }
}

const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144 && std::mem::size_of::<BlockQ8_0>() == 34);

fn raw_bytes<T>(v: &T) -> &[u8] {
    // SAFETY: candle's blocks are #[repr(C)] plain data (sizes asserted above).
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) }
}

/// `(d, qs)` of a ggml q8_0 block (layout: f16 d, 32 x i8).
pub(crate) fn q8_0_block_parts(b: &BlockQ8_0) -> (f16, &[i8]) {
    let bytes = raw_bytes(b);
    let d = f16::from_le_bytes([bytes[0], bytes[1]]);
    // SAFETY: i8 and u8 have the same layout.
    let qs = unsafe { std::slice::from_raw_parts(bytes[2..34].as_ptr() as *const i8, QK8_0) };
    (d, qs)
}

impl Q4KBlock {
    /// Unpacks ggml's layout: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles.
    pub fn from_ggml(b: &BlockQ4K) -> Self {
        let bytes = raw_bytes(b);
        let scales: &[u8] = &bytes[4..16];
        let mut out = Self {
            dm: [f16::from_le_bytes([bytes[0], bytes[1]]), f16::from_le_bytes([bytes[2], bytes[3]])],
            ..Default::default()
        };
        for j in 0..8 {
            // ggml `get_scale_min_k4`
            let (sc, m) = if j < 4 {
                (scales[j] & 63, scales[j + 4] & 63)
            } else {
                ((scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4), (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4))
            };
            out.sc[j] = sc;
            out.m[j] = m;
        }
        out.qs.copy_from_slice(&bytes[16..144]);
        out
    }

    /// The 4-bit value at position `v` in `0..256`.
    fn q(&self, v: usize) -> u8 {
        let (g, l) = (v / 64, v % 64);
        let byte = self.qs[32 * g + l % 32];
        if l < 32 {
            byte & 0xF
        } else {
            byte >> 4
        }
    }
}

/// Rows of a q4_K matrix are stored in groups of four interleaved by super-block (llama.cpp's
/// "repack" idea): for rows `4g..4g+4`, block `s` of each row sits at `4g*per_row + 4s + i`, so the
/// 4-row decode kernel reads one contiguous stream. Rows past the last full group keep the plain
/// row-major order. `n` is implied by `blocks.len() / per_row`.
/// Block `s` of row `o` sits at `start + s * stride` for `(start, stride)` returned here.
fn q4k_row_layout(len: usize, per_row: usize, o: usize) -> (usize, usize) {
    let full_rows = len / per_row / 4 * 4;
    if o < full_rows {
        ((o / 4) * 4 * per_row + o % 4, 4)
    } else {
        (o * per_row, 1)
    }
}

/// The super-blocks of weight row `o`, in order, as `(s, block)`.
pub(crate) fn q4k_row(blocks: &[Q4KBlock], per_row: usize, o: usize) -> impl Iterator<Item = (usize, &Q4KBlock)> {
    let (start, stride) = q4k_row_layout(blocks.len(), per_row, o);
    blocks[start..].iter().step_by(stride).take(per_row).enumerate()
}

/// The int8 quants and f16 scales of values `kb..kb + len` of q8_0 weight row `row`
/// (block-aligned; rows are stored one after another).
fn q8_0_range<'a>(qs: &'a [i8], d: &'a [f16], k: usize, row: usize, kb: usize, len: usize) -> (&'a [i8], &'a [f16]) {
    let first = row * k + kb;
    (&qs[first..][..len], &d[first / QK8_0..][..len / QK8_0])
}

/// Super-block `s` of weight row `o`.
pub(crate) fn q4k_block(blocks: &[Q4KBlock], per_row: usize, o: usize, s: usize) -> &Q4KBlock {
    let (start, stride) = q4k_row_layout(blocks.len(), per_row, o);
    &blocks[start + s * stride]
}

/// Row-major blocks `[N, per_row]` -> the interleaved storage order of `q4k_row_layout`.
pub(crate) fn q4k_interleave(row_major: Vec<Q4KBlock>, per_row: usize) -> Vec<Q4KBlock> {
    let mut out = row_major.clone();
    for (o, row) in row_major.chunks_exact(per_row).enumerate() {
        let (start, stride) = q4k_row_layout(row_major.len(), per_row, o);
        for (s, blk) in row.iter().enumerate() {
            out[start + s * stride] = *blk;
        }
    }
    out
}

/// Weight row `row` as f32 (the prefill and vision path decodes weight tiles with this).
pub(crate) fn dequantize_row(blocks: &Blocks, k: usize, row: usize, out: &mut [f32]) {
    dequantize_row_range(blocks, k, row, 0, out)
}

/// Values `kb..kb + out.len()` of weight row `row` as f32; `kb` and the length are multiples
/// of the format's block (32 values for q8_0, 256 for q4_K).
pub(crate) fn dequantize_row_range(blocks: &Blocks, k: usize, row: usize, kb: usize, out: &mut [f32]) {
    let block = match blocks {
        Blocks::Q8_0 { .. } => QK8_0,
        Blocks::Q4K(_) => QK_K,
    };
    assert!(kb.is_multiple_of(block) && out.len().is_multiple_of(block) && kb + out.len() <= k, "values {kb}..+{} of a {k}-wide row", out.len());
    #[cfg(target_arch = "x86_64")]
    if Kernel::best() != Kernel::Scalar {
        // SAFETY: a non-scalar kernel means the CPU has AVX2 and F16C (`Kernel::available`).
        return unsafe { dequantize_row_avx2(blocks, k, row, kb, out) };
    }
    dequantize_row_portable(blocks, k, row, kb, out)
}

/// Asks for the bytes of values `kb..kb + len` of weight row `row` (block-aligned) to be loaded
/// into L2 (`prefetch::prefetch_to_l2`; nothing on other architectures). For the f32 GEMM,
/// which decodes a panel's 32 rows in 256-value slices: 32 short streams far apart, which the
/// hardware prefetchers leave to demand misses.
pub(crate) fn prefetch_row_range(blocks: &Blocks, k: usize, row: usize, kb: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        // every 64-byte line of `len` bytes from `start`, the last byte's included
        let lines = |start: *const u8, len: usize| {
            (0..len).step_by(64).chain(len.checked_sub(1)).for_each(|i| prefetch::prefetch_to_l2(start.wrapping_add(i) as *const i8));
        };
        match blocks {
            Blocks::Q8_0 { qs, d } => {
                let (qs, d) = q8_0_range(qs, d, k, row, kb, len);
                lines(qs.as_ptr() as *const u8, qs.len());
                lines(d.as_ptr() as *const u8, std::mem::size_of_val(d));
            }
            // a row's blocks are interleaved with its group's (`q4k_row_layout`), not contiguous
            Blocks::Q4K(blocks) => {
                for (_, blk) in q4k_row(blocks, k / QK_K, row).skip(kb / QK_K).take(len / QK_K) {
                    lines(blk as *const Q4KBlock as *const u8, std::mem::size_of::<Q4KBlock>());
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (blocks, k, row, kb, len);
}

/// `dequantize_row_portable` compiled with AVX2, which LLVM vectorises for q4_K (the portable
/// build measured ~9% of vision-encode time in a profile), and q8_0 by hand
/// (`avx2::dequantize_q8_0`). Same results (tested).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn dequantize_row_avx2(blocks: &Blocks, k: usize, row: usize, kb: usize, out: &mut [f32]) {
    match blocks {
        Blocks::Q8_0 { qs, d } => {
            let (qs, d) = q8_0_range(qs, d, k, row, kb, out.len());
            avx2::dequantize_q8_0(qs, d, out)
        }
        Blocks::Q4K(_) => dequantize_row_portable(blocks, k, row, kb, out),
    }
}

/// Values `kb..kb + out.len()` of row `row` (block-aligned, as `dequantize_row_range` checks).
#[inline(always)]
pub(super) fn dequantize_row_portable(blocks: &Blocks, k: usize, row: usize, kb: usize, out: &mut [f32]) {
    match blocks {
        Blocks::Q8_0 { qs, d } => {
            let (values, scales) = q8_0_range(qs, d, k, row, kb, out.len());
            for ((dst, q), scale) in out.chunks_exact_mut(QK8_0).zip(values.chunks_exact(QK8_0)).zip(scales) {
                let scale = scale.to_f32();
                for (o, &v) in dst.iter_mut().zip(q) {
                    *o = scale * v as f32;
                }
            }
        }
        Blocks::Q4K(blocks) => {
            let per_row = k / QK_K;
            let first = kb / QK_K;
            for (s, blk) in q4k_row(blocks, per_row, row).skip(first).take(out.len() / QK_K) {
                let (d, dmin) = (blk.dm[0].to_f32(), blk.dm[1].to_f32());
                // byte `32g + l` of qs holds value `64g + l` (low nibble) and `64g + 32 + l` (high)
                for g in 0..4 {
                    let dst = &mut out[(s - first) * QK_K + 64 * g..][..64];
                    let bytes = &blk.qs[32 * g..32 * g + 32];
                    let (lo_scale, lo_min) = (d * blk.sc[2 * g] as f32, dmin * blk.m[2 * g] as f32);
                    let (hi_scale, hi_min) = (d * blk.sc[2 * g + 1] as f32, dmin * blk.m[2 * g + 1] as f32);
                    let (lo, hi) = dst.split_at_mut(32);
                    for ((l, h), &b) in lo.iter_mut().zip(hi.iter_mut()).zip(bytes) {
                        *l = lo_scale * (b & 0xF) as f32 - lo_min;
                        *h = hi_scale * (b >> 4) as f32 - hi_min;
                    }
                }
            }
        }
    }
}

/// One activation row quantized for the integer kernels.
struct QuantizedRow {
    /// One scale per block (32 values for q8_0, 256 for q4_K).
    d: Vec<f32>,
    /// Int8 values in `[-127, 127]`; for q4_K in the kernel's order (`q4k_lane_order`).
    qs: Vec<i8>,
    /// The sum of the quantized values of each 32-value (sub-)block, in value order: q4_K's min
    /// terms, and the AVX-512 q8_0 kernel's correction for its offset weights.
    sub_sums: Vec<i16>,
}

/// Symmetric int8 quantization of `x` in blocks of `block`, in value order.
pub(crate) fn quantize_blocks(x: &[f32], block: usize) -> (Vec<f32>, Vec<i8>) {
    #[cfg(target_arch = "x86_64")]
    if Kernel::best() != Kernel::Scalar {
        // SAFETY: a non-scalar kernel means the CPU has AVX2 (`Kernel::available`).
        return unsafe { quantize_blocks_avx2(x, block) };
    }
    quantize_blocks_portable(x, block)
}

/// `quantize_blocks_portable` compiled with AVX2: baseline x86-64 has no rounding instruction,
/// so there every value costs a libm `roundf` call (~2% of decode time in a profile); with AVX2
/// LLVM vectorises the same expression. Same code, same results (tested).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_blocks_avx2(x: &[f32], block: usize) -> (Vec<f32>, Vec<i8>) {
    quantize_blocks_portable(x, block)
}

#[inline(always)]
pub(super) fn quantize_blocks_portable(x: &[f32], block: usize) -> (Vec<f32>, Vec<i8>) {
    let mut d = Vec::with_capacity(x.len().div_ceil(block));
    let mut qs = vec![0i8; x.len()];
    for (chunk, out) in x.chunks(block).zip(qs.chunks_mut(block)) {
        // written as compare-and-select so LLVM vectorises the quantizing loop (`clamp` and the
        // saturating `as` kept it scalar: ~6% of a vision encode in a profile) and `abs_max`'s
        // lanes. NaN inputs are skipped by the max and quantize to 0, as the saturating cast did.
        let amax = abs_max(chunk);
        let scale = amax / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        d.push(scale);
        for (q, v) in out.iter_mut().zip(chunk) {
            let r = round_half_away(v * inv);
            let r = if r.is_nan() { 0.0 } else { r.clamp(-127.0, 127.0) };
            // SAFETY: `r` is finite and integral in [-127, 127].
            *q = unsafe { r.to_int_unchecked::<i32>() } as i8;
        }
    }
    (d, qs)
}

/// The largest `|v|` in `x`, NaNs skipped (0 for an empty or all-NaN `x`). Sixteen running
/// maxima, one per lane, so LLVM vectorises it: one fold over `x` compiled to a serial scalar
/// chain, ~40% of `quantize_blocks` and half of a four-row q8_0 product over 32 weight rows in a
/// profile. The maximum of values that are not NaN does not depend on the order, so the result
/// is the same as the plain fold (tested).
#[inline(always)]
pub(crate) fn abs_max(x: &[f32]) -> f32 {
    const LANES: usize = 16;
    let keep_larger = |a: f32, v: f32| if v.abs() > a { v.abs() } else { a };
    let mut lanes = [0f32; LANES];
    let mut rows = x.chunks_exact(LANES);
    for row in &mut rows {
        for (m, &v) in lanes.iter_mut().zip(row) {
            *m = keep_larger(*m, v);
        }
    }
    let tail = rows.remainder().iter().fold(0f32, |a, &v| keep_larger(a, v));
    lanes.iter().fold(tail, |a, &m| keep_larger(a, m))
}

/// `f32::round` (ties away from zero) written with `trunc`, which LLVM vectorises (`vroundps`);
/// `round` itself became one libm call per value (~6% of an int8 GEMM's time in a profile).
/// `x - trunc(x)` is exact, so the result is bit-identical to `round` (tested).
#[inline(always)]
pub(crate) fn round_half_away(x: f32) -> f32 {
    let t = x.trunc();
    if (x - t).abs() >= 0.5 {
        t + 1f32.copysign(x)
    } else {
        t
    }
}

/// Where value `v` of a 256-value super-block sits in the kernel's activation order: four
/// 64-byte vectors matching the low and high nibbles of the two 64-byte halves of `qs`.
fn q4k_lane_order(v: usize) -> usize {
    let (half, g, l) = (v / 128, (v % 128) / 64, v % 64);
    let (nibble, pos) = if l < 32 { (0, l) } else { (1, l - 32) };
    half * 128 + nibble * 64 + g * 32 + pos
}

fn quantize_row(blocks: &Blocks, x: &[f32]) -> QuantizedRow {
    match blocks {
        Blocks::Q8_0 { .. } => {
            let (d, qs) = quantize_blocks(x, QK8_0);
            let sub_sums = block_sums(&qs);
            QuantizedRow { d, qs, sub_sums }
        }
        Blocks::Q4K(_) => {
            let (d, natural) = quantize_blocks(x, QK_K);
            let sub_sums = block_sums(&natural);
            // `q4k_lane_order` moves whole runs of 32 values, so copy runs rather than values
            let mut qs = vec![0i8; natural.len()];
            for (dst, src) in qs.chunks_exact_mut(QK_K).zip(natural.chunks_exact(QK_K)) {
                for run in (0..QK_K).step_by(32) {
                    let to = q4k_lane_order(run);
                    dst[to..to + 32].copy_from_slice(&src[run..run + 32]);
                }
            }
            QuantizedRow { d, qs, sub_sums }
        }
    }
}

/// The sum of each run of 32 quantized values (|sum| <= 32 * 127, so i16 holds it).
fn block_sums(qs: &[i8]) -> Vec<i16> {
    qs.chunks(32).map(|c| c.iter().map(|&q| q as i16).sum()).collect()
}

/// Which implementation of the integer dot products runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Scalar,
    Avx2,
    /// AVX2 with AVX-VNNI's 256-bit `vpdpbusd` (Intel client CPUs from Alder Lake, which lack
    /// AVX-512): the AVX2 decode kernels with VNNI dot products, and the int8 GEMM. CPUs that
    /// also have AVX512-VNNI (Zen 5, Sapphire Rapids) take `Avx512Vnni`.
    AvxVnni,
    Avx512Vnni,
    /// aarch64 with the Armv8.2 dot product (`sdot`): `kernels/neon.rs`.
    Neon,
}

impl Kernel {
    /// The fastest kernel this CPU supports (detected once; every product asks), or the one
    /// `IRIS_QUANT_KERNEL` names (`scalar`, `avx2`, `avxvnni`, `avx512vnni`, `neon`) where the CPU has it:
    /// so one machine can measure the paths other CPUs take (an AVX-512 CPU running as an AVX2
    /// laptop would, for the quantized products only; on AMX CPUs the AMX GEMM still takes the
    /// many-row products unless `IRIS_NO_AMX` is set too).
    pub fn best() -> Kernel {
        static BEST: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            let available = Self::available();
            let best = available.last().copied().unwrap_or(Kernel::Scalar);
            let Ok(name) = std::env::var("IRIS_QUANT_KERNEL") else { return best };
            match available.iter().copied().find(|k| format!("{k:?}").eq_ignore_ascii_case(&name)) {
                Some(asked) => asked,
                None => {
                    tracing::warn!("IRIS_QUANT_KERNEL={name}: not a kernel this CPU runs ({available:?}); using {best:?}");
                    best
                }
            }
        })
    }

    /// Every kernel this CPU can run, slowest first. On x86-64 every kernel but `Scalar` implies
    /// AVX2, FMA and F16C.
    pub fn available() -> Vec<Kernel> {
        let mut out = vec![Kernel::Scalar];
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            out.push(Kernel::Neon);
        }
        #[cfg(target_arch = "x86_64")]
        {
            use std::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                out.push(Kernel::Avx2);
                if has!("avxvnni") {
                    out.push(Kernel::AvxVnni);
                }
                if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") {
                    out.push(Kernel::Avx512Vnni);
                }
            }
        }
        out
    }
}

/// `out[r * n + o] = sum_i x[r * k + i] * W[o, i]` for `m` rows of `x`.
pub(crate) fn gemv(blocks: &Blocks, n: usize, k: usize, x: &[f32], m: usize, out: &mut [f32]) {
    gemv_with(blocks, n, k, x, m, out, Kernel::best());
}

pub(crate) fn gemv_with(blocks: &Blocks, n: usize, k: usize, x: &[f32], m: usize, out: &mut [f32], kernel: Kernel) {
    assert!((1..=MAX_ROWS).contains(&m) && x.len() == m * k && out.len() == m * n);
    let rows: Vec<QuantizedRow> = x.chunks(k).map(|r| quantize_row(blocks, r)).collect();
    #[cfg(target_arch = "x86_64")]
    let prefetch = DecodePrefetch::get(kernel, m);
    #[cfg(target_arch = "x86_64")]
    let q8_0_ahead = prefetch.q8_0;
    #[cfg(not(target_arch = "x86_64"))]
    let q8_0_ahead = None;
    crate::gemv::for_each_block(m, n, ROWS_PER_TASK, out, |first, _, dst| {
        #[allow(unused_mut)]
        let mut j = 0;
        // four interleaved q4_K weight rows per call, one contiguous stream (prefetched as
        // `DecodePrefetch` says): on AVX-512 a pass takes up to four input rows, on AVX2 one
        // (later passes over a group find its blocks in cache)
        #[cfg(target_arch = "x86_64")]
        if let (Kernel::Avx2 | Kernel::AvxVnni | Kernel::Avx512Vnni, Blocks::Q4K(b)) = (kernel, blocks) {
            while (j + 4) * m <= dst.len() {
                let cells = &mut dst[j * m..(j + 4) * m];
                // SAFETY: the kernel comes from `Kernel::available`; `first + j` is a multiple of
                // four with four rows left, so it starts a full interleaved group.
                unsafe {
                    match kernel {
                        Kernel::Avx512Vnni => avx512::dot_group_q4k(b, k, first + j, &rows, cells, prefetch.q4k),
                        _ => {
                            for (r, row) in rows.iter().enumerate() {
                                let mut four = [0f32; 4];
                                if kernel == Kernel::AvxVnni {
                                    avx2::dot_4_rows_q4k::<true>(b, k, first + j, row, &mut four, prefetch.q4k);
                                } else {
                                    avx2::dot_4_rows_q4k::<false>(b, k, first + j, row, &mut four, prefetch.q4k);
                                }
                                for (i, v) in four.into_iter().enumerate() {
                                    cells[i * m + r] = v;
                                }
                            }
                        }
                    }
                }
                j += 4;
            }
        }
        #[cfg(target_arch = "x86_64")]
        if let (Kernel::Avx512Vnni, Blocks::Q8_0 { qs, d }) = (kernel, blocks) {
            // SAFETY: the kernel comes from `Kernel::available`; `dst` holds the task's rows.
            return unsafe { avx512::dot_rows_q8_0(qs, d, k, first + j, &rows, &mut dst[j * m..], prefetch.q8_0) };
        }
        for (jj, cell) in dst[j * m..].chunks_mut(m).enumerate() {
            dot_row(blocks, k, first + j + jj, &rows, cell, kernel, q8_0_ahead);
        }
    });
}

/// `q8_0_ahead`: the AVX2 q8_0 kernels' prefetch distance (`DecodePrefetch`).
fn dot_row(blocks: &Blocks, k: usize, o: usize, rows: &[QuantizedRow], cell: &mut [f32], kernel: Kernel, q8_0_ahead: Option<usize>) {
    // SAFETY (every arm): `kernel` comes from `Kernel::available`, which checked the features.
    #[cfg(target_arch = "x86_64")]
    match (kernel, blocks) {
        // `gemv_with` hands the AVX-512 q8_0 kernel a task's rows in one call, before this
        (Kernel::Avx512Vnni, Blocks::Q8_0 { .. }) => unreachable!("AVX-512 q8_0 rows go to `dot_rows_q8_0` whole"),
        (Kernel::Avx512Vnni, Blocks::Q4K(b)) => return unsafe { avx512::dot_row_q4k(b, k, o, rows, cell) },
        (Kernel::AvxVnni, Blocks::Q8_0 { qs, d }) => return unsafe { avx2::dot_row_q8_0::<true>(qs, d, k, o, rows, cell, q8_0_ahead) },
        (Kernel::AvxVnni, Blocks::Q4K(b)) => return unsafe { avx2::dot_row_q4k::<true>(b, k, o, rows, cell) },
        (Kernel::Avx2, Blocks::Q8_0 { qs, d }) => return unsafe { avx2::dot_row_q8_0::<false>(qs, d, k, o, rows, cell, q8_0_ahead) },
        (Kernel::Avx2, Blocks::Q4K(b)) => return unsafe { avx2::dot_row_q4k::<false>(b, k, o, rows, cell) },
        (Kernel::Scalar | Kernel::Neon, _) => {}
    }
    // SAFETY (both arms): Neon comes from `Kernel::available`, which checked `dotprod`.
    #[cfg(target_arch = "aarch64")]
    match (kernel, blocks) {
        (Kernel::Neon, Blocks::Q8_0 { qs, d }) => return unsafe { neon::dot_row_q8_0(qs, d, k, o, rows, cell) },
        (Kernel::Neon, Blocks::Q4K(b)) => return unsafe { neon::dot_row_q4k(b, k, o, rows, cell) },
        _ => {}
    }
    let _ = (kernel, q8_0_ahead);
    match blocks {
        Blocks::Q8_0 { qs, d } => dot_row_q8_0_scalar(qs, d, k, o, rows, cell),
        Blocks::Q4K(b) => dot_row_q4k_scalar(b, k, o, rows, cell),
    }
}

fn dot_row_q8_0_scalar(qs: &[i8], d: &[f16], k: usize, o: usize, rows: &[QuantizedRow], cell: &mut [f32]) {
    let per_row = k / QK8_0;
    for (c, row) in cell.iter_mut().zip(rows) {
        let mut acc = 0f32;
        for b in 0..per_row {
            let w = &qs[o * k + b * QK8_0..][..QK8_0];
            let a = &row.qs[b * QK8_0..][..QK8_0];
            let isum: i32 = w.iter().zip(a).map(|(&p, &q)| p as i32 * q as i32).sum();
            acc += d[o * per_row + b].to_f32() * row.d[b] * isum as f32;
        }
        *c = acc;
    }
}

fn dot_row_q4k_scalar(blocks: &[Q4KBlock], k: usize, o: usize, rows: &[QuantizedRow], cell: &mut [f32]) {
    let per_row = k / QK_K;
    for (c, row) in cell.iter_mut().zip(rows) {
        let mut acc = 0f32;
        for (s, blk) in q4k_row(blocks, per_row, o) {
            let a = &row.qs[s * QK_K..][..QK_K];
            let (mut scaled, mut mins) = (0f32, 0f32);
            for j in 0..8 {
                let isum: i32 = (32 * j..32 * j + 32).map(|v| blk.q(v) as i32 * a[q4k_lane_order(v)] as i32).sum();
                scaled += blk.sc[j] as f32 * isum as f32;
                mins += blk.m[j] as f32 * row.sub_sums[s * 8 + j] as f32;
            }
            acc += row.d[s] * (blk.dm[0].to_f32() * scaled - blk.dm[1].to_f32() * mins);
        }
        *c = acc;
    }
}

/// Calls `$kernel::<M>(args)` with `M = $rows` (1..=MAX_ROWS): with the row count known at
/// compile time the per-row accumulators live in registers instead of a stack array indexed at
/// run time.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! for_row_count {
    // `kernel::<_, EXTRA>`: a kernel with one more const parameter after the row count
    ($rows:expr, $kernel:ident :: <_, $extra:ident>, $($arg:expr),*) => {
        match $rows {
            1 => $kernel::<1, $extra>($($arg),*),
            2 => $kernel::<2, $extra>($($arg),*),
            3 => $kernel::<3, $extra>($($arg),*),
            4 => $kernel::<4, $extra>($($arg),*),
            5 => $kernel::<5, $extra>($($arg),*),
            6 => $kernel::<6, $extra>($($arg),*),
            7 => $kernel::<7, $extra>($($arg),*),
            8 => $kernel::<8, $extra>($($arg),*),
            m => unreachable!("{m} activation rows (at most {MAX_ROWS})"),
        }
    };
    ($rows:expr, $kernel:ident, $($arg:expr),*) => {
        match $rows {
            1 => $kernel::<1>($($arg),*),
            2 => $kernel::<2>($($arg),*),
            3 => $kernel::<3>($($arg),*),
            4 => $kernel::<4>($($arg),*),
            5 => $kernel::<5>($($arg),*),
            6 => $kernel::<6>($($arg),*),
            7 => $kernel::<7>($($arg),*),
            8 => $kernel::<8>($($arg),*),
            m => unreachable!("{m} activation rows (at most {MAX_ROWS})"),
        }
    };
}
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(super) use for_row_count;

#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod prefetch;
#[cfg(target_arch = "x86_64")]
use prefetch::{prefetch_ahead_of, prefetch_to_l2, DecodePrefetch};

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512_gemm;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avxvnni_gemm;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "aarch64")]
mod neon;
