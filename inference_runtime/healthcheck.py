"""`python -m inference_runtime.healthcheck`: exit 0 when the runtime in this container is ready.

Used by the image's HEALTHCHECK; stdlib only, so it starts in milliseconds.
"""

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("RUNTIME_PORT") or "8080"
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError):
        return 1


if __name__ == "__main__":
    sys.exit(main())
