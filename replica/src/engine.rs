//! The volume engine: runs where the volume is used, and turns block I/O into replicated
//! I/O. See docs/design.md ("Replicated block volumes") for the rules; in short:
//!
//! - A write goes to every member of the current generation (and to a replica being
//!   rebuilt) and is acknowledged once every member has it. A member that fails is cut
//!   out first: a new generation without it is committed on the others, so it is fenced
//!   before the write is acknowledged and can never serve that data's absence.
//! - A flush (or FUA write) is durable on every member when acknowledged.
//! - Reads come from the local replica when it is a member, otherwise from any member.
//! - The engine never commits a generation without members: when the last one fails, the
//!   volume fails its I/O rather than acknowledge writes nobody holds.
//!
//! This file: configuration, start (with crash resync), membership changes, close and
//! checkpoints. `engine/io.rs`: the data path (reads, writes, discards, flushes).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::sync::{Notify, RwLock};

use crate::auth::Token;
use crate::bitmap::{regions_for, RegionBitmap, REGION_SIZE};
use crate::client::ReplicaClient;
use crate::error::{Error, Result};
use crate::locks::lock;
use crate::plan::{plan_start, start_size, Observation};
use crate::server::ReplicaService;
use crate::target::BlockTarget;

mod grow;
mod io;
mod snapshot;

#[derive(Debug, Clone)]
pub struct ReplicaAddress {
    pub replica: String,
    pub address: String,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub volume: String,
    /// The size the caller knows of (the volume context's: the size at creation). The
    /// engine serves the size its sources hold, never less than this (`plan::start_size`).
    pub size: u64,
    pub replicas: Vec<ReplicaAddress>,
    /// The replica on this node, read from first.
    pub local: Option<String>,
    pub token: Token,
    /// A replica that does not answer within this is cut out.
    pub io_timeout: Duration,
    /// Rebuild copy rate in bytes per second; 0 for no limit.
    pub rebuild_rate: u64,
    /// How often absent replicas are retried and history is checkpointed.
    pub heal_interval: Duration,
    /// The volume is being created: replicas without data are expected.
    pub create: bool,
    /// This node's replica service, when this process hosts it: the replica it keeps is
    /// reached in process instead of over TCP.
    pub in_process: Option<Arc<ReplicaService>>,
}

impl EngineConfig {
    pub fn new(volume: &str, size: u64, replicas: Vec<ReplicaAddress>, token: Token) -> Self {
        Self {
            volume: volume.to_string(),
            size,
            replicas,
            local: None,
            token,
            io_timeout: Duration::from_secs(5),
            rebuild_rate: 0,
            heal_interval: Duration::from_secs(2),
            create: false,
            in_process: None,
        }
    }
}

/// The volume's current generation and who takes its writes.
pub(crate) struct Membership {
    pub gen: u64,
    pub members: Vec<Arc<ReplicaClient>>,
    /// Replicas being rebuilt: they take every write, but are not waited for or read.
    pub rebuilding: Vec<Arc<ReplicaClient>>,
}

impl Membership {
    pub fn member_ids(&self) -> Vec<String> {
        self.members.iter().map(|m| m.replica.clone()).collect()
    }
}

/// Public view of the engine, for status and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineStatus {
    pub gen: u64,
    pub members: Vec<String>,
    pub rebuilding: Vec<String>,
    pub failed: Option<String>,
    pub last_rebuild: Option<crate::heal::RebuildStats>,
    /// The rebuilds running now, with their progress, oldest first.
    pub rebuilds: Vec<crate::heal::RebuildProgress>,
}

