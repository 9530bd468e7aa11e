"""Watch a rollout live: the controller streams each tick to a ``Display`` (``display=rerun``).

``RerunDisplay`` logs, on a ``tick`` timeline (counting on across episodes) and an ``episode``
timeline:

    cameras/<name>               every camera of the observation, each ``camera_every`` ticks
    joints/<joint>/target        the joint target executed this tick (nothing while holding)
    joints/<joint>/actual        the joint position observed after it
    chunk/index                  the executed action's index in its chunk (a saw tooth: each
                                 drop is a seam, where the next chunk takes over)
    events                       text: episode starts, seams (chunk k -> k'), holds, and each
                                 change of the instruction with its source (task, high level,
                                 operator)
    instruction                  the current instruction, as a text document

rerun-sdk comes with the optional ``viz`` group (``uv sync --group viz``, as lerobot's ``viz``
extra). ``display_target`` says where the stream goes: ``spawn`` (a local viewer, the default),
``rerun+http://HOST:9876/proxy`` (a viewer running elsewhere, e.g. ``rerun --serve-web``'s
machine), or a ``.rrd`` file path, opened later with ``rerun FILE.rrd``.

The observation after each tick is read from the driver: on the simulator it is the one the
next tick renders anyway; on a real robot it is one more read per tick.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from runtime.robot.executors import PlannedAction
from runtime.wire.keys import IMAGES, STATE

Observation = dict[str, np.ndarray]


class Display(Protocol):
    """What the controller tells a live display; ``tick`` runs once per control tick."""

    def start_episode(self, instruction: str) -> None: ...

    def tick(
        self,
        tick: int,
        observe: Callable[[], Observation],
        planned: PlannedAction | None,
        hold_reason: str,
        instruction: str,
        source: str,
    ) -> None: ...

    def close(self) -> None: ...


class RerunDisplay:
    """A ``Display`` that streams to rerun (module docstring)."""

    def __init__(
        self,
        joint_names: Sequence[str],
        target: str = "spawn",
        camera_every: int = 1,
        recording: Any = None,
        rerun: Any = None,
    ) -> None:
        """joint_names: the driver's action names (``driver.limits().names``); target: where
        the stream goes (module docstring); camera_every: log cameras every N ticks (cheaper
        on a real robot); recording and rerun: an existing ``rerun.RecordingStream`` and the
        module whose archetypes it logs (tests give stand-ins), else rerun's own, with a
        stream connected to ``target``."""
        if not isinstance(camera_every, int) or camera_every < 1:
            raise ValueError(f"display_camera_every={camera_every!r} must be an integer >= 1")
        if rerun is None:
            try:
                import rerun
            except ImportError:
                raise ImportError(
                    "display=rerun needs rerun-sdk, from the optional viz group: run "
                    "`uv sync --group viz` (or `uv run --group viz rtvla ...`)"
                ) from None
        rr = self._rr = rerun
        self.joint_names = [str(n) for n in joint_names]
        self.camera_every = camera_every
        if recording is None:
            recording = rr.RecordingStream("rtvla")
            if target == "spawn":
                recording.spawn()
            elif target.startswith(("rerun://", "rerun+http://", "rerun+https://")):
                recording.connect_grpc(target)
            elif target.endswith(".rrd"):
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                recording.save(target)
            else:
                raise ValueError(
                    f"display_target={target!r}: use spawn (a local viewer), "
                    "rerun+http://HOST:9876/proxy (a running viewer) or a path ending in .rrd"
                )
        self.rec = recording
        self._tick = 0  # ticks logged so far, over all episodes
        self._episode = -1
        self._chunk: int | None = None
        self._instruction: tuple[str, str] | None = None
        self._held = False

    def start_episode(self, instruction: str) -> None:
        self._episode += 1
        self._chunk, self._instruction, self._held = None, None, False
        self._time(-1)
        self.rec.log("events", self._rr.TextLog(f"episode {self._episode}: {instruction}"))

    def tick(
        self,
        tick: int,
        observe: Callable[[], Observation],
        planned: PlannedAction | None,
        hold_reason: str,
        instruction: str,
        source: str,
    ) -> None:
        rr, rec = self._rr, self.rec
        self._time(tick)
        if (instruction, source) != self._instruction:
            self._instruction = (instruction, source)
            rec.log("events", rr.TextLog(f"instruction ({source}): {instruction}"))
            rec.log("instruction", rr.TextDocument(f"{instruction}\n\n(from {source})"))
        if planned is None:
            if not self._held:
                rec.log("events", rr.TextLog(f"hold: {hold_reason}", level="WARN"))
            self._held = True
        else:
            self._held = False
            if self._chunk is not None and planned.chunk != self._chunk:
                rec.log("events", rr.TextLog(f"seam: chunk {self._chunk} -> {planned.chunk}"))
            self._chunk = planned.chunk
            rec.log("chunk/index", rr.Scalars(float(planned.index)))
            for name, value in zip(self.joint_names, planned.action, strict=False):
                rec.log(f"joints/{name}/target", rr.Scalars(float(value)))
        obs = observe()
        state = obs.get(STATE)
        if state is not None:
            for name, value in zip(self.joint_names, np.asarray(state), strict=False):
                rec.log(f"joints/{name}/actual", rr.Scalars(float(value)))
        if tick % self.camera_every == 0:
            for key, image in obs.items():
                if key.startswith(IMAGES) and np.asarray(image).ndim == 3:
                    rec.log(f"cameras/{key[len(IMAGES) :]}", rr.Image(np.asarray(image)))
        self._tick += 1

    def close(self) -> None:
        self.rec.flush()

    def _time(self, tick: int) -> None:
        self.rec.set_time("tick", sequence=self._tick)
        self.rec.set_time("episode", sequence=self._episode)
        self.rec.set_time("episode_tick", sequence=max(tick, 0))
