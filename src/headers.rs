//! Request headers: the identity headers the gateway sets for upstream servers, the rule
//! for which client-sent headers are removed because they could pose as identity, the
//! headers refused because a server could read them another way (`_` spellings, repeats,
//! method overrides), the MCP header value encoding, and the media type of a
//! `Content-Type` value.

/// Every header with this prefix (any case) is removed from client requests; the
/// gateway's own identity headers use it.
pub const IDENTITY_PREFIX: &str = "x-mcp-";

pub const USER_ID: &str = "x-mcp-user-id";
/// Comma-separated role names.
pub const ROLES: &str = "x-mcp-roles";
/// The MCP server (from the gateway's configuration) the request is for.
pub const SERVER: &str = "x-mcp-server";
/// The client's `Mcp-Session-Id`, when it sent one.
pub const SESSION_ID: &str = "x-mcp-session-id";
/// Envoy's request id (`x-request-id`).
pub const REQUEST_ID: &str = "x-mcp-request-id";
/// The W3C trace id from `traceparent`, or the request id when there is none.
pub const TRACE_ID: &str = "x-mcp-trace-id";
/// The caller's region (`regions`), for the upstream and Envoy's routes.
pub const REGION: &str = "x-mcp-region";
/// The data residency rule pinning the caller, when one does.
pub const RESIDENCY: &str = "x-mcp-residency";
/// The Envoy cluster serving the caller (routes read it with `cluster_header`).
pub const CLUSTER: &str = "x-mcp-cluster";
/// A federated server's delegation (see [`crate::delegation`]): set by the filter on
/// requests to the sidecar, presented by the sidecar on the calls it dispatches.
pub const DELEGATION: &str = "x-mcp-delegation";
/// The secret the sidecar requires of the filter (clients' copies are stripped with the
/// rest of `x-mcp-*`).
pub const SIDECAR_SECRET: &str = "x-mcp-sidecar-secret";

/// True for client headers that must not reach the upstream: the identity prefix in any
/// case, also spelled with `_` (WSGI, Rack and PHP servers read `X_MCP_User_Id` as
/// `x-mcp-user-id`).
pub fn is_spoofable(name: &str) -> bool {
    let dashed = dashed(name);
    dashed.starts_with(IDENTITY_PREFIX)
}

/// True when a server reading headers CGI-style (lowercase, `_` as `-`) takes `name` for
/// `header` (given lowercase with `-`).
pub fn reads_as(name: &str, header: &str) -> bool {
    dashed(name) == header
}

/// A header name as CGI-style servers read it: lowercase, `_` as `-`. Borrowed when it
/// already is (Envoy hands names over lowercased; underscores are rare).
fn dashed(name: &str) -> std::borrow::Cow<'_, str> {
    if !name.bytes().any(|b| b == b'_' || b.is_ascii_uppercase()) {
        return std::borrow::Cow::Borrowed(name);
    }
    name.bytes().map(|b| if b == b'_' { '-' } else { char::from(b.to_ascii_lowercase()) }).collect()
}

/// Headers the gateway reads: each must have one spelling, so the value checked is the
/// value a server reads. The `mcp-` family (`Mcp-Param-*` included) counts too.
const READ: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "content-type",
    "content-length",
    "transfer-encoding",
    "host",
    "last-event-id",
    "traceparent",
    "x-request-id",
];

/// True for headers the gateway reads for its own decisions (they cannot carry anything
/// else, such as a region).
pub fn is_gateway_read(name: &str) -> bool {
    READ.contains(&name) || name.starts_with("mcp-")
}

/// Headers that must not repeat: a server might read either value.
const SINGLE: &[&str] =
    &["content-type", "mcp-session-id", "mcp-method", "mcp-name", "mcp-protocol-version", "last-event-id"];

/// Headers some frameworks use to replace the HTTP method (a GET that runs as a POST).
const METHOD_OVERRIDES: &[&str] = &["x-http-method-override", "x-http-method", "x-method-override"];

/// Why the request headers have more than one reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderProblem {
    /// A header the gateway reads, spelled with `_` (servers may merge it with the `-` one).
    Underscore(String),
    /// A header that must appear once appears several times.
    Repeated(&'static str),
    /// `X-HTTP-Method-Override` and friends.
    MethodOverride(String),
    /// A GET or DELETE with a body, which the gateway does not inspect.
    BodyNotAllowed(String),
}

