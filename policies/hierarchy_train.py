"""Training of the high-level policy (``policies/hierarchy.py``) from a LeRobotDataset.

The dataset is read once into memory (``policies.data.InMemoryChunks``). A fraction of the
episodes (``policy.heldout_episodes``) is held out; the step loop, learning-rate schedule,
EMA, metrics and checkpoints are the VLA's (``policies.train``), so a run resumes exactly the
same way. At the end the EMA weights are scored on the held-out episodes: accuracy of the step
head on every frame, of the corrective head on correction frames, and of the flag.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from policies.checkpoint import read_tensors, resolve_checkpoint
from policies.data import InMemoryChunks, camera_keys, camera_spec, open_dataset
from policies.features import ACTION, ENV_STATE, STATE
from policies.hierarchy import (
    IGNORE,
    HighLevelConfig,
    HighLevelModel,
    Vocabulary,
    encode_words,
    high_level_parts,
    history_indices,
    label_indices,
    scene_features,
)
from policies.normalize import Normalizer
from policies.trainer import Setup, fit

log = logging.getLogger(__name__)

LABELS = ("step_instruction", "corrective_instruction", "correction")
TRAINING_KEYS = ("name",)  # policy config keys that are not model config


class HighLevelFrames(torch.utils.data.Dataset):
    """Items of the high-level policy: frame histories, state, task words and the labels
    ``label_lookahead_s`` ahead (see ``label_indices`` / ``history_indices``)."""

    def __init__(
        self, frames: InMemoryChunks, config: HighLevelConfig, vocab: Vocabulary,
        normalizer: Normalizer, fps: float,
    ) -> None:  # fmt: skip
        n = len(frames)
        index = np.arange(n)
        self.frames, self.image_keys = frames, config.image_keys
        self.history = history_indices(index, frames.ep_start, config.history, config.stride)
        label = label_indices(index, frames.ep_end, round(config.label_lookahead_s * fps))
        steps = frames.texts["step_instruction"]
        correctives = frames.texts["corrective_instruction"]
        self.step = torch.tensor([vocab.index("step", steps[j]) for j in label])
        self.correction = torch.from_numpy(frames.correction[label])
        self.corrective = torch.tensor(
            [vocab.index("corrective", correctives[j]) if frames.correction[j] and correctives[j]
             else IGNORE for j in label]
        )  # fmt: skip
        self.state = normalizer.normalize(STATE, frames.state)
        self.scene = (
            scene_features(normalizer, frames.state, frames.env_state)
            if config.env_state_dim > 0
            else None
        )  # (N, S + E)
        self.words = encode_words(vocab, frames.task)  # (N, MAX_WORDS)

    def __len__(self) -> int:
        return len(self.step)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {
            key: self.frames.images[key][self.history[i]]  # (T, 3, h, w)
            for key in self.image_keys
        }
        item[STATE] = self.state[i]
        if self.scene is not None:
            item["scene"] = self.scene[self.history[i]]  # (T, S + E)
        item["task_words"] = self.words[i]
        item["step"], item["corrective"] = self.step[i], self.corrective[i]
        item["correction"] = self.correction[i]
        return item


def high_level_config(features: dict[str, dict], vocab: Vocabulary, policy: Mapping
                      ) -> HighLevelConfig:  # fmt: skip
    """The model config for a dataset's features, its vocabulary and the ``policy/`` entry:
    its cameras, if it has any, and its scene state with ``scene_state`` or without cameras."""
    cams, size = camera_spec(features) if camera_keys(features) else ((), (0, 0))
    scene = bool(policy.get("scene_state", False)) or not cams
    if scene and ENV_STATE not in features:
        raise ValueError(
            f"the high-level policy needs {ENV_STATE} (policy.scene_state=true, or a dataset "
            "without cameras), which the dataset lacks: record it with `rtvla record`"
        )
    known = set(HighLevelConfig.__dataclass_fields__) - {"image_keys", "image_size", "state_dim",
                                                         "step_classes", "corrective_classes",
                                                         "word_count", "env_state_dim"}  # fmt: skip
    unknown = set(policy) - known - set(TRAINING_KEYS)
    if unknown:
        raise ValueError(
            f"policy config keys {sorted(unknown)} are unknown; valid: {sorted(known)}"
        )
    return HighLevelConfig(
        **{k: v for k, v in policy.items() if k in known},
        image_keys=cams,
        image_size=size,
        state_dim=features[STATE]["shape"][0],
        step_classes=len(vocab.step),
        corrective_classes=len(vocab.corrective),
        word_count=len(vocab.words),
        env_state_dim=features[ENV_STATE]["shape"][0] if scene else 0,
    )


def split_episodes(episode: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Frame indices (train, held out): ``fraction`` of the episodes (at least one when there
    are two or more, none from a single episode) are held out, chosen from ``seed``."""
    episodes = np.unique(episode)
    count = min(len(episodes) - 1, max(1, round(fraction * len(episodes)))) if fraction > 0 else 0
    held = np.random.default_rng(seed).choice(episodes, size=count, replace=False)
    mask = np.isin(episode, held)
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def train_high_level(cfg: Mapping) -> dict:
    """Train (or resume) a high-level run described by the resolved ``configs/train.yaml``
    with ``policy=high_level``; returns figures with the held-out accuracies."""
    parts: dict = {}

    def build(device: torch.device) -> Setup:
        dataset = open_dataset(cfg["dataset"])
        features = {k: {**v, "shape": tuple(v["shape"])} for k, v in dataset.meta.features.items()}
        missing = [k for k in LABELS if k not in features]
        if missing:
            raise ValueError(
                f"the high-level policy learns from the labels {missing}, which "
                f"dataset={cfg['dataset']} lacks: record it with `rtvla record` "
                "(failure_prob > 0 adds corrections)"
            )
        frames = InMemoryChunks(dataset, 1)
        texts = frames.texts
        vocab = Vocabulary.build(texts["step_instruction"], texts["corrective_instruction"],
                                 frames.task)  # fmt: skip
        policy_cfg = dict(cfg["policy"])
        config = high_level_config(features, vocab, policy_cfg)
        keys = (STATE, ACTION, ENV_STATE) if config.env_state_dim else (STATE, ACTION)
        normalizer = Normalizer.from_stats(dataset.meta.stats, keys)
        items = HighLevelFrames(frames, config, vocab, normalizer, dataset.meta.fps)
        train_idx, held_idx = split_episodes(frames.episode, config.heldout_episodes, cfg["seed"])
        parts.update(items=items, held_idx=held_idx, vocab=vocab)
        meta, write_extra = high_level_parts(config, normalizer, vocab, features, dataset.meta.fps)
        return Setup(
            model=HighLevelModel(config),
            items=torch.utils.data.Subset(items, train_idx.tolist()),
            collate=None,
            meta=meta,
            write_extra=write_extra,
        )

    figures, setup = fit(cfg, build)
    model = setup.model
    model.load_state_dict(_ema_weights(cfg))
    heldout = accuracy(model, parts["items"], parts["held_idx"], next(model.parameters()).device)
    out = Path(cfg["output"])
    (out / "heldout.json").write_text(json.dumps(heldout, indent=2))
    vocab = parts["vocab"]
    return {
        **figures,
        "step_instructions": len(vocab.step),
        "corrective_instructions": len(vocab.corrective),
        "heldout": heldout,
    }


