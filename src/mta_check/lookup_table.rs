//! What the rules of a Postfix lookup table say, read from its source file: enough to tell
//! whether `smtp_header_checks` rewrites header fields, or whether a `smtpd_milter_maps` entry
//! leaves this milter out.

use super::Host;
use std::path::PathBuf;

/// One rule of a table: where it is, and its result (an action, a milter list, …).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub file: PathBuf,
    pub line: usize,
    pub result: String,
}

/// A table of a parameter's list, as far as it can be read here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Table {
    Rules(Vec<Rule>),
    /// A database (MySQL, LDAP, …), an unreadable file, a form this check does not parse.
    Unreadable {
        table: String,
        why: String,
    },
}

/// The tables of a list such as `regexp:/etc/postfix/a, pcre:/etc/postfix/b`.
pub fn read_all(list: &str, host: &dyn Host) -> Vec<Table> {
    split_list(list)
        .into_iter()
        .map(|spec| read(&spec, host))
        .collect()
}

/// Header and body check actions that change the message.
pub fn modifies_message(result: &str) -> bool {
    let action = result.split_whitespace().next().unwrap_or("");
    ["IGNORE", "PREPEND", "REPLACE", "STRIP"]
        .iter()
        .any(|a| action.eq_ignore_ascii_case(a))
}

fn read(spec: &str, host: &dyn Host) -> Table {
    let spec = spec.strip_prefix("proxy:").unwrap_or(spec);
    let unreadable = |why: &str| Table::Unreadable {
        table: spec.to_string(),
        why: why.to_string(),
    };
    let Some((kind, name)) = spec.split_once(':') else {
        return unreadable("not a type:name table");
    };
    let shape = match kind {
        "regexp" | "pcre" => Shape::Patterns,
        "hash" | "btree" | "lmdb" | "cdb" | "dbm" | "sdbm" | "texthash" | "cidr" => Shape::Keys,
        "inline" => return inline(name),
        "static" => {
            return Table::Rules(vec![Rule {
                file: PathBuf::from(spec),
                line: 1,
                result: unbrace(name).to_string(),
            }]);
        }
        _ => return unreadable("a database this check cannot read"),
    };
    let path = PathBuf::from(name);
    match host.read_to_string(&path) {
        Ok(text) => Table::Rules(rules(&text, shape, &path)),
        Err(e) => unreadable(&format!("cannot read {}: {e}", path.display())),
    }
}

#[derive(Clone, Copy)]
enum Shape {
    /// regexp/pcre: `/pattern/flags result`, with `if`/`endif` blocks.
    Patterns,
    /// Indexed files and cidr tables: `key result`.
    Keys,
}

fn rules(text: &str, shape: Shape, path: &std::path::Path) -> Vec<Rule> {
    let mut out = Vec::new();
    for (line, entry) in logical_lines(text) {
        let result = match shape {
            Shape::Patterns => {
                let word = entry.split_whitespace().next().unwrap_or("");
                if word.eq_ignore_ascii_case("if") || word.eq_ignore_ascii_case("endif") {
                    continue;
                }
                after_pattern(&entry)
            }
            Shape::Keys => entry.split_once(char::is_whitespace).map(|(_, r)| r.trim()),
        };
        if let Some(result) = result {
            out.push(Rule {
                file: path.to_path_buf(),
                line,
                result: result.to_string(),
            });
        }
    }
    out
}

/// Lines with their continuations (lines starting with white space) joined; comments and
/// blank lines dropped. Each comes with the number of its first line.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if raw.starts_with(char::is_whitespace)
            && let Some((_, last)) = out.last_mut()
        {
            last.push(' ');
            last.push_str(trimmed);
            continue;
        }
        out.push((i + 1, trimmed.to_string()));
    }
    out
}

