//! `flotilla-agent simulate` against a fake coordinator on 127.0.0.1: joins
//! with one multi-use token, real mTLS sessions, commands run by the in-memory
//! Dokku, pings, replay protection across runs, SIGTERM.

// The whole binary is test code: helpers panic on setup failures, like tests do.
#![allow(clippy::unwrap_used)]

mod coordinator;

use std::num::NonZeroUsize;
use std::time::Duration;

use coordinator::{Event, FakeCoordinator};
use flotilla_agent::RunConfig;
use flotilla_agent::identity::AgentDir;
use flotilla_agent::simulate::{self, SimulateOptions};
use flotilla_proto::v1 as pb;
use flotilla_shared::signing::Action;
use flotilla_shared::{AppName, EnvName, ImageRef};
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::oneshot;

fn deploy(image: &str) -> Action {
    Action::Deploy {
        app: AppName::parse("shop").unwrap(),
        image: ImageRef::parse(image).unwrap(),
        health: None,
    }
}

fn options(fake: &FakeCoordinator, dir: &std::path::Path, count: usize) -> SimulateOptions {
    SimulateOptions {
        count: NonZeroUsize::new(count).unwrap(),
        dir: dir.to_owned(),
        server: fake.url.clone(),
        token: Some(fake.token.parse().unwrap()),
        env: EnvName::parse("staging").unwrap(),
        prefix: "sim".into(),
        labels: vec!["region=eu".into()],
        fail_images: None,
        concurrency: NonZeroUsize::new(2).unwrap(),
        run: RunConfig::new(AgentDir::new(dir)),
    }
}

/// A simulation running in this process until `stop`.
struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Starts `simulate::run` and waits for its "all connected" call.
    async fn start(opts: SimulateOptions) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let (connected_tx, connected) = oneshot::channel::<usize>();
        let count = opts.count.get();
        let task = tokio::spawn(simulate::run(
            opts,
            async {
                let _ = stopped.await;
            },
            move |n| {
                let _ = connected_tx.send(n);
            },
        ));
        let n = tokio::time::timeout(Duration::from_secs(60), connected)
            .await
            .expect("all agents connect within 60 s")
            .expect("simulate is running");
        assert_eq!(n, count);
        Self { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("simulate stops within 30 s")
            .unwrap()
            .unwrap();
    }
}

/// The result the agent on `host` reported for `command`.
async fn result_of(fake: &mut FakeCoordinator, host: &str, command: &str) -> pb::CommandResult {
    fake.next(|e| match e {
        Event::Report(
            h,
            pb::Report {
                command_id,
                body: Some(pb::report::Body::Result(result)),
                ..
            },
        ) if h == host && command_id == command => Some(result),
        _ => None,
    })
    .await
}

