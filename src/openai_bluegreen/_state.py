"""The one global: the installed router (``None`` = not installed; wrappers pass through)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._router import Router

router: Router | None = None
