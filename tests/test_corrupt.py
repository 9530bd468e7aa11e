"""Corrupt checkpoints and mistyped config values: one clear message naming the file or the
key and what to do, exit 2, no traceback, before any work."""

import shutil
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / "checkpoints" / "demo"


def broken_copy(tmp_path: Path, name: str, damage) -> Path:
    folder = tmp_path / "ckpt"
    shutil.copytree(DEMO, folder)
    path = folder / name
    path.write_bytes(damage(path.read_bytes()))
    return folder


@pytest.mark.parametrize(
    ("name", "damage", "expected"),
    [
        ("model.safetensors", lambda b: b[: len(b) // 2], "not a readable safetensors file"),
        ("model.safetensors", lambda b: b"", "not a readable safetensors file"),
        ("normalizer.safetensors", lambda b: b[:40], "not a readable safetensors file"),
        ("config.json", lambda b: b"\xff\xfe" + b[2:], "not valid UTF-8 JSON"),
        ("config.json", lambda b: b[: len(b) // 2], "not valid UTF-8 JSON"),
        ("config.json", lambda b: b"[1, 2]", "not a map"),
        ("fast_tokenizer.json", lambda b: b[:10], "not valid UTF-8 JSON"),
    ],
)
def test_a_corrupt_checkpoint_file_is_named_with_what_to_do(tmp_path, name, damage, expected):
    from policies.checkpoint import CorruptCheckpoint
    from runtime.serving.loader import load_policy

    folder = broken_copy(tmp_path, name, damage)
    with pytest.raises(CorruptCheckpoint, match=expected) as info:
        load_policy(str(folder))
    assert str(folder / name) in str(info.value) and "rtvla export" in str(info.value)


def test_weights_of_another_model_are_refused(tmp_path):
    import torch
    from safetensors.torch import save_file

    from policies.checkpoint import CorruptCheckpoint
    from runtime.serving.loader import load_policy

    folder = broken_copy(tmp_path, "config.json", lambda b: b)
    save_file({"w": torch.zeros(2)}, folder / "model.safetensors")
    with pytest.raises(CorruptCheckpoint, match="does not fit the model"):
        load_policy(str(folder))


def test_the_command_line_reports_a_corrupt_checkpoint_without_a_traceback(tmp_path, capsys):
    from runtime.commands.cli import main

    folder = broken_copy(tmp_path, "model.safetensors", lambda b: b[:1000])
    with pytest.raises(SystemExit) as info:
        main(["eval", f"checkpoint={folder}", "episodes=1", f"output_dir={tmp_path / 'out'}",
              f"hydra.run.dir={tmp_path / 'hydra'}"])  # fmt: skip
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "model.safetensors is not a readable safetensors file" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("episodes=abc", "episodes='abc' must be an integer (default: 10)"),
        ("episodes=2.5", "episodes=2.5 must be an integer"),
        ("render=maybe", "render='maybe' must be true or false"),
        ("failure_prob=high", "failure_prob='high' must be a number"),
        ("task.image_size=big", "task.image_size='big' must be an integer"),
    ],
)
def test_mistyped_values_are_refused_before_any_work(tmp_path, capsys, override, expected):
    from runtime.commands.cli import main

    out = tmp_path / "ds"
    with pytest.raises(SystemExit) as info:
        main(["record", "task=reach", override, f"output={out}",
              f"hydra.run.dir={tmp_path / 'hydra'}"])  # fmt: skip
    assert info.value.code == 2
    assert expected in capsys.readouterr().err
    assert not out.exists() and not out.with_name("ds.partial").exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "dataset=x", "stpes=3"], "'stpes' is not a setting of rtvla train; did you "
                                            "mean 'steps'?"),
        (["train", "dataset=x", "policy=state_flow", "policy.widht=3"],
         "did you mean 'policy.width'?"),
        (["eval", "checkpoint=x", "disturbance.kind=[push]"], "did you mean 'disturbance.kinds'?"),
        (["trian"], "unknown command 'trian'; did you mean 'train'?"),
    ],
)  # fmt: skip
def test_a_misspelt_key_or_command_suggests_the_nearest_valid_one(capsys, argv, expected):
    from runtime.commands.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert expected in capsys.readouterr().err
