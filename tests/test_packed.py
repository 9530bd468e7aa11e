"""policies/packed.py: a packed dataset serves the same training batches as the in-memory
LeRobotDataset path (up to the video codec's pixel error), trains, and its checkpoint loads like
any other."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PACKED = [sys.executable, "-m", "policies.packed"]


@pytest.fixture(scope="module")
def packed(reach_dataset, tmp_path_factory):
    root, _ = reach_dataset
    prefix = tmp_path_factory.mktemp("packed") / "reach"
    run = subprocess.run(
        [*PACKED, "pack", str(root), str(root), "--output", str(prefix)],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return root, prefix


def test_packed_batches_equal_the_collators(packed):
    from policies.data import Collator, InMemoryChunks, action_chunks, open_dataset
    from policies.fast import FastTokenizer
    from policies.features import ACTION, ENV_STATE, STATE
    from policies.inference import VLAPreprocessor
    from policies.normalize import Normalizer
    from policies.packed import DeviceData
    from policies.train import vla_config
    from policies.vla import VLA

    root, prefix = packed
    meta = json.loads(str(np.load(f"{prefix}.npz")["meta"]))
    ds = open_dataset(root, chunk_length=8)
    n = len(ds)
    assert meta["sources"] == [str(root), str(root)]
    episodes = np.load(f"{prefix}.npz")["episode"]
    assert len(episodes) == 2 * n and len(np.unique(episodes)) == 2 * ds.meta.total_episodes
    features = {k: {**v, "shape": tuple(v["shape"])} for k, v in ds.meta.features.items()}
    config = vla_config(
        features,
        {
            "chunk_length": 8,
            "max_fast_tokens": 32,
            "aux_env_state": 1.0,
            "width": 32,
            "depth": 1,
            "num_heads": 2,
            "expert_width": 32,
        },
    )
    norm = Normalizer.from_stats(meta["stats"], (STATE, ACTION, ENV_STATE))
    model = VLA(config)
    chunks = norm.normalize(ACTION, torch.from_numpy(action_chunks(ds, 8, 200))).numpy()
    fast = FastTokenizer(vocab_size=300).fit(chunks)
    collate = Collator(VLAPreprocessor(config.image_keys, norm, model.tokenize_instructions,
                                       config.image_size), "task", fast, 32)  # fmt: skip
    items = InMemoryChunks(ds, 8, config.image_keys, config.image_size)
    data = DeviceData(str(prefix), model, norm, fast, torch.device("cpu"))
    last = int(np.flatnonzero(items.episode == items.episode[0])[-1])
    index = [0, 3, last - 2, last, last + 1, n - 1]  # chunks that run past their episode's end
    want = collate([items[i] for i in index])
    got = data.batch(torch.tensor(index) + n)  # the second copy: episodes renumbered
    assert want.keys() == got.keys()
    for key in want:
        if key.startswith("observation.images."):  # H.264: near-lossless, not exact
            assert (want[key] - got[key]).abs().mean() < 3 / 255, key
        elif want[key].is_floating_point():
            torch.testing.assert_close(got[key], want[key], msg=key)
        else:
            assert torch.equal(got[key], want[key]), key
    assert got["action_is_pad"][3].any()  # the episode's last frame pads its chunk


def test_train_packed_writes_a_loadable_checkpoint(packed, tmp_path):
    from policies.checkpoint import load_checkpoint

    _, prefix = packed
    out = tmp_path / "run"
    run = subprocess.run(
        [*PACKED, "train", str(prefix), "--output", str(out), "--steps", "3", "--batch", "4",
         "--warmup", "1", "policy.width=32",
         "policy.depth=1", "policy.num_heads=2", "policy.expert_width=32",
         "policy.chunk_length=8", "policy.max_fast_tokens=32", "policy.fast_vocab_size=300",
         "policy.vision=keypoints"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "DEVICE": "cpu"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert not list(prefix.parent.glob("*.partial"))  # every packed file renamed into place
    assert figures["steps"] == 3 and np.isfinite(figures["loss"])
    ckpt = load_checkpoint(out)
    assert ckpt.model.config.vision == "keypoints" and ckpt.model.config.chunk_length == 8
    # bundled in float16 parts, joined and unpacked, it loads into the float32 model
    bundle = [*PACKED, "bundle", str(out), str(tmp_path / "b"), "--float16", "--part-mb", "0.1"]
    run = subprocess.run(bundle, capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    parts = sorted(tmp_path.glob("b.tar.part-*"))
    assert len(parts) >= 2 and all(p.stat().st_size <= 1e5 for p in parts)
    joined = tmp_path / "b.tar"
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    with tarfile.open(joined) as tar:
        assert "metrics.jsonl" in tar.getnames()  # the loss curves travel too
        tar.extractall(tmp_path / "x", filter="data")
    half = load_checkpoint(tmp_path / "x" / "step_0000003")
    for key, value in ckpt.model.state_dict().items():
        torch.testing.assert_close(half.model.state_dict()[key], value, atol=1e-3, rtol=1e-3)


def test_train_packed_refuses_bad_input(packed, tmp_path):
    _, prefix = packed

    def train(*args):
        return subprocess.run([*PACKED, "train", *args, "--output", str(tmp_path), "--steps",
                               "1"], capture_output=True, text=True, cwd=REPO)  # fmt: skip

    missing = train(str(tmp_path / "none"))
    assert missing.returncode == 2 and "policies.packed pack" in missing.stderr
    video = tmp_path / "copy"
    (video.parent / "copy.npz").write_bytes(Path(f"{prefix}.npz").read_bytes())
    no_video = train(str(video))
    assert no_video.returncode == 2 and "copy every packed file" in no_video.stderr
    bad = train(str(prefix), "patch_size=8")
    assert bad.returncode == 2 and "policy.<field>=<value>" in bad.stderr


def test_runs_side_by_side_time_their_steps_once_all_are_ready(tmp_path, capsys):
    from policies.packed import wait_for_peers

    folder = tmp_path / "runs"
    wait_for_peers(f"{folder}:1")  # alone: ready at once
    assert len(list(folder.glob("ready-*"))) == 1
    (folder / "ready-other").touch()  # a second run was ready
    wait_for_peers(f"{folder}:2")
    wait_for_peers(f"{tmp_path / 'few'}:3", timeout_s=0.2)  # the others never come
    assert "timing alone" in capsys.readouterr().out
    for bad in ("nocount", f"{folder}:x", ":2"):
        with pytest.raises(ValueError, match="DIR:N"):
            wait_for_peers(bad)


def test_packed_failure_actions_pad_what_the_in_memory_path_pads(
    reach_corrections_dataset, tmp_path
):
    """failure_actions=drop on a GPU: the packed correction labels pad the injected failures'
    actions exactly as InMemoryChunks does for rtvla train."""
    from policies.data import InMemoryChunks, open_dataset
    from policies.features import ACTION, STATE
    from policies.normalize import Normalizer
    from policies.packed import DeviceData, read_meta
    from policies.train import vla_config
    from policies.vla import VLA

    prefix = tmp_path / "corr"
    run = subprocess.run([*PACKED, "pack", str(reach_corrections_dataset), "--output", str(prefix)],
                         capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert run.returncode == 0, run.stderr
    meta = read_meta(prefix)
    features = {k: {**v, "shape": tuple(v["shape"])} for k, v in meta["features"].items()}
    config = vla_config(features, {"chunk_length": 8, "width": 32, "depth": 1, "num_heads": 2,
                                   "expert_width": 32, "aux_env_state": 0.0})  # fmt: skip
    model, norm = VLA(config), Normalizer.from_stats(meta["stats"], (STATE, ACTION))
    ds = open_dataset(reach_corrections_dataset, chunk_length=8)
    items = InMemoryChunks(ds, 8, config.image_keys, config.image_size, drop_failure_actions=True)
    want = torch.stack([items[i]["action_is_pad"] for i in range(len(items))])
    dropped = DeviceData(str(prefix), model, norm, None, torch.device("cpu"), drop_failures=True)
    kept = DeviceData(str(prefix), model, norm, None, torch.device("cpu"))
    assert want.all(1).sum() > 0 and torch.equal(dropped.is_pad, want)  # failures dropped
    assert kept.is_pad.all(1).sum() == 0  # only past-the-end padding without the option
