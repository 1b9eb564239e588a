#!/usr/bin/env bash
# Fuzzing signet-milter on the stable toolchain: libFuzzer (the libfuzzer-sys crate builds it
# from source with the system C++ compiler) and rustc's stable SanitizerCoverage options, in
# place of cargo-fuzz's nightly-only -Z flags.
#
#   bench/fuzz.sh                  a campaign: every target for 10 minutes (--time SECONDS)
#   bench/fuzz.sh --ci             what CI runs: a fixed-seed pass of 50,000 inputs per target
#                                  from the generated seeds (about a minute)
#   bench/fuzz.sh --target NAME    one target (milter_session, config, key_parse)
#
# Targets (fuzz/fuzz_targets/): milter_session (one MTA connection per input to the real
# callbacks, valid sessions mutated or raw bytes), config (the TOML loader), key_parse (keys,
# messages for `sign`, From headers). Seeds are generated into target/fuzz/seeds/; the corpus a
# campaign grows is kept in target/fuzz/corpus/, crashes in target/fuzz/artifacts/. Prints, per
# target: inputs run, inputs per second, coverage (libFuzzer's cov: and ft:), corpus size, and
# whether anything crashed or hung. Exit status 1 when a target crashed.
set -euo pipefail
exec </dev/null

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
TIME=600
CI_RUNS=50000
MODE=campaign
TARGETS=(milter_session config key_parse)
while [[ $# -gt 0 ]]; do
    case $1 in
        --ci) MODE=ci ;;
        --time) TIME=$2; shift ;;
        --runs) CI_RUNS=$2; shift ;;
        --target) TARGETS=("$2"); shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "fuzz.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# The coverage instrumentation cargo-fuzz asks for, in options stable rustc accepts.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions \
-Coverflow-checks -Cforce-frame-pointers=yes"
export CARGO_TARGET_DIR=$REPO/target/fuzz/build
# An explicit --target keeps RUSTFLAGS off the build scripts and proc macros (which would not
# link without libFuzzer), as cargo-fuzz does.
HOST=$(rustc -vV | sed -n 's/^host: //p')
log "building the fuzz targets (libFuzzer + SanitizerCoverage, release with debug assertions)"
cargo build --release --ignore-rust-version --manifest-path fuzz/Cargo.toml --bins --target "$HOST" >&2
BIN=$CARGO_TARGET_DIR/$HOST/release

SEEDS=$REPO/target/fuzz/seeds
rm -rf "$SEEDS"
/usr/bin/python3 - "$SEEDS" <<'PY'
import os, struct, sys
out = sys.argv[1]

def chunk(cmd, payload=b""):
    return cmd + struct.pack("<H", len(payload)) + payload

