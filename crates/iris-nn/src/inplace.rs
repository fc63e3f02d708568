//! Element-wise steps that overwrite a fresh activation buffer instead of allocating new ones.
//!
//! Why: peak memory. `x * sigmoid(1.702 * x)` on a `[1024, 5120]` f32 vision MLP activation
//! holds four 20 MiB buffers at once; a bias add holds two. Done in place, each holds one. The
//! arithmetic is candle 0.11's own scalar formula for each op (`Affine`, `Sigmoid`, `Silu`,
//! `GeluErf`, binary `Mul`/`Add`), in f32 and, for the activations, in bf16 with the same
//! per-op rounding, so the results are bit-identical to the out-of-place twins the tests compare
//! against (candle runs some of its bf16 ops on one thread).
//!
//! Exception: on AVX-512F and AVX2 CPUs the f32 activations (`quick_gelu`, `silu_mul`, `gelu_erf`)
//! run 16 or 8 lanes at a time (`inplace/avx512.rs`, `inplace/avx2.rs`, with the softmax's Cephes
//! `exp` polynomial): scalar `expf` calls were ~4% of a 448² vision encode and prefill, and
//! CogVLM2's ViT takes 8.9 G erf GELUs per 1344² image. The sigmoids agree with candle's within a
//! few ulp, the erf GELU within 3e-7 of `max(|x|, 1)` (tested), not bit for bit.
//! `IRIS_SCALAR_ACTIVATIONS=1` keeps the scalar formulas, for A/B runs.
//!
//! Every function here takes its input by value and may write into its buffer: pass only a
//! tensor nothing else still reads (a fresh matmul output, not a view of a weight or of a tensor
//! used later). Where the in-place path does not apply (not CPU, not contiguous, another dtype)
//! the out-of-place formula runs instead, with the same result.

use crate::error::Result;
use crate::f32_gemm::Isa;
use candle_core::{CpuStorage, DType, InplaceOp1, InplaceOp2, Layout, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

/// Elements per parallel task. candle runs its element-wise ops across the pool; so must these
/// (a CogVLM2 ViT MLP activation is 141 M values).
const CHUNK: usize = 1 << 16;

/// `f` over `data` in chunks of about `CHUNK` elements, a multiple of `unit` each, in parallel
/// when there is more than one chunk.
fn for_each_chunk<T: Send>(data: &mut [T], unit: usize, f: impl Fn(&mut [T]) + Sync + Send) {
    let chunk = (CHUNK / unit.max(1)).max(1) * unit.max(1);
    if data.len() <= chunk {
        f(data);
    } else {
        data.par_chunks_mut(chunk).for_each(f);
    }
}

fn in_place_ok(x: &Tensor, dtype: DType) -> bool {
    x.device().is_cpu() && x.is_contiguous() && x.dtype() == dtype
}

/// The contiguous slice a layout views in a storage.
fn span(l: &Layout) -> std::ops::Range<usize> {
    l.start_offset()..l.start_offset() + l.shape().elem_count()
}

fn bad_storage(op: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!("{op}: unsupported storage (expected contiguous CPU f32/bf16/f16)"))
}

/// `y + bias` broadcast over rows: `y [.., N]`, `bias [N]` (same dtype).
pub fn add_bias(y: Tensor, bias: &Tensor) -> Result<Tensor> {
    let n = bias.elem_count();
    if in_place_ok(&y, bias.dtype()) && bias.is_contiguous() && y.dims().last() == Some(&n) && n > 0 {
        y.inplace_op2(bias, &AddRowBias)?;
        return Ok(y);
    }
    Ok(y.broadcast_add(bias)?)
}

struct AddRowBias;

fn add_rows<T: Copy + Send + Sync + std::ops::Add<Output = T>>(dst: &mut [T], bias: &[T]) {
    for_each_chunk(dst, bias.len(), |rows| {
        for row in rows.chunks_exact_mut(bias.len()) {
            for (d, &b) in row.iter_mut().zip(bias) {
                *d = *d + b;
            }
        }
    });
}

impl InplaceOp2 for AddRowBias {
    fn name(&self) -> &'static str {
        "add-row-bias"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<()> {
        let (r1, r2) = (span(l1), span(l2));
        match (s1, s2) {
            (CpuStorage::F32(d), CpuStorage::F32(b)) => add_rows(&mut d[r1], &b[r2]),
            (CpuStorage::BF16(d), CpuStorage::BF16(b)) => add_rows::<bf16>(&mut d[r1], &b[r2]),
            (CpuStorage::F16(d), CpuStorage::F16(b)) => add_rows::<f16>(&mut d[r1], &b[r2]),
            _ => return Err(bad_storage(self.name())),
        }
        Ok(())
    }
}

