//! The Prometheus metrics Warren exports (`--metrics-address`), kept with the official
//! client, `prometheus-client`, and encoded in the Prometheus text format at each scrape:
//!
//! - `warren_csi_requests_total{method, kind}`: CSI calls handled;
//! - `warren_csi_request_errors_total{method, kind, code}`: those that failed, by gRPC code;
//! - `warren_csi_request_duration_seconds{method, kind}`: how long calls took (histogram);
//! - `warren_build_info{version}`: always 1;
//! - on nodes, `warren_volume_capacity_bytes{volume}` and `warren_volume_used_bytes{volume}`
//!   (see `volume_stats`), and the `warren_replicated_*{volume}` gauges of the replicated
//!   volumes staged there (see `replicated_stats`).
//!
//! Every label value comes from a fixed set (method names, `kind::KINDS`, gRPC codes) or
//! from a volume this node holds, never from a request as sent.

use std::time::Duration;

use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tonic::Code;
use warren_node::local::LocalStore;

use crate::replicated_stats::ReplicatedGauges;
use crate::volume_stats::VolumeGauges;

/// The `Content-Type` of what `Metrics::render` returns.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Upper bounds of the latency buckets, in seconds: from a Probe (well under a millisecond)
/// to a copy or an mkfs of a large volume (minutes).
const BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    method: &'static str,
    kind: &'static str,
    code: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<CallLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    latency: Family<CallLabels, Histogram, fn() -> Histogram>,
    volumes: Option<VolumeGauges>,
    /// On nodes: the replicated volumes staged there.
    replicated: Option<ReplicatedGauges>,
    /// One scrape at a time, so a volume refresh never shows half done.
    render: tokio::sync::Mutex<()>,
}

impl Metrics {
    /// `node`: the store whose volumes this process holds (nodes and `warren all`), for the
    /// per-volume gauges; a controller alone has none.
    pub fn new(node: Option<LocalStore>) -> Metrics {
        let mut registry = Registry::with_prefix("warren");
        registry.register(
            "build",
            "The running Warren",
            Info::new([("version", warren_core::identity::VERSION)]),
        );
        let requests = Family::<CallLabels, Counter>::default();
        registry.register(
            "csi_requests",
            "CSI calls handled, by method and volume kind",
            requests.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "csi_request_errors",
            "CSI calls that failed, by method, volume kind and gRPC code",
            errors.clone(),
        );
        let latency =
            Family::<CallLabels, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                Histogram::new(BUCKETS)
            });
        registry.register(
            "csi_request_duration_seconds",
            "Time taken by CSI calls, by method and volume kind",
            latency.clone(),
        );
        let replicated = node
            .is_some()
            .then(|| ReplicatedGauges::register(&mut registry));
        let volumes = node.map(|store| VolumeGauges::register(&mut registry, store));
        Metrics {
            registry,
            requests,
            errors,
            latency,
            volumes,
            replicated,
            render: tokio::sync::Mutex::new(()),
        }
    }

    /// The node's replica host, once started: its staged volumes get gauges.
    pub fn watch_replicas(&self, host: std::sync::Arc<warren_node::replicated::ReplicaHost>) {
        if let Some(replicated) = &self.replicated {
            replicated.watch(host);
        }
    }

    /// Records one finished CSI call.
    pub fn observe_call(
        &self,
        method: &'static str,
        kind: &'static str,
        code: Code,
        took: Duration,
    ) {
        let labels = CallLabels { method, kind };
        self.requests.get_or_create(&labels).inc();
        self.latency
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if code != Code::Ok {
            self.errors
                .get_or_create(&ErrorLabels {
                    method,
                    kind,
                    code: code_name(code),
                })
                .inc();
        }
    }

    /// The text a scrape gets (volume gauges refreshed first when they are stale).
    pub async fn render(&self) -> String {
        let _one_at_a_time = self.render.lock().await;
        if let Some(volumes) = &self.volumes {
            volumes.refresh().await;
        }
        if let Some(replicated) = &self.replicated {
            replicated.refresh().await;
        }
        let mut text = String::with_capacity(8192);
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

/// A gRPC code as gRPC spells it elsewhere (`NotFound`, as in grpc-go and grpc-prometheus).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_errors_and_latency_per_method_and_kind() {
        let m = Metrics::new(None);
        m.observe_call("DeleteVolume", "local", Code::Ok, Duration::from_millis(3));
        m.observe_call(
            "DeleteVolume",
            "local",
            Code::NotFound,
            Duration::from_millis(70),
        );
        let text = m.render().await;
        for line in [
            r#"warren_csi_requests_total{method="DeleteVolume",kind="local"} 2"#,
            r#"warren_csi_request_errors_total{method="DeleteVolume",kind="local",code="NotFound"} 1"#,
            r#"warren_csi_request_duration_seconds_bucket{method="DeleteVolume",kind="local",le="0.005"} 1"#,
            r#"warren_csi_request_duration_seconds_bucket{method="DeleteVolume",kind="local",le="0.1"} 2"#,
            r#"warren_csi_request_duration_seconds_count{method="DeleteVolume",kind="local"} 2"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(text.contains(&format!(
            "warren_build_info{{version=\"{}\"}} 1",
            warren_core::identity::VERSION
        )));
        // No per-volume gauges without a node store.
        assert!(!text.contains("warren_volume_"), "{text}");
    }
}
