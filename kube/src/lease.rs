//! Leader election on a coordination.k8s.io Lease, for the decisions no node owns.
//!
//! Optimistic concurrency does the locking: a node takes or renews the lease by replacing
//! it at the resourceVersion it read, so of two nodes racing only one write succeeds. A
//! node counts itself leader only while its last successful renewal is younger than
//! two thirds of the lease duration, so it steps down before anyone else may take over —
//! and what the leader decides (a claim's placement) is itself written with a
//! resourceVersion precondition, so even an overlap cannot place a claim twice.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use tokio::sync::watch;

use crate::error::Result;

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Who we are (the node name).
    pub holder: String,
    pub duration: Duration,
}

/// Keeps trying to lead until `stop`; `leading` says whether we do. Gives the lease up on
/// the way out so another node takes over at once.
pub async fn run(
    client: kube::Client,
    config: LeaseConfig,
    leading: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut last_renewal: Option<Instant> = None;
    loop {
        match try_acquire_or_renew(&api, &config).await {
            Ok(true) => last_renewal = Some(Instant::now()),
            Ok(false) => last_renewal = None,
            Err(e) => tracing::warn!(error = %e, lease = %config.name, "lease renewal failed"),
        }
        let lead = last_renewal.is_some_and(|t| t.elapsed() < config.duration * 2 / 3);
        if *leading.borrow() != lead {
            tracing::info!(lease = %config.name, leading = lead, "leadership changed");
        }
        leading.send_replace(lead);
        tokio::select! {
            _ = tokio::time::sleep(config.duration / 3) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    if *leading.borrow() {
        leading.send_replace(false);
        if let Err(e) = release(&api, &config).await {
            tracing::warn!(error = %e, "could not give the lease up");
        }
    }
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// True when we hold the lease after this call.
pub async fn try_acquire_or_renew(api: &Api<Lease>, config: &LeaseConfig) -> Result<bool> {
    let seconds = config.duration.as_secs().max(1) as i32;
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.holder.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return conflict_is_false(api.create(&PostParams::default(), &lease).await);
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let mine = spec.holder_identity.as_deref() == Some(config.holder.as_str());
    let expired = match (&spec.holder_identity, &spec.renew_time) {
        (Some(h), Some(renewed)) if !h.is_empty() => {
            let lasts =
                SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(seconds) as i64);
            renewed
                .0
                .checked_add(lasts)
                .map(|end| end < Timestamp::now())
                .unwrap_or(true)
        }
        _ => true,
    };
    if !mine && !expired {
        return Ok(false);
    }
    if !mine {
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        spec.holder_identity = Some(config.holder.clone());
    }
    spec.renew_time = Some(now());
    spec.lease_duration_seconds = Some(seconds);
    // `lease` still carries the resourceVersion we read: a concurrent writer makes this
    // replace fail with 409 instead of both of us winning.
    conflict_is_false(
        api.replace(&config.name, &PostParams::default(), &lease)
            .await,
    )
}

async fn release(api: &Api<Lease>, config: &LeaseConfig) -> Result<()> {
    if let Some(mut lease) = api.get_opt(&config.name).await? {
        if let Some(spec) = lease.spec.as_mut() {
            if spec.holder_identity.as_deref() == Some(config.holder.as_str()) {
                spec.holder_identity = None;
                spec.renew_time = None;
                conflict_is_false(
                    api.replace(&config.name, &PostParams::default(), &lease)
                        .await,
                )?;
            }
        }
    }
    Ok(())
}

fn conflict_is_false<T>(result: kube::Result<T>) -> Result<bool> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests;
