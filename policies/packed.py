"""Training the VLA on a machine that has torch but no lerobot, mujoco or hydra (a rented GPU).

``pack`` (run where the project is installed) writes LeRobotDatasets as ``PREFIX.npz`` (state,
action, scene state, correction label, episode and task of every frame; features, fps, tasks
and statistics computed over all the frames) and ``PREFIX.<camera>.mp4`` per camera (H.264
4:4:4, every frame in order): small enough to copy. ``train`` (run there, from a copy of the
repository) keeps every array on the device, images as uint8, FAST tokens computed once per
frame, and gathers each step's batch there, so a small VLA trains at GPU speed rather than
data-loader speed. The model, losses (``--failure-actions`` as ``failure_actions``), schedule,
EMA and checkpoint format are ``rtvla train``'s: the checkpoint evaluates with ``rtvla eval
checkpoint=...`` like any other.

    uv run python -m policies.packed pack outputs/data/reach1200 --output .gpu/reach1200
    python3 -m policies.packed train .gpu/reach1200 --output RUN --seconds 480   # the defaults
    python3 -m policies.packed bundle RUN $OUT/run --all --float16   # then, back here:
    cat run.tar.part-* | tar xf - -C outputs/gpu/RUN                 # step_N/ folders to evaluate
    DEVICE=cpu python3 -m policies.packed train ... --steps 20     # a check on a CPU first

Runs started side by side on one GPU with ``--seconds`` should pass ``--together DIR:N`` (the
same DIR, N runs): each then times its steps once all N train, not while the others still
load their data (a run that timed itself alone planned 12,550 steps and its deadline stopped
it at 4,936, its learning rate still high).
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
import yaml

from policies.checkpoint import save_checkpoint
from policies.data import failure_segments, sample_chunks
from policies.fast import FastTokenizer
from policies.features import ACTION, ENV_STATE, STATE
from policies.normalize import Normalizer
from policies.train import vla_config
from policies.trainer import EMA, make_optimizer, train_loop
from policies.vision import resize_with_pad
from policies.vla import VLA

# rtvla train's optimizer, schedule and FAST settings, read from its config (written once);
# the batch, peak lr and warmup have their own defaults here (a GPU's batch, not a CPU's).
TRAIN_DEFAULTS = yaml.safe_load((Path(__file__).parents[1] / "configs" / "train.yaml").read_text())
OPTIMIZER_KEYS = ("betas", "weight_decay", "min_lr_ratio", "grad_clip", "ema_decay")

# -- packing (needs lerobot and av) -------------------------------------------------------------


def pack(datasets: list[str], output: str | Path, crf: int = 18) -> dict:
    """Pack ``datasets`` (same features; episodes renumbered in order) at prefix ``output``.

    Every file is written under a ``.partial`` name and renamed at the end, so an interrupted
    pack leaves no half-written file under the final names. Returns a summary.
    """
    from policies.data import InMemoryChunks, open_dataset

    t0 = time.perf_counter()
    parts, features, fps = [], None, None
    for root in datasets:
        ds = open_dataset(root, chunk_length=1)
        feats = {k: {**v, "shape": list(v["shape"])} for k, v in ds.meta.features.items()}
        if features is not None and feats != features:
            raise ValueError(f"{root} has other features than {datasets[0]}: pack them apart")
        features, fps = feats, ds.meta.fps
        parts.append(InMemoryChunks(ds, 1))
        print(f"{root}: {len(parts[-1])} frames decoded", flush=True)
    tasks = sorted({t for p in parts for t in p.task})
    episode, offset = [], 0
    for p in parts:
        episode.append(p.episode + offset)
        offset = int(episode[-1].max()) + 1
    arrays = {
        "episode": np.concatenate(episode),
        STATE: np.concatenate([p.state.numpy() for p in parts]),
        ACTION: np.concatenate([p.action.numpy() for p in parts]),
        "task_index": np.array([tasks.index(t) for p in parts for t in p.task]),
    }
    if all(p.env_state is not None for p in parts):
        arrays[ENV_STATE] = np.concatenate([p.env_state.numpy() for p in parts])
    if all(p.correction is not None for p in parts):  # for failure_actions
        arrays["correction"] = np.concatenate([p.correction for p in parts])
    stats = {k: _stats(arrays[k]) for k in (STATE, ACTION, ENV_STATE) if k in arrays}
    meta = {"image_keys": list(parts[0].image_keys), "features": features, "fps": fps,
            "tasks": tasks, "stats": stats, "sources": [str(d) for d in datasets]}  # fmt: skip
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {Path(f"{out}.npz"): Path(f"{out}.npz.partial")}
    with done[Path(f"{out}.npz")].open("wb") as f:
        np.savez_compressed(f, meta=json.dumps(meta), **arrays)
    errors = {}
    for key in meta["image_keys"]:
        frames = np.concatenate([p.images[key].numpy() for p in parts])
        final = Path(f"{out}.{key}.mp4")
        done[final] = final.with_name(final.name + ".partial")
        errors[key] = _encode_video(frames, done[final], crf)
        print(f"{final}: {len(frames)} frames, {done[final].stat().st_size / 1e6:.1f} MB, "
              f"worst sampled mean abs error {errors[key]:.2f}/255", flush=True)  # fmt: skip
    for final, partial in done.items():
        os.replace(partial, final)
    return {"output": str(out), "frames": len(arrays["episode"]), "episodes": offset,
            "megabytes": round(sum(p.stat().st_size for p in done) / 1e6, 1),
            "pixel_error": errors, "wall_s": round(time.perf_counter() - t0, 1)}  # fmt: skip


def _encode_video(frames: np.ndarray, path: Path, crf: int) -> float:
    """uint8 (N, 3, h, w) -> H.264 4:4:4 at ``path``; the worst sampled mean abs pixel error."""
    import av

    hwc = frames.transpose(0, 2, 3, 1)
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height = hwc.shape[2], hwc.shape[1]
        stream.pix_fmt = "yuv444p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        for f in hwc:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), "rgb24")))
        out.mux(stream.encode())
    worst, n = 0.0, 0
    with av.open(str(path), format="mp4") as c:
        for i, frame in enumerate(c.decode(video=0)):
            n += 1
            if i % 97 == 0:
                err = np.abs(frame.to_ndarray(format="rgb24").astype(int) - hwc[i].astype(int))
                worst = max(worst, float(err.mean()))
    if n != len(hwc):
        raise RuntimeError(f"{path}: wrote {len(hwc)} frames, read back {n}")
    return worst


def _stats(x: np.ndarray) -> dict[str, list]:
    x = x.astype(np.float64)
    return {"mean": x.mean(0).tolist(), "std": x.std(0).tolist(),
            "min": x.min(0).tolist(), "max": x.max(0).tolist()}  # fmt: skip


# -- training (torch only; OpenCV or PyAV to read the videos) -----------------------------------


def read_meta(prefix: str | Path) -> dict:
    """The packed dataset's metadata; a clear error when a file is missing."""
    npz = Path(f"{prefix}.npz")
    if not npz.is_file():
        raise FileNotFoundError(f"{npz} not found: pack one with python -m policies.packed pack")
    meta = json.loads(str(np.load(npz, allow_pickle=False)["meta"]))
    missing = [v for k in meta["image_keys"] if not (v := Path(f"{prefix}.{k}.mp4")).is_file()]
    if missing:
        raise FileNotFoundError(f"{[str(m) for m in missing]} not found: copy every packed file")
    return meta


