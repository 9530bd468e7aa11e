"""The operator: `rtvla operator` messages, overrides reaching the low level within one chunk,
e-stop holding the robot, scripted overrides in `rtvla run` and their log and plot."""

import json

import numpy as np
import pytest
import zmq

from runtime.wire.protocol import EStop, OperatorInstruction, decode


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
