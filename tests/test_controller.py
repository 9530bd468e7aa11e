"""The controller loop in simulated-clock mode: one action per tick, each executor's timing,
the requests it sends, server loss and return, e-stop, operator override, the run log, the
clocks, the MuJoCo driver end to end and the ``rtvla run`` command."""

import subprocess
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
import zmq

from runtime.robot.client import LocalPolicyClient, RequestTimeout, ZmqPolicyClient
from runtime.robot.clock import SimClock, WallClock
from runtime.robot.controller import Controller, run_episodes
from runtime.robot.executors import EXECUTORS, make_executor
from runtime.robot.runlog import RunLog
from runtime.robot.testing import JumpDriver
from runtime.serving.server import PolicyServer
from runtime.wire.info import PolicyInfo
from runtime.wire.keys import STATE
from runtime.wire.protocol import EStop, ObservationRequest, OperatorInstruction, encode

H, A = 8, 2


class RampPolicy:
    """Chunks whose first column is obs_tick + i (the tick each action is for) and whose
    second is one value per request: random for a stochastic policy, so seams jump there."""

    def __init__(self, stochastic: bool = False, fail_first: int = 0) -> None:
        self.info = PolicyInfo("ramp", H, A, 30.0)
        self.requests: list[ObservationRequest] = []
        self.chunks: list[np.ndarray] = []
        self.stochastic = stochastic
        self.fail_first = fail_first  # raise on this many requests first

    def infer(self, requests):
        chunks = []
        for r in requests:
            self.requests.append(r)
            if len(self.requests) <= self.fail_first:
                raise RuntimeError("the policy is not ready")
            level = np.random.default_rng(r.seed).normal() if self.stochastic else 0.0
            ramp = np.arange(r.tick, r.tick + H, dtype=np.float32)
            chunk = np.stack([ramp, np.full(H, level, np.float32)], axis=1)  # (H, A)
            self.chunks.append(chunk)
            chunks.append(chunk)
        return chunks


def executor(name: str, s: int = 3, d0: int = 1):
    params = {} if name == "ensemble" else {"execution_horizon": s}
    return make_executor(name, H, initial_delay=d0, **params)


def controller(policy, name="naive", k=2, driver=None, s=3, **options):
    client = LocalPolicyClient(policy, timeout_s=10.0)
    ctl = Controller(
        driver or JumpDriver(),
        client,
        executor(name, s),
        SimClock(30),
        inference_delay_ticks=k,
        watchdog_ticks=H,
        seed=0,
        **options,
    )
    return ctl, client


def hold_runs(log: RunLog) -> list[int]:
    """Lengths of the runs of consecutive hold ticks."""
    runs, current = [], 0
    for planned in log.ticks["planned"]:
        if planned and current:
            runs.append(current)
        current = 0 if planned else current + 1
    return [*runs, current] if current else runs


@pytest.mark.parametrize("name", EXECUTORS)
def test_exactly_one_action_per_tick(name):
    driver = JumpDriver()
    ctl, client = controller(RampPolicy(), name, k=2, driver=driver)
    log = ctl.run(30)
    client.close()
    assert len(driver.commands) == 30 == len(log.ticks["tick"])
    assert list(log.ticks["tick"]) == list(range(30))
    planned = log.ticks["planned"]
    assert planned[2:].any() and not planned[:2].any()  # the first chunk arrives at tick 2
    np.testing.assert_array_equal(np.array(driver.commands)[planned], log.ticks["action"][planned])


@pytest.mark.parametrize("k", [0, 3])
def test_sync_holds_while_inferring_and_never_otherwise(k):
    ctl, client = controller(RampPolicy(), "sync", k=k, s=4)
    log = ctl.run(41)
    client.close()
    chunks = log.summary()["chunks_received"]
    assert hold_runs(log) == [k] * chunks if k else hold_runs(log) == []
    assert set(log.ticks["hold_reason"]) <= {"", "startup", "inferring"}
    planned = log.ticks["planned"]
    assert list(log.ticks["index"][planned][:8]) == [0, 1, 2, 3] * 2  # s actions from index 0


