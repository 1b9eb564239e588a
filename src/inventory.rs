//! The key inventory: every key a message can be signed with, derived from the configuration
//! alone. `check`, the startup key pass and `check --dns` all walk this one list, so a key a
//! message may need is never left unchecked.
//!
//! Each exact `[domain]` entry (and each per-mailbox entry) is expanded with every signature its mail gets (its own, its
//! `additional_signatures`, `[base]`'s, fixed-`d=` ones), exactly as [`policy::plan`] plans
//! them, so its keys are known paths, Vault secrets or callback arguments. Only wildcard
//! entries (`*.example.net`, `*`) and `[base]` signatures for domains without an entry sign as
//! an author domain that is known per message; those are listed with their pattern, and their
//! key too when it depends on the domain.
//!
//! The list is a pure function of the signing table: whoever loads the keys (one by one, or
//! concurrently) takes the list as it is.

use crate::config::keysource::ResolvedKeySource;
use crate::config::{SignerTemplate, SigningDomain, SigningTable};
use crate::policy;
use std::collections::HashSet;
use std::sync::Arc;

/// Shown as the domain of `[base]` signatures for mail from a domain without an entry.
const ANY_OTHER_DOMAIN: &str = "*";
/// Shown for `{domain}` in a key source that differs per message.
const PER_MESSAGE_DOMAIN: &str = "{domain}";

/// One key a message can be signed with.
#[derive(Clone, Debug)]
pub struct KeyUse {
    /// The first mail found to use it (the list has each key once: an ESP signature that every
    /// domain gets is one row).
    pub used_by: UsedBy,
    /// The signature recipe: its entry (`[domain."…"]` or `[signature."…"]`), selector,
    /// algorithm and key source.
    pub signature: Arc<SignerTemplate>,
    /// The `d=` it signs as.
    pub domain: SignAs,
    /// Where its key is.
    pub key: KeyLocation,
}

/// Which mail uses a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UsedBy {
    /// Mail from this author domain: an exact `[domain]` entry.
    Domain(String),
    /// Mail from this author address: a per-mailbox entry (`[domain."alice@example.com"]`).
    Mailbox(String),
    /// Mail whose author domain matches this wildcard entry (`*.example.net`, or `*`).
    Pattern(String),
    /// Mail whose author domain has no `[domain]` entry, or that has no usable author.
    NoEntry,
}

/// The `d=` of a signature.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SignAs {
    Domain(String),
    /// Each message's author domain, among those matching `pattern`.
    AuthorOf {
        pattern: String,
    },
}

/// Where a key is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeyLocation {
    /// One source, whatever the message.
    Known(ResolvedKeySource),
    /// A different source per author domain: the source with `{domain}` left in, for display.
    PerMessage(String),
}

/// Where the key of `template` is when it signs as `domain`.
fn key_location(template: &SignerTemplate, domain: &SignAs) -> KeyLocation {
    match domain {
        SignAs::Domain(d) => KeyLocation::Known(template.key.resolve(d, &template.selector)),
        SignAs::AuthorOf { .. } if template.key.depends_on_domain() => KeyLocation::PerMessage(
            template
                .key
                .resolve(PER_MESSAGE_DOMAIN, &template.selector)
                .to_string(),
        ),
        SignAs::AuthorOf { .. } => {
            KeyLocation::Known(template.key.resolve(PER_MESSAGE_DOMAIN, &template.selector))
        }
    }
}

impl KeyUse {
    /// The same use, signed with `signature` instead (key rotation's active selector): its key
    /// is found again.
    pub fn with_signature(self, signature: Arc<SignerTemplate>) -> KeyUse {
        KeyUse {
            key: key_location(&signature, &self.domain),
            signature,
            ..self
        }
    }

    pub fn selector(&self) -> &str {
        &self.signature.selector
    }

    /// The `d=`, or the pattern of author domains it stands for.
    pub fn domain_text(&self) -> &str {
        match &self.domain {
            SignAs::Domain(d) => d,
            SignAs::AuthorOf { pattern } => pattern,
        }
    }

    /// `selector._domainkey.domain`, where the public key must be published; `None` when the
    /// domain is known only per message.
    pub fn dns_name(&self) -> Option<String> {
        match &self.domain {
            SignAs::Domain(d) => Some(format!("{}._domainkey.{d}", self.selector())),
            SignAs::AuthorOf { .. } => None,
        }
    }

