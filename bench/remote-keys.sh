#!/usr/bin/env bash
# What a key that never leaves its vault costs per message: messages/s, EOM latency and CPU with
# the key in a file (the baseline), in OpenBao Transit (a local dev server, with and without
# batch_input) and in SoftHSM2 (PKCS#11), for RSA-2048 and Ed25519, at 1 and 8 connections.
#
#   bench/remote-keys.sh [--messages N] [--debug]
#
# Needs OpenBao's `bao` ($SIGNET_BAO or on PATH), softhsm2 and python3-dkim. Prints a markdown
# table (with the load average: on a shared machine the figures move with it) and verifies a
# sample of the signed messages with dkimpy. OpenBao's own CPU per message is shown beside the
# milter's: with Transit, the private-key operation happens there.
set -euo pipefail
exec </dev/null

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
MESSAGES=2000
PROFILE=release
while [[ $# -gt 0 ]]; do
    case $1 in
        --messages) MESSAGES=$2; shift 2 ;;
        --debug) PROFILE=debug; shift ;;
        *) echo "usage: $0 [--messages N] [--debug]" >&2; exit 2 ;;
    esac
done
BAO=${SIGNET_BAO:-$(command -v bao || true)}
[[ -x $BAO ]] || { echo "remote-keys.sh: OpenBao's bao is needed (SIGNET_BAO)" >&2; exit 1; }
[[ -e /usr/lib/softhsm/libsofthsm2.so ]] || { echo "remote-keys.sh: apt-get install softhsm2" >&2; exit 1; }

if [[ $PROFILE == release ]]; then
    cargo build --release --ignore-rust-version --bin signet-milter --example loadgen >&2
else
    cargo build --ignore-rust-version --bin signet-milter --example loadgen >&2
fi
SIGNET=$REPO/target/$PROFILE/signet-milter
LOADGEN=$REPO/target/$PROFILE/examples/loadgen

