//! Resource-level policies: which files, repositories or URIs a caller may touch.
//!
//! Each server may have an ordered list of rules on the resources a request names (a
//! `resources/read` URI, or configured tool arguments). Resources are normalized first
//! (see [`crate::normalize`]); the first rule whose pattern matches decides; no match
//! denies. Patterns may name the caller: `/user/{user_id}/**`, `{claims.tenant}/**`.

use crate::claims;
use crate::config::{err, ConfigError, RawClaimCondition, RawMode, RawResourcePolicy, RawResourceRule, RawSelector};
use crate::jsonrpc::{folds_equal, Message, Target};
use crate::jwt::Principal;
use crate::normalize::{readings, resource_of_uri, Mode, NormalizeError};
use crate::template::{Part, Placeholders, Template};
use glob::{MatchOptions, Pattern};
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;

/// Where in a tool call's arguments a resource is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A top-level argument name (`file_path`).
    Key(String),
    /// A JSON pointer into the arguments (`/source/path`), split into unescaped tokens.
    Pointer(Vec<String>),
}

/// A configured tool argument that names a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub location: Location,
    /// How the server reads the value (all readings are checked; this one leads).
    pub mode: Mode,
    /// A call without this argument is allowed (by default it is denied, since the
    /// server might default to a resource policy never saw).
    pub optional: bool,
}

impl Selector {
    /// A required selector read literally: `file_path` or `/source/path`.
    pub fn parse(spec: &str) -> Selector {
        let location = match spec.strip_prefix('/') {
            Some(pointer) => {
                Location::Pointer(pointer.split('/').map(|t| t.replace("~1", "/").replace("~0", "~")).collect())
            }
            None => Location::Key(spec.to_owned()),
        };
        Selector { location, mode: Mode::Literal, optional: false }
    }

    fn describe(&self) -> String {
        match &self.location {
            Location::Key(k) => k.clone(),
            Location::Pointer(tokens) => tokens.iter().map(|t| format!("/{t}")).collect(),
        }
    }

    /// The value this selector names, refusing keys a case-insensitive server could
    /// read instead (`File_Path` for `file_path`) on the way. `Ok(None)`: absent.
    fn find<'a>(&self, args: &'a Value) -> Result<Option<&'a Value>, String> {
        let tokens: Vec<&str> = match &self.location {
            Location::Key(k) => vec![k.as_str()],
            Location::Pointer(tokens) => tokens.iter().map(String::as_str).collect(),
        };
        let mut at = args;
        for token in tokens {
            at = match at {
                Value::Object(object) => {
                    if object.keys().any(|k| k != token && folds_equal(k, token)) {
                        return Err(format!("argument {:?} is spelled in another letter case", self.describe()));
                    }
                    match object.get(token) {
                        Some(v) => v,
                        None => return Ok(None),
                    }
                }
                Value::Array(items) => match token.parse::<usize>().ok().and_then(|i| items.get(i)) {
                    Some(v) => v,
                    None => return Ok(None),
                },
                _ => return Ok(None),
            };
        }
        Ok(Some(at))
    }
}

impl TryFrom<RawSelector> for Selector {
    type Error = ConfigError;

    /// An error is about the entry as a whole (its field is empty).
    fn try_from(raw: RawSelector) -> Result<Selector, ConfigError> {
        let (name, mode, optional) = match raw {
            RawSelector::Argument(name) => (name, Mode::Literal, false),
            RawSelector::Spec(spec) => {
                let mode = match spec.mode {
                    RawMode::Literal => Mode::Literal,
                    RawMode::Uri => Mode::Uri,
                };
                (spec.argument, mode, spec.optional)
            }
        };
        if name.is_empty() || name == "/" {
            return Err(err("", "must name an argument"));
        }
        Ok(Selector { mode, optional, ..Selector::parse(&name) })
    }
}

/// A claim that must hold the given value (or contain it, when it is an array).
#[derive(Debug, Clone)]
pub struct ClaimCondition {
    pub path: Vec<String>,
    /// May use `{resource}`, `{user_id}` and `{claims.<path>}`.
    pub value: Template,
}

