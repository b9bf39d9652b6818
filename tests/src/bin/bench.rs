//! `bench`: prints Flotilla's figures on this machine.
//!
//! - `signing`: command signing and verification (the agent's per-command check), in-process.
//! - `deploy [HOSTS] [DEPLOYS]`: end-to-end deploy latency, a real coordinator and HOSTS agents on
//!   fake-dokku, timing `flotilla deploy --wait` from the CLI's start to its exit.
//! - `rollout [HOSTS] [BATCH]`: a rolling deploy to HOSTS (100) simulated agents
//!   (`flotilla-agent simulate`: real identities, mTLS sessions, signature checks and spools,
//!   with an instant in-memory Dokku) in batches of BATCH (10): wall time, per-batch time and
//!   the coordinator's gap between batches.
//! - `ping [N…]`: `flotilla ping` round trip through every agent at N (50 and 1000) agents.
//!
//! Usage: `scripts/bench [all|signing|deploy|rollout|ping] [ARGS]` (a release build; the debug
//! build works too and says so). Timing is never asserted anywhere.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use flotilla_proto::v1 as pb;
use flotilla_shared::signing::{self, Action, CommandSigner, TrustedKeys, VerifyPolicy};
use flotilla_shared::{AppName, HostId, ImageRef};
use flotilla_tests::{Host, Server, Simulation};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_else(|| "all".into());
    let nums: Vec<usize> = args
        .map(|a| a.parse().with_context(|| format!("not a number: {a}")))
        .collect::<anyhow::Result<_>>()?;
    let arg = |i: usize, default: usize| nums.get(i).copied().unwrap_or(default);
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!("flotilla bench ({profile} build)");
    match what.as_str() {
        "signing" => signing_bench(),
        "deploy" => deploy_bench(arg(0, 3), arg(1, 20)),
        "rollout" => rollout_bench(arg(0, 100), arg(1, 10)),
        "ping" if nums.is_empty() => ping_bench(&[50, 1000]),
        "ping" => ping_bench(&nums),
        "all" => {
            signing_bench()?;
            deploy_bench(3, 20)?;
            rollout_bench(100, 10)?;
            ping_bench(&[50, 1000])
        }
        other => {
            anyhow::bail!("unknown benchmark {other:?}; use all, signing, deploy, rollout or ping")
        }
    }
}

fn rollout_bench(hosts: usize, batch: usize) -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let data_dir = Server::init(root.path())?;
    let server = Server::start(&data_dir, "127.0.0.1:0", &[])?;
    let start = Instant::now();
    let _sim = Simulation::start(root.path(), &server, "roll", hosts, &[])?;
    println!(
        "rollout: {hosts} simulated agents joined and connected in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let batch_arg = batch.to_string();
    let start = Instant::now();
    let out = server.cli(&[
        "deploy",
        "bench",
        "--image",
        "acme/bench:1",
        "--env",
        "roll",
        "--batch",
        &batch_arg,
        "--wait",
        "--output",
        "json",
    ])?;
    let wall = start.elapsed();
    if out.status.code() != Some(0) {
        anyhow::bail!("deploy failed: {}", flotilla_tests::text(&out));
    }
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let num = |v: &serde_json::Value| v.as_i64().unwrap_or_default();
    // Per batch: first dispatch, last result recorded (coordinator clock).
    let mut spans: std::collections::BTreeMap<i64, (i64, i64)> = Default::default();
    let mut round_trips = Vec::new();
    for h in status["hosts"].as_array().context("hosts")? {
        let (b, started, finished) = (
            num(&h["batch"]),
            num(&h["started_at_ms"]),
            num(&h["finished_at_ms"]),
        );
        let span = spans.entry(b).or_insert((started, finished));
        span.0 = span.0.min(started);
        span.1 = span.1.max(finished);
        round_trips.push(finished - started);
    }
    let spans: Vec<(i64, i64)> = spans.into_values().collect();
    let duration_ms = spans.last().map_or(0, |l| l.1) - spans.first().map_or(0, |f| f.0);
    let gaps: Vec<i64> = spans.windows(2).map(|w| w[1].0 - w[0].1).collect();
    let batch_times: Vec<i64> = spans.iter().map(|(s, e)| e - s).collect();
    round_trips.sort_unstable();
    println!(
        "rollout: {hosts} hosts in {} batches of {batch}: `deploy --wait` {:.2} s wall; first dispatch → last result stored {:.2} s — all of it orchestration, the stand-in is instant",
        spans.len(),
        wall.as_secs_f64(),
        duration_ms as f64 / 1000.0,
    );
    println!(
        "rollout: per batch (dispatch → last result stored) mean {:.0} ms, max {} ms; host round trip p50 {} ms, max {} ms",
        mean(&batch_times),
        batch_times.iter().max().copied().unwrap_or(0),
        round_trips.get(round_trips.len() / 2).copied().unwrap_or(0),
        round_trips.last().copied().unwrap_or(0),
    );
    println!(
        "rollout: coordinator between batches (last result stored → next batch dispatched) mean {:.1} ms, max {} ms, total {} ms",
        mean(&gaps),
        gaps.iter().max().copied().unwrap_or(0),
        gaps.iter().sum::<i64>(),
    );
    Ok(())
}

fn mean(v: &[i64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<i64>() as f64 / v.len() as f64
    }
}

