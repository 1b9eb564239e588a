# shellcheck shell=bash
# Shared helpers for the real-MTA end-to-end tests; sourced by tests/e2e/postfix.sh and
# tests/e2e/sendmail.sh, never run on its own.
#
# What lives here: the work directory and cleanup stack, port checks, the key matrix and the
# milter configuration built from it, the SMTP sink that captures delivered mail, the message
# shapes of the interop matrix, the two independent verifiers (Python dkimpy and OpenDKIM's
# libopendkim) and the result table. What the scripts keep: how their MTA is configured, started
# and fed.
#
# Every delivered message is checked by both verifiers against a local key table (no DNS), and
# the set of signatures (d=, s=) on it must be exactly the expected one: "none" for an outsider.

[[ -n ${E2E_LIB_LOADED:-} ]] && return 0
E2E_LIB_LOADED=1

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$E2E_DIR/../.." && pwd)
PY=/usr/bin/python3 # Debian's python3 has python3-dkim; a pyenv python3 on PATH may not
SIGNET_BIN=${SIGNET_BIN:-target/debug/signet-milter}
case $SIGNET_BIN in /*) ;; *) SIGNET_BIN="$REPO_ROOT/$SIGNET_BIN" ;; esac
DELIVERY_TIMEOUT=${DELIVERY_TIMEOUT:-180}
BIG_MIB=${BIG_MIB:-20}
SINK_DOMAIN=sink.signet-e2e.test
RCPT="rcpt@$SINK_DOMAIN"

E2E_NAME=e2e
log() { printf '[%s] %s\n' "$E2E_NAME" "$*"; }
die() {
    printf '[%s] ERROR: %s\n' "$E2E_NAME" "$*" >&2
    exit 1
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# --- lifecycle -------------------------------------------------------------------------------
# Cleanup actions run in reverse order of registration at exit, whatever the exit path.
E2E_CLEANUPS=()
on_exit() { E2E_CLEANUPS+=("$1"); }

_e2e_exit() {
    local rc=$? i
    set +e
    for ((i = ${#E2E_CLEANUPS[@]} - 1; i >= 0; i--)); do
        eval "${E2E_CLEANUPS[i]}"
    done
    if [[ ${KEEP_WORKDIR:-0} == 1 || $rc -ne 0 ]]; then
        log "work dir kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}

# e2e_begin NAME: checks the common tools, creates $WORK and installs the exit trap.
e2e_begin() {
    E2E_NAME=$1
    [[ $(id -u) -eq 0 ]] || die "must run as root (it reconfigures and starts the system MTA)"
    [[ -x $SIGNET_BIN ]] || die "milter binary $SIGNET_BIN not found; run: cargo build --ignore-rust-version --bin signet-milter"
    local c
    for c in swaks openssl cc pkg-config; do
        command -v "$c" >/dev/null || die "missing $c (see .ci/run for the packages)"
    done
    "$PY" -c 'import dkim, nacl' 2>/dev/null || die "missing python3-dkim / python3-nacl for $PY"
    pkg-config --exists opendkim || die "missing libopendkim-dev (OpenDKIM's verifier library)"
    # 0755: unprivileged MTA processes (Postfix's postlogd, Sendmail's queue runners) read in it.
    WORK=$(mktemp -d "/tmp/signet-e2e-$E2E_NAME.XXXXXX")
    chmod 0755 "$WORK"
    RUN_ID=$(date +%s)-$$
    KEYDIR=$WORK/keys
    SINK_DIR=$WORK/sink
    MILTER_LOG=$WORK/milter.log
    mkdir -p "$KEYDIR" "$SINK_DIR" "$WORK/msgs" "$WORK/results"
    trap _e2e_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    log "binary: $SIGNET_BIN"
    log "work dir: $WORK"
}

# stop_pid PID NAME: SIGTERM, then SIGKILL after 5 s. Only for processes this script started.
stop_pid() {
    local pid=$1 _
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill "$pid" 2>/dev/null
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$2 (pid $pid) ignored SIGTERM; killing it"
        kill -9 "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null || true
}

# --- ports -----------------------------------------------------------------------------------
# Is something listening on TCP port $1? Reads /proc/net/tcp{,6} instead of connecting, so the
# milter does not see (and log) probe connections that never negotiate.
is_listening() {
    local hex
    hex=$(printf '%04X' "$1")
    awk -v p=":$hex" 'NR > 1 && $4 == "0A" && substr($2, length($2) - 4) == p { f = 1 } END { exit !f }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

wait_listening() { # port timeout_s
    local deadline=$((SECONDS + $2))
    while ((SECONDS < deadline)); do
        is_listening "$1" && return 0
        sleep 0.2
    done
    return 1
}

require_free_port() { # port what
    is_listening "$1" && die "TCP port $1 ($2) is already in use; set the matching *_PORT variable"
    return 0
}

# --- verifiers -------------------------------------------------------------------------------
# OpenDKIM's verifier: a small libopendkim program (tests/e2e/opendkim_verify.c explains why not
# `opendkim -t`), built here so that it always matches the installed library.
build_opendkim_verifier() {
    OPENDKIM_VERIFY=$WORK/opendkim_verify
    # shellcheck disable=SC2046 # pkg-config output is a list of flags
    cc -O1 -Wall -Wextra -Werror -o "$OPENDKIM_VERIFY" "$E2E_DIR/opendkim_verify.c" \
        $(pkg-config --cflags --libs opendkim) -lresolv || die "could not build the OpenDKIM verifier"
    log "OpenDKIM verifier built against libopendkim $(pkg-config --modversion opendkim)"
}

# --- keys ------------------------------------------------------------------------------------
# domain          selector  algorithm  used by
KEY_SPECS=(
    "rr.example     rsa2026   rsa2048    profile rr"
    "ss.example     rsa2026   rsa2048    profile ss"
    "rs.example     rsa2026   rsa2048    profile rs"
    "ed.example     ed2026    ed25519    profile ed"
    "dual.example   rsa2026   rsa2048    profile dual (RSA)"
    "dual.example   ed2026    ed25519    profile dual (Ed25519)"
    "esp.example    esp2026   rsa2048    the ESP signature (policy Always, on every signed message)"
    "tenant-a.example t2026   rsa2048    tenant A of the SMTP AUTH submission service"
    "tenant-b.example t2026   ed25519    tenant B"
    "tenant-c.example t2026   ed25519    granted to tenant B's login by the login map file"
    "tenant-d.example t2026   ed25519    granted to tenant A's login by the SQLite database"
    "xn--bcher-kva.example rsa2026 rsa2048 IDN: the entry is bücher.example, mail From the A-label"
    "xn--caf-dma.example ed2026 ed25519  IDN: the entry is the A-label, mail From café.example"
)
# A third party's key: dkimpy signs some inputs with it before they reach the MTA.
OTHER_DOMAIN=other.example
OTHER_SELECTOR=other2026
OTHER_SIG="$OTHER_DOMAIN:$OTHER_SELECTOR"
ESP_SIG="esp.example:esp2026"

make_keys() {
    local spec domain sel algo mode
    for spec in "${KEY_SPECS[@]}"; do
        read -r domain sel algo _ <<<"$spec"
        "$SIGNET_BIN" keygen --algo "$algo" --domain "$domain" --selector "$sel" --out "$KEYDIR" \
            >"$WORK/keygen-$domain-$sel.out" 2>&1 || {
            cat "$WORK/keygen-$domain-$sel.out"
            die "keygen failed for $domain/$sel"
        }
        [[ -s $KEYDIR/$domain/$sel.key && -s $KEYDIR/$domain/$sel.dns ]] ||
            die "keygen did not write $KEYDIR/$domain/$sel.{key,dns}"
        mode=$(stat -c %a "$KEYDIR/$domain/$sel.key")
        [[ $mode == 600 ]] || die "$KEYDIR/$domain/$sel.key has mode $mode, expected 600"
    done
    # dkimpy signs with PKCS#1 PEM only, so the third party's key comes from openssl.
    mkdir -p "$KEYDIR/$OTHER_DOMAIN"
    openssl genrsa -traditional -out "$KEYDIR/$OTHER_DOMAIN/$OTHER_SELECTOR.pem" 2048 2>/dev/null ||
        die "openssl genrsa failed"
    printf 'v=DKIM1; k=rsa; p=%s\n' \
        "$(openssl rsa -in "$KEYDIR/$OTHER_DOMAIN/$OTHER_SELECTOR.pem" -pubout -outform DER 2>/dev/null | base64 -w0)" \
        >"$KEYDIR/$OTHER_DOMAIN/$OTHER_SELECTOR.dns"
    # The same public keys as libopendkim's DKIM_QUERY_FILE table: "<s>._domainkey.<d> <TXT>".
    KEYTABLE=$WORK/keytable
    local f
    for f in "$KEYDIR"/*/*.dns; do
        printf '%s._domainkey.%s %s\n' "$(basename "$f" .dns)" "$(basename "$(dirname "$f")")" "$(cat "$f")"
    done >"$KEYTABLE"
    log "keys: $(wc -l <"$KEYTABLE") public keys in $KEYDIR (table for OpenDKIM: $KEYTABLE)"
}

