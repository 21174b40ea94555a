"""The redis:// store against a real redis-server: atomic writes, the lease, outages, pub/sub.

The protocol contract itself runs in ``test_stores.py`` (its ``store`` fixture includes redis).
"""

from __future__ import annotations

import json
import multiprocessing
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from openai_bluegreen import load_config
from openai_bluegreen._control import apply_action
from openai_bluegreen._rollout import Action, Phase, RolloutState, initial_state
from openai_bluegreen._watcher import Watcher
from openai_bluegreen.stores import InvalidState, Lease, StoreUnavailable, invalid_of, open_store
from openai_bluegreen.stores.redis import RedisStore
from tests.services import RedisServer, redis_server

CONFIG = {"rollouts": [{"name": "chat", "match": {"model": "m"}, "blue": {"model": "a"},
                        "green": {"model": "b"},
                        "schedule": {"steps": [10, 50], "min_step_duration": 1}}]}
PASSWORD = "pa55-w0rd-never-shown"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as running:
        yield running


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path, password=PASSWORD) as running:
        yield running


def _open(url: str) -> RedisStore:
    store = open_store(url)
    assert isinstance(store, RedisStore)
    return store


def _bump(url: str, times: int) -> None:
    rollout = load_config(CONFIG).rollouts[0]
    store = open_store(url)
    try:
        for i in range(times):
            apply_action(store, rollout, Action.SET_WEIGHT, weight=float(i % 100), actor="w",
                         reason="race")
    finally:
        store.close()


def test_concurrent_processes_lose_no_update(server: RedisServer) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_bump, args=(server.url, 40)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    store = _open(server.url)
    state = store.load("chat")
    store.close()
    assert state is not None and state.version == 160
    assert len(state.history) == 160


def test_the_lease_has_one_holder_expires_renews_and_hands_over(server: RedisServer) -> None:
    a, b = _open(server.url), _open(server.url)
    try:
        assert a.acquire_lease("A", ttl=0.4)
        assert not b.acquire_lease("B", ttl=0.4)
        time.sleep(0.6)  # A stopped renewing: the lease expired
        assert b.acquire_lease("B", ttl=0.4)
        assert not a.acquire_lease("A", ttl=0.4)
        b.release_lease("A")  # not A's: nothing happens
        assert not a.acquire_lease("A", ttl=0.4)
        b.release_lease("B")  # a clean handover: at once, not after the ttl
        assert a.acquire_lease("A", ttl=0.4)
        for _ in range(4):  # renewals keep it past its first ttl
            time.sleep(0.2)
            assert a.acquire_lease("A", ttl=0.4)
            assert not b.acquire_lease("B", ttl=0.4)
    finally:
        a.close()
        b.close()


def test_a_lease_an_older_watcher_held_is_noticed_by_a_holder_it_refused(
        server: RedisServer) -> None:
    """During a rolling upgrade a watcher of an older release takes the lease without
    recording itself as its last holder. A newer watcher it refused meanwhile records it, so
    when the lease comes back to the newer one, it is taken anew (the evidence starts
    afresh), not its old tenure going on."""
    import redis

    store, client = _open(server.url), redis.Redis.from_url(server.url)
    try:
        assert store.acquire_lease("A", 60.0) is Lease.TAKEN
        client.delete("openai-bluegreen:lease")  # A's ran out; the old release takes it:
        client.set("openai-bluegreen:lease", "OLD", px=60_000)
        assert store.acquire_lease("A", 60.0) is Lease.REFUSED
        client.delete("openai-bluegreen:lease")  # its lease ran out in turn
        assert store.acquire_lease("A", 60.0) is Lease.TAKEN
        assert store.acquire_lease("A", 60.0) is Lease.KEPT
    finally:
        store.close()
        client.close()


