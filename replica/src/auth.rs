//! Mutual authentication when a connection opens: both sides prove they hold the shared
//! token without sending it, by HMAC-SHA256 over two fresh nonces. Until the client has
//! proven itself the server answers nothing else, so a peer without the token cannot read,
//! write or even learn which volumes exist.
//!
//! ```text
//! client → Hello     {version, client_nonce}
//! server → Challenge {server_nonce}
//! client → Auth      {mac: HMAC(token, "client" | client_nonce | server_nonce)}
//! server → AuthOk    {mac: HMAC(token, "server" | client_nonce | server_nonce)}
//! ```
//! Frames after that are checksummed, not signed: the channel keeps out whoever lacks the
//! token; confidentiality and tampering on the path need an encrypted network (WireGuard,
//! as K3s can set up) — see docs/design.md.

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::{Error, Result};
use crate::protocol::{read_frame_limited, write_frame, Frame, Kind};

/// Handshake bodies are small JSON objects; nothing larger is read before authentication.
const HANDSHAKE_MAX_BODY: usize = 4096;

pub const PROTOCOL_VERSION: u32 = 1;
/// Shorter secrets are refused: they could be guessed offline from one handshake.
pub const MIN_TOKEN_LEN: usize = 16;

/// The shared secret. Its Debug never prints it.
#[derive(Clone)]
pub struct Token(Vec<u8>);

impl Token {
    pub fn new(secret: impl Into<Vec<u8>>) -> Result<Token> {
        let secret = secret.into();
        if secret.len() < MIN_TOKEN_LEN {
            return Err(Error::InvalidArgument(format!(
                "the replica token must be at least {MIN_TOKEN_LEN} bytes"
            )));
        }
        Ok(Token(secret))
    }

    /// Reads a token file; surrounding whitespace (a trailing newline) is not part of it.
    pub fn from_file(path: &std::path::Path) -> Result<Token> {
        let text = std::fs::read_to_string(path)
            .map_err(Error::io(format!("read token file {}", path.display())))?;
        Token::new(text.trim().as_bytes().to_vec())
    }

    #[allow(clippy::expect_used)] // HMAC takes keys of any length: this cannot fail
    fn keyed_hmac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("any key length")
    }

    fn mac(&self, role: &[u8], client_nonce: &[u8], server_nonce: &[u8]) -> Vec<u8> {
        let mut mac = self.keyed_hmac();
        mac.update(role);
        mac.update(client_nonce);
        mac.update(server_nonce);
        mac.finalize().into_bytes().to_vec()
    }

    fn verify(&self, role: &[u8], client_nonce: &[u8], server_nonce: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.keyed_hmac();
        mac.update(role);
        mac.update(client_nonce);
        mac.update(server_nonce);
        mac.verify_slice(tag).is_ok() // constant time
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[derive(Serialize, Deserialize)]
struct Hello {
    version: u32,
    nonce: String,
}

#[derive(Serialize, Deserialize)]
struct Proof {
    nonce: String,
    mac: String,
}

fn nonce() -> Result<[u8; 32]> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Works on bytes, not `str` slices: a peer's value may hold multi-byte characters, and
/// slicing text inside one panics (before the peer has proven anything).
fn unhex(text: &str) -> Result<Vec<u8>> {
    let malformed = || Error::Unauthenticated("malformed handshake value".into());
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) || bytes.len() > 128 {
        return Err(malformed());
    }
    let digit = |b: u8| (b as char).to_digit(16).ok_or_else(malformed);
    bytes
        .chunks_exact(2)
        .map(|pair| Ok((digit(pair[0])? * 16 + digit(pair[1])?) as u8))
        .collect()
}

async fn expect<R: AsyncRead + Unpin>(reader: &mut R, kind: Kind) -> Result<Frame> {
    match read_frame_limited(reader, HANDSHAKE_MAX_BODY).await? {
        Some(frame) if frame.kind == kind && frame.status == 0 => Ok(frame),
        Some(frame) if frame.kind == Kind::Reply => Err(Error::Unauthenticated(
            String::from_utf8_lossy(&frame.body).into_owned(),
        )),
        Some(frame) => Err(Error::Unauthenticated(format!(
            "expected {kind:?} during the handshake, got {:?}",
            frame.kind
        ))),
        None => Err(Error::Unauthenticated(
            "the peer closed the connection during the handshake".into(),
        )),
    }
}

