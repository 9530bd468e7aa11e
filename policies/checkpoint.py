"""Checkpoints: safetensors + JSON, written atomically, never pickled.

A training run directory holds ``checkpoints/step_<N>/`` folders and a ``checkpoints/last``
file naming the newest. One checkpoint folder:

    model.safetensors        EMA weights (what inference loads)
    normalizer.safetensors   mean/std of state and actions, from the dataset's stats
    fast_tokenizer.json      the FAST tokenizer (absent for flow-only policies)
    hf_backbone/             backbone=hf: the VLM's config and tokenizer (its weights are in
                             model.safetensors), so the model is rebuilt offline
    config.json              VLA config, resolved training config, dataset feature spec, step
    train_state.safetensors  raw weights and optimizer tensors (for resume=true)
    train_state.json         optimizer hyperparameters per parameter group

A folder is written as ``step_<N>.tmp``, fsynced and renamed into place, and ``last`` is
replaced with ``os.replace`` once fsynced, so a crash (or power loss) mid-save never leaves a
half-written checkpoint behind ``last``. A file that is nevertheless truncated or garbled
(copied badly, edited by hand) is refused by ``read_json`` / ``read_tensors`` /
``load_weights`` with a ``CorruptCheckpoint`` that names it and says what to do.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from policies.fast import FastTokenizer
from policies.features import ACTION, STATE
from policies.normalize import Normalizer
from policies.vla import VLA, VLAConfig

FORMAT_VERSION = 1
_RESTORE = (
    "restore it from a good copy, export the checkpoint again (rtvla export), or point "
    "checkpoint= at another step (checkpoints/step_N)"
)


class CorruptCheckpoint(ValueError):
    """A checkpoint file that cannot be read; the message names it and says what to do."""


def read_json(path: Path) -> dict:
    """A checkpoint's JSON file as a dict, or a ``CorruptCheckpoint`` naming it."""
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise CorruptCheckpoint(
            f"{path} is missing, so the checkpoint is incomplete: {_RESTORE}"
        ) from None
    except (UnicodeDecodeError, ValueError) as err:
        raise CorruptCheckpoint(
            f"{path} is not valid UTF-8 JSON ({type(err).__name__}: {str(err)[:120]}), it is "
            f"truncated or garbled: {_RESTORE}"
        ) from None
    if not isinstance(data, dict):
        raise CorruptCheckpoint(f"{path} holds a JSON {type(data).__name__}, not a map: {_RESTORE}")
    return data


def read_tensors(path: Path) -> dict[str, Tensor]:
    """A checkpoint's safetensors file, or a ``CorruptCheckpoint`` naming it."""
    try:
        return load_file(path)
    except FileNotFoundError:
        raise CorruptCheckpoint(
            f"{path} is missing, so the checkpoint is incomplete: {_RESTORE}"
        ) from None
    except Exception as err:  # safetensors raises its own error type for a bad header or size
        raise CorruptCheckpoint(
            f"{path} is not a readable safetensors file ({str(err)[:120]}), it is truncated or "
            f"garbled: {_RESTORE}"
        ) from None


def load_weights(model: nn.Module, path: Path) -> None:
    """Load ``path`` (safetensors) into ``model``; a file that does not fit it is refused."""
    tensors = read_tensors(path)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise CorruptCheckpoint(
            f"{path} does not fit the model that config.json next to it describes "
            f"({' '.join(first[:3])[:300]}): the two files come from different checkpoints; "
            f"{_RESTORE}"
        ) from None


HF_BACKBONE = "hf_backbone"  # folder of the Hugging Face config and tokenizer (backbone=hf)


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
        return checkpoint_model_id(self.path)


def checkpoint_model_id(folder: Path) -> str:
    """``<run>/step_<N>`` for a training checkpoint, the folder's name for an exported one."""
    path = Path(folder).resolve()
    if path.name.startswith("step_") and path.parent.name == "checkpoints":
        return f"{path.parent.parent.name}/{path.name}"
    return path.name


