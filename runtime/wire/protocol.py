"""The wire protocol between robot-side controllers and the policy server.

Depends on numpy and msgpack only, so a robot-side process runs without torch. Only plain
msgpack values and raw array buffers travel: no Python object serialization of any kind.

Every message is one msgpack map {"v": PROTOCOL_VERSION, "type": <TYPE>, <fields>...}. A
numpy array travels as a tagged map {"__ndarray__": True, "dtype": <name>, "shape": [...],
"data": <bin>} holding the raw little-endian, C-ordered buffer; only ALLOWED_DTYPES are
accepted.

Field policy: every field of a message type must be present, except those with a default
(shown in the dataclass), which may be left out; `encode` leaves out those at a None default.
Unknown fields are rejected: adding a field bumps PROTOCOL_VERSION, and both ends must be
upgraded together, except an optional field that only new kinds of peer set (then older ends
never see it): `MetadataReply.sampling`, sent only by servers of policies that are not flow
models (`runtime.serving.lerobot_policy`).

`encode` and `decode` validate every field (type, dtype, shape, value range, size) against a
`Limits`; anything wrong raises `ProtocolError`, which names the field, what was expected and
what came, and carries an error `code` and, when it could be read, the `request_id`, so a
server can answer with an `ErrorReply` and keep serving. `decode` raises nothing else for any
byte string.
"""

import math
import re
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar, Self

import msgpack
import numpy as np

from runtime.wire.keys import IMAGES, STATE

PROTOCOL_VERSION = 2  # 2: requests name their sampling method, not the executor
SUPPORTED_VERSIONS = (2,)

ALLOWED_DTYPES = ("uint8", "bool", "int32", "int64", "float16", "float32", "float64")
SAMPLING_METHODS = ("plain", "guided:exp", "guided:linear", "guided:ones", "guided:zeros", "prefix")
"""plain Euler; RTC-guided (ΠGDM) under prefix_weights(schedule); training-time RTC prefix.
Besides these, ``bid:<N>``: Bidirectional Decoding over N samples (``sampling_is_known``)."""
MAX_BID_SAMPLES = 64  # N of "bid:<N>": samples drawn per request, at most
_BID_RE = re.compile(r"bid:([1-9][0-9]*)")
ERROR_CODES = ("bad_request", "version", "unsupported", "internal")
ARRAY_TAG = "__ndarray__"

MAX_MESSAGE_BYTES = 32 * 2**20
MAX_ARRAY_BYTES = 16 * 2**20
MAX_IMAGE_SIDE = 1024
MAX_CHUNK_LENGTH = 1024
MAX_ACTION_DIM = 256
MAX_FEATURES = 64
MAX_NAME_LEN = 128
MAX_TEXT_LEN = 4096
MAX_HISTOGRAM_BINS = 1024
MAX_NDIM = 8
MAX_INT = 2**63 - 1

# Names (robot, model ids, sampling methods, feature keys): ASCII letters, digits and _ . : / @ + -
_NAME_RE = re.compile(r"[A-Za-z0-9_.:/@+\-]+")


def sampling_is_known(name: str) -> bool:
    """Whether ``name`` is a sampling method of this protocol version: one of
    ``SAMPLING_METHODS`` or ``bid:<N>`` with 1 <= N <= MAX_BID_SAMPLES."""
    if name in SAMPLING_METHODS:
        return True
    match = _BID_RE.fullmatch(name)
    return match is not None and int(match.group(1)) <= MAX_BID_SAMPLES


def bid_samples(name: str) -> int | None:
    """N of a ``bid:<N>`` sampling method, None for the others."""
    match = _BID_RE.fullmatch(name)
    return None if match is None else int(match.group(1))


class ProtocolError(ValueError):
    """A message that cannot be encoded or decoded.

    code is one of ERROR_CODES ("version" for an unsupported protocol version, else
    "bad_request"); request_id is the offending message's id when it could be read.
    """

    def __init__(self, message: str, code: str = "bad_request", request_id: int | None = None):
        super().__init__(message)
        self.code = code
        self.request_id = request_id


