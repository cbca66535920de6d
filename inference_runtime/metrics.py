"""Prometheus metrics, in a registry of their own (no process-wide globals)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from inference_runtime.errors import OUTCOMES

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
QUEUE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """Label values are bound once here, so the hot path only calls inc/observe."""

    def __init__(self, model_name: str, model_version: str):
        disable_created_metrics()  # the *_created series double the scrape for nothing we use
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        labels = {"model": model_name, "version": model_version}
        names = list(labels)
        requests = Counter(
            "slipway_inference_requests",
            "Inference requests answered, by outcome.",
            [*names, "outcome"],
            registry=self.registry,
        )
        self.requests = {
            outcome: requests.labels(**labels, outcome=outcome) for outcome in ("success", *OUTCOMES.values())
        }
        self.client_disconnects = Counter(
            "slipway_inference_client_disconnects",
            "Inference requests whose client went away before they were answered (not answered).",
            names,
            registry=self.registry,
        ).labels(**labels)
        self.latency = Histogram(
            "slipway_inference_request_duration_seconds",
            "Time from receiving an inference request to answering it.",
            names,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        ).labels(**labels)
        self.batch_size = Histogram(
            "slipway_inference_batch_size",
            "Rows per batch: the requests' rows stacked into one forward pass, each row counted once (a failed "
            "batch's requests, run again one at a time, are not counted again).",
            names,
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        ).labels(**labels)
        self.failed_batches = Counter(
            "slipway_inference_failed_batches",
            "Batches of several requests whose forward pass failed: each of their requests then ran on its own.",
            names,
            registry=self.registry,
        ).labels(**labels)
        self.queue_wait = Histogram(
            "slipway_inference_queue_wait_seconds",
            "Time a request waits in the batching queue before its forward pass starts.",
            names,
            buckets=QUEUE_BUCKETS,
            registry=self.registry,
        ).labels(**labels)
        self.in_flight = Gauge(
            "slipway_inference_in_flight_requests",
            "Inference requests received and not yet answered.",
            names,
            registry=self.registry,
        ).labels(**labels)
        self.queue_depth = Gauge(
            "slipway_inference_queue_depth",
            "Requests waiting in the batching queue.",
            names,
            registry=self.registry,
        ).labels(**labels)
        self.load_seconds = Gauge(
            "slipway_model_load_seconds",
            "Time to verify, load and warm up the model.",
            names,
            registry=self.registry,
        ).labels(**labels)
        self.ready = Gauge(
            "slipway_model_ready",
            "1 while the model serves, 0 while loading or draining.",
            names,
            registry=self.registry,
        ).labels(**labels)
        self._labels = labels

    def watch_gpu(self, device) -> None:
        """GPU memory, read at scrape time."""
        import torch

        index = device.index if device.index is not None else torch.cuda.current_device()
        labels = {**self._labels, "device": f"cuda:{index}"}
        names = list(labels)
        for metric, help_text, read in (
            ("slipway_gpu_memory_allocated_bytes", "GPU memory held by tensors.", torch.cuda.memory_allocated),
            ("slipway_gpu_memory_reserved_bytes", "GPU memory held by torch's allocator.", torch.cuda.memory_reserved),
            (
                "slipway_gpu_memory_max_allocated_bytes",
                "Peak GPU memory held by tensors.",
                torch.cuda.max_memory_allocated,
            ),
        ):
            gauge = Gauge(metric, help_text, names, registry=self.registry).labels(**labels)
            gauge.set_function(lambda read=read: read(index))
        total = Gauge("slipway_gpu_memory_total_bytes", "GPU memory on the device.", names, registry=self.registry)
        total.labels(**labels).set(torch.cuda.get_device_properties(index).total_memory)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
