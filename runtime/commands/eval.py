"""``rtvla eval``: success rate of a checkpoint in MuJoCo, executing chunks synchronously.

The same controller as ``rtvla run`` (configs/eval.yaml fixes executor=sync, the simulated
clock and an in-process policy), so numbers from the two are comparable.
"""

from __future__ import annotations

from omegaconf import DictConfig

from runtime.commands import run


def main(cfg: DictConfig) -> dict:
    return {"checkpoint": cfg.checkpoint, **run.main(cfg)}
