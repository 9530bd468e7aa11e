"""Drivers by name: the built-ins and any installed through the ``rtvla.drivers`` entry points.

A third-party package adds a driver by declaring, in its pyproject.toml::

    [project.entry-points."rtvla.drivers"]
    my_arm = "my_package.driver:MyArmDriver"   # a class or factory returning a Driver

after which ``make_driver("my_arm", **kwargs)`` builds it. Built-in names take precedence.
"""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint, entry_points

from runtime.robot.drivers.base import ActionLimits, Driver, DriverContext, Observation

__all__ = [
    "ActionLimits",
    "Driver",
    "DriverContext",
    "Observation",
    "available_drivers",
    "make_driver",
]

GROUP = "rtvla.drivers"
BUILTINS = {  # imported on demand: the simulator and lerobot are heavy
    "mujoco": "runtime.robot.drivers.mujoco:MujocoDriver",
    "lerobot": "runtime.robot.drivers.lerobot:LerobotDriver",
}

log = logging.getLogger(__name__)


def available_drivers() -> dict[str, EntryPoint]:
    """Every driver name with the entry point that builds it."""
    drivers = {name: EntryPoint(name, value, GROUP) for name, value in BUILTINS.items()}
    for ep in entry_points(group=GROUP):
        if ep.name in drivers:
            if ep.value != drivers[ep.name].value:
                log.warning("driver %r from %s is shadowed by another one", ep.name, ep.value)
            continue
        drivers[ep.name] = ep
    return drivers


def make_driver(name: str, **kwargs: object) -> Driver:
    """Build the driver registered as ``name`` with ``kwargs``."""
    drivers = available_drivers()
    if name not in drivers:
        raise ValueError(
            f"unknown driver {name!r}; available: {sorted(drivers)} (third-party drivers "
            f"register through the {GROUP!r} entry-point group of an installed package)"
        )
    driver = drivers[name].load()(**kwargs)
    if not isinstance(driver, Driver):
        raise TypeError(
            f"driver {name!r} ({drivers[name].value}) built a {type(driver).__name__}, which is "
            "not a Driver: it needs connect, observe, act, close, feature_spec and limits"
        )
    return driver
