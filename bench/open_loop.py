"""Open-loop action error of a checkpoint on a dataset's frames (how well it imitates).

For ``--frames`` frames drawn from the dataset, the policy (``runtime.serving.loader``)
predicts a chunk from the recorded observation and instruction; the error is the RMSE, in the
action's own units (radians, gripper metres), between the first ``--horizon`` predicted
actions and the recorded ones (within the episode). Run it on the training dataset and on one
recorded with held-out seeds (``rtvla record seed=1000``) to tell underfitting (both high)
from overfitting (held-out much higher).

It also predicts each frame's chunk under every other instruction of the dataset (same noise)
and reports the error against the recorded actions then: a policy that reads its instruction
errs far more under a wrong one ("rmse_wrong_instruction_median"); one that ignores it errs
the same (the colour of a reach target is not grounded).

    uv run python bench/open_loop.py CHECKPOINT DATASET [--frames 200] [--horizon 8]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from policies.data import InMemoryChunks, camera_keys, open_dataset
from runtime.serving.loader import load_policy
from runtime.wire.protocol import ObservationRequest


def open_loop_error(checkpoint: str, dataset: str, frames: int, horizon: int, seed: int) -> dict:
    policy = load_policy(checkpoint)
    H = policy.info.chunk_length
    data = open_dataset(dataset, chunk_length=H)
    needed = [k for k in policy.info.features if k.startswith("observation.images.")]
    items = InMemoryChunks(data, H, [k for k in camera_keys(data.meta.features) if k in needed])
    rng = np.random.default_rng(seed)
    index = rng.choice(len(items), size=min(frames, len(items)), replace=False)
    tasks = list(data.meta.tasks.index)
    errors, wrong, first = [], [], []
    for k, i in enumerate(index):
        item = items[int(i)]
        observation = {
            key: (item[key].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            if key.startswith("observation.images.") else item[key].numpy()
            for key in policy.info.features
        }  # fmt: skip
        instructions = [item["task"], *(t for t in tasks if t != item["task"])]
        requests = [
            ObservationRequest(
                request_id=k,
                robot_id="bench",
                tick=0,
                observation=observation,
                instruction=text,
                delay=0,
                execution_horizon=horizon,
                sampling="plain",
                seed=int(seed * 100_000 + k),
            )
            for text in instructions
        ]
        chunks = [c[:horizon] for c in policy.infer(requests)]  # (s, A) each
        chunk = chunks[0]
        valid = ~item["action_is_pad"].numpy()[:horizon]
        target = item["action"].numpy()[:horizon]

        def rmse(c: np.ndarray, valid=valid, target=target) -> float:
            return float(np.sqrt(np.mean((c[valid] - target[valid]) ** 2)))

        errors.append(rmse(chunk))
        if len(chunks) > 1:
            wrong.append(np.mean([rmse(c) for c in chunks[1:]]))
        first.append(np.abs(chunk[0] - target[0]))
    first = np.stack(first)  # (N, A)
    return {
        "checkpoint": checkpoint, "dataset": dataset, "frames": len(index), "horizon": horizon,
        "rmse_median": round(float(np.median(errors)), 5),
        "rmse_p90": round(float(np.percentile(errors, 90)), 5),
        "rmse_wrong_instruction_median": round(float(np.median(wrong)), 5) if wrong else None,
        "first_action_abs_error_mean_per_joint": [round(float(v), 5) for v in first.mean(0)],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("dataset")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--horizon", type=int, default=8, help="actions compared per chunk")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    figures = open_loop_error(args.checkpoint, args.dataset, args.frames, args.horizon, args.seed)
    print(json.dumps({"bench": "open_loop", **figures}))


if __name__ == "__main__":
    main()
