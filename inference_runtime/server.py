"""The HTTP side: Open Inference Protocol v2 REST, readiness, draining, metrics.

Infer requests take a lean raw-ASGI path (decode → batch → predict → unbatch →
encode) because at thousands of requests per second a framework's routing,
request objects and validation cost more than a small model's forward pass.
Everything else (health, metadata, metrics) goes through FastAPI.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from inference_runtime import __version__
from inference_runtime.batching import Batcher
from inference_runtime.codec import ENCODE_INLINE_VALUES, decode_request, encode_response
from inference_runtime.config import Config
from inference_runtime.errors import (
    BodyTimeout,
    InvalidInput,
    ModelLoadError,
    ModelNotFound,
    NotReady,
    PayloadTooLarge,
    RuntimeFailure,
    Unsupported,
    UnsupportedEncoding,
    error_response,
    outcome_of,
)
from inference_runtime.metrics import Metrics
from inference_runtime.model import LoadedModel, load_model
from inference_runtime.offload import DECODE_INLINE_BYTES, Decoder, Signature

log = logging.getLogger("inference_runtime")

LOADING, READY, DRAINING, FAILED = "loading", "ready", "draining", "failed"
EXTENSIONS = ["binary_tensor_data"]


class ClientGone(Exception):
    pass


# How long a request waits for the model before the server listens for its client going away: a task per
# request costs more than a small model's forward pass, and a request answered sooner has nothing to drop.
LISTEN_AFTER_S = 0.05
# How long stopping waits for the decoder process (offload.py) to finish the body it decodes.
DECODER_CLOSE_S = 2.0


class Deadline:
    """A request's timeout: the task reading its body, then its place in the batching queue."""

    __slots__ = ("cut_off", "item", "listener", "reading", "task")

    def __init__(self, task: asyncio.Task):
        self.task = task
        self.reading = False  # True while the body arrives
        self.cut_off = False
        self.item = None  # set by the batcher once the request is queued
        self.listener: asyncio.Task | None = None  # waits for the client to go away while the request waits


