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


def test_a_recipe_sets_its_settings_lists_in_help_and_the_command_line_still_wins():
    import dataclasses

    from hydra import compose, initialize_config_dir

    from policies.vla import VLAConfig
    from runtime.commands.cli import CONFIG_DIR, register_policy_configs, unknown_keys

    register_policy_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        plain = compose(config_name="train", overrides=["dataset=x"])
        recipe = compose(config_name="train", overrides=["dataset=x", "recipe=reach_cpu"])
        mine = compose(config_name="train", overrides=["dataset=x", "steps=7"])
        pick = compose(config_name="train", overrides=["dataset=x", "recipe=pick_place_cpu"])
        ki = compose(config_name="train", overrides=["dataset=x", "recipe=ki"])
        state = compose(config_name="train", overrides=["dataset=x", "policy=state_flow"])
    # the VLA's default recipe (recipe/vla.yaml) is the CPU recipe; reach_cpu is its old name
    assert plain.policy.expert == "auto" and plain.policy.vision == "keypoints"
    assert plain.failure_actions == "auto" and plain.steps == 10000 and plain.lr == 1e-3
    assert recipe == plain and mine.steps == 7 and mine.lr == 1e-3
    # pick_place_cpu is the same model and losses on a longer schedule
    assert pick.steps == 30000 and pick.save_every == 5000
    assert pick.policy == plain.policy and pick.failure_actions == "auto" and pick.lr == 1e-3
    # ki: knowledge insulation on patch tokens, on train.yaml's own schedule
    assert (ki.policy.vision, ki.policy.expert, ki.policy.fast_loss, ki.policy.insulation) == (
        "patch", "transformer", True, True)  # fmt: skip
    assert ki.steps == 2000 and ki.failure_actions == "keep"
    # another policy kind has no recipe of its name: train.yaml's schedule
    assert state.steps == 2000 and state.lr == 3e-4 and state.failure_actions == "keep"
    fields = {f.name for f in dataclasses.fields(VLAConfig)}
    for cfg in (plain, ki):  # valid configs (the dataset fills env_state_dim)
        VLAConfig(**{k: v for k, v in cfg.policy.items() if k in fields}, env_state_dim=9)
    assert unknown_keys("train", ["recipe=ki", "policy.expert_width=64"]) == ""
    text = command_help("train", ["recipe=ki"])
    (listed,) = [line for line in text.splitlines() if line.startswith("  recipe: ")]
    options = listed.removeprefix("  recipe: ").split(", ")
    assert options[0] == "ki" and set(options) == {"vla", "ki", "reach_cpu", "pick_place_cpu"}
    assert settings(text)["policy.vision"][0] == "patch"
    (listed,) = [line for line in command_help("train", []).splitlines()
                 if line.startswith("  recipe: ")]  # fmt: skip
    assert listed.startswith("  recipe: vla, ")  # the default, chosen, first
