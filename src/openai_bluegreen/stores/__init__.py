"""State stores: where rollout states live, shared by the watcher, the CLI and the app.

Every write is a compare-and-set on the state's ``version``: a writer that read version ``v``
succeeds only if the stored version is still ``v``, so two writers never lose each other's
update (the loser re-reads and decides again). Readers on the request path never touch a store:
the app keeps an in-memory copy refreshed in the background.

Built in, chosen by URL: ``memory`` (this process), ``file:///path/state.json`` (processes
on one host; atomic replace and a lock file) and ``redis://…`` (a fleet).
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from .._errors import BlueGreenError
from .._rollout import MAX_VERSION, RolloutState

__all__ = ["InvalidState", "Lease", "LeaseLost", "StateStore", "StoreUnavailable",
           "StoreUnsupported", "StoredStates", "check_version", "invalid_of", "open_store",
           "parse_stored", "store_time"]


class StoreUnavailable(BlueGreenError):
    """The state store cannot be read or written now."""


class StoreUnsupported(StoreUnavailable):
    """The state store cannot be used here at all (a missing package, an unknown scheme): a
    configuration problem, not an outage."""


class LeaseLost(StoreUnavailable):
    """A write fenced by the leader lease (``compare_and_set(..., holder=...)``) was refused:
    the writer no longer holds the lease (it ran out while the writer was busy, and another
    watcher may be leading now). Nothing was written."""


class Lease(enum.IntEnum):
    """What :meth:`StateStore.acquire_lease` answers: false only when another holder has the
    lease; ``KEPT`` and ``TAKEN`` tell a holder whether its tenure went on.

    A watcher whose look outlived its lease (a slow metric source) may find the lease run out
    when it renews it. Its evidence still stands if nobody else led meanwhile (``KEPT``); if
    another watcher did (``TAKEN``), that one may have moved the rollout, so the evidence
    starts afresh, as at any takeover.
    """

    REFUSED = 0
    """Another holder has the lease."""
    KEPT = 1
    """The holder has the lease, and nobody else had it since the holder last did (renewed
    in time, or run out with nobody taking it meanwhile)."""
    TAKEN = 2
    """The holder has the lease anew: another holder had it since the holder last did, or
    the store cannot say that nobody did (the holder never had it, or gave it up)."""


class InvalidState(StoreUnavailable):
    """A rollout's stored value is not a valid state of it (``load()``). The value is left as
    it is; only :meth:`StateStore.replace_invalid` with :attr:`seen` overwrites it, and only
    while it is still that value.

    Attributes:
        rollout: The rollout whose value it is.
        why: What is wrong with it (no store address: for a history entry).
        seen: The stored value as the store found it (its text, or its bytes when they are not
            UTF-8; for a Redis key of another type, that type's name), for
            ``replace_invalid``.
        version: The ``version`` the value names, where it names a usable one, else ``None``:
            a replacement is written past it, so readers holding that version follow it.
    """

    def __init__(self, message: str, *, rollout: str, why: str, seen: str | bytes) -> None:
        super().__init__(message)
        self.rollout = rollout
        self.why = why
        self.seen = seen
        version = _decoded(seen).get("version")
        self.version = version if type(version) is int and 0 <= version < MAX_VERSION else None


def check_version(state: RolloutState) -> None:
    """Refuse to write a state past :data:`MAX_VERSION` (only a hand-edited version gets near):
    no reader would accept it, and Redis could no longer compare it exactly."""
    if state.version > MAX_VERSION:
        raise StoreUnavailable(
            f"rollout {state.rollout!r}: the stored version is at its limit ({MAX_VERSION}), "
            "so nothing more can be written over it; delete the rollout's stored value to "
            "start its state afresh")


def _decoded(seen: str | bytes) -> dict[str, Any]:
    try:
        decoded = json.loads(seen)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return {}
    return decoded if isinstance(decoded, dict) else {}


class StoredStates(dict[str, RolloutState]):
    """What ``load_all()`` read: the states by rollout, and in ``invalid`` the rollouts whose
    stored value could not be read as a state (name -> why). One bad value never hides the
    others: the watcher keeps the bad one's last weights and says why, and follows the rest."""

    def __init__(self, states: Mapping[str, RolloutState] | None = None,
                 invalid: Mapping[str, str] | None = None) -> None:
        super().__init__(states or {})
        self.invalid: dict[str, str] = dict(invalid or {})


def invalid_of(stored: Mapping[str, RolloutState]) -> dict[str, str]:
    """The unreadable values a ``load_all()`` answer names (none for a store that cannot
    tell: a plain mapping)."""
    return getattr(stored, "invalid", None) or {}


def parse_stored(name: str, data: Any) -> RolloutState:
    """A stored value of rollout ``name`` (JSON text, or its decoded object) as a state; raises
    ``ValueError`` for one that is not a valid state of that rollout, saying why."""
    try:
        decoded = json.loads(data) if isinstance(data, str) else data
        if not isinstance(decoded, Mapping):
            raise ValueError(f"not a JSON object (got {type(decoded).__name__})")
        state = RolloutState.from_dict(decoded)
    except RecursionError:  # nested past the parser's limit
        raise ValueError("nested too deeply to be a state") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
                         ) from None
    if state.rollout != name:
        raise ValueError(f"it is rollout {state.rollout!r}'s state")
    return state


