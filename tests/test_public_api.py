from __future__ import annotations

import importlib.metadata

import openai_bluegreen
import openai_bluegreen.testing


def test_public_names_are_exactly_the_documented_ones() -> None:
    assert sorted(openai_bluegreen.__all__) == sorted([
        "Analysis", "BlueGreenError", "Check", "Config", "ConfigError", "EnvironmentTarget",
        "Fallback", "InvalidTransition", "Match", "Phase", "Rollout", "RolloutState", "Schedule",
        "UnknownRolloutError", "__version__", "assignment_key", "flush", "force", "install",
        "load_config", "pause", "promote", "resume", "rollback", "set_weight", "status",
        "uninstall",
    ])
    for name in openai_bluegreen.__all__:
        assert hasattr(openai_bluegreen, name)
    assert sorted(openai_bluegreen.testing.__all__) == [
        "RecordedRequest", "SimulatedUpstream", "UpstreamProcess", "UpstreamSettings"]


def test_errors_form_one_tree() -> None:
    assert issubclass(openai_bluegreen.ConfigError, openai_bluegreen.BlueGreenError)
    assert issubclass(openai_bluegreen.ConfigError, ValueError)
    assert issubclass(openai_bluegreen.UnknownRolloutError, openai_bluegreen.BlueGreenError)
    assert issubclass(openai_bluegreen.InvalidTransition, openai_bluegreen.BlueGreenError)
    from openai_bluegreen.sources import SourceUnavailable
    from openai_bluegreen.stores import StoreUnavailable

    assert issubclass(SourceUnavailable, openai_bluegreen.BlueGreenError)
    assert issubclass(StoreUnavailable, openai_bluegreen.BlueGreenError)


def test_version_matches_distribution_metadata() -> None:
    assert openai_bluegreen.__version__ == importlib.metadata.version("openai-bluegreen")


def test_instrumentor_entry_point_is_registered_under_its_own_name() -> None:
    points = importlib.metadata.entry_points(group="opentelemetry_instrumentor")
    ours = [p for p in points if p.name == "openai_bluegreen"]
    assert len(ours) == 1
    assert ours[0].value == "openai_bluegreen.instrumentation:BlueGreenInstrumentor"
    assert ours[0].load().__name__ == "BlueGreenInstrumentor"
