"""The watcher: looks at the metrics every ``analysis.interval``, decides, writes, tells.

Two daemon threads, off the request path: the follower reads the state store every ``poll``
seconds and hands the weights to the router (the request path only ever reads those in-memory
weights); the looker, every analysis interval, takes a metric snapshot, asks the pure policy
what to do for each scheduled rollout, writes the result with compare-and-set (a manual action
that landed in between wins: the watcher re-reads and decides again at its next look), and
emits the decision as telemetry. A slow metric source therefore never delays an operator's
action. Any fault in the store, the source or the policy is logged once when it starts and once
when it ends, and the loops carry on; calls keep the last known weights (blue when none was
ever known).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation

from . import _telemetry as T
from ._config import Config, Rollout
from ._rollout import (
    Action,
    InvalidTransition,
    Phase,
    RolloutState,
    initial_state,
    restarted,
    revision_of,
    transition,
    unusable,
)
from ._version import __version__
from .policy import Decision, Evidence, StepWindow, decide
from .sources import CatchingUp, MetricSource, RolloutStats, Snapshot, SourceUnavailable
from .sources.local import LocalSource
from .stores import Lease, LeaseLost, StateStore, StoreUnavailable, invalid_of, store_time

__all__ = ["Watcher"]

logger = logging.getLogger("openai_bluegreen.watcher")

DECISION = "bluegreen.decision"
STOP_TIMEOUT = 2.0
"""Seconds :meth:`Watcher.stop` waits for a look stuck in a store or source call."""
RELEASE_TIMEOUT = 0.5
"""Seconds :meth:`Watcher.stop` then waits for the lease to be handed over."""
_PROBLEM_KINDS = ("store", "state", "lease", "write", "source", "history")
STATE = "bluegreen.state"
LONG_LOOKS = 3
"""Looks in a row outliving the leader lease after which the watcher warns (once)."""
_PHASES = tuple(p.value for p in Phase)


@dataclass
class _Run:
    """The step windows of one rollout run as this watcher saw them.

    A run starts at the rollout's start or at an operator's resume (``epoch``: that history
    entry's time): a resumed rollout is judged afresh, not on the evidence that paused it.
    """

    epoch: float | None = None
    windows: list[tuple[int, float, RolloutStats]] = field(default_factory=list)
    closed: list[RolloutStats] = field(default_factory=list)  # each closed window's counts
    # A run rebuilt from history has a source of its own whose counts start at the epoch.
    source: MetricSource | None = None


def _epoch(state: RolloutState) -> float | None:
    for entry in reversed(state.history):
        if entry.action in (Action.START.value, Action.RESUME.value):
            return entry.at
    return None


class _ControllerInstruments:
    """The watcher's instruments on one MeterProvider, created once and reused.

    The SDK keeps an observable gauge's callback for the provider's lifetime, so a re-install
    does not make new gauges: it points these at the new watcher (``None``: report nothing).
    """

    def __init__(self, meter: metrics.Meter, with_weight: bool) -> None:
        self.watcher: Watcher | None = None
        self.decisions = meter.create_counter(
            "bluegreen.rollout.decisions", unit="{decision}",
            description="Watcher decisions per rollout, by decision.")

        def states() -> dict[str, RolloutState]:
            watcher = self.watcher
            return watcher.states() if watcher is not None else {}

        def observe_state(_options: CallbackOptions) -> Iterable[Observation]:
            out = []
            for name, state in states().items():
                for phase in _PHASES:
                    out.append(Observation(1 if state.phase.value == phase else 0,
                                           {T.ROLLOUT: name, STATE: phase}))
            return out

        meter.create_observable_gauge(
            "bluegreen.rollout.state", callbacks=[observe_state], unit="1",
            description="1 for the rollout's current state (attribute bluegreen.state), else 0.")
        if with_weight:
            def observe_weight(_options: CallbackOptions) -> Iterable[Observation]:
                watcher = self.watcher
                if watcher is None:
                    return []
                return [Observation(watcher.routed_weight(n, s) / 100.0, {T.ROLLOUT: n})
                        for n, s in watcher.states().items()]

            meter.create_observable_gauge(
                "bluegreen.rollout.weight", callbacks=[observe_weight], unit="1",
                description="Share of calls routed to green, 0..1, per rollout.")


_instruments: weakref.WeakKeyDictionary[Any, dict[bool, _ControllerInstruments]] = (
    weakref.WeakKeyDictionary())
_global_instruments: dict[bool, _ControllerInstruments] = {}


def _instruments_for(meter_provider: metrics.MeterProvider | None,
                     with_weight: bool) -> _ControllerInstruments:
    """The provider's controller instruments (one set per provider: OpenTelemetry keeps every
    instrument it made). Their gauges read the watcher that runs last: see Watcher.run."""
    cache = (_global_instruments if meter_provider is None
             else _instruments.setdefault(meter_provider, {}))
    made = cache.get(with_weight)
    if made is None:
        meter = (meter_provider.get_meter(T.SCOPE, __version__) if meter_provider is not None
                 else metrics.get_meter(T.SCOPE, __version__))
        made = cache[with_weight] = _ControllerInstruments(meter, with_weight)
    return made


class Watcher:
    """Drives the scheduled rollouts of a config.

    Args:
        config: The validated config; rollouts without a schedule are left alone.
        store: Where states live.
        source: Where metrics come from; ``None`` follows the store without deciding.
        apply_weight: Called with ``(rollout, percent)`` when a weight should take effect
            (the router's ``set_weight`` in an app; nothing in ``run-watcher``).
        clock: Seconds; injectable for tests. ``None``: the store's clock where every writer
            shares it (Redis), else this host's (see ``store_time``).
        poll: Seconds between store reads.
    """

    def __init__(self, config: Config, store: StateStore, source: MetricSource | None, *,
                 apply_weight: Callable[[str, float], None] | None = None,
                 tracer_provider: trace.TracerProvider | None = None,
                 meter_provider: metrics.MeterProvider | None = None,
                 clock: Callable[[], float] | None = None, poll: float = 1.0) -> None:
        self.config = config
        self.store = store
        self.source = source
        self.rollouts: dict[str, Rollout] = {r.name: r for r in config.rollouts if r.schedule}
        self._revisions = {name: revision_of(r) for name, r in self.rollouts.items()}
        self.interval = min((r.effective_analysis.interval for r in self.rollouts.values()),
                            default=30.0)
        self.poll = min(poll, self.interval)
        self._lease_ttl = 3 * self.interval + 1.0  # outlives a few missed looks, not more
        self._apply_weight = apply_weight
        self._clock = clock
        self._states: dict[str, RolloutState] = {}
        # Rollouts the store lost (None) or went back on (the version it has): the leader writes
        # the state held here back.
        self._missing: dict[str, int | None] = {}
        self._unreadable: set[str] = set()  # stored values that are no state of theirs
        self._host_behind = 0.0  # the store's clock minus this host's, at the last look
        self._applied: dict[str, float] = {}
        self._runs: dict[str, _Run] = {}
        self.last_decisions: dict[str, Decision] = {}
        self._problems: dict[str, str | None] = dict.fromkeys(_PROBLEM_KINDS)
        self._history_problems: dict[str, str] = {}
        # Sources reading a backlog at this look ("": the shared one; else a rollout's run).
        self._catching_up: set[str] = set()
        self._problem_lock = threading.Lock()
        self._write_fault: str | None = None
        self._wake = threading.Event()
        self._sync_lock = threading.Lock()
        # Guards _states/_applied between the follower's reads and the looker's writes.
        self._states_lock = threading.RLock()
        self._generation = 0
        self._written: dict[str, int] = {}  # rollout -> generation of the looker's last write
        self._unsubscribe: Callable[[], None] | None = None
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.leader = False
        self._led_until: float | None = None  # when the lease this watcher last renewed ends
        # Elapsed time within a look (the injected clock, else this host's monotonic one).
        self._ticks: Callable[[], float] = clock if clock is not None else time.monotonic
        self._granted_at = 0.0  # _ticks() when the lease was last asked for, and granted
        # Set when a renewal found that another watcher had the lease since this one's last:
        # the look writes nothing more, and the next one is a takeover.
        self._tenure_broken = False
        self._long_looks = 0  # looks in a row that outlived the lease
        self._warned_long_looks = False
        self._unjudged: dict[str, str] = {}  # rollout -> why its metrics could not be judged
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tracer = T.tracer_for(tracer_provider)
        self._instruments = _instruments_for(meter_provider, with_weight=apply_weight is None)
        self._providers = (tracer_provider, meter_provider)
        self._poll_arg = poll

    def for_process(self, store: StateStore, source: MetricSource | None) -> Watcher:
        """The same watcher for another process (a forked child): same config, weights target
        and providers; the store and source given; a lease holder of its own."""
        return Watcher(self.config, store, source, apply_weight=self._apply_weight,
                       tracer_provider=self._providers[0], meter_provider=self._providers[1],
                       clock=self._clock, poll=self._poll_arg)

    # -- state ---------------------------------------------------------------------------
    def states(self) -> dict[str, RolloutState]:
        """The last states read or written (rollouts never stored yet show their initial state)."""
        return {name: self._states.get(name) or initial_state(r)
                for name, r in self.rollouts.items()}

    @property
    def problem(self) -> str | None:
        """Why the watcher is not working normally now (``None`` when it is)."""
        problems = self._problems
        return next((p for p in (problems[k] for k in _PROBLEM_KINDS) if p is not None), None)

    def sync(self) -> None:
        """Read the store; hand changed weights to the router. Raises StoreUnavailable.

        Serialized: the watcher thread and API threads (after a manual action) both sync, and
        an older read must never overwrite a newer one.
        """
        with self._sync_lock:
            self._sync()

    def _sync(self) -> None:
        with self._states_lock:
            generation = self._generation
        try:
            stored = self.store.load_all()
        except StoreUnavailable as exc:
            self._set_problem(f"state store unavailable, keeping the last weights: {exc}",
                              kind="store")
            raise
        self._set_problem(None, kind="store")
        invalid = invalid_of(stored)
        missing: dict[str, int | None] = {}
        bad = []
        unreadable = set()
        with self._states_lock:
            for name, rollout in self.rollouts.items():
                state = stored.get(name)
                held = self._states.get(name)
                why = invalid.get(name) or (
                    None if state is None or self._foreign(name, state)
                    else unusable(rollout, state))
                if why is not None:  # this one keeps its last weights; the others go on
                    bad.append(why)
                    unreadable.add(name)
                    continue
                if (self._written.get(name, -1) > generation
                        and (state is None or held is None or state.version <= held.version)):
                    continue  # the looker wrote a newer state while this read was under way
                if (state is not None and held is not None and state.version < held.version
                        and state.updated_at < held.updated_at):
                    # The store went back to an older state (say, a Redis restarted from an
                    # older snapshot): an operator's rollback must not be undone by it. Kept,
                    # and written back by the leader, as a lost one. (A lower version written
                    # later is an operator's fresh start after deleting the key: followed.)
                    if self._missing.get(name, -1) != state.version:
                        logger.warning(
                            "openai-bluegreen watcher: the state store went back to an older "
                            "state of rollout %s (version %d, %s; this process holds version "
                            "%d, %s): keeping the newer one", name, state.version,
                            state.phase.value, held.version, held.phase.value)
                    missing[name] = state.version
                elif state is not None:
                    self._states[name] = state
                elif name in self._states:
                    missing[name] = None  # the store lost it (e.g. a Redis without persistence)
            self._missing = missing
            self._unreadable = unreadable
            self._push_weights()
        self._set_problem("; ".join(bad) + "; keeping their last weights" if bad else None,
                          kind="state")

    def _remember(self, name: str, state: RolloutState) -> None:
        """Keep a state the looker wrote or re-read (newer than any read under way), unless
        the follower already holds a later version (an operator's action that landed while
        the looker's write was returning: it must not be undone, even for a poll)."""
        with self._states_lock:
            held = self._states.get(name)
            if held is not None and state.version < held.version:
                return
            self._generation += 1
            self._written[name] = self._generation
            self._states[name] = state

    def _foreign(self, name: str, state: RolloutState) -> bool:
        """The stored state is about another blue/green than this config's (a new candidate
        under the same name, or this process runs an older config than the store's)."""
        return bool(state.revision) and state.revision != self._revisions[name]

    def routed_weight(self, name: str, state: RolloutState) -> float:
        """The percent to green that calls of this config get: another candidate's weight
        says nothing about ours, so blue until the state is ours."""
        return 0.0 if self._foreign(name, state) else state.weight

    def _push_weights(self) -> None:
        if self._apply_weight is None:
            return
        with self._states_lock:
            for name, state in self.states().items():
                weight = self.routed_weight(name, state)
                if self._applied.get(name) != weight:
                    self._apply_weight(name, weight)
                    self._applied[name] = weight

    # -- one look ------------------------------------------------------------------------
    def look(self, now: float | None = None) -> list[Decision]:
        """Take one snapshot, decide for every scheduled rollout, write, and emit telemetry."""
        if now is None:  # the store's clock, which the fleet shares (see store_time)
            now = store_time(self.store) if self._clock is None else self._clock()
            # What this host's clock is behind the store's: a LocalSource says on it when its
            # counts begin.
            self._host_behind = now - time.time() if self._clock is None else 0.0
        was_leader = self.leader
        try:
            self.sync()
        except StoreUnavailable:  # reported by sync()
            self.leader = False
            return []
        ttl = self._lease_ttl
        asked = self._ticks()
        try:
            # Only the lease holder decides; a lease outlives a few missed looks, not more.
            grant = self.store.acquire_lease(self.holder, ttl=ttl)
            self.leader = bool(grant)
        except StoreUnavailable as exc:
            self.leader = False
            self._set_problem(f"state store unavailable, not deciding: {exc}", kind="lease")
            return []
        self._set_problem(None, kind="lease")
        if not self.leader or self._stop.is_set():
            if self.leader:  # stopped while acquiring: stop() may have released already
                self._release_lease()
            self._led_until = None
            self._set_problem(None, kind="source")
            return []
        # Back before its lease ran out (a store blip cost a look or two): no other watcher
        # could have led meanwhile, so this is the same tenure and its evidence stands. Unless
        # the store says another watcher had the lease since this one's last renewal (it ran
        # out during the last look, which wrote nothing and so never heard): that one may
        # have moved a rollout, so windows kept from before would span steps this one did not
        # see. A store answering a plain bool cannot say so: for it, a lease that ran out since
        # its last renewal, by this watcher's clock, is taken anew even after a look that led.
        in_time = self._led_until is not None and now < self._led_until
        continued = (((was_leader and isinstance(grant, Lease)) or in_time)
                     and grant is not Lease.TAKEN and not self._tenure_broken)
        self._tenure_broken = False
        self._led_until = now + ttl
        self._granted_at = asked
        if not continued:
            # Taking over (again): windows this watcher kept from an earlier tenure span steps
            # it did not see; the evidence starts afresh at takeover (docs/analysis.md). So
            # does a source that would otherwise first read the samples of the whole time it
            # was not leading (runs that can look back are rebuilt from history instead).
            self._runs.clear()
            reset = getattr(self.source, "reset", None)
            if callable(reset):
                reset()
        # Put back what the store lost or went back on, never restart.
        for name, stored_version in sorted(self._missing.items()):
            try:
                if self.store.compare_and_set(self._states[name], stored_version,
                                              holder=self.holder):
                    logger.warning("openai-bluegreen watcher: the state store had %s rollout "
                                   "%s; restored the last known state",
                                   "lost" if stored_version is None else "an older state of",
                                   name)
            except LeaseLost as exc:
                self._lost_lease(f"decision not written: {exc}")
                return []
            except StoreUnavailable as exc:
                self._set_problem(f"could not restore the state store's lost states: {exc}",
                                  kind="write")
                break
        snapshot: Snapshot | None = None
        note = ""
        self._catching_up.clear()
        if self.source is None:
            note = "no metric source"
        else:
            try:
                snapshot = self.source.snapshot(now)
            except SourceUnavailable as exc:  # CatchingUp too: holds, noted as such
                note = str(exc)
                if isinstance(exc, CatchingUp):
                    self._catching_up.add("")
            except Exception as exc:  # a broken source must not stop the loop
                note = f"metric source failed: {exc!r}"
        self._set_problem(None if snapshot is not None else f"holding: {note}", kind="source")
        if self._stop.is_set():  # stopped while the source answered: decide nothing more
            return []
        self._count_long_look(self._ticks() - asked)
        if not self._lease_for_writes(now):  # the snapshot took long: renewed before writing
            return []
        decisions = []
        self._write_fault = None
        for rollout in self.rollouts.values():
            if self._stop.is_set() or not self.leader or self._tenure_broken:
                break  # stopped, lost the lease, or another watcher led meanwhile: no more
            if rollout.name in self._unreadable:
                continue  # its stored value is for a person to fix: nothing is decided on it
            decision = self._decide_one(rollout, snapshot, note, now)
            if decision is not None:
                decisions.append(decision)
        self._set_problem(self._write_fault, kind="write")
        self._push_weights()
        return decisions

    def _decide_one(self, rollout: Rollout, snapshot: Snapshot | None, note: str,
                    now: float) -> Decision | None:
        name = rollout.name
        for _attempt in range(3):
            stored = self._states.get(name)
            if stored is not None and (self._foreign(name, stored) or not stored.revision):
                # Another candidate's state (restart: only ever less green), or one stored
                # before revisions existed (adopt it as this config's, whatever its phase).
                if stored.revision:
                    update = restarted(rollout, stored, now, actor="watcher")
                else:
                    update = replace(stored, revision=self._revisions[name],
                                     version=stored.version + 1)
                if not self._lease_for_writes(now):
                    return None
                try:
                    written = self.store.compare_and_set(update, stored.version,
                                                         holder=self.holder)
                except LeaseLost as exc:
                    self._lost_lease(f"decision not written: {exc}")
                    return None
                except StoreUnavailable:
                    return None
                if written:
                    if stored.revision:
                        logger.warning("openai-bluegreen watcher: rollout %s: %s", name,
                                       update.history[-1].reason)
                        self._runs.pop(name, None)
                    self._remember(name, update)
                    continue
                try:  # someone wrote first: look again at what is stored now
                    fresh = self.store.load(name)
                except StoreUnavailable:
                    return None
                if fresh is not None:
                    self._remember(name, fresh)
                continue
            state = stored or initial_state(rollout)
            snapshot, note = self._snapshot_for(rollout, state, snapshot, note, now)
            try:
                evidence = self._evidence(rollout, state, snapshot, note)
                decision = decide(rollout, state, evidence, now)
            except Exception as exc:  # one rollout's odd counts must stop no other
                # Counts no check can judge (a custom source's counter went backwards, so a
                # window has more errors than calls): judged as a source that cannot answer,
                # so the rollout holds and its progress deadline still runs.
                problem = f"the metrics of {name} cannot be judged: {exc}"
                if self._unjudged.get(name) != problem:
                    logger.warning("openai-bluegreen watcher: %s", problem)
                self._unjudged[name] = problem
                decision = decide(rollout, state, Evidence(available=False, note=problem), now)
            else:
                self._unjudged.pop(name, None)
            if decision.action is Action.HOLD:
                self._emit(decision, state)
                return decision
            try:
                new = transition(rollout, state, decision.action, now, actor="watcher",
                                 reason=decision.reason)
            except InvalidTransition:
                return None
            if self._stop.is_set():  # stopped while judging (a slow rebuild): not written
                return None
            if not self._lease_for_writes(now):  # judging took long (a rebuild from history)
                return None
            try:
                written = self.store.compare_and_set(new, None if stored is None else
                                                     stored.version, holder=self.holder)
            except LeaseLost as exc:
                self._lost_lease(f"decision not written: {exc}")
                return None
            except StoreUnavailable as exc:
                self._write_fault = f"state store unavailable, decision not written: {exc}"
                return None
            if written:
                self._remember(name, new)
                if snapshot is not None:
                    self._open_window(rollout, new, snapshot)
                self._emit(decision, new)
                return decision
            # Someone (an operator) wrote first: their action wins; judge the new state.
            try:
                fresh = self.store.load(name)
            except StoreUnavailable:
                return None
            if fresh is not None:
                self._remember(name, fresh)
        return None

    def _lost_lease(self, why: str) -> None:
        """The store refused a write or a renewal: the lease ran out during this look (it took
        longer than the lease's time to live) and another watcher may lead now. Nothing more is
        written on this look's evidence, and the next look that gets the lease is a takeover."""
        self.leader = False
        self._led_until = None
        self._set_problem(f"lost the leader lease during a look that took longer than the "
                          f"lease ({self._lease_ttl:g}s), {why}", kind="lease")

    def _lease_for_writes(self, now: float) -> bool:
        """Whether this look may go on writing, renewing the lease first when the look has run
        an analysis interval or more since the lease was last granted (a slow metric source,
        a rebuild from history): a look that outlives its lease still writes when nobody else
        took the lease meanwhile. Writes stay fenced on the lease whatever this says.

        Costs one store round trip, only on such long looks, off the request path.
        """
        asked = self._ticks()
        held_for = asked - self._granted_at
        if held_for < self.interval:
            return True  # granted too recently to run out before the write
        try:
            grant = self.store.acquire_lease(self.holder, ttl=self._lease_ttl)
        except StoreUnavailable:
            return True  # the fenced write finds out whether the lease is still this one's
        if not grant:
            self._lost_lease("another watcher took it over; nothing written on its evidence")
            return False
        if self._stop.is_set():  # stopped while renewing: stop() may have released already
            self.leader = True  # and cleared this, but the renewal took the lease again
            self._release_lease()
            return False
        if self._led_until is not None:
            self._led_until += held_for
        self._granted_at = asked
        if grant is Lease.TAKEN or (not isinstance(grant, Lease)
                                    and held_for >= self._lease_ttl):
            # The lease ran out during this look and another watcher had it meanwhile (or, for
            # a store that cannot tell, may have): it may have moved a rollout since this
            # look's snapshot. This watcher leads again, but from its next look, as a takeover.
            self._tenure_broken = True
            self._set_problem(f"the leader lease ran out during a look that took longer than "
                              f"the lease ({self._lease_ttl:g}s) and another watcher may "
                              "have led meanwhile: nothing written on this look's evidence; "
                              "judging afresh from the next look", kind="lease")
            return False
        return True

    def _count_long_look(self, took: float) -> None:
        """Warn once when looks keep outliving the lease (``took``: from the lease's grant to
        the end of the metric snapshot)."""
        if took < self._lease_ttl:
            self._long_looks = 0
            return
        self._long_looks += 1
        if self._long_looks >= LONG_LOOKS and not self._warned_long_looks:
            self._warned_long_looks = True
            logger.warning(
                "openai-bluegreen watcher: %d looks in a row took longer than the leader lease "
                "(%gs = 3 x analysis.interval + 1s; the last one %.1fs from taking the lease "
                "to the end of its metric snapshot), so the lease runs out during each look. "
                "The watcher renews it before writing, but another watcher can take it over "
                "meanwhile, and watchers that keep taking it from one another write nothing. "
                "Use a longer analysis.interval (at least %.0fs) or a faster metric source.",
                self._long_looks, self._lease_ttl, took, math.ceil(took))

    # -- evidence ------------------------------------------------------------------------
    def _snapshot_for(self, rollout: Rollout, state: RolloutState, snapshot: Snapshot | None,
                      note: str, now: float) -> tuple[Snapshot | None, str]:
        """The snapshot to judge ``rollout`` on: the shared one, or its rebuilt run's own."""
        if snapshot is None or state.phase not in (Phase.PROGRESSING, Phase.PAUSED):
            self._history_problem(rollout.name, None)
            return snapshot, note
        run = self._runs.get(rollout.name)
        epoch = _epoch(state)
        if run is None or run.epoch != epoch:
            try:
                rebuilt = self._rebuild(rollout, state, epoch)
            except SourceUnavailable as exc:
                self._history_problem(rollout.name, f"cannot rebuild the evidence of "
                                      f"{rollout.name} from history ({exc}); judging it on "
                                      "the calls from now on")
                rebuilt = None
            if rebuilt is not None:
                self._runs[rollout.name] = run = rebuilt
        if run is None or run.source is None:
            return snapshot, note
        try:
            own = run.source.snapshot(now)
        except SourceUnavailable as exc:  # e.g. still catching up on the run's history
            self._history_problem(rollout.name, f"holding {rollout.name}: {exc}")
            if isinstance(exc, CatchingUp):
                self._catching_up.add(rollout.name)
            return None, str(exc)
        self._history_problem(rollout.name, None)
        return own, note

    def _history_problem(self, rollout: str, problem: str | None) -> None:
        """Per rollout (one rollout's success must not clear another's problem)."""
        if problem is None:
            self._history_problems.pop(rollout, None)
        else:
            self._history_problems[rollout] = problem
        self._set_problem(next(iter(self._history_problems.values()), None), kind="history")

    def _rebuild(self, rollout: Rollout, state: RolloutState, epoch: float | None
                 ) -> _Run | None:
        """The run's step windows from the history's step start times, if the source can look
        back (Prometheus can; this process's own reader cannot)."""
        rewind = getattr(self.source, "rewind", None)
        if epoch is None or not callable(rewind):
            return None
        marks: list[tuple[float, int, float]] = []
        for entry in state.history:
            if entry.at < epoch:
                continue
            if entry.at == epoch or entry.action in (Action.ADVANCE.value,
                                                     Action.SET_WEIGHT.value):
                marks.append((entry.at, entry.step if entry.step is not None else -1,
                              entry.weight))
        if not marks:
            return None
        source: MetricSource = rewind(epoch - 0.001)
        run = _Run(epoch, source=source)
        for at, step, weight in marks:
            base = source.snapshot(at).get(rollout.name)
            if run.windows:
                run.closed.append(base.minus(run.windows[-1][2]))
            run.windows.append((step, weight, base))
        logger.info("openai-bluegreen watcher: rebuilt %d step window(s) of %s from history",
                    len(run.windows), rollout.name)
        return run

    def _open_window(self, rollout: Rollout, state: RolloutState, snapshot: Snapshot) -> None:
        now_stats = snapshot.get(rollout.name)
        if state.phase in (Phase.PENDING, Phase.PROMOTED, Phase.ROLLED_BACK):
            self._runs[rollout.name] = _Run()
            return
        epoch = _epoch(state)
        run = self._runs.get(rollout.name)
        if run is None or run.epoch != epoch:
            # A new run this watcher saw begin (its own start; a resume without history):
            # windows on the shared source.
            run = self._runs[rollout.name] = _Run(epoch)
        step = state.step if state.step is not None else -1
        if run.windows and run.windows[-1][0] == step and run.windows[-1][1] == state.weight:
            return
        if run.windows:
            run.closed.append(now_stats.minus(run.windows[-1][2]))
        run.windows.append((step, state.weight, now_stats))

    def _evidence(self, rollout: Rollout, state: RolloutState, snapshot: Snapshot | None,
                  note: str) -> Evidence:
        if snapshot is None:
            catching_up = bool(self._catching_up & {"", rollout.name})
            return Evidence(available=False, note=note, catching_up=catching_up)
        if state.phase in (Phase.PROGRESSING, Phase.PAUSED):
            self._open_window(rollout, state, snapshot)
        run = self._runs.get(rollout.name)
        if run is None or not run.windows:
            return Evidence()
        current = snapshot.get(rollout.name)
        windows = [StepWindow(step, weight, stats) for (step, weight, _), stats
                   in zip(run.windows[:-1], run.closed, strict=True)]
        step, weight, baseline = run.windows[-1]
        windows.append(StepWindow(step, weight, current.minus(baseline)))
        # When the counts this watcher can see begin (a restarted app's own metrics): the
        # progress deadline does not wait for calls it could never see.
        source = run.source if run.source is not None else self.source
        since = getattr(source, "counts_since", None)
        if since is not None and isinstance(source, LocalSource):
            since += self._host_behind  # on the store's clock, as ``now``
        return Evidence(tuple(windows), current_since=since)

    # -- telemetry -----------------------------------------------------------------------
    def _emit(self, decision: Decision, state: RolloutState) -> None:
        self.last_decisions[decision.rollout] = decision
        attrs = {T.ROLLOUT: decision.rollout, DECISION: decision.action.value}
        try:
            self._instruments.decisions.add(1, attrs)
            evidence = json.dumps([c.to_dict() for c in decision.checks], default=str)
            with self._tracer.start_as_current_span(
                    f"bluegreen.decide {decision.rollout}",
                    attributes={**attrs, STATE: state.phase.value,
                                "bluegreen.weight": state.weight}) as span:
                span.add_event(DECISION, {**attrs, "bluegreen.reasons": list(decision.reasons),
                                          "bluegreen.evidence": evidence,
                                          STATE: state.phase.value,
                                          "bluegreen.weight": state.weight})
        except Exception:  # telemetry faults never stop the watcher
            logger.debug("openai-bluegreen: decision telemetry failed", exc_info=True)
        level = logging.DEBUG if decision.action is Action.HOLD else logging.INFO
        logger.log(level, "rollout %s: %s at %g%% (%s): %s", decision.rollout,
                   decision.action.value, state.weight, state.phase.value, decision.reason,
                   extra={"bluegreen_rollout": decision.rollout,
                          "bluegreen_decision": decision.action.value,
                          "bluegreen_reasons": list(decision.reasons),
                          "bluegreen_evidence": [c.to_dict() for c in decision.checks]})

    def _set_problem(self, problem: str | None, *, kind: str) -> None:
        """Record the problem of one kind: logged when it starts and when it ends, not on every
        look while it lasts (its wording may change meanwhile: debug)."""
        with self._problem_lock:
            current = self._problems[kind]
            self._problems[kind] = problem
        if problem is not None and current is None:
            logger.warning("openai-bluegreen watcher: %s", problem)
        elif problem is None and current is not None:
            logger.info("openai-bluegreen watcher: recovered (%s)", kind)
        elif problem != current:
            logger.debug("openai-bluegreen watcher: still: %s", problem)

    # -- loop ----------------------------------------------------------------------------
    def start(self) -> None:
        """Run in a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            return
        # The gauges show this watcher from now on; a watcher only built (an install that
        # failed after building it) never takes them from the one running.
        self._instruments.watcher = self
        subscribe = getattr(self.store, "subscribe", None)
        if callable(subscribe):  # stores that push changes wake the loop at once
            try:
                self._unsubscribe = subscribe(self._wake.set)
            except Exception:
                logger.debug("openai-bluegreen: store subscription failed", exc_info=True)
        self._thread = threading.Thread(target=self.run, name="openai-bluegreen-watcher",
                                        daemon=True)
        self._thread.start()

    def run(self) -> None:
        """The loop (blocks until :meth:`stop`): decide every ``interval``, while a follower
        thread reads the store every ``poll``, so a look stuck on a slow metric source or
        waiting for the store never delays an operator's action (``source=None``: follow only).
        """
        self._instruments.watcher = self
        try:
            if self.source is None:
                self._follow()
                return
            threading.Thread(target=self._follow, name="openai-bluegreen-follower",
                             daemon=True).start()
            while not self._stop.is_set():
                started = time.monotonic()
                self._guarded(self.look, "look failed, keeping the last weights", "source")
                self._stop.wait(max(0.0, started + self.interval - time.monotonic()))
        finally:
            self._release_lease()  # here, so a stop() that gave up waiting still hands over

    def _follow(self) -> None:
        while not self._stop.is_set():
            self._guarded(self.sync, "store read failed, keeping the last weights", "store")
            self._wake.wait(self.poll)
            self._wake.clear()

    def _guarded(self, step: Callable[[], object], what: str, kind: str) -> None:
        try:
            step()
        except StoreUnavailable:
            pass  # already reported by sync()/look(); calls keep the last weights
        except Exception as exc:  # keep going; calls keep the last weights
            logger.debug("openai-bluegreen watcher: %s", what, exc_info=True)
            self._set_problem(f"{what}: {exc!r}", kind=kind)

    def _release_lease(self) -> None:
        # Hand over at once instead of after the lease expires; also when a store blip cleared
        # ``leader`` while the lease in the store is still this watcher's (the store releases
        # only its holder's).
        if self.leader or self._led_until is not None:
            self.leader = False
            self._led_until = None
            try:
                self.store.release_lease(self.holder)
            except Exception:
                logger.debug("openai-bluegreen: lease release failed", exc_info=True)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the loops; wait at most ``timeout`` seconds for a look under way.

        A look stuck in a store or source call is left to finish on its own (daemon threads):
        it decides nothing more, and releases the lease when the call returns.
        """
        self._stop.set()
        self._wake.set()
        if self._instruments.watcher is self:
            self._instruments.watcher = None
        if self._unsubscribe is not None:
            try:
                self._unsubscribe()
            except Exception:
                logger.debug("openai-bluegreen: unsubscribe failed", exc_info=True)
            self._unsubscribe = None
        thread, self._thread = self._thread, None
        if thread is None:
            self._release_lease()  # looks ran in the caller's thread (tests, tools)
        elif thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("openai-bluegreen watcher: still inside a state store or metric "
                               "source call after %gs; left to finish on its own", timeout)
                # Hand the lease over now: the caller may close the store and exit (SIGTERM
                # to run-watcher) before that call returns, and the fleet would have no leader
                # until the lease ran out. The look decides nothing more (it checks _stop).
                # Waited for briefly: the store may be what is stuck (a file lock another
                # process holds), and stopping must stay prompt.
                releaser = threading.Thread(target=self._release_lease, daemon=True,
                                            name="openai-bluegreen-lease-release")
                releaser.start()
                releaser.join(RELEASE_TIMEOUT)

    def status(self) -> list[dict[str, Any]]:
        out = []
        for name, state in self.states().items():
            decision = self.last_decisions.get(name)
            out.append({"name": name, "phase": state.phase.value, "step": state.step,
                        "weight": state.weight, "version": state.version,
                        "revision": state.revision,
                        "other_candidate": self._foreign(name, state),
                        "last_decision": None if decision is None else decision.to_dict(),
                        "history": [h.to_dict() for h in state.history[-10:]]})
        return out
