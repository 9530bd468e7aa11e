"""Offline training of the VLA from a LeRobotDataset (single process, or DDP via torchrun).

AdamW with linear warmup and cosine decay, gradient clipping, EMA weights (what checkpoints
serve), bf16 autocast on GPU. Every step draws its batch indices and its noise from
(seed, step) alone, so a run resumed from a checkpoint continues exactly as if it had never
stopped. Under ``torchrun`` each rank takes its share of the same global batch and rank 0
writes the checkpoints and metrics.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import nn
from tqdm import tqdm

from policies import state_flow
from policies.checkpoint import (
    check_features,
    load_train_state,
    resolve_checkpoint,
    save_checkpoint,
    write_checkpoint,
)
from policies.data import (
    Collator,
    InMemoryChunks,
    action_chunks,
    camera_spec,
    check_instruction_source,
    open_dataset,
)
from policies.fast import FastTokenizer
from policies.normalize import Normalizer
from policies.vla import VLA, VLAConfig

log = logging.getLogger(__name__)

POLICY_KEYS = {f.name for f in dataclasses.fields(VLAConfig)}
KINDS = ("vla", "state_flow")  # flow policy kinds this trainer builds (high_level: its own)


def vla_config(features: dict[str, dict], policy: Mapping) -> VLAConfig:
    """The VLA config for a dataset's features and the ``policy/`` config group entry."""
    cams, size = camera_spec(features)
    unknown = set(policy) - POLICY_KEYS - {"name"}
    if unknown:
        raise ValueError(
            f"policy config keys {sorted(unknown)} are unknown; valid: {sorted(POLICY_KEYS)}"
        )
    return VLAConfig(
        **{k: v for k, v in policy.items() if k in POLICY_KEYS},
        image_keys=cams,
        image_size=size,
        state_dim=features["observation.state"]["shape"][0],
        action_dim=features["action"]["shape"][0],
    )


