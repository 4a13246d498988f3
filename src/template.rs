//! `{placeholder}` templates in resource rules (`/user/{user_id}/**`,
//! `{claims.org.id}/*`, `{resource}`): split into text and placeholders once, when the
//! configuration is compiled, so a request only fills them in (see [`crate::resource`]).

use crate::claims;

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Text between placeholders, as written.
    Text(String),
    /// `{user_id}`: the caller's user id.
    UserId,
    /// `{resource}`: the resource being decided.
    Resource,
    /// `{claims.<path>}`: a claim of the caller's token, by dotted path.
    Claim(Vec<String>),
}

/// Which placeholders a template may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholders {
    /// `{user_id}` and `{claims.<path>}`, which name the caller (rule patterns, users).
    Caller,
    /// Those and `{resource}` (claim condition values).
    CallerAndResource,
}

/// A template and its parts. Every `{` opens a placeholder; a `}` outside one is text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

impl Template {
    /// Splits `text`, refusing an unclosed `{` and placeholders `allowed` does not name.
    pub fn parse(text: &str, allowed: Placeholders) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find('{') {
            let before = rest.get(..start).unwrap_or_default();
            if !before.is_empty() {
                parts.push(Part::Text(before.to_owned()));
            }
            let after = rest.get(start + 1..).unwrap_or_default();
            let end = after.find('}').ok_or_else(|| format!("unclosed '{{' in {text:?}"))?;
            let name = after.get(..end).unwrap_or_default();
            let part = match name {
                "user_id" => Some(Part::UserId),
                "resource" if allowed == Placeholders::CallerAndResource => Some(Part::Resource),
                _ => name.strip_prefix("claims.").and_then(|path| claims::parse_path(path).ok()).map(Part::Claim),
            };
            parts.push(part.ok_or_else(|| format!("unknown placeholder {{{name}}} in {text:?}"))?);
            rest = after.get(end + 1..).unwrap_or_default();
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template { text: text.to_owned(), parts })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The template with its text lowercased and its placeholders as written (a claim
    /// path keeps its case: `{claims.orgId}` still names `orgId`).
    pub fn with_lowercase_text(self) -> Template {
        let parts = self
            .parts
            .into_iter()
            .map(|p| match p {
                Part::Text(t) => Part::Text(t.to_lowercase()),
                other => other,
            })
            .collect();
        Template { text: self.text.to_lowercase(), parts }
    }

    /// No placeholders: the template is its own text.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Placeholders::{Caller, CallerAndResource};

    fn parts(text: &str, allowed: Placeholders) -> Vec<Part> {
        Template::parse(text, allowed).unwrap().parts().to_vec()
    }

    fn text(t: &str) -> Part {
        Part::Text(t.into())
    }

    fn claim(path: &[&str]) -> Part {
        Part::Claim(path.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn splits_text_and_placeholders() {
        assert_eq!(parts("/user/{user_id}/**", Caller), vec![text("/user/"), Part::UserId, text("/**")]);
        assert_eq!(parts("/t/{claims.org.id}/*", Caller), vec![text("/t/"), claim(&["org", "id"]), text("/*")]);
        assert_eq!(parts("{resource}", CallerAndResource), vec![Part::Resource]);
        assert_eq!(
            parts("{user_id}-{claims.tenant}", CallerAndResource),
            vec![Part::UserId, text("-"), claim(&["tenant"])]
        );
        assert_eq!(parts("acme/web}site", Caller), vec![text("acme/web}site")], "a lone '}}' is text");
        assert_eq!(parts("", Caller), vec![]);
    }

    #[test]
    fn literal_templates_are_their_own_text() {
        let t = Template::parse("/public/**", Caller).unwrap();
        assert!(t.is_literal());
        assert_eq!(t.as_str(), "/public/**");
        let t = Template::parse("/user/{user_id}", Caller).unwrap();
        assert!(!t.is_literal());
        assert_eq!(t.as_str(), "/user/{user_id}");
    }

    #[test]
    fn placeholders_are_validated() {
        assert!(Template::parse("/user/{user_id}/**", Caller).is_ok());
        assert!(Template::parse("/t/{claims.org.id}/*", Caller).is_ok());
        assert!(Template::parse("{resource}", CallerAndResource).is_ok());
        assert!(Template::parse("{resource}", Caller).is_err());
        assert!(Template::parse("/user/{email}", Caller).is_err());
        assert!(Template::parse("/user/{user_id", Caller).is_err());
    }

    #[test]
    fn errors_name_the_placeholder_and_the_template() {
        let e = |t: &str, allowed| Template::parse(t, allowed).unwrap_err();
        assert_eq!(e("/user/{user_id", Caller), r#"unclosed '{' in "/user/{user_id""#);
        assert_eq!(e("{", CallerAndResource), r#"unclosed '{' in "{""#);
        assert_eq!(e("/user/{email}", Caller), r#"unknown placeholder {email} in "/user/{email}""#);
        assert_eq!(e("{resource}/x", Caller), r#"unknown placeholder {resource} in "{resource}/x""#);
        for bad in
            ["{}", "{claims}", "{claims.}", "{claims.a..b}", "{claims..a}", "{USER_ID}", "{ user_id }", "{a{user_id}"]
        {
            assert!(e(bad, CallerAndResource).starts_with("unknown placeholder {"), "{bad}");
        }
    }
}
