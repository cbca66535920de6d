"""The other contenders of `make bench-runtime`, one per subcommand (see bench_runtime.py).

    fastapi  PORT MODEL                      plain FastAPI + uvicorn, no batching
    http     PORT                            T_http: bare ASGI, parse the JSON, answer a small JSON
    model    MODEL ROWS SHAPE SECONDS        T_model: in-process batched model(x), rows/s

All of them speak the same Open Inference Protocol JSON as the runtime (one FP32 input,
one FP32 output), so every contender parses and writes the same bodies. BENCH_DEVICE
(cpu or cuda) says where the model runs; inputs arrive and answers leave through the CPU. LitServe has a
file of its own (bench_runtime_litserve.py): it runs in another virtualenv.
"""

# No `from __future__ import annotations`: FastAPI must see the real Request class of
# the local import below, not a string it cannot resolve.

import json
import os
import statistics
import sys
import time

DEVICE = os.environ.get("BENCH_DEVICE", "cpu")


def to_device(tensor):
    """The tensor on BENCH_DEVICE; on the CPU the same tensor, so CPU runs do what they always did."""
    return tensor if DEVICE == "cpu" else tensor.to(DEVICE)


def to_cpu(tensor):
    """Back from the GPU (which also waits for its queued kernels); on the CPU the same tensor."""
    return tensor if DEVICE == "cpu" else tensor.cpu()


def _torch_one_thread():
    import torch

    # Same as the runtime's --num-threads 1: every contender gets one core, so a second
    # intra-op thread would only fight the event loop for it.
    torch.set_num_threads(1)
    return torch


def oip_response(name: str, output) -> dict:
    return {
        "model_name": name,
        "outputs": [
            {"name": "output__0", "datatype": "FP32", "shape": list(output.shape), "data": output.reshape(-1).tolist()}
        ],
    }


def fastapi(port: int, model_path: str) -> None:
    import uvicorn
    from fastapi import FastAPI, Request

    torch = _torch_one_thread()
    model = torch.jit.load(model_path, map_location=DEVICE).eval()
    app = FastAPI()

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> dict:
        item = (await request.json())["inputs"][0]
        x = torch.tensor(item["data"], dtype=torch.float32).reshape(item["shape"])
        with torch.inference_mode():
            return oip_response(name, to_cpu(model(to_device(x))))

    uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, log_level="warning")


def http(port: int) -> None:
    import orjson
    import uvicorn

    answer = b'{"model_name":"ceiling","outputs":[]}'
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        orjson.loads(b"".join(chunks))  # the one piece of work every JSON server must do
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, log_level="warning", lifespan="off")


def model(model_path: str, rows: int, shape: str, seconds: float) -> None:
    torch = _torch_one_thread()
    module = torch.jit.load(model_path, map_location=DEVICE).eval()
    x = torch.randn(rows, *json.loads(shape))

    def step():
        # From and back to the CPU, as any server's batch goes.
        return to_cpu(module(to_device(x)))

    rates = []
    with torch.inference_mode():
        for _ in range(20):  # TorchScript profiles and optimises its first calls
            step()
        for _ in range(3):
            count, started = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - started) < seconds / 3:
                step()
                count += 1
            rates.append(count * rows / elapsed)
    print(json.dumps({"rows_per_s": statistics.median(rates)}))


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "fastapi":
        fastapi(int(args[0]), args[1])
    elif command == "http":
        http(int(args[0]))
    elif command == "model":
        model(args[0], int(args[1]), args[2], float(args[3]))
    else:
        raise SystemExit(f"unknown contender {command!r}")
