//! Helpers for reading HF `config.json` files whose keys move between releases (flat vs nested,
//! renamed keys, omitted defaults). Every failure names the file and the key.

use crate::error::{ModelError, Result};
use serde_json::Value;
use std::path::Path;

pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ModelError::Config { path: path.display().to_string(), message: e.to_string() })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config { path: path.display().to_string(), message: format!("invalid JSON: {e}") })
}

/// Looks `key` up in each object in turn (e.g. `text_config` then the root).
pub struct Lookup<'a> {
    pub file: String,
    pub scopes: Vec<&'a Value>,
}

impl<'a> Lookup<'a> {
    pub fn new(file: &Path, scopes: Vec<&'a Value>) -> Self {
        Self { file: file.display().to_string(), scopes }
    }

    pub fn raw(&self, key: &str) -> Option<&'a Value> {
        self.scopes.iter().find_map(|s| s.get(key).filter(|v| !v.is_null()))
    }

    fn err(&self, key: &str, message: &str) -> ModelError {
        ModelError::Config { path: self.file.clone(), message: format!("field `{key}`: {message}") }
    }

    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.raw(key) {
            None => Ok(default),
            Some(v) => v.as_u64().map(|x| x as usize).ok_or_else(|| self.err(key, &format!("expected a non-negative integer, got {v}"))),
        }
    }

    pub fn usize_req(&self, key: &str) -> Result<usize> {
        match self.raw(key) {
            None => Err(self.err(key, "missing")),
            Some(_) => self.usize_or(key, 0),
        }
    }

    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.raw(key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.err(key, &format!("expected a number, got {v}"))),
        }
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.raw(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.err(key, &format!("expected true/false, got {v}"))),
        }
    }

    pub fn str_or(&self, key: &str, default: &str) -> Result<String> {
        match self.raw(key) {
            None => Ok(default.to_string()),
            Some(v) => v.as_str().map(String::from).ok_or_else(|| self.err(key, &format!("expected a string, got {v}"))),
        }
    }

    pub fn f32_vec_or(&self, key: &str, default: &[f32]) -> Result<Vec<f32>> {
        match self.raw(key) {
            None => Ok(default.to_vec()),
            Some(Value::Array(a)) => a.iter().map(|x| x.as_f64().map(|f| f as f32).ok_or_else(|| self.err(key, "expected numbers"))).collect(),
            Some(v) => Err(self.err(key, &format!("expected an array, got {v}"))),
        }
    }

    pub fn usize_vec(&self, key: &str) -> Result<Option<Vec<usize>>> {
        match self.raw(key) {
            None => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_u64().map(|u| u as usize).ok_or_else(|| self.err(key, "expected integers")))
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(self.err(key, &format!("expected an array, got {v}"))),
        }
    }
}
