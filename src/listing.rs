//! Filtering of MCP list replies (`tools/list`, `prompts/list`, `resources/list`,
//! `resources/templates/list`) so a caller only sees what they may use.
//!
//! The reply body is either one JSON-RPC message (`application/json`) or a Server-Sent
//! Events stream (`text/event-stream`) carrying JSON-RPC messages in its events. Only
//! responses with a `result.<field>` array are rewritten; everything else passes through
//! byte for byte. Anything not understood yields `None` so the caller can fail closed.

use serde_json::Value;

/// Which list a reply answers (from the request's method).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Tools,
    Prompts,
    Resources,
    ResourceTemplates,
}

impl ListKind {
    /// The list a request method asks for, if it is a list method.
    pub fn of_method(method: &str) -> Option<ListKind> {
        match method {
            "tools/list" => Some(ListKind::Tools),
            "prompts/list" => Some(ListKind::Prompts),
            "resources/list" => Some(ListKind::Resources),
            "resources/templates/list" => Some(ListKind::ResourceTemplates),
            _ => None,
        }
    }

    /// The member of `result` that holds the list.
    pub fn field(self) -> &'static str {
        match self {
            ListKind::Tools => "tools",
            ListKind::Prompts => "prompts",
            ListKind::Resources => "resources",
            ListKind::ResourceTemplates => "resourceTemplates",
        }
    }

    /// The item member that names it, the same thing policies match against
    /// (`tools/call` name, `prompts/get` name, `resources/read` URI).
    pub fn key(self) -> &'static str {
        match self {
            ListKind::Tools | ListKind::Prompts => "name",
            ListKind::Resources => "uri",
            ListKind::ResourceTemplates => "uriTemplate",
        }
    }
}

/// What was removed, for audit.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Filtered {
    /// Items left in the reply.
    pub kept: usize,
    /// The name (URI for resources, URI template for templates) of each removed item, in
    /// reply order; [`MALFORMED`] for an item that is not an object or has no such name.
    pub removed: Vec<String>,
}

/// Stands for a removed item that had no name to report. MCP names and URIs cannot
/// contain `<`, so it does not collide with a real one.
pub const MALFORMED: &str = "<malformed item>";

/// Rewrites a list reply body, keeping only the items `keep` accepts.
///
/// `keep` gets each item as a JSON value. Items that are not objects or lack their name
/// (`name`, `uri` or `uriTemplate`) are dropped without asking `keep`: a client could not
/// use them anyway, and an item the gateway cannot name is one it cannot authorize.
/// The body is JSON or SSE according to `content_type` (media type compared
/// case-insensitively, parameters ignored). Unchanged messages and SSE events are
/// returned byte for byte; a rewritten SSE event keeps its other lines (`id:`, `event:`,
/// `retry:`, comments) and gets its JSON in a single `data:` line.
///
/// Returns `None` when the body is not understood (not UTF-8, invalid JSON, a batch, a
/// list that is not an array, unknown content type).
pub fn filter_reply(
    body: &[u8],
    content_type: &str,
    kind: ListKind,
    keep: &mut dyn FnMut(&Value) -> bool,
) -> Option<(Vec<u8>, Filtered)> {
    let mut filtered = Filtered::default();
    let text = std::str::from_utf8(body).ok()?;
    let out = match media_type(content_type)? {
        Media::Json => match filter_message(text, kind, keep, &mut filtered)? {
            Some(json) => json.into_bytes(),
            None => body.to_vec(),
        },
        Media::EventStream => filter_event_stream(text, kind, keep, &mut filtered)?,
    };
    Some((out, filtered))
}

/// Every well-formed item of a list reply (JSON or SSE), in order, for callers that only
/// read it (e.g. to learn tool annotations). Items [`filter_reply`] would drop as
/// malformed are left out. `None` when not understood.
pub fn items(body: &[u8], content_type: &str, kind: ListKind) -> Option<Vec<Value>> {
    let mut found = Vec::new();
    filter_reply(body, content_type, kind, &mut |item| {
        found.push(item.clone());
        true
    })?;
    Some(found)
}

enum Media {
    Json,
    EventStream,
}

fn media_type(content_type: &str) -> Option<Media> {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    if media.eq_ignore_ascii_case("application/json") {
        Some(Media::Json)
    } else if media.eq_ignore_ascii_case("text/event-stream") {
        Some(Media::EventStream)
    } else {
        None
    }
}

