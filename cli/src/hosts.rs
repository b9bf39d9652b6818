//! `flotilla hosts` and `flotilla hosts top`: every host with its connection
//! state and newest metrics sample (CPU, memory, fullest disk, load).

use std::io::IsTerminal as _;
use std::time::Duration;

use flotilla_proto::v1 as pb;
use flotilla_shared::time::{format_ms, now_ms};
use serde_json::{Value, json};

use crate::Output;
use crate::client::Client;
use crate::output::{clean, outln, table};

/// How hosts are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Environment, then host id (`flotilla hosts`).
    Name,
    /// Busiest CPU first, hosts without figures last (`flotilla hosts top`).
    Cpu,
}

pub fn print(out: Output, hosts: &[pb::Host]) {
    if out == Output::Json {
        let list: Vec<Value> = hosts.iter().map(host_json).collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&Value::Array(list)).unwrap_or_else(|_| "null".into())
        );
        return;
    }
    if hosts.is_empty() {
        eprintln!("no hosts yet; join one with `flotilla-agent join`");
        return;
    }
    for line in lines(hosts, Order::Name, now_ms()) {
        outln!("{line}");
    }
}

/// `flotilla hosts top`: the table again every `interval`, busiest first; on a
/// terminal the screen is redrawn in place, otherwise tables follow each other
/// (each headed by the time). Stops after `count` refreshes, if given.
pub async fn top(
    client: &mut Client,
    out: Output,
    env: Option<String>,
    interval: Duration,
    count: Option<u64>,
) -> anyhow::Result<()> {
    let tty = out == Output::Text && std::io::stdout().is_terminal();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    loop {
        ticker.tick().await;
        let hosts = client.hosts(env.clone()).await?;
        let now = now_ms();
        if out == Output::Json {
            // One JSON document a line, so a consumer can read them as they come.
            let list: Vec<Value> = hosts.iter().map(host_json).collect();
            outln!("{}", json!({ "at": format_ms(now), "hosts": list }));
        } else {
            if tty {
                // Home the cursor and clear the screen, then draw.
                print!("\x1b[H\x1b[2J");
            } else if n > 0 {
                outln!();
            }
            let env_text = env.as_deref().unwrap_or("all environments");
            outln!(
                "flotilla hosts top — {env_text}, {} hosts, every {} — {}",
                hosts.len(),
                humantime::format_duration(interval),
                format_ms(now)
            );
            for line in lines(&hosts, Order::Cpu, now) {
                outln!("{line}");
            }
        }
        n += 1;
        if count.is_some_and(|c| n >= c) {
            return Ok(());
        }
    }
}

