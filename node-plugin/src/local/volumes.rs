//! A volume's life on this node: made (empty, or copied from a snapshot or another
//! volume, in `.creating/` then renamed into place), described, grown, and deleted once
//! nothing uses it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use warren_core::durable::{read_json, sync_dir, write_json_atomic};
use warren_core::ids::{Layout, VolumeId};
use warren_core::storage::{Allocation, Condition, ContentSource, VolumeInfo, VolumeSpec};
use warren_core::validate::MIN_IMAGE_BYTES;
use warren_core::Error as CoreError;

use super::meta::{payload, VolumeMeta, META};
use super::remove::remove_object_dir;
use super::store::{io_err, Inner};
use crate::copy::{copy_image, copy_tree};
use crate::error::{Error, Result};
use crate::{freeze, mountinfo};

impl Inner {
    pub(super) fn volume_meta(&self, id: &VolumeId) -> Result<VolumeMeta> {
        self.check_node(&id.node, "volume")?;
        let path = self.dirs.volume(&id.key).join(META);
        if !path.exists() {
            return Err(CoreError::NotFound(format!("volume {id} does not exist")).into());
        }
        let meta: VolumeMeta = read_json(&path)?;
        if meta.id != *id {
            // Same key, other layout or node: not the volume asked for.
            return Err(CoreError::NotFound(format!("volume {id} does not exist")).into());
        }
        Ok(meta)
    }

    pub(super) fn volume_info(&self, meta: &VolumeMeta) -> VolumeInfo {
        VolumeInfo {
            id: meta.id.clone(),
            name: meta.name.clone(),
            capacity_bytes: meta.capacity_bytes,
            source: meta.source.clone(),
            condition: self.condition(meta),
            share_endpoint: None,
        }
    }

    /// Whether the volume's backing store is present and whole.
    pub(super) fn condition(&self, meta: &VolumeMeta) -> Condition {
        let path = payload(&self.dirs.volume(&meta.id.key), meta.id.layout);
        match (meta.id.layout, fs::symlink_metadata(&path)) {
            (_, Err(e)) => {
                Condition::abnormal(format!("backing store {} is missing: {e}", path.display()))
            }
            (Layout::Image, Ok(m)) if !m.is_file() => {
                Condition::abnormal(format!("{} is not a regular file", path.display()))
            }
            (Layout::Image, Ok(m)) if m.len() < meta.capacity_bytes => {
                Condition::abnormal(format!(
                    "image {} is {} bytes, smaller than the volume's {} bytes (truncated?)",
                    path.display(),
                    m.len(),
                    meta.capacity_bytes
                ))
            }
            (Layout::Dir, Ok(m)) if !m.is_dir() => {
                Condition::abnormal(format!("{} is not a directory", path.display()))
            }
            _ => Condition::healthy(),
        }
    }

    pub(super) fn create_volume(&self, spec: &VolumeSpec) -> Result<VolumeInfo> {
        self.check_node(&spec.id.node, "volume")?;
        let layout = spec.id.layout;
        if layout == Layout::Image && spec.capacity_bytes < MIN_IMAGE_BYTES {
            return Err(CoreError::OutOfRange(format!(
                "image volumes are at least {MIN_IMAGE_BYTES} bytes"
            ))
            .into());
        }
        let final_dir = self.dirs.volume(&spec.id.key);
        if final_dir.join(META).exists() {
            let existing: VolumeMeta = read_json(&final_dir.join(META))?;
            if existing.id == spec.id
                && existing.capacity_bytes == spec.capacity_bytes
                && existing.source == spec.source
            {
                return Ok(self.volume_info(&existing));
            }
            return Err(CoreError::AlreadyExists(format!(
                "volume {} exists with another size or source",
                spec.id
            ))
            .into());
        }

        let work = self.dirs.creating().join(spec.id.key.as_str());
        if work.exists() {
            remove_object_dir(&work)?;
        }
        fs::create_dir(&work).map_err(io_err(format!("create {}", work.display())))?;
        let built = self.build_volume(spec, &work);
        if let Err(e) = built {
            let _ = remove_object_dir(&work);
            return Err(e);
        }
        let meta = VolumeMeta {
            id: spec.id.clone(),
            name: spec.name.clone(),
            capacity_bytes: spec.capacity_bytes,
            allocation: spec.allocation,
            source: spec.source.clone(),
        };
        write_json_atomic(&work.join(META), &meta)?;
        fs::rename(&work, &final_dir)
            .map_err(io_err(format!("publish {}", final_dir.display())))?;
        sync_dir(&self.dirs.volumes())?;
        sync_dir(&self.dirs.creating())?;
        tracing::info!(volume = %spec.id, name = %spec.name, bytes = spec.capacity_bytes, "volume created");
        Ok(self.volume_info(&meta))
    }

