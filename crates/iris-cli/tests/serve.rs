//! `iris serve` live on loopback with the tiny fixture models, driven over HTTP: greedy answers
//! equal the fixture (whole and streamed, image by data: URL and by path under --media-dir),
//! logprobs, the encoder cache on a second turn, every refusal of the issue (401, 400s, 413s,
//! 429) answered as OpenAI-style JSON while the server keeps serving, cancellation on client
//! disconnect, and graceful shutdown on SIGTERM.

use base64::Engine as _;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod common;
use common::case;
use common::server::Server;

fn qwen() -> PathBuf {
    common::fixture("qwen2-vl-tiny")
}

fn data_url(path: &std::path::Path) -> String {
    format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap()))
}

/// A case's messages with every `image` part turned into an `image_url` part by `url(path)`.
fn messages_with(c: &Value, url: impl Fn(&str) -> String) -> Value {
    let mut messages = c["request"]["messages"].clone();
    for m in messages.as_array_mut().unwrap() {
        if let Some(parts) = m["content"].as_array_mut() {
            for p in parts {
                if let Some(img) = p.get("image").and_then(|i| i.as_str()).map(String::from) {
                    *p = json!({"type": "image_url", "image_url": {"url": url(&img)}});
                }
            }
        }
    }
    messages
}

#[test]
fn answers_equal_the_fixture_whole_and_streamed() {
    let dir = qwen();
    let server = Server::start(&dir.join("model"), &["--media-dir", dir.to_str().unwrap(), "--served-model-name", "tiny"]);
    let c = case(&dir, "c1_image_question");
    let want = c["generation"]["text"].as_str().unwrap();
    let by_data = messages_with(&c, |p| data_url(&dir.join(p)));
    let body = json!({"model": "tiny", "messages": by_data, "max_tokens": 16, "temperature": 0, "logprobs": true, "top_logprobs": 3});
    let (status, out) = server.post("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["object"], "chat.completion");
    assert_eq!(out["choices"][0]["message"]["content"], want);
    assert_eq!(out["choices"][0]["finish_reason"], "length");
    assert_eq!(out["usage"]["prompt_tokens"], c["num_prompt_tokens"], "image tokens are counted");
    assert_eq!(out["usage"]["completion_tokens"], 16);
    let lps = out["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(lps.len(), 16);
    for lp in lps {
        let top = lp["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0]["logprob"], lp["logprob"], "greedy picks the most likely token");
    }

    // streamed, image by path under --media-dir
    let by_path = messages_with(&c, |p| p.to_string());
    let body = json!({"model": "tiny", "messages": by_path, "max_tokens": 16, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}});
    let events = server.stream("/v1/chat/completions", &body).collect_all();
    assert_eq!(events.first().unwrap()["choices"][0]["delta"]["role"], "assistant");
    let text: String = events.iter().filter_map(|e| e["choices"].get(0).and_then(|c| c["delta"]["content"].as_str())).collect();
    assert_eq!(text, want);
    let finish: Vec<_> = events.iter().filter_map(|e| e["choices"].get(0).and_then(|c| c["finish_reason"].as_str())).collect();
    assert_eq!(finish, vec!["length"]);
    let usage = events.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], c["num_prompt_tokens"]);

    // a follow-up about the same image reuses its encoding
    let mut turn2 = by_data.clone();
    turn2.as_array_mut().unwrap().extend([json!({"role": "assistant", "content": want}), json!({"role": "user", "content": "And the colours?"})]);
    let (status, out) = server.post("/v1/chat/completions", &json!({"messages": turn2, "max_tokens": 4, "temperature": 0}));
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["timings"]["cached_media"], 1, "{out}");

    let (status, models) = server.get("/v1/models");
    assert_eq!((status, models["data"][0]["id"].as_str()), (200, Some("tiny")));
    assert_eq!(server.get("/health").0, 200);
    let metrics = server.get_text("/metrics");
    for needle in ["iris_requests_total{status=\"200\"} 3", "iris_time_to_first_token_seconds_count 3", "iris_encoder_cache_hits_total 2"] {
        assert!(metrics.contains(needle), "metrics lack {needle}:\n{metrics}");
    }
    // the gauge is sampled: the scheduler removes a sequence just after sending its last event
    wait_for(&server, "iris_running_sequences 0");
}