def test_an_outage_fails_fast_without_the_password_and_heals_by_itself(
        secured: RedisServer) -> None:
    store = _open(secured.url)
    rollout = load_config(CONFIG).rollouts[0]
    assert PASSWORD not in store.url and PASSWORD not in repr(store)
    assert store.url == f"redis://:***@127.0.0.1:{secured.port}/0"
    written = apply_action(store, rollout, Action.PAUSE, actor="a", reason="before")
    secured.stop()
    calls = {
        "load": lambda: store.load("chat"),
        "load_all": store.load_all,
        "compare_and_set": lambda: store.compare_and_set(written, written.version),
        "acquire_lease": lambda: store.acquire_lease("A", 5.0),
        "release_lease": lambda: store.release_lease("A"),
    }
    for name, call in calls.items():
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            call()
        elapsed = time.monotonic() - started
        assert elapsed < 1.5, (name, elapsed)
        text = str(caught.value)
        assert PASSWORD not in text and PASSWORD not in repr(caught.value)
        assert store.url in text and "unreachable" in text and "check the server" in text
        cause = caught.value.__cause__ or caught.value.__context__
        assert cause is None or PASSWORD not in str(cause)
    secured.start()  # same port, empty: the store reconnects (and reloads its scripts)
    assert store.load("chat") is None
    assert store.compare_and_set(written, None)
    assert store.load("chat") == written
    assert store.acquire_lease("A", 5.0)
    store.close()


def test_a_hung_redis_times_out_fast_and_recovers(secured: RedisServer) -> None:
    store = _open(secured.url)
    assert store.load("chat") is None
    assert secured.proc is not None
    secured.proc.send_signal(signal.SIGSTOP)  # alive but not answering (like a partition)
    try:
        for call in (lambda: store.load("chat"), lambda: store.acquire_lease("A", 5.0)):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="unreachable") as caught:
                call()
            assert time.monotonic() - started < 1.5
            assert PASSWORD not in str(caught.value)
    finally:
        secured.proc.send_signal(signal.SIGCONT)
    assert store.load("chat") is None
    store.close()


def test_a_wrong_password_is_reported_without_it(secured: RedisServer) -> None:
    wrong = secured.url.replace(PASSWORD, "not-" + PASSWORD)
    store = _open(wrong)
    with pytest.raises(StoreUnavailable, match="refused to authenticate") as caught:
        store.load("chat")
    assert PASSWORD not in str(caught.value)
    store.close()
    anonymous = _open(f"redis://127.0.0.1:{secured.port}/0")
    with pytest.raises(StoreUnavailable, match="password"):
        anonymous.load_all()
    anonymous.close()


def test_a_corrupt_stored_value_is_reported_and_left_untouched(server: RedisServer) -> None:
    import redis

    raw = redis.Redis.from_url(server.url)
    raw.set("openai-bluegreen:state:chat", "{not json")
    raw.sadd("openai-bluegreen:rollouts", "chat")
    store = _open(server.url)
    rollout = load_config(CONFIG).rollouts[0]
    with pytest.raises(StoreUnavailable, match=r"not a valid rollout state.*left untouched"):
        store.load("chat")
    assert set(store.load_all().invalid) == {"chat"}  # reported, not raised: see below
    with pytest.raises(StoreUnavailable, match="not a valid rollout state"):
        store.compare_and_set(initial_state(rollout), 0)
    assert raw.get("openai-bluegreen:state:chat") == b"{not json"
    raw.close()
    store.close()


def test_one_bad_stored_value_never_hides_the_others(server: RedisServer) -> None:
    import redis

    raw = redis.Redis.from_url(server.url)
    store = _open(server.url)
    good = RolloutState("good", Phase.PROGRESSING, 0, 25.0, version=3)
    assert store.compare_and_set(good, None)
    valid = json.dumps(good.to_dict())
    bad = {"garbage": "{not json",
           "too-much": valid.replace('"weight": 25.0', '"weight": 150.0'),
           "half-version": valid.replace('"version": 3', '"version": 1.5'),
           "elsewhere": valid}  # another rollout's state under this one's key
    for name, value in bad.items():
        raw.set(f"openai-bluegreen:state:{name}", value.replace('"good"', f'"{name}"')
                if name != "elsewhere" else value)
        raw.sadd("openai-bluegreen:rollouts", name)
    history = json.loads(valid)
    history["history"] = [{"at": "nan", "action": "start", "actor": "w", "reason": "",
                           "phase": "progressing", "step": 0, "weight": 10.0}]
    bad["deep"] = "[" * 100_000
    bad["listed"] = "[1, 2]"
    bad["bad-history"] = json.dumps(history)
    for name in ("deep", "listed", "bad-history"):
        raw.set(f"openai-bluegreen:state:{name}", bad[name].replace('"good"', f'"{name}"'))
        raw.sadd("openai-bluegreen:rollouts", name)
    raw.delete("openai-bluegreen:state:hashed")
    raw.hset("openai-bluegreen:state:hashed", "weight", "25")
    raw.sadd("openai-bluegreen:rollouts", "hashed")
    stored = store.load_all()
    assert dict(stored) == {"good": good}
    assert set(stored.invalid) == {*bad, "hashed"}
    assert "weight must be a finite number from 0 to 100 (got 150.0)" in stored.invalid["too-much"]
    assert "version must be an integer from 0 to 9007199254740991 (got 1.5)" in \
        stored.invalid["half-version"]
    assert "it is rollout 'good'" in stored.invalid["elsewhere"]
    assert "it holds a hash, not a string" in stored.invalid["hashed"]
    assert "nested too deeply" in stored.invalid["deep"]
    assert "not a JSON object (got list)" in stored.invalid["listed"]
    assert "history[0]: at must be a finite number (got 'nan')" in stored.invalid["bad-history"]
    assert all("openai-bluegreen:state:" in why and "fix or delete it" in why
               for why in stored.invalid.values())
    raw.close()
    store.close()


