//! `iris make-checkpoint`: writes a full-size random-weight checkpoint of a real architecture
//! (config, generation and preprocessor configs, tokenizer files, one safetensors file) for
//! benchmarks: model hubs are out of reach, and such checkpoints are never committed.
//! The safetensors file is streamed tensor by tensor, so memory stays at one tensor.

use anyhow::{bail, Context, Result};
use clap::Args;
use iris_models::synthetic_presets;
use iris_nn::synthetic::generate;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct MakeCheckpointArgs {
    /// Architecture preset, e.g. qwen2-vl-2b, qwen2-vl-7b.
    #[arg(long)]
    pub preset: String,
    /// Output directory (created).
    #[arg(long)]
    pub out: PathBuf,
    /// Directory with tokenizer.json, tokenizer_config.json and optionally chat_template.json.
    #[arg(long)]
    pub tokenizer_dir: PathBuf,
    /// Stored precision: bf16 (as the official checkpoints), f16 or f32.
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn make_checkpoint(args: MakeCheckpointArgs) -> Result<()> {
    let presets = synthetic_presets();
    let Some(preset) = presets.iter().find(|p| p.name == args.preset) else {
        bail!("unknown preset `{}` (known: {})", args.preset, presets.iter().map(|p| p.name).collect::<Vec<_>>().join(", "));
    };
    let (dtype_name, elem) = match args.dtype.as_str() {
        "bf16" => ("BF16", 2),
        "f16" => ("F16", 2),
        "f32" => ("F32", 4),
        other => bail!("--dtype {other}: expected bf16, f16 or f32"),
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("{}", args.out.display()))?;
    let write_json = |name: &str, v: &serde_json::Value| -> Result<()> {
        let p = args.out.join(name);
        std::fs::write(&p, serde_json::to_string_pretty(v)?).with_context(|| format!("{}", p.display()))
    };
    write_json("config.json", &preset.config_json)?;
    write_json("generation_config.json", &preset.generation_config_json)?;
    if let Some(pre) = &preset.preprocessor_config_json {
        write_json("preprocessor_config.json", pre)?;
    }
    for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.json"] {
        let src = args.tokenizer_dir.join(f);
        if src.exists() {
            std::fs::copy(&src, args.out.join(f)).with_context(|| format!("copying {}", src.display()))?;
        } else if f == "tokenizer.json" {
            bail!("{}: missing", src.display());
        }
    }

    // header: names -> dtype, shape, byte offsets; padded to 8 bytes as safetensors requires
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0usize;
    for t in &preset.tensors {
        let bytes = t.shape.iter().product::<usize>() * elem;
        header.insert(t.name.clone(), serde_json::json!({"dtype": dtype_name, "shape": t.shape, "data_offsets": [offset, offset + bytes]}));
        offset += bytes;
    }
    let mut header_bytes = serde_json::to_vec(&header)?;
    while header_bytes.len() % 8 != 0 {
        header_bytes.push(b' ');
    }
    let path = args.out.join("model.safetensors");
    let file = std::fs::File::create(&path).with_context(|| format!("{}", path.display()))?;
    let mut w = BufWriter::with_capacity(8 << 20, file);
    w.write_all(&(header_bytes.len() as u64).to_le_bytes())?;
    w.write_all(&header_bytes)?;
    let mut buf = Vec::new();
    for t in &preset.tensors {
        let n: usize = t.shape.iter().product();
        buf.clear();
        buf.reserve(n * elem);
        // the same values `iris bench --synthetic` generates in memory
        for x in generate(&t.name, t.init, args.seed, n) {
            match elem {
                4 => buf.extend_from_slice(&x.to_le_bytes()),
                _ if dtype_name == "BF16" => buf.extend_from_slice(&half::bf16::from_f32(x).to_le_bytes()),
                _ => buf.extend_from_slice(&half::f16::from_f32(x).to_le_bytes()),
            }
        }
        w.write_all(&buf)?;
    }
    w.flush()?;
    eprintln!("wrote {} ({} tensors, {:.2} GB) to {}", preset.name, preset.tensors.len(), offset as f64 / 1e9, args.out.display());
    Ok(())
}
