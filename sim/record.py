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

Durable and atomic. Nothing half-written ever sits at ``output``: the recording is staged in
``<output>.partial``, which holds ``recording.json`` (the settings) and, in ``episodes/``, each
finished episode as a complete LeRobotDataset of its own, written as ``*.tmp``, fsynced and
renamed into place the moment the episode ends. (lerobot 0.6 keeps a dataset's parquet file
open and its episode metadata buffered until ``finalize``, so one dataset for the whole
recording would be unreadable after a hard kill.) Finalisation merges the episodes with
lerobot's ``aggregate_datasets`` into ``<output>.partial/merged``, fsyncs it and renames it
to ``output``; a second Ctrl-C during it is deferred until it is done.

So a kill -9 at any moment loses at most the episode in progress. Ctrl-C (or an error)
mid-episode drops the unfinished episode and finalizes the finished ones. A leftover
``.partial`` folder is checked by the next run with the same ``output``: recorded with the same
settings, its finished episodes are kept and the recording resumes after the last one (and is
finalized at once if it has enough); anything else is refused with a message saying why.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sim.env import ENV_STATE, SimEnv
from sim.tasks import Labels, make_demonstrator
from sim.units import ROBOT_TYPE

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


def dataset_features(env: SimEnv, video: bool = False, extras: bool = True) -> dict[str, dict]:
    """lerobot feature spec of a recording: the env's features plus the hierarchy labels.

    extras=False keeps only what a real SO-101 recording (lerobot-record) has: the joint state,
    the action and the cameras, without ``observation.environment_state`` and the labels, so
    that the dataset merges with real ones through lerobot's ``aggregate_datasets``."""
    features = {k: dict(v) for k, v in env.feature_spec().items()}
    if video:
        for spec in features.values():
            if spec["dtype"] == "image":
                spec["dtype"] = "video"
    if not extras:
        features.pop(ENV_STATE, None)
        return features
    return {**features, **LABEL_FEATURES}


def partial_path(output: Path) -> Path:
    """Where a recording is built before it is renamed to ``output``."""
    return output.with_name(output.name + ".partial")


def check_output(output: Path, settings: dict | None = None) -> list[tuple[Path, int]]:
    """Refuse to overwrite a dataset; check a leftover ``.partial`` folder. Returns the
    finished episodes (folder, seed) it holds that a recording with ``settings`` can keep."""
    if output.exists():
        raise FileExistsError(
            f"output={output} already exists; recording never overwrites a dataset. "
            "Choose a new output= directory or delete the old one."
        )
    staging = partial_path(output)
    if not staging.exists():
        return []
    marker = staging / RECORDING_FILE
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        raise FileExistsError(
            f"{staging} is left over, but it has no readable {RECORDING_FILE}, so it is not a "
            "recording this version can resume. Delete it and run again."
        ) from None
    if settings is not None and recorded != settings:
        differ = sorted(k for k in settings.keys() | recorded.keys()
                        if settings.get(k) != recorded.get(k))  # fmt: skip
        raise FileExistsError(
            f"{staging} holds an interrupted recording made with other settings ("
            + ", ".join(f"{k}: {recorded.get(k)!r} then, {settings.get(k)!r} now" for k in differ)
            + "): run again with those settings to resume it, or delete it."
        )
    return finished_episodes(staging)


RECORDING_FILE = "recording.json"
EPISODE_FILE = "episode.json"


def finished_episodes(staging: Path) -> list[tuple[Path, int]]:
    """(folder, seed) of each finished episode under ``staging/episodes``, in order; an
    unfinished one (``*.tmp``) is deleted."""
    found = []
    for folder in sorted((staging / "episodes").glob("*")):
        if folder.suffix == ".tmp":
            shutil.rmtree(folder, ignore_errors=True)
            continue
        try:
            seed = json.loads((folder / EPISODE_FILE).read_text())["seed"]
        except (OSError, ValueError, KeyError):
            raise FileExistsError(
                f"{folder} is not a finished episode (no readable {EPISODE_FILE}): delete "
                f"{staging} and record again"
            ) from None
        found.append((folder, int(seed)))
    return found


