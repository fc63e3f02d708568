//! The one place that names model families: picks a family from `config.json` and loads it.
//! Adding a family adds one entry here.

use crate::api::{SyntheticPreset, VisionLanguageModel};
use crate::config_util::read_json;
use crate::error::{ModelError, Result};
use candle_core::{DType, Device};
use iris_nn::WeightFormat;
use std::path::Path;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Compute precision of activations (and of weights left dense).
    pub dtype: DType,
    pub device: Device,
    /// Storage of the language model's linear weights (None: dense in `dtype`).
    pub language_format: Option<WeightFormat>,
    /// Storage of the vision tower's linear weights (None: dense in `dtype`).
    pub vision_format: Option<WeightFormat>,
    /// Generate random weights of the config's architecture in memory with this seed instead of
    /// reading weight files (`iris bench --synthetic`).
    pub synthetic_seed: Option<u64>,
    /// Directory that keeps quantized weights between loads (None: quantize on every load).
    pub quant_cache: Option<std::path::PathBuf>,
    /// Storage of the KV cache (None: `dtype`). f16 halves the cache's memory and the bytes a
    /// decode step reads from it; each K and V value is rounded once, when it is stored.
    pub kv_dtype: Option<DType>,
}

impl LoadOptions {
    /// Dense weights in `dtype` on `device`.
    pub fn new(dtype: DType, device: Device) -> Self {
        Self { dtype, device, language_format: None, vision_format: None, synthetic_seed: None, quant_cache: None, kv_dtype: None }
    }

    /// What the KV cache is stored as.
    pub fn kv_storage(&self) -> DType {
        self.kv_dtype.unwrap_or(self.dtype)
    }
}

struct Family {
    architectures: &'static [&'static str],
    model_types: &'static [&'static str],
    load: fn(&Path, &LoadOptions) -> Result<Box<dyn VisionLanguageModel>>,
    presets: fn() -> Vec<SyntheticPreset>,
}

const FAMILIES: &[Family] = &[
    Family {
        architectures: crate::qwen2_vl::ARCHITECTURES,
        model_types: crate::qwen2_vl::MODEL_TYPES,
        load: |dir, opts| Ok(Box::new(crate::qwen2_vl::Qwen2Vl::load(dir, opts)?)),
        presets: crate::qwen2_vl::synthetic::synthetic_presets,
    },
    Family {
        architectures: crate::cogvlm2::ARCHITECTURES,
        model_types: crate::cogvlm2::MODEL_TYPES,
        load: |dir, opts| Ok(Box::new(crate::cogvlm2::CogVlm2::load(dir, opts)?)),
        presets: crate::cogvlm2::synthetic::synthetic_presets,
    },
];

/// Real-architecture presets of every family (`qwen2-vl-2b`, ...), for random checkpoints.
pub fn synthetic_presets() -> Vec<SyntheticPreset> {
    FAMILIES.iter().flat_map(|f| (f.presets)()).collect()
}

fn find_family(dir: &Path) -> Result<&'static Family> {
    let path = dir.join("config.json");
    let cfg = read_json(&path)?;
    let strings = |v: Option<&serde_json::Value>| -> Vec<String> {
        match v {
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            _ => vec![],
        }
    };
    let mut archs = strings(cfg.get("architectures"));
    archs.extend(strings(cfg.get("text_config").and_then(|t| t.get("architectures"))));
    let model_type = cfg.get("model_type").and_then(|m| m.as_str()).unwrap_or("");
    FAMILIES
        .iter()
        .find(|f| archs.iter().any(|a| f.architectures.contains(&a.as_str())))
        .or_else(|| FAMILIES.iter().find(|f| f.model_types.contains(&model_type)))
        .ok_or_else(|| ModelError::Config {
            path: path.display().to_string(),
            message: format!(
                "unsupported model: architectures {archs:?}, model_type `{model_type}` (supported: {})",
                FAMILIES.iter().flat_map(|f| f.architectures.iter().copied()).collect::<Vec<_>>().join(", ")
            ),
        })
}

pub fn load_model(dir: &Path, opts: &LoadOptions) -> Result<Box<dyn VisionLanguageModel>> {
    let family = find_family(dir)?;
    (family.load)(dir, opts)
}
