"""A slow or stuck dependency never freezes the watcher, the CLI or ``uninstall()``.

Every dependency here is real and on loopback: a Prometheus stand-in (a real HTTP server in a
thread) that trickles its answer one byte at a time, and a child process holding the file
store's lock.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

import openai_bluegreen
from openai_bluegreen import _state, load_config
from openai_bluegreen._control import apply_action
from openai_bluegreen._rollout import Action
from openai_bluegreen._watcher import Watcher
from openai_bluegreen.sources import SourceUnavailable
from openai_bluegreen.sources.prometheus import PrometheusSource
from openai_bluegreen.stores import StoreUnavailable, open_store
from openai_bluegreen.stores.file import FileStore
from openai_bluegreen.testing import SimulatedUpstream

from .conftest import BLUE_KEY, rollout_config

SCHEDULE = {"steps": [10, 50, 100], "min_step_duration": "10m", "min_requests": 50}
HOLD_LOCK = ("import fcntl, os, sys, time\n"
             "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
             "fcntl.flock(fd, fcntl.LOCK_EX)\n"
             "print('locked', flush=True)\n"
             "time.sleep(60)\n")


@contextlib.contextmanager
def trickling_prometheus() -> Iterator[str]:
    """An HTTP server on 127.0.0.1 that promises 100 000 bytes and sends one every 0.2 s
    (each receive is well within any socket timeout; the whole answer never is)."""
    stop = threading.Event()

    class Trickle(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            with contextlib.suppress(OSError):
                while not stop.wait(0.2):
                    self.wfile.write(b" ")
                    self.wfile.flush()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextlib.contextmanager
def lock_held_by_another_process(lock_path: Path) -> Iterator[None]:
    """A child process holding ``flock(LOCK_EX)`` on ``lock_path`` until the block ends."""
    child = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock_path)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        yield
    finally:
        child.kill()
        child.wait(5)
        if child.stdout is not None:
            child.stdout.close()


def _until(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _file_config(tmp_path: Path, green: SimulatedUpstream, metrics_source: str
                 ) -> dict[str, Any]:
    config = rollout_config(green, schedule=SCHEDULE, analysis={"interval": "0.2s"})
    config["state"] = f"file://{tmp_path}/state.json"
    config["metrics_source"] = metrics_source
    return config


# -- 1. a Prometheus that trickles its answer ---------------------------------------------
def test_a_trickled_prometheus_answer_is_given_up_on_at_the_source_timeout() -> None:
    with trickling_prometheus() as url:
        source = PrometheusSource(url, timeout=1.0)
        started = time.monotonic()
        with pytest.raises(SourceUnavailable, match=r"did not answer within 1s"):
            source.snapshot(time.time())
        assert time.monotonic() - started < 2.0


def test_the_watcher_follows_the_store_while_its_metric_source_is_stuck(
        tmp_path: Path) -> None:
    """Operator actions reach the app in a poll even when a look takes far longer (here a
    source with a 30 s timeout on a Prometheus that never finishes its answer)."""
    config = load_config({"state": f"file://{tmp_path}/state.json", "rollouts": [{
        "name": "chat", "match": {"model": "m"}, "blue": {"model": "a"}, "green": {"model": "b"},
        "schedule": SCHEDULE, "analysis": {"interval": "0.2s"}}]})
    rollout = config.rollouts[0]
    operator = open_store(config.state)
    apply_action(operator, rollout, Action.SET_WEIGHT, weight=50.0, actor="alice", reason="")
    applied: dict[str, float] = {}
    with trickling_prometheus() as url:
        watcher = Watcher(config, open_store(config.state), PrometheusSource(url, timeout=30.0),
                          apply_weight=applied.__setitem__, poll=0.1)
        watcher.start()
        try:
            assert _until(lambda: applied.get("chat") == 50.0, 3.0), applied
            time.sleep(0.5)  # the watcher is inside its (stuck) look now
            apply_action(operator, rollout, Action.ROLLBACK, actor="alice", reason="bad")
            assert _until(lambda: applied.get("chat") == 0.0, 2.0), applied
            assert watcher.states()["chat"].phase.value == "rolled_back"
            started = time.monotonic()
        finally:
            watcher.stop(timeout=1.0)
        assert time.monotonic() - started < 2.0  # stop() is bounded even mid-look


def test_a_rollback_reaches_the_app_while_prometheus_trickles(
        install: Any, tmp_path: Path, blue: SimulatedUpstream,
        green: SimulatedUpstream) -> None:
    with trickling_prometheus() as url:
        config = _file_config(tmp_path, green, url)
        rollout = load_config(config).rollouts[0]
        operator = open_store(config["state"])
        apply_action(operator, rollout, Action.SET_WEIGHT, weight=50.0, actor="alice",
                     reason="")
        install(config)
        client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
        assert _until(lambda: openai_bluegreen.status()["rollouts"][0]["weight"] == 50.0, 3.0)
        time.sleep(0.5)  # let the watcher get into a look on the trickling Prometheus
        apply_action(operator, rollout, Action.ROLLBACK, actor="alice", reason="emergency")
        assert _until(lambda: openai_bluegreen.status()["rollouts"][0]["weight"] == 0.0, 3.0)
        before = len(green.requests)
        for _ in range(20):
            client.chat.completions.create(model="gpt-4.1",
                                           messages=[{"role": "user", "content": "hi"}])
        assert len(green.requests) == before
        # The stuck look is reported, not hidden: the source timed out (2 s by default).
        assert _until(lambda: "did not answer within" in str(
            openai_bluegreen.status()["watcher"]["problem"]), 4.0), openai_bluegreen.status()
        started = time.monotonic()
        openai_bluegreen.uninstall()
        assert time.monotonic() - started < 3.0


# -- 2. another process holds the file store's lock ---------------------------------------
def test_the_file_store_gives_up_on_a_lock_another_process_holds(tmp_path: Path) -> None:
    store = FileStore(f"file://{tmp_path}/state.json", lock_timeout=0.5)
    rollout = load_config({"rollouts": [{
        "name": "chat", "match": {"model": "m"}, "blue": {"model": "a"}, "green": {"model": "b"},
        "schedule": SCHEDULE}]}).rollouts[0]
    apply_action(store, rollout, Action.PAUSE, actor="a", reason="")
    with lock_held_by_another_process(tmp_path / "state.json.lock"):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"state\.json\.lock.*another process"):
            apply_action(store, rollout, Action.RESUME, actor="a", reason="")
        assert time.monotonic() - started < 1.5
        with pytest.raises(StoreUnavailable, match="another process"):
            store.acquire_lease("me", 5.0)
        state = store.load("chat")  # readers take no lock
        assert state is not None and state.phase.value == "paused"
    apply_action(store, rollout, Action.RESUME, actor="a", reason="")  # free again


def test_the_cli_reports_a_held_lock_in_one_line_and_exits_1(tmp_path: Path) -> None:
    config = tmp_path / "openai-bluegreen.yaml"
    config.write_text(yaml.safe_dump({"state": f"file://{tmp_path}/state.json", "rollouts": [{
        "name": "chat", "match": {"model": "m"}, "blue": {"model": "a"}, "green": {"model": "b"},
        "schedule": SCHEDULE}]}), encoding="utf-8")
    with lock_held_by_another_process(tmp_path / "state.json.lock"):
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "openai_bluegreen", "rollback", "chat", "--reason", "x",
             "--config", str(config)],
            capture_output=True, text=True, timeout=30, check=False,
            env={"OPENAI_BLUEGREEN_ACTOR": "alice", "PATH": "/usr/bin:/bin"})
        assert time.monotonic() - started < 9.0
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(tmp_path / "state.json.lock") in lines[0] and "another process" in lines[0]


def test_uninstall_returns_promptly_while_another_process_holds_the_lock(
        install: Any, tmp_path: Path, green: SimulatedUpstream) -> None:
    install(_file_config(tmp_path, green, "local"))
    watcher = _state.watcher
    assert watcher is not None
    assert _until(lambda: watcher.leader, 3.0)
    with lock_held_by_another_process(tmp_path / "state.json.lock"):
        time.sleep(0.5)  # the leader is now waiting for the lock inside a look
        assert _until(lambda: "another process" in str(watcher.problem), 8.0), watcher.problem
        thread = watcher._thread
        assert thread is not None and thread.daemon
        started = time.monotonic()
        openai_bluegreen.uninstall()
        assert time.monotonic() - started < 3.0
    # Once the lock is free, the left-behind look ends on its own and hands the lease over.
    thread.join(7.0)
    assert not thread.is_alive()
    assert "lease" not in json.loads((tmp_path / "state.json").read_text(encoding="utf-8"))


# -- 3. a problem is logged when it starts and when it clears, not on every look ----------
def test_a_lasting_store_problem_is_logged_once_and_its_end_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.json"
    config = load_config({"state": f"file://{path}", "rollouts": [{
        "name": "chat", "match": {"model": "m"}, "blue": {"model": "a"}, "green": {"model": "b"},
        "schedule": SCHEDULE}]})
    watcher = Watcher(config, open_store(config.state), None)
    caplog.set_level(logging.INFO, logger="openai_bluegreen.watcher")
    path.write_text("{broken", encoding="utf-8")
    for _ in range(4):
        watcher.look()
        with contextlib.suppress(StoreUnavailable):
            watcher.sync()
    assert watcher.problem is not None and "not a valid state file" in watcher.problem
    path.unlink()
    watcher.look()
    watcher.look()
    assert watcher.problem == "holding: no metric source"  # the store's problem is over
    _assert_logged_once_then_recovered(caplog)
    watcher.stop()


def test_a_held_lock_is_logged_once_although_reads_keep_working(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = load_config({"state": f"file://{tmp_path}/state.json", "rollouts": [{
        "name": "chat", "match": {"model": "m"}, "blue": {"model": "a"}, "green": {"model": "b"},
        "schedule": SCHEDULE}]})
    watcher = Watcher(config, FileStore(config.state, lock_timeout=0.2), None)
    caplog.set_level(logging.INFO, logger="openai_bluegreen.watcher")
    with lock_held_by_another_process(tmp_path / "state.json.lock"):
        for _ in range(3):
            watcher.look()
        assert watcher.problem is not None and "another process" in watcher.problem
    watcher.look()
    assert watcher.problem == "holding: no metric source"  # the lock's problem is over
    _assert_logged_once_then_recovered(caplog)
    watcher.stop()


def _assert_logged_once_then_recovered(caplog: pytest.LogCaptureFixture) -> None:
    """One warning when the problem started, one info line when it ended (the watcher's own
    "no metric source" hold, which lasts throughout, left aside)."""
    records = [(r.levelno, r.getMessage()) for r in caplog.records
               if "no metric source" not in r.getMessage()]
    assert [level for level, _ in records] == [logging.WARNING, logging.INFO], records


def test_a_rollback_is_never_undone_by_the_lookers_slow_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, green: SimulatedUpstream,
) -> None:
    """The looker's write lands, its reply is slow; meanwhile an operator rolls back and the
    follower applies it. When the slow reply returns, its older state must not be pushed."""
    real_cas = FileStore.compare_and_set
    looker_wrote = threading.Event()

    def slow_reply(self: FileStore, state: Any, expected: int | None, *,
                   holder: str | None = None) -> bool:
        written = real_cas(self, state, expected, holder=holder)
        if (written and threading.current_thread().name == "openai-bluegreen-watcher"
                and state.phase.value == "progressing"):
            looker_wrote.set()
            time.sleep(0.6)
        return written

    monkeypatch.setattr(FileStore, "compare_and_set", slow_reply)
    monkeypatch.setenv("GREEN_API_KEY", "green-key")
    config = rollout_config(green, schedule=SCHEDULE, analysis={"interval": "5s"})
    config["rollouts"][0].pop("weight")
    config |= {"state": f"file://{tmp_path}/state.json", "metrics_source": "local"}
    openai_bluegreen.install(config)
    try:
        router = _state.router
        assert router is not None
        assert looker_wrote.wait(15)
        openai_bluegreen.rollback("chat-upgrade", reason="bad green")
        deadline = time.monotonic() + 1.5
        weights = set()
        while time.monotonic() < deadline:
            weights.add(router.rollouts["chat-upgrade"].weight_bp)
            time.sleep(0.01)
        assert weights == {0}
    finally:
        openai_bluegreen.uninstall()


def test_a_prometheus_trickling_its_status_line_is_given_up_on_at_the_source_timeout() -> None:
    """The deadline covers the status line and headers too, not only the body."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def trickle() -> None:
        with contextlib.suppress(OSError):
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000:
                    if stop.wait(0.2):
                        return
                    conn.send(bytes([byte]))

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        source = PrometheusSource(f"http://127.0.0.1:{server.getsockname()[1]}", timeout=1.0)
        started = time.monotonic()
        with pytest.raises(SourceUnavailable, match=r"did not answer within 1s"):
            source.snapshot(time.time())
        assert time.monotonic() - started < 2.0
    finally:
        stop.set()
        server.close()
        thread.join(5)
