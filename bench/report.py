#!/usr/bin/python3
"""Turns the raw results of bench/compare.sh into the markdown report.

    report.py --meta META.env --results RESULTS.jsonl --verify VERIFY.txt [--failed-runs N]
        writes the report on stdout.
    report.py --splice BENCHMARKS.md < report.md
        replaces the text between the "results:start" and "results:end" markers.

Every figure is the median over the repetitions; msgs/s also shows the range.
"""

import argparse
import json
import statistics
import sys
from collections import defaultdict

MILTERS = [
    ("opendkim", "OpenDKIM, RSA-2048"),
    ("signet-rsa", "signet, RSA-2048"),
    ("signet-ed", "signet, Ed25519"),
]
BODIES = ["2KiB", "100KiB", "10MiB"]
START = "<!-- results:start (bench/compare.sh --update writes this part) -->"
END = "<!-- results:end -->"


def read_meta(path):
    meta = {}
    with open(path) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                meta[k] = v
    return meta


def read_results(path):
    cells = defaultdict(list)  # (milter, body, conns) -> [result]
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            cells[(r["milter"], r["body"], r["conns"])].append(r["result"])
    return cells


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=0):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def summary(cells, milter, body, conns):
    runs = cells.get((milter, body, conns), [])
    if not runs:
        return None
    rates = [r["msgs_per_s"] for r in runs]
    rss = [r["milter_peak_rss_kib"] for r in runs if r["milter_peak_rss_kib"] is not None]
    return {
        "n": len(runs),
        "rate": med(rates),
        "rate_min": min(rates),
        "rate_max": max(rates),
        "p50": med([r["eom_p50_ms"] for r in runs]),
        "p99": med([r["eom_p99_ms"] for r in runs]),
        "cpu": med([r["milter_cpu_ms_per_msg"] for r in runs]),
        "rss": med(rss) / 1024 if rss else None,
        "client": med([r["loadgen_cpu_ms_per_msg"] for r in runs]),
        "round_trips": med([r.get("round_trips_per_msg") for r in runs]),
        "errors": sum(r["errors"] for r in runs),
        "messages": sum(r["messages"] for r in runs),
    }


