//! Strings with `{domain}` / `{selector}` placeholders, parsed once at load time so that an
//! unknown placeholder is a startup error, not a surprise on the first message.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Segment {
    Literal(String),
    Domain,
    Selector,
}

/// A parsed template; rendering it cannot fail. Cloning shares the parsed segments: 100,000
/// entries that inherit `[base]`'s key path hold one copy of it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Template {
    segments: std::sync::Arc<[Segment]>,
}

impl Template {
    /// Parses `text`; `{domain}` and `{selector}` are the only placeholders, `{{`/`}}` escape braces.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if rest.starts_with("{{") || rest.starts_with("}}") {
                literal.push(c);
                rest = &rest[2..];
            } else if c == '{' {
                let end = rest
                    .find('}')
                    .ok_or_else(|| format!("unclosed '{{' in \"{text}\""))?;
                let segment = match &rest[1..end] {
                    "domain" => Segment::Domain,
                    "selector" => Segment::Selector,
                    other => {
                        return Err(format!(
                            "unknown placeholder {{{other}}} in \"{text}\" (known: {{domain}}, {{selector}})"
                        ));
                    }
                };
                if !literal.is_empty() {
                    segments.push(Segment::Literal(std::mem::take(&mut literal)));
                }
                segments.push(segment);
                rest = &rest[end + 1..];
            } else if c == '}' {
                return Err(format!(
                    "unmatched '}}' in \"{text}\" (write '}}}}' for a literal brace)"
                ));
            } else {
                literal.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(Self {
            segments: segments.into(),
        })
    }

    /// A template that renders to `text` verbatim.
    pub fn literal(text: impl Into<String>) -> Self {
        Self {
            segments: [Segment::Literal(text.into())].into(),
        }
    }

    /// `{dir}/{domain}/{selector}.key`, the default key path.
    pub fn default_key_path(directory: &std::path::Path) -> Self {
        let dir = directory
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        Self {
            segments: [
                Segment::Literal(format!("{dir}/")),
                Segment::Domain,
                Segment::Literal("/".into()),
                Segment::Selector,
                Segment::Literal(".key".into()),
            ]
            .into(),
        }
    }

    pub fn render(&self, domain: &str, selector: &str) -> String {
        let mut out = String::new();
        for segment in self.segments.iter() {
            match segment {
                Segment::Literal(text) => out.push_str(text),
                Segment::Domain => out.push_str(domain),
                Segment::Selector => out.push_str(selector),
            }
        }
        out
    }

    /// Whether the rendered text depends on the selector (each rotated key has its own).
    pub fn mentions_selector(&self) -> bool {
        self.segments.contains(&Segment::Selector)
    }

    /// Whether the rendered text depends on the domain (a wildcard entry's key differs per subdomain).
    pub fn mentions_domain(&self) -> bool {
        self.segments.contains(&Segment::Domain)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for segment in self.segments.iter() {
            match segment {
                Segment::Literal(text) => {
                    f.write_str(&text.replace('{', "{{").replace('}', "}}"))?
                }
                Segment::Domain => f.write_str("{domain}")?,
                Segment::Selector => f.write_str("{selector}")?,
            }
        }
        Ok(())
    }
}

impl<'de> serde::Deserialize<'de> for Template {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Template::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_placeholders_and_escapes() {
        let cases = [
            ("/k/{domain}/{selector}.pem", "/k/example.com/s1.pem"),
            ("dkim/{domain}", "dkim/example.com"),
            ("plain", "plain"),
            ("{{literal}}-{selector}", "{literal}-s1"),
        ];
        for (text, want) in cases {
            assert_eq!(
                Template::parse(text).unwrap().render("example.com", "s1"),
                want,
                "{text}"
            );
        }
    }

    #[test]
    fn rejects_unknown_or_broken_placeholders() {
        for text in ["{user}", "{domain", "a}b", "{}"] {
            assert!(Template::parse(text).is_err(), "{text} should be rejected");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in ["/k/{domain}/{selector}.pem", "{{x}}{domain}"] {
            let t = Template::parse(text).unwrap();
            assert_eq!(Template::parse(&t.to_string()).unwrap(), t);
        }
    }
}
