"""Drivers: the protocol, the MuJoCo and lerobot drivers, and discovery by entry point."""

import re
import sys
import textwrap
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
from lerobot.motors import Motor, MotorNormMode
from lerobot.robots import Robot, RobotConfig

from runtime.robot.drivers import Driver, make_driver
from runtime.robot.drivers.base import ActionLimits
from runtime.robot.drivers.lerobot import LerobotDriver
from runtime.robot.safety import SafeDriver

# ---------------------------------------------------------------- a fake lerobot robot


@RobotConfig.register_subclass("rtvla_fake_arm")
@dataclass(kw_only=True)
class FakeArmConfig(RobotConfig):
    camera_shape: tuple[int, int, int] = (4, 6, 3)


class FakeArm(Robot):
    """Two motors (an arm joint in degrees and a 0..100 gripper) and one camera, no hardware."""

    config_class = FakeArmConfig
    name = "rtvla_fake_arm"

    def __init__(self, config: FakeArmConfig) -> None:
        super().__init__(config)
        self.config = config
        self.bus = SimpleNamespace(
            motors={
                "shoulder_pan": Motor(1, "sts3215", MotorNormMode.DEGREES),
                "gripper": Motor(2, "sts3215", MotorNormMode.RANGE_0_100),
            }
        )
        self.position = {"shoulder_pan.pos": 10.0, "gripper.pos": 40.0}
        self.sent: list[dict] = []
        self._connected = False

    @property
    def observation_features(self) -> dict:
        return {"shoulder_pan.pos": float, "front": self.config.camera_shape, "gripper.pos": float}

    @property
    def action_features(self) -> dict:
        return {"shoulder_pan.pos": float, "gripper.pos": float}

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self, calibrate: bool = True) -> None:
        self._connected = True

    @property
    def is_calibrated(self) -> bool:
        return True

    def calibrate(self) -> None:
        pass

    def configure(self) -> None:
        pass

    def get_observation(self) -> dict:
        image = np.full(self.config.camera_shape, 7, dtype=np.uint8)
        return {**self.position, "front": image}

    def send_action(self, action: dict) -> dict:
        self.sent.append(action)
        self.position = dict(action)
        return action

    def disconnect(self) -> None:
        self._connected = False


@pytest.fixture
def arm(tmp_path) -> FakeArm:
    return FakeArm(FakeArmConfig(id="test", calibration_dir=tmp_path))


def test_lerobot_driver_maps_features_both_ways(arm):
    driver = LerobotDriver(arm)
    assert isinstance(driver, Driver)
    spec = driver.feature_spec()
    assert spec["observation.state"]["names"] == ["shoulder_pan.pos", "gripper.pos"]
    assert spec["observation.images.front"]["shape"] == (4, 6, 3)
    assert spec["action"] == {"dtype": "float32", "shape": (2,), "names": list(arm.action_features)}
    with driver:
        obs = driver.observe()
        assert set(obs) == {"observation.state", "observation.images.front"}
        assert obs["observation.state"].dtype == np.float32
        np.testing.assert_array_equal(obs["observation.state"], [10.0, 40.0])
        assert obs["observation.images.front"].shape == (4, 6, 3)
        driver.act(np.array([12.5, 60.0], dtype=np.float32))
        assert arm.sent == [{"shoulder_pan.pos": 12.5, "gripper.pos": 60.0}]
        assert all(type(v) is float for v in arm.sent[0].values())
        with pytest.raises(ValueError, match=r"shape \(3,\)"):
            driver.act(np.zeros(3))
    assert not arm.is_connected
    driver.close()  # twice is fine


def test_lerobot_driver_is_built_from_a_robot_config(tmp_path, monkeypatch):
    # lerobot's factory finds FakeArm in a module named after it beside its config's module,
    # where a lerobot plugin package would put it.
    parent = FakeArmConfig.__module__.rpartition(".")[0] or FakeArmConfig.__module__
    monkeypatch.setitem(sys.modules, f"{parent}.fakearm", SimpleNamespace(FakeArm=FakeArm))
    driver = LerobotDriver(FakeArmConfig(id="cfg", calibration_dir=tmp_path))
    assert isinstance(driver.robot, FakeArm)
    assert make_driver("lerobot", robot=driver.robot).robot is driver.robot


