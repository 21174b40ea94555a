"""Operator edges: status shows what apps route, run-watcher refuses a store no app reads and hands
its lease over when stopped (after a store blip, or mid-look), and watch refuses an interval it
cannot sleep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from openai_bluegreen._config import load_config
from openai_bluegreen._rollout import Action, initial_state, transition
from openai_bluegreen._watcher import Watcher
from openai_bluegreen.cli import main
from openai_bluegreen.stores import StoreUnavailable
from openai_bluegreen.stores.memory import MemoryStore

from .services import EMPTY_MATRIX, HttpStub, redis_server

SRC = str(Path(__file__).resolve().parent.parent / "src")


def _rollout(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "match": {"model": f"m-{name}"}, "blue": {"model": "a"},
            "green": {"model": "b"}, **extra}


def _write(tmp_path: Path, data: dict[str, Any], name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


# 1 -------------------------------------------------------------------------------------------
def test_status_shows_the_weight_apps_use_for_a_rollout_without_schedule(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A rollout that had a schedule (and was promoted) and then had it removed from the config:
    apps route it at its configured weight (10 %) and ignore the store, yet status reports the
    stored 'promoted, 100 %'."""
    state = f"file://{tmp_path}/state.json"
    schedule = {"steps": [10, 50, 100], "min_step_duration": "10m", "min_requests": 50}
    before = _write(tmp_path, {"state": state,
                               "rollouts": [_rollout("fixed", schedule=schedule)]}, "old.yaml")
    assert main(["promote", "fixed", "--reason", "evals passed", "--config", str(before)]) == 0
    now = _write(tmp_path, {"state": state, "rollouts": [_rollout("fixed", weight=10)]})
    capsys.readouterr()

    assert main(["status", "--json", "--config", str(now)]) == 0
    row = json.loads(capsys.readouterr().out)["rollouts"][0]
    # What an app with this config does (it never reads the store for this rollout):
    import openai_bluegreen
    openai_bluegreen.install(str(now))
    try:
        app_weight = openai_bluegreen.status()["rollouts"][0]["weight"]
    finally:
        openai_bluegreen.uninstall()
    assert app_weight == 10.0
    assert row["weight"] == app_weight, (row["phase"], row["weight"])