def test_namespaces_keep_stores_apart(server: RedisServer) -> None:
    one, two = _open(server.url + "?namespace=one"), _open(server.url + "?namespace=two")
    assert one.compare_and_set(RolloutState("chat"), None)
    assert two.load("chat") is None and two.load_all() == {}
    assert one.acquire_lease("A", 5.0) and two.acquire_lease("B", 5.0)
    one.close()
    two.close()


def test_bad_urls_are_refused_without_the_password() -> None:
    with pytest.raises(StoreUnavailable, match="redis://host") as caught:
        RedisStore(f"redis://:{PASSWORD}@")
    assert PASSWORD not in str(caught.value)
    with pytest.raises(StoreUnavailable, match="invalid Redis store URL") as caught:
        RedisStore(f"redis://:{PASSWORD}@127.0.0.1:6379/zero")
    assert PASSWORD not in str(caught.value)


class _Changes:
    def __init__(self) -> None:
        self.count = 0
        self.event = threading.Event()
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.count += 1
        self.event.set()

    def wait(self, timeout: float) -> bool:
        got = self.event.wait(timeout)
        self.event.clear()
        return got


def test_followers_hear_writes_at_once_and_after_a_restart(server: RedisServer) -> None:
    follower, writer = _open(server.url), _open(server.url)
    rollout = load_config(CONFIG).rollouts[0]
    changes = _Changes()
    unsubscribe = follower.subscribe(changes)
    assert follower._wait_subscribed(5.0)
    assert changes.count == 0  # subscribing is not a change
    for weight in (5.0, 7.0, 9.0):
        started = time.monotonic()
        apply_action(writer, rollout, Action.SET_WEIGHT, weight=weight, actor="op", reason="")
        assert changes.wait(0.5), weight
        assert time.monotonic() - started < 0.5
    assert changes.count == 3
    server.stop()
    time.sleep(0.5)
    server.start()  # writes may have been missed meanwhile: one call after reconnecting
    assert changes.wait(5.0)
    assert follower._wait_subscribed(1.0)
    apply_action(writer, rollout, Action.SET_WEIGHT, weight=11.0, actor="op", reason="")
    assert changes.wait(0.5)
    loaded = follower.load("chat")
    assert loaded is not None and loaded.weight == 11.0
    unsubscribe()
    unsubscribe()  # idempotent
    before = changes.count
    apply_action(writer, rollout, Action.SET_WEIGHT, weight=12.0, actor="op", reason="")
    time.sleep(0.3)
    assert changes.count == before
    writer.close()
    follower.close()


def test_a_failing_callback_does_not_end_the_subscription(server: RedisServer) -> None:
    follower, writer = _open(server.url), _open(server.url)
    calls: list[int] = []
    done = threading.Event()

    def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        done.set()

    follower.subscribe(flaky)
    assert follower._wait_subscribed(5.0)
    assert writer.compare_and_set(RolloutState("chat"), None)
    assert writer.compare_and_set(RolloutState("chat", version=1), 0)
    assert done.wait(1.0)
    follower.close()  # stops the subscription too
    writer.close()


