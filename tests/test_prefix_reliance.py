"""bench/prefix_reliance.py on a tiny state policy trained with training-time RTC."""

import importlib.util
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = {"name": "state_flow", "chunk_length": 8, "width": 32, "depth": 1, "num_steps": 2}


def load_bench():
    spec = importlib.util.spec_from_file_location(
        "prefix_reliance", ROOT / "bench/prefix_reliance.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_tiny(root: Path, out: Path, max_delay: int) -> None:
    from policies.train import train

    train({
        "dataset": str(root), "output": str(out), "steps": 2, "batch_size": 8, "lr": 1e-3,
        "betas": [0.9, 0.95], "weight_decay": 0.0, "warmup_steps": 1, "min_lr_ratio": 0.1,
        "grad_clip": 1.0, "ema_decay": 0.9, "seed": 0, "resume": False, "data": "memory",
        "num_workers": 0, "log_every": 1, "save_every": 2, "instruction": "task",
        "fast_tokenizer": None, "fast_fit_chunks": 8, "device": "cpu",
        "policy": {**TINY, "rtc_training_max_delay": max_delay},
    })  # fmt: skip


def test_the_prefix_is_held_and_the_probes_report_per_position(tmp_path):
    from sim import SimEnv
    from sim.record import record_dataset

    root = tmp_path / "reach"
    env = SimEnv("reach", render=False)
    record_dataset(env, root, episodes=2, seed=0, progress=False)
    env.close()
    train_tiny(root, tmp_path / "rtc", max_delay=3)
    bench = load_bench()
    figures = bench.prefix_reliance(str(tmp_path / "rtc"), str(root), delay=2, frames=12,
                                    offset=0.5, stale=2, seed=0)  # fmt: skip
    assert figures["frames"] > 0 and figures["chunk_length"] == 8
    assert figures["prefix_held"] == pytest.approx(1.0, abs=1e-3)  # sampled clean, kept as given
    assert figures["gain_per_position"][:2] == pytest.approx([1.0, 1.0], abs=1e-3)
    assert len(figures["ramp_per_position"]) == 8
    assert figures["ramp_per_position"][:2] == pytest.approx([0.5, 1.0], abs=1e-3)
    assert all(math.isfinite(figures[k]) for k in figures if k.startswith("rmse"))

    train_tiny(root, tmp_path / "plain", max_delay=0)
    with pytest.raises(SystemExit, match="rtc_training_max_delay"):
        bench.prefix_reliance(str(tmp_path / "plain"), str(root), 2, 12, 0.5, 2, 0)
