#!/usr/bin/env bash
# Soak: signet-milter under steady load with a SIGHUP every few seconds, RSS sampled each
# second, and the trend printed at the end (does memory come back after every reload?).
#
#   bench/soak.sh                         5 minutes, 8 connections, SIGHUP every 3 s, 10,000 domains
#   bench/soak.sh --duration 1800 --hup 5 --domains 100000
#
# The configuration is generated (one Ed25519 key file per domain, like bench/scale.sh) and
# messages go to all domains at random. Prints RSS at the start, its minimum, maximum and end,
# the slope of a least-squares line through the samples (MiB per hour), the reloads done and
# the messages signed; the samples are in target/bench/soak/rss.tsv. Exit status 1 if any
# message failed or any reload was refused.
set -euo pipefail
exec </dev/null

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
DURATION=300
HUP=3
DOMAINS=10000
CONNS=8
while [[ $# -gt 0 ]]; do
    case $1 in
        --duration) DURATION=$2; shift ;;
        --hup) HUP=$2; shift ;;
        --domains) DOMAINS=$2; shift ;;
        --connections) CONNS=$2; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "soak.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

cargo build --release --ignore-rust-version --bin signet-milter --example loadgen >&2
SIGNET=$REPO/target/release/signet-milter
WORK=$REPO/target/bench/soak
SETUP=$REPO/target/bench/scale-$DOMAINS
if [[ ! -f $SETUP/.done ]]; then
    rm -rf "$SETUP"
    mkdir -p "$SETUP"
    chmod 755 "$SETUP"
    /usr/bin/python3 "$REPO/bench/scale_setup.py" --work "$SETUP" --domains "$DOMAINS" --signet "$SIGNET"
    touch "$SETUP/.done"
fi
mkdir -p "$WORK"
CONFIG=$SETUP/files-ed25519.toml
SOCKET=$SETUP/files-ed25519.sock
PORT=$(awk -F'[:"]' '/^listen = "127.0.0.1:/ { print $3 }' "$CONFIG")

"$SIGNET" -c "$CONFIG" run 2>"$WORK/milter.log" &
PID=$!
LOADGEN_PID=
cleanup() {
    [[ -z $LOADGEN_PID ]] || kill "$LOADGEN_PID" 2>/dev/null || true
    kill "$PID" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT
until [[ -S $SOCKET ]]; do sleep 0.05; done

log "soak: ${DURATION}s, $CONNS connections, SIGHUP every ${HUP}s, $DOMAINS domains (load average $(cut -d' ' -f1-3 /proc/loadavg))"
"$REPO/target/release/examples/loadgen" --socket "unix:$SOCKET" --pid "$PID" --connections "$CONNS" \
    --body 2KiB --duration "${DURATION}s" --from-domain 'd{n}.example' --domains "$DOMAINS" \
    --json >"$WORK/loadgen.json" 2>"$WORK/loadgen.txt" &
LOADGEN_PID=$!

: >"$WORK/rss.tsv"
start=$SECONDS
next_hup=$HUP
hups=0
while kill -0 "$LOADGEN_PID" 2>/dev/null; do
    t=$((SECONDS - start))
    rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$PID/status")
    printf '%d\t%d\n' "$t" "$rss" >>"$WORK/rss.tsv"
    if ((t >= next_hup)); then
        kill -HUP "$PID"
        hups=$((hups + 1))
        next_hup=$((next_hup + HUP))
    fi
    sleep 1
done
wait "$LOADGEN_PID" || true
LOADGEN_PID=
reloads_ok=$(curl -s "http://127.0.0.1:$PORT/metrics" | awk '$1 == "signet_config_reloads_total{result=\"ok\"}" { print $2 }')
reloads_failed=$(curl -s "http://127.0.0.1:$PORT/metrics" | awk '$1 == "signet_config_reloads_total{result=\"failed\"}" { print $2 }')

/usr/bin/python3 - "$WORK/rss.tsv" "$WORK/loadgen.json" "$hups" "${reloads_ok:-0}" "${reloads_failed:-0}" <<'PY'
import json, sys
rows = [tuple(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
result = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
hups, ok, failed = sys.argv[3], sys.argv[4], sys.argv[5]
t = [r[0] for r in rows]
m = [r[1] / 1024 for r in rows]
n = len(rows)

def slope(ts, ms):
    mt, mm = sum(ts) / len(ts), sum(ms) / len(ms)
    var = sum((x - mt) ** 2 for x in ts)
    return sum((x - mt) * (y - mm) for x, y in zip(ts, ms)) / var if var else 0.0

half = n // 2
print("soak: %d s, %d samples, %s SIGHUPs sent (%s reloads ok, %s failed)" % (t[-1], n, hups, ok, failed))
print("RSS MiB: start %.1f, min %.1f, max %.1f, end %.1f; mean of the second half %.1f" % (
    m[0], min(m), max(m), m[-1], sum(m[half:]) / (n - half)))
# The first half includes filling the key cache; a leak shows as a slope in the second.
print("trend: %+.1f MiB/hour over the whole run, %+.1f MiB/hour over the second half" % (
    slope(t, m) * 3600, slope(t[half:], m[half:]) * 3600))
print("messages: %d signed at %.0f msgs/s, %d errors; worst end-of-message wait %.1f ms (p99 %.2f ms)" % (
    result["messages"], result["msgs_per_s"], result["errors"], result["eom_max_ms"], result["eom_p99_ms"]))
sys.exit(1 if result["errors"] or float(failed) > 0 else 0)
PY
