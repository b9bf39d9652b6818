//! Rendering for people (aligned text) and for programs (`--output json`).

use flotilla_proto::v1 as pb;
use flotilla_shared::time::format_ms;
use serde_json::{Value, json};

use crate::Output;

/// `println!` that ends the process quietly when stdout is closed (`| head`),
/// instead of panicking on the broken pipe.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = writeln!(stdout, $($arg)*).and_then(|()| stdout.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("error: cannot write output: {e}");
            std::process::exit(1);
        }
    }};
}
pub(crate) use outln;

fn ts(ms: i64) -> Value {
    if ms > 0 {
        Value::String(format_ms(ms))
    } else {
        Value::Null
    }
}

fn print_json(value: &Value) {
    outln!(
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
    outln!(
        "{:<20} {:<12} {:<10} {:<22} {:<8} LABELS",
        "HOST",
        "ENV",
        "STATUS",
        "LAST SEEN",
        "VERSION"
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
        outln!(
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
    outln!(
        "deployment {}: {} {} → {} in {}: {}",
        d.id,
        d.kind,
        d.app,
        d.image,
        d.env,
        d.state
    );
    outln!(
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
        outln!("  error: {}", d.error);
    }
    outln!(
        "  {:<20} {:<10} {:<5} {:<40} ERROR",
        "HOST",
        "STATE",
        "EXIT",
        "IMAGE"
    );
    for h in &d.hosts {
        let exit = h
            .exit_code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into());
        outln!(
            "  {:<20} {:<10} {:<5} {:<40} {}",
            h.host_id,
            h.state,
            exit,
            h.image,
            h.error
        );
    }
}

pub fn deployments(out: Output, list: &[pb::Deployment]) {
    if out == Output::Json {
        return print_json(&Value::Array(list.iter().map(deployment_json).collect()));
    }
    outln!(
        "{:<38} {:<9} {:<20} {:<12} {:<10} {:<21} IMAGE",
        "ID",
        "KIND",
        "APP",
        "ENV",
        "STATE",
        "CREATED"
    );
    for d in list {
        outln!(
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
    outln!(
        "{:<8} {:<9} {:<21} {:<38} IMAGE",
        "RELEASE",
        "KIND",
        "CREATED",
        "DEPLOYMENT"
    );
    for r in list.iter().rev() {
        outln!(
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
        outln!("{text}");
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
    outln!(
        "{:<21} {:<16} {:<18} {:<40} OUTCOME",
        "AT",
        "ACTOR",
        "ACTION",
        "TARGET"
    );
    for e in entries {
        outln!(
            "{:<21} {:<16} {:<18} {:<40} {}",
            format_ms(e.at_ms),
            e.actor,
            e.action,
            e.target,
            e.outcome
        );
    }
}

pub fn tokens(out: Output, tokens: &[pb::ApiToken]) {
    if out == Output::Json {
        let list: Vec<Value> = tokens
            .iter()
            .map(|t| {
                json!({
                    "id": t.id, "name": t.name, "role": t.role, "apps": t.apps, "envs": t.envs,
                    "created_at": ts(t.created_at_ms), "created_by": t.created_by,
                })
            })
            .collect();
        return print_json(&Value::Array(list));
    }
    outln!(
        "{:<13} {:<20} {:<9} {:<21} {:<12} SCOPE",
        "ID",
        "NAME",
        "ROLE",
        "CREATED",
        "BY"
    );
    for t in tokens {
        let scope = match (t.apps.is_empty(), t.envs.is_empty()) {
            (true, true) => "all".to_owned(),
            _ => format!("apps={} envs={}", or_all(&t.apps), or_all(&t.envs)),
        };
        outln!(
            "{:<13} {:<20} {:<9} {:<21} {:<12} {}",
            t.id,
            t.name,
            t.role,
            format_ms(t.created_at_ms),
            t.created_by,
            scope
        );
    }
}

fn or_all(items: &[String]) -> String {
    if items.is_empty() {
        "all".into()
    } else {
        items.join(",")
    }
}
