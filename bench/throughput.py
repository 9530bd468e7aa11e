"""Policy server throughput with 1, 2, 4 and 8 robots on one ``PolicyServer``; prints one JSON line.

Each robot is a client process (``ZmqPolicyClient``) sending observation requests back to
back (two 96x96 uint8 cameras, a (6,) state, executor naive) for ``--seconds``, or
``--requests`` each, after a short warm-up. The server answers requests that arrive
together with one forward pass (``max_batch`` 8, ``batch_window_ms``), so throughput should
grow with the number of robots while the model has spare batch capacity. Per robot count:

  chunks_per_s       chunks answered per second, all robots together;
  latency_p50/p99_ms round trip seen by a robot (submit to reply), pooled over the robots;
  mean_batch_size    observation requests per forward pass, from the server's counters
                     over the timed window (``PolicyServer.figures``);
  throughput_ratio   chunks_per_s over the 1-robot case, measured in this same process.

The model is a randomly initialised default-config VLA (``--model vla``, the forward pass
of a real checkpoint at random weights), the analytic Gaussian flow model
(``--model synthetic``), or a trained checkpoint (``--checkpoint DIR``). It runs in this
process with ``--threads`` torch threads; the robots' processes need no torch.

    uv run python bench/throughput.py [--model vla|synthetic] [--checkpoint DIR] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import queue
import time
from multiprocessing.synchronize import Barrier
from typing import TYPE_CHECKING

import numpy as np

from runtime.robot.client import ZmqPolicyClient
from runtime.wire.keys import IMAGES, STATE
from runtime.wire.protocol import ChunkReply, ObservationRequest

if TYPE_CHECKING:
    from runtime.wire.info import ChunkPolicy

ROBOT_COUNTS = (1, 2, 4, 8)
WARMUP = 3  # untimed requests per robot before the timed window
DEFAULT_FEATURES = {
    "observation.images.front": {"dtype": "uint8", "shape": (96, 96, 3)},
    "observation.images.wrist": {"dtype": "uint8", "shape": (96, 96, 3)},
    STATE: {"dtype": "float32", "shape": (6,)},
}


def observation(features: dict[str, dict], seed: int) -> dict[str, np.ndarray]:
    """Random images and state shaped as the served policy's features say."""
    rng = np.random.default_rng(seed)
    obs = {}
    for key, spec in (features or DEFAULT_FEATURES).items():
        if key.startswith(IMAGES):
            obs[key] = rng.integers(0, 256, spec["shape"], dtype=np.uint8)
        elif key == STATE:
            obs[key] = rng.uniform(-0.5, 0.5, spec["shape"]).astype(np.float32)
    return obs


def robot(
    address: str,
    index: int,
    features: dict[str, dict],
    seconds: float,
    requests: int | None,
    barrier: Barrier,
    results: mp.Queue,
) -> None:
    """One robot: warm up, wait for the others, then request chunks back to back."""
    client = ZmqPolicyClient(address, timeout_s=120.0)
    obs = observation(features, seed=index)

    def round_trip(k: int) -> float:
        start = time.perf_counter()
        client.submit(
            ObservationRequest(
                request_id=k, robot_id=f"robot{index}", tick=k, observation=obs,
                instruction="pick up the red cube", delay=0, execution_horizon=10,
                sampling="plain",
            )
        )  # fmt: skip
        while (reply := client.poll(timeout_s=1.0)) is None:
            pass
        if not isinstance(reply, ChunkReply):
            raise RuntimeError(f"robot{index}: the server answered {reply}")
        return (time.perf_counter() - start) * 1000

    try:
        for k in range(WARMUP):
            round_trip(k)
        barrier.wait()
        start = time.perf_counter()
        latencies: list[float] = []

        def more() -> bool:
            return len(latencies) < requests if requests else time.perf_counter() - start < seconds

        while more():
            latencies.append(round_trip(WARMUP + len(latencies)))
        results.put((index, latencies, time.perf_counter() - start))
    finally:
        client.close()


