#!/usr/bin/env python3
"""End-to-end tests of knit-control's web dashboard, in headless Chromium driven by Playwright.

    python3 tests/dashboard/test_dashboard.py --bin target/debug

a. A live local mesh (`knit demo`): the pages load without console errors, the namespace page
   lists the demo's deployments with the numbers and MESHED counts `knit viz stat` reports, views
   refresh in place and the header's "data as of" time advances (and turns stale with live
   updates off), the deployment page shows callers, destinations, exactly its pods (as
   /api/stat?kind=pod&deployment= lists them) and its routes and authorization decisions (as
   `knit viz routes` and `knit viz authz` report them), the certificates page lists every pod with its
   time left and the issuer and trust anchors (as /api/identity), and the tap page streams (or says tap is missing when /api/tap is 404).
b. 5,000 workloads (fake proxies, tests/dashboard/fake_proxies.py, scraped by a real
   knit-control): first render of the biggest namespace and of all deployments, a sort, a
   filter, paging, the overview with its server-paged edges table, the certificates page (its
   "expiring within 6h only" filter, and an anchor and issuer highlighted 30 and 7 days ahead) and a deployment with a pod that has no proxy, each
   timed and checked against the API; the DOM never holds more than a few hundred table rows.
   Timings are printed and written to bench/dashboard-results.md; only correctness is asserted.
c. Linked clusters (one fake proxy whose traffic reaches another cluster, a real knit-control):
   the topology names the remote nodes (`books @east`, `svc/books @east` through the gateway)
   and links them nowhere, and a deployment's destinations have a Cluster column.

Needs Debian's `chromium` and PyPI's `playwright` (no `playwright install`: the system browser is
used). Exits non-zero when a check fails; every process it starts is stopped and every
temporary directory removed, whatever happens.
"""

import argparse
import ctypes
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no __pycache__ beside the tests
import fake_proxies  # noqa: E402

CHROMIUM = os.environ.get("KNIT_TEST_CHROMIUM", "/usr/bin/chromium")
MAX_DOM_ROWS = 400  # "a few hundred": the largest page (200 rows) and its header


class Failure(Exception):
    pass


def log(msg=""):
    print(msg, flush=True)


def ok(what):
    log(f"  ok    {what}")


def check(cond, what, detail=""):
    if not cond:
        raise Failure(f"{what}{': ' + str(detail) if detail else ''}")
    ok(what)


def wait_until(fn, timeout, what, interval=0.5):
    """Calls fn until it returns something truthy; raises Failure after timeout seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
        except Exception as e:  # not up yet
            last = e
        time.sleep(interval)
    raise Failure(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last})" if last else ""))


# ---------------------------------------------------------------------------- processes


_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent(sig):
    def pre():
        os.setsid()
        _libc.prctl(1, int(sig))  # PR_SET_PDEATHSIG: never outlive the test
    return pre


class Procs:
    """Every process the test starts, stopped in reverse order at the end."""

    def __init__(self):
        self.all = []

    def start(self, name, argv, stop_signal=signal.SIGTERM, stop_timeout=20, **kw):
        log(f"  start {name}: {' '.join(argv)}")
        p = subprocess.Popen(argv, preexec_fn=_die_with_parent(stop_signal), **kw)
        p.knit_name, p.knit_stop, p.knit_timeout = name, stop_signal, stop_timeout
        self.all.append(p)
        return p

    def stop(self, p):
        timeout = p.knit_timeout
        if p.poll() is None:
            try:
                os.killpg(p.pid, p.knit_stop)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"  {p.knit_name} did not stop within {timeout}s: killing it")
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(10)
        # Anything it started in its own process group goes too.
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return p.returncode

    def stop_all(self):
        for p in reversed(self.all):
            self.stop(p)
        left = [p.knit_name for p in self.all if p.poll() is None]
        if left:
            raise Failure(f"processes still running: {left}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_fd_limit():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def get_json(url, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as rsp:
        return json.loads(rsp.read())


def timed_get(url, timeout=60):
    t0 = time.perf_counter()
    data = get_json(url, timeout)
    return data, (time.perf_counter() - t0) * 1000


# ---------------------------------------------------------------------------- browser helpers

# Counts table rows on every DOM change, so a view that rendered thousands of rows even for a
# moment is caught.
ROW_WATCH = """
window.__maxRows = 0;
new MutationObserver(() => {
  const n = document.getElementsByTagName('tr').length;
  if (n > window.__maxRows) window.__maxRows = n;
}).observe(document, { childList: true, subtree: true });
"""

READ_ROWS = """(sel) => [...document.querySelectorAll(sel + ' [data-testid="stat-row"]')].map(tr => ({
  name: tr.dataset.name, namespace: tr.dataset.namespace, requests: Number(tr.dataset.requests),
  cells: Object.fromEntries([...tr.querySelectorAll('td[data-col]')].map(td => [td.dataset.col, td.textContent])),
  values: Object.fromEntries([...tr.querySelectorAll('td[data-col]')].map(td => [td.dataset.col, td.dataset.value])),
  classes: Object.fromEntries([...tr.querySelectorAll('td[data-col]')].map(td => [td.dataset.col, td.className])),
}))"""

READ_AS_OF = """() => { const a = document.querySelector('[data-testid="as-of"]');
  return { hidden: a.hidden, text: a.textContent, secs: a.dataset.asOf ? Number(a.dataset.asOf) : null, stale: a.classList.contains('stale') }; }"""


class Page:
    """A Playwright page that records console errors."""

    def __init__(self, browser, base):
        self.base = base
        self.ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.ctx.add_init_script(ROW_WATCH)
        self.page = self.ctx.new_page()
        self.page.set_default_timeout(30000)
        self.errors = []
        self.max_rows = 0
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text} ({m.location.get('url', '')})"))
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))

    def open(self, route):
        """A fresh page load of the route (not a hash change); returns when it started."""
        self.most_rows()
        self.page.goto("about:blank")
        t0 = time.perf_counter()
        self.page.goto(self.base + "/#" + route)
        return t0

    def most_rows(self):
        """The most table rows the DOM held at once, over every page load so far."""
        try:
            self.max_rows = max(self.max_rows, self.page.evaluate("window.__maxRows || 0"))
        except Exception:
            pass
        return self.max_rows

    def go(self, route):
        """A hash change, as clicking a link does."""
        self.page.evaluate("(r) => { location.hash = r; }", route)

    def wait(self, js, arg=None, timeout=30, what=None):
        try:
            return self.page.wait_for_function(js, arg=arg, timeout=timeout * 1000, polling=50)
        except Exception as e:
            raise Failure(f"timed out after {timeout}s waiting for {what or js}: {str(e).splitlines()[0]}")

    def rows(self, table):
        return self.page.evaluate(READ_ROWS, f'table[data-testid="{table}"]')

    def wait_rows(self, table, names, timeout=30):
        js = """([sel, names]) => { const have = new Set([...document.querySelectorAll(sel + ' [data-testid="stat-row"]')].map(tr => tr.dataset.name));
                 return names.every(n => have.has(n)); }"""
        self.wait(js, [f'table[data-testid="{table}"]', names], timeout, f"rows {names} in the {table} table")

    def as_of(self):
        """The header's data time: hidden, text, secs (data-as-of) and stale."""
        return self.page.evaluate(READ_AS_OF)

    def console_errors(self, ignore=()):
        return [e for e in self.errors if not any(re.search(p, e) for p in ignore)]

    def close(self):
        self.ctx.close()


# ---------------------------------------------------------------------------- formats

def parse_pct(text):
    return None if text == "-" else float(text.rstrip("%"))


def parse_num(text):
    return None if text == "-" else float(text)


def clock(secs):
    """HH:MM:SS of Unix seconds in local time, as the dashboard prints it."""
    return time.strftime("%H:%M:%S", time.localtime(secs))


def meshed_text(pods):
    """The Meshed column's text for a row's `pods`."""
    return "-" if pods is None else f"{pods['meshed']}/{pods['total']}"


def agree(page_value, api_value, what, timeout=30):
    """Waits until what the page shows equals what the API answers now (both read again each
    time: counts move with the window); returns the value, raises Failure with both if never."""
    last = {}

    def same():
        last["page"], last["api"] = page_value(), api_value()
        return last["page"] == last["api"]
    try:
        wait_until(same, timeout, what, interval=1)
    except Failure:
        raise Failure(f"{what}: the page says {last.get('page')!r}, the API {last.get('api')!r}")
    return last["api"]


