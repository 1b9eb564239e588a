#!/usr/bin/env bash
# What key rotation costs the signing path: the seam micro-benchmark (examples/rotation_seam.rs)
# and the milter end to end with the load generator, the same 2 KiB messages signed by the same
# key, once without [rotation] and once with the signing domain rotating (its active selector
# coming from the rotation state), alternating, 3 repetitions each.
#
#   bench/rotation.sh            (release build; prints Markdown tables and the load average)
set -euo pipefail
exec </dev/null

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
cargo build --release --ignore-rust-version --bin signet-milter --example loadgen --example rotation_seam >&2
SIGNET=$REPO/target/release/signet-milter
LOADGEN=$REPO/target/release/examples/loadgen
WORK=$(mktemp -d)
PID=
cleanup() {
    [[ -n $PID ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
"$REPO/target/release/examples/rotation_seam"
echo

"$SIGNET" keygen --algo rsa2048 --domain example.com --selector s1 --out "$WORK/keys" >/dev/null
write_config() { # file rotated
    cat >"$1" <<CONF
[milter]
listen = "unix:$WORK/signet.sock"
[keys]
directory = "$WORK/keys"
[domain."example.com"]
selector = "s1"
CONF
    if [[ $2 == yes ]]; then
        # Bootstraps at the first round (s1 active); nothing else is due for 90 days.
        cat >>"$1" <<CONF
[rotation]
domains = ["example.com"]
state_directory = "$WORK/state"
dns_servers = ["127.0.0.1:9"]
CONF
    fi
}
write_config "$WORK/plain.toml" no
write_config "$WORK/rotated.toml" yes

run() { # label config
    "$SIGNET" -c "$2" run 2>"$WORK/milter.log" &
    PID=$!
    for _ in $(seq 100); do
        [[ -S $WORK/signet.sock ]] && break
        sleep 0.1
    done
    "$LOADGEN" --socket "unix:$WORK/signet.sock" --pid "$PID" --body 2KiB --messages 4000 \
        --connections 8 --expect-signatures 1 --label "$1" --json
    kill "$PID"
    wait "$PID" || true
    PID=
}

echo "| run | msgs/s | EOM p99 (ms) | milter CPU per msg (ms) |"
echo "|---|---:|---:|---:|"
for rep in 1 2 3; do
    for variant in plain rotated; do
        json=$(run "$variant-$rep" "$WORK/$variant.toml")
        /usr/bin/python3 - "$json" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
assert r["errors"] == 0, r
print("| %s | %.0f | %.2f | %.3f |" % (r["label"], r["msgs_per_s"], r["eom_p99_ms"], r["milter_cpu_ms_per_msg"]))
PY
    done
done
echo
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
