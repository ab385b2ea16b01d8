//! Per-volume gauges on nodes: `warren_volume_capacity_bytes` (the size the volume was made
//! or expanded to) and `warren_volume_used_bytes` (the node's storage the volume takes
//! now: the blocks allocated to an image, all of it for a thick one; the blocks of the
//! files under a `dir` volume). The reading is warren-node's `local::volume_usage`; this
//! file only keeps it as Prometheus gauges.
//!
//! They are read from the node's store when scraped, at most once per `MIN_REFRESH`, so a
//! node nobody scrapes does no work and many scrapers cost one pass. How full the file
//! system *inside* a mounted volume is remains what NodeGetVolumeStats reports (the
//! kubelet exports it as `kubelet_volume_stats_*`); these gauges are the node's side.

use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use warren_node::local::{volume_usage, LocalStore};

/// Scrapes closer together than this see the previous reading.
const MIN_REFRESH: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VolumeLabels {
    volume: String,
}

pub struct VolumeGauges {
    store: LocalStore,
    capacity: Family<VolumeLabels, Gauge>,
    used: Family<VolumeLabels, Gauge>,
    last: tokio::sync::Mutex<Option<Instant>>,
}

impl VolumeGauges {
    pub fn register(registry: &mut Registry, store: LocalStore) -> VolumeGauges {
        let capacity = Family::<VolumeLabels, Gauge>::default();
        registry.register(
            "volume_capacity_bytes",
            "Provisioned size of each volume on this node",
            capacity.clone(),
        );
        let used = Family::<VolumeLabels, Gauge>::default();
        registry.register(
            "volume_used_bytes",
            "Bytes of this node's storage each volume takes",
            used.clone(),
        );
        VolumeGauges {
            store,
            capacity,
            used,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// Reads every volume again unless that was done less than `MIN_REFRESH` ago. A failed
    /// reading keeps the previous one.
    pub async fn refresh(&self) {
        let mut last = self.last.lock().await;
        if last.is_some_and(|at| at.elapsed() < MIN_REFRESH) {
            return;
        }
        let readings = match volume_usage(&self.store).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list volumes for metrics");
                return;
            }
        };
        self.capacity.clear();
        self.used.clear();
        for reading in readings {
            let labels = VolumeLabels {
                volume: reading.id.to_string(),
            };
            self.capacity
                .get_or_create(&labels)
                .set(clamp(reading.capacity_bytes));
            self.used
                .get_or_create(&labels)
                .set(clamp(reading.used_bytes));
        }
        *last = Some(Instant::now());
    }
}

fn clamp(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}
