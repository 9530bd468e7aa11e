"""Stand-ins for a policy and a robot, shared by the tests and the benchmarks.

The policies implement ``runtime.wire.info.ChunkPolicy`` (what ``LocalPolicyClient`` and
``PolicyServer`` call), the driver ``runtime.robot.drivers.base.Driver``. Like the rest of the
robot side this module imports numpy only, so it works on a robot computer without torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from runtime.robot.drivers.base import ActionLimits, DriverContext
from runtime.wire.info import ChunkPolicy, PolicyInfo
from runtime.wire.keys import STATE
from runtime.wire.protocol import ObservationRequest

WIDE_OPEN = 1e6  # bounds and largest step of JumpDriver's default limits: nothing is clamped


class ConstantPolicy:
    """(H, A) chunks of one value, instantly: ``fill``, or each request's tick when ``fill`` is
    None (so a chunk says which observation it answers)."""

    def __init__(
        self,
        chunk_length: int,
        action_dim: int,
        fill: float | None = 0.0,
        model_id: str = "constant",
        fps: float = 30.0,
    ) -> None:
        self.info = PolicyInfo(model_id, chunk_length, action_dim, fps)
        self.fill = fill

    def infer(self, requests: Sequence[ObservationRequest]) -> list[np.ndarray]:
        shape = (self.info.chunk_length, self.info.action_dim)
        fills = [r.tick if self.fill is None else self.fill for r in requests]
        return [np.full(shape, fill, np.float32) for fill in fills]


class RecordingPolicy:
    """Wraps a policy and keeps what it was asked: every request in ``requests`` and the batch
    size of every ``infer`` call in ``batch_sizes`` (recorded before the policy runs)."""

    def __init__(self, policy: ChunkPolicy) -> None:
        self.policy = policy
        self.info: PolicyInfo = policy.info
        self.requests: list[ObservationRequest] = []
        self.batch_sizes: list[int] = []

    def infer(self, requests: Sequence[ObservationRequest]) -> list[np.ndarray]:
        self.requests.extend(requests)
        self.batch_sizes.append(len(requests))
        return self.policy.infer(requests)


class JumpDriver(DriverContext):
    """A robot whose joints jump to each command at once.

    ``names`` are the joints, or their number ``n`` for joints ``j0 ... j{n-1}``. The state is
    the joint positions, starting at ``start`` (zeros by default). ``commands`` keeps every
    command; ``hooks[t]`` runs right after the t-th one (counting from 0), so a test can act
    on the controller mid-run. ``limits`` default to bounds nothing reaches.
    """

    def __init__(
        self,
        names: Sequence[str] | int = 2,
        start: Sequence[float] | None = None,
        limits: ActionLimits | None = None,
        hooks: dict[int, Callable[[], None]] | None = None,
    ) -> None:
        if isinstance(names, int):
            names = [f"j{i}" for i in range(names)]
        self.names = tuple(names)
        n = len(self.names)
        self.position = np.zeros(n, np.float32) if start is None else np.array(start, np.float32)
        self.commands: list[np.ndarray] = []
        self.hooks = hooks or {}
        self.connected = False
        self._limits = limits or ActionLimits(
            low=[-WIDE_OPEN] * n, high=[WIDE_OPEN] * n, max_delta=[WIDE_OPEN] * n, names=self.names
        )

    def connect(self) -> None:
        self.connected = True

    def observe(self) -> dict[str, np.ndarray]:
        return {STATE: self.position.copy()}

    def act(self, action: np.ndarray) -> None:
        self.commands.append(np.array(action))
        self.position = np.array(action, np.float32)
        hook = self.hooks.get(len(self.commands) - 1)
        if hook is not None:
            hook()

    def close(self) -> None:
        self.connected = False

    def feature_spec(self) -> dict[str, dict]:
        spec = {"dtype": "float32", "shape": (len(self.names),), "names": list(self.names)}
        return {STATE: spec, "action": spec}

    def limits(self) -> ActionLimits:
        return self._limits