def results_table(cells, conns_list):
    out = [
        "| body | conns | milter | msgs/s (range) | EOM p50 ms | EOM p99 ms | milter CPU ms/msg "
        "| milter peak RSS MiB | round trips/msg | loadgen CPU ms/msg | messages | errors |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for body in BODIES:
        for conns in conns_list:
            for milter, title in MILTERS:
                s = summary(cells, milter, body, conns)
                if s is None:
                    continue
                rng = ""
                if s["n"] > 1:
                    rng = f" ({fmt(s['rate_min'])}–{fmt(s['rate_max'])})"
                out.append(
                    f"| {body} | {conns} | {title} | **{fmt(s['rate'])}**{rng} | {fmt(s['p50'], 2)} "
                    f"| {fmt(s['p99'], 2)} | {fmt(s['cpu'], 3)} | {fmt(s['rss'], 1)} "
                    f"| {fmt(s['round_trips'], 0)} | {fmt(s['client'], 3)} | {s['messages']:,} "
                    f"| {s['errors']} |"
                )
    return out


def ratio(a, b):
    if a is None or b in (None, 0):
        return None
    return a / b


def targets(cells, meta):
    rows = []

    def row(name, required, measured, ok):
        mark = "–" if ok is None else ("**met**" if ok else "**not met**")
        rows.append(f"| {name} | {required} | {measured} | {mark} |")

    od = summary(cells, "opendkim", "2KiB", 8)
    rsa = summary(cells, "signet-rsa", "2KiB", 8)
    ed = summary(cells, "signet-ed", "2KiB", 8)
    if od and rsa:
        r = ratio(rsa["rate"], od["rate"])
        row("2 KiB, 8 conns, RSA: messages/s", "≥ 3× OpenDKIM",
            f"{fmt(rsa['rate'])} vs {fmt(od['rate'])} = {fmt(r, 2)}×", r is not None and r >= 3)
        sign_per_s = float(meta.get("OPENSSL_RSA2048_SIGN_PER_S") or 0)
        if sign_per_s > 0:
            one_sig_ms = 1000.0 / sign_per_s
            ok = rsa["cpu"] is not None and rsa["cpu"] <= 2 * one_sig_ms
            row("2 KiB, 8 conns, RSA: milter CPU per message",
                f"≤ 2 × one `openssl speed` RSA-2048 signature = {fmt(2 * one_sig_ms, 3)} ms",
                f"{fmt(rsa['cpu'], 3)} ms = {fmt(rsa['cpu'] / one_sig_ms if rsa['cpu'] else None, 2)} signatures"
                f" (OpenDKIM {fmt(od['cpu'], 3)} ms)", ok)
    for body in BODIES:
        o = summary(cells, "opendkim", body, 8)
        s = summary(cells, "signet-rsa", body, 8)
        if o and s:
            r = ratio(s["p99"], o["p99"])
            row(f"{body}, 8 conns, RSA: EOM p99 latency", "≤ ½ OpenDKIM's",
                f"{fmt(s['p99'], 2)} ms vs {fmt(o['p99'], 2)} ms = {fmt(r, 2)}×",
                r is not None and r <= 0.5)
    conns_seen = sorted({c for (_, b, c) in cells if b == "10MiB"})
    for conns in conns_seen:
        o = summary(cells, "opendkim", "10MiB", conns)
        s = summary(cells, "signet-rsa", "10MiB", conns)
        if o and s:
            r = ratio(s["rate"], o["rate"])
            row(f"10 MiB, {conns} conns, RSA: messages/s", "≥ OpenDKIM's",
                f"{fmt(s['rate'], 1)} vs {fmt(o['rate'], 1)} = {fmt(r, 2)}×", r is not None and r >= 1)
    o = summary(cells, "opendkim", "10MiB", 64)
    s = summary(cells, "signet-rsa", "10MiB", 64)
    if o and s:
        ok = None if s["rss"] is None or o["rss"] is None else s["rss"] <= o["rss"]
        row("10 MiB, 64 conns: milter peak RSS", "≤ OpenDKIM's",
            f"{fmt(s['rss'], 1)} MiB vs {fmt(o['rss'], 1)} MiB", ok)
    if ed and rsa:
        r = ratio(ed["rate"], rsa["rate"])
        row("2 KiB, 8 conns: Ed25519 messages/s", "≥ 3× signet's RSA-2048",
            f"{fmt(ed['rate'])} vs {fmt(rsa['rate'])} = {fmt(r, 2)}×", r is not None and r >= 3)
    return ["| target (issue 5) | required | measured | |", "|---|---|---|---|"] + rows


def verification(path):
    passed = failed = 0
    lines = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line.endswith(": pass"):
                passed += 1
            elif "FAIL" in line or line.startswith("FAILED") or "no signed message" in line:
                failed += 1
                lines.append(line)
    return passed, failed, lines


def busy_warning(meta):
    """A warning when other work competed for the CPU during the run."""
    try:
        cores = int(meta.get("CORES", "0"))
        loads = [float(meta[k].split()[0]) for k in ("LOAD_START", "LOAD_END") if k in meta]
    except ValueError:
        return None
    # The run itself keeps about one core busy; more than that is someone else's work.
    if cores and loads and max(loads) > cores / 2 + 1:
        return (f"- **The machine was busy** (load average up to {max(loads):.1f} on {cores} cores, "
                "this run included): other work competed for the CPU, so the figures are noisy; "
                "CPU per message is the least affected.")
    return None


def report(args):
    meta = read_meta(args.meta)
    cells = read_results(args.results)
    conns_list = sorted({c for (_, _, c) in cells})
    passed, failed, failures = verification(args.verify)
    rsa_sps = float(meta.get("OPENSSL_RSA2048_SIGN_PER_S") or 0)
    ed_sps = float(meta.get("OPENSSL_ED25519_SIGN_PER_S") or 0)
    out = [
        f"Run of {meta.get('DATE', '?')}: `bench/compare.sh` "
        f"({meta.get('REPS')} repetitions × {meta.get('DURATION')} s per milter and cell; medians).",
        "",
        f"- Machine: {meta.get('CPU', '?')}, {meta.get('CORES', '?')} cores, Linux {meta.get('KERNEL', '?')}; "
        f"load average {meta.get('LOAD_START', '?')} at the start, {meta.get('LOAD_END', '?')} at the end.",
        f"- signet-milter {meta.get('SIGNET_VERSION', '?')} (rustc {meta.get('RUSTC', '?')}, release build); "
        f"OpenDKIM {meta.get('OPENDKIM_VERSION', '?')} (Debian package {meta.get('OPENDKIM_PACKAGE', '?')}); "
        f"OpenSSL {meta.get('OPENSSL_VERSION', '?')}.",
        f"- `openssl speed` on this machine, same run: RSA-2048 {fmt(rsa_sps)} sign/s "
        f"({fmt(1000 / rsa_sps if rsa_sps else None, 3)} ms per signature), "
        f"Ed25519 {fmt(ed_sps)} sign/s.",
        f"- Verification with dkimpy (tests/verify_dkim.py) of a sample of the signed messages: "
        f"{passed} signatures pass, {failed} fail.",
    ]
    busy = busy_warning(meta)
    if busy:
        out.append(busy)
    if args.failed_runs:
        out.append(f"- **{args.failed_runs} load runs reported errors** (see the errors column).")
    for line in failures[:10]:
        out.append(f"  - `{line}`")
    out += ["", "### Targets", ""] + targets(cells, meta)
    out += ["", "### All results", ""] + results_table(cells, conns_list)
    return "\n".join(out) + "\n"


def splice(path):
    new = sys.stdin.read().strip("\n")
    with open(path) as f:
        text = f.read()
    if START not in text or END not in text:
        sys.exit(f"report.py: {path} lacks the markers {START} ... {END}")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    with open(path, "w") as f:
        f.write(f"{head}{START}\n{new}\n{END}{tail}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meta")
    ap.add_argument("--results")
    ap.add_argument("--verify")
    ap.add_argument("--failed-runs", type=int, default=0)
    ap.add_argument("--splice", metavar="MARKDOWN_FILE")
    args = ap.parse_args()
    if args.splice:
        splice(args.splice)
    elif args.meta and args.results and args.verify:
        sys.stdout.write(report(args))
    else:
        ap.error("give --meta, --results and --verify, or --splice FILE")


if __name__ == "__main__":
    main()
