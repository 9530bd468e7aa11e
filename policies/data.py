"""Training batches from a LeRobotDataset v3: action chunks through ``delta_timestamps``.

A dataset item at frame t holds the cameras and state at t and, through
``delta_timestamps = {"action": [0, 1/fps, ..., (H-1)/fps]}``, the H actions from t on, with
``action_is_pad`` marking the steps past the episode's end (lerobot repeats the last action
there). ``Collator`` turns items into the VLA's batch: normalized state and actions, byte
tokens of the instruction the policy is conditioned on, and FAST tokens of the chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from policies.fast import FastTokenizer
from policies.features import ACTION, ENV_STATE, STATE

log = logging.getLogger(__name__)


INSTRUCTION_SOURCES = ("task", "step", "hierarchy")
"""What the low-level policy reads as its instruction: the episode's ``task``, the expert's
``step_instruction``, or SRT-H's choice: the ``corrective_instruction`` on correction frames,
the step instruction elsewhere."""


def open_dataset(root: str | Path, chunk_length: int | None = None):
    """A local LeRobotDataset; with ``chunk_length`` H, items carry H-step action chunks."""
    from lerobot.datasets import LeRobotDataset, LeRobotDatasetMetadata

    root = Path(root)
    if not (root / "meta" / "info.json").is_file():
        raise FileNotFoundError(
            f"dataset={root} is not a LeRobotDataset v3 (no meta/info.json there): record one "
            "with `rtvla record task=... output=DIR` and pass that DIR"
        )
    delta = None
    if chunk_length is not None:
        fps = LeRobotDatasetMetadata(root.name, root=root).fps
        delta = {"action": [i / fps for i in range(chunk_length)]}
    return LeRobotDataset(root.name, root=root, delta_timestamps=delta, video_backend="pyav")


def camera_keys(features: dict[str, dict]) -> tuple[str, ...]:
    """The dataset's camera features, sorted (the order the policy reads them in)."""
    return tuple(sorted(k for k, f in features.items() if f["dtype"] in ("image", "video")))


def camera_spec(features: dict[str, dict]) -> tuple[tuple[str, ...], tuple[int, int]]:
    """The dataset's camera keys and their common image size (h, w); a clear error when it
    has no camera or cameras of different sizes."""
    cams = camera_keys(features)
    if not cams:
        raise ValueError(
            "the dataset has no camera features (observation.images.*): the policy needs one"
        )
    sizes = {tuple(features[k]["shape"][:2]) for k in cams}
    if len(sizes) != 1:
        raise ValueError(f"cameras have different sizes {sizes}: record them at one image_size")
    return cams, sizes.pop()


def instruction_of(item: dict, source: str) -> str:
    """The instruction a dataset item conditions the policy on (see INSTRUCTION_SOURCES)."""
    if source == "task":
        return item["task"]
    if source == "step":
        return item["step_instruction"]
    if source == "hierarchy":
        return (
            item["corrective_instruction"] if bool(item["correction"]) else item["step_instruction"]
        )
    raise ValueError(f"instruction={source!r} is unknown: use one of {INSTRUCTION_SOURCES}")


def check_instruction_source(features: dict[str, dict], source: str) -> None:
    """Fail early when the dataset lacks the labels an instruction source needs."""
    needs = {"task": (), "step": ("step_instruction",),
             "hierarchy": ("step_instruction", "corrective_instruction", "correction")}  # fmt: skip
    if source not in needs:
        raise ValueError(f"instruction={source!r} is unknown: use one of {INSTRUCTION_SOURCES}")
    missing = [k for k in needs[source] if k not in features]
    if missing:
        raise ValueError(
            f"instruction={source} needs the dataset features {missing}, which it lacks: use "
            "instruction=task, or record the dataset with `rtvla record` (it writes them)"
        )


def action_chunks(dataset, chunk_length: int, count: int, seed: int = 0) -> np.ndarray:
    """``count`` random raw action chunks (count, H, A), without decoding any image.

    Chunks that run past their episode's end repeat its last action, as lerobot pads.
    """
    table = dataset.hf_dataset.select_columns([ACTION, "episode_index"]).with_format("numpy")
    actions = np.stack(table[ACTION]).astype(np.float32)  # (N, A)
    episode = np.asarray(table["episode_index"])  # (N,)
    last = np.zeros(len(episode), dtype=np.int64)  # index of each frame's episode's last frame
    for ep in np.unique(episode):
        where = np.flatnonzero(episode == ep)
        last[where] = where[-1]
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(actions), size=min(count, len(actions)))
    index = np.minimum(starts[:, None] + np.arange(chunk_length), last[starts][:, None])
    return actions[index]  # (count, H, A)


