//! Host metrics: one `sysinfo` sample of the machine every `--metrics-interval`
//! (CPU, load, memory, swap, disks, network, uptime, processes) plus the apps
//! the agent deployed. A sample goes to the coordinator (`flotilla hosts`) and,
//! as `flotilla_host_*` series, to the Prometheus remote-write pipeline.
//!
//! Cardinality is bounded on purpose: container plumbing (overlay mounts under
//! Docker's data root, `veth*` interfaces) is left out, and at most
//! `MAX_DISKS`/`MAX_INTERFACES` entries are kept, so a busy Dokku host does
//! not create a series per container.

use std::collections::BTreeMap;

use flotilla_proto::v1 as pb;
use sysinfo::{CpuRefreshKind, Disks, MemoryRefreshKind, Networks, RefreshKind, System};

/// Most disks and network interfaces reported per sample.
pub const MAX_DISKS: usize = 32;
pub const MAX_INTERFACES: usize = 32;

/// Every metric name the agent writes for its host (all carry `host` and
/// `env`). The Grafana dashboard test checks its queries against this list.
pub const HOST_METRIC_NAMES: &[&str] = &[
    "flotilla_host_cpu_usage_ratio",
    "flotilla_host_cpu_core_usage_ratio",
    "flotilla_host_load1",
    "flotilla_host_load5",
    "flotilla_host_load15",
    "flotilla_host_memory_used_bytes",
    "flotilla_host_memory_total_bytes",
    "flotilla_host_swap_used_bytes",
    "flotilla_host_swap_total_bytes",
    "flotilla_host_disk_used_bytes",
    "flotilla_host_disk_total_bytes",
    "flotilla_host_network_receive_bytes_total",
    "flotilla_host_network_transmit_bytes_total",
    "flotilla_host_network_receive_errors_total",
    "flotilla_host_network_transmit_errors_total",
    "flotilla_host_uptime_seconds",
    "flotilla_host_processes",
    "flotilla_host_apps_deployed",
    "flotilla_host_app_release_info",
    "flotilla_host_app_cert_expiry_timestamp_seconds",
];

use crate::telemetry::remote_write::{STALE_NAN_BITS as STALE_NAN, Series};

/// One metric point of a sample: name, labels other than `host`/`env`, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub name: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// Keeps the `sysinfo` handles between samples (CPU usage is a difference
/// between two refreshes).
pub struct Sampler {
    system: System,
    disks: Disks,
    networks: Networks,
}

impl Sampler {
    /// Reads the CPU counters once, so the first `sample` (at least
    /// `sysinfo::MINIMUM_CPU_UPDATE_INTERVAL` later) has a usage figure.
    pub fn new() -> Result<Self, sysinfo::Error> {
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_usage())
                .with_memory(MemoryRefreshKind::everything()),
        )?;
        Ok(Self {
            system,
            disks: Disks::new_with_refreshed_list()?,
            networks: Networks::new_with_refreshed_list()?,
        })
    }

    /// A sample now. Blocking (reads /proc, statvfs): call it off the runtime
    /// (`spawn_blocking`). `apps` is what the agent knows each app runs.
    pub fn sample(&mut self, at_ms: i64, apps: &BTreeMap<String, String>) -> pb::HostMetrics {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        // `true`: forget disks and interfaces that went away.
        self.disks.refresh(true);
        self.networks.refresh(true);
        let load = System::load_average().unwrap_or(sysinfo::LoadAvg {
            one: 0.0,
            five: 0.0,
            fifteen: 0.0,
        });
        let mut disks: Vec<pb::DiskUsage> = self
            .disks
            .iter()
            .filter(|d| {
                keep_disk(
                    &d.mount_point().to_string_lossy(),
                    &d.file_system().to_string_lossy(),
                )
            })
            .map(|d| pb::DiskUsage {
                mount_point: d.mount_point().to_string_lossy().into_owned(),
                device: d.name().to_string_lossy().into_owned(),
                filesystem: d.file_system().to_string_lossy().into_owned(),
                used_bytes: d.total_space().saturating_sub(d.available_space()),
                total_bytes: d.total_space(),
            })
            .collect();
        disks.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
        disks.dedup_by(|a, b| a.mount_point == b.mount_point);
        disks.truncate(MAX_DISKS);
        let mut networks: Vec<pb::NetworkCounters> = self
            .networks
            .iter()
            .filter(|(name, _)| keep_interface(&name.to_string_lossy()))
            .map(|(name, n)| pb::NetworkCounters {
                interface: name.to_string_lossy().into_owned(),
                received_bytes: n.total_received(),
                transmitted_bytes: n.total_transmitted(),
                receive_errors: n.total_errors_on_received(),
                transmit_errors: n.total_errors_on_transmitted(),
            })
            .collect();
        networks.sort_by(|a, b| a.interface.cmp(&b.interface));
        networks.truncate(MAX_INTERFACES);
        pb::HostMetrics {
            at_ms,
            cpu_usage_ratio: ratio(self.system.global_cpu_usage()),
            cpu_core_usage_ratio: self
                .system
                .cpus()
                .iter()
                .map(|c| ratio(c.usage()))
                .collect(),
            load1: load.one,
            load5: load.five,
            load15: load.fifteen,
            memory_used_bytes: self.system.used_memory(),
            memory_total_bytes: self.system.total_memory(),
            swap_used_bytes: self.system.used_swap(),
            swap_total_bytes: self.system.total_swap(),
            disks,
            networks,
            uptime_seconds: System::uptime().unwrap_or(0),
            processes: count_processes(),
            apps: apps
                .iter()
                .map(|(app, image)| pb::AppRelease {
                    app: app.clone(),
                    image: image.clone(),
                    ..Default::default()
                })
                .collect(),
        }
    }
}

