"""The watcher in a real process: real ``openai`` calls through the plugin, simulated upstreams."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import openai
import pytest

import openai_bluegreen
from openai_bluegreen.testing import SimulatedUpstream

from .conftest import BLUE_KEY, Telemetry, rollout_config

SCHEDULE = {"steps": [20, 50, 100], "min_step_duration": "0.6s", "min_requests": 25,
            "progress_deadline": "20s"}
ANALYSIS = {"interval": "0.2s", "alpha": 0.01,
            "checks": [{"signal": "error_rate", "max_ratio": 1.5},
                       {"signal": "latency", "quantile": 0.95, "max_ratio": 1.5}]}


def _drive(client: openai.OpenAI, seconds: float, until: Any = None) -> int:
    """Call for up to ``seconds`` (each call with a distinct user); stop early when ``until()``."""
    deadline = time.monotonic() + seconds
    calls = 0
    while time.monotonic() < deadline:
        with contextlib.suppress(openai.APIError):
            client.chat.completions.create(model="gpt-4.1", user=f"user-{calls}",
                                           messages=[{"role": "user", "content": "hi"}])
        calls += 1
        if until is not None and calls % 20 == 0 and until():
            break
    return calls


def _phase() -> str:
    return str(openai_bluegreen.status()["rollouts"][0]["phase"])


def _decision_events(telemetry: Telemetry) -> list[dict[str, Any]]:
    out = []
    for span in telemetry.spans():
        for event in span.events:
            if event.name == "bluegreen.decision":
                out.append(dict(event.attributes or {}))
    return out


def test_watcher_rolls_back_a_degrading_green_on_its_own(
        install: Any, telemetry: Telemetry, blue: SimulatedUpstream,
        green: SimulatedUpstream) -> None:
    green.configure(error_rates={503: 0.4})
    install(rollout_config(green, schedule=SCHEDULE, analysis=ANALYSIS,
                           fallback={"enabled": False}))
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    _drive(client, 20.0, until=lambda: _phase() == "rolled_back")

    status = openai_bluegreen.status()["rollouts"][0]
    assert status["phase"] == "rolled_back", status
    assert status["weight"] == 0.0
    last = status["history"][-1]
    assert last["action"] == "rollback" and last["actor"] == "watcher"
    assert "error_rate ratio<=1.5 failed" in last["reason"]

    # Every call after the rollback goes to blue.
    before = len(green.requests)
    _drive(client, 0.3)
    assert len(green.requests) == before

    # The decision is in the telemetry: counter, state gauge, and a span event with numbers.
    assert telemetry.count("bluegreen.rollout.decisions", bluegreen__rollout="chat-upgrade",
                           bluegreen__decision="rollback") == 1
    assert telemetry.count("bluegreen.rollout.decisions", bluegreen__decision="start") == 1
    states = {p[0]["bluegreen.state"]: p[1].value
              for p in telemetry.points("bluegreen.rollout.state")}
    assert states["rolled_back"] == 1 and states["progressing"] == 0
    weights = [p[1].value for p in telemetry.points("bluegreen.rollout.weight")]
    assert weights == [0.0]
    rollbacks = [e for e in _decision_events(telemetry) if e["bluegreen.decision"] == "rollback"]
    assert len(rollbacks) == 1
    evidence = json.loads(str(rollbacks[0]["bluegreen.evidence"]))
    failed = [c for c in evidence if c["status"] == "fail"]
    assert failed and failed[0]["check"] == "error_rate ratio<=1.5"
    assert failed[0]["green_errors"] > 0 and failed[0]["e_value"] >= failed[0]["threshold"]


def test_watcher_promotes_a_healthy_green_through_every_step(
        install: Any, telemetry: Telemetry, blue: SimulatedUpstream,
        green: SimulatedUpstream) -> None:
    install(rollout_config(green, schedule=SCHEDULE, analysis=ANALYSIS))
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    _drive(client, 30.0, until=lambda: _phase() == "promoted")

    status = openai_bluegreen.status()["rollouts"][0]
    assert status["phase"] == "promoted", status
    actions = [h["action"] for h in status["history"]]
    assert actions == ["start", "advance", "promote"]
    assert [h["weight"] for h in status["history"]] == [20.0, 50.0, 100.0]
    before_blue = len(blue.requests)
    _drive(client, 0.3)
    assert len(blue.requests) == before_blue


def test_a_manual_pause_wins_over_the_watcher_and_resume_continues(
        install: Any, telemetry: Telemetry, blue: SimulatedUpstream,
        green: SimulatedUpstream) -> None:
    install(rollout_config(green, schedule=SCHEDULE, analysis=ANALYSIS))
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    _drive(client, 5.0, until=lambda: _phase() == "progressing")
    openai_bluegreen.pause("chat-upgrade", reason="waiting for the eval run", actor="alice")
    _drive(client, 2.0)
    status = openai_bluegreen.status()["rollouts"][0]
    assert status["phase"] == "paused" and status["weight"] == 20.0
    assert status["history"][-1]["actor"] == "alice"
    assert status["history"][-1]["reason"] == "waiting for the eval run"
    openai_bluegreen.resume("chat-upgrade", reason="eval passed", actor="alice")
    _drive(client, 30.0, until=lambda: _phase() == "promoted")
    assert _phase() == "promoted"


def test_watcher_faults_keep_calls_on_the_last_weights(
        install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
        monkeypatch: pytest.MonkeyPatch) -> None:
    install(rollout_config(green, schedule=SCHEDULE, analysis=ANALYSIS))
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    _drive(client, 5.0, until=lambda: _phase() == "progressing")
    watcher = openai_bluegreen._state.watcher
    assert watcher is not None

    def broken(_now: float) -> Any:
        raise RuntimeError("metric backend exploded")

    monkeypatch.setattr(watcher.source, "snapshot", broken)
    monkeypatch.setattr(watcher.store, "load_all", lambda: (_ for _ in ()).throw(OSError("x")))
    calls = _drive(client, 1.0)
    assert calls > 20
    status = openai_bluegreen.status()
    assert status["rollouts"][0]["weight"] == 20.0
    assert status["watcher"]["problem"] is not None


def _paused_on_a_file_store(install: Any, blue: SimulatedUpstream, green: SimulatedUpstream,
                            tmp_path: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A rollout paused mid-way on a file store; returns its config and the same config with
    another analysis interval (a re-install that builds a new watcher)."""
    config = {**rollout_config(green, schedule=SCHEDULE, analysis=ANALYSIS),
              "state": f"file://{tmp_path}/state.json"}
    install(config)
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    _drive(client, 5.0, until=lambda: _phase() == "progressing")
    openai_bluegreen.pause("chat-upgrade", reason="hold")
    changed = {**config, "rollouts": [{**config["rollouts"][0],
                                       "analysis": {**ANALYSIS, "interval": "0.3s"}}]}
    return config, changed


