"""A real OpenAI-compatible HTTP/1.1 server on loopback, for tests, benchmarks and demos.

It runs an asyncio loop in a daemon thread (or in the foreground from the command line) and
answers chat completions (streamed and not), responses (streamed and not), embeddings and legacy
completions, with configurable latency, time to first chunk, error statuses, stalls, rate
limiting and mid-stream disconnects. It records what it received so tests can check routing.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import itertools
import json
import logging
import math
import random
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

from ._settings import UpstreamSettings

logger = logging.getLogger("openai_bluegreen.testing")

__all__ = ["RecordedRequest", "SimulatedUpstream"]

# On an answer after which the server closes the connection: a client that pooled it would
# send its next request into the closed connection.
_CLOSE = {"connection": "close"}
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 413: "Payload Too Large", 429: "Too Many Requests",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
            504: "Gateway Timeout"}
_ERROR_TYPES = {429: "rate_limit_exceeded", 500: "server_error", 502: "server_error",
                503: "server_error", 504: "server_error"}
_WORDS = ("blue", "green", "rollout", "canary", "model", "latency", "token", "stream", "steady",
          "signal")
_MAX_BODY = 8 * 1024 * 1024
_NORMAL = NormalDist()
_MAX_REMEMBERED = 100_000  # Responses API ids a server keeps for previous_response_id


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it (the Authorization header is kept for routing tests)."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int
    query: str = ""  # the raw query string, without "?"

    @property
    def model(self) -> str | None:
        value = self.body.get("model")
        return value if isinstance(value, str) else None

    @property
    def api_key(self) -> str | None:
        auth = self.headers.get("authorization", "")
        return auth[7:] if auth.lower().startswith("bearer ") else None


class _TokenBucket:
    """``rate`` requests per second, in bursts of up to one second's worth (at least one
    request: below 1 per second a request still needs a whole token)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def retry_after(self) -> int:
        """Whole seconds until the next request is admitted (``Retry-After``), at least 1."""
        return max(1, math.ceil((1 - self.tokens) / self.rate))


