"""The ``redis://`` state store: states shared by a fleet through one Redis.

Layout (``openai-bluegreen`` is the namespace, ``?namespace=x`` in the URL changes it)::

    openai-bluegreen:state:<rollout>   JSON of RolloutState.to_dict()
    openai-bluegreen:rollouts          set of the rollout names stored (load_all reads it)
    openai-bluegreen:lease             the leader lease: the holder's id, with a PX expiry
    openai-bluegreen:lease:last        the holder that had the lease last (no expiry)
    openai-bluegreen:changes           pub/sub channel: the rollout name after each write

Every write is one Lua script (compare the stored ``version`` with the expected one, ``SET``,
``PUBLISH``), so two writers never lose each other's update; a watcher's write also checks, in
the same script, that the lease is still its own. Calls fail fast: short socket
timeouts and no client-side retries, so a dead Redis costs a caller at most ~1 s and raises
:class:`StoreUnavailable` naming the masked URL; redis-py reconnects by itself on the next call
once Redis is back. Followers :meth:`RedisStore.subscribe` to the channel to hear about writes
at once instead of at their next poll. The password never appears in ``url``, ``repr``, logs or
errors.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.retry import Retry

from .._config import mask_url
from .._rollout import REPAIR_HINT, RolloutState
from . import (
    InvalidState,
    Lease,
    LeaseLost,
    StoredStates,
    StoreUnavailable,
    check_version,
    parse_stored,
)

__all__ = ["RedisStore"]

logger = logging.getLogger("openai_bluegreen.stores.redis")

DEFAULT_NAMESPACE = "openai-bluegreen"
CONNECT_TIMEOUT = 0.5
SOCKET_TIMEOUT = 1.0

# KEYS: state key, rollout-name set, lease key. ARGV: expected version ('' = absent), JSON,
# rollout, channel, lease holder ('' = not fenced). Returns 1 written, 0 someone else wrote
# first, -1 the stored value is not a state, -2 the lease is not the holder's.
_CAS = """
if ARGV[5] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[5] then return -2 end
local current = redis.call('GET', KEYS[1])
if current then
  if ARGV[1] == '' then return 0 end
  local ok, doc = pcall(cjson.decode, current)
  if not ok or type(doc) ~= 'table' or type(doc['version']) ~= 'number' then return -1 end
  if doc['version'] ~= tonumber(ARGV[1]) then return 0 end
elseif ARGV[1] ~= '' then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[3])
return 1
"""

# KEYS: state key, rollout-name set. ARGV: the invalid value seen (its text, or for a key of
# another type _OTHER_TYPE + the type's name), JSON, rollout, channel. Returns 1 written, 0 the
# key holds something else now.
_REPLACE = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'string' then
  if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
elseif kind == 'none' or ARGV[1] ~= '\\0type:' .. kind then
  return 0
else
  redis.call('DEL', KEYS[1])
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[3])
return 1
"""
_OTHER_TYPE = "\0type:"

# KEYS: lease key, last-holder key. ARGV: holder, ttl in ms. Returns Lease: 0 another holder
# has it, 1 kept (nobody else had it since this holder did), 2 taken anew. The lease key
# vanishes when it runs out; the last-holder key remembers who had it. A holder refused records
# the holder it saw, so a tenure of a watcher too old to keep that key (a rolling upgrade) is
# still noticed when another watcher asked for the lease during it.
_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
local last = redis.call('GET', KEYS[2])
if current and current ~= ARGV[1] then
  if last ~= current then redis.call('SET', KEYS[2], current) end
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if current == ARGV[1] or last == ARGV[1] then
  if last ~= ARGV[1] then redis.call('SET', KEYS[2], ARGV[1]) end
  return 1