def read_video(path: str | Path) -> np.ndarray:
    """Every frame of an mp4 as uint8 (N, 3, h, w): OpenCV where it is, else PyAV."""
    try:
        import cv2
    except ImportError:
        import av

        with av.open(str(path)) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    else:
        cap, frames = cv2.VideoCapture(str(path)), []
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            frames.append(bgr[:, :, ::-1])
    return np.ascontiguousarray(np.stack(frames).transpose(0, 3, 1, 2))


def episode_ends(episode: np.ndarray) -> np.ndarray:
    """Each frame's episode end (one past its last frame), for frames stored episode by
    episode."""
    change = np.flatnonzero(np.diff(episode)) + 1
    starts, ends = np.r_[0, change], np.r_[change, len(episode)]
    return np.repeat(ends, ends - starts)


class DeviceData:
    """A packed dataset as device tensors, and the training batch of any frame indices: the
    same batch ``policies.data.Collator`` makes of ``InMemoryChunks`` items (chunks clamped to
    their episode and ``action_is_pad`` past its end, normalized state, actions and scene
    state, instruction tokens of the task, FAST tokens of the normalized chunk). With
    ``drop_failures`` every action of the frames before an episode's first correction is
    padding, as ``InMemoryChunks(drop_failure_actions=True)`` marks them."""

    def __init__(
        self, prefix: str | Path, model: VLA, normalizer: Normalizer,
        fast: FastTokenizer | None, device: torch.device, drop_failures: bool = False,
    ) -> None:  # fmt: skip
        z = np.load(f"{prefix}.npz", allow_pickle=False)
        meta = json.loads(str(z["meta"]))
        cfg = model.config
        episode = z["episode"]
        n, H = len(episode), cfg.chunk_length
        ep_end = episode_ends(episode)
        query = np.arange(n)[:, None] + np.arange(H)  # (N, H)
        index = np.minimum(query, ep_end[:, None] - 1)
        action = normalizer.normalize(ACTION, torch.from_numpy(z[ACTION])).float()
        chunks = action[torch.from_numpy(index)]  # (N, H, A) normalized
        self.device, self.n, self.size = device, n, tuple(cfg.image_size)
        self.chunks = chunks.to(device)
        is_pad = query >= ep_end[:, None]
        if drop_failures:
            if "correction" not in z:
                raise ValueError(f"{prefix}.npz has no correction labels: pass --failure-actions "
                                 "keep, or pack a dataset recorded with failure_prob")  # fmt: skip
            is_pad |= failure_segments(episode, z["correction"])[:, None]
        self.is_pad = torch.from_numpy(is_pad).to(device)
        self.state = normalizer.normalize(STATE, torch.from_numpy(z[STATE])).float().to(device)
        self.env = None
        if ENV_STATE in normalizer.mean:
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


