"""Tests for runtime/serving/server.py: round trips over tcp loopback with DEALER clients, batching,
robustness to bad input, metadata, CURVE authentication and clean shutdown."""

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import msgpack
import numpy as np
import pytest
import zmq

from runtime.commands import serve
from runtime.commands.cli import CONFIG_DIR
from runtime.curve import CurveKeys, generate_keypair
from runtime.robot.testing import ConstantPolicy, RecordingPolicy
from runtime.serving.sampling import FlowChunkPolicy
from runtime.serving.server import PolicyServer
from runtime.serving.synthetic import GaussianChunkModel
from runtime.wire.hostile import HOSTILE_KINDS, hostile_message
from runtime.wire.info import LatencyHistogram
from runtime.wire.protocol import (
    STATE,
    ChunkReply,
    ErrorReply,
    EStop,
    Limits,
    Message,
    MetadataReply,
    MetadataRequest,
    ObservationRequest,
    decode,
    encode,
)

H, A = 50, 6
LOOPBACK = "tcp://127.0.0.1:*"
TIMEOUT_MS = 5000  # for replies that must come
SILENCE_MS = 400  # for replies that must not


class TickPolicy(RecordingPolicy):
    """Chunks filled with the request's tick (or ``fill``); robot "faulty" raises, robot "picky"
    refuses. Records every request and the size of every infer call."""

    def __init__(self, fill: float | None = None) -> None:
        super().__init__(ConstantPolicy(H, A, fill=fill))

    def infer(self, requests: list[ObservationRequest]) -> list[np.ndarray]:
        chunks = super().infer(requests)
        robots = {r.robot_id for r in requests}
        if "faulty" in robots:
            raise RuntimeError("the actuator model blew up")
        if "picky" in robots:
            raise ValueError("instruction not understood: rephrase it")
        return chunks


def observation(
    rid: int = 1, robot: str = "arm", sampling: str = "plain", tick: int = 3, state_dim: int = A
) -> ObservationRequest:
    return ObservationRequest(
        request_id=rid,
        robot_id=robot,
        tick=tick,
        observation={STATE: np.zeros(state_dim, np.float32)},
        instruction="pick up the cube",
        delay=0,
        execution_horizon=0,
        sampling=sampling,
    )


@contextmanager
def serving(policy, **kwargs) -> Iterator[PolicyServer]:
    with PolicyServer(policy, LOOPBACK, **kwargs) as server:
        server.start_in_thread()
        yield server


