//! Memory-mapped safetensors checkpoints (single file or sharded with an index), loaded tensor by
//! tensor with conversion to the compute dtype, so the full-precision file never stays resident.
//!
//! Mirrors what `transformers`' `from_pretrained` needs from a checkpoint directory: the
//! `model.safetensors.index.json` weight map or a single `model.safetensors`. Names are normalised
//! by a family-provided rename function (e.g. Qwen2-VL's `model.language_model.*` -> `model.*`),
//! every read is recorded, and `unconsumed()` reports tensors nothing asked for.

use crate::error::{NnError, Result};
use crate::quant::cache::{CacheKey, QuantCache};
use crate::quant::{QuantizedMatrix, WeightFormat};
use crate::synthetic::{generate, Init, TensorSpec};
use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use memmap2::{Mmap, UncheckedAdvice};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
    /// Canonical path, length and modification time (ns): the identity a quantized-weight
    /// cache entry is checked against.
    identity: Option<(PathBuf, u64, u128)>,
}

/// Where one tensor lives: file, dtype, shape and absolute byte range inside the mapping.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    file: usize,
    pub original_name: String,
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    start: usize,
    end: usize,
    /// Generated in memory (benchmarks) instead of read from a file.
    generated: Option<(Init, u64)>,
}

pub struct WeightStore {
    dir: PathBuf,
    files: Vec<MappedFile>,
    index: HashMap<String, TensorEntry>,
    consumed: Mutex<HashSet<String>>,
    device: Device,
    /// Drop the file pages of a tensor from our resident set once it has been copied out.
    release_pages: bool,
    quant_cache: Option<QuantCache>,
}

/// The safetensors files of a checkpoint directory, from the index when there is one.
pub fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.exists() {
        let text = std::fs::read_to_string(&index_path)
            .map_err(|e| NnError::File { path: index_path.clone(), message: e.to_string() })?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| NnError::File { path: index_path.clone(), message: format!("invalid JSON: {e}") })?;
        let map = json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| NnError::File {
            path: index_path.clone(),
            message: "no `weight_map` object".into(),
        })?;
        let mut names: Vec<String> = map.values().filter_map(|v| v.as_str().map(String::from)).collect();
        names.sort();
        names.dedup();
        let files: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
        for f in &files {
            if !f.exists() {
                return Err(NnError::File { path: f.clone(), message: format!("shard listed in {} is missing", index_path.display()) });
            }
        }
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| NnError::File { path: dir.to_path_buf(), message: e.to_string() })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    found.sort();
    if found.is_empty() {
        return Err(NnError::File {
            path: dir.to_path_buf(),
            message: "no model.safetensors, model.safetensors.index.json or *.safetensors file".into(),
        });
    }
    Ok(found)
}

impl WeightStore {
    /// Opens every safetensors file of `dir`; `rename` maps checkpoint names to canonical names.
    pub fn open(dir: &Path, rename: &dyn Fn(&str) -> String, device: &Device) -> Result<Self> {
        let files = checkpoint_files(dir)?;
        Self::open_files(dir, &files, rename, device)
    }

