//! Small value types of the config file, each parsed from its TOML spelling.

use ipnet::IpNet;
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// Signature algorithm. KumoMTA spells RSA as `sha256`; the full names are accepted too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algo {
    RsaSha256,
    Ed25519Sha256,
}

impl<'de> Deserialize<'de> for Algo {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        keyword(
            d,
            "an algorithm",
            &[
                ("sha256", Algo::RsaSha256),
                ("rsa-sha256", Algo::RsaSha256),
                ("rsa", Algo::RsaSha256),
                ("ed25519", Algo::Ed25519Sha256),
                ("ed25519-sha256", Algo::Ed25519Sha256),
            ],
        )
    }
}

impl Algo {
    pub fn dkim_name(self) -> &'static str {
        match self {
            Algo::RsaSha256 => "rsa-sha256",
            Algo::Ed25519Sha256 => "ed25519-sha256",
        }
    }
}

impl fmt::Display for Algo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dkim_name())
    }
}

/// Canonicalization (RFC 6376 §3.4). KumoMTA writes `Relaxed`/`Simple`; any case is accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Canon {
    Relaxed,
    Simple,
}

impl<'de> Deserialize<'de> for Canon {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        keyword(
            d,
            "a canonicalization",
            &[("Relaxed", Canon::Relaxed), ("Simple", Canon::Simple)],
        )
    }
}

/// What happens to a message whose signature cannot be made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OnError {
    /// Deliver it unsigned (logged as such).
    Accept,
    /// Ask the client to retry later (4xx); the default, so nothing leaves unsigned by accident.
    #[default]
    Tempfail,
    /// Refuse it (5xx).
    Reject,
}

impl OnError {
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::Accept => "accept",
            OnError::Tempfail => "tempfail",
            OnError::Reject => "reject",
        }
    }
}

impl<'de> Deserialize<'de> for OnError {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        keyword(
            d,
            "an on_error action",
            &[
                ("tempfail", OnError::Tempfail),
                ("accept", OnError::Accept),
                ("reject", OnError::Reject),
            ],
        )
    }
}

impl fmt::Display for OnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When an additional `[signature."…"]` applies (KumoMTA's `policy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SignaturePolicy {
    /// On every message that may be signed.
    #[default]
    Always,
    /// Only when no `[domain."…"]` entry matched the author domain: a fallback signature.
    OnlyIfMissingDomainBlock,
}

impl<'de> Deserialize<'de> for SignaturePolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        keyword(
            d,
            "a signature policy",
            &[
                ("Always", SignaturePolicy::Always),
                (
                    "OnlyIfMissingDomainBlock",
                    SignaturePolicy::OnlyIfMissingDomainBlock,
                ),
            ],
        )
    }
}

/// A setting spelled as one of a few words (any case). A value that is none of them is refused
/// with the value and every accepted word, so a typo stops the load with its fix rather than
/// meaning something else.
pub(crate) fn keyword<'de, D, T>(
    deserializer: D,
    what: &'static str,
    words: &'static [(&'static str, T)],
) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Copy + 'static,
{
    struct Words<T: 'static> {
        what: &'static str,
        words: &'static [(&'static str, T)],
    }

    impl<T: Copy> serde::de::Visitor<'_> for Words<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{}: {}", self.what, one_of(self.words))
        }
        fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<T, E> {
            self.words
                .iter()
                .find(|(word, _)| word.eq_ignore_ascii_case(value.trim()))
                .map(|(_, v)| *v)
                .ok_or_else(|| {
                    E::custom(format!(
                        "\"{value}\" is not {}: write {}",
                        self.what,
                        one_of(self.words)
                    ))
                })
        }
    }

    deserializer.deserialize_str(Words { what, words })
}

/// `"a", "b" or "c"`.
fn one_of<T>(words: &[(&str, T)]) -> String {
    let quoted: Vec<String> = words.iter().map(|(w, _)| format!("\"{w}\"")).collect();
    match quoted.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// `[log] level`: a level, or a tracing filter whose every directive ends in a level. A bare
/// word that is not a level (`"verbose"`) would otherwise be read as a filter for a module of
/// that name, and the milter would log nothing at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLevel(String);

/// The levels, quietest last.
const LOG_LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace", "off"];

impl LogLevel {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bad = || {
            format!(
                "\"{text}\" is not a log level: write \"error\", \"warn\", \"info\", \"debug\", \"trace\" or \"off\", or a filter such as \"info,signet_milter=debug\""
            )
        };
        if text.is_empty() {
            return Err(bad());
        }
        for directive in text.split(',') {
            let level = match directive.rsplit_once('=') {
                Some((target, level)) if !target.trim().is_empty() => level,
                Some(_) => return Err(bad()),
                None => directive,
            };
            if !LOG_LEVELS
                .iter()
                .any(|l| l.eq_ignore_ascii_case(level.trim()))
            {
                return Err(bad());
            }
        }
        tracing_subscriber::EnvFilter::try_new(text).map_err(|e| format!("{}: {e}", bad()))?;
        Ok(LogLevel(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for LogLevel {
    fn default() -> Self {
        LogLevel("info".into())
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        LogLevel::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A network in `trusted_networks`: `"192.0.2.0/24"`, `"2001:db8::/32"`, or one address.
/// Refused with the value and the form to write.
pub(crate) fn networks<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    struct Network(IpNet);

    impl<'de> Deserialize<'de> for Network {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let text = String::deserialize(d)?;
            let trimmed = text.trim();
            trimmed
                .parse::<IpNet>()
                .or_else(|_| trimmed.parse::<std::net::IpAddr>().map(IpNet::from))
                .map(Network)
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "\"{text}\" is not a network: write an address and prefix length such as \"192.0.2.0/24\" or \"2001:db8::/32\", or a single address"
                    ))
                })
        }
    }

    Ok(Vec::<Network>::deserialize(d)?
        .into_iter()
        .map(|n| n.0)
        .collect())
}