end
redis.call('SET', KEYS[2], ARGV[1])
return 2
"""

# KEYS: lease key, last-holder key. ARGV: holder. A holder that gives the lease up ends its
# tenure: its next lease is taken anew.
_RELEASE = """
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class _Subscription:
    """A daemon thread following the changes channel, reconnecting with backoff."""

    PING_AFTER = 5.0  # seconds of silence before checking the connection is alive
    PONG_WITHIN = 3.0  # a ping unanswered this long means a dead (half-open) connection
    MAX_BACKOFF = 5.0

    def __init__(self, store: RedisStore, on_change: Callable[[], None]) -> None:
        self._store = store
        self._on_change = on_change
        self._stop = threading.Event()
        self.subscribed = threading.Event()  # set while subscribed (tests, diagnostics)
        self._thread = threading.Thread(target=self._run, name="openai-bluegreen-redis-sub",
                                        daemon=True)
        self._thread.start()

    def _notify(self) -> None:
        try:
            self._on_change()
        except Exception:  # a faulty callback must not end the subscription
            logger.exception("openai-bluegreen: state change callback failed")

    def _run(self) -> None:
        backoff = 0.1
        ever_subscribed = False
        lost: str | None = None
        while not self._stop.is_set():
            pubsub: Any = self._store._client.pubsub()  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(self._store._channel)
                last_seen = time.monotonic()
                ping_sent: float | None = None
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    now = time.monotonic()
                    if message is None:
                        if ping_sent is not None and now - ping_sent > self.PONG_WITHIN:
                            raise redis.ConnectionError("no answer to a ping")
                        if ping_sent is None and now - last_seen > self.PING_AFTER:
                            pubsub.ping()
                            ping_sent = now
                        continue
                    last_seen, ping_sent = now, None
                    kind = message.get("type")
                    if kind == "subscribe":
                        # The first subscription, or redis-py or this loop reconnected and
                        # resubscribed: writes may have been missed meanwhile.
                        self.subscribed.set()
                        backoff = 0.1
                        if lost is not None:
                            logger.info("openai-bluegreen: following %s again", self._store.url)
                            lost = None
                        if ever_subscribed:
                            self._notify()
                        ever_subscribed = True
                    elif kind == "message":
                        self._notify()
            except RedisError as exc:
                self.subscribed.clear()
                reason = self._store._reason(exc)
                if lost is None:
                    logger.warning("openai-bluegreen: lost the change feed of %s (%s); "
                                   "reconnecting, polling meanwhile", self._store.url, reason)
                lost = reason
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.MAX_BACKOFF)
            except Exception:  # never let the thread die silently
                self.subscribed.clear()
                logger.exception("openai-bluegreen: change feed of %s failed; retrying",
                                 self._store.url)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.MAX_BACKOFF)
            finally:
                try:
                    pubsub.close()
                except Exception:
                    logger.debug("openai-bluegreen: closing the change feed failed",
                                 exc_info=True)
        self.subscribed.clear()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)


