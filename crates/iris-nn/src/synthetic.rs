//! Random weights for full-size benchmark models (model hubs are out of reach, and such weights
//! are never committed): a tensor's values follow from its init rule, the seed and its name, so a
//! checkpoint written to disk and one generated in memory are the same model.
//! Initialisation mirrors transformers' `_init_weights`: normal matrices, constant norms/biases.

use rayon::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Normal { std: f32 },
    Constant(f32),
}

/// One tensor of a family's checkpoint layout.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

/// splitmix64: a tiny, fast, well-mixed generator (quality is irrelevant beyond "random-looking").
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Approximately standard normal: Irwin-Hall sum of four 16-bit uniforms, rescaled.
    fn normal(&mut self) -> f32 {
        let r = self.next();
        let s: u32 = (0..4).map(|i| ((r >> (16 * i)) & 0xFFFF) as u32).sum();
        (s as f32 / 65536.0 - 2.0) * 1.732_050_8
    }
}

/// FNV-1a, to give every tensor its own stream.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Values per independently seeded chunk (lets generation run on all cores).
const CHUNK: usize = 1 << 16;

/// The values of tensor `name` under `init` and `seed`.
pub fn generate(name: &str, init: Init, seed: u64, len: usize) -> Vec<f32> {
    let mut out = vec![0f32; len];
    match init {
        Init::Constant(c) => out.fill(c),
        Init::Normal { std } => {
            let base = seed ^ name_hash(name);
            out.par_chunks_mut(CHUNK).enumerate().for_each(|(i, chunk)| {
                let mut rng = Rng(base.wrapping_add((i as u64).wrapping_mul(0xA24B_AED4_963E_E407)));
                for v in chunk {
                    *v = rng.normal() * std;
                }
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_reproducible_and_have_the_asked_spread() {
        let a = generate("w", Init::Normal { std: 0.02 }, 7, 200_000);
        assert_eq!(a, generate("w", Init::Normal { std: 0.02 }, 7, 200_000));
        assert_ne!(a, generate("v", Init::Normal { std: 0.02 }, 7, 200_000));
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        let std = (a.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / a.len() as f32).sqrt();
        assert!(mean.abs() < 1e-3 && (std - 0.02).abs() < 1e-3, "mean {mean} std {std}");
        assert_eq!(generate("b", Init::Constant(1.0), 0, 3), vec![1.0; 3]);
    }
}
