//! Postfix milter lists: `smtpd_milters = inet:127.0.0.1:8891, { unix:x.sock, default_action = accept }`.

use std::collections::BTreeMap;

/// One milter of a list, with the per-milter settings of the `{ name, key=value, … }` form
/// (Postfix 3.0 and later): `connect_timeout`, `default_action`, `protocol`, ….
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MilterEntry {
    pub name: String,
    pub settings: BTreeMap<String, String>,
}

/// Splits a milter list the way Postfix does: entries separated by commas or white space, a
/// braced entry read whole.
pub fn parse(text: &str) -> Vec<MilterEntry> {
    let mut entries = Vec::new();
    let mut rest = text.trim_start_matches(is_separator);
    while !rest.is_empty() {
        if let Some(inner) = rest.strip_prefix('{') {
            let (group, after) = inner.split_once('}').unwrap_or((inner, ""));
            if let Some(entry) = braced(group) {
                entries.push(entry);
            }
            rest = after;
        } else {
            let end = rest.find(is_separator).unwrap_or(rest.len());
            entries.push(MilterEntry {
                name: rest[..end].to_string(),
                settings: BTreeMap::new(),
            });
            rest = &rest[end..];
        }
        rest = rest.trim_start_matches(is_separator);
    }
    entries
}

fn is_separator(c: char) -> bool {
    c == ',' || c.is_whitespace()
}

/// `inet:host:port, default_action = accept` → the name and its settings.
fn braced(group: &str) -> Option<MilterEntry> {
    let mut parts = group.split(',').map(str::trim).filter(|p| !p.is_empty());
    let name = parts.next()?.to_string();
    let settings = parts
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Some(MilterEntry { name, settings })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<String> {
        parse(text).into_iter().map(|e| e.name).collect()
    }

    #[test]
    fn plain_lists() {
        assert!(parse("").is_empty());
        assert!(parse("  , ").is_empty());
        assert_eq!(names("unix:a.sock"), ["unix:a.sock"]);
        assert_eq!(
            names("inet:127.0.0.1:1, unix:/b.sock\tinet:[::1]:3"),
            ["inet:127.0.0.1:1", "unix:/b.sock", "inet:[::1]:3"]
        );
    }

    #[test]
    fn braced_entries_carry_their_settings() {
        let list = parse(
            "{ unix:/run/x.sock, default_action = accept , protocol=4 }, inet:127.0.0.1:1234",
        );
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].name, "unix:/run/x.sock");
        assert_eq!(list[0].settings["default_action"], "accept");
        assert_eq!(list[0].settings["protocol"], "4");
        assert_eq!(list[1].name, "inet:127.0.0.1:1234");
        assert!(list[1].settings.is_empty());
        // An unclosed brace is read to the end rather than lost.
        assert_eq!(names("{ unix:x.sock, protocol=6"), ["unix:x.sock"]);
    }
}
