//! `backend: nfs` in the Controller service. A volume is a sub-directory of an export on
//! an existing NFS server; the controller makes, copies, archives and removes it by
//! speaking NFSv3 from user space (`warren_nfs::dirops`), so it needs no kernel mount and
//! no privilege.
//!
//! The volume ID carries server, share, sub-directory and what to do on delete, so
//! DeleteVolume and the node need nothing else. The controller still keeps a small record
//! per volume and snapshot (`<state-dir>/controller/nfs/`): it is what makes CreateVolume
//! idempotent by name (and refuses the same name with another size, or a second volume
//! on a sub-directory already in use), and what ListVolumes and ListSnapshots list. A
//! volume whose record is lost (the controller's state dir moved) keeps working and is
//! still deleted by its ID.

use std::collections::HashMap;
use std::path::Path;
use std::time::SystemTime;

use csi_proto::v1::*;
use serde::{Deserialize, Serialize};
use warren_core::capability::{parse_shared_capabilities, Access};
use warren_core::ids::{self, Key};
use warren_core::lock::KeyedLocks;
use warren_core::validate::{resolve_capacity, validate_name};
use warren_core::{Error, Result};
use warren_nfs::dirops::{Export, ExportOptions};
use warren_nfs::params::{self, OnDelete, CONTEXT_NFS_VERSION};
use warren_nfs::volume_id::{NfsSnapshotId, NfsVolumeId};

use crate::record_dir::{Record, RecordDir};
use crate::service::DEFAULT_VOLUME_BYTES;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NfsVolumeRecord {
    /// Random: the record's file name and its place in ListVolumes' order.
    pub key: Key,
    pub name: String,
    pub id: String,
    pub capacity_bytes: u64,
    /// The CSI id of the snapshot or volume it was copied from.
    pub source: Option<String>,
    /// `nfsVersion`, handed to the node in the volume context.
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NfsSnapshotRecord {
    /// Also the snapshot directory's name (`.warren-snapshots/<key>`).
    pub key: Key,
    pub name: String,
    pub id: String,
    pub source_volume: String,
    pub size_bytes: u64,
    pub created_at_secs: i64,
    pub created_at_nanos: i32,
    /// Written `false` before the copy starts, so a crash mid-copy is finished by the
    /// CO's retry under the same key instead of leaving an unknown copy behind.
    pub ready: bool,
}

impl Record for NfsVolumeRecord {
    fn key(&self) -> &Key {
        &self.key
    }
}

impl Record for NfsSnapshotRecord {
    fn key(&self) -> &Key {
        &self.key
    }
}

pub struct NfsVolumes {
    volumes: RecordDir<NfsVolumeRecord>,
    snapshots: RecordDir<NfsSnapshotRecord>,
    options: ExportOptions,
    locks: KeyedLocks,
    /// One `Export` per server and share, so their idle connections are reused.
    exports: std::sync::Mutex<HashMap<(String, String), Export>>,
}

/// A CreateVolume's source, on the same export as the new volume.
enum Source {
    Snapshot(NfsSnapshotId),
    Volume(NfsVolumeId),
}

impl Source {
    fn dir(&self) -> String {
        match self {
            Source::Snapshot(s) => s.sub_dir(),
            Source::Volume(v) => v.sub_dir.clone(),
        }
    }

    fn export(&self) -> (&str, &str) {
        match self {
            Source::Snapshot(s) => (&s.server, &s.share),
            Source::Volume(v) => (&v.server, &v.share),
        }
    }

    fn csi_id(&self) -> String {
        match self {
            Source::Snapshot(s) => s.to_string(),
            Source::Volume(v) => v.to_string(),
        }
    }
}

/// An NFS volume ID from a request; a malformed one cannot name a volume (None).
pub fn volume_id(raw: &str) -> Option<NfsVolumeId> {
    NfsVolumeId::parse(raw).ok()
}

fn not_found(what: &str, raw: &str) -> Error {
    Error::NotFound(format!("{what} {raw:?} does not exist"))
}

fn csi_volume(rec: &NfsVolumeRecord) -> Volume {
    let content_source = rec.source.as_ref().map(|s| VolumeContentSource {
        r#type: Some(if ids::is_nfs_snapshot(s) {
            volume_content_source::Type::Snapshot(volume_content_source::SnapshotSource {
                snapshot_id: s.clone(),
            })
        } else {
            volume_content_source::Type::Volume(volume_content_source::VolumeSource {
                volume_id: s.clone(),
            })
        }),
    });
    Volume {
        capacity_bytes: rec.capacity_bytes as i64,
        volume_id: rec.id.clone(),
        volume_context: HashMap::from([(CONTEXT_NFS_VERSION.to_string(), rec.version.clone())]),
        content_source,
        // Reachable from every node: no topology.
        accessible_topology: vec![],
    }
}

