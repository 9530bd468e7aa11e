"""Chunk latency of the default VLA (prefix once + 10 Euler steps of the action expert) and its
training throughput, on the CPU and, when there is one, on a GPU. Prints one JSON line.

    uv run python bench/policy_speed.py [--repeats 50] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from policies.flow import euler_sample
from policies.vla import VLA, VLAConfig


def make_batch(model: VLA, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    cfg = model.config
    b = {key: torch.rand(batch, 3, *cfg.image_size) for key in cfg.image_keys}
    b["observation.state"] = torch.randn(batch, cfg.state_dim)
    b["action"] = torch.randn(batch, cfg.chunk_length, cfg.action_dim)
    b["lang_tokens"], b["lang_mask"] = model.tokenize_instructions(
        ["put the red cube in the left bin"] * batch
    )
    b["fast_tokens"] = torch.randint(0, cfg.fast_vocab_size, (batch, cfg.max_fast_tokens))
    b["fast_mask"] = torch.ones(batch, cfg.max_fast_tokens, dtype=torch.bool)
    return {k: v.to(device) for k, v in b.items()}


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    a = np.asarray(samples_ms)
    return {
        "p50_ms": round(float(np.median(a)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
    }


def chunk_latency(model: VLA, device: torch.device, repeats: int) -> dict[str, float]:
    batch = make_batch(model, 1, device)
    times = []
    for i in range(repeats + 5):
        start = time.perf_counter()
        with torch.no_grad():
            noise = torch.randn(
                1, model.config.chunk_length, model.config.action_dim, device=device
            )
            euler_sample(model.velocity_fn(batch), noise, model.config.num_steps)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 5:
            times.append(1e3 * (time.perf_counter() - start))
    return percentiles(times)


def train_throughput(model: VLA, device: torch.device, batch_size: int, steps: int) -> float:
    batch = make_batch(model, batch_size, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    for i in range(steps + 2):
        if i == 2:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with autocast:
            loss, _ = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch_size * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=50, help="timed chunk predictions")
    parser.add_argument("--batch", type=int, default=32, help="training batch size")
    parser.add_argument("--train-steps", type=int, default=5, help="timed training steps")
    args = parser.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    figures: dict = {"torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                     "threads": torch.get_num_threads()}  # fmt: skip
    for device in devices:
        torch.manual_seed(0)
        model = VLA(VLAConfig()).to(device)
        figures["parameters"] = sum(p.numel() for p in model.parameters())
        model.eval()
        figures[f"chunk_latency_{device.type}"] = chunk_latency(model, device, args.repeats)
        model.train()
        figures[f"train_samples_per_s_{device.type}"] = round(
            train_throughput(model, device, args.batch, args.train_steps), 1
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
