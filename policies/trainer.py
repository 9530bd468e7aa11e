"""The one trainer every policy kind shares: output checks, resume, EMA, checkpoints, metrics.

A kind's ``build(cfg, device)`` returns a ``Setup`` (its model, training items, collate
function and checkpoint contents); ``fit`` does the rest the same way for all of them: AdamW
with linear warmup and cosine decay, gradient clipping, EMA weights (what checkpoints serve),
bf16 autocast on GPU, ``metrics.jsonl``, atomic checkpoints every ``save_every`` steps, and
exact resume: every step draws its batch indices and its noise from (seed, step) alone, so a
run resumed from a checkpoint continues exactly as if it had never stopped. Under
``torchrun`` each rank takes its share of the same global batch and rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from policies.checkpoint import (
    check_features,
    load_train_state,
    read_json,
    read_tensors,
    resolve_checkpoint,
    write_checkpoint,
)
from policies.features import STATE

log = logging.getLogger(__name__)


@dataclass
class Setup:
    """What a policy kind hands the trainer."""

    model: nn.Module  # forward(batch) -> (loss, {term: value})
    items: torch.utils.data.Dataset  # training items, indexed by the batch sampler
    collate: Callable | None  # items -> batch (None: torch's default collation)
    meta: dict  # config.json of its checkpoints: kind, its config, features, fps, ...
    write_extra: Callable[[Path], None]  # writes the kind's extra checkpoint files


def sampling_weights(
    items, early_frames: int, early_weight: float, correction_weight: float = 1.0
) -> np.ndarray | None:
    """Per-item draw probabilities: frames before ``early_frames`` in their episode are drawn
    ``early_weight`` times as often as the rest, frames labelled as corrections
    (``correction``, the demonstrator's recoveries) ``correction_weight`` times; the two
    multiply. None (uniform) when both are 1.

    Early frames are where only the instruction and the scene say where to go (later, the
    arm's own pose already does), so weighting them counters that shortcut. Corrections are a
    few per cent of a recording, yet they are what a policy must get right to recover.
    """
    for name, weight in (("early_weight", early_weight), ("correction_weight", correction_weight)):
        if weight <= 0:
            raise ValueError(f"{name}={weight} must be > 0 (1: uniform sampling)")
    early = early_weight != 1 and early_frames > 0
    if not early and correction_weight == 1:
        return None
    if not hasattr(items, "frame_in_episode"):
        raise ValueError("early_weight and correction_weight need data=memory (they read each "
                         "frame's episode index and labels)")  # fmt: skip
    w = np.ones(len(items))
    if early:
        w = np.where(items.frame_in_episode() < early_frames, early_weight, 1.0)
    if correction_weight != 1:
        if getattr(items, "correction", None) is None:
            raise ValueError("correction_weight needs a dataset with the `correction` label "
                             "(recorded by `rtvla record` or `rtvla aggregate`)")  # fmt: skip
        w = w * np.where(items.correction, correction_weight, 1.0)
    return w / w.sum()


def fit(cfg: Mapping, build: Callable[[torch.device], Setup]) -> tuple[dict, Setup]:
    """Train (or resume) the run of the resolved train config ``cfg`` on what ``build`` makes;
    returns the figures and the setup (its model holds the raw, not EMA, weights)."""
    out = Path(cfg["output"])
    last = out / "checkpoints" / "last"
    if last.exists() and not cfg["resume"]:
        raise FileExistsError(
            f"output={out} already holds a training run: pass resume=true to continue it, or "
            "choose a new output="
        )
    if cfg["data"] not in ("memory", "lerobot"):
        raise ValueError(f"data={cfg['data']!r} is unknown: use memory or lerobot")
    rank, world = _init_distributed()
    device = resolve_device(cfg["device"], rank)
    torch.manual_seed(cfg["seed"])
    setup = build(device)
    model = setup.model.to(device)
    optimizer = make_optimizer(model, cfg)
    ema = EMA(model, cfg["ema_decay"])
    start = 0
    if cfg["resume"] and last.exists():
        folder = resolve_checkpoint(out)
        meta = read_json(folder / "config.json")
        check_features(
            meta["features"], setup.meta["features"], "resume only on the dataset the run was "
            "trained on"
        )  # fmt: skip
        load_train_state(folder, model, optimizer)
        ema.weights = {k: v.float() for k, v in read_tensors(folder / "model.safetensors").items()}
        start = meta["step"]
        if rank == 0:
            truncate_metrics(out / "metrics.jsonl", start)
        log.info("resuming %s from step %d", out, start)
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    batches = step_batches(
        len(setup.items), cfg["batch_size"], cfg["seed"], start, cfg["steps"], rank, world,
        sampling_weights(setup.items, cfg.get("early_frames", 0), cfg.get("early_weight", 1.0),
                         cfg.get("correction_weight", 1.0)),
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(
        setup.items, batch_sampler=list(batches), collate_fn=setup.collate,
        num_workers=cfg["num_workers"],
    )  # fmt: skip
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(dict(cfg), indent=2, default=str))

    def save(step: int) -> None:
        write_checkpoint(
            out, step, model=model, ema=ema.weights, optimizer=optimizer,
            meta={**setup.meta, "train_config": dict(cfg)}, write_extra=setup.write_extra,
        )  # fmt: skip

    figures = train_loop(
        cfg, net=net, model=model, ema=ema, optimizer=optimizer, loader=loader, start=start,
        device=device, rank=rank, world=world, save=save,
    )  # fmt: skip
    if world > 1:
        dist.destroy_process_group()
    figures |= {"parameters": sum(p.numel() for p in model.parameters()), "output": str(out)}
    return figures, setup


def lr_multiplier(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio`` at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def step_batches(
    size: int, batch: int, seed: int, start: int, stop: int, rank: int, world: int,
    p: np.ndarray | None = None,
) -> Iterator[list[int]]:  # fmt: skip
    """Per-step dataset indices: step k's global batch comes from rng(seed, k) (uniform, or
    drawn with probabilities ``p``); rank r takes every world-th of it."""
    for step in range(start, stop):
        rng = np.random.default_rng([seed, step])
        if p is None:
            index = rng.integers(0, size, size=batch)
        else:
            index = rng.choice(size, size=batch, p=p)
        yield index[rank::world].tolist()


def make_optimizer(model: nn.Module, cfg: Mapping) -> torch.optim.AdamW:
    """AdamW with the training config's ``lr``, ``betas`` and ``weight_decay`` (its multi-tensor
    update, which torch picks on a GPU, on a CPU too: a third less optimizer time there)."""
    return torch.optim.AdamW(
        model.parameters(),
        lr=cfg["lr"],
        betas=tuple(cfg["betas"]),
        weight_decay=cfg["weight_decay"],
        foreach=True,
    )


class EMA:
    """Exponential moving average of a model's weights, warmed up as (1 + k) / (10 + k)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.weights = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        floats, averages = [], []
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                floats.append(v.float())
                averages.append(self.weights[k])
            else:
                self.weights[k].copy_(v)
        if floats:  # w <- d w + (1 - d) v, all tensors in one multi-tensor op
            torch._foreach_lerp_(averages, floats, 1 - d)