@dataclass(frozen=True)
class Limits:
    """Size limits applied by `encode` and `decode`; the defaults are the module constants."""

    max_message_bytes: int = MAX_MESSAGE_BYTES  # a whole encoded message
    max_array_bytes: int = MAX_ARRAY_BYTES  # one array's raw buffer
    max_image_side: int = MAX_IMAGE_SIDE  # height and width of observation.images.*
    max_chunk_length: int = MAX_CHUNK_LENGTH  # rows of an action chunk (H, or n previous)
    max_action_dim: int = MAX_ACTION_DIM  # columns of an action chunk
    max_features: int = MAX_FEATURES  # entries of an observation or a feature spec
    max_name_len: int = MAX_NAME_LEN  # ids and feature keys, in characters
    max_text_len: int = MAX_TEXT_LEN  # instructions, reasons, error messages, in characters
    max_histogram_bins: int = MAX_HISTOGRAM_BINS  # latency histogram bins


DEFAULT_LIMITS = Limits()


# ---- messages -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, eq=False)
class ObservationRequest:
    """Controller -> server: an observation to answer with an action chunk.

    observation maps feature keys ("observation.state" float32 (S,), "observation.images.<cam>"
    uint8 (H, W, 3), other "observation.*" arrays) to arrays. prev_actions (n, A) float32 are
    the previous chunk's unexecuted actions (for RTC), delay the estimated inference delay d
    and execution_horizon s, both in controller ticks. sampling names one of
    ``SAMPLING_METHODS`` (the server answers others with error code "unsupported").
    """

    TYPE: ClassVar[str] = "observation_request"
    request_id: int
    robot_id: str
    tick: int  # the controller tick the observation was taken at
    observation: dict[str, np.ndarray]
    instruction: str
    delay: int
    execution_horizon: int
    sampling: str  # how to draw the chunk: "plain", "guided:<schedule>" (RTC), "prefix", "bid:<N>"
    prev_actions: np.ndarray | None = None
    seed: int | None = None

    @classmethod
    def _parse(cls, f: dict[str, Any], lim: Limits) -> Self:
        prev = f.get("prev_actions")
        return cls(
            request_id=_int("request_id", f["request_id"]),
            robot_id=_name("robot_id", f["robot_id"], lim),
            tick=_int("tick", f["tick"]),
            observation=_observation("observation", f["observation"], lim),
            instruction=_text("instruction", f["instruction"], lim),
            delay=_int("delay", f["delay"], hi=lim.max_chunk_length),
            execution_horizon=_int(
                "execution_horizon", f["execution_horizon"], hi=lim.max_chunk_length
            ),
            sampling=_name("sampling", f["sampling"], lim),
            prev_actions=None if prev is None else _actions("prev_actions", prev, lim, min_rows=0),
            seed=None if f.get("seed") is None else _int("seed", f["seed"]),
        )


@dataclass(frozen=True, kw_only=True, eq=False)
class ChunkReply:
    """Server -> controller: an action chunk (H, A) float32 aligned to the observation tick."""

    TYPE: ClassVar[str] = "chunk_reply"
    request_id: int
    tick: int  # the observation tick the chunk's first action belongs to
    actions: np.ndarray
    server_time_ms: float  # inference time on the server
    model_id: str

    @classmethod
    def _parse(cls, f: dict[str, Any], lim: Limits) -> Self:
        return cls(
            request_id=_int("request_id", f["request_id"]),
            tick=_int("tick", f["tick"]),
            actions=_actions("actions", f["actions"], lim, min_rows=1),
            server_time_ms=_float("server_time_ms", f["server_time_ms"], lo=0.0),
            model_id=_name("model_id", f["model_id"], lim),
        )


@dataclass(frozen=True, kw_only=True, eq=False)
class ErrorReply:
    """Server -> controller: a request could not be served; message says what to do."""

    TYPE: ClassVar[str] = "error_reply"
    request_id: int | None
    code: str  # one of ERROR_CODES
    message: str

    @classmethod
    def _parse(cls, f: dict[str, Any], lim: Limits) -> Self:
        code = f["code"]
        if not isinstance(code, str) or code not in ERROR_CODES:
            raise ProtocolError(f"code must be one of {ERROR_CODES}, got {_describe(code)}")
        rid = f["request_id"]
        return cls(
            request_id=None if rid is None else _int("request_id", rid),
            code=code,
            message=_text("message", f["message"], lim, min_len=1),
        )


