"""``rtvla sweep``: success rate vs inference delay for each executor, vs execution horizon at
one delay, and seam smoothness: the simulated comparison of Black, Galliker, Levine 2025,
"Real-Time Execution of Action Chunking Flow Policies" (success vs delay, one line per method).

Every point is an (executor, delay d) or (executor, execution horizon s) pair run for
``episodes`` seeded episodes, episode k reset with seed + k, so all points see the same scenes.
Runs use the simulated clock: a chunk reaches the executor exactly d ticks after its
observation (``inference_delay_ticks=d``) and the executor starts with the delay estimate d
(``initial_delay=d``), so a sweep repeats exactly. One in-process policy client serves every
point; ``rtc_trained_checkpoint`` adds a second one that serves rtc_trained only. A point
that two parts share (the delay sweep's d = seam_delay, say) runs once.

Skipped, with a note in ``sweep.json``: horizons outside d <= s <= H - d (or that the executor
rejects), rtc_trained when its policy was not trained with training-time RTC, and rtc_trained
at delays longer than the prefixes it was trained on. A delay an executor cannot run at all is
an error.

Writes to ``output_dir``: ``sweep.json`` (every figure, the skipped points, machine, versions and
the resolved config), ``config.yaml``, ``success_vs_delay.png``, ``horizon.png``,
``seams.png`` (executed actions around seams) and ``seam_metrics.png`` (seam ratio and jerk
per executor). Ctrl-C drops the episode in progress and writes what ran, marked interrupted.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import itertools
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from runtime.analysis.seams import plot_seam_metrics, plot_seams, seam_metrics
from runtime.analysis.stats import wilson_interval
from runtime.commands.run import LOCAL_PREFIX, check_fit, make_client, make_run_driver
from runtime.robot.client import LocalPolicyClient, LockstepGroup
from runtime.robot.clock import make_clock
from runtime.robot.controller import ObservationHistory, run_episodes
from runtime.robot.executors import EXECUTORS, make_executor
from runtime.robot.runlog import RunLog
from runtime.wire.info import ChunkPolicy

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
ASYNC = (
    "naive",
    "rtc",
    "rtc_hard",
    "rtc_trained",
    "bid",
)  # request every s ticks, switch at index d
VERSIONS = ("rtvla", "torch", "numpy", "mujoco", "lerobot", "pyzmq")


@dataclass(frozen=True)
class Point:
    """One cell of the sweep: an executor with its settings at a simulated delay."""

    executor: str
    delay: int  # d: inference_delay_ticks and the executor's initial_delay
    params: tuple[tuple[str, object], ...]  # the executor's settings (make_executor's params)


@dataclass
class Outcome:
    """What the episodes of one point gave."""

    successes: list[bool] = field(default_factory=list)
    ticks: list[int] = field(default_factory=list)
    summary: dict = field(default_factory=dict)  # RunLog.summary() of all its episodes
    logs: list[RunLog] = field(default_factory=list)  # kept for the seam points only


@dataclass
class Plan:
    delay: dict[tuple[str, int], Point] = field(default_factory=dict)  # (executor, d)
    horizon: dict[tuple[str, int], Point] = field(default_factory=dict)  # (executor, s)
    seams: dict[str, Point] = field(default_factory=dict)  # executor -> its point at seam_delay
    skipped: list[dict] = field(default_factory=list)  # {executor, delay, horizon?, reason}

    def points(self) -> list[Point]:
        """Every distinct point, in the order they run."""
        ordered = [*self.delay.values(), *self.horizon.values(), *self.seams.values()]
        return list(dict.fromkeys(ordered))


def main(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    grid = _grid(cfg)
    out = Path(cfg.output_dir)
    driver = make_run_driver(cfg)
    stop = threading.Event()
    previous_handler = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        with contextlib.ExitStack() as closing:
            closing.callback(driver.close)
            driver.connect()
            joints = driver.limits().names
            plan = Plan()
            clients = _clients(cfg, grid, len(joints), plan, closing)
            for client in {id(c): c for c in clients.values()}.values():
                check_fit(client.metadata(), driver, cfg.hz)
            _fill(plan, cfg, grid, clients)
            out.mkdir(parents=True, exist_ok=True)  # once the plan is known to be runnable
            OmegaConf.save(cfg, out / "config.yaml", resolve=True)
            outcomes = _run(cfg, grid, plan, clients, driver, stop)
    finally:
        signal.signal(signal.SIGINT, previous_handler)

    by_delay = _table(plan.delay, outcomes)
    by_horizon = _table(plan.horizon, outcomes)
    seam_logs = {n: outcomes[p].logs for n, p in plan.seams.items() if p in outcomes}
    seam_logs = {n: logs for n, logs in seam_logs.items() if logs}
    seams = {name: seam_metrics(logs) for name, logs in seam_logs.items()}
    paths = dict.fromkeys(("success_vs_delay", "horizon", "seams", "seam_metrics"))
    if by_delay:
        paths["success_vs_delay"] = plot_success(
            by_delay,
            out / "success_vs_delay.png",
            f"inference delay d (ticks at {cfg.hz:g} Hz)",
            f"{cfg.task.name}: success vs inference delay",
        )
    if by_horizon:
        paths["horizon"] = plot_success(
            by_horizon,
            out / "horizon.png",
            "execution horizon s (ticks)",
            f"{cfg.task.name}: success vs execution horizon at d = {cfg.horizon_delay}",
        )
    if seam_logs:
        paths["seams"] = plot_seams(
            seam_logs, out / "seams.png", joint=cfg.seam_joint, joint_names=joints
        )
        paths["seam_metrics"] = plot_seam_metrics(
            seams, out / "seam_metrics.png", delay=cfg.seam_delay
        )
    paths["sweep_json"] = out / "sweep.json"
    paths = {k: None if v is None else str(v) for k, v in paths.items()}
    figures = {
        "task": cfg.task.name,
        "server": grid.server,
        "episodes": grid.episodes,
        "quick": bool(cfg.quick),
        "interrupted": stop.is_set(),
        "chunk_length": {n: _chunk_length(c) for n, c in clients.items()},
        "success_vs_delay": by_delay,
        "success_vs_horizon": {"delay": cfg.horizon_delay, "horizons": by_horizon},
        "seams": {"delay": cfg.seam_delay, "executors": seams},
        "skipped": plan.skipped,
        "wall_s": round(time.perf_counter() - started, 1),
        **_environment(),
        "config": OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False),
        "paths": paths,
    }
    Path(paths["sweep_json"]).write_text(json.dumps(figures, indent=2))
    _log_tables(figures)
    compact = {"success", "ci95", "episodes"}
    return {
        "success_vs_delay": {
            n: {d: {k: v for k, v in e.items() if k in compact} for d, e in row.items()}
            for n, row in by_delay.items()
        },
        "seam_ratio": {n: m["seam_ratio"] for n, m in seams.items()},
        "skipped": [f"{s['executor']} {_where(s)}: {s['reason']}" for s in plan.skipped],
        "interrupted": stop.is_set(),
        "wall_s": figures["wall_s"],
        "output_dir": str(out),
        "paths": paths,
    }


# ---- the grid and the plan --------------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    server: str
    executors: tuple[str, ...]
    delays: tuple[int, ...]
    horizons: tuple[int, ...]
    episodes: int


def _grid(cfg: DictConfig) -> Grid:
    """The sweep's axes (quick_grid's under quick=true), checked."""
    try:
        server = cfg.server
    except (MissingMandatoryValue, InterpolationToMissingValueError):
        raise ValueError(
            "no policy: set checkpoint=DIR (a `rtvla train` output folder or one of its "
            "checkpoints), or server=local:synthetic for the analytic policy"
        ) from None
    if not server.startswith(LOCAL_PREFIX):
        raise ValueError(
            f"server={server}: the sweep runs the policy in this process on the simulated "
            "clock; use checkpoint=DIR (server=local:DIR) or server=local:synthetic"
        )
    axes = cfg.quick_grid if cfg.quick else cfg
    executors = tuple(cfg.executors)
    if not executors:
        raise ValueError(f"executors is empty: choose one or more of {list(EXECUTORS)}")
    unknown = [e for e in executors if e not in EXECUTORS]
    if unknown:
        raise ValueError(
            f"executors={list(executors)}: unknown {unknown}; choose one or more of "
            f"{list(EXECUTORS)}"
        )
    if len(set(executors)) != len(executors):
        raise ValueError(f"executors={list(executors)} names an executor twice")
    delays = tuple(sorted({int(d) for d in axes.delays}))
    if not delays:
        raise ValueError("delays is empty: give the inference delays to sweep, e.g. [0,2,4]")
    if any(d < 0 for d in (*delays, cfg.horizon_delay, cfg.seam_delay)):
        raise ValueError(
            f"delays={list(delays)}, horizon_delay={cfg.horizon_delay}, seam_delay="
            f"{cfg.seam_delay}: inference delays are tick counts, >= 0"
        )
    if axes.episodes < 1:
        raise ValueError(f"episodes={axes.episodes}: run at least one episode per point")
    if cfg.batch_episodes < 1:
        raise ValueError(
            f"batch_episodes={cfg.batch_episodes}: run at least one episode at a time (1: one "
            "by one; 16: sixteen side by side, their requests batched)"
        )
    horizons = tuple(sorted({int(s) for s in axes.horizons}))
    return Grid(server, executors, delays, horizons, int(axes.episodes))


def rtc_training_max_delay(policy: ChunkPolicy) -> int | None:
    """The longest clean prefix the served model was trained to condition on (training-time
    RTC, the VLA's ``rtc_training_max_delay``; 0: not trained for it). None: any length, the
    analytic synthetic model's velocity being exact for every per-token flow time."""
    from policies.inference import FlowPolicy

    model = policy.model  # a served policy's model (``FlowChunkPolicy.model``)
    return model.model.config.rtc_training_max_delay if isinstance(model, FlowPolicy) else None


def _clients(
    cfg: DictConfig, grid: Grid, action_dim: int, plan: Plan, closing: contextlib.ExitStack
) -> dict[str, LocalPolicyClient]:
    """executor -> the in-process client serving it (each closed with ``closing``); rtc_trained
    is left out, with a note in ``plan.skipped``, when no policy trained for it serves it."""
    main_client = make_client(cfg, action_dim)
    closing.callback(main_client.close)
    clients = dict.fromkeys(grid.executors, main_client)
    if "bid" in clients and cfg.bid_weak_checkpoint is not None:
        clients["bid"] = _bid_client(cfg, main_client, action_dim)
        closing.callback(clients["bid"].close)
    if "rtc_trained" not in clients:
        return clients
    if cfg.rtc_trained_checkpoint is not None:
        server = LOCAL_PREFIX + str(cfg.rtc_trained_checkpoint)
        trained = clients["rtc_trained"] = make_client(
            OmegaConf.merge(cfg, {"server": server}), action_dim
        )
        closing.callback(trained.close)
        if rtc_training_max_delay(trained.policy) == 0:
            raise ValueError(
                f"rtc_trained_checkpoint={cfg.rtc_trained_checkpoint} was trained without "
                "training-time RTC: train one with policy.rtc_training_max_delay=K (K >= the "
                "largest delay swept), or set rtc_trained_checkpoint=null"
            )
    elif rtc_training_max_delay(main_client.policy) == 0:
        del clients["rtc_trained"]
        reason = (
            f"{grid.server} was trained without training-time RTC "
            "(policy.rtc_training_max_delay=0): set rtc_trained_checkpoint to a checkpoint "
            "trained with policy.rtc_training_max_delay=K"
        )
        plan.skipped.append({"executor": "rtc_trained", "reason": reason})
    return clients


def _bid_client(cfg: DictConfig, main: LocalPolicyClient, action_dim: int) -> LocalPolicyClient:
    """The main policy with ``bid_weak_checkpoint`` as BID's weak policy."""
    from runtime.serving.sampling import FlowChunkPolicy

    weak = make_client(
        OmegaConf.merge(cfg, {"server": LOCAL_PREFIX + str(cfg.bid_weak_checkpoint)}), action_dim
    )
    weak.close()  # only its model is used, by the bid client's policy
    policy = main.policy
    bid = FlowChunkPolicy(
        policy.model, policy.num_steps, policy.beta, policy.info, weak=weak.policy.model
    )
    return LocalPolicyClient(bid, timeout_s=cfg.timeout_s)


def _fill(plan: Plan, cfg: DictConfig, grid: Grid, clients: Mapping) -> None:
    """Every point to run; a delay an executor cannot run raises ValueError."""
    for name, client in clients.items():
        H = _chunk_length(client)
        limit = rtc_training_max_delay(client.policy) if name == "rtc_trained" else None
        for d in grid.delays:
            if not _untrained(plan, name, limit, d):
                plan.delay[name, d] = _point(cfg, name, H, d, key="delays")
        if not _untrained(plan, name, limit, cfg.seam_delay):
            plan.seams[name] = _point(cfg, name, H, cfg.seam_delay, key="seam_delay")
        d = cfg.horizon_delay
        if not grid.horizons or _untrained(plan, name, limit, d):
            continue
        if "execution_horizon" not in cfg.executor_params[name]:
            reason = f"{name} has no execution horizon"
            plan.skipped.append({"executor": name, "delay": d, "horizon": None, "reason": reason})
            continue
        for s in grid.horizons:
            if name in ASYNC and not d <= s <= H - d:
                reason = f"asynchronous execution needs d <= s <= H - d, here d={d}, s={s}, H={H}"
                plan.skipped.append({"executor": name, "delay": d, "horizon": s, "reason": reason})
                continue
            try:
                plan.horizon[name, s] = _point(cfg, name, H, d, horizon=s)
            except ValueError as err:  # e.g. sync with s > H
                plan.skipped.append(
                    {"executor": name, "delay": d, "horizon": s, "reason": str(err)}
                )


def _untrained(plan: Plan, name: str, limit: int | None, d: int) -> bool:
    """Whether delay d is past the prefixes rtc_trained's policy was trained on (``limit``;
    None: any); if so, note the skip."""
    if limit is None or d <= limit:
        return False
    reason = (
        f"its policy was trained with clean prefixes of at most {limit} actions "
        f"(policy.rtc_training_max_delay), not d={d}"
    )
    skip = {"executor": name, "delay": d, "reason": reason}
    if skip not in plan.skipped:  # seam_delay or horizon_delay may repeat a swept delay
        plan.skipped.append(skip)
    return True


def _point(
    cfg: DictConfig, name: str, H: int, d: int, horizon: int | None = None, key: str | None = None
) -> Point:
    """Executor ``name`` at delay d (and execution horizon ``horizon``), checked; a failed
    check raises ValueError, naming the config ``key`` that asked for it when given."""
    params = {k: v for k, v in cfg.executor_params[name].items() if k != "name"}
    params["initial_delay"] = d
    if horizon is not None:
        params["execution_horizon"] = horizon
    try:
        _check(name, H, d, params)
    except ValueError as err:
        if key is None:
            raise
        raise ValueError(f"{key}: {name} cannot run at d={d}: {err}") from None
    return Point(name, d, tuple(sorted(params.items())))


def _check(name: str, H: int, d: int, params: dict) -> None:
    """Raise ValueError unless executor ``name`` can run chunks of H actions at delay d."""
    make_executor(name, H, **params)  # async: d <= max_delay(s_min, H); sync: 1 <= s <= H
    if name == "ensemble" and d >= H:
        raise ValueError(
            f"ensemble at d={d} with chunks of H={H} actions: every chunk would expire before it "
            "arrives; sweep delays below H"
        )


# ---- running ----------------------------------------------------------------------------------


def _run(cfg, grid: Grid, plan: Plan, clients, driver, stop: threading.Event) -> dict:
    """Run every point's episodes (one progress bar over all of them); Point -> Outcome.

    Each point's episodes run in groups of about ``batch_episodes``, side by side in one
    process, their requests answered in batches (``_run_group``). With ``jobs`` > 1 the groups
    are shared out among that many worker processes, each with its own simulators and
    in-process policy (``_work``); every episode depends only on its point, seed and group, so
    the outcomes are those of ``jobs=1``."""
    points = plan.points()
    seam_points = set(plan.seams.values())
    outcomes: dict[Point, Outcome] = {}
    bar = tqdm(total=len(points) * grid.episodes, desc="sweep", unit="ep")
    with logging_redirect_tqdm(), bar, contextlib.ExitStack() as closing:
        if cfg.jobs > 1:
            results = _run_in_workers(cfg, points, grid.episodes, bar, stop)
        else:
            results = {}

            def done(i: int, k: int, result: tuple) -> None:
                results[i, k] = result
                bar.update()

            drivers = _Drivers(cfg, closing, first=driver)
            for i, ks in _groups(len(points), grid.episodes, cfg.batch_episodes):
                point = points[i]
                s = dict(point.params).get("execution_horizon")
                bar.set_postfix_str(f"{point.executor} d={point.delay}" + (f" s={s}" if s else ""))
                _run_group(cfg, i, point, clients[point.executor], drivers, ks, stop, done)
                if stop.is_set():
                    break
    for i, point in enumerate(points):
        runs = [results[i, k] for k in range(grid.episodes) if (i, k) in results]
        if not runs:
            continue
        outcome = outcomes[point] = Outcome()
        outcome.successes = [success for success, _, _ in runs]
        outcome.ticks = [ticks for _, ticks, _ in runs]
        logs = [run_log for _, _, run_log in runs]
        outcome.summary = RunLog.concatenate(logs).summary()
        if outcome.summary["request_errors"]:
            log.warning(
                "%s at d=%d: %d requests got an error reply (the robot held meanwhile)",
                point.executor, point.delay, outcome.summary["request_errors"],
            )  # fmt: skip
        if point in seam_points:
            outcome.logs = logs
    if stop.is_set():
        log.warning("interrupted: writing the points that ran")
    return outcomes


def _episode(
    cfg, point: Point, client, driver, k: int, stop: threading.Event
) -> tuple[bool, int, RunLog]:
    """Episode k (seed cfg.seed + k) of ``point``: (success, ticks, run log)."""
    H = _chunk_length(client)
    info = client.policy.info
    factory = functools.partial(make_executor, point.executor, H, **dict(point.params))
    (result,) = run_episodes(
        driver, client, factory, 1, cfg.seed + k,
        clock=make_clock("sim", cfg.hz), max_ticks=cfg.max_ticks,
        inference_delay_ticks=point.delay, watchdog_ticks=cfg.watchdog_ticks or H, stop=stop,
        observation_history=ObservationHistory.of_policy(info.features,
                                                         info.observation_history),
    )  # fmt: skip
    return bool(result.success), int(result.ticks), result.log


def _groups(points: int, episodes: int, size: int) -> list[tuple[int, list[int]]]:
    """(point index, its episodes) groups run side by side: each point's episodes split into
    consecutive groups of at most ``size``, as even as can be (50 by 16: 12, 13, 13, 12)."""
    if size < 1:
        raise ValueError(f"batch_episodes={size}: run at least one episode at a time")
    n = -(-episodes // size)  # groups per point
    bounds = [round(j * episodes / n) for j in range(n + 1)]
    return [(i, list(range(a, b))) for i in range(points) for a, b in itertools.pairwise(bounds)]


class _Drivers:
    """Simulators for the episodes of a group, made as needed and closed with ``closing``."""

    def __init__(self, cfg, closing: contextlib.ExitStack, first=None) -> None:
        self.cfg, self.closing = cfg, closing
        self.made = [] if first is None else [first]

    def take(self, n: int) -> list:
        while len(self.made) < n:
            driver = make_run_driver(self.cfg)
            self.closing.callback(driver.close)
            driver.connect()
            self.made.append(driver)
        return self.made[:n]


def _run_group(cfg, i: int, point: Point, client, drivers: _Drivers, ks: list[int], stop,
               done: Callable[[int, int, tuple], None]) -> None:  # fmt: skip
    """Episodes ``ks`` of ``point`` side by side, one thread and simulator each, their
    requests answered together (``LockstepGroup``); ``done(i, k, (success, ticks, log))`` for
    each one that ran to its end (not cut short by ``stop``), as it ends. An episode that
    raised re-raises here once the others have ended."""
    group = LockstepGroup(client.policy, timeout_s=cfg.timeout_s)
    members = [group.member() for _ in ks]  # all join before any runs
    errors: list[BaseException] = []

    def episode(member, driver, k: int) -> None:
        try:
            result = _episode(cfg, point, member, driver, k, stop)
            if not stop.is_set():  # interrupted mid-episode: not a fair trial
                done(i, k, result)
        except BaseException as err:  # re-raised in the caller's thread
            errors.append(err)
            stop.set()
        finally:
            member.close()

    if len(ks) == 1:  # no thread for a group of one
        episode(members[0], drivers.take(1)[0], ks[0])
    else:
        threads = [
            threading.Thread(target=episode, args=(m, d, k), name=f"episode-{k}")
            for m, d, k in zip(members, drivers.take(len(ks)), ks, strict=True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]


def _run_in_workers(cfg, points, episodes: int, bar, stop: threading.Event) -> dict:
    """Run the episodes in ``cfg.jobs`` worker processes (``python -m runtime.commands.sweep
    FOLDER WORKER JOBS``). They read the resolved config from FOLDER and write one
    ``p<i>_e<k>.json`` and ``.npz`` (the run log) per episode there: plain files, no pickles."""
    folder = Path(cfg.output_dir) / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, folder / "config.yaml", resolve=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one core per worker
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "runtime.commands.sweep", str(folder), str(w), str(cfg.jobs)],
            cwd=REPO,
            env=env,
        )
        for w in range(cfg.jobs)
    ]
    results: dict[tuple[int, int], tuple[bool, int, RunLog]] = {}

    def collect() -> None:
        for path in sorted(folder.glob("p*_e*.json")):
            i, k = (int(x[1:]) for x in path.stem.split("_"))
            if (i, k) not in results:
                record = json.loads(path.read_text())
                run_log = RunLog.from_npz(path.with_suffix(".npz"))
                results[i, k] = (record["success"], record["ticks"], run_log)
                bar.update()

    try:
        while not stop.is_set():
            finished = all(p.poll() is not None for p in procs)
            collect()  # after the poll: a worker that has exited has written all its files
            if finished:
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait()
    failed = [w for w, p in enumerate(procs) if p.returncode not in (0, -signal.SIGTERM)]
    if failed and not stop.is_set():
        raise RuntimeError(
            f"sweep workers {failed} failed (their errors are above); rerun with jobs=1 to "
            "see the failing episode in this process"
        )
    return results


