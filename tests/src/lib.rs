//! Test support: the multi-process fleet harness used by the `e2e` tests.
//! Each test gets its own temporary directory, coordinator and agents, all on
//! loopback; processes are killed when their handles drop. Waits are bounded
//! and driven by events (log lines, process exits), never by fixed sleeps.
//!
//! The Dokku stand-in itself is the `fake-dokku` binary (`src/bin/fake-dokku`).

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

pub mod loki;
pub mod prometheus;

/// Longest wait for any one event in a test.
pub const WAIT: Duration = Duration::from_secs(60);

/// A workspace binary (`flotilla-server`, `flotilla-agent`, `flotilla`, `fake-dokku`)
/// in the same target directory as the running executable (test binaries live
/// one level down, in `deps/`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let mut dir = exe.parent().expect("executable directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing; build the workspace first (cargo build --workspace)",
        path.display()
    );
    path
}

/// Lines a child process wrote to stderr, collected by a reader thread.
#[derive(Clone, Default)]
pub struct LogWatch {
    inner: Arc<(Mutex<Vec<String>>, Condvar)>,
    /// Set when the stream ended (the process exited).
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl LogWatch {
    fn follow(&self, stream: impl std::io::Read + Send + 'static, echo: String) {
        let inner = Arc::clone(&self.inner);
        let closed = Arc::clone(&self.closed);
        std::thread::spawn(move || {
            let (lines, cv) = &*inner;
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                eprintln!("[{echo}] {line}");
                if let Ok(mut lines) = lines.lock() {
                    lines.push(line);
                }
                cv.notify_all();
            }
            // Take the lock so a waiter cannot miss this between its check and its wait.
            let _guard = lines.lock();
            closed.store(true, std::sync::atomic::Ordering::SeqCst);
            cv.notify_all();
        });
    }

    /// Waits until a line containing `needle` appears at index >= `from`;
    /// returns its index.
    pub fn wait_for_from(&self, needle: &str, from: usize) -> anyhow::Result<usize> {
        self.wait_for_all(&[needle], from)
    }

    /// Waits until a line containing every one of `needles` appears at index
    /// >= `from`; returns its index.
    pub fn wait_for_all(&self, needles: &[&str], from: usize) -> anyhow::Result<usize> {
        let deadline = Instant::now() + WAIT;
        let (lines, cv) = &*self.inner;
        let mut guard = lines.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let needle = needles.join("\" … \"");
        loop {
            if let Some(i) = guard
                .iter()
                .skip(from)
                .position(|l| needles.iter().all(|n| l.contains(n)))
            {
                return Ok(from + i);
            }
            if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
                bail!("the process exited without logging a line containing {needle:?}");
            }
            let now = Instant::now();
            if now >= deadline {
                bail!("timed out after {WAIT:?} waiting for a log line containing {needle:?}");
            }
            guard = cv
                .wait_timeout(guard, deadline - now)
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .0;
        }
    }

    pub fn wait_for(&self, needle: &str) -> anyhow::Result<usize> {
        self.wait_for_from(needle, 0)
    }

    pub fn len(&self) -> usize {
        self.inner.0.lock().map(|l| l.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.inner
            .0
            .lock()
            .map(|l| l.iter().filter(|line| line.contains(needle)).count())
            .unwrap_or(0)
    }

    /// How many lines contain both `a` and `b`.
    pub fn count_both(&self, a: &str, b: &str) -> usize {
        self.inner
            .0
            .lock()
            .map(|l| {
                l.iter()
                    .filter(|line| line.contains(a) && line.contains(b))
                    .count()
            })
            .unwrap_or(0)
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.inner
            .0
            .lock()
            .map(|l| l.iter().any(|line| line.contains(needle)))
            .unwrap_or(false)
    }
}

/// Kills the process (and its process group) on drop.
pub struct Proc {
    child: Child,
    pub log: LogWatch,
}

