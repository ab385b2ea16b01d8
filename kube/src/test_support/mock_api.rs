//! A Kubernetes API server that answers from a script, so the reconcilers run for real in
//! unit tests: the code under test gets a `kube::Client` whose every request lands here
//! (tower-test's mock service), and the test reads each request in turn — method, path,
//! body — and answers it. A test reads as the list of requests the code must send and the
//! answers it gets.
//!
//! Events (`events.k8s.io`) are best-effort side notes the code may send at any point;
//! they are answered at once and kept in [`MockApi::events`], so scripts list only the
//! requests that matter and can still check which events were written.

use std::future::Future;
use std::time::Duration;

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tower_test::mock::{self, Handle, SendResponse};

/// How long a script waits for the next request before it fails (instead of hanging).
const STEP: Duration = Duration::from_secs(5);
/// How long a whole test may run.
const WHOLE_TEST: Duration = Duration::from_secs(20);

/// Runs a test body with a time limit: a request the code never sends fails the test.
pub async fn within<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(WHOLE_TEST, test)
        .await
        .expect("the test did not finish in time")
}

/// A client whose requests go to the returned script.
pub fn pair() -> (kube::Client, MockApi) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    (
        client,
        MockApi {
            handle,
            events: Vec::new(),
        },
    )
}

pub struct MockApi {
    handle: Handle<Request<Body>, Response<Body>>,
    /// The events written so far, as (reason, note).
    pub events: Vec<(String, String)>,
}

/// One request of the code under test, waiting for its answer.
pub struct Call {
    pub method: Method,
    /// The path alone, without the query.
    pub path: String,
    pub query: String,
    /// The request body as JSON (Null when there is none).
    pub body: Value,
    respond: SendResponse<Response<Body>>,
}

impl MockApi {
    /// The next request, which must be `method path` (the query is not compared).
    pub async fn expect(&mut self, method: Method, path: &str) -> Call {
        let call = self.next().await;
        assert_eq!(
            (&call.method, call.path.as_str()),
            (&method, path),
            "unexpected request (body {})",
            call.body
        );
        call
    }

    /// Waits for `task` (the code under test) to end, answering events meanwhile; any
    /// other request fails the test.
    pub async fn finish<T>(&mut self, task: JoinHandle<T>) -> T {
        let mut task = std::pin::pin!(task);
        loop {
            tokio::select! {
                done = &mut task => return done.expect("the code under test panicked"),
                request = self.handle.next_request() => match request {
                    Some((request, respond)) => {
                        let call = Call::read(request, respond).await;
                        if let Some(call) = self.answer_event(call) {
                            panic!("unexpected request {} {} (body {})", call.method, call.path, call.body);
                        }
                    }
                    None => return task.await.expect("the code under test panicked"),
                },
            }
        }
    }

    /// Whether an event with this reason was written.
    pub fn has_event(&self, reason: &str) -> bool {
        self.events.iter().any(|(r, _)| r == reason)
    }

    /// The next request that is not an event.
    pub async fn next(&mut self) -> Call {
        loop {
            let (request, respond) = tokio::time::timeout(STEP, self.handle.next_request())
                .await
                .expect("the code under test sent no further request")
                .expect("the client is gone");
            let call = Call::read(request, respond).await;
            if let Some(call) = self.answer_event(call) {
                return call;
            }
        }
    }

    /// Answers `call` if it writes an event (and keeps it), else hands it back.
    fn answer_event(&mut self, call: Call) -> Option<Call> {
        if !call.path.starts_with("/apis/events.k8s.io/") {
            return Some(call);
        }
        let text = |field: &str| call.body[field].as_str().unwrap_or_default().to_string();
        self.events.push((text("reason"), text("note")));
        let body = call.body.clone();
        call.reply(201, body);
        None
    }
}

impl Call {
    async fn read(request: Request<Body>, respond: SendResponse<Response<Body>>) -> Call {
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.expect("a request body");
        Call {
            method: parts.method,
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or_default().to_string(),
            body: if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("a JSON request body")
            },
            respond,
        }
    }

    pub fn reply(self, status: u16, body: Value) {
        let response = Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).expect("JSON")))
            .expect("a response");
        self.respond.send_response(response);
    }

    pub fn ok(self, body: Value) {
        self.reply(200, body);
    }

    /// Answers with the object the request carried, as a create or replace does.
    pub fn echo(self, status: u16) {
        let body = self.body.clone();
        self.reply(status, body);
    }

    pub fn not_found(self) {
        self.fail(404, "NotFound");
    }

    pub fn conflict(self) {
        self.fail(409, "Conflict");
    }

    /// A Kubernetes `Status` failure.
    pub fn fail(self, code: u16, reason: &str) {
        self.reply(
            code,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("mock: {reason}"), "reason": reason, "code": code}),
        );
    }
}
