"""install / uninstall: idempotent, exact restore, cached wrappers pass through, import order."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from typing import Any

import openai
import pytest
import wrapt

import openai_bluegreen
from openai_bluegreen import _patch
from openai_bluegreen._patch import SURFACES
from openai_bluegreen.testing import SimulatedUpstream

from .conftest import BLUE_KEY, Telemetry, rollout_config

MSGS = [{"role": "user", "content": "hi"}]


def _methods() -> dict[tuple[str, str, str], Any]:
    import importlib

    out = {}
    for module, cls_name, method, _ in SURFACES:
        cls = getattr(importlib.import_module(module), cls_name)
        out[(module, cls_name, method)] = cls.__dict__.get(method)
    return out


def test_uninstall_restores_every_method_exactly(install: Any, green: SimulatedUpstream) -> None:
    before = _methods()
    assert not any(isinstance(m, wrapt.FunctionWrapper) for m in before.values())
    install(rollout_config(green, weight=50))
    during = _methods()
    assert all(isinstance(m, wrapt.FunctionWrapper) for m in during.values() if m is not None)
    install(rollout_config(green, weight=50))  # idempotent: not wrapped twice
    assert _methods() == during
    openai_bluegreen.uninstall()
    assert _methods() == before
    openai_bluegreen.uninstall()  # harmless when not installed
    assert _methods() == before


def test_cached_raw_response_wrapper_passes_through_after_uninstall(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    install(rollout_config(green, weight=100))
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response  # the SDK caches resource.create here
    assert raw.create(model="gpt-4.1", messages=MSGS).parse().model == "green-model"
    openai_bluegreen.uninstall()
    assert raw.create(model="gpt-4.1", messages=MSGS).parse().model == "gpt-4.1"
    assert len(telemetry.spans()) == 1
    install(rollout_config(green, weight=100))  # and it routes again after re-install
    assert raw.create(model="gpt-4.1", messages=MSGS).parse().model == "green-model"


def test_uninstall_leaves_an_instrumentation_that_wrapped_the_sdk_after_us(
    install: Any, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    """As OpenTelemetry's instrumentations do: wrapt on top of what is there, and undone by
    putting back its ``__wrapped__``."""
    from openai.resources.chat.completions import Completions

    seen: list[str] = []

    def other(wrapped: Any, _instance: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        seen.append(kwargs["model"])
        return wrapped(*args, **kwargs)

    before = _methods()
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)

    def model() -> str:
        return client.chat.completions.create(model="gpt-4.1", messages=MSGS).model

    install(rollout_config(green, weight=100))
    wrapt.wrap_function_wrapper(Completions, "create", other)
    try:
        assert model() == "green-model" and seen == ["gpt-4.1"]
        openai_bluegreen.uninstall()
        assert model() == "gpt-4.1" and seen == ["gpt-4.1"] * 2  # it still records
        install(rollout_config(green, weight=100))  # ours taken up again, not wrapped twice
        green.requests.clear()
        assert model() == "green-model" and len(green.requests) == 1
        assert isinstance(Completions.__dict__["create"].__wrapped__, wrapt.FunctionWrapper)
        assert not isinstance(Completions.__dict__["create"].__wrapped__.__wrapped__,
                              wrapt.FunctionWrapper)
    finally:
        openai_bluegreen.uninstall()
        Completions.create = Completions.__dict__["create"].__wrapped__  # type: ignore[method-assign]
    install(rollout_config(green, weight=100))
    openai_bluegreen.uninstall()
    assert _methods() == before


def test_a_layer_of_ours_kept_by_another_instrumentation_never_routes_twice(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    """Ours, left under another layer by uninstall(), may not be found again by the next
    install(): OpenTelemetry's unwrap puts back the bound form of ours, and a plain
    monkeypatch keeps ours in a closure. Either way each call is routed once."""
    from openai.resources.chat.completions import Completions

    before = Completions.__dict__["create"]
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    config = rollout_config(green, weight=50)
    config["rollouts"][0]["blue"]["model"] = "gpt-4.1"  # blue's model matches the rollout too

    # OpenTelemetry's way: wrapt on top, then unwrap() = setattr(cls, name, bound.__wrapped__).
    install(config)
    wrapt.wrap_function_wrapper(Completions, "create", lambda w, _i, a, k: w(*a, **k))
    openai_bluegreen.uninstall()
    Completions.create = Completions.create.__wrapped__  # type: ignore[method-assign]
    install(config)
    for i in range(200):
        client.chat.completions.create(model="gpt-4.1", messages=MSGS, user=f"u{i}")
    assert len(telemetry.spans()) == 200  # one routing decision per call
    assert 60 < len(green.requests) < 140
    openai_bluegreen.uninstall()
    assert Completions.__dict__["create"] is before  # exactly as before

    # A plain monkeypatch that keeps ours in its closure.
    telemetry.exporter.clear()
    green.requests.clear()
    install(config)
    kept = Completions.create

    def other(self: Any, *args: Any, **kwargs: Any) -> Any:
        return kept(self, *args, **kwargs)

    openai_bluegreen.uninstall()
    Completions.create = other  # type: ignore[method-assign]
    try:
        install(config)
        assert _patch._guarded  # ours may be below: every call checks
        for i in range(200):
            client.chat.completions.create(model="gpt-4.1", messages=MSGS, user=f"u{i}")
        assert len(telemetry.spans()) == 200
        assert 60 < len(green.requests) < 140
    finally:
        openai_bluegreen.uninstall()
        Completions.create = before  # type: ignore[method-assign]


def test_a_reinstall_over_the_sdks_own_methods_routes_without_the_double_routing_guard(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    """The guard against routing a call twice costs every call a context-variable set and
    reset; it is needed only while an older layer of ours may sit below the current one. An
    app that uninstalls and installs again over the SDK's own methods (or over the same other
    instrumentation as the first time) has none there, and its calls are still routed once."""
    from openai.resources.chat.completions import Completions

    before = Completions.__dict__["create"]
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    config = rollout_config(green, weight=50)
    config["rollouts"][0]["blue"]["model"] = "gpt-4.1"
    try:
        for other_first in (False, True):
            if other_first:  # another instrumentation wrapped the SDK before us, and stays
                wrapt.wrap_function_wrapper(Completions, "create", lambda w, _i, a, k: w(*a, **k))
            for _ in range(3):
                telemetry.exporter.clear()
                install(config)
                assert not _patch._guarded
                for i in range(50):
                    client.chat.completions.create(model="gpt-4.1", messages=MSGS, user=f"u{i}")
                assert len(telemetry.spans()) == 50  # one routing decision per call
                openai_bluegreen.uninstall()
    finally:
        openai_bluegreen.uninstall()
        Completions.create = before  # type: ignore[method-assign]


def test_a_wrapper_of_ours_taken_away_by_another_unwrap_is_reported_and_put_back(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    """OpenTelemetry's OpenAI instrumentation wrapped first, ours on top, then its
    uninstrument(): its unwrap() puts back what its wrapper wrapped, taking ours away too."""
    from openai.resources.chat.completions import Completions

    before = Completions.__dict__["create"]
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    wrapt.wrap_function_wrapper(Completions, "create", lambda w, _i, a, k: w(*a, **k))
    try:
        config = rollout_config(green, weight=100)
        install(config)
        theirs = Completions.__dict__["create"].__wrapped__
        Completions.create = theirs.__wrapped__  # type: ignore[method-assign]  # their unwrap()
        assert client.chat.completions.create(model="gpt-4.1", messages=MSGS).model == "gpt-4.1"
        status = openai_bluegreen.status()
        assert status["not_routed"] == [f"{Completions.__module__}.Completions.create"]
        install(config)  # the same install again puts ours back
        assert "not_routed" not in openai_bluegreen.status()
        assert client.chat.completions.create(model="gpt-4.1", messages=MSGS).model == \
            "green-model"
        assert len(telemetry.spans()) == 1
    finally:
        openai_bluegreen.uninstall()
        Completions.create = before  # type: ignore[method-assign]


def test_reinstall_with_new_config_replaces_routing(install: Any, blue: SimulatedUpstream,
                                                    green: SimulatedUpstream) -> None:
    install(rollout_config(green, weight=0))
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    assert client.chat.completions.create(model="gpt-4.1", messages=MSGS).model == "blue-model"
    install(rollout_config(green, weight=100))
    assert client.chat.completions.create(model="gpt-4.1", messages=MSGS).model == "green-model"
    assert openai_bluegreen.status()["rollouts"][0]["weight"] == 100


def test_works_when_openai_is_imported_after_install(blue: SimulatedUpstream,
                                                     green: SimulatedUpstream) -> None:
    script = textwrap.dedent("""
        import os, sys
        import openai_bluegreen
        assert "openai" not in sys.modules or True
        openai_bluegreen.install({"rollouts": [{"name": "r", "match": {"model": "gpt-4.1"},
            "blue": {"model": "gpt-4.1"},
            "green": {"model": "green-model", "base_url": os.environ["GREEN_URL"]},
            "weight": 100}]})
        from openai import OpenAI  # imported after install
        c = OpenAI(base_url=os.environ["BLUE_URL"], api_key="k", max_retries=0)
        print(c.chat.completions.create(model="gpt-4.1",
                                        messages=[{"role": "user", "content": "x"}]).model)
    """)
    env = {**os.environ, "BLUE_URL": blue.base_url, "GREEN_URL": green.base_url}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "green-model"


def test_beta_responses_imported_after_install_is_routed_and_install_does_not_import_it(
    blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    """``client.beta.responses`` (openai 2.x, 3.x) posts to /responses: routed like
    ``responses``, also when the app reaches it only after ``install()``, which does not import
    it (openai 3.x's beta types take ~250 ms to import)."""
    script = textwrap.dedent("""
        import os, sys
        import openai, openai.resources.responses
        import openai_bluegreen
        name = "openai.resources.beta.responses.responses"
        before = name in sys.modules
        openai_bluegreen.install({"rollouts": [{"name": "r", "match": {"model": "gpt-4.1"},
            "blue": {"model": "gpt-4.1"},
            "green": {"model": "green-model", "base_url": os.environ["GREEN_URL"]},
            "weight": 100}]})
        assert (name in sys.modules) == before, "install() imported " + name
        c = openai.OpenAI(base_url=os.environ["BLUE_URL"], api_key="k", max_retries=0)
        if not hasattr(c.beta, "responses"):
            print("green-model")  # openai 1.x: no such surface
            sys.exit(0)
        print(c.beta.responses.create(model="gpt-4.1", input="x").model)
    """)
    env = {**os.environ, "BLUE_URL": blue.base_url, "GREEN_URL": green.base_url}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "green-model"


def test_client_created_before_install_is_routed(blue: SimulatedUpstream,
                                                 green: SimulatedUpstream, install: Any) -> None:
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    install(rollout_config(green, weight=100))
    assert client.chat.completions.create(model="gpt-4.1", messages=MSGS).model == "green-model"


def test_status_reports_installation_without_secrets(install: Any, green: SimulatedUpstream,
                                                     monkeypatch: Any) -> None:
    assert openai_bluegreen.status() == {"installed": False, "rollouts": []}
    install(rollout_config(green, weight=30))
    status = openai_bluegreen.status()
    assert status["installed"] is True
    assert status["rollouts"][0]["weight"] == 30
    assert os.environ["GREEN_API_KEY"] not in repr(status)


class _BrokenTracerProvider:
    """A tracer provider whose tracer fails, as a misbehaving telemetry backend might."""

    def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
        return self

    def start_span(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("tracer is broken")


def test_a_broken_tracer_never_touches_routing_and_metrics_still_flow(
        telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
        monkeypatch: Any) -> None:
    monkeypatch.setenv("GREEN_API_KEY", "k")
    openai_bluegreen.install(rollout_config(green, weight=100),
                             tracer_provider=_BrokenTracerProvider(),  # type: ignore[arg-type]
                             meter_provider=telemetry.meter_provider)
    with openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0) as client:
        out = client.chat.completions.create(model="gpt-4.1", messages=MSGS)
    assert out.model == "green-model"  # spans start off the request path: routing unaffected
    assert len(green.requests) == 1
    assert telemetry.count("gen_ai.client.operation.duration",
                           bluegreen__environment="green") == 1
    from opentelemetry import context, trace

    assert trace.get_current_span(context.get_current()) is trace.INVALID_SPAN


def test_green_client_that_cannot_be_built_fails_open_to_blue(
    install: Any, blue: SimulatedUpstream, green: SimulatedUpstream, monkeypatch: Any,
) -> None:
    def cannot_build(*_args: Any) -> Any:
        raise RuntimeError("cannot build")

    monkeypatch.setattr("openai_bluegreen._router._endpoint_client", cannot_build)
    install(rollout_config(green, weight=100))
    with openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0) as client:
        out = client.chat.completions.create(model="gpt-4.1", messages=MSGS)
    assert out.model == "blue-model"
    assert not green.requests


