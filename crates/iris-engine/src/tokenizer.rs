//! The tokenizer (`tokenizer.json` via the `tokenizers` crate) and the checkpoint's chat template
//! (`chat_template.json` or `tokenizer_config.json`, rendered with minijinja as transformers'
//! `apply_chat_template` does). Implements the `PromptCodec` families build prompts with.

use crate::error::{EngineError, Result};
use iris_models::PromptCodec;
use minijinja::{Environment, Error as JinjaError, ErrorKind};
use serde_json::Value;
use std::path::Path;

pub struct TextTokenizer {
    tokenizer: tokenizers::Tokenizer,
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    /// `clean_up_tokenization_spaces` of tokenizer_config.json (decode-time space clean-up).
    clean_up_spaces: bool,
}

fn special_token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

impl TextTokenizer {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(EngineError::File { path: path.display().to_string(), message: "missing (the checkpoint needs tokenizer.json)".into() });
        }
        let tokenizer = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| EngineError::File { path: path.display().to_string(), message: format!("cannot load tokenizer: {e}") })?;
        let read = |name: &str| crate::checkpoint::read_optional_json(&dir.join(name));
        let tok_cfg = read("tokenizer_config.json")?;
        let template_of = |v: &Value| -> Option<String> {
            match v.get("chat_template")? {
                Value::String(s) => Some(s.clone()),
                // a list of named templates: take "default"
                Value::Array(list) => list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template").and_then(|x| x.as_str()).map(String::from)),
                _ => None,
            }
        };
        // The processor's chat_template.json wins over the tokenizer's, as in transformers 4.57.
        let chat_template = read("chat_template.json")?.as_ref().and_then(template_of).or_else(|| tok_cfg.as_ref().and_then(template_of));
        let bos_token = tok_cfg.as_ref().and_then(|c| special_token_string(c.get("bos_token")));
        let eos_token = tok_cfg.as_ref().and_then(|c| special_token_string(c.get("eos_token")));
        let clean_up_spaces = tok_cfg.as_ref().and_then(|c| c.get("clean_up_tokenization_spaces")).and_then(|v| v.as_bool()).unwrap_or(false);
        Ok(Self { tokenizer, chat_template, bos_token, eos_token, clean_up_spaces })
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, false).map_err(|e| EngineError::Tokenizer(e.to_string()))
    }

    /// What transformers' `decode` shows for `raw` decoded text, so far as more text cannot change
    /// it (`finished`: all of it).
    pub fn visible_text(&self, raw: &str, finished: bool) -> String {
        if !self.clean_up_spaces {
            return raw.to_string();
        }
        let end = if finished { raw.len() } else { crate::detokenizer::stable_cleanup_cut(raw) };
        crate::detokenizer::clean_up_tokenization(&raw[..end])
    }

}

impl PromptCodec for TextTokenizer {
    fn encode(&self, text: &str, add_special_tokens: bool) -> iris_models::Result<Vec<u32>> {
        self.tokenizer
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| iris_models::ModelError::Prompt(format!("tokenizer: {e}")))
    }

    fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    fn render_chat_template(&self, messages: &Value, add_generation_prompt: bool) -> iris_models::Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| iris_models::ModelError::Prompt("the checkpoint has no chat template (chat_template.json or tokenizer_config.json)".into()))?;
        render_template(template, messages, add_generation_prompt, self.bos_token.as_deref(), self.eos_token.as_deref())
            .map_err(|e| iris_models::ModelError::Prompt(format!("chat template: {e}")))
    }
}

fn raise_exception(message: String) -> std::result::Result<String, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, message))
}

/// Renders a HF chat template with the variables `apply_chat_template` provides.
pub fn render_template(template: &str, messages: &Value, add_generation_prompt: bool, bos: Option<&str>, eos: Option<&str>) -> std::result::Result<String, String> {
    let mut env = Environment::new();
    // Templates rely on Jinja2's whitespace defaults (no trimming).
    env.add_function("raise_exception", raise_exception);
    env.add_template("chat", template).map_err(|e| e.to_string())?;
    let ctx = minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos.unwrap_or(""),
        eos_token => eos.unwrap_or(""),
    };
    env.get_template("chat").and_then(|t| t.render(ctx)).map_err(|e| e.to_string())
}
