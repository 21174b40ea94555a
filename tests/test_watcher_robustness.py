"""The watcher keeps deciding through odd evidence, schedule edits and store blips: one rollout's
unjudgeable counts stop no other, a changed bucket layout does not crash the policy, an edited
schedule is followed by weight, and a blip in the store does not throw the evidence away."""

from __future__ import annotations

from typing import Any

from openai_bluegreen import Phase, load_config
from openai_bluegreen._rollout import Action, initial_state, transition
from openai_bluegreen._telemetry import DURATION_BUCKETS
from openai_bluegreen._watcher import Watcher
from openai_bluegreen.policy import Evidence, StepWindow, decide, evaluate_checks
from openai_bluegreen.sources import EnvStats, Histogram, RolloutStats, Snapshot
from openai_bluegreen.sources.prometheus import DURATION_BUCKET, DURATION_COUNT, summarise
from openai_bluegreen.stores.memory import MemoryStore

T0 = 1_700_000_000.0


def _rollout(name: str, steps: list[float], checks: list[dict[str, Any]] | None = None
             ) -> dict[str, Any]:
    return {"name": name, "match": {"model": name},
            "blue": {"model": "old"}, "green": {"model": "new"},
            "schedule": {"steps": steps, "min_step_duration": "10m", "min_requests": 100},
            "analysis": {"interval": "30s", "alpha": 0.01,
                         "checks": checks or [{"signal": "error_rate", "max_ratio": 1.5}]}}


class ScriptedSource:
    """Returns whatever cumulative stats the test sets, per rollout."""

    def __init__(self) -> None:
        self.stats: dict[str, RolloutStats] = {}

    def snapshot(self, now: float) -> Snapshot:
        return Snapshot(now, dict(self.stats))

    def close(self) -> None:
        pass


def test_one_rollouts_odd_counts_do_not_stop_another_rollouts_rollback() -> None:
    """A source whose counts go backwards for rollout "a" (EnvStats.minus clamps requests
    and errors separately, so the window has more errors than calls) makes the policy raise
    ValueError; look() dies and rollout "b", whose green fails 50 % of calls against blue's
    0 %, is never rolled back. Expected: "a" holds, "b" is rolled back."""
    config = load_config({"rollouts": [_rollout("a", [5, 100]), _rollout("b", [5, 100])]})
    store, source = MemoryStore(), ScriptedSource()
    now = [T0]
    watcher = Watcher(config, store, source, clock=lambda: now[0])
    source.stats = {"a": RolloutStats(EnvStats(1000, 10), EnvStats(100, 1)),
                    "b": RolloutStats(EnvStats(1000, 0), EnvStats(0, 0))}
    watcher.look()  # both start
    assert {n: s.phase for n, s in watcher.states().items()} == {
        "a": Phase.PROGRESSING, "b": Phase.PROGRESSING}
    now[0] += 30
    # "a": the source re-based its request counter lower (a replica's counts dropped out),
    # while errors kept rising. "b": a clear green regression.
    source.stats = {"a": RolloutStats(EnvStats(1500, 15), EnvStats(50, 5)),
                    "b": RolloutStats(EnvStats(3000, 0), EnvStats(200, 100))}
    watcher.look()  # "a": a window with more errors than calls, which no check can judge
    assert watcher.states()["b"].phase is Phase.ROLLED_BACK
    assert watcher.states()["a"].phase is Phase.PROGRESSING


def _prom_stats(replicas: dict[str, dict[float, int]], requests: int) -> RolloutStats:
    """What PrometheusSource.summarise() makes of green/blue duration buckets from replicas,
    each its own histogram (cumulative count per le) and so its own part."""
    parts: list[dict[Any, float]] = [{(DURATION_COUNT, "r", env, "", 0.0): requests
                                      for env in ("blue", "green")}]
    for cumulative in replicas.values():
        parts.append({(DURATION_BUCKET, "r", env, "", le): count
                      for env in ("blue", "green") for le, count in cumulative.items()})
    return summarise(*parts)["r"]