impl Proc {
    fn spawn(mut cmd: Command, label: &str) -> anyhow::Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("RUST_BACKTRACE", "0")
            .env("FLOTILLA_LOG", "info");
        let mut child = cmd.spawn().with_context(|| format!("start {label}"))?;
        let log = LogWatch::default();
        if let Some(stderr) = child.stderr.take() {
            log.follow(stderr, label.to_owned());
        }
        Ok(Self { child, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL to the process and every descendant (dokku runs in a process
    /// group of its own), as systemd's KillMode=control-group would; then reap.
    pub fn kill9(&mut self) {
        // The process first, so it cannot observe its children dying.
        let mut pids = vec![self.child.id()];
        pids.extend(descendants(self.child.id()));
        for pid in pids {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = self.child.wait();
    }

    /// SIGTERM and wait (bounded) for a clean exit.
    pub fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        wait_exit(&mut self.child, WAIT)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill9();
        }
    }
}

/// Every descendant of `pid`, from /proc (children before grandchildren).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parents = std::collections::HashMap::<u32, Vec<u32>>::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid …`; comm may contain spaces, so split after ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parents.entry(ppid).or_default().push(child);
            }
        }
    }
    let mut out = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        for &c in parents.get(&p).map(Vec::as_slice).unwrap_or_default() {
            out.push(c);
            queue.push(c);
        }
    }
    out
}

fn wait_exit(child: &mut Child, limit: Duration) -> anyhow::Result<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            bail!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A free loopback port below Linux's ephemeral range (32768+), so no outgoing
/// connection can take it between a coordinator's stop and its restart.
pub fn free_port() -> anyhow::Result<u16> {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut seed = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    for _ in 0..200 {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let port = 20_000 + (seed >> 33) as u16 % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port found in 20000-31999")
}

/// Runs a command to completion with a time limit; captures its output.
pub fn run(mut cmd: Command) -> anyhow::Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_BACKTRACE", "0");
    let child = cmd.spawn().context("spawn")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(WAIT) {
        Ok(out) => Ok(out?),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            bail!("command timed out after {WAIT:?}: {cmd:?}")
        }
    }
}

/// A coordinator data directory plus a running `flotilla-server serve`.
pub struct Server {
    pub data_dir: PathBuf,
    pub addr: String,
    pub proc: Proc,
}

impl Server {
    /// `flotilla-server init` into `root/server`.
    pub fn init(root: &Path) -> anyhow::Result<PathBuf> {
        Self::init_with(root, &[])
    }

