//! The MTA side of the milter protocol (version 6), written the way Postfix's `milter8.c`
//! speaks it: one buffered stream per connection, macros and their event in one write, the
//! buffer flushed only when a reply is awaited (so an ABORT travels with the next MAIL), and
//! body chunks of at most 65,535 bytes.
//!
//! Wire format: every packet is a 4-byte big-endian length (command byte + payload), the
//! command byte, the payload.

use anyhow::{Context as _, bail};
use std::collections::HashMap;
use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// Postfix `MILTER_CHUNK_SIZE`: the largest body packet an MTA sends.
pub const BODY_CHUNK: usize = 65_535;

/// What Postfix offers in its SMFIC_OPTNEG: every action it can apply (SMFIF_ADDHDRS ...
/// SMFIF_SETSYMLIST) and every protocol step it may leave out or not wait for (v6 mask).
const OFFERED_ACTIONS: u32 = 0x1ff;
const OFFERED_OPTS: u32 = 0x1f_ffff;

/// Protocol options (SMFIP_*) the loadgen honours.
pub mod opt {
    pub const NO_CONNECT: u32 = 0x1;
    pub const NO_HELO: u32 = 0x2;
    pub const NO_MAIL: u32 = 0x4;
    pub const NO_RCPT: u32 = 0x8;
    pub const NO_BODY: u32 = 0x10;
    pub const NO_HEADER: u32 = 0x20;
    pub const NO_EOH: u32 = 0x40;
    pub const NR_HEADER: u32 = 0x80;
    pub const NO_DATA: u32 = 0x200;
    pub const NR_CONNECT: u32 = 0x1000;
    pub const NR_HELO: u32 = 0x2000;
    pub const NR_MAIL: u32 = 0x4000;
    pub const NR_RCPT: u32 = 0x8000;
    pub const NR_DATA: u32 = 0x10000;
    pub const NR_EOH: u32 = 0x40000;
    pub const NR_BODY: u32 = 0x80000;
    pub const LEADING_SPACE: u32 = 0x10_0000;
}

/// Where the milter listens.
#[derive(Clone, Debug)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl std::str::FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:").or_else(|| s.strip_prefix("local:")) {
            Ok(Endpoint::Unix(path.into()))
        } else if let Some(addr) = s.strip_prefix("inet:") {
            addr.parse()
                .map(Endpoint::Tcp)
                .map_err(|e| format!("{addr}: {e} (want inet:127.0.0.1:PORT)"))
        } else if s.starts_with('/') {
            Ok(Endpoint::Unix(s.into()))
        } else {
            Err(format!(
                "{s}: want unix:/path, /path or inet:127.0.0.1:PORT"
            ))
        }
    }
}

/// Macro lists as numbered in SMFIR_OPTNEG, with Postfix 3.7's default list for each. The
/// SMFIC_MACRO packet names the event it precedes; Postfix sends the end-of-header list with
/// every header and the end-of-data list with every body chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    Connect,
    Helo,
    Mail,
    Rcpt,
    Data,
    Eom,
    Eoh,
}

impl Stage {
    fn from_wire(n: u32) -> Option<Stage> {
        Some(match n {
            0 => Stage::Connect,
            1 => Stage::Helo,
            2 => Stage::Mail,
            3 => Stage::Rcpt,
            4 => Stage::Data,
            5 => Stage::Eom,
            6 => Stage::Eoh,
            _ => return None,
        })
    }

    /// `postconf -d milter_*_macros` on Postfix 3.7.
    fn postfix_defaults(self) -> &'static [&'static str] {
        match self {
            Stage::Connect => &["j", "{daemon_name}", "{daemon_addr}", "v", "_"],
            Stage::Helo => &[
                "{tls_version}",
                "{cipher}",
                "{cipher_bits}",
                "{cert_subject}",
                "{cert_issuer}",
            ],
            Stage::Mail => &[
                "i",
                "{auth_type}",
                "{auth_authen}",
                "{auth_author}",
                "{mail_addr}",
                "{mail_host}",
                "{mail_mailer}",
            ],
            Stage::Rcpt => &["i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"],
            Stage::Data | Stage::Eoh | Stage::Eom => &["i"],
        }
    }
}