def vla_checkpoint_parts(
    model: VLA,
    normalizer: Normalizer,
    fast_tokenizer: FastTokenizer | None,
    features: dict[str, dict],
    fps: float,
) -> tuple[dict, Callable[[Path], None]]:
    """A VLA checkpoint's config.json entries and the writer of its extra files."""

    def write_extra(tmp: Path) -> None:
        save_file(normalizer.state_dict(), tmp / "normalizer.safetensors")
        if fast_tokenizer is not None:
            fast_tokenizer.save(tmp / "fast_tokenizer.json")
        if model.config.backbone == "hf":
            model.backbone.save_files(tmp / HF_BACKBONE)

    meta = {"fps": fps, "vla_config": dataclasses.asdict(model.config), "features": features}
    return meta, write_extra


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
    """Write checkpoint ``step`` of a VLA run atomically (outside the trainer); its folder."""
    meta, write_extra = vla_checkpoint_parts(model, normalizer, fast_tokenizer, features, fps)
    return write_checkpoint(
        run_dir, step, model=model, ema=ema, optimizer=optimizer,
        meta={**meta, "train_config": train_config}, write_extra=write_extra,
    )  # fmt: skip


def write_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: nn.Module,
    ema: dict[str, Tensor],
    optimizer: torch.optim.Optimizer,
    meta: dict,
    write_extra: Callable[[Path], None],
) -> Path:
    """The atomic checkpoint write shared by every policy kind; returns the folder.

    Writes ``model.safetensors`` (``ema``), ``config.json`` (``meta`` plus the format
    version and step), ``train_state.*`` and whatever ``write_extra(folder)`` adds, into
    ``step_<N>.tmp``, renames it into place and points ``last`` at it.
    """
    folder = Path(run_dir) / "checkpoints" / f"step_{step:07d}"
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, tmp / "model.safetensors")
    write_extra(tmp)
    meta = {"format_version": FORMAT_VERSION, "step": step, **meta}
    (tmp / "config.json").write_text(json.dumps(meta, indent=2, default=list))
    raw = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors, groups = _flatten_optimizer(optimizer)
    save_file({**raw, **tensors}, tmp / "train_state.safetensors")
    (tmp / "train_state.json").write_text(json.dumps({"param_groups": groups}))
    if folder.exists():
        shutil.rmtree(folder)
    durable_rename(tmp, folder)
    pointer = folder.parent / "last.tmp"
    pointer.write_text(folder.name)
    _fsync(pointer)
    os.replace(pointer, folder.parent / "last")
    _fsync(folder.parent)
    return folder


