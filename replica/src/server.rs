//! The replica service: one per node, serving every replica kept under its root.
//!
//! A connection authenticates (`auth.rs`), then opens exactly one volume; from then on its
//! frames are that volume's I/O and control calls. Requests are handled concurrently and
//! answered as they complete (matched by request id). Opening a volume that another
//! connection has open takes it over: the older connection's requests are refused from
//! then on, so an engine that lost its node cannot keep writing once a new one started.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::auth::{server_handshake, Token};
use crate::error::{Error, Result};
use crate::messages::{GenerationChange, GrowRequest, OpenRequest};
use crate::protocol::{
    pump_frames, read_frame, Frame, Kind, Outgoing, FLAG_FUA, MAX_BODY, MAX_IO, SOCKET_BUFFER,
};
use crate::snapshots::SnapshotStore;
use crate::volume::ReplicaVolume;

mod manage;
mod open;
mod snapshot;
pub use manage::CreateOutcome;

/// The largest volume served (64 TiB): its region bitmap must fit in one frame's body
/// (`GetBitmap`), and a peer's `Open` must not make the replica allocate a bitmap of any
/// size it names.
pub const MAX_VOLUME_SIZE: u64 = MAX_BODY as u64 * 8 * crate::bitmap::REGION_SIZE;

pub struct ReplicaService {
    root: PathBuf,
    /// An exclusive lock on `<root>/.lock` for the service's lifetime: two services on one
    /// root would each keep their own sessions and generations in memory, and fencing
    /// would mean nothing. The kernel drops it when the process dies, `kill -9` included.
    _root_lock: std::fs::File,
    replica: String,
    token: Token,
    volumes: Mutex<HashMap<String, Arc<OpenVolume>>>,
    /// The snapshot copies kept beside the replicas (`<root>/.snapshots/`).
    snapshots: Arc<SnapshotStore>,
    sessions: AtomicU64,
    /// Bytes (in budget units) held by requests in service and replies not yet written,
    /// over all connections.
    held: Arc<AtomicUsize>,
}

/// A request's share of its connection's budget, counted in the service-wide gauge until
/// its reply is written.
struct Held {
    _permit: OwnedSemaphorePermit,
    units: usize,
    gauge: Arc<AtomicUsize>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.gauge.fetch_sub(self.units, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for ReplicaService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaService")
            .field("root", &self.root)
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

pub(crate) struct OpenVolume {
    volume: ReplicaVolume,
    /// The connection that may use the volume now.
    session: AtomicU64,
    /// Where an engine's `Snapshot` request puts its copy.
    snapshots: Arc<SnapshotStore>,
}

impl ReplicaService {
    pub fn new(root: PathBuf, replica: String, token: Token) -> Result<Arc<Self>> {
        crate::names::check_replica(&replica)?;
        std::fs::create_dir_all(&root).map_err(Error::io(format!("create {}", root.display())))?;
        let lock_path = root.join(".lock");
        let root_lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(Error::io(format!("open {}", lock_path.display())))?;
        match root_lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Unavailable(format!(
                    "{} is served by another replica service",
                    root.display()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io(format!("lock {}", lock_path.display()))(e))
            }
        }
        let snapshots = SnapshotStore::open(&root)?;
        Ok(Arc::new(Self {
            root,
            _root_lock: root_lock,
            replica,
            token,
            volumes: Mutex::new(HashMap::new()),
            snapshots,
            sessions: AtomicU64::new(1),
            held: Arc::new(AtomicUsize::new(0)),
        }))
    }

    /// The replica id this service keeps replicas for (its node).
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// A new session for a caller in this process (`ReplicaClient::in_process`): it
    /// opens and fences exactly like a connection does.
    pub(crate) fn new_session(&self) -> u64 {
        self.sessions.fetch_add(1, Ordering::Relaxed)
    }

    /// Bytes held by requests being served and replies not yet written (an upper bound).
    pub fn in_flight_bytes(&self) -> usize {
        self.held.load(Ordering::Acquire) * BUDGET_UNIT
    }

    /// Accepts connections until the listener fails or the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> Result<()> {
        loop {
            let (stream, peer) = listener
                .accept()
                .await
                .map_err(Error::io("accept replica connection"))?;
            let service = self.clone();
            tokio::spawn(async move {
                if let Err(e) = service.connection(stream).await {
                    tracing::info!(%peer, error = %e, "replica connection ended");
                }
            });
        }
    }

