"""Training batches from a LeRobotDataset v3: action chunks through ``delta_timestamps``.

A dataset item at frame t holds the cameras and state at t and, through
``delta_timestamps = {"action": [0, 1/fps, ..., (H-1)/fps]}``, the H actions from t on, with
``action_is_pad`` marking the steps past the episode's end (lerobot repeats the last action
there). ``Collator`` turns items into the VLA's batch: normalized state and actions, byte
tokens of the instruction the policy is conditioned on, and FAST tokens of the chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from policies.fast import FastTokenizer
from policies.features import ACTION, ENV_STATE, GOAL_STATE, HISTORY_SUFFIX, STATE
from policies.vision import resize_with_pad

log = logging.getLogger(__name__)


INSTRUCTION_SOURCES = ("task", "step", "hierarchy", "hierarchy+task")
"""What the low-level policy reads as its instruction: the episode's ``task``, the expert's
``step_instruction``, SRT-H's choice (the ``corrective_instruction`` on correction frames, the
step instruction elsewhere), or SRT-H's choice followed by the task (``with_task``), so that a
low level told "open the gripper and retry" still knows which cube and bin the episode is
about; at run time ``high_level_with_task=true`` sends it so."""

TASK_SEPARATOR = " ; "


def with_task(instruction: str, task: str) -> str:
    """The instruction of a ``hierarchy+task`` low level: SRT-H's choice, then the task."""
    return f"{instruction}{TASK_SEPARATOR}{task}"


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
    if source in ("hierarchy", "hierarchy+task"):
        chosen = (
            item["corrective_instruction"] if bool(item["correction"]) else item["step_instruction"]
        )
        return chosen if source == "hierarchy" else with_task(chosen, item["task"])
    raise ValueError(f"instruction={source!r} is unknown: use one of {INSTRUCTION_SOURCES}")


def check_instruction_source(features: dict[str, dict], source: str) -> None:
    """Fail early when the dataset lacks the labels an instruction source needs."""
    needs = {"task": (), "step": ("step_instruction",),
             "hierarchy": ("step_instruction", "corrective_instruction", "correction")}  # fmt: skip
    needs["hierarchy+task"] = needs["hierarchy"]
    if source not in needs:
        raise ValueError(f"instruction={source!r} is unknown: use one of {INSTRUCTION_SOURCES}")
    missing = [k for k in needs[source] if k not in features]
    if missing:
        raise ValueError(
            f"instruction={source} needs the dataset features {missing}, which it lacks: use "
            "instruction=task, or record the dataset with `rtvla record` (it writes them)"
        )


def column(hf_dataset, key: str, dtype=None) -> np.ndarray:
    """One column of a lerobot ``hf_dataset`` as an array (N,) or (N, D), read through arrow:
    seconds faster per 10k rows than iterating its numpy-formatted column row by row."""
    import pyarrow as pa

    col = hf_dataset.with_format("arrow")[key]
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        out = np.asarray(arr.flatten()).reshape(len(arr), -1)
    elif pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        out = np.asarray(arr.to_pylist(), dtype=object)
    else:
        out = arr.to_numpy(zero_copy_only=False)
    return out if dtype is None else out.astype(dtype)


def action_chunks(dataset, chunk_length: int, count: int, seed: int = 0) -> np.ndarray:
    """``count`` random raw action chunks (count, H, A), without decoding any image.

    Chunks that run past their episode's end repeat its last action, as lerobot pads.
    """
    actions = column(dataset.hf_dataset, ACTION, np.float32)  # (N, A)
    episode = column(dataset.hf_dataset, "episode_index")  # (N,)
    return sample_chunks(actions, episode, chunk_length, count, seed)


def sample_chunks(
    actions: np.ndarray, episode: np.ndarray, chunk_length: int, count: int, seed: int = 0
) -> np.ndarray:
    """``action_chunks`` on arrays: actions (N, A) and each frame's episode (N,)."""
    last = np.zeros(len(episode), dtype=np.int64)  # index of each frame's episode's last frame
    for ep in np.unique(episode):
        where = np.flatnonzero(episode == ep)
        last[where] = where[-1]
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(actions), size=min(count, len(actions)))
    index = np.minimum(starts[:, None] + np.arange(chunk_length), last[starts][:, None])
    return actions[index]  # (count, H, A)


