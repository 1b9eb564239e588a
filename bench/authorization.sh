#!/usr/bin/env bash
# What tenant authorization costs per message. The load generator (examples/loadgen) drives the
# milter over the milter protocol with 2 KiB messages signed with Ed25519 — the cheapest
# signature, so any cost of the authorization shows — in these set-ups:
#
#   trusted   the client is in trusted_networks, no SMTP AUTH: nothing to authorize
#   own       SMTP AUTH as bench@example.com, granted by its own domain (the default)
#   map100k   SMTP AUTH as ops@partner.example, granted @example.com in a login map of
#             100,000 lines (and the own-domain rule tried first)
#   sqlite    granted by a [callbacks] SQLite query over 100,000 rows, answers cached (1m)
#   sqlite0   the same with cache_ttl = 0: the database is asked for every message
#
#   bench/authorization.sh [SIGNET_BINARY]        (default: target/release/signet-milter)
#
# SIGNET_BASELINE=/path/to/an/older/signet-milter also measures the set-ups that binary can
# load (trusted, own) for before/after figures. DURATION (10s), CONNECTIONS (8), RUNS (3):
# each figure is the median of RUNS runs. Prints a markdown table and the load average;
# figures taken while other work runs on the machine are noisy. So it also counts, under
# valgrind's callgrind, the user-space instructions per message (MESSAGES, 500, on one
# connection after a warm-up), which do not depend on the load; INSTRUCTIONS=0 skips that.
set -euo pipefail
exec </dev/null

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
SIGNET=${1:-$REPO/target/release/signet-milter}
BASELINE=${SIGNET_BASELINE:-}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-8}
RUNS=${RUNS:-3}
MESSAGES=${MESSAGES:-500}
INSTRUCTIONS=${INSTRUCTIONS:-1}
[[ -x $SIGNET ]] || { echo "authorization.sh: $SIGNET is not built (cargo build --release --ignore-rust-version)" >&2; exit 1; }

cargo build --release --ignore-rust-version --example loadgen >&2
LOADGEN=$REPO/target/release/examples/loadgen

WORK=$(mktemp -d)
PID=
cleanup() {
    [[ -n $PID ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

"$SIGNET" keygen --algo ed25519 --domain example.com --selector ed --out "$WORK/keys" >/dev/null
/usr/bin/python3 - "$WORK" <<'EOF'
import sqlite3, sys
work = sys.argv[1]
with open(f"{work}/logins", "w") as f:
    f.write("# 100,000 tenants, then the one the benchmark authenticates as\n")
    for i in range(100_000):
        f.write(f"@tenant{i}.example  user{i}@tenant{i}.example, ops{i}\n")
    f.write("@example.com  ops@partner.example\n")
db = sqlite3.connect(f"{work}/tenants.db")
db.execute("create table grants (login text, domain text, primary key (login, domain))")
db.executemany("insert into grants values (?, ?)",
               [(f"user{i}@tenant{i}.example", f"tenant{i}.example") for i in range(100_000)])
db.execute("insert into grants values ('ops@partner.example', 'example.com')")
db.commit()
EOF

config() { # name -> the config file of that set-up
    local file=$WORK/$1.toml
    {
        printf '[milter]\nlisten = "unix:%s/signet.sock"\n[keys]\ndirectory = "%s/keys"\n' "$WORK" "$WORK"
        printf '[domain."example.com"]\nselector = "ed"\n'
        printf '[callbacks.tenants]\nsqlite = "%s/tenants.db"\nquery = "select 1 from grants where login = ?1 and domain = ?2"\n' "$WORK"
        case $1 in
        map100k) printf '[authorization]\nlogin_map = "%s/logins"\n' "$WORK" ;;
        sqlite) printf '[authorization]\ncallback = { event_name = "tenants", event_args = ["{login}", "{domain}"] }\n' ;;
        sqlite0) printf '[authorization]\ncache_ttl = 0\ncallback = { event_name = "tenants", event_args = ["{login}", "{domain}"] }\n' ;;
        esac
    } >"$file"
    echo "$file"
}

loadgen_args() { # set-up
    case $1 in
    trusted) echo --client-addr 127.0.0.1 --auth-user none ;;
    own) echo --auth-user bench@example.com ;;
    *) echo --auth-user ops@partner.example ;;
    esac
}

