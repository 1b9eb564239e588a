#!/usr/bin/env bash
# Profile the release milter under a steady load from examples/loadgen.
#
#   bench/profile.sh [--tool callgrind|perf] [--algo rsa|ed] [--body 2KiB] [--messages N]
#                    [--connections N]
#
# callgrind (default): runs signet-milter under valgrind, warms up, zeroes the counters,
#   sends N messages, and prints the user-space instructions per message (stable from run to
#   run, unlike times on a shared machine) with the functions that cost the most.
#   Raw data: target/bench/profile.*/callgrind.out.* (open with callgrind_annotate/kcachegrind).
# perf: runs signet-milter natively, `perf stat` (task-clock, context switches) and
#   `perf record -e cpu-clock -g` over a run, and prints CPU per message and the top symbols.
#   Needs perf; hardware counters are not needed.
set -euo pipefail
exec </dev/null

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOL=callgrind ALGO=rsa BODY=2KiB MESSAGES=500 CONNS=1
while [[ $# -gt 0 ]]; do
    case $1 in
        --tool) TOOL=$2; shift ;;
        --algo) ALGO=$2; shift ;;
        --body) BODY=$2; shift ;;
        --messages) MESSAGES=$2; shift ;;
        --connections) CONNS=$2; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "profile.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
case $ALGO in rsa) KEYALGO=rsa2048 ;; ed) KEYALGO=ed25519 ;; *) echo "--algo rsa|ed" >&2; exit 2 ;; esac

cd "$REPO"
cargo build --release --ignore-rust-version --bin signet-milter --example loadgen >&2
SIGNET=$REPO/target/release/signet-milter
LOADGEN=$REPO/target/release/examples/loadgen
mkdir -p target/bench
WORK=$(mktemp -d "$REPO/target/bench/profile.XXXXXX")
"$SIGNET" keygen --algo "$KEYALGO" --domain example.com --selector s --out "$WORK/keys" >/dev/null
cat >"$WORK/signet.toml" <<EOF
[milter]
listen = "unix:$WORK/signet.sock"
[keys]
directory = "$WORK/keys"
[domain."example.com"]
selector = "s"
header_canonicalization = "Relaxed"
body_canonicalization = "Simple"
EOF

PID=
cleanup() { [[ -n $PID ]] && kill "$PID" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT

start() { # command prefix...
    "$@" "$SIGNET" -c "$WORK/signet.toml" run >"$WORK/milter.log" 2>&1 &
    PID=$!
    for _ in $(seq 300); do
        [[ -S $WORK/signet.sock ]] && return 0
        sleep 0.1
    done
    cat "$WORK/milter.log" >&2
    exit 1
}
# callgrind_annotate lines ("  1,234 ( 5.67%)  file:function [object]") as
# "instructions-per-message function", the object path dropped.
per_message() {
    sed -nE 's/^ *([0-9,]+) +\( *[0-9.]+%\) +(.*)$/\1 \2/p' | grep -v 'PROGRAM TOTALS' |
        awk -v n="$MESSAGES" '{c=$1; gsub(",", "", c); $1=""; sub(/ \[[^]]*\]$/, ""); printf "%10d %s\n", c / n, substr($0, 2)}' |
        cut -c1-150
}
load() { # messages warmup
    "$LOADGEN" --socket "unix:$WORK/signet.sock" --pid "$PID" --connections "$CONNS" \
        --body "$BODY" --messages "$1" --warmup "$2"
}

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); $ALGO, body $BODY, $CONNS connections, $MESSAGES messages"
case $TOOL in
    callgrind)
        start valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out.%p"
        load 20 1 2>/dev/null
        callgrind_control -z "$PID" >/dev/null
        load "$MESSAGES" 0 2>&1 | sed -n 2p
        callgrind_control -d "$PID" >/dev/null
        kill -INT "$PID"; wait "$PID" || true; PID=
        out=$(ls "$WORK"/callgrind.out.*.1)
        total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
        echo "user-space instructions per message: $((total / MESSAGES))"
        echo "--- most expensive functions (exclusive), instructions per message:"
        callgrind_annotate --threshold=100 "$out" 2>/dev/null | per_message "$total" |
            awk -v t="$total" -v n="$MESSAGES" '$1 >= 500 && $1 * n < 0.9 * t' | head -25
        echo "--- our functions and the libraries they call (inclusive), instructions per message:"
        callgrind_annotate --inclusive=yes --threshold=100 "$out" 2>/dev/null | per_message "$total" |
            grep -E 'signet_milter|indymilter::session::Session|mail_auth::dkim::streaming|StreamHandler' | head -25
        echo "raw data: $out"
        ;;
    perf)
        start
        load 20 1 2>/dev/null
        perf stat -e task-clock,context-switches,cpu-migrations -p "$PID" -o "$WORK/perf-stat.txt" &
        STAT=$!
        perf record -q -e cpu-clock -F 4000 -g -p "$PID" -o "$WORK/perf.data" 2>/dev/null &
        RECORD=$!
        sleep 0.3
        load "$MESSAGES" 0 2>&1 | sed -n 2,6p
        kill -INT "$STAT" "$RECORD"; wait "$STAT" "$RECORD" 2>/dev/null || true
        awk -v n="$MESSAGES" '/task-clock/ {gsub(",", "", $1); printf "task-clock per message: %.3f ms\n", $1 / n}
             /context-switches/ {gsub(",", "", $1); printf "context switches per message: %.1f\n", $1 / n}' "$WORK/perf-stat.txt"
        perf report -i "$WORK/perf.data" --no-children --sort dso -g none 2>/dev/null | grep '%' | head -5
        perf report -i "$WORK/perf.data" --no-children --sort sym -g none 2>/dev/null | grep '%' | head -30
        echo "raw data: $WORK/perf.data"
        ;;
    *) echo "--tool callgrind|perf" >&2; exit 2 ;;
esac
