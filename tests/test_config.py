"""Every invalid config is refused at install() with the field path and the bad value, and
nothing is (half-)installed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

import openai_bluegreen
from openai_bluegreen import ConfigError
from openai_bluegreen._patch import is_patched

from .conftest import GREEN_KEY


def good() -> dict[str, Any]:
    return {"rollouts": [{
        "name": "chat-upgrade",
        "match": {"model": "gpt-4.1"},
        "blue": {"model": "gpt-4.1"},
        "green": {"model": "deepseek-v3.2", "base_url": "https://green.example/v1",
                  "api_key_env": "GREEN_API_KEY"},
        "weight": 10,
    }]}


def with_change(path: str, value: Any) -> dict[str, Any]:
    config = good()
    node: Any = config["rollouts"][0]
    *parents, leaf = path.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    return config


def scheduled(schedule: Any = None, analysis: Any = None, **rollout: Any) -> dict[str, Any]:
    config = good()
    entry = config["rollouts"][0]
    entry.pop("weight")
    entry["schedule"] = schedule or {"steps": [5, 50, 100], "min_step_duration": "10m"}
    if analysis is not None:
        entry["analysis"] = analysis
    entry.update(rollout)
    return config


BAD = [
    ("steps not increasing", scheduled({"steps": [5, 50, 25]}), "rollouts[0].schedule.steps",
     "step 2 is 25"),
    ("step above 100", scheduled({"steps": [5, 150]}), "rollouts[0].schedule.steps",
     "step 1 is 150"),
    ("bad duration", scheduled({"steps": [5], "min_step_duration": "ten minutes"}),
     "rollouts[0].schedule.min_step_duration", "'ten minutes'"),
    ("zero min_requests", scheduled({"steps": [5], "min_requests": 0}),
     "rollouts[0].schedule.min_requests", "0"),
    ("weight with schedule", scheduled(weight=10), "rollouts[0]", "weight is 10"),
    ("analysis without schedule", with_change("analysis", {"alpha": 0.01}), "rollouts[0]",
     "analysis needs a schedule"),
    ("alpha too large", scheduled(analysis={"alpha": 0.5}), "rollouts[0].analysis.alpha", "0.5"),
    ("interval too short", scheduled(analysis={"interval": "1ms"}),
     "rollouts[0].analysis.interval", "50ms"),
    ("check with two bounds", scheduled(analysis={"checks": [
        {"signal": "error_rate", "max_ratio": 1.5, "max": 0.1}]}),
     "rollouts[0].analysis.checks[0]", "exactly one of"),
    ("latency without quantile", scheduled(analysis={"checks": [
        {"signal": "latency", "max_ratio": 1.5}]}),
     "rollouts[0].analysis.checks[0]", "needs a quantile"),
    ("latency with max_increase", scheduled(analysis={"checks": [
        {"signal": "latency", "quantile": 0.95, "max_increase": 0.1}]}),
     "rollouts[0].analysis.checks[0]", "max_ratio, max"),
    ("latency guardrail past the last bucket", scheduled(analysis={"checks": [
        {"signal": "latency", "quantile": 0.99, "max": "2m"}]}),
     "rollouts[0].analysis.checks[0]", "at most 81.92 s, the histograms' largest bucket bound"),
    ("latency guardrail not a duration", scheduled(analysis={"checks": [
        {"signal": "ttft", "quantile": 0.99, "max": "soon"}]}),
     "rollouts[0].analysis.checks[0].max", "'soon'"),
    ("unknown signal", scheduled(analysis={"checks": [{"signal": "vibes", "max": 1}]}),
     "rollouts[0].analysis.checks[0].signal", "'vibes'"),
    ("bad on_failure", scheduled(analysis={"on_failure": "panic"}),
     "rollouts[0].analysis.on_failure", "'panic'"),
    ("weight out of range", with_change("weight", 150), "rollouts[0].weight", "150"),
    ("weight wrong type", with_change("weight", "lots"), "rollouts[0].weight", "'lots'"),
    ("unknown field", with_change("green.temperature", 0.2), "rollouts[0].green.temperature",
     "unknown field"),
    ("missing model", with_change("green", {"base_url": "https://x.example/v1"}),
     "rollouts[0].green.model", "required"),
    ("bad base_url", with_change("green.base_url", "ftp://nowhere"),
     "rollouts[0].green.base_url", "'ftp://nowhere'"),
    ("api key literal", with_change("green.api_key", "sk-live-123"), "rollouts[0].green",
     "api_key_env"),
    ("bad sticky key", with_change("sticky", ["user", "session"]), "rollouts[0].sticky[1]",
     "'session'"),
    ("bad rollout name", with_change("name", "Chat Upgrade!"), "rollouts[0].name",
     "'Chat Upgrade!'"),
    ("bad fallback class", with_change("fallback", {"on": ["teapot"]}),
     "rollouts[0].fallback.on[0]", "'teapot'"),
    ("reserved param", with_change("green.params", {"model": "other"}),
     "rollouts[0].green.params", "model"),
]


@pytest.mark.parametrize(("config", "field", "shown"),
                         [pytest.param(c, f, s, id=i) for i, c, f, s in BAD])
def test_bad_config_is_refused_naming_field_and_value(
    monkeypatch: pytest.MonkeyPatch, config: dict[str, Any], field: str, shown: str,
) -> None:
    monkeypatch.setenv("GREEN_API_KEY", GREEN_KEY)
    original = openai.resources.chat.completions.Completions.__dict__["create"]
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.install(config)
    message = str(caught.value)
    assert any(path == field for path, _ in caught.value.problems), caught.value.problems
    assert field in message and shown in message, message
    assert not is_patched()
    assert openai.resources.chat.completions.Completions.__dict__["create"] is original
    assert openai_bluegreen.status()["installed"] is False


def test_schedule_and_analysis_take_durations_and_defaults() -> None:
    config = openai_bluegreen.load_config(scheduled(
        {"steps": [1, 10, 100], "min_step_duration": "1h30m", "min_requests": 50},
        {"interval": 15, "checks": [{"signal": "ttft", "quantile": 0.9, "max": 2},
                                    {"signal": "latency", "quantile": 0.9, "max": "1500ms"}]}))
    rollout = config.rollouts[0]
    assert rollout.schedule is not None and rollout.schedule.min_step_duration == 5400.0
    assert rollout.effective_analysis.interval == 15.0
    assert rollout.effective_analysis.alpha == 0.01
    assert rollout.effective_analysis.on_failure == "rollback"
    assert rollout.progress_deadline == 3 * 5400.0
    assert rollout.effective_analysis.checks[0].describe() == "ttft p90<=2s"
    assert rollout.effective_analysis.checks[1].max == 1.5
    defaults = openai_bluegreen.load_config(scheduled()).rollouts[0].effective_analysis
    assert [c.describe() for c in defaults.checks] == [
        "error_rate ratio<=1.5", "latency p95 ratio<=1.5", "ttft p95 ratio<=1.5"]


def test_state_store_urls_are_checked() -> None:
    assert openai_bluegreen.load_config({"state": "file:///tmp/x.json"}).state == \
        "file:///tmp/x.json"
    assert openai_bluegreen.load_config({"state": "redis://:pw@localhost:6379/0"}).state == \
        "redis://:pw@localhost:6379/0"
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.load_config({"state": "redis://:hunter2@local host:6379/0"})
    assert "hunter2" not in str(caught.value) and "redis://:***@local host" in str(caught.value)
    with pytest.raises(ConfigError, match=r"state: must be 'memory', 'file:///path"):
        openai_bluegreen.load_config({"state": "s3://bucket"})
    assert openai_bluegreen.load_config(
        {"metrics_source": "http://127.0.0.1:9090"}).metrics_source == "http://127.0.0.1:9090"
    with pytest.raises(ConfigError, match="metrics_source: must be 'local' or a Prometheus URL"):
        openai_bluegreen.load_config({"metrics_source": "prometheus"})


def test_store_credentials_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_PASSWORD", "s3cret")
    config = openai_bluegreen.load_config({"state": "redis://:${REDIS_PASSWORD}@redis:6379/0"})
    assert config.state == "redis://:s3cret@redis:6379/0"
    monkeypatch.delenv("REDIS_PASSWORD")
    with pytest.raises(ConfigError, match=r"state: environment variable REDIS_PASSWORD "
                       r"\(used as \$\{REDIS_PASSWORD\}\) is not set"):
        openai_bluegreen.load_config({"state": "redis://:${REDIS_PASSWORD}@redis:6379/0"})


def test_api_key_value_never_appears_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    config = with_change("green.api_key", "sk-live-should-not-leak")
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.install(config)
    assert "sk-live-should-not-leak" not in str(caught.value)
    config = with_change("green.headers", {"Authorization": 5})
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.install(config)
    assert "rollouts[0].green.headers.Authorization" in str(caught.value)


def test_missing_key_environment_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GREEN_API_KEY", raising=False)
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.install(good())
    assert "rollouts[0].green.api_key_env" in str(caught.value)
    assert "GREEN_API_KEY is not set" in str(caught.value)
    assert not is_patched()


def test_a_bad_section_is_shown_by_its_keys_not_its_values() -> None:
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.load_config({"rollouts": {"chat": {"token": "hunter2"}}})
    assert "rollouts: Input should be a valid list (got a mapping with keys: chat)" in \
        str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_a_missing_key_is_named_with_every_other_problem_and_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GREEN_API_KEY", raising=False)
    config = good()
    config["rollouts"][0]["weight"] = 150
    path = tmp_path / "openai-bluegreen.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.install(str(path))
    message = str(caught.value)
    assert str(path) in message  # one round, with where it came from
    assert "rollouts[0].weight" in message and "rollouts[0].green.api_key_env" in message
    # The CLI sends no call: it reads a config whose keys only the apps have.
    config["rollouts"][0]["weight"] = 10
    path.write_text(json.dumps(config))
    assert openai_bluegreen.load_config(str(path)).rollouts[0].weight == 10


def test_a_reinstall_of_the_same_config_follows_a_rotated_key(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from openai_bluegreen.testing import SimulatedUpstream

    with SimulatedUpstream("blue") as blue, SimulatedUpstream("green") as green:
        config = good()
        config["rollouts"][0].update(weight=100)
        config["rollouts"][0]["green"]["base_url"] = green.base_url
        client = openai.OpenAI(base_url=blue.base_url, api_key="blue-key", max_retries=0)
        try:
            for key in ("old-key-1111", "new-key-2222"):
                monkeypatch.setenv("GREEN_API_KEY", key)
                openai_bluegreen.install(config)
                client.chat.completions.create(model="gpt-4.1", messages=[])
            assert [r.api_key for r in green.requests] == ["old-key-1111", "new-key-2222"]
            monkeypatch.delenv("GREEN_API_KEY")
            with pytest.raises(ConfigError, match="GREEN_API_KEY is not set"):
                openai_bluegreen.install(config)  # refused, as a first install would be
            client.chat.completions.create(model="gpt-4.1", messages=[])
            assert green.requests[-1].api_key == "new-key-2222"  # and nothing changed
        finally:
            openai_bluegreen.uninstall()
            client.close()


def test_duplicate_names_and_overlapping_matches_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GREEN_API_KEY", GREEN_KEY)
    config = good()
    config["rollouts"].append(dict(config["rollouts"][0]))
    with pytest.raises(ConfigError, match=r"rollouts\[1\].name: repeats rollouts\[0\].name "
                       r"\(got 'chat-upgrade'\)"):
        openai_bluegreen.install(config)
    config["rollouts"][1] = {**config["rollouts"][0], "name": "other"}
    with pytest.raises(ConfigError, match=r"'gpt-4\.1' is already taken by rollout 'chat-upgrade'"):
        openai_bluegreen.install(config)


def test_duplicate_rollout_names_are_reported_at_their_field_path() -> None:
    """The problems were ``[("(config)", "rollouts[1].name 'r' repeats rollouts[0] (got a
    mapping with keys: rollouts)")]``: no field path, and a value that was not the bad one."""
    first = good()["rollouts"][0]
    config = {"rollouts": [first, {**first, "match": {"model": "other"}},
                           {**first, "name": "third"}]}
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.load_config(config)
    assert caught.value.problems == [
        ("rollouts[1].name", "repeats rollouts[0].name (got 'chat-upgrade')"),
        ("rollouts[2].match.model", "'gpt-4.1' is already taken by rollout 'chat-upgrade'")]
    assert "mapping with keys" not in str(caught.value)


def test_a_progress_deadline_shorter_than_the_interval_is_refused() -> None:
    """Looks come once an interval, so such a step would pause at its first look unless all
    its data were in (``10s`` meant as ``10m``); it was accepted."""
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.load_config(scheduled(
            {"steps": [5, 50], "progress_deadline": "10s"}, {"interval": "30s"}))
    [(path, why)] = caught.value.problems
    assert path == "rollouts[0].schedule.progress_deadline"
    assert "analysis.interval (30s)" in why and "(got 10s)" in why
    # The default interval (30s) counts too; one interval is enough.
    with pytest.raises(ConfigError, match="progress_deadline"):
        openai_bluegreen.load_config(scheduled({"steps": [5, 50], "progress_deadline": 29}))
    ok = openai_bluegreen.load_config(scheduled({"steps": [5, 50], "progress_deadline": "30s"}))
    assert ok.rollouts[0].progress_deadline == 30.0


@pytest.mark.parametrize(("models", "why"), [
    ([" gpt-4.1"], "must not be blank or start or end with whitespace"),
    (["  "], "must not be blank or start or end with whitespace"),
    (["gpt-4.1", "gpt-4o", "gpt-4.1"], "lists 'gpt-4.1' more than once"),
])
def test_a_match_model_that_could_never_match_or_repeats_is_refused(models: list[str],
                                                                    why: str) -> None:
    """Matched exactly against the model the app asks for, " gpt-4.1" matched nothing, and a
    model listed twice in one rollout was reported as taken by that same rollout."""
    config = good()
    config["rollouts"][0]["match"] = {"model": models}
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.load_config(config)
    [(path, message)] = caught.value.problems
    assert path == "rollouts[0].match.model" and why in message
    assert "already taken" not in str(caught.value)


def test_every_problem_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GREEN_API_KEY", raising=False)
    config = with_change("weight", -1)
    config["rollouts"][0]["blue"]["model"] = ""
    config["bogus"] = 1
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.install(config)
    fields = {path for path, _ in caught.value.problems}
    assert fields == {"rollouts[0].weight", "rollouts[0].blue.model", "bogus",
                      "rollouts[0].green.api_key_env"}


def test_bad_reinstall_keeps_the_previous_installation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREEN_API_KEY", GREEN_KEY)
    openai_bluegreen.install(good())
    with pytest.raises(ConfigError):
        openai_bluegreen.install(with_change("weight", 101))
    status = openai_bluegreen.status()
    assert status["installed"] is True
    assert status["rollouts"][0]["weight"] == 10


@pytest.mark.parametrize("suffix", [".yaml", ".toml", ".json"])
def test_config_files_in_every_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      suffix: str) -> None:
    monkeypatch.setenv("GREEN_API_KEY", GREEN_KEY)
    path = tmp_path / f"openai-bluegreen{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(good()))
    elif suffix == ".yaml":
        path.write_text(
            "rollouts:\n  - name: chat-upgrade\n    match: {model: gpt-4.1}\n"
            "    blue: {model: gpt-4.1}\n    green: {model: deepseek-v3.2, base_url: "
            "'https://green.example/v1', api_key_env: GREEN_API_KEY}\n    weight: 10\n")
    else:
        path.write_text(
            '[[rollouts]]\nname = "chat-upgrade"\nweight = 10\nmatch = {model = "gpt-4.1"}\n'
            'blue = {model = "gpt-4.1"}\ngreen = {model = "deepseek-v3.2", base_url = '
            '"https://green.example/v1", api_key_env = "GREEN_API_KEY"}\n')
    openai_bluegreen.install(path)
    assert openai_bluegreen.status()["rollouts"][0]["green"]["model"] == "deepseek-v3.2"
    openai_bluegreen.uninstall()
    monkeypatch.setenv("OPENAI_BLUEGREEN_CONFIG", str(path))
    openai_bluegreen.install()
    assert openai_bluegreen.status()["rollouts"][0]["weight"] == 10


