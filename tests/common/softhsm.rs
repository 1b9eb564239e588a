//! SoftHSM2 (Debian's `softhsm2`) as a PKCS#11 token for tests: a token directory and
//! `SOFTHSM2_CONF` in a temporary directory, tokens initialised and keys imported with
//! `softhsm2-util`, the module loaded in-process by the milter.
//!
//! SoftHSM reads `SOFTHSM2_CONF` once, when the process first initialises the module; so every
//! test of one test binary shares one token directory, and each uses tokens of its own label.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const USER_PIN: &str = "738291";
const SO_PIN: &str = "112233";

pub struct SoftHsm {
    pub conf: PathBuf,
    dir: PathBuf,
}

/// The token directory of this test binary, set up on first use. `prepare` runs once, before
/// anything in this process loads the module: SoftHSM2 lists the tokens that exist when a
/// process initialises it, and never those made later by another process.
pub fn softhsm(prepare: fn(&SoftHsm)) -> &'static SoftHsm {
    static HSM: OnceLock<SoftHsm> = OnceLock::new();
    HSM.get_or_init(|| {
        assert!(
            Path::new(MODULE).exists(),
            "SoftHSM2 is needed for the PKCS#11 tests: apt-get install softhsm2"
        );
        // Kept for the life of the test binary: SoftHSM holds it until the process ends.
        let dir = tempfile::tempdir().unwrap().keep();
        std::fs::create_dir(dir.join("tokens")).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.join("tokens").display()
            ),
        )
        .unwrap();
        // SAFETY: Rust's own environment reads and writes are serialised by std; the one C
        // reader of this variable, SoftHSM's C_Initialize, runs only after this returns.
        unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };
        let hsm = SoftHsm { conf, dir };
        prepare(&hsm);
        hsm
    })
}

impl SoftHsm {
    /// Runs softhsm2-util; panics with its output when it fails.
    pub fn util(&self, args: &[&str]) -> String {
        // softhsm2-util picks "the first free slot" and rewrites token files: one at a time.
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let out = Command::new("softhsm2-util")
            .args(args)
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .expect("softhsm2-util (apt-get install softhsm2)");
        assert!(
            out.status.success(),
            "softhsm2-util {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A new token labelled `label`, with the user PIN [`USER_PIN`].
    pub fn init_token(&self, label: &str) {
        self.util(&[
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            SO_PIN,
            "--pin",
            USER_PIN,
        ]);
    }

    /// Imports a PKCS#8 PEM private key (and its public half) into the token as `label`.
    pub fn import(&self, token: &str, label: &str, id: &str, pkcs8_pem: &str) {
        let file = self.dir.join(format!("{token}-{label}.pk8"));
        std::fs::write(&file, pkcs8_pem).unwrap();
        self.util(&[
            "--import",
            file.to_str().unwrap(),
            "--token",
            token,
            "--label",
            label,
            "--id",
            id,
            "--pin",
            USER_PIN,
        ]);
        std::fs::remove_file(file).unwrap();
    }

    pub fn delete_token(&self, label: &str) {
        self.util(&["--delete-token", "--token", label]);
    }

    /// Unplugs the token labelled `label`: its directory moves away, as a USB token leaves.
    /// Returns what [`SoftHsm::plug_in`] needs to put it back.
    pub fn unplug(&self, label: &str) -> (PathBuf, PathBuf) {
        let tokens = self.dir.join("tokens");
        for entry in std::fs::read_dir(&tokens).unwrap() {
            let path = entry.unwrap().path();
            let info = std::fs::read(path.join("token.object")).unwrap_or_default();
            if info.windows(label.len()).any(|w| w == label.as_bytes()) {
                let away = self.dir.join(format!("unplugged-{label}"));
                std::fs::rename(&path, &away).unwrap();
                return (away, path);
            }
        }
        panic!("no token directory for {label}");
    }

    pub fn plug_in(&self, (away, path): (PathBuf, PathBuf)) {
        std::fs::rename(away, path).unwrap();
    }

    /// A file in the test's SoftHSM directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A PIN file (mode 0600) with `pin`.
    pub fn pin_file(&self, name: &str, pin: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = self.dir.join(name);
        std::fs::write(&path, format!("{pin}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }
}