def test_spans_are_children_of_the_callers_span_with_the_calls_own_times(
        install: Any, telemetry: Telemetry, blue: SimulatedUpstream,
        green: SimulatedUpstream) -> None:
    green.configure(error_rates={503: 1.0}, latency=0.2)  # errors answer after latency / 2
    install(rollout_config(green, weight=100))
    tracer = telemetry.tracer_provider.get_tracer("app")
    with openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0) as client, \
            tracer.start_as_current_span("handle-request") as parent:
        before = time.time_ns()
        out = client.chat.completions.create(model="gpt-4.1", messages=MSGS)
        after = time.time_ns()
    assert out.model == "blue-model"  # green failed, fell back to blue
    ours = [s for s in telemetry.spans() if s.name.startswith("chat ")]
    assert len(ours) == 1
    span = ours[0]
    assert span.parent is not None and span.parent.span_id == parent.get_span_context().span_id
    assert span.context.trace_id == parent.get_span_context().trace_id
    assert span.start_time is not None and span.end_time is not None
    assert before <= span.start_time <= span.end_time <= after
    (event,) = [e for e in span.events if e.name == "bluegreen.fallback"]
    assert span.start_time <= event.timestamp <= span.end_time
    # The span covers the whole logical call, green's failed attempt included.
    assert span.start_time - before < 50_000_000
    assert event.timestamp - span.start_time >= 90_000_000
    assert event.attributes is not None
    assert event.attributes["bluegreen.green_duration_s"] >= 0.09


