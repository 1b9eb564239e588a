#!/usr/bin/env bash
# Quick start: build signet-milter, create demo keys for example.com (once), check them,
# sign a sample message, and run the milter on inet:127.0.0.1:8891 until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --ignore-rust-version --quiet --bin signet-milter
bin=target/debug/signet-milter
keys=target/demo/keys
for pair in rsa2048:demo-rsa ed25519:demo-ed; do
    algo=${pair%%:*} selector=${pair#*:}
    if [ ! -f "$keys/example.com/$selector.key" ]; then
        "$bin" keygen --algo "$algo" --domain example.com --selector "$selector" --out "$keys"
    fi
done
"$bin" check -c etc/demo.toml
echo "--- a sample message, signed by the same rules the milter applies:"
printf 'From: Alice <alice@example.com>\nTo: bob@example.net\nSubject: hello\n\nHi Bob!\n' \
    | "$bin" sign -c etc/demo.toml
echo "--- now serving on inet:127.0.0.1:8891 (Postfix: smtpd_milters = inet:127.0.0.1:8891); Ctrl-C stops"
exec "$bin" run -c etc/demo.toml