@dataclass(frozen=True, kw_only=True, eq=False)
class MetadataRequest:
    """Controller -> server: ask for the server's health and model metadata."""

    TYPE: ClassVar[str] = "metadata_request"
    request_id: int

    @classmethod
    def _parse(cls, f: dict[str, Any], lim: Limits) -> Self:
        return cls(request_id=_int("request_id", f["request_id"]))


@dataclass(frozen=True, kw_only=True, eq=False)
class MetadataReply:
    """Server -> controller: health and model metadata.

    features maps a feature key to {"dtype": <name>, "shape": (..)}. The latency histogram
    has K bins: latency_edges_ms (K + 1,) float64 increasing, latency_counts (K,) int64.
    """

    TYPE: ClassVar[str] = "metadata_reply"
    request_id: int
    model_id: str
    features: dict[str, dict[str, Any]]
    chunk_length: int  # H
    action_dim: int
    fps: float
    latency_edges_ms: np.ndarray
    latency_counts: np.ndarray
    uptime_s: float
    requests_served: int
    # The sampling methods the policy serves; None (or absent, from older servers): all of
    # this version's, as a flow model does. A policy that is not one serves ("plain",).
    sampling: tuple[str, ...] | None = None
    # The joint names of observation.state and action the policy was trained on (dataset
    # feature names, e.g. "shoulder_pan.pos"), so a controller refuses a robot whose joints
    # differ in order or units; None (or absent, from older servers): unknown.
    joint_names: dict[str, tuple[str, ...]] | None = None
    # Earlier ticks the policy also reads, as offsets (< 0, oldest first) from the request's
    # tick: every request then carries, for each feature "<key>.history", the driver's <key>
    # at those ticks stacked (T, ...) (clamped to the run's first tick, as training clamps to
    # the episode's first frame). None (or absent, from older servers): the current tick only.
    observation_history: tuple[int, ...] | None = None

    @classmethod
    def _parse(cls, f: dict[str, Any], lim: Limits) -> Self:
        k = lim.max_histogram_bins
        edges = _array("latency_edges_ms", f["latency_edges_ms"], lim, "float64", ndim=1)
        counts = _array("latency_counts", f["latency_counts"], lim, "int64", ndim=1)
        if not 1 <= counts.shape[0] <= k or edges.shape[0] != counts.shape[0] + 1:
            raise ProtocolError(
                f"latency histogram needs 1 to {k} bins with one more edge than counts, got "
                f"{edges.shape[0]} edges and {counts.shape[0]} counts"
            )
        if not np.all(np.diff(edges) > 0) or np.any(counts < 0):
            raise ProtocolError("latency_edges_ms must increase and latency_counts be >= 0")
        return cls(
            request_id=_int("request_id", f["request_id"]),
            model_id=_name("model_id", f["model_id"], lim),
            features=_features("features", f["features"], lim),
            chunk_length=_int("chunk_length", f["chunk_length"], 1, lim.max_chunk_length),
            action_dim=_int("action_dim", f["action_dim"], 1, lim.max_action_dim),
            fps=_float("fps", f["fps"], lo=0.0, open_lo=True),
            latency_edges_ms=edges,
            latency_counts=counts,
            uptime_s=_float("uptime_s", f["uptime_s"], lo=0.0),
            requests_served=_int("requests_served", f["requests_served"]),
            sampling=_sampling_list(f.get("sampling"), lim),
            joint_names=_joint_names(f.get("joint_names"), lim),
            observation_history=_history(f.get("observation_history"), lim),
        )


MAX_HISTORY = 64  # earlier ticks a policy may read (MetadataReply.observation_history)


def _history(v: Any, lim: Limits) -> tuple[int, ...] | None:
    """MetadataReply.observation_history: None, or 1 to MAX_HISTORY increasing tick offsets,
    each in [-lim.max_chunk_length * 4, -1]."""
    if v is None:
        return None
    if not isinstance(v, list | tuple) or not 1 <= len(v) <= MAX_HISTORY:
        raise ProtocolError(
            f"observation_history must list 1 to {MAX_HISTORY} tick offsets, got {_describe(v)}"
        )
    offsets = tuple(_int("observation_history", o, -4 * lim.max_chunk_length, -1) for o in v)
    if list(offsets) != sorted(set(offsets)):
        raise ProtocolError(f"observation_history must increase (oldest first), got {offsets}")
    return offsets


