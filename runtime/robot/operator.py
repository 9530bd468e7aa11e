"""Operator messages: an instruction override, its release, or an e-stop, for the controller.

They come from ``rtvla operator`` over the controller's PULL socket, or from an
``operator_script`` in the run config (``scripted_operator``) for evaluations. The controller
gives an operator's override precedence over the high level's choice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