# measure BINARY SETUP: "msgs/s cpu_ms_per_msg" medians, or "n/a n/a" if the binary refuses the config.
measure() {
    local binary=$1 setup=$2 file results=() run json
    file=$(config "$setup")
    if ! "$binary" check -c "$file" >/dev/null 2>&1; then
        echo "n/a n/a"
        return
    fi
    rm -f "$WORK/signet.sock"
    "$binary" run -c "$file" 2>"$WORK/milter.log" &
    PID=$!
    for _ in $(seq 200); do
        [[ -S $WORK/signet.sock ]] && break
        sleep 0.05
    done
    for run in $(seq "$RUNS"); do
        # shellcheck disable=SC2046 # word splitting of the option list is wanted
        json=$("$LOADGEN" --socket "unix:$WORK/signet.sock" --pid "$PID" --connections "$CONNECTIONS" \
            --duration "$DURATION" --expect-signatures 1 --label "$setup-$run" --json $(loadgen_args "$setup"))
        results+=("$json")
    done
    kill "$PID"
    wait "$PID" 2>/dev/null || true
    PID=
    /usr/bin/python3 - "${results[@]}" <<'EOF'
import json, statistics, sys
runs = [json.loads(a) for a in sys.argv[1:]]
for r in runs:
    assert r["errors"] == 0, r
print(f'{statistics.median(r["msgs_per_s"] for r in runs):.0f} '
      f'{statistics.median(r["milter_cpu_ms_per_msg"] for r in runs):.4f}')
EOF
}

# instructions BINARY SETUP: user-space instructions per message under callgrind, or n/a.
instructions() {
    local binary=$1 setup=$2 file out total
    file=$(config "$setup")
    if [[ $INSTRUCTIONS != 1 ]] || ! "$binary" check -c "$file" >/dev/null 2>&1; then
        echo "n/a"
        return
    fi
    rm -f "$WORK/signet.sock" "$WORK"/callgrind.out.*
    valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out.%p" \
        "$binary" run -c "$file" 2>"$WORK/milter.log" &
    PID=$!
    for _ in $(seq 600); do
        [[ -S $WORK/signet.sock ]] && break
        sleep 0.1
    done
    # shellcheck disable=SC2046 # word splitting of the option list is wanted
    "$LOADGEN" --socket "unix:$WORK/signet.sock" --connections 1 --messages 20 --warmup 1 \
        --expect-signatures 1 $(loadgen_args "$setup") >/dev/null 2>&1
    callgrind_control -z "$PID" >/dev/null
    # shellcheck disable=SC2046
    "$LOADGEN" --socket "unix:$WORK/signet.sock" --connections 1 --messages "$MESSAGES" --warmup 0 \
        --expect-signatures 1 $(loadgen_args "$setup") >/dev/null 2>&1
    callgrind_control -d "$PID" >/dev/null
    kill -INT "$PID"
    wait "$PID" 2>/dev/null || true
    PID=
    out=$(ls "$WORK"/callgrind.out.*.1)
    total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    echo $((total / MESSAGES))
}

SETUPS=(trusted own map100k sqlite sqlite0)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A ROWS
for setup in "${SETUPS[@]}"; do
    read -r rate cpu <<<"$(measure "$SIGNET" "$setup")"
    ROWS[$setup]="$rate $cpu $(instructions "$SIGNET" "$setup")"
    if [[ -n $BASELINE ]]; then
        read -r brate bcpu <<<"$(measure "$BASELINE" "$setup")"
        ROWS[$setup]+=" $brate $bcpu $(instructions "$BASELINE" "$setup")"
    fi
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

echo
echo "tenant authorization, Ed25519, 2 KiB, $CONNECTIONS connections, $DURATION x $RUNS (medians)"
echo "$(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')); load average $load_before before, $load_after after"
if [[ -n $BASELINE ]]; then
    echo
    echo "| set-up | msgs/s | CPU ms/msg | instructions/msg | baseline msgs/s | baseline CPU ms/msg | baseline instructions/msg |"
    echo "|---|---|---|---|---|---|---|"
else
    echo
    echo "| set-up | msgs/s | CPU ms/msg | instructions/msg |"
    echo "|---|---|---|---|"
fi
for setup in "${SETUPS[@]}"; do
    # shellcheck disable=SC2086 # the row is a list of numbers
    printf "| %s |%s\n" "$setup" "$(printf ' %s |' ${ROWS[$setup]})"
done
