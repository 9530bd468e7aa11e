"""Episode videos: camera frames side by side, the instruction written over them.

MP4 (H.264 through PyAV) when the codec is there, else an animated GIF (Pillow), so a video
is always written. Frames come from the simulated driver (``MujocoDriver(keep_frames=True)``)
and the instruction of each tick from the episode's run log.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

SCALE = 3  # upscaling of the (small) camera images, so the text stays legible


def annotate(frame: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """frame (h, w, 3) uint8 upscaled by SCALE, with ``lines`` written on a dark band."""
    image = Image.fromarray(frame).resize(
        (frame.shape[1] * SCALE, frame.shape[0] * SCALE), Image.NEAREST
    )
    draw = ImageDraw.Draw(image)
    band = 14 * len(lines) + 6
    draw.rectangle((0, 0, image.width, band), fill=(0, 0, 0))
    for i, line in enumerate(lines):
        draw.text((6, 3 + 14 * i), line, fill=(255, 255, 255))
    return np.asarray(image)


def write_video(
    frames: Sequence[np.ndarray], captions: Sequence[Sequence[str]], path: str | Path, fps: float
) -> Path:
    """Write ``frames`` (each (h, w, 3) uint8) with their caption lines; returns the file
    written: ``path`` as MP4, or the same name with ``.gif`` when H.264 is unavailable."""
    if not frames:
        raise ValueError("no frames to write: run the episode with the simulator's frames kept")
    images = [annotate(f, c) for f, c in zip(frames, captions, strict=True)]
    path = Path(path)
    try:
        return _mp4(images, path.with_suffix(".mp4"), fps)
    except Exception as err:  # a missing codec shows up as one of several av errors
        log.warning("H.264 encoding failed (%s): writing a GIF instead", err)
        gif = path.with_suffix(".gif")
        first, *rest = (Image.fromarray(i) for i in images)
        first.save(gif, save_all=True, append_images=rest, duration=1000 / fps, loop=0)
        return gif


def _mp4(images: list[np.ndarray], path: Path, fps: float) -> Path:
    import av

    h, w = images[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.width, stream.height = w - w % 2, h - h % 2
        stream.pix_fmt = "yuv420p"
        for image in images:
            frame = av.VideoFrame.from_ndarray(image[: h - h % 2, : w - w % 2], format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path
