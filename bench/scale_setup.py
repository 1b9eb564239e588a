#!/usr/bin/env python3
"""Writes the large configurations bench/scale.sh measures: N domains in signet's TOML and in
OpenDKIM's KeyTable/SigningTable, with one shared key or one key file per domain.

    scale_setup.py --work DIR --domains N --signet BIN

Generating 100,000 RSA keys would take hours, so a handful of keys of each kind is generated
with `signet-milter keygen` and each domain's key file is a copy of one of them: every file is
still read and parsed on its own, which is what costs. Key files are mode 0600, and each
domain gets the .dns record of its key so that dkimpy can verify samples offline.
"""

import argparse
import os
import shutil
import subprocess

DISTINCT_KEYS = 8
HEADERS = ("From,Reply-To,Subject,Date,To,Cc,Message-ID,In-Reply-To,References,"
           "MIME-Version,Content-Type,Content-Transfer-Encoding")


def keygen(signet, algo, out, domain, selector):
    subprocess.run([signet, "keygen", "--algo", algo, "--domain", domain,
                    "--selector", selector, "--out", out],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def key_dir(work, signet, algo, domains):
    """DIR/d<i>.example/s1.key (+ .dns) for every domain, copies of a few real keys."""
    top = os.path.join(work, "keys-" + algo)
    seeds = os.path.join(work, "seeds-" + algo)
    for k in range(DISTINCT_KEYS):
        keygen(signet, algo, seeds, "seed%d" % k, "s1")
    pairs = []
    for k in range(DISTINCT_KEYS):
        with open(os.path.join(seeds, "seed%d" % k, "s1.key"), "rb") as f:
            key = f.read()
        with open(os.path.join(seeds, "seed%d" % k, "s1.dns"), "rb") as f:
            dns = f.read()
        pairs.append((key, dns))
    os.makedirs(top, exist_ok=True)
    for i in range(domains):
        key, dns = pairs[i % DISTINCT_KEYS]
        d = os.path.join(top, "d%d.example" % i)
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "s1.key")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        with open(os.path.join(d, "s1.dns"), "wb") as f:
            f.write(dns)
    return top


def signet_config(path, work, name, domains, base, milter_extra=""):
    with open(path, "w") as f:
        f.write('[milter]\nlisten = "unix:%s/%s.sock"\ntrusted_networks = ["127.0.0.0/8"]\n'
                % (work, name))
        f.write(milter_extra)
        f.write('[metrics]\nlisten = "127.0.0.1:%d"\n' % metrics_port(name))
        f.write('[log]\nlevel = "warn"\n')
        f.write(base)
        for i in range(domains):
            f.write('[domain."d%d.example"]\n' % i)


def metrics_port(name):
    return {"shared": 19911, "files-ed25519": 19912, "files-rsa2048": 19913}[name]


def opendkim_config(work, name, domains, key_for):
    keytable = os.path.join(work, "opendkim-%s.keytable" % name)
    signingtable = os.path.join(work, "opendkim-%s.signingtable" % name)
    with open(keytable, "w") as kt, open(signingtable, "w") as st:
        for i in range(domains):
            d = "d%d.example" % i
            kt.write("%s %s:s1:%s\n" % (d, d, key_for(i)))
            st.write("%s %s\n" % (d, d))
    with open(os.path.join(work, "opendkim-%s.conf" % name), "w") as f:
        f.write("""Syslog                  no
UMask                   007
Mode                    s
Socket                  local:%(work)s/opendkim-%(name)s.sock
PidFile                 %(work)s/opendkim-%(name)s.pid
KeyTable                file:%(keytable)s
SigningTable            file:%(signingtable)s
Canonicalization        relaxed/simple
SignatureAlgorithm      rsa-sha256
SignHeaders             %(headers)s
OversignHeaders         From
InternalHosts           127.0.0.1
""" % {"work": work, "name": name, "keytable": keytable, "signingtable": signingtable,
       "headers": HEADERS})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--domains", type=int, required=True)
    ap.add_argument("--signet", required=True)
    a = ap.parse_args()
    work = os.path.abspath(a.work)
    n = a.domains

    # One shared key (both kinds: OpenDKIM signs with RSA only).
    shared = os.path.join(work, "keys-shared")
    keygen(a.signet, "ed25519", shared, "shared", "s1")
    keygen(a.signet, "rsa2048", shared, "shared-rsa", "s1")
    # The .dns of the shared key under every domain, for verification.
    dns = open(os.path.join(shared, "shared", "s1.dns"), "rb").read()
    records = os.path.join(work, "records-shared")
    for i in range(n):
        d = os.path.join(records, "d%d.example" % i)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "s1.dns"), "wb") as f:
            f.write(dns)

    signet_config(os.path.join(work, "shared.toml"), work, "shared", n,
                  '[base]\nselector = "s1"\nkey = "%s/shared/s1.key"\n' % shared)
    for algo in ("ed25519", "rsa2048"):
        top = key_dir(work, a.signet, algo, n)
        signet_config(os.path.join(work, "files-%s.toml" % algo), work, "files-" + algo, n,
                      '[keys]\ndirectory = "%s"\n[base]\nselector = "s1"\n' % top)
    opendkim_config(work, "shared", n, lambda i: "%s/shared-rsa/s1.key" % shared)
    opendkim_config(work, "files-rsa2048", n,
                    lambda i: "%s/keys-rsa2048/d%d.example/s1.key" % (work, i))
    shutil.rmtree(os.path.join(work, "seeds-ed25519"), ignore_errors=True)
    shutil.rmtree(os.path.join(work, "seeds-rsa2048"), ignore_errors=True)


if __name__ == "__main__":
    main()
