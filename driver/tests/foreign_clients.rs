//! Any gRPC client a user or tool brings must be served on Warren's Unix sockets, not only
//! tonic and grpc-go: here Python's grpcio, which sends the socket's path as the HTTP/2
//! `:authority` (refused by h2 before `warren_core::endpoint::grpc_connections`). The
//! registration socket is served the same way and is exercised by the real kubelet in
//! the e2e suite.

mod common;

use std::process::Command;

use common::Warren;
use warren_test_support::skip;

/// The grpcio version CI installs (.ci/run); any recent one behaves the same.
const GRPCIO: &str = "1.85.4";

#[test]
fn python_grpcio_calls_the_csi_socket() {
    let probe = Command::new("python3")
        .args(["-c", "import grpc; print(grpc.__version__)"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        _ => {
            return skip(
                "WARREN_REQUIRE_GRPCIO",
                &format!("python3 with grpcio is not installed (pip install grpcio=={GRPCIO})"),
            )
        }
    }
    let warren = Warren::start();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/grpcio_client.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg(warren.socket())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "grpcio client failed: {said}{}\nwarren log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        warren.log()
    );
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"GetPluginInfo OK warren.csi.dev"),
        "{said}"
    );
    assert_eq!(lines.get(1), Some(&"Probe OK -"), "{said}");
    // Errors reach the foreign client with the CSI spec's code.
    let create = lines.get(2).copied().unwrap_or_default();
    assert!(
        create.starts_with("CreateVolume INVALID_ARGUMENT"),
        "{said}"
    );
}
