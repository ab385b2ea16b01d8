//! GetCapacity, the size a CreateVolume's capacity range gives, and the order of nodes by
//! free space that placement starts from.

use csi_proto::v1::*;
use tonic::{Request, Response};
use warren_core::capability::{parse_capability, Access};
use warren_core::ids::Layout;
use warren_core::params::{backend, parse_params, Backend, VolumeParams};
use warren_core::validate::{resolve_capacity, MIN_IMAGE_BYTES};
use warren_core::{Error, Result, TOPOLOGY_KEY};

use super::{ControllerService, Reply, DEFAULT_VOLUME_BYTES, IMAGE_ALIGN};

/// The size of a new volume of `layout` (replicated volumes are sized like images): the
/// range's, or 1 GiB; images are whole MiB and at least `MIN_IMAGE_BYTES`.
pub(super) fn volume_capacity(range: Option<&CapacityRange>, layout: Layout) -> Result<u64> {
    let (required, limit) = range
        .map(|r| (r.required_bytes, r.limit_bytes))
        .unwrap_or((0, 0));
    let (default, align) = match layout {
        Layout::Image => (DEFAULT_VOLUME_BYTES, IMAGE_ALIGN),
        Layout::Dir => (DEFAULT_VOLUME_BYTES, 1),
    };
    let mut capacity = resolve_capacity(required, limit, default, align)?;
    if layout == Layout::Image && capacity < MIN_IMAGE_BYTES {
        if limit != 0 && (limit as u64) < MIN_IMAGE_BYTES {
            return Err(Error::OutOfRange(format!(
                "image volumes are at least {MIN_IMAGE_BYTES} bytes; limit_bytes is {limit}"
            )));
        }
        capacity = MIN_IMAGE_BYTES;
    }
    Ok(capacity)
}

impl ControllerService {
    /// Known nodes ordered by free space, most first; unreachable nodes last.
    pub(super) async fn nodes_by_free_space(&self, layout: Layout) -> Vec<String> {
        let mut scored = Vec::new();
        for (name, node) in self.nodes.snapshot() {
            let free = node
                .capacity(layout)
                .await
                .map(|c| c.available_bytes)
                .unwrap_or(0);
            scored.push((free, name.clone()));
        }
        scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        scored.into_iter().map(|(_, n)| n).collect()
    }

    pub(super) async fn get_capacity_inner(
        &self,
        req: Request<GetCapacityRequest>,
    ) -> Reply<GetCapacityResponse> {
        let req = req.into_inner();
        if backend(&req.parameters)? == Backend::Nfs {
            let available = self.nfs.capacity(&req.parameters).await?;
            return Ok(Response::new(GetCapacityResponse {
                available_capacity: available as i64,
                maximum_volume_size: None,
                minimum_volume_size: None,
            }));
        }
        if backend(&req.parameters)? == Backend::Replicated {
            return Ok(Response::new(self.replicated_capacity(&req).await?));
        }
        let VolumeParams::Local(params) = parse_params(&req.parameters)?;
        for cap in &req.volume_capabilities {
            let r = parse_capability(cap)?;
            if r.access == Access::Block && params.layout == Layout::Dir {
                return Ok(Response::new(GetCapacityResponse::default()));
            }
        }
        let wanted_node = req
            .accessible_topology
            .as_ref()
            .map(|t| t.segments.get(TOPOLOGY_KEY).cloned().unwrap_or_default());
        let (mut available, mut maximum) = (0u64, 0u64);
        for (name, node) in self.nodes.snapshot() {
            if wanted_node.as_ref().is_some_and(|w| *w != name) {
                continue;
            }
            if let Ok(c) = node.capacity(params.layout).await {
                available += c.available_bytes;
                maximum = maximum.max(c.maximum_volume_bytes);
            }
        }
        Ok(Response::new(GetCapacityResponse {
            available_capacity: available as i64,
            maximum_volume_size: Some(maximum as i64),
            minimum_volume_size: Some(match params.layout {
                Layout::Image => MIN_IMAGE_BYTES as i64,
                Layout::Dir => 0,
            }),
        }))
    }
}
