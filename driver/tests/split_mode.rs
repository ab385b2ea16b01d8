//! `warren controller` and `warren node` as separate processes, joined by the authenticated
//! node agent.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use csi_proto::v1::controller_client::ControllerClient;
use csi_proto::v1::*;
use tonic::Code;
use warren_core::ids::Layout;
use warren_core::storage::NodeStorage;

struct Procs(Vec<Child>);
impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const TOKEN: &str = "split-mode-test-token-0123456789";

fn start_node(dir: &std::path::Path, port: u16) -> Child {
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("node")
        .arg(format!(
            "--endpoint=unix://{}",
            dir.join("node.sock").display()
        ))
        .arg(format!("--node-id={NODE}"))
        .arg(format!("--state-dir={}", dir.join("node-state").display()))
        .arg(format!("--storage-root={}", dir.join("storage").display()))
        .arg(format!("--kubelet-dir={}", dir.join("kubelet").display()))
        .arg(format!("--agent-listen=127.0.0.1:{port}"))
        .arg(format!("--agent-token-file={}", token.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_socket(&dir.join("node.sock"));
    child
}

fn start_controller(dir: &std::path::Path, port: u16) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("controller")
        .arg(format!(
            "--endpoint=unix://{}",
            dir.join("ctl.sock").display()
        ))
        .arg(format!("--state-dir={}", dir.join("ctl-state").display()))
        .arg(format!("--node-agent={NODE}=http://127.0.0.1:{port}"))
        .arg(format!(
            "--agent-token-file={}",
            dir.join("token").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_socket(&dir.join("ctl.sock"));
    child
}

#[tokio::test]
async fn controller_reaches_node_through_the_agent() {
    let dir = Warren::dirs();
    let port = free_port();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let _procs = Procs(vec![
        start_node(dir.path(), port),
        start_controller(dir.path(), port),
    ]);
    let mut c = ControllerClient::new(connect(&dir.path().join("ctl.sock")).await);
    let vol = c
        .create_volume(create_request("pvc-split", 32 * MIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let keys = volumes_on_disk(&dir.path().join("storage"));
    assert_eq!(keys.len(), 1);
    assert!(vol.volume_id.ends_with(&keys[0]));
    // Errors keep their CSI code across the agent channel.
    let err = c
        .create_volume(create_request("pvc-split", 64 * MIB))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    c.delete_volume(DeleteVolumeRequest {
        volume_id: vol.volume_id,
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(volumes_on_disk(&dir.path().join("storage")).is_empty());

    // A caller without the token gets nothing from the agent.
    let intruder = warren_core::agent::RemoteNodeStorage::new(
        NODE,
        &format!("http://127.0.0.1:{port}"),
        "wrong-token-wrong-token",
    )
    .unwrap();
    let err = intruder.list_volumes().await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = intruder.capacity(Layout::Image).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn unreachable_node_is_unavailable_and_creates_nothing() {
    let dir = Warren::dirs();
    let port = free_port(); // nothing listens there
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let _procs = Procs(vec![start_controller(dir.path(), port)]);
    let mut c = ControllerClient::new(connect(&dir.path().join("ctl.sock")).await);
    let start = Instant::now();
    let err = c
        .create_volume(create_request("pvc-lost", 32 * MIB))
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::Unavailable | Code::ResourceExhausted),
        "{err:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
}
