//! AVX512-VNNI twins of the integer kernels in `kernels/mod.rs`: `vpdpbusd` multiplies 64 weight
//! bytes by 64 activation bytes per instruction. Compiled on every x86-64 build, selected only
//! where the CPU has AVX512F/BW/VNNI; tested against the scalar twin there.

use super::{prefetch_ahead_of, prefetch_to_l2, q4k_row, Q4KBlock, QuantizedRow, MAX_ROWS};
use candle_core::quantized::k_quants::{QK8_0, QK_K};
use half::f16;
use std::arch::x86_64::*;

/// Lanes 0-7 take element `a`, lanes 8-15 element `b`.
#[target_feature(enable = "avx512f")]
unsafe fn pair_index(a: i32, b: i32) -> __m512i {
    _mm512_setr_epi32(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b)
}

/// q8_0 x q8_0. Sixteen blocks (eight 64-byte pairs) at a time share one F16C conversion of their
/// weight scales and one multiply by each row's activation scales; each pair then picks its two
/// lanes with a permute. The row count is a compile-time constant so the accumulators stay in
/// registers. Leftover pairs take a per-pair scale, an odd last block the scalar sum.
///
/// `vpdpbusd` takes one unsigned operand. The weights become it with their sign bit flipped
/// (`w + 128`, one XOR a pair for all rows), and the excess `128 * sum(x)` of each block leaves
/// through the activations' block sums: one multiply-add per 16 blocks and row into the row's
/// accumulator, whose lanes are all summed at the end anyway (the leftover pairs' excess is
/// subtracted as a scalar at the end). The integer sums are exact; in f32 the excess and the
/// offset products cancel, which costs a few more roundings (the scalar twin test checks
/// activations of one sign, where that is largest). Moving each weight's sign onto the
/// activations instead took a masked byte subtraction per pair and row: one thread, weights in
/// cache (`gemv_bench core`, Zen 4 VM), ns per 256 weights 5.9-6.1 -> 5.5-5.9 with one row,
/// 10.0-12.3 -> 8.3-8.9 with two, 17.0-17.8 -> 16.1-16.2 with four, 35.0-37.6 -> 33.0-33.4 with
/// eight. From DRAM, four rows read the same ~25 GB/s before and after.
///
/// It takes the weight rows from `o` that `cells` (`[rows, m]`) has room for, with one dispatch
/// for all of them rather than one per row (for K = 1536 a row is ~50 ns of work), prefetching
/// `ahead` bytes ahead of the weights into L2 when it is `Some` (`DecodePrefetch`).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
pub unsafe fn dot_rows_q8_0(qs: &[i8], d: &[f16], k: usize, o: usize, rows: &[QuantizedRow], cells: &mut [f32], ahead: Option<usize>) {
    super::for_row_count!(rows.len(), dot_block_q8_0, qs, d, k, o, rows, cells, ahead)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn dot_block_q8_0<const M: usize>(qs: &[i8], d: &[f16], k: usize, o: usize, rows: &[QuantizedRow], cells: &mut [f32], ahead: Option<usize>) {
    for (j, cell) in cells.chunks_mut(M).enumerate() {
        dot_row_q8_0_rows::<M>(qs, d, k, o + j, rows, cell, ahead);
    }
}

/// `acc[r] += ((w + 128) . x) * scale[r]` for one 64-byte pair of blocks.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn q8_0_pair<const M: usize>(w: *const i8, p: usize, rows: &[QuantizedRow; M], scale: impl Fn(usize) -> __m512, acc: &mut [__m512; M], ahead: Option<usize>) {
    if let Some(ahead) = ahead {
        prefetch_to_l2(w.wrapping_add(64 * p).wrapping_add(ahead));
    }
    let offset = _mm512_xor_si512(_mm512_loadu_si512(w.add(64 * p) as *const _), _mm512_set1_epi8(i8::MIN));
    for r in 0..M {
        let xv = _mm512_loadu_si512(rows[r].qs.as_ptr().add(64 * p) as *const _);
        let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), offset, xv);
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale(r), acc[r]);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn dot_row_q8_0_rows<const M: usize>(qs: &[i8], d: &[f16], k: usize, o: usize, rows: &[QuantizedRow], cell: &mut [f32], ahead: Option<usize>) {
    let per_row = k / QK8_0;
    let rows: &[QuantizedRow; M] = rows.try_into().expect("M activation rows");
    let wq = qs.as_ptr().add(o * k);
    let wd = &d[o * per_row..(o + 1) * per_row];
    let mut acc = [_mm512_setzero_ps(); M];
    let grouped = per_row / 16 * 16;
    for b0 in (0..grouped).step_by(16) {
        // [dw * dx] for blocks b0..b0+16, per row
        let w_scales = _mm512_cvtph_ps(_mm256_loadu_si256(wd.as_ptr().add(b0) as *const __m256i));
        let scales: [__m512; M] = std::array::from_fn(|r| _mm512_mul_ps(w_scales, _mm512_loadu_ps(rows[r].d.as_ptr().add(b0))));
        for r in 0..M {
            // - dw * dx * 128 * sum(x) per block, into the lanes every other term is summed with
            // (128 * sum(x) <= 2^19 converts exactly)
            let sums = _mm512_cvtepi16_epi32(_mm256_loadu_si256(rows[r].sub_sums.as_ptr().add(b0) as *const __m256i));
            acc[r] = _mm512_fnmadd_ps(scales[r], _mm512_cvtepi32_ps(_mm512_slli_epi32::<7>(sums)), acc[r]);
        }
        for j in 0..8 {
            let lanes = pair_index(2 * j as i32, 2 * j as i32 + 1);
            q8_0_pair(wq, b0 / 2 + j, rows, |r| _mm512_permutexvar_ps(lanes, scales[r]), &mut acc, ahead);
        }
    }
    let lanes = pair_index(0, 1);
    let paired = per_row / 2 * 2;
    for p in grouped / 2..paired / 2 {
        let wd2 = _mm_cvtph_ps(_mm_cvtsi32_si128((wd.as_ptr().add(2 * p) as *const i32).read_unaligned()));
        q8_0_pair(
            wq,
            p,
            rows,
            |r| {
                let xd2 = _mm_castsi128_ps(_mm_loadl_epi64(rows[r].d.as_ptr().add(2 * p) as *const __m128i));
                _mm512_permutexvar_ps(lanes, _mm512_castps128_ps512(_mm_mul_ps(wd2, xd2)))
            },
            &mut acc,
            ahead,
        );
    }
    for r in 0..M {
        // the leftover pairs' excess in block order, as their scales were formed above
        let leftover: f32 = (grouped..paired).map(|b| wd[b].to_f32() * rows[r].d[b] * rows[r].sub_sums[b] as f32).sum();
        let mut total = _mm512_reduce_add_ps(acc[r]) - 128.0 * leftover;
        if per_row % 2 == 1 {
            let b = per_row - 1;
            let w = std::slice::from_raw_parts(wq.add(b * QK8_0), QK8_0);
            let a = &rows[r].qs[b * QK8_0..][..QK8_0];
            let isum: i32 = w.iter().zip(a).map(|(&p, &q)| p as i32 * q as i32).sum();
            total += wd[b].to_f32() * rows[r].d[b] * isum as f32;
        }
        cell[r] = total;
    }
}

