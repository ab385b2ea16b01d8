//! The kubelet side of plugin registration, played by the generated gRPC client over the
//! real Unix socket (the kubelet itself is exercised by the e2e suite, `e2e/`).

use std::time::Duration;

use tokio::sync::watch;
use warren_kube::proto::registration_client::RegistrationClient;
use warren_kube::proto::{InfoRequest, RegistrationStatus};
use warren_kube::registration::{self, PluginRegistration};

async fn connect(socket: std::path::PathBuf) -> RegistrationClient<tonic::transport::Channel> {
    for _ in 0..100 {
        if socket.exists() {
            let path = socket.clone();
            let channel = tonic::transport::Endpoint::from_static("http://kubelet")
                .connect_with_connector(tower::service_fn(move |_| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await;
            if let Ok(channel) = channel {
                return RegistrationClient::new(channel);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("registration socket {} never came up", socket.display());
}

#[tokio::test]
async fn the_kubelet_learns_who_we_are_and_where_we_serve() {
    let dir = tempfile::tempdir().unwrap();
    let socket = registration::socket_path(dir.path(), "warren.csi.dev");
    assert!(socket.ends_with("warren.csi.dev-reg.sock"));
    // A stale socket from a killed process is replaced; a regular file is not.
    std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let registration = PluginRegistration::new(
        "warren.csi.dev",
        std::path::Path::new("/var/lib/kubelet/plugins/warren.csi.dev/csi.sock"),
    );
    let mut registered = registration.registered();
    let (stop_tx, stop) = watch::channel(false);
    let served_socket = socket.clone();
    let server =
        tokio::spawn(async move { registration::serve(registration, &served_socket, stop).await });

    let mut kubelet = connect(socket.clone()).await;
    let info = kubelet.get_info(InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.r#type, "CSIPlugin");
    assert_eq!(info.name, "warren.csi.dev");
    assert_eq!(
        info.endpoint,
        "/var/lib/kubelet/plugins/warren.csi.dev/csi.sock"
    );
    assert_eq!(info.supported_versions, vec!["1.0.0".to_string()]);
    assert!(!*registered.borrow());
    kubelet
        .notify_registration_status(RegistrationStatus {
            plugin_registered: true,
            error: String::new(),
        })
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), registered.wait_for(|r| *r))
        .await
        .unwrap()
        .unwrap();

    // Stopping removes the socket, which is how the kubelet learns we are gone.
    stop_tx.send(true).unwrap();
    server.await.unwrap().unwrap();
    assert!(!socket.exists());
}

#[tokio::test]
async fn a_regular_file_in_the_way_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = registration::socket_path(dir.path(), "warren.csi.dev");
    std::fs::write(&socket, b"not a socket").unwrap();
    let registration = PluginRegistration::new("warren.csi.dev", std::path::Path::new("/x.sock"));
    let (_stop_tx, stop) = watch::channel(false);
    let err = registration::serve(registration, &socket, stop)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&socket).unwrap(), b"not a socket");
}
