//! Starts the real `warren` binary and talks CSI to it over its Unix socket.
#![allow(dead_code)]

pub mod crash;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use csi_proto::v1::controller_client::ControllerClient;
use csi_proto::v1::identity_client::IdentityClient;
use csi_proto::v1::node_client::NodeClient;
use csi_proto::v1::volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume};
use csi_proto::v1::*;
use tonic::transport::Channel;

pub const MIB: i64 = 1 << 20;
pub const NODE: &str = "it-node";

pub struct Warren {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    /// A command the binary runs under (`ip netns exec NS`), and flags it gets after the
    /// usual ones.
    pub launcher: Vec<String>,
    pub extra_args: Vec<String>,
}

impl Warren {
    pub fn dirs() -> tempfile::TempDir {
        let base = std::env::var_os("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        tempfile::Builder::new()
            .prefix("warren-it-")
            .tempdir_in(base)
            .unwrap()
    }

    pub fn start_in(dir: tempfile::TempDir) -> Warren {
        Self::start_with(dir, vec![], vec![])
    }

    pub fn start_with(
        dir: tempfile::TempDir,
        launcher: Vec<String>,
        extra_args: Vec<String>,
    ) -> Warren {
        let mut w = Warren {
            dir,
            child: None,
            launcher,
            extra_args,
        };
        w.spawn();
        w
    }

    pub fn start() -> Warren {
        Self::start_in(Self::dirs())
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("csi.sock")
    }
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }
    pub fn kubelet(&self) -> PathBuf {
        self.dir.path().join("kubelet")
    }

    pub fn spawn(&mut self) {
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("warren.log"))
            .unwrap();
        let binary = env!("CARGO_BIN_EXE_warren");
        let mut command = match self.launcher.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        let child = command
            .arg("all")
            .arg("--endpoint")
            .arg(format!("unix://{}", self.socket().display()))
            .args(["--node-id", NODE])
            .arg("--state-dir")
            .arg(d.join("state"))
            .arg("--storage-root")
            .arg(self.storage())
            .arg("--kubelet-dir")
            .arg(self.kubelet())
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start warren");
        self.child = Some(child);
        wait_for_socket(&self.socket());
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub async fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(connect(&self.socket()).await)
    }
    pub async fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(connect(&self.socket()).await)
    }
    pub async fn identity(&self) -> IdentityClient<Channel> {
        IdentityClient::new(connect(&self.socket()).await)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("warren.log")).unwrap_or_default()
    }
}

impl Drop for Warren {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits until the socket accepts connections (a stale file from a killed process does not).
pub fn wait_for_socket(path: &Path) {
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "warren did not create {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub async fn connect(socket: &Path) -> Channel {
    warren_core::endpoint::connect_unix(socket)
        .await
        .expect("connect to warren")
}

pub fn mount_cap() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

pub fn create_request(name: &str, bytes: i64) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount_cap()],
        ..Default::default()
    }
}

/// Volume keys present on disk under the storage root.
pub fn volumes_on_disk(storage: &Path) -> Vec<String> {
    let mut keys: Vec<String> = std::fs::read_dir(storage.join("volumes"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    keys.sort();
    keys
}

/// Everything below a directory, as relative paths (to prove nothing changed).
pub fn tree(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let p = e.path();
                out.push(p.strip_prefix(base).unwrap().to_path_buf());
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(base, &p, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
