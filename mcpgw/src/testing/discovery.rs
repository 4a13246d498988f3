//! What a real MCP client learns from a 401: RFC 9728 protected resource metadata discovery,
//! done by rmcp's own client code rather than by a re-implementation in the test.
//!
//! 1. rmcp's Streamable HTTP client connects without a token; the 401 fails the handshake and
//!    rmcp hands back the `WWW-Authenticate` challenge.
//! 2. rmcp's `AuthorizationManager` resolves authorization server metadata from that challenge:
//!    it follows `resource_metadata`, checks that the document's `resource` identifies the MCP
//!    URL, then asks the authorization servers it names for their metadata.
//!
//! rmcp keeps the protected resource metadata to itself, so its HTTP client is wrapped to
//! record what came back from the URL the challenge advertised.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{bail, Context as _};
use rmcp::transport::auth::{
    default_oauth_http_client, AuthError, AuthorizationManager, AuthorizationMetadataSource, OAuthHttpClient,
    OAuthHttpClientFuture, OAuthHttpRequest, WWWAuthenticateParams,
};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt as _;
use serde_json::Value;
use url::Url;

/// Bound on the unauthenticated handshake, so a server that never answers fails the test.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The outcome of [`discover`].
#[derive(Debug, Clone)]
pub struct Discovery {
    /// `WWW-Authenticate` of the 401 the handshake got.
    pub challenge: String,
    /// Its `resource_metadata` parameter, resolved against the MCP URL.
    pub resource_metadata_url: String,
    /// The protected resource metadata document served there, which rmcp accepted.
    pub resource_metadata: Value,
    /// Authorization server metadata found through it; `None` when none of the servers the
    /// document names answered with usable metadata (rmcp rejects that, but a test of the
    /// resource server alone need not run an authorization server).
    pub authorization_server: Option<Value>,
}

/// The protected resource metadata a real MCP client discovers after connecting to `mcp_url`
/// without a token. Fails unless the server answered 401 with a `resource_metadata` challenge
/// and served, at that URL, a document that rmcp accepts for `mcp_url`.
pub async fn discover_resource_metadata(mcp_url: &str) -> anyhow::Result<Value> {
    Ok(discover(mcp_url).await?.resource_metadata)
}

/// Like [`discover_resource_metadata`], with the challenge and authorization server metadata.
pub async fn discover(mcp_url: &str) -> anyhow::Result<Discovery> {
    let base = Url::parse(mcp_url).with_context(|| format!("not a URL: {mcp_url}"))?;
    let challenge = unauthenticated_challenge(mcp_url).await?;
    let resource_metadata_url = WWWAuthenticateParams::parse(&challenge, &base)
        .resource_metadata_url
        .with_context(|| format!("401 challenge names no usable resource_metadata: {challenge}"))?;

    let exchanges = Arc::new(Mutex::new(Vec::new()));
    let recorder = Recorder { inner: default_oauth_http_client()?, exchanges: exchanges.clone() };
    let manager = AuthorizationManager::new_with_oauth_http_client(mcp_url, Arc::new(recorder))
        .await
        .context("cannot create rmcp authorization manager")?;
    let resolved = manager.resolve_metadata_from_challenge(Some(&challenge)).await;
    let authorization_server = match resolved {
        Ok(resolution) if resolution.source == AuthorizationMetadataSource::ProtectedResourceMetadata => {
            Some(serde_json::to_value(resolution.metadata)?)
        }
        Ok(resolution) => bail!("rmcp found no protected resource metadata (fell back to {:?})", resolution.source),
        // Both come after rmcp accepted the document; which one depends on whether the
        // authorization server was unreachable or answered without metadata.
        Err(AuthError::AuthorizationServersUnavailable { .. }) => None,
        Err(AuthError::DiscoveryRequestFailed { url, .. }) if url != resource_metadata_url => None,
        Err(e) => return Err(e).context("rmcp rejected the protected resource metadata"),
    };

    let exchanges = exchanges.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(exchange) = exchanges.iter().find(|exchange| exchange.url == resource_metadata_url) else {
        bail!("rmcp never fetched {resource_metadata_url}");
    };
    if exchange.status != 200 {
        bail!("{resource_metadata_url} answered {} (rmcp found metadata elsewhere)", exchange.status);
    }
    let resource_metadata = serde_json::from_slice(&exchange.body)
        .with_context(|| format!("{resource_metadata_url} did not serve JSON"))?;
    Ok(Discovery {
        challenge,
        resource_metadata_url: resource_metadata_url.to_string(),
        resource_metadata,
        authorization_server,
    })
}

/// Runs rmcp's MCP handshake without a token and returns the challenge of the 401.
async fn unauthenticated_challenge(mcp_url: &str) -> anyhow::Result<String> {
    let transport = StreamableHttpClientTransport::from_uri(mcp_url.to_owned());
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, ().serve(transport))
        .await
        .with_context(|| format!("MCP handshake with {mcp_url} timed out"))?;
    match handshake {
        Ok(service) => {
            let _ = service.cancel().await;
            bail!("{mcp_url} accepted an MCP session without a token")
        }
        Err(e) => match e.auth_challenge() {
            Some(challenge) => Ok(challenge.to_owned()),
            None => Err(e).with_context(|| format!("{mcp_url} failed without a 401 challenge")),
        },
    }
}

