//! What a reply said, read as it streams past.
//!
//! The audit record keeps a reply's outcome at three levels: the HTTP status, the JSON-RPC
//! error (code and message) when the reply was one, and for `tools/call` whether the
//! result had `isError: true`. [`ReplyScan`] finds the first JSON-RPC response in an
//! `application/json` body or a `text/event-stream` reply, chunk by chunk, without
//! holding the reply: strings are skipped unless they are one of the few values kept
//! (a key it compares, the error message, cut to [`MAX_MESSAGE_BYTES`]), so its memory is
//! a few hundred bytes whatever the reply's size. It stops after a byte limit: a reply
//! that has not answered within it is `unknown`, as is one that cannot be read one way
//! only (malformed, a batch, a repeated `error`, `result` or `isError`).

use serde::Serialize;

/// Deepest nesting followed; deeper replies are `unknown`.
pub const MAX_DEPTH: usize = 128;
/// Longest error message kept (bytes, cut on a character boundary).
pub const MAX_MESSAGE_BYTES: usize = 256;
/// Longest key compared; longer keys are none of the ones looked for.
const MAX_KEY_BYTES: usize = 8;
/// Longest error code kept as text (an `i64` with sign and exponent fits).
const MAX_NUMBER_BYTES: usize = 32;

/// A reply's outcome, as the audit record states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A result (not a failed tool call), or an accepted notification, or a stream that
    /// ended normally.
    Ok,
    /// A JSON-RPC error, or an HTTP error without one.
    Error,
    /// A `tools/call` result with `isError: true`.
    ToolError,
    /// Not known: the reply was too large, encoded, malformed, cut off, or never came.
    #[default]
    Unknown,
}

/// The first JSON-RPC response of a reply, reduced to what the record keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    /// The message had an `error` member (not `null`).
    pub error: bool,
    pub error_code: Option<i64>,
    pub error_message: Option<String>,
    /// `result.isError`, when it was a boolean.
    pub is_error: Option<bool>,
}

/// What a finished scan found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Response(Response),
    /// No response could be read; why.
    Unknown(&'static str),
}

/// Where a value sits, as far as the scan cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
enum Slot {
    Other,
    Root,
    /// The root object (its members are compared).
    Top,
    Error,
    Result,
    Method,
    Code,
    Message,
    IsError,
}

const SLOTS: usize = Slot::IsError as usize + 1;

