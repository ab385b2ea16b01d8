//! A deterministic, in-CI fuzz of the frame decoder: a few hundred thousand pseudo-random
//! and mutated-valid inputs (seeded xorshift, so a failure replays exactly). `decode` must
//! never panic, must agree with an independent reference model of the format on every
//! input, and must never return a frame whose checksum does not match its bytes; the
//! stream reader `read_frame` must agree with `decode` on a sample of the same inputs.
//! The open-ended fuzzer is `replica/fuzz` (cargo-fuzz).

use bytes::Bytes;
use warren_replica::protocol::{
    decode, frame_crc, read_frame, Frame, Kind, HEADER_LEN, MAGIC, MAX_BODY,
};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

const KINDS: [Kind; 18] = [
    Kind::Hello,
    Kind::Challenge,
    Kind::Auth,
    Kind::AuthOk,
    Kind::Open,
    Kind::GetState,
    Kind::Commit,
    Kind::BeginRebuild,
    Kind::Checkpoint,
    Kind::Close,
    Kind::GetBitmap,
    Kind::Grow,
    Kind::Snapshot,
    Kind::Read,
    Kind::Write,
    Kind::Flush,
    Kind::Discard,
    Kind::Reply,
];

/// Field values that sit on edges more often than uniform randomness would.
fn edgy(rng: &mut Rng) -> u64 {
    match rng.below(6) {
        0 => 0,
        1 => u64::MAX,
        2 => 1 << rng.below(64),
        3 => rng.below(1 << 16),
        _ => rng.next(),
    }
}

fn random_frame(rng: &mut Rng) -> Frame {
    let body_len = match rng.below(8) {
        0 => 0,
        1 => 4096,
        _ => rng.below(300) as usize,
    };
    Frame {
        kind: KINDS[rng.below(KINDS.len() as u64) as usize],
        flags: rng.next() as u8,
        status: rng.next() as u16,
        request_id: edgy(rng),
        gen: edgy(rng),
        offset: edgy(rng),
        body: Bytes::from(rng.bytes(body_len)),
        body_crc: None,
    }
}

fn wire(frame: &Frame) -> Vec<u8> {
    let mut all = frame.encode().to_vec();
    all.extend_from_slice(&frame.body);
    all
}

fn reseal(raw: &mut [u8]) {
    let crc = frame_crc(&raw[..36], &raw[HEADER_LEN..]);
    raw[36..40].copy_from_slice(&crc.to_le_bytes());
}

/// The mutations a corrupt or hostile stream might show.
fn mutate(rng: &mut Rng, raw: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(3) {
        match rng.below(10) {
            0 | 1 => {
                if !raw.is_empty() {
                    let at = rng.below(raw.len() as u64) as usize;
                    raw[at] ^= 1 << rng.below(8);
                }
            }
            2 => {
                if !raw.is_empty() {
                    let at = rng.below(raw.len() as u64) as usize;
                    raw[at] = rng.next() as u8;
                }
            }
            3 => raw.truncate(rng.below(raw.len() as u64 + 1) as usize),
            4 => {
                let len = rng.below(64) as usize;
                let extra = rng.bytes(len);
                raw.extend_from_slice(&extra);
            }
            5 => {
                // A body length anywhere, often near the limit.
                if raw.len() >= HEADER_LEN {
                    let len = match rng.below(5) {
                        0 => MAX_BODY as u32,
                        1 => MAX_BODY as u32 + 1,
                        2 => u32::MAX,
                        3 => rng.below(400) as u32,
                        _ => rng.next() as u32,
                    };
                    raw[32..36].copy_from_slice(&len.to_le_bytes());
                }
            }
            6 => {
                if raw.len() > HEADER_LEN {
                    raw[4] = rng.next() as u8; // any kind, known or not
                }
            }
            7 => {
                if raw.len() >= 4 {
                    let magic = if rng.chance(2) {
                        MAGIC
                    } else {
                        rng.next() as u32
                    };
                    raw[0..4].copy_from_slice(&magic.to_le_bytes());
                }
            }
            8 => {
                // Two frames glued, or a frame glued to junk.
                let more = wire(&random_frame(rng));
                raw.extend_from_slice(&more);
            }
            _ => {
                // A mutation the checksum then blesses: the decoder must still be right.
                if raw.len() >= HEADER_LEN {
                    reseal(raw);
                }
            }
        }
    }
}

/// What a correct decoder does with `buf`, derived from the format's description.
#[derive(Debug, PartialEq)]
enum Expect {
    NeedMore,
    Refused,
    Frame(usize),
}

fn reference(buf: &[u8]) -> Expect {
    if buf.len() < HEADER_LEN {
        return Expect::NeedMore;
    }
    let u32_at = |at: usize| u32::from_le_bytes(buf[at..at + 4].try_into().unwrap());
    let known_kind = matches!(buf[4], 1..=4 | 10..=18 | 20..=23 | 100);
    let body_len = u32_at(32) as usize;
    if u32_at(0) != MAGIC || !known_kind || body_len > MAX_BODY {
        return Expect::Refused;
    }
    let total = HEADER_LEN + body_len;
    if buf.len() < total {
        return Expect::NeedMore;
    }
    let crc = frame_crc(&buf[..36], &buf[HEADER_LEN..total]);
    if crc != u32_at(36) {
        return Expect::Refused;
    }
    Expect::Frame(total)
}

