"""``rtvla <command> --help``: every setting with its value and its description."""

import re

import pytest

from runtime.commands.cli import COMMANDS, command_help, main

SETTING = re.compile(r"^  (\S+) = (.*?)(?:\s{2,}(\S.*))?$")


def settings(text: str) -> dict[str, tuple[str, str | None]]:
    rows = {}
    for line in text.splitlines():
        match = SETTING.match(line)
        if match:
            rows[match[1]] = (match[2].strip(), match[3])
    return rows


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_setting_of_every_command_is_described(name):
    rows = settings(command_help(name, []))
    assert rows, f"rtvla {name} --help lists no settings"
    undocumented = [key for key, (_, doc) in rows.items() if not doc]
    assert not undocumented, f"rtvla {name}: settings without a description: {undocumented}"


def test_help_shows_values_after_overrides_and_descriptions_from_each_source(capsys):
    main(["train", "policy=state_flow", "steps=77", "--help"])
    rows = settings(capsys.readouterr().out)
    assert rows["steps"][0] == "77"
    assert rows["steps"][1].startswith("optimizer steps in total")  # configs/train.yaml
    assert rows["policy.name"][0] == "state_flow"
    assert "policy.width" in rows and rows["policy.width"][1]  # the dataclass field's comment
    rows = settings(command_help("run", ["executor=bid"]))
    assert rows["executor.samples"] == ("16", rows["executor.samples"][1])  # SETTING_DOCS
    assert "chunks drawn per request" in rows["executor.samples"][1]
    assert "ZMQ endpoint" in settings(command_help("serve", []))["address"][1]  # header line
    assert "knowledge insulation" in settings(command_help("train", []))["policy.insulation"][1]
