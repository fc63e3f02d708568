//! aarch64 twins of the integer decode kernels in `kernels/mod.rs`, for Arm laptops and servers
//! (Apple M1 and later, Graviton 2 and later, Cortex-A76 and later): `sdot` (the Armv8.2 dot
//! product) multiplies 16 signed bytes by 16 and adds each run of four into an i32 lane, where
//! the portable twin leaves LLVM to widen byte by byte (and cannot vectorise q4_K's nibble
//! order at all). Selected where the CPU reports `dotprod`; tested against the scalar twin.
//! Timings: none yet, no Arm machine was at hand (BENCHMARKS.md).

// `MAX_ROWS` for `for_row_count!`'s message
use super::{q4k_row, Q4KBlock, QuantizedRow, MAX_ROWS};
use candle_core::quantized::k_quants::{QK8_0, QK_K};
use half::f16;
use std::arch::aarch64::*;

/// `acc + a . b` per four bytes, as one `sdot`. Inline asm because Rust's `vdotq_s32` is not
/// stable yet.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    std::arch::asm!("sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b", acc = inout(vreg) acc, a = in(vreg) a, b = in(vreg) b, options(pure, nomem, nostack));
    acc
}

/// The dot product of 32 weight bytes (`w0`, `w1`) with the 32 activation bytes at `x`.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn dot32(w0: int8x16_t, w1: int8x16_t, x: *const i8) -> int32x4_t {
    sdot(sdot(vdupq_n_s32(0), w0, vld1q_s8(x)), w1, vld1q_s8(x.add(16)))
}

/// q8_0 x q8_0 for up to `MAX_ROWS` activation rows: each 32-byte weight block is loaded once
/// for all rows; per block and row one `sdot` pair, one conversion and one multiply-add.
pub unsafe fn dot_row_q8_0(qs: &[i8], d: &[f16], k: usize, o: usize, rows: &[QuantizedRow], cell: &mut [f32]) {
    super::for_row_count!(rows.len(), dot_row_q8_0_rows, qs, d, k, o, rows, cell)
}

#[target_feature(enable = "neon,dotprod")]
unsafe fn dot_row_q8_0_rows<const M: usize>(qs: &[i8], d: &[f16], k: usize, o: usize, rows: &[QuantizedRow], cell: &mut [f32]) {
    let per_row = k / QK8_0;
    let rows: &[QuantizedRow; M] = rows.try_into().expect("M activation rows");
    let w = qs[o * k..][..per_row * QK8_0].as_ptr();
    let wd = &d[o * per_row..(o + 1) * per_row];
    let mut acc = [vdupq_n_f32(0.0); M];
    for (b, dw) in wd.iter().enumerate() {
        let (w0, w1) = (vld1q_s8(w.add(b * QK8_0)), vld1q_s8(w.add(b * QK8_0 + 16)));
        let dw = dw.to_f32();
        for (acc, row) in acc.iter_mut().zip(rows) {
            let isum = dot32(w0, w1, row.qs[b * QK8_0..][..QK8_0].as_ptr());
            *acc = vfmaq_n_f32(*acc, vcvtq_f32_s32(isum), dw * row.d[b]);
        }
    }
    for (c, acc) in cell.iter_mut().zip(acc) {
        *c = vaddvq_f32(acc);
    }
}

/// q4_K for up to `MAX_ROWS` activation rows. Each 64-value group of a super-block is two
/// 16-byte loads whose low nibbles are sub-block `2g` and high nibbles sub-block `2g + 1`; the
/// activations sit in the kernels' order (`q4k_lane_order`), where both runs are contiguous. The
/// 6-bit sub-block scales are applied in the integer domain (`mla`: <= 8 * 32 * 15 * 127 * 63 <
/// 2^25 per lane), so a super-block costs one conversion per row; mins use the activations'
/// integer sub-block sums.
pub unsafe fn dot_row_q4k(blocks: &[Q4KBlock], k: usize, o: usize, rows: &[QuantizedRow], cell: &mut [f32]) {
    super::for_row_count!(rows.len(), dot_row_q4k_rows, blocks, k, o, rows, cell)
}

#[target_feature(enable = "neon,dotprod")]
unsafe fn dot_row_q4k_rows<const M: usize>(blocks: &[Q4KBlock], k: usize, o: usize, rows: &[QuantizedRow], cell: &mut [f32]) {
    let rows: &[QuantizedRow; M] = rows.try_into().expect("M activation rows");
    let nibble = vdupq_n_u8(0x0F);
    let mut acc = [vdupq_n_f32(0.0); M];
    let mut min_acc = [0f32; M];
    for (s, blk) in q4k_row(blocks, k / QK_K, o) {
        let mut isum = [vdupq_n_s32(0); M];
        for g in 0..4 {
            let (q0, q1) = (vld1q_u8(blk.qs.as_ptr().add(32 * g)), vld1q_u8(blk.qs.as_ptr().add(32 * g + 16)));
            let lo = [q0, q1].map(|q| vreinterpretq_s8_u8(vandq_u8(q, nibble)));
            let hi = [q0, q1].map(|q| vreinterpretq_s8_u8(vshrq_n_u8::<4>(q)));
            let (sc_lo, sc_hi) = (blk.sc[2 * g] as i32, blk.sc[2 * g + 1] as i32);
            // `q4k_lane_order` of values 64g.. (low nibbles) and 64g + 32.. (high)
            let at_lo = (g / 2) * 128 + (g % 2) * 32;
            for (isum, row) in isum.iter_mut().zip(rows) {
                let a = row.qs[s * QK_K..][..QK_K].as_ptr();
                let (d_lo, d_hi) = (dot32(lo[0], lo[1], a.add(at_lo)), dot32(hi[0], hi[1], a.add(at_lo + 64)));
                *isum = vmlaq_n_s32(vmlaq_n_s32(*isum, d_lo, sc_lo), d_hi, sc_hi);
            }
        }
        let (d, dmin) = (blk.dm[0].to_f32(), blk.dm[1].to_f32());
        let m = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(blk.m.as_ptr())));
        for (r, row) in rows.iter().enumerate() {
            let dx = row.d[s];
            acc[r] = vfmaq_n_f32(acc[r], vcvtq_f32_s32(isum[r]), d * dx);
            // eight (min, sub-block sum) products, each <= 255 * 4064
            let sums = vld1q_s16(row.sub_sums[8 * s..][..8].as_ptr());
            let mins = vaddq_s32(vmull_s16(vget_low_s16(m), vget_low_s16(sums)), vmull_high_s16(m, sums));
            min_acc[r] += dmin * dx * vaddvq_s32(mins) as f32;
        }
    }
    for ((c, acc), min) in cell.iter_mut().zip(acc).zip(min_acc) {
        *c = vaddvq_f32(acc) - min;
    }
}
