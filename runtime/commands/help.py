"""``rtvla <command> --help``: every setting of a command with its value and its description.

Descriptions are written once, where each default is: the trailing ``# comment`` of a key in
``configs/*.yaml`` (and ``configs/<group>/<option>.yaml`` for ``<group>.*``), a header line
``#   key   description`` of a command's yaml for settings made from code (``rtvla serve``'s), the
trailing comment of a policy config dataclass field (``policy.*``, ``policies.kinds``), and
``runtime.robot.executors.SETTING_DOCS`` for the executors' settings.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from pathlib import Path

from omegaconf import OmegaConf

_KEY = re.compile(r"^(\s*)([A-Za-z_][\w-]*)\s*:(.*)$")
_HEADER = re.compile(r"^#\s+([a-z_][\w.]*)\s{2,}(\S.*)$")  # "#   address   ZMQ endpoint ..."
_FIELD = re.compile(r"^\s+(\w+)\s*:[^#]*#\s*(.+)$")  # "    width: int = 128  # ..."
_LEAF_MAPS = ("rename_map",)  # free-form mappings, shown as one value
_CONTINUED = re.compile(r"^\s+#\s*(.+)$")  # "    # ...": a field's comment, carried on
_WRAPPED = re.compile(r"^\s+(\w+)\s*:[^#=]*=\s*\($")  # a default wrapped onto the next line


def yaml_comments(path: Path, prefix: str = "") -> dict[str, str]:
    """Dotted key -> its trailing comment, for each key of a yaml file that has one; header
    lines ``#   key   text`` describe keys the file takes from elsewhere."""
    docs: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    for line in path.read_text().splitlines():
        header = _HEADER.match(line)
        if header and not stack:
            docs.setdefault(prefix + header[1], header[2].strip())
            continue
        match = _KEY.match(line)
        if not match or match[2] == "defaults":
            continue
        indent, key, rest = len(match[1]), match[2], match[3]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = prefix + ".".join([k for _, k in stack] + [key])
        comment = _comment(rest)
        if comment:
            docs[dotted] = comment
        value = rest.split("#", 1)[0].strip()
        if not value:  # a mapping follows
            stack.append((indent, key))
    return docs


def _comment(rest: str) -> str:
    """The ``# comment`` after a yaml value, ignoring '#' inside quotes."""
    quote = None
    for i, ch in enumerate(rest):
        if ch in "'\"":
            quote = None if quote == ch else (quote or ch)
        elif ch == "#" and quote is None and (i == 0 or rest[i - 1].isspace()):
            return rest[i + 1 :].strip()
    return ""


def dataclass_comments(cls: type) -> dict[str, str]:
    """Field -> the trailing comment on its line in the dataclass's source."""
    docs = {}
    names = {f.name for f in dataclasses.fields(cls)}
    lines = inspect.getsource(cls).splitlines()
    for i, line in enumerate(lines):
        match = _FIELD.match(line)
        if match and match[1] in names:
            text = [match[2].strip()]
            for more in lines[i + 1 :]:  # comment lines that carry the description on
                if not _CONTINUED.match(more):
                    break
                text.append(_CONTINUED.match(more)[1].strip())
            docs.setdefault(match[1], " ".join(text))
            continue
        wrapped = _WRAPPED.match(line)  # "    insulation: bool = (" / "        True  # ..."
        if wrapped and wrapped[1] in names and i + 1 < len(lines) and "#" in lines[i + 1]:
            docs.setdefault(wrapped[1], lines[i + 1].split("#", 1)[1].strip())
    return docs


def descriptions(config_dir: Path, name: str) -> dict[str, str]:
    """Dotted key -> description for command ``name``: its own yaml first, then the files it
    includes, then every other config file (a group's options describe ``<group>.*``)."""
    from policies.kinds import KINDS
    from runtime.robot.executors import EXECUTORS, SETTING_DOCS

    docs: dict[str, str] = {}
    order = _includes(config_dir, name)
    others = sorted(p.stem for p in config_dir.glob("*.yaml") if p.stem not in order)
    for stem in [*order, *others]:
        for key, text in yaml_comments(config_dir / f"{stem}.yaml").items():
            docs.setdefault(key, text)
    for group in sorted(p for p in config_dir.iterdir() if p.is_dir()):
        for option in sorted(group.glob("*.yaml")):
            if option.read_text().startswith("# @package _global_"):
                continue  # a recipe: its keys are described where they are defined
            for key, text in yaml_comments(option, f"{group.name}.").items():
                docs.setdefault(key, text)
    for config, _ in KINDS.values():
        for key, text in dataclass_comments(config).items():
            docs.setdefault(f"policy.{key}", text)
    groups = [p.name for p in config_dir.iterdir() if p.is_dir()] + ["policy", "executor"]
    for group in groups:
        docs.setdefault(f"{group}.name", f"the {group} chosen: set it as {group}=OPTION")
    for executor in EXECUTORS:
        docs.setdefault(f"executor_params.{executor}.name", "the executor these settings are for")
    for key, text in SETTING_DOCS.items():
        docs.setdefault(f"executor.{key}", text)
        for executor in EXECUTORS:
            docs.setdefault(f"executor_params.{executor}.{key}", text)
    return docs


def _includes(config_dir: Path, name: str) -> list[str]:
    """``name`` and the command files its defaults list pulls in, nearest first."""
    order, todo = [], [name]
    while todo:
        stem = todo.pop(0)
        path = config_dir / f"{stem}.yaml"
        if stem in order or not path.is_file():
            continue
        order.append(stem)
        defaults = OmegaConf.load(path).get("defaults") or []
        todo += [d for d in defaults if isinstance(d, str) and d != "_self_"]
    return order


def render_help(name: str, summary: str, cfg: dict, docs: dict[str, str], groups: dict) -> str:
    """The help text: usage, group choices, then ``key = value  description`` per setting."""
    rows = []

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict) and node and prefix.rstrip(".") not in _LEAF_MAPS:
            for k, v in node.items():
                if k != "hydra":
                    walk(v, f"{prefix}{k}.")
            return
        key = prefix.rstrip(".")
        rows.append((key, json.dumps(node) if not isinstance(node, str) else node, docs.get(key)))

    walk(cfg, "")
    width = min(max(len(f"{k} = {v}") for k, v, _ in rows), 48)
    lines = [f"rtvla {name}: {summary}", "", f"usage: rtvla {name} [key=value ...]", ""]
    if groups:
        lines.append("groups (group=option; chosen first):")
        for group, (chosen, options) in groups.items():
            rest = [o for o in options if o != chosen]
            lines.append(f"  {group}: {', '.join([chosen, *rest]) if chosen else ', '.join(rest)}")
        lines.append("")
    lines.append("settings (key = current value   description):")
    for key, value, doc in rows:
        text = f"{key} = {value}"
        pad = " " * max(2, width - len(text) + 2)
        lines.append(f"  {text}{pad}{doc or ''}".rstrip())
    lines += ["", f"'rtvla {name} --cfg job' prints the resolved configuration as yaml."]
    return "\n".join(lines)
