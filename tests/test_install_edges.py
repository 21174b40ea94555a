"""Installing and routing at the edges: the SDK's environment headers stay off other providers, a
re-install keeps Responses follow-ups pinned, unsendable headers are refused by name, and ${VAR}
expands as it is outside a URL's user info."""

from __future__ import annotations

import copy
from typing import Any

import openai
import pytest
from opentelemetry.sdk.trace import TracerProvider

import openai_bluegreen
from openai_bluegreen.testing import SimulatedUpstream

from .conftest import BLUE_KEY, GREEN_KEY, Telemetry, rollout_config

MSGS = [{"role": "user", "content": "hi"}]


@pytest.fixture
def clients() -> Any:
    made: list[openai.OpenAI] = []

    def make(base_url: str) -> openai.OpenAI:
        made.append(openai.OpenAI(base_url=base_url, api_key=BLUE_KEY, max_retries=0))
        return made[-1]

    yield make
    for client in made:
        client.close()


# 1. The green endpoint client picks up OPENAI_CUSTOM_HEADERS (the caller's default headers
#    from the environment): a gateway token goes to the third-party base_url, and an
#    Authorization there even replaces green's own key.
def test_green_endpoint_never_gets_the_callers_env_default_headers(
    install: Any, blue: SimulatedUpstream, green: SimulatedUpstream, clients: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_CUSTOM_HEADERS",
                       "X-Gateway-Token: caller-gateway-secret\n"
                       "Authorization: Bearer caller-gateway-credential")
    install(rollout_config(green, weight=100))
    client = clients(blue.base_url)
    client.chat.completions.create(model="gpt-4.1", messages=MSGS)
    assert len(green.requests) == 1
    headers = {k.lower(): v for k, v in green.requests[0].headers.items()}
    assert "x-gateway-token" not in headers
    assert headers["authorization"] == f"Bearer {GREEN_KEY}"


# 2. A re-install builds new RolloutRuntime objects and forgets which environment answered
#    which Responses API response: a follow-up then goes by weight to the environment that
#    does not hold its previous response.
def test_a_reinstall_with_other_providers_keeps_follow_ups_pinned(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
    clients: Any,
) -> None:
    config = rollout_config(green, weight=100)
    install(config)
    client = clients(blue.base_url)
    first = client.responses.create(model="gpt-4.1", input="hi")
    assert first.model == "green-model"
    openai_bluegreen.set_weight("chat-upgrade", 0)
    # Same config, another tracer provider (e.g. the OTel instrumentor after install()).
    openai_bluegreen.install(config, tracer_provider=TracerProvider(),
                             meter_provider=telemetry.meter_provider)
    assert openai_bluegreen.status()["rollouts"][0]["weight"] == 0  # weight kept...
    follow_up = client.responses.create(model="gpt-4.1", input="more",
                                        previous_response_id=first.id)  # ...the pin is not
    assert follow_up.model == "green-model"


def test_a_reinstall_lowering_the_weight_keeps_follow_ups_pinned(
    install: Any, blue: SimulatedUpstream, green: SimulatedUpstream, clients: Any,
) -> None:
    config = rollout_config(green, weight=100)
    install(config)
    client = clients(blue.base_url)
    first = client.responses.create(model="gpt-4.1", input="hi")
    lowered = copy.deepcopy(config)
    lowered["rollouts"][0]["weight"] = 0
    install(lowered)  # same blue, same green: green still holds `first`
    follow_up = client.responses.create(model="gpt-4.1", input="more",
                                        previous_response_id=first.id)
    assert follow_up.model == "green-model"


# 3. Environment headers are not validated: a header no HTTP client can send is accepted at
#    install(), then every green call fails (non-ASCII value: UnicodeEncodeError raised into
#    the app, no fallback; a newline or a bad name: silently falls back to blue every time).
@pytest.mark.parametrize("headers", [{"X-Team": "équipe"}, {"X-Bad": "a\r\nInjected: 1"},
                                     {"X Bad Name": "v"}])
def test_headers_that_cannot_be_sent_are_refused_at_install(
    install: Any, green: SimulatedUpstream, headers: dict[str, str],
) -> None:
    config = rollout_config(green, weight=100)
    config["rollouts"][0]["green"]["headers"] = headers
    with pytest.raises(openai_bluegreen.ConfigError, match=r"rollouts\[0\]\.green\.headers"):
        install(config)


# 4. ${VAR} in state / metrics_source is percent-encoded wherever it stands, so it only works
#    inside the userinfo: a path or host:port from the environment breaks the URL.
def test_env_var_in_a_file_state_path_expands_to_a_usable_path(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STATE_DIR", str(tmp_path))
    config = openai_bluegreen.load_config({"state": "file://${STATE_DIR}/state.json"})
    assert config.state == f"file://{tmp_path}/state.json"


def test_env_var_holding_host_and_port_expands_to_that_host_and_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROM_HOST", "prometheus.monitoring:9090")
    config = openai_bluegreen.load_config({"metrics_source": "http://${PROM_HOST}"})
    assert config.metrics_source == "http://prometheus.monitoring:9090"


def test_an_sdk_without_the_responses_api_installs_and_routes_what_it_has(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An openai 1.x older than the Responses API has no ``openai.resources.responses``: the
    surfaces it has are routed, and install() does not fail on the ones it lacks."""
    import sys

    from openai.resources.responses import Responses

    before = Responses.__dict__["create"]
    monkeypatch.setitem(sys.modules, "openai.resources.responses", None)  # import fails
    install(rollout_config(green, weight=100))
    monkeypatch.undo()
    assert Responses.__dict__["create"] is before  # not wrapped
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    client.chat.completions.create(model="gpt-4.1", messages=MSGS)  # type: ignore[arg-type]
    assert len(green.requests) == 1 and not blue.requests
