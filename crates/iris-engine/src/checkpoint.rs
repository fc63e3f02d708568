//! Resolving `--model`: a local checkpoint directory, or a Hugging Face repo id looked up in the
//! local HF cache (`$HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`) and otherwise
//! downloaded with progress bars through `hf-hub`.

use crate::error::{EngineError, Result};
use std::path::{Path, PathBuf};

/// Files a checkpoint needs besides its weights (optional ones are skipped if absent).
const CHECKPOINT_FILES: &[(&str, bool)] = &[
    ("config.json", true),
    ("tokenizer.json", true),
    ("tokenizer_config.json", false),
    ("chat_template.json", false),
    ("generation_config.json", false),
    ("preprocessor_config.json", false),
];

/// Parses a JSON file of the checkpoint if it exists; a present but broken file is an error.
pub fn read_optional_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::File { path: path.display().to_string(), message: e.to_string() })?;
    serde_json::from_str(&text).map(Some).map_err(|e| EngineError::File { path: path.display().to_string(), message: format!("invalid JSON: {e}") })
}

pub fn hf_cache_dir() -> PathBuf {
    if let Ok(p) = std::env::var("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Ok(p) = std::env::var("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    PathBuf::from(home).join(".cache/huggingface/hub")
}

fn looks_like_repo_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2 && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
}

/// A directory with `config.json`, or a repo id resolved from the cache or the hub.
pub fn resolve_model(arg: &str) -> Result<PathBuf> {
    let path = Path::new(arg);
    if path.is_dir() {
        if !path.join("config.json").exists() {
            return Err(EngineError::File { path: path.join("config.json").display().to_string(), message: "missing: not a checkpoint directory".into() });
        }
        return Ok(path.to_path_buf());
    }
    if !looks_like_repo_id(arg) {
        return Err(EngineError::File { path: arg.to_string(), message: "no such directory (and not a Hugging Face repo id like `Qwen/Qwen2-VL-2B-Instruct`)".into() });
    }
    if let Some(dir) = find_in_cache(&hf_cache_dir(), arg) {
        return Ok(dir);
    }
    download(arg)
}

/// The snapshot directory of `repo` in an HF cache, if it holds a complete checkpoint
/// (`models--{org}--{name}/refs/main` -> `snapshots/{hash}`).
pub fn find_in_cache(cache: &Path, repo: &str) -> Option<PathBuf> {
    let cache = hf_hub::Cache::new(cache.to_path_buf());
    let repo = cache.model(repo.to_string());
    let config = repo.get("config.json")?;
    let dir = config.parent()?.to_path_buf();
    let has_weights = dir.join("model.safetensors").exists() || dir.join("model.safetensors.index.json").exists();
    let complete = CHECKPOINT_FILES.iter().filter(|(_, required)| *required).all(|(f, _)| dir.join(f).exists());
    (has_weights && complete).then_some(dir)
}

fn download(repo_id: &str) -> Result<PathBuf> {
    let err = |message: String| EngineError::ModelResolve { repo: repo_id.to_string(), message };
    let api = hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(hf_cache_dir()))
        .with_progress(true)
        .build()
        .map_err(|e| err(format!("cannot start the Hugging Face client: {e}")))?;
    let repo = api.model(repo_id.to_string());
    let config = repo
        .get("config.json")
        .map_err(|e| err(format!("not in the local cache ({}) and the download failed: {e}", hf_cache_dir().display())))?;
    for (file, required) in CHECKPOINT_FILES.iter().skip(1) {
        if let Err(e) = repo.get(file) {
            if *required {
                return Err(err(format!("download of {file} failed: {e}")));
            }
        }
    }
    match repo.get("model.safetensors.index.json") {
        Ok(index) => {
            for shard in crate::checkpoint::shard_names(&index)? {
                repo.get(&shard).map_err(|e| err(format!("download of {shard} failed: {e}")))?;
            }
        }
        Err(_) => {
            repo.get("model.safetensors").map_err(|e| err(format!("download of model.safetensors failed: {e}")))?;
        }
    }
    Ok(config.parent().unwrap_or(Path::new(".")).to_path_buf())
}

fn shard_names(index: &Path) -> Result<Vec<String>> {
    let json = read_optional_json(index)?.unwrap_or_default();
    let mut names: Vec<String> = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .map(|m| m.values().filter_map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default();
    names.sort();
    names.dedup();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_are_recognised() {
        assert!(looks_like_repo_id("Qwen/Qwen2-VL-2B-Instruct"));
        assert!(!looks_like_repo_id("./models/x"));
        assert!(!looks_like_repo_id("a/b/c"));
    }

    #[test]
    fn cache_layout_resolves_to_the_snapshot() {
        let root = std::env::temp_dir().join(format!("iris-hf-cache-{}", std::process::id()));
        let repo_dir = root.join("models--Qwen--Qwen2-VL-2B-Instruct");
        let snap = repo_dir.join("snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
        std::fs::write(repo_dir.join("refs/main"), "abc123").unwrap();
        assert_eq!(find_in_cache(&root, "Qwen/Qwen2-VL-2B-Instruct"), None, "empty snapshot is not a checkpoint");
        for f in ["config.json", "tokenizer.json", "model.safetensors"] {
            std::fs::write(snap.join(f), "{}").unwrap();
        }
        assert_eq!(find_in_cache(&root, "Qwen/Qwen2-VL-2B-Instruct"), Some(snap.clone()));
        assert_eq!(find_in_cache(&root, "Qwen/Other"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