def lr_multiplier(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio`` at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def step_batches(size: int, batch: int, seed: int, start: int, stop: int, rank: int, world: int
                 ) -> Iterator[list[int]]:  # fmt: skip
    """Per-step dataset indices: step k's global batch comes from rng(seed, k); rank r takes
    every world-th of it."""
    for step in range(start, stop):
        rng = np.random.default_rng([seed, step])
        yield rng.integers(0, size, size=batch)[rank::world].tolist()


def make_optimizer(model: nn.Module, cfg: Mapping) -> torch.optim.AdamW:
    """AdamW with the training config's ``lr``, ``betas`` and ``weight_decay``."""
    return torch.optim.AdamW(
        model.parameters(),
        lr=cfg["lr"],
        betas=tuple(cfg["betas"]),
        weight_decay=cfg["weight_decay"],
    )


class EMA:
    """Exponential moving average of a model's weights, warmed up as (1 + k) / (10 + k)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.weights = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.weights[k].mul_(d).add_(v.float(), alpha=1 - d)
            else:
                self.weights[k].copy_(v)


def train(cfg: Mapping) -> dict:
    """Train (or resume) a run described by the resolved ``configs/train.yaml``; returns figures."""
    rank, world = _init_distributed()
    device = resolve_device(cfg["device"], rank)
    out = Path(cfg["output"])
    last = out / "checkpoints" / "last"
    if last.exists() and not cfg["resume"]:
        raise FileExistsError(
            f"output={out} already holds a training run: pass resume=true to continue it, or "
            "choose a new output="
        )
    check_instruction_source(_features(cfg["dataset"]), cfg["instruction"])
    policy_cfg = dict(cfg["policy"])
    kind = policy_cfg.get("name", "vla")
    if kind not in KINDS:
        raise ValueError(f"policy={kind} is unknown: choose one of {KINDS}")
    H = policy_cfg["chunk_length"]
    dataset = open_dataset(cfg["dataset"], chunk_length=H)
    features = {k: {**v, "shape": tuple(v["shape"])} for k, v in dataset.meta.features.items()}
    torch.manual_seed(cfg["seed"])
    if kind == "state_flow":
        config = state_flow.state_flow_config(features, policy_cfg)
        normalizer = Normalizer.from_stats(dataset.meta.stats, state_flow.NORMALIZED)
        model = state_flow.StateFlow(config).to(device)
        collator = state_flow.StateCollator(
            state_flow.StatePreprocessor(normalizer), cfg["instruction"]
        )
        image_keys: tuple[str, ...] = ()
    else:
        config = vla_config(features, policy_cfg)
        normalizer = Normalizer.from_stats(dataset.meta.stats)
        fast = _fast_tokenizer(cfg, dataset, normalizer, config) if config.fast_loss else None
        model = VLA(config).to(device)
        collator = Collator(config.image_keys, normalizer, model.tokenize_instructions,
                            cfg["instruction"], fast, config.max_fast_tokens)  # fmt: skip
        image_keys = config.image_keys
    optimizer = make_optimizer(model, cfg)
    ema = EMA(model, cfg["ema_decay"])
    start = 0
    if cfg["resume"] and last.exists():
        folder = resolve_checkpoint(out)
        meta = json.loads((folder / "config.json").read_text())
        check_features(
            meta["features"], features, "resume only on the dataset the run was trained on"
        )
        load_train_state(folder, model, optimizer)
        ema.weights = {k: v.float() for k, v in load_file(folder / "model.safetensors").items()}
        start = meta["step"]
        if rank == 0:
            truncate_metrics(out / "metrics.jsonl", start)
        log.info("resuming %s from step %d", out, start)
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    if cfg["data"] not in ("memory", "lerobot"):
        raise ValueError(f"data={cfg['data']!r} is unknown: use memory or lerobot")
    items = InMemoryChunks(dataset, H, image_keys) if cfg["data"] == "memory" else dataset
    batches = step_batches(
        len(items), cfg["batch_size"], cfg["seed"], start, cfg["steps"], rank, world
    )
    loader = torch.utils.data.DataLoader(
        items, batch_sampler=list(batches), collate_fn=collator, num_workers=cfg["num_workers"]
    )
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(dict(cfg), indent=2, default=str))

    def save(step: int) -> None:
        if kind == "state_flow":
            meta = {"fps": dataset.meta.fps, **state_flow.checkpoint_meta(config),
                    "train_config": dict(cfg), "features": features}  # fmt: skip
            write_checkpoint(out, step, model=model, ema=ema.weights, optimizer=optimizer,
                             meta=meta, write_extra=state_flow.write_extra(normalizer))  # fmt: skip
            return
        save_checkpoint(
            out, step, model=model, ema=ema.weights, optimizer=optimizer, normalizer=normalizer,
            fast_tokenizer=fast, features=features, train_config=dict(cfg), fps=dataset.meta.fps,
        )  # fmt: skip

    figures = train_loop(cfg, net, model, ema, optimizer, loader, start, device, rank, world, save)
    if world > 1:
        dist.destroy_process_group()
    return {**figures, "parameters": sum(p.numel() for p in model.parameters()), "output": str(out)}


def train_loop(cfg, net, model, ema, optimizer, loader, start, device, rank, world, save) -> dict:
    """Steps ``start`` to ``cfg['steps']``: ``net(batch)`` gives (loss, terms); the learning-rate
    schedule, clipping, EMA, metrics.jsonl and ``save(step)`` every ``save_every`` steps."""
    steps, metrics = cfg["steps"], []
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
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
        samples += len(batch["observation.state"]) * world
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


def _features(root: str) -> dict[str, dict]:
    info = Path(root) / "meta" / "info.json"
    if not info.is_file():
        open_dataset(root)  # raises the clear error
    return json.loads(info.read_text())["features"]


def _fast_tokenizer(
    cfg: Mapping, dataset, normalizer: Normalizer, config: VLAConfig
) -> FastTokenizer:
    if cfg["fast_tokenizer"]:
        tok = FastTokenizer.load(cfg["fast_tokenizer"])
    else:
        chunks = action_chunks(dataset, config.chunk_length, cfg["fast_fit_chunks"], cfg["seed"])
        normed = normalizer.normalize("action", torch.from_numpy(chunks)).numpy()
        tok = FastTokenizer(vocab_size=config.fast_vocab_size).fit(normed)
    if (tok.horizon, tok.action_dim) != (config.chunk_length, config.action_dim):
        raise ValueError(
            f"fast_tokenizer was fitted on ({tok.horizon}, {tok.action_dim}) chunks, the policy "
            f"predicts ({config.chunk_length}, {config.action_dim}): refit it with rtvla fit-fast"
        )
    if tok.vocab_size > config.fast_vocab_size:
        raise ValueError(
            f"fast_tokenizer has {tok.vocab_size} ids, more than policy.fast_vocab_size="
            f"{config.fast_vocab_size}: raise policy.fast_vocab_size"
        )
    return tok


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
