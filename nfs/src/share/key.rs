//! Export keys: the secret name a volume is mounted by (`/<key>`), and the two things
//! derived from it that go into file handles — a tag that says which volume a handle
//! belongs to, and the key its handles are signed with.
//!
//! Why signed handles: `open_by_handle_at` opens *any* inode of the file system the export
//! root lives on, not only those under the root. Volumes of `layout: dir` share one file
//! system, so a client that edits the kernel-handle bytes could otherwise open a sibling
//! volume or the node's own files. Handles carry a MAC under a key only this volume's
//! registration knows; forging one means guessing 96 bits, online.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

pub const TAG_LEN: usize = 8;
pub const MAC_LEN: usize = 12;

/// Shortest and longest key accepted: at least 128 bits of hex, so it cannot be guessed.
const MIN_KEY: usize = 32;
const MAX_KEY: usize = 64;

#[derive(Clone)]
pub struct ExportKey {
    key: String,
    tag: [u8; TAG_LEN],
}

impl std::fmt::Debug for ExportKey {
    // The key is a capability: never print it, only its tag.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ExportKey(tag {})", hex(&self.tag))
    }
}

impl ExportKey {
    /// Accepts 32 to 64 lowercase hex characters.
    pub fn parse(key: &str) -> Result<ExportKey> {
        let ok = (MIN_KEY..=MAX_KEY).contains(&key.len())
            && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !ok {
            return Err(Error::InvalidArgument(format!(
                "an export key is {MIN_KEY} to {MAX_KEY} lowercase hex characters"
            )));
        }
        let digest = Sha256::new()
            .chain_update(b"warren-share tag\0")
            .chain_update(key.as_bytes())
            .finalize();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&digest[..TAG_LEN]);
        Ok(ExportKey {
            key: key.to_string(),
            tag,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.key
    }

    /// Which volume a handle names. A one-way function of the key, so handles (which
    /// clients log and show) do not give the key away.
    pub fn tag(&self) -> [u8; TAG_LEN] {
        self.tag
    }

    /// The key handles of this export are signed with, bound to the export root's own
    /// kernel handle: the same key re-registered for another directory must not make the
    /// old directory's handles valid again.
    pub fn signing_key(&self, root_identity: &[u8]) -> SigningKey {
        let mut mac = hmac(self.key.as_bytes());
        mac.update(b"warren-share handles v1\0");
        mac.update(root_identity);
        SigningKey(mac.finalize().into_bytes().into())
    }
}

#[derive(Clone)]
pub struct SigningKey([u8; 32]);

impl SigningKey {
    pub fn sign(&self, data: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = self.mac();
        mac.update(data);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// Constant-time check, so the comparison leaks nothing about the right MAC.
    pub fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.mac();
        mac.update(data);
        tag.len() == MAC_LEN && mac.verify_truncated_left(tag).is_ok()
    }

    fn mac(&self) -> Hmac<Sha256> {
        hmac(&self.0)
    }
}

#[allow(clippy::expect_used)] // HMAC takes a key of any length: this cannot fail
fn hmac(key: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length")
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_must_be_long_lowercase_hex() {
        assert!(ExportKey::parse(&"a".repeat(32)).is_ok());
        assert!(ExportKey::parse(&"0".repeat(64)).is_ok());
        for bad in [
            "a".repeat(31),
            "a".repeat(65),
            "A".repeat(32),
            "g".repeat(32),
            format!("{}/", "a".repeat(31)),
            format!("..{}", "a".repeat(30)),
        ] {
            assert!(ExportKey::parse(&bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn macs_depend_on_key_root_and_data() {
        let a = ExportKey::parse(&"a".repeat(32)).unwrap();
        let b = ExportKey::parse(&"b".repeat(32)).unwrap();
        assert_ne!(a.tag(), b.tag());
        let sa = a.signing_key(b"root1");
        let mac = sa.sign(b"data");
        assert!(sa.verify(b"data", &mac));
        assert!(!sa.verify(b"datb", &mac));
        assert!(!a.signing_key(b"root2").verify(b"data", &mac));
        assert!(!b.signing_key(b"root1").verify(b"data", &mac));
        assert!(!sa.verify(b"data", &mac[..MAC_LEN - 1]));
        assert!(!format!("{a:?}").contains(a.as_str()));
    }
}