fn csi_snapshot(rec: &NfsSnapshotRecord) -> Snapshot {
    Snapshot {
        size_bytes: rec.size_bytes as i64,
        snapshot_id: rec.id.clone(),
        source_volume_id: rec.source_volume.clone(),
        creation_time: Some(prost_types::Timestamp {
            seconds: rec.created_at_secs,
            nanos: rec.created_at_nanos,
        }),
        ready_to_use: rec.ready,
        group_snapshot_id: String::new(),
    }
}

impl NfsVolumes {
    pub fn open(state_dir: &Path, options: ExportOptions) -> Result<Self> {
        let base = state_dir.join("controller").join("nfs");
        Ok(NfsVolumes {
            volumes: RecordDir::open(&base.join("volumes"))?,
            snapshots: RecordDir::open(&base.join("snapshots"))?,
            options,
            locks: KeyedLocks::default(),
            exports: Default::default(),
        })
    }

    fn export(&self, server: &str, share: &str) -> Export {
        self.exports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((server.to_string(), share.to_string()))
            .or_insert_with(|| Export::new(server, share, self.options.clone()))
            .clone()
    }

    fn source(&self, source: Option<&VolumeContentSource>) -> Result<Option<Source>> {
        use volume_content_source::Type;
        let Some(source) = source else {
            return Ok(None);
        };
        match &source.r#type {
            Some(Type::Snapshot(s)) if s.snapshot_id.is_empty() => Err(Error::InvalidArgument(
                "source snapshot id is required".into(),
            )),
            Some(Type::Snapshot(s)) => NfsSnapshotId::parse(&s.snapshot_id)
                .map(|id| Some(Source::Snapshot(id)))
                .map_err(|_| not_found("source snapshot", &s.snapshot_id)),
            Some(Type::Volume(v)) if v.volume_id.is_empty() => Err(Error::InvalidArgument(
                "source volume id is required".into(),
            )),
            Some(Type::Volume(v)) => NfsVolumeId::parse(&v.volume_id)
                .map(|id| Some(Source::Volume(id)))
                .map_err(|_| not_found("source volume", &v.volume_id)),
            None => Err(Error::InvalidArgument(
                "volume_content_source has no type".into(),
            )),
        }
    }

    pub async fn create_volume(&self, req: &CreateVolumeRequest) -> Result<Volume> {
        validate_name("volume", &req.name)?;
        let caps = parse_shared_capabilities(&req.volume_capabilities)?;
        if caps.iter().any(|c| c.access == Access::Block) {
            return Err(Error::InvalidArgument(
                "NFS volumes are file systems; raw block access is not possible".into(),
            ));
        }
        let params = params::parse(&req.name, &req.parameters)?;
        let (required, limit) = req
            .capacity_range
            .as_ref()
            .map(|r| (r.required_bytes, r.limit_bytes))
            .unwrap_or((0, 0));
        let capacity = resolve_capacity(required, limit, DEFAULT_VOLUME_BYTES, 1)?;
        let source = self.source(req.volume_content_source.as_ref())?;
        if let Some(s) = &source {
            if s.export() != (params.server.as_str(), params.share.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "the source {} is on another export than {}:{}; NFS volumes are copied \
                     on their own server",
                    s.csi_id(),
                    params.server,
                    params.share
                )));
            }
        }
        let id = NfsVolumeId::of(&params).to_string();
        let source_id = source.as_ref().map(Source::csi_id);
        let _guards = self
            .locks
            .lock_many(&[&format!("name/{}", req.name), &format!("id/{id}")])
            .await;
        if let Some(rec) = self.volumes.find(|r| r.name == req.name) {
            if rec.id == id && rec.capacity_bytes == capacity && rec.source == source_id {
                return Ok(csi_volume(&rec));
            }
            return Err(Error::AlreadyExists(format!(
                "volume {:?} exists with another size, source or sub-directory",
                req.name
            )));
        }
        if let Some(other) = self.volumes.find(|r| r.id == id) {
            return Err(Error::AlreadyExists(format!(
                "sub-directory {} is already volume {:?}; give each volume its own subDir",
                params.sub_dir, other.name
            )));
        }
        let export = self.export(&params.server, &params.share);
        match &source {
            None => export
                .make_dir(&params.sub_dir, params.mount_permissions)
                .await
                .map_err(Error::from)?,
            Some(s) => export
                .copy_dir(&s.dir(), &params.sub_dir)
                .await
                .map_err(|e| match Error::from(e) {
                    Error::NotFound(_) => not_found("source", &s.csi_id()),
                    other => other,
                })?,
        }
        let rec = NfsVolumeRecord {
            key: Key::random(),
            name: req.name.clone(),
            id,
            capacity_bytes: capacity,
            source: source_id,
            version: params.version.as_mount_option().to_string(),
        };
        self.volumes.put(&rec)?;
        Ok(csi_volume(&rec))
    }

    /// Deletes by the ID alone (whatever the records say): the ID is what the CO holds.
    pub async fn delete_volume(&self, id: &NfsVolumeId) -> Result<()> {
        let text = id.to_string();
        let _guard = self.locks.lock(&format!("id/{text}")).await;
        let export = self.export(&id.server, &id.share);
        match id.on_delete {
            OnDelete::Delete => export.remove_dir(&id.sub_dir).await?,
            OnDelete::Archive => drop(export.archive_dir(&id.sub_dir).await?),
            OnDelete::Retain => {}
        }
        if let Some(rec) = self.volumes.find(|r| r.id == text) {
            self.volumes.remove(&rec.key)?;
        }
        Ok(())
    }

    /// The volume as the server shows it now: NOT_FOUND when its directory is not there.
    pub async fn existing(&self, raw: &str) -> Result<(NfsVolumeId, Option<NfsVolumeRecord>)> {
        let id = volume_id(raw).ok_or_else(|| not_found("volume", raw))?;
        let export = self.export(&id.server, &id.share);
        if !export.exists(&id.sub_dir).await? {
            return Err(not_found("volume", raw));
        }
        let rec = self.volumes.find(|r| r.id == raw);
        Ok((id, rec))
    }

    /// Plain NFS cannot enforce a size: the new size is recorded and reported, nothing
    /// on the server changes, and no node step is needed.
    pub async fn expand(&self, raw: &str, range: &CapacityRange) -> Result<u64> {
        let (id, rec) = self.existing(raw).await?;
        let current = rec.as_ref().map_or(0, |r| r.capacity_bytes);
        let wanted = resolve_capacity(range.required_bytes, range.limit_bytes, current, 1)?;
        let _guard = self.locks.lock(&format!("id/{id}")).await;
        if let Some(mut rec) = self.volumes.find(|r| r.id == raw) {
            if wanted > rec.capacity_bytes {
                rec.capacity_bytes = wanted;
                self.volumes.put(&rec)?;
            }
            return Ok(rec.capacity_bytes);
        }
        Ok(wanted)
    }

    /// The volume and its condition, for ControllerGetVolume.
    pub async fn get_volume(&self, raw: &str) -> Result<(Volume, VolumeCondition)> {
        let id = volume_id(raw).ok_or_else(|| not_found("volume", raw))?;
        let rec = self.volumes.find(|r| r.id == raw);
        let export = self.export(&id.server, &id.share);
        let condition = match export.exists(&id.sub_dir).await {
            Ok(true) => VolumeCondition {
                abnormal: false,
                message: String::new(),
            },
            Ok(false) if rec.is_none() => return Err(not_found("volume", raw)),
            Ok(false) => VolumeCondition {
                abnormal: true,
                message: format!("{}:{}/{} is gone", id.server, id.share, id.sub_dir),
            },
            Err(e) => VolumeCondition {
                abnormal: true,
                message: e.to_string(),
            },
        };
        let rec = rec.unwrap_or_else(|| NfsVolumeRecord {
            key: Key::random(),
            name: String::new(),
            id: raw.to_string(),
            capacity_bytes: 0,
            source: None,
            version: params::NfsVersion::V4_1.as_mount_option().to_string(),
        });
        Ok((csi_volume(&rec), condition))
    }

    /// Every recorded volume with its key, for ListVolumes.
    pub fn list(&self) -> Vec<(Key, Volume)> {
        self.volumes
            .all()
            .iter()
            .map(|r| (r.key.clone(), csi_volume(r)))
            .collect()
    }

    /// The export's free space (FSSTAT), for GetCapacity.
    pub async fn capacity(&self, parameters: &HashMap<String, String>) -> Result<u64> {
        // The name only fills a default sub-directory, which capacity does not look at.
        let params = params::parse("capacity", parameters)?;
        let (_total, available) = self.export(&params.server, &params.share).space().await?;
        Ok(available)
    }

    pub async fn create_snapshot(&self, name: &str, source: &NfsVolumeId) -> Result<Snapshot> {
        let source_text = source.to_string();
        let _guard = self.locks.lock(&format!("snapshot-name/{name}")).await;
        let rec = match self.snapshots.find(|r| r.name == name) {
            Some(rec) if rec.source_volume != source_text => {
                return Err(Error::AlreadyExists(format!(
                    "snapshot {name:?} exists for another volume"
                )))
            }
            Some(rec) if rec.ready => return Ok(csi_snapshot(&rec)),
            Some(rec) => rec,
            None => {
                let export = self.export(&source.server, &source.share);
                if !export.exists(&source.sub_dir).await? {
                    return Err(not_found("source volume", &source_text));
                }
                let key = Key::random();
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                let rec = NfsSnapshotRecord {
                    id: NfsSnapshotId::new(source, key.as_str()).to_string(),
                    key,
                    name: name.to_string(),
                    source_volume: source_text.clone(),
                    size_bytes: self
                        .volumes
                        .find(|r| r.id == source_text)
                        .map_or(0, |r| r.capacity_bytes),
                    created_at_secs: now.as_secs() as i64,
                    created_at_nanos: now.subsec_nanos() as i32,
                    ready: false,
                };
                self.snapshots.put(&rec)?;
                rec
            }
        };
        let snapshot_dir = NfsSnapshotId::new(source, rec.key.as_str()).sub_dir();
        self.export(&source.server, &source.share)
            .copy_dir(&source.sub_dir, &snapshot_dir)
            .await?;
        let rec = NfsSnapshotRecord { ready: true, ..rec };
        self.snapshots.put(&rec)?;
        Ok(csi_snapshot(&rec))
    }

    pub async fn delete_snapshot(&self, id: &NfsSnapshotId) -> Result<()> {
        let text = id.to_string();
        let rec = self.snapshots.find(|r| r.id == text);
        let _guard = match &rec {
            Some(r) => Some(self.locks.lock(&format!("snapshot-name/{}", r.name)).await),
            None => None,
        };
        self.export(&id.server, &id.share)
            .remove_dir(&id.sub_dir())
            .await?;
        if let Some(rec) = rec {
            self.snapshots.remove(&rec.key)?;
        }
        Ok(())
    }

    /// Every snapshot that is ready, with its key, for ListSnapshots.
    pub fn snapshots(&self) -> Vec<(Key, Snapshot)> {
        self.snapshots
            .all()
            .iter()
            .filter(|r| r.ready)
            .map(|r| (r.key.clone(), csi_snapshot(r)))
            .collect()
    }

    pub fn snapshot(&self, raw: &str) -> Option<Snapshot> {
        self.snapshots
            .find(|r| r.id == raw && r.ready)
            .map(|r| csi_snapshot(&r))
    }
}
