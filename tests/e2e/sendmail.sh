#!/usr/bin/env bash
# End-to-end test: signet-milter behind a real (Debian) Sendmail, with the interop matrix.
#
#   bash tests/e2e/sendmail.sh           # binary from $SIGNET_BIN (default target/debug/signet-milter)
#
# What it does:
#   * generates the key matrix with `signet-milter keygen` (RSA-2048 and Ed25519, several
#     domains, each with its own canonicalization) and starts `signet-milter run` on
#     inet:127.0.0.1:$MILTER_PORT,
#   * builds a Sendmail configuration of its own from the Debian m4 macros (sendmail-cf): one
#     listener on 127.0.0.1:$SMTP_PORT, the milter as INPUT_MAIL_FILTER with F=T and explicit
#     timeouts, every message relayed to a small SMTP sink (tests/e2e/smtp_sink.py) on
#     127.0.0.1:$SINK_PORT; it runs its own sendmail daemon (-bD) with that file, its own queue
#     and pid file, and never touches /etc/mail or a Sendmail the system may run,
#   * sends every message shape x signing profile of the matrix with swaks, plus a message from
#     an author domain without an entry (ESP signature only) and a ${BIG_MIB:-20} MiB body,
#   * verifies every captured message with dkimpy and with OpenDKIM's libopendkim (both with a
#     local key table) and prints the table of cases; exits 1 if any case failed.
#
# Requirements: root, Debian 12 with sendmail-bin, sendmail-cf, m4, swaks, python3-dkim,
# libopendkim-dev, a C compiler (.ci/run installs them). Only loopback addresses are used.
#
# Environment: SIGNET_BIN, SMTP_PORT (2526), SINK_PORT (10026), MILTER_PORT (11041),
# DELIVERY_TIMEOUT (180 s), BIG_MIB (20), KEEP_WORKDIR=1, VERBOSE=1 (print the milter log).
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SMTP_PORT=${SMTP_PORT:-2526}
SINK_PORT=${SINK_PORT:-10026}
MILTER_PORT=${MILTER_PORT:-11041}
CF_DIR=/usr/share/sendmail/cf

e2e_begin sendmail
for c in /usr/sbin/sendmail m4; do
    command -v "$c" >/dev/null || die "missing $c (apt-get install sendmail-bin sendmail-cf m4)"
done
[[ -f $CF_DIR/m4/cf.m4 ]] || die "missing $CF_DIR/m4/cf.m4 (apt-get install sendmail-cf)"
SENDMAIL_VERSION=$(/usr/sbin/sendmail -d0.1 -bt </dev/null 2>/dev/null | awk '/^Version/ { print $2; exit }')
[[ -n $SENDMAIL_VERSION ]] || die "/usr/sbin/sendmail is not Sendmail (is Postfix installed instead?)"
log "Sendmail $SENDMAIL_VERSION"
require_free_port "$SMTP_PORT" "Sendmail listener"
require_free_port "$MILTER_PORT" "milter"

build_opendkim_verifier
make_keys
write_milter_config "$WORK/milter.toml" "inet:127.0.0.1:$MILTER_PORT"
start_milter "$WORK/milter.toml" is_listening "$MILTER_PORT"
start_sink "$SINK_PORT"

