//! How the weights are stored when the user leaves it to us (`--quant auto`): dense in the
//! compute dtype when that fits in memory, else q8_0, else a q4_K language model with a q8_0
//! vision tower. The vision tower defaults to q8_0 under a q4_K language model: it is
//! compute-bound, so 4-bit weights would save little time and cost accuracy.

use crate::error::{EngineError, Result};
use candle_core::DType;
use iris_nn::WeightFormat;
use std::path::Path;

/// Share of available memory the weights may take (the rest is KV cache, activations, OS).
const MEMORY_SHARE: f64 = 0.8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatChoice {
    Auto,
    Fixed(WeightFormat),
}

impl std::str::FromStr for FormatChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Self::Auto);
        }
        s.parse().map(Self::Fixed).map_err(|e: String| format!("{e}, or auto"))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct WeightPlan {
    pub language: Option<WeightFormat>,
    pub vision: Option<WeightFormat>,
    /// One line saying what was chosen and why (for logs and `iris bench`).
    pub summary: String,
}

/// Bytes the kernel says can be allocated without swapping (`MemAvailable`), if known.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resolves the user's choices for a model of `params` values computing in `dtype`.
pub fn plan(params: usize, dtype: DType, language: FormatChoice, vision: Option<WeightFormat>, available: Option<u64>) -> WeightPlan {
    let gb = |bytes: f64| bytes / 1e9;
    let (language, why) = match language {
        FormatChoice::Fixed(f) => (Some(f), format!("--quant {f}")),
        FormatChoice::Auto => {
            let budget = available.map(|a| a as f64 * MEMORY_SHARE);
            let dense = params as f64 * dtype.size_in_bytes() as f64;
            let q8 = params as f64 * WeightFormat::Q8_0.bytes_per_weight();
            match budget {
                Some(b) if dense > b && q8 > b => (Some(WeightFormat::Q4K), format!("auto: {:.1} GB dense and {:.1} GB q8_0 exceed {:.1} GB", gb(dense), gb(q8), gb(b))),
                Some(b) if dense > b => (Some(WeightFormat::Q8_0), format!("auto: {:.1} GB dense exceeds {:.1} GB", gb(dense), gb(b))),
                _ => (None, format!("auto: {:.1} GB dense fits", gb(dense))),
            }
        }
    };
    let dense_name = format!("dense {dtype:?}").to_lowercase();
    let vision = vision.or(match language {
        Some(WeightFormat::Q4K) => Some(WeightFormat::Q8_0),
        other => other,
    });
    let name = |f: Option<WeightFormat>| f.map(|f| f.to_string()).unwrap_or_else(|| dense_name.clone());
    let summary = format!("weights: language {}, vision {} ({why})", name(language), name(vision));
    WeightPlan { language, vision, summary }
}

/// `plan` for the checkpoint in `dir`, counting its parameters from the safetensors headers.
pub fn plan_for_checkpoint(dir: &Path, dtype: DType, language: FormatChoice, vision: Option<WeightFormat>) -> Result<WeightPlan> {
    if language != FormatChoice::Auto {
        return Ok(plan(0, dtype, language, vision, None));
    }
    let store = iris_nn::WeightStore::open(dir, &|n: &str| n.to_string(), &candle_core::Device::Cpu)
        .map_err(|e| EngineError::File { path: dir.display().to_string(), message: e.to_string() })?;
    Ok(plan(store.total_elements(), dtype, language, vision, available_memory()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_steps_down_as_memory_shrinks() {
        let gib = 1u64 << 30;
        // 19.5 B parameters (CogVLM2) with 24 GiB: neither f32 nor q8_0 fits
        let p = plan(19_500_000_000, DType::F32, FormatChoice::Auto, None, Some(24 * gib));
        assert_eq!((p.language, p.vision), (Some(WeightFormat::Q4K), Some(WeightFormat::Q8_0)), "{}", p.summary);
        // 2.2 B (Qwen2-VL-2B) in f32 needs 8.8 GB: fits in 24 GiB, not in 8
        assert_eq!(plan(2_200_000_000, DType::F32, FormatChoice::Auto, None, Some(24 * gib)).language, None);
        assert_eq!(plan(2_200_000_000, DType::F32, FormatChoice::Auto, None, Some(8 * gib)).language, Some(WeightFormat::Q8_0));
        // unknown memory: stay dense
        assert_eq!(plan(19_500_000_000, DType::F32, FormatChoice::Auto, None, None).language, None);
    }

    #[test]
    fn explicit_choices_win_and_vision_follows() {
        let p = plan(0, DType::F32, FormatChoice::Fixed(WeightFormat::Q8_0), None, None);
        assert_eq!((p.language, p.vision), (Some(WeightFormat::Q8_0), Some(WeightFormat::Q8_0)));
        let p = plan(0, DType::F32, FormatChoice::Fixed(WeightFormat::Q4K), Some(WeightFormat::F16), None);
        assert_eq!((p.language, p.vision), (Some(WeightFormat::Q4K), Some(WeightFormat::F16)));
        assert!(p.summary.contains("language q4k, vision f16"), "{}", p.summary);
        assert_eq!("auto".parse::<FormatChoice>().unwrap(), FormatChoice::Auto);
        assert!("q5".parse::<FormatChoice>().unwrap_err().contains("or auto"));
    }
}
