"""The operator: `rtvla operator` messages, overrides reaching the low level within one chunk,
e-stop holding the robot, scripted overrides in `rtvla run` and their log and plot."""

import json

import numpy as np
import pytest
import zmq

from runtime.wire.protocol import EStop, OperatorInstruction, decode, encode


def test_operator_command_sends_messages_a_pull_socket_receives(tmp_path, capsys):
    from runtime.commands.cli import main

    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.bind("tcp://127.0.0.1:*")
    address = pull.LAST_ENDPOINT.decode()
    common = [f"address={address}", "robot_id=robot0", f"hydra.run.dir={tmp_path}"]
    try:
        main(["operator", "don't move left", "timeout_s=3", *common])
        main(["operator", "release=true", *common])
        main(["operator", "estop=true", *common])
        received = [decode(pull.recv()) for _ in range(3) if pull.poll(5000)]
    finally:
        pull.close(linger=0)
        context.term()
    assert isinstance(received[0], OperatorInstruction)
    assert vars(received[0]) == {"robot_id": "robot0", "instruction": "don't move left",
                                 "timeout_s": 3.0, "release": False}  # fmt: skip
    assert isinstance(received[1], OperatorInstruction) and received[1].release
    assert isinstance(received[2], EStop) and received[2].engage
    out = capsys.readouterr().out.splitlines()
    printed = [json.loads(line) for line in out if line.startswith("{")]
    assert printed[0]["sent"] == "operator_instruction" and printed[2]["sent"] == "estop"

    with pytest.raises(SystemExit) as exit_info:  # nobody listening: a clear error, exit 2
        main(["operator", "x", "address=tcp://127.0.0.1:1", "connect_timeout_s=0.2", *common[1:]])
    assert exit_info.value.code == 2
    assert "no controller is listening" in capsys.readouterr().err


def synthetic_controller(driver, **options):
    """A controller running the synthetic flow policy in-process (server=local:synthetic),
    with the requests it sends recorded in ``controller.sent``."""
    from runtime.robot.client import LocalPolicyClient
    from runtime.robot.clock import SimClock
    from runtime.robot.controller import Controller
    from runtime.robot.executors import make_executor
    from runtime.serving.sampling import FlowChunkPolicy
    from runtime.serving.synthetic import GaussianChunkModel

    model = GaussianChunkModel(chunk_length=10, action_dim=2, fps=30.0)
    client = LocalPolicyClient(FlowChunkPolicy(model, num_steps=2))
    sent = []
    submit = client.submit
    client.submit = lambda request: (sent.append(request), submit(request))
    executor = make_executor("rtc", 10, execution_horizon=4, initial_delay=2)
    ctl = Controller(driver, client, executor, SimClock(30), instruction="reach the red target",
                     inference_delay_ticks=2, seed=0, **options)  # fmt: skip
    ctl.sent = sent
    return ctl, client


def test_an_override_reaches_the_low_level_within_one_chunk(jump_driver):
    from runtime.robot.operator import scripted_operator

    script = scripted_operator([{"tick": 13, "instruction": "move left", "timeout_s": 0.0}],
                               "robot")  # fmt: skip
    ctl, client = synthetic_controller(jump_driver, operator_script=script)
    log = ctl.run(40)
    client.close()
    after = [r for r in ctl.sent if r.tick >= 13]
    assert all(r.instruction == "reach the red target" for r in ctl.sent if r.tick < 13)
    assert after[0].instruction == "move left"
    assert after[0].tick - 13 <= 4  # the next request: at most one execution horizon later
    assert all(r.instruction == "move left" for r in after)  # until released
    assert (log.ticks["instruction_source"][13:] == "operator").all()
    assert (log.ticks["instruction"][:13] == "reach the red target").all()


def test_estop_holds_the_robot_until_released(jump_driver):
    from runtime.robot.operator import scripted_operator

    script = scripted_operator([{"tick": 10, "estop": True}, {"tick": 25, "estop": False}],
                               "robot")  # fmt: skip
    ctl, client = synthetic_controller(jump_driver, operator_script=script)
    log = ctl.run(40)
    client.close()
    commands = np.array(jump_driver.commands)  # (40, 2): one command per tick
    assert len(commands) == 40
    np.testing.assert_array_equal(commands[10:25], np.repeat(commands[9:10], 15, axis=0))
    assert (log.ticks["hold_reason"][10:25] == "estop").all()
    assert log.ticks["planned"][30:].all()  # released: a fresh chunk, then moving again


def test_run_command_applies_its_operator_script_and_plots_who_chose(tmp_path):
    from hydra import compose, initialize_config_dir

    from runtime.commands.cli import CONFIG_DIR
    from runtime.commands.run import main

    overrides = [
        "task=reach", "executor=naive", "executor.execution_horizon=4", "episodes=1",
        "max_ticks=30", "driver.render=false", "synthetic.chunk_length=12",
        "synthetic.num_steps=2", f"output_dir={tmp_path}",
        "operator_script=[{tick: 10, instruction: 'move left', timeout_s: 0.3}]",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="run", overrides=overrides)
    figures = main(cfg)
    assert figures["ticks"] == 30 and figures["high_level"] is None
    with np.load(tmp_path / "episode_000.npz", allow_pickle=False) as log:
        source, instruction = log["ticks.instruction_source"], log["ticks.instruction"]
    assert (source[10:19] == "operator").all() and (instruction[10:19] == "move left").all()
    assert source[9] == source[19] == "task"
    assert (tmp_path / "instructions.png").stat().st_size > 0


