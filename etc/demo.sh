#!/usr/bin/env bash
# Quick start: builds signet-milter, creates demo keys for example.com (once), checks them and
# prints their DNS records, starts the milter on inet:127.0.0.1:8891, sends a message through
# it over the milter protocol as Postfix would, and verifies the signed message. From a
# terminal the milter then keeps serving until Ctrl-C; otherwise (a script, CI) it stops.
#
#   ./etc/demo.sh                      (from a clone; needs the Rust toolchain and a C compiler)
set -euo pipefail
cd "$(dirname "$0")/.."

listen_port=8891
bin=target/debug/signet-milter
client=target/debug/examples/milter_send
demo=target/demo
keys=$demo/keys

step() { printf '\n== %s\n' "$*"; }

step "Building signet-milter and a milter client (the first build compiles about 300 crates: a few minutes)"
cargo build --ignore-rust-version --bin signet-milter --example milter_send

step "Demo keys in $keys (made once, kept for the next run)"
for pair in rsa2048:demo-rsa ed25519:demo-ed; do
    algo=${pair%%:*} selector=${pair#*:}
    if [[ -f $keys/example.com/$selector.key ]]; then
        echo "$keys/example.com/$selector.key exists"
    else
        "$bin" keygen --algo "$algo" --domain example.com --selector "$selector" --out "$keys" >/dev/null
    fi
done

step "Checking etc/demo.toml; the DNS records are what you would publish for a real domain"
"$bin" check -c etc/demo.toml --records

if (exec 3<>"/dev/tcp/127.0.0.1/$listen_port") 2>/dev/null; then
    echo "something already listens on 127.0.0.1:$listen_port (an earlier demo?): stop it and run again" >&2
    exit 1
fi
step "Starting the milter on inet:127.0.0.1:$listen_port"
"$bin" run -c etc/demo.toml &
milter=$!
trap 'kill "$milter" 2>/dev/null || true; wait "$milter" 2>/dev/null || true' EXIT
until (exec 3<>"/dev/tcp/127.0.0.1/$listen_port") 2>/dev/null; do
    kill -0 "$milter" 2>/dev/null || { echo "the milter exited; see its messages above" >&2; exit 1; }
    sleep 0.1
done

step "Sending a message through the milter, as Postfix would (client 127.0.0.1, trusted)"
cat >"$demo/message.eml" <<'EOF'
From: Alice <alice@example.com>
To: Bob <bob@example.net>
Subject: hello from the signet-milter demo
Date: Tue, 01 Dec 2026 10:00:00 +0000
Message-ID: <demo@example.com>

Hi Bob,

this message was signed by signet-milter.
EOF
"$client" "inet:127.0.0.1:$listen_port" "$demo/message.eml" >"$demo/signed.eml"
sed -n '/^From:/q;p' "$demo/signed.eml"
echo "(the whole message: $demo/signed.eml)"

step "Verifying it, as a receiver would, with the keys' DNS records from $keys"
"$bin" verify --keys "$keys" --domain example.com "$demo/signed.eml"

if [[ -t 0 ]]; then
    step "The milter keeps serving on inet:127.0.0.1:$listen_port (Postfix: smtpd_milters = inet:127.0.0.1:$listen_port); Ctrl-C stops it"
    wait "$milter"
else
    step "Done (not a terminal: the milter is stopped)"
fi