/// Element types an in-place map can run on, with their slice in a CPU storage.
trait MapElement: Sized + Copy + Send + Sync {
    fn values(s: &mut CpuStorage) -> Option<&mut [Self]>;
}

impl MapElement for f32 {
    fn values(s: &mut CpuStorage) -> Option<&mut [Self]> {
        if let CpuStorage::F32(d) = s { Some(d) } else { None }
    }
}

impl MapElement for bf16 {
    fn values(s: &mut CpuStorage) -> Option<&mut [Self]> {
        if let CpuStorage::BF16(d) = s { Some(d) } else { None }
    }
}

/// An element-wise function written over a buffer of `T`.
struct ElementMap<T, F> {
    name: &'static str,
    f: F,
    element: std::marker::PhantomData<fn(T) -> T>,
}

impl<T: MapElement, F: Fn(T) -> T + Sync + Send> InplaceOp1 for ElementMap<T, F> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let Some(d) = T::values(s) else { return Err(bad_storage(self.name)) };
        for_each_chunk(&mut d[span(l)], 1, |c| c.iter_mut().for_each(|v| *v = (self.f)(*v)));
        Ok(())
    }
}

/// A vector kernel over chunks of an f32 buffer (each chunk a multiple of 16 values but the
/// last).
struct ChunkMap<F> {
    name: &'static str,
    f: F,
}

impl<F: Fn(&mut [f32]) + Sync + Send> InplaceOp1 for ChunkMap<F> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let CpuStorage::F32(d) = s else { return Err(bad_storage(self.name)) };
        for_each_chunk(&mut d[span(l)], 16, &self.f);
        Ok(())
    }
}

/// The vector kernels the f32 activations (sigmoids, erf GELU) take: AVX-512F (`avx512.rs`) or
/// AVX2 and FMA (`avx2.rs`), the fastest this CPU runs; none elsewhere or with
/// `IRIS_SCALAR_ACTIVATIONS` set.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn vector_isa() -> Option<Isa> {
    static ISA: std::sync::OnceLock<Option<Isa>> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| if std::env::var_os("IRIS_SCALAR_ACTIVATIONS").is_some() { None } else { Isa::supported().last().copied() })
}

/// `f` over a fresh contiguous CPU `x` of `dtype` in place; `false` (nothing done) otherwise.
fn map_in_place<T: MapElement>(x: &Tensor, dtype: DType, name: &'static str, f: impl Fn(T) -> T + Sync + Send) -> Result<bool> {
    if !in_place_ok(x, dtype) {
        return Ok(false);
    }
    x.inplace_op1(&ElementMap { name, f, element: std::marker::PhantomData })?;
    Ok(true)
}

/// An element-wise activation that a product can apply to its output while each block of it
/// is still in cache (`Linear::forward_activated`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `gelu_erf`
    GeluErf,
    /// `quick_gelu`
    QuickGelu,
}

impl Activation {
    /// The activation over a tensor (`gelu_erf`, `quick_gelu`).
    pub fn apply(self, x: Tensor) -> Result<Tensor> {
        match self {
            Activation::GeluErf => gelu_erf(x),
            Activation::QuickGelu => quick_gelu(x),
        }
    }

    /// The same over f32 values in place, as the tensor functions compute f32 (each 16 or 8
    /// values in vector lanes and a tail by the scalar formula on AVX-512F or AVX2 CPUs, else
    /// the scalar formula).
    pub(crate) fn apply_f32(self, x: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if let Some(isa) = vector_isa() {
            // SAFETY: `Isa::supported()` checked the ISA's features.
            unsafe {
                match (isa, self) {
                    (Isa::Avx512, Activation::GeluErf) => avx512::gelu_erf(x),
                    (Isa::Avx512, Activation::QuickGelu) => avx512::quick_gelu(x),
                    (Isa::Avx2, Activation::GeluErf) => avx2::gelu_erf(x),
                    (Isa::Avx2, Activation::QuickGelu) => avx2::quick_gelu(x),
                }
            }
            return;
        }
        let f = match self {
            Activation::GeluErf => gelu_erf_scalar,
            Activation::QuickGelu => quick_gelu_scalar,
        };
        x.iter_mut().for_each(|v| *v = f(*v));
    }
}