def test_a_bucket_layout_change_mid_rollout_does_not_crash_the_policy() -> None:
    """Histogram.minus deliberately tolerates a changed bucket layout (it returns an empty
    window), but Evidence.total then adds windows of different layouts with Histogram.plus,
    which raises ValueError: decide() crashes instead of holding. With PrometheusSource this
    happens when a replica with a different bucket layout joins mid-rollout (the source
    takes the union of the 'le' values it sees)."""
    config = load_config({"rollouts": [_rollout("r", [5, 50, 100], [
        {"signal": "latency", "quantile": 0.95, "max_ratio": 1.5}])]})
    rollout = config.rollouts[0]
    semconv = {b: 0 for b in DURATION_BUCKETS} | {float("inf"): 0}

    def replica(n: int) -> dict[float, int]:  # n calls, 90 % <= 0.32 s, 10 % <= 0.64 s
        return {le: (0 if le < 0.32 else round(0.9 * n) if le < 0.64 else n) for le in semconv}

    at_start = _prom_stats({"a": replica(0)}, 0)
    at_step2 = _prom_stats({"a": replica(1000)}, 1000)
    # A new replica with one extra bucket bound (say, a View) joins during step 2.
    extra = replica(500) | {0.5: round(0.9 * 500)}
    now_stats = _prom_stats({"a": replica(2000), "b": extra}, 2500)
    windows = (StepWindow(0, 5.0, at_step2.minus(at_start)),
               StepWindow(1, 50.0, now_stats.minus(at_step2)))
    state = initial_state(rollout)
    state = transition(rollout, state, Action.START, T0, actor="t", reason="")
    state = transition(rollout, state, Action.ADVANCE, T0 + 700, actor="t", reason="")
    decision = decide(rollout, state, Evidence(windows), T0 + 800)
    assert decision.action in (Action.HOLD, Action.PAUSE, Action.ADVANCE), decision.reason
    # The windows were added on every bound either layout has: every call is still counted,
    # none moved above the bounds they were recorded under.
    total = Evidence(windows).total
    assert total.green.duration.total == 2500 and 0.5 in total.green.duration.bounds
    assert total.green.duration.count_above(0.64) == 0


def test_a_schedule_edit_does_not_promote_from_a_low_weight() -> None:
    """The stored state keeps a step *index*; the revision ignores the schedule, so after an
    operator edits the schedule the index is read against the new steps. A rollout at 5 %
    (step 2 of [1, 5, 25, 50, 100]) under a new schedule [5, 50, 100] is promoted straight
    from 5 % to 100 %, skipping the 50 % step, on the next healthy look."""
    old = load_config({"rollouts": [_rollout("r", [1, 5, 25, 50, 100])]}).rollouts[0]
    new = load_config({"rollouts": [_rollout("r", [5, 50, 100])]}).rollouts[0]
    state = initial_state(old)
    state = transition(old, state, Action.START, T0, actor="t", reason="")
    state = transition(old, state, Action.ADVANCE, T0 + 700, actor="t", reason="")
    assert (state.step, state.weight) == (1, 5.0)
    healthy = RolloutStats(EnvStats(9500, 10), EnvStats(500, 0))
    decision = decide(new, state, Evidence((StepWindow(1, 5.0, healthy),)), T0 + 1400)
    assert decision.action is Action.ADVANCE, decision.reason
    assert "step 1/3 (5%)" in decision.reason and "step 2 (50%)" in decision.reason
    after = transition(new, state, decision.action, T0 + 1400, actor="t", reason="")
    assert (after.step, after.weight, after.phase) == (1, 50.0, Phase.PROGRESSING)
    # The reverse edit: at 25 %, step 2 of [5, 25, 100], under [1, 5, 25, 50, 100] the next
    # step is 50 %, not a fall back to 25 % or 5 %.
    wide = load_config({"rollouts": [_rollout("r", [5, 25, 100])]}).rollouts[0]
    at_25 = transition(wide, transition(wide, initial_state(wide), Action.START, T0, actor="t",
                                        reason=""), Action.ADVANCE, T0 + 700, actor="t",
                       reason="")
    nxt = transition(old, at_25, Action.ADVANCE, T0 + 1400, actor="t", reason="")
    assert (nxt.step, nxt.weight) == (3, 50.0)


