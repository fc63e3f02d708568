//! Many-row products (prefill, the vision tower) with int8 activations on AVX512-VNNI or
//! AVX-VNNI: `[m, K] x W^T` for q8_0 and q4_K weights. The f32 path decodes weight tiles to f32 and runs
//! an f32 GEMM, bound by FMA throughput (16 multiply-adds per instruction); `vpdpbusd` does 64.
//! Activations are quantized to int8 per 32-value block, as llama.cpp does for its quantized
//! matmuls: for q8_0 exactly the decode kernels' recipe; for q4_K finer than decode's 256-value
//! blocks (the weight's sub-blocks are 32 values, so finer costs nothing here).
//!
//! Each task repacks 32 weight columns ("a panel pair") into the layout `vpdpbusd` wants: for
//! block `b` and group `g` of four values, one 64-byte vector per 16 columns holding those four
//! bytes of each column. Weights become unsigned bytes in both formats, so one kernel serves both:
//!   q4_K: byte `q` (0..15),      block scale `d*sc[j]`, block min `dmin*m[j]`;
//!   q8_0: byte `q + 128` (0..255), block scale `d`,     no min,
//! and a block contributes `dx * (scale * dot - min * sum(xq))`, `xq` the activation quants, `dx`
//! their scale and `dot = sum(byte * xq)`. For q8_0 the +128 comes back out in the integer
//! domain: each block's `vpdpbusd` accumulators start at `-128 * sum(xq)`, so `dot` is exactly
//! `sum(q * xq)` and the tile does one float operation less per block and row (the f32 min term
//! also cancelled two large terms). `tile_scalar` is the plain twin of the AVX-512 and AVX-VNNI
//! tile kernels.

use super::kernels::{self, q4k_block, Kernel};
use super::Blocks;
use crate::tiled_output::ColumnTiles;
use candle_core::quantized::k_quants::{QK8_0, QK_K};
use rayon::prelude::*;

/// Values per scale block: a q8_0 block, a q4_K sub-block.
pub(crate) const BLOCK: usize = 32;
/// Output columns per task (two 16-lane vectors).
pub(crate) const PAIR: usize = 32;
/// Activation rows per tile.
pub(crate) const TILE_ROWS: usize = 6;

/// `[m, K]` activations quantized per `BLOCK` values.
pub(crate) struct Activations {
    /// `[m, K]` int8 quants in `[-127, 127]`.
    pub qs: Vec<i8>,
    /// `[m, K / BLOCK]` scales.
    pub dx: Vec<f32>,
    /// `[m, K / BLOCK]` `dx * sum(quants of the block)`, for the min term.
    pub dx_sum: Vec<f32>,
    /// `[m, K / BLOCK]` `-128 * sum(quants of the block)`: where q8_0 blocks start their dot.
    pub offset: Vec<i32>,
}

impl Activations {
    /// `[m, K]` f32 activations quantized by the chosen row quantizer: the AVX-512 or AVX2 one on
    /// VNNI CPUs (a fused pass that writes the quants, scales and sums in place; the general one took
    /// a third of a `[1024, 5120]` product's time), the general one elsewhere. Same results
    /// (tested).
    pub fn quantize_with(x: &[f32], k: usize, kernel: Kernel) -> Self {
        let blocks = k / BLOCK;
        let rows = x.len() / k;
        let mut qs = vec![0i8; x.len()];
        let mut dx = vec![0f32; rows * blocks];
        let mut dx_sum = vec![0f32; rows * blocks];
        let mut offset = vec![0i32; rows * blocks];
        let per_block = dx_sum.par_chunks_mut(blocks).zip(offset.par_chunks_mut(blocks));
        qs.par_chunks_mut(k).zip(dx.par_chunks_mut(blocks)).zip(per_block).zip(x.par_chunks(k)).for_each(|(((q, d), (ds, off)), src)| {
            let row = QuantizedRowOut { q, dx: d, dx_sum: ds, offset: off };
            match kernel {
                // SAFETY: Avx512Vnni comes from `Kernel::available`, which checked AVX-512 F/BW.
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512Vnni => unsafe { kernels::avx512_gemm::quantize_row(src, row) },
                // SAFETY: AvxVnni comes from `Kernel::available`, which checked AVX2.
                #[cfg(target_arch = "x86_64")]
                Kernel::AvxVnni => unsafe { kernels::avxvnni_gemm::quantize_row(src, row) },
                _ => quantize_row_general(src, row),
            }
        });
        Self { qs, dx, dx_sum, offset }
    }
}