def _joint_names(v: Any, lim: Limits) -> dict[str, tuple[str, ...]] | None:
    """MetadataReply.joint_names: None, or feature key -> 1 to max_action_dim joint names."""
    if v is None:
        return None
    if not isinstance(v, dict) or not 1 <= len(v) <= lim.max_features:
        raise ProtocolError(f"joint_names must map feature keys to names, got {_describe(v)}")
    out = {}
    for key, names in v.items():
        key = _name("joint_names key", key, lim)
        if not isinstance(names, list | tuple) or not 1 <= len(names) <= lim.max_action_dim:
            raise ProtocolError(
                f"joint_names[{key!r}] must list 1 to {lim.max_action_dim} names, got "
                f"{_describe(names)}"
            )
        out[key] = tuple(_name(f"joint_names[{key!r}]", name, lim) for name in names)
    return out


def _sampling_list(v: Any, lim: Limits) -> tuple[str, ...] | None:
    """MetadataReply.sampling: None, or 1 to 16 known sampling method names."""
    if v is None:
        return None
    if not isinstance(v, list | tuple) or not 1 <= len(v) <= 16:
        raise ProtocolError(f"sampling must be a list of 1 to 16 method names, got {_describe(v)}")
    names = tuple(_name("sampling", name, lim) for name in v)
    unknown = [name for name in names if not sampling_is_known(name)]
    if unknown:
        raise ProtocolError(f"sampling lists unknown methods {unknown}")
    return names


@dataclass(frozen=True, kw_only=True, eq=False)
class OperatorInstruction:
    """Operator -> controller: override the instruction (timeout_s = 0: until released)."""

    TYPE: ClassVar[str] = "operator_instruction"
    robot_id: str
    instruction: str
    timeout_s: float
    release: bool  # True drops the override and returns to the policy's own instruction

    @classmethod
    def _parse(cls, f: dict[str, Any], lim: Limits) -> Self:
        return cls(
            robot_id=_name("robot_id", f["robot_id"], lim),
            instruction=_text("instruction", f["instruction"], lim),
            timeout_s=_float("timeout_s", f["timeout_s"], lo=0.0),
            release=_bool("release", f["release"]),
        )


@dataclass(frozen=True, kw_only=True, eq=False)
class EStop:
    """Operator -> controller: engage (True) or release (False) the emergency stop."""

    TYPE: ClassVar[str] = "estop"
    robot_id: str
    reason: str
    engage: bool

    @classmethod
    def _parse(cls, f: dict[str, Any], lim: Limits) -> Self:
        return cls(
            robot_id=_name("robot_id", f["robot_id"], lim),
            reason=_text("reason", f["reason"], lim),
            engage=_bool("engage", f["engage"]),
        )


Message = (
    ObservationRequest
    | ChunkReply
    | ErrorReply
    | MetadataRequest
    | MetadataReply
    | OperatorInstruction
    | EStop
)
MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        ObservationRequest,
        ChunkReply,
        ErrorReply,
        MetadataRequest,
        MetadataReply,
        OperatorInstruction,
        EStop,
    )
}


# ---- encode / decode ------------------------------------------------------------------------


