"""Can an image encoder find the scene's objects on held-out scenes? (a perception probe)

The VLA's image stems (``policies.vision``: the patch stem or the spatial-softmax keypoint
stem, at any ``--keypoint-stride``), one per camera, with a small MLP head on their tokens,
are trained from scratch to regress the dataset's ``observation.environment_state`` (for
``reach``, the three targets' centres) from the cameras alone. The first
``--train-episodes`` episodes train it; the dataset's last ``--val-episodes`` episodes (other
scenes: every episode of a recording has its own seed) measure it. Training error far
below held-out error means the encoder memorises its training scenes instead of localising;
the held-out error in centimetres says how well a policy on top of it could aim.

    uv run python bench/localisation.py DATASET [--stem keypoints] [--keypoint-stride 4]
        [--steps 1000] [--train-episodes 270] [--val-episodes 30] [--threads 2]

Prints one JSON object per evaluation (``--eval-every`` steps) and a final summary.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch import nn

from policies.data import camera_keys, column, decode_camera, open_dataset
from policies.vision import make_stem
from policies.vla import VLAConfig

ENV = "observation.environment_state"


class Probe(nn.Module):
    """Cameras -> stems -> flattened tokens -> MLP -> normalized environment state."""

    def __init__(self, config: VLAConfig, cameras: int, tokens: int, out_dim: int) -> None:
        super().__init__()
        self.stems = nn.ModuleList(make_stem(config) for _ in range(cameras))
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(cameras * tokens * config.width, 256), nn.GELU(),
            nn.Linear(256, out_dim),
        )  # fmt: skip

    def forward(self, images: list[torch.Tensor]) -> torch.Tensor:
        tokens = [stem(x.float() / 255) for stem, x in zip(self.stems, images, strict=True)]
        return self.head(torch.cat(tokens, dim=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("--stem", choices=("patch", "keypoints"), default="keypoints")
    parser.add_argument("--keypoint-stride", type=int, default=8)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-episodes", type=int, default=270)
    parser.add_argument("--val-episodes", type=int, default=30)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    data = open_dataset(args.dataset)
    if ENV not in data.meta.features:
        raise SystemExit(f"{args.dataset} has no {ENV}: record it with rtvla record")
    keys = camera_keys(data.meta.features)
    if not keys:
        raise SystemExit(f"{args.dataset} has no cameras: record it with render=true")
    episodes = int(data.meta.total_episodes)
    if args.train_episodes + args.val_episodes > episodes:
        raise SystemExit(
            f"--train-episodes {args.train_episodes} + --val-episodes {args.val_episodes} > "
            f"the dataset's {episodes} episodes"
        )
    images = [decode_camera(data, k) for k in keys]  # uint8 (N, 3, h, w) each
    size = tuple(images[0].shape[-2:])
    env = torch.from_numpy(column(data.hf_dataset, ENV, np.float32))  # (N, D)
    episode = torch.from_numpy(column(data.hf_dataset, "episode_index").reshape(-1))
    mean, std = env.mean(0), env.std(0).clamp_min(1e-6)
    target = (env - mean) / std
    train = (episode < args.train_episodes).nonzero().squeeze(1)
    val = (episode >= episodes - args.val_episodes).nonzero().squeeze(1)

    config = VLAConfig(
        image_keys=keys, image_size=size, vision=args.stem, film=False,
        keypoint_stride=args.keypoint_stride, patch_size=args.patch_size,
    )  # fmt: skip
    with torch.no_grad():
        tokens = make_stem(config)(torch.zeros(1, 3, *size)).shape[1]
    probe = Probe(config, len(keys), tokens, env.shape[1])
    optimizer = torch.optim.AdamW(probe.parameters(), lr=args.lr)
    val_rng = torch.Generator().manual_seed(args.seed)
    held_out = val[torch.randperm(len(val), generator=val_rng)[:512]]

    def evaluate(rows: torch.Tensor) -> tuple[float, float]:
        """(MSE in normalized units, mean position error in cm per 3-d object)."""
        with torch.no_grad():
            error = probe([x[rows] for x in images]) - target[rows]
        mse = float((error**2).mean())
        metres = (error * std).reshape(len(rows), -1, 3).norm(dim=-1).mean()
        return mse, 100 * float(metres)

    start, history = time.perf_counter(), []
    for step in range(1, args.steps + 1):
        rows = train[torch.randint(len(train), (args.batch_size,))]
        loss = ((probe([x[rows] for x in images]) - target[rows]) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.eval_every == 0 or step == args.steps:
            train_mse, train_cm = evaluate(train[torch.randperm(len(train))[:512]])
            val_mse, val_cm = evaluate(held_out)
            history.append({
                "step": step, "train_mse": round(train_mse, 4), "val_mse": round(val_mse, 4),
                "train_cm": round(train_cm, 2), "val_cm": round(val_cm, 2),
                "wall_s": round(time.perf_counter() - start, 1),
            })  # fmt: skip
            print(json.dumps(history[-1]), flush=True)
    print(json.dumps({
        "dataset": args.dataset, "stem": args.stem, "keypoint_stride": args.keypoint_stride,
        "tokens_per_camera": tokens, "cameras": list(keys), "train_episodes": args.train_episodes,
        "val_episodes": args.val_episodes, "steps": args.steps, "batch_size": args.batch_size,
        "lr": args.lr, "threads": args.threads, "final": history[-1],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
