//! Rendering for people (aligned text) and for programs (`--output json`).

use flotilla_proto::v1 as pb;
use flotilla_shared::time::format_ms;
use serde_json::{Value, json};

use crate::Output;

fn ts(ms: i64) -> Value {
    if ms > 0 {
        Value::String(format_ms(ms))
    } else {
        Value::Null
    }
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into())
    );
}

pub fn deployment_json(d: &pb::Deployment) -> Value {
    json!({
        "id": d.id,
        "app": d.app,
        "env": d.env,
        "kind": d.kind,
        "state": d.state,
        "image": d.image,
        "created_at": ts(d.created_at_ms),
        "finished_at": ts(d.finished_at_ms),
        "created_by": d.created_by,
        "error": d.error,
        "target_release": if d.target_release > 0 { json!(d.target_release) } else { Value::Null },
        "hosts": d.hosts.iter().map(|h| json!({
            "host_id": h.host_id,
            "state": h.state,
            "image": h.image,
            "exit_code": h.exit_code,
            "error": h.error,
            "command_id": h.command_id,
        })).collect::<Vec<_>>(),
    })
}

pub fn hosts(out: Output, hosts: &[pb::Host]) {
    if out == Output::Json {
        let list: Vec<Value> = hosts
            .iter()
            .map(|h| {
                json!({
                    "host_id": h.host_id,
                    "env": h.env,
                    "labels": h.labels,
                    "connected": h.connected,
                    "last_seen": ts(h.last_seen_ms),
                    "agent_version": h.agent_version,
                    "revoked": h.revoked,
                })
            })
            .collect();
        return print_json(&Value::Array(list));
    }
    if hosts.is_empty() {
        eprintln!("no hosts yet; join one with `flotilla-agent join`");
        return;
    }
    println!(
        "{:<20} {:<12} {:<10} {:<22} {:<8} LABELS",
        "HOST", "ENV", "STATUS", "LAST SEEN", "VERSION"
    );
    for h in hosts {
        let status = if h.revoked {
            "revoked"
        } else if h.connected {
            "connected"
        } else {
            "offline"
        };
        let mut labels: Vec<String> = h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        println!(
            "{:<20} {:<12} {:<10} {:<22} {:<8} {}",
            h.host_id,
            h.env,
            status,
            format_ms(h.last_seen_ms),
            h.agent_version,
            labels.join(",")
        );
    }
}

pub fn status(out: Output, d: &pb::Deployment) {
    if out == Output::Json {
        return print_json(&deployment_json(d));
    }
    println!(
        "deployment {}: {} {} → {} in {}: {}",
        d.id, d.kind, d.app, d.image, d.env, d.state
    );
    println!(
        "  created {} by {}{}",
        format_ms(d.created_at_ms),
        d.created_by,
        if d.finished_at_ms > 0 {
            format!(", finished {}", format_ms(d.finished_at_ms))
        } else {
            String::new()
        }
    );
    if !d.error.is_empty() {
        println!("  error: {}", d.error);
    }
    println!(
        "  {:<20} {:<10} {:<5} {:<40} ERROR",
        "HOST", "STATE", "EXIT", "IMAGE"
    );
    for h in &d.hosts {
        let exit = h
            .exit_code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into());
        println!(
            "  {:<20} {:<10} {:<5} {:<40} {}",
            h.host_id, h.state, exit, h.image, h.error
        );
    }
}

pub fn deployments(out: Output, list: &[pb::Deployment]) {
    if out == Output::Json {
        return print_json(&Value::Array(list.iter().map(deployment_json).collect()));
    }
    println!(
        "{:<38} {:<9} {:<20} {:<12} {:<10} {:<21} IMAGE",
        "ID", "KIND", "APP", "ENV", "STATE", "CREATED"
    );
    for d in list {
        println!(
            "{:<38} {:<9} {:<20} {:<12} {:<10} {:<21} {}",
            d.id,
            d.kind,
            d.app,
            d.env,
            d.state,
            format_ms(d.created_at_ms),
            d.image
        );
    }
}

pub fn releases(out: Output, list: &[pb::Release]) {
    if out == Output::Json {
        let list: Vec<Value> = list
            .iter()
            .map(|r| {
                json!({
                    "number": r.number,
                    "app": r.app,
                    "env": r.env,
                    "image": r.image,
                    "deployment_id": r.deployment_id,
                    "kind": r.kind,
                    "created_at": ts(r.created_at_ms),
                })
            })
            .collect();
        return print_json(&Value::Array(list));
    }
    if list.is_empty() {
        eprintln!("no releases yet");
        return;
    }
    println!(
        "{:<8} {:<9} {:<21} {:<38} IMAGE",
        "RELEASE", "KIND", "CREATED", "DEPLOYMENT"
    );
    for r in list.iter().rev() {
        println!(
            "v{:<7} {:<9} {:<21} {:<38} {}",
            r.number,
            r.kind,
            format_ms(r.created_at_ms),
            r.deployment_id,
            r.image
        );
    }
}

pub fn log_line(out: Output, l: &pb::DeploymentLogLine, to_stderr: bool) {
    let text = if out == Output::Json {
        serde_json::to_string(&json!({
            "host_id": l.host_id, "seq": l.seq, "stream": l.stream, "line": l.line, "at": ts(l.at_ms),
        }))
        .unwrap_or_default()
    } else {
        format!("[{}] {}", l.host_id, l.line)
    };
    if to_stderr {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
}

pub fn audit(out: Output, entries: &[pb::AuditEntry]) {
    if out == Output::Json {
        let list: Vec<Value> = entries
            .iter()
            .map(|e| {
                json!({
                    "at": ts(e.at_ms), "actor": e.actor, "action": e.action,
                    "target": e.target, "outcome": e.outcome,
                })
            })
            .collect();
        return print_json(&Value::Array(list));
    }
    println!(
        "{:<21} {:<16} {:<18} {:<40} OUTCOME",
        "AT", "ACTOR", "ACTION", "TARGET"
    );
    for e in entries {
        println!(
            "{:<21} {:<16} {:<18} {:<40} {}",
            format_ms(e.at_ms),
            e.actor,
            e.action,
            e.target,
            e.outcome
        );
    }
}
