"""The ``file://`` state store: one JSON file shared by processes on one host.

Writes take an exclusive ``flock`` on ``<path>.lock``, re-read the file, check the version,
write a temporary file in the same directory, ``fsync`` it, ``os.replace`` it over the
original and ``fsync`` the directory, so readers (who take no lock) always see a whole file,
a crash mid-write leaves the previous file intact, and a write that returned survives a power
cut. The leader lease lives in the same file, so a watcher's write checks it still holds the
lease under the same lock. A file that does not parse is never overwritten. A writer waits at
most :data:`LOCK_TIMEOUT` seconds for the lock (another process may hold it, stuck or
stopped), then raises :class:`StoreUnavailable` naming the lock file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

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

__all__ = ["LOCK_TIMEOUT", "FileStore"]

_FORMAT = 1
LOCK_TIMEOUT = 5.0
"""Seconds a write waits for the lock file before giving up."""


class FileStore:
    """States in a JSON file, safe for several processes on one host.

    Args:
        url: ``file:///path/state.json``.
        lock_timeout: Seconds a write waits for ``<path>.lock``.
    """

    def __init__(self, url: str, *, lock_timeout: float = LOCK_TIMEOUT) -> None:
        parts = urlsplit(url)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost") or not parts.path:
            raise StoreUnavailable(f"file store URL must look like file:///path/state.json "
                                   f"(got {url!r})")
        self.url = url
        self.path = Path(unquote(parts.path))
        if self.path.is_dir():
            raise StoreUnavailable(f"{str(self.path)!r} is a directory: name the state file, "
                                   f"e.g. file://{self.path / 'state.json'}")
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self.lock_timeout = lock_timeout

    def _read(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {"format": _FORMAT, "rollouts": {}}
        except OSError as exc:
            raise StoreUnavailable(f"cannot read state file {str(self.path)!r}: "
                                   f"{exc.strerror}") from exc
        except UnicodeDecodeError:
            raise StoreUnavailable(
                f"state file {str(self.path)!r} is not a valid state file (not UTF-8 text); it "
                "is left untouched: fix or move it") from None
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or not isinstance(data.get("rollouts"), dict):
                raise ValueError("no 'rollouts' mapping")
        except RecursionError:
            raise StoreUnavailable(
                f"state file {str(self.path)!r} is not a valid state file (nested too deeply); "
                "it is left untouched: fix or move it") from None
        except ValueError as exc:
            raise StoreUnavailable(
                f"state file {str(self.path)!r} is not a valid state file ({exc}); it is left "
                "untouched: fix or move it") from exc
        return data

    def _invalid(self, name: str, why: object) -> str:
        return (f"state file {str(self.path)!r}: rollout {name!r} is not a valid state ({why}); "
                f"it is left untouched: {REPAIR_HINT}")

    def _parse(self, name: str, raw: Any) -> RolloutState:
        try:
            return parse_stored(name, raw)
        except ValueError as exc:
            raise InvalidState(self._invalid(name, exc), rollout=name, why=str(exc),
                               seen=_text(raw)) from None

    def load(self, rollout: str) -> RolloutState | None:
        rollouts = self._read()["rollouts"]
        # A rollout stored as null is a bad value (load_all says so too), not a missing one.
        return self._parse(rollout, rollouts[rollout]) if rollout in rollouts else None

    def load_all(self) -> StoredStates:
        out = StoredStates()
        for name, raw in self._read()["rollouts"].items():
            try:
                out[name] = parse_stored(name, raw)
            except ValueError as exc:
                out.invalid[name] = self._invalid(name, exc)
        return out

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreUnavailable(f"cannot open lock file {str(self._lock_path)!r}: "
                                   f"{exc.strerror}") from exc
        try:
            self._acquire(fd)
        except BaseException:
            os.close(fd)
            raise
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _acquire(self, fd: int) -> None:
        """``flock`` without blocking, retried until :attr:`lock_timeout` has passed."""
        deadline = time.monotonic() + self.lock_timeout
        pause = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreUnavailable(
                        f"lock file {str(self._lock_path)!r} is held by another process "
                        f"(waited {self.lock_timeout:g}s; 'fuser {self._lock_path}' shows "
                        "which)") from None
                time.sleep(min(pause, left))
                pause = min(pause * 2, 0.05)
            except OSError as exc:
                raise StoreUnavailable(f"cannot lock {str(self._lock_path)!r}: "
                                       f"{exc.strerror}") from exc

    def compare_and_set(self, state: RolloutState, expected_version: int | None, *,
                        holder: str | None = None) -> bool:
        check_version(state)
        with self._locked():
            data = self._read()
            if holder is not None and _lease_holder(data, time.time()) != holder:
                raise LeaseLost(f"state file {str(self.path)!r}: the leader lease is no longer "
                                f"held by {holder!r}; rollout {state.rollout!r} not written")
            if state.rollout not in data["rollouts"]:
                if expected_version is not None:
                    return False
            elif expected_version is None:
                return False  # an entry is there, even a null one: not absent (as on Redis)
            else:
                # As the Redis script does: only replace_invalid writes over a value that is not
                # a state; one without a numeric version cannot even be compared.
                current = data["rollouts"][state.rollout]
                version = current.get("version") if isinstance(current, dict) else None
                if isinstance(version, bool) or not isinstance(version, int | float):
                    raise StoreUnavailable(self._invalid(state.rollout, "no numeric version"))
                if version != expected_version:
                    return False
            data["rollouts"][state.rollout] = state.to_dict()
            data["format"] = _FORMAT
            self._write(data)
            return True

    def replace_invalid(self, state: RolloutState, seen: str | bytes) -> bool:
        check_version(state)
        with self._locked():
            data = self._read()
            if state.rollout not in data["rollouts"]:
                return False
            current = data["rollouts"][state.rollout]
            if _text(current) != seen or _is_state(state.rollout, current):
                return False  # changed since it was read, or a valid state: not ours to replace
            data["rollouts"][state.rollout] = state.to_dict()
            data["format"] = _FORMAT
            self._write(data)
            return True

    def _write(self, data: dict[str, Any]) -> None:
        try:
            # Created 0644 less the umask (mkstemp's 0600 was widened to 0644 whatever the
            # umask): readable by other users' status where the umask allows, writable by no
            # one else; then given the mode and, where this process may, the owner and group of
            # the file it replaces, so an operator's chmod (600 to keep it private, 640 with a
            # chgrp to let a group read it) is not undone by the next write.
            tmp = self.path.with_name(f"{self.path.name}.{secrets.token_hex(8)}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o644)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    with contextlib.suppress(FileNotFoundError):
                        _keep_ownership(handle.fileno(), os.stat(self.path))
                    json.dump(data, handle, indent=1, sort_keys=True)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            _sync_directory(self.path.parent)
        except OSError as exc:
            raise StoreUnavailable(f"cannot write state file {str(self.path)!r}: "
                                   f"{exc.strerror}") from exc

    def acquire_lease(self, holder: str, ttl: float) -> Lease:
        """The lease lives in the file, under the same lock as the states. A lease that ran
        out stays in the file until someone else takes it (or its holder releases it), so it
        still says who had it last."""
        with self._locked():
            now = time.time()
            data = self._read()
            if _lease_holder(data, now) not in (None, holder):
                return Lease.REFUSED
            last = data.get("lease")
            kept = isinstance(last, dict) and last.get("holder") == holder
            data["lease"] = {"holder": holder, "expires": now + ttl}
            self._write(data)
            return Lease.KEPT if kept else Lease.TAKEN

    def release_lease(self, holder: str) -> None:
        with self._locked():
            data = self._read()
            lease = data.get("lease")
            if isinstance(lease, dict) and lease.get("holder") == holder:
                data.pop("lease")
                self._write(data)

    def close(self) -> None:
        """Nothing held between calls."""


def _keep_ownership(fd: int, replaced: os.stat_result) -> None:
    """Give the new file (``fd``) the owner, group and mode of the file it replaces. A kept
    mode without the group is worse than none: a 640 file that a group read would pass to the
    writer's group. Owner and group are kept as far as this process may set them (root: both;
    another user: a group it is in), before the mode (a chown clears set-id bits)."""
    for uid, gid in ((replaced.st_uid, replaced.st_gid), (-1, replaced.st_gid)):
        try:
            os.fchown(fd, uid, gid)
            break
        except OSError:
            continue
    os.fchmod(fd, stat.S_IMODE(replaced.st_mode))


def _sync_directory(path: Path) -> None:
    """``fsync`` the directory after a replace: the file's own ``fsync`` makes its contents
    durable, not the rename that gave them its name, so after a power cut the directory could
    still name the previous file (an operator's acknowledged rollback undone)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
        # A file system that cannot sync a directory (some network and FUSE ones): nothing
        # more can be done, and the write itself took place.
    finally:
        os.close(fd)


def _lease_holder(data: dict[str, Any], now: float) -> object:
    """Who holds the lease in the file at ``now`` (``None``: nobody; it ran out)."""
    lease = data.get("lease")
    if not isinstance(lease, dict):
        return None
    try:
        expires = float(lease.get("expires", 0.0))
    except (TypeError, ValueError):
        return None  # an unreadable lease is an expired one
    return lease.get("holder") if expires > now else None


def _text(raw: Any) -> str:
    """A rollout's entry in the file as text, the same for the same entry on every read."""
    return json.dumps(raw, sort_keys=True, separators=(",", ":"))


def _is_state(name: str, raw: Any) -> bool:
    try:
        parse_stored(name, raw)
    except ValueError:
        return False
    return True