def test_naive_switches_at_the_delay_index_and_its_seams_jump():
    k = 2
    ctl, client = controller(RampPolicy(stochastic=True), "naive", k=k, s=3)
    log = ctl.run(40)
    client.close()
    t, r = log.ticks, log.requests
    arrivals = r["arrival_tick"][r["outcome"] == "chunk"]
    assert (arrivals - r["obs_tick"][r["outcome"] == "chunk"] == k).all()
    assert (t["index"][arrivals] == k).all()  # switched at index d = k
    planned = t["planned"]
    np.testing.assert_array_equal(t["action"][planned, 0], t["tick"][planned])  # aligned
    jumps = np.abs(np.diff(t["action"][k:, 1]))  # the per-chunk level: constant within a chunk
    seams = np.flatnonzero(jumps > 0) + k + 1
    assert set(seams) == set(arrivals[1:])  # it jumps exactly at every switch
    assert list(t["delay"][-5:]) == [k] * 5


@pytest.mark.parametrize("name", ["rtc", "rtc_trained"])
def test_rtc_requests_carry_the_unexecuted_actions_and_the_delay(name):
    policy, k = RampPolicy(stochastic=True), 2
    ctl, client = controller(policy, name, k=k, s=3)
    ctl.run(30)
    client.close()
    first, *rest = policy.requests
    assert first.prev_actions is None and first.sampling == EXECUTORS[name]
    assert len(rest) >= 5
    for prev_request, prev_chunk, request in zip(
        policy.requests, policy.chunks, rest, strict=False
    ):
        s = request.tick - prev_request.tick  # actions of the previous chunk due before
        assert request.execution_horizon == s == 3
        assert request.delay == k  # measured from the first chunk on
        assert len(request.prev_actions) == H - s
        np.testing.assert_array_equal(request.prev_actions, prev_chunk[s:])
        assert request.prev_actions[0, 0] == request.tick  # row 0 is for the observation tick


def test_rtc_smooths_the_seams_naive_jumps():
    from runtime.serving.sampling import FlowChunkPolicy
    from runtime.serving.synthetic import GaussianChunkModel

    def seam_jumps(name: str) -> float:
        model = GaussianChunkModel(chunk_length=16, action_dim=A, num_basis=3, sigma=1.0)
        client = LocalPolicyClient(FlowChunkPolicy(model, num_steps=8), timeout_s=30.0)
        ctl = Controller(
            JumpDriver(),
            client,
            make_executor(name, 16, execution_horizon=5, initial_delay=3),
            SimClock(30),
            inference_delay_ticks=3,
            watchdog_ticks=16,
            seed=1,
        )
        log = ctl.run(60)
        client.close()
        arrivals = log.requests["arrival_tick"][log.requests["outcome"] == "chunk"][1:]
        steps = np.abs(np.diff(log.ticks["action"], axis=0)).max(axis=1)  # (T - 1,)
        return float(steps[arrivals - 1].mean())

    assert seam_jumps("rtc") < 0.4 * seam_jumps("naive")  # measured: about 0.25


# ---- server loss, errors, e-stop, operator ----------------------------------------------------


@pytest.mark.parametrize("transport", ["local", "zmq"])
def test_clients_drop_replies_to_replaced_requests(transport):
    policy = RampPolicy()
    server = PolicyServer(policy, "tcp://127.0.0.1:*", log_every_s=None)
    server.start_in_thread()
    if transport == "zmq":
        client = ZmqPolicyClient(server.address, timeout_s=5.0)
    else:
        client = LocalPolicyClient(policy, timeout_s=5.0)

    def request(request_id: int, tick: int) -> ObservationRequest:
        observation = {STATE: np.zeros(A, np.float32)}
        return ObservationRequest(
            request_id=request_id,
            robot_id="robot",
            tick=tick,
            observation=observation,
            instruction="",
            delay=0,
            execution_horizon=1,
            sampling="plain",
        )

    assert client.poll() is None  # nothing outstanding
    client.submit(request(0, tick=0))
    client.submit(request(1, tick=5))  # replaces request 0, whose reply comes first
    reply = client.poll(5.0)
    assert (reply.request_id, reply.tick) == (1, 5)
    assert client.poll(0.1) is None  # the stale reply was dropped, never returned
    client.close()
    server.close()


def test_a_request_with_no_reply_times_out():
    silent = zmq.Context()
    router = silent.socket(zmq.ROUTER)
    router.bind("tcp://127.0.0.1:*")  # accepts requests, never answers
    client = ZmqPolicyClient(router.LAST_ENDPOINT.decode(), timeout_s=0.2)
    with pytest.raises(RequestTimeout, match="no metadata"):
        client.metadata(0.2)
    client.close()
    router.close(linger=0)
    silent.term()