def test_lerobot_limits_default_by_motor_unit_and_take_overrides(arm):
    limits = LerobotDriver(arm, control_hz=30.0).limits()
    assert limits.names == ("shoulder_pan.pos", "gripper.pos")
    np.testing.assert_allclose(limits.low, [-180.0, 0.0])
    np.testing.assert_allclose(limits.high, [180.0, 100.0])
    np.testing.assert_allclose(limits.max_delta, [3.0, 5.0])
    limits = LerobotDriver(arm, low={"shoulder_pan": -90}, high=[90, 80], max_delta=2.0).limits()
    np.testing.assert_allclose(limits.low, [-90.0, 0.0])
    np.testing.assert_allclose(limits.high, [90.0, 80.0])
    np.testing.assert_allclose(limits.max_delta, [2.0, 2.0])
    with pytest.raises(ValueError, match="unknown joint 'elbow'"):
        LerobotDriver(arm, low={"elbow": 0.0})
    with pytest.raises(ValueError, match="max_delta has 3 values"):
        LerobotDriver(arm, max_delta=[1.0, 2.0, 3.0])


def test_lerobot_robot_without_motor_units_needs_explicit_limits(arm):
    del arm.bus
    with pytest.raises(ValueError, match=r"no default action limits for \['shoulder_pan.pos'"):
        LerobotDriver(arm)
    limits = LerobotDriver(arm, low=-1.0, high=1.0, max_delta=0.1).limits()
    np.testing.assert_allclose(limits.high, [1.0, 1.0])


def test_lerobot_unmappable_features_raise_clear_errors(tmp_path, arm):
    depth = FakeArm(FakeArmConfig(id="d", calibration_dir=tmp_path, camera_shape=(4, 6, 1)))
    with pytest.raises(ValueError, match=r"'front' is \(4, 6, 1\).*\(H, W, 3\)"):
        LerobotDriver(depth)

    class VelocityArm(FakeArm):
        @property
        def action_features(self) -> dict:
            return {"shoulder_pan.pos": float, "base": (2,)}

    with pytest.raises(ValueError, match=re.escape("all float, not {'base': (2,)}")):
        LerobotDriver(VelocityArm(FakeArmConfig(id="v", calibration_dir=tmp_path)))

    driver = LerobotDriver(arm)
    arm.get_observation = lambda: {"shoulder_pan.pos": 0.0, "gripper.pos": 0.0}
    with pytest.raises(KeyError, match="without \\['front'\\]"):
        driver.observe()
    arm.get_observation = lambda: {
        "shoulder_pan.pos": 0.0,
        "gripper.pos": 0.0,
        "front": np.zeros((4, 6, 3), dtype=np.float32),
    }
    with pytest.raises(ValueError, match="camera 'front' returned a float32 image"):
        driver.observe()


def test_safe_driver_over_a_lerobot_robot(arm):
    with SafeDriver(LerobotDriver(arm)) as safe:
        safe.act(np.array([100.0, 40.0]))  # 90 deg away: rate-limited from the observed 10 deg
    assert arm.sent[-1] == {"shoulder_pan.pos": 13.0, "gripper.pos": 40.0}


# ---------------------------------------------------------------- the MuJoCo driver


@pytest.fixture(scope="module")
def mujoco():
    """The MuJoCo driver module, or a skip while the simulator cannot be imported."""
    return pytest.importorskip(
        "runtime.robot.drivers.mujoco",
        reason="the simulator (sim) is not importable",
        exc_type=ImportError,
    )


def _rollout(driver_cls, seed: int) -> list[dict[str, np.ndarray]]:
    with driver_cls(image_size=32, seed=seed) as driver:
        observations = [driver.observe()]
        start = observations[0]["observation.state"]
        for t in range(3):
            driver.act(start + 0.02 * (t + 1))
            observations.append(driver.observe())
        assert driver.tick == 3
    return observations


def test_mujoco_driver_shapes_and_limits(mujoco):
    with mujoco.MujocoDriver(image_size=32, seed=0) as driver:
        assert isinstance(driver, Driver)
        obs = driver.observe()
        assert obs["observation.state"].shape == (6,)
        assert obs["observation.state"].dtype == np.float32
        for cam in ("front", "wrist"):
            image = obs[f"observation.images.{cam}"]
            assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        assert driver.feature_spec()["action"]["names"] == list(driver.limits().names)
        limits = driver.limits()
        # follower units: degrees per tick for the arm, the gripper's 0-100 in GRIPPER_STROKE_S
        degrees = np.degrees(mujoco.ARM_SPEED) / 30.0
        np.testing.assert_allclose(limits.max_delta[:5], degrees, rtol=1e-6)
        np.testing.assert_allclose(limits.max_delta[5], 100 / mujoco.GRIPPER_STROKE_S / 30, 1e-5)
        motors = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll")
        assert limits.names == tuple(f"{n}.pos" for n in (*motors, "gripper"))
        assert limits.low[5] == 0 and limits.high[5] == 100
        assert np.all(limits.low < limits.high)
        assert isinstance(driver.instruction, str) and driver.instruction
        assert driver.max_steps > 0 and isinstance(driver.success(), bool)
        driver.act(obs["observation.state"])
        assert driver.tick == 1
        assert driver.reset(seed=1)["observation.state"].shape == (6,) and driver.tick == 0


