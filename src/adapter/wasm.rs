//! The proxy-wasm glue: Envoy's hooks call the state machine with [`WasmHost`], and
//! [`WasmHost`] makes the host calls. Nothing here decides anything.

use super::host::{Buffer, Flow, Host, HostError, Level, Map};
use super::{Filter, Root};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};
use std::time::{Duration, SystemTime};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(RootHooks(Root::new(context_id)))
    });
}}

/// Envoy, through `proxy_wasm::hostcalls`.
struct WasmHost;

fn error(status: Status) -> HostError {
    HostError(format!("{status:?}"))
}

fn map_type(map: Map) -> MapType {
    match map {
        Map::RequestHeaders => MapType::HttpRequestHeaders,
        Map::ResponseHeaders => MapType::HttpResponseHeaders,
        Map::CallResponseHeaders => MapType::HttpCallResponseHeaders,
    }
}

fn buffer_type(buffer: Buffer) -> BufferType {
    match buffer {
        Buffer::RequestBody => BufferType::HttpRequestBody,
        Buffer::ResponseBody => BufferType::HttpResponseBody,
        Buffer::CallResponseBody => BufferType::HttpCallResponseBody,
        Buffer::PluginConfiguration => BufferType::PluginConfiguration,
    }
}

impl Host for WasmHost {
    fn log(&self, level: Level, message: &str) {
        let level = match level {
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
            Level::Critical => LogLevel::Critical,
        };
        let _ = hostcalls::log(level, message);
    }

    fn now(&self) -> SystemTime {
        hostcalls::get_current_time().unwrap_or(SystemTime::UNIX_EPOCH)
    }

    fn define_counter(&self, name: &str) -> Option<u32> {
        hostcalls::define_metric(MetricType::Counter, name).ok()
    }

    fn increment(&self, counter: u32) {
        let _ = hostcalls::increment_metric(counter, 1);
    }

    fn add(&self, counter: u32, delta: u64) {
        let _ = hostcalls::increment_metric(counter, i64::try_from(delta).unwrap_or(i64::MAX));
    }

    fn define_histogram(&self, name: &str) -> Option<u32> {
        hostcalls::define_metric(MetricType::Histogram, name).ok()
    }

    fn record_value(&self, histogram: u32, value: u64) {
        let _ = hostcalls::record_metric(histogram, value);
    }

    fn map(&self, map: Map) -> Result<Vec<(String, Vec<u8>)>, HostError> {
        hostcalls::get_map_bytes(map_type(map)).map_err(error)
    }

    fn map_value(&self, map: Map, name: &str) -> Result<Option<Vec<u8>>, HostError> {
        hostcalls::get_map_value_bytes(map_type(map), name).map_err(error)
    }

    fn set_map_value(&self, map: Map, name: &str, value: &str) -> Result<(), HostError> {
        hostcalls::set_map_value(map_type(map), name, Some(value)).map_err(error)
    }

    fn remove_map_value(&self, map: Map, name: &str) -> Result<(), HostError> {
        hostcalls::remove_map_value(map_type(map), name).map_err(error)
    }

    fn buffer(&self, buffer: Buffer, start: usize, size: usize) -> Result<Option<Vec<u8>>, HostError> {
        hostcalls::get_buffer(buffer_type(buffer), start, size).map_err(error)
    }

    fn set_buffer(&self, buffer: Buffer, start: usize, size: usize, data: &[u8]) -> Result<(), HostError> {
        hostcalls::set_buffer(buffer_type(buffer), start, size, data).map_err(error)
    }

    fn send_reply(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) -> Result<(), HostError> {
        hostcalls::send_http_response(status, headers.to_vec(), Some(body)).map_err(error)
    }

    fn resume_request(&self) -> Result<(), HostError> {
        hostcalls::resume_http_request().map_err(error)
    }

    fn reset_request(&self) {
        let _ = hostcalls::reset_http_request();
    }

    fn reset_response(&self) {
        let _ = hostcalls::reset_http_response();
    }

    fn shared(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError> {
        hostcalls::get_shared_data(key).map_err(error)
    }

    fn set_shared(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError> {
        hostcalls::set_shared_data(key, Some(value), cas).map_err(error)
    }

    fn register_queue(&self, name: &str) -> Option<u32> {
        hostcalls::register_shared_queue(name).ok()
    }

    fn enqueue(&self, queue: u32, message: &[u8]) -> Result<(), HostError> {
        hostcalls::enqueue_shared_queue(queue, Some(message)).map_err(error)
    }

    fn dequeue(&self, queue: u32) -> Result<Option<Vec<u8>>, HostError> {
        hostcalls::dequeue_shared_queue(queue).map_err(error)
    }

    fn dispatch(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, HostError> {
        hostcalls::dispatch_http_call(cluster, headers.to_vec(), body, vec![], timeout).map_err(error)
    }

    fn set_tick(&self, period: Duration) -> Result<(), HostError> {
        hostcalls::set_tick_period(period).map_err(error)
    }

    fn enter(&self, context_id: u32) -> Result<(), HostError> {
        hostcalls::set_effective_context(context_id).map_err(error)
    }

    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
        hostcalls::get_property(path.to_vec()).map_err(error)
    }
}

fn action(flow: Flow) -> Action {
    match flow {
        Flow::Continue => Action::Continue,
        Flow::Pause => Action::Pause,
    }
}

struct RootHooks(Root);

impl Context for RootHooks {
    fn on_http_call_response(&mut self, token_id: u32, _headers: usize, body_size: usize, _trailers: usize) {
        self.0.on_http_call_response(&WasmHost, token_id, body_size);
    }
}

impl RootContext for RootHooks {
    fn on_configure(&mut self, _size: usize) -> bool {
        self.0.on_configure(&WasmHost)
    }

    fn on_tick(&mut self) {
        self.0.on_tick(&WasmHost);
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        self.0.on_queue_ready(&WasmHost, queue_id);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(HttpHooks(self.0.create_http_context(context_id))))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct HttpHooks(Filter);

impl Context for HttpHooks {}

impl HttpContext for HttpHooks {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        action(self.0.on_request_headers(&WasmHost, end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(self.0.on_request_body(&WasmHost, body_size, end_of_stream))
    }

    fn on_http_request_trailers(&mut self, _trailers: usize) -> Action {
        action(self.0.on_request_trailers(&WasmHost))
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        action(self.0.on_response_headers(&WasmHost))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(self.0.on_response_body(&WasmHost, body_size, end_of_stream))
    }

    fn on_log(&mut self) {
        self.0.on_log(&WasmHost);
    }
}
