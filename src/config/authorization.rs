//! `[authorization]`: which author domains an SMTP-authenticated login may sign for.
//!
//! A hosting company or ESP signs for many customers through one submission service; without
//! this, any customer with a password could sign as any other. The grants come from the
//! login's own domain (the default), from `[authorization.logins]`, from a file in Postfix's
//! `smtpd_sender_login_maps` format, and from a `[callbacks]` section asked per message.

use super::values::OnError;
use super::{ConfigError, normalize_domain};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// How a login earns the right to sign for a domain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum AuthorizationMode {
    /// `local@domain` may sign for `domain`; anything else only what a map grants.
    #[default]
    #[serde(rename = "own-domain")]
    OwnDomain,
    /// Only what a map grants.
    #[serde(rename = "map")]
    Map,
    /// Every login for every domain (OpenDKIM's behaviour): any customer can sign as any other.
    #[serde(rename = "any")]
    Any,
}

impl AuthorizationMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthorizationMode::OwnDomain => "own-domain",
            AuthorizationMode::Map => "map",
            AuthorizationMode::Any => "any",
        }
    }
}

/// `[authorization]`, validated.
#[derive(Debug)]
pub struct AuthorizationSettings {
    pub mode: AuthorizationMode,
    /// A grant of `example.com` (own domain or map) also covers `mail.example.com`.
    pub subdomains: bool,
    /// The domain of logins without `@domain`, for the own-domain rule (Postfix's
    /// `smtpd_sasl_local_domain`); `None`: such logins have no own domain.
    pub bare_login_domain: Option<String>,
    /// What happens to a message the login may not sign for (`accept`: without those
    /// signatures).
    pub on_unauthorized: OnError,
    /// Every grant of `[authorization.logins]` and `login_map`.
    pub grants: Grants,
    /// `login_map`, for messages.
    pub login_map: Option<PathBuf>,
    /// A `[callbacks]` section asked when nothing else grants.
    pub callback: Option<AuthorizationCallback>,
    /// How long a callback's answer is reused; zero: asked for every message.
    pub cache_ttl: Duration,
}

/// What a grant is for: an author address, every address of a domain, or anything.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// `billing@example.com` (lowercase, domain canonical).
    Address(String),
    /// `@example.com`.
    Domain(String),
    /// `*`: every domain (an operator's own account).
    Anything,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Address(a) => f.write_str(a),
            Target::Domain(d) => write!(f, "@{d}"),
            Target::Anything => f.write_str("*"),
        }
    }
}

/// The logins each target is granted to, with where each grant was written.
#[derive(Debug, Default)]
pub struct Grants {
    by_target: HashMap<Target, Vec<Grantee>>,
}

/// One login a target is granted to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grantee {
    /// The login, normalized with [`login_key`].
    pub login: String,
    /// Where the grant is written, for `explain` and the log.
    pub origin: GrantOrigin,
}

/// Where a grant is written: a file and line, or a TOML table. The name is shared by every
/// grant of one file, so a map of 100,000 lines holds it once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantOrigin {
    source: std::sync::Arc<str>,
    line: Option<usize>,
}

impl fmt::Display for GrantOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}", self.source),
            None => f.write_str(&self.source),
        }
    }
}

impl Grants {
    fn add(&mut self, target: Target, login: &str, origin: GrantOrigin) {
        self.by_target.entry(target).or_default().push(Grantee {
            login: login_key(login),
            origin,
        });
    }

    /// The grant of `target` to the login `key` (from [`login_key`]), if there is one.
    pub fn find(&self, target: &Target, key: &str) -> Option<&Grantee> {
        self.by_target.get(target)?.iter().find(|g| g.login == key)
    }

    pub fn is_empty(&self) -> bool {
        self.by_target.is_empty()
    }

    /// How many (target, login) grants there are.
    pub fn len(&self) -> usize {
        self.by_target.values().map(Vec::len).sum()
    }
}

/// A login as it is compared: lowercase (SASL logins are compared case-insensitively, as
/// Postfix does with `smtpd_sender_login_maps`), its domain in canonical form.
pub fn login_key(login: &str) -> String {
    login_parts(login).0
}

/// [`login_key`], and the canonical domain of a login of the form `local@domain`.
pub fn login_parts(login: &str) -> (String, Option<String>) {
    let lower = login.trim().to_lowercase();
    match lower.rsplit_once('@') {
        Some((local, domain)) => match normalize_domain(domain) {
            Ok(domain) => (format!("{local}@{domain}"), Some(domain)),
            Err(_) => (lower, None),
        },
        None => (lower, None),
    }
}

/// `callback = { event_name = "…", event_args = ["{login}", "{domain}"] }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizationCallback {
    /// A `[callbacks."NAME"]` section (a command or a SQLite query).
    pub name: String,
    pub args: Vec<CallbackArg>,
}