class RedisStore:
    """States in Redis, shared by every process that names the same URL.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]`` or ``rediss://`` (TLS), with an
            optional ``?namespace=name`` (default ``openai-bluegreen``).

    Raises:
        StoreUnavailable: The URL is not a Redis URL.
    """

    def __init__(self, url: str) -> None:
        self.url = mask_url(url)
        parts = urlsplit(url)
        self._password = unquote(parts.password) if parts.password else None
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise StoreUnavailable(f"Redis store URL must look like redis://host:6379/0 "
                                   f"(got {self.url!r})")
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number
            if parts.path.strip("/") and not parts.path.strip("/").isdigit():
                raise ValueError(f"the database must be a number (got {parts.path!r})")
        except ValueError as exc:
            raise StoreUnavailable(f"invalid Redis store URL {self.url!r}: "
                                   f"{self._scrub(str(exc))}") from None
        query = parse_qsl(parts.query, keep_blank_values=True)
        namespace = DEFAULT_NAMESPACE
        for key, value in query:
            if key == "namespace" and value:
                namespace = value
        rest = urlencode([(k, v) for k, v in query if k != "namespace"])
        try:
            self._client: redis.Redis = redis.Redis.from_url(
                urlunsplit(parts._replace(query=rest)),
                decode_responses=True,
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=SOCKET_TIMEOUT,
                retry=Retry(NoBackoff(), 0),  # fail fast; the callers retry at their pace
                health_check_interval=0,
                client_name="openai-bluegreen",
            )
        except (ValueError, TypeError) as exc:
            raise StoreUnavailable(f"invalid Redis store URL {self.url!r}: "
                                   f"{self._scrub(str(exc))}") from None
        self._prefix = namespace
        self._lease_key = f"{namespace}:lease"
        self._last_holder_key = f"{namespace}:lease:last"
        self._index_key = f"{namespace}:rollouts"
        self._channel = f"{namespace}:changes"
        self._cas = self._client.register_script(_CAS)
        self._replace = self._client.register_script(_REPLACE)
        self._acquire = self._client.register_script(_ACQUIRE)
        self._release = self._client.register_script(_RELEASE)
        self._lock = threading.Lock()
        self._subscriptions: list[_Subscription] = []

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r})"

    # -- errors --------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        if self._password:
            text = text.replace(self._password, "***")
        return text

    def _reason(self, exc: BaseException) -> str:
        return self._scrub(str(exc).strip().rstrip(".")) or type(exc).__name__

    def _unavailable(self, exc: RedisError, doing: str) -> StoreUnavailable:
        reason = self._reason(exc)
        if isinstance(exc, AuthenticationError):
            return StoreUnavailable(
                f"Redis at {self.url} refused to authenticate while {doing}: {reason}; check "
                "the password in the URL (redis://:PASSWORD@host:port/db)")
        if isinstance(exc, ResponseError):
            return StoreUnavailable(f"Redis at {self.url} failed while {doing}: {reason}")
        return StoreUnavailable(
            f"Redis unreachable at {self.url} while {doing}: {reason}; check the server and "
            "the URL's host/port/password")

    def _key(self, rollout: str) -> str:
        return f"{self._prefix}:state:{rollout}"

    def _invalid(self, rollout: str, why: object) -> str:
        return (f"Redis at {self.url}: key {self._key(rollout)!r} is not a valid rollout state "
                f"({why}); it is left untouched: {REPAIR_HINT}")

    def _other_type(self, rollout: str, kind: str) -> InvalidState:
        why = f"it holds a {kind}, not a string"
        return InvalidState(self._invalid(rollout, why), rollout=rollout, why=why,
                            seen=_OTHER_TYPE + kind)

    def _state_of(self, rollout: str, raw: bytes) -> RolloutState:
        """A stored value, read as bytes (a value that is not UTF-8 must not break the read
        of every other rollout), as a state; raises :class:`InvalidState`."""
        try:
            return parse_stored(rollout, raw.decode("utf-8"))
        except UnicodeDecodeError:
            why = "not UTF-8 text"
        except ValueError as exc:
            why = str(exc)
        try:
            seen: str | bytes = raw.decode("utf-8")
        except UnicodeDecodeError:
            seen = raw
        raise InvalidState(self._invalid(rollout, why), rollout=rollout, why=why, seen=seen)

    def _raw(self, *command: Any) -> Any:
        """A command whose answer is not decoded: stored values are read as bytes."""
        return self._client.execute_command(  # type: ignore[no-untyped-call]
            *command, NEVER_DECODE=[])

    # -- StateStore ----------------------------------------------------------------------
    def load(self, rollout: str) -> RolloutState | None:
        key = self._key(rollout)
        try:
            raw = cast("bytes | None", self._raw("GET", key))
        except ResponseError as exc:
            if not str(exc).startswith("WRONGTYPE"):
                raise self._unavailable(exc, f"reading rollout {rollout!r}") from None
            try:
                kind = cast("str", self._client.type(key))
            except RedisError as again:
                raise self._unavailable(again, f"reading rollout {rollout!r}") from None
            raise self._other_type(rollout, kind) from None
        except RedisError as exc:
            raise self._unavailable(exc, f"reading rollout {rollout!r}") from None
        return None if raw is None else self._state_of(rollout, raw)

    def load_all(self) -> StoredStates:
        try:
            members = cast("set[bytes]", self._raw("SMEMBERS", self._index_key))
            # A name that is not UTF-8 was not written by us and names no configured rollout.
            names = sorted(m.decode("utf-8") for m in members if _is_utf8(m))
            raws = (cast("list[bytes | None]", self._raw("MGET", *[self._key(n) for n in names]))
                    if names else [])
            # MGET answers nil for a key that holds another type than a string, as for a
            # missing one: ask those which they are (rare: only for keys that read as nil).
            absent = [n for n, raw in zip(names, raws, strict=True) if raw is None]
            types = ([cast("str", self._client.type(self._key(n))) for n in absent]
                     if absent else [])
        except RedisError as exc:
            raise self._unavailable(exc, "reading the rollout states") from None
        out = StoredStates()
        for name, kind in zip(absent, types, strict=True):
            if kind != "none":
                out.invalid[name] = str(self._other_type(name, kind))
        for name, raw in zip(names, raws, strict=True):
            if raw is None:
                continue
            try:
                out[name] = self._state_of(name, raw)
            except InvalidState as exc:
                out.invalid[name] = str(exc)
        return out

    def compare_and_set(self, state: RolloutState, expected_version: int | None, *,
                        holder: str | None = None) -> bool:
        check_version(state)
        data = json.dumps(state.to_dict(), separators=(",", ":"), sort_keys=True)
        try:
            result = self._cas(keys=[self._key(state.rollout), self._index_key, self._lease_key],
                               args=["" if expected_version is None else str(expected_version),
                                     data, state.rollout, self._channel, holder or ""])
        except RedisError as exc:
            raise self._unavailable(exc, f"writing rollout {state.rollout!r}") from None
        if int(result) == -2:
            raise LeaseLost(f"Redis at {self.url}: the leader lease is no longer held by "
                            f"{holder!r}; rollout {state.rollout!r} not written")
        if int(result) < 0:
            raise StoreUnavailable(
                f"Redis at {self.url}: key {self._key(state.rollout)!r} is not a valid rollout "
                f"state; it is left untouched: {REPAIR_HINT}")
        return int(result) == 1

    def replace_invalid(self, state: RolloutState, seen: str | bytes) -> bool:
        check_version(state)
        try:
            self.load(state.rollout)
        except InvalidState:
            pass  # still a bad value: the script below checks it is still this one
        else:
            return False  # absent or a valid state now: not ours to replace
        data = json.dumps(state.to_dict(), separators=(",", ":"), sort_keys=True)
        try:
            result = self._replace(keys=[self._key(state.rollout), self._index_key],
                                   args=[seen, data, state.rollout, self._channel])
        except RedisError as exc:
            raise self._unavailable(exc, f"writing rollout {state.rollout!r}") from None
        return int(result) == 1

    def server_time(self) -> float:
        """Redis's clock (seconds since the epoch): the one clock a fleet shares."""
        try:
            seconds, micros = self._client.time()
        except RedisError as exc:
            raise self._unavailable(exc, "reading its clock") from None
        return seconds + micros / 1e6

    def acquire_lease(self, holder: str, ttl: float) -> Lease:
        try:
            result = self._acquire(keys=[self._lease_key, self._last_holder_key],
                                   args=[holder, max(1, round(ttl * 1000))])
        except RedisError as exc:
            raise self._unavailable(exc, "taking the leader lease") from None
        return Lease(int(result))

    def release_lease(self, holder: str) -> None:
        try:
            self._release(keys=[self._lease_key, self._last_holder_key], args=[holder])
        except RedisError as exc:
            raise self._unavailable(exc, "releasing the leader lease") from None

    # -- followers -----------------------------------------------------------------------
    def subscribe(self, on_change: Callable[[], None]) -> Callable[[], None]:
        """Call ``on_change()`` (in a daemon thread) after every write by anyone.

        Also called once after each reconnect, since writes may have been missed while
        disconnected; not called for the initial subscription. The callback should be quick
        (e.g. re-read the store or set an event); its exceptions are logged and ignored. Delivery
        is best effort (Redis pub/sub keeps no backlog): keep polling as a safety net.

        Returns:
            A function that stops the subscription (idempotent; waits up to 2 s).
        """
        subscription = _Subscription(self, on_change)
        with self._lock:
            self._subscriptions.append(subscription)

        def unsubscribe() -> None:
            with self._lock:
                if subscription in self._subscriptions:
                    self._subscriptions.remove(subscription)
            subscription.stop()

        return unsubscribe

    def close(self) -> None:
        """Stop every subscription and close the connections."""
        with self._lock:
            subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            subscription.stop()
        try:
            self._client.close()
        except RedisError:
            logger.debug("openai-bluegreen: closing %s failed", self.url, exc_info=True)

    def _wait_subscribed(self, timeout: float) -> bool:
        """Whether every subscription is listening within ``timeout`` (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            subscriptions = list(self._subscriptions)
        return all(s.subscribed.wait(max(0.0, deadline - time.monotonic()))
                   for s in subscriptions)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
