//! Filtering of MCP list replies (`tools/list`, `prompts/list`, `resources/list`,
//! `resources/templates/list`) so a caller only sees what they may use.
//!
//! The reply body is either one JSON-RPC message (`application/json`, [`filter_reply`])
//! or a Server-Sent Events stream (`text/event-stream`, [`EventStream`], fed chunk by
//! chunk as it arrives, so streams keep streaming). Only messages with a `result.<field>`
//! array are rewritten; everything else passes through byte for byte, except what a
//! compliant SSE client would not read (such lines are dropped) and messages with a
//! repeated key (re-serialized from the reading that was filtered). Anything not
//! understood is refused (`None`, or a dropped event) so the caller fails closed.

use crate::headers;
use crate::jsonrpc;
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
    /// Every list, for streams where any of them may arrive (a GET stream replaying
    /// earlier replies).
    pub const ALL: [ListKind; 4] =
        [ListKind::Tools, ListKind::Prompts, ListKind::Resources, ListKind::ResourceTemplates];

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
        Media::Json => {
            let mut keep = |_: ListKind, item: &Value| keep(item);
            match filter_message(text, &[kind], &mut keep, &mut filtered).ok()? {
                Some(json) => json.into_bytes(),
                None => body.to_vec(),
            }
        }
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
    let media = headers::media_type(content_type);
    if media.eq_ignore_ascii_case("application/json") {
        Some(Media::Json)
    } else if media.eq_ignore_ascii_case("text/event-stream") {
        Some(Media::EventStream)
    } else {
        None
    }
}

/// What filtering asks of its caller.
pub trait Visitor {
    /// Whether the caller may see this list item.
    fn keep(&mut self, kind: ListKind, item: &Value) -> bool;
    /// Every message read (before filtering), for callers that learn from replies.
    fn message(&mut self, _message: &serde_json::Map<String, Value>) {}
}

impl<F: FnMut(ListKind, &Value) -> bool> Visitor for F {
    fn keep(&mut self, kind: ListKind, item: &Value) -> bool {
        self(kind, item)
    }
}

/// Members of a list result (what the four list methods answer).
const RESULT_FIELDS: &[&str] = &["tools", "prompts", "resources", "resourceTemplates", "nextCursor", "_meta"];

