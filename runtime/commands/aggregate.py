"""``rtvla aggregate``: correction data from the hierarchy's own rollouts (DAgger-style).

Ross et al. 2011 ("A Reduction of Imitation Learning and Structured Prediction to No-Regret
Online Learning"): states the learned policy visits, labelled by the demonstrator. As in SRT-H's
correction collection, the demonstrator steps in only where a correction is needed:

1. roll out the low-level checkpoint (with the ``high_level`` choosing its instructions) in
   MuJoCo with pushes (``failure_prob``, ``sim/disturb.py``), exactly as ``rtvla run`` does;
2. ``takeover_after_s`` after a push lets go of the arm, if the grip site is farther than
   ``takeover_tolerance`` from where the push began, the task's scripted demonstrator takes over
   (``sim.disturb.Recovery``): back to that point, labelled as a correction with direction
   words ("move left"), then its own script to the end of the task; after a knock or a drop
   (``disturbance.kinds``) it takes over unless the policy holds the cube again, its first
   move labelled "move left" (towards the knocked cube) or "pick up the dropped cube".
   With ``takeover_on=[miss]`` (or both) it also takes over where the policy fails on its own:
   the moment its gripper closes on nothing, its first move labelled "open the gripper and
   retry", as the demonstrator labels its own missed grasps (HG-DAgger's gate: the expert
   steps in at the learner's mistakes, so the data covers the states the learner reaches);
3. the demonstrator's part, from the takeover on, is recorded as a new episode (successful ones
   only), through ``sim/record.py``'s writer, into ``<output>_corrections``;
4. ``output`` is that dataset merged with the original ``dataset`` by lerobot's
   ``aggregate_datasets`` (episodes, tasks and stats), ready for ``rtvla train``.

Both folders are built as ``*.partial`` and renamed into place; existing ones are refused.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from policies.checkpoint import check_features
from runtime.commands.run import controller_setup, make_client, make_run_driver
from runtime.robot.controller import Controller, start_episode
from sim.disturb import Disturbance, Recovery, recovery_fix
from sim.env import SimEnv
from sim.record import (
    LABEL_FEATURES,
    add_frame,
    check_output,
    create_dataset,
    dataset_features,
    durable_rename,
    finish_dataset,
    partial_path,
)
from sim.units import to_follower

log = logging.getLogger(__name__)


TAKEOVER_TRIGGERS = ("disturbance", "miss")  # takeover_on= choices
MISS_CLOSED, MISS_OPEN = 3.0, 20.0  # gripper (0 closed to 100): closed on nothing / open
MISS_FIX = "open the gripper and retry"  # the demonstrator's words after its own missed grasp


def check_takeover_on(on) -> None:
    """Refuse an empty ``takeover_on`` or one naming an unknown gate."""
    if not on or set(on) - set(TAKEOVER_TRIGGERS):
        raise ValueError(f"takeover_on={list(on)}: choose one or more of {list(TAKEOVER_TRIGGERS)}")


class Takeover:
    """``done`` callback of a rollout: True once the demonstrator should take over (``due``).

    ``on``: what calls for it. ``disturbance``: ``after`` ticks after the injected failure lets
    go, if the policy has not undone it (a push: the grip site farther than ``tolerance`` from
    where it began; a knock or a drop: the cube not held). ``miss``: the policy closes its
    gripper on nothing (under ``MISS_CLOSED`` after being open past ``MISS_OPEN``), a failure
    of its own. ``reason`` says which fired: push, knock, drop or miss.
    """

    def __init__(
        self, env: SimEnv, push: Disturbance, tolerance: float, after: int,
        on: tuple[str, ...] = ("disturbance",),
    ) -> None:  # fmt: skip
        check_takeover_on(on)
        self.env, self.push, self.tolerance, self.after = env, push, tolerance, after
        self.on = set(on)
        self.due, self.reason = False, ""
        self._was_open = False

    def __call__(self) -> bool:
        if "miss" in self.on and self._missed():
            self.due, self.reason = True, "miss"
            return True
        push = self.push
        if "disturbance" not in self.on or push.onset is None:
            return False
        if self.env.tick != push.onset + push.ticks + self.after:
            return False
        if push.kind != "push":  # knock, drop: due unless the policy holds the cube again
            task = self.env.task
            self.due = not task.holding(task.color)
        else:
            site = self.env.data.site_xpos[self.env.robot.grip_site]
            self.due = bool(np.linalg.norm(site - push.origin) > self.tolerance)
        self.reason = push.kind if self.due else ""
        return self.due

    def _missed(self) -> bool:
        """Whether the gripper has just closed on nothing after being open."""
        env = self.env
        grip = float(to_follower(env.data.qpos[env.robot.qpos])[-1])
        if grip > MISS_OPEN:
            self._was_open = True
            return False
        if grip < MISS_CLOSED and self._was_open:
            self._was_open = False
            task = env.task
            return not (hasattr(task, "holding") and task.holding(task.color))
        return False


def main(cfg: DictConfig) -> dict:
    original, output = Path(cfg.dataset), Path(cfg.output)
    corrections = Path(cfg.corrections_output)
    for path in (output, corrections):
        check_output(path)
    check_takeover_on(cfg.get("takeover_on", ["disturbance"]))
    if cfg.failure_prob <= 0:
        raise ValueError("failure_prob=0 pushes nothing, so nothing needs correcting: set it > 0")
    info = _original_features(original)
    driver = make_run_driver(cfg)
    env: SimEnv = driver.env
    video = any(f["dtype"] == "video" for f in info.values())
    fix = f"use the task settings (task=, task.image_size=, task.cameras=) of dataset={original}"
    check_features(info, dataset_features(env, video), fix)
    stop = threading.Event()
    previous_handler = signal.signal(signal.SIGINT, lambda *_: stop.set())
    started = time.perf_counter()
    try:
        driver.connect()
        client = make_client(cfg, action_dim=len(driver.limits().names))
        try:
            factory, options = controller_setup(cfg, client, stop, driver)
            controller = Controller(driver, client, factory(), **options)
            try:
                counts = _collect(cfg, driver, controller, factory, corrections, video, stop)
            finally:
                controller.close()
        finally:
            client.close()
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        driver.close()
    figures = {"task": cfg.task.name, **counts, "interrupted": stop.is_set()}
    if counts["corrections_recorded"] == 0:
        log.warning("no correction was recorded: nothing to merge, %s not written", output)
        figures |= {"corrections": None, "output": None}
    else:
        _merge(original, corrections, output, cfg.repo_id)
        figures |= {"corrections": str(corrections), "output": str(output)}
    figures["seconds"] = round(time.perf_counter() - started, 1)
    log_dir = Path(cfg.output_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, log_dir / "config.yaml", resolve=True)
    (log_dir / "summary.json").write_text(json.dumps(figures, indent=2))
    return figures


def _collect(cfg, driver, controller, factory, root: Path, video: bool, stop) -> dict:
    """Roll out ``cfg.episodes`` episodes; record the demonstrator's corrections into ``root``."""
    env: SimEnv = driver.env
    staging = partial_path(root)
    staging.parent.mkdir(parents=True, exist_ok=True)
    dataset = create_dataset(env, staging, repo_id=f"{cfg.repo_id}_corrections", video=video)
    counts = dict.fromkeys(("rollouts", "pushed", "policy_successes", "self_corrected",
                            "takeovers", "corrections_recorded", "demonstrator_failures",
                            "frames", "correction_frames", "takeovers_push", "takeovers_knock",
                            "takeovers_drop", "takeovers_miss"), 0)  # fmt: skip
    after = round(cfg.takeover_after_s * cfg.hz)
    on = tuple(cfg.get("takeover_on", ["disturbance"]))
    try:
        for k in tqdm(range(cfg.episodes), desc="aggregate", unit="rollout"):
            if stop.is_set():
                break
            seed = cfg.seed + k
            ticks = start_episode(controller, driver, seed, factory(), cfg.max_ticks)
            takeover = Takeover(env, driver.disturbance, cfg.takeover_tolerance, after, on)
            controller.run(ticks, done=lambda t=takeover: driver.success() or t())
            push = driver.disturbance
            counts["rollouts"] += 1
            counts["pushed"] += push.onset is not None and env.tick > push.onset
            if not takeover.due:
                counts["policy_successes"] += driver.success()
                counts["self_corrected"] += push.finished
                continue
            counts["takeovers"] += 1
            counts[f"takeovers_{takeover.reason}"] += 1
            if takeover.reason == "miss":
                fix, origin = MISS_FIX, None
            elif takeover.reason == "push":
                fix, origin = "", push.origin
            else:
                fix, origin = recovery_fix(env, push.kind), None
            frames, fixes = _record_recovery(env, dataset, origin, seed, fix)
            if env.success():
                dataset.save_episode()
                counts["corrections_recorded"] += 1
                counts["frames"] += frames
                counts["correction_frames"] += fixes
            else:
                dataset.clear_episode_buffer()
                counts["demonstrator_failures"] += 1
    except BaseException:
        dataset.clear_episode_buffer()
        finish_dataset(dataset, staging, root, counts["corrections_recorded"])
        raise
    finish_dataset(dataset, staging, root, counts["corrections_recorded"])
    return counts


