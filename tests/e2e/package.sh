#!/usr/bin/env bash
# Package test: the .deb installed on this machine, the .rpm inspected with Debian's rpm.
#
#   bash packaging/build-packages.sh && bash tests/e2e/package.sh
#
# What it does (as root, on Debian 12; no systemd needs to run, no MTA is involved):
#   * lints the manual pages of the package (groff -ww) and, once installed, the unit
#     (systemd-analyze verify);
#   * dpkg -i the .deb; checks owner and mode of the binary, the configuration (a conffile,
#     root:signet-milter 0640), /etc/signet-milter/keys (signet-milter 0750), the system user
#     and group, the enabled unit, the man pages; `signet-milter check` accepts the installed
#     configuration, which signs nothing;
#   * makes a key as the service user, configures a domain, and starts the installed binary
#     exactly as the unit would: the unit's ExecStart, User=, Group=, UMask=, its
#     RuntimeDirectory= (created as systemd would), NoNewPrivileges, and a NOTIFY_SOCKET that
#     this script listens on (Type=notify);
#   * signs a message through the default socket /run/signet-milter/signet-milter.sock over the
#     milter protocol (examples/milter_send, as a user in the signet-milter group, the way
#     Postfix would after `adduser postfix signet-milter`), verifies it with dkimpy
#     (tests/verify_dkim.py); a user outside the group is refused by the socket;
#   * SIGHUP with a new domain (RELOADING=1 with MONOTONIC_USEC, READY=1), signs for it; SIGTERM
#     (STOPPING=1, exit 0, socket removed);
#   * reinstalls over a changed configuration (kept: conffile), then dpkg -r (configuration,
#     keys, user stay) and dpkg --purge (configuration gone; keys kept because they are
#     not empty; user kept); installs and purges once more with no keys: /etc/signet-milter
#     is gone;
#   * inspects the .rpm: rpm -qpi, -qplv (owners and modes), -qpc (the configuration is
#     %config(noreplace)), --scripts (user, keys directory, systemd), -qpR, digests, and
#     unpacks its payload to compare the binary with the .deb's.
# On exit it stops what it started (by PID), purges the package, and removes the user, group
# and files it created, so the machine is as before.
#
# Environment: SIGNET_CLIENT (default target/debug/examples/milter_send), KEEP_WORKDIR=1.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO_ROOT"

