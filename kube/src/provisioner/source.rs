//! A claim's data source (a clone's source claim, a restore's VolumeSnapshot) as a CSI
//! content source, and the node that holds it.

use csi_proto::v1::volume_content_source::{self, SnapshotSource, VolumeSource};
use csi_proto::v1::VolumeContentSource;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::Api;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use warren_core::ids;

use super::Context;
use crate::claims::Source;
use crate::error::{Error, Result};
use crate::DRIVER;

/// The node holding a resolved data source (a snapshot or a volume), from its CSI id.
pub(super) fn node_of(source: &VolumeContentSource) -> Option<String> {
    match source.r#type.as_ref()? {
        volume_content_source::Type::Volume(v) => ids::local_volume_node(&v.volume_id),
        volume_content_source::Type::Snapshot(s) => ids::local_snapshot_node(&s.snapshot_id),
    }
}

/// The CSI source of a clone (the source claim's volume) or restore (the snapshot's
/// handle). Both must already be complete.
pub(super) async fn resolve_source<C>(
    ctx: &Context<C>,
    namespace: &str,
    source: &Source,
) -> Result<VolumeContentSource> {
    let source = match source {
        Source::Claim(name) => {
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
            let volume_name = claims
                .get_opt(name)
                .await?
                .and_then(|c| c.spec?.volume_name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| Error::Invalid(format!("source claim {name} is not bound yet")))?;
            let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
            let handle = pvs
                .get(&volume_name)
                .await?
                .spec
                .and_then(|s| s.csi)
                .filter(|c| c.driver == DRIVER)
                .map(|c| c.volume_handle)
                .ok_or_else(|| {
                    Error::Invalid(format!("source claim {name} is not a Warren volume"))
                })?;
            volume_content_source::Type::Volume(VolumeSource { volume_id: handle })
        }
        Source::Snapshot(name) => {
            let snapshots: Api<DynamicObject> = Api::namespaced_with(
                ctx.client.clone(),
                namespace,
                &snapshot_resource("VolumeSnapshot"),
            );
            let snapshot = snapshots.get(name).await?;
            let content_name = snapshot.data["status"]["boundVolumeSnapshotContentName"]
                .as_str()
                .ok_or_else(|| {
                    Error::Invalid(format!("snapshot {name} is not bound to a content yet"))
                })?
                .to_string();
            let contents: Api<DynamicObject> = Api::all_with(
                ctx.client.clone(),
                &snapshot_resource("VolumeSnapshotContent"),
            );
            let content = contents.get(&content_name).await?;
            let status = &content.data["status"];
            if status["readyToUse"].as_bool() != Some(true) {
                return Err(Error::Invalid(format!(
                    "snapshot {name} is not ready to use yet"
                )));
            }
            let handle = status["snapshotHandle"]
                .as_str()
                .ok_or_else(|| Error::Invalid(format!("snapshot {name} has no handle")))?;
            volume_content_source::Type::Snapshot(SnapshotSource {
                snapshot_id: handle.into(),
            })
        }
    };
    Ok(VolumeContentSource {
        r#type: Some(source),
    })
}

pub fn snapshot_resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "snapshot.storage.k8s.io",
        "v1",
        kind,
    ))
}
