//! The messages the load generator sends: a typical header section and a text body of the
//! requested size, and the signed message as the MTA would queue it, for verification.

use crate::protocol::AddedHeader;
use bytes::Bytes;
use std::path::Path;

/// The envelope and header section of message number `seq`.
pub struct Envelope {
    pub sender: String,
    pub recipient: String,
    /// `(name, value)` with the value as it follows the colon (leading space included);
    /// folded lines are separated by a bare LF, as Postfix passes them.
    pub headers: Vec<(String, String)>,
}

impl Envelope {
    pub fn new(seq: u64, conn: usize, from_domain: &str) -> Self {
        let sender = format!("sender{}@{from_domain}", conn);
        let recipient = "rcpt@example.net".to_string();
        let headers = vec![
            ("From".into(), format!(" Bench Sender <{sender}>")),
            ("To".into(), format!(" Recipient <{recipient}>")),
            (
                "Subject".into(),
                format!(" Load test message {seq}\n\tfrom connection {conn}"),
            ),
            ("Date".into(), " Sun, 22 Nov 2026 10:00:00 +0000".into()),
            (
                "Message-ID".into(),
                format!(" <{seq}.{conn}.loadgen@{from_domain}>"),
            ),
            ("MIME-Version".into(), " 1.0".into()),
            (
                "Content-Type".into(),
                " text/plain; charset=us-ascii".into(),
            ),
            ("Content-Transfer-Encoding".into(), " 7bit".into()),
            ("X-Mailer".into(), " signet-milter loadgen".into()),
        ];
        Envelope {
            sender,
            recipient,
            headers,
        }
    }
}

/// A body of exactly `size` bytes: 72-character lines of words, CRLF line ends (as the MTA
/// sends the body), ending in CRLF when `size` allows. The same body serves every message.
pub fn body(size: usize) -> Bytes {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut out = Vec::with_capacity(size);
    let mut line_len = 0;
    while out.len() + 2 < size {
        if line_len >= 72 {
            out.extend_from_slice(b"\r\n");
            line_len = 0;
            continue;
        }
        let r = next();
        let word_len = 2 + (r % 9) as usize;
        for i in 0..word_len {
            out.push(b'a' + ((r >> (8 + i * 4)) % 26) as u8);
        }
        out.push(b' ');
        line_len += word_len + 1;
    }
    out.truncate(size.saturating_sub(2));
    out.extend_from_slice(&b"\r\n"[..size.min(2)]);
    Bytes::from(out)
}

/// Writes the message as the MTA would queue it after the milter: the added headers where
/// the milter put them, then the original headers and the body, CRLF throughout.
pub fn save(
    path: &Path,
    envelope: &Envelope,
    added: &[AddedHeader],
    leading_space: bool,
    body: &[u8],
) -> std::io::Result<()> {
    let mut lines: Vec<String> = envelope
        .headers
        .iter()
        .map(|(name, value)| format!("{name}:{value}"))
        .collect();
    for h in added {
        // Postfix: the value follows "Name:" with a space unless the milter sends its own.
        let space = if leading_space { "" } else { " " };
        let line = format!("{}:{space}{}", h.name, h.value);
        match h.index {
            // Sendmail's index 0 (Postfix's 1) is the top of the header section.
            Some(i) => lines.insert((i as usize).min(lines.len()), line),
            None => lines.push(line),
        }
    }
    let mut out = Vec::with_capacity(body.len() + 4096);
    for line in &lines {
        out.extend_from_slice(crlf(line).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    std::fs::write(path, out)
}

/// Bare LF (how milters and MTAs fold header values) to CRLF.
fn crlf(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\n', "\r\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn body_has_the_exact_size_and_crlf_lines() {
        for size in [0, 1, 2, 3, 100, 2048, 65_536] {
            let b = super::body(size);
            assert_eq!(b.len(), size);
            if size >= 2 {
                assert!(b.ends_with(b"\r\n"));
            }
            assert!(!b.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'));
        }
    }
}
