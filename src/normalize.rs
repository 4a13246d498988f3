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
//! No Unicode normalization (NFC/NFKC) is applied, but characters that some file systems
//! or URL libraries turn into dots or separators (`．` U+FF0E, `․` U+2024, `﹒` U+FE52,
//! `／` U+FF0F, `∕` U+2215, `＼` U+FF3C) are refused ([`NormalizeError::LookAlike`]).
//!
//! [`normalize`] is the fully decoded reading. A server may read the same value another
//! way: a POSIX file server takes `%2f` and `\` literally, a URL library decodes once.
//! [`readings`] gives every reading a value has (literal, each decoding round, `\` as a
//! byte or as a separator), so policy can require all of them to be allowed: what the
//! gateway checked is then what the server opens, whichever way it reads the value.

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
    /// A character that looks like, or is mapped by some software to, a dot or a separator.
    LookAlike,
    /// A `file:` URI naming a host other than `localhost`.
    ForeignHost,
    /// A `file:` URI with a query or fragment (servers disagree on whether they are part
    /// of the path).
    QueryInFileUri,
}

/// How the upstream server interprets a resource value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// A plain path or name: no percent-decoding, `\` is an ordinary byte (POSIX). The
    /// default for tool arguments.
    #[default]
    Literal,
    /// A URI or percent-encoded value: decoded before use. Bad encoding is refused.
    Uri,
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
            NormalizeError::LookAlike => write!(f, "resource contains a character that looks like a dot or a slash"),
            NormalizeError::ForeignHost => write!(f, "resource file: URI names a host other than localhost"),
            NormalizeError::QueryInFileUri => write!(f, "resource file: URI has a query or fragment"),
        }
    }
}

impl std::error::Error for NormalizeError {}

/// Dots and separators in disguise: refused wherever they appear.
const LOOK_ALIKES: &[char] = &['\u{ff0e}', '\u{2024}', '\u{fe52}', '\u{ff0f}', '\u{2215}', '\u{ff3c}'];

/// Normalizes a resource path or name for policy matching (rules in the module doc):
/// the fully decoded reading, with `\` as a separator.
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
    resolve(&decoded, case_fold, true)
}

/// Every distinct way a server could read `raw`, normalized, the reading `mode` names
/// first. With [`Mode::Uri`] bad percent-encoding is an error; with [`Mode::Literal`] a
/// value that cannot be decoded simply has no decoded reading. Any reading that cannot be
/// normalized (escaping the root, control characters, look-alikes) is an error, because
/// a server reading it that way would act on something policy never saw.
pub fn readings(raw: &str, mode: Mode, case_fold: bool) -> Result<Vec<String>, NormalizeError> {
    if raw.len() > MAX_LEN {
        return Err(NormalizeError::TooLong);
    }
    // Decoding rounds: the literal value, then each round of percent-decoding.
    let mut rounds = vec![raw.to_owned()];
    while let Some(last) = rounds.last() {
        if !last.contains('%') {
            break;
        }
        if rounds.len() > MAX_DECODE_ROUNDS {
            if mode == Mode::Uri {
                return Err(NormalizeError::BadEncoding);
            }
            break;
        }
        match percent_decode(last) {
            Ok(next) => rounds.push(next),
            Err(e) if mode == Mode::Uri => return Err(e),
            Err(_) => break,
        }
    }
    // A URI server decodes (once, or as often as needed): its reading leads.
    if mode == Mode::Uri {
        rounds.rotate_left(1);
    }
    let mut out: Vec<String> = Vec::with_capacity(2 * rounds.len());
    for round in &rounds {
        // `\` literally (POSIX) first, then as a separator (Windows, some URL parsers).
        for backslash_separates in [false, true] {
            if backslash_separates && !round.contains('\\') {
                continue;
            }
            let reading = resolve(round, case_fold, backslash_separates)?;
            if !out.contains(&reading) {
                out.push(reading);
            }
        }
    }
    Ok(out)
}

