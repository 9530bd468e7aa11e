"""Who tells the low-level policy what to do at run time: SRT-H's high level and the operator.

``HighLevelRunner`` runs a high-level policy (``policies/hierarchy.py``) every
``every`` ticks, a lower rate than chunk requests, on the frame history it was trained with;
it smooths the class probabilities over time (an exponential moving average) and chooses the
instruction that travels with the next chunk requests: the corrective instruction while the
smoothed correction probability is over 0.5, the step instruction otherwise. The controller
gives an operator's override precedence over it (``runtime.controller``).

Operator messages come from ``rtvla operator`` over the controller's PULL socket, or from an
``operator_script`` in the run config (``scripted_operator``) for evaluations.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from runtime.drivers.base import Observation
from runtime.protocol import EStop, OperatorInstruction

if TYPE_CHECKING:
    from policies.hierarchy import HighLevelPolicy
    from runtime.controller import OperatorMessage
    from runtime.runlog import RunLog

log = logging.getLogger(__name__)

CORRECTION_THRESHOLD = 0.5  # smoothed correction probability above which the corrective is sent
SOURCE_COLORS = {"task": "0.8", "high_level": "tab:blue", "operator": "tab:red"}


class HighLevelRunner:
    """A high-level policy at run time (``runtime.controller.HighLevel``).

    every: ticks between predictions (tick 0, every, 2 * every, ...); smoothing: weight of the
    previous smoothed probabilities in the moving average (0: no smoothing). The frames it
    reads are ``history`` observations ``stride`` ticks apart, ending at the prediction tick;
    before the run's first tick they repeat tick 0, as training clamps to the episode start.
    """

    def __init__(self, policy: HighLevelPolicy, every: int = 10, smoothing: float = 0.5) -> None:
        if every < 1:
            raise ValueError(f"high_level_every={every} must be >= 1 tick")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"high_level_smoothing={smoothing} must be in [0, 1)")
        self.policy, self.every, self.smoothing = policy, every, smoothing
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
        if self.correction > CORRECTION_THRESHOLD and vocab.corrective:
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


def make_high_level(path: str | None, every: int, smoothing: float, hz: float
                    ) -> HighLevelRunner | None:  # fmt: skip
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
    return HighLevelRunner(policy, every, smoothing)


# ---- operator -------------------------------------------------------------------------------


def operator_message(
    robot_id: str,
    instruction: str = "",
    timeout_s: float = 0.0,
    release: bool = False,
    estop: bool | None = None,
    reason: str = "operator",
) -> OperatorMessage:
    """One operator message: an e-stop (``estop`` True engages, False releases), a release of
    the override (``release``), or an override by ``instruction`` (``timeout_s`` 0: until
    released)."""
    if estop is not None:
        return EStop(robot_id=robot_id, reason=reason, engage=bool(estop))
    if not release and not instruction:
        raise ValueError(
            "an operator message needs an instruction (e.g. instruction='move left'), "
            "release=true or estop=true|false"
        )
    return OperatorInstruction(
        robot_id=robot_id, instruction=instruction, timeout_s=float(timeout_s), release=release
    )


SCRIPT_KEYS = {"tick", "instruction", "timeout_s", "release", "estop", "reason"}


def scripted_operator(
    entries: Sequence[Mapping], robot_id: str
) -> list[tuple[int, OperatorMessage]]:
    """``operator_script`` entries, e.g. ``{tick: 30, instruction: "move left", timeout_s: 1}``,
    ``{tick: 60, release: true}`` or ``{tick: 90, estop: true}``, as (tick, message) pairs."""
    script = []
    for entry in entries:
        unknown = set(entry) - SCRIPT_KEYS
        if unknown or "tick" not in entry:
            raise ValueError(
                f"operator_script entry {dict(entry)} needs a tick and only the keys "
                f"{sorted(SCRIPT_KEYS)}"
            )
        fields = {k: v for k, v in entry.items() if k != "tick"}
        script.append((int(entry["tick"]), operator_message(robot_id, **fields)))
    return script


def plot_instructions(run_log: RunLog, path: str | Path, title: str = "") -> Path:
    """Actions over ticks above a band coloured by who chose the instruction, each change
    of instruction written where it happens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = run_log.ticks
    fig, (top, band) = plt.subplots(
        2, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1.4]}
    )
    top.plot(t["tick"], t["action"], linewidth=1)
    top.set_ylabel("action (planned)")
    top.set_title(title)
    changes = [0, *np.flatnonzero(t["instruction"][1:] != t["instruction"][:-1]) + 1]
    for start, end in zip(changes, [*changes[1:], len(t["tick"])], strict=True):
        source = str(t["instruction_source"][start])
        band.axvspan(start, end, color=SOURCE_COLORS.get(source, "0.5"), alpha=0.6)
        band.text(start, 0.03, f" {t['instruction'][start]}", rotation=90, fontsize=7,
                  va="bottom", clip_on=True)  # fmt: skip
    band.set_yticks([])
    band.set_xlabel("tick")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, alpha=0.6) for c in SOURCE_COLORS.values()]
    band.legend(handles, list(SOURCE_COLORS), loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
