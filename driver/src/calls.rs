//! What happens around every CSI call, in one place: a tracing span `csi` with the fields
//! `method` (the gRPC method, `CreateVolume`) and `volume` (the volume ID; the name for
//! CreateVolume and CreateSnapshot, which have no ID yet; the snapshot ID for the other
//! snapshot calls), so every line logged while the call runs carries them; and, when
//! metrics are on, the call's count, gRPC code and latency (`Metrics::observe_call`).
//!
//! Why a wrapper of the service traits rather than a tower layer on the gRPC server: a
//! layer sees HTTP/2 frames, not the request, so it would have to decode every protobuf
//! body a second time to learn the volume (and, for CreateVolume, the `backend`
//! parameter). `Observed<S>` implements the same generated trait as the service it wraps
//! and hands each call the typed request tonic already decoded. Only the few fields
//! listed in `target` are read: no request is ever logged whole, so secrets (the
//! `secrets` maps) never reach a log line or a label. The cost of this choice is one line
//! per gRPC method below, and a duty: the generated traits have default methods
//! (`generate_default_stubs` in proto/build.rs), so a method a service implements but
//! that is missing here would compile and answer UNIMPLEMENTED through the wrapper. When
//! the CSI spec is updated, add its new methods here (the list is the spec's, whether
//! Warren implements them or not).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::identity_server::Identity;
use csi_proto::v1::node_server::Node;
use csi_proto::v1::*;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use crate::kind;
use crate::metrics::{code_name, Metrics};

/// A CSI service with spans and metrics around each call; wraps `Identity`, `Controller`
/// and `Node` implementations alike.
pub struct Observed<S> {
    inner: Arc<S>,
    metrics: Option<Arc<Metrics>>,
}

impl<S> Observed<S> {
    /// `metrics`: where to count calls (None when `--metrics-address` is unset; the spans
    /// are made either way).
    pub fn new(inner: S, metrics: Option<Arc<Metrics>>) -> Self {
        Self::from_arc(Arc::new(inner), metrics)
    }

    pub fn from_arc(inner: Arc<S>, metrics: Option<Arc<Metrics>>) -> Self {
        Observed { inner, metrics }
    }

    /// Runs one call in its span, then logs and counts how it ended.
    async fn call<R>(
        &self,
        method: &'static str,
        (span, kind): (tracing::Span, &'static str),
        run: impl Future<Output = Result<Response<R>, Status>>,
    ) -> Result<Response<R>, Status> {
        let start = Instant::now();
        let result = run.instrument(span.clone()).await;
        let took = start.elapsed();
        let code = result.as_ref().err().map_or(Code::Ok, Status::code);
        span.in_scope(|| match &result {
            Ok(_) => tracing::debug!(ms = took.as_millis() as u64, "CSI call done"),
            Err(status) => tracing::info!(
                code = %code_name(code),
                message = %clip(status.message(), 1024),
                ms = took.as_millis() as u64,
                "CSI call failed"
            ),
        });
        if let Some(metrics) = &self.metrics {
            metrics.observe_call(method, kind, code, took);
        }
        result
    }
}

/// The span of one call, and its volume kind. The span copies the fields it shows, so the
/// request can move on to the handler.
fn open(method: &'static str, target: Target<'_>) -> (tracing::Span, &'static str) {
    let span = tracing::info_span!(
        "csi",
        method = %method,
        volume = tracing::field::Empty,
        source = tracing::field::Empty
    );
    if !target.volume.is_empty() {
        span.record("volume", tracing::field::display(clip(target.volume, 256)));
    }
    if !target.source.is_empty() {
        span.record("source", tracing::field::display(clip(target.source, 256)));
    }
    (span, target.kind)
}

/// What a request is about, for the span and the `kind` label.
struct Target<'a> {
    volume: &'a str,
    /// CreateSnapshot's source volume.
    source: &'a str,
    kind: &'static str,
}

impl<'a> Target<'a> {
    fn none() -> Self {
        Target {
            volume: "",
            source: "",
            kind: kind::UNKNOWN,
        }
    }
    fn id(id: &'a str) -> Self {
        Target {
            volume: id,
            source: "",
            kind: kind::of_id(id),
        }
    }
}

