"""The pure policy and the watcher under an injected clock: hours of rollout in milliseconds."""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

import pytest

from openai_bluegreen import InvalidTransition, Phase, load_config
from openai_bluegreen._config import Rollout
from openai_bluegreen._control import apply_action
from openai_bluegreen._rollout import Action, RolloutState, initial_state, transition
from openai_bluegreen._stats import log_e_two_sample
from openai_bluegreen._telemetry import DURATION_BUCKETS
from openai_bluegreen._watcher import Watcher
from openai_bluegreen.policy import Evidence, StepWindow, decide
from openai_bluegreen.sources import EnvStats, Histogram, RolloutStats, Snapshot, SourceUnavailable
from openai_bluegreen.stores.memory import MemoryStore

HOUR = 3600.0


def _config(**analysis: Any) -> Any:
    return load_config({"rollouts": [{
        "name": "chat", "match": {"model": "gpt-4.1"},
        "blue": {"model": "old"}, "green": {"model": "new"},
        "schedule": {"steps": [1, 5, 25, 50, 100], "min_step_duration": "10m",
                     "min_requests": 200, "progress_deadline": "1h"},
        "analysis": {"interval": "30s", "alpha": 0.01,
                     "checks": [{"signal": "error_rate", "max_ratio": 1.5},
                                {"signal": "latency", "quantile": 0.95, "max_ratio": 1.5},
                                {"signal": "error_rate", "max": 0.2}],
                     **analysis},
    }]})


