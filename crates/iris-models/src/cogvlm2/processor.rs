//! CogVLM2 input processing: the image transform (Pillow bicubic stretch to `image_size`,
//! ToTensor, CLIP Normalize), the prompt of `build_conversation_input_ids` for the chat / base /
//! vqa templates with history, token types and `build_position_ids`.
//! Mirrors the reference remote code `modeling_cogvlm.py` (`_history_to_prompt`,
//! `build_conversation_input_ids`, `build_position_ids`) and `basic_demo/openai_api_demo.py`'s
//! mapping of OpenAI messages to (query, history) (spec §3.1, §4.6, §5).

use super::config::{CogVlmConfig, Template};
use crate::api::{ChatMessage, ContentPart, MediaKind, MediaSpan, Positions, PreparedMedia, PromptCodec, PromptInputs, TokenType};
use crate::error::{ModelError, Result};
use crate::image::{to_tensor_normalize_chw, RgbImage, CLIP_MEAN, CLIP_STD};
use candle_core::{Device, Tensor};

/// Resize to `size x size` (aspect ratio not kept, as `Resize((S, S), BICUBIC)`), then
/// `[3, S, S]` normalised pixels; the item takes `tokens` prompt slots.
pub fn prepare_image(img: &RgbImage, size: usize, tokens: usize) -> Result<PreparedMedia> {
    if img.width == 0 || img.height == 0 {
        return Err(ModelError::Prompt(format!("image has zero size ({}x{})", img.width, img.height)));
    }
    let resized = img.resize_bicubic(size, size);
    let data = to_tensor_normalize_chw(&resized, CLIP_MEAN, CLIP_STD);
    Ok(PreparedMedia {
        kind: MediaKind::Image,
        pixel_values: Tensor::from_vec(data, (3, size, size), &Device::Cpu)?,
        grid_thw: [1, 1, 1],
        num_tokens: tokens,
        orig_hw: [img.height, img.width],
        resized_hw: [size, size],
    })
}

/// The reference's conversation: the last user message is the query, each earlier user message a
/// history question answered by the assistant message after it (the official OpenAI demo's rule).
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub query: String,
    pub history: Vec<(String, String)>,
    /// Index of the (single) media item, wherever it appeared.
    pub image: Option<usize>,
}

pub fn to_conversation(messages: &[ChatMessage]) -> Result<Conversation> {
    let text_of = |m: &ChatMessage| -> String {
        // the text parts of one message are joined with a single space
        m.parts.iter().filter_map(|p| if let ContentPart::Text(t) = p { Some(t.as_str()) } else { None }).collect::<Vec<_>>().join(" ")
    };
    let mut image = None;
    for (i, m) in messages.iter().enumerate() {
        for p in &m.parts {
            if let ContentPart::Media(idx) = p {
                if image.is_some_and(|prev| prev != *idx) {
                    return Err(ModelError::Prompt(format!(
                        "messages[{i}]: CogVLM2 accepts one image per conversation (the reference asserts len(images) <= 1)"
                    )));
                }
                image = Some(*idx);
            }
        }
    }
    let Some((last, earlier)) = messages.split_last() else {
        return Err(ModelError::Prompt("no messages".into()));
    };
    if last.role != "user" {
        return Err(ModelError::Prompt(format!("the last message must be from the user, got `{}`", last.role)));
    }
    let mut history: Vec<(String, String)> = Vec::new();
    let mut open_question = false;
    for (i, m) in earlier.iter().enumerate() {
        match m.role.as_str() {
            "user" => {
                history.push((text_of(m), String::new()));
                open_question = true;
            }
            "assistant" if open_question => {
                history.last_mut().expect("a user message precedes").1 = text_of(m);
                open_question = false;
            }
            "assistant" => return Err(ModelError::Prompt(format!("messages[{i}]: an assistant message must answer a user message"))),
            role => return Err(ModelError::Prompt(format!("messages[{i}]: CogVLM2 prompts have no `{role}` role (only user and assistant)"))),
        }
    }
    Ok(Conversation { query: text_of(last), history, image })
}

/// `_history_to_prompt`: the text the reference tokenizes (no BOS, no trailing space).
pub fn prompt_text(template: Template, conv: &Conversation) -> String {
    let tag = match template {
        Template::Base => return conv.query.clone(),
        Template::Chat => "Answer:",
        Template::Vqa => "Short answer:",
    };
    let mut text = String::new();
    for (q, r) in &conv.history {
        text.push_str(&format!("Question: {q} {tag} {r}\n"));
    }
    text.push_str(&format!("Question: {} {tag}", conv.query));
    text
}

