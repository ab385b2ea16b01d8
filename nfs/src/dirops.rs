//! Directory work on an NFS export from user space, for the controller: make a volume's
//! sub-directory, archive it, remove it, see whether it is there. NFSv3 (MOUNT, then NFS
//! calls with AUTH_SYS) through `nfs3_client`, which has no timeouts of its own: every
//! operation runs under `ExportOptions::deadline`, so an unreachable or silent server
//! fails cleanly instead of hanging a CSI call. Every operation is idempotent.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nfs3_client::nfs3_types::nfs3::{
    cookieverf3, createhow3, diropargs3, fattr3, filename3, ftype3, nfs_fh3, nfspath3, nfsstat3,
    post_op_attr, post_op_fh3, sattr3, sattrguard3, set_gid3, set_mode3, set_mtime, set_uid3,
    stable_how, symlinkdata3, COMMIT3args, CREATE3args, FSSTAT3args, GETATTR3args, LOOKUP3args,
    MKDIR3args, Nfs3Result, READ3args, READDIRPLUS3args, READLINK3args, REMOVE3args, RENAME3args,
    RMDIR3args, SETATTR3args, SYMLINK3args, WRITE3args,
};
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::{TokioConnector, TokioIo};
use nfs3_client::Nfs3ConnectionBuilder;

use crate::error::{Error, Result};

type Connection = nfs3_client::Nfs3Connection<TokioIo<tokio::net::TcpStream>>;

#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// For one whole operation, connecting included.
    pub deadline: Duration,
    /// For one whole `copy_dir` (snapshots, restores, clones copy through the client).
    pub copy_deadline: Duration,
    /// Connect from a port below 1024, as Linux's knfsd wants by default (`secure`
    /// exports); needs root or CAP_NET_BIND_SERVICE.
    pub privileged_port: bool,
    /// Ports of the MOUNT and NFS services; None: ask the server's portmapper.
    pub mount_port: Option<u16>,
    pub nfs_port: Option<u16>,
    /// AUTH_SYS identity of the calls.
    pub uid: u32,
    pub gid: u32,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            deadline: Duration::from_secs(30),
            copy_deadline: Duration::from_secs(300),
            privileged_port: true,
            mount_port: None,
            nfs_port: None,
            uid: 0,
            gid: 0,
        }
    }
}

/// Whether this process may bind a source port below 1024: root, CAP_NET_BIND_SERVICE, or
/// a lowered `net.ipv4.ip_unprivileged_port_start` (the chart's controller pod sets it).
pub fn may_bind_privileged_port() -> bool {
    const CAP_NET_BIND_SERVICE: u32 = 10;
    let effective_caps = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0);
    let unprivileged_start =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(1024);
    nix::unistd::geteuid().is_root()
        || effective_caps & (1 << CAP_NET_BIND_SERVICE) != 0
        || unprivileged_start < 1024
}

/// Runs `$body` with `$s` bound to a connection: an idle one when there is one (and, should
/// that one turn out dead on the wire, once more on a new one: every operation here is
/// idempotent), else a new one; then keeps the connection or closes it (`release`). A
/// macro, not a function taking a closure: the bodies borrow their arguments across
/// awaits, which a closure returning a boxed future cannot express here.
macro_rules! with_session {
    ($export:ident, |$s:ident| $body:expr) => {{
        let (mut $s, pooled) = match $export.idle_session() {
            Some(s) => (s, true),
            None => ($export.connect().await?, false),
        };
        let mut result = $body;
        if pooled && matches!(result, Err(Error::Unreachable { .. })) {
            $s = $export.connect().await?;
            result = $body;
        }
        $export.release($s, &result).await;
        result
    }};
}

/// One export of one server. Clones share the idle connections.
#[derive(Clone)]
pub struct Export {
    server: String,
    share: String,
    options: ExportOptions,
    idle: Arc<Mutex<Vec<(Instant, Session)>>>,
}

/// Connections kept for the next operations: each new one costs a portmapper lookup, a
/// MOUNT and a TCP handshake from a reserved port — and a reserved port in TIME_WAIT for a
/// minute after it closes, which a burst of a few hundred operations would run out of.
const IDLE_SESSIONS: usize = 4;
/// An idle connection older than this is closed rather than reused: servers drop idle
/// clients (Linux knfsd after about 6 minutes), and a dead one would fail the next call.
const IDLE_FOR: Duration = Duration::from_secs(30);