# --- signing profiles: one author domain each ------------------------------------------------
PROFILES=(rr ss rs ed dual)
declare -A PROFILE_DOMAIN=(
    [rr]=rr.example [ss]=ss.example [rs]=rs.example [ed]=ed.example [dual]=dual.example
)
declare -A PROFILE_DESC=(
    [rr]="RSA-2048 relaxed/relaxed"
    [ss]="RSA-2048 simple/simple"
    [rs]="RSA-2048 relaxed/simple"
    [ed]="Ed25519 relaxed/relaxed"
    [dual]="RSA relaxed + Ed25519 simple"
)
# The author-domain signatures each profile's mail must carry (the ESP one comes on top).
declare -A PROFILE_SIGS=(
    [rr]="rr.example:rsa2026"
    [ss]="ss.example:rsa2026"
    [rs]="rs.example:rsa2026"
    [ed]="ed.example:ed2026"
    [dual]="dual.example:rsa2026 dual.example:ed2026"
)
# An author domain without a [domain] entry: only the ESP's Always signature applies.
UNLISTED_DOMAIN=unlisted.example

# write_milter_config FILE LISTEN [EXTRA_MILTER_LINE...]
write_milter_config() {
    local file=$1 listen=$2 line
    shift 2
    {
        printf '[milter]\nlisten = "%s"\n' "$listen"
        for line in "$@"; do printf '%s\n' "$line"; done
        cat <<EOF
# 127.0.0.1 is trusted (local submissions, the sendmail command); 203.0.113.5 (an XCLIENT
# outsider) is not. SMTP AUTH and the ORIGINATING service make outsiders trusted.
trusted_networks = ["127.0.0.0/8", "::1/128"]
sign_authenticated = true
trusted_daemon_names = ["ORIGINATING"]
on_error = "tempfail"

[keys]
directory = "$KEYDIR"

[base]
additional_signatures = ["esp"]

[domain."rr.example"]
selector = "rsa2026"
header_canonicalization = "relaxed"
body_canonicalization = "relaxed"

[domain."ss.example"]
selector = "rsa2026"
header_canonicalization = "simple"
body_canonicalization = "simple"

[domain."rs.example"]
selector = "rsa2026"
header_canonicalization = "relaxed"
body_canonicalization = "simple"

[domain."ed.example"]
selector = "ed2026"
algo = "ed25519"

[domain."dual.example"]
selector = "rsa2026"
additional_signatures = ["dual-ed25519"]

[signature."dual-ed25519"]
domain = "{domain}"
selector = "ed2026"
algo = "ed25519"
header_canonicalization = "simple"
body_canonicalization = "simple"

[signature."esp"]
domain = "esp.example"
selector = "esp2026"
policy = "Always"

# The tenants of the SMTP AUTH submission service; [authorization] is the default (a login
# signs for its own domain) unless MILTER_EXTRA_CONFIG adds grants.
[domain."tenant-a.example"]
selector = "t2026"
[domain."tenant-b.example"]
selector = "t2026"
[domain."tenant-c.example"]
selector = "t2026"
[domain."tenant-d.example"]
selector = "t2026"

# Internationalized names, each written in the other form than the mail uses.
[domain."bücher.example"]
selector = "rsa2026"
[domain."xn--caf-dma.example"]
selector = "ed2026"
algo = "ed25519"
EOF
        printf '%s\n' "${MILTER_EXTRA_CONFIG:-}"
    } >"$file"
    "$SIGNET_BIN" check -c "$file" >"$WORK/milter-check.out" 2>&1 || {
        cat "$WORK/milter-check.out"
        die "signet-milter check failed for $file"
    }
}

