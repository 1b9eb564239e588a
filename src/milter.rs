//! The milter protocol side: thin indymilter callbacks that hand each stage of a message to a
//! [`MessageSession`] and carry out its [`Verdict`] (which also writes the message's log line
//! and counts it).

use crate::policy::{ClientAddr, Origin};
use crate::runtime::Runtime;
use crate::session::{Envelope, MessageSession};
use crate::verdict::{Action, Reply, Verdict};
use arc_swap::ArcSwap;
use indymilter::{
    Actions, Callbacks, Context, ContextActions as _, EomContext, MacroStage, Macros,
    NegotiateContext, ProtoOpts, SetErrorReply as _, SocketInfo, Status,
};
use std::ffi::{CStr, CString};
use std::sync::Arc;
use tokio::sync::watch;
use tracing::warn;

/// Macros requested per stage. Postfix starts from an empty list when a milter asks, so every
/// stage lists everything it needs.
const MACROS: &[(MacroStage, &str)] = &[
    (
        MacroStage::Connect,
        "j {daemon_name} {client_addr} {client_name}",
    ),
    (MacroStage::Mail, "i {auth_type} {auth_authen} {mail_addr}"),
    (MacroStage::Data, "i"),
    (MacroStage::Eoh, "i"),
    (MacroStage::Eom, "i"),
];

/// Per connection: who the client is, and the message under way.
pub struct Connection {
    leading_space: bool,
    /// What the MTA expects after a header and after a body chunk: `Noreply` when it agreed
    /// not to wait for an answer, `Continue` otherwise.
    header_reply: Status,
    body_reply: Status,
    client: ClientAddr,
    message: Option<Message>,
}

struct Message {
    session: MessageSession,
    /// Counts the message as in flight until it is finished, refused or aborted.
    _in_flight: InFlightGuard,
}

/// The number of messages between `MAIL FROM` and their end (signed, refused, skipped or
/// aborted), so that a shutdown can let them finish first.
#[derive(Clone)]
pub struct MessagesInFlight(Arc<watch::Sender<usize>>);

impl Default for MessagesInFlight {
    fn default() -> Self {
        MessagesInFlight(Arc::new(watch::Sender::new(0)))
    }
}

impl MessagesInFlight {
    fn start(&self) -> InFlightGuard {
        self.0.send_modify(|n| *n += 1);
        InFlightGuard(self.0.clone())
    }

    pub fn count(&self) -> usize {
        *self.0.borrow()
    }

    /// Completes when no message is in flight.
    pub async fn idle(&self) {
        let mut count = self.0.subscribe();
        // The sender lives in `self`, so waiting cannot fail.
        let _ = count.wait_for(|n| *n == 0).await;
    }
}

