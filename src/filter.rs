//! The proxy-wasm adapter: moves data between Envoy and [`Exchange`], decides nothing.
//!
//! Host calls go through `proxy_wasm::hostcalls` and their errors are handled, because a
//! panic traps the VM and takes every request on the worker with it. Where a host call
//! fails mid-request the request is refused (fail closed).

use crate::config::Config;
use crate::gateway::{Exchange, Head, HeaderEdits, Step};
use crate::reject::Reply;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};
use std::rc::Rc;
use std::time::SystemTime;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { config: None }) });
}}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

fn now() -> SystemTime {
    hostcalls::get_current_time().unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Holds the compiled configuration for all requests on this worker.
struct Root {
    config: Option<Rc<Config>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(Some(raw)) => raw,
            Ok(None) => {
                log(
                    LogLevel::Critical,
                    "mcp-gateway: plugin configuration is empty",
                );
                return false;
            }
            Err(status) => {
                log(
                    LogLevel::Critical,
                    &format!("mcp-gateway: cannot read plugin configuration: {status:?}"),
                );
                return false;
            }
        };
        match Config::from_json(&raw, &|name| std::env::var(name).ok()) {
            Ok(config) => {
                log(
                    LogLevel::Info,
                    &format!(
                        "mcp-gateway: configured {} servers, {} roles, {} keys",
                        config.servers.len(),
                        config.policy.roles.len(),
                        config.verifier.keys.len()
                    ),
                );
                self.config = Some(Rc::new(config));
                true
            }
            Err(e) => {
                log(LogLevel::Critical, &format!("mcp-gateway: {e}"));
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            config: self.config.clone(),
            exchange: None,
            replied: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP request.
struct Filter {
    config: Option<Rc<Config>>,
    exchange: Option<Exchange>,
    /// A local reply was sent; later callbacks must not forward anything.
    replied: bool,
}

impl Context for Filter {}

impl Filter {
    fn send(&mut self, reply: Reply) -> Action {
        self.replied = true;
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(n, v)| (*n, v.as_str()))
            .collect();
        if hostcalls::send_http_response(reply.status, headers, Some(&reply.body)).is_err() {
            let _ = hostcalls::reset_http_request();
        }
        Action::Pause
    }

    /// Last resort when the host misbehaves: refuse without a JSON-RPC body.
    fn fail_closed(&mut self, what: &str) -> Action {
        log(
            LogLevel::Error,
            &format!("mcp-gateway: {what}; refusing request"),
        );
        self.send(Reply {
            status: 500,
            headers: vec![("content-type", "application/json".to_owned())],
            body:
                br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"Internal error"}}"#
                    .to_vec(),
        })
    }

    fn apply(&self, edits: &HeaderEdits) -> bool {
        let removed = edits
            .remove
            .iter()
            .all(|name| hostcalls::remove_map_value(MapType::HttpRequestHeaders, name).is_ok());
        let set = edits.set.iter().all(|(name, value)| {
            hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value)).is_ok()
        });
        removed && set
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(config) = self.config.clone() else {
            return self.fail_closed("no configuration");
        };
        // Bytes, not strings: the SDK's string variant panics on non-UTF-8 values.
        let headers: Vec<(String, String)> =
            match hostcalls::get_map_bytes(MapType::HttpRequestHeaders) {
                Ok(h) => h
                    .into_iter()
                    .map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned()))
                    .collect(),
                Err(_) => return self.fail_closed("cannot read request headers"),
            };
        let pseudo = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .unwrap_or_default()
        };
        let head = Head {
            method: pseudo(":method"),
            path: pseudo(":path"),
            headers: &headers,
        };
        let started = now();
        let mut exchange = Exchange::new(started);
        let (step, edits) = exchange.on_request_headers(&config, &head, end_of_stream, started);
        self.exchange = Some(exchange);
        if !self.apply(&edits) {
            return self.fail_closed("cannot edit request headers");
        }
        match step {
            Step::Continue => Action::Continue,
            Step::WaitForBody => Action::Pause,
            Step::Reply(reply) => self.send(reply),
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.replied {
            return Action::Pause;
        }
        let (Some(config), Some(exchange)) = (self.config.clone(), self.exchange.as_mut()) else {
            return self.fail_closed("body before headers");
        };
        if !end_of_stream {
            return match exchange.on_body_progress(&config, body_size) {
                Some(reply) => self.send(reply),
                None => Action::Pause,
            };
        }
        let body = match hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size) {
            Ok(body) => body.unwrap_or_default(),
            Err(_) => return self.fail_closed("cannot read request body"),
        };
        match exchange.on_request_body(&config, &body) {
            Step::Continue => Action::Continue,
            Step::WaitForBody => Action::Pause,
            Step::Reply(reply) => self.send(reply),
        }
    }

    /// MCP clients never send request trailers; a body that ends in trailers never
    /// reaches `end_of_stream` in the body callback, so refuse it instead of waiting.
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.replied {
            return Action::Pause;
        }
        match self.exchange.as_mut().map(Exchange::on_request_trailers) {
            Some(Some(reply)) => self.send(reply),
            Some(None) => Action::Continue,
            None => self.fail_closed("trailers before headers"),
        }
    }

    fn on_log(&mut self) {
        let Some(exchange) = self.exchange.take() else {
            return;
        };
        let status = hostcalls::get_property(vec!["response", "code"])
            .ok()
            .flatten()
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_le_bytes)
            .and_then(|c| u32::try_from(c).ok())
            .unwrap_or(0);
        let client_ip = hostcalls::get_property(vec!["source", "address"])
            .ok()
            .flatten()
            .map(|b| strip_port(&String::from_utf8_lossy(&b)).to_owned());
        let record = exchange.finish(status, now(), client_ip);
        log(LogLevel::Info, &record.to_line());
    }
}

/// `1.2.3.4:5678` -> `1.2.3.4`, `[::1]:5678` -> `::1`.
fn strip_port(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match address.rsplit_once(':') {
        Some((host, _)) if !host.contains(':') => host,
        _ => address,
    }
}
