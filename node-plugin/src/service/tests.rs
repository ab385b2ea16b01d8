use super::*;
use crate::loopdev::LoopDevices;
use crate::mounter::SystemMounter;

const KEY: &str = "0123456789abcdef0123456789abcdef";

fn service(dir: &std::path::Path) -> NodeService {
    let store = LocalStore::open("n1", &dir.join("store"), Arc::new(LoopDevices)).unwrap();
    NodeService::new(
        store,
        Arc::new(SystemMounter),
        dir.join("kubelet"),
        Deadlines::default(),
    )
}

fn refused(service: &NodeService, raw: &str) -> Status {
    match service.target(raw) {
        Ok(_) => panic!("{raw:?} was taken as a volume"),
        Err(status) => status,
    }
}

#[tokio::test]
async fn the_id_kind_picks_the_parser() {
    let dir = tempfile::tempdir().unwrap();
    let service = service(dir.path());
    let here = format!("local#image#n1#{KEY}");
    assert!(matches!(service.target(&here), Ok(Target::Local(id)) if id.node == "n1"));
    let there = format!("local#dir#n2#{KEY}");
    assert!(matches!(service.target(&there), Ok(Target::Remote(id)) if id.node == "n2"));
    let nfs = "nfs#10.0.0.5#/export#pvc-1#delete";
    assert!(matches!(service.target(nfs), Ok(Target::Nfs(_))));
    let replicated = format!("replicated#{KEY}");
    assert!(
        matches!(service.target(&replicated), Ok(Target::Replicated(id)) if id.replica_name() == KEY)
    );

    let empty = refused(&service, "");
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    assert_eq!(empty.message(), "volume_id is required");
    // A malformed NFS ID is told so by the NFS parser.
    let bad_nfs = refused(&service, "nfs#10.0.0.5");
    assert_eq!(bad_nfs.code(), tonic::Code::NotFound);
    assert!(
        bad_nfs
            .message()
            .starts_with("no such volume: malformed NFS volume id"),
        "{}",
        bad_nfs.message()
    );
    // A malformed replicated ID is told so by the replicated ID parser.
    let bad_replicated = refused(&service, &format!("replicated#x#{KEY}"));
    assert_eq!(bad_replicated.code(), tonic::Code::NotFound);
    assert!(
        bad_replicated
            .message()
            .starts_with("no such volume: malformed replicated volume id"),
        "{}",
        bad_replicated.message()
    );
    // Every other ID is refused by the local volume parser, with its reason.
    for (raw, why) in [
        (format!("snap#image#n1#{KEY}"), "wrong prefix"),
        (format!("nfssnap#h#/s#{KEY}"), "wrong prefix"),
        ("zfs#pool#vol".to_string(), "expected 4 '#'-separated parts"),
        (format!("local#image#n1#{}", &KEY[1..]), "bad key"),
    ] {
        let status = refused(&service, &raw);
        assert_eq!(status.code(), tonic::Code::NotFound, "{raw}");
        assert!(
            status
                .message()
                .starts_with("no such volume: malformed volume id")
                && status.message().ends_with(why),
            "{raw}: {}",
            status.message()
        );
    }
}