def test_set_weight_that_cannot_be_written_changes_nothing(server: RedisServer) -> None:
    import openai_bluegreen

    config = {**CONFIG, "state": server.url}
    config["rollouts"] = [{**CONFIG["rollouts"][0],  # type: ignore[index]
                           "schedule": {"steps": [10, 50], "min_step_duration": "1h"},
                           "analysis": {"interval": "0.2s"}}]
    openai_bluegreen.install(config)
    try:
        deadline = time.monotonic() + 10
        while openai_bluegreen.status()["rollouts"][0]["weight"] != 10.0:
            assert time.monotonic() < deadline, openai_bluegreen.status()
            time.sleep(0.05)
        server.stop()
        with pytest.raises(StoreUnavailable):
            openai_bluegreen.set_weight("chat", 90, reason="operator")
        # Not written, so not routed: the app never sends calls at a weight the store, the CLI
        # and the watcher do not know (it used to, until the watcher next moved the weight).
        assert openai_bluegreen.status()["rollouts"][0]["weight"] == 10.0
        server.start()
        openai_bluegreen.set_weight("chat", 30, reason="operator, again")
        assert openai_bluegreen.status()["rollouts"][0]["weight"] == 30.0  # at once
        stored = open_store(server.url).load("chat")
        assert stored is not None and (stored.phase.value, stored.weight) == ("paused", 30.0)
    finally:
        openai_bluegreen.uninstall()


class _Quiet:
    """A metric source with no calls yet: the watcher starts rollouts and holds them."""

    def snapshot(self, now: float) -> Any:
        from openai_bluegreen.sources import Snapshot

        return Snapshot(now, {})

    def close(self) -> None:
        return None


def _two_rollouts(url: str) -> tuple[Any, Watcher, dict[str, float]]:
    config = load_config({"state": url, "rollouts": [
        {**CONFIG["rollouts"][0], "name": name, "match": {"model": f"m-{name}"}}
        for name in ("a", "b")]})
    weights: dict[str, float] = {}
    watcher = Watcher(config, open_store(url), _Quiet(), apply_weight=weights.__setitem__)
    watcher.look()
    assert weights == {"a": 10.0, "b": 10.0}
    return config, watcher, weights


def test_a_bad_value_for_one_rollout_leaves_the_others_following(server: RedisServer) -> None:
    import redis

    config, watcher, weights = _two_rollouts(server.url)
    raw = redis.Redis.from_url(server.url)
    raw.set("openai-bluegreen:state:a", "{not json")
    operator = open_store(server.url)
    apply_action(operator, config.rollouts[1], Action.ROLLBACK, actor="oncall", reason="bad")
    watcher.sync()
    assert weights == {"a": 10.0, "b": 0.0}  # b's rollback lands; a keeps its last weight
    assert watcher.problem is not None
    assert "'openai-bluegreen:state:a' is not a valid rollout state" in watcher.problem
    assert raw.get("openai-bluegreen:state:a") == b"{not json"  # left for a person to fix
    watcher.stop()
    _close(operator, watcher.store)
    raw.close()


def test_a_rollback_replaces_a_bad_value_and_every_app_follows(server: RedisServer) -> None:
    """Getting the apps back to blue must not wait for someone to repair the key: a rollback
    writes over a value that is not a state (a string or a key of another type), past the
    version it names, only while the key still holds what was read."""
    import redis

    config, watcher, weights = _two_rollouts(server.url)
    operator = open_store(server.url)
    raw = redis.Redis.from_url(server.url)
    key = "openai-bluegreen:state:a"
    data = json.loads(raw.get(key) or b"")
    raw.set(key, json.dumps({**data, "weight": 150.0, "version": 7}))
    watcher.sync()
    assert weights["a"] == 10.0 and watcher.problem is not None  # kept, and said why
    with pytest.raises(InvalidState) as caught:
        apply_action(operator, config.rollouts[0], Action.PAUSE, actor="oncall", reason="x")
    assert "or roll the rollout back (which replaces it)" in str(caught.value)
    seen = caught.value.seen
    raw.set(key, raw.get(key) + b" ")  # changed since it was read: nothing is overwritten
    assert not operator.replace_invalid(RolloutState("a", version=99), seen)
    assert raw.get(key) == (seen + " ").encode()
    state = apply_action(operator, config.rollouts[0], Action.ROLLBACK, actor="oncall",
                         reason="incident")
    assert (state.phase, state.weight, state.version) == (Phase.ROLLED_BACK, 0.0, 8)
    assert state.history[-1].reason.startswith("incident (replaced a stored value")
    watcher.sync()
    assert weights == {"a": 0.0, "b": 10.0} and watcher.problem is None
    assert operator.load("a") == state

    raw.delete(key)
    raw.hset(key, "weight", "25")  # a key of another type
    with pytest.raises(InvalidState, match="it holds a hash, not a string"):
        operator.load("a")
    assert not operator.replace_invalid(RolloutState("a", version=1), "\0type:list")
    assert raw.type(key) == b"hash"
    state = apply_action(operator, config.rollouts[0], Action.ROLLBACK, actor="oncall",
                         reason="incident")
    assert (state.phase, state.version) == (Phase.ROLLED_BACK, 1)
    assert operator.load("a") == state
    # A valid state is never replaced, even given its exact stored text.
    assert not operator.replace_invalid(replace(state, version=0), raw.get(key).decode())
    assert operator.load("a") == state
    watcher.stop()
    _close(operator, watcher.store)
    raw.close()


