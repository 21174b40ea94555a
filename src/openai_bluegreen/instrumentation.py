"""OpenTelemetry instrumentor, so ``opentelemetry-instrument python app.py`` routes with no code.

Registered under the entry-point group ``opentelemetry_instrumentor`` as ``openai_bluegreen``
(not ``openai``, which the plain OpenAI instrumentations use: disabling one must not disable
the other). Needs ``opentelemetry-instrumentation`` (the ``instrument`` extra).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]  # untyped
    BaseInstrumentor,
)

from ._errors import BlueGreenError
from ._install import install, uninstall

logger = logging.getLogger("openai_bluegreen")

__all__ = ["BlueGreenInstrumentor"]

_INSTRUMENTS = ("openai >= 1.56.2, < 4",)


class BlueGreenInstrumentor(BaseInstrumentor):  # type: ignore[misc]  # untyped base class
    """Installs blue/green routing with the providers the OpenTelemetry distro configured.

    ``instrument(config=...)`` takes the same config as :func:`openai_bluegreen.install`;
    without it the config comes from ``OPENAI_BLUEGREEN_CONFIG``.
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        return _INSTRUMENTS

    def _instrument(self, **kwargs: Any) -> None:
        config = kwargs.get("config")
        try:
            install(
                config,
                tracer_provider=kwargs.get("tracer_provider"),
                meter_provider=kwargs.get("meter_provider"),
                logger_provider=kwargs.get("logger_provider"),
            )
        except BlueGreenError as exc:
            if config is not None:
                raise  # asked for in code: the caller gets the error
            # Zero-code (``opentelemetry-instrument``): OpenTelemetry's loader stops at the
            # first instrumentor that raises, and the app's other instrumentations (requests,
            # its web framework, ...) would never load. The app runs unrouted, as without us.
            logger.error("openai-bluegreen: not routing any call: %s", exc)

    def _uninstrument(self, **kwargs: Any) -> None:
        uninstall()