def test_fail_open_sends_the_call_unchanged_when_blue_has_its_own_endpoint(
        install: Any, blue: SimulatedUpstream, green: SimulatedUpstream,
        monkeypatch: Any) -> None:
    def cannot_build(*_args: Any) -> Any:
        raise RuntimeError("cannot build")

    monkeypatch.setattr("openai_bluegreen._router._endpoint_client", cannot_build)
    monkeypatch.setenv("BLUE_API_KEY", "blue-own-key")
    config = rollout_config(green, weight=0)
    config["rollouts"][0]["blue"] = {"model": "blue-model", "base_url": blue.base_url,
                                     "api_key_env": "BLUE_API_KEY"}
    install(config)
    with openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0) as client:
        out = client.chat.completions.create(model="gpt-4.1", messages=MSGS)
    assert out.model == "gpt-4.1"  # what the app asked for, on the app's own client
    assert blue.requests[-1].api_key == BLUE_KEY
    assert not green.requests


def test_samplers_see_every_attribute_and_can_keep_only_green(
        blue: SimulatedUpstream, green: SimulatedUpstream, monkeypatch: Any) -> None:
    """Spans are started with all their attributes, so a sampler can decide on the environment
    and on the response (e.g. keep every green span while a candidate is judged)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

    seen: list[dict[str, Any]] = []

    class GreenOnly(Sampler):
        def should_sample(self, parent_context: Any, trace_id: int, name: str,
                          kind: Any = None, attributes: Any = None, links: Any = None,
                          trace_state: Any = None) -> SamplingResult:
            seen.append(dict(attributes or {}))
            keep = (attributes or {}).get("bluegreen.environment") == "green"
            return SamplingResult(Decision.RECORD_AND_SAMPLE if keep else Decision.DROP,
                                  attributes)

        def get_description(self) -> str:
            return "GreenOnly"

    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=GreenOnly())
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    monkeypatch.setenv("GREEN_API_KEY", "green-key")
    openai_bluegreen.install(rollout_config(green, weight=50), tracer_provider=tracer_provider,
                             meter_provider=MeterProvider(metric_readers=[reader]))
    with openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0) as client:
        for i in range(40):
            client.chat.completions.create(model="gpt-4.1", messages=MSGS, user=f"u{i}")
    openai_bluegreen.flush()
    assert len(seen) == 40
    for attrs in seen:
        assert attrs["bluegreen.environment"] in ("blue", "green")
        assert attrs["gen_ai.response.model"] == f"{attrs['bluegreen.environment']}-model"
        assert attrs["gen_ai.usage.output_tokens"] > 0
    kept = exporter.get_finished_spans()
    greens = sum(1 for attrs in seen if attrs["bluegreen.environment"] == "green")
    assert 0 < greens < 40
    assert len(kept) == greens
    assert {s.attributes["bluegreen.environment"] for s in kept} == {"green"}
    tracer_provider.shutdown()


def test_each_client_keeps_its_own_derived_green_client(
        install: Any, blue: SimulatedUpstream, green: SimulatedUpstream) -> None:
    """Lanes are cached per caller client: alternating clients never borrow each other's."""
    install(rollout_config(green, weight=100))
    # Told apart by their timeouts, which their green clients keep (the SDK sends them).
    a = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0, timeout=11)
    b = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0, timeout=12)
    order = ["a", "b", "b", "a", "b", "a", "a"]
    with a, b:
        for name in order:
            (a if name == "a" else b).chat.completions.create(model="gpt-4.1", messages=MSGS)
    timeouts = {"11": "a", "11.0": "a", "12": "b", "12.0": "b"}
    assert [timeouts[r.headers["x-stainless-read-timeout"]] for r in green.requests] == order
    assert not blue.requests