    async fn connection(self: Arc<Self>, mut stream: TcpStream) -> Result<()> {
        stream.set_nodelay(true).ok();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            server_handshake(&mut stream, &self.token),
        )
        .await
        .map_err(|_| Error::Unauthenticated("handshake timed out".into()))??;
        let session = self.sessions.fetch_add(1, Ordering::Relaxed);
        let (reader, writer) = stream.into_split();
        let mut reader = tokio::io::BufReader::with_capacity(SOCKET_BUFFER, reader);
        // Replies come from concurrent handlers; one task owns the socket's write side.
        let (reply_tx, reply_rx) = mpsc::channel::<Outgoing>(256);
        // Bytes a connection may hold in requests being served and replies not yet written:
        // a peer that sends requests without reading replies stops being read, instead of
        // making the service buffer without bound.
        let budget = Arc::new(Semaphore::new(IN_FLIGHT_UNITS));
        let writer_task = tokio::spawn(pump_frames(writer, reply_rx));
        let mut open: Option<Arc<OpenVolume>> = None;
        let result = loop {
            let frame = match read_frame(&mut reader).await {
                Ok(Some(frame)) => frame,
                Ok(None) => break Ok(()),
                Err(e) => {
                    // A frame we cannot trust ends the connection; say why first.
                    let _ = reply_tx.send(Frame::error_reply(0, &e).into()).await;
                    break Err(e);
                }
            };
            let id = frame.request_id;
            if frame.kind == Kind::Open {
                let opened = match frame.parse_json::<OpenRequest>() {
                    Ok(request) => self.open(request, session).await,
                    Err(e) => Err(e),
                };
                let reply = match opened {
                    Ok(volume) => {
                        let state = volume.volume.state();
                        open = Some(volume);
                        Frame::json(Kind::Reply, id, &state)
                            .unwrap_or_else(|e| Frame::error_reply(id, &e))
                    }
                    Err(e) => Frame::error_reply(id, &e),
                };
                let _ = reply_tx.send(reply.into()).await;
                continue;
            }
            let Some(volume) = open.clone() else {
                let error = Error::InvalidArgument("no volume is open on this connection".into());
                let _ = reply_tx.send(Frame::error_reply(id, &error).into()).await;
                continue;
            };
            let units = cost(&frame);
            let Ok(permit) = budget.clone().acquire_many_owned(units).await else {
                break Ok(());
            };
            self.held.fetch_add(units as usize, Ordering::AcqRel);
            let held = Held {
                _permit: permit,
                units: units as usize,
                gauge: self.held.clone(),
            };
            // Reads and writes the page cache can serve without blocking are answered right
            // here: a thread hand-off costs more than the copy (see docs/design.md).
            if let Some(reply) = try_nowait(&volume, session, &frame) {
                let reply = match reply {
                    Ok(mut reply) => {
                        reply.request_id = id;
                        reply
                    }
                    Err(e) => Frame::error_reply(id, &e),
                };
                let _ = reply_tx.send(Outgoing(reply, Some(Box::new(held)))).await;
                continue;
            }
            // Otherwise onto the blocking pool, which queues the reply itself: one thread
            // hand-off per request, not two.
            let tx = reply_tx.clone();
            tokio::task::spawn_blocking(move || {
                let reply = match handle(&volume, session, frame) {
                    Ok(mut reply) => {
                        reply.request_id = id;
                        reply
                    }
                    Err(e) => Frame::error_reply(id, &e),
                };
                let _ = tx.blocking_send(Outgoing(reply, Some(Box::new(held))));
            });
        };
        drop(reply_tx);
        let _ = writer_task.await;
        result
    }
}

/// The in-flight budget per connection, in units of `BUDGET_UNIT` bytes (64 MiB).
const BUDGET_UNIT: usize = 64 << 10;
const IN_FLIGHT_UNITS: usize = 1024;

/// A request's share of the budget: its body, or for a read the data it will return.
fn cost(frame: &Frame) -> u32 {
    let bytes = match frame.kind {
        Kind::Read => frame
            .body
            .first_chunk::<4>()
            .map(|b| u32::from_le_bytes(*b) as usize)
            .unwrap_or(0)
            .min(MAX_IO),
        _ => frame.body.len(),
    };
    (bytes / BUDGET_UNIT + 1) as u32
}

/// Serves one request of a caller in this process: the same checks and the same code as
/// a connection's requests, without the socket, the framing and the checksums.
pub(crate) async fn serve_in_process(
    open: &Arc<OpenVolume>,
    session: u64,
    frame: Frame,
) -> Result<Frame> {
    if let Some(reply) = try_nowait(open, session, &frame) {
        return reply;
    }
    let open = open.clone();
    tokio::task::spawn_blocking(move || handle(&open, session, frame))
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
}