# --- Sendmail configuration ----------------------------------------------------------------------
SM_DIR=$WORK/sendmail
mkdir -p "$SM_DIR/mqueue"
chmod 0700 "$SM_DIR/mqueue"
# Names are resolved from /etc/hosts only: the test must not wait for DNS that is not there.
printf 'hosts files\naliases files\n' >"$SM_DIR/service.switch"
# The INPUT_MAIL_FILTER line is the one the README documents. F=T: tempfail while the milter is
# unreachable. T=: C connect, S send, R read (per reply), E end of message (signing happens there).
MILTER_LINE="INPUT_MAIL_FILTER(\`signet', \`S=inet:$MILTER_PORT@127.0.0.1, F=T, T=C:10s;S:30s;R:60s;E:5m')"
cat >"$SM_DIR/sendmail.mc" <<EOF
divert(-1)
# signet-milter e2e test (tests/e2e/sendmail.sh): a loopback-only Sendmail that signs through
# the milter and relays everything to the test's SMTP sink.
divert(0)dnl
include(\`$CF_DIR/m4/cf.m4')dnl
VERSIONID(\`signet-milter e2e')dnl
OSTYPE(\`debian')dnl
define(\`confDOMAIN_NAME', \`mx.signet-e2e.test')dnl
define(\`confSERVICE_SWITCH_FILE', \`$SM_DIR/service.switch')dnl
define(\`confDONT_PROBE_INTERFACES', \`True')dnl
define(\`confBIND_OPTS', \`-DNSRCH -DEFNAMES')dnl
define(\`confTO_IDENT', \`0')dnl
define(\`QUEUE_DIR', \`$SM_DIR/mqueue')dnl
define(\`confPID_FILE', \`$SM_DIR/sendmail.pid')dnl
define(\`STATUS_FILE', \`$SM_DIR/statistics')dnl
undefine(\`confHOST_STATUS_DIRECTORY')dnl
define(\`confCONTROL_SOCKET_NAME', \`')dnl
define(\`SMART_HOST', \`esmtp:[127.0.0.1]')dnl
define(\`ESMTP_MAILER_ARGS', \`TCP \$h $SINK_PORT')dnl
define(\`confMILTER_LOG_LEVEL', \`2')dnl
FEATURE(\`no_default_msa')dnl
FEATURE(\`nocanonify')dnl
FEATURE(\`accept_unresolvable_domains')dnl
FEATURE(\`accept_unqualified_senders')dnl
RELAY_DOMAIN(\`$SINK_DOMAIN')dnl
DAEMON_OPTIONS(\`Family=inet, Name=MTA-e2e, Port=$SMTP_PORT, Addr=127.0.0.1')dnl
$MILTER_LINE
MAILER(\`local')dnl
MAILER(\`smtp')dnl
EOF
m4 "$SM_DIR/sendmail.mc" >"$SM_DIR/sendmail.cf" 2>"$SM_DIR/m4.err" || {
    cat "$SM_DIR/m4.err"
    die "m4 could not build sendmail.cf"
}
[[ -s $SM_DIR/m4.err ]] && sed 's/^/    m4: /' "$SM_DIR/m4.err"

log "starting Sendmail on 127.0.0.1:$SMTP_PORT (milter: $MILTER_LINE)"
# Before it reads sendmail.cf, Sendmail qualifies the host name: through the compiled-in
# /etc/mail/service.switch ("hosts files dns"), and if that yields no dotted name it sleeps and
# retries for minutes ("My unqualified host name (vm) unknown"). Test machines often have a bare
# host name and no DNS server that answers. So the daemon runs in a private mount namespace where
# /etc/mail/service.switch is our "hosts files" switch and /etc/hosts names this host
# mx.signet-e2e.test first; the machine's own files stay untouched.
[[ -f /etc/mail/service.switch ]] || die "missing /etc/mail/service.switch (sendmail-base)"
{
    printf '127.0.0.1 mx.signet-e2e.test %s localhost\n' "$(hostname)"
    grep -v '^[[:space:]]*127\.0\.0\.1[[:space:]]' /etc/hosts || true
} >"$SM_DIR/hosts"
unshare --mount --propagation private sh -c \
    'mount --bind "$1" /etc/mail/service.switch && mount --bind "$2" /etc/hosts &&
     exec /usr/sbin/sendmail -C "$3" -bD -q30s' \
    sh "$SM_DIR/service.switch" "$SM_DIR/hosts" "$SM_DIR/sendmail.cf" </dev/null >"$SM_DIR/daemon.log" 2>&1 &
# shellcheck disable=SC2034 # read by the on_exit action below
SENDMAIL_PID=$!
on_exit 'stop_pid "$SENDMAIL_PID" sendmail'
wait_listening "$SMTP_PORT" 30 || {
    cat "$SM_DIR/daemon.log"
    die "Sendmail is not listening on 127.0.0.1:$SMTP_PORT"
}

# --- the matrix ------------------------------------------------------------------------------------
# Sendmail re-formats address headers on output (tab after the colon becomes a space, folded
# address lists are re-folded): simple header canonicalization cannot survive that, whoever signs.
# So the matrix keeps its folds and tabs out of To:, and the addrfold case below checks that the
# re-formatting happens and that relaxed header canonicalization survives it.
ADDRESS_WHITESPACE=0
SHAPE_DESC[folded]="folded Subject/References/Content-Type (space and tab continuations)"
SHAPE_DESC[spacing]="tab, no space, several spaces after the colon (To: spaces only); trailing blanks"
log "sending ${#PROFILES[@]} profiles x ${#SHAPES[@]} shapes, the ESP-only and the ${BIG_MIB} MiB case"
for profile in "${PROFILES[@]}"; do
    domain=${PROFILE_DOMAIN[$profile]}
    for shape in "${SHAPES[@]}"; do
        token="$RUN_ID-sm-$profile-$shape"
        make_message "$shape" "$domain" "$token" "$WORK/msgs/$token.eml"
        case_add "$token" sendmail smtp "${PROFILE_DESC[$profile]}" "$shape" "$(expected_sigs "$profile" "$shape")" \
            "trust=trusted client 127.0.0.1"
        swaks_send "$token" "$SMTP_PORT" "$WORK/msgs/$token.eml" "$token@$domain"
    done
done

for profile in rr rs ed; do
    domain=${PROFILE_DOMAIN[$profile]}
    token="$RUN_ID-sm-$profile-addrfold"
    make_message addrfold "$domain" "$token" "$WORK/msgs/$token.eml"
    case_add "$token" sendmail smtp "${PROFILE_DESC[$profile]}" addrfold "$(expected_sigs "$profile" addrfold)" \
        "trust=trusted client 127.0.0.1"
    swaks_send "$token" "$SMTP_PORT" "$WORK/msgs/$token.eml" "$token@$domain"
done

token="$RUN_ID-sm-esp-only"
make_message basic "$UNLISTED_DOMAIN" "$token" "$WORK/msgs/$token.eml"
case_add "$token" sendmail smtp "no entry: ESP Always only" basic "$ESP_SIG" "trust=trusted client 127.0.0.1"
swaks_send "$token" "$SMTP_PORT" "$WORK/msgs/$token.eml" "$token@$UNLISTED_DOMAIN"

token="$RUN_ID-sm-dual-big"
make_big_message "${PROFILE_DOMAIN[dual]}" "$token" "$WORK/msgs/$token.eml"
case_add "$token" sendmail smtp "${PROFILE_DESC[dual]}" big "$(expected_sigs dual big)" "trust=trusted client 127.0.0.1"
big_start=$(now)
swaks_send "$token" "$SMTP_PORT" "$WORK/msgs/$token.eml" "$token@${PROFILE_DOMAIN[dual]}"
BIG_SEND_S=$(elapsed "$big_start")
rm -f "$WORK/msgs/$token.eml"

wait_for_delivery
BIG_DELIVERED_S=$(elapsed "$big_start")

log "verifying ${#CASES[@]} delivered messages with dkimpy and OpenDKIM"
for t in "${CASES[@]}"; do
    if [[ $t == "$token" ]]; then
        verify_start=$(now)
        verify_case "$t"
        BIG_VERIFY_S=$(elapsed "$verify_start")
    else
        verify_case "$t"
    fi
done

# The addrfold cases only mean something if Sendmail did re-format the address headers.
addrfold_msg=$WORK/msgs/$RUN_ID-sm-rr-addrfold.eml
addrfold_out=$SINK_DIR/$RUN_ID-sm-rr-addrfold.eml
if [[ -f $addrfold_out ]] && [[ "$(header_field "$addrfold_msg" To)" != "$(header_field "$addrfold_out" To)" ]] &&
    [[ "$(header_field "$addrfold_msg" Cc)" != "$(header_field "$addrfold_out" Cc)" ]]; then
    assert_add "Sendmail re-formatted the folded To: and tabbed Cc: (addrfold rows: relaxed survives)" pass
    log "addrfold: To/Cc as submitted, then as Sendmail delivered them:"
    { header_field "$addrfold_msg" To; header_field "$addrfold_msg" Cc; } | sed 's/^/    > /'
    { header_field "$addrfold_out" To; header_field "$addrfold_out" Cc; } | sed 's/^/    < /'
else
    assert_add "Sendmail re-formatted the folded To: and tabbed Cc: (addrfold rows: relaxed survives)" \
        "FAIL (delivered To:/Cc: unchanged or missing: the addrfold rows prove nothing)"
fi

show_header_block "$SINK_DIR/$RUN_ID-sm-dual-presigned.eml" "dual/presigned"
log "${BIG_MIB} MiB message: SMTP submission ${BIG_SEND_S}s (milter signing included), in the sink after ${BIG_DELIVERED_S}s, both verifiers ${BIG_VERIFY_S:-?}s"

rc=0
print_results || rc=1
if [[ $rc -ne 0 || ${VERBOSE:-0} == 1 ]]; then
    log "---- milter log ----"
    sed 's/\x1b\[[0-9;]*m//g; s/^/    /' "$MILTER_LOG"
    log "---- sendmail queue ----"
    /usr/sbin/sendmail -C "$SM_DIR/sendmail.cf" -bp 2>&1 | sed 's/^/    /' || true
    log "---- sink log ----"
    sed 's/^/    /' "$WORK/sink.log"
fi
if [[ $rc -ne 0 ]]; then
    log "RESULT: FAILED: $E2E_FAILED of $E2E_TOTAL cases"
    exit 1
fi
log "RESULT: all $E2E_TOTAL cases passed (Sendmail $SENDMAIL_VERSION)"
echo "sendmail-e2e: $E2E_TOTAL passed, 0 failed"