impl JsonScan {
    fn seen(&self, slot: Slot) -> u8 {
        self.seen.get(slot as usize).copied().unwrap_or(0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    /// A value must come (`after_comma` in an array: `]` is not allowed).
    Value,
    /// Right after `[`: a value or `]`.
    ValueOrClose,
    /// Right after `{`: a key or `}`.
    KeyOrClose,
    /// After `,` in an object.
    Key,
    Colon,
    /// After a value: `,`, the container's close, or the end.
    AfterValue,
    Str,
    Escape,
    /// Hex digits still to read in a `\u` escape.
    Unicode(u8),
    Literal,
    Number,
    /// The root value is complete.
    Done,
    Failed(&'static str),
}

/// One JSON message, read incrementally.
#[derive(Debug, Clone)]
struct JsonScan {
    lex: Lex,
    /// Open containers: (is object, slot of the container).
    stack: Vec<(bool, Slot)>,
    /// Slot of the value being read (or the string being read as a key: `key`).
    slot: Slot,
    key: bool,
    /// Decoded text of a string or number being kept; `None` when skipped.
    text: Option<Vec<u8>>,
    /// The text was longer than kept.
    cut: bool,
    unicode: u32,
    literal: &'static [u8],
    literal_at: usize,
    /// How often each member looked for was found, by [`Slot`] (a repeated one makes the
    /// message ambiguous).
    seen: [u8; SLOTS],
    response: Response,
}

impl JsonScan {
    fn new() -> JsonScan {
        JsonScan {
            lex: Lex::Value,
            stack: Vec::new(),
            slot: Slot::Root,
            key: false,
            text: None,
            cut: false,
            unicode: 0,
            literal: b"",
            literal_at: 0,
            seen: [0; SLOTS],
            response: Response::default(),
        }
    }

    fn fail(&mut self, why: &'static str) {
        self.lex = Lex::Failed(why);
        self.stack = Vec::new();
        self.text = None;
    }

    fn push(&mut self, bytes: &[u8]) {
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            if matches!(self.lex, Lex::Failed(_)) {
                return;
            }
            // `false`: the byte ends a number and is read again in the next state.
            if self.byte(b) {
                i += 1;
            }
        }
    }

    /// Reads one byte; `false` when it was not consumed.
    fn byte(&mut self, b: u8) -> bool {
        match self.lex {
            Lex::Str => return self.string_byte(b),
            Lex::Escape => {
                let decoded = match b {
                    b'"' => b'"',
                    b'\\' => b'\\',
                    b'/' => b'/',
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'u' => {
                        self.unicode = 0;
                        self.lex = Lex::Unicode(4);
                        return true;
                    }
                    _ => {
                        self.fail("bad escape");
                        return true;
                    }
                };
                self.keep_bytes(&[decoded]);
                self.lex = Lex::Str;
            }
            Lex::Unicode(left) => {
                let Some(digit) = (b as char).to_digit(16) else {
                    self.fail("bad unicode escape");
                    return true;
                };
                self.unicode = self.unicode * 16 + digit;
                if left > 1 {
                    self.lex = Lex::Unicode(left - 1);
                } else {
                    // A surrogate half stands for a character no key looked for has, so
                    // it is kept as U+FFFD (for a message) or spoils the key.
                    let c = char::from_u32(self.unicode).unwrap_or(char::REPLACEMENT_CHARACTER);
                    let mut utf8 = [0u8; 4];
                    self.keep_bytes(c.encode_utf8(&mut utf8).as_bytes());
                    self.lex = Lex::Str;
                }
            }
            Lex::Literal => {
                if self.literal.get(self.literal_at) != Some(&b) {
                    self.fail("bad literal");
                    return true;
                }
                self.literal_at += 1;
                if self.literal_at == self.literal.len() {
                    if self.slot == Slot::IsError {
                        self.response.is_error = match self.literal {
                            b"true" => Some(true),
                            b"false" => Some(false),
                            _ => None,
                        };
                    }
                    self.value_done();
                }
            }
            Lex::Number => {
                if !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') {
                    self.number_done();
                    return false;
                }
                self.keep_bytes(&[b]);
            }
            _ if matches!(b, b' ' | b'\t' | b'\n' | b'\r') => {}
            Lex::Value | Lex::ValueOrClose => {
                if self.lex == Lex::ValueOrClose && b == b']' {
                    self.close(false);
                } else {
                    self.value_start(b);
                }
            }
            Lex::KeyOrClose | Lex::Key => match b {
                b'}' if self.lex == Lex::KeyOrClose => self.close(true),
                b'"' => {
                    self.key = true;
                    self.text = Some(Vec::new());
                    self.cut = false;
                    self.lex = Lex::Str;
                }
                _ => self.fail("expected a key"),
            },
            Lex::Colon => {
                if b == b':' {
                    self.lex = Lex::Value;
                } else {
                    self.fail("expected ':'");
                }
            }
            Lex::AfterValue => match (b, self.stack.last()) {
                (b',', Some((true, _))) => self.lex = Lex::Key,
                (b',', Some((false, _))) => self.lex = Lex::Value,
                (b'}', Some((true, _))) => self.close(true),
                (b']', Some((false, _))) => self.close(false),
                _ => self.fail("unexpected character"),
            },
            Lex::Done => self.fail("data after the message"),
            Lex::Failed(_) => {}
        }
        true
    }

    fn string_byte(&mut self, b: u8) -> bool {
        match b {
            b'"' => {
                if self.key {
                    self.key_done();
                } else {
                    if self.slot == Slot::Message {
                        let text = self.text.take().unwrap_or_default();
                        self.response.error_message = Some(message_text(&text, self.cut));
                    }
                    self.value_done();
                }
            }
            b'\\' => self.lex = Lex::Escape,
            0..=0x1f => self.fail("control character in a string"),
            _ => self.keep_bytes(&[b]),
        }
        true
    }

    /// Appends to the text being kept, up to its bound.
    fn keep_bytes(&mut self, bytes: &[u8]) {
        let limit = if self.key {
            MAX_KEY_BYTES
        } else if self.lex == Lex::Number {
            MAX_NUMBER_BYTES
        } else {
            MAX_MESSAGE_BYTES + 4
        };
        if let Some(text) = self.text.as_mut() {
            let room = limit.saturating_sub(text.len());
            if bytes.len() > room {
                self.cut = true;
            }
            text.extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or_default());
        }
    }

