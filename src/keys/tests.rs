//! The key cache and the file and inline backends. A registered callback stands in for a remote
//! backend whose answers and speed the test controls; tokio's paused clock moves time.

use super::cache::KeyCache;
use super::callback::{CallbackError, CallbackRegistry, KeyCallback, KeyFuture};
use super::generate::{KeyKind, generate};
use super::*;
use crate::config::keysource::KeyData;
use crate::config::{CacheSettings, Config};
use crate::metrics::{Lookup, Metrics};
use std::os::unix::fs::PermissionsExt as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use zeroize::Zeroizing;

fn write_key(path: &Path, kind: KeyKind, mode: u32) -> Arc<str> {
    let g = generate(kind).unwrap();
    std::fs::write(path, g.private_pem().as_bytes()).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    g.key.public_key_base64().into()
}

/// A backend that answers what the test says, after `delay`, and counts its calls.
#[derive(Clone)]
struct Scripted(Arc<ScriptedState>);

struct ScriptedState {
    calls: AtomicUsize,
    answer: Mutex<Result<String, String>>,
    delay: Duration,
}

impl Scripted {
    fn new(delay: Duration) -> Self {
        Scripted(Arc::new(ScriptedState {
            calls: AtomicUsize::new(0),
            answer: Mutex::new(Err("not set".into())),
            delay,
        }))
    }
    /// Makes the backend serve a new key; returns its public key.
    fn serve_new_key(&self) -> String {
        let g = generate(KeyKind::Ed25519).unwrap();
        *self.0.answer.lock().unwrap() = Ok(g.private_pem().to_string());
        g.key.public_key_base64().to_string()
    }
    fn fail(&self, reason: &str) {
        *self.0.answer.lock().unwrap() = Err(reason.into());
    }
    fn calls(&self) -> usize {
        self.0.calls.load(Ordering::SeqCst)
    }
}

impl KeyCallback for Scripted {
    fn fetch<'a>(&'a self, _args: &'a [String]) -> KeyFuture<'a> {
        Box::pin(async move {
            self.0.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.0.delay).await;
            match &*self.0.answer.lock().unwrap() {
                Ok(pem) => Ok(Zeroizing::new(pem.clone().into_bytes())),
                Err(reason) => Err(CallbackError(reason.clone())),
            }
        })
    }
}

const CACHE: &str = "[cache]\nttl = \"60s\"\nnegative_ttl = \"10s\"\nserve_stale = \"1h\"\n";

fn cache_with(config_text: &str, backend: Option<&Scripted>) -> (KeyCache, Arc<Metrics>) {
    let mut registry = CallbackRegistry::new();
    if let Some(b) = backend {
        registry.register("remote", b.clone());
    }
    let config = Config::parse(config_text, Path::new("test.toml")).unwrap();
    let metrics = Arc::new(Metrics::new());
    let cache = KeyCache::new(
        config.keys.cache.clone(),
        config.keys.cache.capacity_for(config.signing.entry_count()),
        Backends::new(&config, &registry),
        metrics.clone(),
    );
    (cache, metrics)
}

fn remote() -> ResolvedKeySource {
    ResolvedKeySource::Event {
        name: "remote".into(),
        args: vec!["example.com".into()],
    }
}

/// Lets background refreshes run (the paused clock advances while everything waits).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test(start_paused = true)]
async fn concurrent_misses_for_one_cold_key_make_one_fetch() {
    let backend = Scripted::new(Duration::from_millis(100));
    let public = backend.serve_new_key();
    let (cache, metrics) = cache_with(CACHE, Some(&backend));
    let cache = Arc::new(cache);
    let lookups: Vec<_> = (0..1000)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get(&remote()).await })
        })
        .collect();
    for lookup in lookups {
        let key = lookup.await.unwrap().unwrap();
        assert_eq!(key.public_key_base64(), public);
    }
    assert_eq!(backend.calls(), 1, "one fetch for 1,000 concurrent lookups");
    assert_eq!(metrics.key_lookups("callback", Lookup::Miss), 1000);
}

