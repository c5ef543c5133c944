#!/usr/bin/env python3
"""Thousands of fake Linkerd-shaped proxies behind one socket, for the dashboard's scale test.

Every workload of the plan gets its own loopback address (127.0.X.Y: all of 127.0.0.0/8 is
loopback on Linux), and one asyncio server bound to 0.0.0.0:PORT answers them all: it tells
the workloads apart by the local address each connection arrived at, and answers `GET /metrics`
with Prometheus text in the shape of Linkerd's proxy metrics (`response_total`,
`response_latency_ms_bucket`, `tcp_*`, outbound series naming another workload with the `dst_*`
labels discovery gives, `identity_cert_expiration_timestamp_seconds`). Counters grow with time at each workload's own
rate, so knit-control's windowed rates come out steady and different per workload.

    python3 tests/dashboard/fake_proxies.py --workloads 5000 --namespaces 50
    # prints "listening PORT" once it serves; SIGTERM or SIGINT stops it (and so does the
    # end of the process that started it). GET /stats on any address: scrapes answered so far.

`plan()` is also imported by test_dashboard.py (and bench/viz.py) to write the matching
ExternalWorkloads: keep its fields and the "listening PORT" line stable.
"""

import argparse
import asyncio
import math
import os
import resource
import signal
import sys
import time

WORDS = ["api", "web", "db", "cache", "auth", "search", "billing", "cart", "mail", "queue"]
APP_PORT = 8080
LATENCY_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]


def workload_ip(i):
    """127.0.X.Y for workload i (never 127.0.0.x, which other tools use)."""
    return f"127.0.{1 + i // 250}.{1 + i % 250}"