/// One activation row's slices of `Activations`, to be filled.
pub(crate) struct QuantizedRowOut<'a> {
    pub q: &'a mut [i8],
    pub dx: &'a mut [f32],
    pub dx_sum: &'a mut [f32],
    pub offset: &'a mut [i32],
}

/// The row quantizer for any CPU: the decode kernels' `quantize_blocks`, then the block sums.
fn quantize_row_general(src: &[f32], row: QuantizedRowOut) {
    let (scales, quants) = kernels::quantize_blocks(src, BLOCK);
    row.q.copy_from_slice(&quants);
    row.dx.copy_from_slice(&scales);
    for (((s, o), block), scale) in row.dx_sum.iter_mut().zip(row.offset.iter_mut()).zip(quants.chunks_exact(BLOCK)).zip(&scales) {
        // |sum| <= 32 * 127, times 128: far inside i32
        let sum = block.iter().map(|&v| v as i32).sum::<i32>();
        *s = scale * sum as f32;
        *o = -128 * sum;
    }
}

/// 32 weight columns in the `vpdpbusd` layout (see the module doc).
pub(crate) struct PanelPair {
    /// `[K / BLOCK][8 groups][2 halves][16 columns][4 bytes]`
    pub bytes: Vec<u8>,
    /// `[K / BLOCK][32 columns]`
    pub scale: Vec<f32>,
    /// `[K / BLOCK][32 columns]`; all zero for q8_0 (see `offset`)
    pub min: Vec<f32>,
    /// The bytes are q8_0's `q + 128`: blocks start their dot at `Activations::offset`.
    pub offset: bool,
}

/// Where byte `i` (0..BLOCK) of column `c` (0..PAIR) of block `b` sits in `PanelPair::bytes`:
/// `[b][g = i / 4][c / 16][c % 16][i % 4]`, i.e. `b * 1024 + g * 128 + 4 * c + i % 4`.
fn panel_byte(b: usize, c: usize, i: usize) -> usize {
    b * BLOCK * PAIR + (i / 4) * 4 * PAIR + 4 * c + i % 4
}