    fn value_start(&mut self, b: u8) {
        let slot = self.slot;
        if slot == Slot::Root && b != b'{' {
            return self.fail(if b == b'[' { "a batch" } else { "not a JSON-RPC message" });
        }
        // `error: null` (beside a result, JSON-RPC 1.0 style) is no error.
        if !matches!(slot, Slot::Other | Slot::Root | Slot::Top) && !(slot == Slot::Error && b == b'n') {
            if let Some(n) = self.seen.get_mut(slot as usize) {
                *n = n.saturating_add(1);
            }
        }
        match b {
            b'{' | b'[' => {
                let object = b == b'{';
                if self.stack.len() >= MAX_DEPTH {
                    return self.fail("nested too deeply");
                }
                let inner = match (slot, object) {
                    (Slot::Root, true) => Slot::Top,
                    (Slot::Error, true) => Slot::Error,
                    (Slot::Result, true) => Slot::Result,
                    _ => Slot::Other,
                };
                self.stack.push((object, inner));
                // An array's elements are none of the values looked for.
                self.slot = Slot::Other;
                self.lex = if object { Lex::KeyOrClose } else { Lex::ValueOrClose };
            }
            b'"' => {
                self.key = false;
                self.cut = false;
                self.text = (slot == Slot::Message).then(Vec::new);
                self.lex = Lex::Str;
            }
            b't' | b'f' | b'n' => {
                self.literal = match b {
                    b't' => b"true",
                    b'f' => b"false",
                    _ => b"null",
                };
                self.literal_at = 1;
                self.lex = Lex::Literal;
            }
            b'-' | b'0'..=b'9' => {
                self.text = (slot == Slot::Code).then(|| vec![b]);
                self.cut = false;
                self.lex = Lex::Number;
            }
            _ => self.fail("expected a value"),
        }
    }

    fn number_done(&mut self) {
        if self.slot == Slot::Code {
            let text = self.text.take().unwrap_or_default();
            self.response.error_code = (!self.cut).then(|| error_code(&text)).flatten();
        }
        self.text = None;
        self.value_done();
    }

    fn key_done(&mut self) {
        let text = self.text.take().unwrap_or_default();
        let key: &[u8] = if self.cut { b"" } else { &text };
        let container = self.stack.last().map_or(Slot::Other, |(_, slot)| *slot);
        self.slot = match (container, key) {
            (Slot::Top, b"error") => Slot::Error,
            (Slot::Top, b"result") => Slot::Result,
            (Slot::Top, b"method") => Slot::Method,
            (Slot::Error, b"code") => Slot::Code,
            (Slot::Error, b"message") => Slot::Message,
            (Slot::Result, b"isError") => Slot::IsError,
            _ => Slot::Other,
        };
        self.key = false;
        self.lex = Lex::Colon;
    }

    /// A value (scalar or container) ended.
    fn value_done(&mut self) {
        self.text = None;
        self.lex = if self.stack.is_empty() { Lex::Done } else { Lex::AfterValue };
    }

    fn close(&mut self, object: bool) {
        match self.stack.pop() {
            Some((was_object, _)) if was_object == object => self.value_done(),
            _ => self.fail("mismatched close"),
        }
    }

