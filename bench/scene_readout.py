"""How well a VLA sees the scene, and what a state policy does with what it sees.

A VLA trained with the scene-state loss (``aux_env_state``) predicts
``observation.environment_state`` from its cameras (``VLA.aux_head`` on the backbone's
readout). Two measures separate perception from acting:

``readout``: on a dataset's frames (record one with held-out seeds), the error of the
predicted target centres against the recorded ones, in cm: per target, for the target the
instruction names, and for the named target by the frame's time in its episode.

    uv run python bench/scene_readout.py readout CHECKPOINT DATASET [--every 3]

``closed-loop``: ``rtvla eval`` of a state-based flow policy (``policy=state_flow``, trained on
the true scene state) that reads the scene state the VLA predicts from the cameras instead of
the simulator's, every other ``rtvla eval`` setting as given. Near the state policy's own
success (with the true scene), perception is not what limits the VLA; near the VLA's, it is.

    uv run python bench/scene_readout.py closed-loop VLA_CHECKPOINT STATE_CHECKPOINT \\
        task=reach episodes=50 seed=5000

``true-scene``: ``rtvla eval`` of the VLA with its action expert reading the simulator's scene
state instead of the one its backbone predicts (a scene-reading expert, ``policy.expert=
scene_mixer``): the VLA with perfect perception. Its success against the VLA's own bounds
what better perception can gain. Any task.

    uv run python bench/scene_readout.py true-scene VLA_CHECKPOINT task=pick_place episodes=50

``along``: ``rtvla eval`` of the VLA itself, recording the scene state its scene-state head
predicts at every request; then the named target's error at each episode's first and last
request, by outcome (success or failure class). Frames of a recording are what the
demonstrator saw; these are what the policy sees when it acts, off the demonstrations' paths.

    uv run python bench/scene_readout.py along VLA_CHECKPOINT task=reach episodes=50 seed=5000

``readout`` and ``along`` are for reach only (three targets in the colour order of
``sim.tasks.base.COLORS``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from policies.features import ENV_STATE, STATE
from sim.tasks.base import COLORS

FRAME_BINS = ((0, 15), (15, 30), (30, 45), (45, 60), (60, 10_000))  # frame index in episode


def named_slot(instruction: str) -> int:
    """The index in COLORS of the colour an instruction names."""
    named = [i for i, c in enumerate(COLORS) if c in instruction.split()]
    if len(named) != 1:
        raise ValueError(f"{instruction!r} names {len(named)} of the colours {COLORS}, not one")
    return named[0]


def predict_scene(model, normalizer, preprocess, items: list[dict]) -> np.ndarray:
    """The raw scene states (N, E) the VLA predicts for dataset items."""
    keys = model.config.image_keys
    batch = preprocess.batch(
        {k: torch.stack([it[k] for it in items]) for k in keys},
        torch.stack([it[STATE] for it in items]),
        [it["task"] for it in items],
    )
    return scene_of(model, normalizer, batch)


def scene_of(model, normalizer, batch: dict[str, torch.Tensor]) -> np.ndarray:
    """The raw scene states (B, E) the VLA's scene-state head predicts for a VLA batch."""
    with torch.no_grad():
        readout = model.encode_prefix(batch).readout
        return normalizer.unnormalize(ENV_STATE, model.aux_head(readout)).numpy()


def readout(checkpoint: str, dataset: str, every: int) -> dict:
    from policies.checkpoint import load_checkpoint
    from policies.data import InMemoryChunks, open_dataset
    from policies.inference import VLAPreprocessor

    ckpt = load_checkpoint(checkpoint)
    model = ckpt.model
    if not hasattr(model, "aux_head"):
        raise ValueError(f"{checkpoint} has no scene-state head: train with aux_env_state > 0")
    data = open_dataset(dataset, chunk_length=model.config.chunk_length)
    items = InMemoryChunks(data, model.config.chunk_length, list(model.config.image_keys))
    frame = items.frame_in_episode()
    preprocess = VLAPreprocessor(model.config.image_keys, ckpt.normalizer,
                                 model.tokenize_instructions, model.config.image_size)  # fmt: skip
    index = np.arange(0, len(items), every)
    errors, frames, slots = [], [], []
    for start in range(0, len(index), 64):
        batch = [items[int(i)] for i in index[start : start + 64]]
        predicted = predict_scene(model, ckpt.normalizer, preprocess, batch)
        true = np.stack([it[ENV_STATE].numpy() for it in batch])
        per_target = 100 * np.linalg.norm((predicted - true).reshape(len(batch), -1, 3), axis=-1)
        errors.append(per_target)  # (n, targets), cm
        slots += [named_slot(it["task"]) for it in batch]
        frames += [int(frame[i]) for i in index[start : start + 64]]
    errors, frames, slots = np.concatenate(errors), np.array(frames), np.array(slots)
    named = errors[np.arange(len(slots)), slots]
    by_frame = {
        f"{lo}-{hi}": round(float(np.median(named[(frames >= lo) & (frames < hi)])), 3)
        for lo, hi in FRAME_BINS
        if ((frames >= lo) & (frames < hi)).any()
    }
    names = data.meta.features[ENV_STATE]["names"][::3]
    by_target = {  # each target's error, over all frames / over the frames that name it
        name.split(".")[0]: [round(float(np.median(errors[:, k])), 3),
                             round(float(np.median(named[slots == k])), 3) if (slots == k).any()
                             else None]
        for k, name in enumerate(names)
    }  # fmt: skip
    return {
        "checkpoint": checkpoint, "dataset": dataset, "frames": len(named),
        "target_error_cm_median": round(float(np.median(errors)), 3),
        "target_error_cm_median_by_target_all_and_named": by_target,
        "named_target_error_cm_median": round(float(np.median(named)), 3),
        "named_target_error_cm_p90": round(float(np.percentile(named, 90)), 3),
        "named_target_error_cm_median_by_frame": by_frame,
    }  # fmt: skip


