"""Multi-process training: ``torchrun`` with 2 CPU processes (gloo) through the ``rtvla`` CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
TINY = ("policy.width=32", "policy.depth=2", "policy.num_heads=2", "policy.expert_width=32",
        "policy.patch_size=24", "policy.mlp_ratio=2.0", "policy.fast_vocab_size=300",
        "policy.max_fast_tokens=48", "policy.num_steps=4")  # fmt: skip


@pytest.mark.slow  # a minute or more of torchrun on 2 CPU cores: run with -m slow
def test_torchrun_two_gloo_processes_train_one_model(reach_dataset, tmp_path):
    root, _ = reach_dataset
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "runtime.commands.cli", "train", f"dataset={root}", f"output={out}", "steps=3",
        "batch_size=4", "save_every=3", "log_every=1", "warmup_steps=1", "fast_fit_chunks=64",
        "device=cpu", f"hydra.run.dir={tmp_path / 'hydra'}", *TINY,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # Both ranks print their figures; rank 0 alone writes metrics and the checkpoint.
    figures = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(figures) == 2 and all(f["steps"] == 3 for f in figures)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    ckpt = out / "checkpoints" / "step_0000003"
    assert (out / "checkpoints" / "last").read_text().strip() == ckpt.name
    raw = load_file(ckpt / "train_state.safetensors")
    # DDP wraps the model; the checkpoint must hold the plain module's names, loadable as is.
    assert not any(k.startswith("model.module.") for k in raw)
    from policies.checkpoint import load_checkpoint

    assert load_checkpoint(out).step == 3
