"""Headless camera rendering: OpenGL backend choice and a small multi-camera renderer.

MuJoCo picks its OpenGL backend from ``MUJOCO_GL`` once, when ``mujoco`` is first imported,
so this module chooses it on import, before importing ``mujoco`` itself; ``sim/__init__.py``
imports it first. A value the user set is kept; otherwise EGL is preferred, then OSMesa.
"""

from __future__ import annotations

import ctypes.util
import logging
import os
import sys

logger = logging.getLogger(__name__)

_LIBRARIES = {"egl": "EGL", "osmesa": "OSMesa"}


def configure_gl() -> None:
    """Set ``MUJOCO_GL`` to an available headless backend if it is unset."""
    if "MUJOCO_GL" not in os.environ:
        found = [name for name, lib in _LIBRARIES.items() if ctypes.util.find_library(lib)]
        backend = found[0] if found else "egl"
        if "mujoco" in sys.modules:
            logger.warning(
                "mujoco was imported before sim with MUJOCO_GL unset, so it renders with its "
                "default backend; for headless rendering import sim first or set MUJOCO_GL=%s",
                backend,
            )
        else:
            os.environ["MUJOCO_GL"] = backend


def gl_backend() -> str:
    """The OpenGL backend MuJoCo renders with (the value of ``MUJOCO_GL``)."""
    return os.environ.get("MUJOCO_GL", "glfw")


configure_gl()

import mujoco  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402


class CameraRenderer:
    """Renders named cameras of one model to uint8 (H, W, 3) images.

    Shadows, reflections, the skybox and multisampling are off: the scenes are made of a few
    primitives and must render fast on a CPU (llvmpipe).
    """

    def __init__(self, model: mujoco.MjModel, size: int) -> None:
        try:
            self._renderer = mujoco.Renderer(model, height=size, width=size)
        except Exception as err:
            raise RuntimeError(
                f"could not create an OpenGL context with MUJOCO_GL={gl_backend()!r} ({err}); "
                "install EGL (libegl1) or OSMesa and set MUJOCO_GL=egl or MUJOCO_GL=osmesa "
                "before importing mujoco, or create the environment with render=False"
            ) from err
        flags = self._renderer.scene.flags
        for flag in (
            mujoco.mjtRndFlag.mjRND_SHADOW,
            mujoco.mjtRndFlag.mjRND_REFLECTION,
            mujoco.mjtRndFlag.mjRND_SKYBOX,
        ):
            flags[flag] = False

    def render(self, data: mujoco.MjData, camera: str) -> np.ndarray:
        """Image uint8 (H, W, 3) seen by ``camera`` in the current state of ``data``."""
        self._renderer.update_scene(data, camera=camera)
        return self._renderer.render()

    def close(self) -> None:
        self._renderer.close()
