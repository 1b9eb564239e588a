#!/usr/bin/env bash
# signet-milter vs OpenDKIM under the same load, in the same run.
#
#   bench/compare.sh               full matrix (3 repetitions, ~10 min on 2 cores)
#   bench/compare.sh --quick       one short repetition (~1.5 min), to see that it works
#   bench/compare.sh --update      ...and put the table into BENCHMARKS.md
#
# What it does, all in one command:
#   1. installs OpenDKIM from Debian's packages (apt-get install opendkim opendkim-tools);
#   2. builds signet-milter and the load generator (examples/loadgen) in release mode;
#   3. makes one RSA-2048 key (used by OpenDKIM and by signet) and one Ed25519 key (signet);
#   4. starts three milters on unix sockets: OpenDKIM (RSA), signet (RSA), signet (Ed25519),
#      all with relaxed/simple canonicalization and the same header list;
#   5. measures `openssl speed rsa2048 ed25519` on this machine;
#   6. runs the load generator against each milter in turn (the order rotates), for bodies
#      of 2 KiB, 100 KiB and 10 MiB at 1, 8 and 64 connections, REPS times;
#   7. verifies a sample of the signed messages from every milter with dkimpy
#      (tests/verify_dkim.py, keys from a local table, no DNS);
#   8. writes a markdown table (medians over the repetitions) with the date, the machine,
#      the versions and the targets of issue 5: target/bench/latest.md.
#
# Options: --quick, --reps N, --duration SECONDS (per run), --update (BENCHMARKS.md),
#          --no-install (OpenDKIM already installed), --workdir DIR.
# Needs root (or sudo) only for apt-get. Exit status: 0 when every run completed without
# errors and every sampled signature verified, 1 otherwise.
set -euo pipefail
exec </dev/null

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

REPS=3
DURATION=5
QUICK=0
UPDATE=0
INSTALL=1
WORKDIR=
BODIES=(2KiB 100KiB 10MiB)
CONNS=(1 8 64)
while [[ $# -gt 0 ]]; do
    case $1 in
        --quick) QUICK=1; REPS=1; DURATION=1.5 ;;
        --reps) REPS=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --update) UPDATE=1 ;;
        --no-install) INSTALL=0 ;;
        --workdir) WORKDIR=$2; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "compare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

SUDO=
[[ $(id -u) -eq 0 ]] || SUDO="sudo -n"

# --- 1. OpenDKIM ----------------------------------------------------------------------------
if [[ $INSTALL == 1 ]]; then
    log "installing OpenDKIM (apt-get install opendkim opendkim-tools)"
    export DEBIAN_FRONTEND=noninteractive
    if ! command -v opendkim >/dev/null; then
        $SUDO apt-get update -q >/dev/null
    fi
    $SUDO apt-get install -y -q --no-upgrade opendkim opendkim-tools >/dev/null
fi
command -v opendkim >/dev/null || die "opendkim is not installed (run without --no-install, as root)"
[[ -x /usr/bin/python3 ]] && /usr/bin/python3 -c 'import dkim' 2>/dev/null ||
    die "dkimpy is missing: apt-get install python3-dkim python3-nacl"

# --- 2. build -------------------------------------------------------------------------------
log "building signet-milter and the load generator (release)"
cargo build --release --ignore-rust-version --bin signet-milter --example loadgen >&2
SIGNET=$REPO/target/release/signet-milter
LOADGEN=$REPO/target/release/examples/loadgen

# --- 3. work directory and keys ---------------------------------------------------------------
# OpenDKIM refuses configuration and key files below a directory that others can write
# (such as /tmp), so the default work directory is inside target/.
if [[ -z $WORKDIR ]]; then
    mkdir -p "$REPO/target/bench"
    WORKDIR=$(mktemp -d "$REPO/target/bench/run.XXXXXX")
fi
mkdir -p "$WORKDIR"
WORKDIR=$(cd "$WORKDIR" && pwd)
chmod 755 "$WORKDIR"
log "work directory: $WORKDIR"
KEYS=$WORKDIR/keys
"$SIGNET" keygen --algo rsa2048 --domain example.com --selector rsa --out "$KEYS" >/dev/null
"$SIGNET" keygen --algo ed25519 --domain example.com --selector ed --out "$KEYS" >/dev/null

# Same signed header list and canonicalization for all: signet's default list.
HEADERS='From,Reply-To,Subject,Date,To,Cc,Message-ID,In-Reply-To,References,MIME-Version,Content-Type,Content-Transfer-Encoding'

