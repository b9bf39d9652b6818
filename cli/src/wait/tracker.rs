//! What `--wait` knows about a deployment while it runs: the last snapshot,
//! moved forward by each event, plus per-host log tails. Both renderers read
//! it; nothing here prints.

use std::collections::{BTreeMap, VecDeque};

use flotilla_proto::v1 as pb;

use crate::output::clean;

/// Log lines kept per host for the failure summary.
pub const TAIL_LINES: usize = 20;

/// Host states in which a host counts as failed (annotations, tails).
pub fn host_failed(state: &str) -> bool {
    matches!(state, "failed" | "interrupted" | "rollback_failed")
}

/// Host states in which something is happening on the host.
pub fn host_active(state: &str) -> bool {
    matches!(state, "running" | "rolling_back")
}

#[derive(Default)]
pub struct Live {
    /// The latest log line (cleaned for one terminal line).
    pub last_line: String,
    /// The last `TAIL_LINES` lines.
    pub tail: VecDeque<String>,
    /// When the current phase (deploy, then rollback) was dispatched.
    pub phase_started_ms: i64,
}

pub struct Tracker {
    pub d: pb::Deployment,
    pub live: BTreeMap<String, Live>,
    /// The latest deployment-level event message (why it is queued, paused, …).
    pub last_message: String,
    /// A cancel was requested; the deployment ends once running hosts finish.
    pub cancelling: bool,
}

impl Tracker {
    pub fn new(d: pb::Deployment) -> Self {
        Self {
            d,
            live: BTreeMap::new(),
            last_message: String::new(),
            cancelling: false,
        }
    }

    /// Takes a fresher snapshot (hosts and batches are known once a queued
    /// deployment starts); log tails are kept.
    pub fn reseed(&mut self, d: pb::Deployment) {
        self.d = d;
    }

    /// The number of batches is not known yet (queued, or an old snapshot).
    pub fn needs_snapshot(&self, ev: &pb::DeploymentEvent) -> bool {
        matches!(ev.kind.as_str(), "started" | "batch_started")
            && (self.d.batches == 0 || self.d.hosts.is_empty())
    }

    pub fn host(&self, host_id: &str) -> Option<&pb::HostDeployment> {
        self.d.hosts.iter().find(|h| h.host_id == host_id)
    }

    fn host_mut(&mut self, host_id: &str) -> &mut pb::HostDeployment {
        let i = match self.d.hosts.iter().position(|h| h.host_id == host_id) {
            Some(i) => i,
            None => {
                self.d.hosts.push(pb::HostDeployment {
                    host_id: host_id.to_owned(),
                    state: "pending".into(),
                    ..Default::default()
                });
                self.d.hosts.len() - 1
            }
        };
        &mut self.d.hosts[i]
    }

    pub fn canary(&self) -> bool {
        self.d.strategy.as_ref().is_some_and(|s| s.canary > 0)
    }

    /// Hosts that failed so far (the snapshot's count, or more if events say so).
    pub fn failures(&self) -> u32 {
        let live = self
            .d
            .hosts
            .iter()
            .filter(|h| matches!(h.state.as_str(), "failed" | "interrupted"))
            .count();
        self.d.failures.max(u32::try_from(live).unwrap_or(u32::MAX))
    }

    /// How long the host's current phase took (finished) or has taken (`now_ms`).
    pub fn phase_ms(&self, host_id: &str, at_ms: i64) -> Option<i64> {
        let start = self
            .live
            .get(host_id)
            .map(|l| l.phase_started_ms)
            .filter(|&ms| ms > 0)
            .or_else(|| self.host(host_id).map(|h| h.started_at_ms))
            .filter(|&ms| ms > 0)?;
        (at_ms >= start).then_some(at_ms - start)
    }

    pub fn apply_event(&mut self, ev: &pb::DeploymentEvent) {
        if ev.host_id.is_empty() {
            if !ev.state.is_empty() {
                self.d.state = ev.state.clone();
            }
            match ev.kind.as_str() {
                "batch_started" => self.d.current_batch = ev.batch,
                "cancel_requested" => self.cancelling = true,
                "paused" => {
                    let pause = self.d.strategy.as_ref().map_or(0, |s| s.pause_ms);
                    self.d.resume_at_ms = ev
                        .at_ms
                        .saturating_add(i64::try_from(pause).unwrap_or(i64::MAX));
                }
                _ => {}
            }
            self.last_message = ev.message.clone();
            return;
        }
        let h = self.host_mut(&ev.host_id);
        if !ev.state.is_empty() {
            h.state = ev.state.clone();
        }
        h.batch = ev.batch;
        let mut phase_start = None;
        match ev.kind.as_str() {
            "host_dispatched" => {
                if h.started_at_ms == 0 {
                    h.started_at_ms = ev.at_ms;
                }
                h.finished_at_ms = 0;
                phase_start = Some(ev.at_ms);
            }
            "host_accepted" if h.started_at_ms == 0 => h.started_at_ms = ev.at_ms,
            "host_finished" => {
                h.finished_at_ms = ev.at_ms;
                if host_failed(&h.state) && !ev.message.is_empty() {
                    h.error = ev.message.clone();
                }
            }
            "host_rollback_dispatched" => phase_start = Some(ev.at_ms),
            "host_rollback_finished" => {
                h.finished_at_ms = ev.at_ms;
                if host_failed(&h.state) && !ev.message.is_empty() {
                    h.error = ev.message.clone();
                }
            }
            _ => {}
        }
        if let Some(at) = phase_start {
            self.live
                .entry(ev.host_id.clone())
                .or_default()
                .phase_started_ms = at;
        }
    }

    pub fn apply_log(&mut self, line: &pb::DeploymentLogLine) {
        let live = self.live.entry(line.host_id.clone()).or_default();
        let text = clean(&line.line);
        if live.tail.len() == TAIL_LINES {
            live.tail.pop_front();
        }
        live.tail.push_back(text.clone());
        if !text.trim().is_empty() {
            live.last_line = text.trim().to_owned();
        }
    }
}
