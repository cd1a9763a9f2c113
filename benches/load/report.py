#!/usr/bin/python3
"""Turns the harness's raw results into the sections of docs/performance.md
and the chart docs/performance.png (gnuplot). Stdlib only.

  report.py compare RESULTS.tsv META.txt [--doc FILE --png FILE]
  report.py longpoll META.txt [--doc FILE]
  report.py flood META.txt [--doc FILE]

Each section sits between `<!-- load:NAME:begin -->` and `<!-- load:NAME:end -->`
and is replaced whole; the rest of the document is left as it is.
"""
import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile

SECTIONS = ("compare", "pinning", "longpoll", "flood")

SKELETON = """# Performance

Written by the load harness: `benches/load/run.sh --help`.

<!-- load:compare:begin -->
<!-- load:compare:end -->

<!-- load:pinning:begin -->
<!-- load:pinning:end -->

<!-- load:longpoll:begin -->
<!-- load:longpoll:end -->

<!-- load:flood:begin -->
<!-- load:flood:end -->
"""


def read_meta(path):
    meta = {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if "=" in line:
                k, v = line.split("=", 1)
                meta[k] = v
    return meta


def kv(s):
    """'a=1 b=2' -> dict of floats (or strings)."""
    out = {}
    for part in (s or "").split():
        if "=" in part:
            k, v = part.split("=", 1)
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = v
    return out


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fnum(x, digits=0):
    if x is None:
        return "–"
    return f"{x:,.{digits}f}"


def ms(us):
    return "–" if us is None else f"{us / 1000:.2f}"


def machine_line(meta):
    busy = meta.get("busy_start")
    return (
        f"{meta.get('date', '?')} · {meta.get('cpu', '?')}, {meta.get('nproc', '?')} CPUs, "
        f"{meta.get('mem', '?')} · Linux {meta.get('kernel', '?')}"
        + (f" · {busy} % of CPU time in use before the run" if busy else "")
    )


def versions_line(meta):
    return (
        f"scopegate {meta.get('scopegate', '?')} · {meta.get('rustc', '?')} · "
        f"nginx {meta.get('nginx', '?')} · HAProxy {meta.get('haproxy', '?')} · wrk {meta.get('wrk', '?')}"
    )


def load_warning(meta):
    """A warning when something else was using the machine as the run began
    (CPU time not idle over 2 s before anything of ours started)."""
    try:
        busy = float(meta.get("busy_start", "0"))
    except ValueError:
        busy = 0.0
    lines = []
    if busy >= 20:
        lines.append(
            f"> **Taken on a busy machine** ({busy:.0f} % of CPU time in use before the run;"
            f" load average {meta.get('load_start')} at the start"
            + (f", {meta['load_end']} at the end" if meta.get("load_end") else "")
            + "): absolute figures are low and noisy; the ratios within one run are what to read."
        )
    if meta.get("note"):
        lines.append(f"> Note: {meta['note']}")
    return "\n".join(lines)


# ---------------------------------------------------------------- compare
def targets(s):
    """Issue 7's throughput targets, read off the table's own ratios."""
    def ratio(cid, key):
        x = s.get(cid, {}).get(key)
        return None if x is None else f"{x:.2f}×"
    lines = ["Against the project's targets, from the ratios above:\n"]
    a, nginx = s.get("sg_a"), s.get("nginx")
    if a and nginx:
        p99 = "≤" if a["p99"] <= nginx["p99"] else ">"
        lines.append(
            f"- cached JWT: {ratio('sg_a', 'ratio')} nginx plain `proxy_pass` (target ≥ 1.00×), "
            f"p99 {ms(a['p99'])} ms {p99} nginx's {ms(nginx['p99'])} ms (target ≤)"
        )
    if s.get("sg_b") and s.get("haproxy"):
        lines.append(
            f"- uncached JWT (RS256 on every request): {ratio('sg_b', 'ratio_haproxy')} HAProxy "
            "`jwt_verify` (target ≥ 1.00×)"
        )
    return "\n".join(lines) + "\n" if len(lines) > 1 else ""


def compare(args):
    meta = read_meta(args.meta)
    rows = list(csv.DictReader(open(args.results), delimiter="\t"))
    for r in rows:
        for k in ("rps", "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "requests", "errors"):
            r[k] = float(r[k]) if r[k] not in ("", None) else None
        r["cpu_us_per_req"] = float(r["cpu_us_per_req"]) if r["cpu_us_per_req"] else None
        r["cache_hit_pct"] = float(r["cache_hit_pct"]) if r["cache_hit_pct"] else None
        r["pinned"] = r["pinned"] == "1"
        r["round"] = int(r["round"])
    order, labels = [], {}
    for r in rows:
        if r["id"] not in labels:
            order.append(r["id"])
            labels[r["id"]] = r["label"]
    pin_modes = [p for p in (True, False) if any(r["pinned"] == p for r in rows)]

    def summary(pinned):
        sel = [r for r in rows if r["pinned"] == pinned]
        base = {r["round"]: r["rps"] for r in sel if r["id"] == "nginx" and r["rps"]}
        haproxy = {r["round"]: r["rps"] for r in sel if r["id"] == "haproxy" and r["rps"]}
        out = {}
        for cid in order:
            rs = [r for r in sel if r["id"] == cid]
            if not rs:
                continue
            ratios = [r["rps"] / base[r["round"]] for r in rs if r["round"] in base and r["rps"]]
            to_haproxy = [r["rps"] / haproxy[r["round"]] for r in rs if r["round"] in haproxy and r["rps"]]
            rps = [r["rps"] for r in rs]
            out[cid] = {
                "n": len(rs),
                "rps": med(rps),
                "min": min(rps),
                "max": max(rps),
                "ratio": med(ratios),
                "ratio_haproxy": med(to_haproxy),
                "p50": med([r["p50_us"] for r in rs]),
                "p99": med([r["p99_us"] for r in rs]),
                "p999": med([r["p999_us"] for r in rs]),
                "cpu": med([r["cpu_us_per_req"] for r in rs]),
                "hit": med([r["cache_hit_pct"] for r in rs]),
                "errors": sum(r["errors"] or 0 for r in rs),
                "requests": sum(r["requests"] or 0 for r in rs),
            }
        return out

    sums = {p: summary(p) for p in pin_modes}
    main_pin = pin_modes[0]
    out = []
    out.append("## Throughput and latency\n")
    out.append(f"Measured {machine_line(meta)}.  ")
    out.append(f"{versions_line(meta)}.\n")
    warn = load_warning(meta)
    if warn:
        out.append(warn + "\n")
    auth = []
    auth.append("JWT validation **on**" if meta.get("jwt") == "on" else
                "JWT validation not in this build: contender 5 uses a static token (`[[auth.static]]`, SHA-256 lookup)")
    auth.append("introspection **on**" if meta.get("introspection") == "on" else "introspection not in this build")
    pin_text = {
        "on": "generator pinned to CPU 0, proxy and upstream stub to CPU 1 (`taskset`)",
        "off": "no pinning",
        "both": "every round run pinned (generator CPU 0, servers CPU 1) and unpinned",
    }[meta.get("pin", "on")]
    out.append(
        f"Setup: wrk, {meta.get('conns')} connections, {meta.get('threads')} thread, "
        f"{meta.get('duration')} s per run, {meta.get('rounds')} rounds, contenders interleaved "
        f"(the starting one rotates each round); {pin_text}; each proxy and the nginx upstream stub "
        f"with {meta.get('workers')} worker. Request mix: {meta.get('mix_get')} GET paths of "
        f"`tests/data/sample-requests.tsv` that need a token, and {meta.get('mix_put')} PUT sends as one "
        f"request in ten, each with a 721-byte RS256 bearer token. scopegate with the shipped rules, "
        f"log level `{meta.get('sg_log')}`"
        + (" (no access log, like nginx with `access_log off` and HAProxy without logging; the "
           "*access log on* contender logs one line per request at `info`, to a file)"
           if meta.get("sg_log") == "warn" else "")
        + f". nginx `auth_request` subrequest: {meta.get('authreq', 'proxied')}. {'; '.join(auth)}."
        + (" **Rounds were cut short by the time budget.**" if meta.get("truncated") == "1" else "")
        + "\n"
    )
    out.append(
        "Medians over the rounds. *× nginx* is the median of the per-round ratios to nginx plain "
        "`proxy_pass` in the same round (steadier than a ratio of medians), *× HAProxy* likewise to "
        "HAProxy `jwt_verify`. *CPU µs/req* is the "
        "contender's own processes' user+system time over the run divided by its requests "
        "(for *direct*, the upstream stub's).\n"
    )

    def table(s):
        t = [
            "| contender | req/s | range | × nginx | × HAProxy | p50 ms | p99 ms | p99.9 ms | CPU µs/req | enforcement |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for cid in order:
            if cid not in s:
                continue
            x = s[cid]
            enf = meta.get(f"enforced_{cid}", "")
            extra = []
            if x["hit"] is not None:
                extra.append(f"cache hits {x['hit']:.0f} %")
            if x["errors"]:
                extra.append(f"**{int(x['errors'])} errors**")
            t.append(
                f"| {labels[cid]} | {fnum(x['rps'])} | {fnum(x['min'])}–{fnum(x['max'])} | "
                f"{'–' if x['ratio'] is None else format(x['ratio'], '.2f')} | "
                f"{'–' if x['ratio_haproxy'] is None else format(x['ratio_haproxy'], '.2f')} | "
                f"{ms(x['p50'])} | {ms(x['p99'])} | {ms(x['p999'])} | {fnum(x['cpu'], 1)} | "
                f"{enf}{'; ' if enf and extra else ''}{'; '.join(extra)} |"
            )
        return "\n".join(t)

    out.append(table(sums[main_pin]) + "\n")
    out.append(targets(sums[main_pin]))
    if len(pin_modes) == 2:
        out.append("The same rounds run unpinned are in *Does pinning help?* below.\n")

    pin = []
    if len(pin_modes) == 2:
        pin.append("## Does pinning help?\n")
        pin.append(f"Measured {machine_line(meta)}, in the run above (`--pin both`).\n")
        if warn:
            pin.append(warn + "\n")
        pin.append(
            "Same processes, same worker counts; only the CPU affinity differs "
            "(unpinned: the scheduler places generator, proxy and upstream on either CPU). "
            "*unpinned ÷ pinned* is the median of per-round ratios.\n"
        )
        pin.append("| contender | pinned req/s | unpinned req/s | unpinned ÷ pinned | pinned × nginx | unpinned × nginx | "
                   "pinned p99 ms | unpinned p99 ms | pinned CPU µs/req | unpinned CPU µs/req |")
        pin.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for cid in order:
            a, b = sums[True].get(cid), sums[False].get(cid)
            if not a or not b:
                continue
            per_round = []
            for rnd in {r["round"] for r in rows}:
                pa = [r["rps"] for r in rows if r["id"] == cid and r["round"] == rnd and r["pinned"]]
                pb = [r["rps"] for r in rows if r["id"] == cid and r["round"] == rnd and not r["pinned"]]
                if pa and pb and pa[0]:
                    per_round.append(pb[0] / pa[0])
            ratio = med(per_round)
            def r2(x):
                return "–" if x is None else f"{x:.2f}"
            pin.append(
                f"| {labels[cid]} | {fnum(a['rps'])} | {fnum(b['rps'])} | {r2(ratio)} | {r2(a['ratio'])} | "
                f"{r2(b['ratio'])} | {ms(a['p99'])} | {ms(b['p99'])} | {fnum(a['cpu'], 1)} | {fnum(b['cpu'], 1)} |"
            )
        pin.append("")

    if args.png:
        out.append(f"\n![throughput and p99 per contender]({os.path.basename(args.png)})\n")
        chart(args.png, order, labels, sums[main_pin], meta, main_pin)

    out.append("\n<details><summary>Every run</summary>\n")
    out.append("| round | pinned | contender | req/s | p50 ms | p99 ms | p99.9 ms | max ms | CPU µs/req | cache hits % | errors |")
    out.append("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        out.append(
            f"| {r['round']} | {'yes' if r['pinned'] else 'no'} | {r['id']} | {fnum(r['rps'])} | {ms(r['p50_us'])} | "
            f"{ms(r['p99_us'])} | {ms(r['p999_us'])} | {ms(r['max_us'])} | {fnum(r['cpu_us_per_req'], 1)} | "
            f"{fnum(r['cache_hit_pct'], 1)} | {int(r['errors'] or 0)} |"
        )
    out.append("\n</details>\n")
    text = "\n".join(out)
    print(text)
    if args.doc:
        write_section(args.doc, "compare", text)
    if pin:
        text = "\n".join(pin)
        print(text)
        if args.doc:
            write_section(args.doc, "pinning", text)


def chart(png, order, labels, s, meta, pinned):
    ids = [c for c in order if c in s]
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data.tsv")
        with open(data, "w") as f:
            for cid in ids:
                label = labels[cid].replace('"', "'")
                ratio = s[cid]["ratio"]
                rl = f"{ratio:.2f}x" if ratio is not None else ""
                f.write(f"{label}\t{s[cid]['rps'] or 0:.0f}\t{(s[cid]['p99'] or 0) / 1000:.3f}\t{rl}\n")
        title = f"{meta.get('date', '')}, {meta.get('nproc', '?')} CPUs" + (", pinned" if pinned else ", unpinned")
        script = f"""
set terminal pngcairo size 1400,620 font "sans,10" noenhanced
set output "{png}"
set datafile separator "\\t"
set style data histograms
set style histogram clustered gap 0.6
set boxwidth 0.75 relative
set style fill solid 0.8 border -1
set grid ytics
set offsets 0, 0, graph 0.1, 0
set xtics rotate by -30 left nomirror
set bmargin 9
set rmargin 16
set key off
set multiplot layout 1,2 title "scopegate load harness ({title})"
set title "throughput, req/s (median; label: x nginx plain)"
set yrange [0:*]
plot "{data}" using 2:xtic(1) lc rgb "#3572a5", \\
     "" using 0:2:4 with labels offset 0,0.8 notitle
set title "p99 latency, ms (median; lower is better)"
plot "{data}" using 3:xtic(1) lc rgb "#c0504d", \\
     "" using 0:3:(sprintf("%.1f", $3)) with labels offset 0,0.8 notitle
unset multiplot
"""
        sp = os.path.join(tmp, "chart.gp")
        with open(sp, "w") as f:
            f.write(script)
        res = subprocess.run(["gnuplot", sp], capture_output=True, text=True)
        if res.returncode != 0:
            print(f"gnuplot failed: {res.stderr}", file=sys.stderr)


# ---------------------------------------------------------------- longpoll
def longpoll(args):
    meta = read_meta(args.meta)
    out = ["## Idle long-polls\n"]
    out.append(f"Measured {machine_line(meta)}.  ")
    out.append(f"{versions_line(meta)}.\n")
    warn = load_warning(meta)
    if warn:
        out.append(warn + "\n")
    req, held = int(meta.get("requested", 0)), int(meta.get("held_target", 0))
    out.append(
        f"{held:,} concurrent `GET /_matrix/client/v3/sync?timeout=30000` with a bearer token, each on its "
        "own connection, held open by an upstream stub (Python asyncio) that answers only when told; "
        "RSS read from `/proc` once every request is waiting upstream, then all are answered. "
        "scopegate with its default worker threads, static token; nginx (one worker, the process "
        "that holds the connections) for scale."
    )
    if held < req:
        out.append(
            f" **{held:,}, not {req:,}**: each long-poll takes two descriptors in the proxy "
            f"(client and upstream side) and this machine's hard open-file limit is "
            f"{meta.get('nofile_hard')} (raising it needs CAP_SYS_RESOURCE). The column *at {req:,}* "
            f"extrapolates from the per-connection figure."
        )
    out.append("\n")
    out.append("| proxy | held upstream | answered 200 | RSS before | RSS holding | Δ RSS | per connection | "
               f"at {req:,} (extrapolated) | descriptors | RSS after release |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in ("scopegate", "nginx"):
        v = meta.get(f"lp_{name}", "").split()
        if len(v) < 8:
            continue
        n, r0, r1, hwm, f0, f1, ok, r2 = (int(x) for x in v[:8])
        d = r1 - r0
        per = d / n if n else 0
        out.append(
            f"| {name} | {n:,} | {ok:,} | {r0 / 1024:.1f} MiB | {r1 / 1024:.1f} MiB | {d / 1024:.1f} MiB | "
            f"{per:.1f} KiB | {(r0 + per * req) / 1024:.0f} MiB | {f0:,} → {f1:,} | {r2 / 1024:.1f} MiB |"
        )
    out.append(
        "\n*RSS after release* is read once every long-poll has been answered and its connection closed: "
        "what the process keeps of the memory those connections used.\n"
    )
    out.append("Target: 10 000 idle long-polls in ≤ 100 MB RSS.\n")
    text = "\n".join(out)
    print(text)
    if args.doc:
        write_section(args.doc, "longpoll", text)


# ---------------------------------------------------------------- flood
def flood(args):
    meta = read_meta(args.meta)
    fl, alone, during = kv(meta.get("flood")), kv(meta.get("alone")), kv(meta.get("during"))
    out = ["## Token flood\n"]
    out.append(f"Measured {machine_line(meta)}.  ")
    out.append(f"{versions_line(meta)}.\n")
    warn = load_warning(meta)
    if warn:
        out.append(warn + "\n")
    if meta.get("introspection") == "on":
        how = ("introspection on" + (" (and JWT validation)" if meta.get("jwt") == "on" else "")
               + ": each new random opaque token costs one call to the introspection provider "
               "(a Python stub that counts them), and its refusal is cached `negative_ttl_s`")
    elif meta.get("jwt") == "on":
        how = "JWT validation on, no introspection: opaque tokens are refused without any provider call"
    else:
        how = ("static tokens only (no JWT or introspection in this build): every flood token is a "
               "SHA-256 lookup that misses; nothing is cached or asked")
    out.append(
        f"{int(meta.get('tokens', 0)):,} distinct random opaque tokens (never repeated) sent as fast as wrk "
        f"can on {meta.get('conns')} connections, the Matrix request mix, while a legitimate client "
        f"(16 connections, valid token) runs alongside. scopegate: {how}; "
        f"`[cache] capacity` {meta.get('capacity')} where the build has a cache; "
        f"`[auth.rate_limit]` {'left on' if meta.get('rate_limit') == 'on' else 'off where the build has it (a flood from one address would otherwise be answered 429)'}.\n"
    )
    ratio = during.get("rps", 0) / alone["rps"] if alone.get("rps") else None
    refused = float(meta.get("refused") or 0)
    rows = [
        ("flood tokens refused by scopegate", f"{fnum(refused)} in {meta.get('flood_secs')} s "
         f"({fnum(float(meta.get('flood_rate') or 0))} req/s)"),
        ("legitimate client alone", f"{fnum(alone.get('rps'))} req/s, p99 {ms(alone.get('p99_us'))} ms"),
        ("legitimate client during the flood",
         f"{fnum(during.get('rps'))} req/s ({'–' if ratio is None else f'{ratio:.2f}×'}), "
         f"p99 {ms(during.get('p99_us'))} ms, errors {fnum(during.get('err_status'))}"),
        ("scopegate RSS before → after", f"{int(meta.get('rss_before_kb', 0)) / 1024:.1f} MiB → "
         f"{int(meta.get('rss_after_kb', 0)) / 1024:.1f} MiB (peak {int(meta.get('hwm_kb', 0)) / 1024:.1f} MiB)"),
        ("token cache entries (most seen, at the end)",
         f"{meta.get('cache_entries_peak') or '–'}, {meta.get('cache_entries') or '–'} (capacity {meta.get('capacity')})"
         if meta.get("cache_entries") else "– (no cache metric in this build)"),
        ("token validations", meta.get("validations") or "– (no metric in this build)"),
        ("rate-limited requests", meta.get("rate_limited") or "– (no metric in this build)"),
        ("provider (introspection) calls", provider_text(meta.get("provider"))),
    ]
    out.append("| | |\n|---|---|")
    out.extend(f"| {a} | {b} |" for a, b in rows)
    out.append(
        "\nThe flood generator (two wrk threads), the legitimate client, the introspection stub and "
        "scopegate share the machine's CPUs, so the legitimate client's share during the flood is a "
        "floor, not what scopegate alone would leave it.\n"
    )
    text = "\n".join(out)
    print(text)
    if args.doc:
        write_section(args.doc, "flood", text)


def provider_text(raw):
    import json
    if not raw:
        return "– (introspection off or not in this build)"
    try:
        d = json.loads(raw)
        return f"{d['calls']:,} ({d['inactive']:,} answered inactive, {d['active']:,} active)"
    except (ValueError, KeyError, TypeError):
        return raw


# ---------------------------------------------------------------- document
def write_section(doc, name, text):
    content = open(doc).read() if os.path.exists(doc) else SKELETON
    begin, end = f"<!-- load:{name}:begin -->", f"<!-- load:{name}:end -->"
    if begin not in content or end not in content:
        content = content.rstrip("\n") + f"\n\n{begin}\n{end}\n"
    head, rest = content.split(begin, 1)
    _, tail = rest.split(end, 1)
    content = f"{head}{begin}\n{text.strip()}\n{end}{tail}"
    with open(doc, "w") as f:
        f.write(content)
    print(f"wrote the {name} section of {doc}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare")
    c.add_argument("results")
    c.add_argument("meta")
    c.add_argument("--doc")
    c.add_argument("--png")
    for n in ("longpoll", "flood"):
        p = sub.add_parser(n)
        p.add_argument("meta")
        p.add_argument("--doc")
    args = ap.parse_args()
    {"compare": compare, "longpoll": longpoll, "flood": flood}[args.cmd](args)


if __name__ == "__main__":
    main()
