//! Fused attention for many query rows on AVX-512F and AVX2 CPUs (the vision towers' full
//! attention, and causal prefill): scores, softmax and the probability-weighted sum of V computed
//! one block of keys at a time with the online softmax of FlashAttention (Dao et al., 2022), so the
//! `[T, S]` score matrix never exists. Each task owns 48 query rows in register tiles of six; a
//! tile's scores for 64 keys (24 registers on AVX-512) come from K transposed once per head, and
//! its output rows take the block's V rows in register chunks.
//!
//! Two operand precisions: f32 products (`flash_attention`, FMA: 16 multiply-adds per
//! instruction), and bf16 operands with f32 sums (`flash_attention_bf16`, AVX512-BF16's
//! `vdpbf16ps`: 32 per instruction). The bf16 kernel rounds Q, K, V and the exponentiated scores
//! to bf16 and keeps the softmax's maxima and sums in f32, as PyTorch's CPU flash attention does
//! for bf16 inputs (`aten/src/ATen/native/cpu/FlashAttentionKernel.cpp`: `qk` in f32, the
//! reduced copy of `exp(qk - max)` for the product with V, sums from the f32 values); K is
//! packed as `[D/2][S][2]` (a key's two consecutive dims per lane) and V as `[S/2][D][2]` (two
//! consecutive keys' values per lane) so each `vdpbf16ps` sums one pair. `attention` sends bf16
//! inputs here (1.6-2x its blocked bf16 GEMM path, `attention_bench`) and keeps f32 inputs on
//! f32 products: on the 2-core Intel Xeon VM of 2026-12-05 `vdpbf16ps` retired at a quarter of
//! the FMA rate (`simd_peak`: 119 against 246 GFLOP/s a thread), so bf16 operands were slower
//! there (190 against 226 GFLOP/s on CogVLM2's vision attention shape). f32 inputs whose model
//! asks for bf16 products (`attention::Products::Bf16`: quantized linears) take the bf16 kernel
//! where it is the faster (`bf16_faster_than_f32`: AMD's AVX512-BF16), causal prefill included.
//! Both kernels take a causal offset: their tiles skip the key blocks past their last row and
//! mask the rest per row.
//!
//! Why: the blocked path (`attention::blocked_attention`) ran two matmuls with a short inner
//! dimension (`D` = 80 in Qwen2-VL's tower) through candle's GEMM plus a softmax pass over a
//! 4 MiB score block per head, ~85 GFLOP/s here (`attention_bench`). The AVX2 kernel
//! (`avx2.rs`, f32 only) took `attention_bench 16 1024 80` from 86 to 132-142 GFLOP/s and
//! `attention_bench 2 9217 112` (CogVLM2's tower) from 108-113 to 151-158 on the 2-core Zen 2
//! VM of 2026-12-06. Same formula as `attention_slow` (its twin in the tests); the sums run in
//! another order. `IRIS_NO_FLASH_ATTENTION=1` turns all of them off, for A/B runs.

// The kernels are x86-64 only; elsewhere `available()` is false and the callers' operands unused.
#![cfg_attr(not(target_arch = "x86_64"), allow(unused_variables, dead_code))]

use crate::bf16_gemm::bf16_bits;
use crate::error::Result;
pub use crate::f32_gemm::Isa;
use candle_core::{CpuStorage, DType, Layout, Storage, Tensor};
use rayon::prelude::*;

/// Query rows per register tile.
const TILE_ROWS: usize = 6;
/// Query rows per task: its tiles take each block of keys in turn while the block is in L1/L2,
/// so K and V stream from L3 once per 48 rows rather than once per 6 (CogVLM2's 9217-token
/// heads hold 8 MB of K and V).
const QUERY_BLOCK: usize = 8 * TILE_ROWS;
/// Keys per block: four 16-lane vectors.
const KEY_BLOCK: usize = 64;
/// Largest head dim taken (a tile's output rows stay in L1).
const MAX_HEAD_DIM: usize = 256;

