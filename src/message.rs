//! A message read whole (for `signet-milter sign` and `explain`), split into header fields the
//! way an MTA would hand them to a milter, and fed through a [`MessageSession`] as the milter
//! feeds it.

use crate::runtime::Runtime;
use crate::session::{Envelope, MessageSession, Verdict};
use std::sync::Arc;

pub struct RawMessage<'a> {
    /// `(name, value)`; the value keeps its leading space, folded lines are joined with `\n`.
    pub headers: Vec<(&'a [u8], Vec<u8>)>,
    pub body: &'a [u8],
    pub uses_crlf: bool,
}

impl<'a> RawMessage<'a> {
    pub fn split(raw: &'a [u8]) -> Self {
        let uses_crlf = raw
            .iter()
            .position(|&b| b == b'\n')
            .is_some_and(|i| i > 0 && raw[i - 1] == b'\r');
        let mut headers: Vec<(&[u8], Vec<u8>)> = Vec::new();
        let mut pos = 0;
        let mut body_start = raw.len();
        while pos < raw.len() {
            let end = raw[pos..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(raw.len(), |i| pos + i + 1);
            let line = &raw[pos..end];
            let content = line.strip_suffix(b"\n").unwrap_or(line);
            let content = content.strip_suffix(b"\r").unwrap_or(content);
            if content.is_empty() {
                body_start = end;
                break;
            }
            if matches!(content[0], b' ' | b'\t') {
                if let Some((_, value)) = headers.last_mut() {
                    value.push(b'\n');
                    value.extend_from_slice(content);
                }
            } else if let Some(colon) = content.iter().position(|&b| b == b':') {
                headers.push((&content[..colon], content[colon + 1..].to_vec()));
            }
            // A line without a colon (an mbox "From " line) is not a header field: skipped.
            pos = end;
        }
        RawMessage {
            headers,
            body: &raw[body_start.min(raw.len())..],
            uses_crlf,
        }
    }
}

/// `bytes` with every bare LF made CRLF, as a message travels over SMTP and as DKIM signs it.
pub fn to_crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 32);
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' && (i == 0 || bytes[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

impl RawMessage<'_> {
    /// The session's verdict on this message, stage by stage as the milter gets it.
    pub async fn judge(&self, runtime: Arc<Runtime>, envelope: Envelope) -> Verdict {
        let mut session = match MessageSession::begin(runtime, envelope, true) {
            Ok(session) => session,
            Err(verdict) => return *verdict,
        };
        for (name, value) in &self.headers {
            session.add_header(name, value);
        }
        if let Some(verdict) = session.end_of_headers().await {
            return verdict;
        }
        // The chunk size Postfix uses.
        for chunk in self.body.chunks(65_535) {
            session.body_chunk(chunk);
        }
        session.finish().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_folded_headers_and_body() {
        let raw = b"From: a@example.com\r\nSubject: one\r\n\ttwo\r\nX:\tv\r\n\r\nbody\r\n";
        let m = RawMessage::split(raw);
        assert!(m.uses_crlf);
        let h: Vec<(String, String)> = m
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into(),
                    String::from_utf8_lossy(v).into(),
                )
            })
            .collect();
        assert_eq!(
            h,
            [
                ("From".into(), " a@example.com".into()),
                ("Subject".into(), " one\n\ttwo".into()),
                ("X".into(), "\tv".into())
            ]
        );
        assert_eq!(m.body, b"body\r\n");
    }

    #[test]
    fn lf_only_and_headers_only() {
        let m = RawMessage::split(b"From: a@example.com\nSubject: x\n");
        assert!(!m.uses_crlf);
        assert_eq!(m.headers.len(), 2);
        assert!(m.body.is_empty());
    }
}
