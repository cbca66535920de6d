"""Two users at the same moment: a call on a thread of its own (its own database connection), and a look
at whether it waits for a lock another transaction holds."""

from __future__ import annotations

import threading

from django.db import connection


def in_thread(results: dict, name: str, call) -> threading.Thread:
    """Start `call` on a thread; its result, or the exception it raised, lands in `results[name]`."""

    def run():
        try:
            results[name] = call()
        except Exception as exc:  # what the test looks at
            results[name] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run, name=name)
    thread.start()
    return thread


def waiting_for_a_lock(*locktypes: str) -> bool:
    """Whether some transaction waits for a lock of one of these kinds (`transactionid`, `tuple`, `advisory`...)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = ANY(%s)", [list(locktypes)])
        return cursor.fetchone()[0] > 0
