//! A minimal MTA side of the milter protocol, for end-to-end tests of an installed milter:
//! sends one message through a running milter's socket as Postfix would, and prints the message
//! with the headers the milter inserted, as the MTA would deliver it.
//!
//!   milter_send unix:/run/signet-milter/signet-milter.sock message.eml > signed.eml
//!   milter_send inet:127.0.0.1:8891 message.eml > signed.eml
//!
//! The client counts as 127.0.0.1. Exit status 0 when the milter let the message through
//! (continue or accept), 1 when it tempfailed, rejected or discarded it, 2 on errors.

use indymilter::{Actions, MacroStage, ProtoOpts};
use indymilter_test::{EomAction, Status, TestConnection};
use signet_milter::message::{RawMessage, to_crlf};
use std::io::Write as _;
use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, file] = args.as_slice() else {
        eprintln!("usage: milter_send unix:PATH|inet:HOST:PORT MESSAGE_FILE");
        return ExitCode::from(2);
    };
    match send(socket, file).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("milter_send: {e}");
            ExitCode::from(2)
        }
    }
}

async fn send(socket: &str, file: &str) -> Result<bool, String> {
    let raw = std::fs::read(file).map_err(|e| format!("{file}: {e}"))?;
    let message = RawMessage::split(&raw);
    let builder = TestConnection::configure()
        .available_actions(Actions::all())
        .available_opts(ProtoOpts::all())
        .exact_leading_space(true);
    let mut conn = if let Some(path) = socket.strip_prefix("unix:") {
        builder.open_unix(path).await
    } else if let Some(addr) = socket.strip_prefix("inet:") {
        builder.open_tcp(addr).await
    } else {
        return Err(format!("{socket}: expected unix:PATH or inet:HOST:PORT"));
    }
    .map_err(|e| format!("cannot connect to {socket}: {e}"))?;
    let err = |e: indymilter_test::TestError| e.to_string();

    let status = conn
        .connect("localhost", [127, 0, 0, 1])
        .await
        .map_err(err)?;
    if !proceeds(&status) {
        return Ok(report(&status));
    }
    conn.macros(MacroStage::Mail, [("i", "MILTERSEND1")])
        .await
        .map_err(err)?;
    let status = conn.mail(["<milter-send@localhost>"]).await.map_err(err)?;
    if status != Status::Continue {
        return print(&[], &raw, status);
    }
    for (name, value) in &message.headers {
        let name = String::from_utf8_lossy(name).into_owned();
        let value = String::from_utf8_lossy(value).into_owned();
        conn.header(name, value).await.map_err(err)?;
    }
    let status = conn.eoh().await.map_err(err)?;
    if status != Status::Continue {
        return print(&[], &raw, status);
    }
    let body = to_crlf(message.body);
    if !body.is_empty() {
        conn.body(body).await.map_err(err)?;
    }
    let (actions, status) = conn.eom().await.map_err(err)?;
    let mut inserted = Vec::new();
    for action in actions.actions {
        match action {
            EomAction::InsertHeader {
                index: 0,
                name,
                value,
            } => inserted.insert(
                0,
                (
                    name.to_string_lossy().into_owned(),
                    value.to_string_lossy().into_owned(),
                ),
            ),
            other => return Err(format!("unexpected action {other:?}")),
        }
    }
    let _ = conn.close().await;
    print(&inserted, &raw, status)
}

fn proceeds(status: &Status) -> bool {
    matches!(status, Status::Continue | Status::Accept)
}

fn report(status: &Status) -> bool {
    eprintln!("milter_send: milter answered {status:?}");
    proceeds(status)
}

/// The delivered message: inserted headers on top (milter folds with LF), CRLF throughout.
fn print(inserted: &[(String, String)], raw: &[u8], status: Status) -> Result<bool, String> {
    if !proceeds(&status) {
        return Ok(report(&status));
    }
    let mut out = Vec::new();
    for (name, value) in inserted {
        out.extend_from_slice(format!("{name}:{}\r\n", value.replace('\n', "\r\n")).as_bytes());
    }
    out.extend_from_slice(&to_crlf(raw));
    std::io::stdout()
        .write_all(&out)
        .map_err(|e| e.to_string())?;
    Ok(true)
}