DEB=$(ls target/debian/signet-milter_*.deb 2>/dev/null | head -n1 || true)
RPM=$(ls target/generate-rpm/signet-milter-*.rpm 2>/dev/null | head -n1 || true)
CLIENT=${SIGNET_CLIENT:-target/debug/examples/milter_send}
case $CLIENT in /*) ;; *) CLIENT="$REPO_ROOT/$CLIENT" ;; esac
VERIFY="/usr/bin/python3 $REPO_ROOT/tests/verify_dkim.py"
SVC=signet-milter
CONF=/etc/signet-milter/signet-milter.toml
KEYS=/etc/signet-milter/keys
RUNDIR=/run/signet-milter
SOCKET=$RUNDIR/signet-milter.sock

log() { printf '[package] %s\n' "$*"; }
die() { printf '[package] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (dpkg -i)"
[[ -n $DEB && -f $DEB ]] || die "no .deb in target/debian; run: bash packaging/build-packages.sh"
[[ -n $RPM && -f $RPM ]] || die "no .rpm in target/generate-rpm; run: bash packaging/build-packages.sh"
DEB=$(realpath "$DEB")
RPM=$(realpath "$RPM")
[[ -x $CLIENT ]] || die "milter client $CLIENT missing; run: cargo build --ignore-rust-version --example milter_send"
for c in dpkg dpkg-deb rpm rpm2cpio cpio systemd-analyze groff setpriv python3 adduser; do
    command -v "$c" >/dev/null || die "missing $c (apt-get install rpm cpio systemd groff-base adduser)"
done
/usr/bin/python3 -c 'import dkim, nacl' 2>/dev/null || die "missing python3-dkim / python3-nacl"
if [[ $(dpkg-query -W -f='${Status}' $SVC 2>/dev/null) == *' installed' ]]; then
    die "$SVC is already installed here; this test installs and purges it, so it will not touch an existing installation"
fi
[[ ! -e /etc/signet-milter ]] || die "/etc/signet-milter exists (left from an earlier run?); remove it first"

WORK=$(mktemp -d /tmp/signet-package.XXXXXX)
chmod 0755 "$WORK"
MILTER_PID=
NOTIFY_PID=
USER_EXISTED=0
GROUP_EXISTED=0
getent passwd $SVC >/dev/null && USER_EXISTED=1
getent group $SVC >/dev/null && GROUP_EXISTED=1
[[ $USER_EXISTED == 0 ]] || log "note: user $SVC existed before this test; it will be kept"

cleanup() {
    local rc=$?
    set +e
    [[ -n $MILTER_PID ]] && kill -KILL "$MILTER_PID" 2>/dev/null && wait "$MILTER_PID" 2>/dev/null
    [[ -n $NOTIFY_PID ]] && kill "$NOTIFY_PID" 2>/dev/null && wait "$NOTIFY_PID" 2>/dev/null
    if [[ $(dpkg-query -W -f='${Status}' $SVC 2>/dev/null) =~ (installed|config-files)$ ]]; then
        dpkg --purge $SVC >/dev/null 2>&1
    fi
    rm -rf /etc/signet-milter "$RUNDIR"
    rmdir /var/lib/signet-milter 2>/dev/null
    [[ $USER_EXISTED == 1 ]] || { getent passwd $SVC >/dev/null && deluser --quiet --system $SVC >/dev/null 2>&1; }
    [[ $GROUP_EXISTED == 1 ]] || { getent group $SVC >/dev/null && delgroup --quiet --system $SVC >/dev/null 2>&1; }
    if [[ $rc -ne 0 && -f $WORK/milter.log ]]; then
        echo "---- milter log ----"; cat "$WORK/milter.log"
        echo "---- notifications ----"; cat "$WORK/notify.log" 2>/dev/null
    fi
    if [[ ${KEEP_WORKDIR:-0} == 1 ]]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
    if [[ $rc -eq 0 ]]; then log "PASSED"; else log "FAILED (exit $rc)"; fi
    exit $rc
}
trap cleanup EXIT

# "owner:group mode" of a path, e.g. "root:root 755".
perms() { stat -c '%U:%G %a' "$1"; }
expect_perms() { # path expected
    local got
    got=$(perms "$1")
    [[ $got == "$2" ]] || die "$1: expected $2, found $got"
    log "ok  $1 $got"
}

# ---------------------------------------------------------------------------------------------
log "package files: $DEB, $RPM"
mkdir -p "$WORK/deb"
dpkg-deb -x "$DEB" "$WORK/deb"
for page in "$WORK"/deb/usr/share/man/man*/*.gz; do
    warnings=$(zcat "$page" | groff -man -ww -z -K utf8 2>&1 || true)
    [[ -z $warnings ]] || die "$(basename "$page"): groff warnings: $warnings"
done
log "ok  man pages format without warnings: $(cd "$WORK/deb/usr/share/man" && echo man*/*.gz)"

# ---------------------------------------------------------------------------------------------
log "dpkg -i $(basename "$DEB")"
dpkg -i "$DEB"
[[ $(dpkg-query -W -f='${Status}' $SVC) == 'install ok installed' ]] || die "not installed"

expect_perms /usr/sbin/signet-milter "root:root 755"
expect_perms $CONF "root:$SVC 640"
expect_perms $KEYS "$SVC:$SVC 750"
expect_perms /var/lib/signet-milter "$SVC:$SVC 750"   # key rotation's state (StateDirectory=)
grep -q " $CONF " <<<"$(dpkg-query -W -f='${Conffiles}\n' $SVC)" || die "$CONF is not a conffile"
log "ok  $CONF is a conffile"
IFS=: read -r _ _ uid gid _ home shell < <(getent passwd $SVC)
[[ $uid -lt 1000 ]] || die "$SVC is not a system user (uid $uid)"
[[ $(getent group "$gid" | cut -d: -f1) == "$SVC" ]] || die "the primary group of $SVC is not $SVC"
[[ $shell == /usr/sbin/nologin ]] || die "$SVC has the login shell $shell"
log "ok  system user $SVC (uid $uid, group $SVC, home $home, shell $shell)"