def test_controller_holds_while_the_server_is_gone_and_resumes_when_it_returns():
    policy = RampPolicy()
    servers = [PolicyServer(policy, "tcp://127.0.0.1:*", log_every_s=None)]
    servers[0].start_in_thread()
    address = servers[0].address

    def kill() -> None:
        servers.pop().close()

    def restart() -> None:
        servers.append(PolicyServer(policy, address, log_every_s=None))
        servers[-1].start_in_thread()

    driver = JumpDriver(hooks={10: kill, 30: restart})
    client = ZmqPolicyClient(address, timeout_s=0.3)
    assert client.metadata(2.0).chunk_length == H
    ctl = Controller(
        driver,
        client,
        executor("rtc"),
        SimClock(30),
        inference_delay_ticks=1,
        watchdog_ticks=H,
        seed=0,
    )
    log = ctl.run(70)
    client.close()
    for server in servers:
        server.close()
    t, summary = log.ticks, log.summary()
    assert summary["request_timeouts"] >= 2
    assert summary["stalled_ticks"] > 0
    stalled = np.flatnonzero(np.isin(t["hold_reason"], ["starved", "watchdog"]))
    assert stalled.min() > 10 and stalled.max() < 70 - 10  # held after the loss, not forever
    assert t["planned"][-10:].all()  # resumed once the server was back
    assert len(driver.commands) == 70


def test_an_error_reply_is_logged_and_the_request_sent_again():
    ctl, client = controller(RampPolicy(fail_first=1), "naive", k=1)
    log = ctl.run(20)
    client.close()
    summary = log.summary()
    assert summary["request_errors"] == 1 and summary["chunks_received"] >= 3
    assert list(log.requests["outcome"][:2]) == ["error", "chunk"]
    assert log.ticks["planned"][-5:].all()


def test_estop_message_holds_until_released():
    pushes = []

    def send(engage: bool) -> Callable[[], None]:
        def hook() -> None:
            pushes[0].send(encode(EStop(robot_id="robot", reason="test", engage=engage)))
            time.sleep(0.1)  # let loopback TCP deliver it before the next (simulated) tick

        return hook

    driver = JumpDriver(hooks={9: send(True), 19: send(False)})
    ctl, client = controller(
        RampPolicy(), "rtc", k=2, driver=driver, operator_address="tcp://127.0.0.1:*"
    )
    context = zmq.Context()
    pushes.append(context.socket(zmq.PUSH))
    pushes[0].connect(ctl.operator_endpoint)
    log = ctl.run(35)
    client.close()
    ctl.close()
    pushes[0].close(linger=0)
    context.term()
    reasons = log.ticks["hold_reason"]
    assert (reasons[10:20] == "estop").all()
    assert (reasons[20:22] == "startup").all()  # a fresh chunk after the release
    assert log.ticks["planned"][22:].all() and log.ticks["planned"][2:10].all()
    assert len(driver.commands) == 35


def test_estop_call_holds_and_stop_ends_the_run_holding():
    driver = JumpDriver()
    ctl, client = controller(RampPolicy(), "naive", k=1, driver=driver)
    driver.hooks = {5: lambda: ctl.estop("button"), 8: ctl.release_estop, 15: ctl.stop}
    log = ctl.run(100)
    client.close()
    reasons = log.ticks["hold_reason"]
    assert list(reasons[6:9]) == ["estop"] * 3
    assert len(reasons) == 17 and reasons[-1] == "stopped"  # stop: one last tick, holding
    np.testing.assert_array_equal(driver.commands[-1], driver.commands[-2])


def test_operator_instruction_overrides_the_next_requests_until_it_expires():
    policy = RampPolicy()
    driver = JumpDriver()
    ctl, client = controller(policy, "naive", k=1, driver=driver, instruction="pick the cube")
    override = OperatorInstruction(
        robot_id="robot", instruction="move left", timeout_s=0.5, release=False
    )
    elsewhere = OperatorInstruction(
        robot_id="other", instruction="nothing", timeout_s=0.0, release=False
    )
    until_released = OperatorInstruction(
        robot_id="robot", instruction="stop there", timeout_s=0.0, release=False
    )
    release = OperatorInstruction(robot_id="robot", instruction="", timeout_s=0.0, release=True)
    driver.hooks = {
        4: lambda: (ctl.send_operator(override), ctl.send_operator(elsewhere)),
        40: lambda: ctl.send_operator(until_released),
        60: lambda: ctl.send_operator(release),
    }
    log = ctl.run(70)
    client.close()
    by_tick = {r.tick: r.instruction for r in policy.requests}
    for tick, instruction in by_tick.items():
        if 5 <= tick < 20:  # 0.5 s at 30 Hz from tick 5
            assert instruction == "move left"
        elif 41 <= tick < 61:
            assert instruction == "stop there"
        else:
            assert instruction == "pick the cube"
    assert {"move left", "stop there"} <= set(by_tick.values())
    column = log.ticks["instruction"]
    assert column[5] == column[19] == "move left" and column[20] == "pick the cube"


