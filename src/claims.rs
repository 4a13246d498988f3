//! Dotted claim paths (`realm_access.roles`, `org.id`): split once when the configuration
//! is compiled, followed through a token's claims on each request.

use serde_json::{Map, Value};

/// Splits a dotted claim path into its segments; every segment must be non-empty.
pub fn parse_path(path: &str) -> Result<Vec<String>, String> {
    let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
    if segments.iter().any(String::is_empty) {
        return Err(format!("{path:?} is not a dotted claim path"));
    }
    Ok(segments)
}

/// The value at `path` in `claims`: each segment after the first names a key of an
/// object (arrays are not indexed).
pub fn lookup<'a>(claims: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter().try_fold(claims.get(first)?, |v, segment| v.get(segment))
}

/// True when the claim at `path` is the string `want`, or a list holding it.
pub fn holds(claims: &Map<String, Value>, path: &[String], want: &str) -> bool {
    match lookup(claims, path) {
        Some(Value::String(s)) => s == want,
        Some(Value::Array(items)) => items.iter().any(|v| v.as_str() == Some(want)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(p: &str) -> Vec<String> {
        parse_path(p).unwrap()
    }

    #[test]
    fn paths_split_on_dots_and_need_every_segment() {
        assert_eq!(path("sub"), vec!["sub"]);
        assert_eq!(path("realm_access.roles"), vec!["realm_access", "roles"]);
        for bad in ["", ".", "a.", ".a", "a..b"] {
            let e = parse_path(bad).unwrap_err();
            assert_eq!(e, format!("{bad:?} is not a dotted claim path"));
        }
    }

    #[test]
    fn lookup_follows_objects_only() {
        let claims = json!({"sub": "alice", "org": {"id": "acme", "teams": ["a", "b"]}, "list": [{"x": 1}]});
        let claims = claims.as_object().unwrap();
        assert_eq!(lookup(claims, &path("sub")), Some(&json!("alice")));
        assert_eq!(lookup(claims, &path("org.id")), Some(&json!("acme")));
        assert_eq!(lookup(claims, &path("org.teams")), Some(&json!(["a", "b"])));
        assert_eq!(lookup(claims, &path("org.missing")), None);
        assert_eq!(lookup(claims, &path("sub.x")), None);
        assert_eq!(lookup(claims, &path("list.0")), None, "arrays are not indexed");
        assert_eq!(lookup(claims, &[]), None);
    }
}
