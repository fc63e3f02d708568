//! The AVX2 kernel of `flash_attention` (f32 operands, FMA), for CPUs without AVX-512: the
//! same blocking as `avx512.rs` (48 query rows per call, blocks of 64 keys outermost, register
//! tiles of six rows) with 8-lane vectors. Sixteen registers hold a 6 x 16 accumulator tile,
//! so a tile's 64 scores per row are summed 16 keys at a time and its output rows 16 columns
//! at a time, the shape of `f32_gemm/avx2.rs`'s tile (two loads and six broadcasts per twelve
//! multiply-adds).

use super::{Shape, KEY_BLOCK, QUERY_BLOCK, TILE_ROWS};
use crate::softmax::avx2::exp_nonpositive;
use std::arch::x86_64::*;

/// Columns (keys in the score step, output dims in the value step) per register tile.
const TILE_COLUMNS: usize = 16;

/// Running softmax state of a row: max score so far and the sum of exp below it, kept in 8
/// lanes and added up once at the end.
#[derive(Clone, Copy)]
struct RowState {
    max: f32,
    sum: __m256,
}

/// Up to `QUERY_BLOCK` query rows `q [T', D]` against one head, `kt [D, S_pad]` (K transposed)
/// and `v [S, D]` -> `o [T', D]`. Key blocks outermost, every tile of six rows taking each in
/// turn; then each row divided by its softmax sum.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn query_block_f32(q: &[f32], kt: &[f32], v: &[f32], o: &mut [f32], sh: Shape) {
    let Shape { d, s, s_pad, .. } = sh;
    let rows = o.len() / d;
    assert!(kt.len() == d * s_pad && v.len() == s * d && q.len() == rows * d);
    assert!(rows <= QUERY_BLOCK && s_pad.is_multiple_of(KEY_BLOCK) && d.is_multiple_of(TILE_COLUMNS));
    let mut state = [RowState { max: f32::NEG_INFINITY, sum: _mm256_setzero_ps() }; QUERY_BLOCK];
    o.fill(0.0);
    super::for_each_tile_step(rows, sh, |r0, tile_rows, j0, sh| {
        let (qt, ot, st) = (&q[r0 * d..], &mut o[r0 * d..], &mut state[r0..]);
        with_tile_rows!(tile_rows, |R| tile_step::<R>(qt, kt, v, ot, st, j0, sh))
    });
    for (row, st) in o.chunks_exact_mut(d).zip(&state) {
        let inv = _mm256_set1_ps(1.0 / horizontal_sum(st.sum));
        for x in row.chunks_exact_mut(8) {
            _mm256_storeu_ps(x.as_mut_ptr(), _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr()), inv));
        }
    }
}

