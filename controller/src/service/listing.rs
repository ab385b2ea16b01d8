//! ListVolumes and ListSnapshots: Warren's local records, the replicated volumes and the
//! NFS volumes together, in key order (keys are random and unique across kinds), paged by
//! the last key of the previous page.

use csi_proto::v1::*;
use tonic::{Request, Response};
use warren_core::ids::Key;
use warren_core::{Error, Result};

use crate::records::State;

use super::snapshots::csi_snapshot;
use super::volumes::csi_volume;
use super::{ControllerService, Reply};

/// One page of `items` after `token` (the last key of the previous page).
pub(super) fn page<T: Clone>(
    items: &[T],
    key: impl Fn(&T) -> &Key,
    max_entries: i32,
    token: &str,
) -> Result<(Vec<T>, String)> {
    if max_entries < 0 {
        return Err(Error::InvalidArgument(
            "max_entries must not be negative".into(),
        ));
    }
    let start = if token.is_empty() {
        0
    } else {
        let after = Key::parse(token)
            .ok_or_else(|| Error::Aborted(format!("starting_token {token:?} is not valid")))?;
        items.partition_point(|i| key(i) <= &after)
    };
    let rest = &items[start..];
    let take = if max_entries == 0 {
        rest.len()
    } else {
        (max_entries as usize).min(rest.len())
    };
    let next = if take < rest.len() {
        key(&rest[take - 1]).to_string()
    } else {
        String::new()
    };
    Ok((rest[..take].to_vec(), next))
}

impl ControllerService {
    pub(super) async fn list_volumes_inner(
        &self,
        req: Request<ListVolumesRequest>,
    ) -> Reply<ListVolumesResponse> {
        let req = req.into_inner();
        let mut ready: Vec<(Key, Volume)> = self
            .records
            .volumes()
            .into_iter()
            .filter(|r| r.state == State::Ready)
            .map(|r| (r.id.key.clone(), csi_volume(&r)))
            .chain(self.nfs.list())
            .chain(self.replicated_list())
            .collect();
        ready.sort_by(|a, b| a.0.cmp(&b.0));
        let (items, next_token) = page(&ready, |r| &r.0, req.max_entries, &req.starting_token)?;
        Ok(Response::new(ListVolumesResponse {
            entries: items
                .into_iter()
                .map(|(_, volume)| list_volumes_response::Entry {
                    volume: Some(volume),
                    status: None,
                })
                .collect(),
            next_token,
        }))
    }

    pub(super) fn list_snapshots_inner(
        &self,
        req: ListSnapshotsRequest,
    ) -> Result<ListSnapshotsResponse> {
        let mut ready: Vec<(Key, Snapshot)> = self
            .records
            .snapshots()
            .into_iter()
            .filter(|r| r.state == State::Ready)
            .filter_map(|r| r.info.map(|info| (r.id.key, csi_snapshot(&info))))
            .chain(self.nfs.snapshots())
            .chain(self.replicated_snapshot_entries())
            .collect();
        ready.sort_by(|a, b| a.0.cmp(&b.0));
        if !req.snapshot_id.is_empty() {
            ready.retain(|(_, s)| s.snapshot_id == req.snapshot_id);
        }
        if !req.source_volume_id.is_empty() {
            ready.retain(|(_, s)| s.source_volume_id == req.source_volume_id);
        }
        let (items, next_token) = page(&ready, |r| &r.0, req.max_entries, &req.starting_token)?;
        Ok(ListSnapshotsResponse {
            entries: items
                .into_iter()
                .map(|(_, snapshot)| list_snapshots_response::Entry {
                    snapshot: Some(snapshot),
                })
                .collect(),
            next_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn paging_by_key() {
        let keys: Vec<Key> = (0..5)
            .map(|_| Key::random())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let (first, token) = page(&keys, |k| k, 2, "").unwrap();
        assert_eq!(first, keys[..2]);
        let (second, token) = page(&keys, |k| k, 2, &token).unwrap();
        assert_eq!(second, keys[2..4]);
        let (last, token) = page(&keys, |k| k, 2, &token).unwrap();
        assert_eq!((last, token.as_str()), (keys[4..].to_vec(), ""));
        assert_eq!(page(&keys, |k| k, 0, "").unwrap().0.len(), 5);
        assert_eq!(
            page(&keys, |k| k, 1, "bogus").unwrap_err().code(),
            tonic::Code::Aborted
        );
    }
}
