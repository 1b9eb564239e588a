//! The two questions asked of every message, as pure functions:
//! *may it be signed?* ([`may_sign`]) and *with which signatures?* ([`plan`]).

use crate::config::{
    MilterSettings, SignaturePolicy, SignerTemplate, SigningDomain, SigningTable, normalize_domain,
};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// Where the SMTP client is, as the MTA reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientAddr {
    Ip(IpAddr),
    /// The MTA reports no network client (e.g. Sendmail's local submission): treated as
    /// 127.0.0.1, since only local processes can submit that way.
    Local,
    Unknown,
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientAddr::Ip(ip) => write!(f, "{ip}"),
            ClientAddr::Local => f.write_str("local"),
            ClientAddr::Unknown => f.write_str("unknown"),
        }
    }
}

/// What the MTA told us about who sends the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub client: ClientAddr,
    /// `{auth_authen}`: the SASL login name.
    pub auth_user: Option<String>,
    /// `{auth_type}`: the SASL mechanism.
    pub auth_type: Option<String>,
    /// `{daemon_name}`: the MTA service that received the message.
    pub daemon_name: Option<String>,
}

/// Why a message may be signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    Authenticated(String),
    DaemonName(String),
    Network(IpAddr),
}

impl fmt::Display for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trust::Authenticated(user) => write!(f, "authenticated as {user}"),
            Trust::DaemonName(name) => write!(f, "daemon {name}"),
            Trust::Network(ip) => write!(f, "trusted client {ip}"),
        }
    }
}

/// May mail from `origin` be signed? Only for SMTP-authenticated senders (if enabled), listed
/// MTA services, and clients in the trusted networks: an open signer is a forgery service.
pub fn may_sign(settings: &MilterSettings, origin: &Origin) -> Option<Trust> {
    if settings.sign_authenticated {
        let present = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
        if present(&origin.auth_user) || present(&origin.auth_type) {
            let who = origin
                .auth_user
                .clone()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| {
                    format!("({})", origin.auth_type.as_deref().unwrap_or_default())
                });
            return Some(Trust::Authenticated(who));
        }
    }
    if let Some(daemon) = &origin.daemon_name
        && settings.trusted_daemon_names.iter().any(|d| d == daemon)
    {
        return Some(Trust::DaemonName(daemon.clone()));
    }
    let ip = match origin.client {
        ClientAddr::Ip(ip) => canonical_ip(ip),
        ClientAddr::Local => IpAddr::from([127, 0, 0, 1]),
        ClientAddr::Unknown => return None,
    };
    settings
        .trusted_networks
        .iter()
        .any(|net| net.contains(&ip))
        .then_some(Trust::Network(ip))
}

/// `::ffff:192.0.2.1` is the IPv4 client 192.0.2.1 (dual-stack listeners report it that way).
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Why a message has no author domain to sign for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoAuthor {
    #[error("the message has no From header")]
    Missing,
    #[error("the message has {0} From headers")]
    SeveralHeaders(usize),
    #[error("From names {0} mailboxes, not a single author")]
    SeveralMailboxes(usize),
    #[error("From cannot be parsed as an address")]
    Unparsable,
    #[error("the From address has no valid domain")]
    BadDomain,
}

/// The domain of the single author in the `From` header(s) given (values as the MTA sent them).
pub fn author_domain(from_values: &[&[u8]]) -> Result<String, NoAuthor> {
    let value = match from_values {
        [] => return Err(NoAuthor::Missing),
        [one] => one,
        several => return Err(NoAuthor::SeveralHeaders(several.len())),
    };
    let mut raw = Vec::with_capacity(value.len() + 10);
    raw.extend_from_slice(b"From:");
    raw.extend_from_slice(value);
    raw.extend_from_slice(b"\r\n\r\n");
    let message = mail_parser::MessageParser::default()
        .parse_headers(&raw)
        .ok_or(NoAuthor::Unparsable)?;
    let list = message.from().ok_or(NoAuthor::Unparsable)?;
    let addresses: Vec<&str> = list.mailboxes().filter_map(|m| m.address()).collect();
    let address = match addresses.as_slice() {
        [] => return Err(NoAuthor::Unparsable),
        [one] => *one,
        several => return Err(NoAuthor::SeveralMailboxes(several.len())),
    };
    let (_, domain) = address.rsplit_once('@').ok_or(NoAuthor::BadDomain)?;
    let domain = domain.trim_start_matches('[').trim_end_matches(']');
    normalize_domain(domain).map_err(|_| NoAuthor::BadDomain)
}