def plan(workloads=5000, namespaces=50):
    """The workloads: one deployment with one pod each. The first namespace is the biggest
    (a fifth of them); the others share the rest evenly."""
    namespaces = max(1, min(namespaces, workloads))
    biggest = workloads // 5 if namespaces > 1 else workloads
    sizes = [biggest]
    rest = workloads - biggest
    for k in range(1, namespaces):
        share = rest // (namespaces - 1) + (1 if k - 1 < rest % (namespaces - 1) else 0)
        sizes.append(share)
    out = []
    i = 0
    for k, size in enumerate(sizes):
        ns = f"team-{k:02d}"
        for _ in range(size):
            deployment = f"{WORDS[i % len(WORDS)]}-{i:04d}"
            out.append({
                "index": i,
                "namespace": ns,
                "deployment": deployment,
                "pod": f"{deployment}-0",
                "ip": workload_ip(i),
                "identity": f"{deployment}.{ns}.serviceaccount.identity.knit.cluster.local",
            })
            i += 1
    # Each workload calls the next one (of its namespace, but at the namespace's end) and one
    # far away, usually in another namespace; mTLS everywhere but from every tenth.
    n = len(out)
    for w in out:
        i = w["index"]
        near, far = out[(i + 1) % n], out[(i + n // 3 + 7) % n]
        w["calls"] = [x for x in (near, far) if x is not w]
        w["caller"] = out[(i - 1) % n]
        w["secured"] = i % 10 != 9
    return out


def expected_rps(i):
    """Requests per second workload i answers (inbound)."""
    return 0.5 + (i * 37 % 200) / 10.0


def failure_share(i):
    return (i % 20) / 200.0


def mean_latency_ms(i):
    return 1.0 + (i * 13 % 300)


def cert_hours_left(i):
    """Hours until workload i's certificate expires, at start: 0.25 to 24 (about a quarter under 6)."""
    return ((i * 7) % 96) / 4.0 + 0.25


class Metrics:
    def __init__(self, workloads, start_wall):
        self.workloads = workloads
        self.by_ip = {w["ip"]: w for w in workloads}
        self.start = time.monotonic()
        self.start_wall = start_wall
        for w in workloads:
            w["expires"] = start_wall + cert_hours_left(w["index"]) * 3600.0
        self.served = 0

    def render(self, w):
        i = w["index"]
        t = time.monotonic() - self.start + 100.0  # counters do not start at zero
        total = math.floor(expected_rps(i) * t)
        failed = math.floor(total * failure_share(i))
        ok = total - failed
        client = w["caller"]["identity"]
        lines = [
            "# HELP response_total Total count of HTTP responses.",
            "# TYPE response_total counter",
            f'response_total{{direction="inbound",authority="{w["deployment"]}.{w["namespace"]}.svc.cluster.local:{APP_PORT}",tls="true",client_id="{client}",status_code="200",classification="success",error=""}} {ok}',
            f'response_total{{direction="inbound",authority="{w["deployment"]}.{w["namespace"]}.svc.cluster.local:{APP_PORT}",tls="true",client_id="{client}",status_code="500",classification="failure",error=""}} {failed}',
            "# TYPE response_latency_ms histogram",
        ]
        mean = mean_latency_ms(i)
        for le in LATENCY_BUCKETS:
            count = math.floor(total * (1.0 - math.exp(-le / mean)))
            lines.append(f'response_latency_ms_bucket{{direction="inbound",tls="true",status_code="200",le="{le}"}} {count}')
        lines.append(f'response_latency_ms_bucket{{direction="inbound",tls="true",status_code="200",le="+Inf"}} {total}')
        lines += [
            "# TYPE tcp_open_connections gauge",
            f'tcp_open_connections{{direction="inbound",peer="src",tls="true"}} {1 + i % 5}',
            f'tcp_read_bytes_total{{direction="inbound",peer="src",tls="true"}} {total * 220}',
            f'tcp_write_bytes_total{{direction="inbound",peer="src",tls="true"}} {total * 910}',
        ]
        tls = 'tls="true"' if w["secured"] else 'tls="no_identity",no_tls_reason="not_provided_by_service_discovery"'
        for k, dst in enumerate(w["calls"]):
            calls = math.floor(total * (0.3 if k == 0 else 0.1))
            addr = f'{dst["ip"]}:{APP_PORT}'
            server = f',server_id="{dst["identity"]}"' if w["secured"] else ""
            server += (f',dst_namespace="{dst["namespace"]}",dst_service="{dst["deployment"]}",'
                       f'dst_deployment="{dst["deployment"]}",dst_pod="{dst["pod"]}",dst_serviceaccount="{dst["deployment"]}"')
            lines.append(f'response_total{{direction="outbound",{tls}{server},target_addr="{addr}",status_code="200",classification="success",error=""}} {calls}')
            lines.append(f'tcp_write_bytes_total{{direction="outbound",peer="dst",{tls}{server},target_addr="{addr}"}} {calls * 300}')
        lines.append("# TYPE identity_cert_expiration_timestamp_seconds gauge")
        lines.append(f"identity_cert_expiration_timestamp_seconds {w['expires']:.0f}")
        lines.append("process_cpu_seconds_total 1.5")
        return ("\n".join(lines) + "\n").encode()


class Http(asyncio.Protocol):
    """Just enough HTTP/1.1 for a scraper: GET with keep-alive, no request bodies."""

    def __init__(self, metrics):
        self.metrics = metrics
        self.buf = b""
        self.transport = None
        self.workload = None

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("sockname")
        self.workload = self.metrics.by_ip.get(sock[0]) if sock else None

    def data_received(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 65536:
                    self.transport.close()
                return
            head, self.buf = self.buf[:end], self.buf[end + 4:]
            first = head.split(b"\r\n", 1)[0].split()
            path = first[1] if len(first) > 1 else b""
            if path.split(b"?")[0] == b"/metrics" and self.workload is not None:
                status, body = b"200 OK", self.metrics.render(self.workload)
                self.metrics.served += 1
            elif path == b"/stats":
                # For the test: how many scrapes were answered, to see how fast they come.
                status, body = b"200 OK", b'{"served": %d, "uptime": %.3f}\n' % (self.metrics.served, time.monotonic() - self.metrics.start)
            elif path in (b"/ready", b"/live"):
                status, body = b"200 OK", b"ready\n"
            else:
                status, body = b"404 Not Found", b"not found\n"
            close = b"connection: close" in head.lower()
            self.transport.write(
                b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: "
                + str(len(body)).encode() + (b"\r\nconnection: close" if close else b"") + b"\r\n\r\n" + body)
            if close:
                self.transport.close()
                return


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(args):
    raise_fd_limit()
    metrics = Metrics(plan(args.workloads, args.namespaces), time.time())
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Http(metrics), host="0.0.0.0", port=args.port, backlog=4096, reuse_address=True)
    port = server.sockets[0].getsockname()[1]
    print(f"listening {port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Stop when the parent (the test) goes away, whatever happened to it.
    parent = os.getppid()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        except asyncio.TimeoutError:
            if os.getppid() != parent:
                break
    server.close()
    print(f"served {metrics.served} scrapes", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", type=int, default=5000)
    p.add_argument("--namespaces", type=int, default=50)
    p.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    args = p.parse_args()
    if args.workloads > 250 * 254:
        sys.exit("at most 63500 workloads (127.0.1.1 to 127.0.254.250)")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