class SimulatedTraffic:
    """A MetricSource fed by simulated calls: cumulative counts and semconv latency buckets."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.stats = {"blue": EnvStats(), "green": EnvStats()}
        self.error_rate = {"blue": 0.01, "green": 0.01}
        self.median = {"blue": 0.3, "green": 0.3}
        self.down = False

    def serve(self, calls: int, weight: float) -> None:
        bounds = tuple(DURATION_BUCKETS)
        for env in ("blue", "green"):
            n = round(calls * (weight if env == "green" else 100 - weight) / 100)
            errors = sum(self.rng.random() < self.error_rate[env] for _ in range(n))
            counts = list(self.stats[env].duration.counts) if self.stats[env].duration.bounds \
                else [0] * (len(bounds) + 1)
            for _ in range(n - errors):
                value = self.median[env] * math.exp(self.rng.gauss(0, 0.5))
                counts[next((i for i, b in enumerate(bounds) if value <= b), len(bounds))] += 1
            old = self.stats[env]
            self.stats[env] = EnvStats(old.requests + n, old.errors + errors, {},
                                       Histogram(bounds, tuple(counts)))

    def snapshot(self, now: float) -> Snapshot:
        if self.down:
            raise SourceUnavailable("simulated outage of the metric backend")
        return Snapshot(now, {"chat": RolloutStats(self.stats["blue"], self.stats["green"])})

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def _run(watcher: Watcher, traffic: SimulatedTraffic, clock: Clock, *, seconds: float,
         rps: float = 20.0, stop: Any = None) -> None:
    """Advance simulated time look by look, serving traffic at the current weight."""
    end = clock.now + seconds
    while clock.now < end:
        state = watcher.states()["chat"]
        traffic.serve(round(rps * watcher.interval), state.weight)
        clock.now += watcher.interval
        watcher.look()
        if stop is not None and stop(watcher.states()["chat"]):
            return


def _watcher(config: Any, traffic: SimulatedTraffic, clock: Clock) -> Watcher:
    return Watcher(config, MemoryStore(), traffic, clock=clock)


def test_healthy_green_is_promoted_through_every_step() -> None:
    config, traffic, clock = _config(), SimulatedTraffic(), Clock()
    watcher = _watcher(config, traffic, clock)
    _run(watcher, traffic, clock, seconds=12 * HOUR, stop=lambda s: s.phase.terminal)
    state = watcher.states()["chat"]
    assert state.phase is Phase.PROMOTED and state.weight == 100.0
    assert [(h.action, h.weight) for h in state.history] == [
        ("start", 1.0), ("advance", 5.0), ("advance", 25.0), ("advance", 50.0),
        ("promote", 100.0)]
    # Each step lasted at least min_step_duration and the history is timestamped.
    times = [h.at for h in state.history]
    assert all(b - a >= 600 for a, b in itertools.pairwise(times[1:]))


def test_error_regression_is_rolled_back_naming_the_failing_check() -> None:
    config, traffic, clock = _config(), SimulatedTraffic(), Clock()
    traffic.error_rate["green"] = 0.06
    watcher = _watcher(config, traffic, clock)
    _run(watcher, traffic, clock, seconds=12 * HOUR, stop=lambda s: s.phase.terminal)
    state = watcher.states()["chat"]
    assert state.phase is Phase.ROLLED_BACK and state.weight == 0.0
    assert state.history[-1].actor == "watcher"
    assert "error_rate ratio<=1.5 failed" in state.history[-1].reason
    decision = watcher.last_decisions["chat"]
    failed = [c for c in decision.checks if c.status == "fail"]
    assert failed[0].numbers["green_errors"] > 0
    assert failed[0].log_e >= math.log(3 / 0.01)


def test_latency_regression_is_rolled_back_by_the_latency_check() -> None:
    config, traffic, clock = _config(), SimulatedTraffic(), Clock()
    traffic.median["green"] = 0.6
    watcher = _watcher(config, traffic, clock)
    _run(watcher, traffic, clock, seconds=12 * HOUR, stop=lambda s: s.phase.terminal)
    state = watcher.states()["chat"]
    assert state.phase is Phase.ROLLED_BACK
    assert "latency p95 ratio<=1.5 failed" in state.history[-1].reason


def test_on_failure_pause_pauses_instead_of_rolling_back() -> None:
    config, traffic, clock = _config(on_failure="pause"), SimulatedTraffic(), Clock()
    traffic.error_rate["green"] = 0.3
    watcher = _watcher(config, traffic, clock)
    _run(watcher, traffic, clock, seconds=HOUR, stop=lambda s: s.phase is Phase.PAUSED)
    state = watcher.states()["chat"]
    assert state.phase is Phase.PAUSED and state.weight == 1.0
    assert "failed" in state.history[-1].reason


def test_no_data_holds_then_pauses_at_the_progress_deadline() -> None:
    config, traffic, clock = _config(), SimulatedTraffic(), Clock()
    watcher = _watcher(config, traffic, clock)
    _run(watcher, traffic, clock, seconds=59 * 60, rps=0.0)
    state = watcher.states()["chat"]
    assert state.phase is Phase.PROGRESSING and state.weight == 1.0
    assert watcher.last_decisions["chat"].action is Action.HOLD
    assert "collecting data" in watcher.last_decisions["chat"].reason
    _run(watcher, traffic, clock, seconds=5 * 60, rps=0.0)
    state = watcher.states()["chat"]
    assert state.phase is Phase.PAUSED
    assert state.history[-1].reason.startswith("progress deadline: step 1/5 (1%) lacks data")
    assert "blue 0/200 calls" in state.history[-1].reason


def test_an_unreachable_metric_source_holds_and_never_advances() -> None:
    config, traffic, clock = _config(), SimulatedTraffic(), Clock()
    watcher = _watcher(config, traffic, clock)
    _run(watcher, traffic, clock, seconds=60)
    traffic.down = True
    _run(watcher, traffic, clock, seconds=40 * 60)
    state = watcher.states()["chat"]
    assert state.phase is Phase.PROGRESSING and state.step == 0
    assert "no metrics: simulated outage" in watcher.last_decisions["chat"].reason
    assert watcher.problem is not None and "holding" in watcher.problem
    traffic.down = False
    _run(watcher, traffic, clock, seconds=12 * HOUR, stop=lambda s: s.phase.terminal)
    assert watcher.states()["chat"].phase is Phase.PROMOTED
    assert watcher.problem is None


def test_manual_actions_win_over_the_watcher() -> None:
    config, traffic, clock = _config(), SimulatedTraffic(), Clock()
    rollout = config.rollouts[0]
    watcher = _watcher(config, traffic, clock)
    _run(watcher, traffic, clock, seconds=HOUR, stop=lambda s: s.step == 1)
    assert watcher.states()["chat"].step == 1
    apply_action(watcher.store, rollout, Action.PAUSE, actor="alice", reason="eval pending",
                 now=clock.now)
    _run(watcher, traffic, clock, seconds=3 * HOUR)
    state = watcher.states()["chat"]
    assert state.phase is Phase.PAUSED and state.weight == 5.0
    assert (state.history[-1].actor, state.history[-1].reason) == ("alice", "eval pending")
    # A manual weight holds the schedule too; resume continues from the next step above it.
    apply_action(watcher.store, rollout, Action.SET_WEIGHT, weight=30.0, actor="bob",
                 reason="more traffic for the eval", now=clock.now)
    _run(watcher, traffic, clock, seconds=HOUR)
    assert watcher.states()["chat"].weight == 30.0
    apply_action(watcher.store, rollout, Action.RESUME, actor="bob", reason="go", now=clock.now)
    _run(watcher, traffic, clock, seconds=12 * HOUR, stop=lambda s: s.phase.terminal)
    state = watcher.states()["chat"]
    assert state.phase is Phase.PROMOTED
    assert [h.weight for h in state.history][-2:] == [50.0, 100.0]
    # The watcher's stale view loses a compare-and-set race to an operator's rollback.
    stale = state
    apply_action(watcher.store, rollout, Action.ROLLBACK, actor="carol", reason="incident",
                 now=clock.now)
    assert not watcher.store.compare_and_set(stale, stale.version)
    assert watcher.store.load("chat").phase is Phase.ROLLED_BACK  # type: ignore[union-attr]


def test_decide_is_pure_and_never_advances_without_data() -> None:
    rollout: Rollout = _config().rollouts[0]
    state = transition(rollout, initial_state(rollout), Action.START, 0.0, actor="w", reason="")
    empty = Evidence()
    first = decide(rollout, state, empty, 10 * HOUR)
    assert first == decide(rollout, state, empty, 10 * HOUR)
    assert first.action is Action.PAUSE  # deadline passed without data
    few = Evidence((StepWindow(0, 1.0, RolloutStats(EnvStats(requests=10_000),
                                                    EnvStats(requests=199))),))
    assert decide(rollout, state, few, 601.0).action is Action.HOLD
    enough = Evidence((StepWindow(0, 1.0, RolloutStats(EnvStats(requests=10_000),
                                                       EnvStats(requests=200))),))
    assert decide(rollout, state, enough, 599.0).action is Action.HOLD
    assert decide(rollout, state, enough, 601.0).action is Action.ADVANCE


def test_transitions_refuse_what_does_not_apply_and_say_why() -> None:
    rollout: Rollout = _config().rollouts[0]
    state = initial_state(rollout)
    with pytest.raises(InvalidTransition, match="cannot resume rollout 'chat': it is pending"):
        transition(rollout, state, Action.RESUME, 0.0, actor="a", reason="")
    done = transition(rollout, state, Action.PROMOTE, 0.0, actor="a", reason="ship it")
    with pytest.raises(InvalidTransition, match="it is promoted"):
        transition(rollout, done, Action.PAUSE, 1.0, actor="a", reason="")
    with pytest.raises(InvalidTransition, match="between 0 and 100"):
        transition(rollout, state, Action.SET_WEIGHT, 0.0, actor="a", reason="", weight=101.0)
    assert done.history[-1].actor == "a" and done.version == state.version + 1


def test_a_state_the_store_lost_is_restored_not_restarted() -> None:
    config, traffic, clock = _config(), SimulatedTraffic(), Clock()
    traffic.error_rate["green"] = 0.3
    watcher = _watcher(config, traffic, clock)
    _run(watcher, traffic, clock, seconds=HOUR, stop=lambda s: s.phase.terminal)
    assert watcher.states()["chat"].phase is Phase.ROLLED_BACK
    store = watcher.store
    assert isinstance(store, MemoryStore)
    store._states.clear()  # as after a restart of a Redis without persistence
    _run(watcher, traffic, clock, seconds=5 * 60)
    restored = store.load("chat")
    assert restored is not None and restored.phase is Phase.ROLLED_BACK
    assert watcher.states()["chat"].weight == 0.0


def test_a_drifting_common_error_rate_is_not_mistaken_for_a_regression() -> None:
    """Green equals blue at every moment, but the error rate rises as the weight ramps."""
    rollout: Rollout = _config(checks=[{"signal": "error_rate", "max_increase": 0.005},
                                       {"signal": "error_rate", "max_ratio": 1.5}]).rollouts[0]
    state = transition(rollout, initial_state(rollout), Action.START, 0.0, actor="w", reason="")
    state = transition(rollout, state, Action.ADVANCE, 700.0, actor="w", reason="")
    windows = (StepWindow(0, 5.0, RolloutStats(EnvStats(380_000, 3_800),
                                               EnvStats(20_000, 200))),
               StepWindow(1, 25.0, RolloutStats(EnvStats(60_000, 2_400),
                                                EnvStats(20_000, 800))))
    decision = decide(rollout, state, Evidence(windows), 800.0)
    assert decision.action is not Action.ROLLBACK, decision.reasons
    assert all(c.status == "ok" for c in decision.checks)
    # Pooled, the same counts would read as green 2.5% against blue 1.4%:
    pooled = log_e_two_sample(6_200, 440_000, 1_000, 40_000, margin=0.005)
    assert pooled > math.log(2 / 0.01)


def test_a_resumed_rollout_is_judged_afresh_not_on_the_evidence_that_paused_it() -> None:
    config, traffic, clock = _config(on_failure="pause"), SimulatedTraffic(), Clock()
    traffic.error_rate["green"] = 0.3
    watcher = _watcher(config, traffic, clock)
    _run(watcher, traffic, clock, seconds=HOUR, stop=lambda s: s.phase is Phase.PAUSED)
    assert watcher.states()["chat"].phase is Phase.PAUSED
    traffic.error_rate["green"] = 0.01  # the team fixed green
    apply_action(watcher.store, config.rollouts[0], Action.RESUME, actor="alice",
                 reason="fixed the prompt", now=clock.now)
    _run(watcher, traffic, clock, seconds=12 * HOUR, stop=lambda s: s.phase.terminal)
    state = watcher.states()["chat"]
    assert state.phase is Phase.PROMOTED, [h.reason for h in state.history]


def test_calls_faster_than_the_first_bucket_still_promote_and_still_catch_a_slow_green() -> None:
    config, traffic, clock = _config(), SimulatedTraffic(), Clock()
    traffic.median.update(blue=0.001, green=0.001)  # every call below the 10 ms bound
    watcher = _watcher(config, traffic, clock)
    _run(watcher, traffic, clock, seconds=12 * HOUR, stop=lambda s: s.phase.terminal)
    assert watcher.states()["chat"].phase is Phase.PROMOTED
    config, traffic, clock = _config(), SimulatedTraffic(), Clock()
    traffic.median.update(blue=0.001, green=0.02)
    watcher = _watcher(config, traffic, clock)
    _run(watcher, traffic, clock, seconds=12 * HOUR, stop=lambda s: s.phase.terminal)
    state = watcher.states()["chat"]
    assert state.phase is Phase.ROLLED_BACK
    assert "latency p95 ratio<=1.5 failed" in state.history[-1].reason


def _hist(**by_bound: int) -> Histogram:
    """Counts per bucket, named by upper bound: ``_hist(b0_32=100)`` is 100 in (0.16, 0.32]."""
    bounds = tuple(DURATION_BUCKETS)
    counts = [0] * (len(bounds) + 1)
    for name, n in by_bound.items():
        counts[bounds.index(float(name[1:].replace("_", ".")))] = n
    return Histogram(bounds, tuple(counts))


@pytest.mark.parametrize("max_ratio", [1.25, 1.5, 3.0])
def test_a_tight_blue_never_makes_the_latency_check_unfailable(max_ratio: float) -> None:
    # Blue: 90 % of its calls in (0.32, 0.64], a sliver below. The only bound with blue on both
    # sides, 0.32 s, has 90 % of blue above it: no green can have 1.25 x that, so a check there
    # passed a green 100 x slower (a reviewer's reproduction promoted it).
    rollout = Rollout.model_validate({
        "name": "chat", "match": {"model": "m"}, "blue": {"model": "m"}, "green": {"model": "g"},
        "schedule": {"steps": [50, 100], "min_step_duration": 60, "min_requests": 200},
        "analysis": {"alpha": 0.01, "checks": [
            {"signal": "latency", "quantile": 0.95, "max_ratio": max_ratio}]}})
    blue = EnvStats(1000, 0, {}, _hist(b0_32=100, b0_64=900))
    state = transition(rollout, initial_state(rollout), Action.START, 0.0, actor="t", reason="t")
    for green_hist, expected in ((_hist(b81_92=1000), "rollback"),
                                 (_hist(b1_28=1000), "rollback"),
                                 (_hist(b0_32=100, b0_64=900), "promote")):
        evidence = Evidence((StepWindow(0, 50.0, RolloutStats(
            blue, EnvStats(1000, 0, {}, green_hist))),))
        decision = decide(rollout, state, evidence, now=120.0)
        assert decision.action.value == expected, (green_hist, decision.reasons)
        assert decision.checks[0].numbers["bound_s"] == 0.64  # blue has nothing above it


def test_the_latency_bound_is_the_nearest_one_a_green_can_fail() -> None:
    blue = _hist(b0_32=600, b0_64=350, b1_28=50)  # p95 at about 0.64 s
    assert blue.tail_bound(0.95, 1.5) == 0.64  # 5 % above it
    assert blue.tail_bound(0.5, 1.5) == 0.32  # 40 % above it: a green can have 1.5 x that ...
    assert blue.tail_bound(0.5, 3.0) == 0.64  # ... but not 3 x 40 %: the next bound up
    assert _hist(b0_64=1000).tail_bound(0.95) == 0.64  # one bucket: its upper bound
    assert _hist(b0_32=1, b0_64=999).tail_bound(0.95, 1.5) == 0.64
    assert Histogram(tuple(DURATION_BUCKETS), (0,) * 14 + (5,)).tail_bound(0.95) is None


def test_resuming_a_manual_weight_where_one_side_gets_no_calls_does_not_strand_it() -> None:
    # set-weight 0 then resume used to leave it progressing at 0 % (green could never reach
    # min_requests: paused at the deadline); at 100 %, blue could not.
    config, traffic, clock = _config(), SimulatedTraffic(), Clock()
    rollout = config.rollouts[0]
    watcher = _watcher(config, traffic, clock)
    _run(watcher, traffic, clock, seconds=HOUR, stop=lambda s: s.step == 1)
    apply_action(watcher.store, rollout, Action.SET_WEIGHT, weight=0.0, actor="a", reason="x",
                 now=clock.now)
    resumed = apply_action(watcher.store, rollout, Action.RESUME, actor="a", reason="go",
                           now=clock.now)
    assert (resumed.phase, resumed.step, resumed.weight) == (Phase.PENDING, None, 0.0)
    _run(watcher, traffic, clock, seconds=12 * HOUR, stop=lambda s: s.phase.terminal)
    assert watcher.states()["chat"].phase is Phase.PROMOTED  # started over, went through
    state = initial_state(rollout)
    state = transition(rollout, state, Action.START, 0.0, actor="a", reason="")
    state = transition(rollout, state, Action.SET_WEIGHT, 1.0, actor="a", reason="", weight=100)
    with pytest.raises(InvalidTransition, match="nothing left to judge: promote it"):
        transition(rollout, state, Action.RESUME, 2.0, actor="a", reason="")
    state = transition(rollout, state, Action.SET_WEIGHT, 3.0, actor="a", reason="", weight=2)
    resumed = transition(rollout, state, Action.RESUME, 4.0, actor="a", reason="")
    assert (resumed.phase, resumed.step, resumed.weight) == (Phase.PROGRESSING, 0, 2.0)


def test_a_watcher_taking_over_mid_step_gives_its_own_data_the_deadline() -> None:
    # The app restarts (its own metrics start at zero) 1.5 h into a step whose deadline for
    # missing data is 1 h: the new watcher used to pause a healthy step on its first look.
    config = load_config({"rollouts": [{
        "name": "chat", "match": {"model": "gpt-4.1"},
        "blue": {"model": "old"}, "green": {"model": "new"},
        "schedule": {"steps": [50, 100], "min_step_duration": "2h", "min_requests": 200,
                     "progress_deadline": "1h"},
        "analysis": {"interval": "30s"}}]})
    clock, store = Clock(), MemoryStore()
    before = SimulatedTraffic()
    watcher = Watcher(config, store, before, clock=clock)
    _run(watcher, before, clock, seconds=1.5 * HOUR)
    assert watcher.states()["chat"].phase is Phase.PROGRESSING
    watcher.stop()
    after = SimulatedTraffic(seed=8)  # the restarted process's own, empty, metrics
    after.counts_since = clock.now  # type: ignore[attr-defined]  # as LocalSource has it
    watcher = Watcher(config, store, after, clock=clock)
    watcher.look()
    state = watcher.states()["chat"]
    assert state.phase is Phase.PROGRESSING, state.history[-1].reason
    _run(watcher, after, clock, seconds=2 * HOUR, stop=lambda s: s.phase.terminal)
    assert watcher.states()["chat"].phase is Phase.PROMOTED
    # Data that never comes still pauses it, a deadline after the takeover.
    watcher.stop()
    clock2, store2, idle = Clock(), MemoryStore(), SimulatedTraffic()
    watcher = Watcher(config, store2, idle, clock=clock2)
    _run(watcher, idle, clock2, seconds=1.5 * HOUR)
    watcher.stop()
    silent = SimulatedTraffic()
    silent.counts_since = clock2.now  # type: ignore[attr-defined]
    watcher = Watcher(config, store2, silent, clock=clock2)
    for _ in range(round(HOUR / 30) + 1):
        clock2.now += 30
        watcher.look()
    state = watcher.states()["chat"]
    assert state.phase is Phase.PAUSED and "progress deadline" in state.history[-1].reason


def test_a_store_blip_does_not_put_off_the_progress_deadline() -> None:
    # One failed store read makes the same watcher "take over" at its next look; its counts
    # (this process's own) did not start there, so the deadline must not start over (a
    # reviewer's run never paused a step green got no calls in, with a blip every 50 min).
    from openai_bluegreen.stores import StoreUnavailable

    class FlakyStore(MemoryStore):
        fail = False

        def load_all(self) -> dict[str, RolloutState]:
            if self.fail:
                raise StoreUnavailable("connection reset (a blip)")
            return super().load_all()

    config = _config()
    clock, store, traffic = Clock(), FlakyStore(), SimulatedTraffic()
    traffic.counts_since = clock.now  # type: ignore[attr-defined]  # as LocalSource has it
    watcher = Watcher(config, store, traffic, clock=clock)
    looks = 0
    while watcher.states()["chat"].phase in (Phase.PENDING, Phase.PROGRESSING):
        assert looks < 12 * 120, watcher.states()["chat"]
        traffic.serve(600, 0.0)  # green gets no calls at all
        clock.now += 30
        looks += 1
        store.fail = looks % 100 == 0
        watcher.look()
    state = watcher.states()["chat"]
    assert state.phase is Phase.PAUSED and "progress deadline" in state.history[-1].reason
    assert looks * 30 <= 1.2 * HOUR