    /// The key source in words (never secret material).
    pub fn source_text(&self) -> String {
        match &self.key {
            KeyLocation::Known(source) => source.to_string(),
            KeyLocation::PerMessage(text) => text.clone(),
        }
    }
}

/// Every key a message can be signed with, each once: sorted by domain, selector and entry,
/// with the keys of per-message domains last.
pub fn signing_keys(table: &SigningTable) -> Vec<KeyUse> {
    let mut found = Found::default();
    let mut exact: Vec<_> = table
        .exact_entries()
        .map(|(domain, _)| (domain, UsedBy::Domain(domain.to_string())))
        .chain(
            table
                .mailbox_entries()
                .map(|(address, _)| (address, UsedBy::Mailbox(address.to_string()))),
        )
        .collect();
    exact.sort_unstable_by_key(|(author, _)| *author);
    // A per-mailbox entry is planned like its mail: by the address, which finds that entry.
    for (author, used_by) in exact {
        for planned in policy::plan(table, Ok(author)).signatures {
            found.add(KeyUse {
                used_by: used_by.clone(),
                key: KeyLocation::Known(
                    planned
                        .template
                        .key
                        .resolve(&planned.domain, planned.selector()),
                ),
                domain: SignAs::Domain(planned.domain),
                signature: planned.template,
            });
        }
    }
    let mut patterns: Vec<_> = table.pattern_entries().collect();
    patterns.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (pattern, entry) in patterns {
        let used_by = UsedBy::Pattern(pattern.clone());
        found.add_all(
            policy::signatures_for(table, Some(entry)),
            &used_by,
            &pattern,
        );
    }
    // Mail without an author gets the fixed-d= ones; mail from a domain without an entry also
    // the author-domain ones, unless "*" matches every domain.
    let no_entry = policy::signatures_for(table, None).filter(|template| {
        matches!(template.domain, SigningDomain::Fixed(_)) || !table.has_catch_all()
    });
    found.add_all(no_entry, &UsedBy::NoEntry, ANY_OTHER_DOMAIN);
    found.sorted()
}

#[derive(Default)]
struct Found {
    keys: Vec<KeyUse>,
    seen: HashSet<(SignAs, String, KeyLocation)>,
}

impl Found {
    fn add(&mut self, key: KeyUse) {
        let identity = (
            key.domain.clone(),
            key.selector().to_string(),
            key.key.clone(),
        );
        if self.seen.insert(identity) {
            self.keys.push(key);
        }
    }