def _ema_weights(cfg: Mapping) -> dict[str, torch.Tensor]:
    """The EMA weights of the run's newest checkpoint (what inference loads)."""
    folder = resolve_checkpoint(cfg["output"])
    return read_tensors(folder / "model.safetensors")


@torch.no_grad()
def accuracy(model: HighLevelModel, items: HighLevelFrames, index: np.ndarray, device,
             batch_size: int = 256) -> dict:  # fmt: skip
    """Accuracy of each head on the frames ``index``; None where there is nothing to score."""
    model.eval()
    hits = {"step": 0, "corrective": 0, "correction": 0}
    corrective_frames = 0
    for lo in range(0, len(index), batch_size):
        batch = torch.utils.data.default_collate(
            [items[int(i)] for i in index[lo : lo + batch_size]]
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model.logits(batch)
        hits["step"] += int((out["step"].argmax(-1) == batch["step"]).sum())
        hits["correction"] += int(((out["correction"] > 0) == batch["correction"]).sum())
        valid = batch["corrective"] != IGNORE
        corrective_frames += int(valid.sum())
        if valid.any() and out["corrective"].shape[1] > 0:
            guess = out["corrective"][valid].argmax(-1)
            hits["corrective"] += int((guess == batch["corrective"][valid]).sum())
    n = len(index)
    return {
        "frames": n,
        "correction_frames": corrective_frames,
        "step_accuracy": hits["step"] / n if n else None,
        "corrective_accuracy": hits["corrective"] / corrective_frames
        if corrective_frames
        else None,
        "correction_accuracy": hits["correction"] / n if n else None,
    }
