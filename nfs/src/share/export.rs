//! One exported volume (its key, its root directory held open, its signing key) and the
//! table of all of them that the NFS side looks handles up in.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use nfs3_server::nfs3_types::nfs3::nfsstat3;
use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, Mode};

use super::handle::ShareHandle;
use super::kernel::{self, KernelHandle};
use super::key::{ExportKey, SigningKey, TAG_LEN};
use super::status::from_errno;
use crate::{Error, Result};

pub struct Export {
    pub key: ExportKey,
    pub dir: PathBuf,
    /// The root, held open: every handle is opened relative to its file system, and
    /// every name is looked up relative to a directory opened from a handle — never by a
    /// path string that a symbolic link or a rename could redirect.
    pub root: OwnedFd,
    pub root_dev: u64,
    pub root_ino: u64,
    /// The root's mount: a name on another mount (a bind mount inside the volume, even of
    /// a directory of the same file system) is not part of the share.
    root_mount: i32,
    pub root_handle: ShareHandle,
    pub fsid: u64,
    signing: SigningKey,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Export({:?} at {})", self.key, self.dir.display())
    }
}

impl Export {
    pub fn open(key: ExportKey, dir: &Path) -> Result<Export> {
        let fail = |what: &str, e: nix::errno::Errno| Error::Unsupported {
            server: "share".into(),
            message: format!("cannot export {}: {what}: {e}", dir.display()),
        };
        // Not O_PATH: open_by_handle_at refuses an O_PATH descriptor as its mount (EBADF).
        let root = nix::fcntl::open(
            dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| fail("open", e))?;
        let st = nix::sys::stat::fstat(&root).map_err(|e| fail("stat", e))?;
        let (kernel, root_mount) = kernel::handle_at(root.as_fd(), c"").map_err(|e| {
            fail(
                "the file system gives no file handles (name_to_handle_at)",
                e,
            )
        })?;
        // Opening by handle needs CAP_DAC_READ_SEARCH: find out now, not on the first call.
        kernel::open_handle(root.as_fd(), &kernel, OFlag::O_PATH)
            .map_err(|e| fail("open_by_handle_at (needs CAP_DAC_READ_SEARCH)", e))?;
        let mut identity = kernel.kind.to_le_bytes().to_vec();
        identity.extend_from_slice(&kernel.bytes);
        let signing = key.signing_key(&identity);
        let tag = key.tag();
        let root_handle =
            ShareHandle::seal(tag, &signing, &kernel).map_err(|_| Error::Unsupported {
                server: "share".into(),
                message: format!(
                    "cannot export {}: its file handles are too large for NFSv3",
                    dir.display()
                ),
            })?;
        Ok(Export {
            fsid: u64::from_le_bytes(tag),
            key,
            dir: dir.to_path_buf(),
            root,
            root_dev: st.st_dev,
            root_ino: st.st_ino,
            root_mount,
            root_handle,
            signing,
        })
    }

    /// Opens the inode a handle names, if the handle was made by this export.
    pub fn open_handle(&self, handle: &ShareHandle, flags: OFlag) -> Result<OwnedFd, nfsstat3> {
        let kernel = handle.unseal(&self.signing)?;
        kernel::open_handle(self.root.as_fd(), &kernel, flags).map_err(from_errno)
    }

    /// The handle of `name` in `dir` (not followed if it is a symbolic link), refused if it
    /// is on another mount: a mount inside the volume is not part of the share, and its
    /// kernel handle would open outside the volume.
    pub fn handle_of(
        &self,
        dir: BorrowedFd<'_>,
        name: &CString,
        st: &FileStat,
    ) -> Result<ShareHandle, nfsstat3> {
        if st.st_dev != self.root_dev {
            return Err(nfsstat3::NFS3ERR_ACCES);
        }
        let (kernel, mount): (KernelHandle, i32) =
            kernel::handle_at(dir, name).map_err(from_errno)?;
        if mount != self.root_mount {
            return Err(nfsstat3::NFS3ERR_ACCES);
        }
        ShareHandle::seal(self.key.tag(), &self.signing, &kernel)
    }