def check_formats(rows, where):
    bad = []
    for r in rows:
        c = r["cells"]
        if not re.fullmatch(r"-|\d+\.\d{2}%", c["success"]):
            bad.append((r["name"], "success", c["success"]))
        if not re.fullmatch(r"-|\d+\.\d", c["rps"]):
            bad.append((r["name"], "rps", c["rps"]))
        for col in ("p50", "p95", "p99"):
            text, raw = c[col], r["values"][col]
            if text == "-":
                if raw not in ("", None):
                    bad.append((r["name"], col, text))
                continue
            m = re.fullmatch(r"(\d+)(\.\d)?ms", text)
            if not m or (float(raw) < 10) != bool(m.group(2)):
                bad.append((r["name"], col, text, raw))
    check(not bad, f"{where}: numbers formatted as the CLI formats them (99.50%, 12.3, 12ms / 9.5ms, -)", bad)


# ---------------------------------------------------------------------------- a. the demo

DEMO_DEPLOYMENTS = ["authors", "books-v1", "books-v2", "web"]
DEMO_PODS = ["authors-1", "authors-2", "books-v1", "books-v2", "web"]


def tap_available(base):
    """None when /api/tap answers 404 for the path itself; else the status."""
    url = base + "/api/tap?" + urllib.parse.urlencode({"namespace": "demo", "resource": "deploy/web"})
    try:
        with urllib.request.urlopen(url, timeout=10) as rsp:
            return rsp.status
    except urllib.error.HTTPError as e:
        body = e.read().decode(errors="replace")
        if e.code == 404 and "no such endpoint" in body:
            return None
        return e.code


def check_pods(pg, base, name, namespace="demo"):
    """The open deployment page's pods table lists exactly the pods that /api/stat gives for the
    deployment (asked here), with their Meshed column and count; returns their names."""
    api = get_json(base + "/api/stat?" + urllib.parse.urlencode({"kind": "pod", "namespace": namespace, "deployment": name}))
    want = sorted(r["name"] for r in api["rows"])
    mine = [n for n in want if n in DEMO_PODS and (n == name or n.startswith(name + "-"))]
    if not want or mine != want or api["total"] != len(want):
        raise Failure(f"/api/stat?kind=pod&deployment={name}: {want} (total {api['total']}) are not {name}'s pods")
    pg.wait("""(want) => JSON.stringify([...document.querySelectorAll('[data-testid="pod-row"]')].map(r => r.dataset.name).sort()) === JSON.stringify(want)""",
            want, what=f"{name}'s pods {want} in the pods table")
    shown = pg.page.evaluate("""() => ({ total: document.querySelector('[data-testid="pods-count"]').dataset.total,
             meshed: Object.fromEntries([...document.querySelectorAll('[data-testid="pod-row"]')].map(r => [r.dataset.name, r.querySelector('[data-col="meshed"]').textContent])) })""")
    meshed = {r["name"]: meshed_text(r["pods"]) for r in api["rows"]}
    check(shown["total"] == str(api["total"]) and shown["meshed"] == meshed,
          f"deployment {name}: its pods table is /api/stat?kind=pod&deployment={name}: {', '.join(f'{k} {v}' for k, v in sorted(meshed.items()))}", shown)
    return want


# The deployment page's routes and authorization tables: the data-* attributes naming a row,
# and per shown column the CLI's JSON field and the factor from it to the shown number.
POLICY_TABLES = {
    "routes": (["parent", "route"], {"success": ("success_rate", 100), "rps": ("rps", 1)}),
    "authz": (["server", "authorization", "route"], {"allowed": ("allowed_rps", 1), "denied": ("denied_rps", 1)}),
}

READ_POLICY_ROWS = """([table, keys]) => [...document.querySelectorAll(`table[data-testid="${table}"] tbody tr[data-key]`)].map(tr => ({
  key: keys.map(k => tr.dataset[k]),
  cells: Object.fromEntries([...tr.querySelectorAll('td[data-col]')].map(td => [td.dataset.col, td.textContent])) }))"""