/// A reply from the milter.
#[derive(Debug)]
pub struct Reply {
    pub kind: u8,
    pub payload: Vec<u8>,
}

impl Reply {
    /// Replies that end an event (everything but EOM's modification requests and progress).
    fn is_final(&self) -> bool {
        matches!(self.kind, b'a' | b'c' | b'd' | b'r' | b't' | b'y' | b's')
    }

    pub fn describe(&self) -> String {
        match self.kind {
            b'a' => "accept".into(),
            b'c' => "continue".into(),
            b'd' => "discard".into(),
            b'r' => "reject".into(),
            b't' => "tempfail".into(),
            b's' => "skip".into(),
            b'y' => format!(
                "reply {}",
                String::from_utf8_lossy(self.payload.strip_suffix(b"\0").unwrap_or(&self.payload))
            ),
            k => format!("reply '{}'", k as char),
        }
    }
}

/// A header the milter asked to add (`h`) or insert (`i`) at end of message.
#[derive(Debug, Clone)]
pub struct AddedHeader {
    /// Position as Sendmail counts it (0 = above the first header); `None` = append.
    pub index: Option<u32>,
    pub name: String,
    pub value: String,
}

/// The replies to an end of message: modifications, then the final reply.
#[derive(Debug)]
pub struct EomResult {
    pub headers: Vec<AddedHeader>,
    pub other_modifications: usize,
    pub last: Reply,
}

enum Transport {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Transport::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Transport::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Unix(s) => Pin::new(s).poll_flush(cx),
            Transport::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Macro values the MTA knows, by name.
pub type MacroValues = HashMap<&'static str, String>;

/// One milter connection.
pub struct MilterConn {
    stream: Transport,
    /// Packets not yet written: flushed when a reply is awaited, as Postfix's stream does.
    out: Vec<u8>,
    /// Bytes read from the milter: `input[consumed..filled]` is not yet consumed.
    input: Box<[u8]>,
    consumed: usize,
    filled: usize,
    timeout: Duration,
    /// Protocol options the milter chose.
    pub opts: u32,
    pub actions: u32,
    /// Macro lists the milter asked for, replacing Postfix's defaults for that stage.
    requested_macros: HashMap<Stage, Vec<String>>,
    /// Times the MTA waited for the milter (wrote, then read a reply): the round trips.
    pub round_trips: u64,
    /// Whether something was written since the last reply was read.
    wrote_since_reply: bool,
}

impl MilterConn {
    /// Connects and negotiates (SMFIC_OPTNEG, protocol version 6).
    pub async fn open(endpoint: &Endpoint, timeout: Duration) -> anyhow::Result<Self> {
        let stream = match endpoint {
            Endpoint::Unix(path) => Transport::Unix(
                UnixStream::connect(path)
                    .await
                    .with_context(|| format!("connect to {}", path.display()))?,
            ),
            Endpoint::Tcp(addr) => {
                let s = TcpStream::connect(addr)
                    .await
                    .with_context(|| format!("connect to {addr}"))?;
                s.set_nodelay(true)?;
                Transport::Tcp(s)
            }
        };
        let mut conn = MilterConn {
            stream,
            out: Vec::with_capacity(4096),
            input: vec![0; 8192].into_boxed_slice(),
            consumed: 0,
            filled: 0,
            timeout,
            opts: 0,
            actions: 0,
            requested_macros: HashMap::new(),
            round_trips: 0,
            wrote_since_reply: false,
        };
        conn.negotiate().await?;
        Ok(conn)
    }

