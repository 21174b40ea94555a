"""One contract suite for every state store, plus what only the file store promises."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from openai_bluegreen import load_config
from openai_bluegreen._control import apply_action
from openai_bluegreen._rollout import (
    Action,
    InvalidTransition,
    Phase,
    RolloutState,
    initial_state,
)
from openai_bluegreen.stores import (
    InvalidState,
    Lease,
    StateStore,
    StoreUnavailable,
    invalid_of,
    open_store,
)
from openai_bluegreen.stores.memory import MemoryStore
from tests.services import redis_server

CONFIG = {"rollouts": [{"name": "chat", "match": {"model": "m"}, "blue": {"model": "a"},
                        "green": {"model": "b"},
                        "schedule": {"steps": [10, 50], "min_step_duration": 1}}]}


@pytest.fixture(params=["memory", "file", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    if request.param == "redis":  # a real redis-server of its own
        with redis_server(tmp_path) as server:
            made = open_store(server.url)
            yield made
            made.close()
        return
    url = "memory" if request.param == "memory" else f"file://{tmp_path}/state/rollouts.json"
    made = open_store(url)
    yield made
    made.close()


def test_compare_and_set_writes_only_over_the_expected_version(store: StateStore) -> None:
    rollout = load_config(CONFIG).rollouts[0]
    first = initial_state(rollout)
    assert store.load("chat") is None
    assert store.compare_and_set(first, None)
    assert not store.compare_and_set(first, None)  # it exists now
    moved = apply_action(store, rollout, Action.PAUSE, actor="alice", reason="hold on", now=5.0)
    assert moved.version == first.version + 1
    assert not store.compare_and_set(first, first.version - 1)
    loaded = store.load("chat")
    assert loaded == moved
    assert store.load_all() == {"chat": moved}


def test_states_round_trip_with_their_history(store: StateStore) -> None:
    rollout = load_config(CONFIG).rollouts[0]
    apply_action(store, rollout, Action.SET_WEIGHT, weight=12.5, actor="bob", reason="why not",
                 now=1.0)
    state = store.load("chat")
    assert isinstance(state, RolloutState)
    assert (state.phase, state.weight, state.step) == (Phase.PAUSED, 12.5, 0)
    entry = state.history[-1]
    assert (entry.action, entry.actor, entry.reason, entry.at) == ("set_weight", "bob",
                                                                    "why not", 1.0)


def _bump(url: str, times: int) -> None:
    rollout = load_config(CONFIG).rollouts[0]
    store = open_store(url)
    for i in range(times):
        apply_action(store, rollout, Action.SET_WEIGHT, weight=float(i % 100), actor="w",
                     reason="race")


def test_file_store_loses_no_update_between_concurrent_processes(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/state.json"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_bump, args=(url, 40)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    state = open_store(url).load("chat")
    assert state is not None and state.version == 160
    assert len(state.history) == 160


def test_file_store_never_overwrites_a_file_it_cannot_parse(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{not json", encoding="utf-8")
    store = open_store(f"file://{path}")
    rollout = load_config(CONFIG).rollouts[0]
    with pytest.raises(StoreUnavailable, match=r"is not a valid state file.*left untouched"):
        apply_action(store, rollout, Action.PAUSE, actor="a", reason="")
    assert path.read_text(encoding="utf-8") == "{not json"


def _edit(path: Path, **fields: Any) -> dict[str, Any]:
    """Edit rollout chat's entry in a state file by hand, as given; returns the file's data."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    data["rollouts"]["chat"].update(fields)
    path.write_text(json.dumps(data), encoding="utf-8")
    return data


def _paused_file_store(tmp_path: Path) -> tuple[Path, StateStore, Any]:
    """A file store holding rollout chat, paused: its file, the store and the rollout."""
    path = tmp_path / "state.json"
    store = open_store(f"file://{path}")
    rollout = load_config(CONFIG).rollouts[0]
    apply_action(store, rollout, Action.PAUSE, actor="a", reason="x")
    return path, store, rollout


def test_file_store_replaces_a_bad_entry_only_while_it_is_what_was_read(
        tmp_path: Path) -> None:
    path, store, rollout = _paused_file_store(tmp_path)
    _edit(path, weight=-1.0)
    data = json.loads(path.read_text(encoding="utf-8"))
    data["rollouts"]["other"] = {"kept": True}
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(InvalidState) as caught:
        store.load("chat")
    assert caught.value.version == 1 and caught.value.rollout == "chat"
    data["rollouts"]["chat"]["weight"] = -2.0  # someone else edited it since
    path.write_text(json.dumps(data), encoding="utf-8")
    assert not store.replace_invalid(RolloutState("chat", version=5), caught.value.seen)
    assert json.loads(path.read_text(encoding="utf-8")) == data
    state = apply_action(store, rollout, Action.ROLLBACK, actor="a", reason="incident")
    assert state.version == 2 and store.load("chat") == state
    assert json.loads(path.read_text(encoding="utf-8"))["rollouts"]["other"] == {"kept": True}


