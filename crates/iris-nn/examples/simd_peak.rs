//! Arithmetic peak of this CPU's 512-bit units, for reading GEMM numbers against: independent
//! chains of `vpdpbusd` (64 int8 multiply-adds each) and of `vfmadd` (16 f32 multiply-adds),
//! 24 chains so latency cannot limit them, on one thread. On the 2-core Zen 5 VM each retires
//! about one per cycle, i.e. 2 threads x 3.6 G x 64 x 2 = ~930 int8 GOP/s and ~233 f32 GFLOP/s.
//! On the 2-core Intel Xeon VM (AMX) of 2026-12-05: two `vpdpbusd`, `vfmadd` or `vpdpwssd` per
//! cycle (7.5-7.7 G/s), `vdpbf16ps` one every two (1.9 G/s).
//! Then `vpdpbusd` beside other operations: on the Zen 5 VM of 2026-12-06 a `vfmadd` or `vmulps`
//! halves the pair rate (they share its one 512-bit multiply pipe, as do `vpmaddubsw`,
//! `vpmaddwd`, `vpdpwssd` and `vdpbf16ps` in a scratch probe), while `vaddps`, `vcvtdq2ps` and
//! `vpaddd` issue beside it. On the Zen 4 VM (2026-12-06) the same, and the shuffles
//! (`vpackssdw`, `vpermps`, `vpshufb`) in part, at 0.74 of the rate alone; `vpandq` and
//! `vpsrlw` issue beside it.
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
        let (b, s) = (_mm512_set1_epi8(2), _mm512_set1_epi16(3));
        for _ in 0..iterations {
            for chain in acc.iter_mut() {
                // the multiplier input is the chain's own value, so the pair cannot be hoisted
                *chain = _mm512_dpwssd_epi32(*chain, _mm512_maddubs_epi16(*chain, b), s);
            }
        }
        _mm512_reduce_add_epi32(acc.iter().fold(_mm512_setzero_si512(), |s, v| _mm512_add_epi32(s, *v)))
    }

    /// `vpdpbusd` on one half of the chains and `other` on the other half, each chain step
    /// feeding its result back in (nothing hoists): one step per cycle means the two issue
    /// side by side, one every two cycles that they share a pipe.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn dpbusd_beside(iterations: usize, other: Other) -> i32 {
        let mut ints = [_mm512_setzero_si512(); CHAINS / 2];
        let mut floats = [_mm512_set1_ps(1.0); CHAINS / 2];
        let (b, x) = (_mm512_set1_epi8(std::hint::black_box(2)), _mm512_set1_ps(std::hint::black_box(0.999)));
        macro_rules! run {
            ($step:expr) => {
                for _ in 0..iterations {
                    for (i, f) in ints.iter_mut().zip(floats.iter_mut()) {
                        *i = _mm512_dpbusd_epi32(*i, *i, b);
                        *f = $step(*f);
                    }
                }
            };
        }
        match other {
            Other::Fmadd => run!(|f| _mm512_fmadd_ps(f, x, x)),
            Other::Mul => run!(|f| _mm512_mul_ps(f, x)),
            Other::Add => run!(|f| _mm512_add_ps(f, x)),
            Other::Convert => run!(|f: __m512| _mm512_cvtepi32_ps(_mm512_castps_si512(f))),
            Other::IntAdd => run!(|f: __m512| _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(f), b))),
            Other::Pack => run!(|f: __m512| _mm512_castsi512_ps(_mm512_packs_epi32(_mm512_castps_si512(f), b))),
            Other::Permute => run!(|f| _mm512_permutexvar_ps(b, f)),
            Other::ByteShuffle => run!(|f: __m512| _mm512_castsi512_ps(_mm512_shuffle_epi8(_mm512_castps_si512(f), b))),
            Other::And => run!(|f: __m512| _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(f), b))),
            Other::Shift => run!(|f: __m512| _mm512_castsi512_ps(_mm512_srli_epi16::<4>(_mm512_castps_si512(f)))),
        }
        let fs = floats.iter().fold(_mm512_setzero_si512(), |s, v| _mm512_xor_si512(s, _mm512_castps_si512(*v)));
        _mm512_reduce_add_epi32(ints.iter().fold(fs, |s, v| _mm512_add_epi32(s, *v)))
    }

    /// What `dpbusd_beside` puts next to `vpdpbusd`.
    #[derive(Clone, Copy, Debug)]
    pub enum Other {
        Fmadd,
        Mul,
        Add,
        Convert,
        IntAdd,
        Pack,
        Permute,
        ByteShuffle,
        And,
        Shift,
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
    // which 512-bit operations share vpdpbusd's pipe (the int8 GEMM's per-block scale fold is
    // a convert, a multiply and a fused multiply-add)
    use peak::Other;
    let others = [
        Other::Fmadd,
        Other::Mul,
        Other::Add,
        Other::Convert,
        Other::IntAdd,
        Other::Pack,
        Other::Permute,
        Other::ByteShuffle,
        Other::And,
        Other::Shift,
    ];
    for other in others {
        let t = Instant::now();
        // SAFETY: as above.
        let check = unsafe { peak::dpbusd_beside(iterations, other) };
        let steps = (iterations * 12) as f64 / t.elapsed().as_secs_f64() / 1e9;
        println!("vpdpbusd beside {other:?}, one thread: {steps:.2} G pairs/s = {:.2} per vpdpbusd alone (checksum {check})", steps / dp);
    }
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
