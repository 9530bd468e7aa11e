"""``rtvla serve``: a policy server for controllers on this machine or others.

Serves a training checkpoint, or with ``checkpoint=synthetic`` the analytic Gaussian flow
model (no weights needed), until SIGINT or SIGTERM; then prints requests served and latency.
"""

from __future__ import annotations

import logging
import signal

from omegaconf import DictConfig

from runtime.serving.policy import FlowModel
from runtime.serving.sampling import FlowChunkPolicy
from runtime.serving.server import CurveKeys, PolicyServer, warm_up
from runtime.serving.synthetic import GaussianChunkModel

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"


def main(cfg: DictConfig) -> dict:
    policy = FlowChunkPolicy(load_model(cfg.checkpoint, cfg.device), cfg.num_steps, cfg.beta)
    log.info("warmed up in %.2f s", warm_up(policy))
    curve = None if cfg.curve_keys_dir is None else CurveKeys.from_dir(cfg.curve_keys_dir)
    with PolicyServer(
        policy,
        cfg.address,
        max_batch=cfg.max_batch,
        batch_window_ms=cfg.batch_window_ms,
        curve=curve,
        log_every_s=cfg.log_every_s,
    ) as server:
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, lambda *_: server.stop()) for sig in signals}
        try:
            server.serve_forever()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return server.figures()


def load_model(checkpoint: str, device: str) -> FlowModel:
    """The synthetic model, or a checkpoint through ``policies.checkpoint.load_flow_model``."""
    if checkpoint == SYNTHETIC:
        return GaussianChunkModel()
    try:
        from policies.checkpoint import load_flow_model
    except ImportError as e:
        if e.name != "policies.checkpoint":
            raise
        raise ValueError(
            f"cannot load checkpoint {checkpoint!r}: this install has no checkpoint loader "
            f"(policies.checkpoint.load_flow_model: {e}); serve checkpoint={SYNTHETIC} instead"
        ) from None
    log.info("loading %s on %s", checkpoint, device)
    return load_flow_model(checkpoint, device)
