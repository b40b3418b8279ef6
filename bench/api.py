"""The API's latency against the real daemon: list, show, change, with N cases on file.

    .venv/bin/python bench/api.py --cases 1000 --requests 300

Opens the cases over SMTP, then times each call over one keep-alive connection (the
client a tool would use) and prints the median and p99 per call. Loopback only, bounded.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.daemon import Daemon, opening_mail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        daemon = Daemon(Path(tmp) / "d")
        daemon.upgrade()
        daemon.start()
        try:
            token = daemon.cli("api-token", "create", "bench").stdout.decode().strip()
            for start in range(0, args.cases, 100):  # a connection takes 200 commands
                with daemon.smtp() as client:
                    for i in range(start, min(start + 100, args.cases)):
                        client.send_message(opening_mail(subject=f"TEN-1001 Falla número {i} "
                                                         f"del sistema {i * 7919 % 1000}"))
            daemon.settle(timeout=600)
            cases = daemon.query("SELECT count(*) FROM tickets")[0][0]
            conn = http.client.HTTPConnection("127.0.0.1", daemon.http_port, timeout=30)
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            results = {}
            calls = {
                "GET /api/v1/cases?limit=50": ("GET", "/api/v1/cases?limit=50", None),
                "GET /api/v1/cases?limit=500": ("GET", "/api/v1/cases?limit=500", None),
                "GET /api/v1/cases?sla_state=a_tiempo&tenant=TEN-1001": (
                    "GET", "/api/v1/cases?sla_state=a_tiempo&tenant=TEN-1001", None),
                "GET /api/v1/cases/{n}": ("GET", f"/api/v1/cases/{cases // 2}", None),
                "PATCH /api/v1/cases/{n} (priority)": ("PATCH", f"/api/v1/cases/{cases // 2}",
                                                       "priority"),
            }
            for name, (method, path, patch) in calls.items():
                times = []
                for i in range(args.requests):
                    body = (json.dumps({"priority": "AB"[i % 2]}).encode() if patch else None)
                    started = time.perf_counter()
                    conn.request(method, path, body=body, headers=headers)
                    response = conn.getresponse()
                    response.read()
                    times.append((time.perf_counter() - started) * 1000)
                    assert response.status == 200, (name, response.status)
                times.sort()
                results[name] = {"p50_ms": round(statistics.median(times), 2),
                                 "p99_ms": round(times[int(len(times) * 0.99) - 1], 2)}
            conn.close()
        finally:
            daemon.stop()
    print(json.dumps({"cases": cases, "requests_per_call": args.requests, "calls": results},
                     indent=2))
    for name, figures in results.items():
        print(f"{name:<55} p50 {figures['p50_ms']:>7} ms   p99 {figures['p99_ms']:>7} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
