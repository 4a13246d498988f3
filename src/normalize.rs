//! Canonical form of a resource (file path, resource URI path, repository name) before
//! resource policies match it, so that `/public/%2e%2e/private` cannot pass for
//! `/public/**`.
//!
//! [`normalize`] applies, in order:
//! 1. Inputs longer than 4096 bytes are refused ([`NormalizeError::TooLong`]).
//! 2. Percent-decoding, repeated until no `%` is left, at most 3 rounds (so `%25252e`
//!    becomes `.`). Every `%` must start a valid `%XX`, the decoded bytes must be
//!    UTF-8, and no `%` may remain after the third round; otherwise
//!    [`NormalizeError::BadEncoding`]. A normalized resource therefore never holds a `%`.
//! 3. With `case_fold`, Unicode lowercasing.
//! 4. Any control character (NUL, C0, DEL, C1) is refused
//!    ([`NormalizeError::ControlCharacter`]).
//! 5. `\` becomes `/` (some servers run on Windows); runs of `/` collapse to one.
//! 6. `.` segments are dropped; `..` drops the previous segment, and a `..` with nothing
//!    to drop is refused ([`NormalizeError::EscapesRoot`]) rather than clamped, since it
//!    is never legitimate.
//! 7. A leading `/` (after decoding) is kept; a trailing `/` is dropped. The empty
//!    absolute path is `/`, the empty relative name is the empty string.
//!
//! Every error is a denial: a resource that cannot be normalized is never matched.
//! No Unicode normalization (NFC/NFKC) is applied: look-alikes such as `．．` (U+FF0E)
//! stay ordinary segment names.

use std::fmt;

/// Longest resource accepted, in bytes, before decoding.
const MAX_LEN: usize = 4096;

/// Enough for a triple-encoded dot (`%25252e`); deeper nesting has no honest use.
const MAX_DECODE_ROUNDS: usize = 3;

/// Why a resource cannot be normalized (always a denial).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NormalizeError {
    /// A `..` climbs above the start of the path or name.
    EscapesRoot,
    /// A malformed `%` sequence, invalid UTF-8, or percent-encoding nested too deep.
    BadEncoding,
    /// A control character, such as NUL, which file systems and logs treat specially.
    ControlCharacter,
    /// Longer than 4096 bytes.
    TooLong,
}

impl fmt::Display for NormalizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NormalizeError::EscapesRoot => write!(f, "resource path escapes its root with `..`"),
            NormalizeError::BadEncoding => {
                write!(f, "resource has invalid or more than {MAX_DECODE_ROUNDS}-fold percent-encoding")
            }
            NormalizeError::ControlCharacter => write!(f, "resource contains a control character"),
            NormalizeError::TooLong => write!(f, "resource longer than {MAX_LEN} bytes"),
        }
    }
}

impl std::error::Error for NormalizeError {}

/// Normalizes a resource path or name for policy matching (rules in the module doc).
pub fn normalize(raw: &str, case_fold: bool) -> Result<String, NormalizeError> {
    if raw.len() > MAX_LEN {
        return Err(NormalizeError::TooLong);
    }

    let mut decoded = raw.to_owned();
    for _ in 0..MAX_DECODE_ROUNDS {
        if !decoded.contains('%') {
            break;
        }
        decoded = percent_decode(&decoded)?;
    }
    if decoded.contains('%') {
        return Err(NormalizeError::BadEncoding);
    }

    // Folded before the structural checks so they see the final characters.
    if case_fold {
        decoded = decoded.to_lowercase();
    }
    if decoded.chars().any(char::is_control) {
        return Err(NormalizeError::ControlCharacter);
    }

    let unified = decoded.replace('\\', "/");
    let absolute = unified.starts_with('/');
    let mut segments: Vec<&str> = Vec::new();
    for segment in unified.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(NormalizeError::EscapesRoot);
                }
            }
            name => segments.push(name),
        }
    }

    let joined = segments.join("/");
    Ok(if absolute { format!("/{joined}") } else { joined })
}

