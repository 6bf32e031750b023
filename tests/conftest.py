"""Every test runs on 8 fake CPU devices (set before jax is imported).

The tests mirror the package (``tests/masks`` for ``jaxprune.masks``, ...); shared helpers
(``reference``, ``multiprocess``) live in this folder, put on ``sys.path`` here for every
sub-folder.
"""

import os
import pathlib
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(scope="session")
def mesh():
  """A 1-D mesh over the 8 fake CPU devices, axis name ``"x"``."""
  devices = jax.devices()
  assert len(devices) == 8, "tests expect 8 fake CPU devices (see conftest.py)"
  return jax.sharding.Mesh(devices, ("x",))
