//! The per-request pipeline, independent of proxy-wasm.
//!
//! An [`Exchange`] follows one HTTP request through the filter's callbacks: it admits or
//! refuses the request at headers time (route, HTTP method, content type, token, server
//! access), then decides on the JSON-RPC body, and finally produces the audit record.
//! The proxy-wasm adapter only moves data between Envoy and this type.

use crate::audit::{timestamp, AuditRecord, Outcome};
use crate::config::Config;
use crate::headers;
use crate::jsonrpc;
use crate::jwt::{bearer_token, AuthError, Principal};
use crate::reject::{reply, Refusal, Reply};
use serde_json::Value;
use std::time::SystemTime;

/// The request line and headers, as the filter sees them.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a [(String, String)],
}

impl Head<'_> {
    /// First value of a header (names compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }
}

/// Request header changes to apply before the request continues upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Header names to remove (every value).
    pub remove: Vec<String>,
    /// Headers to set, replacing any value.
    pub set: Vec<(&'static str, String)>,
}

/// What the adapter should do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Apply the edits (if any) and let the request go upstream.
    Continue,
    /// Apply the edits and hold the request until the whole body is buffered.
    WaitForBody,
    /// Send this reply instead of forwarding the request.
    Reply(Reply),
}

/// One request's way through the gateway.
#[derive(Debug)]
pub struct Exchange {
    started: SystemTime,
    principal: Option<Principal>,
    server: Option<String>,
    record: AuditRecord,
}

impl Exchange {
    pub fn new(started: SystemTime) -> Exchange {
        Exchange {
            started,
            principal: None,
            server: None,
            record: AuditRecord {
                timestamp: timestamp(started),
                ..Default::default()
            },
        }
    }

    /// Decides what can be decided from the request headers. `end_of_stream` is true
    /// when the request has no body.
    pub fn on_request_headers(
        &mut self,
        config: &Config,
        head: &Head<'_>,
        end_of_stream: bool,
        now: SystemTime,
    ) -> (Step, HeaderEdits) {
        self.record.http_method = head.method.to_owned();
        self.record.request_id = head.header("x-request-id").unwrap_or_default().to_owned();
        self.record.user_agent = head.header("user-agent").map(str::to_owned);
        self.record.session_id = head.header("mcp-session-id").map(str::to_owned);
        match self.admit(config, head, end_of_stream, now) {
            Ok(step) => (step, self.edits(head)),
            Err(refusal) => (
                Step::Reply(self.refuse(&refusal, None)),
                HeaderEdits::default(),
            ),
        }
    }

    fn admit(
        &mut self,
        config: &Config,
        head: &Head<'_>,
        end_of_stream: bool,
        now: SystemTime,
    ) -> Result<Step, Refusal> {
        // Defence in depth: Envoy normalizes paths before routing (normalize_path), so a
        // path that still holds dot segments or encoded separators is refused rather
        // than risking the router and the filter seeing different servers.
        if !is_plain_path(head.path) {
            return Err(Refusal::UnknownServer);
        }
        let server = config.server_for(head.path).ok_or(Refusal::UnknownServer)?;
        self.server = Some(server.name.clone());
        self.record.server = Some(server.name.clone());
        let is_post = match head.method {
            "POST" => true,
            "GET" | "DELETE" => false,
            other => return Err(Refusal::HttpMethod(other.chars().take(16).collect())),
        };
        let principal = authenticate(config, head, now)?;
        self.record.user_id = Some(principal.user_id.clone());
        self.record.roles = principal.roles.clone();
        let role = config
            .policy
            .allows_server(&principal.roles, &server.name)?;
        self.principal = Some(principal);
        if !is_post {
            self.allow(role);
            return Ok(Step::Continue);
        }
        if !is_json(head.header("content-type")) {
            return Err(Refusal::ContentType);
        }
        let too_long = head
            .header("content-length")
            .and_then(|l| l.trim().parse::<u64>().ok())
            .is_some_and(|l| l > config.max_body_bytes as u64);
        if too_long {
            return Err(Refusal::BodyTooLarge {
                limit: config.max_body_bytes,
            });
        }
        if end_of_stream {
            return Err(Refusal::Parse(jsonrpc::ParseError::Empty));
        }
        Ok(Step::WaitForBody)
    }