    pub fn open_files(dir: &Path, paths: &[PathBuf], rename: &dyn Fn(&str) -> String, device: &Device) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for (file_idx, path) in paths.iter().enumerate() {
            let file = std::fs::File::open(path).map_err(|e| NnError::File { path: path.clone(), message: e.to_string() })?;
            // SAFETY: the checkpoint is opened read-only and treated as immutable while mapped.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| NnError::File { path: path.clone(), message: e.to_string() })?;
            let (header_len, metadata) = safetensors::SafeTensors::read_metadata(&mmap)
                .map_err(|e| NnError::CorruptSafetensors { path: path.clone(), message: e.to_string() })?;
            let data_start = 8 + header_len;
            for (name, info) in metadata.tensors() {
                let (s, e) = info.data_offsets;
                let entry = TensorEntry {
                    file: file_idx,
                    original_name: name.clone(),
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start: data_start + s,
                    end: data_start + e,
                    generated: None,
                };
                if entry.end > mmap.len() {
                    return Err(NnError::CorruptSafetensors {
                        path: path.clone(),
                        message: format!("tensor `{name}` ends at byte {} past the end of the file ({} bytes)", entry.end, mmap.len()),
                    });
                }
                index.insert(rename(&name), entry);
            }
            let identity = file_identity(path, &file);
            files.push(MappedFile { path: path.clone(), mmap, identity });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
            index,
            consumed: Mutex::new(HashSet::new()),
            device: device.clone(),
            release_pages: true,
            quant_cache: None,
        })
    }

    /// Keeps quantized matrices in (and reads them back from) the cache directory `dir`.
    pub fn with_quant_cache(mut self, dir: Option<&Path>) -> Self {
        self.quant_cache = dir.map(|d| QuantCache::new(d.to_path_buf()));
        self
    }

    /// `name` `[N, K]` quantized to `format`: from the cache when it holds this exact tensor,
    /// else decoded and quantized (and then cached).
    pub fn get_quantized(&self, name: &str, shape: &[usize], format: WeightFormat) -> Result<QuantizedMatrix> {
        let entry = self.checked_shape(name, shape)?;
        let [n, k] = shape else {
            return Err(NnError::Quantization(format!("`{}` has shape {shape:?}; only matrices are quantized", entry.original_name)));
        };
        let cached = self.cache_slot(entry, format);
        if let Some(q) = cached.as_ref().and_then(|(cache, key)| cache.get(key, format, *n, *k)) {
            self.finish_read(name, entry);
            return Ok(q);
        }
        let values = self.f32_values(entry)?;
        self.finish_read(name, entry);
        let q = QuantizedMatrix::quantize(&values, *n, *k, format)?;
        if let Some((cache, key)) = &cached {
            cache.put(key, &q);
        }
        Ok(q)
    }

    /// The cache and this tensor's key in it, for tensors read from a file whose identity is
    /// known (generated tensors are never cached).
    fn cache_slot(&self, entry: &TensorEntry, format: WeightFormat) -> Option<(&QuantCache, CacheKey)> {
        let cache = self.quant_cache.as_ref()?;
        let (path, len, mtime) = self.files.get(entry.file).filter(|_| entry.generated.is_none())?.identity.as_ref()?;
        let dtype = format!("{:?}", entry.dtype);
        Some((cache, CacheKey::new(path, *len, *mtime, &entry.original_name, (entry.start, entry.end), &dtype, &entry.shape, format)))
    }

    /// A store whose tensors are generated on demand from `specs` (checkpoint names, renamed by
    /// `rename`) and `seed`: a full-size random model without a file, loaded tensor by tensor.
    pub fn synthetic(specs: &[TensorSpec], seed: u64, rename: &dyn Fn(&str) -> String, device: &Device) -> Self {
        let index = specs
            .iter()
            .map(|s| {
                let entry = TensorEntry {
                    file: usize::MAX,
                    original_name: s.name.clone(),
                    dtype: safetensors::Dtype::F32,
                    shape: s.shape.clone(),
                    start: 0,
                    end: 0,
                    generated: Some((s.init, seed)),
                };
                (rename(&s.name), entry)
            })
            .collect();
        Self {
            dir: PathBuf::from("<synthetic>"),
            files: Vec::new(),
            index,
            consumed: Mutex::new(HashSet::new()),
            device: device.clone(),
            release_pages: false,
            quant_cache: None,
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn path_of(&self, entry: &TensorEntry) -> PathBuf {
        self.files.get(entry.file).map(|f| f.path.clone()).unwrap_or_else(|| self.dir.clone())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Number of values in all tensors of the checkpoint.
    pub fn total_elements(&self) -> usize {
        self.index.values().map(|e| e.shape.iter().product::<usize>()).sum()
    }

    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.index.get(name)
    }

    /// Marks a tensor as deliberately not needed (e.g. a tied `lm_head.weight`).
    pub fn mark_ignored(&self, name: &str) {
        self.consumed.lock().unwrap().insert(name.to_string());
    }

    /// Loads `name`, checks its shape, converts it to `dtype`.
    pub fn get(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let entry = self.checked_shape(name, shape)?;
        self.load_entry(name, entry, dtype)
    }

    fn checked_shape(&self, name: &str, shape: &[usize]) -> Result<&TensorEntry> {
        let entry = self.entry_checked(name)?;
        if entry.shape != shape {
            return Err(NnError::ShapeMismatch {
                name: entry.original_name.clone(),
                path: self.path_of(entry),
                expected: shape.to_vec(),
                actual: entry.shape.clone(),
            });
        }
        Ok(entry)
    }

    fn entry_checked(&self, name: &str) -> Result<&TensorEntry> {
        self.index.get(name).ok_or_else(|| NnError::MissingTensor { name: name.to_string(), dir: self.dir.clone() })
    }

    fn load_entry(&self, name: &str, entry: &TensorEntry, dtype: DType) -> Result<Tensor> {
        if entry.generated.is_some() {
            let values = self.f32_values(entry)?;
            self.finish_read(name, entry);
            return Ok(Tensor::from_vec(values, entry.shape.as_slice(), &self.device)?.to_dtype(dtype)?);
        }
        let file = &self.files[entry.file];
        let bytes = &file.mmap[entry.start..entry.end];
        let tensor = convert_bytes(bytes, entry.dtype, dtype, &entry.shape, &self.device).map_err(|e| self.convert_error(entry, e))?;
        self.finish_read(name, entry);
        Ok(tensor)
    }

    fn convert_error(&self, entry: &TensorEntry, e: ConvertError) -> NnError {
        let path = self.path_of(entry);
        match e {
            ConvertError::Dtype => NnError::UnsupportedDtype { name: entry.original_name.clone(), path, dtype: format!("{:?}", entry.dtype) },
            ConvertError::Size => NnError::CorruptSafetensors {
                path,
                message: format!("tensor `{}` has {} bytes, which does not fit shape {:?}", entry.original_name, entry.end - entry.start, entry.shape),
            },
            ConvertError::Candle(e) => NnError::Candle(e),
        }
    }

    /// Records the read and drops the tensor's file pages from the resident set.
    fn finish_read(&self, name: &str, entry: &TensorEntry) {
        if self.release_pages && entry.generated.is_none() {
            release_range(&self.files[entry.file].mmap, entry.start, entry.end);
        }
        self.consumed.lock().unwrap().insert(name.to_string());
    }

    /// Canonical names present in the checkpoint that no `get` consumed, sorted.
    pub fn unconsumed(&self) -> Vec<String> {
        let consumed = self.consumed.lock().unwrap();
        let mut left: Vec<String> = self.index.keys().filter(|k| !consumed.contains(*k)).cloned().collect();
        left.sort();
        left
    }

    /// A builder scoped to `prefix`, like candle's `VarBuilder::pp`.
    pub fn root(&self, dtype: DType) -> Weights<'_> {
        Weights { store: self, prefix: String::new(), dtype, linear_format: None }
    }

    /// `name` decoded to f32 values (for quantizing), with the same checks as `get`.
    pub fn get_f32_values(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let entry = self.checked_shape(name, shape)?;
        let values = self.f32_values(entry)?;
        self.finish_read(name, entry);
        Ok(values)
    }

    /// The entry's values as f32: generated, or decoded from the mapped bytes.
    fn f32_values(&self, entry: &TensorEntry) -> Result<Vec<f32>> {
        let len = entry.shape.iter().product::<usize>();
        if let Some((init, seed)) = entry.generated {
            return Ok(generate(&entry.original_name, init, seed, len));
        }
        let bytes = &self.files[entry.file].mmap[entry.start..entry.end];
        if bytes.len() != len * element_size(entry.dtype).unwrap_or(0) {
            return Err(self.convert_error(entry, ConvertError::Size));
        }
        bytes_to_f32(bytes, entry.dtype).ok_or_else(|| self.convert_error(entry, ConvertError::Dtype))
    }
}

