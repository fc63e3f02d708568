//! The AVX-512 kernels of `flash_attention`: one block of query rows against one head, key
//! blocks outermost, each taken by every register tile in turn. `query_block` and the online
//! softmax are shared; the operands' precision lives in `F32Head` (FMA on f32 K^T and V) and
//! `Bf16Head` (`vdpbf16ps` on bf16 pairs).

use super::{Shape, KEY_BLOCK, QUERY_BLOCK, TILE_ROWS};
use crate::softmax::avx512::exp_nonpositive;
use std::arch::x86_64::*;

/// Running softmax state of a tile's rows: max score so far and sum of exp below it, kept in
/// 16 lanes and added up once at the end (a horizontal sum per row and key block was part of
/// the online softmax's cost) (`o` holds the unnormalised weighted sum).
#[derive(Clone, Copy)]
struct RowState {
    max: f32,
    sum: __m512,
}

/// One head's K and V in the layout a kernel reads, and the tile step over it.
trait HeadOperands {
    /// A query row's element (f32 values, or u32 bf16 pairs).
    type Q;
    /// The first `R` rows of `q`/`o`/`state` take the keys `j0..j0+64` (those below S).
    unsafe fn tile_step<const R: usize>(&self, q: &[Self::Q], o: &mut [f32], state: &mut [RowState], j0: usize, sh: Shape);
}

/// f32 operands: `kt [D, S_pad]` (K transposed), `v [S, D]`.
struct F32Head<'a> {
    kt: &'a [f32],
    v: &'a [f32],
}

/// bf16 operands: `kp [D/2, S_pad]` pairs of a key's dims, `vp [S_pad/2, D]` pairs of keys.
struct Bf16Head<'a> {
    kp: &'a [u32],
    vp: &'a [u32],
}

/// Up to `QUERY_BLOCK` query rows `q [T', D]` (f32) against one head -> `o [T', D]`.
#[target_feature(enable = "avx512f,fma")]
pub(super) unsafe fn query_block_f32(q: &[f32], kt: &[f32], v: &[f32], o: &mut [f32], sh: Shape) {
    assert!(kt.len() == sh.d * sh.s_pad && v.len() == sh.s * sh.d);
    query_block(&F32Head { kt, v }, q, sh.d, o, sh)
}

/// Up to `QUERY_BLOCK` query rows `q [T', D/2]` (bf16 pairs) against one head -> `o [T', D]`.
#[target_feature(enable = "avx512f,avx512bf16,fma")]
pub(super) unsafe fn query_block_bf16(q: &[u32], kp: &[u32], vp: &[u32], o: &mut [f32], sh: Shape) {
    assert!(kp.len() == sh.d / 2 * sh.s_pad && vp.len() == sh.s_pad / 2 * sh.d);
    query_block(&Bf16Head { kp, vp }, q, sh.d / 2, o, sh)
}

/// Key blocks outermost, every tile of six rows taking each in turn; then each row divided by
/// its softmax sum. `q` holds `q_row` elements per row.
#[inline(always)]
unsafe fn query_block<H: HeadOperands>(head: &H, q: &[H::Q], q_row: usize, o: &mut [f32], sh: Shape) {
    let Shape { d, s_pad, .. } = sh;
    let rows = o.len() / d;
    assert!(q.len() == rows * q_row && rows <= QUERY_BLOCK && s_pad.is_multiple_of(KEY_BLOCK) && d.is_multiple_of(16));
    let mut state = [RowState { max: f32::NEG_INFINITY, sum: _mm512_setzero_ps() }; QUERY_BLOCK];
    o.fill(0.0);
    super::for_each_tile_step(rows, sh, |r0, tile_rows, j0, sh| {
        let (qt, ot, st) = (&q[r0 * q_row..], &mut o[r0 * d..], &mut state[r0..]);
        with_tile_rows!(tile_rows, |R| head.tile_step::<R>(qt, ot, st, j0, sh))
    });
    for (row, st) in o.chunks_exact_mut(d).zip(&state) {
        let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(st.sum));
        for x in row.chunks_exact_mut(16) {
            _mm512_storeu_ps(x.as_mut_ptr(), _mm512_mul_ps(_mm512_loadu_ps(x.as_ptr()), inv));
        }
    }
}

