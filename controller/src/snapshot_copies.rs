//! Which copies make a snapshot of a replicated volume that no engine was running: a pure
//! function of what each replica's node answered.
//!
//! Each node copied its own replica as its last engine left it. Copies are the same bytes
//! when their replicas were closed clean at the volume's newest generation and belong to
//! it: every write acknowledged then is on every member. A replica of an older generation
//! was cut out (it misses writes) and is never kept. When the newest generation was not
//! closed clean (its engine's node died), its members may differ in writes that were never
//! acknowledged; any one of them alone is a crash-consistent point, so one is kept — the
//! snapshot then has a single copy rather than copies that disagree.

use warren_core::storage::ReplicaSnapshotInfo;

/// The copies to keep and the ones to delete.
#[derive(Debug, PartialEq, Eq)]
pub struct CopyChoice {
    pub keep: Vec<ReplicaSnapshotInfo>,
    pub discard: Vec<ReplicaSnapshotInfo>,
}

pub fn choose_copies(copies: Vec<ReplicaSnapshotInfo>) -> CopyChoice {
    let Some(newest) = copies.iter().map(|c| c.gen).max() else {
        return CopyChoice {
            keep: Vec::new(),
            discard: Vec::new(),
        };
    };
    let current = |c: &ReplicaSnapshotInfo| c.gen == newest && c.members.contains(&c.node);
    let all_clean = copies.iter().filter(|c| current(c)).all(|c| c.clean);
    let (mut keep, mut discard) = (Vec::new(), Vec::new());
    for copy in copies {
        let wanted = current(&copy) && (all_clean || keep.is_empty());
        if wanted {
            keep.push(copy);
        } else {
            discard.push(copy);
        }
    }
    CopyChoice { keep, discard }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_core::ids::{Key, ReplicatedSnapshotId, ReplicatedVolumeId};

    fn copy(node: &str, gen: u64, members: &[&str], clean: bool) -> ReplicaSnapshotInfo {
        ReplicaSnapshotInfo {
            snapshot: ReplicatedSnapshotId::new(
                ReplicatedVolumeId::new(Key::parse("0123456789abcdef0123456789abcdef").unwrap()),
                Key::parse("fedcba9876543210fedcba9876543210").unwrap(),
            ),
            node: node.into(),
            size_bytes: 1 << 20,
            gen,
            members: members.iter().map(|m| m.to_string()).collect(),
            clean,
            created_at_secs: 1,
            created_at_nanos: 0,
        }
    }

    fn nodes(copies: &[ReplicaSnapshotInfo]) -> Vec<&str> {
        copies.iter().map(|c| c.node.as_str()).collect()
    }

    #[test]
    fn clean_members_of_the_newest_generation_are_all_kept() {
        let choice = choose_copies(vec![
            copy("a", 5, &["a", "b"], true),
            copy("b", 5, &["a", "b"], true),
        ]);
        assert_eq!(nodes(&choice.keep), ["a", "b"]);
        assert!(choice.discard.is_empty());
    }

    #[test]
    fn a_replica_cut_out_earlier_is_never_kept() {
        // c was cut out at generation 4; a and b went on without it.
        let choice = choose_copies(vec![
            copy("c", 3, &["a", "b", "c"], true),
            copy("a", 4, &["a", "b"], true),
            copy("b", 4, &["a", "b"], true),
        ]);
        assert_eq!(nodes(&choice.keep), ["a", "b"]);
        assert_eq!(nodes(&choice.discard), ["c"]);
    }

    #[test]
    fn after_an_unclean_end_one_copy_alone_is_kept() {
        let choice = choose_copies(vec![
            copy("a", 6, &["a", "b"], false),
            copy("b", 6, &["a", "b"], false),
        ]);
        assert_eq!(nodes(&choice.keep), ["a"]);
        assert_eq!(nodes(&choice.discard), ["b"]);
    }

    #[test]
    fn a_copy_not_in_its_own_generation_is_discarded() {
        // b answered with the newest generation but is not one of its members: it was
        // being rebuilt (or removed) when the engine stopped.
        let choice = choose_copies(vec![copy("b", 7, &["a"], true), copy("a", 7, &["a"], true)]);
        assert_eq!(nodes(&choice.keep), ["a"]);
        assert_eq!(nodes(&choice.discard), ["b"]);
    }

    #[test]
    fn nothing_answered_nothing_kept() {
        assert_eq!(
            choose_copies(Vec::new()),
            CopyChoice {
                keep: Vec::new(),
                discard: Vec::new()
            }
        );
    }
}
