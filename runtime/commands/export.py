"""``rtvla export``: an inference-only copy of a checkpoint (what ``checkpoints/demo`` is)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


def main(cfg: DictConfig) -> dict:
    from policies.checkpoint import export_checkpoint

    output = export_checkpoint(cfg.checkpoint, cfg.output)
    files = {p.name: p.stat().st_size for p in sorted(Path(output).iterdir())}
    return {"output": str(output), "files": files, "megabytes": sum(files.values()) / 1e6}
