//! Fleet-level events: an agent offline for `disconnect_after`, an agent
//! certificate expiring within `cert_expiry_warning`. Each is sent once per
//! episode (a new silence, a new certificate), remembered in the store so a
//! restart does not repeat it. The caller supplies the hosts and who is
//! connected; nothing here reads sessions.

use flotilla_shared::HostId;
use flotilla_shared::time::format_ms;

use super::event::human_duration;
use super::{Event, EventKind, Notifier};
use crate::store::{Host, StoreError};

impl Notifier {
    /// Enqueues `agent_disconnected` for every unrevoked host that is not
    /// `connected` and was last seen `disconnect_after` ago or more, and
    /// `cert_expiring` for every unrevoked host whose certificate ends within
    /// `cert_expiry_warning` — each once per episode. Returns the number of
    /// events. Call it periodically (the sweeper's interval is plenty).
    pub fn check_fleet(
        &self,
        hosts: &[Host],
        connected: impl Fn(&HostId) -> bool,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let disconnect_ms = ms(self.config.disconnect_after);
        let warning_ms = ms(self.config.cert_expiry_warning);
        let mut n_events = 0;
        for host in hosts.iter().filter(|h| !h.revoked) {
            let id = host.host_id.as_str();
            // A host that never reported counts from when it joined.
            let seen = host.last_seen_ms.max(host.joined_at_ms);
            let quiet = now_ms.saturating_sub(seen);
            if !connected(&host.host_id)
                && quiet >= disconnect_ms
                && !self
                    .store
                    .notify_marked(EventKind::AgentDisconnected.as_str(), id, seen)?
            {
                let reason = if host.last_seen_ms > 0 {
                    format!(
                        "no contact for {} (last seen {})",
                        human_duration(quiet),
                        format_ms(seen)
                    )
                } else {
                    format!("never connected since joining {}", format_ms(seen))
                };
                // Enqueued before it is marked: a failure in between repeats
                // the event rather than losing it.
                let event = fleet_event(EventKind::AgentDisconnected, host, reason, now_ms);
                self.enqueue(&event)?;
                self.store
                    .notify_mark(EventKind::AgentDisconnected.as_str(), id, seen)?;
                n_events += 1;
            }
            let not_after = host.cert_not_after_ms;
            if not_after > 0
                && not_after.saturating_sub(now_ms) <= warning_ms
                && !self
                    .store
                    .notify_marked(EventKind::CertExpiring.as_str(), id, not_after)?
            {
                let reason = if not_after > now_ms {
                    format!(
                        "agent certificate expires {} (in {}); the agent renews it while connected",
                        format_ms(not_after),
                        human_duration(not_after - now_ms)
                    )
                } else {
                    format!("agent certificate expired {}", format_ms(not_after))
                };
                self.enqueue(&fleet_event(EventKind::CertExpiring, host, reason, now_ms))?;
                self.store
                    .notify_mark(EventKind::CertExpiring.as_str(), id, not_after)?;
                n_events += 1;
            }
        }
        Ok(n_events)
    }
}

fn fleet_event(kind: EventKind, host: &Host, reason: String, now_ms: i64) -> Event {
    Event {
        host: Some(host.host_id.to_string()),
        reason: Some(reason),
        at_ms: now_ms,
        ..Event::new(kind, host.env.as_str())
    }
}

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