class SimulatedUpstream:
    """An OpenAI-compatible server on ``127.0.0.1``.

    Example:
        >>> with SimulatedUpstream("green", latency=0.05, error_rates={503: 0.02}) as up:
        ...     client = openai.OpenAI(base_url=up.base_url, api_key="test")

    Args:
        name: Shown in the ``x-upstream`` response header and in recorded requests.
        host: Loopback address to bind.
        port: Port to bind (0 = a free one).
        settings: Initial behaviour; keyword arguments override single fields.
        record_limit: How many recent requests to keep.
    """

    def __init__(self, name: str = "upstream", *, host: str = "127.0.0.1", port: int = 0,
                 settings: UpstreamSettings | None = None, record_limit: int = 10_000,
                 **overrides: Any) -> None:
        if not (host.startswith("127.") or host in ("localhost", "::1")):
            raise ValueError(f"the simulated upstream binds loopback addresses only (got {host!r})")
        self.name = name
        self.host = host
        self.port = port
        self.settings = (settings or UpstreamSettings()).replace(**overrides)
        self.requests: collections.deque[RecordedRequest] = collections.deque(maxlen=record_limit)
        self.status_counts: collections.Counter[int] = collections.Counter()
        self._rng = random.Random(self.settings.seed)
        self._ids = itertools.count(1)
        # Responses API ids are unique to this server, and it remembers the ones it made: a
        # follow-up naming another server's response (previous_response_id) is refused, as
        # OpenAI refuses a response id it does not hold.
        self._id_prefix = f"{random.getrandbits(32):08x}"
        self._response_ids: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._bucket: _TokenBucket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._lock = threading.Lock()
        self._writers: set[asyncio.StreamWriter] = set()
        self._answered: set[asyncio.StreamWriter] = set()  # connections whose answer started

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """The URL to give an ``openai`` client (with the ``/v1`` prefix)."""
        return f"http://{self.host}:{self.port}/v1"

    def configure(self, **changes: Any) -> None:
        """Change behaviour while running, e.g. ``configure(error_rates={503: 0.3})``."""
        new = self.settings.replace(**changes)
        with self._lock:
            if "seed" in changes:
                self._rng = random.Random(new.seed)
            if new.rate_limit_rps != self.settings.rate_limit_rps:
                self._bucket = None
            self.settings = new

    def start(self) -> SimulatedUpstream:
        """Start serving in a daemon thread; returns once the port accepts connections."""
        if self._thread is not None:
            return self
        self._thread = thread = threading.Thread(target=self._run_thread,
                                                 name=f"upstream-{self.name}", daemon=True)
        thread.start()
        self._ready.wait(10)
        if self._startup_error is None and self._ready.is_set():
            return self
        error = self._startup_error or RuntimeError(
            f"simulated upstream {self.name!r} did not start within 10 s")
        if self._startup_error is None:
            self.stop()
        # Forget the failed attempt, so that start() tries again.
        thread.join(5)
        self._thread = self._loop = self._startup_error = None
        self._ready.clear()
        raise error

    def stop(self) -> None:
        """Stop serving and close every open connection."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(5)
        thread.join(5)
        self._thread = None
        self._loop = None
        self._ready.clear()

    def __enter__(self) -> SimulatedUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (used by ``python -m ...testing``)."""
        asyncio.run(self._serve(forever=True))

    def _run_thread(self) -> None:
        try:
            asyncio.run(self._serve(forever=False))
        except BaseException as exc:  # reported to start()
            self._startup_error = exc
            self._ready.set()

    async def _serve(self, forever: bool) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._server = await asyncio.start_server(self._handle, self.host, self.port,
                                                  backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        if forever:
            async with self._server:
                await self._server.serve_forever()
        else:
            await self._stopped.wait()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        self._stopped.set()

    # -- HTTP ----------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                try:
                    method, target, _version = request_line.decode("latin-1").split()
                except ValueError:
                    await self._send_json(writer, 400, _error("bad request line"), _CLOSE)
                    return
                headers: dict[str, str] = {}
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    key, _, value = line.decode("latin-1").partition(":")
                    headers[key.strip().lower()] = value.strip()
                try:
                    length = int(headers.get("content-length", "0") or 0)
                except ValueError:
                    length = -1
                if length < 0:
                    await self._send_json(writer, 400, _error("invalid content-length"), _CLOSE)
                    return
                if length > _MAX_BODY:
                    await self._send_json(writer, 413, _error("body too large"), _CLOSE)
                    return
                raw = await reader.readexactly(length) if length else b""
                path, _, query = target.partition("?")
                self._answered.discard(writer)
                try:
                    keep_open = await self._dispatch(method, path, headers, raw, writer, query)
                except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
                    raise
                except Exception as exc:  # a request this simulator has no answer for
                    logger.warning("simulated upstream %s: %s %s failed", self.name, method,
                                   path, exc_info=True)
                    if writer in self._answered:  # the answer is cut where it was
                        return
                    # A whole answer, the request read whole: the connection can go on.
                    await self._send_json(writer, 500, _error(
                        f"simulated upstream {self.name} failed: {exc!r}", "server_error"))
                    continue
                if not keep_open or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            # stop() ends the loop with calls in flight (a stall, a latency, a stream between
            # chunks): their connections are already aborted. Returning, not raising, keeps
            # Python 3.11's asyncio from logging each cancelled handler as an error.
            return
        finally:
            self._writers.discard(writer)
            self._answered.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _send_json(self, writer: asyncio.StreamWriter, status: int, payload: Any,
                         extra: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self._answered.add(writer)
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
                "content-type: application/json", f"content-length: {len(body)}",
                f"x-upstream: {self.name}", f"x-request-id: req_{next(self._ids)}"]
        head += [f"{k}: {v}" for k, v in (extra or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()

    def _draw(self) -> tuple[UpstreamSettings, float, int | None, bool, bool, bool]:
        """Settings snapshot and this request's random fate: (settings, u, status, stall, cut,
        fail: a stream that reports a server error in band)."""
        with self._lock:
            settings = self.settings
            rng = self._rng
            u = rng.random()
            status = None
            acc = 0.0
            pick = rng.random()
            for code, rate in sorted(settings.error_rates.items()):
                acc += rate
                if pick < acc:
                    status = code
                    break
            stall = rng.random() < settings.stall_rate
            cut = rng.random() < settings.disconnect_rate
            # A stream is cut or fails in band, never both (the settings keep the two rates'
            # sum at most 1), so each is served at the rate asked for: of the streams not cut,
            # the share stream_failure_rate / (1 - disconnect_rate) fails. Drawn only when
            # asked for: a seed's other draws stay what they were before.
            fail = False
            if settings.stream_failure_rate > 0:
                draw = rng.random()
                fail = not cut and draw * (1 - settings.disconnect_rate) < \
                    settings.stream_failure_rate
            if settings.rate_limit_rps is not None and status is None:
                if self._bucket is None:
                    self._bucket = _TokenBucket(settings.rate_limit_rps)
                if not self._bucket.take():
                    status = 429
            # An error status wins over a stall (drawn all the same: a seed's other draws stay
            # what they were): a request answered 503 is not also held, so the statuses come
            # at the rates error_rates asks for; stalls take from the other requests.
            return settings, u, status, stall and status is None, cut, fail

    @staticmethod
    def _jitter(median: float, sigma: float, u: float) -> float:
        if median <= 0:
            return 0.0
        if sigma <= 0:
            return median
        z = _NORMAL.inv_cdf(min(max(u, 1e-9), 1 - 1e-9))
        return median * math.exp(sigma * z)

    async def _dispatch(self, method: str, path: str, headers: dict[str, str], raw: bytes,
                        writer: asyncio.StreamWriter, query: str = "") -> bool:
        route = path[3:] if path.startswith("/v1/") else path
        if route.startswith("/openai/deployments/"):  # Azure OpenAI: /openai/deployments/{d}/...
            route = "/" + route.split("/", 4)[-1] if route.count("/") >= 4 else route
        elif route.startswith("/openai/v1/"):
            route = route[len("/openai/v1"):]
        if method == "GET" and route in ("/health", "/"):
            await self._send_json(writer, 200, {"status": "ok", "name": self.name})
            return True
        if route not in ("/chat/completions", "/responses", "/embeddings", "/completions"):
            await self._send_json(writer, 404, _error(f"no route {path}"))
            return True
        if method != "POST":
            await self._send_json(writer, 405, _error("use POST"))
            return True
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
        except ValueError as exc:
            await self._send_json(writer, 400, _error(f"invalid JSON: {exc}"))
            return True
        previous = body.get("previous_response_id") if route == "/responses" else None
        if previous is not None and previous not in self._response_ids:
            self.status_counts[400] += 1
            self.requests.append(RecordedRequest(method, route, headers, body, 400, query))
            await self._send_json(writer, 400, {"error": {
                "message": f"Previous response with id '{previous}' not found.",
                "type": "invalid_request_error", "param": "previous_response_id",
                "code": "previous_response_not_found"}})
            return True
        settings, u, status, stall, cut, fail = self._draw()
        if stall:
            self.status_counts[408] += 1
            self.requests.append(RecordedRequest(method, route, headers, body, 408, query))
            await asyncio.sleep(settings.stall_seconds)
            return False
        final = status or 200
        self.status_counts[final] += 1
        self.requests.append(RecordedRequest(method, route, headers, body, final, query))
        if status is not None:
            await asyncio.sleep(self._jitter(settings.latency, settings.latency_sigma, u) / 2)
            extra = None
            if status == 429:
                with self._lock:
                    wait = 1 if self._bucket is None else self._bucket.retry_after()
                extra = {"retry-after": str(wait)}
            await self._send_json(writer, status, {"error": {
                "message": f"simulated {status} from {self.name}",
                "type": _ERROR_TYPES.get(status, "invalid_request_error"), "param": None,
                "code": "rate_limit_exceeded" if status == 429 else None}}, extra)
            return True
        if body.get("stream") is True and route != "/embeddings":
            return await self._stream(route, body, settings, u, cut, fail, writer)
        await asyncio.sleep(self._jitter(settings.latency, settings.latency_sigma, u))
        await self._send_json(writer, 200, self._complete(route, body, settings))
        return True

    # -- bodies --------------------------------------------------------------------------------
    def _input_tokens(self, body: dict[str, Any], settings: UpstreamSettings) -> int:
        if settings.input_tokens is not None:
            return settings.input_tokens
        payload = body.get("messages") or body.get("input") or body.get("prompt") or ""
        return max(1, len(json.dumps(payload)) // 4)

    def _text(self, settings: UpstreamSettings, body: dict[str, Any]) -> list[str]:
        schema = _json_schema_of(body)
        if schema is not None:
            return [json.dumps(_example(schema, schema))]
        words = [_WORDS[i % len(_WORDS)] for i in range(settings.output_tokens)]
        return [w if i == 0 else " " + w for i, w in enumerate(words)]

    def _complete(self, route: str, body: dict[str, Any], settings: UpstreamSettings) -> Any:
        model = body.get("model", "unknown")
        n_in = self._input_tokens(body, settings)
        n_out = settings.output_tokens
        now = int(time.time())
        ident = next(self._ids)
        text = "".join(self._text(settings, body))
        if route == "/chat/completions":
            return {"id": f"chatcmpl-{ident}", "object": "chat.completion", "created": now,
                    "model": model, "system_fingerprint": f"fp_{self.name}",
                    "service_tier": _service_tier(body),
                    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                 "message": {"role": "assistant", "content": text,
                                             "refusal": None}}],
                    "usage": _chat_usage(settings, n_in, n_out)}
        if route == "/completions":
            return {"id": f"cmpl-{ident}", "object": "text_completion", "created": now,
                    "model": model, "choices": [{"index": 0, "text": text, "logprobs": None,
                                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": n_in, "completion_tokens": n_out,
                              "total_tokens": n_in + n_out}}
        if route == "/embeddings":
            inputs = body.get("input")
            count = len(inputs) if isinstance(inputs, list) and inputs and not isinstance(
                inputs[0], int) else 1
            asked = body.get("dimensions")  # text-embedding-3 models shorten to it
            dims = asked if isinstance(asked, int) and not isinstance(asked, bool) and \
                asked >= 1 else settings.embedding_dimensions
            data = []
            for i in range(count):
                vector = [round(math.sin(i + d + 1), 6) for d in range(dims)]
                if body.get("encoding_format") == "base64":
                    packed = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
                    data.append({"object": "embedding", "index": i, "embedding": packed})
                else:
                    data.append({"object": "embedding", "index": i, "embedding": vector})
            return {"object": "list", "data": data, "model": model,
                    "usage": {"prompt_tokens": n_in, "total_tokens": n_in}}
        return self._response_object(self._response_id(ident), model, text, n_in, n_out,
                                     "completed", now, _service_tier(body), settings)

    def _response_id(self, ident: int) -> str:
        rid = f"resp_{self._id_prefix}{ident:06d}"
        self._response_ids[rid] = None
        if len(self._response_ids) > _MAX_REMEMBERED:
            self._response_ids.popitem(last=False)
        return rid

    @staticmethod
    def _response_object(ident: str, model: str, text: str | None, n_in: int, n_out: int,
                         status: str, now: int, tier: str, settings: UpstreamSettings
                         ) -> dict[str, Any]:
        output = [] if text is None else [{
            "type": "message", "id": f"msg_{ident}", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}]
        return {"id": ident, "object": "response", "created_at": now, "status": status,
                "model": model, "output": output, "parallel_tool_calls": True, "service_tier": tier,
                "tool_choice": "auto", "tools": [], "error": None, "incomplete_details": None,
                "instructions": None, "metadata": {}, "temperature": 1.0, "top_p": 1.0,
                "usage": None if text is None else {
                    "input_tokens": n_in, "output_tokens": n_out,
                    "total_tokens": n_in + n_out,
                    "input_tokens_details": {
                        "cached_tokens": min(settings.cached_tokens, n_in)},
                    "output_tokens_details": {
                        "reasoning_tokens": min(settings.reasoning_tokens, n_out)}}}

    def _events(self, route: str, body: dict[str, Any], settings: UpstreamSettings,
                fail: bool = False) -> Iterator[dict[str, Any] | str]:
        model = body.get("model", "unknown")
        n_in = self._input_tokens(body, settings)
        pieces = _grouped(self._text(settings, body), settings.max_stream_chunks)
        n_out = settings.output_tokens
        now = int(time.time())
        ident = next(self._ids)
        error = {"message": f"simulated server error from {self.name}", "type": "server_error",
                 "code": "server_error", "param": None}
        if fail and route != "/responses":
            yield {"error": error}  # the SDK raises this as openai.APIError
            return
        if route == "/chat/completions":
            base = {"id": f"chatcmpl-{ident}", "object": "chat.completion.chunk", "created": now,
                    "model": model, "system_fingerprint": f"fp_{self.name}",
                    "service_tier": _service_tier(body)}
            for i, piece in enumerate(pieces):
                delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
                yield {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None,
                                            "logprobs": None}]}
            yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop",
                                        "logprobs": None}]}
            yield from _usage_chunk(body, base, _chat_usage(settings, n_in, n_out))
            yield "[DONE]"
        elif route == "/completions":
            base = {"id": f"cmpl-{ident}", "object": "text_completion", "created": now,
                    "model": model}
            for piece in pieces:
                yield {**base, "choices": [{"index": 0, "text": piece, "logprobs": None,
                                            "finish_reason": None}]}
            yield {**base, "choices": [{"index": 0, "text": "", "logprobs": None,
                                        "finish_reason": "stop"}]}
            yield from _usage_chunk(body, base, {"prompt_tokens": n_in, "completion_tokens": n_out,
                                                 "total_tokens": n_in + n_out})
            yield "[DONE]"
        else:
            rid = self._response_id(ident)
            mid = f"msg_{rid}"
            seq = itertools.count()
            pending = self._response_object(rid, model, None, n_in, n_out, "in_progress", now,
                                            _service_tier(body), settings)
            yield {"type": "response.created", "sequence_number": next(seq), "response": pending}
            yield {"type": "response.in_progress", "sequence_number": next(seq),
                   "response": pending}
            if fail:
                failed = {**pending, "status": "failed", "error": {
                    "code": "server_error", "message": error["message"]}}
                yield {"type": "response.failed", "sequence_number": next(seq),
                       "response": failed}
                return
            item = {"type": "message", "id": mid, "status": "in_progress", "role": "assistant",
                    "content": []}
            yield {"type": "response.output_item.added", "sequence_number": next(seq),
                   "output_index": 0, "item": item}
            yield {"type": "response.content_part.added", "sequence_number": next(seq),
                   "item_id": mid, "output_index": 0, "content_index": 0,
                   "part": {"type": "output_text", "text": "", "annotations": []}}
            for piece in pieces:
                yield {"type": "response.output_text.delta", "sequence_number": next(seq),
                       "item_id": mid, "output_index": 0, "content_index": 0, "delta": piece,
                       "logprobs": []}
            text = "".join(pieces)
            yield {"type": "response.output_text.done", "sequence_number": next(seq),
                   "item_id": mid, "output_index": 0, "content_index": 0, "text": text,
                   "logprobs": []}
            part = {"type": "output_text", "text": text, "annotations": []}
            yield {"type": "response.content_part.done", "sequence_number": next(seq),
                   "item_id": mid, "output_index": 0, "content_index": 0, "part": part}
            yield {"type": "response.output_item.done", "sequence_number": next(seq),
                   "output_index": 0, "item": {**item, "status": "completed", "content": [part]}}
            done = self._response_object(rid, model, text, n_in, n_out, "completed", now,
                                         _service_tier(body), settings)
            yield {"type": "response.completed", "sequence_number": next(seq), "response": done}

    async def _stream(self, route: str, body: dict[str, Any], settings: UpstreamSettings,
                      u: float, cut: bool, fail: bool, writer: asyncio.StreamWriter) -> bool:
        events = list(self._events(route, body, settings, fail))  # may fail: before answering
        head = ["HTTP/1.1 200 OK", "content-type: text/event-stream", "cache-control: no-cache",
                "transfer-encoding: chunked", f"x-upstream: {self.name}",
                f"x-request-id: req_{next(self._ids)}"]
        self._answered.add(writer)
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        await writer.drain()
        await asyncio.sleep(self._jitter(settings.ttfc, settings.latency_sigma, u))
        # A stream chosen for a cut never ends cleanly: one shorter than the cut point is cut
        # before its last event (a client stops reading at [DONE] or response.completed).
        cut_at = min(settings.disconnect_after_chunks, len(events) - 1) if cut else len(events)
        for sent, event in enumerate(events):
            if sent >= cut_at:
                writer.transport.abort()  # the client sees an incomplete chunked body
                return False
            if sent and settings.chunk_interval:
                await asyncio.sleep(settings.chunk_interval)
            if isinstance(event, str):
                frame = f"data: {event}\n\n".encode()
            elif route == "/responses":
                frame = f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
            else:
                frame = f"data: {json.dumps(event)}\n\n".encode()
            writer.write(b"%x\r\n%s\r\n" % (len(frame), frame))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


