//! Step-by-step logits of one request, for comparing two loads of a model (quantized weights
//! against dense f32): greedy or teacher-forced on given tokens, then per-step top-1 agreement
//! and logit error. Used by the quantization tests and `iris bench --accuracy`.

use crate::generate::{encode_media_spans, prefill, Engine, GenerateRequest};
use crate::sampler::argmax;
use crate::Result;
use iris_models::StepInput;

/// The logits of each step of one request and what was fed back.
pub struct StepLogits {
    pub prompt_tokens: usize,
    /// `[steps][V]`: after the prompt, then after each fed-back token.
    pub logits: Vec<Vec<f32>>,
    pub tokens: Vec<u32>,
}

/// Runs `steps` steps of `req`, feeding back `forced[i]` where given (teacher forcing), else
/// each step's argmax (greedy, not stopping at end-of-sequence tokens).
pub fn step_logits(engine: &Engine, req: &GenerateRequest, forced: Option<&[u32]>, steps: usize) -> Result<StepLogits> {
    let (prompt, media) = engine.prepare(req)?;
    let model = engine.model.as_ref();
    iris_nn::on_compute_pool(|| {
        let embeds = encode_media_spans(model, &prompt, &media)?;
        let mut cache = model.new_cache();
        let mut logits = prefill(model, &prompt, &embeds, &mut cache)?;
        let (mut all, mut tokens) = (Vec::with_capacity(steps), Vec::with_capacity(steps));
        for i in 0..steps {
            let row = logits.flatten_all()?.to_vec1::<f32>()?;
            let token = forced.and_then(|f| f.get(i).copied()).unwrap_or_else(|| argmax(&row) as u32);
            all.push(row);
            tokens.push(token);
            if i + 1 == steps {
                break;
            }
            let pos = prompt.positions.slice(cache.len(), 1);
            let ids = [token];
            logits = model.forward(&StepInput::decode(&ids, &pos), &mut cache)?;
        }
        Ok(StepLogits { prompt_tokens: prompt.token_ids.len(), logits: all, tokens })
    })
}

/// `(argmax, top-1 minus top-2 logit)`, with the sampler's greedy choice as the argmax.
pub fn top2(v: &[f32]) -> (usize, f32) {
    let best = argmax(v);
    let second = (0..v.len()).filter(|&i| i != best).map(|i| v[i]).fold(f32::MIN, f32::max);
    (best, v[best] - second)
}

/// One step of a candidate's logits against a reference's.
#[derive(Debug, Clone, Copy)]
pub struct StepComparison {
    pub reference_top1: usize,
    pub candidate_top1: usize,
    /// The reference's top-1 minus top-2 logit: how close the step was to a tie.
    pub reference_gap: f32,
    /// max |candidate - reference| over the vocabulary.
    pub max_abs_error: f32,
    /// max |reference|, the logit scale the error is relative to.
    pub scale: f32,
}

impl StepComparison {
    pub fn agrees(&self) -> bool {
        self.reference_top1 == self.candidate_top1
    }

    pub fn relative_error(&self) -> f32 {
        self.max_abs_error / self.scale.max(f32::MIN_POSITIVE)
    }
}

pub fn compare_steps(reference: &[Vec<f32>], candidate: &[Vec<f32>]) -> Vec<StepComparison> {
    reference
        .iter()
        .zip(candidate)
        .map(|(r, c)| {
            let ((reference_top1, reference_gap), (candidate_top1, _)) = (top2(r), top2(c));
            StepComparison {
                reference_top1,
                candidate_top1,
                reference_gap,
                max_abs_error: r.iter().zip(c).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max),
                scale: r.iter().fold(0f32, |m, v| m.max(v.abs())),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_report_agreement_gap_and_error() {
        let reference = vec![vec![1.0, 0.9, 0.0], vec![-4.0, 0.0, 2.0]];
        let candidate = vec![vec![0.95, 1.0, 0.0], vec![-4.5, 0.0, 2.5]];
        let steps = compare_steps(&reference, &candidate);
        assert!(!steps[0].agrees() && (steps[0].reference_gap - 0.1).abs() < 1e-6 && (steps[0].max_abs_error - 0.1).abs() < 1e-6);
        assert!(steps[1].agrees() && steps[1].reference_top1 == 2);
        assert!((steps[1].relative_error() - 0.5 / 4.0).abs() < 1e-6);
    }
}
