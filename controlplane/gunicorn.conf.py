"""gunicorn settings for Slipway's web server: `gunicorn -c controlplane/gunicorn.conf.py controlplane.wsgi`.

`make run` (controlplane/devserver.py) and the benchmarks start gunicorn with this file;
flags given on the command line (`--bind`, `--workers`) override what it sets.

Garbage collection at one fixed point of each request, not wherever a threshold falls.
Django, DRF, django-filter and the middleware tie each request's objects into reference
cycles (the view and its request, a filter set and its form class, the request and its
message storage), so what a request built is freed by Python's cycle collector, not when
the request ends: ~700 objects for a page of 50 versions. Left to its default thresholds
the collector runs in the middle of whichever request crosses them, after the objects of
the requests still running have been promoted to an older generation: one API request in
ten paid 3 to 10 ms for it, and one in a few hundred ~100 ms (a full collection over every
object Django made at start-up). So each worker, once the application is loaded, collects
once and freezes what is left (the start-up objects are never garbage and are no longer
scanned), raises the first threshold above what one request allocates, and collects as
each request starts, before the application sees it: by then the requests before it are
garbage, and each request pays ~0.5 ms for its predecessor's instead of a few paying for
everyone's. (After the response, in `post_request`, would be too early: gunicorn still
holds the response, and with it the whole request, so it would all be promoted.)
Measured on the versions list API: p95 ~20 → ~18 ms, the slowest of 400 requests ~100 →
~30 ms, p50 unchanged (docs/benchmarks.md).
"""

import gc

worker_class = "gthread"
threads = 8
timeout = 600
# gunicorn's control socket (for `gunicornc`) has one default path per user, $HOME/.gunicorn/gunicorn.ctl:
# each Slipway on a machine (`make run`, the tests, the benchmarks) would take it from the one before,
# and the first to stop would remove it for the rest. Nothing here uses it.
control_socket_disable = True

# A request allocating more than this (an audit export, say) still collects on its way.
YOUNG_THRESHOLD = 20_000


def post_worker_init(worker):
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)


def pre_request(worker, req):
    """Collect what the collector's own policy would collect now, but here, as a request starts.

    The young generation every time; the older ones when their counts say so, as the automatic
    collection would (which the raised threshold otherwise keeps from running): with 8
    threads, the requests running when another one starts survive its collection and move to
    an older generation, and their cycles must be collected there once they end.
    """
    counts, thresholds = gc.get_count(), gc.get_threshold()
    generation = 0
    for older in (1, 2):
        if counts[older] >= thresholds[older]:
            generation = older
    gc.collect(generation)