#[test]
fn every_refusal_is_openai_json_and_the_server_keeps_serving() {
    let dir = qwen();
    let server = Server::start(&dir.join("model"), &["--api-key", "sekrit", "--max-body-mb", "1", "--max-image-pixels", "100000", "--media-dir", dir.join("media").to_str().unwrap()]);
    let img = |url: String| json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "hi"}]}]);
    let ok_body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let garbage = format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(b"not an image at all"));
    let cases: Vec<(&str, Option<&str>, String, u16, &str)> = vec![
        ("no key", None, ok_body.to_string(), 401, "API key"),
        ("wrong key", Some("nope"), ok_body.to_string(), 401, "invalid API key"),
        ("malformed JSON", Some("sekrit"), "{\"messages\": [".into(), 400, "not valid JSON"),
        ("wrong type", Some("sekrit"), json!({"messages": [], "temperature": "hot"}).to_string(), 400, "temperature"),
        ("bad role", Some("sekrit"), json!({"messages": [{"role": "robot", "content": "x"}]}).to_string(), 400, "messages[0].role"),
        ("unknown model", Some("sekrit"), json!({"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}).to_string(), 400, "gpt-9"),
        ("undecodable image", Some("sekrit"), json!({"messages": img(garbage)}).to_string(), 400, "not a supported image format"),
        ("outside media dir", Some("sekrit"), json!({"messages": img("../cases.json".into())}).to_string(), 400, "inside the media directory"),
        ("remote off", Some("sekrit"), json!({"messages": img("http://127.0.0.1:9/x.png".into())}).to_string(), 400, "remote URLs"),
        ("image over pixels", Some("sekrit"), json!({"messages": img("photo_640x480.png".into())}).to_string(), 413, "over the limit of 100000"),
        ("body over limit", Some("sekrit"), json!({"messages": [{"role": "user", "content": "x".repeat(2 << 20)}]}).to_string(), 413, "--max-body-mb"),
        ("bad max_pixels", Some("sekrit"), json!({"messages": img("grad_150x100.png".into()), "min_pixels": 90000, "max_pixels": 1000}).to_string(), 400, "min_pixels"),
        ("upscale bomb", Some("sekrit"), json!({"messages": img("grad_150x100.png".into()), "min_pixels": 10_000_000_000u64, "max_pixels": 10_000_000_000u64}).to_string(), 413, "min_pixels"),
    ];
    for (what, key, body, status, needle) in &cases {
        let (got, out) = server.post_raw("/v1/chat/completions", body, *key);
        assert_eq!(got, *status, "{what}: {out}");
        let e = &out["error"];
        assert!(e["message"].as_str().unwrap().contains(needle), "{what}: {out}");
        assert!(e["type"].is_string() && e.get("param").is_some() && e.get("code").is_some(), "{what}: {out}");
        // still serving
        assert_eq!(server.get("/health").0, 200, "after {what}");
    }
    assert_eq!(server.get("/no/such/route").0, 404);
    let (status, out) = server.post_raw("/v1/chat/completions", &ok_body.to_string(), Some("sekrit"));
    assert_eq!(status, 200, "{out}");
    // a temperature too small to divide by is greedy, not a failure of the batch
    let tiny_t = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 1e-45});
    let (status, out) = server.post_raw("/v1/chat/completions", &tiny_t.to_string(), Some("sekrit"));
    assert_eq!(status, 200, "{out}");
    let metrics = server.get_text("/metrics");
    for needle in ["status=\"401\"} 2", "status=\"413\"} 3", "status=\"200\"} 2"] {
        assert!(metrics.contains(needle), "metrics lack {needle}:\n{metrics}");
    }
}