# start_milter CONFIG READY_CHECK...: runs the milter in the background; READY_CHECK is a
# command that succeeds once it accepts connections.
start_milter() {
    local config=$1 deadline
    shift
    NO_COLOR=1 "$SIGNET_BIN" run -c "$config" </dev/null >>"$MILTER_LOG" 2>&1 &
    MILTER_PID=$!
    on_exit 'stop_pid "$MILTER_PID" milter'
    deadline=$((SECONDS + 20))
    until "$@"; do
        if ! kill -0 "$MILTER_PID" 2>/dev/null || ((SECONDS >= deadline)); then
            log "---- milter config ----"
            cat "$config"
            log "---- milter log ----"
            cat "$MILTER_LOG"
            die "the milter did not come up"
        fi
        sleep 0.2
    done
    log "milter running (pid $MILTER_PID)"
}

# --- SMTP sink ---------------------------------------------------------------------------------
start_sink() { # port
    require_free_port "$1" "SMTP sink"
    "$PY" "$E2E_DIR/smtp_sink.py" --listen "127.0.0.1:$1" --dir "$SINK_DIR" \
        </dev/null >>"$WORK/sink.log" 2>&1 &
    SINK_PID=$!
    on_exit 'stop_pid "$SINK_PID" "SMTP sink"'
    wait_listening "$1" 10 || {
        cat "$WORK/sink.log"
        die "SMTP sink did not listen on 127.0.0.1:$1"
    }
    log "SMTP sink on 127.0.0.1:$1 (pid $SINK_PID) stores delivered mail in $SINK_DIR"
}

# --- message shapes ------------------------------------------------------------------------------
SHAPES=(basic folded spacing utf8 nofinalnl emptybody dots presigned)
# 1: the folded and spacing shapes fold the To: header and put a tab after its colon too. Sendmail
# re-formats address headers (To, Cc, From, ...) on output whatever the milter signed, which no
# signature with simple header canonicalization survives; sendmail.sh sets 0 and checks that
# case on its own (shape addrfold, relaxed profiles only).
ADDRESS_WHITESPACE=${ADDRESS_WHITESPACE:-1}
declare -A SHAPE_DESC=(
    [basic]="plain ASCII message"
    [folded]="folded Subject/To/References/Content-Type (space and tab continuations)"
    [spacing]="tab, no space, several spaces after the colon; trailing blanks"
    [addrfold]="folded To, tab after From:/Cc: (Sendmail re-formats these)"
    [utf8]="8-bit UTF-8 in From, Subject and body"
    [nofinalnl]="body without a final line break"
    [emptybody]="empty body"
    [dots]="body lines starting with a dot, a lone dot line"
    [presigned]="already signed by other.example (dkimpy)"
    [big]="${BIG_MIB} MiB body"
)

# _common_headers TOKEN: Date, Message-ID and the test token (LF line ends).
_common_headers() {
    printf '%s\n' \
        "Date: $(date -R)" \
        "Message-ID: <$1@signet-e2e.test>" \
        "X-Signet-Test: $1"
}