def test_bytes_that_are_not_text_are_an_invalid_state_not_a_crash(server: RedisServer) -> None:
    """A key holding bytes that are not UTF-8 raised UnicodeDecodeError out of the Redis client
    (neither StoreUnavailable nor InvalidState): the watcher's sync and the CLI's rollback and
    status crashed. It is now one more invalid value, which a rollback replaces."""
    import redis

    config, watcher, weights = _two_rollouts(server.url)
    operator = open_store(server.url)
    raw = redis.Redis.from_url(server.url)
    raw.set("openai-bluegreen:state:a", b"\xff\xfe{not text")
    raw.sadd("openai-bluegreen:rollouts", b"\xff-not-a-name")
    stored = operator.load_all()
    assert set(stored) == {"b"} and "not UTF-8 text" in invalid_of(stored)["a"]
    with pytest.raises(InvalidState, match="not UTF-8 text"):
        operator.load("a")
    watcher.sync()
    assert weights == {"a": 10.0, "b": 10.0} and watcher.problem is not None
    state = apply_action(operator, config.rollouts[0], Action.ROLLBACK, actor="oncall",
                         reason="incident")
    assert state.version == 1 and operator.load("a") == state
    watcher.sync()
    assert weights == {"a": 0.0, "b": 10.0}
    watcher.stop()
    _close(operator, watcher.store)
    raw.close()


def test_a_version_past_what_lua_compares_exactly_is_invalid(server: RedisServer) -> None:
    """The compare-and-set script compares versions as doubles: above 2**53 a stale writer's
    write would land. Such a version is refused on read, and a rollback does not adopt it."""
    import redis

    config, watcher, _ = _two_rollouts(server.url)
    operator = open_store(server.url)
    raw = redis.Redis.from_url(server.url)
    data = json.loads(raw.get("openai-bluegreen:state:a") or b"")
    raw.set("openai-bluegreen:state:a", json.dumps({**data, "version": 2**53}))
    with pytest.raises(InvalidState, match="version must be an integer from 0 to"):
        operator.load("a")
    state = apply_action(operator, config.rollouts[0], Action.ROLLBACK, actor="oncall",
                         reason="incident")
    assert state.version == 1
    stale = operator.load("a")
    assert stale is not None
    assert operator.compare_and_set(replace(stale, version=2), 1)
    assert not operator.compare_and_set(replace(stale, version=2), 1)  # stale: refused
    watcher.stop()
    _close(operator, watcher.store)
    raw.close()


