//! A controller over in-memory fake nodes, for the replicated-volume tests.
//!
//! Why a fake `NodeStorage`: what is tested here is the controller's part (placement,
//! records, the order of node calls, what survives a restart), and that needs nodes that
//! can be made full, unreachable, hanging, refusing or busy on demand. The real replica
//! host lives in warren-node and is tested there (and end to end with the driver).

#![allow(dead_code)] // each test file uses part of this

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use csi_proto::v1::controller_server::Controller;
use csi_proto::v1::volume_capability::access_mode::Mode as AccessMode;
use csi_proto::v1::volume_capability::{AccessMode as Am, AccessType, MountVolume};
use csi_proto::v1::*;
use tonic::Request;
use warren_controller::{ControllerService, NfsVolumes, Nodes, Records};
use warren_core::ids::{Layout, ReplicatedSnapshotId, ReplicatedVolumeId, SnapshotId, VolumeId};
use warren_core::storage::*;
use warren_core::{Error, Result};

pub const GIB: u64 = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Up,
    /// Every call: UNAVAILABLE, as the agent channel answers for a node it cannot reach.
    Down,
    /// Every call waits forever.
    Hang,
    /// Answers capacity, but its replica calls are UNAVAILABLE: it was lost between
    /// placement and the replica calls.
    LostAfterProbe,
    /// create_replica: RESOURCE_EXHAUSTED (the node's disk filled meanwhile).
    RefuseCreate,
    /// delete_replica: FAILED_PRECONDITION (an engine has it open).
    InUse,
}

pub struct FakeNode {
    name: String,
    endpoint: Option<String>,
    state: Mutex<FakeState>,
}

struct FakeState {
    available: u64,
    mode: Mode,
    replicas: BTreeMap<String, ReplicaInfo>,
    calls: Vec<String>,
    /// Snapshot copies it keeps, by snapshot key.
    copies: BTreeMap<String, ReplicaSnapshotInfo>,
    /// Volume keys whose engine runs here, with what that engine's snapshot answers.
    engines: HashMap<String, Vec<String>>,
    /// Replicas whose last engine did not close them clean.
    unclean: Vec<String>,
    /// What it seeded: (target volume key, source).
    seeded: Vec<(String, SeedSource)>,
}

type Fut<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

fn not_here<'a, T: Send + 'a>() -> Fut<'a, T> {
    Box::pin(async {
        Err(Error::Internal(
            "the fake node holds no local volumes".into(),
        ))
    })
}