    /// The message is over: what it was.
    fn finish(&mut self) -> Message {
        match self.lex {
            Lex::Done => {}
            Lex::Failed(why) => return Message::Unreadable(why),
            // A number at the very end has no byte after it to end it.
            Lex::Number if self.stack.is_empty() => self.number_done(),
            _ => return Message::Unreadable("cut off"),
        }
        if self.seen.iter().any(|&n| n > 1) {
            return Message::Unreadable("a member is repeated");
        }
        let found = |slot| self.seen(slot) > 0;
        match (found(Slot::Method), found(Slot::Result), found(Slot::Error)) {
            (true, false, false) => Message::Other,
            (false, true, false) => Message::Response(std::mem::take(&mut self.response)),
            (false, false, true) => {
                let mut response = std::mem::take(&mut self.response);
                response.error = true;
                response.is_error = None;
                Message::Response(response)
            }
            _ => Message::Unreadable("not one request, notification or response"),
        }
    }
}

/// One message of a reply.
#[derive(Debug)]
enum Message {
    /// A request or notification (on an SSE stream, before the response).
    Other,
    Response(Response),
    Unreadable(&'static str),
}

fn message_text(bytes: &[u8], cut: bool) -> String {
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    if cut {
        // The message went on past what was kept (which may end inside a character).
        text.truncate(text.floor_char_boundary(MAX_MESSAGE_BYTES));
        text.push_str("...");
    } else {
        crate::audit::cut(&mut text, MAX_MESSAGE_BYTES);
    }
    text
}

/// A JSON number as an error code: an integer (`-32602`, or `-32602.0`, `-3.2602e4`).
fn error_code(text: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(text).ok()?;
    if let Ok(n) = text.parse::<i64>() {
        return Some(n);
    }
    let f = text.parse::<f64>().ok()?;
    // `as` is exact here: the value is integral and within i64's range.
    #[allow(clippy::cast_possible_truncation)]
    let n = f as i64;
    (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(n)
}

/// SSE line parsing (WHATWG rules: CR, LF or CRLF end a line, `data:` lines of one event
/// are joined with LF, a blank line dispatches, a leading BOM is skipped).
#[derive(Debug, Clone)]
struct Sse {
    line: Line,
    after_cr: bool,
    /// Data lines of the event so far.
    data_lines: u32,
    /// Bytes of the stream's start still compared with a BOM.
    bom_at: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    Start,
    /// Reading the field name: its first bytes and length.
    Field([u8; 5], u8),
    /// After `data:`: one space is skipped.
    DataSpace,
    Data,
    /// A comment, another field, or its value.
    Skip,
}

const BOM: &[u8] = "\u{feff}".as_bytes();
#[allow(clippy::cast_possible_truncation)]
const BOM_LEN: u8 = BOM.len() as u8;

/// Reads one reply.
#[derive(Debug, Clone)]
pub struct ReplyScan {
    sse: Option<Sse>,
    json: JsonScan,
    read: usize,
    limit: usize,
    found: Option<Found>,
}

impl ReplyScan {
    /// An `application/json` reply, read up to `limit` bytes.
    pub fn json(limit: usize) -> ReplyScan {
        ReplyScan { sse: None, json: JsonScan::new(), read: 0, limit, found: None }
    }

    /// A `text/event-stream` reply, read up to `limit` bytes.
    pub fn sse(limit: usize) -> ReplyScan {
        let sse = Sse { line: Line::Start, after_cr: false, data_lines: 0, bom_at: 0 };
        ReplyScan { sse: Some(sse), json: JsonScan::new(), read: 0, limit, found: None }
    }

    /// Whether more of the reply is wanted (false once the outcome is known, or the
    /// limit passed).
    pub fn wants_more(&self) -> bool {
        self.found.is_none()
    }

    /// Reads the next chunk of the reply.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.found.is_some() {
            return;
        }
        let room = self.limit.saturating_sub(self.read);
        let take = chunk.get(..room.min(chunk.len())).unwrap_or_default();
        self.read += take.len();
        if self.sse.is_some() {
            self.push_sse(take);
        } else {
            self.json.push(take);
        }
        if take.len() < chunk.len() && self.found.is_none() {
            self.found = Some(Found::Unknown("reply over the read limit"));
        }
    }

    /// The reply ended: what it said.
    pub fn finish(&mut self) -> Found {
        if let Some(found) = self.found.clone() {
            return found;
        }
        let found = if self.sse.is_some() {
            // An event not ended by a blank line is not dispatched (WHATWG).
            Found::Unknown("no response in the stream")
        } else {
            match self.json.finish() {
                Message::Response(r) => Found::Response(r),
                Message::Other => Found::Unknown("a request, not a response"),
                Message::Unreadable(why) => Found::Unknown(why),
            }
        };
        self.found = Some(found.clone());
        found
    }

