#!/usr/bin/env python3
"""Knit's viz benchmark (run through bench/viz.sh, which builds the release binaries):

1. Metric series per proxy and scrape size, on `knit demo`'s proxies (real traffic, mTLS, routes,
   policy, retries): what a Prometheus scraping them stores, and what knit-control's built-in
   store keeps of it.
2. knit-control's built-in store with 5,000 workloads (fake Linkerd-shaped proxies,
   tests/dashboard/fake_proxies.py): memory once the retention is full, against the same index
   without the store; series kept and bytes per series; CPU per scrape round; /api/stat time for
   all 5,000 rows and for one page.
3. The dashboard's render times, from bench/dashboard-results.md when the dashboard test wrote it.

Writes the viz section of bench/RESULTS.md (between its markers, keeping the rest).
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
sys.path.insert(0, os.path.join(ROOT, "tests", "dashboard"))
import fake_proxies  # noqa: E402

BEGIN = "<!-- viz: written by bench/viz.sh -->"
END = "<!-- end of viz -->"


def get(url, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_secs(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def series_of(text):
    return [l for l in text.splitlines() if l and not l.startswith("#")]


def demo_series(secs):
    """Scrapes every demo proxy once traffic has run for `secs`."""
    demo = subprocess.Popen([os.path.join(BIN, "knit"), "demo", "--duration", f"{secs + 20}s", "--interval", "60"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        viz = None
        for line in demo.stdout:
            m = re.search(r"dashboard: http://([0-9.:]+)/", line)
            if m:
                viz = m.group(1)
                break
        assert viz, "the demo printed no dashboard address"
        time.sleep(secs)
        targets = json.loads(get(f"http://{viz}/api/targets"))
        kept = {t["target"]["pod"]: t["health"]["series"] for t in json.loads(get(f"http://{viz}/api/scrapes"))["targets"]}
        rows = []
        for t in targets:
            text = get(f"http://{t['targets'][0]}/metrics").decode()
            names = {re.split(r"[{ ]", l, 1)[0] for l in series_of(text)}
            golden = [l for l in series_of(text) if l.startswith(("response_", "request_total", "tcp_"))]
            rows.append((t["labels"]["pod"], len(series_of(text)), len(golden), len(names), len(text.encode()), kept.get(t["labels"]["pod"], 0)))
        return rows
    finally:
        demo.terminate()
        demo.wait(timeout=30)


def start_control(tmp, manifests, prometheus, interval, retention):
    viz = free_port()
    args = [
        os.path.join(BIN, "knit-control"),
        "--config-dir", manifests,
        "--identity-dir", os.path.join(tmp, "identity"),
        "--identity-addr", "127.0.0.1:0", "--destination-addr", "127.0.0.1:0", "--policy-addr", "127.0.0.1:0",
        "--admin-addr", "127.0.0.1:0", "--webhook-addr", "127.0.0.1:0", "--viz-addr", f"127.0.0.1:{viz}",
        "--viz-scrape-interval", interval, "--viz-retention", retention,
    ]
    if prometheus:
        # Nothing listens there: the store is never filled, the index is the same.
        args += ["--prometheus-url", "http://127.0.0.1:9"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            if len(json.loads(get(f"http://127.0.0.1:{viz}/api/targets"))) > 0:
                return proc, f"127.0.0.1:{viz}"
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("knit-control did not serve its viz API")


def timed(url, n=5):
    """The first answer's time (computed: nothing cached for this view yet, unless a scrape round
    ends during the run), the median of `n` (cached within the round), and the answer's size."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        body = get(url, timeout=120)
        times.append(time.perf_counter() - t)
    first = times[0]
    times.sort()
    return first * 1e3, times[len(times) // 2] * 1e3, len(body)


def store_at_scale(workloads, retention_secs):
    tmp = tempfile.mkdtemp(prefix="knit-viz-bench-")
    fake = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "dashboard", "fake_proxies.py"), "--workloads", str(workloads), "--namespaces", "50"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = int(fake.stdout.readline().split()[1])
        manifests = os.path.join(tmp, "manifests")
        os.makedirs(manifests)
        docs = []
        for w in fake_proxies.plan(workloads, 50):
            docs.append(
                "apiVersion: workload.linkerd.io/v1beta1\nkind: ExternalWorkload\n"
                f"metadata:\n  name: {w['pod']}\n  namespace: {w['namespace']}\n  labels:\n    app: {w['deployment']}\n    linkerd.io/proxy-deployment: {w['deployment']}\n"
                f"  annotations:\n    knit.dev/proxy-admin-port: \"{port}\"\n"
                f"spec:\n  meshTLS:\n    identity: {w['identity']}\n    serverName: {w['identity']}\n  workloadIPs:\n    - ip: {w['ip']}\n  ports:\n    - name: http\n      port: {fake_proxies.APP_PORT}\n")
        with open(os.path.join(manifests, "workloads.yaml"), "w") as f:
            f.write("---\n".join(docs))
        subprocess.run([os.path.join(BIN, "knit"), "identity", "init", "--dir", os.path.join(tmp, "identity")], check=True, stdout=subprocess.DEVNULL)
        interval, retention = "10s", f"{retention_secs}s"

        base, _ = start_control(tmp, manifests, True, interval, retention)
        time.sleep(15)
        base_rss = rss_kib(base.pid)
        base.terminate()
        base.wait()

        proc, viz = start_control(tmp, manifests, False, interval, retention)
        t0, cpu0 = time.time(), cpu_secs(proc.pid)
        time.sleep(retention_secs + 25)
        cpu = cpu_secs(proc.pid) - cpu0
        rounds = (time.time() - t0) / 10
        rss = rss_kib(proc.pid)
        scrapes = json.loads(get(f"http://{viz}/api/scrapes"))
        up = sum(1 for t in scrapes["targets"] if t["health"]["up"])
        # Computed once per view and scrape round, then served from the cache: both are reported.
        all_ms, _, all_bytes = timed(f"http://{viz}/api/stat?kind=deployment&window=60s")
        _, page_ms, _ = timed(f"http://{viz}/api/stat?kind=deployment&window=60s&limit=50&sort=rps")
        ns_ms, _, _ = timed(f"http://{viz}/api/stat?kind=namespace&window=60s")
        edges_ms, edges_cached_ms, _ = timed(f"http://{viz}/api/edges?window=60s")
        proc.terminate()
        proc.wait()
        return {
            "workloads": workloads, "up": up, "series": scrapes["series"], "retention_s": retention_secs,
            "base_rss_mib": base_rss / 1024, "rss_mib": rss / 1024,
            "bytes_per_series": (rss - base_rss) * 1024 / max(scrapes["series"], 1),
            "cpu_s_per_round": cpu / max(rounds, 1),
            "stat_all_ms": all_ms, "stat_all_kib": all_bytes / 1024, "stat_page_ms": page_ms, "stat_ns_ms": ns_ms, "edges_ms": edges_ms, "edges_cached_ms": edges_cached_ms,
        }
    finally:
        fake.send_signal(signal.SIGTERM)
        fake.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    demo = demo_series(15 if args.quick else 30)
    scale = store_at_scale(1000 if args.quick else 5000, 30 if args.quick else 120)

    lines = [BEGIN, "## Viz: metric series, the built-in store at scale, the dashboard", ""]
    lines.append(f"- date: {time.strftime('%Y-%m-%d')}; machine: {os.cpu_count()} CPUs, {platform.machine()}, Linux {platform.release()}")
    lines.append(f"- command: `bench/viz.sh{' --quick' if args.quick else ''}` (release build)")
    lines += ["", "### Series per proxy (knit demo, traffic with mTLS, routes, retries and policy)", ""]
    lines.append("| proxy | series exported | of which golden (`response_*`, `request_total`, `tcp_*`) | metric families | scrape size | series the built-in store keeps |")
    lines.append("|---|---:|---:|---:|---:|---:|")
    for pod, total, golden, names, size, kept in demo:
        lines.append(f"| {pod} | {total} | {golden} | {names} | {size / 1024:.1f} KiB | {kept} |")
    avg = sum(r[1] for r in demo) / len(demo)
    lines.append("")
    lines.append(f"A Knit proxy exports about **{avg:.0f} series** here; Linkerd's bundled Prometheus was reported at ~1,700 series per proxy. "
                 "The built-in store keeps only the families viz reads, with the address labels dropped.")
    s = scale
    lines += ["", f"### knit-control's built-in store with {s['workloads']:,} workloads", ""]
    lines.append(f"Fake Linkerd-shaped proxies (tests/dashboard/fake_proxies.py) on {s['workloads']:,} loopback addresses, one namespace in five; scraped every 10 s, "
                 f"retention {s['retention_s']} s, measured once the retention is full. The baseline is the same index with viz reading an (absent) Prometheus instead of scraping.")
    lines.append("")
    lines.append("Query times: the first request of a view in a scrape round computes it; later ones in the round are served from the cache (the page of 50 and the second edges time).")
    lines.append("")
    lines.append("| targets up | series kept | RSS, index only | RSS with the store | bytes per series (with its samples) | CPU per scrape round | /api/stat all deployments, computed | one page of 50, cached | by namespace, computed | /api/edges computed / cached |")
    lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines.append(f"| {s['up']:,} | {s['series']:,} | {s['base_rss_mib']:.1f} MiB | {s['rss_mib']:.1f} MiB | {s['bytes_per_series']:.0f} | {s['cpu_s_per_round']:.2f} s | "
                 f"{s['stat_all_ms']:.0f} ms ({s['stat_all_kib']:.0f} KiB) | {s['stat_page_ms']:.0f} ms | {s['stat_ns_ms']:.0f} ms | {s['edges_ms']:.0f} / {s['edges_cached_ms']:.0f} ms |")
    lines.append("")
    verdict = "met" if s["bytes_per_series"] <= 1000 else "**missed**"
    lines.append(f"Target: at most 1 KB per series with its samples at 5,000 workloads: {verdict} ({s['bytes_per_series']:.0f} bytes; "
                 "what it was and how it came down: [profiles/knit-control-viz.md](profiles/knit-control-viz.md)).")
    dash = os.path.join(ROOT, "bench", "dashboard-results.md")
    if os.path.exists(dash):
        lines += ["", "### Dashboard (headless Chromium)", "", f"From `tests/dashboard/test_dashboard.py`, in [dashboard-results.md](dashboard-results.md)."]
    lines.append(END)

    path = os.path.join(ROOT, "bench", "RESULTS.md")
    text = open(path).read()
    if BEGIN in text:
        text = text[:text.index(BEGIN)] + text[text.index(END) + len(END):].lstrip("\n")
    text = text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n"
    open(path, "w").write(text)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