/// Byte-shuffle mask turning the block's eight u8 scales (broadcast to every 64-bit lane) into
/// 32 i16 lanes laid out as `_mm512_packs_epi32` lays out two vectors' i32 lanes: in 128-bit
/// lanes 0 and 1 four i16 of scale `a` then four of `b`, in lanes 2 and 3 four of `c` then four
/// of `d` (high bytes zeroed by 0x80).
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn scale_pack_mask([a, b, c, d]: [u8; 4]) -> __m512i {
    let mut bytes = [0x80u8; 64];
    for (i, byte) in bytes.iter_mut().enumerate().step_by(2) {
        let (lane, word) = (i / 16, i % 16 / 2);
        *byte = match (lane < 2, word < 4) {
            (true, true) => a,
            (true, false) => b,
            (false, true) => c,
            (false, false) => d,
        };
    }
    _mm512_loadu_si512(bytes.as_ptr() as *const _)
}

/// One q4_K super-block ready for any number of activation rows: its four 64-byte nibble vectors
/// (vector v covers sub-blocks (0,2), (1,3), (4,6), (5,7), matching `q4k_lane_order`: i32 lanes
/// 0-7 the first, 8-15 the second) and the 6-bit scales of vectors (0, 1) and (2, 3) as i16
/// lanes in `_mm512_packs_epi32` order.
struct Q4kWeights {
    nibbles: [__m512i; 4],
    scales: [__m512i; 2],
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn q4k_weights(blk: &Q4KBlock, masks: &[__m512i; 2]) -> Q4kWeights {
    let nibble = _mm512_set1_epi8(0x0F);
    let q0 = _mm512_loadu_si512(blk.qs.as_ptr() as *const _);
    let q1 = _mm512_loadu_si512(blk.qs.as_ptr().add(64) as *const _);
    let sc = _mm512_set1_epi64((blk.sc.as_ptr() as *const i64).read_unaligned());
    Q4kWeights {
        nibbles: [
            _mm512_and_si512(q0, nibble),
            _mm512_and_si512(_mm512_srli_epi16::<4>(q0), nibble),
            _mm512_and_si512(q1, nibble),
            _mm512_and_si512(_mm512_srli_epi16::<4>(q1), nibble),
        ],
        scales: [_mm512_shuffle_epi8(sc, masks[0]), _mm512_shuffle_epi8(sc, masks[1])],
    }
}

#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn q4k_scale_masks() -> [__m512i; 2] {
    // vectors 0 and 1 hold sub-blocks 0 and 2, 1 and 3; vectors 2 and 3 hold 4 and 6, 5 and 7
    [scale_pack_mask([0, 1, 2, 3]), scale_pack_mask([4, 5, 6, 7])]
}

