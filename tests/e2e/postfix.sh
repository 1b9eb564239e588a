#!/usr/bin/env bash
# End-to-end test: signet-milter behind a real (Debian) Postfix.
#
#   bash tests/e2e/postfix.sh            # binary from $SIGNET_BIN (default target/debug/signet-milter)
#
# What it does:
#   * generates RSA-2048 and Ed25519 keys for several domains with `signet-milter keygen`,
#   * starts `signet-milter run` on an inet socket on 127.0.0.1 (random free port),
#   * reconfigures the local Postfix with `postconf` (main.cf/master.cf are backed up and
#     restored on exit), starts it with `postfix start`,
#   * sends one message per (domain, path) case: path "smtp" = swaks to 127.0.0.1:2525
#     (smtpd_milters), path "sendmail" = /usr/sbin/sendmail -t (pickup -> non_smtpd_milters),
#   * waits for local delivery to ~dkimtest/Maildir and checks every delivered message with
#     tests/verify_dkim.py (dkimpy, independent of our Rust code).
#
# Requirements: run as root on Debian 12 with postfix, swaks, python3-dkim, openssl installed
# (.ci/run installs them). No systemd needed. Only loopback addresses are used.
#
# Environment knobs: SIGNET_BIN, SMTP_PORT (default 2525), DELIVERY_TIMEOUT (default 30 s),
# KEEP_WORKDIR=1 (do not delete the temp dir), VERBOSE=1 (always print the Postfix log).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO_ROOT"

SIGNET_BIN=${SIGNET_BIN:-target/debug/signet-milter}
SMTP_PORT=${SMTP_PORT:-2525}
DELIVERY_TIMEOUT=${DELIVERY_TIMEOUT:-30}
VERIFY="/usr/bin/python3 $REPO_ROOT/tests/verify_dkim.py"
TEST_USER=dkimtest
RCPT="$TEST_USER@localhost"
PF_DIR=/etc/postfix
# Pristine copy of the Postfix config. Kept outside the per-run temp dir so that a run that was
# killed with SIGKILL (trap not run) is repaired by the next run: if main.cf still carries our
# marker comment, the saved pristine copy is restored before anything else happens.
PF_BACKUP=/var/tmp/signet-e2e-postfix-backup
MARKER="# signet-milter e2e test: this file is temporarily modified by tests/e2e/postfix.sh"

log() { printf '[e2e] %s\n' "$*"; }
die() { printf '[e2e] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (it reconfigures and starts the system Postfix)"
case $SIGNET_BIN in /*) ;; *) SIGNET_BIN="$REPO_ROOT/$SIGNET_BIN" ;; esac
[[ -x $SIGNET_BIN ]] || die "milter binary $SIGNET_BIN not found; run: cargo build --ignore-rust-version --bin signet-milter"
for c in postconf postfix postqueue swaks openssl /usr/sbin/sendmail; do
    command -v "$c" >/dev/null || die "missing $c (apt-get install postfix swaks openssl)"
done
/usr/bin/python3 -c 'import dkim, nacl' 2>/dev/null || die "missing python3-dkim / python3-nacl (apt-get install python3-dkim)"

# ---------------------------------------------------------------------------------------------
# Work dir (0755: postlogd and local(8) run unprivileged and need to reach files in it)
WORK=$(mktemp -d /tmp/signet-e2e.XXXXXX)
chmod 0755 "$WORK"
KEYDIR=$WORK/keys
PF_LOG=$WORK/postfix.log
MILTER_LOG=$WORK/milter.log
RUN_ID=$(date +%s)-$$
mkdir -p "$KEYDIR" "$WORK/msgs"

MILTER_PID=
POSTFIX_STARTED_BY_US=0
POSTFIX_WAS_RUNNING=0
PF_MODIFIED=0
FAILED=0

restore_postfix_config() {
    if [[ -f $PF_BACKUP/main.cf && -f $PF_BACKUP/master.cf ]]; then
        cp -p "$PF_BACKUP/main.cf" "$PF_DIR/main.cf"
        cp -p "$PF_BACKUP/master.cf" "$PF_DIR/master.cf"
        rm -rf "$PF_BACKUP"
    fi
}

# Remove this run's messages that are still queued (e.g. tempfailed in maildrop) so they are
# not delivered later by someone else's Postfix start. Only files carrying our RUN_ID are touched.
purge_test_mail() {
    local qdir q f id
    qdir=$(postconf -h queue_directory 2>/dev/null) || return 0
    for q in maildrop incoming active deferred hold; do
        [[ -d $qdir/$q ]] || continue
        grep -rlsF "$RUN_ID" "$qdir/$q" 2>/dev/null | while read -r f; do
            id=${f##*/}
            postsuper -d "$id" "$q" >/dev/null 2>&1 && log "purged queued test message $id ($q)"
        done
    done
    return 0
}

