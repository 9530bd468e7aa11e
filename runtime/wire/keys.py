"""Feature keys, as lerobot names them (``lerobot.utils.constants``), for the torch-free side.

The robot side cannot import lerobot (it pulls in torch), so the names it shares with
datasets, policies and drivers are written here once; a test checks them against lerobot's.
"""

STATE = "observation.state"  # (S,) float32 joint positions
ENV_STATE = "observation.environment_state"  # (E,) float32 object, target and bin poses
IMAGES = "observation.images."  # prefix of the camera keys: observation.images.<cam>
ACTION = "action"  # (A,) float32 absolute joint targets
# "<key>.history": <key> at the earlier ticks a policy reads (MetadataReply.observation_history),
# stacked (T, ...) oldest first; the controller adds it (rtvla's, not lerobot's)
HISTORY_SUFFIX = ".history"
