"""rtvla against LeRobot 0.6 (the installed one), measured in one process; prints one JSON line.

transport  The same observation -> (50, 6) chunk round trip (two 96x96 uint8 cameras, a (6,)
           state, an instruction) through LeRobot's async inference and through ours, both
           serving zeros from a trivial model so that only transport and serialization are
           timed, in alternating blocks so that load from elsewhere hits both alike.
           LeRobot's side is its own ``PolicyServer`` gRPC servicer (lerobot.async_inference.
           policy_server) with ``_predict_action_chunk`` replaced by zeros, on a gRPC server
           with its thread pool of 4 as its ``serve`` builds it; the robot side does what its
           ``RobotClient`` does: pickle a ``TimedObservation`` (must_go, as when its action
           queue is empty), stream it with ``send_bytes_in_chunks`` to ``SendObservations``,
           call ``GetActions`` and unpickle the ``TimedAction`` list (from a server in this
           same process). Its per-request log lines are silenced, as ours emit none. Ours is
           ``PolicyServer`` + ``ZmqPolicyClient`` (``batch_window_ms`` 0). Needs the ``bench``
           dependency group (grpcio, protobuf); without it this part reports ``skipped``.
pickle     Which functions of LeRobot's async inference call ``pickle.loads`` on bytes read
           from the network (found by parsing its source), and the same check on ours.
rtc        The guidance correction of LeRobot's RTC (``RTCProcessor.denoise_step``) and of
           ours (``policies.rtc.guided_velocity``) for the same x-dependent velocity field
           v(x, tau) = (1 + tau) tanh(W x) + b (W dense, so the Jacobian is not the identity),
           the same x, previous chunk, delay d, horizon s and soft exp mask, against an explicit
           reference: the full Jacobian of A1_hat = x + (1 - tau) v by autograd, then
           (W (Y - A1_hat))^T dA1_hat/dx. LeRobot's time runs the other way (time = 1 - tau,
           its velocity = -ours), which leaves A1_hat and the correction unchanged.

    uv run --group bench python bench/incumbents.py [--round-trips 1000]
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from transport import request  # bench/ is on the path when run as a script

from policies.rtc import align_previous_chunk, guidance_weight, guided_velocity, prefix_weights
from runtime.robot.client import ZmqPolicyClient
from runtime.robot.testing import ConstantPolicy
from runtime.serving.server import PolicyServer
from runtime.wire.protocol import ChunkReply, decode, encode

H, A = 50, 6
BLOCK = 50  # round trips per alternating block
JOINTS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
GROUP_HINT = "uv run --group bench python bench/incumbents.py"


# ---- transport ------------------------------------------------------------------------------


@contextlib.contextmanager
def lerobot_logging_contained() -> Iterator[None]:
    """Importing lerobot's policy server makes ``logs/`` in the working directory and
    replaces the root logger's handlers: do it in a temporary folder, then restore them."""
    root = logging.getLogger()
    handlers, level, cwd = root.handlers[:], root.level, os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            yield
        finally:
            os.chdir(cwd)
            for handler in root.handlers:
                if handler not in handlers:
                    handler.close()
            root.handlers[:] = handlers
            root.setLevel(level)


@dataclass(frozen=True)
class Endpoint:
    """One side of the transport comparison, serving zeros."""

    round_trip: Callable[[int], object]  # observation k -> its chunk, as the robot receives it
    codec: Callable[[], None]  # serialize and parse one request and one reply, no transport
    stop: Callable[[], None]
    request_bytes: int
    reply_bytes: int


