//! NodeStageVolume and NodeUnstageVolume of replicated volumes: start the volume's engine
//! (the node's own replica in process, the others over TCP), make a kernel block device of
//! it, and for a mount capability format it if blank and mount it at the staging path, as
//! image volumes are. Unstage undoes that: unmount, detach, close the engine (a flush, then
//! the replicas are marked clean).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use warren_core::capability::{Access, Requested};
use warren_core::ids::ReplicatedVolumeId;
use warren_core::params::{ReplicaEndpoint, ReplicatedContext};
use warren_core::Error as CoreError;
use warren_replica::engine::{Engine, EngineConfig, ReplicaAddress};
use warren_replica::frontend::select::FrontendKind;

use super::device::attach_frontend;
use super::running::{Running, RunningVolumes};
use super::{replica_error, ReplicaHost};
use crate::error::Result;
use crate::filesystem::FsType;
use crate::mount_steps::format_and_mount;
use crate::mounter::Mounter;
use crate::mountinfo::{self, mount_at, MountEntry};

/// How long a stage keeps trying to start an engine whose replicas are not all reachable
/// yet (a member of the newest generation away, a takeover in progress) before it answers
/// UNAVAILABLE and lets the CO retry.
const START_TIMEOUT: Duration = Duration::from_secs(20);
const START_RETRY: Duration = Duration::from_secs(1);

pub struct ReplicatedStager {
    pub(super) host: Arc<ReplicaHost>,
    pub(super) mounter: Arc<dyn Mounter>,
    pub(super) running: Arc<RunningVolumes>,
}

/// Runs blocking mount work off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|e| CoreError::Internal(format!("node task failed: {e}")))?
}

/// Mounts that still use `device`: a file system on it, or a bind of its device node (a
/// published raw block volume).
fn users_of<'a>(mounts: &'a [MountEntry], device: &Path) -> Option<&'a MountEntry> {
    let node = device.file_name().map(|n| Path::new("/").join(n));
    mounts
        .iter()
        .find(|m| Path::new(&m.source) == device || Some(&m.root) == node.as_ref())
}

/// The configuration of an engine on this node over `replicas`: the node's own replica,
/// when it holds one, is read from first and reached in process. Used to stage a volume
/// (from its volume context) and to seed a new one.
pub(super) fn engine_config(
    host: &ReplicaHost,
    name: &str,
    size: u64,
    replicas: &[ReplicaEndpoint],
) -> EngineConfig {
    let addresses = replicas
        .iter()
        .map(|r| ReplicaAddress {
            replica: r.node.clone(),
            address: r.endpoint.clone(),
        })
        .collect();
    let mut config = EngineConfig::new(name, size, addresses, host.token().clone());
    if replicas.iter().any(|r| r.node == host.node()) {
        config.local = Some(host.node().to_string());
    }
    config.in_process = Some(host.service().clone());
    config
}

impl ReplicatedStager {
    pub fn new(host: Arc<ReplicaHost>, mounter: Arc<dyn Mounter>) -> Self {
        ReplicatedStager {
            running: host.running(),
            host,
            mounter,
        }
    }