/// Case folding, character checks, separators and dot segments of one decoded reading.
fn resolve(decoded: &str, case_fold: bool, backslash_separates: bool) -> Result<String, NormalizeError> {
    // Folded before the structural checks so they see the final characters.
    let decoded = if case_fold { decoded.to_lowercase() } else { decoded.to_owned() };
    if decoded.chars().any(char::is_control) {
        return Err(NormalizeError::ControlCharacter);
    }
    if decoded.contains(LOOK_ALIKES) {
        return Err(NormalizeError::LookAlike);
    }

    let unified = if backslash_separates { decoded.replace('\\', "/") } else { decoded };
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

/// The resource named by an MCP resource URI, still encoded (pass it to [`readings`]).
///
/// For `file:///a/b` (or `file://localhost/a/b`) the path `/a/b`; for
/// `scheme://authority/path` the relative name `authority/path`, e.g. `github://acme/website`
/// → `acme/website`. A `file` URI naming another host is refused, and so is one with a
/// query or fragment (`file:///private/x?/../../public`: some servers keep it in the
/// path). For other schemes the query and fragment are dropped: they do not locate the
/// resource. Anything without a `scheme://` prefix is returned unchanged.
pub fn resource_of_uri(uri: &str) -> Result<&str, NormalizeError> {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Ok(uri);
    };
    if !is_scheme(scheme) {
        return Ok(uri);
    }
    if scheme.eq_ignore_ascii_case("file") {
        if rest.contains(['?', '#']) {
            return Err(NormalizeError::QueryInFileUri);
        }
        let (host, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        if !(host.is_empty() || host.eq_ignore_ascii_case("localhost")) {
            return Err(NormalizeError::ForeignHost);
        }
        return Ok(if path.is_empty() { "/" } else { path });
    }
    Ok(rest.split(['?', '#']).next().unwrap_or_default())
}

/// The normalized form of a resource URI for RBAC `resources` globs: `scheme://` (scheme
/// lowercased) followed by each reading of the resource it names. A value without a
/// scheme is a name, read as a URI would be.
pub fn uri_readings(uri: &str) -> Result<Vec<String>, NormalizeError> {
    let name = resource_of_uri(uri)?;
    let prefix = match uri.split_once("://") {
        Some((scheme, _)) if is_scheme(scheme) => format!("{}://", scheme.to_ascii_lowercase()),
        _ => String::new(),
    };
    Ok(readings(name, Mode::Uri, false)?.into_iter().map(|r| format!("{prefix}{r}")).collect())
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
        for e in [EscapesRoot, BadEncoding, ControlCharacter, TooLong, LookAlike, ForeignHost, QueryInFileUri] {
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
            // Query and fragment do not name the resource (outside file: URIs).
            ("github://acme/website?ref=main", "acme/website"),
            ("github://acme/website#readme", "acme/website"),
            ("file:///a%23b", "/a%23b"),
        ];
        for (uri, want) in cases {
            assert_eq!(resource_of_uri(uri), Ok(want), "resource_of_uri({uri:?})");
        }
    }

    #[test]
    fn normalizes_resources_named_by_uris() {
        let cases = [
            ("file:///public/%2e%2e/private/x", Ok("/private/x".to_owned())),
            ("file:///..", Err(EscapesRoot)),
            ("github://acme/../payroll", Ok("payroll".to_owned())),
            ("github://acme/../../x", Err(EscapesRoot)),
            ("file:///a%23b", Ok("/a#b".to_owned())),
        ];
        for (uri, want) in cases {
            assert_eq!(resource_of_uri(uri).and_then(|r| normalize(r, false)), want, "{uri:?}");
        }
    }

    #[test]
    fn refuses_file_uris_that_servers_read_differently() {
        let cases = [
            ("file://server/share/x", ForeignHost),
            ("file://evil.example/etc/passwd", ForeignHost),
            ("file://localhost:80/x", ForeignHost),
            ("file:///private/secret#/../../public/x", QueryInFileUri),
            ("file:///public/..?/../private", QueryInFileUri),
            ("FILE:///x?y", QueryInFileUri),
        ];
        for (uri, want) in cases {
            assert_eq!(resource_of_uri(uri), Err(want), "{uri:?}");
        }
    }

    #[test]
    fn refuses_look_alike_dots_and_slashes() {
        for raw in [
            "/public/\u{ff0e}\u{ff0e}/x",
            "/public/\u{2024}\u{2024}/x",
            "/public/\u{fe52}\u{fe52}/x",
            "/public\u{ff0f}..\u{ff0f}private",
            "/public\u{2215}x",
            "/public\u{ff3c}x",
            "/public/%EF%BC%8E%EF%BC%8E/x",
        ] {
            assert_eq!(normalize(raw, false), Err(LookAlike), "{raw:?}");
            assert_eq!(readings(raw, Mode::Literal, false), Err(LookAlike), "{raw:?}");
        }
    }

    #[test]
    fn literal_readings_keep_percent_and_backslash_as_bytes() {
        let r = |raw: &str| readings(raw, Mode::Literal, false);
        assert_eq!(r("/public/readme.md"), Ok(vec!["/public/readme.md".to_owned()]));
        // The filesystem server takes `%2f` literally: `a%2fb` is one segment, so the two
        // `..` climb out of /public. Both readings are reported.
        assert_eq!(
            r("/public/a%2fb/../../private/salaries.csv"),
            Ok(vec!["/private/salaries.csv".to_owned(), "/public/private/salaries.csv".to_owned()])
        );
        assert_eq!(
            r("/public/a\\b/../../private/x"),
            Ok(vec!["/private/x".to_owned(), "/public/private/x".to_owned()])
        );
        // Undecodable: only the literal reading exists.
        assert_eq!(r("/public/100%"), Ok(vec!["/public/100%".to_owned()]));
        // Every decoding round is a reading.
        assert_eq!(
            r("/a/%252e%252e/b"),
            Ok(vec!["/a/%252e%252e/b".to_owned(), "/a/%2e%2e/b".to_owned(), "/b".to_owned()])
        );
        // A reading that escapes the root refuses the value, whichever reading it is.
        assert_eq!(r("/public/%2e%2e/%2e%2e/etc"), Err(EscapesRoot));
        assert_eq!(r("/a\\..\\..\\etc"), Err(EscapesRoot));
    }

    #[test]
    fn uri_readings_lead_with_the_decoded_one() {
        assert_eq!(readings("/a%20b", Mode::Uri, false), Ok(vec!["/a b".to_owned(), "/a%20b".to_owned()]));
        assert_eq!(readings("/100%", Mode::Uri, false), Err(BadEncoding));
        assert_eq!(readings("/%2525252e", Mode::Uri, false), Err(BadEncoding));
        assert_eq!(
            uri_readings("FILE:///public/a%2fb/../../private/x"),
            Ok(vec!["file:///public/private/x".to_owned(), "file:///private/x".to_owned()])
        );
        assert_eq!(uri_readings("github://acme/website"), Ok(vec!["github://acme/website".to_owned()]));
        assert_eq!(uri_readings("file://other/x"), Err(ForeignHost));
    }
}