@contextmanager
def dealer(address: str, keys: tuple[bytes, bytes, bytes] | None = None) -> Iterator[zmq.Socket]:
    """A DEALER client; keys = (server public, client public, client secret) for CURVE."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    if keys is not None:
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = keys
    sock.connect(address)
    try:
        yield sock
    finally:
        sock.close()
        ctx.term()


def receive(sock: zmq.Socket, timeout_ms: int = TIMEOUT_MS) -> Message | None:
    if not sock.poll(timeout_ms):
        return None
    return decode(sock.recv())


def ask(sock: zmq.Socket, payload: bytes, timeout_ms: int = TIMEOUT_MS) -> Message | None:
    sock.send(payload)
    return receive(sock, timeout_ms)


@pytest.fixture(scope="module")
def server() -> Iterator[PolicyServer]:
    with serving(FlowChunkPolicy(GaussianChunkModel(), num_steps=2), batch_window_ms=0) as server:
        yield server


def test_round_trip_with_the_synthetic_model(server):
    with dealer(server.address) as client:
        reply = ask(client, encode(observation(rid=7, tick=11)))
    assert isinstance(reply, ChunkReply)
    assert (reply.request_id, reply.tick, reply.model_id) == (7, 11, "synthetic-gaussian")
    assert reply.actions.shape == (H, A) and reply.actions.dtype == np.float32
    assert reply.server_time_ms > 0


def test_requests_from_several_robots_share_one_infer_call():
    policy = TickPolicy()
    with serving(policy, batch_window_ms=300, max_batch=8) as server:
        clients = [dealer(server.address) for _ in range(4)]
        socks = [c.__enter__() for c in clients]
        try:
            for i, sock in enumerate(socks):  # connected before the burst
                assert isinstance(ask(sock, encode(MetadataRequest(request_id=i))), MetadataReply)
            for i, sock in enumerate(socks):
                sock.send(encode(observation(rid=100 + i, robot=f"arm{i}", tick=i)))
            replies = [receive(sock) for sock in socks]
        finally:
            for c in clients:
                c.__exit__(None, None, None)
    assert [r.request_id for r in replies] == [100, 101, 102, 103]
    assert all(np.all(r.actions == i) for i, r in enumerate(replies))
    assert max(policy.batch_sizes) > 1
    assert sum(policy.batch_sizes) == 4


def _wire(msg: Message, **changes) -> bytes:
    fields = msgpack.unpackb(encode(msg), raw=False)
    fields.update(changes)
    return msgpack.packb(fields, use_bin_type=True)


BAD_MESSAGES = {
    "garbage": (b"\x00\xffnot msgpack at all", "bad_request"),
    "empty": (b"", "bad_request"),
    "truncated": (encode(observation(rid=5))[:40], "bad_request"),
    "wrong version": (_wire(observation(rid=5), v=99), "version"),
    "unknown sampling": (encode(observation(rid=5, sampling="teleport")), "unsupported"),
    "wrong state size": (encode(observation(rid=5, state_dim=3)), "bad_request"),
    "estop": (encode(EStop(robot_id="arm", reason="test", engage=True)), "unsupported"),
    "a reply": (encode(ErrorReply(request_id=5, code="internal", message="x")), "unsupported"),
}


@pytest.mark.parametrize("name", list(BAD_MESSAGES))
def test_a_bad_message_gets_an_error_reply_and_serving_goes_on(server, name):
    payload, code = BAD_MESSAGES[name]
    with dealer(server.address) as client:
        error = ask(client, payload)
        assert isinstance(error, ErrorReply)
        assert error.code == code and error.message
        if name in ("wrong version", "unknown sampling", "wrong state size"):
            assert error.request_id == 5
        if name == "unknown sampling":
            assert "known methods" in error.message and "guided:exp" in error.message
        assert ask(client, encode(observation(rid=6))).request_id == 6


def test_an_oversized_message_is_dropped_and_serving_goes_on():
    limits = Limits(max_message_bytes=32 * 1024)
    with serving(TickPolicy(), limits=limits) as server, dealer(server.address) as client:
        assert ask(client, b"\x00" * 64 * 1024, SILENCE_MS) is None  # and we were disconnected
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        reply = None
        while reply is None and time.monotonic() < deadline:  # the DEALER reconnects by itself
            reply = ask(client, encode(observation(rid=8)), 200)
    assert isinstance(reply, ChunkReply) and reply.request_id == 8


def test_a_failing_request_does_not_fail_its_batch():
    policy = TickPolicy()
    robots = ["arm", "faulty", "picky"]
    with serving(policy, batch_window_ms=300) as server:
        clients = [dealer(server.address) for _ in robots]
        socks = [c.__enter__() for c in clients]
        try:
            for sock in socks:
                assert ask(sock, encode(MetadataRequest(request_id=0))) is not None
            for i, (sock, robot) in enumerate(zip(socks, robots, strict=True)):
                sock.send(encode(observation(rid=i, robot=robot)))
            good, faulty, picky = (receive(sock) for sock in socks)
        finally:
            for c in clients:
                c.__exit__(None, None, None)
    assert policy.batch_sizes[0] > 1, "the three requests should have formed one batch"
    assert isinstance(good, ChunkReply) and good.request_id == 0
    assert isinstance(faulty, ErrorReply) and faulty.code == "internal"
    assert faulty.request_id == 1 and "actuator model blew up" in faulty.message
    assert isinstance(picky, ErrorReply) and picky.code == "bad_request"
    assert "rephrase" in picky.message


def test_a_chunk_that_does_not_encode_is_an_internal_error():
    with serving(TickPolicy(fill=np.nan)) as server, dealer(server.address) as client:
        error = ask(client, encode(observation(rid=4)))
    assert isinstance(error, ErrorReply) and error.code == "internal" and error.request_id == 4


def test_metadata_reports_the_model_and_a_latency_histogram():
    with serving(TickPolicy(), batch_window_ms=0) as server, dealer(server.address) as client:
        for rid in range(5):
            assert isinstance(ask(client, encode(observation(rid=rid))), ChunkReply)
        meta = ask(client, encode(MetadataRequest(request_id=99)))
        figures = server.figures()
    assert isinstance(meta, MetadataReply)
    assert (meta.request_id, meta.model_id, meta.chunk_length, meta.action_dim) == (
        99,
        "constant",
        H,
        A,
    )
    assert meta.requests_served == 5 and meta.latency_counts.sum() == 5
    assert np.all(np.diff(np.log(meta.latency_edges_ms)) > 0)
    assert figures["requests_served"] == 5 and figures["latency_p50_ms"] > 0


def test_latency_quantiles_lie_in_the_right_bin():
    hist = LatencyHistogram()
    for ms in [1.0] * 98 + [50.0, 50.0]:
        hist.add(ms)
    assert 0.89 < hist.quantile(0.5) < 1.13
    assert 44 < hist.quantile(0.995) < 57


def test_a_req_client_gets_its_envelope_back(server):
    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    req.linger = 0
    req.connect(server.address)
    try:
        assert ask(req, encode(observation(rid=3))).request_id == 3
    finally:
        req.close()
        ctx.term()


def test_curve_admits_only_the_allowed_client_keys(tmp_path):
    generate_keypair(tmp_path, "server")
    generate_keypair(tmp_path / "clients", "robot")
    generate_keypair(tmp_path / "strangers", "stranger")
    keys = CurveKeys.from_dir(tmp_path)

    def client_keys(path):
        public, secret = zmq.auth.load_certificate(path)
        return keys.server_public, public, secret

    allowed = client_keys(tmp_path / "clients" / "robot.key_secret")
    stranger = client_keys(tmp_path / "strangers" / "stranger.key_secret")
    with serving(TickPolicy(), curve=keys) as server:
        with dealer(server.address, allowed) as client:
            assert isinstance(ask(client, encode(observation(rid=1))), ChunkReply)
        with dealer(server.address, stranger) as client:
            assert ask(client, encode(observation(rid=2)), SILENCE_MS) is None
        with dealer(server.address) as plain:
            assert ask(plain, encode(observation(rid=3)), SILENCE_MS) is None


def test_missing_curve_keys_say_how_to_make_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="generate_keypair"):
        CurveKeys.from_dir(tmp_path)


def test_stop_returns_from_serve_forever_and_close_frees_the_address():
    server = PolicyServer(TickPolicy(), LOOPBACK)
    thread = server.start_in_thread()
    server.stop()
    thread.join(2.0)
    assert not thread.is_alive()
    server.close()
    with PolicyServer(TickPolicy(), server.address):  # the port is free again
        pass


def test_binding_a_busy_address_is_a_clear_error(server):
    with pytest.raises(ValueError, match="another server"):
        PolicyServer(TickPolicy(), server.address)


def test_the_serve_command_stops_cleanly_on_sigterm():
    """`rtvla serve` installs its handlers, serves, and returns its figures on SIGTERM."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="serve", overrides=["checkpoint=synthetic", f"address='{LOOPBACK}'"]
        )
    original = signal.getsignal(signal.SIGTERM)

    def terminate_when_serving() -> None:
        deadline = time.monotonic() + 30
        while signal.getsignal(signal.SIGTERM) is original and time.monotonic() < deadline:
            time.sleep(0.01)
        if signal.getsignal(signal.SIGTERM) is not original:  # else main failed: let it raise
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate_when_serving, daemon=True).start()
    figures = serve.main(cfg)
    assert figures["model_id"] == "synthetic-gaussian" and figures["requests_served"] == 0
    assert signal.getsignal(signal.SIGTERM) is original


