//! `normalize::normalize` (both folds) and `normalize::resource_of_uri`: no panic, and a
//! normalized resource is canonical: normalizing it again changes nothing, and it holds no
//! `.`/`..` segment, empty segment, `\`, `%` or control character that a server could read
//! differently.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_gateway::normalize::{normalize, resource_of_uri};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    for fold in [false, true] {
        check(raw, fold);
        check(resource_of_uri(raw), fold);
    }
});

fn check(raw: &str, fold: bool) {
    let Ok(out) = normalize(raw, fold) else {
        return;
    };
    assert_eq!(normalize(&out, fold).as_deref(), Ok(out.as_str()), "not a fixed point: {raw:?} -> {out:?}");
    assert!(!out.contains(['%', '\\']), "{raw:?} -> {out:?}");
    assert!(!out.chars().any(char::is_control), "{raw:?} -> {out:?}");
    let body = out.strip_prefix('/').unwrap_or(&out);
    if !body.is_empty() {
        for segment in body.split('/') {
            assert!(!matches!(segment, "" | "." | ".."), "segment {segment:?} in {raw:?} -> {out:?}");
        }
    }
    if fold {
        assert_eq!(out.to_lowercase(), out, "case fold left upper case: {raw:?} -> {out:?}");
    }
}
