//! The CSI Identity service, shared by every mode.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use csi_proto::v1::identity_server::Identity;
use csi_proto::v1::plugin_capability::{self, service, volume_expansion};
use csi_proto::v1::*;
use tonic::{Request, Response, Status};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub struct IdentityService {
    has_controller: bool,
    ready: Arc<AtomicBool>,
}

impl IdentityService {
    /// `ready` turns true once startup reconciliation is done; Probe reports it.
    pub fn new(has_controller: bool, ready: Arc<AtomicBool>) -> Self {
        IdentityService {
            has_controller,
            ready,
        }
    }
}

fn service_cap(t: service::Type) -> PluginCapability {
    PluginCapability {
        r#type: Some(plugin_capability::Type::Service(
            plugin_capability::Service { r#type: t as i32 },
        )),
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _req: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: crate::DRIVER.into(),
            vendor_version: VERSION.into(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _req: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        let mut capabilities = vec![
            service_cap(service::Type::VolumeAccessibilityConstraints),
            PluginCapability {
                r#type: Some(plugin_capability::Type::VolumeExpansion(
                    plugin_capability::VolumeExpansion {
                        r#type: volume_expansion::Type::Online as i32,
                    },
                )),
            },
        ];
        if self.has_controller {
            capabilities.push(service_cap(service::Type::ControllerService));
        }
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn probe(&self, _req: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        Ok(Response::new(ProbeResponse {
            ready: Some(self.ready.load(Ordering::Acquire)),
        }))
    }
}
