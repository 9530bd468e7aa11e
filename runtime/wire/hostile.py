"""Hostile messages: what a broken or malicious peer may send, to check that nothing breaks.

``hostile_message(kind, rng, limits)`` makes one message of a class as a list of frames (what
a DEALER would ``send_multipart``); ``HOSTILE_KINDS`` names the classes. The server tests and
``bench/hostile.py`` send them at a ``PolicyServer``; any of them sent at a controller's
operator socket or back to a client must be dropped with a warning too.

The ``pickle`` class carries a fixed byte string in Python's pickle format (it would run
``os.system("true")`` if anything ever unpickled it); nothing here or anywhere else does.
numpy + msgpack only, like the rest of ``runtime.wire``.
"""

from __future__ import annotations

import msgpack
import numpy as np

from runtime.wire.protocol import (
    ARRAY_TAG,
    DEFAULT_LIMITS,
    PROTOCOL_VERSION,
    Limits,
    ObservationRequest,
    encode,
)

HOSTILE_KINDS = (
    "random",  # random bytes
    "truncated",  # a valid request cut short
    "wrong_types",  # a valid request's fields replaced by values of other types
    "absurd_shape",  # zero-size arrays with dimensions up to 2**64 - 1
    "oversize_frames",  # frames each under the frame limit, together over the message limit
    "routing",  # many routing frames before a valid payload
    "pickle",  # a Python pickle instead of msgpack
    "wrong_version",  # a valid request under a protocol version nobody speaks
)
PICKLE = (
    b"\x80\x04\x95\x1c\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06system\x94\x93"
    b"\x94\x8c\x04true\x94\x85\x94R\x94."
)


def sample_request(request_id: int = 0, state_dim: int = 6) -> ObservationRequest:
    """A small valid request (state only), the base the hostile variants distort."""
    return ObservationRequest(
        request_id=request_id, robot_id="hostile", tick=0,
        observation={"observation.state": np.zeros(state_dim, np.float32)},
        instruction="pick up the cube", delay=0, execution_horizon=0, sampling="plain",
    )  # fmt: skip


def hostile_message(
    kind: str, rng: np.random.Generator, limits: Limits = DEFAULT_LIMITS
) -> list[bytes]:
    """One message of class ``kind`` (one of ``HOSTILE_KINDS``) as a list of frames."""
    valid = encode(sample_request(int(rng.integers(0, 2**31))), limits)
    fields = msgpack.unpackb(valid, raw=False)
    if kind == "random":
        return [rng.bytes(int(rng.integers(0, 512)))]
    if kind == "truncated":
        return [valid[: int(rng.integers(0, len(valid)))]]
    if kind == "wrong_types":
        junk = [None, True, -1, 2**64 - 1, 1e308, "x" * 5000, b"\0" * 64, [1, [2]], {"a": {}}]
        for key in rng.choice(sorted(fields), size=int(rng.integers(1, 4)), replace=False):
            fields[str(key)] = junk[int(rng.integers(len(junk)))]
        return [_pack(fields)]
    if kind == "absurd_shape":
        huge = [2**31, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1]
        big = huge[int(rng.integers(len(huge)))]
        shape = [0, big] if rng.random() < 0.5 else [big, 0]
        dtype = str(rng.choice(["float32", "uint8", "float64"]))
        array = {ARRAY_TAG: True, "dtype": dtype, "shape": shape, "data": b""}
        if rng.random() < 0.5:
            fields["prev_actions"] = array
        else:
            fields["observation"] = {"observation.state": array}
        return [_pack(fields)]
    if kind == "oversize_frames":
        frame = min(limits.max_message_bytes // 4, 2**20)
        count = limits.max_message_bytes // frame + 2
        return [b"\0" * frame] * count
    if kind == "routing":
        return [b"r" * int(rng.integers(1, 300))] * int(rng.integers(5, 40)) + [valid]
    if kind == "pickle":
        return [PICKLE]
    if kind == "wrong_version":
        return [_pack(fields | {"v": [0, 1, PROTOCOL_VERSION + 1, 2**32][int(rng.integers(4))]})]
    raise ValueError(f"unknown hostile message kind {kind!r}; known: {HOSTILE_KINDS}")


def _pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)
