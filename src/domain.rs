//! Domain names in one canonical form, so that a configured name and an author domain match
//! whichever way either is written: lowercase, without a trailing dot, and with every
//! internationalized label as its A-label (`bücher.example` → `xn--bcher-kva.example`), by
//! UTS 46 processing (IDNA2008-compatible, non-transitional: `ß` stays `ß`). The A-label form
//! is also what a signature's `d=` carries: it is what DNS holds, so every verifier can look it
//! up, including those that predate RFC 8616.

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};

/// ASCII that cannot appear in a host name label. Underscores stay allowed: they are not valid
/// in host names, but they do occur in names people sign for and DNS carries them fine.
const DENIED_ASCII: &str = " !\"#$%&'()*+,/:;<=>?@[\\]^`{|}~";

/// `name` in canonical form: lowercase A-labels, no trailing dot. Errors say what is wrong in
/// words an operator can act on.
pub fn canonical(name: &str) -> Result<String, String> {
    let trimmed = name.trim();
    let without_dot = trimmed.strip_suffix('.').unwrap_or(trimmed);
    let not_a_domain = || {
        format!(
            "\"{name}\" is not a domain name (wildcards are written \"*.example.com\" or \"*\")"
        )
    };
    if without_dot.is_empty() || without_dot.split('.').any(str::is_empty) {
        return Err(not_a_domain());
    }
    if let Some(plain) = plain_ascii(without_dot) {
        return Ok(plain);
    }
    let ascii = Uts46::new()
        .to_ascii(
            without_dot.as_bytes(),
            AsciiDenyList::new(true, DENIED_ASCII),
            Hyphens::CheckFirstLast,
            DnsLength::Verify,
        )
        .map_err(|_| not_a_domain())?;
    Ok(ascii.into_owned())
}

/// A name of plain ASCII labels (no `xn--` label, which must be checked as Punycode) needs no
/// UTS 46 processing: its canonical form is its lowercase. This is the common case, on every
/// message (the author domain) and every login, so it skips the full processing (measured:
/// about 1 µs a name).
fn plain_ascii(name: &str) -> Option<String> {
    let plain_label = |label: &str| {
        label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && !label
                .get(..4)
                .is_some_and(|p| p.eq_ignore_ascii_case("xn--"))
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (name.len() <= 253 && name.split('.').all(plain_label)).then(|| name.to_ascii_lowercase())
}

/// The Unicode form of a canonical name, when it has internationalized labels (for messages:
/// `bücher.example (xn--bcher-kva.example)`); `None` for a plain ASCII name.
pub fn unicode(canonical: &str) -> Option<String> {
    if !canonical.split('.').any(|label| label.starts_with("xn--")) {
        return None;
    }
    let (text, result) = idna::domain_to_unicode(canonical);
    (result.is_ok() && text != canonical).then_some(text)
}

/// `name` as people read it: `bücher.example (xn--bcher-kva.example)`, or just the name.
pub fn display(canonical: &str) -> String {
    match unicode(canonical) {
        Some(u) => format!("{u} ({canonical})"),
        None => canonical.to_string(),
    }
}

/// Whether `name` is `parent` or one of its subdomains (both canonical).
pub fn is_within(name: &str, parent: &str) -> bool {
    name == parent
        || name
            .strip_suffix(parent)
            .is_some_and(|rest| rest.ends_with('.'))
}

/// Whether a signature with `d=` `signing` could be aligned, in DMARC's relaxed sense, with
/// the author domain `author` (both canonical). Alignment compares organizational domains,
/// which needs the public suffix list; instead this compares the last two labels, which two
/// names under one organizational domain always share (an organizational domain has at least
/// two labels). It can only err towards "aligned" (`a.co.uk` and `b.co.uk`), which is the safe
/// side for its one use: keeping a login from getting a signature aligned with a domain it may
/// not sign for.
pub fn may_align(signing: &str, author: &str) -> bool {
    last_two_labels(signing) == last_two_labels(author)
}

fn last_two_labels(name: &str) -> &str {
    match name.rmatch_indices('.').nth(1) {
        Some((dot, _)) => &name[dot + 1..],
        None => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_give_the_a_label() {
        let cases = [
            ("bücher.example", "xn--bcher-kva.example"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
            ("BÜCHER.Example.", "xn--bcher-kva.example"),
            ("XN--BCHER-KVA.EXAMPLE", "xn--bcher-kva.example"),
            ("café.example", "xn--caf-dma.example"),
            ("xn--caf-dma.example", "xn--caf-dma.example"),
            // Non-transitional: ß is its own letter (IDNA2008), not "ss".
            ("straße.example", "xn--strae-oqa.example"),
            ("日本語.jp", "xn--wgv71a119e.jp"),
            ("Example.COM", "example.com"),
            ("_dmarc.example.com", "_dmarc.example.com"),
            ("mail-1.example.com", "mail-1.example.com"),
        ];
        for (input, want) in cases {
            assert_eq!(canonical(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn the_ascii_shortcut_agrees_with_uts46() {
        for name in [
            "example.com",
            "Mail-1.Example.COM",
            "_dmarc.example.com",
            "a.b.c.d.e",
            "123.example",
            "x--y.example",
        ] {
            let slow = Uts46::new()
                .to_ascii(
                    name.as_bytes(),
                    AsciiDenyList::new(true, DENIED_ASCII),
                    Hyphens::CheckFirstLast,
                    DnsLength::Verify,
                )
                .map(|c| c.into_owned())
                .ok();
            assert_eq!(plain_ascii(name), slow, "{name}");
        }
        for not_plain in [
            "xn--bcher-kva.example",
            "XN--caf-dma.example",
            "bücher.example",
            "-a.example",
        ] {
            assert_eq!(plain_ascii(not_plain), None, "{not_plain}");
        }
    }

    #[test]
    fn names_that_are_not_domains_are_refused() {
        for bad in [
            "",
            ".",
            "a..example",
            "-a.example",
            "a-.example",
            "a b.example",
            "a@example.com",
            "xn--zz.example",
            "*.example.com",
            &format!("{}.example", "a".repeat(64)),
        ] {
            assert!(canonical(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn unicode_form_for_messages() {
        assert_eq!(
            unicode("xn--bcher-kva.example").as_deref(),
            Some("bücher.example")
        );
        assert_eq!(unicode("example.com"), None);
        assert_eq!(
            display("xn--caf-dma.example"),
            "café.example (xn--caf-dma.example)"
        );
        assert_eq!(display("example.com"), "example.com");
    }

    #[test]
    fn subdomains_and_alignment() {
        assert!(is_within("example.com", "example.com"));
        assert!(is_within("mail.example.com", "example.com"));
        assert!(!is_within("badexample.com", "example.com"));
        assert!(!is_within("example.com", "mail.example.com"));
        assert!(may_align("esp.example", "esp.example"));
        assert!(may_align("mail.esp.example", "billing.esp.example"));
        assert!(may_align("esp.example", "a.b.esp.example"));
        assert!(!may_align("esp.example", "tenant-a.example"));
        assert!(!may_align("example.com", "example.org"));
        // Errs towards "aligned" where a public suffix has two labels: the safe side.
        assert!(may_align("a.co.uk", "b.co.uk"));
        assert!(may_align("com", "com"));
    }
}