    fn push_sse(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.found.is_none() {
            let Some(sse) = self.sse.as_mut() else { return };
            if sse.bom_at < BOM_LEN {
                let at = usize::from(sse.bom_at);
                if bytes.first() == BOM.get(at) {
                    sse.bom_at += 1;
                    bytes = bytes.get(1..).unwrap_or_default();
                    continue;
                }
                if at > 0 {
                    // Part of a BOM and then something else: read as an unknown field.
                    sse.line = Line::Skip;
                }
                sse.bom_at = BOM_LEN;
            }
            let run = bytes.iter().position(|b| matches!(b, b'\r' | b'\n')).unwrap_or(bytes.len());
            if sse.line == Line::Data && run > 0 {
                // A run of data bytes goes to the JSON reader at once.
                let (data, rest) = bytes.split_at(run);
                self.json.push(data);
                bytes = rest;
                continue;
            }
            let (&b, rest) = bytes.split_first().unwrap_or((&0, &[]));
            bytes = rest;
            if std::mem::take(&mut sse.after_cr) && b == b'\n' {
                continue;
            }
            if matches!(b, b'\r' | b'\n') {
                sse.after_cr = b == b'\r';
                let line = std::mem::replace(&mut sse.line, Line::Start);
                match line {
                    Line::Start => self.dispatch(),
                    // `data` without a colon: a data line with an empty value.
                    Line::Field(name, 4) if name.starts_with(b"data") => self.data_line(),
                    _ => {}
                }
                continue;
            }
            let (next, data_line, data) = match sse.line {
                Line::Start if b == b':' => (Line::Skip, false, None),
                Line::Start => (Line::Field([b, 0, 0, 0, 0], 1), false, None),
                Line::Field(name, 4) if b == b':' && name.starts_with(b"data") => (Line::DataSpace, true, None),
                Line::Field(_, _) if b == b':' => (Line::Skip, false, None),
                Line::Field(mut name, len) => {
                    if let Some(slot) = name.get_mut(usize::from(len)) {
                        *slot = b;
                    }
                    (Line::Field(name, len.saturating_add(1).min(5)), false, None)
                }
                Line::DataSpace => (Line::Data, false, (b != b' ').then_some(b)),
                Line::Data => (Line::Data, false, Some(b)),
                Line::Skip => (Line::Skip, false, None),
            };
            sse.line = next;
            if data_line {
                self.data_line();
            }
            if let Some(b) = data {
                self.json.push(&[b]);
            }
        }
    }

    /// A `data` line starts: lines after the first are joined with LF.
    fn data_line(&mut self) {
        if let Some(sse) = self.sse.as_mut() {
            if sse.data_lines > 0 {
                self.json.push(b"\n");
            }
            sse.data_lines = sse.data_lines.saturating_add(1);
        }
    }

