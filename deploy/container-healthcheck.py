"""The container's HEALTHCHECK: GET /healthz where MAILBRIDGE_HTTP_LISTEN says the daemon
listens (the port the daemon wrote to <data dir>/run/listen.json when the setting is 0)."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path

from mailbridge.settings import parse_hostport

# A wildcard listener is probed on loopback (nothing binds here).
_WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104


def main() -> int:
    host, port = parse_hostport(os.environ.get("MAILBRIDGE_HTTP_LISTEN", "127.0.0.1:8025"),
                                default_port=8025)
    if port == 0:
        data_dir = Path(os.environ.get("MAILBRIDGE_DATA_DIR", "var"))
        host, port = json.loads((data_dir / "run" / "listen.json").read_text())["http"]
    host = _WILDCARD.get(host, host)
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    # No proxy: an HTTP_PROXY set for the daemon's relay must not take the probe elsewhere.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{netloc}/healthz", timeout=4) as response:
        return 0 if response.status == 200 else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # unhealthy, with the reason in `podman inspect`
        print(f"unhealthy: {exc}", file=sys.stderr)
        sys.exit(1)