/// One signature to make: a template and the `d=` it signs as.
#[derive(Clone, Debug)]
pub struct PlannedSignature {
    pub template: Arc<SignerTemplate>,
    pub domain: String,
}

impl PlannedSignature {
    pub fn selector(&self) -> &str {
        &self.template.selector
    }
}

/// Which signatures a message gets.
#[derive(Debug)]
pub struct Plan {
    pub signatures: Vec<PlannedSignature>,
}

/// The signatures for a message with this author: the author domain's entry (exact, else the
/// most specific wildcard, else `*`) and the extra signatures it lists, then `[base]`'s
/// `additional_signatures` by their policy. A signature whose `d=` is the author domain is left
/// out when there is no author.
pub fn plan(table: &SigningTable, author: Result<&str, &NoAuthor>) -> Plan {
    let mut signatures: Vec<PlannedSignature> = Vec::new();
    let mut add = |template: &Arc<SignerTemplate>| {
        let domain = match (&template.domain, author) {
            (SigningDomain::Fixed(d), _) => d.clone(),
            (SigningDomain::Author, Ok(a)) => a.to_string(),
            (SigningDomain::Author, Err(_)) => return,
        };
        let duplicate = signatures
            .iter()
            .any(|s| s.domain == domain && s.template.selector == template.selector);
        if !duplicate {
            signatures.push(PlannedSignature {
                template: template.clone(),
                domain,
            });
        }
    };
    let matched = author
        .ok()
        .and_then(|a| table.lookup(a))
        .map(|(entry, _)| entry);
    signatures_for(table, matched).for_each(&mut add);
    Plan { signatures }
}

