//! Key rotation against a real authoritative DNS server (BIND 9 `named`, started per test with
//! a TSIG key and dynamic zones), with mail flowing through the milter over the milter
//! protocol and every signature verified by dkimpy and libopendkim asking that server.
//!
//! Periods are seconds, so these tests wait real seconds for windows to open; they wait for
//! the state to change (polling its file), never assert how long anything took.

mod common;

use common::dynamic_dns::{Bind, verify_dkimpy_at, verify_opendkim_at};
use common::openbao::OpenBao;
use common::{Message, TestMilter, loopback, send};
use signet_milter::config::{Config, SignatureLabel};
use signet_milter::keys::generate::{
    GeneratedKey, KeyKind, generate, write_key_files, write_private_key,
};
use signet_milter::rotation::service::Rotator;
use signet_milter::rotation::state::{Phase, SlotState, StateDir};
use signet_milter::rotation::{self};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the server answered for one selector: (wall-clock ms, selector, TXT values).
type Sample = (u64, String, Vec<String>);

/// Generous bound for a state to be reached; only a broken rotation gets near it.
const PATIENCE: Duration = Duration::from_secs(120);

fn label() -> SignatureLabel {
    SignatureLabel::Domain("example.com".into())
}

fn state_of(root: &Path) -> Option<SlotState> {
    StateDir::new(root.join("state"))
        .load("example.com", &label())
        .unwrap()
}

fn phase_of(state: &Option<SlotState>, selector: &str) -> Option<Phase> {
    state
        .as_ref()?
        .keys
        .iter()
        .find(|k| k.selector == selector)
        .map(|k| k.phase)
}

/// A test's own directory: `keys/<domain>/<selector>.key` and `state/`.
struct Setup {
    milter: TestMilter,
    bind: Bind,
    root: tempfile::TempDir,
    /// The signing table and `[rotation]`, to start the milter again with.
    table: String,
    first: GeneratedKey,
}

impl Setup {
    fn config_path(&self) -> PathBuf {
        self.milter.dir.path().join("signet-milter.toml")
    }
}

/// BIND serving example.com with the configured key `s1` published, and a milter whose
/// `[domain."example.com"]` rotates: `section(root, bind)` gives the `[rotation]` section.
async fn setup(
    kind: KeyKind,
    domain_entry_key: &str,
    section: impl FnOnce(&Path, &Bind) -> String,
) -> Setup {
    let root = tempfile::tempdir().unwrap();
    let first = generate(kind).unwrap();
    let bind = Bind::start(&[(
        "example.com",
        &[txt_line("s1._domainkey", &first.key.dns_record())],
    )]);
    let key = if domain_entry_key.is_empty() {
        write_key_files(&root.path().join("keys"), "example.com", "s1", &first).unwrap();
        format!(
            "filename = \"{}/keys/{{domain}}/{{selector}}.key\"",
            root.path().display()
        )
    } else {
        domain_entry_key.to_string()
    };
    let table = format!(
        "[domain.\"example.com\"]\nselector = \"s1\"\n{key}\n{}",
        section(root.path(), &bind)
    );
    let milter = TestMilter::start(&[], "", &table).await;
    Setup {
        milter,
        bind,
        root,
        table,
        first,
    }
}

/// The `[rotation]` section for a test: `servers` is the gate, updates go to `update_to`.
fn rotation_section(
    root: &Path,
    servers: &[SocketAddr],
    update_to: SocketAddr,
    tsig: &Path,
    timing: &str,
) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[rotation]\ndomains = [\"example.com\"]\nstate_directory = \"{}\"\nselector = \"k{{counter}}\"\ndns_servers = [{}]\n{timing}\n\
         [rotation.dns_update]\nserver = \"{update_to}\"\ntsig_key_file = \"{}\"\nttl = \"1s\"\ntimeout = \"2s\"\n",
        root.join("state").display(),
        servers.join(", "),
        tsig.display()
    )
}

fn txt_line(owner: &str, value: &str) -> String {
    let strings: Vec<String> = value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!("{owner} 1 IN TXT ( {} )", strings.join(" "))
}

