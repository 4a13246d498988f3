//! The audit record: one JSON line per request, allowed or denied.
//!
//! Arguments are copied into the record only after redaction: any object key that names
//! a secret (at any depth), and any string that looks like a bearer token, a JWT or holds
//! a common API key (GitHub, OpenAI/Anthropic, Slack, AWS), is replaced; long strings are
//! cut so a record stays small.

use crate::config::RawAudit;
use serde::Serialize;
use serde_json::Value;

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
        let mut copy = value.clone();
        self.redact_in_place(&mut copy);
        copy
    }

    /// Makes `value` safe to write to the audit log, in place (the request path hands over
    /// arguments it no longer needs, so nothing is copied).
    pub fn redact_in_place(&self, value: &mut Value) {
        match value {
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    if self.is_sensitive_key(k) {
                        *v = Value::String(REDACTED.into());
                    } else {
                        self.redact_in_place(v);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.redact_in_place(v)),
            Value::String(s) if looks_like_credential(s) => *s = REDACTED.into(),
            Value::String(s) if s.len() > self.max_string_bytes => {
                let cut = s.floor_char_boundary(self.max_string_bytes);
                *s = format!("{}...[{} bytes]", s.get(..cut).unwrap_or_default(), s.len());
            }
            _ => {}
        }
    }
}

impl Redactor {
    /// Makes free text from outside (an upstream's error message) safe to record: it is
    /// replaced whole when it holds a credential, as an argument string would be.
    pub fn redact_text(&self, text: &mut String) {
        if looks_like_credential(text) {
            *text = REDACTED.into();
        }
    }
}

impl From<RawAudit> for Redactor {
    fn from(raw: RawAudit) -> Redactor {
        Redactor::new(&raw.redact_fields, raw.max_string_bytes)
    }
}

/// A bearer header value, or a string holding a compact JWS or a common API-key shape
/// anywhere in it (a key pasted into a URL, a command line or `KEY=value` is as secret as
/// one on its own).
fn looks_like_credential(s: &str) -> bool {
    let t = s.trim();
    if t.len() > 7 && t.get(..7).is_some_and(|p| p.eq_ignore_ascii_case("bearer ")) {
        return true;
    }
    let bytes = t.as_bytes();
    (0..bytes.len()).any(|at| {
        let prev = at.checked_sub(1).and_then(|i| bytes.get(i));
        let rest = bytes.get(at..).unwrap_or_default();
        // A key only counts at the start of a word, so `task-...` is not an `sk-` key. A
        // JWS must not start inside another base64url run either, which also keeps this
        // scan linear: no two starts examine the same segment.
        let word_start = !prev.is_some_and(u8::is_ascii_alphanumeric);
        let segment_start = !prev.is_some_and(|b| is_base64url(b) || *b == b'.');
        (segment_start && jws_at(rest)) || (word_start && KEY_SHAPES.iter().any(|k| k.matches(rest)))
    })
}

/// A compact JWS (or JWE) starts here: `eyJ` (base64url of `{"`), then two non-empty
/// base64url segments, each ended by a `.`.
fn jws_at(rest: &[u8]) -> bool {
    rest.strip_prefix(b"eyJ").and_then(|tail| after_segment(tail, 0)).and_then(|tail| after_segment(tail, 1)).is_some()
}

/// What follows a base64url segment of at least `min` bytes and the `.` that ends it.
fn after_segment(s: &[u8], min: usize) -> Option<&[u8]> {
    let run = s.iter().take_while(|b| is_base64url(b)).count();
    (run >= min && s.get(run) == Some(&b'.')).then(|| s.get(run + 1..).unwrap_or_default())
}

fn is_base64url(b: &u8) -> bool {
    b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_'
}

fn is_alnum_or_underscore(b: &u8) -> bool {
    b.is_ascii_alphanumeric() || *b == b'_'
}

fn is_alnum_or_dash(b: &u8) -> bool {
    b.is_ascii_alphanumeric() || *b == b'-'
}

fn is_upper_or_digit(b: &u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit()
}

