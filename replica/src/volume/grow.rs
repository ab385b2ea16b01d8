//! Growing a replica (volume expansion). The controller grows every replica of a volume,
//! possibly while an engine has it open; the engine learns the new size from the replicas
//! afterwards (`Engine::grow_to_replicas`) and never serves more than every member holds.
//!
//! Crash safety: the data file is lengthened (and synced) first, then the bitmap file,
//! then `meta.json` names the new size (written atomically). A crash before the metadata
//! leaves the old size in force with a longer data file behind it, which nothing reads
//! (every range is checked against the metadata's size); a retry finishes the growth.

use super::{io_err, ReplicaState, ReplicaVolume};
use crate::bitmap::{regions_for, RegionBitmap};
use crate::error::{Error, Result};
use crate::locks::{lock, write};

impl ReplicaVolume {
    /// Grows this replica to at least `size` bytes (a multiple of 4096). Idempotent: a
    /// replica that has that size or more already is left as it is, and the answer says
    /// its size (an expansion retried after a larger one, or one that reached this replica
    /// first, must not fail). Never shrinks.
    pub fn grow(&self, size: u64) -> Result<ReplicaState> {
        if !size.is_multiple_of(4096) {
            return Err(Error::InvalidArgument(format!(
                "volume size {size} must be a multiple of 4096"
            )));
        }
        // Exclusive: no read or write is between its bounds check and its I/O.
        let mut state = write(&self.state);
        if size <= state.size {
            return Ok(state.clone());
        }
        let data_path = self.dir.join("data");
        let len = self
            .data
            .metadata()
            .map_err(io_err("stat", &data_path))?
            .len();
        // Longer already (a growth that stopped before its metadata): keep it. Cutting it
        // back could only drop zeros, but a file is never shortened here on principle.
        if len < size {
            self.data
                .set_len(size)
                .map_err(io_err("size", &data_path))?;
        }
        self.data.sync_all().map_err(io_err("sync", &data_path))?;
        {
            let mut bitmap = write(&self.bitmap);
            let grown = RegionBitmap::from_bytes(regions_for(size), &bitmap.to_bytes());
            let _guard = lock(&self.bitmap_write);
            self.write_bitmap_bytes(&grown.to_bytes())?;
            *bitmap = grown;
        }
        let mut next = state.clone();
        next.size = size;
        self.save(&next)?;
        *state = next;
        tracing::info!(volume = %state.volume, size, "replica grown");
        Ok(state.clone())
    }
}