impl Export {
    pub fn new(server: &str, share: &str, options: ExportOptions) -> Self {
        Export {
            server: server.to_string(),
            share: share.to_string(),
            options,
            idle: Arc::default(),
        }
    }

    /// `mkdir -p share/sub_dir`; the last directory gets `mode` when given. Already there
    /// is fine; a file in the way is FailedPrecondition.
    pub async fn make_dir(&self, sub_dir: &str, mode: Option<u32>) -> Result<()> {
        self.within_deadline("mkdir", sub_dir, async {
            with_session!(self, |s| s.make_dir(sub_dir, mode).await)
        })
        .await
    }

    /// `rm -r share/sub_dir`; already gone is fine.
    pub async fn remove_dir(&self, sub_dir: &str) -> Result<()> {
        self.within_deadline("remove", sub_dir, async {
            with_session!(self, |s| s.remove(sub_dir).await)
        })
        .await
    }

    /// Renames `share/a/b` to `share/a/archived-b`; returns the new relative path. Already
    /// archived (the source gone, the archive there) is fine.
    pub async fn archive_dir(&self, sub_dir: &str) -> Result<String> {
        let (head, name) = split_last(sub_dir);
        let archived_name = format!("archived-{name}");
        self.within_deadline("archive", sub_dir, async {
            with_session!(self, |s| s.archive(sub_dir, &archived_name).await)
        })
        .await?;
        Ok(match head {
            Some(h) => format!("{h}/{archived_name}"),
            None => archived_name,
        })
    }

    /// Copies `share/from` to `share/to` (a snapshot, a restore, a clone) through the
    /// server. The copy is made as `.<name>.partial` beside `to` and renamed into place
    /// when whole, so a crash or a deadline never leaves a half copy under `to`; a retry
    /// starts the copy again. `to` already there is fine. Files keep their mode, owner
    /// and modification time, symbolic links are copied as links; devices, FIFOs and
    /// sockets are refused.
    pub async fn copy_dir(&self, from: &str, to: &str) -> Result<()> {
        let operation = format!("copy to {to} from");
        self.within(self.options.copy_deadline, &operation, from, async {
            with_session!(self, |s| s.copy(from, to).await)
        })
        .await
    }

    /// Whether `share/sub_dir` exists.
    pub async fn exists(&self, sub_dir: &str) -> Result<bool> {
        self.within_deadline("lookup", sub_dir, async {
            with_session!(self, |s| s.exists(sub_dir).await)
        })
        .await
    }

    /// The export's file system: (total bytes, bytes available to Warren's calls).
    pub async fn space(&self) -> Result<(u64, u64)> {
        self.within_deadline("fsstat", "", async {
            with_session!(self, |s| s.space().await)
        })
        .await
    }

    async fn within_deadline<T>(
        &self,
        operation: &str,
        path: &str,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        self.within(self.options.deadline, operation, path, work)
            .await
    }