impl TryFrom<RawClaimCondition> for ClaimCondition {
    type Error = ConfigError;

    fn try_from(raw: RawClaimCondition) -> Result<ClaimCondition, ConfigError> {
        let value = Template::parse(&raw.value, Placeholders::CallerAndResource).map_err(|m| err("value", m))?;
        let path = claims::parse_path(&raw.name).map_err(|m| err("name", m))?;
        Ok(ClaimCondition { path, value })
    }
}

/// One ordered rule.
#[derive(Debug, Clone)]
pub struct ResourceRule {
    /// The pattern as configured (lowercased when the policy folds case).
    pub pattern: Template,
    /// Precompiled when the pattern has no placeholders.
    pub compiled: Option<Pattern>,
    /// Split when it has placeholders in a shape that needs no glob per request.
    pub split: Option<SplitPattern>,
    /// Roles that may (`*`: any authenticated caller).
    pub roles: Vec<String>,
    /// User ids that may (placeholders allowed).
    pub users: Vec<Template>,
    pub claim: Option<ClaimCondition>,
    /// Record a denial by this rule as `would_deny` and let the request through.
    pub shadow: bool,
}

/// A server's resource policy.
#[derive(Debug, Clone)]
pub struct ResourcePolicy {
    pub arguments: Vec<Selector>,
    pub case_fold: bool,
    pub rules: Vec<ResourceRule>,
}

impl TryFrom<RawResourcePolicy> for ResourcePolicy {
    type Error = ConfigError;

    /// Error fields are relative to the policy (`rules[0].pattern`).
    fn try_from(raw: RawResourcePolicy) -> Result<ResourcePolicy, ConfigError> {
        let arguments = raw
            .arguments
            .into_iter()
            .enumerate()
            .map(|(i, a)| Selector::try_from(a).map_err(|e| e.within(&format!("arguments[{i}]"))))
            .collect::<Result<Vec<_>, _>>()?;
        if raw.rules.is_empty() {
            return Err(err("rules", "at least one rule is required (no rule would deny everything)"));
        }
        let case_fold = raw.case_insensitive;
        let rules = raw
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| ResourceRule::compile(r, case_fold).map_err(|e| e.within(&format!("rules[{i}]"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ResourcePolicy { arguments, case_fold, rules })
    }
}

/// Why a resource was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceReason {
    Unnormalizable(NormalizeError),
    NoRule,
    Rule {
        index: usize,
        pattern: String,
    },
    /// A configured argument is missing, `null`, not a string (or array of strings), or
    /// spelled so that a server could read another key.
    BadArgument(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceDenial {
    /// The resource as normalized (or as sent, when it could not be).
    pub resource: String,
    pub reason: ResourceReason,
    pub shadow: bool,
}

impl fmt::Display for ResourceDenial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let resource: String = self.resource.chars().take(256).collect();
        match &self.reason {
            ResourceReason::Unnormalizable(e) => write!(f, "resource {resource:?} refused: {e}"),
            ResourceReason::NoRule => write!(f, "no resource rule matches {resource:?}"),
            ResourceReason::Rule { index, pattern } => {
                write!(f, "resource {resource:?} matched rule {index} ({pattern:?}), which does not allow the caller")
            }
            ResourceReason::BadArgument(why) => write!(f, "{why}"),
        }
    }
}

const MATCH: MatchOptions =
    MatchOptions { case_sensitive: true, require_literal_separator: true, require_literal_leading_dot: false };

/// How [`substitute`] puts values in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// As they are (user ids, claim values).
    Text,
    /// Into a path: a value holding `/` (or empty) makes the template unusable, so a
    /// claim can never widen a pattern across directories.
    Path,
    /// Into a glob: as [`Fill::Path`], and escaped.
    Glob,
}

