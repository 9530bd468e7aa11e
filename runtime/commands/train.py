"""``rtvla train``: a policy from a LeRobotDataset, by ``policy.name``: the VLA (``vla``) or
the state-based flow policy (``state_flow``) or SRT-H's high-level policy (``high_level``).

DDP (the VLA): ``uv run torchrun --nproc_per_node=N -m runtime.commands.cli train ...``.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf


def main(cfg: DictConfig) -> dict:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if cfg.policy.name == "high_level":
        from policies.hierarchy_train import train_high_level

        return train_high_level(resolved)
    if cfg.policy.name not in ("vla", "state_flow"):
        raise ValueError(
            f"policy={cfg.policy.name} is unknown: use policy=vla, state_flow or high_level"
        )
    from policies.train import train

    return train(resolved)
