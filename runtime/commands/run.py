"""``rtvla run``: the async controller against the simulator or a robot, with a policy server.

Prints success rate, delay, tick jitter, stalled ticks and inference latency; writes each
episode's run log (``episode_<k>.npz``), ``summary.json`` and the resolved ``config.yaml``
to ``output_dir``. ``failure_prob`` pushes the simulated arm off course in that share of the
episodes (``sim/disturb.py``); ``high_level=DIR`` lets SRT-H's high-level policy choose the
instruction; ``operator_script`` overrides it at given ticks (and ``instructions.png`` shows
who chose what in the first episode). Ctrl-C stops at the next tick with the robot holding
still, and the logs of what ran are still written.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import signal
import statistics
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from runtime.analysis.stats import wilson_interval
from runtime.analysis.timeline import override_latencies, override_starts, plot_instructions
from runtime.commands import CommandFailed
from runtime.curve import ClientCurveKeys, CurveKeys
from runtime.robot.client import (
    LocalPolicyClient,
    PolicyClient,
    RequestTimeout,
    ZmqPolicyClient,
)
from runtime.robot.clock import make_clock
from runtime.robot.controller import (
    Controller,
    EpisodeResult,
    ObservationHistory,
    run_episodes,
)
from runtime.robot.display import Display
from runtime.robot.drivers import Driver, make_driver
from runtime.robot.drivers.base import RenamedDriver
from runtime.robot.executors import EXECUTORS, Executor, make_executor
from runtime.robot.operator import WatchingOperator, scripted_operator
from runtime.robot.runlog import RunLog
from runtime.serving.hierarchy import make_high_level
from runtime.wire.info import fit_problems
from runtime.wire.protocol import MetadataReply

log = logging.getLogger(__name__)

LOCAL_PREFIX = "local:"


def main(cfg: DictConfig) -> dict:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / "config.yaml", resolve=True)
    driver = make_run_driver(cfg)
    simulator = hasattr(driver, "success") and hasattr(driver, "reset")  # a SimDriver
    if not simulator and (cfg.clock != "wall" or cfg.max_ticks is None or not cfg.instruction):
        raise ValueError(
            f"driver={cfg.driver.name} drives a robot in real time: set clock=wall, max_ticks "
            "(how long to run) and instruction (what to tell the policy)"
        )
    stop = threading.Event()
    previous_handler = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        driver.connect()
        client = make_client(cfg, action_dim=len(driver.limits().names))
        try:
            factory, options = controller_setup(cfg, client, stop, driver)
            run = _run_episodes if simulator else _run_robot
            try:
                figures, logs = run(cfg, driver, client, factory, options)
            finally:
                if options["display"] is not None:
                    options["display"].close()
        finally:
            client.close()
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        driver.close()
    for k, run_log in enumerate(logs):
        run_log.to_npz(out / f"episode_{k:03d}.npz")
    if logs and (cfg.high_level or cfg.operator_script or cfg.operator_address):
        injected = [g.ticks.get("injected", np.array([""])) for g in logs]
        hit = [k for k, column in enumerate(injected) if (column != "").any()]
        k = hit[0] if hit else 0  # the first episode with an injected failure, if any
        title = f"episode {k}: who chose the instruction"
        plot_instructions(logs[k], out / "instructions.png", title)
    figures |= {
        "executor": cfg.executor.name,
        "clock": cfg.clock,
        "inference_delay_ticks": cfg.inference_delay_ticks,
        "interrupted": stop.is_set(),
        **RunLog.concatenate(logs).summary(),
        "output_dir": str(out),
    }
    per_episode = figures.pop("per_episode", [])  # summary.json only: the printed line stays short
    (out / "summary.json").write_text(json.dumps({**figures, "per_episode": per_episode}, indent=2))
    if figures["requests"] and not figures["chunks_received"] and not stop.is_set():
        raise CommandFailed(
            f"none of the {figures['requests']} requests was answered with a chunk "
            f"({figures['request_errors']} errors, {figures['request_timeouts']} timeouts): "
            f"the run logs in {out} and the server's log say why",
            figures,
        )
    return figures


def _join_task(cfg: DictConfig):
    """``policies.data.with_task`` for a low level trained with ``instruction=hierarchy+task``
    (``high_level_with_task=true``), else None: the chosen instruction goes alone."""
    if not cfg.get("high_level_with_task", False):
        return None
    from policies.data import with_task

    return with_task


def _watching_operator(cfg: DictConfig, driver: Driver) -> WatchingOperator | None:
    """The scripted operator watching the simulated robot (``operator_watch.enabled``)."""
    watch = cfg.get("operator_watch")
    if not watch or not watch.enabled:
        return None
    env = getattr(driver, "env", None)
    if env is None:
        raise ValueError("operator_watch watches a simulated robot: use driver=mujoco")
    return WatchingOperator(
        env, cfg.robot_id, cfg.hz, watch.threshold, watch.every, watch.timeout_s
    )


def make_display(cfg: DictConfig, driver: Driver) -> Display | None:
    """The live display a run config asks for (``display=rerun``), or None."""
    kind = cfg.get("display")
    if kind is None or kind == "none":
        return None
    if kind != "rerun":
        raise ValueError(f"display={kind!r}: use display=rerun, or leave it null for none")
    import importlib.util

    from runtime.robot.display import RerunDisplay

    if importlib.util.find_spec("rerun") is None:
        raise ValueError(
            "display=rerun needs rerun-sdk, from the optional viz group: run `uv sync --group "
            "viz` once (or `uv run --group viz rtvla ...`)"
        )
    return RerunDisplay(
        driver.limits().names,
        cfg.get("display_target") or "spawn",
        cfg.get("display_camera_every", 1),
    )


def controller_setup(
    cfg: DictConfig, client: PolicyClient, stop: threading.Event, driver: Driver
) -> tuple[Callable[[], Executor], dict]:
    """The executor factory and the ``Controller`` options of a run config, once the policy
    is known to fit the driver and the control rate (a ValueError says what differs)."""
    metadata = _fitting_metadata(client, cfg, driver)
    chunk_length = metadata.chunk_length
    params = {k: v for k, v in cfg.executor.items() if k != "name"}
    check_sampling(cfg.executor.name, metadata)
    make_executor(cfg.executor.name, chunk_length, **params)  # check before running
    options = {
        "clock": make_clock(cfg.clock, cfg.hz),
        "robot_id": cfg.robot_id,
        "inference_delay_ticks": cfg.inference_delay_ticks,
        "watchdog_ticks": cfg.watchdog_ticks or chunk_length,
        "operator_address": cfg.operator_address,
        "operator_curve": None
        if cfg.get("operator_curve_keys_dir") is None
        else CurveKeys.from_dir(cfg.operator_curve_keys_dir),
        "operator_script": scripted_operator(cfg.operator_script, cfg.robot_id),
        "operator_watch": _watching_operator(cfg, driver),
        "high_level": make_high_level(
            cfg.high_level,
            cfg.high_level_every,
            cfg.high_level_smoothing,
            cfg.hz,
            cfg.get("high_level_corrections", True),
        ),
        "join_task": _join_task(cfg),
        "stop": stop,
        "display": make_display(cfg, driver),
        "observation_history": ObservationHistory.of_policy(
            metadata.features, metadata.observation_history
        ),
    }
    return functools.partial(make_executor, cfg.executor.name, chunk_length, **params), options


def _run_episodes(cfg, driver, client, executor_factory, options) -> tuple[dict, list[RunLog]]:
    videos: list[str] = []

    def save_video(result: EpisodeResult) -> None:
        if result.episode < _video_episodes(cfg) and getattr(driver, "frames", None):
            videos.append(str(episode_video(driver.frames, result, cfg)))

    results = run_episodes(
        driver,
        client,
        executor_factory,
        cfg.episodes,
        cfg.seed,
        max_ticks=cfg.max_ticks,
        on_episode=save_video,
        **options,
    )
    successes = sum(r.success for r in results)
    figures = {
        "task": cfg.task.name,
        "episodes": len(results),
        "success_rate": successes / max(len(results), 1),
        "success_rate_ci95": [round(x, 3) for x in wilson_interval(successes, len(results))],
        "mean_episode_ticks": sum(r.ticks for r in results) / max(len(results), 1),
        "failures": dict(Counter(r.failure for r in results if not r.success)),
        "goal_distance_median": _median([r.goal_distance for r in results]),
        "per_episode": [r.as_dict() for r in results],
        "videos": videos,
        "high_level": cfg.high_level,
    }
    latencies = [x for r in results for x in override_latencies(r.log)]
    overrides = sum(len(override_starts(r.log)) for r in results)
    if overrides:
        figures |= {
            "operator_overrides": overrides,
            "override_latency_ticks": {
                "followed": len(latencies),
                "median": statistics.median(latencies) if latencies else None,
                "max": max(latencies, default=None),
            },
        }
    pushes = getattr(driver, "pushes", None)
    if pushes is not None:
        pushed = [r for r in results if r.seed in pushes]
        wins = sum(r.success for r in pushed)
        kinds = getattr(driver, "kinds", {})
        by_kind = {}
        for kind in sorted({kinds[r.seed] for r in pushed}):
            hit = [r for r in pushed if kinds[r.seed] == kind]
            won = sum(r.success for r in hit)
            ci = [round(x, 3) for x in wilson_interval(won, len(hit))]
            by_kind[kind] = {"episodes": len(hit), "recovered": won, "ci95": ci}
        figures |= {
            "failure_prob": cfg.failure_prob,
            "failure_kinds": [kinds.get(r.seed) for r in results],  # None: no failure injected
            "recovered_by_kind": by_kind,
            "push_ticks": [pushes.get(r.seed) for r in results],  # None: not pushed
            "pushed_episodes": len(pushed),
            "pushed_success_rate": wins / len(pushed) if pushed else None,
            "pushed_success_rate_ci95": [round(x, 3) for x in wilson_interval(wins, len(pushed))],
        }
    return figures, [r.log for r in results]


def _video_episodes(cfg: DictConfig) -> int:
    """How many episodes get a video: all with ``video=true``, else ``video_episodes``."""
    return cfg.episodes if cfg.get("video", False) else cfg.get("video_episodes", 0)


def episode_video(frames: list, result: EpisodeResult, cfg: DictConfig) -> Path:
    """The episode's cameras with its instruction (and who chose it) per tick, as a video."""
    from runtime.analysis.video import write_video

    ticks = result.log.ticks
    n = min(len(frames), len(ticks["tick"]))
    verdict = "success" if result.success else f"failure: {result.failure}"
    injected = ticks.get("injected", np.full(n, ""))
    flag = ticks.get("correction", np.full(n, np.nan))
    chunk = ticks["chunk"]
    seam = np.r_[False, (chunk[1:] != chunk[:-1]) & (chunk[1:] >= 0)]  # a new chunk starts
    captions = [
        [str(ticks["instruction"][i]),
         f"tick {i}  seed {result.seed}  {cfg.executor.name}  ({ticks['instruction_source'][i]})"
         + (f"  chunk {chunk[i]}" if chunk[i] >= 0 else "  hold")
         + ("  | SEAM" if seam[i] else "")
         + (f"  P(correction) {flag[i]:.2f}" if np.isfinite(flag[i]) else "")
         + (f"  INJECTED {injected[i].upper()}" if injected[i] else "")
         + (f"  -> {verdict}" if i == n - 1 else "")]
        for i in range(n)
    ]  # fmt: skip
    path = Path(cfg.output_dir) / f"episode_{result.episode:03d}"
    return write_video(frames[:n], captions, path, cfg.hz)


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 4) if known else None