def _assert_gauge_shows_paused(telemetry: Telemetry) -> None:
    states = {p[0]["bluegreen.state"]: p[1].value
              for p in telemetry.points("bluegreen.rollout.state")}
    assert states["paused"] == 1 and states["progressing"] == 0, states


def test_the_state_gauge_follows_a_reinstalled_watcher(
        install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
        tmp_path: Any) -> None:
    _, changed = _paused_on_a_file_store(install, blue, green, tmp_path)
    install(changed)  # a new watcher on the same store and providers
    _assert_gauge_shows_paused(telemetry)


def test_a_reinstall_that_fails_building_its_watcher_leaves_the_running_one_in_charge(
        install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from openai_bluegreen import _install

    _, changed = _paused_on_a_file_store(install, blue, green, tmp_path)
    running = openai_bluegreen._state.watcher
    real = _install.Watcher

    def half_built(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)  # built (it finds the gauges) ...
        raise RuntimeError("watcher construction failed")  # ... and the install fails

    monkeypatch.setattr(_install, "Watcher", half_built)
    with pytest.raises(RuntimeError, match="watcher construction failed"):
        install(changed)
    assert openai_bluegreen._state.watcher is running
    _assert_gauge_shows_paused(telemetry)
    # Onto a provider of its own: the reader the failed install attached is taken off again.
    from opentelemetry.sdk.metrics import MeterProvider

    from openai_bluegreen.sources.local import LocalSource

    fresh = MeterProvider()
    with pytest.raises(RuntimeError, match="watcher construction failed"):
        openai_bluegreen.install(changed, meter_provider=fresh)
    assert not [r for r in _install._readers_of(fresh) if isinstance(r, LocalSource)]
    assert openai_bluegreen._state.watcher is running
    fresh.shutdown()


def test_an_unreadable_state_at_install_fails_open_to_blue(
        install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
        ) -> None:
    from openai_bluegreen import _watcher

    def broken(_self: Any) -> None:
        raise ValueError("stored state is not a rollout state")

    monkeypatch.setattr(_watcher.Watcher, "_sync", broken)
    install({**rollout_config(green, schedule=SCHEDULE, analysis=ANALYSIS),
             "state": f"file://{tmp_path}/state.json"})
    assert "reading the state store failed" in caplog.text
    assert openai_bluegreen.status()["installed"] and openai_bluegreen._state.watcher is not None
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    _drive(client, 0.5)
    assert blue.requests and not green.requests  # on blue meanwhile
    monkeypatch.undo()  # the store reads again: the installed watcher starts the rollout
    _drive(client, 10.0, until=lambda: bool(green.requests))
    assert green.requests


def test_a_redis_never_reached_keeps_every_call_on_blue_until_it_comes(
        install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
        tmp_path: Any) -> None:
    from .services import redis_server

    with redis_server(tmp_path, password="never-shown") as redis:
        redis.stop()  # down before the app starts: no weight was ever known
        install({**rollout_config(green, schedule=SCHEDULE, analysis=ANALYSIS),
                 "state": redis.url})
        client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
        assert _drive(client, 1.5) > 20
        assert not green.requests  # blue, the safe default
        problem = openai_bluegreen.status()["watcher"]["problem"]
        assert problem is not None and problem.startswith("state store unavailable")
        assert "never-shown" not in problem and "redis://:***@127.0.0.1" in problem
        redis.start()  # it comes back: the watcher recovers and starts the rollout by itself
        _drive(client, 10.0, until=lambda: _phase() == "progressing")
        assert _phase() == "progressing"
        assert openai_bluegreen.status()["watcher"]["problem"] is None
        _drive(client, 1.0)
        assert green.requests


def test_a_reinstall_keeps_a_memory_rollout_where_it_was(
        install: Any, telemetry: Telemetry, blue: SimulatedUpstream,
        green: SimulatedUpstream) -> None:
    """Re-installing (a changed config) continues the process's rollouts, as a shared store
    would; uninstall() forgets them."""
    install(rollout_config(green, schedule=SCHEDULE, analysis=ANALYSIS))
    openai_bluegreen.set_weight("chat-upgrade", 30, reason="hold here", actor="alice")
    install(rollout_config(green, schedule={**SCHEDULE, "min_requests": 40}, analysis=ANALYSIS))
    status = openai_bluegreen.status()["rollouts"][0]
    assert (status["phase"], status["weight"]) == ("paused", 30.0), status
    assert status["history"][-1]["actor"] == "alice"
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    _drive(client, 0.5)
    assert green.requests, "the kept weight routes calls to green"
    openai_bluegreen.uninstall()
    install(rollout_config(green, schedule=SCHEDULE, analysis=ANALYSIS))
    status = openai_bluegreen.status()["rollouts"][0]
    assert status["phase"] != "paused", status
    assert "alice" not in [h["actor"] for h in status["history"]]


def test_a_reinstall_with_another_candidate_starts_that_rollout_over(
        install: Any, telemetry: Telemetry, blue: SimulatedUpstream,
        green: SimulatedUpstream) -> None:
    """A promoted rollout whose green changed must not hand the new candidate every call."""
    install(rollout_config(green, schedule=SCHEDULE, analysis=ANALYSIS))
    openai_bluegreen.promote("chat-upgrade", reason="done", actor="alice")
    assert openai_bluegreen.status()["rollouts"][0]["phase"] == "promoted"
    config = rollout_config(green, schedule=SCHEDULE, analysis=ANALYSIS)
    config["rollouts"][0]["green"]["model"] = "next-candidate"
    install(config)
    status = openai_bluegreen.status()["rollouts"][0]
    assert status["phase"] != "promoted" and status["weight"] < 100.0, status


def test_a_forked_child_gets_a_watcher_of_its_own(
        install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
        tmp_path: Any) -> None:
    """gunicorn --preload, multiprocessing's fork: the child inherits the router but not the
    watcher's thread. Its own watcher (started with its first routed call) keeps its weights
    following the shared store."""
    import os
    import signal

    slow = {**SCHEDULE, "min_step_duration": "1h"}
    install({**rollout_config(green, schedule=slow, analysis=ANALYSIS),
             "state": f"file://{tmp_path}/rollouts.json"})
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    _drive(client, 5.0, until=lambda: _phase() == "progressing")
    assert openai_bluegreen.status()["rollouts"][0]["weight"] == 20.0
    parent_holder = openai_bluegreen._state.watcher.holder  # type: ignore[union-attr]
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code only
        code = 10
        try:
            signal.alarm(20)
            import threading

            if any(t.name == "openai-bluegreen-watcher" for t in threading.enumerate()):
                os._exit(14)  # the fork itself starts nothing: a child may only go on to exec
            with openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0) as own:
                own.chat.completions.create(model="gpt-4.1", messages=[{"role": "user",
                                                                         "content": "hi"}])
            deadline = time.monotonic() + 10  # its telemetry worker starts its watcher
            watcher = None
            while watcher is None and time.monotonic() < deadline:
                watcher = openai_bluegreen._state.watcher
                time.sleep(0.01)
            code = 11 if watcher is None or watcher.holder == parent_holder else 12
            while code == 12 and time.monotonic() < deadline:
                router = openai_bluegreen._state.router
                if router is not None and router.rollouts["chat-upgrade"].weight_bp == 10_000:
                    code = 0  # the child's own calls now go to green
                time.sleep(0.05)
        finally:
            os._exit(code)
    openai_bluegreen.promote("chat-upgrade", reason="tested", actor="alice")  # the parent acts
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, (
        "child: 11 = no watcher of its own, 12 = did not follow the promotion, 14 = a watcher "
        "thread started by the fork itself, "
        f"negative = killed by a signal (deadlock); got {os.waitstatus_to_exitcode(status)}")