/// `!/pat\/tern/i  REPLACE x` → `REPLACE x`: the delimiter is the first character.
fn after_pattern(entry: &str) -> Option<&str> {
    let body = entry.strip_prefix('!').unwrap_or(entry);
    let mut chars = body.char_indices();
    let (_, delimiter) = chars.next()?;
    let mut escaped = false;
    let end = chars.find_map(|(i, c)| {
        let close = c == delimiter && !escaped;
        escaped = c == '\\' && !escaped;
        close.then_some(i)
    })?;
    let rest = &body[end + delimiter.len_utf8()..];
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_alphabetic());
    Some(rest.trim())
}

/// `inline:{ key=result, { key = result with, commas } }`.
fn inline(name: &str) -> Table {
    let rules = split_list(unbrace(name))
        .into_iter()
        .filter_map(|item| {
            let item = unbrace(&item).to_string();
            item.split_once('=').map(|(_, r)| Rule {
                file: PathBuf::from(format!("inline:{name}")),
                line: 1,
                result: r.trim().to_string(),
            })
        })
        .collect();
    Table::Rules(rules)
}

fn unbrace(text: &str) -> &str {
    let t = text.trim();
    t.strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .map_or(t, str::trim)
}

/// Splits on commas and white space, keeping `{ … }` groups (which may contain both) whole.
fn split_list(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut depth = 0usize;
    for c in text.chars() {
        match c {
            '{' => {
                depth += 1;
                current.push(c);
            }
            '}' => {
                depth = depth.saturating_sub(1);
                current.push(c);
            }
            c if depth == 0 && (c == ',' || c.is_whitespace()) => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mta_check::host::FakeHost;

    fn results(table: &Table) -> Vec<(usize, &str)> {
        match table {
            Table::Rules(r) => r.iter().map(|r| (r.line, r.result.as_str())).collect(),
            Table::Unreadable { why, .. } => panic!("unreadable: {why}"),
        }
    }

    #[test]
    fn regexp_rules_with_comments_continuations_and_blocks() {
        let host = FakeHost::with_files(&[(
            "/etc/postfix/smtp_header_checks",
            "# strip internal hops\n\
             /^Received:.*internal/   IGNORE\n\
             \n\
             if /^Subject:/\n\
             !/^Subject: \\/ok/i  REPLACE Subject: tagged\n\
             endif\n\
             /^X-Mailer:/  WARN\n\
             \tcontinued text\n\
             #/^From:/ IGNORE\n",
        )]);
        let tables = read_all("regexp:/etc/postfix/smtp_header_checks", &host);
        assert_eq!(
            results(&tables[0]),
            [
                (2, "IGNORE"),
                (5, "REPLACE Subject: tagged"),
                (7, "WARN continued text")
            ]
        );
        assert!(modifies_message("ignore"));
        assert!(modifies_message("REPLACE Subject: x"));
        assert!(!modifies_message("WARN continued text"));
        assert!(!modifies_message("DUNNO"));
    }

    #[test]
    fn keyed_inline_static_and_unreadable_tables() {
        let host = FakeHost::with_files(&[(
            "/etc/postfix/milter_map",
            "192.0.2.0/24  DISABLE\n10.0.0.0/8 inet:127.0.0.1:8891, unix:x.sock\n",
        )]);
        let tables = read_all(
            "cidr:/etc/postfix/milter_map, inline:{ { a = REPLACE x }, { b = WARN y, z } } static:{DUNNO}",
            &host,
        );
        assert_eq!(tables.len(), 3);
        assert_eq!(
            results(&tables[0]),
            [(1, "DISABLE"), (2, "inet:127.0.0.1:8891, unix:x.sock")]
        );
        assert_eq!(results(&tables[1]), [(1, "REPLACE x"), (1, "WARN y, z")]);
        assert_eq!(results(&tables[2]), [(1, "DUNNO")]);
        for spec in ["mysql:/etc/postfix/my.cf", "pcre:/missing", "nonsense"] {
            assert!(
                matches!(read_all(spec, &host)[0], Table::Unreadable { .. }),
                "{spec}"
            );
        }
        // proxy: is a way to reach the same table.
        assert_eq!(
            results(&read_all("proxy:cidr:/etc/postfix/milter_map", &host)[0]).len(),
            2
        );
    }
}
