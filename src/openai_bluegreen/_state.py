"""The globals: the installed router (``None`` = not installed; wrappers pass through) and
the watcher of its scheduled rollouts."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._router import Router
    from ._watcher import Watcher

router: Router | None = None
watcher: Watcher | None = None
