//! *May this authenticated login sign for that domain?* The rules that need nothing but the
//! configuration; the callback of `[authorization]` is asked by [`crate::authorizer`] only when
//! these grant nothing.

use crate::config::authorization::{AuthorizationMode, AuthorizationSettings, Target, login_parts};
use crate::domain;
use std::fmt;

/// An SMTP AUTH login, as compared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    /// As the MTA reported it (`{auth_authen}`), for messages and callbacks.
    pub name: String,
    /// Normalized ([`login_key`]): what maps are matched against.
    pub key: String,
    /// Its own domain: the part after `@`, or `bare_login_domain` for a login without one.
    pub domain: Option<String>,
}

impl Login {
    pub fn new(name: &str, settings: &AuthorizationSettings) -> Self {
        let (key, own) = login_parts(name);
        let domain = if key.contains('@') {
            own
        } else {
            settings.bare_login_domain.clone()
        };
        Login {
            name: name.to_string(),
            key,
            domain,
        }
    }

    fn is_bare(&self) -> bool {
        !self.key.contains('@')
    }
}

/// What a login asks to sign for: one author address of a domain, or (for a message without a
/// single author) the domain alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subject<'a> {
    pub address: Option<&'a str>,
    pub domain: &'a str,
}

/// Why a login may sign for a domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant {
    /// `mode = "any"`.
    AnyLogin,
    /// The login's own domain (or `bare_login_domain`).
    OwnDomain,
    /// A subdomain of the login's own domain, with `subdomains = true`.
    OwnSubdomain,
    /// A map entry: its target (`@example.com`, an address, `*`) and where it is written.
    Listed { target: String, origin: String },
    /// The `[authorization]` callback said yes.
    Callback(String),
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::AnyLogin => f.write_str("mode = \"any\""),
            Grant::OwnDomain => f.write_str("its own domain"),
            Grant::OwnSubdomain => f.write_str("a subdomain of its own domain"),
            Grant::Listed { target, origin } => write!(f, "{target} in {origin}"),
            Grant::Callback(name) => write!(f, "callback {name}"),
        }
    }
}

/// Why a login may not sign for a domain, in words for the log and for `explain`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{login} may not sign for {}: {why}", domain::display(domain))]
pub struct Denial {
    pub login: String,
    pub domain: String,
    pub why: String,
}

/// What the configuration alone says. `None`: nothing grants it, ask the callback (if any).
pub fn static_grant(
    settings: &AuthorizationSettings,
    login: &Login,
    subject: Subject<'_>,
) -> Option<Grant> {
    if settings.mode == AuthorizationMode::Any {
        return Some(Grant::AnyLogin);
    }
    if settings.mode == AuthorizationMode::OwnDomain
        && let Some(own) = &login.domain
    {
        if own == subject.domain {
            return Some(Grant::OwnDomain);
        }
        if settings.subdomains && domain::is_within(subject.domain, own) {
            return Some(Grant::OwnSubdomain);
        }
    }
    listed(settings, login, subject)
}

/// A map grant, most specific first: the address, its `@domain`, with `subdomains` the
/// parents' `@parent`, then `*`.
fn listed(settings: &AuthorizationSettings, login: &Login, subject: Subject<'_>) -> Option<Grant> {
    if settings.grants.is_empty() {
        return None;
    }
    let mut targets = Vec::with_capacity(4);
    if let Some(address) = subject.address {
        targets.push(Target::Address(address.to_string()));
    }
    targets.push(Target::Domain(subject.domain.to_string()));
    if settings.subdomains {
        let mut rest = subject.domain;
        while let Some((_, parent)) = rest.split_once('.') {
            targets.push(Target::Domain(parent.to_string()));
            rest = parent;
        }
    }
    targets.push(Target::Anything);
    targets.into_iter().find_map(|target| {
        settings
            .grants
            .find(&target, &login.key)
            .map(|grantee| Grant::Listed {
                target: target.to_string(),
                origin: grantee.origin.to_string(),
            })
    })
}

