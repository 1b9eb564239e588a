//! *Who wrote the message?* The single author in `From:` (RFC 5322 allows several; DKIM's
//! author-domain signature needs one), as an address and a canonical domain.

use crate::config::normalize_domain;

/// The author of a message: the one mailbox in its one `From` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Author {
    /// `local@domain`, lowercase, the domain in canonical (A-label) form: the key of a
    /// per-mailbox entry and of address grants.
    pub address: String,
    /// The canonical author domain.
    pub domain: String,
}

impl Author {
    /// An author from an address as written (`Alice@Bücher.example`).
    pub fn parse(address: &str) -> Result<Self, NoAuthor> {
        let (local, domain) = address.rsplit_once('@').ok_or(NoAuthor::BadDomain)?;
        let domain = domain.trim_start_matches('[').trim_end_matches(']');
        let domain = normalize_domain(domain).map_err(|_| NoAuthor::BadDomain)?;
        if local.is_empty() {
            return Err(NoAuthor::Unparsable);
        }
        Ok(Author {
            address: format!("{}@{domain}", local.to_lowercase()),
            domain,
        })
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

/// The author of a message, from the values of its `From` header(s) as the MTA sent them.
pub fn author(from_values: &[&[u8]]) -> Result<Author, NoAuthor> {
    let value = match from_values {
        [] => return Err(NoAuthor::Missing),
        [one] => one,
        several => return Err(NoAuthor::SeveralHeaders(several.len())),
    };
    let addresses = mailboxes(value).ok_or(NoAuthor::Unparsable)?;
    match addresses.as_slice() {
        [] => Err(NoAuthor::Unparsable),
        [one] => Author::parse(one),
        several => Err(NoAuthor::SeveralMailboxes(several.len())),
    }
}

/// The author domain alone (see [`author`]).
pub fn author_domain(from_values: &[&[u8]]) -> Result<String, NoAuthor> {
    author(from_values).map(|a| a.domain)
}

/// Every domain named in the `From` header(s), for a message without a single author: a
/// signature aligned with any of them speaks for that domain too.
pub fn from_domains(from_values: &[&[u8]]) -> Vec<String> {
    let mut domains: Vec<String> = from_values
        .iter()
        .filter_map(|value| mailboxes(value))
        .flatten()
        .filter_map(|address| Author::parse(&address).ok())
        .map(|a| a.domain)
        .collect();
    domains.sort();
    domains.dedup();
    domains
}

/// The addresses of the mailboxes in one `From` value, `None` when it does not parse.
fn mailboxes(value: &[u8]) -> Option<Vec<String>> {
    let mut raw = Vec::with_capacity(value.len() + 10);
    raw.extend_from_slice(b"From:");
    raw.extend_from_slice(value);
    raw.extend_from_slice(b"\r\n\r\n");
    let message = mail_parser::MessageParser::default().parse_headers(&raw)?;
    let list = message.from()?;
    Some(
        list.mailboxes()
            .filter_map(|m| m.address())
            .map(str::to_string)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
            (&[" a@café.example"], Ok("xn--caf-dma.example")),
            (
                &[" Jörg <jörg@Bücher.example>"],
                Ok("xn--bcher-kva.example"),
            ),
            (&[" a@XN--BCHER-KVA.example"], Ok("xn--bcher-kva.example")),
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
    fn the_address_is_the_lookup_key() {
        let a = author(&[" Alice <Alice.Smith@Bücher.Example>".as_bytes()]).unwrap();
        assert_eq!(a.address, "alice.smith@xn--bcher-kva.example");
        assert_eq!(a.domain, "xn--bcher-kva.example");
    }

    #[test]
    fn every_from_domain_of_a_message_without_one_author() {
        let values: [&[u8]; 2] = [b" a@x.example, b@Y.example", b" c@x.example"];
        assert_eq!(from_domains(&values), ["x.example", "y.example"]);
    }
}
