//! Snapshots on this node: a copy of a volume's payload (its file system frozen while an
//! image is copied), made in `.creating/` and renamed into place like a volume.

use std::fs;
use std::time::SystemTime;

use warren_core::durable::{read_json, sync_dir, write_json_atomic};
use warren_core::ids::{SnapshotId, VolumeId};
use warren_core::storage::SnapshotInfo;
use warren_core::Error as CoreError;

use super::meta::{payload, SnapshotMeta, META};
use super::remove::remove_object_dir;
use super::store::{io_err, Inner};
use crate::error::{Error, Result};

impl Inner {
    pub(super) fn snapshot_meta(&self, id: &SnapshotId) -> Result<SnapshotMeta> {
        self.check_node(&id.node, "snapshot")?;
        let path = self.dirs.snapshot(&id.key).join(META);
        if !path.exists() {
            return Err(CoreError::NotFound(format!("snapshot {id} does not exist")).into());
        }
        let meta: SnapshotMeta = read_json(&path)?;
        if meta.id != *id {
            return Err(CoreError::NotFound(format!("snapshot {id} does not exist")).into());
        }
        Ok(meta)
    }

    pub(super) fn create_snapshot(
        &self,
        id: &SnapshotId,
        name: &str,
        source: &VolumeId,
    ) -> Result<SnapshotInfo> {
        self.check_node(&id.node, "snapshot")?;
        if id.layout != source.layout {
            return Err(CoreError::InvalidArgument(format!(
                "snapshot id {id} does not match the layout of volume {source}"
            ))
            .into());
        }
        let final_dir = self.dirs.snapshot(&id.key);
        if final_dir.join(META).exists() {
            let existing = self.snapshot_meta(id)?;
            if existing.source_volume == *source {
                return Ok(snapshot_info(existing));
            }
            return Err(CoreError::AlreadyExists(format!(
                "snapshot {id} exists for another volume"
            ))
            .into());
        }
        let volume = self.volume_meta(source)?;
        let work = self.dirs.creating().join(id.key.as_str());
        if work.exists() {
            remove_object_dir(&work)?;
        }
        fs::create_dir(&work).map_err(io_err(format!("create {}", work.display())))?;
        let copied = (|| {
            let _frozen = self.freeze_if_mounted(&volume)?;
            let from = payload(&self.dirs.volume(&source.key), source.layout);
            self.copy_payload(&from, &payload(&work, id.layout), id.layout)
        })();
        if let Err(e) = copied {
            let _ = remove_object_dir(&work);
            return Err(e);
        }
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let meta = SnapshotMeta {
            id: id.clone(),
            name: name.to_string(),
            source_volume: source.clone(),
            size_bytes: volume.capacity_bytes,
            created_at_secs: now.as_secs() as i64,
            created_at_nanos: now.subsec_nanos() as i32,
        };
        write_json_atomic(&work.join(META), &meta)?;
        fs::rename(&work, &final_dir)
            .map_err(io_err(format!("publish {}", final_dir.display())))?;
        sync_dir(&self.dirs.snapshots())?;
        tracing::info!(snapshot = %id, volume = %source, "snapshot created");
        Ok(snapshot_info(meta))
    }

    pub(super) fn delete_snapshot(&self, id: &SnapshotId) -> Result<()> {
        match self.snapshot_meta(id) {
            Ok(_) => self.trash(&self.dirs.snapshot(&id.key), &id.key),
            Err(Error::Core(CoreError::NotFound(_))) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

pub(super) fn snapshot_info(meta: SnapshotMeta) -> SnapshotInfo {
    SnapshotInfo {
        id: meta.id,
        name: meta.name,
        source_volume: meta.source_volume,
        size_bytes: meta.size_bytes,
        created_at_secs: meta.created_at_secs,
        created_at_nanos: meta.created_at_nanos,
        ready: true,
    }
}
