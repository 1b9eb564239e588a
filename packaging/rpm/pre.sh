# signet-milter %pre: the service user and group (system accounts, no login).
getent group signet-milter >/dev/null || groupadd -r signet-milter
getent passwd signet-milter >/dev/null || \
    useradd -r -g signet-milter -d / -s /sbin/nologin \
        -c "signet-milter DKIM signing milter" signet-milter
exit 0
