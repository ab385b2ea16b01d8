//! The idle connections kept per export: reused by the next operation, replaced once when
//! a reused one turns out dead on the wire, closed when their root handle went stale.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::session::Session;
use crate::error::{nfsstat3, Error, Result};

/// Runs `$body` with `$s` bound to a connection: an idle one when there is one (and, should
/// that one turn out dead on the wire, once more on a new one: every operation here is
/// idempotent), else a new one; then keeps the connection or closes it (`release`). A
/// macro, not a function taking a closure: the bodies borrow their arguments across
/// awaits, which a closure returning a boxed future cannot express here.
macro_rules! with_session {
    ($export:ident, |$s:ident| $body:expr) => {{
        let (mut $s, pooled) = match $export.pool.idle_session() {
            Some(s) => (s, true),
            None => ($export.connect().await?, false),
        };
        let mut result = $body;
        if pooled && matches!(result, Err($crate::error::Error::Unreachable { .. })) {
            $s = $export.connect().await?;
            result = $body;
        }
        $export.pool.release($s, &result).await;
        result
    }};
}
pub(super) use with_session;

/// Connections kept for the next operations: each new one costs a portmapper lookup, a
/// MOUNT and a TCP handshake from a reserved port — and a reserved port in TIME_WAIT for a
/// minute after it closes, which a burst of a few hundred operations would run out of.
const IDLE_SESSIONS: usize = 4;
/// An idle connection older than this is closed rather than reused: servers drop idle
/// clients (Linux knfsd after about 6 minutes), and a dead one would fail the next call.
const IDLE_FOR: Duration = Duration::from_secs(30);

/// The idle connections of one export; clones share them.
#[derive(Clone, Default)]
pub(super) struct SessionPool {
    idle: Arc<Mutex<Vec<(Instant, Session)>>>,
}

impl SessionPool {
    /// An idle connection, if a fresh enough one is there.
    pub(super) fn idle_session(&self) -> Option<Session> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain(|(since, _)| since.elapsed() < IDLE_FOR);
        idle.pop().map(|(_, session)| session)
    }

    /// Keeps a connection whose last operation got an answer from the server (success or
    /// an NFS status); closes one that failed on the wire, or whose root handle went
    /// stale (the export was replaced). One cut off by a deadline is dropped with its
    /// future, never reused mid-call.
    pub(super) async fn release<T>(&self, session: Session, result: &Result<T>) {
        let answered = match result {
            Ok(_) => true,
            Err(Error::Status { status, .. }) => *status != nfsstat3::NFS3ERR_STALE,
            Err(_) => false,
        };
        if answered {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < IDLE_SESSIONS {
                idle.push((Instant::now(), session));
                return;
            }
        }
        session.close().await;
    }
}
