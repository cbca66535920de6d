"""`python -m inference_runtime`: parse the configuration once, then serve until SIGTERM."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from inference_runtime import __version__
from inference_runtime.config import parse_config

log = logging.getLogger("inference_runtime")


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)  # before importing torch: a bad option fails in milliseconds
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    log.info("Slipway inference runtime %s, pid %d", __version__, os.getpid())

    # Archives embed pickles (.pt2 sample inputs and constants): let torch unpickle
    # tensors only, never arbitrary objects, whatever the model file holds.
    os.environ.setdefault("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")
    from inference_runtime.serve import serve

    code = serve(config)
    # The model thread may still be inside torch (a load interrupted by SIGTERM): don't wait for it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
