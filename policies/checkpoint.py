"""Checkpoints: safetensors + JSON, written atomically, never pickled.

A training run directory holds ``checkpoints/step_<N>/`` folders and a ``checkpoints/last``
file naming the newest. One checkpoint folder:

    model.safetensors        EMA weights (what inference loads)
    normalizer.safetensors   mean/std of state and actions, from the dataset's stats
    fast_tokenizer.json      the FAST tokenizer (absent for flow-only policies)
    config.json              VLA config, resolved training config, dataset feature spec, step
    train_state.safetensors  raw weights and optimizer tensors (for resume=true)
    train_state.json         optimizer hyperparameters per parameter group

A folder is written as ``step_<N>.tmp`` and renamed into place, and ``last`` is replaced with
``os.replace``, so a crash mid-save never leaves a half-written checkpoint behind ``last``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from policies.fast import FastTokenizer
from policies.inference import PolicyInfo, VLAPolicy
from policies.normalize import Normalizer
from policies.vla import VLA, VLAConfig

FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (EMA weights, eval mode) and what it needs to run."""

    path: Path
    model: VLA
    normalizer: Normalizer
    fast_tokenizer: FastTokenizer | None
    features: dict[str, dict]  # dataset feature spec the policy was trained on
    train_config: dict
    step: int
    fps: float

    @property
    def model_id(self) -> str:
        return f"{self.path.parent.parent.name}/{self.path.name}"


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: VLA,
    ema: dict[str, Tensor],
    optimizer: torch.optim.Optimizer,
    normalizer: Normalizer,
    fast_tokenizer: FastTokenizer | None,
    features: dict[str, dict],
    train_config: dict,
    fps: float,
) -> Path:
    """Write checkpoint ``step`` of a run atomically; returns its folder."""
    folder = Path(run_dir) / "checkpoints" / f"step_{step:07d}"
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, tmp / "model.safetensors")
    save_file(normalizer.state_dict(), tmp / "normalizer.safetensors")
    if fast_tokenizer is not None:
        fast_tokenizer.save(tmp / "fast_tokenizer.json")
    meta = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "fps": fps,
        "vla_config": dataclasses.asdict(model.config),
        "train_config": train_config,
        "features": features,
    }
    (tmp / "config.json").write_text(json.dumps(meta, indent=2, default=list))
    raw = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors, groups = _flatten_optimizer(optimizer)
    save_file({**raw, **tensors}, tmp / "train_state.safetensors")
    (tmp / "train_state.json").write_text(json.dumps({"param_groups": groups}))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    pointer = folder.parent / "last.tmp"
    pointer.write_text(folder.name)
    os.replace(pointer, folder.parent / "last")
    return folder


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (its newest checkpoint)."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    last = path / "checkpoints" / "last"
    if last.is_file():
        return path / "checkpoints" / last.read_text().strip()
    raise FileNotFoundError(
        f"checkpoint={path} is neither a checkpoint folder (with model.safetensors) nor a training "
        "run folder (with checkpoints/last): pass the output= folder of `rtvla train`"
    )


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint (or a run's newest) for inference."""
    folder = resolve_checkpoint(path)
    meta = json.loads((folder / "config.json").read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{folder} has checkpoint format {meta.get('format_version')}, this version reads "
            f"{FORMAT_VERSION}: retrain, or load it with the version that wrote it"
        )
    model = VLA(VLAConfig(**meta["vla_config"]))
    model.load_state_dict(load_file(folder / "model.safetensors"))
    fast = folder / "fast_tokenizer.json"
    return Checkpoint(
        path=folder,
        model=model.to(device).eval(),
        normalizer=Normalizer.from_state_dict(load_file(folder / "normalizer.safetensors")),
        fast_tokenizer=FastTokenizer.load(fast) if fast.is_file() else None,
        features={k: {**v, "shape": tuple(v["shape"])} for k, v in meta["features"].items()},
        train_config=meta["train_config"],
        step=meta["step"],
        fps=meta["fps"],
    )


def load_train_state(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Restore raw weights and optimizer state (resume)."""
    tensors = load_file(folder / "train_state.safetensors")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    groups = json.loads((folder / "train_state.json").read_text())["param_groups"]
    state: dict[int, dict[str, Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def load_flow_model(path: str | Path, device: str | torch.device = "cpu") -> VLAPolicy:
    """A checkpoint as a flow model for the runtime's samplers (``runtime.policy.FlowModel``)."""
    ckpt = load_checkpoint(path, device)
    cfg = ckpt.model.config
    features = {k: {"dtype": v["dtype"], "shape": tuple(v["shape"])}
                for k, v in ckpt.features.items() if k.startswith("observation.")}  # fmt: skip
    info = PolicyInfo(ckpt.model_id, cfg.chunk_length, cfg.action_dim, ckpt.fps, features)
    return VLAPolicy(ckpt.model, ckpt.normalizer, info)


def check_features(trained: dict[str, dict], actual: dict[str, dict], fix: str) -> None:
    """Refuse observations/actions that differ from those the policy was trained on."""
    for key, spec in trained.items():
        if not (key.startswith("observation.") or key == "action"):
            continue
        if key not in actual:
            raise ValueError(
                f"the policy was trained with {key} {tuple(spec['shape'])}, which this setup "
                f"does not provide (it has {sorted(actual)}): {fix}"
            )
        if tuple(actual[key]["shape"]) != tuple(spec["shape"]):
            raise ValueError(
                f"{key} has shape {tuple(actual[key]['shape'])}, the policy expects "
                f"{tuple(spec['shape'])}: {fix}"
            )


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list]:
    sd = optimizer.state_dict()
    tensors = {}
    for index, entries in sd["state"].items():
        for key, value in entries.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors, sd["param_groups"]
