//! A Vault-API server that misbehaves on demand: slow answers, garbage, dropped connections,
//! HTTP errors, or a clean stop (connection refused) and restart on the same port. When it
//! behaves, it serves KV v2 reads in Vault's exact JSON envelope (as captured from OpenBao), so
//! the real client parses them. It counts the requests it receives.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Clone, Debug)]
pub enum Behaviour {
    Normal,
    /// Answers normally after this delay.
    Slow(Duration),
    /// 200 with a body that is not JSON.
    Garbage,
    /// Reads the request, then closes the connection without a word.
    Drop,
    /// This status with Vault's error body.
    Status(u16, &'static str),
}

pub struct FakeVault {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: Option<JoinHandle<()>>,
}

struct State {
    behaviour: Mutex<Behaviour>,
    /// KV v2 secrets by `mount/path`: field → value.
    secrets: Mutex<HashMap<String, HashMap<String, String>>>,
    requests: AtomicUsize,
    tokens: Mutex<Vec<String>>,
}

impl FakeVault {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            behaviour: Mutex::new(Behaviour::Normal),
            secrets: Mutex::new(HashMap::new()),
            requests: AtomicUsize::new(0),
            tokens: Mutex::new(Vec::new()),
        });
        let task = Some(tokio::spawn(serve(listener, state.clone())));
        FakeVault { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn put(&self, mount_path: &str, field: &str, value: &str) {
        self.state
            .secrets
            .lock()
            .unwrap()
            .entry(mount_path.to_string())
            .or_default()
            .insert(field.to_string(), value.to_string());
    }

    pub fn behave(&self, behaviour: Behaviour) {
        *self.state.behaviour.lock().unwrap() = behaviour;
    }

    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// The `X-Vault-Token` values received, in order.
    pub fn tokens_seen(&self) -> Vec<String> {
        self.state.tokens.lock().unwrap().clone()
    }

    /// Stops listening: new connections are refused.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same address, with the same secrets.
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.task = Some(tokio::spawn(serve(listener, self.state.clone())));
    }
}

impl Drop for FakeVault {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(answer(stream, state.clone()));
    }
}

async fn answer(mut stream: TcpStream, state: Arc<State>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // One request per connection is enough for the client (it reconnects when we close).
    let head_end = loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    state.requests.fetch_add(1, Ordering::SeqCst);
    let mut lines = head.lines();
    let target = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("/")
        .to_string();
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("x-vault-token")
        {
            state.tokens.lock().unwrap().push(value.trim().to_string());
        }
    }
    let behaviour = state.behaviour.lock().unwrap().clone();
    let (status, body) = match behaviour {
        Behaviour::Drop => return,
        Behaviour::Garbage => (
            200,
            "<html>surprise, -----BEGIN PRIVATE KEY----- not json".into(),
        ),
        Behaviour::Status(code, body) => (code, body.to_string()),
        Behaviour::Slow(delay) => {
            tokio::time::sleep(delay).await;
            kv2_read(&state, &target)
        }
        Behaviour::Normal => kv2_read(&state, &target),
    };
    let reason = match status {
        200 => "OK",
        403 => "Forbidden",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// `GET /v1/<mount>/data/<path>` in the envelope OpenBao 2.7 sends.
fn kv2_read(state: &State, target: &str) -> (u16, String) {
    let path = target.split('?').next().unwrap_or("");
    let Some(rest) = path.strip_prefix("/v1/") else {
        return (404, r#"{"errors":[]}"#.into());
    };
    let Some((mount, secret)) = rest.split_once("/data/") else {
        return (404, r#"{"errors":[]}"#.into());
    };
    let secrets = state.secrets.lock().unwrap();
    let Some(fields) = secrets.get(&format!("{mount}/{secret}")) else {
        return (404, r#"{"errors":[]}"#.into());
    };
    let data = serde_json::json!({
        "request_id": "e23e8b9b-5d5e-4bd3-8f0e-7ac1f26e8c43",
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": {
            "data": fields,
            "metadata": {
                "created_time": "2026-11-22T02:13:04.845795377Z",
                "custom_metadata": null,
                "deletion_time": "",
                "destroyed": false,
                "version": 1
            }
        },
        "wrap_info": null,
        "warnings": null,
        "auth": null,
        "mount_type": "kv"
    });
    (200, data.to_string())
}
