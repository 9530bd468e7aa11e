"""Record scripted demonstrations as a LeRobotDataset v3 (written through lerobot's API).

Each frame pairs the observation taken at tick t (joint positions, the scene state
``observation.environment_state`` and the camera images: ``SimEnv.observe``) with the action
commanded at tick t, plus the episode's language instruction (lerobot's ``task``) and the
SRT-H hierarchy labels:

- ``step_instruction`` (string): the phase the demonstrator is in, e.g. "grasp the red cube";
- ``corrective_instruction`` (string): what the demonstrator is doing to recover, "" when nothing;
- ``correction`` (bool): whether this frame belongs to a recovery.

lerobot 0.6's own language columns (``language_persistent``/``language_events``) are filled
by its offline annotation pipeline and dropped by ``add_frame``, so the labels are plain
extra features (see docs/design.md).

Nothing half-written ever sits at ``output``: the dataset is built in ``<output>.partial`` and
renamed into place once finalized. Ctrl-C (or an error) mid-episode drops the unfinished
episode and keeps the finished ones; a hard kill leaves only the ``.partial`` folder, which
the next run refuses to reuse with a message saying to delete it.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sim.env import SimEnv
from sim.tasks import Labels, make_demonstrator

log = logging.getLogger(__name__)

LABEL_FEATURES: dict[str, dict] = {
    "step_instruction": {"dtype": "string", "shape": (1,), "names": None},
    "corrective_instruction": {"dtype": "string", "shape": (1,), "names": None},
    "correction": {"dtype": "bool", "shape": (1,), "names": None},
}


@dataclass(frozen=True)
class RecordingSummary:
    """What a recording produced; ``as_dict`` is the JSON line the CLI prints."""

    output: str
    episodes: int
    frames: int
    discarded: int
    failures_injected: int
    interrupted: bool
    seconds: float
    seeds: tuple[int, ...]  # reset seed of each saved episode, in dataset order

    def as_dict(self) -> dict:
        return {
            "output": self.output,
            "episodes": self.episodes,
            "frames": self.frames,
            "discarded_failed_episodes": self.discarded,
            "failures_injected": self.failures_injected,
            "interrupted": self.interrupted,
            "seconds": round(self.seconds, 2),
            "frames_per_s": round(self.frames / max(self.seconds, 1e-9), 1),
            "seeds": list(self.seeds),
        }


def dataset_features(env: SimEnv, video: bool = False) -> dict[str, dict]:
    """lerobot feature spec of a recording: the env's features plus the hierarchy labels."""
    features = {k: dict(v) for k, v in env.feature_spec().items()}
    if video:
        for spec in features.values():
            if spec["dtype"] == "image":
                spec["dtype"] = "video"
    return {**features, **LABEL_FEATURES}


def partial_path(output: Path) -> Path:
    """Where a recording is built before it is renamed to ``output``."""
    return output.with_name(output.name + ".partial")


def check_output(output: Path) -> None:
    """Refuse to overwrite a dataset or to reuse a crashed recording's leftovers."""
    if output.exists():
        raise FileExistsError(
            f"output={output} already exists; recording never overwrites a dataset. "
            "Choose a new output= directory or delete the old one."
        )
    leftover = partial_path(output)
    if leftover.exists():
        raise FileExistsError(
            f"{leftover} is left over from an interrupted recording and holds no usable "
            "dataset. Delete it and run again."
        )


