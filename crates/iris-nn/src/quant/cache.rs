//! On-disk cache of quantized weights. Quantizing while loading is cheap for q8_0 but q4_K's
//! scale search (`make_qkx2_quants`) costs minutes for a 19B model (BENCHMARKS.md), so the first
//! load writes each quantized matrix to `<dir>/<hash>.iq` and later loads read it back instead of
//! decoding and quantizing the checkpoint tensor. mistral.rs (UQFF) and llama.cpp (GGUF files)
//! answer the same need with a separate conversion step; here it is automatic.
//!
//! A cache file is used only when its recorded source matches exactly: the checkpoint file's
//! canonical path, length and modification time, the tensor's name, byte range, dtype and shape,
//! the target format and this module's `VERSION`. Anything else (an edited checkpoint, a
//! truncated or foreign cache file) is a miss and the entry is rewritten. Write failures (full
//! disk, read-only directory) only disable further writes, with one warning.
//!
//! File layout: `MAGIC`, u32 LE length of the source description, the description (UTF-8),
//! u64 LE payload length, the payload (`QuantizedMatrix::encode`).

use super::QuantizedMatrix;
use crate::quant::WeightFormat;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

const MAGIC: &[u8; 8] = b"IRISQ\x00\x01\n";
/// Bump when the encoding or the quantizers change, so old entries stop matching.
const VERSION: u32 = 2;

/// Where a quantized matrix comes from, written into its cache file and compared on read.
#[derive(Debug, Clone)]
pub struct CacheKey {
    description: String,
}

impl CacheKey {
    /// `file` is the checkpoint file (canonicalized by the caller), `file_len` / `mtime_ns` its
    /// metadata, `range` the tensor's absolute byte range in it.
    #[allow(clippy::too_many_arguments)]
    pub fn new(file: &Path, file_len: u64, mtime_ns: u128, tensor: &str, range: (usize, usize), dtype: &str, shape: &[usize], format: WeightFormat) -> Self {
        let description = format!(
            "iris-quant v{VERSION}\nformat {format}\ntensor {tensor}\nshape {shape:?}\ndtype {dtype}\nfile {}\nlen {file_len}\nmtime_ns {mtime_ns}\nrange {}..{}\n",
            file.display(),
            range.0,
            range.1
        );
        Self { description }
    }

    /// 64-bit FNV-1a of the description (names the file; the description itself is verified).
    fn file_name(&self) -> String {
        let h = self.description.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3));
        format!("{h:016x}.iq")
    }
}

/// A directory of cached quantized matrices, with hit/miss counts for the load summary.
#[derive(Debug)]
pub struct QuantCache {
    dir: PathBuf,
    writes_disabled: AtomicBool,
    hits: AtomicUsize,
    misses: AtomicUsize,
}

impl QuantCache {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, writes_disabled: AtomicBool::new(false), hits: AtomicUsize::new(0), misses: AtomicUsize::new(0) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `(hits, misses)` so far.
    pub fn counts(&self) -> (usize, usize) {
        (self.hits.load(Ordering::Relaxed), self.misses.load(Ordering::Relaxed))
    }

