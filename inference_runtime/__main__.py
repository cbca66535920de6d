"""`python -m inference_runtime`: stop cleanly on SIGTERM from the first moment, then run the CLI."""

import os
import signal
import sys
import time


def stop_while_starting(sig: int, frame: object) -> None:
    """SIGTERM or SIGINT before uvicorn listens for them (importing torch alone takes a second or more):
    exit 0 and say so, as when the model is loading, rather than die of the signal (status 143).

    Nothing is lost: no request has been taken yet. Written with os.write, not logging: the signal may
    arrive while logging is being imported or is writing a line."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"
    line = f"{stamp} INFO inference_runtime: {signal.Signals(sig).name} received while starting: exiting\n"
    os.write(2, line.encode())
    os._exit(0)


# First, before the imports below: uvicorn puts its own handlers in place once it starts.
signal.signal(signal.SIGTERM, stop_while_starting)
signal.signal(signal.SIGINT, stop_while_starting)

from inference_runtime.cli import main  # noqa: E402

sys.exit(main())