UNIT=$(dpkg -L $SVC | grep '/systemd/system/signet-milter.service$')
[[ -f $UNIT ]] || die "the unit is not installed"
[[ -L /etc/systemd/system/multi-user.target.wants/signet-milter.service ]] || die "the unit is not enabled"
log "ok  $UNIT installed and enabled"
verify=$(systemd-analyze verify "$UNIT" 2>&1) || die "systemd-analyze verify: $verify"
[[ -z $verify ]] || die "systemd-analyze verify warns: $verify"
log "ok  systemd-analyze verify $UNIT: no complaints"
exposure=$(systemd-analyze security --offline=true "$UNIT" 2>&1 | sed -n 's/.*Overall exposure level for signet-milter.service: \([0-9.]*\).*/\1/p')
[[ -n $exposure ]] || die "systemd-analyze security gave no exposure level"
awk -v e="$exposure" 'BEGIN { exit !(e <= 2.0) }' || die "the unit's exposure level rose to $exposure (was 1.6)"
log "ok  systemd-analyze security: exposure $exposure"
man -w signet-milter >/dev/null && man -w 5 signet-milter.toml >/dev/null || die "man pages not found by man"
log "ok  man signet-milter, man 5 signet-milter.toml"

out=$(setpriv --reuid=$SVC --regid=$SVC --init-groups /usr/sbin/signet-milter check)
grep -q "nothing will be signed" <<<"$out" || die "the packaged configuration should sign nothing: $out"
log "ok  the installed configuration is valid and signs nothing"

# ---------------------------------------------------------------------------------------------
# What the unit says, taken from the installed unit itself.
unit_value() { sed -n "s/^$1=//p" "$UNIT" | tail -n1; }
EXEC_START=$(unit_value ExecStart)
UNIT_USER=$(unit_value User)
UNIT_GROUP=$(unit_value Group)
UNIT_UMASK=$(unit_value UMask)
RUNTIME_DIR=$(unit_value RuntimeDirectory)
RUNTIME_MODE=$(unit_value RuntimeDirectoryMode)
[[ $(unit_value Type) == notify ]] || die "the unit is not Type=notify"
[[ $(unit_value NoNewPrivileges) == yes ]] || die "NoNewPrivileges is not set"
[[ $RUNTIME_DIR == "signet-milter" ]] || die "RuntimeDirectory=$RUNTIME_DIR"
log "unit: ExecStart=$EXEC_START User=$UNIT_USER Group=$UNIT_GROUP UMask=$UNIT_UMASK RuntimeDirectory=$RUNTIME_DIR ($RUNTIME_MODE)"

log "a key for package-test.example, made as the service user"
setpriv --reuid=$SVC --regid=$SVC --init-groups \
    /usr/sbin/signet-milter keygen --algo rsa2048 --domain package-test.example --selector s1 --out $KEYS >/dev/null
expect_perms $KEYS/package-test.example/s1.key "$SVC:$SVC 600"
cp -p $CONF "$WORK/packaged.toml"
cat >>$CONF <<'EOF'

# --- added by tests/e2e/package.sh ---
[domain."package-test.example"]
selector = "s1"
EOF

log "reinstall over the changed configuration: it is kept"
dpkg -i --force-confold "$DEB" >/dev/null
grep -q 'package-test.example' $CONF || die "dpkg replaced the changed conffile"
expect_perms $CONF "root:$SVC 640"

# systemd's part: the runtime directory, and the notification socket it listens on.
install -d -m "$RUNTIME_MODE" -o "$UNIT_USER" -g "$UNIT_GROUP" "/run/$RUNTIME_DIR"
cat >"$WORK/notify.py" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
import os; os.chmod(sys.argv[1], 0o666)
with open(sys.argv[2], "a", buffering=1) as out:
    print("listening", file=out)
    while True:
        data = s.recv(4096).decode()
        print(" ".join(data.split()), file=out)
EOF
: >"$WORK/notify.log"
python3 "$WORK/notify.py" "$WORK/notify.sock" "$WORK/notify.log" &
NOTIFY_PID=$!
wait_for() { # description, command...  (up to 20 s)
    local what=$1 i
    shift
    for ((i = 0; i < 200; i++)); do
        if "$@"; then return 0; fi
        sleep 0.1
    done
    die "timed out waiting for $what"
}
wait_for "the notify listener" grep -q listening "$WORK/notify.log"
notified() { grep -qx "$1" "$WORK/notify.log"; }

log "start: $EXEC_START (as $UNIT_USER:$UNIT_GROUP, umask $UNIT_UMASK, no new privileges)"
# shellcheck disable=SC2086 # ExecStart is split into words as systemd does for this simple line
NOTIFY_SOCKET="$WORK/notify.sock" setpriv --reuid="$UNIT_USER" --regid="$UNIT_GROUP" --init-groups \
    --no-new-privs -- /bin/sh -c 'umask "$0"; exec "$@"' "$UNIT_UMASK" $EXEC_START \
    >"$WORK/milter.log" 2>&1 &