/// `[BOS] + [pad] * image_tokens + encode(text)`, types, positions and the image span.
pub fn build_prompt(cfg: &CogVlmConfig, messages: &[ChatMessage], media: &[PreparedMedia], codec: &dyn PromptCodec, template: Template) -> Result<PromptInputs> {
    let conv = to_conversation(messages)?;
    let text = prompt_text(template, &conv);
    let mut ids = vec![cfg.text.bos_token_id];
    let mut types = vec![TokenType::Text];
    let mut spans = Vec::new();
    if let Some(idx) = conv.image {
        let item = media.get(idx).ok_or_else(|| ModelError::Prompt(format!("media item {idx} was not prepared")))?;
        if item.kind != MediaKind::Image {
            return Err(ModelError::Unsupported("CogVLM2 takes images, not videos".into()));
        }
        spans.push(MediaSpan { media_index: idx, start: ids.len(), len: item.num_tokens });
        ids.extend(std::iter::repeat_n(cfg.text.pad_token_id, item.num_tokens));
        types.extend(std::iter::repeat_n(TokenType::Vision, item.num_tokens));
    }
    let text_ids = codec.encode(&text, false)?;
    types.extend(std::iter::repeat_n(TokenType::Text, text_ids.len()));
    ids.extend(text_ids);
    let row = build_position_ids(&types);
    // a decoded token follows the last prompt position: cache index c gets c + delta
    let delta = row.last().map_or(0, |&p| p + 1) - row.len() as i64;
    Ok(PromptInputs { token_ids: ids, positions: Positions { rows: vec![row], delta }, token_types: types, media_spans: spans })
}

/// `build_position_ids` for one unpadded row: the first and last token of each vision run (boi,
/// eoi) count as language; every language token and the first vision token after a language
/// token advance the position; other vision tokens repeat it. `[T,V,V,V,V,V,T]` -> `[0,1,2,2,2,3,4]`.
pub fn build_position_ids(types: &[TokenType]) -> Vec<i64> {
    let n = types.len();
    let is_vision = |i: usize| types[i] == TokenType::Vision;
    let relabelled: Vec<bool> = (0..n)
        .map(|i| {
            let boundary = (i == 0 || !is_vision(i - 1)) || (i + 1 == n || !is_vision(i + 1));
            is_vision(i) && !boundary
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    let mut pos = -1i64;
    for i in 0..n {
        if i == 0 || !relabelled[i] || !relabelled[i - 1] {
            pos += 1;
        }
        out.push(pos);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use TokenType::{Text as T, Vision as V};

    fn user(parts: Vec<ContentPart>) -> ChatMessage {
        ChatMessage { role: "user".into(), parts, content_is_string: false }
    }
    fn said(role: &str, text: &str) -> ChatMessage {
        ChatMessage { role: role.into(), parts: vec![ContentPart::Text(text.into())], content_is_string: true }
    }

    #[test]
    fn image_span_takes_three_positions() {
        assert_eq!(build_position_ids(&[T, V, V, V, V, V, T, T]), vec![0, 1, 2, 2, 2, 3, 4, 5]);
        assert_eq!(build_position_ids(&[T, T, T]), vec![0, 1, 2]);
        // 2306 image slots after BOS: text starts at 4, i.e. index i >= 2307 has position i - 2303
        let mut types = vec![T];
        types.extend(std::iter::repeat_n(V, 2306));
        types.extend([T, T]);
        let p = build_position_ids(&types);
        assert_eq!((p[1], p[2], p[2305], p[2306], p[2307], p[2308]), (1, 2, 2, 3, 4, 5));
    }

    #[test]
    fn history_and_templates_follow_history_to_prompt() {
        let msgs = vec![
            user(vec![ContentPart::Media(0), ContentPart::Text("What is this?".into())]),
            said("assistant", "A cat."),
            user(vec![ContentPart::Text("What".into()), ContentPart::Text("colour?".into())]),
        ];
        let conv = to_conversation(&msgs).unwrap();
        assert_eq!(conv.image, Some(0));
        assert_eq!(prompt_text(Template::Chat, &conv), "Question: What is this? Answer: A cat.\nQuestion: What colour? Answer:");
        assert_eq!(prompt_text(Template::Vqa, &conv), "Question: What is this? Short answer: A cat.\nQuestion: What colour? Short answer:");
        assert_eq!(prompt_text(Template::Base, &conv), "What colour?");
    }

    #[test]
    fn unsupported_conversations_are_named_errors() {
        let two_images = vec![user(vec![ContentPart::Media(0)]), said("assistant", "ok"), user(vec![ContentPart::Media(1), ContentPart::Text("and?".into())])];
        assert!(to_conversation(&two_images).unwrap_err().to_string().contains("one image"));
        let system = vec![said("system", "Be brief."), said("user", "hi")];
        assert!(to_conversation(&system).unwrap_err().to_string().contains("system"));
        let ends_with_answer = vec![said("user", "hi"), said("assistant", "hello")];
        assert!(to_conversation(&ends_with_answer).unwrap_err().to_string().contains("last message"));
    }
}