def record_dataset(
    env: SimEnv,
    output: str | Path,
    episodes: int,
    *,
    seed: int = 0,
    failure_prob: float = 0.0,
    repo_id: str = "local/rtvla",
    video: bool = False,
    max_attempts: int | None = None,
    progress: bool = True,
) -> RecordingSummary:
    """Record ``episodes`` successful demonstrator episodes of ``env``'s task into ``output``.

    Episode attempt k is reset with seed ``seed + k``; attempts where the demonstrator fails are
    discarded (and counted), up to ``max_attempts`` (default ``2 * episodes``).
    """
    if episodes < 1:
        raise ValueError(f"episodes={episodes}: record at least 1 episode.")
    if not 0.0 <= failure_prob <= 1.0:
        raise ValueError(f"failure_prob={failure_prob} must be a probability in [0, 1].")
    output = Path(output)
    check_output(output)
    max_attempts = max_attempts or 2 * episodes
    staging = partial_path(output)
    staging.parent.mkdir(parents=True, exist_ok=True)

    dataset = create_dataset(env, staging, repo_id=repo_id, video=video)
    saved = frames = discarded = injected = attempt = 0
    seeds: list[int] = []
    interrupted = False
    start = time.perf_counter()
    bar = tqdm(total=episodes, desc=f"record {env.task.name}", unit="ep", disable=not progress)
    try:
        while saved < episodes and attempt < max_attempts:
            ok, n, failed = _record_episode(env, dataset, seed + attempt, failure_prob)
            attempt += 1
            injected += failed
            if ok:
                dataset.save_episode()
                seeds.append(seed + attempt - 1)
                saved += 1
                frames += n
                bar.update(1)
            else:
                dataset.clear_episode_buffer()
                discarded += 1
            bar.set_postfix(frames=frames, discarded=discarded)
    except BaseException:
        interrupted = True
        log.warning(
            "recording stopped after %d finished episodes; dropping the unfinished one", saved
        )
        dataset.clear_episode_buffer()
        finish_dataset(dataset, staging, output, saved)
        raise
    finally:
        bar.close()
    finish_dataset(dataset, staging, output, saved)
    if saved < episodes:
        log.warning(
            "only %d of %d episodes succeeded within %d attempts", saved, episodes, max_attempts
        )
    return RecordingSummary(
        output=str(output),
        episodes=saved,
        frames=frames,
        discarded=discarded,
        failures_injected=injected,
        interrupted=interrupted,
        seconds=time.perf_counter() - start,
        seeds=tuple(seeds),
    )


def _record_episode(env: SimEnv, dataset, seed: int, failure_prob: float) -> tuple[bool, int, bool]:
    """One demonstrator episode into the dataset's buffer: (success, frames, failure injected)."""
    obs = env.reset(seed=seed)
    demonstrator = make_demonstrator(env, np.random.default_rng(seed), failure_prob=failure_prob)
    n = 0
    while not demonstrator.done and env.tick < env.max_steps:
        action, labels = demonstrator.act()
        add_frame(dataset, obs, action, labels, env.instruction)
        obs = env.step(action)
        n += 1
    return env.success(), n, demonstrator.failure is not None


def create_dataset(env: SimEnv, root: Path, *, repo_id: str, video: bool = False):
    """An empty LeRobotDataset at ``root`` for ``env``'s frames and the hierarchy labels."""
    from datasets.utils.logging import disable_progress_bar
    from lerobot.datasets import LeRobotDataset  # heavy import, only needed here

    disable_progress_bar()  # a "Map" bar per saved episode; the recording has its own bar
    return LeRobotDataset.create(
        repo_id=repo_id,
        fps=round(env.control_hz),
        features=dataset_features(env, video),
        root=root,
        robot_type="so100_sim",
        use_videos=video,
        image_writer_threads=2,
        video_backend="pyav",
    )


def add_frame(dataset, obs: dict, action: np.ndarray, labels: Labels, task: str) -> None:
    """One frame into the dataset's episode buffer: observation, action, instruction, labels."""
    dataset.add_frame(
        {
            **obs,
            "action": np.asarray(action, dtype=np.float32),
            "task": task,
            "step_instruction": labels.step_instruction,
            "corrective_instruction": labels.corrective_instruction,
            "correction": np.array([labels.correction]),
        }
    )


def finish_dataset(dataset, staging: Path, output: Path, saved: int) -> None:
    """Finalize the parquet files and move the dataset into place (or remove an empty one)."""
    dataset.finalize()
    if saved == 0:
        shutil.rmtree(staging, ignore_errors=True)
        return
    staging.rename(output)
    log.info("dataset with %d episodes written to %s", saved, output)