impl OpenVolume {
    pub(crate) fn state(&self) -> crate::volume::ReplicaState {
        self.volume.state()
    }
}

/// A plain read or write answered from the page cache without blocking, if it can be.
fn try_nowait(open: &OpenVolume, session: u64, frame: &Frame) -> Option<Result<Frame>> {
    if open.session.load(Ordering::Acquire) != session {
        return None; // the blocking path refuses it with the right error
    }
    match frame.kind {
        Kind::Write if frame.flags & FLAG_FUA == 0 && frame.body.len() <= MAX_IO => open
            .volume
            .try_write_nowait(frame.gen, frame.offset, &frame.body)
            .map(|r| r.map(|()| Frame::reply(0, Bytes::new()))),
        Kind::Read => {
            let len = u32::from_le_bytes(frame.body.get(..4)?.try_into().ok()?) as usize;
            if frame.body.len() != 4 || len > MAX_IO {
                return None;
            }
            open.volume
                .try_read_nowait(frame.gen, frame.offset, len)
                .map(|r| r.map(|data| Frame::reply(0, data)))
        }
        _ => None,
    }
}

/// Runs one request of an open volume, on the blocking pool (it does file I/O).
fn handle(open: &OpenVolume, session: u64, frame: Frame) -> Result<Frame> {
    if open.session.load(Ordering::Acquire) != session {
        return Err(Error::Fenced(
            "another engine has opened this volume since".into(),
        ));
    }
    if frame.kind == Kind::Snapshot {
        return snapshot::take_for_engine(open, &frame);
    }
    execute(&open.volume, frame)
}

fn execute(volume: &ReplicaVolume, frame: Frame) -> Result<Frame> {
    let ok = |body: Bytes| Ok(Frame::reply(0, body));
    let json = |value: &crate::volume::ReplicaState| Frame::json(Kind::Reply, 0, value);
    match frame.kind {
        Kind::GetState => json(&volume.state()),
        Kind::Commit => {
            let change: GenerationChange = frame.parse_json()?;
            json(&volume.commit(change.expect, change.gen, change.members)?)
        }
        Kind::BeginRebuild => {
            let change: GenerationChange = frame.parse_json()?;
            json(&volume.begin_rebuild(change.expect, change.gen, change.members)?)
        }
        Kind::Grow => {
            let GrowRequest { size } = frame.parse_json()?;
            if size > MAX_VOLUME_SIZE {
                return Err(Error::InvalidArgument(format!(
                    "volume size {size} exceeds {MAX_VOLUME_SIZE}"
                )));
            }
            json(&volume.grow(size)?)
        }
        Kind::Checkpoint => {
            volume.checkpoint(frame.gen)?;
            ok(Bytes::new())
        }
        Kind::Close => {
            volume.close_clean(frame.gen)?;
            ok(Bytes::new())
        }
        Kind::GetBitmap => {
            let (since, bytes) = volume.bitmap();
            let mut reply = Frame::reply(0, Bytes::from(bytes));
            reply.offset = since;
            Ok(reply)
        }
        Kind::Read => {
            let len = u32::from_le_bytes(
                frame.body[..]
                    .try_into()
                    .map_err(|_| Error::Protocol("read length must be 4 bytes".into()))?,
            ) as usize;
            if len > MAX_IO {
                return Err(Error::InvalidArgument(format!(
                    "read of {len} bytes exceeds {MAX_IO}"
                )));
            }
            ok(volume.read(frame.gen, frame.offset, len)?)
        }
        Kind::Write => {
            if frame.body.len() > MAX_IO {
                return Err(Error::InvalidArgument(format!(
                    "write of {} bytes exceeds {MAX_IO}",
                    frame.body.len()
                )));
            }
            volume.write(
                frame.gen,
                frame.offset,
                &frame.body,
                frame.flags & FLAG_FUA != 0,
            )?;
            ok(Bytes::new())
        }
        Kind::Flush => {
            volume.flush(frame.gen)?;
            ok(Bytes::new())
        }
        Kind::Discard => {
            let len = u64::from_le_bytes(
                frame.body[..]
                    .try_into()
                    .map_err(|_| Error::Protocol("discard length must be 8 bytes".into()))?,
            );
            volume.discard(frame.gen, frame.offset, len)?;
            ok(Bytes::new())
        }
        other => Err(Error::Protocol(format!("{other:?} is not a request"))),
    }
}
