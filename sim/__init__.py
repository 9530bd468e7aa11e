"""MuJoCo simulation: an SO-100-class arm, language-conditioned tasks and scripted experts.

env = make_env("pick_place")            # or SimEnv("reach", image_size=96, render=False)
obs = env.reset(seed=0)                 # {"observation.state": (6,), "observation.images.*",
                                        #  "observation.environment_state": (n,)}
expert = make_expert(env, np.random.default_rng(0), failure_prob=0.3)
while not expert.done:
    action, labels = expert.act()       # float32 (6,), Labels
    obs = env.step(action)
"""

from sim import render  # noqa: F401  (first: picks the OpenGL backend before mujoco loads)
from sim.env import SimEnv, evaluate_expert, make_env
from sim.robot import JOINT_NAMES
from sim.tasks import TASKS, Expert, Labels, Task, make_expert

__all__ = [
    "JOINT_NAMES",
    "TASKS",
    "Expert",
    "Labels",
    "SimEnv",
    "Task",
    "evaluate_expert",
    "make_env",
    "make_expert",
]
