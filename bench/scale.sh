#!/usr/bin/env bash
# signet-milter with 100,000 domains, beside OpenDKIM with the same domains.
#
#   bench/scale.sh                        build, generate, measure signet and OpenDKIM
#   bench/scale.sh --signet BIN --label L measure another signet binary (e.g. one built from main)
#   bench/scale.sh --domains 20000        a smaller table
#   bench/scale.sh --no-opendkim          signet only
#   bench/scale.sh --no-build             use target/release as it is
#   bench/scale.sh --only files-ed25519   only these configurations (of: shared files-ed25519
#                                         files-rsa2048), with --no-opendkim for signet alone
#
# For each configuration (one shared Ed25519 key; one Ed25519 key file per domain; one RSA-2048
# key file per domain) it measures:
#   - time from exec to the bound socket, and RSS once the startup key pass is done (with its
#     anonymous and file-backed parts: the program's own pages count in RSS too);
#   - RSS after one SIGHUP reloading the same file, and once every domain's key is in the cache;
#   - `check` on the RSA table (every key parsed);
#   - msgs/s at 8 connections, 2 KiB, for one domain and for all domains at random once every
#     domain has been signed once (the key cache warm), with the cache's hit ratio: --rounds
#     (3) rounds of a run of --duration (10) seconds each, compared by the median of the rounds'
#     ratios, with the milter's CPU per message beside them;
#   - the worst end-of-message wait with a SIGHUP every 3 s under that load, against without;
#   - the /metrics scrape after the run: series and bytes.
# OpenDKIM 2.11 (Debian's package) gets the same domains in a KeyTable and SigningTable:
# time to socket, RSS, and msgs/s for one domain and for all at random.
# Figures go to stdout and target/bench/scale-<label>.md; the load average is recorded with
# them (the machine is shared: figures taken while others compile are noisy).
set -euo pipefail
exec </dev/null

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
DOMAINS=100000
SIGNET=
LABEL=branch
OPENDKIM=1
DURATION=10
ROUNDS=3
CONFIGS="shared files-ed25519 files-rsa2048"
BUILD=1
while [[ $# -gt 0 ]]; do
    case $1 in
        --signet) SIGNET=$2; shift ;;
        --label) LABEL=$2; shift ;;
        --domains) DOMAINS=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --rounds) ROUNDS=$2; shift ;;
        --only) CONFIGS=$2; shift ;;
        --no-opendkim) OPENDKIM=0 ;;
        --no-build) BUILD=0 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "scale.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $BUILD == 0 ]] || cargo build --release --ignore-rust-version --bin signet-milter --example loadgen >&2
LOADGEN=$REPO/target/release/examples/loadgen
[[ -n $SIGNET ]] || SIGNET=$REPO/target/release/signet-milter
[[ $OPENDKIM == 0 ]] || command -v opendkim >/dev/null || die "opendkim is not installed (apt-get install opendkim)"

# OpenDKIM refuses files below a directory others can write (such as /tmp).
mkdir -p "$REPO/target/bench"
WORK=$REPO/target/bench/scale-$DOMAINS
if [[ ! -f $WORK/.done ]]; then
    rm -rf "$WORK"
    mkdir -p "$WORK"
    chmod 755 "$WORK"
    log "generating $DOMAINS domains in $WORK (keys, signet configurations, OpenDKIM tables)"
    /usr/bin/python3 "$REPO/bench/scale_setup.py" --work "$WORK" --domains "$DOMAINS" --signet "$REPO/target/release/signet-milter"
    touch "$WORK/.done"
fi
REPORT=$REPO/target/bench/scale-$LABEL.md
: >"$REPORT.rows"

PID=
stop() {
    if [[ -n $PID ]]; then
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
        PID=
    fi
}
trap stop EXIT

