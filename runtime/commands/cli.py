"""The ``rtvla`` command line.

Each subcommand is a hydra app configured from ``configs/<subcommand>.yaml`` and implemented by
``runtime.commands.<subcommand>.main(cfg) -> dict``; the returned figures are printed as one
line of JSON at the end. Everything after the subcommand is passed to hydra, so overrides
(``task=reach episodes=5``), ``--cfg job`` and ``--help`` work as usual. Hydra keeps each
run's resolved config and log under ``outputs/runs/<subcommand>/<time>/``.
"""

from __future__ import annotations

import difflib
import importlib
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from runtime.commands import CommandFailed

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

COMMANDS: dict[str, str] = {
    "demo": "the quickstart: the shipped policy served over ZMQ to the RTC controller in MuJoCo",
    "record": "record scripted demonstrations as a LeRobotDataset v3",
    "demonstrator": "the scripted demonstrator's success rate, with or without injected failures",
    "fit-fast": "fit a FAST action tokenizer on a dataset's action chunks",
    "eval": "success rate of a checkpoint in MuJoCo with synchronous chunk execution",
    "train": "train a policy on a dataset (the VLA by default; recipe=ki: knowledge insulation)",
    "run": "run the async controller (RTC or a baseline) against MuJoCo or a robot",
    "sweep": "success vs inference delay and execution horizon per executor, seam smoothness",
    "export": "copy what inference needs from a checkpoint (no optimizer state)",
    "serve": "serve a checkpoint (or the synthetic model) to controllers over ZMQ",
    "operator": "send a running controller an instruction override, its release, or an e-stop",
    "aggregate": "roll out the hierarchy with pushes; record the demonstrator's corrections",
}
# Commands whose first argument, when it is not key=value, sets this key:
# `rtvla operator "move left" timeout_s=3` is `rtvla operator instruction='move left' timeout_s=3`.
POSITIONAL = {"operator": "instruction"}

# Errors that mean "the user asked for something impossible": print the message, no traceback.
USER_ERRORS = (ValueError, FileExistsError, FileNotFoundError, KeyError)

log = logging.getLogger("rtvla")


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {doc}" for name, doc in COMMANDS.items()]
    return (
        "usage: rtvla <command> [key=value ...] [hydra options]\n\ncommands:\n"
        + "\n".join(lines)
        + "\n\n'rtvla <command> --help' lists its settings with their values and descriptions;"
        + "\n'rtvla <command> --cfg job' prints its resolved configuration."
    )


def _command(name: str) -> Callable[[DictConfig], dict]:
    return importlib.import_module(f"runtime.commands.{name.replace('-', '_')}").main


