//! Key parsing (PEM, DER, base64, raw Ed25519 seeds) and the other parsers of untrusted bytes
//! that run outside the milter protocol: a message split for `sign`, and the From header.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(key) = signet_milter::keys::parse::parse_private_key(data) {
        let _ = key.dns_record();
    }
    let message = signet_milter::message::RawMessage::split(data);
    for (name, value) in &message.headers {
        if name.eq_ignore_ascii_case(b"From") {
            let _ = signet_milter::policy::author_domain(&[value.as_slice()]);
        }
    }
    let _ = signet_milter::policy::author_domain(&[data]);
});