    async fn negotiate(&mut self) -> anyhow::Result<()> {
        let mut payload = Vec::with_capacity(12);
        payload.extend_from_slice(&6u32.to_be_bytes());
        payload.extend_from_slice(&OFFERED_ACTIONS.to_be_bytes());
        payload.extend_from_slice(&OFFERED_OPTS.to_be_bytes());
        self.queue(b'O', &[&payload]);
        let reply = self.read_reply().await?;
        if reply.kind != b'O' || reply.payload.len() < 12 {
            bail!("negotiation: unexpected {}", reply.describe());
        }
        let word =
            |i: usize| u32::from_be_bytes(reply.payload[i..i + 4].try_into().expect("4 bytes"));
        let version = word(0);
        if version > 6 {
            bail!("negotiation: milter wants protocol version {version}");
        }
        self.actions = word(4);
        self.opts = word(8);
        let mut rest = &reply.payload[12..];
        while rest.len() >= 4 {
            let stage = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes"));
            rest = &rest[4..];
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            let names = String::from_utf8_lossy(&rest[..end]);
            if let Some(stage) = Stage::from_wire(stage) {
                self.requested_macros
                    .insert(stage, names.split_whitespace().map(String::from).collect());
            }
            rest = rest.get(end + 1..).unwrap_or_default();
        }
        Ok(())
    }

    fn has(&self, flag: u32) -> bool {
        self.opts & flag != 0
    }

    /// Whether header values go with their leading space (SMFIP_HDR_LEADSPC).
    pub fn leading_space(&self) -> bool {
        self.has(opt::LEADING_SPACE)
    }

    /// Appends one packet to the output buffer.
    fn queue(&mut self, command: u8, parts: &[&[u8]]) {
        let len: usize = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
        self.out
            .extend_from_slice(&u32::try_from(len).expect("packet < 4 GiB").to_be_bytes());
        self.out.push(command);
        for part in parts {
            self.out.extend_from_slice(part);
        }
    }

    /// Queues the SMFIC_MACRO packet that precedes event `command`: the macros of the list
    /// for `stage` (the milter's, or Postfix's default) that the MTA has values for. Like
    /// Postfix, it sends the packet even when no value is known.
    fn queue_macros(&mut self, stage: Stage, command: u8, values: &MacroValues) {
        let mut payload = vec![command];
        let default: Vec<String>;
        let names: &[String] = match self.requested_macros.get(&stage) {
            Some(list) => list,
            None => {
                default = stage
                    .postfix_defaults()
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                &default
            }
        };
        for name in names {
            let bare = name.trim_start_matches('{').trim_end_matches('}');
            let value = values
                .get(name.as_str())
                .or_else(|| values.get(format!("{{{bare}}}").as_str()))
                .or_else(|| values.get(bare));
            if let Some(value) = value {
                payload.extend_from_slice(name.as_bytes());
                payload.push(0);
                payload.extend_from_slice(value.as_bytes());
                payload.push(0);
            }
        }
        self.queue(b'D', &[&payload]);
    }

    /// Sends an event with its macros and, unless the milter chose not to reply to it,
    /// waits for the reply. `Ok(None)`: the event was skipped or needs no reply.
    async fn event(
        &mut self,
        stage: Option<Stage>,
        values: &MacroValues,
        command: u8,
        parts: &[&[u8]],
        skip_flag: u32,
        no_reply_flag: u32,
    ) -> anyhow::Result<Option<Reply>> {
        if let Some(stage) = stage {
            self.queue_macros(stage, command, values);
        }
        if self.has(skip_flag) {
            return Ok(None);
        }
        self.queue(command, parts);
        if self.has(no_reply_flag) {
            return Ok(None);
        }
        self.read_reply().await.map(Some)
    }

    pub async fn connect(
        &mut self,
        values: &MacroValues,
        hostname: &str,
        addr: IpAddr,
        port: u16,
    ) -> anyhow::Result<Option<Reply>> {
        let family = if addr.is_ipv4() { b'4' } else { b'6' };
        let mut payload = Vec::with_capacity(64);
        payload.extend_from_slice(hostname.as_bytes());
        payload.push(0);
        payload.push(family);
        payload.extend_from_slice(&port.to_be_bytes());
        payload.extend_from_slice(addr.to_string().as_bytes());
        payload.push(0);
        self.event(
            Some(Stage::Connect),
            values,
            b'C',
            &[&payload],
            opt::NO_CONNECT,
            opt::NR_CONNECT,
        )
        .await
    }

