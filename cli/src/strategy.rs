//! `deploy`'s rollout flags and their translation into `pb::Strategy`. Checks
//! what is cheap to check here (syntax, durations, flags that go together);
//! the coordinator checks the rest (hosts that match, percentages of what).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use flotilla_proto::v1 as pb;
use flotilla_shared::Labels;
use flotilla_shared::health::{self, StatusSet};

/// Hosts per batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    Hosts(u32),
    Percent(u8),
}

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Batch::Hosts(n) => write!(f, "{n}"),
            Batch::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// `N` (hosts, at least 1) or `N%` (1 to 100 percent of the selected hosts).
pub fn parse_batch(s: &str) -> Result<Batch, String> {
    let s = s.trim();
    if let Some(p) = s.strip_suffix('%') {
        match p.trim().parse::<u8>() {
            Ok(p @ 1..=100) => Ok(Batch::Percent(p)),
            _ => Err(format!("{s:?} is not a share from 1% to 100%")),
        }
    } else {
        match s.parse::<u32>() {
            Ok(n @ 1..) => Ok(Batch::Hosts(n)),
            _ => Err(format!(
                "{s:?} is neither a number of hosts (1 or more) nor a share like 25%"
            )),
        }
    }
}

/// `k=v[,k=v…]`: hosts that carry every one of these labels.
pub fn parse_selector(s: &str) -> Result<Labels, String> {
    let pairs: Vec<&str> = s
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if pairs.is_empty() {
        return Err("give at least one label, e.g. region=eu".into());
    }
    let mut seen = std::collections::BTreeSet::new();
    for pair in &pairs {
        if let Some((k, _)) = pair.split_once('=')
            && !seen.insert(k)
        {
            return Err(format!("label {k:?} is given twice"));
        }
    }
    Labels::from_pairs(pairs).map_err(|e| e.to_string())
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?}: {e} (e.g. 30s, 5m, 1h)"))
}

/// A duration that must not be zero.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("{s:?} must be longer than 0")),
        d => Ok(d),
    }
}

fn parse_expect(s: &str) -> Result<String, String> {
    StatusSet::parse(s)
        .map(|set| set.to_string())
        .map_err(|e| e.to_string())
}

fn parse_template(s: &str) -> Result<String, String> {
    health::check_template(s.trim())
        .map(|()| s.trim().to_owned())
        .map_err(|e| e.to_string())
}

fn parse_path(s: &str) -> Result<String, String> {
    if s.starts_with('/') && !s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?} must start with / and contain no spaces"))
    }
}

/// Rollout flags of `flotilla deploy`.
#[derive(clap::Args, Debug, Clone)]
pub struct StrategyArgs {
    /// Hosts per batch: a count (`3`) or a share of the selected hosts (`25%`,
    /// rounded up). Hosts within a batch deploy in parallel.
    #[arg(long, value_name = "N|N%", default_value = "1", value_parser = parse_batch, help_heading = "Rollout")]
    pub batch: Batch,
    /// Deploy to this many hosts first, in a batch of their own (the canary),
    /// then to the rest in `--batch` sized batches. 0: no canary batch.
    #[arg(long, value_name = "N", default_value_t = 0, help_heading = "Rollout")]
    pub canary: u32,
    /// After the canary batch, wait until `flotilla promote ID` (or `flotilla
    /// cancel ID`). Needs --canary. With --wait, the CLI returns (exit 0) once
    /// the canary batch is done.
    #[arg(long, help_heading = "Rollout")]
    pub canary_manual: bool,
    /// Wait this long between batches, e.g. `30s`, `5m`.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration, help_heading = "Rollout")]
    pub pause: Duration,
    /// Host failures tolerated before the rollout stops (then, by default,
    /// rolls back). 0: stop at the first failure.
    #[arg(long, value_name = "N", default_value_t = 0, help_heading = "Rollout")]
    pub max_failures: u32,
    /// Only the hosts of the environment that carry all these labels,
    /// e.g. `region=eu,tier=web`. Default: every host of the environment.
    #[arg(long, value_name = "K=V[,K=V]", value_parser = parse_selector, help_heading = "Rollout")]
    pub hosts: Option<Labels>,
    /// When the rollout stops on failures, leave the hosts that took the new
    /// image as they are. Default: roll them back to the image they had.
    #[arg(long, help_heading = "Rollout")]
    pub no_auto_rollback: bool,
    /// Wait behind a deployment of the same app and environment that is still
    /// active (state `queued`), instead of being refused (exit 6).
    #[arg(long, help_heading = "Rollout")]
    pub queue: bool,