/// The ISA the fused f32 kernel runs with on this CPU: the fastest it has (`avx512.rs` or
/// `avx2.rs`), or none where it has neither or the environment sets `IRIS_NO_FLASH_ATTENTION`.
pub fn isa() -> Option<Isa> {
    static ISA: std::sync::OnceLock<Option<Isa>> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| if std::env::var_os("IRIS_NO_FLASH_ATTENTION").is_some() { None } else { Isa::supported().last().copied() })
}

/// Whether this CPU runs the fused f32 kernel (and it is not switched off).
pub fn available() -> bool {
    isa().is_some()
}

/// Whether this CPU runs the fused bf16 kernel (AVX-512F and AVX512-BF16).
pub fn bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        isa() == Some(Isa::Avx512) && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether f32 inputs with `attention::Products::Bf16` run faster through the bf16 kernel than
/// on f32 products: on AMD CPUs with AVX512-BF16 (Zen 4 and 5), whose `vdpbf16ps` retires at
/// the FMA's instruction rate with twice its multiply-adds. On the 2-core Zen 5 VM (`simd_peak`)
/// both retire 3.6 G a second on one thread, and `attention_bench 16 1024 80` (Qwen2-VL's
/// tower) ran f32 inputs at 194 GFLOP/s through this kernel against 131-146 on f32 products.
/// Intel's AVX512-BF16 cores of the Xeon VM retire it at a quarter of the FMA rate (f32 was the
/// faster there, and their AMX kernel comes first anyway), so the choice goes by vendor.
/// `IRIS_NO_BF16_ATTENTION=1` keeps f32 products, for A/B runs.
pub fn bf16_faster_than_f32() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| bf16_available() && cpu_is_amd() && std::env::var_os("IRIS_NO_BF16_ATTENTION").is_none())
}

/// Whether the CPU's vendor is AMD (also the decode GEMVs' prefetch choice: `gemv/prefetch.rs`,
/// `quant/kernels/prefetch.rs`).
#[cfg(target_arch = "x86_64")]
pub(crate) fn cpu_is_amd() -> bool {
    // CPUID leaf 0: the vendor string in EBX, EDX, ECX
    let id = std::arch::x86_64::__cpuid(0);
    [id.ebx, id.edx, id.ecx].map(u32::to_le_bytes).concat() == *b"AuthenticAMD"
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn cpu_is_amd() -> bool {
    false
}

/// The contiguous f32 values of a CPU tensor, if it has them.
fn contiguous_f32<'a>(storage: &'a Storage, layout: &Layout) -> Option<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(x)), Some((start, end))) => Some(&x[start..end]),
        _ => None,
    }
}

/// The bf16 bits of an f32 or f16 (rounded to nearest even) or bf16 CPU tensor, row-major
/// whatever its layout (a KV cache's strided view is copied once first).
fn bf16_bits_row_major(x: &Tensor) -> Result<Option<Vec<u16>>> {
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let Some((start, end)) = layout.contiguous_offsets() else { return Ok(None) };
    Ok(match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => Some(v[start..end].par_iter().map(|&x| bf16_bits(x)).collect()),
        Storage::Cpu(CpuStorage::F16(v)) => Some(v[start..end].par_iter().map(|x| bf16_bits(x.to_f32())).collect()),
        Storage::Cpu(CpuStorage::BF16(v)) => Some(v[start..end].iter().map(|x| x.to_bits()).collect()),
        _ => None,
    })
}

/// Heads, query rows, head dim, KV heads, keys.
type AttentionDims = (usize, usize, usize, usize, usize);

/// `(H, T, D, KVH, S)` when `q [H, T, D]`, `k`/`v` `[KVH, S, D]` are shapes the kernels take
/// (`H % KVH == 0`, `D` a multiple of 16 up to 256, CPU tensors of `dtypes`).
fn fitting_shape(q: &Tensor, k: &Tensor, v: &Tensor, dtypes: &[DType]) -> Result<Option<AttentionDims>> {
    let (h, t, d) = q.dims3()?;
    let (kvh, s, k_dim) = k.dims3()?;
    let fits = kvh > 0 && h % kvh == 0 && s > 0 && t > 0 && k_dim == d && v.dims3()? == (kvh, s, d) && d % 16 == 0 && d <= MAX_HEAD_DIM;
    let cpu_dtypes = [q, k, v].iter().all(|x| dtypes.contains(&x.dtype()) && x.device().is_cpu());
    Ok((fits && cpu_dtypes).then_some((h, t, d, kvh, s)))
}