impl PanelPair {
    /// Columns `first..first + PAIR` of the weight; columns past `n` are zero. Blocks outermost,
    /// so a block's 1 KiB of the panel is written while it is in L1 (by itself this order
    /// measured no faster in `gemm_bench`). `kernel` Avx512Vnni or AvxVnni packs whole q8_0
    /// panels with vector code (`avx512_gemm::pack_q8_0_block`, a register transpose;
    /// `avxvnni_gemm::pack_q8_0_block`, gathers) and the nibbles of whole q4_K ones
    /// (`avx512_gemm::pack_q4k_super_block`, the same transpose, scales and mins included;
    /// `avxvnni_gemm::pack_q4k_nibbles`, gathers): packing had been ~10% of a vision encode's
    /// profile.
    pub fn pack_with(blocks: &Blocks, n: usize, k: usize, first: usize, kernel: Kernel) -> Self {
        let nb = k / BLOCK;
        let cols = PAIR.min(n - first);
        let offset = matches!(blocks, Blocks::Q8_0 { .. });
        let mut out = Self { bytes: vec![0; nb * BLOCK * PAIR], scale: vec![0.0; nb * PAIR], min: vec![0.0; nb * PAIR], offset };
        // bytes 4g..4g+4 of a block as little-endian word g
        let words = |bytes: &[u8]| -> [u32; BLOCK / 4] { std::array::from_fn(|g| u32::from_le_bytes(bytes[4 * g..4 * g + 4].try_into().expect("4 bytes"))) };
        match blocks {
            #[cfg(target_arch = "x86_64")]
            Blocks::Q8_0 { qs, d } if cols == PAIR && matches!(kernel, Kernel::Avx512Vnni | Kernel::AvxVnni) => {
                for b in 0..nb {
                    let panel = &mut out.bytes[b * BLOCK * PAIR..][..BLOCK * PAIR];
                    // SAFETY: the kernel comes from `Kernel::available` (AVX-512 F, or AVX2,
                    // checked); the panel has all 32 columns.
                    unsafe {
                        match kernel {
                            Kernel::Avx512Vnni => kernels::avx512_gemm::pack_q8_0_block(qs, k, first, b, panel),
                            _ => kernels::avxvnni_gemm::pack_q8_0_block(qs, k, first, b, panel),
                        }
                    }
                    for col in 0..PAIR {
                        out.scale[b * PAIR + col] = d[(first + col) * nb + b].to_f32();
                    }
                }
            }
            Blocks::Q8_0 { qs, d } => {
                // SAFETY: i8 and u8 have the same layout.
                let qs: &[u8] = unsafe { std::slice::from_raw_parts(qs.as_ptr() as *const u8, qs.len()) };
                for b in 0..nb {
                    for col in 0..cols {
                        let o = first + col;
                        // q + 128 as an unsigned byte is q with its top bit flipped
                        let biased = words(&qs[o * k + b * QK8_0..][..QK8_0]).map(|w| w ^ 0x8080_8080);
                        out.put(b, col, biased, d[o * nb + b].to_f32(), 0.0);
                    }
                }
            }
            Blocks::Q4K(q4k) => {
                let per_row = k / QK_K;
                let sub = QK_K / BLOCK;
                // full panels on the VNNI kernels' CPUs (AVX2 at least) pack the nibbles in vectors,
                // on AVX-512 the scales and mins too
                let vector_packed = cfg!(target_arch = "x86_64") && cols == PAIR && matches!(kernel, Kernel::Avx512Vnni | Kernel::AvxVnni);
                for s in 0..per_row {
                    #[cfg(target_arch = "x86_64")]
                    if vector_packed {
                        let nibbles = &mut out.bytes[s * sub * BLOCK * PAIR..][..QK_K * PAIR];
                        if kernel == Kernel::Avx512Vnni {
                            let (scale, min) = (&mut out.scale[s * sub * PAIR..][..sub * PAIR], &mut out.min[s * sub * PAIR..][..sub * PAIR]);
                            // SAFETY: Avx512Vnni comes from `Kernel::available`, which checked AVX-512 F/BW.
                            unsafe { kernels::avx512_gemm::pack_q4k_super_block(q4k, per_row, first, s, nibbles, scale, min) };
                            continue;
                        }
                        // SAFETY: AvxVnni comes from `Kernel::available`, which checked AVX2.
                        unsafe { kernels::avxvnni_gemm::pack_q4k_nibbles(q4k, per_row, first, s, nibbles) };
                    }
                    for col in 0..cols {
                        let blk = q4k_block(q4k, per_row, first + col, s);
                        let (d, dmin) = (blk.dm[0].to_f32(), blk.dm[1].to_f32());
                        for j in 0..sub {
                            let (scale, min) = (d * blk.sc[j] as f32, dmin * blk.m[j] as f32);
                            if vector_packed {
                                (out.scale[(s * sub + j) * PAIR + col], out.min[(s * sub + j) * PAIR + col]) = (scale, min);
                            } else {
                                // sub-block j: nibble j % 2 of bytes 32 * (j / 2) .. + 32
                                let shift = 4 * (j % 2);
                                let nibbles = words(&blk.qs[32 * (j / 2)..][..32]).map(|w| (w >> shift) & 0x0F0F_0F0F);
                                out.put(s * sub + j, col, nibbles, scale, min);
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// Stores column `col`'s block `b`: its eight words where `vpdpbusd` reads them, its scale
    /// and min.
    fn put(&mut self, b: usize, col: usize, words: [u32; BLOCK / 4], scale: f32, min: f32) {
        for (g, word) in words.into_iter().enumerate() {
            let at = panel_byte(b, col, 4 * g);
            self.bytes[at..at + 4].copy_from_slice(&word.to_le_bytes());
        }
        self.scale[b * PAIR + col] = scale;
        self.min[b * PAIR + col] = min;
    }
}

/// The activation rows one tile multiplies: rows `row..row + rows` of `acts`, each `k` long.
pub(crate) struct TileRows<'a> {
    pub acts: &'a Activations,
    pub k: usize,
    /// First activation row of the tile.
    pub row: usize,
    /// Rows in the tile (1..=TILE_ROWS).
    pub rows: usize,
}

/// Plain twin of the AVX-512 tile: `out[r * PAIR + c]` for the tile's rows and 32 columns, with
/// the same per-block integer dot products and the same float operation order.
pub(crate) fn tile_scalar(panel: &PanelPair, t: &TileRows, out: &mut [f32]) {
    let nb = t.k / BLOCK;
    for r in 0..t.rows {
        let x = &t.acts.qs[(t.row + r) * t.k..][..t.k];
        for c in 0..PAIR {
            let mut acc = 0f32;
            for b in 0..nb {
                let mut dot = if panel.offset { t.acts.offset[(t.row + r) * nb + b] } else { 0 };
                for i in 0..BLOCK {
                    let byte = panel.bytes[panel_byte(b, c, i)];
                    dot += byte as i32 * x[b * BLOCK + i] as i32;
                }
                let dx = t.acts.dx[(t.row + r) * nb + b];
                acc = (dot as f32).mul_add(panel.scale[b * PAIR + c] * dx, acc);
                if !panel.offset {
                    acc = (-panel.min[b * PAIR + c]).mul_add(t.acts.dx_sum[(t.row + r) * nb + b], acc);
                }
            }
            out[r * PAIR + c] = acc;
        }
    }
}

/// `gemm_into` a caller's buffer (the tests'), which it overwrites.
#[cfg(test)]
pub(crate) fn gemm_with(blocks: &Blocks, n: usize, k: usize, x: &[f32], m: usize, out: &mut [f32], kernel: Kernel) {
    gemm_into(blocks, n, k, x, m, ColumnTiles::new(out, m, n), kernel);
}

/// `gemm_into` a new buffer that is never zeroed first (zeroing a vision MLP's 21 MB output
/// was a store pass of its own).
pub(crate) fn gemm_vec(blocks: &Blocks, n: usize, k: usize, x: &[f32], m: usize, kernel: Kernel) -> Vec<f32> {
    // SAFETY: `gemm_into` writes every tile of rows 0..m and columns 0..n.
    unsafe { crate::tiled_output::written_once(m, n, |dst| gemm_into(blocks, n, k, x, m, dst, kernel)) }
}

/// `dst[r * n + o] = sum_i x[r * k + i] * W[o, i]` for `m` rows of `x` (any `m`), int8
/// activations, every value of `dst` written once (each panel pair's row tiles in turn).
/// `kernel` picks the tile kernel: AVX-512 VNNI, AVX-VNNI, or the scalar twin.
fn gemm_into(blocks: &Blocks, n: usize, k: usize, x: &[f32], m: usize, dst: ColumnTiles, kernel: Kernel) {
    assert!(x.len() == m * k && dst.dims() == (m, n) && k.is_multiple_of(BLOCK));
    let acts = Activations::quantize_with(x, k, kernel);
    (0..n.div_ceil(PAIR)).into_par_iter().for_each(|p| {
        let first = p * PAIR;
        let cols = PAIR.min(n - first);
        let panel = PanelPair::pack_with(blocks, n, k, first, kernel);
        let mut tile = [0f32; TILE_ROWS * PAIR];
        for row in (0..m).step_by(TILE_ROWS) {
            let t = TileRows { acts: &acts, k, row, rows: TILE_ROWS.min(m - row) };
            match kernel {
                // SAFETY: Avx512Vnni comes from `Kernel::available`, which checked the features.
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512Vnni => unsafe { kernels::avx512_gemm::tile(&panel, &t, &mut tile) },
                // SAFETY: AvxVnni comes from `Kernel::available`, which checked AVX2, FMA and AVX-VNNI.
                #[cfg(target_arch = "x86_64")]
                Kernel::AvxVnni => unsafe { kernels::avxvnni_gemm::tile(&panel, &t, &mut tile) },
                _ => tile_scalar(&panel, &t, &mut tile),
            }
            // SAFETY: columns `first..first + cols` belong to this task alone; `out` outlives the loop.
            unsafe { dst.write(row, t.rows, first, cols, &tile, PAIR) };
        }
    });
}

/// Whether many-row products take the int8 GEMM: on AVX512-VNNI and AVX-VNNI CPUs, unless the
/// environment sets `IRIS_NO_INT8_GEMM` (then they take the f32-tile path, for A/B measurements).
pub(crate) fn available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| matches!(Kernel::best(), Kernel::Avx512Vnni | Kernel::AvxVnni) && std::env::var_os("IRIS_NO_INT8_GEMM").is_none())
}
