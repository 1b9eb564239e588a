//! Documentation that is tested: every TOML example in the Markdown files (README.md, docs/,
//! …), in the man page `packaging/signet-milter.toml.5` and in `etc/` loads as a configuration,
//! and the reference configuration passes `check`.
//!
//! How an example is completed — write examples so that these rules suffice:
//!
//! - A ` ```toml ` block is a configuration file.
//! - A block whose first line is `# in [TABLE]` (e.g. `# in [domain."example.com"]`) is part of
//!   that table: that line becomes the table's header.
//! - A block without a `[base]` table gets `[base] selector = "s1"`, so that `[domain]` and
//!   `[signature]` examples need not repeat a selector.
//! - A `login_map = "PATH"` (read when the configuration loads) reads an empty map file
//!   instead of PATH.
//! - A callback (`event_name = "N"`) or a signature (`additional_signatures = ["N"]`) that the
//!   block names but does not define is added, as a placeholder.
//! - A fenced block in another language that reads as a signet-milter configuration fails this
//!   test: tag it ` ```toml ` so that it is checked.
//! - In `etc/signet-milter.toml`, every commented setting (`# name = value`) loads when it is
//!   uncommented under its section (commented or not), with the rules above and the settings it
//!   cannot be without ([`companions`]).

use signet_milter::config::{Config, ConfigError};
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Top-level tables of the configuration file: a block with one of them is a configuration.
const SECTIONS: &[&str] = &[
    "milter",
    "keys",
    "cache",
    "log",
    "metrics",
    "vault",
    "pkcs11",
    "callbacks",
    "base",
    "domain",
    "signature",
];

/// One example: where it is and its text.
struct Example {
    file: String,
    /// The line of the example's first line in `file`.
    line: usize,
    text: String,
    /// Whether the example's lines are lines of `file` from `line` on (so that an error can
    /// name the file's line), rather than put together from it.
    verbatim: bool,
}

impl Example {
    fn verbatim(file: String, line: usize, text: String) -> Self {
        Example {
            file,
            line,
            text,
            verbatim: true,
        }
    }
}