# ---- run log, episodes, clocks --------------------------------------------------------------


def test_run_log_writes_plain_arrays_and_a_summary(tmp_path):
    ctl, client = controller(RampPolicy(), "rtc", k=2)
    log = ctl.run(20)
    client.close()
    path = log.to_npz(tmp_path / "run.npz")
    with np.load(path, allow_pickle=False) as data:
        assert data["ticks.action"].shape == (20, A)
        assert data["ticks.hold_reason"][0] == "startup"
        assert len(data["requests.outcome"]) == len(log.requests["outcome"])
    summary = log.summary()
    assert (
        summary["ticks"] == 20 and summary["hold_ticks"] == 2 and summary["holds"] == {"startup": 2}
    )
    assert summary["delay_ticks_max"] == 2 and summary["jitter_ms_max"] == 0.0
    both = RunLog.concatenate([log, log]).summary()
    assert both["ticks"] == 40 and both["chunks_received"] == 2 * summary["chunks_received"]


class EpisodicDriver(JumpDriver):
    """A 'task' that succeeds once the first joint passes 10."""

    max_steps = 40
    instruction = "count to ten"

    def reset(self, seed=None):
        self.position[:] = 0
        return self.observe()

    def success(self) -> bool:
        return bool(self.position[0] > 10)


def test_run_episodes_stops_each_episode_at_success():
    policy = RampPolicy()
    client = LocalPolicyClient(policy)
    results = run_episodes(
        EpisodicDriver(),
        client,
        lambda: executor("rtc"),
        episodes=2,
        seed=5,
        clock=SimClock(30),
        inference_delay_ticks=2,
        watchdog_ticks=H,
    )
    client.close()
    assert [(r.episode, r.seed, r.success, r.ticks) for r in results] == [
        (0, 5, True, 12),
        (1, 6, True, 12),
    ]
    assert policy.requests[0].instruction == "count to ten"
    assert policy.requests[0].seed == 5 * 2**20  # episode seed, request 0


def test_simulated_clock_runs_are_reproducible():
    def actions() -> np.ndarray:
        client = LocalPolicyClient(RampPolicy(stochastic=True))
        (result,) = run_episodes(
            EpisodicDriver(),
            client,
            lambda: executor("rtc"),
            episodes=1,
            seed=3,
            clock=SimClock(30),
            inference_delay_ticks=2,
            watchdog_ticks=H,
        )
        client.close()
        return result.log.ticks["action"]

    first = actions()
    assert np.isfinite(first[2:]).all()
    np.testing.assert_array_equal(first, actions())


def test_wall_clock_paces_without_drift_and_skips_missed_ticks():
    hz = 200.0
    clock = WallClock(hz)
    clock.start()
    start = time.perf_counter()
    late = [clock.wait_next_tick() for _ in range(40)]
    elapsed = time.perf_counter() - start
    assert 39 / hz <= elapsed < 39 / hz + 0.05
    assert min(late) >= 0 and np.median(late) < 0.002
    time.sleep(0.021)  # overrun: the next slot is 16 ms late, 3 more periods went by
    assert clock.wait_next_tick() < 1 / hz  # runs in the latest slot, less than a period late
    assert clock.missed >= 3
    sim = SimClock(30)
    sim.start()
    assert [sim.wait_next_tick() for _ in range(3)] == [0.0] * 3 and sim.now() == 2 / 30


