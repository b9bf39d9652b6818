//! A Loki push receiver for tests: `fixtures/loki_receiver.py` run by
//! `/usr/bin/python3` (Debian's python3-protobuf and python3-snappy decode
//! independently of our Rust code) on a free loopback port. It records every
//! request as a JSON line and can be told to fail the next N pushes.

use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::WAIT;
use crate::prometheus::http_call;

pub struct LokiReceiver {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl LokiReceiver {
    /// Starts the receiver and waits (bounded) until it listens.
    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/loki_receiver.py");
        let stderr = std::fs::File::create(dir.path().join("stderr"))?;
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .arg(dir.path().join("requests.jsonl"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("start the Loki receiver (/usr/bin/python3)")?;
        let stdout = child.stdout.take().context("receiver stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(WAIT).unwrap_or_default();
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|p| p.parse().ok());
        let mut receiver = Self {
            port: 0,
            child,
            dir,
        };
        match port {
            Some(port) => receiver.port = port,
            None => bail!(
                "Loki receiver did not start ({line:?}); stderr: {}",
                std::fs::read_to_string(receiver.dir.path().join("stderr")).unwrap_or_default()
            ),
        }
        Ok(receiver)
    }

    pub fn push_url(&self) -> String {
        format!("http://127.0.0.1:{}/loki/api/v1/push", self.port)
    }

    /// The next `count` pushes answer `status` (with `Retry-After` when given).
    pub fn fail_next(
        &self,
        status: u16,
        count: usize,
        retry_after_s: Option<u32>,
    ) -> anyhow::Result<()> {
        let spec = serde_json::json!({
            "status": status,
            "count": count,
            "retry_after": retry_after_s,
            "body": format!("injected {status}"),
        });
        let (code, body) = http_call("POST", self.port, "/control", spec.to_string().as_bytes())?;
        if code != 200 {
            bail!("control: {code} {body}");
        }
        Ok(())
    }

    fn record_path(&self) -> PathBuf {
        self.dir.path().join("requests.jsonl")
    }

    /// Every request so far, in arrival order (see the script for the shape).
    pub fn requests(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let text = std::fs::read_to_string(self.record_path()).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).context("receiver record"))
            .collect()
    }

    /// Waits (polling, bounded by `WAIT`) until `done` holds for the requests.
    pub fn wait_for(
        &self,
        mut done: impl FnMut(&[serde_json::Value]) -> bool,
    ) -> anyhow::Result<Vec<serde_json::Value>> {
        let deadline = Instant::now() + WAIT;
        loop {
            let requests = self.requests()?;
            if done(&requests) {
                return Ok(requests);
            }
            if Instant::now() >= deadline {
                bail!("receiver condition not met within {WAIT:?}; requests: {requests:#?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for LokiReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