def _as_hydra_app(name: str) -> Callable[[], None]:
    def app(cfg: DictConfig) -> None:
        try:
            check_types(cfg, _defaults(name))
            figures = _command(name)(cfg)
        except USER_ERRORS as err:
            message = err.args[0] if err.args else repr(err)
            print(f"rtvla {name}: error: {message}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print(f"rtvla {name}: interrupted", file=sys.stderr)
            sys.exit(130)
        except CommandFailed as err:
            print(json.dumps(err.figures, default=_json_default))
            print(f"rtvla {name}: failed: {err}", file=sys.stderr)
            sys.exit(1)
        print(json.dumps(figures, default=_json_default))

    if name in POLICY_COMMANDS:
        register_policy_configs()
    return hydra.main(config_path=str(CONFIG_DIR), config_name=name, version_base="1.3")(app)


POLICY_COMMANDS = ("train",)  # commands composing the policy/ group
GROUPS = ("task", "driver", "executor", "policy", "recipe")  # groups: a choice, not a value


def _defaults(name: str) -> DictConfig:
    """The command's config with the same group choices as this run but no other override."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    chosen = [
        o for o in HydraConfig.get().overrides.task if o.split("=", 1)[0].lstrip("+~") in GROUPS
    ]
    return compose(config_name=name, overrides=chosen)


def check_types(cfg: DictConfig, defaults: DictConfig) -> None:
    """Refuse, before any work, a value whose type differs from its default's: a number where
    the default is a number (an int where it is an int), a bool, a string or a list where it is
    one. Keys whose default is null, unset or an interpolation take anything (an
    interpolation's target is checked itself)."""
    problems = []

    def walk(value: object, default: object, key: str) -> None:
        if isinstance(default, dict) and isinstance(value, dict):
            for k in value.keys() & default.keys():
                walk(value[k], default[k], f"{key}.{k}" if key else str(k))
            return
        unset = (None, "???")
        if default in unset or value in unset or _interpolation(default) or _interpolation(value):
            return
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            kind = "a number"
        elif isinstance(default, str):
            ok, kind = isinstance(value, str), "a string (quote a number: key='7')"
        elif isinstance(default, list):
            ok, kind = isinstance(value, list), "a list"
        else:
            return
        if not ok:
            problems.append(f"{key}={value!r} must be {kind} (default: {default!r})")

    def plain(c: DictConfig) -> dict:
        return OmegaConf.to_container(c, resolve=False)  # type: ignore[return-value]

    walk(plain(cfg), plain(defaults), "")
    if problems:
        raise ValueError("; ".join(problems))


def register_configs() -> None:
    """The config nodes made from code, so that no yaml restates a default: the ``executor/``
    group (each executor's constructor settings) and ``serve_settings`` (``PolicyServer``'s).
    Cheap (numpy and pyzmq only); done when this module is imported."""
    from hydra.core.config_store import ConfigStore

    from runtime.robot.executors import EXECUTORS, executor_settings
    from runtime.serving.server import server_settings

    store = ConfigStore.instance()
    for name in EXECUTORS:
        store.store(group="executor", name=name, node={"name": name, **executor_settings(name)})
    store.store(name="serve_settings", node=server_settings())


def register_policy_configs() -> None:
    """The ``policy/`` group's entries, made from the policy kinds' dataclasses
    (``policies.kinds``): their defaults are written there and nowhere else."""
    from hydra.core.config_store import ConfigStore

    from policies.kinds import policy_defaults

    store = ConfigStore.instance()
    for kind, entry in policy_defaults().items():
        store.store(group="policy", name=kind, node=entry)


def _interpolation(value: object) -> bool:
    return isinstance(value, str) and "${" in value


def _json_default(value: object) -> object:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, resolve=True)
    return str(value)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``rtvla`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(usage())
        return
    name, overrides = argv[0], argv[1:]
    if name not in COMMANDS:
        near = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        print(f"rtvla: unknown command {name!r}{hint}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    if name in POSITIONAL and overrides and "=" not in overrides[0] and overrides[0][:1] != "-":
        quoted = overrides[0].replace("\\", "\\\\").replace("'", "\\'")
        overrides[0] = f"{POSITIONAL[name]}='{quoted}'"
    if any(o in ("--help", "-h") for o in overrides):
        print(command_help(name, [o for o in overrides if o not in ("--help", "-h")]))
        return
    unknown = unknown_keys(name, overrides)
    if unknown:
        print(f"rtvla {name}: error: {unknown}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [f"rtvla {name}", f"hydra.job.name={name}", *overrides]
    _as_hydra_app(name)()


def command_help(name: str, overrides: list[str]) -> str:
    """``rtvla <name> --help``: each setting with its value (after ``overrides``) and its
    description (``runtime.commands.help``)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore

    from runtime.commands.help import descriptions, render_help

    if name in POLICY_COMMANDS:
        register_policy_configs()
    settings = [o for o in overrides if "=" in o and o[:1] != "-"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=name, overrides=settings, return_hydra_config=True)
    choices = dict(cfg.hydra.runtime.choices)
    tree = OmegaConf.to_container(cfg, resolve=False)
    tree.pop("hydra")
    stored = ConfigStore.instance().repo
    groups = {}
    for group in GROUPS:
        if isinstance(tree.get(group), dict):
            chosen = tree[group].get("name")
        elif group in choices:  # a group of global settings (recipe/), maybe optional
            chosen = choices[group]
            if chosen is not None and not (CONFIG_DIR / group / f"{chosen}.yaml").is_file():
                chosen = None  # an optional default that does not exist
        else:
            continue
        options = {p.stem for p in (CONFIG_DIR / group).glob("*.yaml")}
        options |= {n.removesuffix(".yaml") for n in stored.get(group, {})}
        groups[group] = (chosen, sorted(options))
    return render_help(name, COMMANDS[name], tree, descriptions(CONFIG_DIR, name), groups)


def unknown_keys(name: str, overrides: list[str]) -> str:
    """'' when every ``key=value`` override names a key of the command's config (with the
    overrides' group choices), else what is unknown and the nearest valid key, before hydra
    starts. ``+key`` / ``~key``, hydra's own keys and options are left to hydra."""
    from hydra import compose, initialize_config_dir

    keys = [o.split("=", 1)[0] for o in overrides if "=" in o and o[:1] not in "+~-"]
    keys = [k for k in keys if k not in GROUPS and not k.startswith("hydra.")]
    if not keys:
        return ""
    chosen = [o for o in overrides if o.split("=", 1)[0] in GROUPS]
    if name in POLICY_COMMANDS:
        register_policy_configs()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name=name, overrides=chosen)
    except Exception:  # a bad group choice: hydra's own message says which
        return ""
    valid = _dotted_keys(OmegaConf.to_container(cfg, resolve=False))
    problems = []
    for key in keys:
        if key in valid or any(v.startswith(key + ".") for v in valid):
            continue
        parent = key.rsplit(".", 1)[0] if "." in key else None
        if parent in valid and not isinstance(OmegaConf.select(cfg, parent), DictConfig):
            continue  # inside a free-form value (e.g. a dict left null by default)
        near = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        problems.append(f"{key!r} is not a setting of rtvla {name}{hint}")
    if problems:
        return "; ".join(problems) + f" ('rtvla {name} --help' lists them)"
    return ""


def _dotted_keys(tree: object, prefix: str = "") -> list[str]:
    """Every key of a nested dict, dotted: ``policy``, ``policy.width``, ..."""
    if not isinstance(tree, dict):
        return []
    keys = []
    for k, v in tree.items():
        key = f"{prefix}{k}"
        keys += [key, *_dotted_keys(v, key + ".")]
    return keys


register_configs()

if __name__ == "__main__":
    main()