impl FakeNode {
    pub fn new(name: &str, free_gib: u64, replica_service: bool) -> Arc<FakeNode> {
        Arc::new(FakeNode {
            name: name.into(),
            endpoint: replica_service.then(|| format!("{name}:7460")),
            state: Mutex::new(FakeState {
                available: free_gib * GIB,
                mode: Mode::Up,
                replicas: BTreeMap::new(),
                calls: Vec::new(),
                copies: BTreeMap::new(),
                engines: HashMap::new(),
                unclean: Vec::new(),
                seeded: Vec::new(),
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state().mode = mode;
    }

    /// The volume keys it holds a replica of.
    pub fn replicas(&self) -> Vec<String> {
        self.state().replicas.keys().cloned().collect()
    }

    pub fn replica(&self, key: &str) -> Option<ReplicaInfo> {
        self.state().replicas.get(key).cloned()
    }

    pub fn edit_replica(&self, key: &str, edit: impl FnOnce(&mut ReplicaInfo)) {
        if let Some(r) = self.state().replicas.get_mut(key) {
            edit(r);
        }
    }

    /// The calls that ask it to change something (create, expand or delete a replica).
    pub fn changes(&self) -> Vec<String> {
        let calls = self.state().calls.clone();
        calls
            .into_iter()
            .filter(|c| !c.starts_with("get") && c != "capacity")
            .collect()
    }

    pub fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }

    /// The snapshot keys it keeps a copy of.
    pub fn copies(&self) -> Vec<String> {
        self.state().copies.keys().cloned().collect()
    }

    /// The volume `key` is staged here: its engine runs here, and a snapshot through it
    /// makes copies on `members` (the fake answers for them; the copies themselves are
    /// the node plugin's, tested there).
    pub fn run_engine(&self, key: &str, members: &[&str]) {
        let members = members.iter().map(|m| m.to_string()).collect();
        self.state().engines.insert(key.into(), members);
    }

    /// Its replica of `key` was left unclean by an engine that died.
    pub fn mark_unclean(&self, key: &str) {
        self.state().unclean.push(key.into());
    }

    pub fn seeded(&self) -> Vec<(String, SeedSource)> {
        self.state().seeded.clone()
    }

    /// Records the call; the mode's answer when it overrides the real one.
    fn enter(&self, call: String) -> Option<Mode> {
        let mut state = self.state();
        state.calls.push(call);
        Some(state.mode).filter(|m| *m != Mode::Up)
    }
}

async fn down_or_hang(name: &str, mode: Option<Mode>) -> Result<()> {
    match mode {
        Some(Mode::Down | Mode::LostAfterProbe) => {
            Err(Error::Unavailable(format!("cannot reach node {name}")))
        }
        Some(Mode::Hang) => std::future::pending().await,
        _ => Ok(()),
    }
}

impl NodeStorage for FakeNode {
    fn create_volume<'s, 'f>(&'s self, _: VolumeSpec) -> Fut<'f, VolumeInfo>
    where
        's: 'f,
        Self: 'f,
    {
        not_here()
    }
    fn delete_volume<'s, 'f>(&'s self, _: VolumeId) -> Fut<'f, ()>
    where
        's: 'f,
        Self: 'f,
    {
        not_here()
    }
    fn expand_volume<'s, 'f>(&'s self, _: VolumeId, _: u64) -> Fut<'f, u64>
    where
        's: 'f,
        Self: 'f,
    {
        not_here()
    }
    fn get_volume<'s, 'f>(&'s self, _: VolumeId) -> Fut<'f, VolumeInfo>
    where
        's: 'f,
        Self: 'f,
    {
        not_here()
    }
    fn list_volumes<'s, 'f>(&'s self) -> Fut<'f, Vec<VolumeInfo>>
    where
        's: 'f,
        Self: 'f,
    {
        Box::pin(async { Ok(vec![]) })
    }
    fn create_snapshot<'s, 'f>(
        &'s self,
        _: SnapshotId,
        _: String,
        _: VolumeId,
    ) -> Fut<'f, SnapshotInfo>
    where
        's: 'f,
        Self: 'f,
    {
        not_here()
    }
    fn delete_snapshot<'s, 'f>(&'s self, _: SnapshotId) -> Fut<'f, ()>
    where
        's: 'f,
        Self: 'f,
    {
        not_here()
    }
    fn list_snapshots<'s, 'f>(&'s self) -> Fut<'f, Vec<SnapshotInfo>>
    where
        's: 'f,
        Self: 'f,
    {
        Box::pin(async { Ok(vec![]) })
    }
    fn capacity<'s, 'f>(&'s self, layout: Layout) -> Fut<'f, Capacity>
    where
        's: 'f,
        Self: 'f,
    {
        Box::pin(async move {
            assert_eq!(
                layout,
                Layout::Image,
                "replicas are sized like image volumes"
            );
            let mode = self
                .enter("capacity".into())
                .filter(|m| *m != Mode::LostAfterProbe);
            down_or_hang(&self.name, mode).await?;
            let available = self.state().available;
            Ok(Capacity {
                available_bytes: available,
                total_bytes: available,
                maximum_volume_bytes: available,
                replica_endpoint: self.endpoint.clone(),
            })
        })
    }
    fn create_replica<'s, 'f>(&'s self, spec: ReplicaSpec) -> Fut<'f, ReplicaInfo>
    where
        's: 'f,
        Self: 'f,
    {
        Box::pin(async move {
            let key = spec.volume.replica_name().to_string();
            let mode = self.enter(format!("create {key}"));
            down_or_hang(&self.name, mode).await?;
            let Some(endpoint) = self.endpoint.clone() else {
                return Err(Error::FailedPrecondition(
                    "this node hosts no replica service".into(),
                ));
            };
            if mode == Some(Mode::RefuseCreate) {
                return Err(Error::ResourceExhausted(
                    "no space left for the replica".into(),
                ));
            }
            let mut state = self.state();
            if let Some(r) = state.replicas.get(&key) {
                return if r.size_bytes == spec.size_bytes {
                    Ok(r.clone())
                } else {
                    Err(Error::AlreadyExists(
                        "replica exists with another size".into(),
                    ))
                };
            }
            let info = ReplicaInfo {
                volume: spec.volume,
                node: self.name.clone(),
                endpoint,
                size_bytes: spec.size_bytes,
                gen: 1,
                members: spec.members,
                in_sync: true,
            };
            state.replicas.insert(key, info.clone());
            Ok(info)
        })
    }
    fn delete_replica<'s, 'f>(&'s self, volume: ReplicatedVolumeId) -> Fut<'f, ()>
    where
        's: 'f,
        Self: 'f,
    {
        Box::pin(async move {
            let key = volume.replica_name().to_string();
            let mode = self.enter(format!("delete {key}"));
            down_or_hang(&self.name, mode).await?;
            if mode == Some(Mode::InUse) {
                return Err(Error::FailedPrecondition(
                    "an engine has the replica open".into(),
                ));
            }
            self.state().replicas.remove(&key);
            Ok(())
        })
    }
    fn expand_replica<'s, 'f>(
        &'s self,
        volume: ReplicatedVolumeId,
        size_bytes: u64,
    ) -> Fut<'f, ReplicaInfo>
    where
        's: 'f,
        Self: 'f,
    {
        Box::pin(async move {
            let key = volume.replica_name().to_string();
            let mode = self.enter(format!("expand {key} {size_bytes}"));
            down_or_hang(&self.name, mode).await?;
            let mut state = self.state();
            let replica = state
                .replicas
                .get_mut(&key)
                .ok_or_else(|| Error::NotFound("no such replica".into()))?;
            // As a real node: at least that large, never shrunk.
            replica.size_bytes = replica.size_bytes.max(size_bytes);
            Ok(replica.clone())
        })
    }
    fn get_replica<'s, 'f>(&'s self, volume: ReplicatedVolumeId) -> Fut<'f, ReplicaInfo>
    where
        's: 'f,
        Self: 'f,
    {
        Box::pin(async move {
            let key = volume.replica_name().to_string();
            let mode = self.enter(format!("get {key}"));
            down_or_hang(&self.name, mode).await?;
            self.replica(&key)
                .ok_or_else(|| Error::NotFound("no such replica".into()))
        })
    }
    fn snapshot_through_engine<'s, 'f>(
        &'s self,
        snapshot: ReplicatedSnapshotId,
    ) -> Fut<'f, Vec<ReplicaSnapshotInfo>>
    where
        's: 'f,
        Self: 'f,
    {
        Box::pin(async move {
            let key = snapshot.volume.replica_name().to_string();
            let mode = self.enter(format!("engine-snapshot {key}"));
            down_or_hang(&self.name, mode).await?;
            let members =
                self.state().engines.get(&key).cloned().ok_or_else(|| {
                    Error::NotFound(format!("the engine of {key} does not run here"))
                })?;
            Ok(members
                .iter()
                .map(|node| ReplicaSnapshotInfo {
                    snapshot: snapshot.clone(),
                    node: node.clone(),
                    size_bytes: GIB,
                    gen: 9,
                    members: members.clone(),
                    clean: true,
                    created_at_secs: 1_700_000_000,
                    created_at_nanos: 0,
                })
                .collect())
        })
    }
    fn snapshot_replica<'s, 'f>(
        &'s self,
        snapshot: ReplicatedSnapshotId,
    ) -> Fut<'f, ReplicaSnapshotInfo>
    where
        's: 'f,
        Self: 'f,
    {
        Box::pin(async move {
            let key = snapshot.volume.replica_name().to_string();
            let mode = self.enter(format!("snapshot {key}"));
            down_or_hang(&self.name, mode).await?;
            if mode == Some(Mode::InUse) {
                return Err(Error::Aborted("an engine has the replica open".into()));
            }
            let mut state = self.state();
            let replica = state
                .replicas
                .get(&key)
                .cloned()
                .ok_or_else(|| Error::NotFound("no such replica".into()))?;
            let info = ReplicaSnapshotInfo {
                snapshot: snapshot.clone(),
                node: self.name.clone(),
                size_bytes: replica.size_bytes,
                gen: replica.gen,
                members: replica.members,
                clean: !state.unclean.contains(&key),
                created_at_secs: 1_700_000_000,
                created_at_nanos: 0,
            };
            state
                .copies
                .insert(snapshot.key.as_str().to_string(), info.clone());
            Ok(info)
        })
    }
    fn delete_replica_snapshot<'s, 'f>(&'s self, snapshot: ReplicatedSnapshotId) -> Fut<'f, ()>
    where
        's: 'f,
        Self: 'f,
    {
        Box::pin(async move {
            let mode = self.enter(format!("delete-snapshot {}", snapshot.key));
            down_or_hang(&self.name, mode).await?;
            self.state().copies.remove(snapshot.key.as_str());
            Ok(())
        })
    }
    fn seed_replicated<'s, 'f>(
        &'s self,
        target: SeedTarget,
        source: SeedSource,
    ) -> Fut<'f, SeedReport>
    where
        's: 'f,
        Self: 'f,
    {
        Box::pin(async move {
            let key = target.volume.replica_name().to_string();
            let mode = self.enter(format!("seed {key}"));
            down_or_hang(&self.name, mode).await?;
            let mut state = self.state();
            if let SeedSource::ReplicaSnapshot(id) = &source {
                if !state.copies.contains_key(id.key.as_str()) {
                    return Err(Error::NotFound(format!("no copy of {id} here")));
                }
            }
            state.seeded.push((key, source));
            Ok(SeedReport {
                source_bytes: target.size_bytes,
                written_bytes: 0,
            })
        })
    }
}

/// A controller with its state in a temporary directory, over fake nodes.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Nodes,
    pub fakes: BTreeMap<String, Arc<FakeNode>>,
    pub svc: ControllerService,
}

pub fn service(dir: &Path, nodes: &Nodes) -> ControllerService {
    let records = Arc::new(Records::open(dir).unwrap());
    let nfs = NfsVolumes::open(dir, Default::default()).unwrap();
    ControllerService::new(records, nodes.clone(), nfs)
}

/// Nodes as (name, free GiB, hosts a replica service).
pub fn cluster(specs: &[(&str, u64, bool)]) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let nodes = Nodes::default();
    let mut fakes = BTreeMap::new();
    for (name, free, service) in specs {
        let fake = FakeNode::new(name, *free, *service);
        nodes.add(name, fake.clone());
        fakes.insert(name.to_string(), fake);
    }
    let svc = service(dir.path(), &nodes);
    Cluster {
        dir,
        nodes,
        fakes,
        svc,
    }
}

impl Cluster {
    pub fn node(&self, name: &str) -> &FakeNode {
        &self.fakes[name]
    }

    /// What `kill -9` and a restart leave: a new service over the same state directory.
    pub fn restart(&mut self) {
        self.svc = service(self.dir.path(), &self.nodes);
    }

    /// The record files of replicated volumes on disk.
    pub fn record_files(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("controller/replicated"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    pub fn records(&self) -> Records {
        Records::open(self.dir.path()).unwrap()
    }

    pub async fn create(
        &self,
        req: CreateVolumeRequest,
    ) -> std::result::Result<Volume, tonic::Status> {
        let reply = self.svc.create_volume(Request::new(req)).await?;
        Ok(reply.into_inner().volume.unwrap())
    }

    pub async fn delete(&self, id: &str) -> std::result::Result<(), tonic::Status> {
        self.svc
            .delete_volume(Request::new(DeleteVolumeRequest {
                volume_id: id.into(),
                secrets: HashMap::new(),
            }))
            .await
            .map(|_| ())
    }
}

pub fn mount_cap(mode: AccessMode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(Am { mode: mode as i32 }),
    }
}

/// A CreateVolume for a replicated class with `params` on top of `backend: replicated`.
pub fn replicated_request(name: &str, params: &[(&str, &str)]) -> CreateVolumeRequest {
    let mut parameters: HashMap<String, String> =
        HashMap::from([("backend".to_string(), "replicated".to_string())]);
    for (k, v) in params {
        parameters.insert(k.to_string(), v.to_string());
    }
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: GIB as i64,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount_cap(AccessMode::SingleNodeWriter)],
        parameters,
        ..Default::default()
    }
}

pub fn topology(node: &str) -> Topology {
    Topology {
        segments: HashMap::from([(warren_core::TOPOLOGY_KEY.to_string(), node.to_string())]),
    }
}