/// `unix:/path` or `inet:host:port` (IPv6 as `inet:[::1]:8891`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    Inet(SocketAddr),
}

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:").or_else(|| s.strip_prefix("local:")) {
            if !path.starts_with('/') {
                return Err(format!("unix socket path must be absolute: \"{path}\""));
            }
            Ok(ListenAddr::Unix(path.into()))
        } else if let Some(addr) = s.strip_prefix("inet:").or_else(|| s.strip_prefix("inet6:")) {
            addr.parse().map(ListenAddr::Inet).map_err(|_| {
                format!(
                    "invalid inet address \"{addr}\" (write inet:127.0.0.1:8891 or inet:[::1]:8891)"
                )
            })
        } else {
            Err(format!(
                "invalid listen address \"{s}\" (write unix:/run/signet-milter/signet-milter.sock or inet:127.0.0.1:8891)"
            ))
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenAddr::Inet(a) => write!(f, "inet:{a}"),
        }
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Octal permission bits of the unix socket, written as a string: `"0660"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketMode(pub u32);

impl Default for SocketMode {
    fn default() -> Self {
        SocketMode(0o660)
    }
}

impl<'de> Deserialize<'de> for SocketMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Octal;

        impl serde::de::Visitor<'_> for Octal {
            type Value = SocketMode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("octal permissions in quotes, such as \"0660\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<SocketMode, E> {
                match u32::from_str_radix(text.trim().trim_start_matches("0o"), 8) {
                    Ok(mode) if mode <= 0o777 => Ok(SocketMode(mode)),
                    _ => Err(E::custom(format!(
                        "socket_mode must be octal permissions such as \"0660\", not \"{text}\""
                    ))),
                }
            }
            // A bare number is ambiguous (TOML reads 660 as decimal): ask for the quoted form.
            fn visit_i64<E: serde::de::Error>(self, number: i64) -> Result<SocketMode, E> {
                Err(E::custom(format!(
                    "socket_mode must be octal permissions in quotes, such as socket_mode = \"0660\", not the number {number}"
                )))
            }
        }

        d.deserialize_any(Octal)
    }
}

/// Vault addresses are checked here because the Vault client panics on a URL it cannot parse:
/// with the same URL parser it uses, so that what passes here cannot panic there.
pub fn validate_http_url(address: &str) -> Result<(), String> {
    let shown: String = address.escape_debug().collect();
    if address.contains(char::is_control) {
        return Err(format!("\"{shown}\" contains a control character"));
    }
    if !(address.starts_with("https://") || address.starts_with("http://")) {
        return Err(format!("\"{shown}\" must start with https:// or http://"));
    }
    let url = url::Url::parse(address).map_err(|e| format!("\"{shown}\" is not a URL: {e}"))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("\"{shown}\" has no valid host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            "unix:/run/x.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/run/x.sock".into())
        );
        assert_eq!(
            "inet:127.0.0.1:8891".parse::<ListenAddr>().unwrap(),
            ListenAddr::Inet("127.0.0.1:8891".parse().unwrap())
        );
        assert!(
            matches!("inet:[::1]:8891".parse::<ListenAddr>().unwrap(), ListenAddr::Inet(a) if a.is_ipv6())
        );
        for bad in [
            "unix:relative.sock",
            "inet:localhost",
            "tcp:1.2.3.4:5",
            "/run/x.sock",
        ] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn vault_urls() {
        assert!(validate_http_url("https://vault.internal:8200").is_ok());
        assert!(validate_http_url("http://127.0.0.1:8200/").is_ok());
        for bad in [
            "vault:8200",
            "https://",
            "ftp://x",
            "http://[::1",
            "http://a b",
            "http://x:99999",
            "http://\u{7}host",
            "http://vault\r\n:8200",
        ] {
            assert!(validate_http_url(bad).is_err(), "{bad}");
        }
    }
}
