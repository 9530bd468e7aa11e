"""The one loader: a checkpoint (or the synthetic model) becomes a served ``FlowChunkPolicy``.

``rtvla serve``, ``server=local:...`` (run, eval, sweep, demo) all call ``load_policy``, so
the same checkpoint samples the same way wherever it runs. The sampling settings are stored
once, in the checkpoint's policy config (``num_steps``); an explicit ``num_steps`` overrides
them with a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

from runtime.serving.sampling import FlowChunkPolicy
from runtime.serving.synthetic import GaussianChunkModel
from runtime.wire.info import PolicyInfo

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"  # the analytic Gaussian flow model: no weights needed
BETA = 5.0  # RTC guidance weight clip (Black, Galliker, Levine 2025, eq. 4)


def load_policy(
    checkpoint: str | Path,
    device: str = "cpu",
    *,
    num_steps: int | None = None,
    beta: float | None = None,
    chunk_length: int = 50,
    action_dim: int = 6,
    fps: float = 30.0,
) -> FlowChunkPolicy:
    """``checkpoint``: a training run, one of its ``checkpoints/step_N``, an exported folder,
    or ``"synthetic"`` (then ``chunk_length``, ``action_dim`` and ``fps`` shape it).
    ``num_steps`` / ``beta``: None takes the checkpoint's (the synthetic model: 10 / 5)."""
    beta = BETA if beta is None else beta
    if str(checkpoint) == SYNTHETIC:
        model = GaussianChunkModel(chunk_length=chunk_length, action_dim=action_dim, fps=fps)
        return FlowChunkPolicy(model, num_steps=num_steps or 10, beta=beta)
    from policies.inference import load_flow_policy

    log.info("loading %s on %s", checkpoint, device)
    flow = load_flow_policy(checkpoint, device)
    trained_steps = flow.model.config.num_steps
    if num_steps is not None and num_steps != trained_steps:
        log.warning(
            "sampling %s with num_steps=%d, not the %d its config stores", flow.model_id,
            num_steps, trained_steps,
        )  # fmt: skip
    info = PolicyInfo(flow.model_id, flow.chunk_length, flow.action_dim, flow.fps, flow.features)
    return FlowChunkPolicy(flow, num_steps=num_steps or trained_steps, beta=beta, info=info)