/// An API key format: a vendor prefix, then a run of key characters. The minimum length
/// and, for prefixes that read like words (`sk-`, `xoxb-`), a required digit keep prose
/// such as `sk-learn` or `ghp_config` out.
struct KeyShape {
    /// `?` stands for any ASCII letter.
    prefix: &'static [u8],
    charset: fn(&u8) -> bool,
    min: usize,
    /// The run must be exactly `min` long and not be followed by a letter or digit.
    exact: bool,
    /// A digit within the first `min + KEY_SCAN_BYTES` key characters.
    needs_digit: bool,
}

impl KeyShape {
    const fn new(prefix: &'static [u8], charset: fn(&u8) -> bool, min: usize) -> KeyShape {
        KeyShape { prefix, charset, min, exact: false, needs_digit: false }
    }

    fn matches(&self, rest: &[u8]) -> bool {
        let prefix_ok = rest.len() >= self.prefix.len()
            && self.prefix.iter().zip(rest).all(|(&p, &b)| p == b || (p == b'?' && b.is_ascii_alphabetic()));
        if !prefix_ok {
            return false;
        }
        let tail = rest.get(self.prefix.len()..).unwrap_or_default();
        // Bounded, so a string of repeated prefixes costs linear time, not quadratic.
        let run = tail.iter().take(self.min + KEY_SCAN_BYTES).take_while(|b| (self.charset)(b)).count();
        let body = tail.get(..run).unwrap_or_default();
        let long_enough = if self.exact {
            run == self.min && !tail.get(run).is_some_and(u8::is_ascii_alphanumeric)
        } else {
            run >= self.min
        };
        long_enough && (!self.needs_digit || body.iter().any(u8::is_ascii_digit))
    }
}

/// How far past its minimum length a key is read (for its digit, and its end).
const KEY_SCAN_BYTES: usize = 64;

/// GitHub (`ghp_` personal, `gho_` OAuth, `ghs_` app server, `ghu_` app user, `ghr_`
/// refresh, `github_pat_` fine-grained), OpenAI/Anthropic (`sk-`, `sk-proj-`,
/// `sk-ant-`), Slack (`xoxb-`, `xoxp-`, ...) and AWS access key ids (`AKIA` long-term,
/// `ASIA` temporary).
const KEY_SHAPES: &[KeyShape] = &[
    KeyShape::new(b"ghp_", u8::is_ascii_alphanumeric, 20),
    KeyShape::new(b"gho_", u8::is_ascii_alphanumeric, 20),
    KeyShape::new(b"ghs_", u8::is_ascii_alphanumeric, 20),
    KeyShape::new(b"ghu_", u8::is_ascii_alphanumeric, 20),
    KeyShape::new(b"ghr_", u8::is_ascii_alphanumeric, 20),
    KeyShape::new(b"github_pat_", is_alnum_or_underscore, 20),
    KeyShape { needs_digit: true, ..KeyShape::new(b"sk-", is_base64url, 20) },
    KeyShape { needs_digit: true, ..KeyShape::new(b"xox?-", is_alnum_or_dash, 10) },
    KeyShape { exact: true, ..KeyShape::new(b"AKIA", is_upper_or_digit, 16) },
    KeyShape { exact: true, ..KeyShape::new(b"ASIA", is_upper_or_digit, 16) },
];

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
    /// Unique per record (per-VM random prefix and a counter).
    pub record_id: String,
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
    /// True when let through and the outcome is `ok`.
    pub success: bool,
    /// HTTP status sent to the client (0: the stream was reset before a response).
    pub status: u32,
    /// What the reply said: `ok`, `error` (a JSON-RPC error, or an HTTP error without
    /// one), `tool_error` (a `tools/call` result with `isError: true`) or `unknown`.
    pub outcome: crate::outcome::Outcome,
    /// The JSON-RPC error of the reply (the gateway's own, when it refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// For `tools/call`: the result's `isError`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_error: Option<bool>,
    /// Why the outcome is `unknown`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome_detail: Option<String>,
    /// The Envoy cluster and upstream host that served the request (none when refused).
    pub upstream_cluster: Option<String>,
    pub upstream_host: Option<String>,
    /// With `regions`: the caller's region, where it came from (`claim`, `header`, `cidr`,
    /// `default`), the residency rule pinning them, and the region of the replica that
    /// served the call (the upstream host's locality, or the server's `region`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region_source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub residency: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_region: Option<String>,
    /// A call the sidecar dispatched for a federated server: that server's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Body bytes received from the client and sent to it.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Milliseconds from request headers to the end of the response.
    pub response_time_ms: u64,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub session_id: Option<String>,
    /// W3C trace id: the caller's `traceparent`, or the one the gateway started.
    pub trace_id: Option<String>,
    /// Why authentication failed (a stats label, see [`crate::stats`]); not recorded,
    /// `reason` says it in words.
    #[serde(skip)]
    pub auth_failure: Option<&'static str>,
}