def measure(
    policy: ChunkPolicy, robots: int, seconds: float, requests: int | None, window_ms: float
) -> dict[str, float | int]:
    from runtime.serving.server import PolicyServer  # imports torch: not at the top, for the robots

    ctx = mp.get_context("spawn")  # the robots import numpy and zmq only, never torch
    barrier, results = ctx.Barrier(robots + 1), ctx.Queue()
    with PolicyServer(
        policy, "tcp://127.0.0.1:*", max_batch=8, batch_window_ms=window_ms, log_every_s=None
    ) as server:
        server.start_in_thread()
        features = policy.info.features
        args = (features, seconds, requests, barrier, results)
        procs = [
            ctx.Process(target=robot, args=(server.address, i, *args), daemon=True)
            for i in range(robots)
        ]
        for p in procs:
            p.start()
        barrier.wait(timeout=300)  # the robots spawned and warmed up
        before = server.figures()
        outcomes = []
        while len(outcomes) < robots:
            try:
                outcomes.append(results.get(timeout=1.0))
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in procs):
                    raise RuntimeError("a robot process failed (its traceback is above)") from None
        after = server.figures()
        for p in procs:
            p.join(timeout=30)
    latencies = np.concatenate([np.asarray(lat) for _, lat, _ in outcomes])
    per_robot = [len(lat) / duration for _, lat, duration in outcomes]
    batches = after["batches"] - before["batches"]
    batched = _batched(after) - _batched(before)
    return {
        "robots": robots,
        "chunks": len(latencies),
        "chunks_per_s": round(sum(per_robot), 2),
        "per_robot_chunks_per_s_min": round(min(per_robot), 2),
        "per_robot_chunks_per_s_max": round(max(per_robot), 2),
        "latency_p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "latency_p99_ms": round(float(np.percentile(latencies, 99)), 2),
        "mean_batch_size": round(batched / batches, 2) if batches else None,
        "server_errors": after["errors"],
    }


def _batched(figures: dict) -> int:
    """Observation requests answered in batches so far (mean batch size x batches)."""
    return round((figures["mean_batch_size"] or 0) * figures["batches"])


def make_policy(model: str, checkpoint: str | None, num_steps: int) -> ChunkPolicy:
    from runtime.serving.loader import SYNTHETIC, load_policy

    if checkpoint:
        return load_policy(checkpoint, "cpu", num_steps=num_steps)
    if model == "vla":
        from rtc_overhead import random_vla  # bench/ is on the path when run as a script

        policy = random_vla()
        policy.num_steps = num_steps
        return policy
    return load_policy(SYNTHETIC, "cpu", num_steps=num_steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("vla", "synthetic"), default="vla")
    parser.add_argument("--checkpoint", default=None, help="serve this checkpoint instead")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed window per count")
    parser.add_argument("--requests", type=int, default=None, help="per robot, instead of time")
    parser.add_argument("--robots", type=int, nargs="+", default=list(ROBOT_COUNTS))
    parser.add_argument("--num-steps", type=int, default=10, help="Euler steps per chunk")
    parser.add_argument("--batch-window-ms", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    policy = make_policy(args.model, args.checkpoint, args.num_steps)
    counts = [measure(policy, n, args.seconds, args.requests, args.batch_window_ms)
              for n in args.robots]  # fmt: skip
    base = next((c["chunks_per_s"] for c in counts if c["robots"] == 1), None)
    for c in counts:
        c["throughput_ratio"] = round(c["chunks_per_s"] / base, 3) if base else None
    result = {
        "bench": "throughput",
        "model": args.checkpoint or args.model,
        "model_id": policy.info.model_id,
        "chunk_shape": [policy.info.chunk_length, policy.info.action_dim],
        "num_steps": args.num_steps,
        "torch_threads": torch.get_num_threads(),
        "max_batch": 8,
        "batch_window_ms": args.batch_window_ms,
        "seconds_per_count": None if args.requests else args.seconds,
        "requests_per_robot": args.requests,
        "robots": counts,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
