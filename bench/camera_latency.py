"""Chunk latency of the default VLA fed full-size camera images: each camera arrives as a raw
uint8 (h, w, 3) observation, goes through the serving preprocessor (``resize_with_pad`` to the
policy's ``image_size``, 96x96 by default), then the prefix and the Euler steps, exactly as
``rtvla serve`` answers a request (``FlowChunkPolicy.infer``). Prints one JSON line: p50/p99
per camera size, and the time of the resize alone.

    uv run python bench/camera_latency.py [--sizes 480x640 96x96] [--repeats 30]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from policies.inference import FlowPolicy, VLAPreprocessor
from policies.normalize import Normalizer
from policies.vision import resize_with_pad
from policies.vla import VLA, VLAConfig
from runtime.serving.sampling import FlowChunkPolicy
from runtime.wire.info import PolicyInfo
from runtime.wire.protocol import ObservationRequest


def served_policy(config: VLAConfig) -> FlowChunkPolicy:
    """The default VLA, randomly initialised (latency does not depend on the weights)."""
    dims = {"observation.state": config.state_dim, "action": config.action_dim}
    normalizer = Normalizer({k: np.zeros(n) for k, n in dims.items()},
                            {k: np.ones(n) for k, n in dims.items()})  # fmt: skip
    model = VLA(config)
    preprocess = VLAPreprocessor(config.image_keys, normalizer, model.tokenize_instructions,
                                 config.image_size)  # fmt: skip
    info = PolicyInfo("vla-random-init", config.chunk_length, config.action_dim, 30.0)
    flow = FlowPolicy(model, preprocess, normalizer, model_id=info.model_id, fps=info.fps,
                      features={})  # fmt: skip
    return FlowChunkPolicy(flow, num_steps=config.num_steps, info=info)


def latency(policy: FlowChunkPolicy, keys: tuple[str, ...], size: tuple[int, int],
            repeats: int) -> dict[str, float]:  # fmt: skip
    rng = np.random.default_rng(0)
    obs = {key: rng.integers(0, 256, (*size, 3), dtype=np.uint8) for key in keys}
    obs["observation.state"] = np.zeros(6, np.float32)
    times = []
    for i in range(repeats + 3):
        request = ObservationRequest(
            request_id=i, robot_id="bench", tick=0, observation=obs,
            instruction="put the red cube in the left bin", delay=0, execution_horizon=0,
            sampling="plain", seed=i,
        )  # fmt: skip
        start = time.perf_counter()
        policy.infer([request])
        if i >= 3:
            times.append(1e3 * (time.perf_counter() - start))
    a = np.asarray(times)
    return {
        "p50_ms": round(float(np.median(a)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
    }


def resize_ms(size: tuple[int, int], target: tuple[int, int], cameras: int, repeats: int) -> float:
    x = torch.rand(1, 3, *size)
    start = time.perf_counter()
    for _ in range(repeats * cameras):
        resize_with_pad(x, target)
    return round(1e3 * (time.perf_counter() - start) / repeats, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="+", default=["480x640", "96x96"], help="HxW inputs")
    parser.add_argument("--repeats", type=int, default=30, help="timed chunks per size")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = VLAConfig()
    policy = served_policy(config)
    result = {
        "bench": "camera_latency", "device": "cpu", "cpu": platform.processor() or "unknown",
        "torch_threads": torch.get_num_threads(), "cameras": len(config.image_keys),
        "policy_image_size": list(config.image_size), "chunk_length": config.chunk_length,
        "num_steps": config.num_steps, "inputs": {},
    }  # fmt: skip
    for text in args.sizes:
        size = tuple(int(v) for v in text.split("x"))
        result["inputs"][text] = {
            **latency(policy, config.image_keys, size, args.repeats),
            "resize_ms": resize_ms(size, config.image_size, len(config.image_keys), args.repeats),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