class Runtime:
    """One model's lifecycle: loading → ready → draining, and the infer hot path."""

    def __init__(self, config: Config, *, request_exit: Callable[..., None] = lambda code, force=False: None):
        self.config = config
        self.state = LOADING
        self.model: LoadedModel | None = None
        self.signature: Signature | None = None
        self.decoder = Decoder()  # large JSON bodies
        self.batcher: Batcher | None = None
        self.metrics = Metrics(config.model_name, config.model_version)
        # One model thread: loading, warm-up and every forward pass.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.in_flight = 0
        # Read at scrape time: two metric updates per request cost more than the counter.
        self.metrics.in_flight.set_function(lambda: self.in_flight)
        self.request_exit = request_exit
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Begin loading in the background: the server answers health checks meanwhile."""
        self._loop = asyncio.get_running_loop()
        self._spawn(self._load())

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load(self) -> None:
        config = self.config
        log.info("loading %s as %s version %s", config.model_path, config.model_name, config.model_version)
        try:
            model = await asyncio.get_running_loop().run_in_executor(self.executor, load_model, config)
        except ModelLoadError as exc:
            self._fail(f"refusing to start: {exc}")
            return
        except Exception as exc:
            log.exception("loading failed")
            self._fail(f"refusing to start: the model could not be loaded: {type(exc).__name__}: {exc}")
            return
        if self.state != LOADING:  # SIGTERM arrived while loading
            return
        self.model = model
        self.signature = Signature.of(model)
        self.batcher = Batcher(
            model,
            self.executor,
            self.metrics,
            max_batch_size=config.max_batch_size,
            max_delay_s=config.max_delay_ms / 1000,
            max_queue=config.max_queue,
            in_flight=lambda: self.in_flight,
        )
        self._spawn(self.batcher.run())
        self.metrics.queue_depth.set_function(lambda: self.batcher.depth)
        self.metrics.load_seconds.set(model.load_seconds)
        if model.device.type == "cuda":
            self.metrics.watch_gpu(model.device)
        self.state = READY
        self.metrics.ready.set(1)
        log.info(
            "ready: %s (%s, %d parameters) on %s%s in %.2fs; batching %s",
            config.model_name,
            model.platform,
            model.parameter_count,
            model.device,
            f" in {config.dtype}" if model.compute_dtype is not None else "",
            model.load_seconds,
            f"up to {config.max_batch_size} rows or {config.max_delay_ms} ms" if model.batchable else "off",
        )

    def _fail(self, message: str) -> None:
        log.error(message)
        self.state = FAILED
        self.request_exit(2)

    def begin_drain(self) -> None:
        """SIGTERM: readiness turns 503, new requests are refused, in-flight ones finish."""
        if self.state in (DRAINING, FAILED):
            return
        was_loading = self.state == LOADING
        self.state = DRAINING
        self.metrics.ready.set(0)
        if was_loading:
            log.info("stopping while the model loads")
            self.request_exit(0)
            return
        log.info("draining: %d request(s) in flight, up to %.1fs", self.in_flight, self.config.drain_timeout_s)
        if self.batcher is not None:
            self.batcher.flush()
        self._spawn(self._drain())

    def begin_drain_threadsafe(self) -> bool:
        if self._loop is None:
            return False
        self._loop.call_soon_threadsafe(self.begin_drain)
        return True

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.config.drain_timeout_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self.in_flight:
            log.warning("drain timeout: %d request(s) still in flight; exiting without them", self.in_flight)
            self.abandon(f"its drain timeout ({self.config.drain_timeout_s:g} s) passed")
            self.request_exit(0, force=True)  # uvicorn would otherwise wait for them once more
        else:
            log.info("drained")
            self.request_exit(0)

    def abandon(self, why: str) -> None:
        """Stopping without waiting: the requests still waiting for the model get a 503 (retry elsewhere)
        now, before the process exits, instead of a bare 500 or a dropped connection."""
        if self.batcher is not None:
            self.batcher.abandon(
                NotReady(
                    f"the server is stopping ({why}) before this request was answered; retry",
                    headers={"retry-after": "1", "connection": "close"},
                )
            )

    def abandon_threadsafe(self, why: str) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.abandon, why)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(TimeoutError):  # past a drain timeout: the process goes with this one
            await asyncio.wait_for(asyncio.to_thread(self.decoder.close), DECODER_CLOSE_S)

    # --- protocol ----------------------------------------------------------------------
    def check_model(self, name: str, version: str | None) -> None:
        config = self.config
        if name != config.model_name or (version is not None and version != config.model_version):
            asked = name if version is None else f"{name} version {version}"
            raise ModelNotFound(
                f"model {asked!r} is not served here; this server serves {config.model_name!r} "
                f"version {config.model_version!r}"
            )

    def stalled(self) -> float | None:
        """Seconds the forward pass now running has run, when that is longer than the request timeout:
        no request could be answered in time, so readiness turns 503 (liveness stays 200) until it ends."""
        running = self.batcher.stalled_for() if self.batcher is not None else 0.0
        return running if running > self.config.request_timeout_s else None

    def ready_for_traffic(self, name: str, version: str | None) -> None:
        self.ready_model(name, version)
        stalled = self.stalled()
        if stalled is not None:
            raise NotReady(
                f"model {name!r} is not ready: its forward pass has run for {stalled:.0f} s, longer than the "
                f"request timeout ({self.config.request_timeout_s:g} s)",
                headers={"retry-after": "1"},
            )

    def ready_model(self, name: str, version: str | None) -> LoadedModel:
        self.check_model(name, version)
        if self.state != READY:
            reason = "shutting down" if self.state == DRAINING else "loading"
            raise NotReady(f"model {name!r} is not ready: the server is {reason}", headers={"retry-after": "1"})
        return self.model

    async def infer_asgi(self, scope: dict, receive: Callable, send: Callable, name: str, version: str | None) -> None:
        """POST /v2/models/{name}[/versions/{v}]/infer: the hot path."""
        loop = asyncio.get_running_loop()
        started = loop.time()  # for call_at: uvloop's clock, which moves in whole milliseconds once per iteration
        began = time.perf_counter()  # for the latency histogram, whose buckets start below a millisecond
        metrics = self.metrics
        # One timer for the whole request: past the timeout it cuts off a body still arriving (408),
        # or takes the request out of the batching queue (504).
        watch = Deadline(asyncio.current_task())
        timer = loop.call_at(started + self.config.request_timeout_s, self._deadline_passed, watch)
        self.in_flight += 1
        try:
            try:
                model = self.ready_model(name, version)
                watch.reading = True
                try:
                    header_length, body = await self._read_body(scope, receive)
                except asyncio.CancelledError:
                    if not watch.cut_off:
                        raise  # the server is stopping
                    watch.task.uncancel()
                    raise BodyTimeout(
                        f"the body did not arrive within the request timeout ({self.config.request_timeout_s:g} s)",
                        headers={"connection": "close"},
                    ) from None
                finally:
                    watch.reading = False
                if (len(body) if header_length is None else header_length) > DECODE_INLINE_BYTES:
                    request = await self.decoder.decode(body, header_length, self.signature)
                else:
                    request = decode_request(body, header_length, model)
                listen = loop.call_at(started + LISTEN_AFTER_S, self._listen, watch, receive)
                try:
                    result = await self.batcher.infer(
                        request.arrays, request.datatypes, request.rows, request.key, watch
                    )
                finally:
                    listen.cancel()
                    if watch.listener is not None:
                        watch.listener.cancel()
                answer = request, result, self.config.model_name, self.config.model_version
                if _values(result.arrays) > ENCODE_INLINE_VALUES:
                    # Written in pieces (codec.py), between which this thread lets the event loop in.
                    headers, payload = await asyncio.to_thread(encode_response, *answer)
                else:
                    headers, payload = encode_response(*answer)
                status, outcome = 200, "success"
            except ClientGone:
                metrics.client_disconnects.inc()  # nothing to answer, and not the model's doing
                return
            except Exception as exc:
                status, headers, payload = error_response(exc)
                outcome = outcome_of(exc)
                if not isinstance(exc, RuntimeFailure):
                    log.exception("unexpected error in an infer request")
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
            metrics.requests[outcome].inc()
            metrics.latency.observe(time.perf_counter() - began)
        finally:
            timer.cancel()
            self.in_flight -= 1

    def _listen(self, watch: Deadline, receive: Callable) -> None:
        """The request still waits for the model: drop it if its client goes away meanwhile."""
        item = watch.item
        if item is not None and not item.future.done():
            watch.listener = asyncio.get_running_loop().create_task(self._client_gone(receive, item))

    async def _client_gone(self, receive: Callable, item) -> None:
        # The body has been read: the next message is the disconnect (or this task is cancelled first).
        if (await receive())["type"] == "http.disconnect":
            self.batcher.expire(item, ClientGone())

    def _deadline_passed(self, watch: Deadline) -> None:
        if watch.reading:
            watch.cut_off = True
            watch.task.cancel()
        elif watch.item is not None:
            self.batcher.expire(watch.item)

    async def _read_body(self, scope: dict, receive: Callable) -> tuple[int | None, bytes]:
        limit = self.config.max_body_bytes
        header_length = codings = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                if value.isdigit() and int(value) > limit:
                    raise PayloadTooLarge(f"the body is {int(value)} bytes; this server takes at most {limit}")
            elif key == b"inference-header-content-length":
                value = value.strip()
                length = int(value) if value.isdigit() else header_length_list(value)
                if header_length is not None and length != header_length:
                    raise header_length_twice(header_length, length)
                header_length = length
            elif key == b"content-encoding":
                codings = content_codings(value, codings)  # refused (415) before the body is read
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the body is more than {limit} bytes, the most this server takes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if codings:
            body = await decode_body(body, codings, limit)
        return header_length, body

    # --- the rest of the protocol, for FastAPI ---------------------------------------------
    def model_metadata(self, name: str, version: str | None) -> dict:
        model = self.ready_model(name, version)
        return {
            "name": self.config.model_name,
            "versions": [self.config.model_version],
            "platform": model.platform,
            "inputs": [spec.as_json() for spec in model.inputs],
            "outputs": [spec.as_json() for spec in model.outputs or []],
        }


def _values(arrays: list) -> int:
    count = 0
    for array in arrays:  # a plain loop costs half of sum() over a generator
        count += array.size
    return count


def header_length_list(value: bytes) -> int:
    """An Inference-Header-Content-Length that is not one number: the same number repeated is taken (fields given
    more than once may be combined into one, comma-separated: RFC 9110 §5.3), as RFC 9110 §8.6 lets a recipient
    take a repeated Content-Length: it cannot be misread. Differing lengths could each split the body elsewhere."""
    elements = [element.strip() for element in value.split(b",")]
    if not all(element.isdigit() for element in elements):
        raise InvalidInput(f"Inference-Header-Content-Length {value.decode('latin-1')[:64]!r} is not a number")
    lengths = [int(element) for element in elements]
    for length in lengths[1:]:
        if length != lengths[0]:
            raise header_length_twice(lengths[0], length)
    return lengths[0]


def header_length_twice(first: int, second: int) -> InvalidInput:
    return InvalidInput(
        f"Inference-Header-Content-Length is given more than once, as {first} and {second}: send it once, "
        "the length of the JSON header"
    )


# Content codings (RFC 9110 §8.4.1: x-gzip is gzip) and their zlib window bits.
_WBITS = {"gzip": 31, "x-gzip": 31, "deflate": 15}
ACCEPT_ENCODING = "gzip, deflate"  # what a 415 says this server takes (RFC 9110 §12.5.3)
# Codings applied one over another that a body may list: a client applies one; each is decompressed in full.
MAX_CODINGS = 4
# A gzip body may hold several members one after another (what `cat a.gz b.gz` makes); clients send one.
MAX_GZIP_MEMBERS = 64
# Compressed bytes handed to zlib per call: what zlib copies back (unused_data, unconsumed_tail) stays this small.
_INFLATE_CHUNK = 64 * 1024
# Bytes in and out decompressed on the event loop (~1 ms); a body that needs more finishes on a thread,
# so that a large body or a gzip bomb does not hold up health checks and other requests.
_INFLATE_ON_LOOP = 256 * 1024


def unsupported_encoding(coding: str) -> UnsupportedEncoding:
    return UnsupportedEncoding(
        f"Content-Encoding {coding[:64]!r} is not supported: send the body uncompressed, or compressed with gzip "
        "(x-gzip) or deflate",
        headers={"accept-encoding": ACCEPT_ENCODING},
    )


def content_codings(value: bytes, codings: list[str] | None) -> list[str]:
    """A Content-Encoding field's codings, in the order the client applied them, added to those of the fields
    before it (a field may be repeated: RFC 9110 §5.3); identity and empty elements are no coding at all."""
    codings = [] if codings is None else codings
    for element in value.decode("latin-1").split(","):
        coding = element.strip().lower()
        if not coding or coding == "identity":
            continue
        if coding not in _WBITS:
            raise unsupported_encoding(coding)
        codings.append(coding)
        if len(codings) > MAX_CODINGS:
            raise InvalidInput(
                f"Content-Encoding lists more than {MAX_CODINGS} codings, the most this server undoes: compress "
                "the body once"
            )
    return codings


async def decode_body(body: bytes, codings: list[str], limit: int) -> bytes:
    """Undo the codings, the last applied first (RFC 9110 §8.4), each decompressed to at most `limit` bytes.
    The first _INFLATE_ON_LOOP bytes of work are done on the event loop, the rest on a thread."""
    on_loop = _INFLATE_ON_LOOP
    for coding in reversed(codings):
        inflate = Inflate(body, coding, limit)
        decoded = inflate.run(on_loop) if on_loop > 0 else None
        if decoded is None:
            decoded = await asyncio.to_thread(inflate.run)
            on_loop = 0
        else:
            on_loop -= len(body) + len(decoded)
        body = decoded
    return body


class Inflate:
    """A gzip (every member, CRC and length checked) or deflate (zlib format) body, decompressed to at most
    `limit` bytes in steps: `run` stops after a budget of work and carries on where it stopped when called again."""

    __slots__ = ("body", "encoding", "inflater", "limit", "members", "offset", "parts", "paused", "size", "wbits")

    def __init__(self, body: bytes, encoding: str, limit: int):
        wbits = _WBITS.get(encoding)
        if wbits is None:
            raise unsupported_encoding(encoding)
        self.body, self.encoding, self.limit, self.wbits = memoryview(body), encoding, limit, wbits
        self.inflater = zlib.decompressobj(wbits)
        self.members = 1
        self.offset = 0  # the first byte of the body not yet handed to zlib
        self.parts: list[bytes] = []
        self.size = 0
        self.paused = False  # the last call filled its output budget: zlib may hold more output

    def run(self, budget: int | None = None) -> bytes | None:
        """The decompressed body; None when `budget` bytes (in and out) were handled first."""
        encoding, limit, end = self.encoding, self.limit, len(self.body)
        work = 0
        while True:
            inflater = self.inflater
            if inflater.eof:
                self.offset -= len(inflater.unused_data)  # handed over, but past the end of this member
                if self.offset == end:
                    return b"".join(self.parts)
                if self.wbits != 31:
                    raise InvalidInput(f"the body has {end - self.offset} bytes after the end of its {encoding} data")
                self.members += 1
                if self.members > MAX_GZIP_MEMBERS:
                    raise InvalidInput(
                        f"the body has more than {MAX_GZIP_MEMBERS} gzip members; compress the body as one "
                        "(a client sends one member)"
                    )
                self.inflater = inflater = zlib.decompressobj(self.wbits)
                self.paused = False
            if budget is not None and work >= budget:
                return None
            if self.paused or inflater.unconsumed_tail:
                data_in = inflater.unconsumed_tail
            elif self.offset < end:
                data_in = self.body[self.offset : self.offset + _INFLATE_CHUNK]
                self.offset += len(data_in)
            else:
                raise InvalidInput(f"the body is truncated {encoding} data: its end is missing")
            room = limit - self.size + 1
            if budget is not None:
                room = min(room, budget - work)
            try:
                data = inflater.decompress(data_in, room)
            except zlib.error as exc:
                raise InvalidInput(f"the body is not valid {encoding} data: {exc}") from None
            self.size += len(data)
            if self.size > limit:
                raise PayloadTooLarge(f"the body decompresses to more than {limit} bytes, the most this server takes")
            self.parts.append(data)
            self.paused = len(data) == room
            work += len(data_in) + len(data)


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json", headers=headers)


def _error(exc: BaseException) -> Response:
    status, headers, body = error_response(exc)
    return Response(body, status_code=status, headers={k.decode(): v.decode() for k, v in headers})


def create_app(runtime: Runtime) -> Callable:
    """The ASGI application: the infer fast path in front of a FastAPI app."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        yield
        await runtime.stop()

    api = FastAPI(
        title="Slipway inference runtime",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    # HEAD as well as GET: load balancers and uptime checks often probe with HEAD.
    READ = ["GET", "HEAD"]

    @api.exception_handler(RuntimeFailure)
    async def runtime_failure(_: Request, exc: RuntimeFailure) -> Response:
        return _error(exc)

    @api.exception_handler(StarletteHTTPException)
    async def http_exception(request: Request, exc: StarletteHTTPException) -> Response:
        message = f"no such endpoint: {request.method} {request.url.path}" if exc.status_code == 404 else exc.detail
        return _json({"error": message}, exc.status_code, getattr(exc, "headers", None))

    @api.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        return _json({"error": str(exc)}, 400)

    @api.api_route("/v2/health/live", methods=READ)
    async def live() -> Response:
        return _json({"live": True})

    @api.api_route("/v2/health/ready", methods=READ)
    async def ready() -> Response:
        is_ready = runtime.state == READY and runtime.stalled() is None
        return _json({"ready": is_ready}, 200 if is_ready else 503)

    @api.api_route("/v2", methods=READ)
    async def server_metadata() -> Response:
        return _json({"name": "slipway-inference-runtime", "version": __version__, "extensions": EXTENSIONS})

    @api.api_route("/v2/models/{name}", methods=READ)
    async def model_metadata(name: str) -> Response:
        return _json(runtime.model_metadata(name, None))

    @api.api_route("/v2/models/{name}/versions/{version}", methods=READ)
    async def model_version_metadata(name: str, version: str) -> Response:
        return _json(runtime.model_metadata(name, version))

    @api.api_route("/v2/models/{name}/ready", methods=READ)
    async def model_ready(name: str) -> Response:
        runtime.ready_for_traffic(name, None)
        return _json({"name": name, "ready": True})

    @api.api_route("/v2/models/{name}/versions/{version}/ready", methods=READ)
    async def model_version_ready(name: str, version: str) -> Response:
        runtime.ready_for_traffic(name, version)
        return _json({"name": name, "ready": True})

    @api.api_route("/metrics", methods=READ)
    async def metrics() -> Response:
        return Response(runtime.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @api.post("/v2/models/{name}/infer", include_in_schema=False)
    @api.post("/v2/models/{name}/versions/{version}/infer", include_in_schema=False)
    async def infer_unreachable() -> Response:  # the fast path answers these; kept so GET gives 405
        raise Unsupported("unreachable")

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            # A trailing slash is served, not redirected: a client that does not follow a 307 would fail.
            parts = scope["path"].removesuffix("/").split("/")
            # ['', 'v2', 'models', name, 'infer'] or ['', 'v2', 'models', name, 'versions', v, 'infer']
            if parts[-1] == "infer" and len(parts) in (5, 7) and parts[1] == "v2" and parts[2] == "models":
                if len(parts) == 5:
                    await runtime.infer_asgi(scope, receive, send, parts[3], None)
                    return
                if parts[4] == "versions":
                    await runtime.infer_asgi(scope, receive, send, parts[3], parts[5])
                    return
        await api(scope, receive, send)

    app.runtime = runtime  # type: ignore[attr-defined]
    return app
