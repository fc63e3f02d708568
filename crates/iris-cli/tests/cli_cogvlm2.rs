//! The `iris` binary end to end on the tiny CogVLM2 fixture: the family comes from `config.json`,
//! `--template` picks the prompt, `--json` equals the golden greedy tokens, `iris chat` answers
//! like the reference's first turn, and what CogVLM2 cannot do is one readable error line.

use serde_json::Value;
use std::path::PathBuf;

mod common;
use common::iris;

fn fixture() -> PathBuf {
    common::fixture("cogvlm2-tiny")
}

fn case(id: &str) -> Value {
    common::case(&fixture(), id)
}

#[test]
fn run_json_with_vqa_template_matches_the_fixture() {
    let dir = fixture();
    let c = case("c5_image_vqa");
    let image = dir.join("media/a5_quadrants_small.png");
    let model = dir.join("model");
    let (code, stdout, stderr) = iris(&[
        "run", "--model", model.to_str().unwrap(), "--image", image.to_str().unwrap(), "--template", "vqa",
        "--json", "--max-tokens", "16", "--temperature", "0", "How many coloured regions are there?",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let out: Value = serde_json::from_str(stdout.trim()).expect("exactly one JSON object on stdout");
    assert_eq!(out["prompt_token_ids"], c["input_ids"]);
    assert_eq!(out["token_ids"], c["generation"]["output_ids"]);
    assert_eq!(out["text"], c["generation"]["output_text"]);
    assert_eq!(out["usage"]["prompt_tokens"], c["input_ids"].as_array().unwrap().len());
    assert_eq!(out["boxes"], serde_json::json!([]));
}

#[test]
fn chat_first_turn_matches_and_a_second_image_is_refused_without_ending_the_session() {
    let dir = fixture();
    let c = case("c1_image_chat");
    let first = dir.join("media/a1_gradient_shapes.png");
    let second = dir.join("media/a2_stripes_triangle.png");
    let script = format!("/image {}\nWhat is in this picture?\n/image {}\nAnd this one?\n/quit\n", first.display(), second.display());
    let (stdout, stderr) = common::greedy_chat(&dir.join("model"), &script, 16);
    assert!(stdout.contains(c["generation"]["output_text"].as_str().unwrap()), "stdout: {stdout:?}");
    assert!(stderr.contains("cogvlm2") && stderr.contains("at most 1 image"), "{stderr}");
}

#[test]
fn unsupported_requests_are_one_line_errors() {
    let dir = fixture();
    let model = dir.join("model");
    let model = model.to_str().unwrap();
    let a = dir.join("media/a1_gradient_shapes.png");
    let b = dir.join("media/a4_checker_rings.png");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["run", "--model", model, "--image", a.to_str().unwrap(), "--image", b.to_str().unwrap(), "Compare."], "at most 1 image"),
        (vec!["run", "--model", model, "--image", a.to_str().unwrap(), "--max-pixels", "1000", "hi"], "max_pixels"),
    ];
    common::assert_one_line_errors(&cases);
}
