//! Rendering for people (aligned text) and for programs (`--output json`).
//! The JSON shapes here are a contract (docs/operations.md lists them); add
//! fields, never rename or drop one. Live `--wait` progress is `wait`'s.

use flotilla_proto::v1 as pb;
use flotilla_shared::health;
use flotilla_shared::time::{format_ms, now_ms};
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

/// The JSON shape of a deployment (`status`, `deployments`, `deploy
/// --output json`, the final object of `--wait`). Field names are stable;
/// states are the coordinator's, verbatim. Defaults the coordinator leaves
/// implicit (batch, auto-rollback, health-gate timings) are shown resolved.
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
        "release": if d.release > 0 { json!(d.release) } else { Value::Null },
        "strategy": strategy_json(d.strategy.as_ref()),
        "current_batch": d.current_batch,
        "batches": d.batches,
        "resume_at": ts(d.resume_at_ms),
        "failures": d.failures,
        "gates": d.gates.iter().map(gate_json).collect::<Vec<_>>(),
        "hosts": d.hosts.iter().map(host_json).collect::<Vec<_>>(),
    })
}

fn gate_json(g: &pb::GateDecision) -> Value {
    json!({
        "gate": g.gate,
        "allowed": g.allowed,
        "source": g.source,
        "reason": g.reason,
        "at": ts(g.at_ms),
        "batch": g.batch,
    })
}

/// `flotilla freeze create|list`.
pub fn freezes(out: Output, list: &[pb::Freeze]) {
    if out == Output::Json {
        let list: Vec<Value> = list
            .iter()
            .map(|f| {
                json!({
                    "id": f.id,
                    "env": f.env,
                    "from": ts(f.from_ms),
                    "until": ts(f.until_ms),
                    "weekly": if f.weekly.is_empty() { Value::Null } else { json!(f.weekly) },
                    "reason": f.reason,
                    "created_by": f.created_by,
                    "created_at": ts(f.created_at_ms),
                })
            })
            .collect();
        return print_json(&Value::Array(list));
    }
    let mut rows = vec![
        ["ID", "ENV", "WHEN", "REASON", "BY"]
            .map(String::from)
            .to_vec(),
    ];
    for f in list {
        let when = if f.weekly.is_empty() {
            format!("{} → {}", format_ms(f.from_ms), format_ms(f.until_ms))
        } else {
            format!("every week {} (UTC)", f.weekly)
        };
        rows.push(vec![
            f.id.clone(),
            f.env.clone(),
            when,
            clean(&f.reason),
            f.created_by.clone(),
        ]);
    }
    for line in table(&rows) {
        outln!("{line}");
    }
}

fn host_json(h: &pb::HostDeployment) -> Value {
    json!({
        "host_id": h.host_id,
        "batch": h.batch,
        "state": h.state,
        "image_before": h.image_before,
        "image": h.image,
        // converge/diff: the changes made (or that would be made); secrets show `***`.
        "changes": h.changes,
        "exit_code": h.exit_code,
        "started_at": ts(h.started_at_ms),
        "finished_at": ts(h.finished_at_ms),
        // The same instants as numbers (ms since the Unix epoch, 0 if not yet), for arithmetic.
        "started_at_ms": h.started_at_ms,
        "finished_at_ms": h.finished_at_ms,
        "duration_ms": host_duration_ms(h, 0),
        "error": h.error,
        "command_id": h.command_id,
        "rollback_command_id": h.rollback_command_id,
    })
}

/// A missing strategy is the proto default: one host per batch, no canary,
/// auto-rollback on, no health gate.
fn strategy_json(s: Option<&pb::Strategy>) -> Value {
    let default = pb::Strategy::default();
    let s = s.unwrap_or(&default);
    let hosts: std::collections::BTreeMap<&String, &String> = s.hosts.iter().collect();
    json!({
        "batch": batch_or_default(&s.batch),
        "canary": s.canary,
        "canary_manual": s.canary_manual,
        "pause_ms": s.pause_ms,
        "max_failures": s.max_failures,
        "hosts": hosts,
        "auto_rollback": s.auto_rollback.unwrap_or(true),
        "health": s.health.as_ref().map(|h| {
            let h = resolved_health(h);
            json!({
                "path": h.path,
                "url_template": h.url_template,
                "expect": h.expect,
                "healthy_deadline_ms": h.healthy_deadline_ms,
                "interval_ms": h.interval_ms,
                "min_healthy_ms": h.min_healthy_ms,
                "timeout_ms": h.timeout_ms,
            })
        }),
    })
}