/// Runs `block(kv head, first query row, query rows, output rows)` over every head's blocks of
/// `QUERY_BLOCK` query rows in parallel; `q` holds `q_row` values per query row, the output `d`.
fn for_each_query_block<Q: Sync>(q: &[Q], q_row: usize, out: &mut [f32], (t, d): (usize, usize), groups: usize, block: impl Fn(usize, usize, &[Q], &mut [f32]) + Sync) {
    out.par_chunks_mut(t * d).enumerate().for_each(|(hi, oh)| {
        let qh = &q[hi * t * q_row..(hi + 1) * t * q_row];
        oh.par_chunks_mut(QUERY_BLOCK * d).enumerate().for_each(|(bi, o)| {
            let rows = o.len() / d;
            block(hi / groups, bi * QUERY_BLOCK, &qh[bi * QUERY_BLOCK * q_row..][..rows * q_row], o)
        });
    });
}

/// `q [H, T, D]` (f32), `k`/`v` `[KVH, S, D]` (f32, or a narrower KV cache's f16 or bf16 rows,
/// widened once), `H % KVH == 0`, any layout (copied row-major where not), with `causal` as in
/// `attention::attention` -> `Some([H, T, D])`; `None` where this path does not apply (another
/// dtype, `D` not a multiple of 16 or over 256, neither AVX-512F nor AVX2 and FMA).
pub fn flash_attention(q: &Tensor, k: &Tensor, v: &Tensor, causal: Option<usize>, scale: f64) -> Result<Option<Tensor>> {
    match isa() {
        Some(isa) => flash_attention_with(isa, q, k, v, causal, scale),
        None => Ok(None),
    }
}

