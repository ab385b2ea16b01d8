use super::*;

#[test]
fn a_message_that_does_not_decode_is_internal() {
    let junk = Json {
        body: b"{not json".to_vec(),
    };
    let err = decode::<VolumeId>(&junk).unwrap_err();
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::Internal);
}

/// A node that holds one replica, of 8 MiB, and grows it on request. The tests below call
/// only `expand_replica` through the agent; every other method is `unimplemented!()` on
/// purpose, so a call the test did not mean to make fails it at once.
struct OneReplica;

#[async_trait]
impl NodeStorage for OneReplica {
    async fn create_volume(&self, _: VolumeSpec) -> Result<VolumeInfo> {
        unimplemented!()
    }
    async fn delete_volume(&self, _: VolumeId) -> Result<()> {
        unimplemented!()
    }
    async fn expand_volume(&self, _: VolumeId, _: u64) -> Result<u64> {
        unimplemented!()
    }
    async fn get_volume(&self, _: VolumeId) -> Result<VolumeInfo> {
        unimplemented!()
    }
    async fn list_volumes(&self) -> Result<Vec<VolumeInfo>> {
        unimplemented!()
    }
    async fn create_snapshot(&self, _: SnapshotId, _: String, _: VolumeId) -> Result<SnapshotInfo> {
        unimplemented!()
    }
    async fn delete_snapshot(&self, _: SnapshotId) -> Result<()> {
        unimplemented!()
    }
    async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        unimplemented!()
    }
    async fn capacity(&self, _: Layout) -> Result<Capacity> {
        unimplemented!()
    }
    async fn expand_replica(&self, volume: ReplicatedVolumeId, size: u64) -> Result<ReplicaInfo> {
        if size < 8 << 20 {
            return Err(Error::InvalidArgument(
                "a fake refusal, to see its code cross the channel".into(),
            ));
        }
        Ok(ReplicaInfo {
            volume,
            node: "n1".into(),
            endpoint: "10.0.0.1:7460".into(),
            size_bytes: size,
            gen: 3,
            members: vec!["n1".into()],
            in_sync: true,
        })
    }
}

#[tokio::test]
async fn expand_replica_crosses_the_agent_with_its_size_and_its_errors() {
    let token = "agent-test-token-0123456789";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let service = server(Arc::new(OneReplica), token).unwrap();
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let remote = RemoteNodeStorage::new("n1", &format!("http://{address}"), token).unwrap();
    let volume = ReplicatedVolumeId::new(crate::ids::Key::random());
    let info = remote
        .expand_replica(volume.clone(), 16 << 20)
        .await
        .unwrap();
    assert_eq!((info.volume, info.size_bytes), (volume.clone(), 16 << 20));
    let err = remote.expand_replica(volume, 4 << 20).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    serving.abort();
}