    /// `flotilla-server init EXTRA…` into `root/server`.
    pub fn init_with(root: &Path, extra: &[&str]) -> anyhow::Result<PathBuf> {
        let data_dir = root.join("server");
        let mut cmd = Command::new(bin("flotilla-server"));
        cmd.arg("init").arg("--data-dir").arg(&data_dir).args(extra);
        let out = run(cmd)?;
        if !out.status.success() {
            bail!("init failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(data_dir)
    }

    /// Starts `serve` on `listen` (use `127.0.0.1:0` for any port) and waits
    /// until it listens.
    pub fn start(data_dir: &Path, listen: &str, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_env(data_dir, listen, extra, &[])
    }

    /// `start` with extra environment variables (e.g. secrets server.toml names).
    pub fn start_with_env(
        data_dir: &Path,
        listen: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(bin("flotilla-server"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", listen])
            .args(extra)
            .envs(env.iter().copied());
        let proc = Proc::spawn(cmd, "server")?;
        let i = proc.log.wait_for("coordinator listening")?;
        let line = proc
            .log
            .inner
            .0
            .lock()
            .map(|l| l[i].clone())
            .unwrap_or_default();
        let addr = line
            .split("addr=")
            .nth(1)
            .map(|s| s.split_whitespace().next().unwrap_or_default().to_owned())
            .context("listening address in the log")?;
        Ok(Self {
            data_dir: data_dir.to_owned(),
            addr,
            proc,
        })
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .expect("admin.token")
            .trim()
            .to_owned()
    }

    /// A `flotilla` command pointed at this server with `token`.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("flotilla"));
        cmd.env("FLOTILLA_SERVER", self.url())
            .env("FLOTILLA_CA_CERT", self.data_dir.join("ca.pem"))
            .env("FLOTILLA_TOKEN", token)
            .env_remove("FLOTILLA_TOKEN_FILE")
            .args(args);
        cmd
    }

    /// Runs `flotilla ARGS` as admin.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        run(self.cli_as(&self.admin_token(), args))
    }

    /// Runs `flotilla ARGS --output json` as admin and parses stdout.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let out = self.cli(&all)?;
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "flotilla {args:?} did not print JSON: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    pub fn join_token(&self) -> anyhow::Result<String> {
        let out = self.cli(&["join-token", "create"])?;
        if !out.status.success() {
            bail!(
                "join-token create: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }
}

/// One simulated Dokku host: a joined agent directory and its `DOKKU_ROOT`.
pub struct Host {
    pub host_id: String,
    pub agent_dir: PathBuf,
    pub dokku_root: PathBuf,
    /// The network namespace the agent runs in (`ip netns exec`), if any.
    pub netns: Option<String>,
}

impl Host {
    /// Runs `flotilla-agent join`; returns the output (for refusal checks).
    pub fn join_with(
        root: &Path,
        server: &Server,
        token: &str,
        host_id: &str,
        env: &str,
    ) -> anyhow::Result<(Self, Output)> {
        Self::join_with_args(root, server, token, host_id, env, &[], None)
    }

    /// `join_with` plus extra `join` arguments (e.g. `--label k=v`).
    pub fn join_with_args(
        root: &Path,
        server: &Server,
        token: &str,
        host_id: &str,
        env: &str,
        extra: &[&str],
        netns: Option<&str>,
    ) -> anyhow::Result<(Self, Output)> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = root.join(format!("host-{host_id}-{n}"));
        let host = Self {
            host_id: host_id.to_owned(),
            agent_dir: base.join("agent"),
            dokku_root: base.join("dokku"),
            netns: netns.map(str::to_owned),
        };
        std::fs::create_dir_all(&host.dokku_root)?;
        let mut cmd = agent_command(netns);
        cmd.arg("join")
            .args([
                "--server",
                &server.url(),
                "--host-id",
                host_id,
                "--env",
                env,
            ])
            .arg("--data-dir")
            .arg(&host.agent_dir)
            .args(extra)
            .env("FLOTILLA_JOIN_TOKEN", token);
        let out = run(cmd)?;
        Ok((host, out))
    }

    /// Joins with a fresh token and checks it worked.
    pub fn join(root: &Path, server: &Server, host_id: &str, env: &str) -> anyhow::Result<Self> {
        Self::join_labeled(root, server, host_id, env, &[])
    }

    /// Joins with a fresh token and `labels` (`k=v`) and checks it worked.
    pub fn join_labeled(
        root: &Path,
        server: &Server,
        host_id: &str,
        env: &str,
        labels: &[&str],
    ) -> anyhow::Result<Self> {
        let token = server.join_token()?;
        let extra: Vec<&str> = labels.iter().flat_map(|l| ["--label", *l]).collect();
        let (host, out) = Self::join_with_args(root, server, &token, host_id, env, &extra, None)?;
        if !out.status.success() {
            bail!("join failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(host)
    }

    /// Joins (and later runs) inside network namespace `netns`.
    pub fn join_in_netns(
        root: &Path,
        server: &Server,
        host_id: &str,
        env: &str,
        netns: &str,
    ) -> anyhow::Result<Self> {
        let token = server.join_token()?;
        let (host, out) =
            Self::join_with_args(root, server, &token, host_id, env, &[], Some(netns))?;
        if !out.status.success() {
            bail!("join failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(host)
    }

    /// Starts `flotilla-agent run` and waits for its session.
    pub fn start(&self) -> anyhow::Result<Proc> {
        self.start_with(&[])
    }

    /// Like `start`, with extra `run` arguments.
    pub fn start_with(&self, extra: &[&str]) -> anyhow::Result<Proc> {
        self.start_with_env(extra, &[])
    }

    /// Like `start_with`, with extra environment variables for the agent.
    pub fn start_with_env(&self, extra: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Proc> {
        let mut cmd = agent_command(self.netns.as_deref());
        cmd.envs(env.iter().copied());
        cmd.arg("run")
            .arg("--data-dir")
            .arg(&self.agent_dir)
            .arg("--dokku-bin")
            .arg(bin("fake-dokku"))
            .args(["--reconnect-max", "500ms", "--shutdown-grace", "5s"])
            .args(extra)
            .env("DOKKU_ROOT", &self.dokku_root);
        let proc = Proc::spawn(cmd, &self.host_id)?;
        proc.log.wait_for("session established")?;
        Ok(proc)
    }

    /// The names of the environment variables each `fake-dokku` invocation
    /// saw (`.fake-dokku/environment.jsonl`), in invocation order.
    pub fn dokku_environments(&self) -> anyhow::Result<Vec<Vec<String>>> {
        let path = self.dokku_root.join(".fake-dokku/environment.jsonl");
        let text = std::fs::read_to_string(&path)?;
        text.lines()
            .map(|l| serde_json::from_str(l).context("environment line"))
            .collect()
    }

    /// Runs `fake-dokku ARGS` against this host's state.
    pub fn dokku(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut cmd = Command::new(bin("fake-dokku"));
        cmd.args(args).env("DOKKU_ROOT", &self.dokku_root);
        run(cmd)
    }

    /// What Dokku says is deployed: `apps:report APP --app-deploy-source-metadata`.
    pub fn deployed_image(&self, app: &str) -> anyhow::Result<String> {
        let out = self.dokku(&["apps:report", app, "--app-deploy-source-metadata"])?;
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }

    /// Lets one `hang` deploy on this host go on (fake-dokku waits for this file).
    pub fn release_hang(&self) -> anyhow::Result<()> {
        let dir = self.dokku_root.join(".fake-dokku");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("release"), "")?;
        Ok(())
    }

    /// Makes `git:from-image` of these images fail their checks on this host
    /// (the stand-in's `.standin/fail-images`).
    pub fn fail_images(&self, images: &[&str]) -> anyhow::Result<()> {
        let dir = self.dokku_root.join(".standin");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("fail-images"), images.join("\n") + "\n")?;
        Ok(())
    }

    /// Makes every restart of these apps fail its checks on this host (`ps:restart`, and the restarts inside
    /// `config:set`, `config:unset` and service links; the stand-in's `.standin/fail-restarts`).
    pub fn fail_restarts(&self, apps: &[&str]) -> anyhow::Result<()> {
        let dir = self.dokku_root.join(".standin");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("fail-restarts"), apps.join("\n") + "\n")?;
        Ok(())
    }

    /// Gives `app` a certificate expiring at `expires_at` (Unix seconds), installed by the stand-in's next
    /// command that looks at it (`.standin/certs/<app>`); `letsencrypt` makes it count as issued by Let's Encrypt.
    pub fn seed_cert(&self, app: &str, expires_at: u64, letsencrypt: bool) -> anyhow::Result<()> {
        let dir = self.dokku_root.join(".standin/certs");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join(app),
            format!("expires-at={expires_at}\nletsencrypt={letsencrypt}\n"),
        )?;
        Ok(())
    }

    /// How many restarts of `app` the stand-in ran, whatever command caused them (`.fake-dokku/restarts.jsonl`).
    pub fn restarts(&self, app: &str) -> anyhow::Result<usize> {
        let path = self.dokku_root.join(".fake-dokku/restarts.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        let mut n = 0;
        for line in text.lines() {
            let entry: Vec<String> = serde_json::from_str(line)?;
            if entry.first().map(String::as_str) == Some(app) {
                n += 1;
            }
        }
        Ok(n)
    }

    /// How many times fake-dokku ran with exactly these leading arguments.
    pub fn invocations(&self, prefix: &[&str]) -> anyhow::Result<usize> {
        let path = self.dokku_root.join(".fake-dokku/invocations.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        let mut n = 0;
        for line in text.lines() {
            let args: Vec<String> = serde_json::from_str(line)?;
            if args.len() >= prefix.len() && args.iter().zip(prefix).all(|(a, p)| a == p) {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// A scriptable HTTP server on loopback standing in for Flagsmith, Slack or a
/// webhook receiver: answers each request with the response set for the
/// longest matching path prefix (default 200 `ok`) and records every request.
pub struct HttpStub {
    pub port: u16,
    state: Arc<StubState>,
}

#[derive(Default)]
struct StubState {
    responses: Mutex<Vec<(String, u16, String)>>,
    requests: Mutex<Vec<StubRequest>>,
    arrived: Condvar,
    stop: std::sync::atomic::AtomicBool,
}

/// One request the stub received.
#[derive(Debug, Clone)]
pub struct StubRequest {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl StubRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl HttpStub {
    pub fn start() -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(StubState::default());
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if shared.stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                if let Ok(stream) = stream {
                    let _ = stub_answer(&shared, stream);
                }
            }
        });
        Ok(Self { port, state })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Answers requests whose path starts with `prefix` with `status` and `body`.
    pub fn respond(&self, prefix: &str, status: u16, body: &str) {
        if let Ok(mut r) = self.state.responses.lock() {
            r.retain(|(p, _, _)| p != prefix);
            r.push((prefix.to_owned(), status, body.to_owned()));
        }
    }

    pub fn requests(&self) -> Vec<StubRequest> {
        self.state
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Waits (up to `WAIT`) until `n` requests have arrived; returns them all.
    pub fn wait_for_requests(&self, n: usize) -> anyhow::Result<Vec<StubRequest>> {
        let deadline = Instant::now() + WAIT;
        let mut guard = self
            .state
            .requests
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        while guard.len() < n {
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "only {} of {n} requests arrived within {WAIT:?}",
                    guard.len()
                );
            }
            guard = self
                .state
                .arrived
                .wait_timeout(guard, deadline - now)
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .0;
        }
        Ok(guard.clone())
    }
}

impl Drop for HttpStub {
    fn drop(&mut self) {
        self.state
            .stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn stub_answer(state: &StubState, mut stream: std::net::TcpStream) -> std::io::Result<()> {
    use std::io::{Read as _, Write as _};
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or("/").to_owned();
    let mut headers = Vec::new();
    let mut length = 0usize;
    for _ in 0..200 {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.trim_end().split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_owned());
            if k == "content-length" {
                length = v.parse().unwrap_or(0);
            }
            headers.push((k, v));
        }
    }
    let mut body = vec![0u8; length.min(1 << 20)];
    reader.read_exact(&mut body)?;
    let (status, answer) = state
        .responses
        .lock()
        .ok()
        .and_then(|r| {
            r.iter()
                .filter(|(p, _, _)| path.starts_with(p.as_str()))
                .max_by_key(|(p, _, _)| p.len())
                .map(|(_, s, b)| (*s, b.clone()))
        })
        .unwrap_or((200, "ok".to_owned()));
    if let Ok(mut r) = state.requests.lock() {
        r.push(StubRequest {
            method,
            path,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        state.arrived.notify_all();
    }
    write!(
        stream,
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
        answer.len()
    )?;
    stream.flush()
}

/// `flotilla-agent`, inside network namespace `netns` when given.
fn agent_command(netns: Option<&str>) -> Command {
    match netns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(bin("flotilla-agent"));
            cmd
        }
        None => Command::new(bin("flotilla-agent")),
    }
}

/// How long simulated agents may take to join and connect.
const SIM_WAIT: Duration = Duration::from_secs(600);

/// `flotilla-agent simulate` with `count` agents in `env` (host ids
/// `{env}-0001`…), running until dropped (SIGTERM, then wait).
pub struct Simulation {
    child: std::process::Child,
}

impl Simulation {
    /// Starts it with a join token for `count` hosts and `extra` arguments;
    /// returns once every agent is connected.
    pub fn start(
        root: &Path,
        server: &Server,
        env: &str,
        count: usize,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        use std::io::BufRead as _;
        let out = server.cli(&["join-token", "create", "--uses", &count.to_string()])?;
        if !out.status.success() {
            anyhow::bail!("join-token create: {}", text(&out));
        }
        let token = String::from_utf8(out.stdout)?.trim().to_owned();
        let mut child = std::process::Command::new(bin("flotilla-agent"))
            .arg("simulate")
            .args(["--count", &count.to_string(), "--env", env, "--prefix", env])
            .args(["--server", &server.url()])
            .arg("--dir")
            .arg(root.join(format!("sim-{env}")))
            .args(extra)
            .env("FLOTILLA_JOIN_TOKEN", token)
            .env("FLOTILLA_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("start flotilla-agent simulate")?;
        let stdout = child.stdout.take().context("simulate stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let ready = std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .any(|l| l.contains("agents connected"));
            let _ = tx.send(ready);
        });
        let sim = Self { child };
        match rx.recv_timeout(SIM_WAIT) {
            Ok(true) => Ok(sim),
            _ => anyhow::bail!("{count} simulated agents did not connect within {SIM_WAIT:?}"),
        }
    }
}

impl Drop for Simulation {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Text of a process output, for assertions and messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A tiny HTTP server on loopback that answers `GET /{host}/…` with the status
/// set for that host (200 by default) and counts requests per host. Stands in
/// for the apps behind Dokku's proxy in health-gate tests.
pub struct HealthServer {
    pub port: u16,
    state: std::sync::Arc<HealthState>,
}

#[derive(Default)]
struct HealthState {
    statuses: std::sync::Mutex<std::collections::HashMap<String, u16>>,
    hits: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    stop: std::sync::atomic::AtomicBool,
}

impl HealthServer {
    pub fn start() -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let state = std::sync::Arc::new(HealthState::default());
        let shared = std::sync::Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if shared.stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                if let Ok(stream) = stream {
                    let _ = answer(&shared, stream);
                }
            }
        });
        Ok(Self { port, state })
    }

    /// The URL template agents probe: `http://127.0.0.1:PORT/{host}`.
    pub fn template(&self) -> String {
        format!("http://127.0.0.1:{}/{{host}}", self.port)
    }

    pub fn set(&self, host: &str, status: u16) {
        if let Ok(mut s) = self.state.statuses.lock() {
            s.insert(host.to_owned(), status);
        }
    }

    pub fn hits(&self, host: &str) -> usize {
        self.state
            .hits
            .lock()
            .map(|h| h.get(host).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.state
            .stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn answer(state: &HealthState, mut stream: std::net::TcpStream) -> std::io::Result<()> {
    use std::io::{BufRead as _, Write as _};
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = std::io::BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Skip the headers.
    let mut header = String::new();
    for _ in 0..100 {
        header.clear();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let host = path.trim_start_matches('/').split('/').next().unwrap_or("");
    if let Ok(mut hits) = state.hits.lock() {
        *hits.entry(host.to_owned()).or_default() += 1;
    }
    let status = state
        .statuses
        .lock()
        .map(|s| s.get(host).copied().unwrap_or(200))
        .unwrap_or(500);
    write!(
        stream,
        "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
    )?;
    stream.flush()
}

/// The files under `dir` (recursively) whose bytes contain `needle`: a secret
/// that must not be at rest anywhere. Panics if `dir` cannot be read.
pub fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(path) = todo.pop() {
        if path.is_dir() {
            let entries =
                std::fs::read_dir(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            todo.extend(entries.filter_map(Result::ok).map(|e| e.path()));
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
        {
            found.push(path);
        }
    }
    found.sort();
    found
}
