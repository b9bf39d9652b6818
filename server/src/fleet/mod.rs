//! Live agent sessions: which hosts are connected, and the channel that sends
//! them commands. The `AgentService` gRPC implementation lives in `service.rs`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use flotilla_proto::v1 as pb;
use flotilla_shared::HostId;
use tokio::sync::mpsc;

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
    metrics: Mutex<HashMap<HostId, pb::HostMetrics>>,
    next_id: AtomicU64,
}

pub type SessionRx = mpsc::Receiver<Result<pb::CoordinatorMessage, tonic::Status>>;

impl Sessions {
    /// Registers a new session for `host` and returns its id and receiving end.
    pub fn register(&self, host: &HostId) -> (u64, SessionRx) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(SESSION_BUFFER);
        if let Ok(mut inner) = self.inner.lock() {
            inner.insert(host.clone(), Session { id, tx });
        }
        (id, rx)
    }

    /// Removes the session unless a newer one already replaced it.
    pub fn unregister(&self, host: &HostId, id: u64) {
        if let Ok(mut inner) = self.inner.lock()
            && inner.get(host).is_some_and(|s| s.id == id)
        {
            inner.remove(host);
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
                false
            }
        }
    }
}

impl Sessions {
    /// Ends `host`'s session (e.g. after revocation); the agent's stream closes.
    pub fn disconnect(&self, host: &HostId) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.remove(host);
        }
    }

    /// Keeps `sample` as `host`'s newest metrics (in memory only: the agent
    /// sends a fresh one at every session start and every interval). Lists
    /// are capped so one misbehaving agent cannot grow the coordinator.
    pub fn set_metrics(&self, host: &HostId, mut sample: pb::HostMetrics) {
        sample.cpu_core_usage_ratio.truncate(MAX_LIST);
        sample.disks.truncate(MAX_LIST);
        sample.networks.truncate(MAX_LIST);
        sample.apps.truncate(MAX_APPS);
        if let Ok(mut metrics) = self.metrics.lock() {
            metrics.insert(host.clone(), sample);
        }
    }

    /// `host`'s newest metrics sample, if it sent one since the coordinator started.
    pub fn metrics(&self, host: &HostId) -> Option<pb::HostMetrics> {
        self.metrics.lock().ok()?.get(host).cloned()
    }

    /// Ends every session (shutdown).
    pub fn clear(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.clear();
        }
    }
}