def test_a_store_gone_back_to_an_older_state_never_undoes_a_rollback(
        server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    import redis

    config, watcher, weights = _two_rollouts(server.url)
    raw = redis.Redis.from_url(server.url)
    older = raw.get("openai-bluegreen:state:a")  # progressing at 10%: say, a snapshot
    operator = open_store(server.url)
    apply_action(operator, config.rollouts[0], Action.ROLLBACK, actor="oncall", reason="bad")
    watcher.sync()
    assert weights["a"] == 0.0
    raw.set("openai-bluegreen:state:a", older)  # Redis restarted from that older snapshot
    watcher.sync()
    assert weights["a"] == 0.0
    assert "went back to an older state of rollout a" in caplog.text
    watcher.look()  # the leader writes the newer state back
    restored = operator.load("a")
    assert restored is not None and restored.phase is Phase.ROLLED_BACK
    assert [h.action for h in restored.history][-1] == "rollback"
    watcher.stop()
    _close(operator, watcher.store)
    raw.close()


def test_an_operator_starting_afresh_after_deleting_the_key_is_followed(
        server: RedisServer) -> None:
    """A lower version is not always an older snapshot: an operator who deleted the key (as
    the docs say for an unreadable one) and acted writes version 1, later than what the
    watcher holds. That is followed, not overwritten."""
    import redis

    config, watcher, weights = _two_rollouts(server.url)
    operator = open_store(server.url)
    for weight in (20.0, 21.0, 22.0):
        apply_action(operator, config.rollouts[0], Action.SET_WEIGHT, weight=weight,
                     actor="oncall", reason="tune")
    watcher.sync()
    assert weights["a"] == 22.0
    raw = redis.Redis.from_url(server.url)
    raw.delete("openai-bluegreen:state:a")
    fresh = apply_action(operator, config.rollouts[0], Action.ROLLBACK, actor="oncall",
                         reason="incident")
    assert fresh.version == 1
    watcher.sync()
    assert weights["a"] == 0.0
    watcher.look()
    stored = operator.load("a")
    assert stored is not None and stored.phase is Phase.ROLLED_BACK and stored.version == 1
    watcher.stop()
    _close(operator, watcher.store)
    raw.close()


def test_no_watcher_decides_on_a_state_that_is_not_this_rollouts(server: RedisServer) -> None:
    import redis

    _, watcher, weights = _two_rollouts(server.url)
    raw = redis.Redis.from_url(server.url)
    data = json.loads(raw.get("openai-bluegreen:state:a") or b"")
    data.update(step=5, weight=50.0, version=data["version"] + 1,  # past its 2-step schedule
                step_started_at=data["updated_at"] - 3600)  # and long past any deadline
    raw.set("openai-bluegreen:state:a", json.dumps(data))
    for _ in range(3):
        watcher.look()
    assert weights["a"] == 10.0  # the weight it last read
    assert watcher.problem is not None and "at step 6, but the schedule has 2" in watcher.problem
    watcher.store.release_lease(watcher.holder)
    fresh = Watcher(watcher.config, open_store(server.url), _Quiet())  # a new leader, no past
    for _ in range(3):
        fresh.look()
    assert fresh.leader
    assert json.loads(raw.get("openai-bluegreen:state:a") or b"") == data  # left for a person
    fresh.stop()
    fresh.store.close()
    watcher.stop()
    _close(watcher.store)
    raw.close()


def _close(*stores: Any) -> None:
    for store in stores:
        store.close()


_SKEWED_WATCHER = """
import json, sys, time
real = time.time
time.time = lambda: real() + 900  # this host's clock is 15 minutes ahead, from the start
from openai_bluegreen import load_config
from openai_bluegreen._watcher import Watcher
from openai_bluegreen.sources import EnvStats, RolloutStats, Snapshot
from openai_bluegreen.stores import open_store

class Busy:
    calls = 10_000
    def snapshot(self, now):
        Busy.calls += 500
        healthy = EnvStats(Busy.calls, 0)
        return Snapshot(now, {"chat": RolloutStats(healthy, healthy)})
    def close(self):
        pass

watcher = Watcher(load_config(json.loads(sys.argv[1])), open_store(sys.argv[2]), Busy())
for _ in range(3):
    watcher.look()
state = watcher.states()["chat"]
print(json.dumps({"leader": watcher.leader, "weight": state.weight,
                  "at": state.history[-1].at, "real": real()}))
"""


def test_step_timing_follows_the_stores_clock_not_the_watchers(server: RedisServer) -> None:
    """A watcher taking over on a host whose clock is 15 minutes ahead must not see a
    10-minute step as over: every writer times steps by Redis's clock."""
    import subprocess
    import sys

    from openai_bluegreen.sources import EnvStats, RolloutStats, Snapshot

    class Busy:
        def snapshot(self, now: float) -> Snapshot:
            return Snapshot(now, {"chat": RolloutStats(EnvStats(100, 0), EnvStats(100, 0))})

        def close(self) -> None:
            return None

    raw = {"state": server.url, "rollouts": [{
        **CONFIG["rollouts"][0],
        "schedule": {"steps": [10, 50], "min_step_duration": "10m", "min_requests": 5},
        "analysis": {"checks": [{"signal": "error_rate", "max": 0.2}]}}]}
    first = Watcher(load_config(raw), open_store(server.url), Busy())
    first.look()
    assert first.states()["chat"].weight == 10.0
    first.store.release_lease(first.holder)  # it hands over to a watcher on another host
    done = subprocess.run([sys.executable, "-c", _SKEWED_WATCHER, json.dumps(raw), server.url],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["leader"]  # it decided: holding is its decision
    assert seen["weight"] == 10.0, seen  # the step is seconds old, not 15 minutes
    assert abs(seen["at"] - seen["real"]) < 60
    _close(first.store)


_BEHIND_WATCHER = """
import json, sys, time
real = time.time
time.time = lambda: real() - 900  # this host's clock is 15 minutes behind Redis's
from opentelemetry.sdk.metrics import MeterProvider
from openai_bluegreen import load_config
from openai_bluegreen._watcher import Watcher
from openai_bluegreen.sources.local import LocalSource
from openai_bluegreen.stores import open_store

source = LocalSource()  # this app's own calls: none yet, it has just started
provider = MeterProvider(metric_readers=[source])
provider.get_meter("app").create_counter("app.started").add(1)  # an app's metrics exist
watcher = Watcher(load_config(json.loads(sys.argv[1])), open_store(sys.argv[2]), source)
decisions = [d for _ in range(2) for d in watcher.look()]
print(json.dumps({"leader": watcher.leader, "phase": watcher.states()["chat"].phase.value,
                  "reasons": [r for d in decisions for r in d.reasons]}))
"""


def test_a_restarted_app_on_a_host_behind_redis_gets_the_deadlines_allowance(
        server: RedisServer) -> None:
    """The progress deadline does not count time before a restarted app's own counts began
    (LocalSource.counts_since, on the host's clock); ``now`` is Redis's. A host 15 minutes
    behind must not read its fresh start as 15 minutes of missing data."""
    import subprocess
    import sys

    from openai_bluegreen._rollout import revision_of

    raw = {"state": server.url, "rollouts": [{
        **CONFIG["rollouts"][0],
        "schedule": {"steps": [10, 50], "min_step_duration": "10m", "min_requests": 5,
                     "progress_deadline": "5m"},
        "analysis": {"checks": [{"signal": "error_rate", "max": 0.2}]}}]}
    rollout = load_config(raw).rollouts[0]
    store = _open(server.url)
    started = store.server_time() - 400  # a step 400 s old, past the 5-minute deadline
    assert store.compare_and_set(RolloutState(
        "chat", Phase.PROGRESSING, 0, 10.0, step_started_at=started, updated_at=started,
        version=1, revision=revision_of(rollout)), None)
    done = subprocess.run([sys.executable, "-c", _BEHIND_WATCHER, json.dumps(raw), server.url],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["leader"]
    assert seen["phase"] == "progressing", seen  # held: its counts began seconds ago
    _close(store)


def test_the_readmes_acl_permissions_are_enough(server: RedisServer) -> None:
    import re

    import redis

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme[readme.index("A\n  Redis ACL user needs"):][:400]
    rules = re.findall(r"\+[a-z|]+", block)
    assert "+evalsha" in rules and "+publish" in rules
    admin = redis.Redis.from_url(server.url)
    admin.execute_command("ACL", "SETUSER", "bluegreen", "on", ">pw-acl", "~openai-bluegreen:*",
                          "&openai-bluegreen:*", *rules)
    admin.close()
    store = _open(server.url.replace("redis://", "redis://bluegreen:pw-acl@", 1))
    heard = threading.Event()
    unsubscribe = store.subscribe(heard.set)
    time.sleep(0.3)
    assert store.load_all() == {}
    assert store.compare_and_set(RolloutState("chat"), None)
    assert store.load("chat") == RolloutState("chat")
    assert store.acquire_lease("me", 5.0) and store.server_time() > 0
    store.release_lease("me")
    assert heard.wait(5)
    unsubscribe()
    store.close()