def batches(data: DeviceData, batch: int, seed: int, steps: int, deadline: float = float("inf")):
    """Step k's batch is drawn from rng(seed, k), as ``policies.trainer.step_batches`` draws;
    stops early at ``deadline`` (a ``time.perf_counter`` value)."""
    for step in range(steps):
        if time.perf_counter() > deadline:
            return
        rng = np.random.default_rng([seed, step])
        index = torch.from_numpy(rng.integers(0, data.n, size=batch)).to(data.device)
        yield data.batch(index)


def fit_fast(prefix: str | Path, normalizer: Normalizer, config, seed: int) -> FastTokenizer:
    """The FAST tokenizer fitted as ``rtvla train`` fits one (``fast_fit_chunks`` random
    normalized chunks, ``policies.data.sample_chunks``)."""
    z = np.load(f"{prefix}.npz", allow_pickle=False)
    count = TRAIN_DEFAULTS["fast_fit_chunks"]
    chunks = sample_chunks(z[ACTION], z["episode"], config.chunk_length, count, seed)
    normed = normalizer.normalize(ACTION, torch.from_numpy(chunks)).numpy()
    return FastTokenizer(vocab_size=config.fast_vocab_size).fit(normed)


def seconds_per_step(model: VLA, data: DeviceData, cfg: dict, device: torch.device) -> float:
    """Time 30 training steps (after 10 warm-up steps) of a throwaway copy of the model."""
    trial = copy.deepcopy(model)
    opt = make_optimizer(trial, cfg)
    bf16 = device.type == "cuda" and cfg["bf16"]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for step, b in enumerate(batches(data, cfg["batch_size"], 12345, 40)):
        if step == 10:
            sync()
            t0 = time.perf_counter()
        with autocast:
            loss, _ = trial(b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync()
    return (time.perf_counter() - t0) / 30


def wait_for_peers(together: str | None, timeout_s: float = 900.0) -> None:
    """``--together DIR:N``: mark this process ready in DIR, then wait until N processes are,
    so that runs started side by side time their steps while all of them train (a step timed
    while the others still load their data is too short, and the run overshoots its budget)."""
    if not together:
        return
    folder, _, count = together.rpartition(":")
    if not folder or not count.isdigit() or int(count) < 1:
        raise ValueError(f"--together {together!r} must read DIR:N, e.g. /tmp/runs_1234:4")
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / f"ready-{os.getpid()}").touch()
    deadline = time.perf_counter() + timeout_s
    while len(list(Path(folder).glob("ready-*"))) < int(count):
        if time.perf_counter() > deadline:
            print(f"--together: fewer than {count} runs ready after {timeout_s:g} s; timing "
                  "alone", flush=True)  # fmt: skip
            return
        time.sleep(0.5)


