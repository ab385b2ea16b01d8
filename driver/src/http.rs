//! The plain-HTTP side of Warren (`--metrics-address`): `GET /metrics` for Prometheus and
//! `GET /healthz` for a liveness probe, served with the hyper that tonic already uses.
//!
//! `/healthz` answers 200 while the CSI server is serving and ready — the `ready` flag the
//! Identity Probe reports, set once the CSI socket is bound after startup reconciliation
//! and cleared when shutdown begins — and 503 otherwise.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use warren_core::{Error, Result};

use crate::metrics::{self, Metrics};

/// Scrapers and probes are few; more connections than this at once are turned away.
const MAX_CONNECTIONS: usize = 16;
/// A client that has not sent its request headers by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the address now, so a taken or invalid one fails startup with a clear error.
pub async fn bind(address: &str) -> Result<TcpListener> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(Error::io(format!("bind --metrics-address {address:?}")))?;
    let local = listener
        .local_addr()
        .map_err(Error::io("metrics address"))?;
    tracing::info!(address = %local, "serving /metrics and /healthz");
    Ok(listener)
}

/// Serves `/metrics` and `/healthz` on `listener` until `stop` turns true.
pub fn spawn(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop.wait_for(|s| *s) => return,
            };
            let (stream, _) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let (metrics, ready) = (metrics.clone(), ready.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let (metrics, ready) = (metrics.clone(), ready.clone());
                    async move { Ok::<_, Infallible>(respond(&req, &metrics, &ready).await) }
                });
                let _ = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                drop(slot);
            });
        }
    });
}

async fn respond<B>(
    req: &Request<B>,
    metrics: &Metrics,
    ready: &AtomicBool,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(metrics.render().await)));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            response
        }
        "/healthz" if ready.load(Ordering::Acquire) => text(StatusCode::OK, "ok\n"),
        "/healthz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics or /healthz\n",
        ),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    #[tokio::test]
    async fn healthz_follows_readiness() {
        let metrics = Metrics::new(None);
        let ready = AtomicBool::new(false);
        let status = |r: Response<Full<Bytes>>| r.status();
        assert_eq!(
            status(respond(&get("/healthz"), &metrics, &ready).await),
            StatusCode::SERVICE_UNAVAILABLE
        );
        ready.store(true, Ordering::Release);
        assert_eq!(
            status(respond(&get("/healthz"), &metrics, &ready).await),
            StatusCode::OK
        );
        assert_eq!(
            status(respond(&get("/nope"), &metrics, &ready).await),
            StatusCode::NOT_FOUND
        );
        let post = Request::post("/healthz").body(()).unwrap();
        assert_eq!(
            status(respond(&post, &metrics, &ready).await),
            StatusCode::METHOD_NOT_ALLOWED
        );
        let scrape = respond(&get("/metrics"), &metrics, &ready).await;
        assert_eq!(scrape.status(), StatusCode::OK);
        assert_eq!(scrape.headers()[CONTENT_TYPE], metrics::CONTENT_TYPE);
    }
}