def write(target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

# milter_session: byte 0 odd = framed chunks, bit 1 = negotiate first (see the target).
connect = b"mta.example\x004" + struct.pack(">H", 25) + b"192.0.2.1\x00"
headers = [b"From\x00 Alice <alice@example.com>\x00", b"To\x00 bob@example.org\x00",
           b"Subject\x00 a test\n\twith a fold\x00", b"Date\x00 Sun, 22 Nov 2026 10:00:00 +0000\x00",
           b"Message-ID\x00 <1@example.com>\x00"]
def message(sender=b"<alice@example.com>", body=b"Hello\r\nworld\r\n", auth=True):
    m = b""
    if auth:
        m += chunk(b"D", b"M{auth_authen}\x00alice\x00{auth_type}\x00PLAIN\x00i\x00Q1\x00")
    m += chunk(b"M", sender + b"\x00") + chunk(b"R", b"<bob@example.org>\x00") + chunk(b"T")
    for h in headers:
        m += chunk(b"L", h)
    m += chunk(b"N") + chunk(b"B", body) + chunk(b"E")
    return m
write("milter_session", "signed", b"\x03" + chunk(b"C", connect) + message() + chunk(b"Q"))
write("milter_session", "two-messages-abort", b"\x03" + chunk(b"C", connect) + message()
      + chunk(b"A") + message(body=b"x" * 3000) + chunk(b"Q"))
write("milter_session", "wildcard", b"\x03" + chunk(b"C", connect)
      + message(sender=b"<a@mail.example.net>").replace(b"example.com>", b"mail.example.net>"))
write("milter_session", "no-negotiation", b"\x01" + chunk(b"C", connect) + message())
write("milter_session", "macros-crlf", b"\x03" + chunk(b"D", b"C{client_addr}\x00\r\n1.2.3.4\x00j\x00a\nb\x00")
      + chunk(b"C", connect) + message())
write("milter_session", "raw", b"\x00\x00\x00\x00\x0dO\x00\x00\x00\x06\x00\x00\x01\xff\x00\x1f\xff\xff")

# config
write("config", "table", b"""[milter]
listen = "inet:127.0.0.1:8891"
trusted_networks = ["127.0.0.0/8", "::1/128"]
max_connections = 100
idle_timeout = "5m"
[cache]
ttl = "5m"
[base]
selector = "s1"
headers = ["From", "To", "Subject"]
additional_signatures = ["esp"]
[domain."example.com"]
over_sign = true
[domain."*.example.net"]
key = { vault_mount = "secret", vault_path = "dkim/{domain}" }
[signature."esp"]
domain = "esp.example"
policy = "Always"
key = "/k/{domain}/{selector}.key"
""")
write("config", "kumo-vault", b'[base]\nvault_mount = "secret"\nvault_path_prefix = "dkim"\nselector = "s"\n[domain."a.example"]\n')
write("config", "callbacks", b'[callbacks."db"]\nsqlite = "/x.db"\nquery = "select 1"\n[domain."a.example"]\nselector = "s"\nkey = { event_name = "db", event_args = ["{domain}"] }\n')

# key_parse: keys are generated by the target's own dictionary-free mutations from these.
write("key_parse", "pem-header", b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n-----END PRIVATE KEY-----\n")
write("key_parse", "seed", b"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
write("key_parse", "message", b"From: Alice <alice@example.com>\r\nSubject: x\r\n\tfolded\r\n\r\nbody\r\n")
PY

status=0
report=()
for target in "${TARGETS[@]}"; do
    corpus=$REPO/target/fuzz/corpus/$target
    artifacts=$REPO/target/fuzz/artifacts/$target/
    mkdir -p "$corpus" "$artifacts"
    if [[ $MODE == ci ]]; then
        # Fixed seed, fixed number of inputs, only the generated seeds: the same run each time.
        args=(-seed=1 -runs="$CI_RUNS" "$SEEDS/$target")
        corpus_dirs=()
    else
        args=(-max_total_time="$TIME" "$corpus" "$SEEDS/$target")
    fi
    log "fuzzing $target (${args[*]:0:2})"
    set +e
    "$BIN/$target" -artifact_prefix="$artifacts" -max_len=70000 -timeout=30 \
        -rss_limit_mb=2048 -print_final_stats=1 "${args[@]}" >"$REPO/target/fuzz/$target.log" 2>&1
    rc=$?
    set -e
    last=$(grep -E '^#[0-9]+' "$REPO/target/fuzz/$target.log" | tail -1)
    runs=$(awk '/stat::number_of_executed_units/ { print $2 }' "$REPO/target/fuzz/$target.log")
    speed=$(awk '/stat::average_exec_per_sec/ { print $2 }' "$REPO/target/fuzz/$target.log")
    cov=$(sed -n 's/.* cov: \([0-9]*\).* ft: \([0-9]*\).* corp: \([0-9]*\).*/cov \1, features \2, corpus \3/p' <<<"$last")
    if [[ $rc -ne 0 ]]; then
        status=1
        log "$target FAILED (exit $rc); log: target/fuzz/$target.log, input in $artifacts"
        grep -E 'panicked|ERROR|SUMMARY' "$REPO/target/fuzz/$target.log" | head -5 >&2 || true
        report+=("$target: CRASH (exit $rc) after ${runs:-?} inputs")
    else
        report+=("$target: ${runs:-?} inputs, ${speed:-?} inputs/s, $cov, no crash")
    fi
done
printf '%s\n' "${report[@]}"
exit $status