def durable_rename(source: Path, target: Path) -> None:
    """fsync every file and folder under ``source``, rename it to ``target`` and fsync the
    parent, so that after a crash ``target`` is either absent or complete.
    (``sim/record.py`` has its twin: the two packages import nothing from each other.)"""
    for path in sorted(source.rglob("*"), reverse=True):
        _fsync(path)
    _fsync(source)
    os.rename(source, target)
    _fsync(target.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


INFERENCE_FILES = (
    "model.safetensors",
    "normalizer.safetensors",
    "fast_tokenizer.json",
    "config.json",
    HF_BACKBONE,
)


def export_checkpoint(
    path: str | Path, output: str | Path, convert: Callable[[Path], None] | None = None
) -> Path:
    """Copy what inference needs from a checkpoint (or a run's newest) to ``output``: the EMA
    weights, normalization stats, tokenizer and config (and ``hf_backbone/``), without the
    optimizer state that ``resume`` needs. ``convert`` may rewrite the copy before it is moved
    into place. Written atomically; an existing ``output`` is refused."""
    folder, output = resolve_checkpoint(path), Path(output)
    if output.exists():
        raise FileExistsError(f"output={output} exists: remove it or choose another folder")
    tmp = output.with_name(output.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in INFERENCE_FILES:
        if (folder / name).is_file():
            shutil.copy2(folder / name, tmp / name)
        elif (folder / name).is_dir():
            shutil.copytree(folder / name, tmp / name)
    if convert is not None:
        convert(tmp)
    durable_rename(tmp, output)
    return output


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint (or a run's newest) for inference."""
    folder = resolve_checkpoint(path)
    meta = read_json(folder / "config.json")
    if "vla_config" not in meta:
        raise ValueError(
            f"{folder} is not a VLA checkpoint (kind {meta.get('kind')!r}): pass a high-level "
            "checkpoint as high_level=, and a low-level run of `rtvla train policy=vla` here"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{folder} has checkpoint format {meta.get('format_version')}, this version reads "
            f"{FORMAT_VERSION}: retrain, or load it with the version that wrote it"
        )
    # Checkpoints written before these fields existed used patch tokens, no augmentation,
    # byte tokens, no FiLM, an expert that does not read the instruction itself, no
    # auxiliary losses, no instruction keypoints and the transformer expert without teacher
    # forcing (the defaults of their time, not of now).
    old = {
        "vision": "patch", "augment_shift": 0, "language": "bytes", "film": False,
        "expert_instruction": False, "word_buckets": 4096, "aux_env_state": 0.0,
        "aux_goal": 0.0, "keypoint_stride": 8, "instruction_keypoints": 0,
        "expert": "transformer", "expert_scene_teacher": 0.0,
    }  # fmt: skip
    try:
        config = VLAConfig(**{**old, **meta["vla_config"]})
        features = {k: {**v, "shape": tuple(v["shape"])} for k, v in meta["features"].items()}
        train_config, step, fps = meta["train_config"], meta["step"], meta["fps"]
    except (TypeError, KeyError, AttributeError) as err:
        raise CorruptCheckpoint(
            f"{folder / 'config.json'} lacks or garbles an entry ({type(err).__name__}: {err}): "
            f"{_RESTORE}"
        ) from None
    backbone = None
    if config.backbone == "hf":
        from policies.hf_backbone import HFBackbone  # transformers takes seconds to import

        backbone = HFBackbone.from_files(config, folder / HF_BACKBONE)
    model = VLA(config, backbone)
    load_weights(model, folder / "model.safetensors")
    fast = folder / "fast_tokenizer.json"
    if fast.is_file():
        read_json(fast)  # a garbled file is named here rather than deep in the tokenizer
    return Checkpoint(
        path=folder,
        model=model.to(device).eval(),
        normalizer=load_normalizer(folder / "normalizer.safetensors"),
        fast_tokenizer=FastTokenizer.load(fast) if fast.is_file() else None,
        features=features,
        train_config=train_config,
        step=step,
        fps=fps,
    )


def load_normalizer(path: Path) -> Normalizer:
    """The normalization statistics saved in a checkpoint."""
    tensors = read_tensors(path)
    try:
        return Normalizer.from_state_dict(tensors)
    except (KeyError, ValueError, RuntimeError) as err:
        raise CorruptCheckpoint(
            f"{path} does not hold normalizer statistics ({err}): {_RESTORE}"
        ) from None


def load_train_state(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Restore raw weights and optimizer state (resume)."""
    tensors = read_tensors(folder / "train_state.safetensors")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    groups = read_json(folder / "train_state.json")["param_groups"]
    state: dict[int, dict[str, Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def wire_features(features: dict[str, dict]) -> dict[str, dict]:
    """A dataset's observation features as observations carry them on the wire."""
    return {k: {"dtype": _wire_dtype(v["dtype"]), "shape": tuple(v["shape"])}
            for k, v in features.items() if k.startswith("observation.")}  # fmt: skip


def joint_names(features: dict[str, dict]) -> dict[str, tuple[str, ...]] | None:
    """The dataset's joint names of ``observation.state`` and ``action`` (None: none named)."""
    names = {key: tuple(features[key]["names"]) for key in (STATE, ACTION)
             if key in features and isinstance(features[key].get("names"), list | tuple)
             and all(isinstance(n, str) for n in features[key]["names"])}  # fmt: skip
    return names or None


def _wire_dtype(dtype: str) -> str:
    """A dataset feature's dtype as observations carry it: lerobot's "image" and "video"
    features arrive as uint8 (h, w, 3) arrays."""
    return "uint8" if dtype in ("image", "video") else dtype


def check_features(trained: dict[str, dict], actual: dict[str, dict], fix: str) -> None:
    """Refuse observations/actions that differ from those the policy was trained on."""
    for key, spec in trained.items():
        if not (key.startswith("observation.") or key == ACTION):
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
