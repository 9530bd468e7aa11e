"""SRT-H's high level at run time: it tells the low-level policy what to do.

``HighLevelRunner`` runs a high-level policy (``policies/hierarchy.py``) every
``every`` ticks, a lower rate than chunk requests, on the frame history it was trained with;
it smooths the class probabilities over time (an exponential moving average) and chooses the
instruction that travels with the next chunk requests: the corrective instruction while the
smoothed correction probability is over 0.5, the step instruction otherwise. The controller
gives an operator's override precedence over it (``runtime.robot.controller``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from policies.hierarchy import HighLevelPolicy

log = logging.getLogger(__name__)

Observation = dict[str, np.ndarray]  # feature key -> array, as a driver observes it

CORRECTION_THRESHOLD = 0.5  # smoothed correction probability above which the corrective is sent


class HighLevelRunner:
    """A high-level policy at run time (``runtime.robot.controller.HighLevel``).

    every: ticks between predictions (tick 0, every, 2 * every, ...); smoothing: weight of the
    previous smoothed probabilities in the moving average (0: no smoothing). The frames it
    reads are ``history`` observations ``stride`` ticks apart, ending at the prediction tick;
    before the run's first tick they repeat tick 0, as training clamps to the episode start.
    """

    def __init__(
        self,
        policy: HighLevelPolicy,
        every: int = 10,
        smoothing: float = 0.5,
        corrections: bool = True,
    ) -> None:
        if every < 1:
            raise ValueError(f"high_level_every={every} must be >= 1 tick")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"high_level_smoothing={smoothing} must be in [0, 1)")
        self.policy, self.every, self.smoothing = policy, every, smoothing
        self.corrections = corrections  # False: the step instruction always (an ablation)
        self.history, self.stride = policy.config.history, policy.config.stride
        self.reset("")

    def reset(self, task: str) -> None:
        self.task = task
        self._frames: dict[int, Observation] = {}
        self._probs: dict[str, np.ndarray] | None = None
        self.predictions = 0

    def update(self, tick: int, observe: Callable[[], Observation]) -> None:
        if self._needs_frame(tick):
            self._frames[tick] = observe()
        if tick % self.every == 0:
            self._predict(tick)

    def _needs_frame(self, tick: int) -> bool:
        """Tick 0, and every tick that the history of a coming prediction reads."""
        return tick == 0 or any((tick + k * self.stride) % self.every == 0
                                for k in range(self.history))  # fmt: skip

    @property
    def correction(self) -> float | None:
        """The smoothed correction probability, None before the first prediction."""
        return None if self._probs is None else float(self._probs["correction"][0])

    @property
    def instruction(self) -> str | None:
        if self._probs is None:
            return None
        vocab = self.policy.vocab
        if self.corrections and self.correction > CORRECTION_THRESHOLD and vocab.corrective:
            return vocab.corrective[int(np.argmax(self._probs["corrective"]))]
        return vocab.step[int(np.argmax(self._probs["step"]))]

    def _predict(self, tick: int) -> None:
        ticks = [max(tick - k * self.stride, 0) for k in range(self.history - 1, -1, -1)]
        frames = [self._frames[self._latest(t)] for t in ticks]
        keep = tick - self.history * self.stride
        self._frames = {t: f for t, f in self._frames.items() if t >= keep}
        p = self.policy.predict(frames, self.task)
        new = {"step": p.step, "corrective": p.corrective, "correction": np.array([p.correction])}
        if self._probs is None:
            self._probs = new
        else:
            a = self.smoothing
            self._probs = {k: a * self._probs[k] + (1 - a) * v for k, v in new.items()}
        self.predictions += 1

    def _latest(self, tick: int) -> int:
        """The latest observed tick <= ``tick`` (the earliest one if none: ticks held by an
        e-stop are not observed)."""
        earlier = [t for t in self._frames if t <= tick]
        return max(earlier) if earlier else min(self._frames)


def make_high_level(path: str | None, every: int, smoothing: float, hz: float,
                    corrections: bool = True) -> HighLevelRunner | None:  # fmt: skip
    """The runner of the high-level checkpoint at ``path`` (None: no high level)."""
    if path is None:
        return None
    from policies.hierarchy import load_high_level

    policy = load_high_level(path)
    if abs(policy.fps - hz) > 1e-6:
        log.warning(
            "the high-level policy was trained at %g fps and runs at %g Hz: its history stride "
            "and look-ahead are in ticks of the training rate",
            policy.fps,
            hz,
        )
    return HighLevelRunner(policy, every, smoothing, corrections)
