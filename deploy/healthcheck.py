"""The image's HEALTHCHECK: does runwatch's operations port answer?

GET /healthz at HEALTHCHECK_URL (default: the image config's metrics.listen,
http://127.0.0.1:9464/healthz). Healthy (exit 0) on 200, and on 401: the process answered,
and metrics.auth protects the probes; the check carries no credentials so that no secret has
to sit in the image's metadata. Anything else, or no answer within 4 s, is unhealthy (exit 1).
Standard library only: it runs beside the service with nothing but the venv's Python.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:9464/healthz"


def main() -> int:
    url = os.environ.get("HEALTHCHECK_URL") or DEFAULT_URL
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if status in (200, 401):
        print(f"healthy: {url} answered {status}")
        return 0
    print(f"unhealthy: {url} answered {status}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
