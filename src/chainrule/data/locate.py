"""Where data sets live: `--data DIR`, then `$CHAINRULE_DATA/<name>`, then the user cache.

The user cache directory is where downloads go (platformdirs: `~/.cache/chainrule` on Linux).
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def cache_dir(name: str) -> Path:
    """The per-user cache folder for data set `name` (not created)."""
    return Path(platformdirs.user_cache_dir("chainrule")) / name


def candidate_dirs(name: str, data_dir=None) -> list[Path]:
    """Folders to look in for data set `name`, in order of precedence.

    An explicit `data_dir` may be the data set's own folder or its parent (so `--data ../shared/data`
    and `--data ../shared/data/mnist` both work); an explicit choice excludes the fallbacks.
    """
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        return [d / name, d]
    dirs = []
    env = os.environ.get("CHAINRULE_DATA")
    if env:
        dirs.append(Path(env).expanduser() / name)
    dirs.append(cache_dir(name))
    return dirs
