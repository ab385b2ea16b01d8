//! The share's NFS file handle: what `nfs3_server` puts after its 8-byte generation
//! (at most 56 bytes).
//!
//! ```text
//! [0]        format (1)
//! [1..9]     volume tag (from the export key)
//! [9..13]    kernel handle type (i32, little endian)
//! [13]       kernel handle length n (at most 30)
//! [14..14+n] kernel handle bytes
//! then       12-byte HMAC over everything before it, under the export's signing key
//! ```
//!
//! Everything in it is stable across restarts (the key and directory are registered
//! again, the kernel handle is the file system's), so with a fixed generation a client's
//! handles keep working when the share restarts.

use nfs3_server::nfs3_types::nfs3::nfsstat3;
use nfs3_server::vfs::FileHandle;

use super::kernel::KernelHandle;
use super::key::{hex, SigningKey, MAC_LEN, TAG_LEN};

pub const HANDLE_MAX: usize = 56;
const FORMAT: u8 = 1;
const HEADER: usize = 1 + TAG_LEN + 4 + 1;
/// ext4 and xfs handles are 8 to 16 bytes, btrfs 20 (without the parent).
pub const KERNEL_MAX: usize = HANDLE_MAX - HEADER - MAC_LEN;

#[derive(Clone, PartialEq, Eq)]
pub struct ShareHandle {
    len: u8,
    bytes: [u8; HANDLE_MAX],
}

impl std::fmt::Debug for ShareHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShareHandle({})", hex(self.as_bytes()))
    }
}

impl ShareHandle {
    /// The root of the virtual name space (`/`, whose entries are the export keys). It is
    /// never handed to a client (MOUNT only answers for `/<key>`), and is refused
    /// everywhere: listing it would list every key.
    pub fn none() -> ShareHandle {
        ShareHandle {
            len: 1,
            bytes: [0; HANDLE_MAX],
        }
    }

    pub fn seal(
        tag: [u8; TAG_LEN],
        signing: &SigningKey,
        kernel: &KernelHandle,
    ) -> Result<ShareHandle, nfsstat3> {
        let n = kernel.bytes.len();
        if n > KERNEL_MAX {
            // A file system with handles this large (overlayfs) cannot be shared.
            tracing::warn!(len = n, "kernel file handle too large for NFSv3");
            return Err(nfsstat3::NFS3ERR_NOTSUPP);
        }
        let mut bytes = [0u8; HANDLE_MAX];
        bytes[0] = FORMAT;
        bytes[1..1 + TAG_LEN].copy_from_slice(&tag);
        bytes[9..13].copy_from_slice(&kernel.kind.to_le_bytes());
        bytes[13] = n as u8;
        bytes[HEADER..HEADER + n].copy_from_slice(&kernel.bytes);
        let mac = signing.sign(&bytes[..HEADER + n]);
        bytes[HEADER + n..HEADER + n + MAC_LEN].copy_from_slice(&mac);
        Ok(ShareHandle {
            len: (HEADER + n + MAC_LEN) as u8,
            bytes,
        })
    }

    /// Which export the handle claims to belong to (not yet verified).
    pub fn tag(&self) -> Option<[u8; TAG_LEN]> {
        if self.bytes[0] != FORMAT {
            return None;
        }
        self.bytes[1..].first_chunk::<TAG_LEN>().copied()
    }

    /// The kernel handle, if the MAC is right for this export's signing key.
    pub fn unseal(&self, signing: &SigningKey) -> Result<KernelHandle, nfsstat3> {
        if self.bytes[0] != FORMAT {
            return Err(nfsstat3::NFS3ERR_BADHANDLE);
        }
        let n = self.bytes[13] as usize;
        let body = &self.bytes[..HEADER + n];
        if !signing.verify(body, &self.bytes[HEADER + n..HEADER + n + MAC_LEN]) {
            return Err(nfsstat3::NFS3ERR_BADHANDLE);
        }
        let Some(kind) = self.bytes[1 + TAG_LEN..].first_chunk::<4>() else {
            return Err(nfsstat3::NFS3ERR_BADHANDLE);
        };
        Ok(KernelHandle {
            kind: i32::from_le_bytes(*kind),
            bytes: self.bytes[HEADER..HEADER + n].to_vec(),
        })
    }
}

impl FileHandle for ShareHandle {
    fn len(&self) -> usize {
        self.len as usize
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// Accepts only well-formed sealed handles (the MAC is checked later, against the
    /// export the tag names); anything else is NFS3ERR_BADHANDLE in the server.
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let ok = bytes.len() > HEADER
            && bytes.len() <= HANDLE_MAX
            && bytes[0] == FORMAT
            && bytes[13] as usize <= KERNEL_MAX
            && HEADER + bytes[13] as usize + MAC_LEN == bytes.len();
        if !ok {
            return None;
        }
        let mut out = [0u8; HANDLE_MAX];
        out[..bytes.len()].copy_from_slice(bytes);
        Some(ShareHandle {
            len: bytes.len() as u8,
            bytes: out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::key::ExportKey;
    use super::*;

    fn kernel() -> KernelHandle {
        KernelHandle {
            kind: 1,
            bytes: vec![1, 2, 3, 4, 5, 6, 7, 8],
        }
    }

    #[test]
    fn sealed_handles_round_trip_and_refuse_edits() {
        let key = ExportKey::parse(&"c".repeat(32)).unwrap();
        let signing = key.signing_key(b"root");
        let h = ShareHandle::seal(key.tag(), &signing, &kernel()).unwrap();
        assert_eq!(h.len(), HEADER + 8 + MAC_LEN);
        let parsed = ShareHandle::from_bytes(h.as_bytes()).unwrap();
        assert_eq!(parsed.tag(), Some(key.tag()));
        assert_eq!(parsed.unseal(&signing).unwrap(), kernel());
        // Any single flipped bit in the body or the MAC is refused.
        for i in 1..h.len() {
            if i == 13 {
                continue; // the length byte: refused by from_bytes already
            }
            let mut b = h.as_bytes().to_vec();
            b[i] ^= 1;
            let edited = ShareHandle::from_bytes(&b).unwrap();
            assert_eq!(
                edited.unseal(&signing),
                Err(nfsstat3::NFS3ERR_BADHANDLE),
                "byte {i}"
            );
        }
        let mut b = h.as_bytes().to_vec();
        b[13] = 9;
        assert!(ShareHandle::from_bytes(&b).is_none());
        assert!(ShareHandle::from_bytes(&b[..b.len() - 1]).is_none());
        assert!(ShareHandle::from_bytes(ShareHandle::none().as_bytes()).is_none());
        let too_big = KernelHandle {
            kind: 1,
            bytes: vec![0; KERNEL_MAX + 1],
        };
        assert!(ShareHandle::seal(key.tag(), &signing, &too_big).is_err());
    }
}
