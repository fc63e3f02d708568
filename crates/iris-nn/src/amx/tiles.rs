//! The AMX tile instructions the GEMM uses, as inline assembly: Rust has no stable AMX
//! intrinsics. Each block declares the tile registers it writes as clobbered; compiled code
//! never uses them, so tile contents survive from one `asm!` block to the next on the same
//! thread (between `configure` and `release` the callers make no other call that could run
//! AMX code, rayon tasks included).
//!
//! Shapes (one configuration for the whole GEMM): every tile is 16 rows of 64 bytes.
//!   tmm0-3  C: 16 x 16 f32 accumulators, a 32 x 32 output block as 2 x 2 tiles;
//!   tmm4-5  A: 16 activation rows x 32 bf16 (one k step);
//!   tmm6-7  B: 16 k pairs x 16 columns x 2 bf16 (the same k step for 16 weight columns).
//! `tdpbf16ps C, A, B` adds `A[m][2p] * B[p][2n] + A[m][2p + 1] * B[p][2n + 1]` over the 16
//! pairs `p` into `C[m][n]`.

use std::arch::asm;

/// The 64-byte `ldtilecfg` operand (palette 1).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    /// Bytes per row of tmm0..tmm15.
    colsb: [u16; 16],
    /// Rows of tmm0..tmm15.
    rows: [u8; 16],
}

/// Bytes per tile row, and rows per tile.
pub(super) const ROW_BYTES: usize = 64;
pub(super) const TILE_ROWS: usize = 16;

/// Loads the GEMM's tile shapes on the calling thread.
///
/// # Safety
/// The CPU must have AMX-TILE and the process permission to use the tile state
/// (`super::available`).
pub(super) unsafe fn configure() {
    let mut cfg = TileConfig { palette: 1, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
    for t in 0..8 {
        cfg.colsb[t] = ROW_BYTES as u16;
        cfg.rows[t] = TILE_ROWS as u8;
    }
    // SAFETY: per the caller's contract; `cfg` is a valid, aligned palette-1 configuration.
    unsafe { asm!("ldtilecfg [{}]", in(reg) &cfg as *const TileConfig, out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _, out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _, options(nostack, readonly, preserves_flags)) };
}

/// Returns the tile state to its initial (unused) state, so context switches stop saving it.
///
/// # Safety
/// As for `configure`.
pub(super) unsafe fn release() {
    // SAFETY: per the caller's contract.
    unsafe { asm!("tilerelease", out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _, out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _, options(nostack, nomem, preserves_flags)) };
}

/// One 32 x 32 output block over `steps` k steps of 32:
/// `C[32 rows][32 cols] (+)= A[32 rows][32 * steps] x B`, with
///   `a`: the first A row, rows `lda` bf16 apart;
///   `b`: a weight panel's first k pair, laid out `[steps * 16 pairs][32 columns]` u32 pairs;
///   `c`: the block's first accumulator, rows `ldc` f32 apart; loaded first when `accumulate`,
///        zero otherwise.
///
/// # Safety
/// `configure` ran on this thread; `a`, `b` and `c` cover the extents above.
#[inline(always)]
pub(super) unsafe fn block_2x2(a: *const u16, lda: usize, b: *const u32, steps: usize, c: *mut f32, ldc: usize, accumulate: bool) {
    let (lda_bytes, ldc_bytes, ldb_bytes) = (lda * 2, ldc * 4, 32usize * 4);
    // SAFETY (all blocks): per the caller's contract; the pointer arithmetic stays inside the
    // extents it guarantees.
    unsafe {
        let (c01, c10, c11) = (c.add(16), c.add(16 * ldc), c.add(16 * ldc + 16));
        if accumulate {
            asm!(
                "tileloadd tmm0, [{c00} + {s}*1]",
                "tileloadd tmm1, [{c01} + {s}*1]",
                "tileloadd tmm2, [{c10} + {s}*1]",
                "tileloadd tmm3, [{c11} + {s}*1]",
                c00 = in(reg) c, c01 = in(reg) c01, c10 = in(reg) c10, c11 = in(reg) c11, s = in(reg) ldc_bytes,
                out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
                options(nostack, readonly, preserves_flags)
            );
        } else {
            asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _, options(nostack, nomem, preserves_flags));
        }
        let a_low = a;
        let a_high = a.add(16 * lda);
        for s in 0..steps {
            // A: 32 bf16 of k step s; B: 16 pair rows of 32 columns each, the high 16 columns
            // 64 bytes into each row
            asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm6, [{b0} + {sb}*1]",
                "tileloadd tmm7, [{b1} + {sb}*1]",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a_low.add(32 * s),
                a1 = in(reg) a_high.add(32 * s),
                b0 = in(reg) b.add(s * 16 * 32),
                b1 = in(reg) b.add(s * 16 * 32 + 16),
                sa = in(reg) lda_bytes,
                sb = in(reg) ldb_bytes,
                out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _, out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
                options(nostack, readonly, preserves_flags)
            );
        }
        asm!(
            "tilestored [{c00} + {s}*1], tmm0",
            "tilestored [{c01} + {s}*1], tmm1",
            "tilestored [{c10} + {s}*1], tmm2",
            "tilestored [{c11} + {s}*1], tmm3",
            c00 = in(reg) c, c01 = in(reg) c01, c10 = in(reg) c10, c11 = in(reg) c11, s = in(reg) ldc_bytes,
            options(nostack, preserves_flags)
        );
    }
}
