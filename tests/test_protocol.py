"""runtime/wire/protocol.py: round trips, malformed messages, fuzzing, import isolation."""

import ast
import subprocess
import sys
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.wire import protocol
from runtime.wire.protocol import (
    ALLOWED_DTYPES,
    ARRAY_TAG,
    MESSAGE_TYPES,
    ChunkReply,
    ErrorReply,
    EStop,
    Limits,
    MetadataReply,
    MetadataRequest,
    ObservationRequest,
    OperatorInstruction,
    ProtocolError,
    decode,
    encode,
)

RNG = np.random.default_rng(0)


def observation_request(**overrides) -> ObservationRequest:
    fields = {
        "request_id": 7,
        "robot_id": "so101-left",
        "tick": 1234,
        "observation": {
            "observation.state": RNG.standard_normal(6).astype(np.float32),
            "observation.images.front": RNG.integers(0, 256, (96, 96, 3), dtype=np.uint8),
            "observation.images.wrist": RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8),
        },
        "instruction": "put the red cube in the bowl",
        "prev_actions": RNG.standard_normal((12, 6)).astype(np.float32),
        "delay": 3,
        "execution_horizon": 5,
        "sampling": "guided:exp",
        "seed": 42,
    }
    return ObservationRequest(**(fields | overrides))


def metadata_reply(**overrides) -> MetadataReply:
    fields = {
        "request_id": 3,
        "model_id": "vla-small/step-20000",
        "features": {
            "observation.state": {"dtype": "float32", "shape": (6,)},
            "observation.images.front": {"dtype": "uint8", "shape": (96, 96, 3)},
            "action": {"dtype": "float32", "shape": (6,)},
        },
        "chunk_length": 50,
        "action_dim": 6,
        "fps": 30.0,
        "latency_edges_ms": np.linspace(0.0, 200.0, 21),
        "latency_counts": RNG.integers(0, 100, 20).astype(np.int64),
        "uptime_s": 3600.5,
        "requests_served": 108000,
    }
    return MetadataReply(**(fields | overrides))


def valid_messages() -> list:
    return [
        observation_request(),
        observation_request(prev_actions=None, seed=None, instruction="", sampling="plain"),
        ChunkReply(
            request_id=7,
            tick=1234,
            actions=RNG.standard_normal((50, 6)).astype(np.float32),
            server_time_ms=41.5,
            model_id="vla-small",
        ),
        ErrorReply(request_id=7, code="bad_request", message="observation.state is missing"),
        ErrorReply(request_id=None, code="internal", message="server failure: retry"),
        MetadataRequest(request_id=0),
        metadata_reply(),
        metadata_reply(joint_names={"action": ("shoulder_pan.pos", "gripper.pos")}),
        metadata_reply(observation_history=(-8, -4)),
        OperatorInstruction(robot_id="r1", instruction="move left", timeout_s=2.0, release=False),
        OperatorInstruction(robot_id="r1", instruction="", timeout_s=0.0, release=True),
        EStop(robot_id="r1", reason="operator pressed stop", engage=True),
        EStop(robot_id="r1", reason="", engage=False),
    ]


def assert_same(a, b) -> None:
    assert type(a) is type(b)
    for name, x in vars(a).items():
        y = vars(b)[name]
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
        elif isinstance(x, dict) and x and isinstance(next(iter(x.values())), np.ndarray):
            assert x.keys() == y.keys()
            for k in x:
                assert_same_array(x[k], y[k])
        else:
            assert x == y, name


def assert_same_array(x: np.ndarray, y: np.ndarray) -> None:
    assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def wire(msg) -> dict:
    """The raw msgpack map of an encoded message, to tamper with."""
    return msgpack.unpackb(encode(msg), raw=False)


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def array_map(dtype: str, shape: list, data: bytes) -> dict:
    return {ARRAY_TAG: True, "dtype": dtype, "shape": shape, "data": data}


# ---- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("msg", valid_messages(), ids=lambda m: type(m).__name__)
def test_round_trip(msg):
    data = encode(msg)
    assert_same(msg, decode(data))
    assert_same(msg, decode(memoryview(bytearray(data))))


def test_round_trip_every_allowed_dtype_and_byte_order():
    for dtype in ALLOWED_DTYPES:
        arr = (RNG.standard_normal((2, 3, 4)) * 100).astype(dtype)
        msg = observation_request(observation={"observation.extra": arr})
        out = decode(encode(msg)).observation["observation.extra"]
        assert_same_array(arr, out)
        assert out.flags.writeable and out.flags.c_contiguous
    big_endian = np.arange(6, dtype=">f4").reshape(2, 3)[:, ::2]  # non-contiguous too
    msg = observation_request(observation={"observation.extra": big_endian})
    out = decode(encode(msg)).observation["observation.extra"]
    np.testing.assert_array_equal(out, big_endian)
    assert out.dtype == np.float32 and out.dtype.isnative


