"""Real services for tests: redis-server, Prometheus and plain HTTP stubs on free loopback ports.

Each starts its own instance (no shared state, nothing outside a temporary directory) and stops
it afterwards. A missing binary skips the test on a developer machine and fails it under CI
(``CI=true``), where ``.ci/run`` installs the Debian packages.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from openai_bluegreen._call import sdk_http

__all__ = ["EMPTY_MATRIX", "HttpStub", "PrometheusServer", "RedisServer", "free_port",
           "need_binary", "prometheus_server", "redis_server", "sdk_http"]


class HttpStub:
    """A loopback HTTP server answering every GET with ``answer()`` (content type, body), after
    ``delay`` seconds: a Prometheus API that is slow or empty, a ``/metrics`` page."""

    def __init__(self, answer: Callable[[], tuple[str, bytes]], *, delay: float = 0.0) -> None:
        self.requests = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                time.sleep(delay)
                content_type, body = answer()
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the client gave up meanwhile
                    self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> HttpStub:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def EMPTY_MATRIX() -> tuple[str, bytes]:
    """A Prometheus API answer without any series."""
    return "application/json", json.dumps(
        {"status": "success", "data": {"resultType": "matrix", "result": []}}).encode()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def need_binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install -y {package}; .ci/run does this)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + ": CI must not skip it")
        pytest.skip(message)
    return path


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 15.0
               ) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:g}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class RedisServer:
    """A running redis-server. ``stop()``/``start()`` simulate an outage on the same port."""

    port: int
    password: str | None
    workdir: Path
    binary: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir)]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, self.proc, "redis-server")

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None


@contextmanager
def redis_server(tmp: Path, password: str | None = None) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), password, tmp, need_binary("redis-server", "redis-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class PrometheusServer:
    """A running Prometheus scraping ``targets`` every ``scrape_interval``."""

    port: int
    config: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"Prometheus at {self.url} not ready within {timeout:g}s")


@contextmanager
def prometheus_server(tmp: Path, targets: Sequence[str], *, scrape_interval: str = "1s",
                      rule_files: Sequence[Path] = (), extra_args: Sequence[str] = ()
                      ) -> Iterator[PrometheusServer]:
    """Prometheus on a free loopback port scraping ``targets`` (``host:port``, path /metrics)."""
    binary = need_binary("prometheus", "prometheus")
    port = free_port()
    config = tmp / "prometheus.yml"
    lines = ["global:", f"  scrape_interval: {scrape_interval}",
             f"  evaluation_interval: {scrape_interval}"]
    if rule_files:
        lines.append("rule_files:")
        lines.extend(f"  - {path}" for path in rule_files)
    lines += ["scrape_configs:", "  - job_name: app", "    static_configs:",
              "      - targets: [" + ", ".join(f"'{t}'" for t in targets) + "]"]
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = tmp / "prometheus-data"
    data.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
         f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle",
         "--storage.tsdb.retention.time=1h", *extra_args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = PrometheusServer(port, config, proc)
    try:
        _wait_port(port, proc, "prometheus", timeout=30)
        server.wait_ready()
        yield server
    finally:
        _stop(proc)
