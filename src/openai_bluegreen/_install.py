"""install / uninstall / status and the manual rollout actions: the public lifecycle."""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace

from . import _patch, _state, _worker
from ._config import Config, load_config, mask_secrets, mask_url
from ._control import apply_action, default_actor, find_rollout
from ._errors import BlueGreenError, ConfigError
from ._rollout import Action, RolloutState, revision_of
from ._router import Router, environment_of
from ._watcher import Watcher
from .sources import MetricSource, SourceUnavailable, open_source
from .sources.local import LocalSource
from .stores import StateStore, StoreUnavailable, open_store
from .stores.memory import MemoryStore

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider

__all__ = ["flush", "install", "pause", "promote", "resume", "rollback", "set_weight", "status",
           "uninstall"]

logger = logging.getLogger("openai_bluegreen")
_lock = threading.Lock()
_local_sources: weakref.WeakKeyDictionary[Any, LocalSource] = weakref.WeakKeyDictionary()


def _readers_of(provider: Any) -> list[Any]:
    """The metric readers of an SDK MeterProvider, those added later included. The SDK has no
    public way to list them: where they live differs between its versions."""
    storages = getattr(getattr(provider, "_measurement_consumer", None), "_reader_storages", None)
    if isinstance(storages, dict):  # every reader, added ones too (opentelemetry-sdk 1.2x+)
        return list(storages)
    return list(getattr(provider, "_metric_readers", None)
                or getattr(getattr(provider, "_sdk_config", None), "metric_readers", None) or ())


class _LocalPlan:
    """The LocalSource an install will read, found or made but not attached yet: attaching it
    to the app's MeterProvider is a change to shared state, done only once nothing else can
    fail, and undone if the install fails after all."""

    def __init__(self, meter_provider: metrics.MeterProvider | None) -> None:
        from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider

        self.target: Any = (meter_provider if meter_provider is not None
                            else metrics.get_meter_provider())
        self.attach: Any = None  # the provider's add_metric_reader when a reader must be added
        self.attached = False
        self.known = True  # whether the provider already had its LocalSource remembered
        self.private: SdkMeterProvider | None = None
        if isinstance(self.target, SdkMeterProvider):
            self.effective: metrics.MeterProvider | None = meter_provider
            source = _local_sources.get(self.target)
            if source is None:  # one the app gave its provider itself
                source = next((r for r in _readers_of(self.target) if isinstance(r, LocalSource)),
                              None)
            if source is None:
                self.attach = getattr(self.target, "add_metric_reader", None)
                if self.attach is None:
                    raise BlueGreenError(
                        "the watcher reads this process's metrics through a metric reader, and "
                        "this opentelemetry-sdk cannot add one to an existing MeterProvider: "
                        "upgrade opentelemetry-sdk, or create your MeterProvider with "
                        "metric_readers=[openai_bluegreen.sources.local.LocalSource(), ...]")
                source = LocalSource()
            self.source = source
            return
        # Without an SDK provider our metrics go to a private one with the reader, so the
        # watcher still sees them.
        private = _local_sources.get(self.target)
        if private is None:
            private = LocalSource()
            self.private = SdkMeterProvider(metric_readers=[private])
            self.effective = self.private
        else:
            self.effective = _private_providers[self.target]
        self.source = private

    def commit(self) -> None:
        """Attach the reader (if new) and remember it for this provider."""
        self.known = self.target in _local_sources
        if self.attach is not None:
            self.attach(self.source)
            self.attached = True
        _local_sources[self.target] = self.source
        if self.private is not None:
            _private_providers[self.target] = self.private

    def undo(self) -> None:
        """Take back what :meth:`commit` did: detach the reader, forget what it remembered."""
        if self.attached:
            try:
                self.target.remove_metric_reader(self.source)
            except Exception:
                logger.debug("openai-bluegreen: detaching %r failed", self.source, exc_info=True)
            self.attached = False
        if not self.known:
            _local_sources.pop(self.target, None)
        if self.private is not None:
            if _private_providers.get(self.target) is self.private:
                del _private_providers[self.target]
            self.private.shutdown()


