"""Telemetry at its edges: a multiprocessing child that installs after it started records its
last calls, Responses calls carry their conversation id (on spans only), and embeddings spans
the requested dimension count."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import openai
import pytest

from openai_bluegreen.testing import SimulatedUpstream

from .conftest import BLUE_KEY, Telemetry, rollout_config

MSGS = [{"role": "user", "content": "hi"}]

# A process that never imported openai_bluegreen starts a multiprocessing child; the child
# installs the plugin itself (a Pool initializer, a Celery/ProcessPool worker, any forkserver
# child) and makes a few calls. Its spans go to a file the test reads.
_CHILD_SCRIPT = textwrap.dedent('''
    import multiprocessing, os, sys

    def child(blue_url, green_url, out):
        os.environ["GREEN_API_KEY"] = "green-key"
        import openai, openai_bluegreen
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (SimpleSpanProcessor, SpanExporter,
                                                    SpanExportResult)

        class Lines(SpanExporter):
            def export(self, spans):
                with open(out, "a") as handle:
                    handle.writelines(span.name + "\\n" for span in spans)
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(Lines()))
        openai_bluegreen.install({"rollouts": [{
            "name": "chat-upgrade", "match": {"model": "gpt-4.1"},
            "blue": {"model": "blue-model"},
            "green": {"model": "green-model", "base_url": green_url,
                      "api_key_env": "GREEN_API_KEY"},
            "weight": 0}]}, tracer_provider=provider)
        with openai.OpenAI(base_url=blue_url, api_key="blue-key", max_retries=0) as client:
            for _ in range(8):
                client.chat.completions.create(
                    model="gpt-4.1", messages=[{"role": "user", "content": "hi"}])

    if __name__ == "__main__":
        assert "openai_bluegreen" not in sys.modules
        context = multiprocessing.get_context(sys.argv[4])
        process = context.Process(target=child, args=tuple(sys.argv[1:4]))
        process.start()
        process.join(60)
        sys.exit(process.exitcode)
''')


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_a_multiprocessing_child_that_installs_after_the_fork_records_its_last_calls(
        blue: SimulatedUpstream, green: SimulatedUpstream, tmp_path: Path, method: str) -> None:
    """Every call of a multiprocessing child is recorded, also when the plugin was imported
    in the child (the parent never had it: no at-fork hook ran). The child ends with
    os._exit, past atexit, so the worker's last burst (up to 250 ms of calls) must be flushed
    when the target returns."""
    script = tmp_path / "parent.py"
    script.write_text(_CHILD_SCRIPT)
    out = tmp_path / "spans.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run([sys.executable, str(script), blue.base_url, green.base_url,
                           str(out), method], check=False, env=env, timeout=120,
                          capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert len(blue.requests) == 8
    lines = out.read_text().splitlines() if out.exists() else []
    assert len(lines) == 8, f"{len(lines)} of 8 calls recorded: {lines}"


def test_a_responses_call_in_a_conversation_carries_gen_ai_conversation_id(
        install: Any, telemetry: Telemetry, blue: SimulatedUpstream,
        green: SimulatedUpstream) -> None:
    """GenAI semconv v1.41 (gen-ai-spans.md, openai.md, inference span):
    ``gen_ai.conversation.id`` is Conditionally Required "when available"; for the Responses
    API it is the ``conversation`` parameter (a ``conv_...`` id or ``{"id": ...}``), as
    OpenTelemetry's own OpenAI instrumentation records it (response_extractors.
    _extract_conversation_id). It is a span attribute only, never a metric attribute."""
    install(rollout_config(green, weight=0))
    with openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0) as client:
        client.responses.create(model="gpt-4.1", input="hi", conversation="conv_123")
        client.responses.create(model="gpt-4.1", input="hi", conversation={"id": "conv_456"})
    spans = [dict(s.attributes or {}) for s in telemetry.spans()]
    assert [s.get("gen_ai.conversation.id") for s in spans] == ["conv_123", "conv_456"]
    for attrs, _ in telemetry.points("gen_ai.client.operation.duration"):
        assert "gen_ai.conversation.id" not in attrs


def test_an_embeddings_span_carries_the_requested_dimension_count(
        install: Any, telemetry: Telemetry, blue: SimulatedUpstream,
        green: SimulatedUpstream) -> None:
    """GenAI semconv v1.41 (gen-ai-spans.md, Embeddings span): ``gen_ai.embeddings.dimension.count``
    (int, Recommended) "The number of dimensions the resulting output embeddings should have":
    the request's ``dimensions``, as OpenTelemetry's OpenAI instrumentation records it
    (patch.py: ``invocation.dimension_count = dimensions``)."""
    install(rollout_config(green, weight=0))
    with openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0) as client:
        client.embeddings.create(model="gpt-4.1", input="hi", dimensions=256,
                                 encoding_format="float")
    (span,) = telemetry.spans()
    attrs = dict(span.attributes or {})
    assert attrs["gen_ai.request.encoding_formats"] == ("float",)  # recorded: the others are
    assert attrs.get("gen_ai.embeddings.dimension.count") == 256