def record_dataset(
    env: SimEnv,
    output: str | Path,
    episodes: int,
    *,
    seed: int = 0,
    failure_prob: float = 0.0,
    repo_id: str = "local/rtvla",
    video: bool = False,
    extras: bool = True,
    max_attempts: int | None = None,
    progress: bool = True,
) -> RecordingSummary:
    """Record ``episodes`` successful demonstrator episodes of ``env``'s task into ``output``.

    Episode attempt k is reset with seed ``seed + k``; attempts where the demonstrator fails are
    discarded (and counted), up to ``max_attempts`` (default ``2 * episodes``). A leftover
    ``<output>.partial`` of the same recording is resumed (module docstring). extras=False:
    only the features a real SO-101 recording has (``dataset_features``).
    """
    if episodes < 1:
        raise ValueError(f"episodes={episodes}: record at least 1 episode.")
    if not 0.0 <= failure_prob <= 1.0:
        raise ValueError(f"failure_prob={failure_prob} must be a probability in [0, 1].")
    output = Path(output)
    features = _jsonable(dataset_features(env, video, extras))
    settings = {"task": env.task.name, "seed": seed, "failure_prob": failure_prob, "video": video,
                "repo_id": repo_id, "features": features, "fps": round(env.control_hz)}  # fmt: skip
    kept = check_output(output, settings)
    max_attempts = max_attempts or 2 * episodes
    staging = partial_path(output)
    (staging / "episodes").mkdir(parents=True, exist_ok=True)
    if not (staging / RECORDING_FILE).exists():
        _write_durably(staging / RECORDING_FILE, json.dumps(settings, indent=2))
    if kept:
        log.warning("resuming %s: %d finished episodes kept", staging, len(kept))
    seeds = [s for _, s in kept]
    frames = sum(_episode_frames(folder) for folder, _ in kept)
    saved, discarded, injected = len(kept), 0, 0
    attempt = seeds[-1] - seed + 1 if seeds else 0
    interrupted = False
    start = time.perf_counter()
    bar = tqdm(total=episodes, initial=saved, desc=f"record {env.task.name}", unit="ep",
               disable=not progress)  # fmt: skip
    try:
        while saved < episodes and attempt < max_attempts:
            ok, n, failed = _record_episode(
                env,
                staging / "episodes",
                saved,
                seed + attempt,
                failure_prob,
                repo_id,
                video,
                extras,
            )
            attempt += 1
            injected += failed
            if ok:
                seeds.append(seed + attempt - 1)
                saved += 1
                frames += n
                bar.update(1)
            else:
                discarded += 1
            bar.set_postfix(frames=frames, discarded=discarded)
    except BaseException:
        interrupted = True
        log.warning(
            "recording stopped after %d finished episodes; dropping the unfinished one", saved
        )
        finish_recording(staging, output, repo_id)
        raise
    finally:
        bar.close()
    finish_recording(staging, output, repo_id)
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


def _record_episode(
    env: SimEnv,
    folder: Path,
    index: int,
    seed: int,
    failure_prob: float,
    repo_id: str,
    video: bool,
    extras: bool = True,
) -> tuple[bool, int, bool]:
    """One demonstrator episode; a successful one becomes ``folder/episode_<index>``, a
    complete dataset, durably. Returns (success, frames, failure injected)."""
    obs = env.reset(seed=seed)
    demonstrator = make_demonstrator(env, np.random.default_rng(seed), failure_prob=failure_prob)
    steps = []
    while not demonstrator.done and env.tick < env.max_steps:
        action, labels = demonstrator.act()
        steps.append((obs, action, labels))
        obs = env.step(action)
    if not env.success():
        return False, len(steps), demonstrator.failure is not None
    final = folder / f"episode_{index:06d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    dataset = create_dataset(env, tmp, repo_id=repo_id, video=video, extras=extras)
    for obs, action, labels in steps:
        add_frame(dataset, obs, action, labels, env.instruction)
    dataset.save_episode()
    dataset.finalize()
    (tmp / EPISODE_FILE).write_text(json.dumps({"seed": seed, "frames": len(steps)}))
    durable_rename(tmp, final)
    return True, len(steps), demonstrator.failure is not None


