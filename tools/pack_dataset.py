"""Pack LeRobotDatasets for training on a machine without lerobot (``tools/train_packed.py``).

Writes ``OUT.npz`` (state, action, scene state, episode and task of every frame; features,
fps, tasks and statistics computed over all the frames) and ``OUT.<camera>.mp4`` per camera
(H.264 4:4:4 at ``--crf``, every frame in order), small enough to copy to a GPU machine.
Several datasets of the same features are concatenated, their episodes renumbered.

    uv run python tools/pack_dataset.py outputs/data/reach1200 --output outputs/packed/reach1200
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import av
import numpy as np

from policies.data import InMemoryChunks, open_dataset
from policies.features import ACTION, ENV_STATE, STATE


def encode_video(frames: np.ndarray, path: Path, crf: int) -> float:
    """uint8 (N, 3, h, w) frames -> H.264 4:4:4 at ``path``; the worst sampled mean abs error."""
    hwc = frames.transpose(0, 2, 3, 1)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height = hwc.shape[2], hwc.shape[1]
        stream.pix_fmt = "yuv444p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        for f in hwc:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), "rgb24")))
        out.mux(stream.encode())
    worst, n = 0.0, 0
    with av.open(str(path)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            n += 1
            if i % 97 == 0:
                err = np.abs(frame.to_ndarray(format="rgb24").astype(int) - hwc[i].astype(int))
                worst = max(worst, float(err.mean()))
    if n != len(hwc):
        raise RuntimeError(f"{path}: wrote {len(hwc)} frames, read back {n}")
    return worst


def stats_of(x: np.ndarray) -> dict[str, list]:
    x = x.astype(np.float64)
    return {"mean": x.mean(0).tolist(), "std": x.std(0).tolist(),
            "min": x.min(0).tolist(), "max": x.max(0).tolist()}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="+", help="LeRobotDataset folders (same features)")
    parser.add_argument("--output", required=True, help="path prefix of the packed files")
    parser.add_argument("--crf", type=int, default=14, help="H.264 quality (0 lossless, 51 worst)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    parts, features, fps = [], None, None
    for root in args.datasets:
        ds = open_dataset(root, chunk_length=1)
        feats = {k: {**v, "shape": list(v["shape"])} for k, v in ds.meta.features.items()}
        if features is not None and feats != features:
            print(f"error: {root} has other features than {args.datasets[0]}", file=sys.stderr)
            return 2
        features, fps = feats, ds.meta.fps
        parts.append(InMemoryChunks(ds, 1))
        print(f"{root}: {len(parts[-1])} frames decoded", flush=True)
    tasks = sorted({t for p in parts for t in p.task})
    episode, offset = [], 0
    for p in parts:
        episode.append(p.episode + offset)
        offset = int(episode[-1].max()) + 1
    arrays = {
        "episode": np.concatenate(episode),
        STATE: np.concatenate([p.state.numpy() for p in parts]),
        ACTION: np.concatenate([p.action.numpy() for p in parts]),
        "task_index": np.array([tasks.index(t) for p in parts for t in p.task]),
    }
    if all(p.env_state is not None for p in parts):
        arrays[ENV_STATE] = np.concatenate([p.env_state.numpy() for p in parts])
    stats = {k: stats_of(arrays[k]) for k in (STATE, ACTION, ENV_STATE) if k in arrays}
    meta = {"image_keys": list(parts[0].image_keys), "features": features, "fps": fps,
            "tasks": tasks, "stats": stats, "sources": list(args.datasets)}  # fmt: skip
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(f"{out}.npz", meta=json.dumps(meta), **arrays)
    for key in meta["image_keys"]:
        frames = np.concatenate([p.images[key].numpy() for p in parts])
        path = Path(f"{out}.{key}.mp4")
        worst = encode_video(frames, path, args.crf)
        print(f"{path}: {len(frames)} frames, {path.stat().st_size / 1e6:.1f} MB, "
              f"worst sampled mean abs error {worst:.2f}/255", flush=True)  # fmt: skip
    wall = round(time.perf_counter() - t0, 1)
    print(json.dumps({"output": str(out), "frames": len(arrays["episode"]), "episodes": offset,
                      "wall_s": wall}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