signet_config() { # name selector
    cat >"$WORKDIR/$1.toml" <<EOF
[milter]
listen = "unix:$WORKDIR/$1.sock"
trusted_networks = ["127.0.0.0/8"]
sign_authenticated = true
max_connections = 256

[keys]
directory = "$KEYS"

[log]
level = "info"

[domain."example.com"]
selector = "$2"
header_canonicalization = "Relaxed"
body_canonicalization = "Simple"
EOF
}
signet_config signet-rsa rsa
signet_config signet-ed ed

cat >"$WORKDIR/opendkim.conf" <<EOF
# Debian's defaults (Syslog yes, UMask 007) plus what is needed to sign like signet.
Syslog                  yes
UMask                   007
Mode                    s
Socket                  local:$WORKDIR/opendkim.sock
PidFile                 $WORKDIR/opendkim.pid
Domain                  example.com
Selector                rsa
KeyFile                 $KEYS/example.com/rsa.key
Canonicalization        relaxed/simple
SignatureAlgorithm      rsa-sha256
SignHeaders             $HEADERS
OversignHeaders         From
InternalHosts           127.0.0.1
EOF

# --- 4. start the milters ---------------------------------------------------------------------
declare -A PIDS SOCKETS
cleanup() { # stops the milters we started, once
    for name in "${!PIDS[@]}"; do
        kill "${PIDS[$name]}" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    PIDS=()
}
trap cleanup EXIT

start_milter() { # name command...
    local name=$1
    shift
    "$@" >"$WORKDIR/$name.log" 2>&1 &
    PIDS[$name]=$!
    SOCKETS[$name]=$WORKDIR/$name.sock
    for _ in $(seq 100); do
        [[ -S ${SOCKETS[$name]} ]] && return 0
        kill -0 "${PIDS[$name]}" 2>/dev/null || break
        sleep 0.1
    done
    cat "$WORKDIR/$name.log" >&2
    die "$name did not start"
}
start_milter opendkim opendkim -f -x "$WORKDIR/opendkim.conf"
start_milter signet-rsa "$SIGNET" -c "$WORKDIR/signet-rsa.toml" run
start_milter signet-ed "$SIGNET" -c "$WORKDIR/signet-ed.toml" run
MILTERS=(opendkim signet-rsa signet-ed)
declare -A SELECTOR=([opendkim]=rsa [signet-rsa]=rsa [signet-ed]=ed)

# --- 5. machine, versions, openssl speed ------------------------------------------------------
META=$WORKDIR/meta.env
{
    echo "DATE=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
    echo "CORES=$(nproc)"
    echo "KERNEL=$(uname -r)"
    echo "LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "SIGNET_VERSION=$("$SIGNET" --version | awk '{print $2}') ($(git -C "$REPO" describe --always --dirty 2>/dev/null || echo unknown))"
    echo "OPENDKIM_VERSION=$(opendkim -V 2>&1 | head -1 | sed 's/.*Filter //')"
    package=$(dpkg-query -W -f='${Version}' opendkim 2>/dev/null || true)
    echo "OPENDKIM_PACKAGE=${package:-unknown}"
    echo "OPENSSL_VERSION=$(openssl version | awk '{print $2}')"
    echo "RUSTC=$(rustc --version | awk '{print $2}')"
    echo "REPS=$REPS"
    echo "DURATION=$DURATION"
} >"$META"
log "openssl speed rsa2048 ed25519"
SPEED_SECONDS=3
[[ $QUICK == 1 ]] && SPEED_SECONDS=1
openssl speed -seconds "$SPEED_SECONDS" rsa2048 ed25519 2>/dev/null >"$WORKDIR/openssl-speed.txt"
{
    echo "OPENSSL_RSA2048_SIGN_PER_S=$(awk '/^rsa 2048 bits/ {print $(NF-1)}' "$WORKDIR/openssl-speed.txt")"
    echo "OPENSSL_ED25519_SIGN_PER_S=$(awk '/EdDSA \(Ed25519\)/ {print $(NF-1)}' "$WORKDIR/openssl-speed.txt" | tail -1)"
} >>"$META"

