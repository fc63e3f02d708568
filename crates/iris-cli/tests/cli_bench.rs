//! `iris bench` on the tiny Qwen2-VL fixture: one JSON object with the documented fields, the
//! checkpoint directory left untouched, and one-line errors for bad sizes, presets and formats.

mod common;

#[test]
fn bench_reports_json_and_rejects_bad_options() {
    let model = common::fixture("qwen2-vl-tiny").join("model");
    let m = model.to_str().unwrap();
    let before: Vec<_> = std::fs::read_dir(&model).unwrap().map(|e| e.unwrap().file_name()).collect();
    let (code, stdout, stderr) = common::iris(&["bench", "--model", m, "--image", "56x56", "--prompt-tokens", "5", "--new-tokens", "3", "--quant", "q8_0", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    for key in ["load_s", "vision_ms", "prefill_tokens_per_s", "decode_tokens_per_s", "ttft_ms", "peak_rss_bytes", "weight_bytes", "decode_bytes_per_token", "read_bandwidth_gb_per_s", "decode_roofline_fraction", "kv_bytes_per_token", "decode_kv_bytes_per_token", "decode_roofline_fraction_with_kv"] {
        assert!(report[key].is_number(), "{key} missing in {report}");
    }
    assert!(report["read_bandwidth_gb_per_s"].as_f64().unwrap() > 0.0, "{report}");
    assert_eq!(report["language_format"], "q8_0");
    assert_eq!(report["new_tokens"], 3);
    // --kv-dtype auto: f16 under quantized language weights; the fraction counting the cache is
    // the larger one
    assert_eq!(report["kv_dtype"], "f16");
    assert!(report["decode_roofline_fraction_with_kv"].as_f64() > report["decode_roofline_fraction"].as_f64(), "{report}");
    let after: Vec<_> = std::fs::read_dir(&model).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(before, after, "bench must not write into the checkpoint directory");

    common::assert_one_line_errors(&[
        (vec!["bench", "--model", m, "--image", "56"], "--image 56"),
        (vec!["bench", "--synthetic", "qwen2-vl-9b", "--tokenizer-dir", "."], "unknown --synthetic `qwen2-vl-9b`"),
        (vec!["bench", "--synthetic", "qwen2-vl-2b"], "--tokenizer-dir"),
    ]);
    // clap's own value error (its usage hint follows on a second line)
    let (code, _, stderr) = common::iris(&["bench", "--model", m, "--quant", "q3"]);
    assert_ne!(code, 0);
    assert!(stderr.lines().next().unwrap().contains("unknown weight format `q3`"), "{stderr}");
}

#[test]
fn bench_accuracy_compares_each_step_with_dense_f32() {
    let model = common::fixture("qwen2-vl-tiny").join("model");
    let m = model.to_str().unwrap();
    let run = |quant: &str| {
        let (code, stdout, stderr) = common::iris(&["bench", "--model", m, "--image", "56x56", "--prompt-tokens", "5", "--new-tokens", "6", "--quant", quant, "--accuracy", "--json"]);
        assert_eq!(code, 0, "{stderr}");
        serde_json::from_str::<serde_json::Value>(stdout.trim()).unwrap()
    };
    // dense f32 against itself: the same computation on the same thread pool, so identical logits
    let same = run("f32");
    assert_eq!((same["steps"].as_u64(), same["top1_agreements"].as_u64()), (Some(6), Some(6)), "{same}");
    assert_eq!(same["max_relative_logit_error"], 0.0, "{same}");
    let q8 = run("q8_0");
    println!("q8_0 against f32 on the tiny fixture: {q8}");
    assert_eq!(q8["language_format"], "q8_0");
    assert_eq!(q8["per_step_relative_logit_error"].as_array().map(Vec::len), Some(6));
    let err = q8["max_relative_logit_error"].as_f64().unwrap();
    // the tiny model's random weights amplify q8_0's weight error (iris-engine tests/quantized.rs)
    assert!(err > 0.0 && err < 0.15, "{q8}");
    for d in q8["disagreements"].as_array().unwrap() {
        assert_ne!(d["reference_token"], d["candidate_token"], "{q8}");
        // the report is self-consistent: correct numbers always satisfy this (a flip needs a logit
        // error of at least half the reference's top-2 gap), so it catches swapped or rescaled fields
        assert!(d["max_abs_error"].as_f64().unwrap() * 2.0 >= d["reference_gap"].as_f64().unwrap(), "{q8}");
    }
}

#[test]
fn bench_concurrent_decodes_every_sequence_in_one_batch() {
    let model = common::fixture("qwen2-vl-tiny").join("model");
    let m = model.to_str().unwrap();
    // f16 weights: three rows per step through the dense decode GEMV's batched tiles
    let (code, stdout, stderr) = common::iris(&["bench", "--model", m, "--image", "56x56", "--prompt-tokens", "5", "--new-tokens", "4", "--quant", "f16", "--concurrent", "3", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    println!("{report}");
    for key in ["load_s", "ttft_first_ms", "ttft_last_ms", "wall_s", "decode_tokens_per_s", "decode_steps_per_s", "decode_tokens_per_s_per_sequence_median", "decode_weight_gb_per_s", "peak_rss_bytes", "weight_bytes", "decode_bytes_per_token"] {
        assert!(report[key].as_f64().is_some_and(|v| v > 0.0), "{key} missing or zero in {report}");
    }
    assert_eq!((report["concurrent"].as_u64(), report["new_tokens"].as_u64()), (Some(3), Some(12)), "{report}");
    assert!(report["ttft_first_ms"].as_f64() <= report["ttft_last_ms"].as_f64(), "{report}");
    // three sequences per step: the aggregate is three times the step rate
    let (total, steps) = (report["decode_tokens_per_s"].as_f64().unwrap(), report["decode_steps_per_s"].as_f64().unwrap());
    assert!((total - 3.0 * steps).abs() < 1e-6 * total, "{report}");

    // clap's own errors (a usage hint follows on later lines)
    for (args, needle) in [(["--concurrent", "0"], "0 is not in 1..=64"), (["--concurrent", "2"], "cannot be used with '--accuracy'")] {
        let mut full = vec!["bench", "--model", m];
        full.extend(args);
        if needle.contains("accuracy") {
            full.push("--accuracy");
        }
        let (code, _, stderr) = common::iris(&full);
        assert_ne!(code, 0);
        assert!(stderr.lines().next().unwrap().contains(needle), "{stderr}");
    }
}
