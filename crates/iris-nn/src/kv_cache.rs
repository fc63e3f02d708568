//! Per-sequence KV storage: one growing `[KVH, capacity, D]` buffer per layer for K and V, kept
//! in the compute dtype or a narrower storage dtype (f16 halves the bytes a decode step reads at
//! long contexts; llama.cpp's default). Policy (admission, eviction, paging) belongs to the
//! engine; this is only storage.

use crate::error::Result;
use candle_core::{DType, Device, Tensor};

const MIN_CAPACITY: usize = 256;

#[derive(Debug, Clone, Default)]
pub struct LayerKv {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
    /// Tokens to allocate room for at once (a sequence's admitted length), so a cache admitted
    /// for N tokens never holds more than N.
    reserved: usize,
    /// Storage dtype (None: as appended). Attention reads f16/bf16 caches directly on the decode
    /// path and widens them to the query's dtype otherwise.
    storage: Option<DType>,
}

impl LayerKv {
    /// Appends `k`/`v` `[KVH, T, D]` and returns views of everything cached `[KVH, len, D]`, in
    /// the storage dtype.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (k, v) = match self.storage {
            Some(dt) => (k.to_dtype(dt)?, v.to_dtype(dt)?),
            None => (k.clone(), v.clone()),
        };
        let (kvh, t, d) = k.dims3()?;
        let needed = self.len + t;
        let capacity = self.k.as_ref().map(|k| k.dim(1)).transpose()?.unwrap_or(0);
        if needed > capacity {
            let new_cap = if needed <= self.reserved { self.reserved } else { needed.next_power_of_two().max(MIN_CAPACITY) };
            let grow = |old: &Option<Tensor>, dtype: DType, dev: &Device| -> Result<Tensor> {
                let buf = Tensor::zeros((kvh, new_cap, d), dtype, dev)?;
                if let Some(old) = old {
                    if self.len > 0 {
                        buf.slice_set(&old.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                    }
                }
                Ok(buf)
            };
            let nk = grow(&self.k, k.dtype(), k.device())?;
            let nv = grow(&self.v, v.dtype(), v.device())?;
            self.k = Some(nk);
            self.v = Some(nv);
        }
        let (kb, vb) = (self.k.as_ref().unwrap(), self.v.as_ref().unwrap());
        kb.slice_set(&k.contiguous()?, 1, self.len)?;
        vb.slice_set(&v.contiguous()?, 1, self.len)?;
        self.len = needed;
        Ok((kb.narrow(1, 0, self.len)?, vb.narrow(1, 0, self.len)?))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

}

/// All layers of one sequence.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub layers: Vec<LayerKv>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self { layers: vec![LayerKv::default(); num_layers] }
    }

    /// A cache that allocates room for exactly `tokens` on first use (growing past it doubles).
    pub fn with_reserved(num_layers: usize, tokens: usize) -> Self {
        Self { layers: vec![LayerKv { reserved: tokens, ..LayerKv::default() }; num_layers] }
    }

    /// Stores K and V as `dtype` whatever the compute dtype.
    pub fn stored_as(mut self, dtype: DType) -> Self {
        for layer in &mut self.layers {
            layer.storage = Some(dtype);
        }
        self
    }

    /// Tokens cached (all layers hold the same count).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_grows_and_keeps_order() {
        let dev = Device::Cpu;
        let mut kv = LayerKv::default();
        let mut all = Vec::new();
        for step in 0..300usize {
            let t = if step == 0 { 5 } else { 1 };
            let k = Tensor::randn(0f32, 1.0, (2, t, 4), &dev).unwrap();
            all.push(k.clone());
            let (kc, _) = kv.append(&k, &k).unwrap();
            assert_eq!(kc.dims(), &[2, kv.len(), 4]);
        }
        let expect = Tensor::cat(&all, 1).unwrap();
        let (kc, _) = kv.append(&Tensor::zeros((2, 0, 4), DType::F32, &dev).unwrap(), &Tensor::zeros((2, 0, 4), DType::F32, &dev).unwrap()).unwrap();
        let d = crate::ops::max_abs_diff(&kc, &expect).unwrap();
        assert_eq!(d, 0.0);
    }

    #[test]
    fn a_narrower_storage_dtype_rounds_what_is_appended() {
        let dev = Device::Cpu;
        let mut cache = KvCache::with_reserved(1, 8).stored_as(DType::F16);
        let k = Tensor::randn(0f32, 1.0, (2, 3, 4), &dev).unwrap();
        let (kc, vc) = cache.layers[0].append(&k, &(&k * 2.0).unwrap()).unwrap();
        assert_eq!((kc.dtype(), vc.dtype()), (DType::F16, DType::F16));
        let rounded = k.to_dtype(DType::F16).unwrap();
        assert_eq!(crate::ops::max_abs_diff(&kc, &rounded).unwrap(), 0.0);
    }
}