/// The first `R` rows of `q`/`o`/`state` take the keys `j0..j0+64` (those a row sees).
#[inline(always)]
unsafe fn tile_step<const R: usize>(q: &[f32], kt: &[f32], v: &[f32], o: &mut [f32], state: &mut [RowState], j0: usize, sh: Shape) {
    let Shape { d, s_pad, .. } = sh;
    assert!(q.len() >= R * d && o.len() >= R * d && state.len() >= R && j0 + KEY_BLOCK <= s_pad);
    // scores [R, 64], 16 keys at a time: two 8-key vectors of K^T per dim, one broadcast q
    // value per row
    let mut scores = [[0f32; KEY_BLOCK]; R];
    for k0 in (0..KEY_BLOCK).step_by(TILE_COLUMNS) {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for c in 0..d {
            let row = kt.as_ptr().add(c * s_pad + j0 + k0);
            let keys = [_mm256_loadu_ps(row), _mm256_loadu_ps(row.add(8))];
            for (r, a) in acc.iter_mut().enumerate() {
                let qb = _mm256_set1_ps(*q.get_unchecked(r * d + c));
                a[0] = _mm256_fmadd_ps(qb, keys[0], a[0]);
                a[1] = _mm256_fmadd_ps(qb, keys[1], a[1]);
            }
        }
        for (row, a) in scores.iter_mut().zip(&acc) {
            _mm256_storeu_ps(row.as_mut_ptr().add(k0), a[0]);
            _mm256_storeu_ps(row.as_mut_ptr().add(k0 + 8), a[1]);
        }
    }
    for (r, row) in scores.iter_mut().enumerate() {
        online_softmax_row(row, &mut o[r * d..(r + 1) * d], &mut state[r], sh.visible_keys(sh.first_row + r).saturating_sub(j0), sh.scale);
    }
    // o [R, D] += probs [R, n] x V [n, D], 16 columns at a time; keys past the tile's last
    // row's are all probability 0
    let n = (sh.visible_keys(sh.first_row + R - 1) - j0).min(KEY_BLOCK);
    for c0 in (0..d).step_by(TILE_COLUMNS) {
        let mut acc: [[__m256; 2]; R] = std::array::from_fn(|r| std::array::from_fn(|i| _mm256_loadu_ps(o.as_ptr().add(r * d + c0 + 8 * i))));
        for j in 0..n {
            let row = v.as_ptr().add((j0 + j) * d + c0);
            let values = [_mm256_loadu_ps(row), _mm256_loadu_ps(row.add(8))];
            for (r, a) in acc.iter_mut().enumerate() {
                let p = _mm256_set1_ps(*scores[r].get_unchecked(j));
                a[0] = _mm256_fmadd_ps(p, values[0], a[0]);
                a[1] = _mm256_fmadd_ps(p, values[1], a[1]);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(o.as_mut_ptr().add(r * d + c0), a[0]);
            _mm256_storeu_ps(o.as_mut_ptr().add(r * d + c0 + 8), a[1]);
        }
    }
}

/// One row's raw scores for a block of 64 keys, of which the first `valid` are seen ->
/// `exp(scale * score - new max)` in place (0 past `valid`), with the row's max and sum moved
/// on and its output row `o [D]` rescaled to the new max.
#[inline(always)]
unsafe fn online_softmax_row(row: &mut [f32; KEY_BLOCK], o: &mut [f32], st: &mut RowState, valid: usize, scale: f32) {
    let (neg_inf, scale) = (_mm256_set1_ps(f32::NEG_INFINITY), _mm256_set1_ps(scale));
    let seen = _mm256_set1_epi32(valid.min(KEY_BLOCK) as i32);
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    // keys past what the row sees get -inf (probability 0); a row that sees none of the block
    // keeps its max (already finite: key 0 came first), so its exps are all 0
    let scaled: [__m256; KEY_BLOCK / 8] = std::array::from_fn(|i| {
        let key = _mm256_add_epi32(lane, _mm256_set1_epi32(8 * i as i32));
        let visible = _mm256_castsi256_ps(_mm256_cmpgt_epi32(seen, key));
        _mm256_blendv_ps(neg_inf, _mm256_mul_ps(_mm256_loadu_ps(row.as_ptr().add(8 * i)), scale), visible)
    });
    let block_max = horizontal_max(scaled.iter().fold(neg_inf, |m, &x| _mm256_max_ps(m, x)));
    let new_max = st.max.max(block_max);
    let shift = _mm256_set1_ps(new_max);
    let mut total = _mm256_setzero_ps();
    for (i, x) in scaled.iter().enumerate() {
        let p = exp_nonpositive(_mm256_sub_ps(*x, shift));
        _mm256_storeu_ps(row.as_mut_ptr().add(8 * i), p);
        total = _mm256_add_ps(total, p);
    }
    // rescale what was summed under the old max (`exp(-inf)` is 0 for a row's first block)
    if new_max == st.max {
        st.sum = _mm256_add_ps(st.sum, total);
    } else {
        let a = exp_nonpositive(_mm256_set1_ps(st.max - new_max));
        st.sum = _mm256_fmadd_ps(st.sum, a, total);
        st.max = new_max;
        for x in o.chunks_exact_mut(8) {
            _mm256_storeu_ps(x.as_mut_ptr(), _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr()), a));
        }
    }
}

/// The sum of a vector's 8 lanes.
#[inline(always)]
unsafe fn horizontal_sum(x: __m256) -> f32 {
    let x = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x));
    let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)))
}

/// The largest of a vector's 8 lanes.
#[inline(always)]
unsafe fn horizontal_max(x: __m256) -> f32 {
    let x = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x));
    let x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    _mm_cvtss_f32(_mm_max_ss(x, _mm_movehdup_ps(x)))
}
