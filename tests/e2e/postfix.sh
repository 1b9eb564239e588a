#!/usr/bin/env bash
# End-to-end test: signet-milter behind a real (Debian) Postfix: who may sign, and the interop
# matrix through both of Postfix's milter paths.
#
#   bash tests/e2e/postfix.sh            # binary from $SIGNET_BIN (default target/debug/signet-milter)
#
# What it does:
#   * generates the key matrix with `signet-milter keygen` and starts `signet-milter run` on a
#     unix socket inside Postfix's chroot (/var/spool/postfix/signet-e2e/milter.sock, group
#     postfix, mode 0660), which Postfix reaches as unix:signet-e2e/milter.sock,
#   * reconfigures the local Postfix with postconf (main.cf/master.cf are backed up and restored
#     on exit): smtpd_milters and non_smtpd_milters, milter_default_action = tempfail, listeners
#     on 127.0.0.1 only, and all mail for sink.signet-e2e.test relayed to a small SMTP sink
#     (tests/e2e/smtp_sink.py) on 127.0.0.1:$SINK_PORT,
#   * who may sign: SMTP AUTH through a real Cyrus SASL backend (sasldb, on a submission service
#     on $SUBMISSION_PORT) -> signed, and a wrong password refused; an outsider (XCLIENT
#     ADDR=203.0.113.5 on $SMTP_PORT) -> NOT signed; the same outsider on a service with
#     milter_macro_daemon_name=ORIGINATING ($ORIGINATING_PORT) -> signed; the sendmail command
#     (pickup, non_smtpd_milters) -> signed,
#   * tenants: two SASL users, alice@tenant-a.example and bob@tenant-b.example, on the
#     submission service: alice's mail From tenant-a is signed as tenant-a; bob's From tenant-a
#     is not (only the ESP's signature), and the milter log says why; a Postfix-format login map
#     file grants bob tenant-c, a SQLite database grants alice tenant-d; after a SIGHUP with
#     on_unauthorized = "reject", bob's From tenant-a is refused with 550 5.7.1,
#   * IDN: [domain."bücher.example"] signs mail From the A-label and [domain."xn--caf-dma.example"]
#     mail From café.example, both with the A-label d=,
#   * the matrix (every message shape x signing profile) through smtpd and through the sendmail
#     command, plus an author domain without an entry (ESP signature only) and a 20 MiB body,
#   * an 8-bit body (BODY=8BITMIME, as mail clients send it) relayed to a second sink that does
#     not announce 8BITMIME: with disable_mime_output_conversion = yes (the documented setting)
#     it arrives unconverted and verifies; without it Postfix converts it to quoted-printable
#     after signing and both verifiers fail it,
#   * `signet-milter check --postfix` against this Postfix (reports nothing) and against a copy of
#     its configuration made wrong on purpose with postconf -c (reports each item),
#   * verifies every captured message with dkimpy and with OpenDKIM's libopendkim (local key
#     table, no DNS), checks the milter's own log line for why it signed, prints the table of
#     cases and exits 1 if any case failed.
#
# Requirements: root, Debian 12 with postfix, sasl2-bin, libsasl2-modules, swaks, python3-dkim,
# libopendkim-dev, a C compiler (.ci/run installs them). No systemd needed. Loopback only.
#
# Environment: SIGNET_BIN, SMTP_PORT (2525), SUBMISSION_PORT (2587), ORIGINATING_PORT (2588),
# SINK_PORT (10025), SINK7_PORT (10027, the 7-bit sink), DELIVERY_TIMEOUT (180 s), BIG_MIB (20), KEEP_WORKDIR=1, VERBOSE=1 (always
# print the milter and Postfix logs).
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SMTP_PORT=${SMTP_PORT:-2525}
SUBMISSION_PORT=${SUBMISSION_PORT:-2587}
ORIGINATING_PORT=${ORIGINATING_PORT:-2588}
SINK_PORT=${SINK_PORT:-10025}
SINK7_PORT=${SINK7_PORT:-10027}
OUTSIDER=203.0.113.5 # TEST-NET-3: only ever a claimed address in XCLIENT, never contacted
PF_DIR=/etc/postfix
PF_SPOOL=/var/spool/postfix
SOCK_DIR_REL=signet-e2e # the milter socket directory, relative to Postfix's queue directory
SOCK_DIR=$PF_SPOOL/$SOCK_DIR_REL
# Pristine copy of the Postfix config. Kept outside the per-run work dir so that a run that was
# killed with SIGKILL (trap not run) is repaired by the next run: if main.cf still carries our
# marker comment, the saved pristine copy is restored before anything else happens.
PF_BACKUP=/var/tmp/signet-e2e-postfix-backup
MARKER="# signet-milter e2e test: this file is temporarily modified by tests/e2e/postfix.sh"
# Two tenants of one submission service (Cyrus sasldb, one password).
SASL_USER=alice@tenant-a.example
SASL_USER_B=bob@tenant-b.example