now() { date +%s.%N; }
rss_mib() { awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
# RSS split into anonymous memory (heap, stacks: what the process holds) and file-backed pages
# (the program and its shared libraries, shared with every other process mapping them).
rss_split() { awk '/^RssAnon/ { a = $2 } /^RssFile/ { f = $2 } END { printf "anon %.1f + file %.1f", a / 1024, f / 1024 }' "/proc/$1/status"; }
metric() { # port name-and-labels: the value, 0 when absent
    curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m { print $2; found = 1 } END { if (!found) print 0 }'
}

# Starts a milter; sets PID and TTS (seconds from exec to the socket accepting).
start() { # socket command...
    local socket=$1 t0 t1
    shift
    rm -f "$socket"
    t0=$(now)
    "$@" >"$WORK/last.log" 2>&1 &
    PID=$!
    until [[ -S $socket ]] && /usr/bin/python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])' "$socket" 2>/dev/null; do
        kill -0 "$PID" 2>/dev/null || { cat "$WORK/last.log" >&2; die "$* exited"; }
        sleep 0.005
    done
    t1=$(now)
    TTS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
}

# Waits until signet's startup (or reload) key pass is done, when it reports one.
settle() { # metrics-port
    local port=$1
    for _ in $(seq 600); do
        local body
        body=$(curl -s "http://127.0.0.1:$port/healthz" || true)
        # Builds before the background key pass answer "ok" once the keys are done.
        if [[ $body == "ok" ]] || [[ $body =~ keys:\ ([0-9]+)\ ok,\ ([0-9]+)\ failed,\ 0\ pending && $((BASH_REMATCH[1] + BASH_REMATCH[2])) -gt 0 ]]; then
            sleep 1
            return 0
        fi
        sleep 0.1
    done
    die "no end of the key pass"
}