/// Checks one input; returns what `decode` made of it.
fn check(buf: &[u8], runtime: Option<&tokio::runtime::Runtime>) -> Expect {
    let got = match decode(buf) {
        Ok(None) => Expect::NeedMore,
        Err(_) => Expect::Refused,
        Ok(Some((frame, used))) => {
            assert!(used <= buf.len() && used == HEADER_LEN + frame.body.len());
            // The frame is exactly the bytes it came from, checksum included: re-encoding
            // it reproduces them, so no field was misread and the CRC matched.
            let mut again = frame.encode().to_vec();
            again.extend_from_slice(&frame.body);
            assert_eq!(again, &buf[..used], "decoded frame differs from its bytes");
            let crc = frame_crc(&buf[..36], &frame.body);
            assert_eq!(crc.to_le_bytes(), buf[36..40], "frame with a bad checksum");
            Expect::Frame(used)
        }
    };
    let want = reference(buf);
    assert_eq!(
        got, want,
        "decode disagrees with the format on {:02x?}",
        buf
    );
    if let Some(runtime) = runtime {
        // The stream reader sees the same bytes followed by the end of the stream.
        let mut reader = buf;
        let streamed = runtime.block_on(read_frame(&mut reader));
        match (&got, streamed) {
            (Expect::Frame(used), Ok(Some(frame))) => {
                let (decoded, _) = decode(buf).unwrap().unwrap();
                assert_eq!(frame, decoded);
                assert_eq!(reader.len(), buf.len() - used);
            }
            (Expect::Refused, Err(_)) => {}
            // Short of a header: the stream ended between frames (or inside a header).
            (Expect::NeedMore, Ok(None)) if buf.len() < HEADER_LEN => {}
            // A header promising more than the stream holds: a truncated body.
            (Expect::NeedMore, Err(_)) if buf.len() >= HEADER_LEN => {}
            (got, streamed) => {
                panic!("read_frame gave {streamed:?} where decode gave {got:?} on {buf:02x?}")
            }
        }
    }
    got
}

#[test]
fn decode_survives_random_and_mutated_frames() {
    let started = std::time::Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut rng = Rng(0x5eed_0ff4_a3e5);
    let mut seen = [0usize; 3];
    const ROUNDS: usize = 300_000;
    for round in 0..ROUNDS {
        let buf = match round % 4 {
            // Pure noise, sometimes behind a valid magic so the header checks are reached.
            0 => {
                let len = rng.below(120) as usize;
                let mut buf = rng.bytes(len);
                if buf.len() >= 4 && rng.chance(2) {
                    buf[..4].copy_from_slice(&MAGIC.to_le_bytes());
                    if buf.len() > 36 && rng.chance(2) {
                        buf[32..36].copy_from_slice(&(rng.below(80) as u32).to_le_bytes());
                    }
                }
                buf
            }
            // A valid frame, untouched: decoded exactly, at every cut short of its end.
            1 => {
                let frame = random_frame(&mut rng);
                let raw = wire(&frame);
                let (decoded, used) = decode(&raw).unwrap().unwrap();
                assert_eq!((decoded, used), (frame, raw.len()));
                let cut = rng.below(raw.len() as u64) as usize;
                assert!(decode(&raw[..cut]).unwrap().is_none(), "cut at {cut}");
                raw
            }
            // Mutated valid frames.
            _ => {
                let mut raw = wire(&random_frame(&mut rng));
                mutate(&mut rng, &mut raw);
                raw
            }
        };
        // The async reader allocates the declared body: sample it on small declarations.
        let small =
            buf.len() < HEADER_LEN || u32::from_le_bytes(buf[32..36].try_into().unwrap()) < 1 << 16;
        let stream = (round % 8 == 0 && small).then_some(&runtime);
        match check(&buf, stream) {
            Expect::NeedMore => seen[0] += 1,
            Expect::Refused => seen[1] += 1,
            Expect::Frame(_) => seen[2] += 1,
        }
    }
    // Every outcome was exercised in quantity, or the generator has rotted.
    for (what, count) in ["need-more", "refused", "frame"].iter().zip(seen) {
        assert!(
            count > ROUNDS / 50,
            "only {count} {what} outcomes: {seen:?}"
        );
    }
    eprintln!(
        "{ROUNDS} inputs in {:?}: need-more/refused/frame = {seen:?}",
        started.elapsed()
    );
}

/// Every single-bit flip and every single-byte value at each header position, on a few
/// frames: never accepted unless the flip restored the original bytes.
#[test]
fn every_header_byte_value_is_refused_or_exact() {
    let mut rng = Rng(42);
    for _ in 0..8 {
        let good = wire(&random_frame(&mut rng));
        for at in 0..HEADER_LEN.min(good.len()) {
            for value in 0..=255u8 {
                let mut bad = good.clone();
                bad[at] = value;
                let got = check(&bad, None);
                if value == good[at] {
                    assert_eq!(got, Expect::Frame(good.len()));
                } else if (32..36).contains(&at) {
                    // A length change may make the frame look incomplete; never valid.
                    assert_ne!(got, Expect::Frame(good.len()));
                    if let Expect::Frame(used) = got {
                        // A shorter body whose checksum happens to match: a 1 in 2^32
                        // coincidence we would like to hear about.
                        panic!("length {value} at {at} accepted ({used} bytes)");
                    }
                } else {
                    assert_eq!(got, Expect::Refused, "byte {at} = {value}");
                }
            }
        }
    }
}
