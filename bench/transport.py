"""Transport cost of the policy server over tcp loopback; prints one JSON line.

A request like a real robot's (two 96x96 uint8 cameras and a (6,) state) goes to a
``PolicyServer`` serving a constant (50, 6) chunk, so only decoding, validation, encoding
and the ZMQ hops are measured, against a raw ZMQ ROUTER that echoes the same reply bytes
without looking at the request. Both run in this process, in alternating blocks so that
load from other processes hits both alike. ``ratio_p50`` = server p50 / raw p50.

    uv run python bench/transport.py [--round-trips 2000]
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np
import zmq

from runtime.robot.testing import ConstantPolicy
from runtime.serving.server import PolicyServer
from runtime.wire.keys import STATE
from runtime.wire.protocol import ChunkReply, ObservationRequest, decode, encode

H, A = 50, 6
BLOCK = 100  # round trips per alternating block


def request() -> ObservationRequest:
    rng = np.random.default_rng(0)
    images = {
        f"observation.images.{cam}": rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
        for cam in ("front", "wrist")
    }
    return ObservationRequest(
        request_id=1,
        robot_id="robot0",
        tick=0,
        observation={**images, STATE: rng.standard_normal(A).astype(np.float32)},
        instruction="pick up the red cube and place it in the bin",
        delay=3,
        execution_horizon=10,
        sampling="plain",
    )


def echo(address: str, reply: bytes, stop: threading.Event, ready: threading.Event) -> None:
    """A raw ROUTER answering every message with the same reply bytes."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    sock.bind(address)
    ready.set()
    while not stop.is_set():
        if sock.poll(100):
            identity, _ = sock.recv_multipart()
            sock.send_multipart([identity, reply])
    sock.close()
    ctx.term()


def round_trips(sock: zmq.Socket, payload: bytes, n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        sock.send(payload)
        sock.recv()
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=2000)
    args = parser.parse_args()

    msg = request()
    payload = encode(msg)
    zeros = np.zeros((H, A), np.float32)
    reply = encode(
        ChunkReply(request_id=1, tick=0, actions=zeros, server_time_ms=0.01, model_id="constant")
    )
    stop, ready = threading.Event(), threading.Event()
    raw_address = "tcp://127.0.0.1:5561"
    threading.Thread(target=echo, args=(raw_address, reply, stop, ready), daemon=True).start()
    ready.wait()
    ctx = zmq.Context()
    with PolicyServer(ConstantPolicy(H, A), "tcp://127.0.0.1:*", batch_window_ms=0) as server:
        server.start_in_thread()
        clients = {}
        for name, address in (("server", server.address), ("raw", raw_address)):
            clients[name] = ctx.socket(zmq.DEALER)
            clients[name].linger = 0
            clients[name].connect(address)
            round_trips(clients[name], payload, BLOCK)  # warm up
        times: dict[str, list[float]] = {"server": [], "raw": []}
        for _ in range(max(1, args.round_trips // BLOCK)):
            for name, sock in clients.items():
                times[name] += round_trips(sock, payload, BLOCK)
        for sock in clients.values():
            sock.close()
    stop.set()
    ctx.term()

    codec_ms = []
    for _ in range(200):
        start = time.perf_counter()
        decode(encode(msg))
        codec_ms.append((time.perf_counter() - start) * 1000)

    def pct(name: str, q: float) -> float:
        return round(float(np.percentile(times[name], q)), 4)

    print(
        json.dumps(
            {
                "bench": "transport",
                "round_trips": len(times["server"]),
                "request_bytes": len(payload),
                "reply_bytes": len(reply),
                "server_p50_ms": pct("server", 50),
                "server_p99_ms": pct("server", 99),
                "raw_p50_ms": pct("raw", 50),
                "raw_p99_ms": pct("raw", 99),
                "ratio_p50": round(pct("server", 50) / pct("raw", 50), 3),
                "request_encode_decode_p50_ms": round(float(np.median(codec_ms)), 4),
                "batch_window_ms": 0,
            }
        )
    )


if __name__ == "__main__":
    main()
