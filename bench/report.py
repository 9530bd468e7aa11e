"""Render docs/results.md from the JSON that ``bench/run_all.sh`` leaves in outputs/report/.

Reads ``<name>.json`` (one bench's JSON line) for every bench in BENCHES, ``commands.tsv``
(name TAB command, what was run) and ``skipped.tsv`` (name TAB reason), and the evaluation
sweep's ``sweep/sweep.json`` and plots, whose PNGs it copies, shrunk, into docs/figures/.
Anything missing is reported as not run, with the reason when one was recorded; a JSON
whose shape this file does not know is shown as it is. Never imports torch, so it is quick.

    uv run python bench/report.py [--results outputs/report] [--output docs/results.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SWEEP_FIGURES = ("success_vs_delay.png", "horizon.png", "seams.png")
FIGURE_DPI = 90  # sweep plots are rescaled to this resolution when copied to docs/figures
MAX_FIGURE_WIDTH = 800  # and to at most this many pixels wide
PACKAGES = ("torch", "mujoco", "lerobot", "numpy", "pyzmq", "msgpack", "grpcio", "protobuf")


# ---- formatting -----------------------------------------------------------------------------


def fmt(value: object) -> str:
    """A table cell: None as '-', floats to 3 significant digits (at least the integer part)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0 or abs(value) >= 100:
            return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.0f}"
        if abs(value) < 1e-3:
            return f"{value:.2g}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    return str(value)


