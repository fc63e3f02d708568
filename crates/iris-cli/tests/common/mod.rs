//! Shared by the CLI integration tests: fixture paths and running the `iris` binary.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// `../shared/fixtures/NAME` (or `$IRIS_SHARED/fixtures/NAME`).
pub fn fixture(name: &str) -> PathBuf {
    let shared = std::env::var("IRIS_SHARED").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    shared.join("fixtures").join(name)
}

/// Runs `iris ARGS`: (exit code, stdout, stderr).
pub fn iris(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_iris")).args(args).output().unwrap();
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
