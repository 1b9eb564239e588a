//! The unix socket's life: stale files from a dead process are replaced, anything else is left
//! alone, the mode is applied, and the file is removed at shutdown.

use signet_milter::config::Config;
use signet_milter::server;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};

fn settings(socket: &std::path::Path, mode: &str) -> Config {
    let text = format!(
        "[milter]\nlisten = \"unix:{}\"\nsocket_mode = \"{mode}\"\n",
        socket.display()
    );
    Config::parse(&text, std::path::Path::new("t.toml")).unwrap()
}

#[tokio::test]
async fn stale_socket_is_replaced_and_mode_applied() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("m.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap()); // a dead process's leftover
    assert!(socket.exists());
    let config = settings(&socket, "0660");
    let listener = server::bind(&config.milter)
        .await
        .expect("stale socket replaced");
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert!(
        std::os::unix::net::UnixStream::connect(&socket).is_ok(),
        "listening"
    );

    // A second instance must not steal a live socket.
    let err = server::bind(&config.milter)
        .await
        .err()
        .expect("live socket kept");
    assert!(err.to_string().contains("in use"), "{err}");
    drop(listener);
    assert!(!socket.exists(), "removed when the listener goes away");
}

#[tokio::test]
async fn a_regular_file_at_the_socket_path_is_never_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("important.txt");
    std::fs::write(&path, "keep me").unwrap();
    let err = server::bind(&settings(&path, "0660").milter)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
}

#[tokio::test]
async fn socket_group_is_applied_and_an_unknown_group_is_an_error() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("g.sock");
    // SAFETY: getegid has no preconditions.
    let gid = unsafe { libc::getegid() };
    let name = String::from_utf8(
        std::process::Command::new("id")
            .arg("-gn")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    for group in [name.trim().to_string(), gid.to_string()] {
        let text = format!(
            "[milter]\nlisten = \"unix:{}\"\nsocket_group = \"{group}\"\n",
            socket.display()
        );
        let config = Config::parse(&text, std::path::Path::new("t.toml")).unwrap();
        let listener = server::bind(&config.milter)
            .await
            .unwrap_or_else(|e| panic!("{group}: {e}"));
        assert_eq!(std::fs::metadata(&socket).unwrap().gid(), gid, "{group}");
        drop(listener);
    }
    let text = format!(
        "[milter]\nlisten = \"unix:{}\"\nsocket_group = \"no-such-group-x\"\n",
        socket.display()
    );
    let config = Config::parse(&text, std::path::Path::new("t.toml")).unwrap();
    let err = server::bind(&config.milter)
        .await
        .err()
        .expect("unknown group refused");
    assert!(
        err.to_string()
            .contains("unknown group \"no-such-group-x\""),
        "{err}"
    );
}
