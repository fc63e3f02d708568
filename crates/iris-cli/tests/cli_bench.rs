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
    for key in ["load_s", "vision_ms", "prefill_tokens_per_s", "decode_tokens_per_s", "ttft_ms", "peak_rss_bytes", "weight_bytes", "decode_bytes_per_token"] {
        assert!(report[key].is_number(), "{key} missing in {report}");
    }
    assert_eq!(report["language_format"], "q8_0");
    assert_eq!(report["new_tokens"], 3);
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
