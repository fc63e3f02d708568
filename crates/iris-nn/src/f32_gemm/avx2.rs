//! The AVX2/FMA twin of the f32 GEMM's AVX-512 kernels (`f32_gemm.rs`), for CPUs without
//! AVX-512F (Zen 2/3, Intel client cores): 32-column panels and bit-identical sums. Sixteen
//! 256-bit registers hold a 6 x 16 tile (12 accumulators, two panel vectors, one broadcast), so
//! a `TILE_ROWS` tile runs as up to two 6-row groups, each over the panel's two 16-column
//! halves, which the packer stores apart (`[2][kc][16]`, `f32_gemm::panel_index`).

use super::{F32Weight, Isa, KC, PANEL, TILE_ROWS};
use std::arch::x86_64::*;

/// Activation rows per register tile.
const GROUP_ROWS: usize = 6;

/// Eight weight values at `at` (f16 and bf16 widened, exactly).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8(w: F32Weight, at: usize) -> __m256 {
    // SAFETY: the caller keeps `at..at + 8` inside the weight.
    unsafe {
        match w {
            F32Weight::F32(s) => _mm256_loadu_ps(s.as_ptr().add(at)),
            F32Weight::F16(s) => _mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr().add(at) as *const __m128i)),
            // a bf16 is the high half of the f32 with the same bits
            F32Weight::BF16(s) => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(s.as_ptr().add(at) as *const __m128i)))),
            F32Weight::Quantized(_) => unreachable!("`pack_panel` decodes quantized weights to f32 first"),
        }
    }
}

/// In-register transpose: `v[j]` lane `i` becomes `v[i]` lane `j`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn transpose_8x8(v: &mut [__m256; 8]) {
    // pairs of rows interleaved: t0 = [r0[0], r1[0], r0[1], r1[1] | r0[4], r1[4], r0[5], r1[5]]
    let t = [0, 2, 4, 6].map(|r| (_mm256_unpacklo_ps(v[r], v[r + 1]), _mm256_unpackhi_ps(v[r], v[r + 1])));
    // quads: s[0] = [r0..r3 at k 0 | at k 4], s[1] k 1 | 5, s[2] k 2 | 6, s[3] k 3 | 7; rows 4-7 in s[4..]
    let quads = |a: (__m256, __m256), b: (__m256, __m256)| {
        [
            _mm256_shuffle_ps::<0x44>(a.0, b.0),
            _mm256_shuffle_ps::<0xEE>(a.0, b.0),
            _mm256_shuffle_ps::<0x44>(a.1, b.1),
            _mm256_shuffle_ps::<0xEE>(a.1, b.1),
        ]
    };
    let (lo, hi) = (quads(t[0], t[1]), quads(t[2], t[3]));
    for j in 0..4 {
        v[j] = _mm256_permute2f128_ps::<0x20>(lo[j], hi[j]);
        v[j + 4] = _mm256_permute2f128_ps::<0x31>(lo[j], hi[j]);
    }
}

/// `pack_panel` for 32 columns inside the weight: 8 columns x 8 k values loaded, transposed in
/// registers, stored as 8 rows of a half-panel; a slice's last k values (`kc % 8`) one by one.
///
/// # Safety
/// AVX2, FMA and F16C; columns `first..first + 32` and k values `kb..kb + kc` are inside the
/// `[n, k]` weight, and `panel` holds `kc * PANEL` values.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn pack_whole_panel(w: F32Weight, k: usize, first: usize, kb: usize, kc: usize, panel: &mut [f32]) {
    assert!(panel.len() >= kc * PANEL && kc <= KC);
    let whole = kc / 8 * 8;
    for eighth in 0..PANEL / 8 {
        let c0 = first + 8 * eighth;
        for i0 in (0..whole).step_by(8) {
            // SAFETY: per the contract: weight rows c0..c0 + 8, values kb + i0..+8, and panel
            // rows i0..i0 + 8 at columns 8 * eighth..+8.
            unsafe {
                let mut v: [__m256; 8] = std::array::from_fn(|c| load8(w, (c0 + c) * k + kb + i0));
                transpose_8x8(&mut v);
                for (j, row) in v.iter().enumerate() {
                    _mm256_storeu_ps(panel.as_mut_ptr().add(super::panel_index(Isa::Avx2, kc, i0 + j, 8 * eighth)), *row);
                }
            }
        }
        for i in whole..kc {
            for c in 0..8 {
                panel[super::panel_index(Isa::Avx2, kc, i, 8 * eighth + c)] = w.at((c0 + c) * k + kb + i);
            }
        }
    }
}

