"""Where the project's shared folders are found: ``clusters/`` and ``templates/``.

Users run hpcllm from their project directory (a clone, with its own profiles and templates), so
that comes first; an installed hpcllm falls back to the copies pip put in ``<prefix>/share/hpcllm``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[1]


def project_folder(name: str, env_var: str) -> Path:
    """``$env_var`` if set, else the first of ./name, <checkout>/name, <prefix>/share/hpcllm/name
    that exists (./name when none does, so error messages name the expected place)."""
    override = os.environ.get(env_var)
    if override:
        return Path(override)
    candidates = [Path(name), _CHECKOUT / name, Path(sys.prefix) / "share" / "hpcllm" / name]
    return next((c for c in candidates if c.is_dir()), candidates[0])
