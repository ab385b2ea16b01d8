//! The cluster token of the edge mode: the secret every node-to-node call carries (node
//! agents, replication). It lives in one Secret in Warren's namespace; the first Warren
//! to start creates it with a random value, every other one reads it. No manual step, and
//! never a default token. (The standard mode's chart makes its Secret and mounts it.)
//!
//! Creation races are settled by the API server: of two creates, one gets 409 and then
//! reads the winner's token.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use kube::Client;

use crate::error::{Error, Result};

const KEY: &str = "token";
/// Shorter tokens are refused (the agent and the replication handshake want at least 16).
const MIN_LEN: usize = 16;

/// A random token: two v4 UUIDs, 244 bits from the OS's random source, as hex.
fn random_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn token_of(secret: &Secret) -> Result<String> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(KEY))
        .map(|b| b.0.clone())
        .ok_or_else(|| Error::Invalid(format!("Secret has no {KEY:?} key")))?;
    let token = String::from_utf8(bytes)
        .map_err(|_| Error::Invalid("the cluster token is not UTF-8".into()))?
        .trim()
        .to_string();
    if token.len() < MIN_LEN {
        return Err(Error::Invalid(format!(
            "the cluster token is shorter than {MIN_LEN} characters"
        )));
    }
    Ok(token)
}

/// `ensure` with the in-cluster (or kubeconfig) client.
pub async fn ensure_in_cluster(namespace: &str, name: &str) -> Result<String> {
    ensure(Client::try_default().await?, namespace, name).await
}

/// The token in Secret `name` of `namespace`, created first if there is none.
pub async fn ensure(client: Client, namespace: &str, name: &str) -> Result<String> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    if let Some(secret) = api.get_opt(name).await? {
        return token_of(&secret);
    }
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                "warren".to_string(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            KEY.to_string(),
            ByteString(random_token().into_bytes()),
        )])),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(created) => {
            tracing::info!(secret = %name, "created the cluster token");
            token_of(&created)
        }
        // Another node's Warren made it first: use theirs.
        Err(kube::Error::Api(s)) if s.code == 409 => token_of(&api.get(name).await?),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use http::Method;
    use serde_json::json;

    use super::*;
    use crate::test_support::mock_api::{pair, within};

    const PATH: &str = "/api/v1/namespaces/warren-system/secrets";

    fn secret_with(token: &str) -> serde_json::Value {
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("warren-agent-token".into()),
                namespace: Some("warren-system".into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                "token".to_string(),
                ByteString(token.as_bytes().to_vec()),
            )])),
            ..Default::default()
        };
        let mut value = serde_json::to_value(secret).unwrap();
        value["apiVersion"] = json!("v1");
        value["kind"] = json!("Secret");
        value
    }

    #[tokio::test]
    async fn an_existing_token_is_read() {
        within(async {
            let (client, mut api) = pair();
            let task = tokio::spawn(ensure(client, "warren-system", "warren-agent-token"));
            api.expect(Method::GET, &format!("{PATH}/warren-agent-token"))
                .await
                .ok(secret_with("0123456789abcdef-existing"));
            assert_eq!(api.finish(task).await.unwrap(), "0123456789abcdef-existing");
        })
        .await
    }

    #[tokio::test]
    async fn a_missing_token_is_created_random_and_a_lost_race_reads_the_winner() {
        within(async {
            let (client, mut api) = pair();
            let task = tokio::spawn(ensure(
                client.clone(),
                "warren-system",
                "warren-agent-token",
            ));
            api.expect(Method::GET, &format!("{PATH}/warren-agent-token"))
                .await
                .not_found();
            let create = api.expect(Method::POST, PATH).await;
            let sent: Secret = serde_json::from_value(create.body.clone()).unwrap();
            create.echo(201);
            let made = api.finish(task).await.unwrap();
            assert_eq!(made.len(), 64);
            assert!(made.bytes().all(|b| b.is_ascii_hexdigit()));
            assert_eq!(token_of(&sent).unwrap(), made);

            let task = tokio::spawn(ensure(client, "warren-system", "warren-agent-token"));
            api.expect(Method::GET, &format!("{PATH}/warren-agent-token"))
                .await
                .not_found();
            api.expect(Method::POST, PATH).await.conflict();
            api.expect(Method::GET, &format!("{PATH}/warren-agent-token"))
                .await
                .ok(secret_with("0123456789abcdef-winner"));
            assert_eq!(api.finish(task).await.unwrap(), "0123456789abcdef-winner");
        })
        .await
    }

    #[tokio::test]
    async fn a_short_token_is_refused() {
        within(async {
            let (client, mut api) = pair();
            let task = tokio::spawn(ensure(client, "warren-system", "warren-agent-token"));
            api.expect(Method::GET, &format!("{PATH}/warren-agent-token"))
                .await
                .ok(secret_with("short"));
            assert!(api.finish(task).await.is_err());
        })
        .await
    }
}
