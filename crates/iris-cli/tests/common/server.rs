//! A live `iris serve` child process on a free loopback port, and small HTTP helpers for the
//! server tests (plain requests, and Server-Sent-Events streams read event by event).

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Server {
    child: Child,
    pub base: String,
    pub log: Arc<Mutex<String>>,
}

impl Server {
    /// `iris serve --model MODEL --port 0 EXTRA...`, once it prints its address.
    pub fn start(model: &Path, extra: &[&str]) -> Server {
        let mut child = super::iris_command()
            .args(["serve", "--model", model.to_str().unwrap(), "--port", "0"])
            .args(extra)
            .env_remove("IRIS_API_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(String::new()));
        let base = loop {
            let line = lines.next().unwrap_or_else(|| panic!("iris serve exited early: {:?}", child.wait())).unwrap();
            log.lock().unwrap().push_str(&format!("{line}\n"));
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // keep draining stderr so the child never blocks on a full pipe
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        Server { child, base, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&mut self, name: &str) {
        let ok = Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success());
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(t0.elapsed() < timeout, "server did not exit; log:\n{}", self.log.lock().unwrap());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn agent() -> ureq::Agent {
        ureq::AgentBuilder::new().timeout(Duration::from_secs(120)).build()
    }

    fn finish(result: Result<ureq::Response, ureq::Error>) -> (u16, ureq::Response) {
        match result {
            Ok(r) => (r.status(), r),
            Err(ureq::Error::Status(code, r)) => (code, r),
            Err(e) => panic!("transport error: {e}"),
        }
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let (status, r) = Self::finish(Self::agent().get(&format!("{}{path}", self.base)).call());
        (status, r.into_json().unwrap_or(Value::Null))
    }

    pub fn get_text(&self, path: &str) -> String {
        Self::finish(Self::agent().get(&format!("{}{path}", self.base)).call()).1.into_string().unwrap()
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, &body.to_string(), None)
    }

    /// POSTs `body` as is, with `Authorization: Bearer KEY` when given.
    pub fn post_raw(&self, path: &str, body: &str, key: Option<&str>) -> (u16, Value) {
        let mut req = Self::agent().post(&format!("{}{path}", self.base)).set("Content-Type", "application/json");
        if let Some(k) = key {
            req = req.set("Authorization", &format!("Bearer {k}"));
        }
        let (status, r) = Self::finish(req.send_string(body));
        let text = r.into_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Status, JSON body and the Retry-After header.
    pub fn post_with_headers(&self, path: &str, body: &str) -> (u16, Value, Option<String>) {
        let (status, r) = Self::finish(Self::agent().post(&format!("{}{path}", self.base)).set("Content-Type", "application/json").send_string(body));
        let retry = r.header("Retry-After").map(String::from);
        (status, r.into_json().unwrap_or(Value::Null), retry)
    }

    /// Opens a streaming request (asserting 200).
    pub fn stream(&self, path: &str, body: &Value) -> Sse {
        let (status, r) = Self::finish(Self::agent().post(&format!("{}{path}", self.base)).set("Content-Type", "application/json").send_string(&body.to_string()));
        assert_eq!(status, 200, "{}", r.into_string().unwrap_or_default());
        assert!(r.content_type().starts_with("text/event-stream"));
        Sse { lines: BufReader::new(r.into_reader()), saw_done: false }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An SSE response read event by event; dropping it closes the connection.
pub struct Sse {
    lines: BufReader<Box<dyn Read + Send + Sync + 'static>>,
    pub saw_done: bool,
}

impl Sse {
    /// The next `data:` event as JSON (None after `[DONE]` or at the end).
    pub fn next_event(&mut self) -> Option<Value> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.lines.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let Some(data) = line.trim_end().strip_prefix("data: ") else { continue };
            if data == "[DONE]" {
                self.saw_done = true;
                return None;
            }
            return Some(serde_json::from_str(data).unwrap());
        }
    }

    pub fn collect_all(&mut self) -> Vec<Value> {
        std::iter::from_fn(|| self.next_event()).collect()
    }
}