def test_warm_up_answers_one_zero_observation_per_sampling_method():
    from runtime.serving.server import warm_up

    policy = FlowChunkPolicy(GaussianChunkModel(), num_steps=2)
    recording = RecordingPolicy(policy)
    assert warm_up(recording) >= 0.0
    seen = recording.requests
    assert [r.sampling for r in seen] == ["plain", "guided:exp"]
    assert seen[0].prev_actions is None and seen[1].prev_actions.shape[1] == policy.info.action_dim
    assert all(v.dtype == np.dtype(policy.info.features[k]["dtype"])
               for k, v in seen[0].observation.items())  # fmt: skip


# ---- hostile bytes --------------------------------------------------------------------------


def test_an_absurd_shape_costs_only_its_own_reply_in_a_batch():
    absurd = hostile_message("absurd_shape", np.random.default_rng(0))
    policy = TickPolicy()
    with (
        serving(policy, batch_window_ms=300) as server,
        dealer(server.address) as bad,
        dealer(server.address) as good,
    ):
        for sock in (bad, good):
            assert ask(sock, encode(MetadataRequest(request_id=0))) is not None
        bad.send_multipart(absurd)
        good.send(encode(observation(rid=9)))
        error, chunk = receive(bad), receive(good)
    assert isinstance(error, ErrorReply) and error.code == "bad_request"
    assert isinstance(chunk, ChunkReply) and chunk.request_id == 9


