"""File-system helpers shared by ``checkpoint`` and ``export``."""

from __future__ import annotations

import os


def sync_dir(directory) -> None:
  """Makes renames inside ``directory`` durable where the platform allows it (POSIX).

  A no-op where a directory cannot be opened or synced (e.g. Windows).

  >>> import tempfile
  >>> from jaxprune import core
  >>> core.sync_dir(tempfile.gettempdir())
  """
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)