async fn refusal_of(fake: &mut FakeCoordinator, host: &str, command: &str) -> pb::RefusalReason {
    fake.next(|e| match e {
        Event::Report(
            h,
            pb::Report {
                command_id,
                body: Some(pb::report::Body::Refused(refused)),
                ..
            },
        ) if h == host && command_id == command => Some(refused.reason()),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_agents_join_once_run_commands_and_answer_pings() {
    let mut fake = FakeCoordinator::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let fail_list = dir.path().join("fail-images");
    std::fs::write(&fail_list, "# fails everywhere\nacme/shop:bad\n").unwrap();
    let mut opts = options(&fake, dir.path(), 3);
    opts.fail_images = Some(fail_list);

    // Run 1: three joins with the one token, labels per slot.
    let running = Running::start(opts.clone()).await;
    let mut joins = Vec::new();
    while joins.len() < 3 {
        joins.push(
            fake.next(|e| match e {
                Event::Joined(req) => Some(req),
                _ => None,
            })
            .await,
        );
    }
    joins.sort_by(|a, b| a.host_id.cmp(&b.host_id));
    for (i, join) in joins.iter().enumerate() {
        assert_eq!(join.host_id, format!("sim-{:04}", i + 1));
        assert_eq!(join.env, "staging");
        assert_eq!(join.labels.get("sim").map(String::as_str), Some("1"));
        assert_eq!(join.labels.get("slot"), Some(&(i + 1).to_string()));
        assert_eq!(join.labels.get("region").map(String::as_str), Some("eu"));
    }

    // A deploy runs in memory and reports the images.
    let first = fake.send("sim-0002", "c-1", deploy("acme/shop:1")).await;
    let result = result_of(&mut fake, "sim-0002", "c-1").await;
    assert_eq!(result.outcome(), pb::Outcome::Succeeded);
    assert_eq!(
        (
            result.previous_image.as_str(),
            result.deployed_image.as_str()
        ),
        ("", "acme/shop:1")
    );

    // A listed image fails like an unhealthy one; the old image stays.
    fake.send("sim-0002", "c-2", deploy("acme/shop:bad")).await;
    let result = result_of(&mut fake, "sim-0002", "c-2").await;
    assert_eq!(result.outcome(), pb::Outcome::Failed);
    assert_eq!(result.exit_code, Some(1));
    assert_eq!(
        (
            result.previous_image.as_str(),
            result.deployed_image.as_str()
        ),
        ("acme/shop:1", "acme/shop:1")
    );

    // Hosts are separate: the same deploy on another host starts from nothing.
    fake.send("sim-0003", "c-3", deploy("acme/shop:2")).await;
    let result = result_of(&mut fake, "sim-0003", "c-3").await;
    assert_eq!(result.previous_image, "");

    // A ping is answered with a pong; a re-sent command is a replay.
    fake.send("sim-0001", "p-1", Action::Ping).await;
    let pong = fake
        .next(|e| match e {
            Event::Pong(host, id) => Some((host, id)),
            _ => None,
        })
        .await;
    assert_eq!(pong, ("sim-0001".to_owned(), "p-1".to_owned()));
    fake.resend("sim-0002", &first).await;
    assert_eq!(
        refusal_of(&mut fake, "sim-0002", "c-1").await,
        pb::RefusalReason::Replayed
    );
    running.stop().await;

    // Run 2, same dir, no token: identities and spools are reused, no joins.
    opts.token = None;
    let running = Running::start(opts).await;
    let mut connected = std::collections::BTreeSet::new();
    while connected.len() < 3 {
        match fake.next(Some).await {
            Event::Joined(req) => panic!("{} joined again", req.host_id),
            Event::Connected(host) => {
                connected.insert(host);
            }
            _ => {}
        }
    }
    assert_eq!(
        connected.into_iter().collect::<Vec<_>>(),
        ["sim-0001", "sim-0002", "sim-0003"]
    );
    fake.resend("sim-0002", &first).await;
    assert_eq!(
        refusal_of(&mut fake, "sim-0002", "c-1").await,
        pb::RefusalReason::Replayed
    );
    running.stop().await;
    fake.stop().await;
}

/// The child's VmRSS, thread count and open descriptors, from /proc.
fn process_stats(pid: u32) -> (String, String, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (field("VmRSS:"), field("Threads:"), fds)
}

/// Runs the binary with `count` agents: waits for its stdout line, lets
/// `exercise` talk to the agents, then SIGTERMs it and expects a clean exit.
async fn run_binary(count: usize, exercise: impl AsyncFnOnce(&mut FakeCoordinator, u32)) {
    let mut fake = FakeCoordinator::start(count).await;
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla-agent"))
        .args([
            "simulate",
            "--count",
            &count.to_string(),
            "--env",
            "staging",
        ])
        .arg("--dir")
        .arg(dir.path())
        .args(["--server", &fake.url])
        .env("FLOTILLA_JOIN_TOKEN", &fake.token)
        .env("FLOTILLA_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(300), stdout.next_line())
        .await
        .expect("connected within 300 s")
        .unwrap();
    assert_eq!(
        line.as_deref(),
        Some(format!("simulate: {count} agents connected").as_str())
    );
    eprintln!(
        "{count} agents joined and connected in {:.1?}",
        started.elapsed()
    );
    exercise(&mut fake, pid).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("exits within 60 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(
        stdout.next_line().await.unwrap(),
        None,
        "one stdout line only"
    );
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_prints_one_line_when_connected_and_stops_on_sigterm() {
    run_binary(5, async |fake, _| {
        fake.send("sim-0005", "c-1", deploy("acme/shop:1")).await;
        let result = result_of(fake, "sim-0005", "c-1").await;
        assert_eq!(result.deployed_image, "acme/shop:1");
    })
    .await;
}

/// A measurement, not a check: `cargo test -p flotilla-agent --test simulate
/// -- --ignored --nocapture` (FLOTILLA_SIM_COUNT, default 1000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: about a minute and 1000 connections"]
async fn thousand_agents() {
    let count: usize = std::env::var("FLOTILLA_SIM_COUNT")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    run_binary(count, async |fake, pid| {
        let (rss, threads, fds) = process_stats(pid);
        eprintln!("connected: VmRSS {rss}, {threads} threads, {fds} open fds");
        let started = std::time::Instant::now();
        for i in 1..=count {
            fake.send(
                &format!("sim-{i:04}"),
                &format!("c-{i}"),
                deploy("acme/shop:1"),
            )
            .await;
        }
        let mut n_done = 0;
        while n_done < count {
            fake.next(|e| match e {
                Event::Report(
                    _,
                    pb::Report {
                        body: Some(pb::report::Body::Result(r)),
                        ..
                    },
                ) => {
                    assert_eq!(r.outcome(), pb::Outcome::Succeeded);
                    Some(())
                }
                _ => None,
            })
            .await;
            n_done += 1;
        }
        eprintln!(
            "{count} deploys (one per agent) reported in {:.1?}",
            started.elapsed()
        );
        let started = std::time::Instant::now();
        for i in 1..=count {
            fake.send(&format!("sim-{i:04}"), &format!("p-{i}"), Action::Ping)
                .await;
        }
        for _ in 0..count {
            fake.next(|e| matches!(e, Event::Pong(..)).then_some(()))
                .await;
        }
        eprintln!("{count} pings answered in {:.1?}", started.elapsed());
        let (rss, threads, fds) = process_stats(pid);
        eprintln!("after: VmRSS {rss}, {threads} threads, {fds} open fds");
    })
    .await;
}
