#!/usr/bin/python3
"""Independent DKIM verifier for signet-milter tests (uses dkimpy, Debian python3-dkim).

Usage:
    tests/verify_dkim.py --keys DIR [--expect DOMAIN:SELECTOR ...] [--expect-none] MESSAGE_FILE...
    tests/verify_dkim.py --dns IP:PORT [--expect ...] MESSAGE_FILE...

DIR holds public key records as written by `signet-milter keygen`:
DIR/<domain>/<selector>.dns, one line containing the TXT record value
(e.g. "v=DKIM1; k=ed25519; p=...").  Lookups are answered from that table
only; real DNS is never queried.  With --dns, keys are looked up in DNS, asking
only the server at IP:PORT (a test's own authoritative server), through dnspython
(Debian python3-dnspython), without recursion or caching.

For each message every DKIM-Signature header is verified and one line is
printed per signature:
    <file>: d=<d> s=<s> a=<a> c=<c>: pass|FAIL (<reason>)

Exit status 0 only if, for every message, all signatures pass and every
--expect d:s pair is among them (or, with --expect-none, the message carries
no DKIM-Signature at all).  Exit status 1 otherwise; 2 on usage errors.
"""

import argparse
import logging
import os
import sys

try:
    import dkim
    from dkim.util import parse_tag_value
except ImportError as e:  # pragma: no cover - environment problem
    sys.stderr.write(
        "verify_dkim.py: cannot import dkimpy (%s); install the Debian package "
        "python3-dkim and run with /usr/bin/python3\n" % e
    )
    sys.exit(2)


def load_keys(keydir):
    """Return {"<selector>._domainkey.<domain>": b"<txt value>"} (lowercase, no trailing dot)."""
    table = {}
    if not os.path.isdir(keydir):
        raise SystemExit("verify_dkim.py: --keys %s: not a directory" % keydir)
    for domain in sorted(os.listdir(keydir)):
        ddir = os.path.join(keydir, domain)
        if not os.path.isdir(ddir):
            continue
        for fname in sorted(os.listdir(ddir)):
            if not fname.endswith(".dns"):
                continue
            selector = fname[: -len(".dns")]
            with open(os.path.join(ddir, fname), "rb") as f:
                lines = [l.strip() for l in f.read().splitlines() if l.strip()]
            if not lines:
                continue
            # Tolerate a zone-file style quoted value: strip surrounding quotes
            # and join multiple quoted strings.
            value = b"".join(lines)
            if value.startswith(b'"'):
                value = b"".join(part for i, part in enumerate(value.split(b'"')) if i % 2 == 1)
            name = ("%s._domainkey.%s" % (selector, domain)).lower().rstrip(".")
            table[name] = value
    return table