fn batch_or_default(batch: &str) -> &str {
    if batch.is_empty() { "1" } else { batch }
}

/// The health gate with the coordinator's defaults filled in (zero means default).
fn resolved_health(h: &pb::HealthGate) -> pb::HealthGate {
    let or = |v: u64, default: std::time::Duration| {
        if v == 0 {
            u64::try_from(default.as_millis()).unwrap_or(u64::MAX)
        } else {
            v
        }
    };
    pb::HealthGate {
        path: if h.path.is_empty() {
            "/".into()
        } else {
            h.path.clone()
        },
        url_template: h.url_template.clone(),
        expect: if h.expect.is_empty() {
            "2xx".into()
        } else {
            h.expect.clone()
        },
        healthy_deadline_ms: or(h.healthy_deadline_ms, health::DEFAULT_DEADLINE),
        interval_ms: or(h.interval_ms, health::DEFAULT_INTERVAL),
        min_healthy_ms: h.min_healthy_ms,
        timeout_ms: or(h.timeout_ms, health::DEFAULT_TIMEOUT),
    }
}

/// How long a host's command took (or, while it runs, has taken by `now_ms`;
/// pass 0 for "only if finished").
pub fn host_duration_ms(h: &pb::HostDeployment, now_ms: i64) -> Option<i64> {
    let end = if h.finished_at_ms > 0 {
        h.finished_at_ms
    } else {
        now_ms
    };
    (h.started_at_ms > 0 && end >= h.started_at_ms).then(|| end - h.started_at_ms)
}

/// `4.1s`, `2m05s`, `1h02m`.
pub fn duration_text(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    }
}

/// Wall-clock time of day, UTC: `12:00:01`.
pub fn clock(ms: i64) -> String {
    let full = format_ms(ms);
    full.get(11..19).unwrap_or("--:--:--").to_owned()
}

/// Text from the network made safe for one terminal line: ANSI escape
/// sequences dropped, other control characters (newlines too) turned into spaces.
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ params final-byte; other escapes: ESC + one char.
            if chars.next_if_eq(&'[').is_some() {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c.is_control() {
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out
}

/// `batch 2/4`, `batch 1/4 (canary)`, or empty when the batches are not known yet.
pub fn batch_text(batch: u32, batches: u32, canary: bool) -> String {
    if batches == 0 {
        return String::new();
    }
    let canary = if canary && batch == 0 {
        " (canary)"
    } else {
        ""
    };
    format!("batch {}/{batches}{canary}", batch + 1)
}

fn has_canary(d: &pb::Deployment) -> bool {
    d.strategy.as_ref().is_some_and(|s| s.canary > 0)
}

/// Rows of cells as aligned lines: every column but the last padded to its widest cell.
pub fn table(rows: &[Vec<String>]) -> Vec<String> {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    let pad = widths[i].saturating_sub(cell.chars().count()) + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            line.trim_end().to_owned()
        })
        .collect()
}

fn or_dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { clean(s) }
}

pub fn doctor(out: Output, d: &pb::DoctorResponse) {
    if out == Output::Json {
        let findings: Vec<Value> = d
            .findings
            .iter()
            .map(|f| json!({ "check": f.check, "subject": f.subject, "message": f.message }))
            .collect();
        return print_json(&json!({
            "ok": d.findings.is_empty(),
            "checked": d.checked,
            "findings": findings,
        }));
    }
    for line in &d.checked {
        outln!("checked {}", clean(line));
    }
    if d.findings.is_empty() {
        outln!("no problems found");
        return;
    }
    outln!("{} problems:", d.findings.len());
    for f in &d.findings {
        outln!(
            "  [{}] {}: {}",
            clean(&f.check),
            clean(&f.subject),
            clean(&f.message)
        );
    }
}

pub fn status(out: Output, d: &pb::Deployment) {
    if out == Output::Json {
        return print_json(&deployment_json(d));
    }
    for line in status_lines(d, now_ms()) {
        outln!("{line}");
    }
}