/// One argument of an authorization callback: a literal or one value of the question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallbackArg {
    Literal(String),
    /// `{login}`: the SMTP AUTH login as the MTA reported it.
    Login,
    /// `{address}`: the author address (lowercase, domain canonical; `@domain` when the
    /// question is about a domain without one address).
    Address,
    /// `{domain}`: the domain to sign for, canonical (A-labels).
    Domain,
}

impl CallbackArg {
    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "{login}" => Ok(CallbackArg::Login),
            "{address}" => Ok(CallbackArg::Address),
            "{domain}" => Ok(CallbackArg::Domain),
            literal if !literal.contains(['{', '}']) => Ok(CallbackArg::Literal(literal.into())),
            other => Err(format!(
                "event_args \"{other}\": an argument is a literal or exactly one of {{login}}, {{address}}, {{domain}}"
            )),
        }
    }
}

/// `[authorization]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuthorization {
    mode: Option<AuthorizationMode>,
    subdomains: Option<bool>,
    bare_login_domain: Option<Spanned<String>>,
    on_unauthorized: Option<OnError>,
    login_map: Option<Spanned<PathBuf>>,
    callback: Option<Spanned<RawCallback>>,
    #[serde(default, with = "super::humantime_serde_compat::option")]
    cache_ttl: Option<Duration>,
    #[serde(default)]
    logins: BTreeMap<String, Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCallback {
    event_name: String,
    #[serde(default)]
    event_args: Vec<Spanned<String>>,
}

/// Used when `[authorization]` sets no `cache_ttl`.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);

type At<'a> = &'a dyn Fn(Option<Range<usize>>, String) -> ConfigError;