    /// Called as body data arrives, with the total buffered so far. Returns a reply
    /// when the body is over the limit.
    pub fn on_body_progress(&mut self, config: &Config, buffered: usize) -> Option<Reply> {
        (buffered > config.max_body_bytes).then(|| {
            self.refuse(
                &Refusal::BodyTooLarge {
                    limit: config.max_body_bytes,
                },
                None,
            )
        })
    }

    /// Decides on the complete body of a POST.
    pub fn on_request_body(&mut self, config: &Config, body: &[u8]) -> Step {
        if let Some(reply) = self.on_body_progress(config, body.len()) {
            return Step::Reply(reply);
        }
        let message = match jsonrpc::parse(body, config.max_json_depth) {
            Ok(m) => m,
            Err(e) => {
                let id = jsonrpc::salvage_id(body, config.max_json_depth);
                return Step::Reply(self.refuse(&Refusal::Parse(e), id));
            }
        };
        self.record.method = (!message.method.is_empty()).then(|| message.method.clone());
        self.record.target = message.target.as_ref().map(|t| t.name().to_owned());
        self.record.jsonrpc_id = message.id.clone();
        self.record.params = message
            .arguments
            .as_ref()
            .map(|a| config.redactor.redact(a));
        let (Some(principal), Some(server)) = (&self.principal, &self.server) else {
            // Headers were never admitted: never forward.
            return Step::Reply(self.refuse(&Refusal::UnknownServer, message.id));
        };
        match config
            .policy
            .allows_message(&principal.roles, server, &message)
        {
            Ok(role) => {
                self.allow(role);
                Step::Continue
            }
            Err(denial) => Step::Reply(self.refuse(&Refusal::Forbidden(denial), message.id)),
        }
    }

    /// Request trailers arrived. A POST still waiting for its body is refused: the body
    /// callback never saw the end of the stream, so nothing was decided yet.
    pub fn on_request_trailers(&mut self) -> Option<Reply> {
        let waiting = self.record.decision.is_none();
        waiting.then(|| {
            self.refuse(
                &Refusal::Parse(jsonrpc::ParseError::Invalid(
                    "request trailers are not supported",
                )),
                None,
            )
        })
    }

    /// The audit record, once the response is complete. `status` is the HTTP status
    /// sent to the client (0 when the stream was reset before a response).
    pub fn finish(
        mut self,
        status: u32,
        now: SystemTime,
        client_ip: Option<String>,
    ) -> AuditRecord {
        self.record.status = status;
        self.record.response_time_ms = now
            .duration_since(self.started)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        self.record.client_ip = client_ip;
        if self.record.decision.is_none() {
            // The client went away before a decision (e.g. mid-body).
            self.record.decision = Some(Outcome::Deny);
            self.record.reason = Some("request incomplete".into());
        }
        self.record.success =
            self.record.decision == Some(Outcome::Allow) && (200..400).contains(&status);
        self.record
    }

    fn allow(&mut self, role: String) {
        self.record.decision = Some(Outcome::Allow);
        self.record.reason = Some(format!("role {role}"));
    }

    fn refuse(&mut self, refusal: &Refusal, id: Option<Value>) -> Reply {
        self.record.decision = Some(Outcome::Deny);
        self.record.reason = Some(refusal.to_string());
        reply(refusal, id)
    }