def train_loop(
    cfg: Mapping, *, net: nn.Module, model: nn.Module, ema: EMA, optimizer: torch.optim.Optimizer,
    loader, start: int, device: torch.device, rank: int, world: int, save: Callable[[int], None],
) -> dict:  # fmt: skip
    """Steps ``start`` to ``cfg['steps']``: ``net(batch)`` gives (loss, terms); the learning-rate
    schedule, clipping, EMA, metrics.jsonl and ``save(step)`` every ``save_every`` steps."""
    steps, metrics = cfg["steps"], []
    bf16 = device.type == "cuda" and cfg.get("bf16", True)  # bf16 autocast on a GPU
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16)
    bar = tqdm(total=steps, initial=start, desc="train", unit="step", disable=rank != 0)
    metrics_file = Path(cfg["output"]) / "metrics.jsonl"
    t0, samples, step = time.perf_counter(), 0, start
    net.train()
    for step, batch in enumerate(loader, start=start):
        for group in optimizer.param_groups:
            group["lr"] = cfg["lr"] * lr_multiplier(
                step, cfg["warmup_steps"], steps, cfg["min_lr_ratio"]
            )
        torch.manual_seed(cfg["seed"] * 1_000_003 + step * world + rank)
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast:
            loss, terms = net(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        optimizer.step()
        ema.update(model, step)
        samples += len(batch[STATE]) * world
        row = {"step": step + 1, **{k: v.item() for k, v in terms.items()},
               "grad_norm": float(grad_norm), "lr": optimizer.param_groups[0]["lr"]}  # fmt: skip
        metrics.append(row)
        if rank == 0:
            bar.update(1)
            bar.set_postfix({k: f"{v.item():.3f}" for k, v in terms.items()})
            if (step + 1) % cfg["log_every"] == 0 or step + 1 == steps:
                with metrics_file.open("a") as f:
                    f.writelines(json.dumps(r) + "\n" for r in metrics[-cfg["log_every"] :])
            if (step + 1) % cfg["save_every"] == 0 or step + 1 == steps:
                save(step + 1)
        step += 1
    bar.close()
    wall = time.perf_counter() - t0
    tail = metrics[-10:] or [{}]
    final = {
        k: float(np.mean([r[k] for r in tail]))
        for k in tail[0]
        if k not in ("step", "grad_norm", "lr")
    }
    return {"steps": step, "trained_steps": step - start, "wall_s": round(wall, 2),
            "samples_per_s": round(samples / max(wall, 1e-9), 1), **final}  # fmt: skip


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the rows after ``step`` (written after the checkpoint a run resumes from), so the
    resumed run's rows continue the file without repeating steps."""
    if path.is_file():
        rows = path.read_text().splitlines(keepends=True)
        kept = [r for r in rows if r.strip() and json.loads(r)["step"] <= step]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, path)


def _init_distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def resolve_device(name: str, rank: int = 0) -> torch.device:
    """``auto``: this rank's GPU if there is one, else the CPU; any other name as given."""
    if name == "auto":
        name = f"cuda:{rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
    return torch.device(name)
