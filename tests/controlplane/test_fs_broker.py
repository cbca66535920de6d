"""The embedded default's broker: a consumer never sees a message before it is whole."""

import threading

from kombu import Connection

from controlplane.fs_broker import Transport


def test_messages_published_while_a_consumer_polls_all_arrive_whole(tmp_path):
    options = {
        "data_folder_in": str(tmp_path),
        "data_folder_out": str(tmp_path),
        "store_processed": False,
        "polling_interval": 0,
    }
    sent = [{"n": n, "body": "x" * (n % 7000)} for n in range(400)]
    received, failures = [], []

    def consume():
        with Connection("filesystem://", transport=Transport, transport_options=options) as conn:
            queue = conn.SimpleQueue("rollouts")
            try:
                while len(received) < len(sent):
                    message = queue.get(block=True, timeout=10)
                    received.append(message.payload)
                    message.ack()
            except Exception as exc:  # a half-written message used to stop the worker right here
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
