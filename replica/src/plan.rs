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

/// The size an engine starts at: the smallest size its sources report (`floor`, the size
/// it was configured with, when none reports one: a new volume). Every replica was opened
/// asking for at least `floor`, so the answer is never below it.
///
/// Why the smallest is safe: an engine grows only to a size every member holds already
/// (`Engine::grow_to_replicas`), and a replica joins only when it holds at least the
/// engine's size, so every source holds every byte any engine ever served. Sources of
/// different sizes mean an expansion has not reached all of them yet: the volume starts
/// at what all of them hold and grows once the controller has grown the rest.
pub fn start_size(floor: u64, observed: &HashMap<String, Observation>, sources: &[String]) -> u64 {
    sources
        .iter()
        .filter_map(|id| match observed.get(id) {
            Some(Observation::State(state)) => Some(state.size),
            _ => None,
        })
        .min()
        .unwrap_or(floor)
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
mod tests;