/// Samples the host every `interval` until `cancel`: each sample is published
/// on `latest` (the link sends it to the coordinator) and handed to `sink`
/// with the previous one (for the remote-write pipeline). `apps` reads what
/// the agent knows each app runs. The first sample comes one interval after
/// the start (CPU usage needs two readings).
pub async fn run(
    interval: std::time::Duration,
    latest: tokio::sync::watch::Sender<Option<pb::HostMetrics>>,
    apps: impl Fn() -> BTreeMap<String, String> + Send + Sync + 'static,
    certs: crate::certs::CertFacts,
    mut sink: impl FnMut(&pb::HostMetrics, Option<&pb::HostMetrics>) + Send,
    cancel: tokio_util::sync::CancellationToken,
) {
    let created = tokio::select! {
        () = cancel.cancelled() => return,
        created = tokio::task::spawn_blocking(Sampler::new) => created,
    };
    let mut sampler = match created {
        Ok(Ok(sampler)) => sampler,
        Ok(Err(e)) => {
            tracing::error!("host metrics are off: cannot read the system's counters: {e}");
            return;
        }
        Err(e) => {
            tracing::error!("host metrics are off: {e}");
            return;
        }
    };
    let apps = std::sync::Arc::new(apps);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut previous: Option<pb::HostMetrics> = None;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let apps = std::sync::Arc::clone(&apps);
        let taking = tokio::task::spawn_blocking(move || {
            let sample = sampler.sample(flotilla_shared::time::now_ms(), &apps());
            (sampler, sample)
        });
        // Not waiting for a sample stuck in the kernel past a stop.
        let taken = tokio::select! {
            () = cancel.cancelled() => return,
            taken = taking => taken,
        };
        let sample = match taken {
            Ok((back, sample)) => {
                sampler = back;
                sample
            }
            Err(e) => {
                tracing::error!("host metrics stopped: the sampler failed: {e}");
                return;
            }
        };
        let mut sample = sample;
        if let Ok(certs) = certs.lock() {
            for app in &mut sample.apps {
                if let Some(facts) = certs.get(&app.app) {
                    app.cert_expires_at_ms = facts.cert_expires_at_ms;
                    app.tls.clone_from(&facts.tls);
                    app.checked_at_ms = facts.checked_at_ms;
                    app.services.clone_from(&facts.services);
                }
            }
            // Apps set up by a spec but never deployed have facts, no image.
            for (name, facts) in certs.iter() {
                if !sample.apps.iter().any(|a| &a.app == name) {
                    sample.apps.push(facts.clone());
                }
            }
        }
        sink(&sample, previous.as_ref());
        latest.send_replace(Some(sample.clone()));
        previous = Some(sample);
    }
}

/// sysinfo gives percent (0..100 per CPU); the metrics use ratios.
fn ratio(percent: f32) -> f64 {
    (f64::from(percent) / 100.0).clamp(0.0, 1.0)
}

/// Real filesystems only: no container layers (one per running container on a
/// Dokku host) and nothing under Docker's or containerd's data roots.
fn keep_disk(mount_point: &str, filesystem: &str) -> bool {
    const SKIP_FS: &[&str] = &["overlay", "aufs", "tmpfs", "nsfs", "fuse.lxcfs", "squashfs"];
    const SKIP_UNDER: &[&str] = &[
        "/var/lib/docker/",
        "/var/lib/containerd/",
        "/var/lib/containers/",
        "/snap/",
    ];
    !SKIP_FS.contains(&filesystem) && !SKIP_UNDER.iter().any(|p| mount_point.starts_with(p))
}