/// The signatures a message gets when its author domain matched `entry` (`None`: no entry
/// matched, or the message has no author): the entry and the extra signatures it lists, then
/// `[base]`'s `additional_signatures` by their policy. [`plan`] and the key inventory
/// ([`crate::inventory`]) both ask this, so `check` sees exactly what messages get.
pub fn signatures_for<'a>(
    table: &'a SigningTable,
    entry: Option<&'a Arc<SignerTemplate>>,
) -> impl Iterator<Item = &'a Arc<SignerTemplate>> {
    let own = entry
        .into_iter()
        .flat_map(|entry| std::iter::once(entry).chain(&entry.additional));
    let matched = entry.is_some();
    let base = table
        .additional()
        .iter()
        .filter(move |extra| match extra.policy {
            SignaturePolicy::Always => true,
            SignaturePolicy::OnlyIfMissingDomainBlock => !matched,
        });
    own.chain(base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("t.toml")).unwrap()
    }

    fn origin(
        client: ClientAddr,
        user: Option<&str>,
        typ: Option<&str>,
        daemon: Option<&str>,
    ) -> Origin {
        Origin {
            client,
            auth_user: user.map(Into::into),
            auth_type: typ.map(Into::into),
            daemon_name: daemon.map(Into::into),
        }
    }

    #[test]
    fn who_may_sign() {
        let c = config(
            r#"[milter]
            trusted_networks = ["127.0.0.0/8", "::1/128", "192.0.2.0/24"]
            trusted_daemon_names = ["ORIGINATING"]"#,
        );
        let ip = |s: &str| ClientAddr::Ip(s.parse().unwrap());
        let cases = [
            (
                origin(ip("127.0.0.1"), None, None, None),
                Some("trusted client 127.0.0.1"),
            ),
            (
                origin(ip("192.0.2.77"), None, None, None),
                Some("trusted client 192.0.2.77"),
            ),
            (
                origin(ip("::ffff:192.0.2.5"), None, None, None),
                Some("trusted client 192.0.2.5"),
            ),
            (
                origin(ip("::1"), None, None, None),
                Some("trusted client ::1"),
            ),
            (origin(ip("203.0.113.5"), None, None, None), None),
            (origin(ip("203.0.113.5"), Some(""), Some(""), None), None),
            (
                origin(ip("203.0.113.5"), Some("alice"), Some("PLAIN"), None),
                Some("authenticated as alice"),
            ),
            (
                origin(ip("203.0.113.5"), None, Some("LOGIN"), None),
                Some("authenticated as (LOGIN)"),
            ),
            (
                origin(ip("203.0.113.5"), None, None, Some("ORIGINATING")),
                Some("daemon ORIGINATING"),
            ),
            (origin(ip("203.0.113.5"), None, None, Some("smtpd")), None),
            (
                origin(ClientAddr::Local, None, None, None),
                Some("trusted client 127.0.0.1"),
            ),
            (origin(ClientAddr::Unknown, None, None, None), None),
        ];
        for (o, want) in cases {
            assert_eq!(
                may_sign(&c.milter, &o).map(|t| t.to_string()).as_deref(),
                want,
                "{o:?}"
            );
        }
    }

    #[test]
    fn authenticated_senders_can_be_excluded() {
        let c = config("[milter]\nsign_authenticated = false\ntrusted_networks = []\n");
        let o = origin(
            ClientAddr::Ip("203.0.113.5".parse().unwrap()),
            Some("alice"),
            Some("PLAIN"),
            None,
        );
        assert_eq!(may_sign(&c.milter, &o), None);
        let local = origin(ClientAddr::Local, None, None, None);
        assert_eq!(
            may_sign(&c.milter, &local),
            None,
            "no trusted networks: not even local"
        );
    }

    #[test]
    fn author_domains() {
        let cases: &[(&[&str], Result<&str, NoAuthor>)] = &[
            (&[" alice@Example.COM"], Ok("example.com")),
            (&[" \"Alice, A.\" <alice@example.com>"], Ok("example.com")),
            (
                &[" =?utf-8?q?J=C3=BCrgen?= <j@sub.example.org>"],
                Ok("sub.example.org"),
            ),
            (&[" Alice\n\t<alice@example.com>"], Ok("example.com")),
            (&[" alice@example.com."], Ok("example.com")),
            (&[], Err(NoAuthor::Missing)),
            (
                &[" a@x.example", " b@y.example"],
                Err(NoAuthor::SeveralHeaders(2)),
            ),
            (
                &[" a@x.example, b@y.example"],
                Err(NoAuthor::SeveralMailboxes(2)),
            ),
            (&[" undisclosed-recipients:;"], Err(NoAuthor::Unparsable)),
            (&[" alice"], Err(NoAuthor::Unparsable)),
            (&[" alice@"], Err(NoAuthor::BadDomain)),
            (&[" <>"], Err(NoAuthor::Unparsable)),
        ];
        for (values, want) in cases {
            let bytes: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
            let got = author_domain(&bytes);
            assert_eq!(
                got.as_deref().map_err(Clone::clone),
                want.clone(),
                "{values:?}"
            );
        }
    }

    #[test]
    fn which_signatures() {
        let c = config(
            r#"
            [base]
            selector = "s"
            additional_signatures = ["esp", "fallback"]
            [domain."example.com"]
            additional_signatures = ["ed"]
            [domain."*.example.net"]
            [signature."esp"]
            domain = "esp.example"
            selector = "esp1"
            [signature."fallback"]
            domain = "fallback.example"
            policy = "OnlyIfMissingDomainBlock"
            [signature."ed"]
            domain = "{domain}"
            selector = "ed1"
            "#,
        );
        let names = |author: Result<&str, &NoAuthor>| -> Vec<String> {
            plan(&c.signing, author)
                .signatures
                .iter()
                .map(|s| format!("{}:{}", s.domain, s.selector()))
                .collect()
        };
        let cases: &[(Result<&str, &NoAuthor>, &[&str])] = &[
            (
                Ok("example.com"),
                &["example.com:s", "example.com:ed1", "esp.example:esp1"],
            ),
            (
                Ok("mail.example.net"),
                &["mail.example.net:s", "esp.example:esp1"],
            ),
            (
                Ok("example.net"),
                &["esp.example:esp1", "fallback.example:s"],
            ),
            (
                Ok("unknown.org"),
                &["esp.example:esp1", "fallback.example:s"],
            ),
            (
                Err(&NoAuthor::Missing),
                &["esp.example:esp1", "fallback.example:s"],
            ),
        ];
        for (author, want) in cases {
            assert_eq!(names(*author), *want, "{author:?}");
        }
    }

    #[test]
    fn nothing_configured_means_nothing_signed() {
        let c = config("");
        assert!(plan(&c.signing, Ok("example.com")).signatures.is_empty());
    }
}
