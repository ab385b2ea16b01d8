//! Per-volume gauges of the replicated volumes staged on this node, read from their
//! engines at each scrape (a read of memory, nothing on disk or the network):
//!
//! - `warren_replicated_replicas{volume}`: the replicas the volume was staged with;
//! - `warren_replicated_replicas_in_sync{volume}`: members of its current generation;
//! - `warren_replicated_replicas_rebuilding{volume}`: replicas being rebuilt now;
//! - `warren_replicated_degraded_seconds{volume}`: how long it has had fewer in-sync
//!   replicas than asked (or a failed engine), 0 when it has them all;
//! - `warren_replicated_last_rebuild_bytes{volume}`, `..._last_rebuild_seconds{volume}`:
//!   the bytes the last finished rebuild copied and how long it took (so its rate);
//! - `warren_replicated_rebuild_done_bytes{volume}`, `..._rebuild_total_bytes{volume}`,
//!   `..._rebuild_rate_bytes_per_second{volume}`: the rebuilds in progress now, summed
//!   over the replicas being rebuilt (0 when none runs).
//!
//! The volume label is the replica name (the key of `replicated#<key>`). Only the node
//! running a volume's engine (where it is staged) reports it.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use warren_node::replicated::{ReplicaHost, StagedVolume};
use warren_replica::heal::RebuildProgress;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VolumeLabels {
    volume: String,
}

type Gauges = Family<VolumeLabels, Gauge>;
type SecondsGauges = Family<VolumeLabels, Gauge<f64, std::sync::atomic::AtomicU64>>;

pub struct ReplicatedGauges {
    host: OnceLock<Arc<ReplicaHost>>,
    replicas: Gauges,
    in_sync: Gauges,
    rebuilding: Gauges,
    degraded_seconds: SecondsGauges,
    rebuild_bytes: Gauges,
    rebuild_seconds: SecondsGauges,
    rebuild_done: Gauges,
    rebuild_total: Gauges,
    rebuild_rate: Gauges,
    /// Since when each volume has been degraded.
    degraded_since: tokio::sync::Mutex<HashMap<String, Instant>>,
}

/// Whether a staged volume has fewer in-sync replicas than asked, or has failed.
pub fn degraded(v: &StagedVolume) -> bool {
    v.status.failed.is_some() || v.replicas.iter().any(|r| !v.status.members.contains(r))
}