    pub async fn helo(
        &mut self,
        values: &MacroValues,
        name: &str,
    ) -> anyhow::Result<Option<Reply>> {
        self.event(
            Some(Stage::Helo),
            values,
            b'H',
            &[name.as_bytes(), b"\0"],
            opt::NO_HELO,
            opt::NR_HELO,
        )
        .await
    }

    pub async fn mail(
        &mut self,
        values: &MacroValues,
        args: &[&str],
    ) -> anyhow::Result<Option<Reply>> {
        let payload = nul_joined(args);
        self.event(
            Some(Stage::Mail),
            values,
            b'M',
            &[&payload],
            opt::NO_MAIL,
            opt::NR_MAIL,
        )
        .await
    }

    pub async fn rcpt(
        &mut self,
        values: &MacroValues,
        args: &[&str],
    ) -> anyhow::Result<Option<Reply>> {
        let payload = nul_joined(args);
        self.event(
            Some(Stage::Rcpt),
            values,
            b'R',
            &[&payload],
            opt::NO_RCPT,
            opt::NR_RCPT,
        )
        .await
    }

    pub async fn data(&mut self, values: &MacroValues) -> anyhow::Result<Option<Reply>> {
        self.event(
            Some(Stage::Data),
            values,
            b'T',
            &[],
            opt::NO_DATA,
            opt::NR_DATA,
        )
        .await
    }

    /// `value` as it appears after the colon, leading space included; the space is dropped
    /// unless the milter asked for SMFIP_HDR_LEADSPC, as Postfix does.
    pub async fn header(
        &mut self,
        values: &MacroValues,
        name: &str,
        value: &str,
    ) -> anyhow::Result<Option<Reply>> {
        let value = if self.leading_space() {
            value
        } else {
            value.strip_prefix(' ').unwrap_or(value)
        };
        // Postfix sends the end-of-header macros with every header.
        self.event(
            Some(Stage::Eoh),
            values,
            b'L',
            &[name.as_bytes(), b"\0", value.as_bytes(), b"\0"],
            opt::NO_HEADER,
            opt::NR_HEADER,
        )
        .await
    }

    pub async fn eoh(&mut self, values: &MacroValues) -> anyhow::Result<Option<Reply>> {
        self.event(
            Some(Stage::Eoh),
            values,
            b'N',
            &[],
            opt::NO_EOH,
            opt::NR_EOH,
        )
        .await
    }

    /// One SMFIC_BODY packet (at most [`BODY_CHUNK`] bytes), written straight from `chunk`.
    /// Postfix sends the end-of-data macros with every chunk.
    pub async fn body(
        &mut self,
        values: &MacroValues,
        chunk: &[u8],
    ) -> anyhow::Result<Option<Reply>> {
        debug_assert!(chunk.len() <= BODY_CHUNK);
        self.queue_macros(Stage::Eom, b'B', values);
        if self.has(opt::NO_BODY) {
            return Ok(None);
        }
        let len = u32::try_from(chunk.len() + 1).expect("chunk < 4 GiB");
        self.out.extend_from_slice(&len.to_be_bytes());
        self.out.push(b'B');
        self.write_out(chunk).await?;
        if self.has(opt::NR_BODY) {
            return Ok(None);
        }
        self.read_reply().await.map(Some)
    }

