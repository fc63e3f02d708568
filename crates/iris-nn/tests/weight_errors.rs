//! Loader behaviour on good and bad checkpoints: sharded indexes, renames, consumption tracking,
//! and one named error for each kind of damage (missing file, corrupt header, missing tensor,
//! wrong shape, truncated data).

use candle_core::{DType, Device, Tensor};
use iris_nn::{NnError, WeightStore};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("iris-nn-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(path: &Path, tensors: &[(&str, Tensor)]) {
    let map: HashMap<String, Tensor> = tensors.iter().map(|(n, t)| (n.to_string(), t.clone())).collect();
    candle_core::safetensors::save(&map, path).unwrap();
}

fn identity(s: &str) -> String {
    s.to_string()
}

#[test]
fn sharded_checkpoint_with_renames_and_conversion() {
    let dir = tmpdir("sharded");
    let a = Tensor::arange(0f32, 6.0, &Device::Cpu).unwrap().reshape((2, 3)).unwrap();
    let b = Tensor::ones(4, DType::BF16, &Device::Cpu).unwrap();
    write(&dir.join("model-00001-of-00002.safetensors"), &[("model.language_model.a", a.clone())]);
    write(&dir.join("model-00002-of-00002.safetensors"), &[("b", b), ("extra", Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap())]);
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"weight_map":{"model.language_model.a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors","extra":"model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let rename = |s: &str| s.replace("model.language_model.", "model.");
    let store = WeightStore::open(&dir, &rename, &Device::Cpu).unwrap();
    let got = store.get("model.a", &[2, 3], DType::F16).unwrap();
    assert_eq!(got.dtype(), DType::F16);
    assert_eq!(got.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![0., 1., 2., 3., 4., 5.]);
    assert_eq!(store.get("b", &[4], DType::F32).unwrap().to_vec1::<f32>().unwrap(), vec![1.0; 4]);
    assert_eq!(store.unconsumed(), vec!["extra".to_string()]);
}

#[test]
fn each_kind_of_damage_is_a_named_error() {
    let dir = tmpdir("damage");
    write(&dir.join("model.safetensors"), &[("w", Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap())]);
    let store = WeightStore::open(&dir, &identity, &Device::Cpu).unwrap();

    let e = store.get("missing.weight", &[2, 2], DType::F32).unwrap_err();
    assert!(matches!(e, NnError::MissingTensor { .. }));
    assert!(e.to_string().contains("missing.weight"), "{e}");

    let e = store.get("w", &[3, 2], DType::F32).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("`w`") && msg.contains("model.safetensors") && msg.contains("[2, 2]") && msg.contains("[3, 2]"), "{msg}");

    // corrupt header
    let bad = tmpdir("corrupt");
    std::fs::write(bad.join("model.safetensors"), b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all").unwrap();
    let e = WeightStore::open(&bad, &identity, &Device::Cpu).err().unwrap();
    assert!(matches!(e, NnError::CorruptSafetensors { .. }), "{e}");
    assert!(e.to_string().contains("model.safetensors"), "{e}");

    // truncated data: header promises more bytes than the file has
    let trunc = tmpdir("trunc");
    let full = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(trunc.join("model.safetensors"), &full[..full.len() - 4]).unwrap();
    let e = WeightStore::open(&trunc, &identity, &Device::Cpu).err().unwrap();
    assert!(e.to_string().contains("model.safetensors"), "{e}");

    // no weights at all
    let empty = tmpdir("empty");
    let e = WeightStore::open(&empty, &identity, &Device::Cpu).err().unwrap();
    assert!(e.to_string().contains("no model.safetensors"), "{e}");

    // an index naming a shard that is not there
    let idx = tmpdir("index");
    std::fs::write(idx.join("model.safetensors.index.json"), r#"{"weight_map":{"a":"model-00001-of-00001.safetensors"}}"#).unwrap();
    let e = WeightStore::open(&idx, &identity, &Device::Cpu).err().unwrap();
    assert!(e.to_string().contains("model-00001-of-00001.safetensors"), "{e}");
}