def test_encode_normalizes_numpy_scalars_and_zero_row_prefix():
    msg = observation_request(
        tick=np.int64(5), delay=np.int32(2), prev_actions=np.zeros((0, 6), np.float32)
    )
    out = decode(encode(msg))
    assert out.tick == 5 and type(out.tick) is int
    assert out.prev_actions.shape == (0, 6)


def test_optional_fields_may_be_left_out():
    raw = wire(observation_request())
    del raw["seed"], raw["prev_actions"]
    out = decode(pack(raw))
    assert out.seed is None and out.prev_actions is None


# ---- malformed messages ---------------------------------------------------------------------


def decode_error(raw: dict | bytes, **kw) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(raw if isinstance(raw, bytes) else pack(raw), **kw)
    return info.value


def test_wrong_dtype_and_rank_are_named():
    raw = wire(observation_request())
    raw["prev_actions"] = array_map("float64", [12, 6], bytes(12 * 6 * 8))
    err = decode_error(raw)
    assert "prev_actions" in str(err) and "float64" in str(err) and "float32" in str(err)
    assert err.request_id == 7 and err.code == "bad_request"
    raw = wire(observation_request())
    raw["observation"]["observation.images.front"] = array_map("uint8", [96, 96], bytes(96 * 96))
    assert "observation.images.front" in str(decode_error(raw))
    raw["observation"]["observation.images.front"] = array_map("complex64", [1], bytes(8))
    assert "complex64" in str(decode_error(raw))
    with pytest.raises(ProtocolError, match="astype"):
        encode(observation_request(prev_actions=np.zeros((3, 6))))


def test_shape_and_data_length_mismatch():
    raw = wire(observation_request())
    raw["prev_actions"]["data"] = raw["prev_actions"]["data"][:-4]
    assert "carries" in str(decode_error(raw))
    raw["prev_actions"] = array_map("float32", [2, -1], b"")
    assert "non-negative" in str(decode_error(raw))
    raw["prev_actions"] = array_map("float32", [1] * 9, bytes(4))
    assert "at most 8" in str(decode_error(raw))
    raw["prev_actions"] = {**array_map("float32", [1, 1], bytes(4)), "order": "F"}
    assert "array map" in str(decode_error(raw))


def test_oversized_arrays_and_messages():
    raw = wire(observation_request())
    raw["observation"]["observation.images.front"] = array_map("uint8", [4096, 4096, 3], b"")
    assert "over the limit" in str(decode_error(raw))
    raw["observation"]["observation.images.front"] = array_map("uint8", [1100, 8, 3], bytes(26400))
    assert "1 <= H, W <= 1024" in str(decode_error(raw))
    with pytest.raises(ProtocolError, match=r"1 <= H, W <= 1024"):
        encode(
            observation_request(
                observation={"observation.images.front": np.zeros((1100, 8, 3), np.uint8)}
            )
        )
    small = Limits(max_message_bytes=10_000)
    with pytest.raises(ProtocolError, match="max_message_bytes"):
        encode(observation_request(), small)
    assert "max_message_bytes" in str(decode_error(encode(observation_request()), limits=small))
    assert decode(encode(observation_request()), Limits(max_image_side=96)).tick == 1234
    # a bin header that claims 2 GiB but carries nothing
    assert "msgpack" in str(decode_error(b"\x81\xa1v\xc6\x7f\xff\xff\xff"))


def test_unknown_type_unknown_version_missing_and_extra_fields():
    raw = wire(MetadataRequest(request_id=1))
    err = decode_error({**raw, "type": "teleport"})
    assert "teleport" in str(err) and "metadata_request" in str(err)
    err = decode_error({**raw, "v": 1})
    assert err.code == "version" and "(2,)" in str(err) and err.request_id == 1
    assert decode_error({k: v for k, v in raw.items() if k != "v"}).code == "bad_request"
    raw = wire(observation_request())
    del raw["robot_id"]
    assert "missing fields ['robot_id']" in str(decode_error(raw))
    raw = wire(observation_request())
    raw["priority"] = 1
    assert "unknown fields ['priority']" in str(decode_error(raw))


