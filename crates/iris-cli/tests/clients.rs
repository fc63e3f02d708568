//! Real clients against a live `iris serve` on the tiny Qwen2-VL fixture: the official `openai`
//! Python package, `curl`, the web page in headless Chromium, and a load test of 32 concurrent
//! streaming clients with random cancellations (no unexpected errors, nothing left running, RSS
//! back near its baseline). The tools come from `tools/clients/setup.sh`; without them each test
//! prints SKIPPED, unless IRIS_REQUIRE_CLIENT_TESTS=1 (as `.ci/run` sets) makes that a failure.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::server::Server;

fn tools() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/clients")
}

/// True when `path` exists; otherwise SKIPPED (or a failure when the client tests are required).
fn have(what: &str, path: &Path) -> bool {
    if path.exists() {
        return true;
    }
    let msg = format!("{what} not installed at {} (run tools/clients/setup.sh)", path.display());
    assert!(std::env::var("IRIS_REQUIRE_CLIENT_TESTS").as_deref() != Ok("1"), "{msg}");
    eprintln!("SKIPPED: {msg}");
    false
}

fn fixture() -> (PathBuf, PathBuf, String) {
    let dir = common::fixture("qwen2-vl-tiny");
    let c = common::case(&dir, "c1_image_question");
    (dir.join("model"), dir.join("media/grad_150x100.png"), c["generation"]["text"].as_str().unwrap().to_string())
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    println!("{stdout}{stderr}");
    assert!(out.status.success(), "{cmd:?} failed:\n{stdout}\n{stderr}");
    stdout
}

#[test]
fn official_openai_python_client() {
    let python = tools().join(".venv/bin/python");
    if !have("the openai Python package", &python) {
        return;
    }
    let (model, image, expected) = fixture();
    let server = Server::start(&model, &["--api-key", "k", "--served-model-name", "tiny"]);
    run(Command::new(python).arg(tools().join("openai_client.py")).args([&server.base, "tiny", image.to_str().unwrap(), &expected, "k"]));
}

#[test]
fn curl_stream_and_whole() {
    if !have("curl", Path::new("/usr/bin/curl")) {
        return;
    }
    let (model, image, expected) = fixture();
    let server = Server::start(&model, &["--media-dir", image.parent().unwrap().to_str().unwrap()]);
    let body = |stream: bool| {
        serde_json::json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "grad_150x100.png"}}, {"type": "text", "text": "What is in this image?"}]}], "max_tokens": 16, "temperature": 0, "stream": stream}).to_string()
    };
    let url = format!("{}/v1/chat/completions", server.base);
    let curl = |b: String| run(Command::new("curl").args(["-sS", "-N", "--fail-with-body", "-H", "Content-Type: application/json", "-d", &b, &url]));
    let whole: Value = serde_json::from_str(&curl(body(false))).unwrap();
    assert_eq!(whole["choices"][0]["message"]["content"], expected.as_str());
    let streamed = curl(body(true));
    let text: String = streamed
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["choices"].get(0).and_then(|c| c["delta"]["content"].as_str()).map(String::from))
        .collect();
    assert_eq!(text, expected);
    assert!(streamed.trim_end().ends_with("data: [DONE]"), "{streamed}");
}

#[test]
fn web_page_streams_an_answer_in_headless_chromium() {
    let playwright = tools().join("node_modules/playwright-core");
    if !have("playwright-core", &playwright) || !have("Debian chromium", Path::new("/usr/bin/chromium")) {
        return;
    }
    let (model, image, expected) = fixture();
    let server = Server::start(&model, &["--api-key", "web-key"]);
    run(Command::new("node").arg(tools().join("web_e2e.mjs")).args([&server.base, image.to_str().unwrap(), &expected, "web-key"]));
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
}

/// Nothing stuck: every sequence ended and released its KV reservation.
fn wait_until_idle(server: &Server) {
    let t0 = Instant::now();
    loop {
        let m = server.get_text("/metrics");
        if ["iris_running_sequences 0", "iris_queue_depth 0", "iris_kv_reserved_bytes 0"].iter().all(|n| m.contains(n)) {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "sequences left running:\n{m}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn thirty_two_streaming_clients_with_cancellations() {
    let python = tools().join(".venv/bin/python");
    if !have("the Python venv (httpx)", &python) {
        return;
    }
    let seconds = std::env::var("IRIS_LOADTEST_SECONDS").unwrap_or_else(|_| "20".into());
    let (model, image, _) = fixture();
    let server = Server::start(&model, &["--max-queue", "16"]);
    // warm up at the same concurrency so the baseline includes the allocator's steady state for
    // this load (thread heaps of every worker; 4 clients left it ~100 MiB short), and what is
    // measured after the long run is growth with the number of requests served
    run(Command::new(&python).arg(tools().join("loadtest.py")).args([&server.base, "--clients", "32", "--seconds", "5", "--cancel-rate", "0.25", "--image", image.to_str().unwrap()]));
    wait_until_idle(&server);
    let baseline = rss_kib(server.pid());
    let out = run(Command::new(&python).arg(tools().join("loadtest.py")).args([&server.base, "--clients", "32", "--seconds", &seconds, "--cancel-rate", "0.25", "--image", image.to_str().unwrap()]));
    let report: Value = serde_json::from_str(out.trim().lines().last().unwrap()).unwrap();
    assert_eq!(report["errors"], 0, "{report}");
    assert!(report["completed"].as_u64().unwrap() > 0 && report["cancelled"].as_u64().unwrap() > 0, "{report}");
    wait_until_idle(&server);
    let after = rss_kib(server.pid());
    println!("RSS: baseline {} MiB, after the load test {} MiB", baseline / 1024, after / 1024);
    assert!(after <= baseline + baseline / 2 + 64 * 1024, "RSS grew from {baseline} KiB to {after} KiB");
    assert_eq!(server.get("/health").0, 200);
}