def store_time(store: object) -> float:
    """Now, by the store's clock where it has one every writer shares (Redis), else this
    host's: step times and history written by watchers and operators on different hosts then
    agree however far their own clocks drift apart."""
    server_time = getattr(store, "server_time", None)
    if callable(server_time):
        try:
            return float(server_time())
        except StoreUnavailable:
            pass  # the read that follows reports it
    return time.time()


@runtime_checkable
class StateStore(Protocol):
    """What the watcher, the CLI and the app need from a state backend."""

    url: str

    def load(self, rollout: str) -> RolloutState | None:
        """The stored state of ``rollout``, ``None`` when it has none yet.

        Raises:
            StoreUnavailable: The store cannot be read.
        """
        ...

    def load_all(self) -> Mapping[str, RolloutState]:
        """Every stored state by rollout name (a :class:`StoredStates`, whose ``invalid``
        names the values that could not be read, where the store can tell).

        Raises:
            StoreUnavailable: The store cannot be read.
        """
        ...

    def compare_and_set(self, state: RolloutState, expected_version: int | None, *,
                        holder: str | None = None) -> bool:
        """Store ``state`` if the stored version is ``expected_version`` (``None``: absent).

        Args:
            state: The state to store.
            expected_version: The version the writer read (``None``: none stored).
            holder: Fence the write on the leader lease: store ``state`` only while ``holder``
                holds the lease, checked in the same atomic step as the version. A watcher's
                decisions pass it: a watcher whose look outlived its lease (a slow metric
                source, a long pause) and that another watcher took over must not write what
                it decided on its old evidence. ``None`` (an operator's action): not fenced.

        Returns:
            Whether the write happened (``False``: someone else wrote first; re-read).

        Raises:
            LeaseLost: ``holder`` does not hold the lease; nothing was written.
            StoreUnavailable: The store cannot be written.
        """
        ...

    def replace_invalid(self, state: RolloutState, seen: str | bytes) -> bool:
        """Store ``state`` over its rollout's invalid value, if the stored value is still
        ``seen`` (:attr:`InvalidState.seen`) and still not a valid state. A rollback uses it:
        getting every app back to blue never waits for someone to repair the stored value.

        Returns:
            Whether the write happened (``False``: the value changed since it was read).

        Raises:
            StoreUnavailable: The store cannot be written.
        """
        ...

    def acquire_lease(self, holder: str, ttl: float) -> Lease | bool:
        """Take or renew the leader lease for ``ttl`` seconds; true when ``holder`` has it.

        Only the holder of the lease decides; other watchers follow the stored states. A
        holder that stops renewing loses the lease when it expires.

        Returns:
            A :class:`Lease`: ``REFUSED`` (another holder has it), ``KEPT`` (nobody else had
            it since ``holder`` last did) or ``TAKEN`` (someone else may have). A plain
            ``bool`` is accepted from stores that cannot tell: the watcher then takes a lease
            that may have run out since its last renewal, by its own clock, as taken anew.

        Raises:
            StoreUnavailable: The store cannot be reached.
        """
        ...

    def release_lease(self, holder: str) -> None:
        """Give the lease up now if ``holder`` has it (a clean shutdown)."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...


def open_store(url: str) -> StateStore:
    """The store a config's ``state`` names: ``memory`` or ``file:///path``."""
    if url == "memory":
        from .memory import MemoryStore

        return MemoryStore()
    if url.startswith("file://"):
        from .file import FileStore

        return FileStore(url)
    if url.startswith(("redis://", "rediss://")):
        try:
            from .redis import RedisStore
        except ImportError as exc:
            raise StoreUnsupported(
                f"the redis store needs the {exc.name or 'redis'!r} package: "
                "pip install 'openai-bluegreen[redis]'") from None
        return RedisStore(url)
    raise StoreUnsupported(f"unknown state store {url!r} (use 'memory', 'file:///path' or "
                           "'redis://host:6379/0')")
