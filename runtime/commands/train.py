"""``rtvla train``: the VLA from a LeRobotDataset.

DDP: ``uv run torchrun --nproc_per_node=N -m runtime.cli train ...``.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from policies.train import train


def main(cfg: DictConfig) -> dict:
    return train(OmegaConf.to_container(cfg, resolve=True))
