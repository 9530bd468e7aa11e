"""``rtvla demo``: the quickstart's main job, end to end on the simulator.

1. Records a few scripted demonstrations as a LeRobotDataset v3 (the format the policy was
   trained on), replays them open-loop and checks the policy's features against them.
2. Starts a policy server process on a free loopback port serving the shipped checkpoint
   (``checkpoints/demo``, made by the command in its README).
3. Runs the asynchronous controller with real-time chunking against MuJoCo at the task's
   control rate on the wall clock, talking to that server over ZMQ.
4. Prints success rate, inference latency, delay, tick jitter and stalled ticks, writes
   ``figures.json``, the run logs, ``seams.png`` (actions around chunk seams) and a video of
   the first episode's cameras with the instruction overlaid.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from runtime.analysis.seams import plot_seams, seam_metrics
from runtime.commands import CommandFailed, make_sim_env
from runtime.commands import run as run_command
from runtime.robot.client import RequestTimeout, ZmqPolicyClient
from runtime.robot.runlog import RunLog
from sim.record import record_dataset
from sim.replay import replay_dataset
from sim.units import FEATURE_NAMES

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]


def main(cfg: DictConfig) -> dict:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = _checkpoint_path(cfg.checkpoint)
    demos = record_demonstrations(cfg, out / "dataset", checkpoint)

    address = cfg.server or f"tcp://127.0.0.1:{_free_port()}"
    server_dir = out / "server"
    server = None if cfg.server else start_server(checkpoint, address, server_dir, cfg.num_steps)
    try:
        wait_for_server(address, cfg.server_start_timeout_s, server, server_dir / "server.log")
        run_cfg = OmegaConf.merge(cfg, {"server": address, "output_dir": str(out / "run")})
        figures = run_command.main(run_cfg)
    finally:
        server_figures = stop_server(server, server_dir) if server is not None else {}

    logs = [RunLog.from_npz(p) for p in sorted((out / "run").glob("episode_*.npz"))]
    seams = seam_metrics(logs)
    plot = plot_seams(
        {cfg.executor.name: logs},
        out / "seams.png",
        joint=cfg.plot_joint,
        joint_names=FEATURE_NAMES,
    )
    figures = {
        "demonstrations": demos,
        **{k: v for k, v in figures.items() if k != "output_dir"},
        "seam_ratio": seams["seam_ratio"],
        "mean_jerk": seams["mean_jerk"],
        "server": server_figures,
        "checkpoint": str(checkpoint),
        "run_logs": str(out / "run"),
        "plot": str(plot),
        "video": figures["videos"][0] if figures.get("videos") else None,
    }
    (out / "figures.json").write_text(json.dumps(figures, indent=2))
    print_table(figures)
    return figures


def _checkpoint_path(checkpoint: str) -> Path:
    path = Path(checkpoint)
    if not path.is_absolute() and not path.exists():
        path = REPO / path  # the shipped checkpoint, when run from another folder
    if not path.exists():
        raise FileNotFoundError(
            f"checkpoint={checkpoint} does not exist: pass a `rtvla train` output folder, or "
            "restore the shipped one with `git checkout checkpoints/demo`"
        )
    return path


def record_demonstrations(cfg: DictConfig, dataset: Path, checkpoint: Path) -> dict:
    """Record ``cfg.record_episodes`` demonstrations, replay them, check the policy fits."""
    from policies.checkpoint import check_features, load_checkpoint
    from policies.data import open_dataset

    env = make_sim_env(cfg.task)
    try:
        summary = record_dataset(
            env, dataset, cfg.record_episodes, seed=cfg.record_seed,
            failure_prob=cfg.record_failure_prob,
        )  # fmt: skip
    finally:
        env.close()
    replay_env = make_sim_env(cfg.task, render=False)
    try:
        replays = replay_dataset(replay_env, dataset, list(summary.seeds))
    finally:
        replay_env.close()
    trained = load_checkpoint(checkpoint).features
    check_features(
        trained, open_dataset(dataset).meta.features,
        fix=f"the checkpoint was trained on another task or image size than task={cfg.task.name}",
    )  # fmt: skip
    return {
        "episodes": summary.episodes,
        "frames": summary.frames,
        "correction_frames": int(sum(r.correction.sum() for r in replays)),
        "replay_success_rate": float(np.mean([r.success for r in replays])),
        "dataset": str(dataset),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    checkpoint: Path, address: str, folder: Path, num_steps: int | None = None
) -> subprocess.Popen:
    """``rtvla serve`` in a child process (``num_steps`` Euler steps per chunk; None: the
    checkpoint's); its output goes to ``folder/server.log``."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "runtime.commands.cli", "serve", f"checkpoint={checkpoint}",
        f"address={address}", "log_every_s=null", f"hydra.run.dir={folder}",
        f"num_steps={'null' if num_steps is None else num_steps}",
    ]  # fmt: skip
    log.info("starting the policy server at %s: %s", address, " ".join(command[2:]))
    with open(folder / "server.log", "wb") as stderr, open(folder / "figures.json", "wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=stderr, cwd=REPO, env=os.environ)


def wait_for_server(
    address: str, timeout_s: float, server: subprocess.Popen | None, server_log: Path
) -> None:
    """Poll the server's metadata until it answers (it loads torch and the checkpoint first)."""
    client = ZmqPolicyClient(address, timeout_s=1.0)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if server is not None and server.poll() is not None:
                raise CommandFailed(
                    f"the policy server exited with code {server.returncode} while starting: "
                    f"see {server_log}",
                    {},
                )
            try:
                meta = client.metadata(1.0)
                log.info("policy server ready: %s, chunk length %d", meta.model_id,
                         meta.chunk_length)  # fmt: skip
                return
            except RequestTimeout:
                if time.monotonic() > deadline:
                    raise CommandFailed(
                        f"no policy server answered at {address} within {timeout_s} s (see "
                        f"{server_log}); on a busy machine importing torch and loading the "
                        f"checkpoint can take longer: raise server_start_timeout_s",
                        {},
                    ) from None
    finally:
        client.close()


def stop_server(server: subprocess.Popen, folder: Path) -> dict:
    """SIGTERM (a clean shutdown), then the figures it printed as its last line (kept in
    ``folder/figures.json`` by ``start_server``)."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    lines = (folder / "figures.json").read_text().strip().splitlines()
    try:
        return json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        return {}


def print_table(f: dict) -> None:
    def ms(key: str) -> str:
        return "-" if f.get(key) is None else f"{f[key]:.1f} ms"

    lo, hi = f["success_rate_ci95"]
    rows = [
        ("demonstrations recorded / replayed ok",
         f"{f['demonstrations']['episodes']} / {f['demonstrations']['replay_success_rate']:.0%}"),
        ("executor", f"{f['executor']} ({f['clock']} clock)"),
        ("success rate (95 % CI)", f"{f['success_rate']:.0%} ({lo:.0%} to {hi:.0%}) "
                                   f"of {f['episodes']} episodes"),
        ("inference latency p50 / p99 (round trip)",
         f"{ms('round_trip_ms_p50')} / {ms('round_trip_ms_p99')}"),
        ("server compute p50 / p99", f"{ms('server_ms_p50')} / {ms('server_ms_p99')}"),
        ("delay d, mean / max (ticks)",
         f"{f['delay_ticks_mean'] or 0:.2f} / {f['delay_ticks_max'] or 0:.0f}"),
        ("tick jitter p50 / p99 / max",
         f"{ms('jitter_ms_p50')} / {ms('jitter_ms_p99')} / {ms('jitter_ms_max')}"),
        ("stalled ticks / all ticks", f"{f['stalled_ticks']} / {f['ticks']}"),
        ("missed ticks (loop overran)", str(f["missed_ticks"])),
        ("seam ratio (max seam step / p99 in-chunk step)",
         "-" if f["seam_ratio"] is None else f"{f['seam_ratio']:.2f}"),
        ("plot", f["plot"]),
        ("video (episode 0, instruction overlaid)", str(f["video"])),
    ]  # fmt: skip
    table = Table(title=f"rtvla demo: {f['task']}, async controller + policy server over ZMQ")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for row in rows:
        table.add_row(*row)
    Console(stderr=True).print(table)