    /// The signatures of mail matching `pattern`, which signs as each message's author domain.
    /// Like [`policy::plan`], a later signature with the `d=` and selector of an earlier one is
    /// left out.
    fn add_all<'a>(
        &mut self,
        templates: impl Iterator<Item = &'a Arc<SignerTemplate>>,
        used_by: &UsedBy,
        pattern: &str,
    ) {
        let mut planned: Vec<(SignAs, &str)> = Vec::new();
        for template in templates {
            let domain = match &template.domain {
                SigningDomain::Fixed(d) => SignAs::Domain(d.clone()),
                SigningDomain::Author => SignAs::AuthorOf {
                    pattern: pattern.to_string(),
                },
            };
            if planned
                .iter()
                .any(|(d, s)| *d == domain && *s == template.selector)
            {
                continue;
            }
            planned.push((domain.clone(), &template.selector));
            let key = key_location(template, &domain);
            self.add(KeyUse {
                used_by: used_by.clone(),
                signature: template.clone(),
                domain,
                key,
            });
        }
    }

    fn sorted(mut self) -> Vec<KeyUse> {
        self.keys.sort_by(|a, b| {
            let rank = |k: &KeyUse| matches!(k.domain, SignAs::AuthorOf { .. });
            (
                rank(a),
                a.domain_text(),
                a.selector(),
                a.signature.label.to_string(),
            )
                .cmp(&(
                    rank(b),
                    b.domain_text(),
                    b.selector(),
                    b.signature.label.to_string(),
                ))
        });
        self.keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn inventory(text: &str) -> Vec<String> {
        let config = Config::parse(
            &format!("[keys]\ndirectory = \"/k\"\n{text}"),
            Path::new("t.toml"),
        )
        .unwrap();
        signing_keys(&config.signing)
            .iter()
            .map(|k| {
                format!(
                    "{} {} {} {}",
                    k.domain_text(),
                    k.selector(),
                    k.signature.label,
                    match &k.key {
                        KeyLocation::Known(source) => source.to_string(),
                        KeyLocation::PerMessage(text) => format!("per message: {text}"),
                    }
                )
            })
            .collect()
    }

    /// The README's dual-signing shape: the `{domain}` Ed25519 signature is one key per
    /// domain, each a known file.
    #[test]
    fn every_exact_domain_gets_each_of_its_signatures() {
        let got = inventory(
            r#"
            [base]
            additional_signatures = ["esp"]
            [domain."example.com"]
            selector = "rsa1"
            additional_signatures = ["ed25519"]
            [domain."Example.ORG"]
            selector = "rsa1"
            additional_signatures = ["ed25519"]
            [domain."plain.example"]
            selector = "p1"
            [signature."ed25519"]
            domain = "{domain}"
            selector = "ed1"
            [signature."esp"]
            domain = "esp.example"
            selector = "esp1"
            "#,
        );
        assert_eq!(
            got,
            [
                "esp.example esp1 [signature.\"esp\"] file /k/esp.example/esp1.key",
                "example.com ed1 [signature.\"ed25519\"] file /k/example.com/ed1.key",
                "example.com rsa1 [domain.\"example.com\"] file /k/example.com/rsa1.key",
                "example.org ed1 [signature.\"ed25519\"] file /k/example.org/ed1.key",
                "example.org rsa1 [domain.\"Example.ORG\"] file /k/example.org/rsa1.key",
                "plain.example p1 [domain.\"plain.example\"] file /k/plain.example/p1.key",
            ]
        );
    }

    #[test]
    fn wildcards_are_per_message_unless_their_key_is_fixed() {
        let got = inventory(
            r#"
            [domain."*.example.net"]
            selector = "w1"
            additional_signatures = ["shared"]
            [domain."*.fixed.example"]
            selector = "f1"
            key = "/k/one-key-for-all.pem"
            [signature."shared"]
            domain = "{domain}"
            selector = "sh1"
            key = { vault_mount = "secret", vault_path = "dkim/{domain}" }
            "#,
        );
        assert_eq!(
            got,
            [
                "*.example.net sh1 [signature.\"shared\"] per message: vault secret/dkim/{domain} field key",
                "*.example.net w1 [domain.\"*.example.net\"] per message: file /k/{domain}/w1.key",
                "*.fixed.example f1 [domain.\"*.fixed.example\"] file /k/one-key-for-all.pem",
            ]
        );
    }

    #[test]
    fn base_signatures_reach_mail_without_an_entry() {
        let table = r#"
            [base]
            selector = "s"
            additional_signatures = ["esp", "fallback", "author"]
            [signature."esp"]
            domain = "esp.example"
            selector = "esp1"
            [signature."fallback"]
            domain = "fallback.example"
            policy = "OnlyIfMissingDomainBlock"
            [signature."author"]
            domain = "{domain}"
            selector = "a1"
            "#;
        assert_eq!(
            inventory(table),
            [
                "esp.example esp1 [signature.\"esp\"] file /k/esp.example/esp1.key",
                "fallback.example s [signature.\"fallback\"] file /k/fallback.example/s.key",
                "* a1 [signature.\"author\"] per message: file /k/{domain}/a1.key",
            ]
        );
        // With a catch-all, every author domain has an entry: the fallback still signs mail
        // without an author, the author-domain signature goes with "*".
        let with_catch_all = format!("{table}\n[domain.\"*\"]\n");
        assert_eq!(
            inventory(&with_catch_all),
            [
                "esp.example esp1 [signature.\"esp\"] file /k/esp.example/esp1.key",
                "fallback.example s [signature.\"fallback\"] file /k/fallback.example/s.key",
                "* a1 [signature.\"author\"] per message: file /k/{domain}/a1.key",
                "* s [domain.\"*\"] per message: file /k/{domain}/s.key",
            ]
        );
    }

    #[test]
    fn a_signature_nothing_refers_to_signs_nothing() {
        let got = inventory(
            r#"
            [domain."example.com"]
            selector = "s1"
            [signature."unused"]
            domain = "other.example"
            selector = "u1"
            "#,
        );
        assert_eq!(
            got,
            ["example.com s1 [domain.\"example.com\"] file /k/example.com/s1.key"]
        );
    }

    #[test]
    fn an_empty_table_has_no_keys() {
        assert!(inventory("").is_empty());
    }
}
