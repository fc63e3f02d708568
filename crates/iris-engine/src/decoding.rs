//! One sequence's token-by-token decoding, shared by the single-request loop (`Engine::generate`)
//! and the continuous-batching scheduler: sampling with the prompt as history, EOS ids, the token
//! limit, incremental detokenisation with the reference's clean-up, and stop strings (text that
//! could still become a stop string is held back from the stream).

use crate::detokenizer::StreamDecoder;
use crate::error::Result;
use crate::generate::FinishReason;
use crate::sampler::{log_sum_exp, top_k_logits, Sampler, SamplingParams};
use crate::tokenizer::TextTokenizer;

/// The model's log-probability of a chosen token and, if asked, of its most likely alternatives
/// (log-softmax of the raw logits, before penalties and temperature, as OpenAI reports them).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    /// `(token, logprob)`, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// What one sampled token produced.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeStep {
    /// The new token (None when the model chose an end-of-sequence id).
    pub token: Option<u32>,
    /// Text that became visible with this step (may be empty).
    pub text: String,
    pub logprob: Option<TokenLogprob>,
    /// Set when the sequence ended with this step.
    pub finish: Option<FinishReason>,
}

pub struct Decoding {
    sampler: Sampler,
    /// Prompt and generated ids: the repetition penalty's history.
    seen: Vec<u32>,
    out_ids: Vec<u32>,
    max_new_tokens: usize,
    eos: Vec<u32>,
    top_logprobs: Option<usize>,
    stream: StreamDecoder,
    /// The tokenizer's decode so far, and what the reference's decode shows of it.
    raw: String,
    text: String,
    emitted: usize,
    stop: Vec<String>,
    stopped_by_text: bool,
    finish: Option<FinishReason>,
}

impl Decoding {
    /// `top_logprobs`: None for no log-probabilities, `Some(n)` for the chosen token's and `n`
    /// alternatives'.
    pub fn new(prompt_ids: &[u32], sampling: SamplingParams, max_new_tokens: usize, eos: Vec<u32>, stop: Vec<String>, top_logprobs: Option<usize>) -> Self {
        Self {
            sampler: Sampler::new(sampling),
            seen: prompt_ids.to_vec(),
            out_ids: Vec::new(),
            max_new_tokens,
            eos,
            top_logprobs,
            stream: StreamDecoder::new(),
            raw: String::new(),
            text: String::new(),
            emitted: 0,
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            stopped_by_text: false,
            finish: if max_new_tokens == 0 { Some(FinishReason::Length) } else { None },
        }
    }

    pub fn finished(&self) -> Option<FinishReason> {
        self.finish
    }

    pub fn token_ids(&self) -> &[u32] {
        &self.out_ids
    }

    /// The answer so far (all of it once finished).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Samples the next token from `logits` `[V]` and advances the text.
    pub fn step(&mut self, logits: &[f32], tok: &TextTokenizer) -> Result<DecodeStep> {
        let token = self.sampler.sample(logits, &self.seen);
        let logprob = self.top_logprobs.map(|n| model_logprobs(logits, token, n));
        if self.eos.contains(&token) {
            let text = self.finish_with(FinishReason::Stop, tok)?;
            return Ok(DecodeStep { token: None, text, logprob, finish: self.finish });
        }
        self.out_ids.push(token);
        self.seen.push(token);
        if let Some(piece) = self.stream.push(tok, token)? {
            self.raw.push_str(&piece);
            self.text = tok.visible_text(&self.raw, false);
        }
        if let Some(cut) = find_stop(&self.text, &self.stop) {
            self.text.truncate(cut);
            self.stopped_by_text = true;
            let text = self.finish_with(FinishReason::Stop, tok)?;
            return Ok(DecodeStep { token: Some(token), text, logprob, finish: self.finish });
        }
        if self.out_ids.len() >= self.max_new_tokens {
            let text = self.finish_with(FinishReason::Length, tok)?;
            return Ok(DecodeStep { token: Some(token), text, logprob, finish: self.finish });
        }
        // hold back what could still become the start of a stop string
        let hold = self.stop.iter().map(|s| s.len()).max().unwrap_or(0).saturating_sub(1);
        let safe = floor_char_boundary(&self.text, self.text.len().saturating_sub(hold));
        let text = self.take_until(safe);
        Ok(DecodeStep { token: Some(token), text, logprob, finish: None })
    }

    /// Ends the sequence early (the context is full): the rest of the text.
    pub fn finish_with(&mut self, reason: FinishReason, tok: &TextTokenizer) -> Result<String> {
        let mut reason = reason;
        // a trailing incomplete character decodes to U+FFFD, as the reference's decode does
        if !self.stopped_by_text {
            if let Some(rest) = self.stream.flush(tok)? {
                self.raw.push_str(&rest);
            }
            self.text = tok.visible_text(&self.raw, true);
            // the clean-up's held-back tail may have completed a stop string
            if let Some(cut) = find_stop(&self.text, &self.stop) {
                self.text.truncate(cut);
                reason = FinishReason::Stop;
            }
        }
        self.finish = Some(reason);
        Ok(self.take_until(self.text.len()))
    }

    fn take_until(&mut self, end: usize) -> String {
        if end <= self.emitted {
            return String::new();
        }
        let piece = self.text.get(self.emitted..end).unwrap_or_default().to_string();
        self.emitted = end;
        piece
    }
}

fn model_logprobs(logits: &[f32], token: u32, n: usize) -> TokenLogprob {
    let lse = log_sum_exp(logits);
    let top = if n == 0 { Vec::new() } else { top_k_logits(logits, n).into_iter().map(|(id, l)| (id, l - lse)).collect() };
    TokenLogprob { token, logprob: logits.get(token as usize).map_or(f32::NEG_INFINITY, |l| l - lse), top }
}

fn find_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops.iter().filter_map(|s| text.find(s.as_str())).min()
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_a_log_softmax_with_sorted_alternatives() {
        let lp = model_logprobs(&[1.0, 3.0, 2.0], 2, 2);
        let lse = (1f32.exp() + 3f32.exp() + 2f32.exp()).ln();
        assert!((lp.logprob - (2.0 - lse)).abs() < 1e-6);
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!(model_logprobs(&[0.0, 1.0], 1, 0).top.is_empty());
    }
}
