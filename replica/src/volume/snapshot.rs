//! Reading a replica's data file whole, with its I/O kept out: what a snapshot copy needs.

use std::fs::File;

use super::ReplicaVolume;
use crate::error::Result;
use crate::locks::write;
use crate::volume::ReplicaState;

impl ReplicaVolume {
    /// Runs `copy` on the data file while no read, write, discard or flush of this
    /// replica runs (each holds the state's lock shared across its generation check and
    /// its I/O; this holds it exclusively), after checking that the replica is at `gen`
    /// when one is given (an engine's snapshot: a fenced engine's copy is refused).
    pub(crate) fn with_data_still<T>(
        &self,
        gen: Option<u64>,
        copy: impl FnOnce(&File, &ReplicaState) -> Result<T>,
    ) -> Result<T> {
        let state = write(&self.state);
        if let Some(gen) = gen {
            self.check_gen(&state, gen)?;
        }
        copy(&self.data, &state)
    }
}
