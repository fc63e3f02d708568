//! Small tensor helpers shared by the families.

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