    /// A blank line: the event so far is one message (or nothing, without data lines;
    /// a priming event with empty data is not a message either).
    fn dispatch(&mut self) {
        let Some(sse) = self.sse.as_mut() else { return };
        if std::mem::take(&mut sse.data_lines) == 0 {
            return;
        }
        let mut json = std::mem::replace(&mut self.json, JsonScan::new());
        match json.finish() {
            Message::Response(r) => self.found = Some(Found::Response(r)),
            // Requests and notifications come before the response; events that are not
            // messages are skipped, as clients skip them.
            Message::Other | Message::Unreadable(_) => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn json_in_chunks(body: &[u8], chunk: usize) -> Found {
        let mut scan = ReplyScan::json(1 << 20);
        body.chunks(chunk.max(1)).for_each(|c| scan.push(c));
        scan.finish()
    }

    fn sse_in_chunks(body: &[u8], chunk: usize) -> Found {
        let mut scan = ReplyScan::sse(1 << 20);
        body.chunks(chunk.max(1)).for_each(|c| scan.push(c));
        scan.finish()
    }

    fn response(error: bool, code: Option<i64>, message: Option<&str>, is_error: Option<bool>) -> Found {
        Found::Response(Response { error, error_code: code, error_message: message.map(str::to_owned), is_error })
    }

    /// Every chunking gives the same answer.
    fn json_all_ways(body: &str) -> Found {
        let whole = json_in_chunks(body.as_bytes(), body.len());
        for chunk in 1..8 {
            assert_eq!(json_in_chunks(body.as_bytes(), chunk), whole, "{body} in chunks of {chunk}");
        }
        whole
    }

    fn sse_all_ways(body: &str) -> Found {
        let whole = sse_in_chunks(body.as_bytes(), body.len());
        for chunk in 1..8 {
            assert_eq!(sse_in_chunks(body.as_bytes(), chunk), whole, "{body:?} in chunks of {chunk}");
        }
        whole
    }

    #[test]
    fn reads_results_errors_and_tool_errors() {
        assert_eq!(
            json_all_ways(r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hi"}]}}"#),
            response(false, None, None, None)
        );
        assert_eq!(
            json_all_ways(r#"{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":true}}"#),
            response(false, None, None, Some(true))
        );
        assert_eq!(
            json_all_ways(r#" {"result" : {"isError" : false, "x": [1, 2.5e3, null, true]}, "id": "a"} "#),
            response(false, None, None, Some(false))
        );
        assert_eq!(
            json_all_ways(r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"Unknown tool: x","data":{}}}"#),
            response(true, Some(-32602), Some("Unknown tool: x"), None)
        );
        // The code ends the object: no byte after the number but the brace.
        assert_eq!(
            json_all_ways(r#"{"error":{"message":"m","code":-32000}}"#),
            response(true, Some(-32000), Some("m"), None)
        );
        assert_eq!(json_all_ways(r#"{"error":{"code":-3.2e4}}"#), response(true, Some(-32000), None, None));
        // `error: null` next to a result is no error (JSON-RPC 1.0 style).
        assert_eq!(json_all_ways(r#"{"result":{},"error":null}"#), response(false, None, None, None));
    }

    #[test]
    fn keys_and_messages_are_decoded_like_a_json_parser_does() {
        assert_eq!(
            json_all_ways(r#"{"\u0065rror":{"c\u006fde":1,"message":"a\"b\\c\u00e9\n"}}"#),
            response(true, Some(1), Some("a\"b\\c\u{e9}\n"), None)
        );
        assert_eq!(json_all_ways(r#"{"result":{"is\u0045rror":true}}"#), response(false, None, None, Some(true)));
        // Lookalikes are other members.
        assert_eq!(json_all_ways(r#"{"result":{"iserror":true,"isErrors":true}}"#), response(false, None, None, None));
        assert_eq!(json_all_ways(r#"{"result":{"nested":{"isError":true}}}"#), response(false, None, None, None));
    }

    #[test]
    fn long_messages_are_cut_and_long_strings_skipped() {
        let long = "é".repeat(1000);
        let body = format!(r#"{{"error":{{"code":5,"message":"{long}"}}}}"#);
        let Found::Response(r) = json_all_ways(&body) else { panic!() };
        let message = r.error_message.unwrap();
        assert!(message.ends_with("...") && message.len() <= MAX_MESSAGE_BYTES + 3, "{}", message.len());
        let big = "x".repeat(100_000);
        let body = format!(r#"{{"result":{{"content":[{{"text":"{big}"}}],"isError":true}}}}"#);
        assert_eq!(json_in_chunks(body.as_bytes(), 4096), response(false, None, None, Some(true)));
    }

    #[test]
    fn anything_with_two_readings_or_none_is_unknown() {
        let cases = [
            r#"{"result":{},"result":{}}"#,
            r#"{"error":{"code":1},"error":{"code":2}}"#,
            r#"{"error":{"code":1,"code":2}}"#,
            r#"{"error":{"message":"a","message":"b"}}"#,
            r#"{"result":{"isError":false,"isError":true}}"#,
            r#"{"result":{},"error":{"code":1}}"#,
            r#"{"method":"x","result":{}}"#,
            r#"[{"result":{}}]"#,
            r#""result""#,
            r#"{"result":{}} {}"#,
            r#"{"result":{}"#,
            r#"{"result":{},}"#,
            r#"{"result" {}}"#,
            r#"{"result":tru}"#,
            r#"{"result":"a\qb"}"#,
            "{\"result\":\"a\u{1}\"}",
            r#"{"id":1}"#,
            "",
        ];
        for case in cases {
            assert!(matches!(json_all_ways(case), Found::Unknown(_)), "{case}");
        }
        let deep = format!(r#"{{"result":{}{}}}"#, "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(matches!(json_all_ways(&deep), Found::Unknown(_)));
        // A request is not a reply.
        assert_eq!(json_all_ways(r#"{"method":"ping","id":1}"#), Found::Unknown("a request, not a response"));
    }

    #[test]
    fn agrees_with_serde_on_what_it_reads() {
        let bodies = [
            r#"{"jsonrpc":"2.0","id":1,"result":{"isError":true,"content":[{"type":"text","text":"no"}]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"Method not found"}}"#,
            r#"{"id":1,"result":{"tools":[{"name":"a","inputSchema":{"type":"object"}}],"nextCursor":"x"}}"#,
        ];
        for body in bodies {
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            let expected = if let Some(e) = v.get("error") {
                response(true, e["code"].as_i64(), e["message"].as_str(), None)
            } else {
                response(false, None, None, v["result"].get("isError").and_then(serde_json::Value::as_bool))
            };
            assert_eq!(json_all_ways(body), expected, "{body}");
        }
    }

    #[test]
    fn a_json_reply_over_the_limit_is_unknown() {
        let body = br#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#;
        let mut scan = ReplyScan::json(10);
        scan.push(body);
        assert!(!scan.wants_more());
        assert_eq!(scan.finish(), Found::Unknown("reply over the read limit"));
        let mut scan = ReplyScan::json(body.len());
        scan.push(body);
        assert_eq!(scan.finish(), response(false, None, None, None));
    }

    #[test]
    fn finds_the_response_after_notifications_on_a_stream() {
        let stream = concat!(
            ": comment\n\n",
            "id: 0\ndata:\n\n",
            "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":1}}\n\n",
            "id: 7\r\nevent: message\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\r\ndata: \"result\":{\"isError\":true}}\r\n\r\n",
        );
        assert_eq!(sse_all_ways(stream), response(false, None, None, Some(true)));
        let cr_only = "data:{\"error\":{\"code\":-1,\r\ndata:\"message\":\"x\"}}\r\r";
        assert_eq!(sse_all_ways(cr_only), response(true, Some(-1), Some("x"), None));
        let bom = "\u{feff}data: {\"result\":{}}\n\n";
        assert_eq!(sse_all_ways(bom), response(false, None, None, None));
        // `data:x` and `data: x` read the same; `data` alone is an empty data line.
        let bare = "data\ndata:{\"result\":{}}\n\n";
        assert_eq!(sse_all_ways(bare), response(false, None, None, None));
    }

    #[test]
    fn a_stream_without_a_complete_response_is_unknown() {
        let cases = [
            "data: {\"result\":{}}\n",
            "data: {\"result\":{}}",
            "dat: {\"result\":{}}\n\n",
            "datas: {\"result\":{}}\n\n",
            ":data: {\"result\":{}}\n\n",
            " data: {\"result\":{}}\n\n",
            "data: {\"method\":\"notifications/message\"}\n\n",
            "data: {\"result\":{},\"result\":{}}\n\n",
            "\u{feff}\u{feff}data: {\"result\":{}}\n\n",
        ];
        for case in cases {
            assert!(matches!(sse_all_ways(case), Found::Unknown(_)), "{case:?}");
        }
    }

    #[test]
    fn stops_reading_once_the_response_is_found_or_the_limit_passed() {
        let mut scan = ReplyScan::sse(1 << 20);
        scan.push(b"data: {\"result\":{}}\n\n");
        assert!(!scan.wants_more());
        let mut scan = ReplyScan::sse(64);
        scan.push(&[b':'; 100]);
        assert_eq!(scan.finish(), Found::Unknown("reply over the read limit"));
    }
}
