"""display=rerun: what the controller streams live each tick (runtime/robot/display.py)."""

import types

import numpy as np
import pytest

from runtime.robot.display import RerunDisplay
from runtime.robot.executors import PlannedAction


class FakeRecording:
    """Stands in for a rerun.RecordingStream: keeps (times, entity, archetype) per log call."""

    def __init__(self):
        self.times, self.logged, self.flushed = {}, [], False

    def set_time(self, timeline, *, sequence):
        self.times[timeline] = sequence

    def log(self, entity, archetype):
        self.logged.append((dict(self.times), entity, archetype))

    def flush(self):
        self.flushed = True


FAKE_RERUN = types.SimpleNamespace(
    Scalars=lambda v: ("scalar", v),
    TextLog=lambda text, level=None: ("text", text),
    TextDocument=lambda text: ("doc", text),
    Image=lambda image: ("image", image.shape),
)
JOINTS = ("a.pos", "b.pos")


def observation(x):
    return {"observation.state": np.array([x, -x], np.float32),
            "observation.images.front": np.zeros((8, 8, 3), np.uint8)}  # fmt: skip


def test_a_tick_streams_targets_positions_cameras_seams_and_instructions():
    rec = FakeRecording()
    display = RerunDisplay(JOINTS, camera_every=2, recording=rec, rerun=FAKE_RERUN)
    display.start_episode("reach the red target")
    plan = [PlannedAction(np.array([1.0, 2.0]), 0, 0), PlannedAction(np.array([1.5, 2.5]), 0, 1),
            None, PlannedAction(np.array([3.0, 4.0]), 1, 0)]  # fmt: skip
    sources = ["task", "task", "task", "operator"]
    for tick, planned in enumerate(plan):
        instruction = "move left" if sources[tick] == "operator" else "reach the red target"
        display.tick(tick, lambda t=tick: observation(float(t)), planned, "no_chunk",
                     instruction, sources[tick])  # fmt: skip
    display.close()
    assert rec.flushed

    def at(entity):
        return [(t["tick"], a[1]) for t, e, a in rec.logged if e == entity]

    assert at("joints/a.pos/target") == [(0, 1.0), (1, 1.5), (3, 3.0)]  # nothing on the hold
    assert at("joints/b.pos/actual") == [(0, -0.0), (1, -1.0), (2, -2.0), (3, -3.0)]
    assert at("cameras/front") == [(0, (8, 8, 3)), (2, (8, 8, 3))]  # every 2nd tick
    assert at("chunk/index") == [(0, 0.0), (1, 1.0), (3, 0.0)]
    events = [text for _, text in at("events")]
    assert events == ["episode 0: reach the red target",
                      "instruction (task): reach the red target", "hold: no_chunk",
                      "instruction (operator): move left", "seam: chunk 0 -> 1"]  # fmt: skip
    assert at("instruction")[-1] == (3, "move left\n\n(from operator)")
    display.start_episode("next")
    assert rec.times["episode"] == 1 and rec.times["tick"] == 4  # the tick timeline runs on


def test_bad_settings_are_refused_before_running():
    with pytest.raises(ValueError, match="display_camera_every"):
        RerunDisplay(JOINTS, camera_every=0, recording=FakeRecording(), rerun=FAKE_RERUN)


def test_a_run_streams_to_an_rrd_file(tmp_path):
    """``rtvla run display=rerun display_target=FILE.rrd``: the recording holds the episode."""
    pytest.importorskip("rerun")
    from rerun.experimental import RrdReader

    from runtime.commands.cli import main

    path = tmp_path / "run.rrd"
    main(["run", "task=reach", "task.image_size=32", "episodes=1", "max_ticks=12",
          "inference_delay_ticks=2", "display=rerun", f"display_target={path}",
          f"output_dir={tmp_path / 'out'}"])  # fmt: skip
    entities = set(RrdReader(str(path)).store().schema().entity_paths())
    expected = {"/events", "/instruction", "/chunk/index", "/cameras/front", "/cameras/wrist",
                "/joints/shoulder_pan.pos/target", "/joints/gripper.pos/actual"}  # fmt: skip
    assert expected <= entities