/// What a product does to each output row before writing it: add a bias (`add_bias`'s
/// `y + b`), then an activation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub activation: Option<Activation>,
}

impl Epilogue<'_> {
    /// Columns `first..first + row.len()` of one output row.
    pub(crate) fn apply(&self, row: &mut [f32], first: usize) {
        if let Some(bias) = self.bias {
            row.iter_mut().zip(&bias[first..]).for_each(|(v, &b)| *v += b);
        }
        if let Some(activation) = self.activation {
            activation.apply_f32(row);
        }
    }

    /// Every row of a finished `[rows, n]` output, in parallel.
    pub(crate) fn apply_rows(&self, out: &mut [f32], n: usize) {
        if n > 0 {
            out.par_chunks_mut(n).for_each(|row| self.apply(row, 0));
        }
    }
}

/// QuickGELU `x * sigmoid(1.702 x)`.
pub fn quick_gelu(x: Tensor) -> Result<Tensor> {
    // f32: candle's affine `v * mul + add`, then sigmoid `(exp(-a) + 1).recip()`, then `v * s`
    // (`quick_gelu_scalar`, or its 16-lane twin); on bf16 the same steps in half's bf16 arithmetic, which rounds after each one as candle's
    // bf16 ops (and PyTorch's) do; candle runs its bf16 sigmoid on one thread
    let fb = |v: bf16| {
        use num_traits::Float;
        let a = v * bf16::from_f64(1.702) + bf16::from_f64(0.0);
        v * ((-a).exp() + bf16::ONE).recip()
    };
    if in_place_ok(&x, DType::F32) {
        x.inplace_op1(&ChunkMap { name: "quick-gelu", f: |c: &mut [f32]| Activation::QuickGelu.apply_f32(c) })?;
        return Ok(x);
    }
    if map_in_place(&x, DType::BF16, "quick-gelu-bf16", fb)? {
        return Ok(x);
    }
    Ok((&x * candle_nn::ops::sigmoid(&(&x * 1.702)?)?)?)
}

/// Exact erf GELU (`nn.GELU()` default), candle's `GeluErf` formula.
pub fn gelu_erf(x: Tensor) -> Result<Tensor> {
    if in_place_ok(&x, DType::F32) {
        x.inplace_op1(&ChunkMap { name: "gelu-erf", f: |c: &mut [f32]| Activation::GeluErf.apply_f32(c) })?;
        return Ok(x);
    }
    // candle computes the bf16 op in f64 and rounds once
    let fb = |v: bf16| {
        let w = v.to_f64();
        bf16::from_f64((candle_core::cpu::erf::erf_f64(w * std::f64::consts::FRAC_1_SQRT_2) + 1.) * 0.5 * w)
    };
    if map_in_place(&x, DType::BF16, "gelu-erf-bf16", fb)? {
        return Ok(x);
    }
    Ok(x.gelu_erf()?)
}

/// SwiGLU's `silu(gate) * up`, written into `gate`'s buffer.
pub fn silu_mul(gate: Tensor, up: &Tensor) -> Result<Tensor> {
    let dtype = gate.dtype();
    if matches!(dtype, DType::F32 | DType::BF16) && in_place_ok(&gate, dtype) && up.is_contiguous() && up.dtype() == dtype && up.shape() == gate.shape() {
        gate.inplace_op2(up, &SiluMul)?;
        return Ok(gate);
    }
    Ok((candle_nn::ops::silu(&gate)? * up)?)
}

struct SiluMul;

/// candle's silu `v / (1 + exp(-v))`, then the product.
fn silu_mul_scalar(g: f32, u: f32) -> f32 {
    g / (1.0 + (-g).exp()) * u
}

/// candle's erf GELU for one value.
fn gelu_erf_scalar(v: f32) -> f32 {
    (candle_core::cpu::erf::erf_f32(v * std::f32::consts::FRAC_1_SQRT_2) + 1.) * 0.5 * v
}

