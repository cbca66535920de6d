"""LitServe for `make bench-runtime`, with batching on; runs in var/bench/peers (its own virtualenv).

    python bench_runtime_litserve.py PORT MODEL MAX_BATCH DELAY_MS

The API class lives at module level because LitServe starts its inference worker with
multiprocessing's spawn, which pickles the class by name.
"""

from __future__ import annotations

import sys

import litserve as ls
import torch
from bench_runtime_peers import DEVICE, oip_response, to_cpu, to_device


class OIP(ls.LitAPI):
    def __init__(self, model_path: str, **kwargs):
        super().__init__(**kwargs)
        self.model_path = model_path

    def setup(self, device):
        torch.set_num_threads(1)  # as every contender: one core, one torch thread
        self.model = torch.jit.load(self.model_path, map_location=device).eval()

    def decode_request(self, request):
        item = request["inputs"][0]
        return torch.tensor(item["data"], dtype=torch.float32).reshape(item["shape"])

    def batch(self, inputs):
        # Requests carry [1, ...]: LitServe's default torch.stack would add a dimension.
        return torch.cat(inputs)

    def predict(self, x):
        with torch.inference_mode():
            return to_cpu(self.model(to_device(x)))

    def unbatch(self, output):
        return list(output.split(1))

    def encode_response(self, output):
        return oip_response("model", output)


def main(port: int, model_path: str, max_batch: int, delay_ms: float) -> None:
    torch.set_num_threads(1)
    api = OIP(model_path, max_batch_size=max_batch, batch_timeout=delay_ms / 1000, api_path="/predict")
    server = ls.LitServer(api, accelerator=DEVICE, devices=1, workers_per_device=1)
    server.run(
        host="127.0.0.1",
        port=port,
        num_api_servers=1,
        log_level="warning",
        generate_client_file=False,
        access_log=False,  # as for every contender: a log line per request is not what is measured
    )


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