def create_dataset(
    env: SimEnv, root: Path, *, repo_id: str, video: bool = False, extras: bool = True
):
    """An empty LeRobotDataset at ``root`` for ``env``'s frames and (extras) the hierarchy
    labels, with the SO-101 follower's ``robot_type`` (``sim.units``)."""
    from datasets.utils.logging import disable_progress_bar
    from lerobot.datasets import LeRobotDataset  # heavy import, only needed here

    disable_progress_bar()  # a "Map" bar per saved episode; the recording has its own bar
    return LeRobotDataset.create(
        repo_id=repo_id,
        fps=round(env.control_hz),
        features=dataset_features(env, video, extras),
        root=root,
        robot_type=ROBOT_TYPE,
        use_videos=video,
        image_writer_threads=2,
        video_backend="pyav",
    )


def add_frame(dataset, obs: dict, action: np.ndarray, labels: Labels, task: str) -> None:
    """One frame into the dataset's episode buffer: observation, action, instruction and the
    labels, each only where the dataset has the feature (``dataset_features``'s extras)."""
    frame = {
        **obs,
        "action": np.asarray(action, dtype=np.float32),
        "step_instruction": labels.step_instruction,
        "corrective_instruction": labels.corrective_instruction,
        "correction": np.array([labels.correction]),
    }
    dataset.add_frame({**{k: v for k, v in frame.items() if k in dataset.features}, "task": task})


def finish_dataset(dataset, staging: Path, output: Path, saved: int) -> None:
    """Finalize one dataset's files and move it into place durably (or remove an empty one);
    a Ctrl-C meanwhile is deferred until it is done."""
    with _deferred_sigint():
        dataset.finalize()
        if saved == 0:
            shutil.rmtree(staging, ignore_errors=True)
            return
        durable_rename(staging, output)
    log.info("dataset with %d episodes written to %s", saved, output)


def finish_recording(staging: Path, output: Path, repo_id: str) -> None:
    """Merge the finished episodes into ``output`` (module docstring), or remove a staging
    folder without any; a Ctrl-C meanwhile is deferred until the dataset is in place."""
    with _deferred_sigint():
        episodes = [folder for folder, _ in finished_episodes(staging)]
        if not episodes:
            shutil.rmtree(staging, ignore_errors=True)
            return
        merged = staging / "merged"
        shutil.rmtree(merged, ignore_errors=True)
        shutil.rmtree(staging / "groups", ignore_errors=True)  # left by an older version
        merge_datasets(episodes, merged, repo_id)
        durable_rename(merged, output)
        shutil.rmtree(staging, ignore_errors=True)
    log.info("dataset with %d episodes written to %s", len(episodes), output)


def merge_datasets(roots: list[Path], output: Path, repo_id: str) -> None:
    """lerobot's ``aggregate_datasets`` of ``roots``, in order, into ``output``, keeping one
    data file per episode (``concatenate_data=False``): packing them into shards rewrites the
    growing output file for every dataset appended, which costs about n^2 / 2 episode writes
    (over an hour for 1200 rendered reach episodes); this is one copy per episode (about 15
    minutes for those, a few of them loading the episodes' metadata)."""
    from lerobot.datasets.aggregate import aggregate_datasets

    aggregate_datasets(
        repo_ids=[f.name for f in roots], aggr_repo_id=repo_id, roots=roots, aggr_root=output,
        concatenate_data=False,
    )  # fmt: skip


def durable_rename(source: Path, target: Path) -> None:
    """fsync every file and folder under ``source``, rename it to ``target`` and fsync the
    parent, so that after a crash ``target`` is either absent or complete.
    (``policies/checkpoint.py`` has its twin: the two packages import nothing from each other.)"""
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


def _write_durably(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent)


@contextlib.contextmanager
def _deferred_sigint() -> Iterator[None]:
    """Hold off SIGINT (main thread only) for the block; one that came is raised after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *args: caught.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        log.warning("Ctrl-C during finalisation: deferred until the dataset was in place")
        raise KeyboardInterrupt


def _episode_frames(folder: Path) -> int:
    return int(json.loads((folder / EPISODE_FILE).read_text())["frames"])


def _jsonable(features: dict) -> dict:
    return json.loads(json.dumps(features, default=list))
