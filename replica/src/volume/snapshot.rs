//! Reading a replica's data file whole, as a snapshot copy does.

use std::fs::File;

use super::ReplicaVolume;
use crate::error::Result;
use crate::locks::read;
use crate::volume::ReplicaState;

impl ReplicaVolume {
    /// Runs `copy` on the data file with the replica's state held still (no commit,
    /// growth, close or checkpoint until it returns; reading the state stays possible,
    /// so a status call never waits for a copy), after checking that the replica is at
    /// `gen` when one is given (an engine's snapshot: a copy for an engine that has been
    /// fenced is refused).
    ///
    /// No I/O runs meanwhile, by the callers' guarantees: an engine's snapshot holds its
    /// membership write lock (none of its I/O is in flight, and any older engine's is
    /// refused by generation since this engine's first commit), and a copy outside an
    /// engine runs only while no session holds the replica and `Open`s wait.
    pub(crate) fn with_data_still<T>(
        &self,
        gen: Option<u64>,
        copy: impl FnOnce(&File, &ReplicaState) -> Result<T>,
    ) -> Result<T> {
        let state = read(&self.state);
        if let Some(gen) = gen {
            self.check_gen(&state, gen)?;
        }
        copy(&self.data, &state)
    }
}