/// Validates `[authorization]`, reading `login_map` (relative to the config file's directory).
/// `callbacks`: the `[callbacks]` sections, the only callbacks that can answer yes or no.
pub(super) fn build(
    raw: Option<Spanned<RawAuthorization>>,
    config_path: &Path,
    callbacks: &BTreeSet<String>,
    at: At<'_>,
) -> Result<AuthorizationSettings, ConfigError> {
    let section = raw.as_ref().map(Spanned::span);
    let raw = raw.map(Spanned::into_inner).unwrap_or_default();
    let bare_login_domain = raw
        .bare_login_domain
        .map(|d| {
            normalize_domain(d.get_ref()).map_err(|e| {
                at(
                    Some(d.span()),
                    format!("[authorization] bare_login_domain: {e}"),
                )
            })
        })
        .transpose()?;
    let mut grants = Grants::default();
    for (login, targets) in &raw.logins {
        if login.trim().is_empty() {
            return Err(at(
                Some(targets.span()),
                "[authorization.logins]: a login cannot be empty".into(),
            ));
        }
        for target in targets.get_ref() {
            let parsed = parse_login_target(target.get_ref()).map_err(|e| {
                at(
                    Some(target.span()),
                    format!("[authorization.logins] \"{login}\": {e}"),
                )
            })?;
            let origin = GrantOrigin {
                source: format!("[authorization.logins] \"{login}\"").into(),
                line: None,
            };
            grants.add(parsed, login, origin);
        }
    }
    let login_map = match &raw.login_map {
        Some(path) => {
            let resolved = relative_to(config_path, path.get_ref());
            read_login_map(&resolved, &mut grants).map_err(|e| match e {
                MapError::Read(reason) => at(
                    Some(path.span()),
                    format!(
                        "[authorization] login_map: cannot read {}: {reason}",
                        resolved.display()
                    ),
                ),
                MapError::Invalid(e) => e,
            })?;
            Some(resolved)
        }
        None => None,
    };
    let callback = raw
        .callback
        .map(|cb| {
            let span = cb.span();
            let cb = cb.into_inner();
            if !callbacks.contains(&cb.event_name) {
                return Err(at(
                    Some(span),
                    format!(
                        "[authorization] callback: event_name \"{}\" has no [callbacks.\"{}\"] section (a command or SQLite query; a program's registered key callbacks cannot answer this)",
                        cb.event_name, cb.event_name
                    ),
                ));
            }
            let args = cb
                .event_args
                .iter()
                .map(|a| {
                    CallbackArg::parse(a.get_ref())
                        .map_err(|e| at(Some(a.span()), format!("[authorization] callback {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(AuthorizationCallback {
                name: cb.event_name,
                args,
            })
        })
        .transpose()?;
    let mode = raw.mode.unwrap_or_default();
    if mode == AuthorizationMode::Map && grants.is_empty() && callback.is_none() {
        return Err(at(
            section,
            "[authorization] mode = \"map\" needs [authorization.logins], login_map or callback (else no login may sign for any domain)".into(),
        ));
    }
    Ok(AuthorizationSettings {
        mode,
        subdomains: raw.subdomains.unwrap_or(false),
        bare_login_domain,
        on_unauthorized: raw.on_unauthorized.unwrap_or(OnError::Accept),
        grants,
        login_map,
        callback,
        cache_ttl: raw.cache_ttl.unwrap_or(DEFAULT_CACHE_TTL),
    })
}

/// A target in `[authorization.logins]`: `example.com`, `@example.com`, `billing@example.com`
/// or `*`.
fn parse_login_target(text: &str) -> Result<Target, String> {
    if text.trim() == "*" {
        return Ok(Target::Anything);
    }
    let parsed = if text.contains('@') {
        parse_address_or_domain(text)
    } else {
        normalize_domain(text).map(Target::Domain)
    };
    parsed.map_err(|_| format!("\"{text}\" is not a domain, @domain, address or \"*\""))
}

/// `@example.com` or `local@example.com`, as in Postfix's map keys.
fn parse_address_or_domain(text: &str) -> Result<Target, String> {
    let (local, domain) = text
        .rsplit_once('@')
        .ok_or_else(|| format!("\"{text}\" is neither an address nor @domain"))?;
    let domain = normalize_domain(domain)?;
    if local.is_empty() {
        Ok(Target::Domain(domain))
    } else if local.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err(format!("\"{text}\" is not an address"))
    } else {
        Ok(Target::Address(format!(
            "{}@{domain}",
            local.to_lowercase()
        )))
    }
}

enum MapError {
    Read(String),
    Invalid(ConfigError),
}

/// Reads a file in Postfix's `smtpd_sender_login_maps` source format into `grants`:
///
/// ```text
/// # comment
/// @tenant-a.example        alice@tenant-a.example, ops
/// billing@tenant-b.example bob@tenant-b.example
///     carol                # a line starting with whitespace continues the one before
/// ```
///
/// The key is an author address or `@domain`; the value lists the logins that may use it,
/// separated by commas or whitespace. Errors point at `file:line:column`.
fn read_login_map(path: &Path, grants: &mut Grants) -> Result<(), MapError> {
    let text = std::fs::read_to_string(path).map_err(|e| MapError::Read(e.to_string()))?;
    let at = |offset: usize, message: String| {
        MapError::Invalid(ConfigError::located(
            path,
            &text,
            Some(offset..offset),
            message,
        ))
    };
    let source: std::sync::Arc<str> = path.display().to_string().into();
    for entry in logical_lines(&text) {
        let (key, key_offset) = entry.words[0];
        let target = parse_address_or_domain(key).map_err(|e| {
            at(
                key_offset,
                format!("{e} (a key is local@domain or @domain)"),
            )
        })?;
        let logins = &entry.words[1..];
        if logins.is_empty() {
            return Err(at(
                key_offset,
                format!("\"{key}\" has no logins (write: {key}  login, login)"),
            ));
        }
        for (login, _) in logins {
            let origin = GrantOrigin {
                source: source.clone(),
                line: Some(entry.line),
            };
            grants.add(target.clone(), login, origin);
        }
    }
    Ok(())
}

/// One logical line of a Postfix lookup table source: its first line number and its words
/// (split at whitespace and commas) with their byte offsets in the file.
struct LogicalLine<'a> {
    line: usize,
    words: Vec<(&'a str, usize)>,
}

fn logical_lines(text: &str) -> Vec<LogicalLine<'_>> {
    let mut out: Vec<LogicalLine<'_>> = Vec::new();
    let mut offset = 0;
    for (index, raw_line) in text.split_inclusive('\n').enumerate() {
        let start = offset;
        offset += raw_line.len();
        let line = raw_line.trim_end_matches(['\n', '\r']);
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let words = line
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|w| !w.is_empty())
            .map(|w| (w, start + (w.as_ptr() as usize - line.as_ptr() as usize)));
        let continues = line.starts_with([' ', '\t']);
        match out.last_mut() {
            Some(previous) if continues => previous.words.extend(words),
            _ => out.push(LogicalLine {
                line: index + 1,
                words: words.collect(),
            }),
        }
    }
    out
}

