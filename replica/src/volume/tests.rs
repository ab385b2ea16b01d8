use super::*;

const MIB: u64 = 1 << 20;

fn open(root: &Path, create: bool) -> Result<ReplicaVolume> {
    ReplicaVolume::open(root, "a", "vol1", 8 * MIB, create)
}

#[test]
fn generations_fence_io_and_only_move_forward() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(open(dir.path(), false), Err(Error::NotFound(_))));
    let v = open(dir.path(), true).unwrap();
    // Generation 0 takes no I/O at all.
    assert!(matches!(v.write(0, 0, b"x", false), Err(Error::Fenced(_))));
    let members = vec!["a".to_string(), "b".to_string()];
    v.commit(0, 1, members.clone()).unwrap();
    assert!(v.state().in_sync());
    v.write(1, 4096, b"hello", false).unwrap();
    assert_eq!(&v.read(1, 4096, 5).unwrap()[..], b"hello");
    // Wrong expectation, or going backwards: refused, nothing changes.
    assert!(matches!(
        v.commit(0, 2, members.clone()),
        Err(Error::Fenced(_))
    ));
    assert!(matches!(v.commit(1, 1, vec![]), Err(Error::Fenced(_))));
    // Cut out of generation 2: old-generation I/O is refused from then on.
    v.commit(1, 2, vec!["b".into()]).unwrap();
    assert!(!v.state().in_sync());
    assert_eq!(v.state().synced_gen, 1);
    assert!(matches!(v.write(1, 0, b"x", false), Err(Error::Fenced(_))));
    assert!(matches!(v.read(1, 0, 1), Err(Error::Fenced(_))));
    // The state survives a reopen.
    drop(v);
    let v = open(dir.path(), false).unwrap();
    assert_eq!(v.state().gen, 2);
    assert_eq!(v.state().members, vec!["b".to_string()]);
}

#[test]
fn writes_are_marked_durably_and_checkpoint_forgets_them() {
    let dir = tempfile::tempdir().unwrap();
    let v = open(dir.path(), true).unwrap();
    v.commit(0, 1, vec!["a".into()]).unwrap();
    v.write(1, 3 * MIB - 1, b"ab", false).unwrap(); // spans regions 2 and 3
    v.discard(1, 6 * MIB, 4096).unwrap();
    drop(v);
    let v = open(dir.path(), false).unwrap();
    let (since, bytes) = v.bitmap();
    assert_eq!(since, 0);
    let marked: Vec<u64> = RegionBitmap::from_bytes(8, &bytes).iter().collect();
    assert_eq!(marked, vec![2, 3, 6]);
    v.checkpoint(1).unwrap();
    let (since, bytes) = v.bitmap();
    assert_eq!((since, RegionBitmap::from_bytes(8, &bytes).count()), (1, 0));
}

#[test]
fn a_write_continuing_a_marked_region_marks_ahead_durably() {
    let dir = tempfile::tempdir().unwrap();
    let v = ReplicaVolume::open(dir.path(), "a", "vol1", 32 * MIB, true).unwrap();
    v.commit(0, 1, vec!["a".into()]).unwrap();
    let marked = |v: &ReplicaVolume| -> Vec<u64> {
        RegionBitmap::from_bytes(32, &v.bitmap().1).iter().collect()
    };
    // A lone write marks only its own region.
    v.write(1, 20 * MIB, b"x", false).unwrap();
    assert_eq!(marked(&v), vec![20]);
    // One that runs on from a marked region marks MARK_AHEAD more with it...
    v.write(1, 21 * MIB, b"x", false).unwrap();
    assert_eq!(marked(&v), (20..22 + MARK_AHEAD).collect::<Vec<_>>());
    // ...never past the end of the volume.
    v.write(1, (22 + MARK_AHEAD) * MIB, b"x", false).unwrap();
    assert_eq!(marked(&v), (20..32).collect::<Vec<_>>());
    drop(v);
    let v = ReplicaVolume::open(dir.path(), "a", "vol1", 32 * MIB, false).unwrap();
    assert_eq!(marked(&v), (20..32).collect::<Vec<_>>());
}

#[test]
fn a_rebuilding_replica_takes_writes_but_is_not_in_sync() {
    let dir = tempfile::tempdir().unwrap();
    let v = open(dir.path(), true).unwrap();
    v.begin_rebuild(0, 5, vec!["b".into()]).unwrap();
    v.write(5, 0, b"x", false).unwrap();
    assert!(!v.state().in_sync());
    assert!(v.checkpoint(5).is_err());
    v.commit(5, 6, vec!["a".into(), "b".into()]).unwrap();
    assert!(v.state().in_sync());
    assert!(!v.state().rebuilding);
    assert_eq!(v.state().synced_gen, 6);
}

#[test]
fn nonblocking_fast_paths_agree_with_the_blocking_ones() {
    let dir = tempfile::tempdir().unwrap();
    let v = open(dir.path(), true).unwrap();
    v.commit(0, 1, vec!["a".into()]).unwrap();
    // A region never written is not marked yet: the fast path declines.
    assert!(v.try_write_nowait(1, 0, b"fast").is_none());
    v.write(1, 0, b"slow", false).unwrap();
    // Marked now; the page cache takes it (or the fast path declines, never lies).
    if let Some(result) = v.try_write_nowait(1, 0, b"fast") {
        result.unwrap();
        assert_eq!(&v.read(1, 0, 4).unwrap()[..], b"fast");
    }
    if let Some(result) = v.try_read_nowait(1, 0, 4) {
        assert_eq!(result.unwrap(), v.read(1, 0, 4).unwrap());
    }
    // Fencing and bounds are enforced on the fast path too.
    assert!(matches!(
        v.try_write_nowait(7, 0, b"x"),
        Some(Err(Error::Fenced(_)))
    ));
    assert!(matches!(
        v.try_read_nowait(7, 0, 1),
        Some(Err(Error::Fenced(_)))
    ));
    assert!(matches!(
        v.try_read_nowait(1, 8 * MIB, 1),
        Some(Err(Error::OutOfRange { .. }))
    ));
}

