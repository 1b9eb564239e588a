//! The replies of one end of message in one write.
//!
//! indymilter writes and flushes every reply on its own, so a signed message ends with two
//! writes (insert-header, then continue), one more per extra signature, and the MTA may wake
//! once for each. This wrapper around the connection holds back a flush that ends in a
//! message modification, which the protocol always follows with the final reply of the same
//! end of message, and sends it with that reply. Everything else is written when flushed.

use indymilter::Listener;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Milter replies that modify the message (SMFIR_ADDHEADER, INSHEADER, CHGHEADER, ADDRCPT,
/// DELRCPT, ADDRCPT_PAR, REPLBODY, CHGFROM, QUARANTINE): only sent during end of message and
/// always followed by the final reply. Progress (`p`) is not among them: it must go out now.
const MODIFICATIONS: &[u8] = b"himb+-2eq";

/// A listener whose connections batch end-of-message replies.
pub struct Batched<L>(pub L);

impl<L: Listener> Listener for Batched<L> {
    type Io = ReplyBatching<L::Io>;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        self.0.poll_accept(cx).map_ok(ReplyBatching::new)
    }
}

/// A connection to the MTA whose writes go out at flush, modification replies held back
/// until the reply that follows them.
pub struct ReplyBatching<S> {
    inner: S,
    /// Whole protocol packets not yet written, from a packet boundary.
    pending: Vec<u8>,
    /// How much of `pending` is already written (a write the socket took only in part).
    written: usize,
}

impl<S> ReplyBatching<S> {
    pub fn new(inner: S) -> Self {
        ReplyBatching {
            inner,
            pending: Vec::with_capacity(512),
            written: 0,
        }
    }
}

/// Whether `bytes` is a run of whole packets (4-byte length, command, payload) whose last
/// one is a modification. Anything else, including a partial packet, is not held back.
fn ends_with_modification(bytes: &[u8]) -> bool {
    let mut at = 0;
    let mut last = None;
    while let Some(header) = bytes.get(at..at + 5) {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len == 0 {
            return false;
        }
        last = Some(header[4]);
        at += 4 + len;
    }
    at == bytes.len() && last.is_some_and(|kind| MODIFICATIONS.contains(&kind))
}

impl<S: AsyncWrite + Unpin> ReplyBatching<S> {
    /// Writes out everything pending.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReplyBatching<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReplyBatching<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // indymilter flushes after every reply, so this holds at most one end of message.
        self.get_mut().pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.written == 0 && ends_with_modification(&this.pending) {
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn packet(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = u32::try_from(payload.len() + 1)
            .unwrap()
            .to_be_bytes()
            .to_vec();
        p.push(kind);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn only_whole_packets_ending_in_a_modification_are_held() {
        let insert = packet(b'i', b"\0\0\0\0DKIM-Signature\0v=1\0");
        let cont = packet(b'c', b"");
        assert!(ends_with_modification(&insert));
        assert!(ends_with_modification(
            &[insert.clone(), insert.clone()].concat()
        ));
        assert!(!ends_with_modification(
            &[insert.clone(), cont.clone()].concat()
        ));
        assert!(!ends_with_modification(&cont));
        assert!(
            !ends_with_modification(&packet(b'p', b"")),
            "progress goes out at once"
        );
        assert!(
            !ends_with_modification(&insert[..insert.len() - 1]),
            "partial packet"
        );
        assert!(!ends_with_modification(&[0, 0, 0, 0, b'i']), "zero length");
        assert!(!ends_with_modification(b""));
    }

    #[tokio::test]
    async fn an_insert_header_goes_out_with_the_final_reply() {
        let (client, server) = tokio::io::duplex(4096);
        let mut server = ReplyBatching::new(server);
        let mut client = client;
        let insert = packet(b'i', b"\0\0\0\0DKIM-Signature\0v=1\0");
        let cont = packet(b'c', b"");

        server.write_all(&insert).await.unwrap();
        server.flush().await.unwrap();
        let mut byte = [0u8; 1];
        let nothing_yet =
            tokio::time::timeout(std::time::Duration::from_millis(50), client.read(&mut byte))
                .await;
        assert!(nothing_yet.is_err(), "the modification is held back");

        server.write_all(&cont).await.unwrap();
        server.flush().await.unwrap();
        let mut got = vec![0u8; insert.len() + cont.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [insert, cont].concat(), "both, in order");
    }

    #[tokio::test]
    async fn other_replies_go_out_at_each_flush() {
        let (mut client, server) = tokio::io::duplex(4096);
        let mut server = ReplyBatching::new(server);
        for kind in [b'c', b'p', b'a'] {
            let reply = packet(kind, b"");
            server.write_all(&reply).await.unwrap();
            server.flush().await.unwrap();
            let mut got = vec![0u8; reply.len()];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(got, reply);
        }
    }

    #[tokio::test]
    async fn a_socket_that_takes_little_at_a_time_gets_everything() {
        // A duplex with a 3-byte buffer forces partial writes and Pending.
        let (mut client, server) = tokio::io::duplex(3);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all
        });
        let mut server = ReplyBatching::new(server);
        let insert = packet(b'i', b"\0\0\0\0DKIM-Signature\0v=1; a=rsa-sha256\0");
        let cont = packet(b'c', b"");
        for p in [&insert, &cont] {
            server.write_all(p).await.unwrap();
            server.flush().await.unwrap();
        }
        server.shutdown().await.unwrap();
        drop(server);
        assert_eq!(reader.await.unwrap(), [insert, cont].concat());
    }
}