/// A relative `login_map` is relative to the directory of the configuration file.
fn relative_to(config_path: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_owned();
    }
    config_path
        .parent()
        .map_or_else(|| path.to_owned(), |dir| dir.join(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn load(dir: &Path, text: &str) -> Result<Config, ConfigError> {
        let path = dir.join("signet.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path)
    }

    #[test]
    fn defaults_are_the_safe_ones() {
        let c = Config::parse("", Path::new("t.toml")).unwrap();
        let a = &c.authorization;
        assert_eq!(a.mode, AuthorizationMode::OwnDomain);
        assert!(!a.subdomains);
        assert_eq!(a.bare_login_domain, None);
        assert_eq!(a.on_unauthorized, OnError::Accept);
        assert!(a.grants.is_empty());
        assert_eq!(a.cache_ttl, DEFAULT_CACHE_TTL);
    }

    #[test]
    fn toml_and_map_file_grants() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("logins"),
            "# Postfix smtpd_sender_login_maps\n\
             @Tenant-A.example   alice@tenant-a.example, OPS\n\
             billing@bücher.example\tbob@tenant-b.example\n\
             \tcarol\n\
             \n",
        )
        .unwrap();
        let c = load(
            dir.path(),
            r#"
            [authorization]
            login_map = "logins"
            [authorization.logins]
            "dave" = ["tenant-d.example", "@tenant-e.example", "x@tenant-f.example", "*"]
            "#,
        )
        .unwrap();
        let g = &c.authorization.grants;
        let domain = |d: &str| Target::Domain(d.into());
        let address = |a: &str| Target::Address(a.into());
        assert!(g.find(&domain("tenant-a.example"), "ops").is_some());
        assert!(
            g.find(&domain("tenant-a.example"), "alice@tenant-a.example")
                .is_some()
        );
        assert!(
            g.find(&domain("tenant-a.example"), "bob@tenant-b.example")
                .is_none()
        );
        let bob = g
            .find(
                &address("billing@xn--bcher-kva.example"),
                "bob@tenant-b.example",
            )
            .unwrap();
        assert!(
            bob.origin.to_string().ends_with("logins:3"),
            "{}",
            bob.origin
        );
        assert!(
            g.find(&address("billing@xn--bcher-kva.example"), "carol")
                .is_some(),
            "continuation line"
        );
        for target in [
            domain("tenant-d.example"),
            domain("tenant-e.example"),
            address("x@tenant-f.example"),
            Target::Anything,
        ] {
            assert!(g.find(&target, "dave").is_some(), "{target}");
        }
        assert_eq!(g.len(), 8);
    }

    #[test]
    fn bad_values_are_refused_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("bad-key"),
            "@ok.example alice\n\nnot-an-address bob\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("no-logins"), "# x\n  \n@ok.example\n").unwrap();
        let toml_cases: &[(&str, usize, &str)] = &[
            (
                "[authorization]\nmode = \"some\"\n",
                2,
                "unknown variant `some`",
            ),
            ("[authorization]\nsubdomains = \"yes\"\n", 2, "invalid type"),
            (
                "[authorization]\nbare_login_domain = \"a..b\"\n",
                2,
                "not a domain name",
            ),
            (
                "[authorization]\non_unauthorized = \"drop\"\n",
                2,
                "\"drop\" is not an on_error action",
            ),
            (
                "[authorization]\ncache_ttl = \"soon\"\n",
                2,
                "invalid duration",
            ),
            (
                "[authorization]\nunknown = 1\n",
                2,
                "unknown field `unknown`",
            ),
            (
                "[authorization]\n\n[authorization.logins]\nalice = [\"ok.example\", \"bad domain\"]\n",
                4,
                "\"bad domain\" is not a domain",
            ),
            (
                "[authorization]\nlogin_map = \"/nonexistent/map\"\n",
                2,
                "cannot read /nonexistent/map",
            ),
            (
                "[authorization]\ncallback = { event_name = \"nope\" }\n",
                2,
                "no [callbacks.\"nope\"] section",
            ),
            (
                "[callbacks.db]\nsqlite = \"/x.db\"\nquery = \"select 1\"\n[authorization]\ncallback = { event_name = \"db\", event_args = [\"{user}\"] }\n",
                5,
                "exactly one of {login}",
            ),
            (
                "[authorization]\nmode = \"map\"\n",
                1,
                "needs [authorization.logins], login_map or callback",
            ),
        ];
        for (text, line, reason) in toml_cases {
            let err = load(dir.path(), text).expect_err(text).to_string();
            let want = format!("{}:{line}:", dir.path().join("signet.toml").display());
            assert!(err.starts_with(&want), "wrong line for {text:?}: {err}");
            assert!(
                err.contains(reason),
                "{reason:?} missing for {text:?}: {err}"
            );
        }
        let map_cases: &[(&str, &str)] = &[
            (
                "bad-key",
                ":3:1: \"not-an-address\" is neither an address nor @domain",
            ),
            ("no-logins", ":3:1: \"@ok.example\" has no logins"),
        ];
        for (file, want) in map_cases {
            let text = format!("[authorization]\nlogin_map = \"{file}\"\n");
            let err = load(dir.path(), &text).expect_err(file).to_string();
            let path = dir.path().join(file);
            assert!(
                err.starts_with(&format!("{}{want}", path.display())),
                "{file}: {err}"
            );
        }
    }
}