_private_providers: weakref.WeakKeyDictionary[Any, metrics.MeterProvider] = (
    weakref.WeakKeyDictionary())


def _open_store(url: str) -> StateStore:
    """The config's state store; a store that cannot be opened is a config problem."""
    try:
        return open_store(url)
    except StoreUnavailable as exc:
        raise ConfigError([("state", f"cannot open state store {mask_url(url)!r}: "
                            f"{mask_secrets(str(exc))}")]) from None


def _open_source(url: str) -> MetricSource:
    """The config's Prometheus source; one that cannot be opened is a config problem."""
    try:
        return open_source(url)
    except (SourceUnavailable, ValueError) as exc:
        raise ConfigError([("metrics_source", f"cannot open metrics source {mask_url(url)!r}: "
                            f"{mask_secrets(str(exc))}")]) from None


def _close(*parts: Any) -> None:
    for part in parts:
        try:
            if part is not None:
                part.close()
        except Exception:
            logger.debug("openai-bluegreen: closing %r failed", part, exc_info=True)


def install(
    config: Config | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
    logger_provider: Any = None,
) -> None:
    """Route matching ``openai`` calls through blue/green rollouts. Idempotent.

    Args:
        config: A :class:`Config`, a mapping of the same shape, or a path to a YAML/TOML/JSON
            file. ``None`` reads ``OPENAI_BLUEGREEN_CONFIG`` (or ``./openai-bluegreen.yaml``).
        tracer_provider: Where spans go; default: the global provider.
        meter_provider: Where metrics go; default: the global provider.
        logger_provider: Where content events go when
            ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` asks for them
            (``EVENT_ONLY`` / ``SPAN_AND_EVENT``); default: the global provider.

    Raises:
        ConfigError: The config is invalid, or its state store or metrics source cannot be
            opened; every bad field is named with its value and nothing is installed (a
            previous installation stays as it was).
    """
    validated = load_config(config, require_keys=True)
    scheduled = any(r.schedule is not None for r in validated.rollouts)
    with _lock:
        current = _state.router
        if (current is not None and current.config == validated
                and current.providers == (tracer_provider, meter_provider, logger_provider)
                and current.environment == environment_of(validated)):
            _patch.patch()  # puts back a wrapper of ours another instrumentation took away
            return
        # First everything that can fail (opening the store and the source, building the
        # router); only then what other code sees (the app's MeterProvider, the gauges, the
        # patch, the installed router). A failure undoes what this call made.
        store: StateStore | None = None
        source: MetricSource | None = None
        plan: _LocalPlan | None = None
        router: Router | None = None
        watcher: Watcher | None = None
        try:
            effective_mp: metrics.MeterProvider | None = meter_provider
            if scheduled:
                previous = _state.watcher
                if validated.state == "memory" and previous is not None \
                        and previous.store.url == "memory":
                    store = MemoryStore(_kept_states(previous, validated))
                else:
                    store = _open_store(validated.state)
                if validated.metrics_source == "local":
                    plan = _LocalPlan(meter_provider)
                    effective_mp, source = plan.effective, plan.source
                else:
                    source = _open_source(validated.metrics_source)
            if plan is not None:
                plan.commit()
            router = Router(validated, tracer_provider=tracer_provider,
                            meter_provider=effective_mp, logger_provider=logger_provider)
            router.providers = (tracer_provider, meter_provider, logger_provider)
            if current is not None:
                _keep_runtime_state(current, router)
            if scheduled and store is not None:
                watcher = Watcher(validated, store, source, apply_weight=router.set_weight,
                                  tracer_provider=tracer_provider, meter_provider=effective_mp)
        except BaseException:
            if plan is not None:
                plan.undo()
            _close(store, source if plan is None else None)  # a LocalSource may be in use
            raise
        if plan is not None and validated.state != "memory":
            logger.warning(
                "openai-bluegreen: state %s is shared, but metrics_source is 'local': "
                "whichever process leads judges only its own calls. For a fleet, point "
                "metrics_source at the Prometheus that scrapes every replica.",
                mask_url(validated.state))
        if watcher is not None:
            try:  # pick up a rollout already under way (another process, a restart)
                watcher.sync()
            except StoreUnavailable as exc:
                logger.warning("openai-bluegreen: %s; scheduled rollouts start on blue", exc)
            except Exception:  # a fault in the store's contents: fail open, as the loop does
                logger.exception("openai-bluegreen: reading the state store failed; "
                                 "scheduled rollouts start on blue")
        _stop_watcher()
        _patch.patch()
        _state.router = router
        _state.watcher = watcher
        if watcher is not None:
            watcher.start()