/// candle's quick GELU steps for one value (see `quick_gelu`).
fn quick_gelu_scalar(v: f32) -> f32 {
    v * ((-(v * 1.702f32 + 0.0)).exp() + 1.0).recip()
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

/// `g[i] = f(g[i], u[i])`, across the pool for large buffers.
fn zip_in_place<T: Copy + Send + Sync>(g: &mut [T], u: &[T], f: impl Fn(T, T) -> T + Sync + Send) {
    let step = |(g, u): (&mut [T], &[T])| {
        for (g, &u) in g.iter_mut().zip(u) {
            *g = f(*g, u);
        }
    };
    if g.len() <= CHUNK {
        step((g, u));
    } else {
        g.par_chunks_mut(CHUNK).zip(u.par_chunks(CHUNK)).for_each(step);
    }
}

impl InplaceOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<()> {
        match (s1, s2) {
            // candle's silu `v / (1 + exp(-v))`, then the product
            #[cfg(target_arch = "x86_64")]
            (CpuStorage::F32(g), CpuStorage::F32(u)) if vector_isa().is_some() => {
                let (g, u, isa) = (&mut g[span(l1)], &u[span(l2)], vector_isa());
                // SAFETY: `Isa::supported()` checked the ISA's features.
                g.par_chunks_mut(CHUNK).zip(u.par_chunks(CHUNK)).for_each(|(g, u)| unsafe {
                    match isa {
                        Some(Isa::Avx512) => avx512::silu_mul(g, u),
                        _ => avx2::silu_mul(g, u),
                    }
                });
            }
            (CpuStorage::F32(g), CpuStorage::F32(u)) => zip_in_place(&mut g[span(l1)], &u[span(l2)], silu_mul_scalar),
            // the same steps in half's bf16 arithmetic, rounding after each as candle's bf16 ops do
            (CpuStorage::BF16(g), CpuStorage::BF16(u)) => zip_in_place(&mut g[span(l1)], &u[span(l2)], |g, u| {
                use num_traits::Float;
                g / (bf16::ONE + (-g).exp()) * u
            }),
            _ => return Err(bad_storage(self.name())),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn same_bits(a: &Tensor, b: &Tensor) -> bool {
        let (a, b) = (a.to_dtype(DType::F32).unwrap(), b.to_dtype(DType::F32).unwrap());
        let (a, b) = (a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits() || (*x == 0.0 && *y == 0.0))
    }

    /// `a * b`, or `a + b` with `add` (`b` broadcast to `a`'s shape). For bf16 and f16 each value
    /// is rounded once to the nearest, as PyTorch's half-precision ops (and `half`) round: candle's
    /// own bf16 binary ops truncate on aarch64 (its NEON `vec_store` keeps an f32's top 16 bits;
    /// under qemu 1.84375 x 0.95703125 gave 1.7578125 where the nearest is 1.765625), so the
    /// references below multiply and add in `half`. On x86 the two agree.
    fn reference_binary(a: &Tensor, b: &Tensor, add: bool) -> Tensor {
        fn zip<T: candle_core::WithDType + std::ops::Add<Output = T> + std::ops::Mul<Output = T>>(a: &Tensor, b: &Tensor, add: bool) -> Tensor {
            let b = b.broadcast_as(a.shape()).unwrap().contiguous().unwrap();
            let (x, y): (Vec<T>, Vec<T>) = (a.flatten_all().unwrap().to_vec1().unwrap(), b.flatten_all().unwrap().to_vec1().unwrap());
            let out: Vec<T> = x.iter().zip(&y).map(|(&p, &q)| if add { p + q } else { p * q }).collect();
            Tensor::from_vec(out, a.shape(), a.device()).unwrap()
        }
        match a.dtype() {
            DType::BF16 => zip::<bf16>(a, b, add),
            DType::F16 => zip::<half::f16>(a, b, add),
            _ if add => a.broadcast_add(b).unwrap(),
            _ => a.broadcast_mul(b).unwrap(),
        }
    }

    fn input(dtype: DType) -> Tensor {
        // a wide range: saturating sigmoid tails, zeros, negatives
        (Tensor::randn(0f32, 4.0, (7, 33), &Device::Cpu).unwrap()).to_dtype(dtype).unwrap()
    }

    #[test]
    fn buffers_split_across_the_pool_give_the_same_results() {
        // 3.5 parallel chunks, rows of 1000 not dividing the chunk size
        let x = Tensor::randn(0f32, 4.0, (229, 1000), &Device::Cpu).unwrap();
        let slow = (&x * candle_nn::ops::sigmoid(&(&x * 1.702).unwrap()).unwrap()).unwrap();
        assert!(same_bits_or_vector_ulps(&quick_gelu(x.copy().unwrap()).unwrap(), &slow), "quick_gelu");
        let xb = x.to_dtype(DType::BF16).unwrap();
        let slow = reference_binary(&xb, &candle_nn::ops::sigmoid(&(&xb * 1.702).unwrap()).unwrap(), false);
        assert!(same_bits(&quick_gelu(xb.copy().unwrap()).unwrap(), &slow), "quick_gelu bf16");
        assert!(same_bits(&gelu_erf(xb.copy().unwrap()).unwrap(), &xb.gelu_erf().unwrap()), "gelu_erf bf16");
        assert!(same_bits_or_erf_tolerance(&gelu_erf(x.copy().unwrap()).unwrap(), &x.gelu_erf().unwrap(), &x), "gelu_erf");
        let u = Tensor::randn(0f32, 4.0, (229, 1000), &Device::Cpu).unwrap();
        let slow = (candle_nn::ops::silu(&x).unwrap() * &u).unwrap();
        assert!(same_bits_or_vector_ulps(&silu_mul(x.copy().unwrap(), &u).unwrap(), &slow), "silu_mul");
        let b = Tensor::randn(0f32, 1.0, 1000, &Device::Cpu).unwrap();
        assert!(same_bits(&add_bias(x.copy().unwrap(), &b).unwrap(), &x.broadcast_add(&b).unwrap()), "add_bias");
    }

    /// Bit-identical, or for f32 through the vector sigmoids within 4 ulp (of the value, or of
    /// 1e-20 near zero).
    fn same_bits_or_vector_ulps(a: &Tensor, b: &Tensor) -> bool {
        if !(a.dtype() == DType::F32 && vector_isa().is_some()) {
            return same_bits(a, b);
        }
        let (a, b): (Vec<f32>, Vec<f32>) = (a.flatten_all().unwrap().to_vec1().unwrap(), b.flatten_all().unwrap().to_vec1().unwrap());
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs() / (y.abs().max(1e-20) * f32::EPSILON)).fold(0f32, f32::max);
        println!("{:?} sigmoid: {worst:.2} ulp from candle's scalar formula", vector_isa());
        a.len() == b.len() && worst <= 4.0
    }

    /// Bit-identical, or for f32 through the vector erf GELU within 3e-7 of `max(|x|, 1)`.
    fn same_bits_or_erf_tolerance(a: &Tensor, b: &Tensor, x: &Tensor) -> bool {
        if !(a.dtype() == DType::F32 && vector_isa().is_some()) {
            return same_bits(a, b);
        }
        let values = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        let (a, b, x) = (values(a), values(b), values(x));
        let worst = a.iter().zip(&b).zip(&x).map(|((p, q), v)| (p - q).abs() / v.abs().max(1.0)).fold(0f32, f32::max);
        println!("{:?} erf GELU: {worst:.2e} of max(|x|, 1) from candle's", vector_isa());
        worst <= 3e-7
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn vector_activations_match_the_scalar_formulas_over_the_whole_range() {
        if Isa::supported().is_empty() {
            println!("SKIPPED: neither AVX-512F nor AVX2 (the scalar formulas run)");
        }
        // from deep in the saturated negative tail (exp underflow) to large positive values
        let x: Vec<f32> = (0..20_001).map(|i| (i as f32 - 10_000.0) * 0.01).chain([-1e4, -88.0, -87.0, 0.0, -0.0, 87.0, 1e4]).collect();
        let u: Vec<f32> = x.iter().map(|v| 0.5 - v * 0.01).collect();
        for isa in Isa::supported() {
            let (mut fast, mut g, mut erf_gelu) = (x.clone(), x.clone(), x.clone());
            // SAFETY: `Isa::supported()` checked the ISA's features.
            unsafe {
                match isa {
                    Isa::Avx512 => (avx512::quick_gelu(&mut fast), avx512::silu_mul(&mut g, &u), avx512::gelu_erf(&mut erf_gelu)),
                    Isa::Avx2 => (avx2::quick_gelu(&mut fast), avx2::silu_mul(&mut g, &u), avx2::gelu_erf(&mut erf_gelu)),
                };
            }
            // relative to the value, or to 1e-20 in the underflowing tails (the polynomial
            // flushes exp below -87.3 to 0; the scalar formula leaves ~1e-36)
            let ulps = |got: f32, want: f32| (got - want).abs() / (want.abs().max(1e-20) * f32::EPSILON);
            let gelu = x.iter().zip(&fast).map(|(&v, &f)| ulps(f, quick_gelu_scalar(v))).fold(0f32, f32::max);
            let silu = x.iter().zip(&u).zip(&g).map(|((&v, &w), &f)| ulps(f, silu_mul_scalar(v, w))).fold(0f32, f32::max);
            println!("{isa:?} quick_gelu {gelu:.2} ulp, silu_mul {silu:.2} ulp from the scalar formulas");
            assert!(gelu <= 4.0 && silu <= 4.0, "{isa:?}: {gelu} / {silu} ulp");
            // A&S 7.1.26's 1.5e-7 on erf, times 0.5 |x|, plus rounding
            let worst = x.iter().zip(&erf_gelu).map(|(&v, &f)| (f - gelu_erf_scalar(v)).abs() / v.abs().max(1.0)).fold(0f32, f32::max);
            println!("{isa:?} gelu_erf: max |error| {worst:.2e} of max(|x|, 1) from candle's erf formula");
            assert!(worst <= 3e-7, "{isa:?} gelu_erf {worst:e}");
        }
    }

    #[test]
    fn in_place_steps_equal_candle_ops() {
        // bf16 in place keeps the reference's per-op rounding (candle's on x86)
        for dtype in [DType::F32, DType::BF16] {
            let x = input(dtype);
            let slow = reference_binary(&x, &candle_nn::ops::sigmoid(&(&x * 1.702).unwrap()).unwrap(), false);
            assert!(same_bits_or_vector_ulps(&quick_gelu(x.copy().unwrap()).unwrap(), &slow), "quick_gelu {dtype:?}");
        }
        let x = input(DType::F32);
        assert!(same_bits_or_erf_tolerance(&gelu_erf(x.copy().unwrap()).unwrap(), &x.gelu_erf().unwrap(), &x), "gelu_erf");

        for dtype in [DType::F32, DType::BF16] {
            let (g, u) = (input(dtype), input(dtype));
            let slow = reference_binary(&candle_nn::ops::silu(&g).unwrap(), &u, false);
            assert!(same_bits_or_vector_ulps(&silu_mul(g.copy().unwrap(), &u).unwrap(), &slow), "silu_mul {dtype:?}");
            assert!(same_bits_or_erf_tolerance(&gelu_erf(g.copy().unwrap()).unwrap(), &g.gelu_erf().unwrap(), &g), "gelu_erf {dtype:?}");
        }

        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let y = input(dtype);
            let b = Tensor::randn(0f32, 1.0, 33, &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let slow = reference_binary(&y, &b, true);
            assert!(same_bits(&add_bias(y.copy().unwrap(), &b).unwrap(), &slow), "add_bias {dtype:?}");
        }
    }

    #[test]
    fn views_and_other_dtypes_take_the_out_of_place_path() {
        // a transposed (non-contiguous) input must not be written through its strides
        let x = input(DType::F32);
        let before = x.copy().unwrap();
        let t = x.t().unwrap();
        let out = quick_gelu(t.clone()).unwrap();
        let slow = (&t * candle_nn::ops::sigmoid(&(&t * 1.702).unwrap()).unwrap()).unwrap();
        assert!(same_bits(&out, &slow));
        assert!(same_bits(&x, &before), "the viewed buffer was left alone");
        // f16 has no in-place path
        let xh = input(DType::F16);
        let slow = (&xh * candle_nn::ops::sigmoid(&(&xh * 1.702).unwrap()).unwrap()).unwrap();
        assert!(same_bits(&quick_gelu(xh).unwrap(), &slow));
    }

    #[test]
    fn a_narrowed_buffer_is_written_only_in_its_window() {
        // a contiguous narrow of a larger buffer starts at an offset: only its rows change
        let y = input(DType::F32);
        let before = y.copy().unwrap();
        let rows = y.narrow(0, 2, 3).unwrap();
        let b = Tensor::ones(33, DType::F32, &Device::Cpu).unwrap();
        let out = add_bias(rows, &b).unwrap();
        assert!(same_bits(&out, &(before.narrow(0, 2, 3).unwrap() + 1.0).unwrap()));
        assert!(same_bits(&y.narrow(0, 0, 2).unwrap(), &before.narrow(0, 0, 2).unwrap()));
        assert!(same_bits(&y.narrow(0, 5, 2).unwrap(), &before.narrow(0, 5, 2).unwrap()));
    }
}