def _work(folder: Path, worker: int, jobs: int) -> None:
    """A worker process: its share of the episodes, each written to ``folder`` atomically."""
    import torch

    torch.set_num_threads(1)
    cfg = OmegaConf.load(folder / "config.yaml")
    grid = _grid(cfg)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    with contextlib.ExitStack() as closing:
        driver = make_run_driver(cfg)
        closing.callback(driver.close)
        driver.connect()
        plan = Plan()
        clients = _clients(cfg, grid, len(driver.limits().names), plan, closing)
        _fill(plan, cfg, grid, clients)
        points = plan.points()
        drivers = _Drivers(cfg, closing, first=driver)
        lock = threading.Lock()

        def done(i: int, k: int, result: tuple) -> None:
            success, ticks, run_log = result
            name = f"p{i}_e{k}"
            with lock:
                os.replace(run_log.to_npz(folder / f"tmp_{name}.npz"), folder / f"{name}.npz")
                partial = folder / f"tmp_{name}.json"
                partial.write_text(json.dumps({"success": success, "ticks": ticks}))
                os.replace(partial, folder / f"{name}.json")  # last: it marks the episode done

        groups = _groups(len(points), grid.episodes, cfg.batch_episodes)
        for i, ks in groups[worker::jobs]:  # every jobs-th group: each worker gets a mix
            point = points[i]
            _run_group(cfg, i, point, clients[point.executor], drivers, ks, stop, done)
            if stop.is_set():
                return


