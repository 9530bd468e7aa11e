"""Chunk latency of each sampler, plain vs RTC; prints one JSON line.

Times ``FlowChunkPolicy.infer`` for one request with the plain sampler (executor naive),
inference-time RTC (rtc: a vector-Jacobian product through the velocity network at every
Euler step) and training-time RTC (rtc_trained: the prefix overwritten, no backward pass),
for the analytic ``GaussianChunkModel`` and for a randomly initialised default-config VLA
wrapped as a flow model (``policies.inference.FlowPolicy``), on CPU. Ratios are to plain.

    uv run python bench/rtc_overhead.py [--repeats 30] [--num-steps 10] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from policies.inference import FlowPolicy, VLAPreprocessor
from policies.normalize import Normalizer
from policies.vla import VLA, VLAConfig
from runtime.robot.executors import EXECUTORS
from runtime.serving.sampling import FlowChunkPolicy
from runtime.serving.synthetic import GaussianChunkModel
from runtime.wire.info import ChunkPolicy, PolicyInfo
from runtime.wire.keys import STATE
from runtime.wire.protocol import ObservationRequest

TIMED = ("naive", "rtc", "rtc_trained")  # executors whose sampling methods are timed
S, D = 10, 4  # execution horizon and delay of the timed requests


def random_vla() -> FlowChunkPolicy:
    torch.manual_seed(0)
    config = VLAConfig()
    dims = {"observation.state": config.state_dim, "action": config.action_dim}
    normalizer = Normalizer(
        {k: np.zeros(n) for k, n in dims.items()}, {k: np.ones(n) for k, n in dims.items()}
    )
    features = {STATE: {"dtype": "float32", "shape": (config.state_dim,)}}
    features |= {k: {"dtype": "uint8", "shape": (*config.image_size, 3)} for k in config.image_keys}
    info = PolicyInfo("vla-random-init", config.chunk_length, config.action_dim, 30.0, features)
    model = VLA(config)
    preprocess = VLAPreprocessor(
        config.image_keys, normalizer, model.tokenize_instructions, config.image_size
    )
    flow = FlowPolicy(model, preprocess, normalizer,
                      model_id=info.model_id, fps=info.fps, features=features)  # fmt: skip
    return FlowChunkPolicy(flow, info=info)


def request(model: ChunkPolicy, executor: str, prev: np.ndarray | None) -> ObservationRequest:
    rng = np.random.default_rng(0)
    observation = {
        key: rng.integers(0, 256, spec["shape"], dtype=np.uint8)
        for key, spec in model.info.features.items()
        if key.startswith("observation.images.")
    }
    observation[STATE] = np.zeros(model.info.features[STATE]["shape"], np.float32)
    return ObservationRequest(
        request_id=0,
        robot_id="robot0",
        tick=S,
        observation=observation,
        instruction="pick up the red cube",
        delay=D,
        execution_horizon=S,
        sampling=EXECUTORS[executor],
        prev_actions=prev,
        seed=1,
    )


def time_model(policy: FlowChunkPolicy, repeats: int, num_steps: int) -> dict:
    policy.num_steps = num_steps
    model = policy
    prev = policy.infer([request(model, "naive", None)])[0][S:]  # the unexecuted rest
    requests = {executor: request(model, executor, prev) for executor in TIMED}
    ms: dict[str, list[float]] = {executor: [] for executor in TIMED}
    for k in range(repeats + 1):  # round robin, so that load from elsewhere hits all alike
        for executor, req in requests.items():
            start = time.perf_counter()
            policy.infer([req])
            if k:  # the first round warms up
                ms[executor].append((time.perf_counter() - start) * 1000)
    figures = {}
    for executor, times in ms.items():
        figures[f"{executor}_p50_ms"] = round(float(np.percentile(times, 50)), 3)
        figures[f"{executor}_p99_ms"] = round(float(np.percentile(times, 99)), 3)
    for executor in TIMED[1:]:
        ratio = figures[f"{executor}_p50_ms"] / figures["naive_p50_ms"]
        figures[f"{executor}_over_plain_p50"] = round(ratio, 3)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--num-steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadiest)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {
        "bench": "rtc_overhead",
        "num_steps": args.num_steps,
        "torch_threads": torch.get_num_threads(),
        "synthetic": time_model(
            FlowChunkPolicy(GaussianChunkModel()), args.repeats, args.num_steps
        ),
        "vla": time_model(random_vla(), args.repeats, args.num_steps),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
