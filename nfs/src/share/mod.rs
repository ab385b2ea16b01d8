//! The built-in share (`backend: share`), server half: an NFSv3 server inside Warren's
//! node that serves local volume directories to pods on other nodes.
//!
//! ```text
//! let share = ShareServer::bind("0.0.0.0:7463".parse()?, load_or_create_generation(path)?)?;
//! share.export("<32+ hex key>", Path::new("/var/lib/warren/storage/vol-1/mnt"))?;
//! // client: mount -o vers=3,proto=tcp,port=7463,mountport=7463,mountproto=tcp,nolock \
//! //         NODE:/<key> /mnt
//! share.unexport("<key>");
//! ```
//!
//! - One listener serves every volume, each as `/<key>`: the key is an unguessable secret
//!   (at least 128 bits of hex) the caller hands to the node that mounts. MOUNT of any
//!   other path (`/` included) fails.
//! - File handles survive a restart of the share: each holds the kernel's own handle of
//!   the inode (`name_to_handle_at`, reopened with `open_by_handle_at` on the export
//!   root's file system), a tag naming the volume, and a MAC under a key derived from the
//!   export key and the root's identity; the `nfs3_server` generation in front is fixed by
//!   the caller (`load_or_create_generation`).
//! - Nothing outside the exported directory is reachable: no path is ever walked (see
//!   `ops`), `..` of the root is refused, symbolic links are served as links and never
//!   followed, and handles of another volume or with edited bytes fail their MAC
//!   (NFS3ERR_BADHANDLE) — needed because `open_by_handle_at` would open any inode of the
//!   file system.
//! - Every WRITE is on disk before it is answered (`ops::Export::write` says why).
//!
//! Known limits, from `nfs3_server` 0.11.1 (no hook to change them without a fork):
//! - FSSTAT is hard-coded: clients (`df` in a pod) see 1 TiB total, free and available and
//!   1 Gi files, whatever the volume's size. `ShareServer::usage` gives the real numbers
//!   (statvfs) for the node's NodeGetVolumeStats. ENOSPC still reaches clients correctly
//!   (NFS3ERR_NOSPC from the volume's own file system).
//! - The caller's AUTH_SYS identity is not passed to the file system: every operation
//!   runs as the share's own user (root), ACCESS grants everything, new files are owned
//!   by root unless the client sets an owner. Permissions are therefore not enforced
//!   between pods sharing a volume (as with `no_root_squash` and one user).
//! - MKDIR's mode is not passed on: new directories get 0777 less the umask.
//! - Whoever reaches the port and knows a key can mount that volume: `authorize` sees no
//!   client address, so a per-node allow-list needs a firewall rule (or an upstream hook).
//! - No LINK, no MKNOD, no NLM (clients mount with `nolock`: locks are local to a node).
//! - A directory moved out of the volume by someone on the node keeps working for
//!   clients that already hold its handle (no subtree check).

mod attr;
mod export;
mod fs;
mod handle;
mod kernel;
mod key;
mod ops;
mod readdir;
mod server;
mod status;

pub use export::{check_exportable, Usage};
pub use server::{load_or_create_generation, ShareServer};