impl std::fmt::Display for HeaderProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderProblem::Underscore(name) => write!(f, "header {name:?} is spelled with '_'"),
            HeaderProblem::Repeated(name) => write!(f, "header {name:?} appears more than once"),
            HeaderProblem::MethodOverride(name) => write!(f, "header {name:?} overrides the HTTP method"),
            HeaderProblem::BodyNotAllowed(method) => write!(f, "{method} requests must not have a body"),
        }
    }
}

/// Refuses request headers a server could read differently from the gateway. Pseudo
/// headers (`:path`...) are Envoy's and skipped.
pub fn check_request(headers: &[(String, String)]) -> Result<(), HeaderProblem> {
    let mut seen: Vec<&'static str> = Vec::new();
    for (name, _) in headers {
        if name.starts_with(':') {
            continue;
        }
        let dashed = dashed(name);
        if METHOD_OVERRIDES.contains(&dashed.as_ref()) {
            return Err(HeaderProblem::MethodOverride(name.chars().take(64).collect()));
        }
        let read_by_us = dashed.starts_with("mcp-") || READ.contains(&dashed.as_ref());
        if name.contains('_') && read_by_us {
            return Err(HeaderProblem::Underscore(name.chars().take(64).collect()));
        }
        if let Some(single) = SINGLE.iter().find(|s| name.eq_ignore_ascii_case(s)) {
            if seen.contains(single) {
                return Err(HeaderProblem::Repeated(single));
            }
            seen.push(single);
        }
    }
    Ok(())
}

/// Decodes an MCP header value (2026-07-28): values that are not plain visible ASCII
/// travel as `=?base64?<standard base64 of the UTF-8 bytes>?=`. `None` when the wrapped
/// value is not valid base64 or not UTF-8.
pub fn decode_mcp_value(value: &str) -> Option<String> {
    use base64::Engine as _;
    let value = value.trim_matches([' ', '\t']);
    match value.strip_prefix("=?base64?").and_then(|rest| rest.strip_suffix("?=")) {
        Some(encoded) => {
            let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
            String::from_utf8(bytes).ok()
        }
        None => Some(value.to_owned()),
    }
}

