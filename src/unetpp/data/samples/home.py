"""Where fetched samples live; imported by the public face (``unetpp.data.data_home``) and the catalog."""

from __future__ import annotations

import os
from pathlib import Path


def data_home() -> Path:
    """Where ``unetpp data fetch`` keeps samples: ``$UNETPP_DATA`` or ``~/.cache/unetpp/data``."""
    env = os.environ.get("UNETPP_DATA")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base).expanduser() if base else Path.home() / ".cache") / "unetpp" / "data"
