//! Arithmetic peak of this CPU's 512-bit units, for reading GEMM numbers against: independent
//! chains of `vpdpbusd` (64 int8 multiply-adds each) and of `vfmadd` (16 f32 multiply-adds),
//! 24 chains so latency cannot limit them, on one thread. On the 2-core Zen 5 VM each retires
//! about one per cycle, i.e. 2 threads x 3.6 G x 64 x 2 = ~930 int8 GOP/s and ~233 f32 GFLOP/s.
//! On the 2-core Intel Xeon VM (AMX) of 2026-12-05: two `vpdpbusd`, `vfmadd` or `vpdpwssd` per
//! cycle (7.5-7.7 G/s), `vdpbf16ps` one every two (1.9 G/s).
//! `cargo run --release -p iris-nn --example simd_peak`

#[cfg(target_arch = "x86_64")]
mod peak {
    use std::arch::x86_64::*;

    const CHAINS: usize = 24;

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn dpbusd(iterations: usize) -> i32 {
        let mut acc = [_mm512_setzero_si512(); CHAINS];
        let (a, b) = (_mm512_set1_epi8(1), _mm512_set1_epi8(2));
        for _ in 0..iterations {
            for chain in acc.iter_mut() {
                *chain = _mm512_dpbusd_epi32(*chain, a, b);
            }
        }
        _mm512_reduce_add_epi32(acc.iter().fold(_mm512_setzero_si512(), |s, v| _mm512_add_epi32(s, *v)))
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn dpbf16(iterations: usize) -> f32 {
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        let a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.001), _mm512_set1_ps(0.002));
        for _ in 0..iterations {
            for chain in acc.iter_mut() {
                *chain = _mm512_dpbf16_ps(*chain, a, a);
            }
        }
        _mm512_reduce_add_ps(acc.iter().fold(_mm512_setzero_ps(), |s, v| _mm512_add_ps(s, *v)))
    }

    /// `vpmaddubsw` then `vpdpwssd`, the q4_K decode kernel's pair (its scales applied in the
    /// integer domain): one of each per chain step.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn maddubs_dpwssd(iterations: usize) -> i32 {
        let mut acc = [_mm512_setzero_si512(); CHAINS];
        let (a, b, s) = (_mm512_set1_epi8(1), _mm512_set1_epi8(2), _mm512_set1_epi16(3));
        for _ in 0..iterations {
            for chain in acc.iter_mut() {
                *chain = _mm512_dpwssd_epi32(*chain, _mm512_maddubs_epi16(a, b), s);
            }
        }
        _mm512_reduce_add_epi32(acc.iter().fold(_mm512_setzero_si512(), |s, v| _mm512_add_epi32(s, *v)))
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn fmadd(iterations: usize) -> f32 {
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        let (a, b) = (_mm512_set1_ps(0.999), _mm512_set1_ps(0.001));
        for _ in 0..iterations {
            for chain in acc.iter_mut() {
                *chain = _mm512_fmadd_ps(*chain, a, b);
            }
        }
        _mm512_reduce_add_ps(acc.iter().fold(_mm512_setzero_ps(), |s, v| _mm512_add_ps(s, *v)))
    }
}

#[cfg(target_arch = "x86_64")]
fn main() {
    use std::time::Instant;
    if !(std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw") && std::is_x86_feature_detected!("avx512vnni")) {
        println!("this CPU lacks AVX512F/BW/VNNI");
        return;
    }
    let iterations = 50_000_000;
    let per_second = |seconds: f64| (iterations * 24) as f64 / seconds / 1e9;
    let t = Instant::now();
    // SAFETY: the features were just detected.
    let check = unsafe { peak::dpbusd(iterations) };
    let dp = per_second(t.elapsed().as_secs_f64());
    println!("vpdpbusd zmm, one thread: {dp:.2} G/s = {:.0} int8 GOP/s (checksum {check})", dp * 128.0);
    let t = Instant::now();
    // SAFETY: as above.
    let check = unsafe { peak::fmadd(iterations) };
    let fma = per_second(t.elapsed().as_secs_f64());
    println!("vfmadd zmm f32, one thread: {fma:.2} G/s = {:.0} GFLOP/s (checksum {check})", fma * 32.0);
    let t = Instant::now();
    // SAFETY: as above.
    let check = unsafe { peak::maddubs_dpwssd(iterations) };
    let pair = per_second(t.elapsed().as_secs_f64());
    println!("vpmaddubsw + vpdpwssd zmm, one thread: {pair:.2} G pairs/s (checksum {check})");
    if std::is_x86_feature_detected!("avx512bf16") {
        let t = Instant::now();
        // SAFETY: the feature was just detected.
        let check = unsafe { peak::dpbf16(iterations) };
        let bf = per_second(t.elapsed().as_secs_f64());
        println!("vdpbf16ps zmm, one thread: {bf:.2} G/s = {:.0} GFLOP/s (checksum {check})", bf * 64.0);
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("x86-64 only");
}
