"""Replay a recorded dataset's actions open-loop in the simulator.

The simulator is deterministic for a given reset seed, so replaying an episode's actions
from the seed it was recorded with must reproduce its states and its success. That makes a
replay the end-to-end check that a dataset holds what the demonstrator did.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sim.env import STATE, SimEnv


@dataclass(frozen=True)
class EpisodeReplay:
    """One replayed episode: success, the worst joint-state mismatch, and the trajectories."""

    episode: int
    success: bool
    max_state_error: float
    actions: np.ndarray  # (T, A) recorded joint targets
    states: np.ndarray  # (T, S) recorded joint positions
    replayed_states: np.ndarray  # (T, S) joint positions seen while replaying
    correction: np.ndarray  # (T,) bool, recovery frames


def load_episodes(root: str | Path) -> dict[int, dict[str, np.ndarray]]:
    """Actions, states and correction flags per episode, read without decoding any image."""
    from lerobot.datasets import LeRobotDataset

    dataset = LeRobotDataset(Path(root).name, root=root, video_backend="pyav")
    table = dataset.hf_dataset.select_columns(
        ["episode_index", "action", STATE, "correction"]
    ).with_format("numpy")
    episode_index = np.asarray(table["episode_index"])
    columns = {
        "action": np.stack(table["action"]),
        STATE: np.stack(table[STATE]),
        "correction": np.asarray(table["correction"], dtype=bool).reshape(-1),
    }
    return {
        int(ep): {key: value[episode_index == ep] for key, value in columns.items()}
        for ep in np.unique(episode_index)
    }


def replay_dataset(env: SimEnv, root: str | Path, seeds: list[int]) -> list[EpisodeReplay]:
    """Replay every episode of the dataset at ``root``; ``seeds[i]`` reset episode i."""
    episodes = load_episodes(root)
    if len(seeds) != len(episodes):
        raise ValueError(
            f"{root} holds {len(episodes)} episodes but {len(seeds)} seeds were given: "
            "pass the seeds printed by the recording, one per episode."
        )
    replays = []
    for ep, seed in zip(sorted(episodes), seeds, strict=True):
        data = episodes[ep]
        obs = env.reset(seed=seed)
        replayed = []
        for action in data["action"]:
            replayed.append(obs[STATE])
            obs = env.step(action)
        replayed = np.stack(replayed)
        replays.append(
            EpisodeReplay(
                episode=ep,
                success=env.success(),
                max_state_error=float(np.abs(replayed - data[STATE]).max()),
                actions=data["action"],
                states=data[STATE],
                replayed_states=replayed,
                correction=data["correction"],
            )
        )
    return replays
