"""Shared pytest fixtures.

The tests folder is not a package (a dependency ships a top-level ``tests`` package), so
shared helpers live here as fixtures rather than in an importable module.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
