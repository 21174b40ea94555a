"""Deterministic, monotone assignment of a call to blue or green. Pure: no I/O, no locks.

``green  <=>  bucket(rollout, key) < weight_bp`` where ``bucket`` is a keyed BLAKE2b hash of the
key (keyed by the rollout name) reduced to ``0..9_999``. A key's bucket never changes, so while the
weight only rises a key that is on green stays on green. Calls without a key draw a fresh bucket.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from contextvars import ContextVar
from hashlib import blake2b
from typing import Literal

__all__ = ["BUCKETS", "Environment", "assignment_key", "bucket", "force"]

Environment = Literal["blue", "green"]
BUCKETS = 10_000

_assignment_key: ContextVar[str | None] = ContextVar(
    "openai_bluegreen_assignment_key", default=None
)
_forced: ContextVar[Environment | None] = ContextVar("openai_bluegreen_force", default=None)


def salt_for(rollout: str) -> bytes:
    """The BLAKE2b key for a rollout (its name, hashed down if longer than BLAKE2b allows)."""
    raw = rollout.encode()
    return raw if len(raw) <= 64 else blake2b(raw, digest_size=32).digest()


def bucket(salt: bytes, key: str) -> int:
    """The key's bucket in ``0..BUCKETS-1`` for the rollout whose salt is given."""
    try:
        raw = key.encode()
    except UnicodeEncodeError:  # a lone surrogate (a key decoded with surrogateescape): still a key
        raw = key.encode("utf-8", "surrogatepass")
    digest = blake2b(raw, digest_size=8, key=salt).digest()
    return int.from_bytes(digest, "big") % BUCKETS


_random = random.random


def random_bucket() -> int:
    """A uniform bucket in ``0..BUCKETS-1`` (``random()`` is one C call; ``randrange`` is four
    Python ones)."""
    return int(_random() * BUCKETS)


def current_key() -> str | None:
    return _assignment_key.get()


def current_force() -> Environment | None:
    return _forced.get()


@contextlib.contextmanager
def assignment_key(key: str) -> Iterator[None]:
    """Route every call inside the block by ``key`` (e.g. a conversation id): sticky, monotone.

    Example:
        >>> with openai_bluegreen.assignment_key("conversation-123"):
        ...     client.chat.completions.create(model="gpt-4.1", messages=msgs)
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"assignment_key must be a non-empty string (got {key!r})")
    token = _assignment_key.set(key)
    try:
        yield
    finally:
        _assignment_key.reset(token)


@contextlib.contextmanager
def force(environment: Environment) -> Iterator[None]:
    """Send every routed call inside the block to ``environment`` ("blue" or "green")."""
    if environment not in ("blue", "green"):
        raise ValueError(f"force() takes 'blue' or 'green' (got {environment!r})")
    token = _forced.set(environment)
    try:
        yield
    finally:
        _forced.reset(token)