def _keep_runtime_state(previous: Router, router: Router) -> None:
    """What a re-install keeps of the running router. A weight set at run time
    (``set_weight()``) on a rollout without a schedule stays through a re-install that leaves
    that rollout as it was (new providers, another rollout changed); a rollout whose config
    changed starts at its configured weight. The Responses API responses each environment
    answered stay while the rollout's calls, blue and green are the same (its revision): they
    still live at those providers, and their follow-ups must go there whatever the weight."""
    before = {r.name: r for r in previous.config.rollouts}
    for rollout in router.config.rollouts:
        old = before.get(rollout.name)
        if old is None:
            continue
        if rollout.schedule is None and old == rollout:
            router.rollouts[rollout.name].weight_bp = previous.rollouts[rollout.name].weight_bp
        if revision_of(old) == revision_of(rollout):
            router.rollouts[rollout.name].responses = previous.rollouts[rollout.name].responses


def _kept_states(previous: Watcher, config: Config) -> dict[str, RolloutState]:
    """The states a re-install with ``state: memory`` keeps: those of rollouts still configured
    with the same calls and the same blue and green. A rollout whose candidate changed starts
    over (a promoted state must not hand a new green every call at once); ``uninstall()``
    forgets them all."""
    before = {r.name: r for r in previous.config.rollouts}
    kept = {}
    for rollout in config.rollouts:
        old = before.get(rollout.name)
        state = previous.store.load(rollout.name)
        if state is not None and old is not None and revision_of(old) == revision_of(rollout):
            kept[rollout.name] = state
    return kept


def uninstall() -> None:
    """Stop routing and restore the SDK's methods exactly. Cached wrappers pass through."""
    with _lock:
        _stop_watcher()
        _state.router = None
        _patch.unpatch()


def _stop_watcher() -> None:
    watcher = _state.watcher
    _state.watcher = None
    if watcher is not None:
        watcher.stop()
        _close(watcher.store, watcher.source)


def _after_fork_in_child() -> None:
    """A forked child (gunicorn --preload, multiprocessing's fork) inherits the router but not
    the watcher's thread. The hook only resets: the child's own watcher is started later by
    its telemetry worker (with its first routed call), off the request path and never in a
    child that only goes on to exec. The parent's watcher object is left alone (stopping it
    would release the parent's lease)."""
    global _lock, _forked_from  # noqa: PLW0603 - may have been copied held by a lost thread
    _lock = threading.Lock()
    _patch.reset_lock_after_fork()
    if _state.router is not None:
        _state.router.reset_lock_after_fork()
    _forked_from = _state.watcher
    _state.watcher = None


_forked_from: Watcher | None = None


def _start_watcher_in_child() -> None:
    """Run by a new telemetry worker thread: in a forked child, give it a watcher of its own
    (its own lease holder, the store reopened or, for ``memory``, the child's copy of the
    states), so its weights keep following the store. Failing here leaves the child's calls on
    the weights of the fork, as a watcher fault does."""
    global _forked_from
    old, _forked_from = _forked_from, None
    if old is None:
        return
    with _lock:
        if _state.router is None or _state.watcher is not None:
            return  # uninstalled or re-installed since the fork
        try:
            config = old.config
            if config.state == "memory":
                store: StateStore = MemoryStore(old.store.load_all())
            else:
                store = open_store(config.state)
            source = old.source
            if isinstance(source, LocalSource):  # reads this process's provider, as before
                source.after_fork()
            elif source is not None:
                source = open_source(config.metrics_source)
            watcher = old.for_process(store, source)
            watcher.start()
            _state.watcher = watcher
        except Exception:
            logger.exception("openai-bluegreen: no watcher in this forked process; its calls "
                             "keep the weights they had at the fork")


