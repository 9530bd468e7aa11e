"""How much a training-time RTC policy's chunk follows its prefix rather than its observation.

A prefix-conditioned policy (``policy.rtc_training_max_delay`` > 0) is given the d actions
already under way and fills in the rest. For ``--frames`` frames of a dataset it predicts the
chunk with the recorded actions as that prefix, then again with the same noise and every
prefix action moved by ``--offset`` times the joint's spread in the data (the recorded actions'
standard deviation over the frames drawn). The gain at position i >= d is how far action i
moved, as a share of the prefix's move: 0 means the rest of the chunk is planned from the
observation whatever the prefix says; 1 means the prefix's error is carried through the chunk.
At run time the prefix is the previous chunk's plan, made d + s ticks earlier; a policy with a
gain near 1 repeats that plan's error in every chunk instead of correcting it.

The ramp probe bends the prefix instead (its last action moved by the same amount, the others
in proportion): a policy that extends the prefix's trend keeps rising past d.

The stale probe gives as the prefix the actions recorded ``--stale`` ticks earlier (a plan
that lags the demonstrator, as an older chunk's plan lags a moving target). Reported: the RMSE
of the positions i >= d against the recorded actions with the recorded prefix, with none
(plain sampling), with the stale one, and of the stale plan itself. A policy that corrects its
prefix from the observation lands near the plain error; one that carries the prefix on lands
near the stale plan's own error. Errors are in the action's units.

    uv run python bench/prefix_reliance.py CHECKPOINT DATASET [--delay 4] [--frames 200]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from policies.data import InMemoryChunks, open_dataset
from runtime.commands.sweep import rtc_training_max_delay
from runtime.serving.loader import load_policy
from runtime.wire.protocol import ObservationRequest


def prefix_reliance(
    checkpoint: str, dataset: str, delay: int, frames: int, offset: float, stale: int, seed: int
) -> dict:
    policy = load_policy(checkpoint)
    H = policy.info.chunk_length
    if policy.info.features and any(
        k.startswith("observation.images.") for k in policy.info.features
    ):
        raise SystemExit(f"{checkpoint}: reads cameras; this bench takes a state-based policy")
    K = rtc_training_max_delay(policy)
    if not K:
        raise SystemExit(
            f"{checkpoint}: not trained with training-time RTC (policy.rtc_training_max_delay=0), "
            "so it cannot condition on a prefix; train with policy.rtc_training_max_delay=K"
        )
    if delay > K:
        raise SystemExit(f"--delay {delay}: the policy was trained on prefixes of at most {K}")
    if not 0 < delay <= H // 2:
        raise SystemExit(f"--delay {delay}: pick 1 <= d <= H/2 = {H // 2}")
    data = open_dataset(dataset, chunk_length=H)
    items = InMemoryChunks(data, H, [])
    rng = np.random.default_rng(seed)
    index = rng.choice(np.arange(stale, len(items)), size=min(frames, len(items) - stale),
                       replace=False)  # fmt: skip
    pairs = [(items[int(i)], items[int(i) - stale]) for i in index]
    pairs = [
        (it, early) for it, early in pairs
        if not it["action_is_pad"].numpy().any()  # whole chunks only
        and bool((early["goal_state"] == it["goal_state"]).all())  # the same episode
    ]  # fmt: skip
    if not pairs:
        raise SystemExit(
            f"{dataset}: no frame with {H} recorded actions ahead of it and {stale} behind it"
        )
    chosen = [it for it, _ in pairs]
    # the actions recorded stale ticks earlier, for the prefix's ticks: a plan that lags
    lagging = np.stack([early["action"].numpy() for _, early in pairs])  # (N, H, A)
    targets = np.stack([it["action"].numpy() for it in chosen])  # (N, H, A)
    spread = targets.reshape(-1, targets.shape[-1]).std(0)  # (A,)
    shift = offset * spread  # (A,)
    s = max(delay, min(5, H - delay))

    def request(k: int, item, prev: np.ndarray | None) -> ObservationRequest:
        observation = {key: item[key].numpy() for key in policy.info.features}
        return ObservationRequest(
            request_id=k, robot_id="bench", tick=0, observation=observation,
            instruction=item["task"], delay=delay if prev is not None else 0,
            execution_horizon=s, sampling="prefix" if prev is not None else "plain",
            prev_actions=None if prev is None else prev.astype(np.float32),
            seed=int(seed * 100_000 + k),
        )  # fmt: skip

    def chunks(prefixes: np.ndarray | None) -> np.ndarray:
        """(N, H, A) the chunks of the chosen frames, each with its prefix (None: plain)."""
        rows = [None] * len(chosen) if prefixes is None else list(prefixes)
        return np.stack(policy.infer([request(k, it, p) for k, (it, p)
                                      in enumerate(zip(chosen, rows, strict=True))]))  # fmt: skip

    ramp = np.arange(1, H + 1)[:, None] / delay * shift  # (H, A): the prefix's last action + shift
    recorded, moved, bent = chunks(targets), chunks(targets + shift), chunks(targets + ramp)
    plain, late = chunks(None), chunks(lagging)
    moving = spread > 1e-3 * spread.max()  # joints that move in the data (not a held gripper)
    gain = ((moved - recorded)[..., moving] / shift[moving]).mean(axis=(0, 2))  # (H,)
    # the ramp probe: how far each action moved, in units of the prefix's last move (1 at d - 1;
    # a policy that extends the prefix's trend goes on rising, (i + 1) / d at position i)
    trend = ((bent - recorded)[..., moving] / shift[moving]).mean(axis=(0, 2))  # (H,)

    def rmse(chunks: np.ndarray) -> float:
        return float(np.sqrt(np.mean((chunks[:, delay:] - targets[:, delay:]) ** 2)))

    return {
        "checkpoint": checkpoint, "dataset": dataset, "frames": len(chosen), "delay": delay,
        "chunk_length": H, "offset_in_spreads": offset,
        "prefix_held": round(float(gain[:delay].mean()), 4),  # 1: the prefix is kept as given
        "gain_first_after_prefix": round(float(gain[delay]), 4),
        "gain_mean_after_prefix": round(float(gain[delay:].mean()), 4),
        "gain_last": round(float(gain[-1]), 4),
        "gain_per_position": [round(float(g), 3) for g in gain],
        "ramp_per_position": [round(float(g), 3) for g in trend],
        "ramp_extended_per_position": [round((i + 1) / delay, 3) for i in range(H)],
        "rmse_after_prefix_recorded_prefix": round(rmse(recorded), 5),
        "rmse_after_prefix_plain": round(rmse(plain), 5),
        "stale_ticks": stale,
        "rmse_after_prefix_stale_prefix": round(rmse(late), 5),
        "rmse_after_prefix_stale_plan_itself": round(rmse(lagging), 5),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("dataset")
    parser.add_argument("--delay", type=int, default=4, help="prefix length d")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--offset", type=float, default=0.5, help="prefix move, in spreads")
    parser.add_argument("--stale", type=int, default=5, help="lag of the stale prefix, ticks")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    figures = prefix_reliance(
        args.checkpoint, args.dataset, args.delay, args.frames, args.offset, args.stale, args.seed
    )
    print(json.dumps({"bench": "prefix_reliance", **figures}))


if __name__ == "__main__":
    main()
