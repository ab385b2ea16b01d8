//! Kubelet plugin registration: the kubelet watches `<kubelet-dir>/plugins_registry/` for
//! sockets, asks each who it is (GetInfo) and reports the outcome. Serving this ourselves
//! is what node-driver-registrar does in a standard deployment; in the edge mode it saves
//! that sidecar.

use std::path::{Path, PathBuf};

use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::error::{Error, Result};
use crate::proto::registration_server::{Registration, RegistrationServer};
use crate::proto::{InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse};
use warren_core::endpoint::grpc_connections;

/// CSI versions Warren speaks, as the kubelet wants them listed.
const SUPPORTED_VERSIONS: &[&str] = &["1.0.0"];

pub struct PluginRegistration {
    driver: String,
    csi_socket: PathBuf,
    registered: watch::Sender<bool>,
}

impl PluginRegistration {
    pub fn new(driver: &str, csi_socket: &Path) -> Self {
        PluginRegistration {
            driver: driver.to_string(),
            csi_socket: csi_socket.to_path_buf(),
            registered: watch::channel(false).0,
        }
    }

    /// True once the kubelet said it registered the plugin.
    pub fn registered(&self) -> watch::Receiver<bool> {
        self.registered.subscribe()
    }
}

/// Where the kubelet looks for this driver's registration socket.
pub fn socket_path(registration_dir: &Path, driver: &str) -> PathBuf {
    registration_dir.join(format!("{driver}-reg.sock"))
}

#[tonic::async_trait]
impl Registration for PluginRegistration {
    async fn get_info(
        &self,
        _req: Request<InfoRequest>,
    ) -> std::result::Result<Response<PluginInfo>, Status> {
        Ok(Response::new(PluginInfo {
            r#type: "CSIPlugin".into(),
            name: self.driver.clone(),
            endpoint: self.csi_socket.display().to_string(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| v.to_string()).collect(),
        }))
    }

    async fn notify_registration_status(
        &self,
        req: Request<RegistrationStatus>,
    ) -> std::result::Result<Response<RegistrationStatusResponse>, Status> {
        let status = req.into_inner();
        if status.plugin_registered {
            tracing::info!(driver = %self.driver, "the kubelet registered the plugin");
        } else {
            // The kubelet retries by calling GetInfo again after we re-create the socket;
            // nothing to undo here, but say loudly why.
            tracing::error!(driver = %self.driver, error = %status.error, "the kubelet refused the plugin");
        }
        self.registered.send_replace(status.plugin_registered);
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}

/// Serves `<registration_dir>/warren.csi.dev-reg.sock` in the background until `stop`,
/// naming `csi_socket` (the path as the kubelet sees it) as Warren's CSI endpoint.
pub fn spawn(
    registration_dir: &Path,
    csi_socket: &Path,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let socket = socket_path(registration_dir, crate::DRIVER);
    let registration = PluginRegistration::new(crate::DRIVER, csi_socket);
    tokio::spawn(async move {
        if let Err(e) = serve(registration, &socket, stop).await {
            tracing::error!(error = %e, "kubelet plugin registration stopped");
        }
    })
}

/// Serves the registration socket until `stop`; removes it on the way out so the kubelet
/// unregisters the plugin.
pub async fn serve(
    registration: PluginRegistration,
    socket: &Path,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    // Shared with the CSI endpoint: a stale socket is replaced, anything else refused.
    let listener = warren_core::endpoint::bind_unix(socket)
        .map_err(|e| Error::Invalid(format!("registration socket: {e}")))?;
    tracing::info!(socket = %socket.display(), "serving kubelet plugin registration");
    let served = tonic::transport::Server::builder()
        .add_service(RegistrationServer::new(registration))
        .serve_with_incoming_shutdown(grpc_connections(listener), async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    let _ = std::fs::remove_file(socket);
    served.map_err(|e| Error::Invalid(format!("registration server: {e}")))
}