def make_dnsfunc(table):
    def dnsfunc(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        return table.get(name.lower().rstrip("."), None)

    return dnsfunc


def make_server_dnsfunc(server):
    import dns.message
    import dns.query
    import dns.rcode
    import dns.rdatatype

    host, _, port = server.rpartition(":")
    host = host.strip("[]")

    def dnsfunc(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        # Follows CNAMEs the way a recursive resolver would (the two-selector model).
        for _ in range(8):
            query = dns.message.make_query(name, dns.rdatatype.TXT)
            query.flags &= ~dns.flags.RD
            response = dns.query.udp(query, host, port=int(port), timeout=timeout)
            if response.flags & dns.flags.TC:
                response = dns.query.tcp(query, host, port=int(port), timeout=timeout)
            if response.rcode() != dns.rcode.NOERROR:
                return None
            target = None
            for rrset in response.answer:
                if rrset.rdtype == dns.rdatatype.TXT:
                    for rdata in rrset:
                        return b"".join(rdata.strings)
                if rrset.rdtype == dns.rdatatype.CNAME:
                    target = rrset[0].target.to_text()
            if target is None:
                return None
            name = target
        return None

    import dns.flags  # noqa: F401  (used above through dns.flags)
    return dnsfunc


class ListHandler(logging.Handler):
    """Collects dkimpy's log messages so they can be shown as the failure reason."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records = []

    def emit(self, record):
        try:
            self.records.append((record.levelno, record.getMessage()))
        except Exception:
            pass


def normalise(raw):
    """Drop a leading mbox 'From ' line and normalise line endings to CRLF."""
    if raw.startswith(b"From "):
        nl = raw.find(b"\n")
        raw = raw[nl + 1 :] if nl >= 0 else b""
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return raw


def b2s(v):
    if v is None:
        return "?"
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    return "".join(v.split())  # tag values may be folded


def verify_file(path, dnsfunc):
    """Return (list of (d, s, ok, line), error-or-None)."""
    with open(path, "rb") as f:
        msg = normalise(f.read())
    probe = dkim.DKIM(msg)
    sigheaders = [(k, v) for k, v in probe.headers if k.lower() == b"dkim-signature"]
    results = []
    for idx, (_, value) in enumerate(sigheaders):
        try:
            tags = parse_tag_value(value)
        except Exception:
            tags = {}
        d, s = b2s(tags.get(b"d")), b2s(tags.get(b"s"))
        a, c = b2s(tags.get(b"a")), b2s(tags.get(b"c", b"simple/simple"))
        handler = ListHandler()
        logger = logging.getLogger("verify_dkim.%d" % idx)
        logger.handlers[:] = [handler]
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        reason = ""
        try:
            v = dkim.DKIM(msg, logger=logger)
            ok = bool(v.verify(idx=idx, dnsfunc=dnsfunc))
            if not ok:
                errs = [m for lvl, m in handler.records if lvl >= logging.WARNING]
                if errs:
                    reason = "public key record: " + "; ".join(errs)
                elif not dnsfunc("%s._domainkey.%s" % (s, d)):
                    reason = "no key record for %s._domainkey.%s" % (s, d)
                else:
                    reason = "signature (b=) does not verify over the signed headers"
        except dkim.DKIMException as e:
            ok = False
            reason = "%s: %s" % (type(e).__name__, e)
        except Exception as e:  # dkimpy may raise plain exceptions on malformed input
            ok = False
            reason = "%s: %s" % (type(e).__name__, e)
        if ok:
            line = "%s: d=%s s=%s a=%s c=%s: pass" % (path, d, s, a, c)
        else:
            line = "%s: d=%s s=%s a=%s c=%s: FAIL (%s)" % (path, d, s, a, c, reason)
        results.append((d.lower(), s.lower(), ok, line))
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Verify DKIM signatures offline against keygen .dns records."
    )
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--keys", metavar="DIR",
                        help="directory with <domain>/<selector>.dns TXT values")
    source.add_argument("--dns", metavar="IP:PORT",
                        help="look keys up at this DNS server only")
    ap.add_argument("--expect", action="append", default=[], metavar="DOMAIN:SELECTOR",
                    help="a passing signature with this d=/s= must be present (repeatable)")
    ap.add_argument("--expect-none", action="store_true",
                    help="succeed only if the message has no DKIM-Signature at all")
    ap.add_argument("messages", nargs="+", metavar="MESSAGE_FILE")
    args = ap.parse_args(argv)

    if args.expect_none and args.expect:
        ap.error("--expect and --expect-none are mutually exclusive")
    expects = []
    for e in args.expect:
        if ":" not in e:
            ap.error("--expect wants DOMAIN:SELECTOR, got %r" % e)
        dom, sel = e.split(":", 1)
        expects.append((dom.lower().rstrip("."), sel.lower()))

    if args.dns:
        dnsfunc = make_server_dnsfunc(args.dns)
    else:
        dnsfunc = make_dnsfunc(load_keys(args.keys))
    failed = False
    for path in args.messages:
        try:
            results = verify_file(path, dnsfunc)
        except OSError as e:
            print("%s: FAIL (cannot read: %s)" % (path, e))
            failed = True
            continue
        for _, _, _, line in results:
            print(line)
        if args.expect_none:
            if results:
                print("%s: FAIL (expected no DKIM-Signature, found %d)" % (path, len(results)))
                failed = True
            else:
                print("%s: no DKIM-Signature (as expected)" % path)
            continue
        if not results:
            print("%s: FAIL (no DKIM-Signature header found)" % path)
            failed = True
            continue
        if not all(ok for _, _, ok, _ in results):
            failed = True
        present = {(d, s) for d, s, _, _ in results}
        for dom, sel in expects:
            if (dom, sel) not in present:
                print("%s: FAIL (expected signature d=%s s=%s not found; present: %s)"
                      % (path, dom, sel,
                         ", ".join("d=%s s=%s" % p for p in sorted(present)) or "none"))
                failed = True
    if failed:
        print("verify_dkim.py: FAILED", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
