//! Vision-encoder outputs kept across requests, keyed by a hash of the preprocessed pixels (so the
//! same image at the same resolution hits, whatever URL or encoding it came in), bounded by bytes
//! with least-recently-used eviction. A follow-up question about an image skips the vision tower.

use candle_core::Tensor;
use iris_models::PreparedMedia;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// 128 bits of content hash: two SipHash-1-3 passes with different prefixes.
pub type MediaKey = (u64, u64);

/// Hashes what the vision tower sees: kind, grid and every pixel value.
pub fn media_key(media: &PreparedMedia) -> candle_core::Result<MediaKey> {
    let values = media.pixel_values.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
    let hash = |salt: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut h);
        (media.kind == iris_models::MediaKind::Video).hash(&mut h);
        media.grid_thw.hash(&mut h);
        media.pixel_values.dims().hash(&mut h);
        for v in &values {
            v.to_bits().hash(&mut h);
        }
        h.finish()
    };
    Ok((hash(1), hash(2)))
}

struct Entry {
    embeds: Tensor,
    bytes: usize,
    last_used: u64,
}

pub struct EncoderCache {
    entries: HashMap<MediaKey, Entry>,
    budget_bytes: usize,
    used_bytes: usize,
    clock: u64,
    pub hits: u64,
    pub misses: u64,
}

impl EncoderCache {
    pub fn new(budget_bytes: usize) -> Self {
        Self { entries: HashMap::new(), budget_bytes, used_bytes: 0, clock: 0, hits: 0, misses: 0 }
    }

    pub fn get(&mut self, key: &MediaKey) -> Option<Tensor> {
        self.clock += 1;
        match self.entries.get_mut(key) {
            Some(e) => {
                e.last_used = self.clock;
                self.hits += 1;
                Some(e.embeds.clone())
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    /// Keeps `embeds` unless it alone exceeds the budget; evicts the least recently used first.
    pub fn insert(&mut self, key: MediaKey, embeds: Tensor) {
        let bytes = embeds.elem_count() * embeds.dtype().size_in_bytes();
        if bytes > self.budget_bytes || self.entries.contains_key(&key) {
            return;
        }
        while self.used_bytes + bytes > self.budget_bytes {
            let Some((&oldest, _)) = self.entries.iter().min_by_key(|(_, e)| e.last_used) else { break };
            let e = self.entries.remove(&oldest).expect("key just found");
            self.used_bytes -= e.bytes;
        }
        self.clock += 1;
        self.used_bytes += bytes;
        self.entries.insert(key, Entry { embeds, bytes, last_used: self.clock });
    }

    pub fn used_bytes(&self) -> usize {
        self.used_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn evicts_least_recently_used_within_budget() {
        let t = |v: f32| Tensor::full(v, (4, 4), &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
        // 64 bytes each, room for two
        let mut c = EncoderCache::new(128);
        c.insert((1, 0), t(1.0));
        c.insert((2, 0), t(2.0));
        assert!(c.get(&(1, 0)).is_some());
        c.insert((3, 0), t(3.0));
        assert!(c.get(&(2, 0)).is_none(), "2 was least recently used");
        assert!(c.get(&(1, 0)).is_some() && c.get(&(3, 0)).is_some());
        assert_eq!(c.used_bytes(), 128);
        c.insert((4, 0), Tensor::zeros((100, 4), DType::F32, &Device::Cpu).unwrap());
        assert!(c.get(&(4, 0)).is_none(), "larger than the whole budget: not kept");
    }
}