/// One message from alice@example.com through `milter` is signed with `selector` only, and
/// both verifiers pass it, asking `dns` for the key.
async fn assert_signs_and_verifies(milter: &TestMilter, dns: SocketAddr, selector: &str) {
    let mut conn = milter.connect(loopback()).await;
    let message = Message::simple("alice@example.com");
    let sent = send(&mut conn, &[], &message).await;
    assert_eq!(selectors(&sent), [selector]);
    let raw = message.delivered(&sent.inserted);
    let (ok, report) = verify_dkimpy_at(&raw, dns, &[("example.com", selector)]);
    assert!(ok, "{report}");
    let (ok, report) = verify_opendkim_at(&raw, dns);
    assert!(ok, "{report}");
}

/// The `s=` of each DKIM-Signature inserted.
fn selectors(sent: &common::Sent) -> Vec<String> {
    sent.inserted
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("DKIM-Signature"))
        .filter_map(|(_, v)| {
            v.split(';')
                .filter_map(|t| t.split_once('='))
                .find(|(k, _)| k.trim() == "s")
                .map(|(_, s)| s.trim().to_string())
        })
        .collect()
}

/// Rounds (as the milter's task makes one every check_interval) until `selector` is `phase`.
async fn rounds_until(rotator: &mut Rotator, root: &Path, selector: &str, phase: Phase) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while phase_of(&state_of(root), selector) != Some(phase) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{selector} never {phase}: {:#?}",
            state_of(root)
        );
        rotator.round(None).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_rotation_while_mail_flows_never_signs_with_an_unserved_selector() {
    let Setup { milter, bind, root, .. } = setup(KeyKind::Rsa2048, "", |root, bind| {
        rotation_section(
            root,
            &[bind.addr],
            bind.addr,
            &bind.tsig_key_file,
            "check_interval = \"300ms\"\nrotate_after = \"3s\"\nactivate_after = \"1s\"\nconfirmations = 2\noverlap = \"2s\"\nremove_after = \"1s\"",
        )
    })
    .await;
    let root = root.path();
    let server = bind.addr;

    // The server's answers for every selector, sampled all along.
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (samples, sampling) = (samples.clone(), sampling.clone());
        let port = bind.addr.port().to_string();
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                for selector in ["s1", "k1", "k2"] {
                    let name = format!("{selector}._domainkey.example.com");
                    let out = std::process::Command::new("dig")
                        .args([
                            "+short",
                            "+time=1",
                            "+tries=1",
                            "-p",
                            &port,
                            "@127.0.0.1",
                            &name,
                            "TXT",
                        ])
                        .output()
                        .unwrap();
                    let values: Vec<String> = String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .map(|l| l.split('"').skip(1).step_by(2).collect::<Vec<_>>().concat())
                        .collect();
                    let now = rotation::clock::wall_ms();
                    samples
                        .lock()
                        .unwrap()
                        .push((now, selector.to_string(), values));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let task = Rotator::new(milter.runtime.clone()).spawn();
    let mut conn = milter.connect(loopback()).await;
    let message = Message::simple("alice@example.com");
    let mut signed_with: Vec<(u64, String)> = Vec::new();
    let mut s1_retired_ms = None;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let before = rotation::clock::wall_ms();
        let sent = send(&mut conn, &[], &message).await;
        let used = selectors(&sent);
        assert_eq!(used.len(), 1, "one signature per message");
        let selector = used[0].clone();
        // Right after it was signed, both verifiers, asking the server, accept the signature.
        let raw = message.delivered(&sent.inserted);
        let (ok, report) = verify_dkimpy_at(&raw, server, &[("example.com", &selector)]);
        assert!(ok, "dkimpy, signed with {selector}: {report}");
        let (ok, report) = verify_opendkim_at(&raw, server);
        assert!(ok, "libopendkim, signed with {selector}: {report}");
        signed_with.push((before, selector));

        let state = state_of(root);
        if let Some(s1) = state
            .as_ref()
            .and_then(|s| s.keys.iter().find(|k| k.selector == "s1"))
        {
            s1_retired_ms = s1.retired_ms.or(s1_retired_ms);
        }
        let s1_gone = state.as_ref().is_some_and(|s| !s.uses("s1"));
        if s1_gone && phase_of(&state, "k1").is_some_and(|p| p != Phase::Pending) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rotation did not finish: {state:#?}\n{}",
            bind.log()
        );
    }
    task.abort();
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();

    assert!(
        signed_with.iter().any(|(_, s)| s == "s1"),
        "mail was signed before the rotation"
    );
    let first_k1 = signed_with
        .iter()
        .find(|(_, s)| s == "k1")
        .map(|(t, _)| *t)
        .expect("mail was signed with the new key k1");
    assert!(
        signed_with
            .iter()
            .filter(|(t, _)| *t > first_k1)
            .all(|(_, s)| s != "s1"),
        "no message goes back to the retired key: {signed_with:?}"
    );
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    // Every message carried a selector the server was serving when the message started.
    for (at, selector) in &signed_with {
        let served_before = samples
            .iter()
            .any(|(t, s, v)| s == selector && !v.is_empty() && !v[0].ends_with("p=") && t <= at);
        assert!(
            served_before || selector == "s1",
            "{selector} at {at} was not served before"
        );
    }
    let s1_record = samples
        .iter()
        .find(|(_, s, v)| s == "s1" && !v.is_empty())
        .unwrap()
        .2[0]
        .clone();
    // The old record stayed, unchanged, until its overlap ended.
    let overlap_end = s1_retired_ms.expect("s1 was seen retiring") + 2000;
    for (t, _, v) in samples.iter().filter(|(_, s, _)| s == "s1") {
        if *t < overlap_end {
            assert_eq!(
                v,
                &vec![s1_record.clone()],
                "s1 at {t} (overlap ends {overlap_end})"
            );
        }
    }
    // Then it was revoked (p= empty), and at the end removed.
    assert!(
        samples
            .iter()
            .any(|(t, s, v)| s == "s1" && *t >= overlap_end && v.iter().any(|r| r.ends_with("p="))),
        "s1 revoked after the overlap"
    );
    assert!(
        bind.txt("s1._domainkey.example.com").is_empty(),
        "s1 removed at the end"
    );
    assert!(
        root.join("state/archive/example.com/s1.key").exists(),
        "the retired private key is archived"
    );
    assert!(!root.join("keys/example.com/s1.key").exists());
    let metrics = milter.runtime.load().env.metrics.encode();
    assert!(
        metrics.contains("signet_rotation_transitions_total{phase=\"active\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("signet_rotation_keys{phase=\"active\"} 1"),
        "{metrics}"
    );
    milter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_updater_that_is_down_or_refuses_the_tsig_key_leaves_the_current_key_signing() {
    let timing = "check_interval = \"1h\"\nrotate_after = \"3s\"\nactivate_after = \"0s\"\nconfirmations = 1\noverlap = \"2s\"";
    let mut wrong_key = PathBuf::new();
    let mut setup = setup(KeyKind::Ed25519, "", |root, bind| {
        // A key the server does not know: every update is refused (TSIG BADKEY).
        let made = common::dynamic_dns::tsig_key(root);
        let text = std::fs::read_to_string(&made)
            .unwrap()
            .replace(common::dynamic_dns::TSIG_NAME, "not-the-key");
        wrong_key = root.join("wrong-tsig.key");
        std::fs::write(&wrong_key, text).unwrap();
        rotation_section(root, &[bind.addr], bind.addr, &wrong_key, timing)
    })
    .await;
    let root = setup.root.path().to_owned();
    let metrics = setup.milter.runtime.load().env.metrics.clone();
    let mut rotator = Rotator::new(setup.milter.runtime.clone());
    let mut conn = setup.milter.connect(loopback()).await;
    let message = Message::simple("alice@example.com");

    // The next key now; its publication is refused.
    rotator.round(Some(&[label()])).await;
    let refused = metrics.rotation_failures("publish");
    assert!(refused >= 1, "the refused update is counted");
    assert_eq!(phase_of(&state_of(&root), "k1"), Some(Phase::Pending));
    assert!(setup.bind.txt("k1._domainkey.example.com").is_empty());
    let sent = send(&mut conn, &[], &message).await;
    assert_eq!(selectors(&sent), ["s1"], "the current key keeps signing");
    let (ok, report) = verify_opendkim_at(&message.delivered(&sent.inserted), setup.bind.addr);
    assert!(ok, "{report}");

    // The operator fixes the key and reloads; now the server is down.
    let config_path = setup.config_path();
    let text = std::fs::read_to_string(&config_path).unwrap();
    let fixed = text.replace(
        &wrong_key.display().to_string(),
        &setup.bind.tsig_key_file.display().to_string(),
    );
    std::fs::write(&config_path, fixed).unwrap();
    assert!(signet_milter::server::reload(&config_path, &setup.milter.runtime).await);
    setup.bind.stop();
    rotator.round(None).await;
    assert!(
        metrics.rotation_failures("publish") > refused,
        "the unreachable updater is counted"
    );
    assert_eq!(phase_of(&state_of(&root), "k1"), Some(Phase::Pending));
    let sent = send(&mut conn, &[], &message).await;
    assert_eq!(selectors(&sent), ["s1"], "still the current key");

    // The server is back: the rotation resumes where it stopped.
    setup.bind.restart();
    rounds_until(&mut rotator, &root, "k1", Phase::Active).await;
    let sent = send(&mut conn, &[], &message).await;
    assert_eq!(selectors(&sent), ["k1"]);
    let raw = message.delivered(&sent.inserted);
    let (ok, report) = verify_dkimpy_at(&raw, setup.bind.addr, &[("example.com", "k1")]);
    assert!(ok, "{report}");
    let (ok, report) = verify_opendkim_at(&raw, setup.bind.addr);
    assert!(ok, "{report}");
    setup.milter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activation_waits_for_every_gate_server_including_a_lagging_one() {
    let mut second = None;
    let setup = setup(KeyKind::Ed25519, "", |root, bind| {
        let zone = std::fs::read_to_string(bind.dir.path().join("example.com.zone")).unwrap();
        let s1_line = zone.lines().find(|l| l.starts_with("s1._domainkey")).unwrap().to_string();
        let lagging = Bind::start_with_key(&[("example.com", &[s1_line])], &bind.tsig_key_file, tempfile::tempdir().unwrap());
        let section = rotation_section(
            root,
            &[bind.addr, lagging.addr],
            bind.addr,
            &bind.tsig_key_file,
            "check_interval = \"1h\"\nrotate_after = \"3s\"\nactivate_after = \"0s\"\nconfirmations = 2\noverlap = \"2s\"",
        );
        second = Some(lagging);
        section
    })
    .await;
    let second = second.unwrap();
    let (bind, root) = (&setup.bind, setup.root.path());
    let mut rotator = Rotator::new(setup.milter.runtime.clone());
    rotator.round(Some(&[label()])).await;
    assert!(
        !bind.txt("k1._domainkey.example.com").is_empty(),
        "published at the primary"
    );
    assert!(
        second.txt("k1._domainkey.example.com").is_empty(),
        "not at the second server"
    );
    // However many looks: the second server does not serve it, so k1 stays pending.
    for _ in 0..4 {
        rotator.round(None).await;
        assert_eq!(phase_of(&state_of(root), "k1"), Some(Phase::Pending));
    }
    let mut conn = setup.milter.connect(loopback()).await;
    let message = Message::simple("alice@example.com");
    assert_eq!(selectors(&send(&mut conn, &[], &message).await), ["s1"]);

    // The second server catches up: two looks in a row later, k1 signs.
    let record = bind.txt("k1._domainkey.example.com")[0].clone();
    second.set_txt("example.com", "k1._domainkey.example.com", &record);
    rotator.round(None).await;
    assert_eq!(
        phase_of(&state_of(root), "k1"),
        Some(Phase::Pending),
        "one look is not enough"
    );
    rotator.round(None).await;
    assert_eq!(phase_of(&state_of(root), "k1"), Some(Phase::Active));
    let sent = send(&mut conn, &[], &message).await;
    assert_eq!(selectors(&sent), ["k1"]);
    for server in [bind.addr, second.addr] {
        let (ok, report) = verify_dkimpy_at(
            &message.delivered(&sent.inserted),
            server,
            &[("example.com", "k1")],
        );
        assert!(ok, "{server}: {report}");
    }
    setup.milter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_rotation_resumes_from_the_state_without_a_second_key() {
    let setup = setup(KeyKind::Ed25519, "", |root, bind| {
        rotation_section(
            root,
            &[bind.addr],
            bind.addr,
            &bind.tsig_key_file,
            "check_interval = \"1h\"\nrotate_after = \"30d\"\nactivate_after = \"0s\"\nconfirmations = 1\noverlap = \"1d\"",
        )
    })
    .await;
    let root = setup.root.path();
    let store = StateDir::new(root.join("state"));
    Rotator::new(setup.milter.runtime.clone()).round(None).await;
    // A crash right after the selector was written down and its key written, before the
    // state recorded the key: k1 pending, "not stored", and a key file already there.
    let mut state = state_of(root).unwrap();
    let now = rotation::clock::wall_ms();
    state.counter = 1;
    let mut pending = state.keys[0].clone();
    pending.selector = "k1".into();
    pending.phase = Phase::Pending;
    pending.stored = false;
    pending.record = None;
    pending.bootstrap = false;
    pending.created_ms = now;
    pending.not_before_ms = now;
    pending.activated_ms = None;
    state.keys.push(pending);
    {
        let lock = store.lock(true).unwrap();
        store.save(&lock, &state).unwrap();
    }
    let written = generate(KeyKind::Ed25519).unwrap();
    write_private_key(&root.join("keys/example.com/k1.key"), &written).unwrap();
    let Setup {
        milter,
        bind,
        table,
        ..
    } = setup;
    milter.stop().await;

    // The milter starts again: as `run` does, it signs with the active key of the state
    // (still s1), then adopts the key it finds for k1, publishes and activates it.
    let restarted = TestMilter::start(&[], "", &table).await;
    let config = Config::load(&restarted.dir.path().join("signet-milter.toml")).unwrap();
    let selections = rotation::recorded_selections(&config).await.unwrap();
    assert_eq!(selections.get(&label()).map(String::as_str), Some("s1"));
    restarted
        .runtime
        .load()
        .rotation
        .selected()
        .replace(selections);
    let mut conn = restarted.connect(loopback()).await;
    let message = Message::simple("alice@example.com");
    assert_eq!(selectors(&send(&mut conn, &[], &message).await), ["s1"]);
    Rotator::new(restarted.runtime.clone()).round(None).await;
    let state = state_of(root).unwrap();
    assert_eq!(
        phase_of(&Some(state.clone()), "k1"),
        Some(Phase::Active),
        "{state:#?}"
    );
    assert_eq!(state.counter, 1, "no second selector");
    assert_eq!(state.keys.len(), 2, "{state:#?}");
    assert_eq!(
        bind.txt("k1._domainkey.example.com"),
        [written.key.dns_record()],
        "the record published is that of the key found, not of a new one"
    );
    let files = std::fs::read_dir(root.join("keys/example.com"))
        .unwrap()
        .count();
    assert_eq!(files, 3, "s1.key, s1.dns and k1.key only");
    let sent = send(&mut conn, &[], &message).await;
    assert_eq!(selectors(&sent), ["k1"]);
    let (ok, report) = verify_opendkim_at(&message.delivered(&sent.inserted), bind.addr);
    assert!(ok, "{report}");
    restarted.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_held_key_rotates_into_a_new_path_of_its_own() {
    let Some(bao) = OpenBao::start() else { return };
    let key = "key = { vault_mount = \"secret\", vault_path = \"dkim/{domain}/{selector}\" }";
    let mut vault = String::new();
    let setup = setup(KeyKind::Ed25519, key, |root, bind| {
        vault = format!("[vault]\naddress = \"{}\"\ntoken = \"{}\"\n", bao.addr, common::openbao::ROOT_TOKEN);
        rotation_section(
            root,
            &[bind.addr],
            bind.addr,
            &bind.tsig_key_file,
            "check_interval = \"1h\"\nrotate_after = \"30d\"\nactivate_after = \"0s\"\nconfirmations = 1\noverlap = \"1d\"",
        )
    })
    .await;
    bao.put_key(
        "secret/dkim/example.com/s1",
        "key",
        &setup.first.private_pem(),
    );
    // [vault] goes before the signing table.
    let table = format!("{vault}{}", setup.table);
    setup.milter.stop().await;
    let milter = TestMilter::start(&[], "", &table).await;
    let (bind, root) = (&setup.bind, setup.root.path());
    Rotator::new(milter.runtime.clone())
        .round(Some(&[label()]))
        .await;
    let state = state_of(root).unwrap();
    assert_eq!(
        phase_of(&Some(state.clone()), "k1"),
        Some(Phase::Active),
        "{state:#?}"
    );
    // The new key is a secret of its own; the old one is untouched.
    let stored = bao.cli(&["kv", "get", "-field=key", "secret/dkim/example.com/k1"]);
    let new_key = signet_milter::keys::parse::parse_private_key(stored.as_bytes()).unwrap();
    assert_eq!(
        bind.txt("k1._domainkey.example.com"),
        [new_key.dns_record()]
    );
    let old = bao.cli(&["kv", "get", "-field=key", "secret/dkim/example.com/s1"]);
    assert_eq!(old.trim(), setup.first.private_pem().trim());

    // A second milter sharing the Vault that picks the same selector adopts the stored key
    // (check-and-set 0 refuses a second write) instead of making another.
    let other_root = tempfile::tempdir().unwrap();
    let other_table = table.replace(
        &root.join("state").display().to_string(),
        &other_root.path().join("state").display().to_string(),
    );
    let other = TestMilter::start(&[], "", &other_table).await;
    Rotator::new(other.runtime.clone())
        .round(Some(&[label()]))
        .await;
    let again = bao.cli(&["kv", "get", "-field=key", "secret/dkim/example.com/k1"]);
    assert_eq!(again, stored, "the key in Vault was not replaced");
    let metadata = bao.cli(&["kv", "metadata", "get", "secret/dkim/example.com/k1"]);
    assert!(
        !metadata.contains("Version 2"),
        "one version only: {metadata}"
    );

    assert_signs_and_verifies(&milter, bind.addr, "k1").await;
    other.stop().await;
    milter.stop().await;
}

/// How far the test's wall clock is ahead of the real one.
static CLOCK_AHEAD_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A wall clock that a test can step, as a wrong NTP step or a restored VM snapshot does.
fn stepped_clock() -> u64 {
    rotation::clock::wall_ms() + CLOCK_AHEAD_MS.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_that_jumps_ahead_does_not_activate_a_key_early() {
    let setup = setup(KeyKind::Ed25519, "", |root, bind| {
        rotation_section(
            root,
            &[bind.addr],
            bind.addr,
            &bind.tsig_key_file,
            "check_interval = \"1h\"\nrotate_after = \"30d\"\nactivate_after = \"1h\"\nconfirmations = 1\noverlap = \"1d\"",
        )
    })
    .await;
    let root = setup.root.path();
    let runtime = setup.milter.runtime.clone();
    let metrics = runtime.load().env.metrics.clone();
    // k1 is made and published; by activate_after it may sign in an hour.
    let mut rotator = Rotator::with_wall_clock(runtime.clone(), stepped_clock);
    rotator.round(Some(&[label()])).await;
    assert_eq!(phase_of(&state_of(root), "k1"), Some(Phase::Pending));
    assert!(
        !setup.bind.txt("k1._domainkey.example.com").is_empty(),
        "served"
    );

    // The wall clock jumps a day ahead between two looks: by the wall clock the hour is long
    // over, by the monotonic clock a moment passed. k1 stays pending.
    CLOCK_AHEAD_MS.store(86_400_000, Ordering::SeqCst);
    rotator.round(None).await;
    let state = state_of(root).unwrap();
    assert_eq!(
        phase_of(&Some(state.clone()), "k1"),
        Some(Phase::Pending),
        "{state:#?}"
    );
    assert!(
        state.hold_until_ms >= stepped_clock() + 86_000_000,
        "held back by the size of the jump: {state:#?}"
    );
    assert_eq!(metrics.rotation_failures("clock"), 1, "the jump is counted");

    // A restart does not forget the hold: a new process sees no jump itself.
    let mut restarted = Rotator::with_wall_clock(runtime.clone(), stepped_clock);
    restarted.round(None).await;
    restarted.round(None).await;
    assert_eq!(phase_of(&state_of(root), "k1"), Some(Phase::Pending));
    let mut conn = setup.milter.connect(loopback()).await;
    let message = Message::simple("alice@example.com");
    assert_eq!(selectors(&send(&mut conn, &[], &message).await), ["s1"]);
    setup.milter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_updater_the_record_is_written_for_the_operator_and_awaited() {
    let setup = setup(KeyKind::Ed25519, "", |root, bind| {
        format!(
            "[rotation]\ndomains = [\"example.com\"]\nstate_directory = \"{}\"\nselector = \"k{{counter}}\"\n\
             dns_servers = [\"{}\"]\ncheck_interval = \"1h\"\nactivate_after = \"0s\"\nconfirmations = 1\n",
            root.join("state").display(),
            bind.addr
        )
    })
    .await;
    let root = setup.root.path();
    let mut rotator = Rotator::new(setup.milter.runtime.clone());
    rotator.round(Some(&[label()])).await;
    rotator.round(None).await;
    assert_eq!(
        phase_of(&state_of(root), "k1"),
        Some(Phase::Pending),
        "waits for the operator"
    );
    let zone = std::fs::read_to_string(root.join("state/example.com/records.zone")).unwrap();
    let line = zone
        .lines()
        .find(|l| l.starts_with("k1._domainkey.example.com. IN TXT"))
        .unwrap_or_else(|| panic!("{zone}"));
    // The operator publishes what the file says.
    let value: String = line.split('"').skip(1).step_by(2).collect();
    setup
        .bind
        .set_txt("example.com", "k1._domainkey.example.com", &value);
    rotator.round(None).await;
    assert_eq!(phase_of(&state_of(root), "k1"), Some(Phase::Active));
    let mut conn = setup.milter.connect(loopback()).await;
    let message = Message::simple("alice@example.com");
    let sent = send(&mut conn, &[], &message).await;
    assert_eq!(selectors(&sent), ["k1"]);
    let (ok, report) = verify_dkimpy_at(
        &message.delivered(&sent.inserted),
        setup.bind.addr,
        &[("example.com", "k1")],
    );
    assert!(ok, "{report}");
    setup.milter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_two_selector_cname_model_updates_only_the_delegated_zone() {
    let root = tempfile::tempdir().unwrap();
    let first = generate(KeyKind::Ed25519).unwrap();
    write_key_files(&root.path().join("keys"), "example.com", "s1", &first).unwrap();
    // example.com delegates s1/s2 by CNAME, once; the mail host may update only its own zone.
    let cnames = [
        "s1._domainkey 1 IN CNAME s1.example.com.dkim.mailhost.example.".to_string(),
        "s2._domainkey 1 IN CNAME s2.example.com.dkim.mailhost.example.".to_string(),
    ];
    let delegated = [txt_line("s1.example.com", &first.key.dns_record())];
    let bind = Bind::start(&[
        ("example.com", &cnames),
        ("dkim.mailhost.example", &delegated),
    ]);
    let table = format!(
        "[domain.\"example.com\"]\nselector = \"s1\"\nfilename = \"{}/keys/{{domain}}/{{selector}}.key\"\n\
         [rotation]\ndomains = [\"example.com\"]\nstate_directory = \"{}\"\nselectors = [\"s1\", \"s2\"]\n\
         record_name = \"{{selector}}.{{domain}}.dkim.mailhost.example\"\ndns_servers = [\"{addr}\"]\n\
         check_interval = \"1h\"\nactivate_after = \"0s\"\nconfirmations = 1\n\
         [rotation.dns_update]\nserver = \"{addr}\"\nzone = \"dkim.mailhost.example\"\ntsig_key_file = \"{}\"\nttl = \"60s\"\n",
        root.path().display(),
        root.path().join("state").display(),
        bind.tsig_key_file.display(),
        addr = bind.addr,
    );
    let milter = TestMilter::start(&[], "", &table).await;
    Rotator::new(milter.runtime.clone())
        .round(Some(&[label()]))
        .await;
    let state = state_of(root.path());
    assert_eq!(phase_of(&state, "s2"), Some(Phase::Active), "{state:#?}");
    assert_eq!(phase_of(&state, "s1"), Some(Phase::Retiring));
    assert_eq!(
        bind.txt("s2.example.com.dkim.mailhost.example").len(),
        1,
        "written at the CNAME target"
    );
    let zone = std::fs::read_to_string(bind.dir.path().join("example.com.zone")).unwrap();
    assert!(!zone.contains("TXT"), "the main zone is never updated");
    assert!(
        !bind.dir.path().join("example.com.jnl").exists(),
        "no update to the main zone"
    );

    // Receivers look up s2._domainkey.example.com and follow the CNAME.
    assert_signs_and_verifies(&milter, bind.addr, "s2").await;
    milter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_milters_sharing_one_vault_share_one_schedule_and_make_each_key_once() {
    let Some(bao) = OpenBao::start() else { return };
    let first = generate(KeyKind::Ed25519).unwrap();
    bao.put_key("secret/dkim/example.com/s1", "key", &first.private_pem());
    let bind = Bind::start(&[(
        "example.com",
        &[txt_line("s1._domainkey", &first.key.dns_record())],
    )]);
    // Two hosts: each its own state directory (for records.zone), one state in Vault.
    let table = |root: &Path| {
        let section = rotation_section(
            root,
            &[bind.addr],
            bind.addr,
            &bind.tsig_key_file,
            "check_interval = \"1h\"\nrotate_after = \"30d\"\nactivate_after = \"0s\"\nconfirmations = 1\noverlap = \"1d\"",
        )
        .replacen(
            "[rotation]\n",
            "[rotation]\nstate_vault = { mount = \"secret\", path = \"signet/rotation\" }\n",
            1,
        );
        format!(
            "[vault]\naddress = \"{}\"\ntoken = \"{}\"\n\
             [domain.\"example.com\"]\nselector = \"s1\"\nkey = {{ vault_mount = \"secret\", vault_path = \"dkim/{{domain}}/{{selector}}\" }}\n{section}",
            bao.addr,
            common::openbao::ROOT_TOKEN,
        )
    };
    let (root_a, root_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestMilter::start(&[], "", &table(root_a.path())).await;
    let b = TestMilter::start(&[], "", &table(root_b.path())).await;
    let (mut rotator_a, mut rotator_b) = (
        Rotator::new(a.runtime.clone()),
        Rotator::new(b.runtime.clone()),
    );

    // Both asked to rotate at the same moment: whatever the interleaving, each selector's
    // key is written once, and both end up on the same schedule.
    let both = [label()];
    tokio::join!(rotator_a.round(Some(&both)), rotator_b.round(Some(&both)));
    let conflicts = a.runtime.load().env.metrics.rotation_failures("state")
        + b.runtime.load().env.metrics.rotation_failures("state");
    println!("check-and-set conflicts in the simultaneous round: {conflicts}");
    rotator_a.round(None).await;
    rotator_b.round(None).await;
    let state_json = bao.cli(&[
        "kv",
        "get",
        "-field=state",
        "secret/signet/rotation/example.com/domain",
    ]);
    let state: SlotState = serde_json::from_str(&state_json).unwrap();
    let made: Vec<&str> = state
        .keys
        .iter()
        .filter(|k| !k.bootstrap)
        .map(|k| k.selector.as_str())
        .collect();
    assert!(
        !made.is_empty() && state.counter as usize == made.len(),
        "{state:#?}"
    );
    let listed = bao.cli(&["kv", "list", "secret/dkim/example.com"]);
    for selector in &made {
        assert!(listed.contains(selector), "{selector} stored: {listed}");
        let metadata = bao.cli(&[
            "kv",
            "metadata",
            "get",
            &format!("secret/dkim/example.com/{selector}"),
        ]);
        assert!(
            !metadata.contains("Version 2"),
            "{selector} written once: {metadata}"
        );
    }
    let secrets = listed
        .lines()
        .filter(|l| l.starts_with('s') || l.starts_with('k'))
        .count();
    assert_eq!(
        secrets,
        made.len() + 1,
        "no key outside the state: {listed}"
    );
    // Neither host keeps state of its own.
    assert!(!root_a.path().join("state/example.com/domain.json").exists());
    assert!(!root_b.path().join("state/example.com/domain.json").exists());

    // Both sign with the one active key, and it verifies against DNS.
    let active = state.active().unwrap().selector.clone();
    assert_ne!(active, "s1");
    let message = Message::simple("alice@example.com");
    for milter in [&a, &b] {
        let mut conn = milter.connect(loopback()).await;
        let sent = send(&mut conn, &[], &message).await;
        assert_eq!(selectors(&sent), vec![active.clone()]);
        let (ok, report) = verify_opendkim_at(&message.delivered(&sent.inserted), bind.addr);
        assert!(ok, "{report}");
    }
    a.stop().await;
    b.stop().await;
}