/// Raw scores `acc [R][64 keys]` of the block at `j0` -> `exp(scale * score - new max)` per key
/// (0 for padding keys past S and keys a causal row does not see), with each row's max and sum
/// moved on and its output rows rescaled to the new max. Row `r` is row `sh.first_row + r` of
/// the head.
#[inline(always)]
unsafe fn online_softmax<const R: usize>(acc: &[[__m512; 4]; R], o: &mut [f32], state: &mut [RowState], j0: usize, sh: Shape) -> [[__m512; 4]; R] {
    let Shape { d, scale, .. } = sh;
    let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut probs = [[_mm512_setzero_ps(); 4]; R];
    for r in 0..R {
        // keys past what the row sees get -inf (probability 0); a row that sees none of the
        // block keeps its max (already finite: key 0 came first), so its exps are all 0
        let valid = sh.visible_keys(sh.first_row + r).saturating_sub(j0);
        let lane_mask = |i: usize| -> __mmask16 {
            let n = valid.saturating_sub(16 * i).min(16);
            if n == 16 {
                0xFFFF
            } else {
                ((1u32 << n) - 1) as __mmask16
            }
        };
        let scaled = [0, 1, 2, 3].map(|i| _mm512_mask_mul_ps(neg_inf, lane_mask(i), acc[r][i], _mm512_set1_ps(scale)));
        let block_max = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(scaled[0], scaled[1]), _mm512_max_ps(scaled[2], scaled[3])));
        let st = &mut state[r];
        let new_max = st.max.max(block_max);
        let shift = _mm512_set1_ps(new_max);
        let mut total = _mm512_setzero_ps();
        for (i, x) in scaled.iter().enumerate() {
            probs[r][i] = exp_nonpositive(_mm512_sub_ps(*x, shift));
            total = _mm512_add_ps(total, probs[r][i]);
        }
        // rescale what was summed under the old max (by the kernel's own exp: a libm call per
        // row and block cost more than the vector one; `exp(-inf)` is 0 for a row's first block)
        if new_max == st.max {
            st.sum = _mm512_add_ps(st.sum, total);
        } else {
            let a = exp_nonpositive(_mm512_set1_ps(st.max - new_max));
            st.sum = _mm512_fmadd_ps(st.sum, a, total);
            st.max = new_max;
            for x in o[r * d..(r + 1) * d].chunks_exact_mut(16) {
                _mm512_storeu_ps(x.as_mut_ptr(), _mm512_mul_ps(_mm512_loadu_ps(x.as_ptr()), a));
            }
        }
    }
    probs
}

/// Calls `chunk::<V>(c0)` for each run of up to four 16-lane vectors (64 columns) of a `d`-wide
/// output row.
macro_rules! for_each_column_chunk {
    ($d:expr, |$c0:ident, $v:ident| $body:expr) => {
        for $c0 in (0..$d).step_by(64) {
            match ($d - $c0).min(64) / 16 {
                1 => {
                    const $v: usize = 1;
                    $body
                }
                2 => {
                    const $v: usize = 2;
                    $body
                }
                3 => {
                    const $v: usize = 3;
                    $body
                }
                _ => {
                    const $v: usize = 4;
                    $body
                }
            }
        }
    };
}

impl HeadOperands for F32Head<'_> {
    type Q = f32;

    #[inline(always)]
    unsafe fn tile_step<const R: usize>(&self, q: &[f32], o: &mut [f32], state: &mut [RowState], j0: usize, sh: Shape) {
        let Shape { d, s_pad, .. } = sh;
        assert!(q.len() >= R * d && o.len() >= R * d && state.len() >= R && j0 + KEY_BLOCK <= s_pad);
        // scores [R, 64]: one 16-key vector of K^T per column group, one broadcast q value per row
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        for c in 0..d {
            let row = self.kt.as_ptr().add(c * s_pad + j0);
            let keys = [0, 1, 2, 3].map(|i| _mm512_loadu_ps(row.add(16 * i)));
            for (r, a) in acc.iter_mut().enumerate() {
                let qb = _mm512_set1_ps(*q.get_unchecked(r * d + c));
                for i in 0..4 {
                    a[i] = _mm512_fmadd_ps(qb, keys[i], a[i]);
                }
            }
        }
        let p = online_softmax(&acc, o, state, j0, sh);
        let mut probs = [[0f32; KEY_BLOCK]; R];
        for (row, vectors) in probs.iter_mut().zip(&p) {
            for (i, x) in vectors.iter().enumerate() {
                _mm512_storeu_ps(row.as_mut_ptr().add(16 * i), *x);
            }
        }
        // o [R, D] += probs [R, n] x V [n, D], 64 columns (or the rest) at a time
        // keys past the tile's last row's are all probability 0
        let n = (sh.visible_keys(sh.first_row + R - 1) - j0).min(KEY_BLOCK);
        for_each_column_chunk!(d, |c0, V| self.weighted_values::<R, V>(&probs, o, j0, n, c0, d));
    }
}

