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
#   * an 8-bit body (BODY=8BITMIME, as mail clients send it) through two more Sendmails to a sink
#     that does not announce 8BITMIME: with mailer flag 8 (the documented setting) it arrives
#     unconverted and verifies; without it Sendmail converts it after signing and both verifiers
#     fail it,
#   * `signet-milter check --sendmail` on the .mc and .cf of these Sendmails, and on one
#     configured wrongly on purpose,
#   * verifies every captured message with dkimpy and with OpenDKIM's libopendkim (both with a
#     local key table) and prints the table of cases; exits 1 if any case failed.
#
# Requirements: root, Debian 12 with sendmail-bin, sendmail-cf, m4, swaks, python3-dkim,
# libopendkim-dev, a C compiler (.ci/run installs them). Only loopback addresses are used.
#
# Environment: SIGNET_BIN, SMTP_PORT (2526), SINK_PORT (10026), MILTER_PORT (11041), SM7_PORT
# (2527), SM7X_PORT (2528), SINK7_PORT (10028),
# DELIVERY_TIMEOUT (180 s), BIG_MIB (20), KEEP_WORKDIR=1, VERBOSE=1 (print the milter log).
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SMTP_PORT=${SMTP_PORT:-2526}
SINK_PORT=${SINK_PORT:-10026}
MILTER_PORT=${MILTER_PORT:-11041}
SM7_PORT=${SM7_PORT:-2527}   # relays to the 7-bit sink, with mailer flag 8
SM7X_PORT=${SM7X_PORT:-2528} # relays to the 7-bit sink, without it
SINK7_PORT=${SINK7_PORT:-10028}
CF_DIR=/usr/share/sendmail/cf

e2e_begin sendmail
for c in /usr/sbin/sendmail m4; do
    command -v "$c" >/dev/null || die "missing $c (apt-get install sendmail-bin sendmail-cf m4)"
done
[[ -f $CF_DIR/m4/cf.m4 ]] || die "missing $CF_DIR/m4/cf.m4 (apt-get install sendmail-cf)"
SENDMAIL_VERSION=$(/usr/sbin/sendmail -d0.1 -bt </dev/null 2>/dev/null | awk '/^Version/ { print $2; exit }')
[[ -n $SENDMAIL_VERSION ]] || die "/usr/sbin/sendmail is not Sendmail (is Postfix installed instead?)"
log "Sendmail $SENDMAIL_VERSION"
for p in "$SMTP_PORT" "$SM7_PORT" "$SM7X_PORT"; do require_free_port "$p" "Sendmail listener"; done
require_free_port "$MILTER_PORT" "milter"

build_opendkim_verifier
make_keys
write_milter_config "$WORK/milter.toml" "inet:127.0.0.1:$MILTER_PORT"
start_milter "$WORK/milter.toml" is_listening "$MILTER_PORT"
start_sink "$SINK_PORT"