def scene_reading_policy(vla_checkpoint: str, state_checkpoint: str):
    """The state policy of ``state_checkpoint`` as a ``FlowPolicy`` that reads the VLA's
    cameras and predicts the scene state from them (the wire features are the VLA's)."""
    from policies.checkpoint import load_checkpoint, resolve_checkpoint, wire_features
    from policies.inference import VLAPreprocessor
    from policies.state_flow import load_state_flow

    ckpt = load_checkpoint(vla_checkpoint)
    model = ckpt.model
    if not hasattr(model, "aux_head"):
        raise ValueError(f"{vla_checkpoint} has no scene-state head: train with aux_env_state > 0")
    preprocess = VLAPreprocessor(model.config.image_keys, ckpt.normalizer,
                                 model.tokenize_instructions, model.config.image_size)  # fmt: skip
    policy = load_state_flow(resolve_checkpoint(state_checkpoint))
    state_preprocess = policy.preprocess

    def from_cameras(observations, instructions):
        scene = scene_of(model, ckpt.normalizer, preprocess(observations, instructions))
        seen = [{STATE: o[STATE], ENV_STATE: s} for o, s in zip(observations, scene, strict=True)]
        return state_preprocess(seen, instructions)

    policy.preprocess = from_cameras
    reads = (*model.config.image_keys, STATE)
    policy.features = wire_features({k: v for k, v in ckpt.features.items() if k in reads})
    return policy


def eval_loading(wrap: Callable, checkpoint: str, overrides: list[str]) -> None:
    """``rtvla eval checkpoint=CHECKPOINT OVERRIDES`` with its policy loaded as
    ``wrap(path, device, load)``, ``load`` being the usual loader, which is put back after (the
    loader is replaced in this process only). A failed eval raises its ``SystemExit``."""
    import policies.inference
    from runtime.commands.cli import main

    load = policies.inference.load_flow_policy
    policies.inference.load_flow_policy = lambda path, device="cpu": wrap(path, device, load)
    try:
        main(["eval", f"checkpoint={checkpoint}", *overrides])
    except SystemExit as done:
        if done.code:
            raise
    finally:
        policies.inference.load_flow_policy = load


def closed_loop(vla_checkpoint: str, state_checkpoint: str, overrides: list[str]) -> None:
    """``rtvla eval`` of ``scene_reading_policy``, every other setting as given."""
    eval_loading(lambda path, device, load: scene_reading_policy(vla_checkpoint, state_checkpoint),
                 vla_checkpoint, overrides)  # fmt: skip


def true_scene_policy(vla_checkpoint: str, load=None):
    """The VLA of ``vla_checkpoint`` as a ``FlowPolicy`` whose action expert reads the true
    scene state the controller sends (``observation.environment_state``, normalized with the
    checkpoint's statistics) in place of the scene its backbone predicts. load: the policy
    loader (default ``policies.inference.load_flow_policy``)."""
    from dataclasses import replace

    import policies.inference
    from policies.checkpoint import read_json, resolve_checkpoint, wire_features

    policy = (load or policies.inference.load_flow_policy)(vla_checkpoint)
    model = policy.model
    if not getattr(model.config, "reads_scene", False):
        raise ValueError(f"{vla_checkpoint}'s action expert reads no scene state: this needs "
                         "one trained with policy.expert=scene_mixer")  # fmt: skip
    features = read_json(resolve_checkpoint(vla_checkpoint) / "config.json")["features"]
    if ENV_STATE not in features:
        raise ValueError(f"{vla_checkpoint} was trained without {ENV_STATE}")
    policy.features = {**policy.features, **wire_features({ENV_STATE: features[ENV_STATE]})}
    prepare, expert_inputs = policy.preprocess, model._expert_inputs
    E = model.config.env_state_dim

    def with_scene(observations, instructions):
        batch = prepare(observations, instructions)
        scene = torch.as_tensor(np.stack([o[ENV_STATE] for o in observations]), dtype=torch.float32)
        batch[ENV_STATE] = policy.normalizer.normalize(ENV_STATE, scene)
        return batch

    def true_scene(cache, batch):
        cache = expert_inputs(cache, batch)
        scene = torch.cat([batch[ENV_STATE].to(cache.scene.dtype), cache.scene[:, E:]], dim=-1)
        return replace(cache, scene=scene)

    policy.preprocess, model._expert_inputs = with_scene, true_scene
    return policy


