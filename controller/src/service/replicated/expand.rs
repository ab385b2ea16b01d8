//! ControllerExpandVolume of a replicated volume: every replica grows, concurrently, on
//! its node (`NodeStorage::expand_replica`; an engine may have it open), and the record
//! says the new size only once all of them have it. A node that cannot answer leaves the
//! record at the old size and the call UNAVAILABLE; the retry asks every node again,
//! which is harmless (a replica's growth is idempotent). The engine of a staged volume
//! serves the new size when NodeExpandVolume tells it (node-plugin `replicated/expand.rs`),
//! so node expansion is always asked for, raw block volumes included.

use csi_proto::v1::{CapacityRange, ControllerExpandVolumeRequest};
use warren_core::capability::parse_capability;
use warren_core::validate::resolve_capacity;
use warren_core::{Error, Result};

use super::fanout::{from_node, on_each};
use crate::service::{ControllerService, IMAGE_ALIGN};

impl ControllerService {
    /// The new size, and that the node must act: a staged volume's engine and kernel
    /// device must learn the new size (and a mount volume's file system grow into it),
    /// raw block included, unlike an image volume, whose loop device the node resizes
    /// when it is next attached.
    pub(in crate::service) async fn expand_replicated(
        &self,
        req: &ControllerExpandVolumeRequest,
        range: &CapacityRange,
    ) -> Result<(u64, bool)> {
        let rec = self.ready_replicated(&req.volume_id)?;
        if let Some(cap) = req.volume_capability.as_ref() {
            parse_capability(cap)?;
        }
        // Sized like image volumes: whole MiB (and so whole 4 KiB blocks, as replicas are).
        let wanted = resolve_capacity(
            range.required_bytes,
            range.limit_bytes,
            rec.capacity_bytes,
            IMAGE_ALIGN,
        )?;
        let _lock = self.locks().lock(rec.id.key.as_str()).await;
        let mut rec = self.ready_replicated(&req.volume_id)?;
        let node_expansion = true;
        if wanted <= rec.capacity_bytes {
            return Ok((rec.capacity_bytes, node_expansion)); // never shrinks
        }
        let id = rec.id.clone();
        let answers = on_each(self.nodes(), &rec.nodes(), None, |node| {
            let id = id.clone();
            async move { node.expand_replica(id, wanted).await }
        })
        .await;
        let (mut unreachable, mut refused) = (None, None);
        for (replica, answer) in rec.replicas.iter().zip(answers) {
            match answer {
                Ok(info) if info.size_bytes >= wanted => {}
                Ok(info) => {
                    refused.get_or_insert(Error::Internal(format!(
                        "node {}: its replica has {} bytes after growing to {wanted}",
                        replica.node, info.size_bytes
                    )));
                }
                Err(e @ Error::Unavailable(_)) => {
                    unreachable.get_or_insert(from_node(&replica.node, e));
                }
                Err(e) => {
                    refused.get_or_insert(from_node(&replica.node, e));
                }
            }
        }
        // A refusal says more than an unreachable node (a retry cannot fix it); either
        // way the record keeps the old size until every replica has the new one.
        if let Some(e) = refused.or(unreachable) {
            return Err(e);
        }
        rec.capacity_bytes = wanted;
        self.records().put_replicated(&rec)?;
        tracing::info!(volume = %rec.id, bytes = wanted, "replicated volume expanded");
        Ok((wanted, node_expansion))
    }
}