impl ReplicatedGauges {
    pub fn register(registry: &mut Registry) -> ReplicatedGauges {
        let mut gauges = |name: &str, help: &str| {
            let family = Gauges::default();
            registry.register(name, help, family.clone());
            family
        };
        let replicas = gauges(
            "replicated_replicas",
            "Replicas a replicated volume staged here was staged with",
        );
        let in_sync = gauges(
            "replicated_replicas_in_sync",
            "Replicas in the current generation of a replicated volume staged here",
        );
        let rebuilding = gauges(
            "replicated_replicas_rebuilding",
            "Replicas of a replicated volume staged here being rebuilt now",
        );
        let rebuild_bytes = gauges(
            "replicated_last_rebuild_bytes",
            "Bytes the last finished rebuild of a replicated volume staged here copied",
        );
        let rebuild_done = gauges(
            "replicated_rebuild_done_bytes",
            "Bytes the rebuilds in progress of a replicated volume staged here have copied",
        );
        let rebuild_total = gauges(
            "replicated_rebuild_total_bytes",
            "Bytes the rebuilds in progress of a replicated volume staged here have to copy",
        );
        let rebuild_rate = gauges(
            "replicated_rebuild_rate_bytes_per_second",
            "Copy rate so far of the rebuilds in progress of a replicated volume staged here",
        );
        let degraded_seconds = SecondsGauges::default();
        registry.register(
            "replicated_degraded_seconds",
            "How long a replicated volume staged here has had fewer in-sync replicas than asked (0: it has them all)",
            degraded_seconds.clone(),
        );
        let rebuild_seconds = SecondsGauges::default();
        registry.register(
            "replicated_last_rebuild_seconds",
            "How long the last finished rebuild of a replicated volume staged here took",
            rebuild_seconds.clone(),
        );
        ReplicatedGauges {
            host: OnceLock::new(),
            replicas,
            in_sync,
            rebuilding,
            degraded_seconds,
            rebuild_bytes,
            rebuild_seconds,
            rebuild_done,
            rebuild_total,
            rebuild_rate,
            degraded_since: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The node's replica host, once it has started (after the metrics listener).
    pub fn watch(&self, host: Arc<ReplicaHost>) {
        let _ = self.host.set(host);
    }

    pub async fn refresh(&self) {
        let Some(host) = self.host.get() else {
            return;
        };
        let staged = host.staged().await;
        self.record(&staged, Instant::now()).await;
    }

    async fn record(&self, staged: &[StagedVolume], now: Instant) {
        let mut since = self.degraded_since.lock().await;
        since.retain(|volume, _| staged.iter().any(|v| &v.volume == volume));
        for family in [
            &self.replicas,
            &self.in_sync,
            &self.rebuilding,
            &self.rebuild_bytes,
            &self.rebuild_done,
            &self.rebuild_total,
            &self.rebuild_rate,
        ] {
            family.clear();
        }
        self.degraded_seconds.clear();
        self.rebuild_seconds.clear();
        for v in staged {
            let labels = VolumeLabels {
                volume: v.volume.clone(),
            };
            let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
            self.replicas
                .get_or_create(&labels)
                .set(count(v.replicas.len()));
            self.in_sync
                .get_or_create(&labels)
                .set(count(v.status.members.len()));
            self.rebuilding
                .get_or_create(&labels)
                .set(count(v.status.rebuilding.len()));
            let seconds = if degraded(v) {
                now.duration_since(*since.entry(v.volume.clone()).or_insert(now))
                    .as_secs_f64()
            } else {
                since.remove(&v.volume);
                0.0
            };
            self.degraded_seconds.get_or_create(&labels).set(seconds);
            let sum = |f: fn(&RebuildProgress) -> u64| {
                i64::try_from(v.status.rebuilds.iter().map(f).sum::<u64>()).unwrap_or(i64::MAX)
            };
            self.rebuild_done
                .get_or_create(&labels)
                .set(sum(|p| p.bytes_done));
            self.rebuild_total
                .get_or_create(&labels)
                .set(sum(|p| p.bytes_total));
            self.rebuild_rate
                .get_or_create(&labels)
                .set(sum(RebuildProgress::bytes_per_second));
            if let Some(rebuild) = &v.status.last_rebuild {
                self.rebuild_bytes
                    .get_or_create(&labels)
                    .set(i64::try_from(rebuild.bytes).unwrap_or(i64::MAX));
                self.rebuild_seconds
                    .get_or_create(&labels)
                    .set(rebuild.elapsed.as_secs_f64());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus_client::encoding::text::encode;
    use warren_replica::engine::EngineStatus;

    use super::*;

    fn staged(volume: &str, members: &[&str]) -> StagedVolume {
        StagedVolume {
            volume: volume.into(),
            replicas: vec!["n1".into(), "n2".into()],
            status: EngineStatus {
                gen: 3,
                members: members.iter().map(|m| m.to_string()).collect(),
                rebuilding: vec![],
                failed: None,
                last_rebuild: None,
                rebuilds: vec![],
            },
        }
    }

    #[tokio::test]
    async fn a_volume_missing_a_replica_counts_its_degraded_time() {
        let mut registry = Registry::with_prefix("warren");
        let gauges = ReplicatedGauges::register(&mut registry);
        let t0 = Instant::now();
        let mut rebuilding_b = staged("b", &["n1"]);
        rebuilding_b.status.rebuilds = vec![RebuildProgress {
            replica: "n2".into(),
            incremental: true,
            bytes_done: 8 << 20,
            bytes_total: 32 << 20,
            elapsed: Duration::from_secs(2),
        }];
        gauges
            .record(&[staged("a", &["n1", "n2"]), staged("b", &["n1"])], t0)
            .await;
        gauges
            .record(
                &[staged("a", &["n1", "n2"]), rebuilding_b],
                t0 + Duration::from_secs(7),
            )
            .await;
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for line in [
            r#"warren_replicated_replicas{volume="a"} 2"#,
            r#"warren_replicated_replicas_in_sync{volume="a"} 2"#,
            r#"warren_replicated_replicas_in_sync{volume="b"} 1"#,
            r#"warren_replicated_degraded_seconds{volume="a"} 0.0"#,
            r#"warren_replicated_degraded_seconds{volume="b"} 7.0"#,
            r#"warren_replicated_rebuild_done_bytes{volume="b"} 8388608"#,
            r#"warren_replicated_rebuild_total_bytes{volume="b"} 33554432"#,
            r#"warren_replicated_rebuild_rate_bytes_per_second{volume="b"} 4194304"#,
            r#"warren_replicated_rebuild_done_bytes{volume="a"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        // Healthy again: back to 0; a volume no longer staged is gone.
        gauges
            .record(&[staged("b", &["n1", "n2"])], t0 + Duration::from_secs(9))
            .await;
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"warren_replicated_degraded_seconds{volume="b"} 0.0"#),
            "{text}"
        );
        assert!(!text.contains(r#"volume="a""#), "{text}");
    }
}
