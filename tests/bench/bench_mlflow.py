"""The MLflow side of the registry benchmark; runs in MLflow's own virtualenv.

    python bench_mlflow.py prepare DB_PATH VERSIONS   # registered model "m" with VERSIONS versions
    python bench_mlflow.py serve DB_PATH              # answers JSON lines on stdin (see serve())

The driver (bench_registry.py) runs in Slipway's virtualenv and talks to this one
through stdin/stdout, so the timed client calls happen in MLflow's process, the way
an MLflow user makes them, while the driver interleaves them with Slipway's requests.
"""

from __future__ import annotations

import json
import os
import sys
import time

MODEL = "m"


def _uri(db_path: str) -> str:
    return f"sqlite:///{os.path.abspath(db_path)}"


def prepare(db_path: str, versions: int) -> None:
    from mlflow.store.model_registry.dbmodels.models import SqlModelVersion
    from mlflow.tracking import MlflowClient

    tmp = f"{db_path}.partial"
    if os.path.exists(tmp):
        os.unlink(tmp)
    client = MlflowClient(tracking_uri=_uri(tmp), registry_uri=_uri(tmp))
    client.create_registered_model(MODEL, description="benchmark model")
    # The first version goes through MLflow's own API, so the rows below copy what it writes.
    client.create_model_version(MODEL, source="file:///tmp/mlflow-bench/m/1", description="v1")
    # 10,000 create_model_version calls take minutes; insert the rest through MLflow's
    # own SQLAlchemy model in one transaction instead.
    store = client._get_registry_client().store
    now = int(time.time() * 1000)
    rows = [
        {
            "name": MODEL,
            "version": number,
            "creation_time": now - (versions - number) * 1000,
            "last_updated_time": now - (versions - number) * 1000,
            "description": f"v{number}",
            "user_id": "bench",
            "current_stage": "None",
            "source": f"file:///tmp/mlflow-bench/m/{number}",
            "storage_location": f"file:///tmp/mlflow-bench/m/{number}",
            "run_id": None,
            "status": "READY",
        }
        for number in range(2, versions + 1)
    ]
    with store.ManagedSessionMaker(read_only=False) as session:
        session.execute(SqlModelVersion.__table__.insert(), rows)
    found = client.search_model_versions(f"name='{MODEL}'", max_results=1)
    assert found and int(found[0].version) == versions, found
    store.engine.dispose()
    os.replace(tmp, db_path)


def serve(db_path: str) -> None:
    """Answer one JSON object per line: {"cmd": "search", "n": N} -> {"seconds": [...], "cpu_seconds": S},
    {"cmd": "queries"} -> {"queries": K, "versions": V}, {"cmd": "quit"}."""
    import mlflow
    from mlflow.tracking import MlflowClient
    from sqlalchemy import event

    client = MlflowClient(tracking_uri=_uri(db_path), registry_uri=_uri(db_path))
    store = client._get_registry_client().store
    statements: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))

    def search():
        return client.search_model_versions(f"name='{MODEL}'", max_results=50)

    print(json.dumps({"ready": True, "mlflow": mlflow.__version__}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request["cmd"] == "search":
            seconds = []
            cpu = time.process_time()
            for _ in range(request["n"]):
                start = time.perf_counter()
                page = search()
                seconds.append(time.perf_counter() - start)
                assert len(page) == 50, len(page)
            answer = {"seconds": seconds, "cpu_seconds": time.process_time() - cpu}
        elif request["cmd"] == "queries":
            statements.clear()
            page = search()
            answer = {"queries": len(statements), "versions": len(page)}
        else:
            return
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    command, db = sys.argv[1], sys.argv[2]
    if command == "prepare":
        prepare(db, int(sys.argv[3]))
    elif command == "serve":
        serve(db)
    else:
        sys.exit(f"unknown command {command!r}")