/// A request value as it may appear in a log line: at most `max` characters, control
/// characters escaped (IDs and names are not validated yet when the span is made).
fn clip(value: &str, max: usize) -> String {
    let mut out: String = value
        .chars()
        .take(max)
        .flat_map(|c| {
            let escape = c.is_control();
            c.escape_debug()
                .filter(move |_| escape)
                .chain(std::iter::once(c).filter(move |_| !escape))
        })
        .collect();
    if value.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// Implements a service trait for `Observed<S>`, one line per gRPC method:
/// `rust_name(Request => Response) "GrpcName" |request| target`.
macro_rules! observe {
    ($service:ident { $(
        $fn:ident($req:ty => $resp:ty) $name:literal |$r:ident| $target:expr;
    )* }) => {
        #[tonic::async_trait]
        impl<S: $service> $service for Observed<S> {
            $(
                async fn $fn(&self, request: Request<$req>) -> Result<Response<$resp>, Status> {
                    let opened = {
                        #[allow(unused_variables)]
                        let $r = request.get_ref();
                        open($name, $target)
                    };
                    self.call($name, opened, self.inner.$fn(request)).await
                }
            )*
        }
    };
}

observe!(Identity {
    get_plugin_info(GetPluginInfoRequest => GetPluginInfoResponse) "GetPluginInfo" |r| Target::none();
    get_plugin_capabilities(GetPluginCapabilitiesRequest => GetPluginCapabilitiesResponse)
        "GetPluginCapabilities" |r| Target::none();
    probe(ProbeRequest => ProbeResponse) "Probe" |r| Target::none();
});

observe!(Controller {
    create_volume(CreateVolumeRequest => CreateVolumeResponse) "CreateVolume" |r| Target {
        volume: &r.name,
        source: "",
        kind: kind::of_parameters(&r.parameters),
    };
    delete_volume(DeleteVolumeRequest => DeleteVolumeResponse) "DeleteVolume"
        |r| Target::id(&r.volume_id);
    controller_publish_volume(ControllerPublishVolumeRequest => ControllerPublishVolumeResponse)
        "ControllerPublishVolume" |r| Target::id(&r.volume_id);
    controller_unpublish_volume(
        ControllerUnpublishVolumeRequest => ControllerUnpublishVolumeResponse
    ) "ControllerUnpublishVolume" |r| Target::id(&r.volume_id);
    validate_volume_capabilities(
        ValidateVolumeCapabilitiesRequest => ValidateVolumeCapabilitiesResponse
    ) "ValidateVolumeCapabilities" |r| Target::id(&r.volume_id);
    list_volumes(ListVolumesRequest => ListVolumesResponse) "ListVolumes" |r| Target::none();
    get_capacity(GetCapacityRequest => GetCapacityResponse) "GetCapacity" |r| Target {
        kind: kind::of_parameters(&r.parameters),
        ..Target::none()
    };
    controller_get_capabilities(
        ControllerGetCapabilitiesRequest => ControllerGetCapabilitiesResponse
    ) "ControllerGetCapabilities" |r| Target::none();
    create_snapshot(CreateSnapshotRequest => CreateSnapshotResponse) "CreateSnapshot" |r| Target {
        volume: &r.name,
        source: &r.source_volume_id,
        kind: kind::of_id(&r.source_volume_id),
    };
    delete_snapshot(DeleteSnapshotRequest => DeleteSnapshotResponse) "DeleteSnapshot"
        |r| Target::id(&r.snapshot_id);
    list_snapshots(ListSnapshotsRequest => ListSnapshotsResponse) "ListSnapshots" |r| {
        if r.snapshot_id.is_empty() {
            Target::id(&r.source_volume_id)
        } else {
            Target::id(&r.snapshot_id)
        }
    };
    get_snapshot(GetSnapshotRequest => GetSnapshotResponse) "GetSnapshot"
        |r| Target::id(&r.snapshot_id);
    controller_expand_volume(ControllerExpandVolumeRequest => ControllerExpandVolumeResponse)
        "ControllerExpandVolume" |r| Target::id(&r.volume_id);
    controller_get_volume(ControllerGetVolumeRequest => ControllerGetVolumeResponse)
        "ControllerGetVolume" |r| Target::id(&r.volume_id);
    controller_modify_volume(ControllerModifyVolumeRequest => ControllerModifyVolumeResponse)
        "ControllerModifyVolume" |r| Target::id(&r.volume_id);
});

observe!(Node {
    node_stage_volume(NodeStageVolumeRequest => NodeStageVolumeResponse) "NodeStageVolume"
        |r| Target::id(&r.volume_id);
    node_unstage_volume(NodeUnstageVolumeRequest => NodeUnstageVolumeResponse)
        "NodeUnstageVolume" |r| Target::id(&r.volume_id);
    node_publish_volume(NodePublishVolumeRequest => NodePublishVolumeResponse)
        "NodePublishVolume" |r| Target::id(&r.volume_id);
    node_unpublish_volume(NodeUnpublishVolumeRequest => NodeUnpublishVolumeResponse)
        "NodeUnpublishVolume" |r| Target::id(&r.volume_id);
    node_get_volume_stats(NodeGetVolumeStatsRequest => NodeGetVolumeStatsResponse)
        "NodeGetVolumeStats" |r| Target::id(&r.volume_id);
    node_expand_volume(NodeExpandVolumeRequest => NodeExpandVolumeResponse) "NodeExpandVolume"
        |r| Target::id(&r.volume_id);
    node_get_capabilities(NodeGetCapabilitiesRequest => NodeGetCapabilitiesResponse)
        "NodeGetCapabilities" |r| Target::none();
    node_get_info(NodeGetInfoRequest => NodeGetInfoResponse) "NodeGetInfo" |r| Target::none();
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_values_are_bounded_and_escaped() {
        assert_eq!(clip("local#image#n#0a", 256), "local#image#n#0a");
        assert_eq!(clip("a\nb\u{1b}[31m", 256), "a\\nb\\u{1b}[31m");
        let long = clip(&"x".repeat(1000), 256);
        assert_eq!(long.chars().count(), 257);
    }
}
