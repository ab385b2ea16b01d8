//! Decisions of the engine as pure functions of what it observed of the replicas. The
//! rules, and why a stale replica can never be chosen, are in docs/design.md
//! ("Generations"); each rule below cites the case it handles.

use std::collections::HashMap;

use crate::bitmap::RegionBitmap;
use crate::error::{Error, Result};
use crate::volume::ReplicaState;

/// What the engine learned of one configured replica when it started.
#[derive(Debug, Clone)]
pub enum Observation {
    /// No answer: down, partitioned, or refusing us.
    Unreachable,
    /// Answered, and holds no replica of this volume (new, or its disk was replaced).
    Missing,
    State(ReplicaState),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartPlan {
    /// The highest generation any replica holds; the engine commits `gen + 1`.
    pub gen: u64,
    /// Replicas holding all acknowledged data: the members of the next generation.
    pub sources: Vec<String>,
    /// An engine died with writes in flight: before serving, the regions any source may
    /// have written are copied from one source to the others, so every read is stable.
    pub resync: bool,
    /// Configured replicas to rebuild (now or when they come back).
    pub stale: Vec<String>,
}

/// Decides whether, and from which replicas, a volume may be served.
///
/// `create`: the volume is being created, so replicas without data are expected.
pub fn plan_start(
    configured: &[String],
    observed: &HashMap<String, Observation>,
    create: bool,
) -> Result<StartPlan> {
    let states: Vec<&ReplicaState> = configured
        .iter()
        .filter_map(|id| match observed.get(id) {
            Some(Observation::State(state)) => Some(state),
            _ => None,
        })
        .collect();
    let gen = states.iter().map(|s| s.gen).max().unwrap_or(0);
    if gen == 0 {
        // No replica ever held data. Only a create may start from nothing, and only with
        // every replica present: otherwise an unreachable replica could hold the data
        // while we start an empty volume over it.
        if !create {
            return Err(Error::NotFound(
                "no reachable replica holds data of this volume".into(),
            ));
        }
        if let Some(id) = configured
            .iter()
            .find(|id| matches!(observed.get(*id), Some(Observation::Unreachable) | None))
        {
            return Err(Error::Unavailable(format!(
                "replica {id} is unreachable; a new volume needs all of its replicas"
            )));
        }
        return Ok(StartPlan {
            gen: 0,
            sources: configured.to_vec(),
            resync: false,
            stale: Vec::new(),
        });
    }
    let latest: Vec<&&ReplicaState> = states.iter().filter(|s| s.gen == gen).collect();
    let members = latest[0].members.clone();
    if latest.iter().any(|s| s.members != members) {
        return Err(Error::Internal(format!(
            "replicas disagree on the members of generation {gen}; refusing to guess"
        )));
    }
    // Every member of the newest generation we see must answer: a missing one may have
    // moved on to a newer generation (with us cut out) and hold writes nobody else has.
    for member in &members {
        match observed.get(member) {
            Some(Observation::State(_)) | Some(Observation::Missing) => {}
            Some(Observation::Unreachable) => {
                return Err(Error::Unavailable(format!(
                    "replica {member}, a member of generation {gen}, is unreachable; it may \
                     hold newer data, so the volume waits for it"
                )))
            }
            None => {
                return Err(Error::InvalidArgument(format!(
                    "replica {member}, a member of generation {gen}, is not among the \
                     configured replicas"
                )))
            }
        }
    }
    let sources: Vec<String> = latest
        .iter()
        .filter(|s| s.in_sync() && members.contains(&s.replica))
        .map(|s| s.replica.clone())
        .collect();
    if sources.is_empty() {
        return Err(Error::Internal(format!(
            "no replica is in sync at generation {gen}"
        )));
    }
    let resync = latest
        .iter()
        .any(|s| sources.contains(&s.replica) && !s.clean);
    let stale = configured
        .iter()
        .filter(|id| !sources.contains(id))
        .cloned()
        .collect();
    Ok(StartPlan {
        gen,
        sources,
        resync,
        stale,
    })
}

/// What a rebuild of one replica must copy.
#[derive(Debug)]
pub enum RebuildPlan {
    /// Only these regions can differ from the source.
    Incremental(RegionBitmap),
    Full,
}

/// `source_since`/`source_bitmap`: the in-sync source's history; `target`: the replica to
/// rebuild as it is now (`None`: it holds nothing).
pub fn plan_rebuild(
    regions: u64,
    source_since: u64,
    source_bitmap: &[u8],
    target: Option<(&ReplicaState, &[u8])>,
) -> RebuildPlan {
    let Some((state, target_bitmap)) = target else {
        return RebuildPlan::Full;
    };
    // The source's bitmap covers writes since `source_since`; the target holds everything
    // up to its last in-sync generation. If the source forgot anything after that point,
    // only a full copy is safe. The target's own bitmap adds the writes it took that the
    // source may not have (in flight when it was cut out, or during an earlier rebuild).
    if state.synced_gen == 0 || source_since > state.synced_gen {
        return RebuildPlan::Full;
    }
    let copy = RegionBitmap::from_bytes(regions, source_bitmap);
    copy.union(&RegionBitmap::from_bytes(regions, target_bitmap));
    RebuildPlan::Incremental(copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(id: &str, gen: u64, members: &[&str]) -> ReplicaState {
        ReplicaState {
            replica: id.into(),
            volume: "v".into(),
            size: 1 << 20,
            gen,
            members: members.iter().map(|m| m.to_string()).collect(),
            synced_gen: if members.contains(&id) { gen } else { 0 },
            rebuilding: false,
            since: 0,
            clean: true,
        }
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn observe(list: Vec<(&str, Observation)>) -> HashMap<String, Observation> {
        list.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    use Observation::*;

    #[test]
    fn all_in_sync_start_from_all() {
        let o = observe(vec![
            ("a", State(state("a", 3, &["a", "b"]))),
            ("b", State(state("b", 3, &["a", "b"]))),
        ]);
        let plan = plan_start(&ids(&["a", "b"]), &o, false).unwrap();
        assert_eq!(plan.sources, ids(&["a", "b"]));
        assert!(plan.stale.is_empty());
        assert!(!plan.resync);
    }

    #[test]
    fn a_cut_out_replica_is_never_a_source() {
        // b was cut out at generation 4; it still says 3.
        let o = observe(vec![
            ("a", State(state("a", 4, &["a"]))),
            ("b", State(state("b", 3, &["a", "b"]))),
        ]);
        let plan = plan_start(&ids(&["a", "b"]), &o, false).unwrap();
        assert_eq!((plan.gen, plan.sources.clone()), (4, ids(&["a"])));
        assert_eq!(plan.stale, ids(&["b"]));
    }

    #[test]
    fn the_stale_replica_alone_cannot_start_the_volume() {
        // The newer generation's only member is away: b cannot know it is stale, but its
        // own record lists a as a member, and a does not answer.
        let o = observe(vec![
            ("a", Unreachable),
            ("b", State(state("b", 3, &["a", "b"]))),
        ]);
        let err = plan_start(&ids(&["a", "b"]), &o, false).unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err}");
    }

    #[test]
    fn an_absent_non_member_does_not_block() {
        let o = observe(vec![
            ("a", State(state("a", 4, &["a"]))),
            ("b", Unreachable),
        ]);
        let plan = plan_start(&ids(&["a", "b"]), &o, false).unwrap();
        assert_eq!(plan.sources, ids(&["a"]));
        assert_eq!(plan.stale, ids(&["b"]));
    }

    #[test]
    fn a_dirty_source_means_resync_and_a_rebuilding_member_is_not_a_source() {
        let mut a = state("a", 5, &["a"]);
        a.clean = false;
        let mut c = state("c", 5, &["a"]);
        c.rebuilding = true;
        let o = observe(vec![("a", State(a)), ("c", State(c))]);
        let plan = plan_start(&ids(&["a", "c"]), &o, false).unwrap();
        assert!(plan.resync);
        assert_eq!(plan.sources, ids(&["a"]));
    }

    #[test]
    fn a_half_committed_generation_leaves_lagging_members_stale() {
        // The engine died while committing 6: a has it, b does not yet.
        let o = observe(vec![
            ("a", State(state("a", 6, &["a", "b"]))),
            ("b", State(state("b", 5, &["a", "b"]))),
        ]);
        let plan = plan_start(&ids(&["a", "b"]), &o, false).unwrap();
        assert_eq!((plan.sources, plan.stale), (ids(&["a"]), ids(&["b"])));
    }

    #[test]
    fn new_volumes_need_every_replica_and_old_ones_need_data() {
        let fresh = observe(vec![("a", Missing), ("b", Missing)]);
        assert_eq!(
            plan_start(&ids(&["a", "b"]), &fresh, true).unwrap().sources,
            ids(&["a", "b"])
        );
        assert!(matches!(
            plan_start(&ids(&["a", "b"]), &fresh, false),
            Err(Error::NotFound(_))
        ));
        let partial = observe(vec![("a", Missing), ("b", Unreachable)]);
        assert!(matches!(
            plan_start(&ids(&["a", "b"]), &partial, true),
            Err(Error::Unavailable(_))
        ));
        // A create of a volume that already has data simply starts it.
        let existing = observe(vec![
            ("a", State(state("a", 2, &["a", "b"]))),
            ("b", State(state("b", 2, &["a", "b"]))),
        ]);
        assert_eq!(
            plan_start(&ids(&["a", "b"]), &existing, true).unwrap().gen,
            2
        );
    }

    #[test]
    fn disagreeing_members_are_refused() {
        let o = observe(vec![
            ("a", State(state("a", 3, &["a"]))),
            ("b", State(state("b", 3, &["b"]))),
        ]);
        assert!(plan_start(&ids(&["a", "b"]), &o, false).is_err());
    }

    #[test]
    fn rebuild_is_incremental_only_when_the_history_reaches_back() {
        let regions = 16;
        let src = RegionBitmap::new(regions);
        src.set(3);
        let target_bits = RegionBitmap::new(regions);
        target_bits.set(9);
        let mut target = state("b", 7, &["a"]);
        target.synced_gen = 4;
        let plan = plan_rebuild(
            regions,
            4,
            &src.to_bytes(),
            Some((&target, &target_bits.to_bytes())),
        );
        match plan {
            RebuildPlan::Incremental(bits) => {
                assert_eq!(bits.iter().collect::<Vec<_>>(), vec![3, 9])
            }
            RebuildPlan::Full => panic!("expected incremental"),
        }
        // The source checkpointed after the target left: its history is gone.
        assert!(matches!(
            plan_rebuild(regions, 5, &src.to_bytes(), Some((&target, &[]))),
            RebuildPlan::Full
        ));
        assert!(matches!(
            plan_rebuild(regions, 0, &[], None),
            RebuildPlan::Full
        ));
    }
}
