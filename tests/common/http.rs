//! Talking to the supervisor's HTTP server as an operator would: with `curl`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::wait_until;

/// A server's address (`http://127.0.0.1:PORT`) and the token, if any.
#[derive(Debug, Clone)]
pub struct Api {
    pub base: String,
    pub token: Option<String>,
}

/// An answer: status and body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub headers: String,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// The `error` of a JSON error answer.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {}", self.body))
            .to_string()
    }
}

impl Api {
    /// The server of the supervisor whose state dir is `state`, once it listens.
    pub fn of(state: &Path, token: Option<&str>) -> Api {
        let file = state.join("http.addr");
        let mut addr = String::new();
        wait_until(Duration::from_secs(10), || {
            addr = std::fs::read_to_string(&file).unwrap_or_default();
            addr.ends_with('\n')
        })
        .unwrap_or_else(|_| panic!("{} never appeared", file.display()));
        Api {
            base: format!("http://{}", addr.trim()),
            token: token.map(str::to_string),
        }
    }

    /// `method path` with `body`, the token as a bearer header if `auth`, and extra
    /// `headers`.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        auth: bool,
        headers: &[&str],
    ) -> Reply {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-S", "--max-time", "30", "-D", "-", "-X", method]);
        if let (true, Some(t)) = (auth, &self.token) {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        for h in headers {
            cmd.args(["-H", h]);
        }
        if body.is_some() {
            // No `Expect: 100-continue` (its interim answer would come first).
            cmd.args([
                "-H",
                "Content-Type: application/json",
                "-H",
                "Expect:",
                "--data-binary",
                "@-",
            ]);
        }
        cmd.arg(format!("{}{path}", self.base));
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("curl runs");
        {
            let mut stdin = child.stdin.take().unwrap();
            if let Some(b) = body {
                // A server that answers before reading it all (413) may close early.
                let _ = stdin.write_all(b);
            }
        }
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| {
            panic!(
                "no HTTP answer to {method} {path}: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {head}"));
        Reply {
            status,
            body: body.to_string(),
            headers: head.to_ascii_lowercase(),
        }
    }

    pub fn get(&self, path: &str) -> Reply {
        self.call("GET", path, None, false, &[])
    }

    pub fn post(&self, path: &str, body: &str) -> Reply {
        self.call("POST", path, Some(body.as_bytes()), true, &[])
    }

    /// `GET path`, which must answer 200 with JSON.
    pub fn get_json(&self, path: &str) -> Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        r.json()
    }
}
