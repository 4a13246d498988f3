//! What the adapter asks of Envoy, as a trait.
//!
//! The wasm build implements [`Host`] with `proxy_wasm::hostcalls` (see `wasm.rs`); the
//! native tests implement it with a mock that records every call (see `mock.rs`). The
//! types here are the adapter's own, so nothing outside `wasm.rs` names proxy-wasm.

use std::time::{Duration, SystemTime};

/// A header map Envoy holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Map {
    RequestHeaders,
    ResponseHeaders,
    /// Headers of the reply to a call the root context dispatched.
    CallResponseHeaders,
}

/// A byte buffer Envoy holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Buffer {
    RequestBody,
    ResponseBody,
    /// Body of the reply to a call the root context dispatched.
    CallResponseBody,
    PluginConfiguration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Info,
    Warn,
    Error,
    Critical,
}

/// What a hook tells Envoy to do with the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Pause,
}

/// A host call that failed, with the host's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError(pub String);

/// Envoy as the adapter sees it: one implementation per build (wasm), one per test (mock).
///
/// Calls act on the effective context (the request whose hook is running, or the one set
/// by [`Host::enter`]), as proxy-wasm host calls do.
pub trait Host {
    fn log(&self, level: Level, message: &str);
    /// Envoy's clock.
    fn now(&self) -> SystemTime;
    /// Defines a counter (Envoy prefixes its name with `wasmcustom.`).
    fn define_counter(&self, name: &str) -> Option<u32>;
    fn increment(&self, counter: u32);
    /// Adds `delta` to a counter.
    fn add(&self, counter: u32, delta: u64);
    /// Defines a histogram (prefixed like counters).
    fn define_histogram(&self, name: &str) -> Option<u32>;
    /// Records one value in a histogram.
    fn record_value(&self, histogram: u32, value: u64);

    /// Every entry of a header map, values as bytes (they need not be UTF-8).
    fn map(&self, map: Map) -> Result<Vec<(String, Vec<u8>)>, HostError>;
    fn map_value(&self, map: Map, name: &str) -> Result<Option<Vec<u8>>, HostError>;
    fn set_map_value(&self, map: Map, name: &str, value: &str) -> Result<(), HostError>;
    fn remove_map_value(&self, map: Map, name: &str) -> Result<(), HostError>;

    fn buffer(&self, buffer: Buffer, start: usize, size: usize) -> Result<Option<Vec<u8>>, HostError>;
    /// Replaces `size` bytes at `start` with `data`.
    fn set_buffer(&self, buffer: Buffer, start: usize, size: usize, data: &[u8]) -> Result<(), HostError>;

    /// Answers the request locally; Envoy sends it once the current hook returns.
    fn send_reply(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) -> Result<(), HostError>;
    /// Lets a paused request go on (from outside its own hooks).
    fn resume_request(&self) -> Result<(), HostError>;
    fn reset_request(&self);
    fn reset_response(&self);

    /// A shared-data entry (shared by every VM of the plugin) and its CAS.
    fn shared(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError>;
    /// Writes a shared-data entry; with a CAS, only if nobody wrote it since that read.
    fn set_shared(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError>;

    fn register_queue(&self, name: &str) -> Option<u32>;
    fn enqueue(&self, queue: u32, message: &[u8]) -> Result<(), HostError>;
    fn dequeue(&self, queue: u32) -> Result<Option<Vec<u8>>, HostError>;

    /// An HTTP call through an Envoy cluster; its reply comes to the root context's
    /// `on_http_call_response` with the returned token.
    fn dispatch(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, HostError>;
    fn set_tick(&self, period: Duration) -> Result<(), HostError>;
    /// Makes `context_id` the effective context for the calls that follow.
    fn enter(&self, context_id: u32) -> Result<(), HostError>;
    /// A stream property (`["response", "code"]`, `["source", "address"]`).
    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostError>;
}