def test_a_batch_sends_its_chunks_before_its_error_replies():
    absurd = hostile_message("absurd_shape", np.random.default_rng(0))
    with serving(TickPolicy(), batch_window_ms=300) as server, dealer(server.address) as sock:
        assert ask(sock, encode(MetadataRequest(request_id=0))) is not None
        sock.send_multipart(absurd)  # first in, answered last
        sock.send(encode(observation(rid=7)))
        first, second = receive(sock), receive(sock)
    assert isinstance(first, ChunkReply) and first.request_id == 7
    assert isinstance(second, ErrorReply) and second.code == "bad_request"


@pytest.mark.parametrize("kind", ["oversize_frames", "routing"])
def test_a_message_over_the_frame_limits_is_refused_and_nothing_echoed(kind):
    limits = Limits(max_message_bytes=256 * 1024)
    frames = hostile_message(kind, np.random.default_rng(1), limits)
    with serving(TickPolicy(), limits=limits) as server, dealer(server.address) as client:
        client.send_multipart(frames)
        assert client.poll(TIMEOUT_MS)
        reply = client.recv_multipart()
        assert len(reply) == 1 and len(reply[0]) < 4096  # an error, none of the frames
        error = decode(reply[0])
        assert isinstance(error, ErrorReply) and "refused" in error.message
        assert isinstance(ask(client, encode(observation(rid=2))), ChunkReply)


def test_a_flood_of_hostile_messages_leaves_every_legitimate_request_answered():
    rng = np.random.default_rng(2)
    limits = Limits(max_message_bytes=256 * 1024)
    stop = threading.Event()
    with serving(TickPolicy(), limits=limits, batch_window_ms=1) as server:

        def flood() -> None:
            with dealer(server.address) as sock:
                for k in range(400):
                    if stop.is_set():
                        break
                    sock.send_multipart(hostile_message(HOSTILE_KINDS[k % 8], rng, limits))
                    while sock.poll(0):
                        sock.recv_multipart()

        flooder = threading.Thread(target=flood)
        flooder.start()
        try:
            with dealer(server.address) as client:
                replies = [ask(client, encode(observation(rid=i)), TIMEOUT_MS) for i in range(20)]
        finally:
            stop.set()
            flooder.join()
        assert server.errors > 0
    assert [getattr(r, "request_id", None) for r in replies] == list(range(20))
    assert all(isinstance(r, ChunkReply) for r in replies)