def test_a_call_arriving_as_a_lazy_surface_is_wrapped_over_a_layer_of_ours_is_routed_once(
    install: Any, telemetry: Telemetry, blue: SimulatedUpstream, green: SimulatedUpstream,
    monkeypatch: Any,
) -> None:
    """install() wraps ``client.beta.responses`` from its import hook. Where an older layer of
    ours is below (in a monkeypatch's closure), the double-routing guard must be on from the
    moment the new wrapper is on the class, as install() does for the eager surfaces: a call
    that came in just then was routed by both layers."""
    client = openai.OpenAI(base_url=blue.base_url, api_key=BLUE_KEY, max_retries=0)
    if not hasattr(client.beta, "responses"):
        pytest.skip("this SDK has no client.beta.responses")
    from openai.resources.beta.responses.responses import Responses

    before = Responses.__dict__["create"]
    config = rollout_config(green, weight=0)
    config["rollouts"][0]["blue"]["model"] = "gpt-4.1"  # the model a lower layer matches too
    install(config)
    kept = Responses.create

    def other(self: Any, *args: Any, **kwargs: Any) -> Any:
        return kept(self, *args, **kwargs)

    Responses.create = other  # type: ignore[method-assign]  # ours is lost: install() again
    wrap = wrapt.wrap_function_wrapper

    def wrap_then_call(cls: Any, name: str, wrapper: Any) -> Any:
        done = wrap(cls, name, wrapper)
        if cls is Responses:  # a call arriving right after the new wrapper is on the class
            client.beta.responses.create(model="gpt-4.1", input="x")
        return done

    monkeypatch.setattr(wrapt, "wrap_function_wrapper", wrap_then_call)
    try:
        install(config)
        monkeypatch.undo()
        assert len(telemetry.spans()) == 1  # one routing decision
    finally:
        openai_bluegreen.uninstall()
        Responses.create = before  # type: ignore[method-assign]


