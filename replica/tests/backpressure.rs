//! A peer that sends requests and never reads the replies must not make the replica
//! service buffer without bound: each connection's requests in service plus replies not yet
//! written are capped (64 MiB), and reading from that peer stops until it catches up.

use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use warren_replica::auth::{client_handshake, Token};
use warren_replica::messages::{GenerationChange, OpenRequest};
use warren_replica::protocol::{read_frame, write_frame, Frame, Kind};
use warren_replica::server::ReplicaService;

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_replies_hold_at_most_the_connection_budget() {
    let dir = tempfile::tempdir().unwrap();
    let token = Token::new(b"backpressure-token-0123456789".to_vec()).unwrap();
    let service =
        ReplicaService::new(dir.path().to_path_buf(), "r0".into(), token.clone()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(service.clone().serve(listener));

    let mut stream = TcpStream::connect(address).await.unwrap();
    client_handshake(&mut stream, &token).await.unwrap();
    let open = OpenRequest {
        volume: "vol".into(),
        size: 8 * MIB as u64,
        create: true,
    };
    write_frame(&mut stream, &Frame::json(Kind::Open, 1, &open).unwrap())
        .await
        .unwrap();
    assert_eq!(read_frame(&mut stream).await.unwrap().unwrap().status, 0);
    let commit = GenerationChange {
        expect: 0,
        gen: 1,
        members: vec!["r0".into()],
    };
    write_frame(&mut stream, &Frame::json(Kind::Commit, 2, &commit).unwrap())
        .await
        .unwrap();
    assert_eq!(read_frame(&mut stream).await.unwrap().unwrap().status, 0);

    // 300 reads of 4 MiB (1.2 GiB of replies), none of them read for now.
    let requests = 300u64;
    for id in 0..requests {
        let mut frame = Frame::request(
            Kind::Read,
            100 + id,
            Bytes::copy_from_slice(&(4 * MIB as u32).to_le_bytes()),
        );
        frame.gen = 1;
        write_frame(&mut stream, &frame).await.unwrap();
    }
    let mut peak = 0;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        peak = peak.max(service.in_flight_bytes());
    }
    assert!(peak > 0, "the gauge never saw the requests");
    assert!(
        peak <= 64 * MIB + 5 * MIB,
        "{} MiB held for a peer that reads nothing",
        peak / MIB
    );

    // The peer catches up: every reply arrives, complete, and the budget is released.
    let (mut reader, _writer) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(&mut reader);
    for _ in 0..requests {
        let reply = read_frame(&mut reader).await.unwrap().unwrap();
        assert_eq!(reply.status, 0);
        assert_eq!(reply.body.len(), 4 * MIB);
    }
    for _ in 0..100 {
        if service.in_flight_bytes() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(service.in_flight_bytes(), 0);
}