    /// Turn on the HTTP health gate: after each host's deploy, probe this path
    /// until it answers as expected, or the host fails. Default: no health gate.
    #[arg(long, value_name = "PATH", value_parser = parse_path, help_heading = "Health gate")]
    pub health_path: Option<String>,
    /// URL template to probe instead of the app's configured one (`flotilla app
    /// health-url`); placeholders `{app}`, `{env}`, `{host}`, `{domain}`,
    /// e.g. `http://{host}.internal:5000`. Needs --health-path.
    #[arg(long, value_name = "TEMPLATE", value_parser = parse_template, requires = "health_path", help_heading = "Health gate")]
    pub health_url: Option<String>,
    /// Accepted HTTP statuses: codes, ranges and classes, e.g. `200,301-302` or `2xx`.
    #[arg(long, value_name = "CODES", default_value = "2xx", value_parser = parse_expect, requires = "health_path", help_heading = "Health gate")]
    pub health_expect: String,
    /// Fail the host if it is not healthy (for --min-healthy-time) by then, at most 1h.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_positive_duration, requires = "health_path", help_heading = "Health gate")]
    pub healthy_deadline: Duration,
    /// Time between probes.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_positive_duration, requires = "health_path", help_heading = "Health gate")]
    pub health_interval: Duration,
    /// How long the host must stay healthy, without one failed probe, to pass.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration, requires = "health_path", help_heading = "Health gate")]
    pub min_healthy_time: Duration,
    /// Timeout of each probe.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_positive_duration, requires = "health_path", help_heading = "Health gate")]
    pub health_timeout: Duration,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl StrategyArgs {
    /// The strategy to send, or why the flags do not go together.
    pub fn to_proto(&self) -> Result<pb::Strategy, String> {
        if self.canary_manual && self.canary == 0 {
            return Err("--canary-manual needs --canary N (N hosts in the canary batch)".into());
        }
        let health = match &self.health_path {
            None => None,
            Some(path) => {
                if self.healthy_deadline > health::MAX_DEADLINE {
                    return Err(format!(
                        "--healthy-deadline is at most {}",
                        humantime::format_duration(health::MAX_DEADLINE)
                    ));
                }
                if self.min_healthy_time >= self.healthy_deadline {
                    return Err(format!(
                        "--min-healthy-time ({}) must be shorter than --healthy-deadline ({})",
                        humantime::format_duration(self.min_healthy_time),
                        humantime::format_duration(self.healthy_deadline)
                    ));
                }
                Some(pb::HealthGate {
                    path: path.clone(),
                    url_template: self.health_url.clone().unwrap_or_default(),
                    expect: self.health_expect.clone(),
                    healthy_deadline_ms: ms(self.healthy_deadline),
                    interval_ms: ms(self.health_interval),
                    min_healthy_ms: ms(self.min_healthy_time),
                    timeout_ms: ms(self.health_timeout),
                })
            }
        };
        let hosts: BTreeMap<String, String> =
            self.hosts.clone().map(Into::into).unwrap_or_default();
        Ok(pb::Strategy {
            batch: self.batch.to_string(),
            canary: self.canary,
            canary_manual: self.canary_manual,
            pause_ms: ms(self.pause),
            max_failures: self.max_failures,
            hosts: hosts.into_iter().collect(),
            // Unset means "on" (the coordinator's default); only an explicit
            // opt-out is sent.
            auto_rollback: self.no_auto_rollback.then_some(false),
            health,
        })
    }
}

#[cfg(test)]
mod tests;