@pytest.mark.parametrize(
    ("field", "value", "expect"),
    [
        ("tick", -1, "tick must lie in"),
        ("tick", True, "tick must be an int"),
        ("delay", 2.0, "delay must be an int"),
        ("request_id", 2**64 - 1, "request_id must lie in"),
        ("robot_id", "", "robot_id must be"),
        ("robot_id", "has space", "robot_id must be"),
        ("instruction", "x" * 5000, "instruction must hold"),
        ("sampling", None, "sampling must be"),
        ("observation", {}, "observation must map"),
        ("observation", {"state": np.zeros(3, np.float32)}, "start with 'observation.'"),
    ],
)
def test_bad_fields_are_rejected_with_the_field_name(field, value, expect):
    with pytest.raises(ProtocolError, match=expect):
        encode(observation_request(**{field: value}))


def test_non_finite_values_are_rejected():
    bad = np.array([[np.nan, 0.0]], np.float32)
    with pytest.raises(ProtocolError, match="NaN or infinite"):
        encode(ChunkReply(request_id=1, tick=0, actions=bad, server_time_ms=1.0, model_id="m"))
    state = {"observation.state": np.array([np.inf], np.float32)}
    with pytest.raises(ProtocolError, match="NaN or infinite"):
        encode(observation_request(observation=state))
    with pytest.raises(ProtocolError, match="server_time_ms must be finite"):
        encode(
            ChunkReply(
                request_id=1,
                tick=0,
                actions=np.zeros((2, 2), np.float32),
                server_time_ms=float("nan"),
                model_id="m",
            )
        )
    raw = wire(OperatorInstruction(robot_id="r", instruction="", timeout_s=1.0, release=True))
    raw["timeout_s"] = float("inf")
    assert "timeout_s" in str(decode_error(raw))


def test_other_message_fields():
    with pytest.raises(ProtocolError, match="code must be one of"):
        encode(ErrorReply(request_id=1, code="oops", message="x"))
    with pytest.raises(ProtocolError, match="engage must be a bool"):
        encode(EStop(robot_id="r", reason="", engage=1))
    with pytest.raises(ProtocolError, match="fps must be finite and > 0"):
        encode(metadata_reply(fps=0.0))
    with pytest.raises(ProtocolError, match="latency histogram"):
        encode(metadata_reply(latency_counts=np.zeros(3, np.int64)))
    with pytest.raises(ProtocolError, match="must increase"):
        encode(metadata_reply(latency_edges_ms=np.zeros(21)))
    with pytest.raises(ProtocolError, match="features"):
        encode(metadata_reply(features={"action": {"dtype": "float32", "shape": (-1,)}}))
    with pytest.raises(ProtocolError, match="joint_names"):
        encode(metadata_reply(joint_names={"action": ()}))
    with pytest.raises(ProtocolError, match="joint_names"):
        encode(metadata_reply(joint_names={"action": ("a b",)}))
    with pytest.raises(ProtocolError, match="joint_names"):
        encode(metadata_reply(joint_names=["action"]))
    for bad in ((), (-4, -8), (-4, 0), (3,), [-1.5]):
        with pytest.raises(ProtocolError, match="observation_history"):
            encode(metadata_reply(observation_history=bad))
    with pytest.raises(ProtocolError, match="cannot encode"):
        encode("not a message")


