//! Names of the filter's Envoy stats.
//!
//! Envoy prefixes every stat a wasm filter defines with `wasmcustom.`. Stats that are
//! counted per decision, MCP method, server or failure reason carry those values in
//! their names, one `.label.value.` pair each, so that Envoy's tag extraction
//! (`stats_config.stats_tags`, see [`STATS_CONFIG_YAML`]) turns them into Prometheus
//! labels (Envoy's Prometheus output drops the `wasmcustom` namespace):
//!
//! ```text
//! wasmcustom.mcp_gateway.decision.allow.method.tools/call.server.github.requests
//!   -> mcp_gateway_requests{mcp_decision="allow",mcp_method="tools/call",mcp_server="github"}
//! wasmcustom.mcp_gateway.reason.expired.auth_failures
//!   -> mcp_gateway_auth_failures{mcp_auth_failure="expired"}
//! ```
//!
//! Every value comes from a fixed set (a method the caller sent that is not an MCP
//! method counts as `other`; server names are configured and made of `[A-Za-z0-9_-]`),
//! so the number of stats is bounded whatever clients send.

use crate::audit::Outcome;
use crate::jsonrpc::KNOWN_METHODS;
use crate::jwt::AuthError;
use crate::reject::Refusal;

/// The filter time histogram, in microseconds spent in the filter's hooks per request.
pub const FILTER_TIME: &str = "mcp_gateway.filter_time_us";

/// The bootstrap's `stats_config`: `stats_tags` that turn the labelled names into
/// Prometheus labels, and buckets (microseconds) for the filter time. The same block is
/// in `envoy/demo.yaml` (a test keeps them equal) and in the tests' bootstrap.
pub const STATS_CONFIG_YAML: &str = r#"stats_config:
  stats_tags:
  - tag_name: mcp_decision
    regex: '^wasmcustom\.mcp_gateway\.(decision\.([^.]+)\.)'
  - tag_name: mcp_method
    regex: '^wasmcustom\.mcp_gateway\.decision\.[^.]+\.(method\.([^.]+)\.)'
  - tag_name: mcp_server
    regex: '^wasmcustom\.mcp_gateway\.decision\.[^.]+\.method\.[^.]+\.(server\.([^.]+)\.)'
  - tag_name: mcp_auth_failure
    regex: '^wasmcustom\.mcp_gateway\.(reason\.([^.]+)\.)auth_failures$'
  histogram_bucket_settings:
  - match: { exact: wasmcustom.mcp_gateway.filter_time_us }
    buckets: [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000]
"#;

/// The method label: an MCP method (one of [`KNOWN_METHODS`]), `other`, or `none` for
/// requests without a JSON-RPC method (GET streams, DELETE, the sidecar's API, requests
/// refused before their body).
pub fn method_label(method: Option<&str>) -> &'static str {
    match method {
        None => "none",
        Some(m) => KNOWN_METHODS.iter().find(|known| **known == m).copied().unwrap_or("other"),
    }
}

pub fn decision_label(decision: Option<Outcome>) -> &'static str {
    match decision {
        Some(Outcome::Allow) => "allow",
        Some(Outcome::Deny) => "deny",
        Some(Outcome::WouldDeny) => "would_deny",
        None => "none",
    }
}

/// The requests counter for one (decision, method, server); `server` is a configured
/// server name or `None` (no server at the request's path).
pub fn requests_name(decision: &str, method: &str, server: Option<&str>) -> String {
    format!("mcp_gateway.decision.{decision}.method.{method}.server.{}.requests", server.unwrap_or("none"))
}

/// The authentication failures counter for one reason.
pub fn auth_failures_name(reason: &str) -> String {
    format!("mcp_gateway.reason.{reason}.auth_failures")
}

/// Why authentication failed, as a label; `None` when the refusal is not about who
/// is calling.
pub fn auth_failure(refusal: &Refusal) -> Option<&'static str> {
    Some(match refusal {
        Refusal::Auth(e) => match e {
            AuthError::MissingToken => "missing_token",
            AuthError::MultipleAuthorizationHeaders => "multiple_authorization_headers",
            AuthError::NotBearer => "not_bearer",
            AuthError::EmptyToken => "empty_token",
            AuthError::TooLarge { .. } => "too_large",
            AuthError::Malformed => "malformed",
            AuthError::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            AuthError::UnknownKeyId => "unknown_key_id",
            AuthError::BadSignature => "bad_signature",
            AuthError::MissingExpiry => "missing_expiry",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::MissingSubject => "missing_subject",
            AuthError::Delegation(_) => "delegation",
        },
        Refusal::KeysUnavailable { .. } => "keys_unavailable",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_fixed_sets() {
        assert_eq!(method_label(Some("tools/call")), "tools/call");
        assert_eq!(method_label(Some("tools/call.x")), "other");
        assert_eq!(method_label(Some("a.b.c")), "other");
        assert_eq!(method_label(None), "none");
        assert_eq!(
            requests_name("allow", "tools/call", Some("github")),
            "mcp_gateway.decision.allow.method.tools/call.server.github.requests"
        );
        assert_eq!(requests_name("deny", "none", None), "mcp_gateway.decision.deny.method.none.server.none.requests");
        assert_eq!(auth_failure(&Refusal::Auth(AuthError::Expired)), Some("expired"));
        assert_eq!(auth_failure(&Refusal::UnknownServer), None);
        // No label value may hold a dot: it would split the name differently.
        for m in KNOWN_METHODS {
            assert!(!m.contains('.'), "{m}");
        }
    }
}

#[cfg(test)]
mod demo {
    #[test]
    fn the_demo_bootstrap_has_the_same_stats_config() {
        assert!(include_str!("../envoy/demo.yaml").contains(super::STATS_CONFIG_YAML));
    }
}