def test_mujoco_driver_is_deterministic_under_a_seed(mujoco):
    first, second = _rollout(mujoco.MujocoDriver, 3), _rollout(mujoco.MujocoDriver, 3)
    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(first[0]["observation.state"], first[-1]["observation.state"])


def test_make_driver_builds_the_mujoco_driver(mujoco):
    driver = make_driver("mujoco", task="reach", image_size=16, render=False)
    assert isinstance(driver, mujoco.MujocoDriver)
    driver.close()


# ---------------------------------------------------------------- discovery by entry point

PLUGIN = """
import numpy as np

from runtime.robot.drivers.base import ActionLimits


class ToyArm:
    def __init__(self, gain=1.0):
        self.gain = gain

    def connect(self):
        pass

    def observe(self):
        return {"observation.state": np.zeros(1, dtype=np.float32)}

    def act(self, action):
        pass

    def close(self):
        pass

    def feature_spec(self):
        return {"action": {"dtype": "float32", "shape": (1,), "names": ["j"]}}

    def limits(self):
        return ActionLimits(low=[-1.0], high=[1.0], max_delta=[0.1], names=("j",))


def not_a_driver():
    return object()
"""


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A package ``rtvla-toy-arm`` "installed" on sys.path with two rtvla.drivers entries."""
    (tmp_path / "rtvla_toy_arm.py").write_text(PLUGIN)
    dist_info = tmp_path / "rtvla_toy_arm-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: rtvla-toy-arm\nVersion: 0.1\n"
    )
    (dist_info / "entry_points.txt").write_text(
        textwrap.dedent("""\
            [rtvla.drivers]
            toy_arm = rtvla_toy_arm:ToyArm
            broken = rtvla_toy_arm:not_a_driver
            """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))


def test_make_driver_finds_third_party_drivers(installed_plugin):
    driver = make_driver("toy_arm", gain=2.0)
    assert isinstance(driver, Driver) and driver.gain == 2.0
    assert isinstance(driver.limits(), ActionLimits)
    with pytest.raises(TypeError, match=r"'broken' .* not a Driver"):
        make_driver("broken")


def test_make_driver_unknown_name_lists_the_available_ones(installed_plugin):
    with pytest.raises(
        ValueError, match=r"unknown driver 'ur5'; available: .*'lerobot'.*'toy_arm'"
    ):
        make_driver("ur5")


class FakeSO101(FakeArm):
    """An SO-101 follower's motors and units (5 joints in degrees, a 0-100 gripper) and its
    two cameras, as lerobot's so101_follower reports them, without hardware."""

    name = "rtvla_fake_so101"
    MOTORS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll")

    def __init__(self, config: FakeArmConfig) -> None:
        super().__init__(config)
        arm = {m: Motor(i + 1, "sts3215", MotorNormMode.DEGREES) for i, m in enumerate(self.MOTORS)}
        gripper = Motor(6, "sts3215", MotorNormMode.RANGE_0_100)
        self.bus = SimpleNamespace(motors={**arm, "gripper": gripper})
        self.position = {f"{m}.pos": 0.0 for m in self.bus.motors}

    @property
    def observation_features(self) -> dict:
        cams = {c: self.config.camera_shape for c in ("front", "wrist")}
        return {**{f"{m}.pos": float for m in self.bus.motors}, **cams}

    @property
    def action_features(self) -> dict:
        return {f"{m}.pos": float for m in self.bus.motors}

    def get_observation(self) -> dict:
        image = np.full(self.config.camera_shape, 7, dtype=np.uint8)
        return {**self.position, "front": image, "wrist": image}


def test_a_sim_trained_checkpoint_fits_an_so101_follower_without_conversion(tmp_path):
    """The shipped checkpoint (trained in the sim) meets a real SO-101's features, joint names
    and units as lerobot reports them: nothing to convert, nothing refused."""
    from runtime.serving.loader import load_policy
    from runtime.wire.info import fit_problems
    from sim import SimEnv

    so101 = FakeSO101(FakeArmConfig(id="so101", calibration_dir=tmp_path, camera_shape=(96, 96, 3)))
    driver = LerobotDriver(so101)
    spec = driver.feature_spec()
    sim_spec = SimEnv("reach", render=False).feature_spec()
    for key in ("observation.state", "action"):
        assert spec[key] == sim_spec[key]  # names with .pos, shape, dtype
    policy = load_policy("checkpoints/demo")
    info = policy.info
    assert (
        fit_problems(info.features, info.fps, info.action_dim, spec, 30.0, info.joint_names) == []
    )
    limits = driver.limits()  # lerobot's units: degrees per tick for the arm, 0-100 gripper
    assert limits.high[5] == 100 and limits.low[5] == 0
