//! `warren replica` and `warren volume`: the replication engine's processes. Wiring only;
//! the logic is in warren-replica.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use warren_core::{Error, Result};
use warren_replica::auth::Token;
use warren_replica::engine::{Engine, EngineConfig, ReplicaAddress};
use warren_replica::server::ReplicaService;
use warren_replica::BlockTarget;

use warren_node::replicated::device::{self, Device};
use warren_replica::frontend::select::FrontendKind;

use crate::cli::{ReplicaArgs, VolumeArgs};

/// A kernel block device of the volume, unless `--frontend none`.
async fn attach_frontend(
    args: &VolumeArgs,
    target: Arc<dyn BlockTarget>,
) -> Result<Option<Device>> {
    if args.frontend == "none" {
        return Ok(None);
    }
    let requested: FrontendKind = args.frontend.parse().map_err(core_error)?;
    device::attach_frontend(requested, target, &args.fuse_dir, &args.volume)
        .await
        .map(Some)
        .map_err(Error::from)
}

fn core_error(e: warren_replica::Error) -> Error {
    warren_node::replicated::replica_error(e)
}

pub async fn run_replica(args: ReplicaArgs, mut stop: watch::Receiver<bool>) -> Result<()> {
    let token = Token::from_file(&args.token_file).map_err(core_error)?;
    let service =
        ReplicaService::new(args.root.clone(), args.node_id.clone(), token).map_err(core_error)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(Error::io(format!("listen on {}", args.listen)))?;
    tracing::info!(
        address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        root = %args.root.display(),
        replica = %args.node_id,
        "replica service listening"
    );
    tokio::select! {
        served = service.serve(listener) => served.map_err(core_error),
        _ = stop.changed() => Ok(()),
    }
}

fn engine_config(args: &VolumeArgs) -> Result<EngineConfig> {
    let token = Token::from_file(&args.token_file).map_err(core_error)?;
    let replicas = args
        .replicas
        .iter()
        .map(|entry| {
            let (replica, address) = entry.split_once('=').ok_or_else(|| {
                Error::InvalidArgument(format!("--replica {entry:?}: expected ID=HOST:PORT"))
            })?;
            Ok(ReplicaAddress {
                replica: replica.to_string(),
                address: address.to_string(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut config = EngineConfig::new(&args.volume, args.size, replicas, token);
    config.local = args.local.clone();
    config.create = args.create;
    config.rebuild_rate = args.rebuild_rate_mib << 20;
    config.io_timeout = Duration::from_millis(args.io_timeout_ms);
    Ok(config)
}

pub async fn run_volume(args: VolumeArgs, mut stop: watch::Receiver<bool>) -> Result<()> {
    let mut config = engine_config(&args)?;
    let mut tasks = tokio::task::JoinSet::new();
    if let (Some(root), Some(local)) = (&args.local_root, &args.local) {
        let address = config
            .replicas
            .iter()
            .find(|r| r.replica == *local)
            .map(|r| r.address.clone())
            .ok_or_else(|| {
                Error::InvalidArgument(format!("--local {local} is not one of the --replica ids"))
            })?;
        let service = ReplicaService::new(root.clone(), local.clone(), config.token.clone())
            .map_err(core_error)?;
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .map_err(Error::io(format!("listen on {address}")))?;
        tracing::info!(%address, root = %root.display(), replica = %local, "local replica kept in this process");
        let served = service.clone();
        tasks.spawn(async move { served.serve(listener).await.map_err(core_error) });
        config.in_process = Some(service);
    }
    // Replicas may come up after the engine: keep trying until the plan allows a start.
    let engine = loop {
        match Engine::start(config.clone()).await {
            Ok(engine) => break engine,
            Err(e @ (warren_replica::Error::Unavailable(_) | warren_replica::Error::Busy(_))) => {
                tracing::warn!(error = %e, "volume cannot start yet; retrying");
            }
            Err(e) => return Err(core_error(e)),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return Ok(()),
        }
    };
    let target: Arc<dyn BlockTarget> = engine.clone();
    if let Some(socket) = &args.nbd_socket {
        let _ = std::fs::remove_file(socket);
        let (socket, target) = (socket.clone(), target.clone());
        tasks.spawn(async move {
            warren_replica::frontend::nbd::serve_unix(&socket, target)
                .await
                .map_err(core_error)
        });
    }
    let device = match attach_frontend(&args, target.clone()).await {
        Ok(device) => device,
        Err(e) => {
            engine.close().await.map_err(core_error)?;
            return Err(e);
        }
    };
    if let (Some(link), Some(path)) = (&args.device_link, device.as_ref().map(|d| d.path())) {
        let _ = std::fs::remove_file(link);
        std::os::unix::fs::symlink(path, link)
            .map_err(Error::io(format!("symlink {}", link.display())))?;
    }
    if let Some(path) = args.status_file.clone() {
        let engine = engine.clone();
        tasks.spawn(async move {
            let mut last = String::new();
            loop {
                let status = engine.status().await;
                let json = serde_json::json!({
                    "gen": status.gen,
                    "members": status.members,
                    "rebuilding": status.rebuilding,
                    "failed": status.failed,
                    "last_rebuild": status.last_rebuild.map(|r| serde_json::json!({
                        "incremental": r.incremental,
                        "regions": r.regions,
                        "bytes": r.bytes,
                        "seconds": r.elapsed.as_secs_f64(),
                    })),
                })
                .to_string();
                if json != last {
                    let tmp = path.with_extension("tmp");
                    if std::fs::write(&tmp, &json).is_ok() {
                        let _ = std::fs::rename(&tmp, &path);
                    }
                    last = json;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    tracing::info!(volume = %args.volume, "volume serving");
    tokio::select! {
        _ = stop.changed() => {}
        Some(done) = tasks.join_next() => {
            if let Ok(Err(e)) = done {
                tracing::error!(error = %e, "a frontend or the local replica stopped serving");
            }
        }
    }
    tasks.abort_all();
    if let Some(link) = &args.device_link {
        let _ = std::fs::remove_file(link);
    }
    if let Some(device) = device {
        if let Err(e) = device.detach().await {
            tracing::error!(error = %e, "detaching the block device failed");
        }
    }
    engine.close().await.map_err(core_error)?;
    if let Some(socket) = &args.nbd_socket {
        let _ = std::fs::remove_file(socket);
    }
    tracing::info!(volume = %args.volume, "volume closed cleanly");
    Ok(())
}
