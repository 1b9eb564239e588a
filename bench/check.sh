#!/usr/bin/env bash
# What `signet-milter check` costs for N domains in the README's dual-signing shape: each
# [domain] entry has an RSA-2048 key and gets the "{domain}" Ed25519 signature, so check loads
# 2 keys per domain (every key a message can be signed with). The startup key pass walks the
# same list. Prints the wall time per run (hyperfine, median of 5) and per key, with the load
# average; compare two binaries by giving both.
#
#   bench/check.sh [-n "100 1000 10000"] BINARY [BINARY...]
#   bench/check.sh target/release/signet-milter /tmp/main/signet-milter
set -euo pipefail

counts="100 1000 10000"
if [[ ${1:-} == -n ]]; then
    counts=$2
    shift 2
fi
(($# >= 1)) || { sed -n '2,12p' "$0" >&2; exit 2; }
command -v hyperfine >/dev/null || { echo "bench/check.sh needs hyperfine (apt-get install hyperfine)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
first=$1
"$first" keygen --algo rsa2048 --domain template.example --selector rsa1 --out "$work/seed" >/dev/null 2>&1
"$first" keygen --algo ed25519 --domain template.example --selector ed1 --out "$work/seed" >/dev/null 2>&1

# One key pair copied per domain: check reads and parses every file, as it would distinct keys.
setup() { # N -> config path
    local n=$1 dir="$work/n$1" i
    mkdir -p "$dir/keys"
    {
        printf '[milter]\nlisten = "unix:%s/milter.sock"\n[keys]\ndirectory = "%s/keys"\n' "$dir" "$dir"
        printf '[signature."ed25519"]\ndomain = "{domain}"\nselector = "ed1"\nalgo = "ed25519"\n'
        for ((i = 0; i < n; i++)); do
            printf '[domain."d%d.example"]\nselector = "rsa1"\nadditional_signatures = ["ed25519"]\n' "$i"
        done
    } >"$dir/signet-milter.toml"
    for ((i = 0; i < n; i++)); do
        cp -r "$work/seed/template.example" "$dir/keys/d$i.example"
    done
    echo "$dir/signet-milter.toml"
}

printf '# bench/check.sh, %s, %s, load average %s\n' "$(date -u +%FT%TZ)" \
    "$(lscpu | awk -F: '/Model name/ { gsub(/^ +/, "", $2); print $2; exit }')" \
    "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '| binary | domains | keys listed | check (median) | per key listed |\n|---|---|---|---|---|\n'
for n in $counts; do
    config=$(setup "$n")
    for bin in "$@"; do
        "$bin" check -c "$config" >"$work/out" 2>&1 || { cat "$work/out" >&2; exit 1; }
        keys=$(awk '/^DOMAIN/ { on = 1; next } on && NF && !/keys not usable/' "$work/out" | wc -l)
        hyperfine --warmup 1 --runs 5 --export-json "$work/h.json" -N "$bin check -c $config" >/dev/null 2>&1
        median=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"][0]["median"])' "$work/h.json")
        python3 -c 'import sys; b, n, k, m = sys.argv[1:]; m = float(m); print(f"| {b} | {n} | {k} | {m*1000:.0f} ms | {m*1e6/int(k):.0f} µs |")' \
            "$bin" "$n" "$keys" "$median"
    done
done
printf '# load average after: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