load() { # socket label extra-args...: prints the loadgen JSON line
    local socket=$1 label=$2
    shift 2
    "$LOADGEN" --socket "unix:$socket" --pid "$PID" --connections 8 --body 2KiB \
        --warmup 1 --label "$label" --json "$@" 2>"$WORK/loadgen.txt" || {
        cat "$WORK/loadgen.txt" >&2
        die "loadgen failed ($label)"
    }
}
file_lookups() { # port: the file key lookups so far, "hit revalidated miss"
    local l
    for l in hit revalidated miss; do
        printf '%s ' "$(metric "$1" "signet_key_cache_lookups_total{backend=\"file\",result=\"$l\"}" | cut -d. -f1)"
    done
}
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
field() { /usr/bin/python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

row() { printf '| %s |\n' "$(IFS='|'; echo "$*" | sed 's/|/ | /g')" >>"$REPORT.rows"; }

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
VERSION=$("$SIGNET" --version | awk '{print $2}')

for name in $CONFIGS; do
    config=$WORK/$name.toml
    socket=$WORK/$name.sock
    port=$(awk -F'[:"]' '/^listen = "127.0.0.1:/ { print $3 }' "$config")
    log "signet ($LABEL), $name: start"
    start "$socket" "$SIGNET" -c "$config" run
    settle "$port"
    rss=$(rss_mib "$PID")
    split=$(rss_split "$PID")
    kill -HUP "$PID"
    for _ in $(seq 600); do
        [[ $(metric "$port" 'signet_config_reloads_total{result="ok"}') == 1 ]] && break
        sleep 0.1
    done
    settle "$port"
    rss_reload=$(rss_mib "$PID")
    row "$LABEL" "$name" "time to socket ${TTS} s" "RSS ${rss} MiB ($split)" "after SIGHUP ${rss_reload} MiB"
    log "  socket after ${TTS} s; RSS $rss MiB ($split), after SIGHUP $rss_reload MiB"

    if [[ $name == shared ]]; then
        # What an idle connection costs: 2,000 negotiated connections that then send nothing.
        before=$(rss_mib "$PID")
        accepted=$(/usr/bin/python3 - "$socket" "$PID" <<'PY'
import socket, struct, sys, time
path, pid = sys.argv[1], sys.argv[2]
conns, ok = [], 0
negotiate = struct.pack(">IcIII", 13, b"O", 6, 0x1ff, 0x1fffff)
for _ in range(2000):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(1)
    try:
        s.connect(path)
        s.sendall(negotiate)
        if len(s.recv(64)) == 0:
            break
        ok += 1
    except OSError:
        # Not answered: the milter accepts no more (its connection limit).
        break
    finally:
        conns.append(s)
time.sleep(1)
rss = [l for l in open("/proc/%s/status" % pid) if l.startswith("VmRSS")][0].split()[1]
print(ok, rss)
PY
)
        read -r n after_kib <<<"$accepted"
        per=$(awk -v a="$after_kib" -v b="$before" -v n="$n" 'BEGIN { if (n > 0) printf "%.1f", (a / 1024 - b) * 1024 / n; else print "-" }')
        row "$LABEL" "$name" "2,000 idle connections: $n negotiated" "RSS $before → $(awk -v a="$after_kib" 'BEGIN { printf "%.1f", a / 1024 }') MiB" "${per} KiB each"
        log "  2,000 idle connections: $n negotiated, ${per} KiB each"
    fi

    if [[ $name == files-* ]]; then
        log "  signing every domain once (warm-up)"
        load "$socket" warm --messages "$DOMAINS" --from-domain 'd{n}.example' \
            --domains "$DOMAINS" --domain-order sequential >/dev/null
        # Every key is now parsed and in the cache: the memory of a milter in full use.
        rss_loaded=$(rss_mib "$PID")
        row "$LABEL" "$name" "RSS with all $DOMAINS keys in the cache ${rss_loaded} MiB ($(rss_split "$PID"))"
        log "  RSS with every key in the cache: $rss_loaded MiB ($(rss_split "$PID"))"
        # One domain and all domains at random, alternately, so that a change in the machine's
        # load during the run falls on both; the medians are compared.
        ones=() manys=() one_cpu=() many_cpu=() pairs=() hits=0 rev=0 miss=0
        for round in $(seq "$ROUNDS"); do
            one=$(load "$socket" "one-$round" --duration "${DURATION}s" --from-domain d0.example)
            before_many=$(file_lookups "$port")
            many=$(load "$socket" "many-$round" --duration "${DURATION}s" --from-domain 'd{n}.example' --domains "$DOMAINS")
            read -r h0 r0 m0 <<<"$before_many"
            read -r h1 r1 m1 <<<"$(file_lookups "$port")"
            hits=$((hits + h1 - h0)) rev=$((rev + r1 - r0)) miss=$((miss + m1 - m0))
            ones+=("$(field "$one" msgs_per_s)") manys+=("$(field "$many" msgs_per_s)")
            one_cpu+=("$(field "$one" milter_cpu_ms_per_msg)") many_cpu+=("$(field "$many" milter_cpu_ms_per_msg)")
            pairs+=("$(awk -v a="${manys[-1]}" -v b="${ones[-1]}" 'BEGIN { printf "%.1f", 100 * a / b }')")
            log "  round $round: one domain ${ones[-1]} msgs/s (${one_cpu[-1]} ms CPU/msg), $DOMAINS at random ${manys[-1]} msgs/s (${many_cpu[-1]} ms CPU/msg)"
        done
        # The key cache's answers during the all-domain runs only.
        ratio=$(awk -v h="$hits" -v r="$rev" -v m="$miss" \
            'BEGIN { t = h + r + m; if (t > 0) printf "hit %.2f, revalidated %.2f, miss %.2f", h / t, r / t, m / t; else print "-" }')
        scrape=$(curl -s "http://127.0.0.1:$port/metrics")
        series=$(grep -vc '^#' <<<"$scrape" || true)
        bytes=$(wc -c <<<"$scrape")
        one_rate=$(median "${ones[@]}") many_rate=$(median "${manys[@]}")
        # The median of each round's ratio: a round's two runs are 10 s apart, so a slow drift
        # in the machine's speed (it is shared) cancels out in the ratio.
        pct=$(median "${pairs[@]}")
        cpu_pct=$(awk -v a="$(median "${many_cpu[@]}")" -v b="$(median "${one_cpu[@]}")" 'BEGIN { printf "%.0f", 100 * a / b }')
        row "$LABEL" "$name" "1 domain $one_rate msgs/s, $DOMAINS at random $many_rate msgs/s (medians); ${pct} % (median of $ROUNDS rounds' ratios: ${pairs[*]})" \
            "milter CPU per message $(median "${one_cpu[@]}") / $(median "${many_cpu[@]}") ms = ${cpu_pct} %" "cache: $ratio" "/metrics: $series series, $bytes bytes"
        log "  $DOMAINS domains: $many_rate msgs/s (${pct} % of one), CPU/msg ${cpu_pct} % of one, cache $ratio; /metrics $series series, $bytes bytes"

        ( sleep 3; kill -HUP "$PID"; sleep 3; kill -HUP "$PID" ) &
        hup=$(load "$socket" hup --duration "${DURATION}s" --from-domain 'd{n}.example' --domains "$DOMAINS")
        wait $! || true
        row "$LABEL" "$name" "worst EOM wait without SIGHUP $(field "$many" eom_max_ms) ms" "with a SIGHUP every 3 s $(field "$hup" eom_max_ms) ms (p99 $(field "$hup" eom_p99_ms) ms)"
        log "  worst EOM: $(field "$many" eom_max_ms) ms, with SIGHUPs $(field "$hup" eom_max_ms) ms"
    fi
    stop
done

if [[ " $CONFIGS " == *" files-rsa2048 "* ]]; then
    log "check on the RSA table"
    t0=$(now)
    "$SIGNET" check -c "$WORK/files-rsa2048.toml" >"$WORK/check.txt" 2>&1 || die "check failed: $(tail -3 "$WORK/check.txt")"
    t1=$(now)
    row "$LABEL" "files-rsa2048" "check $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s ($(nproc) cores)"
fi

if [[ $OPENDKIM == 1 ]]; then
    for name in shared files-rsa2048; do
        socket=$WORK/opendkim-$name.sock
        log "OpenDKIM, $name: start"
        start "$socket" opendkim -f -x "$WORK/opendkim-$name.conf"
        sleep 1
        rss=$(rss_mib "$PID")
        line="time to socket ${TTS} s|RSS ${rss} MiB ($(rss_split "$PID"))"
        if [[ $name == files-rsa2048 ]]; then
            one=$(load "$socket" one --duration "${DURATION}s" --from-domain d0.example)
            many=$(load "$socket" many --duration "${DURATION}s" --from-domain 'd{n}.example' --domains "$DOMAINS")
            line="$line|1 domain $(field "$one" msgs_per_s) msgs/s|$DOMAINS at random $(field "$many" msgs_per_s) msgs/s"
        fi
        IFS='|' read -ra cells <<<"$line"
        row "OpenDKIM $(opendkim -V 2>&1 | head -1 | sed 's/.*Filter v//')" "$name" "${cells[@]}"
        log "  $line"
        stop
    done
fi

{
    echo "Run of $(date -u '+%Y-%m-%d %H:%M UTC'): \`bench/scale.sh\` with $DOMAINS domains, signet $VERSION ($LABEL: $SIGNET)."
    echo "Load average $LOAD_START at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end; $(nproc) cores."
    echo
    echo "| milter | configuration | figures |  |  |  |"
    echo "|---|---|---|---|---|---|"
    cat "$REPORT.rows"
} >"$REPORT"
rm -f "$REPORT.rows"
cat "$REPORT"
log "report: $REPORT"