#[test]
fn bounds_and_sizes() {
    let dir = tempfile::tempdir().unwrap();
    assert!(ReplicaVolume::open(dir.path(), "a", "v", 1000, true).is_err());
    assert!(ReplicaVolume::open(dir.path(), "a", "../x", 4096, true).is_err());
    let v = open(dir.path(), true).unwrap();
    v.commit(0, 1, vec!["a".into()]).unwrap();
    assert!(v.write(1, 8 * MIB - 1, b"ab", false).is_err());
    assert!(v.read(1, u64::MAX, 1).is_err());
    drop(v);
    // An open asks for at least a size: a smaller ask finds the replica at its own size
    // (it may have grown since the caller learnt its size), a larger one is refused.
    let v = ReplicaVolume::open(dir.path(), "a", "vol1", 4 * MIB, false).unwrap();
    assert_eq!(v.size(), 8 * MIB);
    drop(v);
    assert!(matches!(
        ReplicaVolume::open(dir.path(), "a", "vol1", 16 * MIB, false),
        Err(Error::InvalidArgument(_))
    ));
}

fn marked(v: &ReplicaVolume) -> Vec<u64> {
    let (_, bytes) = v.bitmap();
    RegionBitmap::from_bytes(regions_for(v.size()), &bytes)
        .iter()
        .collect()
}

#[test]
fn grow_keeps_data_and_history_and_serves_the_new_end() {
    let dir = tempfile::tempdir().unwrap();
    let v = open(dir.path(), true).unwrap();
    v.commit(0, 1, vec!["a".into()]).unwrap();
    v.write(1, 7 * MIB, b"old end", false).unwrap();
    assert!(v.write(1, 8 * MIB, b"x", false).is_err());
    let state = v.grow(20 * MIB).unwrap();
    assert_eq!((state.size, state.gen), (20 * MIB, 1));
    let data = std::fs::metadata(dir.path().join("vol1/data")).unwrap();
    assert_eq!(data.len(), 20 * MIB);
    // What was written and marked is still there; the new part takes writes and marks.
    assert_eq!(&v.read(1, 7 * MIB, 7).unwrap()[..], b"old end");
    assert_eq!(marked(&v), vec![7]);
    v.write(1, 19 * MIB, b"new end", false).unwrap();
    assert_eq!(marked(&v), vec![7, 19]);
    // All of it survives a reopen.
    drop(v);
    let v = ReplicaVolume::open(dir.path(), "a", "vol1", 8 * MIB, false).unwrap();
    assert_eq!(v.size(), 20 * MIB);
    assert_eq!(&v.read(1, 19 * MIB, 7).unwrap()[..], b"new end");
    assert_eq!(&v.read(1, 7 * MIB, 7).unwrap()[..], b"old end");
    assert_eq!(marked(&v), vec![7, 19]);
}

#[test]
fn grow_is_idempotent_and_never_shrinks() {
    let dir = tempfile::tempdir().unwrap();
    let v = open(dir.path(), true).unwrap();
    let grown = v.grow(16 * MIB).unwrap();
    assert_eq!(v.grow(16 * MIB).unwrap(), grown);
    // Smaller than it is: left as it is, never shrunk.
    assert_eq!(v.grow(8 * MIB).unwrap(), grown);
    for bad in [16 * MIB + 1, 24 * MIB + 512] {
        assert!(
            matches!(v.grow(bad), Err(Error::InvalidArgument(_))),
            "{bad}"
        );
    }
    assert_eq!(v.size(), 16 * MIB);
    let data = std::fs::metadata(dir.path().join("vol1/data")).unwrap();
    assert_eq!(data.len(), 16 * MIB);
}

#[test]
fn a_growth_cut_short_before_its_metadata_keeps_the_old_size_and_a_retry_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let v = open(dir.path(), true).unwrap();
    v.commit(0, 1, vec!["a".into()]).unwrap();
    v.write(1, 0, b"kept", false).unwrap();
    drop(v);
    // What a crash after the data file (and the bitmap file) grew, before meta.json was
    // written, leaves behind: longer files, the old metadata.
    let data = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("vol1/data"))
        .unwrap();
    data.set_len(32 * MIB).unwrap();
    let bitmap_path = dir.path().join("vol1/bitmap");
    let mut bitmap = std::fs::read(&bitmap_path).unwrap();
    bitmap.resize(4, 0);
    std::fs::write(&bitmap_path, bitmap).unwrap();
    let v = open(dir.path(), false).unwrap();
    assert_eq!(v.size(), 8 * MIB, "the metadata's size is in force");
    assert!(v.write(1, 8 * MIB, b"x", false).is_err());
    // A retry (of a smaller growth, even) finishes without cutting the file back.
    assert_eq!(v.grow(16 * MIB).unwrap().size, 16 * MIB);
    assert_eq!(&v.read(1, 0, 4).unwrap()[..], b"kept");
    drop(v);
    let v = open(dir.path(), false).unwrap();
    assert_eq!(v.size(), 16 * MIB);
    let data = std::fs::metadata(dir.path().join("vol1/data")).unwrap();
    assert_eq!(data.len(), 32 * MIB);
    // meta.json is whole JSON naming the new size (it is replaced atomically).
    let meta: ReplicaState =
        serde_json::from_slice(&std::fs::read(dir.path().join("vol1/meta.json")).unwrap()).unwrap();
    assert_eq!(meta.size, 16 * MIB);
}