# --- 6. the matrix ------------------------------------------------------------------------------
RESULTS=$WORKDIR/results.jsonl
SAMPLES=$WORKDIR/samples
: >"$RESULTS"
FAILED_RUNS=0
run_index=0
total=$((REPS * ${#BODIES[@]} * ${#CONNS[@]} * ${#MILTERS[@]}))
log "running $total load runs of ${DURATION}s (load average now: $(cut -d' ' -f1-3 /proc/loadavg))"
for rep in $(seq "$REPS"); do
    for body in "${BODIES[@]}"; do
        for conns in "${CONNS[@]}"; do
            # Rotate the order so that no milter always runs first (or right after another).
            cell=$((run_index / ${#MILTERS[@]}))
            order=()
            for i in "${!MILTERS[@]}"; do
                order+=("${MILTERS[$(((i + cell) % ${#MILTERS[@]}))]}")
            done
            for name in "${order[@]}"; do
                run_index=$((run_index + 1))
                save=()
                if [[ $rep == 1 ]]; then
                    # A sample spread over the run; big bodies are few and slow to verify.
                    count=3 stride=5
                    [[ $body == 10MiB ]] && count=1 stride=1
                    save=(--save "$SAMPLES/$name" --save-count "$count" --save-stride "$stride")
                fi
                # One message per connection before measuring (connections open, threads
                # started); for 10 MiB bodies that alone would take longer than the run.
                warmup=1
                [[ $body == 10MiB ]] && warmup=0
                set +e
                line=$("$LOADGEN" --socket "unix:${SOCKETS[$name]}" --pid "${PIDS[$name]}" \
                    --connections "$conns" --body "$body" --duration "${DURATION}s" \
                    --warmup "$warmup" --label "$name-$body-c$conns" --json "${save[@]}" \
                    2>"$WORKDIR/loadgen-last.txt")
                status=$?
                set -e
                if [[ $status -ne 0 || -z $line ]]; then
                    FAILED_RUNS=$((FAILED_RUNS + 1))
                    log "run failed: $name body=$body conns=$conns (exit $status)"
                    sed 's/^/    /' "$WORKDIR/loadgen-last.txt" >&2
                fi
                if [[ -n $line ]]; then
                    printf '{"rep":%d,"milter":"%s","body":"%s","conns":%d,"load":"%s","result":%s}\n' \
                        "$rep" "$name" "$body" "$conns" "$(cut -d' ' -f1 /proc/loadavg)" "$line" >>"$RESULTS"
                fi
                log "$run_index/$total $name body=$body conns=$conns: $(grep -E 'msg/s' "$WORKDIR/loadgen-last.txt" | sed 's/^ *//')"
            done
        done
    done
done
echo "LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$META"

# --- 7. verify the samples ----------------------------------------------------------------------
VERIFY=$WORKDIR/verify.txt
: >"$VERIFY"
VERIFY_FAILED=0
for name in "${MILTERS[@]}"; do
    files=("$SAMPLES/$name"/*.eml)
    if [[ ! -e ${files[0]} ]]; then
        echo "$name: no signed message was saved" >>"$VERIFY"
        VERIFY_FAILED=1
        continue
    fi
    if /usr/bin/python3 "$REPO/tests/verify_dkim.py" --keys "$KEYS" \
        --expect "example.com:${SELECTOR[$name]}" "${files[@]}" >>"$VERIFY" 2>&1; then
        echo "VERIFIED $name ${#files[@]}" >>"$VERIFY"
    else
        echo "FAILED $name" >>"$VERIFY"
        VERIFY_FAILED=1
    fi
done
log "verification: $(grep -c ': pass$' "$VERIFY") signatures pass, $(grep -c 'FAIL' "$VERIFY") fail"
# The samples include 10 MiB messages, and signet logs a line per message (over 100 MB per
# run): keep the samples only when something failed, and the end of each log.
[[ $VERIFY_FAILED == 0 ]] && rm -rf "$SAMPLES"
cleanup
for name in "${MILTERS[@]}"; do
    tail -n 1000 "$WORKDIR/$name.log" >"$WORKDIR/$name.log.tail" && mv "$WORKDIR/$name.log.tail" "$WORKDIR/$name.log"
done

# --- 8. the report ------------------------------------------------------------------------------
/usr/bin/python3 "$REPO/bench/report.py" --meta "$META" --results "$RESULTS" --verify "$VERIFY" \
    --failed-runs "$FAILED_RUNS" >"$WORKDIR/report.md"
cp "$WORKDIR/report.md" "$REPO/target/bench/latest.md"
cat "$WORKDIR/report.md"
if [[ $UPDATE == 1 ]]; then
    /usr/bin/python3 "$REPO/bench/report.py" --splice "$REPO/BENCHMARKS.md" <"$WORKDIR/report.md"
    log "BENCHMARKS.md updated"
fi
log "report: target/bench/latest.md (raw data in $WORKDIR)"
[[ $FAILED_RUNS == 0 && $VERIFY_FAILED == 0 ]]