/// The 6-bit sub-block scales are applied in the integer domain. `vpdpbusd` sums four
/// nibble x activation products per i32 lane (<= 4*15*127, so it fits an i16); two vectors'
/// sums pack into one of i16 (`vpackssdw`, which does not saturate here) and `vpdpwssd`
/// multiplies each by its scale and accumulates in i32 (<= 8 * 7620 * 63 per lane). Four
/// `vpdpbusd` and two `vpdpwssd` a super-block where `vpmaddubsw` + `vpdpwssd` per vector took
/// eight of the multiply pipe's slots; a super-block costs one int->float conversion per
/// activation row.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn q4k_block_dot(w: &Q4kWeights, a: &[__m512i; 4]) -> __m512i {
    let zero = _mm512_setzero_si512();
    let sums: [__m512i; 4] = [0, 1, 2, 3].map(|v| _mm512_dpbusd_epi32(zero, w.nibbles[v], a[v]));
    let isum = dpwssd(zero, _mm512_packs_epi32(sums[0], sums[1]), w.scales[0]);
    dpwssd(isum, _mm512_packs_epi32(sums[2], sums[3]), w.scales[1])
}

/// `_mm512_dpwssd_epi32` as one `vpdpwssd`. Inline asm because LLVM, tuning for a generic x86-64,
/// rewrites the intrinsic into `vpmaddwd` + `vpaddd` (two vector instructions for one), and the
/// q4_K decode kernel is bound by vector instructions once the memory bandwidth exceeds ~35 GB/s.
#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn dpwssd(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
    let mut acc = acc;
    // Intel syntax: acc += pairwise i16 products of a and b, summed into i32 lanes
    std::arch::asm!("vpdpwssd {acc}, {a}, {b}", acc = inout(zmm_reg) acc, a = in(zmm_reg) a, b = in(zmm_reg) b, options(pure, nomem, nostack));
    acc
}

/// Activations of super-block `s` of `row`, in the kernel's order.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn q4k_activations(row: &QuantizedRow, s: usize) -> [__m512i; 4] {
    let a = row.qs.as_ptr().add(s * QK_K);
    [0, 1, 2, 3].map(|v| _mm512_loadu_si512(a.add(64 * v) as *const _))
}

/// Adds one super-block to a row's accumulators: `d*dx*isum` to `acc`, `dmin*dx*(m_j * sum_j)`
/// over the 8 sub-blocks to `min_acc` (subtracted at the end, `q4k_finish`).
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn q4k_fold(acc: &mut __m512, min_acc: &mut __m128, isum: __m512i, blk: &Q4KBlock, row: &QuantizedRow, s: usize) {
    // [d, dmin] * dx in lanes 0 and 1
    let dx = _mm_set1_ps(*row.d.get_unchecked(s));
    let dm = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128((blk.dm.as_ptr() as *const i32).read_unaligned())), dx);
    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_broadcastss_ps(dm), *acc);
    // eight (min, sub-block sum) i16 pairs -> four i32 lanes; <= 2 * 63 * 4064
    let sums = _mm_loadu_si128(row.sub_sums.as_ptr().add(8 * s) as *const __m128i);
    let mins = _mm_madd_epi16(_mm_cvtepu8_epi16(_mm_loadl_epi64(blk.m.as_ptr() as *const __m128i)), sums);
    *min_acc = _mm_fmadd_ps(_mm_cvtepi32_ps(mins), _mm_shuffle_ps::<0b01_01_01_01>(dm, dm), *min_acc);
}

