//! A connection from an engine to one replica of one volume. Calls may be issued
//! concurrently: each gets a request id, and a reader task hands replies back by id.
//! Every call has a deadline; a connection that fails fails every pending call with
//! `Unavailable`, and stays failed (the engine reconnects).
//!
//! The replica on the engine's own node can instead be reached in process
//! (`ReplicaClient::in_process`), when this process hosts that node's replica service: the
//! same requests, sessions and fencing, minus the socket, framing and checksums, which
//! are most of a replicated write's CPU cost on a small node (see docs/design.md).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::auth::{client_handshake, Token};
use crate::error::{Error, Result};
use crate::locks::lock;
use crate::messages::{GenerationChange, GrowRequest, OpenRequest, SnapshotRequest};
use crate::protocol::{
    pump_frames, read_frame, BodyCrc, Frame, Kind, Outgoing, Status, FLAG_FUA, SOCKET_BUFFER,
};
use crate::server::{serve_in_process, OpenVolume, ReplicaService};
use crate::snapshots::SnapshotMeta;
use crate::volume::ReplicaState;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Frame>>>>;

pub struct ReplicaClient {
    /// The replica's id (its node), for messages and membership.
    pub replica: String,
    address: String,
    link: Link,
    failed: Arc<AtomicBool>,
    timeout: Duration,
}

enum Link {
    Tcp {
        requests: tokio::sync::mpsc::Sender<Outgoing>,
        pending: Pending,
        next_id: AtomicU64,
        reader: tokio::task::JoinHandle<()>,
        writer: tokio::task::JoinHandle<()>,
    },
    InProcess {
        service: Arc<ReplicaService>,
        session: u64,
        open: Mutex<Option<Arc<OpenVolume>>>,
    },
}

impl Drop for ReplicaClient {
    fn drop(&mut self) {
        if let Link::Tcp { reader, writer, .. } = &self.link {
            reader.abort();
            writer.abort();
        }
    }
}

impl ReplicaClient {
    /// Connects and authenticates within `timeout`.
    pub async fn connect(
        replica: &str,
        address: &str,
        token: &Token,
        timeout: Duration,
    ) -> Result<ReplicaClient> {
        let unavailable =
            |why: String| Error::Unavailable(format!("replica {replica} at {address}: {why}"));
        let mut stream = tokio::time::timeout(timeout, TcpStream::connect(address))
            .await
            .map_err(|_| unavailable("connect timed out".into()))?
            .map_err(|e| unavailable(e.to_string()))?;
        stream.set_nodelay(true).ok();
        tokio::time::timeout(timeout, client_handshake(&mut stream, token))
            .await
            .map_err(|_| unavailable("handshake timed out".into()))??;
        let (read_half, write_half) = stream.into_split();
        let mut read_half = tokio::io::BufReader::with_capacity(SOCKET_BUFFER, read_half);
        let (requests, outgoing) = tokio::sync::mpsc::channel(256);
        // One task owns the write side and batches concurrent requests into few syscalls.
        let writer = tokio::spawn(async move {
            let _ = pump_frames(write_half, outgoing).await;
        });
        let pending: Pending = Arc::default();
        let failed = Arc::new(AtomicBool::new(false));
        let reader = {
            let (pending, failed) = (pending.clone(), failed.clone());
            tokio::spawn(async move {
                while let Ok(Some(frame)) = read_frame(&mut read_half).await {
                    if let Some(tx) = lock(&pending).remove(&frame.request_id) {
                        let _ = tx.send(frame);
                    }
                }
                failed.store(true, Ordering::Release);
                lock(&pending).clear(); // wakes every waiter with an error
            })
        };
        Ok(ReplicaClient {
            replica: replica.to_string(),
            address: address.to_string(),
            link: Link::Tcp {
                requests,
                pending,
                next_id: AtomicU64::new(1),
                reader,
                writer,
            },
            failed,
            timeout,
        })
    }