    /// The cached matrix for `key`, if a valid entry exists.
    pub fn get(&self, key: &CacheKey, format: WeightFormat, n: usize, k: usize) -> Option<QuantizedMatrix> {
        let found = std::fs::read(self.dir.join(key.file_name())).ok().and_then(|bytes| {
            let payload = parse_entry(&bytes, &key.description)?;
            QuantizedMatrix::decode(format, n, k, payload).ok()
        });
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Stores `q` under `key` (write to a temporary name, then rename, so readers never see a
    /// partial file). Failures are logged once and stop further writes.
    pub fn put(&self, key: &CacheKey, q: &QuantizedMatrix) {
        if self.writes_disabled.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = self.write(key, q) {
            if !self.writes_disabled.swap(true, Ordering::Relaxed) {
                tracing::warn!("quantized-weight cache {}: cannot write ({e}); continuing without caching", self.dir.display());
            }
        }
    }

    fn write(&self, key: &CacheKey, q: &QuantizedMatrix) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.dir.join(key.file_name());
        let tmp = self.dir.join(format!("{}.tmp{}", key.file_name(), std::process::id()));
        let result = (|| {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            let payload = q.encode();
            f.write_all(MAGIC)?;
            f.write_all(&(key.description.len() as u32).to_le_bytes())?;
            f.write_all(key.description.as_bytes())?;
            f.write_all(&(payload.len() as u64).to_le_bytes())?;
            f.write_all(&payload)?;
            f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// The payload of a well-formed entry whose description equals `description`.
fn parse_entry<'a>(bytes: &'a [u8], description: &str) -> Option<&'a [u8]> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let (len, rest) = rest.split_at_checked(4)?;
    let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
    let (desc, rest) = rest.split_at_checked(len)?;
    if desc != description.as_bytes() {
        return None;
    }
    let (len, payload) = rest.split_at_checked(8)?;
    let len = u64::from_le_bytes(len.try_into().ok()?) as usize;
    (payload.len() == len).then_some(payload)
}

/// The default cache directory: `$IRIS_CACHE_DIR`, else `$XDG_CACHE_HOME/iris/quant`, else
/// `$HOME/.cache/iris/quant` (None without any of them).
pub fn default_dir() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("IRIS_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("iris/quant")))
        .or_else(|| env("HOME").map(|d| d.join(".cache/iris/quant")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tensor: &str, mtime: u128) -> CacheKey {
        CacheKey::new(Path::new("/ckpt/model.safetensors"), 1000, mtime, tensor, (8, 520), "BF16", &[8, 32], WeightFormat::Q8_0)
    }

    fn values(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919) % 257) as f32 / 64.0 - 2.0).collect()
    }

    #[test]
    fn round_trip_then_misses_on_any_change() {
        let dir = std::env::temp_dir().join(format!("iris-quant-cache-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cache = QuantCache::new(dir.clone());
        for (format, k) in [(WeightFormat::Q8_0, 64), (WeightFormat::Q4K, 512)] {
            let q = QuantizedMatrix::quantize(&values(8 * k), 8, k, format).unwrap();
            let kk = CacheKey::new(Path::new("/c/m.safetensors"), 1, 2, "w", (0, 1), "F32", &[8, k], format);
            assert!(cache.get(&kk, format, 8, k).is_none());
            cache.put(&kk, &q);
            let back = cache.get(&kk, format, 8, k).expect("cached entry");
            assert_eq!(back.encode(), q.encode(), "{format}");
            // a different shape request for the same file is refused by decode
            assert!(cache.get(&kk, format, 4, k).is_none());
        }
        let q = QuantizedMatrix::quantize(&values(8 * 32), 8, 32, WeightFormat::Q8_0).unwrap();
        cache.put(&key("a", 1), &q);
        assert!(cache.get(&key("a", 1), WeightFormat::Q8_0, 8, 32).is_some());
        // the checkpoint was modified: a miss
        assert!(cache.get(&key("a", 2), WeightFormat::Q8_0, 8, 32).is_none());
        // a truncated file: a miss, then rewritten by the next put
        let path = dir.join(key("a", 1).file_name());
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(cache.get(&key("a", 1), WeightFormat::Q8_0, 8, 32).is_none());
        cache.put(&key("a", 1), &q);
        assert!(cache.get(&key("a", 1), WeightFormat::Q8_0, 8, 32).is_some());
        let (hits, misses) = cache.counts();
        assert_eq!((hits, misses), (4, 6));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_directory_only_disables_writes() {
        let file = std::env::temp_dir().join(format!("iris-quant-cache-file-{}", std::process::id()));
        std::fs::write(&file, b"not a directory").unwrap();
        let cache = QuantCache::new(file.join("sub"));
        let q = QuantizedMatrix::quantize(&values(8 * 32), 8, 32, WeightFormat::Q8_0).unwrap();
        cache.put(&key("b", 1), &q);
        assert!(cache.writes_disabled.load(Ordering::Relaxed));
        assert!(cache.get(&key("b", 1), WeightFormat::Q8_0, 8, 32).is_none());
        std::fs::remove_file(&file).unwrap();
    }
}
