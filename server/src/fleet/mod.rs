//! Live agent sessions: which hosts are connected, and the channel that sends
//! them commands. The `AgentService` gRPC implementation lives in `service.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use flotilla_proto::v1 as pb;
use flotilla_shared::HostId;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

pub mod service;

/// Longest lists (cores, disks, interfaces) and most apps kept per sample.
const MAX_LIST: usize = 256;
const MAX_APPS: usize = 1024;

/// Messages buffered per session before the session is considered stuck.
const SESSION_BUFFER: usize = 1024;

struct Session {
    id: u64,
    tx: mpsc::Sender<Result<pb::CoordinatorMessage, tonic::Status>>,
}

/// The connected agents. A reconnecting agent replaces its previous session.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<HashMap<HostId, Session>>,
    /// The newest metrics sample per host.
    host_metrics: Mutex<HashMap<HostId, pb::HostMetrics>>,
    next_id: AtomicU64,
    /// The coordinator's metrics (sessions, commands, deployments); the
    /// rollout engine reaches them through its `Sessions`.
    metrics: Arc<Metrics>,
}

pub type SessionRx = mpsc::Receiver<Result<pb::CoordinatorMessage, tonic::Status>>;

impl Sessions {
    /// Sessions that report to `metrics`.
    pub fn with_metrics(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            ..Self::default()
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|inner| inner.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers a new session for `host` and returns its id and receiving end.
    pub fn register(&self, host: &HostId) -> (u64, SessionRx) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(SESSION_BUFFER);
        if let Ok(mut inner) = self.inner.lock() {
            inner.insert(host.clone(), Session { id, tx });
            self.metrics.set_agents_connected(inner.len());
        }
        (id, rx)
    }

    /// Removes the session unless a newer one already replaced it.
    pub fn unregister(&self, host: &HostId, id: u64) {
        if let Ok(mut inner) = self.inner.lock()
            && inner.get(host).is_some_and(|s| s.id == id)
        {
            inner.remove(host);
            self.metrics.set_agents_connected(inner.len());
        }
    }

    pub fn is_connected(&self, host: &HostId) -> bool {
        self.inner
            .lock()
            .map(|inner| inner.get(host).is_some_and(|s| !s.tx.is_closed()))
            .unwrap_or(false)
    }

    /// Sends without waiting. Anything not delivered stays in the durable
    /// outbox and is re-sent when the agent reconnects, so a full or closed
    /// channel only ends the session (forcing that reconnect).
    pub fn send(&self, host: &HostId, msg: pb::CoordinatorMessage) -> bool {
        let Ok(mut inner) = self.inner.lock() else {
            return false;
        };
        let Some(session) = inner.get(host) else {
            return false;
        };
        match session.tx.try_send(Ok(msg)) {
            Ok(()) => true,
            Err(_) => {
                tracing::warn!(%host, "session is stuck or closed; dropping it so the agent reconnects");
                inner.remove(host);
                self.metrics.set_agents_connected(inner.len());
                false
            }
        }
    }
}

impl Sessions {
    /// Ends `host`'s session (e.g. after revocation); the agent's stream
    /// closes and its newest sample is forgotten.
    pub fn disconnect(&self, host: &HostId) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.remove(host);
            self.metrics.set_agents_connected(inner.len());
        }
        if let Ok(mut samples) = self.host_metrics.lock() {
            samples.remove(host);
        }
    }

    /// Keeps `sample` as `host`'s newest metrics (in memory only: the agent
    /// sends a fresh one at every session start and every interval). Lists
    /// are capped so one misbehaving agent cannot grow the coordinator.
    pub fn set_host_metrics(&self, host: &HostId, mut sample: pb::HostMetrics) {
        sample.cpu_core_usage_ratio.truncate(MAX_LIST);
        sample.disks.truncate(MAX_LIST);
        sample.networks.truncate(MAX_LIST);
        sample.apps.truncate(MAX_APPS);
        if let Ok(mut metrics) = self.host_metrics.lock() {
            metrics.insert(host.clone(), sample);
        }
    }

    /// `host`'s newest metrics sample, if it sent one since the coordinator started.
    pub fn host_metrics(&self, host: &HostId) -> Option<pb::HostMetrics> {
        self.host_metrics.lock().ok()?.get(host).cloned()
    }

    /// Ends every session (shutdown).
    pub fn clear(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.clear();
            self.metrics.set_agents_connected(0);
        }
    }
}