#[inline]
#[target_feature(enable = "avx512f,avx2")]
unsafe fn q4k_finish(acc: __m512, min_acc: __m128) -> f32 {
    let m = _mm_add_ps(min_acc, _mm_movehl_ps(min_acc, min_acc));
    let m = _mm_add_ss(m, _mm_shuffle_ps::<1>(m, m));
    _mm512_reduce_add_ps(acc) - _mm_cvtss_f32(m)
}

/// q4_K against up to `MAX_ROWS` activation rows, one weight row: the rows past the last full
/// group of four (`dot_group_q4k` takes the rest). Each super-block is unpacked once for all rows.
pub unsafe fn dot_row_q4k(blocks: &[Q4KBlock], k: usize, o: usize, rows: &[QuantizedRow], cell: &mut [f32]) {
    super::for_row_count!(rows.len(), dot_row_q4k_rows, blocks, k, o, rows, cell)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn dot_row_q4k_rows<const M: usize>(blocks: &[Q4KBlock], k: usize, o: usize, rows: &[QuantizedRow], cell: &mut [f32]) {
    let rows: &[QuantizedRow; M] = rows.try_into().expect("M activation rows");
    let masks = q4k_scale_masks();
    let mut acc = [_mm512_setzero_ps(); M];
    let mut min_acc = [_mm_setzero_ps(); M];
    for (s, blk) in q4k_row(blocks, k / QK_K, o) {
        let w = q4k_weights(blk, &masks);
        for r in 0..M {
            let isum = q4k_block_dot(&w, &q4k_activations(&rows[r], s));
            q4k_fold(&mut acc[r], &mut min_acc[r], isum, blk, &rows[r], s);
        }
    }
    for r in 0..M {
        cell[r] = q4k_finish(acc[r], min_acc[r]);
    }
}

/// Activation rows one pass of `dot_group_q4k` takes. One thread, weights in cache (`gemv_bench
/// core`, Zen 4 VM), four rows took 12.9 ns a super-block in one pass, 13.3 in two of two and
/// 13.6-14.9 in passes of three and one.
const GROUP_PASS_ROWS: usize = 4;

/// `dot_row_q4k` for weight rows `o..o+4` (a full interleaved group, `o % 4 == 0`, whose blocks
/// are adjacent in memory) against every activation row: `out[i * m + r]` (`[4, m]`) is row r
/// times weight row `o + i`. Each block is unpacked once a pass for all its rows, each row's
/// activations serve the pass's four weight rows from L1, and the first pass prefetches the
/// stream `ahead` bytes ahead where that pays (`DecodePrefetch`). Rows go in passes of up to
/// `GROUP_PASS_ROWS`; later passes find the group's blocks in cache. Batched decode had taken
/// one weight row at a time with no prefetch: from DRAM 2.5x slower than its in-cache speed
/// (Zen 4 VM).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_group_q4k(blocks: &[Q4KBlock], k: usize, o: usize, rows: &[QuantizedRow], out: &mut [f32], ahead: Option<usize>) {
    let m = rows.len();
    let distance = ahead.unwrap_or(0);
    if m == 1 {
        // decode of one sequence straight to its pass: through the loop below it ran ~6% slower
        // in cache (`gemv_bench core`, alternated in one binary)
        return match ahead {
            Some(_) => group_pass::<1, true>(blocks, k, o, rows, out, |i, _| i, distance),
            None => group_pass::<1, false>(blocks, k, o, rows, out, |i, _| i, distance),
        };
    }
    for first in (0..m).step_by(GROUP_PASS_ROWS) {
        let pass = &rows[first..m.min(first + GROUP_PASS_ROWS)];
        let cells = |i: usize, r: usize| i * m + first + r;
        match (pass.len(), first == 0 && ahead.is_some()) {
            (1, true) => group_pass::<1, true>(blocks, k, o, pass, out, cells, distance),
            (2, true) => group_pass::<2, true>(blocks, k, o, pass, out, cells, distance),
            (3, true) => group_pass::<3, true>(blocks, k, o, pass, out, cells, distance),
            (_, true) => group_pass::<4, true>(blocks, k, o, pass, out, cells, distance),
            (1, false) => group_pass::<1, false>(blocks, k, o, pass, out, cells, distance),
            (2, false) => group_pass::<2, false>(blocks, k, o, pass, out, cells, distance),
            (3, false) => group_pass::<3, false>(blocks, k, o, pass, out, cells, distance),
            (_, false) => group_pass::<4, false>(blocks, k, o, pass, out, cells, distance),
        }
    }
}