# ---- figures ----------------------------------------------------------------------------------


def _table(cells: Mapping[tuple[str, int], Point], outcomes: Mapping) -> dict:
    """executor -> str(x) -> success, 95 % Wilson interval and run figures, for run points."""
    table: dict[str, dict] = {}
    for (name, x), point in cells.items():
        outcome = outcomes.get(point)
        if outcome is None or not outcome.successes:
            continue
        n, k = len(outcome.successes), sum(outcome.successes)
        table.setdefault(name, {})[str(x)] = {
            "success": k / n,
            "ci95": [round(b, 4) for b in wilson_interval(k, n)],
            "episodes": n,
            "successes": k,
            "mean_episode_ticks": sum(outcome.ticks) / n,
            "episode_success": [int(x) for x in outcome.successes],  # episode k: seed + k
            "episode_ticks": outcome.ticks,
            "stalled_ticks": outcome.summary["stalled_ticks"],
            "request_errors": outcome.summary["request_errors"],
            "delay_ticks_mean": outcome.summary["delay_ticks_mean"],
            "chunk_ms_p50": outcome.summary["server_ms_p50"],  # inference time per chunk
            "chunk_ms_p99": outcome.summary["server_ms_p99"],
        }
    return table


def plot_success(table: dict, path: Path, xlabel: str, title: str) -> Path:
    """Success rate vs x, one line per executor, 95 % Wilson intervals as error bars."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    xs = sorted({int(x) for row in table.values() for x in row})
    gap = min((b - a for a, b in itertools.pairwise(xs)), default=1)
    for i, (name, row) in enumerate(table.items()):
        shift = 0.05 * gap * (i - (len(table) - 1) / 2)  # executors sharing an x side by side
        p = [e["success"] for e in row.values()]
        lo = [e["success"] - e["ci95"][0] for e in row.values()]
        hi = [e["ci95"][1] - e["success"] for e in row.values()]
        ax.errorbar([int(x) + shift for x in row], p, yerr=[lo, hi], marker="o", ms=4,
                    capsize=3, label=name)  # fmt: skip
    ax.set_xticks(xs)
    episodes = sorted({e["episodes"] for row in table.values() for e in row.values()})
    ax.set(xlabel=xlabel, ylabel="success rate", ylim=(-0.03, 1.03))
    n = "/".join(map(str, episodes))
    ax.set_title(f"{title}\n{n} episodes per point, bars: 95 % Wilson interval", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    return path


def _log_tables(figures: dict) -> None:
    """The success tables and seam figures, compactly, through logging."""
    seams = figures["seams"]["executors"]
    for title, table in (
        ("success vs inference delay d", figures["success_vs_delay"]),
        (f"success vs execution horizon s at d={figures['success_vs_horizon']['delay']}",
         figures["success_vs_horizon"]["horizons"]),
    ):  # fmt: skip
        if not table:
            continue
        xs = sorted({int(x) for row in table.values() for x in row})
        key = "d" if "delay d" in title else "s"
        log.info("%s (episodes per point: %s)", title, figures["episodes"])
        log.info("%-12s %s", "executor", " ".join(f"{f'{key}={x}':>6}" for x in xs))
        for name, row in table.items():
            cells = [f"{row[str(x)]['success']:6.2f}" if str(x) in row else f"{'-':>6}" for x in xs]
            log.info("%-12s %s", name, " ".join(cells))
    if seams:
        log.info("seams at d=%s: %-12s %10s %14s", figures["seams"]["delay"], "executor",
                 "seam ratio", "jerk (units/s^3)")  # fmt: skip
        for name, m in seams.items():
            ratio, jerk = m["seam_ratio"], m["mean_jerk"]
            log.info("%-12s %10s %14s", name, "-" if ratio is None else f"{ratio:.2f}",
                     "-" if jerk is None else f"{jerk:.1f}")  # fmt: skip
    for s in figures["skipped"]:
        log.info("skipped %s %s: %s", s["executor"], _where(s), s["reason"])


def _where(skip: dict) -> str:
    if "horizon" in skip:
        return f"(d={skip['delay']}, s={skip['horizon'] if skip['horizon'] is not None else '*'})"
    return f"(d={skip['delay']})" if "delay" in skip else "(all)"


def _chunk_length(client: LocalPolicyClient) -> int:
    return client.policy.info.chunk_length


def _environment() -> dict:
    """Machine, package versions and the code's git commit, for the record."""
    import torch

    versions = {}
    for package in VERSIONS:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    try:
        git = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        commit = git.stdout.strip() or None
        commit = commit and commit + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
        },
        "versions": versions,
        "git_commit": commit,
    }


if __name__ == "__main__":  # a worker of a sweep with jobs > 1 (see _run_in_workers)
    _work(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
