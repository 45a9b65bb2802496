#!/usr/bin/env python3
"""Tables for bench/sidecar.sh: medians over rounds, ratios to direct / HAProxy / Envoy, the aims.

    python3 bench/report.py RESULTS_DIR              # markdown tables on stdout
    python3 bench/report.py --oha-line FILE NAME     # one line for one oha JSON summary
"""
import glob
import json
import os
import re
import statistics
import sys

PAIRS = ["direct", "haproxy", "envoy", "warden"]
ONEHOP = ["direct", "haproxy", "envoy", "nginx", "warden"]
# The fixed-rate runs also measure the relay floor: two HAProxy `mode tcp` relays, no TLS.
RATE_PATHS = PAIRS + ["relay"]
LABELS = {"relay": "relay floor (2 plaintext TCP relays)"}
DEADLINE = "aborted due to deadline"
SIDECARS = ["warden-in", "warden-out", "haproxy-in", "haproxy-out", "envoy-in", "envoy-out"]


def wrk_ms(text):
    """A wrk latency (`386.00us`, `2.22ms`, `1.01s`) in milliseconds."""
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if not m:
        return None
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[m.group(2)]


def parse_wrk(path):
    try:
        t = open(path).read()
    except OSError:
        return None
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", t)
    p50 = re.search(r"^\s+50%\s+(\S+)", t, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", t, re.M)
    if not (rps and p50 and p99):
        return None
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
    err = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
    errors = (int(bad.group(1)) if bad else 0) + (sum(int(x) for x in err.groups()) if err else 0)
    return {"rps": float(rps.group(1)), "p50": wrk_ms(p50.group(1)), "p99": wrk_ms(p99.group(1)),
            "errors": errors}


def parse_h2load(stem):
    """h2load summary (`stem.h2load`) + per-request log (`stem.log`: start_us status duration_us)."""
    try:
        t = open(stem + ".h2load").read()
        durs = sorted(int(l.split()[2]) for l in open(stem + ".log") if l.strip())
    except (OSError, IndexError, ValueError):
        return None
    rps = re.search(r"^finished in \S+, ([0-9.]+) req/s", t, re.M)
    req = re.search(r"^requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", t, re.M)
    codes = re.search(r"^status codes: (\d+) 2xx", t, re.M)
    if not (rps and durs):
        return None
    pct = lambda q: durs[min(len(durs) - 1, int(q * len(durs)))] / 1000.0
    errors = 0
    if req:
        errors = int(req.group(3)) + int(req.group(4))
        if codes:
            errors += int(req.group(2)) - int(codes.group(1))
    return {"rps": float(rps.group(1)), "p50": pct(0.50), "p99": pct(0.99), "errors": errors}


def parse_oha(path):
    try:
        d = json.load(open(path))
        s, p = d["summary"], d["latencyPercentiles"]
        codes = {str(k): v for k, v in (d.get("statusCodeDistribution") or {}).items()}
        errors = sum(v for k, v in codes.items() if not k.startswith("2"))
        # oha cancels the requests in flight when -z runs out: not an error of the target.
        errdist = {k: v for k, v in (d.get("errorDistribution") or {}).items() if k != DEADLINE}
        errors += sum(errdist.values())
        return {"rps": float(s["requestsPerSec"]), "p50": p["p50"] * 1e3, "p99": p["p99"] * 1e3,
                "errors": errors, "ok": s.get("successRate"), "codes": codes, "errdist": errdist}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def oha_line(path, name):
    r = parse_oha(path)
    if r is None:
        text = open(path, errors="replace").read().strip().splitlines() if os.path.exists(path) else []
        print(f"{name:<10} FAILED: {' | '.join(text[-3:])}")
        return
    errs = f" errors={r['errdist']}" if r["errdist"] else ""
    print(f"{os.path.basename(path)[:-5]:<18} rps={r['rps']:<9.0f} p50={r['p50']:.3f}ms p99={r['p99']:.3f}ms "
          f"codes={r['codes']}{errs}")


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def collect(rounds, fn):
    """{key: {metric: median over rounds}} plus the per-round rps, for each key fn(round_dir, key) parses."""
    def agg(keys):
        out = {}
        for k in keys:
            rs = [fn(r, k) for r in rounds]
            rs = [x for x in rs if x]
            if not rs:
                continue
            out[k] = {m: median([x[m] for x in rs]) for m in ("rps", "p50", "p99")}
            out[k]["errors"] = sum(x["errors"] for x in rs)
            out[k]["all_rps"] = [x["rps"] for x in rs]
            out[k]["n"] = len(rs)
        return out
    return agg


def fmt_rps(x):
    return "—" if x is None else (f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}")


def fmt_ms(x):
    return "—" if x is None else (f"{x * 1000:.0f} µs" if x < 1 else f"{x:.2f} ms")


def ratio(a, b):
    return "—" if not a or not b else f"{a / b:.2f}×"


def spread(v):
    xs = v["all_rps"]
    if len(xs) < 2:
        return ""
    return f" ({fmt_rps(min(xs))}–{fmt_rps(max(xs))})"


def throughput_table(title, data, names, refs):
    print(f"\n### {title}\n")
    head = ["path", "req/s (median, range)", "p50", "p99", "errors"] + [f"× {r}" for r in refs]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for n in names:
        v = data.get(n)
        if not v:
            print(f"| {n} | not measured |" + " |" * (len(head) - 2))
            continue
        cells = [n, fmt_rps(v["rps"]) + spread(v), fmt_ms(v["p50"]), fmt_ms(v["p99"]), str(v["errors"])]
        cells += [ratio(v["rps"], data.get(r, {}).get("rps")) for r in refs]
        print("| " + " | ".join(cells) + " |")


def main(res):
    rounds = sorted(glob.glob(os.path.join(res, "round*")), key=lambda p: int(p.rsplit("round", 1)[1]))
    if not rounds:
        sys.exit(f"error: no round*/ directories in `{res}`")
    h1 = collect(rounds, lambda r, k: parse_wrk(f"{r}/h1-{k}-1.wrk"))(PAIRS)
    h2 = collect(rounds, lambda r, k: parse_h2load(f"{r}/h2-{k}-1"))(PAIRS)
    o1 = collect(rounds, lambda r, k: parse_oha(f"{r}/oha-h1-{k}.json"))(ONEHOP)
    o2 = collect(rounds, lambda r, k: parse_oha(f"{r}/oha-h2-{k}.json"))(ONEHOP)
    hs = collect(rounds, lambda r, k: parse_oha(f"{r}/hs-{k}.json"))(ONEHOP)
    fr = collect(rounds, lambda r, k: parse_oha(f"{r}/rate-{k}.json"))(RATE_PATHS)

    meta = open(os.path.join(res, "meta.txt")).read() if os.path.exists(os.path.join(res, "meta.txt")) else ""
    print(f"## Sidecar benchmark: {len(rounds)} interleaved rounds, medians\n")
    print("```\n" + meta.strip() + "\n```")
    loads = []
    for r in rounds:
        try:
            loads += [float(l.split()[1]) for l in open(f"{r}/loadavg.txt")]
        except (OSError, IndexError, ValueError):
            pass
    if loads:
        print(f"\n1-minute load average at round starts/ends: {min(loads):.2f}–{max(loads):.2f}")

    throughput_table("Two hops (plaintext → outbound proxy → mTLS → inbound proxy → app), HTTP/1.1, wrk -t1 -c32",
                     h1, PAIRS, ["direct", "haproxy", "envoy"])
    throughput_table("Two hops, HTTP/2, h2load -c8 -m16", h2, PAIRS, ["direct", "haproxy", "envoy"])
    throughput_table("One hop (mTLS termination, oha presents the client certificate), HTTP/1.1, -c32",
                     o1, ONEHOP, ["direct", "haproxy", "envoy"])
    throughput_table("One hop, HTTP/2, oha --http2 -c8 -p16", o2, ONEHOP, ["direct", "haproxy", "envoy"])
    throughput_table("New TLS connection per request (oha --disable-keepalive -c16), one hop", hs, ONEHOP,
                     ["direct", "haproxy", "envoy"])

    print("\n### Added latency at a fixed rate (oha -q RATE -c8, HTTP/1.1, through each pair)\n")
    print("| path | p50 | p99 | added p50 vs direct | added p99 vs direct | achieved req/s | errors |")
    print("|---|---|---|---|---|---|---|")
    d = fr.get("direct")
    for n in RATE_PATHS:
        v = fr.get(n)
        label = LABELS.get(n, n)
        if not v:
            print(f"| {label} | not measured | | | | | |")
            continue
        add50 = fmt_ms(v["p50"] - d["p50"]) if d and n != "direct" else "—"
        add99 = fmt_ms(v["p99"] - d["p99"]) if d and n != "direct" else "—"
        print(f"| {label} | {fmt_ms(v['p50'])} | {fmt_ms(v['p99'])} | {add50} | {add99} | {fmt_rps(v['rps'])} | {v['errors']} |")

    # CPU per request at the fixed rate: both proxies of a pair (direct: the backend alone).
    cpu = {}
    for r in rounds:
        reqs = {k: parse_oha(f"{r}/rate-{k}.json") for k in RATE_PATHS}
        try:
            for l in open(f"{r}/cpu.txt"):
                k, ticks, hz = l.split()
                done = reqs.get(k)
                if done and done["rps"]:
                    n = sum(int(v) for c, v in done["codes"].items())
                    if n:
                        cpu.setdefault(k, []).append(int(ticks) / int(hz) / n * 1e6)
        except (OSError, ValueError):
            pass
    if cpu:
        print("\n### CPU time per request at the fixed rate (user + system, all threads)\n")
        print("| path | µs per request (median over rounds) | × HAProxy pair | × Envoy pair |")
        print("|---|---|---|---|")
        for n in RATE_PATHS:
            v = median(cpu.get(n, []))
            what = {"direct": "backend alone", "relay": "two plaintext TCP relays"}.get(n, "both proxies of the pair")
            n = "relay floor" if n == "relay" else n
            hv, ev = median(cpu.get("haproxy", [])), median(cpu.get("envoy", []))
            print(f"| {n} ({what}) | {'—' if v is None else f'{v:.0f}'} | {ratio(v, hv)} | {ratio(v, ev)} |")

    print("\n### Memory of each sidecar process\n")
    print("VmRSS counts every resident page, including the file-backed pages of the executable (the two")
    print("Warden sidecars run the same `warden` binary and share those pages); RssAnon is private")
    print("anonymous memory (heap, stacks); Pss splits shared pages between the processes sharing them.\n")

    def samples(path):
        out = {}
        try:
            for l in open(path):
                f = l.split()
                vals = [int(x) for x in f[1:4]] + [0] * (4 - len(f))
                cur = out.setdefault(f[0], [0, 0, 0])
                out[f[0]] = [max(a, b) for a, b in zip(cur, vals)]
        except (OSError, ValueError):
            pass
        return out
    idle = samples(os.path.join(res, "rss-idle.txt"))
    peak = {}
    for r in rounds:
        for k, v in samples(f"{r}/rss.txt").items():
            peak.setdefault(k, []).append(v)
    print("| process | VmRSS idle | VmRSS peak under load | RssAnon peak | Pss peak |")
    print("|---|---|---|---|---|")
    mb = lambda kb: "—" if not kb else f"{kb / 1024:.1f} MB"
    col = lambda k, i: max(v[i] for v in peak[k]) if peak.get(k) else None
    for k in SIDECARS:
        print(f"| {k} | {mb(idle.get(k, [None])[0])} | {mb(col(k, 0))} | {mb(col(k, 1))} | {mb(col(k, 2))} |")

    # The aims of issue 5.
    print("\n### Aims\n")
    print("| aim | measured | verdict |")
    print("|---|---|---|")

    def row(aim, measured, ok):
        verdict = "not measured" if ok is None else ("met" if ok else "missed")
        print(f"| {aim} | {measured} | {verdict} |")

    g = lambda t, k, m: (t.get(k) or {}).get(m)
    for proto, t in (("HTTP/1.1", h1), ("HTTP/2", h2)):
        w, h = g(t, "warden", "rps"), g(t, "haproxy", "rps")
        row(f"Warden pair ≥ 1.2× HAProxy pair throughput, {proto}",
            f"{ratio(w, h)} ({fmt_rps(w)} vs {fmt_rps(h)} req/s)", None if not (w and h) else w >= 1.2 * h)
        w99, h99 = g(t, "warden", "p99"), g(t, "haproxy", "p99")
        row(f"Warden pair p99 < HAProxy pair p99, {proto}", f"{fmt_ms(w99)} vs {fmt_ms(h99)}",
            None if not (w99 and h99) else w99 < h99)
    for proto, t in (("HTTP/1.1", o1), ("HTTP/2", o2)):
        w, h = g(t, "warden", "rps"), g(t, "haproxy", "rps")
        row(f"Warden one hop ≥ HAProxy one hop, {proto}", f"{ratio(w, h)} ({fmt_rps(w)} vs {fmt_rps(h)} req/s)",
            None if not (w and h) else w >= h)
    w, e = g(hs, "warden", "rps"), g(hs, "envoy", "rps")
    row("handshakes/s ≥ Envoy's", f"{ratio(w, e)} ({fmt_rps(w)} vs {fmt_rps(e)} /s)", None if not (w and e) else w >= e)
    w, dd, fl = g(fr, "warden", "p50"), g(fr, "direct", "p50"), g(fr, "relay", "p50")
    floor = f" (relay floor {fmt_ms(fl - dd)})" if fl is not None and dd is not None else ""
    row("< 100 µs added p50 at a fixed 1,000 req/s (pair vs direct)",
        (fmt_ms(w - dd) + floor) if w is not None and dd is not None else "—",
        None if w is None or dd is None else (w - dd) < 0.1)
    for k in ("warden-in", "warden-out"):
        v = col(k, 0)
        row(f"< 15 MB resident, {k} (VmRSS, max under load)",
            f"{mb(v)} (RssAnon {mb(col(k, 1))}, Pss {mb(col(k, 2))})", None if v is None else v < 15 * 1024)

    bad = [(name, k) for name, t in (("h1", h1), ("h2", h2), ("1hop-h1", o1), ("1hop-h2", o2), ("handshakes", hs),
                                     ("rate", fr)) for k, v in t.items() if v["errors"]]
    if bad:
        print("\nWARNING: errors or non-2xx answers in: " + ", ".join(f"{a}/{b}" for a, b in bad) +
              " (see the raw files; figures with errors are not comparable)")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--oha-line":
        oha_line(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 2:
        main(sys.argv[1])
    else:
        sys.exit(__doc__)
