//! Small tensor helpers shared by the families.

use crate::api::StepInput;
use crate::error::{ModelError, Result};
use candle_core::{DType, Tensor};

/// Replaces rows `[offset, offset + len)` of `base [T, C]` with each embedding `[len, C]`.
pub fn splice_rows(base: &Tensor, pieces: &[(usize, Tensor)], dtype: DType) -> Result<Tensor> {
    if pieces.is_empty() {
        return Ok(base.clone());
    }
    let (t, _) = base.dims2()?;
    let mut sorted: Vec<&(usize, Tensor)> = pieces.iter().collect();
    sorted.sort_by_key(|(o, _)| *o);
    let mut parts = Vec::with_capacity(2 * sorted.len() + 1);
    let mut cursor = 0;
    for (offset, emb) in sorted {
        let len = emb.dim(0)?;
        if *offset < cursor || offset + len > t {
            return Err(ModelError::Prompt(format!("media embedding rows {offset}..{} do not fit the {t}-token step", offset + len)));
        }
        if *offset > cursor {
            parts.push(base.narrow(0, cursor, offset - cursor)?);
        }
        parts.push(emb.to_dtype(dtype)?);
        cursor = offset + len;
    }
    if cursor < t {
        parts.push(base.narrow(0, cursor, t - cursor)?);
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// Embeddings of a batch of steps stacked on one axis `[ΣT, C]`: every step's token embeddings
/// with its media rows spliced in.
pub fn stacked_step_embeds(steps: &[StepInput], embed: impl Fn(&[u32]) -> Result<Tensor>, dtype: DType) -> Result<Tensor> {
    let ids: Vec<u32> = steps.iter().flat_map(|s| s.token_ids.iter().copied()).collect();
    let mut pieces = Vec::new();
    let mut row = 0;
    for s in steps {
        pieces.extend(s.media_embeds.iter().map(|(o, e)| (row + o, e.clone())));
        row += s.token_ids.len();
    }
    splice_rows(&embed(&ids)?, &pieces, dtype)
}

/// Position rows of a batch of steps, concatenated row by row (every step must have as many rows).
pub fn stacked_positions(steps: &[StepInput]) -> Result<Vec<Vec<i64>>> {
    let n_rows = steps.first().map_or(0, |s| s.positions.len());
    let mut rows = vec![Vec::new(); n_rows];
    for s in steps {
        if s.positions.len() != n_rows || s.positions.iter().any(|r| r.len() != s.token_ids.len()) {
            return Err(ModelError::Prompt(format!("a step of {} tokens has position rows that do not match the batch", s.token_ids.len())));
        }
        for (dst, src) in rows.iter_mut().zip(s.positions) {
            dst.extend_from_slice(src);
        }
    }
    Ok(rows)
}

/// Rows of the stacked hidden states `x [ΣT, C]` whose logits the steps asked for (the last of
/// each step, or all of it with `all_logits`) `-> [R, C]`, and how many belong to each step.
pub fn logit_rows(x: &Tensor, steps: &[StepInput]) -> Result<(Tensor, Vec<usize>)> {
    let mut idx = Vec::new();
    let mut counts = Vec::with_capacity(steps.len());
    let mut row = 0u32;
    for s in steps {
        let t = s.token_ids.len() as u32;
        if t == 0 {
            return Err(ModelError::Prompt("a step has no tokens".into()));
        }
        let first = if s.all_logits { row } else { row + t - 1 };
        idx.extend(first..row + t);
        counts.push((row + t - first) as usize);
        row += t;
    }
    if steps.len() == 1 && counts[0] == x.dim(0)? {
        return Ok((x.clone(), counts));
    }
    Ok((x.index_select(&Tensor::new(idx.as_slice(), x.device())?, 0)?, counts))
}

/// Splits `logits [R, V]` back into each step's rows.
pub fn split_rows(logits: &Tensor, counts: &[usize]) -> Result<Vec<Tensor>> {
    if counts.len() == 1 {
        return Ok(vec![logits.clone()]);
    }
    let mut out = Vec::with_capacity(counts.len());
    let mut row = 0;
    for &n in counts {
        out.push(logits.narrow(0, row, n)?);
        row += n;
    }
    Ok(out)
}
