//! The recursive work on a directory tree: copying one (snapshots, restores, clones) and
//! removing one, depth first, every step idempotent.

use std::future::Future;
use std::pin::Pin;

use nfs3_client::nfs3_types::nfs3::{
    createhow3, fattr3, ftype3, nfs_fh3, nfspath3, nfsstat3, post_op_fh3, sattr3, sattrguard3,
    set_gid3, set_mode3, set_mtime, set_uid3, stable_how, symlinkdata3, COMMIT3args, CREATE3args,
    Nfs3Result, READ3args, READLINK3args, REMOVE3args, RMDIR3args, SETATTR3args, SYMLINK3args,
    WRITE3args,
};
use nfs3_client::nfs3_types::xdr_codec::Opaque;

use super::session::{split_last, where_, Session};
use crate::error::{Error, Result};

/// Bytes per READ while copying (servers may answer with less).
const COPY_CHUNK: u32 = 1 << 20;

type Boxed<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

impl Session {
    /// `rm -r share/sub_dir`; already gone is fine.
    pub(super) async fn remove(&mut self, sub_dir: &str) -> Result<()> {
        match self.parent_of(sub_dir).await? {
            Some((parent, name)) => self.remove_named(&parent, name).await,
            None => Ok(()),
        }
    }

    /// Copies `share/from` to `share/to` through `.<name>.partial` beside it, renamed
    /// into place when whole; `to` already there is fine.
    pub(super) async fn copy(&mut self, from: &str, to: &str) -> Result<()> {
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
