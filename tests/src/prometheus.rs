//! A real Prometheus (Debian's 2.42, `prometheus` on PATH) as a remote-write
//! receiver on a free loopback port with a temporary data dir; it can be
//! stopped and started again on the same port and data (an outage), and is
//! killed on drop. Also a tiny blocking HTTP/1.0 client for test harnesses.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::WAIT;

/// One HTTP/1.0 request to 127.0.0.1:`port` (the server closes the
/// connection, so no chunked bodies); returns (status, body). Bounded by `WAIT`.
pub fn http_call(
    method: &str,
    port: u16,
    path_and_query: &str,
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(WAIT))?;
    stream.set_write_timeout(Some(WAIT))?;
    write!(
        stream,
        "{method} {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("HTTP response without header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("HTTP response without status")?;
    Ok((status, body.to_owned()))
}

/// Percent-encodes a query parameter value.
pub fn url_encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub struct Prometheus {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus with the remote-write receiver and waits until ready.
    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("data"))?;
        std::fs::write(
            dir.path().join("prometheus.yml"),
            "global:\n  scrape_interval: 15s\nscrape_configs: []\n",
        )?;
        let mut prom = Self {
            port: crate::free_port()?,
            child: None,
            dir,
        };
        prom.start_again()?;
        Ok(prom)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("prometheus.log")
    }

    /// Starts the (stopped) server on the same port and data dir; waits until ready.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("prometheus is already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                self.dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .arg("--web.enable-remote-write-receiver")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start prometheus (apt-get install prometheus)")?;
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        // Bounded: until ready, exited, or WAIT.
        loop {
            if let Ok((200, _)) = http_call("GET", self.port, "/-/ready", b"") {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                bail!("prometheus exited ({status}): {}", self.log());
            }
            if Instant::now() >= deadline {
                bail!("prometheus not ready within {WAIT:?}: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM and a bounded wait for the exit (then SIGKILL): an outage.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + WAIT;
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The remote-write URL.
    pub fn write_url(&self) -> String {
        format!("http://127.0.0.1:{}/api/v1/write", self.port)
    }

    /// The log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `GET /api/v1/query?query=EXPR` → `data.result` (vector or matrix).
    pub fn query(&self, expr: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let (status, body) = http_call(
            "GET",
            self.port,
            &format!("/api/v1/query?query={}", url_encode(expr)),
            b"",
        )?;
        let answer: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("query answer {body}"))?;
        if status != 200 || answer["status"] != "success" {
            bail!("query {expr}: {status} {body}");
        }
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