MILTER_PID=$!
# READY=1 as soon as the socket accepts; the keys are checked after it (docs/operations.md).
wait_for "READY=1" notified "READY=1 STATUS=listening on unix:$SOCKET; checking keys"
wait_for "the key check's status" notified "STATUS=serving; 1 keys ok, 0 not usable"
[[ -S $SOCKET ]] || die "READY=1 but no socket at $SOCKET"
expect_perms "$SOCKET" "$SVC:$SVC 660"
[[ $(ps -o uid= -p $MILTER_PID | tr -d ' ') == "$uid" ]] || die "the milter does not run as $SVC"
log "ok  READY=1 after the socket was bound, then the key check's STATUS; the process runs as $SVC"

cat >"$WORK/message.eml" <<'EOF'
From: Alice <alice@package-test.example>
To: bob@example.net
Subject: package test
Date: Sun, 22 Nov 2026 10:00:00 +0000
Message-ID: <package-test-1@package-test.example>

Signed by the installed signet-milter.
EOF
# The MTA's side: a user whose only way in is membership in the signet-milter group (the client
# is copied where that user can run it).
install -m 0755 "$CLIENT" "$WORK/milter_send"
CLIENT=$WORK/milter_send
MTA_AS=(setpriv --reuid=nobody --regid=nogroup --groups="$(getent group $SVC | cut -d: -f3)" --)
"${MTA_AS[@]}" "$CLIENT" "unix:$SOCKET" "$WORK/message.eml" >"$WORK/signed.eml"
$VERIFY --keys $KEYS --expect package-test.example:s1 "$WORK/signed.eml"
log "ok  a message signed through $SOCKET verifies with dkimpy"
if setpriv --reuid=nobody --regid=nogroup --clear-groups -- "$CLIENT" "unix:$SOCKET" "$WORK/message.eml" >/dev/null 2>"$WORK/refused.txt"; then
    die "a user outside the $SVC group could use the socket"
fi
grep -qi "permission denied" "$WORK/refused.txt" || die "unexpected refusal: $(cat "$WORK/refused.txt")"
log "ok  a user outside the $SVC group is refused (permission denied)"

log "SIGHUP with a second domain"
setpriv --reuid=$SVC --regid=$SVC --init-groups \
    /usr/sbin/signet-milter keygen --algo ed25519 --domain second.example --selector s2 --out $KEYS >/dev/null
printf '[domain."second.example"]\nselector = "s2"\n' >>$CONF
kill -HUP $MILTER_PID
wait_for "READY=1 after the reload" notified "READY=1 STATUS=configuration reloaded"
grep -Eq '^RELOADING=1 MONOTONIC_USEC=[0-9]+$' "$WORK/notify.log" || die "no RELOADING=1 with MONOTONIC_USEC"
grep -q "configuration reloaded" "$WORK/milter.log" || die "no reload in the log"
sed 's/alice@package-test.example/carol@second.example/; s/package-test-1/package-test-2/' \
    "$WORK/message.eml" >"$WORK/message2.eml"
"${MTA_AS[@]}" "$CLIENT" "unix:$SOCKET" "$WORK/message2.eml" >"$WORK/signed2.eml"
$VERIFY --keys $KEYS --expect second.example:s2 "$WORK/signed2.eml"
log "ok  reloaded (RELOADING=1 + MONOTONIC_USEC, READY=1); the new domain is signed"

log "SIGTERM"
kill -TERM $MILTER_PID
rc=0
wait $MILTER_PID || rc=$?
MILTER_PID=
[[ $rc -eq 0 ]] || die "the milter exited with $rc after SIGTERM"
notified "STOPPING=1 STATUS=stopping" || die "no STOPPING=1"
[[ ! -e $SOCKET ]] || die "the socket is still there after SIGTERM"
log "ok  STOPPING=1, exit 0, socket removed"
kill "$NOTIFY_PID" 2>/dev/null; wait "$NOTIFY_PID" 2>/dev/null || true
NOTIFY_PID=
rm -rf "/run/$RUNTIME_DIR" # systemd removes the runtime directory when the service stops

# ---------------------------------------------------------------------------------------------
log "dpkg -r: the program goes; configuration, keys and user stay"
dpkg -r $SVC >/dev/null
[[ ! -e /usr/sbin/signet-milter && ! -e $UNIT ]] || die "dpkg -r left the program or the unit"
[[ -f $CONF && -f $KEYS/package-test.example/s1.key ]] || die "dpkg -r removed the configuration or keys"
getent passwd $SVC >/dev/null || die "dpkg -r removed the user"
log "ok  removed; $CONF and the keys remain"