def table(header: list[str], rows: list[list[object]]) -> str:
    """A markdown table; raises ValueError for no rows (the JSON lacked what was looked for)."""
    if not rows:
        raise ValueError("no rows")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def flatten(data: dict, prefix: str = "") -> list[list[object]]:
    """Nested JSON as (dotted key, value) rows."""
    rows: list[list[object]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += flatten(value, f"{name}.")
        else:
            rows.append([name, json.dumps(value) if isinstance(value, list) else value])
    return rows


def key_values(data: dict) -> str:
    rows = flatten({k: v for k, v in data.items() if k != "bench"})
    return table(["figure", "value"], rows) if rows else "(no figures)"


# ---- one renderer per bench -----------------------------------------------------------------


def sim_speed(d: dict) -> str:
    rows = [
        ["physics steps/s (mj_step)", d["physics_steps_per_s"]],
        [f"control ticks/s (n_substeps {d['n_substeps']}, no rendering)", d["control_ticks_per_s"]],
    ]
    rows += [[f"render frames/s, {cam} camera", fps] for cam, fps in d["render_fps"].items()]
    recording = "recording frames/s (demonstrator + 2 cameras + dataset writing)"
    rows.append([recording, d["recording_frames_per_s"]])
    note = (
        f"Task `{d['task']}`, {d['image_size']}x{d['image_size']} images, GL `{d['gl_backend']}`."
    )
    return note + "\n\n" + table(["measure", "value"], rows)


def policy_speed(d: dict) -> str:
    rows = []
    for device in ("cpu", "cuda"):
        if f"chunk_latency_{device}" in d:
            latency = d[f"chunk_latency_{device}"]
            rows.append(
                [
                    device,
                    latency["p50_ms"],
                    latency["p99_ms"],
                    d.get(f"train_samples_per_s_{device}"),
                ]
            )
    note = (
        f"Default VLA, {fmt(d['parameters'])} parameters, randomly initialised; chunk = prefix "
        f"once + 10 Euler steps of the action expert, batch 1; torch {d['torch']}, "
        f"{d['threads']} threads."
    )
    header = ["device", "chunk p50 ms", "chunk p99 ms", "training samples/s"]
    return note + "\n\n" + table(header, rows)


def transport(d: dict) -> str:
    rows = [
        ["PolicyServer (decode, validate, encode, ZMQ)", d["server_p50_ms"], d["server_p99_ms"]],
        ["raw ZMQ echo of the same bytes", d["raw_p50_ms"], d["raw_p99_ms"]],
    ]
    note = (
        f"Observation request of {fmt(d['request_bytes'])} bytes (two 96x96 cameras + state), "
        f"(50, 6) chunk reply of {fmt(d['reply_bytes'])} bytes, tcp loopback, "
        f"{fmt(d['round_trips'])} round trips each. Server over raw, p50: "
        f"**{fmt(d['ratio_p50'])}x**; encode + decode of the request alone: "
        f"{fmt(d['request_encode_decode_p50_ms'])} ms."
    )
    return note + "\n\n" + table(["path", "round trip p50 ms", "p99 ms"], rows)


def jitter(d: dict) -> str:
    rows = []
    for rate, loops in d.items():
        if rate.endswith("hz") and isinstance(loops, dict):
            for loop, s in loops.items():
                rows.append([rate[:-2], loop, s["p50_ms"], s["p99_ms"], s["max_ms"], s["missed"]])
    header = ["Hz", "pacing", "p50 ms", "p99 ms", "max ms", "missed ticks"]
    note = (
        f"How far each tick starts from its schedule, {fmt(d['seconds_per_loop'])} s per loop. "
        "`controller` is the full control loop; the others are bare loops paced by `WallClock`, by "
        "`time.sleep` to each deadline, and by `time.sleep(1/hz)`."
    )
    return note + "\n\n" + table(header, rows)


def rtc_overhead(d: dict) -> str:
    rows = []
    for model in ("synthetic", "vla"):
        if model in d:
            m = d[model]
            for ex in ("naive", "rtc", "rtc_trained"):
                ratio = 1.0 if ex == "naive" else m.get(f"{ex}_over_plain_p50")
                rows.append([model, ex, m[f"{ex}_p50_ms"], m[f"{ex}_p99_ms"], ratio])
    note = (
        f"One request, {d['num_steps']} Euler steps, {d['torch_threads']} torch thread(s). `rtc`"
        " backpropagates through the velocity network at every step; `rtc_trained` does not."
    )
    header = ["model", "sampler", "p50 ms", "p99 ms", "p50 / plain"]
    return note + "\n\n" + table(header, rows)


def throughput(d: dict) -> str:
    rows = [
        [
            r["robots"],
            r["chunks_per_s"],
            r["latency_p50_ms"],
            r["latency_p99_ms"],
            r["mean_batch_size"],
            r["throughput_ratio"],
        ]
        for r in d["robots"]
    ]
    window = (
        f"{fmt(d['seconds_per_count'])} s"
        if d.get("seconds_per_count")
        else f"{d.get('requests_per_robot')} requests per robot"
    )
    note = (
        f"Model `{d['model_id']}` ({d['num_steps']} Euler steps, {d['torch_threads']} torch "
        f"thread(s)) on one `PolicyServer` (max_batch {d['max_batch']}, batch window "
        f"{fmt(d['batch_window_ms'])} ms); each robot is a process sending requests back to "
        f"back, {window} per robot count."
    )
    header = ["robots", "chunks/s (all)", "latency p50 ms", "p99 ms", "mean batch", "x 1 robot"]
    return note + "\n\n" + table(header, rows)


def incumbents(d: dict) -> str:
    parts = [f"Against lerobot {d['lerobot']}, in the same process."]
    t = d["transport"]
    parts.append("**Transport** (observation -> (50, 6) chunk, trivial model on both sides):")
    if "skipped" in t:
        parts.append(f"not run: {t['skipped']}")
    else:
        rows = [
            [
                name,
                t[name]["p50_ms"],
                t[name]["p99_ms"],
                t[name]["request_bytes"],
                t[name]["reply_bytes"],
                t[name]["codec_p50_ms"],
            ]
            for name in ("lerobot", "rtvla")
        ]
        header = ["stack", "round trip p50 ms", "p99 ms", "request B", "reply B", "codec p50 ms"]
        parts.append(table(header, rows))
        parts.append(
            f"LeRobot over rtvla: p50 **{fmt(t['lerobot_over_rtvla_p50'])}x**, p99 "
            f"{fmt(t['lerobot_over_rtvla_p99'])}x ({t['round_trips']} round trips each; LeRobot "
            "needs two RPCs per chunk, SendObservations then GetActions). "
            + (t["setup"].rstrip(".") + "." if t.get("setup") else "")
        )
    p = d["pickle"]
    where = "; ".join(f"`{m}`: {', '.join(fs)}" for m, fs in p["lerobot_pickle_loads_in"].items())
    parts.append(
        f"**Unpickling network bytes**: LeRobot {fmt(p['lerobot_unpickles_network_bytes'])}"
        + (f" ({where}): {p['lerobot_note']}." if where else ".")
        + f" rtvla {fmt(p['rtvla_unpickles_network_bytes'])}: {p['rtvla_note']}."
    )
    r = d["rtc"]
    parts.append(
        f"**RTC guidance correction** on {r['field']}, H={r['H']}, d={r['d']}, s={r['s']}, "
        f"{r['schedule']} mask, against an explicit autograd VJP: rtvla carries the Jacobian: "
        f"**{fmt(r['rtvla_carries_jacobian'])}**"
        + (
            f"; LeRobot: not compared ({r['lerobot']['skipped']})."
            if "lerobot" in r
            else f"; LeRobot carries it: **{fmt(r['lerobot_carries_jacobian'])}** "
            f"({r['lerobot_note']})."
        )
    )
    rows = [
        [
            x["tau"],
            x["reference_max_abs"],
            x["rtvla_max_abs_diff"],
            x.get("lerobot_max_abs_diff"),
            x["identity_jacobian_max_abs_diff"],
            x.get("lerobot_minus_identity_max_abs"),
        ]
        for x in r["per_tau"]
    ]
    parts.append(
        "Max abs differences of each correction (before the guidance weight) to the reference; "
        "`identity` is W (Y - A1_hat), the correction if the network's Jacobian were ignored."
    )
    header = ["tau", "max abs reference", "rtvla", "LeRobot", "identity", "LeRobot - identity"]
    parts.append(table(header, rows))
    return "\n\n".join(parts)


def hostile(d: dict) -> str:
    q, f, rss = d["quiet"], d["flood"], d["server_rss_mb"]
    rows = [
        ["quiet", q["requests"], q["answered"], q["p50_ms"], q["p99_ms"]],
        ["during the flood", f["requests"], f["answered"], f["p50_ms"], f["p99_ms"]],
    ]
    nice = f", at nice {d['flood_nice']}" if d.get("flood_nice") else ""
    if isinstance(d.get("flood_cpus"), list):
        nice += (
            f", on CPU(s) {d['flood_cpus']} of its own (the server and robot on "
            f"{d['server_robot_cpus']}: an attacker on another machine)"
        )
    elif d.get("flood_cpus") == "shared":
        nice += ", sharing every CPU with the server and the robot"
    if d.get("cpu_hog_processes"):
        who = (
            f"the control for the flood: no message, {d['cpu_hog_processes']} busy processes "
            f"sharing every CPU with the server and the robot, in {d['blocks']} blocks "
            f"alternating with quiet ones ({fmt(d['flood_s'])} s of load in all)"
        )
    else:
        who = (
            f"{fmt(d['hostile_messages'])} hostile messages ({', '.join(d['hostile_kinds'])}) "
            f"from {d['senders']} DEALER sockets in a third process{nice}, sent as fast as they "
            f"go, in {d['blocks']} blocks alternating with quiet ones ({fmt(d['flood_s'])} s of "
            "flood in all)"
        )
    replies = (
        ""
        if d.get("cpu_hog_processes")
        else f"; error replies read by the senders that read them: {fmt(d['hostile_replies_read'])}"
    )
    cpu = d.get("cpu_s_during_flood")
    used = (
        f" CPU seconds used meanwhile: the server {fmt(cpu['server'])}, the "
        f"{'busy processes' if d.get('cpu_hog_processes') else 'flooding process'} "
        f"{fmt(cpu['flooder'])}."
        if isinstance(cpu, dict)
        else ""
    )
    repeats = d.get("repeats", 1)
    if repeats > 1:
        who += (
            f", the whole schedule run {repeats} times and the round trips pooled (each "
            f"repeat's ratio: {', '.join(fmt(r) for r in d['p99_ratio_per_repeat'])})"
        )
    ci = d.get("p99_ratio_ci95")
    interval = f" (bootstrap 95 % interval {fmt(ci[0])}-{fmt(ci[1])})" if ci else ""
    note = (
        f"{who[0].upper()}{who[1:]}; the robot asks for a chunk at {fmt(d['robot_hz'])} Hz "
        f"(two 96x96 cameras, one outstanding) from a synthetic flow policy served with "
        f"{d['torch_threads']} torch thread(s); message limit {fmt(d['max_message_bytes'])} "
        "bytes on both ends. Answered "
        f"during the flood: **{fmt(100 * d['answered_during_flood'])} %**; p99 flood / quiet: "
        f"**{fmt(d['p99_ratio'])}**{interval}; server RSS before {fmt(rss['before'])} MB, peak "
        f"{fmt(rss['peak'])} MB, after {fmt(rss['after'])} MB{replies}.{used}"
    )
    header = ["robot", "requests", "answered", "round trip p50 ms", "p99 ms"]
    return note + "\n\n" + table(header, rows)


def kill_record(d: dict) -> str:
    moments = {
        "mid_first_episode": "in the first episode",
        "between_episodes": "as episode 2 reached the disk",
        "finalising": "while merging",
    }
    rows = [
        [moments.get(t["moment"], t["moment"]), t["episodes_kept_after_kill"],
         "yes" if t["dataset_complete_after_kill"] else "no", t["rerun_exit"],
         t["rerun_recorded"], t["final_episodes"]]
        for t in d["trials"]
    ]  # fmt: skip
    note = (
        f"`rtvla record task={d['task']} render=false episodes={d['episodes']}` killed with "
        "SIGKILL at three moments, then the same command run again. At most one episode "
        "(the one in progress) lost at every moment: "
        f"**{'yes' if d['at_most_one_episode_lost_per_kill'] else 'no'}**."
    )
    header = ["killed", "finished episodes kept", "dataset complete", "rerun exit",
              "rerun recorded", "episodes in the end"]  # fmt: skip
    return note + "\n\n" + table(header, rows)


# name -> (section title, renderer of its JSON)
BENCHES: dict[str, tuple[str, Callable[[dict], str]]] = {
    "sim_speed": ("Simulator speed", sim_speed),
    "policy_speed": ("Policy speed", policy_speed),
    "transport": ("Transport: policy server vs raw ZMQ", transport),
    "jitter": ("Control loop tick jitter", jitter),
    "rtc_overhead": ("RTC sampling overhead", rtc_overhead),
    "throughput": ("Server throughput with several robots", throughput),
    "hostile": ("A served robot under a flood of hostile messages", hostile),
    "hostile_remote": (
        "A served robot under a flood of hostile messages, the attacker on its own CPU",
        hostile,
    ),
    "hostile_hog": (
        "The same robot beside busy processes and no message (the flood's control)",
        hostile,
    ),
    "kill_record": ("kill -9 of a recording", kill_record),
    "incumbents": ("Against LeRobot's async inference and RTC", incumbents),
}


# ---- the evaluation sweep -------------------------------------------------------------------


def success_table(success: dict, axis: str) -> str:
    """executor -> x -> {success, ci95, episodes} as one row per executor, one column per x."""
    xs = sorted({str(k) for per in success.values() for k in per}, key=_numeric)
    rows = []
    for executor, per in success.items():
        by_x = {str(k): v for k, v in per.items()}
        rows.append([executor, *(_success_cell(by_x.get(x)) for x in xs)])
    return table([f"executor \\ {axis}", *xs], rows)


def _success_cell(cell: object) -> str:
    if not isinstance(cell, dict):
        return fmt(cell)
    text = fmt(cell.get("success"))
    ci = cell.get("ci95")
    if isinstance(ci, list | tuple) and len(ci) == 2:
        text += f" [{fmt(ci[0])}, {fmt(ci[1])}]"
    elif isinstance(ci, int | float):
        text += f" ± {fmt(ci)}"
    if cell.get("episodes") is not None:
        text += f" (n={cell['episodes']})"
    return text


def _numeric(key: str) -> tuple[float, str]:
    try:
        return float(key), key
    except ValueError:
        return float("inf"), key


def seams_table(seams: dict) -> str:
    """executor -> {metric: value} as one row per executor."""
    metrics = list(dict.fromkeys(m for per in seams.values() for m in per))
    rows = [[executor, *(per.get(m) for m in metrics)] for executor, per in seams.items()]
    return table(["executor", *metrics], rows)


def sweep_tables(sweep: dict) -> list[str]:
    """The success-vs-delay, success-vs-horizon and seam tables of sweep.json."""
    parts = []
    by_delay = sweep.get("success_vs_delay", sweep.get("success"))
    if isinstance(by_delay, dict) and by_delay:
        parts.append(
            "Success rate [95 % Wilson interval] (episodes) vs simulated inference delay d:\n\n"
            + success_table(by_delay, "delay d (ticks)")
        )
    by_horizon = sweep.get("success_vs_horizon")
    if isinstance(by_horizon, dict) and by_horizon.get("horizons"):
        parts.append(
            f"Success rate vs execution horizon s at d = {by_horizon.get('delay')}:\n\n"
            + success_table(by_horizon["horizons"], "horizon s (ticks)")
        )
    seams = sweep.get("seams")
    if isinstance(seams, dict) and "executors" in seams:
        seams, where = seams["executors"], f" at d = {seams.get('delay')}"
    else:
        where = ""
    if isinstance(seams, dict) and seams:
        parts.append(
            f"Seams between chunks{where} (joint change at a seam over within-chunk "
            f"changes; jerk in action units/s^3):\n\n" + seams_table(seams)
        )
    if isinstance(by_delay, dict) and by_delay:
        rows = [[executor, f"{d}", cell.get("chunk_ms_p50"), cell.get("chunk_ms_p99")]
                for executor, cells in by_delay.items() for d, cell in cells.items()
                if cell.get("chunk_ms_p50") is not None]  # fmt: skip
        if rows:
            parts.append(
                "Chunk inference time per executor (ms; the simulated delay does not change "
                "it):\n\n" + table(["executor", "delay d", "p50 ms", "p99 ms"], rows)
            )
    skipped = sweep.get("skipped")
    if isinstance(skipped, list) and skipped:
        parts.append("Points skipped:\n\n" + "\n".join(f"- {_skip(s)}" for s in skipped))
    return parts


def _skip(point: object) -> str:
    if not isinstance(point, dict):
        return str(point)
    where = ", ".join(f"{k} {point[k]}" for k in ("delay", "horizon") if point.get(k) is not None)
    where = f" ({where})" if where else ""
    return f"{point.get('executor', '?')}{where}: {point.get('reason', '')}"


SWEEP_SCALARS = ("task", "server", "episodes", "quick", "interrupted", "wall_s", "git_commit")


def sweep_section(sweep: dict | None, figures: list[str], reason: str | None) -> str:
    """The sweep's tables, then its figures (paths relative to the page)."""
    if sweep is None:
        return f"Not run: {reason or 'no sweep.json'}."
    scalars = {k: sweep[k] for k in SWEEP_SCALARS if k in sweep}
    parts = [", ".join(f"{k}: `{v}`" for k, v in scalars.items())] if scalars else []
    try:
        tables = sweep_tables(sweep)
    except (AttributeError, KeyError, TypeError, ValueError):
        tables = []
    shown = json.dumps(sweep, indent=1)[:4000]
    parts += tables or [
        f"(in a shape this report does not know; as recorded)\n\n```json\n{shown}\n```"
    ]
    parts += [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n\n".join(parts)


def copy_figures(sweep_dir: Path, figures_dir: Path) -> list[str]:
    """Copy the sweep's PNGs, shrunk, and drop those of an older sweep that this one lacks;
    returns the names copied."""
    copied = []
    for name in SWEEP_FIGURES:
        source, target = sweep_dir / name, figures_dir / name
        if not source.is_file():
            target.unlink(missing_ok=True)
            continue
        figures_dir.mkdir(parents=True, exist_ok=True)
        try:
            shrink(source, target)
        except (ImportError, OSError):
            shutil.copyfile(source, target)
        copied.append(name)
    return copied


def shrink(source: Path, target: Path) -> None:
    """Rescale a plot to FIGURE_DPI (and at most MAX_FIGURE_WIDTH pixels wide) and store it
    with a 128-colour palette: a few tens of kB for the repository."""
    from PIL import Image

    with Image.open(source) as image:
        dpi = image.info.get("dpi", (FIGURE_DPI, FIGURE_DPI))[0] or FIGURE_DPI
        scale = min(1.0, FIGURE_DPI / dpi, MAX_FIGURE_WIDTH / image.width)
        size = (round(image.width * scale), round(image.height * scale))
        small = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    small.quantize(colors=128).save(target, optimize=True, dpi=(FIGURE_DPI, FIGURE_DPI))


# ---- machine and versions -------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = "none"
    if shutil.which("nvidia-smi"):
        run = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
        gpu = "; ".join(run.stdout.strip().splitlines()) or "none"
    return {
        "CPU": cpu,
        "cores available": str(len(os.sched_getaffinity(0))),
        "GPU": gpu,
        "OS": f"{platform.system()} {platform.release()}",
    }


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True)
    if commit.returncode == 0:
        changes = " (with uncommitted changes)" if dirty.stdout.strip() else ""
        found["rtvla commit"] = commit.stdout.strip() + changes
    return found


# ---- the page -------------------------------------------------------------------------------


def read_tsv(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    pairs = (line.split("\t", 1) for line in path.read_text().splitlines() if "\t" in line)
    return dict(pairs)


def read_json(path: Path) -> dict | None:
    """A JSON object file, or the last line of a log ending in one; None if neither."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    for candidate in (text, text.splitlines()[-1] if text else ""):
        try:
            data = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(data, dict):
            return data
    return None


def render(
    results: Path,
    figures: list[str],
    machine_info: dict[str, str],
    version_info: dict[str, str],
    quick: bool,
    date: str,
) -> str:
    """The whole results page from the files under ``results``."""
    commands, skipped = read_tsv(results / "commands.tsv"), read_tsv(results / "skipped.tsv")
    load = read_tsv(results / "load.tsv")
    if load:
        when = "; ".join(f"{k}: {v}" for k, v in load.items())
        machine_info = {**machine_info, "load average (1, 5, 15 min)": when}
    mode = "a quick run: few iterations and episodes, rough figures" if quick else "a full run"
    out = [
        "# Results",
        f"Generated on {date} by `bench/run_all.sh`, {mode}; rendered by `bench/report.py` "
        "from the JSON in `outputs/report/`. Regenerate with `bench/run_all.sh` "
        "(`QUICK=1 bench/run_all.sh` for a run of a few minutes; `CHECKPOINT=DIR` picks the "
        "policy the sweep evaluates).",
        "## Machine and versions",
        table(["", "value"], [[k, v] for k, v in {**machine_info, **version_info}.items()]),
        "## Commands",
        "```bash\n" + ("\n".join(commands.values()) or "# none recorded") + "\n```",
    ]
    for name, (title, renderer) in BENCHES.items():
        out.append(f"## {title}")
        data = read_json(results / f"{name}.json")
        if data is None:
            out.append(f"Not run: {skipped.get(name, 'no result')}.")
            continue
        try:
            out.append(renderer(data))
        except (KeyError, TypeError, ValueError, AttributeError):
            out.append("(in a shape this report does not know; as recorded)\n\n" + key_values(data))
        if name in commands:
            out.append(f"`{commands[name]}`")
    out.append("## Evaluation sweep: success vs delay, seams")
    sweep = read_json(results / "sweep" / "sweep.json")
    out.append(sweep_section(sweep, figures, skipped.get("sweep")))
    return "\n\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "outputs" / "report")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--figures", type=Path, default=None, help="default: figures/ beside it")
    parser.add_argument(
        "--quick", action="store_true", help="say the figures come from a quick run"
    )
    args = parser.parse_args(argv)
    figures_dir = args.figures or args.output.parent / "figures"
    relative = Path(os.path.relpath(figures_dir, args.output.parent))
    copied = [str(relative / name) for name in copy_figures(args.results / "sweep", figures_dir)]
    ran = args.results / "commands.tsv"  # its last change: the last bench started
    stamp = ran.stat().st_mtime if ran.is_file() else datetime.datetime.now().timestamp()
    date = datetime.datetime.fromtimestamp(stamp).astimezone().strftime("%Y-%m-%d %H:%M %Z")
    page = render(args.results, copied, machine(), versions(), args.quick, date)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(page)


if __name__ == "__main__":
    main()
