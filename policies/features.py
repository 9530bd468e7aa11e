"""Feature keys of the torch side, as lerobot names them (``lerobot.utils.constants``).

``policies`` imports no ``runtime`` package and importing lerobot's constants costs seconds,
so the names are written here; a test checks them against lerobot's.
"""

STATE = "observation.state"  # (S,) float32 joint positions
ENV_STATE = "observation.environment_state"  # (E,) float32 object, target and bin poses
IMAGES = "observation.images."  # prefix of the camera keys: observation.images.<cam>
ACTION = "action"  # (A,) float32 absolute joint targets; chunks (H, A)
GOAL_STATE = "goal_state"  # (S,) training only: the state of the episode's last frame (rtvla's)
HISTORY_SUFFIX = ".history"  # "<key>.history": <key> at earlier ticks, (T, ...) (rtvla's)