/// One HTTP exchange rmcp's authorization code made.
#[derive(Debug)]
struct Exchange {
    url: Url,
    status: u16,
    body: Vec<u8>,
}

/// rmcp's HTTP client, remembering every response.
struct Recorder<C> {
    inner: C,
    exchanges: Arc<Mutex<Vec<Exchange>>>,
}

impl<C: OAuthHttpClient> OAuthHttpClient for Recorder<C> {
    fn execute(&self, request: OAuthHttpRequest) -> OAuthHttpClientFuture<'_> {
        let url = Url::parse(&request.request.uri().to_string());
        Box::pin(async move {
            let response = self.inner.execute(request).await?;
            if let Ok(url) = url {
                self.exchanges.lock().unwrap_or_else(PoisonError::into_inner).push(Exchange {
                    url,
                    status: response.status().as_u16(),
                    body: response.body().clone(),
                });
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::jwks::JwksServer;
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use serde_json::json;
    use tokio::net::TcpListener;

    /// Path form of RFC 9728 §3.1 for a resource at `/mcp/github`.
    const METADATA_PATH: &str = "/.well-known/oauth-protected-resource/mcp/github";

    /// A resource server stand-in: every MCP request gets 401 with `challenge`; the metadata
    /// path serves `metadata`.
    async fn stub(challenge: impl Fn(&str) -> String, metadata: impl Fn(&str) -> Value) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let challenge = challenge(&base);
        let metadata = metadata(&base);
        let app = Router::new()
            .route(
                "/mcp/github",
                post(move || async move {
                    (
                        StatusCode::UNAUTHORIZED,
                        [(header::WWW_AUTHENTICATE, challenge)],
                        Json(json!({
                            "jsonrpc": "2.0", "id": null,
                            "error": { "code": -32001, "message": "unauthorized" }
                        })),
                    )
                        .into_response()
                }),
            )
            .route(METADATA_PATH, get(move || async move { Json(metadata) }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("{base}/mcp/github")
    }

    fn challenge_to(base: &str) -> String {
        format!("Bearer resource_metadata=\"{base}{METADATA_PATH}\"")
    }

    #[tokio::test]
    async fn finds_metadata_and_authorization_server_through_the_challenge() {
        let idp = JwksServer::start(TcpListener::bind("127.0.0.1:0").await.unwrap()).await.unwrap();
        let issuer = idp.url();
        let url = stub(challenge_to, |base| {
            json!({
                "resource": format!("{base}/mcp/github"),
                "authorization_servers": [issuer],
                "bearer_methods_supported": ["header"],
            })
        })
        .await;

        let discovery = discover(&url).await.unwrap();
        assert_eq!(discovery.resource_metadata["resource"], url.as_str());
        assert_eq!(discovery.resource_metadata["bearer_methods_supported"], json!(["header"]));
        assert!(discovery.resource_metadata_url.ends_with(METADATA_PATH));
        assert!(discovery.challenge.starts_with("Bearer resource_metadata="));
        let authorization_server = discovery.authorization_server.unwrap();
        assert_eq!(authorization_server["jwks_uri"], idp.jwks_url());
        assert_eq!(discover_resource_metadata(&url).await.unwrap(), discovery.resource_metadata);
    }

    #[tokio::test]
    async fn tolerates_an_authorization_server_without_metadata() {
        // The stub itself answers 404 for metadata; nothing listens on port 9.
        for unusable in [None, Some("http://127.0.0.1:9")] {
            let url = stub(challenge_to, |base| {
                json!({
                    "resource": format!("{base}/mcp/github"),
                    "authorization_servers": [unusable.unwrap_or(base)],
                })
            })
            .await;
            let discovery = discover(&url).await.unwrap();
            assert!(discovery.authorization_server.is_none(), "{unusable:?}");
            assert_eq!(discovery.resource_metadata["resource"], url.as_str());
        }
    }

    #[tokio::test]
    async fn rejects_metadata_for_another_resource() {
        let url = stub(challenge_to, |base| {
            json!({
                "resource": format!("{base}/mcp/filesystem"),
                "authorization_servers": ["http://127.0.0.1:9/"],
            })
        })
        .await;
        let error = format!("{:#}", discover(&url).await.unwrap_err());
        assert!(error.contains("resource mismatch"), "{error}");
    }

    #[tokio::test]
    async fn rejects_a_challenge_without_resource_metadata() {
        let url = stub(|_| "Bearer realm=\"mcp\"".to_owned(), |_| json!({})).await;
        let error = format!("{:#}", discover(&url).await.unwrap_err());
        assert!(error.contains("no usable resource_metadata"), "{error}");
    }

    #[tokio::test]
    async fn rejects_a_server_that_needs_no_token() {
        let server =
            crate::spawn(crate::ServerKind::Test, TcpListener::bind("127.0.0.1:0").await.unwrap()).await.unwrap();
        let error = format!("{:#}", discover(&server.url()).await.unwrap_err());
        assert!(error.contains("without a token"), "{error}");
    }
}
