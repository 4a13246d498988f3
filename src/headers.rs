//! Identity headers: the ones the gateway sets for upstream servers, and the rule for
//! which client-sent headers are removed because they could pose as identity.

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

/// True for client headers that must not reach the upstream.
pub fn is_spoofable(name: &str) -> bool {
    name.get(..IDENTITY_PREFIX.len()).is_some_and(|p| p.eq_ignore_ascii_case(IDENTITY_PREFIX))
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

/// The trace id of a W3C `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`).
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.trim().split('-');
    let (_version, id) = (parts.next()?, parts.next()?);
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0')).then_some(id)
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
    fn header_values_cannot_break_lines() {
        assert_eq!(header_safe("alice"), "alice");
        assert_eq!(header_safe("a\r\nx-mcp-roles: admin"), "a%0D%0Ax-mcp-roles: admin");
        assert_eq!(header_safe("ü%"), "%C3%BC%25");
    }

    #[test]
    fn reads_trace_ids() {
        assert_eq!(
            trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id("garbage"), None);
    }
}
