"""``import openai_bluegreen.auto`` installs from the environment (``OPENAI_BLUEGREEN_CONFIG``)."""

from ._install import install

install()