# 2 -------------------------------------------------------------------------------------------
def test_run_watcher_refuses_the_memory_store(tmp_path: Path) -> None:
    """With ``state: memory`` run-watcher decides into its own process's memory, which no app
    ever reads; every other operator action refuses that store with exit 2."""
    config = _write(tmp_path, {"state": "memory", "metrics_source": "http://127.0.0.1:9",
                               "rollouts": [_rollout("chat", schedule={"steps": [10, 100]})]})
    proc = subprocess.Popen(
        [sys.executable, "-m", "openai_bluegreen", "run-watcher", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": SRC})
    try:
        _out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
        pytest.fail(f"run-watcher ran on a memory store instead of refusing it: {out!r}")
    assert proc.returncode == 2 and "state" in err and "memory" in err, err


# 3 -------------------------------------------------------------------------------------------
class _LeaseStore(MemoryStore):
    """A memory store whose lease is shared like Redis's, and whose reads can fail (a blip)."""

    def __init__(self) -> None:
        super().__init__()
        self.lease: str | None = None
        self.fail = False

    def load_all(self):  # type: ignore[no-untyped-def]
        if self.fail:
            raise StoreUnavailable("Redis unreachable (blip)")
        return super().load_all()

    def acquire_lease(self, holder: str, ttl: float) -> bool:
        if self.lease in (None, holder):
            self.lease = holder
            return True
        return False

    def release_lease(self, holder: str) -> None:
        if self.lease == holder:
            self.lease = None


def test_a_watcher_stopping_after_a_store_blip_releases_the_lease_it_holds() -> None:
    """A read blip on the last look clears ``leader`` but not the lease in the store; a clean
    stop then skips the release and the fleet has no leader until the lease expires
    (3 x interval + 1 s)."""
    config = load_config({"state": "memory",
                          "rollouts": [_rollout("chat", schedule={"steps": [10, 100]})]})
    store = _LeaseStore()
    watcher = Watcher(config, store, None, clock=lambda: 1000.0)
    watcher.look()
    assert watcher.leader and store.lease == watcher.holder
    store.fail = True
    watcher.look()  # the blip: this look could not read the store
    store.fail = False
    assert store.lease == watcher.holder  # still held in the store
    watcher.stop()
    assert store.lease is None, "the stopped watcher left its lease held"


# 4 -------------------------------------------------------------------------------------------
def test_run_watcher_sigterm_during_a_slow_look_hands_the_lease_over(tmp_path: Path) -> None:
    """SIGTERM while the leader's look is in Prometheus queries (each answered within the
    source's 2 s timeout, but a look of several: rebuilding a progressing rollout's windows):
    stop() gives up after 2 s, the process exits 0 saying 'watcher stopped', and the lease
    stays in Redis for 3 x interval + 1 s, so no watcher leads meanwhile."""
    import redis as redis_py

    server = HttpStub(EMPTY_MATRIX, delay=1.5)
    try:
        with redis_server(tmp_path) as redis:
            schedule = {"steps": [10, 50, 100], "min_step_duration": "10m",
                        "min_requests": 50}
            config = _write(tmp_path, {
                "state": redis.url, "metrics_source": server.url,
                "rollouts": [_rollout("chat", schedule=schedule,
                                      analysis={"interval": "10s"})]})
            rollout = load_config(str(config)).rollouts[0]
            # A rollout under way for an hour: the new leader rebuilds its windows.
            from openai_bluegreen.stores.redis import RedisStore
            store = RedisStore(redis.url)
            started = transition(rollout, initial_state(rollout), Action.START,
                                 time.time() - 3600, actor="watcher", reason="start")
            assert store.compare_and_set(started, None)
            store.close()

            proc = subprocess.Popen(
                [sys.executable, "-m", "openai_bluegreen", "run-watcher", "--config",
                 str(config)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                env={**os.environ, "PYTHONPATH": SRC})
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    if "this watcher is the leader" in line:
                        break
                time.sleep(3.0)  # past the look's first query: rebuilding from history
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(20) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(5)
                if proc.stdout is not None:
                    proc.stdout.close()
            client = redis_py.Redis(port=redis.port, decode_responses=True)
            holder, ttl_ms = client.get("openai-bluegreen:lease"), client.pttl(
                "openai-bluegreen:lease")
            client.close()
            assert holder is None, (f"run-watcher exited but its lease ({holder}) stays for "
                                    f"another {ttl_ms / 1000:.0f}s: no leader meanwhile")
    finally:
        server.close()


# 5 -------------------------------------------------------------------------------------------
def test_watch_refuses_an_interval_too_large_to_sleep(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``watch --interval 1e300`` passes the argument check, prints one frame, then dies in
    time.sleep() with an OverflowError traceback (exit 1) instead of a usage error (exit 2)
    naming --interval."""
    monkeypatch.setenv("OPENAI_BLUEGREEN_PLAIN", "1")
    config = _write(tmp_path, {"state": f"file://{tmp_path}/state.json",
                               "rollouts": [_rollout("chat", schedule={"steps": [10, 100]})]})
    with pytest.raises(SystemExit) as done:
        main(["watch", "--interval", "1e300", "--config", str(config)])
    assert done.value.code == 2


def test_status_refuses_a_window_longer_than_it_reads(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write(tmp_path, {"state": f"file://{tmp_path}/state.json",
                               "rollouts": [_rollout("chat", schedule={"steps": [10, 100]})]})
    with pytest.raises(SystemExit) as done:
        main(["status", "--window", "86400", "--config", str(config)])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "--window" in err and "at most 21600 seconds" in err and "'86400'" in err


def test_status_ignores_an_invalid_stored_value_of_a_rollout_without_schedule(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """5505f7e: a rollout without a schedule routes at its configured weight and never reads
    the store, so status shows that. An *invalid* stored value left from its scheduled days
    still turns its row into 'unreadable, weight ?' with 'apps keep the weight they last read'
    and 'no watcher decides for it until it is fixed', none of which is true."""
    state = f"file://{tmp_path}/state.json"
    schedule = {"steps": [10, 50, 100], "min_step_duration": "10m", "min_requests": 50}
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump({"state": state,
                                   "rollouts": [_rollout("fixed", schedule=schedule)]}))
    assert main(["promote", "fixed", "--reason", "evals passed", "--config", str(old)]) == 0
    path = tmp_path / "state.json"
    data = json.loads(path.read_text())
    data["rollouts"]["fixed"]["weight"] = 150.0
    path.write_text(json.dumps(data))
    now = tmp_path / "cfg.yaml"
    now.write_text(yaml.safe_dump({"state": state, "rollouts": [_rollout("fixed", weight=10)]}))
    capsys.readouterr()
    assert main(["status", "--json", "--config", str(now)]) == 0
    row = json.loads(capsys.readouterr().out)["rollouts"][0]
    assert (row["weight"], row["unreadable"]) == (10.0, None), row


def test_a_lease_acquired_after_stop_released_it_is_released_by_the_look() -> None:
    """stop() hands over the lease while a look is stuck in acquiring it; when that acquire
    lands afterwards, the look (which sees the stop) must release it again, or the stopped
    watcher holds it until it expires."""
    import threading

    class SlowAcquire(_LeaseStore):
        def __init__(self) -> None:
            super().__init__()
            self.entered, self.go = threading.Event(), threading.Event()

        def acquire_lease(self, holder: str, ttl: float) -> bool:
            self.entered.set()
            self.go.wait(10)
            return super().acquire_lease(holder, ttl)

    config = load_config({"state": "memory",
                          "rollouts": [_rollout("chat", schedule={"steps": [10, 100]})]})
    store = SlowAcquire()
    watcher = Watcher(config, store, None, clock=lambda: 1000.0)
    looking = threading.Thread(target=watcher.look)
    looking.start()
    assert store.entered.wait(5)
    watcher.stop()  # no watcher thread: releases at once (nothing held yet)
    store.go.set()  # the stuck acquire lands now
    looking.join(5)
    assert store.lease is None, "the look kept a lease it acquired after stop()"


def test_status_shows_a_history_time_out_of_the_clocks_range_instead_of_crashing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A stored history entry's ``at`` is checked to be a finite number, and -1e20 is one; status
    then died in time.localtime() with an OverflowError traceback (plain and rich alike)."""
    config = _write(tmp_path, {"state": f"file://{tmp_path}/state.json",
                               "rollouts": [_rollout("chat", schedule={"steps": [10, 100]})]})
    assert main(["pause", "chat", "--reason", "freeze", "--config", str(config)]) == 0
    path = tmp_path / "state.json"
    data = json.loads(path.read_text())
    data["rollouts"]["chat"]["history"][0]["at"] = -1e20
    path.write_text(json.dumps(data))
    for plain in ("1", ""):
        monkeypatch.setenv("OPENAI_BLUEGREEN_PLAIN", plain)
        capsys.readouterr()
        assert main(["status", "--config", str(config)]) == 0
        out = capsys.readouterr().out
        assert "-1e+20" in out and "freeze" in out, out