WORK=$(mktemp -d)
MILTER_PID= BAO_PID=
cleanup() {
    [[ -n $MILTER_PID ]] && kill "$MILTER_PID" 2>/dev/null && wait "$MILTER_PID" 2>/dev/null
    [[ -n $BAO_PID ]] && kill "$BAO_PID" 2>/dev/null && wait "$BAO_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
log() { echo "remote-keys: $*" >&2; }

# --- OpenBao with Transit ---------------------------------------------------------------------
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BAO" server -dev -dev-root-token-id=root -dev-listen-address="127.0.0.1:$PORT" >"$WORK/bao.log" 2>&1 &
BAO_PID=$!
export BAO_ADDR=http://127.0.0.1:$PORT BAO_TOKEN=root
for _ in $(seq 100); do "$BAO" status >/dev/null 2>&1 && break; sleep 0.1; done
"$BAO" secrets enable transit >/dev/null

# --- SoftHSM2 ---------------------------------------------------------------------------------
mkdir -p "$WORK/tokens"
export SOFTHSM2_CONF=$WORK/softhsm2.conf
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$WORK/tokens" >"$SOFTHSM2_CONF"
softhsm2-util --init-token --free --label bench --so-pin 1234 --pin 5678 >/dev/null
echo 5678 >"$WORK/pin"; chmod 600 "$WORK/pin"

cat >"$WORK/base.toml" <<EOF
[milter]
listen = "unix:$WORK/signet.sock"
max_connections = 64
[keys]
directory = "$WORK/keys"
[log]
level = "warn"
[vault]
address = "$BAO_ADDR"
token = "root"
[pkcs11]
module = "/usr/lib/softhsm/libsofthsm2.so"
token = "bench"
pin_file = "$WORK/pin"
EOF

# Keys: files; Transit; the token (the RSA key imported, the Ed25519 key made in the token).
"$SIGNET" keygen --algo rsa2048 --domain example.com --selector file-rsa --out "$WORK/keys" >/dev/null
"$SIGNET" keygen --algo ed25519 --domain example.com --selector file-ed --out "$WORK/keys" >/dev/null
"$SIGNET" -c "$WORK/base.toml" keygen --algo rsa2048 --domain example.com --selector transit-rsa --transit-key bench-rsa 2>/dev/null >"$WORK/transit-rsa.zone"
"$SIGNET" -c "$WORK/base.toml" keygen --algo ed25519 --domain example.com --selector transit-ed --transit-key bench-ed 2>/dev/null >"$WORK/transit-ed.zone"
softhsm2-util --import <(openssl pkcs8 -topk8 -nocrypt -in "$WORK/keys/example.com/file-rsa.key") --token bench --label bench-rsa --id 01 --pin 5678 >/dev/null 2>&1 ||
    { openssl pkcs8 -topk8 -nocrypt -in "$WORK/keys/example.com/file-rsa.key" -out "$WORK/rsa.pk8"
      softhsm2-util --import "$WORK/rsa.pk8" --token bench --label bench-rsa --id 01 --pin 5678 >/dev/null; rm -f "$WORK/rsa.pk8"; }
cp "$WORK/keys/example.com/file-rsa.dns" "$WORK/keys/example.com/pkcs11-rsa.dns"
"$SIGNET" -c "$WORK/base.toml" keygen --algo ed25519 --domain example.com --selector pkcs11-ed --pkcs11-key bench-ed 2>/dev/null >"$WORK/pkcs11-ed.zone"
for zone in transit-rsa transit-ed pkcs11-ed; do
    python3 -c 'import sys; t=open(sys.argv[1]).read(); print("".join(t.split("\"")[1::2]))' "$WORK/$zone.zone" \
        >"$WORK/keys/example.com/$zone.dns"
done

# name | selector | key line | [vault] extra
CASES=(
    "file RSA-2048|file-rsa||"
    "file Ed25519|file-ed||"
    "Transit RSA-2048, batched|transit-rsa|key = { transit_key = \"bench-rsa\" }|"
    "Transit RSA-2048, unbatched|transit-rsa|key = { transit_key = \"bench-rsa\" }|transit_batch_size = 1"
    "Transit Ed25519, batched|transit-ed|key = { transit_key = \"bench-ed\" }|"
    "Transit Ed25519, unbatched|transit-ed|key = { transit_key = \"bench-ed\" }|transit_batch_size = 1"
    "PKCS#11 RSA-2048|pkcs11-rsa|key = { pkcs11_key = \"bench-rsa\" }|"
    "PKCS#11 Ed25519|pkcs11-ed|key = { pkcs11_key = \"bench-ed\" }|"
)

cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

echo "| key | conns | msgs/s | EOM p50 ms | EOM p99 ms | milter CPU ms/msg | OpenBao CPU ms/msg |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for spec in "${CASES[@]}"; do
    IFS='|' read -r name selector keyline vaultextra <<<"$spec"
    { sed "s/^token = \"root\"$/token = \"root\"\n$vaultextra/" "$WORK/base.toml"
      printf '[domain."example.com"]\nselector = "%s"\n%s\n' "$selector" "$keyline"; } >"$WORK/run.toml"
    rm -f "$WORK/signet.sock"
    "$SIGNET" -c "$WORK/run.toml" run 2>>"$WORK/milter.log" &
    MILTER_PID=$!
    for _ in $(seq 200); do [[ -S $WORK/signet.sock ]] && break; sleep 0.05; done
    for conns in 1 8; do
        # Warm-up: the key is fetched, the Transit clients and token sessions are opened.
        "$LOADGEN" --socket "unix:$WORK/signet.sock" --messages 50 --connections "$conns" \
            --expect-signatures 1 >/dev/null 2>&1
        bao_before=$(cpu_of "$BAO_PID")
        json=$("$LOADGEN" --socket "unix:$WORK/signet.sock" --pid "$MILTER_PID" --body 2048 \
            --messages "$MESSAGES" --connections "$conns" --expect-signatures 1 --label "$name" \
            --save "$WORK/signed-$selector-$conns" --save-count 3 --save-stride 101 --json 2>/dev/null)
        bao_after=$(cpu_of "$BAO_PID")
        python3 - "$json" "$conns" "$((bao_after - bao_before))" "$TICK" <<'EOF'
import json, sys
r = json.loads(sys.argv[1]); ticks = int(sys.argv[3]); tick = int(sys.argv[4])
assert r["errors"] == 0, r
bao = ticks * 1000.0 / tick / r["messages"]
print(f'| {r["label"]} | {sys.argv[2]} | {r["msgs_per_s"]:.0f} | {r["eom_p50_ms"]:.3f} | '
      f'{r["eom_p99_ms"]:.3f} | {r["milter_cpu_ms_per_msg"]:.3f} | {bao:.3f} |')
EOF
    done
    kill "$MILTER_PID"; wait "$MILTER_PID" 2>/dev/null || true; MILTER_PID=
done
echo
echo "2 KiB messages, $MESSAGES per run, $PROFILE build; $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg) at the end."

# Every saved message verifies with dkimpy against the public keys read from Transit and the token.
count=0
for f in "$WORK"/signed-*/*; do
    [[ -f $f ]] || continue
    /usr/bin/python3 "$REPO/tests/verify_dkim.py" --keys "$WORK/keys" "$f" >/dev/null ||
        { echo "remote-keys: $f does not verify" >&2; exit 1; }
    count=$((count + 1))
done
log "$count sampled messages verified by dkimpy"