/// Fills placeholders.
fn substitute(parts: &[Part], principal: &Principal, resource: Option<&str>, fill: Fill) -> Option<String> {
    let mut out = String::with_capacity(64);
    for part in parts {
        let value: Cow<'_, str> = match part {
            Part::Text(text) => {
                out.push_str(text);
                continue;
            }
            Part::UserId => Cow::Borrowed(&principal.user_id),
            Part::Resource => Cow::Borrowed(resource?),
            Part::Claim(path) => match claims::lookup(&principal.claims, path)? {
                Value::String(s) => Cow::Borrowed(s),
                Value::Number(n) => Cow::Owned(n.to_string()),
                _ => return None,
            },
        };
        if fill != Fill::Text && (value.is_empty() || value.contains('/')) {
            return None;
        }
        if fill == Fill::Glob {
            out.push_str(&Pattern::escape(&value));
        } else {
            out.push_str(&value);
        }
    }
    Some(out)
}

/// A rule pattern with placeholders, split so that matching builds no glob per request:
/// `head`, the text and placeholders up to the last placeholder, holds no glob character,
/// so once filled it is compared as plain text (the values would be escaped in a glob
/// anyway); `tail`, the rest, is empty or starts a path segment (`/...`), so it matches
/// the remainder of the resource exactly as it would within the whole pattern. Patterns
/// of another shape build their glob per request.
#[derive(Debug, Clone)]
pub struct SplitPattern {
    head: Vec<Part>,
    tail: Option<Pattern>,
}

impl SplitPattern {
    fn of(template: &Template) -> Option<SplitPattern> {
        let parts = template.parts();
        let last = parts.iter().rposition(|p| !matches!(p, Part::Text(_)))?;
        let (head, tail) = parts.split_at(last + 1);
        let globbing = |p: &Part| matches!(p, Part::Text(t) if t.contains(['*', '?', '[']));
        if head.iter().any(globbing) {
            return None;
        }
        let tail: String =
            tail.iter().filter_map(|p| if let Part::Text(t) = p { Some(t.as_str()) } else { None }).collect();
        let tail = match tail.as_str() {
            "" => None,
            t if t.starts_with('/') => Some(Pattern::new(t).ok()?),
            _ => return None,
        };
        Some(SplitPattern { head: head.to_vec(), tail })
    }

    fn matches(&self, principal: &Principal, resource: &str, case_fold: bool) -> bool {
        let Some(mut head) = substitute(&self.head, principal, None, Fill::Path) else { return false };
        if case_fold {
            head = head.to_lowercase();
        }
        match (resource.strip_prefix(head.as_str()), &self.tail) {
            (None, _) => false,
            (Some(rest), None) => rest.is_empty(),
            (Some(rest), Some(tail)) => tail.matches_with(rest, MATCH),
        }
    }
}

impl ResourceRule {
    /// Compiles one rule (error fields are relative to it). The pattern is lowercased
    /// when the policy folds case.
    fn compile(raw: RawResourceRule, case_fold: bool) -> Result<ResourceRule, ConfigError> {
        let pattern = Template::parse(&raw.pattern, Placeholders::Caller).map_err(|m| err("pattern", m))?;
        // Folding lowercases the text, never the placeholder names.
        let pattern = if case_fold { pattern.with_lowercase_text() } else { pattern };
        let text = pattern.as_str().to_owned();
        // Validate the glob with placeholders filled by a harmless value.
        let probe: String = pattern
            .parts()
            .iter()
            .map(|p| match p {
                Part::Text(literal) => literal.as_str(),
                _ => "x",
            })
            .collect();
        Pattern::new(&probe).map_err(|e| err("pattern", format!("bad glob {text:?}: {e}")))?;
        let compiled = if pattern.is_literal() { Pattern::new(&text).ok() } else { None };
        let users = raw
            .users
            .iter()
            .enumerate()
            .map(|(u, user)| Template::parse(user, Placeholders::Caller).map_err(|m| err(format!("users[{u}]"), m)))
            .collect::<Result<Vec<_>, _>>()?;
        let claim = raw.claim.map(|c| ClaimCondition::try_from(c).map_err(|e| e.within("claim"))).transpose()?;
        let split = SplitPattern::of(&pattern);
        Ok(ResourceRule { pattern, compiled, split, roles: raw.roles, users, claim, shadow: raw.shadow })
    }

