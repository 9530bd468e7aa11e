"""The package layout's import directions (docs/design.md, Layout), read from the source.

Every ``import`` counts, also those inside functions or under ``TYPE_CHECKING``: a robot
computer installs the robot side and the wire format without torch, so no path may lead there.
"""

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> import prefixes its modules must never import
FORBIDDEN = {
    "runtime.wire": ("torch", "policies", "sim", "lerobot", "zmq", "runtime.robot",
                     "runtime.serving", "runtime.commands", "runtime.analysis"),
    "runtime.robot": ("torch", "policies", "runtime.serving", "runtime.commands",
                      "runtime.analysis"),
    "runtime.serving": ("runtime.robot", "runtime.commands", "runtime.analysis", "sim"),
    "runtime.analysis": ("torch", "policies", "runtime.serving", "runtime.commands"),
    "policies": ("runtime",),
    "sim": ("runtime", "policies"),
}  # fmt: skip
# the robot side's simulated drivers wrap the simulator, their "driver library"
ALLOWED = {"runtime.robot.drivers.mujoco": ("sim",), "runtime.robot.drivers.disturbed": ("sim",)}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module a file imports, absolute names."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations() -> list[str]:
    found = []
    paths = [
        p for package in ("policies", "runtime", "sim") for p in (ROOT / package).rglob("*.py")
    ]
    for path in sorted(paths):
        module = module_name(path)
        package = next((p for p in FORBIDDEN if within(module, p)), None)
        if package is None:
            continue
        allowed = ALLOWED.get(module, ())
        for name in sorted(imports(path)):
            bad = [p for p in FORBIDDEN[package] if within(name, p)]
            if bad and not any(within(name, a) for a in allowed):
                found.append(f"{path.relative_to(ROOT)} imports {name} ({package} must not)")
    return found


def test_packages_import_only_in_the_allowed_directions():
    assert violations() == []


def test_the_checker_sees_a_forbidden_import():
    bad = ROOT / "runtime" / "robot" / "_layout_probe.py"
    bad.write_text("def f():\n    import torch\n")
    try:
        expected = "runtime/robot/_layout_probe.py imports torch (runtime.robot must not)"
        assert violations() == [expected]
    finally:
        bad.unlink()


@pytest.mark.parametrize(
    "module",
    ["runtime.robot.controller", "runtime.robot.client", "runtime.robot.executors",
     "runtime.robot.safety", "runtime.robot.testing", "runtime.wire.protocol",
     "runtime.wire.info"],
)  # fmt: skip
def test_robot_side_modules_load_without_torch(module):
    code = f"import sys, {module}; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=ROOT)


@pytest.mark.parametrize("module", ["runtime.wire.keys", "policies.features"])
def test_feature_keys_are_lerobots(module):
    import importlib

    from lerobot.utils import constants

    keys = importlib.import_module(module)
    assert keys.STATE == constants.OBS_STATE
    assert keys.ENV_STATE == constants.OBS_ENV_STATE
    assert keys.IMAGES == constants.OBS_IMAGES + "."
    assert keys.ACTION == constants.ACTION


def test_policy_defaults_are_written_once_in_the_dataclasses():
    from hydra import compose, initialize_config_dir

    from policies.state_flow import StateFlowConfig
    from policies.vla import VLAConfig
    from runtime.commands.cli import CONFIG_DIR, register_policy_configs

    assert not (ROOT / "configs" / "policy").exists()  # no yaml restating them
    register_policy_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        vla = compose(config_name="train", overrides=["dataset=x"]).policy
        state = compose(config_name="train", overrides=["dataset=x", "policy=state_flow"]).policy
    assert vla.name == "vla" and vla.chunk_length == VLAConfig.chunk_length
    assert vla.num_steps == VLAConfig.num_steps and "image_keys" not in vla
    assert state.width == StateFlowConfig.width and "env_state_dim" not in state


def test_executor_and_server_defaults_are_written_once_in_their_constructors():
    from hydra import compose, initialize_config_dir

    from runtime.commands.cli import CONFIG_DIR
    from runtime.robot.executors import EXECUTORS, make_executor
    from runtime.serving.server import PolicyServer

    assert not (ROOT / "configs" / "executor").exists()  # no yaml restating them
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        sweep = compose(config_name="sweep", overrides=["checkpoint=x"])
        serve = compose(config_name="serve", overrides=["checkpoint=synthetic"])
        rtc = compose(config_name="run", overrides=["executor=rtc", "executor.delay_window=3"])
    assert set(sweep.executor_params) == set(EXECUTORS)
    for name, params in sweep.executor_params.items():  # the constructors' own defaults
        executor = make_executor(name, 50)
        cls_defaults = {
            p.name: p.default
            for p in inspect.signature(type(executor).__init__).parameters.values()
            if p.default is not inspect.Parameter.empty and p.name != "name"
        }
        assert {k: v for k, v in params.items() if k != "name"} == cls_defaults
    assert sweep.executor_params.rtc.initial_delay == 4
    assert rtc.executor.delay_window == 3 and rtc.executor.execution_horizon == 10
    defaults = inspect.signature(PolicyServer.__init__).parameters
    assert serve.max_batch == defaults["max_batch"].default
    assert serve.batch_window_ms == defaults["batch_window_ms"].default