# --- Sendmail configuration ----------------------------------------------------------------------
# write_sendmail_mc DIR SMTP_PORT SINK_PORT [MC_LINE...]: a loopback-only Sendmail of its own in
# DIR (its .mc, the .cf m4 makes of it, queue, pid file) that relays everything to the sink on
# SINK_PORT; the MC_LINEs (the milter, mailer flags, …) go before the MAILER lines.
write_sendmail_mc() {
    local dir=$1 port=$2 sink=$3
    shift 3
    mkdir -p "$dir/mqueue"
    chmod 0700 "$dir/mqueue"
    # Names are resolved from /etc/hosts only: the test must not wait for DNS that is not there.
    printf 'hosts files\naliases files\n' >"$dir/service.switch"
    {
        cat <<EOF
divert(-1)
# signet-milter e2e test (tests/e2e/sendmail.sh): a loopback-only Sendmail that signs through
# the milter and relays everything to the test's SMTP sink.
divert(0)dnl
include(\`$CF_DIR/m4/cf.m4')dnl
VERSIONID(\`signet-milter e2e')dnl
OSTYPE(\`debian')dnl
define(\`confDOMAIN_NAME', \`mx.signet-e2e.test')dnl
define(\`confSERVICE_SWITCH_FILE', \`$dir/service.switch')dnl
define(\`confDONT_PROBE_INTERFACES', \`True')dnl
define(\`confBIND_OPTS', \`-DNSRCH -DEFNAMES')dnl
define(\`confTO_IDENT', \`0')dnl
define(\`QUEUE_DIR', \`$dir/mqueue')dnl
define(\`confPID_FILE', \`$dir/sendmail.pid')dnl
define(\`STATUS_FILE', \`$dir/statistics')dnl
undefine(\`confHOST_STATUS_DIRECTORY')dnl
define(\`confCONTROL_SOCKET_NAME', \`')dnl
define(\`SMART_HOST', \`esmtp:[127.0.0.1]')dnl
define(\`ESMTP_MAILER_ARGS', \`TCP \$h $sink')dnl
define(\`confMILTER_LOG_LEVEL', \`2')dnl
FEATURE(\`no_default_msa')dnl
FEATURE(\`nocanonify')dnl
FEATURE(\`accept_unresolvable_domains')dnl
FEATURE(\`accept_unqualified_senders')dnl
RELAY_DOMAIN(\`$SINK_DOMAIN')dnl
RELAY_DOMAIN(\`$SINK7_DOMAIN')dnl
DAEMON_OPTIONS(\`Family=inet, Name=MTA-e2e, Port=$port, Addr=127.0.0.1')dnl
EOF
        printf '%s\n' "$@"
        printf '%s\n' "MAILER(\`local')dnl" "MAILER(\`smtp')dnl"
    } >"$dir/sendmail.mc"
    m4 "$dir/sendmail.mc" >"$dir/sendmail.cf" 2>"$dir/m4.err" || {
        cat "$dir/m4.err"
        die "m4 could not build $dir/sendmail.cf"
    }
    [[ -s $dir/m4.err ]] && sed 's/^/    m4: /' "$dir/m4.err"
    return 0
}

# Before it reads sendmail.cf, Sendmail qualifies the host name: through the compiled-in
# /etc/mail/service.switch ("hosts files dns"), and if that yields no dotted name it sleeps and
# retries for minutes ("My unqualified host name (vm) unknown"). Test machines often have a bare
# host name and no DNS server that answers. So each daemon runs in a private mount namespace where
# /etc/mail/service.switch is our "hosts files" switch and /etc/hosts names this host
# mx.signet-e2e.test first; the machine's own files stay untouched.
[[ -f /etc/mail/service.switch ]] || die "missing /etc/mail/service.switch (sendmail-base)"
SM_HOSTS=$WORK/hosts
{
    printf '127.0.0.1 mx.signet-e2e.test %s localhost\n' "$(hostname)"
    grep -v '^[[:space:]]*127\.0\.0\.1[[:space:]]' /etc/hosts || true
} >"$SM_HOSTS"

# start_sendmail DIR...: starts the daemons write_sendmail_mc configured in each DIR (all at once:
# each takes a while to come up), then waits until each listens.
start_sendmail() {
    local dir port started=$SECONDS
    for dir in "$@"; do
        unshare --mount --propagation private sh -c \
            'mount --bind "$1" /etc/mail/service.switch && mount --bind "$2" /etc/hosts &&
             exec /usr/sbin/sendmail -C "$3" -bD -q30s' \
            sh "$dir/service.switch" "$SM_HOSTS" "$dir/sendmail.cf" </dev/null >"$dir/daemon.log" 2>&1 &
        on_exit "stop_pid $! 'sendmail of $dir'"
    done
    for dir in "$@"; do
        port=$(sed -nE 's/^O DaemonPortOptions=.*Name=MTA-e2e, Port=([0-9]+).*/\1/p' "$dir/sendmail.cf")
        wait_listening "$port" 60 || {
            cat "$dir/daemon.log"
            die "Sendmail is not listening on 127.0.0.1:$port"
        }
    done
    log "Sendmail listening after $((SECONDS - started)) s"
}

# The lines docs/sendmail.md documents. F=T: tempfail while the milter is unreachable. T=: C
# connect, S send, R read (per reply), E end of message (signing happens there). Mailer flag 8:
# 8-bit bodies are sent as they were signed, never converted to 7 bit for a peer without 8BITMIME.
MILTER_LINE="INPUT_MAIL_FILTER(\`signet', \`S=inet:$MILTER_PORT@127.0.0.1, F=T, T=C:10s;S:30s;R:60s;E:5m')"
EIGHT_BIT_LINE="define(\`SMTP_MAILER_FLAGS', \`8')dnl"
SM_DIR=$WORK/sendmail
write_sendmail_mc "$SM_DIR" "$SMTP_PORT" "$SINK_PORT" "$MILTER_LINE" "$EIGHT_BIT_LINE"
# Two more, relaying to a sink without 8BITMIME: with the documented mailer flag, and without it.
start_sink_7bit "$SINK7_PORT"
SM7_DIR=$WORK/sendmail-7bit
write_sendmail_mc "$SM7_DIR" "$SM7_PORT" "$SINK7_PORT" "$MILTER_LINE" "$EIGHT_BIT_LINE"
SM7X_DIR=$WORK/sendmail-7bit-converting
write_sendmail_mc "$SM7X_DIR" "$SM7X_PORT" "$SINK7_PORT" "$MILTER_LINE"
log "starting Sendmail on 127.0.0.1:$SMTP_PORT (milter: $MILTER_LINE), and on :$SM7_PORT (flag 8) and :$SM7X_PORT (without) to the 7-bit sink"
start_sendmail "$SM_DIR" "$SM7_DIR" "$SM7X_DIR"

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
BIG_TOKEN=$token

# The 8-bit body to the 7-bit next hop: with mailer flag 8 it must arrive as signed; without it
# Sendmail converts it after signing (checked after the deliveries).
EIGHT_BIT="$RUN_ID-sm-8bit-7bitsink"
make_8bit_body_message "${PROFILE_DOMAIN[dual]}" "$EIGHT_BIT" "$WORK/msgs/$EIGHT_BIT.eml"
case_add "$EIGHT_BIT" sendmail smtp "${PROFILE_DESC[dual]}" body8bit "$(expected_sigs dual body8bit)" \
    "trust=trusted client 127.0.0.1"
smtp_send_8bitmime "$EIGHT_BIT" "$SM7_PORT" "$WORK/msgs/$EIGHT_BIT.eml" "$EIGHT_BIT@${PROFILE_DOMAIN[dual]}" "$RCPT7"
DOWNGRADED="$RUN_ID-sm-8bit-downgraded"
make_8bit_body_message "${PROFILE_DOMAIN[dual]}" "$DOWNGRADED" "$WORK/msgs/$DOWNGRADED.eml"
smtp_send_8bitmime "$DOWNGRADED" "$SM7X_PORT" "$WORK/msgs/$DOWNGRADED.eml" "$DOWNGRADED@${PROFILE_DOMAIN[dual]}" "$RCPT7"

wait_for_delivery
BIG_DELIVERED_S=$(elapsed "$big_start")

log "verifying ${#CASES[@]} delivered messages with dkimpy and OpenDKIM"
for t in "${CASES[@]}"; do
    if [[ $t == "$BIG_TOKEN" ]]; then
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

# --- 8-bit mail without mailer flag 8, and check --sendmail ---------------------------------------
assert_8bit_kept "$EIGHT_BIT" Sendmail
wait_for_sink "$DOWNGRADED" || log "$DOWNGRADED not delivered within ${DELIVERY_TIMEOUT}s"
assert_downgraded "$DOWNGRADED" Sendmail "mailer flag 8 (SMTP_MAILER_FLAGS)" "$(expected_sigs dual body8bit)"
# The test's milter signs ss.example and the dual Ed25519 signature with simple header
# canonicalization, which Sendmail's re-formatting of address fields breaks (see addrfold):
# check says so, as a warning.
log "check --sendmail against these Sendmails"
run_mta_check sm-mc --sendmail "$SM_DIR/sendmail.mc"
assert_check_reports sm-mc "check --sendmail on this test's .mc (the documented settings) reports only the simple-header warning" \
    0 header-reformatting
run_mta_check sm-cf --sendmail "$SM_DIR/sendmail.cf"
assert_check_reports sm-cf "check --sendmail on its .cf reports the same" 0 header-reformatting
run_mta_check sm-converting --sendmail "$SM7X_DIR/sendmail.mc"
assert_check_reports sm-converting "check --sendmail on the Sendmail without mailer flag 8 reports the 8BITMIME downgrade" \
    1 8bit-downgrade header-reformatting
# A Sendmail configured wrongly on purpose (built, never started).
SM_WRONG=$WORK/sendmail-wrong
write_sendmail_mc "$SM_WRONG" 2529 "$SINK_PORT" \
    "INPUT_MAIL_FILTER(\`signet', \`S=inet:$MILTER_PORT@127.0.0.1')dnl" \
    "INPUT_MAIL_FILTER(\`rewriter', \`S=local:/run/rewriter.sock, F=T')dnl" \
    "DAEMON_OPTIONS(\`Family=inet, Name=MTA-filtered, Port=2530, Addr=127.0.0.1, InputMailFilters=rewriter')dnl" \
    "MASQUERADE_AS(\`rr.example')dnl" \
    "FEATURE(\`genericstable')dnl"
run_mta_check sm-wrong --sendmail "$SM_WRONG/sendmail.mc"
assert_check_reports sm-wrong "check --sendmail on a Sendmail configured wrongly on purpose reports each item" 1 \
    milter default-action milter-order 8bit-downgrade output-rewriting header-reformatting
[[ ${VERBOSE:-0} == 1 ]] && sed 's/^/    check | /' "$WORK/results/check-sm-wrong.out"

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