def lerobot_endpoint() -> Endpoint:
    """LeRobot's servicer on a gRPC server, and its robot client's side of a round trip."""
    import pickle  # only for LeRobot's own wire format

    import grpc

    with lerobot_logging_contained():
        from lerobot.async_inference.configs import PolicyServerConfig
        from lerobot.async_inference.helpers import TimedObservation
        from lerobot.async_inference.policy_server import PolicyServer as LeRobotServer
        from lerobot.transport import services_pb2, services_pb2_grpc
        from lerobot.transport.utils import grpc_channel_options, send_bytes_in_chunks
    logging.getLogger(LeRobotServer.prefix).setLevel(logging.WARNING)

    class ZerosServer(LeRobotServer):
        """LeRobot's servicer with the policy (and its pre/post-processing) replaced by zeros."""

        def _predict_action_chunk(self, observation_t):
            self.last_processed_obs = observation_t
            zeros = list(torch.zeros(H, A))
            t0, i0 = observation_t.get_timestamp(), observation_t.get_timestep()
            return self._time_action_chunk(t0, zeros, i0)

    servicer = ZerosServer(PolicyServerConfig(host="127.0.0.1", inference_latency=0.0))
    servicer.actions_per_chunk = H
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))  # as its serve() does
    services_pb2_grpc.add_AsyncInferenceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", grpc_channel_options())
    stub = services_pb2_grpc.AsyncInferenceStub(channel)
    stub.Ready(services_pb2.Empty())

    rng = np.random.default_rng(0)
    raw = {f"{j}.pos": float(x) for j, x in zip(JOINTS, rng.standard_normal(A), strict=True)}
    raw |= {cam: rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for cam in ("front", "wrist")}
    raw["task"] = "pick up the red cube and place it in the bin"

    def round_trip(k: int) -> object:
        obs = TimedObservation(timestamp=time.time(), timestep=k, observation=raw, must_go=True)
        chunks = send_bytes_in_chunks(pickle.dumps(obs), services_pb2.Observation, silent=True)
        stub.SendObservations(chunks)
        actions = stub.GetActions(services_pb2.Empty())
        timed_actions = pickle.loads(actions.data)  # nosec: what RobotClient.receive_actions does
        if len(timed_actions) != H:
            raise RuntimeError(f"LeRobot's server sent {len(timed_actions)} actions, not {H}")
        return timed_actions

    def stop() -> None:
        channel.close()
        server.stop(grace=None)

    obs = TimedObservation(timestamp=time.time(), timestep=0, observation=raw, must_go=True)
    reply = pickle.dumps(round_trip(0))

    def codec() -> None:
        pickle.loads(pickle.dumps(obs))
        pickle.loads(reply)

    return Endpoint(round_trip, codec, stop, len(pickle.dumps(obs)), len(reply))


def rtvla_endpoint() -> Endpoint:
    """Our PolicyServer and a ZmqPolicyClient."""
    server = PolicyServer(ConstantPolicy(H, A), "tcp://127.0.0.1:*", batch_window_ms=0)
    server.start_in_thread()
    client = ZmqPolicyClient(server.address, timeout_s=10.0)
    msg = request()

    def round_trip(k: int) -> object:
        client.submit(replace(msg, request_id=k, tick=k))
        while (reply := client.poll(timeout_s=1.0)) is None:
            pass
        if not isinstance(reply, ChunkReply):
            raise RuntimeError(f"our server answered {reply}")
        return reply

    def stop() -> None:
        client.close()
        server.close()

    reply = encode(round_trip(0))

    def codec() -> None:
        decode(encode(msg))
        decode(reply)

    return Endpoint(round_trip, codec, stop, len(encode(msg)), len(reply))


