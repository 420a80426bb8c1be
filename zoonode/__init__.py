"""zoonode: a decentralized peer node for DSO experience sharing.

The pure core lives in ``zoonode.protocol`` (wire format), ``zoonode.native`` (encoder and
BitDelta codec) and ``zoonode.selection``; the I/O shell (store, network, API) calls inward.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"

# In a clone, ``protocol/``, ``native/`` and ``config/`` sit beside ``zoonode/`` and are
# installed as zoonode.protocol, zoonode.native and zoonode.defaults (pyproject's
# package-dir). Run from the clone's root, Python finds this folder first and would not find
# those three; this finder maps them to the sibling folders, and only when those folders are
# there (an installed package has its own copies and never asks it).
_SIBLINGS = {
    "zoonode.protocol": "protocol",
    "zoonode.native": "native",
    "zoonode.defaults": "config",
}
_ROOT = Path(__file__).resolve().parent.parent


class _SourceTreeFinder(importlib.abc.MetaPathFinder):
    """Finds zoonode.protocol / .native / .defaults in a source tree; asked last."""

    def find_spec(self, fullname, path=None, target=None):
        folder = _SIBLINGS.get(fullname)
        if folder is None:
            return None
        init = _ROOT / folder / "__init__.py"
        if not init.is_file():
            return None
        return importlib.util.spec_from_file_location(
            fullname, init, submodule_search_locations=[str(init.parent)]
        )


if (_ROOT / "pyproject.toml").is_file() and not any(
    isinstance(f, _SourceTreeFinder) for f in sys.meta_path
):
    sys.meta_path.append(_SourceTreeFinder())
