//! Shared by the CLI integration tests: fixture paths and running the `iris` binary.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// `../shared/fixtures/NAME` (or `$IRIS_SHARED/fixtures/NAME`).
pub fn fixture(name: &str) -> PathBuf {
    let shared = std::env::var("IRIS_SHARED").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    shared.join("fixtures").join(name)
}

/// The case `id` of a fixture directory's `cases.json` (a list, or `{"cases": [...]}`).
pub fn case(dir: &std::path::Path, id: &str) -> serde_json::Value {
    let cases: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let list = cases.get("cases").unwrap_or(&cases).as_array().unwrap();
    list.iter().find(|c| c["id"] == id).unwrap_or_else(|| panic!("no case {id} in {}", dir.display())).clone()
}

/// The `iris` binary, with its quantized-weight cache under the test target directory (so tests
/// never write to the user's cache).
pub fn iris_command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_iris"));
    c.env("IRIS_CACHE_DIR", PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("quant-cache")).env_remove("XDG_CACHE_HOME");
    c
}

/// Runs `iris ARGS`: (exit code, stdout, stderr).
pub fn iris(args: &[&str]) -> (i32, String, String) {
    let out = iris_command().args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Asserts each command fails with exactly one stderr line `error: ...` containing its needle.
pub fn assert_one_line_errors(cases: &[(Vec<&str>, &str)]) {
    for (args, needle) in cases {
        let (code, _, stderr) = iris(args);
        assert_ne!(code, 0, "{args:?} should fail");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: expected one line, got {stderr:?}");
        assert!(lines[0].starts_with("error: ") && lines[0].contains(needle), "{args:?}: {stderr:?}");
    }
}

/// Feeds `script` to `iris chat --model MODEL` (greedy, `max_tokens`); asserts a clean exit and
/// returns (stdout, stderr).
pub fn greedy_chat(model: &std::path::Path, script: &str, max_tokens: usize) -> (String, String) {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = iris_command()
        .args(["chat", "--model", model.to_str().unwrap(), "--max-tokens", &max_tokens.to_string(), "--temperature", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "{stderr}");
    (stdout, stderr)
}
pub mod server;