/// Client side: proves the token and checks the server's proof.
pub async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    token: &Token,
) -> Result<()> {
    let client_nonce = nonce()?;
    let hello = Hello {
        version: PROTOCOL_VERSION,
        nonce: hex(&client_nonce),
    };
    write_frame(stream, &Frame::json(Kind::Hello, 0, &hello)?).await?;
    let challenge: Hello = expect(stream, Kind::Challenge).await?.parse_json()?;
    let server_nonce = unhex(&challenge.nonce)?;
    let proof = Proof {
        nonce: String::new(),
        mac: hex(&token.mac(b"client", &client_nonce, &server_nonce)),
    };
    write_frame(stream, &Frame::json(Kind::Auth, 0, &proof)?).await?;
    let answer: Proof = expect(stream, Kind::AuthOk).await?.parse_json()?;
    if !token.verify(
        b"server",
        &client_nonce,
        &server_nonce,
        &unhex(&answer.mac)?,
    ) {
        return Err(Error::Unauthenticated(
            "the replica did not prove it holds the token".into(),
        ));
    }
    Ok(())
}

/// Server side: nothing but the handshake is answered until the client has proven itself.
pub async fn server_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    token: &Token,
) -> Result<()> {
    let hello: Hello = expect(stream, Kind::Hello).await?.parse_json()?;
    if hello.version != PROTOCOL_VERSION {
        let error = Error::Unauthenticated(format!(
            "protocol version {} is not {PROTOCOL_VERSION}",
            hello.version
        ));
        write_frame(stream, &Frame::error_reply(0, &error)).await?;
        return Err(error);
    }
    let client_nonce = unhex(&hello.nonce)?;
    let server_nonce = nonce()?;
    let challenge = Hello {
        version: PROTOCOL_VERSION,
        nonce: hex(&server_nonce),
    };
    write_frame(stream, &Frame::json(Kind::Challenge, 0, &challenge)?).await?;
    let proof: Proof = expect(stream, Kind::Auth).await?.parse_json()?;
    if !token.verify(b"client", &client_nonce, &server_nonce, &unhex(&proof.mac)?) {
        let error = Error::Unauthenticated("wrong token".into());
        write_frame(stream, &Frame::error_reply(0, &error)).await?;
        return Err(error);
    }
    let answer = Proof {
        nonce: String::new(),
        mac: hex(&token.mac(b"server", &client_nonce, &server_nonce)),
    };
    write_frame(stream, &Frame::json(Kind::AuthOk, 0, &answer)?).await?;
    Ok(())
}

/// An unused body, for frames whose meaning is their kind.
pub fn empty() -> Bytes {
    Bytes::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(s: &str) -> Token {
        Token::new(s.as_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn same_token_authenticates_both_ways() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let t = token("a-shared-secret-of-some-length");
        let (c, s) = tokio::join!(client_handshake(&mut a, &t), server_handshake(&mut b, &t));
        c.unwrap();
        s.unwrap();
    }

    #[tokio::test]
    async fn wrong_token_is_refused_on_both_sides() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let (client_token, server_token) = (
            token("the-clients-secret-1234"),
            token("the-servers-secret-5678"),
        );
        let (c, s) = tokio::join!(
            client_handshake(&mut a, &client_token),
            server_handshake(&mut b, &server_token)
        );
        assert!(matches!(c, Err(Error::Unauthenticated(_))), "{c:?}");
        assert!(matches!(s, Err(Error::Unauthenticated(_))), "{s:?}");
    }

    #[tokio::test]
    async fn a_data_frame_before_the_handshake_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let t = token("a-shared-secret-of-some-length");
        write_frame(&mut a, &Frame::request(Kind::Read, 1, empty()))
            .await
            .unwrap();
        assert!(matches!(
            server_handshake(&mut b, &t).await,
            Err(Error::Unauthenticated(_))
        ));
    }

    #[test]
    fn malformed_hex_is_refused_without_panicking() {
        assert_eq!(unhex("00ff7a").unwrap(), vec![0, 0xff, 0x7a]);
        // "é" is two bytes: an even length whose byte pairs straddle a character.
        for bad in ["aéb", "éé", "0g", "+f", "abc", &"00".repeat(65)] {
            assert!(
                matches!(unhex(bad), Err(Error::Unauthenticated(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn short_tokens_are_refused_and_never_printed() {
        assert!(Token::new(b"short".to_vec()).is_err());
        let t = token("do-not-print-this-secret");
        assert!(!format!("{t:?}").contains("do-not-print"));
    }
}