    pub async fn stage(
        &self,
        id: &ReplicatedVolumeId,
        staging: PathBuf,
        cap: Requested,
        context: &HashMap<String, String>,
    ) -> Result<()> {
        // Everything the request says is checked before anything is started or touched.
        let context = ReplicatedContext::read(context)?;
        for replica in &context.replicas {
            warren_replica::names::check_replica(&replica.node).map_err(replica_error)?;
        }
        if let Access::Mount { fs_type, .. } = &cap.access {
            FsType::parse(fs_type)?;
        }
        let name = id.replica_name().to_string();
        let _guard = self.host.lock(&name).await;
        let fresh = self.running.device(&name).is_none();
        if fresh {
            let engine = self.start_engine(&name, &context).await?;
            let device = match attach_frontend(
                FrontendKind::Auto,
                engine.clone(),
                &self.host.fuse_dir(),
                &name,
            )
            .await
            {
                Ok(device) => device,
                Err(e) => {
                    close_engine(&name, &engine).await;
                    return Err(e);
                }
            };
            let replicas = context.replicas.iter().map(|r| r.node.clone()).collect();
            self.running.insert(
                &name,
                Running {
                    engine,
                    device,
                    replicas,
                },
            );
        }
        let Access::Mount {
            fs_type,
            mount_flags,
        } = cap.access
        else {
            return Ok(()); // raw block: the device is the whole of staging
        };
        let device = self.running.device(&name).ok_or_else(|| {
            CoreError::Internal(format!("volume {id} lost its device while staging"))
        })?;
        let (mounter, shown) = (self.mounter.clone(), id.to_string());
        let mounted = blocking(move || {
            let mounts = mountinfo::read()?;
            let existing = mount_at(&mounts, &staging);
            format_and_mount(
                mounter.as_ref(),
                &device,
                &staging,
                existing,
                &fs_type,
                &mount_flags,
                &shown,
            )
        })
        .await;
        if mounted.is_err() && fresh {
            // Nothing is left running for a stage that failed from scratch.
            if let Some(running) = self.running.take(&name) {
                stop(&name, running).await?;
            }
        }
        mounted
    }

    /// Keeps trying while the replicas say "not yet" (UNAVAILABLE, busy), for a bounded time.
    async fn start_engine(&self, name: &str, context: &ReplicatedContext) -> Result<Arc<Engine>> {
        let mut config = engine_config(&self.host, name, context.size_bytes, &context.replicas);
        config.rebuild_rate = context.rebuild_rate;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match Engine::start(config.clone()).await {
                Ok(engine) => return Ok(engine),
                Err(
                    e @ (warren_replica::Error::Unavailable(_) | warren_replica::Error::Busy(_)),
                ) => {
                    if Instant::now() >= deadline {
                        return Err(CoreError::Unavailable(format!(
                            "volume {name} cannot start yet: {e}"
                        ))
                        .into());
                    }
                    tracing::warn!(volume = name, error = %e, "volume cannot start yet; retrying");
                }
                Err(e) => return Err(replica_error(e).into()),
            }
            tokio::time::sleep(START_RETRY).await;
        }
    }

    pub async fn unstage(&self, id: &ReplicatedVolumeId, staging: PathBuf) -> Result<()> {
        let name = id.replica_name().to_string();
        let _guard = self.host.lock(&name).await;
        let mounter = self.mounter.clone();
        blocking(move || {
            if mount_at(&mountinfo::read()?, &staging).is_some() {
                mounter.unmount(&staging)?;
            }
            Ok(())
        })
        .await?;
        let Some(device) = self.running.device(&name) else {
            return Ok(()); // not staged here (any more)
        };
        let shown = id.to_string();
        blocking(move || match users_of(&mountinfo::read()?, &device) {
            Some(m) => Err(CoreError::FailedPrecondition(format!(
                "volume {shown} is still mounted at {}; unpublish it first",
                m.mount_point.display()
            ))
            .into()),
            None => Ok(()),
        })
        .await?;
        match self.running.take(&name) {
            Some(running) => stop(&name, running).await,
            None => Ok(()),
        }
    }
}

/// Detaches the device, then closes the engine.
async fn stop(name: &str, running: Running) -> Result<()> {
    let detached = running.device.detach().await;
    close_engine(name, &running.engine).await;
    detached
}

/// Flushes and closes the engine. An engine that has failed (another engine took the
/// volume over, or every replica was lost) has nothing left to flush: that is logged, not
/// refused, or the volume could never be unstaged from this node.
async fn close_engine(name: &str, engine: &Engine) {
    match engine.close().await {
        Ok(()) => tracing::info!(volume = name, "volume closed cleanly"),
        Err(e) => {
            tracing::warn!(volume = name, error = %e, "volume closed after its engine failed")
        }
    }
}
