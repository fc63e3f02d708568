//! Streaming detokenisation that never emits half a UTF-8 character: text is released only once
//! the decoded suffix no longer ends in U+FFFD (the same rule as TGI's / vLLM's incremental
//! detokenisers), decoding a short window of earlier tokens for correct spacing. Also
//! transformers' `clean_up_tokenization` (for tokenizers whose config asks for it, e.g. Llama 3's
//! `clean_up_tokenization_spaces: true`), applied to a prefix that later text cannot change.

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

/// transformers `PreTrainedTokenizerBase.clean_up_tokenization`, replacement by replacement.
pub fn clean_up_tokenization(text: &str) -> String {
    const RULES: [(&str, &str); 10] = [
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ];
    let mut out = text.to_string();
    for (from, to) in RULES {
        if out.contains(from) {
            out = out.replace(from, to);
        }
    }
    out
}

/// The longest prefix of `raw` whose clean-up no later text can change: every rule starts with a
/// space and spans at most 4 bytes, so a cut with no space in the 4 bytes before it is stable.
pub fn stable_cleanup_cut(raw: &str) -> usize {
    let bytes = raw.as_bytes();
    let mut cut = raw.len();
    loop {
        let window = &bytes[cut.saturating_sub(4)..cut];
        match window.iter().rposition(|&b| b == b' ') {
            None if raw.is_char_boundary(cut) => return cut,
            None => cut -= 1,
            Some(i) => cut = cut.saturating_sub(4) + i,
        }
        if cut == 0 {
            return 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_up_matches_transformers_rules() {
        assert_eq!(clean_up_tokenization("Hello , world ! Is it ? Yes . I don 't , we 're ok"), "Hello, world! Is it? Yes. I don 't, we're ok");
        assert_eq!(clean_up_tokenization("x ' s"), "x's");
        assert_eq!(clean_up_tokenization("do n't"), "don't");
        assert_eq!(clean_up_tokenization("plain text"), "plain text");
    }

    #[test]
    fn cleaned_stable_prefixes_only_ever_grow() {
        // every prefix of every text: the cleaned stable prefix extends the previous one and
        // ends as a prefix of the cleaned whole
        for text in ["Hello , world ! I don 't know . x ' s and y ' ' z", "a b c d e f . g", "日本 語 , テスト !", "   . . ,, ' ' 're"] {
            let whole = clean_up_tokenization(text);
            let mut shown = String::new();
            for end in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
                let prefix = &text[..end];
                let stable = clean_up_tokenization(&prefix[..stable_cleanup_cut(prefix)]);
                assert!(stable.starts_with(&shown), "{text:?} at {end}: {stable:?} does not extend {shown:?}");
                assert!(whole.starts_with(&stable), "{text:?} at {end}: {stable:?} is not a prefix of {whole:?}");
                shown = stable;
            }
        }
    }
}
