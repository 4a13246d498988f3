//! `normalize::normalize` (both folds) and `normalize::resource_of_uri`: no panic, and a
//! normalized resource is canonical: normalizing it again changes nothing, and it holds no
//! `.`/`..` segment, empty segment, `\`, `%` or control character that a server could read
//! differently.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_gateway::normalize::{normalize, readings, resource_of_uri, uri_readings, Mode};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    for fold in [false, true] {
        check(raw, fold);
        if let Ok(name) = resource_of_uri(raw) {
            check(name, fold);
        }
        for mode in [Mode::Literal, Mode::Uri] {
            if let Ok(all) = readings(raw, mode, fold) {
                assert!(!all.is_empty(), "no reading of {raw:?}");
                for reading in &all {
                    check_reading(raw, reading);
                }
                // The decoded reading, when there is one, is among them.
                if let Ok(decoded) = normalize(raw, fold) {
                    if mode == Mode::Uri {
                        assert!(all.contains(&decoded), "{raw:?}: {decoded:?} not in {all:?}");
                    }
                }
            }
        }
    }
    if let Ok(all) = uri_readings(raw) {
        assert!(!all.is_empty());
    }
});

/// Any reading: dot segments resolved, no empty segment, no control character.
fn check_reading(raw: &str, reading: &str) {
    assert!(!reading.chars().any(char::is_control), "{raw:?} -> {reading:?}");
    let body = reading.strip_prefix('/').unwrap_or(reading);
    if !body.is_empty() {
        for segment in body.split('/') {
            assert!(!matches!(segment, "" | "." | ".."), "segment {segment:?} in {raw:?} -> {reading:?}");
        }
    }
}

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