/// Makes a claim value safe to put in a header: visible ASCII and spaces pass, every
/// other byte is percent-encoded (so a newline in a claim cannot split headers).
pub fn header_safe(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The media type of a `Content-Type` value without its parameters, trimmed, in the case
/// it was sent in (media types compare without case): `text/event-stream` for
/// `text/event-stream; charset=utf-8`.
pub fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

/// `application/json`, with optional parameters; a `charset` must be UTF-8 (JSON's only
/// encoding, RFC 8259), since a server honouring another charset would read other text.
pub fn is_json(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else { return false };
    let media_ok = media_type(content_type).eq_ignore_ascii_case("application/json");
    media_ok
        && content_type.split(';').skip(1).all(|param| {
            let (name, value) = param.split_once('=').unwrap_or((param, ""));
            !name.trim().eq_ignore_ascii_case("charset")
                || matches!(value.trim().trim_matches('"').to_ascii_lowercase().as_str(), "utf-8" | "utf8")
        })
}

/// The trace id of a W3C `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`).
pub fn trace_id(traceparent: &str) -> Option<&str> {
    // W3C Trace Context: version-traceid-parentid-flags, lowercase hex; version ff is
    // invalid, version 00 has exactly these four fields, later versions may add more.
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    let mut parts = traceparent.trim().splitn(5, '-');
    let (version, id, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let more = parts.next();
    let valid = hex(version, 2)
        && version != "ff"
        && hex(id, 32)
        && nonzero(id)
        && hex(parent, 16)
        && nonzero(parent)
        && hex(flags, 2)
        && (version != "00" || more.is_none());
    valid.then_some(id)
}

/// A new trace id for a request that brought no valid `traceparent`: Envoy's
/// `x-request-id` when it is a UUID (so logs and traces share it), else random.
pub fn new_trace_id(request_id: &str) -> String {
    let hex: String = request_id.chars().filter(|c| *c != '-').map(|c| c.to_ascii_lowercase()).collect();
    let uuid = request_id.len() == 36 && hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    if uuid && hex.bytes().any(|b| b != b'0') {
        return hex;
    }
    format!("{:016x}{:016x}", random_u64(), random_u64())
}

/// A new span id (16 hex digits, never all zero).
pub fn new_span_id() -> String {
    format!("{:016x}", random_u64().max(1))
}

/// 64 random bits: std seeds `RandomState` from the host's random source (WASI
/// `random_get` in Envoy).
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spoofable_headers_match_any_case() {
        for name in ["x-mcp-user-id", "X-MCP-Roles", "x-Mcp-anything", "x-mcp-"] {
            assert!(is_spoofable(name), "{name}");
        }
        for name in ["x-mc", "mcp-session-id", "x-request-id", "authorization", "é"] {
            assert!(!is_spoofable(name), "{name}");
        }
    }

    #[test]
    fn underscore_spellings_of_identity_headers_are_spoofable() {
        for name in ["x_mcp_user_id", "X_MCP_Roles", "x-mcp_user-id", "X_Mcp-Server"] {
            assert!(is_spoofable(name), "{name}");
        }
        assert!(!is_spoofable("x_mc"));
    }

    fn headers(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn refuses_headers_with_two_readings() {
        use HeaderProblem::*;
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<HeaderProblem>);
        let cases: &[Case] = &[
            (&[("content-type", "application/json"), ("mcp-method", "tools/call")], None),
            (&[("x_mcp_user_id", "mallory")], None),
            (&[("mcp_session_id", "s")], Some(Underscore("mcp_session_id".into()))),
            (&[("Mcp_Name", "x")], Some(Underscore("Mcp_Name".into()))),
            (&[("mcp_param_path", "x")], Some(Underscore("mcp_param_path".into()))),
            (&[("content_type", "text/plain")], Some(Underscore("content_type".into()))),
            (&[("proxy_authorization", "Bearer x")], Some(Underscore("proxy_authorization".into()))),
            (&[("mcp-name", "a"), ("Mcp-Name", "b")], Some(Repeated("mcp-name"))),
            (&[("mcp-method", "a"), ("mcp-method", "a")], Some(Repeated("mcp-method"))),
            (&[("mcp-session-id", "a"), ("mcp-session-id", "b")], Some(Repeated("mcp-session-id"))),
            (&[("X-HTTP-Method-Override", "DELETE")], Some(MethodOverride("X-HTTP-Method-Override".into()))),
            (&[("x_http_method", "PUT")], Some(MethodOverride("x_http_method".into()))),
            (&[("x-method-override", "PUT")], Some(MethodOverride("x-method-override".into()))),
            (&[("user_agent", "curl")], None),
        ];
        for (list, want) in cases {
            assert_eq!(check_request(&headers(list)).err(), want.clone(), "{list:?}");
        }
    }

    #[test]
    fn decodes_base64_wrapped_mcp_values() {
        assert_eq!(decode_mcp_value("get_weather").as_deref(), Some("get_weather"));
        assert_eq!(decode_mcp_value("=?base64?Z3LDvMOfZQ==?=").as_deref(), Some("grüße"));
        assert_eq!(decode_mcp_value("=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?=").as_deref(), Some("=?base64?literal?="));
        assert_eq!(decode_mcp_value("=?base64?not base64!?="), None);
        assert_eq!(decode_mcp_value("=?base64?/w==?="), None, "not UTF-8");
    }

    #[test]
    fn header_values_cannot_break_lines() {
        assert_eq!(header_safe("alice"), "alice");
        assert_eq!(header_safe("a\r\nx-mcp-roles: admin"), "a%0D%0Ax-mcp-roles: admin");
        assert_eq!(header_safe("ü%"), "%C3%BC%25");
    }

    #[test]
    fn media_types_drop_parameters_and_spaces() {
        assert_eq!(media_type("application/json"), "application/json");
        assert_eq!(media_type(" Text/Event-Stream ; charset=utf-8"), "Text/Event-Stream");
        assert_eq!(media_type("application/json;charset=\"utf-8\""), "application/json");
        assert_eq!(media_type(""), "");
        assert_eq!(media_type(";x=y"), "");
    }

    #[test]
    fn reads_trace_ids() {
        assert_eq!(
            trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id("garbage"), None);
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // upper case
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero parent
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", // v00 with more
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert_eq!(trace_id(bad), None, "{bad}");
        }
        assert!(trace_id("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future").is_some());
        assert_eq!(new_trace_id("15DB1D99-3A2B-4C5D-8E9F-0123456789AB"), "15db1d993a2b4c5d8e9f0123456789ab");
        let random = new_trace_id("not-a-uuid");
        assert!(random.len() == 32 && random != new_trace_id("not-a-uuid"));
        let made = format!("00-{random}-{}-01", new_span_id());
        assert_eq!(trace_id(&made), Some(random.as_str()));
    }
}
