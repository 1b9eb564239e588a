//! *With which signatures?* The author's entry in the signing table and the extra signatures
//! it and `[base]` list, by their policy.

use super::author::NoAuthor;
use crate::config::{DomainMatch, SignaturePolicy, SignerTemplate, SigningDomain, SigningTable};
use std::sync::Arc;

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

    /// Whether `d=` is the author domain (an author-domain signature) rather than a domain the
    /// operator fixed (`[signature] domain = "esp.example"`).
    pub fn signs_as_author(&self) -> bool {
        self.template.domain == SigningDomain::Author
    }
}

/// Which signatures a message gets.
#[derive(Debug)]
pub struct Plan {
    pub signatures: Vec<PlannedSignature>,
    /// The `[domain]` entry the author matched, and how.
    pub entry: Option<(Arc<SignerTemplate>, DomainMatch)>,
}

/// The signatures for a message by this author (its address, or just its domain; canonical):
/// the author's entry (per-mailbox, else exact domain, else the most specific wildcard, else
/// `*`) and the extra signatures it lists, then `[base]`'s `additional_signatures` by their
/// policy. A signature whose `d=` is the author domain is left out when there is no author.
pub fn plan(table: &SigningTable, author: Result<&str, &NoAuthor>) -> Plan {
    let author_domain = author.map(|a| a.rsplit_once('@').map_or(a, |(_, domain)| domain));
    let mut signatures: Vec<PlannedSignature> = Vec::new();
    let mut add = |template: &Arc<SignerTemplate>| {
        let domain = match (&template.domain, author_domain) {
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
    let matched = author.ok().and_then(|a| table.lookup(a));
    signatures_for(table, matched.map(|(entry, _)| entry)).for_each(&mut add);
    Plan {
        signatures,
        entry: matched.map(|(entry, how)| (entry.clone(), how)),
    }
}

/// The signatures a message gets when its author matched `entry` (`None`: no entry matched, or
/// the message has no author): the entry and the extra signatures it lists, then `[base]`'s
/// `additional_signatures` by their policy. [`plan`] and the key inventory
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

    fn names(c: &Config, author: Result<&str, &NoAuthor>) -> Vec<String> {
        plan(&c.signing, author)
            .signatures
            .iter()
            .map(|s| format!("{}:{}", s.domain, s.selector()))
            .collect()
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
        let cases: &[(Result<&str, &NoAuthor>, &[&str])] = &[
            (
                Ok("example.com"),
                &["example.com:s", "example.com:ed1", "esp.example:esp1"],
            ),
            (
                Ok("someone@example.com"),
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
            assert_eq!(names(&c, *author), *want, "{author:?}");
        }
    }

    #[test]
    fn a_mailbox_entry_gets_its_own_selector_and_inherits_the_rest() {
        let c = config(
            r#"
            [base]
            selector = "s"
            [domain."example.com"]
            selector = "team"
            additional_signatures = ["ed"]
            header_canonicalization = "Simple"
            [domain."Alice@Example.com"]
            selector = "alice"
            [domain."bob@example.com"]
            selector = "bob"
            additional_signatures = []
            [domain."carol@mail.example.net"]
            selector = "carol"
            [domain."*.example.net"]
            [signature."ed"]
            domain = "{domain}"
            selector = "ed1"
            "#,
        );
        let cases: &[(&str, &[&str], DomainMatch)] = &[
            (
                "alice@example.com",
                &["example.com:alice", "example.com:ed1"],
                DomainMatch::Mailbox,
            ),
            (
                "bob@example.com",
                &["example.com:bob"],
                DomainMatch::Mailbox,
            ),
            (
                "dave@example.com",
                &["example.com:team", "example.com:ed1"],
                DomainMatch::Exact,
            ),
            (
                "carol@mail.example.net",
                &["mail.example.net:carol"],
                DomainMatch::Mailbox,
            ),
            (
                "dave@mail.example.net",
                &["mail.example.net:s"],
                DomainMatch::Wildcard,
            ),
        ];
        for (author, want, how) in cases {
            assert_eq!(names(&c, Ok(author)), *want, "{author}");
            let planned = plan(&c.signing, Ok(author));
            assert_eq!(planned.entry.map(|(_, h)| h), Some(*how), "{author}");
        }
        let (alice, _) = c.signing.lookup("alice@example.com").unwrap();
        assert_eq!(
            alice.header_canonicalization,
            crate::config::Canon::Simple,
            "inherited from [domain.\"example.com\"]"
        );
    }

    #[test]
    fn nothing_configured_means_nothing_signed() {
        let c = config("");
        assert!(plan(&c.signing, Ok("example.com")).signatures.is_empty());
    }
}