    async fn within<T>(
        &self,
        deadline: Duration,
        operation: &str,
        path: &str,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(deadline, work).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                server: self.server.clone(),
                operation: format!("{operation} {}", self.join(path)),
                seconds: deadline.as_secs_f64().ceil() as u64,
            }),
        }
    }

    /// An idle connection, if a fresh enough one is there.
    fn idle_session(&self) -> Option<Session> {
        let mut idle = self.idle.lock().unwrap();
        idle.retain(|(since, _)| since.elapsed() < IDLE_FOR);
        idle.pop().map(|(_, session)| session)
    }

    /// Keeps a connection whose last operation got an answer from the server (success or
    /// an NFS status); closes one that failed on the wire, or whose root handle went
    /// stale (the export was replaced). One cut off by a deadline is dropped with its
    /// future, never reused mid-call.
    async fn release<T>(&self, session: Session, result: &Result<T>) {
        let answered = match result {
            Ok(_) => true,
            Err(Error::Status { status, .. }) => status != "NFS3ERR_STALE",
            Err(_) => false,
        };
        if answered {
            let mut idle = self.idle.lock().unwrap();
            if idle.len() < IDLE_SESSIONS {
                idle.push((Instant::now(), session));
                return;
            }
        }
        session.close().await;
    }

    async fn connect(&self) -> Result<Session> {
        let credential = opaque_auth::auth_unix(&auth_unix {
            stamp: 0,
            machinename: Opaque::borrowed(b"warren"),
            uid: self.options.uid,
            gid: self.options.gid,
            gids: vec![],
        });
        let mut builder = Nfs3ConnectionBuilder::new(TokioConnector, &self.server, &self.share)
            .connect_from_privileged_port(self.options.privileged_port)
            .credential(credential);
        if let Some(port) = self.options.mount_port {
            builder = builder.mount_port(port);
        }
        if let Some(port) = self.options.nfs_port {
            builder = builder.nfs3_port(port);
        }
        let connection = builder.mount().await.map_err(|e| Error::Unreachable {
            server: self.server.clone(),
            message: format!("mounting {}: {e}", self.share),
        })?;
        let root = connection.root_nfs_fh3();
        Ok(Session {
            connection,
            root,
            server: self.server.clone(),
            share: self.share.clone(),
        })
    }

    fn join(&self, sub_dir: &str) -> String {
        format!(
            "{}:{}/{sub_dir}",
            self.server,
            self.share.trim_end_matches('/')
        )
    }
}

/// A directory entry as READDIRPLUS gave it.
struct Entry {
    name: String,
    handle: Option<nfs_fh3>,
    attrs: Option<fattr3>,
}

/// One mounted export during one operation.
struct Session {
    connection: Connection,
    root: nfs_fh3,
    server: String,
    share: String,
}

/// Bytes per READ while copying (servers may answer with less).
const COPY_CHUNK: u32 = 1 << 20;

type Boxed<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

impl Session {
    /// Unmounting only tells the server's MOUNT service; a failure changes nothing.
    async fn close(self) {
        let _ = self.connection.unmount().await;
    }

    async fn remove(&mut self, sub_dir: &str) -> Result<()> {
        match self.parent_of(sub_dir).await? {
            Some((parent, name)) => self.remove_named(&parent, name).await,
            None => Ok(()),
        }
    }

    async fn exists(&mut self, sub_dir: &str) -> Result<bool> {
        match self.parent_of(sub_dir).await? {
            Some((parent, name)) => Ok(self.lookup(&parent, name).await?.is_some()),
            None => Ok(false),
        }
    }

    async fn space(&mut self) -> Result<(u64, u64)> {
        let args = FSSTAT3args {
            fsroot: self.root.clone(),
        };
        let reply = self
            .connection
            .fsstat(&args)
            .await
            .map_err(|e| self.rpc("fsstat", e))?;
        let ok = self.reply("fsstat", "", reply)?;
        Ok((ok.tbytes, ok.abytes))
    }