    pub fn is_root(&self, st: &FileStat) -> bool {
        st.st_dev == self.root_dev && st.st_ino == self.root_ino
    }

    pub fn usage(&self) -> Result<Usage> {
        let s = nix::sys::statvfs::fstatvfs(&self.root).map_err(|e| Error::Unsupported {
            server: "share".into(),
            message: format!("statvfs {}: {e}", self.dir.display()),
        })?;
        let unit = s.fragment_size();
        Ok(Usage {
            total_bytes: s.blocks() * unit,
            free_bytes: s.blocks_free() * unit,
            available_bytes: s.blocks_available() * unit,
            total_inodes: s.files(),
            free_inodes: s.files_free(),
        })
    }
}

/// What `statvfs` says about an exported volume's file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub available_bytes: u64,
    pub total_inodes: u64,
    pub free_inodes: u64,
}

/// A single file name from a client: one component, never `.`, `..`, empty, or with `/`
/// or NUL in it. Callers that give `.`/`..` a meaning (LOOKUP) check for them first.
pub fn component(name: &[u8]) -> Result<CString, nfsstat3> {
    if name.len() > 255 {
        return Err(nfsstat3::NFS3ERR_NAMETOOLONG);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(nfsstat3::NFS3ERR_ACCES);
    }
    CString::new(name).map_err(|_| nfsstat3::NFS3ERR_INVAL)
}

/// Every export, by tag. Reads (every NFS call) vastly outnumber writes (export and
/// unexport), hence an RwLock.
#[derive(Default)]
pub struct Exports {
    by_tag: RwLock<HashMap<[u8; TAG_LEN], Arc<Export>>>,
}

impl Exports {
    pub fn insert(&self, export: Export) -> Result<()> {
        let mut map = self.by_tag.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = map.get(&export.key.tag()) {
            if existing.key.as_str() != export.key.as_str() {
                // Two keys with one 64-bit tag: astronomically unlikely, but never mix
                // up two volumes.
                return Err(Error::InvalidArgument("export key tag collision".into()));
            }
            if existing.root_dev != export.root_dev || existing.root_ino != export.root_ino {
                return Err(Error::InvalidArgument(format!(
                    "export key already serves {}",
                    existing.dir.display()
                )));
            }
            return Ok(()); // the same volume again: idempotent
        }
        map.insert(export.key.tag(), Arc::new(export));
        Ok(())
    }

    pub fn remove(&self, key: &ExportKey) -> bool {
        self.by_tag
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key.tag())
            .is_some()
    }

    /// The export a handle claims; STALE when there is none (it was unexported).
    pub fn of(&self, handle: &ShareHandle) -> Result<Arc<Export>, nfsstat3> {
        let tag = handle.tag().ok_or(nfsstat3::NFS3ERR_BADHANDLE)?;
        self.by_tag
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&tag)
            .cloned()
            .ok_or(nfsstat3::NFS3ERR_STALE)
    }

    pub fn by_key(&self, key: &str) -> Option<Arc<Export>> {
        let key = ExportKey::parse(key).ok()?;
        let found = self
            .by_tag
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key.tag())
            .cloned()?;
        (found.key.as_str() == key.as_str()).then_some(found)
    }

    pub fn usage(&self, key: &str) -> Result<Usage> {
        self.by_key(key)
            .ok_or_else(|| Error::InvalidArgument("no such export".into()))?
            .usage()
    }
}

/// Can `dir` be exported: is it on a file system that gives handles, and may this process
/// open them (CAP_DAC_READ_SEARCH)? For a node's startup check and the tests.
pub fn check_exportable(dir: &Path) -> Result<()> {
    let key = ExportKey::parse(&"0".repeat(32))?;
    Export::open(key, dir).map(drop)
}