impl F32Head<'_> {
    /// `o[r][c0..c0+16V] += sum_j probs[r][j] * v[j0+j][c0..c0+16V]` with the rows' columns in
    /// registers across the block's `n` keys.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn weighted_values<const R: usize, const V: usize>(&self, probs: &[[f32; KEY_BLOCK]; R], o: &mut [f32], j0: usize, n: usize, c0: usize, d: usize) {
        let mut acc: [[__m512; V]; R] = std::array::from_fn(|r| std::array::from_fn(|i| _mm512_loadu_ps(o.as_ptr().add(r * d + c0 + 16 * i))));
        for j in 0..n {
            let row = self.v.as_ptr().add((j0 + j) * d + c0);
            let values: [__m512; V] = std::array::from_fn(|i| _mm512_loadu_ps(row.add(16 * i)));
            for (r, a) in acc.iter_mut().enumerate() {
                let p = _mm512_set1_ps(*probs[r].get_unchecked(j));
                for i in 0..V {
                    a[i] = _mm512_fmadd_ps(p, values[i], a[i]);
                }
            }
        }
        store_rows(&acc, o, c0, d);
    }
}

impl HeadOperands for Bf16Head<'_> {
    type Q = u32;

    #[inline(always)]
    unsafe fn tile_step<const R: usize>(&self, q: &[u32], o: &mut [f32], state: &mut [RowState], j0: usize, sh: Shape) {
        let Shape { d, s_pad, .. } = sh;
        let half = d / 2;
        assert!(q.len() >= R * half && o.len() >= R * d && state.len() >= R && j0 + KEY_BLOCK <= s_pad);
        // scores [R, 64]: per dim pair, four 16-key vectors of pairs against one broadcast pair per row
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        for c2 in 0..half {
            let row = self.kp.as_ptr().add(c2 * s_pad + j0);
            let keys: [__m512bh; 4] = [0, 1, 2, 3].map(|i| std::mem::transmute(_mm512_loadu_si512(row.add(16 * i) as *const _)));
            for (r, a) in acc.iter_mut().enumerate() {
                let qb: __m512bh = std::mem::transmute(_mm512_set1_epi32(*q.get_unchecked(r * half + c2) as i32));
                for i in 0..4 {
                    a[i] = _mm512_dpbf16_ps(a[i], qb, keys[i]);
                }
            }
        }
        let p = online_softmax(&acc, o, state, j0, sh);
        // probabilities rounded to bf16, as pairs of consecutive keys: [R, 64] -> [R, 32] pairs
        let mut pairs = [[0u32; KEY_BLOCK / 2]; R];
        for r in 0..R {
            for i in 0..2 {
                let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(p[r][2 * i + 1], p[r][2 * i]));
                _mm512_storeu_si512(pairs[r].as_mut_ptr().add(16 * i) as *mut _, packed);
            }
        }
        // o [R, D] += probs [R, n] x V [n, D], two keys per instruction
        let n_pairs = (sh.visible_keys(sh.first_row + R - 1) - j0).min(KEY_BLOCK).div_ceil(2);
        for_each_column_chunk!(d, |c0, V| self.weighted_values::<R, V>(&pairs, o, j0 / 2, n_pairs, c0, d));
    }
}

impl Bf16Head<'_> {
    /// `o[r][c0..c0+16V] += sum_j probs[r][j] * v[j][c0..c0+16V]` over the keys of the pairs
    /// `j2_0..j2_0+n_pairs` (a zero pair past S), two keys per `vdpbf16ps`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn weighted_values<const R: usize, const V: usize>(&self, pairs: &[[u32; KEY_BLOCK / 2]; R], o: &mut [f32], j2_0: usize, n_pairs: usize, c0: usize, d: usize) {
        let mut acc: [[__m512; V]; R] = std::array::from_fn(|r| std::array::from_fn(|i| _mm512_loadu_ps(o.as_ptr().add(r * d + c0 + 16 * i))));
        for j2 in 0..n_pairs {
            let row = self.vp.as_ptr().add((j2_0 + j2) * d + c0);
            let values: [__m512bh; V] = std::array::from_fn(|i| std::mem::transmute(_mm512_loadu_si512(row.add(16 * i) as *const _)));
            for (r, a) in acc.iter_mut().enumerate() {
                let p: __m512bh = std::mem::transmute(_mm512_set1_epi32(*pairs[r].get_unchecked(j2) as i32));
                for i in 0..V {
                    a[i] = _mm512_dpbf16_ps(a[i], p, values[i]);
                }
            }
        }
        store_rows(&acc, o, c0, d);
    }
}

/// Writes a tile's output registers back to rows of `o` (columns `c0..c0+16V`).
#[inline(always)]
unsafe fn store_rows<const R: usize, const V: usize>(acc: &[[__m512; V]; R], o: &mut [f32], c0: usize, d: usize) {
    for (r, a) in acc.iter().enumerate() {
        for (i, x) in a.iter().enumerate() {
            _mm512_storeu_ps(o.as_mut_ptr().add(r * d + c0 + 16 * i), *x);
        }
    }
}
