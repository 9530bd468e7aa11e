"""``rtvla operator``: one operator message to a running controller's PULL socket.

``rtvla operator "move left" timeout_s=3`` overrides the instruction for 3 s, ``release=true``
hands it back, ``estop=true`` / ``estop=false`` engages / releases the e-stop. The message is
sent only once a controller is connected (ZMQ_IMMEDIATE), so "nobody listening" is an error
rather than a message silently queued forever (also what a controller with operator CURVE
keys looks like to an operator without the right ones: the handshake never completes).
``curve_keys_dir`` holds the controller's public ``server.key`` and this operator's
``client.key_secret`` (``runtime.curve``). Without CURVE keys a controller takes a release
or an instruction from a local operator only.
"""

from __future__ import annotations

import zmq
from omegaconf import DictConfig

from runtime.curve import ClientCurveKeys, secure_client
from runtime.robot.operator import operator_message
from runtime.wire.protocol import encode


def main(cfg: DictConfig) -> dict:
    message = operator_message(
        cfg.robot_id, cfg.instruction, cfg.timeout_s, cfg.release, cfg.estop, cfg.reason
    )
    curve = None if cfg.curve_keys_dir is None else ClientCurveKeys.from_dir(cfg.curve_keys_dir)
    send(cfg.address, encode(message), cfg.connect_timeout_s, curve)
    return {"sent": message.TYPE, "address": cfg.address, "robot_id": cfg.robot_id,
            **{k: v for k, v in vars(message).items() if k != "robot_id"}}  # fmt: skip


def send(address: str, data: bytes, timeout_s: float, curve: ClientCurveKeys | None = None) -> None:
    """Push ``data`` to the PULL socket at ``address``; error if none is there in time."""
    context = zmq.Context()
    socket = context.socket(zmq.PUSH)
    socket.setsockopt(zmq.IMMEDIATE, 1)  # queue only on a completed connection
    socket.setsockopt(zmq.LINGER, round(timeout_s * 1000))
    try:
        if curve is not None:
            secure_client(socket, curve)
        socket.connect(address)
        if not socket.poll(round(timeout_s * 1000), zmq.POLLOUT):
            raise ValueError(
                f"no controller is listening at address={address} (waited {timeout_s:g} s): "
                "start `rtvla run operator_address=...` there, or fix address="
            )
        socket.send(data)
    finally:
        socket.close()
        context.term()