def _run_robot(cfg, driver, client, executor_factory, options) -> tuple[dict, list[RunLog]]:
    controller = Controller(
        driver,
        client,
        executor_factory(),
        instruction=cfg.instruction,
        seed=cfg.seed,
        **options,
    )
    try:
        return {"driver": cfg.driver.name}, [controller.run(cfg.max_ticks)]
    finally:
        controller.close()


def check_sampling(executor: str, metadata: MetadataReply) -> None:
    """Refuse, before the first tick, an executor whose sampling method the policy lacks
    (RTC and BID need a flow model; a lerobot policy serves plain sampling only)."""
    method = EXECUTORS[executor]
    served = metadata.sampling
    bid = method.startswith("bid:") and any(m.startswith("bid:") for m in served or ())
    if served is None or method in served or bid:
        return
    plain = [name for name, m in EXECUTORS.items() if m in served]
    raise ValueError(
        f"executor={executor} asks for {method} sampling, which {metadata.model_id} does not "
        f"serve (it serves {list(served)}): it is not a flow model, so RTC and BID do not "
        f"apply; use executor={' or '.join(plain)}"
    )


def _fitting_metadata(client: PolicyClient, cfg: DictConfig, driver: Driver) -> MetadataReply:
    """The policy's metadata, once its features, actions and rate match the driver's."""
    try:
        meta = client.metadata(cfg.timeout_s)
    except RequestTimeout:
        raise ValueError(
            f"no policy server answered at {cfg.server} within {cfg.timeout_s} s: start one "
            "there, or run with server=local:synthetic"
        ) from None
    check_fit(meta, driver, cfg.hz)
    return meta