def _record_recovery(
    env: SimEnv, dataset, origin: np.ndarray | None, seed: int, fix: str = ""
) -> tuple[int, int]:
    """The demonstrator's takeover into the dataset's episode buffer: (frames, correction
    frames)."""
    recovery = Recovery(env, np.random.default_rng(seed), origin, fix)
    obs, frames, fixes = env.observe(), 0, 0
    while (step := recovery.act()) is not None:
        action, labels = step
        add_frame(dataset, obs, action, labels, env.instruction)
        obs = env.step(action)
        frames, fixes = frames + 1, fixes + labels.correction
    return frames, fixes


def _original_features(root: Path) -> dict[str, dict]:
    """The original dataset's features, checked to carry the hierarchy labels."""
    from lerobot.datasets import LeRobotDatasetMetadata

    if not (root / "meta" / "info.json").is_file():
        raise FileNotFoundError(f"dataset={root} is not a LeRobotDataset v3 (no meta/info.json)")
    features = LeRobotDatasetMetadata(root.name, root=root).features
    missing = [k for k in LABEL_FEATURES if k not in features]
    if missing:
        raise ValueError(f"dataset={root} lacks the hierarchy labels {missing}: record it with "
                         "`rtvla record`")  # fmt: skip
    return features


def _merge(original: Path, corrections: Path, output: Path, repo_id: str) -> None:
    """``output`` = ``original`` + ``corrections``, built in ``<output>.partial``."""
    from lerobot.datasets.aggregate import aggregate_datasets

    staging = partial_path(output)
    aggregate_datasets(
        repo_ids=[original.name, corrections.name],
        aggr_repo_id=repo_id,
        roots=[original, corrections],
        aggr_root=staging,
        # lerobot appends each source data file to a growing one by reading and rewriting it:
        # quadratic in the files, and `rtvla record` writes one per episode (600 episodes:
        # over 10 minutes); copied file for file, a merge takes seconds.
        concatenate_data=False,
    )
    durable_rename(staging, output)
    log.info("merged dataset written to %s", output)
