#!/usr/bin/env bash
# Builds the release binary, the manual pages, and both packages:
#   target/debian/signet-milter_<version>-1_<arch>.deb      (cargo-deb)
#   target/generate-rpm/signet-milter-<version>-1.<arch>.rpm (cargo-generate-rpm)
#
#   bash packaging/build-packages.sh
#
# Needs cargo-deb and cargo-generate-rpm (.ci/run installs the pinned versions:
#   cargo install --locked cargo-deb@3.8.0 cargo-generate-rpm@0.21.1).
# --ignore-rust-version: mail-auth's mail-parser declares rust-version 1.98 but builds on 1.95.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

for tool in cargo-deb cargo-generate-rpm; do
    command -v "$tool" >/dev/null || {
        echo "build-packages: $tool is missing; cargo install --locked cargo-deb@3.8.0 cargo-generate-rpm@0.21.1" >&2
        exit 1
    }
done

TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --ignore-rust-version --release --locked --bin signet-milter

# Manual pages: generated from the CLI definition by the binary itself, plus the config page.
# The package metadata reads them from target/man (relative to the repository).
rm -rf target/man
"$TARGET_DIR/release/signet-milter" man --out target/man
cp packaging/signet-milter.toml.5 target/man/
gzip -9n target/man/*

# Both tools take the binary just built (and honour CARGO_TARGET_DIR); neither rebuilds it.
rm -f target/debian/signet-milter_*.deb target/generate-rpm/signet-milter-*.rpm
mkdir -p target/debian target/generate-rpm
cargo deb --no-build --output target/debian/
cargo generate-rpm --output target/generate-rpm/

ls -l target/debian/signet-milter_*.deb target/generate-rpm/signet-milter-*.rpm
