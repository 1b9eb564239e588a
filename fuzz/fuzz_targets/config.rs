//! The configuration parser on any text: an error with a location, never a panic. A file that
//! loads is also turned into a runtime and asked for the signatures of a few authors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signet_milter::config::Config;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new("fuzz.toml")) {
        Ok(config) => {
            for author in ["example.com", "a.b.example.net", "x", "ünïcode.example"] {
                let _ = signet_milter::policy::plan(&config.signing, Ok(author));
            }
            let _ = signet_milter::runtime::Runtime::new(config);
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(shown.starts_with("fuzz.toml:"), "{shown}");
        }
    }
});