def transport(round_trips: int) -> dict:
    try:
        import grpc  # noqa: F401
        from google import protobuf  # noqa: F401
    except ImportError as e:
        reason = f"{e.name} is not installed (grpcio, protobuf: the bench group): {GROUP_HINT}"
        return {"skipped": reason}
    endpoints = {"lerobot": lerobot_endpoint(), "rtvla": rtvla_endpoint()}
    times: dict[str, list[float]] = {name: [] for name in endpoints}
    codec_ms: dict[str, list[float]] = {name: [] for name in endpoints}
    try:
        for endpoint in endpoints.values():
            for k in range(BLOCK):  # warm up
                endpoint.round_trip(k)
        for block in range(max(1, round_trips // BLOCK)):
            for name, endpoint in endpoints.items():
                for k in range(BLOCK):
                    start = time.perf_counter()
                    endpoint.round_trip(BLOCK * (block + 1) + k)
                    times[name].append((time.perf_counter() - start) * 1000)
                for _ in range(5):
                    start = time.perf_counter()
                    endpoint.codec()
                    codec_ms[name].append((time.perf_counter() - start) * 1000)
    finally:
        for endpoint in endpoints.values():
            endpoint.stop()
    figures: dict = {"round_trips": len(times["rtvla"])}
    for name, endpoint in endpoints.items():
        figures[name] = {
            "p50_ms": round(float(np.percentile(times[name], 50)), 4),
            "p99_ms": round(float(np.percentile(times[name], 99)), 4),
            "request_bytes": endpoint.request_bytes,
            "reply_bytes": endpoint.reply_bytes,
            "codec_p50_ms": round(float(np.median(codec_ms[name])), 4),
        }
    for q in ("p50", "p99"):
        ratio = figures["lerobot"][f"{q}_ms"] / figures["rtvla"][f"{q}_ms"]
        figures[f"lerobot_over_rtvla_{q}"] = round(ratio, 3)
    figures["rpcs_per_round_trip"] = {"lerobot": 2, "rtvla": 1}
    figures["setup"] = (
        "lerobot: its PolicyServer servicer with the model replaced by zeros, gRPC thread pool "
        "of 4, its per-request logging silenced, the client side as RobotClient does it "
        "(pickle, send_bytes_in_chunks, SendObservations, GetActions, unpickle); rtvla: "
        "PolicyServer (batch_window_ms 0) + ZmqPolicyClient; tcp loopback, one process"
    )
    return figures


# ---- pickle ---------------------------------------------------------------------------------


def unpickling_functions(path: Path) -> list[str]:
    """Qualified names of the functions in a source file that call pickle.load(s)."""
    tree = ast.parse(path.read_text())
    found: list[str] = []

    def visit(node: ast.AST, scope: tuple[str, ...]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                visit(child, (*scope, child.name))
                continue
            if (
                isinstance(child, ast.Call)
                and isinstance(child.func, ast.Attribute)
                and child.func.attr in ("loads", "load")
                and isinstance(child.func.value, ast.Name)
                and child.func.value.id == "pickle"
            ):
                found.append(".".join(scope) or "<module>")
            visit(child, scope)

    visit(tree, ())
    return sorted(set(found))


def pickle_audit() -> dict:
    import lerobot

    import runtime

    theirs = Path(lerobot.__file__).parent / "async_inference"
    ours = Path(runtime.__file__).parent
    lerobot_hits = {
        f"lerobot.async_inference.{name}": unpickling_functions(theirs / f"{name}.py")
        for name in ("policy_server", "robot_client")
    }
    ours_hits = {
        f"runtime.{name.replace('/', '.')}": unpickling_functions(ours / f"{name}.py")
        for name in ("wire/protocol", "serving/server", "robot/client")
    }
    unpickles = any(lerobot_hits.values())
    return {
        "lerobot_unpickles_network_bytes": unpickles,
        "lerobot_pickle_loads_in": {k: v for k, v in lerobot_hits.items() if v},
        "lerobot_note": (
            "pickle.loads runs on bytes received over its insecure gRPC channel (the server on "
            "each observation and policy setup, the client on each action chunk): anyone who "
            "can reach the server's port can run code in the server process, and a rogue "
            "server in the robot's"
            if unpickles
            else "no pickle.load(s) call found in its async inference"
        ),
        "rtvla_unpickles_network_bytes": any(ours_hits.values()),
        "rtvla_note": "msgpack with raw array buffers, every field validated; no pickle",
    }


# ---- rtc ------------------------------------------------------------------------------------


def toy_velocity(dim: int, seed: int = 0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """v(x, tau) = (1 + tau) tanh(W x) + b over the flattened chunk, float64."""
    g = torch.Generator().manual_seed(seed)
    W = 1.5 * torch.randn(dim, dim, generator=g, dtype=torch.float64) / dim**0.5
    b = 0.1 * torch.randn(dim, generator=g, dtype=torch.float64)

    def v(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:  # x (B, H, A), tau (B,)
        flat = x.reshape(x.shape[0], -1)  # (B, H * A)
        out = (1.0 + tau.reshape(-1, 1)) * torch.tanh(flat @ W.T) + b
        return out.reshape(x.shape)

    return v


def reference_correction(v, x, tau: float, target, w) -> tuple[torch.Tensor, torch.Tensor]:
    """(W (Y - A1_hat))^T J with J = dA1_hat/dx the full Jacobian; also W (Y - A1_hat)."""
    tau_b = torch.full((1,), tau, dtype=x.dtype)

    def a1_hat(flat: torch.Tensor) -> torch.Tensor:
        z = flat.reshape(x.shape)
        return (z + (1.0 - tau) * v(z, tau_b)).reshape(-1)

    J = torch.autograd.functional.jacobian(a1_hat, x.reshape(-1))  # (HA, HA)
    error = w[:, None] * (target - a1_hat(x.reshape(-1)).reshape(x.shape))  # (1, H, A)
    return (error.reshape(-1) @ J).reshape(x.shape), error


def rtc(d: int = 4, s: int = 10, beta: float = 5.0, taus: tuple[float, ...] = (0.2, 0.5, 0.8)):
    v = toy_velocity(H * A)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, H, A, generator=g, dtype=torch.float64)
    prev = torch.randn(H - s, A, generator=g, dtype=torch.float64)  # the unexecuted actions
    target = align_previous_chunk(prev[None], H)  # (1, H, A)
    w = torch.as_tensor(prefix_weights(d, s, H, "exp"))  # (H,)
    try:
        from lerobot.configs import RTCAttentionSchedule
        from lerobot.policies.rtc.configuration_rtc import RTCConfig
        from lerobot.policies.rtc.modeling_rtc import RTCProcessor
    except Exception as e:  # any import failure is the finding
        lerobot_rtc = None
        reason = f"cannot import lerobot's RTC: {type(e).__name__}: {e}"
    else:
        config = RTCConfig(
            prefix_attention_schedule=RTCAttentionSchedule.EXP,  # its default is LINEAR
            max_guidance_weight=beta,  # its default is 10
            execution_horizon=H - s,  # its "execution_horizon" is where the weights reach 0
            debug=True,  # keeps the correction it computed
        )
        lerobot_rtc = RTCProcessor(config)
    rows = []
    for tau in taus:
        ref, error = reference_correction(v, x, tau, target, w)
        scale = float(ref.abs().max())
        tau_b = torch.full((1,), tau, dtype=torch.float64)
        ours = (guided_velocity(v, x, tau, target, w, beta) - v(x, tau_b)) / guidance_weight(
            tau, beta
        )
        row = {
            "tau": tau,
            "reference_max_abs": round(scale, 6),
            "identity_jacobian_max_abs_diff": float(f"{(error - ref).abs().max():.3g}"),
            "rtvla_max_abs_diff": float(f"{(ours - ref).abs().max():.3g}"),
        }
        if lerobot_rtc is not None:
            lerobot_rtc.reset_tracker()
            time_ = 1.0 - tau  # lerobot: time 1 is noise
            lerobot_rtc.denoise_step(
                x, prev, inference_delay=d, time=time_,
                original_denoise_step_partial=lambda z, t=tau_b: -v(z, t),
                execution_horizon=H - s,
            )  # fmt: skip
            step = lerobot_rtc.get_all_debug_steps()[-1]
            theirs = step.correction.to(ref)
            weights = lerobot_rtc.get_prefix_weights(d, H - s, H).to(w)
            row["lerobot_max_abs_diff"] = float(f"{(theirs - ref).abs().max():.3g}")
            row["lerobot_minus_identity_max_abs"] = float(f"{(theirs - error).abs().max():.3g}")
            row["prefix_weights_max_abs_diff"] = float(f"{(weights - w).abs().max():.3g}")
        rows.append(row)
    tolerance = 1e-6
    result: dict = {
        "field": "v(x, tau) = (1 + tau) tanh(W x) + b, W dense (300 x 300), float64",
        "H": H, "A": A, "d": d, "s": s, "beta": beta, "schedule": "exp",
        "tolerance": tolerance,
        "rtvla_carries_jacobian": all(
            r["rtvla_max_abs_diff"] <= tolerance * max(1.0, r["reference_max_abs"]) for r in rows
        ),
    }  # fmt: skip
    if lerobot_rtc is None:
        result["lerobot"] = {"skipped": reason}
    else:
        result["lerobot_carries_jacobian"] = all(
            r["lerobot_max_abs_diff"] <= tolerance * max(1.0, r["reference_max_abs"]) for r in rows
        )
        result["lerobot_note"] = (
            "RTCProcessor.denoise_step evaluates v_t = f(x_t) before x_t.requires_grad_(True), "
            "so x1_t = x_t - time * v_t has no path through the network: its correction is "
            "W (Y - A1_hat), as if the Jacobian were the identity (lerobot_minus_identity_max_abs)"
        )
    result["per_tau"] = rows
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=1000, help="timed, per transport")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {
        "bench": "incumbents",
        "lerobot": metadata.version("lerobot"),
        "transport": transport(args.round_trips),
        "pickle": pickle_audit(),
        "rtc": rtc(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