    /// Fills a fresh work directory with the volume's contents.
    fn build_volume(&self, spec: &VolumeSpec, work: &Path) -> Result<()> {
        let target = payload(work, spec.id.layout);
        match &spec.source {
            None => match spec.id.layout {
                Layout::Image => {}
                Layout::Dir => {
                    fs::create_dir(&target).map_err(io_err("create data dir"))?;
                    // Any pod user may write, as with local-path-provisioner; the 0700 storage
                    // root keeps other node users out.
                    fs::set_permissions(&target, fs::Permissions::from_mode(0o777))
                        .map_err(io_err("chmod data dir"))?;
                }
            },
            Some(ContentSource::Snapshot(snap)) => {
                let meta = self.snapshot_meta(snap)?;
                self.check_source_fits(snap.layout, spec, meta.size_bytes)?;
                let from = payload(&self.dirs.snapshot(&snap.key), snap.layout);
                self.copy_payload(&from, &target, spec.id.layout)?;
            }
            Some(ContentSource::Volume(vol)) => {
                let meta = self.volume_meta(vol)?;
                self.check_source_fits(vol.layout, spec, meta.capacity_bytes)?;
                let from = payload(&self.dirs.volume(&vol.key), vol.layout);
                let _frozen = self.freeze_if_mounted(&meta)?;
                self.copy_payload(&from, &target, spec.id.layout)?;
            }
        }
        if spec.id.layout == Layout::Image {
            size_image(&target, spec.capacity_bytes, spec.allocation)?;
        }
        Ok(())
    }

    fn check_source_fits(
        &self,
        source_layout: Layout,
        spec: &VolumeSpec,
        source_bytes: u64,
    ) -> Result<()> {
        if source_layout != spec.id.layout {
            return Err(CoreError::InvalidArgument(format!(
                "source layout {} differs from the new volume's layout {}",
                source_layout.as_str(),
                spec.id.layout.as_str()
            ))
            .into());
        }
        if spec.id.layout == Layout::Image && spec.capacity_bytes < source_bytes {
            return Err(CoreError::OutOfRange(format!(
                "the new volume ({} bytes) is smaller than its source ({source_bytes} bytes)",
                spec.capacity_bytes
            ))
            .into());
        }
        Ok(())
    }

    pub(super) fn copy_payload(&self, from: &Path, to: &Path, layout: Layout) -> Result<()> {
        match layout {
            Layout::Image => copy_image(from, to),
            Layout::Dir => {
                fs::create_dir(to).map_err(io_err("create data dir"))?;
                copy_tree(from, to)
            }
        }
    }

    /// Freezes the file system of a staged image volume for the duration of a copy.
    pub(super) fn freeze_if_mounted(&self, meta: &VolumeMeta) -> Result<Option<freeze::Frozen>> {
        if meta.id.layout != Layout::Image {
            return Ok(None);
        }
        let image = payload(&self.dirs.volume(&meta.id.key), Layout::Image);
        let Some(dev) = self.devices.find(&image)? else {
            return Ok(None);
        };
        let mounts = mountinfo::read()?;
        match mounts.iter().find(|m| Path::new(&m.source) == dev) {
            Some(m) => Ok(Some(freeze::freeze(&m.mount_point)?)),
            None => Ok(None),
        }
    }

