//! One mounted export during one operation, and the single NFS calls the operations are
//! made of: lookups, MKDIR, RENAME, READDIRPLUS, attributes, and the errors they give.

use nfs3_client::nfs3_types::nfs3::{
    cookieverf3, diropargs3, fattr3, filename3, ftype3, nfs_fh3, nfsstat3, post_op_attr,
    post_op_fh3, sattr3, set_mode3, FSSTAT3args, GETATTR3args, LOOKUP3args, MKDIR3args, Nfs3Result,
    READDIRPLUS3args, RENAME3args,
};
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::{TokioConnector, TokioIo};
use nfs3_client::Nfs3ConnectionBuilder;

use super::ExportOptions;
use crate::error::{Error, Result};

type Connection = nfs3_client::Nfs3Connection<TokioIo<tokio::net::TcpStream>>;

/// A directory entry as READDIRPLUS gave it.
pub(super) struct Entry {
    pub(super) name: String,
    handle: Option<nfs_fh3>,
    attrs: Option<fattr3>,
}

/// One mounted export during one operation.
pub(super) struct Session {
    pub(super) connection: Connection,
    pub(super) root: nfs_fh3,
    pub(super) server: String,
    share: String,
}

impl Session {
    /// Portmapper (unless the ports are given), MOUNT of the share, then an NFS connection
    /// with the AUTH_SYS identity of `options`.
    pub(super) async fn connect(
        server: &str,
        share: &str,
        options: &ExportOptions,
    ) -> Result<Session> {
        let credential = opaque_auth::auth_unix(&auth_unix {
            stamp: 0,
            machinename: Opaque::borrowed(b"warren"),
            uid: options.uid,
            gid: options.gid,
            gids: vec![],
        });
        let mut builder = Nfs3ConnectionBuilder::new(TokioConnector, server, share)
            .connect_from_privileged_port(options.privileged_port)
            .credential(credential);
        if let Some(port) = options.mount_port {
            builder = builder.mount_port(port);
        }
        if let Some(port) = options.nfs_port {
            builder = builder.nfs3_port(port);
        }
        let connection = builder.mount().await.map_err(|e| Error::Unreachable {
            server: server.to_string(),
            message: format!("mounting {share}: {e}"),
        })?;
        let root = connection.root_nfs_fh3();
        Ok(Session {
            connection,
            root,
            server: server.to_string(),
            share: share.to_string(),
        })
    }

    /// Unmounting only tells the server's MOUNT service; a failure changes nothing.
    pub(super) async fn close(self) {
        let _ = self.connection.unmount().await;
    }

    pub(super) async fn exists(&mut self, sub_dir: &str) -> Result<bool> {
        match self.parent_of(sub_dir).await? {
            Some((parent, name)) => Ok(self.lookup(&parent, name).await?.is_some()),
            None => Ok(false),
        }
    }

    pub(super) async fn space(&mut self) -> Result<(u64, u64)> {
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

    pub(super) async fn make_dir(&mut self, sub_dir: &str, mode: Option<u32>) -> Result<()> {
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

    pub(super) async fn attributes(&mut self, handle: &nfs_fh3, name: &str) -> Result<fattr3> {
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

    pub(super) async fn archive(&mut self, sub_dir: &str, archived_name: &str) -> Result<()> {
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

    pub(super) fn status(&self, operation: &str, path: &str, status: nfsstat3) -> Error {
        Error::Status {
            server: self.server.clone(),
            operation: operation.to_string(),
            path: format!("{}/{path}", self.share.trim_end_matches('/')),
            status,
        }
    }

    pub(super) fn rpc(&self, operation: &str, e: impl std::fmt::Display) -> Error {
        Error::Unreachable {
            server: self.server.clone(),
            message: format!("{operation}: {e}"),
        }
    }

    /// The value of an NFS reply, or its status as an error about `name`.
    pub(super) fn reply<T, E>(
        &self,
        operation: &str,
        name: &str,
        reply: Nfs3Result<T, E>,
    ) -> Result<T> {
        match reply {
            Nfs3Result::Ok(ok) => Ok(ok),
            Nfs3Result::Err((status, _)) => Err(self.status(operation, name, status)),
        }
    }

    /// The handle of `sub_dir`'s parent and `sub_dir`'s last name; None when a parent
    /// directory is missing.
    pub(super) async fn parent_of<'p>(
        &mut self,
        sub_dir: &'p str,
    ) -> Result<Option<(nfs_fh3, &'p str)>> {
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

    pub(super) async fn lookup(&mut self, dir: &nfs_fh3, name: &str) -> Result<Option<nfs_fh3>> {
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

    pub(super) async fn mkdir(
        &mut self,
        dir: &nfs_fh3,
        name: &str,
        mode: Option<u32>,
    ) -> Result<nfs_fh3> {
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
    pub(super) async fn existing_dir(&mut self, dir: &nfs_fh3, name: &str) -> Result<nfs_fh3> {
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

    pub(super) async fn rename(&mut self, dir: &nfs_fh3, from: &str, to: &str) -> Result<()> {
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
    pub(super) async fn entries(&mut self, dir: &nfs_fh3) -> Result<Vec<Entry>> {
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
    pub(super) async fn complete(
        &mut self,
        dir: &nfs_fh3,
        entry: Entry,
    ) -> Result<Option<(nfs_fh3, fattr3)>> {
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
}

pub(super) fn where_(dir: &nfs_fh3, name: &str) -> diropargs3<'static> {
    diropargs3 {
        dir: dir.clone(),
        name: filename3(Opaque::owned(name.as_bytes().to_vec())),
    }
}

/// ("a/b", "c") for "a/b/c"; (None, "c") for "c".
pub(super) fn split_last(path: &str) -> (Option<&str>, &str) {
    match path.rsplit_once('/') {
        Some((head, last)) => (Some(head), last),
        None => (None, path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn split_last_names_the_parent() {
        assert_eq!(split_last("a/b/c"), (Some("a/b"), "c"));
        assert_eq!(split_last("c"), (None, "c"));
    }
}