struct InFlightGuard(Arc<watch::Sender<usize>>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// The callbacks of a signing milter reading its rules from `runtime`.
pub fn callbacks(
    runtime: Arc<ArcSwap<Runtime>>,
    in_flight: MessagesInFlight,
) -> Callbacks<Connection> {
    let on_mail = runtime.clone();
    Callbacks::new()
        .on_negotiate(|cx, _actions, opts| Box::pin(negotiate(cx, opts)))
        .on_connect(|cx, _hostname, socket| Box::pin(connect(cx, socket)))
        .on_mail(move |cx, args| {
            let runtime = on_mail.load_full();
            let in_flight = in_flight.clone();
            Box::pin(mail(cx, runtime, in_flight, args))
        })
        .on_header(|cx, name, value| Box::pin(header(cx, name, value)))
        .on_eoh(|cx| Box::pin(eoh(cx)))
        .on_body(|cx, chunk| Box::pin(body(cx, chunk)))
        .on_eom(|cx| Box::pin(eom(cx)))
        .on_abort(|cx| Box::pin(abort(cx)))
        .on_close(|cx| Box::pin(close(cx)))
}

async fn negotiate(cx: &mut NegotiateContext<Connection>, offered: ProtoOpts) -> Status {
    // Header values with their leading space let the header section be rebuilt byte for byte,
    // which `simple` header canonicalization needs.
    let leading_space = offered.contains(ProtoOpts::LEADING_SPACE);
    if leading_space {
        cx.requested_opts |= ProtoOpts::LEADING_SPACE;
    }
    // A signer never stops a message at a header or a body chunk, so when the MTA allows it,
    // it sends them without waiting for an answer: one round trip per header and per 64 KiB
    // of body saved (a 2 KiB message: 13 round trips down to 3).
    let no_reply = offered & (ProtoOpts::NOREPLY_HEADER | ProtoOpts::NOREPLY_BODY);
    cx.requested_opts |= no_reply;
    let reply_unless = |flag| {
        if no_reply.contains(flag) {
            Status::Noreply
        } else {
            Status::Continue
        }
    };
    cx.requested_actions |= Actions::ADD_HEADER;
    for (stage, names) in MACROS {
        cx.requested_macros.insert(
            *stage,
            CString::new(*names).expect("macro names have no NUL"),
        );
    }
    cx.data = Some(Connection {
        leading_space,
        header_reply: reply_unless(ProtoOpts::NOREPLY_HEADER),
        body_reply: reply_unless(ProtoOpts::NOREPLY_BODY),
        client: ClientAddr::Unknown,
        message: None,
    });
    Status::Continue
}

async fn connect(cx: &mut Context<Connection>, socket: SocketInfo) -> Status {
    let client = match socket {
        SocketInfo::Inet(addr) => ClientAddr::Ip(addr.ip()),
        // No network peer: a local submission (Sendmail's command line, a unix-socket listener).
        SocketInfo::Unix(_) | SocketInfo::Unknown => macro_str(&cx.macros, c"{client_addr}")
            .and_then(|a| a.parse().ok())
            .map_or(ClientAddr::Local, ClientAddr::Ip),
    };
    if let Some(conn) = cx.data.as_mut() {
        conn.client = client;
    }
    Status::Continue
}

// Every callback below finds its connection state where `negotiate` put it; should it be
// missing (it cannot be), the message is tempfailed rather than passed unsigned.

async fn mail(
    cx: &mut Context<Connection>,
    runtime: Arc<Runtime>,
    in_flight: MessagesInFlight,
    args: Vec<CString>,
) -> Status {
    let Some(conn) = cx.data.as_mut() else {
        return Status::Tempfail;
    };
    conn.message = None;
    let envelope = Envelope {
        origin: Origin {
            client: conn.client.clone(),
            auth_user: macro_str(&cx.macros, c"{auth_authen}"),
            auth_type: macro_str(&cx.macros, c"{auth_type}"),
            daemon_name: macro_str(&cx.macros, c"{daemon_name}"),
        },
        sender: args.first().map(|a| a.to_string_lossy().into_owned()),
    };
    match MessageSession::begin(runtime.clone(), envelope, conn.leading_space) {
        Ok(session) => {
            conn.message = Some(Message {
                session,
                _in_flight: in_flight.start(),
            });
            Status::Continue
        }
        // Accept now, so the MTA does not stream the message to us for nothing.
        Err(verdict) => carry_out(&verdict, &runtime, &queue_id(&cx.macros), &mut cx.reply),
    }
}

async fn header(cx: &mut Context<Connection>, name: CString, value: CString) -> Status {
    let Some(conn) = cx.data.as_mut() else {
        return Status::Tempfail;
    };
    if let Some(message) = conn.message.as_mut() {
        message
            .session
            .add_header(name.as_bytes(), value.as_bytes());
    }
    conn.header_reply
}

async fn eoh(cx: &mut Context<Connection>) -> Status {
    let Some(conn) = cx.data.as_mut() else {
        return Status::Tempfail;
    };
    let Some(message) = conn.message.as_mut() else {
        return Status::Continue;
    };
    match message.session.end_of_headers().await {
        None => Status::Continue,
        Some(verdict) => {
            let runtime = message.session.runtime().clone();
            conn.message = None;
            carry_out(&verdict, &runtime, &queue_id(&cx.macros), &mut cx.reply)
        }
    }
}

async fn body(cx: &mut Context<Connection>, chunk: bytes::Bytes) -> Status {
    let Some(conn) = cx.data.as_mut() else {
        return Status::Tempfail;
    };
    if let Some(message) = conn.message.as_mut() {
        message.session.body_chunk(&chunk);
    }
    conn.body_reply
}

async fn eom(cx: &mut EomContext<Connection>) -> Status {
    let Some(conn) = cx.data.as_mut() else {
        return Status::Tempfail;
    };
    let Some(message) = conn.message.take() else {
        return Status::Continue;
    };
    let queue_id = queue_id(&cx.macros);
    // The in-flight guard lives to the end of this function: shutdown waits for the reply.
    let Message {
        session,
        _in_flight,
    } = message;
    let runtime = session.runtime().clone();
    // Slow key operations (RSA, Transit, PKCS#11) run off the connection workers: see
    // `SigningKey::sign`.
    let verdict = session.finish().await;
    for signed in verdict.signed() {
        // RFC 6376 §5.6: above any existing DKIM-Signature; index 0 is the top of the header.
        if let Err(e) = cx
            .actions
            .insert_header(0, "DKIM-Signature", signed.value.as_str())
            .await
        {
            warn!(queue_id = %queue_id, error = %e, "could not add the DKIM-Signature header");
            return Status::Tempfail;
        }
    }
    carry_out(&verdict, &runtime, &queue_id, &mut cx.reply)
}

async fn abort(cx: &mut Context<Connection>) -> Status {
    if let Some(conn) = cx.data.as_mut() {
        conn.message = None;
    }
    Status::Continue
}

async fn close(cx: &mut Context<Connection>) -> Status {
    cx.data = None;
    Status::Continue
}

/// Logs and counts a verdict and answers the MTA with it (the headers of a signed message
/// are added before, at end of message). The reply text is ours, short and single-line;
/// should the MTA reject it, its default reply stands.
fn carry_out(
    verdict: &Verdict,
    runtime: &Runtime,
    queue_id: &str,
    reply: &mut indymilter::SmtpReply,
) -> Status {
    verdict.log(queue_id);
    verdict.count(&runtime.env.metrics);
    let mut set_reply = |r: &Reply| {
        let _ = reply.set_error_reply(r.code, Some(r.enhanced), [r.text.as_str()]);
    };
    match verdict.action() {
        Action::Accept => Status::Accept,
        Action::Sign(_) => Status::Continue,
        Action::Tempfail(r) => {
            set_reply(&r);
            Status::Tempfail
        }
        Action::Reject(r) => {
            set_reply(&r);
            Status::Reject
        }
    }
}

fn macro_str(macros: &Macros, name: &CStr) -> Option<String> {
    macros
        .get(name)
        .map(|v| v.to_string_lossy().into_owned())
        .filter(|v| !v.is_empty())
}

fn queue_id(macros: &Macros) -> String {
    macro_str(macros, c"i").unwrap_or_else(|| "-".into())
}