/// `flash_attention` with the kernel of `isa`, one of `Isa::supported()` (benchmarks and tests
/// run each).
pub fn flash_attention_with(isa: Isa, q: &Tensor, k: &Tensor, v: &Tensor, causal: Option<usize>, scale: f64) -> Result<Option<Tensor>> {
    let Some((h, t, d, kvh, s)) = fitting_shape(q, k, v, &[DType::F32, DType::F16, DType::BF16])? else { return Ok(None) };
    if q.dtype() != DType::F32 {
        return Ok(None);
    }
    assert!(Isa::supported().contains(&isa), "{isa:?} kernels on a CPU without them");
    // no copy where already f32 and row-major (the vision towers' operands)
    let widen = |x: &Tensor| -> Result<Tensor> { Ok(x.to_dtype(DType::F32)?.contiguous()?) };
    let (q, k, v) = (widen(q)?, widen(k)?, widen(v)?);
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (Some(qv), Some(kv), Some(vv)) = (contiguous_f32(&qs, ql), contiguous_f32(&ks, kl), contiguous_f32(&vs, vl)) else { return Ok(None) };
    // K^T per KV head, keys padded with zeros to whole blocks: [KVH, S, D] -> [KVH, D, S_pad]
    let s_pad = padded_keys(s);
    let mut kt = vec![0f32; kvh * d * s_pad];
    kt.par_chunks_mut(d * s_pad).enumerate().for_each(|(i, dst)| {
        for (j, key) in kv[i * s * d..(i + 1) * s * d].chunks_exact(d).enumerate() {
            for (c, &x) in key.iter().enumerate() {
                dst[c * s_pad + j] = x;
            }
        }
    });
    let mut out = vec![0f32; h * t * d];
    let shape = Shape { d, s, s_pad, scale: scale as f32, causal, first_row: 0 };
    for_each_query_block(qv, d, &mut out, (t, d), h / kvh, |kvi, first_row, qb, o| {
        let (kth, vh) = (&kt[kvi * d * s_pad..(kvi + 1) * d * s_pad], &vv[kvi * s * d..(kvi + 1) * s * d]);
        let shape = Shape { first_row, ..shape };
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::supported()` checked the ISA's features at run time.
        unsafe {
            match isa {
                Isa::Avx512 => avx512::query_block_f32(qb, kth, vh, o, shape),
                Isa::Avx2 => avx2::query_block_f32(qb, kth, vh, o, shape),
            }
        };
    });
    drop((qs, ks, vs));
    Ok(Some(Tensor::from_vec(out, (h, t, d), q.device())?))
}

/// `flash_attention` with bf16 operands and f32 sums (see the header), for f32, f16 or bf16
/// inputs in any layout (each of `q`, `k`, `v` its own; they are rounded and repacked anyway,
/// so a KV cache's strided f16 view needs no copy of its own first), with `causal` as in
/// `attention::attention` -> `Some([H, T, D])` in `q`'s dtype; `None` where this path does not
/// apply (a shape or device `flash_attention` refuses, or no AVX512-BF16).
pub fn flash_attention_bf16(q: &Tensor, k: &Tensor, v: &Tensor, causal: Option<usize>, scale: f64) -> Result<Option<Tensor>> {
    let Some((h, t, d, kvh, s)) = fitting_shape(q, k, v, &[DType::F32, DType::F16, DType::BF16])? else { return Ok(None) };
    if !bf16_available() {
        return Ok(None);
    }
    let (Some(q16), Some(k16), Some(v16)) = (bf16_bits_row_major(q)?, bf16_bits_row_major(k)?, bf16_bits_row_major(v)?) else { return Ok(None) };
    let pair = |lo: u16, hi: u16| lo as u32 | (hi as u32) << 16;
    // Q as consecutive-dim pairs: [H, T, D] -> [H, T, D/2] pairs
    let qp: Vec<u32> = q16.par_chunks_exact(2).map(|p| pair(p[0], p[1])).collect();
    let (half, s_pad) = (d / 2, padded_keys(s));
    // K per KV head, pairs of dims key by key, keys padded with zeros: [KVH, S, D] -> [KVH, D/2, S_pad] pairs
    let mut kp = vec![0u32; kvh * half * s_pad];
    kp.par_chunks_mut(half * s_pad).enumerate().for_each(|(i, dst)| {
        for (j, key) in k16[i * s * d..(i + 1) * s * d].chunks_exact(d).enumerate() {
            for (c2, p) in key.chunks_exact(2).enumerate() {
                dst[c2 * s_pad + j] = pair(p[0], p[1]);
            }
        }
    });
    // V per KV head, pairs of keys dim by dim, a zero key past S: [KVH, S, D] -> [KVH, S_pad/2, D] pairs
    let mut vp = vec![0u32; kvh * s_pad / 2 * d];
    vp.par_chunks_mut(s_pad / 2 * d).enumerate().for_each(|(i, dst)| {
        let vh = &v16[i * s * d..(i + 1) * s * d];
        for (j2, row) in dst.chunks_exact_mut(d).take(s.div_ceil(2)).enumerate() {
            let (even, odd) = (&vh[2 * j2 * d..][..d], vh.get((2 * j2 + 1) * d..(2 * j2 + 2) * d));
            for (c, x) in row.iter_mut().enumerate() {
                *x = pair(even[c], odd.map_or(0, |o| o[c]));
            }
        }
    });
    let mut out = vec![0f32; h * t * d];
    let shape = Shape { d, s, s_pad, scale: scale as f32, causal, first_row: 0 };
    for_each_query_block(&qp, half, &mut out, (t, d), h / kvh, |kvi, first_row, qb, o| {
        let (kph, vph) = (&kp[kvi * half * s_pad..(kvi + 1) * half * s_pad], &vp[kvi * s_pad / 2 * d..(kvi + 1) * s_pad / 2 * d]);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `bf16_available()` checked AVX-512F, AVX512-BF16 and FMA at run time.
        unsafe {
            avx512::query_block_bf16(qb, kph, vph, o, Shape { first_row, ..shape })
        };
    });
    Ok(Some(Tensor::from_vec(out, (h, t, d), q.device())?.to_dtype(q.dtype())?))
}

/// `s` keys padded with zero keys to whole blocks, and to an odd number of blocks: `s_pad` is
/// also the row stride of the transposed K (`kt`, `kp`), which the packing fills one key at a
/// time, each key's D (or D/2) values `s_pad` apart. With an even number of 64-key blocks
/// those stores fell on few L1 sets (all in one for Qwen2-VL's 1024 patches, a 4 KiB stride);
/// an odd count moves each row by an odd number of 256-byte steps. `attention_bench 64 1024
/// 80` (Zen 4 VM): the packing closures' profile samples 232 -> 29, the fused call (packing
/// included) 193-208 -> 233-248 GFLOP/s; the tile kernels' own samples did not change. The
/// kernels never visit the extra keys (they stop at `s`).
fn padded_keys(s: usize) -> usize {
    let blocks = s.div_ceil(KEY_BLOCK);
    (blocks | 1) * KEY_BLOCK
}

/// One head's sizes: head dim, keys, keys padded to whole blocks, softmax scale; with `causal`
/// the position of query row 0 (row `i` sees keys `0..=causal + i`), and the first query row
/// of the block a kernel call takes.
#[derive(Clone, Copy)]
struct Shape {
    d: usize,
    s: usize,
    s_pad: usize,
    scale: f32,
    causal: Option<usize>,
    first_row: usize,
}

impl Shape {
    /// Keys that query row `row` (of the whole head) sees: `0..visible_keys(row)`.
    fn visible_keys(self, row: usize) -> usize {
        self.causal.map_or(self.s, |offset| (offset + row + 1).min(self.s))
    }
}

/// The order a block of `rows` query rows takes the keys in (both ISAs' kernels): key blocks
/// outermost, every tile of up to `TILE_ROWS` rows taking each in turn, so a key block stays
/// in cache for all of them. Causal: the block's last row sees the most keys, and a tile skips
/// the blocks past its last row's (key 0 is visible to every row, so every row's first block
/// sets a finite max). Calls `step(tile's first row, its rows, first key, shape)` with the
/// shape's `first_row` moved to the tile's.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[inline(always)]
fn for_each_tile_step(rows: usize, sh: Shape, mut step: impl FnMut(usize, usize, usize, Shape)) {
    for j0 in (0..sh.visible_keys(sh.first_row + rows - 1)).step_by(KEY_BLOCK) {
        for r0 in (0..rows).step_by(TILE_ROWS) {
            let tile_rows = (rows - r0).min(TILE_ROWS);
            if j0 < sh.visible_keys(sh.first_row + r0 + tile_rows - 1) {
                step(r0, tile_rows, j0, Shape { first_row: sh.first_row + r0, ..sh });
            }
        }
    }
}

/// Evaluates `$body` with the constant `$r` set to `$rows` (1..=TILE_ROWS), so a tile's row
/// count is a compile-time constant of its kernel.
#[cfg(target_arch = "x86_64")]
macro_rules! with_tile_rows {
    ($rows:expr, |$r:ident| $body:expr) => {
        match $rows {
            1 => {
                const $r: usize = 1;
                $body
            }
            2 => {
                const $r: usize = 2;
                $body
            }
            3 => {
                const $r: usize = 3;
                $body
            }
            4 => {
                const $r: usize = 4;
                $body
            }
            5 => {
                const $r: usize = 5;
                $body
            }
            _ => {
                const $r: usize = TILE_ROWS;
                $body
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::attention_slow;
    use crate::ops::max_abs_diff;
    use candle_core::Device;

    #[test]
    fn fused_attention_matches_the_slow_twin() {
        if Isa::supported().is_empty() {
            println!("SKIPPED: this CPU runs no fused attention kernel");
        }
        let dev = Device::Cpu;
        // (heads, kv heads, query rows, keys, head dim): partial tiles (T % 6), partial key
        // blocks (S % 64), head dims of 1 to 8 vectors (Qwen2-VL's tower 80, CogVLM2's 112),
        // grouped heads, wide score ranges (exp underflow)
        for (h, kvh, t, s, d, spread) in [(2, 2, 7, 7, 16, 1.0), (4, 2, 13, 70, 80, 1.0), (3, 3, 64, 64, 112, 3.0), (2, 1, 1, 130, 128, 1.0), (2, 2, 20, 200, 64, 6.0), (1, 1, 6, 1, 32, 1.0)] {
            let [q, k, v] = [(h, t), (kvh, s), (kvh, s)].map(|(a, b)| Tensor::randn(0f32, spread, (a, b, d), &dev).unwrap());
            let scale = 1.0 / (d as f64).sqrt();
            let slow = attention_slow(&q, &k, &v, None, scale).unwrap();
            for isa in Isa::supported() {
                let fast = flash_attention_with(isa, &q, &k, &v, None, scale).unwrap().expect("the fused path takes these shapes");
                let diff = max_abs_diff(&fast, &slow).unwrap();
                println!("fused attention ({isa:?}) h={h} kvh={kvh} t={t} s={s} d={d} spread={spread}: max|diff| = {diff:e}");
                assert!(diff < 2e-5 * spread, "{diff}");
            }
        }
    }

    /// Causal f32 attention (prefill: query `i` at position `offset + i` sees keys
    /// `0..=offset + i`) over f32, f16 (a narrower cache, compared on the widened values) and
    /// strided keys and values.
    #[test]
    fn causal_fused_attention_matches_the_slow_twin() {
        let dev = Device::Cpu;
        for (h, kvh, t, offset, d) in [(2, 1, 100, 0, 32), (4, 2, 70, 30, 64), (2, 2, 17, 0, 80), (3, 3, 130, 5, 16), (2, 2, 49, 150, 128)] {
            let s = offset + t;
            let [q, k, v] = [(h, t), (kvh, s), (kvh, s)].map(|(a, b)| Tensor::randn(0f32, 1.0, (a, b, d), &dev).unwrap());
            let scale = 1.0 / (d as f64).sqrt();
            let slow = attention_slow(&q, &k, &v, Some(offset), scale).unwrap();
            let [k16, v16] = [&k, &v].map(|x| x.to_dtype(DType::F16).unwrap());
            let slow16 = attention_slow(&q, &k16.to_dtype(DType::F32).unwrap(), &v16.to_dtype(DType::F32).unwrap(), Some(offset), scale).unwrap();
            // the same values with D as the middle axis, viewed back: not row-major
            let [ks, vs] = [&k, &v].map(|x| x.transpose(1, 2).unwrap().contiguous().unwrap().transpose(1, 2).unwrap());
            for isa in Isa::supported() {
                for (kind, (ki, vi, twin)) in [("f32", (&k, &v, &slow)), ("f16", (&k16, &v16, &slow16)), ("strided", (&ks, &vs, &slow))] {
                    let fast = flash_attention_with(isa, &q, ki, vi, Some(offset), scale).unwrap().expect("the fused path takes these inputs");
                    let diff = max_abs_diff(&fast, twin).unwrap();
                    println!("causal fused attention ({isa:?}, {kind} K/V) h={h} kvh={kvh} t={t} offset={offset} d={d}: max|diff| = {diff:e}");
                    assert!(diff < 2e-5, "{diff}");
                }
            }
        }
    }

    #[test]
    fn fused_bf16_attention_matches_the_slow_twin_on_rounded_inputs() {
        println!("fused bf16 attention available: {}", bf16_available());
        let dev = Device::Cpu;
        let round = |x: &Tensor| x.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
        for (h, kvh, t, s, d, spread) in [(2, 2, 7, 7, 16, 1.0), (4, 2, 13, 70, 80, 1.0), (3, 3, 64, 65, 112, 3.0), (2, 1, 1, 130, 128, 1.0), (2, 2, 20, 201, 64, 6.0), (1, 1, 6, 1, 32, 1.0)] {
            let [q, k, v] = [(h, t), (kvh, s), (kvh, s)].map(|(a, b)| Tensor::randn(0f32, spread, (a, b, d), &dev).unwrap());
            let scale = 1.0 / (d as f64).sqrt();
            // the twin sees the operands the kernel sees; the kernel also rounds the probabilities
            let twin = attention_slow(&round(&q), &round(&k), &round(&v), None, scale).unwrap();
            let unrounded = attention_slow(&q, &k, &v, None, scale).unwrap();
            for dtype in [DType::F32, DType::BF16] {
                let [qi, ki, vi] = [&q, &k, &v].map(|x| x.to_dtype(dtype).unwrap());
                let Some(fast) = flash_attention_bf16(&qi, &ki, &vi, None, scale).unwrap() else {
                    assert!(!bf16_available(), "the fused bf16 path should take h={h} kvh={kvh} t={t} s={s} d={d}");
                    continue;
                };
                assert_eq!(fast.dtype(), dtype);
                let diff = max_abs_diff(&fast, &twin).unwrap();
                let from_f32 = max_abs_diff(&fast, &unrounded).unwrap();
                println!("fused bf16 attention {dtype:?} in, h={h} kvh={kvh} t={t} s={s} d={d} spread={spread}: max|diff| = {diff:e} (against unrounded f32 inputs {from_f32:e})");
                // a bf16 output is also rounded: up to half an ulp (2^-8 relative) more
                let top = twin.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                let rounding = if dtype == DType::BF16 { top / 256.0 } else { 0.0 };
                assert!(diff < 8e-3 * spread + rounding, "{diff}");
            }
        }
    }

    /// Causal attention (query `i` at position `offset + i` sees keys `0..=offset + i`): rows
    /// across several query blocks and tiles, key blocks the diagonal cuts, prefill after cached
    /// keys (offset > 0) and a partial last key block.
    #[test]
    fn causal_fused_bf16_attention_matches_the_slow_twin_on_rounded_inputs() {
        let dev = Device::Cpu;
        let round = |x: &Tensor| x.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
        for (h, kvh, t, offset, d) in [(2, 1, 100, 0, 32), (4, 2, 70, 30, 64), (2, 2, 17, 0, 80), (3, 3, 130, 5, 16), (2, 2, 49, 150, 128)] {
            let s = offset + t;
            let [q, k, v] = [(h, t), (kvh, s), (kvh, s)].map(|(a, b)| Tensor::randn(0f32, 1.0, (a, b, d), &dev).unwrap());
            let scale = 1.0 / (d as f64).sqrt();
            let twin = attention_slow(&round(&q), &round(&k), &round(&v), Some(offset), scale).unwrap();
            let Some(fast) = flash_attention_bf16(&q, &k, &v, Some(offset), scale).unwrap() else {
                assert!(!bf16_available(), "the fused bf16 path should take h={h} t={t} offset={offset} d={d}");
                continue;
            };
            let diff = max_abs_diff(&fast, &twin).unwrap();
            println!("causal fused bf16 attention h={h} kvh={kvh} t={t} offset={offset} d={d}: max|diff| = {diff:e}");
            assert!(diff < 8e-3, "{diff}");
        }
    }

    #[test]
    fn other_inputs_are_left_to_the_blocked_path() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (2, 8, 20), &dev).unwrap();
        assert!(flash_attention(&q, &q, &q, None, 0.5).unwrap().is_none(), "head dim 20 is not a multiple of 16");
        let q = Tensor::randn(0f32, 1.0, (2, 8, 32), &dev).unwrap();
        let qb = q.to_dtype(DType::BF16).unwrap();
        assert!(flash_attention(&qb, &qb, &qb, None, 0.5).unwrap().is_none(), "bf16 queries");
        let k = Tensor::randn(0f32, 1.0, (3, 8, 32), &dev).unwrap();
        assert!(flash_attention(&q, &k, &k, None, 0.5).unwrap().is_none(), "2 query heads over 3 KV heads");
    }
}