def test_unparsable_and_missing_files_are_named(tmp_path: Path) -> None:
    broken = tmp_path / "c.yaml"
    broken.write_text("rollouts: [\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        openai_bluegreen.install(broken)
    with pytest.raises(ConfigError, match="cannot read"):
        openai_bluegreen.install(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match=r"unknown config file type '\.ini'"):
        (tmp_path / "c.ini").write_text("x")
        openai_bluegreen.install(tmp_path / "c.ini")


def test_no_config_anywhere_says_how_to_give_one(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    monkeypatch.delenv("OPENAI_BLUEGREEN_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="OPENAI_BLUEGREEN_CONFIG"):
        openai_bluegreen.install()


def test_config_object_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREEN_API_KEY", GREEN_KEY)
    config = openai_bluegreen.load_config(good())
    openai_bluegreen.install(config)
    assert openai_bluegreen.status()["rollouts"][0]["match"] == ["gpt-4.1"]


@pytest.mark.parametrize("password", ["p@ssw0rd", "ab/cd+ef==", "a:b@c/d", "plain"])
def test_passwords_are_masked_whole_and_encoded_from_the_environment(
        monkeypatch: pytest.MonkeyPatch, password: str) -> None:
    from urllib.parse import unquote, urlsplit

    from openai_bluegreen._config import mask_url

    monkeypatch.setenv("REDIS_PASSWORD", password)
    config = openai_bluegreen.load_config({"state": "redis://:${REDIS_PASSWORD}@redis:6379/0"})
    assert unquote(urlsplit(config.state).password or "") == password
    assert mask_url(config.state) == "redis://:***@redis:6379/0"
    assert mask_url(f"redis://user:{password}@h:1/0") == "redis://user:***@h:1/0"
    with pytest.raises(ConfigError) as caught:  # an invalid URL never echoes the password
        openai_bluegreen.load_config({"state": "redis://:${REDIS_PASSWORD}@bad host:6379/0"})
    assert password not in str(caught.value) and "redis://:***@bad host" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.load_config({"metrics_source": f"ftp://admin:{password}@prom:9090"})
    assert password not in str(caught.value) and "admin:***@prom" in str(caught.value)
    source = openai_bluegreen.load_config(
        {"metrics_source": "http://admin:${REDIS_PASSWORD}@prom:9090"}).metrics_source
    assert mask_url(source) == "http://admin:***@prom:9090"


# --- YAML 1.2 booleans, duplicate keys, empty and undecodable files --------------------------

DESIGN_EXAMPLE = """\
state: memory
rollouts:
  - name: chat-upgrade
    match: {model: gpt-4.1}
    blue:  {model: gpt-4.1}
    green: {model: deepseek-v3.2}
    fallback: {enabled: true, on: [server_error, timeout]}
    schedule: {steps: [1, 5, 25, 50, 100], min_step_duration: 10m, min_requests: 200}
"""


def test_yaml_on_off_yes_no_are_strings_so_the_design_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(DESIGN_EXAMPLE)
    rollout = openai_bluegreen.load_config(path).rollouts[0]
    assert rollout.fallback.enabled is True
    assert rollout.fallback.on == ["server_error", "timeout"]
    path.write_text(DESIGN_EXAMPLE.replace("enabled: true", "enabled: FALSE"))
    assert openai_bluegreen.load_config(path).rollouts[0].fallback.enabled is False
    path.write_text(DESIGN_EXAMPLE.replace("schedule:", "weight: yes\n    x-schedule:"))
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.load_config(path)
    assert "rollouts[0].weight" in {p for p, _ in caught.value.problems}
    assert "'yes'" in str(caught.value)


def test_duplicate_yaml_keys_are_refused_naming_key_path_and_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("rollouts:\n  - name: a\n    match: {model: gpt-4.1}\n"
                    "    blue:  {model: gpt-4.1}\n    green: {model: m2}\n"
                    "    green: {model: m3}\n")
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.install(path)
    assert caught.value.problems == [
        ("rollouts[0].green", "duplicate key at line 6 (first at line 5); each key may appear "
         "once")]
    assert not is_patched()


@pytest.mark.parametrize(("name", "text"), [
    ("empty.yaml", ""), ("comments.yaml", "# nothing here\n"), ("empty.toml", ""),
    ("empty.json", "{}"), ("no-rollouts.yaml", "state: memory\nrollouts: []\n"),
])
def test_config_file_without_rollouts_is_refused(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.install(path)
    assert [p for p, _ in caught.value.problems] == ["rollouts"]
    assert "at least one rollout is required" in str(caught.value)
    assert str(path) in str(caught.value)
    assert openai_bluegreen.status()["installed"] is False


def test_non_utf8_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match=r"cannot read .*c\.yaml.*not UTF-8") as caught:
        openai_bluegreen.install(path)
    assert caught.value.source == str(path)


# --- secrets never echoed ---------------------------------------------------------------------

SECRET = "sk-proj-SECRETabc123XYZ"


@pytest.mark.parametrize("query", ["password=hunter2", "namespace=app&password=hunter2",
                                   f"x={SECRET}"])
def test_a_password_in_the_redis_urls_query_is_refused_without_echoing_it(query: str) -> None:
    """redis-py reads ``?password=``; the store's URL check refused it, quoting it whole."""
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.load_config({**good(), "state": f"redis://h:6379/0?{query}"})
    message = str(caught.value)
    assert "state: must not hold credentials" in message and "=***'" in message, message
    assert "hunter2" not in message and SECRET not in message
    assert openai_bluegreen.load_config(
        {**good(), "state": "redis://h:6379/0?namespace=app"}).state.endswith("namespace=app")


@pytest.mark.parametrize("headers", [{f"Authorization: Bearer {SECRET}": "x"},
                                     {f"Authorization: Bearer {SECRET}": None}])
def test_a_key_pasted_into_a_header_name_is_not_echoed(headers: dict[str, Any]) -> None:
    """A curl line pasted as a header name was quoted whole, key included, in the message (an
    invalid name) or in the field path (a null value)."""
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.load_config(with_change("green.headers", headers))
    assert SECRET not in str(caught.value) and "rollouts[0].green.headers" in str(caught.value)


@pytest.mark.parametrize("field", ["pass", "pwd", "passwd", "auth", "credentials",
                                   "basicAuth"])
def test_a_value_under_a_field_named_for_a_credential_is_masked(field: str) -> None:
    """``password: ...`` was masked but ``pwd``, ``pass``, ``auth`` or ``credentials`` (the
    names a URL query is already checked for) quoted their value in the error."""
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.load_config(with_change(f"green.{field}", "hunter2xy"))
    assert "hunter2xy" not in str(caught.value)
    assert f"rollouts[0].green.{field}: unknown field (got '***')" in str(caught.value)


def test_credentials_in_base_url_are_refused_and_masked() -> None:
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.load_config(with_change("green.base_url", f"http://u:{SECRET}@h/v1"))
    assert SECRET not in str(caught.value)
    assert "http://u:***@h/v1" in str(caught.value)
    assert "rollouts[0].green.base_url" in str(caught.value)


@pytest.mark.parametrize("query", [f"key={SECRET}", "api-version=2024-10-21&token=hunter2",
                                   "sig=AIzaSyA1b2C3d4E5f6G7h8I9j0KLmnopQR"])
def test_credentials_in_base_urls_query_are_refused_and_masked(query: str) -> None:
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.load_config(with_change("green.base_url", f"https://h/v1?{query}"))
    message = str(caught.value)
    assert "rollouts[0].green.base_url" in message and "must not hold credentials" in message
    assert SECRET not in message and "hunter2" not in message and "AIzaSy" not in message
    assert "=***'" in message
    # A plain query (an Azure api-version) is no credential, nor a name that merely contains
    # "key" (it was refused as "looks like a key").
    for url in ("https://h/openai/v1?api-version=2024-10-21", "https://h/v1?monkey=1&keys=2"):
        assert openai_bluegreen.load_config(with_change("green.base_url", url)) \
            .rollouts[0].green.base_url == url
    with pytest.raises(ConfigError, match="query parameter 'apiKey' looks like a key"):
        openai_bluegreen.load_config(with_change("green.base_url", "https://h/v1?apiKey=x"))


def test_a_metrics_source_with_a_token_in_its_query_is_refused_without_echoing_it() -> None:
    """status and errors show the metrics source's URL: a token in it would be shown."""
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.load_config({**good(), "metrics_source":
                                      "http://prom:9090/?access_token=hunter2"})
    message = str(caught.value)
    assert "metrics_source: must not hold credentials" in message and "hunter2" not in message
    assert "http://user:password@host" in message


@pytest.mark.parametrize(("field", "url"), [
    ("state", "redis://:hunter2pw@redis:6379/0?password=x"),
    ("metrics_source", "http://admin:hunter2pw@prom:9090/?token=abc"),
    ("base_url", "https://u:pw@h/v1?api-key=hunter2pw"),  # user info and a key in the query
])
def test_a_credentials_error_masks_every_credential_of_the_url(field: str, url: str) -> None:
    """The query-credential error quoted the URL before its query unmasked (a user-info
    password included), and base_url's user-info error quoted the query unmasked."""
    config = with_change("green.base_url", url) if field == "base_url" \
        else {**good(), field: url}
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.load_config(config)
    message = str(caught.value)
    assert "must not hold credentials" in message and "hunter2pw" not in message, message


@pytest.mark.parametrize("field", ["state", "metrics_source"])
def test_an_expanded_variable_is_never_echoed_in_a_config_error(
        field: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``${VAR}`` is masked only where the URL's user info is: a mistyped URL (no ``@``) put a
    password elsewhere, and the error quoted it. The field is shown as written instead."""
    monkeypatch.setenv("STORE_PASSWORD", "correct-horse-battery")
    url = {"state": "redis://:${STORE_PASSWORD}redis:6379/0",
           "metrics_source": "http://admin:${STORE_PASSWORD}prom:9090"}[field]
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.load_config({**good(), field: url})
    message = str(caught.value)
    assert "correct-horse-battery" not in message, message
    assert f"{field}: " in message and f"(got {url!r})" in message, message


@pytest.mark.parametrize(("field", "url"), [
    ("metrics_source", "http://${PROM_PASSWORD}prometheus:9090"),
    ("state", "redis://${PROM_PASSWORD}redis:6379/0"),
])
def test_a_credential_variable_in_the_host_is_refused(
        field: str, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing ``@`` put the password into the host, a valid one (``hunter2prometheus``),
    so the config loaded and status, logs and connection errors showed the password."""
    monkeypatch.setenv("PROM_PASSWORD", "hunter2")
    monkeypatch.setenv("PROM_HOST", "prometheus")
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.load_config({**good(), field: url})
    [(path, why)] = caught.value.problems
    assert path == field and "${PROM_PASSWORD} is in the host" in why, why
    assert "hunter2" not in str(caught.value)
    # A variable named for a host, or a password before its '@', is what it looks like.
    fine = url.replace("${PROM_PASSWORD}", "${PROM_HOST}")
    assert "prometheus" in getattr(openai_bluegreen.load_config({**good(), field: fine}), field)
    inside = url.replace("${PROM_PASSWORD}", "u:${PROM_PASSWORD}@")
    assert "hunter2@" in getattr(openai_bluegreen.load_config({**good(), field: inside}), field)


@pytest.mark.parametrize("url", ["https://${GREEN_HOST}/v1", "${GREEN_URL}"])
def test_a_variable_in_base_url_is_refused_not_taken_as_a_host(
        url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``${VAR}`` is expanded in ``state`` and ``metrics_source`` only: ``base_url:
    https://${GREEN_HOST}/v1`` was accepted as written, and every green call went to a host
    named ``${GREEN_HOST}`` (then fell back to blue)."""
    monkeypatch.setenv("GREEN_HOST", "green.internal")
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.load_config(with_change("green.base_url", url))
    [(path, why)] = caught.value.problems
    assert path == "rollouts[0].green.base_url"
    assert why.startswith("${VAR} is expanded only in state and metrics_source"), why


def test_every_url_problem_is_named_without_echoing_a_key() -> None:
    for url in ("https://gw example.com/v1?api_key=sk-abcdefghijklmnop",  # bad shape and a key
                "https://h/v1?subscription-key=abc123",  # Azure API Management
                "https://h/v1?client_secret=hunter2"):
        with pytest.raises(ConfigError) as caught:
            openai_bluegreen.load_config(with_change("green.base_url", url))
        message = str(caught.value)
        assert "must not hold credentials" in message, message
        assert "abcdefghijklmnop" not in message and "abc123" not in message
        assert "hunter2" not in message
    # A metrics source with an '@' after its host is refused here, as the source would refuse
    # it later (the CLI used to crash on it).
    with pytest.raises(ConfigError, match="has an '@' after its host"):
        openai_bluegreen.load_config({**good(), "metrics_source": "http://u:pw@prom:9090/x@y"})


def test_ipv6_literals_are_hosts_in_every_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_PASSWORD", "pw")
    config = with_change("green.base_url", "http://[::1]:8080/v1")
    config.update(state="redis://:${REDIS_PASSWORD}@[::1]:6379/0",
                  metrics_source="http://[::1]:9090")
    config["rollouts"][0]["schedule"] = {"steps": [10, 100]}
    del config["rollouts"][0]["weight"]
    loaded = openai_bluegreen.load_config(config)
    assert loaded.state == "redis://:pw@[::1]:6379/0"
    assert loaded.metrics_source == "http://[::1]:9090"
    assert loaded.rollouts[0].green.base_url == "http://[::1]:8080/v1"
    with pytest.raises(ConfigError, match=r"rollouts\[0\]\.green\.base_url"):
        openai_bluegreen.load_config(with_change("green.base_url", "http://[::1/v1"))
    with pytest.raises(ConfigError, match="must look like redis://"):  # the pattern alone
        openai_bluegreen.load_config({**good(), "state": "redis://[::1/0"})


@pytest.mark.parametrize("pasted", [SECRET, "gsk_SECRETabc123XYZdef456", "Bearer abcdef123456",
                                    "a3f9c2e17b4d4e0f9a8b7c6d5e4f3a2b1c0d9e8f"])
def test_key_pasted_into_api_key_env_is_refused_without_echoing_it(pasted: str) -> None:
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.load_config(with_change("green.api_key_env", pasted))
    message = str(caught.value)
    assert "looks like a key, not a variable name" in message
    assert "rollouts[0].green.api_key_env" in message
    assert pasted not in message and pasted[8:] not in message
    # install() also names unset key variables in the same error: never this one, whole.
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.load_config(with_change("green.api_key_env", pasted),
                                     require_keys=True)
    assert pasted not in str(caught.value) and pasted[8:] not in str(caught.value)


def test_plausible_variable_names_stay_accepted_in_api_key_env() -> None:
    for name in ("GREEN_API_KEY", "OPENAI_API_KEY_2", "deepseek_key", "SK_GREEN"):
        config = openai_bluegreen.load_config(with_change("green.api_key_env", name))
        assert config.rollouts[0].green.api_key_env == name


def test_secret_looking_values_of_unknown_fields_are_masked() -> None:
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.load_config(with_change("green.bearer", SECRET))
    assert "rollouts[0].green.bearer: unknown field" in str(caught.value)
    assert "SECRETabc" not in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.load_config(with_change("green.auth", f"Bearer {SECRET}"))
    assert "SECRETabc" not in str(caught.value)


def test_yaml_parse_error_keeps_position_but_not_the_source_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("rollouts:\n  - name: a\n    green: {model: m2, headers: "
                    f"{{Authorization: Bearer {SECRET}\n")
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.install(path)
    message = str(caught.value)
    assert "SECRETabc" not in message
    assert "cannot parse" in message and "line 4, column 1" in message
    assert len(message.splitlines()) == 2  # the header and one line for the problem


# --- wrong types and environment overrides ----------------------------------------------------

@pytest.mark.parametrize(("config", "field"), [
    (with_change("weight", True), "rollouts[0].weight"),
    (scheduled({"steps": [5, 100], "min_requests": True}), "rollouts[0].schedule.min_requests"),
    (scheduled({"steps": [True, 100]}), "rollouts[0].schedule.steps"),
    (with_change("fallback", {"green_max_retries": False}),
     "rollouts[0].fallback.green_max_retries"),
])
def test_booleans_are_refused_for_numeric_fields(config: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.load_config(config)
    assert field in {p for p, _ in caught.value.problems}, caught.value.problems
    assert "not a boolean" in str(caught.value)


def test_install_of_an_unsupported_type_says_what_is_accepted() -> None:
    with pytest.raises(ConfigError, match=r"a Config, a mapping or a path .* \(got int\)"):
        openai_bluegreen.install(123)  # type: ignore[arg-type]  # the wrong type is the test
    assert openai_bluegreen.status()["installed"] is False


def test_bad_state_from_the_environment_names_the_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BLUEGREEN_STATE", "s3://bucket")
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.load_config(good())
    assert "OPENAI_BLUEGREEN_STATE" in str(caught.value)
    assert caught.value.problems[0][0] == "state"


# --- URLs whose shape cannot work are refused at config time ----------------------------------

@pytest.mark.parametrize(("config", "field", "shown"), [
    ({"state": "file://somehost/x.json"}, "state", "file://somehost/x.json"),
    ({"state": "file://relative.json"}, "state", "file://relative.json"),
    ({"state": "redis://127.0.0.1:99999/0"}, "state", "99999"),
    ({"state": "redis://:hunter2@h:0/0"}, "state", "redis://:***@h:0/0"),
    ({"metrics_source": "http://127.0.0.1:99999"}, "metrics_source", "99999"),
    (with_change("green.base_url", "http://h:99999/v1"), "rollouts[0].green.base_url", "99999"),
])
def test_urls_with_impossible_hosts_or_ports_are_refused(
        config: dict[str, Any], field: str, shown: str) -> None:
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.load_config(config)
    assert field in {p for p, _ in caught.value.problems}, caught.value.problems
    assert shown in str(caught.value) and "hunter2" not in str(caught.value)
    assert openai_bluegreen.load_config({"state": "file://localhost/tmp/x.json"}).state


# --- a refused install changes nothing --------------------------------------------------------

def _gauge(reader: Any) -> dict[str, float]:
    openai_bluegreen.flush()
    out: dict[str, float] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == "bluegreen.rollout.weight":
                    for point in metric.data.data_points:
                        out[str(point.attributes["bluegreen.rollout"])] = point.value
    return out


def test_the_weight_gauge_reports_only_the_installed_routers_weights(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    monkeypatch.setenv("GREEN_API_KEY", GREEN_KEY)
    first, second = InMemoryMetricReader(), InMemoryMetricReader()
    providers = MeterProvider(metric_readers=[first]), MeterProvider(metric_readers=[second])
    try:
        openai_bluegreen.install(good(), meter_provider=providers[0])
        assert _gauge(first) == {"chat-upgrade": 0.1}
        openai_bluegreen.uninstall()
        assert _gauge(first) == {}  # not installed: no weight, not a stale 10%
        openai_bluegreen.install(good(), meter_provider=providers[0])
        openai_bluegreen.install(good(), meter_provider=providers[1])
        openai_bluegreen.set_weight("chat-upgrade", 80)
        assert _gauge(first) == {}
        assert _gauge(second) == {"chat-upgrade": 0.8}
    finally:
        openai_bluegreen.uninstall()
        for provider in providers:
            provider.shutdown()


def test_a_local_source_the_app_gave_its_provider_is_the_one_the_watcher_reads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk.metrics import MeterProvider

    from openai_bluegreen.sources.local import LocalSource

    monkeypatch.setenv("GREEN_API_KEY", GREEN_KEY)
    for added_later in (False, True):  # given to the constructor, or added to the provider
        mine = LocalSource()
        provider = MeterProvider() if added_later else MeterProvider(metric_readers=[mine])
        if added_later:
            provider.add_metric_reader(mine)
        try:
            openai_bluegreen.install(scheduled(), meter_provider=provider)
            watcher = openai_bluegreen._state.watcher
            assert watcher is not None and watcher.source is mine  # not a second reader
        finally:
            openai_bluegreen.uninstall()
            provider.shutdown()


def test_a_runtime_weight_stays_through_a_reinstall_that_leaves_its_rollout_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    monkeypatch.setenv("GREEN_API_KEY", GREEN_KEY)
    try:
        openai_bluegreen.install(good())
        openai_bluegreen.set_weight("chat-upgrade", 40)
        openai_bluegreen.install(good(), tracer_provider=TracerProvider())  # new providers
        assert openai_bluegreen.status()["rollouts"][0]["weight"] == 40
        openai_bluegreen.install(with_change("weight", 20))  # its config changed: as configured
        assert openai_bluegreen.status()["rollouts"][0]["weight"] == 20
    finally:
        openai_bluegreen.uninstall()


def test_install_whose_store_cannot_open_is_a_config_error_and_changes_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    monkeypatch.setenv("GREEN_API_KEY", GREEN_KEY)
    try:
        openai_bluegreen.install(good(), meter_provider=provider)
        readers_before = list(provider._all_metric_readers)
        before = _gauge(reader)
        assert before == {"chat-upgrade": 0.1}
        # The redis client library is absent: the store cannot be opened.
        monkeypatch.setitem(sys.modules, "redis", None)
        monkeypatch.setitem(sys.modules, "openai_bluegreen.stores.redis", None)
        refused = scheduled(name="other", match={"model": "other"})
        refused["state"] = "redis://:hunter2@127.0.0.1:6379/0"
        with pytest.raises(ConfigError) as caught:
            openai_bluegreen.install(refused, meter_provider=provider)
        assert caught.value.problems[0][0] == "state"
        assert "redis://:***@127.0.0.1:6379/0" in str(caught.value)
        assert "hunter2" not in str(caught.value)
        assert _gauge(reader) == before
        assert list(provider._all_metric_readers) == readers_before
        assert [r["name"] for r in openai_bluegreen.status()["rollouts"]] == ["chat-upgrade"]
    finally:
        openai_bluegreen.uninstall()
        provider.shutdown()


def test_a_state_url_naming_a_directory_is_refused_at_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREEN_API_KEY", GREEN_KEY)
    config = scheduled()
    config["state"] = f"file://{tmp_path}"
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.install(config)
    assert caught.value.problems[0][0] == "state"
    assert "is a directory" in str(caught.value)
    assert not openai_bluegreen._patch.is_patched()


@pytest.mark.parametrize("interval", ["99999999999999999999999999999d", "366d", 1e30])
def test_durations_longer_than_a_year_are_refused(interval: Any) -> None:
    """A thread cannot wait that long (OverflowError would end the watcher's loop)."""
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.load_config(scheduled(analysis={"interval": interval}))
    assert caught.value.problems[0][0] == "rollouts[0].analysis.interval"
    assert "at most 365d" in str(caught.value)


@pytest.mark.parametrize(("text", "shown"), [
    ("OPENAI_API_KEY_2024_PRODUCTION_V2", "OPENAI_API_KEY_2024_PRODUCTION_V2"),  # a name
    ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini-2025-04-14"),
    ("x" * 32, "xxxx***"),  # 32 characters of one run: a key, masked as it is judged
    ("sk-proj-abcdef123456", "sk-p***"),
    ("token ABCD1234EFGH5678IJKL9012 here", "token ABCD*** here"),
])
def test_masking_and_the_secret_test_agree(text: str, shown: str) -> None:
    # One test decides both what is refused as a literal key and what is masked in errors: a
    # reviewer found names garbled in messages and a 32-character key judged secret but shown.
    from openai_bluegreen._config import looks_like_secret, mask_secrets

    assert mask_secrets(text) == shown
    assert looks_like_secret(text.split()[1] if " " in text else text) is (shown != text)


@pytest.mark.parametrize(("green", "message"), [
    ({"model": "b", "params": {"temperature": float("nan")}},
     r"rollouts\[0\]\.green\.params: temperature: NaN and infinity cannot be sent"),
    ({"model": "b", "params": {"extra": {"a": [1.0, float("inf")]}}},
     r"rollouts\[0\]\.green\.params: extra\['a'\]\[1\]: NaN and infinity"),
    ({"model": "   "}, r"rollouts\[0\]\.green\.model: must name a model \(got '   '\)"),
])
def test_values_no_request_could_carry_are_refused(green: dict[str, Any], message: str) -> None:
    """A NaN in params made every green call's body invalid JSON; a blank model name reached
    the provider as is."""
    with pytest.raises(ConfigError, match=message):
        openai_bluegreen.load_config({"rollouts": [{
            "name": "r", "match": {"model": "m"}, "blue": {"model": "a"}, "green": green}]})


def test_a_repeated_key_in_a_json_config_is_refused_with_its_path(tmp_path: Path) -> None:
    """YAML and TOML refuse a repeated key; JSON kept the last one silently, so a
    ``"state"`` given twice ran with whichever came second."""
    rollout = json.dumps(good()["rollouts"][0])
    path = tmp_path / "openai-bluegreen.json"
    path.write_text('{"state": "file:///tmp/a.json", "state": "memory", "rollouts": ['
                    + rollout[:-1] + ', "weight": 5, "weight": 50}]}')
    with pytest.raises(ConfigError) as caught:
        openai_bluegreen.load_config(path)
    assert caught.value.problems == [
        ("state", "duplicate key; each key may appear once"),
        ("rollouts[0].weight", "duplicate key; each key may appear once")]


def test_an_empty_config_path_is_named_as_such() -> None:
    """``--config ""`` (an unset shell variable) was read as the working directory: "cannot read
    '.': Is a directory", naming neither the option's value nor what was wrong with it."""
    for source in ("", " "):
        with pytest.raises(ConfigError) as caught:
            openai_bluegreen.load_config(source)
        assert caught.value.problems[0][1].startswith("the config path is empty (got '"), \
            caught.value.problems


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_a_config_file_starting_with_a_byte_order_mark_is_read(tmp_path: Path,
                                                               suffix: str) -> None:
    """Windows editors save UTF-8 with a BOM: YAML read such a file, while JSON failed with
    "Unexpected UTF-8 BOM" and TOML with "Invalid statement (at line 1, column 1)"."""
    path = tmp_path / f"openai-bluegreen{suffix}"
    if suffix == ".json":
        text = json.dumps(good())
    else:
        text = ('[[rollouts]]\nname = "chat-upgrade"\nmatch = {model = "gpt-4.1"}\n'
                'blue = {model = "gpt-4.1"}\ngreen = {model = "deepseek-v3.2"}\n')
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert openai_bluegreen.load_config(path).rollouts[0].name == "chat-upgrade"