def encode(msg: Message, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Validate msg and pack it; raises ProtocolError on any invalid field."""
    cls = type(msg)
    if MESSAGE_TYPES.get(getattr(cls, "TYPE", None)) is not cls:
        raise ProtocolError(f"cannot encode {cls.__name__}: not one of {list(MESSAGE_TYPES)}")
    checked = cls._parse({f.name: getattr(msg, f.name) for f in fields(cls)}, limits)
    wire = {"v": PROTOCOL_VERSION, "type": cls.TYPE}
    wire.update({
        f.name: _to_wire(getattr(checked, f.name)) for f in fields(cls)
        if not (f.default is None and getattr(checked, f.name) is None)
    })  # fmt: skip  # an optional field left at None is left out: older ends never see it
    data = msgpack.packb(wire, use_bin_type=True)
    if len(data) > limits.max_message_bytes:
        raise ProtocolError(
            f"encoded {cls.TYPE} is {len(data)} bytes, over the limit of "
            f"{limits.max_message_bytes}: send smaller images or raise Limits.max_message_bytes "
            "on both ends"
        )
    return data


def decode(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Unpack and validate one message; raises ProtocolError (only) for any bad input."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"expected bytes, got {_describe(data)}")
    size = memoryview(data).nbytes
    if size > limits.max_message_bytes:
        raise ProtocolError(
            f"message is {size} bytes, over the limit of {limits.max_message_bytes}: "
            "send smaller images or raise Limits.max_message_bytes on both ends"
        )
    text_bytes = 4 * max(limits.max_text_len, limits.max_name_len)  # UTF-8: <= 4 bytes a char
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_bin_len=limits.max_array_bytes,
            max_str_len=text_bytes,
            max_array_len=64,
            max_map_len=max(64, limits.max_features),
            max_ext_len=0,
        )
    except Exception as e:  # msgpack's errors, and whatever else a hostile buffer provokes
        raise ProtocolError(f"not a valid msgpack message ({_short(str(e))})") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"a message must be a msgpack map, got {_describe(obj)}")
    rid = obj.get("request_id")
    rid = (
        rid if isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid <= MAX_INT else None
    )
    try:
        return _decode_map(obj, limits)
    except ProtocolError as e:
        e.request_id = rid
        raise
    except Exception as e:  # a check this module lacks: still the caller's ProtocolError only
        raise ProtocolError(
            f"invalid message ({type(e).__name__}: {_short(str(e))})", request_id=rid
        ) from None


def _decode_map(obj: dict, limits: Limits) -> Message:
    if "v" not in obj:
        raise ProtocolError("message has no protocol version field 'v'")
    version = obj["v"]
    if (
        isinstance(version, bool)
        or not isinstance(version, int)
        or version not in SUPPORTED_VERSIONS
    ):
        raise ProtocolError(
            f"protocol version {_describe(version)} is not supported; this end speaks "
            f"{SUPPORTED_VERSIONS}: upgrade the older of client and server",
            code="version",
        )
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
        raise ProtocolError(f"unknown message type {_describe(kind)}; known: {list(MESSAGE_TYPES)}")
    cls = MESSAGE_TYPES[kind]
    known = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING}
    body = {k: v for k, v in obj.items() if k not in ("v", "type")}
    unknown = [k for k in body if k not in known]
    if unknown:
        raise ProtocolError(
            f"{kind} has unknown fields {_short(repr(unknown))}; protocol version "
            f"{PROTOCOL_VERSION} knows {sorted(known)}"
        )
    missing = sorted(required - body.keys())
    if missing:
        raise ProtocolError(f"{kind} is missing fields {missing}")
    return cls._parse({k: _from_wire(k, v, limits) for k, v in body.items()}, limits)


def _to_wire(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        le = value.astype(value.dtype.newbyteorder("<"), copy=False)
        data = le.tobytes(order="C")
        return {
            ARRAY_TAG: True,
            "dtype": value.dtype.name,
            "shape": list(value.shape),
            "data": data,
        }
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    return value


def _from_wire(name: str, value: Any, limits: Limits) -> Any:
    """Turn tagged array maps (a field, or a field's map values) into arrays."""
    if _is_array_map(value):
        return _decode_array(name, value, limits)
    if isinstance(value, dict):
        return {
            k: _decode_array(f"{name}[{_short(repr(k))}]", v, limits) if _is_array_map(v) else v
            for k, v in value.items()
        }
    return value


def _is_array_map(value: Any) -> bool:
    return isinstance(value, dict) and ARRAY_TAG in value


def _decode_array(name: str, m: dict, limits: Limits) -> np.ndarray:
    if set(m) != {ARRAY_TAG, "dtype", "shape", "data"} or m[ARRAY_TAG] is not True:
        raise ProtocolError(
            f"{name} must be an array map {{{ARRAY_TAG!r}: true, 'dtype', 'shape', 'data'}}, "
            f"got keys {_short(repr(sorted(map(str, m))))}"
        )
    dtype, shape, data = m["dtype"], m["shape"], m["data"]
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise ProtocolError(f"{name} has dtype {_describe(dtype)}; allowed: {ALLOWED_DTYPES}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_NDIM
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise ProtocolError(
            f"{name} shape must be a list of at most {MAX_NDIM} non-negative ints, "
            f"got {_describe(shape)}"
        )
    if not isinstance(data, bytes):
        raise ProtocolError(f"{name} data must be msgpack bin, got {_describe(data)}")
    itemsize = np.dtype(dtype).itemsize
    nbytes = math.prod(shape) * itemsize
    # Bound the shape as if every zero dimension were one: a (0, 2**63) array holds no bytes,
    # but numpy cannot even describe it, and (0, 2**40, 2**40) overflows its index arithmetic.
    if math.prod(max(n, 1) for n in shape) * itemsize > limits.max_array_bytes:
        raise ProtocolError(
            f"{name} of shape {_short(repr(tuple(shape)))} {dtype} is over the limit of "
            f"{limits.max_array_bytes} bytes (zero dimensions counted as one)"
        )
    if len(data) != nbytes:
        raise ProtocolError(
            f"{name} declares shape {tuple(shape)} {dtype} ({nbytes} bytes) but carries "
            f"{len(data)} bytes"
        )
    if dtype == "bool" and nbytes and np.frombuffer(data, np.uint8).max() > 1:
        raise ProtocolError(f"{name} is bool but holds bytes other than 0 and 1")
    wire = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
    return wire.astype(dtype)  # a writable copy in native byte order


# ---- field validators -----------------------------------------------------------------------


def _int(name: str, v: Any, lo: int = 0, hi: int = MAX_INT) -> int:
    if isinstance(v, bool | np.bool_) or not isinstance(v, int | np.integer):
        raise ProtocolError(f"{name} must be an int, got {_describe(v)}")
    if not lo <= int(v) <= hi:
        raise ProtocolError(f"{name} must lie in [{lo}, {hi}], got {int(v)}")
    return int(v)


def _float(name: str, v: Any, lo: float, open_lo: bool = False) -> float:
    if isinstance(v, bool | np.bool_) or not isinstance(v, int | float | np.integer | np.floating):
        raise ProtocolError(f"{name} must be a number, got {_describe(v)}")
    x = float(v)
    if not math.isfinite(x) or x < lo or (open_lo and x == lo):
        bound = f"> {lo}" if open_lo else f">= {lo}"
        raise ProtocolError(f"{name} must be finite and {bound}, got {x}")
    return x


def _bool(name: str, v: Any) -> bool:
    if not isinstance(v, bool | np.bool_):
        raise ProtocolError(f"{name} must be a bool, got {_describe(v)}")
    return bool(v)


def _text(name: str, v: Any, lim: Limits, min_len: int = 0) -> str:
    if not isinstance(v, str):
        raise ProtocolError(f"{name} must be a string, got {_describe(v)}")
    if not min_len <= len(v) <= lim.max_text_len:
        raise ProtocolError(
            f"{name} must hold {min_len} to {lim.max_text_len} characters, got {len(v)}"
        )
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(f"{name} is not valid unicode (lone surrogates)") from None
    return v


def _name(name: str, v: Any, lim: Limits) -> str:
    if not isinstance(v, str) or len(v) > lim.max_name_len or not _NAME_RE.fullmatch(v):
        raise ProtocolError(
            f"{name} must be 1 to {lim.max_name_len} characters from A-Z a-z 0-9 _ . : / @ + -, "
            f"got {_describe(v)}"
        )
    return v


def _array(
    name: str, v: Any, lim: Limits, dtype: str | None = None, ndim: int | None = None
) -> np.ndarray:
    """An ndarray of an allowed dtype (dtype if given), rank ndim, within the size limit."""
    if not isinstance(v, np.ndarray):
        raise ProtocolError(f"{name} must be a numpy array, got {_describe(v)}")
    expected = (dtype,) if dtype else ALLOWED_DTYPES
    if v.dtype.name not in expected:
        raise ProtocolError(
            f"{name} has dtype {v.dtype.name}, expected {' or '.join(expected)}: cast it with "
            f".astype(np.{expected[0]})"
        )
    if v.ndim > MAX_NDIM or (ndim is not None and v.ndim != ndim):
        raise ProtocolError(f"{name} must have {ndim or f'<= {MAX_NDIM}'} dims, got {v.shape}")
    if v.nbytes > lim.max_array_bytes:
        raise ProtocolError(
            f"{name} {v.shape} is {v.nbytes} bytes, over the limit of {lim.max_array_bytes}"
        )
    if v.dtype.kind == "f" and not np.isfinite(v).all():
        raise ProtocolError(f"{name} holds NaN or infinite values")
    return v


def _actions(name: str, v: Any, lim: Limits, min_rows: int) -> np.ndarray:
    """float32 (rows, A), finite, min_rows <= rows <= max_chunk_length, 1 <= A."""
    a = _array(name, v, lim, "float32", ndim=2)
    rows, dim = a.shape
    if not min_rows <= rows <= lim.max_chunk_length or not 1 <= dim <= lim.max_action_dim:
        raise ProtocolError(
            f"{name} has shape {a.shape}, expected (rows, A) with {min_rows} <= rows <= "
            f"{lim.max_chunk_length} and 1 <= A <= {lim.max_action_dim}"
        )
    return a


def _observation(name: str, v: Any, lim: Limits) -> dict[str, np.ndarray]:
    if not isinstance(v, dict) or not 1 <= len(v) <= lim.max_features:
        raise ProtocolError(
            f"{name} must map 1 to {lim.max_features} feature keys to arrays, got {_describe(v)}"
        )
    out = {}
    for key, arr in v.items():
        if not isinstance(key, str) or not key.startswith("observation."):
            raise ProtocolError(f"{name} keys must start with 'observation.', got {_describe(key)}")
        field = f"{name}[{_name('observation key', key, lim)!r}]"
        if key.startswith(IMAGES):
            img = _array(field, arr, lim, "uint8", ndim=3)
            side = lim.max_image_side
            if img.shape[2] != 3 or not (1 <= img.shape[0] <= side and 1 <= img.shape[1] <= side):
                raise ProtocolError(
                    f"{field} has shape {img.shape}, expected (H, W, 3) with 1 <= H, W <= {side}"
                )
        elif key == STATE:
            _array(field, arr, lim, "float32", ndim=1)
        else:
            _array(field, arr, lim)
        out[key] = arr
    return out


def _features(name: str, v: Any, lim: Limits) -> dict[str, dict[str, Any]]:
    if not isinstance(v, dict) or len(v) > lim.max_features:
        raise ProtocolError(f"{name} must map at most {lim.max_features} keys, got {_describe(v)}")
    out = {}
    for key, spec in v.items():
        field = f"{name}[{_name('feature key', key, lim)!r}]"
        if not isinstance(spec, dict) or set(spec) != {"dtype", "shape"}:
            raise ProtocolError(f"{field} must be {{'dtype', 'shape'}}, got {_describe(spec)}")
        dtype, shape = spec["dtype"], spec["shape"]
        if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
            raise ProtocolError(f"{field} has dtype {_describe(dtype)}; allowed: {ALLOWED_DTYPES}")
        if not isinstance(shape, list | tuple) or len(shape) > MAX_NDIM:
            raise ProtocolError(f"{field} shape must be a list of ints, got {_describe(shape)}")
        out[key] = {"dtype": dtype, "shape": tuple(_int(f"{field} shape", n) for n in shape)}
    return out


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(v: Any) -> str:
    """A short description of a value for error messages (never the whole value)."""
    if isinstance(v, np.ndarray):
        return f"array {v.dtype.name} {v.shape}"
    if isinstance(v, list) and len(v) <= MAX_NDIM and all(isinstance(x, int | float) for x in v):
        return f"list {v!r}"
    if isinstance(v, dict):
        return f"map with keys {_short(repr([_short(repr(k), 20) for k in list(v)[:8]]))}"
    if isinstance(v, bytes | bytearray | list):
        return f"{type(v).__name__} of length {len(v)}"
    return f"{type(v).__name__} {_short(repr(v))}"
