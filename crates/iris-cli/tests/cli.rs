//! The `iris` binary end to end on the tiny Qwen2-VL fixture: `--json` output equals the golden
//! greedy tokens, `--messages` files resolve relative paths, and bad input is one readable line on
//! stderr with a non-zero exit code.

use serde_json::Value;
use std::path::PathBuf;

mod common;
use common::iris;

fn fixture() -> PathBuf {
    common::fixture("qwen2-vl-tiny")
}

fn case(id: &str) -> Value {
    common::case(&fixture(), id)
}

#[test]
fn run_json_with_messages_file_matches_the_fixture() {
    let dir = fixture();
    let c = case("c2_two_images");
    // a messages file in a temp dir whose relative paths point back at the fixture media
    let tmp = std::env::temp_dir().join(format!("iris-cli-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let mut messages = c["request"]["messages"].clone();
    for m in messages.as_array_mut().unwrap() {
        if let Some(parts) = m["content"].as_array_mut() {
            for p in parts {
                if let Some(img) = p.get("image").and_then(|i| i.as_str()) {
                    p["image"] = Value::String(dir.join(img).display().to_string());
                }
            }
        }
    }
    let path = tmp.join("conv.json");
    std::fs::write(&path, serde_json::to_string(&messages).unwrap()).unwrap();
    let model = dir.join("model");
    let (code, stdout, stderr) = iris(&["run", "--model", model.to_str().unwrap(), "--messages", path.to_str().unwrap(), "--json", "--max-tokens", "16", "--temperature", "0"]);
    assert_eq!(code, 0, "{stderr}");
    let out: Value = serde_json::from_str(stdout.trim()).expect("exactly one JSON object on stdout");
    assert_eq!(out["token_ids"], c["generation"]["token_ids"]);
    assert_eq!(out["prompt_token_ids"], c["input_ids"]);
    assert_eq!(out["text"], c["generation"]["text"]);
    assert_eq!(out["usage"]["prompt_tokens"], c["num_prompt_tokens"]);
    assert!(out["boxes"].is_array(), "boxes is always present");
    for k in ["load_ms", "preprocess_ms", "vision_ms", "prefill_ms", "decode_tokens_per_s"] {
        assert!(out["timings"][k].is_number(), "timings.{k}");
    }
}

#[test]
fn bad_input_is_one_line_and_non_zero() {
    let dir = fixture();
    let model = dir.join("model");
    let model = model.to_str().unwrap();
    let not_image = dir.join("cases.json");
    let missing = dir.join("media/nope.png");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["run", "--model", "/no/such/dir", "hi"], "/no/such/dir"),
        (vec!["run", "--model", model, "--image", missing.to_str().unwrap(), "hi"], "nope.png"),
        (vec!["run", "--model", model, "--image", not_image.to_str().unwrap(), "hi"], "cases.json"),
        (vec!["run", "--model", model, "--top-p", "2", "hi"], "top_p"),
        (vec!["run", "--model", "Nobody/not-a-model-xyz", "hi"], "Nobody/not-a-model-xyz"),
        (vec!["run", "--model", model, "--draw-boxes", "/tmp/never-written.png", "hi"], "--draw-boxes"),
    ];
    common::assert_one_line_errors(&cases);
}

#[test]
fn chat_repl_answers_like_run_and_survives_bad_commands() {
    let dir = fixture();
    let c = case("c1_image_question");
    let image = dir.join("media/grad_150x100.png");
    let script = format!("/image /no/such.png\n/image {}\nWhat is in this image?\n/bogus\n/reset\n/quit\n", image.display());
    let (stdout, stderr) = common::greedy_chat(&dir.join("model"), &script, 16);
    assert!(stdout.contains(c["generation"]["text"].as_str().unwrap()), "stdout: {stdout:?}");
    assert!(stderr.contains("/no/such.png") && stderr.contains("unknown command /bogus") && stderr.contains("history cleared"), "{stderr}");
}

#[test]
fn draw_boxes_writes_the_last_image() {
    let dir = fixture();
    let out = std::env::temp_dir().join(format!("iris-boxes-{}.png", std::process::id()));
    let image = dir.join("media/scene_200x150.png");
    let (code, _, stderr) = iris(&["run", "--model", dir.join("model").to_str().unwrap(), "--image", image.to_str().unwrap(), "--max-tokens", "2", "--draw-boxes", out.to_str().unwrap(), "Where?"]);
    assert_eq!(code, 0, "{stderr}");
    let written = image::open(&out).unwrap();
    assert_eq!((written.width(), written.height()), (200, 150));
    std::fs::remove_file(&out).unwrap();
}

#[test]
fn video_and_image_flags_keep_command_line_order() {
    let dir = fixture();
    let model = dir.join("model");
    let video = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../iris-engine/tests/data/counter_30f_10fps.mp4");
    let image = dir.join("media/grad_150x100.png");
    let (image_pad, video_pad) = (151655u64, 151656u64);
    for (flags, video_first) in [(["--video", "--image"], true), (["--image", "--video"], false)] {
        let path_of = |flag: &str| if flag == "--video" { video.to_str().unwrap() } else { image.to_str().unwrap() };
        let args = ["run", "--model", model.to_str().unwrap(), flags[0], path_of(flags[0]), flags[1], path_of(flags[1]), "--json", "--max-tokens", "2", "--temperature", "0", "Compare them."];
        let (code, stdout, stderr) = iris(&args);
        assert_eq!(code, 0, "{stderr}");
        let out: Value = serde_json::from_str(stdout.trim()).unwrap();
        let ids: Vec<u64> = out["prompt_token_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
        let first = |id: u64| ids.iter().position(|&x| x == id).unwrap_or_else(|| panic!("token {id} missing"));
        assert_eq!(first(video_pad) < first(image_pad), video_first, "{flags:?}");
        // 6 frames of 280x392 -> 420 video tokens
        assert_eq!(ids.iter().filter(|&&x| x == video_pad).count(), 420);
    }
}

#[test]
fn quantized_weights_are_cached_between_loads() {
    let cache = std::env::temp_dir().join(format!("iris-quant-cache-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let model = fixture().join("model");
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--model", model.to_str().unwrap(), "--quant", "q8_0", "--json", "--max-tokens", "8", "--temperature", "0"];
        args.extend_from_slice(extra);
        args.push("Describe the weather.");
        let out = common::iris_command().args(&args).env("IRIS_LOG", "iris_nn=info").output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        let json: Value = serde_json::from_slice(&out.stdout).unwrap();
        (json["token_ids"].clone(), stderr)
    };
    let dir = cache.to_str().unwrap();
    let (first, log) = run(&["--quant-cache", dir]);
    assert!(log.contains(" 0 matrices read,") && !log.contains(" 0 quantized and stored"), "{log}");
    let stored = std::fs::read_dir(&cache).unwrap().count();
    assert!(stored > 0, "nothing was cached");
    // the second load reads every matrix back and answers the same
    let (second, log) = run(&["--quant-cache", dir]);
    assert!(log.contains(&format!("{stored} matrices read, 0 quantized")), "{log}");
    assert_eq!(first, second);
    // --no-quant-cache neither reads nor reports a cache
    let (third, log) = run(&["--no-quant-cache"]);
    assert!(!log.contains("quantized-weight cache"), "{log}");
    assert_eq!(first, third);
    std::fs::remove_dir_all(&cache).unwrap();
}
