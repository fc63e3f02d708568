//! Streaming detokenisation that never emits half a UTF-8 character: text is released only once
//! the decoded suffix no longer ends in U+FFFD (the same rule as TGI's / vLLM's incremental
//! detokenisers), decoding a short window of earlier tokens for correct spacing.

use crate::error::Result;
use crate::tokenizer::TextTokenizer;

pub struct StreamDecoder {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self { ids: Vec::new(), prefix_offset: 0, read_offset: 0 }
    }

    /// Adds a token; returns the newly completed text, if any.
    pub fn push(&mut self, tok: &TextTokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let prefix = tok.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = tok.decode(&self.ids[self.prefix_offset..])?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.is_char_boundary(prefix.len()) {
            let new = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            return Ok(Some(new));
        }
        Ok(None)
    }

    /// Whatever is still held back (a trailing incomplete character decodes to U+FFFD).
    pub fn flush(&mut self, tok: &TextTokenizer) -> Result<Option<String>> {
        let prefix = tok.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = tok.decode(&self.ids[self.prefix_offset..])?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        if full.len() > prefix.len() && full.is_char_boundary(prefix.len()) {
            return Ok(Some(full[prefix.len()..].to_string()));
        }
        Ok(None)
    }
}
