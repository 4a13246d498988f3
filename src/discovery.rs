//! MCP authorization discovery: OAuth 2.0 Protected Resource Metadata (RFC 9728).
//!
//! The gateway is the protected resource. Clients that get a 401 follow the
//! `resource_metadata` URL in `WWW-Authenticate` to learn which authorization servers
//! issue tokens for it and which scopes exist.

use crate::config::{err, ConfigError, RawResourceMetadata, Server};
use serde_json::{json, Map, Value};

/// Protected resource metadata, compiled.
#[derive(Debug, Clone)]
pub struct ResourceMetadata {
    pub public_url: Option<String>,
    pub authorization_servers: Vec<String>,
    pub scopes_supported: Vec<String>,
    pub required_scopes: Vec<String>,
    pub resource_name: Option<String>,
    pub resource_documentation: Option<String>,
}

impl TryFrom<RawResourceMetadata> for ResourceMetadata {
    type Error = ConfigError;

    fn try_from(raw: RawResourceMetadata) -> Result<ResourceMetadata, ConfigError> {
        if let Some(url) = &raw.public_url {
            let ok = (url.starts_with("https://") || url.starts_with("http://")) && !url.ends_with('/');
            if !ok {
                return Err(err("public_url", format!("{url:?} must be an http(s) URL without a trailing '/'")));
            }
        }
        if raw.authorization_servers.is_empty() {
            return Err(err("authorization_servers", "at least one authorization server is required"));
        }
        for (i, scope) in raw.required_scopes.iter().enumerate() {
            if scope.is_empty() || scope.contains([' ', '"', '\\']) {
                return Err(err(format!("required_scopes[{i}]"), format!("{scope:?} is not a valid scope")));
            }
        }
        Ok(ResourceMetadata {
            public_url: raw.public_url,
            authorization_servers: raw.authorization_servers,
            scopes_supported: raw.scopes_supported,
            required_scopes: raw.required_scopes,
            resource_name: raw.resource_name,
            resource_documentation: raw.resource_documentation,
        })
    }
}

/// Where the metadata lives; a server's document is at this path plus its prefix.
pub const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// The public base URL: configured, or the request's scheme and Host.
pub fn base_url(md: &ResourceMetadata, scheme: Option<&str>, authority: Option<&str>) -> String {
    if let Some(url) = &md.public_url {
        return url.clone();
    }
    let scheme = match scheme {
        Some("https") => "https",
        _ => "http",
    };
    // The Host is the client's own word; keep only characters a host:port can have so it
    // cannot inject into the header or the document.
    let host: String = authority
        .unwrap_or("localhost")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        .take(255)
        .collect();
    format!("{scheme}://{host}")
}

/// The metadata URL for a server, by the path prefix the client used for it (or for the
/// gateway as a whole).
pub fn metadata_url(base: &str, prefix: Option<&str>) -> String {
    format!("{base}{WELL_KNOWN}{}", prefix.unwrap_or_default())
}

/// The metadata document of the resource at `prefix` (or of the gateway).
pub fn document(md: &ResourceMetadata, base: &str, prefix: Option<&str>) -> Value {
    let mut doc = Map::new();
    let resource = format!("{base}{}", prefix.unwrap_or_default());
    doc.insert("resource".into(), json!(resource));
    doc.insert("authorization_servers".into(), json!(md.authorization_servers));
    doc.insert("bearer_methods_supported".into(), json!(["header"]));
    if !md.scopes_supported.is_empty() {
        doc.insert("scopes_supported".into(), json!(md.scopes_supported));
    }
    if let Some(name) = &md.resource_name {
        doc.insert("resource_name".into(), json!(name));
    }
    if let Some(url) = &md.resource_documentation {
        doc.insert("resource_documentation".into(), json!(url));
    }
    Value::Object(doc)
}

/// Which document a well-known path asks for: `Some(None)` for the gateway's,
/// `Some(Some(prefix))` for a server's at one of its prefixes, `None` when the path names
/// neither.
pub fn lookup<'a>(servers: &'a [Server], path: &str) -> Option<Option<&'a str>> {
    let rest = path.split('?').next()?.strip_prefix(WELL_KNOWN)?;
    if rest.is_empty() {
        return Some(None);
    }
    servers.iter().flat_map(|s| s.prefixes.iter()).find(|p| *p == rest).map(|p| Some(p.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamAuth;

    fn md(public_url: Option<&str>) -> ResourceMetadata {
        ResourceMetadata {
            public_url: public_url.map(str::to_owned),
            authorization_servers: vec!["https://idp.example/realms/acme".into()],
            scopes_supported: vec!["mcp:read".into()],
            required_scopes: vec![],
            resource_name: Some("Acme MCP".into()),
            resource_documentation: None,
        }
    }

    fn servers() -> Vec<Server> {
        vec![Server {
            name: "github".into(),
            path_prefix: "/mcp/github".into(),
            prefixes: vec!["/mcp/github".into(), "/proxy/github/mcp".into()],
            upstream_auth: UpstreamAuth::None,
            kind: Default::default(),
            regions: Default::default(),
            federation: None,
        }]
    }

    #[test]
    fn documents_name_the_resource_and_its_authorization_servers() {
        let base = base_url(&md(Some("https://mcp.example.com")), Some("http"), Some("ignored"));
        let doc = document(&md(None), &base, Some("/mcp/github"));
        assert_eq!(doc["resource"], "https://mcp.example.com/mcp/github");
        assert_eq!(doc["authorization_servers"][0], "https://idp.example/realms/acme");
        assert_eq!(doc["scopes_supported"][0], "mcp:read");
        assert_eq!(
            metadata_url(&base, Some("/mcp/github")),
            "https://mcp.example.com/.well-known/oauth-protected-resource/mcp/github"
        );
        assert_eq!(document(&md(None), &base, None)["resource"], "https://mcp.example.com");
    }

    #[test]
    fn base_url_falls_back_to_a_sanitized_host() {
        assert_eq!(base_url(&md(None), Some("https"), Some("gw.local:8443")), "https://gw.local:8443");
        assert_eq!(base_url(&md(None), None, Some("evil\"host, x=\"1")), "http://evilhostx1");
    }

    #[test]
    fn well_known_paths_map_to_documents() {
        let s = servers();
        assert!(matches!(lookup(&s, WELL_KNOWN), Some(None)));
        assert_eq!(lookup(&s, "/.well-known/oauth-protected-resource/mcp/github"), Some(Some("/mcp/github")));
        // The resource at the seed's path form has its own document.
        assert_eq!(
            lookup(&s, "/.well-known/oauth-protected-resource/proxy/github/mcp"),
            Some(Some("/proxy/github/mcp"))
        );
        assert!(lookup(&s, "/.well-known/oauth-protected-resource/mcp/gitlab").is_none());
        assert!(lookup(&s, "/mcp/github").is_none());
    }
}