log "dpkg --purge: the configuration goes; keys (not empty) and the user stay"
dpkg --purge $SVC >/dev/null 2>"$WORK/purge.txt"
[[ ! -e $CONF ]] || die "purge left $CONF"
! dpkg-statoverride --list $CONF >/dev/null || die "purge left the statoverride of $CONF"
[[ -f $KEYS/package-test.example/s1.key ]] || die "purge deleted private keys"
grep -q "keys is not empty and was kept" "$WORK/purge.txt" || die "purge did not say it kept the keys"
[[ ! -e /etc/systemd/system/multi-user.target.wants/signet-milter.service ]] || die "purge left the unit enabled"
getent passwd $SVC >/dev/null || die "purge removed the user"
log "ok  purged; the keys and the user were kept"

log "install and purge with no keys: nothing is left under /etc"
rm -rf /etc/signet-milter
dpkg -i "$DEB" >/dev/null
dpkg --purge $SVC >/dev/null
[[ ! -e /etc/signet-milter ]] || die "purge left /etc/signet-milter: $(find /etc/signet-milter)"
[[ ! -e /var/lib/signet-milter ]] || die "purge left an empty /var/lib/signet-milter"
log "ok  /etc/signet-milter and /var/lib/signet-milter are gone"

# ---------------------------------------------------------------------------------------------
log "rpm: $(basename "$RPM")"
# (Outputs are read whole before grep: with pipefail, grep -q closing a pipe early fails it.)
grep -q 'digests OK' <<<"$(rpm -K --nosignature "$RPM")" || die "rpm digests"
grep -Eq '^Name +: signet-milter$' <<<"$(rpm -qpi "$RPM")" || die "rpm -qpi"
listing=$(rpm -qplv "$RPM")
echo "$listing"
grep -Eq '^-rwxr-xr-x +1 root +root .* /usr/sbin/signet-milter$' <<<"$listing" || die "rpm: binary owner/mode"
# rpm -qplv cuts user and group names to 8 characters: "signet-m".
grep -Eq '^-rw-r----- +1 root +signet-m .* /etc/signet-milter/signet-milter.toml$' <<<"$listing" || die "rpm: config owner/mode"
grep -q ' /usr/lib/systemd/system/signet-milter.service$' <<<"$listing" || die "rpm: no unit"
[[ $(rpm -qpc "$RPM") == "$CONF" ]] || die "rpm -qpc does not list the configuration as config"
flags=$(rpm -qp --qf '[%{FILENAMES} %{FILEFLAGS:fflags} %{FILEUSERNAME}:%{FILEGROUPNAME}\n]' "$RPM" | grep "^$CONF ")
[[ $flags == "$CONF cn root:signet-milter" ]] || die "rpm: the configuration is not %config(noreplace) root:signet-milter: $flags"
log "ok  $flags (config, noreplace)"
scripts=$(rpm -qp --scripts "$RPM")
for want in 'preinstall scriptlet' 'useradd -r -g signet-milter' 'postinstall scriptlet' \
    "install -d -m 0750 -o signet-milter -g signet-milter $KEYS" 'preuninstall scriptlet' \
    'systemctl disable --now signet-milter.service' 'postuninstall scriptlet' 'try-restart'; do
    grep -qF -- "$want" <<<"$scripts" || die "rpm --scripts lacks: $want"
done
log "ok  scriptlets create the user and the keys directory and drive systemd"
grep -qx 'shadow-utils' <<<"$(rpm -qpR "$RPM")" || die "rpm: no Requires: shadow-utils"
mkdir -p "$WORK/rpm"
# Debian's rpm2cpio 4.18.0 exits 1 on this zstd payload although its output is complete (the
# archive extracts and every file compares equal), so its status is not the check; cmp is.
rpm2cpio "$RPM" >"$WORK/payload.cpio" || true
(cd "$WORK/rpm" && cpio -idm --quiet <"$WORK/payload.cpio")
cmp -s "$WORK/rpm/usr/sbin/signet-milter" "${CARGO_TARGET_DIR:-target}/release/signet-milter" || die "the rpm's binary is not the one built"
[[ $("$WORK/rpm/usr/sbin/signet-milter" --version) == "signet-milter "* ]] || die "the rpm's binary does not run"
cmp -s "$WORK/rpm/etc/signet-milter/signet-milter.toml" "$WORK/packaged.toml" || die "the rpm's configuration differs from the .deb's"
log "ok  the rpm payload holds the built binary and the same configuration as the .deb"