    /// The replica `service` keeps, reached without a socket. Requests still time out
    /// after `timeout` (a hung local disk is cut out like a hung peer).
    pub fn in_process(service: Arc<ReplicaService>, timeout: Duration) -> ReplicaClient {
        let session = service.new_session();
        ReplicaClient {
            replica: service.replica().to_string(),
            address: "this process".into(),
            link: Link::InProcess {
                service,
                session,
                open: Mutex::new(None),
            },
            failed: Arc::new(AtomicBool::new(false)),
            timeout,
        }
    }

    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    fn unavailable(&self, why: &str) -> Error {
        Error::Unavailable(format!(
            "replica {} at {}: {why}",
            self.replica, self.address
        ))
    }

    async fn call(&self, frame: Frame) -> Result<Frame> {
        self.call_within(frame, self.timeout).await
    }

    /// `call` with its own deadline, for a request that takes longer than I/O may.
    async fn call_within(&self, frame: Frame, timeout: Duration) -> Result<Frame> {
        if self.is_failed() {
            return Err(self.unavailable("connection lost"));
        }
        match &self.link {
            Link::Tcp {
                requests,
                pending,
                next_id,
                ..
            } => {
                self.call_tcp(requests, pending, next_id, frame, timeout)
                    .await
            }
            Link::InProcess {
                service,
                session,
                open,
            } => {
                let exchange = async {
                    if frame.kind == Kind::Open {
                        let volume = service.open(frame.parse_json()?, *session).await?;
                        let state = volume.state();
                        *lock(open) = Some(volume);
                        return Frame::json(Kind::Reply, 0, &state);
                    }
                    let volume = lock(open).clone().ok_or_else(|| {
                        Error::InvalidArgument("no volume is open in this session".into())
                    })?;
                    serve_in_process(&volume, *session, frame).await
                };
                match tokio::time::timeout(timeout, exchange).await {
                    Ok(reply) => reply,
                    Err(_) => {
                        self.failed.store(true, Ordering::Release);
                        Err(self.unavailable("request timed out"))
                    }
                }
            }
        }
    }

