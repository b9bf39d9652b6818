//! `bench`: prints Flotilla's figures on this machine.
//!
//! 1. Command signing and verification (the agent's per-command check), in-process.
//! 2. End-to-end deploy latency: a real coordinator and N agents on fake-dokku,
//!    timing `flotilla deploy --wait` from the CLI's start to its exit.
//!
//! Usage: `cargo build --release --workspace && target/release/bench [HOSTS] [DEPLOYS]`
//! (or the debug build; the profile is printed). Timing is never asserted anywhere.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use flotilla_proto::v1 as pb;
use flotilla_shared::signing::{self, Action, CommandSigner, TrustedKeys, VerifyPolicy};
use flotilla_shared::{AppName, HostId, ImageRef};
use flotilla_tests::{Host, Server};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let hosts: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3);
    let deploys: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(20);
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!("flotilla bench ({profile} build)");
    signing_bench()?;
    deploy_bench(hosts, deploys)
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