def test_the_controller_process_does_not_need_torch():
    code = (
        "import sys; import runtime.robot.controller, runtime.robot.executors, "
        "runtime.robot.client, runtime.robot.clock; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_simulated_clock_needs_an_inference_delay():
    with pytest.raises(ValueError, match="inference_delay_ticks"):
        Controller(JumpDriver(), LocalPolicyClient(RampPolicy()), executor("rtc"), SimClock(30))


# ---- MuJoCo end to end and the command --------------------------------------------------------


def test_end_to_end_on_the_mujoco_reach_task_over_zmq():
    pytest.importorskip("mujoco")
    from runtime.robot.drivers.mujoco import MujocoDriver
    from runtime.serving.sampling import FlowChunkPolicy
    from runtime.serving.synthetic import GaussianChunkModel

    policy = FlowChunkPolicy(GaussianChunkModel(chunk_length=16, action_dim=6), num_steps=5)
    server = PolicyServer(policy, "tcp://127.0.0.1:*", log_every_s=None)
    server.start_in_thread()
    client = ZmqPolicyClient(server.address, timeout_s=30.0)
    driver = MujocoDriver(task="reach", render=False, seed=0)
    results = run_episodes(
        driver,
        client,
        lambda: make_executor("rtc", 16, execution_horizon=5, initial_delay=2),
        episodes=1,
        clock=SimClock(30),
        max_ticks=40,
        inference_delay_ticks=2,
        watchdog_ticks=16,
    )
    client.close()
    server.close()
    driver.close()
    (result,) = results
    summary = result.log.summary()
    assert result.ticks == 40 and driver.tick == 40
    assert summary["planned_ticks"] == 38 and summary["chunks_received"] >= 5


def test_run_command_with_the_in_process_synthetic_policy(tmp_path):
    pytest.importorskip("mujoco")
    from hydra import compose, initialize_config_dir

    from runtime.commands.cli import CONFIG_DIR
    from runtime.commands.run import main

    overrides = [
        "task=reach",
        "executor=naive",
        "executor.execution_horizon=4",
        "episodes=2",
        "max_ticks=15",
        "driver.render=false",
        "synthetic.chunk_length=12",
        "synthetic.num_steps=4",
        f"output_dir={tmp_path}",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="run", overrides=overrides)
    figures = main(cfg)
    assert figures["episodes"] == 2 and figures["ticks"] == 30
    assert figures["executor"] == "naive" and figures["success_rate"] == 0.0
    assert figures["delay_ticks_max"] == 4  # inference_delay_ticks
    for name in ("episode_000.npz", "episode_001.npz", "summary.json", "config.yaml"):
        assert (tmp_path / name).exists()


# ---- a dead server: the loop never waits on the network, e-stops take effect at once ----------


def silent_server() -> tuple[zmq.Context, zmq.Socket, str]:
    """A ROUTER that takes requests and never answers (a hung server)."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.linger = 0
    router.bind("tcp://127.0.0.1:*")
    return context, router, router.LAST_ENDPOINT.decode()


def estop_sender(ctl: Controller) -> tuple[zmq.Context, Callable[[], None]]:
    """A hook that pushes an engaging e-stop to ``ctl``'s operator socket and returns once
    the socket holds it (so "the next tick" is well defined whatever the machine's load)."""
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.linger = 0
    push.connect(ctl.operator_endpoint)

    def send() -> None:
        push.send(encode(EStop(robot_id="robot", reason="outage", engage=True)))
        assert ctl._operator.poll(5000)  # the controller's own thread: a peek, no read

    return context, send


def run_with_dead_server(name, clock, delay, timeout_s, ticks, hooks):
    """Run ``ticks`` ticks against a server that never answers; ``hooks(send)`` gives the
    driver's tick hooks, ``send`` an operator e-stop. Returns (driver, log)."""
    context, router, address = silent_server()
    client = ZmqPolicyClient(address, timeout_s=timeout_s)
    driver = JumpDriver()
    ctl = Controller(driver, client, executor(name), clock, inference_delay_ticks=delay,
                     watchdog_ticks=H, operator_address="tcp://127.0.0.1:*")  # fmt: skip
    sender_context, send = estop_sender(ctl)
    driver.hooks = hooks(send)
    try:
        return driver, ctl.run(ticks)
    finally:
        ctl.close()
        client.close()
        sender_context.destroy(linger=0)
        router.close()
        context.term()


@pytest.mark.parametrize("k", [None, 4])
def test_wall_clock_never_waits_for_a_dead_server_and_estops_at_the_next_tick(k):
    driver, log = run_with_dead_server("rtc", WallClock(30), k, 1.0, 60, lambda send: {40: send})
    reasons = log.ticks["hold_reason"]
    assert len(driver.commands) == 60  # one hold per tick, all through the outage
    assert (reasons[:41] == "startup").all() and (reasons[41:] == "estop").all()
    assert log.summary()["request_timeouts"] >= 1  # the client gave up on requests meanwhile
    # no tick waited for the client's 1 s timeout (30 ticks; loose: a loaded machine)
    assert log.missed_ticks < 20


def test_an_estop_ends_a_simulated_clock_wait_for_a_dead_server_at_that_tick():
    _, log = run_with_dead_server(
        "naive",
        SimClock(30),
        2,
        30.0,
        6,
        lambda send: {0: lambda: threading.Timer(0.3, send).start()},
    )
    reasons = log.ticks["hold_reason"]
    assert list(reasons[:2]) == ["startup", "startup"]
    assert (reasons[2:] == "estop").all()  # the request due at tick 2 waited; the e-stop ended it
    assert log.summary()["request_timeouts"] == 0


def test_a_client_survives_any_bytes_from_a_rogue_server():
    from runtime.wire.hostile import HOSTILE_KINDS, hostile_message
    from runtime.wire.protocol import ChunkReply

    context, router, address = silent_server()
    client = ZmqPolicyClient(address, timeout_s=5.0)
    rng = np.random.default_rng(3)
    try:
        client.submit(ObservationRequest(
            request_id=1, robot_id="r", tick=0, observation={STATE: np.zeros(2, np.float32)},
            instruction="", delay=0, execution_horizon=1, sampling="plain",
        ))  # fmt: skip
        assert router.poll(5000)
        identity = router.recv_multipart()[0]
        for kind in HOSTILE_KINDS:
            router.send_multipart([identity, *hostile_message(kind, rng)])
        chunk = ChunkReply(request_id=1, tick=0, actions=np.ones((H, A), np.float32),
                           server_time_ms=1.0, model_id="m")  # fmt: skip
        router.send_multipart([identity, encode(chunk)])
        deadline = time.monotonic() + 5
        reply = None
        while reply is None and time.monotonic() < deadline:
            reply = client.poll(0.1)
    finally:
        client.close()
        router.close()
        context.term()
    assert isinstance(reply, ChunkReply) and reply.request_id == 1


def test_a_stream_of_stale_replies_cannot_hold_a_poll():
    from runtime.wire.protocol import ChunkReply

    client = LocalPolicyClient(RampPolicy())
    try:
        client._start(request_id=1)
        stale = ChunkReply(request_id=0, tick=0, actions=np.ones((H, A), np.float32),
                           server_time_ms=1.0, model_id="m")  # fmt: skip
        for _ in range(1000):
            client._replies.put(stale)
        assert client.poll(0.0) is None
        assert client._replies.qsize() >= 1000 - 100  # it read a bounded number, then returned
    finally:
        client._pending = None
        client.close()


class TickDriver(JumpDriver):
    """A JumpDriver whose observed state is [the tick, 0]: it counts actions and holds."""

    def __init__(self) -> None:
        super().__init__()
        self.ticks = 0

    def observe(self) -> dict[str, np.ndarray]:
        return {STATE: np.array([self.ticks, 0], np.float32)}

    def act(self, action: np.ndarray) -> None:  # holds come here too (SafeDriver)
        super().act(action)
        self.ticks += 1


@pytest.mark.parametrize("name", ["sync", "naive", "rtc"])
def test_requests_carry_the_observation_history_the_policy_reads(name):
    from runtime.robot.controller import ObservationHistory

    history = ObservationHistory.of_policy({"observation.state.history": {}}, (-4, -2))
    assert ObservationHistory.of_policy({STATE: {}}, (-4, -2)) is None  # no history feature
    assert ObservationHistory.of_policy({"observation.state.history": {}}, None) is None
    policy = RampPolicy()
    ctl, client = controller(policy, name, k=2, driver=TickDriver(), observation_history=history)
    ctl.run(30)
    ctl.run(10)  # a second run starts its history afresh
    client.close()
    starts = [i for i, r in enumerate(policy.requests) if r.tick == 0]
    assert starts[0] == 0 and len(starts) == 2 and len(policy.requests) >= 6
    for i, r in enumerate(policy.requests):
        first = 0 if i < starts[1] else 30  # the driver's tick at the run's first tick
        assert r.observation[STATE][0] == first + r.tick
        past = r.observation["observation.state.history"][:, 0]  # clamped to the run's start
        np.testing.assert_array_equal(past, first + np.maximum(r.tick - np.array([4, 2]), 0))
    with pytest.raises(ValueError, match="offsets < 0"):
        ObservationHistory([STATE], (2,))
