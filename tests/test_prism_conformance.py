"""Conformance: routed calls, rewritten by the plugin, are valid requests for OpenAI's published
API. Prism serves ../shared/reference/openai-openapi.yaml as an independent mock; it validates
requests (auth scheme, paths, bodies) and answers with the spec's shapes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

import openai_bluegreen

from .conftest import Telemetry

ROOT = Path(__file__).resolve().parent.parent
PRISM = ROOT / "tools" / "prism" / "node_modules" / ".bin" / "prism"
SPEC = Path(os.environ.get("OPENAI_OPENAPI_SPEC",
                           ROOT.parent / "shared" / "reference" / "openai-openapi.yaml"))

pytestmark = pytest.mark.prism


def _missing(what: str, remedy: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing; {remedy} (CI must not skip conformance)")
    pytest.skip(f"{what} is missing; {remedy}")


@pytest.fixture(scope="module")
def prism_url() -> Iterator[str]:
    if not PRISM.exists():
        _missing(f"Prism ({PRISM})", "run `make install` (or `bash .ci/run`) to install it")
    if not SPEC.exists():
        _missing(f"the OpenAPI spec ({SPEC})",
                 "keep shared/ beside the repository or set OPENAI_OPENAPI_SPEC")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(ROOT / ".prism.log", "w")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen([str(PRISM), "mock", str(SPEC), "-h", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"Prism exited with {proc.returncode}; see .prism.log")
            if "Prism is listening" in (ROOT / ".prism.log").read_text(errors="replace"):
                break
            time.sleep(0.25)
        else:
            pytest.fail("Prism did not start within 120 s; see .prism.log")
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        log.close()


@pytest.fixture
def routed(install: Any, prism_url: str) -> str:
    # Green names the same mock by another host name, so it gets its own derived client,
    # base URL and key, as a second provider would.
    green_url = prism_url.replace("127.0.0.1", "localhost")
    green = {"base_url": green_url, "api_key_env": "GREEN_API_KEY",
             "headers": {"x-team": "platform"}}
    install({"rollouts": [
        {"name": "chat", "match": {"model": "gpt-4.1"}, "weight": 50,
         "blue": {"model": "gpt-4.1"},
         "green": {"model": "gpt-4o-mini", "params": {"temperature": 0.2}, **green}},
        {"name": "embeddings", "match": {"model": "text-embedding-3-small"}, "weight": 50,
         "blue": {"model": "text-embedding-3-small"},
         "green": {"model": "text-embedding-3-large", **green}},
        {"name": "instruct", "match": {"model": "gpt-3.5-turbo-instruct"}, "weight": 50,
         "blue": {"model": "gpt-3.5-turbo-instruct"},
         "green": {"model": "davinci-002", **green}},
    ]})
    return prism_url


@pytest.mark.parametrize("env", ["blue", "green"])
def test_routed_calls_conform_to_openais_spec(routed: str, telemetry: Telemetry, env: str) -> None:
    with openai.OpenAI(base_url=routed, api_key="sk-blue-test", max_retries=0) as client, \
            openai_bluegreen.force(env):  # type: ignore[arg-type]
        chat = client.chat.completions.create(model="gpt-4.1", user="u-1",
                                              messages=[{"role": "user", "content": "hi"}])
        assert chat.object == "chat.completion"
        response = client.responses.create(model="gpt-4.1", input="hi")
        assert response.object == "response"
        embedding = client.embeddings.create(model="text-embedding-3-small", input="hi",
                                             encoding_format="float")
        assert embedding.data
        legacy = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi")
        assert legacy.choices
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4.1", messages=[{"role": "user", "content": "hi"}])
        assert raw.http_request.headers["authorization"].startswith("Bearer ")
        assert raw.parse().object == "chat.completion"
    spans = telemetry.spans()
    assert len(spans) == 5
    assert {dict(s.attributes or {})["bluegreen.environment"] for s in spans} == {env}
    assert not any("error.type" in dict(s.attributes or {}) for s in spans)


def test_async_routed_calls_conform(routed: str, telemetry: Telemetry) -> None:
    async def main() -> None:
        client = openai.AsyncOpenAI(base_url=routed, api_key="sk-blue-test", max_retries=0)
        for env in ("blue", "green"):
            with openai_bluegreen.force(env):  # type: ignore[arg-type]
                out = await client.chat.completions.create(
                    model="gpt-4.1", messages=[{"role": "user", "content": "hi"}])
                assert out.object == "chat.completion"
        await client.close()

    asyncio.run(main())
    assert len(telemetry.spans()) == 2


def test_prism_rejects_what_the_spec_forbids(prism_url: str) -> None:
    """The mock is a real check: a request without credentials is refused."""
    with openai.OpenAI(base_url=prism_url, api_key="x", max_retries=0,
                       default_headers={"Authorization": "Basic eDp5"}) as client, \
            pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-4.1",
                                       messages=[{"role": "user", "content": "hi"}])