def test_a_new_candidate_under_the_same_name_starts_over(
        install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
        tmp_path: Any) -> None:
    """A stored state is about one blue/green. A config with another green under the same name
    starts the rollout over (never inherits "promoted"), and so does going back."""
    state = f"file://{tmp_path}/rollouts.json"
    old = {**rollout_config(green, schedule=SCHEDULE, analysis=ANALYSIS), "state": state}
    new = {**rollout_config(green, schedule=SCHEDULE, analysis=ANALYSIS), "state": state}
    new["rollouts"][0]["green"]["model"] = "next-candidate"

    install(old)
    openai_bluegreen.promote("chat-upgrade", reason="v1 is good", actor="alice")
    first = openai_bluegreen.status()["rollouts"][0]
    assert (first["phase"], first["weight"]) == ("promoted", 100.0)

    openai_bluegreen.uninstall()
    install(new)
    deadline = time.monotonic() + 10
    status = openai_bluegreen.status()["rollouts"][0]
    while "restart" not in [h["action"] for h in status["history"]] \
            and time.monotonic() < deadline:
        time.sleep(0.05)
        status = openai_bluegreen.status()["rollouts"][0]
    assert "restart" in [h["action"] for h in status["history"]], status
    assert status["revision"] != first["revision"] and not status["other_candidate"]
    assert status["phase"] in ("pending", "progressing") and status["weight"] <= 20.0, status
    stored = json.loads((tmp_path / "rollouts.json").read_text())["rollouts"]["chat-upgrade"]
    assert stored["revision"] == status["revision"]
    assert first["revision"] in stored["superseded"]

    openai_bluegreen.uninstall()  # back to the old candidate: a rollout of its own again
    install(old)
    deadline = time.monotonic() + 10
    status = openai_bluegreen.status()["rollouts"][0]
    while status["revision"] != first["revision"] and time.monotonic() < deadline:
        time.sleep(0.05)
        status = openai_bluegreen.status()["rollouts"][0]
    assert status["revision"] == first["revision"], status
    assert [h["action"] for h in status["history"]].count("restart") == 2
    assert status["phase"] in ("pending", "progressing") and status["weight"] <= 20.0, status