    /// Whether anything on this node still uses the volume: a mount of its image's loop
    /// device `image_dev` (found by the caller), or a bind mount of its directory.
    fn in_use(&self, meta: &VolumeMeta, image_dev: Option<&Path>) -> Result<Option<String>> {
        let mounts = mountinfo::read()?;
        let used = match meta.id.layout {
            Layout::Image => {
                image_dev.and_then(|dev| mounts.iter().find(|m| Path::new(&m.source) == dev))
            }
            Layout::Dir => {
                let suffix = Path::new("volumes")
                    .join(meta.id.key.as_str())
                    .join(super::DATA);
                mounts.iter().find(|m| m.root.ends_with(&suffix))
            }
        };
        Ok(used.map(|m| format!("mounted at {}", m.mount_point.display())))
    }

    pub(super) fn delete_volume(&self, id: &VolumeId) -> Result<()> {
        let meta = match self.volume_meta(id) {
            Ok(m) => m,
            Err(Error::Core(CoreError::NotFound(_))) => return Ok(()),
            Err(e) => return Err(e),
        };
        let dir = self.dirs.volume(&id.key);
        // The loop device is looked up once: to see whether it is mounted, then to detach it.
        let image_dev = match id.layout {
            Layout::Image => self.devices.find(&payload(&dir, Layout::Image))?,
            Layout::Dir => None,
        };
        if let Some(how) = self.in_use(&meta, image_dev.as_deref())? {
            return Err(CoreError::FailedPrecondition(format!(
                "volume {id} is still in use on this node ({how}); unpublish and unstage it first"
            ))
            .into());
        }
        if let Some(dev) = image_dev {
            self.devices.detach_device(&dev)?;
        }
        self.trash(&dir, &id.key)?;
        tracing::info!(volume = %id, "volume deleted");
        Ok(())
    }

    pub(super) fn expand_volume(&self, id: &VolumeId, capacity: u64) -> Result<u64> {
        let mut meta = self.volume_meta(id)?;
        if capacity <= meta.capacity_bytes {
            return Ok(meta.capacity_bytes);
        }
        if id.layout == Layout::Image {
            let image = payload(&self.dirs.volume(&id.key), Layout::Image);
            size_image(&image, capacity, meta.allocation)?;
            self.devices.refresh_size(&image)?;
        }
        meta.capacity_bytes = capacity;
        write_json_atomic(&self.dirs.volume(&id.key).join(META), &meta)?;
        tracing::info!(volume = %id, bytes = capacity, "volume expanded");
        Ok(capacity)
    }
}

/// Sets an image's length (never shrinking it) and, for thick volumes, reserves its blocks.
fn size_image(path: &Path, capacity: u64, allocation: Allocation) -> Result<()> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err(format!("open {}", path.display())))?;
    let len = file.metadata().map_err(io_err("stat image"))?.len();
    if len < capacity {
        file.set_len(capacity)
            .map_err(io_err(format!("resize {}", path.display())))?;
    }
    if allocation == Allocation::Thick {
        // Mode 0 allocates without changing the size; data already there stays.
        nix::fcntl::fallocate(
            &file,
            nix::fcntl::FallocateFlags::empty(),
            0,
            capacity as libc::off_t,
        )
        .map_err(|e| match e {
            nix::errno::Errno::ENOSPC => Error::Core(CoreError::ResourceExhausted(format!(
                "not enough free space on this node for {capacity} bytes"
            ))),
            e => Error::sys("fallocate", path)(e),
        })?;
    }
    file.sync_all().map_err(io_err("fsync image"))
}
