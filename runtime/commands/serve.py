"""``rtvla serve``: a policy server for controllers on this machine or others.

Serves a training checkpoint, with ``checkpoint=synthetic`` the analytic Gaussian flow
model (no weights needed), or with ``checkpoint=lerobot:PATH`` a lerobot policy saved with
``save_pretrained`` (``runtime/serving/lerobot_policy.py``), until SIGINT or SIGTERM; then
prints requests served and latency.
"""

from __future__ import annotations

import logging
import signal

from omegaconf import DictConfig

from runtime.curve import CurveKeys
from runtime.serving.loader import load_policy
from runtime.serving.server import SERVER_SETTINGS, PolicyServer, warm_up

log = logging.getLogger(__name__)


def main(cfg: DictConfig) -> dict:
    policy = load_policy(
        cfg.checkpoint, cfg.device, num_steps=cfg.num_steps, beta=cfg.beta, fps=cfg.fps
    )
    log.info("warmed up in %.2f s", warm_up(policy))
    curve = None if cfg.curve_keys_dir is None else CurveKeys.from_dir(cfg.curve_keys_dir)
    settings = {name: cfg[name] for name in SERVER_SETTINGS}
    with PolicyServer(policy, curve=curve, **settings) as server:
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, lambda *_: server.stop()) for sig in signals}
        try:
            server.serve_forever()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return server.figures()