/// One pass of `dot_group_q4k` over `M` activation rows. The four blocks' scales are folded
/// together: their `[d, dmin]` pairs in one vector per row, and their eight mins against a row's
/// sub-block sums in one 512-bit product (four lanes a weight row), where `q4k_fold` per block
/// took ~60 of a one-row group's ~150 vector instructions. With `PREFETCH` each group asks
/// for the lines `ahead` bytes past it.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn group_pass<const M: usize, const PREFETCH: bool>(
    blocks: &[Q4KBlock],
    k: usize,
    o: usize,
    rows: &[QuantizedRow],
    out: &mut [f32],
    cell: impl Fn(usize, usize) -> usize,
    ahead: usize,
) {
    let per_row = k / QK_K;
    let rows: &[QuantizedRow; M] = rows.try_into().expect("M activation rows");
    let masks = q4k_scale_masks();
    let mut acc = [[_mm512_setzero_ps(); M]; 4];
    // lanes 4i..4i + 4: weight row i's dmin * dx * (m_j * sum_j) terms, per activation row
    let mut min_acc = [_mm512_setzero_ps(); M];
    // lane 2i of `dm` (d of block i) to every lane, and lanes 2i + 1 (dmin) to lanes 4i..4i + 4
    let d_lane: [__m512i; 4] = std::array::from_fn(|i| _mm512_set1_epi32(2 * i as i32));
    let dmin_lanes = _mm512_setr_epi32(1, 1, 1, 1, 3, 3, 3, 3, 5, 5, 5, 5, 7, 7, 7, 7);
    for s in 0..per_row {
        let group: &[Q4KBlock; 4] = blocks[o * per_row + 4 * s..][..4].try_into().expect("a group of four blocks");
        if PREFETCH {
            prefetch_ahead_of(group, ahead);
        }
        // [d0, dmin0, .., d3, dmin3] * dx, per activation row
        let pair = |i: usize| (group[i].dm.as_ptr() as *const i32).read_unaligned();
        let dm = _mm256_cvtph_ps(_mm_setr_epi32(pair(0), pair(1), pair(2), pair(3)));
        let dm: [__m512; M] = std::array::from_fn(|r| _mm512_castps256_ps512(_mm256_mul_ps(dm, _mm256_set1_ps(*rows[r].d.get_unchecked(s)))));
        for i in 0..4 {
            let w = q4k_weights(&group[i], &masks);
            for r in 0..M {
                let isum = q4k_block_dot(&w, &q4k_activations(&rows[r], s));
                acc[i][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_permutexvar_ps(d_lane[i], dm[r]), acc[i][r]);
            }
        }
        // the four blocks' eight u8 mins as 32 i16, times a row's eight i16 sub-block sums (the
        // same for every block): four i32 lanes a block, <= 2 * 255 * 4064
        let mins = |i: usize| (group[i].m.as_ptr() as *const i64).read_unaligned();
        let mins = _mm512_cvtepu8_epi16(_mm256_setr_epi64x(mins(0), mins(1), mins(2), mins(3)));
        for r in 0..M {
            let sums = _mm512_broadcast_i32x4(_mm_loadu_si128(rows[r].sub_sums.as_ptr().add(8 * s) as *const __m128i));
            let terms = _mm512_cvtepi32_ps(_mm512_madd_epi16(mins, sums));
            min_acc[r] = _mm512_fmadd_ps(terms, _mm512_permutexvar_ps(dmin_lanes, dm[r]), min_acc[r]);
        }
    }
    for r in 0..M {
        let mut mins = [0f32; 16];
        _mm512_storeu_ps(mins.as_mut_ptr(), min_acc[r]);
        for i in 0..4 {
            // summed as `q4k_finish` sums its four lanes, so this kernel and `dot_row_q4k` give
            // bit-identical results
            let m = &mins[4 * i..4 * i + 4];
            out[cell(i, r)] = _mm512_reduce_add_ps(acc[i][r]) - ((m[0] + m[2]) + (m[1] + m[3]));
        }
    }
}