/// Why nothing granted `subject` to `login`. `asked`: the callback that said no, if any.
pub fn denial(
    settings: &AuthorizationSettings,
    login: &Login,
    subject: Subject<'_>,
    asked: Option<&str>,
) -> Denial {
    let mut reasons = Vec::new();
    match (settings.mode, &login.domain) {
        (AuthorizationMode::OwnDomain, Some(own)) if login.is_bare() => reasons.push(format!(
            "its domain is {} (bare_login_domain)",
            domain::display(own)
        )),
        (AuthorizationMode::OwnDomain, Some(own)) => {
            reasons.push(format!("its own domain is {}", domain::display(own)));
        }
        (AuthorizationMode::OwnDomain, None) if login.is_bare() => {
            reasons.push("a login without @domain has no own domain".to_string());
        }
        (AuthorizationMode::OwnDomain, None) => {
            reasons.push("its domain is not a valid domain name".to_string());
        }
        (AuthorizationMode::Map, _) => reasons.push("mode = \"map\"".to_string()),
        (AuthorizationMode::Any, _) => {}
    }
    reasons.push(if settings.grants.is_empty() {
        "no map is configured".to_string()
    } else {
        "no map grants it".to_string()
    });
    if let Some(name) = asked {
        reasons.push(format!("callback {name} said no"));
    }
    Denial {
        login: login.name.clone(),
        domain: subject.domain.to_string(),
        why: reasons.join("; "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn settings(text: &str) -> AuthorizationSettings {
        Config::parse(text, Path::new("t.toml"))
            .unwrap()
            .authorization
    }

    /// (login, author address, expected grant or denial text)
    fn check(s: &AuthorizationSettings, cases: &[(&str, &str, Result<&str, &str>)]) {
        for (name, address, want) in cases {
            let login = Login::new(name, s);
            let (_, domain) = address.rsplit_once('@').unwrap();
            let subject = Subject {
                address: Some(address),
                domain,
            };
            let got = static_grant(s, &login, subject)
                .map(|g| g.to_string())
                .ok_or_else(|| denial(s, &login, subject, None).to_string());
            assert_eq!(
                got.as_ref().map(String::as_str).map_err(String::as_str),
                *want,
                "{name} for {address}"
            );
        }
    }

    #[test]
    fn by_default_a_login_signs_for_its_own_domain_only() {
        let s = settings("");
        check(
            &s,
            &[
                (
                    "alice@tenant-a.example",
                    "billing@tenant-a.example",
                    Ok("its own domain"),
                ),
                (
                    "Alice@Tenant-A.Example",
                    "x@tenant-a.example",
                    Ok("its own domain"),
                ),
                (
                    "bob@tenant-b.example",
                    "billing@tenant-a.example",
                    Err("bob@tenant-b.example may not sign for tenant-a.example: \
                         its own domain is tenant-b.example; no map is configured"),
                ),
                (
                    "alice@tenant-a.example",
                    "x@mail.tenant-a.example",
                    Err(
                        "alice@tenant-a.example may not sign for mail.tenant-a.example: \
                         its own domain is tenant-a.example; no map is configured",
                    ),
                ),
                (
                    "alice",
                    "alice@tenant-a.example",
                    Err("alice may not sign for tenant-a.example: \
                         a login without @domain has no own domain; no map is configured"),
                ),
                (
                    "jörg@bücher.example",
                    "j@xn--bcher-kva.example",
                    Ok("its own domain"),
                ),
            ],
        );
    }

    #[test]
    fn subdomains_bare_logins_and_maps() {
        let s = settings(
            r#"
            [authorization]
            subdomains = true
            bare_login_domain = "tenant-a.example"
            [authorization.logins]
            "ops@esp.example" = ["*"]
            "bob@tenant-b.example" = ["billing@tenant-a.example", "@shared.example"]
            "#,
        );
        check(
            &s,
            &[
                (
                    "alice@tenant-a.example",
                    "x@mail.tenant-a.example",
                    Ok("a subdomain of its own domain"),
                ),
                ("alice", "x@tenant-a.example", Ok("its own domain")),
                (
                    "alice",
                    "x@a.b.tenant-a.example",
                    Ok("a subdomain of its own domain"),
                ),
                (
                    "alice",
                    "x@tenant-b.example",
                    Err("alice may not sign for tenant-b.example: \
                         its domain is tenant-a.example (bare_login_domain); no map grants it"),
                ),
                (
                    "bob@tenant-b.example",
                    "billing@tenant-a.example",
                    Ok(
                        "billing@tenant-a.example in [authorization.logins] \"bob@tenant-b.example\"",
                    ),
                ),
                (
                    "bob@tenant-b.example",
                    "ceo@tenant-a.example",
                    Err("bob@tenant-b.example may not sign for tenant-a.example: \
                         its own domain is tenant-b.example; no map grants it"),
                ),
                (
                    "bob@tenant-b.example",
                    "x@list.shared.example",
                    Ok("@shared.example in [authorization.logins] \"bob@tenant-b.example\""),
                ),
                (
                    "OPS@esp.example",
                    "x@anything.example",
                    Ok("* in [authorization.logins] \"ops@esp.example\""),
                ),
            ],
        );
    }

    #[test]
    fn map_mode_ignores_the_own_domain_and_any_allows_everything() {
        let map = settings(
            "[authorization]\nmode = \"map\"\n[authorization.logins]\n\"carol\" = [\"tenant-c.example\"]\n",
        );
        check(
            &map,
            &[
                (
                    "alice@tenant-a.example",
                    "x@tenant-a.example",
                    Err("alice@tenant-a.example may not sign for tenant-a.example: \
                         mode = \"map\"; no map grants it"),
                ),
                (
                    "carol",
                    "x@tenant-c.example",
                    Ok("@tenant-c.example in [authorization.logins] \"carol\""),
                ),
            ],
        );
        let any = settings("[authorization]\nmode = \"any\"\n");
        check(
            &any,
            &[(
                "bob@tenant-b.example",
                "x@tenant-a.example",
                Ok("mode = \"any\""),
            )],
        );
    }
}
