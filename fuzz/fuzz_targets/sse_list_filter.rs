//! `listing::filter_reply` on arbitrary JSON and SSE list replies, with a `keep` that drops
//! items by one bit of a hash of their name. The output is read back the way a client
//! reads it (an SSE parser per the WHATWG spec, JSON with every duplicate key kept, since
//! some parsers take the first and others the last): no item whose name was dropped may
//! be visible in it, and what was reported removed never is.
//!
//! Input: byte 0 picks the content type (bit 0) and list kind (bits 1-2); byte 1 seeds
//! the hash; the rest is the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_gateway::listing::{self, ListKind, MALFORMED};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::fmt;

fuzz_target!(|data: &[u8]| {
    let [selector, seed, body @ ..] = data else {
        return;
    };
    let sse = selector & 1 == 1;
    let content_type = if sse { "text/event-stream" } else { "application/json" };
    let kind = [ListKind::Tools, ListKind::Prompts, ListKind::Resources, ListKind::ResourceTemplates]
        [usize::from(selector >> 1 & 3)];
    let allowed = |name: &str| hash(*seed, name) & 1 == 0;

    let mut keep = |item: &Value| {
        let name = item.get(kind.key()).and_then(Value::as_str).expect("keep is only asked about named items");
        allowed(name)
    };
    let Some((out, filtered)) = listing::filter_reply(body, content_type, kind, &mut keep) else {
        return;
    };
    for name in &filtered.removed {
        assert!(name == MALFORMED || !allowed(name), "removed {name:?}, which keep accepted");
    }
    let out = std::str::from_utf8(&out).expect("output of a UTF-8 body is UTF-8");
    let messages = if sse { sse_data(out) } else { vec![out.to_owned()] };
    for message in messages {
        let Ok(json) = serde_json::from_str::<Json>(&message) else {
            continue; // a client cannot act on it either
        };
        for name in visible_names(&json, kind) {
            assert!(allowed(name), "{name:?} was dropped but is visible in {out:?}");
        }
    }
});

/// FNV-1a, seeded, then murmur3's finalizer (FNV's low bit is only the parity of the
/// bytes), so the fuzzer chooses which names go.
fn hash(seed: u8, name: &str) -> u32 {
    let h = name.bytes().fold(0x811c_9dc5 ^ u32::from(seed), |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    let h = (h ^ h >> 16).wrapping_mul(0x85eb_ca6b);
    let h = (h ^ h >> 13).wrapping_mul(0xc2b2_ae35);
    h ^ h >> 16
}

/// The `data` of each event of an SSE stream, as a browser's `EventSource` dispatches it
/// (<https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation>),
/// plus a last event without its blank line, which lenient clients dispatch too.
fn sse_data(stream: &str) -> Vec<String> {
    let mut rest = stream.strip_prefix('\u{feff}').unwrap_or(stream);
    let mut events = Vec::new();
    let mut buffer = String::new();
    let mut dispatch = |buffer: &mut String| {
        if buffer.pop().is_some() {
            events.push(std::mem::take(buffer));
        }
    };
    loop {
        let (line, tail) = match rest.find(['\r', '\n']) {
            Some(at) => {
                let width = if rest[at..].starts_with("\r\n") { 2 } else { 1 };
                (&rest[..at], Some(&rest[at + width..]))
            }
            None => (rest, None),
        };
        if line.is_empty() {
            dispatch(&mut buffer);
        } else if !line.starts_with(':') {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            if field == "data" {
                buffer.push_str(value.strip_prefix(' ').unwrap_or(value));
                buffer.push('\n');
            }
        }
        match tail {
            Some(tail) => rest = tail,
            None => break,
        }
    }
    dispatch(&mut buffer);
    events
}

/// Every name a client could read for an item of the `kind` list in one message, under
/// any choice among duplicate keys.
fn visible_names(message: &Json, kind: ListKind) -> Vec<&str> {
    let mut names = Vec::new();
    for result in message.all(&["result"]) {
        for list in result.all(&[kind.field()]) {
            let Json::Array(items) = list else { continue };
            for item in items {
                for name in item.all(&[kind.key()]) {
                    if let Json::String(name) = name {
                        names.push(name.as_str());
                    }
                }
            }
        }
    }
    names
}

/// A JSON value that keeps every member of an object, duplicates included, in order.
enum Json {
    Scalar,
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    /// Every value of member `path[0]` (then `path[1]`, ...), for all duplicates.
    fn all(&self, path: &[&str]) -> Vec<&Json> {
        let Some((first, rest)) = path.split_first() else {
            return vec![self];
        };
        match self {
            Json::Object(members) => {
                members.iter().filter(|(k, _)| k == first).flat_map(|(_, v)| v.all(rest)).collect()
            }
            _ => Vec::new(),
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Json, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Json, E> {
        Ok(Json::Scalar)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Json, E> {
        Ok(Json::Scalar)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Json, E> {
        Ok(Json::Scalar)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Json, E> {
        Ok(Json::Scalar)
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Scalar)
    }

    fn visit_str<E>(self, s: &str) -> Result<Json, E> {
        Ok(Json::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Json, E> {
        Ok(Json::String(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut members = Vec::new();
        while let Some(member) = map.next_entry::<String, Json>()? {
            members.push(member);
        }
        Ok(Json::Object(members))
    }
}