def true_scene(vla_checkpoint: str, overrides: list[str]) -> None:
    """``rtvla eval`` of ``true_scene_policy``, every other setting as given."""
    eval_loading(lambda path, device, load: true_scene_policy(path, load),
                 vla_checkpoint, overrides)  # fmt: skip


def along(vla_checkpoint: str, overrides: list[str]) -> dict:
    """``rtvla eval checkpoint=VLA_CHECKPOINT OVERRIDES`` with the scene-state head's output
    recorded at every request; the named target's error (cm) at each episode's first and last
    request, matched to the episode's seed and outcome."""
    from policies.features import ENV_STATE as ENV
    from sim.env import make_env

    if not any(o.startswith("output_dir=") for o in overrides):
        overrides = [*overrides, "output_dir=outputs/bench/scene_along"]
    out = next(o.split("=", 1)[1] for o in overrides if o.startswith("output_dir="))
    predicted: list[np.ndarray] = []

    def recording(path, device, load):
        policy = load(path, device)
        if not hasattr(policy.model, "aux_head"):
            raise ValueError(f"{path} has no scene-state head: train with aux_env_state > 0")

        def keep(module, inputs, output):
            predicted.append(policy.normalizer.unnormalize(ENV, output.detach()).numpy())

        policy.model.aux_head.register_forward_hook(keep)
        return policy

    eval_loading(recording, vla_checkpoint, overrides)
    summary = json.loads((Path(out) / "summary.json").read_text())
    scenes = np.concatenate(predicted)  # (requests, E), in request order
    env = make_env(summary["task"], render=False)
    names = [name.split(".")[0] for name in env.task.environment_names()[::3]]
    rows, used = [], 0
    for k, episode in enumerate(summary["per_episode"]):
        with np.load(Path(out) / f"episode_{k:03d}.npz") as log:
            n = len(log["requests.request_id"])
        env.reset(seed=episode["seed"])
        slot = named_slot(env.instruction)
        true = env.task.environment_state().reshape(-1, 3)[slot]
        error = 100 * np.linalg.norm(scenes[used : used + n].reshape(n, -1, 3)[:, slot] - true,
                                     axis=-1)  # fmt: skip
        used += n
        rows.append((episode["failure"] or "success", error[0], error[-1], names[slot]))
    env.close()
    if used != len(scenes):
        raise RuntimeError(f"{len(scenes)} predictions for {used} logged requests")
    by = {}
    for outcome in sorted({r[0] for r in rows}):
        first = [r[1] for r in rows if r[0] == outcome]
        last = [r[2] for r in rows if r[0] == outcome]
        by[outcome] = {"episodes": len(first),
                       "first_request_cm_median": round(float(np.median(first)), 2),
                       "last_request_cm_median": round(float(np.median(last)), 2)}  # fmt: skip
    by_target = {name: {"episodes": sum(r[3] == name for r in rows),
                        "successes": sum(r[3] == name and r[0] == "success" for r in rows)}
                 for name in names}  # fmt: skip
    return {"checkpoint": vla_checkpoint, "episodes": len(rows),
            "success_rate": summary["success_rate"], "named_target_error_by_outcome": by,
            "outcome_by_named_target": by_target,
            "output_dir": out}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("readout", help="error of the predicted scene on a dataset's frames")
    r.add_argument("checkpoint")
    r.add_argument("dataset")
    r.add_argument("--every", type=int, default=3, help="score every n-th frame")
    c = sub.add_parser("closed-loop", help="a state policy reading the VLA's predicted scene")
    c.add_argument("vla_checkpoint")
    c.add_argument("state_checkpoint")
    c.add_argument("overrides", nargs="*", help="rtvla eval settings, e.g. episodes=50")
    a = sub.add_parser("along", help="the VLA's own predicted scene along its eval episodes")
    a.add_argument("vla_checkpoint")
    a.add_argument("overrides", nargs="*", help="rtvla eval settings, e.g. episodes=50")
    t = sub.add_parser("true-scene", help="the VLA acting on the simulator's scene state")
    t.add_argument("vla_checkpoint")
    t.add_argument("overrides", nargs="*", help="rtvla eval settings, e.g. episodes=50")
    args = parser.parse_args()
    if args.mode == "true-scene":
        true_scene(args.vla_checkpoint, args.overrides)
    elif args.mode == "along":
        print(json.dumps({"bench": "scene_readout", "mode": "along",
                          **along(args.vla_checkpoint, args.overrides)}))  # fmt: skip
    elif args.mode == "readout":
        print(json.dumps({"bench": "scene_readout", **readout(args.checkpoint, args.dataset,
                                                              args.every)}))  # fmt: skip
    else:
        closed_loop(args.vla_checkpoint, args.state_checkpoint, args.overrides)


if __name__ == "__main__":
    main()