/// The table: header, then one line per host.
pub fn lines(hosts: &[pb::Host], order: Order, now_ms: i64) -> Vec<String> {
    let mut sorted: Vec<&pb::Host> = hosts.iter().collect();
    match order {
        Order::Name => sorted.sort_by(|a, b| (&a.env, &a.host_id).cmp(&(&b.env, &b.host_id))),
        Order::Cpu => sorted.sort_by(|a, b| {
            let cpu = |h: &pb::Host| live(h).map(|m| m.cpu_usage_ratio);
            cpu(b)
                .partial_cmp(&cpu(a))
                .unwrap_or(std::cmp::Ordering::Equal)
                .then_with(|| a.host_id.cmp(&b.host_id))
        }),
    }
    let mut rows = vec![
        [
            "HOST",
            "ENV",
            "STATUS",
            "CPU",
            "MEM",
            "DISK",
            "LOAD 1/5/15",
            "LAST SEEN",
            "VERSION",
            "LABELS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for h in sorted {
        let status = if h.revoked {
            "revoked"
        } else if h.connected {
            "connected"
        } else {
            "offline"
        };
        let (cpu, mem, disk, load) = match live(h) {
            Some(m) => (
                percent(m.cpu_usage_ratio),
                share(m.memory_used_bytes, m.memory_total_bytes),
                fullest_disk(m),
                format!("{:.2}/{:.2}/{:.2}", m.load1, m.load5, m.load15),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        let mut labels: Vec<String> = h
            .labels
            .iter()
            .map(|(k, v)| format!("{}={}", clean(k), clean(v)))
            .collect();
        labels.sort();
        rows.push(vec![
            clean(&h.host_id),
            clean(&h.env),
            status.into(),
            cpu,
            mem,
            disk,
            load,
            ago(h.last_seen_ms, now_ms),
            if h.agent_version.is_empty() {
                "-".into()
            } else {
                clean(&h.agent_version)
            },
            labels.join(","),
        ]);
    }
    table(&rows)
}

/// Figures are shown for connected hosts only: an offline host's last sample
/// says nothing about now (`--output json` still has it, with its time).
fn live(h: &pb::Host) -> Option<&pb::HostMetrics> {
    h.metrics.as_ref().filter(|_| h.connected && !h.revoked)
}

fn percent(ratio: f64) -> String {
    format!("{:.0}%", (ratio * 100.0).clamp(0.0, 100.0))
}

fn share(used: u64, total: u64) -> String {
    if total == 0 {
        "-".into()
    } else {
        percent(used as f64 / total as f64)
    }
}

/// The fullest filesystem, e.g. `91% /var/lib/docker` (a full disk is what
/// breaks a Dokku host).
fn fullest_disk(m: &pb::HostMetrics) -> String {
    m.disks
        .iter()
        .filter(|d| d.total_bytes > 0)
        .max_by(|a, b| {
            let r = |d: &pb::DiskUsage| d.used_bytes as f64 / d.total_bytes as f64;
            r(a).partial_cmp(&r(b)).unwrap_or(std::cmp::Ordering::Equal)
        })
        .map_or_else(
            || "-".into(),
            |d| {
                format!(
                    "{} {}",
                    share(d.used_bytes, d.total_bytes),
                    clean(&d.mount_point)
                )
            },
        )
}

/// `4s ago`, `3m ago`, `2h ago`, `5d ago`, `never`.
pub fn ago(then_ms: i64, now_ms: i64) -> String {
    if then_ms <= 0 {
        return "never".into();
    }
    let s = (now_ms - then_ms).max(0) / 1000;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86_400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

fn host_json(h: &pb::Host) -> Value {
    json!({
        "host_id": h.host_id,
        "env": h.env,
        "labels": h.labels,
        "connected": h.connected,
        "last_seen": if h.last_seen_ms > 0 { Value::String(format_ms(h.last_seen_ms)) } else { Value::Null },
        "agent_version": h.agent_version,
        "revoked": h.revoked,
        "metrics": h.metrics.as_ref().map_or(Value::Null, metrics_json),
    })
}

fn metrics_json(m: &pb::HostMetrics) -> Value {
    json!({
        "at": format_ms(m.at_ms),
        "cpu_usage_ratio": m.cpu_usage_ratio,
        "cpu_core_usage_ratio": m.cpu_core_usage_ratio,
        "load1": m.load1,
        "load5": m.load5,
        "load15": m.load15,
        "memory_used_bytes": m.memory_used_bytes,
        "memory_total_bytes": m.memory_total_bytes,
        "swap_used_bytes": m.swap_used_bytes,
        "swap_total_bytes": m.swap_total_bytes,
        "disks": m.disks.iter().map(|d| json!({
            "mount_point": d.mount_point,
            "device": d.device,
            "filesystem": d.filesystem,
            "used_bytes": d.used_bytes,
            "total_bytes": d.total_bytes,
        })).collect::<Vec<_>>(),
        "networks": m.networks.iter().map(|n| json!({
            "interface": n.interface,
            "received_bytes": n.received_bytes,
            "transmitted_bytes": n.transmitted_bytes,
            "receive_errors": n.receive_errors,
            "transmit_errors": n.transmit_errors,
        })).collect::<Vec<_>>(),
        "uptime_seconds": m.uptime_seconds,
        "processes": m.processes,
        "apps": m.apps.iter().map(app_json).collect::<Vec<_>>(),
    })
}

/// An app on a host: its release, and (once checked) certificate and services.
fn app_json(a: &pb::AppRelease) -> Value {
    let mut v = json!({ "app": a.app, "image": a.image });
    if a.checked_at_ms > 0 {
        v["checked_at"] = json!(format_ms(a.checked_at_ms));
        v["cert_expires_at"] = if a.cert_expires_at_ms > 0 {
            json!(format_ms(a.cert_expires_at_ms))
        } else {
            Value::Null
        };
        v["tls"] = a
            .tls
            .iter()
            .map(|t| {
                json!({
                    "domain": t.domain,
                    "expires_at": if t.expires_at_ms > 0 { json!(format_ms(t.expires_at_ms)) } else { Value::Null },
                    "error": t.error,
                })
            })
            .collect();
        v["services"] = a
            .services
            .iter()
            .map(|s| json!({ "kind": s.kind, "name": s.name, "exists": s.exists, "linked": s.linked }))
            .collect();
    }
    v
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn host(id: &str, connected: bool, cpu: Option<f64>) -> pb::Host {
        pb::Host {
            host_id: id.into(),
            env: "prod".into(),
            connected,
            last_seen_ms: 1_000_000 - 4_000,
            agent_version: "0.1.0".into(),
            metrics: cpu.map(|cpu| pb::HostMetrics {
                at_ms: 1_000_000 - 5_000,
                cpu_usage_ratio: cpu,
                load1: 0.5,
                load5: 0.25,
                load15: 2.0,
                memory_used_bytes: 3,
                memory_total_bytes: 4,
                disks: vec![
                    pb::DiskUsage {
                        mount_point: "/".into(),
                        used_bytes: 1,
                        total_bytes: 10,
                        ..Default::default()
                    },
                    pb::DiskUsage {
                        mount_point: "/var/lib/docker".into(),
                        used_bytes: 91,
                        total_bytes: 100,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_table_shows_live_figures_and_hides_stale_ones() {
        let hosts = [
            host("web-2", true, Some(0.07)),
            host("web-1", false, Some(0.99)),
            host("web-3", true, Some(0.5)),
        ];
        let by_name = lines(&hosts, Order::Name, 1_000_000);
        let cells: Vec<Vec<&str>> = by_name
            .iter()
            .map(|l| {
                l.split("  ")
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .collect()
            })
            .collect();
        assert_eq!(cells[0][..4], ["HOST", "ENV", "STATUS", "CPU"]);
        assert_eq!(
            cells[1],
            [
                "web-1", "prod", "offline", "-", "-", "-", "-", "4s ago", "0.1.0"
            ]
        );
        assert_eq!(
            cells[2],
            [
                "web-2",
                "prod",
                "connected",
                "7%",
                "75%",
                "91% /var/lib/docker",
                "0.50/0.25/2.00",
                "4s ago",
                "0.1.0"
            ]
        );
        let by_cpu = lines(&hosts, Order::Cpu, 1_000_000);
        let order: Vec<&str> = by_cpu[1..]
            .iter()
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        // The offline host's 99% is stale: it sorts last.
        assert_eq!(order, ["web-3", "web-2", "web-1"]);
    }

    #[test]
    fn json_carries_the_whole_sample_or_null() {
        let v = host_json(&host("web-1", true, Some(0.25)));
        assert_eq!(v["metrics"]["cpu_usage_ratio"], 0.25);
        assert_eq!(v["metrics"]["disks"][1]["mount_point"], "/var/lib/docker");
        assert_eq!(v["metrics"]["memory_total_bytes"], 4);
        assert!(host_json(&host("web-2", true, None))["metrics"].is_null());
    }

    #[test]
    fn ago_is_short() {
        assert_eq!(ago(0, 5), "never");
        assert_eq!(ago(1_000, 60_999), "59s ago");
        assert_eq!(ago(1, 3_600_001), "1h ago");
        assert_eq!(ago(10_000, 5_000), "0s ago");
    }
}