#[test]
fn full_queue_is_429_with_retry_after_and_a_gone_client_frees_its_sequence() {
    let dir = qwen();
    let server = Server::start(&dir.join("model"), &["--max-running", "1", "--max-queue", "1"]);
    let long = json!({"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 4000, "temperature": 0, "stream": true});
    // one running, one waiting: the third is refused
    let mut first = server.stream("/v1/chat/completions", &long);
    first.next_event().expect("the first stream starts");
    wait_for(&server, "iris_running_sequences 1");
    wait_for(&server, "iris_queue_depth 0");
    let second = server.stream("/v1/chat/completions", &long);
    wait_for(&server, "iris_queue_depth 1");
    let (status, out, retry) = server.post_with_headers("/v1/chat/completions", &long.to_string());
    assert_eq!(status, 429, "{out}");
    assert_eq!(out["error"]["type"], "rate_limit_error");
    assert_eq!(retry.as_deref(), Some("1"));
    // both clients leave: their sequences are dropped and their KV released
    drop(first);
    drop(second);
    wait_for(&server, "iris_running_sequences 0");
    wait_for(&server, "iris_kv_reserved_bytes 0");
    wait_for(&server, "iris_queue_depth 0");
    let (status, _) = server.post("/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}));
    assert_eq!(status, 200);
}

#[test]
fn sigterm_finishes_running_streams_then_exits() {
    let dir = qwen();
    let mut server = Server::start(&dir.join("model"), &[]);
    let body = json!({"messages": [{"role": "user", "content": "Count slowly."}], "max_tokens": 300, "temperature": 0, "stream": true});
    let mut stream = server.stream("/v1/chat/completions", &body);
    stream.next_event().unwrap();
    server.signal("TERM");
    let rest = stream.collect_all();
    let finish: Vec<_> = rest.iter().filter_map(|e| e["choices"].get(0).and_then(|c| c["finish_reason"].as_str())).collect();
    assert_eq!(finish, vec!["length"], "the in-flight stream ran to its end");
    assert!(stream.saw_done);
    let status = server.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
}

#[test]
fn cogvlm2_serves_its_fixture_and_refuses_two_images_and_overlong_prompts() {
    let dir = common::fixture("cogvlm2-tiny");
    let server = Server::start(&dir.join("model"), &[]);
    let c = case(&dir, "c1_image_chat");
    let messages = messages_with(&c, |p| data_url(&dir.join(p)));
    let (status, out) = server.post("/v1/chat/completions", &json!({"messages": messages, "max_tokens": 16, "temperature": 0, "template": "chat"}));
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["choices"][0]["message"]["content"], c["generation"]["output_text"]);
    let url = data_url(&dir.join("media/a1_gradient_shapes.png"));
    let two = json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}]}]);
    let (status, out) = server.post("/v1/chat/completions", &json!({"messages": two}));
    assert_eq!(status, 400, "{out}");
    assert!(out["error"]["message"].as_str().unwrap().contains("at most 1 image"), "{out}");
    let long = "word ".repeat(9000);
    let (status, out) = server.post("/v1/chat/completions", &json!({"messages": [{"role": "user", "content": long}]}));
    assert_eq!(status, 400, "{out}");
    assert!(out["error"]["message"].as_str().unwrap().contains("context"), "{out}");
    assert_eq!(server.get("/health").0, 200);
}

fn wait_for(server: &Server, needle: &str) {
    let t0 = Instant::now();
    loop {
        let m = server.get_text("/metrics");
        if m.contains(needle) {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "metrics never showed {needle}:\n{m}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `python3 -m http.server` on a free port in `dir`; killed on drop.
struct StaticFiles(std::process::Child, u16);

impl StaticFiles {
    fn start(dir: &std::path::Path) -> StaticFiles {
        use std::io::BufRead;
        let mut child = std::process::Command::new("python3")
            .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1"])
            .current_dir(dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.split("port ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap().parse().unwrap();
        StaticFiles(child, port)
    }
}

impl Drop for StaticFiles {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn remote_images_and_video_frames_by_path() {
    let dir = qwen();
    let files = StaticFiles::start(&dir);
    let server = Server::start(&dir.join("model"), &["--allow-remote-media", "--max-remote-mb", "1", "--media-dir", dir.to_str().unwrap()]);
    let c = case(&dir, "c1_image_question");
    let remote = messages_with(&c, |p| format!("http://127.0.0.1:{}/{p}", files.1));
    let (status, out) = server.post("/v1/chat/completions", &json!({"messages": remote, "max_tokens": 16, "temperature": 0}));
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["choices"][0]["message"]["content"], c["generation"]["text"]);
    // a download over --max-remote-mb (1 MiB here) is 413 whatever the file holds
    let big_dir = std::env::temp_dir().join(format!("iris-remote-{}", std::process::id()));
    std::fs::create_dir_all(&big_dir).unwrap();
    std::fs::write(big_dir.join("big.png"), vec![0u8; 3 << 20]).unwrap();
    let big_files = StaticFiles::start(&big_dir);
    let big = messages_with(&c, |_| format!("http://127.0.0.1:{}/big.png", big_files.1));
    let (status, out) = server.post("/v1/chat/completions", &json!({"messages": big}));
    assert_eq!(status, 413, "{out}");
    assert!(out["error"]["message"].as_str().unwrap().contains("over the limit of 1 MiB"), "{out}");
    let _ = std::fs::remove_dir_all(&big_dir);
    let missing = messages_with(&c, |_| format!("http://127.0.0.1:{}/no-such.png", files.1));
    let (status, out) = server.post("/v1/chat/completions", &json!({"messages": missing}));
    assert_eq!(status, 400, "{out}");
    assert!(out["error"]["message"].as_str().unwrap().contains("download failed"), "{out}");
    // a video given as frame paths under --media-dir, as the fixture case
    let v = case(&dir, "c6_video");
    let (status, out) = server.post("/v1/chat/completions", &json!({"messages": v["request"]["messages"], "max_tokens": 16, "temperature": 0}));
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["choices"][0]["message"]["content"], v["generation"]["text"]);
    assert_eq!(out["usage"]["prompt_tokens"], v["num_prompt_tokens"]);
}