pub struct Engine {
    pub(crate) config: EngineConfig,
    /// The size served: set at start from the sources, raised by `grow_to_replicas`,
    /// never lowered. Every member holds at least this much.
    size: AtomicU64,
    /// Read-held by every I/O for its duration; write-held to change generation, so no
    /// I/O of an old generation is in flight when a new one is committed.
    pub(crate) membership: RwLock<Membership>,
    /// Region locks shared by writes and taken exclusively by a rebuild copying a region.
    stripes: Vec<RwLock<()>>,
    /// Set when the engine can no longer serve (fenced by a newer engine, or no member
    /// left); every I/O fails from then on.
    failure: Mutex<Option<String>>,
    /// Writes since the last checkpoint.
    pub(crate) written: AtomicBool,
    last_write: Mutex<Instant>,
    read_cursor: AtomicU64,
    stop: Notify,
    stopped: AtomicBool,
    pub(crate) rebuilding_now: AtomicBool,
    pub(crate) last_rebuild: Mutex<Option<crate::heal::RebuildStats>>,
    /// The rebuilds running now (`heal.rs` puts them there for as long as they run).
    pub(crate) rebuilds: crate::heal::RebuildBoard,
}

const STRIPES: usize = 256;

impl Engine {
    /// Connects to the replicas, decides from their states whether and how the volume may
    /// be served (`plan.rs`), commits a new generation, resyncs after a crash, and starts
    /// healing absent replicas in the background.
    pub async fn start(config: EngineConfig) -> Result<Arc<Engine>> {
        crate::names::check_volume(&config.volume)?;
        if config.size == 0 || !config.size.is_multiple_of(4096) {
            return Err(Error::InvalidArgument(format!(
                "volume size {} must be a positive multiple of 4096",
                config.size
            )));
        }
        let configured: Vec<String> = config.replicas.iter().map(|r| r.replica.clone()).collect();
        let opened = join_all(
            config
                .replicas
                .iter()
                .map(|r| open_replica(&config, r, config.size, config.create)),
        )
        .await;
        let mut clients = HashMap::new();
        let mut observed = HashMap::new();
        for (address, result) in config.replicas.iter().zip(opened) {
            let observation = match result {
                Ok((client, state)) => {
                    clients.insert(address.replica.clone(), client);
                    match state {
                        Some(state) => Observation::State(state),
                        None => Observation::Missing,
                    }
                }
                Err(e) => {
                    tracing::warn!(replica = %address.replica, error = %e, "replica unreachable at start");
                    Observation::Unreachable
                }
            };
            observed.insert(address.replica.clone(), observation);
        }
        let plan = plan_start(&configured, &observed, config.create)?;
        let size = start_size(config.size, &observed, &plan.sources);
        // Fresh replicas (create) are opened with create=true above; a plan from nothing
        // commits generation 1 on all of them.
        let gen = plan.gen + 1;
        let mut members = Vec::new();
        for id in &plan.sources {
            let client = clients
                .get(id)
                .cloned()
                .ok_or_else(|| Error::Unavailable(format!("replica {id} vanished")))?;
            let expect = match observed.get(id) {
                Some(Observation::State(s)) => s.gen,
                _ => 0,
            };
            members.push((client, expect));
        }
        let ids: Vec<String> = plan.sources.clone();
        let commits = join_all(
            members
                .iter()
                .map(|(client, expect)| client.commit(*expect, gen, &ids)),
        )
        .await;
        for ((client, _), result) in members.iter().zip(commits) {
            if let Err(e) = result {
                // Starting needs every source; the caller retries the start.
                return Err(Error::Unavailable(format!(
                    "could not commit generation {gen} on {}: {e}",
                    client.replica
                )));
            }
        }
        let members: Vec<Arc<ReplicaClient>> = members.into_iter().map(|(c, _)| c).collect();
        tracing::info!(volume = %config.volume, gen, size, members = ?ids, stale = ?plan.stale, resync = plan.resync, "volume engine started");
        let engine = Arc::new(Engine {
            config,
            size: AtomicU64::new(size),
            membership: RwLock::new(Membership {
                gen,
                members,
                rebuilding: Vec::new(),
            }),
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
            failure: Mutex::new(None),
            written: AtomicBool::new(plan.resync),
            last_write: Mutex::new(Instant::now()),
            read_cursor: AtomicU64::new(0),
            stop: Notify::new(),
            stopped: AtomicBool::new(false),
            rebuilding_now: AtomicBool::new(false),
            last_rebuild: Mutex::new(None),
            rebuilds: Default::default(),
        });
        if plan.resync {
            engine.resync().await?;
        }
        tokio::spawn(crate::heal::heal_loop(engine.clone()));
        Ok(engine)
    }

