"""Policy clients: how the controller sends observation requests and receives action chunks.

A client has at most one chunk request outstanding (the controller never sends a second
before the first is answered or given up). ``poll`` returns the reply to it, drops replies
to anything older (a stale reply after a timeout or a resubmission), and raises
``RequestTimeout`` once the outstanding request is older than the client's ``timeout_s``.

``ZmqPolicyClient`` talks to a ``PolicyServer`` over a DEALER socket, one frame per message.
ZMQ reconnects by itself; after a timeout the client also replaces its socket, which drops
requests still queued for a dead server, so a restarted server gets fresh observations only.
``LocalPolicyClient`` runs a ``ChunkPolicy`` in this process on a worker thread (tests,
benchmarks and simulated-clock runs without a server process); its messages go through the
same ``encode``/``decode`` validation as the wire.

Only ``LocalPolicyClient``, which runs a policy, imports torch (when it is built).
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import threading
import time
from typing import Protocol

import numpy as np
import zmq

from runtime.curve import ClientCurveKeys, secure_client
from runtime.wire.info import ChunkPolicy, LatencyHistogram, UnsupportedRequest, metadata_reply
from runtime.wire.protocol import (
    DEFAULT_LIMITS,
    ChunkReply,
    ErrorReply,
    Limits,
    Message,
    MetadataReply,
    MetadataRequest,
    ObservationRequest,
    ProtocolError,
    decode,
    encode,
)

log = logging.getLogger(__name__)

MAX_DRAIN = 64  # stale or bad messages one poll reads past its timeout, at most
RECEIVE_HWM = 16  # replies ZMQ queues before it drops more (a client expects one at a time)

Reply = ChunkReply | ErrorReply


class RequestTimeout(TimeoutError):
    """The outstanding request got no reply in time; the client has given up on it."""


class PolicyClient(Protocol):
    """The controller's view of a policy server."""

    def submit(self, request: ObservationRequest) -> None:
        """Send ``request``; it replaces any outstanding one (whose reply is then dropped)."""
        ...

    def poll(self, timeout_s: float = 0.0) -> Reply | None:
        """The reply to the outstanding request if it comes within ``timeout_s``, else None.

        Raises RequestTimeout when the outstanding request has waited longer than the
        client's own timeout.
        """
        ...

    def metadata(self, timeout_s: float) -> MetadataReply:
        """The server's model metadata and health (no chunk request may be outstanding)."""
        ...

    def close(self) -> None: ...


class _OneOutstanding:
    """The reply matching, stale dropping and timeout logic both clients share."""

    def __init__(self, timeout_s: float) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = timeout_s
        self._pending: int | None = None  # id of the outstanding request
        self._deadline = math.inf

    def _start(self, request_id: int) -> None:
        self._pending = request_id
        self._deadline = time.perf_counter() + self.timeout_s

    def _receive(self, wait_s: float) -> Message | None:
        """One message if one comes within ``wait_s`` seconds (None also for a bad one)."""
        raise NotImplementedError

    def _reset(self) -> None:
        """Forget everything in transit (after a timeout)."""
        raise NotImplementedError

    def poll(self, timeout_s: float = 0.0) -> Reply | None:
        if self._pending is None:
            return None
        until = min(time.perf_counter() + timeout_s, self._deadline)
        for drained in itertools.count():
            msg = self._receive(max(until - time.perf_counter(), 0.0))
            if isinstance(msg, ChunkReply | ErrorReply) and msg.request_id in (self._pending, None):
                self._pending = None  # an ErrorReply without an id answers the outstanding one
                return msg
            if msg is not None:
                log.debug("dropped a stale %s", type(msg).__name__)
            now = time.perf_counter()
            if now >= self._deadline:
                rid, self._pending = self._pending, None
                self._reset()
                raise RequestTimeout(
                    f"request {rid} got no reply within {self.timeout_s} s from {self}"
                )
            if now >= until and (msg is None or drained >= MAX_DRAIN):
                return None  # a stream of stale or bad replies cannot hold the caller