e2e_begin postfix
for c in postconf postfix postqueue postsuper saslpasswd2 /usr/sbin/sendmail; do
    command -v "$c" >/dev/null || die "missing $c (apt-get install postfix sasl2-bin)"
done
postconf -a | grep -qx cyrus || die "this Postfix has no Cyrus SASL support (postconf -a)"
[[ -e /usr/lib/x86_64-linux-gnu/sasl2/libplain.so || -n $(find /usr/lib -name 'libplain.so*' -path '*sasl2*' 2>/dev/null | head -n1) ]] ||
    die "missing the SASL PLAIN mechanism (apt-get install libsasl2-modules)"
PF_LOG=$WORK/postfix.log
PF_VERSION=$(postconf -h mail_version)
log "Postfix $PF_VERSION"
for p in "$SMTP_PORT" "$SUBMISSION_PORT" "$ORIGINATING_PORT"; do require_free_port "$p" "Postfix listener"; done

build_opendkim_verifier
make_keys

# --- milter on a unix socket inside the chroot ---------------------------------------------------
# Debian runs smtpd and cleanup chrooted in $PF_SPOOL, so the socket lives there. Postfix daemons
# run with $PF_SPOOL as their working directory, so the relative name unix:signet-e2e/... works
# for chrooted and non-chrooted services alike (the submission service below is not chrooted).
mkdir -p "$SOCK_DIR"
chown root:postfix "$SOCK_DIR"
chmod 0750 "$SOCK_DIR"
on_exit 'rm -rf "$SOCK_DIR"'
# Tenant grants beyond the own-domain default: a login map file in Postfix's
# smtpd_sender_login_maps format (bob may sign for tenant-c) and the operator's SQLite database
# (alice may sign for tenant-d), asked through [callbacks].
LOGIN_MAP=$WORK/sender_login_maps
printf '%s\n' '# address-or-@domain   login, login' '@tenant-c.example     bob@tenant-b.example' >"$LOGIN_MAP"
TENANT_DB=$WORK/tenants.db
"$PY" - "$TENANT_DB" <<'EOF' || die "could not create $TENANT_DB"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("create table grants (login text, domain text)")
db.execute("insert into grants values ('alice@tenant-a.example', 'tenant-d.example')")
db.commit()
EOF
MILTER_EXTRA_CONFIG="
[callbacks.\"tenants\"]
sqlite = \"$TENANT_DB\"
query = \"select 1 from grants where login = ?1 and domain = ?2\"

[authorization]
on_unauthorized = \"accept\"
login_map = \"$LOGIN_MAP\"
callback = { event_name = \"tenants\", event_args = [\"{login}\", \"{domain}\"] }"
write_milter_config "$WORK/milter.toml" "unix:$SOCK_DIR/milter.sock" \
    'socket_group = "postfix"' 'socket_mode = "0660"'
start_milter "$WORK/milter.toml" test -S "$SOCK_DIR/milter.sock"
MILTER_SPEC="unix:$SOCK_DIR_REL/milter.sock"
start_sink "$SINK_PORT"

# --- Cyrus SASL: a sasldb with one user, read by the submission service's smtpd -----------------
# Debian's Postfix looks for <smtpd_sasl_path>.conf in /etc/postfix/sasl and ignores
# cyrus_sasl_config_path, so the test drops a file of its own name there (never an existing
# smtpd.conf) and points only the submission service at it; both go away at exit.
SASL_APP=signet-e2e-smtpd
SASL_CONF_DIR=$PF_DIR/sasl
SASL_DIR=$WORK/sasl
SASL_PASS="e2e-$RUN_ID-$RANDOM$RANDOM"
if [[ ! -d $SASL_CONF_DIR ]]; then
    mkdir -p "$SASL_CONF_DIR"
    on_exit 'rmdir "$SASL_CONF_DIR" 2>/dev/null || true'
fi
on_exit 'rm -f "$SASL_CONF_DIR/$SASL_APP.conf"'
mkdir -p "$SASL_DIR"
cat >"$SASL_CONF_DIR/$SASL_APP.conf" <<EOF
# signet-milter e2e test (tests/e2e/postfix.sh); removed when the test ends
pwcheck_method: auxprop
auxprop_plugin: sasldb
mech_list: PLAIN LOGIN
sasldb_path: $SASL_DIR/sasldb2
EOF
for user in "$SASL_USER" "$SASL_USER_B"; do
    printf '%s' "$SASL_PASS" | saslpasswd2 -p -c -f "$SASL_DIR/sasldb2" -u "${user#*@}" "${user%@*}" ||
        die "saslpasswd2 failed for $user"
done
chgrp -R postfix "$SASL_DIR"
chmod 0750 "$SASL_DIR"
chmod 0640 "$SASL_DIR/sasldb2"

# --- Postfix configuration ------------------------------------------------------------------------
POSTFIX_STARTED_BY_US=0
POSTFIX_WAS_RUNNING=0
PF_MODIFIED=0

restore_postfix_config() {
    if [[ -f $PF_BACKUP/main.cf && -f $PF_BACKUP/master.cf ]]; then
        cp -p "$PF_BACKUP/main.cf" "$PF_DIR/main.cf"
        cp -p "$PF_BACKUP/master.cf" "$PF_DIR/master.cf"
        rm -rf "$PF_BACKUP"
    fi
}

# Remove this run's messages that are still queued (e.g. deferred) so that they are not delivered
# later by someone else's Postfix start. Only queue files carrying our RUN_ID are touched.
purge_test_mail() {
    local qdir q f
    qdir=$(postconf -h queue_directory 2>/dev/null) || return 0
    for q in maildrop incoming active deferred hold; do
        [[ -d $qdir/$q ]] || continue
        grep -rlsF "$RUN_ID" "$qdir/$q" 2>/dev/null | while read -r f; do
            postsuper -d "${f##*/}" "$q" >/dev/null 2>&1 && log "purged queued test message ${f##*/} ($q)"
        done
    done
    return 0
}

postfix_cleanup() {
    purge_test_mail
    if [[ $POSTFIX_STARTED_BY_US -eq 1 ]]; then
        postfix stop >/dev/null 2>&1
        # wait for master to go away so that a following run can bind the ports again
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
}
on_exit postfix_cleanup

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
        log "main.cf still modified by an interrupted earlier run; restoring the pristine copy first"
        restore_postfix_config
    else
        die "$PF_DIR/main.cf carries the e2e marker but there is no backup in $PF_BACKUP; fix it by hand"
    fi
fi
rm -rf "$PF_BACKUP"
mkdir -p "$PF_BACKUP"
cp -p "$PF_DIR/main.cf" "$PF_DIR/master.cf" "$PF_BACKUP/"
PF_MODIFIED=1
printf '%s\n' "$MARKER" >>"$PF_DIR/main.cf"

# The milter settings here are the ones the README documents.
postconf -e \
    "myhostname = mx.signet-e2e.test" \
    "mydomain = signet-e2e.test" \
    "myorigin = \$myhostname" \
    "mydestination = \$myhostname, localhost" \
    "inet_interfaces = 127.0.0.1" \
    "inet_protocols = ipv4" \
    "mynetworks = 127.0.0.0/8" \
    "relayhost =" \
    "relay_domains = $SINK_DOMAIN" \
    "transport_maps = inline:{ $SINK_DOMAIN=smtp:[127.0.0.1]:$SINK_PORT }" \
    "alias_maps =" \
    "alias_database =" \
    "smtpd_peername_lookup = no" \
    "smtpd_authorized_xclient_hosts = 127.0.0.1" \
    "message_size_limit = $(((BIG_MIB + 10) * 1024 * 1024))" \
    "smtpd_milters = $MILTER_SPEC" \
    "non_smtpd_milters = $MILTER_SPEC" \
    "milter_default_action = tempfail" \
    "milter_protocol = 6" \
    "maillog_file = $PF_LOG" \
    "maillog_file_prefixes = /var, /dev/stdout, /tmp"
# Only our loopback listeners; the port-25 one is disabled so nothing else is exposed and a
# port-25 conflict cannot break the test.
postconf -M# smtp/inet
postconf -M "127.0.0.1:$SMTP_PORT/inet=127.0.0.1:$SMTP_PORT inet n - y - - smtpd"
# Submission: SASL through Cyrus sasldb; not chrooted, so that it reads the sasldb in $WORK.
postconf -M "127.0.0.1:$SUBMISSION_PORT/inet=127.0.0.1:$SUBMISSION_PORT inet n - n - - smtpd \
 -o syslog_name=postfix/submission -o smtpd_sasl_auth_enable=yes -o smtpd_sasl_type=cyrus \
 -o smtpd_sasl_path=$SASL_APP -o smtpd_tls_security_level=none \
 -o smtpd_client_restrictions=permit_sasl_authenticated,reject"
# A service whose mail counts as originating whoever the client is ({daemon_name} = ORIGINATING).
postconf -M "127.0.0.1:$ORIGINATING_PORT/inet=127.0.0.1:$ORIGINATING_PORT inet n - y - - smtpd \
 -o syslog_name=postfix/originating -o milter_macro_daemon_name=ORIGINATING"
# maillog_file needs the postlog service (present in Debian's master.cf since 3.4)
[[ -n $(postconf -M postlog/unix-dgram 2>/dev/null) ]] ||
    postconf -M "postlog/unix-dgram=postlog unix-dgram n - n - 1 postlogd"

# --- 8-bit mail to a next hop without 8BITMIME -----------------------------------------------------
# The setting docs/postfix.md gives: Postfix then sends 8-bit bodies as they were signed instead
# of converting them to quoted-printable after the milter. Mail for $SINK7_DOMAIN goes to a sink
# that announces neither 8BITMIME nor SMTPUTF8.
start_sink_7bit "$SINK7_PORT"
postconf -e "disable_mime_output_conversion = yes" \
    "relay_domains = $(postconf -h relay_domains), $SINK7_DOMAIN" \
    "transport_maps = $(postconf -h transport_maps), inline:{ $SINK7_DOMAIN=smtp:[127.0.0.1]:$SINK7_PORT }"

log "postfix check"
postfix check || die "postfix check failed"
# Debian's init script/systemd unit copy /etc/hosts, resolv.conf, ... into the chroot first.
[[ -x /usr/lib/postfix/configure-instance.sh ]] && /usr/lib/postfix/configure-instance.sh - >/dev/null 2>&1 || true
log "starting Postfix: smtpd on 127.0.0.1:$SMTP_PORT, submission on :$SUBMISSION_PORT, ORIGINATING on :$ORIGINATING_PORT"
POSTFIX_STARTED_BY_US=1 # set first: a signal during "postfix start" must still stop it
postfix start >/dev/null 2>&1 || {
    cat "$PF_LOG" 2>/dev/null
    die "postfix start failed"
}
for p in "$SMTP_PORT" "$SUBMISSION_PORT" "$ORIGINATING_PORT"; do
    wait_listening "$p" 20 || {
        cat "$PF_LOG" 2>/dev/null
        die "Postfix smtpd not listening on 127.0.0.1:$p"
    }
done

# pickup_send TOKEN MSGFILE FROM: the sendmail command -> postdrop -> pickup -> cleanup.
pickup_send() {
    local rc=0
    /usr/sbin/sendmail -i -f "$3" "$RCPT" <"$2" >"$WORK/msgs/$1.sendmail" 2>&1 || rc=$?
    case_sent "$1" "$rc" "$WORK/msgs/$1.sendmail"
}

# The queue id of a pickup submission, from Postfix's log (the sendmail command prints none).
pickup_qids() {
    local t qid
    for t in "${CASES[@]}"; do
        [[ ${C_PATH[$t]} == sendmail && -z ${C_QID[$t]} ]] || continue
        qid=$(grep -F "from=<$t@" "$PF_LOG" | grep -F 'postfix/pickup' |
            sed -nE 's/.*postfix\/pickup\[[0-9]+\]: ([A-Za-z0-9]+): .*/\1/p' | head -n1 || true)
        C_QID[$t]=$qid
    done
}

# --- who may sign ----------------------------------------------------------------------------------
log "who may sign: SASL submission (two tenants), wrong password, outsider, ORIGINATING service"
# tenant_send TOKEN LOGIN FROM_DOMAIN LABEL EXPECT CHECK: one message over the SASL submission
# service, from the outsider address, as LOGIN.
tenant_send() {
    make_message basic "$3" "$1" "$WORK/msgs/$1.eml"
    case_add "$1" postfix "submit+AUTH" "$4" basic "$5" "$6"
    swaks_send "$1" "$SUBMISSION_PORT" "$WORK/msgs/$1.eml" "$1@$3" \
        --xclient-addr "$OUTSIDER" --auth PLAIN --auth-user "$2" --auth-password "$SASL_PASS"
}
TENANT_A_SIG="tenant-a.example:t2026"
tenant_send "$RUN_ID-pf-auth" "$SASL_USER" tenant-a.example "alice From tenant-a" \
    "$TENANT_A_SIG $ESP_SIG" "trust=authenticated as $SASL_USER"
tenant_send "$RUN_ID-pf-tenant-forged" "$SASL_USER_B" tenant-a.example "bob From tenant-a" \
    "$ESP_SIG" "log=$SASL_USER_B may not sign for tenant-a.example: its own domain is tenant-b.example"
tenant_send "$RUN_ID-pf-tenant-own" "$SASL_USER_B" tenant-b.example "bob From tenant-b" \
    "tenant-b.example:t2026 $ESP_SIG" "log=granted=sender@tenant-b.example by its own domain"
tenant_send "$RUN_ID-pf-tenant-map" "$SASL_USER_B" tenant-c.example "bob From tenant-c (map)" \
    "tenant-c.example:t2026 $ESP_SIG" "log=by @tenant-c.example in $LOGIN_MAP:2"
tenant_send "$RUN_ID-pf-tenant-sqlite" "$SASL_USER" tenant-d.example "alice From tenant-d (SQLite)" \
    "tenant-d.example:t2026 $ESP_SIG" "log=by callback tenants"
domain=${PROFILE_DOMAIN[rr]}

token="$RUN_ID-pf-badpass"
make_message basic "$domain" "$token" "$WORK/msgs/$token.eml"
rc=0
wire_format "$WORK/msgs/$token.eml" "$WORK/msgs/$token.wire"
swaks --server 127.0.0.1 --port "$SUBMISSION_PORT" --from "$token@$domain" --to "$RCPT" \
    --data "@$WORK/msgs/$token.wire" --no-data-fixup --xclient-addr "$OUTSIDER" \
    --auth PLAIN --auth-user "$SASL_USER" --auth-password "wrong-$SASL_PASS" \
    >"$WORK/msgs/$token.smtp" 2>&1 || rc=$?
if [[ $rc -ne 0 ]] && grep -qE '^<\*\* +535 ' "$WORK/msgs/$token.smtp"; then
    assert_add "a wrong SASL password is refused (535) on the submission service" pass
else
    assert_add "a wrong SASL password is refused (535) on the submission service" "FAIL (swaks rc=$rc)"
    sed 's/^/    /' "$WORK/msgs/$token.smtp"
fi

token="$RUN_ID-pf-outsider"
make_message basic "$domain" "$token" "$WORK/msgs/$token.eml"
case_add "$token" postfix "smtp+XCLIENT" "$OUTSIDER, no AUTH" basic none "refused=$OUTSIDER"
swaks_send "$token" "$SMTP_PORT" "$WORK/msgs/$token.eml" "$token@$domain" --xclient-addr "$OUTSIDER"

token="$RUN_ID-pf-originating"
make_message basic "$domain" "$token" "$WORK/msgs/$token.eml"
case_add "$token" postfix "ORIGINATING" "$OUTSIDER, no AUTH" basic "$(expected_sigs rr basic)" \
    "trust=daemon ORIGINATING"
swaks_send "$token" "$ORIGINATING_PORT" "$WORK/msgs/$token.eml" "$token@$domain" --xclient-addr "$OUTSIDER"

# --- the matrix, through smtpd (smtpd_milters) and the sendmail command (non_smtpd_milters) --------
log "sending ${#PROFILES[@]} profiles x ${#SHAPES[@]} shapes via smtpd and via the sendmail command"
for path in smtp sendmail; do
    for profile in "${PROFILES[@]}"; do
        domain=${PROFILE_DOMAIN[$profile]}
        for shape in "${SHAPES[@]}"; do
            token="$RUN_ID-pf-$path-$profile-$shape"
            make_message "$shape" "$domain" "$token" "$WORK/msgs/$token.eml"
            case_add "$token" postfix "$path" "${PROFILE_DESC[$profile]}" "$shape" \
                "$(expected_sigs "$profile" "$shape")" "trust=trusted client 127.0.0.1"
            if [[ $path == smtp ]]; then
                swaks_send "$token" "$SMTP_PORT" "$WORK/msgs/$token.eml" "$token@$domain"
            else
                pickup_send "$token" "$WORK/msgs/$token.eml" "$token@$domain"
            fi
        done
    done
done

# IDN: each entry is written in the other form than the mail's From uses; d= is the A-label.
token="$RUN_ID-pf-idn-alabel"
make_message basic xn--bcher-kva.example "$token" "$WORK/msgs/$token.eml"
case_add "$token" postfix smtp "IDN: entry bücher.example" basic "xn--bcher-kva.example:rsa2026 $ESP_SIG" \
    "trust=trusted client 127.0.0.1"
swaks_send "$token" "$SMTP_PORT" "$WORK/msgs/$token.eml" "$token@xn--bcher-kva.example"
token="$RUN_ID-pf-idn-ulabel"
make_message basic café.example "$token" "$WORK/msgs/$token.eml"
case_add "$token" postfix smtp "IDN: From café.example" basic "xn--caf-dma.example:ed2026 $ESP_SIG" \
    "trust=trusted client 127.0.0.1"
swaks_send "$token" "$SMTP_PORT" "$WORK/msgs/$token.eml" "$token@xn--caf-dma.example"

token="$RUN_ID-pf-esp-only"
make_message basic "$UNLISTED_DOMAIN" "$token" "$WORK/msgs/$token.eml"
case_add "$token" postfix smtp "no entry: ESP Always only" basic "$ESP_SIG" "trust=trusted client 127.0.0.1"
swaks_send "$token" "$SMTP_PORT" "$WORK/msgs/$token.eml" "$token@$UNLISTED_DOMAIN"

BIG_TOKEN="$RUN_ID-pf-dual-big"
make_big_message "${PROFILE_DOMAIN[dual]}" "$BIG_TOKEN" "$WORK/msgs/$BIG_TOKEN.eml"
case_add "$BIG_TOKEN" postfix smtp "${PROFILE_DESC[dual]}" big "$(expected_sigs dual big)" "trust=trusted client 127.0.0.1"
big_start=$(now)
swaks_send "$BIG_TOKEN" "$SMTP_PORT" "$WORK/msgs/$BIG_TOKEN.eml" "$BIG_TOKEN@${PROFILE_DOMAIN[dual]}"
BIG_SEND_S=$(elapsed "$big_start")
rm -f "$WORK/msgs/$BIG_TOKEN.eml"

# The 8-bit body to the 7-bit next hop, with the documented setting, through smtpd and pickup.
EIGHT_BIT_SMTP="$RUN_ID-pf-8bit-7bitsink"
make_8bit_body_message "${PROFILE_DOMAIN[dual]}" "$EIGHT_BIT_SMTP" "$WORK/msgs/$EIGHT_BIT_SMTP.eml"
case_add "$EIGHT_BIT_SMTP" postfix smtp "${PROFILE_DESC[dual]}" body8bit \
    "$(expected_sigs dual body8bit)" "trust=trusted client 127.0.0.1"
smtp_send_8bitmime "$EIGHT_BIT_SMTP" "$SMTP_PORT" "$WORK/msgs/$EIGHT_BIT_SMTP.eml" \
    "$EIGHT_BIT_SMTP@${PROFILE_DOMAIN[dual]}" "$RCPT7"
EIGHT_BIT_PICKUP="$RUN_ID-pf-8bit-pickup-7bitsink"
make_8bit_body_message "${PROFILE_DOMAIN[ss]}" "$EIGHT_BIT_PICKUP" "$WORK/msgs/$EIGHT_BIT_PICKUP.eml"
case_add "$EIGHT_BIT_PICKUP" postfix sendmail "${PROFILE_DESC[ss]}" body8bit \
    "$(expected_sigs ss body8bit)" "trust=trusted client 127.0.0.1"
RCPT=$RCPT7 pickup_send "$EIGHT_BIT_PICKUP" "$WORK/msgs/$EIGHT_BIT_PICKUP.eml" "$EIGHT_BIT_PICKUP@${PROFILE_DOMAIN[ss]}"

wait_for_delivery
BIG_DELIVERED_S=$(elapsed "$big_start")
pickup_qids

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

# on_unauthorized = "reject", loaded by a real SIGHUP: bob's mail From tenant-a is refused.
log "SIGHUP with on_unauthorized = \"reject\""
reloads_before=$(grep -c "configuration reloaded" "$MILTER_LOG" || true)
sed -i 's/^on_unauthorized = "accept"$/on_unauthorized = "reject"/' "$WORK/milter.toml"
kill -HUP "$MILTER_PID"
for _ in $(seq 100); do
    (($(grep -c "configuration reloaded" "$MILTER_LOG" || true) > reloads_before)) && break
    sleep 0.1
done
token="$RUN_ID-pf-tenant-reject"
make_message basic tenant-a.example "$token" "$WORK/msgs/$token.eml"
wire_format "$WORK/msgs/$token.eml" "$WORK/msgs/$token.wire"
rc=0
swaks --server 127.0.0.1 --port "$SUBMISSION_PORT" --from "$token@tenant-a.example" --to "$RCPT" \
    --data "@$WORK/msgs/$token.wire" --no-data-fixup --xclient-addr "$OUTSIDER" \
    --auth PLAIN --auth-user "$SASL_USER_B" --auth-password "$SASL_PASS" \
    >"$WORK/msgs/$token.smtp" 2>&1 || rc=$?
what="after SIGHUP with on_unauthorized = reject, bob's mail From tenant-a is refused (550 5.7.1)"
if [[ $rc -ne 0 ]] && grep -qE '^<\*\* +550 5\.7\.1 ' "$WORK/msgs/$token.smtp" &&
    grep -qF "not signed: tenant-a.example/t2026: $SASL_USER_B may not sign for tenant-a.example" "$MILTER_LOG"; then
    assert_add "$what" pass
else
    assert_add "$what" "FAIL (swaks rc=$rc)"
    sed 's/^/    /' "$WORK/msgs/$token.smtp"
fi
# --- 8-bit mail without the setting, and check --postfix -------------------------------------------
assert_8bit_kept "$EIGHT_BIT_SMTP" "Postfix (smtpd)"
assert_8bit_kept "$EIGHT_BIT_PICKUP" "Postfix (sendmail command)"
log "check --postfix against this Postfix"
run_mta_check e2e --postfix
assert_check_reports_none e2e "check --postfix on this test's Postfix (the documented settings) reports nothing"

# restart_postfix: stop and start again, so that every daemon runs with the changed main.cf.
restart_postfix() {
    postfix stop >/dev/null 2>&1 || true
    for _ in $(seq 100); do postfix status >/dev/null 2>&1 || break; sleep 0.1; done
    postfix start >/dev/null 2>&1 || die "postfix start failed"
    wait_listening "$SMTP_PORT" 20 || die "Postfix smtpd not listening on 127.0.0.1:$SMTP_PORT after the restart"
}
log "without disable_mime_output_conversion: the same 8-bit message, and check --postfix again"
postconf -e "disable_mime_output_conversion = no"
restart_postfix
run_mta_check e2e-converting --postfix
assert_check_reports e2e-converting "check --postfix reports the 8BITMIME downgrade, and only that, once the setting is off" \
    1 8bit-downgrade
DOWNGRADED="$RUN_ID-pf-8bit-downgraded"
make_8bit_body_message "${PROFILE_DOMAIN[dual]}" "$DOWNGRADED" "$WORK/msgs/$DOWNGRADED.eml"
smtp_send_8bitmime "$DOWNGRADED" "$SMTP_PORT" "$WORK/msgs/$DOWNGRADED.eml" "$DOWNGRADED@${PROFILE_DOMAIN[dual]}" "$RCPT7"
wait_for_sink "$DOWNGRADED" || log "$DOWNGRADED not delivered within ${DELIVERY_TIMEOUT}s"
assert_downgraded "$DOWNGRADED" Postfix "disable_mime_output_conversion = yes" "$(expected_sigs dual body8bit)"

# A copy of this configuration, made wrong in every way check --postfix knows, with postconf -c.
WRONG=$WORK/postfix-wrong
mkdir -p "$WRONG"
cp "$PF_DIR/main.cf" "$PF_DIR/master.cf" "$WRONG/"
printf '/^Received: from .*internal/  IGNORE\n' >"$WRONG/smtp_header_checks"
printf '/^X-Spam-Flag:/ REPLACE X-Spam-Flag: NO\n' >"$WRONG/milter_header_checks"
printf '192.0.2.0/24  DISABLE\n' >"$WRONG/milter_map"
postconf -c "$WRONG" -e \
    "smtpd_milters = unix:$SOCK_DIR_REL/milter.sock, inet:127.0.0.1:10099" \
    "non_smtpd_milters =" \
    "milter_default_action = accept" \
    "milter_protocol = 4" \
    "disable_mime_output_conversion = no" \
    "smtp_generic_maps = inline:{ sender@rr.example=someone@rr.example }" \
    "smtp_header_checks = regexp:$WRONG/smtp_header_checks" \
    "milter_header_checks = regexp:$WRONG/milter_header_checks" \
    "smtp_line_length_limit = 500" \
    "masquerade_domains = rr.example" \
    "smtpd_milter_maps = cidr:$WRONG/milter_map" \
    "smtpd_milter = unix:$SOCK_DIR_REL/milter.sock"
postconf -c "$WRONG" -P "127.0.0.1:$SMTP_PORT/inet/content_filter=smtp:[127.0.0.1]:10024" \
    "127.0.0.1:$SMTP_PORT/inet/receive_override_options=no_address_mappings" \
    "127.0.0.1:$ORIGINATING_PORT/inet/receive_override_options=no_milters"
postconf -c "$WRONG" -M "127.0.0.1:2589/inet=127.0.0.1:2589 inet n - y - - smtpd -o smtpd_milters=unix:$SOCK_DIR/milter.sock"
run_mta_check wrong --postfix-config "$WRONG"
assert_check_reports wrong "check --postfix-config on a Postfix configured wrongly on purpose reports each item" 1 \
    milter chroot default-action protocol no-milters milter-maps milter-order 8bit-downgrade \
    output-rewriting output-header-checks milter-header-checks line-length content-filter unknown-setting
[[ ${VERBOSE:-0} == 1 ]] && sed 's/^/    check | /' "$WORK/results/check-wrong.out"

show_header_block "$SINK_DIR/$RUN_ID-pf-auth.eml" "the SASL-authenticated submission"
log "${BIG_MIB} MiB message: SMTP submission ${BIG_SEND_S}s (milter signing included), in the sink after ${BIG_DELIVERED_S}s, both verifiers ${BIG_VERIFY_S:-?}s"

rc=0
print_results || rc=1
if [[ $rc -ne 0 || ${VERBOSE:-0} == 1 ]]; then
    log "---- milter log ----"
    sed 's/\x1b\[[0-9;]*m//g; s/^/    /' "$MILTER_LOG"
    log "---- mail queue (postqueue -p) ----"
    postqueue -p 2>&1 | sed 's/^/    /' || true
    log "---- Postfix log ----"
    sed 's/^/    /' "$PF_LOG" 2>/dev/null || log "(no Postfix log)"
fi
if [[ $rc -ne 0 ]]; then
    log "RESULT: FAILED: $E2E_FAILED of $E2E_TOTAL cases"
    exit 1
fi
log "RESULT: all $E2E_TOTAL cases passed (Postfix $PF_VERSION)"
echo "postfix-e2e: $E2E_TOTAL passed, 0 failed"