# make_message SHAPE FROM_DOMAIN TOKEN OUTFILE: writes the message with LF line ends.
make_message() {
    local shape=$1 domain=$2 token=$3 out=$4
    local from="sender@$domain"
    case $shape in
    basic | presigned)
        {
            printf '%s\n' "From: Signet Test <$from>" "To: Recipient <$RCPT>" \
                "Subject: signet e2e $token"
            _common_headers "$token"
            printf '%s\n' "MIME-Version: 1.0" "Content-Type: text/plain; charset=us-ascii" "" \
                "Hello from the signet-milter end-to-end test ($token)." "Second line." ""
        } >"$out"
        ;;
    folded)
        {
            printf '%s\n' "From: Signet Test <$from>"
            if [[ $ADDRESS_WHITESPACE == 1 ]]; then
                printf '%s\n' "To: Recipient <$RCPT>," " Second Recipient <second@$SINK_DOMAIN>," \
                    "	Third Recipient <third@$SINK_DOMAIN>"
            else
                printf '%s\n' "To: Recipient <$RCPT>"
            fi
            printf '%s\n' "Subject: signet e2e $token: a subject long enough to be folded" \
                "  onto a second line (two spaces)" \
                "	and a third line (tab)" \
                "References: <one@signet-e2e.test>" \
                " <two@signet-e2e.test>" \
                "	<three@signet-e2e.test>"
            _common_headers "$token"
            printf '%s\n' "MIME-Version: 1.0" "Content-Type: text/plain;" "	charset=us-ascii" "" \
                "Folded headers ($token)." ""
        } >"$out"
        ;;
    spacing)
        {
            printf '%s\n' "From:Signet Test <$from>"
            if [[ $ADDRESS_WHITESPACE == 1 ]]; then
                printf '%s\n' "To:	<$RCPT>"
            else
                printf '%s\n' "To:   <$RCPT>"
            fi
            printf '%s\n' \
                "Subject:    several   spaces   inside and after the colon ($token)   " \
                "X-Spacing: 	 tab and spaces mixed 	 "
            _common_headers "$token"
            printf '%s\n' "MIME-Version:1.0" "Content-Type:   text/plain;   charset=us-ascii" "" \
                "Trailing blanks on this line   " "	a line that starts with a tab" \
                "two  spaces  between  words" "" ""
        } >"$out"
        ;;
    utf8)
        {
            printf '%s\n' "From: Jörg Müller <$from>" "To: Zoë Ünïcödé <$RCPT>" \
                "Subject: Grüße aus Köln – ✓ 日本語 ($token)"
            _common_headers "$token"
            printf '%s\n' "MIME-Version: 1.0" "Content-Type: text/plain; charset=utf-8" \
                "Content-Transfer-Encoding: 8bit" "" \
                "Grüße! Ça va? Ünïcödé in the body: ✓ 日本語 😀" "Zweite Zeile: äöüß ÄÖÜ" ""
        } >"$out"
        ;;
    nofinalnl)
        {
            printf '%s\n' "From: Signet Test <$from>" "To: <$RCPT>" "Subject: no final line break ($token)"
            _common_headers "$token"
            printf '%s\n' "" "First line." "Blank line follows." ""
            printf '%s' "The last line has no line break"
        } >"$out"
        ;;
    emptybody)
        {
            printf '%s\n' "From: Signet Test <$from>" "To: <$RCPT>" "Subject: empty body ($token)"
            _common_headers "$token"
            printf '\n'
        } >"$out"
        ;;
    addrfold)
        {
            printf '%s\n' "From:	Signet Test <$from>" \
                "To: Recipient <$RCPT>," " Second Recipient <second@$SINK_DOMAIN>," \
                "	Third Recipient <third@$SINK_DOMAIN>" \
                "Cc:	Fourth <fourth@$SINK_DOMAIN>,   Fifth <fifth@$SINK_DOMAIN>" \
                "Subject: address headers folded and tabbed ($token)"
            _common_headers "$token"
            printf '%s\n' "" "Body." ""
        } >"$out"
        ;;
    dots)
        {
            printf '%s\n' "From: Signet Test <$from>" "To: <$RCPT>" "Subject: leading dots ($token)"
            _common_headers "$token"
            printf '%s\n' "" ".a line starting with a dot" "..two dots" "." \
                "(a line with a single dot above)" ". dot space" "..." "" "."
        } >"$out"
        ;;
    *) die "unknown message shape $shape" ;;
    esac
    if [[ $shape == presigned ]]; then
        presign "$out"
    fi
}