def rename_features(features: dict[str, dict], rename_map: Mapping[str, str]) -> dict[str, dict]:
    """A dataset's (or robot's) features under the policy's names (lerobot's ``--rename_map``:
    ``{"observation.images.laptop": "observation.images.front"}``); unnamed keys stay."""
    missing = sorted(set(rename_map) - set(features))
    if missing:
        raise ValueError(
            f"rename_map renames {missing}, which the dataset lacks (it has {sorted(features)}): "
            "map the dataset's own keys to the policy's"
        )
    renamed = {rename_map.get(k, k): v for k, v in features.items()}
    if len(renamed) != len(features):
        raise ValueError(f"rename_map={dict(rename_map)} maps two features to one name")
    return renamed


class Renamed(torch.utils.data.Dataset):
    """A dataset whose items' keys are renamed by a rename map (``data=lerobot``)."""

    def __init__(self, dataset, rename_map: Mapping[str, str]) -> None:
        self.dataset, self.rename_map = dataset, dict(rename_map)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return {self.rename_map.get(k, k): v for k, v in self.dataset[i].items()}


def decode_camera(dataset, key: str, size: tuple[int, int] | None = None) -> Tensor:
    """Every frame of one camera, uint8 (N, 3, h, w), through lerobot's decoding: PNG frames
    from the parquet files, or, for a ``video`` feature, each episode's frames from its MP4
    with ``lerobot.datasets.video_utils.decode_video_frames`` (the decoder lerobot's own
    queries use). ``size`` (H, W): each frame goes through ``resize_with_pad`` as the policy's
    preprocessing does (rounded back to uint8), so memory holds policy-sized images."""
    from lerobot.datasets.video_utils import decode_video_frames

    table = dataset.hf_dataset.with_format("numpy")
    episode = column(dataset.hf_dataset, "episode_index")  # (N,)
    if dataset.meta.features[key]["dtype"] == "video":
        timestamps = column(dataset.hf_dataset, "timestamp", np.float64).reshape(-1)  # (N,)
        blocks = []
        for ep in tqdm(dict.fromkeys(episode.tolist()), desc=f"decode {key}", leave=False):
            where = np.flatnonzero(episode == ep)
            start = dataset.meta.episodes[ep][f"videos/{key}/from_timestamp"]
            path = dataset.root / dataset.meta.get_video_file_path(ep, key)
            frames = decode_video_frames(
                path, (start + timestamps[where]).tolist(), dataset.tolerance_s, "pyav",
                return_uint8=True,
            )  # fmt: skip  # (n, 3, h, w) uint8
            blocks.append(_fit(frames, size))
        return torch.cat(blocks)
    rows = table[key]
    blocks = [
        _fit(torch.from_numpy(np.stack(rows[i : i + 256])).permute(0, 3, 1, 2), size)
        for i in tqdm(range(0, len(rows), 256), desc=f"decode {key}", leave=False)
    ]  # from (n, h, w, 3)
    return torch.cat(blocks)


def _fit(frames: Tensor, size: tuple[int, int] | None) -> Tensor:
    """uint8 (n, 3, h, w) -> uint8 (n, 3, H, W) through ``resize_with_pad``."""
    if size is None or tuple(frames.shape[-2:]) == tuple(size):
        return frames.contiguous()
    resized = resize_with_pad(frames.float() / 255, size)
    return (resized * 255).round().to(torch.uint8)


def failure_segments(episode: np.ndarray, correction: np.ndarray) -> np.ndarray:
    """(N,) True on the frames of each episode before its first ``correction`` frame, in the
    episodes that have one: the demonstrator's injected failure (``rtvla record failure_prob``),
    whose actions head for the wrong place under the task's instruction. Episodes without a
    correction have none."""
    out = np.zeros(len(episode), dtype=bool)
    for ep in np.unique(episode):
        where = np.flatnonzero(episode == ep)
        fixes = np.flatnonzero(correction[where])
        if len(fixes):
            out[where[: fixes[0]]] = True
    return out