/// Filters one JSON-RPC message. `Some(None)`: nothing to change; `Some(Some(json))`:
/// the rewritten message, compact (no raw newline, so it fits one SSE `data:` line).
fn filter_message(
    text: &str,
    kind: ListKind,
    keep: &mut dyn FnMut(&Value) -> bool,
    filtered: &mut Filtered,
) -> Option<Option<String>> {
    let mut message: Value = serde_json::from_str(text).ok()?;
    // Batches left MCP in 2025-06-18; filtering one element and not another would leak.
    let object = message.as_object_mut()?;
    // Anything carrying `result.<field>` is filtered, whatever else it claims to be:
    // filtering only removes, so being generous here is the safe side.
    let Some(list) =
        object.get_mut("result").and_then(Value::as_object_mut).and_then(|result| result.get_mut(kind.field()))
    else {
        return Some(None);
    };
    let list = list.as_array_mut()?;
    let before = list.len();
    list.retain(|item| {
        // `get` is `None` for anything but an object, so this also drops non-objects.
        let Some(name) = item.get(kind.key()).and_then(Value::as_str) else {
            filtered.removed.push(MALFORMED.to_string());
            return false;
        };
        if keep(item) {
            true
        } else {
            filtered.removed.push(name.to_string());
            false
        }
    });
    filtered.kept += list.len();
    if list.len() == before {
        return Some(None);
    }
    serde_json::to_string(&message).ok().map(Some)
}

/// One line of an SSE stream with its terminator (`\r\n`, `\n`, `\r`, or empty at the
/// end of the body), so unchanged lines are written back exactly.
struct Line<'a> {
    text: &'a str,
    end: &'a str,
}

/// Splits on every SSE line terminator: a lone `\r` ends a line for clients, so it must
/// for the filter too, or a message could hide inside what looks like one line.
fn lines(mut rest: &str) -> Vec<Line<'_>> {
    let mut lines = Vec::new();
    while !rest.is_empty() {
        let Some(at) = rest.find(['\r', '\n']) else {
            lines.push(Line { text: rest, end: "" });
            break;
        };
        let (text, tail) = rest.split_at(at);
        let width = if tail.starts_with("\r\n") { 2 } else { 1 };
        let (end, tail) = tail.split_at(width);
        lines.push(Line { text, end });
        rest = tail;
    }
    lines
}

/// The value of a `data` field line, per the SSE field syntax (`name: value`, at most
/// one space dropped after the colon, a bare `name` has an empty value).
fn data_value(line: &str) -> Option<&str> {
    let (name, value) = line.split_once(':').unwrap_or((line, ""));
    (name == "data").then(|| value.strip_prefix(' ').unwrap_or(value))
}

