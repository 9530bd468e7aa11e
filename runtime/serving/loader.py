"""The one loader: a checkpoint (or the synthetic model) becomes a served ``FlowChunkPolicy``;
a lerobot policy (``lerobot:PATH``) a ``LeRobotChunkPolicy``.

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
from runtime.wire.info import ChunkPolicy, PolicyInfo

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"  # the analytic Gaussian flow model: no weights needed
LEROBOT = "lerobot:"  # lerobot:PATH, a lerobot PreTrainedPolicy (runtime/serving/lerobot_policy.py)
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
) -> ChunkPolicy:
    """``checkpoint``: a training run, one of its ``checkpoints/step_N``, an exported folder,
    ``"synthetic"`` (then ``chunk_length``, ``action_dim`` and ``fps`` shape it), or
    ``"lerobot:PATH"``, a lerobot policy saved with ``save_pretrained`` (``fps`` is its
    control rate; it is served plainly, so ``num_steps`` and ``beta`` do not apply).
    ``num_steps`` / ``beta``: None takes the checkpoint's (the synthetic model: 10 / 5)."""
    if str(checkpoint).startswith(LEROBOT):
        from runtime.serving.lerobot_policy import load_lerobot_policy

        if num_steps is not None or beta is not None:
            log.warning("num_steps and beta apply to flow policies only: ignored for %s",
                        checkpoint)  # fmt: skip
        return load_lerobot_policy(str(checkpoint).removeprefix(LEROBOT), device, fps)
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
    info = PolicyInfo(
        flow.model_id, flow.chunk_length, flow.action_dim, flow.fps, flow.features,
        joint_names=flow.joint_names, observation_history=flow.observation_history,
    )  # fmt: skip
    return FlowChunkPolicy(flow, num_steps=num_steps or trained_steps, beta=beta, info=info)