def test_a_schedule_must_start_below_100_percent() -> None:
    import pytest

    from openai_bluegreen import ConfigError

    with pytest.raises(ConfigError, match=r"schedule\.steps.*first step must send less than "
                                          r"100%"):
        load_config({"rollouts": [_rollout("r", [100])]})


def test_a_store_read_blip_does_not_discard_the_evidence_of_the_same_process() -> None:
    """One failed store read makes look() set leader=False; the next look treats it as a
    takeover and clears every run's windows (and the source's counts). The same process, with
    the same LocalSource-style source that kept counting throughout, then judges green only on
    calls after the blip: evidence is thrown away and alpha is spent again. With blips every
    10 minutes a 2x error regression (max_ratio 1.5) is promoted in every seed tried (3 of 8
    without blips)."""
    import logging

    from openai_bluegreen.stores import StoreUnavailable

    from .test_policy import Clock, SimulatedTraffic, _config

    class FlakyStore(MemoryStore):
        fail = False

        def load_all(self) -> Any:
            if self.fail:
                raise StoreUnavailable("connection reset (a blip)")
            return super().load_all()

    logger = logging.getLogger("openai_bluegreen")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        _blip_scenario(FlakyStore, Clock, SimulatedTraffic, _config)
    finally:
        logger.setLevel(level)


def _blip_scenario(FlakyStore: Any, Clock: Any, SimulatedTraffic: Any, _config: Any) -> None:
    config, clock, store, traffic = _config(), Clock(), FlakyStore(), SimulatedTraffic()
    traffic.error_rate["green"] = 0.02
    traffic.counts_since = clock.now  # type: ignore[attr-defined]  # as LocalSource has it
    watcher = Watcher(config, store, traffic, clock=clock)

    def look() -> int:
        traffic.serve(1500, watcher.states()["chat"].weight)
        clock.now += 30
        watcher.look()
        decision = watcher.last_decisions.get("chat")
        return decision.checks[0].numbers.get("green_calls", 0) if decision and \
            decision.checks else 0

    for _ in range(15):
        judged_before = look()
    assert watcher.states()["chat"].phase is Phase.PROGRESSING and judged_before > 0
    store.fail = True
    look()  # the blip: nothing decided
    store.fail = False
    judged_after = look()
    assert judged_after >= judged_before, (judged_before, judged_after)


def _latency_rollout() -> Any:
    return load_config({"rollouts": [{
        "name": "chat", "match": {"model": "gpt-4.1"},
        "blue": {"model": "old"}, "green": {"model": "new"},
        "schedule": {"steps": [5, 50, 100], "min_requests": 10},
        "analysis": {"alpha": 0.01,
                     "checks": [{"signal": "latency", "quantile": 0.95, "max_ratio": 1.5}]},
    }]}).rollouts[0]


def test_latency_check_sees_green_calls_above_a_bound_green_layout_lacks() -> None:
    """Blue on bounds (1, 2, 3, 4): 95 % at or below 2 s, so the check's bound is 2 s. Green's
    replicas (another bucket layout, (1, 3, 4)) answered every call in (2, 3]: all 1000 are
    slower than blue's bound, yet count_above(2) on green's layout counts only values above 3."""
    blue = Histogram((1.0, 2.0, 3.0, 4.0), (500, 450, 50, 0, 0))
    green = Histogram((1.0, 3.0, 4.0), (0, 1000, 0, 0))
    stats = RolloutStats(EnvStats(1000, 0, {}, blue), EnvStats(1000, 0, {}, green))
    evidence = Evidence(windows=(StepWindow(0, 5.0, stats),))
    (latency,) = evaluate_checks(_latency_rollout(), evidence)
    assert latency.numbers["bound_s"] == 2.0
    # Green's 1000 calls in (1, 3] on its layout: split linearly at 2 s, half are above it
    # (before: count_above(2) on (1, 3, 4) counted only the values above 3, none).
    assert latency.numbers["green_above"] == 500, latency.numbers
    assert latency.status == "fail", latency