#[tokio::test(start_paused = true)]
async fn an_expired_key_is_served_while_one_refresh_runs_in_the_background() {
    let backend = Scripted::new(Duration::from_secs(2));
    let first = backend.serve_new_key();
    let (cache, metrics) = cache_with(CACHE, Some(&backend));
    cache.get(&remote()).await.unwrap();
    let second = backend.serve_new_key();

    tokio::time::advance(Duration::from_secs(61)).await;
    // Past ttl: the old key comes back at once, without waiting for the 2 s backend.
    let started = tokio::time::Instant::now();
    for _ in 0..10 {
        let key = cache.get(&remote()).await.unwrap();
        assert_eq!(key.public_key_base64(), first);
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "stale answers do not wait"
    );
    assert_eq!(metrics.key_lookups("callback", Lookup::Stale), 10);

    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        backend.calls(),
        2,
        "one background refresh for ten stale lookups"
    );
    let key = cache.get(&remote()).await.unwrap();
    assert_eq!(
        key.public_key_base64(),
        second,
        "the refreshed key replaces the old one"
    );
}

#[tokio::test(start_paused = true)]
async fn the_last_good_key_signs_through_an_outage_until_serve_stale_runs_out() {
    let backend = Scripted::new(Duration::from_millis(10));
    let good = backend.serve_new_key();
    let (cache, metrics) = cache_with(CACHE, Some(&backend));
    cache.get(&remote()).await.unwrap();
    backend.fail("backend down");

    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(
        cache.get(&remote()).await.unwrap().public_key_base64(),
        good
    );
    settle().await;
    assert_eq!(backend.calls(), 2, "the refresh was tried");
    assert_eq!(metrics.key_fetch_errors("callback"), 1);

    // Within negative_ttl of the failure: served stale, and the backend is left alone.
    for _ in 0..5 {
        assert_eq!(
            cache.get(&remote()).await.unwrap().public_key_base64(),
            good
        );
    }
    settle().await;
    assert_eq!(backend.calls(), 2, "no fetch while the failure is fresh");

    // After negative_ttl, the next lookup tries again (in the background), still serving stale.
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(
        cache.get(&remote()).await.unwrap().public_key_base64(),
        good
    );
    settle().await;
    assert_eq!(backend.calls(), 3);

    // ttl + serve_stale after the last good fetch: the key is no longer used.
    tokio::time::advance(Duration::from_secs(3600)).await;
    let err = cache.get(&remote()).await.unwrap_err();
    assert!(err.to_string().contains("backend down"), "{err}");
    assert!(
        err.to_string().contains("callback remote(example.com)"),
        "{err}"
    );

    // The backend comes back: the next fetch after negative_ttl gets a fresh key.
    let fresh = backend.serve_new_key();
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(
        cache.get(&remote()).await.unwrap().public_key_base64(),
        fresh
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_cold_fetch_is_remembered_for_negative_ttl() {
    let backend = Scripted::new(Duration::from_millis(10));
    backend.fail("no such key");
    let (cache, metrics) = cache_with(CACHE, Some(&backend));
    for _ in 0..20 {
        assert!(cache.get(&remote()).await.is_err());
    }
    assert_eq!(backend.calls(), 1, "the failure is cached");
    assert_eq!(metrics.key_lookups("callback", Lookup::Negative), 19);
    tokio::time::advance(Duration::from_secs(11)).await;
    let public = backend.serve_new_key();
    assert_eq!(
        cache.get(&remote()).await.unwrap().public_key_base64(),
        public
    );
    assert_eq!(backend.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn serve_stale_zero_means_an_expired_key_waits_for_the_backend() {
    let backend = Scripted::new(Duration::from_millis(10));
    backend.serve_new_key();
    let config = CACHE.replace("serve_stale = \"1h\"", "serve_stale = 0");
    let (cache, _) = cache_with(&config, Some(&backend));
    cache.get(&remote()).await.unwrap();
    backend.fail("down");
    tokio::time::advance(Duration::from_secs(61)).await;
    assert!(cache.get(&remote()).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn file_keys_are_cached_and_reloaded_when_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.key");
    let first = write_key(&path, KeyKind::Ed25519, 0o600);
    let (cache, metrics) = cache_with("", None);
    let source = ResolvedKeySource::File(path.clone());
    let a = cache.get(&source).await.unwrap();
    let b = cache.get(&source).await.unwrap();
    assert!(
        Arc::ptr_eq(&a, &b),
        "second lookup is served from the cache"
    );
    assert_eq!(a.public_key_base64(), &*first);
    assert_eq!(metrics.key_lookups("file", Lookup::Hit), 1);

    // Replace the file (new inode, as `mv` or an editor does): within ttl the cached key
    // still signs, and nothing looks at the file.
    let replace = || {
        let tmp = dir.path().join("new.key");
        let public = write_key(&tmp, KeyKind::Ed25519, 0o600);
        std::fs::rename(&tmp, &path).unwrap();
        public
    };
    let second = replace();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let c = cache.get(&source).await.unwrap();
    assert!(Arc::ptr_eq(&a, &c), "within ttl the file is not looked at");
    assert_eq!(metrics.key_lookups("file", Lookup::Hit), 2);

    // A reload makes the next use look, and the replaced file signs at once.
    cache.recheck_files();
    let d = cache.get(&source).await.unwrap();
    assert_eq!(
        d.public_key_base64(),
        &*second,
        "a replaced file is picked up after a reload"
    );

    // Without a reload it is picked up once ttl has passed.
    let third = replace();
    tokio::time::sleep(file_recheck()).await;
    let e = cache.get(&source).await.unwrap();
    assert_eq!(e.public_key_base64(), &*third, "picked up after ttl");

    // An unchanged file is stat'ed, not read again: the same parsed key comes back.
    cache.recheck_files();
    let f = cache.get(&source).await.unwrap();
    assert!(Arc::ptr_eq(&e, &f));
    tokio::time::sleep(file_recheck()).await;
    let g = cache.get(&source).await.unwrap();
    assert!(Arc::ptr_eq(&e, &g));
    assert_eq!(metrics.key_lookups("file", Lookup::Revalidated), 2);
}

/// How long a file key is used before its file is `stat`ed again: the default ttl.
fn file_recheck() -> Duration {
    CacheSettings::default().ttl
}

#[tokio::test(start_paused = true)]
async fn a_file_that_only_needed_its_stat_counts_as_revalidated_not_missed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.key");
    write_key(&path, KeyKind::Ed25519, 0o600);
    let (cache, metrics) = cache_with("", None);
    let source = ResolvedKeySource::File(path.clone());
    let first = cache.get(&source).await.unwrap();
    for _ in 0..3 {
        tokio::time::sleep(file_recheck()).await;
        let again = cache.get(&source).await.unwrap();
        assert!(Arc::ptr_eq(&first, &again), "the file was not read again");
        assert!(cache.get(&source).await.is_ok());
    }
    assert_eq!(
        metrics.key_lookups("file", Lookup::Miss),
        1,
        "the first read"
    );
    assert_eq!(metrics.key_lookups("file", Lookup::Revalidated), 3);
    assert_eq!(metrics.key_lookups("file", Lookup::Hit), 3);
}

#[tokio::test]
async fn a_resized_cache_keeps_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.key");
    write_key(&path, KeyKind::Ed25519, 0o600);
    let (cache, metrics) = cache_with("[cache]\ncapacity = 3\n", None);
    let source = ResolvedKeySource::File(path.clone());
    let key = cache.get(&source).await.unwrap();
    let bigger = cache.resized(1000).await;
    assert_eq!(bigger.capacity(), 1000);
    assert!(Arc::ptr_eq(&key, &bigger.get(&source).await.unwrap()));
    assert_eq!(
        metrics.key_lookups("file", Lookup::Hit),
        1,
        "no second read"
    );
}

#[tokio::test]
async fn unsafe_permissions_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.key");
    write_key(&path, KeyKind::Ed25519, 0o640);
    let source = ResolvedKeySource::File(path.clone());
    let err = cache_with("", None).0.get(&source).await.unwrap_err();
    assert!(
        matches!(err, KeyError::UnsafePermissions { mode: 0o640, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("chmod 600"));
    let lax = "[keys]\nrequire_safe_permissions = false\n";
    assert!(cache_with(lax, None).0.get(&source).await.is_ok());
}

#[tokio::test]
async fn errors_name_the_source_and_never_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing = ResolvedKeySource::File(dir.path().join("nope.key"));
    let err = cache_with("", None).0.get(&missing).await.unwrap_err();
    assert!(
        err.to_string().ends_with("nope.key: does not exist"),
        "{err}"
    );

    let secretish = "-----BEGIN PRIVATE KEY-----\nTUlJQ1NFQ1JFVA==\n-----END PRIVATE KEY-----\n";
    let data = ResolvedKeySource::Data(KeyData::new(secretish.into()));
    let err = cache_with("", None).0.get(&data).await.unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("TUlJQ1NFQ1JFVA"), "{shown}");
    assert!(shown.contains("inline key_data"), "{shown}");
}

#[tokio::test]
async fn rsa_keys_below_1024_bits_are_refused() {
    let pem = include_bytes!("../../tests/fixtures/rsa512-insecure-test-only.pem");
    let data = ResolvedKeySource::Data(KeyData::new(pem.to_vec()));
    let err = cache_with("", None).0.get(&data).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("RSA key is smaller than 1024 bits, which RFC 8301 forbids"),
        "{err}"
    );
}

/// RSA-1024 (the test fixture), as PKCS#1 and as PKCS#8: parsed by AWS-LC's C API, signed, and
/// the signature checked against the public key it reports, with aws-lc-rs's verifier.
#[tokio::test]
async fn rsa_1024_keys_sign_with_a_warning() {
    use aws_lc_rs::signature::{RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY, UnparsedPublicKey};
    use base64::Engine as _;
    let pkcs1 = include_bytes!("../../tests/fixtures/rsa1024-test-only.pem");
    let pkcs1_key = crate::keys::parse::parse_private_key(pkcs1).unwrap();
    // The same key after `openssl pkcs8 -topk8 -nocrypt`.
    let pkcs8 = include_bytes!("../../tests/fixtures/rsa1024-pkcs8-test-only.pem");
    let pkcs8_key = crate::keys::parse::parse_private_key(pkcs8).unwrap();
    assert_eq!(pkcs1_key.public_key_base64(), pkcs8_key.public_key_base64());
    for key in [pkcs1_key, pkcs8_key] {
        assert_eq!(key.describe(), "rsa-1024");
        assert_eq!(key.custody(), crate::keys::Custody::Memory);
        assert!(key.weakness().unwrap().contains("RSA-1024"));
        let key = Arc::new(key);
        let data = b"from:a@example.com\r\ndkim-signature:v=1; b=".to_vec();
        let signature = key.sign(data.clone()).await.unwrap();
        assert_eq!(signature.len(), 128);
        let spki = base64::engine::general_purpose::STANDARD
            .decode(key.public_key_base64())
            .unwrap();
        // The SubjectPublicKeyInfo ends with the RSAPublicKey the verifier wants.
        let rsa_public = &spki[spki.len() - 140..];
        assert_eq!(rsa_public[0], 0x30);
        UnparsedPublicKey::new(&RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY, rsa_public)
            .verify(&data, &signature)
            .expect("the RSA-1024 signature verifies");
        let tampered = b"from:b@example.com\r\ndkim-signature:v=1; b=";
        assert!(
            UnparsedPublicKey::new(&RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY, rsa_public)
                .verify(tampered, &signature)
                .is_err()
        );
    }
    let rsa2048 = crate::keys::generate::generate(crate::keys::generate::KeyKind::Rsa2048)
        .unwrap()
        .key;
    assert_eq!(rsa2048.weakness(), None);
}

/// A lookup through a [`super::cache::SlotHandle`]: hits come straight from the slot without
/// resolving the source; anything else (first use, a reload's recheck, a slot the index has
/// not seen for half its idle time) goes through the cache, which the handle then points at.
#[tokio::test(start_paused = true)]
async fn a_slot_handle_serves_hits_and_sends_the_rest_through_the_cache() {
    use super::cache::SlotHandle;
    use std::cell::Cell;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.key");
    let first = write_key(&path, KeyKind::Ed25519, 0o600);
    let (cache, metrics) = cache_with(CACHE, None);
    let handle = SlotHandle::default();
    let resolved = Cell::new(0);
    let resolve = || {
        resolved.set(resolved.get() + 1);
        ResolvedKeySource::File(path.clone())
    };

    let a = cache.get_by_handle(&handle, resolve).await.unwrap();
    assert_eq!(a.public_key_base64(), &*first);
    assert_eq!(resolved.get(), 1, "the first lookup resolves the source");
    assert_eq!(metrics.key_lookups("file", Lookup::Miss), 1);
    for _ in 0..3 {
        let b = cache.get_by_handle(&handle, resolve).await.unwrap();
        assert!(Arc::ptr_eq(&a, &b));
    }
    assert_eq!(resolved.get(), 1, "hits come through the handle");
    assert_eq!(metrics.key_lookups("file", Lookup::Hit), 3);

    // The handle reaches the slot the index has: a lookup by source sees the same key.
    let by_source = cache
        .get(&ResolvedKeySource::File(path.clone()))
        .await
        .unwrap();
    assert!(Arc::ptr_eq(&a, &by_source));

    // A reload's recheck is seen through the handle too: the replaced file signs at once.
    let tmp = dir.path().join("new.key");
    let second = write_key(&tmp, KeyKind::Ed25519, 0o600);
    std::fs::rename(&tmp, &path).unwrap();
    cache.recheck_files();
    let c = cache.get_by_handle(&handle, resolve).await.unwrap();
    assert_eq!(c.public_key_base64(), &*second);
    assert_eq!(resolved.get(), 2);
}

/// Inline data is fresh forever, so only the index's idle clock sends a handle's lookup back
/// through the index: at least once per half the idle time, or moka would drop a slot in use.
#[tokio::test(start_paused = true)]
async fn a_slot_handle_goes_through_the_index_before_its_slot_could_idle_out() {
    use super::cache::SlotHandle;
    use std::cell::Cell;

    let g = generate(KeyKind::Ed25519).unwrap();
    let source = ResolvedKeySource::Data(KeyData::new(g.private_pem().as_bytes().to_vec()));
    // ttl 60 s, serve_stale 1 h: a slot nobody looks up is dropped after 61 min.
    let (cache, _) = cache_with(CACHE, None);
    let handle = SlotHandle::default();
    let resolved = Cell::new(0);
    let resolve = || {
        resolved.set(resolved.get() + 1);
        source.clone()
    };
    cache.get_by_handle(&handle, resolve).await.unwrap();
    // Every 10 minutes for 2 hours: looked up through the index once in every 30.5 minutes.
    for _ in 0..12 {
        tokio::time::advance(Duration::from_secs(600)).await;
        cache.get_by_handle(&handle, resolve).await.unwrap();
    }
    assert_eq!(
        resolved.get(),
        1 + 3,
        "through the index at 40, 80 and 120 minutes"
    );
}

#[test]
fn slot_handles_exist_for_every_number_below_the_count_and_no_other() {
    use super::cache::SlotHandles;
    use crate::config::KeyHandle;
    let handles = SlotHandles::new(1000);
    for n in [0, 255, 256, 999] {
        assert!(handles.get(KeyHandle(n)).is_some(), "{n}");
    }
    let (a, b) = (handles.get(KeyHandle(7)), handles.get(KeyHandle(7)));
    assert!(
        std::ptr::eq(a.unwrap(), b.unwrap()),
        "one handle per number"
    );
    assert!(!std::ptr::eq(
        handles.get(KeyHandle(7)).unwrap(),
        handles.get(KeyHandle(263)).unwrap()
    ));
    assert!(handles.get(KeyHandle(1000)).is_none());
    assert!(SlotHandles::new(0).get(KeyHandle(0)).is_none());
}
