"""A served robot while hostile messages flood its policy server; prints one JSON line.

The server (``PolicyServer`` with the synthetic flow policy, ``num_steps`` Euler steps) runs in
its own process, so its memory is its own: RSS is read from ``/proc/<pid>/status`` before the
flood, at its peak (``VmHWM``) and after. In this process a robot sends a request like a real
one (two 96x96 cameras, a (6,) state) every tick at ``--hz``, first alone (quiet), then while
``--senders`` DEALER sockets (threads of a third process) send ``--messages`` hostile messages
between them, every class of
``runtime.wire.hostile`` in turn (random bytes, truncated, wrong types, zero-size arrays of
absurd shape, frames over the message limit together, too many routing frames, a pickle, a
wrong version); half the senders read their error replies, half never do. Reported: the
robot's requests answered with a chunk during the flood, its round-trip p50/p99 quiet and
under flood, the hostile messages answered, the server's RSS.

By default the flooding process shares every CPU with the server and the robot, so on a small
machine the attacker's own CPU use (sending as fast as it can) is part of what the robot
feels; ``--flood-cpus`` gives it CPUs of its own, as an attacker on another machine has.

Both ends use ``--max-message-mb`` as ``Limits.max_message_bytes`` (the oversize class sends
frames of a quarter of it, six of them).

    uv run python bench/hostile.py [--messages 10000] [--hz 30] [--quiet-requests 300]
        [--repeats 5]      # the whole schedule five times, round trips pooled
        [--flood-cpus 1]   # the flooder on CPU 1, server and robot on the rest
        [--cpu-hog 3]      # the control: 3 busy processes instead of the flood, no messages

A p99 of a few hundred round trips rests on its two or three slowest, so one run's ratio
moves a lot from run to run: ``--repeats`` runs the schedule again and pools, and the JSON
gives each repeat's ratio and a bootstrap 95 % interval of the pooled one.

Also reported: the CPU seconds the server and the flooding process used during the flood
phases, so that a slower robot can be told apart from a busier machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from runtime.robot.client import RequestTimeout, ZmqPolicyClient
from runtime.wire.hostile import HOSTILE_KINDS, hostile_message
from runtime.wire.keys import STATE
from runtime.wire.protocol import ChunkReply, Limits, ObservationRequest

ROOT = Path(__file__).resolve().parents[1]


def serve(address_file: str, max_message_bytes: int, num_steps: int, threads: int) -> None:
    """The server process: synthetic flow policy on a free loopback port."""
    import torch

    from runtime.serving.sampling import FlowChunkPolicy
    from runtime.serving.server import PolicyServer, warm_up
    from runtime.serving.synthetic import GaussianChunkModel

    torch.set_num_threads(threads)
    policy = FlowChunkPolicy(GaussianChunkModel(), num_steps=num_steps)
    warm_up(policy)
    limits = Limits(max_message_bytes=max_message_bytes)
    with PolicyServer(policy, "tcp://127.0.0.1:*", limits=limits, log_every_s=None) as server:
        Path(address_file).write_text(server.address)
        server.serve_forever()


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a live process has used (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def robot_request(k: int) -> ObservationRequest:
    rng = np.random.default_rng(k)
    images = {
        f"observation.images.{cam}": rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
        for cam in ("front", "wrist")
    }
    return ObservationRequest(
        request_id=k, robot_id="robot0", tick=k,
        observation={STATE: rng.standard_normal(6).astype(np.float32), **images},
        instruction="pick up the red cube", delay=0, execution_horizon=0, sampling="plain",
    )  # fmt: skip


def robot(client: ZmqPolicyClient, first: int, hz: float, until) -> tuple[list[float], int, int]:
    """Requests every 1/hz s (one outstanding) until ``until()``; (round trips in ms of the
    answered ones, requests sent, chunks received)."""
    period, k, answered, times = 1.0 / hz, first, 0, []
    next_tick = time.perf_counter()
    while not until():
        client.submit(robot_request(k))
        sent = time.perf_counter()
        try:
            reply = client.poll(client.timeout_s)
        except RequestTimeout:
            reply = None
        if isinstance(reply, ChunkReply) and reply.request_id == k:
            answered += 1
            times.append((time.perf_counter() - sent) * 1000)
        k += 1
        next_tick += period
        time.sleep(max(next_tick - time.perf_counter(), 0.0))
    return times, k - first, answered


def flood(
    address: str, index: int, count: int, limits: Limits, replies: list[int], kinds: list[str]
) -> None:
    """``count`` hostile messages from one DEALER; even senders read their replies."""
    rng = np.random.default_rng(index)
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    sock.setsockopt(zmq.SNDHWM, 100)
    sock.connect(address)
    got = 0
    try:
        for k in range(count):
            sock.send_multipart(hostile_message(kinds[k % len(kinds)], rng, limits))
            while index % 2 == 0 and sock.poll(0):
                sock.recv_multipart()
                got += 1
        deadline = time.monotonic() + 2.0
        while index % 2 == 0 and time.monotonic() < deadline and sock.poll(100):
            sock.recv_multipart()
            got += 1
    finally:
        replies[index] = got
        sock.close()
        context.term()


def flood_all(
    address: str,
    messages: int,
    senders: int,
    max_message_bytes: int,
    kinds: list[str],
    cpus: list[int] | None = None,
) -> None:
    """The flooding process (on ``cpus`` if given): ``senders`` threads share out ``messages``;
    prints the number of error replies the reading half received."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    limits = Limits(max_message_bytes=max_message_bytes)
    replies = [0] * senders
    counts = [messages // senders + (i < messages % senders) for i in range(senders)]
    threads = [threading.Thread(target=flood, args=(address, i, n, limits, replies, kinds))
               for i, n in enumerate(counts)]  # fmt: skip
    print("ready", flush=True)
    sys.stdin.readline()  # "go": the robot's flood phase has started
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(sum(replies))


def hog_all(processes: int, seconds: float) -> None:
    """The control for a flood: ``processes`` busy loops of ``seconds`` each and no message, so
    that what the robot feels from CPU contention alone can be told from what the server's
    handling of hostile messages costs it."""
    print("ready", flush=True)
    sys.stdin.readline()
    loop = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"
    hogs = [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(processes)]
    for hog in hogs:
        hog.wait()
    print(0)


def percentiles(times: list[float]) -> dict:
    if not times:
        return {"p50_ms": None, "p99_ms": None}
    return {"p50_ms": round(float(np.percentile(times, 50)), 2),
            "p99_ms": round(float(np.percentile(times, 99)), 2)}  # fmt: skip


def ratio(quiet: list[float], flood: list[float]) -> float | None:
    """p99 under flood over p99 quiet, or None when either phase has no answered request."""
    if not quiet or not flood:
        return None
    return round(float(np.percentile(flood, 99) / np.percentile(quiet, 99)), 2)


def ratio_interval(
    quiet: list[float], flood: list[float], draws: int = 2000, seed: int = 0
) -> list[float] | None:
    """95 % percentile-bootstrap interval of the p99 ratio: both phases resampled with
    replacement, since a p99 of a few hundred round trips rests on its few slowest ones."""
    if len(quiet) < 2 or len(flood) < 2:
        return None
    rng = np.random.default_rng(seed)
    q, f = np.asarray(quiet), np.asarray(flood)
    qs = np.percentile(rng.choice(q, (draws, q.size)), 99, axis=1)
    fs = np.percentile(rng.choice(f, (draws, f.size)), 99, axis=1)
    low, high = np.percentile(fs / qs, [2.5, 97.5])
    return [round(float(low), 2), round(float(high), 2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000, help="hostile messages in all")
    parser.add_argument("--senders", type=int, default=4, help="hostile DEALER sockets")
    parser.add_argument("--hz", type=float, default=30.0, help="the robot's request rate")
    parser.add_argument("--quiet-requests", type=int, default=300, help="requests without it")
    parser.add_argument("--blocks", type=int, default=5, help="alternating quiet/flood blocks")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run the whole schedule (all --messages, all blocks) this many times and pool "
        "the round trips; each repeat's ratio is reported too",
    )
    parser.add_argument("--max-message-mb", type=float, default=1.0, help="Limits, both ends")
    parser.add_argument("--num-steps", type=int, default=4, help="Euler steps per chunk")
    parser.add_argument("--torch-threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument("--flood-nice", type=int, default=0, help="the flooding process's nice")
    parser.add_argument(
        "--flood-cpus",
        default="",
        help="CPUs for the flooding process, e.g. 1; the server and robot get the others "
        "(an attacker on another machine); default: all share every CPU",
    )
    parser.add_argument("--kinds", default=",".join(HOSTILE_KINDS), help="hostile classes")
    parser.add_argument(
        "--cpu-hog",
        type=int,
        default=0,
        help="the control: instead of the flood, N busy processes (no messages) for "
        "--hog-s seconds per block",
    )
    parser.add_argument("--hog-s", type=float, default=1.4, help="each hog block's length")
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    if args.repeats < 1 or args.blocks < 1:
        parser.error(f"--repeats and --blocks must be >= 1, got {args.repeats}, {args.blocks}")
    flood_cpus = sorted({int(c) for c in args.flood_cpus.split(",") if c.strip()})
    own_cpus = sorted(os.sched_getaffinity(0) - set(flood_cpus))
    if flood_cpus and (not own_cpus or not set(flood_cpus) <= os.sched_getaffinity(0)):
        parser.error(
            f"--flood-cpus {args.flood_cpus}: pick CPUs among {sorted(os.sched_getaffinity(0))} "
            "and leave at least one for the server and robot"
        )
    if flood_cpus:
        os.sched_setaffinity(0, own_cpus)  # the server process inherits it
    limits = Limits(max_message_bytes=int(args.max_message_mb * 2**20))

    address_file = Path(f"/tmp/hostile_bench_{os.getpid()}.addr")
    code = (f"from bench.hostile import serve; serve({str(address_file)!r}, "
            f"{limits.max_message_bytes}, {args.num_steps}, {args.torch_threads})")  # fmt: skip
    server = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    try:
        deadline = time.monotonic() + 300
        while not address_file.exists() or not address_file.read_text():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server process did not start")
            time.sleep(0.1)
        address = address_file.read_text()
        client = ZmqPolicyClient(address, timeout_s=2.0, limits=limits)
        client.metadata(60.0)

        rss_before = rss_mb(server.pid)
        quiet_times, flood_times = [], []
        quiet_sent = quiet_answered = flood_sent = flood_answered = replies = 0
        flood_s = server_flood_cpu = flooder_cpu = 0.0
        per_block = args.quiet_requests // args.blocks
        per_repeat: list[tuple[list[float], list[float]]] = []
        for block in range(args.blocks * args.repeats):  # alternate: load hits both alike
            if block % args.blocks == 0:
                per_repeat.append(([], []))
            left = iter(range(per_block + 1))
            times, sent, answered = robot(
                client, 2 * block * 10**6, args.hz, lambda left=left: next(left) >= per_block
            )
            quiet_times += times
            per_repeat[-1][0].extend(times)
            quiet_sent, quiet_answered = quiet_sent + sent, quiet_answered + answered
            b = block % args.blocks
            count = args.messages // args.blocks + (b < args.messages % args.blocks)
            code = (f"from bench.hostile import flood_all; flood_all({address!r}, {count}, "
                    f"{args.senders}, {limits.max_message_bytes}, {kinds!r}, "
                    f"{flood_cpus!r})")  # fmt: skip
            if args.cpu_hog:
                code = f"from bench.hostile import hog_all; hog_all({args.cpu_hog}, {args.hog_s})"
            nice = ["nice", "-n", str(args.flood_nice)] if args.flood_nice else []
            flooder = subprocess.Popen([*nice, sys.executable, "-c", code], cwd=ROOT,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
            assert flooder.stdout.readline().strip() == b"ready"
            started, server_cpu = time.perf_counter(), cpu_s(server.pid)
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            flooder.stdin.write(b"go\n")
            flooder.stdin.flush()
            times, sent, answered = robot(
                client, (2 * block + 1) * 10**6, args.hz, lambda f=flooder: f.poll() is not None
            )
            flood_s += time.perf_counter() - started
            server_flood_cpu += cpu_s(server.pid) - server_cpu
            flood_times += times
            per_repeat[-1][1].extend(times)
            flood_sent, flood_answered = flood_sent + sent, flood_answered + answered
            replies += int(flooder.communicate()[0].decode().strip() or 0)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            flooder_cpu += (after.ru_utime - children.ru_utime) + (
                after.ru_stime - children.ru_stime
            )
        time.sleep(1.0)
        rss_after, rss_peak = rss_mb(server.pid), rss_mb(server.pid, "VmHWM")
        client.close()
    finally:
        server.terminate()
        server.wait(30)
        address_file.unlink(missing_ok=True)

    quiet, flooded = percentiles(quiet_times), percentiles(flood_times)
    print(json.dumps({
        "hostile_messages": 0 if args.cpu_hog else args.messages,
        "hostile_kinds": [] if args.cpu_hog else kinds, "cpu_hog_processes": args.cpu_hog,
        "senders": args.senders, "blocks": args.blocks, "flood_nice": args.flood_nice,
        "flood_cpus": flood_cpus or "shared", "server_robot_cpus": own_cpus if flood_cpus
        else "shared",
        "torch_threads": args.torch_threads, "flood_s": round(flood_s, 2),
        "cpu_s_during_flood": {"server": round(server_flood_cpu, 2),
                               "flooder": round(flooder_cpu, 2)},
        "hostile_replies_read": replies, "max_message_bytes": limits.max_message_bytes,
        "robot_hz": args.hz,
        "quiet": {"requests": quiet_sent, "answered": quiet_answered, **quiet},
        "flood": {"requests": flood_sent, "answered": flood_answered, **flooded},
        "answered_during_flood": round(flood_answered / max(flood_sent, 1), 4),
        "p99_ratio": round(flooded["p99_ms"] / quiet["p99_ms"], 2)
        if flooded["p99_ms"] and quiet["p99_ms"] else None,
        "repeats": args.repeats,
        "p99_ratio_ci95": ratio_interval(quiet_times, flood_times),
        "p99_ratio_per_repeat": [ratio(q, f) for q, f in per_repeat],
        "server_rss_mb": {"before": round(rss_before, 1), "peak": round(rss_peak, 1),
                          "after": round(rss_after, 1)},
        "server_rss_growth_mb": round(rss_after - rss_before, 1),
        "server_peak_over_before_mb": round(rss_peak - rss_before, 1),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
