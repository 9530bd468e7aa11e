"""Train the VLA from a packed dataset (``tools/pack_dataset.py``) with every array on the
training device: for a GPU machine that has torch but no lerobot, mujoco or hydra.

Each step gathers its batch on the device (images stay uint8 there, FAST tokens are computed
once per frame), so a small VLA trains at GPU speed instead of data-loader speed. The model,
losses, schedule, EMA and checkpoint format are the project's own (``policies/``): the
checkpoint evaluates with ``rtvla eval checkpoint=...`` like any other.

    python tools/train_packed.py PACKED --output DIR --seconds 420 policy.vision=keypoints ...
    DEVICE=cpu python tools/train_packed.py ... --steps 20   # a quick check on a CPU
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policies.checkpoint import save_checkpoint
from policies.fast import FastTokenizer
from policies.features import ACTION, ENV_STATE, STATE
from policies.normalize import Normalizer
from policies.train import vla_config
from policies.trainer import EMA, make_optimizer, train_loop
from policies.vision import resize_with_pad
from policies.vla import VLA


def read_video(path: str) -> np.ndarray:
    """Every frame of an mp4 as uint8 (N, 3, h, w): OpenCV where it is, else PyAV."""
    try:
        import cv2
    except ImportError:
        import av

        with av.open(path) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    else:
        cap, frames = cv2.VideoCapture(path), []
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            frames.append(bgr[:, :, ::-1])
    return np.ascontiguousarray(np.stack(frames).transpose(0, 3, 1, 2))


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


class DeviceData:
    """A packed dataset as device tensors, and the training batch of any frame indices."""

    def __init__(self, prefix: str, model: VLA, normalizer: Normalizer, fast, device) -> None:
        z = np.load(prefix + ".npz", allow_pickle=False)
        meta = json.loads(str(z["meta"]))
        cfg = model.config
        episode = z["episode"]
        n, H = len(episode), cfg.chunk_length
        change = np.flatnonzero(np.diff(episode)) + 1
        starts, ends = np.r_[0, change], np.r_[change, n]
        ep_end = np.repeat(ends, ends - starts)
        query = np.arange(n)[:, None] + np.arange(H)  # (N, H)
        index = np.minimum(query, ep_end[:, None] - 1)
        action = normalizer.normalize(ACTION, torch.from_numpy(z[ACTION])).float()
        chunks = action[torch.from_numpy(index)]  # (N, H, A) normalized
        self.device = device
        self.chunks = chunks.to(device)
        self.is_pad = torch.from_numpy(query >= ep_end[:, None]).to(device)
        self.state = normalizer.normalize(STATE, torch.from_numpy(z[STATE])).float().to(device)
        self.env = None
        if cfg.aux_env_state > 0:
            env = torch.from_numpy(z[ENV_STATE])
            self.env = normalizer.normalize(ENV_STATE, env).float().to(device)
        tokens, mask = model.tokenize_instructions(meta["tasks"])
        task = torch.from_numpy(z["task_index"]).long()
        self.lang_tokens, self.lang_mask = tokens[task].to(device), mask[task].to(device)
        self.fast = None
        if fast is not None:
            t0 = time.perf_counter()
            ftok, fmask = fast.encode_padded(chunks.numpy(), cfg.max_fast_tokens)
            self.fast = torch.from_numpy(ftok).to(device), torch.from_numpy(fmask).to(device)
            print(f"FAST tokens of {n} chunks: {time.perf_counter() - t0:.1f} s", flush=True)
        self.images = {}
        for key in cfg.image_keys:
            frames = read_video(f"{prefix}.{key}.mp4")
            if len(frames) != n:
                raise ValueError(f"{prefix}.{key}.mp4 has {len(frames)} frames, the arrays {n}")
            self.images[key] = torch.from_numpy(frames).to(device)
        self.size = tuple(cfg.image_size)
        self.n = n

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for key, frames in self.images.items():
            x = frames[index].float() / 255
            out[key] = x if tuple(x.shape[-2:]) == self.size else resize_with_pad(x, self.size)
        out[STATE] = self.state[index]
        out["lang_tokens"], out["lang_mask"] = self.lang_tokens[index], self.lang_mask[index]
        out[ACTION], out["action_is_pad"] = self.chunks[index], self.is_pad[index]
        if self.env is not None:
            out[ENV_STATE] = self.env[index]
        if self.fast is not None:
            out["fast_tokens"], out["fast_mask"] = self.fast[0][index], self.fast[1][index]
        return out


def batches(data: DeviceData, batch: int, seed: int, steps: int, deadline: float):
    """Step k's batch is drawn from rng(seed, k) (as ``policies.trainer.step_batches``); stops
    early at ``deadline`` (perf_counter seconds)."""
    for step in range(steps):
        if time.perf_counter() > deadline:
            return
        rng = np.random.default_rng([seed, step])
        index = torch.from_numpy(rng.integers(0, data.n, size=batch)).to(data.device)
        yield data.batch(index)


def seconds_per_step(model: VLA, data: DeviceData, cfg: dict, device) -> float:
    """Time 30 training steps (after 10 warm-up steps) of a throwaway copy of the model."""
    trial = copy.deepcopy(model)
    opt = make_optimizer(trial, cfg)
    bf16 = device.type == "cuda" and cfg["bf16"]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16)
    stamps = []
    for step, b in enumerate(batches(data, cfg["batch_size"], 12345, 40, float("inf"))):
        if step == 10:
            torch.cuda.synchronize() if device.type == "cuda" else None
            stamps.append(time.perf_counter())
        with autocast:
            loss, _ = trial(b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    torch.cuda.synchronize() if device.type == "cuda" else None
    return (time.perf_counter() - stamps[0]) / 30


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("packed", help="path prefix written by tools/pack_dataset.py")
    parser.add_argument("--output", required=True, help="run folder (checkpoints/, metrics)")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--steps", type=int, help="optimizer steps")
    group.add_argument("--seconds", type=float, help="wall-time budget: steps from a timing")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--save-every", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="policy.<field>=<value> (VLAConfig)")
    args = parser.parse_intermixed_args()
    device = torch.device(os.environ.get("DEVICE", "cuda"))
    torch.set_float32_matmul_precision("high")
    t_start = time.perf_counter()
    if not Path(args.packed + ".npz").is_file():
        print(f"error: {args.packed}.npz not found: pack a dataset with tools/pack_dataset.py",
              file=sys.stderr)  # fmt: skip
        return 2
    bad = [o for o in args.overrides if not o.startswith("policy.") or "=" not in o]
    if bad:
        print(f"error: overrides must read policy.<field>=<value>, got {bad}", file=sys.stderr)
        return 2
    policy = {o[7:].split("=", 1)[0]: parse_value(o.split("=", 1)[1]) for o in args.overrides}
    meta = json.loads(str(np.load(args.packed + ".npz", allow_pickle=False)["meta"]))
    videos = [f"{args.packed}.{key}.mp4" for key in meta["image_keys"]]
    if missing := [v for v in videos if not Path(v).is_file()]:
        print(f"error: {missing} not found: copy every file tools/pack_dataset.py wrote",
              file=sys.stderr)  # fmt: skip
        return 2
    features = {k: {**v, "shape": tuple(v["shape"])} for k, v in meta["features"].items()}
    config = vla_config(features, policy)
    keys = (STATE, ACTION, ENV_STATE) if config.aux_env_state > 0 else (STATE, ACTION)
    normalizer = Normalizer.from_stats(meta["stats"], keys)
    torch.manual_seed(args.seed)
    model = VLA(config).to(device)
    fast = None
    if config.fast_loss:  # fitted as rtvla train fits it: 4000 random chunks, normalized
        z = np.load(args.packed + ".npz", allow_pickle=False)
        act, ep = z[ACTION], z["episode"]
        last = np.zeros(len(ep), dtype=np.int64)
        change = np.flatnonzero(np.diff(ep)) + 1
        for s, e in zip(np.r_[0, change], np.r_[change, len(ep)], strict=True):
            last[s:e] = e - 1
        rng = np.random.default_rng(args.seed)
        starts = rng.integers(0, len(act), size=min(4000, len(act)))
        index = np.minimum(starts[:, None] + np.arange(config.chunk_length), last[starts][:, None])
        normed = normalizer.normalize(ACTION, torch.from_numpy(act[index])).numpy()
        fast = FastTokenizer(vocab_size=config.fast_vocab_size).fit(normed)
    data = DeviceData(args.packed, model, normalizer, fast, device)
    cfg = {"output": args.output, "lr": args.lr, "betas": [0.9, 0.95], "weight_decay": 1e-4,
           "warmup_steps": args.warmup, "min_lr_ratio": 0.1, "grad_clip": 1.0,
           "ema_decay": 0.999, "seed": args.seed, "log_every": 50, "batch_size": args.batch,
           "save_every": args.save_every, "instruction": "task", "dataset": meta["sources"],
           "policy": policy, "trainer": "tools/train_packed.py", "bf16": True}  # fmt: skip
    steps, deadline = args.steps, float("inf")
    if args.seconds is not None:
        try:
            per_step = seconds_per_step(model, data, cfg, device)
        except RuntimeError as error:  # an op without a bf16 kernel: train in float32
            print(f"bf16 autocast failed ({error}); training in float32", flush=True)
            cfg["bf16"] = False
            per_step = seconds_per_step(model, data, cfg, device)
        left = args.seconds - (time.perf_counter() - t_start)
        steps = max(1, int(0.95 * left / per_step))
        deadline = t_start + args.seconds
        print(json.dumps({"s_per_step": round(per_step, 4), "steps": steps}), flush=True)
    cfg["steps"] = steps
    Path(args.output).mkdir(parents=True, exist_ok=True)
    opt = make_optimizer(model, cfg)
    ema = EMA(model, cfg["ema_decay"])
    saved = []

    def save(step: int) -> None:
        save_checkpoint(args.output, step, model=model, ema=ema.weights, optimizer=opt,
                        normalizer=normalizer, fast_tokenizer=fast, features=features,
                        train_config=cfg, fps=meta["fps"])  # fmt: skip
        saved.append(step)

    loader = batches(data, args.batch, args.seed, steps, deadline)
    figures = train_loop(cfg, net=model, model=model, ema=ema, optimizer=opt, loader=loader,
                         start=0, device=device, rank=0, world=1, save=save)  # fmt: skip
    if not saved or saved[-1] != figures["steps"]:
        save(figures["steps"])
    print(json.dumps({"output": args.output, "planned_steps": steps, **figures}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
