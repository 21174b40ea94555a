"""Assignment: deterministic, monotone sticky hashing; split accuracy; force; random draws."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import openai
import pytest

import openai_bluegreen
from openai_bluegreen._assignment import bucket, salt_for
from openai_bluegreen._config import load_config
from openai_bluegreen._router import RolloutRuntime, TargetRuntime
from openai_bluegreen.testing import SimulatedUpstream

from .conftest import BLUE_KEY, rollout_config

MSGS = [{"role": "user", "content": "hi"}]

APP = textwrap.dedent("""
    import json, os, sys
    import openai_bluegreen.auto  # the one added line
    import openai

    client = openai.OpenAI(base_url=os.environ["BLUE_URL"], api_key="blue-key", max_retries=0)
    for i in range(int(sys.argv[1])):
        client.chat.completions.create(model="gpt-4.1", messages=[{"role": "user",
                                       "content": "hi"}], user=f"user-{i}")
    print(json.dumps(openai_bluegreen.status()))
""")


def test_auto_import_with_config_file_splits_10000_keyed_calls_within_tolerance(
    tmp_path: Path, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    config = tmp_path / "openai-bluegreen.yaml"
    config.write_text(textwrap.dedent(f"""
        rollouts:
          - name: chat-upgrade
            match: {{model: gpt-4.1}}
            blue: {{model: gpt-4.1}}
            green: {{model: deepseek-v3.2, base_url: "{green.base_url}",
                     api_key_env: GREEN_API_KEY}}
            weight: 30
    """))
    app = tmp_path / "app.py"
    app.write_text(APP)
    env = {**os.environ, "OPENAI_BLUEGREEN_CONFIG": str(config), "GREEN_API_KEY": "g-key",
           "BLUE_URL": blue.base_url}
    done = subprocess.run([sys.executable, str(app), "10000"], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rollouts"][0]["weight"] == 30
    n_green, n_blue = len(green.requests), len(blue.requests)
    assert n_green + n_blue == 10_000
    assert 0.285 <= n_green / 10_000 <= 0.315, n_green
    assert {r.model for r in green.requests} == {"deepseek-v3.2"}
    assert {r.api_key for r in green.requests} == {"g-key"}
    assert {r.model for r in blue.requests} == {"gpt-4.1"}
    # The same key always lands on the same side: the assignment is a function of the key.
    green_users = {r.body["user"] for r in green.requests}
    expected = {f"user-{i}" for i in range(10_000)
                if bucket(salt_for("chat-upgrade"), f"user-{i}") < 3000}
    assert green_users == expected


def _runtime(weight: float, sticky: list[str] | None = None) -> RolloutRuntime:
    raw: dict[str, Any] = {"name": "r1", "match": {"model": "m"}, "blue": {"model": "b"},
                           "green": {"model": "g"}, "weight": weight}
    if sticky is not None:
        raw["sticky"] = sticky
    rollout = load_config({"rollouts": [raw]}).rollouts[0]
    return RolloutRuntime(rollout, TargetRuntime(rollout.blue, None),
                          TargetRuntime(rollout.green, None))


def test_keys_never_move_from_green_to_blue_while_weight_rises() -> None:
    runtime = _runtime(0)
    keys = [f"conversation-{i}" for i in range(10_000)]
    previous: set[str] = set()
    for percent in (0, 1, 5, 10, 25, 50, 75, 99, 100):
        runtime.weight_bp = percent * 100
        on_green = {k for k in keys if runtime.choose({"user": k}) == "green"}
        assert previous <= on_green, f"a key left green at {percent}%"
        assert abs(len(on_green) / len(keys) - percent / 100) <= 0.015
        previous = on_green
    assert len(previous) == len(keys)


def test_sticky_key_order_first_present_wins() -> None:
    runtime = _runtime(50)
    keys = [f"k{i}" for i in range(200)]
    for key in keys:
        expected = runtime.choose({"user": key})
        with openai_bluegreen.assignment_key(key):
            assert runtime.choose({"user": "someone-else-entirely"}) == expected
        assert runtime.choose({"safety_identifier": key}) == expected
        assert runtime.choose({"prompt_cache_key": key, "user": None}) == expected


def test_without_any_key_calls_draw_at_random() -> None:
    runtime = _runtime(30, sticky=[])
    draws = [runtime.choose({"user": "same-user"}) for _ in range(20_000)]
    share = draws.count("green") / len(draws)
    assert 0.285 <= share <= 0.315
    assert len(set(draws[:50])) == 2  # not sticky: the same user sees both sides


def test_force_wins_over_weight_and_key(install: Any, blue: SimulatedUpstream,
                                        green: SimulatedUpstream) -> None:
    install(rollout_config(green, weight=0))
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    with openai_bluegreen.force("green"), openai_bluegreen.assignment_key("k"):
        assert client.chat.completions.create(model="gpt-4.1", messages=MSGS).model == \
            "green-model"
    openai_bluegreen.set_weight("chat-upgrade", 100)
    with openai_bluegreen.force("blue"):
        assert client.chat.completions.create(model="gpt-4.1", messages=MSGS,
                                              user="u").model == "blue-model"
    assert client.chat.completions.create(model="gpt-4.1", messages=MSGS).model == "green-model"


def test_force_and_assignment_key_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="'purple'"), openai_bluegreen.force("purple"):  # type: ignore[arg-type]
        pass
    with pytest.raises(ValueError, match="non-empty"), openai_bluegreen.assignment_key(""):
        pass


def test_set_weight_validates_and_names_unknown_rollouts(install: Any,
                                                         green: SimulatedUpstream) -> None:
    with pytest.raises(openai_bluegreen.BlueGreenError, match="not installed"):
        openai_bluegreen.set_weight("chat-upgrade", 10)
    install(rollout_config(green, weight=0))
    with pytest.raises(openai_bluegreen.UnknownRolloutError, match="configured: chat-upgrade"):
        openai_bluegreen.set_weight("nope", 10)
    with pytest.raises(ValueError, match="between 0 and 100"):
        openai_bluegreen.set_weight("chat-upgrade", 120)
    openai_bluegreen.set_weight("chat-upgrade", 12.5)
    assert openai_bluegreen.status()["rollouts"][0]["weight"] == 12.5


def test_responses_follow_ups_go_where_their_previous_response_is(
    install: Any, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    """Each provider holds its own responses (the simulator, like OpenAI, refuses another's
    previous_response_id): a follow-up must reach the environment that answered before, even
    with per-call random draws, a weight change and force()."""
    install(rollout_config(green, weight=50))
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    firsts = [client.responses.create(model="gpt-4.1", input="hi") for _ in range(30)]
    streamed = list(client.responses.create(model="gpt-4.1", input="hi", stream=True))
    firsts.append(streamed[-1].response)
    assert {r.model for r in firsts} == {"blue-model", "green-model"}
    openai_bluegreen.set_weight("chat-upgrade", 100)
    with openai_bluegreen.force("blue"):
        for first in firsts:
            follow_up = client.responses.create(model="gpt-4.1", input="and then?",
                                                previous_response_id=first.id)
            assert follow_up.model == first.model
    assert all(r.status == 200 for r in blue.requests + green.requests)


def test_simulator_refuses_a_previous_response_it_does_not_hold(
    blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    on_green = openai.OpenAI(base_url=green.base_url, api_key="k", max_retries=0)
    first = on_green.responses.create(model="m", input="hi")
    on_blue = openai.OpenAI(base_url=blue.base_url, api_key="k", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="not found"):
        on_blue.responses.create(model="m", input="more", previous_response_id=first.id)


def test_stored_conversations_stay_on_the_callers_endpoint(
    install: Any, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    install(rollout_config(green, weight=100))
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    client.responses.create(model="gpt-4.1", input="hi", conversation="conv_123")
    client.responses.create(model="gpt-4.1", input="hi")
    assert [r.body.get("conversation") for r in blue.requests] == ["conv_123"]
    assert len(green.requests) == 1


def test_a_pinned_follow_up_never_falls_back_to_where_its_state_is_not(
    install: Any, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    """Blue cannot serve green's previous_response_id: green's own failure reaches the caller
    (retryable), not blue's 400, and blue's metrics are not charged with it."""
    install(rollout_config(green, weight=100))
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    first = client.responses.create(model="gpt-4.1", input="hi")
    green.configure(error_rates={503: 1.0})
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError):
            client.responses.create(model="gpt-4.1", input="more", stream=stream,
                                    previous_response_id=first.id)
    assert not blue.requests


def test_a_pinned_follow_up_keeps_the_callers_sdk_retries(
    install: Any, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    """Fallback turns green's SDK retries off (blue catches its failures); a pinned follow-up
    never falls back, so a passing green failure must get the retries the app asked for."""
    install(rollout_config(green, weight=100))
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=2)
    first = client.responses.create(model="gpt-4.1", input="hi")
    green.requests.clear()
    green.configure(error_rates={503: 1.0})
    with pytest.raises(openai.InternalServerError):
        client.responses.create(model="gpt-4.1", input="more", previous_response_id=first.id)
    assert len(green.requests) == 3  # the first try and the caller's two retries
    green.requests.clear()
    client.responses.create(model="gpt-4.1", input="new")  # not pinned: straight to blue
    assert len(green.requests) == 1 and len(blue.requests) == 1


def test_remembered_responses_stay_bounded_under_concurrent_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    from openai_bluegreen import _router

    monkeypatch.setattr(_router, "MAX_REMEMBERED_RESPONSES", 100)
    runtime = _runtime(50)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=lambda n=n: [
            runtime.remember_response(f"resp_{n}_{i}", "green") for i in range(20_000)])
            for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    runtime.remember_response("resp_last", "blue")
    assert len(runtime.responses) == 100


def test_a_key_with_a_lone_surrogate_is_routed_by_its_hash(
        install: Any, blue: SimulatedUpstream, green: SimulatedUpstream,
        caplog: pytest.LogCaptureFixture) -> None:
    """A key decoded with ``surrogateescape`` (a file name, a header read as bytes) holds lone
    surrogates that UTF-8 cannot encode. It is still a key: each one goes to one side, every
    time, and routing does not fail open (with an ERROR logged on every call)."""
    install(rollout_config(green, weight=50))
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    keys = [f"upload-{i}-\udcff.txt" for i in range(40)]
    seen = {}
    for key in keys * 2:
        with openai_bluegreen.assignment_key(key):
            model = client.chat.completions.create(model="gpt-4.1", messages=MSGS).model
        assert seen.setdefault(key, model) == model, f"{key!r} changed sides"
    assert set(seen.values()) == {"blue-model", "green-model"}
    assert not [r for r in caplog.records if r.levelno >= 40], "routing failed open"