class InMemoryChunks(torch.utils.data.Dataset):
    """A LeRobotDataset decoded once into memory, serving the same items as its
    ``delta_timestamps`` chunk queries (same clamping to the episode, same ``action_is_pad``).

    lerobot answers each chunk query with a table lookup and PNG decodes (tens of ms per item
    on a small CPU); this reads every column once, so an epoch costs only array indexing.
    Images stay uint8 in memory and become float CHW in [0, 1] per item, as lerobot returns.
    """

    def __init__(self, dataset, chunk_length: int, image_keys: Sequence[str] | None = None) -> None:
        """image_keys: the cameras to decode (None: all; () for state-based policies)."""
        from tqdm import tqdm

        features = dataset.meta.features
        self.image_keys = camera_keys(features) if image_keys is None else tuple(image_keys)
        self.text_keys = [k for k in ("step_instruction", "corrective_instruction")
                          if k in features]  # fmt: skip
        table = dataset.hf_dataset.with_format("numpy")  # raw arrays, no per-item transform
        self.episode = np.asarray(table["episode_index"])  # (N,)
        self.state = torch.from_numpy(np.stack(table[STATE]).astype(np.float32))
        self.action = torch.from_numpy(np.stack(table[ACTION]).astype(np.float32))
        self.env_state = (
            torch.from_numpy(np.stack(table[ENV_STATE]).astype(np.float32))
            if ENV_STATE in features
            else None
        )
        self.correction = (np.asarray(table["correction"], dtype=bool).reshape(-1)
                           if "correction" in features else None)  # fmt: skip
        self.texts = {k: [str(t) for t in table[k]] for k in self.text_keys}
        tasks = dataset.meta.tasks  # DataFrame indexed by task string
        by_index = dict(zip(tasks["task_index"].tolist(), tasks.index.tolist(), strict=True))
        self.task = [by_index[int(i)] for i in table["task_index"]]
        self.images = {
            key: torch.from_numpy(
                np.stack(list(tqdm(table[key], desc=f"decode {key}", leave=False)))
            )
            for key in self.image_keys
        }  # (N, h, w, 3) uint8
        starts, ends = {}, {}
        for ep in np.unique(self.episode):
            where = np.flatnonzero(self.episode == ep)
            starts[ep], ends[ep] = where[0], where[-1] + 1
        self.ep_start = np.array([starts[e] for e in self.episode])
        self.ep_end = np.array([ends[e] for e in self.episode])
        self.offsets = np.arange(chunk_length)

    def __len__(self) -> int:
        return len(self.episode)

    def __getitem__(self, i: int) -> dict:
        query = i + self.offsets
        index = np.clip(query, self.ep_start[i], self.ep_end[i] - 1)
        item = {key: self.images[key][i].permute(2, 0, 1).float() / 255 for key in self.image_keys}
        item[STATE] = self.state[i]
        if self.env_state is not None:
            item[ENV_STATE] = self.env_state[i]
        item[ACTION] = self.action[index]  # (H, A)
        item["action_is_pad"] = torch.from_numpy(query >= self.ep_end[i])  # (H,)
        item["task"] = self.task[i]
        for key in self.text_keys:
            item[key] = self.texts[key][i]
        if self.correction is not None:
            item["correction"] = bool(self.correction[i])
        return item


class Collator:
    """Dataset items -> the VLA's training batch: the serving preprocessor
    (``policies.inference.VLAPreprocessor.batch``) on the items' images, state and
    instructions, plus normalized actions, their padding and FAST tokens."""

    def __init__(
        self,
        preprocessor,
        instruction: str = "task",
        fast_tokenizer: FastTokenizer | None = None,
        max_fast_tokens: int = 64,
    ) -> None:
        self.preprocessor = preprocessor
        self.normalizer = preprocessor.normalizer
        self.instruction = instruction
        self.fast_tokenizer = fast_tokenizer
        self.max_fast_tokens = max_fast_tokens

    def __call__(self, items: list[dict]) -> dict[str, Tensor]:
        images = {
            key: torch.stack([it[key] for it in items]) for key in self.preprocessor.image_keys
        }
        state = torch.stack([it[STATE] for it in items])  # (B, S)
        texts = [instruction_of(it, self.instruction) for it in items]
        batch = self.preprocessor.batch(images, state, texts)
        actions = torch.stack([it[ACTION] for it in items])  # (B, H, A)
        batch[ACTION] = self.normalizer.normalize(ACTION, actions)
        batch["action_is_pad"] = torch.stack([it["action_is_pad"] for it in items])  # (B, H)
        if ENV_STATE in self.normalizer.mean:  # an auxiliary target (VLAConfig.aux_env_state)
            env = torch.stack([it[ENV_STATE] for it in items])  # (B, E)
            batch[ENV_STATE] = self.normalizer.normalize(ENV_STATE, env)
        if self.fast_tokenizer is not None:
            tokens, mask = self.fast_tokenizer.encode_padded(
                batch[ACTION].numpy(), self.max_fast_tokens
            )
            batch["fast_tokens"], batch["fast_mask"] = (
                torch.from_numpy(tokens),
                torch.from_numpy(mask),
            )
        return batch
