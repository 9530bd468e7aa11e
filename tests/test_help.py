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
        mine = compose(config_name="train", overrides=["dataset=x", "recipe=reach_cpu", "steps=7"])
        pick = compose(config_name="train", overrides=["dataset=x", "recipe=pick_place_cpu"])
    assert plain.policy.expert == "transformer" and plain.failure_actions == "keep"
    assert recipe.policy.expert == "scene_mixer" and recipe.policy.vision == "keypoints"
    assert recipe.failure_actions == "drop" and recipe.steps == 10000 and recipe.lr == 1e-3
    assert mine.steps == 7 and mine.policy.expert == "scene_mixer"
    # pick_place_cpu is reach_cpu's model and losses on a longer schedule
    assert pick.steps == 30000 and pick.save_every == 5000
    assert pick.policy == recipe.policy and pick.failure_actions == "drop" and pick.lr == 1e-3
    fields = {f.name for f in dataclasses.fields(VLAConfig)}
    chosen = {k: v for k, v in recipe.policy.items() if k in fields}
    VLAConfig(**chosen, env_state_dim=9)  # a valid config (the dataset fills env_state_dim)
    assert unknown_keys("train", ["recipe=reach_cpu", "policy.expert_width=64"]) == ""
    text = command_help("train", ["recipe=reach_cpu"])
    (listed,) = [line for line in text.splitlines() if line.startswith("  recipe: ")]
    assert set(listed.removeprefix("  recipe: ").split(", ")) == {"reach_cpu", "pick_place_cpu"}
    assert settings(text)["failure_actions"][0] == "drop"