def test_after_a_reload_of_the_patch_module_a_reinstall_routes_each_call_once(
    blue: SimulatedUpstream, green: SimulatedUpstream,
) -> None:
    """``importlib.reload()`` of our patch module forgets the wrappers it put on the SDK: they
    stay on the classes, and the next install() wraps over them. Each call is still routed
    once (the wrapper found below is ours, so every call checks)."""
    script = textwrap.dedent("""
        import importlib, os
        import openai
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        import openai_bluegreen
        from openai_bluegreen import _patch
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        config = {"rollouts": [{"name": "r", "match": {"model": "gpt-4.1"},
            "blue": {"model": "gpt-4.1"},
            "green": {"model": "green-model", "base_url": os.environ["GREEN_URL"]},
            "weight": 50}]}
        openai_bluegreen.install(config, tracer_provider=provider)
        importlib.reload(_patch)
        openai_bluegreen.uninstall()
        openai_bluegreen.install(config, tracer_provider=provider)
        c = openai.OpenAI(base_url=os.environ["BLUE_URL"], api_key="k", max_retries=0)
        for i in range(40):
            c.chat.completions.create(model="gpt-4.1", messages=[{"role": "user",
                                      "content": "x"}], user=f"u{i}")
        openai_bluegreen.flush()
        print(len(exporter.get_finished_spans()))
    """)
    env = {**os.environ, "BLUE_URL": blue.base_url, "GREEN_URL": green.base_url}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "40"  # one span, one routing decision, per call
