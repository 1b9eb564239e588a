//! The packaged configuration (etc/signet-milter.toml, installed as
//! /etc/signet-milter/signet-milter.toml) and the systemd unit agree with each other and with
//! the program's defaults: a fresh install signs nothing, listens where the unit's runtime
//! directory is, and finishes its graceful shutdown before systemd would kill it.

use signet_milter::config::{Config, DEFAULT_CONFIG_PATH, DEFAULT_KEY_DIRECTORY, ListenAddr};
use std::path::Path;
use std::time::Duration;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .next_back()
        .unwrap_or_else(|| panic!("the unit has no {key}="))
        .to_string()
}

#[test]
fn the_packaged_configuration_signs_nothing_and_fits_the_unit() {
    let config = Config::load(&Path::new(REPO).join("etc/signet-milter.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let unit =
        std::fs::read_to_string(Path::new(REPO).join("packaging/signet-milter.service")).unwrap();

    assert!(config.signing.is_empty(), "a fresh install signs nothing");
    assert_eq!(
        config.keys.files.directory,
        Path::new(DEFAULT_KEY_DIRECTORY)
    );

    let exec_start = unit_value(&unit, "ExecStart");
    assert_eq!(
        exec_start,
        format!("/usr/sbin/signet-milter run -c {DEFAULT_CONFIG_PATH}")
    );
    assert_eq!(unit_value(&unit, "Type"), "notify");

    let runtime_dir = Path::new("/run").join(unit_value(&unit, "RuntimeDirectory"));
    match &config.milter.listen {
        ListenAddr::Unix(path) => assert_eq!(
            path.parent(),
            Some(runtime_dir.as_path()),
            "the socket is in the unit's RuntimeDirectory"
        ),
        other => panic!("the packaged configuration listens on {other}"),
    }

    let stop_timeout: u64 = unit_value(&unit, "TimeoutStopSec").parse().unwrap();
    assert!(
        config.milter.shutdown_timeout + Duration::from_secs(10)
            <= Duration::from_secs(stop_timeout),
        "systemd must not kill the milter while it lets messages finish"
    );
}

#[test]
fn the_default_rotation_state_is_in_the_units_state_directory() {
    let unit =
        std::fs::read_to_string(Path::new(REPO).join("packaging/signet-milter.service")).unwrap();
    let state = Path::new("/var/lib").join(unit_value(&unit, "StateDirectory"));
    assert!(
        Path::new(signet_milter::config::rotation::DEFAULT_STATE_DIRECTORY).starts_with(&state),
        "the service can write its rotation state"
    );
    for script in ["packaging/debian/postinst", "packaging/rpm/post.sh"] {
        let text = std::fs::read_to_string(Path::new(REPO).join(script)).unwrap();
        assert!(
            text.contains(&state.display().to_string()),
            "{script} makes {}",
            state.display()
        );
    }
}