/// Filters one JSON-RPC message for `kinds`. `Ok(None)`: nothing to change;
/// `Ok(Some(json))`: the rewritten message, compact (no raw newline, so it fits one SSE
/// `data:` line). `Err`: not understood, must not reach the client.
///
/// A message with a repeated key is re-serialized from the reading the gateway filtered
/// (the last copy, as serde keeps it), so a client that keeps the first copy cannot see
/// another list. Keys that differ from the envelope's or the result's fields only by
/// letter case are refused, as in requests.
fn filter_message(
    text: &str,
    kinds: &[ListKind],
    keep: &mut dyn Visitor,
    filtered: &mut Filtered,
) -> Result<Option<String>, ()> {
    let (mut message, mut changed) = match jsonrpc::parse_strict(text.as_bytes()) {
        Ok(value) => (value, false),
        Err(jsonrpc::ParseError::DuplicateKey(_)) => (serde_json::from_str::<Value>(text).map_err(|_| ())?, true),
        Err(_) => return Err(()),
    };
    // Batches left MCP in 2025-06-18; filtering one element and not another would leak.
    let object = message.as_object_mut().ok_or(())?;
    jsonrpc::check_keys(object, jsonrpc::ENVELOPE_FIELDS, "reply").map_err(|_| ())?;
    keep.message(object);
    // Anything carrying `result.<field>` is filtered, whatever else it claims to be:
    // filtering only removes, so being generous here is the safe side.
    if let Some(result) = object.get_mut("result").and_then(Value::as_object_mut) {
        jsonrpc::check_keys(result, RESULT_FIELDS, "result").map_err(|_| ())?;
        for &kind in kinds {
            let Some(list) = result.get_mut(kind.field()) else { continue };
            let list = list.as_array_mut().ok_or(())?;
            let before = list.len();
            list.retain(|item| {
                // `get` is `None` for anything but an object, so this also drops non-objects.
                let Some(name) = item.get(kind.key()).and_then(Value::as_str) else {
                    filtered.removed.push(MALFORMED.to_string());
                    return false;
                };
                if keep.keep(kind, item) {
                    true
                } else {
                    filtered.removed.push(name.to_string());
                    false
                }
            });
            filtered.kept += list.len();
            changed |= list.len() != before;
        }
    }
    if !changed {
        return Ok(None);
    }
    serde_json::to_string(&message).map(Some).map_err(|_| ())
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

/// Lines a compliant SSE parser acts on: the four fields, comments, blank lines. Any other
/// line (` data: ...`, `Data: ...`, a bare JSON body labelled as SSE) is ignored by a
/// compliant client but might be read by a lenient one, so it is dropped.
fn is_sse_line(line: &str) -> bool {
    if line.is_empty() || line.starts_with(':') {
        return true;
    }
    let name = line.split_once(':').map_or(line, |(name, _)| name);
    matches!(name, "data" | "event" | "id" | "retry")
}

/// Filters one SSE event (its lines up to and including the blank line that ends it).
/// `Err`: the event carries a message that cannot be read; it must not be passed on.
fn filter_event(
    event: &str,
    kinds: &[ListKind],
    keep: &mut dyn Visitor,
    filtered: &mut Filtered,
) -> Result<Vec<u8>, ()> {
    let lines: Vec<Line> = lines(event).into_iter().filter(|l| is_sse_line(l.text)).collect();
    let data: Vec<&str> = lines.iter().filter_map(|l| data_value(l.text)).collect();
    let data = data.join("\n");
    let rewritten = if data.trim().is_empty() {
        None // priming events, comments, retry hints: no message
    } else {
        filter_message(&data, kinds, keep, filtered)?
    };
    let mut out = Vec::with_capacity(event.len());
    let mut first_data = true;
    for line in &lines {
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
    Ok(out)
}

fn filter_event_stream(
    text: &str,
    kind: ListKind,
    keep: &mut dyn FnMut(&Value) -> bool,
    filtered: &mut Filtered,
) -> Option<Vec<u8>> {
    let mut stream = EventStream::new(usize::MAX, &[kind]);
    let mut keep = |_: ListKind, item: &Value| keep(item);
    let mut out = stream.push(text.as_bytes(), &mut keep).ok()?;
    out.extend(stream.finish(&mut keep));
    *filtered = std::mem::take(&mut stream.filtered);
    (stream.unreadable == 0).then_some(out)
}

/// An SSE event grew past the bound before it ended: the stream must end rather than
/// pass it unfiltered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTooLarge {
    pub limit: usize,
}

/// Filters a Server-Sent Events stream as it arrives, event by event, so GET streams and
/// long POST streams keep streaming: only the event being received is held (up to
/// `max_event` bytes), every complete event is passed on at once (rewritten when it
/// carries a list result, dropped when it cannot be read).
#[derive(Debug)]
pub struct EventStream {
    kinds: Vec<ListKind>,
    max_event: usize,
    /// Bytes of the event not yet complete.
    pending: Vec<u8>,
    /// How far `pending` has been scanned, and where the line being scanned began.
    scanned: usize,
    line_start: usize,
    /// A byte order mark may open the stream.
    at_start: bool,
    /// What the list results on the stream lost, for audit.
    pub filtered: Filtered,
    /// Events dropped because they could not be read.
    pub unreadable: usize,
}

impl EventStream {
    /// Filters the list results of `kinds` (a GET stream: all of them).
    pub fn new(max_event: usize, kinds: &[ListKind]) -> EventStream {
        EventStream {
            kinds: kinds.to_vec(),
            max_event,
            pending: Vec::new(),
            scanned: 0,
            line_start: 0,
            at_start: true,
            filtered: Filtered::default(),
            unreadable: 0,
        }
    }

    /// Takes the next chunk; returns the bytes to forward now.
    pub fn push(&mut self, chunk: &[u8], keep: &mut dyn Visitor) -> Result<Vec<u8>, EventTooLarge> {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::new();
        if self.at_start {
            const BOM: &[u8] = "\u{feff}".as_bytes();
            if self.pending.len() < BOM.len() && BOM.starts_with(&self.pending) {
                return Ok(out); // cannot tell yet
            }
            self.at_start = false;
            if self.pending.starts_with(BOM) {
                out.extend_from_slice(BOM);
                self.pending.drain(..BOM.len());
            }
        }
        while let Some(end) = self.next_event_end() {
            let event: Vec<u8> = self.pending.drain(..end).collect();
            self.scanned = 0;
            self.line_start = 0;
            out.extend(self.event(&event, keep));
        }
        if self.pending.len() > self.max_event {
            return Err(EventTooLarge { limit: self.max_event });
        }
        Ok(out)
    }

    /// The stream ended: filters what is left (a last event without its blank line, which
    /// lenient clients may still act on).
    pub fn finish(&mut self, keep: &mut dyn Visitor) -> Vec<u8> {
        let rest = std::mem::take(&mut self.pending);
        self.scanned = 0;
        self.line_start = 0;
        if rest.is_empty() {
            return rest;
        }
        self.event(&rest, keep)
    }

    fn event(&mut self, event: &[u8], keep: &mut dyn Visitor) -> Vec<u8> {
        let filtered = std::str::from_utf8(event)
            .map_err(|_| ())
            .and_then(|text| filter_event(text, &self.kinds, keep, &mut self.filtered));
        filtered.unwrap_or_else(|()| {
            self.unreadable += 1;
            Vec::new()
        })
    }

    /// The end of the first complete event in `pending` (just past its blank line).
    fn next_event_end(&mut self) -> Option<usize> {
        let mut i = self.scanned;
        while let Some(&b) = self.pending.get(i) {
            if b != b'\r' && b != b'\n' {
                i += 1;
                continue;
            }
            // A `\r` that ends the buffer may be half of a `\r\n`: decide when more arrives.
            if b == b'\r' && i + 1 == self.pending.len() {
                break;
            }
            let width = if b == b'\r' && self.pending.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
            let blank = i == self.line_start;
            i += width;
            self.line_start = i;
            if blank {
                return Some(i);
            }
        }
        self.scanned = i;
        None
    }
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

    /// Feeds `body` to a stream in chunks of `size`, allowing only `allowed` names.
    fn stream(body: &[u8], size: usize, allowed: &[&str], max: usize) -> Result<(Vec<u8>, EventStream), EventTooLarge> {
        let mut s = EventStream::new(max, &ListKind::ALL);
        let mut keep = |kind: ListKind, item: &Value| allowed.contains(&item[kind.key()].as_str().unwrap());
        let mut out = Vec::new();
        for chunk in body.chunks(size.max(1)) {
            out.extend(s.push(chunk, &mut keep)?);
        }
        out.extend(s.finish(&mut keep));
        Ok((out, s))
    }

    #[test]
    fn streams_give_the_same_bytes_however_the_chunks_fall() {
        let response = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a"},{"name":"b"}]}}"#;
        let bodies = [
            format!("\u{feff}: hi\n\nevent: message\r\ndata: {response}\r\nid: 1\r\n\r\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"ping\"}}\r\r"),
            format!("data: {response}\rid: 3\r\rdata: x\n"),
            String::new(),
        ];
        for body in bodies {
            let (whole, _) = stream(body.as_bytes(), usize::MAX, &["a"], usize::MAX).unwrap();
            for size in 1..12 {
                let (chunked, _) = stream(body.as_bytes(), size, &["a"], usize::MAX).unwrap();
                assert_eq!(String::from_utf8_lossy(&chunked), String::from_utf8_lossy(&whole), "chunks of {size}");
            }
            assert!(!String::from_utf8_lossy(&whole).contains("\"b\""), "{body:?}");
        }
    }

    #[test]
    fn a_get_stream_filters_every_kind_of_list() {
        let body = concat!(
            "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{\"data\":\"hi\"}}\n\n",
            "id: 5\ndata: {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"tools\":[{\"name\":\"a\"},{\"name\":\"secret\"}]}}\n\n",
            "data: {\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{\"prompts\":[{\"name\":\"secret\"}]}}\n\n",
            "data: {\"jsonrpc\":\"2.0\",\"id\":4,\"result\":{\"resources\":[{\"uri\":\"secret\"}],\"resourceTemplates\":[{\"uriTemplate\":\"secret\"}]}}\n\n",
        );
        let (out, s) = stream(body.as_bytes(), 7, &["a"], 1 << 20).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("secret"), "{out}");
        assert!(
            out.starts_with("data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\""),
            "unchanged events pass"
        );
        assert_eq!(s.filtered.removed, ["secret"; 4]);
    }

    #[test]
    fn only_what_a_compliant_client_reads_is_passed_on() {
        let tools = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"secret"}]}}"#;
        for body in [
            format!("  data: {tools}\n\n"),
            format!("Data: {tools}\n\n"),
            format!("{tools}\n\n"),
            tools.to_string(),
            format!("data:    {tools}\n\n"),
            format!("data: {}\n\n", tools.replace(r#""tools""#, r#""tools":[],"tools""#)),
            format!("data: {}\n\n", tools.replace(r#""result""#, r#""Result":{"tools":[{"name":"x"}]},"result""#)),
            format!("data: {}\n\n", tools.replace(r#""tools""#, r#""Tools":[{"name":"x"}],"tools""#)),
        ] {
            let (out, _) = stream(body.as_bytes(), 5, &[], 1 << 20).unwrap();
            let out = String::from_utf8(out).unwrap();
            assert!(!out.contains("secret") && !out.contains(r#""x""#), "{body:?} gave {out:?}");
        }
        // A duplicated list is re-serialized from the reading the gateway filtered.
        let dup = r#"data: {"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"secret"}],"tools":[{"name":"a"}]}}"#;
        let (out, _) = stream(format!("{dup}\n\n").as_bytes(), 64, &["a"], 1 << 20).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "data: {\"id\":1,\"jsonrpc\":\"2.0\",\"result\":{\"tools\":[{\"name\":\"a\"}]}}\n\n"
        );
    }

    #[test]
    fn an_event_over_the_bound_ends_the_stream() {
        let big = format!(
            "data: {{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{{\"tools\":[{{\"name\":\"{}\"}}]}}}}\n\n",
            "s".repeat(200)
        );
        let err = stream(big.as_bytes(), 16, &[], 100).unwrap_err();
        assert_eq!(err, EventTooLarge { limit: 100 });
        // Events under the bound stream through; the bound is per event, not per stream.
        let small = "data: {\"jsonrpc\":\"2.0\",\"method\":\"ping\"}\n\n".repeat(50);
        assert!(stream(small.as_bytes(), 16, &[], 100).is_ok());
    }

    #[test]
    fn unreadable_events_are_dropped_and_counted() {
        let body = b"data: not json\n\ndata: \xff\n\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"ping\"}\n\n";
        let (out, s) = stream(body, 3, &[], 1 << 20).unwrap();
        assert_eq!(out, b"data: {\"jsonrpc\":\"2.0\",\"method\":\"ping\"}\n\n");
        assert_eq!(s.unreadable, 2);
    }
}