fn filter_event_stream(
    text: &str,
    kind: ListKind,
    keep: &mut dyn FnMut(&Value) -> bool,
    filtered: &mut Filtered,
) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    // A leading byte order mark is not part of the first line.
    let text = match text.strip_prefix('\u{feff}') {
        Some(rest) => {
            out.extend_from_slice("\u{feff}".as_bytes());
            rest
        }
        None => text,
    };
    let lines = lines(text);
    // An event is its lines up to and including the blank line that ends it. A last
    // event with no blank line is still filtered: lenient clients may act on it.
    for event in lines.split_inclusive(|line| line.text.is_empty()) {
        let data: Vec<&str> = event.iter().filter_map(|l| data_value(l.text)).collect();
        let data = data.join("\n");
        let rewritten = if data.trim().is_empty() {
            None // priming events, comments, retry hints: no message
        } else {
            filter_message(&data, kind, keep, filtered)?
        };
        let mut first_data = true;
        for line in event {
            match &rewritten {
                Some(json) if data_value(line.text).is_some() => {
                    if first_data {
                        out.extend_from_slice(b"data: ");
                        out.extend_from_slice(json.as_bytes());
                        out.extend_from_slice(line.end.as_bytes());
                        first_data = false;
                    }
                }
                _ => {
                    out.extend_from_slice(line.text.as_bytes());
                    out.extend_from_slice(line.end.as_bytes());
                }
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const JSON: &str = "application/json";
    const SSE: &str = "text/event-stream";

    /// Filters with a keep that accepts the items named (by their kind's key) in `allowed`.
    fn allow(body: &str, content_type: &str, kind: ListKind, allowed: &[&str]) -> Option<(String, Filtered)> {
        let mut keep = |item: &Value| {
            let name = item.get(kind.key()).and_then(Value::as_str).unwrap();
            allowed.contains(&name)
        };
        let (out, filtered) = filter_reply(body.as_bytes(), content_type, kind, &mut keep)?;
        Some((String::from_utf8(out).unwrap(), filtered))
    }

    fn removed(kept: usize, names: &[&str]) -> Filtered {
        Filtered { kept, removed: names.iter().map(|n| n.to_string()).collect() }
    }

    /// The body rmcp 3.11's streamable HTTP server sends for a `tools/list`: a priming
    /// event (empty data, id, retry), then the response (`data:` before `id:`).
    const RMCP_TOOLS: &str = concat!(
        "data: \nid: 0\nretry: 3000\n\n",
        r#"data: {"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"get_item","inputSchema":{"type":"object"}},{"name":"delete_item","inputSchema":{"type":"object"},"annotations":{"destructiveHint":true}}]}}"#,
        "\nid: 0/0\n\n",
    );

    #[test]
    fn list_kind_of_method_and_field() {
        let cases = [
            ("tools/list", Some(ListKind::Tools), "tools"),
            ("prompts/list", Some(ListKind::Prompts), "prompts"),
            ("resources/list", Some(ListKind::Resources), "resources"),
            ("resources/templates/list", Some(ListKind::ResourceTemplates), "resourceTemplates"),
            ("tools/call", None, ""),
            ("Tools/List", None, ""),
            ("", None, ""),
        ];
        for (method, kind, field) in cases {
            assert_eq!(ListKind::of_method(method), kind, "{method}");
            if let Some(kind) = kind {
                assert_eq!(kind.field(), field);
            }
        }
    }

    #[test]
    fn filters_rmcp_event_stream_by_annotation() {
        let mut keep = |item: &Value| item.pointer("/annotations/destructiveHint") != Some(&json!(true));
        let (out, filtered) = filter_reply(RMCP_TOOLS.as_bytes(), SSE, ListKind::Tools, &mut keep).unwrap();
        let expected = concat!(
            "data: \nid: 0\nretry: 3000\n\n",
            r#"data: {"id":2,"jsonrpc":"2.0","result":{"tools":[{"inputSchema":{"type":"object"},"name":"get_item"}]}}"#,
            "\nid: 0/0\n\n",
        );
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        assert_eq!(filtered, removed(1, &["delete_item"]));
    }

    #[test]
    fn json_bodies() {
        let tools = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"},{"name":"b"},{"name":"c"}]}}"#;
        // (case, content type, body, allowed names, expected body and audit)
        type Case<'a> = (&'a str, &'a str, &'a str, &'a [&'a str], Option<(&'a str, Filtered)>);
        let cases: &[Case] = &[
            (
                "keeps allowed items in order",
                JSON,
                tools,
                &["c", "a"],
                Some((
                    r#"{"id":1,"jsonrpc":"2.0","result":{"tools":[{"name":"a"},{"name":"c"}]}}"#,
                    removed(2, &["b"]),
                )),
            ),
            ("nothing removed: byte for byte", JSON, tools, &["a", "b", "c"], Some((tools, removed(3, &[])))),
            (
                "everything removed",
                JSON,
                tools,
                &[],
                Some((r#"{"id":1,"jsonrpc":"2.0","result":{"tools":[]}}"#, removed(0, &["a", "b", "c"]))),
            ),
            (
                "nextCursor kept",
                JSON,
                r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"},{"name":"b"}],"nextCursor":"p2"}}"#,
                &["b"],
                Some((
                    r#"{"id":1,"jsonrpc":"2.0","result":{"nextCursor":"p2","tools":[{"name":"b"}]}}"#,
                    removed(1, &["a"]),
                )),
            ),
            (
                "non-object and unnamed items dropped",
                JSON,
                r#"{"jsonrpc":"2.0","id":1,"result":{"tools":["a",{"title":"x"},{"name":7},null,{"name":"a"}]}}"#,
                &["a"],
                Some((r#"{"id":1,"jsonrpc":"2.0","result":{"tools":[{"name":"a"}]}}"#, removed(1, &[MALFORMED; 4]))),
            ),
            (
                "error response unchanged",
                JSON,
                r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"no"}}"#,
                &[],
                Some((r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"no"}}"#, removed(0, &[]))),
            ),
            (
                "result without the field unchanged",
                JSON,
                r#"{"jsonrpc":"2.0","id":1,"result":{"prompts":[{"name":"p"}]}}"#,
                &[],
                Some((r#"{"jsonrpc":"2.0","id":1,"result":{"prompts":[{"name":"p"}]}}"#, removed(0, &[]))),
            ),
            (
                "media type case-insensitive, parameters ignored",
                "Application/JSON ; charset=utf-8",
                tools,
                &["a", "b"],
                Some((
                    r#"{"id":1,"jsonrpc":"2.0","result":{"tools":[{"name":"a"},{"name":"b"}]}}"#,
                    removed(2, &["c"]),
                )),
            ),
            ("list not an array", JSON, r#"{"jsonrpc":"2.0","id":1,"result":{"tools":{"name":"a"}}}"#, &[], None),
            ("batch", JSON, &format!("[{tools}]"), &[], None),
            ("invalid JSON", JSON, r#"{"jsonrpc":"2.0","#, &[], None),
            ("trailing garbage", JSON, &format!("{tools}x"), &[], None),
            ("empty body", JSON, "", &[], None),
            ("unknown content type", "text/plain", tools, &[], None),
            ("missing content type", "", tools, &[], None),
        ];
        for (name, content_type, body, allowed, expected) in cases {
            let got = allow(body, content_type, ListKind::Tools, allowed);
            let expected = expected.as_ref().map(|(b, f)| (b.to_string(), f.clone()));
            assert_eq!(got, expected, "{name}");
        }
    }

    #[test]
    fn event_streams() {
        let response = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"},{"name":"b"}]}}"#;
        let filtered = r#"{"id":1,"jsonrpc":"2.0","result":{"tools":[{"name":"a"}]}}"#;
        let note = r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"data":"hi"}}"#;
        let cases: &[(&str, String, Option<String>)] = &[
            (
                "CRLF line endings",
                format!("id: 0\r\nretry: 3000\r\ndata:\r\n\r\nevent: message\r\ndata: {response}\r\nid: 1\r\n\r\n"),
                Some(format!("id: 0\r\nretry: 3000\r\ndata:\r\n\r\nevent: message\r\ndata: {filtered}\r\nid: 1\r\n\r\n")),
            ),
            (
                "lone CR line endings",
                format!("event: message\rdata: {response}\rid: 1\r\r"),
                Some(format!("event: message\rdata: {filtered}\rid: 1\r\r")),
            ),
            (
                "data split over lines",
                "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\ndata: \"result\":{\"tools\":[\ndata: {\"name\":\"a\"},{\"name\":\"b\"}]}}\nid: 7\n\n".to_string(),
                Some(format!("event: message\ndata: {filtered}\nid: 7\n\n")),
            ),
            (
                "data without a space",
                format!("data:{response}\n\n"),
                Some(format!("data: {filtered}\n\n")),
            ),
            (
                "bare data line joins as empty",
                "data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":\ndata\ndata: {\"tools\":[{\"name\":\"b\"}]}}\n\n".to_string(),
                Some("data: {\"id\":1,\"jsonrpc\":\"2.0\",\"result\":{\"tools\":[]}}\n\n".to_string()),
            ),
            (
                "events before and after kept byte for byte",
                format!(": keep-alive\n\nevent: message\ndata: {note}\n\ndata: {response}\n\ndata:  {note}\r\nid: 9\n\n:\n\n"),
                Some(format!(": keep-alive\n\nevent: message\ndata: {note}\n\ndata: {filtered}\n\ndata:  {note}\r\nid: 9\n\n:\n\n")),
            ),
            (
                "comment inside the event kept",
                format!("id: 1\n: note\ndata: {response}\n\n"),
                Some(format!("id: 1\n: note\ndata: {filtered}\n\n")),
            ),
            (
                "last event without a blank line still filtered",
                format!("data: {response}\nid: 3"),
                Some(format!("data: {filtered}\nid: 3")),
            ),
            (
                "byte order mark kept",
                format!("\u{feff}data: {response}\n\n"),
                Some(format!("\u{feff}data: {filtered}\n\n")),
            ),
            (
                "error response passes through",
                "data: {\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{\"code\":-32603,\"message\":\"x\"}}\nid: 0\n\n".to_string(),
                Some("data: {\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{\"code\":-32603,\"message\":\"x\"}}\nid: 0\n\n".to_string()),
            ),
            (
                "nothing removed: byte for byte",
                format!("data:{response}\r\n\r\n").replace(r#"{"name":"b"}"#, r#"{"name":"a"}"#),
                Some(format!("data:{response}\r\n\r\n").replace(r#"{"name":"b"}"#, r#"{"name":"a"}"#)),
            ),
            ("empty body", String::new(), Some(String::new())),
            ("data not JSON", "data: hello\n\n".to_string(), None),
            ("data is a batch", format!("data: [{response}]\n\n"), None),
            (
                "message hidden behind a lone CR is still parsed",
                format!("data: x\rdata: {response}\n\n"),
                None,
            ),
        ];
        for (name, body, expected) in cases {
            let got = allow(body, SSE, ListKind::Tools, &["a"]).map(|(b, _)| b);
            assert_eq!(&got, expected, "{name}");
        }
    }

    #[test]
    fn rewritten_data_is_one_line() {
        let body = "data: {\ndata:   \"jsonrpc\": \"2.0\", \"id\": 1,\ndata:  \"result\": {\"tools\": [\ndata: {\"name\": \"a\", \"description\": \"line one\\nline two\\r\"},\ndata: {\"name\": \"b\"}]}}\n\n";
        let (out, filtered) = allow(body, SSE, ListKind::Tools, &["a"]).unwrap();
        assert_eq!(out.matches('\n').count(), 2, "{out}");
        assert!(!out.contains('\r'));
        assert!(out.contains(r#""line one\nline two\r""#));
        assert_eq!(filtered, removed(1, &["b"]));
    }

    #[test]
    fn other_kinds_use_their_key() {
        let cases = [
            (
                ListKind::Prompts,
                r#"{"jsonrpc":"2.0","id":1,"result":{"prompts":[{"name":"p1"},{"name":"p2"}]}}"#,
                &["p2"][..],
                r#"{"id":1,"jsonrpc":"2.0","result":{"prompts":[{"name":"p2"}]}}"#,
                removed(1, &["p1"]),
            ),
            (
                ListKind::Resources,
                r#"{"jsonrpc":"2.0","id":1,"result":{"resources":[{"uri":"file:///a","name":"a"},{"name":"b"},{"uri":"file:///c","name":"c"}]}}"#,
                &["file:///c"][..],
                r#"{"id":1,"jsonrpc":"2.0","result":{"resources":[{"name":"c","uri":"file:///c"}]}}"#,
                removed(1, &["file:///a", MALFORMED]),
            ),
            (
                ListKind::ResourceTemplates,
                r#"{"jsonrpc":"2.0","id":1,"result":{"resourceTemplates":[{"uriTemplate":"db://{t}","name":"t"},{"uriTemplate":"x://{y}","name":"y"}]}}"#,
                &["x://{y}"][..],
                r#"{"id":1,"jsonrpc":"2.0","result":{"resourceTemplates":[{"name":"y","uriTemplate":"x://{y}"}]}}"#,
                removed(1, &["db://{t}"]),
            ),
        ];
        for (kind, body, allowed, expected, filtered) in cases {
            let got = allow(body, JSON, kind, allowed);
            assert_eq!(got, Some((expected.to_string(), filtered)), "{kind:?}");
        }
    }

    #[test]
    fn items_of_json_and_event_stream() {
        let expected = vec![
            json!({"name":"get_item","inputSchema":{"type":"object"}}),
            json!({"name":"delete_item","inputSchema":{"type":"object"},"annotations":{"destructiveHint":true}}),
        ];
        let sse = items(RMCP_TOOLS.as_bytes(), "text/event-stream; charset=utf-8", ListKind::Tools);
        assert_eq!(sse, Some(expected.clone()));

        let body = json!({"jsonrpc":"2.0","id":2,"result":{"tools":[expected[0], 3, expected[1]]}});
        let json = items(body.to_string().as_bytes(), JSON, ListKind::Tools);
        assert_eq!(json, Some(expected));

        let error = br#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"x"}}"#;
        assert_eq!(items(error, JSON, ListKind::Tools), Some(vec![]));
        assert_eq!(items(b"{", JSON, ListKind::Tools), None);
        assert_eq!(items(b"\xff\xfe", JSON, ListKind::Tools), None);
        assert_eq!(items(b"data: \xff\n\n", SSE, ListKind::Tools), None);
        assert_eq!(items(RMCP_TOOLS.as_bytes(), "text/html", ListKind::Tools), None);
    }
}
