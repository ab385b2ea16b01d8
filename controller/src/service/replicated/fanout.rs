//! One call to several nodes at once. A replicated volume lives on N nodes, and asking
//! them one after another would make every operation as slow as the sum of its nodes
//! (and an unreachable one would hold up the others' answers).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tonic::Status;
use warren_core::storage::NodeStorage;
use warren_core::{Error, Result};

use crate::nodes::Nodes;

/// How long a question about a node's state (capacity, replica health) may take: a node
/// slower than this is treated as unreachable rather than holding up the whole call. The
/// agent channel's own connect timeout is the same.
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// `e` with the node's name in front, and the same CSI code: with N nodes in one call,
/// the CO's message must say which node answered what.
pub(super) fn from_node(node: &str, e: Error) -> Error {
    Status::new(e.code(), format!("node {node}: {e}")).into()
}

/// Runs `call` on every named node concurrently (each bounded by `limit`, if given);
/// the answers come back in the order of `names` (callers name the node in what they
/// pass on, see `from_node`). A node
/// this controller does not know answers UNAVAILABLE, like one it cannot reach.
pub(super) async fn on_each<T, F, Fut>(
    nodes: &Nodes,
    names: &[String],
    limit: Option<Duration>,
    call: F,
) -> Vec<Result<T>>
where
    T: Send + 'static,
    F: Fn(Arc<dyn NodeStorage>) -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    let mut answers: Vec<Result<T>> = names
        .iter()
        .map(|name| {
            // Only seen if a task ends without an answer (it panicked in a test).
            Err(Error::Internal(format!(
                "the call to node {name} did not finish"
            )))
        })
        .collect();
    let mut tasks = JoinSet::new();
    for (i, name) in names.iter().enumerate() {
        let node = match nodes.get(name) {
            Ok(node) => node,
            Err(e) => {
                answers[i] = Err(e);
                continue;
            }
        };
        let answer = call(node);
        tasks.spawn(async move {
            let result = match limit {
                None => answer.await,
                Some(limit) => match tokio::time::timeout(limit, answer).await {
                    Ok(result) => result,
                    Err(_) => Err(Error::Unavailable(format!(
                        "no answer within {}s",
                        limit.as_secs_f32()
                    ))),
                },
            };
            (i, result)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        if let Ok((i, result)) = joined {
            answers[i] = result;
        }
    }
    answers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_errors_keep_their_code() {
        let e = from_node("n2", Error::FailedPrecondition("in use".into()));
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert_eq!(e.to_string(), "node n2: in use");
        assert!(matches!(
            from_node("n1", Error::Unavailable("x".into())),
            Error::Unavailable(_)
        ));
    }
}