class ZmqPolicyClient(_OneOutstanding):
    """A ``PolicyClient`` for a ``PolicyServer`` at ``address`` (e.g. ``tcp://host:5555``)."""

    def __init__(
        self,
        address: str,
        timeout_s: float = 1.0,
        curve: ClientCurveKeys | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        super().__init__(timeout_s)
        self.address = address
        self.curve = curve
        self.limits = limits
        self._context = zmq.Context()
        self._socket = self._connect()
        self._metadata_id = 0

    def __repr__(self) -> str:
        return f"ZmqPolicyClient({self.address!r})"

    def submit(self, request: ObservationRequest) -> None:
        data = encode(request, self.limits)
        self._start(request.request_id)
        try:  # never block the control loop: a request ZMQ cannot queue times out like a lost one
            self._socket.send(data, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            log.warning("request %d not sent: %s is not reachable", request.request_id, self)

    def metadata(self, timeout_s: float = 5.0) -> MetadataReply:
        if self._pending is not None:
            raise RuntimeError(
                f"metadata() while chunk request {self._pending} is outstanding: ask for "
                "metadata before the control loop starts"
            )
        self._metadata_id += 1
        self._socket.send(encode(MetadataRequest(request_id=self._metadata_id), self.limits))
        until = time.perf_counter() + timeout_s
        while (now := time.perf_counter()) < until:
            msg = self._receive(until - now)
            if isinstance(msg, MetadataReply | ErrorReply) and msg.request_id == self._metadata_id:
                if isinstance(msg, ErrorReply):
                    raise RuntimeError(f"{self} refused the metadata request: {msg.message}")
                return msg
        self._reset()
        raise RequestTimeout(f"no metadata from {self} within {timeout_s} s: is it serving?")

    def close(self) -> None:
        self._socket.close(linger=0)
        self._context.term()

    def _connect(self) -> zmq.Socket:
        socket = self._context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.MAXMSGSIZE, self.limits.max_message_bytes)  # per frame
        socket.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
        if self.curve is not None:
            secure_client(socket, self.curve)
        socket.connect(self.address)
        return socket

    def _receive(self, wait_s: float) -> Message | None:
        if not self._socket.poll(math.ceil(wait_s * 1000)):
            return None
        frames = self._socket.recv_multipart(copy=False)
        if len(frames) != 1:
            log.warning("dropped a reply of %d frames from %s: expected one", len(frames), self)
            return None
        try:
            return decode(frames[0].buffer, self.limits)
        except ProtocolError as err:
            log.warning("dropped an invalid reply from %s: %s", self, err)
            return None

    def _reset(self) -> None:
        self._socket.close(linger=0)
        self._socket = self._connect()


class LocalPolicyClient(_OneOutstanding):
    """A ``PolicyClient`` running ``policy.infer`` in this process, on one worker thread."""

    def __init__(self, policy: ChunkPolicy, timeout_s: float = 30.0) -> None:
        super().__init__(timeout_s)
        self.policy = policy
        self.histogram = LatencyHistogram()
        self._requests: queue.Queue[ObservationRequest | None] = queue.Queue()
        self._replies: queue.Queue[Reply] = queue.Queue()
        self._served = 0
        self._started = time.perf_counter()
        self._worker = threading.Thread(target=self._serve, name="local-policy", daemon=True)
        self._worker.start()

    def __repr__(self) -> str:
        return f"LocalPolicyClient({self.policy.info.model_id!r})"

    def submit(self, request: ObservationRequest) -> None:
        checked = decode(encode(request))  # exactly what a server would receive
        self._start(request.request_id)
        self._requests.put(checked)

    def metadata(self, timeout_s: float = 5.0) -> MetadataReply:
        uptime = time.perf_counter() - self._started
        return metadata_reply(0, self.policy.info, self.histogram, uptime, self._served)

    def close(self) -> None:
        self._requests.put(None)
        self._worker.join(timeout=self.timeout_s)

    def _serve(self) -> None:
        while (request := self._requests.get()) is not None:
            (reply,) = answer(self.policy, [request], self.histogram)
            self._served += isinstance(reply, ChunkReply)
            self._replies.put(reply)

    def _receive(self, wait_s: float) -> Message | None:
        try:
            return self._replies.get(timeout=wait_s) if wait_s > 0 else self._replies.get_nowait()
        except queue.Empty:
            return None

    def _reset(self) -> None:
        """Nothing to reset: a late reply is dropped as stale when it comes."""


def answer(
    policy: ChunkPolicy, requests: list[ObservationRequest], histogram: LatencyHistogram
) -> list[Reply]:
    """Run ``policy`` on ``requests`` in one batch: one reply each, through the wire's checks,
    as a server would send them (each ChunkReply carries the batch's time). When the batch
    fails, each request is run alone, so a bad one gets its error reply and the others their
    chunks."""
    start = time.perf_counter()
    try:
        chunks = policy.infer(requests)
        ms = (time.perf_counter() - start) * 1000
        replies: list[Reply] = [
            decode(encode(ChunkReply(
                request_id=request.request_id, tick=request.tick,
                actions=np.asarray(chunk, dtype=np.float32), server_time_ms=ms,
                model_id=policy.info.model_id,
            )))
            for request, chunk in zip(requests, chunks, strict=True)
        ]  # fmt: skip
    except Exception as err:  # reported to the controller, as a server would
        if len(requests) > 1:
            return [reply for r in requests for reply in answer(policy, [r], histogram)]
        log.exception("policy failed on request %d", requests[0].request_id)
        code = "bad_request" if isinstance(err, ValueError) else "internal"
        code = "unsupported" if isinstance(err, UnsupportedRequest) else code
        message = f"{type(err).__name__}: {err}"[:1000]
        return [ErrorReply(request_id=requests[0].request_id, code=code, message=message)]
    for _ in replies:
        histogram.add(ms)
    return replies


class LockstepGroup:
    """In-process clients for episodes run side by side on simulated clocks, whose requests
    are answered in one batch.

    Each episode's thread gets a ``member()`` client. A simulated-clock controller blocks in
    ``poll`` once its chunk is due; when every member still in the group is blocked so (or
    has left), the last one to block runs ``policy.infer`` on every outstanding request at
    once and wakes the others. Each reply depends only on its request (seeded noise, per-
    request guidance), and which requests share a batch depends only on the members'
    episodes, so a group's outcomes repeat exactly; the rows of a batch may differ in the
    last bits from the same requests run one by one. Not for wall-clock controllers: they
    never block for a reply, so the group would never answer.
    """

    def __init__(self, policy: ChunkPolicy, timeout_s: float = 30.0) -> None:
        self.policy = policy
        self.timeout_s = timeout_s
        self.histogram = LatencyHistogram()
        self._lock = threading.Condition()
        self._members: list[_LockstepMember] = []
        self._started = time.perf_counter()
        self._served = 0
        self.batches = 0  # batches run, for the record

    def metadata(self) -> MetadataReply:
        """The policy's metadata and the group's latency histogram, as a server reports them."""
        uptime = time.perf_counter() - self._started
        return metadata_reply(0, self.policy.info, self.histogram, uptime, self._served)

    def member(self) -> _LockstepMember:
        """A new member's client (it joins the group now; ``close`` it to leave)."""
        with self._lock:
            client = _LockstepMember(self)
            self._members.append(client)
            return client

    def _leave(self, member: _LockstepMember) -> None:
        with self._lock:
            if member in self._members:
                self._members.remove(member)
                member.request = None
                self._maybe_answer()

    def _wait(self, member: _LockstepMember, wait_s: float) -> Reply | None:
        """``member``'s reply, waiting up to ``wait_s`` s for the group to block and answer."""
        until = time.perf_counter() + wait_s
        with self._lock:
            member.blocked = True
            try:
                self._maybe_answer()
                while member.reply is None and (left := until - time.perf_counter()) > 0:
                    self._lock.wait(left)
            finally:
                member.blocked = False
            reply, member.reply = member.reply, None
            return reply

    def _maybe_answer(self) -> None:
        """Under the lock: answer every outstanding request if every member is blocked."""
        if not all(m.blocked for m in self._members):
            return
        waiting = [m for m in self._members if m.request is not None]
        if not waiting:
            return
        requests = [m.request for m in waiting]
        for m in waiting:
            m.request = None
        replies = answer(self.policy, requests, self.histogram)
        self._served += sum(isinstance(r, ChunkReply) for r in replies)
        self.batches += 1
        for m, reply in zip(waiting, replies, strict=True):
            m.reply = reply
        self._lock.notify_all()


class _LockstepMember(_OneOutstanding):
    """One episode's client in a ``LockstepGroup``."""

    def __init__(self, group: LockstepGroup) -> None:
        super().__init__(group.timeout_s)
        self.group = group
        self.policy = group.policy
        self.request: ObservationRequest | None = None  # outstanding, not yet answered
        self.reply: Reply | None = None  # answered, not yet received
        self.blocked = False

    def __repr__(self) -> str:
        return f"LockstepGroup member ({self.policy.info.model_id!r})"

    def submit(self, request: ObservationRequest) -> None:
        checked = decode(encode(request))  # exactly what a server would receive
        self._start(request.request_id)
        with self.group._lock:
            self.request, self.reply = checked, None

    def metadata(self, timeout_s: float = 5.0) -> MetadataReply:
        return self.group.metadata()

    def close(self) -> None:
        self.group._leave(self)

    def _receive(self, wait_s: float) -> Message | None:
        if wait_s <= 0:
            with self.group._lock:
                reply, self.reply = self.reply, None
                return reply
        return self.group._wait(self, wait_s)

    def _reset(self) -> None:
        """After a timeout: forget the unanswered request."""
        with self.group._lock:
            self.request = self.reply = None