    /// After an engine crash the members may differ where writes were in flight: copy
    /// every region any of them marked from the primary to the others before serving.
    async fn resync(&self) -> Result<()> {
        let membership = self.membership.write().await;
        let primary = self.primary(&membership)?.clone();
        let regions = regions_for(self.size());
        let union = RegionBitmap::new(regions);
        for member in &membership.members {
            let (_, bytes) = member.bitmap().await?;
            union.union(&RegionBitmap::from_bytes(regions, &bytes));
        }
        let others: Vec<_> = membership
            .members
            .iter()
            .filter(|m| m.replica != primary.replica)
            .cloned()
            .collect();
        tracing::info!(volume = %self.config.volume, regions = union.count(), "resyncing regions written before a crash");
        for region in union.iter() {
            let (offset, len) = self.region_span(region);
            let data = primary.read(membership.gen, offset, len as usize).await?;
            for other in &others {
                other
                    .write(membership.gen, offset, data.clone(), false)
                    .await?;
            }
        }
        for member in &membership.members {
            member.flush(membership.gen).await?;
        }
        Ok(())
    }

    pub(crate) fn region_span(&self, region: u64) -> (u64, u64) {
        let offset = region * REGION_SIZE;
        (offset, REGION_SIZE.min(self.size().saturating_sub(offset)))
    }

