//! `nfs3_server`'s file-system traits over the exports table: find the export a handle
//! belongs to, then run the operation (`ops`) on a blocking thread — fsync and friends
//! must not stall the runtime that serves every other client.

use std::sync::Arc;

use nfs3_server::nfs3_types::nfs3::{
    createverf3, fattr3, filename3, nfspath3, nfsstat3, nfstime3, post_op_attr, sattr3, stable_how,
    FSINFO3resok, FSF3_CANSETTIME, FSF3_HOMOGENEOUS, FSF3_SYMLINK,
};
use nfs3_server::vfs::{NfsFileSystem, NfsReadFileSystem, ReadDirPlusIterator};

use super::export::{Export, Exports};
use super::handle::ShareHandle;
use super::ops::MAX_IO;
use super::readdir::DirIter;

type R<T> = Result<T, nfsstat3>;

pub struct ShareFs {
    exports: Arc<Exports>,
}

impl ShareFs {
    pub fn new(exports: Arc<Exports>) -> ShareFs {
        ShareFs { exports }
    }

    fn export(&self, h: &ShareHandle) -> R<Arc<Export>> {
        self.exports.of(h)
    }

    /// Runs `op` on the export `h` belongs to, on a blocking thread.
    async fn on<T: Send + 'static>(
        &self,
        h: &ShareHandle,
        op: impl FnOnce(&Export, &ShareHandle) -> R<T> + Send + 'static,
    ) -> R<T> {
        let export = self.export(h)?;
        let h = h.clone();
        blocking(move || op(&export, &h)).await
    }
}

pub async fn blocking<T: Send + 'static>(op: impl FnOnce() -> R<T> + Send + 'static) -> R<T> {
    tokio::task::spawn_blocking(op)
        .await
        .unwrap_or(Err(nfsstat3::NFS3ERR_SERVERFAULT))
}

impl NfsReadFileSystem for ShareFs {
    type Handle = ShareHandle;

    fn root_dir(&self) -> ShareHandle {
        ShareHandle::none()
    }

    /// MOUNT `/<key>`: the key must be registered, and nothing but a key is accepted (not
    /// `/`, which would list every key, nor a path below a key).
    async fn lookup_by_path(&self, path: &str) -> R<ShareHandle> {
        match self.exports.by_key(path) {
            Some(export) => Ok(export.root_handle.clone()),
            None => {
                tracing::warn!("MOUNT of an unknown export refused");
                Err(nfsstat3::NFS3ERR_NOENT)
            }
        }
    }

    async fn lookup(&self, dir: &ShareHandle, name: &filename3<'_>) -> R<ShareHandle> {
        let name = name.as_ref().to_vec();
        self.on(dir, move |e, h| e.lookup(h, &name)).await
    }

    async fn getattr(&self, id: &ShareHandle) -> R<fattr3> {
        self.on(id, |e, h| e.getattr(h)).await
    }

    async fn read(&self, id: &ShareHandle, offset: u64, count: u32) -> R<(Vec<u8>, bool)> {
        self.on(id, move |e, h| e.read(h, offset, count)).await
    }

    async fn readdirplus(
        &self,
        dir: &ShareHandle,
        cookie: u64,
    ) -> R<impl ReadDirPlusIterator<ShareHandle>> {
        let export = self.export(dir)?;
        DirIter::new(export, dir.clone(), cookie).prime().await
    }

    async fn readlink(&self, id: &ShareHandle) -> R<nfspath3<'_>> {
        let target = self.on(id, |e, h| e.readlink(h)).await?;
        Ok(nfspath3::from(target))
    }

    /// The defaults would cap files at 128 GiB (the Linux client takes `maxfilesize` as
    /// its limit) and claim hard links, which `nfs3_server` does not serve.
    async fn fsinfo(&self, root: &ShareHandle) -> R<FSINFO3resok> {
        let attrs = self.getattr(root).await?;
        Ok(FSINFO3resok {
            obj_attributes: post_op_attr::Some(attrs),
            rtmax: MAX_IO,
            rtpref: MAX_IO,
            rtmult: 4096,
            wtmax: MAX_IO,
            wtpref: MAX_IO,
            wtmult: 4096,
            dtpref: 64 * 1024,
            maxfilesize: i64::MAX as u64,
            time_delta: nfstime3 {
                seconds: 0,
                nseconds: 1,
            },
            properties: FSF3_SYMLINK | FSF3_HOMOGENEOUS | FSF3_CANSETTIME,
        })
    }
}

impl NfsFileSystem for ShareFs {
    async fn setattr(&self, id: &ShareHandle, attrs: sattr3) -> R<fattr3> {
        self.on(id, move |e, h| e.setattr(h, &attrs)).await
    }

    async fn write(
        &self,
        id: &ShareHandle,
        offset: u64,
        data: &[u8],
        stable: stable_how,
    ) -> R<(fattr3, stable_how)> {
        let data = data.to_vec();
        self.on(id, move |e, h| e.write(h, offset, &data, stable))
            .await
    }

    async fn create(
        &self,
        dir: &ShareHandle,
        name: &filename3<'_>,
        attrs: sattr3,
    ) -> R<(ShareHandle, fattr3)> {
        let name = name.as_ref().to_vec();
        self.on(dir, move |e, h| e.create(h, &name, &attrs)).await
    }

    async fn create_exclusive(
        &self,
        dir: &ShareHandle,
        name: &filename3<'_>,
        verf: createverf3,
    ) -> R<ShareHandle> {
        let name = name.as_ref().to_vec();
        self.on(dir, move |e, h| e.create_exclusive(h, &name, verf))
            .await
    }

    async fn mkdir(&self, dir: &ShareHandle, name: &filename3<'_>) -> R<(ShareHandle, fattr3)> {
        let name = name.as_ref().to_vec();
        self.on(dir, move |e, h| e.mkdir(h, &name)).await
    }

    async fn remove(&self, dir: &ShareHandle, name: &filename3<'_>) -> R<()> {
        let name = name.as_ref().to_vec();
        self.on(dir, move |e, h| e.remove(h, &name)).await
    }

    async fn rename<'a>(
        &self,
        from_dir: &ShareHandle,
        from: &filename3<'a>,
        to_dir: &ShareHandle,
        to: &filename3<'a>,
    ) -> R<()> {
        // Both directories must be of one export: a handle of another volume is never
        // used relative to this one.
        if from_dir.tag() != to_dir.tag() {
            return Err(nfsstat3::NFS3ERR_XDEV);
        }
        let (from, to, to_dir) = (from.as_ref().to_vec(), to.as_ref().to_vec(), to_dir.clone());
        self.on(from_dir, move |e, h| e.rename(h, &from, &to_dir, &to))
            .await
    }

    async fn symlink<'a>(
        &self,
        dir: &ShareHandle,
        name: &filename3<'a>,
        target: &nfspath3<'a>,
        attrs: &sattr3,
    ) -> R<(ShareHandle, fattr3)> {
        let (name, target, attrs) = (
            name.as_ref().to_vec(),
            target.as_ref().to_vec(),
            attrs.clone(),
        );
        self.on(dir, move |e, h| e.symlink(h, &name, &target, &attrs))
            .await
    }

    async fn commit(&self, id: &ShareHandle, _offset: u64, _count: u32) -> R<()> {
        self.on(id, |e, h| e.commit(h)).await
    }
}