    async fn call_tcp(
        &self,
        requests: &tokio::sync::mpsc::Sender<Outgoing>,
        pending: &Pending,
        next_id: &AtomicU64,
        mut frame: Frame,
        timeout: Duration,
    ) -> Result<Frame> {
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        frame.request_id = id;
        let (tx, rx) = oneshot::channel();
        lock(pending).insert(id, tx);
        let exchange = async {
            requests
                .send(frame.into())
                .await
                .map_err(|_| self.unavailable("connection lost"))?;
            rx.await.map_err(|_| self.unavailable("connection lost"))
        };
        let reply = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                lock(pending).remove(&id);
                self.failed.store(true, Ordering::Release);
                return Err(match e {
                    Error::Unavailable(_) => e,
                    other => self.unavailable(&other.to_string()),
                });
            }
            Err(_) => {
                // A replica that does not answer in time is treated as gone: the engine
                // cuts it out rather than letting the volume hang behind it.
                lock(pending).remove(&id);
                self.failed.store(true, Ordering::Release);
                return Err(self.unavailable("request timed out"));
            }
        };
        match Status::from_u16(reply.status) {
            Status::Ok => Ok(reply),
            status => Err(status.into_error(format!(
                "replica {}: {}",
                self.replica,
                String::from_utf8_lossy(&reply.body)
            ))),
        }
    }

    pub async fn open(&self, volume: &str, size: u64, create: bool) -> Result<ReplicaState> {
        let request = OpenRequest {
            volume: volume.to_string(),
            size,
            create,
        };
        self.call(Frame::json(Kind::Open, 0, &request)?)
            .await?
            .parse_json()
    }

    pub async fn state(&self) -> Result<ReplicaState> {
        self.call(Frame::request(Kind::GetState, 0, Bytes::new()))
            .await?
            .parse_json()
    }

    pub async fn commit(&self, expect: u64, gen: u64, members: &[String]) -> Result<ReplicaState> {
        let change = GenerationChange {
            expect,
            gen,
            members: members.to_vec(),
        };
        self.call(Frame::json(Kind::Commit, 0, &change)?)
            .await?
            .parse_json()
    }

    pub async fn begin_rebuild(
        &self,
        expect: u64,
        gen: u64,
        members: &[String],
    ) -> Result<ReplicaState> {
        let change = GenerationChange {
            expect,
            gen,
            members: members.to_vec(),
        };
        self.call(Frame::json(Kind::BeginRebuild, 0, &change)?)
            .await?
            .parse_json()
    }

    fn at(kind: Kind, gen: u64, offset: u64, body: Bytes) -> Frame {
        let mut frame = Frame::request(kind, 0, body);
        frame.gen = gen;
        frame.offset = offset;
        frame
    }

    pub async fn checkpoint(&self, gen: u64) -> Result<()> {
        self.call(Self::at(Kind::Checkpoint, gen, 0, Bytes::new()))
            .await
            .map(drop)
    }

    pub async fn close(&self, gen: u64) -> Result<()> {
        self.call(Self::at(Kind::Close, gen, 0, Bytes::new()))
            .await
            .map(drop)
    }

    /// The replica's region bitmap and the generation it covers writes since.
    /// Grows the open replica to `size` bytes (idempotent; a smaller size is refused).
    pub async fn grow(&self, size: u64) -> Result<ReplicaState> {
        self.call(Frame::json(Kind::Grow, 0, &GrowRequest { size })?)
            .await?
            .parse_json()
    }

    /// Copies the open replica into a snapshot (`SnapshotRequest`) at generation `gen`,
    /// waiting up to `timeout` (a copy without reflinks takes as long as its data).
    pub async fn snapshot(
        &self,
        gen: u64,
        request: &SnapshotRequest,
        timeout: Duration,
    ) -> Result<SnapshotMeta> {
        let mut frame = Frame::json(Kind::Snapshot, 0, request)?;
        frame.gen = gen;
        self.call_within(frame, timeout).await?.parse_json()
    }

    pub async fn bitmap(&self) -> Result<(u64, Bytes)> {
        let reply = self
            .call(Frame::request(Kind::GetBitmap, 0, Bytes::new()))
            .await?;
        Ok((reply.offset, reply.body))
    }

    pub async fn read(&self, gen: u64, offset: u64, len: usize) -> Result<Bytes> {
        let body = Bytes::copy_from_slice(&(len as u32).to_le_bytes());
        let reply = self.call(Self::at(Kind::Read, gen, offset, body)).await?;
        if reply.body.len() != len {
            return Err(self.unavailable("short read reply"));
        }
        Ok(reply.body)
    }

    pub async fn write(&self, gen: u64, offset: u64, data: Bytes, fua: bool) -> Result<()> {
        self.write_shared(gen, offset, data, fua, BodyCrc::default())
            .await
    }

    /// `write` of data also sent to other replicas, with its checksum shared with theirs.
    pub async fn write_shared(
        &self,
        gen: u64,
        offset: u64,
        data: Bytes,
        fua: bool,
        crc: BodyCrc,
    ) -> Result<()> {
        let mut frame = Self::at(Kind::Write, gen, offset, data);
        frame.body_crc = Some(crc);
        if fua {
            frame.flags |= FLAG_FUA;
        }
        self.call(frame).await.map(drop)
    }

    pub async fn flush(&self, gen: u64) -> Result<()> {
        self.call(Self::at(Kind::Flush, gen, 0, Bytes::new()))
            .await
            .map(drop)
    }

    pub async fn discard(&self, gen: u64, offset: u64, len: u64) -> Result<()> {
        let body = Bytes::copy_from_slice(&len.to_le_bytes());
        self.call(Self::at(Kind::Discard, gen, offset, body))
            .await
            .map(drop)
    }
}