# presign FILE: a third party (dkimpy, other.example) signs the message in place, as if it came
# from another domain's signer; it must still verify after our milter and the MTA.
presign() {
    local key=$KEYDIR/$OTHER_DOMAIN/$OTHER_SELECTOR.pem
    "$PY" - "$1" "$key" "$OTHER_DOMAIN" "$OTHER_SELECTOR" <<'EOF' || die "dkimpy could not pre-sign $1"
import sys, dkim
path, keyfile, domain, selector = sys.argv[1:]
msg = open(path, "rb").read().replace(b"\n", b"\r\n")
sig = dkim.sign(msg, selector.encode(), domain.encode(), open(keyfile, "rb").read(),
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
open(path, "wb").write((sig + msg).replace(b"\r\n", b"\n"))
EOF
}

# make_big_message DOMAIN TOKEN OUTFILE: BIG_MIB MiB of 78-character lines.
make_big_message() {
    local from="sender@$1"
    {
        printf '%s\n' "From: Signet Test <$from>" "To: <$RCPT>" "Subject: ${BIG_MIB} MiB body ($2)"
        _common_headers "$2"
        printf '%s\n' "MIME-Version: 1.0" "Content-Type: text/plain; charset=us-ascii" ""
    } >"$3"
    "$PY" - "$3" "$BIG_MIB" <<'EOF'
import sys
path, mib = sys.argv[1], int(sys.argv[2])
target = mib * 1024 * 1024
with open(path, "ab") as f:
    written, n = 0, 0
    while written < target:
        line = b"line %09d: the quick brown fox jumps over the lazy dog 0123456789\n" % n
        f.write(line)
        written += len(line)
        n += 1
EOF
}

# wire_format IN OUT: the SMTP DATA payload for swaks --no-data-fixup: CRLF line ends, leading
# dots doubled, and the terminating dot (swaks appends the final CRLF). A message without a
# final line break gets one: on the wire DATA always ends in CRLF "." CRLF.
wire_format() {
    "$PY" - "$1" "$2" <<'EOF'
import sys
data = open(sys.argv[1], "rb").read().replace(b"\r\n", b"\n")
lines = data.split(b"\n")
if data.endswith(b"\n"):
    lines.pop()
stuffed = [b"." + l if l.startswith(b".") else l for l in lines]
open(sys.argv[2], "wb").write(b"\r\n".join(stuffed) + b"\r\n.")
EOF
}

# --- cases ---------------------------------------------------------------------------------------
CASES=()
declare -A C_MTA C_PATH C_PROFILE C_SHAPE C_EXPECT C_CHECK C_SENDRC C_QID C_DKIMPY C_OPENDKIM C_RESULT C_NOTE

# case_add TOKEN MTA PATH PROFILE-LABEL SHAPE EXPECT [CHECK]
#   EXPECT: the exact set of "domain:selector" signatures the delivered message must carry, or
#   "none". CHECK (optional): "trust=<text>" the milter's log line for this queue id must
#   contain, "log=<text>" some milter log line for this queue id must contain, or
#   "refused=<client>" (the milter declined it at MAIL FROM).
case_add() {
    CASES+=("$1")
    C_MTA[$1]=$2 C_PATH[$1]=$3 C_PROFILE[$1]=$4 C_SHAPE[$1]=$5 C_EXPECT[$1]=$6 C_CHECK[$1]=${7:-}
    C_SENDRC[$1]=pending C_QID[$1]='' C_NOTE[$1]=''
}

# expected_sigs PROFILE SHAPE: the signatures a matrix message must carry.
expected_sigs() {
    local sigs="${PROFILE_SIGS[$1]} $ESP_SIG"
    [[ $2 == presigned ]] && sigs+=" $OTHER_SIG"
    printf '%s' "$sigs"
}

# case_sent TOKEN RC TRANSCRIPT: records how the submission went; the queue id is taken from
# the MTA's "queued as" / "accepted for delivery" reply.
case_sent() {
    local token=$1 rc=$2 transcript=$3 qid=
    C_SENDRC[$token]=$rc
    if [[ -f $transcript ]]; then
        qid=$(grep -oE 'queued as [A-Za-z0-9]+' "$transcript" | tail -n1 | awk '{print $3}' || true)
        [[ -n $qid ]] || qid=$(grep -oE '<- +250 2\.0\.0 [A-Za-z0-9]+ Message accepted' "$transcript" |
            awk '{print $4}' | tail -n1 || true)
    fi
    C_QID[$token]=$qid
    if [[ $rc -ne 0 ]]; then
        log "submission of $token failed (rc=$rc):"
        [[ -f $transcript ]] && tail -n 15 "$transcript" | sed 's/^/    /'
    fi
    return 0
}

# swaks_send TOKEN PORT MSGFILE FROM [SWAKS_ARGS...]: one SMTP submission to 127.0.0.1:PORT.
swaks_send() {
    local token=$1 port=$2 msg=$3 from=$4 rc=0
    shift 4
    wire_format "$msg" "$msg.wire"
    swaks --server 127.0.0.1 --port "$port" --helo client.signet-e2e.test \
        --from "$from" --to "$RCPT" --data "@$msg.wire" --no-data-fixup \
        --timeout 300 "$@" >"$WORK/msgs/$token.smtp" 2>&1 || rc=$?
    rm -f "$msg.wire"
    case_sent "$token" "$rc" "$WORK/msgs/$token.smtp"
}

# wait_for_delivery: until every successfully submitted case is in the sink, or the timeout.
wait_for_delivery() {
    local deadline=$((SECONDS + DELIVERY_TIMEOUT)) t missing
    log "waiting up to ${DELIVERY_TIMEOUT}s for delivery to the sink"
    while :; do
        missing=0
        for t in "${CASES[@]}"; do
            [[ ${C_SENDRC[$t]} == 0 && ! -f $SINK_DIR/$t.eml ]] && missing=$((missing + 1))
        done
        ((missing == 0)) && break
        if ((SECONDS >= deadline)); then
            log "$missing message(s) not delivered within ${DELIVERY_TIMEOUT}s"
            break
        fi
        sleep 0.3
    done
}

# The (d, s) pairs a verifier reported, one "d:s" per line, sorted.
_reported_pairs() { grep -oE 'd=[^ ]+ s=[^ :]+' "$1" | sed 's/^d=//; s/ s=/:/' | tr 'A-Z' 'a-z' | sort -u; }
_expected_pairs() { [[ $1 == none ]] || tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -u; }

# _judge OUTPUT_FILE RC EXPECT NAME: a verifier's verdict, "pass" or "FAIL (why)".
_judge() {
    local out=$1 rc=$2 expect=$3 got want
    got=$(_reported_pairs "$out")
    want=$(_expected_pairs "$expect")
    if [[ $expect == none ]]; then
        [[ -z $got ]] && echo pass || echo "FAIL (signed: $(tr '\n' ' ' <<<"$got"))"
        return
    fi
    if [[ $rc -ne 0 ]]; then
        echo "FAIL ($(grep -m1 -E 'FAIL|error|no DKIM' "$out" | sed 's/^.*: d=/d=/' | cut -c1-70))"
    elif [[ $got != "$want" ]]; then
        echo "FAIL (signatures $(tr '\n' ' ' <<<"$got")!= expected)"
    else
        echo pass
    fi
}

# verify_case TOKEN: both verifiers on the delivered message, plus the case's log check.
verify_case() {
    local t=$1 f=$SINK_DIR/$1.eml out rc
    if [[ ${C_SENDRC[$t]} != 0 ]]; then
        C_DKIMPY[$t]=- C_OPENDKIM[$t]=- C_RESULT[$t]="FAIL (submission rc=${C_SENDRC[$t]})"
        return
    fi
    if [[ ! -f $f ]]; then
        C_DKIMPY[$t]=- C_OPENDKIM[$t]=- C_RESULT[$t]="FAIL (not delivered)"
        return
    fi
    out=$WORK/results/$t.dkimpy
    rc=0
    if [[ ${C_EXPECT[$t]} == none ]]; then
        "$PY" "$REPO_ROOT/tests/verify_dkim.py" --keys "$KEYDIR" --expect-none "$f" >"$out" 2>&1 || rc=$?
    else
        "$PY" "$REPO_ROOT/tests/verify_dkim.py" --keys "$KEYDIR" "$f" >"$out" 2>&1 || rc=$?
    fi
    C_DKIMPY[$t]=$(_judge "$out" "$rc" "${C_EXPECT[$t]}")
    out=$WORK/results/$t.opendkim
    rc=0
    "$OPENDKIM_VERIFY" "$KEYTABLE" "$f" >"$out" 2>&1 || rc=$?
    C_OPENDKIM[$t]=$(_judge "$out" "$rc" "${C_EXPECT[$t]}")
    C_RESULT[$t]=pass
    if [[ ${C_DKIMPY[$t]} != pass || ${C_OPENDKIM[$t]} != pass ]]; then
        C_RESULT[$t]=FAIL
    fi
    _check_milter_log "$t" || C_RESULT[$t]="FAIL (${C_NOTE[$t]})"
    return 0
}

# The milter's own account must agree: why it signed (trust=...), or that it declined.
_check_milter_log() {
    local t=$1 check=${C_CHECK[$1]} qid=${C_QID[$1]}
    case $check in
    "") return 0 ;;
    trust=*)
        if [[ -z $qid ]]; then
            C_NOTE[$t]="no queue id in the SMTP reply"
            return 1
        fi
        grep -F "queue_id=$qid " "$MILTER_LOG" | grep -qF "$check" && return 0
        C_NOTE[$t]="milter log for $qid lacks '$check'"
        return 1
        ;;
    log=*)
        if [[ -z $qid ]]; then
            C_NOTE[$t]="no queue id in the SMTP reply"
            return 1
        fi
        # Warnings carry the queue id as their last field.
        grep -E "queue_id=$qid( |\$)" "$MILTER_LOG" | grep -qF "${check#log=}" && return 0
        C_NOTE[$t]="milter log for $qid lacks '${check#log=}'"
        return 1
        ;;
    refused=*)
        grep -F "sender=<$t@" "$MILTER_LOG" | grep -F "client=${check#refused=}" |
            grep -qF "not signed: client is neither trusted nor authenticated" && return 0
        C_NOTE[$t]="milter log lacks the refusal for client ${check#refused=}"
        return 1
        ;;
    *) die "unknown check $check" ;;
    esac
}