_worker.on_start(_start_watcher_in_child)
os.register_at_fork(after_in_child=_after_fork_in_child)


def _router() -> Router:
    router = _state.router
    if router is None:
        raise BlueGreenError("openai-bluegreen is not installed: call openai_bluegreen.install()")
    return router


def set_weight(rollout: str, percent: float, *, reason: str = "", actor: str | None = None
               ) -> None:
    """Send ``percent`` (0-100) of the rollout's calls to green, from the next call on.

    A scheduled rollout is paused at that weight (recorded in its history) until resumed.

    Raises:
        UnknownRolloutError: No rollout has that name.
        ValueError: ``percent`` is not between 0 and 100.
    """
    router = _router()
    watcher = _state.watcher
    if watcher is None or rollout not in watcher.rollouts:
        router.set_weight(rollout, percent)
        return
    # Scheduled: the store first. Calls take the weight once it is written (the sync after the
    # write hands it over); a write that fails changes nothing, so the app never routes at a
    # weight the store, the CLI and the watcher do not know.
    router.check_weight(rollout, percent)
    _act(rollout, Action.SET_WEIGHT, reason, actor, weight=float(percent))


def _act(rollout: str, action: Action, reason: str, actor: str | None,
         weight: float | None = None) -> RolloutState:
    router = _router()
    watcher = _state.watcher
    config = find_rollout(router.config, rollout)
    if watcher is None or rollout not in watcher.rollouts:
        raise BlueGreenError(f"rollout {rollout!r} has no schedule: use set_weight()")
    # As the CLI: a rollback applies to whatever the store holds; another action on a state of
    # another blue/green (a rolling deploy, a drifted replica) is refused, since a leader on
    # that config would undo it at its next look.
    state = apply_action(watcher.store, config, action, actor=actor or default_actor("api:"),
                         reason=reason or f"{action.value} via the Python API", weight=weight)
    try:
        watcher.sync()
    except StoreUnavailable:  # written; the follower hands it over at its next read
        logger.debug("openai-bluegreen: sync after %s failed", action.value, exc_info=True)
    return state


def promote(rollout: str, *, reason: str = "", actor: str | None = None) -> None:
    """Send every call of a scheduled rollout to green now, and end the rollout."""
    _act(rollout, Action.PROMOTE, reason, actor)


def rollback(rollout: str, *, reason: str = "", actor: str | None = None) -> None:
    """Send every call of a scheduled rollout to blue now, and end the rollout."""
    _act(rollout, Action.ROLLBACK, reason, actor)


def pause(rollout: str, *, reason: str = "", actor: str | None = None) -> None:
    """Hold a scheduled rollout at its current weight until :func:`resume`."""
    _act(rollout, Action.PAUSE, reason, actor)


def resume(rollout: str, *, reason: str = "", actor: str | None = None) -> None:
    """Let the watcher drive a paused rollout again."""
    _act(rollout, Action.RESUME, reason, actor)


def status() -> dict[str, Any]:
    """The installed rollouts: weights, and for scheduled ones state, step, last decision."""
    router = _state.router
    if router is None:
        return {"installed": False, "rollouts": []}
    rollouts = router.status()
    out: dict[str, Any] = {"installed": True, "rollouts": rollouts}
    lost = _patch.lost()
    if lost:  # install() again puts ours back on top
        out["not_routed"] = lost
    watcher = _state.watcher
    if watcher is not None:
        by_name = {s["name"]: s for s in watcher.status()}
        for entry in rollouts:
            extra = by_name.get(entry["name"])
            if extra is not None:
                entry.update({k: v for k, v in extra.items() if k not in ("name", "weight")})
        out["watcher"] = {
            "state": watcher.store.url, "interval_s": watcher.interval,
            "role": "leader" if watcher.leader else "follower", "problem": watcher.problem}
    return out


def flush() -> None:
    """Hand every span and metric recorded so far to the providers.

    Telemetry is recorded off the request path by a background worker, in bursts every 250 ms
    (the in-process metric source flushes before each look). Call this before reading an
    in-memory exporter or reader (tests) or before shutting the providers down by hand. It also
    runs at interpreter exit.
    """
    _worker.flush()
