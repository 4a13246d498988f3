//! The audit record: one JSON line per request, allowed or denied.
//!
//! Arguments are copied into the record only after redaction: any object key that names
//! a secret (at any depth), and any string that looks like a bearer token or JWT, is
//! replaced; long strings are cut so a record stays small.

use serde::Serialize;
use serde_json::{Map, Value};

/// Prefix of every audit line in Envoy's log, so collectors can pick them out.
pub const LOG_PREFIX: &str = "mcp_audit ";

pub const REDACTED: &str = "[REDACTED]";

/// Key names whose values are always redacted. A key matches when, lowercased and with
/// `-`/`_`/`.` removed, it equals or ends with one of these (so `client_secret`,
/// `X-Api-Key` and `accessToken` match, while `issue_key` does not).
pub const DEFAULT_REDACT_FIELDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "apikey",
    "privatekey",
    "accesskey",
    "secretkey",
    "signingkey",
    "authorization",
    "credential",
    "credentials",
    "cookie",
];

/// How arguments are redacted.
#[derive(Debug, Clone)]
pub struct Redactor {
    /// Normalized sensitive key names.
    fields: Vec<String>,
    /// Strings longer than this many bytes are cut.
    max_string_bytes: usize,
}

fn normalize_key(key: &str) -> String {
    key.chars().filter(|c| !matches!(c, '-' | '_' | '.')).flat_map(char::to_lowercase).collect()
}

impl Redactor {
    pub fn new<S: AsRef<str>>(fields: &[S], max_string_bytes: usize) -> Redactor {
        Redactor { fields: fields.iter().map(|f| normalize_key(f.as_ref())).collect(), max_string_bytes }
    }

    fn is_sensitive_key(&self, key: &str) -> bool {
        let key = normalize_key(key);
        self.fields.iter().any(|f| key.ends_with(f.as_str()))
    }

    /// A copy of `value` that is safe to write to the audit log.
    pub fn redact(&self, value: &Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| {
                        let v = if self.is_sensitive_key(k) { Value::String(REDACTED.into()) } else { self.redact(v) };
                        (k.clone(), v)
                    })
                    .collect::<Map<String, Value>>(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(|v| self.redact(v)).collect()),
            Value::String(s) if looks_like_credential(s) => Value::String(REDACTED.into()),
            Value::String(s) if s.len() > self.max_string_bytes => {
                let mut cut = self.max_string_bytes;
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                Value::String(format!("{}...[{} bytes]", s.get(..cut).unwrap_or_default(), s.len()))
            }
            other => other.clone(),
        }
    }
}

/// A bearer header value, or a compact JWS (three base64url segments, the first a JSON
/// header).
fn looks_like_credential(s: &str) -> bool {
    let t = s.trim();
    if t.len() > 7 && t.get(..7).is_some_and(|p| p.eq_ignore_ascii_case("bearer ")) {
        return true;
    }
    let parts: Vec<&str> = t.split('.').collect();
    parts.len() == 3
        && t.starts_with("eyJ")
        && parts
            .iter()
            .take(2)
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

/// Allowed or denied, and by what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Allow,
    Deny,
    /// Denied by a policy in shadow mode; let through.
    WouldDeny,
}

/// One request, as auditors see it. Field names follow the product brief.
#[derive(Debug, Clone, Serialize, Default)]
pub struct AuditRecord {
    /// RFC 3339, UTC, milliseconds.
    pub timestamp: String,
    pub request_id: String,
    pub user_id: Option<String>,
    pub roles: Vec<String>,
    pub server: Option<String>,
    /// HTTP method (POST, GET, DELETE).
    pub http_method: String,
    /// JSON-RPC method, for POST.
    pub method: Option<String>,
    /// Tool, resource URI or prompt name the method acts on.
    pub target: Option<String>,
    pub jsonrpc_id: Option<Value>,
    /// Redacted arguments.
    pub params: Option<Value>,
    pub decision: Option<Outcome>,
    /// The rule (role) that allowed, or why it was denied.
    pub reason: Option<String>,
    /// Items removed from a list reply because the caller may not use them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hidden: Option<Vec<String>>,
    /// True when allowed and the upstream answered below 400.
    pub success: bool,
    pub status: u32,
    /// Milliseconds from request headers to the end of the response.
    pub response_time_ms: u64,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub session_id: Option<String>,
}

impl AuditRecord {
    /// The log line: prefix and compact JSON.
    pub fn to_line(&self) -> String {
        format!("{LOG_PREFIX}{}", serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned()))
    }
}

/// Formats a time as RFC 3339 with milliseconds.
pub fn timestamp(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn redactor() -> Redactor {
        Redactor::new(DEFAULT_REDACT_FIELDS, 64)
    }

    #[test]
    fn redacts_sensitive_keys_at_any_depth() {
        let out = redactor().redact(&json!({
            "file_path": "/public/a",
            "issue_key": "PROJ-1",
            "auth": {"password": "hunter2", "nested": [{"client_secret": "s3"}, {"X-Api-Key": "k"}]},
            "accessToken": "abc",
        }));
        assert_eq!(
            out,
            json!({
                "file_path": "/public/a",
                "issue_key": "PROJ-1",
                "auth": {"password": REDACTED, "nested": [{"client_secret": REDACTED}, {"X-Api-Key": REDACTED}]},
                "accessToken": REDACTED,
            })
        );
    }

    #[test]
    fn redacts_values_that_look_like_tokens() {
        let out = redactor().redact(&json!({
            "note": "Bearer abc.def",
            "jwt": ["eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.sig"],
            "plain": "hello.world.x",
        }));
        assert_eq!(out, json!({"note": REDACTED, "jwt": [REDACTED], "plain": "hello.world.x"}));
    }

    #[test]
    fn cuts_long_strings_on_a_char_boundary() {
        let long = "é".repeat(100);
        let out = redactor().redact(&json!(long));
        let s = out.as_str().unwrap();
        assert!(s.ends_with("...[200 bytes]"), "{s}");
        assert!(s.len() < 100);
    }

    #[test]
    fn record_is_one_prefixed_json_line() {
        let r =
            AuditRecord { request_id: "r1".into(), decision: Some(Outcome::Deny), status: 403, ..Default::default() };
        let line = r.to_line();
        assert!(line.starts_with(LOG_PREFIX));
        let v: Value = serde_json::from_str(&line[LOG_PREFIX.len()..]).unwrap();
        assert_eq!(v["decision"], "deny");
        assert_eq!(v["status"], 403);
        assert!(!line.contains('\n'));
    }
}