def _error(message: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    """An error body with every field of OpenAI's ``Error`` (type, message, param, code)."""
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _chat_usage(settings: UpstreamSettings, n_in: int, n_out: int) -> dict[str, Any]:
    """A chat completion's usage, with its details as OpenAI reports them."""
    return {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out,
            "prompt_tokens_details": {"cached_tokens": min(settings.cached_tokens, n_in),
                                      "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": min(settings.reasoning_tokens, n_out), "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def _grouped(words: list[str], most: int) -> list[str]:
    """``words`` in at most ``most`` pieces of consecutive words, as even as can be: a long
    answer streams in fewer chunks, all of its text (the same as when not streamed)."""
    if len(words) <= most:
        return words
    size, extra = divmod(len(words), most)
    bounds = [i * size + min(i, extra) for i in range(most + 1)]
    return ["".join(words[a:b]) for a, b in itertools.pairwise(bounds)]


def _usage_chunk(body: dict[str, Any], base: dict[str, Any], usage: dict[str, Any]
                 ) -> Iterator[dict[str, Any]]:
    """The last chunk of a chat or legacy completion stream, with the usage, when the request
    asked for it (``stream_options.include_usage``)."""
    options = body.get("stream_options") or {}
    if isinstance(options, dict) and options.get("include_usage"):
        yield {**base, "choices": [], "usage": usage}


def _service_tier(body: dict[str, Any]) -> str:
    """The tier that "served" the request, as OpenAI reports it: the one asked for, or
    ``default`` (for ``auto`` or none)."""
    tier = body.get("service_tier")
    return tier if tier in ("default", "flex", "priority", "scale") else "default"


def _json_schema_of(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema a structured-output request asks for (chat or Responses API)."""
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return schema if isinstance(schema, dict) else None
    text = body.get("text")
    if isinstance(text, dict):
        fmt = text.get("format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            schema = fmt.get("schema")
            return schema if isinstance(schema, dict) else None
    return None


def _example(schema: dict[str, Any], root: dict[str, Any], depth: int = 0) -> Any:
    """A small instance that satisfies a (pydantic-generated) JSON schema."""
    if depth > 8 or not isinstance(schema, dict):  # ``true``: anything goes
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        node: Any = root
        for part in ref[2:].split("/"):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return _example(node, root, depth + 1)
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return _example(schema[key][0], root, depth + 1)
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = kind[0] if kind else "null"
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {name: _example(sub, root, depth + 1) for name, sub in props.items()}
    if kind == "array":
        return []
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "example"