def test_a_rollback_over_a_bad_value_stays_rolled_back_whatever_config_the_apps_run(
        tmp_path: Path) -> None:
    """The operator's config may differ from the apps' (a param). A replacement written under
    the operator's revision was restarted by the apps' leader (green again); written under no
    revision, the leader adopts it as its own, rolled back."""
    from openai_bluegreen._watcher import Watcher
    from openai_bluegreen.sources import Snapshot

    class NoData:
        def snapshot(self, now: float) -> Snapshot:
            return Snapshot(now, {})

        def close(self) -> None:
            return None

    path = tmp_path / "state.json"
    store = open_store(f"file://{path}")
    apps = load_config({"state": f"file://{path}", "rollouts": CONFIG["rollouts"]})
    operator = load_config({"rollouts": [{**CONFIG["rollouts"][0], "green": {
        "model": "b", "params": {"temperature": 0.2}}}]}).rollouts[0]
    apply_action(store, apps.rollouts[0], Action.SET_WEIGHT, weight=5.0, actor="a", reason="x",
                 now=1.0)
    weights: list[float] = []
    leader = Watcher(apps, store, NoData(), apply_weight=lambda _name, w: weights.append(w))
    leader.look(now=1.5)
    _edit(path, weight=150.0)
    done = apply_action(store, operator, Action.ROLLBACK, actor="op", reason="incident", now=2.0)
    assert (done.phase, done.revision) == (Phase.ROLLED_BACK, "")
    for now in (3.0, 4.0, 5.0):
        leader.look(now=now)
    stored = store.load("chat")
    assert stored is not None and (stored.phase, stored.weight) == (Phase.ROLLED_BACK, 0.0)
    assert [h.action for h in stored.history] == ["rollback"]
    assert weights[-1] == 0.0 and 5.0 not in weights[weights.index(0.0):]
    leader.stop()


def test_no_action_but_a_rollback_stamps_an_unadopted_replacement_with_its_config(
        tmp_path: Path) -> None:
    """Until the apps' watcher adopts a rollback written over an invalid value, it is about no
    config: a set-weight from another config would stamp that config's revision, and the apps'
    leader would restart the rollout (green again). Refused unless --restart."""
    from openai_bluegreen._rollout import revision_of

    path = tmp_path / "state.json"
    store = open_store(f"file://{path}")
    apps = load_config(CONFIG).rollouts[0]
    other = load_config({"rollouts": [{**CONFIG["rollouts"][0], "green": {"model": "c"}}]}
                        ).rollouts[0]
    apply_action(store, apps, Action.SET_WEIGHT, weight=5.0, actor="a", reason="x", now=1.0)
    _edit(path, weight=150.0)
    replaced = apply_action(store, other, Action.ROLLBACK, actor="op", reason="x", now=2.0)
    for rollout in (other, apps):
        with pytest.raises(InvalidTransition, match="no watcher has adopted it"):
            apply_action(store, rollout, Action.SET_WEIGHT, weight=0.0, actor="op", reason="x")
    assert store.load("chat") == replaced
    restarted = apply_action(store, other, Action.PAUSE, actor="op", reason="x", restart=True)
    assert (restarted.phase, restarted.revision) == (Phase.PAUSED, revision_of(other))
    assert restarted.superseded == ()


def test_a_version_at_its_limit_is_never_written_past(tmp_path: Path) -> None:
    from openai_bluegreen._rollout import MAX_VERSION

    path, store, rollout = _paused_file_store(tmp_path)
    _edit(path, version=MAX_VERSION)
    at_limit = store.load("chat")
    assert at_limit is not None and at_limit.version == MAX_VERSION
    with pytest.raises(StoreUnavailable, match="the stored version is at its limit"):
        apply_action(store, rollout, Action.ROLLBACK, actor="a", reason="x")
    assert store.load("chat") == at_limit


def test_pause_with_restart_is_judged_by_this_configs_schedule(tmp_path: Path) -> None:
    """A state at step 4 of the apps' five-step schedule is not 'past' a new two-step one: it
    is another candidate's, and --restart starts this config's rollout over."""
    from openai_bluegreen._rollout import revision_of

    def rollout(steps: list[int], green: str) -> Any:
        return load_config({"rollouts": [{**CONFIG["rollouts"][0], "green": {"model": green},
                                          "schedule": {"steps": steps,
                                                       "min_step_duration": 1}}]}).rollouts[0]

    apps, new = rollout([1, 5, 25, 50, 75], "b"), rollout([10, 50], "c")
    store = open_store(f"file://{tmp_path}/state.json")
    apply_action(store, apps, Action.SET_WEIGHT, weight=60, actor="a", reason="x")
    with pytest.raises(InvalidTransition, match="the apps run another config"):
        apply_action(store, new, Action.PAUSE, actor="op", reason="x")
    paused = apply_action(store, new, Action.PAUSE, actor="op", reason="x", restart=True)
    assert (paused.phase, paused.revision) == (Phase.PAUSED, revision_of(new))