def test_truncated_and_garbage_bytes():
    data = encode(observation_request())
    for cut in (0, 1, 10, len(data) // 2, len(data) - 1):
        decode_error(data[:cut])
    decode_error(data + b"\x00")  # trailing bytes
    decode_error(pack([1, 2, 3]))
    decode_error(pack({"v": 1, "type": "estop", 1: 2}))  # non-string map key
    decode_error(b"\x91" * 100_000)  # nesting deeper than the unpacker's stack
    decode_error(pack(msgpack.ExtType(5, b"abc")))
    decode_error(pack({"v": 1, "type": "estop", "robot_id": msgpack.ExtType(1, b"")}))
    decode_error(b"\xd9\x03\xff\xfe\xfd")  # invalid utf-8 in a str
    with pytest.raises(ProtocolError, match="expected bytes"):
        decode("a string")


def test_bool_arrays_must_hold_zero_or_one():
    raw = wire(observation_request())
    raw["observation"]["observation.mask"] = array_map("bool", [3], b"\x00\x01\x07")
    assert "bool" in str(decode_error(raw))


# ---- fuzzing --------------------------------------------------------------------------------

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SMALL_ENCODED = [
    encode(m) for m in valid_messages() if not isinstance(m, ObservationRequest | MetadataReply)
] + [
    encode(
        observation_request(
            observation={
                "observation.state": np.ones(3, np.float32),
                "observation.images.front": np.zeros((2, 2, 3), np.uint8),
            },
            prev_actions=np.ones((2, 3), np.float32),
        )
    ),
    encode(metadata_reply(latency_edges_ms=np.arange(3.0), latency_counts=np.ones(2, np.int64))),
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.binary(max_size=32)
)
field_names = st.sampled_from(
    [
        *sorted({f for cls in MESSAGE_TYPES.values() for f in cls.__dataclass_fields__}),
        *("v", "type", ARRAY_TAG, "dtype", "shape", "data", "observation.state"),
    ]
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8) | field_names, children, max_size=4)
    ),
    max_leaves=12,
)
array_maps = st.builds(
    array_map,
    st.sampled_from([*ALLOWED_DTYPES, "object", "<f4"]),
    st.lists(st.integers(-2, 2**40), max_size=4),
    st.binary(max_size=64),
)
message_maps = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 1, 1, 2, "1", None]), "type": st.sampled_from([*MESSAGE_TYPES, "x"])},
    optional={f: values | array_maps for f in ("request_id", "tick", "actions", "code")},
).flatmap(
    lambda m: st.dictionaries(field_names, values | array_maps, max_size=8).map(lambda d: d | m)
)


def decodes_or_protocol_error(data: bytes) -> None:
    try:
        msg = decode(data)
    except ProtocolError as e:
        assert str(e)
        return
    assert isinstance(msg, tuple(MESSAGE_TYPES.values()))


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data):
    decodes_or_protocol_error(data)


@FUZZ
@given(values | message_maps)
def test_fuzz_random_msgpack_structures(obj):
    decodes_or_protocol_error(pack(obj))


@FUZZ
@given(
    st.sampled_from(SMALL_ENCODED),
    st.lists(
        st.tuples(st.sampled_from(["flip", "cut", "insert", "delete"]), st.integers(0, 2**16)),
        min_size=1,
        max_size=4,
    ),
    st.binary(min_size=1, max_size=4),
)
def test_fuzz_mutated_valid_messages(data, edits, junk):
    buf = bytearray(data)
    for op, pos in edits:
        i = pos % max(len(buf), 1)
        if op == "flip" and buf:
            buf[i] ^= 1 << (pos % 8)
        elif op == "cut":
            del buf[i:]
        elif op == "insert":
            buf[i:i] = junk
        elif buf:
            del buf[i]
    decodes_or_protocol_error(bytes(buf))


# ---- isolation ------------------------------------------------------------------------------


def test_imports_without_torch_and_never_pickles():
    code = "import sys, runtime.wire.protocol; assert 'torch' not in sys.modules, 'torch imported'"
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    source = Path(protocol.__file__).read_text()
    assert "pickle" not in source
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(
                node.module.split(".")[0] if node.module != "runtime.wire.keys" else "keys"
            )
    assert imported <= {"math", "re", "dataclasses", "typing", "msgpack", "numpy", "keys"}


# ---- shape arithmetic -----------------------------------------------------------------------

HUGE = st.sampled_from([2**31, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1])
shapes = st.lists(st.integers(0, 4) | HUGE, min_size=1, max_size=8)


@pytest.mark.parametrize("shape", [[0, 2**63], [2**63, 0], [0, 2**64 - 1, 3], [0, 2**40, 2**40]])
def test_zero_size_arrays_with_absurd_dimensions_are_protocol_errors(shape):
    obj = {"v": 2, "type": "chunk_reply", "request_id": 3, "tick": 0, "server_time_ms": 1.0,
           "model_id": "m", "actions": array_map("float32", shape, b"")}  # fmt: skip
    with pytest.raises(ProtocolError, match="over the limit") as info:
        decode(pack(obj))
    assert info.value.request_id == 3


@FUZZ
@given(st.sampled_from(ALLOWED_DTYPES), shapes, st.sampled_from([b"", b"\0" * 8]))
def test_fuzz_shape_and_size_arithmetic(dtype, shape, data):
    for field in ("actions", "prev_actions"):
        msg = {"v": 2, "type": "chunk_reply" if field == "actions" else "observation_request"}
        decodes_or_protocol_error(pack(msg | {field: array_map(dtype, shape, data)}))
    request = wire(observation_request(prev_actions=None))
    for key in ("observation.state", "observation.images.front", "observation.extra"):
        observation = request["observation"] | {key: array_map(dtype, shape, data)}
        decodes_or_protocol_error(pack(request | {"observation": observation}))