# ---- who may send what ----------------------------------------------------------------------


def operator_controller(**options):
    from runtime.robot.client import LocalPolicyClient
    from runtime.robot.clock import SimClock
    from runtime.robot.controller import Controller
    from runtime.robot.executors import make_executor
    from runtime.robot.testing import ConstantPolicy, JumpDriver

    client = LocalPolicyClient(ConstantPolicy(8, 2))
    naive = make_executor("naive", 8, execution_horizon=4, initial_delay=1)
    ctl = Controller(JumpDriver(), client, naive, SimClock(30), inference_delay_ticks=1,
                     operator_address="tcp://127.0.0.1:*", **options)  # fmt: skip
    return ctl, client


def delivered(ctl, frames_list, keys=None) -> list:
    """Push each message (a list of frames) to ``ctl``'s operator socket; what it accepts."""
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.linger = 0
    if keys is not None:
        from runtime.curve import secure_client

        secure_client(push, keys)
    push.connect(ctl.operator_endpoint)
    try:
        for frames in frames_list:
            push.send_multipart(frames)
        accepted = []
        while ctl._operator.poll(500):
            accepted += ctl._read_operator_socket()
        return accepted
    finally:
        push.close()
        context.term()


ENGAGE = encode(EStop(robot_id="robot", reason="r", engage=True))
RELEASE = encode(EStop(robot_id="robot", reason="r", engage=False))
OVERRIDE = encode(OperatorInstruction(robot_id="robot", instruction="stop", timeout_s=0.0,
                                      release=False))  # fmt: skip


def test_hostile_operator_bytes_are_dropped_and_the_controller_runs_on():
    from runtime.wire.hostile import HOSTILE_KINDS, hostile_message

    rng = np.random.default_rng(0)
    kinds = [k for k in HOSTILE_KINDS if k != "oversize_frames"]
    hostile = [hostile_message(kind, rng) for kind in kinds for _ in range(5)]
    hostile.append([ENGAGE, ENGAGE])  # two frames
    ctl, client = operator_controller()
    try:
        accepted = delivered(ctl, [*hostile, [ENGAGE]])
        # frames over the size limit: ZMQ drops them and the sender's connection
        assert delivered(ctl, [hostile_message("oversize_frames", rng)]) == []
        log = ctl.run(5)
    finally:
        ctl.close()
        client.close()
    assert [type(m) for m in accepted] == [EStop]
    assert len(log.ticks["tick"]) == 5


def test_without_curve_a_remote_operator_may_engage_but_not_release(monkeypatch):
    import runtime.robot.controller as controller

    ctl, client = operator_controller()
    try:
        assert len(delivered(ctl, [[ENGAGE], [RELEASE], [OVERRIDE]])) == 3  # local: all
        monkeypatch.setattr(controller, "_peer", lambda frame: "192.0.2.7")
        accepted = delivered(ctl, [[ENGAGE], [RELEASE], [OVERRIDE]])
    finally:
        ctl.close()
        client.close()
    assert [(type(m), getattr(m, "engage", None)) for m in accepted] == [(EStop, True)]


def test_operator_curve_keys_admit_listed_operators_only(tmp_path, monkeypatch):
    import runtime.robot.controller as controller
    from runtime.commands.operator import send
    from runtime.curve import ClientCurveKeys, CurveKeys, generate_keypair

    generate_keypair(tmp_path / "robot", "server")
    generate_keypair(tmp_path / "robot" / "clients", "alice")
    generate_keypair(tmp_path / "mallory", "client")
    (tmp_path / "alice").mkdir()
    for name in ("server.key",):
        (tmp_path / "alice" / name).write_bytes((tmp_path / "robot" / name).read_bytes())
        (tmp_path / "mallory" / name).write_bytes((tmp_path / "robot" / name).read_bytes())
    secret = (tmp_path / "robot" / "clients" / "alice.key_secret").read_bytes()
    (tmp_path / "alice" / "client.key_secret").write_bytes(secret)
    ctl, client = operator_controller(operator_curve=CurveKeys.from_dir(tmp_path / "robot"))
    monkeypatch.setattr(controller, "_peer", lambda frame: "192.0.2.7")  # remote, but known
    try:
        alice = ClientCurveKeys.from_dir(tmp_path / "alice")
        assert [m.engage for m in delivered(ctl, [[RELEASE]], alice)] == [False]
        mallory = ClientCurveKeys.from_dir(tmp_path / "mallory")
        with pytest.raises(ValueError, match="no controller is listening"):
            send(ctl.operator_endpoint, RELEASE, 0.5, mallory)
        assert not ctl._operator.poll(200)
    finally:
        ctl.close()
        client.close()


def test_an_operator_socket_beyond_loopback_without_curve_warns(caplog):
    ctl, client = operator_controller()
    ctl.close()
    assert "operator socket" not in caplog.text
    from runtime.robot.clock import SimClock
    from runtime.robot.controller import Controller
    from runtime.robot.executors import make_executor
    from runtime.robot.testing import JumpDriver

    naive = make_executor("naive", 8, execution_horizon=4, initial_delay=1)
    ctl = Controller(JumpDriver(), client, naive, SimClock(30), inference_delay_ticks=1,
                     operator_address="tcp://0.0.0.0:*")  # fmt: skip
    ctl.close()
    client.close()
    assert "without CURVE keys" in caplog.text
