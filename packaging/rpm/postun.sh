# signet-milter %postun: what %systemd_postun_with_restart does: restart after an upgrade.
# The user, the group and /etc/signet-milter/keys (made by %post, so not the package's) stay
# after an erase, with any keys in it.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart signet-milter.service >/dev/null 2>&1 || :
    fi
fi
exit 0