def train(args: argparse.Namespace) -> dict:
    device = torch.device(os.environ.get("DEVICE", "cuda"))
    torch.set_float32_matmul_precision("high")
    t_start = time.perf_counter()
    bad = [o for o in args.overrides if not o.startswith("policy.") or "=" not in o]
    if bad:
        raise ValueError(f"overrides must read policy.<field>=<value>, got {bad}")
    policy = {o[7:].split("=", 1)[0]: _value(o.split("=", 1)[1]) for o in args.overrides}
    meta = read_meta(args.packed)
    features = {k: {**v, "shape": tuple(v["shape"])} for k, v in meta["features"].items()}
    config = vla_config(features, policy)
    keys = (STATE, ACTION, ENV_STATE) if config.aux_env_state > 0 else (STATE, ACTION)
    normalizer = Normalizer.from_stats(meta["stats"], keys)
    torch.manual_seed(args.seed)
    model = VLA(config).to(device)
    fast = fit_fast(args.packed, normalizer, config, args.seed) if config.fast_loss else None
    drop = args.failure_actions == "drop" or (
        args.failure_actions == "auto" and "correction" in np.load(f"{args.packed}.npz")
    )
    data = DeviceData(args.packed, model, normalizer, fast, device, drop_failures=drop)
    cfg = {**{k: TRAIN_DEFAULTS[k] for k in OPTIMIZER_KEYS},
           "output": args.output, "lr": args.lr, "warmup_steps": args.warmup,
           "seed": args.seed, "log_every": 50, "batch_size": args.batch,
           "save_every": args.save_every, "instruction": "task", "dataset": meta["sources"],
           "failure_actions": "drop" if drop else "keep",
           "policy": policy, "trainer": "policies.packed", "bf16": True}  # fmt: skip
    steps, deadline = args.steps, float("inf")
    if args.seconds is not None:
        wait_for_peers(args.together)
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
    if args.saves:
        cfg["save_every"] = max(1, -(-steps // args.saves))
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
    if not saved or saved[-1] != figures["steps"]:  # stopped at the deadline
        save(figures["steps"])
    return {"output": args.output, "planned_steps": steps, **figures}


def bundle(run: str | Path, output: str | Path, every: bool, half: bool, part_mb: float) -> dict:
    """Tar the inference files of a run's last checkpoint (``every``: of all of them) and its
    ``metrics.jsonl`` into
    ``output``.tar, weights in float16 with ``half`` (they load into the float32 model as is),
    split into ``output``.tar.part-NN files of at most ``part_mb`` MB (``cat`` joins them)."""
    import io
    import tarfile

    from safetensors.torch import load_file, save

    from policies.checkpoint import INFERENCE_FILES, resolve_checkpoint

    run = Path(run)
    if every:
        folders = sorted(p for p in (run / "checkpoints").glob("step_*") if p.is_dir())
        folders = [p for p in folders if not p.name.endswith(".tmp")]
    else:
        folders = [resolve_checkpoint(run)]
    if not folders:
        raise FileNotFoundError(f"{run} holds no checkpoint")
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for folder in folders:
            for name in INFERENCE_FILES:
                path = folder / name
                if not path.is_file():
                    continue
                blob = path.read_bytes()
                if half and name == "model.safetensors":
                    weights = {k: v.half() if v.is_floating_point() else v
                               for k, v in load_file(path).items()}  # fmt: skip
                    blob = save(weights)
                info = tarfile.TarInfo(f"{folder.name}/{name}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
        metrics = run / "metrics.jsonl"
        if metrics.is_file():  # the loss curves, for plots
            info = tarfile.TarInfo("metrics.jsonl")
            info.size = metrics.stat().st_size
            tar.addfile(info, io.BytesIO(metrics.read_bytes()))
    blob, size = data.getvalue(), int(part_mb * 1e6)
    parts = [blob[i : i + size] for i in range(0, len(blob), size)]
    names = []
    for i, part in enumerate(parts):
        names.append(Path(f"{output}.tar.part-{i:02d}"))
        names[-1].write_bytes(part)
    return {"checkpoints": [p.name for p in folders], "files": [str(n) for n in names],
            "megabytes": round(len(blob) / 1e6, 1)}  # fmt: skip


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m policies.packed", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="LeRobotDatasets -> PREFIX.npz + PREFIX.<camera>.mp4")
    p.add_argument("datasets", nargs="+", help="LeRobotDataset folders (same features)")
    p.add_argument("--output", required=True, help="path prefix of the packed files")
    p.add_argument("--crf", type=int, default=18, help="H.264 quality (0 lossless, 51 worst)")
    t = sub.add_parser("train", help="train the VLA from a packed dataset")
    t.add_argument("packed", help="path prefix written by pack")
    t.add_argument("--output", required=True, help="run folder (checkpoints/, metrics.jsonl)")
    budget = t.add_mutually_exclusive_group(required=True)
    budget.add_argument("--steps", type=int, help="optimizer steps")
    budget.add_argument("--seconds", type=float, help="wall-time budget: steps from a timing")
    t.add_argument("--batch", type=int, default=256)
    t.add_argument("--lr", type=float, default=5e-4)
    t.add_argument("--warmup", type=int, default=500)
    t.add_argument("--save-every", type=int, default=2000)
    t.add_argument("--saves", type=int, help="instead of --save-every: this many evenly spaced")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--failure-actions",
        choices=("auto", "keep", "drop"),
        default="auto",
        help="as rtvla train's failure_actions (auto: drop where packed labels exist)",
    )
    together = "with --seconds: time the steps once N runs sharing DIR are all ready"
    t.add_argument("--together", metavar="DIR:N", help=together)
    b = sub.add_parser("bundle", help="a run's checkpoints as tar parts small enough to copy")
    b.add_argument("run", help="run folder (or one checkpoint folder)")
    b.add_argument("output", help="path prefix of the parts (PREFIX.tar.part-NN)")
    b.add_argument("--all", action="store_true", help="every checkpoint, not only the last")
    b.add_argument("--float16", action="store_true", help="weights in float16 (half the size)")
    b.add_argument("--part-mb", type=float, default=15.0)
    args, args.overrides = parser.parse_known_args(argv)  # train: policy.<field>=<value> ...
    if args.command != "train" and args.overrides:
        parser.error(f"unrecognized arguments: {' '.join(args.overrides)}")
    try:
        if args.command == "pack":
            result = pack(args.datasets, args.output, args.crf)
        elif args.command == "bundle":
            result = bundle(args.run, args.output, args.all, args.float16, args.part_mb)
        else:
            result = train(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
