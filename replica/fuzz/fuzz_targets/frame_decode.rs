//! Fuzzes the replica frame decoder: `decode` over the input as a buffer, and the async
//! `read_frame` over the same bytes as a stream, frame after frame. Neither may panic;
//! a decoded frame must re-encode to exactly the bytes it came from (so its checksum
//! matched), and both readers must agree.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use warren_replica::protocol::{decode, read_frame, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    // `decode`, frame after frame, as a buffered reader would call it.
    let mut decoded = Vec::new();
    let mut rest = data;
    let buffered_error = loop {
        match decode(rest) {
            Ok(Some((frame, used))) => {
                assert!(used >= HEADER_LEN && used <= rest.len());
                let mut again = frame.encode().to_vec();
                again.extend_from_slice(&frame.body);
                assert_eq!(&again[..], &rest[..used], "frame differs from its bytes");
                decoded.push(frame);
                rest = &rest[used..];
            }
            Ok(None) => break false,
            Err(_) => break true,
        }
    };

    // `read_frame` over the same bytes as a stream that then ends. Reads from a slice
    // never wait, so a current-thread runtime without drivers is enough.
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    });
    let mut reader = data;
    let mut streamed = 0;
    runtime.block_on(async {
        loop {
            match read_frame(&mut reader).await {
                Ok(Some(frame)) => {
                    assert_eq!(Some(&frame), decoded.get(streamed), "readers disagree");
                    streamed += 1;
                }
                Ok(None) => {
                    // The stream ended short of a header: `decode` wanted more bytes.
                    assert!(!buffered_error && rest.len() < HEADER_LEN);
                    break;
                }
                Err(_) => {
                    // A refused frame, or a body cut by the end of the stream.
                    assert!(buffered_error || rest.len() >= HEADER_LEN);
                    break;
                }
            }
        }
    });
    assert_eq!(
        streamed,
        decoded.len(),
        "readers disagree on the frame count"
    );
});
