"""The embedded default's broker: no process reads a broker file before it is whole."""

import threading

from kombu import Connection

from controlplane.fs_broker import Transport


def test_messages_published_while_a_consumer_polls_all_arrive_whole(tmp_path):
    # Once per process: kombu keeps the bindings it has made in memory, per transport class.
    options = {
        "data_folder_in": str(tmp_path),
        "data_folder_out": str(tmp_path),
        "control_folder": str(tmp_path / "control"),
        "store_processed": False,
        "polling_interval": 0,
    }
    sent = [{"n": n, "body": "x" * (n % 3000)} for n in range(1500)]
    received, failures = [], []

    def consume():
        with Connection("filesystem://", transport=Transport, transport_options=options) as conn:
            queue = conn.SimpleQueue("rollouts")
            try:
                while len(received) < len(sent):
                    message = queue.get(block=True, timeout=10)
                    received.append(message.payload)
                    message.ack()
            except Exception as exc:  # a half-written file used to stop the worker right here
                failures.append(exc)
            finally:
                queue.close()

    consumer = threading.Thread(target=consume)
    consumer.start()
    with Connection("filesystem://", transport=Transport, transport_options=options) as conn:
        queue = conn.SimpleQueue("rollouts")
        for message in sent:
            queue.put(message)
        queue.close()
    consumer.join(timeout=60)
    assert failures == []
    assert sorted(received, key=lambda m: m["n"]) == sent
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")]
