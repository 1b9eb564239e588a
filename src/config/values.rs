//! Small value types of the config file, each parsed from its TOML spelling.

use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// Signature algorithm. KumoMTA spells RSA as `sha256`; the full names are accepted too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
pub enum Algo {
    #[serde(rename = "sha256", alias = "rsa-sha256", alias = "rsa")]
    RsaSha256,
    #[serde(rename = "ed25519", alias = "ed25519-sha256")]
    Ed25519Sha256,
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

/// Canonicalization (RFC 6376 §3.4). KumoMTA writes `Relaxed`/`Simple`; lowercase is accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
pub enum Canon {
    #[serde(alias = "relaxed")]
    Relaxed,
    #[serde(alias = "simple")]
    Simple,
}

/// What happens to a message whose signature cannot be made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
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

impl fmt::Display for OnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When an additional `[signature."…"]` applies (KumoMTA's `policy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
pub enum SignaturePolicy {
    /// On every message that may be signed.
    #[default]
    Always,
    /// Only when no `[domain."…"]` entry matched the author domain: a fallback signature.
    OnlyIfMissingDomainBlock,
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
        let text = String::deserialize(d)?;
        match u32::from_str_radix(text.trim_start_matches("0o"), 8) {
            Ok(mode) if mode <= 0o777 => Ok(SocketMode(mode)),
            _ => Err(serde::de::Error::custom(format!(
                "socket_mode must be octal permissions such as \"0660\", not \"{text}\""
            ))),
        }
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