    /// The member reads prefer: the local replica when it is a member, else the first.
    /// Fails when no member is left: the last one was cut out (and the volume failed)
    /// while the caller waited for the membership lock.
    pub(crate) fn primary<'a>(&self, membership: &'a Membership) -> Result<&'a Arc<ReplicaClient>> {
        self.config
            .local
            .as_ref()
            .and_then(|local| membership.members.iter().find(|m| m.replica == *local))
            .or_else(|| membership.members.first())
            .ok_or_else(|| self.no_member_left())
    }

    pub(crate) fn no_member_left(&self) -> Error {
        Error::Unavailable(format!("volume {} has no member left", self.config.volume))
    }

    pub async fn status(&self) -> EngineStatus {
        let membership = self.membership.read().await;
        EngineStatus {
            gen: membership.gen,
            members: membership.member_ids(),
            rebuilding: membership
                .rebuilding
                .iter()
                .map(|r| r.replica.clone())
                .collect(),
            failed: lock(&self.failure).clone(),
            last_rebuild: *lock(&self.last_rebuild),
            rebuilds: self.rebuilds.view(),
        }
    }

    fn check_failed(&self) -> Result<()> {
        match &*lock(&self.failure) {
            Some(why) => Err(Error::Unavailable(format!(
                "volume {} has failed: {why}",
                self.config.volume
            ))),
            None => Ok(()),
        }
    }

    pub(crate) fn fail(&self, why: String) {
        tracing::error!(volume = %self.config.volume, reason = %why, "volume engine failed");
        lock(&self.failure).get_or_insert(why);
    }

    /// Cuts `failed` members (and rebuild targets) out of generation `seen_gen`. Called
    /// after the I/O that noticed the failure has released its read lock. When members are
    /// cut, a new generation is committed on the rest before this returns, so the caller
    /// may then acknowledge what the rest hold.
    pub(crate) async fn cut_out(&self, seen_gen: u64, failed: Vec<(String, Error)>) {
        let mut membership = self.membership.write().await;
        if let Some((id, e)) = failed.iter().find(|(_, e)| matches!(e, Error::Fenced(_))) {
            // A replica is ahead of us: another engine has taken the volume over.
            self.fail(format!("fenced by a newer engine ({id}: {e})"));
            return;
        }
        let mut failed_ids: Vec<String> = failed.into_iter().map(|(id, _)| id).collect();
        membership
            .rebuilding
            .retain(|r| !failed_ids.contains(&r.replica));
        if membership.gen != seen_gen {
            // Someone already moved on; cut what is still a member at the new generation.
            failed_ids.retain(|id| membership.members.iter().any(|m| m.replica == *id));
        }
        loop {
            let before = membership.members.len();
            membership
                .members
                .retain(|m| !failed_ids.contains(&m.replica));
            if membership.members.len() == before {
                return;
            }
            if membership.members.is_empty() {
                self.fail("every replica has failed".into());
                return;
            }
            let gen = membership.gen + 1;
            let ids = membership.member_ids();
            tracing::warn!(volume = %self.config.volume, cut = ?failed_ids, gen, members = ?ids, "cutting out failed replicas");
            let targets: Vec<Arc<ReplicaClient>> = membership
                .members
                .iter()
                .chain(membership.rebuilding.iter())
                .cloned()
                .collect();
            let results =
                join_all(targets.iter().map(|t| t.commit(membership.gen, gen, &ids))).await;
            membership.gen = gen;
            failed_ids.clear();
            for (target, result) in targets.iter().zip(results) {
                if let Err(e) = result {
                    if matches!(e, Error::Fenced(_)) && !target.is_failed() {
                        self.fail(format!("fenced while committing generation {gen}: {e}"));
                        return;
                    }
                    failed_ids.push(target.replica.clone());
                }
            }
            membership
                .rebuilding
                .retain(|r| !failed_ids.contains(&r.replica));
        }
    }

    /// Flushes, forgets history if every replica is in sync, marks the replicas clean,
    /// and stops healing. The engine serves nothing afterwards.
    pub async fn close(&self) -> Result<()> {
        self.flush_all().await?;
        self.stopped.store(true, Ordering::Release);
        self.stop.notify_waiters();
        let membership = self.membership.write().await;
        let all_in = membership.members.len() == self.config.replicas.len()
            && membership.rebuilding.is_empty();
        for member in &membership.members {
            if all_in {
                member.checkpoint(membership.gen).await?;
            }
            member.close(membership.gen).await?;
        }
        drop(membership);
        lock(&self.failure).get_or_insert("closed".into());
        Ok(())
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    pub(crate) async fn stopped(&self) {
        if !self.is_stopped() {
            self.stop.notified().await;
        }
    }

    /// Forgets history on every replica when all are members and in sync and nothing is in
    /// flight (the write lock guarantees that).
    pub(crate) async fn checkpoint_if_whole(&self) {
        let membership = self.membership.write().await;
        if membership.members.len() != self.config.replicas.len()
            || !membership.rebuilding.is_empty()
            || self.rebuilding_now.load(Ordering::Acquire)
        {
            return;
        }
        self.written.store(false, Ordering::Release);
        let gen = membership.gen;
        for member in &membership.members {
            if let Err(e) = member.checkpoint(gen).await {
                tracing::warn!(replica = %member.replica, error = %e, "checkpoint failed");
                self.written.store(true, Ordering::Release);
            }
        }
    }
}

/// Connects to a replica and opens the volume, asking for at least `size` bytes.
/// `Ok((client, None))`: reachable, no replica.
pub(crate) async fn open_replica(
    config: &EngineConfig,
    address: &ReplicaAddress,
    size: u64,
    create: bool,
) -> Result<(Arc<ReplicaClient>, Option<crate::volume::ReplicaState>)> {
    let client = match &config.in_process {
        Some(service) if service.replica() == address.replica => {
            ReplicaClient::in_process(service.clone(), config.io_timeout)
        }
        _ => {
            ReplicaClient::connect(
                &address.replica,
                &address.address,
                &config.token,
                config.io_timeout,
            )
            .await?
        }
    };
    match client.open(&config.volume, size, create).await {
        Ok(state) if state.gen == 0 && !create => Ok((Arc::new(client), None)),
        Ok(state) => Ok((Arc::new(client), Some(state))),
        Err(Error::NotFound(_)) => Ok((Arc::new(client), None)),
        Err(e) => Err(e),
    }
}