def check_fit(meta: MetadataReply, driver: Driver, hz: float) -> None:
    """Refuse a policy whose features, actions or fps differ from the driver's and the control
    rate's (``runtime.wire.info.fit_problems``), saying what to change."""
    action_dim = len(driver.limits().names)
    problems = fit_problems(
        meta.features, meta.fps, meta.action_dim, driver.feature_spec(), hz, meta.joint_names
    )
    if meta.action_dim != action_dim and not any("actions" in p for p in problems):
        problems.append(
            f"the policy predicts {meta.action_dim} actions, the driver takes {action_dim}: "
            "serve a policy trained for this robot"
        )
    if problems:
        raise ValueError(
            f"the policy {meta.model_id} does not fit this robot: " + "; ".join(problems)
        )


def make_run_driver(cfg: DictConfig) -> Driver:
    """The driver of the ``driver/`` group entry, at the run's control rate, its observation
    keys renamed by ``rename_map`` (robot name -> policy name) when one is given."""
    driver = _make_driver(cfg)
    rename_map = cfg.get("rename_map")
    return RenamedDriver(driver, dict(rename_map)) if rename_map else driver


def _make_driver(cfg: DictConfig) -> Driver:
    failure_prob = cfg.get("failure_prob", 0.0)  # commands without pushes leave it out
    if failure_prob > 0 and cfg.driver.name != "mujoco":
        raise ValueError(
            f"failure_prob={failure_prob} pushes a simulated arm: use driver=mujoco, or "
            "failure_prob=0 on a robot"
        )
    if cfg.driver.name == "mujoco":
        options = {
            "task": cfg.task.name,
            "image_size": cfg.task.image_size,
            "control_hz": cfg.hz,
            "cameras": tuple(cfg.task.cameras),
            "seed": cfg.seed,
            "render": cfg.driver.render,
            "action_noise": cfg.task.action_noise,
            "grip_state": cfg.task.grip_state,
            "keep_frames": _video_episodes(cfg) > 0 and cfg.driver.render,
        }
        if failure_prob == 0:
            return make_driver("mujoco", **options)
        from runtime.robot.drivers.disturbed import DisturbedMujocoDriver

        push = cfg.disturbance
        return DisturbedMujocoDriver(
            failure_prob=failure_prob, distance=push.distance, duration_s=push.duration_s,
            window=tuple(push.window), kinds=tuple(push.get("kinds", ("push",))), **options,
        )  # fmt: skip
    if cfg.driver.name == "lerobot":
        import draccus
        from lerobot.robots import RobotConfig

        importlib.import_module(cfg.driver.robot_module)  # registers the robot's config type
        robot = draccus.decode(RobotConfig, OmegaConf.to_container(cfg.driver.robot))
        return make_driver(
            "lerobot", robot=robot, control_hz=cfg.hz, calibrate=cfg.driver.calibrate
        )
    params = {k: v for k, v in cfg.driver.items() if k != "name"}
    return make_driver(cfg.driver.name, **params)  # a third-party driver