@pytest.mark.parametrize(("fields", "why"), [
    ({"phase": "rolled_back", "weight": 50.0}, "a rolled_back state has weight 0 (got 50)"),
    ({"phase": "promoted", "weight": 10.0}, "a promoted state has weight 100 (got 10)"),
    ({"phase": "bogus"}, "phase must be one of pending, progressing"),
    ({"superseded": 5}, "superseded must be a list of revisions (got 5)"),
    ({"superseded": "abc"}, "superseded must be a list of revisions (got 'abc')"),
    ({"history": {}}, "history must be a list (got dict)"),
])
def test_a_hand_edited_state_that_contradicts_itself_is_invalid_and_named(
        tmp_path: Path, fields: dict[str, Any], why: str) -> None:
    """A rolled-back state at 50% would route half the calls to green while status says
    rolled back; a bad field is named, not a Python type error."""
    path, store, _ = _paused_file_store(tmp_path)
    _edit(path, **fields)
    with pytest.raises(InvalidState, match=re.escape(why)):
        store.load("chat")


def test_a_null_entry_is_a_bad_value_for_every_reader_and_a_valid_one_is_never_replaced(
        tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = open_store(f"file://{path}")
    rollout = load_config(CONFIG).rollouts[0]
    paused = apply_action(store, rollout, Action.PAUSE, actor="a", reason="x")
    entry = json.loads(path.read_text(encoding="utf-8"))["rollouts"]["chat"]
    text = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    assert not store.replace_invalid(replace(paused, version=0), text)  # valid: left alone
    assert store.load("chat") == paused
    path.write_text(json.dumps({"format": 1, "rollouts": {"chat": None}}), encoding="utf-8")
    assert "chat" in invalid_of(store.load_all())
    with pytest.raises(InvalidState, match="not a JSON object"):
        store.load("chat")  # before: None, so a pause wrote a fresh state over it
    with pytest.raises(InvalidState):
        apply_action(store, rollout, Action.PAUSE, actor="a", reason="x")


@pytest.mark.parametrize("kind", ["file", "redis"])
def test_compare_and_set_never_writes_over_a_value_that_is_not_a_state(
        kind: str, tmp_path: Path) -> None:
    """Only replace_invalid writes over a bad value, on every store. The file store's
    compare-and-set wrote a fresh state over a null entry or one without a version (Redis
    refused both), and raised AttributeError on an entry that is not an object."""
    import contextlib

    import redis

    bad_values = ['"oops"', "null", '{"rollout": "chat", "phase": "promoted"}',
                  '{"rollout": "chat", "version": true}']
    fresh = initial_state(load_config(CONFIG).rollouts[0])
    with contextlib.ExitStack() as stack:
        if kind == "redis":
            server = stack.enter_context(redis_server(tmp_path))
            client = stack.enter_context(redis.Redis.from_url(server.url))
            store = open_store(server.url)

            def put(raw: str) -> None:
                client.set("openai-bluegreen:state:chat", raw)

            def stored() -> Any:
                return client.get("openai-bluegreen:state:chat").decode()
        else:
            path = tmp_path / "state.json"
            store = open_store(f"file://{path}")

            def put(raw: str) -> None:
                path.write_text(f'{{"format": 1, "rollouts": {{"chat": {raw}}}}}',
                                encoding="utf-8")

            def stored() -> Any:
                return json.dumps(json.loads(path.read_text(encoding="utf-8"))["rollouts"]["chat"])
        stack.callback(store.close)
        for raw in bad_values:
            put(raw)
            before = stored()
            assert not store.compare_and_set(fresh, None), raw  # a value is there
            with pytest.raises(StoreUnavailable, match="not a valid"):
                store.compare_and_set(fresh, 0)
            assert stored() == before, raw


def test_a_long_reason_for_a_bad_value_is_cut_in_the_history(tmp_path: Path) -> None:
    path, store, rollout = _paused_file_store(tmp_path)
    _edit(path, weight="w" * 5000)
    state = apply_action(store, rollout, Action.ROLLBACK, actor="a", reason="incident")
    reason = state.history[-1].reason
    assert reason.startswith("incident (replaced a stored value that was not a valid state: ")
    assert reason.endswith("…)") and len(reason) < 400


def test_file_store_refuses_a_file_that_is_not_text(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"\xff\xfe{not text")
    with pytest.raises(StoreUnavailable, match=r"not a valid state file \(not UTF-8 text\)"):
        open_store(f"file://{path}").load_all()
    assert path.read_bytes() == b"\xff\xfe{not text"


def test_file_store_refuses_a_file_nested_past_the_parser(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"rollouts": {}, "x": ' + "[" * 100_000, encoding="utf-8")
    with pytest.raises(StoreUnavailable, match=r"nested too deeply.*left untouched"):
        open_store(f"file://{path}").load_all()


def test_file_store_reports_an_unwritable_location(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    store = open_store(f"file://{blocker}/sub/state.json")
    rollout = load_config(CONFIG).rollouts[0]
    with pytest.raises(StoreUnavailable, match="cannot"):
        apply_action(store, rollout, Action.PAUSE, actor="a", reason="")


def test_file_store_syncs_the_directory_after_replacing_the_state_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The temporary file was fsynced, then renamed over the state file, and the directory
    never synced: after a power cut the directory could still name the previous file, and an
    acknowledged write (an operator's rollback) would be undone."""
    import os
    import stat

    done: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        real_fsync(fd)
        synced = os.fstat(fd)
        if not stat.S_ISDIR(synced.st_mode):
            done.append("fsync file")
        elif os.path.samestat(synced, os.stat(path.parent)):
            done.append("fsync its directory")

    def replace_(src: Any, dst: Any) -> None:
        real_replace(src, dst)
        done.append(f"replace {dst}")

    path = tmp_path / "state" / "rollouts.json"
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace_)
    store = open_store(f"file://{path}")
    assert store.compare_and_set(initial_state(load_config(CONFIG).rollouts[0]), None)
    assert done == ["fsync file", f"replace {path}", "fsync its directory"], done


def test_file_store_honours_the_umask_and_keeps_an_operators_chmod(tmp_path: Path) -> None:
    """Every write made the state file 0644, whatever the umask (077: private files) and
    whatever mode an operator had given it (chmod 600 was undone by the next write): readable
    by every user on the host. It is never writable by others either way."""
    import os
    import stat

    path = tmp_path / "state.json"
    store = open_store(f"file://{path}")
    rollout = load_config(CONFIG).rollouts[0]

    def mode() -> int:
        return stat.S_IMODE(path.stat().st_mode)

    old = os.umask(0o077)
    try:
        apply_action(store, rollout, Action.PAUSE, actor="a", reason="", now=1.0)
    finally:
        os.umask(old)
    assert mode() == 0o600
    path.chmod(0o640)  # an operator lets a group read it
    apply_action(store, rollout, Action.RESUME, actor="a", reason="", now=2.0)
    assert mode() == 0o640
    path.unlink()
    old = os.umask(0)
    try:
        apply_action(store, rollout, Action.PAUSE, actor="a", reason="", now=3.0)
    finally:
        os.umask(old)
    assert mode() == 0o644  # no umask at all: still not writable by others


def test_file_store_write_keeps_the_owner_and_group_an_operator_gave_the_state_file(
    tmp_path: Path,
) -> None:
    """A write kept the replaced file's mode but not its group (nor, for a watcher running as
    root, its owner): after ``chgrp ops; chmod 640`` the next write left a 640 file of the
    writer's group, which the ops group could no longer read."""
    import os

    path = tmp_path / "state.json"
    store = open_store(f"file://{path}")
    rollout = load_config(CONFIG).rollouts[0]
    apply_action(store, rollout, Action.PAUSE, actor="a", reason="", now=1.0)
    if os.geteuid() == 0:
        owner, group = 65534, 65534
    else:
        others = [g for g in os.getgroups() if g != path.stat().st_gid]
        if not others:
            pytest.skip("needs root, or a second group this user is in")
        owner, group = os.geteuid(), others[0]
    os.chown(path, owner, group)
    path.chmod(0o640)
    apply_action(store, rollout, Action.RESUME, actor="a", reason="", now=2.0)
    kept = path.stat()
    assert (kept.st_uid, kept.st_gid, kept.st_mode & 0o777) == (owner, group, 0o640)


def test_unknown_store_urls_are_refused_by_name() -> None:
    with pytest.raises(StoreUnavailable, match="unknown state store 'etcd://x'"):
        open_store("etcd://x")


def test_an_action_with_another_candidate_starts_the_rollout_over(store: StateStore) -> None:
    """An operator acting with a config whose green changed, and asking to restart, acts on a
    fresh rollout: the old candidate's 'promoted' is never inherited, in either direction."""
    from openai_bluegreen._rollout import revision_of

    old = load_config(CONFIG).rollouts[0]
    new = load_config({"rollouts": [{**CONFIG["rollouts"][0], "green": {"model": "c"}}]}
                      ).rollouts[0]
    assert revision_of(old) != revision_of(new)
    promoted = apply_action(store, old, Action.PROMOTE, actor="alice", reason="a is good",
                            now=1.0)
    with pytest.raises(InvalidTransition, match="the apps run another config"):
        apply_action(store, new, Action.PAUSE, actor="bob", reason="c: wait", now=2.0)
    assert store.load("chat") == promoted  # refused: nothing written
    paused = apply_action(store, new, Action.PAUSE, actor="bob", reason="c: wait", now=2.0,
                          restart=True)
    assert (paused.phase, paused.weight, paused.revision) == (Phase.PAUSED, 0.0,
                                                              revision_of(new))
    assert [h.action for h in paused.history] == ["promote", "restart", "pause"]
    assert paused.superseded == (promoted.revision,)
    assert store.load("chat") == paused
    back = apply_action(store, old, Action.PAUSE, actor="carol", reason="a again", now=3.0,
                        restart=True)
    assert (back.phase, back.weight, back.revision) == (Phase.PAUSED, 0.0, revision_of(old))
    assert [h.action for h in back.history][-2:] == ["restart", "pause"]


def test_a_rollback_with_a_drifted_config_rolls_back_what_the_apps_run(
        store: StateStore) -> None:
    """An operator whose config differs from the apps' (a param) rolls back: it applies to the
    stored state under the apps' revision, so their watchers keep it (a rollback written under
    the operator's revision was restarted by the apps' leader seconds later, green again)."""
    from openai_bluegreen._rollout import revision_of
    from openai_bluegreen._watcher import Watcher

    apps = load_config(CONFIG)
    operator = load_config({"rollouts": [{**CONFIG["rollouts"][0], "green": {
        "model": "b", "params": {"temperature": 0.2}}}]}).rollouts[0]
    for action in (Action.SET_WEIGHT, Action.RESUME):  # progressing at 5 %, the apps' state
        apply_action(store, apps.rollouts[0], action, actor="app", reason="x", weight=5.0,
                     now=1.0)
    leader = Watcher(apps, store, None, apply_weight=lambda n, w: None)
    leader.look(now=1.5)
    started = store.load("chat")
    assert started is not None and (started.phase, started.weight) == (Phase.PROGRESSING, 5.0)
    for action in (Action.PROMOTE, Action.SET_WEIGHT, Action.PAUSE):
        with pytest.raises(InvalidTransition, match="Act with the apps' config"):
            apply_action(store, operator, action, actor="op", reason="x", weight=50.0, now=2.0)
    done = apply_action(store, operator, Action.ROLLBACK, actor="op", reason="incident", now=2.0,
                        restart=True)  # a rollback never restarts, even when asked to
    assert (done.phase, done.weight) == (Phase.ROLLED_BACK, 0.0)
    assert done.revision == revision_of(apps.rollouts[0]) != revision_of(operator)
    leader.look(now=3.0)
    leader.look(now=4.0)
    kept = store.load("chat")
    assert kept is not None and (kept.phase, kept.weight) == (Phase.ROLLED_BACK, 0.0)
    assert [h.action for h in kept.history] == ["set_weight", "resume", "rollback"]
    leader.stop()


def test_watchers_send_another_candidates_state_to_blue_and_adopt_old_states(
        store: StateStore) -> None:
    """A watcher that only follows (no metric source, not leading) applies weight 0 to a state
    about another blue/green; a leading one starts it over; a state stored before revisions
    existed is adopted as the current config's, whatever its phase."""
    from dataclasses import replace

    from openai_bluegreen._rollout import revision_of
    from openai_bluegreen._watcher import Watcher

    old = load_config(CONFIG)
    new = load_config({"rollouts": [{**CONFIG["rollouts"][0], "green": {"model": "c"}}]})
    apply_action(store, old.rollouts[0], Action.PROMOTE, actor="alice", reason="a", now=1.0)
    applied: list[tuple[str, float]] = []
    follower = Watcher(new, store, None, apply_weight=lambda n, w: applied.append((n, w)))
    follower.sync()
    assert applied == [("chat", 0.0)]
    assert follower.status()[0]["other_candidate"]
    follower.stop()

    leader = Watcher(new, store, None, apply_weight=lambda n, w: applied.append((n, w)))
    leader.look(now=2.0)
    state = store.load("chat")
    assert state is not None and state.revision == revision_of(new.rollouts[0])
    assert state.phase is not Phase.PROMOTED and state.weight < 100.0
    assert state.history[-1].action in ("restart", "start")
    leader.stop()

    legacy = replace(apply_action(store, old.rollouts[0], Action.PROMOTE, actor="a",
                                  reason="a", now=3.0, restart=True), revision="", superseded=())
    current = store.load("chat")
    assert current is not None
    assert store.compare_and_set(replace(legacy, version=current.version + 1), current.version)
    adopter = Watcher(old, store, None, apply_weight=lambda n, w: applied.append((n, w)))
    adopter.look(now=4.0)
    adopted = store.load("chat")
    assert adopted is not None and adopted.revision == revision_of(old.rollouts[0])
    assert adopted.phase is Phase.PROMOTED  # adopted as it was, not restarted
    adopter.stop()


class _StuckSource:
    """The counts set; on its next snapshot, runs ``during`` first (the look is stuck there)."""

    def __init__(self) -> None:
        from openai_bluegreen.sources import EnvStats, RolloutStats

        self.stats = RolloutStats(EnvStats(), EnvStats())
        self.during: Any = None

    def snapshot(self, now: float) -> Any:
        from openai_bluegreen.sources import Snapshot

        during, self.during = self.during, None
        if during is not None:
            during()
        return Snapshot(now, {"chat": self.stats})

    def close(self) -> None:
        pass


@pytest.fixture(params=["file", "redis"])
def leased(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """A shared store's URL, and a function that makes its leader lease run out now (the file
    store's by its expiry time, Redis's by its own expiry)."""
    if request.param == "file":
        path = tmp_path / "state.json"

        def expire_file() -> None:
            data = json.loads(path.read_text(encoding="utf-8"))
            data["lease"]["expires"] = 0.0
            path.write_text(json.dumps(data), encoding="utf-8")

        yield f"file://{path}", expire_file
        return
    import redis

    with redis_server(tmp_path) as server:
        client = redis.Redis.from_url(server.url)

        def expire_redis() -> None:
            client.pexpire("openai-bluegreen:lease", 1)
            while client.exists("openai-bluegreen:lease"):
                pass

        yield server.url, expire_redis
        client.close()


def test_a_watcher_whose_lease_ran_out_during_its_look_writes_nothing(
        leased: tuple[str, Any]) -> None:
    """Watcher A's look outlives its lease (stuck in its metric source); watcher B takes the
    lease over and leads. A's decision on its old evidence (promote) used to be written all
    the same, version compare-and-set or not: two leaders writing. The write is fenced on the
    lease now: A writes nothing, knows it no longer leads, and B's state stands."""
    from openai_bluegreen._watcher import Watcher
    from openai_bluegreen.sources import EnvStats, RolloutStats

    url, expire = leased
    config = load_config({"rollouts": [{
        **CONFIG["rollouts"][0],
        "schedule": {"steps": [10, 100], "min_step_duration": "1m", "min_requests": 100},
        "analysis": {"interval": "30s", "checks": [{"signal": "error_rate", "max": 0.2}]}}]})
    now = [1_700_000_000.0]
    source = _StuckSource()
    a_store, b_store = open_store(url), open_store(url)
    a = Watcher(config, a_store, source, clock=lambda: now[0])
    b = Watcher(config, b_store, _StuckSource(), clock=lambda: now[0])
    try:
        a.look()  # A leads and starts the rollout
        started = a_store.load("chat")
        assert a.leader and started is not None and started.phase is Phase.PROGRESSING
        now[0] += 120  # the step has its calls and its time, all healthy: A would promote
        source.stats = RolloutStats(EnvStats(1000, 0), EnvStats(1000, 0))

        b_decided: list[Action] = []

        def taken_over() -> None:
            expire()
            b_decided.extend(d.action for d in b.look())

        source.during = taken_over
        assert a.look() == []
        assert b.leader and b_decided == [Action.HOLD]  # B leads (its evidence starts anew)
        assert not a.leader
        assert a_store.load("chat") == started, "a watcher that lost its lease wrote"
        from openai_bluegreen.stores import LeaseLost

        with pytest.raises(LeaseLost):  # the store refuses it, whatever the caller does
            a_store.compare_and_set(replace(started, version=started.version + 1),
                                    started.version, holder=a.holder)
        promoted = replace(started, version=started.version + 1, phase=Phase.PROMOTED,
                           weight=100.0, step=None, step_started_at=None)
        assert b_store.compare_and_set(promoted, started.version, holder=b.holder)
    finally:
        a.stop()
        b.stop()
        a_store.close()
        b_store.close()


def test_acquire_lease_says_whether_another_holder_had_it_since(
        leased: tuple[str, Any]) -> None:
    """A lease that ran out with nobody taking it is the same holder's tenure going on
    (``KEPT``); one that another holder had meanwhile, or that its holder gave up, is taken
    anew (``TAKEN``): the watcher's evidence starts afresh only then."""
    url, expire = leased
    a, b = open_store(url), open_store(url)
    try:
        assert a.acquire_lease("A", 60.0) is Lease.TAKEN  # never had it
        assert a.acquire_lease("A", 60.0) is Lease.KEPT  # renewed in time
        expire()
        assert a.acquire_lease("A", 60.0) is Lease.KEPT  # ran out, nobody took it
        assert b.acquire_lease("B", 60.0) is Lease.REFUSED
        expire()
        assert b.acquire_lease("B", 60.0) is Lease.TAKEN
        assert a.acquire_lease("A", 60.0) is Lease.REFUSED
        b.release_lease("B")
        assert a.acquire_lease("A", 60.0) is Lease.TAKEN  # B had it meanwhile
        a.release_lease("A")
        assert a.acquire_lease("A", 60.0) is Lease.TAKEN  # it gave it up
    finally:
        a.close()
        b.close()
    assert MemoryStore().acquire_lease("A", 60.0) is Lease.KEPT  # one process: always its own


class _SlowSource:
    """Healthy calls, 1000 more of each colour per snapshot; every snapshot first runs
    ``during`` (a slow source: the test moves the clock past the lease there)."""

    def __init__(self, during: Any = None) -> None:
        self.calls = 0
        self.during = during
        self.resets = 0

    def snapshot(self, now: float) -> Any:
        from openai_bluegreen.sources import EnvStats, RolloutStats, Snapshot

        if self.during is not None:
            self.during()
        self.calls += 1000
        return Snapshot(now, {"chat": RolloutStats(EnvStats(self.calls, 0),
                                                   EnvStats(self.calls, 0))})

    def reset(self) -> None:
        self.resets += 1

    def close(self) -> None:
        pass


def _slow_config(steps: list[int]) -> Any:
    return load_config({"rollouts": [{
        **CONFIG["rollouts"][0],
        "schedule": {"steps": steps, "min_step_duration": "1m", "min_requests": 100},
        "analysis": {"interval": "30s", "checks": [{"signal": "error_rate", "max": 0.2}]}}]})


def test_a_lone_watcher_whose_every_look_outlives_its_lease_still_rolls_out(
        leased: tuple[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    """Every look's metric snapshot takes longer than the lease (3 x 30 s + 1 s): the lease
    runs out before the look writes. With no other watcher around, every fenced write used to
    raise LeaseLost, so the rollout never even started. The watcher now renews the lease
    before writing on a look that ran that long, and nobody having taken it meanwhile, its
    evidence stands: the rollout goes all the way, and the watcher says once that its looks
    outlive the lease."""
    from openai_bluegreen._watcher import Watcher

    url, expire = leased
    now = [1_700_000_000.0]

    def slow() -> None:
        now[0] += 100.0
        expire()

    store = open_store(url)
    watcher = Watcher(_slow_config([10, 50, 100]), store, _SlowSource(slow),
                      clock=lambda: now[0])
    try:
        with caplog.at_level("WARNING", logger="openai_bluegreen.watcher"):
            for _ in range(8):
                watcher.look()
        state = store.load("chat")
        assert state is not None and state.phase is Phase.PROMOTED, state
        assert watcher.leader
        long_looks = [r for r in caplog.records if "took longer than the leader lease"
                      in r.getMessage()]
        assert len(long_looks) == 1, [r.getMessage() for r in caplog.records]
        assert "91s" in long_looks[0].getMessage()
        assert "analysis.interval (at least 100s)" in long_looks[0].getMessage()
    finally:
        watcher.stop()
        store.close()


@contextlib.contextmanager
def _two_watchers(url: str) -> Iterator[tuple[list[float], Any, _SlowSource, Any, Any]]:
    """Watchers A (on a slow source) and B on one store, both on the clock ``now[0]``."""
    from openai_bluegreen._watcher import Watcher

    now = [1_700_000_000.0]
    config = _slow_config([10, 100])
    a_store, b_store = open_store(url), open_store(url)
    a_source = _SlowSource()
    a = Watcher(config, a_store, a_source, clock=lambda: now[0])
    b = Watcher(config, b_store, _SlowSource(), clock=lambda: now[0])
    try:
        yield now, a_store, a_source, a, b
    finally:
        a.stop()
        b.stop()
        a_store.close()
        b_store.close()


def test_a_watcher_whose_lease_another_held_meanwhile_takes_over_at_its_next_look(
        leased: tuple[str, Any]) -> None:
    """A's look outlives its lease and decides nothing (no write, so no LeaseLost to hear
    of); meanwhile B takes the lease, leads, and hands it back (stops). A's next look used to
    be the same tenure (A had led at its last look) and judged on windows that began before
    B led, which may span steps B made: it promoted on them. The store now says the lease
    was taken anew, so A starts its evidence afresh, as at any takeover."""
    expire = leased[1]
    with _two_watchers(leased[0]) as (now, a_store, a_source, a, b):
        a.look()  # A leads and starts the rollout
        assert a_store.load("chat") is not None and a_source.resets == 1

        def handed_over() -> None:
            a_source.during = None
            expire()
            assert [d.action for d in b.look()] == [Action.HOLD]
            assert b.leader
            b.stop()  # releases the lease

        a_source.during = handed_over
        assert [d.action for d in a.look()] == [Action.HOLD]  # too early to judge: no write
        assert a.leader  # it cannot know yet
        now[0] += 120  # a healthy step's time and calls, as A counts from the step's start
        decisions = a.look()
        assert a_source.resets == 2, "A's look after B led was not a takeover"
        assert [d.action for d in decisions] == [Action.HOLD]  # its evidence starts now
        state = a_store.load("chat")
        assert state is not None and state.phase is Phase.PROGRESSING


def test_a_renewal_that_finds_another_watcher_led_meanwhile_writes_nothing(
        leased: tuple[str, Any]) -> None:
    """A's snapshot outlives its lease; B takes it, leads and hands it back before A
    renews. A gets the lease again, but B may have moved the rollout since A's snapshot: A
    writes nothing on it (its promote) and takes over afresh at its next look."""
    expire = leased[1]
    with _two_watchers(leased[0]) as (now, a_store, a_source, a, b):
        a.look()
        started = a_store.load("chat")
        assert started is not None and started.phase is Phase.PROGRESSING
        now[0] += 120  # A would promote on what it saw

        def handed_over() -> None:
            a_source.during = None
            expire()
            b.look()
            b.stop()
            now[0] += 100  # past A's lease

        a_source.during = handed_over
        assert a.look() == []
        assert a_store.load("chat") == started, "A wrote on evidence from before B led"
        assert a.leader and a.problem is not None and "another watcher" in a.problem
        a.look()
        assert a_source.resets == 2  # its next look judged afresh
        assert a.problem is None


class _PlainBoolStore:
    """A third-party store whose acquire_lease answers a plain bool (it cannot tell who had
    the lease meanwhile): the file store underneath, otherwise as it is."""

    def __init__(self, url: str) -> None:
        self._store = open_store(url)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def acquire_lease(self, holder: str, ttl: float) -> bool:
        return bool(self._store.acquire_lease(holder, ttl))


def test_a_store_answering_a_plain_bool_keeps_working(leased: tuple[str, Any]) -> None:
    """Without the store's word on who had the lease, a look that outlived its lease writes
    nothing (another watcher may have led), as before; a look within its lease writes."""
    from openai_bluegreen._watcher import Watcher

    url, expire = leased
    now = [1_700_000_000.0]
    store = _PlainBoolStore(url)
    source = _SlowSource()
    watcher = Watcher(_slow_config([10, 100]), store, source,  # type: ignore[arg-type]
                      clock=lambda: now[0])
    try:
        watcher.look()
        started = store.load("chat")
        assert started is not None and started.phase is Phase.PROGRESSING
        now[0] += 90  # A would promote on what it saw, its lease (91 s) still running

        def slow() -> None:
            source.during = None
            now[0] += 100
            expire()

        source.during = slow
        assert watcher.look() == []
        assert store.load("chat") == started
        assert watcher.look()[0].action is Action.HOLD  # judged afresh: a takeover
        assert source.resets == 2
    finally:
        watcher.stop()
        store.close()


def test_a_plain_bool_store_watcher_whose_lease_ran_out_between_looks_takes_over(
        leased: tuple[str, Any]) -> None:
    """As the Lease store's test above, with a store whose acquire_lease answers a plain bool:
    A's lease runs out during a look that wrote nothing, B takes it, leads and hands it back.
    The store cannot say so, but by A's own clock its lease ran out since its last renewal: its
    next look is a takeover, as the protocol documents, not the old tenure going on."""
    from openai_bluegreen._watcher import Watcher

    url, expire = leased
    now = [1_700_000_000.0]
    config = _slow_config([10, 100])
    a_store, b_store = _PlainBoolStore(url), _PlainBoolStore(url)
    a_source = _SlowSource()
    a = Watcher(config, a_store, a_source, clock=lambda: now[0])  # type: ignore[arg-type]
    b = Watcher(config, b_store, _SlowSource(), clock=lambda: now[0])  # type: ignore[arg-type]
    try:
        a.look()
        assert a_store.load("chat") is not None and a_source.resets == 1

        def handed_over() -> None:
            a_source.during = None
            expire()
            b.look()
            assert b.leader
            b.stop()

        a_source.during = handed_over
        assert [d.action for d in a.look()] == [Action.HOLD]
        now[0] += 120  # past the lease A last renewed (3 x 30 s + 1 s)
        decisions = a.look()
        assert [d.action for d in decisions] == [Action.HOLD]  # its evidence starts now
        assert a_source.resets == 2, "A's look after its lease ran out was not a takeover"
    finally:
        a.stop()
        b.stop()
        a_store.close()
        b_store.close()


def test_a_renewal_that_lands_after_stop_released_the_lease_is_released_again(
        leased: tuple[str, Any]) -> None:
    """stop() hands the lease over while a long look is renewing it before writing; the
    renewal lands afterwards and takes the lease again. The look sees the stop and must hand
    it back, or the stopped watcher holds it and the fleet has no leader until it expires."""
    from openai_bluegreen._watcher import Watcher

    url, expire = leased
    now = [1_700_000_000.0]
    watcher: Any = None

    class StopDuringRenewal(_PlainBoolStore):  # answering the store's Lease, not a bool
        acquired = 0

        def acquire_lease(self, holder: str, ttl: float) -> Any:
            self.acquired += 1
            if self.acquired == 2:  # the renewal: stop() releases while it is on its way
                watcher.stop()
            return self._store.acquire_lease(holder, ttl)

    def slow() -> None:
        now[0] += 100
        expire()

    store = StopDuringRenewal(url)
    watcher = Watcher(_slow_config([10, 100]), store, _SlowSource(slow),  # type: ignore[arg-type]
                      clock=lambda: now[0])
    other = open_store(url)
    try:
        assert watcher.look() == []
        assert store.acquired == 2
        assert other.acquire_lease("B", 60.0), "the stopped watcher kept the lease"
    finally:
        watcher.stop()
        store.close()
        other.close()
