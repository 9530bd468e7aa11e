"""SRT-H's high-level policy: what the robot should do next, chosen in language.

Kim et al. 2025, "SRT-H: A Hierarchical Framework for Autonomous Surgery via Language
Conditioned Imitation Learning": a high-level policy watches the scene and tells a
language-conditioned low-level policy what to do: the next step instruction ("reach the red
target"), a corrective instruction ("move left") and whether a correction is needed; the low
level follows the corrective instruction while the flag is set, the step instruction otherwise.

Here, per camera, a small conv stem reads the last ``history`` frames (``stride`` ticks apart,
stacked on channels); with ``scene_state`` (and always for a dataset without cameras) a linear
layer reads the same history of ``observation.state`` and ``observation.environment_state``
(the objects' poses); the state and the episode's task instruction (a bag of words) join
them in an MLP with three heads, each a classification over the dataset's own labels
(``Vocabulary``; docs/design.md says why classification):

- ``step``: the step instruction, over every distinct one in the dataset;
- ``corrective``: the corrective instruction, over the distinct non-empty ones, trained on
  correction frames only (the flag says whether to use it);
- ``correction``: the flag, one logit.

Labels are read ``label_lookahead_s`` after the frame (clamped to the episode's last frame),
so the instruction switches slightly before a phase boundary (``label_indices``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from policies.backbone import get_feature
from policies.checkpoint import load_normalizer, load_weights, read_json, resolve_checkpoint
from policies.features import ENV_STATE, IMAGES, STATE
from policies.normalize import Normalizer
from policies.vision import random_shift

KIND = "high_level"  # config.json "kind" of a high-level checkpoint
MAX_WORDS = 16  # task instruction words the policy reads; later ones are dropped
IGNORE = -100  # corrective label of a frame without a correction (out of its loss)


# ---- labels -----------------------------------------------------------------------------------


def label_indices(index: np.ndarray, episode_end: np.ndarray, shift: int) -> np.ndarray:
    """The frame whose labels train frame ``index``: ``shift`` frames later, clamped to the
    episode's last frame (``episode_end`` is one past it). All (N,) int arrays."""
    return np.minimum(index + shift, episode_end - 1)


def history_indices(
    index: np.ndarray, episode_start: np.ndarray, history: int, stride: int
) -> np.ndarray:
    """Frames (N, history), oldest first, that frame ``index`` sees: index - k * stride for
    k = history - 1 .. 0, clamped to the episode's first frame (the start repeats)."""
    offsets = stride * np.arange(history - 1, -1, -1)  # (history,)
    return np.maximum(index[:, None] - offsets, episode_start[:, None])


def words_of(text: str) -> list[str]:
    """Lower-case words of an instruction: "Put the red cube" -> ["put", "the", "red", "cube"]."""
    return re.findall(r"[a-z0-9]+", text.lower())


@dataclass(frozen=True)
class Vocabulary:
    """The instructions a high-level policy chooses from and the words it reads, all taken
    from the dataset it is trained on (every distinct string, sorted)."""

    step: tuple[str, ...]  # step instructions, e.g. "move above the red target"
    corrective: tuple[str, ...]  # corrective instructions, e.g. "move left" ("" excluded)
    words: tuple[str, ...]  # words of the episodes' task instructions

    @classmethod
    def build(
        cls, steps: Iterable[str], correctives: Iterable[str], tasks: Iterable[str]
    ) -> Vocabulary:
        return cls(
            step=tuple(sorted(set(steps))),
            corrective=tuple(sorted(set(correctives) - {""})),
            words=tuple(sorted({w for t in set(tasks) for w in words_of(t)})),
        )

    def index(self, kind: str, text: str) -> int:
        """Class index of ``text`` among the ``kind`` ("step" / "corrective") instructions."""
        options = getattr(self, kind)
        try:
            return options.index(text)
        except ValueError:
            raise KeyError(
                f"{text!r} is not a {kind} instruction of this policy's dataset (it knows "
                f"{list(options)}): retrain the high level on a dataset with it"
            ) from None

    def word_ids(self, text: str) -> list[int]:
        """1-based ids of the known words of ``text`` (0 pads); unknown words are skipped."""
        ids = {w: i + 1 for i, w in enumerate(self.words)}
        return [ids[w] for w in words_of(text) if w in ids][:MAX_WORDS]

    def as_dict(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Sequence[str]]) -> Vocabulary:
        return cls(**{k: tuple(v) for k, v in d.items()})