# Extra assertions that are not deliveries (e.g. "a wrong SASL password is refused").
ASSERTS=()
declare -A A_RESULT
assert_add() { # name result
    ASSERTS+=("$1")
    A_RESULT[$1]=$2
}

# print_results: the table of every case; returns 1 if anything failed.
print_results() {
    local t failed=0 n=0 a sigs
    printf '\n%-8s %-12s %-29s %-10s %-53s %-8s %-8s %s\n' \
        MTA PATH "SIGNING PROFILE" SHAPE "EXPECTED SIGNATURES (d:s)" DKIMPY OPENDKIM RESULT
    printf '%s\n' "$(printf '%.0s-' {1..150})"
    for t in "${CASES[@]}"; do
        n=$((n + 1))
        sigs=${C_EXPECT[$t]}
        sigs=${sigs//.example/}
        printf '%-8s %-12s %-29s %-10s %-53s %-8s %-8s %s\n' "${C_MTA[$t]}" "${C_PATH[$t]}" \
            "${C_PROFILE[$t]}" "${C_SHAPE[$t]}" "$sigs" "${C_DKIMPY[$t]%% *}" \
            "${C_OPENDKIM[$t]%% *}" "${C_RESULT[$t]}"
        [[ ${C_RESULT[$t]} == pass ]] || failed=$((failed + 1))
    done
    for a in "${ASSERTS[@]}"; do
        n=$((n + 1))
        printf '%-8s %-125s %s\n' "${E2E_NAME}" "assert: $a" "${A_RESULT[$a]}"
        [[ ${A_RESULT[$a]} == pass ]] || failed=$((failed + 1))
    done
    printf '(signature domains shown without ".example"; a verifier column shows its own verdict)\n'
    for a in "${!SHAPE_DESC[@]}"; do
        printf '%s\n' "${C_SHAPE[@]}" | grep -qxF "$a" && printf '  %-10s %s\n' "$a" "${SHAPE_DESC[$a]}"
    done | sort
    echo
    if ((failed > 0)); then
        for t in "${CASES[@]}"; do
            [[ ${C_RESULT[$t]} == pass ]] && continue
            log "FAILED: $t: ${C_RESULT[$t]}"
            log "   dkimpy:   ${C_DKIMPY[$t]}"
            log "   opendkim: ${C_OPENDKIM[$t]}"
            [[ -f $WORK/results/$t.dkimpy ]] && sed 's/^/      dkimpy | /' "$WORK/results/$t.dkimpy"
            [[ -f $WORK/results/$t.opendkim ]] && sed 's/^/    opendkim | /' "$WORK/results/$t.opendkim"
        done
    fi
    E2E_TOTAL=$n E2E_FAILED=$failed
    ((failed == 0))
}

# header_field FILE NAME: the first NAME: field of the header section with its continuation
# lines, CR removed (to compare what was submitted with what was delivered).
header_field() {
    awk -v want="$(tr 'A-Z' 'a-z' <<<"$2")" '
        { sub(/\r$/, "") }
        /^$/ { exit }
        /^[ \t]/ { if (on) print; next }
        { on = 0; n = index($0, ":"); if (!done && n && tolower(substr($0, 1, n - 1)) == want) { on = 1; done = 1; print } }
    ' "$1"
}

# show_header_block FILE LABEL: where the DKIM-Signature landed, for the log.
show_header_block() {
    [[ -f $1 ]] || return 0
    log "header block of $2 as delivered:"
    sed -n '1,/^\r\{0,1\}$/p' "$1" | cut -c1-120 | sed 's/\r$//; s/^/    | /'
}

# --- 8-bit bodies, a next hop without 8BITMIME, and `check` on the MTA's own settings ------------
# A signature is only worth something if the message still verifies after the MTA sent it on.
# An MTA that relays an 8-bit body to a server without 8BITMIME converts it to quoted-printable
# unless told not to (Postfix: disable_mime_output_conversion = yes; Sendmail: flag 8 on its SMTP
# mailers), and that happens after the milter signed it. These helpers send such a message the
# way a mail client does, to a sink that announces neither 8BITMIME nor SMTPUTF8, and tell what
# arrived. The 7-bit sink stores into $SINK_DIR too, so verify_case works for its messages.
SINK7_DOMAIN=sink7.signet-e2e.test
RCPT7="rcpt@$SINK7_DOMAIN"
SHAPE_DESC[body8bit]="8-bit UTF-8 body (Content-Transfer-Encoding: 8bit) to a next hop without 8BITMIME"

start_sink_7bit() { # port
    require_free_port "$1" "7-bit SMTP sink"
    "$PY" "$E2E_DIR/smtp_sink.py" --listen "127.0.0.1:$1" --dir "$SINK_DIR" --7bit \
        </dev/null >>"$WORK/sink7.log" 2>&1 &
    SINK7_PID=$!
    on_exit 'stop_pid "$SINK7_PID" "7-bit SMTP sink"'
    wait_listening "$1" 10 || {
        cat "$WORK/sink7.log"
        die "7-bit SMTP sink did not listen on 127.0.0.1:$1"
    }
    log "7-bit SMTP sink (no 8BITMIME, no SMTPUTF8) on 127.0.0.1:$1 (pid $SINK7_PID)"
}

# make_8bit_body_message DOMAIN TOKEN OUTFILE: ASCII header fields, an 8-bit UTF-8 body.
make_8bit_body_message() {
    {
        printf '%s\n' "From: Signet Test <sender@$1>" "To: Recipient <$RCPT7>" \
            "Subject: 8-bit body to a 7-bit next hop ($2)"
        _common_headers "$2"
        printf '%s\n' "MIME-Version: 1.0" "Content-Type: text/plain; charset=utf-8" \
            "Content-Transfer-Encoding: 8bit" "" \
            "Grüße aus Köln! Ça va? Ünïcödé: ✓ 日本語 😀" "Zweite Zeile: äöüß ÄÖÜ" \
            "A line of plain ASCII." ""
    } >"$3"
}

# smtp_send_8bitmime TOKEN PORT MSGFILE FROM RCPT: one SMTP submission as a mail client makes it:
# BODY=8BITMIME when the server offers it. The transcript has the final reply in swaks' form,
# so case_sent finds the queue id.
smtp_send_8bitmime() {
    local rc=0
    "$PY" - "$2" "$3" "$4" "$5" >"$WORK/msgs/$1.smtp" 2>&1 <<'PYEOF' || rc=$?
import smtplib, sys
port, path, sender, rcpt = sys.argv[1:]
data = open(path, "rb").read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
s = smtplib.SMTP("127.0.0.1", int(port), local_hostname="client.signet-e2e.test", timeout=300)
s.ehlo()
options = ["BODY=8BITMIME"] if s.has_extn("8bitmime") else []
print("-> MAIL FROM:<%s> %s" % (sender, " ".join(options)))
code, reply = s.mail(sender, options)
print("<-  %d %s" % (code, reply.decode()))
if code != 250:
    sys.exit(1)
code, reply = s.rcpt(rcpt)
print("<-  %d %s" % (code, reply.decode()))
if code not in (250, 251):
    sys.exit(1)
code, reply = s.data(data)
print("<-  %d %s" % (code, reply.decode()))
s.quit()
sys.exit(0 if code == 250 else 1)
PYEOF
    case_sent "$1" "$rc" "$WORK/msgs/$1.smtp"
}

# wait_for_sink TOKEN: until the message is in the sink (DELIVERY_TIMEOUT); 1 if it is not.
wait_for_sink() {
    local deadline=$((SECONDS + DELIVERY_TIMEOUT))
    until [[ -f $SINK_DIR/$1.eml ]]; do
        ((SECONDS < deadline)) || return 1
        sleep 0.3
    done
}

# sink_got_8bit TOKEN: whether the sink received 8-bit bytes for that message.
sink_got_8bit() { grep -qx '8bit-data: yes' "$SINK_DIR/$1.env" 2>/dev/null; }

# The Content-Transfer-Encoding the message arrived with, lower case.
_delivered_cte() { header_field "$SINK_DIR/$1.eml" Content-Transfer-Encoding | sed 's/^[^:]*:[[:space:]]*//' | tr 'A-Z' 'a-z'; }

# assert_8bit_kept TOKEN MTA: the 8-bit body reached the 7-bit next hop as it was signed.
assert_8bit_kept() {
    local name="$2 sent the 8-bit body to the 7-bit next hop unconverted (so the signatures above can verify)"
    if [[ ! -f $SINK_DIR/$1.eml ]]; then
        assert_add "$name" "FAIL (not delivered)"
    elif sink_got_8bit "$1" && [[ $(_delivered_cte "$1") == 8bit ]]; then
        assert_add "$name" pass
    else
        assert_add "$name" "FAIL (arrived as $(_delivered_cte "$1"), 8-bit bytes: $(sink_got_8bit "$1" && echo yes || echo no))"
    fi
}

# assert_downgraded TOKEN MTA SETTING EXPECT: without SETTING the MTA converted the 8-bit body to
# 7 bit (Postfix uses quoted-printable, Sendmail picks quoted-printable or base64) after signing,
# and both verifiers fail every signature (EXPECT: the d:s
# pairs): dkimpy on the body hash; libopendkim already on the header hash, because the
# conversion also rewrote the signed Content-Transfer-Encoding field. The proof that the
# setting is what keeps signatures intact.
assert_downgraded() {
    local t=$1 f=$SINK_DIR/$1.eml name rc_py=0 rc_od=0 bad=
    name="without $3, $2 converted the 8-bit body to 7 bit ($(_delivered_cte "$t" 2>/dev/null || true)) and both verifiers fail it"
    if [[ ! -f $f ]]; then
        assert_add "$name" "FAIL (not delivered)"
        return
    fi
    "$PY" "$REPO_ROOT/tests/verify_dkim.py" --keys "$KEYDIR" "$f" >"$WORK/results/$t.dkimpy" 2>&1 || rc_py=$?
    "$OPENDKIM_VERIFY" "$KEYTABLE" "$f" >"$WORK/results/$t.opendkim" 2>&1 || rc_od=$?
    sink_got_8bit "$t" && bad+=" 8-bit bytes arrived;"
    [[ $(_delivered_cte "$t") == quoted-printable || $(_delivered_cte "$t") == base64 ]] ||
        bad+=" Content-Transfer-Encoding: $(_delivered_cte "$t");"
    [[ $rc_py -ne 0 && $rc_od -ne 0 ]] || bad+=" a verifier passed it (dkimpy rc=$rc_py, opendkim rc=$rc_od);"
    # Every signature must be there, and fail on the body hash, not on something else.
    local v
    for v in dkimpy opendkim; do
        [[ $(_reported_pairs "$WORK/results/$t.$v") == "$(_expected_pairs "$4")" ]] ||
            bad+=" $v saw signatures $(_reported_pairs "$WORK/results/$t.$v" | tr '\n' ' ');"
        grep -E 'd=[^ ]+ s=' "$WORK/results/$t.$v" | grep -qv ': FAIL' && bad+=" $v passed a signature;"
    done
    grep -E 'd=[^ ]+ s=' "$WORK/results/$t.dkimpy" | grep -qv 'body hash mismatch' && bad+=" dkimpy: not all on the body hash;"
    if [[ -z $bad ]]; then
        assert_add "$name" pass
    else
        assert_add "$name" "FAIL ($bad)"
        sed 's/^/      dkimpy | /' "$WORK/results/$t.dkimpy"
        sed 's/^/    opendkim | /' "$WORK/results/$t.opendkim"
    fi
}

# run_mta_check NAME ARGS...: `signet-milter check ARGS...` against this test's milter config;
# its output goes to $WORK/results/check-NAME.out and its exit status to CHECK_RC[NAME].
declare -A CHECK_RC
run_mta_check() {
    local name=$1 rc=0
    shift
    "$SIGNET_BIN" check -c "$WORK/milter.toml" "$@" >"$WORK/results/check-$name.out" 2>&1 || rc=$?
    CHECK_RC[$name]=$rc
}

# The [tag]s a check output reported as PROBLEM or WARNING, one per line, sorted.
_check_tags() { sed -nE 's/^  (PROBLEM|WARNING)  \[([a-z0-9-]+)\].*/\2/p' "$WORK/results/check-$1.out" | sort -u; }

# assert_check_reports_none NAME LABEL: exit 0 and not one problem or warning.
assert_check_reports_none() {
    local tags
    tags=$(_check_tags "$1" | tr '\n' ' ')
    if [[ ${CHECK_RC[$1]} -eq 0 && -z $tags ]] && grep -qx '0 problems, 0 warnings' "$WORK/results/check-$1.out"; then
        assert_add "$2" pass
    else
        assert_add "$2" "FAIL (exit ${CHECK_RC[$1]}, reported: ${tags:-none})"
        sed 's/^/    check | /' "$WORK/results/check-$1.out"
    fi
}

# assert_check_reports NAME LABEL RC TAG...: exit status RC (1 when a tag is a problem, 0 when
# all are warnings) and exactly these tags reported.
assert_check_reports() {
    local name=$1 label=$2 rc=$3 got want
    shift 3
    got=$(_check_tags "$name" | tr '\n' ' ')
    want=$(printf '%s\n' "$@" | sort -u | tr '\n' ' ')
    if [[ ${CHECK_RC[$name]} -eq $rc && $got == "$want" ]]; then
        assert_add "$label" pass
    else
        assert_add "$label" "FAIL (exit ${CHECK_RC[$name]}, reported: ${got:-none}; expected: $want)"
        sed 's/^/    check | /' "$WORK/results/check-$name.out"
    fi
}