    async fn make_dir(&mut self, sub_dir: &str, mode: Option<u32>) -> Result<()> {
        let parts: Vec<&str> = sub_dir.split('/').collect();
        let mut dir = self.root.clone();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            dir = self
                .mkdir(&dir, part, if last { mode } else { None })
                .await?;
        }
        Ok(())
    }

    async fn copy(&mut self, from: &str, to: &str) -> Result<()> {
        let Some((src_parent, src_name)) = self.parent_of(from).await? else {
            return Err(self.status("copy", from, nfsstat3::NFS3ERR_NOENT));
        };
        let source = self
            .lookup(&src_parent, src_name)
            .await?
            .ok_or_else(|| self.status("copy", from, nfsstat3::NFS3ERR_NOENT))?;
        let (head, name) = split_last(to);
        if let Some(head) = head {
            self.make_dir(head, None).await?;
        }
        let parent = self
            .parent_of(to)
            .await?
            .ok_or_else(|| self.status("copy", to, nfsstat3::NFS3ERR_NOENT))?
            .0;
        if self.lookup(&parent, name).await?.is_some() {
            return Ok(());
        }
        let partial = format!(".{name}.partial");
        self.remove_named(&parent, &partial).await?;
        let attrs = self.attributes(&source, from).await?;
        self.copy_tree(&source, &attrs, &parent, &partial).await?;
        self.rename(&parent, &partial, name).await
    }

    async fn attributes(&mut self, handle: &nfs_fh3, name: &str) -> Result<fattr3> {
        let args = GETATTR3args {
            object: handle.clone(),
        };
        let reply = self
            .connection
            .getattr(&args)
            .await
            .map_err(|e| self.rpc("getattr", e))?;
        Ok(self.reply("getattr", name, reply)?.obj_attributes)
    }

    /// Copies the directory `source` (attributes `attrs`) to `parent/name`.
    fn copy_tree<'a>(
        &'a mut self,
        source: &'a nfs_fh3,
        attrs: &'a fattr3,
        parent: &'a nfs_fh3,
        name: &'a str,
    ) -> Boxed<'a, ()> {
        Box::pin(async move {
            let target = self.mkdir(parent, name, Some(attrs.mode)).await?;
            for entry in self.entries(source).await? {
                let child = entry.name.clone();
                let (handle, child_attrs) = self
                    .complete(source, entry)
                    .await?
                    .ok_or_else(|| self.status("copy", &child, nfsstat3::NFS3ERR_NOENT))?;
                match child_attrs.type_ {
                    ftype3::NF3DIR => {
                        self.copy_tree(&handle, &child_attrs, &target, &child)
                            .await?
                    }
                    ftype3::NF3REG => {
                        self.copy_file(&handle, &child_attrs, &target, &child)
                            .await?
                    }
                    ftype3::NF3LNK => {
                        self.copy_link(&handle, &child_attrs, &target, &child)
                            .await?
                    }
                    other => {
                        return Err(Error::Unsupported {
                            server: self.server.clone(),
                            message: format!("{child}: a {other:?} cannot be copied"),
                        })
                    }
                }
            }
            // Last, so copying the entries does not change it again.
            self.keep_attributes(&target, attrs, name).await
        })
    }

    async fn copy_file(
        &mut self,
        source: &nfs_fh3,
        attrs: &fattr3,
        dir: &nfs_fh3,
        name: &str,
    ) -> Result<()> {
        let args = CREATE3args {
            where_: where_(dir, name),
            how: createhow3::GUARDED(sattr3 {
                mode: set_mode3::Some(attrs.mode),
                ..Default::default()
            }),
        };
        let created = self
            .connection
            .create(&args)
            .await
            .map_err(|e| self.rpc("create", e))?;
        let target = match created {
            Nfs3Result::Ok(ok) => match ok.obj {
                post_op_fh3::Some(handle) => handle,
                post_op_fh3::None => self
                    .lookup(dir, name)
                    .await?
                    .ok_or_else(|| self.status("create", name, nfsstat3::NFS3ERR_NOENT))?,
            },
            Nfs3Result::Err((status, _)) => return Err(self.status("create", name, status)),
        };
        let mut offset = 0u64;
        loop {
            let args = READ3args {
                file: source.clone(),
                offset,
                count: COPY_CHUNK,
            };
            let reply = self
                .connection
                .read(&args)
                .await
                .map_err(|e| self.rpc("read", e))?;
            let read = self.reply("read", name, reply)?;
            let data: &[u8] = read.data.as_ref();
            let mut written = 0usize;
            while written < data.len() {
                let args = WRITE3args {
                    file: target.clone(),
                    offset: offset + written as u64,
                    count: (data.len() - written) as u32,
                    stable: stable_how::UNSTABLE,
                    data: Opaque::borrowed(&data[written..]),
                };
                match self
                    .connection
                    .write(&args)
                    .await
                    .map_err(|e| self.rpc("write", e))?
                {
                    Nfs3Result::Ok(ok) if ok.count > 0 => written += ok.count as usize,
                    Nfs3Result::Ok(_) => {
                        return Err(self.status("write", name, nfsstat3::NFS3ERR_IO))
                    }
                    Nfs3Result::Err((status, _)) => return Err(self.status("write", name, status)),
                }
            }
            offset += data.len() as u64;
            if read.eof || data.is_empty() {
                break;
            }
        }
        // One COMMIT makes the whole file durable on the server before the copy counts.
        let args = COMMIT3args {
            file: target.clone(),
            offset: 0,
            count: 0,
        };
        let reply = self
            .connection
            .commit(&args)
            .await
            .map_err(|e| self.rpc("commit", e))?;
        self.reply("commit", name, reply)?;
        self.keep_attributes(&target, attrs, name).await
    }

    async fn copy_link(
        &mut self,
        source: &nfs_fh3,
        attrs: &fattr3,
        dir: &nfs_fh3,
        name: &str,
    ) -> Result<()> {
        let args = READLINK3args {
            symlink: source.clone(),
        };
        let reply = self
            .connection
            .readlink(&args)
            .await
            .map_err(|e| self.rpc("readlink", e))?;
        let link = self
            .reply("readlink", name, reply)?
            .data
            .0
            .as_ref()
            .to_vec();
        let args = SYMLINK3args {
            where_: where_(dir, name),
            symlink: symlinkdata3 {
                symlink_attributes: sattr3 {
                    mode: set_mode3::Some(attrs.mode),
                    ..Default::default()
                },
                symlink_data: nfspath3(Opaque::owned(link)),
            },
        };
        let reply = self
            .connection
            .symlink(&args)
            .await
            .map_err(|e| self.rpc("symlink", e))?;
        self.reply("symlink", name, reply).map(drop)
    }

    /// Mode, owner and modification time of the original.
    async fn keep_attributes(
        &mut self,
        handle: &nfs_fh3,
        attrs: &fattr3,
        name: &str,
    ) -> Result<()> {
        let args = SETATTR3args {
            object: handle.clone(),
            new_attributes: sattr3 {
                mode: set_mode3::Some(attrs.mode),
                uid: set_uid3::Some(attrs.uid),
                gid: set_gid3::Some(attrs.gid),
                mtime: set_mtime::SET_TO_CLIENT_TIME(attrs.mtime),
                ..Default::default()
            },
            guard: sattrguard3::None,
        };
        let reply = self
            .connection
            .setattr(&args)
            .await
            .map_err(|e| self.rpc("setattr", e))?;
        self.reply("setattr", name, reply).map(drop)
    }

    async fn archive(&mut self, sub_dir: &str, archived_name: &str) -> Result<()> {
        let Some((parent, name)) = self.parent_of(sub_dir).await? else {
            return Err(self.status("archive", sub_dir, nfsstat3::NFS3ERR_NOENT));
        };
        if self.lookup(&parent, name).await?.is_some() {
            return self.rename(&parent, name, archived_name).await;
        }
        match self.lookup(&parent, archived_name).await? {
            Some(_) => Ok(()),
            None => Err(self.status("archive", sub_dir, nfsstat3::NFS3ERR_NOENT)),
        }
    }

    fn status(&self, operation: &str, path: &str, status: nfsstat3) -> Error {
        Error::Status {
            server: self.server.clone(),
            operation: operation.to_string(),
            path: format!("{}/{path}", self.share.trim_end_matches('/')),
            status: format!("{status:?}"),
        }
    }

    fn rpc(&self, operation: &str, e: impl std::fmt::Display) -> Error {
        Error::Unreachable {
            server: self.server.clone(),
            message: format!("{operation}: {e}"),
        }
    }

    /// The value of an NFS reply, or its status as an error about `name`.
    fn reply<T, E>(&self, operation: &str, name: &str, reply: Nfs3Result<T, E>) -> Result<T> {
        match reply {
            Nfs3Result::Ok(ok) => Ok(ok),
            Nfs3Result::Err((status, _)) => Err(self.status(operation, name, status)),
        }
    }

    /// The handle of `sub_dir`'s parent and `sub_dir`'s last name; None when a parent
    /// directory is missing.
    async fn parent_of<'p>(&mut self, sub_dir: &'p str) -> Result<Option<(nfs_fh3, &'p str)>> {
        let (head, name) = split_last(sub_dir);
        let mut dir = self.root.clone();
        if let Some(head) = head {
            for part in head.split('/') {
                match self.lookup(&dir, part).await? {
                    Some(next) => dir = next,
                    None => return Ok(None),
                }
            }
        }
        Ok(Some((dir, name)))
    }

    async fn lookup(&mut self, dir: &nfs_fh3, name: &str) -> Result<Option<nfs_fh3>> {
        let args = LOOKUP3args {
            what: where_(dir, name),
        };
        match self
            .connection
            .lookup(&args)
            .await
            .map_err(|e| self.rpc("lookup", e))?
        {
            Nfs3Result::Ok(ok) => Ok(Some(ok.object)),
            Nfs3Result::Err((nfsstat3::NFS3ERR_NOENT, _)) => Ok(None),
            Nfs3Result::Err((status, _)) => Err(self.status("lookup", name, status)),
        }
    }

    async fn mkdir(&mut self, dir: &nfs_fh3, name: &str, mode: Option<u32>) -> Result<nfs_fh3> {
        let args = MKDIR3args {
            where_: where_(dir, name),
            attributes: sattr3 {
                mode: mode.map_or(set_mode3::None, set_mode3::Some),
                ..Default::default()
            },
        };
        match self
            .connection
            .mkdir(&args)
            .await
            .map_err(|e| self.rpc("mkdir", e))?
        {
            Nfs3Result::Ok(ok) => match ok.obj {
                post_op_fh3::Some(handle) => Ok(handle),
                post_op_fh3::None => self.existing_dir(dir, name).await,
            },
            Nfs3Result::Err((nfsstat3::NFS3ERR_EXIST, _)) => self.existing_dir(dir, name).await,
            Nfs3Result::Err((status, _)) => Err(self.status("mkdir", name, status)),
        }
    }

    /// The handle of an existing entry that must be a directory.
    async fn existing_dir(&mut self, dir: &nfs_fh3, name: &str) -> Result<nfs_fh3> {
        let handle = self
            .lookup(dir, name)
            .await?
            .ok_or_else(|| self.status("mkdir", name, nfsstat3::NFS3ERR_NOENT))?;
        let attrs = self
            .connection
            .getattr(&GETATTR3args {
                object: handle.clone(),
            })
            .await
            .map_err(|e| self.rpc("getattr", e))?;
        match attrs {
            Nfs3Result::Ok(ok) if ok.obj_attributes.type_ == ftype3::NF3DIR => Ok(handle),
            Nfs3Result::Ok(_) => Err(self.status("mkdir", name, nfsstat3::NFS3ERR_NOTDIR)),
            Nfs3Result::Err((status, _)) => Err(self.status("getattr", name, status)),
        }
    }

    async fn rename(&mut self, dir: &nfs_fh3, from: &str, to: &str) -> Result<()> {
        let args = RENAME3args {
            from: where_(dir, from),
            to: where_(dir, to),
        };
        let reply = self
            .connection
            .rename(&args)
            .await
            .map_err(|e| self.rpc("rename", e))?;
        self.reply("rename", from, reply).map(drop)
    }

    /// Every entry of `dir` but `.` and `..`, with the handle and attributes READDIRPLUS
    /// gave (a server may leave either out).
    async fn entries(&mut self, dir: &nfs_fh3) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        let mut cookie = 0u64;
        let mut verifier = cookieverf3::default();
        loop {
            let args = READDIRPLUS3args {
                dir: dir.clone(),
                cookie,
                cookieverf: verifier,
                dircount: 8192,
                maxcount: 65536,
            };
            let reply = self
                .connection
                .readdirplus(&args)
                .await
                .map_err(|e| self.rpc("readdirplus", e))?;
            let reply = self.reply("readdir", "", reply)?;
            let entries = reply.reply.entries.into_inner();
            let next = entries.last().map(|last| last.cookie);
            for entry in entries {
                let name = String::from_utf8_lossy(&entry.name.0).into_owned();
                if name == "." || name == ".." {
                    continue;
                }
                out.push(Entry {
                    name,
                    handle: match entry.name_handle {
                        post_op_fh3::Some(handle) => Some(handle),
                        post_op_fh3::None => None,
                    },
                    attrs: match entry.name_attributes {
                        post_op_attr::Some(attrs) => Some(attrs),
                        post_op_attr::None => None,
                    },
                });
            }
            match next {
                Some(last) if !reply.reply.eof => cookie = last,
                _ => return Ok(out),
            }
            verifier = reply.cookieverf;
        }
    }

    /// The handle and attributes of an entry of `dir`: those READDIRPLUS gave, else asked
    /// for. None if the entry is gone meanwhile.
    async fn complete(&mut self, dir: &nfs_fh3, entry: Entry) -> Result<Option<(nfs_fh3, fattr3)>> {
        let handle = match entry.handle {
            Some(handle) => handle,
            None => match self.lookup(dir, &entry.name).await? {
                Some(handle) => handle,
                None => return Ok(None),
            },
        };
        let attrs = match entry.attrs {
            Some(attrs) => attrs,
            None => self.attributes(&handle, &entry.name).await?,
        };
        Ok(Some((handle, attrs)))
    }

    /// `rm -r parent/name`; not there is fine.
    async fn remove_named(&mut self, parent: &nfs_fh3, name: &str) -> Result<()> {
        match self.lookup(parent, name).await? {
            Some(dir) => self.remove_tree(parent, name, &dir).await,
            None => Ok(()),
        }
    }

    /// Depth first: the entries of `dir` (the handle of `parent/name`), then `dir`.
    fn remove_tree<'a>(
        &'a mut self,
        parent: &'a nfs_fh3,
        name: &'a str,
        dir: &'a nfs_fh3,
    ) -> Boxed<'a, ()> {
        Box::pin(async move {
            for entry in self.entries(dir).await? {
                let child = entry.name.clone();
                let Some((handle, attrs)) = self.complete(dir, entry).await? else {
                    continue;
                };
                if attrs.type_ == ftype3::NF3DIR {
                    self.remove_tree(dir, &child, &handle).await?;
                    continue;
                }
                let args = REMOVE3args {
                    object: where_(dir, &child),
                };
                match self
                    .connection
                    .remove(&args)
                    .await
                    .map_err(|e| self.rpc("remove", e))?
                {
                    Nfs3Result::Ok(_) | Nfs3Result::Err((nfsstat3::NFS3ERR_NOENT, _)) => {}
                    Nfs3Result::Err((status, _)) => {
                        return Err(self.status("remove", &child, status))
                    }
                }
            }
            let args = RMDIR3args {
                object: where_(parent, name),
            };
            match self
                .connection
                .rmdir(&args)
                .await
                .map_err(|e| self.rpc("rmdir", e))?
            {
                Nfs3Result::Ok(_) | Nfs3Result::Err((nfsstat3::NFS3ERR_NOENT, _)) => Ok(()),
                Nfs3Result::Err((status, _)) => Err(self.status("rmdir", name, status)),
            }
        })
    }
}

