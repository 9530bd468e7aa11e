"""Operator messages: an instruction override, its release, or an e-stop, for the controller.

They come from ``rtvla operator`` over the controller's PULL socket, or from an
``operator_script`` in the run config (``scripted_operator``) for evaluations. The controller
gives an operator's override precedence over the high level's choice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from runtime.wire.protocol import EStop, OperatorInstruction

OperatorMessage = OperatorInstruction | EStop


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


class WatchingOperator:
    """A scripted operator watching a simulated cube task (pick_place, conveyor), saying what
    a person at the robot would: when the open gripper is down at grasp height but more than
    ``threshold`` m beside the named cube, the direction to it ("move left", "move back and
    right"); when the cube, once carried, lies on the table again, "pick up the dropped cube".
    Each message overrides the instruction for ``timeout_s``; it looks every ``every`` ticks
    and not while its last message is in force. Called with the tick (``Controller``'s
    ``operator_watch``), it returns the messages to apply; tick 0 starts a new episode.
    """

    GRASP_HEIGHT = 0.06  # m: a grip site below this, not holding, is about to grasp
    LIFTED = 0.04  # m: a held cube above this has been carried
    ON_TABLE = 0.03  # m: a cube below this lies on the table

    def __init__(self, env, robot_id: str, hz: float, threshold: float = 0.03,
                 every: int = 5, timeout_s: float = 0.5) -> None:  # fmt: skip
        if not hasattr(env.task, "holding"):
            raise ValueError(
                f"operator_watch needs a cube task (pick_place, conveyor), not {env.task.name}"
            )
        if threshold <= 0 or every < 1 or timeout_s <= 0:
            raise ValueError("operator_watch: threshold and timeout_s must be > 0, every >= 1")
        self.env, self.robot_id, self.threshold, self.every = env, robot_id, threshold, every
        self.hold_ticks = max(1, round(timeout_s * hz))
        self.timeout_s = timeout_s
        self.said: list[tuple[int, str]] = []  # (tick, instruction) of this episode

    def __call__(self, tick: int) -> list[OperatorMessage]:
        if tick == 0:
            self._quiet_until, self._carried, self.said = 0, False, []
        if tick < self._quiet_until or tick % self.every:
            return []
        instruction = self._assess()
        if instruction is None:
            return []
        self._quiet_until = tick + self.hold_ticks
        self.said.append((tick, instruction))
        return [operator_message(self.robot_id, instruction, self.timeout_s)]

    def _assess(self) -> str | None:
        from sim.tasks.base import direction_words

        task, env = self.env.task, self.env
        if task.success():
            return None
        cube = task.cube_pos(task.color)  # (3,)
        grip = env.data.site_xpos[env.robot.grip_site]  # (3,)
        if task.holding(task.color):
            self._carried |= bool(cube[2] > self.LIFTED)
            return None
        if self._carried and cube[2] < self.ON_TABLE:
            self._carried = False
            return "pick up the dropped cube"
        error = (cube - grip)[:2]
        if grip[2] < self.GRASP_HEIGHT and float(np.hypot(*error)) > self.threshold:
            return direction_words(error)
        return None