    fn matches(&self, principal: &Principal, resource: &str, case_fold: bool) -> bool {
        if let Some(p) = &self.compiled {
            return p.matches_with(resource, MATCH);
        }
        if let Some(split) = &self.split {
            return split.matches(principal, resource, case_fold);
        }
        let Some(mut pattern) = substitute(self.pattern.parts(), principal, None, Fill::Glob) else { return false };
        if case_fold {
            pattern = pattern.to_lowercase();
        }
        Pattern::new(&pattern).is_ok_and(|p| p.matches_with(resource, MATCH))
    }

    fn allows(&self, principal: &Principal, resource: &str) -> bool {
        let by_role = self.roles.iter().any(|r| r == "*" || principal.roles.contains(r));
        let by_user = self
            .users
            .iter()
            .any(|u| substitute(u.parts(), principal, None, Fill::Text).is_some_and(|u| u == principal.user_id));
        let by_claim = self.claim.as_ref().is_some_and(|c| {
            let Some(want) = substitute(c.value.parts(), principal, Some(resource), Fill::Text) else { return false };
            claims::holds(&principal.claims, &c.path, &want)
        });
        by_role || by_user || by_claim
    }
}

impl ResourcePolicy {
    /// The resources a message names, each with how the server reads it: a resource URI,
    /// or the configured arguments of a tool call (strings, or arrays of strings). A
    /// configured argument that is absent (and not optional), `null`, or of another type
    /// is a denial: the server would fall back to something policy never saw.
    pub fn resources(&self, message: &Message) -> Result<Vec<(String, Mode)>, ResourceDenial> {
        let bad = |why: String| ResourceDenial {
            resource: String::new(),
            reason: ResourceReason::BadArgument(why),
            shadow: false,
        };
        match &message.target {
            Some(Target::Resource(uri)) => {
                let name = resource_of_uri(uri).map_err(|e| ResourceDenial {
                    resource: uri.clone(),
                    reason: ResourceReason::Unnormalizable(e),
                    shadow: false,
                })?;
                Ok(vec![(name.to_owned(), Mode::Uri)])
            }
            Some(Target::Tool(_)) => {
                let empty = Value::Object(serde_json::Map::new());
                let args = message.arguments.as_ref().unwrap_or(&empty);
                let mut found = Vec::new();
                for selector in &self.arguments {
                    let name = selector.describe();
                    match selector.find(args).map_err(bad)? {
                        None if selector.optional => {}
                        None => return Err(bad(format!("resource argument {name:?} is missing"))),
                        Some(Value::String(s)) => found.push((s.clone(), selector.mode)),
                        Some(Value::Array(items)) => {
                            for item in items {
                                match item {
                                    Value::String(s) => found.push((s.clone(), selector.mode)),
                                    _ => return Err(bad(format!("resource argument {name:?} holds a non-string"))),
                                }
                            }
                        }
                        Some(_) => {
                            return Err(bad(format!("resource argument {name:?} is not a string or array of strings")))
                        }
                    }
                }
                Ok(found)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// The argument a `Mcp-Param-<name>` header mirrors, when this policy reads it
    /// (header names compare without case).
    pub fn argument_named(&self, header_suffix: &str) -> Option<&str> {
        self.arguments.iter().find_map(|s| match &s.location {
            Location::Key(k) if k.eq_ignore_ascii_case(header_suffix) => Some(k.as_str()),
            _ => None,
        })
    }

    /// Decides one resource on every reading the server could give it (see
    /// [`readings`]); all must be allowed. On success explains which rule allowed it.
    pub fn check(&self, principal: &Principal, raw: &str, mode: Mode) -> Result<String, ResourceDenial> {
        let all = readings(raw, mode, self.case_fold).map_err(|e| ResourceDenial {
            resource: raw.to_owned(),
            reason: ResourceReason::Unnormalizable(e),
            shadow: false,
        })?;
        let mut why = String::new();
        for resource in all {
            let allowed = self.check_reading(principal, resource)?;
            if why.is_empty() {
                why = allowed;
            }
        }
        Ok(why)
    }

    fn check_reading(&self, principal: &Principal, resource: String) -> Result<String, ResourceDenial> {
        for (index, rule) in self.rules.iter().enumerate() {
            if !rule.matches(principal, &resource, self.case_fold) {
                continue;
            }
            if rule.allows(principal, &resource) {
                return Ok(format!("resource {resource:?}: rule {index} ({:?})", rule.pattern.as_str()));
            }
            return Err(ResourceDenial {
                resource,
                reason: ResourceReason::Rule { index, pattern: rule.pattern.as_str().to_owned() },
                shadow: rule.shadow,
            });
        }
        Err(ResourceDenial { resource, reason: ResourceReason::NoRule, shadow: false })
    }

    /// Decides every resource a message names; the first denial wins.
    pub fn check_message(&self, principal: &Principal, message: &Message) -> Result<Vec<String>, ResourceDenial> {
        self.resources(message)?.iter().map(|(r, mode)| self.check(principal, r, *mode)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonrpc::{parse, Message};
    use serde_json::{json, Map};

    fn principal(user: &str, roles: &[&str], claims: Value) -> Principal {
        let mut c: Map<String, Value> = claims.as_object().cloned().unwrap_or_default();
        c.insert("sub".into(), json!(user));
        Principal {
            user_id: user.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            scopes: vec![],
            provider: "p".into(),
            claims: c,
        }
    }

    fn rule(pattern: &str, roles: &[&str]) -> ResourceRule {
        let compiled = if pattern.contains('{') { None } else { Some(Pattern::new(pattern).unwrap()) };
        let template = Template::parse(pattern, Placeholders::Caller).unwrap();
        ResourceRule {
            split: SplitPattern::of(&template),
            pattern: template,
            compiled,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            users: vec![],
            claim: None,
            shadow: false,
        }
    }

    /// The demo's filesystem policy.
    fn filesystem() -> ResourcePolicy {
        let mut own = rule("/user/{user_id}/**", &[]);
        own.users = vec![Template::parse("{user_id}", Placeholders::Caller).unwrap()];
        ResourcePolicy {
            arguments: vec![
                Selector::parse("file_path"),
                Selector { optional: true, ..Selector::parse("/options/target") },
            ],
            case_fold: false,
            rules: vec![
                rule("/public", &["*"]),
                rule("/public/**", &["*"]),
                rule("/private/**", &["admin"]),
                own,
                rule("/user/**", &["admin"]),
            ],
        }
    }

    /// The demo's github policy: public repositories for everyone, private ones for
    /// whoever the token names as a collaborator.
    fn github() -> ResourcePolicy {
        let mut private = rule("acme/payroll", &["admin"]);
        private.claim = Some(ClaimCondition {
            path: vec!["repos".into()],
            value: Template::parse("{resource}", Placeholders::CallerAndResource).unwrap(),
        });
        ResourcePolicy {
            arguments: vec![Selector::parse("repository")],
            case_fold: true,
            rules: vec![rule("acme/website", &["*"]), private],
        }
    }

    #[test]
    fn filesystem_table() {
        let p = filesystem();
        let alice = principal("alice", &["developer"], json!({}));
        let admin = principal("root", &["admin"], json!({}));
        let table: &[(&Principal, &str, bool)] = &[
            (&alice, "/public/readme.md", true),
            (&alice, "/public/docs/deep/file.md", true),
            (&alice, "/public", true),
            (&alice, "/private/salaries.csv", false),
            (&admin, "/private/salaries.csv", true),
            (&alice, "/user/alice/notes.md", true),
            (&alice, "/user/alice/sub/dir/x", true),
            (&alice, "/user/bob/notes.md", false),
            (&admin, "/user/bob/notes.md", true),
            (&alice, "/etc/passwd", false),
            // Traversal and encodings are normalized before matching.
            (&alice, "/public/../private/salaries.csv", false),
            (&alice, "/public/%2e%2e/private/salaries.csv", false),
            (&alice, "/public/%252e%252e/private/salaries.csv", false),
            (&alice, "/public//..//private/x", false),
            (&alice, "\\public\\..\\private\\x", false),
            (&alice, "/user/alice/../bob/notes.md", false),
            (&alice, "/public/../../etc/passwd", false),
            (&alice, "/user/bob/../alice/notes.md", true),
        ];
        for (who, path, allowed) in table {
            let d = p.check(who, path, Mode::Literal);
            assert_eq!(d.is_ok(), *allowed, "{} {path}: {d:?}", who.user_id);
        }
    }

    #[test]
    fn a_user_id_cannot_widen_its_own_pattern() {
        let p = filesystem();
        for sneaky in ["*", "**", "..", "bob/..", "[ab]*"] {
            let who = principal(sneaky, &["developer"], json!({}));
            assert!(
                p.check(&who, "/user/bob/notes.md", Mode::Literal).is_err(),
                "user id {sneaky:?} reached bob's files"
            );
        }
        let star = principal("*", &["developer"], json!({}));
        assert!(p.check(&star, "/user/*/notes.md", Mode::Literal).is_ok(), "a literal '*' folder is still its own");
    }

    #[test]
    fn github_private_repository_needs_the_claim() {
        let p = github();
        let dev = principal("alice", &["developer"], json!({}));
        let collaborator = principal("carol", &["developer"], json!({"repos": ["acme/payroll"]}));
        assert!(p.check(&dev, "acme/website", Mode::Literal).is_ok());
        assert!(p.check(&dev, "ACME/Website", Mode::Literal).is_ok(), "case folded");
        let denied = p.check(&dev, "acme/payroll", Mode::Literal).unwrap_err();
        assert_eq!(denied.reason, ResourceReason::Rule { index: 1, pattern: "acme/payroll".into() });
        assert!(p.check(&collaborator, "acme/payroll", Mode::Literal).is_ok());
        assert!(p.check(&collaborator, "acme/website/../payroll", Mode::Literal).is_ok());
        assert!(matches!(p.check(&dev, "acme/unknown", Mode::Literal).unwrap_err().reason, ResourceReason::NoRule));
    }

    #[test]
    fn resources_come_from_arguments_and_uris() {
        let p = filesystem();
        let m = parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"copy","arguments":{"file_path":["/public/a","/private/b"],"options":{"target":"/user/x"}}}}"#, 16).unwrap();
        let names = |m: &Message| p.resources(m).unwrap().into_iter().map(|(r, _)| r).collect::<Vec<_>>();
        assert_eq!(names(&m), vec!["/public/a", "/private/b", "/user/x"]);
        let alice = principal("alice", &["developer"], json!({}));
        assert!(p.check_message(&alice, &m).is_err(), "every resource must be allowed");
        let m =
            parse(br#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///public/a.txt"}}"#, 16)
                .unwrap();
        assert_eq!(p.resources(&m).unwrap(), vec![("/public/a.txt".to_owned(), Mode::Uri)]);
        assert!(p.check_message(&alice, &m).is_ok());
    }

    fn compiled(policy: Value) -> Result<ResourcePolicy, ConfigError> {
        ResourcePolicy::try_from(serde_json::from_value::<RawResourcePolicy>(policy).unwrap())
    }

    #[test]
    fn the_resource_placeholder_is_only_for_claim_values() {
        let claim = json!({"rules": [{"pattern": "acme/*", "claim": {"name": "repos", "value": "{resource}"}}]});
        assert!(compiled(claim).is_ok());
        let field = |p: Value| compiled(p).unwrap_err().field;
        assert_eq!(field(json!({"rules": [{"pattern": "{resource}/*"}]})), "rules[0].pattern");
        assert_eq!(field(json!({"rules": [{"pattern": "a", "users": ["x", "{resource}"]}]})), "rules[0].users[1]");
    }

    #[test]
    fn compiled_rules_keep_their_text_and_precompile_literals() {
        let p = compiled(json!({
            "arguments": ["path", {"argument": "/a/b", "mode": "percent", "optional": true}],
            "case_insensitive": true,
            "rules": [{"pattern": "Acme/Web"}, {"pattern": "acme/{claims.team}/*", "users": ["{user_id}"]}],
        }))
        .unwrap();
        assert_eq!(p.arguments[1], Selector { mode: Mode::Uri, optional: true, ..Selector::parse("/a/b") });
        assert_eq!(p.rules[0].pattern.as_str(), "acme/web");
        assert!(p.rules[0].compiled.is_some());
        assert!(p.rules[1].compiled.is_none());
        let field = |p: Value| compiled(p).unwrap_err().field;
        assert_eq!(field(json!({"arguments": ["/"], "rules": [{"pattern": "a"}]})), "arguments[0]");
        assert_eq!(field(json!({"rules": []})), "rules");
        assert_eq!(field(json!({"rules": [{"pattern": "a/[b"}]})), "rules[0].pattern");
        assert_eq!(
            field(json!({"rules": [{"pattern": "a", "claim": {"name": "a..b", "value": "x"}}]})),
            "rules[0].claim.name"
        );
    }

    #[test]
    fn folding_case_lowercases_the_text_of_a_rule_but_not_the_claim_it_names() {
        let p = compiled(json!({
            "arguments": ["path"],
            "case_insensitive": true,
            "rules": [{"pattern": "/Tenants/{claims.orgId}/**", "roles": ["*"]}],
        }))
        .unwrap();
        let who = principal("a", &["developer"], json!({"orgId": "Acme", "orgid": "other"}));
        assert!(p.check(&who, "/TENANTS/acme/x", Mode::Literal).is_ok());
        assert!(p.check(&who, "/tenants/other/x", Mode::Literal).is_err());
        // Placeholder names are read as written, folded or not.
        let unknown = compiled(json!({"case_insensitive": true, "rules": [{"pattern": "/u/{USER_ID}"}]}));
        assert_eq!(unknown.unwrap_err().field, "rules[0].pattern");
    }

    #[test]
    fn claims_can_name_the_folder() {
        let p = ResourcePolicy {
            arguments: vec![],
            case_fold: false,
            rules: vec![rule("/tenants/{claims.org.id}/**", &["*"])],
        };
        let who = principal("a", &["developer"], json!({"org": {"id": "acme"}}));
        assert!(p.check(&who, "/tenants/acme/x", Mode::Literal).is_ok());
        assert!(p.check(&who, "/tenants/other/x", Mode::Literal).is_err());
        let nobody = principal("b", &["developer"], json!({}));
        assert!(p.check(&nobody, "/tenants/acme/x", Mode::Literal).is_err());
    }

    fn call(arguments: Value) -> Message {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "read_file", "arguments": arguments}});
        parse(body.to_string().as_bytes(), 16).unwrap()
    }

    #[test]
    fn the_path_checked_is_the_path_the_server_opens() {
        let p = filesystem();
        let bob = principal("bob", &["readonly"], json!({}));
        // The filesystem server reads `%2f`, `%5c` and `\` literally, so each of these opens
        // /private/salaries.csv or bob's neighbour's files; the decoded reading alone looks
        // like /public/... .
        for path in [
            "/public/a%2fb/../../private/salaries.csv",
            "/public/a%5cb/../../private/salaries.csv",
            "/public/a%252fb/../../private/salaries.csv",
            "/public/a\\b/../../private/salaries.csv",
            "/public/%2e%2e/private/salaries.csv",
            "/user/bob/x%2fy/../../alice/notes.md",
        ] {
            let m = call(json!({"file_path": path}));
            assert!(p.check_message(&bob, &m).is_err(), "{path}");
        }
        let m = call(json!({"file_path": "/public/readme.md"}));
        assert!(p.check_message(&bob, &m).is_ok());
    }

    #[test]
    fn resource_arguments_must_be_present_and_strings() {
        let p = filesystem();
        let alice = principal("alice", &["developer"], json!({}));
        let cases = [
            json!({}),
            json!({"file_path": null}),
            json!({"file_path": 7}),
            json!({"file_path": {"path": "/public/a"}}),
            json!({"file_path": ["/public/a", ["/private/x"]]}),
            json!({"file_path": "/public/a", "options": {"Target": "/private/x"}}),
            json!({"FILE_PATH": "/private/x"}),
        ];
        for args in cases {
            let denial = p.check_message(&alice, &call(args.clone())).unwrap_err();
            assert!(matches!(denial.reason, ResourceReason::BadArgument(_)), "{args}: {denial:?}");
        }
        let mut optional = p.clone();
        for s in &mut optional.arguments {
            s.optional = true;
        }
        assert!(optional.check_message(&alice, &call(json!({}))).is_ok());
        assert!(optional.check_message(&alice, &call(json!({"File_path": "/private/x"}))).is_err());
    }

    #[test]
    fn uri_mode_checks_the_decoded_reading_first() {
        let mut p = filesystem();
        p.arguments = vec![Selector { mode: Mode::Uri, ..Selector::parse("file_path") }];
        let alice = principal("alice", &["developer"], json!({}));
        assert!(p.check_message(&alice, &call(json!({"file_path": "/public/a%20b"}))).is_ok());
        assert!(p.check_message(&alice, &call(json!({"file_path": "/public/100%"}))).is_err());
        assert!(p.check_message(&alice, &call(json!({"file_path": "/public/a%2f..%2f..%2fprivate/x"}))).is_err());
    }
    #[test]
    fn split_patterns_match_exactly_what_their_glob_matches() {
        let patterns = [
            "/user/{user_id}",
            "/user/{user_id}/**",
            "/user/{user_id}/*",
            "/user/{user_id}/*.md",
            "/t/{claims.org}/{user_id}/**",
            "/t/{claims.org}/x/{user_id}/?",
            "{user_id}/**",
            "{user_id}",
            "/a.b/{user_id}/[ab]*/**",
        ];
        // Shapes that must not be split: a glob before a placeholder, or text after the last
        // one that does not start a segment.
        for unsplit in ["/*/{user_id}/**", "/u?/{user_id}", "/user/{user_id}*", "/user/{user_id}.d/*", "/[u]/{user_id}"]
        {
            assert!(SplitPattern::of(&Template::parse(unsplit, Placeholders::Caller).unwrap()).is_none(), "{unsplit}");
        }
        let users = ["alice", "Alice", "al*ce", "a?c", "[a]", "a]b", "", "a/b", "..", ".", "é", "İx"];
        let orgs = [json!("acme"), json!("ac/me"), json!(42), json!(""), json!(["x"])];
        let resources = [
            "/user/alice",
            "/user/alice/",
            "/user/alice/notes.md",
            "/user/alice/a/b.md",
            "/user/alicex/n",
            "/user/al*ce/n",
            "/user/alXce/n",
            "/user/[a]/n",
            "/user/a/n",
            "/user/a]b/x",
            "/user/",
            "/user//n",
            "/user/../n",
            "/user/./n",
            "/user/é/n",
            "/user/i̇x/n",
            "/user/İx/n",
            "/t/acme/alice/f",
            "/t/acme/x/alice/f",
            "/t/42/alice/deep/f",
            "/t/ac/me/alice/f",
            "alice/x",
            "alice",
            "/a.b/alice/a1/z",
            "/a.b/alice/c/z",
        ];
        let mut matches = 0;
        for text in patterns {
            for case_fold in [false, true] {
                let text = if case_fold { text.to_lowercase() } else { text.to_owned() };
                let mut split = rule(&text, &["*"]);
                assert!(split.split.is_some(), "{text} should split");
                let mut glob = split.clone();
                glob.split = None;
                split.compiled = None;
                for user in users {
                    for org in &orgs {
                        let who = principal(user, &[], json!({"org": org}));
                        for resource in resources {
                            let resource = if case_fold { resource.to_lowercase() } else { resource.to_owned() };
                            let matched = split.matches(&who, &resource, case_fold);
                            matches += usize::from(matched);
                            assert_eq!(
                                matched,
                                glob.matches(&who, &resource, case_fold),
                                "pattern {text:?} user {user:?} org {org} resource {resource:?} fold {case_fold}"
                            );
                        }
                    }
                }
            }
        }
        assert!(matches > 50, "the table must hold matches too, not only misses: {matches}");
    }
}
