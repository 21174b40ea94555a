"""Test seam: a real OpenAI-compatible server on loopback, shipped for users' own tests.

>>> from openai_bluegreen.testing import SimulatedUpstream
>>> with SimulatedUpstream("green", latency=0.02, error_rates={503: 0.1}) as green:
...     client = openai.OpenAI(base_url=green.base_url, api_key="test")

``UpstreamProcess`` serves the same from a child process, so its latency does not depend on
the test's own process getting the GIL.
"""

from ._process import UpstreamProcess
from ._server import RecordedRequest, SimulatedUpstream
from ._settings import UpstreamSettings

__all__ = ["RecordedRequest", "SimulatedUpstream", "UpstreamProcess", "UpstreamSettings"]