    /// Strip every client header that could pose as identity, drop the client's token
    /// (it is for the gateway, not the upstream), and set our own identity headers.
    fn edits(&self, head: &Head<'_>) -> HeaderEdits {
        let mut remove: Vec<String> = head
            .headers
            .iter()
            .filter(|(n, _)| headers::is_spoofable(n))
            .map(|(n, _)| n.clone())
            .collect();
        remove.push("authorization".into());
        remove.dedup();
        let mut set = Vec::new();
        if let Some(p) = &self.principal {
            set.push((headers::USER_ID, headers::header_safe(&p.user_id)));
            let roles: Vec<String> = p
                .roles
                .iter()
                .map(|r| headers::header_safe(r).replace(',', "%2C"))
                .collect();
            set.push((headers::ROLES, roles.join(",")));
        }
        if let Some(server) = &self.server {
            set.push((headers::SERVER, server.clone()));
        }
        if let Some(session) = &self.record.session_id {
            set.push((headers::SESSION_ID, headers::header_safe(session)));
        }
        let request_id = headers::header_safe(&self.record.request_id);
        let trace_id = head
            .header("traceparent")
            .and_then(headers::trace_id)
            .map(str::to_owned)
            .unwrap_or_else(|| request_id.clone());
        set.push((headers::REQUEST_ID, request_id));
        set.push((headers::TRACE_ID, trace_id));
        HeaderEdits { remove, set }
    }
}

fn authenticate(config: &Config, head: &Head<'_>, now: SystemTime) -> Result<Principal, Refusal> {
    let token = match head.header_count("authorization") {
        0 => return Err(AuthError::MissingToken.into()),
        1 => bearer_token(head.header("authorization").unwrap_or_default())?,
        _ => return Err(AuthError::MultipleAuthorizationHeaders.into()),
    };
    Ok(config.verifier.verify(token, now)?)
}

