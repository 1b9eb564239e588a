//! *May this client's mail be signed at all?* Only SMTP-authenticated senders (when enabled),
//! listed MTA services and clients in the trusted networks: an open signer is a forgery service.

use crate::config::MilterSettings;
use std::fmt;
use std::net::IpAddr;

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
    /// SMTP AUTH. `login` is `{auth_authen}`; an MTA that reports only the mechanism leaves it
    /// `None`, and such a sender is authorized for no domain (see [`super::authorization`]).
    Authenticated {
        login: Option<String>,
        mechanism: Option<String>,
    },
    DaemonName(String),
    Network(IpAddr),
}

impl fmt::Display for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trust::Authenticated {
                login: Some(login), ..
            } => write!(f, "authenticated as {login}"),
            Trust::Authenticated { mechanism, .. } => {
                write!(
                    f,
                    "authenticated as ({})",
                    mechanism.as_deref().unwrap_or("")
                )
            }
            Trust::DaemonName(name) => write!(f, "daemon {name}"),
            Trust::Network(ip) => write!(f, "trusted client {ip}"),
        }
    }
}

/// Why a client is not trusted: each way in, and why it did not apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Untrusted {
    /// The MTA reported SMTP AUTH, but `sign_authenticated = false`.
    pub authentication_ignored: bool,
    /// `{daemon_name}`, not in `trusted_daemon_names`.
    pub daemon_name: Option<String>,
    /// The client address, in no trusted network (mapped IPv4 addresses unwrapped).
    pub client: ClientAddr,
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.authentication_ignored {
            f.write_str("authenticated, but sign_authenticated = false; ")?;
        } else {
            f.write_str("not authenticated; ")?;
        }
        match &self.daemon_name {
            Some(name) => write!(f, "daemon name {name} is not in trusted_daemon_names; ")?,
            None => f.write_str("no daemon name; ")?,
        }
        match &self.client {
            ClientAddr::Unknown => f.write_str("client address unknown"),
            client => write!(f, "client {client} is in no trusted network"),
        }
    }
}

/// May mail from `origin` be signed, and why (or why not)?
pub fn may_sign(settings: &MilterSettings, origin: &Origin) -> Result<Trust, Untrusted> {
    let present = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    let authenticated = present(&origin.auth_user) || present(&origin.auth_type);
    if settings.sign_authenticated && authenticated {
        let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        return Ok(Trust::Authenticated {
            login: nonempty(&origin.auth_user),
            mechanism: nonempty(&origin.auth_type),
        });
    }
    if let Some(daemon) = &origin.daemon_name
        && settings.trusted_daemon_names.iter().any(|d| d == daemon)
    {
        return Ok(Trust::DaemonName(daemon.clone()));
    }
    let ip = match origin.client {
        ClientAddr::Ip(ip) => Some(canonical_ip(ip)),
        ClientAddr::Local => Some(IpAddr::from([127, 0, 0, 1])),
        ClientAddr::Unknown => None,
    };
    if let Some(ip) = ip
        && settings
            .trusted_networks
            .iter()
            .any(|net| net.contains(&ip))
    {
        return Ok(Trust::Network(ip));
    }
    Err(Untrusted {
        authentication_ignored: authenticated,
        daemon_name: origin.daemon_name.clone(),
        client: ip.map_or(ClientAddr::Unknown, ClientAddr::Ip),
    })
}

/// `::ffff:192.0.2.1` is the IPv4 client 192.0.2.1 (dual-stack listeners report it that way).
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
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
        let no = "not authenticated; no daemon name; client 203.0.113.5 is in no trusted network";
        let cases = [
            (
                origin(ip("127.0.0.1"), None, None, None),
                Ok("trusted client 127.0.0.1"),
            ),
            (
                origin(ip("192.0.2.77"), None, None, None),
                Ok("trusted client 192.0.2.77"),
            ),
            (
                origin(ip("::ffff:192.0.2.5"), None, None, None),
                Ok("trusted client 192.0.2.5"),
            ),
            (
                origin(ip("::1"), None, None, None),
                Ok("trusted client ::1"),
            ),
            (origin(ip("203.0.113.5"), None, None, None), Err(no)),
            (origin(ip("203.0.113.5"), Some(""), Some(""), None), Err(no)),
            (
                origin(ip("203.0.113.5"), Some("alice"), Some("PLAIN"), None),
                Ok("authenticated as alice"),
            ),
            (
                origin(ip("203.0.113.5"), None, Some("LOGIN"), None),
                Ok("authenticated as (LOGIN)"),
            ),
            (
                origin(ip("203.0.113.5"), None, None, Some("ORIGINATING")),
                Ok("daemon ORIGINATING"),
            ),
            (
                origin(ip("203.0.113.5"), None, None, Some("smtpd")),
                Err(
                    "not authenticated; daemon name smtpd is not in trusted_daemon_names; \
                     client 203.0.113.5 is in no trusted network",
                ),
            ),
            (
                origin(ClientAddr::Local, None, None, None),
                Ok("trusted client 127.0.0.1"),
            ),
            (
                origin(ClientAddr::Unknown, None, None, None),
                Err("not authenticated; no daemon name; client address unknown"),
            ),
        ];
        for (o, want) in cases {
            let got = may_sign(&c.milter, &o)
                .map(|t| t.to_string())
                .map_err(|u| u.to_string());
            assert_eq!(
                got.as_ref().map(String::as_str).map_err(String::as_str),
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
        let refused = may_sign(&c.milter, &o).unwrap_err();
        assert!(refused.authentication_ignored);
        assert!(
            refused
                .to_string()
                .starts_with("authenticated, but sign_authenticated = false")
        );
        let local = origin(ClientAddr::Local, None, None, None);
        assert!(
            may_sign(&c.milter, &local).is_err(),
            "no trusted networks: not even local"
        );
    }
}
