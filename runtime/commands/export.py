"""``rtvla export``: an inference-only copy of a checkpoint (what ``checkpoints/demo`` is).

``units=follower`` also converts a checkpoint trained on sim data recorded before the sim spoke
lerobot's SO-101 follower units (joints named without ``.pos``, radians and metres) into those
units: the state and action normalization statistics are scaled by ``sim.units.SCALE`` and the
joint names renamed. Normalization is per-joint mean/std, so the network sees exactly the numbers
it was trained on and the converted policy acts as the original did, in the new units.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

UNITS = ("keep", "follower")


def main(cfg: DictConfig) -> dict:
    from policies.checkpoint import export_checkpoint

    if cfg.units not in UNITS:
        raise ValueError(f"units={cfg.units!r}: choose one of {UNITS}")
    output = export_checkpoint(
        cfg.checkpoint, cfg.output, convert=to_follower_units if cfg.units == "follower" else None
    )
    files = {p.name: p.stat().st_size for p in sorted(Path(output).iterdir())}
    return {"output": str(output), "units": cfg.units, "files": files,
            "megabytes": sum(files.values()) / 1e6}  # fmt: skip


def to_follower_units(folder: Path) -> None:
    """Rewrite the exported checkpoint in ``folder`` (not yet in place) into follower units."""
    import torch
    from safetensors.torch import save_file

    from policies.checkpoint import read_json, read_tensors
    from policies.features import ACTION, STATE
    from sim.robot import JOINT_NAMES
    from sim.units import FEATURE_NAMES, SCALE

    meta = read_json(folder / "config.json")
    for key in (STATE, ACTION):
        names = meta.get("features", {}).get(key, {}).get("names")
        if names == list(FEATURE_NAMES):
            raise ValueError(f"{folder}: {key} is already in follower units ({names})")
        if names != list(JOINT_NAMES):
            raise ValueError(
                f"{key} names the joints {names}, not the sim's {list(JOINT_NAMES)}: only "
                "checkpoints trained on the sim's radian/metre datasets can be converted"
            )
        meta["features"][key]["names"] = list(FEATURE_NAMES)
    stats = read_tensors(folder / "normalizer.safetensors")
    scale = torch.as_tensor(SCALE, dtype=torch.float64)
    for key in (STATE, ACTION):
        for stat in ("mean", "std"):
            name = f"{key}.{stat}"
            stats[name] = (stats[name].double() * scale).float().contiguous()
    save_file(stats, folder / "normalizer.safetensors")
    (folder / "config.json").write_text(json.dumps(meta, indent=1))
