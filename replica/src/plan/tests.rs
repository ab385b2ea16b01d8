//! Every start and rebuild decision of `plan.rs`, case by case, including the stale-replica
//! case of docs/design.md ("Generations") and half-finished commits.

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

#[test]
fn an_engine_starts_at_the_smallest_size_of_its_sources() {
    let sized = |id: &str, size: u64| {
        let mut s = state(id, 3, &["a", "b"]);
        s.size = size;
        State(s)
    };
    // Grown on both since the volume context was written: the replicas' size wins.
    let both = observe(vec![("a", sized("a", 8 << 20)), ("b", sized("b", 8 << 20))]);
    assert_eq!(start_size(1 << 20, &both, &ids(&["a", "b"])), 8 << 20);
    // An expansion that reached only one: what both hold, never more.
    let half = observe(vec![("a", sized("a", 8 << 20)), ("b", sized("b", 4 << 20))]);
    assert_eq!(start_size(1 << 20, &half, &ids(&["a", "b"])), 4 << 20);
    // A stale replica's size does not count: it is not a source.
    assert_eq!(start_size(1 << 20, &half, &ids(&["a"])), 8 << 20);
    // Nothing reported (a new volume): the configured size.
    assert_eq!(
        start_size(1 << 20, &observe(vec![("a", Missing)]), &ids(&["a"])),
        1 << 20
    );
}