fn markdown_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in [PathBuf::from(ROOT), Path::new(ROOT).join("docs")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn relative(path: &Path) -> String {
    path.strip_prefix(ROOT)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The fenced blocks of a Markdown file: `(info string, first line number, text)`.
fn fenced_blocks(path: &Path) -> Vec<(String, usize, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut blocks = Vec::new();
    let mut open: Option<(String, usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut open, fence) {
            (None, Some(info)) => open = Some((info.trim().to_string(), i + 2, String::new())),
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (Some((_, _, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(
        open.is_none(),
        "{}: a fenced block is not closed",
        relative(path)
    );
    blocks
}

/// Whether `text` parses as TOML with a configuration section in it.
fn reads_as_configuration(text: &str) -> bool {
    text.parse::<toml::Table>()
        .is_ok_and(|t| t.keys().any(|k| SECTIONS.contains(&k.as_str())))
}

/// The `.EX` … `.EE` blocks of a man page that start with a table header.
fn man_page_examples(path: &Path) -> Vec<Example> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    let mut open: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        match (&mut open, line.trim()) {
            (None, ".EX") => open = Some((i + 2, String::new())),
            (Some(_), ".EE") => {
                let (line, body) = open.take().unwrap();
                if body.trim_start().starts_with('[') {
                    out.push(Example::verbatim(relative(path), line, body));
                }
            }
            (Some((_, body)), _) => {
                body.push_str(&line.replace("\\e", "\\").replace("\\-", "-"));
                body.push('\n');
            }
            (None, _) => {}
        }
    }
    out
}

/// Every string value of a key named `key`, anywhere in the table.
fn strings_named(value: &toml::Value, key: &str, out: &mut Vec<String>) {
    match value {
        toml::Value::Table(table) => {
            for (k, v) in table {
                match v {
                    toml::Value::String(s) if k == key => out.push(s.clone()),
                    toml::Value::Array(items) if k == key => {
                        out.extend(items.iter().filter_map(|i| i.as_str().map(str::to_string)))
                    }
                    _ => strings_named(v, key, out),
                }
            }
        }
        toml::Value::Array(items) => items.iter().for_each(|i| strings_named(i, key, out)),
        _ => {}
    }
}

/// The example with the completions of the module documentation. Lines keep their numbers:
/// a `# in [TABLE]` line becomes the header, everything else is appended.
fn complete(text: &str) -> String {
    let text = with_files_it_reads(text);
    let mut text = match text.split_once('\n') {
        Some((first, rest)) if first.trim_start().starts_with("# in [") => {
            let header = first.trim_start().trim_start_matches("# in ").trim_end();
            let header = header.strip_suffix(':').unwrap_or(header);
            format!("{header}\n{rest}")
        }
        _ => text.to_string(),
    };
    let Ok(table) = text.parse::<toml::Table>() else {
        return text; // the loader reports the syntax error, at its line
    };
    let defined = |section: &str| -> Vec<String> {
        table
            .get(section)
            .and_then(toml::Value::as_table)
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    };
    let value = toml::Value::Table(table.clone());
    let mut extra = String::new();
    if !table.contains_key("base") {
        extra.push_str("[base]\nselector = \"s1\"\n");
    }
    let mut callbacks = Vec::new();
    strings_named(&value, "event_name", &mut callbacks);
    let known = defined("callbacks");
    for name in callbacks.iter().filter(|n| !known.contains(n)) {
        extra.push_str(&format!(
            "[callbacks.\"{name}\"]\ncommand = [\"/bin/false\"]\n"
        ));
    }
    let mut signatures = Vec::new();
    strings_named(&value, "additional_signatures", &mut signatures);
    signatures.sort();
    signatures.dedup();
    let known = defined("signature");
    for name in signatures.iter().filter(|n| !known.contains(n)) {
        extra.push_str(&format!(
            "[signature.\"{name}\"]\ndomain = \"signature.example\"\nselector = \"s1\"\n"
        ));
    }
    if !extra.is_empty() {
        text.push_str("\n# completed by tests/doc_examples.rs:\n");
        text.push_str(&extra);
    }
    text
}

/// The problem with loading `example`, if any: `file:line:column: reason` and the text as
/// loaded.
/// `login_map = "PATH"` is read at load (a Postfix login map, which the docs name by its
/// usual path): PATH becomes an empty map file of the test's.
fn with_files_it_reads(text: &str) -> String {
    static MAP: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let map = MAP.get_or_init(|| {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("doc-examples-login-map");
        std::fs::write(&path, "# empty\n").unwrap();
        path
    });
    text.lines()
        .map(|line| match line.trim_start().strip_prefix("login_map") {
            Some(rest) if rest.trim_start().starts_with('=') => {
                let indent = &line[..line.len() - line.trim_start().len()];
                let comment = line.find(" #").map_or("", |i| &line[i..]);
                format!("{indent}login_map = \"{}\"{comment}\n", map.display())
            }
            _ => format!("{line}\n"),
        })
        .collect()
}

fn load(example: &Example) -> Option<String> {
    let completed = complete(&example.text);
    let error = Config::parse(&completed, Path::new(&example.file)).err()?;
    let at = match &error {
        ConfigError::Invalid { location, message } if example.verbatim => format!(
            "{}:{}:{}: {message}",
            example.file,
            example.line + location.line - 1,
            location.column
        ),
        ConfigError::Invalid { message, .. } => {
            format!("{}:{}: {message}", example.file, example.line)
        }
        other => format!("{}:{}: {other}", example.file, example.line),
    };
    Some(format!("{at}\n--- as loaded:\n{completed}---"))
}

#[test]
fn every_toml_example_in_the_docs_loads() {
    let mut examples = Vec::new();
    let mut untagged = Vec::new();
    for path in markdown_files() {
        for (info, line, text) in fenced_blocks(&path) {
            if info.split_whitespace().next() == Some("toml") {
                examples.push(Example::verbatim(relative(&path), line, text));
            } else if reads_as_configuration(&text) {
                untagged.push(format!(
                    "{}:{line}: tag this block ```toml",
                    relative(&path)
                ));
            }
        }
    }
    examples.extend(man_page_examples(
        &Path::new(ROOT).join("packaging/signet-milter.toml.5"),
    ));
    for name in ["etc/signet-milter.toml", "etc/demo.toml"] {
        let text = std::fs::read_to_string(Path::new(ROOT).join(name)).unwrap();
        examples.push(Example::verbatim(name.to_string(), 1, text));
    }
    assert!(
        examples.len() >= 9,
        "the examples were found: {}",
        examples.len()
    );
    let problems: Vec<String> = examples.iter().filter_map(load).chain(untagged).collect();
    assert!(problems.is_empty(), "\n{}", problems.join("\n\n"));
}

/// One commented setting of the reference file: its line, its section header, and the setting
/// (continuation lines of a multi-line value joined).
struct Commented {
    line: usize,
    header: String,
    setting: String,
}

fn commented_settings(text: &str) -> Vec<Commented> {
    let lines: Vec<&str> = text.lines().collect();
    let header_of = |line: &str| {
        let line = line.strip_prefix("# ").unwrap_or(line);
        let header = line.split(" #").next().unwrap_or(line).trim();
        (header.starts_with('[') && header.ends_with(']')).then(|| header.to_string())
    };
    let mut header = String::new();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if let Some(h) = header_of(lines[i]) {
            header = h;
        } else if let Some(rest) = lines[i].strip_prefix("# ")
            && is_setting(rest)
        {
            let mut setting = rest.to_string();
            let mut next = i + 1;
            while setting.parse::<toml::Table>().is_err() && next < lines.len() {
                let Some(more) = lines[next].strip_prefix('#') else {
                    break;
                };
                setting.push('\n');
                setting.push_str(more);
                next += 1;
            }
            out.push(Commented {
                line: i + 1,
                header: header.clone(),
                setting,
            });
            i = next;
            continue;
        }
        i += 1;
    }
    out
}

/// `name = value`: a lowercase name, then " = ".
fn is_setting(line: &str) -> bool {
    line.split_once(" = ").is_some_and(|(name, _)| {
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    })
}

/// What a commented setting cannot be loaded without, as the reference file explains.
fn companions(header: &str, setting: &str) -> String {
    let name = setting.split(" = ").next().unwrap_or_default();
    let mut extra = match name {
        "role_id" => "secret_id_file = \"/etc/signet-milter/vault-secret-id\"\n",
        "secret_id_file" => "role_id = \"r\"\n",
        "approle_mount" => {
            "role_id = \"r\"\nsecret_id_file = \"/etc/signet-milter/vault-secret-id\"\n"
        }
        "sqlite" => "query = \"select data from keys where domain = ?1\"\n",
        "query" => "sqlite = \"/etc/signet-milter/keys.db\"\n",
        "vault_path_prefix" => "vault_mount = \"secret\"\n",
        _ => "",
    }
    .to_string();
    if header.starts_with("[callbacks.") && name == "timeout" {
        extra.push_str("command = [\"/bin/false\"]\n");
    }
    if header == "[rotation.dns_update]" {
        for (needed, value) in [
            ("server", "\"192.0.2.53\""),
            ("tsig_key_file", "\"/etc/signet-milter/dkim-update.key\""),
        ] {
            if name != needed {
                extra.push_str(&format!("{needed} = {value}\n"));
            }
        }
    }
    if header == "[rotation]" && name != "domains" && name != "signatures" {
        extra.push_str("domains = [\"example.com\"]\n");
    }
    if header.starts_with("[signature.") && name != "domain" {
        extra.push_str("domain = \"signature.example\"\n");
    }
    extra
}

/// The tables a setting refers to, after it: a `[rotation]` setting rotates an entry whose key
/// has a place per selector (in Vault when the state is in Vault).
fn companion_tables(header: &str, setting: &str) -> String {
    let name = setting.split(" = ").next().unwrap_or_default();
    let key = if name == "state_vault" {
        "key = { vault_mount = \"secret\", vault_path = \"dkim/{domain}/{selector}\" }\n"
    } else {
        "filename = \"/var/lib/signet-milter/keys/{domain}/{selector}.key\"\n"
    };
    match (header, name) {
        ("[rotation]", "signatures") => {
            format!("[signature.\"esp\"]\ndomain = \"esp.example\"\nselector = \"esp1\"\n{key}")
        }
        ("[rotation]", _) => format!("[domain.\"example.com\"]\nselector = \"s1\"\n{key}"),
        ("[rotation.dns_update]", _) => format!(
            "[rotation]\ndomains = [\"example.com\"]\n[domain.\"example.com\"]\nselector = \"s1\"\n{key}"
        ),
        _ => String::new(),
    }
}

#[test]
fn every_commented_setting_of_the_reference_configuration_loads() {
    let path = Path::new(ROOT).join("etc/signet-milter.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let settings = commented_settings(&text);
    assert!(settings.len() >= 30, "found {}", settings.len());
    for kv in [
        "kv_version = 2",
        "token_file = ",
        "over_sign = true",
        "sqlite = ",
    ] {
        assert!(
            settings.iter().any(|s| s.setting.starts_with(kv)),
            "{kv} is among the commented settings"
        );
    }
    let problems: Vec<String> = settings
        .iter()
        .filter_map(|s| {
            let example = Example {
                file: "etc/signet-milter.toml".into(),
                line: s.line,
                text: format!(
                    "{}\n{}{}\n{}",
                    s.header,
                    companions(&s.header, &s.setting),
                    s.setting,
                    companion_tables(&s.header, &s.setting)
                ),
                verbatim: false,
            };
            load(&example)
        })
        .collect();
    assert!(problems.is_empty(), "\n{}", problems.join("\n\n"));
}

/// The packaged configuration passes `check` as installed (only the socket moved into a temp
/// dir): it signs nothing, and says so.
#[test]
fn the_reference_configuration_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(Path::new(ROOT).join("etc/signet-milter.toml")).unwrap();
    let listen = "listen = \"unix:/run/signet-milter/signet-milter.sock\"";
    assert!(text.contains(listen));
    let socket = dir.path().join("signet-milter.sock");
    let config = dir.path().join("signet-milter.toml");
    std::fs::write(
        &config,
        text.replace(listen, &format!("listen = \"unix:{}\"", socket.display())),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_signet-milter"))
        .args(["check", "-c", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("configuration ok"), "{stdout}");
    assert!(stdout.contains("nothing will be signed"), "{stdout}");
}

/// The completion rules themselves: a fragment loads only with them, and they do not hide a
/// mistake in it.
#[test]
fn fragments_are_completed_as_documented() {
    let fragment = Example::verbatim(
        "fragment.md".into(),
        10,
        "# in [domain.\"example.com\"]\nadditional_signatures = [\"ed\"]\n\
         key = { event_name = \"lookup\", event_args = [\"{domain}\"] }\n"
            .into(),
    );
    assert!(
        Config::parse(&fragment.text, Path::new("raw")).is_err(),
        "bare keys do not load by themselves"
    );
    assert_eq!(load(&fragment), None);
    let wrong = Example::verbatim(
        "fragment.md".into(),
        10,
        "# in [domain.\"example.com\"]\nover_sing = true\n".into(),
    );
    let problem = load(&wrong).expect("a typo is still refused");
    assert!(
        problem.starts_with("fragment.md:11:1: unknown field `over_sing`"),
        "{problem}"
    );
}
