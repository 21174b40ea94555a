"""A simulated upstream in a child process, steered from this one.

A :class:`SimulatedUpstream` in a thread shares the app's GIL. When the app's process is short of
CPU, the server's event loop waits for the GIL like every other thread, and the upstream with
more traffic (blue, early in a rollout) falls behind more: its latency grows while the other's
does not, which is an artefact of the simulation, not a property of either model. In its own
process an upstream's latency is what its settings say, whatever the app's process is doing.

The child is ``python -m openai_bluegreen.testing --control``: it prints its address, then
takes one JSON command per line on its standard input and answers each on its standard output.
It stops when its standard input closes, so it never outlives the process that started it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import selectors
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import IO, Any

from ._server import SimulatedUpstream
from ._settings import UpstreamSettings

__all__ = ["UpstreamProcess"]

_START_TIMEOUT = 60.0  # seconds for the child to import the package and bind its port
_ANSWER_TIMEOUT = 10.0  # seconds for the child to answer a command


class UpstreamProcess:
    """A :class:`SimulatedUpstream` served by a child process.

    Example:
        >>> with UpstreamProcess("green", latency=0.05, error_rates={503: 0.02}) as up:
        ...     client = openai.OpenAI(base_url=up.base_url, api_key="test")
        ...     up.configure(latency=0.1)

    Args:
        name: Shown in the ``x-upstream`` response header.
        host: Loopback address to bind.
        port: Port to bind (0 = a free one).
        settings: Initial behaviour; keyword arguments override single fields, as with
            :class:`SimulatedUpstream`. Checked here, so a bad value or an unknown name raises
            before any process starts.

    Requests are not recorded here (they stay in the child): use :class:`SimulatedUpstream`
    when a test reads ``requests``.
    """

    def __init__(self, name: str = "upstream", *, host: str = "127.0.0.1", port: int = 0,
                 settings: UpstreamSettings | None = None, **overrides: Any) -> None:
        # Raises naming the bad field, or an unknown one (record_limit is not the child's).
        resolved = (settings or UpstreamSettings()).replace(**overrides)
        SimulatedUpstream(name, host=host, port=port, settings=resolved)  # loopback only
        self.name = name
        self.host = host
        self.port = port
        default = UpstreamSettings()
        self._settings = {f.name: getattr(resolved, f.name) for f in dataclasses.fields(resolved)
                          if getattr(resolved, f.name) != getattr(default, f.name)}
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        """The URL to give an ``openai`` client (with the ``/v1`` prefix); known once started."""
        if self._proc is None:
            raise RuntimeError(f"simulated upstream {self.name!r} is not started")
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> UpstreamProcess:
        """Start the child and return once its port accepts connections with the settings
        given. Idempotent while running."""
        if self._proc is not None:
            return self
        proc = subprocess.Popen(
            [sys.executable, "-m", "openai_bluegreen.testing", "--control", "--name", self.name,
             "--host", self.host, "--port", str(self.port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            ready = _read_answer(proc, _START_TIMEOUT, f"simulated upstream {self.name!r}")
            self.port = int(ready["port"])
            self._proc = proc
            if self._settings:
                self.configure(**self._settings)
        except BaseException:
            self._proc = None
            _end(proc)
            raise
        return self

    def configure(self, **changes: Any) -> None:
        """Change behaviour while running, e.g. ``configure(latency=0.2)``. A bad value raises
        the same error as :meth:`SimulatedUpstream.configure`, and changes nothing."""
        with self._lock:
            proc = self._proc
            if proc is None or proc.stdin is None:
                raise RuntimeError(f"simulated upstream {self.name!r} is not started")
            try:
                proc.stdin.write(json.dumps({"configure": encode(changes)}) + "\n")
                proc.stdin.flush()
            except OSError as exc:
                raise RuntimeError(f"simulated upstream {self.name!r} has stopped "
                                   f"(exit code {proc.poll()})") from exc
            answer = _read_answer(proc, _ANSWER_TIMEOUT, f"simulated upstream {self.name!r}")
        if "error" in answer:
            kind = TypeError if answer.get("kind") == "TypeError" else ValueError
            raise kind(answer["error"])

    def stop(self) -> None:
        """Stop the child (it closes every connection as it exits)."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None:
            _end(proc)

    def __enter__(self) -> UpstreamProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def encode(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings as JSON can carry them: ``error_rates`` as ``[[status, rate], ...]`` (JSON
    object keys are strings, and a status must stay a number)."""
    out = dict(settings)
    if isinstance(out.get("error_rates"), Mapping):
        out["error_rates"] = [[status, rate] for status, rate in out["error_rates"].items()]
    return out


def decode(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`encode`."""
    out = dict(settings)
    if isinstance(out.get("error_rates"), list):
        out["error_rates"] = {status: rate for status, rate in out["error_rates"]}
    return out


def _read_answer(proc: subprocess.Popen[str], timeout: float, what: str) -> dict[str, Any]:
    """The child's next line, as a JSON object; raises if it exits or stays silent."""
    out = proc.stdout
    assert out is not None
    with selectors.DefaultSelector() as selector:
        selector.register(out, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise RuntimeError(f"{what} did not answer within {timeout:g} s")
    line = out.readline()
    if not line:
        raise RuntimeError(f"{what} exited (code {proc.wait(5)}); its error output says why")
    answer: dict[str, Any] = json.loads(line)
    return answer


def _end(proc: subprocess.Popen[str]) -> None:
    stdin: IO[str] | None = proc.stdin
    if stdin is not None:
        with contextlib.suppress(OSError):
            stdin.close()  # the child's signal to stop
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()
