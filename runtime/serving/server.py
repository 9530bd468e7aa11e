"""The policy server: a ZMQ ROUTER answering observation requests with action chunks.

Framing: a client is a DEALER socket that sends ONE frame, an encoded ``runtime.wire.protocol``
message; the ROUTER sees [identity, payload] and replies [identity, reply]. (Any routing
envelope before the payload is echoed back, so a REQ socket, whose empty delimiter frame is
part of the envelope, works too.) Every request gets exactly one reply: a ``ChunkReply``, a
``MetadataReply`` or an ``ErrorReply`` whose message says what to change, except a message
with a frame over ``Limits.max_message_bytes``: ZMQ drops it and disconnects its sender,
whose DEALER reconnects by itself. Clients should therefore time out and resend.

Limits per message, not only per frame: at most ``MAX_ENVELOPE_FRAMES`` routing frames of at
most ``MAX_ROUTING_FRAME_BYTES`` each, and all frames together within
``Limits.max_message_bytes``. A message over them is freed unread and answered, to its
sender's identity only, with an ``ErrorReply``; nothing of it is echoed. ZMQ queues at most
``RECEIVE_HWM`` messages per peer. (ZMQ itself assembles a multi-frame message before handing
it over, so one message in transit can hold up to its frame count times the frame limit;
CURVE keys keep unknown peers from sending anything at all.)

Isolation: each message is decoded and checked on its own; one that fails (however) gets its
error reply and costs the others in its batch nothing. A batch's chunks are sent before its
error and metadata replies.

Batching: when a message arrives, the server also takes every message already waiting or
arriving within ``batch_window_ms``, up to ``max_batch``, and answers all their observation
requests with one ``ChunkPolicy.infer`` call, so robots that ask together share a forward
pass. If that call fails, each request is retried alone: one bad request fails only itself.

The server keeps no state between requests: each one carries what sampling needs (observation,
instruction, previous chunk, delay), so the server can restart at any time and a controller
holds the robot until it answers again.
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
import time
from collections.abc import Sequence
from types import TracebackType

import numpy as np
import zmq
from zmq.auth.thread import ThreadAuthenticator

from runtime.curve import CurveKeys, is_loopback, secure_server
from runtime.logs import RateLimitedLog
from runtime.wire.info import ChunkPolicy, LatencyHistogram, UnsupportedRequest, metadata_reply
from runtime.wire.protocol import (
    DEFAULT_LIMITS,
    ChunkReply,
    ErrorReply,
    EStop,
    Limits,
    Message,
    MetadataReply,
    MetadataRequest,
    ObservationRequest,
    OperatorInstruction,
    ProtocolError,
    decode,
    encode,
)

log = logging.getLogger(__name__)

POLL_MS = 100  # how often the loop looks at the stop flag when idle
MAX_ENVELOPE_FRAMES = 4  # routing frames before the payload (identity, a REQ's delimiter, ...)
MAX_ROUTING_FRAME_BYTES = 256  # one routing frame (ZMQ's own identities are at most 255 bytes)
RECEIVE_HWM = 16  # complete messages ZMQ queues per connected peer before it drops more
BAD_LOG_EVERY_S = 1.0  # bad or refused messages: one warning a second at most, with a count


class PolicyServer:
    """Serves a ``ChunkPolicy`` on a ZMQ ROUTER (module doc: framing, batching, errors).

    Bound on construction (``address`` may use port ``*``; ``self.address`` is the endpoint
    actually bound). ``serve_forever`` runs the loop in the calling thread until ``stop``;
    ``start_in_thread`` runs it in a background thread; ``close`` (or leaving the ``with``
    block) stops it and releases the socket.
    """

    def __init__(
        self,
        policy: ChunkPolicy,
        address: str = "tcp://127.0.0.1:5555",
        max_batch: int = 8,  # observation requests answered by one infer call, at most
        batch_window_ms: float = 2.0,  # how long to wait for more requests after the first
        curve: CurveKeys | None = None,  # None: no encryption nor authentication
        log_every_s: float | None = 30.0,  # period of the throughput/latency log line
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        if max_batch < 1 or batch_window_ms < 0:
            raise ValueError(
                f"need max_batch >= 1 and batch_window_ms >= 0, got {max_batch} and "
                f"{batch_window_ms}"
            )
        self.policy = policy
        self.max_batch = max_batch
        self.batch_window_ms = batch_window_ms
        self.log_every_s = log_every_s
        self.limits = limits
        self.histogram = LatencyHistogram()
        self.requests_served = 0  # chunk replies sent
        self.errors = 0  # error replies sent
        self.batches = 0  # infer calls for a batch (retries of a failed batch not counted)
        self._batched = 0  # observation requests in those batches
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bad_log = RateLimitedLog(log, BAD_LOG_EVERY_S)  # a flood must not flood the log
        try:
            encode(self._metadata(0), limits)
        except ProtocolError as e:
            raise ValueError(f"the policy's info cannot be sent to clients: {e}") from None
        self._context = zmq.Context()
        self._auth: ThreadAuthenticator | None = None
        try:
            self._socket = self._bind(address, curve)
        except BaseException:
            self._release()
            raise
        self.address = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        if curve is None and not is_loopback(self.address):
            log.warning(
                "serving on %s without CURVE keys: anyone who can reach it can drive the robot; "
                "set curve_keys_dir for anything beyond loopback",
                self.address,
            )

    def _bind(self, address: str, curve: CurveKeys | None) -> zmq.Socket:
        socket = self._context.socket(zmq.ROUTER)
        socket.setsockopt(zmq.ROUTER_MANDATORY, 0)  # drop replies to vanished clients
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.MAXMSGSIZE, self.limits.max_message_bytes)  # per frame
        socket.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
        if curve is not None:
            self._auth = secure_server(self._context, socket, curve)
        try:
            socket.bind(address)
        except zmq.ZMQError as e:
            socket.close(linger=0)
            raise ValueError(
                f"cannot bind the policy server to {address!r} ({e}): is another server "
                "running there? choose another address=tcp://HOST:PORT"
            ) from None
        return socket

    # -- running --------------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Answer requests until ``stop`` is called (from any thread or a signal handler)."""
        info = self.policy.info
        H, A = info.chunk_length, info.action_dim
        log.info("serving %s (H=%d, A=%d) on %s", info.model_id, H, A, self.address)
        next_log = time.monotonic() + (self.log_every_s or math.inf)
        while not self._stop.is_set():
            if self._socket.poll(POLL_MS):
                try:
                    self._serve(self._receive_batch())
                except Exception:  # a bug here must not take the robots' server down
                    log.exception("serving a batch failed; serving goes on")
            if time.monotonic() >= next_log:
                self._log_figures("serving")
                next_log += self.log_every_s or math.inf
        self._log_figures("stopped")

    def stop(self) -> None:
        """Ask ``serve_forever`` to return (within POLL_MS, or after the batch in progress)."""
        self._stop.set()

    def start_in_thread(self) -> threading.Thread:
        """Run ``serve_forever`` in a daemon thread; ``close`` stops and joins it."""
        if self._thread is not None:
            raise RuntimeError("this server is already serving in a thread")
        self._thread = threading.Thread(
            target=self.serve_forever, name="policy-server", daemon=True
        )
        self._thread.start()
        return self._thread

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop serving, wait for the serving thread, release the socket and context."""
        self.stop()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise RuntimeError(
                    f"the serving thread did not stop within {timeout_s} s (an infer call still "
                    "running?); the socket is left open"
                )
        self._release()

    def _release(self) -> None:
        if hasattr(self, "_socket"):
            self._socket.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        self._context.term()

    def __enter__(self) -> PolicyServer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def figures(self) -> dict:
        """Counters and latency quantiles since start (what ``rtvla serve`` prints at exit)."""
        return {
            "model_id": self.policy.info.model_id,
            "address": self.address,
            "requests_served": self.requests_served,
            "errors": self.errors,
            "batches": self.batches,
            "mean_batch_size": self._batched / self.batches if self.batches else None,
            "latency_p50_ms": self.histogram.quantile(0.5),
            "latency_p99_ms": self.histogram.quantile(0.99),
            "uptime_s": time.monotonic() - self._started,
        }

    def _log_figures(self, state: str) -> None:
        f = self.figures()
        log.info(
            "%s: %d requests in %d batches, %d errors, latency p50 %s ms p99 %s ms",
            state,
            f["requests_served"],
            f["batches"],
            f["errors"],
            _ms(f["latency_p50_ms"]),
            _ms(f["latency_p99_ms"]),
        )

    # -- one batch ------------------------------------------------------------------------------

    def _receive_batch(self) -> list[list[zmq.Frame]]:
        """The waiting message, plus those already queued or arriving within the window."""
        messages = [self._socket.recv_multipart(copy=False)]
        deadline = time.monotonic() + self.batch_window_ms / 1000
        while len(messages) < self.max_batch:
            try:
                messages.append(self._socket.recv_multipart(zmq.NOBLOCK, copy=False))
            except zmq.Again:
                wait_ms = math.ceil((deadline - time.monotonic()) * 1000)
                if wait_ms <= 0 or not self._socket.poll(wait_ms):
                    break
        return messages

    def _serve(self, messages: list[list[zmq.Frame]]) -> None:
        """Triage the batch, answer its observation requests, then send the other replies:
        robots waiting for chunks go first, so a message that earns only an error (or
        metadata) reply costs them its triage and no more."""
        pending: list[tuple[list[bytes], ObservationRequest]] = []
        later: list[tuple[list[bytes], Message]] = []
        for frames in messages:
            identity = frames[0].bytes
            try:
                self._triage(frames, pending, later)
            except Exception:  # one message's failure must not cost the others their replies
                log.exception("handling one message failed; the others are served")
                text = "internal error (see the server log)"
                later.append(([identity], _error(None, "internal", text, self.limits)))
        try:
            if pending:
                self._answer(pending)
        finally:
            for envelope, reply in later:
                self._send(envelope, reply)

    def _triage(
        self,
        frames: list[zmq.Frame],
        pending: list[tuple[list[bytes], ObservationRequest]],
        later: list[tuple[list[bytes], Message]],
    ) -> None:
        """Queue one message's observation request in ``pending``, or its reply in ``later``.

        ZMQ bounds each frame (MAXMSGSIZE), not their number: a message of many frames, or
        whose frames add up to more than the limit, is refused here and its frames freed; only
        its sender's identity (the first frame, set by the ROUTER) is kept for the error reply.
        """
        *routing, payload = frames
        total = sum(len(f) for f in frames)
        problem = None
        if len(routing) > MAX_ENVELOPE_FRAMES:
            problem = f"{len(frames)} frames; send one (a DEALER) or a REQ's two"
        elif any(len(f) > MAX_ROUTING_FRAME_BYTES for f in routing):
            problem = f"a routing frame over {MAX_ROUTING_FRAME_BYTES} bytes"
        elif total > self.limits.max_message_bytes:
            problem = (
                f"{total} bytes in {len(frames)} frames, over the limit of "
                f"{self.limits.max_message_bytes}"
            )
        if problem is not None:
            identity = frames[0].bytes if len(frames[0]) <= MAX_ROUTING_FRAME_BYTES else None
            frames.clear()
            self._bad_log.warning("refused a message of %s", problem)
            if identity is not None and routing:
                text = f"message refused: {problem}"
                later.append(([identity], _error(None, "bad_request", text, self.limits)))
            return
        envelope = [f.bytes for f in routing]
        try:
            message = decode(payload.buffer, self.limits)
        except ProtocolError as e:
            self._bad_log.warning("bad message: %s", e)
            later.append((envelope, _error(e.request_id, e.code, str(e), self.limits)))
            return
        match message:
            case ObservationRequest():
                pending.append((envelope, message))
            case MetadataRequest():
                later.append((envelope, self._metadata(message.request_id)))
            case OperatorInstruction() | EStop():
                text = f"{message.TYPE} is for the robot's controller: send it there"
                later.append((envelope, _error(None, "unsupported", text, self.limits)))
            case _:
                text = (
                    f"the policy server answers observation_request and metadata_request, "
                    f"not {message.TYPE}"
                )
                rid = getattr(message, "request_id", None)
                later.append((envelope, _error(rid, "unsupported", text, self.limits)))

    def _answer(self, pending: list[tuple[list[bytes], ObservationRequest]]) -> None:
        """One infer call for the batch; if it fails, one call per request."""
        requests = [r for _, r in pending]
        results = self._infer(requests)
        if len(requests) > 1 and isinstance(results[0][0], Exception):
            error = results[0][0]
            log.warning("a batch of %d failed (%s); retrying one by one", len(requests), error)
            results = [self._infer([r])[0] for r in requests]
        self.batches += 1
        self._batched += len(requests)
        for (envelope, request), (result, ms) in zip(pending, results, strict=True):
            if isinstance(result, Exception):
                self._send(envelope, self._failure(request, result))
                continue
            reply = ChunkReply(
                request_id=request.request_id,
                tick=request.tick,
                actions=result,
                server_time_ms=ms,
                model_id=self.policy.info.model_id,
            )
            if self._send(envelope, reply):
                self.requests_served += 1
                self.histogram.add(ms)

    def _infer(
        self, requests: list[ObservationRequest]
    ) -> list[tuple[np.ndarray | Exception, float]]:
        """(chunk, inference ms) per request; the policy's exception in place of every chunk
        if it raised."""
        start = time.perf_counter()
        try:
            chunks: list[np.ndarray | Exception] = list(self.policy.infer(requests))
            if len(chunks) != len(requests):
                raise RuntimeError(f"the policy returned {len(chunks)} chunks for {len(requests)}")
            shape = (self.policy.info.chunk_length, self.policy.info.action_dim)
            if any(np.shape(c) != shape for c in chunks):
                got = sorted({np.shape(c) for c in chunks})
                raise RuntimeError(f"the policy returned chunks of shape {got}, not {shape}")
        except Exception as e:
            chunks = [e] * len(requests)
        ms = (time.perf_counter() - start) * 1000
        return [(chunk, ms) for chunk in chunks]

    def _failure(self, request: ObservationRequest, e: Exception) -> ErrorReply:
        rid = request.request_id
        if isinstance(e, ValueError):
            code = "unsupported" if isinstance(e, UnsupportedRequest) else "bad_request"
            log.warning("request %d from %s refused: %s", rid, request.robot_id, e)
            return _error(rid, code, str(e), self.limits)
        log.error("request %d from %s failed", rid, request.robot_id, exc_info=e)
        text = f"internal error: {type(e).__name__}: {e} (the server log has the traceback)"
        return _error(rid, "internal", text, self.limits)

    def _metadata(self, request_id: int) -> MetadataReply:
        return metadata_reply(
            request_id, self.policy.info, self.histogram,
            time.monotonic() - self._started, self.requests_served,
        )  # fmt: skip

    def _send(self, envelope: list[bytes], message: Message) -> bool:
        """Encode and send; a reply that does not encode becomes an internal ErrorReply.
        Returns whether the message itself (not its replacement) went out."""
        sent = True
        try:
            data = encode(message, self.limits)
        except ProtocolError as e:
            log.error("the policy's reply does not encode: %s", e)
            sent = False
            text = f"internal error: the policy produced an invalid reply ({e})"
            rid = getattr(message, "request_id", None)
            data = encode(_error(rid, "internal", text, self.limits), self.limits)
        self.errors += not sent or isinstance(message, ErrorReply)
        try:
            self._socket.send_multipart([*envelope, data], zmq.NOBLOCK)
        except zmq.ZMQError as e:
            self._bad_log.warning("reply dropped (%s)", e)
            return False
        return sent


def _error(request_id: int | None, code: str, text: str, limits: Limits) -> ErrorReply:
    text = text if len(text) <= limits.max_text_len else text[: limits.max_text_len - 3] + "..."
    return ErrorReply(request_id=request_id, code=code, message=text or code)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def warm_up(policy: ChunkPolicy, methods: Sequence[str] = ("plain", "guided:exp")) -> float:
    """Answer one all-zeros observation per sampling method before serving, so the first real
    request does not pay for lazy initialisation (allocator, kernels); returns the seconds it
    took. A method the policy does not support is skipped."""
    info = policy.info
    observation = {
        k: np.zeros(tuple(v["shape"]), np.dtype(v["dtype"])) for k, v in info.features.items()
    }
    start = time.perf_counter()
    for k, method in enumerate(methods):
        guided = method != "plain"
        request = ObservationRequest(
            request_id=k, robot_id="warmup", tick=0, observation=observation, instruction="",
            delay=1 if guided else 0, execution_horizon=1, sampling=method,
            prev_actions=np.zeros((info.chunk_length - 1, info.action_dim), np.float32)
            if guided else None,
        )  # fmt: skip
        try:
            policy.infer([request])
        except UnsupportedRequest:
            continue
    return time.perf_counter() - start


SERVER_SETTINGS = ("address", "max_batch", "batch_window_ms", "log_every_s")


def server_settings() -> dict[str, object]:
    """``PolicyServer``'s plain settings and their defaults, read from its signature: ``rtvla
    serve``'s config takes them from here (``serve_settings``), so they are written once."""
    params = inspect.signature(PolicyServer.__init__).parameters
    return {name: params[name].default for name in SERVER_SETTINGS}