impl AuditRecord {
    /// The log line: prefix and compact JSON.
    pub fn to_line(&self) -> String {
        format!("{LOG_PREFIX}{}", self.to_json())
    }

    /// The record as compact JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }

    /// The record as compact JSON of at most about `max` bytes: past it the arguments are
    /// replaced by a note of their size, then the list of hidden items and the longer
    /// text fields are cut.
    pub fn to_json_capped(&mut self, max: usize) -> String {
        let json = self.to_json();
        if json.len() <= max {
            return json;
        }
        if let Some(params) = self.params.take() {
            let size = serde_json::to_string(&params).map_or(0, |p| p.len());
            self.params = Some(Value::String(format!("[{size} bytes: over the record limit]")));
        }
        let json = self.to_json();
        if json.len() <= max {
            return json;
        }
        if let Some(hidden) = self.hidden.as_mut() {
            let n = hidden.len();
            hidden.truncate(8);
            if n > 8 {
                hidden.push(format!("[{} more]", n - 8));
            }
        }
        let share = max / 16;
        let fields = [
            &mut self.reason,
            &mut self.target,
            &mut self.user_id,
            &mut self.user_agent,
            &mut self.session_id,
            &mut self.method,
            &mut self.error_message,
            &mut self.server,
        ];
        for text in fields.into_iter().flatten() {
            cut(text, share);
        }
        for item in self.hidden.iter_mut().flatten().chain(self.roles.iter_mut()) {
            cut(item, share / 4);
        }
        self.roles.truncate(16);
        if let Some(id) = &self.jsonrpc_id {
            if id.to_string().len() > share {
                self.jsonrpc_id = Some(Value::String("[over the record limit]".into()));
            }
        }
        self.to_json()
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut with `...`.
pub fn cut(text: &mut String, max: usize) {
    if text.len() > max {
        text.truncate(text.floor_char_boundary(max));
        text.push_str("...");
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

    /// Fake keys in each vendor's shape (random-looking, never issued).
    const GITHUB_36: &str = "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8";

    #[test]
    fn redacts_api_key_shapes() {
        let cases = [
            format!("ghp_{GITHUB_36}"),
            format!("gho_{GITHUB_36}"),
            format!("ghs_{GITHUB_36}"),
            format!("ghu_{GITHUB_36}"),
            format!("ghr_{GITHUB_36}"),
            format!("github_pat_11ABCDEFG0{GITHUB_36}_{GITHUB_36}"),
            "sk-a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8s9T0u1V2".to_owned(),
            "sk-proj-a1B2c3D4e5F6g7H8i9J0-k1L2m3N4o5P6q7R8_s9T0".to_owned(),
            "sk-ant-api03-a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8-AA".to_owned(),
            "xoxb-1234567890-1234567890123-a1B2c3D4e5F6g7H8i9J0k1L2".to_owned(),
            "xoxp-1234567890-1234567890-1234567890123-abcdef0123456789".to_owned(),
            "xoxe-1-a1B2c3D4e5F6".to_owned(),
            "AKIAIOSFODNN7EXAMPLE".to_owned(),
            "ASIAY34FZKBOKMUTVV7A".to_owned(),
            // Inside other text: a URL, a command line, an assignment, a sentence.
            format!("https://x-access-token:ghs_{GITHUB_36}@github.com/acme/website.git"),
            format!("curl -H 'Authorization: token ghp_{GITHUB_36}' https://api.github.com"),
            "OPENAI_API_KEY=sk-proj-a1B2c3D4e5F6g7H8i9J0k1L2".to_owned(),
            "aws_access_key_id = AKIAIOSFODNN7EXAMPLE".to_owned(),
            "my key is xoxb-1234567890-abcdefghij.".to_owned(),
            "Bearer abc.def".to_owned(),
            "bearer x".to_owned(),
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.sig".to_owned(),
            "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.".to_owned(),
            "cookie: session=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln; path=/".to_owned(),
        ];
        for case in cases {
            assert!(looks_like_credential(&case), "not redacted: {case}");
            assert_eq!(redactor().redact(&json!({"note": case})), json!({"note": REDACTED}), "{case}");
        }
    }

    #[test]
    fn keeps_ordinary_text_that_starts_like_a_key() {
        let cases = [
            "ghp_config",
            "ghp_short123",
            "gho_",
            "github_pat_",
            "github_pat_docs",
            "sk-learn",
            "sk-learn-is-a-python-library-for-ml",
            "sk-1234",
            "task-a1B2c3D4e5F6g7H8i9J0k1L2m3N4",
            "risk-0123456789abcdefghij",
            "xoxb-",
            "xoxo-hugs-and-kisses-forever",
            "xox-1234567890abc",
            "AKIA",
            "AKIAIOSFODNN7EXAMPL",
            "AKIAIOSFODNN7EXAMPLEX",
            "AKIAiosfodnn7example",
            "MAKIAIOSFODNN7EXAMPLE",
            "ASIA is a continent",
            "ASIAN-PACIFIC-REGION",
            "/public/ghp_notes.txt",
            "hello.world.x",
            "eyJust.kidding",
            "a bearer bond",
            "",
            "   ",
        ];
        for case in cases {
            assert!(!looks_like_credential(case), "redacted: {case}");
            assert_eq!(redactor().redact(&json!(case)), json!(case), "{case}");
        }
    }

    #[test]
    fn long_runs_of_prefixes_are_scanned_in_linear_time() {
        // Quadratic scanning would take minutes on these (the body limit allows far more).
        let cases = [
            ("sk-", false),
            ("ghp_", false),
            ("xoxb-", false),
            ("AKIA", false),
            ("eyJ-", false),
            ("eyJ ", false),
            ("eyJa.b ", false),
            ("eyJa.", true),
        ];
        for (unit, credential) in cases {
            let s = unit.repeat(200_000 / unit.len());
            assert_eq!(looks_like_credential(&s), credential, "{unit}");
        }
    }

    #[test]
    fn free_text_holding_a_credential_is_replaced() {
        let mut text = "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.sig rejected".to_owned();
        redactor().redact_text(&mut text);
        assert_eq!(text, REDACTED);
        let mut text = "Unknown tool: x".to_owned();
        redactor().redact_text(&mut text);
        assert_eq!(text, "Unknown tool: x");
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
    fn records_over_the_limit_lose_their_arguments_then_long_fields() {
        let mut r = AuditRecord {
            params: Some(json!({"items": vec!["x".repeat(200); 200]})),
            reason: Some("r".repeat(100_000)),
            hidden: Some(vec!["h".repeat(5000); 100]),
            roles: vec!["role".repeat(1000); 100],
            jsonrpc_id: Some(json!("i".repeat(10_000))),
            ..Default::default()
        };
        let json = r.to_json_capped(4096);
        assert!(json.len() <= 4096 + 512, "{}", json.len());
        let v: Value = serde_json::from_str(&json).unwrap();
        assert!(v["params"].as_str().unwrap().contains("over the record limit"), "{v}");
        assert_eq!(v["hidden"].as_array().unwrap().len(), 9);
        let mut small = AuditRecord { params: Some(json!({"a": 1})), ..Default::default() };
        assert_eq!(small.to_json_capped(4096), small.to_json());
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