def encode_words(vocab: Vocabulary, texts: Sequence[str]) -> Tensor:
    """Word ids (B, MAX_WORDS) int64 of each text, 0-padded."""
    ids = torch.zeros(len(texts), MAX_WORDS, dtype=torch.long)
    for row, text in enumerate(texts):
        found = vocab.word_ids(text)
        ids[row, : len(found)] = torch.tensor(found, dtype=torch.long)
    return ids


# ---- model ------------------------------------------------------------------------------------


@dataclass
class HighLevelConfig:
    """Every hyperparameter of the high-level policy, one line each."""

    image_keys: tuple[str, ...] = (IMAGES + "front", IMAGES + "wrist")
    image_size: tuple[int, int] = (96, 96)  # (height, width) of every camera image
    state_dim: int = 6  # size of observation.state
    step_classes: int = 1  # step instructions in the vocabulary
    corrective_classes: int = 0  # corrective instructions in the vocabulary (may be none)
    word_count: int = 0  # task words in the vocabulary
    history: int = 3  # frames per camera: the current one and history - 1 earlier ones
    stride: int = 5  # ticks between history frames
    label_lookahead_s: float = 0.5  # labels are read this long after the frame
    channels: tuple[int, ...] = (16, 32, 64, 64)  # conv stem, one stride-2 conv per entry
    width: int = 256  # width of the per-camera features and the MLP
    dropout: float = 0.1  # before the heads
    augment_shift: int = 4  # training only: random image shift of up to this many pixels
    heldout_episodes: float = 0.1  # training: share of episodes held out to score each head
    scene_state: bool = False  # also read observation.environment_state (on without cameras)
    flag_pos_weight: float = 1.0  # weight of correction frames in the flag loss (they are rare)
    env_state_dim: int = 0  # size of observation.environment_state read (0: none)

    def __post_init__(self) -> None:
        self.image_keys, self.channels = tuple(self.image_keys), tuple(self.channels)
        self.image_size = tuple(self.image_size)
        if self.history < 1 or self.stride < 1:
            raise ValueError(f"history={self.history} and stride={self.stride} must be >= 1")
        if not self.image_keys and self.env_state_dim == 0:
            raise ValueError(
                "the high-level policy needs cameras or observation.environment_state: the "
                "dataset has neither"
            )


class ConvStem(nn.Module):
    """One camera's frame history (B, T, 3, h, w) uint8 -> features (B, width)."""

    def __init__(self, config: HighLevelConfig) -> None:
        super().__init__()
        layers, c_in = [], 3 * config.history
        for c_out in config.channels:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out),
                       nn.GELU()]  # fmt: skip
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        h, w = config.image_size
        for _ in config.channels:
            h, w = (h + 1) // 2, (w + 1) // 2
        self.proj = nn.Linear(c_in * h * w, config.width)

    def forward(self, frames: Tensor) -> Tensor:
        x = frames.flatten(1, 2).float() / 127.5 - 1.0  # (B, T * 3, h, w) in [-1, 1]
        return self.proj(self.convs(x).flatten(1))  # (B, width)