/// `flotilla status`, for people.
pub fn status_lines(d: &pb::Deployment, now_ms: i64) -> Vec<String> {
    let mut lines = vec![headline(d)];
    lines.push(format!(
        "  created {} by {}{}",
        format_ms(d.created_at_ms),
        d.created_by,
        if d.finished_at_ms > 0 {
            format!(", finished {}", format_ms(d.finished_at_ms))
        } else {
            String::new()
        }
    ));
    for g in &d.gates {
        lines.push(format!(
            "  gate {} before {}: {} ({}): {}",
            g.gate,
            if g.batch == 0 {
                "the start".to_owned()
            } else {
                format!("batch {}", g.batch + 1)
            },
            if g.allowed { "allowed" } else { "refused" },
            g.source,
            clean(&g.reason)
        ));
    }
    let default = pb::Strategy::default();
    let s = d.strategy.as_ref().unwrap_or(&default);
    lines.push(format!("  strategy: {}", strategy_text(s)));
    if let Some(h) = &s.health {
        lines.push(format!("  health gate: {}", health_text(h)));
    }
    let mut progress = Vec::new();
    if d.batches > 0 {
        progress.push(batch_text(d.current_batch, d.batches, has_canary(d)));
    }
    progress.push(match d.failures {
        1 => "1 failure".to_owned(),
        n => format!("{n} failures"),
    });
    if d.resume_at_ms > 0 && d.state == "paused" {
        progress.push(format!("next batch at {}", format_ms(d.resume_at_ms)));
    }
    lines.push(format!("  progress: {}", progress.join(", ")));
    if d.release > 0 {
        lines.push(format!("  release: v{}", d.release));
    }
    if d.target_release > 0 {
        lines.push(format!("  returns to: v{}", d.target_release));
    }
    if !d.error.is_empty() {
        lines.push(format!("  reason: {}", clean(&d.error)));
    }
    let mut rows = vec![
        [
            "HOST", "BATCH", "STATE", "EXIT", "BEFORE", "AFTER", "STARTED", "DURATION", "ERROR",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for h in &d.hosts {
        rows.push(vec![
            h.host_id.clone(),
            host_batch(d, h),
            h.state.clone(),
            h.exit_code.map_or_else(|| "-".into(), |c| c.to_string()),
            or_dash(&h.image_before),
            or_dash(&h.image),
            if h.started_at_ms > 0 {
                clock(h.started_at_ms)
            } else {
                "-".into()
            },
            host_duration_ms(h, now_ms).map_or_else(|| "-".into(), duration_text),
            clean(&h.error),
        ]);
    }
    lines.extend(table(&rows).into_iter().map(|l| format!("  {l}")));
    let commands: Vec<Vec<String>> = d
        .hosts
        .iter()
        .filter(|h| !h.command_id.is_empty() || !h.rollback_command_id.is_empty())
        .map(|h| {
            let mut row = vec![
                h.host_id.clone(),
                format!("deploy {}", or_dash(&h.command_id)),
            ];
            if !h.rollback_command_id.is_empty() {
                row.push(format!("rollback {}", h.rollback_command_id));
            }
            row
        })
        .collect();
    if !commands.is_empty() {
        lines.push("  commands:".into());
        lines.extend(table(&commands).into_iter().map(|l| format!("    {l}")));
    }
    lines
}

/// `deployment ID: deploy shop → IMAGE in prod: STATE`
fn headline(d: &pb::Deployment) -> String {
    format!(
        "deployment {}: {} {} → {} in {}: {}",
        d.id, d.kind, d.app, d.image, d.env, d.state
    )
}

fn host_batch(d: &pb::Deployment, h: &pb::HostDeployment) -> String {
    if d.batches == 0 {
        "-".into()
    } else {
        (h.batch + 1).to_string()
    }
}

fn strategy_text(s: &pb::Strategy) -> String {
    let mut parts = vec![match batch_or_default(&s.batch) {
        "1" => "one host at a time".to_owned(),
        b => format!("batches of {b}"),
    }];
    if s.canary > 0 {
        parts.push(format!(
            "canary {}{}",
            s.canary,
            if s.canary_manual {
                " (promote manually)"
            } else {
                ""
            }
        ));
    }
    if s.pause_ms > 0 {
        parts.push(format!(
            "pause {}",
            humantime::format_duration(std::time::Duration::from_millis(s.pause_ms))
        ));
    }
    parts.push(format!("max failures {}", s.max_failures));
    if !s.hosts.is_empty() {
        let mut labels: Vec<String> = s.hosts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        parts.push(format!("hosts {}", labels.join(",")));
    }
    parts.push(format!(
        "auto-rollback {}",
        if s.auto_rollback.unwrap_or(true) {
            "on"
        } else {
            "off"
        }
    ));
    parts.join(", ")
}

fn health_text(h: &pb::HealthGate) -> String {
    let h = resolved_health(h);
    let d = |ms: u64| humantime::format_duration(std::time::Duration::from_millis(ms)).to_string();
    let url = if h.url_template.is_empty() {
        "(the app's health URL)".to_owned()
    } else {
        h.url_template.clone()
    };
    format!(
        "GET {url}{} expecting {}, healthy for {} within {} (probe every {}, timeout {})",
        h.path,
        h.expect,
        d(h.min_healthy_ms),
        d(h.healthy_deadline_ms),
        d(h.interval_ms),
        d(h.timeout_ms)
    )
}

/// The end of `--wait`: one line for the deployment, then one per host.
pub fn wait_summary(d: &pb::Deployment, now_ms: i64) -> Vec<String> {
    let mut head = headline(d);
    if d.batches > 0 {
        head.push_str(&format!(
            " ({}{})",
            batch_text(d.current_batch, d.batches, has_canary(d)),
            match d.failures {
                0 => String::new(),
                1 => ", 1 failure".into(),
                n => format!(", {n} failures"),
            }
        ));
    }
    let mut lines = vec![head];
    if !d.error.is_empty() {
        lines.push(format!("  reason: {}", clean(&d.error)));
    }
    if d.release > 0 {
        lines.push(format!("  release: v{}", d.release));
    }
    let mut rows = vec![
        [
            "HOST", "BATCH", "STATE", "BEFORE", "AFTER", "DURATION", "ERROR",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for h in &d.hosts {
        rows.push(vec![
            h.host_id.clone(),
            host_batch(d, h),
            h.state.clone(),
            or_dash(&h.image_before),
            or_dash(&h.image),
            host_duration_ms(h, now_ms).map_or_else(|| "-".into(), duration_text),
            clean(&h.error),
        ]);
    }
    lines.extend(table(&rows).into_iter().map(|l| format!("  {l}")));
    lines
}

pub fn deployments(out: Output, list: &[pb::Deployment]) {
    if out == Output::Json {
        return print_json(&Value::Array(list.iter().map(deployment_json).collect()));
    }
    let mut rows = vec![
        [
            "ID", "KIND", "APP", "ENV", "STATE", "BATCH", "CREATED", "IMAGE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for d in list {
        rows.push(vec![
            d.id.clone(),
            d.kind.clone(),
            d.app.clone(),
            d.env.clone(),
            d.state.clone(),
            if d.batches > 0 {
                format!("{}/{}", d.current_batch + 1, d.batches)
            } else {
                "-".into()
            },
            format_ms(d.created_at_ms),
            d.image.clone(),
        ]);
    }
    for line in table(&rows) {
        outln!("{line}");
    }
}

/// `flotilla ping --output json`.
pub fn ping_json(p: &pb::PingResponse) -> Value {
    let ms = |us: u64| us as f64 / 1000.0;
    let ok = p.hosts.iter().filter(|h| h.ok).count();
    json!({
        "hosts": p.hosts.iter().map(|h| json!({
            "host_id": h.host_id,
            "ok": h.ok,
            "rtt_ms": ms(h.rtt_us),
            "error": h.error,
        })).collect::<Vec<_>>(),
        "total_ms": ms(p.total_us),
        "ok": ok,
        "failed": p.hosts.len() - ok,
    })
}

pub fn ping(out: Output, p: &pb::PingResponse) {
    if out == Output::Json {
        return print_json(&ping_json(p));
    }
    for line in ping_lines(p) {
        outln!("{line}");
    }
}

pub fn ping_lines(p: &pb::PingResponse) -> Vec<String> {
    let mut rows = vec![["HOST", "OK", "RTT ms", "ERROR"].map(String::from).to_vec()];
    for h in &p.hosts {
        rows.push(vec![
            h.host_id.clone(),
            if h.ok { "yes" } else { "no" }.into(),
            if h.ok || h.rtt_us > 0 {
                format!("{:.2}", h.rtt_us as f64 / 1000.0)
            } else {
                "-".into()
            },
            clean(&h.error),
        ]);
    }
    let mut lines = table(&rows);
    let ok = p.hosts.iter().filter(|h| h.ok).count();
    lines.push(format!(
        "{ok}/{} hosts answered in {:.1} ms",
        p.hosts.len(),
        p.total_us as f64 / 1000.0
    ));
    lines
}

pub fn app_settings(out: Output, s: &pb::AppSettings) {
    if out == Output::Json {
        return print_json(&json!({ "app": s.app, "env": s.env, "health_url": s.health_url }));
    }
    if s.health_url.is_empty() {
        eprintln!(
            "{} in {} has no health URL; health gates need --health-url (set one with `flotilla app health-url {} --env {} TEMPLATE`)",
            s.app, s.env, s.app, s.env
        );
    } else {
        outln!("{}", s.health_url);
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
                    "team": if t.team.is_empty() { Value::Null } else { json!(t.team) },
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

#[cfg(test)]
mod tests;
