#!/usr/bin/env bash
# A short run of the load generator against the milter binary, so that the benchmark tools
# cannot rot: a few hundred messages over several connections, each of which must come back
# with both signatures (RSA-2048 and Ed25519), the milter's CPU and memory must be readable,
# and a sample of the signed messages must verify with dkimpy.
#
#   bench/smoke.sh [SIGNET_BINARY]      (default: target/debug/signet-milter)
#
# Run by .ci/run. Takes a few seconds once the binaries are built.
set -euo pipefail
exec </dev/null

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
SIGNET=${1:-$REPO/target/debug/signet-milter}
[[ -x $SIGNET ]] || { echo "smoke.sh: $SIGNET is not built" >&2; exit 1; }

cargo build --ignore-rust-version --example loadgen >&2
cargo test --ignore-rust-version --example loadgen -q >&2
LOADGEN=$REPO/target/debug/examples/loadgen

WORK=$(mktemp -d)
PID=
cleanup() {
    [[ -n $PID ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

"$SIGNET" keygen --algo rsa2048 --domain example.com --selector rsa --out "$WORK/keys" >/dev/null
"$SIGNET" keygen --algo ed25519 --domain example.com --selector ed --out "$WORK/keys" >/dev/null
cat >"$WORK/signet.toml" <<EOF
[milter]
listen = "unix:$WORK/signet.sock"
[keys]
directory = "$WORK/keys"
[domain."example.com"]
selector = "rsa"
additional_signatures = ["ed"]
[signature."ed"]
domain = "{domain}"
selector = "ed"
algo = "ed25519"
EOF
"$SIGNET" -c "$WORK/signet.toml" run 2>"$WORK/milter.log" &
PID=$!
for _ in $(seq 100); do
    [[ -S $WORK/signet.sock ]] && break
    sleep 0.1
done

check() { # body messages connections
    local json
    json=$("$LOADGEN" --socket "unix:$WORK/signet.sock" --pid "$PID" --body "$1" \
        --messages "$2" --connections "$3" --expect-signatures 2 --label "smoke-$1" \
        --save "$WORK/signed" --save-count 5 --save-stride 37 --json)
    /usr/bin/python3 - "$json" "$2" <<'EOF'
import json, sys
r, want = json.loads(sys.argv[1]), int(sys.argv[2])
assert r["messages"] == want and r["errors"] == 0, r
assert r["milter_cpu_s"] is not None and r["milter_peak_rss_kib"], r
assert r["round_trips_per_msg"] > 0 and r["eom_p99_ms"] > 0, r
print(f"{r['label']}: {r['messages']} messages, {r['msgs_per_s']:.0f}/s, "
      f"EOM p99 {r['eom_p99_ms']:.2f} ms, milter {r['milter_cpu_ms_per_msg']:.3f} ms CPU/msg, "
      f"peak RSS {r['milter_peak_rss_kib'] / 1024:.1f} MiB")
EOF
}
check 2KiB 300 8
check 100KiB 100 4

/usr/bin/python3 tests/verify_dkim.py --keys "$WORK/keys" \
    --expect example.com:rsa --expect example.com:ed "$WORK"/signed/*.eml
echo "loadgen smoke run: OK"