/// Physical and bridge interfaces; not loopback, not per-container veths.
fn keep_interface(name: &str) -> bool {
    name != "lo" && !name.starts_with("veth")
}

/// Processes now: the numeric entries of /proc (cheaper than sysinfo's full
/// process table, which reads every process's status).
fn count_processes() -> u64 {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                })
                .count() as u64
        })
        .unwrap_or(0)
}

/// The remote-write series of one sample: its points with `host` and `env`
/// labels, all at the sample's time.
pub fn series(
    sample: &pb::HostMetrics,
    previous: Option<&pb::HostMetrics>,
    host: &str,
    env: &str,
) -> Vec<Series> {
    points(sample, previous)
        .into_iter()
        .map(|p| {
            let mut labels: Vec<(String, String)> = p
                .labels
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            labels.push(("host".to_owned(), host.to_owned()));
            labels.push(("env".to_owned(), env.to_owned()));
            Series {
                name: p.name.to_owned(),
                labels,
                value: p.value,
                timestamp_ms: sample.at_ms,
            }
        })
        .collect()
}

/// The points of one sample, without `host`/`env` (the pipeline adds them).
/// `previous` is the sample before, for staleness markers: an app release that
/// changed gets one stale point for its old `image` label, so dashboards do not
/// show two releases for five minutes.
pub fn points(sample: &pb::HostMetrics, previous: Option<&pb::HostMetrics>) -> Vec<Point> {
    let plain = |name: &'static str, value: f64| Point {
        name,
        labels: Vec::new(),
        value,
    };
    let mut out = vec![
        plain("flotilla_host_cpu_usage_ratio", sample.cpu_usage_ratio),
        plain("flotilla_host_load1", sample.load1),
        plain("flotilla_host_load5", sample.load5),
        plain("flotilla_host_load15", sample.load15),
        plain(
            "flotilla_host_memory_used_bytes",
            sample.memory_used_bytes as f64,
        ),
        plain(
            "flotilla_host_memory_total_bytes",
            sample.memory_total_bytes as f64,
        ),
        plain(
            "flotilla_host_swap_used_bytes",
            sample.swap_used_bytes as f64,
        ),
        plain(
            "flotilla_host_swap_total_bytes",
            sample.swap_total_bytes as f64,
        ),
        plain("flotilla_host_uptime_seconds", sample.uptime_seconds as f64),
        plain("flotilla_host_processes", sample.processes as f64),
        plain(
            "flotilla_host_apps_deployed",
            sample.apps.iter().filter(|a| !a.image.is_empty()).count() as f64,
        ),
    ];
    for (i, usage) in sample.cpu_core_usage_ratio.iter().enumerate() {
        out.push(Point {
            name: "flotilla_host_cpu_core_usage_ratio",
            labels: vec![("cpu", i.to_string())],
            value: *usage,
        });
    }
    for d in &sample.disks {
        let labels = vec![
            ("device", d.device.clone()),
            ("fstype", d.filesystem.clone()),
            ("mountpoint", d.mount_point.clone()),
        ];
        out.push(Point {
            name: "flotilla_host_disk_used_bytes",
            labels: labels.clone(),
            value: d.used_bytes as f64,
        });
        out.push(Point {
            name: "flotilla_host_disk_total_bytes",
            labels,
            value: d.total_bytes as f64,
        });
    }
    for n in &sample.networks {
        for (name, value) in [
            (
                "flotilla_host_network_receive_bytes_total",
                n.received_bytes,
            ),
            (
                "flotilla_host_network_transmit_bytes_total",
                n.transmitted_bytes,
            ),
            (
                "flotilla_host_network_receive_errors_total",
                n.receive_errors,
            ),
            (
                "flotilla_host_network_transmit_errors_total",
                n.transmit_errors,
            ),
        ] {
            out.push(Point {
                name,
                labels: vec![("interface", n.interface.clone())],
                value: value as f64,
            });
        }
    }
    let release = |a: &pb::AppRelease, value: f64| Point {
        name: "flotilla_host_app_release_info",
        labels: vec![("app", a.app.clone()), ("image", a.image.clone())],
        value,
    };
    for a in &sample.apps {
        if !a.image.is_empty() {
            out.push(release(a, 1.0));
        }
        if a.cert_expires_at_ms > 0 {
            out.push(Point {
                name: "flotilla_host_app_cert_expiry_timestamp_seconds",
                labels: vec![("app", a.app.clone())],
                value: a.cert_expires_at_ms as f64 / 1000.0,
            });
        }
    }
    if let Some(previous) = previous {
        for old in &previous.apps {
            let same = |a: &pb::AppRelease| a.app == old.app && a.image == old.image;
            if !old.image.is_empty() && !sample.apps.iter().any(same) {
                out.push(release(old, f64::from_bits(STALE_NAN)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_of_this_machine_is_plausible() {
        let mut sampler = Sampler::new().unwrap();
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let apps = BTreeMap::from([("web".to_owned(), "registry/web:1".to_owned())]);
        let s = sampler.sample(1_000, &apps);
        assert_eq!(s.at_ms, 1_000);
        assert!((0.0..=1.0).contains(&s.cpu_usage_ratio));
        assert!(!s.cpu_core_usage_ratio.is_empty());
        assert!(
            s.cpu_core_usage_ratio
                .iter()
                .all(|r| (0.0..=1.0).contains(r))
        );
        assert!(s.memory_total_bytes > 0 && s.memory_used_bytes <= s.memory_total_bytes);
        assert!(s.uptime_seconds > 0);
        // This process is one of them.
        assert!(s.processes >= 1);
        // (In a container `/` may be an overlay, which is left out.)
        for d in &s.disks {
            assert!(d.total_bytes > 0 && d.used_bytes <= d.total_bytes, "{d:?}");
            assert!(keep_disk(&d.mount_point, &d.filesystem));
        }
        assert!(s.networks.iter().all(|n| n.interface != "lo"));
        assert_eq!(s.apps.len(), 1);
    }

    #[test]
    fn container_plumbing_is_left_out() {
        assert!(keep_disk("/", "ext4"));
        assert!(keep_disk("/var/lib/docker", "xfs"));
        assert!(!keep_disk("/var/lib/docker/overlay2/abc/merged", "overlay"));
        assert!(!keep_disk("/srv/x", "overlay"));
        assert!(!keep_disk("/dev/shm", "tmpfs"));
        assert!(keep_interface("eth0") && keep_interface("docker0"));
        assert!(!keep_interface("lo") && !keep_interface("veth12ab"));
    }

    fn sample_with(apps: &[(&str, &str)]) -> pb::HostMetrics {
        pb::HostMetrics {
            at_ms: 5,
            cpu_usage_ratio: 0.25,
            cpu_core_usage_ratio: vec![0.5, 0.0],
            memory_used_bytes: 3,
            memory_total_bytes: 8,
            disks: vec![pb::DiskUsage {
                mount_point: "/".into(),
                device: "/dev/vda".into(),
                filesystem: "ext4".into(),
                used_bytes: 10,
                total_bytes: 40,
            }],
            networks: vec![pb::NetworkCounters {
                interface: "eth0".into(),
                received_bytes: 7,
                ..Default::default()
            }],
            apps: apps
                .iter()
                .map(|(a, i)| pb::AppRelease {
                    app: (*a).into(),
                    image: (*i).into(),
                    cert_expires_at_ms: 1_800_000_000_000,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn points_cover_every_name_and_carry_their_labels() {
        let points = points(&sample_with(&[("web", "r/web:1")]), None);
        for name in HOST_METRIC_NAMES {
            assert!(points.iter().any(|p| p.name == *name), "{name} missing");
        }
        for p in &points {
            assert!(HOST_METRIC_NAMES.contains(&p.name), "{} not listed", p.name);
        }
        let core1 = points
            .iter()
            .find(|p| p.name == "flotilla_host_cpu_core_usage_ratio" && p.labels[0].1 == "1")
            .unwrap();
        assert_eq!(core1.value, 0.0);
        let disk = points
            .iter()
            .find(|p| p.name == "flotilla_host_disk_used_bytes")
            .unwrap();
        assert_eq!(
            disk.labels,
            vec![
                ("device", "/dev/vda".to_owned()),
                ("fstype", "ext4".to_owned()),
                ("mountpoint", "/".to_owned())
            ]
        );
        assert_eq!(disk.value, 10.0);
    }

    #[test]
    fn a_changed_release_marks_the_old_series_stale_once() {
        let before = sample_with(&[("web", "r/web:1"), ("api", "r/api:3")]);
        let after = sample_with(&[("web", "r/web:2"), ("api", "r/api:3")]);
        let releases = |ps: &[Point]| -> Vec<(String, u64)> {
            ps.iter()
                .filter(|p| p.name == "flotilla_host_app_release_info")
                .map(|p| (p.labels[1].1.clone(), p.value.to_bits()))
                .collect()
        };
        let first = points(&after, Some(&before));
        assert_eq!(
            releases(&first),
            vec![
                ("r/web:2".to_owned(), 1f64.to_bits()),
                ("r/api:3".to_owned(), 1f64.to_bits()),
                ("r/web:1".to_owned(), STALE_NAN),
            ]
        );
        let next = points(&after, Some(&after));
        assert_eq!(releases(&next).len(), 2);
    }
}
