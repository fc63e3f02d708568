//! `generation_config.json`: sampling defaults and EOS ids (transformers `GenerationConfig`).

use crate::error::Result;
use crate::sampler::SamplingParams;
use serde_json::Value;
use std::path::Path;

#[derive(Debug, Clone, Default)]
pub struct GenerationDefaults {
    pub eos_token_ids: Vec<u32>,
    pub do_sample: bool,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub max_new_tokens: Option<usize>,
}

fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_u64().map(|x| x as u32)).collect(),
        _ => vec![],
    }
}

impl GenerationDefaults {
    /// Reads `generation_config.json`, falling back to `config.json`'s `eos_token_id`.
    pub fn load(dir: &Path) -> Result<Self> {
        let read = |name: &str| crate::checkpoint::read_optional_json(&dir.join(name));
        let cfg = read("config.json")?.unwrap_or(Value::Null);
        let gen = read("generation_config.json")?.unwrap_or(Value::Null);
        let mut eos = ids(gen.get("eos_token_id"));
        if eos.is_empty() {
            eos = ids(cfg.get("eos_token_id"));
            eos.extend(ids(cfg.get("text_config").and_then(|t| t.get("eos_token_id"))));
            eos.dedup();
        }
        let f = |k: &str| gen.get(k).and_then(|x| x.as_f64()).map(|x| x as f32);
        Ok(Self {
            eos_token_ids: eos,
            do_sample: gen.get("do_sample").and_then(|x| x.as_bool()).unwrap_or(false),
            temperature: f("temperature"),
            top_k: gen.get("top_k").and_then(|x| x.as_u64()).map(|x| x as usize),
            top_p: f("top_p"),
            repetition_penalty: f("repetition_penalty"),
            max_new_tokens: gen.get("max_new_tokens").and_then(|x| x.as_u64()).map(|x| x as usize),
        })
    }

    /// The checkpoint's sampling defaults: greedy unless `do_sample`.
    pub fn sampling(&self) -> SamplingParams {
        if !self.do_sample {
            return SamplingParams { repetition_penalty: self.repetition_penalty, ..Default::default() };
        }
        SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            // transformers' GenerationConfig default is top_k = 50; 0 disables it
            top_k: Some(self.top_k.unwrap_or(50)).filter(|&k| k > 0),
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            seed: None,
        }
    }

    /// The checkpoint's defaults with a request's overrides; a temperature above 0 on a greedy
    /// checkpoint samples without hidden top-k/top-p. Validated.
    pub fn sampling_with(&self, o: &SamplingOverrides) -> std::result::Result<SamplingParams, String> {
        let mut p = self.sampling();
        if let Some(t) = o.temperature {
            p.temperature = t;
            if t > 0.0 && !self.do_sample {
                p.top_k = None;
                p.top_p = None;
            }
        }
        p.top_p = o.top_p.or(p.top_p);
        p.top_k = o.top_k.or(p.top_k);
        p.repetition_penalty = o.repetition_penalty.or(p.repetition_penalty);
        p.seed = o.seed;
        p.validate()?;
        Ok(p)
    }
}

/// Sampling settings a request (CLI flags, an API body) may set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplingOverrides {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<u64>,
}