    /// SMFIC_BODYEOB and every reply up to the final one.
    pub async fn end_of_message(&mut self, values: &MacroValues) -> anyhow::Result<EomResult> {
        self.queue_macros(Stage::Eom, b'E', values);
        self.queue(b'E', &[]);
        let mut headers = Vec::new();
        let mut other_modifications = 0;
        loop {
            let reply = self.read_reply().await?;
            if reply.is_final() {
                return Ok(EomResult {
                    headers,
                    other_modifications,
                    last: reply,
                });
            }
            match reply.kind {
                b'h' => headers.push(parse_header_reply(None, &reply.payload)?),
                b'i' => {
                    let index = reply
                        .payload
                        .get(..4)
                        .context("short insert-header reply")?;
                    let index = u32::from_be_bytes(index.try_into().expect("4 bytes"));
                    headers.push(parse_header_reply(Some(index), &reply.payload[4..])?);
                }
                b'p' => {} // progress: keep waiting
                _ => other_modifications += 1,
            }
        }
    }

    /// SMFIC_ABORT: no reply; it goes out with the next event, as in Postfix.
    pub fn abort(&mut self) {
        self.queue(b'A', &[]);
    }

    /// SMFIC_QUIT, then close.
    pub async fn quit(mut self) -> anyhow::Result<()> {
        self.queue(b'Q', &[]);
        self.write_out(&[]).await?;
        let _ = self.stream.shutdown().await;
        Ok(())
    }

    /// Writes the buffered packets and then `tail` (a body chunk), in as few syscalls as the
    /// kernel allows.
    async fn write_out(&mut self, tail: &[u8]) -> anyhow::Result<()> {
        let mut bufs = [IoSlice::new(&self.out), IoSlice::new(tail)];
        let mut bufs = &mut bufs[..];
        IoSlice::advance_slices(&mut bufs, 0);
        while !bufs.is_empty() {
            let n = tokio::time::timeout(self.timeout, self.stream.write_vectored(bufs))
                .await
                .context("write timed out")?
                .context("write to the milter")?;
            if n == 0 {
                bail!("the milter closed the connection");
            }
            IoSlice::advance_slices(&mut bufs, n);
        }
        self.out.clear();
        self.wrote_since_reply = true;
        Ok(())
    }

    /// Flushes what is buffered and reads one reply packet.
    async fn read_reply(&mut self) -> anyhow::Result<Reply> {
        if !self.out.is_empty() {
            self.write_out(&[]).await?;
        }
        if self.wrote_since_reply {
            self.wrote_since_reply = false;
            self.round_trips += 1;
        }
        let header = self.read_exact(5).await?;
        let len = u32::from_be_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let kind = header[4];
        if len == 0 || len > 1 << 20 {
            bail!("bad reply length {len}");
        }
        let payload = self.read_exact(len - 1).await?;
        Ok(Reply { kind, payload })
    }

    async fn read_exact(&mut self, n: usize) -> anyhow::Result<Vec<u8>> {
        let mut result = Vec::with_capacity(n);
        loop {
            let take = (self.filled - self.consumed).min(n - result.len());
            result.extend_from_slice(&self.input[self.consumed..self.consumed + take]);
            self.consumed += take;
            if result.len() == n {
                return Ok(result);
            }
            let read = tokio::time::timeout(self.timeout, self.stream.read(&mut self.input[..]))
                .await
                .context("no reply from the milter in time")?
                .context("read from the milter")?;
            if read == 0 {
                bail!("the milter closed the connection");
            }
            self.filled = read;
            self.consumed = 0;
        }
    }
}

fn nul_joined(args: &[&str]) -> Vec<u8> {
    let mut payload = Vec::new();
    for a in args {
        payload.extend_from_slice(a.as_bytes());
        payload.push(0);
    }
    payload
}

fn parse_header_reply(index: Option<u32>, payload: &[u8]) -> anyhow::Result<AddedHeader> {
    let mut parts = payload.split(|&b| b == 0);
    let name = parts.next().context("header reply without a name")?;
    let value = parts.next().context("header reply without a value")?;
    Ok(AddedHeader {
        index,
        name: String::from_utf8_lossy(name).into_owned(),
        value: String::from_utf8_lossy(value).into_owned(),
    })
}