class HighLevelModel(nn.Module):
    """Frames, state and task words -> step, corrective and correction logits."""

    def __init__(self, config: HighLevelConfig) -> None:
        super().__init__()
        self.config = config
        W = config.width
        self.stems = nn.ModuleDict({_name(k): ConvStem(config) for k in config.image_keys})
        self.state = nn.Linear(config.state_dim, W)
        self.words = nn.Embedding(config.word_count + 1, W, padding_idx=0)
        scene = config.env_state_dim > 0
        if scene:  # the history of (state, env_state), flattened
            self.scene = nn.Linear((config.state_dim + config.env_state_dim) * config.history, W)
        n_in = W * (len(config.image_keys) + 2 + scene)
        self.mlp = nn.Sequential(
            nn.LayerNorm(n_in), nn.Linear(n_in, W), nn.GELU(), nn.Linear(W, W), nn.GELU(),
            nn.Dropout(config.dropout),
        )  # fmt: skip
        self.step_head = nn.Linear(W, config.step_classes)
        self.corrective_head = nn.Linear(W, max(1, config.corrective_classes))
        self.correction_head = nn.Linear(W, 1)

    def logits(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """{"step": (B, n_step), "corrective": (B, n_corrective), "correction": (B,)}."""
        feats = []
        for key in self.config.image_keys:
            frames = get_feature(batch, key)  # (B, T, 3, h, w) uint8
            if self.training and self.config.augment_shift > 0:
                frames = random_shift(frames, self.config.augment_shift)
            feats.append(self.stems[_name(key)](frames))
        feats.append(self.state(get_feature(batch, STATE)))
        if self.config.env_state_dim > 0:
            feats.append(self.scene(get_feature(batch, "scene").flatten(1)))  # (B, T, S + E)
        ids = get_feature(batch, "task_words")  # (B, MAX_WORDS)
        count = (ids > 0).sum(1, keepdim=True).clamp(min=1)
        feats.append(self.words(ids).sum(1) / count)  # (B, W) mean of the known words
        h = self.mlp(torch.cat(feats, dim=-1))  # (B, W)
        return {
            "step": self.step_head(h),
            "corrective": self.corrective_head(h)[:, : self.config.corrective_classes],
            "correction": self.correction_head(h).squeeze(-1),
        }

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Training loss: (loss, {"loss", "step_ce", "corrective_ce", "correction_bce"}).

        The corrective loss covers the frames labelled with a correction only (their
        ``corrective`` label is not IGNORE); with none in the batch it is 0.
        """
        out = self.logits(batch)
        step_ce = F.cross_entropy(out["step"], batch["step"])
        target = batch["corrective"]  # (B,)
        valid = target != IGNORE
        if self.config.corrective_classes > 0 and valid.any():
            corrective_ce = F.cross_entropy(out["corrective"][valid], target[valid])
        else:
            corrective_ce = out["step"].sum() * 0.0
        flag = F.binary_cross_entropy_with_logits(
            out["correction"], batch["correction"].float(),
            pos_weight=out["correction"].new_tensor(self.config.flag_pos_weight),
        )  # fmt: skip
        loss = step_ce + corrective_ce + flag
        return loss, {"loss": loss, "step_ce": step_ce, "corrective_ce": corrective_ce,
                      "correction_bce": flag}  # fmt: skip


def scene_features(normalizer: Normalizer, state: Tensor, env_state: Tensor) -> Tensor:
    """(..., T, S) state and (..., T, E) env_state histories -> normalized (..., T, S + E)."""
    return torch.cat(
        [normalizer.normalize(STATE, state), normalizer.normalize(ENV_STATE, env_state)], dim=-1
    )


def _name(key: str) -> str:
    return key.replace(".", "_")


# ---- inference and checkpoints ----------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """Class probabilities of one high-level prediction."""

    step: np.ndarray  # (n_step,)
    corrective: np.ndarray  # (n_corrective,), may be empty
    correction: float  # probability that a correction is needed


class HighLevelPolicy:
    """A trained high-level model with its vocabulary and normalization, on raw observations."""

    def __init__(
        self, model: HighLevelModel, normalizer: Normalizer, vocab: Vocabulary, fps: float
    ) -> None:
        self.model = model.eval()
        self.normalizer, self.vocab, self.fps = normalizer, vocab, fps
        self.config = model.config
        self.device = next(model.parameters()).device

    def batch(self, frames: Sequence[Mapping[str, np.ndarray]], task: str) -> dict[str, Tensor]:
        """One sample from ``history`` observations (oldest first) and the task instruction."""
        cfg = self.config
        if len(frames) != cfg.history:
            raise ValueError(f"the policy reads {cfg.history} frames, got {len(frames)}")
        batch = {}
        for key in cfg.image_keys:
            if key not in frames[-1]:
                raise ValueError(
                    f"the observation has no {key!r} (it has {sorted(frames[-1])}); the "
                    "high-level policy was trained with it: render that camera or retrain"
                )
            stack = np.stack([f[key] for f in frames])  # (T, h, w, 3)
            batch[key] = torch.from_numpy(stack).permute(0, 3, 1, 2)[None]  # (1, T, 3, h, w)
        state = torch.from_numpy(np.asarray(frames[-1][STATE], np.float32))
        batch[STATE] = self.normalizer.normalize(STATE, state)[None]
        if cfg.env_state_dim > 0:
            if ENV_STATE not in frames[-1]:
                raise ValueError(
                    f"the observation has no {ENV_STATE!r}; the high-level policy was trained "
                    "with it: use a driver that reports the scene state (the sim does)"
                )
            states = torch.from_numpy(np.stack([f[STATE] for f in frames]).astype(np.float32))
            envs = torch.from_numpy(np.stack([f[ENV_STATE] for f in frames]).astype(np.float32))
            batch["scene"] = scene_features(self.normalizer, states, envs)[None]
        batch["task_words"] = encode_words(self.vocab, [task])
        return {k: v.to(self.device) for k, v in batch.items()}

    @torch.no_grad()
    def predict(self, frames: Sequence[Mapping[str, np.ndarray]], task: str) -> Prediction:
        out = self.model.logits(self.batch(frames, task))
        return Prediction(
            step=out["step"][0].softmax(-1).cpu().numpy(),
            corrective=out["corrective"][0].softmax(-1).cpu().numpy(),
            correction=float(out["correction"][0].sigmoid()),
        )


def high_level_parts(
    config: HighLevelConfig,
    normalizer: Normalizer,
    vocab: Vocabulary,
    features: dict[str, dict],
    fps: float,
) -> tuple[dict, Callable[[Path], None]]:
    """A high-level checkpoint's config.json entries (the vocabularies are JSON there) and
    the writer of its extra files (the normalizer)."""
    meta = {
        "kind": KIND,
        "fps": fps,
        "high_level_config": dataclasses.asdict(config),
        "vocabularies": vocab.as_dict(),
        "features": features,
    }

    def write_extra(tmp: Path) -> None:
        save_file(normalizer.state_dict(), tmp / "normalizer.safetensors")

    return meta, write_extra


def read_meta(path: str | Path) -> tuple[Path, dict]:
    """A high-level checkpoint folder (or a run's newest) and its config.json."""
    folder = resolve_checkpoint(path)
    meta = read_json(folder / "config.json")
    if meta.get("kind") != KIND:
        raise ValueError(
            f"{folder} is not a high-level checkpoint: train one with `rtvla train "
            "policy=high_level dataset=DIR output=DIR` and pass that output as high_level="
        )
    return folder, meta


def load_high_level(path: str | Path, device: str | torch.device = "cpu") -> HighLevelPolicy:
    """Load a high-level checkpoint (or a run's newest) for inference."""
    folder, meta = read_meta(path)
    model = HighLevelModel(HighLevelConfig(**meta["high_level_config"]))
    load_weights(model, folder / "model.safetensors")
    normalizer = load_normalizer(folder / "normalizer.safetensors")
    vocab = Vocabulary.from_dict(meta["vocabularies"])
    return HighLevelPolicy(model.to(device), normalizer, vocab, meta["fps"])