class InMemoryChunks(torch.utils.data.Dataset):
    """A LeRobotDataset decoded once into memory, serving the same items as its
    ``delta_timestamps`` chunk queries (same clamping to the episode, same ``action_is_pad``).

    lerobot answers each chunk query with a table lookup and an image or video decode (tens of
    ms per item on a small CPU); this decodes every column once (``decode_camera``), so an
    epoch costs only array indexing. Images stay uint8 in memory (resized to the policy's
    ``image_size`` when given) and become float CHW in [0, 1] per item, as lerobot returns.
    Keys are renamed by ``rename_map`` (dataset name -> policy name), cameras included.
    """

    def __init__(
        self,
        dataset,
        chunk_length: int,
        image_keys: Sequence[str] | None = None,
        image_size: tuple[int, int] | None = None,
        rename_map: Mapping[str, str] | None = None,
        history_offsets: Sequence[int] = (),
        label_shift: int = 0,
        drop_failure_actions: bool = False,
    ) -> None:
        """image_keys: the cameras to decode, policy names (None: all; () for state-based
        policies); image_size: (H, W) to resize them to (None: as recorded);
        history_offsets: items also hold ``<key>.history`` (T, D) for the state and the scene
        state, at these frame offsets (< 0), clamped to the episode's first frame;
        label_shift: an item's hierarchy labels (step and corrective instruction, correction
        flag) are those of the frame this many frames later, clamped to the episode's last
        frame, as the high-level policy is trained to predict them
        (``policies.hierarchy.label_indices``);
        drop_failure_actions: the frames of an episode before its first ``correction`` frame
        (``failure_segments``: an injected failure) have every action marked as padding, so no
        action loss reads them; everything else of them (images, states, scene state) stays."""
        if label_shift < 0:
            raise ValueError(f"label_shift={label_shift} must be >= 0 frames")
        self.label_shift = int(label_shift)
        rename = dict(rename_map or {})
        features = rename_features(dataset.meta.features, rename)
        source = {rename.get(k, k): k for k in dataset.meta.features}  # policy name -> dataset's
        self.image_keys = camera_keys(features) if image_keys is None else tuple(image_keys)
        self.text_keys = [k for k in ("step_instruction", "corrective_instruction")
                          if k in features]  # fmt: skip
        hf = dataset.hf_dataset  # raw arrays, no per-item transform
        self.episode = column(hf, "episode_index")  # (N,)
        self.state = torch.from_numpy(column(hf, source[STATE], np.float32))
        self.action = torch.from_numpy(column(hf, ACTION, np.float32))
        self.env_state = (
            torch.from_numpy(column(hf, source[ENV_STATE], np.float32))
            if ENV_STATE in features
            else None
        )
        self.correction = (column(hf, "correction", bool).reshape(-1)
                           if "correction" in features else None)  # fmt: skip
        self.texts = {k: [str(t) for t in column(hf, k)] for k in self.text_keys}
        tasks = dataset.meta.tasks  # DataFrame indexed by task string
        by_index = dict(zip(tasks["task_index"].tolist(), tasks.index.tolist(), strict=True))
        self.task = [by_index[int(i)] for i in column(hf, "task_index").reshape(-1)]
        self.images = {key: decode_camera(dataset, source[key], image_size)
                       for key in self.image_keys}  # fmt: skip  # (N, 3, h, w) uint8
        starts, ends = {}, {}
        for ep in np.unique(self.episode):
            where = np.flatnonzero(self.episode == ep)
            starts[ep], ends[ep] = where[0], where[-1] + 1
        self.ep_start = np.array([starts[e] for e in self.episode])
        self.ep_end = np.array([ends[e] for e in self.episode])
        self.offsets = np.arange(chunk_length)
        self.history_offsets = np.asarray(history_offsets, dtype=np.int64)  # (T,)
        self.drop_actions = np.zeros(len(self.episode), dtype=bool)  # (N,)
        if drop_failure_actions:
            if self.correction is None:
                raise ValueError(
                    "failure_actions=drop needs the `correction` label, which the dataset "
                    "lacks: record it with `rtvla record failure_prob=...`"
                )
            self.drop_actions = failure_segments(self.episode, self.correction)
        if len(self.history_offsets) and self.env_state is None:
            raise ValueError(f"history_offsets need {ENV_STATE}, which the dataset lacks")

    def __len__(self) -> int:
        return len(self.episode)

    def relative_action_stats(self, mask: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std (A,) of every chunk's actions taken relative to its frame's state on
        the ``mask`` dims (``policies.state_flow.relative_mask``), over the steps inside the
        episode: the normalization of a policy of relative actions."""
        n = len(self.episode)
        query = np.arange(n)[:, None] + self.offsets  # (N, H)
        inside = query < self.ep_end[:, None]
        index = np.minimum(query, self.ep_end[:, None] - 1)
        offsets = self.state.numpy() * np.asarray(mask, dtype=np.float32)  # (N, A)
        rel = self.action.numpy()[index] - offsets[:, None, :]  # (N, H, A)
        rel = rel[inside].astype(np.float64)  # (M, A)
        return rel.mean(axis=0), rel.std(axis=0)

    def history_index(self, index: np.ndarray) -> np.ndarray:
        """(N, T) the frames ``history_offsets`` before each of ``index`` (N,), clamped to
        their episode's first frame."""
        return np.maximum(index[:, None] + self.history_offsets, self.ep_start[index][:, None])

    def history_change_stats(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per history key, the mean (0) and the std (T, D) of the change since each earlier
        frame (``current - earlier``) over every frame: the state policy's normalization of
        what it reads of the history (``policies.state_flow.StatePreprocessor``)."""
        index = np.arange(len(self.episode))
        past = self.history_index(index)  # (N, T)
        out = {}
        for key, values in ((STATE, self.state), (ENV_STATE, self.env_state)):
            v = values.numpy().astype(np.float64)
            change = v[index][:, None, :] - v[past]  # (N, T, D)
            std = change.std(axis=0)
            out[key + HISTORY_SUFFIX] = (np.zeros_like(std), std)
        return out

    def frame_in_episode(self) -> np.ndarray:
        """Each item's frame index within its episode (N,) (0 at an episode's first frame)."""
        return np.arange(len(self.episode)) - self.ep_start

    def __getitem__(self, i: int) -> dict:
        query = i + self.offsets
        index = np.clip(query, self.ep_start[i], self.ep_end[i] - 1)
        item = {key: self.images[key][i].float() / 255 for key in self.image_keys}
        item[STATE] = self.state[i]
        item[GOAL_STATE] = self.state[self.ep_end[i] - 1]  # hindsight: where the episode ends
        if self.env_state is not None:
            item[ENV_STATE] = self.env_state[i]
        if len(self.history_offsets):
            past = self.history_index(np.array([i]))[0]  # (T,)
            item[STATE + HISTORY_SUFFIX] = self.state[past]  # (T, S)
            item[ENV_STATE + HISTORY_SUFFIX] = self.env_state[past]  # (T, E)
        item[ACTION] = self.action[index]  # (H, A)
        item["action_is_pad"] = torch.from_numpy(
            (query >= self.ep_end[i]) | self.drop_actions[i]
        )  # (H,)
        item["task"] = self.task[i]
        label = min(i + self.label_shift, self.ep_end[i] - 1)
        for key in self.text_keys:
            item[key] = self.texts[key][label]
        if self.correction is not None:
            item["correction"] = bool(self.correction[label])
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
        goal: bool = False,
    ) -> None:
        """goal: add the normalized ``goal_state`` of each item (``InMemoryChunks`` gives it)."""
        self.preprocessor = preprocessor
        self.goal = goal
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
        if self.goal and GOAL_STATE in items[0]:  # an auxiliary target (VLAConfig.aux_goal)
            goal = torch.stack([it[GOAL_STATE] for it in items])  # (B, S)
            batch[GOAL_STATE] = self.normalizer.normalize(STATE, goal)
        if self.fast_tokenizer is not None:
            tokens, mask = self.fast_tokenizer.encode_padded(
                batch[ACTION].numpy(), self.max_fast_tokens
            )
            batch["fast_tokens"], batch["fast_mask"] = (
                torch.from_numpy(tokens),
                torch.from_numpy(mask),
            )
        return batch