fn where_(dir: &nfs_fh3, name: &str) -> diropargs3<'static> {
    diropargs3 {
        dir: dir.clone(),
        name: filename3(Opaque::owned(name.as_bytes().to_vec())),
    }
}

/// ("a/b", "c") for "a/b/c"; (None, "c") for "c".
fn split_last(path: &str) -> (Option<&str>, &str) {
    match path.rsplit_once('/') {
        Some((head, last)) => (Some(head), last),
        None => (None, path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_last_names_the_parent() {
        assert_eq!(split_last("a/b/c"), (Some("a/b"), "c"));
        assert_eq!(split_last("c"), (None, "c"));
    }

    #[tokio::test]
    async fn a_silent_server_times_out_and_a_closed_port_is_unreachable() {
        // A listener that accepts and never answers: the deadline ends the operation.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let options = ExportOptions {
            deadline: Duration::from_millis(300),
            privileged_port: false,
            mount_port: Some(port),
            nfs_port: Some(port),
            ..Default::default()
        };
        let silent = Export::new("127.0.0.1", "/x", options.clone());
        let err = silent.make_dir("pvc-1", None).await.unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);

        // A port nobody listens on: refused at once.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_port = free.local_addr().unwrap().port();
        drop(free);
        let closed = Export::new(
            "127.0.0.1",
            "/x",
            ExportOptions {
                mount_port: Some(closed_port),
                nfs_port: Some(closed_port),
                deadline: Duration::from_secs(5),
                ..options
            },
        );
        let err = closed.exists("pvc-1").await.unwrap_err();
        assert!(matches!(err, Error::Unreachable { .. }), "{err}");
        assert_eq!(err.code(), tonic::Code::Unavailable);
    }
}
