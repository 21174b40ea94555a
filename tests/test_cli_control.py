"""The operator commands, run as a user would: the installed CLI against a file state store."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import openai
import yaml

import openai_bluegreen
from openai_bluegreen.testing import SimulatedUpstream

from .conftest import BLUE_KEY, rollout_config

SCHEDULE = {"steps": [10, 50, 100], "min_step_duration": "10m", "min_requests": 50}
# The child processes get a bare environment (no credentials, no app settings), but import the
# source under test, not whichever copy the interpreter has installed.
BARE = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}


def _write_config(tmp_path: Path, green: SimulatedUpstream | None = None) -> Path:
    if green is None:
        config: dict[str, Any] = {"rollouts": [{
            "name": "chat-upgrade", "match": {"model": "gpt-4.1"}, "blue": {"model": "a"},
            "green": {"model": "b"}, "schedule": SCHEDULE}]}
    else:
        config = rollout_config(green, schedule=SCHEDULE, analysis={"interval": "0.2s"})
    config["state"] = f"file://{tmp_path}/state.json"
    path = tmp_path / "openai-bluegreen.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def cli(config: Path, *args: str, actor: str = "alice", plain: bool = False
        ) -> subprocess.CompletedProcess[str]:
    env = {**BARE, "OPENAI_BLUEGREEN_ACTOR": actor}
    if plain:
        env["OPENAI_BLUEGREEN_PLAIN"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "openai_bluegreen", *args, "--config", str(config)],
        capture_output=True, text=True, timeout=60, env=env, check=False)


def _status(config: Path) -> dict[str, Any]:
    done = cli(config, "status", "--json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout)["rollouts"][0])


def _edited(tmp_path: Path, config: Path, **fields: Any) -> tuple[Path, dict[str, Any]]:
    """Set a weight through the CLI, then edit the stored state by hand as given (no writer of
    ours stores such values); returns the state file and what it now holds."""
    assert cli(config, "set-weight", "chat-upgrade", "50", "--reason", "eval").returncode == 0
    state = tmp_path / "state.json"
    data = json.loads(state.read_text())
    data["rollouts"]["chat-upgrade"].update(fields)
    state.write_text(json.dumps(data))
    return state, data


def test_pause_resume_rollback_are_recorded_with_actor_reason_and_time(tmp_path: Path) -> None:
    config = _write_config(tmp_path)
    assert _status(config)["phase"] == "pending"
    before = time.time()
    assert cli(config, "pause", "chat-upgrade", "--reason", "change freeze").returncode == 0
    assert cli(config, "resume", "chat-upgrade", "--reason", "freeze over",
               actor="bob").returncode == 0
    done = cli(config, "set-weight", "chat-upgrade", "25", "--reason", "more eval traffic")
    assert done.returncode == 0 and "paused, green 25%" in done.stdout
    assert cli(config, "rollback", "chat-upgrade", "--reason", "bad evals").returncode == 0
    status = _status(config)
    assert (status["phase"], status["weight"]) == ("rolled_back", 0.0)
    history = status["history"]
    assert [(h["action"], h["actor"], h["reason"]) for h in history] == [
        ("pause", "alice", "change freeze"), ("resume", "bob", "freeze over"),
        ("set_weight", "alice", "more eval traffic"), ("rollback", "alice", "bad evals")]
    assert all(before <= h["at"] <= time.time() for h in history)
    for plain in (False, True):  # rich tables ([cli] extra) and the plain-text fallback
        text = cli(config, "status", plain=plain)
        assert text.returncode == 0
        assert re.search(r"^\s*chat-upgrade\s+rolled_back\s+-\s+0%", text.stdout, re.M), \
            text.stdout
        assert "alice: bad evals" in text.stdout


def test_cli_errors_say_what_is_wrong_with_meaningful_exit_codes(tmp_path: Path) -> None:
    config = _write_config(tmp_path)
    done = cli(config, "resume", "chat-upgrade", "--reason", "x")
    assert done.returncode == 1
    assert "cannot resume rollout 'chat-upgrade': it is pending" in done.stderr
    done = cli(config, "pause", "nope", "--reason", "x")
    assert done.returncode == 2 and "unknown rollout 'nope' (configured: chat-upgrade)" in \
        done.stderr
    done = cli(config, "pause", "chat-upgrade")
    assert done.returncode == 2 and "--reason" in done.stderr
    for args in (("status", "--window", "-5"), ("watch", "--interval", "0"),
                 ("watch", "--interval", "1e-6"),  # would read the store in a busy loop
                 ("run-watcher", "--prometheus-port", "70000")):
        done = cli(config, *args)
        assert done.returncode == 2, done
        assert args[1] in done.stderr and repr(args[2]) in done.stderr
    done = cli(tmp_path / "missing.yaml", "status")
    assert done.returncode == 2 and "cannot read" in done.stderr
    done = cli(config, "pause", "chat-upgrade", "--reason", "  ")
    assert done.returncode == 2 and "--reason: must say why" in done.stderr
    assert not (tmp_path / "state.json").exists()  # nothing was written


def test_actions_on_a_rollout_without_schedule_are_refused_not_faked(
        tmp_path: Path, install: Any, blue: SimulatedUpstream, green: SimulatedUpstream) -> None:
    # A fixed-weight rollout: apps route it at the configured weight and never read the store,
    # so a stored "rolled back" would be a lie to the operator.
    config = rollout_config(green, weight=50)
    config["state"] = f"file://{tmp_path}/state.json"
    path = tmp_path / "openai-bluegreen.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    install(str(path))
    for args in (("rollback",), ("promote",), ("pause",), ("set-weight", "0")):
        done = cli(path, args[0], "chat-upgrade", *args[1:], "--reason", "incident")
        assert done.returncode == 1, done
        assert "has no schedule" in done.stderr and "configured weight (50%)" in done.stderr
    assert not (tmp_path / "state.json").exists()
    assert openai_bluegreen.status()["rollouts"][0]["weight"] == 50.0


def test_concurrent_cli_writers_lose_no_update(tmp_path: Path) -> None:
    config = _write_config(tmp_path)
    procs = [subprocess.Popen(
        [sys.executable, "-m", "openai_bluegreen", "set-weight", "chat-upgrade", str(i),
         "--reason", f"writer {i}", "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env=BARE) for i in range(6)]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    stored = json.loads((tmp_path / "state.json").read_text(encoding="utf-8"))
    state = stored["rollouts"]["chat-upgrade"]
    assert state["version"] == 6
    assert sorted(h["reason"] for h in state["history"]) == [f"writer {i}" for i in range(6)]


def test_a_running_app_follows_the_operators_actions(
        tmp_path: Path, install: Any, blue: SimulatedUpstream, green: SimulatedUpstream) -> None:
    config = _write_config(tmp_path, green)
    install(str(config))
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    assert cli(config, "set-weight", "chat-upgrade", "100", "--reason", "all in").returncode == 0
    deadline = time.monotonic() + 5
    while openai_bluegreen.status()["rollouts"][0]["weight"] != 100.0:
        assert time.monotonic() < deadline, "the app did not pick up the new weight"
        time.sleep(0.05)
    before = len(green.requests)
    client.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "x"}])
    assert len(green.requests) == before + 1
    assert cli(config, "rollback", "chat-upgrade", "--reason", "stop").returncode == 0
    deadline = time.monotonic() + 5
    while openai_bluegreen.status()["rollouts"][0]["phase"] != "rolled_back":
        assert time.monotonic() < deadline, "the app did not pick up the rollback"
        time.sleep(0.05)
    client.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "x"}])
    assert len(green.requests) == before + 1


def test_an_unreachable_redis_is_named_with_its_password_masked(tmp_path: Path) -> None:
    from .services import free_port

    port = free_port()  # nothing listens there
    config = tmp_path / "openai-bluegreen.yaml"
    config.write_text(yaml.safe_dump({
        "state": f"redis://:hunter2@127.0.0.1:{port}/0",
        "rollouts": [{"name": "chat-upgrade", "match": {"model": "gpt-4.1"},
                      "blue": {"model": "a"}, "green": {"model": "b"}, "schedule": SCHEDULE}],
    }), encoding="utf-8")
    for args in (("status",), ("pause", "chat-upgrade", "--reason", "x")):
        done = cli(config, *args)
        assert done.returncode == 1, done
        assert f"redis://:***@127.0.0.1:{port}/0" in done.stderr
        assert "hunter2" not in done.stderr + done.stdout


def test_with_the_default_memory_store_actions_are_refused_and_status_says_why(
        tmp_path: Path) -> None:
    # Each process has its own memory store: a CLI "rollback" there reached no app.
    config = {"rollouts": [{"name": "chat-upgrade", "match": {"model": "gpt-4.1"},
                            "blue": {"model": "a"}, "green": {"model": "b"},
                            "schedule": SCHEDULE}]}
    path = tmp_path / "openai-bluegreen.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    done = cli(path, "rollback", "chat-upgrade", "--reason", "bad evals")
    assert done.returncode == 2, done
    assert "state: 'memory' (the default) lives inside each app's process" in done.stderr
    for plain in (False, True):
        text = cli(path, "status", plain=plain)
        assert text.returncode == 0
        assert "out of this command's reach" in " ".join(text.stdout.split()), text.stdout


def test_an_operator_with_another_config_is_told_and_a_rollback_still_holds(
        tmp_path: Path) -> None:
    apps = _write_config(tmp_path)
    assert cli(apps, "set-weight", "chat-upgrade", "5", "--reason", "start small").returncode == 0
    other = yaml.safe_load(apps.read_text(encoding="utf-8"))
    other["rollouts"][0]["green"]["params"] = {"temperature": 0.2}
    drifted = tmp_path / "operator.yaml"
    drifted.write_text(yaml.safe_dump(other), encoding="utf-8")
    done = cli(drifted, "set-weight", "chat-upgrade", "50", "--reason", "more")
    assert done.returncode == 1 and "the apps run another config" in done.stderr
    for plain in (False, True):  # rich tables and plain text both warn
        text = " ".join(cli(drifted, "status", plain=plain).stdout.split())
        assert "the store's state is about another blue/green" in text, text
    done = cli(drifted, "rollback", "chat-upgrade", "--reason", "incident")
    assert done.returncode == 0, done
    status = _status(apps)  # as the apps see it: their own rollout, rolled back
    assert (status["phase"], status["weight"]) == ("rolled_back", 0.0)
    assert not status.get("other_candidate")
    done = cli(drifted, "set-weight", "chat-upgrade", "1", "--reason", "new try", "--restart")
    assert done.returncode == 0, done
    assert _status(apps)["other_candidate"]


def test_a_store_that_cannot_be_used_here_is_a_config_error(tmp_path: Path) -> None:
    # Without the redis package a redis:// store is the config's problem (exit 2), as
    # install() reports it, not an outage (exit 1).
    config = {"state": "redis://127.0.0.1:9/0", "rollouts": [{
        "name": "chat-upgrade", "match": {"model": "gpt-4.1"}, "blue": {"model": "a"},
        "green": {"model": "b"}, "schedule": SCHEDULE}]}
    path = tmp_path / "openai-bluegreen.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    program = ("import sys; sys.modules['redis'] = None  # not installed\n"
               "from openai_bluegreen.cli import main\n"
               "sys.exit(main(sys.argv[1:]))")
    done = subprocess.run(
        [sys.executable, "-c", program, "pause", "chat-upgrade", "--reason", "x",
         "--config", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
        env={**BARE, "OPENAI_BLUEGREEN_ACTOR": "alice"})
    assert done.returncode == 2, done
    assert "pip install 'openai-bluegreen[redis]'" in done.stderr


def test_status_shows_an_unreadable_stored_state_for_what_it_is(tmp_path: Path) -> None:
    config = _write_config(tmp_path)
    _edited(tmp_path, config, weight=150.0)
    for plain in (True, False):
        done = cli(config, "status", plain=plain)
        assert done.returncode == 0, done.stderr
        assert re.search(r"chat-upgrade\s+unreadable\s+-\s+\?", done.stdout), done.stdout
        assert "weight must be a finite number from 0 to 100 (got 150.0)" in done.stdout
        assert "apps keep the weight they last read" in done.stdout
    row = _status(config)
    assert row["phase"] == "unreadable" and row["weight"] is None
    assert "fix or delete it" in row["unreadable"]


def test_a_rollback_replaces_a_stored_value_that_is_not_a_state(tmp_path: Path) -> None:
    """In an incident the way back to blue must not wait for someone to repair the store: a
    rollback writes over an invalid value; every other action leaves it alone."""
    config = _write_config(tmp_path)
    assert cli(config, "set-weight", "chat-upgrade", "10", "--reason", "eval").returncode == 0
    state, data = _edited(tmp_path, config, weight=150.0)
    for action in (("pause",), ("resume",), ("promote",), ("set-weight", "chat-upgrade", "5")):
        done = cli(config, action[0], *(action[1:] or ("chat-upgrade",)), "--reason", "x")
        assert done.returncode == 1, done
        assert "weight must be a finite number from 0 to 100 (got 150.0)" in done.stderr
        assert "or roll the rollout back (which replaces it)" in done.stderr
        assert json.loads(state.read_text()) == data  # left as it was
    done = cli(config, "rollback", "chat-upgrade", "--reason", "incident 42", actor="carol")
    assert done.returncode == 0, done.stderr
    assert "rolled_back, green 0% (version 3)" in done.stdout  # past the bad value's 2
    assert "the stored value was not a valid state; it was replaced" in done.stdout
    row = _status(config)
    assert (row["phase"], row["weight"], row["unreadable"]) == ("rolled_back", 0.0, None)
    assert [(h["action"], h["actor"], h["reason"]) for h in row["history"]] == [
        ("rollback", "carol",
         "incident 42 (replaced a stored value that was not a valid state: weight must be a "
         "finite number from 0 to 100 (got 150.0))")]
    done = cli(config, "rollback", "chat-upgrade", "--reason", "again")
    assert done.returncode == 1 and "it is already rolled back" in done.stderr, done


def test_pause_and_resume_refuse_a_state_past_its_schedule(tmp_path: Path) -> None:
    config = _write_config(tmp_path)
    state, data = _edited(tmp_path, config, step=7)  # the schedule has 3 steps
    for action in ("resume", "pause"):
        done = cli(config, action, "chat-upgrade", "--reason", "x")
        assert done.returncode == 1, done
        assert f"cannot {action}: rollout 'chat-upgrade': the stored state is at step 8" in \
            done.stderr
    assert json.loads(state.read_text()) == data
    assert cli(config, "rollback", "chat-upgrade", "--reason", "x").returncode == 0
    assert _status(config)["phase"] == "rolled_back"


def test_status_shows_a_state_past_its_schedule_as_unreadable(tmp_path: Path) -> None:
    config = _write_config(tmp_path)
    _edited(tmp_path, config, step=7)  # the schedule has 3 steps
    row = _status(config)
    assert row["phase"] == "unreadable" and row["weight"] is None
    assert "at step 8, but the schedule has 3" in row["unreadable"]


def test_a_reader_that_goes_away_ends_the_cli_quietly(tmp_path: Path) -> None:
    """``openai-bluegreen watch | head`` (or ``status | head``) ended in a BrokenPipeError
    traceback once head had its lines."""
    config = _write_config(tmp_path)
    env = {**BARE, "OPENAI_BLUEGREEN_PLAIN": "1"}
    child = subprocess.Popen(
        [sys.executable, "-m", "openai_bluegreen", "watch", "--interval", "0.05", "--config",
         str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert child.stdout is not None and child.stderr is not None
    assert child.stdout.readline()  # the first frame is out
    child.stdout.close()
    try:
        assert child.wait(timeout=30) == 141
    finally:
        child.kill()
    err = child.stderr.read().decode()
    child.stderr.close()
    assert "Traceback" not in err and "BrokenPipe" not in err, err