cleanup() {
    local rc=$?
    set +e
    if [[ -n $MILTER_PID ]] && kill -0 "$MILTER_PID" 2>/dev/null; then
        kill "$MILTER_PID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$MILTER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$MILTER_PID" 2>/dev/null && kill -9 "$MILTER_PID" 2>/dev/null
        wait "$MILTER_PID" 2>/dev/null
    fi
    purge_test_mail
    if [[ $POSTFIX_STARTED_BY_US -eq 1 ]]; then
        postfix stop >/dev/null 2>&1
        # wait for master to go away so a following run can bind the port again
        for _ in $(seq 50); do postfix status >/dev/null 2>&1 || break; sleep 0.1; done
    fi
    if [[ $PF_MODIFIED -eq 1 ]]; then
        restore_postfix_config
        log "restored $PF_DIR/main.cf and master.cf"
    fi
    if [[ $POSTFIX_WAS_RUNNING -eq 1 ]]; then
        log "restarting the Postfix that was running before the test"
        postfix start >/dev/null 2>&1 || log "warning: could not restart Postfix"
    fi
    if [[ ${KEEP_WORKDIR:-0} == 1 || $rc -ne 0 ]]; then
        log "work dir kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

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

free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# ---------------------------------------------------------------------------------------------
# Test matrix: case  domain  selector  keygen-algo  header/body canonicalization
CASES=(
    "rsa-relaxed    example.com        rsa2026 rsa2048 relaxed"
    "rsa-simple     example.net        rsa2026 rsa2048 simple"
    "ed-relaxed     ed.example         ed2026  ed25519 relaxed"
    "ed-simple      ed-simple.example  ed2026  ed25519 simple"
)

log "binary: $SIGNET_BIN"
log "work dir: $WORK"

# --- keys ------------------------------------------------------------------------------------
log "generating keys"
for c in "${CASES[@]}"; do
    read -r name domain sel algo canon <<<"$c"
    "$SIGNET_BIN" keygen --algo "$algo" --domain "$domain" --selector "$sel" --out "$KEYDIR" \
        >"$WORK/keygen-$name.out" 2>&1 || { cat "$WORK/keygen-$name.out"; die "keygen failed for $name"; }
    [[ -s $KEYDIR/$domain/$sel.key ]] || die "keygen did not write $KEYDIR/$domain/$sel.key"
    [[ -s $KEYDIR/$domain/$sel.dns ]] || die "keygen did not write $KEYDIR/$domain/$sel.dns"
    mode=$(stat -c %a "$KEYDIR/$domain/$sel.key")
    [[ $mode == 600 ]] || die "$KEYDIR/$domain/$sel.key has mode $mode, expected 600"
    log "  $domain/$sel ($algo): $(cut -c1-60 "$KEYDIR/$domain/$sel.dns")..."
done

# --- milter ----------------------------------------------------------------------------------
MILTER_PORT=$(free_port)
# Postfix's smtpd (and cleanup) run chrooted in /var/spool/postfix on Debian. An inet socket on
# 127.0.0.1 sidesteps that. A unix socket would have to live inside the chroot, e.g.
#   listen = "unix:/var/spool/postfix/signet/signet.sock"  (socket_group = "postfix", socket_mode = "0660")
# with Postfix configured as  smtpd_milters = unix:/signet/signet.sock  (path relative to the chroot).
{
    cat <<EOF
[milter]
listen = "inet:127.0.0.1:$MILTER_PORT"
trusted_networks = ["127.0.0.0/8", "::1/128"]

[keys]
directory = "$KEYDIR"
EOF
    for c in "${CASES[@]}"; do
        read -r name domain sel algo canon <<<"$c"
        printf '\n[domain."%s"]\nselector = "%s"\n' "$domain" "$sel"
        [[ $algo == ed25519 ]] && printf 'algo = "ed25519"\n'
        printf 'header_canonicalization = "%s"\nbody_canonicalization = "%s"\n' "$canon" "$canon"
    done
} >"$WORK/milter.toml"

log "starting milter on inet:127.0.0.1:$MILTER_PORT"
NO_COLOR=1 "$SIGNET_BIN" run -c "$WORK/milter.toml" </dev/null >>"$MILTER_LOG" 2>&1 &
MILTER_PID=$!
if ! wait_listening "$MILTER_PORT" 20 || ! kill -0 "$MILTER_PID" 2>/dev/null; then
    log "---- milter config ----"; cat "$WORK/milter.toml"
    log "---- milter log ----"; cat "$MILTER_LOG"
    die "milter did not come up on 127.0.0.1:$MILTER_PORT"
fi
log "milter running, pid $MILTER_PID"

# --- Postfix config --------------------------------------------------------------------------
STALE_RUN=0
grep -qxF "$MARKER" "$PF_DIR/main.cf" && STALE_RUN=1
if postfix status >/dev/null 2>&1; then
    if [[ $STALE_RUN -eq 1 ]]; then
        log "Postfix left running by an interrupted earlier run; stopping it"
    else
        log "Postfix is already running; stopping it for the test (it is restarted afterwards)"
        POSTFIX_WAS_RUNNING=1
    fi
    postfix stop >/dev/null 2>&1 || true
    for _ in $(seq 50); do postfix status >/dev/null 2>&1 || break; sleep 0.1; done
fi
if [[ $STALE_RUN -eq 1 ]]; then
    if [[ -f $PF_BACKUP/main.cf ]]; then
        log "main.cf still modified by an interrupted earlier run; restoring pristine copy first"
        restore_postfix_config
    else
        die "$PF_DIR/main.cf carries the e2e marker but no backup in $PF_BACKUP; fix it by hand"
    fi
fi
rm -rf "$PF_BACKUP"
mkdir -p "$PF_BACKUP"
cp -p "$PF_DIR/main.cf" "$PF_DIR/master.cf" "$PF_BACKUP/"
PF_MODIFIED=1
printf '%s\n' "$MARKER" >>"$PF_DIR/main.cf"

USER_COMMENT="signet-milter e2e test"
id "$TEST_USER" >/dev/null 2>&1 ||
    useradd --create-home --shell /usr/sbin/nologin --comment "$USER_COMMENT" "$TEST_USER"
MAILDIR=$(getent passwd "$TEST_USER" | cut -d: -f6)/Maildir
# Mail from earlier runs is identified by a per-run token anyway; clear it if the account is ours.
[[ $(getent passwd "$TEST_USER" | cut -d: -f5) == "$USER_COMMENT" ]] && rm -rf "$MAILDIR"

postconf -e \
    "myhostname = mx.signet-e2e.test" \
    "mydomain = signet-e2e.test" \
    "myorigin = \$myhostname" \
    "mydestination = \$myhostname, localhost" \
    "inet_interfaces = 127.0.0.1" \
    "inet_protocols = ipv4" \
    "mynetworks = 127.0.0.0/8" \
    "relayhost =" \
    "alias_maps =" \
    "alias_database =" \
    "home_mailbox = Maildir/" \
    "mailbox_command =" \
    "smtpd_peername_lookup = no" \
    "smtpd_milters = inet:127.0.0.1:$MILTER_PORT" \
    "non_smtpd_milters = inet:127.0.0.1:$MILTER_PORT" \
    "milter_default_action = tempfail" \
    "milter_protocol = 6" \
    "maillog_file = $PF_LOG" \
    "maillog_file_prefixes = /var, /dev/stdout, /tmp"
# Only our loopback listener on $SMTP_PORT; disable the port-25 one so nothing else is exposed
# and a port-25 conflict cannot break the test.
postconf -M# smtp/inet
postconf -M "127.0.0.1:$SMTP_PORT/inet=127.0.0.1:$SMTP_PORT inet n - y - - smtpd"
# maillog_file needs the postlog service (present in Debian's master.cf since 3.4)
[[ -n $(postconf -M postlog/unix-dgram 2>/dev/null) ]] ||
    postconf -M "postlog/unix-dgram=postlog unix-dgram n - n - 1 postlogd"

is_listening "$SMTP_PORT" && die "TCP port $SMTP_PORT is already in use (set SMTP_PORT=...)"
log "postfix check"
postfix check || die "postfix check failed"
# Debian's init script/systemd unit copy /etc/hosts, resolv.conf, ... into the chroot first.
[[ -x /usr/lib/postfix/configure-instance.sh ]] && /usr/lib/postfix/configure-instance.sh - >/dev/null 2>&1 || true
log "starting Postfix ($(postconf -h mail_version)), smtpd on 127.0.0.1:$SMTP_PORT"
POSTFIX_STARTED_BY_US=1 # set first: a signal during "postfix start" must still stop it
postfix start >/dev/null 2>&1 || { cat "$PF_LOG" 2>/dev/null; die "postfix start failed"; }
wait_listening "$SMTP_PORT" 20 || { cat "$PF_LOG" 2>/dev/null; die "Postfix smtpd not listening on 127.0.0.1:$SMTP_PORT"; }

# --- messages --------------------------------------------------------------------------------
make_msg() { # file case path domain
    local token="$RUN_ID-$2-$3"
    # Canonicalization edge cases: folded Subject (space and tab continuation lines), signed
    # headers with a tab / no space after the colon (To, MIME-Version), body lines starting
    # with dots (SMTP dot-stuffing), trailing whitespace and trailing blank lines.
    printf '%s\n' \
        "From: Signet Test <sender@$4>" \
        "To:	$RCPT" \
        "Subject: signet e2e $2 via $3," \
        "  folded onto a second line" \
        "	and a third (tab) line" \
        "X-Tab-Header:	value after a tab" \
        "X-Signet-Test: $token" \
        "Date: $(date -R)" \
        "Message-ID: <$token@signet-e2e.test>" \
        "MIME-Version:1.0" \
        "Content-Type: text/plain; charset=us-ascii" \
        "" \
        "Hello from the signet-milter e2e test ($2 via $3)." \
        ".a line starting with a dot" \
        "..two dots" \
        "trailing spaces   " \
        "	tab-indented line" \
        "" \
        "last line" \
        "" \
        "" >"$1"
}

declare -A DOMAIN_OF SEL_OF ALGO_OF CANON_OF PATH_OF CASE_OF SEND_RC
TOKENS=()
for c in "${CASES[@]}"; do
    read -r name domain sel algo canon <<<"$c"
    for path in smtp sendmail; do
        token="$RUN_ID-$name-$path"
        f="$WORK/msgs/$name-$path.eml"
        make_msg "$f" "$name" "$path" "$domain"
        TOKENS+=("$token")
        DOMAIN_OF[$token]=$domain SEL_OF[$token]=$sel ALGO_OF[$token]=$algo
        CANON_OF[$token]=$canon/$canon PATH_OF[$token]=$path CASE_OF[$token]=$name
        rc=0
        if [[ $path == smtp ]]; then
            swaks --server 127.0.0.1 --port "$SMTP_PORT" --helo client.signet-e2e.test \
                --from "sender@$domain" --to "$RCPT" --data "@$f" \
                >"$WORK/msgs/$name-$path.smtp" 2>&1 || rc=$?
        else
            /usr/sbin/sendmail -t -i -f "sender@$domain" <"$f" \
                >"$WORK/msgs/$name-$path.sendmail" 2>&1 || rc=$?
        fi
        SEND_RC[$token]=$rc
        if [[ $rc -ne 0 ]]; then
            log "send $name via $path failed (rc=$rc):"
            tail -n 15 "$WORK/msgs/$name-$path.$path" 2>/dev/null | sed 's/^/    /' || true
        fi
    done
done

# --- wait for delivery -----------------------------------------------------------------------
declare -A DELIVERED
log "waiting up to ${DELIVERY_TIMEOUT}s for ${#TOKENS[@]} messages in $MAILDIR"
deadline=$((SECONDS + DELIVERY_TIMEOUT))
while :; do
    missing=0
    for t in "${TOKENS[@]}"; do
        [[ -n ${DELIVERED[$t]:-} ]] && continue
        f=$(grep -lsrF "X-Signet-Test: $t" "$MAILDIR/new" "$MAILDIR/cur" 2>/dev/null | head -n1 || true)
        if [[ -n $f ]]; then
            DELIVERED[$t]=$f
        elif [[ ${SEND_RC[$t]} -eq 0 ]]; then
            missing=$((missing + 1))
        fi
    done
    ((missing == 0 || SECONDS >= deadline)) && break
    sleep 0.3
done

# --- verify ----------------------------------------------------------------------------------
declare -A RESULT
for t in "${TOKENS[@]}"; do
    f=${DELIVERED[$t]:-}
    if [[ -z $f ]]; then
        if [[ ${SEND_RC[$t]} -ne 0 ]]; then RESULT[$t]="FAIL (send rejected)"; else RESULT[$t]="FAIL (not delivered)"; fi
        FAILED=1
        continue
    fi
    cp "$f" "$WORK/msgs/${CASE_OF[$t]}-${PATH_OF[$t]}.delivered"
    if out=$($VERIFY --keys "$KEYDIR" --expect "${DOMAIN_OF[$t]}:${SEL_OF[$t]}" "$f" 2>&1); then
        RESULT[$t]=pass
    else
        RESULT[$t]="FAIL (verify)"
        FAILED=1
    fi
    printf '%s\n' "$out" | sed "s|^$f|${CASE_OF[$t]}/${PATH_OF[$t]}|; s/^/    /"
done

# Show one delivered message so the header layout (where DKIM-Signature landed) is visible.
first=${DELIVERED[${TOKENS[0]}]:-}
if [[ -n $first ]]; then
    log "header block of the first delivered message (${CASE_OF[${TOKENS[0]}]}/${PATH_OF[${TOKENS[0]}]}):"
    sed -n '1,/^\r\{0,1\}$/p' "$first" | sed 's/^/    | /'
fi

printf '\n%-12s %-9s %-16s %-8s %-26s %s\n' CASE PATH CANON ALGO DOMAIN RESULT
printf '%s\n' "-------------------------------------------------------------------------------"
for t in "${TOKENS[@]}"; do
    printf '%-12s %-9s %-16s %-8s %-26s %s\n' "${CASE_OF[$t]}" "${PATH_OF[$t]}" "${CANON_OF[$t]}" \
        "${ALGO_OF[$t]}" "${DOMAIN_OF[$t]}:${SEL_OF[$t]}" "${RESULT[$t]}"
done
echo

log "---- milter log ($MILTER_LOG) ----"
sed 's/\x1b\[[0-9;]*m//g; s/^/    /' "$MILTER_LOG"

if [[ $FAILED -ne 0 || ${VERBOSE:-0} == 1 ]]; then
    log "---- mail queue (postqueue -p) ----"
    postqueue -p 2>&1 | sed 's/^/    /' || true
    log "---- Postfix log ($PF_LOG) ----"
    sed 's/^/    /' "$PF_LOG" 2>/dev/null || log "(no Postfix log)"
fi

if [[ $FAILED -ne 0 ]]; then
    log "RESULT: FAILED"
    exit 1
fi
log "RESULT: all ${#TOKENS[@]} messages delivered and verified"