/// One round of percent-decoding; every `%` must start a `%XX` and the result must be
/// UTF-8.
fn percent_decode(s: &str) -> Result<String, NormalizeError> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = bytes.next().and_then(hex_value);
            let lo = bytes.next().and_then(hex_value);
            match (hi, lo) {
                (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                _ => return Err(NormalizeError::BadEncoding),
            }
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).map_err(|_| NormalizeError::BadEncoding)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The resource named by an MCP resource URI, still encoded (pass it to [`normalize`]).
///
/// For `file:///a/b` (or `file://localhost/a/b`) the path `/a/b`; for
/// `scheme://authority/path` the relative name `authority/path`, e.g. `github://acme/website`
/// → `acme/website`. A `file` URI naming another host keeps that host as a relative name,
/// so absolute-path patterns cannot match it. The query and fragment are dropped: the
/// server ignores them when locating the resource, so a `#/../../public` must not steer
/// matching. Anything without a `scheme://` prefix is returned unchanged.
pub fn resource_of_uri(uri: &str) -> &str {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri;
    };
    if !is_scheme(scheme) {
        return uri;
    }
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    if scheme.eq_ignore_ascii_case("file") {
        let (host, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        if host.is_empty() || host.eq_ignore_ascii_case("localhost") {
            return if path.is_empty() { "/" } else { path };
        }
    }
    rest
}