impl Drop for WeightStore {
    /// Once the model is built (the store is dropped), say what the quantized-weight cache did.
    fn drop(&mut self) {
        if let Some(cache) = &self.quant_cache {
            let (hits, misses) = cache.counts();
            if hits + misses > 0 {
                tracing::info!("quantized-weight cache {}: {hits} matrices read, {misses} quantized and stored", cache.dir().display());
            }
        }
    }
}

/// Canonical path, length and modification time (ns since the epoch) of an open file; None
/// where the platform cannot say (then nothing from this file is cached).
fn file_identity(path: &Path, file: &std::fs::File) -> Option<(PathBuf, u64, u128)> {
    let meta = file.metadata().ok()?;
    let mtime = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
    Some((std::fs::canonicalize(path).ok()?, meta.len(), mtime))
}

/// Drops the mapping's pages in [start, end) from this process's resident set. The mapping is
/// read-only and file-backed, so a later access simply faults the data in again.
fn release_range(mmap: &Mmap, start: usize, end: usize) {
    const PAGE: usize = 4096;
    let aligned_start = start.div_ceil(PAGE) * PAGE;
    let aligned_end = end / PAGE * PAGE;
    if aligned_end > aligned_start {
        // SAFETY: read-only file mapping; DONTNEED only discards clean pages.
        let _ = unsafe { mmap.unchecked_advise_range(UncheckedAdvice::DontNeed, aligned_start, aligned_end - aligned_start) };
    }
}

enum ConvertError {
    Dtype,
    Size,
    Candle(candle_core::Error),
}

/// Element-wise conversion of little-endian bytes, split across threads for large tensors.
fn read_elems<T: Copy + Send + Default, const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> T + Sync) -> Vec<T> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    let n = bytes.len() / N;
    let mut out = vec![T::default(); n];
    out.par_chunks_mut(CHUNK).zip(bytes.par_chunks(CHUNK * N)).for_each(|(dst, src)| {
        for (d, c) in dst.iter_mut().zip(src.chunks_exact(N)) {
            *d = f(c.try_into().unwrap());
        }
    });
    out
}