def make_client(cfg: DictConfig, action_dim: int) -> PolicyClient:
    """``server=tcp://...`` -> ``ZmqPolicyClient``; ``server=local:synthetic`` -> an
    in-process ``GaussianChunkModel``, ``server=local:DIR`` -> the checkpoint in DIR, both
    sampled in-process (``runtime.serving.loader.load_policy``)."""
    if not cfg.server.startswith(LOCAL_PREFIX):
        curve = None if cfg.curve_keys_dir is None else ClientCurveKeys.from_dir(cfg.curve_keys_dir)
        return ZmqPolicyClient(cfg.server, timeout_s=cfg.timeout_s, curve=curve)
    from runtime.serving.loader import load_policy

    name = cfg.server.removeprefix(LOCAL_PREFIX)
    synthetic = cfg.synthetic
    steps = cfg.get("num_steps")  # the sweep's override of every policy's Euler steps
    if steps is None:  # the checkpoint's own, the synthetic model's from its config group
        steps = synthetic.num_steps if name == "synthetic" else None
    policy = load_policy(
        name, num_steps=steps,
        chunk_length=synthetic.chunk_length, action_dim=action_dim, fps=cfg.hz,
    )  # fmt: skip
    if policy.info.action_dim != action_dim:
        raise ValueError(
            f"the checkpoint {name} predicts {policy.info.action_dim} actions, the driver "
            f"takes {action_dim}: serve a policy trained for this robot"
        )
    return LocalPolicyClient(policy, timeout_s=cfg.timeout_s)