def check_policy_table(pg, knit, viz, view, name, namespace="demo"):
    """The open deployment page's `view` table (routes or authz) has exactly the rows of
    `knit viz VIEW deploy/NAME -o json`, with the same numbers (within 2 points or 20%, as the
    two read the window at different times); returns the rows' keys."""
    keys, cols = POLICY_TABLES[view]
    seen = {}

    def same():
        out = subprocess.run([knit, "viz", view, f"deploy/{name}", "-n", namespace, "-o", "json", "--viz-addr", viz],
                             capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise Failure(f"knit viz {view} deploy/{name} failed: {out.stderr}")
        seen["cli"] = {tuple(r[k] for k in keys): r for r in json.loads(out.stdout)}
        seen["page"] = {tuple(r["key"]): r["cells"] for r in pg.page.evaluate(READ_POLICY_ROWS, [view, keys])}
        return seen["cli"] and seen["cli"].keys() == seen["page"].keys()
    try:
        wait_until(same, 30, f"the {view} table", interval=1)
    except Failure:
        raise Failure(f"deployment {name}: the {view} table's rows {sorted(seen.get('page', {}))} are not the CLI's {sorted(seen.get('cli', {}))}")
    bad = []
    for key, c in seen["cli"].items():
        for col, (field, factor) in cols.items():
            text, want = seen["page"][key][col], c[field]
            got = parse_pct(text) if text.endswith("%") else parse_num(text)
            if want is None or (field == "rps" and c["requests"] == 0):
                if got is not None:
                    bad.append((key, col, text, want))
            elif got is None or abs(got - factor * want) > (2 if factor == 100 else 0.2 * want + 0.05):
                bad.append((key, col, text, want))
    summary = "; ".join(" ".join(k) + ": " + ", ".join(f"{col} {seen['page'][k][col]}" for col in cols) for k in sorted(seen["cli"]))
    check(not bad, f"deployment {name}: the {view} table matches `knit viz {view} deploy/{name} -o json` ({summary})", bad)
    return sorted(seen["cli"])


def check_trust(pg, base, levels, where):
    """The certificates page's issuer and trust-anchor table: one row for the issuer and one per
    anchor, as /api/identity lists them, each highlighted at the level `levels` says
    ({"issuer": ..., "anchor": ...}: ok, warning within 30 days, critical within 7)."""
    api = get_json(base + "/api/identity")
    want = [("issuer", api["issuer"]["subject"], str(api["issuer"]["not_after"]))]
    want += [("anchor", a["subject"], str(a["not_after"])) for a in api["anchors"]]
    pg.wait("""(n) => { const w = document.querySelector('[data-testid="trust-wrap"]');
              return w && w.dataset.state === 'ready' && document.querySelectorAll('[data-testid="trust-row"]').length === n; }""",
            len(want), what="the issuer and trust-anchor table")
    rows = pg.page.evaluate("""() => [...document.querySelectorAll('[data-testid="trust-row"]')].map(r => ({kind: r.dataset.kind,
              subject: r.dataset.subject, notAfter: r.dataset.notAfter, level: r.dataset.level, cls: r.className,
              left: r.querySelector('[data-col="time-left"]').textContent, current: r.dataset.current}))""")
    check([(r["kind"], r["subject"], r["notAfter"]) for r in rows] == want, f"{where}: the issuer and every trust anchor, as /api/identity lists them", rows)
    got = {r["kind"]: r["level"] for r in rows}
    check(got == levels, f"{where}: expiry levels {levels}", rows)
    for r in rows:
        cls = {"ok": "", "warning": "expiring", "critical": "expired"}[r["level"]]
        badge = {"ok": None, "warning": "expires within 30 days", "critical": "expires within 7 days"}[r["level"]]
        check((cls in r["cls"].split()) if cls else not ({"expiring", "expired"} & set(r["cls"].split())), f"{where}: the {r['kind']} row highlighted as {r['level']}", r)
        check(badge is None or r["left"].endswith(badge), f"{where}: the {r['kind']} row's badge says {badge}", r)
    check(sum(r["current"] == "true" for r in rows if r["kind"] == "anchor") == 1, f"{where}: one anchor marked as the issuer's", rows)
    step = pg.page.get_attribute('[data-testid="rotation-step"]', "data-step")
    check(step == api["step"], f"{where}: the rotation step is /api/identity's ({api['step']})", step)
    return api


def test_demo(bin_dir, browser, procs):
    log("\n== a. a live local mesh: knit demo")
    knit = os.path.join(bin_dir, "knit")
    demo = procs.start("knit demo", [knit, "demo", "--duration", "90s", "--interval", "5"], stop_signal=signal.SIGINT,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    started = time.monotonic()
    lines, found = [], threading.Event()
    addr = {}

    def read():
        for line in demo.stdout:
            lines.append(line)
            m = re.search(r"dashboard: http://([^/\s]+)/", line)
            if m and not found.is_set():
                addr["viz"] = m.group(1)
                found.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not found.wait(60):
        raise Failure("knit demo printed no `dashboard: http://...` line within 60s:\n" + "".join(lines[-20:]))
    viz = addr["viz"]
    base = f"http://{viz}"
    ok(f"knit demo serves the dashboard at {base}/")

    def traffic():
        rows = get_json(base + "/api/stat?kind=deployment&namespace=demo")["rows"]
        return all(any(r["name"] == d and r["requests"] > 0 for r in rows) for d in ("web", "books-v1", "authors"))
    wait_until(traffic, 60, "traffic in /api/stat?kind=deployment&namespace=demo")
    traffic_since = time.monotonic()
    ok(f"/api/stat shows traffic ({traffic_since - started:.0f}s after start)")

    pg = Page(browser, base)
    try:
        p = pg.page
        # Overview: namespaces and the topology graph with mTLS per edge.
        pg.open("/")
        pg.wait_rows("namespaces", ["demo"])
        ok("overview: the namespaces table lists demo")
        pg.wait("""() => ['books-v1', 'books-v2', 'authors'].every(d =>
                    document.querySelector(`[data-testid="topology-edge"][data-src="web"][data-dst="${d}"]`))""",
                timeout=30, what="topology edges web -> books-v1, books-v2, authors")
        edges = p.evaluate("""() => [...document.querySelectorAll('[data-testid="topology-edge"]')].map(g => [g.dataset.src, g.dataset.dst, g.dataset.secured])""")
        check(all(s == "true" for _, _, s in edges), "overview: the topology is an SVG graph and every demo edge is mutual TLS", edges)
        nodes = p.evaluate("""() => [...document.querySelectorAll('[data-testid="topology-node"]')].map(n => n.dataset.name).sort()""")
        check(nodes == sorted(DEMO_DEPLOYMENTS), "overview: the graph's nodes are the demo's deployments", nodes)

        # Namespace page.
        pg.open("/namespaces/demo")
        pg.wait_rows("deployments", DEMO_DEPLOYMENTS)
        rows = pg.rows("deployments")
        check(sorted(r["name"] for r in rows) == DEMO_DEPLOYMENTS, "namespace page: lists web, books-v1, books-v2 and authors", [r["name"] for r in rows])
        count = p.get_attribute('[data-testid="deployments-wrap"]', "data-total")
        check(count == "4", "namespace page: says 4 of 4", count)
        check_formats(rows, "namespace page")

        # Live updates: the stamp and the numbers change, with no reload, and the filter stays.
        p.evaluate("window.__sameDocument = 'yes'")
        p.fill('[data-testid="filter"]', "books")
        pg.wait("""() => { const w = document.querySelector('[data-testid="deployments-wrap"]');
                 return w.dataset.filter === 'books' && w.dataset.state === 'ready' && w.dataset.total === '2'; }""", what="the filter books applied")
        ok("namespace page: the filter (debounced) asks the server and shows 2 of 2")

        def snapshot():
            return p.evaluate("""() => [document.getElementById('last-updated').dataset.updatedAt,
                     JSON.stringify([...document.querySelectorAll('[data-testid="stat-row"]')].map(tr => [tr.dataset.requests, tr.textContent])),
                     document.querySelector('[data-testid="as-of"]').dataset.asOf]""")
        stamp0, cells0, as_of0 = snapshot()
        stamps, changed, as_ofs = {stamp0}, False, [as_of0]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (len(stamps) >= 3 and changed and len(set(as_ofs)) >= 3):
            time.sleep(0.5)
            stamp, cells, as_of = snapshot()
            stamps.add(stamp)
            changed = changed or cells != cells0
            if as_of != as_ofs[-1]:
                as_ofs.append(as_of)
        check(len(stamps) >= 3, "live updates: the 'last updated' stamp moves every few seconds", sorted(stamps))
        secs = [float(a) for a in as_ofs if a]
        check(len(secs) >= 3 and secs == sorted(secs), "live updates: the header's 'data as of' time advances with each refresh",
              [clock(x) for x in secs])
        shown = pg.as_of()
        api_as_of = get_json(base + "/api/stat?kind=deployment&namespace=demo&limit=0")["as_of"]
        # The page's data is at most a refresh (5s) and a scrape round (2s) older than the API's now.
        check(not shown["hidden"] and shown["text"] == f"data as of {clock(shown['secs'])}" and 0 <= api_as_of - shown["secs"] <= 10 and not shown["stale"],
              f"header: '{shown['text']}' (the API's as_of is {clock(api_as_of)}), not marked stale", (shown, api_as_of))
        check(changed, "live updates: the rows' numbers change in place")
        check(p.evaluate("window.__sameDocument") == "yes", "live updates: without reloading the page")
        names = sorted(r["name"] for r in pg.rows("deployments"))
        check(p.input_value('[data-testid="filter"]') == "books" and names == ["books-v1", "books-v2"],
              "live updates: the filter is kept across refreshes", names)
        check("filter=books" in p.evaluate("location.hash"), "namespace page: the filter is kept in the address")

        # Deployment pages: metrics, pods, callers, destinations, routes and authorizations.
        pg.go("/namespaces/demo/deployments/web")
        pg.wait_rows("destinations", ["books-v1", "books-v2", "authors"])
        ok("deployment web: outbound destinations books-v1, books-v2 and authors")
        pg.wait("""() => !['…', '-'].includes(document.querySelector('[data-testid="metric-rps"]').textContent)""", what="web's rps card")
        ok(f"deployment web: golden metrics (rps {p.inner_text('[data-testid=metric-rps]')}, success {p.inner_text('[data-testid=metric-success]')})")
        check_pods(pg, base, "web")
        routes = check_policy_table(pg, knit, viz, "routes", "web")
        check({p.split(":")[0] for p, _ in routes} == {"demo/books", "demo/authors"}, "deployment web: routes to books and authors", routes)
        pg.go("/namespaces/demo/deployments/books-v1")
        pg.wait_rows("callers", ["web"])
        ok("deployment books-v1: inbound caller web")
        check_pods(pg, base, "books-v1")
        authz = check_policy_table(pg, knit, viz, "authz", "books-v1")
        check(any(a.endswith("/books-from-web") for _, a, _ in authz), "deployment books-v1: web's requests allowed by books-from-web", authz)
        pg.go("/namespaces/demo/deployments/authors")
        pods = check_pods(pg, base, "authors")
        check(pods == ["authors-1", "authors-2"], "deployment authors: exactly its two pods", pods)

        # Certificates.
        pg.go("/certificates")
        pg.wait("""(n) => document.querySelectorAll('[data-testid="cert-row"]').length === n""", len(DEMO_PODS), what="5 certificate rows")
        certs = p.evaluate("""() => [...document.querySelectorAll('[data-testid="cert-row"]')].map(r => ({pod: r.dataset.pod,
                 left: r.querySelector('[data-col="time-left"]').textContent, secs: Number(r.dataset.left), expiring: r.dataset.expiring,
                 identity: r.querySelector('[data-col="identity"]').textContent}))""")
        api_certs = get_json(base + "/api/certificates")
        api_pods = sorted(c["pod"] for c in api_certs["certificates"] if c["namespace"] == "demo")
        check(sorted(c["pod"] for c in certs) == api_pods == DEMO_PODS, "certificates: every demo pod, as /api/certificates lists them",
              ([c["pod"] for c in certs], api_pods))
        summary = p.evaluate("""() => { const d = document.querySelector('[data-testid="cert-summary"]').dataset;
                 return { proxies: d.proxies, expiring: d.expiring, withoutExpiry: d.withoutExpiry }; }""")
        soon = get_json(base + "/api/certificates?expiring_within=6h&limit=0")["total"]
        check(summary == {"proxies": str(api_certs["proxies"]), "expiring": str(soon), "withoutExpiry": str(api_certs["without_expiry"])},
              f"certificates: the summary counts as /api/certificates ({api_certs['proxies']} proxies, {soon} expiring within 6h, "
              f"{api_certs['without_expiry']} without expiry)", summary)
        check(all(re.fullmatch(r"\d+h \d+m|\d+d \d+h", c["left"]) and 6 * 3600 < c["secs"] <= 86400 + 120 for c in certs),
              "certificates: time left shown (a 24h certificate: about 23h 59m)", [(c["pod"], c["left"]) for c in certs])
        check(all(c["expiring"] == "false" for c in certs), "certificates: none highlighted as expiring (< 6h)")
        check(all(c["identity"].endswith(".demo.serviceaccount.identity.knit.cluster.local") for c in certs), "certificates: each pod's identity")
        trust = check_trust(pg, base, {"issuer": "ok", "anchor": "ok"}, "certificates")
        check(trust["leaves"]["total"] >= len(DEMO_PODS) and trust["leaves"]["behind"] == 0,
              f"certificates: /api/identity counts the demo's leaves ({trust['leaves']['total']}), none under an old anchor", trust["leaves"])

        # Tap.
        tap = tap_available(base)
        if tap is None:
            pg.go("/tap?namespace=demo&resource=deploy%2Fweb")
            pg.wait("""() => document.querySelector('[data-testid="tap-status"]').dataset.state === 'unavailable'""", what="the tap page's 'not available' message")
            log("  NOTE  /api/tap answers 404 (no tap in this knit-control): the tap page says so; the tap rows check is skipped")
        else:
            pg.go("/tap?namespace=demo&resource=deploy%2Fweb")
            pg.wait("""() => document.querySelectorAll('[data-testid="tap-row"]').length > 0""", timeout=30, what="tap rows")
            state = p.get_attribute('[data-testid="tap-status"]', "data-state")
            rows = p.evaluate("""() => [...document.querySelectorAll('[data-testid="tap-row"]')].map(r => r.dataset.deployment)""")
            check(state == "streaming" and set(rows) == {"web"}, "tap page: streams web's requests, newest on top", (state, set(rows)))
            p.click('[data-testid="tap-stop"]')
            pg.wait("""() => document.querySelector('[data-testid="tap-status"]').dataset.state === 'stopped'""", what="tap stopped")
            n = p.evaluate("""() => document.querySelectorAll('[data-testid="tap-row"]').length""")
            check(0 < n <= 500, f"tap page: stops on Stop; {n} rows kept (at most 500)")
            pg.go("/namespaces/demo/deployments/books-v1")
            p.click('[data-testid="tap-start"]')
            pg.wait("""() => document.querySelectorAll('[data-testid="tap-row"]').length > 0""", timeout=30, what="tap rows on the deployment page")
            rows = p.evaluate("""() => [...document.querySelectorAll('[data-testid="tap-row"]')].map(r => r.dataset.deployment)""")
            check(set(rows) == {"books-v1"}, "deployment books-v1: its live tap shows only books-v1's requests", set(rows))

        # While the 30s window fills: with live updates off, the header marks the page and its data
        # stale once they are older than three refreshes (15s).
        pg.open("/namespaces/demo")
        pg.wait_rows("deployments", DEMO_DEPLOYMENTS)
        pg.wait("""() => document.querySelector('[data-testid="as-of"]').dataset.asOf""", what="the header's data time")
        p.click('[data-testid="live"]')
        time.sleep(1)  # a refresh under way when live updates went off still lands
        frozen = pg.as_of()
        check(not frozen["stale"], f"header: '{frozen['text']}' not stale right after a refresh")
        wait = max(traffic_since + 33 - time.monotonic(), frozen["secs"] + 20 - time.time())
        log(f"  ...   waiting {wait:.0f}s for a full 30s window of traffic (live updates off meanwhile)")
        time.sleep(max(0, wait))
        stale = pg.as_of()
        api_as_of = get_json(base + "/api/stat?kind=deployment&namespace=demo&limit=0")["as_of"]
        updated_stale = p.evaluate("document.getElementById('last-updated').classList.contains('stale')")
        check(stale["stale"] and updated_stale and stale["secs"] == frozen["secs"] and api_as_of - stale["secs"] > 15,
              f"header: with live updates off, '{stale['text']}' and 'Updated' are marked stale ({api_as_of - stale['secs']:.0f}s behind the API)",
              (stale, updated_stale, api_as_of))
        pg.open("/namespaces/demo")
        pg.wait_rows("deployments", DEMO_DEPLOYMENTS)
        dash = {r["name"]: r for r in pg.rows("deployments")}
        cli_out = subprocess.run([knit, "viz", "stat", "deploy", "-n", "demo", "-o", "json", "--viz-addr", viz],
                                 capture_output=True, text=True, timeout=30)
        if cli_out.returncode != 0:
            raise Failure(f"knit viz stat failed: {cli_out.stderr}")
        cli = {r["name"]: r for r in json.loads(cli_out.stdout)}
        bad = []
        for name in DEMO_DEPLOYMENTS:
            d, c = dash[name]["cells"], cli.get(name)
            if c is None:
                bad.append((name, "missing from the CLI"))
                continue
            sr = parse_pct(d["success"])
            if (c["success_rate"] is None) != (sr is None) or (sr is not None and abs(sr - 100 * c["success_rate"]) > 2):
                bad.append((name, "success", d["success"], c["success_rate"]))
            rps = parse_num(d["rps"])
            if c["requests"] == 0:
                if rps is not None:
                    bad.append((name, "rps", d["rps"], c["rps"]))
            elif rps is None or abs(rps - c["rps"]) > 0.2 * c["rps"] + 0.05:
                bad.append((name, "rps", d["rps"], c["rps"]))
        meshed = {n: (dash[n]["cells"]["meshed"], "warn" in dash[n]["classes"]["meshed"]) for n in DEMO_DEPLOYMENTS}
        want = {n: (meshed_text(cli[n].get("pods")), False) for n in DEMO_DEPLOYMENTS if n in cli}
        full = all(c.get("pods") and c["pods"]["total"] > 0 and c["pods"]["meshed"] == c["pods"]["total"] for c in cli.values())
        check(meshed == want and full, "namespace page: the Meshed column is `knit viz stat`'s pods, every demo deployment fully meshed: " +
              ", ".join(f"{n} {meshed[n][0]}" for n in DEMO_DEPLOYMENTS), (meshed, want))
        summary = ", ".join(f"{n} {dash[n]['cells']['success']}/{dash[n]['cells']['rps']} vs {100 * (cli[n]['success_rate'] or 0):.2f}%/{cli[n]['rps']:.1f}" for n in DEMO_DEPLOYMENTS if n in cli)
        check(not bad, f"namespace page matches `knit viz stat deploy -n demo -o json` (success within 2 points, rps within 20%): {summary}", bad)

        errors = pg.console_errors(ignore=[r"/api/tap"] if tap is None else [])
        check(not errors, "no console errors on any page", errors)
        max_rows = pg.most_rows()
        check(max_rows <= 500 + 50, f"the DOM held at most {max_rows} table rows at once (the tap keeps 500 at most)")
    finally:
        pg.close()
        code = procs.stop(demo)
        reader.join(10)
        log(f"  stop  knit demo (exit {code})")
    left = os.path.join(tempfile.gettempdir(), f"knit-demo-{demo.pid}")
    check(not os.path.exists(left), "knit demo stopped and removed its temporary directory", left)


# ---------------------------------------------------------------------------- b. 5,000 workloads

UNMESHED_IP = "127.0.255.1"  # outside fake_proxies.workload_ip's range; never scraped


def write_manifests(directory, workloads, port, unmeshed=()):
    """One file of ExternalWorkloads per namespace. The workloads of `unmeshed` get a second pod
    without a proxy (no admin port: not scraped), so their deployment is 1/2 meshed."""
    os.makedirs(directory)
    by_ns = {}
    for w in workloads:
        by_ns.setdefault(w["namespace"], []).append(w)
    for ns, ws in by_ns.items():
        docs = []
        for w in ws:
            docs.append(f"""apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata:
  name: {w['pod']}
  namespace: {ns}
  labels:
    app: {w['deployment']}
    linkerd.io/proxy-deployment: {w['deployment']}
  annotations:
    knit.dev/proxy-admin-port: "{port}"
spec:
  meshTLS:
    identity: {w['identity']}
    serverName: {w['identity']}
  workloadIPs:
    - ip: {w['ip']}
  ports:
    - name: http
      port: {fake_proxies.APP_PORT}
""")
            if any(u is w for u in unmeshed):
                docs.append(f"""apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata:
  name: {w['pod']}-unmeshed
  namespace: {ns}
  labels:
    app: {w['deployment']}
    linkerd.io/proxy-deployment: {w['deployment']}
spec:
  workloadIPs:
    - ip: {UNMESHED_IP}
  ports:
    - name: http
      port: {fake_proxies.APP_PORT}
""")
        with open(os.path.join(directory, f"{ns}.yaml"), "w") as f:
            f.write("---\n".join(docs))
    return by_ns


def test_scale(bin_dir, browser, procs, n_workloads, n_namespaces, results_path):
    log(f"\n== b. {n_workloads:,} workloads in {n_namespaces} namespaces (fake proxies, a real knit-control)")
    raise_fd_limit()
    tmp = tempfile.mkdtemp(prefix="knit-dashboard-")
    timings = []
    try:
        fake = procs.start("fake proxies", [sys.executable, os.path.join(HERE, "fake_proxies.py"), "--workloads", str(n_workloads), "--namespaces", str(n_namespaces)],
                           stdout=subprocess.PIPE, text=True)
        line = fake.stdout.readline()
        m = re.match(r"listening (\d+)", line)
        if not m:
            raise Failure(f"fake_proxies.py did not start: {line!r}")
        port = int(m.group(1))
        workloads = fake_proxies.plan(n_workloads, n_namespaces)
        half = workloads[len(workloads) // 2]  # its deployment page is checked: a pod of it has no proxy
        by_ns = write_manifests(os.path.join(tmp, "manifests"), workloads, port, unmeshed=[half])
        biggest = max(by_ns, key=lambda ns: len(by_ns[ns]))
        ok(f"{n_workloads:,} ExternalWorkloads written ({len(by_ns)} namespaces, the biggest {biggest} with {len(by_ns[biggest]):,}); fake proxies on 0.0.0.0:{port}")

        knit, control_bin = os.path.join(bin_dir, "knit"), os.path.join(bin_dir, "knit-control")
        # An anchor and an issuer near their end: the certificates page highlights them.
        init = subprocess.run([knit, "identity", "init", "--dir", os.path.join(tmp, "identity"), "--anchor-lifetime", "20d", "--issuer-lifetime", "5d"],
                              capture_output=True, text=True, timeout=60)
        if init.returncode != 0:
            raise Failure(f"knit identity init: {init.stderr}")
        any_port = "127.0.0.1:0"
        log_path = os.path.join(tmp, "knit-control.log")

        def log_text():
            with open(log_path) as f:
                return f.read()

        def start_control(viz_addr):
            with open(log_path, "w") as control_log:
                # Its scrape loop can hold a runtime thread for a long time at this size: give
                # it a minute to stop.
                return procs.start("knit-control", [
                    control_bin, "--config-dir", os.path.join(tmp, "manifests"), "--identity-dir", os.path.join(tmp, "identity"),
                    "--identity-addr", any_port, "--destination-addr", any_port, "--policy-addr", any_port, "--admin-addr", any_port,
                    "--webhook-addr", any_port, "--viz-addr", viz_addr, "--viz-scrape-interval", "2s",
                ], stop_timeout=60, stdout=control_log, stderr=subprocess.STDOUT)

        def serving_line(control):
            if control.poll() is not None:
                raise Failure(f"knit-control exited ({control.returncode}):\n{log_text()[-3000:]}")
            return next((line for line in log_text().splitlines() if " serving" in line), None)

        # Every port the system's choice; the viz address is read from knit-control's "serving"
        # line (a knit-control that does not log it is restarted on a port picked here).
        control = start_control(any_port)
        line = wait_until(lambda: serving_line(control), 120, "knit-control's serving line")
        m = re.search(r"viz=(\S+)", line)
        if m:
            viz = m.group(1)
        else:
            log("  NOTE  knit-control's serving line has no viz address: restarting it on a free port")
            procs.stop(control)
            viz = f"127.0.0.1:{free_port()}"
            control = start_control(viz)
            wait_until(lambda: serving_line(control), 120, "knit-control's serving line")
        base = f"http://{viz}"
        wait_until(lambda: get_json(base + "/api/targets", 10) is not None, 60, "the viz API")
        ok(f"knit-control serves the viz API at {viz}")

        t0 = time.monotonic()
        progress = {"at": 0}

        def all_up():
            if control.poll() is not None:
                raise Failure(f"knit-control exited ({control.returncode}):\n{log_text()[-3000:]}")
            data = get_json(base + "/api/scrapes", 60)
            up = sum(1 for t in data["targets"] if t["health"]["up"])
            if time.monotonic() - progress["at"] > 15:
                progress["at"] = time.monotonic()
                log(f"  ...   {up:,} of {len(data['targets']):,} targets up, {data['series']:,} series ({time.monotonic() - t0:.0f}s)")
            return len(data["targets"]) == n_workloads and up >= n_workloads and data
        scrapes = wait_until(all_up, 600, f"{n_workloads:,} scrape targets up", interval=3)
        ok(f"/api/scrapes: {n_workloads:,} targets up, {scrapes['series']:,} series ({time.monotonic() - t0:.0f}s after start)")

        # How long knit-control takes to scrape every target once, from the fake proxies' count:
        # rates need two scrapes of a target, and read zero once its last scrape is older than
        # the window.
        stats = f"http://{workloads[0]['ip']}:{port}/stats"
        served = lambda: get_json(stats, 10)["served"]  # noqa: E731
        first = served()
        wait_until(lambda: served() >= first + n_workloads, 600, "a full scrape cycle", interval=1)
        t_cycle = time.monotonic()
        wait_until(lambda: served() >= first + 2 * n_workloads, 600, "a second scrape cycle", interval=1)
        cycle = time.monotonic() - t_cycle
        ok(f"knit-control scrapes all {n_workloads:,} targets every {cycle:.1f}s (asked for 2s)")
        # Rates read low until the 30s window is full of samples: wait for it, so the busiest
        # deployment can be checked against the plan (when scrapes keep up).
        fresh = cycle <= 10
        if fresh:
            full = t_cycle - cycle + 34 - time.monotonic()
            if full > 0:
                log(f"  ...   waiting {full:.0f}s for a full 30s window")
                time.sleep(full)
        else:
            log(f"  NOTE  a scrape round takes {cycle:.0f}s, longer than the 2s asked: rates are stale, and only their order is checked")
        traffic = get_json(base + "/api/stat?kind=deployment&sort=rps&order=desc", 120)["rows"]
        with_traffic = sum(1 for r in traffic if r["requests"] > 0)
        check(with_traffic > 0, f"/api/stat: {with_traffic:,} of {n_workloads:,} deployments show traffic in the 30s window")

        def api_ms(params):
            _, ms = timed_get(base + "/api/stat?" + urllib.parse.urlencode(params), 120)
            return ms

        pg = Page(browser, base)
        try:
            p = pg.page
            wrap = '[data-testid="deployments-wrap"]'
            ready = """([total, extra]) => { const w = document.querySelector('[data-testid="deployments-wrap"]');
                 return w && w.dataset.state === 'ready' && w.dataset.total === String(total) &&
                        document.querySelectorAll('[data-testid="stat-row"]').length > 0 && (!extra || Object.entries(extra).every(([k, v]) => w.dataset[k] === v)); }"""

            # 1. The biggest namespace, first render after a page load.
            size = len(by_ns[biggest])
            server = api_ms({"kind": "deployment", "namespace": biggest, "limit": 50, "offset": 0, "sort": "name", "order": "asc"})
            t = pg.open(f"/namespaces/{biggest}")
            pg.wait(ready, [size, None], 120, f"{biggest}'s deployments")
            wall = (time.perf_counter() - t) * 1000
            shown = p.evaluate("""() => document.querySelectorAll('[data-testid="stat-row"]').length""")
            check(shown == 50 and p.get_attribute('[data-testid="count"]', "data-total") == str(size),
                  f"namespace {biggest}: first page of 50 rows, '50 of {size:,}'", shown)
            api_rows = get_json(base + "/api/stat?" + urllib.parse.urlencode({"kind": "deployment", "namespace": biggest, "limit": 50, "sort": "name"}), 120)["rows"]
            meshed = {r["name"]: r["cells"]["meshed"] for r in pg.rows("deployments")}
            want = {r["name"]: meshed_text(r["pods"]) for r in api_rows}
            check(meshed == want and set(want.values()) == {"1/1"}, f"namespace {biggest}: the Meshed column is /api/stat's pods (each fake workload 1/1)",
                  sorted(set(meshed.items()) ^ set(want.items()))[:5])
            timings.append((f"namespace page, {biggest} ({size:,} deployments), first render", wall, server, "page load to rows"))

            # 2. All namespaces: 5,000 deployments, paged.
            server = api_ms({"kind": "deployment", "limit": 50, "offset": 0, "sort": "name", "order": "asc"})
            t = pg.open("/deployments")
            pg.wait(ready, [n_workloads, None], 120, "all deployments")
            wall = (time.perf_counter() - t) * 1000
            shown = p.evaluate("""() => document.querySelectorAll('[data-testid="stat-row"]').length""")
            total = p.get_attribute('[data-testid="count"]', "data-total")
            check(shown == 50 and total == str(n_workloads), f"all deployments: first page of 50 rows of {n_workloads:,}", (shown, total))
            timings.append((f"all deployments ({n_workloads:,}), first render", wall, server, "page load to rows"))

            # 3. Sort by RPS (descending), from the click to the sorted rows.
            server = api_ms({"kind": "deployment", "limit": 50, "offset": 0, "sort": "rps", "order": "desc"})
            t = time.perf_counter()
            p.click('th[data-col="rps"] button')
            pg.wait(ready, [n_workloads, {"sort": "rps", "order": "desc"}], 120, "the sort by rps")
            wall = (time.perf_counter() - t) * 1000
            rps = [float(v) for v in p.evaluate("""() => [...document.querySelectorAll('[data-testid="stat-row"] td[data-col="rps"]')].map(td => td.dataset.value)""")]
            top = max(fake_proxies.expected_rps(i) for i in range(n_workloads))
            check(rps == sorted(rps, reverse=True) and rps[0] > 0 and (not fresh or abs(rps[0] - top) <= 0.15 * top),
                  f"sort by rps: descending, the busiest first ({rps[0]:.1f} rps; the plan's top is {top:.1f})")
            check("sort=rps" in p.evaluate("location.hash"), "sort: kept in the address")
            timings.append(("sort all deployments by rps", wall, server, "click to sorted rows"))

            # 4. A filter, from typing to the filtered rows (the input is debounced by 300 ms).
            needle = "billing-0"
            expected = sum(1 for w in workloads if needle in w["deployment"] or needle in w["namespace"])
            server = api_ms({"kind": "deployment", "limit": 50, "offset": 0, "sort": "rps", "order": "desc", "filter": needle})
            t = time.perf_counter()
            p.fill('[data-testid="filter"]', needle)
            pg.wait(ready, [expected, {"filter": needle}], 120, f"the filter {needle}")
            wall = (time.perf_counter() - t) * 1000
            names = p.evaluate("""() => [...document.querySelectorAll('[data-testid="stat-row"]')].map(tr => tr.dataset.name)""")
            check(all(needle in n for n in names) and len(names) == min(50, expected), f"filter {needle!r}: {expected} matches, every row shown matches", names[:5])
            timings.append((f"filter all deployments ({needle!r}: {expected} rows)", wall, server, "typing to rows, incl. 300 ms debounce"))

            # 5. Paging (by name: rates move between two requests, names do not), then 200 per page.
            p.fill('[data-testid="filter"]', "")
            pg.wait(ready, [n_workloads, {"filter": ""}], 120, "the filter cleared")
            p.click('th[data-col="name"] button')
            pg.wait(ready, [n_workloads, {"sort": "name", "order": "asc"}], 120, "the sort by name")
            first_page = p.evaluate("""() => [...document.querySelectorAll('[data-testid="stat-row"]')].map(tr => tr.dataset.namespace + '/' + tr.dataset.name)""")
            t = time.perf_counter()
            p.click('[data-testid="page-next"]')
            pg.wait(ready, [n_workloads, {"offset": "50"}], 120, "page 2")
            wall = (time.perf_counter() - t) * 1000
            second_page = p.evaluate("""() => [...document.querySelectorAll('[data-testid="stat-row"]')].map(tr => tr.dataset.namespace + '/' + tr.dataset.name)""")
            check(len(second_page) == 50 and not set(first_page) & set(second_page), "paging: page 2 holds the next 50 rows")
            timings.append(("next page (all deployments)", wall, None, "click to rows"))
            t = time.perf_counter()
            p.select_option('[data-testid="page-size"]', "200")
            pg.wait("""() => document.querySelectorAll('[data-testid="stat-row"]').length === 200 &&
                      document.querySelector('[data-testid="deployments-wrap"]').dataset.state === 'ready'""", None, 120, "200 rows per page")
            wall = (time.perf_counter() - t) * 1000
            dom = p.evaluate("document.getElementsByTagName('tr').length")
            check(dom <= MAX_DOM_ROWS, f"200 per page: {dom} table rows in the DOM")
            timings.append(("200 rows per page (all deployments)", wall, None, "select to rows"))

            # Background refreshes keep working at this size.
            before = p.evaluate("window.knit.refreshes")
            pg.wait("(n) => window.knit.refreshes > n", before, 60, "a live refresh")
            refresh_ms = p.evaluate(f"Number(document.querySelector('{wrap}').dataset.ms)")
            ok(f"live refresh of 200 rows of {n_workloads:,}: {refresh_ms} ms (API and render)")
            timings.append(("live refresh, 200 rows of all deployments", refresh_ms, None, "in the page: request to rendered"))

            # 6. Overview: the namespaces and the topology as a table paged by the server (too many
            #    nodes to draw: the page asks for 2,000 edges at most, then only for their number).
            edges_api = lambda **q: get_json(base + "/api/edges?" + urllib.parse.urlencode({"window": "30s", **q}), 120)  # noqa: E731
            server_edges = timed_get(base + "/api/edges?" + urllib.parse.urlencode({"window": "30s", "limit": 2000}), 120)[1]
            edges_ready = """(extra) => { const w = document.querySelector('[data-testid="edge-table-wrap"]');
                 return w && w.dataset.state === 'ready' && document.querySelectorAll('[data-testid="edge-row"]').length > 0 &&
                        Object.entries(extra || {}).every(([k, v]) => w.dataset[k] === v); }"""
            t = pg.open("/")
            pg.wait("""(n) => { const s = document.querySelector('[data-testid="topology-summary"]');
                      return s && Number(s.dataset.nodes) > 0 && document.querySelectorAll('[data-testid="edge-row"]').length > 0 &&
                             document.querySelectorAll('table[data-testid="namespaces"] [data-testid="stat-row"]').length === Math.min(n, 50); }""",
                    len(by_ns), 120, "the overview")
            wall = (time.perf_counter() - t) * 1000
            summary = lambda: p.evaluate("""() => { const d = document.querySelector('[data-testid="topology-summary"]').dataset;
                                            return [Number(d.nodes), Number(d.edges), d.insecure]; }""")  # noqa: E731
            nodes, edges, insecure = agree(summary, lambda: (lambda d: [d["nodes"], d["total"], ""])(edges_api(limit=0)),
                                           "overview: the topology's deployments and edges are /api/edges' nodes and total", 60)
            graph_hidden = p.evaluate("""() => document.querySelector('[data-testid="topology-graph"]').hidden && !document.querySelector('[data-testid="topology-graph"] svg')""")
            edge_rows = p.evaluate("""() => document.querySelectorAll('[data-testid="edge-row"]').length""")
            check(nodes > 200 and graph_hidden and 0 < edge_rows <= 50,
                  f"overview: {nodes:,} deployments and {edges:,} edges as /api/edges counts them, listed as a paged table ({edge_rows} rows shown), no graph, "
                  "no count of edges without mTLS (it would take every edge)")
            agree(lambda: p.get_attribute('[data-testid="edge-count"]', "data-total"), lambda: str(edges_api(limit=0)["total"]),
                  "overview: the edges table's total is /api/edges' total")
            ok(f"overview: the edges table's total is /api/edges' ({edges:,})")
            timings.append((f"overview ({len(by_ns)} namespaces, {edges:,} edges as a table)", wall, server_edges, "page load to rows; server: /api/edges?limit=2000"))

            # The edges by name (stable between requests, rates are not): the server's pages, in order.
            edge_keys = """() => [...document.querySelectorAll('[data-testid="edge-row"]')].map(r =>
                 `${r.dataset.srcNamespace}/${r.dataset.src}>${r.dataset.dstNamespace}/${r.dataset.dst}`)"""
            api_keys = lambda **q: [f"{e['src_namespace']}/{e['src']}>{e['dst_namespace']}/{e['dst']}" for e in edges_api(sort="name", limit=50, **q)["edges"]]  # noqa: E731
            p.click('[data-testid="topology-table"] th[data-col="src"] button')
            pg.wait(edges_ready, {"sort": "name", "order": "asc", "offset": "0"}, 60, "the edges sorted by name")
            page1 = p.evaluate(edge_keys)
            check(page1 == api_keys(offset=0), "edges table: sorted by From, the page is /api/edges?sort=name's first page", page1[:3])
            t = time.perf_counter()
            p.click('[data-testid="edge-next"]')
            pg.wait(edges_ready, {"sort": "name", "offset": "50"}, 60, "the edges' page 2")
            wall = (time.perf_counter() - t) * 1000
            page2 = p.evaluate(edge_keys)
            check(page2 == api_keys(offset=50) and not set(page1) & set(page2), "edges table: its next page is the server's next 50 edges", page2[:3])
            timings.append(("next page of the edges table (by name)", wall, None, "click to rows"))
            needle = "team-07"
            server = timed_get(base + "/api/edges?" + urllib.parse.urlencode({"window": "30s", "sort": "name", "limit": 50, "filter": needle}), 120)[1]
            t = time.perf_counter()
            p.fill('[data-testid="edge-filter"]', needle)
            pg.wait(edges_ready, {"filter": needle, "offset": "0"}, 60, f"the edges filtered by {needle}")
            wall = (time.perf_counter() - t) * 1000
            total = agree(lambda: p.get_attribute('[data-testid="edge-count"]', "data-total"), lambda: str(edges_api(limit=0, filter=needle)["total"]),
                          f"edges table: filtered by {needle!r}, its total is /api/edges?filter={needle}'s")
            rows = p.evaluate(edge_keys)
            check(0 < len(rows) <= 50 and all(needle in k for k in rows), f"edges table: filter {needle!r}: {total} edges, every row shown matches", rows[:3])
            timings.append((f"filter the edges table ({needle!r}: {int(total):,} edges)", wall, server, "typing to rows, incl. 300 ms debounce"))

            # 7. Certificates: 5,000, paged by the server, soonest expiry first.
            certs_api = lambda **q: get_json(base + "/api/certificates?" + urllib.parse.urlencode(q), 120)  # noqa: E731
            soon_before = certs_api(expiring_within="6h", limit=0)["total"]
            server_certs = timed_get(base + "/api/certificates?" + urllib.parse.urlencode({"sort": "expires_at", "limit": 50}), 120)[1]
            t = pg.open("/certificates")
            pg.wait("""(n) => { const c = document.querySelector('[data-testid="count"]'); return c && c.dataset.total === String(n); }""", n_workloads, 120, "the certificates")
            wall = (time.perf_counter() - t) * 1000
            first = p.evaluate("""() => { const r = document.querySelector('[data-testid="cert-row"]');
                      return { expiring: r.dataset.expiring, cls: r.className, at: Number(r.dataset.expiresAt), left: r.querySelector('[data-col="time-left"]').firstChild.textContent }; }""")
            shown = p.evaluate("""() => document.querySelectorAll('[data-testid="cert-row"]').length""")
            summary = p.evaluate("""() => ({...document.querySelector('[data-testid="cert-summary"]').dataset})""")
            everything = certs_api(limit=1, sort="expires_at")
            soon_after = certs_api(expiring_within="6h", limit=0)["total"]
            expiring = int(summary["expiring"])
            # Certificates planned under 6h at the fake proxies' start, and those a few minutes later.
            low = sum(1 for w in workloads if fake_proxies.cert_hours_left(w["index"]) < 6)
            high = sum(1 for w in workloads if fake_proxies.cert_hours_left(w["index"]) <= 6.25)
            check(shown == 50 and first["expiring"] == "true" and "expiring" in first["cls"] and first["at"] == everything["certificates"][0]["expires_at"],
                  f"certificates: 50 of {n_workloads:,} shown, soonest first as /api/certificates?sort=expires_at, highlighted ({first['left']})",
                  (first, everything["certificates"][0]))
            check(everything["total"] == n_workloads and summary["proxies"] == str(everything["proxies"]) and summary["withoutExpiry"] == str(everything["without_expiry"]),
                  f"certificates: the summary's {everything['proxies']:,} proxies and {everything['without_expiry']:,} without expiry are /api/certificates'", summary)
            check(soon_before <= expiring <= soon_after and low <= expiring <= high,
                  f"certificates: {expiring:,} expiring within 6h, as /api/certificates?expiring_within=6h ({soon_before:,} to {soon_after:,}; the plan: {low:,} to {high:,})")
            timings.append((f"certificates ({n_workloads:,}), first render, soonest first", wall, server_certs, "page load to rows; server: /api/certificates?sort=expires_at"))
            check_trust(pg, base, {"issuer": "critical", "anchor": "warning"}, "certificates")

            # The "expiring within 6h only" checkbox: the server's expiring_within=6h.
            server = timed_get(base + "/api/certificates?" + urllib.parse.urlencode({"sort": "expires_at", "limit": 50, "expiring_within": "6h"}), 120)[1]
            soon_before = certs_api(expiring_within="6h", limit=0)["total"]
            t = time.perf_counter()
            p.check('[data-testid="expiring-only"]')
            pg.wait("""() => { const w = document.querySelector('[data-testid="certificates-wrap"]'); return w.dataset.state === 'ready' && w.dataset.expiring === 'true'; }""",
                    None, 60, "the expiring certificates")
            wall = (time.perf_counter() - t) * 1000
            soon_after = certs_api(expiring_within="6h", limit=0)["total"]
            total = int(p.get_attribute('[data-testid="certificates-wrap"]', "data-total"))
            flags = p.evaluate("""() => [...document.querySelectorAll('[data-testid="cert-row"]')].map(r => r.dataset.expiring)""")
            check(soon_before <= total <= soon_after and len(flags) == min(50, total) and set(flags) == {"true"},
                  f"certificates: 'expiring within 6h only' shows /api/certificates?expiring_within=6h's {total:,}, every row highlighted", (total, soon_before, soon_after))
            check("expiring=1" in p.evaluate("location.hash"), "certificates: the checkbox is kept in the address")
            timings.append((f"certificates expiring within 6h only ({total:,})", wall, server, "click to rows; server: expiring_within=6h"))

            # 8. One deployment's page (one of its two pods has no proxy).
            w = half
            t = pg.open(f"/namespaces/{w['namespace']}/deployments/{w['deployment']}")
            pg.wait("""() => !['…'].includes(document.querySelector('[data-testid="metric-rps"]').textContent) &&
                      document.querySelectorAll('table[data-testid="destinations"] [data-testid="stat-row"]').length > 0 &&
                      document.querySelectorAll('table[data-testid="callers"] [data-testid="stat-row"]').length > 0 &&
                      document.querySelector('[data-testid="pod-row"]')""", None, 120, "the deployment page")
            wall = (time.perf_counter() - t) * 1000
            dests = sorted(r["name"] for r in pg.rows("destinations"))
            want = sorted(d["deployment"] for d in w["calls"])
            check(dests == want, f"deployment {w['namespace']}/{w['deployment']}: destinations {want}", dests)
            # Callers in the deployment's namespace (to_namespace): those the plan has calling it.
            callers = sorted((r["namespace"], r["name"]) for r in pg.rows("callers"))
            want = sorted((x["namespace"], x["deployment"]) for x in workloads if any(c is w for c in x["calls"]))
            check(set(callers) <= set(want) and (callers == want or not fresh), f"deployment {w['namespace']}/{w['deployment']}: callers {want}", callers)
            pods = p.evaluate("""() => [...document.querySelectorAll('[data-testid="pod-row"]')].map(r => { const td = r.querySelector('[data-col="meshed"]');
                     return [r.dataset.name, td.textContent, td.classList.contains('warn')]; })""")
            api_pods = get_json(base + "/api/stat?" + urllib.parse.urlencode({"kind": "pod", "namespace": w["namespace"], "deployment": w["deployment"]}), 120)
            want = [[w["pod"], "1/1", False], [w["pod"] + "-unmeshed", "0/1", True]]
            check(pods == [[r["name"], meshed_text(r["pods"]), r["pods"]["meshed"] < r["pods"]["total"]] for r in api_pods["rows"]] == want,
                  f"deployment {w['namespace']}/{w['deployment']}: its pods table is /api/stat?kind=pod&deployment=: {w['pod']} 1/1, "
                  f"{w['pod']}-unmeshed 0/1 (warned)", (pods, api_pods["rows"]))
            card = p.evaluate("""() => { const c = document.querySelector('[data-testid="metric-meshed"]'); return [c.textContent, c.classList.contains('warn')]; }""")
            api_row = next(r for r in get_json(base + "/api/stat?" + urllib.parse.urlencode({"kind": "deployment", "namespace": w["namespace"], "filter": w["deployment"]}), 120)["rows"]
                           if r["name"] == w["deployment"])
            check(card == [meshed_text(api_row["pods"]), True] == ["1/2", True], f"deployment {w['namespace']}/{w['deployment']}: 'Meshed pods 1/2', warned, as /api/stat says", card)
            timings.append(("deployment page (metrics, pods, callers, destinations)", wall, None, "page load to all four"))

            max_rows = pg.most_rows()
            check(max_rows <= MAX_DOM_ROWS, f"the DOM never held more than {MAX_DOM_ROWS} table rows (the most at once: {max_rows})")
            errors = pg.console_errors()
            check(not errors, "no console errors", errors)
        finally:
            pg.close()
        series = get_json(base + "/api/scrapes", 60)["series"]
    finally:
        for p in reversed(procs.all):
            if p.knit_name in ("knit-control", "fake proxies"):
                code = procs.stop(p)
                log(f"  stop  {p.knit_name} (exit {code})")
        shutil.rmtree(tmp, ignore_errors=True)
    check(not os.path.exists(tmp), f"temporary directory {tmp} removed")
    report(timings, n_workloads, n_namespaces, series, results_path, bin_dir, cycle, with_traffic)


class LinkedProxy:
    """One fake proxy (`web` in namespace shop) whose outbound series reach a linked cluster, in
    the shape knit-proxy gives them (tests/netns-multicluster.sh checks that shape with real
    proxies): `books-east` through east's gateway (the set's `target_*` labels, the gateway's
    identity) and `books-federated`, whose members are west's books-w and east's books (its own
    identity, `dst_target_cluster`). Counters grow 20 a second each."""

    GATEWAY = "gateway.shop.serviceaccount.identity.knit.cluster.local"
    SERIES = [
        f'authority="books-east.shop.svc.cluster.local:8080",dst_namespace="shop",dst_service="books-east",dst_target_cluster="east",'
        f'dst_target_service="books",dst_target_service_namespace="shop",tls="true",server_id="{GATEWAY}"',
        'authority="books-federated.shop.svc.cluster.local:8080",dst_namespace="shop",dst_service="books-federated",dst_pod="books-w",'
        'dst_deployment="books-w",tls="true",server_id="books-w.shop.serviceaccount.identity.knit.cluster.local"',
        'authority="books-federated.shop.svc.cluster.local:8080",dst_namespace="shop",dst_service="books-federated",dst_pod="books",'
        'dst_deployment="books",dst_target_cluster="east",tls="true",server_id="books.shop.serviceaccount.identity.knit.east.local"',
    ]

    def __init__(self):
        import http.server
        start = time.monotonic()
        series = self.SERIES

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                n = int((time.monotonic() - start) * 20) + 100
                lines = []
                for labels in series:
                    lines.append(f'response_total{{direction="outbound",{labels},status_code="200",classification="success"}} {n}')
                    lines.append(f'response_latency_ms_bucket{{direction="outbound",{labels},status_code="200",le="+Inf"}} {n}')
                    lines.append(f'tcp_write_bytes_total{{direction="outbound",peer="dst",{labels}}} {n * 100}')
                body = ("\n".join(lines) + "\n").encode() if self.path.startswith("/metrics") else b"ready\n"
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_clusters(bin_dir, browser, procs):
    log("\n== c. linked clusters: traffic to another cluster (a fake proxy, a real knit-control)")
    tmp = tempfile.mkdtemp(prefix="knit-dashboard-clusters-")
    proxy = LinkedProxy()
    try:
        os.makedirs(os.path.join(tmp, "manifests"))
        with open(os.path.join(tmp, "manifests", "shop.yaml"), "w") as f:
            f.write(f"""apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata: {{name: web, namespace: shop, labels: {{app: web}}, annotations: {{knit.dev/proxy-admin-port: "{proxy.port}"}}}}
spec:
  meshTLS: {{identity: web.shop.serviceaccount.identity.knit.cluster.local, serverName: web.shop.serviceaccount.identity.knit.cluster.local}}
  workloadIPs: [{{ip: 127.0.0.1}}]
""")
        knit, control_bin = os.path.join(bin_dir, "knit"), os.path.join(bin_dir, "knit-control")
        init = subprocess.run([knit, "identity", "init", "--dir", os.path.join(tmp, "identity")], capture_output=True, text=True, timeout=60)
        if init.returncode != 0:
            raise Failure(f"knit identity init: {init.stderr}")
        any_port, viz = "127.0.0.1:0", f"127.0.0.1:{free_port()}"
        procs.start("knit-control (clusters)", [
            control_bin, "--config-dir", os.path.join(tmp, "manifests"), "--identity-dir", os.path.join(tmp, "identity"),
            "--identity-addr", any_port, "--destination-addr", any_port, "--policy-addr", any_port, "--admin-addr", any_port,
            "--webhook-addr", any_port, "--viz-addr", viz, "--viz-scrape-interval", "1s",
        ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://{viz}"
        wait_until(lambda: _up(base), 60, "the viz API")
        wait_until(lambda: len(get_json(base + "/api/edges?window=30s", 10)["edges"]) == 3, 30, "three edges from web")
        ok("/api/edges: web → books@east through the gateway, → books@east and → books-w (books-federated)")
        pg = Page(browser, base)
        try:
            p = pg.page
            pg.open("/")
            pg.wait("""() => document.querySelectorAll('[data-testid="topology-edge"]').length === 3""", timeout=30, what="three topology edges")
            drawn = p.evaluate("""() => [...document.querySelectorAll('[data-testid="topology-edge"]')].map(g => [g.dataset.dst, g.dataset.dstCluster, g.dataset.viaGateway]).sort()""")
            check(drawn == [["books", "east", "false"], ["books", "east", "true"], ["books-w", "", "false"]],
                  "overview: the topology draws east's books pod, east's Service through the gateway, and books-w here", drawn)
            nodes = p.evaluate("""() => [...document.querySelectorAll('[data-testid="topology-node"]')].map(n => [n.dataset.name, n.dataset.cluster, n.hasAttribute('href')]).sort()""")
            check(nodes == [["books @east", "east", False], ["books-w", "", True], ["svc/books @east", "east", False], ["web", "", True]],
                  "overview: the linked cluster's nodes are named with it and link nowhere", nodes)
            pg.open("/namespaces/shop/deployments/web")
            pg.wait_rows("destinations", ["books", "books-w"])
            dests = {r["name"]: r["cells"].get("cluster") for r in pg.rows("destinations")}
            check(dests == {"books": "east", "books-w": "-"}, "deployment web: the Cluster column of its destinations", dests)
            errors = pg.console_errors()
            check(not errors, "no console errors", errors)
        finally:
            pg.close()
    finally:
        proxy.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _up(base):
    try:
        return get_json(base + "/api/targets", 5) is not None
    except Exception:
        return False


def report(timings, n_workloads, n_namespaces, series, path, bin_dir, cycle, with_traffic):
    def sh(*argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return "?"
    cores, kernel = sh("nproc"), sh("uname", "-r")
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = ("what", "in the browser (ms)", "API alone (ms)", "measured")
    rows = [(name, f"{wall:.0f}", "-" if api is None else f"{api:.0f}", note) for name, wall, api, note in timings]
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
    log("\nDashboard timings, " + f"{n_workloads:,} workloads:")
    for r in [head] + rows:
        log("  " + "  ".join(c.ljust(widths[i]) if i in (0, 3) else c.rjust(widths[i]) for i, c in enumerate(r)))
    md = [
        f"# Dashboard with {n_workloads:,} workloads",
        "",
        "Written by `python3 tests/dashboard/test_dashboard.py --bin target/debug` (part b): knit-control",
        f"scraping {n_workloads:,} fake proxies ({n_namespaces} namespaces, `tests/dashboard/fake_proxies.py`) every 2 s",
        "(" + f"{series:,}" + " series in its store), the dashboard in headless Chromium on the same machine. Times are",
        "wall-clock from the action (a page load or a click) to the rows on screen; \"API alone\" is the same",
        "query answered to a plain HTTP client just before. Reported, not asserted: the project measures",
        "speed only in its benchmark.",
        "",
        f"knit-control took {cycle:.1f} s to scrape all {n_workloads:,} targets once (`--viz-scrape-interval 2s`); when the",
        f"timings were taken {with_traffic:,} of the {n_workloads:,} deployments had a scrape recent enough to show",
        "traffic in the 30 s window (a target whose last scrape is older than the window reads zero).",
        "",
        f"- date: {now}",
        f"- machine: {cores} cores (`nproc`), kernel {kernel} (`uname -r`)",
        f"- binaries: `{os.path.relpath(bin_dir, ROOT)}`" + (" (a debug build: unoptimised, slower than a release build)" if bin_dir.rstrip("/").endswith("debug") else ""),
        "",
        "| " + " | ".join(head) + " |",
        "| --- | ---: | ---: | --- |",
    ]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md.append("")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(md))
    log(f"\nwritten to {os.path.relpath(path, ROOT)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/debug", help="directory with the knit and knit-control binaries")
    ap.add_argument("--only", choices=["demo", "clusters", "scale"], help="run one part only")
    ap.add_argument("--workloads", type=int, default=5000)
    ap.add_argument("--namespaces", type=int, default=50)
    ap.add_argument("--results", default=os.path.join(ROOT, "bench", "dashboard-results.md"), help="where part b writes its timings")
    args = ap.parse_args()
    bin_dir = os.path.abspath(args.bin)
    for b in ("knit", "knit-control"):
        if not os.access(os.path.join(bin_dir, b), os.X_OK):
            sys.exit(f"no {b} in {bin_dir}: cargo build -p knit-control -p knit")
    if not os.access(CHROMIUM, os.X_OK):
        sys.exit(f"no {CHROMIUM}: apt-get install chromium (or set KNIT_TEST_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sys.exit("no playwright: python3 -m pip install playwright (the browser is Debian's chromium; no `playwright install`)")

    # SIGTERM (a CI timeout) unwinds like Ctrl-C, so the finally blocks stop everything.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    procs = Procs()
    failures = []
    passed = 0
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
            try:
                parts = [("demo", lambda: test_demo(bin_dir, browser, procs)),
                         ("clusters", lambda: test_clusters(bin_dir, browser, procs)),
                         ("scale", lambda: test_scale(bin_dir, browser, procs, args.workloads, args.namespaces, args.results))]
                for name, run in parts:
                    if args.only and args.only != name:
                        continue
                    try:
                        run()
                        passed += 1
                    except Failure as e:
                        log(f"  FAIL  {e}")
                        failures.append(f"{name}: {e}")
                    except Exception as e:  # a bug in the test or a broken page: still a failure
                        import traceback
                        traceback.print_exc()
                        log(f"  FAIL  {type(e).__name__}: {e}")
                        failures.append(f"{name}: {type(e).__name__}: {e}")
            finally:
                browser.close()
    finally:
        procs.stop_all()
    log("")
    if failures:
        log("FAILED:\n  " + "\n  ".join(failures))
    log(f"dashboard: {passed} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