fn element_size(dtype: safetensors::Dtype) -> Option<usize> {
    use safetensors::Dtype as S;
    match dtype {
        S::F32 | S::I32 => Some(4),
        S::F16 | S::BF16 => Some(2),
        S::I64 | S::F64 => Some(8),
        _ => None,
    }
}

/// Float safetensors bytes as f32 values (None for integer or unknown dtypes).
fn bytes_to_f32(bytes: &[u8], src: safetensors::Dtype) -> Option<Vec<f32>> {
    use safetensors::Dtype as S;
    Some(match src {
        S::F32 => read_elems(bytes, f32::from_le_bytes),
        S::F16 => read_elems(bytes, |b: [u8; 2]| f16::from_le_bytes(b).to_f32()),
        S::BF16 => read_elems(bytes, |b: [u8; 2]| bf16::from_le_bytes(b).to_f32()),
        S::F64 => read_elems(bytes, |b: [u8; 8]| f64::from_le_bytes(b) as f32),
        _ => return None,
    })
}

/// Converts raw little-endian safetensors bytes straight into a tensor of `dst` dtype, with one
/// allocation of the destination size.
fn convert_bytes(bytes: &[u8], src: safetensors::Dtype, dst: DType, shape: &[usize], device: &Device) -> std::result::Result<Tensor, ConvertError> {
    use safetensors::Dtype as S;
    let n: usize = shape.iter().product();
    let elem = element_size(src).ok_or(ConvertError::Dtype)?;
    if bytes.len() != n * elem {
        return Err(ConvertError::Size);
    }
    let t = match (src, dst) {
        (S::F32, DType::F32) | (S::F16, DType::F16) | (S::BF16, DType::BF16) | (S::I64, DType::I64) => {
            Tensor::from_raw_buffer(bytes, dst, shape, device)
        }
        (S::I64, DType::F32) => Tensor::from_vec(read_elems(bytes, |b: [u8; 8]| i64::from_le_bytes(b) as f32), shape, device),
        (S::I32, DType::F32) => Tensor::from_vec(read_elems(bytes, |b: [u8; 4]| i32::from_le_bytes(b) as f32), shape, device),
        (_, DType::F32) => Tensor::from_vec(bytes_to_f32(bytes, src).ok_or(ConvertError::Dtype)?, shape, device),
        (S::BF16, DType::F16) => {
            Tensor::from_vec(read_elems(bytes, |b: [u8; 2]| f16::from_f32(bf16::from_le_bytes(b).to_f32())), shape, device)
        }
        (S::F16, DType::BF16) => {
            Tensor::from_vec(read_elems(bytes, |b: [u8; 2]| bf16::from_f32(f16::from_le_bytes(b).to_f32())), shape, device)
        }
        (S::F32, DType::F16) => Tensor::from_vec(read_elems(bytes, |b: [u8; 4]| f16::from_f32(f32::from_le_bytes(b))), shape, device),
        (S::F32, DType::BF16) => Tensor::from_vec(read_elems(bytes, |b: [u8; 4]| bf16::from_f32(f32::from_le_bytes(b))), shape, device),
        _ => return Err(ConvertError::Dtype),
    };
    t.map_err(ConvertError::Candle)
}

/// A view of the store under a dotted prefix, for walking the module tree.
#[derive(Clone)]
pub struct Weights<'a> {
    store: &'a WeightStore,
    prefix: String,
    dtype: DType,
    /// Storage format of linear weights under this prefix (None: dense in `dtype`).
    linear_format: Option<WeightFormat>,
}

impl<'a> Weights<'a> {
    pub fn pp(&self, name: impl std::fmt::Display) -> Weights<'a> {
        let prefix = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        Weights { store: self.store, prefix, dtype: self.dtype, linear_format: self.linear_format }
    }

    /// The same view with linear weights stored as `format` (None: dense in the compute dtype).
    pub fn with_linear_format(mut self, format: Option<WeightFormat>) -> Self {
        self.linear_format = format;
        self
    }

    pub fn linear_format(&self) -> Option<WeightFormat> {
        self.linear_format
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        self.store.device()
    }

    pub fn store(&self) -> &'a WeightStore {
        self.store
    }

    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.store.contains(&self.path(name))
    }

    pub fn get(&self, shape: &[usize], name: &str) -> Result<Tensor> {
        self.store.get(&self.path(name), shape, self.dtype)
    }

    /// `name` as f32 values, for quantizing.
    pub fn get_f32_values(&self, shape: &[usize], name: &str) -> Result<Vec<f32>> {
        self.store.get_f32_values(&self.path(name), shape)
    }

    pub fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.store.entry(&self.path(name)).map(|e| e.shape.clone())
    }
}