/// One tile, as `avx512::tile`: `rows` (1..=TILE_ROWS) activation rows at `a` (`lda` apart,
/// `kc` values each) against a `[2][kc][16]` panel, into `cols` (1..=32) output columns at `c`
/// (rows `ldc` apart), added to what they hold when `accumulate`.
///
/// # Safety
/// AVX2 and FMA; the pointers cover those extents.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn tile(rows: usize, a: *const f32, lda: usize, panel: &[f32], kc: usize, c: *mut f32, ldc: usize, cols: usize, accumulate: bool) {
    assert!(panel.len() >= kc * PANEL && (1..=PANEL).contains(&cols) && (1..=TILE_ROWS).contains(&rows));
    for r0 in (0..rows).step_by(GROUP_ROWS) {
        for half in 0..2 {
            let half_cols = cols.saturating_sub(16 * half).min(16);
            if half_cols == 0 {
                continue;
            }
            // SAFETY (all): per the contract, rows r0.. and columns 16 * half.. of the tile.
            unsafe {
                let (a, w, c) = (a.add(r0 * lda), panel.as_ptr().add(super::panel_index(Isa::Avx2, kc, 0, 16 * half)), c.add(r0 * ldc + 16 * half));
                match (rows - r0).min(GROUP_ROWS) {
                    1 => group::<1>(a, lda, w, kc, c, ldc, half_cols, accumulate),
                    2 => group::<2>(a, lda, w, kc, c, ldc, half_cols, accumulate),
                    3 => group::<3>(a, lda, w, kc, c, ldc, half_cols, accumulate),
                    4 => group::<4>(a, lda, w, kc, c, ldc, half_cols, accumulate),
                    5 => group::<5>(a, lda, w, kc, c, ldc, half_cols, accumulate),
                    _ => group::<6>(a, lda, w, kc, c, ldc, half_cols, accumulate),
                }
            }
        }
    }
}

/// `R` rows against a half-panel's 16 columns at `w` (`[kc][16]`), into `cols` (1..=16)
/// output columns. Each output is a fused multiply-add chain in k order, as in the AVX-512 tile.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn group<const R: usize>(a: *const f32, lda: usize, w: *const f32, kc: usize, c: *mut f32, ldc: usize, cols: usize, accumulate: bool) {
    // the two 8-column vectors' valid lanes: lane i is on where i < the vector's column count.
    // Masked moves only for a partial last panel: on Zen 2 a `vmaskmovps` store is microcoded.
    // Masked everywhere, `gemm_bench` read 165-168 GFLOP/s on the vision MLP and 156-167 on the
    // language MLP's 307 rows; plain moves for full panels 165-176 and 169-177 (AVX2 VM).
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let mask = |v: usize| _mm256_cmpgt_epi32(_mm256_set1_epi32(cols.saturating_sub(8 * v).min(8) as i32), lanes);
    let (m0, m1) = (mask(0), mask(1));
    let full = cols == 16;
    // SAFETY (all): per the caller's contract; masked loads and stores touch only valid columns.
    unsafe {
        let load = |at: *const f32, m: __m256i| if full { _mm256_loadu_ps(at) } else { _mm256_maskload_ps(at, m) };
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        if accumulate {
            for (r, row) in acc.iter_mut().enumerate() {
                row[0] = load(c.add(r * ldc), m0);
                row[1] = load(c.add(r * ldc + 8), m1);
            }
        }
        for i in 0..kc {
            let (w0, w1) = (_mm256_loadu_ps(w.add(i * 16)), _mm256_loadu_ps(w.add(i * 16 + 8)));
            for (r, row) in acc.iter_mut().enumerate() {
                let x = _mm256_broadcast_ss(&*a.add(r * lda + i));
                row[0] = _mm256_fmadd_ps(x, w0, row[0]);
                row[1] = _mm256_fmadd_ps(x, w1, row[1]);
            }
        }
        for (r, row) in acc.iter().enumerate() {
            if full {
                _mm256_storeu_ps(c.add(r * ldc), row[0]);
                _mm256_storeu_ps(c.add(r * ldc + 8), row[1]);
            } else {
                _mm256_maskstore_ps(c.add(r * ldc), m0, row[0]);
                _mm256_maskstore_ps(c.add(r * ldc + 8), m1, row[1]);
            }
        }
    }
}