/// `application/json`, with optional parameters such as `charset`.
fn is_json(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// No dot segments, backslashes or percent-encoded dots, slashes and backslashes.
fn is_plain_path(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or_default();
    let lower = path.to_ascii_lowercase();
    path.starts_with('/')
        && !path.contains('\\')
        && !path.split('/').any(|seg| seg == "." || seg == "..")
        && !["%2e", "%2f", "%5c", "%25"]
            .iter()
            .any(|enc| lower.contains(enc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reject::code;
    use jwt_compact::alg::{Hs256, Hs256Key};
    use jwt_compact::{AlgorithmExt, Claims, Header, TimeOptions};
    use serde_json::{json, Map};
    use std::time::Duration;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn config() -> Config {
        let v = json!({
            "max_body_bytes": 1024,
            "servers": [{"name": "github", "path_prefix": "/mcp/github"}, {"name": "filesystem", "path_prefix": "/mcp/filesystem"}],
            "jwt": {"issuer": "i", "audiences": ["a"], "keys": [{"kid": "k", "alg": "HS256", "secret": SECRET}]},
            "rbac": {"roles": {
                "developer": {"servers": ["github", "filesystem"], "tools": ["get_*", "list_*", "create_*"]},
                "readonly": {"servers": ["github"], "tools": ["get_*", "list_*"]},
            }},
        });
        Config::from_json(v.to_string().as_bytes(), &|_| None).unwrap()
    }

    fn now() -> SystemTime {
        SystemTime::now()
    }

    fn token(sub: &str, roles: &[&str]) -> String {
        let mut custom = Map::new();
        custom.insert("iss".into(), json!("i"));
        custom.insert("aud".into(), json!("a"));
        custom.insert("sub".into(), json!(sub));
        custom.insert("roles".into(), json!(roles));
        let claims = Claims::new(custom).set_duration(
            &TimeOptions::new(chrono::Duration::zero(), || SystemTime::now().into()),
            chrono::Duration::minutes(5),
        );
        Hs256
            .token(
                &Header::empty().with_key_id("k"),
                &claims,
                &Hs256Key::new(SECRET),
            )
            .unwrap()
    }

    /// A small request builder: `request().post("/mcp/github").by("alice", &["developer"])`.
    struct Req {
        method: &'static str,
        path: String,
        headers: Vec<(String, String)>,
    }

    fn request() -> Req {
        Req {
            method: "POST",
            path: "/mcp/github".into(),
            headers: vec![("content-type".into(), "application/json".into())],
        }
    }

    impl Req {
        fn method(mut self, m: &'static str) -> Self {
            self.method = m;
            self
        }
        fn path(mut self, p: &str) -> Self {
            self.path = p.into();
            self
        }
        fn header(mut self, n: &str, v: &str) -> Self {
            self.headers.push((n.into(), v.into()));
            self
        }
        fn by(self, sub: &str, roles: &[&str]) -> Self {
            let t = token(sub, roles);
            self.header("authorization", &format!("Bearer {t}"))
        }
        fn head(&self) -> Head<'_> {
            Head {
                method: self.method,
                path: &self.path,
                headers: &self.headers,
            }
        }
        fn headers_step(&self, ex: &mut Exchange) -> (Step, HeaderEdits) {
            ex.on_request_headers(&config(), &self.head(), self.method != "POST", now())
        }
    }

    fn status(step: &Step) -> Option<u32> {
        match step {
            Step::Reply(r) => Some(r.status),
            _ => None,
        }
    }

    fn body_of(step: &Step) -> Value {
        match step {
            Step::Reply(r) => serde_json::from_slice(&r.body).unwrap(),
            _ => Value::Null,
        }
    }

    fn call(tool: &str) -> Vec<u8> {
        format!(r#"{{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{{"name":"{tool}","arguments":{{"repository":"acme/website","token":"s3cr3t"}}}}}}"#).into_bytes()
    }

    #[test]
    fn allows_a_developer_tool_call_and_sets_identity_headers() {
        let req = request()
            .by("alice", &["developer"])
            .header("X-MCP-User-Id", "mallory")
            .header("x-request-id", "r-1");
        let mut ex = Exchange::new(now());
        let (step, edits) = req.headers_step(&mut ex);
        assert_eq!(step, Step::WaitForBody);
        assert!(edits.remove.contains(&"X-MCP-User-Id".to_string()));
        assert!(edits.remove.contains(&"authorization".to_string()));
        assert!(edits.set.contains(&(headers::USER_ID, "alice".into())));
        assert!(edits.set.contains(&(headers::ROLES, "developer".into())));
        assert!(edits.set.contains(&(headers::REQUEST_ID, "r-1".into())));
        assert_eq!(
            ex.on_request_body(&config(), &call("create_issue")),
            Step::Continue
        );
        let rec = ex.finish(200, now(), Some("127.0.0.1".into()));
        assert_eq!(rec.decision, Some(Outcome::Allow));
        assert!(rec.success);
        assert_eq!(rec.target.as_deref(), Some("create_issue"));
        assert_eq!(rec.params.unwrap()["token"], "[REDACTED]");
    }

    #[test]
    fn readonly_calling_create_issue_gets_403_with_the_request_id() {
        let req = request().by("bob", &["readonly"]);
        let mut ex = Exchange::new(now());
        assert_eq!(req.headers_step(&mut ex).0, Step::WaitForBody);
        let step = ex.on_request_body(&config(), &call("create_issue"));
        assert_eq!(status(&step), Some(403));
        assert_eq!(body_of(&step)["id"], 5);
        assert_eq!(body_of(&step)["error"]["code"], code::FORBIDDEN);
        let rec = ex.finish(403, now(), None);
        assert_eq!(rec.decision, Some(Outcome::Deny));
        assert!(rec.reason.unwrap().contains("create_issue"));
    }

    #[test]
    fn refuses_at_headers_time() {
        let ok = || request().by("alice", &["developer"]);
        let cases: Vec<(Req, u32)> = vec![
            (request(), 401),
            (request().header("authorization", "Bearer"), 401),
            (request().header("authorization", "Basic YTpi"), 401),
            (request().header("authorization", "Bearer x.y.z"), 401),
            (ok().header("authorization", "Bearer again"), 401),
            (ok().path("/mcp/gitlab"), 404),
            (ok().path("/mcp/github/../filesystem"), 404),
            (ok().path("/mcp/github/%2e%2e/filesystem"), 404),
            (ok().method("PUT"), 405),
            (
                request().by("bob", &["readonly"]).path("/mcp/filesystem"),
                403,
            ),
            (request().by("eve", &["intern"]), 403),
            (
                Req {
                    headers: vec![],
                    ..ok()
                }
                .by("alice", &["developer"]),
                415,
            ),
            (ok().header("content-length", "4096"), 413),
        ];
        for (req, expected) in cases {
            let mut ex = Exchange::new(now());
            let (step, edits) = req.headers_step(&mut ex);
            assert_eq!(
                status(&step),
                Some(expected),
                "{} {} {:?}",
                req.method,
                req.path,
                req.headers
            );
            assert_eq!(edits, HeaderEdits::default());
            assert_eq!(
                ex.finish(expected, now(), None).decision,
                Some(Outcome::Deny)
            );
        }
    }

    #[test]
    fn lower_case_bearer_is_accepted() {
        let t = token("alice", &["developer"]);
        let mut ex = Exchange::new(now());
        let (step, _) = request()
            .header("authorization", &format!("bearer {t}"))
            .headers_step(&mut ex);
        assert_eq!(step, Step::WaitForBody);
    }

    #[test]
    fn get_and_delete_are_authenticated_without_a_body() {
        for m in ["GET", "DELETE"] {
            let mut ex = Exchange::new(now());
            let (step, _) = request()
                .method(m)
                .by("alice", &["developer"])
                .headers_step(&mut ex);
            assert_eq!(step, Step::Continue);
            let mut ex = Exchange::new(now());
            let (step, _) = request().method(m).headers_step(&mut ex);
            assert_eq!(status(&step), Some(401));
        }
    }

    #[test]
    fn bad_bodies_get_json_rpc_errors() {
        let cases: Vec<(&[u8], u32, i64)> = vec![
            (b"", 400, -32700),
            (b"{\"jsonrpc\":\"2.0\",\"id\":1,\"met", 400, -32700),
            (b"\x80\x81", 400, -32700),
            (b"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"get_x\"}}]", 400, -32600),
            (b"{\"jsonrpc\":\"2.0\",\"id\":1}", 400, -32600),
        ];
        for (body, st, code) in cases {
            let mut ex = Exchange::new(now());
            request().by("alice", &["developer"]).headers_step(&mut ex);
            let step = ex.on_request_body(&config(), body);
            assert_eq!(
                status(&step),
                Some(st),
                "{:?}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(body_of(&step)["error"]["code"], code);
        }
        let mut ex = Exchange::new(now());
        request().by("alice", &["developer"]).headers_step(&mut ex);
        assert_eq!(
            status(&Step::Reply(ex.on_body_progress(&config(), 2048).unwrap())),
            Some(413)
        );
    }

    #[test]
    fn post_without_body_is_a_parse_error() {
        let mut ex = Exchange::new(now());
        let (step, _) = ex.on_request_headers(
            &config(),
            &request().by("a", &["developer"]).head(),
            true,
            now(),
        );
        assert_eq!(body_of(&step)["error"]["code"], -32700);
    }

    #[test]
    fn identity_header_values_are_sanitized() {
        let mut ex = Exchange::new(now());
        let (_, edits) = request()
            .by("al\r\nice", &["dev,eloper", "developer"])
            .headers_step(&mut ex);
        assert!(edits
            .set
            .contains(&(headers::USER_ID, "al%0D%0Aice".into())));
        assert!(edits
            .set
            .contains(&(headers::ROLES, "dev%2Celoper,developer".into())));
    }

    #[test]
    fn trailers_before_a_decision_are_refused() {
        let mut ex = Exchange::new(now());
        request().by("alice", &["developer"]).headers_step(&mut ex);
        assert_eq!(ex.on_request_trailers().map(|r| r.status), Some(400));
        let mut ex = Exchange::new(now());
        request()
            .method("GET")
            .by("alice", &["developer"])
            .headers_step(&mut ex);
        assert_eq!(ex.on_request_trailers(), None);
    }

    #[test]
    fn unfinished_requests_are_audited_as_denied() {
        let mut ex = Exchange::new(now());
        request().by("alice", &["developer"]).headers_step(&mut ex);
        let rec = ex.finish(0, now() + Duration::from_millis(5), None);
        assert_eq!(rec.decision, Some(Outcome::Deny));
        assert!(!rec.success);
    }
}
