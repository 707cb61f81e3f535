"""Where the package keeps what it ships: the Hydra config tree (inside the package, in the wheel)."""

from __future__ import annotations

from pathlib import Path

# An absolute path: Hydra resolves relative ones against the *module* when a command runs as `python -m`.
CONF_DIR = str(Path(__file__).resolve().parent / "conf")
