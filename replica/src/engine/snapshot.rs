//! Snapshots through a running engine: every member copies its replica at one point in
//! the volume's write order, so every copy holds the same bytes.
//!
//! Under the membership write lock no I/O of this engine is in flight, and by the write
//! rule every acknowledged write is on every member; a flush of every member makes it
//! durable there too. Each member is then told to copy its replica (`Snapshot`, with
//! the engine's generation: a replica that has moved on refuses). Replicas being
//! rebuilt hold incomplete data and take no copy.
//!
//! Members that fail: one that does not answer (connection lost, timed out) or answers
//! `Fenced` is treated as a failure of the volume's I/O would be: cut out under a new
//! generation (`cut_out`; a fenced engine stops). One that answers with an error of its
//! own (its disk is full, say) keeps its place in the volume and simply has no copy: a
//! replica that serves the volume well is not cut out because a copy beside it failed.
//! The snapshot succeeds when at least one member has a copy; the answer says which.
//!
//! Retries: a copy of the same name already on a member is kept when every member's
//! copy was taken at one point (an earlier call finished, and its answer was lost); when
//! copies of different points meet (an earlier call stopped halfway), those of another
//! point are taken again now, still under the lock, so all copies share this point.

use std::time::{Duration, SystemTime};

use futures_util::future::join_all;

use super::Engine;
use crate::error::{Error, Result};
use crate::messages::SnapshotRequest;
use crate::snapshots::SnapshotMeta;
use crate::target::BlockTarget;

/// The slowest copy rate a `Snapshot` request's deadline allows for (bytes per second),
/// where no reflink makes the copy instant: a copy takes as long as the data it copies.
const SLOWEST_COPY_RATE: u64 = 32 << 20;

impl Engine {
    /// Takes the snapshot `name` on every current member at one point in the write
    /// order (see the module comment). Returns each copy taken, one per member that has
    /// it. The volume's I/O waits while the copies are made: an instant with reflinks,
    /// the time to copy the data without.
    pub async fn snapshot(&self, name: &str) -> Result<Vec<SnapshotMeta>> {
        crate::names::check_snapshot(name)?;
        self.check_failed()?;
        let membership = self.membership.write().await;
        let gen = membership.gen;
        let members = membership.members.clone();
        if members.is_empty() {
            return Err(self.no_member_left());
        }
        let timeout = self.config.io_timeout + Duration::from_secs(self.size() / SLOWEST_COPY_RATE);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let point = format!("{}@{gen}-{}", self.config.volume, now.as_nanos());
        let request = |replace| SnapshotRequest {
            name: name.to_string(),
            point: point.clone(),
            replace,
        };

        let flushed = join_all(members.iter().map(|m| m.flush(gen))).await;
        let mut copies = join_all(members.iter().zip(&flushed).map(|(m, flushed)| {
            let request = request(false);
            async move {
                match flushed {
                    Ok(()) => m.snapshot(gen, &request, timeout).await,
                    Err(e) => Err(clone_error(e)),
                }
            }
        }))
        .await;
        if needs_retake(&copies, &point) {
            for (member, copy) in members.iter().zip(copies.iter_mut()) {
                if matches!(copy, Ok(meta) if meta.point != point) {
                    *copy = member.snapshot(gen, &request(true), timeout).await;
                }
            }
        }
        drop(membership);

        let mut taken = Vec::new();
        let mut failed = Vec::new();
        let mut last_error = None;
        for (member, copy) in members.iter().zip(copies) {
            match copy {
                Ok(meta) => taken.push(meta),
                Err(e @ (Error::Unavailable(_) | Error::Fenced(_))) => {
                    tracing::warn!(volume = %self.config.volume, replica = %member.replica, snapshot = name, error = %e, "member failed during a snapshot");
                    last_error = Some(clone_error(&e));
                    failed.push((member.replica.clone(), e));
                }
                Err(e) => {
                    tracing::warn!(volume = %self.config.volume, replica = %member.replica, snapshot = name, error = %e, "member could not copy its replica");
                    last_error = Some(e);
                }
            }
        }
        if !failed.is_empty() {
            self.cut_out(gen, failed).await;
            self.check_failed()?;
        }
        if taken.is_empty() {
            return Err(last_error.unwrap_or_else(|| self.no_member_left()));
        }
        tracing::info!(volume = %self.config.volume, snapshot = name, gen, copies = taken.len(), "snapshot taken");
        Ok(taken)
    }
}

/// Whether copies taken at other points than `point` must be taken again: when they do
/// not all share one point with every other copy.
fn needs_retake(copies: &[Result<SnapshotMeta>], point: &str) -> bool {
    let mut points = copies
        .iter()
        .filter_map(|c| c.as_ref().ok().map(|meta| meta.point.as_str()))
        .collect::<Vec<_>>();
    points.sort_unstable();
    points.dedup();
    points.len() > 1 && points.iter().any(|p| *p != point)
}

/// The same error again (the crate's error holds an `io::Error`, which is not `Clone`).
fn clone_error(e: &Error) -> Error {
    match e {
        Error::Unavailable(m) => Error::Unavailable(m.clone()),
        Error::Fenced(m) => Error::Fenced(m.clone()),
        Error::Busy(m) => Error::Busy(m.clone()),
        Error::NotFound(m) => Error::NotFound(m.clone()),
        Error::InvalidArgument(m) => Error::InvalidArgument(m.clone()),
        other => Error::Internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(point: &str) -> Result<SnapshotMeta> {
        Ok(SnapshotMeta {
            snapshot: "s".into(),
            volume: "v".into(),
            replica: "r".into(),
            size: 4096,
            gen: 1,
            members: vec![],
            clean: true,
            point: point.into(),
            created_at_secs: 0,
            created_at_nanos: 0,
        })
    }

    #[test]
    fn copies_of_other_points_are_taken_again_only_when_points_differ() {
        assert!(!needs_retake(&[copy("now"), copy("now")], "now"));
        // An earlier call finished on every member: kept as it is.
        assert!(!needs_retake(&[copy("before"), copy("before")], "now"));
        // An earlier call stopped halfway.
        assert!(needs_retake(&[copy("before"), copy("now")], "now"));
        assert!(needs_retake(&[copy("a"), copy("b")], "now"));
        assert!(!needs_retake(
            &[copy("now"), Err(Error::Unavailable("x".into()))],
            "now"
        ));
        assert!(!needs_retake(&[], "now"));
    }
}