/// `[A-Za-z][A-Za-z0-9+.-]*`, as in RFC 3986.
fn is_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use NormalizeError::*;

    fn check(cases: &[(&str, bool, Result<&str, NormalizeError>)]) {
        for (raw, case_fold, want) in cases {
            let got = normalize(raw, *case_fold);
            assert_eq!(got.as_deref().map_err(Clone::clone), want.clone(), "normalize({raw:?}, case_fold={case_fold})");
        }
    }

    #[test]
    fn resolves_traversal_in_every_encoding() {
        check(&[
            ("/public/../private/x", false, Ok("/private/x")),
            ("/public/%2e%2e/private/x", false, Ok("/private/x")),
            ("/public/%2E%2E/private/x", false, Ok("/private/x")),
            ("/public/%2e./private/x", false, Ok("/private/x")),
            ("/public/%252e%252e/private/x", false, Ok("/private/x")),
            ("/public/%25252e%25252e/private/x", false, Ok("/private/x")),
            ("/public/%252E%252e/private/x", false, Ok("/private/x")),
            ("/public/..%2fprivate/x", false, Ok("/private/x")),
            ("/public/..%2Fprivate/x", false, Ok("/private/x")),
            ("/public/..%5cprivate/x", false, Ok("/private/x")),
            ("/public/..%255cprivate/x", false, Ok("/private/x")),
            ("\\public\\..\\private", false, Ok("/private")),
            ("/public\\..\\private", false, Ok("/private")),
            ("%2fpublic%2f..%2fprivate", false, Ok("/private")),
            ("%5cpublic", false, Ok("/public")),
            ("/public/a/b/../../../private", false, Ok("/private")),
        ]);
    }

    #[test]
    fn collapses_slashes_and_dot_segments() {
        check(&[
            ("//public///a//b/", false, Ok("/public/a/b")),
            ("/./public/./a", false, Ok("/public/a")),
            ("/public/a/.", false, Ok("/public/a")),
            ("/public/%2e/a", false, Ok("/public/a")),
            ("/", false, Ok("/")),
            ("///", false, Ok("/")),
            ("/.", false, Ok("/")),
            ("/public/..", false, Ok("/")),
            ("", false, Ok("")),
            (".", false, Ok("")),
            ("./", false, Ok("")),
            ("acme/..", false, Ok("")),
            ("acme/", false, Ok("acme")),
            ("./acme//website/", false, Ok("acme/website")),
        ]);
    }

    #[test]
    fn refuses_escaping_the_root() {
        check(&[
            ("/..", false, Err(EscapesRoot)),
            ("/../public", false, Err(EscapesRoot)),
            ("/public/../../etc/passwd", false, Err(EscapesRoot)),
            ("/public/%2e%2e/%2e%2e/etc", false, Err(EscapesRoot)),
            ("/public/%252e%252e/%252e%252e/etc", false, Err(EscapesRoot)),
            ("\\..\\etc", false, Err(EscapesRoot)),
            ("..", false, Err(EscapesRoot)),
            ("../x", false, Err(EscapesRoot)),
            ("acme/../../x", false, Err(EscapesRoot)),
            // Even when a later segment would climb back in.
            ("/../public/x", false, Err(EscapesRoot)),
        ]);
    }

    #[test]
    fn keeps_names_that_only_look_like_dots() {
        check(&[
            ("/public/...", false, Ok("/public/...")),
            ("/public/..a", false, Ok("/public/..a")),
            ("/public/.hidden", false, Ok("/public/.hidden")),
            ("/public/a..b/c", false, Ok("/public/a..b/c")),
            // Fullwidth full stops are ordinary characters, not `..`.
            ("/public/\u{ff0e}\u{ff0e}/x", false, Ok("/public/\u{ff0e}\u{ff0e}/x")),
        ]);
    }

    #[test]
    fn handles_repository_names() {
        check(&[
            ("acme/website", false, Ok("acme/website")),
            ("acme/../payroll", false, Ok("payroll")),
            ("acme%2Fwebsite", false, Ok("acme/website")),
            ("Acme/WebSite", true, Ok("acme/website")),
            ("Acme/WebSite", false, Ok("Acme/WebSite")),
        ]);
    }

    #[test]
    fn folds_case_when_asked() {
        check(&[
            ("/Public/A", true, Ok("/public/a")),
            ("/Public/A", false, Ok("/Public/A")),
            ("/PUBLIC/%2E%2E/Private", true, Ok("/private")),
            ("/CAF%C3%89", true, Ok("/café")),
            ("/ÄÖÜ", true, Ok("/äöü")),
            // Kelvin sign folds to an ASCII `k`.
            ("/\u{212a}ey", true, Ok("/key")),
        ]);
    }

    #[test]
    fn decodes_unicode() {
        check(&[
            ("/caf%C3%A9", false, Ok("/café")),
            ("/caf%c3%a9", false, Ok("/café")),
            ("/café", false, Ok("/café")),
            ("/%E2%82%AC/%F0%9F%A6%80", false, Ok("/€/🦀")),
            ("/日本/../中文", false, Ok("/中文")),
        ]);
    }

    #[test]
    fn refuses_bad_encoding() {
        check(&[
            ("/a%zz", false, Err(BadEncoding)),
            ("/a%", false, Err(BadEncoding)),
            ("/a%2", false, Err(BadEncoding)),
            ("/a%g0", false, Err(BadEncoding)),
            ("/a%ff", false, Err(BadEncoding)),
            ("/a%C3", false, Err(BadEncoding)),
            // Overlong UTF-8 for `.` and `/`.
            ("/public/%c0%ae%c0%ae/x", false, Err(BadEncoding)),
            ("/public/..%c0%afx", false, Err(BadEncoding)),
            // IIS-style %u escapes are not percent-encoding.
            ("/public/%u002e%u002e/x", false, Err(BadEncoding)),
            // A `%` followed by a multi-byte character.
            ("/a%é0", false, Err(BadEncoding)),
            // A literal `%` cannot survive decoding.
            ("/100%25", false, Err(BadEncoding)),
            ("/100%", false, Err(BadEncoding)),
            // Four levels of encoding is one too many.
            ("/public/%2525252e%2525252e/x", false, Err(BadEncoding)),
            ("%2525252e", false, Err(BadEncoding)),
            // Valid on the surface, invalid once decoded.
            ("/a%25zz", false, Err(BadEncoding)),
            ("/a%25ff", false, Err(BadEncoding)),
        ]);
    }

    #[test]
    fn decodes_triple_encoding() {
        check(&[("%25252e", false, Ok("")), ("/%25252e", false, Ok("/")), ("/a%252520b", false, Ok("/a b"))]);
    }

    #[test]
    fn refuses_control_characters() {
        check(&[
            ("/a%00b", false, Err(ControlCharacter)),
            ("/a%2500b", false, Err(ControlCharacter)),
            ("/a\0b", false, Err(ControlCharacter)),
            ("/a%0ab", false, Err(ControlCharacter)),
            ("/a%0D%0Ab", false, Err(ControlCharacter)),
            ("/a\tb", false, Err(ControlCharacter)),
            ("/a%7fb", false, Err(ControlCharacter)),
            ("/a%C2%85b", false, Err(ControlCharacter)),
            ("/a%00b", true, Err(ControlCharacter)),
        ]);
    }

    #[test]
    fn limits_length() {
        let longest = format!("/{}", "a".repeat(MAX_LEN - 1));
        assert_eq!(normalize(&longest, false), Ok(longest.clone()));
        let too_long = format!("/{}", "a".repeat(MAX_LEN));
        assert_eq!(normalize(&too_long, false), Err(TooLong));
        // Counted before decoding, so encoding cannot smuggle a long input in short.
        let encoded = "%2e".repeat(MAX_LEN / 3 + 1);
        assert_eq!(normalize(&encoded, false), Err(TooLong));
        // A single long segment is fine.
        let segment = "b".repeat(4000);
        assert_eq!(normalize(&format!("/a/{segment}/"), false), Ok(format!("/a/{segment}")));
    }

    #[test]
    fn output_is_a_fixed_point() {
        for raw in ["/public/%252e%252e/private/x", "\\a\\b\\..\\c", "acme//website/./", "/Caf%C3%A9/X"] {
            let once = normalize(raw, true).unwrap();
            assert_eq!(normalize(&once, true).unwrap(), once, "{raw:?}");
        }
    }

    #[test]
    fn names_errors_in_lowercase() {
        for e in [EscapesRoot, BadEncoding, ControlCharacter, TooLong] {
            let message = e.to_string();
            assert!(message.starts_with("resource "), "{message}");
        }
    }

    #[test]
    fn extracts_resource_from_uri() {
        let cases = [
            ("file:///public/a.txt", "/public/a.txt"),
            ("file://localhost/x", "/x"),
            ("file://LOCALHOST/x", "/x"),
            ("FILE:///x", "/x"),
            ("file://", "/"),
            ("file:///", "/"),
            ("file://localhost", "/"),
            ("file://server/share/x", "server/share/x"),
            ("github://acme/website", "acme/website"),
            ("s3://bucket/key", "bucket/key"),
            ("s3://bucket/dir/key.txt", "bucket/dir/key.txt"),
            ("git+ssh://host/repo", "host/repo"),
            ("custom:///x", "/x"),
            ("/plain/path", "/plain/path"),
            ("no-scheme", "no-scheme"),
            ("acme/website", "acme/website"),
            ("", ""),
            // Not a scheme: must start with a letter and use only scheme characters.
            ("1abc://x/y", "1abc://x/y"),
            ("://x/y", "://x/y"),
            ("/a/b://c", "/a/b://c"),
            ("a b://c", "a b://c"),
            ("urn:isbn:123", "urn:isbn:123"),
            // Query and fragment do not name the resource.
            ("file:///private/secret#/../../public/x", "/private/secret"),
            ("file:///public/..?/../private", "/public/.."),
            ("github://acme/website?ref=main", "acme/website"),
            ("file:///a%23b", "/a%23b"),
        ];
        for (uri, want) in cases {
            assert_eq!(resource_of_uri(uri), want, "resource_of_uri({uri:?})");
        }
    }

    #[test]
    fn normalizes_resources_named_by_uris() {
        let cases = [
            ("file:///public/%2e%2e/private/x", Ok("/private/x".to_owned())),
            ("file:///private/secret#/../../public/x", Ok("/private/secret".to_owned())),
            ("file:///public/..?/../private", Ok("/".to_owned())),
            ("file:///..", Err(EscapesRoot)),
            ("github://acme/../payroll", Ok("payroll".to_owned())),
            ("github://acme/../../x", Err(EscapesRoot)),
            ("file:///a%23b", Ok("/a#b".to_owned())),
        ];
        for (uri, want) in cases {
            assert_eq!(normalize(resource_of_uri(uri), false), want, "{uri:?}");
        }
    }
}