fn ping_bench(counts: &[usize]) -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let data_dir = Server::init(root.path())?;
    let server = Server::start(&data_dir, "127.0.0.1:0", &[])?;
    for &n in counts {
        let env = format!("ping{n}");
        let start = Instant::now();
        let _sim = Simulation::start(root.path(), &server, &env, n, &[])?;
        println!(
            "ping: {n} simulated agents joined and connected in {:.1} s",
            start.elapsed().as_secs_f64()
        );
        let mut totals = Vec::new();
        for _ in 0..5 {
            let out = server.cli(&["ping", "--env", &env, "--output", "json"])?;
            let v: serde_json::Value =
                serde_json::from_slice(&out.stdout).with_context(|| flotilla_tests::text(&out))?;
            if v["ok"].as_u64() != Some(n as u64) {
                anyhow::bail!("not every agent answered: {v}");
            }
            totals.push(v["total_ms"].as_f64().unwrap_or(f64::NAN));
        }
        totals.sort_by(f64::total_cmp);
        println!(
            "ping: {n} agents, 5 runs: total (first command signed → last answer) min {:.1} ms, median {:.1} ms, max {:.1} ms",
            totals[0], totals[2], totals[4]
        );
    }
    Ok(())
}

fn signing_bench() -> anyhow::Result<()> {
    let signer = CommandSigner::generate()?;
    let mut keys = TrustedKeys::default();
    keys.insert(signer.verifying_key());
    let host = HostId::parse("web-1")?;
    let now = flotilla_shared::time::now_ms();
    let envelope = |i: usize| pb::CommandEnvelope {
        command_id: format!("cmd-{i}"),
        host_id: "web-1".into(),
        deployment_id: "d".into(),
        issued_at_ms: now,
        expires_at_ms: now + 600_000,
        nonce: vec![0; 16],
        action: Some(
            Action::Deploy {
                app: AppName::parse("shop").unwrap_or_else(|_| unreachable!()),
                image: ImageRef::parse("registry.example.com/shop:1.2.3")
                    .unwrap_or_else(|_| unreachable!()),
                health: None,
            }
            .to_proto(),
        ),
    };
    const N: usize = 20_000;
    let start = Instant::now();
    let signed: Vec<_> = (0..N).map(|i| signer.sign(&envelope(i))).collect();
    let sign = start.elapsed();
    let start = Instant::now();
    for s in &signed {
        signing::verify(s, &keys, &host, now, VerifyPolicy::default(), &|_| false)
            .map_err(|r| anyhow::anyhow!("{r}"))?;
    }
    let verify = start.elapsed();
    println!(
        "sign:   {N} envelopes in {:.1} ms = {:.0}/s ({} bytes each)",
        ms(sign),
        N as f64 / sign.as_secs_f64(),
        signed[0].envelope.len()
    );
    println!(
        "verify: {N} envelopes in {:.1} ms = {:.0}/s",
        ms(verify),
        N as f64 / verify.as_secs_f64()
    );
    Ok(())
}

fn deploy_bench(n_hosts: usize, deploys: usize) -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let data_dir = Server::init(root.path())?;
    let server = Server::start(&data_dir, "127.0.0.1:0", &[])?;
    let mut agents = Vec::new();
    for i in 1..=n_hosts {
        let host = Host::join(root.path(), &server, &format!("web-{i}"), "prod")?;
        agents.push(host.start()?);
    }
    let mut times = Vec::new();
    for i in 0..deploys {
        let image = format!("acme/bench:{i}");
        let start = Instant::now();
        let out = server.cli(&[
            "deploy", "bench", "--image", &image, "--env", "prod", "--wait",
        ])?;
        times.push(start.elapsed());
        if !out.status.success() {
            anyhow::bail!("deploy failed: {}", flotilla_tests::text(&out));
        }
    }
    // The same, for the stand-in alone: what dokku itself costs per host.
    let host_dir = root.path().join("solo");
    std::fs::create_dir_all(&host_dir)?;
    let mut dokku_times = Vec::new();
    for i in 0..deploys {
        let start = Instant::now();
        let mut cmd = std::process::Command::new(flotilla_tests::bin("fake-dokku"));
        cmd.env("DOKKU_ROOT", &host_dir);
        if i == 0 {
            flotilla_tests::run({
                let mut c = std::process::Command::new(flotilla_tests::bin("fake-dokku"));
                c.env("DOKKU_ROOT", &host_dir).args(["apps:create", "solo"]);
                c
            })
            .context("apps:create")?;
        }
        cmd.args(["git:from-image", "solo", &format!("acme/solo:{i}")]);
        flotilla_tests::run(cmd)?;
        dokku_times.push(start.elapsed());
    }
    times.sort();
    dokku_times.sort();
    let pct = |v: &[Duration], p: f64| ms(v[((v.len() - 1) as f64 * p).round() as usize]);
    println!(
        "deploy --wait, {n_hosts} hosts one at a time, {deploys} runs: p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms",
        pct(&times, 0.5),
        pct(&times, 0.95),
        pct(&times, 1.0)
    );
    println!(
        "fake-dokku git:from-image alone: p50 {:.0} ms; coordination overhead per host ≈ {:.0} ms",
        pct(&dokku_times, 0.5),
        (pct(&times, 0.5) / n_hosts as f64 - pct(&dokku_times, 0.5)).max(0.0)
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
