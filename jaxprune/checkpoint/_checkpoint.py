"""Compatibility names for modules that imported the former single checkpoint module.

The implementation lives in ``_save``, ``_restore``, ``_target``, ``_manifest``, ``_sync`` and
``_tree``; new code imports the public names from ``jaxprune.checkpoint``.
"""

from jaxprune.checkpoint._manifest import MANIFEST
from jaxprune.checkpoint._restore import abstract, metadata, restore
from jaxprune.checkpoint._save import save
from jaxprune.checkpoint._tree import keys_of as _keys

__all__ = ["MANIFEST", "abstract", "metadata", "restore", "save", "_keys"]
