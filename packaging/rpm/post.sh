# signet-milter %post: the keys directory (readable by the service only; created once, an
# administrator's later changes are left alone), then what %systemd_post does. Enabling
# follows the system's presets; the service is not started: it signs nothing until a domain
# is configured.
if [ ! -e /etc/signet-milter/keys ]; then
    install -d -m 0750 -o signet-milter -g signet-milter /etc/signet-milter/keys
fi
# Key rotation's state and generated keys (the unit's StateDirectory=).
if [ ! -e /var/lib/signet-milter ]; then
    install -d -m 0750 -o signet-milter -g signet-milter /var/lib/signet-milter
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -eq 1 ]; then
        systemctl preset signet-milter.service >/dev/null 2>&1 || :
    fi
fi
exit 0
